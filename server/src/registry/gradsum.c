/* gradsum.c - pending gradient steps and their sums in worker order (see the
 * DESIGN block in gradsum.h). */
#include "gradsum.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/array.h"
#include "base/names.h"
#include "registry.h"

/* How many missing workers a timeout message names before "and N more". */
#define MISSING_NAMED_MAX 16

/* A waiter's use of one pending step: layer 'index' of its answer. */
typedef struct grad_ref_s {
    nsd_grad_waiter_t *waiter;
    size_t index;
} grad_ref_t;

typedef struct grad_pending_s {
    uint64_t step;
    uint32_t world_size;
    uint32_t arrived;
    size_t channels;
    uint64_t created_ms; /* first arrival */
    uint64_t bytes;      /* accounted memory */
    double **arrivals;   /* [world_size]: 2 * channels each (sum_dy, sum_dy_xmu), NULL = not yet */
    grad_ref_t *refs;
    size_t n_refs, cap_refs;
} grad_pending_t;

/* The gradient steps of one layer name. */
typedef struct grad_lane_s {
    char name[NS_NAME_MAX + 1];
    int64_t *worker_done; /* [n_workers]: last completed step each worker sent, -1 */
    uint32_t n_workers;
    grad_pending_t **pending; /* ascending step */
    size_t n_pending, cap_pending;
} grad_lane_t;

struct nsd_gradsum_s {
    grad_lane_t **lanes; /* ascending name */
    size_t n_lanes, cap_lanes;
};

/* ---------------------------------------------------------------- helpers */

static int grow_workers(grad_lane_t *lane, uint32_t need)
{
    if (need <= lane->n_workers)
        return 0;
    int64_t *p = realloc(lane->worker_done, need * sizeof(int64_t));
    if (p == NULL)
        return NS_ENOMEM;
    for (uint32_t w = lane->n_workers; w < need; w++)
        p[w] = -1;
    lane->worker_done = p;
    lane->n_workers = need;
    return 0;
}

static const char *lane_name_at(const void *items, size_t i)
{
    return ((grad_lane_t *const *)items)[i]->name;
}

static grad_lane_t *find_lane(const nsd_gradsum_t *gs, const char *name, size_t *pos)
{
    int found = 0;
    size_t i = gs ? nsd_name_pos(gs->lanes, gs->n_lanes, lane_name_at, name, &found) : 0;
    if (pos)
        *pos = i;
    return found ? gs->lanes[i] : NULL;
}

