/* drift.c - how far an EMA is from the population statistics (ns_drift). */
#include <normstat/core.h>

#include "kernels.h"

/* The range of eps under which the kernels' ratio stays a normal double. */
#define DRIFT_EPS_MIN 0x1p-500
#define DRIFT_EPS_MAX 1.0

int ns_drift(const double *ema_mean, const double *ema_var, const double *pop_mean,
             const double *pop_var, size_t channels, double eps, ns_drift_t *dst)
{
    if (ema_mean == NULL || ema_var == NULL || pop_mean == NULL || pop_var == NULL || dst == NULL ||
        channels == 0 || !(eps >= DRIFT_EPS_MIN && eps <= DRIFT_EPS_MAX))
        return NS_EINVAL;
    ns__kernels()->drift(ema_mean, ema_var, pop_mean, pop_var, channels, eps, dst);
    return 0;
}

int ns_drift_precise(const double *ema_mean, const double *ema_var, const ns_precise_t *acc,
                     size_t channels, double eps, ns_drift_t *dst)
{
    if (acc == NULL || acc->mean == NULL || acc->m2 == NULL)
        return NS_EINVAL;
    if (acc->n == 0)
        return NS_ENOTFOUND;
    if (ema_mean == NULL || ema_var == NULL || dst == NULL || channels == 0 || acc->n == 1 ||
        !(eps >= DRIFT_EPS_MIN && eps <= DRIFT_EPS_MAX))
        return NS_EINVAL;
    /* The denominator ns_precise_read() divides by for unbiased statistics. */
    const double denom = (double)(acc->n - 1);
    ns__kernels()->drift_precise(ema_mean, ema_var, acc->mean, acc->m2, denom, channels, eps, dst);
    return 0;
}
