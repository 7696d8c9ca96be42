/* checkpoint_write.c - a run's checkpoint written as JSON text directly (see
 * the format in checkpoint.h), for GET /v1/runs/{run}/checkpoint.
 *
 * DESIGN
 *  nsd_checkpoint_export() builds a jansson tree, which costs about 15
 *  times the text it prints (a 100k-layer run took 858 MB and 3.7 s under
 *  the run's lock); this writes the same document, field for field, into
 *  one buffer: the answer's memory is the answer. Doubles are printed as
 *  jansson prints reals ("%.17g", ".0" added to an integral value), names
 *  need no escaping (the name grammar has no quote or backslash), and
 *  test_registry.c checks that the text parses to a tree equal to the
 *  export's. */
#include "checkpoint.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* One double as jansson prints a real. */
static int real(ns_buf_t *dst, double v)
{
    char tmp[40];
    int n = snprintf(tmp, sizeof(tmp), "%.17g", v);
    if (n < 0 || (size_t)n >= sizeof(tmp) - 2)
        return NS_EINVAL;
    if (strpbrk(tmp, ".eE") == NULL)
        memcpy(tmp + n, ".0", 3);
    return ns_buf_printf(dst, "%s", tmp);
}

static int reals(ns_buf_t *dst, const char *key, const double *src, size_t n)
{
    int rc = ns_buf_printf(dst, "\"%s\":[", key);
    for (size_t i = 0; rc == 0 && i < n; i++) {
        rc = i ? ns_buf_printf(dst, ",") : 0;
        rc = rc ? rc : real(dst, src[i]);
    }
    return rc ? rc : ns_buf_printf(dst, "]");
}

static int ema(ns_buf_t *dst, const nsd_pop_t *pop, size_t c)
{
    int rc = ns_buf_printf(dst, "{");
    rc = rc ? rc : reals(dst, NS_FIELD_RUNNING_MEAN, pop->ema.running_mean, c);
    rc = rc ? rc : ns_buf_printf(dst, ",");
    rc = rc ? rc : reals(dst, NS_FIELD_RUNNING_VAR, pop->ema.running_var, c);
    rc = rc ? rc : ns_buf_printf(dst, ",");
    rc = rc ? rc : reals(dst, "zero_mean", pop->ema.zero_mean, c);
    rc = rc ? rc : ns_buf_printf(dst, ",");
    rc = rc ? rc : reals(dst, "zero_var", pop->ema.zero_var, c);
    rc = rc ? rc : ns_buf_printf(dst, ",\"decay\":");
    rc = rc ? rc : real(dst, pop->ema.decay);
    return rc ? rc
              : ns_buf_printf(dst, ",\"%s\":%lld,\"%s\":%lld}", NS_FIELD_NUM_BATCHES_TRACKED,
                              (long long)pop->ema.num_batches_tracked, NS_FIELD_STEP,
                              (long long)pop->ema_step);
}

static int precise(ns_buf_t *dst, const nsd_pop_t *pop, size_t c)
{
    int rc = ns_buf_printf(dst, "{\"generation\":%lld,\"n\":%lld,\"%s\":%lld,",
                           (long long)pop->generation, (long long)pop->precise.n,
                           NS_FIELD_NUM_BATCHES, (long long)pop->precise.num_batches);
    rc = rc ? rc : reals(dst, NS_FIELD_MEAN, pop->precise.mean, c);
    rc = rc ? rc : ns_buf_printf(dst, ",");
    rc = rc ? rc : reals(dst, "m2", pop->precise.m2, c);
    return rc ? rc
              : ns_buf_printf(dst, ",\"%s\":%lld}", NS_FIELD_STEP, (long long)pop->precise_step);
}

/* {"step", "count", "mean", "var"} of arrays mean[c] then var[c]. */
static int last(ns_buf_t *dst, int64_t step, uint64_t count, const double *mean_var, size_t c)
{
    int rc = ns_buf_printf(dst, "{\"%s\":%lld,\"%s\":%lld,", NS_FIELD_STEP, (long long)step,
                           NS_FIELD_COUNT, (long long)count);
    rc = rc ? rc : reals(dst, NS_FIELD_MEAN, mean_var, c);
    rc = rc ? rc : ns_buf_printf(dst, ",");
    rc = rc ? rc : reals(dst, NS_FIELD_VAR, mean_var + c, c);
    return rc ? rc : ns_buf_printf(dst, "}");
}

