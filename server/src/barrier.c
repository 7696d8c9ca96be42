/* barrier.c - pending steps of one layer and their finalization (see the
 * DESIGN block in barrier.h). */
#include "barrier.h"

#include <stdlib.h>
#include <string.h>

#include <normstat/core.h>

/* Accounted memory of a pending step without its arrival arrays. */
static size_t pending_bytes(uint32_t world_size)
{
    return sizeof(nsd_pending_t) + (size_t)world_size * sizeof(nsd_arrival_t);
}

nsd_pending_t *nsd_pending_create(uint64_t step, uint32_t world_size, unsigned update,
                                  uint64_t now_ms)
{
    nsd_pending_t *p = calloc(1, sizeof(*p));
    if (p == NULL)
        return NULL;
    p->arrivals = calloc(world_size, sizeof(nsd_arrival_t));
    if (p->arrivals == NULL) {
        free(p);
        return NULL;
    }
    p->step = step;
    p->world_size = world_size;
    p->update = update;
    p->created_ms = now_ms;
    p->bytes = pending_bytes(world_size);
    return p;
}

void nsd_pending_free(nsd_pending_t *p)
{
    if (p == NULL)
        return;
    for (uint32_t w = 0; w < p->world_size; w++) {
        free(p->arrivals[w].mean);
        free(p->arrivals[w].var);
    }
    free(p->arrivals);
    free(p->waiters);
    free(p);
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

void nsd_final_free(nsd_final_t *f)
{
    if (f == NULL)
        return;
    for (size_t i = 0; i < f->n_domains; i++)
        if (f->domains[i].mean != f->mean) /* a lone domain may share the pooled block */
            free(f->domains[i].mean);       /* var shares the block */
    free(f->domains);
    free(f->mean);
    free(f);
}

const nsd_final_domain_t *nsd_final_find_domain(const nsd_final_t *f, uint32_t domain)
{
    for (size_t i = 0; i < f->n_domains; i++)
        if (f->domains[i].domain == domain)
            return &f->domains[i];
    return NULL;
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

int nsd_barrier_finalize(const nsd_pending_t *p, size_t channels, size_t n_domains, int threads,
                         nsd_final_t **dst)
{
    *dst = NULL;
    int rc = NS_ENOMEM;
    ns_arrival_t *scratch = NULL;
    nsd_final_t *f = calloc(1, sizeof(*f));
    if (f == NULL)
        goto out;
    f->step = p->step;
    f->update = p->update;
    f->complete = p->arrived == p->world_size;
    f->workers = p->arrived;
    f->channels = channels;

    /* Which domains had arrivals, in domain index order. */
    size_t used = 0;
    unsigned char *seen = calloc(n_domains ? n_domains : 1, 1);
    if (seen == NULL)
        goto out;
    for (uint32_t w = 0; w < p->world_size; w++)
        if (p->arrivals[w].present && p->arrivals[w].domain < n_domains &&
            !seen[p->arrivals[w].domain]) {
            seen[p->arrivals[w].domain] = 1;
            used++;
        }
    f->domains = calloc(used ? used : 1, sizeof(nsd_final_domain_t));
    if (f->domains == NULL) {
        free(seen);
        goto out;
    }
    for (uint32_t d = 0; d < n_domains; d++)
        if (seen[d])
            f->domains[f->n_domains++].domain = d;
    free(seen);

    /* With every arrival in one domain, that domain combines the same arrivals
     * in the same order as the pooled scope: it shares the pooled result
     * (read-only, freed once by nsd_final_free) instead of recomputing it. */
    int one_domain = f->n_domains == 1;
    for (uint32_t w = 0; one_domain && w < p->world_size; w++)
        if (p->arrivals[w].present && p->arrivals[w].domain != f->domains[0].domain)
            one_domain = 0;

    scratch = malloc((p->world_size ? p->world_size : 1) * sizeof(*scratch));
    if (scratch == NULL)
        goto out;
    if (channels > 0) {
        f->mean = malloc(2 * channels * sizeof(double));
        if (f->mean == NULL)
            goto out;
        f->var = f->mean + channels;
        for (size_t i = 0; !one_domain && i < f->n_domains; i++) {
            nsd_final_domain_t *d = &f->domains[i];
            d->mean = malloc(2 * channels * sizeof(double));
            if (d->mean == NULL)
                goto out;
            d->var = d->mean + channels;
        }
    }
    rc = combine(p, UINT32_MAX, channels, threads, scratch, &f->count, f->mean, f->var);
    if (rc == 0 && one_domain) {
        f->domains[0].count = f->count;
        f->domains[0].mean = f->mean;
        f->domains[0].var = f->var;
    }
    for (size_t i = 0; rc == 0 && !one_domain && i < f->n_domains; i++) {
        nsd_final_domain_t *d = &f->domains[i];
        rc = combine(p, d->domain, channels, threads, scratch, &d->count, d->mean, d->var);
    }
out:
    free(scratch);
    if (rc != 0) {
        nsd_final_free(f);
        return rc;
    }
    *dst = f;
    return 0;
}
