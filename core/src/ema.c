/* ema.c - PyTorch's BatchNorm running statistics (EMA or cumulative average).
 *
 * The debiased view is kept already divided by its weight (1 - decay): with
 * w_t = 1 - prod(1 - f), the zero-start average z_t = (1-f) z_{t-1} + f x_t
 * divided by w_t obeys d_t = (1 - a) d_{t-1} + a x_t with a = f / w_t, and
 * w_t = (1 - f) w_{t-1} + f is computed without cancellation. The first
 * applied step has a = 1, so the view then equals the step's values exactly
 * (z / (1 - decay) evaluated literally would be off by rounding). */
#include <normstat/core.h>

#include <math.h>

void ns_ema_init(ns_ema_t *ema, size_t channels)
{
    for (size_t c = 0; c < channels; c++) {
        ema->running_mean[c] = 0.0;
        ema->running_var[c] = 1.0;
    }
    if (ema->zero_mean != NULL && ema->zero_var != NULL) {
        for (size_t c = 0; c < channels; c++) {
            ema->zero_mean[c] = 0.0;
            ema->zero_var[c] = 0.0;
        }
    }
    ema->decay = 1.0;
    ema->num_batches_tracked = 0;
}

int ns_ema_update(ns_ema_t *ema, size_t channels, uint64_t n, const double *mean, const double *var,
                  double momentum)
{
    if (ema == NULL || ema->running_mean == NULL || ema->running_var == NULL)
        return NS_EINVAL;
    if ((ema->zero_mean == NULL) != (ema->zero_var == NULL))
        return NS_EINVAL;
    if (channels > 0 && (mean == NULL || var == NULL))
        return NS_EINVAL;
    if (momentum != NS_MOMENTUM_CUMULATIVE && !(momentum >= 0.0 && momentum <= 1.0))
        return NS_EINVAL;
    if (n < 2)
        return 0; /* PyTorch refuses a training batch of one value */

    ema->num_batches_tracked += 1;
    const double f =
        momentum == NS_MOMENTUM_CUMULATIVE ? 1.0 / (double)ema->num_batches_tracked : momentum;
    const double keep = 1.0 - f;
    const double bessel = (double)n / (double)(n - 1);

    /* Distinct arrays (restrict) let the loops vectorise, and the debiased
     * view is updated in the same pass; each element still sees the same
     * operations in the same order, so results do not change (C11 mode keeps
     * a*b+c uncontracted). */
    double *restrict rm = ema->running_mean;
    double *restrict rv = ema->running_var;
    const double *restrict xm = mean;
    const double *restrict xv = var;
    if (ema->zero_mean != NULL && f > 0.0) {
        const double weight = keep * (1.0 - ema->decay) + f;
        const double a = f / weight;
        const double b = 1.0 - a;
        double *restrict zm = ema->zero_mean;
        double *restrict zv = ema->zero_var;
#pragma omp simd
        for (size_t c = 0; c < channels; c++) {
            const double unbiased = xv[c] * bessel;
            rm[c] = keep * rm[c] + f * xm[c];
            rv[c] = keep * rv[c] + f * unbiased;
            zm[c] = b * zm[c] + a * xm[c];
            zv[c] = b * zv[c] + a * unbiased;
        }
    } else {
#pragma omp simd
        for (size_t c = 0; c < channels; c++) {
            rm[c] = keep * rm[c] + f * xm[c];
            rv[c] = keep * rv[c] + f * (xv[c] * bessel);
        }
    }
    ema->decay *= keep;
    return 1;
}

int ns_ema_debiased(const ns_ema_t *ema, size_t channels, double *mean, double *var)
{
    if (ema == NULL || ema->zero_mean == NULL || ema->zero_var == NULL)
        return NS_EINVAL;
    if (channels > 0 && (mean == NULL || var == NULL))
        return NS_EINVAL;
    const int initial = ema->decay == 1.0;
    for (size_t c = 0; c < channels; c++) {
        mean[c] = initial ? 0.0 : ema->zero_mean[c];
        var[c] = initial ? 1.0 : ema->zero_var[c];
    }
    return 0;
}
