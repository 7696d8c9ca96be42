/* run.c - one run: life cycle, its locks, memory accounting, domains,
 * configuration, timeouts, PreciseBN resets (see the DESIGN in run.h). */
#define _GNU_SOURCE /* pthread_rwlockattr_setkind_np: writers are not starved */
#include "run.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/array.h"
#include "base/names.h"
#include "gradsum.h"

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

long nsd_run_find_domain(const nsd_run_state_t *st, const char *name)
{
    for (size_t i = 0; i < st->n_domains; i++)
        if (strcmp(st->domains[i], name) == 0)
            return (long)i;
    return -1;
}

static const char *layer_name_at(const void *items, size_t i)
{
    return ((nsd_layer_t *const *)items)[i]->name;
}

/* Position of 'name' in the sorted layer array, or where it would go. */
size_t nsd_run_layer_pos(const nsd_run_state_t *st, const char *name, int *found)
{
    return nsd_name_pos(st->layers, st->n_layers, layer_name_at, name, found);
}

nsd_layer_t *nsd_run_find_layer(const nsd_run_state_t *st, const char *name)
{
    int found;
    size_t i = nsd_run_layer_pos(st, name, &found);
    return found ? st->layers[i] : NULL;
}

/* Room for one more domain (capacity only; state unchanged). */
int nsd_run_reserve_domain(nsd_run_state_t *st)
{
    if (nsd_array_grow((void **)&st->domains, &st->cap_domains, st->n_domains + 1,
                       sizeof(*st->domains)) != 0)
        return NS_ENOMEM;
    /* domain_gen always has cap_domains elements */
    uint64_t *g = realloc(st->domain_gen, st->cap_domains * sizeof(uint64_t));
    if (g == NULL)
        return NS_ENOMEM;
    st->domain_gen = g;
    return 0;
}

/* Append domain 'name' into reserved room; it starts at the run's current
 * PreciseBN generation. @return its index. */
long nsd_run_append_domain(nsd_run_state_t *st, const char *name)
{
    long d = (long)st->n_domains++;
    snprintf(st->domains[d], sizeof(st->domains[d]), "%s", name);
    st->domain_gen[d] = st->precise_generation;
    return d;
}

long nsd_run_add_domain(nsd_run_t *run, const char *name)
{
    nsd_run_state_t *st = &run->st;
    long d = nsd_run_find_domain(st, name);
    if (d >= 0)
        return d;
    if (nsd_run_reserve_domain(st) != 0)
        return NS_ENOMEM;
    return nsd_run_append_domain(st, name);
}

/* The run's rwlock. Reports hold it shared all the time, so a PUT, a new
 * domain or a DELETE waiting for it exclusively must stop new readers
 * (glibc prefers readers by default). */
static int run_lock_init(pthread_rwlock_t *lock)
{
    pthread_rwlockattr_t attr;
    if (pthread_rwlockattr_init(&attr) != 0)
        return -1;
#ifdef __GLIBC__
    pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
#endif
    int rc = pthread_rwlock_init(lock, &attr);
    pthread_rwlockattr_destroy(&attr);
    return rc;
}

nsd_run_t *nsd_run_create(nsd_ctx_t *ctx, const char *name, const ns_run_config_t *cfg, int *why)
{
    *why = nsd_mem_reserve(ctx, NSD_RUN_BYTES);
    if (*why != 0)
        return NULL;
    *why = NS_ENOMEM;
    nsd_run_t *run = calloc(1, sizeof(*run));
    if (run == NULL || run_lock_init(&run->lock) != 0) {
        free(run);
        nsd_mem_release(ctx, NSD_RUN_BYTES);
        return NULL;
    }
    if (pthread_mutex_init(&run->grad_lock, NULL) != 0) {
        pthread_rwlock_destroy(&run->lock);
        free(run);
        nsd_mem_release(ctx, NSD_RUN_BYTES);
        return NULL;
    }
    if (pthread_mutex_init(&run->log_limit_lock, NULL) != 0) {
        pthread_mutex_destroy(&run->grad_lock);
        pthread_rwlock_destroy(&run->lock);
        free(run);
        nsd_mem_release(ctx, NSD_RUN_BYTES);
        return NULL;
    }
    *why = 0;
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
                    nsd_waiter_fail(ctx, box, pd->waiters[k].waiter, status);
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
    nsd_mem_release(run->ctx, NSD_RUN_BYTES);
    atomic_fetch_sub(&run->ctx->runs, 1);
    pthread_mutex_destroy(&run->log_limit_lock);
    pthread_mutex_destroy(&run->grad_lock);
    pthread_rwlock_destroy(&run->lock);
    free(run);
}

void nsd_run_lock_layers(nsd_run_t *run)
{
    for (size_t i = 0; i < run->st.n_layers; i++)
        nsd_layer_lock(run->st.layers[i]);
}

void nsd_run_unlock_layers(nsd_run_t *run)
{
    for (size_t i = run->st.n_layers; i > 0; i--)
        nsd_layer_unlock(run->st.layers[i - 1]);
}

void nsd_run_fire_all(nsd_run_t *run, int status, nsd_outbox_t *box)
{
    for (size_t i = 0; i < run->st.n_layers; i++) {
        nsd_layer_t *l = run->st.layers[i];
        for (size_t p = 0; p < l->n_pending; p++) {
            nsd_pending_t *pd = l->pending[p];
            for (size_t k = 0; k < pd->n_waiters; k++)
                nsd_waiter_fail(run->ctx, box, pd->waiters[k].waiter, status);
            pd->n_waiters = 0;
        }
    }
    nsd_gradsum_fire_all(run->ctx, run->st.grad, status, box);
}

int nsd_run_config_apply(nsd_run_t *run, const ns_run_config_t *cfg, ns_error_detail_t *err,
                         nsd_outbox_t *box)
{
    if (cfg->has_world_size && (cfg->world_size < 1 || cfg->world_size > NS_WORLD_SIZE_MAX))
        return ns_error_set(err, NS_EINVAL, "world_size", "must be in [1, %u]", NS_WORLD_SIZE_MAX);
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

uint64_t nsd_run_expire(nsd_run_t *run, uint64_t now_ms, nsd_outbox_t *box)
{
    nsd_run_state_t *st = &run->st;
    uint64_t timeout = st->cfg.sync_timeout_ms;
    uint64_t next = UINT64_MAX;
    for (size_t i = 0; i < st->n_layers; i++) {
        nsd_layer_t *l = st->layers[i];
        size_t k = 0;
        int closed = 0;
        nsd_layer_lock(l);
        while (k < l->n_pending) {
            nsd_pending_t *p = l->pending[k];
            uint64_t deadline = p->created_ms + timeout;
            if (deadline <= now_ms) {
                atomic_fetch_add(&run->ctx->steps_timed_out, 1);
                nsd_run_close_pending(run, l, k, st->cfg.on_timeout_drop, box);
                closed = 1;
                continue;
            }
            if (deadline < next)
                next = deadline;
            k++;
        }
        if (closed)
            nsd_run_apply_ready(run, l);
        nsd_layer_unlock(l);
    }
    nsd_run_settle(run, box);
    pthread_mutex_lock(&run->grad_lock);
    uint64_t grad_next = nsd_gradsum_expire(run, now_ms, box);
    pthread_mutex_unlock(&run->grad_lock);
    return grad_next < next ? grad_next : next;
}

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
            if (nsd_run_reserve_domain(st) != 0)
                return ns_error_set(err, NS_ENOMEM, "", "out of memory");
            d = nsd_run_append_domain(st, domain);
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
