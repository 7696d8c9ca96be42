/* test_registry_threads.c - many threads reporting to one run: threads on
 * different layers and threads on the same layers (the workers of a step),
 * reports that create layers, /sync waiters spanning several layers,
 * readers, /grad of a layer being reported, the coordinator's expiry and
 * PUTs running meanwhile. The final
 * state must equal, bit for bit, a single thread sending the same reports
 * in order; readers must always see a consistent cut (every report wholly
 * applied or not at all); the persistence hooks must receive each layer's
 * steps in step order, and replaying what they received must rebuild the
 * same state. The pooled EMA is also checked against a long double
 * reference computed here. The threads' reports borrow their arrays from a
 * body, as safetensors are read. Run under ThreadSanitizer by `make tsan`. */
#include <pthread.h>
#include <stdatomic.h>

#include "nsd_fixture.h"

#define W      2   /* workers: the run's world_size */
#define S      120 /* steps */
#define C      24  /* channels */
#define GROUPS 4

/* The layers, and the groups a thread reports together in one report:
 * group 0 is a four-layer report, the others one or two layers. */
static const char *const LAYER[] = {"l0", "l1", "l2", "l3", "l4", "l5", "l6", "l7"};
#define L (sizeof(LAYER) / sizeof(LAYER[0]))
static const size_t GROUP_FIRST[GROUPS] = {0, 4, 5, 6};
static const size_t GROUP_SIZE[GROUPS] = {4, 1, 1, 2};

static float g_mean[S][W][L][C], g_var[S][W][L][C];
static uint64_t g_count[S][W][L];

static const char *domain_of(uint64_t s, uint32_t w)
{
    return (s + w) % 3 == 0 ? "b" : "a";
}

static ns_report_t *group_report(uint64_t s, uint32_t w, size_t g)
{
    fx_layer_t ls[4];
    for (size_t i = 0; i < GROUP_SIZE[g]; i++) {
        size_t l = GROUP_FIRST[g] + i;
        ls[i] = (fx_layer_t){LAYER[l], g_count[s][w][l], C, g_mean[s][w][l], g_var[s][w][l]};
    }
    fx_opts_t o = {.domain = domain_of(s, w), .update = "[\"ema\", \"precise\"]"};
    return fx_report(s, w, &o, ls, GROUP_SIZE[g]);
}

static void make_data(void)
{
    uint64_t rng = ns_test_seed() + 1313;
    for (size_t s = 0; s < S; s++)
        for (size_t w = 0; w < W; w++)
            for (size_t l = 0; l < L; l++) {
                fx_random_floats(&rng, g_mean[s][w][l], C, -3, 3);
                fx_random_floats(&rng, g_var[s][w][l], C, 0.01, 4);
                g_count[s][w][l] = 1 + ns_test_rand(&rng) % 64;
            }
}

/* ---------------------------------------------------------------- the hooks' log */

/* What the persistence hooks received, in call order (they are called
 * from several threads at once: a mutex of the test's own). */
typedef struct entry_s {
    int kind; /* 'P' run_put, 'D' domain_added, 'S' step_finalized */
    ns_run_config_t cfg;
    char domain[NS_NAME_MAX + 1];
    nsd_step_t *step;
} entry_t;

static pthread_mutex_t g_log_lock = PTHREAD_MUTEX_INITIALIZER;
static entry_t *g_log;
static size_t g_n_log, g_cap_log;

static entry_t *log_next(int kind)
{
    if (g_n_log == g_cap_log) {
        g_cap_log = g_cap_log ? 2 * g_cap_log : 1024;
        g_log = realloc(g_log, g_cap_log * sizeof(*g_log));
        CHECK(g_log != NULL, "out of memory");
    }
    entry_t *e = &g_log[g_n_log++];
    memset(e, 0, sizeof(*e));
    e->kind = kind;
    return e;
}

static void hook_put(void *arg, const char *run, const ns_run_config_t *cfg, int created)
{
    (void)arg, (void)run, (void)created;
    pthread_mutex_lock(&g_log_lock);
    log_next('P')->cfg = *cfg;
    pthread_mutex_unlock(&g_log_lock);
}

