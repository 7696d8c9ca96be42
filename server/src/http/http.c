/* http.c - the libmicrohttpd daemon: request life cycle, body collection,
 * suspend/resume (the answers themselves: respond.c).
 *
 * DESIGN
 *  Threads: --threads single-threaded MHD daemons (epoll or poll) call
 *  on_access and on_completed; a connection stays on the daemon the accept
 *  thread of listener.c gave it to. Our other thread is the connection
 *  sweep of conns.c.
 *  Request life: on_access allocates the nsd_request_t on its first call
 *  (in_flight + 1) and on_completed frees it (in_flight - 1), whatever
 *  happened in between; the coordinator's drain waits for in_flight == 0.
 *  Deferred answers (/sync, nsd_respond_durable): the handler calls
 *  nsd_request_defer(); the waker calls nsd_request_wake() from any thread
 *  (a registry or store callback, never under a registry or store lock).
 *  req->wait_lock orders the two: after_handler() checks 'woken' and, if
 *  not yet woken, suspends the connection while holding it; the waker sets
 *  'woken', reads 'suspended' under it and resumes after unlocking. Lock
 *  order: wait_lock, then MHD's own (MHD_suspend_connection); no registry
 *  or store lock is ever taken under wait_lock.
 *  Shutdown: nsd_registry_shutdown() wakes every waiting /sync, so no
 *  connection is suspended when MHD_stop_daemon() runs.
 *  Request target and framing, checked where MHD is lenient: target.c.
 *  Connections: conns.c (via conn_hooks.c) hears of each request phase. */
#include "http.h"

#include <errno.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <microhttpd.h>

#include "auth.h"
#include "conn_hooks.h"
#include "conns.h"
#include "base/clock.h"
#include "base/log.h"
#include "base/size_limits.h"
#include "counters.h"
#include "listener.h"
#include "request_keep.h"
#include "store/store.h"
#include "target.h"
#include "tls.h"

/* Per-connection buffer; larger means fewer, bigger body chunks. */
#define CONNECTION_MEMORY (128u * 1024u)

const char *nsd_request_query(nsd_request_t *req, const char *key)
{
    for (size_t i = 0; i < req->n_params; i++)
        if (strcmp(req->params[i].key, key) == 0)
            return req->params[i].value;
    return NULL;
}

const char *nsd_request_header(nsd_request_t *req, const char *name)
{
    return MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, name);
}

ns_format_t nsd_request_answer_format(nsd_request_t *req)
{
    const char *accept = nsd_request_header(req, "Accept");
    if (accept != NULL && strstr(accept, "application/safetensors") != NULL)
        return NS_FORMAT_SAFETENSORS;
    if (accept != NULL && strstr(accept, "application/json") != NULL)
        return NS_FORMAT_JSON;
    return req->body_format;
}

int nsd_request_check_query(nsd_request_t *req, const char *const allowed[], ns_error_detail_t *err)
{
    for (size_t i = 0; i < req->n_params; i++) {
        size_t k = 0;
        while (allowed != NULL && allowed[k] != NULL && strcmp(allowed[k], req->params[i].key) != 0)
            k++;
        if (allowed == NULL || allowed[k] == NULL)
            return ns_error_set(err, NS_EINVAL, req->params[i].key,
                                allowed == NULL || allowed[0] == NULL
                                    ? "unknown query parameter; this route takes none"
                                    : "unknown query parameter");
    }
    return 0;
}

void nsd_request_defer(nsd_request_t *req, nsd_handler_fn on_wake)
{
    req->on_wake = on_wake;
    req->deferred = 1;
}

void nsd_request_wake(nsd_request_t *req)
{
    /* The handler's thread checks 'woken' and suspends under the same lock,
     * so either it sees woken (and answers at once) or we see suspended (and
     * resume). 'conn' is read under the lock: once unlocked and resumed, the
     * request may complete and be freed on another thread. */
    pthread_mutex_lock(&req->wait_lock);
    req->woken = 1;
    int suspended = req->suspended;
    struct MHD_Connection *conn = req->conn;
    pthread_mutex_unlock(&req->wait_lock);
    if (suspended)
        MHD_resume_connection(conn);
}

/* Media type of a Content-Type value without parameters, compared case-insensitively. */
static int media_is(const char *value, const char *type)
{
    while (*value == ' ' || *value == '\t')
        value++;
    size_t len = strcspn(value, ";");
    while (len > 0 && (value[len - 1] == ' ' || value[len - 1] == '\t'))
        len--;
    return strlen(type) == len && strncasecmp(value, type, len) == 0;
}

