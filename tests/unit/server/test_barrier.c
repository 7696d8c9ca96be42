/* test_barrier.c - the step barrier of the registry: completion, combination
 * against long double references, arrival-order independence, apply order,
 * timeouts with a fake clock, every rejection leaving state unchanged, and
 * arrays a report borrows copied before the report ends (into blocks the
 * layer keeps from step to step, counted in memory_bytes). */
#include "nsd_fixture.h"

#define C 5

static nsd_registry_t *new_registry(uint32_t world_size, const char *on_timeout)
{
    nsd_limits_t lim = {.max_pending_steps = 0, .max_memory = 0, .threads = 1};
    nsd_registry_t *reg = nsd_registry_create(&lim);
    ck_assert_ptr_nonnull(reg);
    ns_run_config_t cfg;
    ns_run_config_defaults(&cfg);
    cfg.has_world_size = 1;
    cfg.world_size = world_size;
    cfg.has_sync_timeout_ms = 1;
    cfg.sync_timeout_ms = 1000;
    if (on_timeout) {
        cfg.has_on_timeout = 1;
        cfg.on_timeout_drop = strcmp(on_timeout, "drop") == 0;
    }
    int created = 0;
    ck_assert_int_eq(nsd_registry_put_run(reg, "r", &cfg, &created, NULL), 0);
    ck_assert_int_eq(created, 1);
    return reg;
}

/* Four workers' arrivals of one step: batch sizes differ, worker 2 is empty. */
typedef struct four_s {
    uint64_t n[4];
    float mean[4][C], var[4][C];
} four_t;

static void four_make(four_t *f, uint64_t *rng)
{
    const uint64_t n[4] = {3 * 7 * 7, 5 * 7 * 7, 0, 1};
    for (int w = 0; w < 4; w++) {
        f->n[w] = n[w];
        fx_random_floats(rng, f->mean[w], C, -3.0, 3.0);
        fx_random_floats(rng, f->var[w], C, 0.0, 4.0);
    }
}

static int four_send(nsd_registry_t *reg, const four_t *f, uint64_t step, int w, uint64_t now,
                     fx_sync_t *sync)
{
    /* The empty batch sends arrays too: they must be ignored. */
    fx_layer_t l = {"bn1", f->n[w], C, f->mean[w], f->var[w]};
    return fx_send(reg, "r", step, (uint32_t)w, NULL, &l, 1, now, sync ? fx_sync_cb : NULL, sync);
}

START_TEST(test_four_workers_global_stats)
{
    uint64_t rng = ns_test_seed();
    four_t f;
    four_make(&f, &rng);
    nsd_registry_t *reg = new_registry(4, NULL);
    fx_sync_t sync[4] = {{0}};
    for (int w = 0; w < 4; w++) {
        ck_assert_int_eq(four_send(reg, &f, 10, w, 5, &sync[w]), 0);
        for (int k = 0; k <= w; k++)
            ck_assert_int_eq(sync[k].calls, w == 3 ? 1 : 0); /* nobody wakes before the 4th */
    }
    const float *means[4] = {f.mean[0], f.mean[1], f.mean[2], f.mean[3]};
    const float *vars[4] = {f.var[0], f.var[1], f.var[2], f.var[3]};
    long double rm[C], rv[C];
    uint64_t N = fx_ref_combine(4, f.n, means, vars, C, rm, rv);
    for (int w = 0; w < 4; w++) {
        nsd_sync_result_t *res = sync[w].res;
        ck_assert_int_eq(res->status, 0);
        ck_assert_int_eq(res->complete, 1);
        ck_assert_uint_eq(res->workers, 4);
        ck_assert_uint_eq(res->step, 10);
        ck_assert_uint_eq(res->n_layers, 1);
        ck_assert_str_eq(res->layers[0].name, "bn1");
        ck_assert_uint_eq(res->layers[0].count, N);
        ck_assert_uint_eq(res->layers[0].channels, C);
        for (size_t c = 0; c < C; c++) {
            fx_close(res->layers[0].mean[c], rm[c], 1e-13, "mean", c);
            fx_close(res->layers[0].var[c], rv[c], 1e-13, "var", c);
        }
    }
    /* source=last serves the same numbers, with the count and step. */
    nsd_stats_t *s = fx_stats(reg, "r", NSD_SOURCE_LAST, NULL);
    const ns_out_layer_t *l = fx_layer_of(s, "bn1");
    ck_assert_ptr_nonnull(l);
    ck_assert_int_eq(fx_scalar(l, "count"), (int64_t)N);
    ck_assert_int_eq(fx_scalar(l, "step"), 10);
    ck_assert_mem_eq(l->arrays[0], sync[0].res->layers[0].mean, C * sizeof(double));
    ck_assert_mem_eq(l->arrays[1], sync[0].res->layers[0].var, C * sizeof(double));
    nsd_stats_free(s);
    nsd_counters_t cnt;
    nsd_registry_counters(reg, &cnt);
    ck_assert_uint_eq(cnt.steps_finalized, 1);
    ck_assert_uint_eq(cnt.steps_applied, 1);
    ck_assert_uint_eq(cnt.pending_steps, 0);
    ck_assert_uint_eq(cnt.sync_waiters, 0);
    ck_assert_uint_eq(cnt.reports_accepted, 4);
    for (int w = 0; w < 4; w++)
        fx_sync_clear(&sync[w]);
    nsd_registry_free(reg);
}
END_TEST

