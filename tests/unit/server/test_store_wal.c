/* test_store_wal.c - the store's WAL stays bounded (its checkpoints copy it
 * into the database file and it starts over), whether each commit is awaited,
 * the writer never idles, or 100 MiB wait for it at once (a group commit
 * takes at most 16 MiB of them), and every step written across those
 * restarts reads back bit for bit. */
#include <check.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <sqlite3.h>

#include "harness.h"
#include "registry/registry.h"
#include "registry/step.h"
#include "store/store.h"
#include "store/store_codec.h"
#include "store_fixture.h"

/* 512 KiB of doubles a step (none a float32: 8 bytes a value are stored). */
#define CHANNELS 32768
/* 160 MiB of log in all, committed 2 MiB at a time: 2.5 times the bound. */
#define STEPS        320
#define STEPS_COMMIT 4

static uint64_t rng;

/* A double that is not a float32 widened. */
static double wide_double(void)
{
    double x = (double)(ns_test_rand(&rng) >> 11) * 0x1p-53 * 4.0 - 2.0;
    return (double)(float)x == x ? x + 0x1p-40 : x;
}

static long long file_size(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0 ? (long long)sb.st_size : 0;
}

/* Step k's arrays: one of VARIANTS sets made up front, so that queueing a
 * step costs the producer no more than the hook's copy. */
#define VARIANTS 16
static double variant_mean[VARIANTS][CHANNELS], variant_var[VARIANTS][CHANNELS];

static void make_variants(void)
{
    rng = ns_test_seed();
    for (size_t v = 0; v < VARIANTS; v++)
        for (size_t c = 0; c < CHANNELS; c++) {
            variant_mean[v][c] = wide_double();
            variant_var[v][c] = 1.0 + wide_double();
        }
}

static nsd_step_t *make_step(uint64_t k)
{
    nsd_step_t *st = nsd_step_create("layer", k, CHANNELS);
    ck_assert_ptr_nonnull(st);
    st->count = 64;
    st->workers = 2;
    memcpy(st->mean, variant_mean[k % VARIANTS], sizeof(variant_mean[0]));
    memcpy(st->var, variant_var[k % VARIANTS], sizeof(variant_var[0]));
    return st;
}

/* Queue at most this many steps ahead of the writer when it must not idle. */
#define AHEAD 8

/* Until fewer than AHEAD jobs wait (a bounded poll: the writer is busy). */
static void wait_queue_below(nsd_store_t *s)
{
    for (int i = 0; i < WAIT_LIMIT_S * 1000; i++) {
        nsd_store_stats_t st;
        nsd_store_stats(s, &st);
        if (st.queued < AHEAD)
            return;
        struct timespec ts = {0, 1000000L};
        nanosleep(&ts, NULL);
    }
    ck_abort_msg("the writer took no job within %d s", WAIT_LIMIT_S);
}

enum { PACED, NEVER_IDLE, BACKLOG };
/* The steps of a backlog queued before the writer takes any: 100 MiB. */
#define BACKLOG_STEPS 200

/* Steps through a store: each commit awaited (PACED), queued as fast as the
 * writer takes them, or all queued at once; then the WAL's size and every
 * row. */
