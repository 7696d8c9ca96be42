/* kernel_avx2.c - the AVX2+FMA kernel table (the only file built with -mavx2 -mfma).
 *
 * Same contracts as kernel_scalar.c; the comments beside each vector step
 * give the scalar operation it performs, line by line. Floats are widened to
 * double four at a time (vcvtps2pd) for every sum that reaches a result, so
 * results are computed in double as in the reference.
 *  - block_moments keeps several independent accumulators per pass (enough
 *    to hide the add/FMA latency) and reduces them in a fixed tree, so
 *    results are deterministic but differ from scalar by rounding (tested
 *    bound in tests/unit/core/test_kernels.c). Its first pass runs in float32
 *    (only an estimate of the mean; see block_moments).
 *  - rows_moments works like block_moments, one channel per lane; it differs
 *    from scalar by rounding (same bound).
 *  - combine does, per channel, exactly the scalar operations in the same
 *    order (mul and add, no FMA), so it equals scalar bitwise.
 *  - moments.c reads channel tiles n-major (and NHWC tiles chunk after
 *    chunk), so the data a kernel reads next is known: pass 2, which runs
 *    from L1, prefetches it and keeps the memory stream busy.
 *  - drift computes dm with the scalar operations (same bits per channel) and
 *    dv with its own vector logarithm (log4, a few ulp from libm's); sums
 *    run in four lanes, so averages differ from scalar by rounding.
 *  - step_update does the scalar operations (same bits); its record (history
 *    floats and drift) equals this table's narrow() and drift_precise() run
 *    after it, bitwise.
 *  - the validation scans test 32 floats per iteration with ordered compares
 *    (false for NaN) and locate the exact index only after a hit. */
#include "kernels.h"

#include <immintrin.h>
#include <math.h>
#include <stdint.h>

/* Prefetch the line at address 'a' into L1. Addresses are integers because
 * they may lie past the end of the caller's data (a prefetch never faults;
 * forming such a pointer would be undefined). */
static inline void prefetch(uintptr_t a)
{
    _mm_prefetch((const char *)a, _MM_HINT_T0);
}

/* (double)p[0..3] */
static inline __m256d load4(const float *p)
{
    return _mm256_cvtps_pd(_mm_loadu_ps(p));
}

/* tail_mask + 8 - k: lanes 0..k-1 all ones, the rest zero (k = 1..8). */
static const int32_t tail_mask[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};

/* l0 + l1 + l2 + l3 in the fixed order (l0 + l1) + (l2 + l3). */
static inline double hsum(__m256d v)
{
    __m128d lo = _mm256_castpd256_pd128(v), hi = _mm256_extractf128_pd(v, 1);
    double l[4];
    _mm_storeu_pd(l, lo);
    _mm_storeu_pd(l + 2, hi);
    return (l[0] + l[1]) + (l[2] + l[3]);
}

/* Pass 1 of block_moments (float): s = sum (x - x0), accumulator k takes
 * x[j + 8k .. j + 8k + 7]. @return mean0 = x0 + s / n, or x0 if that overflowed. */
static inline __attribute__((always_inline)) double
first_pass_mean(const float *src, size_t seg_len, size_t nseg, size_t stride, double count)
{
    const __m256 vx0 = _mm256_set1_ps(src[0]);
    __m256 f0 = _mm256_setzero_ps(), f1 = f0, f2 = f0, f3 = f0;
    for (size_t i = 0; i < nseg; i++) {
        const float *p = src + i * stride;
        size_t j = 0;
        for (; j + 32 <= seg_len; j += 32) {
            /* f0 += x[j..j+7] - x0;  f1 += x[j+8..j+15] - x0;  f2 += ...;  f3 += ... */
            f0 = _mm256_add_ps(f0, _mm256_sub_ps(_mm256_loadu_ps(p + j), vx0));
            f1 = _mm256_add_ps(f1, _mm256_sub_ps(_mm256_loadu_ps(p + j + 8), vx0));
            f2 = _mm256_add_ps(f2, _mm256_sub_ps(_mm256_loadu_ps(p + j + 16), vx0));
            f3 = _mm256_add_ps(f3, _mm256_sub_ps(_mm256_loadu_ps(p + j + 24), vx0));
        }
        for (; j + 8 <= seg_len; j += 8) /* f0 += x[j..j+7] - x0 */
            f0 = _mm256_add_ps(f0, _mm256_sub_ps(_mm256_loadu_ps(p + j), vx0));
        if (j < seg_len) { /* the last 1..7 values; masked lanes are neither read nor summed */
            const __m256i m = _mm256_loadu_si256((const __m256i *)(tail_mask + 8 - (seg_len - j)));
            const __m256 v = _mm256_sub_ps(_mm256_maskload_ps(p + j, m), vx0); /* x[j..] - x0 */
            f1 = _mm256_add_ps(f1, _mm256_and_ps(v, _mm256_castsi256_ps(m)));  /* f1 += that */
        }
    }
    /* s = widen(f0 + f1 + f2 + f3) summed lane by lane in double */
    const __m256 fs = _mm256_add_ps(_mm256_add_ps(f0, f1), _mm256_add_ps(f2, f3));
    const double s = hsum(_mm256_add_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(fs)),
                                        _mm256_cvtps_pd(_mm256_extractf128_ps(fs, 1))));
    double mu0 = (double)src[0] + s / count; /* mean0 = x0 + s / n */
    if (!isfinite(mu0))
        mu0 = src[0]; /* the float sum overflowed: x0 is estimate enough */
    return mu0;
}

/* Pass 2 of block_moments (double): *q = sum d^2, *c = sum d with
 * d = x - mean0; 4 + 4 accumulators. */
