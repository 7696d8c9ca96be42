/* drift.c - EMA vs PreciseBN drift of a layer's rows, and the history each
 * applied step leaves (see drift.h). */
#include "drift.h"

#include <string.h>

/* The parts of a history's scratch (NSD_HIST_SCRATCH arrays of channels). */
typedef struct scratch_s {
    double *pop_mean, *pop_var; /* PreciseBN as served */
    double *ema_mean, *ema_var; /* EMA as served */
    double *acc_mean, *acc_m2;  /* the pooled accumulator */
} scratch_t;

static scratch_t scratch_split(double *s, size_t c)
{
    return (scratch_t){s, s + c, s + 2 * c, s + 3 * c, s + 4 * c, s + 5 * c};
}

/* Row pop's EMA as served: its running arrays, or the debiased view in
 * s->ema_mean, s->ema_var (the arrays are not copied when not needed). */
static void row_ema(const nsd_run_t *run, const nsd_pop_t *pop, size_t c, const scratch_t *s,
                    const double **mean, const double **var)
{
    *mean = pop->ema.running_mean;
    *var = pop->ema.running_var;
    if (run->st.cfg.ema_debias) {
        nsd_pop_ema_read(pop, c, 1, s->ema_mean, s->ema_var);
        *mean = s->ema_mean;
        *var = s->ema_var;
    }
}

static const nsd_pop_t *row_pop(const nsd_layer_t *l, long d)
{
    if (d < 0)
        return l->pooled;
    return (size_t)d < l->cap_pops ? l->pops[d] : NULL;
}

/* Domains the layer may hold state for. */
static size_t layer_domains(const nsd_run_t *run, const nsd_layer_t *l)
{
    return run->st.n_domains < l->cap_pops ? run->st.n_domains : l->cap_pops;
}

/* Row d's PreciseBN into s->pop_mean, s->pop_var. @return 1, or 0 when it
 * has fewer than 2 samples. */
static int row_population(const nsd_run_t *run, const nsd_layer_t *l, long d, const scratch_t *s)
{
    size_t c = l->channels;
    if (d >= 0) {
        const nsd_pop_t *pop = row_pop(l, d);
        return pop != NULL && pop->precise.n >= 2 &&
               ns_precise_read(&pop->precise, c, 0, s->pop_mean, s->pop_var) == 0;
    }
    ns_precise_t acc = {.mean = s->acc_mean, .m2 = s->acc_m2};
    return nsd_pop_precise_pool(&acc, l->pops, layer_domains(run, l), c) == 0 && acc.n >= 2 &&
           ns_precise_read(&acc, c, 0, s->pop_mean, s->pop_var) == 0;
}

/* Row d's drift of the EMA (em, ev) from its PreciseBN, the accumulator
 * read in the same pass (ns_drift_precise()). @return 1, or 0 when it has
 * fewer than 2 samples. */
static int row_drift(const nsd_run_t *run, const nsd_layer_t *l, long d, const scratch_t *s,
                     const double *em, const double *ev, ns_drift_t *dst)
{
    size_t c = l->channels;
    if (d >= 0) {
        const nsd_pop_t *pop = row_pop(l, d);
        return pop != NULL && pop->precise.n >= 2 &&
               ns_drift_precise(em, ev, &pop->precise, c, NS_DRIFT_EPS, dst) == 0;
    }
    ns_precise_t acc = {.mean = s->acc_mean, .m2 = s->acc_m2};
    return nsd_pop_precise_pool(&acc, l->pops, layer_domains(run, l), c) == 0 && acc.n >= 2 &&
           ns_drift_precise(em, ev, &acc, c, NS_DRIFT_EPS, dst) == 0;
}

int nsd_layer_population(const nsd_run_t *run, const nsd_layer_t *l, long d, double *scratch,
                         const double **mean, const double **var)
{
    if (l->channels == 0 || row_pop(l, d) == NULL)
        return 0;
    scratch_t s = scratch_split(scratch, l->channels);
    *mean = s.pop_mean;
    *var = s.pop_var;
    return row_population(run, l, d, &s);
}

