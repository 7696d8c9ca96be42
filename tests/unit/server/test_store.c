/* test_store.c - the SQLite store: refusing unusable data directories, the
 * log and snapshots, recovery giving the live registry's state bit for bit,
 * and failed commits that are retried. */
#include <check.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <sqlite3.h>

#include "harness.h"
#include "registry/registry.h"
#include "registry/step.h"
#include "store/store.h"
#include "store/store_codec.h"
#include "store_fixture.h"
#include "store/store_internal.h" /* nsd_store_add_functions(): rows with valid sums */

/* Waits on the store are bounded so a broken writer fails instead of hanging. */

static uint64_t rng, seed0;

/* Every test starts from the printed seed, forked or not. */
static void reseed(void)
{
    rng = seed0 ? seed0 : 1;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* ---------------------------------------------------------------- helpers */

static char *make_dir(void)
{
    char *tmpl = strdup("/tmp/nsd-test-store-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tmpl));
    return tmpl;
}

static void remove_tree(const char *dir)
{
    char cmd[512];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    ck_assert_int_eq(system(cmd), 0);
}

static void db_path(char *dst, size_t cap, const char *dir)
{
    snprintf(dst, cap, "%s/%s", dir, NSD_STORE_FILE);
}

static void write_file(const char *path, const void *src, size_t len)
{
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(src, 1, len, f), len);
    fclose(f);
}

/* The whole file, malloc'd (NULL if missing). */
static unsigned char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *buf = malloc((size_t)n + 1);
    ck_assert_uint_eq(fread(buf, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    *len = (size_t)n;
    return buf;
}

/* Run SQL on a database file with SQLite directly (independent of the store). */
static void sql_exec(const char *path, const char *sql)
{
    sqlite3 *db;
    ck_assert_int_eq(sqlite3_open(path, &db), SQLITE_OK);
    char *msg = NULL;
    int rc = sqlite3_exec(db, sql, NULL, NULL, &msg);
    ck_assert_msg(rc == SQLITE_OK, "%s: %s", sql, msg ? msg : "");
    sqlite3_close(db);
}

static int64_t sql_int(const char *path, const char *sql)
{
    sqlite3 *db;
    sqlite3_stmt *st;
    ck_assert_int_eq(sqlite3_open(path, &db), SQLITE_OK);
    ck_assert_int_eq(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
    ck_assert_int_eq(sqlite3_step(st), SQLITE_ROW);
    int64_t v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

static nsd_store_t *open_ok(const char *dir, uint64_t commit_ms, uint64_t snapshot_ms)
{
    nsd_store_config_t cfg = {
        .commit_interval_ms = commit_ms, .snapshot_interval_ms = snapshot_ms, .retry_ms = 20};
    nsd_store_error_t err = {0};
    nsd_store_t *s = NULL;
    int rc = nsd_store_open(&s, dir, &cfg, &err);
    ck_assert_msg(rc == 0, "open %s: %s: %s", dir, err.path, err.reason);
    return s;
}

/* Expect a refusal whose reason contains 'what'. */
static void open_refused(const char *dir, const char *what)
{
    nsd_store_error_t err = {0};
    memset(&err, 0, sizeof(err));
    nsd_store_t *s = NULL;
    ck_assert_int_eq(nsd_store_open(&s, dir, NULL, &err), NS_EIO);
    ck_assert_ptr_null(s);
    ck_assert_msg(strstr(err.reason, what) != NULL, "reason '%s' lacks '%s'", err.reason, what);
    ck_assert_msg(err.path[0] != '\0', "no path named");
}

/* A live registry whose changes go to a started store. */
static nsd_registry_t *live_registry(nsd_store_t *s)
{
    nsd_registry_t *reg = nsd_registry_create(NULL);
    ck_assert_ptr_nonnull(reg);
    nsd_persist_t hooks;
    nsd_store_hooks(s, &hooks);
    nsd_registry_set_persist(reg, &hooks);
    ck_assert_int_eq(nsd_store_start(s, reg), 0);
    return reg;
}

/* A registry recovered from the store in 'dir' (store opened and closed). */
static nsd_registry_t *recovered(const char *dir, nsd_store_recovery_t *out)
{
    nsd_store_t *s = open_ok(dir, 0, 0);
    nsd_registry_t *reg = nsd_registry_create(NULL);
    nsd_store_error_t err = {0};
    int rc = nsd_store_recover(s, reg, out, &err);
    ck_assert_msg(rc == 0, "recover: %s", err.reason);
    nsd_store_stop(s, 0);
    nsd_store_free(s);
    return reg;
}

/* Send one report built as JSON (random values), /batches style. */
static int send(nsd_registry_t *reg, const char *run, uint64_t step, uint32_t worker,
                const char *domain, const char *const *layers, const size_t *channels,
                size_t n_layers, uint64_t count, const char *update, uint64_t now_ms)
{
    json_t *ls = json_object();
    for (size_t i = 0; i < n_layers; i++) {
        json_t *m = json_array(), *v = json_array();
        for (size_t c = 0; c < channels[i]; c++) {
            json_array_append_new(m, json_real((float)ns_test_normal(&rng) * 3.0f));
            json_array_append_new(v, json_real((float)(0.1 + 2.0 * ns_test_uniform(&rng))));
        }
        json_object_set_new(
            ls, layers[i],
            json_pack("{s:I, s:o, s:o}", "count", (json_int_t)count, "mean", m, "var", v));
    }
    json_t *body = json_pack("{s:I, s:I, s:s, s:o}", "step", (json_int_t)step, "worker",
                             (json_int_t)worker, "domain", domain, "layers", ls);
    if (update != NULL)
        json_object_set_new(body, "update", json_pack("[s]", update));
    char *text = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    ns_report_t *rep = NULL;
    ns_error_detail_t err = {0};
    ck_assert_int_eq(ns_report_decode_json(&rep, text, strlen(text), &err), 0);
    free(text);
    return nsd_registry_report(reg, run, rep, now_ms, NULL, NULL, &err);
}

static char *export_text(nsd_registry_t *reg, const char *run)
{
    json_t *cp = nsd_registry_checkpoint_export(reg, run, NULL);
    ck_assert_msg(cp != NULL, "no checkpoint of %s", run);
    char *text = json_dumps(cp, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(cp);
    return text;
}

/* Every served statistic of 'run' (each source, each domain and "*"), as
 * the raw bytes of its doubles and scalars. */
static char *served_bytes(nsd_registry_t *reg, const char *run, size_t *len)
{
    json_t *info = nsd_registry_run_json(reg, run, 0, NULL);
    ck_assert_ptr_nonnull(info);
    json_t *doms = json_object_get(json_object_get(info, "status"), "domains");
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    for (int src = 0; src < 3; src++) {
        for (size_t d = 0; d <= json_array_size(doms); d++) {
            if (src == NSD_SOURCE_LAST && d > 0)
                break;
            nsd_stats_query_t q;
            memset(&q, 0, sizeof(q));
            q.source = (nsd_source_t)src;
            if (d > 0)
                snprintf(q.domain, sizeof(q.domain), "%s",
                         json_string_value(json_object_get(json_array_get(doms, d - 1), "domain")));
            nsd_stats_t *st = NULL;
            ck_assert_int_eq(nsd_registry_stats(reg, run, &q, &st, NULL), 0);
            for (size_t i = 0; i < st->n_layers; i++) {
                const ns_out_layer_t *l = &st->layers[i];
                size_t need = n + l->n_arrays * l->channels * 8 + l->n_scalars * 8 + 256;
                while (need > cap)
                    buf = realloc(buf, cap *= 2);
                n += (size_t)snprintf(buf + n, 256, "%d/%zu/%s:", src, d, l->name);
                for (size_t a = 0; a < l->n_arrays; a++) {
                    memcpy(buf + n, l->arrays[a], l->channels * 8);
                    n += l->channels * 8;
                }
                memcpy(buf + n, l->scalars, l->n_scalars * 8);
                n += l->n_scalars * 8;
            }
            nsd_stats_free(st);
        }
    }
    json_decref(info);
    *len = n;
    return buf;
}

/* Same checkpoint text and same served bytes. */
static void assert_same_state(nsd_registry_t *a, nsd_registry_t *b, const char *run)
{
    char *ta = export_text(a, run), *tb = export_text(b, run);
    ck_assert_msg(strcmp(ta, tb) == 0,
                  "checkpoint of %s differs:\nlive      %.600s\nrecovered %.600s", run, ta, tb);
    free(ta);
    free(tb);
    size_t la, lb;
    char *sa = served_bytes(a, run, &la), *sb = served_bytes(b, run, &lb);
    ck_assert_uint_eq(la, lb);
    ck_assert_msg(memcmp(sa, sb, la) == 0, "served statistics of %s differ", run);
    free(sa);
    free(sb);
}

static ns_run_config_t cfg_of(uint32_t world_size, double momentum)
{
    ns_run_config_t c;
    ns_run_config_defaults(&c);
    c.has_world_size = c.has_momentum = 1;
    c.world_size = world_size;
    c.momentum = momentum;
    return c;
}

/* ---------------------------------------------------------------- unusable directories */

START_TEST(test_open_creates_and_reopens)
{
    char *base = make_dir(), dir[300], path[400];
    snprintf(dir, sizeof(dir), "%s/data", base);
    nsd_store_t *s = open_ok(dir, 10, 0); /* created, parent exists */
    nsd_store_free(s);
    db_path(path, sizeof(path), dir);
    /* Independent reads of what the store wrote. */
    ck_assert_int_eq(sql_int(path, "PRAGMA user_version"), NSD_STORE_SCHEMA_VERSION);
    ck_assert_int_eq(sql_int(path, "PRAGMA application_id"), NSD_STORE_APPLICATION_ID);
    ck_assert_int_eq(sql_int(path, "SELECT count(*) FROM sqlite_master WHERE name='log'"), 1);
    s = open_ok(dir, 10, 0); /* reopened */
    /* A second daemon on the same directory is refused while this one runs. */
    open_refused(dir, "in use by another normstatd");
    nsd_store_free(s);
    s = open_ok(dir, 10, 0); /* the lock went with the first */
    nsd_store_free(s);
    remove_tree(base);
    free(base);
}
END_TEST

START_TEST(test_open_refuses_unusable)
{
    char *base = make_dir(), dir[300], path[400];
    /* The directory's parent is missing. */
    snprintf(dir, sizeof(dir), "%s/missing/data", base);
    open_refused(dir, "cannot create data directory");
    /* --data-dir is a regular file. */
    snprintf(dir, sizeof(dir), "%s/file", base);
    write_file(dir, "x", 1);
    open_refused(dir, "not a directory");
    /* normstat.db is a directory. */
    snprintf(dir, sizeof(dir), "%s/d1", base);
    mkdir(dir, 0700);
    db_path(path, sizeof(path), dir);
    mkdir(path, 0700);
    open_refused(dir, "not a regular file");
    /* normstat.db is not SQLite: refused and left as it was. */
    snprintf(dir, sizeof(dir), "%s/d2", base);
    mkdir(dir, 0700);
    db_path(path, sizeof(path), dir);
    char junk[8192];
    for (size_t i = 0; i < sizeof(junk); i++)
        junk[i] = (char)(ns_test_rand(&rng) & 0xff);
    memcpy(junk, "not sqlite at all", 17);
    write_file(path, junk, sizeof(junk));
    open_refused(dir, "not a normstat database");
    size_t len;
    unsigned char *after = read_file(path, &len);
    ck_assert_uint_eq(len, sizeof(junk));
    ck_assert(memcmp(after, junk, len) == 0);
    free(after);
    /* A foreign SQLite database: refused, untouched. */
    snprintf(dir, sizeof(dir), "%s/d3", base);
    mkdir(dir, 0700);
    db_path(path, sizeof(path), dir);
    sql_exec(path, "CREATE TABLE customers(id INTEGER PRIMARY KEY, name TEXT);"
                   "INSERT INTO customers VALUES(1, 'a');");
    size_t len0;
    unsigned char *before = read_file(path, &len0);
    open_refused(dir, "foreign SQLite database");
    after = read_file(path, &len);
    ck_assert_uint_eq(len, len0);
    ck_assert(memcmp(after, before, len) == 0);
    ck_assert_int_eq(sql_int(path, "SELECT count(*) FROM customers"), 1);
    free(before);
    free(after);
    /* A store of a newer schema version. */
    snprintf(dir, sizeof(dir), "%s/d4", base);
    nsd_store_free(open_ok(dir, 10, 0));
    db_path(path, sizeof(path), dir);
    char sql[64];
    snprintf(sql, sizeof(sql), "PRAGMA user_version=%d", NSD_STORE_SCHEMA_VERSION + 1);
    sql_exec(path, sql);
    open_refused(dir, "newer");
    ck_assert_int_eq(sql_int(path, "PRAGMA user_version"), NSD_STORE_SCHEMA_VERSION + 1);
    /* A read-only directory (root ignores permission bits: not testable then). */
    if (geteuid() != 0) {
        snprintf(dir, sizeof(dir), "%s/ro", base);
        mkdir(dir, 0700);
        chmod(dir, 0500);
        open_refused(dir, "not writable");
        chmod(dir, 0700);
    }
    remove_tree(base);
    free(base);
}
END_TEST

START_TEST(test_open_refuses_corrupt)
{
    char *base = make_dir(), dir[300], path[400];
    snprintf(dir, sizeof(dir), "%s/data", base);
    /* A store with enough rows for many pages, then a page overwritten. */
    nsd_store_t *s = open_ok(dir, 0, 0);
    nsd_registry_t *reg = live_registry(s);
    ns_run_config_t c = cfg_of(1, 0.1);
    ck_assert_int_eq(nsd_registry_put_run(reg, "r", &c, NULL, NULL), 0);
    const char *layers[] = {"a"};
    size_t ch[] = {64};
    for (uint64_t step = 0; step < 40; step++)
        ck_assert_int_eq(send(reg, "r", step, 0, "default", layers, ch, 1, 8, NULL, 0), 0);
    ck_assert_int_eq(wait_commit(s), 0);
    nsd_store_stop(s, 1000);
    nsd_registry_free(reg);
    nsd_store_free(s);
    db_path(path, sizeof(path), dir);
    /* Fold the WAL into the file so the damage below is what SQLite reads. */
    sql_exec(path, "PRAGMA wal_checkpoint(TRUNCATE)");
    int64_t page = sql_int(path, "PRAGMA page_size");
    int64_t pages = sql_int(path, "PRAGMA page_count");
    ck_assert_int_gt(pages, 4);
    int fd = open(path, O_WRONLY);
    ck_assert_int_ge(fd, 0);
    char garbage[65536];
    for (size_t i = 0; i < sizeof(garbage); i++)
        garbage[i] = (char)(ns_test_rand(&rng) & 0xff);
    for (int64_t p = 1; p < pages; p++) /* every page but the header's */
        ck_assert_int_eq(pwrite(fd, garbage, (size_t)page, (off_t)(p * page)), page);
    close(fd);
    open_refused(dir, "corrupt");
    remove_tree(base);
    free(base);
}
END_TEST

/* ---------------------------------------------------------------- recovery */

/* A varied history: two runs, domains, out-of-order completion, a partial
 * timeout, a PreciseBN reset, a momentum change, a precise-only pass, a
 * checkpoint import, a deleted run. Returns the live registry. */
static void history(nsd_registry_t *reg, nsd_store_t *s, int snapshots)
{
    const char *layers[] = {"layer1.0.bn1", "layer1.0.bn2", "zz"};
    size_t ch[] = {7, 33, 1};
    ns_run_config_t c = cfg_of(3, 0.1);
    c.has_sync_timeout_ms = 1;
    c.sync_timeout_ms = 1000;
    ck_assert_int_eq(nsd_registry_put_run(reg, "r1", &c, NULL, NULL), 0);
    const char *doms[] = {"photo", "sketch", "photo"};
    uint64_t now = 0;
    for (uint64_t step = 0; step < 30; step++) {
        now += 10;
        /* Workers in a scrambled order. */
        uint64_t st = step;
        for (uint32_t k = 0; k < 3; k++) {
            uint32_t w = (uint32_t)((k + st) % 3);
            uint64_t count = (st % 7 == 3 && w == 1) ? 0 : 5 + w;
            ck_assert_int_eq(send(reg, "r1", st, w, doms[w], layers, ch, 3, count, NULL, now), 0);
        }
        if (step == 8) {
            ck_assert_int_eq(nsd_registry_precise_reset(reg, "r1", "sketch", NULL, NULL), 0);
            ns_run_config_t m;
            memset(&m, 0, sizeof(m));
            m.has_momentum = 1;
            m.momentum = NS_MOMENTUM_CUMULATIVE;
            ck_assert_int_eq(nsd_registry_put_run(reg, "r1", &m, NULL, NULL), 0);
        }
        if (step == 15 && snapshots)
            ck_assert_int_eq(nsd_registry_snapshot(reg, "r1", NULL), 0);
        if (step == 20)
            ck_assert_int_eq(nsd_registry_precise_reset(reg, "r1", NULL, NULL, NULL), 0);
    }
    /* Precise-only pass, a new domain. */
    for (uint32_t w = 0; w < 3; w++)
        ck_assert_int_eq(send(reg, "r1", 40, w, "art", layers, ch, 2, 4, "precise", now), 0);
    /* Step 41: two of three workers, then finalized partial by its timeout. */
    for (uint32_t w = 0; w < 2; w++)
        ck_assert_int_eq(send(reg, "r1", 41, w, "art", layers, ch, 3, 4, NULL, now), 0);
    /* Step 43 completes while 42 is pending: finalized, held back. */
    ck_assert_int_eq(send(reg, "r1", 42, 0, "art", layers, ch, 3, 4, NULL, now + 500), 0);
    for (uint32_t w = 0; w < 3; w++)
        ck_assert_int_eq(send(reg, "r1", 43, w, "photo", layers, ch, 3, 4, NULL, now + 500), 0);
    nsd_registry_expire(reg, now + 1200); /* 41 partial; 42 still pending */
    if (snapshots)
        ck_assert_int_eq(nsd_registry_snapshot(reg, "r1", NULL), 0); /* 43 re-logged */
    /* A run created by a report, and one that is deleted. */
    ck_assert_int_eq(send(reg, "r2", 0, 0, "default", layers, ch, 1, 9, NULL, now), 0);
    ck_assert_int_eq(send(reg, "r3", 0, 0, "default", layers, ch, 1, 9, NULL, now), 0);
    ck_assert_int_eq(nsd_registry_delete_run(reg, "r3", NULL), 0);
    /* r4: restored from r1's checkpoint, then more steps. */
    char *cp = export_text(reg, "r1");
    ck_assert_int_eq(nsd_registry_checkpoint_import(reg, "r4", cp, strlen(cp), NULL), 0);
    free(cp);
    for (uint32_t w = 0; w < 3; w++)
        ck_assert_int_eq(send(reg, "r4", 50, w, "new", layers, ch, 3, 3, NULL, now), 0);
    ck_assert_int_eq(wait_commit(s), 0);
}

static void check_recovery(int snapshots)
{
    char *base = make_dir(), dir[300], path[400];
    snprintf(dir, sizeof(dir), "%s/data", base);
    nsd_store_t *s = open_ok(dir, 5, 0);
    nsd_registry_t *live = live_registry(s);
    history(live, s, snapshots);
    ck_assert_int_eq(nsd_store_stop(s, 1000), 0);
    nsd_registry_set_persist(live, NULL);
    nsd_store_free(s);
    db_path(path, sizeof(path), dir);
    ck_assert_int_eq(sql_int(path, "SELECT count(*) FROM log WHERE run = 'r3'"), 0);
    if (snapshots) {
        /* The log before each snapshot was truncated with it. */
        ck_assert_int_eq(sql_int(path, "SELECT count(*) FROM log l JOIN snapshot s ON l.run = "
                                       "s.run WHERE l.seq < s.seq"),
                         0);
        ck_assert_int_eq(sql_int(path, "SELECT count(*) FROM snapshot"), 2); /* r1, r4 */
    }

    nsd_store_recovery_t rec;
    nsd_registry_t *back = recovered(dir, &rec);
    nsd_counters_t cnt;
    nsd_registry_counters(back, &cnt);
    ck_assert_uint_eq(cnt.runs, 3);
    ck_assert_uint_eq(rec.runs, 3);
    ck_assert_ptr_null(nsd_registry_checkpoint_export(back, "r3", NULL));
    /* Pending steps are not durable: step 42 is gone, so the held step 43
     * is applied at the end of recovery, as the live registry applies it
     * once 42 is discarded. */
    ns_run_config_t drop;
    memset(&drop, 0, sizeof(drop));
    drop.has_on_timeout = 1;
    drop.on_timeout_drop = 1;
    ck_assert_int_eq(nsd_registry_put_run(live, "r1", &drop, NULL, NULL), 0);
    ck_assert_int_eq(nsd_registry_put_run(back, "r1", &drop, NULL, NULL), 0);
    nsd_registry_expire(live, UINT64_MAX / 2);
    assert_same_state(live, back, "r1");
    assert_same_state(live, back, "r2");
    assert_same_state(live, back, "r4");
    nsd_registry_free(back);
    nsd_registry_free(live);

    /* A second recovery (nothing written in between) is the same again. */
    nsd_registry_t *again = recovered(dir, &rec);
    char *t = export_text(again, "r4");
    ck_assert(strlen(t) > 100);
    free(t);
    nsd_registry_free(again);
    remove_tree(base);
    free(base);
}

START_TEST(test_recovery_from_log_is_bit_identical)
{
    check_recovery(0);
}
END_TEST

START_TEST(test_recovery_from_snapshots_is_bit_identical)
{
    check_recovery(1);
}
END_TEST

/* A store on 'dir' and a live registry logging to it: run "p" (layers a, b
 * of 5 and 3 channels) given steps 0 .. steps-1, committed, and waited for
 * (bounded) until the writer's periodic snapshot of it is committed too. */
static nsd_registry_t *live_until_snapshot(const char *dir, uint64_t steps, nsd_store_t **store)
{
    nsd_store_t *s = open_ok(dir, 1, 1);
    nsd_registry_t *live = live_registry(s);
    ns_run_config_t c = cfg_of(1, 0.25);
    ck_assert_int_eq(nsd_registry_put_run(live, "p", &c, NULL, NULL), 0);
    const char *layers[] = {"a", "b"};
    size_t ch[] = {5, 3};
    for (uint64_t step = 0; step < steps; step++)
        ck_assert_int_eq(send(live, "p", step, 0, "default", layers, ch, 2, 6, NULL, 0), 0);
    ck_assert_int_eq(wait_commit(s), 0);
    nsd_store_stats_t st;
    for (int i = 0; i < WAIT_LIMIT_S * 100; i++) {
        nsd_store_stats(s, &st);
        if (st.snapshots > 0)
            break;
        sleep_ms(10);
    }
    ck_assert_uint_gt(st.snapshots, 0);
    *store = s;
    return live;
}

/* The writer's own periodic snapshots truncate the log and keep the state. */
START_TEST(test_periodic_snapshots)
{
    char *base = make_dir(), dir[300], path[400];
    snprintf(dir, sizeof(dir), "%s/data", base);
    nsd_store_t *s;
    nsd_registry_t *live = live_until_snapshot(dir, 50, &s);
    const char *layers[] = {"a", "b"};
    size_t ch[] = {5, 3};
    for (uint64_t step = 50; step < 60; step++)
        ck_assert_int_eq(send(live, "p", step, 0, "default", layers, ch, 2, 6, NULL, 0), 0);
    ck_assert_int_eq(wait_commit(s), 0);
    ck_assert_int_eq(nsd_store_stop(s, 1000), 0);
    nsd_registry_set_persist(live, NULL);
    nsd_store_free(s);
    db_path(path, sizeof(path), dir);
    ck_assert_int_eq(sql_int(path, "SELECT count(*) FROM snapshot"), 1);
    ck_assert_int_lt(sql_int(path, "SELECT count(*) FROM log"), 2 * 60);
    nsd_store_recovery_t rec;
    nsd_registry_t *back = recovered(dir, &rec);
    ck_assert_uint_eq(rec.snapshots, 1);
    assert_same_state(live, back, "p");
    nsd_registry_free(back);
    nsd_registry_free(live);
    remove_tree(base);
    free(base);
}
END_TEST

/* Rows older than a snapshot that a kill left in the log (their deletion
 * comes after the snapshot's commit): recovery skips them and the next start
 * deletes them. */
START_TEST(test_rows_below_a_snapshot_skipped_then_deleted)
{
    char *base = make_dir(), dir[300], path[400];
    snprintf(dir, sizeof(dir), "%s/data", base);
    nsd_store_t *s;
    nsd_registry_t *live = live_until_snapshot(dir, 30, &s);
    ck_assert_int_eq(nsd_store_stop(s, 1000), 0);
    nsd_registry_set_persist(live, NULL);
    nsd_store_free(s);
    db_path(path, sizeof(path), dir);
    const char *below = "SELECT count(*) FROM log l JOIN snapshot s ON l.run = s.run "
                        "WHERE l.seq < s.seq";
    ck_assert_int_eq(sql_int(path, below), 0); /* a stop finishes the deletion */

    /* As a kill before the deletion leaves it: a step's row (with a valid
     * checksum) under the snapshot's seq; replayed, it would change layer a. */
    nsd_step_t *old = nsd_step_create("a", 3, 5);
    ck_assert_ptr_nonnull(old);
    old->count = 6;
    old->workers = 1;
    for (size_t i = 0; i < 5; i++) {
        old->mean[i] = 100.0 + (double)i;
        old->var[i] = 7.0;
    }
    size_t body_len = 0;
    unsigned char *body = nsd_step_encode(old, &body_len);
    ck_assert_ptr_nonnull(body);
    nsd_step_free(old);
    sqlite3 *db = NULL;
    sqlite3_stmt *ins = NULL;
    ck_assert_int_eq(sqlite3_open(path, &db), SQLITE_OK);
    ck_assert_int_eq(nsd_store_add_functions(db), SQLITE_OK);
    ck_assert_int_eq(sqlite3_prepare_v2(db,
                                        "INSERT INTO log(seq, run, kind, layer, step, body, crc) "
                                        "VALUES(1, 'p', 3, 'a', 3, ?1, "
                                        "ns_log_sum(1, 'p', 3, 'a', 3, ?1))",
                                        -1, &ins, NULL),
                     SQLITE_OK);
    sqlite3_bind_blob(ins, 1, body, (int)body_len, SQLITE_STATIC);
    ck_assert_int_eq(sqlite3_step(ins), SQLITE_DONE);
    sqlite3_finalize(ins);
    sqlite3_close(db);
    free(body);
    ck_assert_int_eq(sql_int(path, below), 1);

    /* Recovery skips it; the store started on it deletes it. */
    s = open_ok(dir, 1, 0);
    nsd_registry_t *back = nsd_registry_create(NULL);
    nsd_store_recovery_t rec;
    nsd_store_error_t err = {0};
    ck_assert_msg(nsd_store_recover(s, back, &rec, &err) == 0, "recover: %s", err.reason);
    assert_same_state(live, back, "p");
    nsd_persist_t hooks;
    nsd_store_hooks(s, &hooks);
    nsd_registry_set_persist(back, &hooks);
    ck_assert_int_eq(nsd_store_start(s, back), 0);
    ck_assert_int_eq(nsd_store_stop(s, 1000), 0);
    nsd_registry_set_persist(back, NULL);
    nsd_store_free(s);
    ck_assert_int_eq(sql_int(path, below), 0);
    nsd_registry_free(back);
    nsd_registry_free(live);
    remove_tree(base);
    free(base);
}
END_TEST

/* A pass's snapshot copied under the run's lock and queued later: a step
 * that finalized in between stays in the log and is replayed on top of it
 * (a snapshot that took the queue's seq would have dropped it), a held
 * step handed to it is logged again, and a run deleted in between is not
 * brought back by it. The hooks are driven by hand to make the interleaving. */
START_TEST(test_snapshot_copied_then_queued)
{
    char *base = make_dir(), dir[300], path[400];
    snprintf(dir, sizeof(dir), "%s/data", base);
    nsd_store_t *s = open_ok(dir, 1, 0);
    nsd_registry_t *live = live_registry(s);
    nsd_persist_t hooks;
    nsd_store_hooks(s, &hooks);
    ns_run_config_t c = cfg_of(1, 0.25);
    ck_assert_int_eq(nsd_registry_put_run(live, "p", &c, NULL, NULL), 0);
    ck_assert_int_eq(nsd_registry_put_run(live, "q", &c, NULL, NULL), 0);
    const char *layers[] = {"a", "b"};
    size_t ch[] = {5, 3};
    for (uint64_t step = 0; step < 10; step++) {
        ck_assert_int_eq(send(live, "p", step, 0, "default", layers, ch, 2, 6, NULL, 0), 0);
        ck_assert_int_eq(send(live, "q", step, 0, "default", layers, ch, 2, 6, NULL, 0), 0);
    }
    ck_assert_int_eq(wait_commit(s), 0);

    /* p: the copy, then step 10, then the JSON of the copy. */
    json_t *state = nsd_registry_checkpoint_export(live, "p", NULL);
    ck_assert_ptr_nonnull(state);
    nsd_queue_t held = {0};
    nsd_step_t *h = nsd_step_create("held", 7, 2);
    h->count = 4;
    h->mean[0] = 1.5, h->mean[1] = -2.25, h->var[0] = 0.5, h->var[1] = 3.0;
    nsd_queue_push(&held, &h->link);
    void *ticket = hooks.snapshot_begin(hooks.arg, "p", &held);
    ck_assert_ptr_nonnull(ticket);
    ck_assert_int_eq(send(live, "p", 10, 0, "default", layers, ch, 2, 6, NULL, 0), 0);
    hooks.snapshot_end(hooks.arg, ticket, json_dumps(state, JSON_COMPACT));
    json_decref(state);
    nsd_step_free(h);

    /* q: the copy, then DELETE, then the JSON. */
    state = nsd_registry_checkpoint_export(live, "q", NULL);
    held = (nsd_queue_t){0};
    ticket = hooks.snapshot_begin(hooks.arg, "q", &held);
    ck_assert_int_eq(nsd_registry_delete_run(live, "q", NULL), 0);
    hooks.snapshot_end(hooks.arg, ticket, json_dumps(state, JSON_COMPACT));
    json_decref(state);

    ck_assert_int_eq(wait_commit(s), 0);
    ck_assert_int_eq(nsd_store_stop(s, 1000), 0);
    nsd_registry_set_persist(live, NULL);
    nsd_store_free(s);
    db_path(path, sizeof(path), dir);
    ck_assert_int_eq(sql_int(path, "SELECT count(*) FROM snapshot WHERE run = 'q'"), 0);
    ck_assert_int_eq(sql_int(path, "SELECT count(*) FROM log WHERE run = 'q'"), 0);
    ck_assert_int_eq(sql_int(path, "SELECT count(*) FROM snapshot WHERE run = 'p'"), 1);
    /* The held step's row right at the snapshot's seq; step 10's rows after. */
    ck_assert_int_eq(sql_int(path, "SELECT count(*) FROM log WHERE run = 'p' AND layer = 'held'"
                                   " AND seq = (SELECT seq FROM snapshot WHERE run = 'p')"),
                     1);
    ck_assert_int_eq(sql_int(path, "SELECT count(*) FROM log WHERE run = 'p' AND step = 10 AND "
                                   "seq > (SELECT seq FROM snapshot WHERE run = 'p')"),
                     2);
    ck_assert_int_eq(sql_int(path, "SELECT count(*) FROM log WHERE run = 'p' AND step < 10 AND "
                                   "layer <> 'held'"),
                     0);
    sql_exec(path, "DELETE FROM log WHERE layer = 'held'"); /* a layer the live run never had */
    nsd_store_recovery_t rec;
    nsd_registry_t *back = recovered(dir, &rec);
    ck_assert_uint_eq(rec.snapshots, 1);
    assert_same_state(live, back, "p");
    ck_assert_ptr_null(nsd_registry_checkpoint_export(back, "q", NULL));
    nsd_registry_free(back);
    nsd_registry_free(live);
    remove_tree(base);
    free(base);
}
END_TEST

/* An independent check of the replayed EMA: world_size 1, known momentum,
 * the EMA recomputed here from the reports' float values. */
START_TEST(test_recovered_ema_matches_reference)
{
    char *base = make_dir(), dir[300];
    snprintf(dir, sizeof(dir), "%s/data", base);
    nsd_store_t *s = open_ok(dir, 0, 0);
    nsd_registry_t *live = live_registry(s);
    ns_run_config_t c = cfg_of(1, 0.3);
    ck_assert_int_eq(nsd_registry_put_run(live, "e", &c, NULL, NULL), 0);
    long double rm = 0.0L, rv = 1.0L;
    for (uint64_t step = 0; step < 20; step++) {
        float mean = (float)ns_test_normal(&rng), var = (float)(0.5 + ns_test_uniform(&rng));
        uint64_t n = 4 + step % 5;
        char text[256];
        snprintf(text, sizeof(text),
                 "{\"step\":%llu,\"worker\":0,\"layers\":{\"x\":{\"count\":%llu,\"mean\":[%.9g],"
                 "\"var\":[%.9g]}}}",
                 (unsigned long long)step, (unsigned long long)n, (double)mean, (double)var);
        ns_report_t *rep = NULL;
        ck_assert_int_eq(ns_report_decode_json(&rep, text, strlen(text), NULL), 0);
        ck_assert_int_eq(nsd_registry_report(live, "e", rep, 0, NULL, NULL, NULL), 0);
        rm = 0.7L * rm + 0.3L * (long double)mean;
        rv = 0.7L * rv + 0.3L * (long double)var * (long double)n / (long double)(n - 1);
    }
    ck_assert_int_eq(wait_commit(s), 0);
    nsd_store_stop(s, 1000);
    nsd_registry_set_persist(live, NULL);
    nsd_store_free(s);
    nsd_store_recovery_t rec;
    nsd_registry_t *back = recovered(dir, &rec);
    ck_assert_uint_eq(rec.steps, 20);
    nsd_stats_query_t q;
    memset(&q, 0, sizeof(q));
    nsd_stats_t *st = NULL;
    ck_assert_int_eq(nsd_registry_stats(back, "e", &q, &st, NULL), 0);
    ck_assert_uint_eq(st->n_layers, 1);
    ck_assert(fabsl((long double)st->layers[0].arrays[0][0] - rm) <= 1e-12L * (1 + fabsl(rm)));
    ck_assert(fabsl((long double)st->layers[0].arrays[1][0] - rv) <= 1e-12L * (1 + fabsl(rv)));
    ck_assert_int_eq(st->layers[0].scalars[0], 20); /* num_batches_tracked */
    nsd_stats_free(st);
    nsd_registry_free(back);
    nsd_registry_free(live);
    remove_tree(base);
    free(base);
}
END_TEST

/* ---------------------------------------------------------------- failures */

START_TEST(test_failed_commit_is_retried)
{
    char *base = make_dir(), dir[300];
    snprintf(dir, sizeof(dir), "%s/data", base);
    nsd_store_t *s = open_ok(dir, 0, 0);
    nsd_registry_t *live = live_registry(s);
    ns_run_config_t c = cfg_of(2, 0.1);
    ck_assert_int_eq(nsd_registry_put_run(live, "f", &c, NULL, NULL), 0);
    ck_assert_int_eq(wait_commit(s), 0);
    ck_assert_int_eq(nsd_store_status(s), 0);
    const char *layers[] = {"a"};
    size_t ch[] = {9};
    /* Three commits fail: the waiter hears NS_EIO, the store says failing. */
    nsd_store_fail_commits(s, 3);
    for (uint32_t w = 0; w < 2; w++)
        ck_assert_int_eq(send(live, "f", 0, w, "default", layers, ch, 1, 5, NULL, 0), 0);
    ck_assert_int_eq(wait_commit(s), NS_EIO);
    ck_assert_int_eq(nsd_store_status(s), NS_EIO);
    nsd_store_stats_t st;
    nsd_store_stats(s, &st);
    ck_assert_uint_ge(st.commit_failures, 1);
    ck_assert_int_eq(st.failing, 1);
    /* Changes made meanwhile queue behind the failed batch. */
    for (uint32_t w = 0; w < 2; w++)
        ck_assert_int_eq(send(live, "f", 1, w, "default", layers, ch, 1, 5, NULL, 0), 0);
    /* The retries succeed after the injected failures (bounded wait). */
    for (int i = 0; i < WAIT_LIMIT_S * 100 && nsd_store_status(s) != 0; i++)
        sleep_ms(10);
    ck_assert_int_eq(nsd_store_status(s), 0);
    ck_assert_int_eq(wait_commit(s), 0);
    nsd_store_stats(s, &st);
    ck_assert_uint_eq(st.commit_failures, 3);
    ck_assert_int_eq(nsd_store_stop(s, 1000), 0);
    nsd_registry_set_persist(live, NULL);
    nsd_store_free(s);
    nsd_store_recovery_t rec;
    nsd_registry_t *back = recovered(dir, &rec);
    ck_assert_uint_eq(rec.steps, 2);
    assert_same_state(live, back, "f");
    nsd_registry_free(back);
    nsd_registry_free(live);
    remove_tree(base);
    free(base);
}
END_TEST

/* A store that cannot commit at stop reports it (the daemon exits 1). */
START_TEST(test_stop_reports_lost_changes)
{
    char *base = make_dir(), dir[300];
    snprintf(dir, sizeof(dir), "%s/data", base);
    nsd_store_t *s = open_ok(dir, 0, 0);
    nsd_registry_t *live = live_registry(s);
    nsd_store_fail_commits(s, 1000000);
    ns_run_config_t c = cfg_of(1, 0.1);
    ck_assert_int_eq(nsd_registry_put_run(live, "x", &c, NULL, NULL), 0);
    ck_assert_int_eq(wait_commit(s), NS_EIO);
    ck_assert_int_eq(nsd_store_stop(s, 50), NS_EIO);
    /* After the stop, waiting reports that nothing more will be committed. */
    ck_assert_int_eq(wait_commit(s), NS_ESHUTDOWN);
    nsd_registry_set_persist(live, NULL);
    nsd_store_free(s);
    nsd_store_recovery_t rec;
    nsd_registry_t *back = recovered(dir, &rec);
    ck_assert_uint_eq(rec.runs, 0);
    nsd_registry_free(back);
    nsd_registry_free(live);
    remove_tree(base);
    free(base);
}
END_TEST

/* Flip one bit of the body of log row 'seq', through SQLite: a change that
 * no SQLite check can see. */
static void flip_body_bit(const char *path, int64_t seq, size_t at)
{
    sqlite3 *db;
    sqlite3_stmt *st;
    ck_assert_int_eq(sqlite3_open(path, &db), SQLITE_OK);
    ck_assert_int_eq(sqlite3_prepare_v2(db, "SELECT body FROM log WHERE seq = ?1", -1, &st, NULL),
                     SQLITE_OK);
    sqlite3_bind_int64(st, 1, seq);
    ck_assert_int_eq(sqlite3_step(st), SQLITE_ROW);
    size_t len = (size_t)sqlite3_column_bytes(st, 0);
    ck_assert_uint_gt(len, at);
    unsigned char *body = malloc(len);
    memcpy(body, sqlite3_column_blob(st, 0), len);
    sqlite3_finalize(st);
    body[at] ^= 0x04;
    ck_assert_int_eq(
        sqlite3_prepare_v2(db, "UPDATE log SET body = ?2 WHERE seq = ?1", -1, &st, NULL),
        SQLITE_OK);
    sqlite3_bind_int64(st, 1, seq);
    sqlite3_bind_blob(st, 2, body, (int)len, SQLITE_TRANSIENT);
    ck_assert_int_eq(sqlite3_step(st), SQLITE_DONE);
    sqlite3_finalize(st);
    sqlite3_close(db);
    free(body);
}

/* A row that fails its checksum refuses the open, naming row and run, and
 * writes nothing; skip_damaged_runs moves that run aside and keeps the
 * other one bit for bit. A 0-byte normstat.db is not a new store. */
START_TEST(test_open_verifies_row_checksums)
{
    char *base = make_dir(), dir[300], path[400], want[128];
    snprintf(dir, sizeof(dir), "%s/data", base);
    nsd_store_t *s = open_ok(dir, 0, 0);
    nsd_registry_t *live = live_registry(s);
    ns_run_config_t c = cfg_of(1, 0.1);
    ck_assert_int_eq(nsd_registry_put_run(live, "r", &c, NULL, NULL), 0);
    ck_assert_int_eq(nsd_registry_put_run(live, "q", &c, NULL, NULL), 0);
    const char *layers[] = {"a"};
    size_t ch[] = {8};
    for (uint64_t step = 0; step < 4; step++) {
        ck_assert_int_eq(send(live, "r", step, 0, "default", layers, ch, 1, 8, NULL, 0), 0);
        ck_assert_int_eq(send(live, "q", step, 0, "default", layers, ch, 1, 8, NULL, 0), 0);
    }
    ck_assert_int_eq(wait_commit(s), 0);
    nsd_store_stop(s, 1000);
    nsd_registry_set_persist(live, NULL);
    nsd_store_free(s);
    db_path(path, sizeof(path), dir);
    int64_t seq = sql_int(path, "SELECT max(seq) FROM log WHERE run = 'r' AND kind = 3");
    flip_body_bit(path, seq, 80); /* inside the pooled means (after 9 u64 fields) */
    sql_exec(path, "PRAGMA wal_checkpoint(TRUNCATE)");
    size_t len0, len;
    unsigned char *before = read_file(path, &len0);
    snprintf(want, sizeof(want), "checksum mismatch in log row %lld of run r", (long long)seq);
    open_refused(dir, want);
    unsigned char *after = read_file(path, &len);
    ck_assert(len == len0 && memcmp(before, after, len) == 0);
    free(before);
    free(after);

    nsd_store_config_t cfg = {.skip_damaged_runs = 1};
    nsd_store_error_t err = {0};
    ck_assert_int_eq(nsd_store_open(&s, dir, &cfg, &err), 0);
    nsd_store_free(s);
    ck_assert_int_eq(sql_int(path, "SELECT count(*) FROM log WHERE run = 'r'"), 0);
    ck_assert_int_eq(sql_int(path, "SELECT count(*) FROM damaged_log WHERE run = 'r'"), 6);
    nsd_store_recovery_t rec;
    nsd_registry_t *back = recovered(dir, &rec); /* no option needed any more */
    ck_assert_uint_eq(rec.runs, 1);
    assert_same_state(live, back, "q");
    nsd_registry_free(back);
    nsd_registry_free(live);

    /* 0 bytes: refused and left so; a missing file is a new store. */
    write_file(path, "", 0);
    char wal[420];
    snprintf(wal, sizeof(wal), "%s-wal", path);
    remove(wal);
    open_refused(dir, "0 bytes");
    struct stat sb;
    ck_assert_int_eq(stat(path, &sb), 0);
    ck_assert_int_eq(sb.st_size, 0);
    remove(path);
    nsd_store_free(open_ok(dir, 0, 0));
    ck_assert_int_eq(sql_int(path, "PRAGMA user_version"), NSD_STORE_SCHEMA_VERSION);
    remove_tree(base);
    free(base);
}
END_TEST

static Suite *make_suite(void)
{
    seed0 = ns_test_seed();
    Suite *s = suite_create("store");
    TCase *tc = tcase_create("store");
    tcase_add_checked_fixture(tc, reseed, NULL);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_open_creates_and_reopens);
    tcase_add_test(tc, test_open_refuses_unusable);
    tcase_add_test(tc, test_open_refuses_corrupt);
    tcase_add_test(tc, test_recovery_from_log_is_bit_identical);
    tcase_add_test(tc, test_recovery_from_snapshots_is_bit_identical);
    tcase_add_test(tc, test_periodic_snapshots);
    tcase_add_test(tc, test_rows_below_a_snapshot_skipped_then_deleted);
    tcase_add_test(tc, test_snapshot_copied_then_queued);
    tcase_add_test(tc, test_recovered_ema_matches_reference);
    tcase_add_test(tc, test_failed_commit_is_retried);
    tcase_add_test(tc, test_stop_reports_lost_changes);
    tcase_add_test(tc, test_open_verifies_row_checksums);
    suite_add_tcase(s, tc);
    return s;
}

NS_TEST_MAIN(make_suite)