static inline __attribute__((always_inline)) void second_pass_sums(const float *src, size_t seg_len,
                                                                   size_t nseg, size_t stride,
                                                                   double mu0, double *q, double *c)
{
    const __m256d vmu = _mm256_set1_pd(mu0);
    __m256d q0 = _mm256_setzero_pd(), q1 = q0, q2 = q0, q3 = q0;
    __m256d c0 = q0, c1 = q0, c2 = q0, c3 = q0, d;
    for (size_t i = 0; i < nseg; i++) {
        const float *p = src + i * stride;
        const uintptr_t ahead = (uintptr_t)p + seg_len * sizeof(float);
        size_t j = 0;
        for (; j + 16 <= seg_len; j += 16) {
            /* The callers read channel tiles n-major, so the next block starts
             * where this segment ends: fetch it while pass 2 runs from L1
             * (a hint only; it never faults, past the end of the data neither). */
            prefetch(ahead + j * sizeof(float));
            d = _mm256_sub_pd(load4(p + j), vmu);     /* d = x[j..j+3] - mean0 */
            q0 = _mm256_fmadd_pd(d, d, q0);           /* q0 += d * d */
            c0 = _mm256_add_pd(c0, d);                /* c0 += d */
            d = _mm256_sub_pd(load4(p + j + 4), vmu); /* d = x[j+4..j+7] - mean0 */
            q1 = _mm256_fmadd_pd(d, d, q1);           /* q1 += d * d */
            c1 = _mm256_add_pd(c1, d);                /* c1 += d */
            d = _mm256_sub_pd(load4(p + j + 8), vmu); /* d = x[j+8..j+11] - mean0 */
            q2 = _mm256_fmadd_pd(d, d, q2);           /* ... */
            c2 = _mm256_add_pd(c2, d);
            d = _mm256_sub_pd(load4(p + j + 12), vmu); /* d = x[j+12..j+15] - mean0 */
            q3 = _mm256_fmadd_pd(d, d, q3);
            c3 = _mm256_add_pd(c3, d);
        }
        for (; j + 4 <= seg_len; j += 4) {
            d = _mm256_sub_pd(load4(p + j), vmu); /* d = x[j..j+3] - mean0 */
            q0 = _mm256_fmadd_pd(d, d, q0);       /* q0 += d * d */
            c0 = _mm256_add_pd(c0, d);            /* c0 += d */
        }
        if (j < seg_len) { /* the last 1..3 values, masked as in pass 1 */
            const __m128i m = _mm_loadu_si128((const __m128i *)(tail_mask + 8 - (seg_len - j)));
            d = _mm256_sub_pd(_mm256_cvtps_pd(_mm_maskload_ps(p + j, m)),
                              vmu); /* d = x[j..] - mean0 */
            d = _mm256_and_pd(d, _mm256_castsi256_pd(_mm256_cvtepi32_epi64(m)));
            q1 = _mm256_fmadd_pd(d, d, q1); /* q1 += d * d */
            c1 = _mm256_add_pd(c1, d);      /* c1 += d */
        }
    }
    *q = hsum(_mm256_add_pd(_mm256_add_pd(q0, q1), _mm256_add_pd(q2, q3)));
    *c = hsum(_mm256_add_pd(_mm256_add_pd(c0, c1), _mm256_add_pd(c2, c3)));
}

/* Block moments by the corrected two-pass algorithm (Chan, Golub, LeVeque):
 *  pass 1 estimates the mean cheaply, summing (x - x0) in float32 (8 lanes x
 *  4 accumulators, no conversions); pass 2, in double, sums d = x - mean0
 *  and d^2 and corrects both:
 *    mean = mean0 + sum d / n,   m2 = sum d^2 - (sum d)^2 / n.
 *  The correction is exact algebra; its rounding grows only with
 *  (mean0 - mean)^2 / var, which the float estimate keeps near 1e-10 (and
 *  x0 itself, used if the float sum overflows, keeps bounded). */
static void block_moments(const float *src, size_t seg_len, size_t nseg, size_t stride,
                          double *mean, double *m2)
{
    if (stride == seg_len) { /* contiguous segments are one long segment */
        seg_len *= nseg;
        nseg = 1;
    }
    const double count = (double)seg_len * (double)nseg;

    /* Pass 1 (float) estimates the mean, pass 2 (double) sums around it. */
    const double mu0 = first_pass_mean(src, seg_len, nseg, stride, count);
    double q, c;
    second_pass_sums(src, seg_len, nseg, stride, mu0, &q, &c);
    const double r = q - c * c / count; /* >= 0 in exact arithmetic (Cauchy-Schwarz) */
    *mean = mu0 + c / count;
    *m2 = r < 0.0 ? 0.0 : r; /* keeps NaN */
}

/* Row moments by the corrected two-pass algorithm of block_moments, per
 * channel (one channel per vector lane):
 *   pass 1 (float):  s = sum_r (x[r] - x0) (four partial sums over r % 4),
 *                    mean0 = x0 + s / rows
 *   pass 2 (double): d = x[r] - mean0,  q += d * d (FMA),  e += d
 *   mean = mean0 + e / rows,  m2 = max(q - e * e / rows, 0)
 * Pass 1 runs row by row across up to ROWS_SUBTILE channels (memory is read
 * in order), pass 2 strip by strip from cache with the accumulators in
 * registers. Every lane and the scalar tails do exactly these operations in
 * this order, so a channel's result does not depend on where it sits. */
#define ROWS_SUBTILE 256

