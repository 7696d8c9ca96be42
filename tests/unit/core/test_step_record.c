/* test_step_record.c - ns_step_update_record(): the step update that also
 * writes a history entry (float32 values) and the drift in its pass.
 *  - against the calls it fuses, bitwise: ns_step_update(), then
 *    ns_narrow_f32() of the step's and the served EMA's arrays and
 *    ns_drift_precise() of that EMA from the accumulator after the step;
 *  - against values computed here: the step's floats are (float) of its
 *    doubles, the EMA's those of its arrays as served, and the drift within
 *    the long double bounds of test_drift.c;
 *  - every kernel table this CPU supports: with a record against the same
 *    table's update, narrow() and drift_precise() one after the other,
 *    bitwise, and the updated arrays and floats bitwise equal to scalar's.
 * Channel counts around the vector width and the AVX2 kernel's tiles (1, 7,
 * 8, 9, 255, 256, 257, 4097). `make check` runs it once more with
 * NS_SIMD=scalar (the public calls then take the reference table). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "kernels.h"

static uint64_t rng;

static const size_t counts[] = {1, 7, 8, 9, 255, 256, 257, 4097};
#define N_COUNTS (sizeof(counts) / sizeof(counts[0]))
#define CMAX     4097

static double urand(void)
{
    return ns_test_uniform(&rng);
}

/* Three EMAs with zero-start arrays and two accumulators, their arrays in
 * one block; a copy keeps pointing into its own block. */
typedef struct {
    double *block; /* 16 arrays of CMAX */
    ns_ema_t ema[3];
    ns_precise_t acc[2];
} state_t;

static void state_bind(state_t *s)
{
    for (int e = 0; e < 3; e++) {
        s->ema[e].running_mean = s->block + (4 * e) * CMAX;
        s->ema[e].running_var = s->block + (4 * e + 1) * CMAX;
        s->ema[e].zero_mean = s->block + (4 * e + 2) * CMAX;
        s->ema[e].zero_var = s->block + (4 * e + 3) * CMAX;
    }
    for (int a = 0; a < 2; a++) {
        s->acc[a].mean = s->block + (12 + 2 * a) * CMAX;
        s->acc[a].m2 = s->block + (13 + 2 * a) * CMAX;
    }
}

static void state_alloc(state_t *s)
{
    s->block = malloc(16 * CMAX * sizeof(double));
    ck_assert(s->block != NULL);
    state_bind(s);
}

/* Random state; 'fresh': EMAs never applied (decay 1), accumulators of
 * 0 or 1 samples now and then. */
static void state_fill(state_t *s, size_t c, int fresh)
{
    for (size_t i = 0; i < 16 * CMAX; i++)
        s->block[i] = (i / CMAX) % 2 == 0 ? urand() * 4 - 2 : urand() * 3;
    (void)c;
    for (int e = 0; e < 3; e++) {
        s->ema[e].decay = fresh ? 1.0 : urand();
        s->ema[e].num_batches_tracked = fresh ? 0 : 1 + ns_test_rand(&rng) % 5;
    }
    for (int a = 0; a < 2; a++) {
        s->acc[a].n = fresh ? ns_test_rand(&rng) % 2 : 2 + ns_test_rand(&rng) % 100000;
        s->acc[a].num_batches = s->acc[a].n == 0 ? 0 : 1 + s->acc[a].n % 7;
        if (s->acc[a].n == 0)
            memset(s->acc[a].mean, 0, 2 * CMAX * sizeof(double));
    }
}

static void state_copy(state_t *dst, const state_t *src)
{
    double *block = dst->block;
    memcpy(block, src->block, 16 * CMAX * sizeof(double));
    *dst = *src;
    dst->block = block;
    state_bind(dst);
}

static int same(const void *a, const void *b, size_t n)
{
    return memcmp(a, b, n) == 0;
}

