/* store_snapshot.c - the store's snapshot thread: every snapshot_interval
 * ms, once enough log was committed since the last pass (64 MiB, or 16
 * times the last pass's snapshots if more), or when a hook lost a change, it asks
 * the registry to snapshot each run that has log rows (see the DESIGN in
 * store_writer.c).
 *
 * Why relative to the snapshots: a snapshot is JSON with 17 digits a value,
 * about 12 ns of CPU a byte, five times what a byte of log costs the writer
 * (a ResNet-50 run's snapshot is 7 MB); a pass every 64 MiB over a few such
 * runs cost the CPU of half the writer's. At 16 times its size a pass costs
 * under 1 ns a log byte, and replay at start-up is bounded by the same
 * factor (about 1,000 ResNet-50 steps a run).
 *
 * A pass never stalls ingest or commits: for each run the registry copies
 * the state under the run's lock (snapshot_begin, store_queue.c, reserves
 * the seq the snapshot covers), then this thread makes the JSON with no lock
 * held and queues the job (snapshot_end), which the writer commits like any
 * other. Which runs have log rows is read through a connection of this
 * thread's own (WAL readers never block the writer). */
#define _GNU_SOURCE /* pthread_setname_np: the thread shows in top and /proc */
#include "store_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/clock.h"
#include "base/log.h"
#include "registry/registry.h"

/* A pass is due once the log committed since the last one holds this many
 * times the bytes of that pass's snapshots (or NSD_SNAPSHOT_LOG_BYTES). */
#define SNAPSHOT_LOG_FACTOR 16

/* The runs 'sql' names, read to the end first: a read transaction held
 * through the pass would keep every checkpoint from copying the WAL past it
 * (store_checkpoint.c). @return how many (*dst malloc'd), 0 on any error. */
static size_t runs_with_rows(nsd_store_t *s, const char *sql, char (**dst)[NS_NAME_MAX + 1])
{
    sqlite3_stmt *st = NULL;
    char(*runs)[NS_NAME_MAX + 1] = NULL;
    size_t n = 0, cap = 0;
    if (s->snap_db != NULL && sqlite3_prepare_v2(s->snap_db, sql, -1, &st, NULL) == SQLITE_OK) {
        while (sqlite3_step(st) == SQLITE_ROW) {
            const char *run = (const char *)sqlite3_column_text(st, 0);
            if (run == NULL || strlen(run) > NS_NAME_MAX)
                continue;
            if (n == cap) {
                size_t want = cap ? 2 * cap : 16;
                void *grown = realloc(runs, want * sizeof(*runs));
                if (grown == NULL)
                    break; /* the runs read so far are snapshotted */
                runs = grown;
                cap = want;
            }
            snprintf(runs[n++], sizeof(runs[0]), "%s", run);
        }
    }
    sqlite3_finalize(st);
    *dst = runs;
    return n;
}

/* Each run with log rows (or every run): the registry snapshots it. */
static void take_snapshots(nsd_store_t *s, int all)
{
    /* Rows older than a run's snapshot may still wait for their deletion
     * (store_purge.c): a run needs a pass for rows newer than its snapshot. */
    static const char newer[] = "SELECT l.run FROM (SELECT run, max(seq) AS last FROM log "
                                "GROUP BY run) l LEFT JOIN snapshot s ON s.run = l.run "
                                "WHERE s.seq IS NULL OR l.last >= s.seq";
    const char *sql = all ? "SELECT DISTINCT run FROM log UNION SELECT run FROM snapshot" : newer;
    char(*runs)[NS_NAME_MAX + 1] = NULL;
    size_t n = 0, n_runs = runs_with_rows(s, sql, &runs);
    for (size_t i = 0; i < n_runs; i++)
        n += nsd_registry_snapshot(s->reg, runs[i], NULL) == 0;
    free(runs);
    if (all) {
        /* Runs changed since the last commit may have no row at all yet. */
        json_t *list = nsd_registry_list_json(s->reg, NULL, 0);
        size_t i;
        json_t *v;
        json_array_foreach(json_object_get(list, "runs"), i, v)
        {
            const char *run = json_string_value(json_object_get(v, "run"));
            if (run != NULL && nsd_registry_snapshot(s->reg, run, NULL) == 0)
                n++;
        }
        json_decref(list);
    }
    if (n > 0)
        nsd_log(NSD_LOG_DEBUG, "store_snapshot", "runs=%zu", n);
}