#define STRIP_LOOP(V, stmt)                                                                        \
    do { /* stmt for v = 0 .. V-1, written out so q[v] etc. become registers */                    \
        {                                                                                          \
            const int v = 0;                                                                       \
            stmt;                                                                                  \
        }                                                                                          \
        if ((V) > 1) {                                                                             \
            const int v = 1;                                                                       \
            stmt;                                                                                  \
        }                                                                                          \
        if ((V) > 2) {                                                                             \
            const int v = 2;                                                                       \
            stmt;                                                                                  \
        }                                                                                          \
        if ((V) > 3) {                                                                             \
            const int v = 3;                                                                       \
            stmt;                                                                                  \
        }                                                                                          \
    } while (0)

/* Pass 2 of one strip of 4 * V channels (V = 1 or 4), given pass 1's float
 * sums fs[] and first values fx0[]. Always inlined with a constant V. */
static inline __attribute__((always_inline)) void
rows_strip(const float *src, size_t rows, size_t stride, const float *fx0, const float *fs,
           double *mean, double *m2, const int V, uintptr_t next)
{
    __m256d mu[4], q[4], e[4];
    const __m256d vcount = _mm256_set1_pd((double)rows);

    STRIP_LOOP(V, {
        const __m256d x0 = load4(fx0 + 4 * v);
        __m256d m0 = _mm256_add_pd(x0, _mm256_div_pd(load4(fs + 4 * v), vcount));
        /* mean0[c] = x0[c] + s[c] / rows, or x0[c] if the float sum overflowed */
        const __m256d finite =
            _mm256_cmp_pd(_mm256_sub_pd(m0, m0), _mm256_setzero_pd(), _CMP_EQ_OQ);
        mu[v] = _mm256_blendv_pd(x0, m0, finite);
        q[v] = _mm256_setzero_pd();
        e[v] = _mm256_setzero_pd();
    });
    for (size_t r = 0; r < rows; r++) {
        const float *p = src + r * stride;
        /* Fetch this strip's row of the next chunk ('rows' rows down, read
         * next by the callers) while pass 2 runs from cache. A hint only: it
         * never faults. */
        const uintptr_t ahead = next + r * stride * sizeof(float);
        prefetch(ahead);
        prefetch(ahead + (4 * V - 1) * sizeof(float));
        STRIP_LOOP(V, {
            __m256d d = _mm256_sub_pd(load4(p + 4 * v), mu[v]); /* d = x[r][c] - mean0[c] */
            q[v] = _mm256_fmadd_pd(d, d, q[v]);                 /* q[c] += d * d */
            e[v] = _mm256_add_pd(e[v], d);                      /* e[c] += d */
        });
    }
    STRIP_LOOP(V, {
        /* mean[c] = mean0[c] + e[c] / rows;  m2[c] = max(q[c] - e[c] * e[c] / rows, 0) */
        _mm256_storeu_pd(mean + 4 * v, _mm256_add_pd(mu[v], _mm256_div_pd(e[v], vcount)));
        __m256d r2 = _mm256_sub_pd(q[v], _mm256_div_pd(_mm256_mul_pd(e[v], e[v]), vcount));
        _mm256_storeu_pd(m2 + 4 * v, _mm256_max_pd(_mm256_setzero_pd(), r2)); /* keeps NaN */
    });
}

static void rows_moments(const float *src, size_t rows, size_t width, size_t stride, double *mean,
                         double *m2)
{
    float fx0[ROWS_SUBTILE], fs[4][ROWS_SUBTILE];
    const double count = (double)rows;
    /* The next chunk of the same channels starts 'rows' rows down. */
    const uintptr_t next = (uintptr_t)src + rows * stride * sizeof(float);

    for (size_t c0 = 0; c0 < width; c0 += ROWS_SUBTILE) {
        const size_t w = width - c0 < ROWS_SUBTILE ? width - c0 : ROWS_SUBTILE;
        const size_t w8 = w & ~(size_t)7;
        const float *base = src + c0;
        size_t c;

        /* Pass 1, row by row: s_k[c] += x[r][c] - x0[c] (float) with k = r % 4,
         * four independent sums so narrow rows do not wait on one another;
         * then s[c] = (s_0[c] + s_1[c]) + (s_2[c] + s_3[c]). */
        for (c = 0; c < w; c++) {
            fx0[c] = base[c];
            fs[0][c] = fs[1][c] = fs[2][c] = fs[3][c] = 0.0f;
        }
        for (size_t r = 0; r < rows; r++) {
            const float *p = base + r * stride;
            float *acc = fs[r & 3];
            for (c = 0; c < w8; c += 8)
                _mm256_storeu_ps(acc + c, _mm256_add_ps(_mm256_loadu_ps(acc + c),
                                                        _mm256_sub_ps(_mm256_loadu_ps(p + c),
                                                                      _mm256_loadu_ps(fx0 + c))));
            for (; c < w; c++)
                acc[c] += p[c] - fx0[c];
        }
        for (c = 0; c < w; c++)
            fs[0][c] = (fs[0][c] + fs[1][c]) + (fs[2][c] + fs[3][c]);

        /* Pass 2, strip by strip. */
        const uintptr_t snext = next + c0 * sizeof(float);
        for (c = 0; c + 16 <= w; c += 16)
            rows_strip(base + c, rows, stride, fx0 + c, fs[0] + c, mean + c0 + c, m2 + c0 + c, 4,
                       snext + c * sizeof(float));
        for (; c + 4 <= w; c += 4)
            rows_strip(base + c, rows, stride, fx0 + c, fs[0] + c, mean + c0 + c, m2 + c0 + c, 1,
                       snext + c * sizeof(float));
        for (; c < w; c++) { /* one channel: the same operations as a lane */
            double mu = (double)fx0[c] + (double)fs[0][c] / count;
            if (!(mu - mu == 0.0))
                mu = fx0[c];
            double q = 0.0, e = 0.0;
            for (size_t r = 0; r < rows; r++) {
                double d = (double)base[r * stride + c] - mu;
                q = fma(d, d, q);
                e += d;
            }
            const double r2 = q - e * e / count;
            mean[c0 + c] = mu + e / count;
            m2[c0 + c] = 0.0 > r2 ? 0.0 : r2;
        }
    }
}

