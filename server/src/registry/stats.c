/* stats.c - statistics answers of a run (GET /v1/runs/{run}/stats): EMA,
 * PreciseBN and last-step views per domain, pooled or mixed, copied out under
 * the run's lock so a reader never sees a half-updated layer. */
#include "run.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <normstat/core.h>

#include "registry.h"

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

/* What a source served for one layer besides its arrays. */
typedef struct served_s {
    int64_t step;
    uint64_t nbt; /* EMA num_batches_tracked or PreciseBN num_batches */
    uint64_t samples;
} served_t;

/* A source's reader: the served values of layer 'l' for domain index 'd'
 * (-1: all domains pooled) into mean[c], var[c].
 * @return 1 if served, 0 if the layer has nothing to serve, NS_ENOMEM. */
typedef int (*serve_fn)(const nsd_run_t *run, const nsd_layer_t *l, const nsd_stats_query_t *q,
                        long d, double *mean, double *var, served_t *sv);

static int serve_ema(const nsd_run_t *run, const nsd_layer_t *l, const nsd_stats_query_t *q, long d,
                     double *mean, double *var, served_t *sv)
{
    (void)q;
    const nsd_pop_t *pop = d < 0 ? l->pooled : ((size_t)d < l->cap_pops ? l->pops[d] : NULL);
    nsd_pop_ema_read(pop, l->channels, run->st.cfg.ema_debias, mean, var);
    sv->step = pop ? pop->ema_step : -1;
    sv->nbt = pop ? pop->ema.num_batches_tracked : 0;
    sv->samples = 0;
    return 1;
}

