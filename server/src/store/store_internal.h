/* store_internal.h - what the store's files share: its jobs, commit
 * waiters and the store object (see the DESIGN in store_writer.c). Not for
 * use outside the store. */
#ifndef NSD_STORE_INTERNAL_H
#define NSD_STORE_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include <sqlite3.h>

#include "base/queue.h"
#include "base/size_limits.h"
#include "store.h"

#define DEFAULT_RETRY_MS 500u
/* Pages of a new store: a ResNet-50 step's rows (about 0.4 MB) are a few
 * WAL frames and write calls instead of a hundred. */
#define NSD_STORE_PAGE_SIZE 65536
#define BUSY_TIMEOUT_MS     5000

/* The log table's kind column (values are on disk: never renumber). */
enum { KIND_PUT = 1, KIND_DOMAIN = 2, KIND_STEP = 3, KIND_RESET = 4 };
/* What a job asks of the writer: a log row, a run's removal, a snapshot. */
enum { JOB_LOG = 1, JOB_DELETE = 2, JOB_SNAPSHOT = 3 };

typedef struct job_s {
    nsd_qnode_t link; /* in the queue, the retry batch or a batch being written */
    uint64_t seq;
    int type; /* JOB_* */
    int kind; /* KIND_* of a JOB_LOG */
    char run[NS_NAME_MAX + 1];
    char layer[NS_NAME_MAX + 1]; /* STEP: the layer, "" otherwise */
    int64_t step;                /* STEP: the step, -1 otherwise */
    unsigned char *body;         /* LOG: the row's body, NULL = SQL NULL */
    size_t body_len;
    /* SNAPSHOT: the state as checkpoint JSON text, made by the registry.
     * Of a pass (store_snapshot.c), made off every lock, also the seq it
     * covers (log rows of the run below it are in it; seqs start at 1) and
     * the finalized steps still held back, as LOG jobs with seqs reserved
     * from 'covers' on, written in the same transaction. Of an import, it
     * covers its own seq (covers 0). */
    char *text;
    size_t text_len; /* strlen(text), counted once outside the store's lock */
    uint64_t covers;
    nsd_queue_t rows;
} job_t;

/* A run set aside at open (--skip-damaged-runs): its rows moved to the
 * damaged_* tables. */
typedef struct aside_s {
    char run[NS_NAME_MAX + 1];
    uint64_t rows; /* log rows moved */
    int snapshot;  /* its snapshot moved too */
} aside_t;

/* A run whose log rows below 'below' a committed snapshot covers: they are
 * deleted a chunk at a time (store_purge.c). */
typedef struct purge_s {
    char run[NS_NAME_MAX + 1];
    uint64_t below;
} purge_t;

typedef struct waiter_s {
    nsd_qnode_t link;
    uint64_t seq;
    nsd_store_cb cb;
    void *arg;
} waiter_t;

struct nsd_store_s {
    sqlite3 *db;
    int dir_fd; /* holds flock(LOCK_EX) on --data-dir: one daemon per directory */
    char path[4352];
    nsd_store_config_t cfg;
    int exists;      /* open: the database file was there before */
    int64_t version; /* open: the schema version found */
    aside_t *aside;  /* runs set aside at open, logged once committed */
    size_t n_aside;
    nsd_registry_t *reg;

    pthread_mutex_t lock;
    pthread_cond_t cond;
    pthread_t thread;
    int started, stopping, exited;
    uint64_t stop_deadline_ms;

