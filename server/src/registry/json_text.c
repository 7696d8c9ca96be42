/* json_text.c - JSON numbers written as text directly (json_text.h). */
#include "json_text.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

int nsd_json_real(ns_buf_t *dst, double v)
{
    if (!isfinite(v))
        return NS_EVALUE;
    char tmp[40];
    int n = snprintf(tmp, sizeof(tmp), "%.17g", v);
    if (n < 0 || (size_t)n >= sizeof(tmp) - 2)
        return NS_EINVAL;
    if (strpbrk(tmp, ".eE") == NULL)
        memcpy(tmp + n, ".0", 3);
    return ns_buf_append(dst, tmp, strlen(tmp));
}
