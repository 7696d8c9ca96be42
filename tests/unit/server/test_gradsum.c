/* test_gradsum.c - gradient sums (POST /grad): decoding and validation of JSON
 * and safetensors requests (field paths), the answer encodings, and the
 * registry's pending gradient steps: sums bit-identical to an independent
 * double computation in worker order whatever the arrival order, every
 * rejection changing nothing, timeouts naming the missing workers, delete
 * and shutdown waking waiters, allocation failures. */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "harness.h"
#include "registry/registry.h"
#include "registry/run.h"

/* ---------------------------------------------------------------- helpers */

/* A little-endian safetensors buffer written here independently of libnsproto:
 * tensors in the order given, with the given dtype names. */
typedef struct st_in_s {
    const char *name, *dtype;
    size_t n;
    const double *values;
} st_in_t;

static uint8_t *st_build(const st_in_t *t, size_t nt, const char *meta_json, size_t *len)
{
    char header[4096];
    size_t at = 0, hl = (size_t)snprintf(header, sizeof(header), "{\"__metadata__\":%s", meta_json);
    for (size_t i = 0; i < nt; i++) {
        size_t es = strcmp(t[i].dtype, "F32") == 0 ? 4 : 8;
        hl += (size_t)snprintf(
            header + hl, sizeof(header) - hl,
            ",\"%s\":{\"dtype\":\"%s\",\"shape\":[%zu],\"data_offsets\":[%zu,%zu]}", t[i].name,
            t[i].dtype, t[i].n, at, at + es * t[i].n);
        at += es * t[i].n;
    }
    header[hl++] = '}';
    while ((8 + hl) % 8)
        header[hl++] = ' ';
    uint8_t *buf = malloc(8 + hl + at);
    for (int b = 0; b < 8; b++)
        buf[b] = (uint8_t)((uint64_t)hl >> (8 * b));
    memcpy(buf + 8, header, hl);
    uint8_t *p = buf + 8 + hl;
    for (size_t i = 0; i < nt; i++)
        for (size_t k = 0; k < t[i].n; k++) {
            if (strcmp(t[i].dtype, "F32") == 0) {
                uint32_t u = bits_of((float)t[i].values[k]);
                for (int b = 0; b < 4; b++)
                    *p++ = (uint8_t)(u >> (8 * b));
            } else {
                uint64_t u;
                memcpy(&u, &t[i].values[k], 8);
                for (int b = 0; b < 8; b++)
                    *p++ = (uint8_t)(u >> (8 * b));
            }
        }
    *len = 8 + hl + at;
    return buf;
}

static int decode_json(const char *s, ns_grad_t **g, ns_error_detail_t *err)
{
    memset(err, 0, sizeof(*err));
    return ns_grad_decode_json(g, s, strlen(s), err);
}

/* ---------------------------------------------------------------- decoding */

