/* store_checkpoint.c - WAL checkpoints off the commit path.
 *
 * SQLite's automatic checkpoint runs inside the COMMIT that grows the WAL
 * past 1000 pages: that commit also copies the WAL into the database file
 * and syncs it, and every /sync waiting for it waits for that too. So the
 * writer's connection checkpoints nothing itself (wal_autocheckpoint=0);
 * its WAL hook, called after each commit with the WAL's size, wakes this
 * thread, which runs a PASSIVE checkpoint through a connection of its own:
 * WAL mode lets the writer keep appending meanwhile.
 *
 * The WAL file starts over from its beginning only when a write transaction
 * begins while every frame of it is copied. Under a steady load the writer
 * commits again while this thread copies the previous commit, so that never
 * happens by itself and the WAL would grow without end. So once it holds
 * NSD_STORE_WAL_BOUND_BYTES (store.h), the writer, before its next
 * transaction, waits for this thread's pass and copies the rest itself (the
 * frames of the last commit or two): the transaction then starts the WAL
 * over, and the file stays within a commit (COMMIT_BYTES, store_writer.c)
 * of that size. */
#define _GNU_SOURCE /* pthread_setname_np: the thread shows in top and /proc */
#include "store_internal.h"

#include "base/log.h"

/* Checkpoint once the WAL holds this many bytes (SQLite's default is 1000
 * pages, 4 MiB at its default page size). */
#define CHECKPOINT_WAL_BYTES (8u << 20)

/* sqlite3_wal_hook() on the writer's connection, after each commit. */
static int on_wal(void *arg, sqlite3 *db, const char *name, int pages)
{
    (void)db, (void)name;
    nsd_store_t *s = arg;
    pthread_mutex_lock(&s->lock);
    s->wal_bytes = (uint64_t)pages * s->page_size;
    if (s->wal_bytes >= CHECKPOINT_WAL_BYTES) {
        s->ckpt_due = 1;
        pthread_cond_broadcast(&s->ckpt_cond);
    }
    pthread_mutex_unlock(&s->lock);
    return SQLITE_OK;
}

static void *checkpoint_main(void *arg)
{
    nsd_store_t *s = arg;
    pthread_setname_np(pthread_self(), "ns-store-ckpt");
    pthread_mutex_lock(&s->lock);
    for (;;) {
        while ((!s->ckpt_due || s->ckpt_running) && !s->ckpt_stopping)
            pthread_cond_wait(&s->ckpt_cond, &s->lock);
        if (s->ckpt_stopping)
            break;
        s->ckpt_due = 0;
        s->ckpt_running = 1;
        pthread_mutex_unlock(&s->lock);
        int rc = sqlite3_wal_checkpoint_v2(s->ckpt_db, NULL, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
        if (rc != SQLITE_OK && rc != SQLITE_BUSY)
            nsd_log(NSD_LOG_WARN, "store_checkpoint_failed", "error=%s",
                    sqlite3_errmsg(s->ckpt_db));
        pthread_mutex_lock(&s->lock);
        s->ckpt_running = 0;
        pthread_cond_broadcast(&s->ckpt_cond); /* the writer may wait for the pass */
    }
    pthread_mutex_unlock(&s->lock);
    return NULL;
}

void nsd_store_checkpoints_start(nsd_store_t *s)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(s->db, "PRAGMA page_size", -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW)
        s->page_size = (uint64_t)sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    if (s->page_size == 0)
        s->page_size = 4096;
    /* Without the thread, SQLite's own checkpoints stay on. */
    if (sqlite3_open_v2(s->path, &s->ckpt_db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) !=
        SQLITE_OK) {
        sqlite3_close(s->ckpt_db);
        s->ckpt_db = NULL;
        return;
    }
    sqlite3_busy_timeout(s->ckpt_db, BUSY_TIMEOUT_MS);
    /* A connection learns that the database is in WAL mode when it first
     * reads it; until then its checkpoints do nothing at all. */
    if (nsd_store_exec(s->ckpt_db, "SELECT 1 FROM sqlite_master LIMIT 1") != SQLITE_OK) {
        sqlite3_close(s->ckpt_db);
        s->ckpt_db = NULL;
        return;
    }
    pthread_mutex_lock(&s->lock);
    s->ckpt_started = pthread_create(&s->ckpt_thread, NULL, checkpoint_main, s) == 0;
    pthread_mutex_unlock(&s->lock);
    if (!s->ckpt_started) {
        sqlite3_close(s->ckpt_db);
        s->ckpt_db = NULL;
        return;
    }
    sqlite3_wal_autocheckpoint(s->db, 0);
    sqlite3_wal_hook(s->db, on_wal, s);
}

void nsd_store_wal_bound(nsd_store_t *s)
{
    if (!s->ckpt_started || s->wal_bytes < NSD_STORE_WAL_BOUND_BYTES)
        return;
    while (s->ckpt_running)
        pthread_cond_wait(&s->ckpt_cond, &s->lock);
    s->ckpt_running = 1; /* the thread's next pass waits for this one */
    pthread_mutex_unlock(&s->lock);
    int rc = sqlite3_wal_checkpoint_v2(s->db, NULL, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
    if (rc != SQLITE_OK && rc != SQLITE_BUSY)
        nsd_log(NSD_LOG_WARN, "store_checkpoint_failed", "error=%s", sqlite3_errmsg(s->db));
    pthread_mutex_lock(&s->lock);
    s->ckpt_running = 0;
    s->wal_bytes = 0; /* until the next commit says again */
    pthread_cond_broadcast(&s->ckpt_cond);
}

void nsd_store_checkpoints_stop(nsd_store_t *s)
{
    pthread_mutex_lock(&s->lock);
    int started = s->ckpt_started;
    s->ckpt_stopping = 1;
    pthread_cond_signal(&s->ckpt_cond);
    pthread_mutex_unlock(&s->lock);
    if (started) {
        pthread_join(s->ckpt_thread, NULL);
        s->ckpt_started = 0;
    }
    sqlite3_close(s->ckpt_db);
    s->ckpt_db = NULL;
}
