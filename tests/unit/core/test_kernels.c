/* test_kernels.c - every kernel table this CPU supports, against long double references and scalar.
 *
 * Tolerances (documented here, cited by core/src/kernels.h):
 *  - block_moments: |mean - ref| <= 1e-13 |ref| + 1e-13 spread and
 *    |m2 - ref| <= 1e-12 ref + 1e-12 n (1e-6 spread)^2, where spread =
 *    max |x - ref mean| of the block. Double sums of up to a few thousand
 *    values lose at most ~n * 2^-53 relative; the absolute terms cover means
 *    near zero and blocks whose values are all (nearly) equal.
 *    The vector table must also agree with the scalar one to twice that.
 *  - rows_moments: the same bounds per channel. A channel's result must not
 *    depend on its position (vector lane or scalar tail), bitwise: the NHWC
 *    driver's determinism across thread counts rests on it.
 *  - combine performs per channel exactly the scalar operations in the same
 *    order, so the vector tables must equal scalar bitwise; against long
 *    double see combine_random.
 *  - find_outside (and the finiteness and variance checks made of it) is exact: the first
 *    bad index (find_outside against the server's double comparisons).
 * Shapes are random from the printed seed (NS_TEST_SEED replays a run). */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "kernels.h"

/* ---------------------------------------------------------------- helpers */

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

/* Random data: normal(mu, sigma) rounded to float. */
static void fill_normal(float *x, size_t n, double mu, double sigma, uint64_t *rng)
{
    for (size_t i = 0; i < n; i++)
        x[i] = (float)(mu + sigma * ns_test_normal(rng));
}

/* Picks a (mean, std) pair covering ordinary data, offsets and huge magnitudes. */
static void pick_distribution(uint64_t *rng, double *mu, double *sigma)
{
    switch (ns_test_rand(rng) % 6) {
    case 0:
        *mu = 0.0;
        *sigma = 1.0;
        break;
    case 1:
        *mu = 1e6;
        *sigma = 1e-3;
        break; /* offset >> spread */
    case 2:
        *mu = 1e4;
        *sigma = 1e-2;
        break;
    case 3:
        *mu = -3.0;
        *sigma = 1e3;
        break;
    case 4:
        *mu = 1e30;
        *sigma = 1e29;
        break; /* huge magnitudes, still finite sums */
    default:
        *mu = 5.0;
        *sigma = 0.0;
        break; /* all equal: m2 must be 0 */
    }
}

typedef struct ref_s {
    long double mean, m2, spread, n;
} ref_t;

/* Two-pass moments in long double of the values at idx(0..count-1). */
static ref_t ref_strided(const float *src, size_t seg_len, size_t nseg, size_t stride)
{
    ref_t r = {0, 0, 0, 0};
    long double s = 0;
    for (size_t i = 0; i < nseg; i++)
        for (size_t j = 0; j < seg_len; j++)
            s += src[i * stride + j];
    r.n = (long double)seg_len * nseg;
    r.mean = s / r.n;
    for (size_t i = 0; i < nseg; i++)
        for (size_t j = 0; j < seg_len; j++) {
            long double d = src[i * stride + j] - r.mean;
            r.m2 += d * d;
            if (fabsl(d) > r.spread)
                r.spread = fabsl(d);
        }
    return r;
}

static int within_bounds(double mean, double m2, ref_t r, double scale)
{
    long double tm = scale * (1e-13L * fabsl(r.mean) + 1e-13L * r.spread);
    long double tq =
        scale * (1e-12L * r.m2 + 1e-12L * r.n * (1e-6L * r.spread) * (1e-6L * r.spread));
    return fabsl(mean - r.mean) <= tm && fabsl(m2 - r.m2) <= tq;
}

/* ---------------------------------------------------------------- block_moments */

