/* step_update.c - one step's statistics applied to several populations in
 * one pass: the EMAs (a domain's and the pooled one share a single-domain
 * step's arrays) and a PreciseBN accumulator, through the kernel table. The
 * coefficients are those ns_ema_update() and ns_precise_add() compute, and
 * the kernel applies them in their order, so the state ends in the same
 * bits as after those calls one by one (tests/unit/core/test_step_update.c). */
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

int ns_step_update(ns_ema_t *const *ema, size_t n_ema, ns_precise_t *precise, size_t channels,
                   uint64_t n, const double *mean, const double *var, double momentum, int *applied)
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
    if (k > 0 || p.mean != NULL) {
        const double bessel = n >= 2 ? (double)n / (double)(n - 1) : 0.0;
        ns__kernels()->step_update(mean, var, channels, bessel, passes, k, &p);
    }
    if (p.mean != NULL) {
        precise->n += n;
        precise->num_batches += 1;
    }
    return 0;
}
