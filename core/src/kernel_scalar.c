/* kernel_scalar.c - the reference kernel table: plain C, one accumulator, no ISA flags.
 *
 * Every other table is tested against this one, so it is written as directly
 * as possible:
 *  - block and row moments are two-pass. Pass 1 sums (x - x0) with x0 the
 *    first value, so the running sum stays small and the mean is accurate to
 *    about one ulp even when |mean| >> std; pass 2 sums (x - mean)^2 over the
 *    same (cached) values. (kernel_avx2.c estimates the mean in float32
 *    instead and corrects it in pass 2; combine it does exactly as here.)
 *  - drift uses libm's log() and sqrt(), summing channel after channel. */
#include "kernels.h"

#include <math.h>

static void block_moments(const float *src, size_t seg_len, size_t nseg, size_t stride,
                          double *mean, double *m2)
{
    /* Contiguous segments are one long segment. */
    if (stride == seg_len) {
        seg_len *= nseg;
        nseg = 1;
    }
    const double x0 = src[0];
    const double count = (double)seg_len * (double)nseg;

    double s = 0.0;
    for (size_t i = 0; i < nseg; i++) {
        const float *p = src + i * stride;
        for (size_t j = 0; j < seg_len; j++)
            s += (double)p[j] - x0;
    }
    const double mu = x0 + s / count;

    double q = 0.0;
    for (size_t i = 0; i < nseg; i++) {
        const float *p = src + i * stride;
        for (size_t j = 0; j < seg_len; j++) {
            double d = (double)p[j] - mu;
            q += d * d;
        }
    }
    *mean = mu;
    *m2 = q;
}

/* Row-major so memory is read in order; the outputs serve as accumulators:
 * m2[] holds x0 (row 0) during pass 1, mean[] the running sum. */
static void rows_moments(const float *src, size_t rows, size_t width, size_t stride, double *mean,
                         double *m2)
{
    for (size_t c = 0; c < width; c++) {
        m2[c] = src[c];
        mean[c] = 0.0;
    }
    for (size_t r = 0; r < rows; r++) {
        const float *p = src + r * stride;
        for (size_t c = 0; c < width; c++)
            mean[c] += (double)p[c] - m2[c];
    }
    const double count = (double)rows;
    for (size_t c = 0; c < width; c++) {
        mean[c] = m2[c] + mean[c] / count;
        m2[c] = 0.0;
    }
    for (size_t r = 0; r < rows; r++) {
        const float *p = src + r * stride;
        for (size_t c = 0; c < width; c++) {
            double d = (double)p[c] - mean[c];
            m2[c] += d * d;
        }
    }
}

/* Channel tiles keep mean[tile] and the tile of every arrival's mean in cache
 * between the two passes. */
#define COMBINE_TILE 1024

static void combine(const ns_arrival_t *src, size_t src_len, size_t channels, double total,
                    double *mean, double *var)
{
    for (size_t c0 = 0; c0 < channels; c0 += COMBINE_TILE) {
        size_t c1 = channels - c0 < COMBINE_TILE ? channels : c0 + COMBINE_TILE;

        for (size_t c = c0; c < c1; c++)
            mean[c] = 0.0;
        for (size_t w = 0; w < src_len; w++) {
            const double nw = (double)src[w].n;
            const float *mw = src[w].mean;
            for (size_t c = c0; c < c1; c++)
                mean[c] += nw * (double)mw[c];
        }
        for (size_t c = c0; c < c1; c++) {
            mean[c] /= total;
            var[c] = 0.0;
        }
        for (size_t w = 0; w < src_len; w++) {
            const double nw = (double)src[w].n;
            const float *mw = src[w].mean, *vw = src[w].var;
            for (size_t c = c0; c < c1; c++) {
                double d = (double)mw[c] - mean[c];
                var[c] += nw * ((double)vw[c] + d * d);
            }
        }
        for (size_t c = c0; c < c1; c++)
            var[c] /= total;
    }
}

