/* store_purge.c - deleting the log rows a snapshot covers, a chunk at a
 * time, between the writer's commits.
 *
 * Recovery skips every log row of a run older than its snapshot
 * (store_recover.c), so those rows need not go in the snapshot's own
 * transaction. Deleting them there made that commit read back every page of
 * them (tens of MB after a pass over big runs), and every durable answer
 * queued meanwhile waited for it. So once a snapshot is committed, the run
 * and its seq are noted here, and the writer deletes PURGE_ROWS of the rows
 * below it per transaction whenever no answer waits for a commit: a /sync
 * waits for one chunk at most. Nothing is noted before the snapshot's commit
 * succeeded, so no row goes before the snapshot that covers it is on disk.
 * At start, runs whose snapshot still has older rows (a stop or kill came
 * first) are noted again; stopping finishes the chunks. Writer thread only,
 * but for nsd_store_purge_note() (lock held) and the seeding (before the
 * writer starts). */
#include "store_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/log.h"

/* Rows deleted per transaction: a few MB of ResNet-50 rows, a few ms. */
#define PURGE_ROWS 512

/* Note that the rows of 'run' below 'below' may go (a newer note of the
 * run replaces an older one). Lock held or before the writer starts. */
static void note(nsd_store_t *s, const char *run, uint64_t below)
{
    for (size_t i = 0; i < s->n_purges; i++)
        if (strcmp(s->purges[i].run, run) == 0) {
            if (below > s->purges[i].below)
                s->purges[i].below = below;
            return;
        }
    if (s->n_purges == s->cap_purges) {
        size_t want = s->cap_purges ? 2 * s->cap_purges : 8;
        purge_t *grown = realloc(s->purges, want * sizeof(*grown));
        if (grown == NULL)
            return; /* the rows stay, skipped by recovery; noted again at start */
        s->purges = grown;
        s->cap_purges = want;
    }
    purge_t *p = &s->purges[s->n_purges++];
    snprintf(p->run, sizeof(p->run), "%s", run);
    p->below = below;
}

void nsd_store_purge_note(nsd_store_t *s, const nsd_queue_t *committed)
{
    for (const nsd_qnode_t *n = committed->head; n != NULL; n = n->next) {
        const job_t *j = JOB_OF(n);
        if (j->type == JOB_SNAPSHOT)
            note(s, j->run, j->covers != 0 ? j->covers : j->seq);
    }
}

int nsd_store_purge_seed(nsd_store_t *s)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(s->db,
                                "SELECT s.run, s.seq FROM snapshot s WHERE EXISTS "
                                "(SELECT 1 FROM log l WHERE l.run = s.run AND l.seq < s.seq)",
                                -1, &st, NULL);
    while (rc == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW) {
        const char *run = (const char *)sqlite3_column_text(st, 0);
        if (run != NULL && strlen(run) <= NS_NAME_MAX)
            note(s, run, (uint64_t)sqlite3_column_int64(st, 1));
    }
    sqlite3_finalize(st);
    return rc;
}

int nsd_store_purge_pending(const nsd_store_t *s)
{
    return s->n_purges > 0;
}

/* One chunk of the first noted run in its own transaction. @return the
 * rows deleted, or -1 (rolled back, with its message in why). */
static int delete_chunk(nsd_store_t *s, const purge_t *p, char *why, size_t why_cap)
{
    int rc = nsd_store_exec(s->db, "BEGIN IMMEDIATE");
    if (rc == SQLITE_OK) {
        sqlite3_bind_text(s->del_log_chunk, 1, p->run, -1, SQLITE_STATIC);
        sqlite3_bind_int64(s->del_log_chunk, 2, (sqlite3_int64)p->below);
        sqlite3_bind_int(s->del_log_chunk, 3, PURGE_ROWS);
        rc = sqlite3_step(s->del_log_chunk);
        rc = rc == SQLITE_DONE ? SQLITE_OK : rc;
        sqlite3_reset(s->del_log_chunk);
        sqlite3_clear_bindings(s->del_log_chunk);
    }
    int deleted = rc == SQLITE_OK ? sqlite3_changes(s->db) : 0;
    if (rc == SQLITE_OK)
        rc = nsd_store_exec(s->db, "COMMIT");
    if (rc == SQLITE_OK)
        return deleted;
    snprintf(why, why_cap, "%s", sqlite3_errmsg(s->db));
    if (!sqlite3_get_autocommit(s->db))
        nsd_store_exec(s->db, "ROLLBACK");
    return -1;
}

void nsd_store_purge_some(nsd_store_t *s)
{
    nsd_store_wal_bound(s);
    purge_t p = s->purges[0];
    pthread_mutex_unlock(&s->lock);
    char why[512] = "";
    int deleted = delete_chunk(s, &p, why, sizeof(why));
    if (deleted < 0) {
        char q[600];
        nsd_log(NSD_LOG_WARN, "store_purge_failed", "run=%s error=%s", p.run,
                nsd_log_quote(q, sizeof(q), why));
    }
    pthread_mutex_lock(&s->lock);
    /* Done with the run, or failing (its rows stay, skipped by recovery,
     * noted again at the next snapshot or start). Notes are added on this
     * thread only, so the first is still the run just purged. */
    if (deleted < PURGE_ROWS && s->n_purges > 0 && strcmp(s->purges[0].run, p.run) == 0 &&
        s->purges[0].below == p.below) {
        memmove(&s->purges[0], &s->purges[1], (s->n_purges - 1) * sizeof(s->purges[0]));
        s->n_purges--;
    }
}
