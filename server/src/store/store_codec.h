/* store_codec.h - a finalized step as the body of a STEP log row and back.
 *
 * STEP body (little-endian u64s and IEEE values, so replay feeds EMA and
 * PreciseBN the very bits the live path used): version (2), step, update,
 * complete, workers, first_pending, channels C, count, n_domains, pooled
 * arrays (if C > 0), then per domain: name (a length byte and the bytes),
 * count, a flag (1: arrays as pooled, stored once), its arrays (if C > 0 and
 * the flag is 0). Arrays: an encoding byte, then mean[C] and var[C] as
 * doubles (NSD_STEP_ARRAYS_F64) or, when every value is a float32 widened
 * (a single arrival's combination), as float32 (NSD_STEP_ARRAYS_F32): half
 * the bytes, the same doubles read back. Version 1 (still read) had no
 * encoding byte and doubles only. The layer is the row's own column. */
#ifndef NSD_STORE_CODEC_H
#define NSD_STORE_CODEC_H

#include <stddef.h>

#include "registry/step.h"

#define NSD_STEP_BLOB_VERSION 2
enum { NSD_STEP_ARRAYS_F64 = 0, NSD_STEP_ARRAYS_F32 = 1 };

/*! nsd_step_encode() : the STEP body of 'rec' (malloc'd, *len bytes), or
 *  NULL when out of memory. */
unsigned char *nsd_step_encode(const nsd_step_t *rec, size_t *len);

/*! nsd_step_decode() : a STEP body of 'layer' decoded; domains carry names,
 *  not indexes (NSD_STEP_NO_INDEX). @return 0 and *dst, NS_EINVAL
 *  (malformed), NS_ENOMEM. */
int nsd_step_decode(const void *body, size_t len, const char *layer, nsd_step_t **dst);

#endif /* NSD_STORE_CODEC_H */