static void write_and_check(int mode)
{
    make_variants();
    char dir[] = "/tmp/nsd-test-store-wal-XXXXXX", db[256], wal[300];
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(db, sizeof(db), "%s/%s", dir, NSD_STORE_FILE);
    snprintf(wal, sizeof(wal), "%s-wal", db);

    /* A backlog: the writer waits for a commit window longer than the test
     * until the final wait_commit() asks for the commit. */
    nsd_store_config_t cfg = {.commit_interval_ms = mode == BACKLOG ? 600000 : 0,
                              .snapshot_interval_ms = 0,
                              .retry_ms = 20};
    nsd_store_error_t err = {0};
    nsd_store_t *s = NULL;
    ck_assert_msg(nsd_store_open(&s, dir, &cfg, &err) == 0, "open: %s", err.reason);
    nsd_registry_t *reg = nsd_registry_create(NULL);
    ck_assert_ptr_nonnull(reg);
    nsd_persist_t hooks;
    nsd_store_hooks(s, &hooks);
    ck_assert_int_eq(nsd_store_start(s, reg), 0);

    uint64_t steps = mode == BACKLOG ? BACKLOG_STEPS : STEPS;
    for (uint64_t k = 0; k < steps; k++) {
        if (mode == NEVER_IDLE)
            wait_queue_below(s);
        nsd_step_t *st = make_step(k);
        hooks.step_finalized(hooks.arg, "r", st);
        nsd_step_free(st);
        if (mode == PACED && (k + 1) % STEPS_COMMIT == 0)
            ck_assert_int_eq(wait_commit(s), 0);
    }
    ck_assert_int_eq(wait_commit(s), 0);
    /* The file never shrinks while the store is open (closing removes
     * it): its size now is the most the WAL ever held. */
    long long wal_max = file_size(wal);
    ck_assert_int_eq(nsd_store_stop(s, 10000), 0);
    nsd_store_free(s);
    nsd_registry_free(reg);

    /* Without checkpoints the WAL holds all of it (and one commit of a
     * whole backlog would); with them it starts over near the bound, one
     * commit past it at most. */
    long long bound = (long long)NSD_STORE_WAL_BOUND_BYTES + (16LL << 20);
    ck_assert_msg(wal_max > 0, "no WAL file while the store was open");
    ck_assert_msg(wal_max <= bound, "WAL grew to %lld bytes (bound %lld)", wal_max, bound);

    /* Every step reads back with the very bits written. */
    sqlite3 *h = NULL;
    sqlite3_stmt *q = NULL;
    ck_assert_int_eq(sqlite3_open_v2(db, &h, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    ck_assert_int_eq(sqlite3_prepare_v2(h,
                                        "SELECT step, body FROM log WHERE run = 'r' ORDER BY seq",
                                        -1, &q, NULL),
                     SQLITE_OK);
    uint64_t n = 0;
    while (sqlite3_step(q) == SQLITE_ROW) {
        uint64_t k = (uint64_t)sqlite3_column_int64(q, 0);
        ck_assert_uint_eq(k, n);
        nsd_step_t *got = NULL;
        ck_assert_int_eq(nsd_step_decode(sqlite3_column_blob(q, 1),
                                         (size_t)sqlite3_column_bytes(q, 1), "layer", &got),
                         0);
        nsd_step_t *want = make_step(k);
        ck_assert_uint_eq(got->channels, CHANNELS);
        ck_assert_msg(memcmp(got->mean, want->mean, CHANNELS * sizeof(double)) == 0 &&
                          memcmp(got->var, want->var, CHANNELS * sizeof(double)) == 0,
                      "step %llu: arrays differ", (unsigned long long)k);
        nsd_step_free(got);
        nsd_step_free(want);
        n++;
    }
    sqlite3_finalize(q);
    sqlite3_close(h);
    ck_assert_uint_eq(n, steps);
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    ck_assert_int_eq(system(cmd), 0);
}

START_TEST(test_wal_bounded_commits_awaited)
{
    write_and_check(PACED);
}
END_TEST

START_TEST(test_wal_bounded_writer_never_idle)
{
    write_and_check(NEVER_IDLE);
}
END_TEST

START_TEST(test_wal_bounded_after_a_backlog)
{
    write_and_check(BACKLOG);
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("store_wal");
    TCase *tc = tcase_create("store_wal");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_wal_bounded_commits_awaited);
    tcase_add_test(tc, test_wal_bounded_writer_never_idle);
    tcase_add_test(tc, test_wal_bounded_after_a_backlog);
    suite_add_tcase(s, tc);
    return s;
}

NS_TEST_MAIN(make_suite)