/* Index of the pending step 'step' in the lane, or where it would go. */
static size_t pending_pos(const grad_lane_t *lane, uint64_t step, int *found)
{
    size_t lo = 0, hi = lane->n_pending;
    *found = 0;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (lane->pending[mid]->step == step) {
            *found = 1;
            return mid;
        }
        if (lane->pending[mid]->step < step)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static void pending_free(grad_pending_t *p)
{
    if (p == NULL)
        return;
    for (uint32_t w = 0; w < p->world_size; w++)
        free(p->arrivals[w]);
    free(p->arrivals);
    free(p->refs);
    free(p);
}

static grad_pending_t *pending_create(uint64_t step, uint32_t world_size, size_t channels,
                                      uint64_t now_ms)
{
    grad_pending_t *p = calloc(1, sizeof(*p));
    if (p == NULL)
        return NULL;
    p->arrivals = calloc(world_size, sizeof(*p->arrivals));
    if (p->arrivals == NULL) {
        free(p);
        return NULL;
    }
    p->step = step;
    p->world_size = world_size;
    p->channels = channels;
    p->created_ms = now_ms;
    p->bytes = sizeof(*p) + (uint64_t)world_size * sizeof(*p->arrivals);
    return p;
}

static void lane_free(grad_lane_t *lane)
{
    if (lane == NULL)
        return;
    for (size_t i = 0; i < lane->n_pending; i++)
        pending_free(lane->pending[i]);
    free(lane->pending);
    free(lane->worker_done);
    free(lane);
}

/* ---------------------------------------------------------------- waiters */

void nsd_grad_result_free(nsd_grad_result_t *res)
{
    if (res == NULL)
        return;
    ns_grad_free(res->grad);
    free(res);
}

nsd_grad_waiter_t *nsd_grad_waiter_create(const ns_grad_t *grad, nsd_grad_cb cb, void *arg)
{
    nsd_grad_waiter_t *w = calloc(1, sizeof(*w));
    nsd_grad_result_t *res = calloc(1, sizeof(*res));
    ns_grad_t *ans = calloc(1, sizeof(*ans));
    ns_grad_layer_t *layers = calloc(grad->n_layers ? grad->n_layers : 1, sizeof(*layers));
    if (w == NULL || res == NULL || ans == NULL || layers == NULL) {
        free(w);
        free(res);
        free(ans);
        free(layers);
        return NULL;
    }
    ans->layers = layers;
    ans->step = grad->step;
    ans->dtype = grad->dtype;
    res->grad = ans;
    w->res = res;
    w->cb = cb;
    w->arg = arg;
    for (size_t i = 0; i < grad->n_layers; i++) {
        size_t c = grad->layers[i].channels;
        memcpy(layers[i].name, grad->layers[i].name, sizeof(layers[i].name));
        layers[i].sum_dy = malloc((c ? 2 * c : 1) * sizeof(double));
        if (layers[i].sum_dy == NULL) {
            nsd_grad_waiter_free(w);
            return NULL;
        }
        layers[i].sum_dy_xmu = layers[i].sum_dy + c;
        layers[i].channels = c;
        ans->n_layers = i + 1;
    }
    return w;
}

void nsd_grad_waiter_free(nsd_grad_waiter_t *w)
{
    if (w == NULL)
        return;
    nsd_grad_result_free(w->res);
    free(w);
}

static void outbox_fire(nsd_outbox_t *box, nsd_grad_waiter_t *w)
{
    w->fired = 1;
    nsd_queue_push(&box->grad_fired, &w->link);
}

/* Record an error on the waiter (first error wins). */
static void waiter_error(nsd_grad_waiter_t *w, int status, const char *message)
{
    if (w->res->status != 0)
        return;
    w->res->status = status;
    snprintf(w->res->message, sizeof(w->res->message), "%s", message ? message : "");
}

/* One layer of the waiter is done; fires it when it was the last. */
static void waiter_layer_done(nsd_ctx_t *ctx, nsd_outbox_t *box, nsd_grad_waiter_t *w)
{
    if (w->fired || w->remaining == 0 || --w->remaining > 0)
        return;
    atomic_fetch_sub(&ctx->grad_waiters, 1);
    outbox_fire(box, w);
}

/* The waiter fires now with 'status' (shutdown, deletion, import). */
static void waiter_fail(nsd_ctx_t *ctx, nsd_outbox_t *box, nsd_grad_waiter_t *w, int status)
{
    if (w->fired)
        return;
    waiter_error(w, status, NULL);
    atomic_fetch_sub(&ctx->grad_waiters, 1);
    outbox_fire(box, w);
}

/* ---------------------------------------------------------------- closing steps */

/* Remove pending step 'idx' from the lane and free it, releasing its memory. */
static void pending_remove(nsd_run_t *run, grad_lane_t *lane, size_t idx)
{
    grad_pending_t *p = lane->pending[idx];
    memmove(lane->pending + idx, lane->pending + idx + 1,
            (lane->n_pending - idx - 1) * sizeof(*lane->pending));
    lane->n_pending--;
    atomic_fetch_sub(&run->ctx->grad_pending_steps, 1);
    nsd_mem_release(run->ctx, p->bytes);
    atomic_fetch_sub(&run->st.memory, p->bytes);
    pending_free(p);
}

/* dst[k] = ((src[0][k] + src[1][k]) + src[2][k]) + ... : worker order, in
 * double. Adding whole arrays one worker at a time keeps that order per
 * element (and lets the compiler vectorize). */
static void sum_in_worker_order(double *dst, double *const *src, uint32_t n, size_t len)
{
    memcpy(dst, src[0], len * sizeof(double));
    for (uint32_t w = 1; w < n; w++) {
        const double *x = src[w];
        for (size_t k = 0; k < len; k++)
            dst[k] += x[k];
    }
}

/* Every worker arrived: sum, answer the waiters, forget the step. */
static void complete(nsd_run_t *run, grad_lane_t *lane, size_t idx, nsd_outbox_t *box)
{
    nsd_ctx_t *ctx = run->ctx;
    grad_pending_t *p = lane->pending[idx];
    size_t len = 2 * p->channels;
    const double *sums = NULL;
    char msg[512] = "";
    for (size_t k = 0; k < p->n_refs; k++) {
        nsd_grad_waiter_t *w = p->refs[k].waiter;
        if (w->fired)
            continue;
        ns_grad_layer_t *out = &w->res->grad->layers[p->refs[k].index];
        if (sums == NULL) {
            /* Summed once, into the first live answer; copied to the others. */
            sum_in_worker_order(out->sum_dy, p->arrivals, p->world_size, len);
            sums = out->sum_dy;
            for (size_t i = 0; i < len; i++)
                if (!isfinite(sums[i])) {
                    int xmu = i >= p->channels;
                    snprintf(msg, sizeof(msg),
                             "layers.%s.%s[%zu]: the sum over the workers of step %llu is not "
                             "finite (overflow)",
                             lane->name, xmu ? NS_FIELD_SUM_DY_XMU : NS_FIELD_SUM_DY,
                             xmu ? i - p->channels : i, (unsigned long long)p->step);
                    break;
                }
        } else {
            memcpy(out->sum_dy, sums, len * sizeof(double));
        }
        if (msg[0])
            waiter_error(w, NS_EVALUE, msg);
        if (w->res->grad->workers == 0 || p->world_size < w->res->grad->workers)
            w->res->grad->workers = p->world_size;
        waiter_layer_done(ctx, box, w);
    }
    p->n_refs = 0;
    for (uint32_t w = 0; w < p->world_size && w < lane->n_workers; w++)
        if (lane->worker_done[w] < (int64_t)p->step)
            lane->worker_done[w] = (int64_t)p->step;
    atomic_fetch_add(&ctx->grad_steps_completed, 1);
    pending_remove(run, lane, idx);
}

/* The step timed out: its waiters get 504 naming the missing workers. */
static void time_out(nsd_run_t *run, grad_lane_t *lane, size_t idx, nsd_outbox_t *box)
{
    nsd_ctx_t *ctx = run->ctx;
    grad_pending_t *p = lane->pending[idx];
    char list[256] = "";
    size_t len = 0;
    uint32_t missing = 0;
    for (uint32_t w = 0; w < p->world_size; w++) {
        if (p->arrivals[w] != NULL)
            continue;
        if (missing < MISSING_NAMED_MAX && len < sizeof(list))
            len += (size_t)snprintf(list + len, sizeof(list) - len, "%s%u", missing ? ", " : "", w);
        missing++;
    }
    if (missing > MISSING_NAMED_MAX && len < sizeof(list))
        snprintf(list + len, sizeof(list) - len, " and %u more", missing - MISSING_NAMED_MAX);
    char msg[512];
    snprintf(msg, sizeof(msg),
             "layers.%s step %llu: %s %s did not send %s gradient sums within %llu ms", lane->name,
             (unsigned long long)p->step, missing == 1 ? "worker" : "workers", list,
             missing == 1 ? "its" : "their", (unsigned long long)run->st.cfg.sync_timeout_ms);
    for (size_t k = 0; k < p->n_refs; k++) {
        nsd_grad_waiter_t *w = p->refs[k].waiter;
        if (w->fired)
            continue;
        waiter_error(w, NS_ETIMEDOUT, msg);
        waiter_layer_done(ctx, box, w);
    }
    p->n_refs = 0;
    atomic_fetch_add(&ctx->grad_steps_timed_out, 1);
    pending_remove(run, lane, idx);
}

/* ---------------------------------------------------------------- submit */

/* What one layer of a request needs, allocated before anything changes. */
typedef struct plan_s {
    size_t stats_channels; /* the statistics layer's channel count, 0 if none */
    grad_lane_t *lane;     /* existing or new_lane */
    int is_new_lane;
    grad_pending_t *pending; /* existing or new */
    int is_new_pending;
    uint64_t bytes;
} plan_t;

static void plan_free(plan_t *pl, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (pl[i].is_new_pending)
            pending_free(pl[i].pending);
        if (pl[i].is_new_lane)
            lane_free(pl[i].lane);
    }
    free(pl);
}

