/* registry_internal.h - what the registry's files share: the registry
 * object, its map of runs and the delivery of outboxes (see the DESIGN in
 * registry.c). Not for use outside the registry. */
#ifndef NSD_REGISTRY_INTERNAL_H
#define NSD_REGISTRY_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>

#include "registry.h"
#include "run.h"

struct nsd_registry_s {
    nsd_ctx_t ctx; /* with the persistence hooks, ctx.persist */
    pthread_rwlock_t map_lock;
    nsd_run_t **runs; /* ascending name */
    size_t n_runs, cap_runs;
    void (*wakeup)(void *arg);
    void *wakeup_arg;
    _Atomic int shutdown;
};

/*! nsd_registry_map_pos() : position of 'name' in the map, or where it
 *  would go. Map lock held. */
size_t nsd_registry_map_pos(const nsd_registry_t *reg, const char *name, int *found);

/*! nsd_registry_map_reserve() : room for one more run (map write lock
 *  held). @return 0 or NS_ENOMEM. */
int nsd_registry_map_reserve(nsd_registry_t *reg);

/*! nsd_registry_map_insert() : insert a run at 'pos' (map write lock held).
 *  @return 0 or NS_ENOMEM. */
int nsd_registry_map_insert(nsd_registry_t *reg, nsd_run_t *run, size_t pos);

/*! nsd_registry_map_get() : the run 'name', referenced, or NULL. */
nsd_run_t *nsd_registry_map_get(nsd_registry_t *reg, const char *name);

/*! nsd_run_lock() / nsd_run_unlock() : run->lock, exclusively or shared. */
void nsd_run_lock(nsd_run_t *run, int exclusive);
void nsd_run_unlock(nsd_run_t *run);

/*! nsd_registry_lock_run() : the run 'name', referenced and locked
 *  (exclusively or shared); NULL with the code in *rc and err (NS_EINVAL
 *  for an invalid name, NS_ENOTFOUND). */
nsd_run_t *nsd_registry_lock_run(nsd_registry_t *reg, const char *name, int exclusive, int *rc,
                                 ns_error_detail_t *err);

/*! nsd_registry_unlock_run() : unlock and drop the reference. */
void nsd_registry_unlock_run(nsd_run_t *run);

/*! nsd_registry_read_run() / nsd_registry_end_read() : the run 'name' for a
 *  read that is a consistent cut: its lock shared and every layer's lock
 *  (errors as nsd_registry_lock_run()); then all of them released. */
nsd_run_t *nsd_registry_read_run(nsd_registry_t *reg, const char *name, int *rc,
                                 ns_error_detail_t *err);
void nsd_registry_end_read(nsd_run_t *run);

/*! nsd_registry_map_snapshot() / nsd_registry_runs_free() : every run,
 *  referenced (*n of them; NULL when out of memory), and their release. */
nsd_run_t **nsd_registry_map_snapshot(nsd_registry_t *reg, size_t *n);

/*! nsd_registry_map_page() : the runs after 'after' (NULL: from the first)
 *  in name order, at most 'limit' (0: all), referenced; *more says whether
 *  others follow. Released with nsd_registry_runs_free(). */
nsd_run_t **nsd_registry_map_page(nsd_registry_t *reg, const char *after, size_t limit, size_t *n,
                                  int *more);
void nsd_registry_runs_free(nsd_run_t **runs, size_t n);

/*! nsd_waiter_free() : free a /sync waiter (not its result). */
void nsd_waiter_free(nsd_waiter_t *w);

/*! nsd_registry_flush() : deliver what was collected under a lock (no lock
 *  held): /sync and /grad callbacks, then the wakeup. */
void nsd_registry_flush(nsd_registry_t *reg, nsd_outbox_t *box);

#endif /* NSD_REGISTRY_INTERNAL_H */
