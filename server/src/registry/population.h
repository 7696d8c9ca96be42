/* population.h - population statistics of one (run, layer, domain): EMA and
 * the current PreciseBN generation, updated and read through libnscore.
 *
 * Internal to the registry. Not thread-safe: callers hold the run's lock. */
#ifndef NSD_POPULATION_H
#define NSD_POPULATION_H

#include <stddef.h>
#include <stdint.h>

#include <normstat/core.h>

#include "history.h"

typedef struct nsd_pop_s {
    ns_ema_t ema;         /* arrays point into data[] (zero-start arrays always kept) */
    ns_precise_t precise; /* current generation; arrays point into data[] */
    uint64_t generation;  /* generation of 'precise' */
    int64_t ema_step;     /* last step that changed the EMA, -1 if none */
    int64_t precise_step; /* last step merged into this generation, -1 if none */
    int64_t last_step;    /* highest finalized step with arrivals of this domain, -1 if none */
    uint64_t last_count;  /* that step's combined count of this domain */
    /* That step's mean, then biased var ([2 * channels]), NULL if none: a
     * view into the finalized step 'last', which the pop holds a reference
     * to (run.h, DESIGN), or with few channels (nsd_step_viewed() 0) a copy
     * in data[] ('last' NULL). */
    const double *last_mean;
    struct nsd_step_s *last;
    nsd_history_t *history; /* last applied steps (history.h); NULL until the first */
    double data[];        /* 6 arrays at a padded stride, + 2 * channels of copied last values */
} nsd_pop_t;

/*! nsd_pop_bytes() : the memory one state of 'channels' channels takes. */
size_t nsd_pop_bytes(size_t channels);

/*! nsd_pop_create() :
 *  PyTorch's initial EMA (0, 1, 0), an empty accumulator of 'generation'.
 *  @return NULL when out of memory. */
nsd_pop_t *nsd_pop_create(size_t channels, uint64_t generation);

/*! nsd_pop_clone() : a copy of 'pop' with its own arrays, no history, and
 *  its last values only if copied (a viewed step stays the layer's): the
 *  statistics a snapshot reads. NULL when out of memory. */
nsd_pop_t *nsd_pop_clone(const nsd_pop_t *pop, size_t channels);

/*! nsd_pop_last_copy() : where a pop of few channels keeps its copied last
 *  values (2 * channels), NULL for one that views them. */
double *nsd_pop_last_copy(nsd_pop_t *pop, size_t channels);

/*! nsd_pop_free() : accepts NULL; frees its history too (its last step's
 *  reference is the layer's to drop first). */
void nsd_pop_free(nsd_pop_t *pop);

/*! nsd_pop_apply() :
 *  Apply one finalized step's statistics (n values, biased var) of this
 *  domain: EMA with 'momentum' if 'update' has NS_UPDATE_EMA, PreciseBN if it
 *  has NS_UPDATE_PRECISE.
 *  @return 1 if the EMA changed, 0 if it did not (not asked, or n < 2),
 *  NS_EINVAL from libnscore. */
int nsd_pop_apply(nsd_pop_t *pop, size_t channels, unsigned update, uint64_t n, const double *mean,
                  const double *var, double momentum, uint64_t step);

/*! nsd_pop_apply_with_pooled() :
 *  nsd_pop_apply() of 'pop' and, with NS_UPDATE_EMA, of the layer's pooled
 *  EMA 'pooled' (NS_UPDATE_EMA only) from the same statistics, in one pass
 *  over the channels (a step whose arrivals are all of one domain: the
 *  domain's combination is the pooled one). The same bits as the two calls.
 *  'rec' (NULL: none): a history entry the same pass records
 *  (ns_step_update_record()).
 *  @return as nsd_pop_apply() for 'pop'; *pooled_changed as it for 'pooled'. */
int nsd_pop_apply_with_pooled(nsd_pop_t *pop, nsd_pop_t *pooled, size_t channels,
                              unsigned update, uint64_t n, const double *mean, const double *var,
                              double momentum, uint64_t step, ns_step_record_t *rec,
                              int *pooled_changed);

/*! nsd_pop_precise_reset() : a fresh accumulator numbered 'generation'. */
void nsd_pop_precise_reset(nsd_pop_t *pop, size_t channels, uint64_t generation);

/*! nsd_pop_ema_read() :
 *  The served EMA: running_mean and running_var (unbiased), or the debiased
 *  view. 'pop' NULL reads PyTorch's initial state (0, 1). */
void nsd_pop_ema_read(const nsd_pop_t *pop, size_t channels, int debias, double *mean, double *var);

/*! nsd_pop_precise_pool() :
 *  Merge the accumulators of pops[0..n) (NULL entries skipped), in order,
 *  into 'dst', whose arrays the caller provides; dst is initialised first.
 *  @return 0 or NS_EINVAL (overflow). */
int nsd_pop_precise_pool(ns_precise_t *dst, nsd_pop_t *const *pops, size_t n, size_t channels);

#endif /* NSD_POPULATION_H */
