/* store_check.c - the store checks itself: the checksum of each log row and
 * snapshot, its verification when the store is opened, and the damaged runs
 * set aside under --skip-damaged-runs (see the DESIGN in store_writer.c).
 *
 * A row's checksum (its crc column, 64 bits): the high word is the CRC-32C
 * of the run name alone, the low word the CRC-32C of the whole row, column
 * by column in table order (a tag byte, 'L' for log, 'S' for snapshot, then
 * per column SQLite's type code and its value: an integer as 8 bytes
 * little-endian, text or blob as an 8-byte little-endian length and the
 * bytes, NULL as the code alone). The high word tells whether the run name
 * itself survived, so that damage elsewhere in the row can be pinned on its
 * run; damage to the name cannot be, and always refuses the start. */
#include "store_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/clock.h"
#include "base/log.h"
#include "store_crc.h"

static uint32_t sum_tag(uint32_t c, int tag)
{
    unsigned char b = (unsigned char)tag;
    return nsd_crc32c(c, &b, 1);
}

static uint32_t sum_u64(uint32_t c, uint64_t v)
{
    unsigned char b[8];
    for (int i = 0; i < 8; i++)
        b[i] = (unsigned char)(v >> (8 * i));
    return nsd_crc32c(c, b, sizeof(b));
}

uint32_t nsd_store_sum_int(uint32_t c, int64_t v)
{
    return sum_u64(sum_tag(c, SQLITE_INTEGER), (uint64_t)v);
}

uint32_t nsd_store_sum_bytes(uint32_t c, int type, const void *src, size_t src_len)
{
    c = sum_u64(sum_tag(c, type), (uint64_t)src_len);
    return nsd_crc32c(c, src, src_len);
}

uint32_t nsd_store_sum_null(uint32_t c)
{
    return sum_tag(c, SQLITE_NULL);
}

uint64_t nsd_store_sum_join(const char *run, size_t run_len, uint32_t row)
{
    return (uint64_t)nsd_crc32c(0, run, run_len) << 32 | row;
}

uint32_t nsd_store_sum_start(int table)
{
    return sum_tag(0, table);
}

/* One column of a row, read once with its type: from an SQL function's
 * argument or from a statement's result (whose sqlite3_value is
 * unprotected, so it is read through the sqlite3_column_* calls). */
typedef struct cell_s {
    int type;
    int64_t i;
    double d;
    const void *p;
    size_t n;
} cell_t;

static cell_t cell_of_value(sqlite3_value *v)
{
    cell_t c = {.type = sqlite3_value_type(v)};
    if (c.type == SQLITE_INTEGER)
        c.i = sqlite3_value_int64(v);
    else if (c.type == SQLITE_FLOAT)
        c.d = sqlite3_value_double(v);
    else if (c.type == SQLITE_TEXT)
        c.p = sqlite3_value_text(v);
    else if (c.type == SQLITE_BLOB)
        c.p = sqlite3_value_blob(v);
    c.n = c.type == SQLITE_TEXT || c.type == SQLITE_BLOB ? (size_t)sqlite3_value_bytes(v) : 0;
    return c;
}

static cell_t cell_of_column(sqlite3_stmt *st, int col)
{
    cell_t c = {.type = sqlite3_column_type(st, col)};
    if (c.type == SQLITE_INTEGER)
        c.i = sqlite3_column_int64(st, col);
    else if (c.type == SQLITE_FLOAT)
        c.d = sqlite3_column_double(st, col);
    else if (c.type == SQLITE_TEXT)
        c.p = sqlite3_column_text(st, col);
    else if (c.type == SQLITE_BLOB)
        c.p = sqlite3_column_blob(st, col);
    c.n =
        c.type == SQLITE_TEXT || c.type == SQLITE_BLOB ? (size_t)sqlite3_column_bytes(st, col) : 0;
    return c;
}

