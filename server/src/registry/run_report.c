/* run_report.c - one report applied to a run in three phases: check every
 * layer, allocate what it needs, commit; then each layer finalizes and
 * applies what completed (see the DESIGN in run.h). Under run->lock
 * shared the report's layers are locked in ascending name order for the
 * three phases, so a report is all or nothing, and unlocked once every one
 * has finalized and applied. */
#include "run.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/array.h"

/* Everything one layer of a report needs, allocated before anything changes. */
typedef struct plan_s {
    const ns_layer_report_t *lr;
    nsd_layer_t *layer; /* existing layer, or new_layer */
    int is_new_layer;
    size_t insert_pos;      /* for a new layer: position among existing ones */
    nsd_pending_t *pending; /* existing pending step, or new */
    int is_new_pending;
    int pending_is_spare; /* the new pending step is the layer's spare (taken at commit) */
    int created_step;     /* the commit added this pending step to the layer */
    size_t channels;      /* the layer's channel count after this report */
    int fixes_channels;   /* this report fixes the layer's channel count */
    nsd_pop_t *new_pooled;
    nsd_pop_t *new_pop; /* this domain's state on this layer */
    float *arrays;      /* mean then var, copied from a report that borrowed them */
    int spare_arrays;   /* ... into a block the layer kept (taken at commit) */
    uint64_t bytes;
} plan_t;

/* A report of up to this many layers plans on the stack (8 KiB): no
 * allocation per report. */
#define PLANS_ON_STACK (8192 / sizeof(plan_t))

static void plan_free(plan_t *pl, size_t n, plan_t *on_stack)
{
    for (size_t i = 0; i < n; i++) {
        if (pl[i].is_new_layer)
            nsd_layer_free(pl[i].layer);
        if (pl[i].is_new_pending && !pl[i].pending_is_spare)
            nsd_pending_free(pl[i].pending);
        nsd_pop_free(pl[i].new_pooled);
        nsd_pop_free(pl[i].new_pop);
        free(pl[i].arrays);
    }
    if (pl != on_stack)
        free(pl);
}

/* The first value of a layer's report beyond the bounds that keep every
 * statistic derived from it finite (NS_MEAN_ABS_MAX, NS_VAR_MAX; see
 * proto.h). @return 0 or NS_EVALUE naming the element. */
static int check_values(const ns_layer_report_t *lr, ns_error_detail_t *err)
{
    char field[NS_NAME_MAX + 48];
    /* The bounds are powers of two, so float comparisons decide as double ones. */
    size_t c =
        ns_find_outside(lr->mean, lr->channels, -(float)NS_MEAN_ABS_MAX, (float)NS_MEAN_ABS_MAX);
    if (lr->mean != NULL && c < lr->channels) {
        snprintf(field, sizeof(field), "layers.%s." NS_FIELD_MEAN "[%zu]", lr->name, c);
        return ns_error_set(err, NS_EVALUE, field, "%g is beyond +-2^60", (double)lr->mean[c]);
    }
    c = ns_find_outside(lr->var, lr->channels, -INFINITY, (float)NS_VAR_MAX);
    if (lr->var != NULL && c < lr->channels) {
        snprintf(field, sizeof(field), "layers.%s." NS_FIELD_VAR "[%zu]", lr->name, c);
        return ns_error_set(err, NS_EVALUE, field, "%g is beyond 2^120", (double)lr->var[c]);
    }
    return 0;
}

/* "layers.<name>", the field of a layer's error, into buf. */
static const char *layer_field(char *buf, size_t cap, const char *name)
{
    snprintf(buf, cap, "layers.%s", name);
    return buf;
}

/* Samples the layer's PreciseBN accumulators hold (current generation of
 * every domain, what the pooled view merges) plus those of accepted arrivals
 * not applied yet (l->precise_due): what it would hold once they are. */
static uint64_t precise_committed(const nsd_layer_t *l)
{
    uint64_t total = l->precise_due;
    for (size_t d = 0; d < l->cap_pops; d++)
        if (l->pops[d] != NULL)
            total += l->pops[d]->precise.n;
    return total;
}

