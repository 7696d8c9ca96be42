/* test_precise.c - PreciseBN accumulators against statistics of the raw data. */
#include <normstat/core.h>

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "harness.h"

enum { C = 9, K_MAX = 12, B_MAX = 40 };

/* Raw activations of K steps: x[k][i][c], batch sizes b[k]. */
typedef struct data_s {
    size_t k;
    size_t b[K_MAX];
    double x[K_MAX][B_MAX][C];
    /* each step's statistics as the server receives them (biased, double) */
    double mean[K_MAX][C], var[K_MAX][C];
} data_t;

static void make_data(data_t *d, uint64_t *rng, size_t k, int equal, double offset)
{
    d->k = k;
    size_t fixed = 2 + ns_test_rand(rng) % (B_MAX - 1);
    for (size_t s = 0; s < k; s++) {
        d->b[s] = equal ? fixed : 1 + ns_test_rand(rng) % B_MAX;
        if (s == 0 && d->b[s] < 2)
            d->b[s] = 2; /* at least 2 values in all, so the unbiased read exists */
        double shift = ns_test_normal(rng); /* batches differ, as real ones do */
        for (size_t i = 0; i < d->b[s]; i++)
            for (size_t c = 0; c < C; c++)
                d->x[s][i][c] = offset + shift + (1.0 + c) * ns_test_normal(rng);
        for (size_t c = 0; c < C; c++) {
            long double sum = 0, ss = 0;
            for (size_t i = 0; i < d->b[s]; i++)
                sum += d->x[s][i][c];
            long double m = sum / d->b[s];
            for (size_t i = 0; i < d->b[s]; i++)
                ss += (d->x[s][i][c] - m) * (d->x[s][i][c] - m);
            d->mean[s][c] = (double)m;
            d->var[s][c] = (double)(ss / d->b[s]);
        }
    }
}

/* Statistics of all raw values of steps [from, to) in long double, two-pass. */
static void concat_stats(const data_t *d, size_t from, size_t to, size_t c, long double *mean,
                         long double *m2, long double *n)
{
    long double sum = 0, ss = 0, cnt = 0;
    for (size_t s = from; s < to; s++)
        for (size_t i = 0; i < d->b[s]; i++) {
            sum += d->x[s][i][c];
            cnt += 1;
        }
    long double m = sum / cnt;
    for (size_t s = from; s < to; s++)
        for (size_t i = 0; i < d->b[s]; i++)
            ss += (d->x[s][i][c] - m) * (d->x[s][i][c] - m);
    *mean = m;
    *m2 = ss;
    *n = cnt;
}

typedef struct acc_s {
    double mean[C], m2[C];
    ns_precise_t p;
} acc_t;

static void acc_init(acc_t *a)
{
    a->p.mean = a->mean;
    a->p.m2 = a->m2;
    ns_precise_init(&a->p, C);
}

static void acc_add_steps(acc_t *a, const data_t *d, size_t from, size_t to)
{
    for (size_t s = from; s < to; s++)
        ck_assert_int_eq(ns_precise_add(&a->p, C, d->b[s], d->mean[s], d->var[s]), 0);
}

/* The double arithmetic of K merges stays within 1e-12 of the spread of the
 * data (relative to var + mean^2 / 1e6 for shifted data). */
static void check_against_concat(const acc_t *a, const data_t *d, size_t from, size_t to)
{
    double mean[C], var[C], bvar[C];
    ck_assert_int_eq(ns_precise_read(&a->p, C, 0, mean, var), 0);
    ck_assert_int_eq(ns_precise_read(&a->p, C, 1, mean, bvar), 0);
    for (size_t c = 0; c < C; c++) {
        long double m, m2, n;
        concat_stats(d, from, to, c, &m, &m2, &n);
        long double uvar = m2 / (n - 1), pvar = m2 / n;
        long double tol_m = 1e-13L * (fabsl(m) + sqrtl(pvar));
        ck_assert_msg(fabsl(mean[c] - m) <= tol_m, "mean %.17g vs %.17Lg", mean[c], m);
        ck_assert_msg(fabsl(var[c] - uvar) <= 1e-12L * uvar + 1e-13L * fabsl(m) * sqrtl(uvar),
                      "unbiased var %.17g vs %.17Lg", var[c], uvar);
        ck_assert_msg(fabsl(bvar[c] - pvar) <= 1e-12L * pvar + 1e-13L * fabsl(m) * sqrtl(pvar),
                      "biased var %.17g vs %.17Lg", bvar[c], pvar);
    }
    uint64_t total = 0;
    for (size_t s = from; s < to; s++)
        total += d->b[s];
    ck_assert_uint_eq(a->p.n, total);
    ck_assert_uint_eq(a->p.num_batches, to - from);
}