static void hook_domain(void *arg, const char *run, const char *domain)
{
    (void)arg, (void)run;
    pthread_mutex_lock(&g_log_lock);
    snprintf(log_next('D')->domain, NS_NAME_MAX + 1, "%s", domain);
    pthread_mutex_unlock(&g_log_lock);
}

static void hook_step(void *arg, const char *run, const nsd_step_t *step)
{
    (void)arg, (void)run;
    nsd_step_t *copy = nsd_step_dup(step);
    CHECK(copy != NULL, "out of memory");
    pthread_mutex_lock(&g_log_lock);
    log_next('S')->step = copy;
    pthread_mutex_unlock(&g_log_lock);
}

static void log_clear(void)
{
    for (size_t i = 0; i < g_n_log; i++)
        nsd_step_free(g_log[i].step);
    free(g_log);
    g_log = NULL;
    g_n_log = g_cap_log = 0;
}

/* ---------------------------------------------------------------- threads */

typedef struct shared_s {
    nsd_registry_t *reg;
    _Atomic int reporters_left;
    _Atomic int fails;
    _Atomic int sync_ok;
    _Atomic int cuts_checked;
} shared_t;

typedef struct reporter_s {
    shared_t *sh;
    uint32_t worker;
    size_t group;
} reporter_t;

static void sync_cb(void *arg, nsd_sync_result_t *res)
{
    shared_t *sh = arg;
    if (res->status != 0 || !res->complete || res->workers != W || res->n_layers == 0)
        atomic_fetch_add(&sh->fails, 1);
    for (size_t i = 0; i < res->n_layers; i++)
        if (res->layers[i].channels != C || res->layers[i].mean == NULL)
            atomic_fetch_add(&sh->fails, 1);
    atomic_fetch_add(&sh->sync_ok, 1);
    nsd_sync_result_free(res);
}

/* A group's report with its arrays borrowed from a body, as safetensors are
 * read; the body is freed once the registry has its copies. */
static int report_borrowed(nsd_registry_t *reg, uint64_t s, uint32_t w, size_t g, nsd_sync_cb cb,
                           void *arg, ns_error_detail_t *err)
{
    ns_report_t *rep = group_report(s, w, g);
    float *body = fx_borrow(rep);
    int rc = nsd_registry_report(reg, "r", rep, 0, cb, arg, err);
    free(body);
    return rc;
}

/* One worker's reports of one group of layers, every step in order; every
 * third one a /sync. */
static void *reporter_main(void *p)
{
    reporter_t *r = p;
    for (uint64_t s = 0; s < S; s++) {
        ns_error_detail_t err = {0};
        int sync = (s + r->group) % 3 == 0;
        if (report_borrowed(r->sh->reg, s, r->worker, r->group, sync ? sync_cb : NULL, r->sh,
                            &err) != 0) {
            fprintf(stderr, "report %llu/%u/%zu: %s\n", (unsigned long long)s, r->worker, r->group,
                    err.message);
            atomic_fetch_add(&r->sh->fails, 1);
        }
    }
    atomic_fetch_sub(&r->sh->reporters_left, 1);
    return NULL;
}

/* Gradient sums of layer l4 by worker 'w' at step 's' (exact in double, so
 * the sum over the two workers is known exactly). */
static double grad_value(uint32_t w, uint64_t s, size_t c, int xmu)
{
    return (double)(w * 1000 + s) + 0.5 * (double)c + (xmu ? 0.25 : 0);
}

typedef struct grad_arg_s {
    shared_t *sh;
    uint32_t worker;
    _Atomic int *answers;
} grad_arg_t;

static void grad_cb(void *arg, nsd_grad_result_t *res)
{
    grad_arg_t *g = arg;
    int bad = res->status != 0 || res->grad == NULL || res->grad->n_layers != 1 ||
              res->grad->layers[0].channels != C;
    for (size_t c = 0; !bad && c < C; c++) {
        uint64_t s = res->grad->step;
        bad = res->grad->layers[0].sum_dy[c] != grad_value(0, s, c, 0) + grad_value(1, s, c, 0) ||
              res->grad->layers[0].sum_dy_xmu[c] != grad_value(0, s, c, 1) + grad_value(1, s, c, 1);
    }
    if (bad)
        atomic_fetch_add(&g->sh->fails, 1);
    atomic_fetch_add(g->answers, 1);
    nsd_grad_result_free(res);
}

