/* relay_forward.c - the relay's thread: node steps forwarded upstream with libnormstat's
 * asynchronous client, retried with backoff while the upstream cannot be reached.
 *
 * DESIGN
 *  One libuv loop on its own thread drives the client (keep-alive
 *  connections, libcurl multi-socket). Complete node steps arrive through
 *  'wake'; a 20 ms tick forwards node steps whose local workers did not all
 *  arrive within --relay-timeout (partial), and resends failed forwards.
 *  Order: the upstream requires the relay's steps to increase per layer, so
 *  node steps are forwarded in completion order ('seq'); the client sends
 *  one request at a time per (run, worker), and while any forward waits to
 *  be retried every newer one waits behind it in the retry list.
 *  Failures: an answer that is not the upstream's own (connection refused,
 *  timeout, a proxy's 502) or a 503 not_ready / shutting_down is a failure
 *  to reach it: counted, the upstream marked down, and the forward resent
 *  after a backoff of 100 ms doubling to 5 s. A node step that could not be
 *  forwarded within --relay-timeout of its first attempt is given up: its
 *  waiters get 503 not_ready. Any other error answer is the upstream's
 *  verdict on the node's report and goes to its waiters as it came. */
#include <stdio.h>
#include <stdlib.h>

#include "base/clock.h"
#include "base/log.h"
#include "relay_internal.h"

#define TICK_MS         20
#define BACKOFF_MIN_MS  100
#define BACKOFF_MAX_MS  5000
#define FORWARD_WAIT_MS 600000

static void forward(nsd_relay_t *relay, relay_node_step_t *ns);

static void list_remove(relay_node_step_t **head, relay_node_step_t *ns)
{
    for (relay_node_step_t **p = head; *p != NULL; p = &(*p)->next)
        if (*p == ns) {
            *p = ns->next;
            ns->next = NULL;
            return;
        }
}

/* Into the retry list, which stays in seq order. */
static void retry_insert(nsd_relay_t *relay, relay_node_step_t *ns)
{
    relay_node_step_t **p = &relay->retry;
    while (*p != NULL && (*p)->seq < ns->seq)
        p = &(*p)->next;
    ns->next = *p;
    *p = ns;
}

/* The node step is done: its waiters get 'answer' (NULL: none to give). */
static void finish(nsd_relay_t *relay, relay_node_step_t *ns, nsd_relay_answer_t *answer)
{
    if (ns->attempts > 0)
        atomic_fetch_sub(&relay->forwarding, 1);
    if (ns->waiters != NULL)
        nsd__relay_deliver(ns, answer);
    else
        nsd_relay_answer_release(answer);
    nsd__relay_node_free(relay, ns);
}

static int unreachable(int status)
{
    return status == NS_ECONNECT || status == NS_EREQTIMEOUT || status == NS_EBADRESPONSE ||
           status == NS_ENOTREADY || status == NS_ESHUTDOWN;
}

static void failed(nsd_relay_t *relay, relay_node_step_t *ns, const ns_error_detail_t *err)
{
    uint64_t now = nsd_now_ms();
    atomic_fetch_add(&relay->failures, 1);
    if (atomic_exchange(&relay->upstream_up, 0) == 1)
        nsd_log(NSD_LOG_WARN, "relay_upstream_down", "upstream=%s reason=\"%s\"", relay->upstream,
                err->message);
    if (now >= ns->give_up_ms) {
        char msg[700];
        snprintf(msg, sizeof(msg),
                 "step %llu: the relay could not reach its upstream %s within "
                 "--relay-timeout: %s",
                 (unsigned long long)ns->step, relay->upstream, err->message);
        atomic_fetch_add(&relay->abandoned, 1);
        nsd_log(NSD_LOG_ERROR, "relay_step_abandoned", "run=%s step=%llu", ns->run,
                (unsigned long long)ns->step);
        finish(relay, ns, nsd__relay_answer_error(NS_ENOTREADY, msg));
        return;
    }
    if (relay->retry == NULL) {
        relay->backoff_ms = relay->backoff_ms == 0                   ? BACKOFF_MIN_MS
                            : relay->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS
                                                                     : relay->backoff_ms * 2;
        relay->retry_at_ms = now + relay->backoff_ms;
        atomic_store(&relay->backoff_now, relay->backoff_ms);
    }
    retry_insert(relay, ns);
}