START_TEST(test_decode_json)
{
    ns_grad_t *g = NULL;
    ns_error_detail_t err;
    ck_assert_int_eq(decode_json("{\"step\": 12, \"worker\": 2, \"layers\": {"
                                 "\"z.bn\": {\"sum_dy\": [1, 0.1], \"sum_dy_xmu\": [-3, 1e300]},"
                                 "\"a.bn\": {\"sum_dy_xmu\": [5], \"sum_dy\": [4]}}}",
                                 &g, &err),
                     0);
    ck_assert_uint_eq(g->step, 12);
    ck_assert_uint_eq(g->worker, 2);
    ck_assert_int_eq(g->dtype, NS_DTYPE_F64);
    ck_assert_uint_eq(g->n_layers, 2);
    ck_assert_str_eq(g->layers[0].name, "a.bn"); /* sorted */
    ck_assert(g->layers[0].sum_dy[0] == 4.0 && g->layers[0].sum_dy_xmu[0] == 5.0);
    ck_assert(g->layers[1].sum_dy[1] == 0.1); /* the double, not a float32 */
    ck_assert(g->layers[1].sum_dy_xmu[1] == 1e300);
    ck_assert_ptr_eq(g->layers[1].sum_dy_xmu, g->layers[1].sum_dy + 2);
    ns_grad_free(g);

    static const struct {
        const char *body, *field;
        int code;
    } bad[] = {
        {"[]", "", NS_EINVAL},
        {"{\"worker\": 0, \"layers\": {\"a\": {\"sum_dy\": [1], \"sum_dy_xmu\": [1]}}}", "step",
         NS_EINVAL},
        {"{\"step\": -1, \"worker\": 0, \"layers\": {\"a\": {\"sum_dy\": [1], \"sum_dy_xmu\": "
         "[1]}}}",
         "step", NS_EINVAL},
        {"{\"step\": 1.0, \"worker\": 0, \"layers\": {\"a\": {\"sum_dy\": [1], \"sum_dy_xmu\": "
         "[1]}}}",
         "step", NS_EINVAL},
        {"{\"step\": 1, \"worker\": 0, \"layers\": {}}", "layers", NS_EINVAL},
        {"{\"step\": 1, \"worker\": 0, \"scope\": 1, \"layers\": {}}", "scope", NS_EINVAL},
        {"{\"step\": 1, \"worker\": 0, \"layers\": {\"a\": {\"sum_dy\": [1]}}}",
         "layers.a.sum_dy_xmu", NS_EINVAL},
        {"{\"step\": 1, \"worker\": 0, \"layers\": {\"a\": {\"sum_dy\": [1, 2], \"sum_dy_xmu\": "
         "[1]}}}",
         "layers.a.sum_dy_xmu", NS_EINVAL},
        {"{\"step\": 1, \"worker\": 0, \"layers\": {\"a\": {\"sum_dy\": [1, null], \"sum_dy_xmu\": "
         "[1, "
         "2]}}}",
         "layers.a.sum_dy[1]", NS_EINVAL},
        {"{\"step\": 1, \"worker\": 0, \"layers\": {\"a\": {\"sum_dy\": [1], \"sum_dy_xmu\": [1], "
         "\"count\": 3}}}",
         "layers.a.count", NS_EINVAL},
        {"{\"step\": 1, \"worker\": 0, \"layers\": {\"a/b\": {\"sum_dy\": [1], \"sum_dy_xmu\": "
         "[1]}}}",
         "layers", NS_EINVAL},
        {"{\"step\": 1, \"worker\": 0, \"layers\": {\"a\": {\"sum_dy\": [1e999], \"sum_dy_xmu\": "
         "[1]}}}",
         "", NS_EINVAL},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        g = (ns_grad_t *)&err; /* must be reset to NULL */
        ck_assert_msg(decode_json(bad[i].body, &g, &err) == bad[i].code, "case %zu", i);
        ck_assert_ptr_null(g);
        ck_assert_msg(strcmp(err.field, bad[i].field) == 0, "case %zu: field '%s', expected '%s'",
                      i, err.field, bad[i].field);
    }
}
END_TEST