/* Worker w's /grad of layer l4 at step s. @return the registry's code. */
static int send_grad(nsd_registry_t *reg, uint32_t w, uint64_t s, grad_arg_t *g)
{
    char body[4096];
    int n = snprintf(body, sizeof(body), "{\"step\": %llu, \"worker\": %u, \"layers\": {\"l4\": {",
                     (unsigned long long)s, w);
    for (int xmu = 0; xmu <= 1; xmu++) {
        n += snprintf(body + n, sizeof(body) - (size_t)n, "%s\"%s\": [", xmu ? ", " : "",
                      xmu ? "sum_dy_xmu" : "sum_dy");
        for (size_t c = 0; c < C; c++)
            n += snprintf(body + n, sizeof(body) - (size_t)n, "%s%.17g", c ? ", " : "",
                          grad_value(w, s, c, xmu));
        n += snprintf(body + n, sizeof(body) - (size_t)n, "]");
    }
    snprintf(body + n, sizeof(body) - (size_t)n, "}}}");
    ns_grad_t *gr = NULL;
    ns_error_detail_t err = {0};
    int rc = ns_grad_decode_json(&gr, body, strlen(body), &err);
    if (rc == 0)
        rc = nsd_registry_grad(reg, "r", gr, 0, grad_cb, g, &err);
    if (rc != 0)
        fprintf(stderr, "grad %llu/%u: %s\n", (unsigned long long)s, w, err.message);
    return rc;
}

/* One worker's /grad of layer l4 (the statistics layer the reporters of
 * group 1 update meanwhile), every step. */
static void *grad_main(void *p)
{
    grad_arg_t *g = p;
    for (uint64_t s = 0; s < S; s++)
        if (send_grad(g->sh->reg, g->worker, s, g) != 0)
            atomic_fetch_add(&g->sh->fails, 1);
    return NULL;
}

/* Layers reported together (group 0) are always seen at the same step:
 * the run's status and the EMA are read as a consistent cut. */
static int cut_consistent(nsd_registry_t *reg)
{
    json_t *info = nsd_registry_run_json(reg, "r", 0, NULL);
    if (info == NULL)
        return 0;
    json_t *layers = json_object_get(json_object_get(info, "status"), "layers");
    json_int_t first = -2;
    int ok = 1;
    for (size_t i = 0; i < GROUP_SIZE[0]; i++) {
        json_t *l = json_object_get(layers, LAYER[i]);
        json_int_t step = l ? json_integer_value(json_object_get(l, "step")) : -1;
        if (i > 0 && step != first)
            ok = 0;
        first = step;
    }
    json_decref(info);
    nsd_stats_query_t q;
    memset(&q, 0, sizeof(q));
    nsd_stats_t *st = NULL;
    if (nsd_registry_stats(reg, "r", &q, &st, NULL) != 0)
        return 0;
    int64_t ema_step = -2;
    for (size_t i = 0; i < GROUP_SIZE[0]; i++) {
        const ns_out_layer_t *o = fx_layer_of(st, LAYER[i]);
        int64_t step = o ? fx_scalar(o, NS_FIELD_STEP) : -1;
        if (i > 0 && step != ema_step)
            ok = 0;
        ema_step = step;
    }
    nsd_stats_free(st);
    return ok;
}

/* Reads, checkpoint exports, expiry and no-op PUTs until the reporters end. */
static void *reader_main(void *p)
{
    shared_t *sh = p;
    ns_run_config_t same;
    memset(&same, 0, sizeof(same));
    same.has_world_size = 1;
    same.world_size = W;
    for (unsigned i = 0; atomic_load(&sh->reporters_left) > 0; i++) {
        if (!cut_consistent(sh->reg))
            atomic_fetch_add(&sh->fails, 1);
        atomic_fetch_add(&sh->cuts_checked, 1);
        if (i % 4 == 0)
            json_decref(nsd_registry_checkpoint_export(sh->reg, "r", NULL));
        if (i % 4 == 1)
            nsd_registry_expire(sh->reg, 0); /* nothing is due: locks only */
        if (i % 4 == 2 && nsd_registry_put_run(sh->reg, "r", &same, NULL, NULL) != 0)
            atomic_fetch_add(&sh->fails, 1);
        if (i % 4 == 3)
            json_decref(nsd_registry_list_json(sh->reg, NULL, 0));
    }
    return NULL;
}

