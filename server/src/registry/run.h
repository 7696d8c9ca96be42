/* run.h - the state of one run (config, domains, layers, pending and
 * finalized steps, population statistics) and the operations on it.
 *
 * DESIGN
 *  - Locks (doc/design.md, "Threads and locks"): run->lock is a rwlock over
 *    the run's own state: configuration, domains, the set of layers, the
 *    deleted flag, a checkpoint import. Each layer has its own mutex over
 *    everything of that layer: pending and finalized steps, population
 *    state, last statistics. A report to layers and a domain the run
 *    already has holds run->lock shared and its layers' mutexes (ascending
 *    name, the only order layers are locked in), so reports to different
 *    layers of one run proceed in parallel; one that adds a layer or a
 *    domain, and every change of run-level state, holds run->lock
 *    exclusively (no layer mutex needed then). run->grad_lock guards the
 *    gradient steps under run->lock shared; it is taken after layer
 *    mutexes, never before one. A /sync waiter's own mutex is innermost.
 *  - Functions here never call out, except to the persistence hooks
 *    (ctx->persist: copy and enqueue only), which are called where the
 *    change is made, under the lock that guards it, so the store logs each
 *    layer's changes in the order they were made and run-level changes
 *    (exclusive) between them. /sync callbacks and wakeups are collected
 *    into an nsd_outbox_t and delivered by the registry after unlocking.
 *  - A report is applied in three phases: validate every layer (any failure
 *    returns before anything changed), allocate everything it needs
 *    (failure frees it all, nothing changed), then commit, which cannot fail,
 *    followed by finalization of completed steps and applying in step order.
 *  - Memory: population arrays and pending arrivals are accounted in
 *    run->st.memory and the registry-wide ctx->memory (both atomic),
 *    reserved before allocation against limits.max_memory.
 *  - Last values are views, not copies. A finalized step (step.h) is held
 *    by reference (step->refs, under the layer's lock) by the layer's ready
 *    queue until applied, by l->pooled->last while it is the layer's
 *    highest finalized step, and by each domain's pop->last while it is
 *    the highest with that domain (pop->last_mean points at its block). Readers copy
 *    from the step under the layer's lock. When the last reference goes,
 *    the step becomes l->spare_step, refilled by the layer's next
 *    finalization (its domain blocks kept: a steady layer allocates no
 *    step), or is freed if a spare is kept already. Every step a layer
 *    holds, queued, viewed or spare, is counted in the run's memory
 *    (step->bytes) from when it is made until freed; a finalization is not
 *    refused for it (the pending step it comes from was counted, and is
 *    released then). A checkpoint import builds owned steps of one block.
 *    A layer whose arrays are smaller than a step's own bytes
 *    (nsd_step_viewed() 0) copies its last values into its pops' data
 *    instead and keeps no step: less memory for many tiny layers.
 * Threads: each function says which locks it expects; "run locked" means
 *    run->lock exclusively, or shared with the layers it touches locked. */
#ifndef NSD_RUN_H
#define NSD_RUN_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "barrier.h"
#include "population.h"
#include "registry_types.h"

/* What the registry shares with its runs: limits and lock-free counters. */
typedef struct nsd_ctx_s {
    nsd_limits_t limits;
    nsd_persist_t persist; /* the hooks (registry_types.h); all NULL: memory only */
    _Atomic uint64_t memory;
    _Atomic uint64_t next_deadline;
    _Atomic uint64_t steps_finalized, steps_applied, steps_timed_out, steps_dropped, steps_skipped,
        reports_accepted;
    _Atomic uint64_t pending_steps, sync_waiters, runs;
    _Atomic uint64_t grad_steps_completed, grad_steps_timed_out, grad_pending_steps, grad_waiters;
} nsd_ctx_t;

/* The run's pending gradient steps (gradsum.h). */
typedef struct nsd_gradsum_s nsd_gradsum_t;
struct nsd_grad_waiter_s;

/* What a locked operation produced: callbacks and a wakeup, delivered
 * after unlocking. */
