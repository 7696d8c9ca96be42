/* request_keep.h - a request's context, body buffer and decoding scratch
 * (ns_report_scratch_t) kept on its connection for the next request
 * (keep-alive), so that a steady stream of reports allocates none of them;
 * http.c and conn_hooks.c call these, on the connection's own thread.
 *
 * What is kept stays counted: the body buffer's --max-memory reservation
 * (body_budget.c) and the scratch's size (taken from the decoding's
 * reservation) are held while kept and become the next request's. A
 * connection keeps at most NSD_CONNS_KEPT contexts (conns.h), a body
 * buffer only up to NSD_KEPT_BODY_MAX bytes and 1/64 of --max-memory, a
 * scratch up to NSD_KEPT_BODY_MAX bytes; everything is freed when the
 * connection closes (at the latest its --idle-timeout). */
#ifndef NSD_REQUEST_KEEP_H
#define NSD_REQUEST_KEEP_H

#include "http.h"

/* The largest body buffer a connection keeps between requests. */
#define NSD_KEPT_BODY_MAX (8u << 20)

/*! nsd_request_new() :
 *  A zeroed request context for 'link''s next request: the one the
 *  connection kept (its body buffer emptied, still reserved) or a new one.
 *  @return it, or NULL when out of memory. */
nsd_request_t *nsd_request_new(nsd_server_t *srv, nsd_conn_t *link);

/*! nsd_request_done() :
 *  The request completed: release its reservations (all but a kept body
 *  buffer's) and keep it on its connection, or free it. */
void nsd_request_done(nsd_request_t *req);

/*! nsd_request_kept_free() :
 *  The connection closes: free what it kept and release its reservation. */
void nsd_request_kept_free(nsd_server_t *srv, nsd_conn_t *link);

#endif /* NSD_REQUEST_KEEP_H */
