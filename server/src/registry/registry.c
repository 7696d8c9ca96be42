/* registry.c - the map of runs, its locking, and delivery of callbacks after
 * every lock is released (see registry.h).
 *
 * DESIGN
 *  - Lock order (doc/design.md, "Threads and locks"): map rwlock, then one
 *    run's rwlock, then that run's layer mutexes in ascending name order,
 *    then its grad_lock or a /sync waiter's mutex, then (inside a
 *    persistence hook) the store's mutex. A report to existing layers and
 *    domain holds the run's rwlock shared and its layers' mutexes, so
 *    reports to different layers proceed in parallel; everything that
 *    changes the run itself (PUT, DELETE, a new layer or domain, a reset,
 *    an import, recovery) holds it exclusively. Readers hold it shared and
 *    every layer's mutex, so they copy a consistent cut.
 *  - Runs are refcounted; the map holds one reference, every request in
 *    flight another, so a DELETE never frees a run another thread is
 *    working on; that thread sees run->deleted once it has the lock.
 *  - A report to a missing run creates and fills the run while holding the
 *    map's write lock, and publishes it only if the report was accepted, so a
 *    rejected report leaves no run behind.
 *  - Callbacks (/sync, wakeup) are collected in an outbox while locked and
 *    delivered after unlocking: /sync callbacks, then the wakeup.
 *  - Persistence hooks (ctx.persist) are called where the change is made,
 *    under the lock that guards it: run-level changes (a run created or
 *    reconfigured, a domain, a reset, an import, a deletion) under the
 *    run's rwlock held exclusively, a finalized step under its layer's
 *    mutex. So a store's log holds each layer's changes in the order they
 *    were made, and every run-level change between the same layers' changes
 *    as in memory. A /sync callback is delivered after every step it waited
 *    for was handed to the store. */
#include "registry.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint.h"
#include "gradsum.h"
#include "registry_internal.h"

/* ---------------------------------------------------------------- life cycle */

nsd_registry_t *nsd_registry_create(const nsd_limits_t *limits)
{
    nsd_registry_t *reg = calloc(1, sizeof(*reg));
    if (reg == NULL)
        return NULL;
    if (pthread_rwlock_init(&reg->map_lock, NULL) != 0) {
        free(reg);
        return NULL;
    }
    if (limits != NULL)
        reg->ctx.limits = *limits;
    if (reg->ctx.limits.max_pending_steps == 0)
        reg->ctx.limits.max_pending_steps = NSD_DEFAULT_MAX_PENDING_STEPS;
    atomic_init(&reg->ctx.next_deadline, UINT64_MAX);
    return reg;
}

void nsd_registry_free(nsd_registry_t *reg)
{
    if (reg == NULL)
        return;
    nsd_outbox_t box = {0};
    for (size_t i = 0; i < reg->n_runs; i++) {
        nsd_run_t *run = reg->runs[i];
        /* Waiters still present are freed without a call (see registry.h). */
        nsd_run_fire_all(run, NS_ESHUTDOWN, &box);
        nsd_run_unref(run);
    }
    for (nsd_qnode_t *n; (n = nsd_queue_pop(&box.fired)) != NULL;) {
        nsd_waiter_t *w = nsd_container_of(n, nsd_waiter_t, link);
        nsd_sync_result_free(w->res);
        nsd_waiter_free(w);
    }
    for (nsd_qnode_t *n; (n = nsd_queue_pop(&box.grad_fired)) != NULL;)
        nsd_grad_waiter_free(nsd_container_of(n, nsd_grad_waiter_t, link));
    free(reg->runs);
    pthread_rwlock_destroy(&reg->map_lock);
    free(reg);
}

void nsd_registry_set_persist(nsd_registry_t *reg, const nsd_persist_t *hooks)
{
    if (hooks)
        reg->ctx.persist = *hooks;
    else
        memset(&reg->ctx.persist, 0, sizeof(reg->ctx.persist));
}

void nsd_registry_set_wakeup(nsd_registry_t *reg, void (*fn)(void *arg), void *arg)
{
    reg->wakeup = fn;
    reg->wakeup_arg = arg;
}

