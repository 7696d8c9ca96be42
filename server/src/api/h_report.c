/* h_report.c - POST /v1/runs/{run}/batches (202 at once) and /sync (answered when the step
 * finalizes). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "answer_cache.h"
#include "base/clock.h"
#include "base/log.h"
#include "base/size_limits.h"
#include "http/http.h"
#include "registry/registry.h"
#include "rejection_log.h"
#include "relay/relay.h"
#include "store/store.h"

/* Decode the body as its Content-Type says, within --max-memory (what
 * decoding may allocate is reserved first, see http/body_budget.c); a
 * malformed body, or one that could not fit, is answered here.
 * @return the report, or NULL when the request was answered. */
static ns_report_t *decode(nsd_request_t *req)
{
    ns_error_detail_t err = {0};
    ns_report_t *report = NULL;
    const char *body = req->body.data ? req->body.data : "";
    int st = req->body_format == NS_FORMAT_SAFETENSORS;
    if (nsd_request_reserve_decoding(req, st ? NS_DECODE_REPORT_SAFETENSORS
                                             : NS_DECODE_REPORT_JSON) != 0) {
        nsd_respond_detail(req, NS_EMEMORY, &req->pending_detail);
        return NULL;
    }
    int rc = st ? ns_report_decode_safetensors(&report, (const uint8_t *)body, req->body.len, &err)
                : ns_report_decode_json_bounded(&report, body, req->body.len, 0, &err);
    /* Not in the fast path's form: jansson decodes it if its tree fits too. */
    if (rc == NS_EMEMORY && !st) {
        if (nsd_request_reserve_decoding(req, NS_DECODE_JSON_TREE) != 0) {
            nsd_respond_detail(req, NS_EMEMORY, &req->pending_detail);
            return NULL;
        }
        memset(&err, 0, sizeof(err));
        rc = ns_report_decode_json(&report, body, req->body.len, &err);
    }
    if (rc != 0) {
        nsd_reject_report(req, rc, &err, NSD_WORKER_UNKNOWN);
        return NULL;
    }
    return report;
}

/* ---------------------------------------------------------------- relay mode */

static void free_relay_answer(void *p)
{
    nsd_relay_answer_release(p);
}

/* The relay's callback (its thread): the upstream answered the node's report. */
static void on_relay_answer(void *arg, nsd_relay_answer_t *answer)
{
    nsd_request_t *req = arg;
    req->user = answer;
    req->user_free = free_relay_answer;
    nsd_request_wake(req);
}

static void relay_sync_answer(nsd_request_t *req)
{
    const char *message = NULL;
    int status = nsd_relay_answer_status(req->user, &message);
    if (status != 0) {
        nsd_respond_error(req, status, message[0] != '\0' ? message : NULL);
        return;
    }
    ns_format_t format = nsd_request_answer_format(req);
    ns_buf_t buf;
    ns_buf_init(&buf, NSD_ANSWER_MAX);
    int rc = nsd_relay_answer_encode(req->user, format, &buf);
    if (rc != 0) {
        nsd_respond_error(req, rc, NULL);
        return;
    }
    nsd_respond_encoded(req, format, &buf);
}

/* A local worker's report to a relay: /batches is answered 202 once the relay
 * accepted it, /sync when the upstream answered the node's report. */
static void relay_report(nsd_request_t *req, ns_report_t *report, int sync)
{
    ns_error_detail_t err = {0};
    uint64_t step = report->step;
    uint32_t worker = report->worker;
    size_t n_layers = report->n_layers;
    if (sync)
        nsd_request_defer(req, relay_sync_answer);
    int rc = nsd_relay_report(req->server->relay, req->run, report, sync ? on_relay_answer : NULL,
                              req, &err);
    if (rc != 0) {
        nsd_respond_detail(req, rc, &err);
        return;
    }
    if (!sync)
        nsd_respond_json(req, 202,
                         json_pack("{s:b, s:I, s:I, s:I}", "accepted", 1, "step", (json_int_t)step,
                                   "worker", (json_int_t)worker, "layers", (json_int_t)n_layers));
}

/* ---------------------------------------------------------------- handlers */

void nsd_h_batches(nsd_request_t *req)
{
    ns_error_detail_t err = {0};
    ns_report_t *report = decode(req);
    if (report == NULL)
        return;
    if (req->server->relay != NULL) {
        relay_report(req, report, 0);
        return;
    }
    uint64_t step = report->step;
    uint32_t worker = report->worker;
    size_t n_layers = report->n_layers;
    int rc = nsd_registry_report(req->server->registry, req->run, report, nsd_now_ms(), NULL, NULL,
                                 &err);
    if (rc != 0) {
        nsd_reject_report(req, rc, &err, (long)worker);
        return;
    }
    nsd_log(NSD_LOG_DEBUG, "report_accepted", "run=%s step=%llu worker=%u layers=%zu sync=0",
            req->run, (unsigned long long)step, worker, n_layers);
    nsd_respond_json(req, 202,
                     json_pack("{s:b, s:I, s:I, s:I}", "accepted", 1, "step", (json_int_t)step,
                               "worker", (json_int_t)worker, "layers", (json_int_t)n_layers));
}

