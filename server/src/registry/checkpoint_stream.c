/* checkpoint_stream.c - a run's checkpoint (the format in checkpoint.h) as
 * compact JSON text, written a piece at a time from a compact copy, for
 * GET /v1/runs/{run}/checkpoint and the store's snapshots.
 *
 * DESIGN
 *  A tree of the whole run cost about 15 times the text (a 100k-layer run
 *  took 858 MB and 3.7 s under the run's lock), and the text alone is
 *  600 bytes a one-channel layer. Under the locks only a compact copy is
 *  taken: per layer its scalars and one slice of a single array of doubles
 *  (no tree, no text), about 300 bytes a one-channel layer. Its size and
 *  the largest piece's text are counted first and reserved from
 *  --max-memory before anything is copied; the answer is then written a
 *  layer at a time while the client reads, with no lock held, and the
 *  reservation is given back when the stream is freed. Doubles are printed
 *  "%.17g" with ".0" added to an integral value (jansson's reals, but for
 *  its exponent without '+' or leading zeros), the bytes GET answered when
 *  it wrote one buffer, so PUT restores the same bits; names need no
 *  escaping (the name grammar has no quote or backslash). test_registry.c
 *  checks that the text parses to a tree equal to nsd_checkpoint_export()'s. */
#define _DEFAULT_SOURCE /* MAP_ANONYMOUS */
#include "checkpoint.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "base/size_limits.h"
#include "json_text.h"
#include "registry_internal.h"

/* A layer's text besides its name, doubles and domains; a domain's besides its name. */
#define LAYER_TEXT_FIXED 512
#define POP_TEXT_FIXED   768

/* An EMA's scalars (its arrays are in the copy's values). */
typedef struct ema_s {
    double decay;
    long long num_batches_tracked, step;
} ema_t;

/* One domain's population of a layer. Values: EMA running_mean,
 * running_var, zero_mean, zero_var, PreciseBN mean, m2, last mean, var. */
typedef struct pop_copy_s {
    size_t domain; /* index in the copy's domains */
    size_t values; /* offset of its 8 * channels doubles */
    ema_t ema;
    long long generation, n, num_batches, precise_step, last_step, last_count;
} pop_copy_t;

/* One layer. Values: the pooled EMA's 4 arrays (has_pooled), the last
 * statistics' mean and var (has_last). */
typedef struct layer_copy_s {
    size_t name;   /* offset in the copy's names */
    size_t values; /* offset of its doubles */
    size_t channels;
    size_t first_pop, n_pops;
    long long step, finalized_step, last_step, last_count;
    int has_pooled, has_last;
    ema_t pooled;
} layer_copy_t;

struct nsd_checkpoint_stream_s {
    nsd_ctx_t *ctx; /* whose --max-memory 'reserved' bytes are counted in */
    uint64_t reserved;
    char run[NS_NAME_MAX + 1];
    ns_run_config_t cfg;
    long long skipped_steps, precise_generation;
    size_t n_domains, n_layers, n_pops, n_values, names_len;
    char (*domains)[NS_NAME_MAX + 1];
    long long *domain_gen;
    layer_copy_t *layers;
    pop_copy_t *pops;
    double *values;
    char *names;
    void *map; /* every array above, in one mapping of map_len bytes */
    size_t map_len;
    size_t next_layer; /* the piece to write: 0 the head, 1 + i layer i, then the tail */
    int done;
};

/* ---------------------------------------------------------------- sizes */

static size_t layer_pops(const nsd_run_state_t *st, const nsd_layer_t *l)
{
    size_t n = 0;
    for (size_t d = 0; d < st->n_domains && d < l->cap_pops; d++)
        n += l->pops[d] != NULL;
    return n;
}

static int layer_has_last(const nsd_layer_t *l)
{
    return l->pooled != NULL && l->pooled->last_mean != NULL && l->channels > 0;
}

static size_t layer_values(const nsd_layer_t *l, size_t n_pops)
{
    size_t c = l->channels;
    return (l->pooled ? 4 * c : 0) + (layer_has_last(l) ? 2 * c : 0) + n_pops * 8 * c;
}

/* The most one piece of text (a layer's) can take. */
static uint64_t layer_text_bound(const nsd_layer_t *l, size_t n_pops, size_t n_values)
{
    return LAYER_TEXT_FIXED + strlen(l->name) + n_pops * (POP_TEXT_FIXED + NS_NAME_MAX) +
           (uint64_t)n_values * NSD_JSON_REAL_MAX;
}

