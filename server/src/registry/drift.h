/* drift.h - how far a layer's EMA is from its PreciseBN (ns_drift), now
 * and at each applied step: the history the apply path records
 * (history.h; doc/design.md, "History and drift").
 *
 * A layer has one row per domain it has population state for, and the
 * pooled row (d = -1: the pooled EMA against the merge of every domain's
 * PreciseBN). The pooled row's history is the history of the only domain
 * the layer's steps have had, until a step brings another: then it gets its
 * own, starting as a copy (while one domain had every step, the pooled
 * statistics are that domain's, bit for bit), so a run with one domain
 * keeps one history per layer.
 *
 * Internal to the registry. Callers hold the run's lock. */
#ifndef NSD_DRIFT_H
#define NSD_DRIFT_H

#include "run.h"

/* nsd_layer_t.history_alias once the pooled row keeps its own history. */
#define NSD_HISTORY_OWN UINT32_MAX

/*! nsd_layer_drift() :
 *  The drift now of row 'd' of layer 'l' (a domain index, or -1 pooled):
 *  the EMA as served (debiased if the run has ema_debias) against PreciseBN
 *  (unbiased), with eps NS_DRIFT_EPS. 'scratch' holds NSD_HIST_SCRATCH *
 *  l->channels doubles.
 *  @return 1 and *dst; 0 when undefined (no state for the row, or its
 *  PreciseBN holds fewer than 2 samples). */
int nsd_layer_drift(const nsd_run_t *run, const nsd_layer_t *l, long d, double *scratch,
                    ns_drift_t *dst);

/*! nsd_layer_population() :
 *  Row d's PreciseBN as served (unbiased), in 'scratch' (as above): *mean
 *  and *var point into it. @return 1, or 0 when it has fewer than 2
 *  samples. */
int nsd_layer_population(const nsd_run_t *run, const nsd_layer_t *l, long d, double *scratch,
                         const double **mean, const double **var);

/*! nsd_layer_precise_batches() : row d's PreciseBN num_batches (pooled:
 *  the sum over domains). */
uint64_t nsd_layer_precise_batches(const nsd_run_t *run, const nsd_layer_t *l, long d);

/*! nsd_layer_history_note() :
 *  Record step 'f', just applied to 'l', in the history of each of its
 *  domains and of the pooled row (nothing when --history-steps is 0 or the
 *  step has no arrays). A history is allocated on the first step of its
 *  row, reserved from the memory budget; when the budget has no room the
 *  step is not recorded there (the statistics are not affected) and the
 *  next step tries again. */
void nsd_layer_history_note(nsd_run_t *run, nsd_layer_t *l, const nsd_step_t *f);

/* A history entry the step update itself records (nsd_layer_history_open()). */
typedef struct nsd_history_fused_s {
    ns_step_record_t rec;
    nsd_history_t *history;     /* the domain row's, NULL if none */
    nsd_history_entry_t *entry; /* its new entry, NULL if none */
    float *values;              /* the entry's slot */
    int pooled_own;             /* the pooled row records its own entry after */
    int later;                  /* not fused: nsd_layer_history_note() after */
} nsd_history_fused_t;

/*! nsd_layer_history_open() :
 *  Before step 'f' of one domain, sharing the pooled arrays, is applied in
 *  one pass (ns_step_update_record()): the domain row's new entry, which
 *  that pass fills. @return the record to pass, or NULL for none (the step
 *  may still be recorded by nsd_layer_history_close(), called in any case
 *  after the update). */
ns_step_record_t *nsd_layer_history_open(nsd_run_t *run, nsd_layer_t *l, const nsd_step_t *f,
                                         nsd_history_fused_t *h);

/*! nsd_layer_history_close() :
 *  After the update: the entry's drift; what the pass did not record
 *  ('recorded' 0: the update refused, the entry is filled here), and the
 *  pooled row's entry when it records its own. The same history as
 *  nsd_layer_history_note() after the update. */
void nsd_layer_history_close(nsd_run_t *run, nsd_layer_t *l, const nsd_step_t *f,
                             nsd_history_fused_t *h, int recorded);

/*! nsd_layer_history() : the history row 'd' reads (-1 pooled), or NULL. */
const nsd_history_t *nsd_layer_history(const nsd_layer_t *l, long d);

/*! nsd_drift_json() : {"mean_avg", "mean_max", "mean_max_channel",
 *  "var_avg", "var_max", "var_max_channel"}, a new reference. */
json_t *nsd_drift_json(const ns_drift_t *d);

/*! nsd_run_drift_worst_json() : {"layer", "domain", "mean_max"} of the
 *  run's worst row (every domain, pooled rows when it has several), json
 *  null when no row has a drift; NULL when out of memory. */
json_t *nsd_run_drift_worst_json(const nsd_run_t *run);

/*! nsd_run_drift_worst() : the same row into dst->has_worst, worst_layer,
 *  worst_domain, worst_mean_max. @return 0 or NS_ENOMEM. */
int nsd_run_drift_worst(const nsd_run_t *run, nsd_run_health_t *dst);

#endif /* NSD_DRIFT_H */
