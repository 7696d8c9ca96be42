/* checkpoint.c - a run's applied state to and from JSON, exactly (see the
 * format in checkpoint.h). */
#include "checkpoint.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <normstat/core.h>

#include "base/size_limits.h"

/* ---------------------------------------------------------------- export */

static json_t *doubles_json(const double *src, size_t n)
{
    json_t *a = json_array();
    for (size_t i = 0; a != NULL && i < n; i++)
        if (json_array_append_new(a, json_real(src[i])) != 0) {
            json_decref(a);
            return NULL;
        }
    return a;
}

static json_t *ema_json(const nsd_pop_t *pop, size_t c)
{
    return json_pack("{s:o, s:o, s:o, s:o, s:f, s:I, s:I}", NS_FIELD_RUNNING_MEAN,
                     doubles_json(pop->ema.running_mean, c), NS_FIELD_RUNNING_VAR,
                     doubles_json(pop->ema.running_var, c), "zero_mean",
                     doubles_json(pop->ema.zero_mean, c), "zero_var",
                     doubles_json(pop->ema.zero_var, c), "decay", pop->ema.decay,
                     NS_FIELD_NUM_BATCHES_TRACKED, (json_int_t)pop->ema.num_batches_tracked,
                     NS_FIELD_STEP, (json_int_t)pop->ema_step);
}

static json_t *precise_json(const nsd_pop_t *pop, size_t c)
{
    return json_pack("{s:I, s:I, s:I, s:o, s:o, s:I}", "generation", (json_int_t)pop->generation,
                     "n", (json_int_t)pop->precise.n, NS_FIELD_NUM_BATCHES,
                     (json_int_t)pop->precise.num_batches, NS_FIELD_MEAN,
                     doubles_json(pop->precise.mean, c), "m2", doubles_json(pop->precise.m2, c),
                     NS_FIELD_STEP, (json_int_t)pop->precise_step);
}

static json_t *layer_json(const nsd_run_state_t *st, const nsd_layer_t *l)
{
    size_t c = l->channels;
    json_t *doms = json_object();
    for (size_t d = 0; doms != NULL && d < st->n_domains && d < l->cap_pops; d++) {
        if (l->pops[d] == NULL)
            continue;
        const nsd_pop_t *pop = l->pops[d];
        json_t *dlast =
            pop->last_step < 0
                ? json_null()
                : json_pack("{s:I, s:I, s:o, s:o}", NS_FIELD_STEP, (json_int_t)pop->last_step,
                            NS_FIELD_COUNT, (json_int_t)pop->last_count, NS_FIELD_MEAN,
                            doubles_json(pop->last_mean, c), NS_FIELD_VAR,
                            doubles_json(pop->last_mean + c, c));
        json_t *e = json_pack("{s:o, s:o, s:o}", "ema", ema_json(pop, c), "precise",
                              precise_json(pop, c), "last", dlast);
        if (e == NULL || json_object_set_new(doms, st->domains[d], e) != 0) {
            json_decref(doms);
            return NULL;
        }
    }
    json_t *last = json_null();
    const nsd_pop_t *lp = l->pooled; /* the pooled scope's last values */
    if (lp != NULL && lp->last_mean != NULL && c > 0)
        last = json_pack("{s:I, s:I, s:o, s:o}", NS_FIELD_STEP, (json_int_t)lp->last_step,
                         NS_FIELD_COUNT, (json_int_t)lp->last_count, NS_FIELD_MEAN,
                         doubles_json(lp->last_mean, c), NS_FIELD_VAR,
                         doubles_json(lp->last_mean + c, c));
    json_t *pooled = l->pooled ? ema_json(l->pooled, c) : json_null();
    return json_pack("{s:I, s:I, s:I, s:o, s:o, s:o}", "channels", (json_int_t)c, NS_FIELD_STEP,
                     (json_int_t)l->last_applied, "finalized_step", (json_int_t)l->max_closed,
                     "pooled", pooled, "last", last, "domains", doms);
}