#define COMBINE_TILE 1024

static void combine(const ns_arrival_t *src, size_t src_len, size_t channels, double total,
                    double *mean, double *var)
{
    for (size_t c0 = 0; c0 < channels; c0 += COMBINE_TILE) {
        const size_t c1 = channels - c0 < COMBINE_TILE ? channels : c0 + COMBINE_TILE;
        const size_t v1 = c0 + ((c1 - c0) & ~(size_t)7);
        size_t c;

        for (c = c0; c < c1; c++)
            mean[c] = 0.0;
        for (size_t w = 0; w < src_len; w++) {
            const double nw = (double)src[w].n;
            const __m256d vn = _mm256_set1_pd(nw);
            const float *mw = src[w].mean;
            const uintptr_t vnow = (uintptr_t)src[w].var;
            for (c = c0; c < v1; c += 8) {
                prefetch(vnow + c * sizeof(float)); /* var_w of this tile, read in pass 2 */
                /* mean[c] += n_w * mean_w[c] */
                __m256d s0 =
                    _mm256_add_pd(_mm256_loadu_pd(mean + c), _mm256_mul_pd(vn, load4(mw + c)));
                __m256d s1 = _mm256_add_pd(_mm256_loadu_pd(mean + c + 4),
                                           _mm256_mul_pd(vn, load4(mw + c + 4)));
                _mm256_storeu_pd(mean + c, s0);
                _mm256_storeu_pd(mean + c + 4, s1);
            }
            for (; c < c1; c++)
                mean[c] += nw * (double)mw[c];
        }
        for (c = c0; c < c1; c++) {
            mean[c] /= total;
            var[c] = 0.0;
        }
        for (size_t w = 0; w < src_len; w++) {
            const double nw = (double)src[w].n;
            const __m256d vn = _mm256_set1_pd(nw);
            const float *mw = src[w].mean, *vw = src[w].var;
            const uintptr_t mnext = (uintptr_t)mw + (c1 - c0) * sizeof(float);
            for (c = c0; c < v1; c += 8) {
                prefetch(mnext + c * sizeof(float)); /* mean_w of the next tile (hint) */
                /* d = mean_w[c] - mean[c]; var[c] += n_w * (var_w[c] + d * d) */
                __m256d d0 = _mm256_sub_pd(load4(mw + c), _mm256_loadu_pd(mean + c));
                __m256d d1 = _mm256_sub_pd(load4(mw + c + 4), _mm256_loadu_pd(mean + c + 4));
                __m256d t0 = _mm256_mul_pd(vn, _mm256_add_pd(load4(vw + c), _mm256_mul_pd(d0, d0)));
                __m256d t1 =
                    _mm256_mul_pd(vn, _mm256_add_pd(load4(vw + c + 4), _mm256_mul_pd(d1, d1)));
                _mm256_storeu_pd(var + c, _mm256_add_pd(_mm256_loadu_pd(var + c), t0));
                _mm256_storeu_pd(var + c + 4, _mm256_add_pd(_mm256_loadu_pd(var + c + 4), t1));
            }
            for (; c < c1; c++) {
                double d = (double)mw[c] - mean[c];
                var[c] += nw * ((double)vw[c] + d * d);
            }
        }
        for (c = c0; c < c1; c++)
            var[c] /= total;
    }
}

/* ---------------------------------------------------------------- drift */

/* log(x) of four positive normal doubles, within a few ulp of libm's:
 *   x = 2^e m with m in (sqrt(1/2), sqrt(2)],
 *   log m = 2 atanh(s) = 2 s (1 + z/3 + z^2/5 + ... + z^9/19), s = (m-1)/(m+1),
 *   z = s^2 <= 0.0295, so the terms after z^9 stay below 2^-53;
 *   log x = e ln2_hi + (e ln2_lo + log m)  (e ln2_hi is exact: fdlibm's split). */
static inline __m256d log4(__m256d x)
{
    const __m256i bits = _mm256_castpd_si256(x);
    const __m256d one = _mm256_set1_pd(1.0);
    /* m = x with a zero exponent, in [1, 2) */
    __m256d m = _mm256_castsi256_pd(
        _mm256_or_si256(_mm256_and_si256(bits, _mm256_set1_epi64x(0x000FFFFFFFFFFFFFLL)),
                        _mm256_set1_epi64x(0x3FF0000000000000LL)));
    /* e = (bits >> 52) - 1023, converted exactly through the mantissa of 2^52 */
    __m256d e =
        _mm256_sub_pd(_mm256_castsi256_pd(_mm256_or_si256(
                          _mm256_srli_epi64(bits, 52), _mm256_set1_epi64x(0x4330000000000000LL))),
                      _mm256_set1_pd(4503599627370496.0 + 1023.0));
    /* if m > sqrt(2): m /= 2, e += 1 */
    const __m256d big = _mm256_cmp_pd(m, _mm256_set1_pd(1.4142135623730951), _CMP_GT_OQ);
    m = _mm256_blendv_pd(m, _mm256_mul_pd(m, _mm256_set1_pd(0.5)), big);
    e = _mm256_add_pd(e, _mm256_and_pd(big, one));
    /* s = (m - 1) / (m + 1); z = s * s */
    const __m256d s = _mm256_div_pd(_mm256_sub_pd(m, one), _mm256_add_pd(m, one));
    const __m256d z = _mm256_mul_pd(s, s);
    /* p = 1 + z/3 + ... + z^9/19 (Horner) */
    __m256d p = _mm256_set1_pd(1.0 / 19.0);
    p = _mm256_fmadd_pd(p, z, _mm256_set1_pd(1.0 / 17.0));
    p = _mm256_fmadd_pd(p, z, _mm256_set1_pd(1.0 / 15.0));
    p = _mm256_fmadd_pd(p, z, _mm256_set1_pd(1.0 / 13.0));
    p = _mm256_fmadd_pd(p, z, _mm256_set1_pd(1.0 / 11.0));
    p = _mm256_fmadd_pd(p, z, _mm256_set1_pd(1.0 / 9.0));
    p = _mm256_fmadd_pd(p, z, _mm256_set1_pd(1.0 / 7.0));
    p = _mm256_fmadd_pd(p, z, _mm256_set1_pd(1.0 / 5.0));
    p = _mm256_fmadd_pd(p, z, _mm256_set1_pd(1.0 / 3.0));
    p = _mm256_fmadd_pd(p, z, one);
    const __m256d logm = _mm256_mul_pd(_mm256_add_pd(s, s), p); /* log m = 2 s p */
    const __m256d ln2_hi = _mm256_set1_pd(6.93147180369123816490e-01);
    const __m256d ln2_lo = _mm256_set1_pd(1.90821492927058770002e-10);
    return _mm256_fmadd_pd(e, ln2_hi, _mm256_fmadd_pd(e, ln2_lo, logm));
}

