/* outbox.c - what a locked operation on a run hands out: fired /sync
 * waiters and the coordinator's wakeup (delivered after unlocking), and the
 * run-level persistence calls a report makes (see run.h). */
#include "run.h"

#include <stdint.h>

void nsd_outbox_fire(nsd_outbox_t *box, nsd_waiter_t *w)
{
    w->fired = 1;
    nsd_queue_push(&box->fired, &w->link);
}

void nsd_run_settle(nsd_run_t *run, nsd_outbox_t *box)
{
    nsd_ctx_t *ctx = run->ctx;
    if (box->pending_delta != 0)
        atomic_fetch_add(&ctx->pending_steps, (uint64_t)box->pending_delta);
    if (box->finalized != 0)
        atomic_fetch_add(&ctx->steps_finalized, box->finalized);
    if (box->released != 0) {
        nsd_mem_release(ctx, box->released);
        atomic_fetch_sub(&run->st.memory, box->released);
    }
    box->pending_delta = 0;
    box->finalized = box->released = 0;
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
    pthread_mutex_lock(&w->lock);
    if (!w->fired) {
        if (w->res->status == 0)
            w->res->status = status;
        atomic_fetch_sub(&ctx->sync_waiters, 1);
        nsd_outbox_fire(box, w);
    }
    pthread_mutex_unlock(&w->lock);
}

/* One layer of the waiter is done; fires it when it was the last. The
 * waiter's lock is held, so the thread that fires it sees every layer's
 * entry written by the threads that finished the others. */
void nsd_waiter_layer_done(nsd_ctx_t *ctx, nsd_outbox_t *box, nsd_waiter_t *w, int status)
{
    if (w->fired || w->remaining == 0)
        return;
    if (status != 0 && w->res->status == 0)
        w->res->status = status;
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

void nsd_persist_run_created(nsd_run_t *run)
{
    const nsd_persist_t *p = &run->ctx->persist;
    if (p->run_put)
        p->run_put(p->arg, run->name, &run->st.cfg, 1);
}

void nsd_persist_domain(nsd_run_t *run, size_t index)
{
    const nsd_persist_t *p = &run->ctx->persist;
    if (p->domain_added)
        p->domain_added(p->arg, run->name, run->st.domains[index]);
}
