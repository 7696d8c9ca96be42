/* test_moments.c - ns_moments_nchw / _nhwc / _merge against hand-computed values and long double.
 *
 * Accuracy bound (documented): against a long double two-pass reference over
 * the same float32 values, with spread = max |x - ref mean| of the channel,
 *   |mean - ref| <= 1e-13 (|ref| + spread)
 *   |m2 - ref|   <= 1e-12 ref + 2^-50 |ref mean| spread sqrt(n)
 * The second m2 term is what merging partial results costs: each partial
 * mean is a double, rounded to ~ulp(mean), and a Chan merge multiplies that
 * by delta * weight ~ spread * sqrt(n). With mean 1e4 and std 1e-2 it allows
 * a relative error of ~1e-11 for n = 1e4 and ~1e-12 for n = 1e6; the large
 * offset test prints what it sees (about 1e-12). Sum-of-squares
 * minus square-of-sums would lose every digit there. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <normstat/core.h>

#include "harness.h"

typedef struct ref_s {
    long double mean, m2, spread, n;
} ref_t;

/* Two-pass long double moments of channel c of an outer x C x inner tensor. */
static ref_t ref_nchw(const float *x, size_t outer, size_t channels, size_t inner, size_t c)
{
    ref_t r = {0, 0, 0, (long double)outer * inner};
    long double s = 0;
    for (size_t n = 0; n < outer; n++)
        for (size_t i = 0; i < inner; i++)
            s += x[(n * channels + c) * inner + i];
    r.mean = s / r.n;
    for (size_t n = 0; n < outer; n++)
        for (size_t i = 0; i < inner; i++) {
            long double d = x[(n * channels + c) * inner + i] - r.mean;
            r.m2 += d * d;
            if (fabsl(d) > r.spread)
                r.spread = fabsl(d);
        }
    return r;
}

static double worst_rel; /* largest relative m2 error seen (printed by some tests) */

static void assert_close(double mean, double m2, ref_t r, const char *what, size_t c)
{
    long double tm = 1e-13L * (fabsl(r.mean) + r.spread);
    long double tq = 1e-12L * r.m2 + 0x1p-50L * fabsl(r.mean) * r.spread * sqrtl(r.n);
    if (r.m2 > 0 && fabsl(m2 - r.m2) / r.m2 > worst_rel)
        worst_rel = (double)(fabsl(m2 - r.m2) / r.m2);
    ck_assert_msg(fabsl(mean - r.mean) <= tm && fabsl(m2 - r.m2) <= tq,
                  "%s channel %zu: mean %.17g (ref %.17Lg), m2 %.17g (ref %.17Lg)", what, c, mean,
                  r.mean, m2, r.m2);
}

static float *random_tensor(size_t count, double mu, double sigma, uint64_t *rng)
{
    float *x = malloc(sizeof(float) * (count ? count : 1));
    ck_assert_ptr_nonnull(x);
    for (size_t i = 0; i < count; i++)
        x[i] = (float)(mu + sigma * ns_test_normal(rng));
    return x;
}

/* ---------------------------------------------------------------- known answers */

