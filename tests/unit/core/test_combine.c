/* test_combine.c - SyncBN's combination of arrivals, and variance conversions.
 *
 * References: every worker's statistics come from raw float32 data, computed
 * in long double and rounded to float32 as a worker sends them. The result of
 * ns_combine() is compared with
 *  (A) doc/design.md's formula evaluated in long double on the same float32 inputs:
 *      only the library's double rounding separates the two, so the bound is
 *      tight (a few dozen double ulps of the magnitudes involved);
 *  (B) the moments of the concatenated raw data in long double: the float32
 *      rounding of each worker's mean and var (relative 2^-24) is the extra
 *      error, so the bound is looser and derived from that rounding. */
#include <normstat/core.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"

#define F32_EPS 5.96e-8L /* 2^-24, relative rounding to float32 */

typedef struct batch_s {
    size_t w_len, channels;
    uint64_t *n; /* [w_len] */
    float **raw; /* [w_len][n * channels], value i of channel c at i * channels + c */
    float **mean, **var;
    ns_arrival_t *arr; /* [w_len], empty ones with NULL pointers */
} batch_t;

/* Worker w's raw data: its own shift (workers see different data), per
 * channel offset and scale. counts[w] == 0 makes an empty worker. With
 * keep_raw == 0 the raw values are drawn and dropped (large tests). */
static void batch_make(batch_t *b, uint64_t *rng, size_t w_len, size_t channels,
                       const uint64_t *counts, double offset, double scale, int keep_raw)
{
    b->w_len = w_len;
    b->channels = channels;
    b->n = calloc(w_len, sizeof(*b->n));
    b->raw = calloc(w_len, sizeof(*b->raw));
    b->mean = calloc(w_len, sizeof(*b->mean));
    b->var = calloc(w_len, sizeof(*b->var));
    b->arr = calloc(w_len, sizeof(*b->arr));
    long double *sum = calloc(channels, sizeof(*sum)), *ss = calloc(channels, sizeof(*ss));
    float *x = NULL;
    ck_assert(b->n && b->raw && b->mean && b->var && b->arr && sum && ss);
    for (size_t w = 0; w < w_len; w++) {
        uint64_t n = counts[w];
        b->n[w] = n;
        b->arr[w].n = n;
        if (n == 0)
            continue; /* mean/var stay NULL */
        x = malloc(n * channels * sizeof(float));
        b->mean[w] = malloc(channels * sizeof(float));
        b->var[w] = malloc(channels * sizeof(float));
        ck_assert(x && b->mean[w] && b->var[w]);
        double shift = 0.5 * scale * ns_test_normal(rng);
        for (size_t i = 0; i < n; i++)
            for (size_t c = 0; c < channels; c++)
                x[i * channels + c] =
                    (float)(offset + 0.1 * (double)c + shift +
                            scale * (1.0 + (double)(c % 5)) * ns_test_normal(rng));
        /* the worker's own statistics: two-pass in long double, sent as float32 */
        for (size_t c = 0; c < channels; c++)
            sum[c] = ss[c] = 0;
        for (size_t i = 0; i < n; i++)
            for (size_t c = 0; c < channels; c++)
                sum[c] += x[i * channels + c];
        for (size_t c = 0; c < channels; c++)
            sum[c] /= (long double)n;
        for (size_t i = 0; i < n; i++)
            for (size_t c = 0; c < channels; c++) {
                long double d = x[i * channels + c] - sum[c];
                ss[c] += d * d;
            }
        for (size_t c = 0; c < channels; c++) {
            b->mean[w][c] = (float)sum[c];
            b->var[w][c] = (float)(ss[c] / (long double)n);
        }
        b->arr[w].mean = b->mean[w];
        b->arr[w].var = b->var[w];
        if (keep_raw)
            b->raw[w] = x;
        else
            free(x);
        x = NULL;
    }
    free(sum);
    free(ss);
}

static void batch_free(batch_t *b)
{
    for (size_t w = 0; w < b->w_len; w++) {
        free(b->raw[w]);
        free(b->mean[w]);
        free(b->var[w]);
    }
    free(b->n);
    free(b->raw);
    free(b->mean);
    free(b->var);
    free(b->arr);
}

