/* test_population.c - population statistics served by the registry: EMA
 * against real PyTorch and against the formula in long double, the debiased
 * view, skipped N < 2 steps, domains, pooled and mixture values, PreciseBN
 * and its generations, and exact checkpoint round trips. */
#include <unistd.h>

#include "nsd_fixture.h"
#include "registry/population.h"

#define C     4
#define STEPS 5
#define W     3

static nsd_registry_t *new_run(const char *run, uint32_t world_size, double momentum, int debias)
{
    nsd_registry_t *reg = nsd_registry_create(NULL);
    ck_assert_ptr_nonnull(reg);
    ns_run_config_t cfg;
    ns_run_config_defaults(&cfg);
    cfg.has_world_size = cfg.has_momentum = cfg.has_ema_debias = 1;
    cfg.world_size = world_size;
    cfg.momentum = momentum;
    cfg.ema_debias = debias;
    ck_assert_int_eq(nsd_registry_put_run(reg, run, &cfg, NULL, NULL), 0);
    return reg;
}

/* Raw activations of one worker at one step: rows x C, and its reported
 * batch statistics (biased), computed here in long double. */
typedef struct batch_s {
    size_t rows;
    float x[64 * C];
    float mean[C], var[C];
    const char *domain;
} batch_t;

static void batch_make(batch_t *b, uint64_t *rng, size_t rows, double shift)
{
    b->rows = rows;
    for (size_t i = 0; i < rows * C; i++)
        b->x[i] = (float)(shift + 1.5 * ns_test_normal(rng));
    for (size_t c = 0; c < C; c++) {
        long double s = 0, v = 0;
        for (size_t r = 0; r < rows; r++)
            s += b->x[r * C + c];
        long double m = s / rows;
        for (size_t r = 0; r < rows; r++)
            v += ((long double)b->x[r * C + c] - m) * ((long double)b->x[r * C + c] - m);
        b->mean[c] = (float)m;
        b->var[c] = (float)(v / rows);
    }
}

static void send_batch(nsd_registry_t *reg, const char *run, uint64_t step, uint32_t w,
                       const batch_t *b, const char *update)
{
    fx_opts_t o = {.domain = b->domain, .update = update};
    fx_layer_t l = {"bn", b->rows, C, b->mean, b->var};
    ck_assert_int_eq(fx_send(reg, run, step, w, &o, &l, 1, 1, NULL, NULL), 0);
}

/* Combined statistics (long double) of the batches of one step, optionally
 * only those of 'domain'. @return N. */
static uint64_t ref_step(const batch_t *b, size_t k, const char *domain, long double *m,
                         long double *v)
{
    uint64_t n[W];
    const float *mm[W], *vv[W];
    size_t j = 0;
    for (size_t i = 0; i < k; i++) {
        if (domain && strcmp(b[i].domain, domain) != 0)
            continue;
        n[j] = b[i].rows;
        mm[j] = b[i].mean;
        vv[j] = b[i].var;
        j++;
    }
    return fx_ref_combine(j, n, mm, vv, C, m, v);
}

typedef struct ref_ema_s {
    long double rm[C], rv[C], zm[C], zv[C], decay;
    uint64_t nbt;
} ref_ema_t;

static void ref_ema_init(ref_ema_t *e)
{
    for (size_t c = 0; c < C; c++) {
        e->rm[c] = 0;
        e->rv[c] = 1;
        e->zm[c] = e->zv[c] = 0;
    }
    e->decay = 1;
    e->nbt = 0;
}

/* PyTorch: running = (1 - f) running + f batch, var unbiased with N. */
static void ref_ema_step(ref_ema_t *e, uint64_t N, const long double *m, const long double *v,
                         long double momentum)
{
    if (N < 2)
        return;
    e->nbt++;
    long double f = momentum < 0 ? 1.0L / e->nbt : momentum;
    for (size_t c = 0; c < C; c++) {
        long double uv = v[c] * N / (N - 1);
        e->rm[c] = (1 - f) * e->rm[c] + f * m[c];
        e->rv[c] = (1 - f) * e->rv[c] + f * uv;
        e->zm[c] = (1 - f) * e->zm[c] + f * m[c]; /* zero start, not normalised */
        e->zv[c] = (1 - f) * e->zv[c] + f * uv;
    }
    e->decay *= 1 - f;
}

