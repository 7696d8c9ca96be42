/* http.h - normstatd's HTTP front: the libmicrohttpd daemon, requests and responses.
 *
 * One nsd_request_t lives from the first call of MHD's access handler for a
 * request until MHD reports it completed. The request body is collected
 * into req->body under --max-body (413 otherwise, checked against
 * Content-Length before reading), then the route's handler runs once, on a
 * later call than the first: libmicrohttpd 0.9.75 closes the connection
 * after a response queued during the first call, which would defeat
 * keep-alive.
 *
 * Threads: handlers run on MHD's pool threads and must not block. A handler
 * that waits (POST /sync) calls nsd_request_defer(); whoever completes the
 * wait calls nsd_request_wake() from any thread, and the 'on_wake' function
 * then answers on an MHD thread. The two may race in either order: wake
 * before the handler returned answers at once, wake after it suspended the
 * connection resumes it. */
#ifndef NSD_HTTP_H
#define NSD_HTTP_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include <normstat/proto.h>

#include "base/options.h"
#include "routes.h"

struct MHD_Connection;
struct MHD_Daemon;
typedef struct nsd_registry_s nsd_registry_t;
typedef struct nsd_coord_s nsd_coord_t;
typedef struct nsd_store_s nsd_store_t;
typedef struct nsd_auth_s nsd_auth_t;
typedef struct nsd_tls_s nsd_tls_t;
typedef struct nsd_conns_s nsd_conns_t;
typedef struct nsd_conn_s nsd_conn_t;
typedef struct nsd_relay_s nsd_relay_t;
typedef struct nsd_listener_s nsd_listener_t;

/* The daemon's shared state, created by main(). */
typedef struct nsd_server_s {
    const nsd_options_t *opts;
    nsd_registry_t *registry;
    nsd_store_t *store; /* NULL with --no-persist */
    nsd_auth_t *auth;   /* bearer tokens required; NULL: none */
    nsd_tls_t *tls;     /* HTTPS with --tls-cert; NULL: plain HTTP */
    nsd_relay_t *relay; /* relay mode (--upstream): reports go there; NULL: none */
    nsd_listener_t *listener; /* listening socket and daemons, one per HTTP thread (listener.h) */
    nsd_conns_t *conns; /* connection limits and deadlines (conns.h) */
    uint16_t port;      /* bound port (after nsd_http_start) */
    char addr[300];     /* "HOST:PORT" as bound, for logs */
    atomic_int ready;   /* /readyz answers 200 */
    atomic_int shutting_down;
    atomic_long in_flight; /* requests begun and not yet completed */
} nsd_server_t;

struct nsd_request_s {
    nsd_server_t *server;
    struct MHD_Connection *conn;
    const nsd_route_t *route; /* NULL when the path matched no route */
    const char *method;       /* borrowed from MHD for the request's life */
    const char *path;
    char run[NS_NAME_MAX + 1]; /* the {run} segment, validated */
    ns_buf_t body;
    ns_format_t body_format; /* of a NSD_BODY_REPORT body */
    void *user;              /* handler state; user_free(user) at completion */
    void (*user_free)(void *user);

    /* private to http.c and target.c */
    char *query;                              /* decoded query, owns params' strings */
    nsd_param_t params[NSD_QUERY_PARAMS_MAX]; /* the query parameters, in order */
    size_t n_params;
    nsd_conn_t *link;                 /* the connection's record (conns.h), may be NULL */
    const char *target;               /* as on_uri got it: compared, never read later */
    size_t target_len;                /* its length then */
    int target_nul;                   /* a raw NUL byte cut the target short */
    int begun;                        /* first access call done: counted in in_flight */
    int close_after;                  /* answer with Connection: close (framing not trusted) */
    int pending_error;                /* error found before the handler could run */
    int token_unknown;                /* 401: a well-formed token no table holds */
    const char *scope_missing;        /* 403: "read", "write" or "admin" */
    ns_error_detail_t pending_detail; /* its message, when it has one */
    uint64_t discarded;               /* body bytes read and dropped */
    uint64_t reserved;                /* of --max-memory, until completed (body_budget.c) */
    uint64_t body_reserved;           /* of which for the body's buffer */
    ns_report_scratch_t *scratch;     /* decoding's, kept with the request (request_keep.c) */
    uint64_t scratch_reserved;        /* of 'reserved', for what the scratch kept */
    char allow[64];                   /* Allow header of a 405 */
    int responded;
    int status;
    int first_call_done;
    uint64_t start_ns;
    pthread_mutex_t wait_lock;
    int deferred, woken, suspended;
    nsd_handler_fn on_wake;
};

/*! nsd_http_start() :
 *  Bind --listen and start MHD's thread pool (--threads) with epoll where
 *  available. Fills server->listener, port and addr.
 *  @return 0, or NS_EINVAL (--listen does not resolve) or NS_EIO (cannot
 *  listen) with the reason in 'err'. */
int nsd_http_start(nsd_server_t *server, ns_error_detail_t *err);

/*! nsd_http_quiesce() : stop accepting new connections (existing ones go on). */
void nsd_http_quiesce(nsd_server_t *server);

/*! nsd_http_stop() : stop the daemon; no connection may be suspended. */
void nsd_http_stop(nsd_server_t *server);

/*! nsd_probe_run() :
 *  --probe [URL]: GET the URL (default /readyz on the --listen address,
 *  0.0.0.0 and :: probed through loopback; https when --tls-cert is set)
 *  with its own socket; over https the certificate is not verified.
 *  @return the exit status: 0 if it answered 200, 1 otherwise, 2 for a
 *  malformed URL. */
int nsd_probe_run(const nsd_options_t *opts);