/* (A) doc/design.md's formula in long double on the float32 inputs of channel c.
 * Also returns the largest |mean_w| and |mean_w - mean| for the bounds. */
static void formula_ref(const batch_t *b, size_t c, long double *mean, long double *var,
                        long double *max_abs, long double *max_dev)
{
    long double n = 0, s = 0, v = 0, ma = 0, md = 0;
    for (size_t w = 0; w < b->w_len; w++)
        if (b->n[w]) {
            n += b->n[w];
            s += (long double)b->n[w] * b->mean[w][c];
            if (fabsl(b->mean[w][c]) > ma)
                ma = fabsl(b->mean[w][c]);
        }
    s /= n;
    for (size_t w = 0; w < b->w_len; w++)
        if (b->n[w]) {
            long double d = b->mean[w][c] - s;
            v += (long double)b->n[w] * (b->var[w][c] + d * d);
            if (fabsl(d) > md)
                md = fabsl(d);
        }
    *mean = s;
    *var = v / n;
    *max_abs = ma;
    *max_dev = md;
}

/* (B) two-pass moments of all raw values of channel c, long double. */
static void concat_ref(const batch_t *b, size_t c, long double *mean, long double *var)
{
    long double n = 0, s = 0, v = 0;
    for (size_t w = 0; w < b->w_len; w++)
        for (uint64_t i = 0; i < b->n[w]; i++) {
            s += b->raw[w][i * b->channels + c];
            n += 1;
        }
    s /= n;
    for (size_t w = 0; w < b->w_len; w++)
        for (uint64_t i = 0; i < b->n[w]; i++) {
            long double d = b->raw[w][i * b->channels + c] - s;
            v += d * d;
        }
    *mean = s;
    *var = v / n;
}

/* Bound (A): double sums of up to W terms (relative W * 2^-53 < 1e-13 for
 * W <= 512), plus the error of the computed mean entering each
 * (mean_w - mean)^2 as 2 |mean_w - mean| * |error of mean|. */
static void check_formula(const batch_t *b, const double *mean, const double *var)
{
    for (size_t c = 0; c < b->channels; c++) {
        long double m, v, ma, md;
        formula_ref(b, c, &m, &v, &ma, &md);
        long double tol_m = 1e-13L * ma + 1e-300L;
        long double tol_v = 1e-13L * v + 2e-13L * md * ma + 1e-300L;
        ck_assert_msg(fabsl(mean[c] - m) <= tol_m, "c=%zu mean %.17g vs %.20Lg (tol %Lg)", c,
                      mean[c], m, tol_m);
        ck_assert_msg(fabsl(var[c] - v) <= tol_v, "c=%zu var %.17g vs %.20Lg (tol %Lg)", c, var[c],
                      v, tol_v);
    }
}

/* Bound (B): each worker's mean and var were rounded to float32 (relative
 * F32_EPS): the mean moves by at most F32_EPS * max|mean_w|; the pooled var
 * by F32_EPS * var from the rounded variances, plus the moved deviations
 * 2 |dev| * 2 F32_EPS max|mean_w| + (2 F32_EPS max|mean_w|)^2. Doubled for
 * slack, plus bound (A). */
static void check_concat(const batch_t *b, const double *mean, const double *var)
{
    for (size_t c = 0; c < b->channels; c++) {
        long double m, v, rm, rv, ma, md;
        formula_ref(b, c, &rm, &rv, &ma, &md);
        concat_ref(b, c, &m, &v);
        long double e = 2 * F32_EPS * ma;
        long double tol_m = 2 * F32_EPS * ma + 1e-13L * ma;
        long double tol_v = 2 * (F32_EPS * v + 2 * md * e + e * e) + 1e-13L * v + 2e-13L * md * ma;
        ck_assert_msg(fabsl(mean[c] - m) <= tol_m, "c=%zu mean %.17g vs raw %.20Lg", c, mean[c], m);
        ck_assert_msg(fabsl(var[c] - v) <= tol_v, "c=%zu var %.17g vs raw %.20Lg (tol %Lg)", c,
                      var[c], v, tol_v);
    }
}