/* Worker w's report of 'f' with its arrays in a buffer the report only
 * borrows (as a safetensors body read in place); sent, then the buffer is
 * overwritten as a finished request's body may be. */
static void send_borrowed(nsd_registry_t *reg, const four_t *f, uint64_t step, int w,
                          fx_sync_t *sync)
{
    fx_layer_t fl = {"bn1", f->n[w], C, f->mean[w], f->var[w]};
    ns_report_t *r = fx_report(step, (uint32_t)w, NULL, &fl, 1);
    ns_layer_report_t *l = &r->layers[0];
    float *body = malloc(2 * C * sizeof(float));
    ck_assert_ptr_nonnull(body);
    memcpy(body, l->mean, C * sizeof(float));
    memcpy(body + C, l->var, C * sizeof(float));
    free(l->mean);
    free(l->var);
    l->mean = body;
    l->var = body + C;
    l->borrowed = 1;
    ns_error_detail_t err = {0};
    ck_assert_int_eq(nsd_registry_report(reg, "r", r, 5, fx_sync_cb, sync, &err), 0);
    for (size_t i = 0; i < 2 * C; i++)
        body[i] = NAN;
    free(body);
}

START_TEST(test_borrowed_arrays_copied)
{
    uint64_t rng = ns_test_seed();
    nsd_registry_t *reg = new_registry(4, NULL), *owned = new_registry(4, NULL);
    /* Steps 10 to 12: the layer keeps blocks from its second closed step
     * on (11), and step 12 copies into them. */
    for (uint64_t step = 10; step <= 12; step++) {
        four_t f;
        four_make(&f, &rng);
        fx_sync_t sync[4] = {{0}}, sync_owned[4] = {{0}};
        for (int w = 0; w < 4; w++) {
            send_borrowed(reg, &f, step, w, &sync[w]);
            ck_assert_int_eq(four_send(owned, &f, step, w, 5, &sync_owned[w]), 0);
            nsd_counters_t a, b;
            nsd_registry_counters(reg, &a);
            nsd_registry_counters(owned, &b);
            /* The copies are counted as the reports' own arrays are; once
             * step 11 closed its four blocks stay with the layer, and step
             * 12's arrivals take them one by one until it closes too. */
            uint64_t blocks = w == 3 ? (step >= 11 ? 4 : 0) : step >= 12 ? 3 - (uint64_t)w : 0;
            uint64_t kept = blocks * 2 * C * sizeof(float);
            ck_assert_uint_eq(a.memory_bytes, b.memory_bytes + kept);
        }
        const float *means[4] = {f.mean[0], f.mean[1], f.mean[2], f.mean[3]};
        const float *vars[4] = {f.var[0], f.var[1], f.var[2], f.var[3]};
        long double rm[C], rv[C];
        uint64_t N = fx_ref_combine(4, f.n, means, vars, C, rm, rv);
        for (int w = 0; w < 4; w++) {
            const nsd_sync_result_t *res = sync[w].res;
            ck_assert_int_eq(sync[w].calls, 1);
            ck_assert_int_eq(res->status, 0);
            ck_assert_uint_eq(res->layers[0].count, N);
            for (size_t c = 0; c < C; c++) {
                fx_close(res->layers[0].mean[c], rm[c], 1e-13, "mean", c);
                fx_close(res->layers[0].var[c], rv[c], 1e-13, "var", c);
            }
            ck_assert_mem_eq(res->layers[0].mean, sync_owned[w].res->layers[0].mean,
                             C * sizeof(double));
            ck_assert_mem_eq(res->layers[0].var, sync_owned[w].res->layers[0].var,
                             C * sizeof(double));
            fx_sync_clear(&sync[w]);
            fx_sync_clear(&sync_owned[w]);
        }
    }
    ck_assert_int_eq(nsd_registry_delete_run(reg, "r", NULL), 0);
    ck_assert_int_eq(nsd_registry_delete_run(owned, "r", NULL), 0);
    nsd_counters_t a, b;
    nsd_registry_counters(reg, &a);
    nsd_registry_counters(owned, &b);
    ck_assert_uint_eq(a.memory_bytes, 0); /* what the layers kept leaves with the run */
    ck_assert_uint_eq(b.memory_bytes, 0);
    nsd_registry_free(reg);
    nsd_registry_free(owned);
}
END_TEST

