/* variance.c - conversions between biased and unbiased (Bessel) variances. */
#include <normstat/core.h>

int ns_var_unbias(double *dst, const double *src, size_t channels, uint64_t n)
{
    if (n < 2)
        return NS_EINVAL;
    if (channels > 0 && (dst == NULL || src == NULL))
        return NS_EINVAL;
    /* One factor for all channels, as PyTorch scales by n / (n - 1). */
    const double factor = (double)n / (double)(n - 1);
    for (size_t c = 0; c < channels; c++)
        dst[c] = src[c] * factor;
    return 0;
}

int ns_var_bias_f32(float *var, size_t channels, uint64_t n)
{
    if (var == NULL && channels > 0)
        return NS_EINVAL;
    if (n <= 1) {
        for (size_t c = 0; c < channels; c++)
            var[c] = 0.0f;
        return 0;
    }
    const double factor = (double)(n - 1) / (double)n;
    for (size_t c = 0; c < channels; c++)
        var[c] = (float)((double)var[c] * factor);
    return 0;
}
