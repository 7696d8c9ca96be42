/* run.c - one run's state: reports through the barrier, applying finalized
 * steps in step order, timeouts, precise resets (see the DESIGN in run.h). */
#include "run.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <normstat/core.h>

#include "gradsum.h"

#define WORLD_SIZE_MAX 65536u

/* ---------------------------------------------------------------- memory */

int nsd_mem_reserve(nsd_ctx_t *ctx, uint64_t bytes)
{
    uint64_t max = ctx->limits.max_memory;
    uint64_t cur = atomic_load(&ctx->memory);
    do {
        if (max != 0 && (cur + bytes < cur || cur + bytes > max))
            return NS_EMEMORY;
    } while (!atomic_compare_exchange_weak(&ctx->memory, &cur, cur + bytes));
    return 0;
}

void nsd_mem_release(nsd_ctx_t *ctx, uint64_t bytes)
{
    atomic_fetch_sub(&ctx->memory, bytes);
}

/* ---------------------------------------------------------------- outbox */

void nsd_outbox_fire(nsd_outbox_t *box, nsd_waiter_t *w)
{
    w->fired = 1;
    w->next = NULL;
    if (box->fired_tail)
        box->fired_tail->next = w;
    else
        box->fired = w;
    box->fired_tail = w;
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
static void waiter_fail(nsd_ctx_t *ctx, nsd_outbox_t *box, nsd_waiter_t *w, int status)
{
    if (w->fired)
        return;
    if (w->res->status == 0)
        w->res->status = status;
    atomic_fetch_sub(&ctx->sync_waiters, 1);
    nsd_outbox_fire(box, w);
}

/* One layer of the waiter is done; fires it when it was the last. */
static void waiter_layer_done(nsd_ctx_t *ctx, nsd_outbox_t *box, nsd_waiter_t *w)
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

/* ---------------------------------------------------------------- lookup */

long nsd_run_find_domain(const nsd_run_state_t *st, const char *name)
{
    for (size_t i = 0; i < st->n_domains; i++)
        if (strcmp(st->domains[i], name) == 0)
            return (long)i;
    return -1;
}

size_t nsd_run_name_pos(const void *items, size_t n, nsd_run_name_at_fn name_at, const char *name,
                        int *found)
{
    size_t lo = 0, hi = n;
    *found = 0;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(name_at(items, mid), name);
        if (c == 0) {
            *found = 1;
            return mid;
        }
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static const char *layer_name_at(const void *items, size_t i)
{
    return ((nsd_layer_t *const *)items)[i]->name;
}

/* Position of 'name' in the sorted layer array, or where it would go. */
static size_t layer_pos(const nsd_run_state_t *st, const char *name, int *found)
{
    return nsd_run_name_pos(st->layers, st->n_layers, layer_name_at, name, found);
}

nsd_layer_t *nsd_run_find_layer(const nsd_run_state_t *st, const char *name)
{
    int found;
    size_t i = layer_pos(st, name, &found);
    return found ? st->layers[i] : NULL;
}

/* Index of the pending step 'step' in the layer, or where it would go. */
static size_t pending_pos(const nsd_layer_t *l, uint64_t step, int *found)
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

/* ---------------------------------------------------------------- capacity */

/* Grow an array to hold at least 'need' elements; new elements zeroed.
 * Changes no logical state, so it may run before validation has finished. */
static int grow(void **arr, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return 0;
    size_t ncap = *cap ? *cap : 4;
    while (ncap < need)
        ncap *= 2;
    void *p = realloc(*arr, ncap * elem);
    if (p == NULL)
        return NS_ENOMEM;
    memset((char *)p + *cap * elem, 0, (ncap - *cap) * elem);
    *arr = p;
    *cap = ncap;
    return 0;
}

static int grow_workers(nsd_layer_t *l, uint32_t need)
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

/* ---------------------------------------------------------------- life cycle */

static nsd_layer_t *layer_create(const char *name)
{
    nsd_layer_t *l = calloc(1, sizeof(*l));
    if (l == NULL)
        return NULL;
    snprintf(l->name, sizeof(l->name), "%s", name);
    l->max_closed = -1;
    l->last_applied = -1;
    l->max_seen = -1;
    return l;
}

void nsd_layer_free(nsd_layer_t *l)
{
    if (l == NULL)
        return;
    for (size_t i = 0; i < l->n_pending; i++)
        nsd_pending_free(l->pending[i]);
    free(l->pending);
    for (size_t i = 0; i < l->n_ready; i++)
        nsd_final_free(l->ready[i]);
    free(l->ready);
    for (size_t i = 0; i < l->cap_pops; i++)
        nsd_pop_free(l->pops[i]);
    free(l->pops);
    nsd_pop_free(l->pooled);
    free(l->last_mean);
    free(l->worker_last);
    free(l);
}

nsd_run_t *nsd_run_create(nsd_ctx_t *ctx, const char *name, const ns_run_config_t *cfg)
{
    nsd_run_t *run = calloc(1, sizeof(*run));
    if (run == NULL)
        return NULL;
    if (pthread_mutex_init(&run->lock, NULL) != 0) {
        free(run);
        return NULL;
    }
    snprintf(run->name, sizeof(run->name), "%s", name);
    atomic_init(&run->refs, 1);
    run->ctx = ctx;
    run->st.cfg = *cfg;
    atomic_fetch_add(&ctx->runs, 1);
    return run;
}

void nsd_run_ref(nsd_run_t *run)
{
    atomic_fetch_add(&run->refs, 1);
}

void nsd_run_state_clear(nsd_ctx_t *ctx, nsd_run_state_t *st, int status, nsd_outbox_t *box)
{
    for (size_t i = 0; i < st->n_layers; i++) {
        nsd_layer_t *l = st->layers[i];
        for (size_t p = 0; p < l->n_pending; p++) {
            nsd_pending_t *pd = l->pending[p];
            for (size_t k = 0; k < pd->n_waiters; k++)
                if (box)
                    waiter_fail(ctx, box, pd->waiters[k].waiter, status);
            pd->n_waiters = 0;
        }
        atomic_fetch_sub(&ctx->pending_steps, l->n_pending);
        nsd_layer_free(l);
    }
    nsd_gradsum_free(ctx, st->grad, status, box);
    free(st->layers);
    free(st->domains);
    free(st->domain_gen);
    nsd_mem_release(ctx, st->memory);
    ns_run_config_t cfg = st->cfg;
    memset(st, 0, sizeof(*st));
    st->cfg = cfg;
}

void nsd_run_unref(nsd_run_t *run)
{
    if (run == NULL || atomic_fetch_sub(&run->refs, 1) != 1)
        return;
    nsd_run_state_clear(run->ctx, &run->st, 0, NULL);
    atomic_fetch_sub(&run->ctx->runs, 1);
    pthread_mutex_destroy(&run->lock);
    free(run);
}

void nsd_run_fire_all(nsd_run_t *run, int status, nsd_outbox_t *box)
{
    for (size_t i = 0; i < run->st.n_layers; i++) {
        nsd_layer_t *l = run->st.layers[i];
        for (size_t p = 0; p < l->n_pending; p++) {
            nsd_pending_t *pd = l->pending[p];
            for (size_t k = 0; k < pd->n_waiters; k++)
                waiter_fail(run->ctx, box, pd->waiters[k].waiter, status);
            pd->n_waiters = 0;
        }
    }
    nsd_gradsum_fire_all(run->ctx, run->st.grad, status, box);
}

/* ---------------------------------------------------------------- config */

int nsd_run_config_apply(nsd_run_t *run, const ns_run_config_t *cfg, ns_error_detail_t *err,
                         nsd_outbox_t *box)
{
    if (cfg->has_world_size && (cfg->world_size < 1 || cfg->world_size > WORLD_SIZE_MAX))
        return ns_error_set(err, NS_EINVAL, "world_size", "must be in [1, %u]", WORLD_SIZE_MAX);
    if (cfg->has_momentum && cfg->momentum != NS_MOMENTUM_CUMULATIVE &&
        !(cfg->momentum >= 0.0 && cfg->momentum <= 1.0))
        return ns_error_set(err, NS_EINVAL, "momentum", "must be in [0, 1] or null");
    if (cfg->has_sync_timeout_ms && cfg->sync_timeout_ms < 1)
        return ns_error_set(err, NS_EINVAL, "sync_timeout_ms", "must be >= 1");
    ns_run_config_t *c = &run->st.cfg;
    if (cfg->has_world_size)
        c->world_size = cfg->world_size;
    if (cfg->has_momentum)
        c->momentum = cfg->momentum;
    if (cfg->has_sync_timeout_ms) {
        if (cfg->sync_timeout_ms < c->sync_timeout_ms)
            box->wakeup = 1;
        c->sync_timeout_ms = cfg->sync_timeout_ms;
    }
    if (cfg->has_on_timeout)
        c->on_timeout_drop = cfg->on_timeout_drop;
    if (cfg->has_ema_debias)
        c->ema_debias = cfg->ema_debias;
    return 0;
}

/* ---------------------------------------------------------------- finalize, apply */

/* A deep copy of a finalized step for the persistence hook. */
static void record_final(nsd_run_t *run, const nsd_layer_t *l, const nsd_final_t *f,
                         nsd_outbox_t *box)
{
    size_t c = f->channels;
    nsd_record_t *r = calloc(1, sizeof(*r));
    nsd_final_t *g = r ? calloc(1, sizeof(*g)) : NULL;
    if (g == NULL)
        goto fail;
    r->final = g;
    *g = *f;
    /* Nothing of f's is owned yet: nsd_final_free(g) must be safe from here. */
    g->mean = NULL;
    g->n_domains = 0;
    g->domains = calloc(f->n_domains ? f->n_domains : 1, sizeof(*g->domains));
    r->domain_names = calloc(f->n_domains ? f->n_domains : 1, sizeof(*r->domain_names));
    if (g->domains == NULL || r->domain_names == NULL)
        goto fail;
    if (c > 0) {
        g->mean = malloc(2 * c * sizeof(double));
        if (g->mean == NULL)
            goto fail;
        g->var = g->mean + c;
        memcpy(g->mean, f->mean, 2 * c * sizeof(double));
    }
    for (size_t i = 0; i < f->n_domains; i++) {
        g->domains[i] = f->domains[i];
        g->domains[i].mean = NULL;
        g->n_domains = i + 1;
        if (c > 0) {
            g->domains[i].mean = malloc(2 * c * sizeof(double));
            if (g->domains[i].mean == NULL)
                goto fail;
            g->domains[i].var = g->domains[i].mean + c;
            memcpy(g->domains[i].mean, f->domains[i].mean, 2 * c * sizeof(double));
        }
        snprintf(r->domain_names[i], sizeof(r->domain_names[i]), "%s",
                 run->st.domains[f->domains[i].domain]);
    }
    snprintf(r->layer, sizeof(r->layer), "%s", l->name);
    r->first_pending = l->n_pending > 0 ? (int64_t)l->pending[0]->step : -1;
    if (box->records_tail)
        box->records_tail->next = r;
    else
        box->records = r;
    box->records_tail = r;
    return;
fail:
    /* Out of memory: the step is not handed to the store (memory only). */
    if (r) {
        nsd_final_free(r->final);
        free(r->domain_names);
        free(r);
    }
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

/* Copy one finalized layer's statistics into every waiter of the step. */
static void fill_waiters(nsd_ctx_t *ctx, nsd_outbox_t *box, nsd_pending_t *p, const nsd_final_t *f)
{
    for (size_t k = 0; k < p->n_waiters; k++) {
        nsd_waiter_t *w = p->waiters[k].waiter;
        if (w->fired)
            continue;
        if (!f->complete && note_missing(w->res, p) != 0) {
            waiter_fail(ctx, box, w, NS_ENOMEM);
            continue;
        }
        nsd_sync_layer_t *sl = &w->res->layers[p->waiters[k].index];
        uint64_t count = f->count;
        const double *mean = f->mean;
        if (w->scope == NS_SCOPE_DOMAIN) {
            const nsd_final_domain_t *d = nsd_final_find_domain(f, w->domain);
            count = d ? d->count : 0;
            mean = d ? d->mean : NULL;
        }
        sl->count = count;
        sl->complete = f->complete;
        sl->workers = f->workers;
        if (mean != NULL && f->channels > 0) {
            sl->mean = malloc(2 * f->channels * sizeof(double));
            if (sl->mean == NULL) {
                waiter_fail(ctx, box, w, NS_ENOMEM);
                continue;
            }
            sl->var = sl->mean + f->channels;
            sl->channels = f->channels;
            memcpy(sl->mean, mean, 2 * f->channels * sizeof(double));
        }
        waiter_layer_done(ctx, box, w);
    }
    p->n_waiters = 0;
}

/* Apply one finalized step to the layer's population state. */
static void apply_final(nsd_run_t *run, nsd_layer_t *l, const nsd_final_t *f)
{
    nsd_ctx_t *ctx = run->ctx;
    size_t c = f->channels;
    double momentum = run->st.cfg.momentum;
    if (c > 0) {
        for (size_t i = 0; i < f->n_domains; i++) {
            const nsd_final_domain_t *d = &f->domains[i];
            nsd_pop_t *pop = d->domain < l->cap_pops ? l->pops[d->domain] : NULL;
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
            run->st.skipped_steps++;
            atomic_fetch_add(&ctx->steps_skipped, 1);
        }
    }
    l->last_applied = (int64_t)f->step;
    atomic_fetch_add(&ctx->steps_applied, 1);
}

/* Apply finalized steps in step order while they are below 'bound' (the
 * lowest pending step). Returns how many were applied. */
static size_t apply_ready_below(nsd_run_t *run, nsd_layer_t *l, uint64_t bound)
{
    size_t k = 0;
    while (k < l->n_ready && l->ready[k]->step < bound) {
        apply_final(run, l, l->ready[k]);
        nsd_final_free(l->ready[k]);
        k++;
    }
    if (k > 0) {
        memmove(l->ready, l->ready + k, (l->n_ready - k) * sizeof(*l->ready));
        l->n_ready -= k;
    }
    return k;
}

/* Apply finalized steps in step order while no earlier step is pending. */
static void apply_ready(nsd_run_t *run, nsd_layer_t *l)
{
    apply_ready_below(run, l, l->n_pending > 0 ? l->pending[0]->step : UINT64_MAX);
}

/* A finalized step joins the layer: last statistics (pooled and of each
 * domain that had arrivals), then the ready queue
 * in step order (a timed-out earlier step may finalize late). Room in
 * l->ready was reserved. Shared by the live path and replay. */
static void ready_insert(nsd_layer_t *l, nsd_final_t *f)
{
    if (f->channels > 0 && l->last_mean != NULL && (!l->has_last || f->step >= l->last_step)) {
        l->has_last = 1;
        l->last_step = f->step;
        l->last_count = f->count;
        memcpy(l->last_mean, f->mean, 2 * f->channels * sizeof(double));
    }
    for (size_t i = 0; f->channels > 0 && i < f->n_domains; i++) {
        const nsd_final_domain_t *d = &f->domains[i];
        nsd_pop_t *pop = d->domain < l->cap_pops ? l->pops[d->domain] : NULL;
        if (pop != NULL && d->mean != NULL)
            nsd_pop_set_last(pop, f->channels, f->step, d->count, d->mean, d->var);
    }
    size_t pos = l->n_ready;
    while (pos > 0 && l->ready[pos - 1]->step > f->step)
        pos--;
    memmove(l->ready + pos + 1, l->ready + pos, (l->n_ready - pos) * sizeof(*l->ready));
    l->ready[pos] = f;
    l->n_ready++;
}

/* Close pending step 'idx' of the layer: finalize it (drop == 0) or discard
 * it (drop == 1). Applying is left to apply_ready(). */
static void close_pending(nsd_run_t *run, nsd_layer_t *l, size_t idx, int drop, nsd_outbox_t *box)
{
    nsd_ctx_t *ctx = run->ctx;
    nsd_pending_t *p = l->pending[idx];
    memmove(l->pending + idx, l->pending + idx + 1, (l->n_pending - idx - 1) * sizeof(*l->pending));
    l->n_pending--;
    atomic_fetch_sub(&ctx->pending_steps, 1);
    if ((int64_t)p->step > l->max_closed)
        l->max_closed = (int64_t)p->step;

    nsd_final_t *f = NULL;
    int status = NS_ETIMEDOUT;
    if (!drop) {
        status = nsd_barrier_finalize(p, l->channels, run->st.n_domains, ctx->limits.threads, &f);
        if (status == 0 &&
            grow((void **)&l->ready, &l->cap_ready, l->n_ready + 1, sizeof(*l->ready)) != 0) {
            nsd_final_free(f);
            f = NULL;
            status = NS_ENOMEM;
        }
    }
    if (f == NULL) {
        /* Dropped (or lost to a failed allocation): waiters learn why. */
        for (size_t k = 0; k < p->n_waiters; k++) {
            nsd_waiter_t *w = p->waiters[k].waiter;
            if (!w->fired && w->res->status == 0)
                w->res->status = status;
            waiter_layer_done(ctx, box, w);
        }
        p->n_waiters = 0;
        atomic_fetch_add(&ctx->steps_dropped, 1);
    } else {
        atomic_fetch_add(&ctx->steps_finalized, 1);
        fill_waiters(ctx, box, p, f);
        if (ctx->persist_steps)
            record_final(run, l, f, box);
        ready_insert(l, f);
    }
    nsd_mem_release(ctx, p->bytes);
    run->st.memory -= p->bytes;
    nsd_pending_free(p);
}

/* ---------------------------------------------------------------- reports */

/* Everything one layer of a report needs, allocated before anything changes. */
typedef struct plan_s {
    const ns_layer_report_t *lr;
    nsd_layer_t *layer; /* existing layer, or new_layer */
    int is_new_layer;
    size_t insert_pos;      /* for a new layer: position among existing ones */
    nsd_pending_t *pending; /* existing pending step, or new */
    int is_new_pending;
    size_t channels;    /* the layer's channel count after this report */
    int fixes_channels; /* this report fixes the layer's channel count */
    nsd_pop_t *new_pooled;
    double *new_last;
    nsd_pop_t *new_pop; /* this domain's state on this layer */
    uint64_t bytes;
} plan_t;

static void plan_free(plan_t *pl, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (pl[i].is_new_layer)
            nsd_layer_free(pl[i].layer);
        if (pl[i].is_new_pending)
            nsd_pending_free(pl[i].pending);
        nsd_pop_free(pl[i].new_pooled);
        free(pl[i].new_last);
        nsd_pop_free(pl[i].new_pop);
    }
    free(pl);
}

/* Phase 1: the checks of one layer; nothing changes. */
static int check_layer(const nsd_run_t *run, const ns_report_t *rep, plan_t *pl,
                       ns_error_detail_t *err)
{
    const ns_layer_report_t *lr = pl->lr;
    const nsd_run_state_t *st = &run->st;
    nsd_layer_t *l = nsd_run_find_layer(st, lr->name);
    char field[NS_NAME_MAX + 16];
    snprintf(field, sizeof(field), "layers.%s", lr->name);

    if (!ns_name_valid(lr->name))
        return ns_error_set(err, NS_EINVAL, field, "invalid layer name");
    if (lr->count > 0 && (lr->channels == 0 || lr->mean == NULL || lr->var == NULL))
        return ns_error_set(err, NS_EINVAL, field, "count > 0 needs mean and var");
    pl->layer = l;
    pl->channels = l ? l->channels : 0;
    if (lr->channels > 0) {
        if (pl->channels != 0 && lr->channels != pl->channels)
            return ns_error_set(
                err, NS_ECHANNELS, field,
                "expected %zu channels (fixed by the layer's first report), got %zu", pl->channels,
                lr->channels);
        if (pl->channels == 0) {
            pl->channels = lr->channels;
            pl->fixes_channels = 1;
        }
    }
    nsd_pending_t *p = NULL;
    if (l != NULL) {
        int found;
        size_t i = pending_pos(l, rep->step, &found);
        if (found)
            p = l->pending[i];
    }
    uint32_t ws = p ? p->world_size : st->cfg.world_size;
    if (rep->worker >= ws)
        return ns_error_set(err, NS_EWORKER, "worker",
                            "worker %u outside world_size %u of step %llu", rep->worker, ws,
                            (unsigned long long)rep->step);
    if (l != NULL) {
        int64_t last = rep->worker < l->n_workers ? l->worker_last[rep->worker] : -1;
        if (p != NULL && p->arrivals[rep->worker].present)
            return ns_error_set(err, NS_EDUPLICATE, field, "worker %u already reported step %llu",
                                rep->worker, (unsigned long long)rep->step);
        if (last >= 0 && (int64_t)rep->step <= last)
            return ns_error_set(err, NS_ESTALE, field,
                                "worker %u already reported step %lld; steps must increase",
                                rep->worker, (long long)last);
        if (p == NULL && (int64_t)rep->step <= l->max_closed)
            return ns_error_set(err, NS_ESTALE, field,
                                "step %llu is at or below finalized step %lld",
                                (unsigned long long)rep->step, (long long)l->max_closed);
        if (p != NULL && p->update != rep->update)
            return ns_error_set(err, NS_ECONFLICT, "update",
                                "differs from the earlier reports of step %llu",
                                (unsigned long long)rep->step);
        uint32_t max_pending = run->ctx->limits.max_pending_steps;
        if (p == NULL && l->n_pending >= max_pending)
            return ns_error_set(err, NS_EBUSY, field, "%u steps already pending", max_pending);
    }
    pl->pending = p;
    pl->is_new_pending = p == NULL;
    return 0;
}

/* Phase 2: reserve memory and allocate what the layer needs. */
static int prepare_layer(nsd_run_t *run, const ns_report_t *rep, long dom, plan_t *pl,
                         uint64_t now_ms, nsd_waiter_t *waiter)
{
    nsd_run_state_t *st = &run->st;
    const ns_layer_report_t *lr = pl->lr;
    size_t c = pl->channels;
    if (pl->layer == NULL) {
        pl->layer = layer_create(lr->name);
        if (pl->layer == NULL)
            return NS_ENOMEM;
        pl->is_new_layer = 1;
        pl->bytes += sizeof(nsd_layer_t);
    }
    nsd_layer_t *l = pl->layer;
    if (pl->fixes_channels) {
        pl->new_pooled = nsd_pop_create(c, 0);
        pl->new_last = malloc(2 * c * sizeof(double));
        if (pl->new_pooled == NULL || pl->new_last == NULL)
            return NS_ENOMEM;
        pl->bytes += nsd_pop_bytes(c) + 2 * c * sizeof(double);
    }
    /* This domain's population state, once the layer has channels. */
    size_t d = dom >= 0 ? (size_t)dom : st->n_domains;
    if (c > 0 && (d >= l->cap_pops || l->pops[d] == NULL)) {
        uint64_t gen = dom >= 0 ? st->domain_gen[d] : st->precise_generation;
        pl->new_pop = nsd_pop_create(c, gen);
        if (pl->new_pop == NULL)
            return NS_ENOMEM;
        pl->bytes += nsd_pop_bytes(c);
    }
    if (pl->is_new_pending) {
        pl->pending = nsd_pending_create(rep->step, st->cfg.world_size, rep->update, now_ms);
        if (pl->pending == NULL)
            return NS_ENOMEM;
        pl->bytes += pl->pending->bytes;
    }
    /* The arrays themselves are taken from the report at commit. */
    pl->bytes += 2 * lr->channels * sizeof(float);
    /* Capacity only (state-neutral). */
    if (grow((void **)&l->pops, &l->cap_pops, st->n_domains + 1, sizeof(*l->pops)) ||
        grow_workers(l, rep->worker + 1) ||
        grow((void **)&l->pending, &l->cap_pending, l->n_pending + 1, sizeof(*l->pending)) ||
        grow((void **)&l->ready, &l->cap_ready, l->n_ready + 1, sizeof(*l->ready)) ||
        (waiter != NULL && nsd_pending_reserve_waiter(pl->pending)))
        return NS_ENOMEM;
    return 0;
}

/* Phase 3: commit one layer (cannot fail). */
static void commit_layer(nsd_run_t *run, ns_report_t *rep, uint32_t dom, plan_t *pl,
                         nsd_waiter_t *waiter, size_t index, nsd_outbox_t *box)
{
    nsd_ctx_t *ctx = run->ctx;
    nsd_layer_t *l = pl->layer;
    if (pl->fixes_channels) {
        l->channels = pl->channels;
        l->pooled = pl->new_pooled;
        l->last_mean = pl->new_last;
        pl->new_pooled = NULL;
        pl->new_last = NULL;
    }
    if (pl->new_pop != NULL) {
        l->pops[dom] = pl->new_pop;
        pl->new_pop = NULL;
    }
    nsd_pending_t *p = pl->pending;
    if (pl->is_new_pending) {
        int found;
        size_t pos = pending_pos(l, rep->step, &found);
        memmove(l->pending + pos + 1, l->pending + pos, (l->n_pending - pos) * sizeof(*l->pending));
        l->pending[pos] = p;
        l->n_pending++;
        pl->is_new_pending = 0;
        atomic_fetch_add(&ctx->pending_steps, 1);
        nsd_run_note_deadline(run, p->created_ms + run->st.cfg.sync_timeout_ms, box);
    }
    /* Take the report's arrays (no copy); the report no longer owns them. */
    nsd_arrival_t *a = &p->arrivals[rep->worker];
    ns_layer_report_t *lr = &rep->layers[index];
    a->present = 1;
    a->domain = dom;
    a->n = lr->count;
    a->mean = lr->mean;
    a->var = lr->var;
    lr->mean = lr->var = NULL;
    p->arrived++;
    p->bytes += pl->lr->channels * 2 * sizeof(float);
    l->worker_last[rep->worker] = (int64_t)rep->step;
    if ((int64_t)rep->step > l->max_seen)
        l->max_seen = (int64_t)rep->step;
    if (waiter != NULL) {
        p->waiters[p->n_waiters].waiter = waiter;
        p->waiters[p->n_waiters].index = index;
        p->n_waiters++;
    }
}

int nsd_run_report(nsd_run_t *run, ns_report_t *rep, uint64_t now_ms, nsd_waiter_t *waiter,
                   nsd_outbox_t *box, ns_error_detail_t *err)
{
    nsd_run_state_t *st = &run->st;
    nsd_ctx_t *ctx = run->ctx;
    if (rep->n_layers == 0)
        return ns_error_set(err, NS_EINVAL, "layers", "no layers");
    if (rep->step > (uint64_t)INT64_MAX)
        return ns_error_set(err, NS_EINVAL, "step", "must be < 2^63");
    if (!ns_name_valid(rep->domain))
        return ns_error_set(err, NS_EINVAL, "domain", "invalid domain name");
    long dom = nsd_run_find_domain(st, rep->domain);

    plan_t *pl = calloc(rep->n_layers, sizeof(*pl));
    if (pl == NULL)
        return ns_error_set(err, NS_ENOMEM, "", "out of memory");
    int rc = 0;
    for (size_t i = 0; i < rep->n_layers && rc == 0; i++) {
        pl[i].lr = &rep->layers[i];
        rc = check_layer(run, rep, &pl[i], err);
    }
    if (rc != 0)
        goto fail;

    uint64_t bytes = 0;
    size_t new_layers = 0;
    for (size_t i = 0; i < rep->n_layers && rc == 0; i++) {
        rc = prepare_layer(run, rep, dom, &pl[i], now_ms, waiter);
        bytes += pl[i].bytes;
        new_layers += pl[i].is_new_layer;
    }
    if (rc == 0 && dom < 0)
        rc = grow((void **)&st->domains, &st->cap_domains, st->n_domains + 1, sizeof(*st->domains));
    if (rc == 0 && dom < 0) {
        /* domain_gen always has cap_domains elements */
        uint64_t *g = realloc(st->domain_gen, st->cap_domains * sizeof(uint64_t));
        if (g == NULL)
            rc = NS_ENOMEM;
        else
            st->domain_gen = g;
    }
    if (rc == 0)
        rc = grow((void **)&st->layers, &st->cap_layers, st->n_layers + new_layers,
                  sizeof(*st->layers));
    if (rc != 0) {
        ns_error_set(err, rc, "", "out of memory");
        goto fail;
    }
    rc = nsd_mem_reserve(ctx, bytes);
    if (rc != 0) {
        ns_error_set(err, rc, "", "memory budget of %llu bytes exceeded",
                     (unsigned long long)ctx->limits.max_memory);
        goto fail;
    }

    /* Commit: nothing below can fail. */
    st->memory += bytes;
    if (dom < 0) {
        dom = (long)st->n_domains;
        snprintf(st->domains[dom], sizeof(st->domains[dom]), "%s", rep->domain);
        st->domain_gen[dom] = st->precise_generation;
        st->n_domains++;
        box->new_domain = (size_t)dom + 1;
    }
    for (size_t i = 0; i < rep->n_layers; i++) {
        if (!pl[i].is_new_layer)
            continue;
        int found;
        size_t pos = layer_pos(st, pl[i].layer->name, &found);
        memmove(st->layers + pos + 1, st->layers + pos, (st->n_layers - pos) * sizeof(*st->layers));
        st->layers[pos] = pl[i].layer;
        st->n_layers++;
        pl[i].is_new_layer = 0;
    }
    if (waiter != NULL) {
        waiter->remaining = rep->n_layers;
        waiter->domain = (uint32_t)dom;
        waiter->scope = rep->scope;
        waiter->res->step = rep->step;
        atomic_fetch_add(&ctx->sync_waiters, 1);
    }
    for (size_t i = 0; i < rep->n_layers; i++)
        commit_layer(run, rep, (uint32_t)dom, &pl[i], waiter, i, box);
    atomic_fetch_add(&ctx->reports_accepted, 1);

    /* Finalize completed steps, then apply what is in order. */
    for (size_t i = 0; i < rep->n_layers; i++) {
        nsd_layer_t *l = pl[i].layer;
        int found;
        size_t pos = pending_pos(l, rep->step, &found);
        if (found && l->pending[pos]->arrived == l->pending[pos]->world_size)
            close_pending(run, l, pos, 0, box);
        apply_ready(run, l);
    }
    plan_free(pl, rep->n_layers);
    return 0;
fail:
    plan_free(pl, rep->n_layers);
    return rc;
}

/* ---------------------------------------------------------------- timeouts */

uint64_t nsd_run_expire(nsd_run_t *run, uint64_t now_ms, nsd_outbox_t *box)
{
    nsd_run_state_t *st = &run->st;
    uint64_t timeout = st->cfg.sync_timeout_ms;
    uint64_t next = UINT64_MAX;
    for (size_t i = 0; i < st->n_layers; i++) {
        nsd_layer_t *l = st->layers[i];
        size_t k = 0;
        int closed = 0;
        while (k < l->n_pending) {
            nsd_pending_t *p = l->pending[k];
            uint64_t deadline = p->created_ms + timeout;
            if (deadline <= now_ms) {
                atomic_fetch_add(&run->ctx->steps_timed_out, 1);
                close_pending(run, l, k, st->cfg.on_timeout_drop, box);
                closed = 1;
                continue;
            }
            if (deadline < next)
                next = deadline;
            k++;
        }
        if (closed)
            apply_ready(run, l);
    }
    uint64_t grad_next = nsd_gradsum_expire(run, now_ms, box);
    return grad_next < next ? grad_next : next;
}

/* ---------------------------------------------------------------- precise reset */

int nsd_run_precise_reset(nsd_run_t *run, const char *domain, uint64_t *generation,
                          ns_error_detail_t *err)
{
    nsd_run_state_t *st = &run->st;
    long d = -1;
    int all = domain == NULL || strcmp(domain, "*") == 0;
    if (!all) {
        if (!ns_name_valid(domain))
            return ns_error_set(err, NS_EINVAL, "domain", "invalid domain name");
        d = nsd_run_find_domain(st, domain);
        if (d < 0) {
            if (grow((void **)&st->domains, &st->cap_domains, st->n_domains + 1,
                     sizeof(*st->domains)) != 0)
                return ns_error_set(err, NS_ENOMEM, "", "out of memory");
            uint64_t *g = realloc(st->domain_gen, st->cap_domains * sizeof(uint64_t));
            if (g == NULL)
                return ns_error_set(err, NS_ENOMEM, "", "out of memory");
            st->domain_gen = g;
            d = (long)st->n_domains++;
            snprintf(st->domains[d], sizeof(st->domains[d]), "%s", domain);
        }
    }
    uint64_t gen = ++st->precise_generation;
    for (size_t k = 0; k < st->n_domains; k++)
        if (all || (long)k == d)
            st->domain_gen[k] = gen;
    for (size_t i = 0; i < st->n_layers; i++) {
        nsd_layer_t *l = st->layers[i];
        for (size_t k = 0; k < l->cap_pops && k < st->n_domains; k++)
            if (l->pops[k] != NULL && (all || (long)k == d))
                nsd_pop_precise_reset(l->pops[k], l->channels, gen);
    }
    if (generation)
        *generation = gen;
    return 0;
}

/* ---------------------------------------------------------------- recovery */

long nsd_run_add_domain(nsd_run_t *run, const char *name)
{
    nsd_run_state_t *st = &run->st;
    long d = nsd_run_find_domain(st, name);
    if (d >= 0)
        return d;
    if (grow((void **)&st->domains, &st->cap_domains, st->n_domains + 1, sizeof(*st->domains)) != 0)
        return NS_ENOMEM;
    uint64_t *g = realloc(st->domain_gen, st->cap_domains * sizeof(uint64_t));
    if (g == NULL)
        return NS_ENOMEM;
    st->domain_gen = g;
    d = (long)st->n_domains;
    snprintf(st->domains[d], sizeof(st->domains[d]), "%s", name);
    st->domain_gen[d] = st->precise_generation;
    st->n_domains++;
    return d;
}

/* Memory a replayed step adds: accounted like a report's, without the
 * budget check (what was held before the restart is held again). */
static void replay_account(nsd_run_t *run, uint64_t bytes)
{
    run->st.memory += bytes;
    atomic_fetch_add(&run->ctx->memory, bytes);
}

int nsd_run_replay_step(nsd_run_t *run, const nsd_step_record_t *rec, ns_error_detail_t *err)
{
    nsd_run_state_t *st = &run->st;
    size_t c = rec->channels;
    if (!ns_name_valid(rec->layer))
        return ns_error_set(err, NS_EINVAL, "layer", "invalid layer name");
    if (rec->step > (uint64_t)INT64_MAX)
        return ns_error_set(err, NS_EINVAL, "step", "must be < 2^63");
    if (c > 0 && (rec->mean == NULL || rec->var == NULL))
        return ns_error_set(err, NS_EINVAL, "mean", "channels > 0 needs arrays");
    for (size_t i = 0; i < rec->n_domains; i++)
        if (!ns_name_valid(rec->domains[i].domain) ||
            (c > 0 && (rec->domains[i].mean == NULL || rec->domains[i].var == NULL)))
            return ns_error_set(err, NS_EINVAL, "domains", "invalid domain result");
    int found;
    size_t lpos = layer_pos(st, rec->layer, &found);
    nsd_layer_t *l = found ? st->layers[lpos] : NULL;
    if (l != NULL && c > 0 && l->channels != 0 && l->channels != c)
        return ns_error_set(err, NS_EINVAL, "channels", "expected %zu channels, got %zu",
                            l->channels, c);

    /* Domains a report added before this step finalized. */
    uint32_t *idx = malloc((rec->n_domains ? rec->n_domains : 1) * sizeof(*idx));
    if (idx == NULL)
        return ns_error_set(err, NS_ENOMEM, "", "out of memory");
    int rc = 0;
    for (size_t i = 0; i < rec->n_domains && rc == 0; i++) {
        long d = nsd_run_add_domain(run, rec->domains[i].domain);
        if (d < 0)
            rc = (int)d;
        else
            idx[i] = (uint32_t)d;
    }
    if (rc == 0 && l == NULL) {
        rc = grow((void **)&st->layers, &st->cap_layers, st->n_layers + 1, sizeof(*st->layers));
        if (rc == 0 && (l = layer_create(rec->layer)) == NULL)
            rc = NS_ENOMEM;
        if (rc == 0) {
            memmove(st->layers + lpos + 1, st->layers + lpos,
                    (st->n_layers - lpos) * sizeof(*st->layers));
            st->layers[lpos] = l;
            st->n_layers++;
            replay_account(run, sizeof(nsd_layer_t));
        }
    }
    if (rc == 0 && c > 0 && l->channels == 0) {
        nsd_pop_t *pooled = nsd_pop_create(c, 0);
        double *last = malloc(2 * c * sizeof(double));
        if (pooled == NULL || last == NULL) {
            nsd_pop_free(pooled);
            free(last);
            rc = NS_ENOMEM;
        } else {
            l->channels = c;
            l->pooled = pooled;
            l->last_mean = last;
            replay_account(run, nsd_pop_bytes(c) + 2 * c * sizeof(double));
        }
    }
    if (rc == 0)
        rc = grow((void **)&l->pops, &l->cap_pops, st->n_domains, sizeof(*l->pops));
    for (size_t i = 0; rc == 0 && c > 0 && i < rec->n_domains; i++) {
        if (l->pops[idx[i]] != NULL)
            continue;
        l->pops[idx[i]] = nsd_pop_create(c, st->domain_gen[idx[i]]);
        if (l->pops[idx[i]] == NULL)
            rc = NS_ENOMEM;
        else
            replay_account(run, nsd_pop_bytes(c));
    }
    if (rc == 0)
        rc = grow((void **)&l->ready, &l->cap_ready, l->n_ready + 1, sizeof(*l->ready));

    /* The finalized step, as nsd_barrier_finalize() made it. */
    nsd_final_t *f = rc == 0 ? calloc(1, sizeof(*f)) : NULL;
    if (rc == 0 && f == NULL)
        rc = NS_ENOMEM;
    if (rc == 0) {
        f->step = rec->step;
        f->update = rec->update;
        f->complete = rec->complete;
        f->workers = rec->workers;
        f->channels = c;
        f->count = rec->count;
        f->domains = calloc(rec->n_domains ? rec->n_domains : 1, sizeof(*f->domains));
        if (f->domains == NULL || (c > 0 && (f->mean = malloc(2 * c * sizeof(double))) == NULL))
            rc = NS_ENOMEM;
    }
    if (rc == 0 && c > 0) {
        f->var = f->mean + c;
        memcpy(f->mean, rec->mean, c * sizeof(double));
        memcpy(f->var, rec->var, c * sizeof(double));
    }
    /* Domains in ascending index order, as finalization lists them. */
    for (size_t i = 0; rc == 0 && i < rec->n_domains; i++) {
        size_t pos = f->n_domains;
        while (pos > 0 && f->domains[pos - 1].domain > idx[i])
            pos--;
        memmove(f->domains + pos + 1, f->domains + pos, (f->n_domains - pos) * sizeof(*f->domains));
        nsd_final_domain_t *d = &f->domains[pos];
        memset(d, 0, sizeof(*d));
        f->n_domains++;
        d->domain = idx[i];
        d->count = rec->domains[i].count;
        if (c > 0) {
            d->mean = malloc(2 * c * sizeof(double));
            if (d->mean == NULL) {
                rc = NS_ENOMEM;
                break;
            }
            d->var = d->mean + c;
            memcpy(d->mean, rec->domains[i].mean, c * sizeof(double));
            memcpy(d->var, rec->domains[i].var, c * sizeof(double));
        }
    }
    free(idx);
    if (rc != 0) {
        nsd_final_free(f);
        return ns_error_set(err, rc, "", "out of memory");
    }
    if ((int64_t)f->step > l->max_closed)
        l->max_closed = (int64_t)f->step;
    if ((int64_t)f->step > l->max_seen)
        l->max_seen = (int64_t)f->step;
    ready_insert(l, f);
    apply_ready_below(run, l, rec->first_pending >= 0 ? (uint64_t)rec->first_pending : UINT64_MAX);
    return 0;
}

size_t nsd_run_apply_held(nsd_run_t *run)
{
    size_t n = 0;
    for (size_t i = 0; i < run->st.n_layers; i++)
        n += apply_ready_below(run, run->st.layers[i], UINT64_MAX);
    return n;
}

void nsd_run_ready_records(nsd_run_t *run, nsd_outbox_t *box)
{
    for (size_t i = 0; i < run->st.n_layers; i++) {
        const nsd_layer_t *l = run->st.layers[i];
        for (size_t k = 0; k < l->n_ready; k++)
            record_final(run, l, l->ready[k], box);
    }
}

/* ---------------------------------------------------------------- JSON views */

json_t *nsd_run_summary_json(nsd_run_t *run)
{
    const nsd_run_state_t *st = &run->st;
    size_t pending = 0;
    int64_t step = -1;
    for (size_t i = 0; i < st->n_layers; i++) {
        pending += st->layers[i]->n_pending;
        if (st->layers[i]->last_applied > step)
            step = st->layers[i]->last_applied;
    }
    return json_pack("{s:s, s:I, s:I, s:I, s:I, s:o, s:I}", "run", run->name, "world_size",
                     (json_int_t)st->cfg.world_size, "layers", (json_int_t)st->n_layers, "domains",
                     (json_int_t)st->n_domains, "pending_steps", (json_int_t)pending, "step",
                     json_integer(step), "memory_bytes", (json_int_t)st->memory);
}

static json_t *config_json(const ns_run_config_t *c)
{
    json_t *momentum = c->momentum == NS_MOMENTUM_CUMULATIVE ? json_null() : json_real(c->momentum);
    return json_pack("{s:I, s:o, s:I, s:s, s:b}", "world_size", (json_int_t)c->world_size,
                     "momentum", momentum, "sync_timeout_ms", (json_int_t)c->sync_timeout_ms,
                     "on_timeout", c->on_timeout_drop ? "drop" : "partial", "ema_debias",
                     c->ema_debias);
}

json_t *nsd_run_config_json(const ns_run_config_t *cfg)
{
    return config_json(cfg);
}

json_t *nsd_run_json(nsd_run_t *run, uint64_t now_ms)
{
    const nsd_run_state_t *st = &run->st;
    json_t *layers = json_object(), *domains = json_array(), *pending = json_array();
    json_t *workers = json_array();
    json_t *root = NULL;
    int ok = layers && domains && pending && workers;
    int64_t highest = -1;
    uint32_t ws = st->cfg.world_size;

    for (size_t i = 0; ok && i < st->n_domains; i++)
        ok = json_array_append_new(domains,
                                   json_pack("{s:s, s:I}", "domain", st->domains[i], "generation",
                                             (json_int_t)st->domain_gen[i])) == 0;
    for (size_t i = 0; ok && i < st->n_layers; i++) {
        const nsd_layer_t *l = st->layers[i];
        uint64_t nbt = l->pooled ? l->pooled->ema.num_batches_tracked : 0;
        ok = json_object_set_new(
                 layers, l->name,
                 json_pack("{s:I, s:I, s:I, s:I, s:I}", "channels", (json_int_t)l->channels, "step",
                           (json_int_t)l->last_applied, "finalized_step", (json_int_t)l->max_closed,
                           "num_batches_tracked", (json_int_t)nbt, "pending_steps",
                           (json_int_t)l->n_pending)) == 0;
        if (l->max_seen > highest)
            highest = l->max_seen;
        for (size_t k = 0; ok && k < l->n_pending; k++) {
            const nsd_pending_t *p = l->pending[k];
            json_t *arrived = json_array(), *waiting = json_array();
            ok = arrived && waiting;
            for (uint32_t w = 0; ok && w < p->world_size; w++)
                ok = json_array_append_new(p->arrivals[w].present ? arrived : waiting,
                                           json_integer(w)) == 0;
            json_t *e =
                ok ? json_pack("{s:s, s:I, s:I, s:I, s:o, s:o}", "layer", l->name, "step",
                               (json_int_t)p->step, "age_ms",
                               (json_int_t)(now_ms > p->created_ms ? now_ms - p->created_ms : 0),
                               "world_size", (json_int_t)p->world_size, "arrived", arrived,
                               "waiting_for", waiting)
                   : NULL;
            if (e == NULL) {
                ok = 0;
                break;
            }
            ok = json_array_append_new(pending, e) == 0;
        }
    }
    for (uint32_t w = 0; ok && w < ws; w++) {
        int64_t last = -1;
        for (size_t i = 0; i < st->n_layers; i++) {
            const nsd_layer_t *l = st->layers[i];
            if (w < l->n_workers && l->worker_last[w] > last)
                last = l->worker_last[w];
        }
        json_t *lag = last >= 0 ? json_integer(highest - last) : json_null();
        ok = json_array_append_new(workers, json_pack("{s:I, s:I, s:o}", "worker", (json_int_t)w,
                                                      "step", (json_int_t)last, "lag", lag)) == 0;
    }
    if (ok) {
        json_t *status =
            json_pack("{s:O, s:O, s:I, s:I, s:I, s:O, s:O}", "layers", layers, "domains", domains,
                      "skipped_steps", (json_int_t)st->skipped_steps, "precise_generation",
                      (json_int_t)st->precise_generation, "memory_bytes", (json_int_t)st->memory,
                      "pending", pending, "workers", workers);
        root = status ? json_pack("{s:s, s:o, s:o}", "run", run->name, "config",
                                  config_json(&st->cfg), "status", status)
                      : NULL;
    }
    json_decref(layers);
    json_decref(domains);
    json_decref(pending);
    json_decref(workers);
    return root;
}