static void check_ema(const ns_out_layer_t *l, const ref_ema_t *e, int debias, double tol)
{
    ck_assert_ptr_nonnull(l);
    ck_assert_int_eq(fx_scalar(l, "num_batches_tracked"), (int64_t)e->nbt);
    for (size_t c = 0; c < C; c++) {
        long double wm = debias ? e->zm[c] / (1 - e->decay) : e->rm[c];
        long double wv = debias ? e->zv[c] / (1 - e->decay) : e->rv[c];
        fx_close(l->arrays[0][c], wm, tol, "running_mean", c);
        fx_close(l->arrays[1][c], wv, tol, "running_var", c);
    }
}

/* ---------------------------------------------------------------- PyTorch */

/* Runs torch.nn.BatchNorm1d (float64, training) over the global batches of
 * every step (all workers' rows concatenated, as SyncBN sees them) once per
 * momentum (0.1, 0.3, None) and reads running_mean / running_var into
 * rm[k], rv[k]. @return 0, or -1 if python3/torch failed. */
static int torch_running(batch_t b[][W], size_t steps, double rm[3][C], double rv[3][C])
{
    char path[] = "/tmp/nsd_test_torch_XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    FILE *f = fdopen(fd, "w");
    ck_assert_ptr_nonnull(f);
    fprintf(f, "%zu %d\n", steps, C);
    for (size_t s = 0; s < steps; s++) {
        size_t rows = 0;
        for (int w = 0; w < W; w++)
            rows += b[s][w].rows;
        fprintf(f, "%zu\n", rows);
        for (int w = 0; w < W; w++)
            for (size_t i = 0; i < b[s][w].rows * C; i++)
                fprintf(f, "%.9g\n", (double)b[s][w].x[i]);
    }
    fclose(f);
    char cmd[1024];
    snprintf(
        cmd, sizeof(cmd),
        "timeout 120 /usr/bin/python3 -c '"
        "import sys, torch\n"
        "tok = open(sys.argv[1]).read().split()\n"
        "steps, ch = int(tok[0]), int(tok[1])\n"
        "for m in (0.1, 0.3, None):\n"
        "    bn = torch.nn.BatchNorm1d(ch, momentum=m).double().train(); i = 2\n"
        "    for s in range(steps):\n"
        "        r = int(tok[i]); i += 1\n"
        "        x = torch.tensor([float(t) for t in tok[i:i + r * ch]], dtype=torch.float32)\n"
        "        i += r * ch\n"
        "        bn(x.double().reshape(r, ch))\n"
        "    print(\" \".join(repr(v) for v in bn.running_mean.tolist() + "
        "bn.running_var.tolist()))\n"
        "' %s",
        path);
    FILE *p = popen(cmd, "r");
    ck_assert_ptr_nonnull(p);
    int got = 0;
    for (int k = 0; k < 3; k++)
        for (size_t c = 0; c < 2 * C; c++)
            got += fscanf(p, "%lf", c < C ? &rm[k][c] : &rv[k][c - C]);
    int status = pclose(p);
    unlink(path);
    return status == 0 && got == 3 * 2 * C ? 0 : -1;
}

static void make_steps(batch_t b[][W], uint64_t *rng, size_t steps)
{
    static const size_t rows[W] = {16, 40, 9};
    for (size_t s = 0; s < steps; s++)
        for (int w = 0; w < W; w++) {
            batch_make(&b[s][w], rng, rows[w] + s, 0.5 * (double)w - 1.0);
            b[s][w].domain = w == 1 ? "b" : "a";
        }
}

