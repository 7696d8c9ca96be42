/* run_health.c - a run's health in numbers: steps applied, pending and
 * skipped, the worst drift, the largest worker lag, rejections by reason,
 * and the limit on logging those rejections (registry.h). */
#include "run_health.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "drift.h"
#include "registry_internal.h"

static const int rejection_codes[NSD_REJECTION_REASONS] = {
#define CODE(owner, name, code, status, wire, msg) code,
    NS_WIRE_ERROR_MAP(CODE)
#undef CODE
};

int nsd_rejection_code(size_t i)
{
    return i < NSD_REJECTION_REASONS ? rejection_codes[i] : 0;
}

static size_t rejection_slot(int code)
{
    for (size_t i = 0; i < NSD_REJECTION_REASONS; i++)
        if (rejection_codes[i] == code)
            return i;
    return NSD_REJECTION_REASONS;
}

/* ---------------------------------------------------------------- the log's limit */

/* One budget of lines per second: take a line, or withhold it. */
static int limit_take(uint64_t *window, uint64_t *lines, uint64_t *withheld, uint64_t now_ms,
                      uint64_t *was_withheld)
{
    if (now_ms / 1000 != *window) {
        *window = now_ms / 1000;
        *lines = 0;
    }
    if (*lines >= NSD_REJECTION_LOG_LINES) {
        (*withheld)++;
        return 0;
    }
    (*lines)++;
    *was_withheld = *withheld;
    *withheld = 0;
    return 1;
}

/* Runs that do not exist (a first report refused) share one budget. */
static pthread_mutex_t orphan_lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t orphan_window, orphan_lines, orphan_withheld;

int nsd_registry_note_rejection(nsd_registry_t *reg, const char *name, int code, uint64_t now_ms,
                                uint64_t *withheld)
{
    int rc;
    *withheld = 0;
    /* Shared: the counts are atomic and the limit has a lock of its own. */
    nsd_run_t *run = nsd_registry_lock_run(reg, name, 0, &rc, NULL);
    if (run == NULL) {
        pthread_mutex_lock(&orphan_lock);
        int take = limit_take(&orphan_window, &orphan_lines, &orphan_withheld, now_ms, withheld);
        pthread_mutex_unlock(&orphan_lock);
        return take;
    }
    size_t slot = rejection_slot(code);
    if (slot < NSD_REJECTION_REASONS)
        atomic_fetch_add_explicit(&run->rejections[slot], 1, memory_order_relaxed);
    /* A refusal is activity: a run whose reports all go bad keeps its
     * series in /metrics, where its alerts need them. */
    atomic_store(&run->last_active_ms, now_ms);
    pthread_mutex_lock(&run->log_limit_lock);
    int take = limit_take(&run->log_window, &run->log_lines, &run->log_withheld, now_ms, withheld);
    pthread_mutex_unlock(&run->log_limit_lock);
    nsd_registry_unlock_run(run);
    return take;
}

/* ---------------------------------------------------------------- health */

static uint64_t pending_steps(const nsd_run_state_t *st)
{
    uint64_t n = 0;
    for (size_t i = 0; i < st->n_layers; i++)
        n += st->layers[i]->n_pending;
    return n;
}

/* The largest lag of GET /v1/runs/{run}'s "workers": the highest step any
 * worker reported minus the worker's own highest. -1 if none reported. */
static int64_t worker_lag(const nsd_run_state_t *st)
{
    int64_t highest = -1, lag = -1;
    for (size_t i = 0; i < st->n_layers; i++)
        if (st->layers[i]->max_seen > highest)
            highest = st->layers[i]->max_seen;
    for (uint32_t w = 0; w < st->cfg.world_size; w++) {
        int64_t last = -1;
        for (size_t i = 0; i < st->n_layers; i++) {
            const nsd_layer_t *l = st->layers[i];
            if (w < l->n_workers && l->worker_last[w] > last)
                last = l->worker_last[w];
        }
        if (last >= 0 && highest - last > lag)
            lag = highest - last;
    }
    return lag;
}

