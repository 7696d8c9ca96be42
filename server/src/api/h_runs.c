/* h_runs.c - PUT, GET, DELETE /v1/runs/{run} and GET /v1/runs. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include "base/clock.h"
#include "base/log.h"
#include "base/size_limits.h"
#include "http/http.h"
#include "registry/registry.h"

/* Runs in one answer of GET /v1/runs: by default, and at most. */
#define NSD_RUNS_PAGE_DEFAULT 1000ul
#define NSD_RUNS_PAGE_MAX     10000ul

/* GET /v1/runs?limit=N&after=NAME: one page of the list, so that an
 * answer stays small however many runs there are (proto/openapi.yaml). */
void nsd_h_runs_list(nsd_request_t *req)
{
    const char *limit = nsd_request_query(req, "limit");
    const char *after = nsd_request_query(req, "after");
    unsigned long n = NSD_RUNS_PAGE_DEFAULT;
    if (limit != NULL) {
        char *end;
        errno = 0;
        n = strtoul(limit, &end, 10);
        if (errno != 0 || end == limit || *end != '\0' || limit[0] == '-' || n < 1 ||
            n > NSD_RUNS_PAGE_MAX) {
            nsd_respond_error(req, NS_EINVAL, "limit: must be an integer in [1, 10000]");
            return;
        }
    }
    if (after != NULL && !ns_name_valid(after)) {
        nsd_respond_error(req, NS_EINVAL, "after: must be a run name");
        return;
    }
    nsd_respond_json(req, 200, nsd_registry_list_json(req->server->registry, after, n));
}

void nsd_h_run_put(nsd_request_t *req)
{
    ns_error_detail_t err = {0};
    ns_run_config_t cfg;
    ns_run_config_defaults(&cfg);
    const char *body = req->body.data ? req->body.data : "";
    int rc = ns_run_config_decode_json(&cfg, body, req->body.len, &err);
    int created = 0;
    rc = rc ? rc : nsd_registry_put_run(req->server->registry, req->run, &cfg, &created, &err);
    if (rc != 0) {
        nsd_respond_detail(req, rc, &err);
        return;
    }
    if (cfg.has_world_size || created)
        nsd_log(NSD_LOG_INFO, created ? "run_created" : "run_updated", "run=%s world_size=%u",
                req->run, cfg.world_size);
    else
        nsd_log(NSD_LOG_INFO, "run_updated", "run=%s", req->run);
    ns_buf_t run;
    ns_buf_init(&run, NSD_ANSWER_MAX);
    if (nsd_registry_run_text(req->server->registry, req->run, nsd_now_ms(), &run, &err) != 0)
        /* Deleted again in between: the PUT itself succeeded. */
        ns_buf_printf(&run, "{\"run\":\"%s\"}", req->run);
    nsd_respond_durable_text(req, created ? 201 : 200, &run);
}

void nsd_h_run_get(nsd_request_t *req)
{
    ns_error_detail_t err = {0};
    char what[NS_NAME_MAX + 64];
    snprintf(what, sizeof(what), "the status of run '%s'", req->run);
    uint64_t bytes = nsd_registry_view_bytes(req->server->registry, req->run, NSD_VIEW_STATUS);
    if (nsd_request_reserve(req, bytes, what) != 0) {
        nsd_respond_detail(req, NS_EMEMORY, &req->pending_detail);
        return;
    }
    ns_buf_t run;
    ns_buf_init(&run, NSD_ANSWER_MAX);
    int rc = nsd_registry_run_text(req->server->registry, req->run, nsd_now_ms(), &run, &err);
    if (rc != 0) {
        nsd_respond_detail(req, rc, &err);
        return;
    }
    nsd_respond_encoded(req, NS_FORMAT_JSON, &run);
}

void nsd_h_run_delete(nsd_request_t *req)
{
    ns_error_detail_t err = {0};
    int rc = nsd_registry_delete_run(req->server->registry, req->run, &err);
    if (rc != 0) {
        nsd_respond_detail(req, rc, &err);
        return;
    }
    nsd_log(NSD_LOG_INFO, "run_deleted", "run=%s", req->run);
    nsd_respond_durable(req, 204, NULL);
}