START_TEST(test_ema_matches_pytorch)
{
    uint64_t rng = ns_test_seed() + 101;
    static batch_t b[STEPS][W];
    make_steps(b, &rng, STEPS);
    const double momenta[3] = {0.1, 0.3, NS_MOMENTUM_CUMULATIVE};
    double trm[3][C], trv[3][C];
    ck_assert_msg(torch_running(b, STEPS, trm, trv) == 0, "python3/torch failed");
    for (int k = 0; k < 3; k++) {
        nsd_registry_t *reg = new_run("r", W, momenta[k], 0);
        for (size_t s = 0; s < STEPS; s++)
            for (int w = 0; w < W; w++)
                send_batch(reg, "r", s, (uint32_t)w, &b[s][w], NULL);
        const double *tm = trm[k], *tv = trv[k];
        nsd_stats_t *st = fx_stats(reg, "r", NSD_SOURCE_EMA, "*");
        const ns_out_layer_t *l = fx_layer_of(st, "bn");
        ck_assert_int_eq(fx_scalar(l, "num_batches_tracked"), STEPS);
        ck_assert_int_eq(fx_scalar(l, "step"), STEPS - 1);
        /* Reported statistics are float32, so agreement is float-level. */
        for (size_t c = 0; c < C; c++) {
            fx_close(l->arrays[0][c], tm[c], 2e-6, "running_mean vs torch", c);
            fx_close(l->arrays[1][c], tv[c], 2e-6, "running_var vs torch", c);
        }
        nsd_stats_free(st);
        nsd_registry_free(reg);
    }
}
END_TEST

/* EMA of every domain and pooled, and the debiased view, against the formula. */
START_TEST(test_ema_formula_domains_debias)
{
    uint64_t rng = ns_test_seed() + 202;
    static batch_t b[STEPS][W];
    make_steps(b, &rng, STEPS);
    for (int debias = 0; debias < 2; debias++) {
        nsd_registry_t *reg = new_run("r", W, 0.2, debias);
        ref_ema_t ea, eb, ep;
        ref_ema_init(&ea);
        ref_ema_init(&eb);
        ref_ema_init(&ep);
        for (size_t s = 0; s < STEPS; s++) {
            for (int w = W - 1; w >= 0; w--) /* arrival order does not matter */
                send_batch(reg, "r", s, (uint32_t)w, &b[s][w], NULL);
            long double m[C], v[C];
            uint64_t N = ref_step(b[s], W, "a", m, v);
            ref_ema_step(&ea, N, m, v, 0.2L);
            N = ref_step(b[s], W, "b", m, v);
            ref_ema_step(&eb, N, m, v, 0.2L);
            N = ref_step(b[s], W, NULL, m, v);
            ref_ema_step(&ep, N, m, v, 0.2L);
        }
        nsd_stats_t *sa = fx_stats(reg, "r", NSD_SOURCE_EMA, "a");
        nsd_stats_t *sb = fx_stats(reg, "r", NSD_SOURCE_EMA, "b");
        nsd_stats_t *sp = fx_stats(reg, "r", NSD_SOURCE_EMA, NULL);
        check_ema(fx_layer_of(sa, "bn"), &ea, debias, 1e-12);
        check_ema(fx_layer_of(sb, "bn"), &eb, debias, 1e-12);
        check_ema(fx_layer_of(sp, "bn"), &ep, debias, 1e-12);
        ck_assert_str_eq(fx_meta(sa, "domain")->str, "a");
        ck_assert_str_eq(fx_meta(sp, "domain")->str, "*");
        ck_assert_int_eq(fx_meta(sp, "debiased")->num, debias);
        ck_assert_int_eq(fx_meta(sp, "step")->num, STEPS - 1);

        /* Mixture a:0.7, b:0.3 of the served values. */
        nsd_stats_query_t q;
        memset(&q, 0, sizeof(q));
        q.source = NSD_SOURCE_EMA;
        q.n_mixture = 2;
        snprintf(q.mixture[0].domain, sizeof(q.mixture[0].domain), "a");
        snprintf(q.mixture[1].domain, sizeof(q.mixture[1].domain), "b");
        q.mixture[0].weight = 7;
        q.mixture[1].weight = 3; /* normalised by the server */
        nsd_stats_t *sm = NULL;
        ck_assert_int_eq(nsd_registry_stats(reg, "r", &q, &sm, NULL), 0);
        const ns_out_layer_t *l = fx_layer_of(sm, "bn");
        for (size_t c = 0; c < C; c++) {
            long double ma = debias ? ea.zm[c] / (1 - ea.decay) : ea.rm[c];
            long double va = debias ? ea.zv[c] / (1 - ea.decay) : ea.rv[c];
            long double mb = debias ? eb.zm[c] / (1 - eb.decay) : eb.rm[c];
            long double vb = debias ? eb.zv[c] / (1 - eb.decay) : eb.rv[c];
            long double mean = 0.7L * ma + 0.3L * mb;
            long double var = 0.7L * (va + ma * ma) + 0.3L * (vb + mb * mb) - mean * mean;
            fx_close(l->arrays[0][c], mean, 1e-12, "mixture mean", c);
            fx_close(l->arrays[1][c], var, 1e-11, "mixture var", c);
        }
        ck_assert_str_eq(fx_meta(sm, "domain")->str, "mixture");
        ck_assert_ptr_nonnull(fx_meta(sm, "mixture"));
        nsd_stats_free(sm);
        nsd_stats_free(sa);
        nsd_stats_free(sb);
        nsd_stats_free(sp);
        nsd_registry_free(reg);
    }
}
END_TEST

