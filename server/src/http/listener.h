/* listener.h - normstatd's listening socket and the dealing of its
 * connections over the HTTP threads.
 *
 * libmicrohttpd's thread pool keeps a connection on the thread that
 * accepted it, and one thread often accepts several in a row: two busy
 * keep-alive connections then share a thread and are served one after the
 * other. So normstatd listens itself: one accept thread hands each new
 * connection (MHD_add_connection) to the one of --threads single-threaded
 * daemons (MHD_USE_NO_LISTEN_SOCKET) that holds the fewest open
 * connections, the lowest index among equals.
 *
 * Admission (conns.h) is judged on the accept thread before the hand-off;
 * a refused socket is closed at once.
 *
 * Threads: open, set_daemon, start and free on the thread that starts and
 * stops HTTP; the accept thread of its own; nsd_listener_notify on the
 * daemons' threads; nsd_listener_connections from any thread (atomics). */
#ifndef NSD_LISTENER_H
#define NSD_LISTENER_H

#include <stdint.h>

#include <microhttpd.h>

#include "base/options.h"
#include "http.h"

/* A daemon's place in the listener: the notify callback's cls. */
typedef struct nsd_listener_slot_s nsd_listener_slot_t;

/*! nsd_listener_open() :
 *  Resolve 'addr', bind (SO_REUSEADDR; an IPv6 address listens on IPv6)
 *  and listen; 'n' daemons to deal connections to, set later.
 *  @return 0 with server->listener set, its port in server->port and the
 *  address family in *family, or NS_EINVAL / NS_EIO / NS_ENOMEM with 'err'. */
int nsd_listener_open(nsd_server_t *server, unsigned n, int *family, ns_error_detail_t *err);

/*! nsd_listener_slot() : the cls to give daemon 'i''s nsd_listener_notify. */
nsd_listener_slot_t *nsd_listener_slot(nsd_listener_t *l, unsigned i);

/*! nsd_listener_set_daemon() : daemon 'i', started with MHD_USE_NO_LISTEN_SOCKET. */
void nsd_listener_set_daemon(nsd_listener_t *l, unsigned i, struct MHD_Daemon *daemon);

/*! nsd_listener_start() : start the accept thread. @return 0, or NS_ENOMEM. */
int nsd_listener_start(nsd_listener_t *l);

/*! nsd_listener_notify() : MHD_NotifyConnectionCallback; cls is a slot.
 *  Keeps the daemon's count and calls nsd_conn_hook_notify(). */
void nsd_listener_notify(void *cls, struct MHD_Connection *conn, void **socket_context,
                         enum MHD_ConnectionNotificationCode code);

/*! nsd_listener_quiesce() : stop accepting: the accept thread ends and the
 *  listening socket closes; connections already handed over stay. Idempotent. */
void nsd_listener_quiesce(nsd_listener_t *l);

/*! nsd_listener_free() : quiesce, stop every daemon (MHD_stop_daemon: no
 *  connection may be suspended), free. NULL is fine. */
void nsd_listener_free(nsd_listener_t *l);

/*! nsd_listener_threads() : the number of daemons (HTTP threads). */
unsigned nsd_listener_threads(const nsd_listener_t *l);

/*! nsd_listener_connections() : connections open on daemon 'i' (handed
 *  over and not yet reported closed). */
long nsd_listener_connections(const nsd_listener_t *l, unsigned i);

#endif /* NSD_LISTENER_H */