static json_t *export_state(const char *name, const nsd_run_state_t *st)
{
    json_t *domains = json_array(), *layers = json_object();
    int ok = domains && layers;
    for (size_t d = 0; ok && d < st->n_domains; d++)
        ok = json_array_append_new(domains,
                                   json_pack("{s:s, s:I}", "domain", st->domains[d], "generation",
                                             (json_int_t)st->domain_gen[d])) == 0;
    for (size_t i = 0; ok && i < st->n_layers; i++) {
        json_t *l = layer_json(st, st->layers[i]);
        ok = l != NULL && json_object_set_new(layers, st->layers[i]->name, l) == 0;
    }
    if (!ok) {
        json_decref(domains);
        json_decref(layers);
        return NULL;
    }
    return json_pack("{s:s, s:i, s:s, s:o, s:I, s:I, s:o, s:o}", "format", "normstat-checkpoint",
                     "version", NSD_CHECKPOINT_VERSION, "run", name, "config",
                     nsd_run_config_json(&st->cfg), "skipped_steps", (json_int_t)st->skipped_steps,
                     "precise_generation", (json_int_t)st->precise_generation, "domains", domains,
                     "layers", layers);
}

json_t *nsd_checkpoint_export(const nsd_run_t *run)
{
    return export_state(run->name, &run->st);
}

/* ---------------------------------------------------------------- import */

/* Field path helpers: every error names the JSON path. */
static int bad(ns_error_detail_t *err, const char *path, const char *key, const char *what)
{
    char field[768];
    snprintf(field, sizeof(field), "%s%s%s", path, path[0] && key[0] ? "." : "", key);
    return ns_error_set(err, NS_EINVAL, field, "%s", what);
}

static int get_obj(json_t *o, const char *key, const char *path, json_t **dst,
                   ns_error_detail_t *err)
{
    *dst = json_object_get(o, key);
    if (!json_is_object(*dst))
        return bad(err, path, key, "expected an object");
    return 0;
}

static int get_int(json_t *o, const char *key, const char *path, json_int_t min, json_int_t max,
                   json_int_t *dst, ns_error_detail_t *err)
{
    json_t *v = json_object_get(o, key);
    if (!json_is_integer(v))
        return bad(err, path, key, "expected an integer");
    *dst = json_integer_value(v);
    if (*dst < min || *dst > max)
        return bad(err, path, key, "integer out of range");
    return 0;
}

static int get_real(json_t *o, const char *key, const char *path, double min, double max,
                    double *dst, ns_error_detail_t *err)
{
    json_t *v = json_object_get(o, key);
    if (!json_is_number(v))
        return bad(err, path, key, "expected a number");
    *dst = json_number_value(v);
    if (!isfinite(*dst) || *dst < min || *dst > max)
        return bad(err, path, key, "number out of range");
    return 0;
}

/* What an import may hold, so that every value served from it, and from
 * what later steps make of it, stays finite (the bounds of proto.h applied
 * to derived state): means as reports, a biased variance (a step's, an
 * accumulator's m2/n) at most NS_VAR_MAX + NS_MEAN_ABS_MAX^2, an EMA
 * variance (unbiased, n >= 2) twice that. */
#define BIASED_VAR_MAX 0x1p121
#define EMA_VAR_MAX    0x1p122
#define COUNTER_MAX    ((json_int_t)1 << 62)

/* An array of exactly 'n' finite numbers (>= 0 if nonneg), each of
 * magnitude at most 'limit' (NS_EVALUE beyond). */