/* Running sums and first maxima of drift, one channel per lane. */
typedef struct drift_acc_s {
    __m256d sm, sv; /* sums of dm, dv */
    __m256d mm, mv; /* maxima of dm, dv (start at -1) */
    __m256d im, iv; /* their channels, as doubles */
    __m256d idx;    /* the channels of the lanes now */
} drift_acc_t;

/* One group of four channels; lanes not in 'valid' take no part (every
 * lane when 'masked' is 0, a constant: then 'valid' is not read). */
static inline __attribute__((always_inline)) void drift_lanes(drift_acc_t *a, __m256d em,
                                                              __m256d ev, __m256d pm, __m256d pv,
                                                              __m256d eps, __m256d valid,
                                                              const int masked)
{
    const __m256d absmask = _mm256_castsi256_pd(_mm256_set1_epi64x(0x7FFFFFFFFFFFFFFFLL));
    const __m256d minus1 = _mm256_set1_pd(-1.0);
    /* dm = |em - pm| / sqrt(pv + eps)   (the scalar operations, so the same bits) */
    __m256d dm = _mm256_div_pd(_mm256_and_pd(_mm256_sub_pd(em, pm), absmask),
                               _mm256_sqrt_pd(_mm256_add_pd(pv, eps)));
    /* dv = |log((ev + eps) / (pv + eps))| */
    __m256d dv =
        _mm256_and_pd(log4(_mm256_div_pd(_mm256_add_pd(ev, eps), _mm256_add_pd(pv, eps))), absmask);
    if (masked) { /* outside 'valid': 0 for the sums, -1 for the maxima */
        dm = _mm256_blendv_pd(minus1, dm, valid);
        dv = _mm256_blendv_pd(minus1, dv, valid);
        a->sm = _mm256_add_pd(a->sm, _mm256_and_pd(dm, valid)); /* sm += dm */
        a->sv = _mm256_add_pd(a->sv, _mm256_and_pd(dv, valid)); /* sv += dv */
    } else {
        a->sm = _mm256_add_pd(a->sm, dm);
        a->sv = _mm256_add_pd(a->sv, dv);
    }
    /* if (dm > mm) { mm = dm; im = c; }  and the same for dv */
    const __m256d gm = _mm256_cmp_pd(dm, a->mm, _CMP_GT_OQ);
    const __m256d gv = _mm256_cmp_pd(dv, a->mv, _CMP_GT_OQ);
    a->mm = _mm256_blendv_pd(a->mm, dm, gm);
    a->im = _mm256_blendv_pd(a->im, a->idx, gm);
    a->mv = _mm256_blendv_pd(a->mv, dv, gv);
    a->iv = _mm256_blendv_pd(a->iv, a->idx, gv);
    a->idx = _mm256_add_pd(a->idx, _mm256_set1_pd(4.0));
}

/* Four channels, every lane taking part. */
static inline __attribute__((always_inline)) void drift_step(drift_acc_t *a, __m256d em, __m256d ev,
                                                             __m256d pm, __m256d pv, __m256d eps)
{
    drift_lanes(a, em, ev, pm, pv, eps, _mm256_setzero_pd(), 0);
}

/* The largest of four lanes, ties to the lowest channel (each lane already
 * holds its first maximum, so this is the first maximum overall). */
static void lane_max(__m256d value, __m256d channel, double *max, size_t *at)
{
    double v[4], c[4];
    _mm256_storeu_pd(v, value);
    _mm256_storeu_pd(c, channel);
    int best = 0;
    for (int l = 1; l < 4; l++)
        if (v[l] > v[best] || (v[l] == v[best] && c[l] < c[best]))
            best = l;
    *max = v[best];
    *at = (size_t)c[best];
}

static inline drift_acc_t drift_start(void)
{
    return (drift_acc_t){_mm256_setzero_pd(),
                         _mm256_setzero_pd(),
                         _mm256_set1_pd(-1.0),
                         _mm256_set1_pd(-1.0),
                         _mm256_setzero_pd(),
                         _mm256_setzero_pd(),
                         _mm256_setr_pd(0.0, 1.0, 2.0, 3.0)};
}

/* The last 1..3 channels from c on, through drift_step() from a padded copy
 * (em = pm = 0, ev = pv = 1: dm = dv = 0), masked out. em == NULL: em = 0,
 * ev = 1 in every channel (the initial debiased view). */
