/* test_run_health.c - the limit on logging refused reports and the per-run
 * rejection counts (nsd_registry_note_rejection), on the registry's clock
 * argument: by count, never by time. */
#include <pthread.h>
#include <stdlib.h>

#include "harness.h"
#include "registry/registry.h"

static nsd_registry_t *with_run(const char *run)
{
    nsd_registry_t *reg = nsd_registry_create(NULL);
    ck_assert_ptr_nonnull(reg);
    ns_run_config_t cfg;
    ns_run_config_defaults(&cfg);
    ck_assert_int_eq(nsd_registry_put_run(reg, run, &cfg, NULL, NULL), 0);
    return reg;
}

static size_t slot_of(int code)
{
    for (size_t i = 0; i < NSD_REJECTION_REASONS; i++)
        if (nsd_rejection_code(i) == code)
            return i;
    ck_abort_msg("code %d has no slot", code);
    return 0;
}

START_TEST(lines_per_second)
{
    nsd_registry_t *reg = with_run("r");
    uint64_t withheld = 99;
    /* 25 refusals within one second of the clock: the first 10 are logged. */
    int logged = 0;
    for (int i = 0; i < 25; i++) {
        int take =
            nsd_registry_note_rejection(reg, "r", NS_EVALUE, 5000 + (uint64_t)i * 30, &withheld);
        ck_assert_int_eq(take, i < NSD_REJECTION_LOG_LINES);
        if (take)
            ck_assert_uint_eq(withheld, 0);
        logged += take;
    }
    ck_assert_int_eq(logged, NSD_REJECTION_LOG_LINES);
    /* The next second: logged again, with the 15 withheld before it. */
    ck_assert_int_eq(nsd_registry_note_rejection(reg, "r", NS_EWORKER, 6000, &withheld), 1);
    ck_assert_uint_eq(withheld, 15);
    ck_assert_int_eq(nsd_registry_note_rejection(reg, "r", NS_EWORKER, 6001, &withheld), 1);
    ck_assert_uint_eq(withheld, 0);
    /* Every refusal counted by reason, logged or not. */
    nsd_run_health_t *h;
    size_t n;
    ck_assert_int_eq(nsd_registry_health(reg, 10, &h, &n), 0);
    ck_assert_uint_eq(n, 1);
    ck_assert_str_eq(h[0].run, "r");
    ck_assert_uint_eq(h[0].rejections[slot_of(NS_EVALUE)], 25);
    ck_assert_uint_eq(h[0].rejections[slot_of(NS_EWORKER)], 2);
    uint64_t total = 0;
    for (size_t i = 0; i < NSD_REJECTION_REASONS; i++)
        total += h[0].rejections[i];
    ck_assert_uint_eq(total, 27);
    free(h);
    nsd_registry_free(reg);
}
END_TEST

START_TEST(runs_have_their_own_budget)
{
    nsd_registry_t *reg = with_run("a");
    ns_run_config_t cfg;
    ns_run_config_defaults(&cfg);
    ck_assert_int_eq(nsd_registry_put_run(reg, "b", &cfg, NULL, NULL), 0);
    uint64_t withheld;
    for (int i = 0; i < NSD_REJECTION_LOG_LINES; i++)
        ck_assert_int_eq(nsd_registry_note_rejection(reg, "a", NS_EVALUE, 100, &withheld), 1);
    ck_assert_int_eq(nsd_registry_note_rejection(reg, "a", NS_EVALUE, 100, &withheld), 0);
    /* a flood of run a does not silence run b */
    ck_assert_int_eq(nsd_registry_note_rejection(reg, "b", NS_EVALUE, 100, &withheld), 1);
    nsd_registry_free(reg);
}
END_TEST

/* Refusals noted from several threads at once (reports of the same run
 * being refused on several connections): no count lost, the limit kept. */
enum { NOTE_THREADS = 4, NOTES_PER_THREAD = 5000 };
typedef struct {
    nsd_registry_t *reg;
    int code;
    int logged;
    uint64_t withheld;
} noter_t;

static void *noter_main(void *p)
{
    noter_t *n = p;
    for (int i = 0; i < NOTES_PER_THREAD; i++) {
        uint64_t withheld = 0;
        /* all within one second of the clock */
        if (nsd_registry_note_rejection(n->reg, "r", n->code, 7000, &withheld)) {
            n->logged++;
            n->withheld += withheld;
        }
    }
    return NULL;
}

START_TEST(concurrent_notes)
{
    nsd_registry_t *reg = with_run("r");
    noter_t n[NOTE_THREADS];
    pthread_t t[NOTE_THREADS];
    const int codes[2] = {NS_EVALUE, NS_EWORKER};
    for (int i = 0; i < NOTE_THREADS; i++) {
        n[i] = (noter_t){.reg = reg, .code = codes[i % 2]};
        ck_assert_int_eq(pthread_create(&t[i], NULL, noter_main, &n[i]), 0);
    }
    int logged = 0;
    for (int i = 0; i < NOTE_THREADS; i++) {
        pthread_join(t[i], NULL);
        logged += n[i].logged;
        ck_assert_uint_eq(n[i].withheld, 0); /* nothing withheld before the first lines */
    }
    ck_assert_int_eq(logged, NSD_REJECTION_LOG_LINES);
    /* the next second's first line reports everything withheld in this one */
    uint64_t withheld = 0;
    ck_assert_int_eq(nsd_registry_note_rejection(reg, "r", NS_EVALUE, 8000, &withheld), 1);
    ck_assert_uint_eq(withheld, NOTE_THREADS * NOTES_PER_THREAD - NSD_REJECTION_LOG_LINES);
    nsd_run_health_t *h;
    size_t nh;
    ck_assert_int_eq(nsd_registry_health(reg, 10, &h, &nh), 0);
    ck_assert_uint_eq(nh, 1);
    ck_assert_uint_eq(h[0].rejections[slot_of(NS_EVALUE)], NOTE_THREADS / 2 * NOTES_PER_THREAD + 1);
    ck_assert_uint_eq(h[0].rejections[slot_of(NS_EWORKER)], NOTE_THREADS / 2 * NOTES_PER_THREAD);
    free(h);
    nsd_registry_free(reg);
}
END_TEST

static Suite *run_health_suite(void)
{
    Suite *s = suite_create("run_health");
    TCase *tc = tcase_create("run_health");
    tcase_add_test(tc, lines_per_second);
    tcase_add_test(tc, runs_have_their_own_budget);
    tcase_add_test(tc, concurrent_notes);
    suite_add_tcase(s, tc);
    return s;
}

NS_TEST_MAIN(run_health_suite)
