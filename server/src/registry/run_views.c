/* run_views.c - a run as JSON: its summary, its configuration, its status
 * (GET /v1/runs and /v1/runs/{run}, see registry.h). */
#include "drift.h"
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

/* What nsd_run_json() builds, in bytes of tree (jansson's objects, keys
 * and numbers, with malloc's overhead) and text: measured about 1,000 a
 * one-channel layer (100k layers: 101 MB for a 9.5 MB answer), so with
 * room to spare: */
#define STATUS_BASE_BYTES 16384u   /* config, counters, health, drift's worst */
#define STATUS_LAYER_BYTES 1536u   /* a layer's entry, and its row of the worst drift */
#define STATUS_DOMAIN_BYTES 768u   /* a domain's entry */
#define STATUS_PENDING_BYTES 1024u /* a pending step's entry, and per worker: */
#define STATUS_WORKER_BYTES 128u   /* a number in "arrived" or "waiting_for" */
#define STATUS_WORKERS_BYTES 512u  /* a worker's entry in "workers" */

uint64_t nsd_run_json_bytes(const nsd_run_t *run)
{
    const nsd_run_state_t *st = &run->st;
    uint64_t pending = 0;
    for (size_t i = 0; i < st->n_layers; i++)
        for (size_t k = 0; k < st->layers[i]->n_pending; k++)
            pending += STATUS_PENDING_BYTES +
                       (uint64_t)st->layers[i]->pending[k]->world_size * STATUS_WORKER_BYTES;
    return STATUS_BASE_BYTES + (uint64_t)st->n_layers * (STATUS_LAYER_BYTES + NS_NAME_MAX) +
           (uint64_t)st->n_domains * STATUS_DOMAIN_BYTES +
           (uint64_t)st->cfg.world_size * STATUS_WORKERS_BYTES + pending;
}

json_t *nsd_run_json(nsd_run_t *run, uint64_t now_ms)
{
    const nsd_run_state_t *st = &run->st;
    json_t *layers = json_object(), *domains = json_array(), *pending = json_array();
    json_t *workers = json_array();
    json_t *root = NULL;
    int ok = layers && domains && pending && workers;
    int64_t highest = -1;
    uint32_t ws = st->cfg.world_size;

    for (size_t i = 0; ok && i < st->n_domains; i++)
        ok = json_array_append_new(domains,
                                   json_pack("{s:s, s:I}", "domain", st->domains[i], "generation",
                                             (json_int_t)st->domain_gen[i])) == 0;
    for (size_t i = 0; ok && i < st->n_layers; i++) {
        const nsd_layer_t *l = st->layers[i];
        uint64_t nbt = l->pooled ? l->pooled->ema.num_batches_tracked : 0;
        ok = json_object_set_new(
                 layers, l->name,
                 json_pack("{s:I, s:I, s:I, s:I, s:I}", "channels", (json_int_t)l->channels, "step",
                           (json_int_t)l->last_applied, "finalized_step", (json_int_t)l->max_closed,
                           NS_FIELD_NUM_BATCHES_TRACKED, (json_int_t)nbt, "pending_steps",
                           (json_int_t)l->n_pending)) == 0;
        if (l->max_seen > highest)
            highest = l->max_seen;
        for (size_t k = 0; ok && k < l->n_pending; k++) {
            const nsd_pending_t *p = l->pending[k];
            json_t *arrived = json_array(), *waiting = json_array();
            ok = arrived && waiting;
            for (uint32_t w = 0; ok && w < p->world_size; w++)
                ok = json_array_append_new(p->arrivals[w].present ? arrived : waiting,
                                           json_integer(w)) == 0;
            json_t *e =
                ok ? json_pack("{s:s, s:I, s:I, s:I, s:o, s:o}", "layer", l->name, "step",
                               (json_int_t)p->step, "age_ms",
                               (json_int_t)(now_ms > p->created_ms ? now_ms - p->created_ms : 0),
                               "world_size", (json_int_t)p->world_size, "arrived", arrived,
                               "waiting_for", waiting)
                   : NULL;
            if (e == NULL) {
                ok = 0;
                break;
            }
            ok = json_array_append_new(pending, e) == 0;
        }
    }
    for (uint32_t w = 0; ok && w < ws; w++) {
        int64_t last = -1;
        for (size_t i = 0; i < st->n_layers; i++) {
            const nsd_layer_t *l = st->layers[i];
            if (w < l->n_workers && l->worker_last[w] > last)
                last = l->worker_last[w];
        }
        json_t *lag = last >= 0 ? json_integer(highest - last) : json_null();
        ok = json_array_append_new(workers, json_pack("{s:I, s:I, s:o}", "worker", (json_int_t)w,
                                                      "step", (json_int_t)last, "lag", lag)) == 0;
    }
    if (ok) {
        json_t *status =
            json_pack("{s:O, s:O, s:I, s:I, s:I, s:O, s:O}", "layers", layers, "domains", domains,
                      "skipped_steps", (json_int_t)st->skipped_steps, "precise_generation",
                      (json_int_t)st->precise_generation, "memory_bytes", (json_int_t)st->memory,
                      "pending", pending, "workers", workers);
        if (status != NULL &&
            (json_object_set_new(status, "drift",
                                 json_pack("{s:o}", "worst", nsd_run_drift_worst_json(run))) ||
             json_object_set_new(status, "health", nsd_run_health_json(run)))) {
            json_decref(status);
            status = NULL;
        }
        root = status ? json_pack("{s:s, s:o, s:o}", "run", run->name, "config",
                                  nsd_run_config_json(&st->cfg), "status", status)
                      : NULL;
    }
    json_decref(layers);
    json_decref(domains);
    json_decref(pending);
    json_decref(workers);
    return root;
}