/* One column into the sum, whatever its type. */
static uint32_t sum_cell(uint32_t c, const cell_t *x)
{
    switch (x->type) {
    case SQLITE_INTEGER:
        return nsd_store_sum_int(c, x->i);
    case SQLITE_FLOAT: {
        uint64_t bits;
        memcpy(&bits, &x->d, sizeof(bits));
        return sum_u64(sum_tag(c, SQLITE_FLOAT), bits);
    }
    case SQLITE_TEXT:
    case SQLITE_BLOB:
        return nsd_store_sum_bytes(c, x->type, x->p, x->n);
    default:
        return nsd_store_sum_null(c);
    }
}

/* The run column's bytes: text (or a blob) as stored, "" otherwise. */
static const char *run_of(const cell_t *run, size_t *len)
{
    int bytes = (run->type == SQLITE_TEXT || run->type == SQLITE_BLOB) && run->p != NULL;
    *len = bytes ? run->n : 0;
    return bytes ? run->p : "";
}

/* The checksum of a row of 'table' from its columns in table order (log:
 * seq, run, kind, layer, step, body; snapshot: run, seq, taken_ms, body). */
static uint64_t sum_cells(int table, const cell_t *cells, int n)
{
    uint32_t c = nsd_store_sum_start(table);
    for (int i = 0; i < n; i++)
        c = sum_cell(c, &cells[i]);
    size_t len;
    const char *run = run_of(&cells[table == NSD_SUM_LOG ? 1 : 0], &len);
    return nsd_store_sum_join(run, len, c);
}

/* SQL functions ns_log_sum(seq, run, kind, layer, step, body) and
 * ns_snapshot_sum(run, seq, taken_ms, body): the migration fills the crc
 * column of rows written before it existed with them. */
static void sql_sum(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
    int table = *(const int *)sqlite3_user_data(ctx);
    cell_t cells[6];
    for (int i = 0; i < argc && i < 6; i++)
        cells[i] = cell_of_value(argv[i]);
    sqlite3_result_int64(ctx, (sqlite3_int64)sum_cells(table, cells, argc < 6 ? argc : 6));
}

int nsd_store_add_functions(sqlite3 *db)
{
    static const int log = NSD_SUM_LOG, snap = NSD_SUM_SNAPSHOT;
    int flags = SQLITE_UTF8 | SQLITE_DETERMINISTIC;
    int rc = sqlite3_create_function(db, "ns_log_sum", 6, flags, (void *)&log, sql_sum, NULL, NULL);
    return rc ? rc
              : sqlite3_create_function(db, "ns_snapshot_sum", 4, flags, (void *)&snap, sql_sum,
                                        NULL, NULL);
}

/* ------------------------------------------------------------ verification */

/* What the verification found. */
typedef struct damage_s {
    char **runs; /* damaged runs whose name is intact */
    size_t n, cap;
    char first[400];  /* the first damage, one line */
    int unattributed; /* some damage cannot be pinned on a run */
} damage_t;

static int damage_has(const damage_t *d, const char *run)
{
    for (size_t i = 0; i < d->n; i++)
        if (strcmp(d->runs[i], run) == 0)
            return 1;
    return 0;
}

static int damage_add(damage_t *d, const char *run)
{
    if (damage_has(d, run))
        return 0;
    if (d->n == d->cap) {
        size_t cap = d->cap ? 2 * d->cap : 8;
        char **p = realloc(d->runs, cap * sizeof(*p));
        if (p == NULL)
            return NS_ENOMEM;
        d->runs = p;
        d->cap = cap;
    }
    d->runs[d->n] = strdup(run);
    if (d->runs[d->n] == NULL)
        return NS_ENOMEM;
    d->n++;
    return 0;
}

static void damage_free(damage_t *d)
{
    for (size_t i = 0; i < d->n; i++)
        free(d->runs[i]);
    free(d->runs);
}