/* First call: check the framing, authenticate, match the route and the
 * query, check Content-Length and Content-Type. */
static void request_begin(nsd_request_t *req)
{
    nsd_server_t *srv = req->server;
    if (nsd_target_check_framing(req) != 0) {
        req->pending_error = NS_EINVAL;
        req->close_after = 1;
        return;
    }
    /* Before anything else: a refused request has no route, so its body is
     * read and dropped, never collected, and it is answered after it. */
    nsd_grant_t grant = {.scope = NSD_SCOPE_ADMIN};
    if (!nsd_auth_exempt(req->method, req->path)) {
        const char *authz = nsd_request_header(req, MHD_HTTP_HEADER_AUTHORIZATION);
        int auth = nsd_auth_check(srv->auth, authz, &grant, &req->token_unknown);
        if (auth != 0) {
            req->pending_error = auth;
            return;
        }
    }
    if (req->target_nul) {
        req->pending_error = ns_error_set(&req->pending_detail, NS_EINVAL, "path",
                                          "the request target holds a NUL byte");
        return;
    }
    int rc = nsd_routes_match(req->method, req->path, &req->route, req->run, sizeof(req->run),
                              req->allow, sizeof(req->allow), &req->pending_detail);
    if (rc == NS_ENOTFOUND || rc == NS_EMETHOD)
        req->route = NULL;
    /* The scope is judged once the route and its run are known. */
    if (rc == 0 && req->route != NULL &&
        nsd_auth_permit(&grant, req->method, req->run, &req->scope_missing, &req->pending_detail) !=
            0) {
        req->route = NULL;
        req->pending_error = NS_EFORBIDDEN;
        return;
    }
    if (rc == 0 && req->query != NULL)
        rc = nsd_query_parse(req->query, req->params, NSD_QUERY_PARAMS_MAX, &req->n_params,
                             &req->pending_detail);
    if (rc == 0 && req->route != NULL)
        rc = nsd_request_check_query(req, req->route->query, &req->pending_detail);
    if (rc != 0)
        req->pending_error = rc;

    const char *cl = nsd_request_header(req, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (cl != NULL) {
        errno = 0;
        char *end;
        unsigned long long n = strtoull(cl, &end, 10);
        if (errno == 0 && *end == '\0' && n > srv->opts->max_body) {
            req->pending_error = NS_ETOOLARGE;
            return;
        }
        /* Counted against --max-memory before a byte of it is read. */
        if (errno == 0 && *end == '\0' && n > 0 && req->pending_error == 0 && req->route != NULL &&
            req->route->body != NSD_BODY_NONE && nsd_request_reserve_body(req, n) != 0) {
            req->pending_error = NS_EMEMORY;
            return;
        }
        /* One allocation for the whole body instead of doubling as it
         * arrives. Out of memory frees the buffer: the appends then fail
         * and answer it. */
        if (errno == 0 && *end == '\0' && n > 0 && req->pending_error == 0 && req->route != NULL &&
            req->route->body != NSD_BODY_NONE && ns_buf_reserve(&req->body, (size_t)n) != 0)
            ns_buf_init(&req->body, srv->opts->max_body);
    }
    if (req->pending_error != 0 || req->route == NULL || req->route->body == NSD_BODY_NONE)
        return;
    const char *ct = nsd_request_header(req, MHD_HTTP_HEADER_CONTENT_TYPE);
    req->body_format = NS_FORMAT_JSON;
    if (ct == NULL || media_is(ct, "application/json"))
        return;
    if (req->route->body == NSD_BODY_REPORT && media_is(ct, "application/safetensors")) {
        req->body_format = NS_FORMAT_SAFETENSORS;
        return;
    }
    req->pending_error = NS_EMEDIATYPE;
}

/* 403 with the scope the token lacks: {"error": {"code", "message", "scope"}}. */
static void respond_forbidden(nsd_request_t *req)
{
    const char *scope = req->scope_missing != NULL ? req->scope_missing : "admin";
    json_t *body = json_pack("{s:{s:s, s:s, s:s}}", "error", "code", "forbidden", "message",
                             req->pending_detail.message, "scope", scope);
    nsd_count_rejection(NS_EFORBIDDEN);
    if (nsd_log_enabled(NSD_LOG_DEBUG)) {
        char q[600];
        nsd_log_write(NSD_LOG_DEBUG, "request_rejected",
                      "method=%s path=%s status=403 code=forbidden scope=%s", req->method,
                      nsd_log_quote(q, sizeof(q), req->path), scope);
    }
    nsd_respond_json(req, 403, body);
}

static void respond_pending_error(nsd_request_t *req)
{
    char msg[256];
    switch (req->pending_error) {
    case NS_ENOTFOUND:
        snprintf(msg, sizeof(msg), "no route for %.200s", req->path);
        nsd_respond_error(req, NS_ENOTFOUND, msg);
        break;
    case NS_EMETHOD:
        snprintf(msg, sizeof(msg), "%.16s not allowed; allowed: %.64s", req->method, req->allow);
        nsd_respond_error(req, NS_EMETHOD, msg);
        break;
    case NS_EUNAUTHORIZED:
        nsd_respond_error(req, NS_EUNAUTHORIZED,
                          req->token_unknown
                              ? "the bearer token is not known"
                              : "authentication required: send \"Authorization: Bearer <token>\"");
        break;
    case NS_EFORBIDDEN:
        respond_forbidden(req);
        break;
    case NS_EINVAL:
    case NS_ECONNS:
    case NS_EMEMORY:
        nsd_respond_detail(req, req->pending_error, &req->pending_detail);
        break;
    case NS_ETOOLARGE:
        snprintf(msg, sizeof(msg), "request body larger than %llu bytes (--max-body)",
                 (unsigned long long)req->server->opts->max_body);
        nsd_respond_error(req, NS_ETOOLARGE, msg);
        break;
    case NS_EMEDIATYPE: {
        const char *ct = nsd_request_header(req, MHD_HTTP_HEADER_CONTENT_TYPE);
        snprintf(msg, sizeof(msg), "Content-Type %.100s not accepted; use application/json%s",
                 ct ? ct : "",
                 req->route && req->route->body == NSD_BODY_REPORT ? " or application/safetensors"
                                                                   : "");
        nsd_respond_error(req, NS_EMEDIATYPE, msg);
        break;
    }
    default:
        nsd_respond_error(req, req->pending_error, NULL);
    }
}

/* Writes are refused before recovery finished and while the store fails.
 * @return 0 or the code to answer with (message in msg). */
static int write_gate(nsd_request_t *req, const char **msg)
{
    if (strcmp(req->route->method, "GET") == 0)
        return 0;
    if (!atomic_load(&req->server->ready)) {
        *msg = "recovering the store; writes are accepted once /readyz answers 200";
        return NS_ENOTREADY;
    }
    if (req->server->store != NULL && nsd_store_status(req->server->store) != 0) {
        *msg = "commits to the data directory fail (disk full or I/O error); retry later";
        return NS_EIO;
    }
    return 0;
}

/* A relay serves reports, its probes and metrics; runs and statistics live upstream.
 * @return 0 or the code to answer with (message in msg). */
static int relay_gate(nsd_request_t *req, const char **msg)
{
    static const char *const served[] = {"batches", "sync",    "livez",   "healthz",
                                         "readyz",  "metrics", "version", NULL};
    if (req->server->relay == NULL)
        return 0;
    for (size_t i = 0; served[i] != NULL; i++)
        if (strcmp(req->route->label, served[i]) == 0)
            return 0;
    *msg = "this normstatd is a relay (--upstream): it serves /batches, /sync, /metrics and the "
           "probes; ask its upstream for runs and statistics";
    return NS_ENOTFOUND;
}

/* After a handler returned: suspend a deferred request unless it was already woken. */
static void after_handler(nsd_request_t *req)
{
    if (req->responded || req->status < 0)
        return;
    if (req->deferred) {
        pthread_mutex_lock(&req->wait_lock);
        int woken = req->woken;
        if (!woken) {
            MHD_suspend_connection(req->conn);
            req->suspended = 1;
        }
        pthread_mutex_unlock(&req->wait_lock);
        if (!woken)
            return;
        req->deferred = 0;
        req->on_wake(req);
    }
    if (!req->responded && req->status >= 0)
        nsd_respond_error(req, NS_EINTERNAL, "the handler gave no answer");
}

/* MHD_OPTION_URI_LOG_CALLBACK: the request target as received, before MHD
 * parses it; the result becomes the request's *con_cls. */
static void *on_uri(void *cls, const char *uri, struct MHD_Connection *conn)
{
    nsd_server_t *srv = cls;
    nsd_conn_t *link = nsd_conn_hook_record(conn);
    nsd_conns_request_line(srv->conns, link);
    nsd_request_t *req = nsd_request_new(srv, link);
    if (req == NULL)
        return NULL;
    req->conn = conn;
    if (nsd_target_record(req, uri) != 0) {
        nsd_request_done(req);
        return NULL;
    }
    return req;
}

static enum MHD_Result on_access(void *cls, struct MHD_Connection *conn, const char *url,
                                 const char *method, const char *version, const char *upload_data,
                                 size_t *upload_data_size, void **con_cls)
{
    nsd_server_t *srv = cls;
    nsd_request_t *req = *con_cls;
    if (req == NULL)
        return MHD_NO; /* on_uri ran out of memory */
    if (!req->begun) {
        req->begun = 1;
        req->conn = conn;
        req->method = method;
        req->path = url;
        req->start_ns = nsd_now_ns();
        nsd_target_check_nul(req, url, version);
        atomic_fetch_add(&srv->in_flight, 1);
        nsd_conn_hook_gate(req);
        if (req->pending_error == 0)
            request_begin(req);
        /* A body we will not read, whose length is ambiguous, or on a
         * reserved connection that may not carry it, is refused at once;
         * the connection closes. */
        if (req->pending_error == NS_ETOOLARGE || req->pending_error == NS_ECONNS ||
            (req->close_after && req->pending_error != 0))
            respond_pending_error(req);
        return req->status < 0 ? MHD_NO : MHD_YES;
    }
    if (req->status < 0)
        return MHD_NO;
    if (*upload_data_size > 0) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        /* Past --body-timeout: close (the sweep would shut it down anyway). */
        if (nsd_conns_overdue(srv->conns, req->link))
            return MHD_NO;
        nsd_count_body_bytes(1, n);
        if (req->responded)
            return MHD_YES;
        /* MHD accepts a response only before or after the body, so an error
         * found while it arrives is answered once it ended; the rest of the
         * body is read and dropped, up to a bound past which the connection
         * is simply closed. */
        if (req->pending_error == 0 && req->route != NULL && req->route->body != NSD_BODY_NONE) {
            int rc = nsd_request_reserve_body(req, req->body.len + n);
            if (rc != 0) {
                req->pending_error = rc;
                req->discarded = req->body.len + n;
                ns_buf_free(&req->body);
                return MHD_YES;
            }
            rc = ns_buf_append(&req->body, upload_data, n);
            if (rc != 0) {
                req->pending_error = rc;
                req->discarded = srv->opts->max_body;
            }
            return MHD_YES;
        }
        req->discarded += n;
        if (req->discarded > srv->opts->max_body && req->pending_error == 0)
            req->pending_error = NS_ETOOLARGE;
        if (req->discarded > srv->opts->max_body + NSD_DISCARD_MAX) {
            nsd_log(NSD_LOG_INFO, "request_body_dropped", "method=%s bytes=%llu", req->method,
                    (unsigned long long)req->discarded);
            return MHD_NO;
        }
        return MHD_YES;
    }
    nsd_conns_body_done(srv->conns, req->link);
    if (req->responded)
        return MHD_YES;
    if (req->deferred) {
        /* Resumed after nsd_request_wake(). */
        req->deferred = 0;
        req->on_wake(req);
    } else if (req->pending_error != 0) {
        respond_pending_error(req);
    } else {
        const char *msg = NULL;
        int gate = relay_gate(req, &msg);
        gate = gate != 0 ? gate : write_gate(req, &msg);
        if (gate != 0)
            nsd_respond_error(req, gate, msg);
        else if (req->route->body == NSD_BODY_JSON &&
                 nsd_request_reserve_decoding(req, NS_DECODE_JSON_TREE) != 0)
            nsd_respond_detail(req, NS_EMEMORY, &req->pending_detail);
        else
            req->route->handler(req);
    }
    after_handler(req);
    return req->status < 0 ? MHD_NO : MHD_YES;
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    nsd_server_t *srv = cls;
    nsd_request_t *req = *con_cls;
    nsd_conns_request_done(srv->conns, nsd_conn_hook_record(conn));
    if (req == NULL)
        return;
    if (!req->begun) {
        /* MHD refused the request before our access handler saw it. */
        nsd_request_done(req);
        *con_cls = NULL;
        return;
    }
    double seconds = (double)(nsd_now_ns() - req->start_ns) * 1e-9;
    if (nsd_log_enabled(NSD_LOG_DEBUG) || toe != MHD_REQUEST_TERMINATED_COMPLETED_OK) {
        int level = toe == MHD_REQUEST_TERMINATED_COMPLETED_OK ? NSD_LOG_DEBUG : NSD_LOG_INFO;
        char q[300];
        nsd_log(level, "request", "method=%s path=%s status=%d ms=%.3f completed=%d", req->method,
                nsd_log_quote(q, sizeof(q), req->path), req->responded ? req->status : 0,
                seconds * 1e3, toe == MHD_REQUEST_TERMINATED_COMPLETED_OK);
    }
    if (req->user_free != NULL)
        req->user_free(req->user);
    nsd_request_done(req);
    *con_cls = NULL;
    atomic_fetch_sub(&srv->in_flight, 1);
}

