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
    /* The registry copies what it keeps before the request ends, so the
     * arrays may stay in the body and the report in the connection's
     * scratch (freed by the registry before the next request); a relay
     * holds reports longer. */
    int rc;
    if (!st)
        rc = ns_report_decode_json_bounded(&report, body, req->body.len, 0, &err);
    else if (req->server->relay == NULL && nsd_request_scratch(req) != NULL)
        rc = ns_report_decode_safetensors_into(req->scratch, &report, (const uint8_t *)body,
                                               req->body.len, &err);
    else if (req->server->relay == NULL)
        rc = ns_report_decode_safetensors_borrowed(&report, (const uint8_t *)body, req->body.len,
                                                   &err);
    else
        rc = ns_report_decode_safetensors(&report, (const uint8_t *)body, req->body.len, &err);
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
/* The 202 of an accepted report, written as text: the tree and the dump
 * cost some fifteen allocations a report. The same bytes as jansson's
 * compact dump of {"accepted", "step", "worker", "layers"}. */
static void respond_accepted(nsd_request_t *req, uint64_t step, uint32_t worker, size_t n_layers)
{
    enum { ANSWER_MAX = 96 }; /* 3 integers of up to 20 digits and the keys */
    char *text = malloc(ANSWER_MAX);
    int len = text == NULL
                  ? -1
                  : snprintf(text, ANSWER_MAX,
                             "{\"accepted\":true,\"step\":%llu,\"worker\":%u,\"layers\":%zu}",
                             (unsigned long long)step, worker, n_layers);
    if (len < 0 || len >= ANSWER_MAX) {
        free(text);
        nsd_respond_error(req, NS_ENOMEM, NULL);
        return;
    }
    nsd_respond(req, 202, "application/json", text, (size_t)len);
}

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
        respond_accepted(req, step, worker, n_layers);
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
    respond_accepted(req, step, worker, n_layers);
}

/* A /sync's state: its answer format, and once its step is done the
 * result and the answer: JSON shared with the step's other workers
 * (answer_cache.h), safetensors encoded right away (while the commit is
 * awaited). */
typedef struct sync_done_s {
    nsd_sync_result_t *res; /* NULL once the shared answer took it */
    nsd_answer_t *answer;   /* JSON */
    ns_format_t format;
    int rc;            /* of the encoding */
    int commit_status; /* of the store's commit */
    ns_buf_t body;     /* safetensors */
} sync_done_t;

static void free_done(void *p)
{
    sync_done_t *d = p;
    nsd_sync_result_free(d->res);
    nsd_answer_release(d->answer);
    ns_buf_free(&d->body);
    free(d);
}

static const nsd_sync_result_t *result_of(const sync_done_t *d)
{
    return d->res != NULL || d->answer == NULL ? d->res : nsd_answer_result(d->answer);
}

static void prepare_answer(const nsd_request_t *req, sync_done_t *d);

/* The store's callback: the step (and everything before it) is committed. */
static void on_sync_durable(void *arg, int status)
{
    nsd_request_t *req = arg;
    sync_done_t *d = req->user;
    d->commit_status = status;
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
    if (result->status == 0)
        prepare_answer(req, d);
    if (result->status != 0 || d->rc != 0 || req->server->store == NULL) {
        /* Answered at once: encoded by the threads of the woken requests,
         * the step's workers in parallel. Encoding here would keep the
         * step's later workers asleep until it is done (the registry calls
         * back one request after the other, often this thread's own first). */
        nsd_request_wake(req);
        return;
    }
    /* The request may be answered and gone once woken: the answer is held
     * by a reference of its own here. */
    nsd_answer_t *answer = d->answer != NULL ? nsd_answer_ref(d->answer) : NULL;
    nsd_store_after_commit(req->server->store, on_sync_durable, req);
    /* Encoded while the commit is awaited: the first of the step's workers
     * encodes, the others find it done (their outcome read again by
     * sync_answer()). */
    if (answer != NULL)
        (void)nsd_answer_encode(answer);
    nsd_answer_release(answer);
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

/* The answer of a finalized step: its layers, with the workers that did
 * not arrive when incomplete, in the request's answer format. JSON: the
 * answer shared by the step's workers, encoded later; safetensors: here. */
static void prepare_answer(const nsd_request_t *req, sync_done_t *d)
{
    if (d->format == NS_FORMAT_JSON) {
        d->answer = nsd_answer_share(req->run, &d->res);
        d->rc = d->answer != NULL ? 0 : NS_ENOMEM;
        return;
    }
    nsd_answer_fields_t f;
    ns_buf_init(&d->body, NSD_ANSWER_MAX);
    d->rc = nsd_answer_fields(&f, d->res);
    if (d->rc != 0)
        return;
    d->rc = ns_stats_encode(&d->body, d->format, f.meta, f.n_meta, f.layers, f.n_layers);
    nsd_answer_fields_free(&f);
}

static void sync_answer(nsd_request_t *req)
{
    sync_done_t *d = req->user;
    const nsd_sync_result_t *res = result_of(d);
    if (res == NULL) {
        nsd_respond_error(req, NS_EINTERNAL, "sync finished without a result");
        return;
    }
    int status = res->status != 0 ? res->status : d->commit_status;
    if (status != 0) {
        char msg[256];
        if (status == NS_ETIMEDOUT && res->n_missing > 0)
            timeout_message(msg, sizeof(msg), res);
        else
            snprintf(msg, sizeof(msg), "step %llu: %s", (unsigned long long)res->step,
                     ns_strerror(status));
        nsd_log(NSD_LOG_DEBUG, "sync_failed", "run=%s step=%llu code=%s", req->run,
                (unsigned long long)res->step, ns_error_name(status));
        nsd_respond_error(req, status, msg);
        return;
    }
    if (d->rc == 0 && d->answer != NULL)
        d->rc = nsd_answer_encode(d->answer); /* with the step's other workers */
    if (d->rc != 0) {
        nsd_respond_error(req, d->rc, NULL);
        return;
    }
    nsd_log(NSD_LOG_DEBUG, "sync_answered", "run=%s step=%llu complete=%d workers=%u", req->run,
            (unsigned long long)res->step, res->complete, res->workers);
    if (d->answer == NULL) {
        nsd_respond_encoded(req, d->format, &d->body);
        return;
    }
    size_t n;
    const ns_buf_t *parts = nsd_answer_parts(d->answer, &n);
    nsd_respond_parts(req, d->format, parts, n, nsd_answer_release, nsd_answer_ref(d->answer));
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
