/* array.h - growing the daemon's dynamic arrays (pointer + capacity). */
#ifndef NSD_ARRAY_H
#define NSD_ARRAY_H

#include <stddef.h>

/*! nsd_array_grow() :
 *  Grow '*arr' of '*cap' elements of 'elem' bytes to hold at least 'need'
 *  (capacity doubles from 4); new elements are zeroed. Changes no logical
 *  state, so it may run before validation has finished.
 *  @return 0, or NS_ENOMEM (the array unchanged). */
int nsd_array_grow(void **arr, size_t *cap, size_t need, size_t elem);

#endif /* NSD_ARRAY_H */