START_TEST(known_answers)
{
    double m[2], q[2];
    /* [1, 2, 3, 4] as 1 x 1 x 4: mean 2.5, m2 = 2.25 + 0.25 + 0.25 + 2.25 = 5. */
    const float a[] = {1, 2, 3, 4};
    ck_assert_int_eq(ns_moments_nchw(a, 1, 1, 4, m, q, 1), 0);
    ck_assert_double_eq(m[0], 2.5);
    ck_assert_double_eq(q[0], 5.0);

    /* NCHW 2 x 2 x 2: n0 = {c0: [1, 2], c1: [10, 20]}, n1 = {c0: [3, 4],
     * c1: [30, 40]}. Channel 0 holds 1..4 (mean 2.5, m2 5); channel 1 holds
     * 10..40 (mean 25, m2 = 225 + 25 + 25 + 225 = 500). */
    const float b[] = {1, 2, 10, 20, 3, 4, 30, 40};
    ck_assert_int_eq(ns_moments_nchw(b, 2, 2, 2, m, q, 1), 0);
    ck_assert_double_eq(m[0], 2.5);
    ck_assert_double_eq(q[0], 5.0);
    ck_assert_double_eq(m[1], 25.0);
    ck_assert_double_eq(q[1], 500.0);

    /* The same tensor channels-last (4 rows x 2 channels). */
    const float c[] = {1, 10, 2, 20, 3, 30, 4, 40};
    ck_assert_int_eq(ns_moments_nhwc(c, 4, 2, m, q, 2), 0);
    ck_assert_double_eq(m[0], 2.5);
    ck_assert_double_eq(q[0], 5.0);
    ck_assert_double_eq(m[1], 25.0);
    ck_assert_double_eq(q[1], 500.0);

    /* NC (inner = 1), 3 x 2: channel 0 = [1, 3, 5] (mean 3, m2 8), channel 1
     * = [7, 7, 7] (mean 7, m2 0). */
    const float d[] = {1, 7, 3, 7, 5, 7};
    ck_assert_int_eq(ns_moments_nchw(d, 3, 2, 1, m, q, 1), 0);
    ck_assert_double_eq(m[0], 3.0);
    ck_assert_double_eq(q[0], 8.0);
    ck_assert_double_eq(m[1], 7.0);
    ck_assert_double_eq(q[1], 0.0);
}
END_TEST

/* ---------------------------------------------------------------- accuracy */

static void check_nchw_shape(size_t outer, size_t channels, size_t inner, double mu, double sigma,
                             uint64_t *rng, int threads)
{
    size_t count = outer * channels * inner;
    float *x = random_tensor(count, mu, sigma, rng);
    double *m = malloc(sizeof(double) * channels), *q = malloc(sizeof(double) * channels);
    ck_assert(m && q);
    ck_assert_int_eq(ns_moments_nchw(x, outer, channels, inner, m, q, threads), 0);
    char what[96];
    snprintf(what, sizeof(what), "nchw %zux%zux%zu mu=%g sigma=%g", outer, channels, inner, mu,
             sigma);
    for (size_t c = 0; c < channels; c++)
        assert_close(m[c], q[c], ref_nchw(x, outer, channels, inner, c), what, c);

    /* The same values channels-last must give the same moments (to the bound). */
    float *t = malloc(sizeof(float) * count);
    double *tm = malloc(sizeof(double) * channels), *tq = malloc(sizeof(double) * channels);
    ck_assert(t && tm && tq);
    for (size_t n = 0; n < outer; n++)
        for (size_t c = 0; c < channels; c++)
            for (size_t i = 0; i < inner; i++)
                t[(n * inner + i) * channels + c] = x[(n * channels + c) * inner + i];
    ck_assert_int_eq(ns_moments_nhwc(t, outer * inner, channels, tm, tq, threads), 0);
    snprintf(what, sizeof(what), "nhwc %zux%zu mu=%g sigma=%g", outer * inner, channels, mu, sigma);
    for (size_t c = 0; c < channels; c++)
        assert_close(tm[c], tq[c], ref_nchw(x, outer, channels, inner, c), what, c);
    free(t);
    free(tm);
    free(tq);
    free(x);
    free(m);
    free(q);
}

START_TEST(accuracy_random_shapes)
{
    uint64_t rng = ns_test_seed() ^ 0x5ca1e;
    for (int iter = 0; iter < 60; iter++) {
        size_t outer = 1 + ns_test_rand(&rng) % 9, channels = 1 + ns_test_rand(&rng) % 20, inner;
        switch (iter % 4) {
        case 0:
            inner = 1;
            break; /* NC */
        case 1:
            inner = 1 + ns_test_rand(&rng) % 300;
            break; /* small NCHW */
        case 2:
            inner = (1 + ns_test_rand(&rng) % 4) * 7 * 7;
            break; /* NCDHW, D x 7 x 7 */
        default:
            inner = 4000 + ns_test_rand(&rng) % 6000;
            break; /* several blocks per n */
        }
        const double mus[] = {0.0, 1e4, -250.0, 1e6};
        const double sigmas[] = {1.0, 1e-2, 30.0, 1e-3};
        int k = (int)(ns_test_rand(&rng) % 4);
        check_nchw_shape(outer, channels, inner, mus[k], sigmas[k], &rng,
                         1 + (int)(ns_test_rand(&rng) % 4));
    }
}
END_TEST

