/* h_report.c - POST /v1/runs/{run}/batches (202 at once) and /sync (answered when the step
 * finalizes). */
#include <stdio.h>
#include <stdlib.h>

#include "base/clock.h"
#include "base/log.h"
#include "base/size_limits.h"
#include "http/http.h"
#include "registry/registry.h"
#include "relay/relay.h"
#include "store/store.h"

/* Decode the body as its Content-Type says; a malformed one is answered here.
 * @return the report, or NULL when the request was answered. */
static ns_report_t *decode(nsd_request_t *req)
{
    ns_error_detail_t err = {0};
    ns_report_t *report = NULL;
    const char *body = req->body.data ? req->body.data : "";
    int rc = req->body_format == NS_FORMAT_SAFETENSORS
                 ? ns_report_decode_safetensors(&report, (const uint8_t *)body, req->body.len, &err)
                 : ns_report_decode_json(&report, body, req->body.len, &err);
    if (rc != 0) {
        nsd_respond_detail(req, rc, &err);
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
        nsd_respond_detail(req, rc, &err);
        return;
    }
    nsd_log(NSD_LOG_DEBUG, "report_accepted", "run=%s step=%llu worker=%u layers=%zu sync=0",
            req->run, (unsigned long long)step, worker, n_layers);
    nsd_respond_json(req, 202,
                     json_pack("{s:b, s:I, s:I, s:I}", "accepted", 1, "step", (json_int_t)step,
                               "worker", (json_int_t)worker, "layers", (json_int_t)n_layers));
}

static void free_result(void *p)
{
    nsd_sync_result_free(p);
}

/* The store's callback: the step (and everything before it) is committed. */
static void on_sync_durable(void *arg, int status)
{
    nsd_request_t *req = arg;
    nsd_sync_result_t *result = req->user;
    if (status != 0)
        result->status = status;
    nsd_request_wake(req);
}

/* The registry's callback: any thread, exactly once, never under a registry
 * lock, after the finalized step went to the store: the answer waits for its
 * commit. */
static void on_sync_done(void *arg, nsd_sync_result_t *result)
{
    nsd_request_t *req = arg;
    req->user = result;
    req->user_free = free_result;
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

static void sync_answer(nsd_request_t *req)
{
    nsd_sync_result_t *res = req->user;
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
    ns_out_layer_t *layers = calloc(res->n_layers ? res->n_layers : 1, sizeof(*layers));
    if (layers == NULL) {
        nsd_respond_error(req, NS_ENOMEM, NULL);
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
            nsd_respond_error(req, NS_ENOMEM, NULL);
            return;
        }
    }
    ns_meta_t meta[4] = {
        {NS_FIELD_STEP, NS_META_INT, NULL, (int64_t)res->step},
        {NS_FIELD_COMPLETE, NS_META_BOOL, NULL, res->complete ? 1 : 0},
        {NS_FIELD_WORKERS, NS_META_INT, NULL, (int64_t)res->workers},
        {NS_FIELD_MISSING, NS_META_INT_LIST, missing, 0},
    };
    ns_format_t format = nsd_request_answer_format(req);
    ns_buf_t buf;
    ns_buf_init(&buf, NSD_ANSWER_MAX);
    int rc = ns_stats_encode(&buf, format, meta, missing ? 4 : 3, layers, res->n_layers);
    free(layers);
    free(missing);
    if (rc != 0) {
        nsd_respond_error(req, rc, NULL);
        return;
    }
    nsd_log(NSD_LOG_DEBUG, "sync_answered", "run=%s step=%llu complete=%d workers=%u", req->run,
            (unsigned long long)res->step, res->complete, res->workers);
    nsd_respond_encoded(req, format, &buf);
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
    /* Deferred before the registry can call back (possibly right away). */
    nsd_request_defer(req, sync_answer);
    int rc = nsd_registry_report(req->server->registry, req->run, report, nsd_now_ms(),
                                 on_sync_done, req, &err);
    if (rc != 0) {
        nsd_respond_detail(req, rc, &err);
        return;
    }
    nsd_log(NSD_LOG_DEBUG, "report_accepted", "run=%s step=%llu worker=%u sync=1", req->run,
            (unsigned long long)step, worker);
}