/* Steps whose global N < 2 leave the EMA alone and are counted. */
START_TEST(test_skipped_steps)
{
    nsd_registry_t *reg = new_run("r", 2, 0.1, 0);
    float m[C] = {1, 2, 3, 4}, v[C] = {0, 0, 0, 0};
    fx_layer_t one = {"bn", 1, C, m, v}, none = {"bn", 0, 0, NULL, NULL};
    fx_layer_t many = {"bn", 8, C, m, v};
    /* step 0: 1 + 0 values; step 1: 0 + 0; step 2: 8 + 1 */
    ck_assert_int_eq(fx_send(reg, "r", 0, 0, NULL, &one, 1, 1, NULL, NULL), 0);
    ck_assert_int_eq(fx_send(reg, "r", 0, 1, NULL, &none, 1, 1, NULL, NULL), 0);
    ck_assert_int_eq(fx_send(reg, "r", 1, 0, NULL, &none, 1, 1, NULL, NULL), 0);
    ck_assert_int_eq(fx_send(reg, "r", 1, 1, NULL, &none, 1, 1, NULL, NULL), 0);
    nsd_stats_t *s = fx_stats(reg, "r", NSD_SOURCE_EMA, NULL);
    ck_assert_int_eq(fx_scalar(&s->layers[0], "num_batches_tracked"), 0);
    for (size_t c = 0; c < C; c++)
        ck_assert(s->layers[0].arrays[0][c] == 0.0 && s->layers[0].arrays[1][c] == 1.0);
    nsd_stats_free(s);
    json_t *info = nsd_registry_run_json(reg, "r", 1, NULL);
    ck_assert_int_eq(
        json_integer_value(json_object_get(json_object_get(info, "status"), "skipped_steps")), 2);
    json_decref(info);
    ck_assert_int_eq(fx_send(reg, "r", 2, 0, NULL, &many, 1, 1, NULL, NULL), 0);
    ck_assert_int_eq(fx_send(reg, "r", 2, 1, NULL, &one, 1, 1, NULL, NULL), 0);
    s = fx_stats(reg, "r", NSD_SOURCE_EMA, NULL);
    ck_assert_int_eq(fx_scalar(&s->layers[0], "num_batches_tracked"), 1);
    /* all 9 values equal m[c]: mean m, var 0 */
    for (size_t c = 0; c < C; c++) {
        ck_assert(s->layers[0].arrays[0][c] == 0.1 * m[c]);
        ck_assert(s->layers[0].arrays[1][c] == 0.9);
    }
    nsd_stats_free(s);
    nsd_counters_t cnt;
    nsd_registry_counters(reg, &cnt);
    ck_assert_uint_eq(cnt.steps_skipped, 2);
    ck_assert_uint_eq(cnt.steps_applied, 3);
    nsd_registry_free(reg);
}
END_TEST