/* The most a stream of the run holds (the run's lock held): its copy, its
 * largest piece, the reader's block. */
static uint64_t stream_bytes(const nsd_run_t *run)
{
    const nsd_run_state_t *st = &run->st;
    uint64_t copy = sizeof(nsd_checkpoint_stream_t) +
                    st->n_domains * (NS_NAME_MAX + 1 + sizeof(long long)) +
                    st->n_layers * sizeof(layer_copy_t);
    uint64_t head = LAYER_TEXT_FIXED + st->n_domains * (POP_TEXT_FIXED + NS_NAME_MAX);
    uint64_t piece = head;
    for (size_t i = 0; i < st->n_layers; i++) {
        const nsd_layer_t *l = st->layers[i];
        size_t pops = layer_pops(st, l), values = layer_values(l, pops);
        copy += pops * sizeof(pop_copy_t) + values * sizeof(double) + strlen(l->name) + 1;
        uint64_t text = layer_text_bound(l, pops, values);
        piece = text > piece ? text : piece;
    }
    /* The piece's buffer grows by doubling; the reader adds its block. */
    return copy + 2 * piece + NSD_STREAM_BLOCK;
}

/* ---------------------------------------------------------------- copy */

void nsd_checkpoint_stream_free(nsd_checkpoint_stream_t *s)
{
    if (s == NULL)
        return;
    if (s->ctx != NULL)
        nsd_mem_release(s->ctx, s->reserved);
    if (s->map != NULL)
        munmap(s->map, s->map_len);
    free(s);
}

static ema_t ema_scalars(const nsd_pop_t *pop)
{
    return (ema_t){pop->ema.decay, (long long)pop->ema.num_batches_tracked,
                   (long long)pop->ema_step};
}

static double *put(double *dst, const double *src, size_t n)
{
    memcpy(dst, src, n * sizeof(double));
    return dst + n;
}

static void copy_pop(nsd_checkpoint_stream_t *s, pop_copy_t *p, size_t d, const nsd_pop_t *pop,
                     size_t c)
{
    p->domain = d;
    p->values = s->n_values;
    p->ema = ema_scalars(pop);
    p->generation = (long long)pop->generation;
    p->n = (long long)pop->precise.n;
    p->num_batches = (long long)pop->precise.num_batches;
    p->precise_step = (long long)pop->precise_step;
    p->last_step = (long long)pop->last_step;
    p->last_count = (long long)pop->last_count;
    double *v = s->values + s->n_values;
    v = put(v, pop->ema.running_mean, c);
    v = put(v, pop->ema.running_var, c);
    v = put(v, pop->ema.zero_mean, c);
    v = put(v, pop->ema.zero_var, c);
    v = put(v, pop->precise.mean, c);
    v = put(v, pop->precise.m2, c);
    if (pop->last_mean != NULL)
        put(v, pop->last_mean, 2 * c);
    else
        memset(v, 0, 2 * c * sizeof(double)); /* not written: last_step < 0 */
    s->n_values += 8 * c;
}

static void copy_layer(nsd_checkpoint_stream_t *s, const nsd_run_state_t *st, const nsd_layer_t *l)
{
    size_t c = l->channels;
    layer_copy_t *dst = &s->layers[s->n_layers++];
    size_t name_len = strlen(l->name) + 1;
    memcpy(s->names + s->names_len, l->name, name_len);
    dst->name = s->names_len;
    s->names_len += name_len;
    dst->values = s->n_values;
    dst->channels = c;
    dst->step = (long long)l->last_applied;
    dst->finalized_step = (long long)l->max_closed;
    dst->has_pooled = l->pooled != NULL;
    dst->has_last = layer_has_last(l);
    dst->last_step = dst->has_last ? (long long)l->pooled->last_step : -1;
    dst->last_count = dst->has_last ? (long long)l->pooled->last_count : 0;
    double *v = s->values + s->n_values;
    if (dst->has_pooled) {
        dst->pooled = ema_scalars(l->pooled);
        v = put(v, l->pooled->ema.running_mean, c);
        v = put(v, l->pooled->ema.running_var, c);
        v = put(v, l->pooled->ema.zero_mean, c);
        v = put(v, l->pooled->ema.zero_var, c);
        s->n_values += 4 * c;
    }
    if (dst->has_last) {
        put(v, l->pooled->last_mean, 2 * c);
        s->n_values += 2 * c;
    }
    dst->first_pop = s->n_pops;
    for (size_t d = 0; d < st->n_domains && d < l->cap_pops; d++)
        if (l->pops[d] != NULL)
            copy_pop(s, &s->pops[s->n_pops++], d, l->pops[d], c);
    dst->n_pops = s->n_pops - dst->first_pop;
}

