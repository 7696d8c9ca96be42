/* kernel_avx2_step.c - the AVX2+FMA drift and fused step update of the
 * kernel table (built with -mavx2 -mfma, like kernel_avx2.c, whose header
 * comment gives how each kernel relates to the scalar reference). */
#include "kernel_avx2.h"

#include <math.h>
#include <stdint.h>

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

void ns__avx2_drift(const double *em, const double *ev, const double *pm, const double *pv,
                    size_t channels, double eps, ns_drift_t *dst)
{
    drift_loop(em, ev, pm, pv, 1.0, 0, channels, eps, dst);
}

/* drift() of pv = m2 / denom, divided in the lanes (IEEE division: the
 * bits of the scalar quotient). */
void ns__avx2_drift_precise(const double *em, const double *ev, const double *pm, const double *m2,
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

void ns__avx2_step_update(const double *mean, const double *var, size_t channels, double bessel,
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