/* Reference PreciseBN of a set of arrivals: all of them merged, unbiased. */
static uint64_t ref_precise(batch_t b[][W], size_t s0, size_t s1, const char *domain,
                            long double *m, long double *v)
{
    uint64_t n[STEPS * W];
    const float *mm[STEPS * W], *vv[STEPS * W];
    size_t k = 0;
    for (size_t s = s0; s < s1; s++)
        for (int w = 0; w < W; w++) {
            if (domain && strcmp(b[s][w].domain, domain) != 0)
                continue;
            n[k] = b[s][w].rows;
            mm[k] = b[s][w].mean;
            vv[k] = b[s][w].var;
            k++;
        }
    return fx_ref_combine(k, n, mm, vv, C, m, v);
}

static void check_precise(nsd_registry_t *reg, const char *domain, int biased, batch_t b[][W],
                          size_t s0, size_t s1, const char *ref_domain)
{
    nsd_stats_query_t q;
    memset(&q, 0, sizeof(q));
    q.source = NSD_SOURCE_PRECISE;
    q.biased = biased;
    snprintf(q.domain, sizeof(q.domain), "%s", domain);
    nsd_stats_t *st = NULL;
    ns_error_detail_t err = {0};
    ck_assert_msg(nsd_registry_stats(reg, "r", &q, &st, &err) == 0, "%s", err.message);
    const ns_out_layer_t *l = fx_layer_of(st, "bn");
    ck_assert_ptr_nonnull(l);
    long double m[C], v[C];
    uint64_t N = ref_precise(b, s0, s1, ref_domain, m, v);
    ck_assert_int_eq(fx_scalar(l, "num_samples"), (int64_t)N);
    for (size_t c = 0; c < C; c++) {
        fx_close(l->arrays[0][c], m[c], 1e-12, "precise mean", c);
        fx_close(l->arrays[1][c], biased ? v[c] : v[c] * N / (N - 1), 1e-12, "precise var", c);
    }
    nsd_stats_free(st);
}

