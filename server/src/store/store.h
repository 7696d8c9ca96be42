/* store.h - normstatd's persistent store: SQLite in --data-dir, one background
 * writer thread, recovery at start-up.
 *
 * What is durable, and when (the contract the HTTP side relies on):
 *  - PUT /v1/runs/{run}, DELETE, POST .../precise/reset and PUT
 *    .../checkpoint are answered after the change is committed: the handler
 *    calls nsd_store_after_commit() and answers from its callback.
 *  - POST .../sync is answered after the step it waited for is committed
 *    (the registry hands the step to the store before it calls the /sync
 *    callback; that callback goes through nsd_store_after_commit()).
 *  - POST .../batches is answered 202 at once. Its data becomes durable when
 *    (1) the step it belongs to finalizes (every worker of the step reported,
 *    or the step's sync_timeout_ms passed with on_timeout "partial"), and
 *    (2) the writer's next group commit after that succeeded: at most
 *    --commit-interval ms later, at once if a durable answer is waiting.
 *    Pending (not finalized) steps live in memory only.
 *  A commit is a SQLite transaction in WAL mode with synchronous=FULL: the
 *  WAL is fsync'ed before COMMIT returns, so a committed change survives a
 *  process kill and a power cut alike. With --no-fsync (synchronous=NORMAL)
 *  COMMIT returns once the WAL is written to the kernel: a committed change
 *  survives a kill -9 of normstatd (the kernel still writes it), a power cut
 *  may lose the last commits but leaves the store consistent (WAL frames are
 *  checksummed; fsync still happens at every checkpoint).
 *
 * Threads: nsd_store_open() and nsd_store_recover() run on main()'s thread
 * before nsd_store_start(); afterwards the writer thread alone uses the
 * SQLite connection. The persistence hooks (nsd_store_hooks()) are called by
 * the registry under a run's lock from any thread: they only copy and
 * enqueue. nsd_store_after_commit(), nsd_store_status() and
 * nsd_store_stats() may be called from any thread. */
#ifndef NSD_STORE_H
#define NSD_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "registry/registry_types.h"

/* The database file inside --data-dir. */
#define NSD_STORE_FILE "normstat.db"
/* The WAL file next to it (normstat.db-wal) starts over once it holds this
 * much and its checkpoint has copied it: on disk it stays about this size. */
#define NSD_STORE_WAL_BOUND_BYTES (64u << 20)
/* PRAGMA user_version of the schema this build writes; a later release
 * migrates from it. A file with a higher version is refused. Version 2
 * added each row's checksum; version 3, STEP bodies with float32-exact
 * arrays in 4 bytes (store_codec.h). Older stores are migrated when opened. */
#define NSD_STORE_SCHEMA_VERSION 3
/* PRAGMA application_id: "NSTD". A SQLite file with another id and tables
 * of its own is foreign and refused. */
#define NSD_STORE_APPLICATION_ID 0x4E535444

typedef struct nsd_store_s nsd_store_t;

typedef struct nsd_store_config_s {
    uint64_t commit_interval_ms;   /* group commit window (0 = commit at once) */
    uint64_t snapshot_interval_ms; /* snapshot runs with log rows this often (0 = never) */
    uint64_t retry_ms;             /* after a failed commit (0 = 500) */
    int skip_damaged_runs;         /* set runs with damaged rows aside instead of refusing */
    int no_fsync;                  /* synchronous=NORMAL: commits survive a kill, not a power cut */
} nsd_store_config_t;

/* Why a data directory cannot be used: the path at fault and one line.
 * Caller-owned, first error wins, may be NULL (as ns_error_detail_t, with
 * room for a whole path). */
typedef struct nsd_store_error_s {
    char path[4352];
    char reason[512];
} nsd_store_error_t;

/* What recovery loaded. */
typedef struct nsd_store_recovery_s {
    uint64_t runs;      /* runs held afterwards */
    uint64_t snapshots; /* snapshots loaded */
    uint64_t rows;      /* log rows replayed */
    uint64_t steps;     /* of which finalized steps */
    uint64_t ms;        /* wall time */
} nsd_store_recovery_t;