static inline __attribute__((always_inline)) void drift_tail(drift_acc_t *a, const double *em,
                                                             const double *ev, const double *pm,
                                                             const double *pv_or_m2, double denom,
                                                             int in_place, size_t c,
                                                             size_t channels, __m256d veps)
{
    double t[4][4] = {{0, 0, 0, 0}, {1, 1, 1, 1}, {0, 0, 0, 0}, {1, 1, 1, 1}};
    int64_t mask[4] = {0, 0, 0, 0};
    for (size_t l = 0; c + l < channels; l++) {
        t[0][l] = em != NULL ? em[c + l] : 0.0;
        t[1][l] = ev != NULL ? ev[c + l] : 1.0;
        t[2][l] = pm[c + l];
        t[3][l] = in_place ? pv_or_m2[c + l] / denom : pv_or_m2[c + l];
        mask[l] = -1;
    }
    drift_lanes(a, _mm256_loadu_pd(t[0]), _mm256_loadu_pd(t[1]), _mm256_loadu_pd(t[2]),
                _mm256_loadu_pd(t[3]), veps,
                _mm256_castsi256_pd(_mm256_loadu_si256((const __m256i *)mask)), 1);
}

/* Sums reduced (l0 + l1) + (l2 + l3), maxima to their first channel. */
static void drift_finish(const drift_acc_t *a, size_t channels, ns_drift_t *dst)
{
    dst->mean_avg = hsum(a->sm) / (double)channels;
    dst->var_avg = hsum(a->sv) / (double)channels;
    lane_max(a->mm, a->im, &dst->mean_max, &dst->mean_max_channel);
    lane_max(a->mv, a->iv, &dst->var_max, &dst->var_max_channel);
}

/* Four channels per step, one accumulator per sum (drift is a few scalars per
 * layer and step, far from any bottleneck); the last 1..3 channels through
 * drift_tail(). */
static inline __attribute__((always_inline)) void
drift_loop(const double *em, const double *ev, const double *pm, const double *pv_or_m2,
           double denom, int in_place, size_t channels, double eps, ns_drift_t *dst)
{
    const __m256d veps = _mm256_set1_pd(eps), vdenom = _mm256_set1_pd(denom);
    drift_acc_t a = drift_start();
    size_t c = 0;
    for (; c + 4 <= channels; c += 4) {
        __m256d pv = _mm256_loadu_pd(pv_or_m2 + c);
        if (in_place)
            pv = _mm256_div_pd(pv, vdenom); /* m2 / denom, as ns_precise_read() */
        drift_step(&a, _mm256_loadu_pd(em + c), _mm256_loadu_pd(ev + c), _mm256_loadu_pd(pm + c),
                   pv, veps);
    }
    if (c < channels)
        drift_tail(&a, em, ev, pm, pv_or_m2, denom, in_place, c, channels, veps);
    drift_finish(&a, channels, dst);
}

static void drift(const double *em, const double *ev, const double *pm, const double *pv,
                  size_t channels, double eps, ns_drift_t *dst)
{
    drift_loop(em, ev, pm, pv, 1.0, 0, channels, eps, dst);
}

/* drift() of pv = m2 / denom, divided in the lanes (IEEE division: the
 * bits of the scalar quotient). */
static void drift_precise(const double *em, const double *ev, const double *pm, const double *m2,
                          double denom, size_t channels, double eps, ns_drift_t *dst)
{
    drift_loop(em, ev, pm, m2, denom, 1, channels, eps, dst);
}

/* The scalar reference's operations four channels at a time: mul and add,
 * never fused, so every element gets the same bits. The coefficients are
 * broadcast once, before the loop.
 * With a record, the channels go by tiles small enough to stay in L1: a
 * tile is updated, then its record read back from L1 (the update's loop
 * alone fills the 16 vector registers; one loop doing both would spill),
 * so the arrays still come from memory once. The record narrows with
 * vcvtpd2ps (the C conversion's rounding) and feeds drift_step() lanes and
 * tail as drift_loop() has them: the same bits as narrow() and
 * drift_precise() after the update. */
#define RECORD_TILE 256 /* channels: 12 arrays of 2 KiB */

typedef struct {
    __m256d keep, f, b, a;
} ema_vec_t;

/* x' = k x + g y, as the reference writes it. */
static inline __m256d lerp(__m256d k, __m256d x, __m256d g, __m256d y)
{
    return _mm256_add_pd(_mm256_mul_pd(k, x), _mm256_mul_pd(g, y));
}

/* An accumulator's share, broadcast. */
typedef struct {
    double *mean, *m2;
    int empty;
    __m256d dn_b, wb, cross;
} precise_vec_t;

/* The common case, unrolled, channels [c0, c1) (a multiple of 4 apart): a
 * domain's EMA and the pooled one, both with zero-start arrays, and an
 * accumulator that has samples. */