/* The step against those the layer holds: pending p (NULL: none yet) and
 * finalized. @return 0, or NS_EDUPLICATE, NS_ESTALE, NS_ECONFLICT or NS_EBUSY. */
static int check_sequence(const nsd_run_t *run, const ns_report_t *rep, const nsd_layer_t *l,
                          const nsd_pending_t *p, ns_error_detail_t *err)
{
    char buf[NS_NAME_MAX + 16];
    int64_t last = rep->worker < l->n_workers ? l->worker_last[rep->worker] : -1;
    if (p != NULL && p->arrivals[rep->worker].present)
        return ns_error_set(err, NS_EDUPLICATE, layer_field(buf, sizeof(buf), l->name),
                            "worker %u already reported step %llu", rep->worker,
                            (unsigned long long)rep->step);
    if (last >= 0 && (int64_t)rep->step <= last)
        return ns_error_set(err, NS_ESTALE, layer_field(buf, sizeof(buf), l->name),
                            "worker %u already reported step %lld; steps must increase",
                            rep->worker, (long long)last);
    if (p == NULL && (int64_t)rep->step <= l->max_closed)
        return ns_error_set(err, NS_ESTALE, layer_field(buf, sizeof(buf), l->name),
                            "step %llu is at or below finalized step %lld",
                            (unsigned long long)rep->step, (long long)l->max_closed);
    if (p != NULL && p->update != rep->update)
        return ns_error_set(err, NS_ECONFLICT, "update",
                            "differs from the earlier reports of step %llu",
                            (unsigned long long)rep->step);
    uint32_t max_pending = run->ctx->limits.max_pending_steps;
    if (p == NULL && l->n_pending >= max_pending)
        return ns_error_set(err, NS_EBUSY, layer_field(buf, sizeof(buf), l->name),
                            "%u steps already pending", max_pending);
    return 0;
}

/* Phase 1: the checks of one layer; nothing changes. */
static int check_layer(const nsd_run_t *run, const ns_report_t *rep, plan_t *pl,
                       ns_error_detail_t *err)
{
    const ns_layer_report_t *lr = pl->lr;
    const nsd_run_state_t *st = &run->st;
    nsd_layer_t *l = pl->layer; /* found (and locked in shared mode) by the caller */
    char buf[NS_NAME_MAX + 16];
    /* Formatted only for an error (most reports have none). */
    if (!ns_name_valid(lr->name))
        return ns_error_set(err, NS_EINVAL, layer_field(buf, sizeof(buf), lr->name),
                            "invalid layer name");
    if (lr->count > 0 && (lr->channels == 0 || lr->mean == NULL || lr->var == NULL))
        return ns_error_set(err, NS_EINVAL, layer_field(buf, sizeof(buf), lr->name),
                            "count > 0 needs mean and var");
    pl->channels = l ? l->channels : 0;
    if (lr->channels > 0) {
        if (pl->channels != 0 && lr->channels != pl->channels)
            return ns_error_set(
                err, NS_ECHANNELS, layer_field(buf, sizeof(buf), lr->name),
                "expected %zu channels (fixed by the layer's first report), got %zu", pl->channels,
                lr->channels);
        if (pl->channels == 0) {
            pl->channels = lr->channels;
            pl->fixes_channels = 1;
        }
    }
    nsd_pending_t *p = NULL;
    if (l != NULL) {
        int found;
        size_t i = nsd_layer_pending_pos(l, rep->step, &found);
        if (found)
            p = l->pending[i];
    }
    uint32_t ws = p ? p->world_size : st->cfg.world_size;
    if (rep->worker >= ws)
        return ns_error_set(err, NS_EWORKER, "worker",
                            "worker %u outside world_size %u of step %llu", rep->worker, ws,
                            (unsigned long long)rep->step);
    if (l != NULL) {
        int rc = check_sequence(run, rep, l, p, err);
        if (rc != 0)
            return rc;
    }
    /* Bounds that keep every sum and statistic finite: a step's total fits
     * (count), a served value is never infinite, and the accumulators this
     * arrival will reach stay within int64 (an accepted step always
     * finalizes and applies). */
    if (lr->count > NS_COUNT_MAX) {
        snprintf(buf, sizeof(buf), "layers.%s." NS_FIELD_COUNT, lr->name);
        return ns_error_set(err, NS_EVALUE, buf, "%llu is above 2^32",
                            (unsigned long long)lr->count);
    }
    int rc = check_values(lr, err);
    if (rc != 0)
        return rc;
    if (l != NULL && (rep->update & NS_UPDATE_PRECISE) && lr->count > 0) {
        uint64_t held = precise_committed(l);
        if (lr->count > (uint64_t)INT64_MAX - held) {
            snprintf(buf, sizeof(buf), "layers.%s." NS_FIELD_COUNT, lr->name);
            return ns_error_set(err, NS_EVALUE, buf,
                                "the layer's PreciseBN accumulators (%llu samples with those "
                                "pending) would exceed 2^63-1; reset them",
                                (unsigned long long)held);
        }
    }
    pl->pending = p;
    pl->is_new_pending = p == NULL;
    return 0;
}

