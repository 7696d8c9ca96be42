/* store_writer.c - the writer thread of normstatd's SQLite store.
 *
 * DESIGN
 *  Files: --data-dir/normstat.db, WAL mode, synchronous=FULL (see store.h),
 *  PRAGMA application_id = NSD_STORE_APPLICATION_ID, PRAGMA user_version =
 *  NSD_STORE_SCHEMA_VERSION. Tables:
 *    log(seq INTEGER PRIMARY KEY, run, kind, layer, step, body BLOB, crc)
 *        every change of a run since its snapshot, in the order made;
 *    snapshot(run PRIMARY KEY, seq, taken_ms, body, crc)
 *        a run's whole state (checkpoint JSON, doubles with 17 significant
 *        digits: exact) as of 'seq': log rows of the run below 'seq' are
 *        skipped by recovery and deleted after its commit, a chunk per
 *        transaction while no answer waits (store_purge.c); later ones are
 *        replayed on top of it;
 *    meta(key PRIMARY KEY, value)  bookkeeping ("created", "opened");
 *    damaged_log, damaged_snapshot  runs set aside by --skip-damaged-runs.
 *  Every log and snapshot row carries crc, its checksum (store_check.c),
 *  computed here as the row is written; nsd_store_open() checks every row
 *  before anything is loaded or written, recovery again as it applies it.
 *  Log kinds: PUT (config JSON), DOMAIN (a report added a domain), STEP (a
 *  finalized step: counts and per-domain and pooled mean/var as raw
 *  little-endian IEEE doubles, so replay feeds EMA/PreciseBN the very bits
 *  the live path used), RESET (PreciseBN, domain or all). DELETE removes the
 *  run's rows and snapshot; imports and periodic snapshots write a snapshot.
 *
 *  Thread: one writer thread owns the SQLite connection after start-up.
 *  Jobs, and who enqueues them: the registry's persistence hooks, called
 *  under the run's lock on request threads (PUT, DELETE, reports, resets,
 *  imports), on the coordinator (timeouts) and on the snapshot thread.
 *  Each hook copies what it needs into a job, takes the next sequence number
 *  and appends it to one queue under the store's mutex: the queue order is
 *  the order of the changes of every run, and so is 'seq' in the log.
 *  Ordering: the writer takes the whole queue and writes it, in order, in one
 *  transaction (group commit). It waits up to --commit-interval ms after the
 *  oldest queued job before committing, unless a durable answer is waiting
 *  (nsd_store_after_commit()), the store is stopping, or a retry is due.
 *  Completion: after COMMIT returns, 'committed' = the last seq written;
 *  waiters registered with a seq <= committed are called (outside the mutex)
 *  with 0. Snapshot passes run on a thread of their own (store_snapshot.c):
 *  a run's state is copied under its lock, its JSON made with no lock held,
 *  and the job queued with the seq it covers, reserved at the copy; the
 *  writer only writes it, so a pass never holds up a commit.
 *  Failure (disk full, I/O error): the transaction is rolled back, so the
 *  committed data is untouched; the batch is KEPT, in order, in front of
 *  whatever is queued later, and retried every retry_ms; every waiting
 *  callback gets NS_EIO at once, and nsd_store_status() reports NS_EIO so
 *  the HTTP side refuses new writes with 503 storage_error. Changes already
 *  applied in memory (a step that finalized) are thus never lost from the
 *  log, nor logged out of order: memory and log agree again as soon as a
 *  retry commits, and service resumes. A /sync answered 503 meanwhile had its
 *  step finalized in memory: it becomes durable with the retry.
 *  Locks: the store's mutex is the innermost lock of the daemon. Hooks take
 *  it under a run's lock (and sometimes the registry's map lock); the writer
 *  releases it before any SQLite call and before calling waiters, the
 *  snapshot thread before asking the registry for snapshots, so no run lock
 *  ever waits on SQLite. Nothing is logged under it.
 *  Out of memory in a hook cannot be reported to the registry: the change
 *  is not logged, and every run is snapshotted at the next pass, which
 *  makes the log whole again (the snapshot thread logs store_enqueue_failed).
 *  One daemon per directory: nsd_store_open() takes flock(LOCK_EX) on
 *  --data-dir for the store's lifetime; a second normstatd is refused.
 *  Stop: nsd_store_stop() lets the writer commit what is queued (retrying
 *  until a deadline if failing), calls the remaining callbacks and joins. A
 *  commit in progress always finishes; a kill -9 at any moment leaves the
 *  last committed transaction (SQLite's atomic commit). */