int nsd_store_row_check(sqlite3_stmt *st, int table, int first_col, char *why, size_t why_cap)
{
    int ncol = table == NSD_SUM_LOG ? 6 : 4;
    cell_t cells[7];
    for (int i = 0; i <= ncol; i++) /* the columns, then crc */
        cells[i] = cell_of_column(st, first_col + i);
    uint64_t want = sum_cells(table, cells, ncol);
    const cell_t *crc = &cells[ncol];
    uint64_t got = crc->type == SQLITE_INTEGER ? (uint64_t)crc->i : 0;
    if (crc->type == SQLITE_INTEGER && got == want)
        return NSD_ROW_OK;
    /* Pinned on the run only when the name is valid and its own sum holds. */
    size_t len;
    const char *raw = run_of(&cells[table == NSD_SUM_LOG ? 1 : 0], &len);
    char run[NS_NAME_MAX + 1] = "";
    if (len <= NS_NAME_MAX) {
        memcpy(run, raw, len);
        run[len] = '\0';
    }
    int named = len <= NS_NAME_MAX && strlen(run) == len && ns_name_valid(run) &&
                crc->type == SQLITE_INTEGER && (got >> 32) == (want >> 32);
    const cell_t *seq = &cells[table == NSD_SUM_LOG ? 0 : 1];
    long long n = seq->type == SQLITE_INTEGER ? (long long)seq->i : -1;
    if (table == NSD_SUM_LOG)
        snprintf(why, why_cap, "checksum mismatch in log row %lld%s%s", n, named ? " of run " : "",
                 named ? run : " (its run name is damaged too)");
    else
        snprintf(why, why_cap, "checksum mismatch in the snapshot%s%s (seq %lld)",
                 named ? " of run " : "", named ? run : " of an unknown run (its name is damaged)",
                 n);
    return named ? NSD_ROW_DAMAGED : NSD_ROW_UNNAMED;
}

/* One damaged row: note it (the first one is the line of a refusal). */
static int note(damage_t *d, int verdict, const char *run, const char *why)
{
    if (d->first[0] == '\0')
        snprintf(d->first, sizeof(d->first), "%s", why);
    if (verdict == NSD_ROW_UNNAMED) {
        d->unattributed = 1;
        return 0;
    }
    return damage_add(d, run);
}

