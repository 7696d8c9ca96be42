/* relay_node.c - a node step's combination (the node's one arrival) and the answers its
 * local waiters get. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <normstat/core.h>

#include "relay_internal.h"

static const ns_report_t *first_arrival(const nsd_relay_t *relay, const relay_node_step_t *ns)
{
    for (uint32_t w = 0; w < relay->cfg.local_world_size; w++)
        if (ns->arrivals[w] != NULL)
            return ns->arrivals[w];
    return NULL;
}

/* Layer l of the node: its arrivals combined in local rank order (empty
 * batches contribute nothing, as in the upstream's barrier). The doubles go
 * upstream as F64 (kept as double by its decoder and combination); with
 * --relay-f32 only their float32 rounding, half the bytes. */
static int combine_layer(const nsd_relay_t *relay, const relay_node_step_t *ns, size_t l,
                         ns_arrival_t *src, ns_layer_report_t *dst)
{
    size_t k = 0, channels = 0;
    for (uint32_t w = 0; w < relay->cfg.local_world_size; w++) {
        const ns_report_t *r = ns->arrivals[w];
        if (r == NULL)
            continue;
        const ns_layer_report_t *a = &r->layers[l];
        if (a->channels > 0)
            channels = a->channels;
        if (a->count > 0)
            src[k++] = (ns_arrival_t){.n = a->count,
                                      .mean = a->mean,
                                      .var = a->var,
                                      .mean64 = a->mean64,
                                      .var64 = a->var64};
    }
    dst->channels = channels;
    if (channels == 0)
        return 0;
    double *mean = calloc(channels, sizeof(double));
    double *var = calloc(channels, sizeof(double));
    dst->mean = malloc(channels * sizeof(float));
    dst->var = malloc(channels * sizeof(float));
    int rc = mean && var && dst->mean && dst->var ? 0 : NS_ENOMEM;
    if (rc == 0 && k > 0)
        rc = ns_combine(src, k, channels, &dst->count, mean, var, relay->cfg.threads);
    for (size_t c = 0; rc == 0 && c < channels; c++) {
        dst->mean[c] = (float)mean[c];
        dst->var[c] = (float)var[c];
    }
    if (rc == 0 && !relay->cfg.forward_f32) {
        dst->mean64 = mean; /* the report owns them now */
        dst->var64 = var;
        return 0;
    }
    free(mean);
    free(var);
    return rc;
}

ns_report_t *nsd__relay_combine(const nsd_relay_t *relay, const relay_node_step_t *ns)
{
    const ns_report_t *first = first_arrival(relay, ns);
    ns_report_t *out = calloc(1, sizeof(*out));
    ns_arrival_t *src = calloc(relay->cfg.local_world_size, sizeof(*src));
    if (first == NULL || out == NULL || src == NULL ||
        (out->layers = calloc(first->n_layers, sizeof(*out->layers))) == NULL) {
        free(src);
        free(out);
        return NULL;
    }
    out->step = ns->step;
    out->worker = ns->node;
    memcpy(out->domain, ns->domain, sizeof(out->domain));
    out->update = ns->update;
    out->scope = ns->has_sync ? ns->scope : NS_SCOPE_GLOBAL;
    out->world_size = ns->relays;
    out->n_layers = first->n_layers;
    int rc = 0;
    for (size_t l = 0; rc == 0 && l < first->n_layers; l++) {
        memcpy(out->layers[l].name, first->layers[l].name, sizeof(out->layers[l].name));
        rc = combine_layer(relay, ns, l, src, &out->layers[l]);
    }
    free(src);
    if (rc != 0) {
        ns_report_free(out);
        return NULL;
    }
    return out;
}

nsd_relay_answer_t *nsd__relay_answer_error(int status, const char *message)
{
    nsd_relay_answer_t *a = calloc(1, sizeof(*a));
    if (a == NULL)
        return NULL;
    atomic_init(&a->refs, 1);
    a->status = status;
    snprintf(a->message, sizeof(a->message), "%s", message != NULL ? message : "");
    return a;
}