START_TEST(test_decode_safetensors)
{
    double dy[3] = {1.5, -0.1, 3e38}, xmu[3] = {2, 4, 8};
    st_in_t f32[2] = {{"bn.sum_dy", "F32", 3, dy}, {"bn.sum_dy_xmu", "F32", 3, xmu}};
    size_t len;
    uint8_t *buf = st_build(f32, 2, "{\"step\":\"7\",\"worker\":\"1\"}", &len);
    ns_grad_t *g = NULL;
    ns_error_detail_t err = {0};
    ck_assert_int_eq(ns_grad_decode_safetensors(&g, buf, len, &err), 0);
    ck_assert_int_eq(g->dtype, NS_DTYPE_F32);
    ck_assert_uint_eq(g->step, 7);
    ck_assert_uint_eq(g->worker, 1);
    for (int k = 0; k < 3; k++) { /* float32 widened exactly */
        ck_assert(g->layers[0].sum_dy[k] == (double)(float)dy[k]);
        ck_assert(g->layers[0].sum_dy_xmu[k] == (double)(float)xmu[k]);
    }
    ns_grad_free(g);
    free(buf);
    st_in_t f64[2] = {{"bn.sum_dy", "F64", 3, dy}, {"bn.sum_dy_xmu", "F64", 3, xmu}};
    buf = st_build(f64, 2, "{\"step\":\"7\",\"worker\":\"1\",\"format\":\"pt\"}", &len);
    ck_assert_int_eq(ns_grad_decode_safetensors(&g, buf, len, &err), 0);
    ck_assert_int_eq(g->dtype, NS_DTYPE_F64);
    ck_assert(g->layers[0].sum_dy[1] == -0.1);
    ns_grad_free(g);
    free(buf);

    double nan3[3] = {1, NAN, 2}, inf3[3] = {1, 2, -INFINITY};
    static const char *meta = "{\"step\":\"7\",\"worker\":\"1\"}";
    struct {
        st_in_t t[2];
        size_t nt;
        const char *meta, *field;
        int code;
    } bad[] = {
        {{{"bn.sum_dy", "F32", 3, nan3}, {"bn.sum_dy_xmu", "F32", 3, xmu}},
         2,
         meta,
         "layers.bn.sum_dy[1]",
         NS_EVALUE},
        {{{"bn.sum_dy", "F64", 3, dy}, {"bn.sum_dy_xmu", "F64", 3, inf3}},
         2,
         meta,
         "layers.bn.sum_dy_xmu[2]",
         NS_EVALUE},
        {{{"bn.sum_dy", "F32", 3, dy}, {"bn.sum_dy_xmu", "F64", 3, xmu}},
         2,
         meta,
         "layers.bn.sum_dy_xmu",
         NS_EINVAL},
        {{{"bn.sum_dy", "F32", 3, dy}, {"bn.sum_dy_xmu", "F32", 2, xmu}},
         2,
         meta,
         "layers.bn.sum_dy_xmu",
         NS_EINVAL},
        {{{"bn.sum_dy", "F32", 3, dy}}, 1, meta, "layers.bn.sum_dy_xmu", NS_EINVAL},
        {{{"bn.sum_dy", "I64", 3, dy}, {"bn.sum_dy_xmu", "I64", 3, xmu}},
         2,
         meta,
         "layers.bn.sum_dy",
         NS_EINVAL},
        {{{"bn.mean", "F32", 3, dy}}, 1, meta, "", NS_EINVAL},
        {{{"bn.sum_dy", "F32", 3, dy}, {"bn.sum_dy_xmu", "F32", 3, xmu}},
         2,
         "{\"worker\":\"1\"}",
         "__metadata__.step",
         NS_EINVAL},
        {{{"bn.sum_dy", "F32", 3, dy}, {"bn.sum_dy_xmu", "F32", 3, xmu}},
         2,
         "{\"step\":\"+7\",\"worker\":\"1\"}",
         "__metadata__.step",
         NS_EINVAL},
        {{{"bn.sum_dy", "F32", 3, dy}, {"bn.sum_dy_xmu", "F32", 3, xmu}},
         2,
         "{\"step\":\"7\",\"worker\":\"1\",\"domain\":\"x\"}",
         "__metadata__.domain",
         NS_EINVAL},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        buf = st_build(bad[i].t, bad[i].nt, bad[i].meta, &len);
        memset(&err, 0, sizeof(err));
        ck_assert_msg(ns_grad_decode_safetensors(&g, buf, len, &err) == bad[i].code, "case %zu: %s",
                      i, err.message);
        ck_assert_ptr_null(g);
        ck_assert_msg(strcmp(err.field, bad[i].field) == 0, "case %zu: field '%s'", i, err.field);
        free(buf);
    }
}
END_TEST

