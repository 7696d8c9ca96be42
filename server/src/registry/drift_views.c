/* drift_views.c - GET /v1/runs/{run}/drift and /history as JSON: the drift
 * of every layer's rows now, worst first, and one row's history (see
 * drift.h, registry.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "drift.h"
#include "registry_internal.h"

/* One row of /drift: layer l, domain d (-1 pooled). */
typedef struct row_s {
    const nsd_layer_t *layer;
    long domain;
    size_t order; /* position before sorting: ties keep it */
    int has_drift;
    ns_drift_t drift;
} row_t;

json_t *nsd_drift_json(const ns_drift_t *d)
{
    return json_pack("{s:f, s:f, s:I, s:f, s:f, s:I}", "mean_avg", d->mean_avg, "mean_max",
                     d->mean_max, "mean_max_channel", (json_int_t)d->mean_max_channel, "var_avg",
                     d->var_avg, "var_max", d->var_max, "var_max_channel",
                     (json_int_t)d->var_max_channel);
}

/* Worst first: larger mean_max, rows without drift last, then layer name,
 * then the order rows were made in (domain order, pooled last). */
static int row_cmp(const void *pa, const void *pb)
{
    const row_t *a = pa, *b = pb;
    if (a->has_drift != b->has_drift)
        return a->has_drift ? -1 : 1;
    if (a->has_drift && a->drift.mean_max != b->drift.mean_max)
        return a->drift.mean_max > b->drift.mean_max ? -1 : 1;
    int c = strcmp(a->layer->name, b->layer->name);
    if (c != 0)
        return c;
    return a->order < b->order ? -1 : a->order > b->order;
}

/* Resolve a domain filter: NULL every row, "*" pooled rows (*d = -1), a
 * name its rows (*d its index). @return 0 or NS_E* (err). */
static int parse_filter(const nsd_run_t *run, const char *domain, long *d, ns_error_detail_t *err)
{
    *d = -2;
    if (domain == NULL)
        return 0;
    if (strcmp(domain, "*") == 0) {
        *d = -1;
        return 0;
    }
    if (!ns_name_valid(domain))
        return ns_error_set(err, NS_EINVAL, "domain", "expected a domain name or *");
    *d = nsd_run_find_domain(&run->st, domain);
    if (*d < 0)
        return ns_error_set(err, NS_ENOTFOUND, "domain", "no domain '%s' in run '%s'", domain,
                            run->name);
    return 0;
}

static size_t max_channels(const nsd_run_state_t *st)
{
    size_t c = 1;
    for (size_t i = 0; i < st->n_layers; i++)
        if (st->layers[i]->channels > c)
            c = st->layers[i]->channels;
    return c;
}

/* Every row the filter keeps (filter -2: each domain, and pooled rows when
 * the run has several), with its drift now, sorted worst first.
 * @return the rows (*n of them), or NULL when out of memory. */
static row_t *collect_rows(const nsd_run_t *run, long filter, size_t *n)
{
    const nsd_run_state_t *st = &run->st;
    size_t cap = st->n_layers * (st->n_domains + 1) + 1;
    row_t *rows = malloc(cap * sizeof(*rows));
    double *scratch = malloc(NSD_HIST_SCRATCH * max_channels(st) * sizeof(double));
    *n = 0;
    if (rows == NULL || scratch == NULL) {
        free(rows);
        free(scratch);
        return NULL;
    }
    int pooled = filter == -1 || (filter == -2 && st->n_domains > 1);
    for (size_t i = 0; i < st->n_layers; i++) {
        const nsd_layer_t *l = st->layers[i];
        if (l->channels == 0)
            continue;
        for (long d = -1; d < (long)st->n_domains; d++) {
            int keep = d < 0 ? pooled : (filter == -2 || filter == d);
            if (!keep || (d >= 0 && ((size_t)d >= l->cap_pops || l->pops[d] == NULL)))
                continue;
            row_t *r = &rows[(*n)++];
            r->layer = l;
            r->domain = d;
            r->order = (size_t)(d < 0 ? st->n_domains : (size_t)d);
            r->has_drift = nsd_layer_drift(run, l, d, scratch, &r->drift) == 1;
        }
    }
    free(scratch);
    qsort(rows, *n, sizeof(*rows), row_cmp);
    return rows;
}