/* Memory of one arrival's arrays: float32, and the doubles of an F64 report. */
static uint64_t arrival_bytes(const ns_layer_report_t *lr)
{
    return 2 * lr->channels * (sizeof(float) + (lr->mean64 != NULL ? sizeof(double) : 0));
}

/* 1 if the layer's kept pending step can be the report's new one. */
static int spare_pending_fits(const nsd_run_t *run, const nsd_layer_t *l)
{
    return l != NULL && l->spare_pending != NULL &&
           l->spare_pending->world_size == run->st.cfg.world_size;
}

/* Phase 2: reserve memory and allocate what the layer needs. */
static int prepare_layer(nsd_run_t *run, const ns_report_t *rep, long dom, plan_t *pl,
                         uint64_t now_ms, nsd_waiter_t *waiter)
{
    nsd_run_state_t *st = &run->st;
    const ns_layer_report_t *lr = pl->lr;
    size_t c = pl->channels;
    if (pl->layer == NULL) {
        pl->layer = nsd_layer_create(lr->name);
        if (pl->layer == NULL)
            return NS_ENOMEM;
        pl->is_new_layer = 1;
        pl->bytes += sizeof(nsd_layer_t);
    }
    nsd_layer_t *l = pl->layer;
    if (pl->fixes_channels) {
        pl->new_pooled = nsd_pop_create(c, 0);
        if (pl->new_pooled == NULL)
            return NS_ENOMEM;
        pl->bytes += nsd_pop_bytes(c);
    }
    /* This domain's population state, once the layer has channels. */
    size_t d = dom >= 0 ? (size_t)dom : st->n_domains;
    if (c > 0 && (d >= l->cap_pops || l->pops[d] == NULL)) {
        uint64_t gen = dom >= 0 ? st->domain_gen[d] : st->precise_generation;
        pl->new_pop = nsd_pop_create(c, gen);
        if (pl->new_pop == NULL)
            return NS_ENOMEM;
        pl->bytes += nsd_pop_bytes(c);
    }
    if (pl->is_new_pending && spare_pending_fits(run, l)) {
        /* Counted already; left with the layer until the commit. */
        pl->pending = l->spare_pending;
        pl->pending_is_spare = 1;
        nsd_pending_reuse(pl->pending, rep->step, rep->update, now_ms);
    } else if (pl->is_new_pending) {
        pl->pending = nsd_pending_create(rep->step, st->cfg.world_size, rep->update, now_ms);
        if (pl->pending == NULL)
            return NS_ENOMEM;
        pl->bytes += pl->pending->bytes;
    }
    /* The arrays themselves are taken from the report at commit, or copied
     * there when they lie in the request's body. */
    if (lr->borrowed && l->n_spares > 0)
        pl->spare_arrays = 1; /* counted already, and the layer stays locked */
    else if (lr->borrowed && (pl->arrays = malloc(2 * lr->channels * sizeof(float))) == NULL)
        return NS_ENOMEM;
    else
        pl->bytes += arrival_bytes(lr);
    /* Capacity only (state-neutral). */
    if (nsd_array_grow((void **)&l->pops, &l->cap_pops, st->n_domains + 1, sizeof(*l->pops)) ||
        nsd_layer_grow_workers(l, rep->worker + 1) ||
        nsd_array_grow((void **)&l->pending, &l->cap_pending, l->n_pending + 1,
                       sizeof(*l->pending)) ||
        nsd_array_grow((void **)&l->ready, &l->cap_ready, l->n_ready + 1, sizeof(*l->ready)) ||
        (waiter != NULL && nsd_pending_reserve_waiter(pl->pending)))
        return NS_ENOMEM;
    return 0;
}

