/* client_trainer.c - a miniature trainer on libnormstat, driven by
 * test_cli.py: it creates a run, reports every step of every worker through
 * /sync concurrently on one libuv loop (the asynchronous client), reads the
 * EMA into float buffers, and round-trips a checkpoint through a file. It
 * prints what it received as JSON for the script to compare against its own
 * reference computation.
 *
 * usage: client_trainer URL RUN INPUT.json OUTPUT.json CHECKPOINT_FILE
 * INPUT: {"world_size": W, "momentum": m, "layers": {"bn1": C, ...},
 *         "steps": [[{"bn1": {"count": n, "mean": [...], "var": [...]}, ...} per worker]]} */
#include <normstat/client.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <uv.h>

enum { MAX_WORKERS = 8, MAX_LAYERS = 16 };

typedef struct arrival_s {
    int done, status;
    char message[512];
    ns_result_t *result;
} arrival_t;

static void on_sync(int status, const ns_error_detail_t *err, ns_result_t *result, void *arg)
{
    arrival_t *a = arg;
    a->done = 1;
    a->status = status;
    if (status && err)
        snprintf(a->message, sizeof(a->message), "%s", err->message);
    a->result = result;
}

static json_t *floats(const float *v, size_t n)
{
    json_t *a = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(a, json_real((double)v[i]));
    return a;
}

static json_t *result_json(const ns_result_t *res)
{
    json_t *o = json_object();
    for (size_t i = 0; i < ns_result_count(res); i++) {
        const ns_result_layer_t *l = ns_result_at(res, i);
        json_object_set_new(o, l->name,
                            json_pack("{s:I, s:I, s:o, s:o}", "count", (json_int_t)l->count,
                                      "num_batches", (json_int_t)l->num_batches, "mean",
                                      floats(l->mean, l->channels), "var",
                                      floats(l->var, l->channels)));
    }
    return o;
}

static int fail(const char *what, int rc, const ns_error_detail_t *err)
{
    fprintf(stderr, "client_trainer: %s: %s (%s)\n", what,
            err && err->code ? err->message : ns_client_strerror(rc), ns_client_error_name(rc));
    return 1;
}