/* Every order of the four arrivals gives the same bits (EMA and last). */
START_TEST(test_arrival_order_bitwise)
{
    uint64_t rng = ns_test_seed() ^ 0x9e3779b97f4a7c15ull;
    four_t f[3];
    for (int s = 0; s < 3; s++)
        four_make(&f[s], &rng);
    int perm[4] = {0, 1, 2, 3};
    char *first = NULL;
    int count = 0;
    /* Heap's algorithm over the 24 permutations. */
    int cidx[4] = {0};
    for (int i = 0;;) {
        nsd_registry_t *reg = new_registry(4, NULL);
        for (int s = 0; s < 3; s++)
            for (int k = 0; k < 4; k++)
                ck_assert_int_eq(four_send(reg, &f[s], (uint64_t)s + 1, perm[(k + s) % 4], 1, NULL),
                                 0);
        nsd_stats_t *e = fx_stats(reg, "r", NSD_SOURCE_EMA, NULL);
        nsd_stats_t *l = fx_stats(reg, "r", NSD_SOURCE_LAST, NULL);
        char buf[4 * C * sizeof(double)];
        memcpy(buf, e->layers[0].arrays[0], C * sizeof(double));
        memcpy(buf + C * sizeof(double), e->layers[0].arrays[1], C * sizeof(double));
        memcpy(buf + 2 * C * sizeof(double), l->layers[0].arrays[0], C * sizeof(double));
        memcpy(buf + 3 * C * sizeof(double), l->layers[0].arrays[1], C * sizeof(double));
        ck_assert_int_eq(fx_scalar(&e->layers[0], "num_batches_tracked"), 3);
        if (first == NULL) {
            first = malloc(sizeof(buf));
            memcpy(first, buf, sizeof(buf));
        } else {
            ck_assert_mem_eq(first, buf, sizeof(buf));
        }
        nsd_stats_free(e);
        nsd_stats_free(l);
        nsd_registry_free(reg);
        count++;
        /* next permutation */
        while (i < 4 && cidx[i] >= i) {
            cidx[i] = 0;
            i++;
        }
        if (i >= 4)
            break;
        int j = i % 2 ? cidx[i] : 0;
        int t = perm[j];
        perm[j] = perm[i];
        perm[i] = t;
        cidx[i]++;
        i = 0;
    }
    ck_assert_int_eq(count, 24);
    free(first);
}
END_TEST

/* Reference EMA (PyTorch's formula) applied to a combined step. */
static void ref_ema(long double *rm, long double *rv, uint64_t N, const long double *m,
                    const long double *v, long double f)
{
    for (size_t c = 0; c < C; c++) {
        rm[c] = (1 - f) * rm[c] + f * m[c];
        rv[c] = (1 - f) * rv[c] + f * v[c] * N / (N - 1);
    }
}

