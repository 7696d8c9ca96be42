/* answer_cache.h - /sync answers encoded once per step.
 *
 * Every worker of a step waits for the same statistics, so with scope
 * "global" its W workers get the same answer: the first to be answered
 * encodes it, the others get a copy instead of formatting 2 x C numbers
 * again (JSON: the bulk of a big model's /sync cost). An answer is found by
 * everything it is made of (the key: format, run, step, completeness,
 * missing workers, and each layer's name, count and arrays), compared byte
 * for byte, never by a hash alone. A few entries, the latest added, and
 * none larger than NSD_ANSWER_CACHE_MAX_BYTES.
 * Threads: any; one mutex, held for a comparison or a copy. */
#ifndef NSD_ANSWER_CACHE_H
#define NSD_ANSWER_CACHE_H

#include <normstat/proto.h>

#define NSD_ANSWER_CACHE_ENTRIES   4
#define NSD_ANSWER_CACHE_MAX_BYTES (16u << 20)

/*! nsd_answer_cache_find() : 1 and 'dst' (empty, initialised by the caller)
 *  holding a copy of the answer encoded for 'key'; 0 if none (or out of
 *  memory). */
int nsd_answer_cache_find(const ns_buf_t *key, ns_buf_t *dst);

/*! nsd_answer_cache_add() : keep a copy of 'body' for 'key' (both
 *  borrowed), replacing the oldest entry. */
void nsd_answer_cache_add(const ns_buf_t *key, const ns_buf_t *body);

#endif /* NSD_ANSWER_CACHE_H */
