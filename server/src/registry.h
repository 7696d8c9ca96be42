/* registry.h - the run registry of normstatd: runs, the step barrier, population
 * statistics (EMA, PreciseBN, domains), /sync waiters, checkpoints.
 *
 * This is the whole interface the HTTP side uses; run.h, barrier.h,
 * population.h and checkpoint.h are internal to the registry.
 *
 * Threads: every function may be called from any thread at once. The run map
 * is guarded by one rwlock and every run by its own mutex (runs are
 * refcounted, so DELETE while another request works on the run is safe).
 * Callbacks: /sync callbacks and the wakeup hook are never called while a
 * registry lock is held (the registry collects them, unlocks, then calls
 * them). The persistence hooks are the exception: they ARE called under
 * the run's lock; nsd_persist_t states their rules.
 *
 * Errors: functions return 0 or a negative NS_E* code and fill the optional
 * ns_error_detail_t (first error wins); a function that returns an error
 * changed nothing. Names (run, layer, domain) are assumed already validated
 * by the caller (ns_name_valid()); the registry checks them again and returns
 * NS_EINVAL for an invalid one.
 *
 * Conventions chosen where DESIGN is silent:
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

#include "step.h"

/* Opaque registry: owns every run. */
typedef struct nsd_registry_s nsd_registry_t;

/* ---------------------------------------------------------------- life cycle */

typedef struct nsd_limits_s {
    uint32_t max_pending_steps; /* per layer; 0 = default 1024; beyond -> 429 NS_EBUSY */
    uint64_t max_memory;        /* bytes of statistics state + pending arrivals;
                                   0 = unlimited; beyond -> 429 NS_EMEMORY */
    int threads;                /* OpenMP threads for libnscore calls (<= 1: calling thread) */
} nsd_limits_t;

#define NSD_DEFAULT_MAX_PENDING_STEPS 1024u

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

/* Persistence hook: one step of one layer that finalized (by completion or
 * a partial timeout; dropped steps are not reported), as an nsd_step_t
 * (step.h) borrowed for the duration of the call: the domains are those
 * that had arrivals at the step, in the run's domain order. */

/* Optional callbacks, NULL = none (memory only). The persistence hooks are
 * called WHILE the run's lock is held (and, for a run being created or
 * deleted, the map lock), in the order the changes were made to the run, so
 * a store that appends them to its log in call order replays the run's
 * history exactly. A hook must therefore only copy and enqueue: never block
 * (no I/O, no logging, no lock but an innermost one of its own), never call
 * back into the registry. Hooks run on the thread that made the change:
 * request threads, the coordinator (timeouts), the caller of
 * nsd_registry_snapshot(). step_finalized for a step is called
 * before the /sync callbacks that step completes, on the same thread, so a
 * store can make every /sync answer wait for the commit of its step.
 * Not hooked: pending (not finalized) steps and dropped steps. */
typedef struct nsd_persist_s {
    void *arg;
    /* after PUT (created = 1 for a new run) and after a report created a run
     * (then before that report's domain_added and step_finalized calls) */
    void (*run_put)(void *arg, const char *run, const ns_run_config_t *cfg, int created);
    /* after DELETE: the run and everything logged for it is gone */
    void (*run_deleted)(void *arg, const char *run);
    /* after each finalized step of one layer */
    void (*step_finalized)(void *arg, const char *run, const nsd_step_t *step);
    /* a report added 'domain' to the run's domains (at the end) */
    void (*domain_added)(void *arg, const char *run, const char *domain);
    /* after a PreciseBN reset: 'domain' NULL for all domains */
    void (*precise_reset)(void *arg, const char *run, const char *domain);
    /* the run's whole state as nsd_registry_checkpoint_export() gives it,
     * after a checkpoint import and from nsd_registry_snapshot(); borrowed:
     * the hook may json_incref() it and then owns that reference alone (the
     * registry drops its own reference right after the call). */
    void (*run_snapshot)(void *arg, const char *run, json_t *state);
} nsd_persist_t;

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
 *  fields of 'cfg' without has_* take DESIGN's defaults; for an existing run
 *  only fields with has_* set change. A new world_size applies to pending
 *  steps created afterwards (each pending step keeps the world_size it was
 *  created with). 'created' may be NULL. Ranges: world_size 1..NS_WORLD_SIZE_MAX,
 *  momentum [0, 1] or NS_MOMENTUM_CUMULATIVE, sync_timeout_ms >= 1.
 *  @return 0; NS_EINVAL for an invalid name or out-of-range value (err
 *  names the field); NS_ENOMEM; NS_ESHUTDOWN after shutdown. */
