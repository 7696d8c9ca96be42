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