static void check_block(const float *x, size_t seg_len, size_t nseg, size_t stride,
                        const char *what)
{
    ref_t r = ref_strided(x, seg_len, nseg, stride);
    double sm = 0, sq = 0;
    for (int t = 0; t < ntables; t++) {
        double mean = NAN, m2 = NAN;
        tables[t]->block_moments(x, seg_len, nseg, stride, &mean, &m2);
        ck_assert_msg(within_bounds(mean, m2, r, 1.0),
                      "%s %s seg_len=%zu nseg=%zu stride=%zu: mean %.17g (ref %.17Lg) m2 %.17g "
                      "(ref %.17Lg)",
                      tables[t]->name, what, seg_len, nseg, stride, mean, r.mean, m2, r.m2);
        ck_assert_msg(m2 >= 0.0, "%s: negative m2", tables[t]->name);
        if (t == 0) {
            sm = mean;
            sq = m2;
        } else {
            ref_t rs = r; /* vector against scalar: twice the bound */
            rs.mean = sm;
            rs.m2 = sq;
            ck_assert_msg(within_bounds(mean, m2, rs, 2.0),
                          "%s vs scalar %s: %.17g/%.17g vs %.17g/%.17g", tables[t]->name, what,
                          mean, m2, sm, sq);
        }
        if (r.spread == 0)
            ck_assert_msg(m2 == 0.0 && mean == (double)r.mean, "%s: constant block",
                          tables[t]->name);
    }
}

START_TEST(block_known_answer)
{
    /* [1, 2, 3, 4]: mean 2.5, m2 = 1.5^2 + 0.5^2 + 0.5^2 + 1.5^2 = 5 (by hand). */
    const float x[] = {1, 2, 3, 4};
    /* The same four values as two segments of 2 with a gap of 3 floats. */
    const float y[] = {1, 2, -99, -99, -99, 3, 4};
    for (int t = 0; t < ntables; t++) {
        double mean, m2;
        tables[t]->block_moments(x, 4, 1, 4, &mean, &m2);
        ck_assert_double_eq(mean, 2.5);
        ck_assert_double_eq(m2, 5.0);
        tables[t]->block_moments(y, 2, 2, 5, &mean, &m2);
        ck_assert_double_eq(mean, 2.5);
        ck_assert_double_eq(m2, 5.0);
        tables[t]->block_moments(x + 2, 1, 1, 1, &mean, &m2); /* n = 1 */
        ck_assert_double_eq(mean, 3.0);
        ck_assert_double_eq(m2, 0.0);
    }
}
END_TEST

START_TEST(block_random_shapes)
{
    uint64_t rng = ns_test_seed() ^ 0xb10c;
    float *buf = malloc(sizeof(float) * 40000);
    ck_assert_ptr_nonnull(buf);
    for (int iter = 0; iter < 3000; iter++) {
        size_t seg_len, nseg, stride;
        switch (iter % 4) {
        case 0:
            seg_len = 1 + ns_test_rand(&rng) % 7;
            break; /* shorter than a vector */
        case 1:
            seg_len = 1 + ns_test_rand(&rng) % 100;
            break; /* tails */
        case 2:
            seg_len = 4096 + ns_test_rand(&rng) % 64;
            break; /* a full block + tail */
        default:
            seg_len = 1 + ns_test_rand(&rng) % 600;
            break;
        }
        nseg = seg_len > 1000 ? 1 + ns_test_rand(&rng) % 3 : 1 + ns_test_rand(&rng) % 9;
        stride = ns_test_rand(&rng) % 3 == 0 ? seg_len : seg_len + ns_test_rand(&rng) % 13;
        size_t span = (nseg - 1) * stride + seg_len;
        ck_assert_uint_le(span, 40000);
        double mu, sigma;
        pick_distribution(&rng, &mu, &sigma);
        fill_normal(buf, span, mu, sigma, &rng);
        check_block(buf, seg_len, nseg, stride, "random");
    }
    free(buf);
}
END_TEST

