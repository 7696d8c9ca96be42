/* registry.h - the run registry of normstatd: runs, the step barrier, population
 * statistics (EMA, PreciseBN, domains), /sync waiters, checkpoints.
 *
 * This is the whole interface the HTTP side uses; run.h, barrier.h,
 * population.h and checkpoint.h are internal to the registry.
 *
 * Threads: every function may be called from any thread at once. The run map
 * is guarded by one rwlock, every run by its own rwlock and each of its
 * layers by a mutex (runs are refcounted, so DELETE while another request
 * works on the run is safe). Reports to different layers of one run
 * proceed in parallel; reads copy a consistent cut of the run (every report
 * wholly applied or not at all). See doc/design.md, "Threads and locks".
 * Callbacks: /sync callbacks and the wakeup hook are never called while a
 * registry lock is held (the registry collects them, unlocks, then calls
 * them). The persistence hooks are the exception: they ARE called under
 * the lock that guards the change; nsd_persist_t states their rules.
 *
 * Errors: functions return 0 or a negative NS_E* code and fill the optional
 * ns_error_detail_t (first error wins); a function that returns an error
 * changed nothing. Names (run, layer, domain) are assumed already validated
 * by the caller (ns_name_valid()); the registry checks them again and returns
 * NS_EINVAL for an invalid one.
 *
 * Conventions (doc/design.md, "API decisions"):
 *  - Steps are uint64_t on the wire; in outputs "no step yet" is -1.
 *  - PreciseBN generations are numbered per run starting at 0 (the state of a
 *    new run); each reset returns the next number (1, 2, ...). A domain reset
 *    alone gets the run's next number too, so numbers never repeat.
 *  - EMA zero-start arrays (for ema_debias) are always kept, so ema_debias may
 *    be switched on or off by PUT at any time and the debiased view is exact.
 *  - skipped_steps counts (layer, step) applications whose pooled global N < 2
 *    with update "ema" (a per-domain skip while the pooled batch has N >= 2 is
 *    not counted, though that domain's EMA is not touched either). */
#ifndef NSD_REGISTRY_H
#define NSD_REGISTRY_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include <normstat/proto.h>

#include "registry_types.h"

/* ---------------------------------------------------------------- life cycle */

/*! nsd_registry_create() :
 *  A new, empty registry. 'limits' may be NULL (defaults).
 *  @return the registry, or NULL when out of memory. */
nsd_registry_t *nsd_registry_create(const nsd_limits_t *limits);

/*! nsd_registry_free() :
 *  Free the registry and every run. Waiting /sync callbacks are NOT called:
 *  call nsd_registry_shutdown() first. Accepts NULL. No other thread may use
 *  the registry any more. */
void nsd_registry_free(nsd_registry_t *reg);

/* ---------------------------------------------------------------- hooks */

/*! nsd_registry_set_persist() :
 *  Install (copy) the persistence hooks; NULL removes them. Call before the
 *  registry is shared between threads. */
void nsd_registry_set_persist(nsd_registry_t *reg, const nsd_persist_t *hooks);

/*! nsd_registry_set_wakeup() :
 *  'fn(arg)' is called (outside any lock, from any thread) whenever a step
 *  deadline may have become earlier than the value nsd_registry_expire()
 *  last returned: a new pending step was created or a run's sync_timeout_ms
 *  changed. The coordinator then calls nsd_registry_expire() soon (e.g.
 *  through uv_async_send). NULL removes it. Call before sharing. */
void nsd_registry_set_wakeup(nsd_registry_t *reg, void (*fn)(void *arg), void *arg);

/* ---------------------------------------------------------------- runs */

