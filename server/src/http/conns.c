/* conns.c - connection admission, eviction and deadlines (see conns.h).
 *
 * DESIGN
 *  One mutex guards everything: the list of live connections, the table of
 *  addresses (a chained hash of the IP address bytes, each entry counting
 *  its connections) and the counters. The accept policy runs before
 *  libmicrohttpd creates the connection, so the admission it grants is
 *  parked in a thread-local slot until nsd_conns_started(), which
 *  libmicrohttpd calls next on the same thread (0.9.75: accept, policy,
 *  then the connection-started notification, in one call); an admission
 *  left there by a connection libmicrohttpd failed to create is released
 *  by the next accept on that thread.
 *  An evicted or overdue connection's socket is shut down under the mutex;
 *  an evicted one gives its slot to the newcomer at once (its record stays,
 *  marked 'released', until libmicrohttpd reports it closed), so
 *  libmicrohttpd's own limit is set above ours (http.c). */
#include "conns.h"

#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include <normstat/proto.h>

#include "base/clock.h"

#define ADDR_BUCKETS 4096u
/* The sweep looks for connections past their deadline this often at most. */
#define SWEEP_MAX_MS 250u
#define SWEEP_MIN_MS 20u

const char *const nsd_conns_refused_names[NSD_REFUSED_REASONS] = {"per_address", "limit"};
const char *const nsd_conns_closed_names[NSD_CLOSED_REASONS] = {"header_timeout", "body_timeout",
                                                                "idle_timeout", "evicted"};

typedef struct addr_key_s {
    int family;
    unsigned char bytes[16];
} addr_key_t;

typedef struct addr_entry_s {
    struct addr_entry_s *next;
    addr_key_t key;
    uint32_t count;   /* connections counted against the limits */
    uint32_t reserve; /* of which in the reserve */
    uint32_t refs;    /* records and parked admissions pointing here */
} addr_entry_t;

enum { PHASE_HEADERS, PHASE_BODY, PHASE_BUSY, PHASE_IDLE };

struct nsd_conn_s {
    nsd_conn_t *prev, *next;
    addr_entry_t *addr;
    int fd;
    int reserved;         /* holds a reserved slot */
    int other;            /* holds the reserve's one non-probe request */
    int phase;            /* PHASE_* */
    int released;         /* evicted: no longer counted */
    int shut;             /* its socket was shut down */
    uint64_t since_ms;    /* accepted */
    uint64_t serial;      /* accepted as the table's serial-th: orders ages exactly */
    uint64_t deadline_ms; /* 0: none */
    /* Request contexts for the next requests (request_keep.c). */
    void *kept[NSD_CONNS_KEPT];
};

struct nsd_conns_s {
    nsd_conns_config_t cfg;
    pthread_mutex_t lock;
    pthread_cond_t wake;
    pthread_t sweeper;
    int sweeping, stopping;
    nsd_conn_t *head;
    addr_entry_t *buckets[ADDR_BUCKETS];
    uint32_t open_general, open_reserve;
    uint64_t serial;
    int other_taken;
    struct handoff_s *handoffs; /* admitted, not yet started */
    nsd_conns_stats_t stats;
};

/* An admission granted on another thread than the one that starts the
 * connection (nsd_conns_admit_socket), found by its socket. */
typedef struct handoff_s {
    struct handoff_s *next;
    int fd;
    addr_entry_t *addr;
    int reserved;
} handoff_t;

/* The admission granted by the accept policy, for nsd_conns_started(). */
static __thread struct {
    nsd_conns_t *conns;
    addr_entry_t *addr;
    int reserved;
} parked;

/* ---------------------------------------------------------------- addresses */

static int addr_key(const struct sockaddr *sa, socklen_t len, addr_key_t *key)
{
    memset(key, 0, sizeof(*key));
    if (sa == NULL)
        return -1;
    key->family = sa->sa_family;
    if (sa->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
        memcpy(key->bytes, &((const struct sockaddr_in *)sa)->sin_addr, 4);
        return 0;
    }
    if (sa->sa_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6)) {
        memcpy(key->bytes, &((const struct sockaddr_in6 *)sa)->sin6_addr, 16);
        return 0;
    }
    return 0; /* another family (a Unix socket): all share one entry */
}

static uint32_t addr_hash(const addr_key_t *key)
{
    uint32_t h = 2166136261u ^ (uint32_t)key->family; /* FNV-1a */
    for (size_t i = 0; i < sizeof(key->bytes); i++)
        h = (h ^ key->bytes[i]) * 16777619u;
    return h & (ADDR_BUCKETS - 1);
}

