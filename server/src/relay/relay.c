/* relay.c - the relay's front: local reports collected into node steps, checked the way
 * the upstream checks a run's reports, handed to the forwarding thread when complete. */
#include "relay.h"

#include <stdlib.h>
#include <string.h>

#include "base/clock.h"
#include "base/log.h"
#include "relay_internal.h"

/* Same run, step and layer names: the reports of one node step. */
static int same_node_step(const relay_node_step_t *ns, const char *run, const ns_report_t *r)
{
    const ns_report_t *first = NULL;
    for (uint32_t i = 0; first == NULL; i++)
        first = ns->arrivals[i];
    if (ns->step != r->step || strcmp(ns->run, run) != 0 || first->n_layers != r->n_layers)
        return 0;
    for (size_t l = 0; l < r->n_layers; l++)
        if (strcmp(first->layers[l].name, r->layers[l].name) != 0)
            return 0;
    return 1;
}

static relay_node_step_t *find(nsd_relay_t *relay, const char *run, const ns_report_t *r)
{
    for (relay_node_step_t *ns = relay->collecting; ns != NULL; ns = ns->next)
        if (same_node_step(ns, run, r))
            return ns;
    return NULL;
}

/* Where a worker belongs: its node (the relay's rank upstream), its local rank,
 * and the world_size the node's report carries. @return 0 or the error. */
static int place(const nsd_relay_t *relay, const ns_report_t *r, uint32_t *node, uint32_t *local,
                 int64_t *relays, ns_error_detail_t *err)
{
    const uint32_t n = relay->cfg.local_world_size;
    *relays = relay->cfg.relays;
    if (relay->cfg.rank >= 0) {
        if (r->worker >= n)
            return ns_error_set(err, NS_EWORKER, "worker",
                                "%u is not below the relay's --local-world-size %u", r->worker, n);
        *node = (uint32_t)relay->cfg.rank;
        *local = r->worker;
        return 0;
    }
    /* No --relay-rank: the worker sent its global rank. */
    *node = r->worker / n;
    *local = r->worker % n;
    if (r->world_size > 0) {
        if (r->world_size % n != 0)
            return ns_error_set(err, NS_ECONFLICT, "world_size",
                                "%lld is not a multiple of the relay's --local-world-size %u",
                                (long long)r->world_size, n);
        if (r->worker >= (uint64_t)r->world_size)
            return ns_error_set(err, NS_EWORKER, "worker", "%u is not below world_size %lld",
                                r->worker, (long long)r->world_size);
        if (*relays < 0)
            *relays = r->world_size / n;
    }
    return 0;
}

static relay_node_step_t *node_new(const nsd_relay_t *relay, const char *run, const ns_report_t *r)
{
    relay_node_step_t *ns = calloc(1, sizeof(*ns));
    if (ns == NULL)
        return NULL;
    ns->arrivals = calloc(relay->cfg.local_world_size, sizeof(*ns->arrivals));
    if (ns->arrivals == NULL) {
        free(ns);
        return NULL;
    }
    snprintf(ns->run, sizeof(ns->run), "%s", run);
    snprintf(ns->domain, sizeof(ns->domain), "%s", r->domain);
    ns->owner = (nsd_relay_t *)relay;
    ns->step = r->step;
    ns->update = r->update;
    ns->deadline_ms = nsd_now_ms() + relay->cfg.timeout_ms;
    return ns;
}

/* A layer's channel count among the arrivals so far (0: none carried arrays). */
static size_t node_channels(const nsd_relay_t *relay, const relay_node_step_t *ns, size_t l)
{
    for (uint32_t w = 0; w < relay->cfg.local_world_size; w++)
        if (ns->arrivals[w] != NULL && ns->arrivals[w]->layers[l].channels > 0)
            return ns->arrivals[w]->layers[l].channels;
    return 0;
}

