/* kernel_avx2.h - what the two AVX2+FMA files share (kernel_avx2.c: moments,
 * combination, conversions, scans, and the table; kernel_avx2_step.c: the
 * drift and the fused step update). Included only by files built with
 * -mavx2 -mfma. */
#ifndef NS_KERNEL_AVX2_H
#define NS_KERNEL_AVX2_H

#include <immintrin.h>

#include "kernels.h"

/* l0 + l1 + l2 + l3 in the fixed order (l0 + l1) + (l2 + l3). */
static inline double hsum(__m256d v)
{
    __m128d lo = _mm256_castpd256_pd128(v), hi = _mm256_extractf128_pd(v, 1);
    double l[4];
    _mm_storeu_pd(l, lo);
    _mm_storeu_pd(l + 2, hi);
    return (l[0] + l[1]) + (l[2] + l[3]);
}

/* The table's drift, drift_precise and step_update (kernels.h contracts). */
void ns__avx2_drift(const double *em, const double *ev, const double *pm, const double *pv,
                    size_t channels, double eps, ns_drift_t *dst);
void ns__avx2_drift_precise(const double *em, const double *ev, const double *pm, const double *m2,
                            double denom, size_t channels, double eps, ns_drift_t *dst);
void ns__avx2_step_update(const double *mean, const double *var, size_t channels, double bessel,
                          const ns__ema_pass_t *ema, size_t n_ema, const ns__precise_pass_t *p,
                          const ns__record_pass_t *r);

#endif
