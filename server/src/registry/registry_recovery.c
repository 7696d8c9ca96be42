/* registry_recovery.c - the registry's side of persistence: snapshots of a
 * run for the store, and recovery replaying the store's log (registry.h). */
#include "registry_internal.h"

#include <stdlib.h>

#include "checkpoint.h"

/* A snapshot whose state is copied under the run's lock and exported as
 * JSON after it is released (the store's hooks): ingest into the run waits
 * for a copy of its arrays, not for the JSON of them. */
static int snapshot_copied(nsd_registry_t *reg, nsd_run_t *run, const char *name,
                           ns_error_detail_t *err)
{
    nsd_checkpoint_copy_t *copy = nsd_checkpoint_copy(run);
    if (copy == NULL) {
        nsd_registry_unlock_run(run);
        return ns_error_set(err, NS_ENOMEM, "", "out of memory");
    }
    nsd_outbox_t box = {0};
    nsd_run_ready_steps(run, &box);
    void *ticket = reg->persist.snapshot_begin(reg->persist.arg, name, &box.steps);
    nsd_registry_unlock_run(run);
    for (nsd_qnode_t *n; (n = nsd_queue_pop(&box.steps)) != NULL;)
        nsd_step_free(nsd_container_of(n, nsd_step_t, link));
    json_t *state = ticket != NULL ? nsd_checkpoint_export_copy(copy) : NULL;
    nsd_checkpoint_copy_free(copy);
    if (ticket != NULL)
        reg->persist.snapshot_end(reg->persist.arg, ticket, state);
    json_decref(state);
    return 0;
}

int nsd_registry_snapshot(nsd_registry_t *reg, const char *name, ns_error_detail_t *err)
{
    int rc;
    nsd_run_t *run = nsd_registry_lock_run(reg, name, &rc, err);
    if (run == NULL)
        return rc;
    if (reg->persist.snapshot_begin && reg->persist.snapshot_end)
        return snapshot_copied(reg, run, name, err);
    nsd_outbox_t box = {0};
    json_t *state = nsd_checkpoint_export(run);
    if (state == NULL) {
        nsd_registry_unlock_run(run);
        return ns_error_set(err, NS_ENOMEM, "", "out of memory");
    }
    if (reg->persist.run_snapshot)
        reg->persist.run_snapshot(reg->persist.arg, name, state);
    json_decref(state);
    if (reg->persist.step_finalized)
        nsd_run_ready_steps(run, &box);
    nsd_registry_deliver_steps(reg, name, &box);
    nsd_registry_unlock_run(run);
    return 0;
}

/* The run 'name' locked and referenced, created with defaults if missing. */
static nsd_run_t *lock_or_create(nsd_registry_t *reg, const char *name, int *rc,
                                 ns_error_detail_t *err)
{
    nsd_run_t *run = nsd_registry_lock_run(reg, name, rc, err);
    if (run != NULL || *rc != NS_ENOTFOUND)
        return run;
    ns_run_config_t cfg;
    ns_run_config_defaults(&cfg);
    cfg.has_world_size = 0;
    *rc = nsd_registry_put_run(reg, name, &cfg, NULL, err);
    if (*rc != 0)
        return NULL;
    return nsd_registry_lock_run(reg, name, rc, err);
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
        pthread_mutex_lock(&runs[i]->lock);
        if (!runs[i]->deleted)
            applied += nsd_run_apply_held(runs[i]);
        pthread_mutex_unlock(&runs[i]->lock);
    }
    nsd_registry_runs_free(runs, n);
    return applied;
}
