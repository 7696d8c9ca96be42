/* nsd_fixture.h - helpers shared by the registry unit tests (test_registry.c,
 * test_barrier.c, test_population.c): building reports through the real
 * decoder, capturing /sync callbacks, reading served statistics, and long
 * double reference statistics computed independently of libnscore. */
#ifndef NSD_FIXTURE_H
#define NSD_FIXTURE_H

#include <check.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <normstat/proto.h>

#include "harness.h"
#include "registry/registry.h"

/* One layer of a test report. mean/var NULL: a count-0 layer without arrays. */
typedef struct fx_layer_s {
    const char *name;
    uint64_t count;
    size_t channels;
    const float *mean;
    const float *var;
} fx_layer_t;

/* Options of a test report; zero means the protocol default. */
typedef struct fx_opts_s {
    const char *domain;
    const char *update; /* JSON array text, e.g. "[\"precise\"]" */
    const char *scope;  /* "domain" */
    int64_t world_size; /* 0: absent */
} fx_opts_t;

static inline void fx_append(char **buf, size_t *len, size_t *cap, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static inline void fx_append(char **buf, size_t *len, size_t *cap, const char *fmt, ...)
{
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(*buf + *len, *cap - *len, fmt, ap);
        va_end(ap);
        ck_assert_int_ge(n, 0);
        if ((size_t)n < *cap - *len) {
            *len += (size_t)n;
            return;
        }
        *cap = 2 * *cap + (size_t)n;
        *buf = realloc(*buf, *cap);
        ck_assert_ptr_nonnull(*buf);
    }
}

/* A decoded report (through ns_report_decode_json, as the daemon does).
 * Floats are printed with 17 digits, so they decode to the same float. */
static inline ns_report_t *fx_report(uint64_t step, uint32_t worker, const fx_opts_t *o,
                                     const fx_layer_t *layers, size_t n_layers)
{
    size_t len = 0, cap = 256;
    char *buf = malloc(cap);
    ck_assert_ptr_nonnull(buf);
    fx_append(&buf, &len, &cap, "{\"step\": %llu, \"worker\": %u", (unsigned long long)step,
              worker);
    if (o && o->domain)
        fx_append(&buf, &len, &cap, ", \"domain\": \"%s\"", o->domain);
    if (o && o->update)
        fx_append(&buf, &len, &cap, ", \"update\": %s", o->update);
    if (o && o->scope)
        fx_append(&buf, &len, &cap, ", \"scope\": \"%s\"", o->scope);
    if (o && o->world_size)
        fx_append(&buf, &len, &cap, ", \"world_size\": %lld", (long long)o->world_size);
    fx_append(&buf, &len, &cap, ", \"layers\": {");
    for (size_t i = 0; i < n_layers; i++) {
        const fx_layer_t *l = &layers[i];
        fx_append(&buf, &len, &cap, "%s\"%s\": {\"count\": %llu", i ? ", " : "", l->name,
                  (unsigned long long)l->count);
        if (l->mean) {
            fx_append(&buf, &len, &cap, ", \"mean\": [");
            for (size_t c = 0; c < l->channels; c++)
                fx_append(&buf, &len, &cap, "%s%.17g", c ? "," : "", (double)l->mean[c]);
            fx_append(&buf, &len, &cap, "], \"var\": [");
            for (size_t c = 0; c < l->channels; c++)
                fx_append(&buf, &len, &cap, "%s%.17g", c ? "," : "", (double)l->var[c]);
            fx_append(&buf, &len, &cap, "]");
        }
        fx_append(&buf, &len, &cap, "}");
    }
    fx_append(&buf, &len, &cap, "}}");
    ns_report_t *r = NULL;
    ns_error_detail_t err = {0};
    int rc = ns_report_decode_json(&r, buf, len, &err);
    ck_assert_msg(rc == 0, "decode failed: %s (%s)", err.message, buf);
    free(buf);
    return r;
}

/* Move the report's arrays into one buffer the report only borrows (as a
 * safetensors body read in place). @return the buffer: the caller frees it
 * once the report is consumed, and may overwrite it first. */
static inline float *fx_borrow(ns_report_t *r)
{
    size_t total = 0;
    for (size_t i = 0; i < r->n_layers; i++)
        total += r->layers[i].mean ? 2 * r->layers[i].channels : 0;
    float *body = malloc((total ? total : 1) * sizeof(float)), *at = body;
    ck_assert_ptr_nonnull(body);
    for (size_t i = 0; i < r->n_layers; i++) {
        ns_layer_report_t *l = &r->layers[i];
        if (l->mean == NULL || l->mean64 != NULL)
            continue;
        memcpy(at, l->mean, l->channels * sizeof(float));
        memcpy(at + l->channels, l->var, l->channels * sizeof(float));
        free(l->mean);
        free(l->var);
        l->mean = at;
        l->var = at + l->channels;
        l->borrowed = 1;
        at += 2 * l->channels;
    }
    return body;
}