static int layer_domains(ns_buf_t *dst, const nsd_run_state_t *st, const nsd_layer_t *l)
{
    size_t c = l->channels;
    int rc = ns_buf_printf(dst, "\"domains\":{");
    int first = 1;
    for (size_t d = 0; rc == 0 && d < st->n_domains && d < l->cap_pops; d++) {
        const nsd_pop_t *pop = l->pops[d];
        if (pop == NULL)
            continue;
        rc = ns_buf_printf(dst, "%s\"%s\":{\"ema\":", first ? "" : ",", st->domains[d]);
        first = 0;
        rc = rc ? rc : ema(dst, pop, c);
        rc = rc ? rc : ns_buf_printf(dst, ",\"precise\":");
        rc = rc ? rc : precise(dst, pop, c);
        rc = rc ? rc : ns_buf_printf(dst, ",\"last\":");
        if (rc == 0)
            rc = pop->last_step < 0 ? ns_buf_printf(dst, "null")
                                    : last(dst, pop->last_step, pop->last_count, pop->last_mean, c);
        rc = rc ? rc : ns_buf_printf(dst, "}");
    }
    return rc ? rc : ns_buf_printf(dst, "}");
}

static int layer(ns_buf_t *dst, const nsd_run_state_t *st, const nsd_layer_t *l)
{
    size_t c = l->channels;
    int rc = ns_buf_printf(dst,
                           "\"%s\":{\"channels\":%zu,\"%s\":%lld,\"finalized_step\":%lld,"
                           "\"pooled\":",
                           l->name, c, NS_FIELD_STEP, (long long)l->last_applied,
                           (long long)l->max_closed);
    if (rc == 0)
        rc = l->pooled ? ema(dst, l->pooled, c) : ns_buf_printf(dst, "null");
    rc = rc ? rc : ns_buf_printf(dst, ",\"last\":");
    if (rc == 0)
        rc = l->has_last && c > 0 ? last(dst, l->last_step, l->last_count, l->last_mean, c)
                                  : ns_buf_printf(dst, "null");
    rc = rc ? rc : ns_buf_printf(dst, ",");
    rc = rc ? rc : layer_domains(dst, st, l);
    return rc ? rc : ns_buf_printf(dst, "}");
}

int nsd_checkpoint_write(const nsd_run_t *run, ns_buf_t *dst)
{
    const nsd_run_state_t *st = &run->st;
    json_t *cfg = nsd_run_config_json(&st->cfg);
    char *cfg_text = cfg ? json_dumps(cfg, JSON_COMPACT) : NULL;
    json_decref(cfg);
    if (cfg_text == NULL)
        return NS_ENOMEM;
    int rc = ns_buf_printf(dst,
                           "{\"format\":\"normstat-checkpoint\",\"version\":%d,\"run\":\"%s\","
                           "\"config\":%s,\"skipped_steps\":%lld,\"precise_generation\":%lld,"
                           "\"domains\":[",
                           NSD_CHECKPOINT_VERSION, run->name, cfg_text,
                           (long long)st->skipped_steps, (long long)st->precise_generation);
    free(cfg_text);
    for (size_t d = 0; rc == 0 && d < st->n_domains; d++)
        rc = ns_buf_printf(dst, "%s{\"domain\":\"%s\",\"generation\":%lld}", d ? "," : "",
                           st->domains[d], (long long)st->domain_gen[d]);
    rc = rc ? rc : ns_buf_printf(dst, "],\"layers\":{");
    for (size_t i = 0; rc == 0 && i < st->n_layers; i++) {
        rc = i ? ns_buf_printf(dst, ",") : 0;
        rc = rc ? rc : layer(dst, st, st->layers[i]);
    }
    return rc ? rc : ns_buf_printf(dst, "}}");
}