typedef struct nsd_outbox_s {
    nsd_queue_t fired;      /* nsd_waiter_t: /sync callbacks to call, in order */
    nsd_queue_t grad_fired; /* nsd_grad_waiter_t: /grad callbacks to call, in order */
    int wakeup;             /* a deadline may have moved earlier */
    /* What the operation's pending steps changed in the shared counters,
     * settled once per call by nsd_run_settle() rather than per layer: those
     * cache lines are written by every thread. */
    int64_t pending_delta;
    uint64_t finalized;
    uint64_t released; /* bytes of the pending steps closed */
} nsd_outbox_t;

/* One layer: everything below 'lock' is guarded by it (or by run->lock
 * held exclusively). */
typedef struct nsd_layer_s {
    pthread_mutex_t lock;
    char name[NS_NAME_MAX + 1];
    size_t channels;      /* 0 until a report with arrays fixed it */
    int64_t *worker_last; /* [n_workers] last step each worker reported, -1 */
    uint32_t n_workers;
    int64_t max_closed;   /* highest finalized or dropped step, -1 */
    int64_t last_applied; /* -1 */
    int64_t max_seen;     /* highest step reported, -1 */
    /* samples of accepted arrivals with update precise, pending or finalized,
     * not applied yet: what the accumulators will still receive */
    uint64_t precise_due;
    nsd_pending_t **pending; /* ascending step */
    size_t n_pending, cap_pending;
    nsd_step_t **ready; /* finalized, not applied yet; ascending step */
    size_t n_ready, cap_ready;
    nsd_pop_t **pops; /* [cap_pops] by domain index, NULL = never touched */
    size_t cap_pops;
    nsd_pop_t *pooled; /* the "*" EMA; NULL while channels == 0 */
    /* The pooled scope's last values are pooled's (population.h), as each
     * domain's are its pop's. spare_step: a step no one holds any more,
     * kept as the buffer of the layer's next finalized step (counted);
     * NULL if none. */
    nsd_step_t *spare_step;
    /* Whose history the pooled view reads (drift.h): 0 before the first
     * step, 1 + d while every step had domain d alone, NSD_HISTORY_OWN once
     * the pooled state keeps its own. */
    uint32_t history_alias;
    /* Arrival blocks (2 * channels floats) of closed steps kept for the next
     * arrivals, at most world_size: a steady run allocates none. Linked
     * through each block's first bytes; counted in the run's memory. */
    float *spares;
    uint32_t n_spares;
    /* The last closed pending step, emptied, for the next step to reuse
     * (counted in the run's memory); NULL if none. */
    nsd_pending_t *spare_pending;
} nsd_layer_t;

/* The replaceable part of a run (a checkpoint import swaps it whole).
 * Run-level fields change only under run->lock exclusively; the two
 * counters that reports to different layers move together are atomic. */
typedef struct nsd_run_state_s {
    ns_run_config_t cfg;
    char (*domains)[NS_NAME_MAX + 1];
    uint64_t *domain_gen; /* precise generation per domain */
    size_t n_domains, cap_domains;
    nsd_layer_t **layers; /* ascending name */
    size_t n_layers, cap_layers;
    _Atomic uint64_t skipped_steps;
    uint64_t precise_generation; /* the latest number handed out, 0 at creation */
    _Atomic uint64_t memory;     /* accounted bytes */
    nsd_gradsum_t *grad;         /* pending gradient steps (grad_lock); NULL until the first */
} nsd_run_state_t;

typedef struct nsd_run_s {
    char name[NS_NAME_MAX + 1];
    pthread_rwlock_t lock;     /* run-level state; shared by reports (see DESIGN) */
    pthread_mutex_t grad_lock; /* st.grad, under lock held shared */
    _Atomic unsigned refs;
    int deleted; /* under lock (exclusive to set): removed from the map */
    nsd_ctx_t *ctx;
    nsd_run_state_t st;
    /* Health (run_health.c), kept across checkpoint imports. */
    _Atomic uint64_t steps_applied;
    _Atomic uint64_t last_active_ms;              /* the last report, accepted or refused */
    /* Refused reports touch no run-level state under 'lock': a flood of bad
     * reports never waits for, nor holds up, good ones. */
    _Atomic uint64_t rejections[NSD_REJECTION_REASONS];
    pthread_mutex_t log_limit_lock;               /* innermost; the three below */
    uint64_t log_window, log_lines, log_withheld; /* rejection log limit */
} nsd_run_t;

/* What a run costs before it holds anything, counted against max_memory
 * so that runs without layers are bounded too. */