static size_t round8(size_t n)
{
    return (n + 7) & ~(size_t)7;
}

/* Every array of the copy in one mapping: unmapped, it goes back to the
 * system at once, where malloc would keep it in the arena of the thread
 * that freed it (libmicrohttpd's threads have one each: two answers in
 * turn on two threads left both copies resident). @return 0 or NS_ENOMEM. */
static int map_arrays(nsd_checkpoint_stream_t *s, size_t nd, size_t nl, size_t pops, size_t values,
                      size_t names)
{
    size_t at[6], len = 0;
    size_t sizes[6] = {values * sizeof(*s->values), nl * sizeof(*s->layers),
                       pops * sizeof(*s->pops),     nd * sizeof(*s->domain_gen),
                       nd * sizeof(*s->domains),    names};
    for (size_t i = 0; i < 6; i++) {
        at[i] = len;
        len += round8(sizes[i]);
    }
    len = len ? len : 8;
    char *base = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED)
        return NS_ENOMEM;
    s->map = base;
    s->map_len = len;
    s->values = (double *)(void *)(base + at[0]);
    s->layers = (layer_copy_t *)(void *)(base + at[1]);
    s->pops = (pop_copy_t *)(void *)(base + at[2]);
    s->domain_gen = (long long *)(void *)(base + at[3]);
    s->domains = (char(*)[NS_NAME_MAX + 1])(void *)(base + at[4]);
    s->names = base + at[5];
    return 0;
}

/* The run's lock held (shared, and every layer's); 'reserved' bytes of
 * ctx's budget are the stream's to give back. */
static nsd_checkpoint_stream_t *stream_create(const nsd_run_t *run, nsd_ctx_t *ctx,
                                              uint64_t reserved)
{
    const nsd_run_state_t *st = &run->st;
    size_t nd = st->n_domains, nl = st->n_layers, pops = 0, values = 0, names = 0;
    for (size_t i = 0; i < nl; i++) {
        size_t p = layer_pops(st, st->layers[i]);
        pops += p;
        values += layer_values(st->layers[i], p);
        names += strlen(st->layers[i]->name) + 1;
    }
    nsd_checkpoint_stream_t *s = calloc(1, sizeof(*s));
    if (s == NULL || map_arrays(s, nd, nl, pops, values, names) != 0) {
        free(s);
        return NULL;
    }
    s->ctx = ctx;
    s->reserved = reserved;
    memcpy(s->run, run->name, sizeof(s->run));
    s->cfg = st->cfg;
    s->skipped_steps = (long long)st->skipped_steps;
    s->precise_generation = (long long)st->precise_generation;
    s->n_domains = nd;
    for (size_t d = 0; d < nd; d++) {
        memcpy(s->domains[d], st->domains[d], sizeof(s->domains[d]));
        s->domain_gen[d] = (long long)st->domain_gen[d];
    }
    for (size_t i = 0; i < nl; i++)
        copy_layer(s, st, st->layers[i]);
    return s;
}

/* ---------------------------------------------------------------- text */

static int reals(ns_buf_t *dst, const char *key, const double *src, size_t n)
{
    int rc = ns_buf_printf(dst, "\"%s\":[", key);
    for (size_t i = 0; rc == 0 && i < n; i++) {
        rc = i ? ns_buf_printf(dst, ",") : 0;
        rc = rc ? rc : nsd_json_real(dst, src[i]);
    }
    return rc ? rc : ns_buf_printf(dst, "]");
}

/* An EMA: its scalars and the arrays v[0..4c). */
static int ema(ns_buf_t *dst, const ema_t *e, const double *v, size_t c)
{
    int rc = ns_buf_printf(dst, "{");
    rc = rc ? rc : reals(dst, NS_FIELD_RUNNING_MEAN, v, c);
    rc = rc ? rc : ns_buf_printf(dst, ",");
    rc = rc ? rc : reals(dst, NS_FIELD_RUNNING_VAR, v + c, c);
    rc = rc ? rc : ns_buf_printf(dst, ",");
    rc = rc ? rc : reals(dst, "zero_mean", v + 2 * c, c);
    rc = rc ? rc : ns_buf_printf(dst, ",");
    rc = rc ? rc : reals(dst, "zero_var", v + 3 * c, c);
    rc = rc ? rc : ns_buf_printf(dst, ",\"decay\":");
    rc = rc ? rc : nsd_json_real(dst, e->decay);
    return rc ? rc
              : ns_buf_printf(dst, ",\"%s\":%lld,\"%s\":%lld}", NS_FIELD_NUM_BATCHES_TRACKED,
                              e->num_batches_tracked, NS_FIELD_STEP, e->step);
}