void nsd_sync_result_free(nsd_sync_result_t *res)
{
    if (res == NULL)
        return;
    for (size_t i = 0; i < res->n_layers; i++)
        free(res->layers[i].mean); /* var shares the block */
    free(res->layers);
    free(res->missing);
    free(res);
}

/* ---------------------------------------------------------------- runs */

/* The error of a run that could not be created: over the budget, or out of memory. */
static int budget_error(nsd_registry_t *reg, int why, ns_error_detail_t *err)
{
    if (why == NS_EMEMORY)
        return ns_error_set(err, NS_EMEMORY, "", "memory budget of %llu bytes exceeded",
                            (unsigned long long)reg->ctx.limits.max_memory);
    return ns_error_set(err, NS_ENOMEM, "", "out of memory");
}

/* Apply 'cfg' to the run 'name', creating it if the map has none.
 * @return 0, an error code, or 1 when the run found was deleted before its
 * lock was taken (the caller looks again). */
static int put_once(nsd_registry_t *reg, const char *name, const ns_run_config_t *cfg, int *created,
                    ns_run_config_t *full, nsd_outbox_t *box, ns_error_detail_t *err)
{
    int rc = 0;
    pthread_rwlock_wrlock(&reg->map_lock);
    int found;
    size_t pos = nsd_registry_map_pos(reg, name, &found);
    nsd_run_t *run;
    if (found) {
        run = reg->runs[pos];
        nsd_run_ref(run);
        pthread_rwlock_unlock(&reg->map_lock);
        nsd_run_lock(run, 1);
        if (run->deleted) {
            nsd_registry_unlock_run(run);
            return 1;
        }
        rc = nsd_run_config_apply(run, cfg, err, box);
        *full = run->st.cfg;
        if (rc == 0 && reg->ctx.persist.run_put)
            reg->ctx.persist.run_put(reg->ctx.persist.arg, name, full, 0);
        nsd_registry_unlock_run(run);
        return rc;
    }
    ns_run_config_t defaults;
    ns_run_config_defaults(&defaults);
    int why;
    run = nsd_run_create(&reg->ctx, name, &defaults, &why);
    if (run == NULL) {
        rc = budget_error(reg, why, err);
    } else {
        rc = nsd_run_config_apply(run, cfg, err, box);
        if (rc == 0)
            rc = nsd_registry_map_insert(reg, run, pos);
        if (rc != 0) {
            ns_error_set(err, rc, "", "out of memory");
            nsd_run_unref(run);
        } else {
            *created = 1;
            *full = run->st.cfg;
            /* Under the map lock: nothing else can reach the run yet. */
            if (reg->ctx.persist.run_put)
                reg->ctx.persist.run_put(reg->ctx.persist.arg, name, full, 1);
        }
    }
    pthread_rwlock_unlock(&reg->map_lock);
    return rc;
}

int nsd_registry_put_run(nsd_registry_t *reg, const char *name, const ns_run_config_t *cfg,
                         int *created, ns_error_detail_t *err)
{
    nsd_outbox_t box = {0};
    int was_created = 0;
    ns_run_config_t full;
    if (created)
        *created = 0;
    if (atomic_load(&reg->shutdown))
        return ns_error_set(err, NS_ESHUTDOWN, "", "server is shutting down");
    if (!ns_name_valid(name))
        return ns_error_set(err, NS_EINVAL, "run", "invalid run name");
    /* A DELETE between the lookup and the run's lock has taken the run out
     * of the map: look again, and create it. Deleted again in that instant,
     * the PUT answers 409 (never 404: a PUT creates what is missing). */
    int rc = put_once(reg, name, cfg, &was_created, &full, &box, err);
    if (rc == 1)
        rc = put_once(reg, name, cfg, &was_created, &full, &box, err);
    if (rc == 1)
        rc = ns_error_set(err, NS_ECONFLICT, "run",
                          "run '%s' was deleted while this PUT applied; retry", name);
    if (rc != 0)
        return rc;
    if (created)
        *created = was_created;
    nsd_registry_flush(reg, &box);
    return 0;
}

