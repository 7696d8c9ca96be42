/* gradsum.h - pending gradient steps of one run (POST /grad): the per-channel
 * sums SyncBatchNorm all-reduces in backward, added over the run's workers.
 *
 * DESIGN
 *  - Separate from the statistics barrier: a pending gradient step is keyed
 *    by (layer, step) in its own table, so /sync and /grad may use the same
 *    step number. Nothing here touches EMA, PreciseBN, the store, or the
 *    statistics' pending steps and layers (a statistics layer's channel count
 *    is only read, to validate).
 *  - A pending gradient step collects one arrival per worker (ranks
 *    0..world_size-1, world_size fixed when the step was created), widened to
 *    double. When every rank arrived, the arrivals are summed per channel in
 *    worker order, s = ((x_0 + x_1) + x_2) + ..., so the bits never depend on
 *    the order of arrival; every waiter gets the sums and the step is
 *    forgotten, except that each worker's last completed step of the layer
 *    is kept: a later request at or below it is stale.
 *  - sync_timeout_ms after its first arrival a pending gradient step is
 *    discarded, never summed partially (whatever on_timeout says): its
 *    waiters get NS_ETIMEDOUT with a message naming the layer, the step and
 *    the workers that did not send.
 *  - A waiter is one request (any number of layers); it fires when its last
 *    layer completed or timed out, with the first error of its layers. Its
 *    answer arrays are allocated before the request is accepted, so
 *    completion never allocates and cannot fail.
 *  - Memory: per-layer state, pending steps and their arrivals are accounted
 *    in run->st.memory and ctx->memory, reserved against max_memory before
 *    anything is allocated. Answers are not (they leave with the response).
 * Threads: none of its own. nsd_gradsum_submit() expects run->lock held
 *  shared and takes run->grad_lock (after reading the statistics layers'
 *  channel counts under their locks); nsd_gradsum_expire() expects
 *  grad_lock held; the others run->lock held exclusively. */
#ifndef NSD_GRADSUM_H
#define NSD_GRADSUM_H

#include <stddef.h>
#include <stdint.h>

#include "base/queue.h"
#include "registry_types.h"
#include "run.h"

/* A POST /grad request waiting for the gradient steps of its layers. */
typedef struct nsd_grad_waiter_s {
    nsd_grad_cb cb;
    void *arg;
    nsd_grad_result_t *res; /* answer layers named, arrays allocated */
    size_t remaining;       /* layers not completed or timed out yet */
    int fired;
    nsd_qnode_t link; /* in an outbox's queue of fired /grad waiters */
} nsd_grad_waiter_t;

/*! nsd_grad_waiter_create() :
 *  A waiter for 'grad' (not yet owned by any run): its result's answer has the
 *  request's step, dtype, layer names and channel counts, and arrays to be
 *  filled. @return NULL when out of memory. */
nsd_grad_waiter_t *nsd_grad_waiter_create(const ns_grad_t *grad, nsd_grad_cb cb, void *arg);

/*! nsd_grad_waiter_free() : free a waiter that was never handed to a run, or
 *  one that fired (with its result). Accepts NULL. */
void nsd_grad_waiter_free(nsd_grad_waiter_t *w);

/*! nsd_gradsum_submit() :
 *  Validate 'grad' against the run (every layer first: NS_EWORKER,
 *  NS_ECHANNELS, NS_EDUPLICATE, NS_ESTALE, NS_EBUSY, then NS_EMEMORY,
 *  NS_ENOMEM; on error nothing changed and 'err' names the field), then
 *  record its arrivals, taking their arrays from 'grad' (set to NULL there),
 *  and make 'waiter' wait on them. Steps it completes are summed at once;
 *  fired waiters go to 'box'. On success the run owns 'waiter'. */
int nsd_gradsum_submit(nsd_run_t *run, ns_grad_t *grad, uint64_t now_ms, nsd_grad_waiter_t *waiter,
                       nsd_outbox_t *box, ns_error_detail_t *err);

/*! nsd_gradsum_expire() :
 *  Discard the pending gradient steps due at 'now_ms'.
 *  @return the run's next gradient deadline, or UINT64_MAX. */
uint64_t nsd_gradsum_expire(nsd_run_t *run, uint64_t now_ms, nsd_outbox_t *box);

/*! nsd_gradsum_fire_all() :
 *  Every waiter of 'gs' (may be NULL) gets 'status' now; the pending steps
 *  stay. */
void nsd_gradsum_fire_all(nsd_ctx_t *ctx, nsd_gradsum_t *gs, int status, nsd_outbox_t *box);

/*! nsd_gradsum_free() :
 *  Free 'gs' (may be NULL) and its pending steps. Waiters still referenced
 *  get 'status' into 'box' (box NULL: they are left alone). Accounted memory
 *  is NOT released here: it is part of the state's memory, which the caller
 *  releases. */
void nsd_gradsum_free(nsd_ctx_t *ctx, nsd_gradsum_t *gs, int status, nsd_outbox_t *box);

#endif /* NSD_GRADSUM_H */
