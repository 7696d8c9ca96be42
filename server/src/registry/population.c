/* population.c - EMA and PreciseBN state of one (run, layer, domain), through
 * libnscore. */
#include "population.h"

#include <stdlib.h>
#include <string.h>

#include <normstat/proto.h>

#include "step.h"

/* Doubles from one array of data[] to the next: the channels, and one cache
 * line more when that is a multiple of 4 KiB (512, 1024, 2048 channels:
 * much of a ResNet). The step update reads and writes six of these arrays
 * together; 4 KiB apart they would share their L1 sets and alias in the
 * store buffer (about a quarter of a ResNet-50 report's server CPU time);
 * a line apart they do not. */
static size_t array_stride(size_t channels)
{
    return channels > 0 && channels % 512 == 0 ? channels + 8 : channels;
}

size_t nsd_pop_bytes(size_t channels)
{
    /* six arrays at the stride, then the copied last values' two (mean, var) */
    size_t copied = nsd_step_viewed(channels) ? 0 : 2 * channels;
    return sizeof(nsd_pop_t) + (6 * array_stride(channels) + copied) * sizeof(double);
}

double *nsd_pop_last_copy(nsd_pop_t *pop, size_t channels)
{
    return nsd_step_viewed(channels) ? NULL : pop->data + 6 * array_stride(channels);
}

/* Points the core structs at their slices of data[]. */
static void bind_arrays(nsd_pop_t *pop, size_t channels)
{
    const size_t s = array_stride(channels);
    pop->ema.running_mean = pop->data;
    pop->ema.running_var = pop->data + s;
    pop->ema.zero_mean = pop->data + 2 * s;
    pop->ema.zero_var = pop->data + 3 * s;
    pop->precise.mean = pop->data + 4 * s;
    pop->precise.m2 = pop->data + 5 * s;
}

nsd_pop_t *nsd_pop_create(size_t channels, uint64_t generation)
{
    if (channels > (SIZE_MAX - sizeof(nsd_pop_t)) / (8 * sizeof(double)) - 8)
        return NULL;
    nsd_pop_t *pop = malloc(nsd_pop_bytes(channels));
    if (pop == NULL)
        return NULL;
    bind_arrays(pop, channels);
    ns_ema_init(&pop->ema, channels);
    ns_precise_init(&pop->precise, channels);
    pop->generation = generation;
    pop->ema_step = -1;
    pop->precise_step = -1;
    pop->last_step = -1;
    pop->last_count = 0;
    pop->last_mean = NULL;
    pop->last = NULL;
    pop->history = NULL;
    return pop;
}

nsd_pop_t *nsd_pop_clone(const nsd_pop_t *pop, size_t channels)
{
    nsd_pop_t *dst = malloc(nsd_pop_bytes(channels));
    if (dst == NULL)
        return NULL;
    memcpy(dst, pop, nsd_pop_bytes(channels));
    bind_arrays(dst, channels);
    dst->history = NULL; /* the ring stays with 'pop': a copy freed must not free it */
    dst->last = NULL;    /* so does the last step, a view the layer holds */
    dst->last_mean = pop->last_mean != NULL ? nsd_pop_last_copy(dst, channels) : NULL;
    if (dst->last_mean == NULL) {
        dst->last_step = -1;
        dst->last_count = 0;
    }
    return dst;
}

void nsd_pop_free(nsd_pop_t *pop)
{
    if (pop != NULL)
        nsd_history_free(pop->history);
    free(pop);
}

int nsd_pop_apply(nsd_pop_t *pop, size_t channels, unsigned update, uint64_t n, const double *mean,
                  const double *var, double momentum, uint64_t step)
{
    int changed = 0;
    if (update & NS_UPDATE_EMA) {
        changed = ns_ema_update(&pop->ema, channels, n, mean, var, momentum);
        if (changed < 0)
            return changed;
        if (changed)
            pop->ema_step = (int64_t)step;
    }
    if ((update & NS_UPDATE_PRECISE) && n > 0) {
        int rc = ns_precise_add(&pop->precise, channels, n, mean, var);
        if (rc < 0)
            return rc;
        pop->precise_step = (int64_t)step;
    }
    return changed;
}

int nsd_pop_apply_with_pooled(nsd_pop_t *pop, nsd_pop_t *pooled, size_t channels, unsigned update,
                              uint64_t n, const double *mean, const double *var, double momentum,
                              uint64_t step, ns_step_record_t *rec, int *pooled_changed)
{
    ns_ema_t *ema[NS_STEP_EMA_MAX];
    size_t n_ema = 0;
    if (update & NS_UPDATE_EMA) {
        ema[n_ema++] = &pop->ema;
        ema[n_ema++] = &pooled->ema;
    }
    int precise = (update & NS_UPDATE_PRECISE) && n > 0;
    int applied[NS_STEP_EMA_MAX] = {0, 0};
    int rc = ns_step_update_record(ema, n_ema, precise ? &pop->precise : NULL, channels, n, mean,
                                   var, momentum, applied, rec);
    if (rc < 0)
        return rc;
    if (applied[0])
        pop->ema_step = (int64_t)step;
    if (applied[1])
        pooled->ema_step = (int64_t)step;
    if (precise)
        pop->precise_step = (int64_t)step;
    *pooled_changed = applied[1];
    return applied[0];
}

void nsd_pop_precise_reset(nsd_pop_t *pop, size_t channels, uint64_t generation)
{
    ns_precise_init(&pop->precise, channels);
    pop->generation = generation;
    pop->precise_step = -1;
}

void nsd_pop_ema_read(const nsd_pop_t *pop, size_t channels, int debias, double *mean, double *var)
{
    if (pop == NULL) {
        for (size_t c = 0; c < channels; c++) {
            mean[c] = 0.0;
            var[c] = 1.0;
        }
        return;
    }
    if (debias && ns_ema_debiased(&pop->ema, channels, mean, var) == 0)
        return;
    memcpy(mean, pop->ema.running_mean, channels * sizeof(double));
    memcpy(var, pop->ema.running_var, channels * sizeof(double));
}

int nsd_pop_precise_pool(ns_precise_t *dst, nsd_pop_t *const *pops, size_t n, size_t channels)
{
    ns_precise_init(dst, channels);
    for (size_t i = 0; i < n; i++) {
        if (pops[i] == NULL)
            continue;
        int rc = ns_precise_merge(dst, &pops[i]->precise, channels);
        if (rc < 0)
            return rc;
    }
    return 0;
}