int nsd_registry_delete_run(nsd_registry_t *reg, const char *name, ns_error_detail_t *err)
{
    if (!ns_name_valid(name))
        return ns_error_set(err, NS_EINVAL, "run", "invalid run name");
    pthread_rwlock_wrlock(&reg->map_lock);
    int found;
    size_t pos = nsd_registry_map_pos(reg, name, &found);
    nsd_run_t *run = found ? reg->runs[pos] : NULL;
    if (run == NULL) {
        pthread_rwlock_unlock(&reg->map_lock);
        return ns_error_set(err, NS_ENOTFOUND, "run", "no run '%s'", name);
    }
    memmove(reg->runs + pos, reg->runs + pos + 1, (reg->n_runs - pos - 1) * sizeof(*reg->runs));
    reg->n_runs--;
    nsd_outbox_t box = {0};
    /* Both locks held while the deletion is logged: a run of the same name
     * created right after is logged after it. */
    nsd_run_lock(run, 1);
    run->deleted = 1;
    nsd_run_fire_all(run, NS_ENOTFOUND, &box);
    if (reg->ctx.persist.run_deleted)
        reg->ctx.persist.run_deleted(reg->ctx.persist.arg, name);
    nsd_run_unlock(run);
    pthread_rwlock_unlock(&reg->map_lock);
    nsd_run_unref(run); /* the map's reference */
    nsd_registry_flush(reg, &box);
    return 0;
}

json_t *nsd_registry_list_json(nsd_registry_t *reg, const char *after, size_t limit)
{
    size_t n;
    int more;
    nsd_run_t **runs = nsd_registry_map_page(reg, after, limit, &n, &more);
    json_t *arr = json_array();
    if (runs == NULL || arr == NULL) {
        json_decref(arr);
        free(runs);
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        json_t *s = NULL;
        nsd_run_lock(runs[i], 0);
        if (!runs[i]->deleted) {
            nsd_run_lock_layers(runs[i]);
            s = nsd_run_summary_json(runs[i]);
            nsd_run_unlock_layers(runs[i]);
        }
        nsd_run_unlock(runs[i]);
        if (s != NULL)
            json_array_append_new(arr, s);
    }
    const char *next = more && n > 0 ? runs[n - 1]->name : NULL;
    json_t *list = json_pack("{s:o}", "runs", arr);
    if (list != NULL && next != NULL && json_object_set_new(list, "next", json_string(next)) != 0) {
        json_decref(list);
        list = NULL;
    }
    nsd_registry_runs_free(runs, n);
    return list;
}

int nsd_registry_run_text(nsd_registry_t *reg, const char *name, uint64_t now_ms, ns_buf_t *dst,
                          ns_error_detail_t *err)
{
    int rc;
    nsd_run_t *run = nsd_registry_read_run(reg, name, &rc, err);
    if (run == NULL)
        return rc;
    rc = nsd_run_text(run, now_ms, dst);
    nsd_registry_end_read(run);
    if (rc != 0) {
        ns_buf_free(dst);
        return ns_error_set(err, NS_ENOMEM, "", "out of memory");
    }
    return 0;
}

json_t *nsd_registry_run_json(nsd_registry_t *reg, const char *name, uint64_t now_ms,
                              ns_error_detail_t *err)
{
    ns_buf_t text = {0};
    if (nsd_registry_run_text(reg, name, now_ms, &text, err) != 0)
        return NULL;
    json_t *j = json_loadb(text.data, text.len, JSON_REJECT_DUPLICATES, NULL);
    ns_buf_free(&text);
    if (j == NULL)
        ns_error_set(err, NS_ENOMEM, "", "out of memory");
    return j;
}

uint64_t nsd_registry_view_bytes(nsd_registry_t *reg, const char *name, nsd_view_t view)
{
    int rc;
    nsd_run_t *run = nsd_registry_read_run(reg, name, &rc, NULL);
    if (run == NULL)
        return 0;
    uint64_t bytes =
        view == NSD_VIEW_DRIFT ? nsd_run_drift_text_bytes(run) : nsd_run_text_bytes(run);
    nsd_registry_end_read(run);
    return bytes;
}

/* ---------------------------------------------------------------- reports */

