/* run_replay.c - recovery: logged finalized steps applied to a run by the
 * live path's own code, and the steps a snapshot must carry (run.h). */
#include "run.h"

#include <stdlib.h>
#include <string.h>

#include "base/array.h"

/* Memory a replayed step adds: accounted like a report's, without the
 * budget check (what was held before the restart is held again). */
static void replay_account(nsd_run_t *run, uint64_t bytes)
{
    atomic_fetch_add(&run->st.memory, bytes);
    atomic_fetch_add(&run->ctx->memory, bytes);
}

/* The checks of a logged step; nothing changes. */
static int replay_check(const nsd_run_state_t *st, const nsd_step_t *rec, ns_error_detail_t *err)
{
    size_t c = rec->channels;
    if (!ns_name_valid(rec->layer))
        return ns_error_set(err, NS_EINVAL, "layer", "invalid layer name");
    if (rec->step > (uint64_t)INT64_MAX)
        return ns_error_set(err, NS_EINVAL, "step", "must be < 2^63");
    if (c > 0 && (rec->mean == NULL || rec->var == NULL))
        return ns_error_set(err, NS_EINVAL, "mean", "channels > 0 needs arrays");
    for (size_t i = 0; i < rec->n_domains; i++)
        if (!ns_name_valid(rec->domains[i].name) ||
            (c > 0 && (rec->domains[i].mean == NULL || rec->domains[i].var == NULL)))
            return ns_error_set(err, NS_EINVAL, "domains", "invalid domain result");
    const nsd_layer_t *l = nsd_run_find_layer(st, rec->layer);
    if (l != NULL && c > 0 && l->channels != 0 && l->channels != c)
        return ns_error_set(err, NS_EINVAL, "channels", "expected %zu channels, got %zu",
                            l->channels, c);
    return 0;
}

/* The layer of a logged step, created (and its channel count fixed) as the
 * live path would have. @return 0 and *dst, or NS_ENOMEM. */
static int replay_layer(nsd_run_t *run, const char *name, size_t c, nsd_layer_t **dst)
{
    nsd_run_state_t *st = &run->st;
    int found;
    size_t pos = nsd_run_layer_pos(st, name, &found);
    nsd_layer_t *l = found ? st->layers[pos] : NULL;
    if (l == NULL) {
        if (nsd_array_grow((void **)&st->layers, &st->cap_layers, st->n_layers + 1,
                           sizeof(*st->layers)) ||
            (l = nsd_layer_create(name)) == NULL)
            return NS_ENOMEM;
        memmove(st->layers + pos + 1, st->layers + pos, (st->n_layers - pos) * sizeof(*st->layers));
        st->layers[pos] = l;
        st->n_layers++;
        replay_account(run, sizeof(nsd_layer_t));
    }
    *dst = l;
    if (c == 0 || l->channels != 0)
        return 0;
    nsd_pop_t *pooled = nsd_pop_create(c, 0);
    if (pooled == NULL)
        return NS_ENOMEM;
    l->channels = c;
    l->pooled = pooled;
    replay_account(run, nsd_pop_bytes(c));
    return 0;
}

/* The live form of a logged step: domains resolved to the run's indexes
 * (added if a report added them before the step finalized), in index
 * order, with their population state. @return 0 and *dst, or NS_ENOMEM. */
static int replay_live_step(nsd_run_t *run, nsd_layer_t *l, const nsd_step_t *rec, nsd_step_t **dst)
{
    nsd_run_state_t *st = &run->st;
    size_t c = rec->channels;
    nsd_step_t *f = nsd_step_create(rec->layer, rec->step, c);
    if (f == NULL)
        return NS_ENOMEM;
    f->update = rec->update;
    f->complete = rec->complete;
    f->workers = rec->workers;
    f->first_pending = rec->first_pending;
    f->count = rec->count;
    if (c > 0) {
        memcpy(f->mean, rec->mean, c * sizeof(double));
        memcpy(f->var, rec->var, c * sizeof(double));
    }
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < rec->n_domains; i++) {
        const nsd_step_domain_t *d = &rec->domains[i];
        long k = nsd_run_add_domain(run, d->name);
        const double *mean = nsd_step_shares_pooled(rec, d) ? f->mean : d->mean;
        if (k < 0 ||
            nsd_array_grow((void **)&l->pops, &l->cap_pops, st->n_domains, sizeof(*l->pops)) ||
            nsd_step_add_domain(f, (uint32_t)k, d->name, d->count, mean, d->var) == NULL) {
            rc = NS_ENOMEM;
        } else if (c > 0 && l->pops[k] == NULL) {
            l->pops[k] = nsd_pop_create(c, st->domain_gen[k]);
            if (l->pops[k] == NULL)
                rc = NS_ENOMEM;
            else
                replay_account(run, nsd_pop_bytes(c));
        }
    }
    if (rc == 0)
        rc = nsd_array_grow((void **)&l->ready, &l->cap_ready, l->n_ready + 1, sizeof(*l->ready));
    if (rc != 0) {
        nsd_step_free(f);
        return rc;
    }
    *dst = f;
    return 0;
}

int nsd_run_replay_step(nsd_run_t *run, const nsd_step_t *rec, ns_error_detail_t *err)
{
    int rc = replay_check(&run->st, rec, err);
    if (rc != 0)
        return rc;
    nsd_layer_t *l = NULL;
    nsd_step_t *f = NULL;
    rc = replay_layer(run, rec->layer, rec->channels, &l);
    if (rc == 0)
        rc = replay_live_step(run, l, rec, &f);
    if (rc != 0)
        return ns_error_set(err, rc, "", "out of memory");
    if ((int64_t)f->step > l->max_closed)
        l->max_closed = (int64_t)f->step;
    if ((int64_t)f->step > l->max_seen)
        l->max_seen = (int64_t)f->step;
    nsd_layer_count_steps(run, (int64_t)f->bytes);
    nsd_layer_ready_insert(run, l, f);
    nsd_run_apply_ready_below(run, l,
                              rec->first_pending >= 0 ? (uint64_t)rec->first_pending : UINT64_MAX);
    return 0;
}

size_t nsd_run_apply_held(nsd_run_t *run)
{
    size_t n = 0;
    for (size_t i = 0; i < run->st.n_layers; i++)
        n += nsd_run_apply_ready_below(run, run->st.layers[i], UINT64_MAX);
    return n;
}

void nsd_run_persist_ready(nsd_run_t *run)
{
    for (size_t i = 0; i < run->st.n_layers; i++) {
        const nsd_layer_t *l = run->st.layers[i];
        for (size_t k = 0; k < l->n_ready; k++)
            nsd_layer_persist_step(run, l, l->ready[k]);
    }
}

void nsd_run_held_steps(nsd_run_t *run, nsd_queue_t *held)
{
    for (size_t i = 0; i < run->st.n_layers; i++) {
        const nsd_layer_t *l = run->st.layers[i];
        for (size_t k = 0; k < l->n_ready; k++) {
            nsd_step_t *f = l->ready[k];
            f->first_pending = l->n_pending > 0 ? (int64_t)l->pending[0]->step : -1;
            nsd_queue_push(held, &f->link);
        }
    }
}
