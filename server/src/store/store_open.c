/* store_open.c - opening the store: the data directory and its lock, the
 * SQLite file, its schema and version (see the DESIGN in store_writer.c). */
#define _DEFAULT_SOURCE /* flock() */
#include "store_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/clock.h"
#include "base/log.h"

int nsd_store_fail(nsd_store_error_t *err, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
int nsd_store_fail(nsd_store_error_t *err, const char *path, const char *fmt, ...)
{
    if (err != NULL && err->reason[0] == '\0') { /* first error wins */
        snprintf(err->path, sizeof(err->path), "%s", path);
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->reason, sizeof(err->reason), fmt, ap);
        va_end(ap);
    }
    return NS_EIO;
}

int nsd_store_exec(sqlite3 *db, const char *sql)
{
    return sqlite3_exec(db, sql, NULL, NULL, NULL);
}

/* One integer from a query; 'ok' 0 if it failed. */
static int64_t query_int(sqlite3 *db, const char *sql, int *rc)
{
    sqlite3_stmt *st = NULL;
    int64_t v = 0;
    *rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
    if (*rc == SQLITE_OK) {
        *rc = sqlite3_step(st);
        if (*rc == SQLITE_ROW) {
            v = sqlite3_column_int64(st, 0);
            *rc = SQLITE_OK;
        } else if (*rc == SQLITE_DONE) {
            *rc = SQLITE_OK;
        }
    }
    sqlite3_finalize(st);
    return v;
}

/* The schema as version 1 wrote it; a new store gets it and every
 * migration in turn, so new and migrated stores are alike. */
static const char SCHEMA_V1[] =
    "CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);"
    "CREATE TABLE log(seq INTEGER PRIMARY KEY, run TEXT NOT NULL, kind INTEGER NOT NULL,"
    " layer TEXT, step INTEGER, body BLOB);"
    "CREATE INDEX log_run ON log(run, seq);"
    "CREATE TABLE snapshot(run TEXT PRIMARY KEY, seq INTEGER NOT NULL,"
    " taken_ms INTEGER NOT NULL, body TEXT NOT NULL);";

/* Version 2: each row's checksum (store_check.c), filled in for the rows
 * already there, and the tables --skip-damaged-runs moves damaged runs to. */
static const char MIGRATE_V2[] =
    "ALTER TABLE log ADD COLUMN crc INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE snapshot ADD COLUMN crc INTEGER NOT NULL DEFAULT 0;"
    "UPDATE log SET crc = ns_log_sum(seq, run, kind, layer, step, body);"
    "UPDATE snapshot SET crc = ns_snapshot_sum(run, seq, taken_ms, body);"
    "CREATE TABLE damaged_log(seq INTEGER, run TEXT, kind INTEGER, layer TEXT, step INTEGER,"
    " body BLOB, crc INTEGER, set_aside_ms INTEGER NOT NULL);"
    "CREATE TABLE damaged_snapshot(run TEXT, seq INTEGER, taken_ms INTEGER, body TEXT,"
    " crc INTEGER, set_aside_ms INTEGER NOT NULL);"
    "PRAGMA user_version=2;";

/* Version 3: STEP bodies of version 2 (store_codec.h: float32-exact arrays
 * in 4 bytes). Rows already there stay version 1 bodies, which this build
 * still reads; the number moves so an earlier release, which cannot read
 * the new bodies, refuses the store instead of failing on its first such
 * row. */
static const char MIGRATE_V3[] = "PRAGMA user_version=3;";

/* The statements that bring a store of version v (0: a new file) to this
 * build's version; in the caller's transaction. @return an SQLite code. */
static int migrate(sqlite3 *db, int64_t v)
{
    int rc = SQLITE_OK;
    if (v < 1)
        rc = nsd_store_exec(db, SCHEMA_V1);
    if (rc == SQLITE_OK && v < 2)
        rc = nsd_store_exec(db, MIGRATE_V2);
    if (rc == SQLITE_OK && v < 3)
        rc = nsd_store_exec(db, MIGRATE_V3);
    return rc;
}