#define _GNU_SOURCE /* pthread_setname_np: the thread shows in top and /proc */
#include "store_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/clock.h"
#include "base/log.h"
#include "registry/registry.h"

/* A group commit takes the queued jobs up to this many bytes (at least one
 * job); what is left is committed right after. */
#define COMMIT_BYTES (16u << 20)

static int prepare_all(nsd_store_t *s)
{
    int rc = sqlite3_prepare_v2(s->db,
                                "INSERT INTO log(seq, run, kind, layer, step, body, crc) "
                                "VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                                -1, &s->ins_log, NULL);
    rc =
        rc ? rc
           : sqlite3_prepare_v2(s->db, "DELETE FROM log WHERE run = ?1", -1, &s->del_log_run, NULL);
    rc = rc ? rc
            : sqlite3_prepare_v2(s->db,
                                 "DELETE FROM log WHERE seq IN (SELECT seq FROM log "
                                 "WHERE run = ?1 AND seq < ?2 LIMIT ?3)",
                                 -1, &s->del_log_chunk, NULL);
    rc = rc ? rc
            : sqlite3_prepare_v2(s->db,
                                 "INSERT OR REPLACE INTO snapshot(run, seq, taken_ms, body, crc) "
                                 "VALUES(?1, ?2, ?3, ?4, ?5)",
                                 -1, &s->ins_snap, NULL);
    rc = rc ? rc
            : sqlite3_prepare_v2(s->db, "DELETE FROM snapshot WHERE run = ?1", -1, &s->del_snap,
                                 NULL);
    return rc;
}

/* Run a prepared statement once. */
static int run_stmt(sqlite3_stmt *st)
{
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

/* The checksum of a log row as write_job() binds it (store_check.c). */
static int64_t log_sum(const job_t *j)
{
    size_t run_len = strlen(j->run);
    uint32_t c = nsd_store_sum_start(NSD_SUM_LOG);
    c = nsd_store_sum_int(c, (int64_t)j->seq);
    c = nsd_store_sum_bytes(c, SQLITE_TEXT, j->run, run_len);
    c = nsd_store_sum_int(c, j->kind);
    c = j->layer[0] != '\0' ? nsd_store_sum_bytes(c, SQLITE_TEXT, j->layer, strlen(j->layer))
                            : nsd_store_sum_null(c);
    c = j->step >= 0 ? nsd_store_sum_int(c, j->step) : nsd_store_sum_null(c);
    c = j->body != NULL ? nsd_store_sum_bytes(c, SQLITE_BLOB, j->body, j->body_len)
                        : nsd_store_sum_null(c);
    return (int64_t)nsd_store_sum_join(j->run, run_len, c);
}

/* The checksum of a snapshot row. */
static int64_t snapshot_sum(const char *run, uint64_t seq, int64_t taken_ms, const char *body)
{
    size_t run_len = strlen(run);
    uint32_t c = nsd_store_sum_start(NSD_SUM_SNAPSHOT);
    c = nsd_store_sum_bytes(c, SQLITE_TEXT, run, run_len);
    c = nsd_store_sum_int(c, (int64_t)seq);
    c = nsd_store_sum_int(c, taken_ms);
    c = nsd_store_sum_bytes(c, SQLITE_TEXT, body, strlen(body));
    return (int64_t)nsd_store_sum_join(run, run_len, c);
}

static int write_job(nsd_store_t *s, const job_t *j, uint64_t *rows)
{
    int rc;
    switch (j->type) {
    case JOB_LOG:
        sqlite3_bind_int64(s->ins_log, 1, (sqlite3_int64)j->seq);
        sqlite3_bind_text(s->ins_log, 2, j->run, -1, SQLITE_STATIC);
        sqlite3_bind_int(s->ins_log, 3, j->kind);
        if (j->layer[0] != '\0')
            sqlite3_bind_text(s->ins_log, 4, j->layer, -1, SQLITE_STATIC);
        if (j->step >= 0)
            sqlite3_bind_int64(s->ins_log, 5, j->step);
        if (j->body != NULL)
            sqlite3_bind_blob(s->ins_log, 6, j->body, (int)j->body_len, SQLITE_STATIC);
        sqlite3_bind_int64(s->ins_log, 7, log_sum(j));
        rc = run_stmt(s->ins_log);
        *rows += rc == SQLITE_OK;
        return rc;
    case JOB_DELETE:
        sqlite3_bind_text(s->del_log_run, 1, j->run, -1, SQLITE_STATIC);
        rc = run_stmt(s->del_log_run);
        sqlite3_bind_text(s->del_snap, 1, j->run, -1, SQLITE_STATIC);
        return rc ? rc : run_stmt(s->del_snap);
    case JOB_SNAPSHOT: {
        const char *text = j->text;
        uint64_t seq = j->covers != 0 ? j->covers : j->seq;
        int64_t taken_ms = (int64_t)nsd_wall_ms();
        sqlite3_bind_text(s->ins_snap, 1, j->run, -1, SQLITE_STATIC);
        sqlite3_bind_int64(s->ins_snap, 2, (sqlite3_int64)seq);
        sqlite3_bind_int64(s->ins_snap, 3, taken_ms);
        sqlite3_bind_text(s->ins_snap, 4, text, -1, SQLITE_STATIC);
        sqlite3_bind_int64(s->ins_snap, 5, snapshot_sum(j->run, seq, taken_ms, text));
        rc = run_stmt(s->ins_snap);
        /* The older rows go later (store_purge.c); the steps still held
         * back are logged again after the snapshot. */
        for (const nsd_qnode_t *n = j->rows.head; rc == SQLITE_OK && n != NULL; n = n->next)
            rc = write_job(s, JOB_OF(n), rows);
        return rc;
    }
    }
    return SQLITE_MISUSE;
}

/* Write a batch in one transaction. @return SQLITE_OK, or the error with
 * its message in why (rolled back). */
static int write_batch(nsd_store_t *s, const nsd_queue_t *batch, int inject, uint64_t *rows,
                       char *why, size_t why_cap)
{
    *rows = 0;
    if (inject) {
        snprintf(why, why_cap, "%s (injected)", sqlite3_errstr(SQLITE_FULL));
        return SQLITE_FULL;
    }
    int rc = nsd_store_exec(s->db, "BEGIN IMMEDIATE");
    for (const nsd_qnode_t *n = batch->head; rc == SQLITE_OK && n != NULL; n = n->next)
        rc = write_job(s, JOB_OF(n), rows);
    if (rc == SQLITE_OK)
        rc = nsd_store_exec(s->db, "COMMIT");
    if (rc != SQLITE_OK) {
        snprintf(why, why_cap, "%s", sqlite3_errmsg(s->db));
        if (!sqlite3_get_autocommit(s->db))
            nsd_store_exec(s->db, "ROLLBACK");
    }
    return rc;
}

/* Wait for a signal, or until 'until_ms' (UINT64_MAX: no limit). Lock held. */
static void wait_until(nsd_store_t *s, uint64_t now, uint64_t until_ms)
{
    if (until_ms == UINT64_MAX) {
        pthread_cond_wait(&s->cond, &s->lock);
        return;
    }
    struct timespec ts = nsd_deadline_in(until_ms > now ? until_ms - now : 0);
    pthread_cond_timedwait(&s->cond, &s->lock, &ts);
}

/* When the queued jobs are due: at once when a failed batch waits, a
 * durable answer waits, the store is stopping, there is no commit window or
 * the last commit left jobs behind (COMMIT_BYTES); otherwise a window after
 * the oldest queued job. Lock held. */
static uint64_t commit_due_at(const nsd_store_t *s)
{
    if (!nsd_queue_empty(&s->retry) || !nsd_queue_empty(&s->waiters) || s->stopping ||
        s->cfg.commit_interval_ms == 0 || s->backlog)
        return 0;
    return s->first_enqueued_ms + s->cfg.commit_interval_ms;
}

/* The bytes a job writes: its body, its snapshot text, its rows. */
static size_t job_bytes(const job_t *j)
{
    size_t n = j->body_len + j->text_len;
    for (const nsd_qnode_t *r = j->rows.head; r != NULL; r = r->next)
        n += JOB_OF(r)->body_len;
    return n;
}

/* A batch was committed: count it, free it, settle the waiters it covers.
 * Called with the lock held; returns without it. */
static void batch_committed(nsd_store_t *s, nsd_queue_t *batch, uint64_t rows, uint64_t us)
{
    int was_failing = atomic_load(&s->failing);
    if (JOB_OF(batch->tail)->seq > s->committed) /* deferred snapshots come later */
        s->committed = JOB_OF(batch->tail)->seq;
    atomic_store(&s->failing, 0);
    atomic_fetch_add(&s->n_commits, 1);
    atomic_fetch_add(&s->n_rows, rows);
    atomic_fetch_add(&s->commit_us_sum, us);
    atomic_store(&s->commit_last_us, us);
    uint64_t snaps = 0, bytes = 0;
    for (const nsd_qnode_t *n = batch->head; n != NULL; n = n->next) {
        const job_t *j = JOB_OF(n);
        snaps += j->type == JOB_SNAPSHOT;
        s->log_bytes += j->body_len;
        bytes += job_bytes(j);
    }
    atomic_fetch_add(&s->n_bytes, bytes);
    nsd_store_purge_note(s, batch);
    if (s->log_bytes >= nsd_store_pass_log_bytes(s))
        pthread_cond_signal(&s->snap_cond);
    if (snaps > 0) {
        atomic_fetch_add(&s->n_snapshots, snaps);
        atomic_store(&s->last_snapshot_ms, nsd_now_ms());
    }
    nsd_queue_t done = nsd_store_take_waiters(s, 0);
    uint64_t committed = s->committed;
    pthread_mutex_unlock(&s->lock);
    nsd_store_jobs_free(batch);
    char q[600];
    if (was_failing)
        nsd_log(NSD_LOG_INFO, "store_write_resumed", "path=%s",
                nsd_log_quote(q, sizeof(q), s->path));
    nsd_store_call_waiters(&done, committed, 0);
}

/* A batch failed: keep it, in order, ahead of later jobs and retry later;
 * every waiter learns now. Called with the lock held; returns without it. */
static void batch_failed(nsd_store_t *s, nsd_queue_t *batch, const char *why)
{
    s->retry = nsd_queue_take(batch);
    s->retry_at_ms = nsd_now_ms() + s->cfg.retry_ms;
    atomic_store(&s->failing, 1);
    atomic_fetch_add(&s->n_failures, 1);
    nsd_queue_t done = nsd_store_take_waiters(s, 1);
    uint64_t committed = s->committed;
    pthread_mutex_unlock(&s->lock);
    char qp[600], q[600];
    nsd_log(NSD_LOG_ERROR, "store_write_failed", "path=%s reason=%s retry_ms=%llu",
            nsd_log_quote(qp, sizeof(qp), s->path), nsd_log_quote(q, sizeof(q), why),
            (unsigned long long)s->cfg.retry_ms);
    nsd_store_call_waiters(&done, committed, NS_EIO);
}

/* A pass's snapshot that may be written after the jobs queued behind it:
 * none of them deletes or replaces its run. */
static int may_defer(const nsd_qnode_t *n)
{
    const job_t *j = JOB_OF(n);
    if (j->type != JOB_SNAPSHOT || j->text == NULL)
        return 0;
    for (n = n->next; n != NULL; n = n->next)
        if ((JOB_OF(n)->type == JOB_DELETE || JOB_OF(n)->type == JOB_SNAPSHOT) &&
            strcmp(JOB_OF(n)->run, j->run) == 0)
            return 0;
    return 1;
}

/* Move the pass snapshots that may wait out of 'batch', in order. What
 * they hold is in the log already, so the changes queued with them, and
 * the answers waiting for those, need not wait for their megabytes. */
static nsd_queue_t take_deferred(nsd_queue_t *batch)
{
    nsd_queue_t keep = {0}, later = {0};
    for (nsd_qnode_t *n; (n = batch->head) != NULL;) {
        int defer = may_defer(n);
        nsd_queue_push(defer ? &later : &keep, nsd_queue_pop(batch));
    }
    *batch = keep;
    return later;
}

/* Write 'batch' in one transaction and settle it. Lock held on entry and
 * on return, released while writing. @return 0 if it committed. */
static int commit_one(nsd_store_t *s, nsd_queue_t *batch)
{
    nsd_store_wal_bound(s);
    int inject = s->fail_commits > 0;
    if (inject)
        s->fail_commits--;
    pthread_mutex_unlock(&s->lock);
    char why[512];
    uint64_t t0 = nsd_now_us(), rows = 0;
    int rc = write_batch(s, batch, inject, &rows, why, sizeof(why));
    uint64_t us = nsd_now_us() - t0;
    pthread_mutex_lock(&s->lock);
    if (rc == SQLITE_OK)
        batch_committed(s, batch, rows, us);
    else
        batch_failed(s, batch, why);
    pthread_mutex_lock(&s->lock);
    return rc == SQLITE_OK ? 0 : -1;
}

/* Write a failed batch and everything queued (group commit): the changes in
 * one transaction, then the pass snapshots that may wait in another.
 * Lock held on entry and on return, released while writing. */
static void commit_queued(nsd_store_t *s)
{
    nsd_queue_t batch = nsd_queue_take(&s->retry);
    /* Queued jobs up to COMMIT_BYTES: the WAL holds at most one commit past
     * its bound, and an answer waits for no more than the jobs before it. */
    size_t bytes = 0;
    for (nsd_qnode_t *n; bytes < COMMIT_BYTES && (n = nsd_queue_pop(&s->jobs)) != NULL;) {
        bytes += job_bytes(JOB_OF(n));
        nsd_queue_push(&batch, n);
        s->queued--;
    }
    s->backlog = !nsd_queue_empty(&s->jobs); /* the rest is due at once */
    nsd_queue_t later = take_deferred(&batch);
    if (nsd_queue_empty(&batch) || commit_one(s, &batch) == 0) {
        if (!nsd_queue_empty(&later))
            commit_one(s, &later);
        return;
    }
    /* Failed: the snapshots wait behind the batch, in order. */
    nsd_queue_concat(&s->retry, &later);
}

void nsd_store_log_lost(uint64_t lost)
{
    if (lost > 0)
        nsd_log(NSD_LOG_ERROR, "store_enqueue_failed", "reason=out_of_memory changes=%llu",
                (unsigned long long)lost);
}

static void *writer_main(void *arg)
{
    nsd_store_t *s = arg;
    pthread_setname_np(pthread_self(), "ns-store-write");
    pthread_mutex_lock(&s->lock);
    for (;;) {
        uint64_t now = nsd_now_ms();
        int have = !nsd_queue_empty(&s->jobs) || !nsd_queue_empty(&s->retry);
        /* Older rows go whenever no answer waits for a commit. */
        int purge =
            nsd_store_purge_pending(s) && nsd_queue_empty(&s->waiters) && !atomic_load(&s->failing);
        if (s->stopping && !have && !purge)
            break;
        if (have && atomic_load(&s->failing) && now < s->retry_at_ms) {
            if (s->stopping && now >= s->stop_deadline_ms)
                break;
            uint64_t until = s->retry_at_ms;
            if (s->stopping && s->stop_deadline_ms < until)
                until = s->stop_deadline_ms;
            wait_until(s, now, until);
        } else if (have && now < commit_due_at(s)) {
            if (purge)
                nsd_store_purge_some(s);
            else
                wait_until(s, now, commit_due_at(s));
        } else if (have) {
            commit_queued(s);
        } else if (purge) {
            nsd_store_purge_some(s);
        } else if (s->stopping) {
            break;
        } else {
            wait_until(s, now, UINT64_MAX);
        }
    }
    /* Stopped: whoever still waits learns whether its data made it. */
    s->exited = 1;
    nsd_queue_t done = nsd_store_take_waiters(s, 1);
    uint64_t committed = s->committed, lost = s->lost;
    s->lost = 0;
    pthread_mutex_unlock(&s->lock);
    nsd_store_log_lost(lost);
    nsd_store_call_waiters(&done, committed, NS_EIO);
    return NULL;
}

int nsd_store_start(nsd_store_t *s, nsd_registry_t *reg)
{
    s->reg = reg;
    if (prepare_all(s) != SQLITE_OK) {
        nsd_log(NSD_LOG_ERROR, "store_start_failed", "reason=prepare error=%s",
                sqlite3_errmsg(s->db));
        return NS_EIO;
    }
    if (nsd_store_purge_seed(s) != SQLITE_OK) /* the rows stay, skipped by recovery */
        nsd_log(NSD_LOG_WARN, "store_purge_failed", "reason=seed error=%s", sqlite3_errmsg(s->db));
    nsd_store_checkpoints_start(s);
    pthread_mutex_lock(&s->lock);
    int rc = pthread_create(&s->thread, NULL, writer_main, s);
    s->started = rc == 0;
    pthread_mutex_unlock(&s->lock);
    if (rc != 0)
        return NS_ENOMEM;
    return nsd_store_snapshots_start(s);
}

int nsd_store_stop(nsd_store_t *s, uint64_t timeout_ms)
{
    if (s == NULL)
        return 0;
    /* The snapshot thread first: what it queues is committed below. */
    nsd_store_snapshots_stop(s);
    pthread_mutex_lock(&s->lock);
    int started = s->started;
    if (!s->stopping) {
        s->stopping = 1;
        s->stop_deadline_ms = nsd_now_ms() + timeout_ms;
        pthread_cond_signal(&s->cond);
    }
    pthread_mutex_unlock(&s->lock);
    if (started) {
        pthread_join(s->thread, NULL);
        s->started = 0;
    }
    nsd_store_checkpoints_stop(s);
    pthread_mutex_lock(&s->lock);
    s->exited = 1;
    int lost = s->enqueued > s->committed;
    uint64_t n = 0;
    for (const nsd_qnode_t *j = s->retry.head; j != NULL; j = j->next)
        n++;
    n += s->queued;
    pthread_mutex_unlock(&s->lock);
    if (lost) {
        char q[600];
        nsd_log(NSD_LOG_ERROR, "store_flush_failed", "path=%s jobs=%llu",
                nsd_log_quote(q, sizeof(q), s->path), (unsigned long long)n);
        return NS_EIO;
    }
    return 0;
}

void nsd_store_free(nsd_store_t *s)
{
    if (s == NULL)
        return;
    if (s->started)
        nsd_store_stop(s, 0);
    sqlite3_finalize(s->ins_log);
    sqlite3_finalize(s->del_log_run);
    sqlite3_finalize(s->del_log_chunk);
    free(s->purges);
    sqlite3_finalize(s->ins_snap);
    sqlite3_finalize(s->del_snap);
    if (s->db != NULL)
        sqlite3_close(s->db);
    if (s->dir_fd >= 0)
        close(s->dir_fd); /* releases the directory's lock */
    nsd_store_jobs_free(&s->retry);
    nsd_store_jobs_free(&s->jobs);
    nsd_queue_t w = nsd_store_take_waiters(s, 1);
    nsd_store_call_waiters(&w, s->committed, NS_ESHUTDOWN);
    pthread_cond_destroy(&s->cond);
    pthread_cond_destroy(&s->snap_cond);
    pthread_cond_destroy(&s->ckpt_cond);
    pthread_mutex_destroy(&s->lock);
    free(s->aside);
    free(s);
}
