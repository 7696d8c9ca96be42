/* step.h - a finalized step of one layer: its pooled and per-domain
 * combination (n, mean, biased var in double) and how the run applies it.
 *
 * One type from end to end: the barrier makes it, the layer's ready queue
 * holds it until it is applied, a copy goes to the persistence hook, the
 * store encodes it as a log row and decodes it again for replay.
 *
 * Memory: mean and var of the pooled result and of each domain are one block
 * of 2 * channels doubles (var = mean + channels); the pooled block follows
 * the struct in its allocation, and a step's first domain is held inline. A domain whose arrivals
 * are all of the step's arrivals shares the pooled block (mean == the
 * step's mean); nsd_step_free() frees that block once. 'bytes' is what the
 * step holds in all, kept blocks included.
 * Reuse: nsd_step_reuse() empties a step for the next finalized step of the
 * same channels; the domain blocks it held are kept for the next domains,
 * so a layer's steady state allocates nothing.
 * Threads: none; a step belongs to one owner at a time (a layer's steps are
 * shared by its ready queue and its last-values views: 'refs', under the
 * layer's lock, see run.h). */
#ifndef NSD_STEP_H
#define NSD_STEP_H

#include <stddef.h>
#include <stdint.h>

#include <normstat/proto.h>

#include "base/queue.h"

/* The domain index of a step decoded from a log row (names only). */
#define NSD_STEP_NO_INDEX UINT32_MAX

/* One domain's combination at the step. */
typedef struct nsd_step_domain_s {
    uint32_t index; /* the run's domain index, or NSD_STEP_NO_INDEX */
    char name[NS_NAME_MAX + 1];
    uint64_t count;
    double *mean; /* [channels] or NULL if channels == 0 */
    double *var;  /* biased; mean + channels */
} nsd_step_domain_t;

typedef struct nsd_step_s {
    nsd_qnode_t link; /* a layer's held step, in a snapshot's queue (borrowed) */
    char layer[NS_NAME_MAX + 1];
    uint64_t step;
    unsigned update;  /* NS_UPDATE_* bits the arrivals agreed on */
    int complete;     /* 0 if finalized by a partial timeout */
    uint32_t workers; /* arrivals */
    /* The lowest step of the layer still pending when this one finalized,
     * -1 if none: while that step is pending, EMA does not apply this one.
     * Replay holds it back the same way. */
    int64_t first_pending;
    size_t channels; /* 0 when no arrival carried arrays: no arrays at all */
    uint64_t count;  /* pooled (all domains) */
    double *mean;    /* pooled */
    double *var;     /* pooled, biased */
    size_t n_domains, cap_domains;
    nsd_step_domain_t *domains; /* ascending index (the run's domain order) */
    nsd_step_domain_t first;    /* domains' first home (one domain: no allocation) */
    size_t bytes;               /* allocated: struct, blocks (kept ones too), domains */
    unsigned refs;              /* holders in a layer (run.h); 0 outside one */
    double *kept_blocks;        /* emptied domain blocks, linked through their first bytes */
} nsd_step_t;

/*! nsd_step_create() :
 *  A step with room for the pooled arrays of 'channels' (uninitialised), no
 *  domain, count 0, first_pending -1. @return NULL when out of memory. */
nsd_step_t *nsd_step_create(const char *layer, uint64_t step, size_t channels);

/*! nsd_step_reuse() :
 *  Empty 's' (channels kept) as nsd_step_create() would make it for
 *  'layer' and 'step'; its domain blocks are kept for the next
 *  nsd_step_add_domain() calls. */
void nsd_step_reuse(nsd_step_t *s, const char *layer, uint64_t step);

/*! nsd_step_add_domain() :
 *  Insert a domain, keeping ascending index (equal indexes keep their
 *  order). 'mean' == s->mean shares the pooled block; otherwise a kept block
 *  is taken, or one allocated, and, when 'mean' and 'var' are not NULL, filled from them
 *  (channels each). @return the new domain (valid until the next insert),
 *  or NULL when out of memory (the step unchanged). */
nsd_step_domain_t *nsd_step_add_domain(nsd_step_t *s, uint32_t index, const char *name,
                                       uint64_t count, const double *mean, const double *var);

/*! nsd_step_dup() : a deep copy (sharing as 'src' shares), not linked.
 *  @return NULL when out of memory. */
nsd_step_t *nsd_step_dup(const nsd_step_t *src);

/*! nsd_step_find_domain() : the domain of run index 'index', or NULL. */
const nsd_step_domain_t *nsd_step_find_domain(const nsd_step_t *s, uint32_t index);

/*! nsd_step_shares_pooled() : 1 if domain 'd' holds the pooled block. */
static inline int nsd_step_shares_pooled(const nsd_step_t *s, const nsd_step_domain_t *d)
{
    return s->channels > 0 && d->mean == s->mean;
}

/*! nsd_step_viewed() : 1 if a layer of 'channels' keeps its last values as
 *  views of its finalized steps and recycles them (run.h): their arrays
 *  outweigh a step's own bytes. A smaller layer copies its last values and
 *  keeps no step, which costs it less memory (a run of many tiny layers). */
static inline int nsd_step_viewed(size_t channels)
{
    return 2 * channels * sizeof(double) >= sizeof(nsd_step_t);
}

/*! nsd_step_free() : accepts NULL. */
void nsd_step_free(nsd_step_t *s);

#endif /* NSD_STEP_H */