int nsd_registry_put_run(nsd_registry_t *reg, const char *run, const ns_run_config_t *cfg,
                         int *created, ns_error_detail_t *err);

/*! nsd_registry_delete_run() :
 *  Delete a run and all its state. Its waiting /sync callbacks are called
 *  with NS_ENOTFOUND. @return 0 or NS_ENOTFOUND. */
int nsd_registry_delete_run(nsd_registry_t *reg, const char *run, ns_error_detail_t *err);

/*! nsd_registry_list_json() :
 *  GET /v1/runs: {"runs": [{"run", "world_size", "layers", "domains",
 *  "pending_steps", "step" (max applied, -1 none), "memory_bytes"}, ...]}
 *  sorted by name. @return a new reference, or NULL when out of memory. */
json_t *nsd_registry_list_json(nsd_registry_t *reg);

/*! nsd_registry_run_json() :
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
 *  reported)}] for workers 0..world_size-1}}.
 *  @return a new reference; NULL with NS_ENOTFOUND (or NS_ENOMEM). */
json_t *nsd_registry_run_json(nsd_registry_t *reg, const char *run, uint64_t now_ms,
                              ns_error_detail_t *err);

/* ---------------------------------------------------------------- reports */

/* One layer of a /sync answer: the step's combined statistics (biased var),
 * over all arrivals (scope global) or the caller's domain (scope domain).
 * channels == 0 (mean, var NULL) if no arrival of that scope carried arrays. */
typedef struct nsd_sync_layer_s {
    char name[NS_NAME_MAX + 1];
    uint64_t count;
    size_t channels;
    double *mean;
    double *var;
    int complete;     /* this layer's step: 0 if finalized by a partial timeout */
    uint32_t workers; /* this layer's step: arrivals */
} nsd_sync_layer_t;

/* The answer of a /sync: 'status' 0, or NS_ETIMEDOUT (a layer's step was
 * dropped), NS_ESHUTDOWN (shutdown), NS_ENOTFOUND (run deleted), NS_ECONFLICT
 * (run replaced by a checkpoint import), NS_ENOMEM. Layers are in the
 * report's order. 'complete' is 1 iff every layer is complete; 'workers' is
 * the smallest arrival count over the layers. On a non-zero status the layer
 * arrays may be NULL. */
typedef struct nsd_sync_result_s {
    int status;
    uint64_t step;
    int complete;
    uint32_t workers;
    uint32_t *missing; /* complete == 0: the workers absent from some layer's step, ascending */
    size_t n_missing;
    size_t n_layers;
    nsd_sync_layer_t *layers;
} nsd_sync_result_t;

/* The callee owns 'result' and frees it with nsd_sync_result_free(). */
typedef void (*nsd_sync_cb)(void *arg, nsd_sync_result_t *result);

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

/* The answer of a POST /grad: 'status' 0 and 'grad' (step, workers, dtype,
 * layers in the request's order with the sums over the workers), or
 * NS_ETIMEDOUT (a layer's gradient step timed out), NS_EVALUE (a sum is not
 * finite), NS_ESHUTDOWN, NS_ENOTFOUND (run deleted), NS_ECONFLICT (run
 * replaced by a checkpoint import), with 'message' the text for the client
 * ("" for the code's default). */
typedef struct nsd_grad_result_s {
    int status;
    char message[512];
    ns_grad_t *grad;
} nsd_grad_result_t;

/* The callee owns 'result' and frees it with nsd_grad_result_free(). */
typedef void (*nsd_grad_cb)(void *arg, nsd_grad_result_t *result);

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

typedef enum nsd_source_e { NSD_SOURCE_EMA = 0, NSD_SOURCE_PRECISE, NSD_SOURCE_LAST } nsd_source_t;

#define NSD_MIXTURE_MAX 64

/* GET /v1/runs/{run}/stats. Zero-initialise, then set fields; domain "" means
 * "*" (pooled). n_mixture > 0 selects a mixture (domain is then ignored).
 * n_layers == 0 means every layer. */
