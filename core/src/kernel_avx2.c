/* kernel_avx2.c - the AVX2+FMA kernel table (it and kernel_avx2_step.c, its
 * drift and fused step update, are the only files built with -mavx2 -mfma).
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
#include "kernel_avx2.h"

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
    .drift = ns__avx2_drift,
    .drift_precise = ns__avx2_drift_precise,
    .step_update = ns__avx2_step_update,
    .widen = widen,
    .narrow = narrow,
    .find_outside = find_outside,
};