/* The run with its domains in a fixed order ("a", then "b"), so the
 * concurrent and the sequential registry number them alike. */
static nsd_registry_t *setup_registry(int hooks)
{
    nsd_registry_t *reg = nsd_registry_create(NULL);
    ck_assert_ptr_nonnull(reg);
    if (hooks) {
        nsd_persist_t h = {
            .run_put = hook_put, .domain_added = hook_domain, .step_finalized = hook_step};
        nsd_registry_set_persist(reg, &h);
    }
    ns_run_config_t cfg;
    ns_run_config_defaults(&cfg);
    cfg.has_world_size = 1;
    cfg.world_size = W;
    ck_assert_int_eq(nsd_registry_put_run(reg, "r", &cfg, NULL, NULL), 0);
    float m[1] = {0}, v[1] = {1};
    fx_layer_t setup = {"setup", 2, 1, m, v};
    fx_opts_t a = {.domain = "a"}, b = {.domain = "b"};
    ck_assert_int_eq(fx_send(reg, "r", 0, 0, &a, &setup, 1, 0, NULL, NULL), 0);
    ck_assert_int_eq(fx_send(reg, "r", 0, 1, &b, &setup, 1, 0, NULL, NULL), 0);
    return reg;
}

/* Two states as text are the same (a long message would not fit Check's
 * pipe: the first difference is shown). */
static void check_same(const char *got, const char *want, const char *what)
{
    size_t i = 0;
    while (got[i] && got[i] == want[i])
        i++;
    ck_assert_msg(got[i] == want[i], "%s differ at byte %zu: ...%.60s... vs ...%.60s...", what, i,
                  got + (i > 20 ? i - 20 : 0), want + (i > 20 ? i - 20 : 0));
}

/* The checkpoint of run "r" as canonical text. */
static char *checkpoint_text(nsd_registry_t *reg)
{
    json_t *cp = nsd_registry_checkpoint_export(reg, "r", NULL);
    ck_assert_ptr_nonnull(cp);
    char *s = json_dumps(cp, JSON_SORT_KEYS | JSON_COMPACT);
    json_decref(cp);
    ck_assert_ptr_nonnull(s);
    return s;
}

/* The pooled EMA of layer l against a long double reference: every step
 * combines the W arrivals and moves the EMA with momentum 0.1 and the
 * unbiased variance of its own N. */
static void check_ema_reference(nsd_registry_t *reg, size_t l)
{
    long double rm[C], rv[C];
    for (size_t c = 0; c < C; c++) {
        rm[c] = 0;
        rv[c] = 1;
    }
    for (size_t s = 0; s < S; s++) {
        uint64_t n[W];
        const float *mean[W], *var[W];
        for (size_t w = 0; w < W; w++) {
            n[w] = g_count[s][w][l];
            mean[w] = g_mean[s][w][l];
            var[w] = g_var[s][w][l];
        }
        long double gm[C], gv[C];
        uint64_t N = fx_ref_combine(W, n, mean, var, C, gm, gv);
        for (size_t c = 0; c < C; c++) {
            rm[c] = 0.9L * rm[c] + 0.1L * gm[c];
            rv[c] = 0.9L * rv[c] + 0.1L * gv[c] * N / (N - 1);
        }
    }
    nsd_stats_t *st = fx_stats(reg, "r", NSD_SOURCE_EMA, NULL);
    const ns_out_layer_t *o = fx_layer_of(st, LAYER[l]);
    ck_assert_ptr_nonnull(o);
    ck_assert_int_eq(fx_scalar(o, NS_FIELD_NUM_BATCHES_TRACKED), S);
    for (size_t c = 0; c < C; c++) {
        fx_close(o->arrays[0][c], rm[c], 1e-12, "running_mean", c);
        fx_close(o->arrays[1][c], rv[c], 1e-12, "running_var", c);
    }
    nsd_stats_free(st);
}

