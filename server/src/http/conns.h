/* conns.h - normstatd's connections: who may connect, and how long a
 * connection may take to send its request.
 *
 * Admission (at accept, before libmicrohttpd allocates anything): at most
 * 'per_address' connections from one IP address; at most 'max' connections
 * in the general pool; when it is full, a connection that has not started a
 * request (waiting for headers, or idle between requests) of the address
 * holding the most connections is evicted to make room, provided that
 * address holds more than the newcomer's would; otherwise the newcomer may
 * take one of NSD_CONNS_RESERVE reserved slots (two per address: one
 * more while the last one's close is being processed), which
 * serve probes (/livez, /healthz, /readyz, /metrics) and one other request
 * at a time, each answered with "Connection: close".
 *
 * Deadlines (absolute, not idle time): a new connection must complete its
 * request headers within 'header_ms' of its accept; once the headers are in,
 * the body within 'body_ms'; between requests a connection may stay idle for
 * 'idle_ms', and once the next request line arrived its headers must follow
 * within 'header_ms'. Handling a request (and a /sync waiting for its step)
 * has no deadline. A sweep thread shuts down (shutdown(2)) the socket of a
 * connection past its deadline: libmicrohttpd then reads end-of-file and
 * closes it itself, the only way to close a connection from outside.
 *
 * Threads: every function may be called from any thread; one mutex guards
 * the table. libmicrohttpd reports a connection closed before it closes the
 * socket, and the record leaves the table under that mutex, so a socket is
 * never shut down after its descriptor could have been reused. */
#ifndef NSD_CONNS_H
#define NSD_CONNS_H

#include <stdatomic.h>
#include <stdint.h>
#include <sys/socket.h>

/* Slots beyond the general pool, for probes and one other request. */
#define NSD_CONNS_RESERVE             32
#define NSD_CONNS_RESERVE_PER_ADDRESS 2

typedef struct nsd_conns_s nsd_conns_t;
typedef struct nsd_conn_s nsd_conn_t;

typedef struct nsd_conns_config_s {
    uint32_t max;         /* general pool */
    uint32_t per_address; /* connections from one IP address, reserve included */
    uint64_t header_ms, body_ms, idle_ms;
} nsd_conns_config_t;

/* Why a connection was refused at accept. */
enum { NSD_REFUSED_PER_ADDRESS, NSD_REFUSED_LIMIT, NSD_REFUSED_REASONS };
/* Why the daemon closed a connection. */
enum {
    NSD_CLOSED_HEADER_TIMEOUT,
    NSD_CLOSED_BODY_TIMEOUT,
    NSD_CLOSED_IDLE_TIMEOUT,
    NSD_CLOSED_EVICTED,
    NSD_CLOSED_REASONS
};
extern const char *const nsd_conns_refused_names[NSD_REFUSED_REASONS];
extern const char *const nsd_conns_closed_names[NSD_CLOSED_REASONS];

typedef struct nsd_conns_stats_s {
    uint64_t open_general, open_reserve;
    uint64_t accepted;
    uint64_t refused[NSD_REFUSED_REASONS];
    uint64_t closed[NSD_CLOSED_REASONS];
} nsd_conns_stats_t;

/*! nsd_conns_create() : an empty table; NULL when out of memory. */
nsd_conns_t *nsd_conns_create(const nsd_conns_config_t *cfg);

/*! nsd_conns_start() : start the sweep thread. @return 0, or NS_ENOMEM. */
int nsd_conns_start(nsd_conns_t *conns);

/*! nsd_conns_free() : stop the sweep thread and free the table, after
 *  libmicrohttpd stopped (every connection reported closed). NULL is fine. */
void nsd_conns_free(nsd_conns_t *conns);

/*! nsd_conns_admit() :
 *  The accept policy: may a connection from 'addr' be accepted now? An
 *  admitted connection is held for this thread's next nsd_conns_started().
 *  @return 1 to accept, 0 to refuse (counted by reason). */
int nsd_conns_admit(nsd_conns_t *conns, const struct sockaddr *addr, socklen_t addr_len);

/*! nsd_conns_admit_socket() :
 *  nsd_conns_admit() for socket 'fd' accepted on one thread and started on
 *  another: the admission waits for the nsd_conns_started() of that socket.
 *  @return 1 to accept, 0 to refuse (or out of memory). */
int nsd_conns_admit_socket(nsd_conns_t *conns, int fd, const struct sockaddr *addr,
                           socklen_t addr_len);

/*! nsd_conns_abandon_socket() : 'fd' admitted by nsd_conns_admit_socket()
 *  was never started (libmicrohttpd refused it): give its slot back. */
void nsd_conns_abandon_socket(nsd_conns_t *conns, int fd);

/*! nsd_conns_started() :
 *  libmicrohttpd added the connection admitted last on this thread, with
 *  socket 'fd'. @return its record, or NULL when out of memory (the socket
 *  is then shut down, so the connection closes at once). */
nsd_conn_t *nsd_conns_started(nsd_conns_t *conns, int fd, const struct sockaddr *addr,
                              socklen_t addr_len);

/*! nsd_conns_closed() : libmicrohttpd closed the connection; frees 'c'. */
void nsd_conns_closed(nsd_conns_t *conns, nsd_conn_t *c);

/*! nsd_conns_kept() :
 *  The record's NSD_CONNS_KEPT slots for what its next requests reuse
 *  (request_keep.h), NULL for a NULL record. Only the connection's own
 *  thread touches them, never under the mutex; empty them before
 *  nsd_conns_closed(). Two, as libmicrohttpd may begin a request before it
 *  completed the one before. */
#define NSD_CONNS_KEPT 2
void **nsd_conns_kept(nsd_conn_t *c);

/*! nsd_conns_request_line() : a request line arrived: its headers are due. */
void nsd_conns_request_line(nsd_conns_t *conns, nsd_conn_t *c);

/*! nsd_conns_headers_done() : the headers are in: the body is due. */
void nsd_conns_headers_done(nsd_conns_t *conns, nsd_conn_t *c);

/*! nsd_conns_body_done() : the body is in: no deadline while handled. */
void nsd_conns_body_done(nsd_conns_t *conns, nsd_conn_t *c);

/*! nsd_conns_request_done() : answered: the connection may idle. */
void nsd_conns_request_done(nsd_conns_t *conns, nsd_conn_t *c);

/*! nsd_conns_overdue() :
 *  Is the connection past its deadline? The first call that says so counts
 *  the closing; the caller then closes the connection. */
int nsd_conns_overdue(nsd_conns_t *conns, nsd_conn_t *c);

/*! nsd_conns_reserved() : does 'c' hold a reserved slot? */
int nsd_conns_reserved(const nsd_conn_t *c);

/*! nsd_conns_take_other() :
 *  A reserved connection carries a request other than a probe: may it be
 *  served (the one such request at a time)? Released when 'c' closes.
 *  @return 1 if served, 0 if it is to be refused. */
int nsd_conns_take_other(nsd_conns_t *conns, nsd_conn_t *c);

/*! nsd_conns_stats() : a consistent copy of the counters. */
void nsd_conns_stats(nsd_conns_t *conns, nsd_conns_stats_t *dst);

#endif /* NSD_CONNS_H */
