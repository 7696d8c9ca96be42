/* registry_map.c - the registry's map of runs, locking a run (shared or
 * exclusively), and the delivery of what a locked operation collected
 * (see registry.c). */
#include "registry_internal.h"

#include <stdlib.h>
#include <string.h>

#include "base/names.h"
#include "gradsum.h"

static const char *run_name_at(const void *items, size_t i)
{
    return ((nsd_run_t *const *)items)[i]->name;
}

/* Position of 'name' in the map, or where it would go. Map lock held. */
size_t nsd_registry_map_pos(const nsd_registry_t *reg, const char *name, int *found)
{
    return nsd_name_pos(reg->runs, reg->n_runs, run_name_at, name, found);
}

/* Room for one more run (map write lock held). @return 0 or NS_ENOMEM. */
int nsd_registry_map_reserve(nsd_registry_t *reg)
{
    if (reg->n_runs == reg->cap_runs) {
        size_t cap = reg->cap_runs ? 2 * reg->cap_runs : 8;
        nsd_run_t **p = realloc(reg->runs, cap * sizeof(*p));
        if (p == NULL)
            return NS_ENOMEM;
        reg->runs = p;
        reg->cap_runs = cap;
    }
    return 0;
}

/* Insert a run (map write lock held). @return 0 or NS_ENOMEM. */
int nsd_registry_map_insert(nsd_registry_t *reg, nsd_run_t *run, size_t pos)
{
    if (nsd_registry_map_reserve(reg) != 0)
        return NS_ENOMEM;
    memmove(reg->runs + pos + 1, reg->runs + pos, (reg->n_runs - pos) * sizeof(*reg->runs));
    reg->runs[pos] = run;
    reg->n_runs++;
    return 0;
}

/* A referenced run, or NULL. */
nsd_run_t *nsd_registry_map_get(nsd_registry_t *reg, const char *name)
{
    nsd_run_t *run = NULL;
    int found;
    pthread_rwlock_rdlock(&reg->map_lock);
    size_t pos = nsd_registry_map_pos(reg, name, &found);
    if (found) {
        run = reg->runs[pos];
        nsd_run_ref(run);
    }
    pthread_rwlock_unlock(&reg->map_lock);
    return run;
}

void nsd_run_lock(nsd_run_t *run, int exclusive)
{
    if (exclusive)
        pthread_rwlock_wrlock(&run->lock);
    else
        pthread_rwlock_rdlock(&run->lock);
}

void nsd_run_unlock(nsd_run_t *run)
{
    pthread_rwlock_unlock(&run->lock);
}

/* The run 'name', referenced and locked; NULL with the code in *rc and err
 * (NS_EINVAL for an invalid name, NS_ENOTFOUND). */
nsd_run_t *nsd_registry_lock_run(nsd_registry_t *reg, const char *name, int exclusive, int *rc,
                                 ns_error_detail_t *err)
{
    *rc = 0;
    if (!ns_name_valid(name)) {
        *rc = ns_error_set(err, NS_EINVAL, "run", "invalid run name");
        return NULL;
    }
    nsd_run_t *run = nsd_registry_map_get(reg, name);
    if (run != NULL) {
        nsd_run_lock(run, exclusive);
        if (!run->deleted)
            return run;
        nsd_run_unlock(run);
        nsd_run_unref(run);
    }
    *rc = ns_error_set(err, NS_ENOTFOUND, "run", "no run '%s'", name);
    return NULL;
}

void nsd_registry_unlock_run(nsd_run_t *run)
{
    nsd_run_unlock(run);
    nsd_run_unref(run);
}

nsd_run_t *nsd_registry_read_run(nsd_registry_t *reg, const char *name, int *rc,
                                 ns_error_detail_t *err)
{
    nsd_run_t *run = nsd_registry_lock_run(reg, name, 0, rc, err);
    if (run != NULL)
        nsd_run_lock_layers(run);
    return run;
}

void nsd_registry_end_read(nsd_run_t *run)
{
    nsd_run_unlock_layers(run);
    nsd_registry_unlock_run(run);
}

/* Snapshot of every run, referenced. */
nsd_run_t **nsd_registry_map_snapshot(nsd_registry_t *reg, size_t *n)
{
    pthread_rwlock_rdlock(&reg->map_lock);
    nsd_run_t **runs = malloc((reg->n_runs ? reg->n_runs : 1) * sizeof(*runs));
    *n = 0;
    if (runs != NULL) {
        for (size_t i = 0; i < reg->n_runs; i++) {
            runs[i] = reg->runs[i];
            nsd_run_ref(runs[i]);
        }
        *n = reg->n_runs;
    }
    pthread_rwlock_unlock(&reg->map_lock);
    return runs;
}

nsd_run_t **nsd_registry_map_page(nsd_registry_t *reg, const char *after, size_t limit, size_t *n,
                                  int *more)
{
    pthread_rwlock_rdlock(&reg->map_lock);
    int found = 0;
    size_t from = after != NULL ? nsd_registry_map_pos(reg, after, &found) : 0;
    from += found ? 1 : 0;
    size_t count = reg->n_runs - from;
    *more = limit != 0 && count > limit;
    count = *more ? limit : count;
    nsd_run_t **runs = malloc((count ? count : 1) * sizeof(*runs));
    *n = 0;
    if (runs != NULL) {
        for (size_t i = 0; i < count; i++) {
            runs[i] = reg->runs[from + i];
            nsd_run_ref(runs[i]);
        }
        *n = count;
    }
    pthread_rwlock_unlock(&reg->map_lock);
    return runs;
}

void nsd_registry_runs_free(nsd_run_t **runs, size_t n)
{
    for (size_t i = 0; i < n; i++)
        nsd_run_unref(runs[i]);
    free(runs);
}

void nsd_waiter_free(nsd_waiter_t *w)
{
    pthread_mutex_destroy(&w->lock);
    free(w);
}

/* Deliver what was collected under a lock; no lock is held here. */
void nsd_registry_flush(nsd_registry_t *reg, nsd_outbox_t *box)
{
    for (nsd_qnode_t *n; (n = nsd_queue_pop(&box->fired)) != NULL;) {
        nsd_waiter_t *w = nsd_container_of(n, nsd_waiter_t, link);
        w->cb(w->arg, w->res);
        nsd_waiter_free(w);
    }
    for (nsd_qnode_t *n; (n = nsd_queue_pop(&box->grad_fired)) != NULL;) {
        nsd_grad_waiter_t *w = nsd_container_of(n, nsd_grad_waiter_t, link);
        nsd_grad_result_t *res = w->res;
        w->res = NULL; /* the callee owns it */
        w->cb(w->arg, res);
        nsd_grad_waiter_free(w);
    }
    if (box->wakeup && reg->wakeup)
        reg->wakeup(reg->wakeup_arg);
    box->wakeup = 0;
}