/* Check the directory; create it if missing (not its parents). */
static int check_dir(const char *dir, nsd_store_error_t *err)
{
    struct stat sb;
    if (stat(dir, &sb) != 0) {
        if (errno != ENOENT)
            return nsd_store_fail(err, dir, "cannot stat data directory: %s", strerror(errno));
        if (mkdir(dir, 0750) != 0)
            return nsd_store_fail(err, dir, "cannot create data directory: %s", strerror(errno));
        if (stat(dir, &sb) != 0)
            return nsd_store_fail(err, dir, "cannot stat data directory: %s", strerror(errno));
    }
    if (!S_ISDIR(sb.st_mode))
        return nsd_store_fail(err, dir, "data directory is not a directory");
    if (access(dir, W_OK | X_OK) != 0)
        return nsd_store_fail(err, dir, "data directory is not writable: %s", strerror(errno));
    return 0;
}

/* What the file is: a normstat store of a version this build reads, or a
 * new (empty) database. Sets *tables. @return 0 or NS_EIO (err). */
static int check_identity(nsd_store_t *s, int64_t *tables, nsd_store_error_t *err)
{
    sqlite3 *db = s->db;
    int rc;
    /* The first read of the header: a file that is not SQLite fails here. */
    int64_t app = query_int(db, "PRAGMA application_id", &rc);
    if (rc != SQLITE_OK)
        return nsd_store_fail(err, s->path, "not a normstat database (%s)", sqlite3_errmsg(db));
    int64_t version = query_int(db, "PRAGMA user_version", &rc);
    *tables = rc == SQLITE_OK ? query_int(db, "SELECT count(*) FROM sqlite_master", &rc) : 0;
    if (rc != SQLITE_OK)
        return nsd_store_fail(err, s->path, "not a normstat database (%s)", sqlite3_errmsg(db));
    if (app != NSD_STORE_APPLICATION_ID && (*tables > 0 || version != 0 || app != 0))
        return nsd_store_fail(
            err, s->path,
            "foreign SQLite database (application_id %lld, %lld tables): not a normstat "
            "store",
            (long long)app, (long long)*tables);
    if (version > NSD_STORE_SCHEMA_VERSION)
        return nsd_store_fail(
            err, s->path,
            "schema version %lld is newer than this build's %d: use a newer normstatd",
            (long long)version, NSD_STORE_SCHEMA_VERSION);
    if (app == NSD_STORE_APPLICATION_ID && version < 1)
        return nsd_store_fail(err, s->path, "schema version %lld unknown", (long long)version);
    /* New stores are created whole (create_new()): an existing file without
     * our tables is not a new directory, and starting empty over it could
     * hide data lost to it. */
    if (*tables == 0)
        return nsd_store_fail(err, s->path,
                              "database holds no normstat store (empty SQLite file): refusing to "
                              "start an empty store over it; remove it if the directory is new");
    s->version = version;
    return 0;
}

/* Whether the first row of 'sql' (a PRAGMA) is the text 'want'; 'got'
 * receives that text, or SQLite's error when there is none. */
static int query_text_is(sqlite3 *db, const char *sql, const char *want, char *got, size_t got_cap)
{
    sqlite3_stmt *st = NULL;
    const unsigned char *text = NULL;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
        text = sqlite3_column_text(st, 0);
    int is = text != NULL && strcmp((const char *)text, want) == 0;
    snprintf(got, got_cap, "%s", text ? (const char *)text : sqlite3_errmsg(db));
    sqlite3_finalize(st);
    return is;
}

/* PRAGMA quick_check of an existing database. @return 0 or NS_EIO (err). */
static int check_integrity(nsd_store_t *s, nsd_store_error_t *err)
{
    char what[200];
    int ok = query_text_is(s->db, "PRAGMA quick_check", "ok", what, sizeof(what));
    for (char *p = what; *p != '\0'; p++) /* one line */
        if (*p == '\n')
            *p = ' ';
    if (!ok)
        return nsd_store_fail(err, s->path, "database is corrupt (quick_check: %s)", what);
    return 0;
}