static void step_update_common(const double *mean, const double *var, size_t c0, size_t c1,
                               __m256d vbessel, const ns__ema_pass_t *q, const ema_vec_t *v,
                               const precise_vec_t *pv)
{
    double *rm0 = q[0].rm, *rv0 = q[0].rv, *zm0 = q[0].zm, *zv0 = q[0].zv;
    double *rm1 = q[1].rm, *rv1 = q[1].rv, *zm1 = q[1].zm, *zv1 = q[1].zv;
    double *pmean = pv->mean, *pm2 = pv->m2;
    const __m256d dn_b = pv->dn_b, wb = pv->wb, cross = pv->cross;
    for (size_t c = c0; c < c1; c += 4) {
        const __m256d xm = _mm256_loadu_pd(mean + c), xv = _mm256_loadu_pd(var + c);
        const __m256d ub = _mm256_mul_pd(xv, vbessel);
        _mm256_storeu_pd(rm0 + c, lerp(v[0].keep, _mm256_loadu_pd(rm0 + c), v[0].f, xm));
        _mm256_storeu_pd(rv0 + c, lerp(v[0].keep, _mm256_loadu_pd(rv0 + c), v[0].f, ub));
        _mm256_storeu_pd(zm0 + c, lerp(v[0].b, _mm256_loadu_pd(zm0 + c), v[0].a, xm));
        _mm256_storeu_pd(zv0 + c, lerp(v[0].b, _mm256_loadu_pd(zv0 + c), v[0].a, ub));
        _mm256_storeu_pd(rm1 + c, lerp(v[1].keep, _mm256_loadu_pd(rm1 + c), v[1].f, xm));
        _mm256_storeu_pd(rv1 + c, lerp(v[1].keep, _mm256_loadu_pd(rv1 + c), v[1].f, ub));
        _mm256_storeu_pd(zm1 + c, lerp(v[1].b, _mm256_loadu_pd(zm1 + c), v[1].a, xm));
        _mm256_storeu_pd(zv1 + c, lerp(v[1].b, _mm256_loadu_pd(zv1 + c), v[1].a, ub));
        const __m256d pm = _mm256_loadu_pd(pmean + c);
        const __m256d delta = _mm256_sub_pd(xm, pm);
        const __m256d m2b = _mm256_mul_pd(xv, dn_b);
        _mm256_storeu_pd(pmean + c, _mm256_add_pd(pm, _mm256_mul_pd(delta, wb)));
        const __m256d dd = _mm256_mul_pd(_mm256_mul_pd(delta, delta), cross);
        _mm256_storeu_pd(pm2 + c, _mm256_add_pd(_mm256_loadu_pd(pm2 + c), _mm256_add_pd(m2b, dd)));
    }
}

/* Any other shape, channels [c0, c1) (a multiple of 4 apart). */
static void step_update_vectors(const double *mean, const double *var, size_t c0, size_t c1,
                                __m256d vbessel, const ns__ema_pass_t *qs, const ema_vec_t *ev,
                                size_t n_ema, const precise_vec_t *pv)
{
    double *const pmean = pv->mean, *const pm2 = pv->m2;
    const __m256d dn_b = pv->dn_b, wb = pv->wb, cross = pv->cross;
    for (size_t c = c0; c < c1; c += 4) {
        const __m256d xm = _mm256_loadu_pd(mean + c), xv = _mm256_loadu_pd(var + c);
        const __m256d unbiased = _mm256_mul_pd(xv, vbessel);
        for (size_t e = 0; e < n_ema; e++) {
            const ns__ema_pass_t *q = &qs[e];
            const ema_vec_t *v = &ev[e];
            _mm256_storeu_pd(q->rm + c, lerp(v->keep, _mm256_loadu_pd(q->rm + c), v->f, xm));
            _mm256_storeu_pd(q->rv + c, lerp(v->keep, _mm256_loadu_pd(q->rv + c), v->f, unbiased));
            if (q->zm != NULL) {
                _mm256_storeu_pd(q->zm + c, lerp(v->b, _mm256_loadu_pd(q->zm + c), v->a, xm));
                _mm256_storeu_pd(q->zv + c, lerp(v->b, _mm256_loadu_pd(q->zv + c), v->a, unbiased));
            }
        }
        if (pmean == NULL)
            continue;
        if (pv->empty) {
            _mm256_storeu_pd(pmean + c, xm);
            _mm256_storeu_pd(pm2 + c, _mm256_mul_pd(xv, dn_b));
        } else {
            const __m256d pm = _mm256_loadu_pd(pmean + c);
            const __m256d delta = _mm256_sub_pd(xm, pm);
            const __m256d m2b = _mm256_mul_pd(xv, dn_b);
            _mm256_storeu_pd(pmean + c, _mm256_add_pd(pm, _mm256_mul_pd(delta, wb)));
            const __m256d dd = _mm256_mul_pd(_mm256_mul_pd(delta, delta), cross);
            _mm256_storeu_pd(pm2 + c,
                             _mm256_add_pd(_mm256_loadu_pd(pm2 + c), _mm256_add_pd(m2b, dd)));
        }
    }
}

/* The record of channels [c0, c1) (a multiple of 4 apart), just updated:
 * the float32 values, and the drift's sums into 'a' when 'drift' (r->pm).
 * 'view' (r->em != NULL) and 'drift' are constants in each instance. */
static inline __attribute__((always_inline)) void
record_loop(const double *mean, const double *var, size_t c0, size_t c1, const ns__record_pass_t *r,
            drift_acc_t *a, const int view, const int drift)
{
    float *const bm = r->out_bm, *const bv = r->out_bv, *const om = r->out_em,
                 *const ov = r->out_ev;
    const double *const em = r->em, *const ev = r->ev, *const pm = r->pm, *const pm2 = r->pm2;
    const __m256d veps = _mm256_set1_pd(r->eps), vdenom = _mm256_set1_pd(r->denom);
    drift_acc_t acc = *a; /* in registers: a float store may alias a vector in memory */
    for (size_t c = c0; c < c1; c += 4) {
        /* the initial debiased view when em == NULL: 0 and 1 */
        const __m256d vm = view ? _mm256_loadu_pd(em + c) : _mm256_setzero_pd();
        const __m256d vv = view ? _mm256_loadu_pd(ev + c) : _mm256_set1_pd(1.0);
        _mm_storeu_ps(bm + c, _mm256_cvtpd_ps(_mm256_loadu_pd(mean + c)));
        _mm_storeu_ps(bv + c, _mm256_cvtpd_ps(_mm256_loadu_pd(var + c)));
        _mm_storeu_ps(om + c, _mm256_cvtpd_ps(vm));
        _mm_storeu_ps(ov + c, _mm256_cvtpd_ps(vv));
        if (drift) /* pv = m2 / denom, as ns_precise_read() */
            drift_step(&acc, vm, vv, _mm256_loadu_pd(pm + c),
                       _mm256_div_pd(_mm256_loadu_pd(pm2 + c), vdenom), veps);
    }
    *a = acc;
}