/* Steps completing out of order are applied in step order. */
START_TEST(test_out_of_order_apply)
{
    uint64_t rng = ns_test_seed() + 17;
    nsd_registry_t *reg = new_registry(2, NULL);
    float m[3][2][C], v[3][2][C];
    uint64_t n[2] = {64, 32};
    for (int s = 0; s < 3; s++)
        for (int w = 0; w < 2; w++) {
            fx_random_floats(&rng, m[s][w], C, -1, 1);
            fx_random_floats(&rng, v[s][w], C, 0.5, 2);
        }
    /* worker 0 runs ahead: steps 1, 2, 3; worker 1 reports 2 and 3 first. */
    for (int s = 0; s < 3; s++) {
        fx_layer_t l = {"bn", n[0], C, m[s][0], v[s][0]};
        ck_assert_int_eq(fx_send(reg, "r", (uint64_t)s + 1, 0, NULL, &l, 1, 1, NULL, NULL), 0);
    }
    fx_layer_t l2 = {"bn", n[1], C, m[1][1], v[1][1]};
    ck_assert_int_eq(fx_send(reg, "r", 2, 1, NULL, &l2, 1, 1, NULL, NULL), 0);
    fx_layer_t l3 = {"bn", n[1], C, m[2][1], v[2][1]};
    ck_assert_int_eq(fx_send(reg, "r", 3, 1, NULL, &l3, 1, 1, NULL, NULL), 0);
    /* Steps 2 and 3 are finalized but wait for step 1: EMA untouched. */
    nsd_stats_t *s = fx_stats(reg, "r", NSD_SOURCE_EMA, NULL);
    ck_assert_int_eq(fx_scalar(&s->layers[0], "num_batches_tracked"), 0);
    ck_assert_int_eq(fx_scalar(&s->layers[0], "step"), -1);
    for (size_t c = 0; c < C; c++) {
        ck_assert(s->layers[0].arrays[0][c] == 0.0);
        ck_assert(s->layers[0].arrays[1][c] == 1.0);
    }
    nsd_stats_free(s);
    json_t *info = nsd_registry_run_json(reg, "r", 1, NULL);
    json_t *lay = json_object_get(json_object_get(json_object_get(info, "status"), "layers"), "bn");
    ck_assert_int_eq(json_integer_value(json_object_get(lay, "step")), -1);
    ck_assert_int_eq(json_integer_value(json_object_get(lay, "finalized_step")), 3);
    json_decref(info);
    /* last serves the highest finalized step already. */
    s = fx_stats(reg, "r", NSD_SOURCE_LAST, NULL);
    ck_assert_int_eq(fx_scalar(&s->layers[0], "step"), 3);
    nsd_stats_free(s);
    /* A new step below the highest finalized one is stale. */
    fx_layer_t l0 = {"bn", n[1], C, m[0][1], v[0][1]};
    ck_assert_int_eq(fx_send(reg, "r", 0, 1, NULL, &l0, 1, 1, NULL, NULL), NS_ESTALE);
    /* Worker 1 sends step 1 late: it is accepted (pending) but worker 1's steps
     * must increase, so it is rejected as stale; the step then times out. */
    fx_layer_t l1 = {"bn", n[1], C, m[0][1], v[0][1]};
    ck_assert_int_eq(fx_send(reg, "r", 1, 1, NULL, &l1, 1, 1, NULL, NULL), NS_ESTALE);
    nsd_registry_free(reg);

    /* Same again, but worker 1 reports step 1 first, then 3 and 2 is
     * never completed by it: the order of application is still 1, 2, 3. */
    reg = new_registry(2, NULL);
    for (int s2 = 0; s2 < 3; s2++) {
        fx_layer_t l = {"bn", n[0], C, m[s2][0], v[s2][0]};
        ck_assert_int_eq(fx_send(reg, "r", (uint64_t)s2 + 1, 0, NULL, &l, 1, 1, NULL, NULL), 0);
    }
    ck_assert_int_eq(fx_send(reg, "r", 3, 1, NULL, &l3, 1, 1, NULL, NULL), 0); /* 3 final */
    s = fx_stats(reg, "r", NSD_SOURCE_EMA, NULL);
    ck_assert_int_eq(fx_scalar(&s->layers[0], "num_batches_tracked"), 0);
    nsd_stats_free(s);
    /* Step 1 and 2 time out (partial): everything applies in order 1, 2, 3. */
    ck_assert_uint_eq(nsd_registry_expire(reg, 1000), 1001);
    ck_assert_uint_eq(nsd_registry_expire(reg, 1001), UINT64_MAX);
    s = fx_stats(reg, "r", NSD_SOURCE_EMA, NULL);
    ck_assert_int_eq(fx_scalar(&s->layers[0], "num_batches_tracked"), 3);
    ck_assert_int_eq(fx_scalar(&s->layers[0], "step"), 3);
    long double rm[C], rv[C], gm[C], gv[C];
    for (size_t c = 0; c < C; c++) {
        rm[c] = 0;
        rv[c] = 1;
    }
    for (int s2 = 0; s2 < 3; s2++) {
        size_t k = s2 < 2 ? 1 : 2; /* steps 1 and 2: worker 0 only */
        const float *mm[2] = {m[s2][0], m[s2][1]};
        const float *vv[2] = {v[s2][0], v[s2][1]};
        uint64_t N = fx_ref_combine(k, n, mm, vv, C, gm, gv);
        ref_ema(rm, rv, N, gm, gv, 0.1L);
    }
    for (size_t c = 0; c < C; c++) {
        fx_close(s->layers[0].arrays[0][c], rm[c], 1e-13, "running_mean", c);
        fx_close(s->layers[0].arrays[1][c], rv[c], 1e-13, "running_var", c);
    }
    nsd_stats_free(s);
    nsd_registry_free(reg);
}
END_TEST