/* Phase 3: commit one layer (cannot fail). */
static void commit_layer(ns_report_t *rep, uint32_t dom, plan_t *pl, nsd_waiter_t *waiter,
                         size_t index, nsd_outbox_t *box)
{
    nsd_layer_t *l = pl->layer;
    if (pl->fixes_channels) {
        l->channels = pl->channels;
        l->pooled = pl->new_pooled;
        pl->new_pooled = NULL;
    }
    if (pl->new_pop != NULL) {
        l->pops[dom] = pl->new_pop;
        pl->new_pop = NULL;
    }
    nsd_pending_t *p = pl->pending;
    if (pl->is_new_pending) {
        int found;
        if (pl->pending_is_spare)
            l->spare_pending = NULL; /* the layer's no longer */
        size_t pos = nsd_layer_pending_pos(l, rep->step, &found);
        memmove(l->pending + pos + 1, l->pending + pos, (l->n_pending - pos) * sizeof(*l->pending));
        l->pending[pos] = p;
        l->n_pending++;
        pl->is_new_pending = 0;
        pl->created_step = 1;
        box->pending_delta++;
    }
    /* Take the report's arrays (no copy); the report no longer owns them. */
    nsd_arrival_t *a = &p->arrivals[rep->worker];
    ns_layer_report_t *lr = &rep->layers[index];
    a->present = 1;
    a->domain = dom;
    a->n = lr->count;
    if (p->update & NS_UPDATE_PRECISE)
        l->precise_due += lr->count;
    if (pl->spare_arrays)
        pl->arrays = nsd_layer_take_spare(l);
    a->joint = pl->arrays != NULL;
    if (a->joint) {
        memcpy(pl->arrays, lr->mean, lr->channels * sizeof(float));
        memcpy(pl->arrays + lr->channels, lr->var, lr->channels * sizeof(float));
        a->mean = pl->arrays;
        a->var = pl->arrays + lr->channels;
        pl->arrays = NULL;
    } else {
        a->mean = lr->mean;
        a->var = lr->var;
    }
    a->mean64 = lr->mean64;
    a->var64 = lr->var64;
    p->bytes += arrival_bytes(lr);
    if (!lr->borrowed)
        lr->mean = lr->var = NULL;
    lr->mean64 = lr->var64 = NULL;
    p->arrived++;
    l->worker_last[rep->worker] = (int64_t)rep->step;
    if ((int64_t)rep->step > l->max_seen)
        l->max_seen = (int64_t)rep->step;
    if (waiter != NULL) {
        p->waiters[p->n_waiters].waiter = waiter;
        p->waiters[p->n_waiters].index = index;
        p->n_waiters++;
    }
}

/* What prepare_layer() will count for the layer, known before it allocates. */
static uint64_t plan_bytes(const nsd_run_t *run, const ns_report_t *rep, long dom, const plan_t *pl)
{
    const nsd_layer_t *l = pl->layer;
    size_t c = pl->channels, d = dom >= 0 ? (size_t)dom : run->st.n_domains;
    int spare = pl->lr->borrowed && l != NULL && l->n_spares > 0;
    uint64_t bytes = spare ? 0 : 2 * pl->lr->channels * sizeof(float);
    if (l == NULL)
        bytes += sizeof(nsd_layer_t);
    if (pl->fixes_channels)
        bytes += nsd_pop_bytes(c);
    if (c > 0 && (l == NULL || d >= l->cap_pops || l->pops[d] == NULL))
        bytes += nsd_pop_bytes(c);
    if (pl->is_new_pending && !spare_pending_fits(run, l))
        bytes += nsd_pending_bytes(run->st.cfg.world_size);
    (void)rep;
    return bytes;
}