/* EMA of every layer into caller buffers, as a JSON object. */
static int ema_into_buffers(ns_client_t *c, const char *run, json_t *layers, json_t **dst)
{
    ns_error_detail_t err = {0};
    ns_result_t *res = NULL;
    const char *name;
    json_t *cv;
    int rc = ns_client_stats(c, run, NULL, &res, &err);
    if (rc)
        return fail("stats", rc, &err);
    *dst = json_object();
    json_object_foreach(layers, name, cv)
    {
        size_t channels = (size_t)json_integer_value(cv);
        float *mean = calloc(channels, sizeof(float)), *var = calloc(channels, sizeof(float));
        long n = ns_result_copy(res, name, mean, var, channels);
        if (n != (long)channels) {
            fprintf(stderr, "client_trainer: %s: copy gave %ld\n", name, n);
            rc = 1;
        }
        json_object_set_new(*dst, name,
                            json_pack("{s:o, s:o, s:I}", "mean", floats(mean, channels), "var",
                                      floats(var, channels), "num_batches",
                                      (json_int_t)ns_result_find(res, name)->num_batches));
        free(mean);
        free(var);
    }
    ns_result_free(res);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc != 6) {
        fprintf(stderr, "usage: client_trainer URL RUN INPUT OUTPUT CHECKPOINT\n");
        return 2;
    }
    const char *url = argv[1], *run = argv[2];
    json_error_t jerr;
    json_t *in = json_load_file(argv[3], 0, &jerr);
    if (in == NULL) {
        fprintf(stderr, "client_trainer: %s: %s\n", argv[3], jerr.text);
        return 2;
    }
    json_t *out = json_object(), *syncs = json_array(), *layers = json_object_get(in, "layers");
    ns_client_options_t opts;
    ns_error_detail_t err = {0};
    ns_client_t *c = NULL;
    ns_client_async_t *ac = NULL;
    uv_loop_t loop;
    int rc = 1;

    ns_client_options_default(&opts);
    opts.url = url;
    opts.timeout_ms = 20000;
    /* As the CLI takes them: an https URL's CA file and a bearer token. */
    opts.cacert = getenv("NORMSTAT_CACERT");
    opts.token = getenv("NORMSTAT_TOKEN");
    if (ns_client_create(&c, &opts, &err) || uv_loop_init(&loop) ||
        ns_client_async_create(&ac, &loop, &opts, &err))
        return fail("create", err.code, &err);

    ns_run_config_t cfg;
    ns_run_config_defaults(&cfg);
    cfg.has_world_size = cfg.has_momentum = 1;
    cfg.world_size = (uint32_t)json_integer_value(json_object_get(in, "world_size"));
    cfg.momentum = json_is_null(json_object_get(in, "momentum"))
                       ? NS_MOMENTUM_CUMULATIVE
                       : json_number_value(json_object_get(in, "momentum"));
    int created = 0;
    if ((rc = ns_client_run_put(c, run, &cfg, &created, NULL, &err)))
        return fail("run put", rc, &err);

    size_t s;
    json_t *step;
    json_array_foreach(json_object_get(in, "steps"), s, step)
    {
        size_t n_workers = json_array_size(step), w;
        arrival_t arrivals[MAX_WORKERS] = {0};
        ns_layer_report_t lr[MAX_WORKERS][MAX_LAYERS];
        ns_report_t reps[MAX_WORKERS];
        json_t *wl;
        memset(lr, 0, sizeof(lr));
        if (n_workers > MAX_WORKERS) {
            fprintf(stderr, "client_trainer: at most %d workers\n", MAX_WORKERS);
            return 2;
        }
        /* Every worker's /sync is queued before the loop runs: they are in
         * flight together, as the workers of one step are. */
        json_array_foreach(step, w, wl)
        {
            const char *name;
            json_t *lj;
            size_t k = 0;
            memset(&reps[w], 0, sizeof(reps[w]));
            if (json_object_size(wl) > MAX_LAYERS) {
                fprintf(stderr, "client_trainer: at most %d layers\n", MAX_LAYERS);
                return 2;
            }
            json_object_foreach(wl, name, lj)
            {
                ns_layer_report_t *L = &lr[w][k++];
                json_t *m = json_object_get(lj, "mean"), *v = json_object_get(lj, "var");
                snprintf(L->name, sizeof(L->name), "%s", name);
                L->count = (uint64_t)json_integer_value(json_object_get(lj, "count"));
                L->channels = json_array_size(m);
                float *mean = malloc((L->channels + 1) * sizeof(float));
                float *var = malloc((L->channels + 1) * sizeof(float));
                for (size_t i = 0; i < L->channels; i++) {
                    mean[i] = (float)json_number_value(json_array_get(m, i));
                    var[i] = (float)json_number_value(json_array_get(v, i));
                }
                L->mean = mean;
                L->var = var;
            }
            reps[w].step = s + 1;
            reps[w].worker = (uint32_t)w;
            reps[w].update = NS_UPDATE_EMA | NS_UPDATE_PRECISE;
            reps[w].world_size = -1;
            reps[w].n_layers = k;
            reps[w].layers = lr[w];
            if ((rc = ns_client_async_sync(ac, run, &reps[w],
                                           w % 2 ? NS_FORMAT_SAFETENSORS : NS_FORMAT_JSON, on_sync,
                                           &arrivals[w], &err)))
                return fail("async sync", rc, &err);
            for (size_t i = 0; i < k; i++) {
                /* Encoded when queued: the arrays may go at once. */
                free((float *)lr[w][i].mean);
                free((float *)lr[w][i].var);
            }
        }
        if (ns_client_async_pending(ac) != n_workers) {
            fprintf(stderr, "client_trainer: %zu pending, expected %zu\n",
                    ns_client_async_pending(ac), n_workers);
            return 1;
        }
        uv_run(&loop, UV_RUN_DEFAULT);
        json_t *per_worker = json_array();
        for (w = 0; w < n_workers; w++) {
            if (!arrivals[w].done || arrivals[w].status) {
                fprintf(stderr, "client_trainer: step %zu worker %zu: %s\n", s + 1, w,
                        arrivals[w].done ? arrivals[w].message : "no callback");
                return 1;
            }
            json_array_append_new(
                per_worker, json_pack("{s:I, s:b, s:I, s:o}", "step",
                                      (json_int_t)ns_result_step(arrivals[w].result), "complete",
                                      ns_result_complete(arrivals[w].result), "workers",
                                      (json_int_t)ns_result_workers(arrivals[w].result), "layers",
                                      result_json(arrivals[w].result)));
            ns_result_free(arrivals[w].result);
        }
        json_array_append_new(syncs, per_worker);
    }
    json_object_set_new(out, "created", json_boolean(created));
    json_object_set_new(out, "sync", syncs);

    json_t *ema = NULL, *ema_after = NULL;
    if (ema_into_buffers(c, run, layers, &ema))
        return 1;
    json_object_set_new(out, "ema", ema);

    /* Checkpoint: save to a file, delete the run, restore, read again. */
    if ((rc = ns_client_checkpoint_save(c, run, argv[5], &err)))
        return fail("checkpoint save", rc, &err);
    if ((rc = ns_client_run_delete(c, run, &err)))
        return fail("delete", rc, &err);
    ns_result_t *gone = NULL;
    ns_error_detail_t gerr = {0};
    int gone_rc = ns_client_stats(c, run, NULL, &gone, &gerr);
    json_object_set_new(out, "after_delete", json_string(ns_client_error_name(gone_rc)));
    if ((rc = ns_client_checkpoint_restore(c, run, argv[5], &err)))
        return fail("checkpoint restore", rc, &err);
    if (ema_into_buffers(c, run, layers, &ema_after))
        return 1;
    json_object_set_new(out, "ema_restored", ema_after);

    ns_client_async_free(ac);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    ns_client_free(c);
    rc = json_dump_file(out, argv[4], JSON_REAL_PRECISION(17)) ? 1 : 0;
    json_decref(out);
    json_decref(in);
    return rc;
}