static nsd_waiter_t *waiter_create(const ns_report_t *report, nsd_sync_cb cb, void *arg)
{
    nsd_waiter_t *w = calloc(1, sizeof(*w));
    nsd_sync_result_t *res = calloc(1, sizeof(*res));
    nsd_sync_layer_t *layers = calloc(report->n_layers ? report->n_layers : 1, sizeof(*layers));
    if (w == NULL || res == NULL || layers == NULL || pthread_mutex_init(&w->lock, NULL) != 0) {
        free(w);
        free(res);
        free(layers);
        return NULL;
    }
    for (size_t i = 0; i < report->n_layers; i++)
        snprintf(layers[i].name, sizeof(layers[i].name), "%s", report->layers[i].name);
    res->layers = layers;
    res->n_layers = report->n_layers;
    res->step = report->step;
    w->cb = cb;
    w->arg = arg;
    w->res = res;
    return w;
}

static void waiter_free(nsd_waiter_t *w)
{
    if (w == NULL)
        return;
    nsd_sync_result_free(w->res);
    nsd_waiter_free(w);
}

/* A report to a run that is not in the map: create the run under the map's
 * write lock and publish it only if the report was accepted. @return 0 or
 * NS_E* (err), or 1 when another thread created the run meanwhile. */
static int report_new_run(nsd_registry_t *reg, const char *name, ns_report_t *report,
                          uint64_t now_ms, nsd_waiter_t *waiter, nsd_outbox_t *box,
                          ns_error_detail_t *err)
{
    ns_run_config_t cfg;
    pthread_rwlock_wrlock(&reg->map_lock);
    int found, rc;
    size_t pos = nsd_registry_map_pos(reg, name, &found);
    if (found) {
        pthread_rwlock_unlock(&reg->map_lock);
        return 1;
    }
    ns_run_config_defaults(&cfg);
    if (report->world_size >= 1) {
        if (report->world_size > NS_WORLD_SIZE_MAX) {
            pthread_rwlock_unlock(&reg->map_lock);
            return ns_error_set(err, NS_EINVAL, "world_size", "must be in [1, %u]",
                                NS_WORLD_SIZE_MAX);
        }
        cfg.world_size = (uint32_t)report->world_size;
    }
    int why = NS_ENOMEM;
    nsd_run_t *run =
        nsd_registry_map_reserve(reg) == 0 ? nsd_run_create(&reg->ctx, name, &cfg, &why) : NULL;
    if (run == NULL) {
        pthread_rwlock_unlock(&reg->map_lock);
        return budget_error(reg, why, err);
    }
    /* Under the map lock nothing else can reach the run: exclusively, the
     * report logs the run's creation before its domain and steps. */
    nsd_run_lock(run, 1);
    rc = nsd_run_report(run, report, now_ms, NSD_REPORT_CREATED, waiter, box, err);
    if (rc == 0) {
        nsd_registry_map_insert(reg, run, pos); /* cannot fail: room reserved */
        nsd_run_ref(run);                       /* the map's reference */
    }
    nsd_run_unlock(run);
    pthread_rwlock_unlock(&reg->map_lock);
    nsd_run_unref(run);
    return rc;
}

/* nsd_run_report() of a run found in the map: a run deleted before its
 * lock was taken (the caller looks again when 'may_retry'). */
#define REPORT_RUN_DELETED 2

/* A report to a run of the map: with its rwlock shared (reports to other
 * layers go on meanwhile), or exclusively when the report adds a layer or
 * a domain. @return 0, NS_E* (err) or REPORT_RUN_DELETED. */
static int report_existing(nsd_run_t *run, ns_report_t *report, uint64_t now_ms,
                           nsd_waiter_t *waiter, int may_retry, nsd_outbox_t *box,
                           ns_error_detail_t *err)
{
    int rc = NSD_REPORT_NEEDS_EXCLUSIVE;
    for (int exclusive = 0; exclusive <= 1 && rc == NSD_REPORT_NEEDS_EXCLUSIVE; exclusive++) {
        nsd_run_lock(run, exclusive);
        if (!run->deleted)
            rc = nsd_run_report(run, report, now_ms, exclusive ? 0 : NSD_REPORT_SHARED, waiter, box,
                                err);
        else if (may_retry)
            rc = REPORT_RUN_DELETED;
        else
            rc = ns_error_set(err, NS_ENOTFOUND, "run", "run '%s' was deleted", run->name);
        nsd_run_unlock(run);
    }
    return rc;
}

