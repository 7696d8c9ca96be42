/* run_views.c - a run as JSON: its summary, its configuration, its status
 * (GET /v1/runs and /v1/runs/{run}, see registry.h); the status written as
 * text directly (a tree took ten times the text: 100 MiB for a run of
 * 100k layers). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "drift.h"
#include "history.h"
#include "run.h"
#include "run_health.h"

json_t *nsd_run_summary_json(nsd_run_t *run)
{
    const nsd_run_state_t *st = &run->st;
    size_t pending = 0;
    int64_t step = -1;
    for (size_t i = 0; i < st->n_layers; i++) {
        pending += st->layers[i]->n_pending;
        if (st->layers[i]->last_applied > step)
            step = st->layers[i]->last_applied;
    }
    return json_pack("{s:s, s:I, s:I, s:I, s:I, s:o, s:I}", "run", run->name, "world_size",
                     (json_int_t)st->cfg.world_size, "layers", (json_int_t)st->n_layers, "domains",
                     (json_int_t)st->n_domains, "pending_steps", (json_int_t)pending, "step",
                     json_integer(step), "memory_bytes", (json_int_t)st->memory);
}

json_t *nsd_run_config_json(const ns_run_config_t *cfg)
{
    /* The protocol owns the form; the views embed it as an object. */
    ns_buf_t text = {0};
    if (ns_run_config_encode_json(&text, cfg, NS_RUN_CONFIG_ALL) != 0)
        return NULL;
    json_t *o = json_loadb(text.data, text.len, 0, NULL);
    ns_buf_free(&text);
    return o;
}

/* What the status's text takes at most, besides names: a layer's entry
 * (keys and five integers), a pending step's (keys, four integers) and each
 * worker number in it, a worker's entry, a domain's; the rest (config,
 * counters, health, the worst drift) together. */
#define STATUS_LAYER_TEXT    256u
#define STATUS_PENDING_TEXT  256u
#define STATUS_WORKER_NUMBER 11u
#define STATUS_WORKER_TEXT   96u
#define STATUS_DOMAIN_TEXT   64u
#define STATUS_REST_TEXT     (8192u + 4u * NS_NAME_MAX)
/* The worst drift's rows and scratch, per layer and row (drift_views.c). */
#define STATUS_DRIFT_ROW 96u

uint64_t nsd_run_text_bytes(const nsd_run_t *run)
{
    const nsd_run_state_t *st = &run->st;
    uint64_t text = STATUS_REST_TEXT + (uint64_t)st->cfg.world_size * STATUS_WORKER_TEXT, rows = 0;
    size_t widest = 1;
    for (size_t i = 0; i < st->n_layers; i++) {
        const nsd_layer_t *l = st->layers[i];
        size_t name = strlen(l->name);
        text += STATUS_LAYER_TEXT + name;
        for (size_t k = 0; k < l->n_pending; k++)
            text += STATUS_PENDING_TEXT + name +
                    (uint64_t)l->pending[k]->world_size * STATUS_WORKER_NUMBER;
        rows += st->n_domains + 1;
        widest = l->channels > widest ? l->channels : widest;
    }
    for (size_t d = 0; d < st->n_domains; d++)
        text += STATUS_DOMAIN_TEXT + strlen(st->domains[d]);
    return text + rows * STATUS_DRIFT_ROW + NSD_HIST_SCRATCH * widest * sizeof(double);
}

/* A small tree (config, health, the worst drift) printed into the text. */
static int put_json(ns_buf_t *dst, json_t *j)
{
    char *text = j != NULL ? json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
    json_decref(j);
    if (text == NULL)
        return NS_ENOMEM;
    int rc = ns_buf_append(dst, text, strlen(text));
    free(text);
    return rc;
}

static int layers_text(ns_buf_t *dst, const nsd_run_state_t *st)
{
    int rc = ns_buf_printf(dst, "\"layers\":{");
    for (size_t i = 0; rc == 0 && i < st->n_layers; i++) {
        const nsd_layer_t *l = st->layers[i];
        uint64_t nbt = l->pooled ? l->pooled->ema.num_batches_tracked : 0;
        rc = ns_buf_printf(dst,
                           "%s\"%s\":{\"channels\":%zu,\"step\":%lld,\"finalized_step\":%lld,"
                           "\"%s\":%llu,\"pending_steps\":%zu}",
                           i ? "," : "", l->name, l->channels, (long long)l->last_applied,
                           (long long)l->max_closed, NS_FIELD_NUM_BATCHES_TRACKED,
                           (unsigned long long)nbt, l->n_pending);
    }
    rc = rc ? rc : ns_buf_printf(dst, "},\"domains\":[");
    for (size_t d = 0; rc == 0 && d < st->n_domains; d++)
        rc = ns_buf_printf(dst, "%s{\"domain\":\"%s\",\"generation\":%llu}", d ? "," : "",
                           st->domains[d], (unsigned long long)st->domain_gen[d]);
    return rc ? rc : ns_buf_printf(dst, "]");
}

