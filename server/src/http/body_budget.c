/* body_budget.c - request bodies counted against --max-memory (see
 * nsd_request_reserve() in http.h).
 *
 * DESIGN
 *  A body costs memory twice before anything is accepted: its bytes, then
 *  what decoding them allocates (up to 5 times the body for a fast-path
 *  JSON report of one-channel layers, up to 24 for a jansson tree). Both
 *  are reserved from the registry's budget before they are allocated: the
 *  body's buffer from Content-Length when the headers arrive (a chunked
 *  body as its buffer grows), the decoding from ns_decode_bound(), a scan
 *  that allocates nothing, before the decoder runs. A body that could not
 *  fit is answered 429 memory_budget unread (the rest of it is read and
 *  dropped) or undecoded. The reservations are released when the request
 *  completes; what the registry keeps of a report it counts itself. */
#include <inttypes.h>
#include <stdio.h>

#include "http.h"
#include "registry/registry.h"

int nsd_request_reserve(nsd_request_t *req, uint64_t bytes, const char *what)
{
    nsd_registry_t *reg = req->server->registry;
    if (bytes == 0 || reg == NULL || nsd_registry_mem_reserve(reg, bytes) == 0) {
        req->reserved += bytes;
        return 0;
    }
    uint64_t free_bytes = nsd_registry_mem_free(reg);
    return ns_error_set(&req->pending_detail, NS_EMEMORY, "",
                        "%s needs up to %" PRIu64 " bytes; %" PRIu64 " of the --max-memory "
                        "budget of %" PRIu64 " bytes are free",
                        what, bytes, free_bytes, (uint64_t)req->server->opts->max_memory);
}

void nsd_request_release(nsd_request_t *req)
{
    if (req->reserved > 0 && req->server->registry != NULL)
        nsd_registry_mem_release(req->server->registry, req->reserved);
    req->reserved = 0;
}

int nsd_request_reserve_body(nsd_request_t *req, uint64_t total)
{
    if (total <= req->body_reserved)
        return 0;
    /* A chunked body grows its reservation by doubling, as its buffer does. */
    uint64_t want = req->body_reserved == 0 ? total : 2 * req->body_reserved;
    want = want < total ? total : want;
    int rc = nsd_request_reserve(req, want - req->body_reserved, "receiving this body");
    if (rc == 0)
        req->body_reserved = want;
    return rc;
}

int nsd_request_reserve_decoding(nsd_request_t *req, ns_decode_kind_t kind)
{
    const char *body = req->body.data ? req->body.data : "";
    char what[96];
    snprintf(what, sizeof(what), "decoding this %zu-byte body", req->body.len);
    return nsd_request_reserve(req, ns_decode_bound(body, req->body.len, kind), what);
}