/*! nsd_registry_put_run() :
 *  Create a run (*created = 1) or update it (*created = 0). For a new run the
 *  fields of 'cfg' without has_* take the defaults of doc/design.md; for an existing run
 *  only fields with has_* set change. A new world_size applies to pending
 *  steps created afterwards (each pending step keeps the world_size it was
 *  created with). 'created' may be NULL. Ranges: world_size 1..NS_WORLD_SIZE_MAX,
 *  momentum [0, 1] or NS_MOMENTUM_CUMULATIVE, sync_timeout_ms >= 1.
 *  @return 0; NS_EINVAL for an invalid name or out-of-range value (err
 *  names the field); NS_ENOMEM; NS_ESHUTDOWN after shutdown; NS_ECONFLICT
 *  when DELETEs of the run kept overtaking it (never NS_ENOTFOUND). */
int nsd_registry_put_run(nsd_registry_t *reg, const char *run, const ns_run_config_t *cfg,
                         int *created, ns_error_detail_t *err);

/*! nsd_registry_delete_run() :
 *  Delete a run and all its state. Its waiting /sync callbacks are called
 *  with NS_ENOTFOUND. @return 0 or NS_ENOTFOUND. */
int nsd_registry_delete_run(nsd_registry_t *reg, const char *run, ns_error_detail_t *err);

/*! nsd_registry_list_json() :
 *  GET /v1/runs: {"runs": [{"run", "world_size", "layers", "domains",
 *  "pending_steps", "step" (max applied, -1 none), "memory_bytes"}, ...]}
 *  sorted by name: the first 'limit' (0: all) whose name sorts after
 *  'after' (NULL: from the first), and "next" (the last name listed) when
 *  more follow. @return a new reference, or NULL when out of memory. */
json_t *nsd_registry_list_json(nsd_registry_t *reg, const char *after, size_t limit);

/*! nsd_registry_run_text() :
 *  GET /v1/runs/{run}: {"run", "config": {"world_size", "momentum" (null =
 *  cumulative), "sync_timeout_ms", "on_timeout", "ema_debias"},
 *  "status": {"layers": {<layer>: {"channels", "step" (last applied, -1),
 *  "finalized_step" (highest finalized or dropped, -1), "num_batches_tracked"
 *  (pooled EMA), "pending_steps"}}, "domains": [{"domain", "generation"}],
 *  "skipped_steps", "precise_generation", "memory_bytes",
 *  "pending": [{"layer", "step", "age_ms", "world_size", "arrived": [w...],
 *  "waiting_for": [w...]}] (by layer then step),
 *  "workers": [{"worker", "step" (highest step it reported, -1),
 *  "lag" (highest step any worker reported minus its own; null if it never
 *  reported)}] for workers 0..world_size-1, "drift": {"worst"},
 *  "health"}}, written as compact JSON text appended to 'dst' (an
 *  initialized buffer), without a tree.
 *  @return 0; NS_ENOTFOUND or NS_ENOMEM, with 'dst' freed. */
int nsd_registry_run_text(nsd_registry_t *reg, const char *run, uint64_t now_ms, ns_buf_t *dst,
                          ns_error_detail_t *err);

/*! nsd_registry_run_json() : the same, parsed (a small run's, in tests).
 *  @return a new reference; NULL with NS_ENOTFOUND (or NS_ENOMEM). */
json_t *nsd_registry_run_json(nsd_registry_t *reg, const char *run, uint64_t now_ms,
                              ns_error_detail_t *err);

/* The answers whose memory is reserved before they are built. */
typedef enum nsd_view_e { NSD_VIEW_STATUS, NSD_VIEW_DRIFT } nsd_view_t;

/*! nsd_registry_view_bytes() :
 *  The most building 'view' of the run takes now (tree and text), for the
 *  caller to reserve from --max-memory first; 0 if the run does not exist
 *  (building it then answers NS_ENOTFOUND). */
uint64_t nsd_registry_view_bytes(nsd_registry_t *reg, const char *run, nsd_view_t view);

/* ---------------------------------------------------------------- reports */

/*! nsd_sync_result_free() : free a result and its arrays; accepts NULL. */
void nsd_sync_result_free(nsd_sync_result_t *res);