/* The entry of 'key', created on first use (with refs 0). NULL: out of memory. */
static addr_entry_t *addr_get(nsd_conns_t *conns, const addr_key_t *key)
{
    addr_entry_t **slot = &conns->buckets[addr_hash(key)];
    for (addr_entry_t *e = *slot; e != NULL; e = e->next)
        if (memcmp(&e->key, key, sizeof(*key)) == 0)
            return e;
    addr_entry_t *e = calloc(1, sizeof(*e));
    if (e == NULL)
        return NULL;
    e->key = *key;
    e->next = *slot;
    *slot = e;
    return e;
}

/* Drop one reference; the entry goes when nothing points to it. */
static void addr_unref(nsd_conns_t *conns, addr_entry_t *e)
{
    if (e == NULL || --e->refs > 0)
        return;
    addr_entry_t **slot = &conns->buckets[addr_hash(&e->key)];
    while (*slot != e)
        slot = &(*slot)->next;
    *slot = e->next;
    free(e);
}

/* ---------------------------------------------------------------- slots */

static void slot_take(nsd_conns_t *conns, addr_entry_t *e, int reserved)
{
    e->count++;
    e->reserve += reserved ? 1u : 0u;
    if (reserved)
        conns->open_reserve++;
    else
        conns->open_general++;
}

static void slot_give(nsd_conns_t *conns, addr_entry_t *e, int reserved)
{
    e->count--;
    e->reserve -= reserved ? 1u : 0u;
    if (reserved)
        conns->open_reserve--;
    else
        conns->open_general--;
}

/* Shut the socket down: libmicrohttpd reads end-of-file and closes it. */
static void shut(nsd_conns_t *conns, nsd_conn_t *c, int reason)
{
    if (c->shut)
        return;
    c->shut = 1;
    conns->stats.closed[reason]++;
    if (c->fd >= 0)
        shutdown(c->fd, SHUT_RDWR);
}

/* A general connection not inside a request, of the address holding the
 * most connections, provided that address holds at least two more than
 * 'newcomer' does (so eviction never just moves a slot between equals);
 * the oldest of that address. NULL if none. */
static nsd_conn_t *pick_victim(nsd_conns_t *conns, const addr_entry_t *newcomer)
{
    nsd_conn_t *best = NULL;
    for (nsd_conn_t *c = conns->head; c != NULL; c = c->next) {
        if (c->reserved || c->released || c->shut ||
            (c->phase != PHASE_HEADERS && c->phase != PHASE_IDLE))
            continue;
        if (c->addr->count < newcomer->count + 2)
            continue;
        if (best == NULL || c->addr->count > best->addr->count ||
            (c->addr == best->addr && c->serial < best->serial))
            best = c;
    }
    return best;
}

/* Release an admission parked by an accept libmicrohttpd did not complete. */
static void unpark(nsd_conns_t *conns)
{
    if (parked.conns != conns || parked.addr == NULL)
        return;
    slot_give(conns, parked.addr, parked.reserved);
    addr_unref(conns, parked.addr);
    parked.addr = NULL;
    parked.conns = NULL;
}

int nsd_conns_admit(nsd_conns_t *conns, const struct sockaddr *addr, socklen_t addr_len)
{
    addr_key_t key;
    addr_key(addr, addr_len, &key);
    pthread_mutex_lock(&conns->lock);
    unpark(conns);
    int reserved = 0, ok = 1;
    addr_entry_t *e = addr_get(conns, &key);
    if (e == NULL || e->count >= conns->cfg.per_address) {
        conns->stats.refused[NSD_REFUSED_PER_ADDRESS]++;
        ok = 0;
    } else if (conns->open_general >= conns->cfg.max) {
        nsd_conn_t *victim = pick_victim(conns, e);
        if (victim != NULL) {
            shut(conns, victim, NSD_CLOSED_EVICTED);
            victim->released = 1;
            slot_give(conns, victim->addr, 0);
        } else if (conns->open_reserve < NSD_CONNS_RESERVE &&
                   e->reserve < NSD_CONNS_RESERVE_PER_ADDRESS) {
            reserved = 1;
        } else {
            conns->stats.refused[NSD_REFUSED_LIMIT]++;
            ok = 0;
        }
    }
    if (ok) {
        slot_take(conns, e, reserved);
        e->refs++;
        parked.conns = conns;
        parked.addr = e;
        parked.reserved = reserved;
    } else if (e != NULL && e->refs == 0) {
        e->refs = 1;
        addr_unref(conns, e);
    }
    pthread_mutex_unlock(&conns->lock);
    return ok;
}

/* The hand-off of socket 'fd', out of the list; NULL if none. Under the lock. */
static handoff_t *take_handoff(nsd_conns_t *conns, int fd)
{
    for (handoff_t **p = &conns->handoffs; *p != NULL; p = &(*p)->next) {
        if ((*p)->fd == fd) {
            handoff_t *h = *p;
            *p = h->next;
            return h;
        }
    }
    return NULL;
}