    /* under lock */
    nsd_queue_t jobs; /* job_t queued, in seq order */
    uint64_t queued;
    uint64_t first_enqueued_ms; /* when the oldest queued job arrived */
    int backlog;                /* the last commit left queued jobs: they are due */
    uint64_t next_seq;          /* the seq the next job gets */
    uint64_t enqueued;          /* the last seq handed out */
    uint64_t committed;         /* the last seq committed */
    nsd_queue_t retry;          /* job_t of a failed batch, retried first */
    uint64_t retry_at_ms;
    nsd_queue_t waiters;      /* waiter_t, ascending seq */
    int snapshot_all;         /* a hook lost a change: snapshot every run */
    uint64_t lost;            /* changes lost that way, logged by the writer */
    unsigned fail_commits;    /* testing */
    uint64_t log_bytes;       /* log body bytes committed since the last snapshot pass */
    uint64_t text_bytes;      /* snapshot text queued by the pass under way */
    uint64_t pass_text_bytes; /* ... by the last pass (store_snapshot.c sizes passes by it) */
    /* The snapshot being encoded (one at a time): a DELETE or an import of
     * its run queued meanwhile voids it, so it never overwrites them. */
    job_t *ticket;
    int ticket_void;

    /* the snapshot thread (store_snapshot.c) */
    pthread_cond_t snap_cond;
    pthread_t snap_thread;
    int snap_started, snap_stopping;
    sqlite3 *snap_db; /* its own connection, for reading which runs have log rows */

    /* the checkpoint thread (store_checkpoint.c) */
    pthread_cond_t ckpt_cond;
    pthread_t ckpt_thread;
    int ckpt_started, ckpt_stopping, ckpt_due;
    int ckpt_running;   /* a checkpoint is copying (the thread's or the writer's) */
    uint64_t wal_bytes; /* the WAL's size after the last commit (under lock) */
    sqlite3 *ckpt_db;
    uint64_t page_size;

    _Atomic int failing;
    _Atomic uint64_t n_commits, n_failures, n_rows, n_snapshots, commit_us_sum, commit_last_us;
    _Atomic uint64_t n_bytes;
    _Atomic uint64_t last_snapshot_ms; /* 0 = none */

    /* writer thread only (purges: noted under lock too) */
    sqlite3_stmt *ins_log, *del_log_run, *del_log_chunk, *ins_snap, *del_snap;
    purge_t *purges;
    size_t n_purges, cap_purges;
};

/*! nsd_store_fail() : fill 'err' (may be NULL) with 'path' and the reason.
 *  @return NS_EIO. */