/* The apply order waits for an earlier pending step of the same layer only.
 * Steps of one worker must increase, so a step that a worker skipped can only
 * be closed by its timeout. */
START_TEST(test_apply_waits_for_earlier_pending)
{
    nsd_registry_t *reg = new_registry(2, NULL);
    float m[2] = {1, 2}, v[2] = {1, 1};
    fx_layer_t a = {"a", 10, 2, m, v}, b = {"b", 10, 2, m, v};
    /* step 5: worker 0 only (pending); step 6: both (finalized, waits). */
    ck_assert_int_eq(fx_send(reg, "r", 5, 0, NULL, &a, 1, 1, NULL, NULL), 0);
    ck_assert_int_eq(fx_send(reg, "r", 6, 0, NULL, &a, 1, 2, NULL, NULL), 0);
    ck_assert_int_eq(fx_send(reg, "r", 6, 1, NULL, &a, 1, 2, NULL, NULL), 0);
    /* layer b at step 6 has nothing pending below: applies at once. */
    ck_assert_int_eq(fx_send(reg, "r", 6, 0, NULL, &b, 1, 2, NULL, NULL), 0);
    ck_assert_int_eq(fx_send(reg, "r", 6, 1, NULL, &b, 1, 2, NULL, NULL), 0);
    nsd_stats_t *s = fx_stats(reg, "r", NSD_SOURCE_EMA, NULL);
    ck_assert_int_eq(fx_scalar(fx_layer_of(s, "a"), "num_batches_tracked"), 0);
    ck_assert_int_eq(fx_scalar(fx_layer_of(s, "b"), "num_batches_tracked"), 1);
    nsd_stats_free(s);
    /* worker 1 already went past step 5 */
    ck_assert_int_eq(fx_send(reg, "r", 5, 1, NULL, &a, 1, 3, NULL, NULL), NS_ESTALE);
    /* Step 5 times out (partial): 5 then 6 apply. */
    ck_assert_uint_eq(nsd_registry_expire(reg, 1000), 1001);
    ck_assert_uint_eq(nsd_registry_expire(reg, 1001), UINT64_MAX);
    s = fx_stats(reg, "r", NSD_SOURCE_EMA, NULL);
    ck_assert_int_eq(fx_scalar(fx_layer_of(s, "a"), "num_batches_tracked"), 2);
    ck_assert_int_eq(fx_scalar(fx_layer_of(s, "a"), "step"), 6);
    /* (1 - 0.1) * 0 + 0.1 * 1 = 0.1, then 0.9 * 0.1 + 0.1 * 1 */
    ck_assert(fx_layer_of(s, "a")->arrays[0][0] == 0.9 * (0.1 * 1.0) + 0.1 * 1.0);
    nsd_stats_free(s);
    nsd_registry_free(reg);
}
END_TEST