static int precise(ns_buf_t *dst, const pop_copy_t *p, const double *v, size_t c)
{
    int rc = ns_buf_printf(dst, "{\"generation\":%lld,\"n\":%lld,\"%s\":%lld,", p->generation, p->n,
                           NS_FIELD_NUM_BATCHES, p->num_batches);
    rc = rc ? rc : reals(dst, NS_FIELD_MEAN, v, c);
    rc = rc ? rc : ns_buf_printf(dst, ",");
    rc = rc ? rc : reals(dst, "m2", v + c, c);
    return rc ? rc : ns_buf_printf(dst, ",\"%s\":%lld}", NS_FIELD_STEP, p->precise_step);
}

/* {"step", "count", "mean", "var"} of arrays mean[c] then var[c]. */
static int last(ns_buf_t *dst, long long step, long long count, const double *mean_var, size_t c)
{
    int rc =
        ns_buf_printf(dst, "{\"%s\":%lld,\"%s\":%lld,", NS_FIELD_STEP, step, NS_FIELD_COUNT, count);
    rc = rc ? rc : reals(dst, NS_FIELD_MEAN, mean_var, c);
    rc = rc ? rc : ns_buf_printf(dst, ",");
    rc = rc ? rc : reals(dst, NS_FIELD_VAR, mean_var + c, c);
    return rc ? rc : ns_buf_printf(dst, "}");
}

static int layer_domains(ns_buf_t *dst, const nsd_checkpoint_stream_t *s, const layer_copy_t *l)
{
    size_t c = l->channels;
    int rc = ns_buf_printf(dst, "\"domains\":{");
    for (size_t k = 0; rc == 0 && k < l->n_pops; k++) {
        const pop_copy_t *p = &s->pops[l->first_pop + k];
        const double *v = s->values + p->values;
        rc = ns_buf_printf(dst, "%s\"%s\":{\"ema\":", k ? "," : "", s->domains[p->domain]);
        rc = rc ? rc : ema(dst, &p->ema, v, c);
        rc = rc ? rc : ns_buf_printf(dst, ",\"precise\":");
        rc = rc ? rc : precise(dst, p, v + 4 * c, c);
        rc = rc ? rc : ns_buf_printf(dst, ",\"last\":");
        if (rc == 0)
            rc = p->last_step < 0 ? ns_buf_printf(dst, "null")
                                  : last(dst, p->last_step, p->last_count, v + 6 * c, c);
        rc = rc ? rc : ns_buf_printf(dst, "}");
    }
    return rc ? rc : ns_buf_printf(dst, "}");
}

static int layer(ns_buf_t *dst, const nsd_checkpoint_stream_t *s, const layer_copy_t *l)
{
    size_t c = l->channels;
    const double *v = s->values + l->values;
    int rc = ns_buf_printf(dst,
                           "\"%s\":{\"channels\":%zu,\"%s\":%lld,\"finalized_step\":%lld,"
                           "\"pooled\":",
                           s->names + l->name, c, NS_FIELD_STEP, l->step, l->finalized_step);
    if (rc == 0)
        rc = l->has_pooled ? ema(dst, &l->pooled, v, c) : ns_buf_printf(dst, "null");
    rc = rc ? rc : ns_buf_printf(dst, ",\"last\":");
    if (rc == 0)
        rc = l->has_last
                 ? last(dst, l->last_step, l->last_count, v + (l->has_pooled ? 4 * c : 0), c)
                 : ns_buf_printf(dst, "null");
    rc = rc ? rc : ns_buf_printf(dst, ",");
    rc = rc ? rc : layer_domains(dst, s, l);
    return rc ? rc : ns_buf_printf(dst, "}");
}