#define NSD_RUN_BYTES (sizeof(nsd_run_t) + 2 * sizeof(nsd_run_t *))

/*! nsd_run_create() : a run with 'cfg' (has_* ignored, all values used),
 *  one reference, NSD_RUN_BYTES reserved. @return NULL with *why set to
 *  NS_EMEMORY (over max_memory) or NS_ENOMEM. */
nsd_run_t *nsd_run_create(nsd_ctx_t *ctx, const char *name, const ns_run_config_t *cfg, int *why);

/*! nsd_run_ref() / nsd_run_unref() : the last unref frees the run (its
 *  state memory is released from ctx; waiters must have been fired). */
void nsd_run_ref(nsd_run_t *run);
void nsd_run_unref(nsd_run_t *run);

/*! nsd_run_state_clear() : free every layer, pending step and domain of
 *  'st', releasing its memory from ctx; waiters still referenced get
 *  'status' and are put into 'box'. Run locked exclusively (or unshared). */
void nsd_run_state_clear(nsd_ctx_t *ctx, nsd_run_state_t *st, int status, nsd_outbox_t *box);

/*! nsd_run_config_apply() : set the fields of 'cfg' that have has_*.
 *  Run locked exclusively. @return 0 or NS_EINVAL (value out of range,
 *  detail in err). */
int nsd_run_config_apply(nsd_run_t *run, const ns_run_config_t *cfg, ns_error_detail_t *err,
                         nsd_outbox_t *box);

/* How nsd_run_report() is called. */
enum {
    NSD_REPORT_SHARED = 1,  /* run->lock held shared: it locks the report's layers */
    NSD_REPORT_CREATED = 2, /* the report creates the run: logged (run_put) first */
};

/* nsd_run_report() under run->lock shared: the report adds a layer or a
 * domain, call again with run->lock held exclusively. Nothing changed. */
#define NSD_REPORT_NEEDS_EXCLUSIVE 1

/*! nsd_run_report() : validate and apply one report (see
 *  nsd_registry_report). 'waiter' (NULL for /batches) is allocated by the
 *  caller with res->n_layers == report->n_layers and names set; on success
 *  the run owns it until it fires (into 'box'). On success the layers' mean
 *  and var arrays are taken from the report (set to NULL there); on error the
 *  report is untouched. 'mode': NSD_REPORT_* bits; without
 *  NSD_REPORT_SHARED run->lock is held exclusively. The persistence hooks
 *  are called as the report changes the run: a new run, a new domain, then
 *  each finalized step under its layer's lock. @return 0, NS_E*, or
 *  NSD_REPORT_NEEDS_EXCLUSIVE (shared mode only). */
int nsd_run_report(nsd_run_t *run, ns_report_t *report, uint64_t now_ms, unsigned mode,
                   nsd_waiter_t *waiter, nsd_outbox_t *box, ns_error_detail_t *err);

/*! nsd_run_expire() : time out due pending steps, each layer under its
 *  lock, then the gradient steps under grad_lock (run->lock held shared).
 *  @return the next deadline of the run or UINT64_MAX. */
uint64_t nsd_run_expire(nsd_run_t *run, uint64_t now_ms, nsd_outbox_t *box);

/*! nsd_run_fire_all() : every waiter of the run gets 'status' now. Run
 *  locked exclusively. */
void nsd_run_fire_all(nsd_run_t *run, int status, nsd_outbox_t *box);

/*! nsd_run_lock_layers() / nsd_run_unlock_layers() : every layer's mutex,
 *  in ascending name order (run->lock held shared): what a reader holds to
 *  copy a consistent cut of the run (every report wholly in or out). */
void nsd_run_lock_layers(nsd_run_t *run);
void nsd_run_unlock_layers(nsd_run_t *run);

/*! nsd_run_stats() : build a statistics answer (see nsd_registry_stats). */
int nsd_run_stats(nsd_run_t *run, const nsd_stats_query_t *q, nsd_stats_t **dst,
                  ns_error_detail_t *err);

/*! nsd_run_precise_reset() : see nsd_registry_precise_reset. */
int nsd_run_precise_reset(nsd_run_t *run, const char *domain, uint64_t *generation,
                          ns_error_detail_t *err);