/* WAL, and full sync unless --no-fsync (store.h says what each survives).
 * @return 0 or NS_EIO (err). */
static int set_journal(nsd_store_t *s, nsd_store_error_t *err)
{
    sqlite3 *db = s->db;
    char mode[32];
    const char *sync = s->cfg.no_fsync ? "PRAGMA synchronous=NORMAL" : "PRAGMA synchronous=FULL";
    if (!query_text_is(db, "PRAGMA journal_mode=WAL", "wal", mode, sizeof(mode)))
        return nsd_store_fail(err, s->path, "cannot switch to WAL mode (%s)", sqlite3_errmsg(db));
    if (nsd_store_exec(db, sync) != SQLITE_OK)
        return nsd_store_fail(err, s->path, "cannot set %s (%s)", sync + 7, sqlite3_errmsg(db));
    if (nsd_store_exec(db, "PRAGMA temp_store=MEMORY") != SQLITE_OK) /* as create_new() */
        return nsd_store_fail(err, s->path, "cannot set temp_store (%s)", sqlite3_errmsg(db));
    /* Some builds of SQLite (Debian's) zero every page a DELETE frees, which
     * writes the log rows a snapshot replaces a second time; nothing here is
     * secret. */
    if (nsd_store_exec(db, "PRAGMA secure_delete=OFF") != SQLITE_OK)
        return nsd_store_fail(err, s->path, "cannot set secure_delete (%s)", sqlite3_errmsg(db));
    return 0;
}

/* Run 'fn' in one write transaction. @return 0 or NS_EIO (err). */
static int in_transaction(nsd_store_t *s, int (*fn)(nsd_store_t *), nsd_store_error_t *err)
{
    sqlite3 *db = s->db;
    int rc = nsd_store_exec(db, "BEGIN IMMEDIATE");
    rc = rc ? rc : fn(s);
    rc = rc ? rc : nsd_store_exec(db, "COMMIT");
    if (rc != SQLITE_OK) {
        int code = sqlite3_errcode(db);
        char msg[256];
        snprintf(msg, sizeof(msg), "%s", sqlite3_errmsg(db));
        if (!sqlite3_get_autocommit(db))
            nsd_store_exec(db, "ROLLBACK");
        if (code == SQLITE_CORRUPT || code == SQLITE_NOTADB)
            return nsd_store_fail(err, s->path, "database is corrupt (%s)", msg);
        return nsd_store_fail(err, s->path, "cannot write the database (%s)", msg);
    }
    return 0;
}

/* A store of an older version brought to this build's, in one transaction. */
static int upgrade(nsd_store_t *s)
{
    return migrate(s->db, s->version);
}

/* The write that proves the file writable, with the runs set aside. */
static int mark_opened(nsd_store_t *s)
{
    char sql[128];
    snprintf(sql, sizeof(sql), "INSERT OR REPLACE INTO meta VALUES('opened', '%llu')",
             (unsigned long long)nsd_wall_ms());
    int rc = nsd_store_set_aside(s);
    return rc ? rc : nsd_store_exec(s->db, sql);
}

/* A new store, created whole: written under a temporary name (rollback
 * journal, synchronous=FULL), then renamed into place and the directory
 * synced. A crash leaves either no normstat.db or a complete one, never a
 * file that the next start would have to take for new. @return 0 or NS_EIO. */