/* Each layer's steps reached the hooks in step order, exactly once. */
static void check_log_order(void)
{
    int64_t last[L];
    size_t steps = 0;
    for (size_t l = 0; l < L; l++)
        last[l] = -1;
    for (size_t i = 0; i < g_n_log; i++) {
        const nsd_step_t *st = g_log[i].step;
        if (g_log[i].kind != 'S' || strcmp(st->layer, "setup") == 0)
            continue;
        size_t l = (size_t)(st->layer[1] - '0');
        ck_assert_msg((int64_t)st->step == last[l] + 1, "layer %s: step %llu logged after %lld",
                      st->layer, (unsigned long long)st->step, (long long)last[l]);
        last[l] = (int64_t)st->step;
        steps++;
    }
    ck_assert_uint_eq(steps, L * S);
}

/* Replaying the hooks' log into a fresh registry (as the store's recovery
 * does) rebuilds the same applied state. */
static void check_replay(const char *want)
{
    nsd_registry_t *re = nsd_registry_create(NULL);
    for (size_t i = 0; i < g_n_log; i++) {
        entry_t *e = &g_log[i];
        if (e->kind == 'P') {
            ns_run_config_t cfg = e->cfg;
            cfg.has_world_size = cfg.has_momentum = cfg.has_sync_timeout_ms = 1;
            cfg.has_on_timeout = cfg.has_ema_debias = 1;
            ck_assert_int_eq(nsd_registry_put_run(re, "r", &cfg, NULL, NULL), 0);
        } else if (e->kind == 'D') {
            ck_assert_int_eq(nsd_registry_replay_domain(re, "r", e->domain, NULL), 0);
        } else {
            ck_assert_int_eq(nsd_registry_replay_step(re, "r", e->step, NULL), 0);
        }
    }
    nsd_registry_replay_finish(re);
    char *got = checkpoint_text(re);
    check_same(got, want, "the replayed and the live state");
    free(got);
    nsd_registry_free(re);
}

START_TEST(test_many_threads_one_run)
{
    make_data();
    log_clear();
    shared_t sh = {.reg = setup_registry(1)};
    reporter_t rep[GROUPS * W];
    pthread_t th[GROUPS * W + 1], gth[W];
    _Atomic int grad_answers = 0;
    grad_arg_t ga[W];
    atomic_store(&sh.reporters_left, GROUPS * W);
    for (size_t g = 0; g < GROUPS; g++)
        for (uint32_t w = 0; w < W; w++) {
            size_t k = g * W + w;
            rep[k] = (reporter_t){&sh, w, g};
            ck_assert_int_eq(pthread_create(&th[k], NULL, reporter_main, &rep[k]), 0);
        }
    ck_assert_int_eq(pthread_create(&th[GROUPS * W], NULL, reader_main, &sh), 0);
    for (uint32_t w = 0; w < W; w++) {
        ga[w] = (grad_arg_t){&sh, w, &grad_answers};
        ck_assert_int_eq(pthread_create(&gth[w], NULL, grad_main, &ga[w]), 0);
    }
    for (size_t k = 0; k < GROUPS * W + 1; k++)
        ck_assert_int_eq(pthread_join(th[k], NULL), 0);
    for (uint32_t w = 0; w < W; w++)
        ck_assert_int_eq(pthread_join(gth[w], NULL), 0);
    int answers = atomic_load(&grad_answers);
    ck_assert_int_eq(answers, W * S); /* every /grad answered, with the exact sums */
    int fails = atomic_load(&sh.fails), cuts = atomic_load(&sh.cuts_checked);
    int syncs = atomic_load(&sh.sync_ok);
    ck_assert_int_eq(fails, 0);
    ck_assert_int_gt(cuts, 0);
    ck_assert_int_gt(syncs, 0);

    /* The same reports and gradient sums from one thread, in order. */
    nsd_registry_t *seq = setup_registry(0);
    shared_t seq_sh = {.reg = seq};
    _Atomic int seq_answers = 0;
    grad_arg_t seq_ga = {&seq_sh, 0, &seq_answers};
    for (uint64_t s = 0; s < S; s++) {
        for (size_t g = 0; g < GROUPS; g++)
            for (uint32_t w = 0; w < W; w++)
                ck_assert_int_eq(report_borrowed(seq, s, w, g, NULL, NULL, NULL), 0);
        for (uint32_t w = 0; w < W; w++)
            ck_assert_int_eq(send_grad(seq, w, s, &seq_ga), 0);
    }
    fails = atomic_load(&seq_sh.fails);
    ck_assert_int_eq(fails, 0);
    char *a = fx_snapshot(sh.reg, "r", 0), *b = fx_snapshot(seq, "r", 0);
    check_same(a, b, "the concurrent and the sequential state");
    free(a);
    free(b);
    check_ema_reference(sh.reg, 4);
    check_ema_reference(sh.reg, 0);

    nsd_counters_t cnt;
    nsd_registry_counters(sh.reg, &cnt);
    ck_assert_uint_eq(cnt.steps_applied, L * S + 1);
    ck_assert_uint_eq(cnt.pending_steps, 0);
    ck_assert_uint_eq(cnt.sync_waiters, 0);
    nsd_counters_t cseq;
    nsd_registry_counters(seq, &cseq);
    ck_assert_uint_eq(cnt.memory_bytes, cseq.memory_bytes);

    check_log_order();
    char *want = checkpoint_text(sh.reg);
    check_replay(want);
    free(want);
    log_clear();
    nsd_registry_free(sh.reg);
    nsd_registry_free(seq);
}
END_TEST