/* A /sync's state: its answer format, and once its step is done the
 * result and the answer, encoded right away (while the commit is awaited). */
typedef struct sync_done_s {
    nsd_sync_result_t *res;
    ns_format_t format;
    int rc; /* of the encoding */
    ns_buf_t body;
} sync_done_t;

static void free_done(void *p)
{
    sync_done_t *d = p;
    nsd_sync_result_free(d->res);
    ns_buf_free(&d->body);
    free(d);
}

static void encode_answer(const nsd_request_t *req, sync_done_t *d);

/* The store's callback: the step (and everything before it) is committed. */
static void on_sync_durable(void *arg, int status)
{
    nsd_request_t *req = arg;
    sync_done_t *d = req->user;
    if (status != 0)
        d->res->status = status;
    nsd_request_wake(req);
}

/* The registry's callback: any thread, exactly once, never under a registry
 * lock, after the finalized step went to the store: the answer waits for its
 * commit. */
static void on_sync_done(void *arg, nsd_sync_result_t *result)
{
    nsd_request_t *req = arg;
    sync_done_t *d = req->user; /* made by nsd_h_sync() */
    d->res = result;
    /* Encoded here, on the thread that finalized the step, one worker after
     * the other: the first encodes, the others copy (answer_cache.h), and
     * the encoding overlaps the wait for the commit. */
    if (result->status == 0)
        encode_answer(req, d);
    if (result->status == 0 && req->server->store != NULL)
        nsd_store_after_commit(req->server->store, on_sync_durable, req);
    else
        nsd_request_wake(req);
}

/* "step 12: workers 2, 3 did not report within the run's sync_timeout_ms
 * (on_timeout drop)": the 504 of a dropped step names its absent workers. */
static void timeout_message(char *dst, size_t dst_cap, const nsd_sync_result_t *res)
{
    int len = snprintf(dst, dst_cap, "step %llu: worker%s ", (unsigned long long)res->step,
                       res->n_missing == 1 ? "" : "s");
    for (size_t i = 0; i < res->n_missing && len > 0 && (size_t)len < dst_cap; i++)
        len += snprintf(dst + len, dst_cap - (size_t)len, "%s%u", i ? ", " : "", res->missing[i]);
    if (len > 0 && (size_t)len < dst_cap)
        snprintf(dst + len, dst_cap - (size_t)len,
                 " did not report within the run's sync_timeout_ms (on_timeout drop)");
}

/* What a /sync answer is made of, as bytes (answer_cache.h): equal keys,
 * equal answers. */
static int answer_key(ns_buf_t *key, ns_format_t format, const char *run,
                      const nsd_sync_result_t *res)
{
    uint64_t head[5] = {(uint64_t)format, res->step, (uint64_t)res->complete, res->workers,
                        res->n_missing};
    int rc = ns_buf_append(key, run, strlen(run) + 1);
    rc = rc ? rc : ns_buf_append(key, head, sizeof(head));
    rc = rc ? rc : ns_buf_append(key, res->missing, res->n_missing * sizeof(*res->missing));
    for (size_t i = 0; rc == 0 && i < res->n_layers; i++) {
        const nsd_sync_layer_t *l = &res->layers[i];
        int arrays = l->channels > 0 && l->mean != NULL && l->var != NULL;
        uint64_t lh[3] = {l->count, l->channels, (uint64_t)arrays};
        rc = ns_buf_append(key, l->name, strlen(l->name) + 1);
        rc = rc ? rc : ns_buf_append(key, lh, sizeof(lh));
        if (arrays) {
            rc = rc ? rc : ns_buf_append(key, l->mean, l->channels * sizeof(double));
            rc = rc ? rc : ns_buf_append(key, l->var, l->channels * sizeof(double));
        }
    }
    return rc;
}

/* ns_stats_encode() of a /sync answer, JSON ones once per step: the other
 * workers of the step get a copy (answer_cache.h). */
static int encode_shared(const char *run, const nsd_sync_result_t *res, ns_format_t format,
                         const ns_meta_t *meta, size_t n_meta, const ns_out_layer_t *layers,
                         ns_buf_t *dst)
{
    if (format != NS_FORMAT_JSON)
        return ns_stats_encode(dst, format, meta, n_meta, layers, res->n_layers);
    ns_buf_t key;
    ns_buf_init(&key, 0);
    int keyed = answer_key(&key, format, run, res) == 0;
    if (keyed && nsd_answer_cache_find(&key, dst)) {
        ns_buf_free(&key);
        return 0;
    }
    int rc = ns_stats_encode(dst, format, meta, n_meta, layers, res->n_layers);
    if (rc == 0 && keyed)
        nsd_answer_cache_add(&key, dst);
    ns_buf_free(&key);
    return rc;
}