int nsd_registry_report(nsd_registry_t *reg, const char *name, ns_report_t *report, uint64_t now_ms,
                        nsd_sync_cb cb, void *arg, ns_error_detail_t *err)
{
    nsd_outbox_t box = {0};
    nsd_waiter_t *waiter = NULL;
    int rc;
    if (report == NULL)
        return ns_error_set(err, NS_EINVAL, "", "no report");
    if (atomic_load(&reg->shutdown)) {
        rc = ns_error_set(err, NS_ESHUTDOWN, "", "server is shutting down");
        goto out;
    }
    if (!ns_name_valid(name)) {
        rc = ns_error_set(err, NS_EINVAL, "run", "invalid run name");
        goto out;
    }
    if (cb != NULL && (waiter = waiter_create(report, cb, arg)) == NULL) {
        rc = ns_error_set(err, NS_ENOMEM, "", "out of memory");
        goto out;
    }
    for (int attempt = 0;; attempt++) {
        nsd_run_t *run = nsd_registry_map_get(reg, name);
        if (run == NULL) {
            rc = report_new_run(reg, name, report, now_ms, waiter, &box, err);
            if (rc == 1)
                continue; /* created by another thread meanwhile */
            break;
        }
        rc = report_existing(run, report, now_ms, waiter, attempt == 0, &box, err);
        nsd_run_unref(run);
        if (rc == REPORT_RUN_DELETED)
            continue; /* deleted meanwhile: create it anew */
        break;
    }
    if (rc == 0)
        waiter = NULL; /* the run owns it now */
    nsd_registry_flush(reg, &box);
out:
    waiter_free(waiter);
    ns_report_free(report);
    return rc;
}

/* ---------------------------------------------------------------- gradient sums */

int nsd_registry_grad(nsd_registry_t *reg, const char *name, ns_grad_t *grad, uint64_t now_ms,
                      nsd_grad_cb cb, void *arg, ns_error_detail_t *err)
{
    nsd_outbox_t box = {0};
    nsd_grad_waiter_t *waiter = NULL;
    int rc;
    if (grad == NULL)
        return ns_error_set(err, NS_EINVAL, "", "no request");
    if (atomic_load(&reg->shutdown)) {
        rc = ns_error_set(err, NS_ESHUTDOWN, "", "server is shutting down");
        goto out;
    }
    if (cb != NULL && (waiter = nsd_grad_waiter_create(grad, cb, arg)) == NULL) {
        rc = ns_error_set(err, NS_ENOMEM, "", "out of memory");
        goto out;
    }
    nsd_run_t *run = nsd_registry_lock_run(reg, name, 0, &rc, err);
    if (run == NULL)
        goto out;
    rc = nsd_gradsum_submit(run, grad, now_ms, waiter, &box, err);
    nsd_registry_unlock_run(run);
    if (rc == 0)
        waiter = NULL; /* the run owns it now */
    nsd_registry_flush(reg, &box);
out:
    nsd_grad_waiter_free(waiter);
    ns_grad_free(grad);
    return rc;
}

/* ---------------------------------------------------------------- statistics */

int nsd_registry_stats(nsd_registry_t *reg, const char *name, const nsd_stats_query_t *q,
                       nsd_stats_t **dst, ns_error_detail_t *err)
{
    *dst = NULL;
    int rc;
    nsd_run_t *run = nsd_registry_read_run(reg, name, &rc, err);
    if (run == NULL)
        return rc;
    rc = nsd_run_stats(run, q, dst, err);
    nsd_registry_end_read(run);
    return rc;
}