/* Drift's running sums and first maxima, channel after channel; a maximum
 * moves only on a strictly larger value, so it keeps its first channel. */
typedef struct drift_acc_s {
    double sm, sv, mm, mv;
    size_t im, iv;
} drift_acc_t;

static const drift_acc_t drift_start = {0.0, 0.0, -1.0, -1.0, 0, 0};

static inline void drift_add(drift_acc_t *a, size_t c, double em, double ev, double pm, double pv,
                             double eps)
{
    const double dm = fabs(em - pm) / sqrt(pv + eps);
    const double dv = fabs(log((ev + eps) / (pv + eps)));
    a->sm += dm;
    a->sv += dv;
    if (dm > a->mm) {
        a->mm = dm;
        a->im = c;
    }
    if (dv > a->mv) {
        a->mv = dv;
        a->iv = c;
    }
}

static void drift_finish(const drift_acc_t *a, size_t channels, ns_drift_t *dst)
{
    dst->mean_avg = a->sm / (double)channels;
    dst->mean_max = a->mm;
    dst->mean_max_channel = a->im;
    dst->var_avg = a->sv / (double)channels;
    dst->var_max = a->mv;
    dst->var_max_channel = a->iv;
}

/* The drift loop, one pass over the channels; pv[c] is pv_or_m2[c], or
 * pv_or_m2[c] / denom when 'in_place' (a constant in each caller, so each
 * gets its own loop). */
static inline void drift_loop(const double *em, const double *ev, const double *pm,
                              const double *pv_or_m2, double denom, int in_place, size_t channels,
                              double eps, ns_drift_t *dst)
{
    drift_acc_t a = drift_start;
    for (size_t c = 0; c < channels; c++) {
        const double pv = in_place ? pv_or_m2[c] / denom : pv_or_m2[c];
        drift_add(&a, c, em[c], ev[c], pm[c], pv, eps);
    }
    drift_finish(&a, channels, dst);
}

static void drift(const double *em, const double *ev, const double *pm, const double *pv,
                  size_t channels, double eps, ns_drift_t *dst)
{
    drift_loop(em, ev, pm, pv, 1.0, 0, channels, eps, dst);
}

static void drift_precise(const double *em, const double *ev, const double *pm, const double *m2,
                          double denom, size_t channels, double eps, ns_drift_t *dst)
{
    drift_loop(em, ev, pm, m2, denom, 1, channels, eps, dst);
}

/* Channel after channel: the update, the record's values, the drift's sums
 * (drift_precise()'s operations on the values just written). */
static void step_update(const double *mean, const double *var, size_t channels, double bessel,
                        const ns__ema_pass_t *ema, size_t n_ema, const ns__precise_pass_t *p,
                        const ns__record_pass_t *r)
{
    if (r == NULL || r->pm == NULL) {
        ns__step_update_range(mean, var, 0, channels, bessel, ema, n_ema, p, r);
        return;
    }
    drift_acc_t a = drift_start;
    for (size_t c = 0; c < channels; c++) {
        ns__step_update_one(mean, var, c, bessel, ema, n_ema, p, r);
        const double em = r->em != NULL ? r->em[c] : 0.0, ev = r->ev != NULL ? r->ev[c] : 1.0;
        drift_add(&a, c, em, ev, r->pm[c], r->pm2[c] / r->denom, r->eps);
    }
    drift_finish(&a, channels, r->drift);
}

static void widen(double *dst, const float *src, size_t n)
{
    for (size_t i = 0; i < n; i++)
        dst[i] = src[i];
}

static void narrow(float *dst, const double *src, size_t n)
{
    for (size_t i = 0; i < n; i++)
        dst[i] = (float)src[i];
}

static size_t find_outside(const float *src, size_t src_len, float lo, float hi)
{
    for (size_t i = 0; i < src_len; i++)
        if (!(lo <= src[i] && src[i] <= hi)) /* false for NaN */
            return i;
    return src_len;
}

const ns_kernels_t ns__kernels_scalar = {
    .name = "scalar",
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