json_t *nsd_run_health_json(const nsd_run_t *run)
{
    json_t *rejections = json_object();
    for (size_t i = 0; rejections != NULL && i < NSD_REJECTION_REASONS; i++) {
        uint64_t n = atomic_load_explicit(&run->rejections[i], memory_order_relaxed);
        if (n > 0 && json_object_set_new(rejections, ns_error_name(rejection_codes[i]),
                                         json_integer((json_int_t)n)) != 0) {
            json_decref(rejections);
            rejections = NULL;
        }
    }
    return json_pack("{s:I, s:I, s:I, s:o}", "steps_applied",
                     (json_int_t)atomic_load(&run->steps_applied), "pending",
                     (json_int_t)pending_steps(&run->st), "skipped",
                     (json_int_t)atomic_load(&run->st.skipped_steps), "rejections", rejections);
}

/* A run and when it was last active, read once: the sort must not see the
 * clock move under it. */
typedef struct active_s {
    nsd_run_t *run;
    uint64_t at;
} active_t;

/* Most recently active first, then by name. */
static int active_cmp(const void *pa, const void *pb)
{
    const active_t *a = pa, *b = pb;
    if (a->at != b->at)
        return a->at > b->at ? -1 : 1;
    return strcmp(a->run->name, b->run->name);
}

static int name_cmp(const void *pa, const void *pb)
{
    return strcmp(((const nsd_run_health_t *)pa)->run, ((const nsd_run_health_t *)pb)->run);
}

/* One run's health, under its lock shared and every layer's lock (a
 * consistent cut). @return 0, or 1 if it is gone. */
static int run_health(nsd_registry_t *reg, const char *name, nsd_run_health_t *h)
{
    int rc;
    nsd_run_t *run = nsd_registry_read_run(reg, name, &rc, NULL);
    if (run == NULL)
        return 1;
    snprintf(h->run, sizeof(h->run), "%s", run->name);
    h->last_active_ms = atomic_load(&run->last_active_ms);
    h->steps_applied = atomic_load(&run->steps_applied);
    h->pending_steps = pending_steps(&run->st);
    h->skipped_steps = run->st.skipped_steps;
    h->worker_lag = worker_lag(&run->st);
    for (size_t i = 0; i < NSD_REJECTION_REASONS; i++)
        h->rejections[i] = atomic_load_explicit(&run->rejections[i], memory_order_relaxed);
    if (nsd_run_drift_worst(run, h) != 0)
        h->has_worst = 0; /* out of memory: the run is served without it */
    nsd_registry_end_read(run);
    return 0;
}

int nsd_registry_health(nsd_registry_t *reg, size_t max, nsd_run_health_t **dst, size_t *n)
{
    size_t total;
    *dst = NULL;
    *n = 0;
    nsd_run_t **runs = nsd_registry_map_snapshot(reg, &total);
    if (runs == NULL)
        return NS_ENOMEM;
    size_t keep = total < max ? total : max;
    active_t *order = malloc((total ? total : 1) * sizeof(*order));
    nsd_run_health_t *h = calloc(keep ? keep : 1, sizeof(*h));
    if (order == NULL || h == NULL) {
        free(order);
        free(h);
        nsd_registry_runs_free(runs, total);
        return NS_ENOMEM;
    }
    for (size_t i = 0; i < total; i++)
        order[i] = (active_t){runs[i], atomic_load(&runs[i]->last_active_ms)};
    qsort(order, total, sizeof(*order), active_cmp);
    for (size_t i = 0; i < keep; i++)
        if (run_health(reg, order[i].run->name, &h[*n]) == 0)
            (*n)++;
    free(order);
    nsd_registry_runs_free(runs, total);
    qsort(h, *n, sizeof(*h), name_cmp);
    *dst = h;
    return 0;
}