START_TEST(block_outlier_first)
{
    /* The first value seeds the vector kernel's estimate; make it extreme. */
    uint64_t rng = ns_test_seed() ^ 0x0017;
    float x[333];
    const float firsts[] = {1e30f, -1e30f, 3e38f, -3e38f, 1e-30f, 0.0f};
    for (size_t k = 0; k < sizeof(firsts) / sizeof(firsts[0]); k++) {
        fill_normal(x, 333, 0.0, 1.0, &rng);
        x[0] = firsts[k];
        check_block(x, 333, 1, 333, "outlier");
        /* Values near FLT_MAX of both signs: float sums overflow. */
        for (size_t i = 0; i < 333; i++)
            x[i] = (i % 2 ? 1.0f : -1.0f) * (FLT_MAX - (float)i * 1e30f);
        x[0] = firsts[k];
        check_block(x, 333, 1, 333, "near FLT_MAX");
    }
}
END_TEST

/* ---------------------------------------------------------------- rows_moments */

START_TEST(rows_random_shapes)
{
    uint64_t rng = ns_test_seed() ^ 0x50a5;
    float *buf = malloc(sizeof(float) * 80 * 60);
    double m[50], q[50], sm[50], sq[50];
    ck_assert_ptr_nonnull(buf);
    for (int iter = 0; iter < 2000; iter++) {
        size_t rows = 1 + ns_test_rand(&rng) % 70;
        size_t width = 1 + ns_test_rand(&rng) % (iter % 2 ? 7 : 50);
        size_t stride = width + (ns_test_rand(&rng) % 2 ? 0 : ns_test_rand(&rng) % 9);
        double mu, sigma;
        pick_distribution(&rng, &mu, &sigma);
        fill_normal(buf, rows * stride, mu, sigma, &rng);
        for (int t = 0; t < ntables; t++) {
            tables[t]->rows_moments(buf, rows, width, stride, m, q);
            for (size_t c = 0; c < width; c++) {
                ref_t r = ref_strided(buf + c, 1, rows, stride);
                ck_assert_msg(
                    within_bounds(m[c], q[c], r, 1.0),
                    "%s rows=%zu width=%zu stride=%zu c=%zu: %.17g %.17g vs %.17Lg %.17Lg",
                    tables[t]->name, rows, width, stride, c, m[c], q[c], r.mean, r.m2);
            }
            if (t == 0) {
                memcpy(sm, m, sizeof(double) * width);
                memcpy(sq, q, sizeof(double) * width);
            } else {
                for (size_t c = 0; c < width; c++) {
                    ref_t rs = ref_strided(buf + c, 1, rows, stride); /* spread of the channel */
                    rs.mean = sm[c];
                    rs.m2 = sq[c];
                    ck_assert_msg(within_bounds(m[c], q[c], rs, 2.0),
                                  "%s rows vs scalar c=%zu: %.17g %.17g vs %.17g %.17g",
                                  tables[t]->name, c, m[c], q[c], sm[c], sq[c]);
                }
            }
            /* The same channels computed from another start (shifting which
             * of them are vector lanes and which the scalar tail) must come
             * out bitwise the same. */
            size_t skip = 1 + ns_test_rand(&rng) % 5;
            if (skip < width) {
                double m1[50], q1[50];
                tables[t]->rows_moments(buf + skip, rows, width - skip, stride, m1, q1);
                ck_assert_msg(
                    memcmp(m1, m + skip, sizeof(double) * (width - skip)) == 0 &&
                        memcmp(q1, q + skip, sizeof(double) * (width - skip)) == 0,
                    "%s rows_moments depends on the channel's position (width=%zu skip=%zu)",
                    tables[t]->name, width, skip);
            }
        }
    }
    free(buf);
}
END_TEST