static int precise_reset(nsd_registry_t *reg, const char *name, const char *domain, int known_only,
                         uint64_t *generation, ns_error_detail_t *err)
{
    int rc;
    nsd_run_t *run = nsd_registry_lock_run(reg, name, 1, &rc, err);
    if (run == NULL)
        return rc;
    int one = domain != NULL && strcmp(domain, "*") != 0;
    if (known_only && one && ns_name_valid(domain) && nsd_run_find_domain(&run->st, domain) < 0)
        rc = ns_error_set(err, NS_ENOTFOUND, "domain", "run '%s' has no domain '%s'", name, domain);
    else
        rc = nsd_run_precise_reset(run, domain, generation, err);
    if (rc == 0 && reg->ctx.persist.precise_reset)
        reg->ctx.persist.precise_reset(reg->ctx.persist.arg, name, one ? domain : NULL);
    nsd_registry_unlock_run(run);
    return rc;
}

int nsd_registry_precise_reset(nsd_registry_t *reg, const char *name, const char *domain,
                               uint64_t *generation, ns_error_detail_t *err)
{
    return precise_reset(reg, name, domain, 0, generation, err);
}

int nsd_registry_precise_reset_known(nsd_registry_t *reg, const char *name, const char *domain,
                                     uint64_t *generation, ns_error_detail_t *err)
{
    return precise_reset(reg, name, domain, 1, generation, err);
}

/* ---------------------------------------------------------------- checkpoints */

json_t *nsd_registry_checkpoint_export(nsd_registry_t *reg, const char *name,
                                       ns_error_detail_t *err)
{
    int rc;
    nsd_run_t *run = nsd_registry_read_run(reg, name, &rc, err);
    if (run == NULL)
        return NULL;
    json_t *j = nsd_checkpoint_export(run);
    nsd_registry_end_read(run);
    if (j == NULL)
        ns_error_set(err, NS_ENOMEM, "", "out of memory");
    return j;
}

int nsd_registry_checkpoint_import(nsd_registry_t *reg, const char *name, const char *src,
                                   size_t src_len, ns_error_detail_t *err)
{
    nsd_outbox_t box = {0};
    nsd_run_state_t st;
    int created = 0;
    if (atomic_load(&reg->shutdown))
        return ns_error_set(err, NS_ESHUTDOWN, "", "server is shutting down");
    if (!ns_name_valid(name))
        return ns_error_set(err, NS_EINVAL, "run", "invalid run name");
    int rc = nsd_checkpoint_parse(&st, src, src_len, err);
    if (rc != 0)
        return rc;
    rc = nsd_mem_reserve(&reg->ctx, st.memory);
    if (rc != 0) {
        nsd_run_state_t tmp = st;
        tmp.memory = 0;
        nsd_run_state_clear(&reg->ctx, &tmp, 0, NULL);
        return ns_error_set(err, rc, "", "memory budget of %llu bytes exceeded",
                            (unsigned long long)reg->ctx.limits.max_memory);
    }
    pthread_rwlock_wrlock(&reg->map_lock);
    int found;
    size_t pos = nsd_registry_map_pos(reg, name, &found);
    nsd_run_t *run;
    if (found) {
        run = reg->runs[pos];
        nsd_run_ref(run);
    } else {
        int why = NS_ENOMEM;
        run = nsd_run_create(&reg->ctx, name, &st.cfg, &why);
        if (run == NULL || nsd_registry_map_insert(reg, run, pos) != 0) {
            pthread_rwlock_unlock(&reg->map_lock);
            nsd_run_unref(run);
            nsd_run_state_clear(&reg->ctx, &st, 0, NULL);
            return budget_error(reg, run == NULL ? why : NS_ENOMEM, err);
        }
        nsd_run_ref(run);
        created = 1;
    }
    nsd_run_lock(run, 1);
    pthread_rwlock_unlock(&reg->map_lock);
    nsd_run_fire_all(run, NS_ECONFLICT, &box);
    nsd_run_state_clear(&reg->ctx, &run->st, NS_ECONFLICT, &box);
    run->st = st;
    ns_run_config_t cfg = st.cfg;
    if (reg->ctx.persist.run_snapshot) {
        /* The store keeps the imported state whole (out of memory: logged as
         * a configuration only, the import itself succeeded). */
        char *text = nsd_checkpoint_text(run);
        if (text != NULL)
            reg->ctx.persist.run_snapshot(reg->ctx.persist.arg, name, text); /* takes it */
        else if (reg->ctx.persist.run_put)
            reg->ctx.persist.run_put(reg->ctx.persist.arg, name, &cfg, created);
    } else if (reg->ctx.persist.run_put) {
        reg->ctx.persist.run_put(reg->ctx.persist.arg, name, &cfg, created);
    }
    nsd_registry_unlock_run(run);
    nsd_registry_flush(reg, &box);
    return 0;
}