static int get_doubles(json_t *o, const char *key, const char *path, size_t n, int nonneg,
                       double limit, double *dst, ns_error_detail_t *err)
{
    json_t *a = json_object_get(o, key);
    if (!json_is_array(a) || json_array_size(a) != n) {
        char what[96];
        snprintf(what, sizeof(what), "expected an array of %zu numbers", n);
        return bad(err, path, key, what);
    }
    for (size_t i = 0; i < n; i++) {
        json_t *v = json_array_get(a, i);
        double x = json_number_value(v);
        if (!json_is_number(v) || !isfinite(x) || (nonneg && x < 0)) {
            char field[256];
            snprintf(field, sizeof(field), "%s.%s.%zu", path, key, i);
            return ns_error_set(err, NS_EINVAL, field,
                                nonneg ? "expected a finite number >= 0"
                                       : "expected a finite number");
        }
        if (!(fabs(x) <= limit)) {
            char field[400];
            snprintf(field, sizeof(field), "%s.%s.%zu", path, key, i);
            return ns_error_set(err, NS_EVALUE, field, "%g is beyond %g", x, limit);
        }
        dst[i] = x;
    }
    return 0;
}

/* The "config" object, in the form the protocol decodes (a PUT body) with
 * every field present, as an export writes them all. */
static int parse_config(json_t *o, ns_run_config_t *cfg, ns_error_detail_t *err)
{
    ns_error_detail_t e = {0};
    char *text = json_dumps(o, JSON_COMPACT);
    if (text == NULL)
        return ns_error_set(err, NS_ENOMEM, "", "out of memory");
    ns_run_config_defaults(cfg);
    int rc = ns_run_config_decode_json(cfg, text, strlen(text), &e);
    free(text);
    if (rc != 0) {
        /* e.message is "<field>: <what>": name the field under "config". */
        char field[sizeof(e.field) + 8];
        snprintf(field, sizeof(field), "config%s%s", e.field[0] ? "." : "", e.field);
        return ns_error_set(err, rc, field, "%s",
                            e.field[0] ? e.message + strlen(e.field) + 2 : e.message);
    }
    const char *missing = !cfg->has_world_size        ? "world_size"
                          : !cfg->has_momentum        ? "momentum"
                          : !cfg->has_sync_timeout_ms ? "sync_timeout_ms"
                          : !cfg->has_on_timeout      ? "on_timeout"
                          : !cfg->has_ema_debias      ? "ema_debias"
                                                      : NULL;
    if (missing != NULL)
        return bad(err, "config", missing, "missing required field");
    if (cfg->world_size > NS_WORLD_SIZE_MAX)
        return ns_error_set(err, NS_EINVAL, "config.world_size", "must be in [1, %u]",
                            NS_WORLD_SIZE_MAX);
    return 0;
}

/* An EMA of a layer whose highest finalized step is 'finalized'. */
static int parse_ema(json_t *o, const char *path, size_t c, int64_t finalized, nsd_pop_t *pop,
                     ns_error_detail_t *err)
{
    json_int_t v;
    if (!json_is_object(o))
        return bad(err, path, "", "expected an object");
    if (get_doubles(o, NS_FIELD_RUNNING_MEAN, path, c, 0, NS_MEAN_ABS_MAX, pop->ema.running_mean,
                    err) ||
        get_doubles(o, NS_FIELD_RUNNING_VAR, path, c, 1, EMA_VAR_MAX, pop->ema.running_var, err) ||
        get_doubles(o, "zero_mean", path, c, 0, NS_MEAN_ABS_MAX, pop->ema.zero_mean, err) ||
        get_doubles(o, "zero_var", path, c, 1, EMA_VAR_MAX, pop->ema.zero_var, err) ||
        get_real(o, "decay", path, 0.0, 1.0, &pop->ema.decay, err))
        return err->code;
    if (get_int(o, NS_FIELD_NUM_BATCHES_TRACKED, path, 0, INT64_MAX, &v, err))
        return NS_EINVAL;
    /* One per applied step, and later steps are above 'finalized': a count
     * above finalized + 1 is not a state any run reaches, and could pass
     * 2^63 - 1 (served as int64) before steps do. */
    if (v > finalized + 1) {
        char field[400];
        snprintf(field, sizeof(field), "%s." NS_FIELD_NUM_BATCHES_TRACKED, path);
        return ns_error_set(err, NS_EVALUE, field, "%lld is above the layer's finalized_step + 1",
                            (long long)v);
    }
    pop->ema.num_batches_tracked = (uint64_t)v;
    if (get_int(o, NS_FIELD_STEP, path, -1, INT64_MAX, &v, err))
        return NS_EINVAL;
    pop->ema_step = v;
    return 0;
}

