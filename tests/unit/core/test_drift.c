/* test_drift.c - ns_drift and every drift kernel this CPU supports, against a long double
 * reference.
 *
 * Tolerances (cited by core/include/normstat/core.h):
 *  - per channel dm = |em - pm| / sqrt(pv + eps): every kernel performs the
 *    same double operations, so mean_max and its channel equal scalar's
 *    bitwise; against long double |dm - ref| <= 1e-15 ref.
 *  - dv = |ln((ev + eps) / (pv + eps))|: the ratio is rounded three times
 *    (about 3.3e-16 absolute in the log) and the vector logarithm adds a few
 *    ulp, so |dv - ref| <= 2e-15 + 1e-14 ref.
 *  - averages: sums of up to a few thousand non-negative terms, in lanes or
 *    in order, |avg - ref| <= 1e-12 ref + the per-channel bound.
 *    The logarithm alone, of the ratio as rounded, is within 8 ulp.
 *  - a maximum's channel is the first channel holding it: exact for dm; for
 *    dv any channel whose reference is within the bound of the maximum.
 *  - drift_precise (PreciseBN's m2 divided in the pass) equals, bitwise, the
 *    same table's drift of pv = m2 / (n - 1) divided here; and against the
 *    long double reference within the bounds above.
 * Shapes are random from the printed seed (NS_TEST_SEED replays a run). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "kernels.h"

static const ns_kernels_t *tables[2];
static int ntables;

static void collect_tables(void)
{
    ntables = 0;
    tables[ntables++] = &ns__kernels_scalar;
#if defined(__x86_64__) || defined(__i386__)
    if (ns__cpu_has_avx2_fma())
        tables[ntables++] = &ns__kernels_avx2;
#endif
}

typedef struct ref_s {
    long double mean_avg, mean_max, var_avg, var_max;
    size_t mean_max_channel;
} ref_t;

static long double ref_dm(double em, double pm, double pv, double eps)
{
    return fabsl((long double)em - (long double)pm) / sqrtl((long double)pv + (long double)eps);
}

static long double ref_dv(double ev, double pv, double eps)
{
    return fabsl(logl(((long double)ev + (long double)eps) / ((long double)pv + (long double)eps)));
}

static ref_t reference(const double *em, const double *ev, const double *pm, const double *pv,
                       size_t n, double eps)
{
    ref_t r = {0, -1, 0, -1, 0};
    for (size_t c = 0; c < n; c++) {
        long double dm = ref_dm(em[c], pm[c], pv[c], eps), dv = ref_dv(ev[c], pv[c], eps);
        r.mean_avg += dm;
        r.var_avg += dv;
        if (dm > r.mean_max) {
            r.mean_max = dm;
            r.mean_max_channel = c;
        }
        if (dv > r.var_max)
            r.var_max = dv;
    }
    r.mean_avg /= n;
    r.var_avg /= n;
    return r;
}

static int dv_close(double got, long double ref)
{
    return fabsl(got - ref) <= 2e-15L + 1e-14L * ref;
}

/* One shape through every table: against the reference and against scalar. */
static void check_all(const double *em, const double *ev, const double *pm, const double *pv,
                      size_t n, double eps, const char *what)
{
    ref_t r = reference(em, ev, pm, pv, n, eps);
    ns_drift_t scalar = {0};
    for (int t = 0; t < ntables; t++) {
        ns_drift_t d;
        memset(&d, 0xA5, sizeof(d));
        tables[t]->drift(em, ev, pm, pv, n, eps, &d);
        const char *k = tables[t]->name;
        CHECK(fabsl(d.mean_max - r.mean_max) <= 1e-15L * r.mean_max,
              "%s %s n=%zu: mean_max %.17g ref %.17Lg", k, what, n, d.mean_max, r.mean_max);
        CHECK(d.mean_max_channel < n &&
                  ref_dm(em[d.mean_max_channel], pm[d.mean_max_channel], pv[d.mean_max_channel],
                         eps) >= r.mean_max * (1 - 1e-15L),
              "%s %s n=%zu: mean_max_channel %zu", k, what, n, d.mean_max_channel);
        CHECK(fabsl(d.mean_avg - r.mean_avg) <= 1e-12L * r.mean_avg + 1e-15L * r.mean_max,
              "%s %s n=%zu: mean_avg %.17g ref %.17Lg", k, what, n, d.mean_avg, r.mean_avg);
        CHECK(dv_close(d.var_max, r.var_max), "%s %s n=%zu: var_max %.17g ref %.17Lg", k, what, n,
              d.var_max, r.var_max);
        CHECK(d.var_max_channel < n &&
                  dv_close(r.var_max, ref_dv(ev[d.var_max_channel], pv[d.var_max_channel], eps)),
              "%s %s n=%zu: var_max_channel %zu", k, what, n, d.var_max_channel);
        CHECK(fabsl(d.var_avg - r.var_avg) <= 1e-12L * r.var_avg + 2e-15L + 1e-14L * r.var_max,
              "%s %s n=%zu: var_avg %.17g ref %.17Lg", k, what, n, d.var_avg, r.var_avg);
        if (t == 0) {
            scalar = d;
        } else {
            CHECK(d.mean_max == scalar.mean_max && d.mean_max_channel == scalar.mean_max_channel,
                  "%s %s n=%zu: mean_max %.17g@%zu, scalar %.17g@%zu", k, what, n, d.mean_max,
                  d.mean_max_channel, scalar.mean_max, scalar.mean_max_channel);
        }
    }
}