/* ---------------------------------------------------------------- coordinator */

uint64_t nsd_registry_expire(nsd_registry_t *reg, uint64_t now_ms)
{
    atomic_store(&reg->ctx.next_deadline, UINT64_MAX);
    size_t n;
    nsd_run_t **runs = nsd_registry_map_snapshot(reg, &n);
    uint64_t next = UINT64_MAX;
    for (size_t i = 0; i < n; i++) {
        nsd_outbox_t box = {0};
        nsd_run_lock(runs[i], 0);
        if (!runs[i]->deleted) {
            uint64_t d = nsd_run_expire(runs[i], now_ms, &box);
            if (d < next)
                next = d;
        }
        nsd_run_unlock(runs[i]);
        box.wakeup = 0; /* the caller is the one to wake */
        nsd_registry_flush(reg, &box);
    }
    nsd_registry_runs_free(runs, n);
    /* Reports that created steps meanwhile may have lowered it already. */
    uint64_t cur = atomic_load(&reg->ctx.next_deadline);
    while (next < cur && !atomic_compare_exchange_weak(&reg->ctx.next_deadline, &cur, next))
        ;
    return atomic_load(&reg->ctx.next_deadline);
}

void nsd_registry_shutdown(nsd_registry_t *reg)
{
    atomic_store(&reg->shutdown, 1);
    size_t n;
    nsd_run_t **runs = nsd_registry_map_snapshot(reg, &n);
    for (size_t i = 0; i < n; i++) {
        nsd_outbox_t box = {0};
        nsd_run_lock(runs[i], 1);
        nsd_run_fire_all(runs[i], NS_ESHUTDOWN, &box);
        nsd_run_unlock(runs[i]);
        nsd_registry_flush(reg, &box);
    }
    nsd_registry_runs_free(runs, n);
}

/* ---------------------------------------------------------------- metrics */

void nsd_registry_counters(nsd_registry_t *reg, nsd_counters_t *dst)
{
    const nsd_ctx_t *c = &reg->ctx;
    dst->steps_finalized = atomic_load(&c->steps_finalized);
    dst->steps_applied = atomic_load(&c->steps_applied);
    dst->steps_timed_out = atomic_load(&c->steps_timed_out);
    dst->steps_dropped = atomic_load(&c->steps_dropped);
    dst->steps_skipped = atomic_load(&c->steps_skipped);
    dst->reports_accepted = atomic_load(&c->reports_accepted);
    dst->grad_steps_completed = atomic_load(&c->grad_steps_completed);
    dst->grad_steps_timed_out = atomic_load(&c->grad_steps_timed_out);
    dst->grad_pending_steps = atomic_load(&c->grad_pending_steps);
    dst->grad_waiters = atomic_load(&c->grad_waiters);
    dst->pending_steps = atomic_load(&c->pending_steps);
    dst->sync_waiters = atomic_load(&c->sync_waiters);
    dst->runs = atomic_load(&c->runs);
    dst->memory_bytes = atomic_load(&c->memory);
}

int nsd_registry_mem_reserve(nsd_registry_t *reg, uint64_t bytes)
{
    return nsd_mem_reserve(&reg->ctx, bytes);
}

void nsd_registry_mem_release(nsd_registry_t *reg, uint64_t bytes)
{
    nsd_mem_release(&reg->ctx, bytes);
}

uint64_t nsd_registry_mem_free(nsd_registry_t *reg)
{
    uint64_t max = reg->ctx.limits.max_memory, used = atomic_load(&reg->ctx.memory);
    return max == 0 ? UINT64_MAX : used >= max ? 0 : max - used;
}
