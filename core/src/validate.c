/* validate.c - input checks of reported statistics, through the kernel table. */
#include <float.h>

#include <normstat/core.h>

#include "kernels.h"

/* Every check is a range check: a float is finite iff it lies in
 * [-FLT_MAX, FLT_MAX], a valid variance iff in [0, FLT_MAX] (-0.0 included). */
size_t ns_find_nonfinite(const float *src, size_t src_len)
{
    return ns_find_outside(src, src_len, -FLT_MAX, FLT_MAX);
}

size_t ns_find_bad_variance(const float *src, size_t src_len)
{
    return ns_find_outside(src, src_len, 0.0f, FLT_MAX);
}

size_t ns_find_outside(const float *src, size_t src_len, float lo, float hi)
{
    if (src == NULL || src_len == 0)
        return 0; /* nothing to scan, or nothing that can be trusted */
    return ns__kernels()->find_outside(src, src_len, lo, hi);
}