START_TEST(known_answer)
{
    /* eps = 0.25 keeps the numbers round: pv + eps = 9 (std 3), em - pm = 3
     * gives dm = 1; ev + eps = 36 is 4 times pv + eps, so dv = ln 4. A second
     * channel equal to the population gives 0 and 0. */
    const double em[2] = {3.0, 5.0}, pm[2] = {0.0, 5.0}, pv[2] = {8.75, 2.0};
    const double ev[2] = {35.75, 2.0};
    for (int t = 0; t < ntables; t++) {
        ns_drift_t d;
        tables[t]->drift(em, ev, pm, pv, 2, 0.25, &d);
        ck_assert_double_eq(d.mean_max, 1.0);
        ck_assert_uint_eq(d.mean_max_channel, 0);
        ck_assert_double_eq(d.mean_avg, 0.5);
        ck_assert_double_eq_tol(d.var_max, 1.3862943611198906, 1e-15);
        ck_assert_uint_eq(d.var_max_channel, 0);
        ck_assert_double_eq_tol(d.var_avg, 1.3862943611198906 / 2, 1e-15);
    }
}
END_TEST

START_TEST(first_channel_of_a_tie)
{
    /* Channels 2, 5 and 9 hold the same largest distance (both kinds): the
     * first of them is named, whichever vector lane holds the others. */
    enum { N = 11 };
    double em[N], ev[N], pm[N], pv[N];
    for (size_t c = 0; c < N; c++) {
        em[c] = pm[c] = (double)c;
        ev[c] = pv[c] = 1.0;
    }
    const size_t at[3] = {2, 5, 9};
    for (int i = 0; i < 3; i++) {
        em[at[i]] += 2.0;
        ev[at[i]] = 3.0;
    }
    for (int t = 0; t < ntables; t++) {
        ns_drift_t d;
        tables[t]->drift(em, ev, pm, pv, N, NS_DRIFT_EPS, &d);
        ck_assert_uint_eq(d.mean_max_channel, 2);
        ck_assert_uint_eq(d.var_max_channel, 2);
    }
    /* All distances 0: channel 0. */
    for (int t = 0; t < ntables; t++) {
        ns_drift_t d;
        tables[t]->drift(pm, pv, pm, pv, N, NS_DRIFT_EPS, &d);
        ck_assert(d.mean_max == 0.0 && d.var_max == 0.0 && d.mean_avg == 0.0 && d.var_avg == 0.0);
        ck_assert_uint_eq(d.mean_max_channel, 0);
        ck_assert_uint_eq(d.var_max_channel, 0);
    }
}
END_TEST

/* Fills one random shape: population (pm, pv) from a scale, the EMA near it
 * or far from it, with zero variances and huge magnitudes now and then. */
static void fill(double *em, double *ev, double *pm, double *pv, size_t n, uint64_t *rng)
{
    static const double scales[] = {1.0, 1e-3, 1e3, 0x1p60};
    double scale = scales[ns_test_rand(rng) % 4];
    for (size_t c = 0; c < n; c++) {
        pm[c] = scale * ns_test_normal(rng);
        pv[c] = ns_test_rand(rng) % 9 == 0 ? 0.0 : scale * scale * ns_test_uniform(rng);
        if (pv[c] > 0x1p120)
            pv[c] = 0x1p120;
        em[c] = pm[c] + sqrt(pv[c] + NS_DRIFT_EPS) * ns_test_normal(rng) *
                            (ns_test_rand(rng) % 2 ? 1e-6 : 3.0);
        ev[c] = ns_test_rand(rng) % 11 == 0 ? 0.0 : pv[c] * exp(2.0 * ns_test_normal(rng));
    }
}