/* The client's callback, on this thread. */
static void on_forwarded(int status, const ns_error_detail_t *err, ns_result_t *result, void *arg)
{
    relay_node_step_t *ns = arg;
    nsd_relay_t *relay = ns->owner;
    list_remove(&relay->inflight, ns);
    if (status != 0 && unreachable(status)) {
        failed(relay, ns, err);
        ns_result_free(result);
        return;
    }
    if (atomic_exchange(&relay->upstream_up, 1) == 0)
        nsd_log(NSD_LOG_INFO, "relay_upstream_up", "upstream=%s", relay->upstream);
    relay->backoff_ms = 0;
    atomic_store(&relay->backoff_now, 0);
    /* A resent report the first attempt had landed (the upstream went away
     * after accepting it) is not an error. */
    if (ns->attempts > 1 && !ns->has_sync && (status == NS_EDUPLICATE || status == NS_ESTALE))
        status = 0;
    nsd_relay_answer_t *answer = NULL;
    if (status == 0) {
        atomic_fetch_add(&relay->forwarded, 1);
        if (result != NULL)
            answer = nsd__relay_answer_result(result);
    } else {
        atomic_fetch_add(&relay->rejected, 1);
        nsd_log(NSD_LOG_WARN, "relay_rejected", "run=%s step=%llu code=%s message=\"%s\"", ns->run,
                (unsigned long long)ns->step, ns_error_name(status), err->message);
        answer = nsd__relay_answer_error(status, err->message);
    }
    ns_result_free(result);
    finish(relay, ns, answer);
}

static void forward(nsd_relay_t *relay, relay_node_step_t *ns)
{
    if (ns->forward == NULL)
        ns->forward = nsd__relay_combine(relay, ns);
    if (ns->forward == NULL) {
        finish(relay, ns, nsd__relay_answer_error(NS_ENOMEM, NULL));
        return;
    }
    if (ns->attempts++ == 0) {
        atomic_fetch_add(&relay->forwarding, 1);
        ns->give_up_ms = nsd_now_ms() + relay->cfg.timeout_ms;
    }
    ns_error_detail_t err = {0};
    int rc = ns->has_sync ? ns_client_async_sync(relay->client, ns->run, ns->forward,
                                                 NS_FORMAT_SAFETENSORS, on_forwarded, ns, &err)
                          : ns_client_async_report(relay->client, ns->run, ns->forward,
                                                   NS_FORMAT_SAFETENSORS, on_forwarded, ns, &err);
    if (rc != 0) {
        finish(relay, ns, nsd__relay_answer_error(rc, err.message));
        return;
    }
    ns->next = relay->inflight;
    relay->inflight = ns;
}

/* Forward a list in order; behind a failed forward, newer ones wait their turn. */
static void forward_list(nsd_relay_t *relay, relay_node_step_t *list)
{
    while (list != NULL) {
        relay_node_step_t *next = list->next;
        list->next = NULL;
        if (relay->retry != NULL)
            retry_insert(relay, list);
        else
            forward(relay, list);
        list = next;
    }
}

/* Shutdown: every node step this thread holds is answered, then the loop ends. */
static void shut_down(nsd_relay_t *relay, relay_node_step_t *ready)
{
    relay_node_step_t *lists[3] = {ready, relay->retry, relay->inflight};
    relay->retry = relay->inflight = NULL;
    ns_client_async_free(relay->client); /* abandons the requests in flight */
    relay->client = NULL;
    for (int i = 0; i < 3; i++)
        while (lists[i] != NULL) {
            relay_node_step_t *ns = lists[i];
            lists[i] = ns->next;
            finish(relay, ns, nsd__relay_answer_error(NS_ESHUTDOWN, "the relay is shutting down"));
        }
    uv_timer_stop(&relay->tick);
    uv_close((uv_handle_t *)&relay->tick, NULL);
    uv_close((uv_handle_t *)&relay->wake, NULL);
}

