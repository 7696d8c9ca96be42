/* relay_internal.h - the relay's types, shared by relay.c (collecting node steps),
 * relay_node.c (combination and answers) and relay_forward.c (the forwarding thread). */
#ifndef NSD_RELAY_INTERNAL_H
#define NSD_RELAY_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include <uv.h>

#include <normstat/client.h>

#include "relay.h"

typedef struct relay_waiter_s {
    nsd_relay_cb cb;
    void *arg;
    struct relay_waiter_s *next;
} relay_waiter_t;

/* One (run, step, layer set) of the local workers, from its first arrival
 * until its upstream answer is delivered. */
typedef struct relay_node_step_s {
    struct relay_node_step_s *next; /* in the collecting list or a forwarding queue */
    struct nsd_relay_s *owner;
    char run[NS_NAME_MAX + 1];
    uint64_t step;
    uint32_t node;  /* the relay's rank upstream for this step */
    int64_t relays; /* world_size sent upstream, -1: none */
    char domain[NS_NAME_MAX + 1];
    unsigned update;
    ns_scope_t scope;       /* of the /sync waiters */
    int has_sync;           /* a local worker waits on /sync: forward as /sync */
    ns_report_t **arrivals; /* [local_world_size], NULL where absent; owned */
    uint32_t n_arrived;
    uint64_t deadline_ms; /* first arrival + timeout: forwarded with what it has */
    relay_waiter_t *waiters;
    ns_report_t *forward; /* the node's combined report, built once */
    uint64_t seq;         /* order of completion: retries keep it */
    uint64_t give_up_ms;  /* first forward + timeout: waiters answered 503 */
    unsigned attempts;    /* forwards sent */
} relay_node_step_t;

struct nsd_relay_answer_s {
    atomic_uint refs;
    int status;
    char message[512];
    int64_t step;
    int complete;
    int64_t workers;
    size_t n_layers;
    ns_out_layer_t *layers; /* names and arrays owned */
};

struct nsd_relay_s {
    nsd_relay_config_t cfg;
    char *upstream;
    char *token;

    pthread_mutex_t lock; /* the collecting list, the ready queue, stopping */
    relay_node_step_t *collecting;
    size_t n_collecting;
    relay_node_step_t *ready, *ready_tail; /* complete, handed to the thread */
    uint64_t next_seq;
    int stopping;

    /* the forwarding thread's own (no lock) */
    pthread_t thread;
    int thread_started;
    uv_loop_t loop;
    uv_async_t wake;
    uv_timer_t tick;
    ns_client_async_t *client;
    relay_node_step_t *inflight; /* forwards the client holds */
    relay_node_step_t *retry;    /* failed forwards, in seq order */
    uint64_t retry_at_ms;
    uint64_t backoff_ms;
    int quit;

    atomic_uint_fast64_t forwarded, failures, rejected, partial, abandoned, forwarding, backoff_now;
    atomic_int upstream_up;
};

/* relay_node.c */
ns_report_t *nsd__relay_combine(const nsd_relay_t *relay, const relay_node_step_t *ns);
nsd_relay_answer_t *nsd__relay_answer_error(int status, const char *message);
nsd_relay_answer_t *nsd__relay_answer_result(const ns_result_t *res);
void nsd__relay_deliver(relay_node_step_t *ns, nsd_relay_answer_t *answer);
void nsd__relay_node_free(const nsd_relay_t *relay, relay_node_step_t *ns);

/* relay.c: node steps past their deadline, taken out of the collecting list. */
relay_node_step_t *nsd__relay_take_expired(nsd_relay_t *relay, uint64_t now_ms);

/* relay_forward.c */
int nsd__relay_thread_start(nsd_relay_t *relay, ns_error_detail_t *err);
void nsd__relay_thread_stop(nsd_relay_t *relay);

#endif
