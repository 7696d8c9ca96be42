/* step_update.c - one step's statistics applied to several populations in
 * one pass: the EMAs (a domain's and the pooled one share a single-domain
 * step's arrays) and a PreciseBN accumulator, through the kernel table. The
 * coefficients are those ns_ema_update() and ns_precise_add() compute, and
 * the kernel applies them in their order, so the state ends in the same
 * bits as after those calls one by one (tests/unit/core/test_step_update.c).
 * With a record, the pass also writes a history entry's float32 values and
 * the drift ns_narrow_f32() and ns_drift_precise() would compute after it. */
#include <normstat/core.h>

#include "kernels.h"

/* What ns_ema_update() checks, without changing anything. */
static int ema_ok(const ns_ema_t *ema, size_t channels)
{
    (void)channels;
    return ema != NULL && ema->running_mean != NULL && ema->running_var != NULL &&
           (ema->zero_mean == NULL) == (ema->zero_var == NULL);
}

/* The step's coefficients for one EMA, advancing its scalars as
 * ns_ema_update() does. */
static void ema_pass(ns_ema_t *ema, double momentum, ns__ema_pass_t *dst)
{
    ema->num_batches_tracked += 1;
    const double f =
        momentum == NS_MOMENTUM_CUMULATIVE ? 1.0 / (double)ema->num_batches_tracked : momentum;
    const double keep = 1.0 - f;
    dst->rm = ema->running_mean;
    dst->rv = ema->running_var;
    dst->keep = keep;
    dst->f = f;
    dst->zm = dst->zv = NULL;
    dst->a = dst->b = 0.0;
    if (ema->zero_mean != NULL && f > 0.0) {
        const double weight = keep * (1.0 - ema->decay) + f;
        dst->a = f / weight;
        dst->b = 1.0 - dst->a;
        dst->zm = ema->zero_mean;
        dst->zv = ema->zero_var;
    }
    ema->decay *= keep;
}

/* The range of eps ns_drift() accepts (drift.c). */
#define DRIFT_EPS_MIN 0x1p-500
#define DRIFT_EPS_MAX 1.0

/* What ns_step_update_record() refuses in a record. */
static int record_ok(const ns_step_record_t *rec, size_t channels)
{
    if (rec == NULL)
        return 1;
    const ns_ema_t *e = rec->ema;
    if (e == NULL || e->running_mean == NULL || e->running_var == NULL ||
        (rec->debiased && (e->zero_mean == NULL || e->zero_var == NULL)))
        return 0;
    if (channels > 0 && (rec->batch_mean == NULL || rec->batch_var == NULL ||
                         rec->ema_mean == NULL || rec->ema_var == NULL))
        return 0;
    const ns_precise_t *acc = rec->precise;
    return acc == NULL || (acc->mean != NULL && acc->m2 != NULL && rec->eps >= DRIFT_EPS_MIN &&
                           rec->eps <= DRIFT_EPS_MAX);
}

/* The record's kernel side, once the passes have advanced the EMAs'
 * scalars: the served arrays (ns_ema_debiased(): the initial view while
 * decay is 1) and the drift's denominator after the step. */
static void record_pass(ns_step_record_t *rec, const ns_precise_t *updated, uint64_t n,
                        size_t channels, ns__record_pass_t *dst)
{
    const ns_ema_t *e = rec->ema;
    *dst = (ns__record_pass_t){
        rec->batch_mean, rec->batch_var, rec->ema_mean, rec->ema_var, e->running_mean,
        e->running_var,  NULL,           NULL,          1.0,          rec->eps,
        &rec->drift};
    if (rec->debiased) {
        dst->em = e->decay == 1.0 ? NULL : e->zero_mean;
        dst->ev = e->decay == 1.0 ? NULL : e->zero_var;
    }
    const ns_precise_t *acc = rec->precise;
    uint64_t after = acc == NULL ? 0 : acc->n + (acc == updated ? n : 0);
    rec->has_drift = channels > 0 && after >= 2;
    if (rec->has_drift) {
        dst->pm = acc->mean;
        dst->pm2 = acc->m2;
        dst->denom = (double)(after - 1); /* ns_precise_read()'s, unbiased */
    }
}

int ns_step_update(ns_ema_t *const *ema, size_t n_ema, ns_precise_t *precise, size_t channels,
                   uint64_t n, const double *mean, const double *var, double momentum, int *applied)
{
    return ns_step_update_record(ema, n_ema, precise, channels, n, mean, var, momentum, applied,
                                 NULL);
}

int ns_step_update_record(ns_ema_t *const *ema, size_t n_ema, ns_precise_t *precise,
                          size_t channels, uint64_t n, const double *mean, const double *var,
                          double momentum, int *applied, ns_step_record_t *rec)
{
    if (n_ema > NS_STEP_EMA_MAX || (n_ema > 0 && (ema == NULL || applied == NULL)))
        return NS_EINVAL;
    if (channels > 0 && (mean == NULL || var == NULL))
        return NS_EINVAL;
    for (size_t e = 0; e < n_ema; e++)
        if (!ema_ok(ema[e], channels))
            return NS_EINVAL;
    if (n_ema > 0 && momentum != NS_MOMENTUM_CUMULATIVE && !(momentum >= 0.0 && momentum <= 1.0))
        return NS_EINVAL;
    if (precise != NULL &&
        (precise->mean == NULL || precise->m2 == NULL ||
         (n > 0 && (precise->n > UINT64_MAX - n || precise->num_batches == UINT64_MAX))))
        return NS_EINVAL;
    if (!record_ok(rec, channels))
        return NS_EINVAL;

    ns__ema_pass_t passes[NS_STEP_EMA_MAX];
    size_t k = 0;
    for (size_t e = 0; e < n_ema; e++) {
        applied[e] = n >= 2; /* PyTorch refuses a training batch of one value */
        if (applied[e])
            ema_pass(ema[e], momentum, &passes[k++]);
    }
    ns__precise_pass_t p = {0};
    if (precise != NULL && n > 0) {
        const double dn_b = (double)n;
        p.mean = precise->mean;
        p.m2 = precise->m2;
        p.empty = precise->n == 0;
        p.dn_b = dn_b;
        if (!p.empty) {
            p.wb = dn_b / (double)(precise->n + n);
            p.cross = (double)precise->n * p.wb;
        }
    }
    ns__record_pass_t r;
    if (rec != NULL)
        record_pass(rec, p.mean != NULL ? precise : NULL, n, channels, &r);
    if (k > 0 || p.mean != NULL || rec != NULL) {
        const double bessel = n >= 2 ? (double)n / (double)(n - 1) : 0.0;
        ns__kernels()->step_update(mean, var, channels, bessel, passes, k, &p,
                                   rec != NULL ? &r : NULL);
    }
    if (p.mean != NULL) {
        precise->n += n;
        precise->num_batches += 1;
    }
    return 0;
}
