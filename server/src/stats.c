/* stats.c - statistics answers of a run (GET /v1/runs/{run}/stats): EMA,
 * PreciseBN and last-step views per domain, pooled or mixed, copied out under
 * the run's lock so a reader never sees a half-updated layer. */
#include "run.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <normstat/core.h>

#define META_MAX 8

/* The answer and the storage its pointers refer to. */
typedef struct stats_impl_s {
    nsd_stats_t pub;
    ns_meta_t meta[META_MAX];
    char run[NS_NAME_MAX + 1];
    char domain[NS_NAME_MAX + 1];
    char mixture[NSD_MIXTURE_MAX * (NS_NAME_MAX + 32)];
} stats_impl_t;

void nsd_stats_free(nsd_stats_t *stats)
{
    if (stats == NULL)
        return;
    for (size_t i = 0; i < stats->n_layers; i++) {
        free((void *)stats->layers[i].name);
        free((void *)stats->layers[i].arrays[0]); /* one block holds both arrays */
    }
    free(stats->layers);
    free(stats);
}

/* Served values of one source for one domain index of a layer.
 * @return 1 if served, 0 if the layer has nothing to serve for it. */
typedef struct served_s {
    int64_t step;
    uint64_t nbt; /* EMA num_batches_tracked or PreciseBN num_batches */
    uint64_t samples;
} served_t;

static int serve_ema(const nsd_run_t *run, const nsd_layer_t *l, long d, double *mean, double *var,
                     served_t *sv)
{
    const nsd_pop_t *pop = d < 0 ? l->pooled : ((size_t)d < l->cap_pops ? l->pops[d] : NULL);
    nsd_pop_ema_read(pop, l->channels, run->st.cfg.ema_debias, mean, var);
    sv->step = pop ? pop->ema_step : -1;
    sv->nbt = pop ? pop->ema.num_batches_tracked : 0;
    sv->samples = 0;
    return 1;
}

static int serve_precise(const nsd_run_t *run, const nsd_layer_t *l, long d, int biased,
                         double *mean, double *var, served_t *sv)
{
    size_t c = l->channels;
    if (d >= 0) {
        const nsd_pop_t *pop = (size_t)d < l->cap_pops ? l->pops[d] : NULL;
        if (pop == NULL || ns_precise_read(&pop->precise, c, biased, mean, var) != 0)
            return 0;
        sv->step = pop->precise_step;
        sv->nbt = pop->precise.num_batches;
        sv->samples = pop->precise.n;
        return 1;
    }
    /* Pooled: exact merge of the domains' accumulators, in domain order. */
    double *tmp = malloc(2 * c * sizeof(double));
    if (tmp == NULL)
        return NS_ENOMEM;
    ns_precise_t acc = {.mean = tmp, .m2 = tmp + c};
    size_t n = run->st.n_domains < l->cap_pops ? run->st.n_domains : l->cap_pops;
    int ok = nsd_pop_precise_pool(&acc, l->pops, n, c) == 0 &&
             ns_precise_read(&acc, c, biased, mean, var) == 0;
    sv->step = -1;
    for (size_t k = 0; k < n; k++)
        if (l->pops[k] != NULL && l->pops[k]->precise_step > sv->step)
            sv->step = l->pops[k]->precise_step;
    sv->nbt = acc.num_batches;
    sv->samples = acc.n;
    free(tmp);
    return ok;
}

static int serve_one(const nsd_run_t *run, const nsd_layer_t *l, const nsd_stats_query_t *q, long d,
                     double *mean, double *var, served_t *sv)
{
    if (q->source == NSD_SOURCE_EMA)
        return serve_ema(run, l, d, mean, var, sv);
    return serve_precise(run, l, d, q->biased, mean, var, sv);
}

/* A mixture of the domains' served values (ns_mixture). */
static int serve_mixture(const nsd_run_t *run, const nsd_layer_t *l, const nsd_stats_query_t *q,
                         const long *doms, double *mean, double *var, served_t *sv)
{
    size_t c = l->channels, k = q->n_mixture;
    int rc = NS_ENOMEM;
    double *tmp = malloc(2 * c * k * sizeof(double));
    ns_component_t *comp = malloc(k * sizeof(*comp));
    if (tmp == NULL || comp == NULL)
        goto out;
    sv->step = -1;
    sv->nbt = 0;
    sv->samples = 0;
    for (size_t i = 0; i < k; i++) {
        served_t one;
        double *m = tmp + 2 * c * i, *v = m + c;
        rc = serve_one(run, l, q, doms[i], m, v, &one);
        if (rc <= 0)
            goto out; /* 0: a component has nothing: skip the layer */
        comp[i].weight = q->mixture[i].weight;
        comp[i].mean = m;
        comp[i].var = v;
        if (one.step > sv->step)
            sv->step = one.step;
        if (one.nbt > sv->nbt)
            sv->nbt = one.nbt;
        if (one.samples > sv->samples)
            sv->samples = one.samples;
    }
    rc = ns_mixture(comp, k, c, mean, var) == 0 ? 1 : NS_EINVAL;
out:
    free(tmp);
    free(comp);
    return rc;
}