START_TEST(accuracy_large_offset)
{
    /* Mean 1e4, std 1e-2: naive E[x^2] - E[x]^2 in double would keep about
     * 16 - 2 * 6 = 4 digits; the bound asks for ~12. Several groups of
     * blocks per channel (outer 300 x inner 1000 -> 75 blocks), so the Chan
     * merges are exercised too. */
    uint64_t rng = ns_test_seed() ^ 0x1e4;
    check_nchw_shape(300, 2, 1000, 1e4, 1e-2, &rng, 1);
    check_nchw_shape(300, 2, 1000, 1e4, 1e-2, &rng, 2);
    check_nchw_shape(40, 3, 5000, 1e4, 1e-2, &rng, 2);
    check_nchw_shape(20000, 3, 1, 1e4, 1e-2, &rng, 2);
    check_nchw_shape(64, 2, 16384, 1e4, 1e-2, &rng, 2); /* n = 1M */
    fprintf(stderr, "mean 1e4, std 1e-2: largest relative m2 error %.3g\n", worst_rel);
}
END_TEST

/* ---------------------------------------------------------------- determinism */

static void check_threads_identical(size_t outer, size_t channels, size_t inner, int nhwc,
                                    uint64_t *rng)
{
    size_t count = outer * channels * inner;
    float *x = random_tensor(count, 3.0, 2.0, rng);
    double *m1 = malloc(sizeof(double) * channels), *q1 = malloc(sizeof(double) * channels);
    double *m = malloc(sizeof(double) * channels), *q = malloc(sizeof(double) * channels);
    ck_assert(m1 && q1 && m && q);
    for (int threads = 1; threads <= 4; threads++) {
        double *pm = threads == 1 ? m1 : m, *pq = threads == 1 ? q1 : q;
        int rc = nhwc ? ns_moments_nhwc(x, outer * inner, channels, pm, pq, threads)
                      : ns_moments_nchw(x, outer, channels, inner, pm, pq, threads);
        ck_assert_int_eq(rc, 0);
        if (threads > 1)
            ck_assert_msg(memcmp(m1, m, sizeof(double) * channels) == 0 &&
                              memcmp(q1, q, sizeof(double) * channels) == 0,
                          "%s %zux%zux%zu: threads=%d differs from threads=1",
                          nhwc ? "nhwc" : "nchw", outer, channels, inner, threads);
    }
    free(x);
    free(m1);
    free(q1);
    free(m);
    free(q);
}

START_TEST(threads_bitwise_identical)
{
    uint64_t rng = ns_test_seed() ^ 0x7d;
    /* Shapes with several groups per channel (16 blocks or 16 row chunks
     * each), so the merge order across groups is exercised. */
    check_threads_identical(16, 3, 8192, 0, &rng);  /* few channels: groups side by side */
    check_threads_identical(40, 64, 1100, 0, &rng); /* many channels: tiles */
    check_threads_identical(300, 5, 300, 0, &rng);  /* several n's per block */
    check_threads_identical(1, 1, 600000, 0, &rng); /* one channel, many groups */
    check_threads_identical(200000, 8, 1, 1, &rng); /* channels-last, few channels */
    check_threads_identical(9000, 300, 1, 1, &rng); /* channels-last, tiles of varying width */
    check_threads_identical(3000, 100, 1, 0, &rng); /* NC goes channels-last */
}
END_TEST

/* ---------------------------------------------------------------- errors */

