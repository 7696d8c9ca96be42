/* h_health.c - GET /livez, /healthz, /readyz and /v1/version. */
#include <normstat/core.h>

#include "http/http.h"

void nsd_h_livez(nsd_request_t *req)
{
    nsd_respond_json(req, 200, json_pack("{s:s}", "status", "ok"));
}

/* Ready once start-up (later: recovery of the store) finished; not while stopping. */
void nsd_h_readyz(nsd_request_t *req)
{
    if (atomic_load(&req->server->shutting_down))
        nsd_respond_error(req, NS_ESHUTDOWN, NULL);
    else if (!atomic_load(&req->server->ready))
        nsd_respond_error(req, NS_ENOTREADY, NULL);
    else
        nsd_respond_json(req, 200, json_pack("{s:s}", "status", "ready"));
}

void nsd_h_version(nsd_request_t *req)
{
    const nsd_options_t *o = req->server->opts;
    nsd_respond_json(req, 200,
                     json_pack("{s:s, s:s, s:I, s:I, s:I}", "version", ns_core_version(), "kernel",
                               ns_core_kernel(), "core_threads", (json_int_t)o->core_threads,
                               "openmp_max_threads", (json_int_t)ns_core_max_threads(),
                               "http_threads", (json_int_t)o->threads));
}