static int create_new(nsd_store_t *s, nsd_store_error_t *err)
{
    char tmp[sizeof(s->path) + 16], side[sizeof(tmp) + 16];
    snprintf(tmp, sizeof(tmp), "%s.new", s->path);
    snprintf(side, sizeof(side), "%s-journal", tmp);
    unlink(tmp); /* left by a crash in here: never renamed, so never used */
    unlink(side);
    sqlite3 *db = NULL;
    char sql[256], msg[256] = "";
    int rc = sqlite3_open_v2(tmp, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL);
    rc = rc ? rc : nsd_store_add_functions(db);
    rc = rc ? rc : nsd_store_exec(db, "PRAGMA synchronous=FULL");
    snprintf(sql, sizeof(sql), "PRAGMA page_size=%d", NSD_STORE_PAGE_SIZE);
    rc = rc ? rc : nsd_store_exec(db, sql);
    /* Temporary tables and sorts in memory: nothing outside --data-dir is
     * written (the root may be read-only). */
    rc = rc ? rc : nsd_store_exec(db, "PRAGMA temp_store=MEMORY");
    rc = rc ? rc : nsd_store_exec(db, "BEGIN IMMEDIATE");
    rc = rc ? rc : migrate(db, 0);
    snprintf(sql, sizeof(sql), "PRAGMA application_id=%d", NSD_STORE_APPLICATION_ID);
    rc = rc ? rc : nsd_store_exec(db, sql);
    snprintf(sql, sizeof(sql), "INSERT INTO meta VALUES('created', '%llu')",
             (unsigned long long)nsd_wall_ms());
    rc = rc ? rc : nsd_store_exec(db, sql);
    rc = rc ? rc : nsd_store_exec(db, "COMMIT");
    if (rc != SQLITE_OK)
        snprintf(msg, sizeof(msg), "%s", db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
    if (sqlite3_close(db) != SQLITE_OK && rc == SQLITE_OK) {
        rc = SQLITE_ERROR;
        snprintf(msg, sizeof(msg), "cannot close %s.new", NSD_STORE_FILE);
    }
    if (rc == SQLITE_OK && rename(tmp, s->path) != 0) {
        rc = SQLITE_ERROR;
        snprintf(msg, sizeof(msg), "rename: %s", strerror(errno));
    }
    if (rc == SQLITE_OK && fsync(s->dir_fd) != 0) {
        rc = SQLITE_ERROR;
        snprintf(msg, sizeof(msg), "fsync of the directory: %s", strerror(errno));
    }
    if (rc != SQLITE_OK) {
        unlink(tmp);
        unlink(side);
        return nsd_store_fail(err, s->path, "cannot create the database (%s)", msg);
    }
    return 0;
}

/* Validate the opened database, migrate it, verify its rows. Nothing is
 * written to a file that is not ours, nor to one whose rows are damaged. */
static int check_db(nsd_store_t *s, nsd_store_error_t *err)
{
    sqlite3 *db = s->db;
    int64_t tables = 0;
    int rc = check_identity(s, &tables, err);
    if (rc == 0)
        rc = check_integrity(s, err);
    if (rc == 0)
        rc = set_journal(s, err);
    if (rc == 0 && s->version < NSD_STORE_SCHEMA_VERSION) {
        rc = in_transaction(s, upgrade, err);
        if (rc == 0)
            nsd_log(NSD_LOG_INFO, "store_migrated", "from=%lld to=%d", (long long)s->version,
                    NSD_STORE_SCHEMA_VERSION);
    }
    if (rc == 0)
        rc = nsd_store_verify(s, err);
    if (rc == 0)
        rc = in_transaction(s, mark_opened, err);
    if (rc != 0)
        return rc;
    nsd_store_log_set_aside(s);
    /* Sequence numbers continue after the highest one stored. */
    int64_t a = query_int(db, "SELECT coalesce(max(seq), 0) FROM log", &rc);
    int64_t b =
        rc == SQLITE_OK ? query_int(db, "SELECT coalesce(max(seq), 0) FROM snapshot", &rc) : 0;
    if (rc != SQLITE_OK)
        return nsd_store_fail(err, s->path, "cannot read the database (%s)", sqlite3_errmsg(db));
    s->committed = (uint64_t)(a > b ? a : b);
    s->enqueued = s->committed;
    s->next_seq = s->committed + 1;
    return 0;
}

/* What is at the database path: a store (s->exists), nothing (a new
 * directory), or something refused: not a regular file, 0 bytes with no
 * WAL to hold its pages (a truncated store, not a new one), a WAL without
 * its database. @return 0 or NS_EIO (err). */
static int check_file(nsd_store_t *s, nsd_store_error_t *err)
{
    char wal[sizeof(s->path) + 8];
    snprintf(wal, sizeof(wal), "%s-wal", s->path);
    struct stat sb, wb;
    int have_wal = stat(wal, &wb) == 0 && S_ISREG(wb.st_mode) && wb.st_size > 0;
    if (stat(s->path, &sb) != 0) {
        if (errno != ENOENT)
            return nsd_store_fail(err, s->path, "cannot stat the database: %s", strerror(errno));
        if (have_wal)
            return nsd_store_fail(err, s->path,
                                  "database is missing but its write-ahead log %s-wal is there: "
                                  "refusing to start an empty store",
                                  NSD_STORE_FILE);
        s->exists = 0;
        return 0;
    }
    if (!S_ISREG(sb.st_mode))
        return nsd_store_fail(err, s->path, "database path is not a regular file");
    /* A store of an earlier release killed before its first checkpoint is
     * an empty file and a WAL holding everything: that one is opened. */
    if (sb.st_size == 0 && !have_wal)
        return nsd_store_fail(err, s->path,
                              "database is empty (0 bytes) but a new store is never an empty "
                              "file: it was truncated; remove it if the directory is new");
    s->exists = 1;
    return 0;
}

int nsd_store_open(nsd_store_t **dst, const char *dir, const nsd_store_config_t *cfg,
                   nsd_store_error_t *err)
{
    *dst = NULL;
    int rc = check_dir(dir, err);
    if (rc != 0)
        return rc;
    nsd_store_t *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return nsd_store_fail(err, dir, "out of memory");
    snprintf(s->path, sizeof(s->path), "%s/%s", dir, NSD_STORE_FILE);
    s->dir_fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (s->dir_fd < 0 || flock(s->dir_fd, LOCK_EX | LOCK_NB) != 0) {
        int e = errno;
        if (s->dir_fd >= 0)
            close(s->dir_fd);
        s->dir_fd = -1;
        free(s);
        if (e == EWOULDBLOCK)
            return nsd_store_fail(err, dir, "data directory is in use by another normstatd");
        return nsd_store_fail(err, dir, "cannot lock data directory: %s", strerror(e));
    }
    if (cfg != NULL)
        s->cfg = *cfg;
    if (s->cfg.retry_ms == 0)
        s->cfg.retry_ms = DEFAULT_RETRY_MS;
    pthread_mutex_init(&s->lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&s->cond, &ca);
    pthread_cond_init(&s->snap_cond, &ca);
    pthread_cond_init(&s->ckpt_cond, &ca);
    pthread_condattr_destroy(&ca);

    rc = check_file(s, err);
    if (rc == 0 && !s->exists)
        rc = create_new(s, err);
    if (rc != 0)
        goto fail;
    rc = sqlite3_open_v2(s->path, &s->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) {
        rc = nsd_store_fail(err, s->path, "cannot open the database (%s)",
                            s->db ? sqlite3_errmsg(s->db) : sqlite3_errstr(rc));
        goto fail;
    }
    sqlite3_busy_timeout(s->db, BUSY_TIMEOUT_MS);
    sqlite3_extended_result_codes(s->db, 0);
    if (nsd_store_add_functions(s->db) != SQLITE_OK) {
        rc = nsd_store_fail(err, s->path, "cannot open the database (%s)", sqlite3_errmsg(s->db));
        goto fail;
    }
    rc = check_db(s, err);
    if (rc != 0)
        goto fail;
    *dst = s;
    return 0;
fail:
    nsd_store_free(s);
    return NS_EIO;
}