/* Phase 1: the checks of one layer; nothing changes. */
static int check_layer(const nsd_run_t *run, const ns_grad_t *g, const ns_grad_layer_t *gl,
                       plan_t *pl, ns_error_detail_t *err)
{
    const nsd_run_state_t *st = &run->st;
    char field[NS_NAME_MAX + 16];
    snprintf(field, sizeof(field), "layers.%s", gl->name);
    if (!ns_name_valid(gl->name))
        return ns_error_set(err, NS_EINVAL, field, "invalid layer name");
    grad_lane_t *lane = find_lane(st->grad, gl->name, NULL);
    grad_pending_t *p = NULL;
    if (lane != NULL) {
        int found;
        size_t i = pending_pos(lane, g->step, &found);
        p = found ? lane->pending[i] : NULL;
    }
    uint32_t ws = p ? p->world_size : st->cfg.world_size;
    if (g->worker >= ws)
        return ns_error_set(err, NS_EWORKER, "worker",
                            "worker %u outside world_size %u of gradient step %llu", g->worker, ws,
                            (unsigned long long)g->step);
    if (pl->stats_channels > 0 && pl->stats_channels != gl->channels)
        return ns_error_set(err, NS_ECHANNELS, field,
                            "expected %zu channels (the layer's), got %zu", pl->stats_channels,
                            gl->channels);
    if (p != NULL && p->channels != gl->channels)
        return ns_error_set(err, NS_ECHANNELS, field,
                            "expected %zu channels (fixed by the first arrival of gradient step "
                            "%llu), got %zu",
                            p->channels, (unsigned long long)g->step, gl->channels);
    if (p != NULL && p->arrivals[g->worker] != NULL)
        return ns_error_set(err, NS_EDUPLICATE, field, "worker %u already sent gradient step %llu",
                            g->worker, (unsigned long long)g->step);
    if (lane != NULL && g->worker < lane->n_workers &&
        (int64_t)g->step <= lane->worker_done[g->worker])
        return ns_error_set(err, NS_ESTALE, field,
                            "step %llu is at or below gradient step %lld, which worker %u "
                            "already completed",
                            (unsigned long long)g->step, (long long)lane->worker_done[g->worker],
                            g->worker);
    uint32_t max_pending = run->ctx->limits.max_pending_steps;
    if (p == NULL && lane != NULL && lane->n_pending >= max_pending)
        return ns_error_set(err, NS_EBUSY, field, "%u gradient steps already pending", max_pending);
    pl->lane = lane;
    pl->pending = p;
    return 0;
}