/* Counters for /metrics (monotonic since start unless noted). */
typedef struct nsd_store_stats_s {
    uint64_t commits, commit_failures, rows, snapshots;
    uint64_t bytes;                 /* log row bodies and snapshot texts committed */
    uint64_t commit_seconds_sum_us; /* total commit latency, microseconds */
    uint64_t commit_last_us;        /* latency of the last commit (gauge) */
    uint64_t queued;                /* jobs waiting for the writer (gauge) */
    int64_t last_snapshot_age_ms;   /* -1 if none since start (gauge) */
    int failing;                    /* the last commit failed (gauge) */
} nsd_store_stats_t;

/* Completion of nsd_store_after_commit(): status 0 (committed), NS_EIO (the
 * commit failed) or NS_ESHUTDOWN (the writer stopped before committing it). */
typedef void (*nsd_store_cb)(void *arg, int status);

/*! nsd_store_open() :
 *  Open or create 'dir'/normstat.db: create 'dir' if missing (its parent
 *  must exist), check it is a writable directory, create the file whole if
 *  it does not exist (an existing file, even of 0 bytes, is never taken for
 *  a new store), open it, check it is a SQLite database of ours
 *  (application_id), not of a newer schema, passes PRAGMA quick_check, set
 *  WAL and synchronous=FULL, migrate an older schema, verify the checksum of
 *  every row (cfg->skip_damaged_runs: move the runs with damaged rows aside,
 *  logged, instead of refusing), and write once to prove it is writable.
 *  @return 0 and *dst; NS_EIO with 'err' filled (nothing written to a file
 *  that is not ours). */
int nsd_store_open(nsd_store_t **dst, const char *dir, const nsd_store_config_t *cfg,
                   nsd_store_error_t *err);

/*! nsd_store_recover() :
 *  Load every snapshot into 'reg' (checkpoint import), replay the log in
 *  order (nsd_registry_put_run, _replay_domain, _replay_step,
 *  _precise_reset), checking each row's checksum again, then
 *  nsd_registry_replay_finish(). Install no hooks on
 *  'reg' before this. @return 0; NS_EIO with 'err' (a row that cannot be
 *  decoded or applied: the store is corrupt). */
int nsd_store_recover(nsd_store_t *s, nsd_registry_t *reg, nsd_store_recovery_t *out,
                      nsd_store_error_t *err);

/*! nsd_store_hooks() : the registry persistence hooks that feed this store. */
void nsd_store_hooks(nsd_store_t *s, nsd_persist_t *dst);

/*! nsd_store_start() :
 *  Start the writer thread; it also takes snapshots of 'reg' every
 *  snapshot_interval_ms. @return 0 or NS_ENOMEM. */
int nsd_store_start(nsd_store_t *s, nsd_registry_t *reg);

/*! nsd_store_after_commit() :
 *  cb(arg, status) is called exactly once, when everything enqueued before
 *  this call is committed (0), or the commit failed (NS_EIO), or the writer
 *  stopped first (NS_ESHUTDOWN). It may be called before this function
 *  returns, on this thread; otherwise on the writer thread, with no lock
 *  held. It must not block. A waiting callback makes the writer commit at
 *  once instead of waiting for the group commit window. */
void nsd_store_after_commit(nsd_store_t *s, nsd_store_cb cb, void *arg);

/*! nsd_store_status() : 0, or NS_EIO while commits fail (new writes are
 *  refused with 503 storage_error meanwhile). Any thread. */
int nsd_store_status(nsd_store_t *s);

/*! nsd_store_stats() : counters for /metrics. Any thread. */
void nsd_store_stats(nsd_store_t *s, nsd_store_stats_t *dst);

/*! nsd_store_stop() :
 *  Commit everything enqueued (retrying a failing commit until 'timeout_ms'
 *  passed), call every waiting callback, and join the writer. A commit in
 *  progress always completes: the thread is never cancelled. Idempotent;
 *  a store never started is just marked stopped. @return 0, or NS_EIO if
 *  some changes could not be committed (logged). */
int nsd_store_stop(nsd_store_t *s, uint64_t timeout_ms);

/*! nsd_store_free() : close the database; after nsd_store_stop(). Accepts NULL. */
void nsd_store_free(nsd_store_t *s);

/*! nsd_store_fail_commits() :
 *  Testing: the next 'n' commits fail as a full disk would (nothing
 *  written, SQLITE_FULL's reason). */
void nsd_store_fail_commits(nsd_store_t *s, unsigned n);

#endif /* NSD_STORE_H */