/* Scan one table; damaged rows go into 'd'. @return 0, or an SQLite code. */
static int scan(sqlite3 *db, int table, damage_t *d)
{
    /* NOT INDEXED: PRAGMA quick_check does not compare indexes with their
     * table, so only the table itself is trusted. */
    const char *sql = table == NSD_SUM_LOG
                          ? "SELECT seq, run, kind, layer, step, body, crc FROM log NOT INDEXED"
                          : "SELECT run, seq, taken_ms, body, crc FROM snapshot NOT INDEXED";
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
    if (rc != SQLITE_OK)
        return rc;
    damage_t seen = {0}; /* snapshot runs: each at most once */
    char why[400];
    while (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        rc = SQLITE_OK;
        int verdict = nsd_store_row_check(st, table, 0, why, sizeof(why));
        const char *run = (const char *)sqlite3_column_text(st, table == NSD_SUM_LOG ? 1 : 0);
        if (verdict != NSD_ROW_OK) {
            rc = note(d, verdict, run, why) ? SQLITE_NOMEM : SQLITE_OK;
        } else if (table == NSD_SUM_SNAPSHOT && damage_has(&seen, run)) {
            snprintf(why, sizeof(why), "two snapshots of run %s", run);
            rc = note(d, NSD_ROW_DAMAGED, run, why) ? SQLITE_NOMEM : SQLITE_OK;
        } else if (table == NSD_SUM_SNAPSHOT && damage_add(&seen, run) != 0) {
            rc = SQLITE_NOMEM;
        }
    }
    damage_free(&seen);
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

/* Move a damaged run's rows and snapshot into damaged_log and
 * damaged_snapshot. @return an SQLite code. */
static int set_aside(sqlite3 *db, const char *run, uint64_t now_ms, uint64_t *rows, int *snap)
{
    static const char *const sql[] = {
        "INSERT INTO damaged_log(seq, run, kind, layer, step, body, crc, set_aside_ms) "
        "SELECT seq, run, kind, layer, step, body, crc, ?2 FROM log NOT INDEXED WHERE run = ?1",
        "DELETE FROM log WHERE seq IN (SELECT seq FROM log NOT INDEXED WHERE run = ?1)",
        "INSERT INTO damaged_snapshot(run, seq, taken_ms, body, crc, set_aside_ms) "
        "SELECT run, seq, taken_ms, body, crc, ?2 FROM snapshot NOT INDEXED WHERE run = ?1",
        "DELETE FROM snapshot WHERE rowid IN (SELECT rowid FROM snapshot NOT INDEXED "
        "WHERE run = ?1)",
    };
    int rc = SQLITE_OK;
    for (size_t i = 0; rc == SQLITE_OK && i < sizeof(sql) / sizeof(sql[0]); i++) {
        sqlite3_stmt *st = NULL;
        rc = sqlite3_prepare_v2(db, sql[i], -1, &st, NULL);
        if (rc == SQLITE_OK) {
            sqlite3_bind_text(st, 1, run, -1, SQLITE_STATIC);
            if (sqlite3_bind_parameter_count(st) >= 2)
                sqlite3_bind_int64(st, 2, (sqlite3_int64)now_ms);
            rc = sqlite3_step(st);
            rc = rc == SQLITE_DONE ? SQLITE_OK : rc;
            if (i == 0)
                *rows = (uint64_t)sqlite3_changes(db);
            if (i == 2)
                *snap = sqlite3_changes(db) > 0;
        }
        sqlite3_finalize(st);
    }
    return rc;
}

int nsd_store_verify(nsd_store_t *s, nsd_store_error_t *err)
{
    damage_t d = {0};
    int rc = scan(s->db, NSD_SUM_SNAPSHOT, &d);
    rc = rc ? rc : scan(s->db, NSD_SUM_LOG, &d);
    if (rc != SQLITE_OK) {
        int code = sqlite3_errcode(s->db);
        damage_free(&d);
        if (rc == SQLITE_NOMEM)
            return nsd_store_fail(err, s->path, "out of memory");
        if (code == SQLITE_CORRUPT || code == SQLITE_NOTADB)
            return nsd_store_fail(err, s->path, "database is corrupt (%s)", sqlite3_errmsg(s->db));
        return nsd_store_fail(err, s->path, "cannot read the database (%s)", sqlite3_errmsg(s->db));
    }
    int ret = 0;
    if (d.first[0] == '\0') {
        /* every row intact */
    } else if (!s->cfg.skip_damaged_runs) {
        ret = nsd_store_fail(err, s->path,
                             "store is damaged: %s; nothing was loaded (--skip-damaged-runs "
                             "starts without the damaged runs)",
                             d.first);
    } else if (d.unattributed) {
        ret = nsd_store_fail(err, s->path,
                             "store is damaged: %s; that damage cannot be pinned on a run, so "
                             "--skip-damaged-runs cannot set it aside",
                             d.first);
    } else if ((s->aside = calloc(d.n, sizeof(*s->aside))) == NULL) {
        ret = nsd_store_fail(err, s->path, "out of memory");
    } else {
        for (size_t i = 0; i < d.n; i++)
            snprintf(s->aside[i].run, sizeof(s->aside[i].run), "%s", d.runs[i]);
        s->n_aside = d.n;
    }
    damage_free(&d);
    return ret;
}

int nsd_store_set_aside(nsd_store_t *s)
{
    uint64_t now = nsd_wall_ms();
    int rc = SQLITE_OK;
    for (size_t i = 0; rc == SQLITE_OK && i < s->n_aside; i++)
        rc = set_aside(s->db, s->aside[i].run, now, &s->aside[i].rows, &s->aside[i].snapshot);
    return rc;
}

void nsd_store_log_set_aside(const nsd_store_t *s)
{
    char q[600];
    for (size_t i = 0; i < s->n_aside; i++)
        /* Loud on purpose: a run's history is missing from what is served. */
        nsd_log(NSD_LOG_ERROR, "store_run_set_aside",
                "run=%s log_rows=%llu snapshot=%d moved_to=damaged_log,damaged_snapshot reason=%s",
                s->aside[i].run, (unsigned long long)s->aside[i].rows, s->aside[i].snapshot,
                nsd_log_quote(q, sizeof(q), "checksum mismatch, started with --skip-damaged-runs"));
}