static int serve_precise(const nsd_run_t *run, const nsd_layer_t *l, const nsd_stats_query_t *q,
                         long d, double *mean, double *var, served_t *sv)
{
    size_t c = l->channels;
    if (d >= 0) {
        const nsd_pop_t *pop = (size_t)d < l->cap_pops ? l->pops[d] : NULL;
        if (pop == NULL || ns_precise_read(&pop->precise, c, q->biased, mean, var) != 0)
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
             ns_precise_read(&acc, c, q->biased, mean, var) == 0;
    sv->step = -1;
    for (size_t k = 0; k < n; k++)
        if (l->pops[k] != NULL && l->pops[k]->precise_step > sv->step)
            sv->step = l->pops[k]->precise_step;
    sv->nbt = acc.num_batches;
    sv->samples = acc.n;
    free(tmp);
    return ok;
}

/* The last finalized step: pooled, or the domain's own last step. */
static int serve_last(const nsd_run_t *run, const nsd_layer_t *l, const nsd_stats_query_t *q,
                      long d, double *mean, double *var, served_t *sv)
{
    (void)run;
    (void)q;
    size_t c = l->channels;
    /* The pooled scope's last values are the pooled state's. */
    const nsd_pop_t *pop = d < 0 ? l->pooled : (size_t)d < l->cap_pops ? l->pops[d] : NULL;
    if (pop == NULL || pop->last_mean == NULL)
        return 0;
    memcpy(mean, pop->last_mean, c * sizeof(double)); /* one block: var follows */
    memcpy(var, pop->last_mean + c, c * sizeof(double));
    sv->step = pop->last_step;
    sv->samples = pop->last_count;
    return 1;
}

/* Which served_t field a scalar of the answer carries. */
enum { SV_NBT = 1, SV_SAMPLES, SV_STEP };

typedef struct scalar_s {
    const char *name;
    int what; /* SV_*; 0 ends the list */
} scalar_t;

/* Everything that differs between sources, so the view itself does not
 * branch on the source. */
typedef struct source_s {
    const char *name; /* as the query names it, and in the answer's meta */
    serve_fn serve;
    int mixable; /* serves a mixture of domains */
    int biased;  /* serves variance=biased */
    const char *arrays[2];
    scalar_t scalars[4];
    /* the source's own meta entries */
    size_t (*meta)(const nsd_run_state_t *st, long d, ns_meta_t *m);
} source_t;

static size_t meta_precise(const nsd_run_state_t *st, long d, ns_meta_t *m)
{
    uint64_t gen = d >= 0 ? st->domain_gen[d] : st->precise_generation;
    m[0] = (ns_meta_t){.key = "generation", .kind = NS_META_INT, .num = (int64_t)gen};
    return 1;
}

static size_t meta_ema(const nsd_run_state_t *st, long d, ns_meta_t *m)
{
    (void)d;
    m[0] = (ns_meta_t){.key = "debiased", .kind = NS_META_BOOL, .num = st->cfg.ema_debias ? 1 : 0};
    return 1;
}

static const source_t SOURCES[] = {
    [NSD_SOURCE_EMA] =
        {
            .name = "ema",
            .serve = serve_ema,
            .mixable = 1,
            .arrays = {NS_FIELD_RUNNING_MEAN, NS_FIELD_RUNNING_VAR},
            .scalars = {{NS_FIELD_NUM_BATCHES_TRACKED, SV_NBT}, {NS_FIELD_STEP, SV_STEP}},
            .meta = meta_ema,
        },
    [NSD_SOURCE_PRECISE] =
        {
            .name = "precise",
            .serve = serve_precise,
            .mixable = 1,
            .biased = 1,
            .arrays = {NS_FIELD_RUNNING_MEAN, NS_FIELD_RUNNING_VAR},
            .scalars = {{NS_FIELD_NUM_BATCHES, SV_NBT},
                        {NS_FIELD_NUM_SAMPLES, SV_SAMPLES},
                        {NS_FIELD_STEP, SV_STEP}},
            .meta = meta_precise,
        },
    [NSD_SOURCE_LAST] =
        {
            .name = "last",
            .serve = serve_last,
            .arrays = {NS_FIELD_MEAN, NS_FIELD_VAR},
            .scalars = {{NS_FIELD_COUNT, SV_SAMPLES}, {NS_FIELD_STEP, SV_STEP}},
        },
};

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
        rc = SOURCES[q->source].serve(run, l, q, doms[i], m, v, &one);
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

/* The checks of a query, and the domain indexes it names: *d for one
 * domain (-1 pooled), doms[] for a mixture. Nothing is allocated. */
static int check_query(const nsd_run_t *run, const nsd_stats_query_t *q, long *d, long *doms,
                       ns_error_detail_t *err)
{
    const nsd_run_state_t *st = &run->st;
    const source_t *src = &SOURCES[q->source];
    const char *dname = q->domain[0] ? q->domain : "*";
    *d = -1;
    if (q->biased && !src->biased)
        return ns_error_set(err, NS_EINVAL, "variance", "biased is only served by source=precise");
    if (!src->mixable && q->n_mixture > 0)
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
    if (q->n_mixture == 0 && strcmp(dname, "*") != 0) {
        *d = nsd_run_find_domain(st, dname);
        if (*d < 0)
            return ns_error_set(err, NS_ENOTFOUND, "domain", "no domain '%s' in run '%s'", dname,
                                run->name);
    }
    for (size_t i = 0; i < q->n_layers; i++)
        if (nsd_run_find_layer(st, q->layers[i]) == NULL)
            return ns_error_set(err, NS_ENOTFOUND, "layers", "no layer '%s' in run '%s'",
                                q->layers[i], run->name);
    return 0;
}

/* One layer of the answer, named as its source names it. */
static void out_layer(ns_out_layer_t *o, const source_t *src, char *name, size_t c, double *block,
                      const served_t *sv)
{
    o->name = name;
    o->channels = c;
    o->n_arrays = 2;
    o->arrays[0] = block;
    o->arrays[1] = block + c;
    o->array_names[0] = src->arrays[0];
    o->array_names[1] = src->arrays[1];
    o->n_scalars = 0;
    for (const scalar_t *k = src->scalars; k->what != 0; k++) {
        o->scalar_names[o->n_scalars] = k->name;
        o->scalars[o->n_scalars++] = k->what == SV_NBT       ? (int64_t)sv->nbt
                                     : k->what == SV_SAMPLES ? (int64_t)sv->samples
                                                             : sv->step;
    }
}

/* Every selected layer with something to serve. @return 0 and the highest
 * step served in *max_step, or NS_ENOMEM. */
static int serve_layers(const nsd_run_t *run, const nsd_stats_query_t *q, long d, const long *doms,
                        nsd_stats_t *out, int64_t *max_step)
{
    const nsd_run_state_t *st = &run->st;
    const source_t *src = &SOURCES[q->source];
    *max_step = -1;
    for (size_t i = 0; i < st->n_layers; i++) {
        const nsd_layer_t *l = st->layers[i];
        size_t c = l->channels;
        if (c == 0 || !layer_selected(q, l->name))
            continue;
        double *block = malloc(2 * c * sizeof(double));
        char *name = strdup(l->name);
        served_t sv = {0};
        int rc = NS_ENOMEM;
        if (block != NULL && name != NULL)
            rc = q->n_mixture > 0 ? serve_mixture(run, l, q, doms, block, block + c, &sv)
                                  : src->serve(run, l, q, d, block, block + c, &sv);
        if (rc <= 0) {
            free(block);
            free(name);
            if (rc == NS_ENOMEM)
                return NS_ENOMEM;
            continue; /* nothing to serve (e.g. precise without samples): skipped */
        }
        out_layer(&out->layers[out->n_layers++], src, name, c, block, &sv);
        if (sv.step > *max_step)
            *max_step = sv.step;
    }
    return 0;
}

/* The answer's meta: run, source, domain or mixture, step, the source's own. */
static void fill_meta(stats_impl_t *s, const nsd_run_t *run, const nsd_stats_query_t *q, long d,
                      int64_t max_step)
{
    const source_t *src = &SOURCES[q->source];
    snprintf(s->run, sizeof(s->run), "%s", run->name);
    ns_meta_t *m = s->meta;
    size_t nm = 0;
    m[nm++] = (ns_meta_t){.key = "run", .kind = NS_META_STRING, .str = s->run};
    m[nm++] = (ns_meta_t){.key = "source", .kind = NS_META_STRING, .str = src->name};
    if (q->n_mixture > 0) {
        size_t off = 0;
        for (size_t i = 0; i < q->n_mixture; i++)
            off += (size_t)snprintf(s->mixture + off, sizeof(s->mixture) - off, "%s%s:%g",
                                    i ? "," : "", q->mixture[i].domain, q->mixture[i].weight);
        snprintf(s->domain, sizeof(s->domain), "mixture");
        m[nm++] = (ns_meta_t){.key = "domain", .kind = NS_META_STRING, .str = s->domain};
        m[nm++] = (ns_meta_t){.key = "mixture", .kind = NS_META_STRING, .str = s->mixture};
    } else {
        snprintf(s->domain, sizeof(s->domain), "%s", q->domain[0] ? q->domain : "*");
        m[nm++] = (ns_meta_t){.key = "domain", .kind = NS_META_STRING, .str = s->domain};
    }
    m[nm++] = (ns_meta_t){.key = NS_FIELD_STEP, .kind = NS_META_INT, .num = max_step};
    if (src->meta != NULL)
        nm += src->meta(&run->st, d, m + nm);
    s->pub.meta = s->meta;
    s->pub.n_meta = nm;
}

int nsd_run_stats(nsd_run_t *run, const nsd_stats_query_t *q, nsd_stats_t **dst,
                  ns_error_detail_t *err)
{
    *dst = NULL;
    long d, doms[NSD_MIXTURE_MAX];
    int rc = check_query(run, q, &d, doms, err);
    if (rc != 0)
        return rc;
    stats_impl_t *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return ns_error_set(err, NS_ENOMEM, "", "out of memory");
    s->pub.layers = calloc(run->st.n_layers ? run->st.n_layers : 1, sizeof(ns_out_layer_t));
    int64_t max_step = -1;
    if (s->pub.layers == NULL || serve_layers(run, q, d, doms, &s->pub, &max_step) != 0) {
        nsd_stats_free(&s->pub);
        return ns_error_set(err, NS_ENOMEM, "", "out of memory");
    }
    fill_meta(s, run, q, d, max_step);
    *dst = &s->pub;
    return 0;
}