int nsd_store_fail(nsd_store_error_t *err, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/*! nsd_store_exec() : run SQL without results; @return an SQLite code. */
int nsd_store_exec(sqlite3 *db, const char *sql);

/*! nsd_store_job_new() : a job of 'type' for 'run'; NULL when out of memory. */
job_t *nsd_store_job_new(int type, const char *run);

/*! nsd_store_job_free() : accepts NULL. */
void nsd_store_job_free(job_t *j);

/*! nsd_store_jobs_free() : every job of 'q' ('q' is left empty). */
void nsd_store_jobs_free(nsd_queue_t *q);

/* Row checksums (store_check.c has the format). The tag of each table's
 * sums, and what nsd_store_row_check() finds. */
enum { NSD_SUM_LOG = 'L', NSD_SUM_SNAPSHOT = 'S' };
enum { NSD_ROW_OK = 0, NSD_ROW_DAMAGED = 1, NSD_ROW_UNNAMED = 2 };

/*! nsd_store_sum_start(), _int(), _bytes(), _null(), _join() :
 *  A row's checksum built column by column: start with the table's tag, add
 *  each column in table order ('type' SQLITE_TEXT or SQLITE_BLOB for
 *  bytes), then join the run name's CRC in the high word. */
uint32_t nsd_store_sum_start(int table);
uint32_t nsd_store_sum_int(uint32_t c, int64_t v);
uint32_t nsd_store_sum_bytes(uint32_t c, int type, const void *src, size_t src_len);
uint32_t nsd_store_sum_null(uint32_t c);
uint64_t nsd_store_sum_join(const char *run, size_t run_len, uint32_t row);

/*! nsd_store_row_check() :
 *  Check the row 'st' holds: the columns of 'table' from 'first_col' on,
 *  then its crc. @return NSD_ROW_OK, or NSD_ROW_DAMAGED (the run name is
 *  intact) or NSD_ROW_UNNAMED, with one line in 'why' naming the row. */
int nsd_store_row_check(sqlite3_stmt *st, int table, int first_col, char *why, size_t why_cap);

/*! nsd_store_add_functions() : the SQL functions ns_log_sum() and
 *  ns_snapshot_sum() on 'db' (the migration uses them). @return an SQLite code. */
int nsd_store_add_functions(sqlite3 *db);

/*! nsd_store_verify() :
 *  Check every snapshot and log row. Damage refuses (NS_EIO, 'err' naming
 *  the run and row) unless cfg.skip_damaged_runs and every damaged row names
 *  its run: then those runs are noted in s->aside. Writes nothing. */
int nsd_store_verify(nsd_store_t *s, nsd_store_error_t *err);

/*! nsd_store_set_aside() : move the rows of the runs noted by
 *  nsd_store_verify() to damaged_log/damaged_snapshot; in the caller's
 *  transaction. @return an SQLite code. */
int nsd_store_set_aside(nsd_store_t *s);

/*! nsd_store_log_set_aside() : log each run set aside (after the commit). */
void nsd_store_log_set_aside(const nsd_store_t *s);

/*! nsd_store_enqueue_locked() : give 'j' the next seq and queue it (lock held). */
void nsd_store_enqueue_locked(nsd_store_t *s, job_t *j);

/*! nsd_store_snapshots_start() / _stop() : the snapshot thread, which runs
 *  a pass every snapshot_interval_ms, once enough log was committed, or
 *  when a hook lost a change (store_snapshot.c). */
int nsd_store_snapshots_start(nsd_store_t *s);
void nsd_store_snapshots_stop(nsd_store_t *s);

/*! nsd_store_pass_log_bytes() : the log bytes committed since the last
 *  pass that make the next one due (lock held). */
uint64_t nsd_store_pass_log_bytes(const nsd_store_t *s);

/*! nsd_store_checkpoints_start() / _stop() : WAL checkpoints on a thread
 *  of their own instead of inside the writer's commits (store_checkpoint.c);
 *  start before the writer runs, stop after it is joined. */
void nsd_store_checkpoints_start(nsd_store_t *s);
void nsd_store_checkpoints_stop(nsd_store_t *s);

/*! nsd_store_wal_bound() : called by the writer before a transaction
 *  (lock held, released meanwhile): once the WAL holds
 *  NSD_STORE_WAL_BOUND_BYTES, wait for the checkpoint thread's pass and copy
 *  what is left, so that the transaction starts the WAL over. */
void nsd_store_wal_bound(nsd_store_t *s);

/*! nsd_store_purge_note() : the snapshots of a committed batch: their runs'
 *  older rows may go (lock held). */
void nsd_store_purge_note(nsd_store_t *s, const nsd_queue_t *committed);

/*! nsd_store_purge_seed() : note the runs whose snapshot still has older
 *  rows (before the writer starts). @return an SQLite code. */
int nsd_store_purge_seed(nsd_store_t *s);

/*! nsd_store_purge_pending() : whether rows wait to be deleted (lock held). */
int nsd_store_purge_pending(const nsd_store_t *s);

/*! nsd_store_purge_some() : delete one chunk of them in a transaction of its
 *  own (lock held on entry and return, released meanwhile). */
void nsd_store_purge_some(nsd_store_t *s);

/*! nsd_store_log_lost() : log changes a hook lost to out of memory (no lock held). */
void nsd_store_log_lost(uint64_t lost);

/* The job / waiter of a queue node. */
#define JOB_OF(node)    nsd_container_of(node, job_t, link)
#define WAITER_OF(node) nsd_container_of(node, waiter_t, link)

/*! nsd_store_take_waiters() : detach the waiters to call: all of them
 *  (everything = 1) or those whose seq is committed. Lock held. */
nsd_queue_t nsd_store_take_waiters(nsd_store_t *s, int everything);

/*! nsd_store_call_waiters() : call detached waiters (no lock held):
 *  committed ones get 0, others 'status'. */
void nsd_store_call_waiters(nsd_queue_t *waiters, uint64_t committed, int status);

#endif /* NSD_STORE_INTERNAL_H */
