/* kernels.h - the table of ISA-specific kernels behind libnscore (internal).
 *
 * Every ISA (kernel_scalar.c; kernel_avx2.c with kernel_avx2_step.c)
 * defines one table with the same signatures; dispatch.c picks one table
 * once per process. Kernels never allocate and never check arguments: the
 * public wrappers do. The scalar table is the reference; the vector kernels may differ from it only by
 * rounding (a different but fixed summation order), bounded as documented in
 * tests/unit/core/test_kernels.c. */
#ifndef NS_CORE_KERNELS_H
#define NS_CORE_KERNELS_H

#include <stddef.h>

#include <normstat/core.h>

/* One EMA's share of a step update: its arrays and the step's coefficients
 * (ema.c has the formulas). zm == NULL: no zero-start arrays to update. */
typedef struct ns__ema_pass_s {
    double *rm, *rv, *zm, *zv;
    double keep, f, a, b;
} ns__ema_pass_t;

/* A PreciseBN accumulator's share (precise.c): mean == NULL for none;
 * empty: the accumulator had no samples (set, not merged). */
typedef struct ns__precise_pass_s {
    double *mean, *m2;
    int empty;
    double dn_b, wb, cross;
} ns__precise_pass_t;

/* What a step update also records in its pass (step_update.c): the step's
 * values and an EMA's, rounded to float32, and the drift of that EMA from
 * an accumulator's unbiased statistics. em, ev and pm, pm2 are read after
 * the channel's update (they may be arrays the pass updates). em == NULL:
 * the EMA's initial debiased view (0 and 1 in every channel). pm == NULL:
 * no drift (drift is then not written). */
typedef struct ns__record_pass_s {
    float *out_bm, *out_bv, *out_em, *out_ev;
    const double *em, *ev;
    const double *pm, *pm2;
    double denom, eps; /* pv = pm2 / denom */
    ns_drift_t *drift;
} ns__record_pass_t;

/* The step update's reference operations on channel c: the scalar kernel
 * over every channel, the AVX2 one over the channels its vectors leave
 * (both compiled with -std=c11, so no contraction: the same bits). Then the
 * record's float32 values of the channel (r == NULL: none). */
static inline void ns__step_update_one(const double *mean, const double *var, size_t c,
                                       double bessel, const ns__ema_pass_t *ema, size_t n_ema,
                                       const ns__precise_pass_t *p, const ns__record_pass_t *r)
{
    const double xm = mean[c], xv = var[c];
    const double unbiased = xv * bessel;
    for (size_t e = 0; e < n_ema; e++) {
        const ns__ema_pass_t *q = &ema[e];
        q->rm[c] = q->keep * q->rm[c] + q->f * xm;
        q->rv[c] = q->keep * q->rv[c] + q->f * unbiased;
        if (q->zm != NULL) {
            q->zm[c] = q->b * q->zm[c] + q->a * xm;
            q->zv[c] = q->b * q->zv[c] + q->a * unbiased;
        }
    }
    if (p->mean != NULL) {
        if (p->empty) {
            p->mean[c] = xm;
            p->m2[c] = xv * p->dn_b;
        } else {
            const double delta = xm - p->mean[c];
            const double m2b = xv * p->dn_b;
            p->mean[c] += delta * p->wb;
            p->m2[c] += m2b + delta * delta * p->cross;
        }
    }
    if (r != NULL) {
        r->out_bm[c] = (float)xm;
        r->out_bv[c] = (float)xv;
        r->out_em[c] = r->em != NULL ? (float)r->em[c] : 0.0f;
        r->out_ev[c] = r->ev != NULL ? (float)r->ev[c] : 1.0f;
    }
}

/* ns__step_update_one() over channels [c0, c1). */
static inline void ns__step_update_range(const double *mean, const double *var, size_t c0,
                                         size_t c1, double bessel, const ns__ema_pass_t *ema,
                                         size_t n_ema, const ns__precise_pass_t *p,
                                         const ns__record_pass_t *r)
{
    for (size_t c = c0; c < c1; c++)
        ns__step_update_one(mean, var, c, bessel, ema, n_ema, p, r);
}

