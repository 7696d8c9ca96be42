/* barrier.h - pending steps of one layer: arrivals per worker, /sync waiters,
 * and finalization (the per-domain and pooled combination of a step).
 *
 * DESIGN
 *  - A pending step collects at most one arrival per worker rank
 *    (0..world_size-1, world_size fixed when the step was created). It is
 *    complete when every rank arrived, or is closed early by a timeout.
 *  - Finalization combines the arrivals with ns_combine() in rank order, per
 *    domain (domains in the run's domain order) and pooled, so the result
 *    bits never depend on the order in which reports arrived. Arrivals with
 *    n = 0 count for the barrier and contribute nothing.
 *  - Finalized steps wait in a per-layer queue until no earlier step of the
 *    layer is pending; then the run applies them to EMA/PreciseBN in step
 *    order (layer.c).
 *  - Waiters (/sync) reference the pending step of every layer of their
 *    report; each finalization fills one layer of the waiter's result and
 *    the waiter fires when its last layer is done. Layers finish under
 *    their own locks, possibly on several threads at once, so the waiter's
 *    shared part (remaining, status, missing, fired) has a mutex of its
 *    own; each layer writes only its own entry of the result.
 * Threads: none of its own; the layer's lock guards its pending steps. */
#ifndef NSD_BARRIER_H
#define NSD_BARRIER_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "registry_types.h"
#include "step.h"

/* One worker's statistics of a pending step (arrays owned: the report's,
 * or, from a report that borrowed them, one copy holding both). */
typedef struct nsd_arrival_s {
    int present;
    int joint;       /* var lies in mean's allocation */
    uint32_t domain; /* index into the run's domains */
    uint64_t n;
    float *mean; /* [channels] or NULL (n == 0 without arrays) */
    float *var;
    double *mean64; /* [channels] or NULL: the arrays as sent in F64 (a relay's node) */
    double *var64;
} nsd_arrival_t;

/* A /sync request waiting for the steps of its report's layers. */
typedef struct nsd_waiter_s {
    pthread_mutex_t lock; /* remaining, fired, res->status, res->missing */
    nsd_sync_cb cb;
    void *arg;
    nsd_sync_result_t *res; /* layers named, arrays filled when finalized */
    size_t remaining;       /* layers not finalized yet */
    int scope;              /* NS_SCOPE_* */
    uint32_t domain;        /* the caller's domain index (scope domain) */
    int fired;
    nsd_qnode_t link; /* in an outbox's queue of fired waiters */
} nsd_waiter_t;

typedef struct nsd_waitref_s {
    nsd_waiter_t *waiter;
    size_t index; /* layer of waiter->res */
} nsd_waitref_t;

typedef struct nsd_pending_s {
    uint64_t step;
    uint32_t world_size;
    uint32_t arrived;
    unsigned update;
    uint64_t created_ms;     /* first arrival */
    size_t bytes;            /* accounted memory */
    nsd_arrival_t *arrivals; /* [world_size] */
    nsd_waitref_t *waiters;
    size_t n_waiters, cap_waiters;
} nsd_pending_t;

/*! nsd_pending_reuse() :
 *  Make a closed pending step (no waiters left) an empty one for 'step', as
 *  nsd_pending_create() would: arrival arrays freed, slots cleared; the
 *  waiter capacity stays. */
void nsd_pending_reuse(nsd_pending_t *p, uint64_t step, unsigned update, uint64_t now_ms);

/*! nsd_pending_bytes() : what nsd_pending_create() counts for 'world_size'. */
size_t nsd_pending_bytes(uint32_t world_size);

/*! nsd_pending_create() :
 *  An empty pending step for 'world_size' ranks. @return NULL when out of memory. */
nsd_pending_t *nsd_pending_create(uint64_t step, uint32_t world_size, unsigned update,
                                  uint64_t now_ms);

/*! nsd_pending_free() : frees arrivals and waiter references (not the
 *  waiters). Accepts NULL. */
void nsd_pending_free(nsd_pending_t *p);

/*! nsd_pending_reserve_waiter() : room for one more waiter reference.
 *  @return 0 or NS_ENOMEM (nothing changed). */
int nsd_pending_reserve_waiter(nsd_pending_t *p);

/*! nsd_barrier_finalize() :
 *  Combine the arrivals of 'p' of layer 'layer' ('channels' per arrival, 0
 *  if no arrival has arrays; 'domains' the run's n_domains domain names)
 *  into *dst: a step of 'channels' to refill (a layer's recycled one, its
 *  contents dropped), or NULL for a new one. On error a step passed in stays in
 *  *dst, emptied again; a new one is freed (*dst NULL).
 *  @return 0 and *dst, NS_ENOMEM, or NS_EINVAL from libnscore. */
int nsd_barrier_finalize(const nsd_pending_t *p, const char *layer, size_t channels,
                         const char (*domains)[NS_NAME_MAX + 1], size_t n_domains, int threads,
                         nsd_step_t **dst);

#endif /* NSD_BARRIER_H */