START_TEST(test_timeout_partial)
{
    uint64_t rng = ns_test_seed() + 3;
    nsd_registry_t *reg = new_registry(3, "partial");
    float m[2][C], v[2][C];
    for (int w = 0; w < 2; w++) {
        fx_random_floats(&rng, m[w], C, -1, 1);
        fx_random_floats(&rng, v[w], C, 0.1, 1);
    }
    uint64_t n[2] = {40, 24};
    fx_sync_t sync[2] = {{0}};
    for (int w = 0; w < 2; w++) {
        fx_layer_t l = {"bn", n[w], C, m[w], v[w]};
        ck_assert_int_eq(fx_send(reg, "r", 7, (uint32_t)w, NULL, &l, 1, 5000 + 10 * (uint64_t)w,
                                 fx_sync_cb, &sync[w]),
                         0);
    }
    /* The deadline is the first arrival + sync_timeout_ms. */
    ck_assert_uint_eq(nsd_registry_expire(reg, 5999), 6000);
    ck_assert_int_eq(sync[0].calls, 0);
    ck_assert_uint_eq(nsd_registry_expire(reg, 6000), UINT64_MAX);
    const float *mm[2] = {m[0], m[1]}, *vv[2] = {v[0], v[1]};
    long double rm[C], rv[C];
    uint64_t N = fx_ref_combine(2, n, mm, vv, C, rm, rv);
    for (int w = 0; w < 2; w++) {
        ck_assert_int_eq(sync[w].calls, 1);
        nsd_sync_result_t *res = sync[w].res;
        ck_assert_int_eq(res->status, 0);
        ck_assert_int_eq(res->complete, 0);
        ck_assert_uint_eq(res->workers, 2);
        ck_assert_uint_eq(res->layers[0].count, N);
        for (size_t c = 0; c < C; c++) {
            fx_close(res->layers[0].mean[c], rm[c], 1e-13, "mean", c);
            fx_close(res->layers[0].var[c], rv[c], 1e-13, "var", c);
        }
        fx_sync_clear(&sync[w]);
    }
    nsd_stats_t *s = fx_stats(reg, "r", NSD_SOURCE_EMA, NULL);
    ck_assert_int_eq(fx_scalar(&s->layers[0], "num_batches_tracked"), 1);
    nsd_stats_free(s);
    /* The late worker is refused: the step was finalized by the timeout. */
    fx_layer_t l = {"bn", 8, C, m[0], v[0]};
    ck_assert_int_eq(fx_send(reg, "r", 7, 2, NULL, &l, 1, 6001, NULL, NULL), NS_ESTALE);
    nsd_counters_t cnt;
    nsd_registry_counters(reg, &cnt);
    ck_assert_uint_eq(cnt.steps_timed_out, 1);
    ck_assert_uint_eq(cnt.steps_dropped, 0);
    ck_assert_uint_eq(cnt.steps_finalized, 1);
    nsd_registry_free(reg);
}
END_TEST

START_TEST(test_timeout_drop)
{
    nsd_registry_t *reg = new_registry(2, "drop");
    float m[2] = {1, 2}, v[2] = {1, 1};
    fx_layer_t l = {"bn", 10, 2, m, v};
    fx_sync_t sync = {0};
    ck_assert_int_eq(fx_send(reg, "r", 1, 0, NULL, &l, 1, 100, fx_sync_cb, &sync), 0);
    ck_assert_int_eq(fx_send(reg, "r", 2, 0, NULL, &l, 1, 500, NULL, NULL), 0);
    ck_assert_int_eq(fx_send(reg, "r", 2, 1, NULL, &l, 1, 600, NULL, NULL), 0);
    ck_assert_uint_eq(nsd_registry_expire(reg, 1099), 1100);
    ck_assert_int_eq(sync.calls, 0);
    ck_assert_uint_eq(nsd_registry_expire(reg, 1100), UINT64_MAX);
    ck_assert_int_eq(sync.calls, 1);
    ck_assert_int_eq(sync.res->status, NS_ETIMEDOUT);
    fx_sync_clear(&sync);
    /* The dropped step never touched EMA; step 2 was applied once 1 was gone. */
    nsd_stats_t *s = fx_stats(reg, "r", NSD_SOURCE_EMA, NULL);
    ck_assert_int_eq(fx_scalar(&s->layers[0], "num_batches_tracked"), 1);
    ck_assert_int_eq(fx_scalar(&s->layers[0], "step"), 2);
    nsd_stats_free(s);
    nsd_counters_t cnt;
    nsd_registry_counters(reg, &cnt);
    ck_assert_uint_eq(cnt.steps_dropped, 1);
    ck_assert_uint_eq(cnt.steps_timed_out, 1);
    ck_assert_uint_eq(cnt.steps_finalized, 1);
    /* A re-report of the dropped step is stale. */
    ck_assert_int_eq(fx_send(reg, "r", 1, 1, NULL, &l, 1, 1200, NULL, NULL), NS_ESTALE);
    nsd_registry_free(reg);
}
END_TEST