static void check_state(const state_t *a, const state_t *b, size_t c, const char *what)
{
    for (int k = 0; k < 16; k++)
        CHECK(same(a->block + k * CMAX, b->block + k * CMAX, c * sizeof(double)),
              "%s: array %d differs", what, k);
    for (int e = 0; e < 3; e++)
        CHECK(same(&a->ema[e].decay, &b->ema[e].decay, sizeof(double)) &&
                  a->ema[e].num_batches_tracked == b->ema[e].num_batches_tracked,
              "%s: ema %d scalars", what, e);
    for (int k = 0; k < 2; k++)
        CHECK(a->acc[k].n == b->acc[k].n && a->acc[k].num_batches == b->acc[k].num_batches,
              "%s: accumulator %d counts", what, k);
}

/* Four float arrays of CMAX. */
typedef struct {
    float v[4][CMAX];
} floats_t;

/* The EMA as served: running arrays, or ns_ema_debiased()'s view. */
static void served(const ns_ema_t *e, int debiased, size_t c, double *mean, double *var)
{
    if (debiased) {
        ck_assert_int_eq(ns_ema_debiased(e, c, mean, var), 0);
        return;
    }
    memcpy(mean, e->running_mean, c * sizeof(double));
    memcpy(var, e->running_var, c * sizeof(double));
}

static long double ref_dm(double em, double pm, double pv, double eps)
{
    return fabsl((long double)em - (long double)pm) / sqrtl((long double)pv + (long double)eps);
}

static long double ref_dv(double ev, double pv, double eps)
{
    return fabsl(logl(((long double)ev + (long double)eps) / ((long double)pv + (long double)eps)));
}

/* The drift against long double, with test_drift.c's bounds. */
static void check_drift_reference(const ns_drift_t *d, const double *em, const double *ev,
                                  const ns_precise_t *acc, size_t c, double eps)
{
    long double sm = 0, sv = 0, mm = -1, mv = -1;
    for (size_t i = 0; i < c; i++) {
        double pv = acc->m2[i] / (double)(acc->n - 1);
        long double dm = ref_dm(em[i], acc->mean[i], pv, eps), dv = ref_dv(ev[i], pv, eps);
        sm += dm;
        sv += dv;
        mm = dm > mm ? dm : mm;
        mv = dv > mv ? dv : mv;
    }
    sm /= c;
    sv /= c;
    CHECK(fabsl(d->mean_max - mm) <= 1e-15L * mm, "mean_max %.17g ref %.17Lg", d->mean_max, mm);
    CHECK(fabsl(d->mean_avg - sm) <= 1e-12L * sm + 1e-15L * mm, "mean_avg %.17g ref %.17Lg",
          d->mean_avg, sm);
    CHECK(fabsl(d->var_max - mv) <= 2e-15L + 1e-14L * mv, "var_max %.17g ref %.17Lg", d->var_max,
          mv);
    CHECK(fabsl(d->var_avg - sv) <= 1e-12L * sv + 2e-15L + 1e-14L * mv, "var_avg %.17g ref %.17Lg",
          d->var_avg, sv);
    CHECK(d->mean_max_channel < c && d->var_max_channel < c, "channels %zu %zu",
          d->mean_max_channel, d->var_max_channel);
}

/* One shape through ns_step_update_record() and through the calls it fuses. */
typedef struct {
    size_t c, n_ema;
    int which_ema; /* 0, 1: an EMA the step updates; 2: one it does not */
    int debiased;  /* the record serves the debiased view */
    int precise;   /* the step updates accumulator 0 */
    int which_acc; /* -1 no drift; 0 the accumulator updated (or not); 1 another */
    int fresh;     /* state_fill()'s fresh */
    uint64_t n;
    double momentum;
} shape_t;

static state_t fused_s, ref_s, start_s;
static floats_t fused_f, ref_f;
static double mean[CMAX], var[CMAX], em_ref[CMAX], ev_ref[CMAX];

