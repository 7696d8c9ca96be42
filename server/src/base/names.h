/* names.h - binary search among items sorted by name (runs, layers, lanes). */
#ifndef NSD_NAMES_H
#define NSD_NAMES_H

#include <stddef.h>

/* The name of item i of 'items'. */
typedef const char *(*nsd_name_at_fn)(const void *items, size_t i);

/*! nsd_name_pos() :
 *  Binary search of 'name' among n items sorted by ascending strcmp() of
 *  their names; name_at(items, i) gives the name of item i. Sets *found.
 *  @return the item's index, or the index where it would be inserted. */
size_t nsd_name_pos(const void *items, size_t n, nsd_name_at_fn name_at, const char *name,
                    int *found);

#endif /* NSD_NAMES_H */