START_TEST(test_precise_domains_and_generations)
{
    uint64_t rng = ns_test_seed() + 303;
    static batch_t b[STEPS][W];
    make_steps(b, &rng, STEPS);
    nsd_registry_t *reg = new_run("r", W, 0.1, 0);
    for (size_t s = 0; s < 2; s++)
        for (int w = 0; w < W; w++)
            send_batch(reg, "r", s, (uint32_t)w, &b[s][w], NULL);
    check_precise(reg, "*", 0, b, 0, 2, NULL);
    check_precise(reg, "*", 1, b, 0, 2, NULL);
    check_precise(reg, "a", 0, b, 0, 2, "a");
    check_precise(reg, "b", 1, b, 0, 2, "b");
    /* Mixture a:0.25, b:0.75 of the PreciseBN values (unbiased variances). */
    nsd_stats_query_t q;
    memset(&q, 0, sizeof(q));
    q.source = NSD_SOURCE_PRECISE;
    q.n_mixture = 2;
    snprintf(q.mixture[0].domain, sizeof(q.mixture[0].domain), "a");
    snprintf(q.mixture[1].domain, sizeof(q.mixture[1].domain), "b");
    q.mixture[0].weight = 0.25;
    q.mixture[1].weight = 0.75;
    nsd_stats_t *sm = NULL;
    ck_assert_int_eq(nsd_registry_stats(reg, "r", &q, &sm, NULL), 0);
    long double ma[C], va[C], mb[C], vb[C];
    uint64_t Na = ref_precise(b, 0, 2, "a", ma, va), Nb = ref_precise(b, 0, 2, "b", mb, vb);
    for (size_t c = 0; c < C; c++) {
        long double ua = va[c] * Na / (Na - 1), ub = vb[c] * Nb / (Nb - 1);
        long double mean = 0.25L * ma[c] + 0.75L * mb[c];
        long double var = 0.25L * (ua + ma[c] * ma[c]) + 0.75L * (ub + mb[c] * mb[c]) - mean * mean;
        fx_close(sm->layers[0].arrays[0][c], mean, 1e-12, "precise mixture mean", c);
        fx_close(sm->layers[0].arrays[1][c], var, 1e-11, "precise mixture var", c);
    }
    nsd_stats_free(sm);
    nsd_stats_t *st = fx_stats(reg, "r", NSD_SOURCE_PRECISE, NULL);
    ck_assert_int_eq(fx_meta(st, "generation")->num, 0);
    ck_assert_int_eq(fx_scalar(&st->layers[0], "num_batches"), 4); /* 2 steps x 2 domains */
    nsd_stats_free(st);

    /* Reset everything: generation 1, nothing to serve (layer skipped). */
    uint64_t gen = 0;
    ck_assert_int_eq(nsd_registry_precise_reset(reg, "r", NULL, &gen, NULL), 0);
    ck_assert_uint_eq(gen, 1);
    st = fx_stats(reg, "r", NSD_SOURCE_PRECISE, NULL);
    ck_assert_uint_eq(st->n_layers, 0);
    ck_assert_int_eq(fx_meta(st, "generation")->num, 1);
    nsd_stats_free(st);
    /* A precise-only pass: EMA does not move. */
    nsd_stats_t *e0 = fx_stats(reg, "r", NSD_SOURCE_EMA, NULL);
    for (size_t s = 2; s < 4; s++)
        for (int w = 0; w < W; w++)
            send_batch(reg, "r", s, (uint32_t)w, &b[s][w], "[\"precise\"]");
    nsd_stats_t *e1 = fx_stats(reg, "r", NSD_SOURCE_EMA, NULL);
    ck_assert_mem_eq(e0->layers[0].arrays[0], e1->layers[0].arrays[0], C * sizeof(double));
    ck_assert_mem_eq(e0->layers[0].arrays[1], e1->layers[0].arrays[1], C * sizeof(double));
    ck_assert_int_eq(fx_scalar(&e1->layers[0], "num_batches_tracked"), 2);
    nsd_stats_free(e0);
    nsd_stats_free(e1);
    check_precise(reg, "*", 0, b, 2, 4, NULL);
    check_precise(reg, "a", 0, b, 2, 4, "a");

    /* Reset domain b only: generation 2; a keeps its samples. */
    ck_assert_int_eq(nsd_registry_precise_reset(reg, "r", "b", &gen, NULL), 0);
    ck_assert_uint_eq(gen, 2);
    check_precise(reg, "a", 0, b, 2, 4, "a");
    check_precise(reg, "*", 0, b, 2, 4, "a"); /* pooled = a only now */
    st = fx_stats(reg, "r", NSD_SOURCE_PRECISE, "b");
    ck_assert_uint_eq(st->n_layers, 0);
    ck_assert_int_eq(fx_meta(st, "generation")->num, 2);
    nsd_stats_free(st);
    st = fx_stats(reg, "r", NSD_SOURCE_PRECISE, "a");
    ck_assert_int_eq(fx_meta(st, "generation")->num, 1);
    nsd_stats_free(st);
    /* Reset of a domain never seen creates it. */
    ck_assert_int_eq(nsd_registry_precise_reset(reg, "r", "c", &gen, NULL), 0);
    ck_assert_uint_eq(gen, 3);
    st = fx_stats(reg, "r", NSD_SOURCE_EMA, "c"); /* known domain, initial EMA */
    ck_assert(st->layers[0].arrays[0][0] == 0.0 && st->layers[0].arrays[1][0] == 1.0);
    ck_assert_int_eq(fx_scalar(&st->layers[0], "num_batches_tracked"), 0);
    nsd_stats_free(st);
    nsd_registry_free(reg);
}
END_TEST

