/* history.h - the bounded history of one (run, layer, domain): for each of
 * the last K applied steps, the step's combined statistics and the EMA right
 * after it, per channel in float32, with the drift of that EMA from
 * PreciseBN then (doc/design.md, "History and drift").
 *
 * A ring of 'cap' entries allocated whole at creation: the oldest entry is
 * overwritten once it is full, so its memory never changes. It also holds
 * the scratch arrays a drift computation of its layer needs, so recording a
 * step allocates nothing.
 *
 * Internal to the registry. Not thread-safe: callers hold the run's lock. */
#ifndef NSD_HISTORY_H
#define NSD_HISTORY_H

#include <stddef.h>
#include <stdint.h>

#include <normstat/core.h>

/* The per-channel values of an entry, in this order. */
enum {
    NSD_HIST_BATCH_MEAN = 0,
    NSD_HIST_BATCH_VAR,
    NSD_HIST_EMA_MEAN,
    NSD_HIST_EMA_VAR,
    NSD_HIST_VALUES
};

/* Doubles of scratch per channel (see nsd_history_scratch()). */
#define NSD_HIST_SCRATCH 6

typedef struct nsd_history_entry_s {
    uint64_t step;
    uint64_t count;   /* values per channel of the step's combination */
    int has_drift;    /* 0 while PreciseBN had fewer than 2 samples */
    ns_drift_t drift; /* the EMA after this step against PreciseBN then */
} nsd_history_entry_t;

typedef struct nsd_history_s nsd_history_t;

/*! nsd_history_bytes() : the memory a history of 'cap' entries of
 *  'channels' channels takes (accounted in --max-memory):
 *  cap * (16 * channels + 72) + 48 * channels bytes and a header. */
uint64_t nsd_history_bytes(size_t channels, size_t cap);

/*! nsd_history_create() : an empty history. @return NULL when out of memory. */
nsd_history_t *nsd_history_create(size_t channels, size_t cap);

/*! nsd_history_free() : accepts NULL. */
void nsd_history_free(nsd_history_t *h);

/*! nsd_history_copy() : 'dst' holds the entries of 'src' (same channels
 *  and capacity). */
void nsd_history_copy(nsd_history_t *dst, const nsd_history_t *src);

/*! nsd_history_push() :
 *  Record one step (batch mean and biased var, EMA mean and var), dropping
 *  the oldest entry when full; the values are rounded to float32.
 *  @return the new entry, whose drift the caller sets. */
nsd_history_entry_t *nsd_history_push(nsd_history_t *h, uint64_t step, uint64_t count,
                                      const double *batch_mean, const double *batch_var,
                                      const double *ema_mean, const double *ema_var);

/*! nsd_history_push_slot() :
 *  nsd_history_push() without values: the new entry, and in *values its
 *  NSD_HIST_VALUES arrays of channels floats (as nsd_history_at() lays them
 *  out), which the caller fills. */
nsd_history_entry_t *nsd_history_push_slot(nsd_history_t *h, uint64_t step, uint64_t count,
                                           float **values);

/*! nsd_history_len() : the entries held (at most the capacity). */
size_t nsd_history_len(const nsd_history_t *h);

/*! nsd_history_at() : entry 'i', 0 the oldest; 'values' (may be NULL) gets
 *  its NSD_HIST_VALUES arrays of channels floats, one after the other. */
const nsd_history_entry_t *nsd_history_at(const nsd_history_t *h, size_t i, const float **values);

/*! nsd_history_scratch() : NSD_HIST_SCRATCH * channels doubles for the
 *  caller's computations (contents not kept). */
double *nsd_history_scratch(nsd_history_t *h);

#endif /* NSD_HISTORY_H */