/*! nsd_registry_report() :
 *  Accept one worker's report (POST /batches with cb == NULL, /sync with cb).
 *  Takes ownership of 'report' in every case (frees it). Creates the run with
 *  defaults (world_size = report->world_size if >= 1) if it does not exist.
 *  Every layer is validated before any is applied:
 *    NS_EWORKER    worker >= world_size (the pending step's, else the run's)
 *    NS_ECHANNELS  arrays whose length differs from the layer's channel count
 *                  (fixed by the first report of the layer carrying arrays)
 *    NS_EDUPLICATE the worker already reported this pending step
 *    NS_ESTALE     the step was finalized or dropped, is below the layer's
 *                  highest finalized step, or is not above the worker's last
 *                  reported step of that layer
 *    NS_ECONFLICT  'update' differs from the step's earlier arrivals
 *    NS_EBUSY      more than max_pending_steps pending steps for a layer
 *    NS_EMEMORY    over max_memory;  NS_ESHUTDOWN after shutdown
 *    NS_EINVAL     invalid names, no layers, step >= 2^63, a world_size
 *                  outside 1..NS_WORLD_SIZE_MAX for a run the report creates
 *    NS_ENOMEM     out of memory (nothing changed; an allocation failing
 *                  later, while the step finalizes, loses that step: its
 *                  /sync waiters get NS_ENOMEM)
 *  A step completing (world_size arrivals) is finalized and, when no earlier
 *  step of the layer is pending, applied before this function returns
 *  (read-your-writes).
 *  cb == NULL: returns 0 once accepted. cb != NULL: on success returns 0 and
 *  cb(arg, result) is called exactly once, when every layer of the report has
 *  finalized its step (possibly before this function returns, on this
 *  thread) or with an error status; never under a lock. On error returns the
 *  code, fills err, changes nothing and never calls cb. */
int nsd_registry_report(nsd_registry_t *reg, const char *run, ns_report_t *report, uint64_t now_ms,
                        nsd_sync_cb cb, void *arg, ns_error_detail_t *err);

/* ---------------------------------------------------------------- gradient sums */

/*! nsd_grad_result_free() : accepts NULL. */
void nsd_grad_result_free(nsd_grad_result_t *res);

/*! nsd_registry_grad() :
 *  Accept one worker's gradient sums (POST /grad; see gradsum.h for the
 *  semantics). Takes ownership of 'grad' in every case. The run must exist
 *  (NS_ENOTFOUND). Every layer is validated before any is recorded:
 *    NS_EWORKER    worker >= world_size (the pending step's, else the run's)
 *    NS_ECHANNELS  length differs from the statistics layer's channel count,
 *                  or from the first arrival of the pending gradient step
 *    NS_EDUPLICATE the worker already sent this pending (layer, step)
 *    NS_ESTALE     step at or below the worker's last completed gradient
 *                  step of the layer
 *    NS_EBUSY      more than max_pending_steps pending gradient steps for a
 *                  layer;  NS_EMEMORY over max_memory
 *    NS_ESHUTDOWN  after shutdown;  NS_EINVAL invalid names;  NS_ENOMEM
 *  On success returns 0 and cb(arg, result) is called exactly once, when
 *  every layer of the request completed (possibly before this function
 *  returns, on this thread) or with an error status; never under a lock. On
 *  error returns the code, fills err, changes nothing and never calls cb. */
int nsd_registry_grad(nsd_registry_t *reg, const char *run, ns_grad_t *grad, uint64_t now_ms,
                      nsd_grad_cb cb, void *arg, ns_error_detail_t *err);

/* ---------------------------------------------------------------- statistics */

/*! nsd_registry_stats() :
 *  @return 0 and *dst (free with nsd_stats_free); NS_ENOTFOUND for an unknown
 *  run, layer (named in err) or domain (also of a mixture); NS_EINVAL for
 *  variance=biased with a source other than precise, or a mixture with
 *  source last; NS_ENOMEM. */
