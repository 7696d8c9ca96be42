/* store_recover.c - recovery at start-up: each run's snapshot, then the log
 * rows after it replayed in order (see the DESIGN in store_writer.c). */
#include "store_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/clock.h"
#include "registry/registry.h"
#include "store_codec.h"

/* A run's snapshot seq (rows below it were truncated with it). */
typedef struct snap_seq_s {
    char run[NS_NAME_MAX + 1];
    uint64_t seq;
} snap_seq_t;

typedef struct snaps_s {
    snap_seq_t *v;
    size_t n, cap;
} snaps_t;

static int snaps_add(snaps_t *snaps, const char *run, uint64_t seq)
{
    if (snaps->n == snaps->cap) {
        size_t cap = snaps->cap ? 2 * snaps->cap : 16;
        snap_seq_t *p = realloc(snaps->v, cap * sizeof(*p));
        if (p == NULL)
            return NS_ENOMEM;
        snaps->v = p;
        snaps->cap = cap;
    }
    snprintf(snaps->v[snaps->n].run, sizeof(snaps->v[snaps->n].run), "%s", run);
    snaps->v[snaps->n].seq = seq;
    snaps->n++;
    return 0;
}

/* 1 if log row 'seq' of 'run' is older than the run's snapshot. */
static int snaps_cover(const snaps_t *snaps, const char *run, uint64_t seq)
{
    for (size_t i = 0; i < snaps->n; i++)
        if (strcmp(snaps->v[i].run, run) == 0 && seq < snaps->v[i].seq)
            return 1;
    return 0;
}

static int apply_row(nsd_registry_t *reg, const char *run, int kind, const char *layer,
                     const void *body, size_t len, ns_error_detail_t *e)
{
    char text[NS_NAME_MAX + 1];
    switch (kind) {
    case KIND_PUT: {
        ns_run_config_t cfg;
        ns_run_config_defaults(&cfg);
        int rc = ns_run_config_decode_json(&cfg, body ? body : "", len, e);
        return rc ? rc : nsd_registry_put_run(reg, run, &cfg, NULL, e);
    }
    case KIND_DOMAIN:
    case KIND_RESET:
        if (len > NS_NAME_MAX || (kind == KIND_DOMAIN && (body == NULL || len == 0)))
            return ns_error_set(e, NS_EINVAL, "body", "bad domain");
        if (body != NULL)
            memcpy(text, body, len);
        text[len] = '\0';
        if (kind == KIND_DOMAIN)
            return nsd_registry_replay_domain(reg, run, text, e);
        return nsd_registry_precise_reset(reg, run, body != NULL && len > 0 ? text : NULL, NULL, e);
    case KIND_STEP: {
        nsd_step_t *step;
        int rc = nsd_step_decode(body, len, layer ? layer : "", &step);
        if (rc != 0)
            return ns_error_set(e, rc, "body", "undecodable step record");
        rc = nsd_registry_replay_step(reg, run, step, e);
        nsd_step_free(step);
        return rc;
    }
    default:
        return ns_error_set(e, NS_EINVAL, "kind", "unknown row kind %d", kind);
    }
}

/* Import every run's snapshot, noting its seq. @return 0 or NS_EIO (err). */
static int load_snapshots(nsd_store_t *s, nsd_registry_t *reg, snaps_t *snaps,
                          nsd_store_recovery_t *r, nsd_store_error_t *err)
{
    sqlite3_stmt *st = NULL;
    ns_error_detail_t e = {0};
    int rc = 0, step = SQLITE_DONE;
    if (sqlite3_prepare_v2(
            s->db, "SELECT run, seq, taken_ms, body, crc FROM snapshot NOT INDEXED ORDER BY run",
            -1, &st, NULL) != SQLITE_OK)
        return nsd_store_fail(err, s->path, "cannot read snapshots (%s)", sqlite3_errmsg(s->db));
    while (rc == 0 && (step = sqlite3_step(st)) == SQLITE_ROW) {
        char why[400];
        if (nsd_store_row_check(st, NSD_SUM_SNAPSHOT, 0, why, sizeof(why)) != NSD_ROW_OK) {
            rc = nsd_store_fail(err, s->path, "store is damaged: %s", why);
            break;
        }
        const char *run = (const char *)sqlite3_column_text(st, 0);
        const char *body = (const char *)sqlite3_column_text(st, 3);
        size_t len = (size_t)sqlite3_column_bytes(st, 3);
        if (run == NULL || body == NULL || !ns_name_valid(run))
            rc = nsd_store_fail(err, s->path, "corrupt snapshot row");
        else if (nsd_registry_checkpoint_import(reg, run, body, len, &e) != 0)
            rc = nsd_store_fail(err, s->path, "snapshot of run %s cannot be loaded: %s", run,
                                e.message);
        else if (snaps_add(snaps, run, (uint64_t)sqlite3_column_int64(st, 1)) != 0)
            rc = nsd_store_fail(err, s->path, "out of memory");
        else
            r->snapshots++;
    }
    if (rc == 0 && step != SQLITE_DONE)
        rc = nsd_store_fail(err, s->path, "cannot read snapshots (%s)", sqlite3_errmsg(s->db));
    sqlite3_finalize(st);
    return rc;
}