static int head(ns_buf_t *dst, const nsd_checkpoint_stream_t *s)
{
    json_t *cfg = nsd_run_config_json(&s->cfg);
    char *cfg_text = cfg ? json_dumps(cfg, JSON_COMPACT) : NULL;
    json_decref(cfg);
    if (cfg_text == NULL)
        return NS_ENOMEM;
    int rc = ns_buf_printf(dst,
                           "{\"format\":\"normstat-checkpoint\",\"version\":%d,\"run\":\"%s\","
                           "\"config\":%s,\"skipped_steps\":%lld,\"precise_generation\":%lld,"
                           "\"domains\":[",
                           NSD_CHECKPOINT_VERSION, s->run, cfg_text, s->skipped_steps,
                           s->precise_generation);
    free(cfg_text);
    for (size_t d = 0; rc == 0 && d < s->n_domains; d++)
        rc = ns_buf_printf(dst, "%s{\"domain\":\"%s\",\"generation\":%lld}", d ? "," : "",
                           s->domains[d], s->domain_gen[d]);
    return rc ? rc : ns_buf_printf(dst, "],\"layers\":{");
}

int nsd_checkpoint_stream_next(nsd_checkpoint_stream_t *s, ns_buf_t *dst, int *done)
{
    int rc = 0;
    if (s->done)
        ;
    else if (s->next_layer == 0)
        rc = head(dst, s);
    else if (s->next_layer <= s->n_layers) {
        size_t i = s->next_layer - 1;
        rc = i ? ns_buf_printf(dst, ",") : 0;
        rc = rc ? rc : layer(dst, s, &s->layers[i]);
    } else {
        rc = ns_buf_printf(dst, "}}");
        s->done = 1;
    }
    s->next_layer++;
    *done = s->done;
    return rc;
}

/* ---------------------------------------------------------------- the registry's entry */

nsd_checkpoint_stream_t *nsd_registry_checkpoint_stream(nsd_registry_t *reg, const char *name,
                                                        ns_error_detail_t *err)
{
    int rc;
    nsd_run_t *run = nsd_registry_read_run(reg, name, &rc, err);
    if (run == NULL)
        return NULL;
    uint64_t bytes = stream_bytes(run);
    nsd_checkpoint_stream_t *s = NULL;
    if (nsd_mem_reserve(&reg->ctx, bytes) != 0) {
        uint64_t free_bytes = nsd_registry_mem_free(reg);
        nsd_registry_end_read(run);
        ns_error_set(err, NS_EMEMORY, "",
                     "the checkpoint of run '%s' needs up to %" PRIu64 " bytes; %" PRIu64
                     " of the --max-memory budget of %" PRIu64 " bytes are free",
                     name, bytes, free_bytes, reg->ctx.limits.max_memory);
        return NULL;
    }
    s = stream_create(run, &reg->ctx, bytes);
    nsd_registry_end_read(run);
    if (s == NULL) {
        nsd_mem_release(&reg->ctx, bytes);
        ns_error_set(err, NS_ENOMEM, "", "out of memory");
    }
    return s;
}

nsd_checkpoint_stream_t *nsd_checkpoint_stream_copy(const nsd_run_t *run)
{
    return stream_create(run, NULL, 0);
}

int nsd_checkpoint_stream_text(nsd_checkpoint_stream_t *s, ns_buf_t *dst)
{
    int rc = 0, done = 0;
    while (rc == 0 && !done)
        rc = nsd_checkpoint_stream_next(s, dst, &done);
    if (rc != 0)
        ns_buf_free(dst);
    return rc != 0 ? NS_ENOMEM : 0;
}

char *nsd_checkpoint_text(const nsd_run_t *run)
{
    nsd_checkpoint_stream_t *s = nsd_checkpoint_stream_copy(run);
    ns_buf_t text = {0};
    int rc = s != NULL ? nsd_checkpoint_stream_text(s, &text) : NS_ENOMEM;
    nsd_checkpoint_stream_free(s);
    return rc == 0 ? ns_buf_take(&text, NULL) : NULL;
}

int nsd_registry_checkpoint_text(nsd_registry_t *reg, const char *name, ns_buf_t *dst,
                                 ns_error_detail_t *err)
{
    ns_error_detail_t why = {0};
    nsd_checkpoint_stream_t *s = nsd_registry_checkpoint_stream(reg, name, &why);
    if (s == NULL) {
        if (err != NULL)
            *err = why;
        return why.code != 0 ? why.code : NS_ENOMEM;
    }
    int rc = nsd_checkpoint_stream_text(s, dst);
    nsd_checkpoint_stream_free(s);
    return rc != 0 ? ns_error_set(err, rc, "", "out of memory") : 0;
}