static void one_shape(const shape_t *sh)
{
    size_t c = sh->c;
    for (size_t i = 0; i < c; i++) {
        mean[i] = urand() * 6 - 3;
        var[i] = ns_test_rand(&rng) % 13 == 0 ? 0.0 : urand() * 5;
    }
    state_fill(&start_s, c, sh->fresh);
    state_copy(&fused_s, &start_s);
    state_copy(&ref_s, &start_s);
    memset(&fused_f, 0xA5, sizeof(fused_f));
    memset(&ref_f, 0x5A, sizeof(ref_f));

    /* fused */
    ns_ema_t *list[2] = {&fused_s.ema[0], &fused_s.ema[1]};
    int applied[2] = {-1, -1};
    ns_step_record_t rec = {
        .ema = &fused_s.ema[sh->which_ema],
        .debiased = sh->debiased,
        .precise = sh->which_acc < 0 ? NULL : &fused_s.acc[sh->which_acc],
        .eps = NS_DRIFT_EPS,
        .batch_mean = fused_f.v[0],
        .batch_var = fused_f.v[1],
        .ema_mean = fused_f.v[2],
        .ema_var = fused_f.v[3],
    };
    memset(&rec.drift, 0xA5, sizeof(rec.drift));
    ck_assert_int_eq(ns_step_update_record(list, sh->n_ema, sh->precise ? &fused_s.acc[0] : NULL, c,
                                           sh->n, mean, var, sh->momentum, applied, &rec),
                     0);

    /* the calls it fuses */
    ns_ema_t *rlist[2] = {&ref_s.ema[0], &ref_s.ema[1]};
    int rapplied[2] = {-1, -1};
    ck_assert_int_eq(ns_step_update(rlist, sh->n_ema, sh->precise ? &ref_s.acc[0] : NULL, c, sh->n,
                                    mean, var, sh->momentum, rapplied),
                     0);
    served(&ref_s.ema[sh->which_ema], sh->debiased, c, em_ref, ev_ref);
    ns_narrow_f32(ref_f.v[0], mean, c);
    ns_narrow_f32(ref_f.v[1], var, c);
    ns_narrow_f32(ref_f.v[2], em_ref, c);
    ns_narrow_f32(ref_f.v[3], ev_ref, c);
    ns_drift_t rdrift;
    int rhas = 0;
    if (sh->which_acc >= 0) {
        const ns_precise_t *acc = &ref_s.acc[sh->which_acc];
        int rc = ns_drift_precise(em_ref, ev_ref, acc, c, NS_DRIFT_EPS, &rdrift);
        rhas = rc == 0;
        ck_assert(rc == 0 || acc->n < 2);
    }

    char what[160];
    snprintf(what, sizeof(what), "c=%zu n_ema=%zu ema=%d deb=%d precise=%d acc=%d fresh=%d n=%llu",
             c, sh->n_ema, sh->which_ema, sh->debiased, sh->precise, sh->which_acc, sh->fresh,
             (unsigned long long)sh->n);
    check_state(&fused_s, &ref_s, c, what);
    for (size_t k = 0; k < sh->n_ema; k++)
        CHECK(applied[k] == rapplied[k], "%s: applied[%zu]", what, k);
    for (int k = 0; k < 4; k++)
        CHECK(same(fused_f.v[k], ref_f.v[k], c * sizeof(float)), "%s: floats %d differ", what, k);
    CHECK(rec.has_drift == rhas, "%s: has_drift %d, unfused %d", what, rec.has_drift, rhas);
    if (rhas) {
        CHECK(same(&rec.drift, &rdrift, sizeof(rdrift)), "%s: drift differs", what);
        check_drift_reference(&rec.drift, em_ref, ev_ref, &fused_s.acc[sh->which_acc], c,
                              NS_DRIFT_EPS);
    }
    /* independent of the library: the floats are the C conversions */
    for (size_t i = 0; i < c; i++)
        CHECK(fused_f.v[0][i] == (float)mean[i] && fused_f.v[1][i] == (float)var[i] &&
                  fused_f.v[2][i] == (float)em_ref[i] && fused_f.v[3][i] == (float)ev_ref[i],
              "%s: channel %zu not the float32 of its value", what, i);
}