/* Phase 2 for the whole report: the memory budget first (so a report that
 * does not fit allocates nothing), then every layer's allocations, room for
 * a new domain and the new layers. @return 0 or NS_E* (err). */
static int prepare_report(nsd_run_t *run, const ns_report_t *rep, long dom, plan_t *pl,
                          uint64_t now_ms, nsd_waiter_t *waiter, uint64_t *bytes,
                          ns_error_detail_t *err)
{
    nsd_run_state_t *st = &run->st;
    size_t new_layers = 0;
    *bytes = 0;
    for (size_t i = 0; i < rep->n_layers; i++)
        *bytes += plan_bytes(run, rep, dom, &pl[i]);
    int rc = nsd_mem_reserve(run->ctx, *bytes);
    if (rc != 0)
        return ns_error_set(err, rc, "", "memory budget of %llu bytes exceeded",
                            (unsigned long long)run->ctx->limits.max_memory);
    uint64_t counted = 0;
    for (size_t i = 0; i < rep->n_layers && rc == 0; i++) {
        rc = prepare_layer(run, rep, dom, &pl[i], now_ms, waiter);
        counted += pl[i].bytes;
        new_layers += pl[i].is_new_layer;
    }
    if (rc == 0 && dom < 0)
        rc = nsd_run_reserve_domain(st);
    if (rc == 0 && new_layers > 0)
        rc = nsd_array_grow((void **)&st->layers, &st->cap_layers, st->n_layers + new_layers,
                            sizeof(*st->layers));
    if (rc != 0) {
        nsd_mem_release(run->ctx, *bytes);
        return ns_error_set(err, rc, "", "out of memory");
    }
    /* plan_bytes() mirrors prepare_layer(): keep what was counted exact. */
    if (counted > *bytes && nsd_mem_reserve(run->ctx, counted - *bytes) != 0) {
        nsd_mem_release(run->ctx, *bytes);
        return ns_error_set(err, NS_EMEMORY, "", "memory budget of %llu bytes exceeded",
                            (unsigned long long)run->ctx->limits.max_memory);
    }
    if (counted < *bytes)
        nsd_mem_release(run->ctx, *bytes - counted);
    *bytes = counted;
    return 0;
}

/* Phase 3 for the whole report (cannot fail): the new run and domain
 * logged, the new layers, the waiter, every layer's arrival. @return the
 * domain's index. */
static uint32_t commit_report(nsd_run_t *run, ns_report_t *rep, long dom, plan_t *pl,
                              uint64_t bytes, unsigned mode, nsd_waiter_t *waiter,
                              nsd_outbox_t *box)
{
    nsd_run_state_t *st = &run->st;
    atomic_fetch_add(&st->memory, bytes);
    if (mode & NSD_REPORT_CREATED)
        nsd_persist_run_created(run);
    if (dom < 0) {
        dom = nsd_run_append_domain(st, rep->domain);
        nsd_persist_domain(run, (size_t)dom);
    }
    for (size_t i = 0; i < rep->n_layers; i++) {
        if (!pl[i].is_new_layer)
            continue;
        int found;
        size_t pos = nsd_run_layer_pos(st, pl[i].layer->name, &found);
        memmove(st->layers + pos + 1, st->layers + pos, (st->n_layers - pos) * sizeof(*st->layers));
        st->layers[pos] = pl[i].layer;
        st->n_layers++;
        pl[i].is_new_layer = 0;
    }
    if (waiter != NULL) {
        waiter->remaining = rep->n_layers;
        waiter->domain = (uint32_t)dom;
        waiter->scope = rep->scope;
        waiter->res->step = rep->step;
        atomic_fetch_add(&run->ctx->sync_waiters, 1);
    }
    for (size_t i = 0; i < rep->n_layers; i++)
        commit_layer(rep, (uint32_t)dom, &pl[i], waiter, i, box);
    atomic_fetch_add(&run->ctx->reports_accepted, 1);
    return (uint32_t)dom;
}

/* The run's layers of the report into the plan, NULL for a new one.
 * @return 1 if the report can be applied under run->lock shared: its
 * domain and every layer exist, and its layers are in ascending name order
 * (as the decoders sort them), the order layers are locked in. */