START_TEST(random_shapes)
{
    uint64_t rng = ns_test_seed() ^ 0xd41f7;
    enum { MAXC = 4099 };
    double *em = malloc(MAXC * sizeof(double)), *ev = malloc(MAXC * sizeof(double));
    double *pm = malloc(MAXC * sizeof(double)), *pv = malloc(MAXC * sizeof(double));
    ck_assert(em && ev && pm && pv);
    for (int iter = 0; iter < 400; iter++) {
        size_t n = iter % 4 == 0 ? 1 + ns_test_rand(&rng) % 9 : 1 + ns_test_rand(&rng) % MAXC;
        fill(em, ev, pm, pv, n, &rng);
        /* misaligned starts, so vector loads meet every offset */
        size_t off = ns_test_rand(&rng) % 3;
        if (off >= n)
            off = 0;
        check_all(em + off, ev + off, pm + off, pv + off, n - off, NS_DRIFT_EPS, "random");
    }
    free(em);
    free(ev);
    free(pm);
    free(pv);
}
END_TEST

START_TEST(logarithm_range)
{
    /* The vector logarithm over the whole range the daemon can meet: ratios
     * from eps / 2^123 to 2^123 / eps, and near 1 (where log is small and
     * its relative accuracy matters), against long double. */
    uint64_t rng = ns_test_seed() ^ 0x10f;
    enum { N = 4096 };
    static double em[N], ev[N], pm[N], pv[N];
    for (int iter = 0; iter < 50; iter++) {
        for (size_t c = 0; c < N; c++) {
            em[c] = pm[c] = 0.0;
            pv[c] = ldexp(ns_test_uniform(&rng), (int)(ns_test_rand(&rng) % 124));
            if (c % 3 == 0)
                ev[c] = pv[c] * (1.0 + 1e-9 * ns_test_normal(&rng));
            else
                ev[c] = ldexp(ns_test_uniform(&rng), (int)(ns_test_rand(&rng) % 124));
            if (ev[c] < 0)
                ev[c] = 0;
        }
        for (int t = 0; t < ntables; t++)
            for (size_t c = 0; c < N; c += 1) {
                ns_drift_t d;
                tables[t]->drift(em + c, ev + c, pm + c, pv + c, 1, NS_DRIFT_EPS, &d);
                long double r = ref_dv(ev[c], pv[c], NS_DRIFT_EPS);
                CHECK(dv_close(d.var_max, r), "%s: ev %.17g pv %.17g: %.17g ref %.17Lg",
                      tables[t]->name, ev[c], pv[c], d.var_max, r);
                /* The logarithm alone: of the ratio as the kernel rounds it,
                 * within 8 ulp of the result. */
                double ratio = (ev[c] + NS_DRIFT_EPS) / (pv[c] + NS_DRIFT_EPS);
                long double rl = fabsl(logl((long double)ratio));
                CHECK(fabsl(d.var_max - rl) <= 8 * 0x1p-53L * rl,
                      "%s: log of %.17g: %.17g ref %.17Lg (%.3Lg ulp)", tables[t]->name, ratio,
                      d.var_max, rl, fabsl(d.var_max - rl) / (0x1p-53L * rl));
            }
    }
}
END_TEST

START_TEST(public_entry)
{
    double m[3] = {1, 2, 3}, v[3] = {1, 1, 1};
    ns_drift_t d;
    ck_assert_int_eq(ns_drift(m, v, m, v, 3, NS_DRIFT_EPS, &d), 0);
    ck_assert(d.mean_max == 0.0 && d.var_max == 0.0);
    ck_assert_int_eq(ns_drift(NULL, v, m, v, 3, NS_DRIFT_EPS, &d), NS_EINVAL);
    ck_assert_int_eq(ns_drift(m, v, m, NULL, 3, NS_DRIFT_EPS, &d), NS_EINVAL);
    ck_assert_int_eq(ns_drift(m, v, m, v, 3, NS_DRIFT_EPS, NULL), NS_EINVAL);
    ck_assert_int_eq(ns_drift(m, v, m, v, 0, NS_DRIFT_EPS, &d), NS_EINVAL);
    ck_assert_int_eq(ns_drift(m, v, m, v, 3, 0.0, &d), NS_EINVAL);
    ck_assert_int_eq(ns_drift(m, v, m, v, 3, NAN, &d), NS_EINVAL);
    ck_assert_int_eq(ns_drift(m, v, m, v, 3, 2.0, &d), NS_EINVAL);
    /* The kernel in use answers like the reference. */
    double em[5] = {0.5, -1, 2, 0, 7}, ev[5] = {2, 0, 1, 4, 9};
    double pm[5] = {0, 0, 1, 0, 7.5}, pv[5] = {1, 0.5, 1, 1, 1};
    ck_assert_int_eq(ns_drift(em, ev, pm, pv, 5, NS_DRIFT_EPS, &d), 0);
    ref_t r = reference(em, ev, pm, pv, 5, NS_DRIFT_EPS);
    ck_assert(fabsl(d.mean_max - r.mean_max) <= 1e-15L * r.mean_max);
    ck_assert_uint_eq(d.mean_max_channel, r.mean_max_channel);
    ck_assert(dv_close(d.var_max, r.var_max));
}
END_TEST

