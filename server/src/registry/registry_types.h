/* registry_types.h - the types the registry shares with its callers and
 * its own parts: limits, persistence hooks, /sync and /grad answers,
 * statistics queries and answers, counters (the functions are in
 * registry.h, which documents their use). */
#ifndef NSD_REGISTRY_TYPES_H
#define NSD_REGISTRY_TYPES_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include <normstat/proto.h>
#include <normstat/wire_errors.h>

#include "step.h"

/* Opaque registry: owns every run. */
typedef struct nsd_registry_s nsd_registry_t;

typedef struct nsd_limits_s {
    uint32_t max_pending_steps; /* per layer; 0 = default 1024; beyond -> 429 NS_EBUSY */
    uint64_t max_memory;        /* bytes of statistics state + pending arrivals;
                                   0 = unlimited; beyond -> 429 NS_EMEMORY */
    int threads;                /* OpenMP threads for libnscore calls (<= 1: calling thread) */
    uint32_t history_steps;     /* applied steps kept per (layer, domain); 0 = no history */
} nsd_limits_t;

#define NSD_DEFAULT_MAX_PENDING_STEPS 1024u

/* Persistence hook: one step of one layer that finalized (by completion or
 * a partial timeout; dropped steps are not reported), as an nsd_step_t
 * (step.h) borrowed for the duration of the call: the domains are those
 * that had arrivals at the step, in the run's domain order. */

/* Optional callbacks, NULL = none (memory only). The persistence hooks are
 * called WHILE the lock that guards the change is held: the run's lock
 * exclusively for run-level changes (and, for a run being created or
 * deleted, the map lock), the layer's lock for a finalized step. So the
 * calls come in the order the changes were made to each layer, with every
 * run-level change between the same layer changes as in memory, and a
 * store that appends them to its log in call order replays the run's
 * history exactly (steps of different layers commute). Hooks of one run may
 * be called from several threads at once (different layers). A hook must
 * therefore only copy and enqueue: never block (no I/O, no logging, no lock
 * but an innermost one of its own), never call back into the registry.
 * Hooks run on the thread that made the change: request threads, the
 * coordinator (timeouts), the caller of nsd_registry_snapshot().
 * step_finalized for a step is called before any /sync callback waiting
 * for that step is delivered (possibly on another thread, the one that
 * finalized the waiter's last layer), so a store can make every /sync
 * answer wait for the commit of its steps.
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
    /* the run's whole state as checkpoint JSON text (GET /checkpoint's
     * bytes; malloc'd, taken), after a checkpoint import and from
     * nsd_registry_snapshot(). */
    void (*run_snapshot)(void *arg, const char *run, char *text);
    /* nsd_registry_snapshot() in two halves, so the locks are held to
     * copy, never to encode: snapshot_begin() under the run's lock shared
     * and every layer's lock (no step of the run is logged meanwhile), with the
     * finalized steps still held back (nsd_step_t in a queue, borrowed),
     * returns a ticket (NULL: out of memory; the hook arranges a later
     * pass); snapshot_end() with no lock held, the ticket and the copied
     * state as checkpoint JSON text (malloc'd, taken; NULL when out of
     * memory). Optional: without
     * them run_snapshot and step_finalized are called under the lock. */
    void *(*snapshot_begin)(void *arg, const char *run, const nsd_queue_t *held);
    void (*snapshot_end)(void *arg, void *ticket, char *text);
} nsd_persist_t;

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

/* Rejections are counted per run by reason: one slot per row of the wire
 * error table (normstat/wire_errors.h), in its order. */
#define NSD__REASON_ROW(owner, name, code, status, wire, msg) +1
#define NSD_REJECTION_REASONS                                 (0 NS_WIRE_ERROR_MAP(NSD__REASON_ROW))

/* One run's health, for /metrics (nsd_registry_health()). */
typedef struct nsd_run_health_s {
    char run[NS_NAME_MAX + 1];
    uint64_t last_active_ms; /* clock of the last report, accepted or refused; 0 none */
    uint64_t steps_applied;  /* since the daemon started */
    uint64_t pending_steps;
    uint64_t skipped_steps;
    int64_t worker_lag; /* largest lag of a worker (GET run's "workers"), -1 none */
    int has_worst;      /* the worst drift row (GET .../drift's "worst") */
    char worst_layer[NS_NAME_MAX + 1];
    char worst_domain[NS_NAME_MAX + 1];
    double worst_mean_max;
    uint64_t rejections[NSD_REJECTION_REASONS]; /* by nsd_rejection_code(i) */
} nsd_run_health_t;

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

#endif /* NSD_REGISTRY_TYPES_H */