/*! nsd_run_replay_step() : see nsd_registry_replay_step. */
int nsd_run_replay_step(nsd_run_t *run, const nsd_step_t *rec, ns_error_detail_t *err);

/*! nsd_run_add_domain() : index of 'name', appended (as a report does) if new.
 *  @return the index, or NS_ENOMEM. */
long nsd_run_add_domain(nsd_run_t *run, const char *name);

/*! nsd_run_apply_held() : apply every finalized step still waiting (end of
 *  recovery). @return how many. */
size_t nsd_run_apply_held(nsd_run_t *run);

/*! nsd_run_persist_ready() : hand the finalized steps waiting to be
 *  applied to the step_finalized hook (for a snapshot; layers locked). */
void nsd_run_persist_ready(nsd_run_t *run);

/*! nsd_run_held_steps() : the same steps, with first_pending set, linked
 *  into 'held' (borrowed: valid while the layers stay locked). */
void nsd_run_held_steps(nsd_run_t *run, nsd_queue_t *held);

/*! nsd_run_text_bytes() / nsd_run_drift_text_bytes() : what writing the
 *  status (nsd_run_text()) / the /drift answer of every row takes at most,
 *  text and working memory (the run's lock shared and every layer's),
 *  reserved from --max-memory before writing them. */
uint64_t nsd_run_text_bytes(const nsd_run_t *run);
uint64_t nsd_run_drift_text_bytes(const nsd_run_t *run);

/*! nsd_run_text() : GET /v1/runs/{run}'s body appended to 'dst' as compact
 *  JSON text, without a tree; 'dst' is first sized to nsd_run_text_bytes().
 *  @return 0, or the buffer's error. */
int nsd_run_text(nsd_run_t *run, uint64_t now_ms, ns_buf_t *dst);

/*! nsd_run_summary_json() : GET /v1/runs's entry (a new reference). */
json_t *nsd_run_summary_json(nsd_run_t *run);

/*! nsd_run_config_json() : {"world_size", "momentum" (null = cumulative),
 *  "sync_timeout_ms", "on_timeout", "ema_debias"}, a new reference. */
json_t *nsd_run_config_json(const ns_run_config_t *cfg);

/*! nsd_run_find_domain() : index of 'name', or -1. */
long nsd_run_find_domain(const nsd_run_state_t *st, const char *name);

/*! nsd_run_find_layer() : the layer 'name', or NULL. */
nsd_layer_t *nsd_run_find_layer(const nsd_run_state_t *st, const char *name);

/*! nsd_mem_reserve() / nsd_mem_release() : registry-wide accounting.
 *  reserve fails with NS_EMEMORY above limits.max_memory. */
int nsd_mem_reserve(nsd_ctx_t *ctx, uint64_t bytes);
void nsd_mem_release(nsd_ctx_t *ctx, uint64_t bytes);

/*! nsd_outbox_fire() : put a waiter whose result is final into the box. */
void nsd_outbox_fire(nsd_outbox_t *box, nsd_waiter_t *w);

/*! nsd_run_settle() : apply box's counter changes (pending steps,
 *  finalized steps, memory released) to ctx and the run; zeroes them. */
void nsd_run_settle(nsd_run_t *run, nsd_outbox_t *box);

/*! nsd_run_note_deadline() : a pending step of the run got 'deadline':
 *  lower ctx->next_deadline to it and ask for a wakeup if it moved. */
void nsd_run_note_deadline(nsd_run_t *run, uint64_t deadline, nsd_outbox_t *box);

/* ---------------------------------------------------------------- between the run's files */

/*! nsd_waiter_fail() : fire a waiter with an error status now (first error
 *  wins); takes the waiter's lock. For a run locked exclusively, which
 *  drops every reference to the waiter at once. */
void nsd_waiter_fail(nsd_ctx_t *ctx, nsd_outbox_t *box, nsd_waiter_t *w, int status);

/*! nsd_waiter_layer_done() : one layer of the waiter is done, with 'status'
 *  (0, or an error: the first error wins); fires it when it was the last.
 *  The waiter's lock held: layers of one waiter finish on several threads. */
void nsd_waiter_layer_done(nsd_ctx_t *ctx, nsd_outbox_t *box, nsd_waiter_t *w, int status);

/*! nsd_persist_run_created() / nsd_persist_domain() : the run_put (a run a
 *  report created) and domain_added hooks, if installed (run locked
 *  exclusively). */