static uint64_t total_of(const batch_t *b)
{
    uint64_t t = 0;
    for (size_t w = 0; w < b->w_len; w++)
        t += b->n[w];
    return t;
}

START_TEST(test_kernel_in_use)
{
    const char *simd = getenv("NS_SIMD");
    fprintf(stderr, "combine kernel: %s\n", ns_core_kernel());
    if (simd != NULL && strcmp(simd, "scalar") == 0)
        ck_assert_str_eq(ns_core_kernel(), "scalar");
}
END_TEST

START_TEST(test_against_raw_data)
{
    uint64_t rng = ns_test_seed() + 41;
    for (int round = 0; round < 30; round++) {
        size_t w_len = 1 + ns_test_rand(&rng) % 8;
        size_t channels = 1 + ns_test_rand(&rng) % 21; /* tails of every length */
        uint64_t counts[8];
        for (size_t w = 0; w < w_len; w++)
            counts[w] = ns_test_rand(&rng) % 4 == 0 ? 0 : 1 + ns_test_rand(&rng) % 60;
        counts[ns_test_rand(&rng) % w_len] = 1 + ns_test_rand(&rng) % 60; /* N > 0 */
        batch_t b;
        batch_make(&b, &rng, w_len, channels, counts, 3.0 * ns_test_normal(&rng), 1.0, 1);
        double mean[21], var[21];
        uint64_t n = 0;
        ck_assert_int_eq(ns_combine(b.arr, w_len, channels, &n, mean, var, 1), 0);
        ck_assert_uint_eq(n, total_of(&b));
        check_formula(&b, mean, var);
        check_concat(&b, mean, var);
        batch_free(&b);
    }
}
END_TEST

START_TEST(test_known_answer)
{
    /* worker 0: n 2, mean 1, var 0; worker 1: n 6, mean 3, var 2 (one channel)
     * N = 8, mean = (2 + 18) / 8 = 2.5,
     * var = (2 (0 + 2.25) + 6 (2 + 0.25)) / 8 = (4.5 + 13.5) / 8 = 2.25 */
    const float m0[] = {1.0f}, v0[] = {0.0f}, m1[] = {3.0f}, v1[] = {2.0f};
    ns_arrival_t arr[] = {{.n = 2, .mean = m0, .var = v0},
                          {.n = 0, .mean = NULL, .var = NULL},
                          {.n = 6, .mean = m1, .var = v1}};
    double mean, var;
    uint64_t n;
    ck_assert_int_eq(ns_combine(arr, 3, 1, &n, &mean, &var, 1), 0);
    ck_assert_uint_eq(n, 8);
    ck_assert(mean == 2.5);
    ck_assert(var == 2.25);
}
END_TEST

START_TEST(test_empty_arrivals_ignored)
{
    /* empty workers (NULL pointers) between live ones give the bits of the
     * live ones alone, in the same order, for any thread count */
    uint64_t rng = ns_test_seed() + 42;
    const size_t channels = 300;
    const uint64_t counts[] = {17, 0, 5, 0, 0, 40, 0};
    batch_t b;
    batch_make(&b, &rng, 7, channels, counts, 1.0, 2.0, 0);
    const ns_arrival_t compact[3] = {b.arr[0], b.arr[2], b.arr[5]};
    double m1[300], v1[300], m2[300], v2[300];
    for (int threads = 1; threads <= 3; threads++) {
        uint64_t n1 = 0, n2 = 0;
        ck_assert_int_eq(ns_combine(b.arr, 7, channels, &n1, m1, v1, threads), 0);
        ck_assert_int_eq(ns_combine(compact, 3, channels, &n2, m2, v2, threads), 0);
        ck_assert_uint_eq(n1, 62);
        ck_assert_uint_eq(n2, 62);
        ck_assert(memcmp(m1, m2, sizeof(m1)) == 0);
        ck_assert(memcmp(v1, v2, sizeof(v1)) == 0);
        check_formula(&b, m1, v1);
    }
    batch_free(&b);
}
END_TEST