/* What the upstream would refuse of one worker among the node's workers. */
static int check(const nsd_relay_t *relay, const relay_node_step_t *ns, const ns_report_t *r,
                 uint32_t node, int64_t relays, int sync, ns_error_detail_t *err)
{
    if (ns->n_arrived > 0 && node != ns->node)
        return ns_error_set(err, NS_EWORKER, "worker",
                            "rank %u is on node %u; this relay collects step %llu of node %u",
                            node * relay->cfg.local_world_size + r->worker, node,
                            (unsigned long long)r->step, ns->node);
    if (ns->n_arrived > 0 && relays != ns->relays && r->world_size > 0)
        return ns_error_set(err, NS_ECONFLICT, "world_size",
                            "differs from the other workers' reports of step %llu on this node",
                            (unsigned long long)r->step);
    if (ns->arrivals[r->worker] != NULL)
        return ns_error_set(err, NS_EDUPLICATE, "worker",
                            "worker %u already reported step %llu to this relay", r->worker,
                            (unsigned long long)r->step);
    if (ns->n_arrived == 0)
        return 0;
    if (r->update != ns->update)
        return ns_error_set(err, NS_ECONFLICT, "update",
                            "differs from the other workers' reports of step %llu on this node",
                            (unsigned long long)r->step);
    if (strcmp(r->domain, ns->domain) != 0)
        return ns_error_set(err, NS_ECONFLICT, "domain",
                            "'%s' differs from '%s' of the other workers of step %llu on this "
                            "node (a relay forwards one domain per node and step)",
                            r->domain, ns->domain, (unsigned long long)r->step);
    if (sync && ns->has_sync && r->scope != ns->scope)
        return ns_error_set(err, NS_ECONFLICT, "scope",
                            "differs from the other /sync waiters of step %llu on this node",
                            (unsigned long long)r->step);
    for (size_t l = 0; l < r->n_layers; l++) {
        size_t have = node_channels(relay, ns, l);
        if (r->layers[l].channels > 0 && have > 0 && r->layers[l].channels != have) {
            char field[NS_NAME_MAX + 32];
            snprintf(field, sizeof(field), "layers.%s.mean", r->layers[l].name);
            return ns_error_set(err, NS_ECHANNELS, field, "expected %zu values, got %zu", have,
                                r->layers[l].channels);
        }
    }
    return 0;
}

static void unlink_collecting(nsd_relay_t *relay, relay_node_step_t *ns)
{
    for (relay_node_step_t **p = &relay->collecting; *p != NULL; p = &(*p)->next)
        if (*p == ns) {
            *p = ns->next;
            ns->next = NULL;
            relay->n_collecting--;
            return;
        }
}

/* A complete node step: combined on this thread, then queued for the forwarder. */
static void hand_over(nsd_relay_t *relay, relay_node_step_t *ns)
{
    ns->forward = nsd__relay_combine(relay, ns);
    pthread_mutex_lock(&relay->lock);
    int stopping = relay->stopping;
    if (!stopping) {
        if (relay->ready_tail != NULL)
            relay->ready_tail->next = ns;
        else
            relay->ready = ns;
        relay->ready_tail = ns;
        /* Under the lock: the thread closes 'wake' only after it saw 'stopping'. */
        uv_async_send(&relay->wake);
    }
    pthread_mutex_unlock(&relay->lock);
    if (stopping) {
        nsd__relay_deliver(ns, nsd__relay_answer_error(NS_ESHUTDOWN, "the relay is shutting down"));
        nsd__relay_node_free(relay, ns);
    }
}

/* Holds the lock: add the checked arrival. @return 1 if the node step is complete. */
static int commit(nsd_relay_t *relay, relay_node_step_t *ns, ns_report_t *r, relay_waiter_t *w)
{
    if (ns->n_arrived == 0) {
        ns->next = relay->collecting;
        relay->collecting = ns;
        relay->n_collecting++;
    }
    if (w != NULL) {
        w->next = ns->waiters;
        ns->waiters = w;
        ns->has_sync = 1;
        ns->scope = r->scope;
    }
    ns->arrivals[r->worker] = r;
    if (++ns->n_arrived < relay->cfg.local_world_size)
        return 0;
    unlink_collecting(relay, ns);
    ns->seq = relay->next_seq++;
    return 1;
}

int nsd_relay_report(nsd_relay_t *relay, const char *run, ns_report_t *report, nsd_relay_cb cb,
                     void *arg, ns_error_detail_t *err)
{
    relay_waiter_t *w = NULL;
    uint32_t node = 0, local = 0;
    int64_t relays = -1;
    int rc = place(relay, report, &node, &local, &relays, err);
    if (rc != 0) {
        ns_report_free(report);
        return rc;
    }
    report->worker = local; /* the arrival's slot in the node step */
    if (cb != NULL && (w = calloc(1, sizeof(*w))) == NULL) {
        ns_report_free(report);
        return ns_error_set(err, NS_ENOMEM, NULL, "out of memory");
    }
    if (w != NULL) {
        w->cb = cb;
        w->arg = arg;
    }
    pthread_mutex_lock(&relay->lock);
    relay_node_step_t *ns = relay->stopping ? NULL : find(relay, run, report);
    relay_node_step_t *fresh = NULL;
    if (relay->stopping)
        rc = ns_error_set(err, NS_ESHUTDOWN, NULL, "the relay is shutting down");
    else if (ns == NULL && relay->n_collecting >= relay->cfg.max_pending)
        rc =
            ns_error_set(err, NS_EBUSY, NULL, "%zu node steps are collecting (--max-pending-steps)",
                         relay->n_collecting);
    else if (ns == NULL && (ns = fresh = node_new(relay, run, report)) == NULL)
        rc = ns_error_set(err, NS_ENOMEM, NULL, "out of memory");
    if (rc == 0 && fresh != NULL) {
        fresh->node = node;
        fresh->relays = relays;
    }
    if (rc == 0)
        rc = check(relay, ns, report, node, relays, cb != NULL, err);
    int complete = rc == 0 ? commit(relay, ns, report, w) : 0;
    pthread_mutex_unlock(&relay->lock);
    if (rc != 0) {
        if (fresh != NULL)
            nsd__relay_node_free(relay, fresh);
        ns_report_free(report);
        free(w);
        return rc;
    }
    if (complete)
        hand_over(relay, ns);
    return 0;
}