static const char *row_domain(const nsd_run_t *run, long d)
{
    return d < 0 ? "*" : run->st.domains[d];
}

static json_t *row_json(const nsd_run_t *run, const row_t *r)
{
    const nsd_layer_t *l = r->layer;
    const nsd_pop_t *pop = r->domain < 0 ? l->pooled : l->pops[r->domain];
    json_t *step = pop->ema_step >= 0 ? json_integer(pop->ema_step) : json_null();
    return json_pack("{s:s, s:s, s:I, s:o, s:I, s:I, s:o}", "layer", l->name, "domain",
                     row_domain(run, r->domain), "channels", (json_int_t)l->channels, "last_step",
                     step, "num_batches_tracked", (json_int_t)pop->ema.num_batches_tracked,
                     "precise_batches", (json_int_t)nsd_layer_precise_batches(run, l, r->domain),
                     "drift", r->has_drift ? nsd_drift_json(&r->drift) : json_null());
}

static json_t *worst_json(const nsd_run_t *run, const row_t *rows, size_t n)
{
    if (n == 0 || !rows[0].has_drift)
        return json_null();
    return json_pack("{s:s, s:s, s:f}", "layer", rows[0].layer->name, "domain",
                     row_domain(run, rows[0].domain), "mean_max", rows[0].drift.mean_max);
}

json_t *nsd_run_drift_worst_json(const nsd_run_t *run)
{
    size_t n;
    row_t *rows = collect_rows(run, -2, &n);
    json_t *j = rows != NULL ? worst_json(run, rows, n) : NULL;
    free(rows);
    return j;
}

int nsd_run_drift_worst(const nsd_run_t *run, nsd_run_health_t *dst)
{
    size_t n;
    row_t *rows = collect_rows(run, -2, &n);
    if (rows == NULL)
        return NS_ENOMEM;
    dst->has_worst = n > 0 && rows[0].has_drift;
    if (dst->has_worst) {
        snprintf(dst->worst_layer, sizeof(dst->worst_layer), "%s", rows[0].layer->name);
        snprintf(dst->worst_domain, sizeof(dst->worst_domain), "%s",
                 row_domain(run, rows[0].domain));
        dst->worst_mean_max = rows[0].drift.mean_max;
    }
    free(rows);
    return 0;
}

/* A /drift row, tree and text: measured about 2,300 bytes (100k rows: 234
 * MB for a 28 MB answer), so with room to spare: */
#define DRIFT_ROW_BYTES 3072u
#define DRIFT_BASE_BYTES 4096u

uint64_t nsd_run_drift_json_bytes(const nsd_run_t *run)
{
    const nsd_run_state_t *st = &run->st;
    uint64_t rows = 0;
    for (size_t i = 0; i < st->n_layers; i++) {
        const nsd_layer_t *l = st->layers[i];
        for (size_t d = 0; d < st->n_domains && d < l->cap_pops; d++)
            rows += l->pops[d] != NULL;
        rows += l->pooled != NULL && st->n_domains > 1;
    }
    return DRIFT_BASE_BYTES + rows * (DRIFT_ROW_BYTES + 2 * NS_NAME_MAX);
}

static json_t *drift_json(const nsd_run_t *run, long filter)
{
    size_t n;
    row_t *rows = collect_rows(run, filter, &n);
    json_t *layers = json_array();
    int ok = rows != NULL && layers != NULL;
    for (size_t i = 0; ok && i < n; i++)
        ok = json_array_append_new(layers, row_json(run, &rows[i])) == 0;
    json_t *root = ok ? json_pack("{s:s, s:I, s:O, s:o}", "run", run->name, "history_steps",
                                  (json_int_t)run->ctx->limits.history_steps, "layers", layers,
                                  "worst", worst_json(run, rows, n))
                      : NULL;
    json_decref(layers);
    free(rows);
    return root;
}

json_t *nsd_registry_drift_json(nsd_registry_t *reg, const char *name, const char *domain,
                                ns_error_detail_t *err)
{
    int rc;
    nsd_run_t *run = nsd_registry_read_run(reg, name, &rc, err);
    if (run == NULL)
        return NULL;
    long filter;
    json_t *j = NULL;
    if (parse_filter(run, domain, &filter, err) == 0 && (j = drift_json(run, filter)) == NULL)
        ns_error_set(err, NS_ENOMEM, "", "out of memory");
    nsd_registry_end_read(run);
    return j;
}