START_TEST(rows_known_answer)
{
    /* 3 rows x 2 channels, row stride 3: channel 0 = [1, 3, 5] -> mean 3,
     * m2 = 4 + 0 + 4 = 8; channel 1 = [2, 2, 2] -> mean 2, m2 0. The third
     * column is padding and must be ignored. */
    const float x[] = {1, 2, 100, 3, 2, -100, 5, 2, 7};
    for (int t = 0; t < ntables; t++) {
        double m[2], q[2];
        tables[t]->rows_moments(x, 3, 2, 3, m, q);
        ck_assert_double_eq(m[0], 3.0);
        ck_assert_double_eq(q[0], 8.0);
        ck_assert_double_eq(m[1], 2.0);
        ck_assert_double_eq(q[1], 0.0);
    }
}
END_TEST

/* ---------------------------------------------------------------- combine */

START_TEST(combine_random)
{
    uint64_t rng = ns_test_seed() ^ 0xc0b1;
    enum { MAXW = 9, MAXC = 2100 };
    float *mv = malloc(sizeof(float) * MAXW * MAXC), *vv = malloc(sizeof(float) * MAXW * MAXC);
    double *m = malloc(sizeof(double) * MAXC), *v = malloc(sizeof(double) * MAXC);
    double *sm = malloc(sizeof(double) * MAXC), *sv = malloc(sizeof(double) * MAXC);
    ck_assert(mv && vv && m && v && sm && sv);
    for (int iter = 0; iter < 60; iter++) {
        size_t w = 1 + ns_test_rand(&rng) % MAXW;
        size_t channels =
            iter % 3 == 0 ? 1 + ns_test_rand(&rng) % 9 : 1 + ns_test_rand(&rng) % MAXC;
        ns_arrival_t arr[MAXW];
        double total = 0;
        double mu, sigma;
        pick_distribution(&rng, &mu, &sigma);
        if (mu == 1e30)
            mu = 1e15, sigma = 1e14; /* keep var = sigma^2 within float */
        for (size_t k = 0; k < w; k++) {
            arr[k].n = 1 + ns_test_rand(&rng) % 1000000;
            arr[k].mean = mv + k * MAXC;
            arr[k].var = vv + k * MAXC;
            fill_normal(mv + k * MAXC, channels, mu, sigma, &rng);
            for (size_t c = 0; c < channels; c++)
                vv[k * MAXC + c] = (float)(sigma * sigma * ns_test_uniform(&rng));
            total += (double)arr[k].n;
        }
        for (int t = 0; t < ntables; t++) {
            tables[t]->combine(arr, w, channels, total, m, v);
            for (size_t c = 0; c < channels; c++) {
                /* long double reference of the formula in kernels.h */
                long double s = 0, q = 0, tot = 0, spread = 0;
                for (size_t k = 0; k < w; k++) {
                    s += (long double)arr[k].n * arr[k].mean[c];
                    tot += arr[k].n;
                }
                long double rm = s / tot;
                for (size_t k = 0; k < w; k++) {
                    long double d = arr[k].mean[c] - rm;
                    q += (long double)arr[k].n * (arr[k].var[c] + d * d);
                    if (fabsl(d) > spread)
                        spread = fabsl(d);
                }
                long double rv = q / tot;
                ck_assert_msg(fabsl(m[c] - rm) <= 1e-13L * (fabsl(rm) + spread) &&
                                  fabsl(v[c] - rv) <= 1e-12L * rv + 1e-24L * spread * spread,
                              "%s combine w=%zu c=%zu: %.17g %.17g vs %.17Lg %.17Lg",
                              tables[t]->name, w, c, m[c], v[c], rm, rv);
            }
            if (t == 0) {
                memcpy(sm, m, sizeof(double) * channels);
                memcpy(sv, v, sizeof(double) * channels);
            } else {
                ck_assert_msg(memcmp(sm, m, sizeof(double) * channels) == 0 &&
                                  memcmp(sv, v, sizeof(double) * channels) == 0,
                              "%s combine differs from scalar bitwise", tables[t]->name);
            }
        }
    }
    free(mv);
    free(vv);
    free(m);
    free(v);
    free(sm);
    free(sv);
}
END_TEST

