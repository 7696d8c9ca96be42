/* answer_cache.h - /sync answers: their fields, and JSON ones encoded once
 * per step by the threads that wait for them.
 *
 * Every worker of a step waits for the same statistics, so with scope
 * "global" its W workers get the same answer. The first to need it makes a
 * shared answer, which takes its sync result; the others find it among the
 * few latest answers by comparing their own result with that one (run,
 * step, completeness, missing workers, each layer's name, count and arrays
 * byte for byte; never by a hash alone) and take a reference. Formatting
 * 2 x C numbers is the bulk of a big model's JSON /sync cost, so the answer
 * is encoded in parts (ns_stats_encode_json_part(): one per layer array, at
 * most NS_STATS_JSON_PARTS_MAX):
 * each thread that needs the answer encodes the parts no thread has taken
 * yet, then waits for those still in progress, so the threads of the W
 * workers format the numbers together. The answer is sent from its parts,
 * never copied. At most NSD_ANSWER_CACHE_ENTRIES answers are kept, the
 * latest made, and none larger than NSD_ANSWER_CACHE_MAX_BYTES with its
 * text (arrays above half of it; such an answer is made for its worker
 * alone).
 * Threads: any; one mutex for the cache, one per answer for its parts. */
#ifndef NSD_ANSWER_CACHE_H
#define NSD_ANSWER_CACHE_H

#include <normstat/proto.h>

#include "registry/registry.h"

#define NSD_ANSWER_CACHE_ENTRIES   4
#define NSD_ANSWER_CACHE_MAX_BYTES (16u << 20)

/* A /sync answer as ns_stats_encode() takes it: the step, completeness,
 * workers and (when incomplete) the missing ones, then per layer its mean
 * and var (when it has arrays) and its count. Borrows the result's arrays. */
typedef struct nsd_answer_fields_s {
    ns_meta_t meta[4];
    size_t n_meta;
    ns_out_layer_t *layers;
    size_t n_layers;
    char *missing; /* "2,3" */
} nsd_answer_fields_t;

/*! nsd_answer_fields() : fill 'f' from 'res'. @return 0 or NS_ENOMEM.
 *  nsd_answer_fields_free() : what it allocated. */
int nsd_answer_fields(nsd_answer_fields_t *f, const nsd_sync_result_t *res);
void nsd_answer_fields_free(nsd_answer_fields_t *f);

typedef struct nsd_answer_s nsd_answer_t;

/*! nsd_answer_share() : a reference to the JSON answer of 'run''s /sync
 *  result *res: one kept with the same contents (*res stays the caller's),
 *  or a new one that takes *res (set to NULL) and is kept. NULL if out of
 *  memory (*res stays the caller's). */
nsd_answer_t *nsd_answer_share(const char *run, nsd_sync_result_t **res);

/*! nsd_answer_result() : the result the answer encodes (the one it took). */
const nsd_sync_result_t *nsd_answer_result(const nsd_answer_t *a);

/*! nsd_answer_encode() : encode the parts no thread has taken, then wait
 *  for those that others encode. Any thread, any number of times.
 *  @return 0, or the error of a part (NS_ENOMEM, NS_ETOOLARGE). */
int nsd_answer_encode(nsd_answer_t *a);

/*! nsd_answer_parts() : the encoded text, in *n parts to be sent one after
 *  the other; valid while the reference is held, after nsd_answer_encode()
 *  returned 0. */
const ns_buf_t *nsd_answer_parts(const nsd_answer_t *a, size_t *n);

/*! nsd_answer_ref() / nsd_answer_release() : one more reference / one
 *  fewer (the last frees the answer). release takes void * to serve as a
 *  free callback; NULL is ignored. */
nsd_answer_t *nsd_answer_ref(nsd_answer_t *a);
void nsd_answer_release(void *a);

#endif /* NSD_ANSWER_CACHE_H */