int nsd_registry_stats(nsd_registry_t *reg, const char *run, const nsd_stats_query_t *q,
                       nsd_stats_t **dst, ns_error_detail_t *err);

/*! nsd_stats_free() : accepts NULL. */
void nsd_stats_free(nsd_stats_t *stats);

/*! nsd_registry_drift_text() :
 *  GET /v1/runs/{run}/drift as compact JSON text appended to 'dst' (an
 *  initialized buffer), written without a tree: {"run", "history_steps", "layers": [{"layer",
 *  "domain" ("*" pooled), "channels", "last_step" (the EMA's, null before
 *  one), "num_batches_tracked", "precise_batches", "drift": {"mean_avg",
 *  "mean_max", "mean_max_channel", "var_avg", "var_max", "var_max_channel"}
 *  or null while PreciseBN has fewer than 2 samples}] worst first (larger
 *  mean_max, null last, then layer name, domain order, pooled last),
 *  "worst": {"layer", "domain", "mean_max"} or null}. 'domain' NULL: every
 *  domain's rows, and pooled rows when the run has several; "*": the
 *  pooled rows; a name: that domain's rows (drift.h defines the drift).
 *  @return 0; NS_ENOTFOUND (run, domain), NS_EINVAL (domain name) or
 *  NS_ENOMEM, with 'dst' freed. */
int nsd_registry_drift_text(nsd_registry_t *reg, const char *run, const char *domain, ns_buf_t *dst,
                            ns_error_detail_t *err);

/*! nsd_registry_history_json() :
 *  GET /v1/runs/{run}/history: {"run", "layer", "domain", "channel",
 *  "channels", "steps": [{"step", "count", "batch_mean", "batch_var"
 *  (biased), "ema_mean", "ema_var" (as served), "drift" (as above)}] oldest
 *  first, at most --history-steps, "population": {"mean", "var"
 *  (unbiased), "num_batches"} of PreciseBN now, or null}. 'domain' NULL or
 *  "*": the pooled row. 'channel' < 0: channel 0.
 *  @return a new reference; NULL with NS_ENOTFOUND (run, layer, domain),
 *  NS_EINVAL (channel out of range, domain name) or NS_ENOMEM. */
json_t *nsd_registry_history_json(nsd_registry_t *reg, const char *run, const char *layer,
                                  const char *domain, int64_t channel, ns_error_detail_t *err);

/*! nsd_registry_precise_reset() :
 *  Start a new PreciseBN generation for every domain (domain NULL or "*") or
 *  one domain (created if the run has not seen it yet: the replay of a
 *  logged reset, as stores may hold resets of domains no report had named).
 *  *generation gets the new number (see the conventions above).
 *  @return 0, NS_ENOTFOUND (run), NS_EINVAL (domain name). */
int nsd_registry_precise_reset(nsd_registry_t *reg, const char *run, const char *domain,
                               uint64_t *generation, ns_error_detail_t *err);

/*! nsd_registry_precise_reset_known() :
 *  POST /precise/reset: as nsd_registry_precise_reset(), but a domain the
 *  run has not seen is NS_ENOTFOUND and nothing changes. */
int nsd_registry_precise_reset_known(nsd_registry_t *reg, const char *run, const char *domain,
                                     uint64_t *generation, ns_error_detail_t *err);

/* ---------------------------------------------------------------- checkpoints */

/*! nsd_registry_checkpoint_export() :
 *  The whole applied state of a run as JSON (version 1): config, domains
 *  with precise generations, and per layer its channels, last applied and
 *  highest finalized step, pooled EMA, per-domain EMA (running and zero-start
 *  arrays, decay, num_batches_tracked) and PreciseBN accumulator (n,
 *  num_batches, mean, m2), the last finalized statistics, skipped_steps.
 *  Doubles are JSON reals printed with 17 significant digits, so they
 *  round-trip exactly. Pending steps and finalized steps still waiting for an
 *  earlier one are not exported.
 *  @return a new reference; NULL with NS_ENOTFOUND or NS_ENOMEM. */
