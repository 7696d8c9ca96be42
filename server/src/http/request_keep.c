/* request_keep.c - request contexts kept on their connection (see
 * request_keep.h). */
#include "request_keep.h"

#include <stdlib.h>
#include <string.h>

#include "conns.h"
#include "registry/registry.h"

/* Free a context whose reservations were released. */
static void request_free(nsd_request_t *req)
{
    ns_report_scratch_free(req->scratch);
    ns_buf_free(&req->body);
    pthread_mutex_destroy(&req->wait_lock);
    free(req->query);
    free(req);
}

/* Whether a completed request's body buffer may stay on its connection. */
static int body_keepable(const nsd_request_t *req)
{
    uint64_t max_memory = req->server->opts->max_memory;
    return req->body.data != NULL && req->body.cap <= NSD_KEPT_BODY_MAX &&
           (max_memory == 0 || req->body_reserved <= max_memory / 64);
}

nsd_request_t *nsd_request_new(nsd_server_t *srv, nsd_conn_t *link)
{
    void **slots = nsd_conns_kept(link);
    void **slot = NULL;
    for (int i = 0; slots != NULL && i < NSD_CONNS_KEPT && slot == NULL; i++)
        slot = slots[i] != NULL ? &slots[i] : NULL;
    nsd_request_t *req = slot != NULL ? *slot : NULL;
    if (req == NULL) {
        req = calloc(1, sizeof(*req));
        if (req == NULL)
            return NULL;
        ns_buf_init(&req->body, srv->opts->max_body);
    } else {
        *slot = NULL;
        ns_buf_t body = req->body;
        uint64_t body_reserved = req->body_reserved;
        ns_report_scratch_t *scratch = req->scratch;
        uint64_t scratch_reserved = req->scratch_reserved;
        memset(req, 0, sizeof(*req));
        req->body = body;
        req->body.len = 0;
        if (req->body.data != NULL)
            req->body.data[0] = '\0';
        req->scratch = scratch;
        /* Still counted: the reservations are this request's now. */
        req->body_reserved = body_reserved;
        req->scratch_reserved = scratch_reserved;
        req->reserved = body_reserved + scratch_reserved;
    }
    req->server = srv;
    req->link = link;
    pthread_mutex_init(&req->wait_lock, NULL);
    return req;
}

void nsd_request_done(nsd_request_t *req)
{
    void **slots = req->close_after ? NULL : nsd_conns_kept(req->link);
    void **slot = NULL;
    for (int i = 0; slots != NULL && i < NSD_CONNS_KEPT && slot == NULL; i++)
        slot = slots[i] == NULL ? &slots[i] : NULL;
    if (slot == NULL) {
        nsd_request_release(req);
        request_free(req);
        return;
    }
    if (!body_keepable(req)) {
        ns_buf_free(&req->body);
        req->body_reserved = 0;
    }
    /* The scratch grew within this request's decoding reservation; kept
     * only while that covers it. */
    uint64_t scratch_bytes = ns_report_scratch_bytes(req->scratch);
    if (req->scratch != NULL &&
        (scratch_bytes > NSD_KEPT_BODY_MAX || req->reserved < req->body_reserved + scratch_bytes)) {
        ns_report_scratch_free(req->scratch);
        req->scratch = NULL;
        scratch_bytes = 0;
    }
    req->scratch_reserved = scratch_bytes;
    /* All but what the kept buffers count goes back. */
    uint64_t kept = req->body_reserved + req->scratch_reserved;
    req->reserved -= kept;
    nsd_request_release(req);
    req->reserved = kept;
    free(req->query);
    req->query = NULL;
    pthread_mutex_destroy(&req->wait_lock);
    *slot = req;
}

ns_report_scratch_t *nsd_request_scratch(nsd_request_t *req)
{
    if (req->scratch == NULL)
        req->scratch = ns_report_scratch_new();
    return req->scratch;
}

void nsd_request_kept_free(nsd_server_t *srv, nsd_conn_t *link)
{
    void **slots = nsd_conns_kept(link);
    for (int i = 0; slots != NULL && i < NSD_CONNS_KEPT; i++) {
        nsd_request_t *req = slots[i];
        if (req == NULL)
            continue;
        slots[i] = NULL;
        req->server = srv;
        nsd_request_release(req);
        ns_report_scratch_free(req->scratch);
        ns_buf_free(&req->body);
        free(req);
    }
}