/* Report one layer; @return the registry's code. */
static inline int fx_send(nsd_registry_t *reg, const char *run, uint64_t step, uint32_t worker,
                          const fx_opts_t *o, const fx_layer_t *layers, size_t n_layers,
                          uint64_t now_ms, nsd_sync_cb cb, void *arg)
{
    ns_error_detail_t err = {0};
    int rc = nsd_registry_report(reg, run, fx_report(step, worker, o, layers, n_layers), now_ms, cb,
                                 arg, &err);
    if (rc != 0)
        ck_assert_int_eq(err.code, rc);
    return rc;
}

/* A captured /sync answer. */
typedef struct fx_sync_s {
    int calls;
    nsd_sync_result_t *res;
} fx_sync_t;

static inline void fx_sync_cb(void *arg, nsd_sync_result_t *res)
{
    fx_sync_t *s = arg;
    s->calls++;
    nsd_sync_result_free(s->res);
    s->res = res;
}

static inline void fx_sync_clear(fx_sync_t *s)
{
    nsd_sync_result_free(s->res);
    s->res = NULL;
    s->calls = 0;
}

/* Served statistics: must succeed. */
static inline nsd_stats_t *fx_stats(nsd_registry_t *reg, const char *run, nsd_source_t source,
                                    const char *domain)
{
    nsd_stats_query_t q;
    memset(&q, 0, sizeof(q));
    q.source = source;
    if (domain)
        snprintf(q.domain, sizeof(q.domain), "%s", domain);
    nsd_stats_t *s = NULL;
    ns_error_detail_t err = {0};
    int rc = nsd_registry_stats(reg, run, &q, &s, &err);
    ck_assert_msg(rc == 0, "stats failed: %s", err.message);
    return s;
}

static inline const ns_out_layer_t *fx_layer_of(const nsd_stats_t *s, const char *name)
{
    for (size_t i = 0; i < s->n_layers; i++)
        if (strcmp(s->layers[i].name, name) == 0)
            return &s->layers[i];
    return NULL;
}

static inline int64_t fx_scalar(const ns_out_layer_t *l, const char *name)
{
    for (size_t i = 0; i < l->n_scalars; i++)
        if (strcmp(l->scalar_names[i], name) == 0)
            return l->scalars[i];
    ck_abort_msg("no scalar %s", name);
    return 0;
}

static inline const ns_meta_t *fx_meta(const nsd_stats_t *s, const char *key)
{
    for (size_t i = 0; i < s->n_meta; i++)
        if (strcmp(s->meta[i].key, key) == 0)
            return &s->meta[i];
    return NULL;
}

/* The whole applied state of a run as a canonical string (checkpoint JSON
 * with sorted keys): two states are identical iff the strings are. */
static inline char *fx_snapshot(nsd_registry_t *reg, const char *run, uint64_t now_ms)
{
    json_t *cp = nsd_registry_checkpoint_export(reg, run, NULL);
    json_t *info = nsd_registry_run_json(reg, run, now_ms, NULL);
    ck_assert_ptr_nonnull(cp);
    ck_assert_ptr_nonnull(info);
    json_t *both = json_pack("{s:o, s:o}", "checkpoint", cp, "info", info);
    char *s = json_dumps(both, JSON_SORT_KEYS | JSON_COMPACT);
    json_decref(both);
    ck_assert_ptr_nonnull(s);
    return s;
}

/* Reference combination of arrivals in long double (no libnscore):
 * N = sum n, mean = sum n mean / N, var = sum n (var + (mean - gmean)^2) / N. */
static inline uint64_t fx_ref_combine(size_t k, const uint64_t *n, const float *const *mean,
                                      const float *const *var, size_t channels, long double *gmean,
                                      long double *gvar)
{
    uint64_t N = 0;
    for (size_t w = 0; w < k; w++)
        N += n[w];
    for (size_t c = 0; c < channels; c++) {
        long double s = 0, v = 0;
        for (size_t w = 0; w < k; w++)
            if (n[w])
                s += (long double)n[w] * mean[w][c];
        long double m = N ? s / N : 0;
        for (size_t w = 0; w < k; w++)
            if (n[w]) {
                long double d = (long double)mean[w][c] - m;
                v += (long double)n[w] * ((long double)var[w][c] + d * d);
            }
        gmean[c] = m;
        gvar[c] = N ? v / N : 0;
    }
    return N;
}

/* |got - want| <= tol * max(1, |want|) */
static inline void fx_close(double got, long double want, double tol, const char *what, size_t c)
{
    long double scale = fabsl(want) > 1 ? fabsl(want) : 1;
    ck_assert_msg(fabsl((long double)got - want) <= tol * scale, "%s[%zu]: got %.17g want %.17Lg",
                  what, c, got, want);
}

static inline void fx_random_floats(uint64_t *rng, float *dst, size_t n, double lo, double hi)
{
    for (size_t i = 0; i < n; i++)
        dst[i] = (float)(lo + (hi - lo) * ns_test_uniform(rng));
}

#endif /* NSD_FIXTURE_H */