START_TEST(argument_errors)
{
    float x[8] = {0};
    double m[4], q[4];
    ck_assert_int_eq(ns_moments_nchw(x, 2, 0, 4, m, q, 1), NS_EINVAL);
    ck_assert_int_eq(ns_moments_nchw(x, 0, 2, 4, m, q, 1), NS_EINVAL);
    ck_assert_int_eq(ns_moments_nchw(x, 2, 2, 0, m, q, 1), NS_EINVAL);
    ck_assert_int_eq(ns_moments_nchw(NULL, 2, 2, 2, m, q, 1), NS_EINVAL);
    ck_assert_int_eq(ns_moments_nchw(x, 2, 2, 2, NULL, q, 1), NS_EINVAL);
    ck_assert_int_eq(ns_moments_nchw(x, 2, 2, 2, m, NULL, 1), NS_EINVAL);
    ck_assert_int_eq(ns_moments_nchw(x, SIZE_MAX / 2, 3, 1, m, q, 1), NS_EINVAL);
    ck_assert_int_eq(ns_moments_nchw(x, (size_t)1 << 31, 2, (size_t)1 << 31, m, q, 1), NS_EINVAL);
    ck_assert_int_eq(ns_moments_nchw(x, SIZE_MAX / 3, 1, 1, m, q, 1),
                     NS_EINVAL); /* bytes overflow */
    ck_assert_int_eq(ns_moments_nhwc(x, 4, 0, m, q, 1), NS_EINVAL);
    ck_assert_int_eq(ns_moments_nhwc(x, 0, 2, m, q, 1), NS_EINVAL);
    ck_assert_int_eq(ns_moments_nhwc(NULL, 4, 2, m, q, 1), NS_EINVAL);
    ck_assert_int_eq(ns_moments_nhwc(x, 4, 2, m, NULL, 1), NS_EINVAL);
    ck_assert_int_eq(ns_moments_nhwc(x, SIZE_MAX / 2, 3, m, q, 1), NS_EINVAL);
}
END_TEST

START_TEST(nonfinite_input)
{
    uint64_t rng = ns_test_seed() ^ 0xbad;
    const float bad[] = {NAN, INFINITY, -INFINITY};
    size_t outer = 6, channels = 5, inner = 700, count = outer * channels * inner;
    float *x = random_tensor(count, 0.0, 1.0, &rng);
    double m[5], q[5];
    for (int k = 0; k < 3; k++) {
        size_t pos = ns_test_rand(&rng) % count;
        float keep = x[pos];
        x[pos] = bad[k];
        ck_assert_int_eq(ns_moments_nchw(x, outer, channels, inner, m, q, 2), NS_EVALUE);
        ck_assert_int_eq(ns_moments_nhwc(x, outer * inner, channels, m, q, 2), NS_EVALUE);
        ck_assert_int_eq(ns_moments_nchw(x, outer * inner, channels, 1, m, q, 1), NS_EVALUE);
        x[pos] = keep;
    }
    ck_assert_int_eq(ns_moments_nchw(x, outer, channels, inner, m, q, 2), 0);
    free(x);
}
END_TEST

/* ---------------------------------------------------------------- merge */