static int layer_selected(const nsd_stats_query_t *q, const char *name)
{
    if (q->n_layers == 0)
        return 1;
    for (size_t i = 0; i < q->n_layers; i++)
        if (strcmp(q->layers[i], name) == 0)
            return 1;
    return 0;
}

int nsd_run_stats(nsd_run_t *run, const nsd_stats_query_t *q, nsd_stats_t **dst,
                  ns_error_detail_t *err)
{
    const nsd_run_state_t *st = &run->st;
    *dst = NULL;
    const char *dname = q->domain[0] ? q->domain : "*";
    int pooled = strcmp(dname, "*") == 0;
    long d = -1;
    long doms[NSD_MIXTURE_MAX];

    if (q->biased && q->source != NSD_SOURCE_PRECISE)
        return ns_error_set(err, NS_EINVAL, "variance", "biased is only served by source=precise");
    if (q->source == NSD_SOURCE_LAST && q->n_mixture > 0)
        return ns_error_set(err, NS_EINVAL, "mixture",
                            "source=last serves one domain or all pooled, not a mixture");
    if (q->n_mixture > NSD_MIXTURE_MAX)
        return ns_error_set(err, NS_EINVAL, "mixture", "at most %d domains", NSD_MIXTURE_MAX);
    for (size_t i = 0; i < q->n_mixture; i++) {
        doms[i] = nsd_run_find_domain(st, q->mixture[i].domain);
        if (doms[i] < 0)
            return ns_error_set(err, NS_ENOTFOUND, "mixture", "no domain '%s' in run '%s'",
                                q->mixture[i].domain, run->name);
    }
    if (q->n_mixture == 0 && !pooled) {
        d = nsd_run_find_domain(st, dname);
        if (d < 0)
            return ns_error_set(err, NS_ENOTFOUND, "domain", "no domain '%s' in run '%s'", dname,
                                run->name);
    }
    for (size_t i = 0; i < q->n_layers; i++)
        if (nsd_run_find_layer(st, q->layers[i]) == NULL)
            return ns_error_set(err, NS_ENOTFOUND, "layers", "no layer '%s' in run '%s'",
                                q->layers[i], run->name);

    stats_impl_t *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return ns_error_set(err, NS_ENOMEM, "", "out of memory");
    s->pub.layers = calloc(st->n_layers ? st->n_layers : 1, sizeof(ns_out_layer_t));
    if (s->pub.layers == NULL)
        goto nomem;

    int64_t max_step = -1;
    for (size_t i = 0; i < st->n_layers; i++) {
        const nsd_layer_t *l = st->layers[i];
        size_t c = l->channels;
        if (c == 0 || !layer_selected(q, l->name))
            continue;
        /* source=last: the pooled last step, or the domain's own last step. */
        const nsd_pop_t *dpop = d >= 0 && (size_t)d < l->cap_pops ? l->pops[d] : NULL;
        if (q->source == NSD_SOURCE_LAST &&
            (d < 0 ? !l->has_last : dpop == NULL || dpop->last_step < 0))
            continue;
        double *block = malloc(2 * c * sizeof(double));
        char *name = strdup(l->name);
        if (block == NULL || name == NULL) {
            free(block);
            free(name);
            goto nomem;
        }
        double *mean = block, *var = block + c;
        served_t sv = {0};
        int rc;
        if (q->source == NSD_SOURCE_LAST && d >= 0) {
            memcpy(block, dpop->last_mean, 2 * c * sizeof(double));
            sv.step = dpop->last_step;
            sv.samples = dpop->last_count;
            rc = 1;
        } else if (q->source == NSD_SOURCE_LAST) {
            memcpy(block, l->last_mean, 2 * c * sizeof(double));
            sv.step = (int64_t)l->last_step;
            sv.samples = l->last_count;
            rc = 1;
        } else if (q->n_mixture > 0) {
            rc = serve_mixture(run, l, q, doms, mean, var, &sv);
        } else {
            rc = serve_one(run, l, q, d, mean, var, &sv);
        }
        if (rc <= 0) {
            free(block);
            free(name);
            if (rc == NS_ENOMEM)
                goto nomem;
            continue; /* nothing to serve (precise without samples): skipped */
        }
        ns_out_layer_t *o = &s->pub.layers[s->pub.n_layers++];
        o->name = name;
        o->channels = c;
        o->n_arrays = 2;
        o->arrays[0] = mean;
        o->arrays[1] = var;
        if (q->source == NSD_SOURCE_LAST) {
            o->array_names[0] = NS_FIELD_MEAN;
            o->array_names[1] = NS_FIELD_VAR;
            o->scalar_names[0] = NS_FIELD_COUNT;
            o->scalars[0] = (int64_t)sv.samples;
            o->scalar_names[1] = NS_FIELD_STEP;
            o->scalars[1] = sv.step;
            o->n_scalars = 2;
        } else if (q->source == NSD_SOURCE_EMA) {
            o->array_names[0] = NS_FIELD_RUNNING_MEAN;
            o->array_names[1] = NS_FIELD_RUNNING_VAR;
            o->scalar_names[0] = NS_FIELD_NUM_BATCHES_TRACKED;
            o->scalars[0] = (int64_t)sv.nbt;
            o->scalar_names[1] = NS_FIELD_STEP;
            o->scalars[1] = sv.step;
            o->n_scalars = 2;
        } else {
            o->array_names[0] = NS_FIELD_RUNNING_MEAN;
            o->array_names[1] = NS_FIELD_RUNNING_VAR;
            o->scalar_names[0] = NS_FIELD_NUM_BATCHES;
            o->scalars[0] = (int64_t)sv.nbt;
            o->scalar_names[1] = NS_FIELD_NUM_SAMPLES;
            o->scalars[1] = (int64_t)sv.samples;
            o->scalar_names[2] = NS_FIELD_STEP;
            o->scalars[2] = sv.step;
            o->n_scalars = 3;
        }
        if (sv.step > max_step)
            max_step = sv.step;
    }

    /* Meta. */
    snprintf(s->run, sizeof(s->run), "%s", run->name);
    ns_meta_t *m = s->meta;
    size_t nm = 0;
    m[nm++] = (ns_meta_t){.key = "run", .kind = NS_META_STRING, .str = s->run};
    m[nm++] = (ns_meta_t){.key = "source",
                          .kind = NS_META_STRING,
                          .str = q->source == NSD_SOURCE_EMA       ? "ema"
                                 : q->source == NSD_SOURCE_PRECISE ? "precise"
                                                                   : "last"};
    if (q->n_mixture > 0) {
        size_t off = 0;
        for (size_t i = 0; i < q->n_mixture; i++)
            off += (size_t)snprintf(s->mixture + off, sizeof(s->mixture) - off, "%s%s:%g",
                                    i ? "," : "", q->mixture[i].domain, q->mixture[i].weight);
        snprintf(s->domain, sizeof(s->domain), "mixture");
        m[nm++] = (ns_meta_t){.key = "domain", .kind = NS_META_STRING, .str = s->domain};
        m[nm++] = (ns_meta_t){.key = "mixture", .kind = NS_META_STRING, .str = s->mixture};
    } else {
        snprintf(s->domain, sizeof(s->domain), "%s", dname);
        m[nm++] = (ns_meta_t){.key = "domain", .kind = NS_META_STRING, .str = s->domain};
    }
    m[nm++] = (ns_meta_t){.key = NS_FIELD_STEP, .kind = NS_META_INT, .num = max_step};
    if (q->source == NSD_SOURCE_PRECISE) {
        uint64_t gen = d >= 0 ? st->domain_gen[d] : st->precise_generation;
        m[nm++] = (ns_meta_t){.key = "generation", .kind = NS_META_INT, .num = (int64_t)gen};
    }
    if (q->source == NSD_SOURCE_EMA)
        m[nm++] =
            (ns_meta_t){.key = "debiased", .kind = NS_META_BOOL, .num = st->cfg.ema_debias ? 1 : 0};
    s->pub.meta = s->meta;
    s->pub.n_meta = nm;
    *dst = &s->pub;
    return 0;
nomem:
    nsd_stats_free(&s->pub);
    return ns_error_set(err, NS_ENOMEM, "", "out of memory");
}
