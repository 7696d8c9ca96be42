/* validate.c - input checks of reported statistics, through the kernel table. */
#include <normstat/core.h>

#include "kernels.h"

size_t ns_find_nonfinite(const float *src, size_t src_len)
{
    if (src == NULL || src_len == 0)
        return 0; /* nothing to scan, or nothing that can be trusted */
    return ns__kernels()->find_nonfinite(src, src_len);
}

size_t ns_find_bad_variance(const float *src, size_t src_len)
{
    if (src == NULL || src_len == 0)
        return 0; /* nothing to scan, or nothing that can be trusted */
    return ns__kernels()->find_bad_variance(src, src_len);
}

size_t ns_find_outside(const float *src, size_t src_len, float lo, float hi)
{
    if (src == NULL || src_len == 0)
        return 0; /* nothing to scan, or nothing that can be trusted */
    return ns__kernels()->find_outside(src, src_len, lo, hi);
}
