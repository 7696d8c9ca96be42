/* drift_views.c - GET /v1/runs/{run}/drift and /history as JSON: the drift
 * of every layer's rows now, worst first, and one row's history (see
 * drift.h, registry.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "drift.h"
#include "json_text.h"
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

/* The most a /drift row's text takes besides its layer's and domain's
 * names: the keys, four integers, two channel numbers, four reals. */
#define DRIFT_ROW_TEXT 448u
/* The answer's text besides its rows: run name, keys, the worst row. */
#define DRIFT_HEAD_TEXT (512u + 3u * NS_NAME_MAX)

static uint64_t row_text_bound(const nsd_run_t *run, const nsd_layer_t *l, long d)
{
    return DRIFT_ROW_TEXT + strlen(l->name) + strlen(row_domain(run, d));
}

uint64_t nsd_run_drift_text_bytes(const nsd_run_t *run)
{
    const nsd_run_state_t *st = &run->st;
    uint64_t bytes = DRIFT_HEAD_TEXT + NSD_HIST_SCRATCH * max_channels(st) * sizeof(double);
    for (size_t i = 0; i < st->n_layers; i++) {
        const nsd_layer_t *l = st->layers[i];
        for (long d = -1; d < (long)st->n_domains; d++)
            if (d < 0 ? l->pooled != NULL && st->n_domains > 1
                      : (size_t)d < l->cap_pops && l->pops[d] != NULL)
                bytes += sizeof(row_t) + row_text_bound(run, l, d);
    }
    return bytes;
}

static int drift_text(ns_buf_t *dst, const ns_drift_t *d)
{
    int rc = ns_buf_printf(dst, "{\"mean_avg\":");
    rc = rc ? rc : nsd_json_real(dst, d->mean_avg);
    rc = rc ? rc : ns_buf_printf(dst, ",\"mean_max\":");
    rc = rc ? rc : nsd_json_real(dst, d->mean_max);
    rc =
        rc ? rc : ns_buf_printf(dst, ",\"mean_max_channel\":%zu,\"var_avg\":", d->mean_max_channel);
    rc = rc ? rc : nsd_json_real(dst, d->var_avg);
    rc = rc ? rc : ns_buf_printf(dst, ",\"var_max\":");
    rc = rc ? rc : nsd_json_real(dst, d->var_max);
    return rc ? rc : ns_buf_printf(dst, ",\"var_max_channel\":%zu}", d->var_max_channel);
}

static int row_text(ns_buf_t *dst, const nsd_run_t *run, const row_t *r)
{
    const nsd_layer_t *l = r->layer;
    const nsd_pop_t *pop = r->domain < 0 ? l->pooled : l->pops[r->domain];
    char step[24] = "null";
    if (pop->ema_step >= 0)
        snprintf(step, sizeof(step), "%lld", (long long)pop->ema_step);
    int rc = ns_buf_printf(dst,
                           "{\"layer\":\"%s\",\"domain\":\"%s\",\"channels\":%zu,\"last_step\":%s,"
                           "\"num_batches_tracked\":%llu,\"precise_batches\":%llu,\"drift\":",
                           l->name, row_domain(run, r->domain), l->channels, step,
                           (unsigned long long)pop->ema.num_batches_tracked,
                           (unsigned long long)nsd_layer_precise_batches(run, l, r->domain));
    if (rc == 0)
        rc = r->has_drift ? drift_text(dst, &r->drift) : ns_buf_printf(dst, "null");
    return rc ? rc : ns_buf_printf(dst, "}");
}

/* The answer of the rows 'filter' keeps, as text: written without a tree
 * (a tree took 8 times the text), into a buffer sized once. */
static int drift_write(const nsd_run_t *run, long filter, ns_buf_t *dst)
{
    size_t n;
    row_t *rows = collect_rows(run, filter, &n);
    if (rows == NULL)
        return NS_ENOMEM;
    uint64_t bound = DRIFT_HEAD_TEXT;
    for (size_t i = 0; i < n; i++)
        bound += row_text_bound(run, rows[i].layer, rows[i].domain);
    int rc = ns_buf_reserve(dst, bound);
    rc = rc ? rc
            : ns_buf_printf(dst, "{\"run\":\"%s\",\"history_steps\":%u,\"layers\":[", run->name,
                            (unsigned)run->ctx->limits.history_steps);
    for (size_t i = 0; rc == 0 && i < n; i++) {
        rc = i ? ns_buf_printf(dst, ",") : 0;
        rc = rc ? rc : row_text(dst, run, &rows[i]);
    }
    rc = rc ? rc : ns_buf_printf(dst, "],\"worst\":");
    if (rc == 0 && (n == 0 || !rows[0].has_drift))
        rc = ns_buf_printf(dst, "null}");
    else if (rc == 0) {
        rc = ns_buf_printf(dst,
                           "{\"layer\":\"%s\",\"domain\":\"%s\",\"mean_max\":", rows[0].layer->name,
                           row_domain(run, rows[0].domain));
        rc = rc ? rc : nsd_json_real(dst, rows[0].drift.mean_max);
        rc = rc ? rc : ns_buf_printf(dst, "}}");
    }
    free(rows);
    return rc;
}

int nsd_registry_drift_text(nsd_registry_t *reg, const char *name, const char *domain,
                            ns_buf_t *dst, ns_error_detail_t *err)
{
    int rc;
    nsd_run_t *run = nsd_registry_read_run(reg, name, &rc, err);
    if (run == NULL)
        return rc;
    long filter;
    rc = parse_filter(run, domain, &filter, err);
    if (rc == 0 && (rc = drift_write(run, filter, dst)) != 0)
        rc = ns_error_set(err, rc == NS_EVALUE ? NS_EVALUE : NS_ENOMEM, "",
                          rc == NS_EVALUE ? "a drift is not finite" : "out of memory");
    nsd_registry_end_read(run);
    if (rc != 0)
        ns_buf_free(dst);
    return rc;
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