void nsd_persist_run_created(nsd_run_t *run);
void nsd_persist_domain(nsd_run_t *run, size_t index);

/*! nsd_run_layer_pos() : position of layer 'name' in st->layers, or where it would go. */
size_t nsd_run_layer_pos(const nsd_run_state_t *st, const char *name, int *found);

/*! nsd_run_reserve_domain() : room for one more domain (capacity only).
 *  @return 0 or NS_ENOMEM. */
int nsd_run_reserve_domain(nsd_run_state_t *st);

/*! nsd_run_append_domain() : append domain 'name' into reserved room; it
 *  starts at the run's current PreciseBN generation. @return its index. */
long nsd_run_append_domain(nsd_run_state_t *st, const char *name);

/*! nsd_layer_lock() / nsd_layer_unlock() : the layer's mutex. */
static inline void nsd_layer_lock(nsd_layer_t *l)
{
    pthread_mutex_lock(&l->lock);
}
static inline void nsd_layer_unlock(nsd_layer_t *l)
{
    pthread_mutex_unlock(&l->lock);
}

/*! nsd_layer_create() : an empty layer 'name'; NULL when out of memory. */
nsd_layer_t *nsd_layer_create(const char *name);

/*! nsd_layer_free() : free a layer and everything it holds (pending steps
 *  and ready steps too, waiters not fired: clear them first). */
void nsd_layer_free(nsd_layer_t *layer);

/*! nsd_layer_take_spare() : a kept arrival block of 2 * channels floats
 *  (its bytes stay counted), or NULL if none. */
float *nsd_layer_take_spare(nsd_layer_t *l);

/*! nsd_layer_pending_pos() : index of pending step 'step', or where it would go. */
size_t nsd_layer_pending_pos(const nsd_layer_t *l, uint64_t step, int *found);

/*! nsd_layer_grow_workers() : worker_last for 'need' workers (new ones -1).
 *  @return 0 or NS_ENOMEM. */
int nsd_layer_grow_workers(nsd_layer_t *l, uint32_t need);

/*! nsd_layer_persist_step() : hand finalized step 'f' of layer 'l' to the
 *  step_finalized hook, if installed, with its first_pending set from the
 *  layer (layer locked). */
void nsd_layer_persist_step(const nsd_run_t *run, const nsd_layer_t *l, nsd_step_t *f);

/*! nsd_layer_ready_insert() : a finalized step joins the layer (the last
 *  values' views, then the ready queue in step order); room in l->ready was
 *  reserved, 'f' is counted in the run's memory. Shared by the live path
 *  and replay. */
void nsd_layer_ready_insert(nsd_run_t *run, nsd_layer_t *l, nsd_step_t *f);

/*! nsd_layer_adopt_last() : the last values of a checkpoint import, of
 *  population 'pop' of the layer: 'values' (mean then var, 2 * channels),
 *  either its copy arrays (s NULL, nsd_pop_last_copy()) or the block of
 *  step 's' (held by no one, counted by the caller), viewed from now. */
void nsd_layer_adopt_last(nsd_pop_t *pop, nsd_step_t *s, uint64_t step, uint64_t count,
                          const double *values);

/*! nsd_layer_count_steps() : 'bytes' of finalized steps made (> 0) or
 *  freed (< 0) by the layer, into the run's and the registry's memory. */
void nsd_layer_count_steps(nsd_run_t *run, int64_t bytes);

/*! nsd_run_close_pending() : close pending step 'idx' of the layer:
 *  finalize it (drop == 0) or discard it (drop == 1). Applying is left to
 *  nsd_run_apply_ready(). */
void nsd_run_close_pending(nsd_run_t *run, nsd_layer_t *l, size_t idx, int drop, nsd_outbox_t *box);

/*! nsd_run_apply_ready_below() : apply the layer's finalized steps in step
 *  order while they are below 'bound'. @return how many. */
size_t nsd_run_apply_ready_below(nsd_run_t *run, nsd_layer_t *l, uint64_t bound);

/*! nsd_run_apply_ready() : apply finalized steps while no earlier step is pending. */
void nsd_run_apply_ready(nsd_run_t *run, nsd_layer_t *l);

#endif /* NSD_RUN_H */