START_TEST(test_record_matches_unfused)
{
    rng = ns_test_seed();
    state_alloc(&fused_s);
    state_alloc(&ref_s);
    state_alloc(&start_s);
    const uint64_t ns[] = {0, 1, 2, 200704};
    const double momenta[] = {0.1, 0.0, NS_MOMENTUM_CUMULATIVE};
    size_t shapes = 0;
    for (size_t ci = 0; ci < N_COUNTS; ci++)
        for (size_t n_ema = 0; n_ema <= 2; n_ema++)
            for (int which_ema = 0; which_ema <= 2; which_ema++)
                for (int debiased = 0; debiased <= 1; debiased++)
                    for (int precise = 0; precise <= 1; precise++)
                        for (int which_acc = -1; which_acc <= 1; which_acc++)
                            for (int fresh = 0; fresh <= 1; fresh++) {
                                /* counts and momenta vary with the shape, not in full */
                                shape_t sh = {counts[ci],
                                              n_ema,
                                              which_ema,
                                              debiased,
                                              precise,
                                              which_acc,
                                              fresh,
                                              ns[(shapes + ci) % 4],
                                              momenta[(shapes / 4) % 3]};
                                one_shape(&sh);
                                shapes++;
                            }
    ck_assert_uint_gt(shapes, 1000);
    free(fused_s.block);
    free(ref_s.block);
    free(start_s.block);
}
END_TEST

/* Refused as documented, and nothing changed (arrays, scalars, floats). */
START_TEST(test_record_refusals_change_nothing)
{
    rng = ns_test_seed();
    state_alloc(&fused_s);
    state_alloc(&start_s);
    state_fill(&start_s, 8, 0);
    state_copy(&fused_s, &start_s);
    for (size_t i = 0; i < 8; i++) {
        mean[i] = i;
        var[i] = 1.0 + i;
    }
    memset(&fused_f, 0xA5, sizeof(fused_f));
    ns_ema_t *list[2] = {&fused_s.ema[0], &fused_s.ema[1]};
    int applied[2];
    ns_ema_t nozero = fused_s.ema[2];
    nozero.zero_mean = nozero.zero_var = NULL;
    const ns_step_record_t good = {.ema = &fused_s.ema[0],
                                   .precise = &fused_s.acc[0],
                                   .eps = NS_DRIFT_EPS,
                                   .batch_mean = fused_f.v[0],
                                   .batch_var = fused_f.v[1],
                                   .ema_mean = fused_f.v[2],
                                   .ema_var = fused_f.v[3]};
    ns_step_record_t bad[6];
    for (int k = 0; k < 6; k++)
        bad[k] = good;
    bad[0].ema = NULL;
    bad[1].ema = &nozero;
    bad[1].debiased = 1;
    bad[2].eps = 0.0;
    bad[3].eps = 2.0;
    bad[4].ema_var = NULL;
    bad[5].batch_mean = NULL;
    for (int k = 0; k < 6; k++)
        ck_assert_int_eq(ns_step_update_record(list, 2, &fused_s.acc[0], 8, 10, mean, var, 0.1,
                                               applied, &bad[k]),
                         NS_EINVAL);
    /* what ns_step_update() refuses, with a good record */
    ns_step_record_t rec = good;
    ck_assert_int_eq(
        ns_step_update_record(list, 2, &fused_s.acc[0], 8, 10, mean, var, 1.5, applied, &rec),
        NS_EINVAL);
    check_state(&fused_s, &start_s, 8, "refused");
    floats_t untouched;
    memset(&untouched, 0xA5, sizeof(untouched));
    ck_assert(same(&fused_f, &untouched, sizeof(untouched)));
    free(fused_s.block);
    free(start_s.block);
}
END_TEST

/* Every table: the kernel with a record against the same table's update,
 * narrow() and drift_precise(), bitwise; arrays and floats against scalar's. */