/* Phase 2: allocate what the layer needs and count its memory. */
static int prepare_layer(const nsd_run_t *run, const ns_grad_t *g, const ns_grad_layer_t *gl,
                         plan_t *pl, uint64_t now_ms, int has_waiter)
{
    if (pl->lane == NULL) {
        pl->lane = calloc(1, sizeof(*pl->lane));
        if (pl->lane == NULL)
            return NS_ENOMEM;
        memcpy(pl->lane->name, gl->name, sizeof(pl->lane->name));
        pl->is_new_lane = 1;
        pl->bytes += sizeof(grad_lane_t);
    }
    grad_lane_t *lane = pl->lane;
    uint32_t had = lane->n_workers;
    if (pl->pending == NULL) {
        pl->pending = pending_create(g->step, run->st.cfg.world_size, gl->channels, now_ms);
        if (pl->pending == NULL)
            return NS_ENOMEM;
        pl->is_new_pending = 1;
        pl->bytes += pl->pending->bytes;
    }
    pl->bytes += 2 * gl->channels * sizeof(double);
    /* Capacity only (state-neutral). */
    if (grow_workers(lane, g->worker + 1) ||
        nsd_array_grow((void **)&lane->pending, &lane->cap_pending, lane->n_pending + 1,
                       sizeof(*lane->pending)) ||
        (has_waiter && nsd_array_grow((void **)&pl->pending->refs, &pl->pending->cap_refs,
                                      pl->pending->n_refs + 1, sizeof(*pl->pending->refs))))
        return NS_ENOMEM;
    if (lane->n_workers > had)
        pl->bytes += (lane->n_workers - had) * sizeof(int64_t);
    return 0;
}

