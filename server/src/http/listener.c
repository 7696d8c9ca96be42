/* listener.c - the listening socket, the accept thread and the dealing of
 * connections over the daemons (see listener.h).
 *
 * DESIGN
 *  Counts: a daemon's count goes up on the accept thread before
 *  MHD_add_connection (down again if that fails) and down when its
 *  connection is reported closed, so the accept thread never deals to a
 *  daemon by a count that misses its own earlier hand-offs.
 *  Quiesce: the accept thread polls the listening socket and a pipe; a byte
 *  on the pipe ends it, then the socket closes (no descriptor is closed
 *  while another thread may still poll it). */
#define _GNU_SOURCE /* accept4, pipe2 */
#include "listener.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "base/log.h"
#include "conn_hooks.h"
#include "conns.h"

struct nsd_listener_slot_s {
    nsd_listener_t *listener;
    struct MHD_Daemon *daemon;
    atomic_long open;
};

struct nsd_listener_s {
    nsd_server_t *server;
    int fd;          /* listening socket; -1 once closed */
    int wake[2];     /* a byte on wake[1] ends the accept thread */
    pthread_t thread;
    int running;
    unsigned n;
    nsd_listener_slot_t slots[];
};

static int bind_listen(const struct addrinfo *ai)
{
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0)
        return -1;
    int on = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on));
    if (ai->ai_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &on, sizeof(on));
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, SOMAXCONN) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static uint16_t bound_port(int fd)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0)
        return 0;
    if (ss.ss_family == AF_INET6)
        return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    return ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

int nsd_listener_open(nsd_server_t *server, unsigned n, int *family, ns_error_detail_t *err)
{
    const nsd_addr_t *addr = &server->opts->listen;
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    char port[8];
    snprintf(port, sizeof(port), "%u", (unsigned)addr->port);
    int gai = getaddrinfo(addr->host, port, &hints, &res);
    if (gai != 0 || res == NULL)
        return ns_error_set(err, NS_EINVAL, "", "cannot resolve %s: %s", addr->host,
                            gai_strerror(gai));
    nsd_listener_t *l = calloc(1, sizeof(*l) + n * sizeof(l->slots[0]));
    if (l == NULL || pipe2(l->wake, O_CLOEXEC | O_NONBLOCK) != 0) {
        free(l);
        freeaddrinfo(res);
        return ns_error_set(err, NS_ENOMEM, "", "out of memory");
    }
    l->fd = bind_listen(res);
    *family = res->ai_family;
    freeaddrinfo(res);
    if (l->fd < 0) {
        close(l->wake[0]);
        close(l->wake[1]);
        free(l);
        return ns_error_set(err, NS_EIO, "",
                            "cannot listen on %s:%u (in use, or not an address of this host)",
                            addr->host, (unsigned)addr->port);
    }
    l->server = server;
    l->n = n;
    for (unsigned i = 0; i < n; i++) {
        l->slots[i].listener = l;
        atomic_init(&l->slots[i].open, 0);
    }
    server->listener = l;
    server->port = bound_port(l->fd);
    return 0;
}

nsd_listener_slot_t *nsd_listener_slot(nsd_listener_t *l, unsigned i)
{
    return &l->slots[i];
}

void nsd_listener_set_daemon(nsd_listener_t *l, unsigned i, struct MHD_Daemon *daemon)
{
    l->slots[i].daemon = daemon;
}

/* The daemon with the fewest open connections, the lowest index among equals. */
static nsd_listener_slot_t *least_loaded(nsd_listener_t *l)
{
    nsd_listener_slot_t *best = &l->slots[0];
    long best_open = atomic_load(&best->open);
    for (unsigned i = 1; i < l->n; i++) {
        long open = atomic_load(&l->slots[i].open);
        if (open < best_open) {
            best = &l->slots[i];
            best_open = open;
        }
    }
    return best;
}

static void hand_over(nsd_listener_t *l, int fd, const struct sockaddr_storage *ss, socklen_t len)
{
    nsd_conns_t *conns = l->server->conns;
    if (!nsd_conns_admit_socket(conns, fd, (const struct sockaddr *)ss, len)) {
        close(fd);
        return;
    }
    nsd_listener_slot_t *slot = least_loaded(l);
    atomic_fetch_add(&slot->open, 1);
    /* MHD closes the socket when it cannot take it. */
    if (MHD_add_connection(slot->daemon, fd, (const struct sockaddr *)ss, len) != MHD_YES) {
        atomic_fetch_sub(&slot->open, 1);
        nsd_conns_abandon_socket(conns, fd);
    }
}

static void *accept_main(void *arg)
{
    nsd_listener_t *l = arg;
    struct pollfd pfd[2] = {{.fd = l->fd, .events = POLLIN}, {.fd = l->wake[0], .events = POLLIN}};
    for (;;) {
        if (poll(pfd, 2, -1) < 0 && errno != EINTR)
            break;
        if (pfd[1].revents != 0)
            break;
        if ((pfd[0].revents & POLLIN) == 0)
            continue;
        struct sockaddr_storage ss;
        socklen_t len = sizeof(ss);
        int fd = accept4(l->fd, (struct sockaddr *)&ss, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            /* Out of descriptors: back off instead of spinning. */
            if (errno == EMFILE || errno == ENFILE)
                poll(NULL, 0, 10);
            continue;
        }
        hand_over(l, fd, &ss, len);
    }
    return NULL;
}

int nsd_listener_start(nsd_listener_t *l)
{
    if (fcntl(l->fd, F_SETFL, O_NONBLOCK) != 0 || pthread_create(&l->thread, NULL, accept_main, l) != 0)
        return NS_ENOMEM;
    l->running = 1;
    return 0;
}

void nsd_listener_notify(void *cls, struct MHD_Connection *conn, void **socket_context,
                         enum MHD_ConnectionNotificationCode code)
{
    nsd_listener_slot_t *slot = cls;
    nsd_conn_hook_notify(slot->listener->server, conn, socket_context, code);
    if (code == MHD_CONNECTION_NOTIFY_CLOSED)
        atomic_fetch_sub(&slot->open, 1);
}

void nsd_listener_quiesce(nsd_listener_t *l)
{
    if (l == NULL || l->fd < 0)
        return;
    if (l->running) {
        char byte = 1;
        while (write(l->wake[1], &byte, 1) < 0 && errno == EINTR)
            ;
        pthread_join(l->thread, NULL);
        l->running = 0;
    }
    close(l->fd);
    l->fd = -1;
}

void nsd_listener_free(nsd_listener_t *l)
{
    if (l == NULL)
        return;
    nsd_listener_quiesce(l);
    for (unsigned i = 0; i < l->n; i++)
        if (l->slots[i].daemon != NULL)
            MHD_stop_daemon(l->slots[i].daemon);
    close(l->wake[0]);
    close(l->wake[1]);
    free(l);
}

unsigned nsd_listener_threads(const nsd_listener_t *l)
{
    return l != NULL ? l->n : 0;
}

long nsd_listener_connections(const nsd_listener_t *l, unsigned i)
{
    return l != NULL && i < l->n ? atomic_load(&l->slots[i].open) : 0;
}
