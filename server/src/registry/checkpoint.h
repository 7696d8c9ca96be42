/* checkpoint.h - export and import of a run's whole applied state as JSON
 * (GET/PUT /v1/runs/{run}/checkpoint).
 *
 * Format (version 1):
 *   {"format": "normstat-checkpoint", "version": 1, "run": name,
 *    "config": {"world_size", "momentum" (null = cumulative),
 *               "sync_timeout_ms", "on_timeout", "ema_debias"},
 *    "skipped_steps", "precise_generation",
 *    "domains": [{"domain", "generation"}, ...]        (in index order),
 *    "layers": {<layer>: {"channels", "step" (last applied, -1),
 *               "finalized_step" (-1),
 *               "pooled": EMA or null (null iff channels == 0),
 *               "last": null or {"step", "count", "mean": [C], "var": [C]},
 *               "domains": {<domain>: {"ema": EMA, "precise": PRECISE,
 *                                      "last": null or as above (absent: null)}}}}}
 *   EMA     = {"running_mean": [C], "running_var": [C], "zero_mean": [C],
 *              "zero_var": [C], "decay", "num_batches_tracked", "step"}
 *   PRECISE = {"generation", "n", "num_batches", "mean": [C], "m2": [C],
 *              "step"}
 * Doubles are JSON reals with 17 significant digits (jansson's default), so
 * they round-trip bit for bit. Threads: export and copies need the run's
 * lock; parse touches no shared state. */
#ifndef NSD_CHECKPOINT_H
#define NSD_CHECKPOINT_H

#include <stddef.h>

#include <jansson.h>

#include "run.h"

#define NSD_CHECKPOINT_VERSION 1

/*! nsd_checkpoint_export() : @return a new reference, or NULL when out of memory. */
json_t *nsd_checkpoint_export(const nsd_run_t *run);

typedef struct nsd_checkpoint_stream_s nsd_checkpoint_stream_t; /* as registry.h */

/*! nsd_checkpoint_stream_copy() :
 *  The compact copy GET /checkpoint streams from (checkpoint_stream.c), for
 *  the store's snapshots: not counted in --max-memory (a pass copies one run
 *  at a time), written out with no lock held by nsd_checkpoint_stream_text().
 *  The run's lock held shared and every layer's. @return NULL when out of
 *  memory. */
nsd_checkpoint_stream_t *nsd_checkpoint_stream_copy(const nsd_run_t *run);

/*! nsd_checkpoint_stream_text() : the rest of the stream's text appended to
 *  'dst' (freed on error). @return 0 or NS_ENOMEM. */
int nsd_checkpoint_stream_text(nsd_checkpoint_stream_t *s, ns_buf_t *dst);

/*! nsd_checkpoint_text() : the run's checkpoint text at once (a copy and its
 *  text), the run's lock held. @return malloc'd text, or NULL when out of
 *  memory. */
char *nsd_checkpoint_text(const nsd_run_t *run);

/*! nsd_checkpoint_parse() :
 *  Parse and fully validate a checkpoint into a fresh state 'dst' (no
 *  pending steps; dst->memory set, but not reserved in any context).
 *  @return 0; NS_EINVAL naming the field in err; NS_ENOMEM. On error dst
 *  holds nothing to free. */
int nsd_checkpoint_parse(nsd_run_state_t *dst, const char *src, size_t src_len,
                         ns_error_detail_t *err);

#endif /* NSD_CHECKPOINT_H */