static int find_layers(const nsd_run_t *run, const ns_report_t *rep, long dom, plan_t *pl)
{
    int shareable = dom >= 0;
    for (size_t i = 0; i < rep->n_layers; i++) {
        pl[i].lr = &rep->layers[i];
        pl[i].layer = nsd_run_find_layer(&run->st, rep->layers[i].name);
        if (pl[i].layer == NULL ||
            (i > 0 && strcmp(rep->layers[i - 1].name, rep->layers[i].name) >= 0))
            shareable = 0;
    }
    return shareable;
}

/* After the commit, layer by layer: finalize a step the report completed
 * and apply what is in order; then (shared mode) unlock the layers, the
 * last first. Held to the end, not released one by one: a report waiting
 * for the same layers (another worker of the step) then waits once, for
 * the first, instead of chasing this one through every layer (a sleep and
 * a wake-up per layer); and once the first is free the others are too. */
static void finish_layers(nsd_run_t *run, const ns_report_t *rep, plan_t *pl, int shared,
                          nsd_outbox_t *box)
{
    for (size_t i = 0; i < rep->n_layers; i++) {
        nsd_layer_t *l = pl[i].layer;
        int found;
        size_t pos = nsd_layer_pending_pos(l, rep->step, &found);
        if (found && l->pending[pos]->arrived == l->pending[pos]->world_size)
            nsd_run_close_pending(run, l, pos, 0, box);
        else if (found && pl[i].created_step)
            /* A step that outlives its first report gets a deadline (one
             * that completed at once never wakes the coordinator). */
            nsd_run_note_deadline(run, l->pending[pos]->created_ms + run->st.cfg.sync_timeout_ms,
                                  box);
        nsd_run_apply_ready(run, l);
    }
    for (size_t i = rep->n_layers; shared && i > 0; i--)
        nsd_layer_unlock(pl[i - 1].layer);
}

int nsd_run_report(nsd_run_t *run, ns_report_t *rep, uint64_t now_ms, unsigned mode,
                   nsd_waiter_t *waiter, nsd_outbox_t *box, ns_error_detail_t *err)
{
    int shared = (mode & NSD_REPORT_SHARED) != 0;
    if (rep->n_layers == 0)
        return ns_error_set(err, NS_EINVAL, "layers", "no layers");
    if (rep->step > (uint64_t)INT64_MAX)
        return ns_error_set(err, NS_EINVAL, "step", "must be < 2^63");
    if (!ns_name_valid(rep->domain))
        return ns_error_set(err, NS_EINVAL, "domain", "invalid domain name");
    long dom = nsd_run_find_domain(&run->st, rep->domain);

    plan_t local[PLANS_ON_STACK];
    plan_t *pl = rep->n_layers <= PLANS_ON_STACK ? local : malloc(rep->n_layers * sizeof(*pl));
    if (pl == NULL)
        return ns_error_set(err, NS_ENOMEM, "", "out of memory");
    memset(pl, 0, rep->n_layers * sizeof(*pl));
    if (!find_layers(run, rep, dom, pl) && shared) {
        if (pl != local)
            free(pl);
        return NSD_REPORT_NEEDS_EXCLUSIVE;
    }
    for (size_t i = 0; shared && i < rep->n_layers; i++)
        nsd_layer_lock(pl[i].layer);
    int rc = 0;
    for (size_t i = 0; i < rep->n_layers && rc == 0; i++)
        rc = check_layer(run, rep, &pl[i], err);
    uint64_t bytes = 0;
    if (rc == 0)
        rc = prepare_report(run, rep, dom, pl, now_ms, waiter, &bytes, err);
    if (rc != 0) {
        for (size_t i = rep->n_layers; shared && i > 0; i--)
            nsd_layer_unlock(pl[i - 1].layer);
        plan_free(pl, rep->n_layers, local);
        return rc;
    }
    commit_report(run, rep, dom, pl, bytes, mode, waiter, box);
    atomic_store(&run->last_active_ms, now_ms);
    finish_layers(run, rep, pl, shared, box);
    nsd_run_settle(run, box);
    plan_free(pl, rep->n_layers, local);
    return 0;
}
