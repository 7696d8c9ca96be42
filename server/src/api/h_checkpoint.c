/* h_checkpoint.c - GET and PUT /v1/runs/{run}/checkpoint: export and restore a run's whole state.
 */
#include "base/clock.h"
#include "base/log.h"
#include "base/size_limits.h"
#include "http/http.h"
#include "registry/registry.h"

void nsd_h_checkpoint_get(nsd_request_t *req)
{
    ns_error_detail_t err = {0};
    ns_buf_t text;
    ns_buf_init(&text, NSD_ANSWER_MAX);
    /* Written as text, no tree; reals with 17 significant digits round-trip. */
    int rc = nsd_registry_checkpoint_text(req->server->registry, req->run, &text, &err);
    if (rc != 0) {
        nsd_respond_detail(req, rc, &err);
        return;
    }
    nsd_respond_encoded(req, NS_FORMAT_JSON, &text);
}

void nsd_h_checkpoint_put(nsd_request_t *req)
{
    ns_error_detail_t err = {0};
    const char *body = req->body.data ? req->body.data : "";
    int rc =
        nsd_registry_checkpoint_import(req->server->registry, req->run, body, req->body.len, &err);
    if (rc != 0) {
        nsd_respond_detail(req, rc, &err);
        return;
    }
    nsd_log(NSD_LOG_INFO, "checkpoint_restored", "run=%s bytes=%zu", req->run, req->body.len);
    json_t *run = nsd_registry_run_json(req->server->registry, req->run, nsd_now_ms(), &err);
    nsd_respond_durable(req, 200, run ? run : json_pack("{s:s}", "run", req->run));
}