START_TEST(combine_known_answer)
{
    /* Two workers, one channel. Worker 0: n = 2, values {0, 2} -> mean 1,
     * var 1. Worker 1: n = 2, values {4, 6} -> mean 5, var 1. The global
     * batch {0, 2, 4, 6} has mean 3 and biased var (9 + 1 + 1 + 9) / 4 = 5. */
    const float m0 = 1, v0 = 1, m1 = 5, v1 = 1;
    ns_arrival_t arr[2] = {{.n = 2, .mean = &m0, .var = &v0}, {.n = 2, .mean = &m1, .var = &v1}};
    for (int t = 0; t < ntables; t++) {
        double mean, var;
        tables[t]->combine(arr, 2, 1, 4.0, &mean, &var);
        ck_assert_double_eq(mean, 3.0);
        ck_assert_double_eq(var, 5.0);
    }
}
END_TEST

/* ---------------------------------------------------------------- validation */

/* The library's finiteness and variance checks are range checks of the
 * find_outside kernel (validate.c); here through each kernel table. */
static size_t kernel_nonfinite(const ns_kernels_t *k, const float *x, size_t n)
{
    return k->find_outside(x, n, -FLT_MAX, FLT_MAX);
}

static size_t kernel_bad_variance(const ns_kernels_t *k, const float *x, size_t n)
{
    return k->find_outside(x, n, 0.0f, FLT_MAX);
}

static size_t plain_nonfinite(const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (isnan(x[i]) || isinf(x[i]))
            return i;
    return n;
}

static size_t plain_bad_variance(const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (isnan(x[i]) || isinf(x[i]) || (x[i] < 0.0f))
            return i;
    return n;
}

START_TEST(validate_every_position)
{
    const float bad_any[] = {NAN, -NAN, INFINITY, -INFINITY};
    const float bad_var[] = {NAN, INFINITY, -INFINITY, -1.0f, -FLT_MIN, -1e-45f, -FLT_MAX};
    float x[80];
    for (int t = 0; t < ntables; t++) {
        for (size_t len = 1; len <= 80; len++) {
            for (size_t i = 0; i < len; i++)
                x[i] = (float)(i % 7) + 0.5f;
            ck_assert_uint_eq(kernel_nonfinite(tables[t], x, len), len);
            ck_assert_uint_eq(kernel_bad_variance(tables[t], x, len), len);
            for (size_t pos = 0; pos < len; pos++) {
                for (size_t k = 0; k < sizeof(bad_any) / sizeof(bad_any[0]); k++) {
                    x[pos] = bad_any[k];
                    ck_assert_uint_eq(kernel_nonfinite(tables[t], x, len), pos);
                    ck_assert_uint_eq(kernel_bad_variance(tables[t], x, len), pos);
                    if (pos + 3 < len) { /* a second hit later must not matter */
                        x[pos + 3] = NAN;
                        ck_assert_uint_eq(kernel_nonfinite(tables[t], x, len), pos);
                        x[pos + 3] = 1.0f;
                    }
                }
                for (size_t k = 0; k < sizeof(bad_var) / sizeof(bad_var[0]); k++) {
                    x[pos] = bad_var[k];
                    ck_assert_uint_eq(kernel_bad_variance(tables[t], x, len), pos);
                    ck_assert_uint_eq(kernel_nonfinite(tables[t], x, len), plain_nonfinite(x, len));
                }
                /* accepted variances: -0.0, 0, the smallest subnormal, FLT_MAX */
                const float good[] = {-0.0f, 0.0f, 1e-45f, FLT_MAX};
                for (size_t k = 0; k < 4; k++) {
                    x[pos] = good[k];
                    ck_assert_uint_eq(kernel_bad_variance(tables[t], x, len), len);
                    ck_assert_uint_eq(kernel_nonfinite(tables[t], x, len), len);
                }
                x[pos] = -2.0f; /* finite, so only a bad variance */
                ck_assert_uint_eq(kernel_nonfinite(tables[t], x, len), len);
                x[pos] = (float)(pos % 7) + 0.5f;
            }
        }
    }
}
END_TEST