START_TEST(test_equals_concatenation)
{
    uint64_t rng = ns_test_seed() + 21;
    static data_t d;
    for (int round = 0; round < 20; round++) {
        make_data(&d, &rng, 1 + ns_test_rand(&rng) % K_MAX, round % 2, 0.0);
        acc_t a;
        acc_init(&a);
        acc_add_steps(&a, &d, 0, d.k);
        check_against_concat(&a, &d, 0, d.k);
    }
}
END_TEST

START_TEST(test_large_offset)
{
    /* mean 1e4, spread ~1: sum-of-squares methods lose ~8 digits here */
    uint64_t rng = ns_test_seed() + 22;
    static data_t d;
    make_data(&d, &rng, K_MAX, 0, 1e4);
    acc_t a;
    acc_init(&a);
    acc_add_steps(&a, &d, 0, d.k);
    check_against_concat(&a, &d, 0, d.k);
}
END_TEST

START_TEST(test_rethinking_estimator)
{
    /* Equal batches of B: var = N/(N-1) [avg(mu_i^2 + sigma_i^2) - avg(mu_i)^2]
     * with N = K*B the number of samples (Rethinking "Batch" in BatchNorm,
     * Wu & Johnson 2021), evaluated here in long double from the step
     * statistics. */
    uint64_t rng = ns_test_seed() + 23;
    static data_t d;
    make_data(&d, &rng, K_MAX, 1, 0.0);
    acc_t a;
    acc_init(&a);
    acc_add_steps(&a, &d, 0, d.k);
    double mean[C], var[C];
    ck_assert_int_eq(ns_precise_read(&a.p, C, 0, mean, var), 0);
    long double n_total = (long double)d.k * d.b[0];
    for (size_t c = 0; c < C; c++) {
        long double a2 = 0, am = 0;
        for (size_t s = 0; s < d.k; s++) {
            a2 += (long double)d.mean[s][c] * d.mean[s][c] + d.var[s][c];
            am += d.mean[s][c];
        }
        a2 /= d.k;
        am /= d.k;
        long double est = n_total / (n_total - 1) * (a2 - am * am);
        ck_assert_msg(fabsl(var[c] - est) <= 1e-12L * est, "%.17g vs %.17Lg", var[c], est);
        ck_assert_msg(fabsl(mean[c] - am) <= 1e-13L * (1 + fabsl(am)), "%.17g vs %.17Lg", mean[c],
                      am);
    }
}
END_TEST

START_TEST(test_merge_equals_single)
{
    uint64_t rng = ns_test_seed() + 24;
    static data_t d;
    make_data(&d, &rng, K_MAX, 0, 3.0);
    size_t split = 1 + ns_test_rand(&rng) % (K_MAX - 1);
    acc_t all, left, right;
    acc_init(&all);
    acc_init(&left);
    acc_init(&right);
    acc_add_steps(&all, &d, 0, d.k);
    acc_add_steps(&left, &d, 0, split);
    acc_add_steps(&right, &d, split, d.k);
    ck_assert_int_eq(ns_precise_merge(&left.p, &right.p, C), 0);
    ck_assert_uint_eq(left.p.n, all.p.n);
    ck_assert_uint_eq(left.p.num_batches, all.p.num_batches);
    check_against_concat(&left, &d, 0, d.k);
    for (size_t c = 0; c < C; c++) {
        ck_assert_double_eq_tol(left.mean[c], all.mean[c], 1e-13 * (1 + fabs(all.mean[c])));
        ck_assert_double_eq_tol(left.m2[c], all.m2[c], 1e-12 * all.m2[c]);
    }
    /* merging an empty accumulator, or into one, is exact */
    acc_t empty, copy;
    acc_init(&empty);
    acc_init(&copy);
    ck_assert_int_eq(ns_precise_merge(&copy.p, &all.p, C), 0);
    ck_assert_int_eq(ns_precise_merge(&copy.p, &empty.p, C), 0);
    ck_assert(memcmp(copy.mean, all.mean, sizeof(copy.mean)) == 0);
    ck_assert(memcmp(copy.m2, all.m2, sizeof(copy.m2)) == 0);
    ck_assert_uint_eq(copy.p.n, all.p.n);
    ck_assert_uint_eq(copy.p.num_batches, all.p.num_batches);
}
END_TEST