/* record_loop()'s instances, out of line: the loop gets the registers to
 * itself. */
static __attribute__((noinline)) void record_vectors(const double *mean, const double *var,
                                                     size_t c0, size_t c1,
                                                     const ns__record_pass_t *r, drift_acc_t *a)
{
    if (r->em != NULL && r->pm != NULL)
        record_loop(mean, var, c0, c1, r, a, 1, 1);
    else if (r->em != NULL)
        record_loop(mean, var, c0, c1, r, a, 1, 0);
    else if (r->pm != NULL)
        record_loop(mean, var, c0, c1, r, a, 0, 1);
    else
        record_loop(mean, var, c0, c1, r, a, 0, 0);
}

static void step_update(const double *mean, const double *var, size_t channels, double bessel,
                        const ns__ema_pass_t *ema, size_t n_ema, const ns__precise_pass_t *p,
                        const ns__record_pass_t *r)
{
    const __m256d vbessel = _mm256_set1_pd(bessel);
    ema_vec_t ev[2];
    for (size_t e = 0; e < n_ema && e < 2; e++)
        ev[e] = (ema_vec_t){_mm256_set1_pd(ema[e].keep), _mm256_set1_pd(ema[e].f),
                            _mm256_set1_pd(ema[e].b), _mm256_set1_pd(ema[e].a)};
    const precise_vec_t pv = {p->mean,
                              p->m2,
                              p->empty,
                              _mm256_set1_pd(p->dn_b),
                              _mm256_set1_pd(p->wb),
                              _mm256_set1_pd(p->cross)};
    /* Local copies: the stores below cannot be taken to change them. */
    ns__ema_pass_t qs[2];
    for (size_t e = 0; e < n_ema && e < 2; e++)
        qs[e] = ema[e];
    const int common =
        n_ema == 2 && qs[0].zm != NULL && qs[1].zm != NULL && p->mean != NULL && !p->empty;
    const size_t c4 = channels & ~(size_t)3, tile = r != NULL ? RECORD_TILE : c4;
    drift_acc_t acc = drift_start();
    for (size_t c0 = 0; c0 < c4; c0 += tile) {
        const size_t c1 = c4 - c0 < tile ? c4 : c0 + tile;
        if (common)
            step_update_common(mean, var, c0, c1, vbessel, qs, ev, &pv);
        else
            step_update_vectors(mean, var, c0, c1, vbessel, qs, ev, n_ema, &pv);
        if (r != NULL)
            record_vectors(mean, var, c0, c1, r, &acc);
    }
    /* The last channels as the reference does them. */
    ns__step_update_range(mean, var, c4, channels, bessel, ema, n_ema, p, r);
    if (r == NULL || r->pm == NULL)
        return;
    if (c4 < channels)
        drift_tail(&acc, r->em, r->ev, r->pm, r->pm2, r->denom, 1, c4, channels,
                   _mm256_set1_pd(r->eps));
    drift_finish(&acc, channels, r->drift);
}

static void widen(double *dst, const float *src, size_t n)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        _mm256_storeu_pd(dst + i, _mm256_cvtps_pd(_mm_loadu_ps(src + i)));
        _mm256_storeu_pd(dst + i + 4, _mm256_cvtps_pd(_mm_loadu_ps(src + i + 4)));
    }
    for (; i < n; i++)
        dst[i] = src[i];
}

static void narrow(float *dst, const double *src, size_t n)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        _mm_storeu_ps(dst + i, _mm256_cvtpd_ps(_mm256_loadu_pd(src + i)));
        _mm_storeu_ps(dst + i + 4, _mm256_cvtpd_ps(_mm256_loadu_pd(src + i + 4)));
    }
    for (; i < n; i++)
        dst[i] = (float)src[i];
}

static size_t find_outside(const float *src, size_t src_len, float lo, float hi)
{
    const __m256 vlo = _mm256_set1_ps(lo), vhi = _mm256_set1_ps(hi);
    size_t i = 0;

#define NS_IN_RANGE(v)                                                                             \
    _mm256_and_ps(_mm256_cmp_ps(v, vlo, _CMP_GE_OQ), _mm256_cmp_ps(v, vhi, _CMP_LE_OQ))
    for (; i + 32 <= src_len; i += 32) {
        /* ok = lo <= x && x <= hi (ordered: false for NaN) */
        __m256 f0 = NS_IN_RANGE(_mm256_loadu_ps(src + i));
        __m256 f1 = NS_IN_RANGE(_mm256_loadu_ps(src + i + 8));
        __m256 f2 = NS_IN_RANGE(_mm256_loadu_ps(src + i + 16));
        __m256 f3 = NS_IN_RANGE(_mm256_loadu_ps(src + i + 24));
        __m256 ok = _mm256_and_ps(_mm256_and_ps(f0, f1), _mm256_and_ps(f2, f3));
        if (_mm256_movemask_ps(ok) != 0xFF)
            break;
    }
#undef NS_IN_RANGE
    for (; i < src_len; i++)
        if (!(lo <= src[i] && src[i] <= hi))
            return i;
    return src_len;
}

const ns_kernels_t ns__kernels_avx2 = {
    .name = "avx2",
    .block_moments = block_moments,
    .rows_moments = rows_moments,
    .combine = combine,
    .drift = drift,
    .drift_precise = drift_precise,
    .step_update = step_update,
    .widen = widen,
    .narrow = narrow,
    .find_outside = find_outside,
};