START_TEST(test_encode_answer)
{
    uint64_t seed = ns_test_seed() ^ 0x9e3779b97f4a7c15ull;
    double v[8];
    for (int k = 0; k < 8; k++)
        v[k] = ns_test_normal(&seed) * pow(10.0, (double)(int)(ns_test_uniform(&seed) * 40) - 20);
    v[0] = 0.1;
    v[1] = -0.0;
    v[2] = 3.5e38; /* beyond float32: infinity in F32 */
    ns_grad_layer_t layer = {"bn", 4, v, v + 4};
    ns_grad_t g = {.step = 9, .workers = 3, .dtype = NS_DTYPE_F64, .n_layers = 1, .layers = &layer};
    ns_buf_t buf;
    ns_buf_init(&buf, 0);
    ck_assert_int_eq(ns_grad_encode_answer(&buf, NS_FORMAT_JSON, &g), 0);
    json_t *j = json_loadb(buf.data, buf.len, 0, NULL);
    ck_assert_ptr_nonnull(j);
    ck_assert_int_eq(json_integer_value(json_object_get(j, "step")), 9);
    ck_assert_int_eq(json_integer_value(json_object_get(j, "workers")), 3);
    json_t *l = json_object_get(json_object_get(j, "layers"), "bn");
    for (int k = 0; k < 8; k++) { /* every double reads back exactly */
        json_t *a = json_object_get(l, k < 4 ? "sum_dy" : "sum_dy_xmu");
        double got = json_number_value(json_array_get(a, (size_t)(k % 4)));
        ck_assert_msg(memcmp(&got, &v[k], 8) == 0 || (got == 0 && v[k] == 0),
                      "value %d: %.17g vs %.17g", k, got, v[k]);
    }
    json_decref(j);
    ns_buf_free(&buf);
    /* safetensors F32: each double rounded once */
    ns_buf_init(&buf, 0);
    g.dtype = NS_DTYPE_F32;
    ck_assert_int_eq(ns_grad_encode_answer(&buf, NS_FORMAT_SAFETENSORS, &g), 0);
    ns_safetensors_t *st = NULL;
    ck_assert_int_eq(ns_safetensors_parse(&st, (const uint8_t *)buf.data, buf.len, NULL), 0);
    ck_assert_str_eq(ns_safetensors_meta(st, "workers"), "3");
    const ns_tensor_t *t = ns_safetensors_find(st, "bn.sum_dy");
    ck_assert(t != NULL && t->dtype == NS_DTYPE_F32 && t->shape[0] == 4);
    for (int k = 0; k < 4; k++) {
        float f;
        memcpy(&f, t->data + 4 * k, 4);
        ck_assert_uint_eq(bits_of(f), bits_of((float)v[k]));
    }
    ck_assert(isinf(*(const float *)(const void *)(t->data + 8)));
    ns_safetensors_free(st);
    ns_buf_free(&buf);
    /* JSON refuses a non-finite value */
    v[3] = INFINITY;
    g.dtype = NS_DTYPE_F64;
    ns_buf_init(&buf, 0);
    ck_assert_int_eq(ns_grad_encode_answer(&buf, NS_FORMAT_JSON, &g), NS_EVALUE);
}
END_TEST

/* ---------------------------------------------------------------- the registry */

typedef struct answer_s {
    int calls;
    nsd_grad_result_t *res;
} answer_t;

static void on_answer(void *arg, nsd_grad_result_t *res)
{
    answer_t *a = arg;
    a->calls++;
    nsd_grad_result_free(a->res);
    a->res = res;
}

static void answer_clear(answer_t *a)
{
    nsd_grad_result_free(a->res);
    memset(a, 0, sizeof(*a));
}

