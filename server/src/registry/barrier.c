/* barrier.c - pending steps of one layer and their finalization (see the
 * DESIGN block in barrier.h). */
#include "barrier.h"

#include <stdlib.h>
#include <string.h>

#include <normstat/core.h>

/* Accounted memory of a pending step without its arrival arrays. */
size_t nsd_pending_bytes(uint32_t world_size)
{
    return sizeof(nsd_pending_t) + (size_t)world_size * sizeof(nsd_arrival_t);
}

nsd_pending_t *nsd_pending_create(uint64_t step, uint32_t world_size, unsigned update,
                                  uint64_t now_ms)
{
    /* One allocation: the struct, then its arrivals. */
    nsd_pending_t *p = calloc(1, sizeof(*p) + (size_t)world_size * sizeof(nsd_arrival_t));
    if (p == NULL)
        return NULL;
    p->arrivals = (nsd_arrival_t *)(void *)(p + 1);
    p->step = step;
    p->world_size = world_size;
    p->update = update;
    p->created_ms = now_ms;
    p->bytes = nsd_pending_bytes(world_size);
    return p;
}

/* Free the arrivals' arrays. */
static void free_arrays(nsd_pending_t *p)
{
    for (uint32_t w = 0; w < p->world_size; w++) {
        free(p->arrivals[w].mean);
        if (!p->arrivals[w].joint)
            free(p->arrivals[w].var);
        free(p->arrivals[w].mean64);
        free(p->arrivals[w].var64);
    }
}

void nsd_pending_reuse(nsd_pending_t *p, uint64_t step, unsigned update, uint64_t now_ms)
{
    free_arrays(p);
    memset(p->arrivals, 0, p->world_size * sizeof(*p->arrivals));
    p->step = step;
    p->arrived = 0;
    p->update = update;
    p->created_ms = now_ms;
    p->bytes = nsd_pending_bytes(p->world_size);
    p->n_waiters = 0;
}

void nsd_pending_free(nsd_pending_t *p)
{
    if (p == NULL)
        return;
    free_arrays(p);
    free(p->waiters);
    free(p); /* and its arrivals */
}

int nsd_pending_reserve_waiter(nsd_pending_t *p)
{
    if (p->n_waiters < p->cap_waiters)
        return 0;
    size_t cap = p->cap_waiters ? 2 * p->cap_waiters : 4;
    nsd_waitref_t *w = realloc(p->waiters, cap * sizeof(*w));
    if (w == NULL)
        return NS_ENOMEM;
    p->waiters = w;
    p->cap_waiters = cap;
    return 0;
}

/* Combine the arrivals selected by 'domain' (UINT32_MAX: all) in rank order. */
static int combine(const nsd_pending_t *p, uint32_t domain, size_t channels, int threads,
                   ns_arrival_t *scratch, uint64_t *n, double *mean, double *var)
{
    size_t k = 0;
    for (uint32_t w = 0; w < p->world_size; w++) {
        const nsd_arrival_t *a = &p->arrivals[w];
        if (!a->present || (domain != UINT32_MAX && a->domain != domain))
            continue;
        if (a->n == 0)
            continue; /* counts for the barrier, contributes nothing */
        scratch[k].n = a->n;
        scratch[k].mean = a->mean;
        scratch[k].var = a->var;
        scratch[k].mean64 = a->mean64;
        scratch[k].var64 = a->var64;
        k++;
    }
    if (channels == 0) {
        *n = 0;
        return 0;
    }
    if (k == 0) {
        *n = 0;
        memset(mean, 0, channels * sizeof(double));
        memset(var, 0, channels * sizeof(double));
        return 0;
    }
    return ns_combine(scratch, k, channels, n, mean, var, threads);
}

/* The domains that had arrivals at 'p', in domain index order, added to 's'
 * (a lone domain shares the pooled block). */
static int add_domains(nsd_step_t *s, const nsd_pending_t *p,
                       const char (*domains)[NS_NAME_MAX + 1], size_t n_domains)
{
    unsigned char local[64]; /* most runs have a few domains: no allocation */
    unsigned char *seen = n_domains <= sizeof(local) ? local : malloc(n_domains);
    if (seen == NULL)
        return NS_ENOMEM;
    memset(seen, 0, n_domains <= sizeof(local) ? sizeof(local) : n_domains);
    size_t used = 0;
    for (uint32_t w = 0; w < p->world_size; w++)
        if (p->arrivals[w].present && p->arrivals[w].domain < n_domains &&
            !seen[p->arrivals[w].domain]) {
            seen[p->arrivals[w].domain] = 1;
            used++;
        }
    /* With every arrival in one domain, that domain combines the same arrivals
     * in the same order as the pooled scope: it shares the pooled result
     * instead of recomputing it. */
    int one_domain = used == 1;
    for (uint32_t w = 0; one_domain && w < p->world_size; w++)
        if (p->arrivals[w].present && p->arrivals[w].domain >= n_domains)
            one_domain = 0;
    int rc = 0;
    for (uint32_t d = 0; rc == 0 && d < n_domains; d++)
        if (seen[d] &&
            nsd_step_add_domain(s, d, domains[d], 0, one_domain ? s->mean : NULL, NULL) == NULL)
            rc = NS_ENOMEM;
    if (seen != local)
        free(seen);
    return rc;
}

int nsd_barrier_finalize(const nsd_pending_t *p, const char *layer, size_t channels,
                         const char (*domains)[NS_NAME_MAX + 1], size_t n_domains, int threads,
                         nsd_step_t **dst)
{
    int rc = NS_ENOMEM;
    ns_arrival_t local[16]; /* the arrivals of up to 16 workers: no allocation */
    ns_arrival_t *scratch = NULL;
    nsd_step_t *reused = *dst;
    nsd_step_t *s = reused != NULL ? reused : nsd_step_create(layer, p->step, channels);
    *dst = NULL;
    if (s == NULL)
        goto out;
    if (reused != NULL)
        nsd_step_reuse(s, layer, p->step);
    s->update = p->update;
    s->complete = p->arrived == p->world_size;
    s->workers = p->arrived;
    rc = add_domains(s, p, domains, n_domains);
    if (rc != 0)
        goto out;
    rc = NS_ENOMEM;
    scratch = p->world_size <= 16 ? local : malloc(p->world_size * sizeof(*scratch));
    if (scratch == NULL)
        goto out;
    rc = combine(p, UINT32_MAX, channels, threads, scratch, &s->count, s->mean, s->var);
    for (size_t i = 0; rc == 0 && i < s->n_domains; i++) {
        nsd_step_domain_t *d = &s->domains[i];
        if (nsd_step_shares_pooled(s, d))
            d->count = s->count;
        else
            rc = combine(p, d->index, channels, threads, scratch, &d->count, d->mean, d->var);
    }
out:
    if (scratch != local)
        free(scratch);
    if (rc != 0 && reused != NULL) {
        nsd_step_reuse(s, layer, p->step);
        *dst = s;
    } else if (rc != 0) {
        nsd_step_free(s);
    } else {
        *dst = s;
    }
    return rc;
}
