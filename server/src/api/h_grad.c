/* h_grad.c - POST /v1/runs/{run}/grad: one worker's gradient sums, answered with
 * the sums over every worker once all of them sent (see gradsum.h). */
#include <stdio.h>
#include <stdlib.h>

#include "base/clock.h"
#include "base/log.h"
#include "base/size_limits.h"
#include "http/http.h"
#include "registry/registry.h"
#include "rejection_log.h"

/* Decode the body as its Content-Type says; a malformed one is answered here.
 * @return the request, or NULL when the request was answered. */
static ns_grad_t *decode(nsd_request_t *req)
{
    ns_error_detail_t err = {0};
    ns_grad_t *grad = NULL;
    const char *body = req->body.data ? req->body.data : "";
    int st = req->body_format == NS_FORMAT_SAFETENSORS;
    if (nsd_request_reserve_decoding(req, st ? NS_DECODE_GRAD_SAFETENSORS : NS_DECODE_JSON_TREE) !=
        0) {
        nsd_respond_detail(req, NS_EMEMORY, &req->pending_detail);
        return NULL;
    }
    int rc = st ? ns_grad_decode_safetensors(&grad, (const uint8_t *)body, req->body.len, &err)
                : ns_grad_decode_json(&grad, body, req->body.len, &err);
    if (rc != 0) {
        nsd_reject_report(req, rc, &err, NSD_WORKER_UNKNOWN);
        return NULL;
    }
    return grad;
}

static void free_result(void *p)
{
    nsd_grad_result_free(p);
}

/* The registry's callback: any thread, exactly once, never under a lock. */
static void on_grad_done(void *arg, nsd_grad_result_t *result)
{
    nsd_request_t *req = arg;
    req->user = result;
    req->user_free = free_result;
    nsd_request_wake(req);
}

static void grad_answer(nsd_request_t *req)
{
    nsd_grad_result_t *res = req->user;
    if (res == NULL || res->grad == NULL) {
        nsd_respond_error(req, NS_EINTERNAL, "gradient sums finished without a result");
        return;
    }
    unsigned long long step = (unsigned long long)res->grad->step;
    if (res->status != 0) {
        char msg[600];
        if (res->message[0])
            snprintf(msg, sizeof(msg), "%s", res->message);
        else
            snprintf(msg, sizeof(msg), "gradient step %llu: %s", step, ns_strerror(res->status));
        nsd_log(NSD_LOG_DEBUG, "grad_failed", "run=%s step=%llu code=%s", req->run, step,
                ns_error_name(res->status));
        nsd_respond_error(req, res->status, msg);
        return;
    }
    ns_format_t format = nsd_request_answer_format(req);
    ns_buf_t buf;
    ns_buf_init(&buf, NSD_ANSWER_MAX);
    int rc = ns_grad_encode_answer(&buf, format, res->grad);
    if (rc != 0) {
        nsd_respond_error(req, rc, NULL);
        return;
    }
    nsd_log(NSD_LOG_DEBUG, "grad_answered", "run=%s step=%llu workers=%u", req->run, step,
            res->grad->workers);
    nsd_respond_encoded(req, format, &buf);
}

void nsd_h_grad(nsd_request_t *req)
{
    ns_error_detail_t err = {0};
    ns_grad_t *grad = decode(req);
    if (grad == NULL)
        return;
    uint64_t step = grad->step;
    uint32_t worker = grad->worker;
    /* Deferred before the registry can call back (possibly right away). */
    nsd_request_defer(req, grad_answer);
    int rc = nsd_registry_grad(req->server->registry, req->run, grad, nsd_now_ms(), on_grad_done,
                               req, &err);
    if (rc != 0) {
        nsd_reject_report(req, rc, &err, (long)worker);
        return;
    }
    nsd_log(NSD_LOG_DEBUG, "grad_accepted", "run=%s step=%llu worker=%u", req->run,
            (unsigned long long)step, worker);
}