/* Every rejection: the code, and a state identical before and after. */
START_TEST(test_rejections_change_nothing)
{
    nsd_limits_t lim = {.max_pending_steps = 2, .max_memory = 0, .threads = 1};
    nsd_registry_t *reg = nsd_registry_create(&lim);
    ns_run_config_t cfg;
    ns_run_config_defaults(&cfg);
    cfg.has_world_size = 1;
    cfg.world_size = 2;
    ck_assert_int_eq(nsd_registry_put_run(reg, "r", &cfg, NULL, NULL), 0);
    float m3[3] = {1, 2, 3}, v3[3] = {1, 1, 1}, m4[4] = {0}, v4[4] = {1, 1, 1, 1};
    fx_layer_t a = {"a", 10, 3, m3, v3}, b = {"b", 10, 3, m3, v3};
    fx_layer_t ab[2] = {a, b};
    /* step 1 complete on both layers; step 2: worker 0 only */
    for (uint32_t w = 0; w < 2; w++)
        ck_assert_int_eq(fx_send(reg, "r", 1, w, NULL, ab, 2, 1, NULL, NULL), 0);
    ck_assert_int_eq(fx_send(reg, "r", 2, 0, NULL, ab, 2, 1, NULL, NULL), 0);
    char *before = fx_snapshot(reg, "r", 1);

    fx_layer_t bad_ch[2] = {a, {"b", 10, 4, m4, v4}};
    fx_sync_t sync = {0};
    fx_opts_t precise_only = {.update = "[\"precise\"]"};
    struct {
        const char *what;
        uint64_t step;
        uint32_t worker;
        const fx_opts_t *o;
        const fx_layer_t *layers;
        size_t n;
        int code;
    } cases[] = {
        {"channels on the second layer", 3, 0, NULL, bad_ch, 2, NS_ECHANNELS},
        {"worker outside world_size", 3, 2, NULL, ab, 2, NS_EWORKER},
        {"duplicate", 2, 0, NULL, ab, 2, NS_EDUPLICATE},
        {"finalized step", 1, 1, NULL, ab, 2, NS_ESTALE},
        {"below the worker's last step", 1, 0, NULL, ab, 2, NS_ESTALE},
        {"update differs", 2, 1, &precise_only, ab, 2, NS_ECONFLICT},
        {"too many pending", 4, 0, NULL, ab, 2, 0}, /* step 4 ok: 2 pending */
        {"too many pending", 5, 0, NULL, ab, 2, NS_EBUSY},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int rc = fx_send(reg, "r", cases[i].step, cases[i].worker, cases[i].o, cases[i].layers,
                         cases[i].n, 1, fx_sync_cb, &sync);
        ck_assert_msg(rc == cases[i].code, "%s: got %d want %d", cases[i].what, rc, cases[i].code);
        if (rc == 0) {
            free(before);
            before = fx_snapshot(reg, "r", 1);
            continue;
        }
        ck_assert_int_eq(sync.calls, 0); /* a failed call never calls back */
        char *after = fx_snapshot(reg, "r", 1);
        ck_assert_msg(strcmp(before, after) == 0, "%s changed the state", cases[i].what);
        free(after);
    }
    free(before);
    nsd_registry_shutdown(reg); /* the accepted /sync of step 4 */
    ck_assert_int_eq(sync.calls, 1);
    ck_assert_int_eq(sync.res->status, NS_ESHUTDOWN);
    fx_sync_clear(&sync);
    nsd_registry_free(reg);

    /* Memory budget: a report that would exceed it is refused, nothing changes. */
    lim.max_pending_steps = 0;
    lim.max_memory = 4096;
    reg = nsd_registry_create(&lim);
    ck_assert_int_eq(nsd_registry_put_run(reg, "r", &cfg, NULL, NULL), 0);
    float mb[64] = {0}, vb[64] = {0};
    fx_layer_t small = {"s", 4, 4, mb, vb}, big = {"big", 4, 64, mb, vb};
    ck_assert_int_eq(fx_send(reg, "r", 1, 0, NULL, &small, 1, 1, NULL, NULL), 0);
    before = fx_snapshot(reg, "r", 1);
    nsd_counters_t c0, c1;
    nsd_registry_counters(reg, &c0);
    fx_layer_t both[2] = {big, {"s", 4, 4, mb, vb}};
    ck_assert_int_eq(fx_send(reg, "r", 2, 0, NULL, both, 2, 1, NULL, NULL), NS_EMEMORY);
    char *after = fx_snapshot(reg, "r", 1);
    ck_assert_str_eq(before, after);
    nsd_registry_counters(reg, &c1);
    ck_assert_uint_eq(c0.memory_bytes, c1.memory_bytes);
    ck_assert_uint_le(c1.memory_bytes, 4096);
    free(before);
    free(after);
    nsd_registry_free(reg);
}
END_TEST