static void mhd_logger(void *cls, const char *fmt, va_list ap)
    __attribute__((format(printf, 2, 0)));
static void mhd_logger(void *cls, const char *fmt, va_list ap)
{
    char msg[512], q[600];
    (void)cls;
    vsnprintf(msg, sizeof(msg), fmt, ap);
    size_t len = strlen(msg);
    while (len > 0 && (msg[len - 1] == '\n' || msg[len - 1] == ' '))
        msg[--len] = '\0';
    nsd_log(NSD_LOG_WARN, "mhd", "msg=%s", nsd_log_quote(q, sizeof(q), msg));
}

/* ---------------------------------------------------------------- daemon */

/* One single-threaded daemon without a listening socket: the listener
 * hands it its connections. */
static struct MHD_Daemon *start_daemon(nsd_server_t *server, unsigned i, unsigned flags,
                                       unsigned mhd_limit)
{
    /* MHD's own timeout only backs the idle deadline up (conns.c). */
    unsigned idle_s = (unsigned)((server->opts->idle_timeout + 999) / 1000) + 1;
    /* One option and its values per line. Admission is judged by the
     * listener before the hand-off, so no accept policy here. */
    /* clang-format off */
    return MHD_start_daemon(
        flags, 0, NULL, NULL, on_access, server,
        /* First, so MHD's own start-up messages come through it too. */
        MHD_OPTION_EXTERNAL_LOGGER, mhd_logger, NULL,
        MHD_OPTION_CONNECTION_TIMEOUT, idle_s,
        MHD_OPTION_CONNECTION_LIMIT, mhd_limit,
        MHD_OPTION_NOTIFY_CONNECTION, nsd_listener_notify, nsd_listener_slot(server->listener, i),
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)CONNECTION_MEMORY,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, server,
        MHD_OPTION_URI_LOG_CALLBACK, on_uri, server,
        MHD_OPTION_UNESCAPE_CALLBACK, nsd_target_unescape, NULL,
        MHD_OPTION_ARRAY, nsd_tls_mhd_options(server->tls),
        MHD_OPTION_END);
    /* clang-format on */
}

