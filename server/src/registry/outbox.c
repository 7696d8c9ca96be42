/* outbox.c - what a locked operation on a run hands out after unlocking:
 * fired /sync waiters and the coordinator's wakeup (see run.h). */
#include "run.h"

#include <stdint.h>

void nsd_outbox_fire(nsd_outbox_t *box, nsd_waiter_t *w)
{
    w->fired = 1;
    nsd_queue_push(&box->fired, &w->link);
}

void nsd_run_note_deadline(nsd_run_t *run, uint64_t deadline, nsd_outbox_t *box)
{
    uint64_t cur = atomic_load(&run->ctx->next_deadline);
    while (deadline < cur) {
        if (atomic_compare_exchange_weak(&run->ctx->next_deadline, &cur, deadline)) {
            box->wakeup = 1;
            break;
        }
    }
}

/* Fire a waiter with an error status now (first error wins). */
void nsd_waiter_fail(nsd_ctx_t *ctx, nsd_outbox_t *box, nsd_waiter_t *w, int status)
{
    if (w->fired)
        return;
    if (w->res->status == 0)
        w->res->status = status;
    atomic_fetch_sub(&ctx->sync_waiters, 1);
    nsd_outbox_fire(box, w);
}

/* One layer of the waiter is done; fires it when it was the last. */
void nsd_waiter_layer_done(nsd_ctx_t *ctx, nsd_outbox_t *box, nsd_waiter_t *w)
{
    if (w->fired || w->remaining == 0)
        return;
    if (--w->remaining > 0)
        return;
    nsd_sync_result_t *res = w->res;
    res->complete = 1;
    res->workers = UINT32_MAX;
    for (size_t i = 0; i < res->n_layers; i++) {
        if (!res->layers[i].complete)
            res->complete = 0;
        if (res->layers[i].workers < res->workers)
            res->workers = res->layers[i].workers;
    }
    if (res->n_layers == 0)
        res->workers = 0;
    atomic_fetch_sub(&ctx->sync_waiters, 1);
    nsd_outbox_fire(box, w);
}