/* A request of one worker: layers "a" (C channels) and, if two, "b" (1). */
static ns_grad_t *request(uint64_t step, uint32_t worker, size_t c, const double *dy,
                          const double *xmu, int two)
{
    ns_grad_t *g = calloc(1, sizeof(*g));
    g->step = step;
    g->worker = worker;
    g->dtype = NS_DTYPE_F64;
    g->n_layers = two ? 2 : 1;
    g->layers = calloc(g->n_layers, sizeof(*g->layers));
    for (size_t i = 0; i < g->n_layers; i++) {
        ns_grad_layer_t *l = &g->layers[i];
        size_t n = i == 0 ? c : 1;
        snprintf(l->name, sizeof(l->name), "%s", i == 0 ? "a" : "b");
        l->channels = n;
        l->sum_dy = malloc(2 * n * sizeof(double));
        l->sum_dy_xmu = l->sum_dy + n;
        memcpy(l->sum_dy, dy, n * sizeof(double));
        memcpy(l->sum_dy_xmu, xmu, n * sizeof(double));
    }
    return g;
}

static nsd_registry_t *registry(uint32_t world, uint64_t timeout_ms, uint32_t max_pending,
                                uint64_t max_memory)
{
    nsd_limits_t lim = {.max_pending_steps = max_pending, .max_memory = max_memory};
    nsd_registry_t *reg = nsd_registry_create(&lim);
    ns_run_config_t cfg;
    ns_run_config_defaults(&cfg);
    cfg.has_world_size = cfg.has_sync_timeout_ms = 1;
    cfg.world_size = world;
    cfg.sync_timeout_ms = timeout_ms;
    ck_assert_int_eq(nsd_registry_put_run(reg, "r", &cfg, NULL, NULL), 0);
    return reg;
}

#define W 4
#define C 5

START_TEST(test_sums_worker_order)
{
    uint64_t seed = ns_test_seed() + 17;
    nsd_registry_t *reg = registry(W, 60000, 0, 0);
    static const uint32_t orders[][W] = {{0, 1, 2, 3}, {3, 2, 1, 0}, {2, 0, 3, 1}, {1, 3, 0, 2}};
    for (uint64_t step = 0; step < 4; step++) {
        double x[W][2 * C];
        for (int w = 0; w < W; w++)
            for (int k = 0; k < 2 * C; k++)
                x[w][k] = ns_test_normal(&seed) *
                          pow(10.0, (double)(int)(ns_test_uniform(&seed) * 32) - 16);
        /* channel 0 cancels only in worker order: (1 + 1e16) - 1e16 + 0 = 0 */
        x[0][0] = 1.0, x[1][0] = 1e16, x[2][0] = -1e16, x[3][0] = 0.0;
        answer_t ans[W] = {{0}};
        for (int i = 0; i < W; i++) {
            uint32_t w = orders[step][i];
            ns_error_detail_t err = {0};
            ck_assert_int_eq(nsd_registry_grad(reg, "r", request(step, w, C, x[w], x[w] + C, 1), 0,
                                               on_answer, &ans[w], &err),
                             0);
            for (int v = 0; v < W; v++) /* nobody answered before the last arrival */
                ck_assert_int_eq(ans[v].calls, i + 1 == W ? ans[v].calls : 0);
        }
        /* The reference, written independently: a double loop per channel. */
        double ref[2 * C];
        for (int k = 0; k < 2 * C; k++) {
            double s = x[0][k];
            for (int w = 1; w < W; w++)
                s = s + x[w][k];
            ref[k] = s;
        }
        ck_assert(ref[0] == 0.0);
        for (int w = 0; w < W; w++) {
            ck_assert_int_eq(ans[w].calls, 1);
            ck_assert_int_eq(ans[w].res->status, 0);
            const ns_grad_t *g = ans[w].res->grad;
            ck_assert_uint_eq(g->step, step);
            ck_assert_uint_eq(g->workers, W);
            ck_assert_str_eq(g->layers[0].name, "a");
            ck_assert_uint_eq(g->layers[0].channels, C);
            ck_assert_int_eq(memcmp(g->layers[0].sum_dy, ref, sizeof(ref)), 0);
            double b = x[0][0];
            for (int v = 1; v < W; v++)
                b += x[v][0];
            ck_assert(g->layers[1].sum_dy[0] == b);
            answer_clear(&ans[w]);
        }
    }
    nsd_counters_t cnt;
    nsd_registry_counters(reg, &cnt);
    ck_assert_uint_eq(cnt.grad_steps_completed, 8);
    ck_assert_uint_eq(cnt.grad_pending_steps, 0);
    ck_assert_uint_eq(cnt.grad_waiters, 0);
    ck_assert_uint_eq(cnt.steps_finalized, 0); /* statistics untouched */
    nsd_registry_free(reg);
}
END_TEST

