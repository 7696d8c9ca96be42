/* conn_hooks.h - conns.h wired into libmicrohttpd: the connection
 * notifications, the reserve's gate and the file descriptor
 * limit. Called by http.c only.
 *
 * Threads: the hooks run on MHD's pool threads; setup and teardown on the
 * thread that starts and stops HTTP. */
#ifndef NSD_CONN_HOOKS_H
#define NSD_CONN_HOOKS_H

#include <sys/socket.h>

#include <microhttpd.h>

#include "http.h"

/*! nsd_conn_hooks_setup() :
 *  Raise RLIMIT_NOFILE for --max-connections (lowering the limit, logged,
 *  if the hard limit is too low), create server->conns and start its sweep.
 *  @return 0 with *mhd_limit, the connection limit to give libmicrohttpd
 *  (ours plus the reserve plus room for evicted connections not yet
 *  closed), or NS_ENOMEM. */
int nsd_conn_hooks_setup(nsd_server_t *server, unsigned *mhd_limit);

/*! nsd_conn_hooks_teardown() : after MHD_stop_daemon(). */
void nsd_conn_hooks_teardown(nsd_server_t *server);

/*! nsd_conn_hook_notify() : MHD_NotifyConnectionCallback; cls is the server. */
void nsd_conn_hook_notify(void *cls, struct MHD_Connection *conn, void **socket_context,
                          enum MHD_ConnectionNotificationCode code);

/*! nsd_conn_hook_record() : the record of 'conn' (NULL if it has none). */
nsd_conn_t *nsd_conn_hook_record(struct MHD_Connection *conn);

/*! nsd_conn_hook_gate() :
 *  On a request's first call, headers in: start its body deadline and, on
 *  a reserved connection, let a probe or the one other request through
 *  (close_after set) or refuse it (pending_error NS_ECONNS, close_after). */
void nsd_conn_hook_gate(nsd_request_t *req);

#endif /* NSD_CONN_HOOKS_H */