/* The workers of 'p' that have (present 1) or have not arrived. */
static int workers_text(ns_buf_t *dst, const nsd_pending_t *p, int present)
{
    int rc = ns_buf_printf(dst, "[");
    int first = 1;
    for (uint32_t w = 0; rc == 0 && w < p->world_size; w++)
        if ((p->arrivals[w].present != 0) == present) {
            rc = ns_buf_printf(dst, "%s%u", first ? "" : ",", w);
            first = 0;
        }
    return rc ? rc : ns_buf_printf(dst, "]");
}

static int pending_text(ns_buf_t *dst, const nsd_run_state_t *st, uint64_t now_ms)
{
    int rc = ns_buf_printf(dst, "\"pending\":[");
    int first = 1;
    for (size_t i = 0; rc == 0 && i < st->n_layers; i++) {
        const nsd_layer_t *l = st->layers[i];
        for (size_t k = 0; rc == 0 && k < l->n_pending; k++) {
            const nsd_pending_t *p = l->pending[k];
            rc = ns_buf_printf(
                dst,
                "%s{\"layer\":\"%s\",\"step\":%llu,\"age_ms\":%llu,"
                "\"world_size\":%u,\"arrived\":",
                first ? "" : ",", l->name, (unsigned long long)p->step,
                (unsigned long long)(now_ms > p->created_ms ? now_ms - p->created_ms : 0),
                p->world_size);
            first = 0;
            rc = rc ? rc : workers_text(dst, p, 1);
            rc = rc ? rc : ns_buf_printf(dst, ",\"waiting_for\":");
            rc = rc ? rc : workers_text(dst, p, 0);
            rc = rc ? rc : ns_buf_printf(dst, "}");
        }
    }
    return rc ? rc : ns_buf_printf(dst, "]");
}

/* "workers": each worker's highest step and its lag behind the highest
 * step any worker reported (null if it never reported). */
static int workers_lag_text(ns_buf_t *dst, const nsd_run_state_t *st)
{
    int64_t highest = -1;
    for (size_t i = 0; i < st->n_layers; i++)
        if (st->layers[i]->max_seen > highest)
            highest = st->layers[i]->max_seen;
    int rc = ns_buf_printf(dst, "\"workers\":[");
    for (uint32_t w = 0; rc == 0 && w < st->cfg.world_size; w++) {
        int64_t last = -1;
        for (size_t i = 0; i < st->n_layers; i++) {
            const nsd_layer_t *l = st->layers[i];
            if (w < l->n_workers && l->worker_last[w] > last)
                last = l->worker_last[w];
        }
        char lag[24] = "null";
        if (last >= 0)
            snprintf(lag, sizeof(lag), "%lld", (long long)(highest - last));
        rc = ns_buf_printf(dst, "%s{\"worker\":%u,\"step\":%lld,\"lag\":%s}", w ? "," : "", w,
                           (long long)last, lag);
    }
    return rc ? rc : ns_buf_printf(dst, "]");
}

int nsd_run_text(nsd_run_t *run, uint64_t now_ms, ns_buf_t *dst)
{
    const nsd_run_state_t *st = &run->st;
    int rc = ns_buf_reserve(dst, nsd_run_text_bytes(run));
    rc = rc ? rc : ns_buf_printf(dst, "{\"run\":\"%s\",\"config\":", run->name);
    rc = rc ? rc : put_json(dst, nsd_run_config_json(&st->cfg));
    rc = rc ? rc : ns_buf_printf(dst, ",\"status\":{");
    rc = rc ? rc : layers_text(dst, st);
    rc = rc ? rc
            : ns_buf_printf(dst,
                            ",\"skipped_steps\":%llu,\"precise_generation\":%llu,"
                            "\"memory_bytes\":%llu,",
                            (unsigned long long)atomic_load(&st->skipped_steps),
                            (unsigned long long)st->precise_generation,
                            (unsigned long long)atomic_load(&st->memory));
    rc = rc ? rc : pending_text(dst, st, now_ms);
    rc = rc ? rc : ns_buf_printf(dst, ",");
    rc = rc ? rc : workers_lag_text(dst, st);
    rc = rc ? rc : ns_buf_printf(dst, ",\"drift\":{\"worst\":");
    rc = rc ? rc : put_json(dst, nsd_run_drift_worst_json(run));
    rc = rc ? rc : ns_buf_printf(dst, "},\"health\":");
    rc = rc ? rc : put_json(dst, nsd_run_health_json(run));
    return rc ? rc : ns_buf_printf(dst, "}}");
}