/* The upstream's /sync answer, arrays widened back to double (exact: they are float32). */
nsd_relay_answer_t *nsd__relay_answer_result(const ns_result_t *res)
{
    nsd_relay_answer_t *a = nsd__relay_answer_error(0, NULL);
    size_t n = ns_result_count(res);
    if (a == NULL || (a->layers = calloc(n ? n : 1, sizeof(*a->layers))) == NULL) {
        free(a);
        return nsd__relay_answer_error(NS_ENOMEM, NULL);
    }
    a->step = ns_result_step(res);
    a->complete = ns_result_complete(res);
    a->workers = ns_result_workers(res);
    a->n_layers = n;
    for (size_t i = 0; i < n; i++) {
        const ns_result_layer_t *src = ns_result_at(res, i);
        ns_out_layer_t *dst = &a->layers[i];
        dst->name = strdup(src->name);
        dst->channels = src->channels;
        dst->n_scalars = 1;
        dst->scalar_names[0] = NS_FIELD_COUNT;
        dst->scalars[0] = src->count;
        double *arrays = src->channels > 0 && src->mean && src->var
                             ? malloc(2 * src->channels * sizeof(double))
                             : NULL;
        if (dst->name == NULL || (src->channels > 0 && arrays == NULL)) {
            a->status = NS_ENOMEM;
            continue;
        }
        for (size_t c = 0; arrays != NULL && c < src->channels; c++) {
            arrays[c] = src->mean[c];
            arrays[src->channels + c] = src->var[c];
        }
        if (arrays != NULL) {
            dst->n_arrays = 2;
            dst->array_names[0] = NS_FIELD_MEAN;
            dst->arrays[0] = arrays;
            dst->array_names[1] = NS_FIELD_VAR;
            dst->arrays[1] = arrays + src->channels;
        }
    }
    return a;
}

int nsd_relay_answer_status(const nsd_relay_answer_t *answer, const char **message)
{
    if (message != NULL)
        *message = answer->message;
    return answer->status;
}

int nsd_relay_answer_encode(const nsd_relay_answer_t *a, ns_format_t format, ns_buf_t *dst)
{
    /* The upstream's `missing` names relays; a local worker learns from
     * `complete: false` that some node's step was partial. */
    ns_meta_t meta[4] = {
        {NS_FIELD_STEP, NS_META_INT, NULL, a->step},
        {NS_FIELD_COMPLETE, NS_META_BOOL, NULL, a->complete ? 1 : 0},
        {NS_FIELD_WORKERS, NS_META_INT, NULL, a->workers},
        {NS_FIELD_MISSING, NS_META_INT_LIST, "", 0},
    };
    return ns_stats_encode(dst, format, meta, a->complete ? 3 : 4, a->layers, a->n_layers);
}

void nsd_relay_answer_release(nsd_relay_answer_t *a)
{
    if (a == NULL || atomic_fetch_sub(&a->refs, 1) != 1)
        return;
    for (size_t i = 0; i < a->n_layers; i++) {
        free((char *)a->layers[i].name);
        free((double *)a->layers[i].arrays[0]);
    }
    free(a->layers);
    free(a);
}

void nsd__relay_deliver(relay_node_step_t *ns, nsd_relay_answer_t *answer)
{
    static nsd_relay_answer_t oom = {.status = NS_ENOMEM};
    nsd_relay_answer_t *a = answer != NULL ? answer : &oom;
    while (ns->waiters != NULL) {
        relay_waiter_t *w = ns->waiters;
        ns->waiters = w->next;
        if (a != &oom)
            atomic_fetch_add(&a->refs, 1);
        w->cb(w->arg, a);
        free(w);
    }
    if (a != &oom)
        nsd_relay_answer_release(a);
}

void nsd__relay_node_free(const nsd_relay_t *relay, relay_node_step_t *ns)
{
    for (uint32_t w = 0; w < relay->cfg.local_world_size; w++)
        ns_report_free(ns->arrivals[w]);
    free(ns->arrivals);
    ns_report_free(ns->forward);
    while (ns->waiters != NULL) {
        relay_waiter_t *w = ns->waiters;
        ns->waiters = w->next;
        free(w);
    }
    free(ns);
}