START_TEST(merge_halves)
{
    /* {1, 2} (n 2, mean 1.5, m2 0.5) merged with {3, 4, 5} (n 3, mean 4,
     * m2 2) is {1..5}: n 5, mean 3, m2 = 4 + 1 + 0 + 1 + 4 = 10. */
    ns_moments_t a = {2, 1.5, 0.5}, b = {3, 4, 2};
    ck_assert_int_eq(ns_moments_merge(&a, &b), 0);
    ck_assert_double_eq(a.n, 5);
    ck_assert_double_eq(a.mean, 3);
    ck_assert_double_eq_tol(a.m2, 10, 1e-14);

    /* Random halves against the long double reference of the whole. */
    uint64_t rng = ns_test_seed() ^ 0x3e6;
    for (int iter = 0; iter < 200; iter++) {
        size_t n = 2 + ns_test_rand(&rng) % 5000, cut = ns_test_rand(&rng) % (n + 1);
        float *x = random_tensor(n, iter % 2 ? 1e4 : 0.0, iter % 2 ? 1e-2 : 1.0, &rng);
        double m, q;
        ns_moments_t acc = {0, 0, 0}, part = {0, 0, 0};
        if (cut > 0) {
            ck_assert_int_eq(ns_moments_nchw(x, 1, 1, cut, &m, &q, 1), 0);
            part = (ns_moments_t){(double)cut, m, q};
            ck_assert_int_eq(ns_moments_merge(&acc, &part), 0);
        }
        if (cut < n) {
            ck_assert_int_eq(ns_moments_nchw(x + cut, 1, 1, n - cut, &m, &q, 1), 0);
            part = (ns_moments_t){(double)(n - cut), m, q};
        } else {
            part = (ns_moments_t){0, 0, 0}; /* an empty side */
        }
        ck_assert_int_eq(ns_moments_merge(&acc, &part), 0);
        ck_assert_double_eq(acc.n, (double)n);
        assert_close(acc.mean, acc.m2, ref_nchw(x, 1, 1, n, 0), "merge", 0);
        free(x);
    }
}
END_TEST

START_TEST(merge_empty_and_bad)
{
    ns_moments_t dst = {4, 2.5, 5}, keep = dst;
    ns_moments_t empty = {0, 123, 456}; /* n == 0: ignored whatever it says */
    ck_assert_int_eq(ns_moments_merge(&dst, &empty), 0);
    ck_assert_mem_eq(&dst, &keep, sizeof(dst));

    ns_moments_t none = {0, 0, 0}, src = {3, -1, 2};
    ck_assert_int_eq(ns_moments_merge(&none, &src), 0); /* empty dst takes src */
    ck_assert_double_eq(none.n, 3);
    ck_assert_double_eq(none.mean, -1);
    ck_assert_double_eq(none.m2, 2);

    const ns_moments_t bad[] = {
        {NAN, 1, 1},       {1, NAN, 1},      {1, 1, NAN}, {INFINITY, 1, 1},
        {1, -INFINITY, 1}, {1, 1, INFINITY}, {-1, 1, 1},  {1, 1, -1e-300},
    };
    for (size_t k = 0; k < sizeof(bad) / sizeof(bad[0]); k++) {
        ck_assert_int_eq(ns_moments_merge(&dst, &bad[k]), NS_EINVAL);
        ck_assert_mem_eq(&dst, &keep, sizeof(dst));
    }
    ck_assert_int_eq(ns_moments_merge(NULL, &src), NS_EINVAL);
    ck_assert_int_eq(ns_moments_merge(&dst, NULL), NS_EINVAL);
    ck_assert_mem_eq(&dst, &keep, sizeof(dst));
}
END_TEST

START_TEST(version_and_threads)
{
    ck_assert_str_eq(ns_core_version(), NS_VERSION_STRING);
    const char *k = ns_core_kernel();
    ck_assert(strcmp(k, "avx2") == 0 || strcmp(k, "scalar") == 0);
    const char *want = getenv("NS_SIMD");
    if (want != NULL && strcmp(want, "scalar") == 0)
        ck_assert_str_eq(k, "scalar");
    ck_assert_int_ge(ns_core_max_threads(), 1);
}
END_TEST

static Suite *moments_suite(void)
{
    Suite *s = suite_create("moments");
    TCase *tc = tcase_create("moments");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, known_answers);
    tcase_add_test(tc, accuracy_random_shapes);
    tcase_add_test(tc, accuracy_large_offset);
    tcase_add_test(tc, threads_bitwise_identical);
    tcase_add_test(tc, argument_errors);
    tcase_add_test(tc, nonfinite_input);
    tcase_add_test(tc, merge_halves);
    tcase_add_test(tc, merge_empty_and_bad);
    tcase_add_test(tc, version_and_threads);
    suite_add_tcase(s, tc);
    return s;
}

NS_TEST_MAIN(moments_suite)