/* A world_size change applies to steps created afterwards only. */
START_TEST(test_world_size_change)
{
    nsd_registry_t *reg = new_registry(4, NULL);
    float m[2] = {1, 2}, v[2] = {1, 1};
    fx_layer_t l = {"bn", 10, 2, m, v};
    ck_assert_int_eq(fx_send(reg, "r", 1, 3, NULL, &l, 1, 1, NULL, NULL), 0);
    ns_run_config_t cfg;
    ns_run_config_defaults(&cfg);
    cfg.has_world_size = 1;
    cfg.world_size = 2;
    int created = 1;
    ck_assert_int_eq(nsd_registry_put_run(reg, "r", &cfg, &created, NULL), 0);
    ck_assert_int_eq(created, 0);
    /* step 1 keeps world_size 4: worker 2 may still report it */
    ck_assert_int_eq(fx_send(reg, "r", 1, 2, NULL, &l, 1, 1, NULL, NULL), 0);
    ck_assert_int_eq(fx_send(reg, "r", 1, 0, NULL, &l, 1, 1, NULL, NULL), 0);
    json_t *info = nsd_registry_run_json(reg, "r", 1, NULL);
    json_t *pend = json_array_get(json_object_get(json_object_get(info, "status"), "pending"), 0);
    ck_assert_int_eq(json_integer_value(json_object_get(pend, "world_size")), 4);
    ck_assert_int_eq(json_array_size(json_object_get(pend, "waiting_for")), 1);
    ck_assert_int_eq(json_integer_value(json_array_get(json_object_get(pend, "waiting_for"), 0)),
                     1);
    json_decref(info);
    ck_assert_int_eq(fx_send(reg, "r", 1, 1, NULL, &l, 1, 1, NULL, NULL), 0); /* complete */
    /* a new step has world_size 2 */
    ck_assert_int_eq(fx_send(reg, "r", 2, 2, NULL, &l, 1, 1, NULL, NULL), NS_EWORKER);
    ck_assert_int_eq(fx_send(reg, "r", 2, 0, NULL, &l, 1, 1, NULL, NULL), 0);
    ck_assert_int_eq(fx_send(reg, "r", 2, 1, NULL, &l, 1, 1, NULL, NULL), 0);
    nsd_stats_t *s = fx_stats(reg, "r", NSD_SOURCE_EMA, NULL);
    ck_assert_int_eq(fx_scalar(&s->layers[0], "num_batches_tracked"), 2);
    nsd_stats_free(s);
    nsd_registry_free(reg);
}
END_TEST

/* Channel count: fixed by the first report with arrays, not by count 0. */
START_TEST(test_channels_fixed_by_arrays)
{
    nsd_registry_t *reg = new_registry(2, NULL);
    float m[3] = {1, 2, 3}, v[3] = {1, 1, 1};
    fx_layer_t empty = {"bn", 0, 0, NULL, NULL};
    fx_layer_t two = {"bn", 5, 2, m, v}, three = {"bn", 5, 3, m, v};
    fx_layer_t empty_two = {"bn", 0, 2, m, v};
    ck_assert_int_eq(fx_send(reg, "r", 1, 0, NULL, &empty, 1, 1, NULL, NULL), 0);
    ck_assert_int_eq(fx_send(reg, "r", 1, 1, NULL, &three, 1, 1, NULL, NULL), 0);
    ck_assert_int_eq(fx_send(reg, "r", 2, 0, NULL, &two, 1, 1, NULL, NULL), NS_ECHANNELS);
    /* count 0 with arrays: they must still have the layer's channel count */
    ck_assert_int_eq(fx_send(reg, "r", 2, 0, NULL, &empty_two, 1, 1, NULL, NULL), NS_ECHANNELS);
    ck_assert_int_eq(fx_send(reg, "r", 2, 0, NULL, &three, 1, 1, NULL, NULL), 0);
    nsd_stats_t *s = fx_stats(reg, "r", NSD_SOURCE_LAST, NULL);
    ck_assert_uint_eq(s->layers[0].channels, 3);
    ck_assert_int_eq(fx_scalar(&s->layers[0], "count"), 5);
    for (size_t c = 0; c < 3; c++) /* the empty batch contributed nothing */
        ck_assert(s->layers[0].arrays[0][c] == m[c]);
    nsd_stats_free(s);
    nsd_registry_free(reg);
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("barrier");
    TCase *tc = tcase_create("barrier");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_four_workers_global_stats);
    tcase_add_test(tc, test_borrowed_arrays_copied);
    tcase_add_test(tc, test_arrival_order_bitwise);
    tcase_add_test(tc, test_out_of_order_apply);
    tcase_add_test(tc, test_apply_waits_for_earlier_pending);
    tcase_add_test(tc, test_timeout_partial);
    tcase_add_test(tc, test_timeout_drop);
    tcase_add_test(tc, test_rejections_change_nothing);
    tcase_add_test(tc, test_world_size_change);
    tcase_add_test(tc, test_channels_fixed_by_arrays);
    suite_add_tcase(s, tc);
    return s;
}

NS_TEST_MAIN(make_suite)
