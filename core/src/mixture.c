/* mixture.c - moments of a weighted mixture of per-domain statistics. */
#include <normstat/core.h>

#include <math.h>

int ns_mixture(const ns_component_t *src, size_t src_len, size_t channels, double *mean,
               double *var)
{
    if (src == NULL || src_len == 0 || channels == 0 || mean == NULL || var == NULL)
        return NS_EINVAL;
    double total = 0.0;
    for (size_t d = 0; d < src_len; d++) {
        double w = src[d].weight;
        if (!isfinite(w) || w < 0.0 || src[d].mean == NULL || src[d].var == NULL)
            return NS_EINVAL;
        total += w;
    }
    if (!(total > 0.0) || !isfinite(total))
        return NS_EINVAL;

    for (size_t c = 0; c < channels; c++) {
        double m = 0.0;
        for (size_t d = 0; d < src_len; d++)
            m += (src[d].weight / total) * src[d].mean[c];
        /* sum w (var + mean_d^2) - mean^2, rewritten without cancellation. */
        double v = 0.0;
        for (size_t d = 0; d < src_len; d++) {
            double delta = src[d].mean[c] - m;
            v += (src[d].weight / total) * (src[d].var[c] + delta * delta);
        }
        mean[c] = m;
        var[c] = v;
    }
    return 0;
}