/* /sync with scope domain gets the caller's domain only. */
START_TEST(test_sync_scope_domain)
{
    uint64_t rng = ns_test_seed() + 404;
    static batch_t b[1][W];
    make_steps(b, &rng, 1);
    nsd_registry_t *reg = new_run("r", W, 0.1, 0);
    fx_sync_t sync[W] = {{0}};
    for (int w = 0; w < W; w++) {
        fx_opts_t o = {.domain = b[0][w].domain, .scope = w == 0 ? "domain" : NULL};
        fx_layer_t l = {"bn", b[0][w].rows, C, b[0][w].mean, b[0][w].var};
        ck_assert_int_eq(fx_send(reg, "r", 0, (uint32_t)w, &o, &l, 1, 1, fx_sync_cb, &sync[w]), 0);
    }
    long double m[C], v[C];
    uint64_t Na = ref_step(b[0], W, "a", m, v);
    ck_assert_uint_eq(sync[0].res->layers[0].count, Na);
    for (size_t c = 0; c < C; c++) {
        fx_close(sync[0].res->layers[0].mean[c], m[c], 1e-13, "domain mean", c);
        fx_close(sync[0].res->layers[0].var[c], v[c], 1e-13, "domain var", c);
    }
    uint64_t N = ref_step(b[0], W, NULL, m, v);
    ck_assert_uint_eq(sync[1].res->layers[0].count, N);
    for (size_t c = 0; c < C; c++)
        fx_close(sync[1].res->layers[0].mean[c], m[c], 1e-13, "global mean", c);
    for (int w = 0; w < W; w++)
        fx_sync_clear(&sync[w]);
    nsd_registry_free(reg);
}
END_TEST

/* Every served view of two registries is bit-identical. */
static void assert_same_views(nsd_registry_t *r1, nsd_registry_t *r2)
{
    const char *domains[] = {"*", "a", "b"};
    for (int src = 0; src < 3; src++)
        for (int d = 0; d < (src == NSD_SOURCE_LAST ? 1 : 3); d++) {
            nsd_stats_t *s1 = fx_stats(r1, "r", (nsd_source_t)src, domains[d]);
            nsd_stats_t *s2 = fx_stats(r2, "r", (nsd_source_t)src, domains[d]);
            ck_assert_uint_eq(s1->n_layers, s2->n_layers);
            ck_assert_uint_eq(s1->n_meta, s2->n_meta);
            for (size_t i = 0; i < s1->n_meta; i++)
                ck_assert_int_eq(s1->meta[i].num, s2->meta[i].num);
            for (size_t i = 0; i < s1->n_layers; i++) {
                const ns_out_layer_t *a = &s1->layers[i], *b = &s2->layers[i];
                ck_assert_str_eq(a->name, b->name);
                ck_assert_uint_eq(a->channels, b->channels);
                for (size_t k = 0; k < a->n_arrays; k++)
                    ck_assert_mem_eq(a->arrays[k], b->arrays[k], a->channels * sizeof(double));
                ck_assert_mem_eq(a->scalars, b->scalars, sizeof(a->scalars));
            }
            nsd_stats_free(s1);
            nsd_stats_free(s2);
        }
}

START_TEST(test_checkpoint_round_trip_bits)
{
    uint64_t rng = ns_test_seed() + 505;
    static batch_t b[STEPS][W];
    make_steps(b, &rng, STEPS);
    for (int debias = 0; debias < 2; debias++) {
        nsd_registry_t *r1 = new_run("r", W, debias ? NS_MOMENTUM_CUMULATIVE : 0.1, debias);
        for (size_t s = 0; s < 3; s++)
            for (int w = 0; w < W; w++)
                send_batch(r1, "r", s, (uint32_t)w, &b[s][w], NULL);
        uint64_t gen;
        ck_assert_int_eq(nsd_registry_precise_reset(r1, "r", "b", &gen, NULL), 0);
        json_t *cp = nsd_registry_checkpoint_export(r1, "r", NULL);
        ck_assert_ptr_nonnull(cp);
        char *text = json_dumps(cp, JSON_COMPACT);
        json_decref(cp);
        nsd_registry_t *r2 = nsd_registry_create(NULL);
        ns_error_detail_t err = {0};
        ck_assert_msg(nsd_registry_checkpoint_import(r2, "r", text, strlen(text), &err) == 0, "%s",
                      err.message);
        free(text);
        assert_same_views(r1, r2);
        /* Both continue identically; re-reporting an imported step is stale. */
        for (size_t s = 3; s < STEPS; s++)
            for (int w = 0; w < W; w++) {
                send_batch(r1, "r", s, (uint32_t)w, &b[s][w], NULL);
                send_batch(r2, "r", s, (uint32_t)w, &b[s][w], NULL);
            }
        assert_same_views(r1, r2);
        fx_layer_t l = {"bn", b[0][0].rows, C, b[0][0].mean, b[0][0].var};
        ck_assert_int_eq(fx_send(r2, "r", 2, 0, NULL, &l, 1, 1, NULL, NULL), NS_ESTALE);
        nsd_registry_free(r1);
        nsd_registry_free(r2);
    }
}
END_TEST