/* ---------------------------------------------------------------- history */

static json_t *steps_json(const nsd_history_t *h, size_t channels, size_t channel)
{
    json_t *steps = json_array();
    for (size_t i = 0; steps != NULL && h != NULL && i < nsd_history_len(h); i++) {
        const float *v;
        const nsd_history_entry_t *e = nsd_history_at(h, i, &v);
        json_t *s = json_pack("{s:I, s:I, s:f, s:f, s:f, s:f, s:o}", "step", (json_int_t)e->step,
                              "count", (json_int_t)e->count, "batch_mean",
                              (double)v[NSD_HIST_BATCH_MEAN * channels + channel], "batch_var",
                              (double)v[NSD_HIST_BATCH_VAR * channels + channel], "ema_mean",
                              (double)v[NSD_HIST_EMA_MEAN * channels + channel], "ema_var",
                              (double)v[NSD_HIST_EMA_VAR * channels + channel], "drift",
                              e->has_drift ? nsd_drift_json(&e->drift) : json_null());
        if (json_array_append_new(steps, s) != 0) {
            json_decref(steps);
            return NULL;
        }
    }
    return steps;
}

/* The row's PreciseBN of 'channel' now, or null. */
static json_t *population_json(const nsd_run_t *run, const nsd_layer_t *l, long d, size_t channel)
{
    double *scratch = malloc(NSD_HIST_SCRATCH * l->channels * sizeof(double));
    if (scratch == NULL)
        return NULL;
    const double *mean, *var;
    json_t *j = nsd_layer_population(run, l, d, scratch, &mean, &var)
                    ? json_pack("{s:f, s:f, s:I}", "mean", mean[channel], "var", var[channel],
                                "num_batches", (json_int_t)nsd_layer_precise_batches(run, l, d))
                    : json_null();
    free(scratch);
    return j;
}

/* The run locked shared, its layer 'l' locked. */
static json_t *history_json(const nsd_run_t *run, const nsd_layer_t *l, long d, int64_t channel,
                            ns_error_detail_t *err)
{
    const char *layer = l->name;
    size_t c = channel < 0 ? 0 : (size_t)channel;
    if (c >= l->channels) {
        ns_error_set(err, NS_EINVAL, "channel", "layer '%s' has %zu channels, no channel %zu",
                     layer, l->channels, c);
        return NULL;
    }
    int has_state = d < 0 || ((size_t)d < l->cap_pops && l->pops[d] != NULL);
    json_t *steps = steps_json(has_state ? nsd_layer_history(l, d) : NULL, l->channels, c);
    json_t *pop = has_state ? population_json(run, l, d, c) : json_null();
    json_t *j =
        steps != NULL && pop != NULL
            ? json_pack("{s:s, s:s, s:s, s:I, s:I, s:O, s:O}", "run", run->name, "layer", l->name,
                        "domain", row_domain(run, d), "channel", (json_int_t)c, "channels",
                        (json_int_t)l->channels, "steps", steps, "population", pop)
            : NULL;
    json_decref(steps);
    json_decref(pop);
    if (j == NULL)
        ns_error_set(err, NS_ENOMEM, "", "out of memory");
    return j;
}

json_t *nsd_registry_history_json(nsd_registry_t *reg, const char *name, const char *layer,
                                  const char *domain, int64_t channel, ns_error_detail_t *err)
{
    int rc;
    nsd_run_t *run = nsd_registry_lock_run(reg, name, 0, &rc, err);
    if (run == NULL)
        return NULL;
    long d;
    json_t *j = NULL;
    nsd_layer_t *l = NULL;
    if (parse_filter(run, domain != NULL ? domain : "*", &d, err) == 0 &&
        (l = nsd_run_find_layer(&run->st, layer)) == NULL)
        ns_error_set(err, NS_ENOTFOUND, "layer", "no layer '%s' in run '%s'", layer, run->name);
    if (l != NULL) {
        /* A row's history is recorded under its layer's lock. */
        nsd_layer_lock(l);
        j = history_json(run, l, d, channel, err);
        nsd_layer_unlock(l);
    }
    nsd_registry_unlock_run(run);
    return j;
}