/* ---------------------------------------------------------------- requests */

/*! nsd_request_query() :
 *  The decoded value of query parameter 'key' ("" when given without '='),
 *  or NULL when absent. Each parameter is given at most once and was
 *  checked against the route's list before the handler ran. */
const char *nsd_request_query(nsd_request_t *req, const char *key);

/*! nsd_request_header() : a request header (case-insensitive), or NULL. */
const char *nsd_request_header(nsd_request_t *req, const char *name);

/*! nsd_request_answer_format() : how to answer a request with a body: the
 *  format Accept names, else the body's own. */
ns_format_t nsd_request_answer_format(nsd_request_t *req);

/*! nsd_request_check_query() :
 *  Every query parameter of 'req' must be one of 'allowed' (NULL-terminated).
 *  @return 0, or NS_EINVAL with 'err' naming the first unknown parameter. */
int nsd_request_check_query(nsd_request_t *req, const char *const allowed[],
                            ns_error_detail_t *err);

/*! nsd_request_reserve() :
 *  Count 'bytes' against --max-memory until the request completes.
 *  @return 0, or NS_EMEMORY with req->pending_detail saying that 'what'
 *  ("decoding this 100-byte body") does not fit (body_budget.c). */
int nsd_request_reserve(nsd_request_t *req, uint64_t bytes, const char *what);

/*! nsd_request_reserve_body() : the body's buffer holds 'total' bytes. */
int nsd_request_reserve_body(nsd_request_t *req, uint64_t total);

/*! nsd_request_reserve_decoding() : what decoding the body as 'kind' may
 *  allocate (ns_decode_bound()), before it is decoded. */
int nsd_request_reserve_decoding(nsd_request_t *req, ns_decode_kind_t kind);

/*! nsd_request_scratch() : the scratch to decode a report into, kept with
 *  the request on its connection (request_keep.h); NULL when out of memory. */
ns_report_scratch_t *nsd_request_scratch(nsd_request_t *req);

/*! nsd_request_release() : give back every reservation (at completion). */
void nsd_request_release(nsd_request_t *req);

/*! nsd_request_defer() :
 *  The handler will answer later: after it returns, the connection is
 *  suspended until nsd_request_wake(), then on_wake(req) answers. */
void nsd_request_defer(nsd_request_t *req, nsd_handler_fn on_wake);

/*! nsd_request_wake() : any thread; exactly once per nsd_request_defer(). */
void nsd_request_wake(nsd_request_t *req);

/* ---------------------------------------------------------------- responses
 * Each request gets exactly one response. */

/*! nsd_respond() : 'data' (malloc'd, may be NULL when len == 0) is taken. */
void nsd_respond(nsd_request_t *req, int status, const char *content_type, char *data, size_t len);

/*! nsd_respond_encoded() : 200 with the message in 'buf' (taken), encoded in 'format'. */
void nsd_respond_encoded(nsd_request_t *req, ns_format_t format, ns_buf_t *buf);

/* A producer of a streamed answer: append the next piece to 'dst' (empty),
 * set *done after the last one. @return 0, or an error (the connection is
 * then closed mid-answer). */
typedef int (*nsd_stream_next_fn)(void *state, ns_buf_t *dst, int *done);

/*! nsd_respond_stream() :
 *  200 with a body of unknown length (chunked), written by next(state) a
 *  piece at a time as the client reads, in blocks of NSD_STREAM_BLOCK; one
 *  piece is held at a time. 'state' is taken: free_state(state) runs when
 *  the response is freed (sent, the client gone, or not queued). */
void nsd_respond_stream(nsd_request_t *req, const char *content_type, nsd_stream_next_fn next,
                        void (*free_state)(void *state), void *state);

/*! nsd_respond_parts() : 200 with parts[0..n) sent one after the other as
 *  one body in 'format', never copied: they are borrowed until release(arg)
 *  is called, once, when they are no longer needed (also when nothing could
 *  be queued). */
void nsd_respond_parts(nsd_request_t *req, ns_format_t format, const ns_buf_t *parts, size_t n,
                       void (*release)(void *), void *arg);

/*! nsd_respond_json() : 'body' is taken (decref'd). NULL answers 503 out_of_memory. */
void nsd_respond_json(nsd_request_t *req, int status, json_t *body);

/*! nsd_respond_error() : {"error": {"code", "message"}} with the status of
 *  'code'; message NULL uses the code's default. Counted in /metrics. */
void nsd_respond_error(nsd_request_t *req, int code, const char *message);

/*! nsd_respond_durable() :
 *  Answer 'status' with 'body' (taken; NULL = no body) once everything
 *  enqueued to the store so far is committed, so the change the handler made
 *  is durable before the client hears of it (at once without a store). A
 *  failed commit answers 503 storage_error instead. Defers the request. */
void nsd_respond_durable(nsd_request_t *req, int status, json_t *body);

/*! nsd_respond_durable_text() : nsd_respond_durable() of a body already
 *  written as JSON text in 'text' (taken). */
void nsd_respond_durable_text(nsd_request_t *req, int status, ns_buf_t *text);

/*! nsd_respond_detail() : nsd_respond_error() from a filled detail; a detail
 *  without a message uses 'code'. */
void nsd_respond_detail(nsd_request_t *req, int code, const ns_error_detail_t *err);

/*! nsd_respond_static() :
 *  Answer 'status' with data[0..len) (static, never freed, may be empty) and
 *  the extra headers in 'headers': name, value, ..., NULL (may be NULL). */
void nsd_respond_static(nsd_request_t *req, int status, const char *content_type, const void *data,
                        size_t len, const char *const headers[]);

#endif