/* The answer of a finalized step: its layers, with the workers that did
 * not arrive when incomplete, in the request's answer format. */
static void encode_answer(const nsd_request_t *req, sync_done_t *d)
{
    const nsd_sync_result_t *res = d->res;
    ns_buf_init(&d->body, NSD_ANSWER_MAX);
    ns_out_layer_t *layers = calloc(res->n_layers ? res->n_layers : 1, sizeof(*layers));
    if (layers == NULL) {
        d->rc = NS_ENOMEM;
        return;
    }
    for (size_t i = 0; i < res->n_layers; i++) {
        const nsd_sync_layer_t *src = &res->layers[i];
        ns_out_layer_t *dst = &layers[i];
        dst->name = src->name;
        dst->channels = src->channels;
        if (src->channels > 0 && src->mean != NULL && src->var != NULL) {
            dst->n_arrays = 2;
            dst->array_names[0] = NS_FIELD_MEAN;
            dst->arrays[0] = src->mean;
            dst->array_names[1] = NS_FIELD_VAR;
            dst->arrays[1] = src->var;
        }
        dst->n_scalars = 1;
        dst->scalar_names[0] = NS_FIELD_COUNT;
        dst->scalars[0] = (int64_t)src->count;
    }
    /* An incomplete step names the workers that did not arrive. */
    char *missing = NULL;
    if (!res->complete) {
        ns_buf_t list;
        ns_buf_init(&list, 0);
        int lrc = 0;
        for (size_t i = 0; lrc == 0 && i < res->n_missing; i++)
            lrc = ns_buf_printf(&list, "%s%u", i ? "," : "", res->missing[i]);
        missing = lrc == 0 ? ns_buf_take(&list, NULL) : NULL;
        if (missing == NULL) {
            free(layers);
            d->rc = NS_ENOMEM;
            return;
        }
    }
    ns_meta_t meta[4] = {
        {NS_FIELD_STEP, NS_META_INT, NULL, (int64_t)res->step},
        {NS_FIELD_COMPLETE, NS_META_BOOL, NULL, res->complete ? 1 : 0},
        {NS_FIELD_WORKERS, NS_META_INT, NULL, (int64_t)res->workers},
        {NS_FIELD_MISSING, NS_META_INT_LIST, missing, 0},
    };
    d->rc = encode_shared(req->run, res, d->format, meta, missing ? 4 : 3, layers, &d->body);
    free(layers);
    free(missing);
}

static void sync_answer(nsd_request_t *req)
{
    sync_done_t *d = req->user;
    nsd_sync_result_t *res = d->res;
    if (res == NULL) {
        nsd_respond_error(req, NS_EINTERNAL, "sync finished without a result");
        return;
    }
    if (res->status != 0) {
        char msg[256];
        if (res->status == NS_ETIMEDOUT && res->n_missing > 0)
            timeout_message(msg, sizeof(msg), res);
        else
            snprintf(msg, sizeof(msg), "step %llu: %s", (unsigned long long)res->step,
                     ns_strerror(res->status));
        nsd_log(NSD_LOG_DEBUG, "sync_failed", "run=%s step=%llu code=%s", req->run,
                (unsigned long long)res->step, ns_error_name(res->status));
        nsd_respond_error(req, res->status, msg);
        return;
    }
    if (d->rc != 0) {
        nsd_respond_error(req, d->rc, NULL);
        return;
    }
    nsd_log(NSD_LOG_DEBUG, "sync_answered", "run=%s step=%llu complete=%d workers=%u", req->run,
            (unsigned long long)res->step, res->complete, res->workers);
    nsd_respond_encoded(req, d->format, &d->body);
}

void nsd_h_sync(nsd_request_t *req)
{
    ns_error_detail_t err = {0};
    ns_report_t *report = decode(req);
    if (report == NULL)
        return;
    if (req->server->relay != NULL) {
        relay_report(req, report, 1);
        return;
    }
    uint64_t step = report->step;
    uint32_t worker = report->worker;
    sync_done_t *d = calloc(1, sizeof(*d));
    if (d == NULL) {
        ns_report_free(report);
        nsd_respond_error(req, NS_ENOMEM, NULL);
        return;
    }
    d->format = nsd_request_answer_format(req); /* read here: the callback may run elsewhere */
    req->user = d;
    req->user_free = free_done;
    /* Deferred before the registry can call back (possibly right away). */
    nsd_request_defer(req, sync_answer);
    int rc = nsd_registry_report(req->server->registry, req->run, report, nsd_now_ms(),
                                 on_sync_done, req, &err);
    if (rc != 0) {
        nsd_reject_report(req, rc, &err, (long)worker);
        return;
    }
    nsd_log(NSD_LOG_DEBUG, "report_accepted", "run=%s step=%llu worker=%u sync=1", req->run,
            (unsigned long long)step, worker);
}