START_TEST(test_biased_equals_fvcore)
{
    /* fvcore.nn.precise_bn._PopulationVarianceEstimator, transcribed in long
     * double: per batch, tot += b; square_mean = mean^2 + biased var;
     * pop_mean += (mean - pop_mean) b / tot; pop_sq += (square_mean - pop_sq) b / tot;
     * var = pop_sq - pop_mean^2. */
    uint64_t rng = ns_test_seed() + 25;
    static data_t d;
    make_data(&d, &rng, K_MAX, 0, 0.5);
    acc_t a;
    acc_init(&a);
    acc_add_steps(&a, &d, 0, d.k);
    double mean[C], var[C];
    ck_assert_int_eq(ns_precise_read(&a.p, C, 1, mean, var), 0);
    for (size_t c = 0; c < C; c++) {
        long double tot = 0, pm = 0, psq = 0;
        for (size_t s = 0; s < d.k; s++) {
            long double b = d.b[s];
            tot += b;
            long double sq = (long double)d.mean[s][c] * d.mean[s][c] + d.var[s][c];
            pm += (d.mean[s][c] - pm) * (b / tot);
            psq += (sq - psq) * (b / tot);
        }
        long double pv = psq - pm * pm;
        ck_assert_msg(fabsl(var[c] - pv) <= 1e-12L * pv, "%.17g vs %.17Lg", var[c], pv);
        ck_assert_msg(fabsl(mean[c] - pm) <= 1e-13L * (1 + fabsl(pm)), "%.17g vs %.17Lg", mean[c],
                      pm);
    }
}
END_TEST

START_TEST(test_empty_steps_and_errors)
{
    acc_t a;
    acc_init(&a);
    double mean[C], var[C];
    ck_assert_int_eq(ns_precise_read(&a.p, C, 0, mean, var), NS_ENOTFOUND);
    ck_assert_int_eq(ns_precise_read(&a.p, C, 1, mean, var), NS_ENOTFOUND);

    double m[C], v[C];
    for (size_t c = 0; c < C; c++) {
        m[c] = 2.0 + c;
        v[c] = 0.5;
    }
    /* n == 0 changes nothing and is not counted as a batch */
    ck_assert_int_eq(ns_precise_add(&a.p, C, 0, m, v), 0);
    ck_assert_uint_eq(a.p.n, 0);
    ck_assert_uint_eq(a.p.num_batches, 0);
    ck_assert_int_eq(ns_precise_read(&a.p, C, 0, mean, var), NS_ENOTFOUND);

    /* one value: unbiased undefined, biased is 0 */
    ck_assert_int_eq(ns_precise_add(&a.p, C, 1, m, v), 0);
    ck_assert_int_eq(ns_precise_read(&a.p, C, 0, mean, var), NS_EINVAL);
    ck_assert_int_eq(ns_precise_read(&a.p, C, 1, mean, var), 0);
    for (size_t c = 0; c < C; c++) {
        ck_assert(mean[c] == m[c]);
        ck_assert(var[c] == v[c]); /* m2 = var * 1, read as m2 / 1 */
    }
    ck_assert_uint_eq(a.p.num_batches, 1);

    /* NULL arrays */
    ck_assert_int_eq(ns_precise_add(NULL, C, 4, m, v), NS_EINVAL);
    ck_assert_int_eq(ns_precise_add(&a.p, C, 4, NULL, v), NS_EINVAL);
    ck_assert_int_eq(ns_precise_add(&a.p, C, 4, m, NULL), NS_EINVAL);
    ck_assert_int_eq(ns_precise_read(&a.p, C, 1, NULL, var), NS_EINVAL);
    ck_assert_int_eq(ns_precise_merge(&a.p, NULL, C), NS_EINVAL);

    /* counts that overflow are refused and change nothing */
    uint64_t before = a.p.n;
    ck_assert_int_eq(ns_precise_add(&a.p, C, UINT64_MAX, m, v), NS_EINVAL);
    ck_assert_uint_eq(a.p.n, before);
    acc_t big;
    acc_init(&big);
    ck_assert_int_eq(ns_precise_add(&big.p, C, UINT64_MAX, m, v), 0);
    ck_assert_int_eq(ns_precise_merge(&big.p, &a.p, C), NS_EINVAL);
    ck_assert_uint_eq(big.p.n, UINT64_MAX);
}
END_TEST

static Suite *precise_suite(void)
{
    Suite *s = suite_create("precise");
    TCase *tc = tcase_create("precise");
    tcase_add_test(tc, test_equals_concatenation);
    tcase_add_test(tc, test_large_offset);
    tcase_add_test(tc, test_rethinking_estimator);
    tcase_add_test(tc, test_merge_equals_single);
    tcase_add_test(tc, test_biased_equals_fvcore);
    tcase_add_test(tc, test_empty_steps_and_errors);
    suite_add_tcase(s, tc);
    return s;
}

NS_TEST_MAIN(precise_suite)