int nsd_layer_drift(const nsd_run_t *run, const nsd_layer_t *l, long d, double *scratch,
                    ns_drift_t *dst)
{
    size_t c = l->channels;
    const nsd_pop_t *pop = row_pop(l, d);
    if (c == 0 || pop == NULL)
        return 0;
    scratch_t s = scratch_split(scratch, c);
    const double *em, *ev;
    row_ema(run, pop, c, &s, &em, &ev);
    return row_drift(run, l, d, &s, em, ev, dst);
}

uint64_t nsd_layer_precise_batches(const nsd_run_t *run, const nsd_layer_t *l, long d)
{
    if (d >= 0) {
        const nsd_pop_t *pop = row_pop(l, d);
        return pop != NULL ? pop->precise.num_batches : 0;
    }
    uint64_t n = 0;
    for (size_t k = 0; k < layer_domains(run, l); k++)
        if (l->pops[k] != NULL)
            n += l->pops[k]->precise.num_batches;
    return n;
}

const nsd_history_t *nsd_layer_history(const nsd_layer_t *l, long d)
{
    if (d < 0 && l->history_alias != NSD_HISTORY_OWN) {
        if (l->history_alias == 0)
            return NULL;
        d = (long)l->history_alias - 1;
    }
    const nsd_pop_t *pop = row_pop(l, d);
    return pop != NULL ? pop->history : NULL;
}

/* The row's history, created (and its memory reserved) if it has none.
 * @return NULL when the budget or the allocator has no room. */
static nsd_history_t *history_ensure(nsd_run_t *run, nsd_pop_t *pop, size_t c)
{
    if (pop->history != NULL)
        return pop->history;
    uint64_t bytes = nsd_history_bytes(c, run->ctx->limits.history_steps);
    if (nsd_mem_reserve(run->ctx, bytes) != 0)
        return NULL;
    pop->history = nsd_history_create(c, run->ctx->limits.history_steps);
    if (pop->history == NULL) {
        nsd_mem_release(run->ctx, bytes);
        return NULL;
    }
    atomic_fetch_add(&run->st.memory, bytes);
    return pop->history;
}

/* Row d's entry 'e' of history 'h' ('values': its slot) for the step just
 * applied: its combination, its EMA now, its drift. */
static void record_fill(nsd_run_t *run, nsd_layer_t *l, long d, nsd_history_t *h,
                        nsd_history_entry_t *e, float *values, const double *mean,
                        const double *var)
{
    size_t c = l->channels;
    nsd_pop_t *pop = d < 0 ? l->pooled : l->pops[d];
    scratch_t s = scratch_split(nsd_history_scratch(h), c);
    const double *em, *ev; /* the running arrays themselves unless debiased */
    row_ema(run, pop, c, &s, &em, &ev);
    const double *src[NSD_HIST_VALUES] = {mean, var, em, ev};
    for (size_t k = 0; k < NSD_HIST_VALUES; k++)
        ns_narrow_f32(values + k * c, src[k], c);
    e->has_drift = row_drift(run, l, d, &s, em, ev, &e->drift);
}

/* One row's entry for the step. */
static void record(nsd_run_t *run, nsd_layer_t *l, long d, const nsd_step_t *f, uint64_t count,
                   const double *mean, const double *var)
{
    nsd_pop_t *pop = d < 0 ? l->pooled : l->pops[d];
    nsd_history_t *h = history_ensure(run, pop, l->channels);
    if (h == NULL)
        return;
    float *values;
    nsd_history_entry_t *e = nsd_history_push_slot(h, f->step, count, &values);
    record_fill(run, l, d, h, e, values, mean, var);
}

/* Keep the pooled row reading its only domain's history while the steps
 * allow it; once a step has another domain (or several), give it its own,
 * starting from what it read. @return 1 if the pooled row records for
 * itself. */
