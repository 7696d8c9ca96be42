/* names.c - binary search among items sorted by name. */
#include "names.h"

#include <string.h>

size_t nsd_name_pos(const void *items, size_t n, nsd_name_at_fn name_at, const char *name,
                    int *found)
{
    size_t lo = 0, hi = n;
    *found = 0;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(name_at(items, mid), name);
        if (c == 0) {
            *found = 1;
            return mid;
        }
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}