START_TEST(validate_long_random)
{
    uint64_t rng = ns_test_seed() ^ 0x7a11d;
    const size_t n = 100003;
    float *x = malloc(sizeof(float) * n);
    ck_assert_ptr_nonnull(x);
    for (int iter = 0; iter < 200; iter++) {
        for (size_t i = 0; i < n; i++)
            x[i] = (float)ns_test_uniform(&rng) * 100.0f;
        int hits = (int)(ns_test_rand(&rng) % 3);
        for (int h = 0; h < hits; h++) {
            const float bad[] = {NAN, INFINITY, -INFINITY, -3.0f};
            x[ns_test_rand(&rng) % n] = bad[ns_test_rand(&rng) % 4];
        }
        size_t len = n - ns_test_rand(&rng) % 40;
        for (int t = 0; t < ntables; t++) {
            ck_assert_uint_eq(kernel_nonfinite(tables[t], x, len), plain_nonfinite(x, len));
            ck_assert_uint_eq(kernel_bad_variance(tables[t], x, len), plain_bad_variance(x, len));
        }
    }
    free(x);
}
END_TEST

/* The server's bounds as it wrote them, in double: |mean| <= 2^60, var <= 2^120. */
static size_t plain_mean_beyond(const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!(fabs((double)x[i]) <= 0x1p60))
            return i;
    return n;
}

static size_t plain_var_beyond(const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!((double)x[i] <= 0x1p120))
            return i;
    return n;
}

/* narrow against the C conversion, bitwise: ties, subnormals, overflow. */
START_TEST(narrow_every_value)
{
    uint64_t rng = ns_test_seed() ^ 0x4a770;
    const double special[] = {0.0,      -0.0,           1.0 + 0x1p-24, 1.0 + 0x1p-23 + 0x1p-24,
                              0x1p-149, 0x1p-150,       0x1.8p-150,    -0x1p-140,
                              FLT_MAX,  0x1.ffffffp127, 0x1p128,       -1e300,
                              INFINITY, -INFINITY,      NAN,           3.14159};
    const size_t ns = sizeof(special) / sizeof(special[0]);
    double src[1003];
    float got[1003], want[1003];
    for (int round = 0; round < 20; round++) {
        for (size_t i = 0; i < 1003; i++)
            src[i] = i % 5 == 0 ? special[ns_test_rand(&rng) % ns]
                                : (ns_test_uniform(&rng) - 0.5) * ldexp(1.0, (int)(i % 300) - 150);
        for (size_t i = 0; i < 1003; i++)
            want[i] = (float)src[i];
        for (int t = 0; t < ntables; t++)
            for (size_t len = 0; len <= 1003; len += len < 40 ? 1 : 321) {
                memset(got, 0xa5, sizeof(got));
                tables[t]->narrow(got, src, len);
                ck_assert_msg(memcmp(got, want, len * sizeof(float)) == 0, "%s: %zu values",
                              tables[t]->name, len);
                if (len < 1003) /* nothing written past the end */
                    ck_assert_uint_eq(((const unsigned char *)got)[len * sizeof(float)], 0xa5);
            }
    }
}
END_TEST