/* drift_precise against drift of the quotients computed here: the same bits. */
START_TEST(precise_in_place)
{
    uint64_t rng = ns_test_seed() ^ 0xd71f7;
    const size_t sizes[] = {1, 2, 3, 4, 5, 7, 8, 9, 31, 64, 257, 1003};
    for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
        size_t n = sizes[k];
        double *em = malloc(n * sizeof(double)), *ev = malloc(n * sizeof(double));
        double *pm = malloc(n * sizeof(double)), *m2 = malloc(n * sizeof(double));
        double *pv = malloc(n * sizeof(double));
        ck_assert(em && ev && pm && m2 && pv);
        uint64_t samples = 2 + ns_test_rand(&rng) % 100000;
        for (size_t c = 0; c < n; c++) {
            em[c] = ns_test_uniform(&rng) * 4 - 2;
            pm[c] = ns_test_uniform(&rng) * 4 - 2;
            ev[c] = ns_test_uniform(&rng) * 3;
            m2[c] = ns_test_uniform(&rng) * 3 * (double)(samples - 1);
            pv[c] = m2[c] / (double)(samples - 1);
        }
        ref_t r = reference(em, ev, pm, pv, n, NS_DRIFT_EPS);
        for (int t = 0; t < ntables; t++) {
            ns_drift_t a, b;
            memset(&a, 0, sizeof(a));
            memset(&b, 0, sizeof(b));
            tables[t]->drift(em, ev, pm, pv, n, NS_DRIFT_EPS, &a);
            tables[t]->drift_precise(em, ev, pm, m2, (double)(samples - 1), n, NS_DRIFT_EPS, &b);
            ck_assert_msg(memcmp(&a, &b, sizeof(a)) == 0, "%s: %zu channels differ",
                          tables[t]->name, n);
            ck_assert(fabsl(b.mean_max - r.mean_max) <= 1e-15L * r.mean_max);
            ck_assert_uint_eq(b.mean_max_channel, r.mean_max_channel);
            ck_assert(dv_close(b.var_max, r.var_max));
        }
        /* The public entry: the accumulator's own fields, and its refusals. */
        ns_precise_t acc = {.n = samples, .num_batches = 1, .mean = pm, .m2 = m2};
        ns_drift_t pub, two;
        ck_assert_int_eq(ns_drift_precise(em, ev, &acc, n, NS_DRIFT_EPS, &pub), 0);
        ck_assert_int_eq(ns_drift(em, ev, pm, pv, n, NS_DRIFT_EPS, &two), 0);
        ck_assert(memcmp(&pub, &two, sizeof(pub)) == 0);
        acc.n = 1;
        ck_assert_int_eq(ns_drift_precise(em, ev, &acc, n, NS_DRIFT_EPS, &pub), NS_EINVAL);
        acc.n = 0;
        ck_assert_int_eq(ns_drift_precise(em, ev, &acc, n, NS_DRIFT_EPS, &pub), NS_ENOTFOUND);
        acc.n = samples;
        ck_assert_int_eq(ns_drift_precise(em, ev, &acc, 0, NS_DRIFT_EPS, &pub), NS_EINVAL);
        ck_assert_int_eq(ns_drift_precise(em, ev, &acc, n, 2.0, &pub), NS_EINVAL);
        ck_assert_int_eq(ns_drift_precise(em, ev, NULL, n, NS_DRIFT_EPS, &pub), NS_EINVAL);
        free(em);
        free(ev);
        free(pm);
        free(m2);
        free(pv);
    }
}
END_TEST

static Suite *drift_suite(void)
{
    collect_tables();
    Suite *s = suite_create("drift");
    TCase *tc = tcase_create("drift");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, known_answer);
    tcase_add_test(tc, first_channel_of_a_tie);
    tcase_add_test(tc, random_shapes);
    tcase_add_test(tc, logarithm_range);
    tcase_add_test(tc, public_entry);
    tcase_add_test(tc, precise_in_place);
    suite_add_tcase(s, tc);
    return s;
}

NS_TEST_MAIN(drift_suite)