int nsd_conns_admit_socket(nsd_conns_t *conns, int fd, const struct sockaddr *addr,
                           socklen_t addr_len)
{
    handoff_t *h = malloc(sizeof(*h));
    if (h == NULL)
        return 0;
    if (!nsd_conns_admit(conns, addr, addr_len)) {
        free(h);
        return 0;
    }
    pthread_mutex_lock(&conns->lock);
    /* A hand-off of this descriptor's earlier socket that libmicrohttpd
     * dropped without starting it: that socket is closed, its slot free. */
    handoff_t *stale = take_handoff(conns, fd);
    if (stale != NULL) {
        slot_give(conns, stale->addr, stale->reserved);
        addr_unref(conns, stale->addr);
        free(stale);
    }
    h->fd = fd;
    h->addr = parked.addr;
    h->reserved = parked.reserved;
    parked.addr = NULL;
    parked.conns = NULL;
    h->next = conns->handoffs;
    conns->handoffs = h;
    pthread_mutex_unlock(&conns->lock);
    return 1;
}

void nsd_conns_abandon_socket(nsd_conns_t *conns, int fd)
{
    pthread_mutex_lock(&conns->lock);
    handoff_t *h = take_handoff(conns, fd);
    if (h != NULL) {
        slot_give(conns, h->addr, h->reserved);
        addr_unref(conns, h->addr);
    }
    pthread_mutex_unlock(&conns->lock);
    free(h);
}

/* ---------------------------------------------------------------- records */

nsd_conn_t *nsd_conns_started(nsd_conns_t *conns, int fd, const struct sockaddr *addr,
                              socklen_t addr_len)
{
    nsd_conn_t *c = calloc(1, sizeof(*c));
    pthread_mutex_lock(&conns->lock);
    addr_entry_t *e = NULL;
    int reserved = 0;
    handoff_t *h = take_handoff(conns, fd);
    if (h != NULL) {
        e = h->addr;
        reserved = h->reserved;
        free(h);
    } else if (parked.conns == conns && parked.addr != NULL) {
        e = parked.addr;
        reserved = parked.reserved;
        parked.addr = NULL;
        parked.conns = NULL;
    } else {
        /* Not admitted by our policy (cannot happen with it installed):
         * counted all the same so that the table stays exact. */
        addr_key_t key;
        addr_key(addr, addr_len, &key);
        e = addr_get(conns, &key);
        if (e != NULL) {
            slot_take(conns, e, 0);
            e->refs++;
        }
    }
    if (c == NULL || e == NULL) {
        if (e != NULL) {
            slot_give(conns, e, reserved);
            addr_unref(conns, e);
        }
        pthread_mutex_unlock(&conns->lock);
        free(c);
        shutdown(fd, SHUT_RDWR);
        return NULL;
    }
    c->addr = e;
    c->fd = fd;
    c->reserved = reserved;
    c->phase = PHASE_HEADERS;
    c->since_ms = nsd_now_ms();
    c->serial = conns->serial++;
    c->deadline_ms = c->since_ms + conns->cfg.header_ms;
    c->next = conns->head;
    if (c->next != NULL)
        c->next->prev = c;
    conns->head = c;
    conns->stats.accepted++;
    pthread_mutex_unlock(&conns->lock);
    return c;
}

void nsd_conns_closed(nsd_conns_t *conns, nsd_conn_t *c)
{
    if (c == NULL)
        return;
    pthread_mutex_lock(&conns->lock);
    if (!c->released)
        slot_give(conns, c->addr, c->reserved);
    if (c->other)
        conns->other_taken = 0;
    addr_unref(conns, c->addr);
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        conns->head = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    pthread_mutex_unlock(&conns->lock);
    free(c);
}

void **nsd_conns_kept(nsd_conn_t *c)
{
    return c != NULL ? c->kept : NULL;
}

/* ---------------------------------------------------------------- phases */

static void set_phase(nsd_conns_t *conns, nsd_conn_t *c, int phase, uint64_t timeout_ms)
{
    if (c == NULL)
        return;
    pthread_mutex_lock(&conns->lock);
    uint64_t now = nsd_now_ms();
    if (phase == PHASE_HEADERS) {
        /* The first request's headers are due since the accept. */
        uint64_t due = now + timeout_ms;
        if (c->deadline_ms == 0 || due < c->deadline_ms)
            c->deadline_ms = due;
    } else {
        c->deadline_ms = timeout_ms > 0 ? now + timeout_ms : 0;
    }
    c->phase = phase;
    pthread_mutex_unlock(&conns->lock);
}

void nsd_conns_request_line(nsd_conns_t *conns, nsd_conn_t *c)
{
    set_phase(conns, c, PHASE_HEADERS, conns->cfg.header_ms);
}

void nsd_conns_headers_done(nsd_conns_t *conns, nsd_conn_t *c)
{
    set_phase(conns, c, PHASE_BODY, conns->cfg.body_ms);
}

