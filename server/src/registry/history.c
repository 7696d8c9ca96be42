/* history.c - a ring of the last K applied steps of one (layer, domain). */
#include "history.h"

#include <stdlib.h>
#include <string.h>

struct nsd_history_s {
    size_t channels, cap;
    size_t len;                   /* entries held */
    size_t head;                  /* slot of the oldest entry */
    nsd_history_entry_t *entries; /* [cap] */
    double *scratch;              /* [NSD_HIST_SCRATCH * channels] */
    float *values;                /* [cap][NSD_HIST_VALUES][channels] */
};

/* One block: the struct, the entries, the scratch doubles, the floats (each
 * part's alignment is met by the sizes before it). */
uint64_t nsd_history_bytes(size_t channels, size_t cap)
{
    return sizeof(nsd_history_t) + (uint64_t)cap * sizeof(nsd_history_entry_t) +
           (uint64_t)NSD_HIST_SCRATCH * channels * sizeof(double) +
           (uint64_t)cap * NSD_HIST_VALUES * channels * sizeof(float);
}

nsd_history_t *nsd_history_create(size_t channels, size_t cap)
{
    if (channels == 0 || cap == 0 || channels > SIZE_MAX / 64 / cap)
        return NULL;
    nsd_history_t *h = malloc(nsd_history_bytes(channels, cap));
    if (h == NULL)
        return NULL;
    h->channels = channels;
    h->cap = cap;
    h->len = 0;
    h->head = 0;
    h->entries = (nsd_history_entry_t *)(h + 1);
    h->scratch = (double *)(h->entries + cap);
    h->values = (float *)(h->scratch + NSD_HIST_SCRATCH * channels);
    return h;
}

void nsd_history_free(nsd_history_t *h)
{
    free(h);
}

static float *slot_values(const nsd_history_t *h, size_t slot)
{
    return h->values + slot * NSD_HIST_VALUES * h->channels;
}

void nsd_history_copy(nsd_history_t *dst, const nsd_history_t *src)
{
    dst->len = src->len;
    dst->head = src->head;
    memcpy(dst->entries, src->entries, src->cap * sizeof(*src->entries));
    memcpy(dst->values, src->values, src->cap * NSD_HIST_VALUES * src->channels * sizeof(float));
}

nsd_history_entry_t *nsd_history_push_slot(nsd_history_t *h, uint64_t step, uint64_t count,
                                           float **values)
{
    size_t slot = (h->head + h->len) % h->cap;
    if (h->len == h->cap)
        h->head = (h->head + 1) % h->cap; /* the oldest makes room */
    else
        h->len++;
    *values = slot_values(h, slot);
    nsd_history_entry_t *e = &h->entries[slot];
    memset(e, 0, sizeof(*e));
    e->step = step;
    e->count = count;
    return e;
}

nsd_history_entry_t *nsd_history_push(nsd_history_t *h, uint64_t step, uint64_t count,
                                      const double *batch_mean, const double *batch_var,
                                      const double *ema_mean, const double *ema_var)
{
    float *dst;
    nsd_history_entry_t *e = nsd_history_push_slot(h, step, count, &dst);
    const double *src[NSD_HIST_VALUES] = {batch_mean, batch_var, ema_mean, ema_var};
    for (size_t k = 0; k < NSD_HIST_VALUES; k++)
        ns_narrow_f32(dst + k * h->channels, src[k], h->channels);
    return e;
}

size_t nsd_history_len(const nsd_history_t *h)
{
    return h->len;
}

const nsd_history_entry_t *nsd_history_at(const nsd_history_t *h, size_t i, const float **values)
{
    size_t slot = (h->head + i) % h->cap;
    if (values != NULL)
        *values = slot_values(h, slot);
    return &h->entries[slot];
}

double *nsd_history_scratch(nsd_history_t *h)
{
    return h->scratch;
}
