/* step.c - a finalized step of one layer (see step.h). */
#include "step.h"

#include <stdlib.h>
#include <string.h>

/* 'src' into dst[cap], cut at cap - 1 bytes as snprintf() would, without
 * its cost (two names per finalized step and layer). */
static void copy_name(char *dst, size_t cap, const char *src)
{
    size_t n = strnlen(src, cap - 1);
    memcpy(dst, src, n);
    dst[n] = '\0';
}

/* One block of 2 * channels doubles: mean, then var. */
static double *arrays_alloc(size_t channels)
{
    return malloc(2 * channels * sizeof(double));
}

nsd_step_t *nsd_step_create(const char *layer, uint64_t step, size_t channels)
{
    /* One allocation: the struct, then the pooled block (a step is made
     * per layer and finalized step). */
    nsd_step_t *s = malloc(sizeof(*s) + 2 * channels * sizeof(double));
    if (s == NULL)
        return NULL;
    memset(s, 0, sizeof(*s));
    copy_name(s->layer, sizeof(s->layer), layer);
    s->step = step;
    s->first_pending = -1;
    s->channels = channels;
    s->bytes = sizeof(*s) + 2 * channels * sizeof(double);
    if (channels > 0) {
        s->mean = (double *)(void *)(s + 1);
        s->var = s->mean + channels;
    }
    return s;
}

void nsd_step_reuse(nsd_step_t *s, const char *layer, uint64_t step)
{
    for (size_t i = 0; i < s->n_domains; i++) {
        double *block = s->domains[i].mean;
        if (block != NULL && !nsd_step_shares_pooled(s, &s->domains[i])) {
            memcpy(block, &s->kept_blocks, sizeof(s->kept_blocks));
            s->kept_blocks = block;
        }
    }
    copy_name(s->layer, sizeof(s->layer), layer);
    s->step = step;
    s->update = 0;
    s->complete = 0;
    s->workers = 0;
    s->first_pending = -1;
    s->count = 0;
    s->n_domains = 0;
}

/* A domain block: a kept one, else a new one (counted in s->bytes). */
static double *take_block(nsd_step_t *s)
{
    double *block = s->kept_blocks;
    if (block != NULL) {
        memcpy(&s->kept_blocks, block, sizeof(s->kept_blocks));
        return block;
    }
    block = arrays_alloc(s->channels);
    if (block != NULL)
        s->bytes += 2 * s->channels * sizeof(double);
    return block;
}

nsd_step_domain_t *nsd_step_add_domain(nsd_step_t *s, uint32_t index, const char *name,
                                       uint64_t count, const double *mean, const double *var)
{
    size_t c = s->channels;
    if (s->cap_domains == 0) {
        s->domains = &s->first;
        s->cap_domains = 1;
    }
    if (s->n_domains == s->cap_domains) {
        size_t cap = 2 * s->cap_domains;
        nsd_step_domain_t *p = malloc(cap * sizeof(*p));
        if (p == NULL)
            return NULL;
        memcpy(p, s->domains, s->n_domains * sizeof(*p));
        if (s->domains != &s->first) {
            free(s->domains);
            s->bytes -= s->cap_domains * sizeof(*p);
        }
        s->bytes += cap * sizeof(*p); /* the inline first one is the struct's */
        s->domains = p;
        s->cap_domains = cap;
    }
    double *block = NULL;
    if (c > 0 && mean == s->mean) {
        block = s->mean;
    } else if (c > 0) {
        block = take_block(s);
        if (block == NULL)
            return NULL;
        if (mean != NULL && var != NULL) {
            memcpy(block, mean, c * sizeof(double));
            memcpy(block + c, var, c * sizeof(double));
        }
    }
    size_t pos = s->n_domains;
    while (pos > 0 && s->domains[pos - 1].index > index)
        pos--;
    memmove(s->domains + pos + 1, s->domains + pos, (s->n_domains - pos) * sizeof(*s->domains));
    s->n_domains++;
    nsd_step_domain_t *d = &s->domains[pos];
    memset(d, 0, sizeof(*d));
    d->index = index;
    copy_name(d->name, sizeof(d->name), name);
    d->count = count;
    d->mean = block;
    d->var = block ? block + c : NULL;
    return d;
}

nsd_step_t *nsd_step_dup(const nsd_step_t *src)
{
    size_t c = src->channels;
    nsd_step_t *s = nsd_step_create(src->layer, src->step, c);
    if (s == NULL)
        return NULL;
    s->update = src->update;
    s->complete = src->complete;
    s->workers = src->workers;
    s->first_pending = src->first_pending;
    s->count = src->count;
    if (c > 0) {
        memcpy(s->mean, src->mean, c * sizeof(double));
        memcpy(s->var, src->var, c * sizeof(double));
    }
    for (size_t i = 0; i < src->n_domains; i++) {
        const nsd_step_domain_t *d = &src->domains[i];
        const double *mean = nsd_step_shares_pooled(src, d) ? s->mean : d->mean;
        if (nsd_step_add_domain(s, d->index, d->name, d->count, mean, d->var) == NULL) {
            nsd_step_free(s);
            return NULL;
        }
    }
    return s;
}

const nsd_step_domain_t *nsd_step_find_domain(const nsd_step_t *s, uint32_t index)
{
    for (size_t i = 0; i < s->n_domains; i++)
        if (s->domains[i].index == index)
            return &s->domains[i];
    return NULL;
}

void nsd_step_free(nsd_step_t *s)
{
    if (s == NULL)
        return;
    for (size_t i = 0; i < s->n_domains; i++)
        if (!nsd_step_shares_pooled(s, &s->domains[i]))
            free(s->domains[i].mean); /* var shares the block */
    while (s->kept_blocks != NULL)
        free(take_block(s));
    if (s->domains != &s->first)
        free(s->domains);
    free(s); /* and the pooled block after it */
}