static int parse_precise(json_t *o, const char *path, size_t c, uint64_t max_gen, nsd_pop_t *pop,
                         ns_error_detail_t *err)
{
    json_int_t v;
    if (!json_is_object(o))
        return bad(err, path, "", "expected an object");
    if (get_int(o, "generation", path, 0, (json_int_t)max_gen, &v, err))
        return NS_EINVAL;
    pop->generation = (uint64_t)v;
    if (get_int(o, "n", path, 0, INT64_MAX, &v, err))
        return NS_EINVAL;
    pop->precise.n = (uint64_t)v;
    if (get_int(o, NS_FIELD_NUM_BATCHES, path, 0, INT64_MAX, &v, err))
        return NS_EINVAL;
    pop->precise.num_batches = (uint64_t)v;
    /* Every merged batch has n > 0: n >= num_batches, and n > 0 only with a
     * batch merged (else a layer would vanish from, or appear in, the served
     * accumulators without data). */
    if (pop->precise.num_batches > pop->precise.n ||
        (pop->precise.n > 0 && pop->precise.num_batches == 0)) {
        char field[400];
        snprintf(field, sizeof(field), "%s." NS_FIELD_NUM_BATCHES, path);
        return ns_error_set(err, NS_EVALUE, field,
                            "%llu is inconsistent with n %llu (need 1 <= num_batches <= n, or "
                            "both 0)",
                            (unsigned long long)pop->precise.num_batches,
                            (unsigned long long)pop->precise.n);
    }
    if (get_doubles(o, NS_FIELD_MEAN, path, c, 0, NS_MEAN_ABS_MAX, pop->precise.mean, err) ||
        get_doubles(o, "m2", path, c, 1, BIASED_VAR_MAX * (double)pop->precise.n, pop->precise.m2,
                    err))
        return err->code;
    if (get_int(o, NS_FIELD_STEP, path, -1, INT64_MAX, &v, err))
        return NS_EINVAL;
    pop->precise_step = v;
    return 0;
}

/* A last-step object {step, count, mean, var} of 'c' channels at 'path'
 * (mean then var into mean[2c]). @return 0 or NS_EINVAL (err). */
static int parse_last(json_t *o, const char *path, size_t c, int64_t *step, uint64_t *count,
                      double *mean, ns_error_detail_t *err)
{
    json_int_t v;
    if (!json_is_object(o))
        return bad(err, path, "", "expected an object or null");
    if (get_int(o, NS_FIELD_STEP, path, 0, INT64_MAX, &v, err))
        return NS_EINVAL;
    *step = v;
    if (get_int(o, NS_FIELD_COUNT, path, 0, INT64_MAX, &v, err))
        return NS_EINVAL;
    *count = (uint64_t)v;
    if (get_doubles(o, NS_FIELD_MEAN, path, c, 0, NS_MEAN_ABS_MAX, mean, err) ||
        get_doubles(o, NS_FIELD_VAR, path, c, 1, BIASED_VAR_MAX, mean + c, err))
        return err->code;
    return 0;
}

/* A last step of the checkpoint ('o', at 'path'): the layer's (d < 0) or
 * domain d's last values, copied with few channels, else an owned step of
 * one block that they view. @return 0 or NS_E* (err). */