typedef struct ns_kernels_s {
    const char *name;

    /* Two-pass moments of one block: 'nseg' segments of 'seg_len' floats,
     * segment i starting at src + i * stride (stride >= seg_len). The block
     * (nseg * seg_len values, > 0) is small enough to stay in cache, so the
     * second pass costs no memory bandwidth.
     *   mean = sum x / n;  m2 = sum (x - mean)^2 */
    void (*block_moments)(const float *src, size_t seg_len, size_t nseg, size_t stride,
                          double *mean, double *m2);

    /* Two-pass moments of 'width' adjacent channels over 'rows' rows
     * (channels-last layout; row r starts at src + r * stride), rows > 0:
     *   mean[c] = sum_r x[r][c] / rows;  m2[c] = sum_r (x[r][c] - mean[c])^2 */
    void (*rows_moments)(const float *src, size_t rows, size_t width, size_t stride,
                         double *mean, double *m2);

    /* SyncBN combination over channels [0, channels) of arrivals that all
     * have n > 0; 'total' = sum n. Arrivals are visited in array order.
     *   mean = sum n_w mean_w / total
     *   var  = sum n_w (var_w + (mean_w - mean)^2) / total */
    void (*combine)(const ns_arrival_t *src, size_t src_len, size_t channels, double total,
                    double *mean, double *var);

    /* Drift of an EMA from population statistics over channels [0, channels)
     * (channels > 0), as ns_drift_t defines it:
     *   dm = |em - pm| / sqrt(pv + eps);  dv = |log((ev + eps) / (pv + eps))|
     *   averages = sum / channels; maxima with their first channel. */
    void (*drift)(const double *em, const double *ev, const double *pm, const double *pv,
                  size_t channels, double eps, ns_drift_t *dst);

    /* drift() with pv[c] = m2[c] / denom evaluated in the pass (a PreciseBN
     * accumulator read in place): the same bits as drift() of those pv. */
    void (*drift_precise)(const double *em, const double *ev, const double *pm, const double *m2,
                          double denom, size_t channels, double eps, ns_drift_t *dst);

    /* One step's statistics (mean, biased var) applied to 'n_ema' EMAs and
     * one accumulator in a single pass over the channels, each element
     * seeing the operations ns_ema_update() and ns_precise_add() apply, in
     * their order (no contraction): the same bits.
     *   unbiased = var * bessel
     *   rm = keep rm + f mean;  rv = keep rv + f unbiased
     *   zm = b zm + a mean;     zv = b zv + a unbiased          (if zm)
     *   empty: pm = mean; pm2 = var dn_b
     *   else:  d = mean - pm; pm += d wb; pm2 += var dn_b + d d cross
     * and, with 'record' (NULL: none), in the same pass: the step's and the
     * served EMA's values as float32 (narrow()'s bits), and when record->pm
     * the drift as drift_precise() of the arrays after the update would
     * compute it, in the same bits. */
    void (*step_update)(const double *mean, const double *var, size_t channels, double bessel,
                        const ns__ema_pass_t *ema, size_t n_ema, const ns__precise_pass_t *precise,
                        const ns__record_pass_t *record);

    /* dst[i] = src[i], float32 widened to double (exact). */
    void (*widen)(double *dst, const float *src, size_t n);

    /* dst[i] = (float)src[i], rounded to nearest (the C conversion). */
    void (*narrow)(float *dst, const double *src, size_t n);

    /* Index of the first value x with !(lo <= x && x <= hi) (NaN included),
     * or src_len. Non-finite values are those outside [-FLT_MAX, FLT_MAX]. */
    size_t (*find_outside)(const float *src, size_t src_len, float lo, float hi);
} ns_kernels_t;

extern const ns_kernels_t ns__kernels_scalar;
#if defined(__x86_64__) || defined(__i386__)
extern const ns_kernels_t ns__kernels_avx2;
#endif

/* ns__cpu_has_avx2_fma() : 1 if the CPU and the OS support AVX2 and FMA. */
int ns__cpu_has_avx2_fma(void);

/* ns__kernels() : the table chosen for this process (decided once). */
const ns_kernels_t *ns__kernels(void);

#endif /* NS_CORE_KERNELS_H */