/* Threads that each own a layer, with a run of world_size 1 (every report
 * completes its step), racing a DELETE and PUT of the run: each report is
 * either applied or refused as not found, never half-applied, and the
 * memory accounting returns to zero once the run is gone. */
static void *one_layer_main(void *p)
{
    reporter_t *r = p;
    for (uint64_t s = 0; s < S; s++) {
        size_t l = r->group;
        fx_layer_t one = {LAYER[l], g_count[s][0][l], C, g_mean[s][0][l], g_var[s][0][l]};
        ns_error_detail_t err = {0};
        int rc = nsd_registry_report(r->sh->reg, "solo", fx_report(s, 0, NULL, &one, 1), 0, NULL,
                                     NULL, &err);
        /* Deleted twice while it looked: the one answer besides success. */
        if (rc != 0 && rc != NS_ENOTFOUND)
            atomic_fetch_add(&r->sh->fails, 1);
    }
    atomic_fetch_sub(&r->sh->reporters_left, 1);
    return NULL;
}

START_TEST(test_layers_race_delete)
{
    make_data();
    shared_t sh = {.reg = nsd_registry_create(NULL)};
    reporter_t rep[L];
    pthread_t th[L];
    atomic_store(&sh.reporters_left, L);
    for (size_t l = 0; l < L; l++) {
        rep[l] = (reporter_t){&sh, 0, l};
        ck_assert_int_eq(pthread_create(&th[l], NULL, one_layer_main, &rep[l]), 0);
    }
    while (atomic_load(&sh.reporters_left) > 0) {
        nsd_registry_delete_run(sh.reg, "solo", NULL);
        json_decref(nsd_registry_list_json(sh.reg, NULL, 0));
    }
    for (size_t l = 0; l < L; l++)
        ck_assert_int_eq(pthread_join(th[l], NULL), 0);
    int fails = atomic_load(&sh.fails);
    ck_assert_int_eq(fails, 0);
    nsd_registry_delete_run(sh.reg, "solo", NULL);
    nsd_counters_t cnt;
    nsd_registry_counters(sh.reg, &cnt);
    ck_assert_uint_eq(cnt.memory_bytes, 0);
    ck_assert_uint_eq(cnt.pending_steps, 0);
    ck_assert_uint_eq(cnt.runs, 0);
    nsd_registry_free(sh.reg);
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("registry_threads");
    TCase *tc = tcase_create("registry_threads");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_many_threads_one_run);
    tcase_add_test(tc, test_layers_race_delete);
    suite_add_tcase(s, tc);
    return s;
}

NS_TEST_MAIN(make_suite)