static int import_last(nsd_run_state_t *st, nsd_layer_t *l, long d, json_t *o, const char *path,
                       ns_error_detail_t *err)
{
    size_t c = l->channels;
    nsd_pop_t *pop = d < 0 ? l->pooled : l->pops[d];
    double *copy = nsd_pop_last_copy(pop, c);
    nsd_step_t *s = copy != NULL ? NULL : nsd_step_create(l->name, 0, c);
    if (copy == NULL && s == NULL)
        return ns_error_set(err, NS_ENOMEM, "", "out of memory");
    double *values = s != NULL ? s->mean : copy;
    int64_t step = 0;
    uint64_t count = 0;
    if (parse_last(o, path, c, &step, &count, values, err)) {
        nsd_step_free(s);
        return err->code;
    }
    if (s != NULL) {
        s->step = (uint64_t)step;
        s->count = count;
        st->memory += s->bytes;
    }
    nsd_layer_adopt_last(pop, s, (uint64_t)step, count, values);
    return 0;
}

/* One domain's state of layer 'l' (at 'path'). @return 0 or NS_E* (err). */
static int parse_layer_domain(nsd_run_state_t *st, nsd_layer_t *l, const char *path,
                              const char *dname, json_t *dv, ns_error_detail_t *err)
{
    size_t c = l->channels;
    char sub[2 * NS_NAME_MAX + 48], sub2[2 * NS_NAME_MAX + 64];
    snprintf(sub, sizeof(sub), "%s.domains.%s", path, dname);
    long d = nsd_run_find_domain(st, dname);
    if (d < 0)
        return bad(err, sub, "", "domain not listed in \"domains\"");
    if (!json_is_object(dv))
        return bad(err, sub, "", "expected an object");
    nsd_pop_t *pop = nsd_pop_create(c, 0);
    if (pop == NULL)
        return ns_error_set(err, NS_ENOMEM, "", "out of memory");
    l->pops[d] = pop;
    st->memory += nsd_pop_bytes(c);
    snprintf(sub2, sizeof(sub2), "%s.ema", sub);
    if (parse_ema(json_object_get(dv, "ema"), sub2, c, l->max_closed, pop, err))
        return err->code;
    snprintf(sub2, sizeof(sub2), "%s.precise", sub);
    if (parse_precise(json_object_get(dv, "precise"), sub2, c, st->precise_generation, pop, err))
        return err->code;
    /* The domain's last finalized step; absent in older checkpoints. */
    json_t *dlast = json_object_get(dv, "last");
    if (dlast == NULL || json_is_null(dlast))
        return 0;
    snprintf(sub2, sizeof(sub2), "%s.last", sub);
    return import_last(st, l, d, dlast, sub2, err);
}

/* The statistics of a layer with channels: pooled EMA, last step, domains. */
static int parse_layer_stats(nsd_run_state_t *st, nsd_layer_t *l, const char *path, json_t *o,
                             ns_error_detail_t *err)
{
    size_t c = l->channels;
    char sub[2 * NS_NAME_MAX + 48];
    l->pooled = nsd_pop_create(c, 0);
    l->pops = calloc(st->n_domains ? st->n_domains : 1, sizeof(*l->pops));
    if (l->pooled == NULL || l->pops == NULL)
        return ns_error_set(err, NS_ENOMEM, "", "out of memory");
    l->cap_pops = st->n_domains ? st->n_domains : 1;
    st->memory += nsd_pop_bytes(c);
    snprintf(sub, sizeof(sub), "%s.pooled", path);
    if (parse_ema(json_object_get(o, "pooled"), sub, c, l->max_closed, l->pooled, err))
        return err->code;
    json_t *last = json_object_get(o, "last");
    if (!json_is_null(last)) {
        snprintf(sub, sizeof(sub), "%s.last", path);
        if (import_last(st, l, -1, last, sub, err))
            return err->code;
    }
    const char *dname;
    json_t *dv;
    json_object_foreach(json_object_get(o, "domains"), dname, dv)
    {
        int rc = parse_layer_domain(st, l, path, dname, dv, err);
        if (rc != 0)
            return rc;
    }
    /* The pooled view merges every domain's accumulator: their samples
     * together must fit int64 (reports are then checked against the rest). */
    uint64_t total = 0;
    for (size_t d = 0; d < l->cap_pops; d++) {
        if (l->pops[d] == NULL)
            continue;
        if (l->pops[d]->precise.n > (uint64_t)INT64_MAX - total) {
            snprintf(sub, sizeof(sub), "%s.domains.%s.precise.n", path, st->domains[d]);
            return ns_error_set(err, NS_EVALUE, sub,
                                "the layer's accumulators together exceed 2^63-1 samples");
        }
        total += l->pops[d]->precise.n;
    }
    return 0;
}

