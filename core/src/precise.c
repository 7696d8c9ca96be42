/* precise.c - PreciseBN accumulators: every sample of every step weighs the same. */
#include <normstat/core.h>

/* Chan et al.: merges (nb, mean_b, m2_b) into (na, mean_a, m2_a) per channel.
 * 'var_b' is m2_b / nb when 'b_is_var', else m2_b itself. */
static void merge_arrays(double *restrict mean_a, double *restrict m2_a, uint64_t na,
                         const double *restrict mean_b, const double *restrict b2, int b_is_var,
                         uint64_t nb, size_t channels)
{
    const double dn_b = (double)nb;
    if (na == 0) {
        for (size_t c = 0; c < channels; c++) {
            mean_a[c] = mean_b[c];
            m2_a[c] = b_is_var ? b2[c] * dn_b : b2[c];
        }
        return;
    }
    const double dn = (double)(na + nb);
    const double wb = dn_b / dn;          /* share of the new samples */
    const double cross = (double)na * wb; /* na nb / n */
    /* One loop per form of b, so each vectorises (restrict + simd); every
     * element sees the same operations in the same order as before. */
    if (b_is_var) {
#pragma omp simd
        for (size_t c = 0; c < channels; c++) {
            const double delta = mean_b[c] - mean_a[c];
            const double m2b = b2[c] * dn_b;
            mean_a[c] += delta * wb;
            m2_a[c] += m2b + delta * delta * cross;
        }
    } else {
#pragma omp simd
        for (size_t c = 0; c < channels; c++) {
            const double delta = mean_b[c] - mean_a[c];
            mean_a[c] += delta * wb;
            m2_a[c] += b2[c] + delta * delta * cross;
        }
    }
}

void ns_precise_init(ns_precise_t *acc, size_t channels)
{
    for (size_t c = 0; c < channels; c++) {
        acc->mean[c] = 0.0;
        acc->m2[c] = 0.0;
    }
    acc->n = 0;
    acc->num_batches = 0;
}

int ns_precise_add(ns_precise_t *acc, size_t channels, uint64_t n, const double *mean,
                   const double *var)
{
    if (acc == NULL || acc->mean == NULL || acc->m2 == NULL || mean == NULL || var == NULL)
        return NS_EINVAL;
    if (n == 0)
        return 0;
    if (acc->n > UINT64_MAX - n || acc->num_batches == UINT64_MAX)
        return NS_EINVAL;
    merge_arrays(acc->mean, acc->m2, acc->n, mean, var, 1, n, channels);
    acc->n += n;
    acc->num_batches += 1;
    return 0;
}

int ns_precise_merge(ns_precise_t *dst, const ns_precise_t *src, size_t channels)
{
    if (dst == NULL || src == NULL || dst->mean == NULL || dst->m2 == NULL || src->mean == NULL ||
        src->m2 == NULL)
        return NS_EINVAL;
    if (dst->n > UINT64_MAX - src->n || dst->num_batches > UINT64_MAX - src->num_batches)
        return NS_EINVAL;
    if (src->n > 0)
        merge_arrays(dst->mean, dst->m2, dst->n, src->mean, src->m2, 0, src->n, channels);
    dst->n += src->n;
    dst->num_batches += src->num_batches;
    return 0;
}

int ns_precise_read(const ns_precise_t *acc, size_t channels, int biased, double *mean, double *var)
{
    if (acc == NULL || acc->mean == NULL || acc->m2 == NULL || mean == NULL || var == NULL)
        return NS_EINVAL;
    if (acc->n == 0)
        return NS_ENOTFOUND;
    if (!biased && acc->n == 1)
        return NS_EINVAL;
    const double denom = biased ? (double)acc->n : (double)(acc->n - 1);
    for (size_t c = 0; c < channels; c++) {
        mean[c] = acc->mean[c];
        var[c] = acc->m2[c] / denom;
    }
    return 0;
}