START_TEST(test_all_empty)
{
    ns_arrival_t arr[3] = {{.n = 0, .mean = NULL, .var = NULL},
                           {.n = 0, .mean = NULL, .var = NULL},
                           {.n = 0, .mean = NULL, .var = NULL}};
    double mean[5], var[5];
    for (size_t c = 0; c < 5; c++)
        mean[c] = var[c] = NAN;
    uint64_t n = 99;
    ck_assert_int_eq(ns_combine(arr, 3, 5, &n, mean, var, 2), 0);
    ck_assert_uint_eq(n, 0);
    for (size_t c = 0; c < 5; c++)
        ck_assert(mean[c] == 0.0 && var[c] == 0.0);
    /* no arrivals at all */
    n = 99;
    mean[0] = var[0] = NAN;
    ck_assert_int_eq(ns_combine(NULL, 0, 1, &n, mean, var, 1), 0);
    ck_assert_uint_eq(n, 0);
    ck_assert(mean[0] == 0.0 && var[0] == 0.0);
}
END_TEST

/* Many workers x ResNet-50's channel count: every thread count gives the same
 * bits, repeated calls too, and the values are right. */
static void check_threads_bitwise(size_t w_len, size_t channels, uint64_t seed_offset)
{
    uint64_t rng = ns_test_seed() + seed_offset;
    uint64_t *counts = malloc(w_len * sizeof(*counts));
    ck_assert(counts != NULL);
    for (size_t w = 0; w < w_len; w++)
        counts[w] = ns_test_rand(&rng) % 9 == 0 ? 0 : 1 + ns_test_rand(&rng) % 8;
    counts[0] = 3;
    batch_t b;
    batch_make(&b, &rng, w_len, channels, counts, 0.5, 1.0, 0);
    double *m0 = malloc(channels * sizeof(double)), *v0 = malloc(channels * sizeof(double));
    double *m = malloc(channels * sizeof(double)), *v = malloc(channels * sizeof(double));
    ck_assert(m0 && v0 && m && v);
    uint64_t n0 = 0, n = 0;
    ck_assert_int_eq(ns_combine(b.arr, w_len, channels, &n0, m0, v0, 1), 0);
    ck_assert_uint_eq(n0, total_of(&b));
    check_formula(&b, m0, v0);
    for (int threads = 1; threads <= 4; threads++)
        for (int rep = 0; rep < 2; rep++) {
            memset(m, 0xff, channels * sizeof(double));
            ck_assert_int_eq(ns_combine(b.arr, w_len, channels, &n, m, v, threads), 0);
            ck_assert_uint_eq(n, n0);
            ck_assert_msg(memcmp(m, m0, channels * sizeof(double)) == 0, "mean, threads %d",
                          threads);
            ck_assert_msg(memcmp(v, v0, channels * sizeof(double)) == 0, "var, threads %d",
                          threads);
        }
    free(m0);
    free(v0);
    free(m);
    free(v);
    free(counts);
    batch_free(&b);
}

START_TEST(test_threads_bitwise_resnet50)
{
    check_threads_bitwise(64, 26560, 43);
}
END_TEST

START_TEST(test_threads_bitwise_many_workers)
{
    /* more workers than one kernel call takes: groups merged in rank order */
    check_threads_bitwise(700, 1000, 44);
}
END_TEST

START_TEST(test_huge_offset)
{
    /* mean ~1e4, std 1e-2: sum of squares minus square of sums would lose
     * about 1e8 * 2^-53 * W ~ 1e-7 absolute, far more than the bound (A)
     * here (~1e-11 on a variance of ~1e-4). */
    uint64_t rng = ns_test_seed() + 45;
    const uint64_t counts[] = {100, 37, 0, 250, 1, 64, 90, 8};
    batch_t b;
    batch_make(&b, &rng, 8, 16, counts, 1e4, 1e-2, 1);
    double mean[16], var[16];
    uint64_t n = 0;
    ck_assert_int_eq(ns_combine(b.arr, 8, 16, &n, mean, var, 1), 0);
    check_formula(&b, mean, var);
    check_concat(&b, mean, var);
    for (size_t c = 0; c < 16; c++) {
        long double m, v, ma, md;
        formula_ref(&b, c, &m, &v, &ma, &md);
        ck_assert_msg(fabsl(var[c] - v) <= 1e-9L * v, "relative var error %Lg",
                      fabsl(var[c] - v) / v);
    }
    batch_free(&b);
}
END_TEST