START_TEST(outside_every_position)
{
    const float probes[] = {NAN,       -NAN,           INFINITY,        -INFINITY, 0x1p60f,
                            -0x1p60f,  0x1.000002p60f, -0x1.000002p60f, 0x1p120f,  0x1.000002p120f,
                            -0x1p121f, FLT_MAX,        -FLT_MAX,        -0.0f,     1e-45f,
                            3.0f};
    float x[80];
    int checks = 0;
    for (int t = 0; t < ntables; t++) {
        for (size_t len = 1; len <= 80; len++) {
            for (size_t i = 0; i < len; i++)
                x[i] = (float)(i % 5) - 2.0f;
            ck_assert_uint_eq(tables[t]->find_outside(x, len, -0x1p60f, 0x1p60f), len);
            for (size_t pos = 0; pos < len; pos++) {
                for (size_t k = 0; k < sizeof(probes) / sizeof(probes[0]); k++) {
                    x[pos] = probes[k];
                    if (pos + 5 < len)
                        x[pos + 5] = NAN; /* a later hit must not matter */
                    ck_assert_uint_eq(tables[t]->find_outside(x, len, -0x1p60f, 0x1p60f),
                                      plain_mean_beyond(x, len));
                    ck_assert_uint_eq(tables[t]->find_outside(x, len, -INFINITY, 0x1p120f),
                                      plain_var_beyond(x, len));
                    checks += 2;
                    if (pos + 5 < len)
                        x[pos + 5] = 1.0f;
                }
                x[pos] = (float)(pos % 5) - 2.0f;
            }
        }
    }
    ck_assert_int_gt(checks, 0);
}
END_TEST

START_TEST(outside_long_random)
{
    uint64_t rng = ns_test_seed() ^ 0x0b5;
    const size_t n = 100003;
    float *x = malloc(sizeof(float) * n);
    ck_assert_ptr_nonnull(x);
    for (int iter = 0; iter < 100; iter++) {
        for (size_t i = 0; i < n; i++)
            x[i] = ((float)ns_test_uniform(&rng) - 0.5f) * 0x1p61f;
        int hits = (int)(ns_test_rand(&rng) % 3);
        for (int h = 0; h < hits; h++) {
            const float bad[] = {NAN, 0x1.000002p60f, -0x1.000002p60f, 0x1p121f};
            x[ns_test_rand(&rng) % n] = bad[ns_test_rand(&rng) % 4];
        }
        size_t len = n - ns_test_rand(&rng) % 40;
        for (int t = 0; t < ntables; t++) {
            ck_assert_uint_eq(tables[t]->find_outside(x, len, -0x1p60f, 0x1p60f),
                              plain_mean_beyond(x, len));
            ck_assert_uint_eq(tables[t]->find_outside(x, len, -INFINITY, 0x1p120f),
                              plain_var_beyond(x, len));
        }
    }
    free(x);
}
END_TEST

/* ---------------------------------------------------------------- dispatch */

START_TEST(dispatch_choice)
{
    const char *want = getenv("NS_SIMD");
    const ns_kernels_t *k = ns__kernels();
    ck_assert_ptr_eq(k, ns__kernels()); /* decided once */
#if defined(__x86_64__) || defined(__i386__)
    /* Independent view of the same CPU: GCC's runtime (which also checks the
     * OS's XCR0 for AVX). */
    __builtin_cpu_init();
    int expect = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    ck_assert_int_eq(ns__cpu_has_avx2_fma(), expect);
#endif
    if (want != NULL && strcmp(want, "scalar") == 0)
        ck_assert_str_eq(k->name, "scalar");
    else
        ck_assert_str_eq(k->name, ns__cpu_has_avx2_fma() ? "avx2" : "scalar");
    ck_assert_str_eq(ns_core_kernel(), k->name);
}
END_TEST

static Suite *kernels_suite(void)
{
    collect_tables();
    Suite *s = suite_create("kernels");
    TCase *tc = tcase_create("kernels");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, block_known_answer);
    tcase_add_test(tc, block_random_shapes);
    tcase_add_test(tc, block_outlier_first);
    tcase_add_test(tc, rows_known_answer);
    tcase_add_test(tc, rows_random_shapes);
    tcase_add_test(tc, combine_known_answer);
    tcase_add_test(tc, combine_random);
    tcase_add_test(tc, validate_every_position);
    tcase_add_test(tc, validate_long_random);
    tcase_add_test(tc, outside_every_position);
    tcase_add_test(tc, outside_long_random);
    tcase_add_test(tc, narrow_every_value);
    tcase_add_test(tc, dispatch_choice);
    suite_add_tcase(s, tc);
    return s;
}

NS_TEST_MAIN(kernels_suite)