START_TEST(test_tables_record_match)
{
    rng = ns_test_seed();
    const ns_kernels_t *tables[2] = {&ns__kernels_scalar, NULL};
#if defined(__x86_64__) || defined(__i386__)
    if (ns__cpu_has_avx2_fma())
        tables[1] = &ns__kernels_avx2;
#endif
    state_t run[2], ref;
    for (int t = 0; t < 2; t++)
        state_alloc(&run[t]);
    state_alloc(&ref);
    state_alloc(&start_s);
    static floats_t out[2], rout;
    size_t checked = 0;
    for (size_t ci = 0; ci < N_COUNTS; ci++)
        for (int shape = 0; shape < 8; shape++) {
            size_t c = counts[ci];
            /* shape bits: zero arrays on EMA 1 (the unrolled path needs both),
             * debiased view (EMA 0's zero arrays), an empty accumulator */
            const int zero1 = shape & 1, debiased = (shape >> 1) & 1, empty = (shape >> 2) & 1;
            for (size_t i = 0; i < c; i++) {
                mean[i] = urand() * 6 - 3;
                var[i] = urand() * 5;
            }
            state_fill(&start_s, c, 0);
            ns_drift_t drift[2] = {{0}}, rdrift = {0};
            for (int t = 0; t < 2 && tables[t] != NULL; t++) {
                for (int pass = 0; pass < 2; pass++) {
                    state_t *s = pass == 0 ? &run[t] : &ref;
                    state_copy(s, &start_s);
                    ns__ema_pass_t pe[2];
                    for (int k = 0; k < 2; k++)
                        pe[k] = (ns__ema_pass_t){s->ema[k].running_mean,
                                                 s->ema[k].running_var,
                                                 k == 1 && !zero1 ? NULL : s->ema[k].zero_mean,
                                                 k == 1 && !zero1 ? NULL : s->ema[k].zero_var,
                                                 0.75,
                                                 0.25,
                                                 0.5,
                                                 0.5};
                    ns__precise_pass_t pp = {s->acc[0].mean, s->acc[0].m2, empty, 7.0, 0.3, 11.0};
                    const double *em = debiased ? s->ema[0].zero_mean : s->ema[0].running_mean;
                    const double *ev = debiased ? s->ema[0].zero_var : s->ema[0].running_var;
                    floats_t *f = pass == 0 ? &out[t] : &rout;
                    ns__record_pass_t r = {f->v[0], f->v[1],      f->v[2],        f->v[3],
                                           em,      ev,           s->acc[0].mean, s->acc[0].m2,
                                           3.0,     NS_DRIFT_EPS, &drift[t]};
                    if (pass == 0) {
                        tables[t]->step_update(mean, var, c, 1.25, pe, 2, &pp, &r);
                        continue;
                    }
                    tables[t]->step_update(mean, var, c, 1.25, pe, 2, &pp, NULL);
                    tables[t]->narrow(f->v[0], mean, c);
                    tables[t]->narrow(f->v[1], var, c);
                    tables[t]->narrow(f->v[2], em, c);
                    tables[t]->narrow(f->v[3], ev, c);
                    tables[t]->drift_precise(em, ev, s->acc[0].mean, s->acc[0].m2, 3.0, c,
                                             NS_DRIFT_EPS, &rdrift);
                }
                const char *k = tables[t]->name;
                check_state(&run[t], &ref, c, k);
                for (int a = 0; a < 4; a++)
                    CHECK(same(out[t].v[a], rout.v[a], c * sizeof(float)),
                          "%s c=%zu shape=%d: floats %d", k, c, shape, a);
                CHECK(same(&drift[t], &rdrift, sizeof(rdrift)), "%s c=%zu shape=%d: drift", k, c,
                      shape);
                if (t == 1) { /* against scalar: the same bits but for dv */
                    check_state(&run[1], &run[0], c, "avx2 vs scalar");
                    for (int a = 0; a < 4; a++)
                        CHECK(same(out[1].v[a], out[0].v[a], c * sizeof(float)),
                              "c=%zu shape=%d: floats %d, avx2 vs scalar", c, shape, a);
                    CHECK(drift[1].mean_max == drift[0].mean_max &&
                              drift[1].mean_max_channel == drift[0].mean_max_channel,
                          "c=%zu shape=%d: mean_max avx2 vs scalar", c, shape);
                }
                checked++;
            }
        }
    ck_assert_uint_ge(checked, N_COUNTS * 8);
    for (int t = 0; t < 2; t++)
        free(run[t].block);
    free(ref.block);
    free(start_s.block);
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("step_record");
    TCase *tc = tcase_create("step_record");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_record_matches_unfused);
    tcase_add_test(tc, test_record_refusals_change_nothing);
    tcase_add_test(tc, test_tables_record_match);
    suite_add_tcase(s, tc);
    return s;
}

NS_TEST_MAIN(make_suite)