START_TEST(test_invalid)
{
    const float m[] = {1.0f}, v[] = {1.0f};
    double mean, var;
    uint64_t n;
    ns_arrival_t big[] = {{.n = UINT64_MAX / 2 + 1, .mean = m, .var = v},
                          {.n = UINT64_MAX / 2 + 1, .mean = m, .var = v}};
    ck_assert_int_eq(ns_combine(big, 2, 1, &n, &mean, &var, 1), NS_EINVAL);
    ns_arrival_t fits[] = {{.n = UINT64_MAX / 2, .mean = m, .var = v},
                           {.n = UINT64_MAX / 2 + 1, .mean = m, .var = v}};
    ck_assert_int_eq(ns_combine(fits, 2, 1, &n, &mean, &var, 1), 0);
    ck_assert_uint_eq(n, UINT64_MAX);

    ns_arrival_t ok[] = {{.n = 4, .mean = m, .var = v}};
    ck_assert_int_eq(ns_combine(NULL, 1, 1, &n, &mean, &var, 1), NS_EINVAL);
    ck_assert_int_eq(ns_combine(ok, 1, 0, &n, &mean, &var, 1), NS_EINVAL);
    ck_assert_int_eq(ns_combine(ok, 1, 1, NULL, &mean, &var, 1), NS_EINVAL);
    ck_assert_int_eq(ns_combine(ok, 1, 1, &n, NULL, &var, 1), NS_EINVAL);
    ck_assert_int_eq(ns_combine(ok, 1, 1, &n, &mean, NULL, 1), NS_EINVAL);
    ns_arrival_t holes[] = {{.n = 4, .mean = NULL, .var = v}};
    ck_assert_int_eq(ns_combine(holes, 1, 1, &n, &mean, &var, 1), NS_EINVAL);
    holes[0].mean = m;
    holes[0].var = NULL;
    ck_assert_int_eq(ns_combine(holes, 1, 1, &n, &mean, &var, 1), NS_EINVAL);
}
END_TEST

START_TEST(test_var_unbias)
{
    uint64_t rng = ns_test_seed() + 46;
    double src[33], dst[33];
    for (size_t c = 0; c < 33; c++)
        src[c] = 5.0 * ns_test_uniform(&rng);
    const uint64_t ns[] = {2, 3, 7, 1000, 200704};
    for (size_t i = 0; i < sizeof(ns) / sizeof(ns[0]); i++) {
        ck_assert_int_eq(ns_var_unbias(dst, src, 33, ns[i]), 0);
        for (size_t c = 0; c < 33; c++) {
            long double want = (long double)src[c] * ns[i] / (ns[i] - 1);
            ck_assert(fabsl(dst[c] - want) <= 4.5e-16L * want); /* two roundings */
        }
    }
    /* in place */
    memcpy(dst, src, sizeof(dst));
    ck_assert_int_eq(ns_var_unbias(dst, dst, 33, 2), 0);
    for (size_t c = 0; c < 33; c++)
        ck_assert(fabsl(dst[c] - 2.0L * src[c]) <= 4.5e-16L * 2 * src[c]);
    ck_assert_int_eq(ns_var_unbias(dst, src, 33, 1), NS_EINVAL);
    ck_assert_int_eq(ns_var_unbias(dst, src, 33, 0), NS_EINVAL);
}
END_TEST

