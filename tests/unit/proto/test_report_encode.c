/* test_report_encode.c - ns_report_encode() (libnsproto): random reports
 * written as JSON and safetensors come back field for field through the
 * existing decoders; unbiased variances against the (n-1)/n formula in long
 * double; reports the server could never accept are refused. */
#include <normstat/proto.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"

enum { MAX_LAYERS = 6, MAX_CHANNELS = 70 };

typedef struct fixture_s {
    ns_report_t report;
    ns_layer_report_t layers[MAX_LAYERS];
    float mean[MAX_LAYERS][MAX_CHANNELS], var[MAX_LAYERS][MAX_CHANNELS];
} fixture_t;

static float awkward(uint64_t *rng)
{
    double v = ns_test_normal(rng) * pow(10.0, (double)(ns_test_rand(rng) % 60) - 30);
    if (ns_test_rand(rng) % 10 == 0)
        v = (double)(int64_t)(ns_test_rand(rng) % 1000) - 500;
    return (float)v;
}

static void fixture_make(fixture_t *f, uint64_t *rng)
{
    static const char *const domains[] = {"", "photo", "sketch:v2", "a.b-c_d"};
    memset(f, 0, sizeof(*f));
    ns_report_t *r = &f->report;
    r->step = ns_test_rand(rng) % 4 == 0 ? (uint64_t)INT64_MAX : ns_test_rand(rng) % 100000;
    r->worker = (uint32_t)(ns_test_rand(rng) % 4 == 0 ? UINT32_MAX : ns_test_rand(rng) % 64);
    snprintf(r->domain, sizeof(r->domain), "%s", domains[ns_test_rand(rng) % 4]);
    r->unbiased = (int)(ns_test_rand(rng) % 2);
    r->update = 1u + (unsigned)(ns_test_rand(rng) % 3);
    r->scope = ns_test_rand(rng) % 2 ? NS_SCOPE_DOMAIN : NS_SCOPE_GLOBAL;
    r->world_size = ns_test_rand(rng) % 2 ? -1 : 1 + (int64_t)(ns_test_rand(rng) % 1000);
    r->n_layers = 1 + ns_test_rand(rng) % MAX_LAYERS;
    r->layers = f->layers;
    for (size_t l = 0; l < r->n_layers; l++) {
        ns_layer_report_t *L = &f->layers[l];
        /* Unique names, not sorted: the decoder sorts. */
        snprintf(L->name, sizeof(L->name), "layer%zu.%llu.bn", r->n_layers - l,
                 (unsigned long long)(ns_test_rand(rng) % 100));
        L->channels = ns_test_rand(rng) % 8 == 0 ? 0 : 1 + ns_test_rand(rng) % MAX_CHANNELS;
        L->count = L->channels == 0 ? 0 : ns_test_rand(rng) % 5 == 0 ? 1 : ns_test_rand(rng);
        L->count &= (uint64_t)INT64_MAX;
        if (L->channels == 0 && ns_test_rand(rng) % 2) {
            /* count 0 with arrays: still encoded, still valid */
            L->channels = 3;
            L->count = 0;
        }
        for (size_t c = 0; c < L->channels; c++) {
            f->mean[l][c] = awkward(rng);
            f->var[l][c] = fabsf(awkward(rng));
        }
        L->mean = L->channels ? f->mean[l] : NULL;
        L->var = L->channels ? f->var[l] : NULL;
    }
}

static const ns_layer_report_t *find(const ns_report_t *r, const char *name)
{
    for (size_t i = 0; i < r->n_layers; i++)
        if (strcmp(r->layers[i].name, name) == 0)
            return &r->layers[i];
    return NULL;
}

static int same_bits(float a, float b)
{
    return memcmp(&a, &b, sizeof(a)) == 0;
}

static void check_round_trip(const fixture_t *f, ns_format_t format)
{
    ns_buf_t buf = {0};
    ns_error_detail_t err = {0};
    ns_report_t *back = NULL;
    const ns_report_t *r = &f->report;
    ck_assert_msg(ns_report_encode(&buf, format, r, &err) == 0, "%s", err.message);
    if (format == NS_FORMAT_JSON)
        ck_assert_msg(ns_report_decode_json(&back, buf.data, buf.len, &err) == 0, "%s: %s",
                      err.message, buf.data);
    else
        ck_assert_msg(
            ns_report_decode_safetensors(&back, (const uint8_t *)buf.data, buf.len, &err) == 0,
            "%s", err.message);
    ck_assert_uint_eq(back->step, r->step);
    ck_assert_uint_eq(back->worker, r->worker);
    ck_assert_str_eq(back->domain, r->domain[0] ? r->domain : "default");
    ck_assert_int_eq(back->unbiased, r->unbiased);
    ck_assert_uint_eq(back->update, r->update);
    ck_assert_int_eq(back->scope, r->scope);
    ck_assert_int_eq(back->world_size, r->world_size);
    ck_assert_uint_eq(back->n_layers, r->n_layers);
    for (size_t i = 0; i < back->n_layers; i++) {
        const ns_layer_report_t *got = &back->layers[i], *want = find(r, got->name);
        ck_assert_ptr_nonnull(want);
        ck_assert_uint_eq(got->count, want->count);
        ck_assert_uint_eq(got->channels, want->channels);
        for (size_t c = 0; c < want->channels; c++) {
            ck_assert_msg(same_bits(got->mean[c], want->mean[c]), "%s.mean[%zu]: %a != %a",
                          got->name, c, (double)got->mean[c], (double)want->mean[c]);
            float expect = want->var[c];
            if (r->unbiased) {
                /* doc/design.md: unbiased * (n-1)/n; 0 when n <= 1. */
                long double n = (long double)want->count;
                expect = want->count <= 1 ? 0.0f : (float)((long double)want->var[c] * (n - 1) / n);
                ck_assert_msg(fabsf(got->var[c] - expect) <= fabsf(expect) * 0x1p-23f,
                              "%s.var[%zu]: %a != %a", got->name, c, (double)got->var[c],
                              (double)expect);
            } else {
                ck_assert_msg(same_bits(got->var[c], expect), "%s.var[%zu]: %a != %a", got->name, c,
                              (double)got->var[c], (double)expect);
            }
        }
    }
    ns_report_free(back);
    ns_buf_free(&buf);
}