/* Commit one layer of a request (cannot fail): a new lane or pending step
 * joins the run, the request's block becomes the worker's arrival. */
static void commit_layer(nsd_run_t *run, nsd_gradsum_t *gs, ns_grad_t *g, plan_t *pl, size_t i,
                         nsd_grad_waiter_t *waiter, nsd_outbox_t *box)
{
    nsd_ctx_t *ctx = run->ctx;
    nsd_run_state_t *st = &run->st;
    grad_lane_t *lane = pl->lane;
    grad_pending_t *p = pl->pending;
    if (pl->is_new_lane) {
        size_t pos;
        find_lane(gs, lane->name, &pos);
        memmove(gs->lanes + pos + 1, gs->lanes + pos, (gs->n_lanes - pos) * sizeof(*gs->lanes));
        gs->lanes[pos] = lane;
        gs->n_lanes++;
        pl->is_new_lane = 0;
    }
    if (pl->is_new_pending) {
        int found;
        size_t pos = pending_pos(lane, g->step, &found);
        memmove(lane->pending + pos + 1, lane->pending + pos,
                (lane->n_pending - pos) * sizeof(*lane->pending));
        lane->pending[pos] = p;
        lane->n_pending++;
        pl->is_new_pending = 0;
        atomic_fetch_add(&ctx->grad_pending_steps, 1);
        nsd_run_note_deadline(run, p->created_ms + st->cfg.sync_timeout_ms, box);
    }
    /* Take the request's block (no copy); the request no longer owns it. */
    p->arrivals[g->worker] = g->layers[i].sum_dy;
    g->layers[i].sum_dy = g->layers[i].sum_dy_xmu = NULL;
    p->arrived++;
    p->bytes += 2 * p->channels * sizeof(double);
    if (waiter != NULL) {
        p->refs[p->n_refs].waiter = waiter;
        p->refs[p->n_refs].index = i;
        p->n_refs++;
    }
}

/* nsd_gradsum_submit() with the plan's statistics channel counts read,
 * under grad_lock; frees the plan. */
static int submit_planned(nsd_run_t *run, ns_grad_t *g, plan_t *pl, uint64_t now_ms,
                          nsd_grad_waiter_t *waiter, nsd_outbox_t *box, ns_error_detail_t *err)
{
    nsd_run_state_t *st = &run->st;
    nsd_ctx_t *ctx = run->ctx;
    int rc = 0;
    for (size_t i = 0; i < g->n_layers && rc == 0; i++)
        rc = check_layer(run, g, &g->layers[i], &pl[i], err);
    if (rc != 0)
        goto fail;

    nsd_gradsum_t *created = NULL;
    if (st->grad == NULL && (created = calloc(1, sizeof(*created))) == NULL)
        rc = NS_ENOMEM;
    nsd_gradsum_t *gs = st->grad ? st->grad : created;
    uint64_t bytes = created ? sizeof(*created) : 0;
    size_t new_lanes = 0;
    for (size_t i = 0; i < g->n_layers && rc == 0; i++) {
        rc = prepare_layer(run, g, &g->layers[i], &pl[i], now_ms, waiter != NULL);
        bytes += pl[i].bytes;
        new_lanes += pl[i].is_new_lane;
    }
    if (rc == 0)
        rc = nsd_array_grow((void **)&gs->lanes, &gs->cap_lanes, gs->n_lanes + new_lanes,
                            sizeof(*gs->lanes));
    if (rc != 0) {
        ns_error_set(err, rc, "", "out of memory");
        goto fail_created;
    }
    rc = nsd_mem_reserve(ctx, bytes);
    if (rc != 0) {
        ns_error_set(err, rc, "", "memory budget of %llu bytes exceeded",
                     (unsigned long long)ctx->limits.max_memory);
        goto fail_created;
    }

    /* Commit: nothing below can fail. */
    atomic_fetch_add(&st->memory, bytes);
    st->grad = gs;
    if (waiter != NULL) {
        waiter->remaining = g->n_layers;
        atomic_fetch_add(&ctx->grad_waiters, 1);
    }
    for (size_t i = 0; i < g->n_layers; i++)
        commit_layer(run, gs, g, &pl[i], i, waiter, box);
    /* Sum the steps this request completed. */
    for (size_t i = 0; i < g->n_layers; i++) {
        grad_lane_t *lane = pl[i].lane;
        int found;
        size_t pos = pending_pos(lane, g->step, &found);
        if (found && lane->pending[pos]->arrived == lane->pending[pos]->world_size)
            complete(run, lane, pos, box);
    }
    free(pl);
    return 0;
fail_created:
    plan_free(pl, g->n_layers);
    if (created != NULL)
        free(created->lanes);
    free(created);
    return rc;
fail:
    plan_free(pl, g->n_layers);
    return rc;
}