static int pooled_needs_own(nsd_run_t *run, nsd_layer_t *l, const nsd_step_t *f)
{
    if (l->history_alias == NSD_HISTORY_OWN)
        return 1;
    const nsd_step_domain_t *only = f->n_domains == 1 ? &f->domains[0] : NULL;
    uint32_t solo = only != NULL && only->index < l->cap_pops && l->pops[only->index] != NULL
                        ? only->index + 1
                        : NSD_HISTORY_OWN;
    if (l->history_alias == 0 && solo != NSD_HISTORY_OWN) {
        l->history_alias = solo;
        return 0;
    }
    if (l->history_alias == solo)
        return 0;
    const nsd_history_t *from = nsd_layer_history(l, -1);
    nsd_history_t *own = history_ensure(run, l->pooled, l->channels);
    if (own != NULL && from != NULL)
        nsd_history_copy(own, from);
    l->history_alias = NSD_HISTORY_OWN;
    return 1;
}

void nsd_layer_history_note(nsd_run_t *run, nsd_layer_t *l, const nsd_step_t *f)
{
    if (run->ctx->limits.history_steps == 0 || f->channels == 0 || l->pooled == NULL)
        return;
    int pooled_own = pooled_needs_own(run, l, f);
    for (size_t i = 0; i < f->n_domains; i++) {
        const nsd_step_domain_t *d = &f->domains[i];
        if (d->index < l->cap_pops && l->pops[d->index] != NULL && d->mean != NULL)
            record(run, l, (long)d->index, f, d->count, d->mean, d->var);
    }
    if (pooled_own)
        record(run, l, -1, f, f->count, f->mean, f->var);
}

ns_step_record_t *nsd_layer_history_open(nsd_run_t *run, nsd_layer_t *l, const nsd_step_t *f,
                                         nsd_history_fused_t *h)
{
    memset(h, 0, sizeof(*h));
    const nsd_step_domain_t *one = f->n_domains == 1 ? &f->domains[0] : NULL;
    size_t c = l->channels;
    if (run->ctx->limits.history_steps == 0 || f->channels == 0 || f->channels != c ||
        l->pooled == NULL || one == NULL || one->index >= l->cap_pops ||
        l->pops[one->index] == NULL || one->mean == NULL) {
        h->later = 1; /* nsd_layer_history_note() after the update, as any step */
        return NULL;
    }
    h->pooled_own = pooled_needs_own(run, l, f);
    nsd_pop_t *pop = l->pops[one->index];
    h->history = history_ensure(run, pop, c);
    if (h->history == NULL)
        return NULL;
    float *v;
    h->entry = nsd_history_push_slot(h->history, f->step, one->count, &v);
    h->values = v;
    h->rec = (ns_step_record_t){.ema = &pop->ema,
                                .debiased = run->st.cfg.ema_debias,
                                .precise = &pop->precise,
                                .eps = NS_DRIFT_EPS,
                                .batch_mean = v + NSD_HIST_BATCH_MEAN * c,
                                .batch_var = v + NSD_HIST_BATCH_VAR * c,
                                .ema_mean = v + NSD_HIST_EMA_MEAN * c,
                                .ema_var = v + NSD_HIST_EMA_VAR * c};
    return &h->rec;
}

void nsd_layer_history_close(nsd_run_t *run, nsd_layer_t *l, const nsd_step_t *f,
                             nsd_history_fused_t *h, int recorded)
{
    if (h->later) {
        nsd_layer_history_note(run, l, f);
        return;
    }
    const nsd_step_domain_t *one = &f->domains[0];
    if (h->entry != NULL && recorded) {
        h->entry->has_drift = h->rec.has_drift;
        if (h->rec.has_drift)
            h->entry->drift = h->rec.drift;
    } else if (h->entry != NULL) { /* the update refused: the entry as any step's */
        record_fill(run, l, (long)one->index, h->history, h->entry, h->values, one->mean, one->var);
    }
    if (h->pooled_own)
        record(run, l, -1, f, f->count, f->mean, f->var);
}