START_TEST(t_round_trip_random)
{
    uint64_t rng = ns_test_seed();
    fixture_t *f = malloc(sizeof(*f));
    for (int i = 0; i < 300; i++) {
        fixture_make(f, &rng);
        check_round_trip(f, NS_FORMAT_JSON);
        check_round_trip(f, NS_FORMAT_SAFETENSORS);
    }
    free(f);
}
END_TEST

START_TEST(t_refused)
{
    uint64_t rng = ns_test_seed();
    fixture_t *f = malloc(sizeof(*f));
    ns_buf_t buf = {0};
    ns_error_detail_t err = {0};
    fixture_make(f, &rng);
    f->report.n_layers = 1;
    f->layers[0].channels = 2;
    f->layers[0].count = 5;
    f->layers[0].mean = f->mean[0];
    f->layers[0].var = f->var[0];
    f->mean[0][0] = f->mean[0][1] = 1.0f;
    f->var[0][0] = f->var[0][1] = 1.0f;
    ck_assert_int_eq(ns_report_encode(&buf, NS_FORMAT_JSON, &f->report, NULL), 0);
    ns_buf_free(&buf);

    f->report.update = 0;
    ck_assert_int_eq(ns_report_encode(&buf, NS_FORMAT_JSON, &f->report, &err), NS_EINVAL);
    ck_assert_str_eq(err.field, "update");
    f->report.update = NS_UPDATE_EMA;

    memset(&err, 0, sizeof(err));
    f->layers[0].mean = NULL;
    ck_assert_int_eq(ns_report_encode(&buf, NS_FORMAT_SAFETENSORS, &f->report, &err), NS_EINVAL);
    f->layers[0].mean = f->mean[0];
    f->layers[0].channels = 0;
    ck_assert_int_eq(ns_report_encode(&buf, NS_FORMAT_JSON, &f->report, NULL), NS_EINVAL);
    f->layers[0].channels = 2;

    snprintf(f->layers[0].name, sizeof(f->layers[0].name), "bad name");
    ck_assert_int_eq(ns_report_encode(&buf, NS_FORMAT_JSON, &f->report, NULL), NS_EINVAL);
    snprintf(f->layers[0].name, sizeof(f->layers[0].name), "bn");
    snprintf(f->report.domain, sizeof(f->report.domain), "*");
    ck_assert_int_eq(ns_report_encode(&buf, NS_FORMAT_JSON, &f->report, NULL), NS_EINVAL);
    f->report.domain[0] = '\0';
    f->report.world_size = 0;
    ck_assert_int_eq(ns_report_encode(&buf, NS_FORMAT_JSON, &f->report, NULL), NS_EINVAL);
    f->report.world_size = -1;
    f->report.n_layers = 0;
    ck_assert_int_eq(ns_report_encode(&buf, NS_FORMAT_JSON, &f->report, NULL), NS_EINVAL);
    f->report.n_layers = 1;

    /* NaN: JSON cannot carry it; safetensors carries it for the server to
     * reject, as the decoder (the server's) does. */
    f->mean[0][1] = nanf("");
    memset(&err, 0, sizeof(err));
    ck_assert_int_eq(ns_report_encode(&buf, NS_FORMAT_JSON, &f->report, &err), NS_EVALUE);
    ck_assert_str_eq(err.field, "layers.bn.mean");
    ck_assert_uint_eq(buf.len, 0);
    ck_assert_int_eq(ns_report_encode(&buf, NS_FORMAT_SAFETENSORS, &f->report, NULL), 0);
    ns_report_t *back = NULL;
    ck_assert_int_eq(ns_report_decode_safetensors(&back, (const uint8_t *)buf.data, buf.len, NULL),
                     NS_EVALUE);
    ns_buf_free(&buf);
    free(f);
}
END_TEST