/* How many bytes of log are due for a pass. Lock held. */
uint64_t nsd_store_pass_log_bytes(const nsd_store_t *s)
{
    uint64_t rel = SNAPSHOT_LOG_FACTOR * s->pass_text_bytes;
    return rel > NSD_SNAPSHOT_LOG_BYTES ? rel : NSD_SNAPSHOT_LOG_BYTES;
}

static uint64_t next_pass_at(const nsd_store_t *s)
{
    return s->cfg.snapshot_interval_ms ? nsd_now_ms() + s->cfg.snapshot_interval_ms : UINT64_MAX;
}

/* Whether a pass is due. Lock held. */
static int pass_due(const nsd_store_t *s, uint64_t now, uint64_t next)
{
    return s->snapshot_all || now >= next ||
           (s->cfg.snapshot_interval_ms && s->log_bytes >= nsd_store_pass_log_bytes(s));
}

static void *snapshot_main(void *arg)
{
    nsd_store_t *s = arg;
    pthread_setname_np(pthread_self(), "ns-store-snap");
    uint64_t next = next_pass_at(s);
    pthread_mutex_lock(&s->lock);
    while (!s->snap_stopping) {
        uint64_t now = nsd_now_ms();
        if (!pass_due(s, now, next)) {
            if (next == UINT64_MAX) {
                pthread_cond_wait(&s->snap_cond, &s->lock);
            } else {
                struct timespec ts = nsd_deadline_in(next - now);
                pthread_cond_timedwait(&s->snap_cond, &s->lock, &ts);
            }
            continue;
        }
        int all = s->snapshot_all;
        uint64_t lost = s->lost;
        s->snapshot_all = 0;
        s->lost = 0;
        s->log_bytes = 0;
        s->text_bytes = 0;
        pthread_mutex_unlock(&s->lock);
        nsd_store_log_lost(lost);
        take_snapshots(s, all);
        next = next_pass_at(s);
        pthread_mutex_lock(&s->lock);
        s->pass_text_bytes = s->text_bytes;
    }
    pthread_mutex_unlock(&s->lock);
    return NULL;
}

int nsd_store_snapshots_start(nsd_store_t *s)
{
    /* A reader of the same file; failing to open it only costs the passes
     * that need it (the "every run" pass lists the registry's runs too). */
    if (sqlite3_open_v2(s->path, &s->snap_db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) !=
        SQLITE_OK) {
        nsd_log(NSD_LOG_ERROR, "store_start_failed", "reason=snapshot_reader error=%s",
                s->snap_db ? sqlite3_errmsg(s->snap_db) : "out of memory");
        sqlite3_close(s->snap_db);
        s->snap_db = NULL;
    } else {
        sqlite3_busy_timeout(s->snap_db, BUSY_TIMEOUT_MS);
    }
    pthread_mutex_lock(&s->lock);
    int rc = pthread_create(&s->snap_thread, NULL, snapshot_main, s);
    s->snap_started = rc == 0;
    pthread_mutex_unlock(&s->lock);
    return rc == 0 ? 0 : NS_ENOMEM;
}

void nsd_store_snapshots_stop(nsd_store_t *s)
{
    pthread_mutex_lock(&s->lock);
    int started = s->snap_started;
    s->snap_stopping = 1;
    pthread_cond_signal(&s->snap_cond);
    pthread_mutex_unlock(&s->lock);
    if (started) {
        pthread_join(s->snap_thread, NULL);
        s->snap_started = 0;
    }
    sqlite3_close(s->snap_db);
    s->snap_db = NULL;
}
