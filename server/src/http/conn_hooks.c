/* conn_hooks.c - conns.h wired into libmicrohttpd (see conn_hooks.h). */
#include "conn_hooks.h"

#include <string.h>
#include <sys/resource.h>

#include "base/log.h"
#include "conns.h"
#include "request_keep.h"

/* Descriptors the daemon needs besides its connections: the store, the
 * log, epoll and its pipes, the listening socket. */
#define FD_OVERHEAD 256u

/* Room in libmicrohttpd's own limit for evicted connections not yet closed. */
static unsigned eviction_room(unsigned max)
{
    return max / 4u + 64u;
}

static unsigned fds_needed(unsigned max)
{
    return max + NSD_CONNS_RESERVE + eviction_room(max) + FD_OVERHEAD;
}

/* Raise the soft descriptor limit as far as --max-connections needs; the
 * general pool shrinks to what the hard limit allows. */
static unsigned fit_fd_limit(unsigned max)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return max;
    rlim_t need = fds_needed(max);
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < need) {
        rlim_t want = rl.rlim_max == RLIM_INFINITY || rl.rlim_max >= need ? need : rl.rlim_max;
        struct rlimit set = {want, rl.rlim_max};
        if (setrlimit(RLIMIT_NOFILE, &set) == 0)
            rl.rlim_cur = want;
    }
    unsigned fitted = max;
    while (fitted > 1 && rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < fds_needed(fitted))
        fitted = fitted * 7u / 8u;
    if (fitted != max)
        nsd_log(NSD_LOG_WARN, "connections_limited", "max_connections=%u wanted=%u fd_limit=%llu",
                fitted, max, (unsigned long long)rl.rlim_cur);
    return fitted;
}

int nsd_conn_hooks_setup(nsd_server_t *server, unsigned *mhd_limit)
{
    const nsd_options_t *opts = server->opts;
    nsd_conns_config_t cfg = {
        .max = fit_fd_limit((unsigned)opts->max_connections),
        .per_address = (uint32_t)opts->max_connections_per_address,
        .header_ms = (uint64_t)opts->header_timeout,
        .body_ms = (uint64_t)opts->body_timeout,
        .idle_ms = (uint64_t)opts->idle_timeout,
    };
    server->conns = nsd_conns_create(&cfg);
    if (server->conns == NULL || nsd_conns_start(server->conns) != 0) {
        nsd_conns_free(server->conns);
        server->conns = NULL;
        return NS_ENOMEM;
    }
    *mhd_limit = cfg.max + NSD_CONNS_RESERVE + eviction_room(cfg.max);
    return 0;
}

void nsd_conn_hooks_teardown(nsd_server_t *server)
{
    nsd_conns_free(server->conns);
    server->conns = NULL;
}

void nsd_conn_hook_notify(void *cls, struct MHD_Connection *conn, void **socket_context,
                          enum MHD_ConnectionNotificationCode code)
{
    nsd_server_t *server = cls;
    if (code == MHD_CONNECTION_NOTIFY_CLOSED) {
        nsd_request_kept_free(server, *socket_context);
        nsd_conns_closed(server->conns, *socket_context);
        *socket_context = NULL;
        return;
    }
    const union MHD_ConnectionInfo *fd =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    const union MHD_ConnectionInfo *addr =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    *socket_context = nsd_conns_started(server->conns, fd != NULL ? fd->connect_fd : -1,
                                        addr != NULL ? addr->client_addr : NULL,
                                        (socklen_t)sizeof(struct sockaddr_storage));
}

nsd_conn_t *nsd_conn_hook_record(struct MHD_Connection *conn)
{
    const union MHD_ConnectionInfo *info =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return info != NULL ? info->socket_context : NULL;
}

/* GET or HEAD of a probe path. */
static int is_probe(const nsd_request_t *req)
{
    static const char *const probes[] = {"/livez", "/healthz", "/readyz", "/metrics"};
    if (strcmp(req->method, "GET") != 0 && strcmp(req->method, "HEAD") != 0)
        return 0;
    for (size_t i = 0; i < sizeof(probes) / sizeof(probes[0]); i++)
        if (strcmp(req->path, probes[i]) == 0)
            return 1;
    return 0;
}

void nsd_conn_hook_gate(nsd_request_t *req)
{
    nsd_conns_t *conns = req->server->conns;
    nsd_conns_headers_done(conns, req->link);
    if (!nsd_conns_reserved(req->link))
        return;
    /* A reserved slot is given back as soon as its answer is sent. */
    req->close_after = 1;
    if (is_probe(req) || nsd_conns_take_other(conns, req->link))
        return;
    req->pending_error = ns_error_set(&req->pending_detail, NS_ECONNS, "",
                                      "every connection slot is taken; this connection may carry "
                                      "probes only (/livez, /healthz, /readyz, /metrics)");
}