relay_node_step_t *nsd__relay_take_expired(nsd_relay_t *relay, uint64_t now_ms)
{
    relay_node_step_t *out = NULL, **tail = &out;
    pthread_mutex_lock(&relay->lock);
    for (relay_node_step_t **p = &relay->collecting; *p != NULL;) {
        relay_node_step_t *ns = *p;
        if (ns->deadline_ms > now_ms) {
            p = &ns->next;
            continue;
        }
        *p = ns->next;
        relay->n_collecting--;
        ns->next = NULL;
        ns->seq = relay->next_seq++;
        *tail = ns;
        tail = &ns->next;
    }
    pthread_mutex_unlock(&relay->lock);
    return out;
}

int nsd_relay_create(nsd_relay_t **dst, const nsd_relay_config_t *cfg, ns_error_detail_t *err)
{
    *dst = NULL;
    if (cfg->upstream == NULL || strncmp(cfg->upstream, "http://", 7) != 0 ||
        cfg->local_world_size == 0 || cfg->max_pending == 0)
        return ns_error_set(err, NS_EINVAL, "upstream",
                            "an http:// URL and a local world size of at least 1 are needed");
    nsd_relay_t *relay = calloc(1, sizeof(*relay));
    if (relay == NULL)
        return ns_error_set(err, NS_ENOMEM, NULL, "out of memory");
    relay->cfg = *cfg;
    relay->upstream = strdup(cfg->upstream);
    relay->token = strdup(cfg->token != NULL ? cfg->token : "");
    relay->cfg.upstream = relay->upstream;
    relay->cfg.token = relay->token;
    atomic_store(&relay->upstream_up, 1);
    pthread_mutex_init(&relay->lock, NULL);
    int rc = relay->upstream == NULL || relay->token == NULL
                 ? ns_error_set(err, NS_ENOMEM, NULL, "out of memory")
                 : nsd__relay_thread_start(relay, err);
    if (rc != 0) {
        pthread_mutex_destroy(&relay->lock);
        free(relay->upstream);
        free(relay->token);
        free(relay);
        return rc;
    }
    *dst = relay;
    return 0;
}

void nsd_relay_stop(nsd_relay_t *relay)
{
    if (relay == NULL)
        return;
    pthread_mutex_lock(&relay->lock);
    /* The thread answers the node steps it holds once it sees 'stopping'. */
    if (!relay->stopping && relay->thread_started)
        uv_async_send(&relay->wake);
    relay->stopping = 1;
    relay_node_step_t *list = relay->collecting;
    relay->collecting = NULL;
    relay->n_collecting = 0;
    pthread_mutex_unlock(&relay->lock);
    while (list != NULL) {
        relay_node_step_t *next = list->next;
        nsd__relay_deliver(list,
                           nsd__relay_answer_error(NS_ESHUTDOWN, "the relay is shutting down"));
        nsd__relay_node_free(relay, list);
        list = next;
    }
}

void nsd_relay_free(nsd_relay_t *relay)
{
    if (relay == NULL)
        return;
    nsd_relay_stop(relay);
    nsd__relay_thread_stop(relay);
    pthread_mutex_destroy(&relay->lock);
    free(relay->upstream);
    free(relay->token);
    free(relay);
}

void nsd_relay_stats(nsd_relay_t *relay, nsd_relay_stats_t *dst)
{
    memset(dst, 0, sizeof(*dst));
    dst->upstream_up = 1;
    if (relay == NULL)
        return;
    pthread_mutex_lock(&relay->lock);
    dst->collecting = relay->n_collecting;
    pthread_mutex_unlock(&relay->lock);
    dst->forwarded = atomic_load(&relay->forwarded);
    dst->failures = atomic_load(&relay->failures);
    dst->rejected = atomic_load(&relay->rejected);
    dst->partial = atomic_load(&relay->partial);
    dst->abandoned = atomic_load(&relay->abandoned);
    dst->forwarding = atomic_load(&relay->forwarding);
    dst->backoff_ms = atomic_load(&relay->backoff_now);
    dst->upstream_up = atomic_load(&relay->upstream_up);
}
