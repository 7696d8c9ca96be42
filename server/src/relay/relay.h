/* relay.h - relay mode (--upstream URL): a node's workers report to this daemon, which
 * combines their arrivals and forwards one arrival per node to the upstream normstatd.
 *
 * A node step is one (run, step, set of layers) of the local workers: it
 * collects one report per local worker (local ranks 0..local_world_size-1:
 * the worker field itself with --relay-rank R, else the global rank modulo
 * --local-world-size, the node being rank / local_world_size), and
 * when every local worker arrived (or --relay-timeout after its first
 * arrival, with those it has) each layer is combined with ns_combine() in
 * local rank order and the node's report - worker = --relay-rank, count =
 * the node's total, the local workers' domain and update - goes upstream as
 * /sync when a local worker waits on /sync, else as /batches. The upstream's
 * /sync answer is handed to every local waiter. Nothing is stored here: EMA,
 * PreciseBN, domains and the store live upstream (doc/design.md, "Relays").
 *
 * Threads: nsd_relay_report() is called from MHD's threads; forwarding runs
 * on the relay's own thread (a libuv loop driving libnormstat's asynchronous
 * client), which also calls every nsd_relay_cb. */
#ifndef NSD_RELAY_H
#define NSD_RELAY_H

#include <stddef.h>
#include <stdint.h>

#include <normstat/proto.h>

typedef struct nsd_relay_s nsd_relay_t;

typedef struct nsd_relay_config_s {
    const char *upstream;      /* base URL of the upstream normstatd */
    const char *token;         /* bearer token sent upstream; NULL or "": none */
    int64_t rank;              /* this relay's worker rank in the upstream run; -1: from
                                  the workers' global ranks (rank / local_world_size) */
    uint32_t local_world_size; /* local workers, local ranks 0..local_world_size-1 */
    int64_t relays;            /* world_size sent upstream (creates the run); -1: with rank
                                  -1, the workers' world_size / local_world_size, else none */
    uint64_t timeout_ms;       /* a node step's wait for its workers; a forward's retries */
    uint32_t max_pending;      /* node steps collecting at once (429 beyond) */
    int threads;               /* OpenMP threads of a combination */
    int forward_f32;           /* send the node's arrays as float32, not F64 */
} nsd_relay_config_t;

/* What a local /sync is answered: status 0 and the upstream's answer, or an
 * error (the upstream's own code and message, or NS_ENOTREADY when the
 * upstream stayed unreachable). Shared by the waiters of a node step. */
typedef struct nsd_relay_answer_s nsd_relay_answer_t;

/* Called once per local /sync, on the relay's thread (or on the caller's
 * during nsd_relay_stop()); the callee releases 'answer' with
 * nsd_relay_answer_release(). */
typedef void (*nsd_relay_cb)(void *arg, nsd_relay_answer_t *answer);

/* Counters for /metrics. */
typedef struct nsd_relay_stats_s {
    uint64_t forwarded;  /* node reports the upstream accepted */
    uint64_t failures;   /* forwards that could not reach the upstream */
    uint64_t rejected;   /* forwards the upstream answered with an error */
    uint64_t partial;    /* node steps forwarded without every local worker */
    uint64_t abandoned;  /* node steps given up after --relay-timeout of failures */
    uint64_t collecting; /* node steps waiting for local workers */
    uint64_t forwarding; /* node steps being forwarded or waiting to retry */
    int upstream_up;     /* 1 unless the last forward failed to reach the upstream */
    uint64_t backoff_ms; /* the current retry delay (0 when up) */
} nsd_relay_stats_t;

/*! nsd_relay_create() :
 *  A relay for 'cfg' (copied) with its forwarding thread started.
 *  @return 0, or NS_EINVAL (bad URL or sizes) / NS_ENOMEM with 'err'. */
int nsd_relay_create(nsd_relay_t **dst, const nsd_relay_config_t *cfg, ns_error_detail_t *err);

/*! nsd_relay_stop() :
 *  Answer every local waiter 503 shutting_down and refuse later reports;
 *  the thread keeps running until nsd_relay_free(). Any thread. */
void nsd_relay_stop(nsd_relay_t *relay);

/*! nsd_relay_free() : stop the thread and free everything; accepts NULL. */
void nsd_relay_free(nsd_relay_t *relay);

/*! nsd_relay_report() :
 *  Add one local worker's report ('report' is taken, also on error). With
 *  'cb' (a /sync) it is called once with the upstream's answer.
 *  @return 0 (accepted), or, with nothing changed and 'cb' never called:
 *  NS_EWORKER (worker not below the local world size; with rank -1, a
 *  global rank whose node differs from the node step's), NS_EDUPLICATE,
 *  NS_ECONFLICT (update, domain, scope or world_size differ from the node
 *  step's),
 *  NS_ECHANNELS, NS_EBUSY (too many node steps), NS_ESHUTDOWN, NS_ENOMEM. */
int nsd_relay_report(nsd_relay_t *relay, const char *run, ns_report_t *report, nsd_relay_cb cb,
                     void *arg, ns_error_detail_t *err);

/*! nsd_relay_stats() : a consistent-enough copy of the counters (atomics). */
void nsd_relay_stats(nsd_relay_t *relay, nsd_relay_stats_t *dst);

/*! nsd_relay_answer_status() : 0 or the NS_E* code; *message (may be NULL)
 *  gets the error's text ("" for the code's default). */
int nsd_relay_answer_status(const nsd_relay_answer_t *answer, const char **message);

/*! nsd_relay_answer_encode() :
 *  Append a status-0 answer as the body of a /sync answer in 'format'.
 *  @return 0, NS_ETOOLARGE or NS_ENOMEM ('dst' freed). */
int nsd_relay_answer_encode(const nsd_relay_answer_t *answer, ns_format_t format, ns_buf_t *dst);

/*! nsd_relay_answer_release() : one waiter is done with 'answer'; accepts NULL. */
void nsd_relay_answer_release(nsd_relay_answer_t *answer);

#endif