/* A state's arrays lie inside nsd_pop_bytes() without overlapping, start
 * at their initial values, survive a clone, and the six the step update
 * walks together never start a multiple of 4 KiB apart (they would share
 * L1 sets and alias in the store buffer: 512, 1024, 2048 channels). */
START_TEST(test_state_layout)
{
    const size_t counts[] = {1, 7, 511, 512, 513, 1024, 2048, 3000, 4096};
    for (size_t i = 0; i < sizeof(counts) / sizeof(counts[0]); i++) {
        size_t c = counts[i];
        nsd_pop_t *pop = nsd_pop_create(c, 3);
        ck_assert_ptr_nonnull(pop);
        /* the six state arrays, and the copied last values of a layer too
         * small for views (nsd_step_viewed()) */
        const double *arr[7] = {pop->ema.running_mean, pop->ema.running_var, pop->ema.zero_mean,
                                pop->ema.zero_var,     pop->precise.mean,    pop->precise.m2,
                                nsd_pop_last_copy(pop, c)};
        const int n_arr = arr[6] != NULL ? 7 : 6;
        ck_assert_int_eq(n_arr == 7, !nsd_step_viewed(c));
        ck_assert_ptr_null(pop->last_mean);
        const size_t len[7] = {c, c, c, c, c, c, 2 * c};
        const char *hi = (const char *)pop + nsd_pop_bytes(c);
        for (int a = 0; a < n_arr; a++) {
            const char *p = (const char *)arr[a];
            ck_assert(p >= (const char *)pop->data && p + len[a] * sizeof(double) <= hi);
            for (int b = a + 1; b < n_arr; b++) {
                const char *q = (const char *)arr[b];
                ck_assert(p + len[a] * sizeof(double) <= q || q + len[b] * sizeof(double) <= p);
                if (a < 6 && b < 6)
                    ck_assert_msg((size_t)(q - p) % 4096 != 0, "c=%zu arrays %d, %d", c, a, b);
            }
        }
        for (size_t k = 0; k < c; k++)
            ck_assert(arr[0][k] == 0.0 && arr[1][k] == 1.0 && arr[4][k] == 0.0 &&
                      arr[5][k] == 0.0);
        pop->precise.m2[c - 1] = 42.0;
        nsd_pop_t *copy = nsd_pop_clone(pop, c);
        ck_assert_ptr_nonnull(copy);
        ck_assert(copy->precise.m2 != pop->precise.m2 && copy->precise.m2[c - 1] == 42.0 &&
                  copy->ema.running_var[c - 1] == 1.0);
        nsd_pop_free(copy);
        nsd_pop_free(pop);
    }
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("population");
    TCase *tc = tcase_create("population");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_ema_matches_pytorch);
    tcase_add_test(tc, test_ema_formula_domains_debias);
    tcase_add_test(tc, test_skipped_steps);
    tcase_add_test(tc, test_precise_domains_and_generations);
    tcase_add_test(tc, test_sync_scope_domain);
    tcase_add_test(tc, test_checkpoint_round_trip_bits);
    tcase_add_test(tc, test_state_layout);
    suite_add_tcase(s, tc);
    return s;
}

NS_TEST_MAIN(make_suite)