START_TEST(test_rejections_change_nothing)
{
    nsd_registry_t *reg = registry(2, 60000, 2, 0);
    double one[C] = {1, 2, 3, 4, 5}, two[C] = {10, 20, 30, 40, 50};
    answer_t a0 = {0}, junk = {0};
    ns_error_detail_t err = {0};
    ck_assert_int_eq(
        nsd_registry_grad(reg, "r", request(1, 0, C, one, one, 0), 0, on_answer, &a0, &err), 0);
    nsd_counters_t before;
    nsd_registry_counters(reg, &before);
    struct {
        ns_grad_t *g;
        const char *run;
        int code;
        const char *field;
    } bad[] = {
        {request(1, 2, C, two, two, 0), "r", NS_EWORKER, "worker"},
        {request(1, 0, C, two, two, 1), "r", NS_EDUPLICATE, "layers.a"},
        {request(1, 1, 4, two, two, 1), "r", NS_ECHANNELS, "layers.a"},
        {request(1, 1, C, two, two, 1), "nope", NS_ENOTFOUND, "run"},
        {request(1, 1, C, two, two, 1), "bad/run", NS_EINVAL, "run"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        memset(&err, 0, sizeof(err));
        ck_assert_int_eq(nsd_registry_grad(reg, bad[i].run, bad[i].g, 0, on_answer, &junk, &err),
                         bad[i].code);
        ck_assert_str_eq(err.field, bad[i].field);
        nsd_counters_t now;
        nsd_registry_counters(reg, &now);
        ck_assert_uint_eq(now.memory_bytes, before.memory_bytes);
        ck_assert_uint_eq(now.grad_pending_steps, before.grad_pending_steps);
    }
    /* max_pending_steps 2: steps 2 and 3 pend besides 1? 1 and 2 pend, 3 is refused */
    answer_t a2 = {0};
    ck_assert_int_eq(
        nsd_registry_grad(reg, "r", request(2, 0, C, one, one, 0), 0, on_answer, &a2, &err), 0);
    memset(&err, 0, sizeof(err));
    ck_assert_int_eq(
        nsd_registry_grad(reg, "r", request(3, 0, C, one, one, 0), 0, on_answer, &junk, &err),
        NS_EBUSY);
    ck_assert_int_eq(junk.calls, 0);
    /* Worker 1 completes steps 1 and 2 with the right sums. */
    answer_t a1 = {0}, a3 = {0};
    ck_assert_int_eq(
        nsd_registry_grad(reg, "r", request(1, 1, C, two, two, 0), 0, on_answer, &a1, &err), 0);
    ck_assert_int_eq(
        nsd_registry_grad(reg, "r", request(2, 1, C, two, two, 0), 0, on_answer, &a3, &err), 0);
    answer_t *all[4] = {&a0, &a1, &a2, &a3};
    for (int i = 0; i < 4; i++) {
        ck_assert_int_eq(all[i]->calls, 1);
        ck_assert_int_eq(all[i]->res->status, 0);
        for (int k = 0; k < C; k++)
            ck_assert(all[i]->res->grad->layers[0].sum_dy[k] == one[k] + two[k]);
        answer_clear(all[i]);
    }
    /* Stale: step 2 and below are completed for both workers. */
    memset(&err, 0, sizeof(err));
    ck_assert_int_eq(
        nsd_registry_grad(reg, "r", request(2, 1, C, two, two, 0), 0, on_answer, &junk, &err),
        NS_ESTALE);
    ck_assert_str_eq(err.field, "layers.a");
    ck_assert_int_eq(junk.calls, 0);
    nsd_registry_free(reg);
}
END_TEST

START_TEST(test_timeout_delete_shutdown)
{
    nsd_registry_t *reg = registry(4, 300, 0, 0);
    double v[C] = {1, 2, 3, 4, 5};
    answer_t a[2] = {{0}};
    for (uint32_t w = 0; w < 2; w++)
        ck_assert_int_eq(nsd_registry_grad(reg, "r", request(12, w, C, v, v, 0), 1000 + w,
                                           on_answer, &a[w], NULL),
                         0);
    ck_assert_uint_eq(nsd_registry_expire(reg, 1299), 1300); /* deadline: first arrival + 300 */
    ck_assert_int_eq(a[0].calls + a[1].calls, 0);
    nsd_registry_expire(reg, 1300);
    for (int w = 0; w < 2; w++) {
        ck_assert_int_eq(a[w].calls, 1);
        ck_assert_int_eq(a[w].res->status, NS_ETIMEDOUT);
        ck_assert_str_eq(a[w].res->message, "layers.a step 12: workers 2, 3 did not send their "
                                            "gradient sums within 300 ms");
        answer_clear(&a[w]);
    }
    nsd_counters_t cnt;
    nsd_registry_counters(reg, &cnt);
    ck_assert_uint_eq(cnt.grad_steps_timed_out, 1);
    ck_assert_uint_eq(cnt.grad_pending_steps, 0);
    /* discarded: step 12 starts afresh (not stale for workers 0, 1) */
    ck_assert_int_eq(
        nsd_registry_grad(reg, "r", request(12, 0, C, v, v, 0), 2000, on_answer, &a[0], NULL), 0);
    ck_assert_int_eq(nsd_registry_delete_run(reg, "r", NULL), 0);
    ck_assert_int_eq(a[0].calls, 1);
    ck_assert_int_eq(a[0].res->status, NS_ENOTFOUND);
    answer_clear(&a[0]);
    nsd_registry_counters(reg, &cnt);
    ck_assert_uint_eq(cnt.grad_waiters, 0);
    ck_assert_uint_eq(cnt.memory_bytes, 0);

    nsd_registry_t *reg2 = registry(2, 60000, 0, 0);
    ck_assert_int_eq(
        nsd_registry_grad(reg2, "r", request(1, 0, C, v, v, 1), 0, on_answer, &a[1], NULL), 0);
    nsd_registry_shutdown(reg2);
    ck_assert_int_eq(a[1].calls, 1);
    ck_assert_int_eq(a[1].res->status, NS_ESHUTDOWN);
    answer_clear(&a[1]);
    ck_assert_int_eq(
        nsd_registry_grad(reg2, "r", request(2, 0, C, v, v, 0), 0, on_answer, &a[1], NULL),
        NS_ESHUTDOWN);
    nsd_registry_free(reg2);
    nsd_registry_free(reg);
}
END_TEST

START_TEST(test_memory_budget)
{
    nsd_registry_t *reg = registry(2, 60000, 0, 4096);
    double *big = calloc(1000, sizeof(double));
    answer_t a = {0};
    ns_error_detail_t err = {0};
    ck_assert_int_eq(
        nsd_registry_grad(reg, "r", request(1, 0, 1000, big, big, 0), 0, on_answer, &a, &err),
        NS_EMEMORY);
    ck_assert_int_eq(a.calls, 0);
    nsd_counters_t cnt;
    nsd_registry_counters(reg, &cnt);
    ck_assert_uint_eq(cnt.memory_bytes, NSD_RUN_BYTES); /* the run alone */
    ck_assert_int_eq(
        nsd_registry_grad(reg, "r", request(1, 0, 8, big, big, 0), 0, on_answer, &a, &err), 0);
    nsd_registry_counters(reg, &cnt);
    ck_assert_uint_gt(cnt.memory_bytes, 2 * 8 * sizeof(double));
    free(big);
    nsd_registry_shutdown(reg);
    answer_clear(&a);
    nsd_registry_free(reg);
}
END_TEST

#if !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
#define FAIL_ALLOC_TEST 1
/* This program replaces malloc/calloc/realloc (glibc allows it) to fail the
 * Nth allocation after fail_at is set; free stays glibc's, same heap. */
extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
static long fail_at = -1, alloc_count;

static int should_fail(void)
{
    return fail_at >= 0 && alloc_count++ == fail_at;
}

void *malloc(size_t n);
void *calloc(size_t k, size_t n);
void *realloc(void *p, size_t n);

void *malloc(size_t n)
{
    return should_fail() ? NULL : __libc_malloc(n);
}

void *calloc(size_t k, size_t n)
{
    return should_fail() ? NULL : __libc_calloc(k, n);
}

void *realloc(void *p, size_t n)
{
    return should_fail() ? NULL : __libc_realloc(p, n);
}

/* Fail allocation N = 0, 1, ... of a request that creates the run's
 * gradient table, two layers and their pending steps: NS_ENOMEM, no
 * callback, no memory accounted; then a full round still sums right. */
START_TEST(test_allocation_failures)
{
    double v[C] = {1, 2, 3, 4, 5};
    for (long n = 0;; n++) {
        nsd_registry_t *reg = registry(2, 60000, 0, 0);
        answer_t a = {0}, b = {0};
        ns_grad_t *g = request(1, 0, C, v, v, 1);
        alloc_count = 0;
        fail_at = n;
        int rc = nsd_registry_grad(reg, "r", g, 0, on_answer, &a, NULL);
        fail_at = -1;
        nsd_counters_t cnt;
        nsd_registry_counters(reg, &cnt);
        if (rc == 0) {
            ck_assert_int_eq(
                nsd_registry_grad(reg, "r", request(1, 1, C, v, v, 1), 0, on_answer, &b, NULL), 0);
            ck_assert_int_eq(a.calls, 1);
            ck_assert(a.res->status == 0 && a.res->grad->layers[0].sum_dy[4] == 10.0);
            answer_clear(&a);
            answer_clear(&b);
            nsd_registry_free(reg);
            ck_assert_int_gt(n, 3); /* some allocations were failed before success */
            break;
        }
        ck_assert_int_eq(rc, NS_ENOMEM);
        ck_assert_int_eq(a.calls, 0);
        ck_assert_uint_eq(cnt.memory_bytes, NSD_RUN_BYTES); /* the run alone */
        ck_assert_uint_eq(cnt.grad_pending_steps, 0);
        ck_assert_uint_eq(cnt.grad_waiters, 0);
        /* the state is as before: a full round works */
        answer_t c0 = {0}, c1 = {0};
        ck_assert_int_eq(
            nsd_registry_grad(reg, "r", request(1, 0, C, v, v, 0), 0, on_answer, &c0, NULL), 0);
        ck_assert_int_eq(
            nsd_registry_grad(reg, "r", request(1, 1, C, v, v, 0), 0, on_answer, &c1, NULL), 0);
        ck_assert(c0.calls == 1 && c0.res->status == 0 && c0.res->grad->layers[0].sum_dy[0] == 2.0);
        answer_clear(&c0);
        answer_clear(&c1);
        nsd_registry_free(reg);
    }
}
END_TEST
#endif

static Suite *make_suite(void)
{
    Suite *s = suite_create("gradsum");
    TCase *tc = tcase_create("gradsum");
    tcase_add_test(tc, test_decode_json);
    tcase_add_test(tc, test_decode_safetensors);
    tcase_add_test(tc, test_encode_answer);
    tcase_add_test(tc, test_sums_worker_order);
    tcase_add_test(tc, test_rejections_change_nothing);
    tcase_add_test(tc, test_timeout_delete_shutdown);
    tcase_add_test(tc, test_memory_budget);
#ifdef FAIL_ALLOC_TEST
    tcase_add_test(tc, test_allocation_failures);
#endif
    suite_add_tcase(s, tc);
    return s;
}

NS_TEST_MAIN(make_suite)