json_t *nsd_registry_checkpoint_export(nsd_registry_t *reg, const char *run,
                                       ns_error_detail_t *err);

/* GET /v1/runs/{run}/checkpoint's answer, written a piece at a time. */
typedef struct nsd_checkpoint_stream_s nsd_checkpoint_stream_t;

/*! nsd_registry_checkpoint_stream() :
 *  nsd_registry_checkpoint_export()'s document as compact JSON text, from a
 *  compact copy of the run taken under its locks (a consistent cut, no
 *  tree, no text): the copy and the largest piece of text are reserved
 *  from --max-memory before the copy is made, until the stream is freed.
 *  @return the stream; NULL with NS_ENOTFOUND, NS_EMEMORY (err says what
 *  was needed and what is free) or NS_ENOMEM. */
nsd_checkpoint_stream_t *nsd_registry_checkpoint_stream(nsd_registry_t *reg, const char *run,
                                                        ns_error_detail_t *err);

/*! nsd_checkpoint_stream_next() :
 *  Append the next piece of the text (the head, one layer, the end) to
 *  'dst'; *done is set once the last piece was written. No lock needed.
 *  @return 0, or the buffer's error (NS_ENOMEM, NS_ETOOLARGE). */
int nsd_checkpoint_stream_next(nsd_checkpoint_stream_t *s, ns_buf_t *dst, int *done);

/*! nsd_checkpoint_stream_free() : gives back its reservation; accepts NULL. */
void nsd_checkpoint_stream_free(nsd_checkpoint_stream_t *s);

/*! nsd_registry_checkpoint_text() :
 *  The whole stream's text appended to 'dst' (an initialized buffer).
 *  @return 0; NS_ENOTFOUND; NS_EMEMORY; NS_ENOMEM or NS_ETOOLARGE ('dst' freed). */
int nsd_registry_checkpoint_text(nsd_registry_t *reg, const char *run, ns_buf_t *dst,
                                 ns_error_detail_t *err);

/*! nsd_registry_checkpoint_import() :
 *  Parse and fully validate a checkpoint (NS_EINVAL naming the field), then
 *  replace the run's state atomically, creating the run if needed. Pending
 *  steps of the replaced state are discarded (their /sync waiters get
 *  NS_ECONFLICT); afterwards reports for steps at or below a layer's imported
 *  finalized step are stale. The run name inside the checkpoint is ignored.
 *  @return 0, NS_EINVAL, NS_EMEMORY, NS_ENOMEM, NS_ESHUTDOWN. */
int nsd_registry_checkpoint_import(nsd_registry_t *reg, const char *run, const char *src,
                                   size_t src_len, ns_error_detail_t *err);

/* ---------------------------------------------------------------- coordinator */

/*! nsd_registry_expire() :
 *  Time out pending steps whose first arrival is sync_timeout_ms or more
 *  before 'now_ms' (partial: finalize with the arrivals present; drop:
 *  discard, waiters get NS_ETIMEDOUT), apply what became applicable, call
 *  the callbacks. @return the next deadline (ms, same clock) or UINT64_MAX. */
uint64_t nsd_registry_expire(nsd_registry_t *reg, uint64_t now_ms);

/*! nsd_registry_shutdown() :
 *  Every waiting /sync gets its callback with NS_ESHUTDOWN; afterwards
 *  reports, PUTs and imports fail with NS_ESHUTDOWN (reads still work). */
void nsd_registry_shutdown(nsd_registry_t *reg);

/* ---------------------------------------------------------------- persistence */