START_TEST(test_var_bias_f32)
{
    uint64_t rng = ns_test_seed() + 47;
    float v[40], orig[40];
    for (size_t c = 0; c < 40; c++)
        orig[c] = v[c] = (float)(3.0 * ns_test_uniform(&rng));
    ck_assert_int_eq(ns_var_bias_f32(v, 40, 10), 0);
    for (size_t c = 0; c < 40; c++) {
        /* 0.9 x rounded once to float32: computing in double leaves an
         * error of ~1e-16, which changes that rounding only for values within
         * 1e-16 of a float32 midpoint (probability ~2^-29 per value). A
         * float32 computation (x * 0.9f) misses by up to a float ulp. */
        float want = (float)((long double)orig[c] * 9 / 10);
        ck_assert_msg(v[c] == want, "%.9g vs %.9g", v[c], want);
    }
    /* an unbiased variance of n values made biased then unbiased again */
    for (size_t c = 0; c < 40; c++)
        v[c] = orig[c];
    ck_assert_int_eq(ns_var_bias_f32(v, 40, 200704), 0);
    for (size_t c = 0; c < 40; c++)
        ck_assert(fabsl(v[c] * 200704.0L / 200703 - orig[c]) <= 1.2e-7L * orig[c]);
    for (uint64_t n = 0; n <= 1; n++) {
        for (size_t c = 0; c < 40; c++)
            v[c] = orig[c];
        ck_assert_int_eq(ns_var_bias_f32(v, 40, n), 0);
        for (size_t c = 0; c < 40; c++)
            ck_assert(v[c] == 0.0f);
    }
    ck_assert_int_eq(ns_var_bias_f32(NULL, 3, 10), NS_EINVAL);
    ck_assert_int_eq(ns_var_bias_f32(NULL, 0, 10), 0);
}
END_TEST

/* One non-empty arrival (empty ones around it) is the global batch: its
 * values widened, bit for bit, even at counts where n * mean / n is not
 * mean in double (checked here: the formula would have changed some). */
START_TEST(test_single_arrival_exact)
{
    enum { C = 1000 };
    static float m[C], v[C];
    static double mean[C], var[C];
    uint64_t r = ns_test_seed();
    for (size_t c = 0; c < C; c++) {
        m[c] = (float)(ns_test_normal(&r) * 3.0);
        v[c] = (float)(ns_test_uniform(&r) * 2.0);
    }
    const uint64_t n = ((uint64_t)1 << 32) - 1;
    ns_arrival_t a[3] = {{.n = 0, .mean = NULL, .var = NULL},
                         {.n = n, .mean = m, .var = v},
                         {.n = 0, .mean = NULL, .var = NULL}};
    uint64_t total = 0;
    ck_assert_int_eq(ns_combine(a, 3, C, &total, mean, var, 1), 0);
    ck_assert_uint_eq(total, n);
    size_t formula_differs = 0;
    for (size_t c = 0; c < C; c++) {
        ck_assert(mean[c] == (double)m[c] && var[c] == (double)v[c]);
        volatile double p = (double)n * (double)m[c];
        formula_differs += p / (double)n != (double)m[c];
    }
    ck_assert_uint_gt(formula_differs, 0);
}
END_TEST

/* Arrivals sent in double (a relay's nodes): float-exact doubles give the bits of
 * the same float arrivals; genuine doubles (and doubles mixed with floats)
 * match a long double evaluation of the formula to double rounding. */