static int parse_layer(nsd_run_state_t *st, const char *name, json_t *o, nsd_layer_t **dst,
                       ns_error_detail_t *err)
{
    char path[NS_NAME_MAX + 16];
    json_int_t v;
    snprintf(path, sizeof(path), "layers.%s", name);
    if (!ns_name_valid(name))
        return bad(err, path, "", "invalid layer name");
    if (!json_is_object(o))
        return bad(err, path, "", "expected an object");
    if (get_int(o, "channels", path, 0, NSD_CHECKPOINT_CHANNELS_MAX, &v, err))
        return NS_EINVAL;
    size_t c = (size_t)v;
    nsd_layer_t *l = nsd_layer_create(name);
    if (l == NULL)
        return ns_error_set(err, NS_ENOMEM, "", "out of memory");
    *dst = l;
    l->channels = c;
    st->memory += sizeof(nsd_layer_t);
    if (get_int(o, NS_FIELD_STEP, path, -1, INT64_MAX, &v, err))
        return NS_EINVAL;
    l->last_applied = v;
    if (get_int(o, "finalized_step", path, -1, INT64_MAX, &v, err))
        return NS_EINVAL;
    l->max_closed = v;
    l->max_seen = v;
    if (l->max_closed < l->last_applied)
        return bad(err, path, "finalized_step", "below step");
    if (!json_is_object(json_object_get(o, "domains")))
        return bad(err, path, "domains", "expected an object");
    if (c == 0) {
        if (!json_is_null(json_object_get(o, "pooled")) ||
            !json_is_null(json_object_get(o, "last")) ||
            json_object_size(json_object_get(o, "domains")) != 0)
            return bad(err, path, "channels", "a layer without channels holds no statistics");
        return 0;
    }
    return parse_layer_stats(st, l, path, o, err);
}

static int layer_cmp(const void *a, const void *b)
{
    return strcmp((*(nsd_layer_t *const *)a)->name, (*(nsd_layer_t *const *)b)->name);
}

/* Frees a half-built state that was never accounted in a context. */
static void state_discard(nsd_run_state_t *st)
{
    for (size_t i = 0; i < st->n_layers; i++)
        nsd_layer_free(st->layers[i]);
    free(st->layers);
    free(st->domains);
    free(st->domain_gen);
    memset(st, 0, sizeof(*st));
}

/* The run-wide fields: format, version, config, counters. */
static int parse_header(json_t *root, nsd_run_state_t *st, ns_error_detail_t *err)
{
    json_int_t v;
    json_t *cfg;
    if (!json_is_object(root))
        return bad(err, "", "", "expected an object");
    json_t *fmt = json_object_get(root, "format");
    if (!json_is_string(fmt) || strcmp(json_string_value(fmt), "normstat-checkpoint") != 0)
        return bad(err, "", "format", "expected \"normstat-checkpoint\"");
    if (get_int(root, "version", "", NSD_CHECKPOINT_VERSION, NSD_CHECKPOINT_VERSION, &v, err))
        return NS_EINVAL;
    if (get_obj(root, "config", "", &cfg, err) || parse_config(cfg, &st->cfg, err))
        return NS_EINVAL;
    /* Both grow by one per request (an applied step, a reset): no run gets
     * near 2^62, and room above it keeps them from passing 2^63 - 1. */
    if (get_int(root, "skipped_steps", "", 0, INT64_MAX, &v, err))
        return NS_EINVAL;
    if (v > COUNTER_MAX)
        return ns_error_set(err, NS_EVALUE, "skipped_steps", "%lld is above 2^62", (long long)v);
    st->skipped_steps = (uint64_t)v;
    if (get_int(root, "precise_generation", "", 0, INT64_MAX, &v, err))
        return NS_EINVAL;
    if (v > COUNTER_MAX)
        return ns_error_set(err, NS_EVALUE, "precise_generation", "%lld is above 2^62",
                            (long long)v);
    st->precise_generation = (uint64_t)v;
    return 0;
}