int nsd_http_start(nsd_server_t *server, ns_error_detail_t *err)
{
    const nsd_addr_t *listen = &server->opts->listen;
    unsigned threads = server->opts->threads > 1 ? (unsigned)server->opts->threads : 1u;
    int family = AF_INET;
    int rc = nsd_listener_open(server, threads, &family, err);
    if (rc != 0)
        return rc;
    unsigned mhd_limit;
    if (nsd_conn_hooks_setup(server, &mhd_limit) != 0) {
        nsd_listener_free(server->listener);
        server->listener = NULL;
        return ns_error_set(err, NS_ENOMEM, "", "out of memory");
    }
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_NO_LISTEN_SOCKET | MHD_USE_ITC |
                     MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    flags |= MHD_is_feature_supported(MHD_FEATURE_EPOLL) == MHD_YES ? MHD_USE_EPOLL : MHD_USE_POLL;
    flags |= nsd_tls_mhd_flags(server->tls);
    if (family == AF_INET6)
        flags |= MHD_USE_IPv6;
    for (unsigned i = 0; i < threads && rc == 0; i++) {
        struct MHD_Daemon *d = start_daemon(server, i, flags, mhd_limit);
        if (d == NULL)
            rc = ns_error_set(err, NS_EIO, "", "cannot start HTTP thread %u of %u", i, threads);
        else
            nsd_listener_set_daemon(server->listener, i, d);
    }
    if (rc == 0 && nsd_listener_start(server->listener) != 0)
        rc = ns_error_set(err, NS_ENOMEM, "", "cannot start the accept thread");
    if (rc != 0) {
        nsd_listener_free(server->listener);
        server->listener = NULL;
        nsd_conn_hooks_teardown(server);
        return rc;
    }
    snprintf(server->addr, sizeof(server->addr), family == AF_INET6 ? "[%s]:%u" : "%s:%u",
             listen->host, (unsigned)server->port);
    return 0;
}

/* No connection is accepted from now on; those accepted are served. */
void nsd_http_quiesce(nsd_server_t *server)
{
    nsd_listener_quiesce(server->listener);
}

void nsd_http_stop(nsd_server_t *server)
{
    if (server->listener == NULL)
        return;
    nsd_listener_free(server->listener);
    server->listener = NULL;
    nsd_conn_hooks_teardown(server);
}