START_TEST(t_safetensors_layout)
{
    /* The header is padded with spaces to 8 bytes and the data area is
     * covered exactly, as the format's reference writer does. */
    uint64_t rng = ns_test_seed();
    fixture_t *f = malloc(sizeof(*f));
    for (int i = 0; i < 50; i++) {
        ns_buf_t buf = {0};
        fixture_make(f, &rng);
        ck_assert_int_eq(ns_report_encode(&buf, NS_FORMAT_SAFETENSORS, &f->report, NULL), 0);
        uint64_t h = 0;
        for (int b = 7; b >= 0; b--)
            h = (h << 8) | (uint8_t)buf.data[b];
        ck_assert_uint_eq(h % 8, 0);
        size_t data = 0;
        for (size_t l = 0; l < f->report.n_layers; l++)
            data += 8 + 8 * f->layers[l].channels;
        ck_assert_uint_eq(buf.len, 8 + h + data);
        ck_assert_int_eq(buf.data[8], '{');
        ns_buf_free(&buf);
    }
    free(f);
}
END_TEST

/* F64 arrays (a relay's node): written as F64, decoded with the doubles kept
 * bit for bit beside their float32 rounding; an unbiased report converts the
 * doubles with (n-1)/n in double; a negative double variance that rounds to
 * float32 -0 is still refused. */
START_TEST(t_f64_arrays)
{
    double m64[3] = {1.0 + 0x1p-40, -3.25, 1e-30}, v64[3] = {2.0 / 3.0, 0.0, 1e-310};
    float m32[3], v32[3];
    for (int c = 0; c < 3; c++) {
        m32[c] = (float)m64[c];
        v32[c] = (float)v64[c];
    }
    ns_layer_report_t layer = {.name = "bn",
                               .count = 5,
                               .channels = 3,
                               .mean = m32,
                               .var = v32,
                               .mean64 = m64,
                               .var64 = v64};
    ns_report_t r = {.step = 4,
                     .worker = 1,
                     .update = NS_UPDATE_EMA | NS_UPDATE_PRECISE,
                     .world_size = -1,
                     .n_layers = 1,
                     .layers = &layer};
    for (int unbiased = 0; unbiased < 2; unbiased++) {
        r.unbiased = unbiased;
        ns_buf_t buf = {0};
        ck_assert_int_eq(ns_report_encode(&buf, NS_FORMAT_SAFETENSORS, &r, NULL), 0);
        int f64 = 0;
        for (size_t i = 0; i + 5 <= buf.len && !f64; i++)
            f64 = memcmp(buf.data + i, "\"F64\"", 5) == 0;
        ck_assert(f64);
        ns_report_t *back = NULL;
        ck_assert_int_eq(
            ns_report_decode_safetensors(&back, (const uint8_t *)buf.data, buf.len, NULL), 0);
        const ns_layer_report_t *b = &back->layers[0];
        ck_assert_ptr_nonnull(b->mean64);
        ck_assert_ptr_nonnull(b->var64);
        for (int c = 0; c < 3; c++) {
            long double keep = unbiased ? (long double)4 / 5 : 1;
            ck_assert(b->mean64[c] == m64[c]);
            ck_assert(b->mean[c] == m32[c]);
            ck_assert(b->var64[c] == (double)((long double)v64[c] * keep));
        }
        ns_report_free(back);
        ns_buf_free(&buf);
    }
    /* float32 only: no doubles after decoding */
    layer.mean64 = layer.var64 = NULL;
    r.unbiased = 0;
    ns_buf_t buf = {0};
    ck_assert_int_eq(ns_report_encode(&buf, NS_FORMAT_SAFETENSORS, &r, NULL), 0);
    ns_report_t *back = NULL;
    ck_assert_int_eq(ns_report_decode_safetensors(&back, (const uint8_t *)buf.data, buf.len, NULL),
                     0);
    ck_assert_ptr_null(back->layers[0].mean64);
    ns_report_free(back);
    ns_buf_free(&buf);
    /* -1e-300 rounds to float32 -0, which alone would pass */
    layer.mean64 = m64;
    layer.var64 = v64;
    v64[1] = -1e-300;
    v32[1] = (float)v64[1];
    ns_error_detail_t err = {0};
    ck_assert_int_eq(ns_report_encode(&buf, NS_FORMAT_SAFETENSORS, &r, NULL), 0);
    ck_assert_int_eq(ns_report_decode_safetensors(&back, (const uint8_t *)buf.data, buf.len, &err),
                     NS_EVALUE);
    ck_assert_ptr_nonnull(strstr(err.message, "layers.bn.var[1]: negative variance"));
    ns_buf_free(&buf);
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("report_encode");
    TCase *tc = tcase_create("report_encode");
    tcase_add_test(tc, t_round_trip_random);
    tcase_add_test(tc, t_refused);
    tcase_add_test(tc, t_safetensors_layout);
    tcase_add_test(tc, t_f64_arrays);
    suite_add_tcase(s, tc);
    return s;
}

NS_TEST_MAIN(make_suite)
