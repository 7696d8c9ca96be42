/* h_checkpoint.c - GET and PUT /v1/runs/{run}/checkpoint: export and restore a run's whole state.
 */
#include "base/clock.h"
#include "base/log.h"
#include "base/size_limits.h"
#include "http/http.h"
#include "registry/registry.h"

static int checkpoint_next(void *state, ns_buf_t *dst, int *done)
{
    return nsd_checkpoint_stream_next(state, dst, done);
}

static void checkpoint_free(void *state)
{
    nsd_checkpoint_stream_free(state);
}

void nsd_h_checkpoint_get(nsd_request_t *req)
{
    ns_error_detail_t err = {0};
    /* A compact copy under the run's locks, its memory reserved first; the
     * text is written a layer at a time as the client reads, with no lock
     * held, and the reservation ends with the response. */
    nsd_checkpoint_stream_t *s =
        nsd_registry_checkpoint_stream(req->server->registry, req->run, &err);
    if (s == NULL) {
        nsd_respond_detail(req, err.code ? err.code : NS_ENOMEM, &err);
        return;
    }
    nsd_respond_stream(req, "application/json", checkpoint_next, checkpoint_free, s);
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
    ns_buf_t run;
    ns_buf_init(&run, NSD_ANSWER_MAX);
    if (nsd_registry_run_text(req->server->registry, req->run, nsd_now_ms(), &run, &err) != 0)
        ns_buf_printf(&run, "{\"run\":\"%s\"}", req->run); /* deleted again in between */
    nsd_respond_durable_text(req, 200, &run);
}