/* Replay the log rows newer than their run's snapshot, in seq order.
 * @return 0 or NS_EIO (err). */
static int replay_log(nsd_store_t *s, nsd_registry_t *reg, const snaps_t *snaps,
                      nsd_store_recovery_t *r, nsd_store_error_t *err)
{
    sqlite3_stmt *st = NULL;
    int rc = 0, step = SQLITE_DONE;
    if (sqlite3_prepare_v2(s->db,
                           "SELECT seq, run, kind, layer, step, body, crc FROM log ORDER BY seq",
                           -1, &st, NULL) != SQLITE_OK)
        return nsd_store_fail(err, s->path, "cannot read the log (%s)", sqlite3_errmsg(s->db));
    while (rc == 0 && (step = sqlite3_step(st)) == SQLITE_ROW) {
        /* Checked before any column is read as another type. */
        char why[400];
        if (nsd_store_row_check(st, NSD_SUM_LOG, 0, why, sizeof(why)) != NSD_ROW_OK) {
            rc = nsd_store_fail(err, s->path, "store is damaged: %s", why);
            break;
        }
        uint64_t seq = (uint64_t)sqlite3_column_int64(st, 0);
        const char *run = (const char *)sqlite3_column_text(st, 1);
        int kind = sqlite3_column_int(st, 2);
        const char *layer = (const char *)sqlite3_column_text(st, 3);
        const void *body = sqlite3_column_blob(st, 5);
        size_t len = (size_t)sqlite3_column_bytes(st, 5);
        if (run == NULL || !ns_name_valid(run)) {
            rc = nsd_store_fail(err, s->path, "corrupt log row %llu", (unsigned long long)seq);
            break;
        }
        if (snaps_cover(snaps, run, seq))
            continue;
        ns_error_detail_t e = {0};
        if (apply_row(reg, run, kind, layer, body, len, &e) != 0) {
            rc = nsd_store_fail(err, s->path, "log row %llu (run %s) cannot be replayed: %s %s",
                                (unsigned long long)seq, run, e.field, e.message);
            break;
        }
        r->rows++;
        r->steps += kind == KIND_STEP;
    }
    if (rc == 0 && step != SQLITE_DONE)
        rc = nsd_store_fail(err, s->path, "cannot read the log (%s)", sqlite3_errmsg(s->db));
    sqlite3_finalize(st);
    return rc;
}

int nsd_store_recover(nsd_store_t *s, nsd_registry_t *reg, nsd_store_recovery_t *out,
                      nsd_store_error_t *err)
{
    uint64_t t0 = nsd_now_ms();
    nsd_store_recovery_t r;
    memset(&r, 0, sizeof(r));
    snaps_t snaps = {0};
    int rc = load_snapshots(s, reg, &snaps, &r, err);
    if (rc == 0)
        rc = replay_log(s, reg, &snaps, &r, err);
    if (rc == 0) {
        nsd_registry_replay_finish(reg);
        nsd_counters_t c;
        nsd_registry_counters(reg, &c);
        r.runs = c.runs;
        r.ms = nsd_now_ms() - t0;
    }
    free(snaps.v);
    if (out != NULL)
        *out = r;
    return rc;
}