/*! nsd_registry_snapshot() :
 *  Under the run's lock shared and every layer's lock, call the
 *  run_snapshot hook with the run's checkpoint text, then step_finalized for
 *  each finalized step still waiting for an earlier pending one (the export
 *  leaves those out), so a store that keeps the snapshot and drops its log
 *  of the run before it loses nothing. With the snapshot_begin/_end hooks,
 *  the locks are held only to copy the state and hand those steps to
 *  snapshot_begin; the text is written after they are released.
 *  @return 0, NS_ENOTFOUND, NS_ENOMEM. */
int nsd_registry_snapshot(nsd_registry_t *reg, const char *run, ns_error_detail_t *err);

/*! nsd_registry_replay_step() :
 *  Recovery: apply a logged finalized step to 'run' exactly as the live
 *  path did (same code: last statistics, finalized step, EMA/PreciseBN in
 *  step order, held back while step->first_pending is below its step), so
 *  the state is bit-identical. Creates the run (defaults), the layer and
 *  missing domains if needed. No hook is called. @return 0, NS_EINVAL
 *  (channel count differs from the layer's), NS_ENOMEM. */
int nsd_registry_replay_step(nsd_registry_t *reg, const char *run, const nsd_step_t *step,
                             ns_error_detail_t *err);

/*! nsd_registry_replay_domain() :
 *  Recovery: append 'domain' to the run's domains (as a report does) unless
 *  present. @return 0, NS_ENOTFOUND, NS_EINVAL, NS_ENOMEM. */
int nsd_registry_replay_domain(nsd_registry_t *reg, const char *run, const char *domain,
                               ns_error_detail_t *err);

/*! nsd_registry_replay_finish() :
 *  End of recovery: pending steps did not survive the restart, so finalized
 *  steps still held back for one are applied now (in step order).
 *  @return the number of steps applied. */
size_t nsd_registry_replay_finish(nsd_registry_t *reg);

/* ---------------------------------------------------------------- metrics */

/*! nsd_registry_mem_reserve() / nsd_registry_mem_release() :
 *  Count 'bytes' held outside the registry (a request body, what decoding it
 *  may allocate) against --max-memory until released.
 *  @return 0, or NS_EMEMORY when they do not fit (nothing reserved). */
int nsd_registry_mem_reserve(nsd_registry_t *reg, uint64_t bytes);
void nsd_registry_mem_release(nsd_registry_t *reg, uint64_t bytes);

/*! nsd_registry_mem_free() : bytes left of --max-memory now (UINT64_MAX
 *  when unlimited); a hint, since other threads reserve meanwhile. */
uint64_t nsd_registry_mem_free(nsd_registry_t *reg);

/*! nsd_registry_counters() : a snapshot of the counters (atomics, no lock). */
void nsd_registry_counters(nsd_registry_t *reg, nsd_counters_t *dst);

/*! nsd_registry_health() :
 *  The health of the 'max' runs most recently active (the latest accepted
 *  report; ties and never-active runs by name), sorted by name, into a new
 *  array *dst (free()) of *n. Each run is locked in turn.
 *  @return 0 or NS_ENOMEM. */
int nsd_registry_health(nsd_registry_t *reg, size_t max, nsd_run_health_t **dst, size_t *n);

/*! nsd_rejection_code() : the NS_E* code of rejection slot 'i'
 *  (< NSD_REJECTION_REASONS). */
int nsd_rejection_code(size_t i);

/*! nsd_registry_note_rejection() :
 *  A report or gradient sum of 'run' was refused with 'code': count it in
 *  the run (if it exists) and decide whether to log it. At most
 *  NSD_REJECTION_LOG_LINES lines per second (of 'now_ms') per run, runs that
 *  do not exist sharing one budget.
 *  @return 1 to log it, with *withheld the lines withheld since the last one
 *  logged; 0 to withhold it. */
int nsd_registry_note_rejection(nsd_registry_t *reg, const char *run, int code, uint64_t now_ms,
                                uint64_t *withheld);

#define NSD_REJECTION_LOG_LINES 10

#endif /* NSD_REGISTRY_H */