typedef struct nsd_stats_query_s {
    nsd_source_t source;
    char domain[NS_NAME_MAX + 1];
    size_t n_mixture;
    ns_mixture_weight_t mixture[NSD_MIXTURE_MAX];
    size_t n_layers;
    const char (*layers)[NS_NAME_MAX + 1]; /* borrowed */
    int biased;                            /* variance=biased; source precise only */
} nsd_stats_query_t;

/* A statistics answer ready for ns_stats_encode(meta, n_meta, layers,
 * n_layers). Everything it points to is owned by it.
 *  meta: "run", "source" ("ema"/"precise"/"last"), "domain" (a name, "*" or
 *  "mixture"), "mixture" (only for a mixture: "a:0.7,b:0.3" as parsed),
 *  "step" (max last applied step over the served layers, -1 if none),
 *  "generation" (precise only: the domain's, or the run's for "*"/mixture),
 *  "debiased" (ema only, bool).
 *  layers (sorted by name):
 *   ema     : running_mean, running_var (unbiased; debiased view if the run
 *             has ema_debias); num_batches_tracked, step (-1 if never applied).
 *             A layer never applied for the domain serves PyTorch's initial
 *             state (0, 1, 0) so load_state_dict works.
 *   precise : running_mean, running_var (unbiased, or biased on request);
 *             num_batches, num_samples, step. For "*" these are the exact
 *             merge of the domains' accumulators (num_batches is then the
 *             sum over domains, a step seen by two domains counts twice).
 *             Layers without samples in the
 *             current generation (or only one sample and unbiased variance)
 *             are SKIPPED (no error), so a partial collection still loads.
 *   last    : mean, var (biased) of the last finalized step; count, step.
 *             With a domain: that domain's combination at the highest
 *             finalized step where it had arrivals. Layers never finalized
 *             (for that domain, or with no arrays) are skipped.
 *  Mixtures (ema, precise): ns_mixture() per layer over each domain's served
 *  values; num_batches_tracked / num_batches / num_samples / step are the max
 *  over the components; a precise layer is skipped if any component lacks
 *  samples. */
typedef struct nsd_stats_s {
    ns_meta_t *meta;
    size_t n_meta;
    ns_out_layer_t *layers;
    size_t n_layers;
} nsd_stats_t;

/*! nsd_registry_stats() :
 *  @return 0 and *dst (free with nsd_stats_free); NS_ENOTFOUND for an unknown
 *  run, layer (named in err) or domain (also of a mixture); NS_EINVAL for
 *  variance=biased with a source other than precise, or a mixture with
 *  source last; NS_ENOMEM. */
int nsd_registry_stats(nsd_registry_t *reg, const char *run, const nsd_stats_query_t *q,
                       nsd_stats_t **dst, ns_error_detail_t *err);

/*! nsd_stats_free() : accepts NULL. */
void nsd_stats_free(nsd_stats_t *stats);

/*! nsd_registry_precise_reset() :
 *  Start a new PreciseBN generation for every domain (domain NULL or "*") or
 *  one domain (created if the run has not seen it yet). *generation gets the
 *  new number (see the conventions above).
 *  @return 0, NS_ENOTFOUND (run), NS_EINVAL (domain name). */
int nsd_registry_precise_reset(nsd_registry_t *reg, const char *run, const char *domain,
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
 *  Under the run's lock, call the run_snapshot hook with the run's exported
 *  state, then step_finalized for each finalized step still waiting for an
 *  earlier pending one (the export leaves those out), so a store that keeps
 *  the snapshot and drops its log of the run before it loses nothing.
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

typedef struct nsd_counters_s {
    /* monotonic */
    uint64_t steps_finalized; /* complete or partial */
    uint64_t steps_applied;
    uint64_t steps_timed_out; /* partial and dropped */
    uint64_t steps_dropped;
    uint64_t steps_skipped; /* applied with global N < 2 (EMA untouched) */
    uint64_t reports_accepted;
    uint64_t grad_steps_completed;
    uint64_t grad_steps_timed_out;
    /* gauges */
    uint64_t pending_steps;
    uint64_t sync_waiters;
    uint64_t grad_pending_steps;
    uint64_t grad_waiters;
    uint64_t runs;
    uint64_t memory_bytes;
} nsd_counters_t;

/*! nsd_registry_counters() : a snapshot of the counters (atomics, no lock). */
void nsd_registry_counters(nsd_registry_t *reg, nsd_counters_t *dst);

#endif /* NSD_REGISTRY_H */