int nsd_gradsum_submit(nsd_run_t *run, ns_grad_t *g, uint64_t now_ms, nsd_grad_waiter_t *waiter,
                       nsd_outbox_t *box, ns_error_detail_t *err)
{
    if (g->n_layers == 0)
        return ns_error_set(err, NS_EINVAL, "layers", "no layers");
    if (g->step > (uint64_t)INT64_MAX)
        return ns_error_set(err, NS_EINVAL, "step", "must be < 2^63");
    plan_t *pl = calloc(g->n_layers, sizeof(*pl));
    if (pl == NULL)
        return ns_error_set(err, NS_ENOMEM, "", "out of memory");
    /* The statistics layers' channel counts, each read under its layer's
     * lock before grad_lock, which is never held while a layer is locked. */
    for (size_t i = 0; i < g->n_layers; i++) {
        nsd_layer_t *l = nsd_run_find_layer(&run->st, g->layers[i].name);
        if (l != NULL) {
            nsd_layer_lock(l);
            pl[i].stats_channels = l->channels;
            nsd_layer_unlock(l);
        }
    }
    pthread_mutex_lock(&run->grad_lock);
    int rc = submit_planned(run, g, pl, now_ms, waiter, box, err);
    pthread_mutex_unlock(&run->grad_lock);
    return rc;
}

/* ---------------------------------------------------------------- timeouts, teardown */

uint64_t nsd_gradsum_expire(nsd_run_t *run, uint64_t now_ms, nsd_outbox_t *box)
{
    nsd_gradsum_t *gs = run->st.grad;
    uint64_t timeout = run->st.cfg.sync_timeout_ms, next = UINT64_MAX;
    for (size_t i = 0; gs != NULL && i < gs->n_lanes; i++) {
        grad_lane_t *lane = gs->lanes[i];
        size_t k = 0;
        while (k < lane->n_pending) {
            uint64_t deadline = lane->pending[k]->created_ms + timeout;
            if (deadline <= now_ms) {
                time_out(run, lane, k, box);
                continue;
            }
            if (deadline < next)
                next = deadline;
            k++;
        }
    }
    return next;
}

void nsd_gradsum_fire_all(nsd_ctx_t *ctx, nsd_gradsum_t *gs, int status, nsd_outbox_t *box)
{
    for (size_t i = 0; gs != NULL && i < gs->n_lanes; i++) {
        grad_lane_t *lane = gs->lanes[i];
        for (size_t k = 0; k < lane->n_pending; k++) {
            grad_pending_t *p = lane->pending[k];
            for (size_t r = 0; r < p->n_refs; r++)
                waiter_fail(ctx, box, p->refs[r].waiter, status);
            p->n_refs = 0;
        }
    }
}

void nsd_gradsum_free(nsd_ctx_t *ctx, nsd_gradsum_t *gs, int status, nsd_outbox_t *box)
{
    if (gs == NULL)
        return;
    if (box != NULL)
        nsd_gradsum_fire_all(ctx, gs, status, box);
    for (size_t i = 0; i < gs->n_lanes; i++) {
        atomic_fetch_sub(&ctx->grad_pending_steps, gs->lanes[i]->n_pending);
        lane_free(gs->lanes[i]);
    }
    free(gs->lanes);
    free(gs);
}