START_TEST(test_wide_arrivals)
{
    uint64_t rng = ns_test_seed() + 77;
    enum { W = 6, C = 17 };
    for (int round = 0; round < 40; round++) {
        float fm[W][C], fv[W][C];
        double dm[W][C], dv[W][C];
        ns_arrival_t narrow[W], wide[W], mixed[W];
        double shift = 100.0 * ns_test_normal(&rng);
        for (size_t w = 0; w < W; w++) {
            uint64_t n = ns_test_rand(&rng) % 5 == 0 ? 0 : 1 + ns_test_rand(&rng) % 5000;
            for (size_t c = 0; c < C; c++) {
                dm[w][c] = shift + ns_test_normal(&rng);
                dv[w][c] = 0.1 + ns_test_uniform(&rng);
                fm[w][c] = (float)dm[w][c];
                fv[w][c] = (float)dv[w][c];
            }
            narrow[w] = (ns_arrival_t){.n = n, .mean = fm[w], .var = fv[w]};
            wide[w] = (ns_arrival_t){
                .n = n, .mean = fm[w], .var = fv[w], .mean64 = dm[w], .var64 = dv[w]};
            mixed[w] = w % 2 ? wide[w] : narrow[w];
        }
        narrow[round % W].n = wide[round % W].n = mixed[round % W].n = 7; /* N > 0 */
        double m0[C], v0[C], m1[C], v1[C];
        uint64_t n0, n1;
        /* float-exact doubles: the same bits as the float arrivals */
        double em[W][C], ev[W][C];
        ns_arrival_t exact[W];
        for (size_t w = 0; w < W; w++) {
            for (size_t c = 0; c < C; c++) {
                em[w][c] = fm[w][c];
                ev[w][c] = fv[w][c];
            }
            exact[w] = (ns_arrival_t){.n = narrow[w].n, .mean64 = em[w], .var64 = ev[w]};
        }
        ck_assert_int_eq(ns_combine(narrow, W, C, &n0, m0, v0, 1), 0);
        ck_assert_int_eq(ns_combine(exact, W, C, &n1, m1, v1, 1), 0);
        ck_assert_uint_eq(n0, n1);
        ck_assert_mem_eq(m0, m1, sizeof(m0));
        ck_assert_mem_eq(v0, v1, sizeof(v0));
        /* genuine doubles, alone and mixed with floats: the formula in long double */
        const ns_arrival_t *sets[2] = {wide, mixed};
        for (int k = 0; k < 2; k++) {
            ck_assert_int_eq(ns_combine(sets[k], W, C, &n1, m1, v1, 2), 0);
            for (size_t c = 0; c < C; c++) {
                long double tot = 0, s = 0, q = 0;
                for (size_t w = 0; w < W; w++) {
                    const ns_arrival_t *a = &sets[k][w];
                    long double x = a->mean64 ? (long double)a->mean64[c] : a->mean[c];
                    tot += (long double)a->n;
                    s += (long double)a->n * x;
                }
                long double mu = s / tot;
                for (size_t w = 0; w < W; w++) {
                    const ns_arrival_t *a = &sets[k][w];
                    long double x = a->mean64 ? (long double)a->mean64[c] : a->mean[c];
                    long double y = a->mean64 ? (long double)a->var64[c] : a->var[c];
                    q += (long double)a->n * (y + (x - mu) * (x - mu));
                }
                long double var = q / tot;
                double scale = fabs((double)mu) + sqrt((double)var);
                ck_assert_msg(fabs(m1[c] - (double)mu) <= 1e-14 * scale, "mean %zu", c);
                ck_assert_msg(fabs(v1[c] - (double)var) <=
                                  1e-14 * (double)var + 1e-14 * scale * sqrt((double)var),
                              "var %zu", c);
            }
        }
    }
    /* mean64 without var64 is refused */
    const double one = 1.0;
    ns_arrival_t half[] = {{.n = 2, .mean64 = &one}};
    double m, v;
    uint64_t n;
    ck_assert_int_eq(ns_combine(half, 1, 1, &n, &m, &v, 1), NS_EINVAL);
}
END_TEST

static Suite *combine_suite(void)
{
    Suite *s = suite_create("combine");
    TCase *tc = tcase_create("combine");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_kernel_in_use);
    tcase_add_test(tc, test_against_raw_data);
    tcase_add_test(tc, test_known_answer);
    tcase_add_test(tc, test_empty_arrivals_ignored);
    tcase_add_test(tc, test_all_empty);
    tcase_add_test(tc, test_single_arrival_exact);
    tcase_add_test(tc, test_threads_bitwise_resnet50);
    tcase_add_test(tc, test_threads_bitwise_many_workers);
    tcase_add_test(tc, test_huge_offset);
    tcase_add_test(tc, test_invalid);
    tcase_add_test(tc, test_wide_arrivals);
    suite_add_tcase(s, tc);
    TCase *tv = tcase_create("variance");
    tcase_add_test(tv, test_var_unbias);
    tcase_add_test(tv, test_var_bias_f32);
    suite_add_tcase(s, tv);
    return s;
}

NS_TEST_MAIN(combine_suite)
