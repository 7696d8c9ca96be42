/* registry_recovery.c - the registry's side of persistence: snapshots of a
 * run for the store, and recovery replaying the store's log (registry.h). */
#include "registry_internal.h"

#include <stdlib.h>

#include "checkpoint.h"

/* A snapshot whose state is copied under the locks (the run's shared,
 * every layer's) and written as text after they are released (the store's
 * hooks): ingest into the run waits for a compact copy of its arrays, not
 * for their text. The held steps are the layers' own, borrowed while the
 * layers are locked. */
static int snapshot_copied(nsd_registry_t *reg, nsd_run_t *run, const char *name,
                           ns_error_detail_t *err)
{
    const nsd_persist_t *p = &reg->ctx.persist;
    nsd_checkpoint_stream_t *copy = nsd_checkpoint_stream_copy(run);
    void *ticket = NULL;
    if (copy != NULL) {
        nsd_queue_t held = {0};
        nsd_run_held_steps(run, &held);
        ticket = p->snapshot_begin(p->arg, name, &held);
    }
    nsd_registry_end_read(run);
    if (copy == NULL)
        return ns_error_set(err, NS_ENOMEM, "", "out of memory");
    ns_buf_t text = {0};
    int ok = ticket != NULL && nsd_checkpoint_stream_text(copy, &text) == 0;
    nsd_checkpoint_stream_free(copy);
    if (ticket != NULL)
        p->snapshot_end(p->arg, ticket, ok ? ns_buf_take(&text, NULL) : NULL);
    return 0;
}

int nsd_registry_snapshot(nsd_registry_t *reg, const char *name, ns_error_detail_t *err)
{
    int rc;
    /* Shared, with every layer locked: no step of the run is logged while
     * the snapshot and the held steps are handed over, so the log rows
     * before the snapshot are exactly those it contains. */
    nsd_run_t *run = nsd_registry_read_run(reg, name, &rc, err);
    if (run == NULL)
        return rc;
    if (reg->ctx.persist.snapshot_begin && reg->ctx.persist.snapshot_end)
        return snapshot_copied(reg, run, name, err);
    char *text = nsd_checkpoint_text(run);
    int ok = text != NULL;
    if (ok) {
        if (reg->ctx.persist.run_snapshot)
            reg->ctx.persist.run_snapshot(reg->ctx.persist.arg, name, text); /* takes it */
        else
            free(text);
        nsd_run_persist_ready(run);
    }
    nsd_registry_end_read(run);
    return ok ? 0 : ns_error_set(err, NS_ENOMEM, "", "out of memory");
}

/* The run 'name' locked exclusively and referenced, created with defaults
 * if missing. */
static nsd_run_t *lock_or_create(nsd_registry_t *reg, const char *name, int *rc,
                                 ns_error_detail_t *err)
{
    nsd_run_t *run = nsd_registry_lock_run(reg, name, 1, rc, err);
    if (run != NULL || *rc != NS_ENOTFOUND)
        return run;
    ns_run_config_t cfg;
    ns_run_config_defaults(&cfg);
    cfg.has_world_size = 0;
    *rc = nsd_registry_put_run(reg, name, &cfg, NULL, err);
    if (*rc != 0)
        return NULL;
    return nsd_registry_lock_run(reg, name, 1, rc, err);
}

int nsd_registry_replay_step(nsd_registry_t *reg, const char *name, const nsd_step_t *step,
                             ns_error_detail_t *err)
{
    int rc;
    nsd_run_t *run = lock_or_create(reg, name, &rc, err);
    if (run == NULL)
        return rc;
    rc = nsd_run_replay_step(run, step, err);
    nsd_registry_unlock_run(run);
    return rc;
}

int nsd_registry_replay_domain(nsd_registry_t *reg, const char *name, const char *domain,
                               ns_error_detail_t *err)
{
    if (!ns_name_valid(domain))
        return ns_error_set(err, NS_EINVAL, "domain", "invalid domain name");
    int rc;
    nsd_run_t *run = lock_or_create(reg, name, &rc, err);
    if (run == NULL)
        return rc;
    long d = nsd_run_add_domain(run, domain);
    nsd_registry_unlock_run(run);
    return d < 0 ? ns_error_set(err, (int)d, "", "out of memory") : 0;
}

size_t nsd_registry_replay_finish(nsd_registry_t *reg)
{
    size_t n, applied = 0;
    nsd_run_t **runs = nsd_registry_map_snapshot(reg, &n);
    for (size_t i = 0; i < n; i++) {
        nsd_run_lock(runs[i], 1);
        if (!runs[i]->deleted)
            applied += nsd_run_apply_held(runs[i]);
        nsd_run_unlock(runs[i]);
    }
    nsd_registry_runs_free(runs, n);
    return applied;
}