void nsd_conns_body_done(nsd_conns_t *conns, nsd_conn_t *c)
{
    set_phase(conns, c, PHASE_BUSY, 0);
}

void nsd_conns_request_done(nsd_conns_t *conns, nsd_conn_t *c)
{
    set_phase(conns, c, PHASE_IDLE, conns->cfg.idle_ms);
}

static int deadline_reason(const nsd_conn_t *c)
{
    switch (c->phase) {
    case PHASE_BODY:
        return NSD_CLOSED_BODY_TIMEOUT;
    case PHASE_IDLE:
        return NSD_CLOSED_IDLE_TIMEOUT;
    default:
        return NSD_CLOSED_HEADER_TIMEOUT;
    }
}

int nsd_conns_overdue(nsd_conns_t *conns, nsd_conn_t *c)
{
    if (c == NULL)
        return 0;
    pthread_mutex_lock(&conns->lock);
    int overdue = c->shut || (c->deadline_ms != 0 && nsd_now_ms() >= c->deadline_ms);
    if (overdue && !c->shut) {
        c->shut = 1;
        conns->stats.closed[deadline_reason(c)]++;
    }
    pthread_mutex_unlock(&conns->lock);
    return overdue;
}

int nsd_conns_reserved(const nsd_conn_t *c)
{
    return c != NULL && c->reserved;
}

int nsd_conns_take_other(nsd_conns_t *conns, nsd_conn_t *c)
{
    pthread_mutex_lock(&conns->lock);
    int ok = c->other || !conns->other_taken;
    if (ok)
        c->other = conns->other_taken = 1;
    pthread_mutex_unlock(&conns->lock);
    return ok;
}

void nsd_conns_stats(nsd_conns_t *conns, nsd_conns_stats_t *dst)
{
    pthread_mutex_lock(&conns->lock);
    *dst = conns->stats;
    dst->open_general = conns->open_general;
    dst->open_reserve = conns->open_reserve;
    pthread_mutex_unlock(&conns->lock);
}

/* ---------------------------------------------------------------- sweep */

static void *sweep_main(void *arg)
{
    nsd_conns_t *conns = arg;
    uint64_t shortest =
        conns->cfg.header_ms < conns->cfg.body_ms ? conns->cfg.header_ms : conns->cfg.body_ms;
    uint64_t tick = shortest / 10;
    tick = tick < SWEEP_MIN_MS ? SWEEP_MIN_MS : tick > SWEEP_MAX_MS ? SWEEP_MAX_MS : tick;
    pthread_mutex_lock(&conns->lock);
    while (!conns->stopping) {
        struct timespec until = nsd_deadline_in(tick);
        pthread_cond_timedwait(&conns->wake, &conns->lock, &until);
        uint64_t now = nsd_now_ms();
        for (nsd_conn_t *c = conns->head; c != NULL && !conns->stopping; c = c->next)
            if (c->deadline_ms != 0 && now >= c->deadline_ms && !c->shut)
                shut(conns, c, deadline_reason(c));
    }
    pthread_mutex_unlock(&conns->lock);
    return NULL;
}

/* ---------------------------------------------------------------- life */

nsd_conns_t *nsd_conns_create(const nsd_conns_config_t *cfg)
{
    nsd_conns_t *conns = calloc(1, sizeof(*conns));
    if (conns == NULL)
        return NULL;
    conns->cfg = *cfg;
    pthread_mutex_init(&conns->lock, NULL);
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&conns->wake, &attr);
    pthread_condattr_destroy(&attr);
    return conns;
}

int nsd_conns_start(nsd_conns_t *conns)
{
    if (pthread_create(&conns->sweeper, NULL, sweep_main, conns) != 0)
        return NS_ENOMEM;
    conns->sweeping = 1;
    return 0;
}

void nsd_conns_free(nsd_conns_t *conns)
{
    if (conns == NULL)
        return;
    if (conns->sweeping) {
        pthread_mutex_lock(&conns->lock);
        conns->stopping = 1;
        pthread_cond_signal(&conns->wake);
        pthread_mutex_unlock(&conns->lock);
        pthread_join(conns->sweeper, NULL);
    }
    while (conns->head != NULL)
        nsd_conns_closed(conns, conns->head);
    while (conns->handoffs != NULL) {
        handoff_t *h = conns->handoffs;
        conns->handoffs = h->next;
        free(h);
    }
    for (size_t i = 0; i < ADDR_BUCKETS; i++)
        while (conns->buckets[i] != NULL) {
            addr_entry_t *e = conns->buckets[i];
            conns->buckets[i] = e->next;
            free(e);
        }
    pthread_cond_destroy(&conns->wake);
    pthread_mutex_destroy(&conns->lock);
    free(conns);
}
