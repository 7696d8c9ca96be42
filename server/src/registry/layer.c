/* layer.c - one layer of a run: its pending steps closed (finalized by the
 * barrier or dropped), finalized steps queued and applied to EMA/PreciseBN
 * in step order (see the DESIGN in run.h and barrier.h). */
#include "run.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/array.h"
#include "drift.h"

/* Index of the pending step 'step' in the layer, or where it would go. */
size_t nsd_layer_pending_pos(const nsd_layer_t *l, uint64_t step, int *found)
{
    size_t lo = 0, hi = l->n_pending;
    *found = 0;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (l->pending[mid]->step == step) {
            *found = 1;
            return mid;
        }
        if (l->pending[mid]->step < step)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

int nsd_layer_grow_workers(nsd_layer_t *l, uint32_t need)
{
    if (need <= l->n_workers)
        return 0;
    int64_t *p = realloc(l->worker_last, need * sizeof(int64_t));
    if (p == NULL)
        return NS_ENOMEM;
    for (uint32_t w = l->n_workers; w < need; w++)
        p[w] = -1;
    l->worker_last = p;
    l->n_workers = need;
    return 0;
}

float *nsd_layer_take_spare(nsd_layer_t *l)
{
    float *block = l->spares;
    if (block != NULL) {
        memcpy(&l->spares, block, sizeof(l->spares));
        l->n_spares--;
    }
    return block;
}

/* Keep the closing step's single-block arrivals for the next steps, up to
 * 'cap' blocks: their bytes move from the step to the layer. Only from a
 * layer's second closed step on, so a layer reported once keeps none. */
static void keep_spares(nsd_layer_t *l, nsd_pending_t *p, uint32_t cap)
{
    for (uint32_t w = 0; w < p->world_size && l->n_spares < cap; w++) {
        nsd_arrival_t *a = &p->arrivals[w];
        if (!a->joint || a->mean == NULL || l->channels == 0)
            continue;
        memcpy(a->mean, &l->spares, sizeof(l->spares));
        l->spares = a->mean;
        l->n_spares++;
        p->bytes -= 2 * l->channels * sizeof(float);
        a->mean = a->var = NULL;
        a->joint = 0;
    }
}

nsd_layer_t *nsd_layer_create(const char *name)
{
    nsd_layer_t *l = calloc(1, sizeof(*l));
    if (l == NULL)
        return NULL;
    if (pthread_mutex_init(&l->lock, NULL) != 0) {
        free(l);
        return NULL;
    }
    snprintf(l->name, sizeof(l->name), "%s", name);
    l->max_closed = -1;
    l->last_applied = -1;
    l->max_seen = -1;
    return l;
}

void nsd_layer_adopt_last(nsd_pop_t *pop, nsd_step_t *s, uint64_t step, uint64_t count,
                          const double *values)
{
    if (s != NULL)
        s->refs = 1;
    pop->last = s;
    pop->last_mean = values;
    pop->last_step = (int64_t)step;
    pop->last_count = count;
}

void nsd_layer_count_steps(nsd_run_t *run, int64_t bytes)
{
    if (bytes == 0)
        return;
    atomic_fetch_add(&run->ctx->memory, (uint64_t)bytes);
    atomic_fetch_add(&run->st.memory, (uint64_t)bytes);
}

/* One more holder of finalized step 's' (the layer locked). */
static nsd_step_t *step_hold(nsd_step_t *s)
{
    s->refs++;
    return s;
}

/* One holder less (NULL: none). After the last one the step is kept as
 * the buffer of the layer's next finalized step, or freed if one is kept. */
static void step_release(nsd_run_t *run, nsd_layer_t *l, nsd_step_t *s)
{
    if (s == NULL || --s->refs > 0)
        return;
    if (l->spare_step == NULL && s->channels == l->channels && nsd_step_viewed(l->channels)) {
        l->spare_step = s;
        return;
    }
    nsd_layer_count_steps(run, -(int64_t)s->bytes);
    nsd_step_free(s);
}

/* step_release() as the layer is freed (its memory leaves with the run's). */
static void step_drop(nsd_step_t *s)
{
    if (s != NULL && --s->refs == 0)
        nsd_step_free(s);
}

void nsd_layer_free(nsd_layer_t *l)
{
    if (l == NULL)
        return;
    for (size_t i = 0; i < l->n_pending; i++)
        nsd_pending_free(l->pending[i]);
    free(l->pending);
    for (size_t i = 0; i < l->n_ready; i++)
        step_drop(l->ready[i]);
    free(l->ready);
    for (size_t i = 0; i < l->cap_pops; i++) {
        if (l->pops[i] != NULL)
            step_drop(l->pops[i]->last);
        nsd_pop_free(l->pops[i]);
    }
    free(l->pops);
    if (l->pooled != NULL)
        step_drop(l->pooled->last);
    nsd_pop_free(l->pooled);
    nsd_step_free(l->spare_step);
    free(l->worker_last);
    while (l->n_spares > 0)
        free(nsd_layer_take_spare(l));
    nsd_pending_free(l->spare_pending);
    pthread_mutex_destroy(&l->lock);
    free(l);
}

/* A finalized step to the persistence hook, under the layer's lock, so the
 * store logs the layer's steps in the order they finalized. The hook copies
 * what it keeps. */
void nsd_layer_persist_step(const nsd_run_t *run, const nsd_layer_t *l, nsd_step_t *f)
{
    const nsd_persist_t *p = &run->ctx->persist;
    if (p->step_finalized == NULL)
        return;
    f->first_pending = l->n_pending > 0 ? (int64_t)l->pending[0]->step : -1;
    p->step_finalized(p->arg, run->name, f);
}

/* Add the workers that did not arrive at 'p' to the result's missing list
 * (a sorted union over the layers). @return 0 or NS_ENOMEM. */
static int note_missing(nsd_sync_result_t *res, const nsd_pending_t *p)
{
    uint32_t *m = malloc((res->n_missing + p->world_size + 1) * sizeof(*m));
    if (m == NULL)
        return NS_ENOMEM;
    size_t n = 0, i = 0;
    for (uint32_t w = 0; w < p->world_size; w++) {
        if (p->arrivals[w].present)
            continue;
        while (i < res->n_missing && res->missing[i] < w)
            m[n++] = res->missing[i++];
        if (i < res->n_missing && res->missing[i] == w)
            i++;
        m[n++] = w;
    }
    while (i < res->n_missing)
        m[n++] = res->missing[i++];
    free(res->missing);
    res->missing = m;
    res->n_missing = n;
    return 0;
}

/* One finalized layer's statistics into the waiter's entry for it.
 * @return 0 or NS_ENOMEM. */
static int fill_entry(nsd_waiter_t *w, size_t index, const nsd_pending_t *p, const nsd_step_t *f)
{
    if (!f->complete && note_missing(w->res, p) != 0)
        return NS_ENOMEM;
    nsd_sync_layer_t *sl = &w->res->layers[index];
    uint64_t count = f->count;
    const double *mean = f->mean;
    if (w->scope == NS_SCOPE_DOMAIN) {
        const nsd_step_domain_t *d = nsd_step_find_domain(f, w->domain);
        count = d ? d->count : 0;
        mean = d ? d->mean : NULL;
    }
    sl->count = count;
    sl->complete = f->complete;
    sl->workers = f->workers;
    if (mean != NULL && f->channels > 0) {
        sl->mean = malloc(2 * f->channels * sizeof(double));
        if (sl->mean == NULL)
            return NS_ENOMEM;
        sl->var = sl->mean + f->channels;
        sl->channels = f->channels;
        memcpy(sl->mean, mean, 2 * f->channels * sizeof(double));
    }
    return 0;
}

/* Copy one finalized layer's statistics into every waiter of the step. A
 * waiter that fails here still waits for its other layers, which hold
 * references to it, and fires with the error after the last. */
static void fill_waiters(nsd_ctx_t *ctx, nsd_outbox_t *box, nsd_pending_t *p, const nsd_step_t *f)
{
    for (size_t k = 0; k < p->n_waiters; k++) {
        nsd_waiter_t *w = p->waiters[k].waiter;
        pthread_mutex_lock(&w->lock);
        int status = w->fired ? 0 : fill_entry(w, p->waiters[k].index, p, f);
        nsd_waiter_layer_done(ctx, box, w, status);
        pthread_mutex_unlock(&w->lock);
    }
    p->n_waiters = 0;
}

static void apply_separately(nsd_run_t *run, nsd_layer_t *l, const nsd_step_t *f);

/* Apply one finalized step to the layer's population state. */
static void apply_final(nsd_run_t *run, nsd_layer_t *l, const nsd_step_t *f)
{
    nsd_ctx_t *ctx = run->ctx;
    size_t c = f->channels;
    double momentum = run->st.cfg.momentum;
    const nsd_step_domain_t *one = f->n_domains == 1 ? &f->domains[0] : NULL;
    nsd_pop_t *pop1 = one != NULL && one->index < l->cap_pops ? l->pops[one->index] : NULL;
    if (c > 0 && pop1 != NULL && l->pooled != NULL && nsd_step_shares_pooled(f, one) &&
        one->count == f->count) {
        /* One domain, the pooled arrays: both populations and the
         * domain's history entry in one pass. */
        int pooled_changed = 0;
        nsd_history_fused_t hist;
        ns_step_record_t *rec = nsd_layer_history_open(run, l, f, &hist);
        int rc = nsd_pop_apply_with_pooled(pop1, l->pooled, c, f->update, one->count, one->mean,
                                           one->var, momentum, f->step, rec, &pooled_changed);
        nsd_layer_history_close(run, l, f, &hist, rc >= 0);
        if ((f->update & NS_UPDATE_EMA) && pooled_changed != 1) {
            atomic_fetch_add(&run->st.skipped_steps, 1);
            atomic_fetch_add(&ctx->steps_skipped, 1);
        }
    } else {
        apply_separately(run, l, f);
        nsd_layer_history_note(run, l, f);
    }
    if (f->update & NS_UPDATE_PRECISE)
        l->precise_due -= f->count <= l->precise_due ? f->count : l->precise_due;
    l->last_applied = (int64_t)f->step;
    atomic_fetch_add(&ctx->steps_applied, 1);
    atomic_fetch_add(&run->steps_applied, 1);
}

/* apply_final() of a step with several domains (or none sharing the pooled
 * arrays): each domain, then the pooled EMA. */
static void apply_separately(nsd_run_t *run, nsd_layer_t *l, const nsd_step_t *f)
{
    nsd_ctx_t *ctx = run->ctx;
    size_t c = f->channels;
    double momentum = run->st.cfg.momentum;
    if (c > 0) {
        for (size_t i = 0; i < f->n_domains; i++) {
            const nsd_step_domain_t *d = &f->domains[i];
            nsd_pop_t *pop = d->index < l->cap_pops ? l->pops[d->index] : NULL;
            if (pop != NULL)
                nsd_pop_apply(pop, c, f->update, d->count, d->mean, d->var, momentum, f->step);
        }
    }
    if (f->update & NS_UPDATE_EMA) {
        int changed = 0;
        if (c > 0 && l->pooled != NULL)
            changed = nsd_pop_apply(l->pooled, c, NS_UPDATE_EMA, f->count, f->mean, f->var,
                                    momentum, f->step);
        if (changed != 1) {
            atomic_fetch_add(&run->st.skipped_steps, 1);
            atomic_fetch_add(&ctx->steps_skipped, 1);
        }
    }
}

/* Apply finalized steps in step order while they are below 'bound' (the
 * lowest pending step). Returns how many were applied. */
size_t nsd_run_apply_ready_below(nsd_run_t *run, nsd_layer_t *l, uint64_t bound)
{
    size_t k = 0;
    while (k < l->n_ready && l->ready[k]->step < bound) {
        apply_final(run, l, l->ready[k]);
        step_release(run, l, l->ready[k]); /* the last values may still view it */
        k++;
    }
    if (k > 0) {
        memmove(l->ready, l->ready + k, (l->n_ready - k) * sizeof(*l->ready));
        l->n_ready -= k;
    }
    return k;
}

/* Apply finalized steps in step order while no earlier step is pending. */
void nsd_run_apply_ready(nsd_run_t *run, nsd_layer_t *l)
{
    nsd_run_apply_ready_below(run, l, l->n_pending > 0 ? l->pending[0]->step : UINT64_MAX);
}

/* Step 'f' as the last values of 'pop' (the pooled scope's or a domain's):
 * its block 'values' (mean, then var) and 'count', viewed (pop->last moves
 * to 'f'), or copied into the pop with few channels. */
static void keep_last(nsd_run_t *run, nsd_layer_t *l, nsd_pop_t *pop, nsd_step_t *f, uint64_t count,
                      const double *values)
{
    double *copy = nsd_pop_last_copy(pop, f->channels);
    if (copy != NULL) {
        memcpy(copy, values, 2 * f->channels * sizeof(double));
        pop->last_mean = copy;
    } else {
        nsd_step_t *old = pop->last;
        pop->last = step_hold(f);
        pop->last_mean = values;
        step_release(run, l, old);
    }
    pop->last_step = (int64_t)f->step;
    pop->last_count = count;
}

/* A finalized step joins the layer: the last values (pooled, and of each
 * domain that had arrivals) become views of it unless a higher step holds
 * them (a timed-out earlier step may finalize late), then the ready queue
 * in step order. Room in l->ready was reserved. Shared by the live path
 * and replay. */
void nsd_layer_ready_insert(nsd_run_t *run, nsd_layer_t *l, nsd_step_t *f)
{
    step_hold(f); /* the ready queue's */
    if (f->channels > 0 && l->pooled != NULL && l->pooled->last_step <= (int64_t)f->step)
        keep_last(run, l, l->pooled, f, f->count, f->mean);
    for (size_t i = 0; f->channels > 0 && i < f->n_domains; i++) {
        const nsd_step_domain_t *d = &f->domains[i];
        nsd_pop_t *pop = d->index < l->cap_pops ? l->pops[d->index] : NULL;
        if (pop != NULL && d->mean != NULL && pop->last_step <= (int64_t)f->step)
            keep_last(run, l, pop, f, d->count, d->mean);
    }
    if (f->update & NS_UPDATE_PRECISE)
        l->precise_due += f->count;
    size_t pos = l->n_ready;
    while (pos > 0 && l->ready[pos - 1]->step > f->step)
        pos--;
    memmove(l->ready + pos + 1, l->ready + pos, (l->n_ready - pos) * sizeof(*l->ready));
    l->ready[pos] = f;
    l->n_ready++;
}

/* Finalize 'p' into the layer's spare step, else a new one, counted in the
 * run's memory with what it grew by. @return 0 and *dst, or an error
 * (*dst NULL, the spare kept). */
static int finalize_step(nsd_run_t *run, nsd_layer_t *l, const nsd_pending_t *p, nsd_step_t **dst)
{
    nsd_step_t *f = l->spare_step;
    l->spare_step = NULL;
    if (f != NULL && f->channels != l->channels) { /* kept before the layer had channels */
        nsd_layer_count_steps(run, -(int64_t)f->bytes);
        nsd_step_free(f);
        f = NULL;
    }
    size_t before = f != NULL ? f->bytes : 0;
    int rc = NS_ENOMEM;
    if (nsd_array_grow((void **)&l->ready, &l->cap_ready, l->n_ready + 1, sizeof(*l->ready)) == 0)
        rc = nsd_barrier_finalize(p, l->name, l->channels, run->st.domains, run->st.n_domains,
                                  run->ctx->limits.threads, &f);
    if (f != NULL)
        nsd_layer_count_steps(run, (int64_t)f->bytes - (int64_t)before);
    if (rc != 0) {
        l->spare_step = f;
        f = NULL;
    }
    *dst = f;
    return rc;
}

/* Close pending step 'idx' of the layer: finalize it (drop == 0) or discard
 * it (drop == 1). Applying is left to nsd_run_apply_ready(). */
void nsd_run_close_pending(nsd_run_t *run, nsd_layer_t *l, size_t idx, int drop, nsd_outbox_t *box)
{
    nsd_ctx_t *ctx = run->ctx;
    nsd_pending_t *p = l->pending[idx];
    memmove(l->pending + idx, l->pending + idx + 1, (l->n_pending - idx - 1) * sizeof(*l->pending));
    l->n_pending--;
    box->pending_delta--;
    int closed_before = l->max_closed >= 0; /* a layer in its steady state */
    if ((int64_t)p->step > l->max_closed)
        l->max_closed = (int64_t)p->step;
    /* Its arrivals leave the pending count; a finalized step comes back in
     * whole with nsd_layer_ready_insert(). */
    for (uint32_t w = 0; (p->update & NS_UPDATE_PRECISE) && w < p->world_size; w++)
        if (p->arrivals[w].present)
            l->precise_due -=
                p->arrivals[w].n <= l->precise_due ? p->arrivals[w].n : l->precise_due;

    nsd_step_t *f = NULL;
    int status = drop ? NS_ETIMEDOUT : finalize_step(run, l, p, &f);
    if (f == NULL) {
        /* Dropped (or lost to a failed allocation): waiters learn why. */
        for (size_t k = 0; k < p->n_waiters; k++) {
            nsd_waiter_t *w = p->waiters[k].waiter;
            pthread_mutex_lock(&w->lock);
            /* A timed-out step names its absent workers in the 504 (best
             * effort: without memory the answer just does not list them). */
            if (!w->fired && status == NS_ETIMEDOUT)
                (void)note_missing(w->res, p);
            nsd_waiter_layer_done(ctx, box, w, status);
            pthread_mutex_unlock(&w->lock);
        }
        p->n_waiters = 0;
        atomic_fetch_add(&ctx->steps_dropped, 1);
    } else {
        box->finalized++;
        /* Logged before its waiters learn of it, so a /sync answer can
         * wait for the commit of every layer's step. */
        nsd_layer_persist_step(run, l, f);
        fill_waiters(ctx, box, p, f);
        nsd_layer_ready_insert(run, l, f);
    }
    if (closed_before)
        keep_spares(l, p, run->st.cfg.world_size);
    if (closed_before && l->spare_pending == NULL && p->world_size == run->st.cfg.world_size) {
        /* Kept for the next step (from the layer's second step on, so a
         * layer reported once holds none): its own bytes stay counted. */
        box->released += p->bytes - nsd_pending_bytes(p->world_size);
        nsd_pending_reuse(p, 0, 0, 0);
        l->spare_pending = p;
        return;
    }
    box->released += p->bytes; /* nsd_run_settle() releases it */
    nsd_pending_free(p);
}
