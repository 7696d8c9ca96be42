/* narrow.c - double arrays rounded to float32 (the history keeps float32
 * copies of each applied step), through the kernel table. */
#include <normstat/core.h>

#include "kernels.h"

void ns_narrow_f32(float *dst, const double *src, size_t n)
{
    if (dst != NULL && src != NULL && n > 0)
        ns__kernels()->narrow(dst, src, n);
}