/* "domains": [{"domain", "generation"}], in the run's domain order. */
static int parse_domains(json_t *root, nsd_run_state_t *st, ns_error_detail_t *err)
{
    json_int_t v;
    json_t *domains = json_object_get(root, "domains");
    if (!json_is_array(domains))
        return bad(err, "", "domains", "expected an array");
    size_t nd = json_array_size(domains);
    st->domains = calloc(nd ? nd : 1, sizeof(*st->domains));
    st->domain_gen = calloc(nd ? nd : 1, sizeof(uint64_t));
    if (st->domains == NULL || st->domain_gen == NULL)
        return ns_error_set(err, NS_ENOMEM, "", "out of memory");
    st->cap_domains = nd ? nd : 1;
    for (size_t i = 0; i < nd; i++) {
        char path[32];
        snprintf(path, sizeof(path), "domains.%zu", i);
        json_t *e = json_array_get(domains, i);
        json_t *name = json_object_get(e, "domain");
        if (!json_is_object(e) || !json_is_string(name) || !ns_name_valid(json_string_value(name)))
            return bad(err, path, "domain", "expected a domain name");
        if (nsd_run_find_domain(st, json_string_value(name)) >= 0)
            return bad(err, path, "domain", "repeated");
        if (get_int(e, "generation", path, 0, (json_int_t)st->precise_generation, &v, err))
            return NS_EINVAL;
        snprintf(st->domains[i], sizeof(st->domains[i]), "%s", json_string_value(name));
        st->domain_gen[i] = (uint64_t)v;
        st->n_domains = i + 1;
    }
    return 0;
}

/* "layers": {<name>: {...}}, sorted by name afterwards. */
static int parse_layers(json_t *root, nsd_run_state_t *st, ns_error_detail_t *err)
{
    json_t *layers = json_object_get(root, "layers");
    if (!json_is_object(layers))
        return bad(err, "", "layers", "expected an object");
    size_t nl = json_object_size(layers);
    st->layers = calloc(nl ? nl : 1, sizeof(*st->layers));
    if (st->layers == NULL)
        return ns_error_set(err, NS_ENOMEM, "", "out of memory");
    st->cap_layers = nl ? nl : 1;
    const char *lname;
    json_t *lv;
    json_object_foreach(layers, lname, lv)
    {
        nsd_layer_t *l = NULL;
        int rc = parse_layer(st, lname, lv, &l, err);
        if (l != NULL)
            st->layers[st->n_layers++] = l;
        if (rc != 0)
            return rc;
    }
    qsort(st->layers, st->n_layers, sizeof(*st->layers), layer_cmp);
    return 0;
}

int nsd_checkpoint_parse(nsd_run_state_t *dst, const char *src, size_t src_len,
                         ns_error_detail_t *err)
{
    json_error_t jerr;
    nsd_run_state_t st;
    ns_error_detail_t local = {0};
    if (err == NULL)
        err = &local; /* the parsers return err->code */
    memset(&st, 0, sizeof(st));
    memset(dst, 0, sizeof(*dst));
    json_t *root = json_loadb(src, src_len, JSON_REJECT_DUPLICATES, &jerr);
    if (root == NULL)
        return ns_error_set(err, NS_EINVAL, "", "invalid JSON at line %d: %s", jerr.line,
                            jerr.text);
    int rc = parse_header(root, &st, err);
    if (rc == 0)
        rc = parse_domains(root, &st, err);
    if (rc == 0)
        rc = parse_layers(root, &st, err);
    json_decref(root);
    if (rc != 0) {
        state_discard(&st);
        return rc;
    }
    *dst = st;
    return 0;
}