static void on_wake(uv_async_t *h)
{
    nsd_relay_t *relay = h->data;
    if (relay->quit)
        return;
    pthread_mutex_lock(&relay->lock);
    relay_node_step_t *ready = relay->ready;
    relay->ready = relay->ready_tail = NULL;
    int stopping = relay->stopping;
    pthread_mutex_unlock(&relay->lock);
    if (stopping) {
        relay->quit = 1;
        shut_down(relay, ready);
        return;
    }
    forward_list(relay, ready);
}

static void on_tick(uv_timer_t *t)
{
    nsd_relay_t *relay = t->data;
    uint64_t now = nsd_now_ms();
    relay_node_step_t *expired = nsd__relay_take_expired(relay, now);
    for (relay_node_step_t *ns = expired; ns != NULL; ns = ns->next) {
        atomic_fetch_add(&relay->partial, 1);
        nsd_log(NSD_LOG_WARN, "relay_partial", "run=%s step=%llu arrived=%u of=%u", ns->run,
                (unsigned long long)ns->step, ns->n_arrived, relay->cfg.local_world_size);
    }
    forward_list(relay, expired);
    if (relay->retry != NULL && now >= relay->retry_at_ms) {
        relay_node_step_t *list = relay->retry;
        relay->retry = NULL;
        forward_list(relay, list);
    }
}

static void *thread_main(void *arg)
{
    nsd_relay_t *relay = arg;
    uv_run(&relay->loop, UV_RUN_DEFAULT);
    return NULL;
}

int nsd__relay_thread_start(nsd_relay_t *relay, ns_error_detail_t *err)
{
    ns_client_options_t o;
    ns_client_options_default(&o);
    o.url = relay->upstream;
    o.token = relay->token[0] != '\0' ? relay->token : NULL;
    o.retries = 0; /* this file retries, with backoff and in order */
    /* An upstream /sync waits up to its run's sync_timeout_ms (unknown here) for
     * the other relays: a forward waits 10 minutes, or longer than
     * --relay-timeout; a dead upstream fails it at once (connection reset). */
    o.timeout_ms =
        (long)(relay->cfg.timeout_ms + 10000 > FORWARD_WAIT_MS ? relay->cfg.timeout_ms + 10000
                                                               : FORWARD_WAIT_MS);
    if (uv_loop_init(&relay->loop) != 0)
        return ns_error_set(err, NS_ENOMEM, NULL, "cannot create the relay's loop");
    int rc = ns_client_async_create(&relay->client, &relay->loop, &o, err);
    if (rc == 0) {
        uv_async_init(&relay->loop, &relay->wake, on_wake);
        uv_timer_init(&relay->loop, &relay->tick);
        relay->wake.data = relay->tick.data = relay;
        uv_timer_start(&relay->tick, on_tick, TICK_MS, TICK_MS);
        if (pthread_create(&relay->thread, NULL, thread_main, relay) != 0) {
            ns_client_async_free(relay->client);
            uv_close((uv_handle_t *)&relay->tick, NULL);
            uv_close((uv_handle_t *)&relay->wake, NULL);
            uv_run(&relay->loop, UV_RUN_DEFAULT);
            rc = ns_error_set(err, NS_ENOMEM, NULL, "cannot start the relay's thread");
        }
    }
    if (rc != 0) {
        uv_loop_close(&relay->loop);
        return rc;
    }
    relay->thread_started = 1;
    return 0;
}

void nsd__relay_thread_stop(nsd_relay_t *relay)
{
    if (!relay->thread_started)
        return;
    pthread_join(relay->thread, NULL);
    uv_loop_close(&relay->loop);
    relay->thread_started = 0;
}
