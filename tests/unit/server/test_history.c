/* test_history.c - the ring of a row's last applied steps (registry/history.h):
 * order, overwriting the oldest, float32 values, copies, and its size. */
#include <math.h>
#include <string.h>

#include "harness.h"
#include "registry/history.h"

enum { C = 3, CAP = 4 };

/* Step s's values: channel c of array k is s + 0.1 k + 0.01 c + 1/3 (not a
 * float32, so the rounding shows). */
static void values(uint64_t s, double v[NSD_HIST_VALUES][C])
{
    for (int k = 0; k < NSD_HIST_VALUES; k++)
        for (int c = 0; c < C; c++)
            v[k][c] = (double)s + 0.1 * k + 0.01 * c + 1.0 / 3.0;
}

static void push(nsd_history_t *h, uint64_t s)
{
    double v[NSD_HIST_VALUES][C];
    values(s, v);
    nsd_history_entry_t *e = nsd_history_push(h, s, 10 * s, v[0], v[1], v[2], v[3]);
    ck_assert_int_eq(e->has_drift, 0);
    e->has_drift = (int)(s % 2);
    e->drift.mean_max = (double)s;
}

/* The ring holds steps first..last, oldest first, exactly as pushed. */
static void check_holds(const nsd_history_t *h, uint64_t first, uint64_t last)
{
    ck_assert_uint_eq(nsd_history_len(h), last - first + 1);
    for (size_t i = 0; i < nsd_history_len(h); i++) {
        const float *v;
        const nsd_history_entry_t *e = nsd_history_at(h, i, &v);
        uint64_t s = first + i;
        ck_assert_uint_eq(e->step, s);
        ck_assert_uint_eq(e->count, 10 * s);
        ck_assert_int_eq(e->has_drift, (int)(s % 2));
        ck_assert(e->drift.mean_max == (double)s);
        double want[NSD_HIST_VALUES][C];
        values(s, want);
        for (int k = 0; k < NSD_HIST_VALUES; k++)
            for (int c = 0; c < C; c++)
                ck_assert_msg(v[k * C + c] == (float)want[k][c], "step %llu value %d channel %d",
                              (unsigned long long)s, k, c);
    }
}

START_TEST(ring_order_and_overwrite)
{
    nsd_history_t *h = nsd_history_create(C, CAP);
    ck_assert_ptr_nonnull(h);
    ck_assert_uint_eq(nsd_history_len(h), 0);
    push(h, 7);
    check_holds(h, 7, 7);
    for (uint64_t s = 8; s <= 10; s++)
        push(h, s);
    check_holds(h, 7, 10); /* full */
    for (uint64_t s = 11; s <= 17; s++) {
        push(h, s); /* each drops the oldest */
        check_holds(h, s - CAP + 1, s);
    }
    /* The scratch is the caller's and takes no part in the entries. */
    double *scratch = nsd_history_scratch(h);
    for (size_t i = 0; i < NSD_HIST_SCRATCH * C; i++)
        scratch[i] = NAN;
    check_holds(h, 14, 17);
    nsd_history_free(h);
    nsd_history_free(NULL);
}
END_TEST

START_TEST(copy_keeps_entries)
{
    nsd_history_t *a = nsd_history_create(C, CAP), *b = nsd_history_create(C, CAP);
    ck_assert(a != NULL && b != NULL);
    for (uint64_t s = 1; s <= 6; s++)
        push(a, s);
    nsd_history_copy(b, a);
    check_holds(b, 3, 6);
    push(b, 7); /* the copy goes on by itself */
    check_holds(b, 4, 7);
    check_holds(a, 3, 6);
    nsd_history_free(a);
    nsd_history_free(b);
}
END_TEST

START_TEST(size_bound)
{
    /* The documented bound (doc/design.md): 16 C K + 72 K + 48 C and a header
     * under 128 bytes. */
    for (size_t c = 1; c <= 4096; c *= 8)
        for (size_t k = 1; k <= 256; k *= 4) {
            uint64_t bytes = nsd_history_bytes(c, k);
            uint64_t body = 16 * c * k + sizeof(nsd_history_entry_t) * k + 48 * c;
            ck_assert_uint_le(sizeof(nsd_history_entry_t), 72);
            ck_assert(bytes >= body && bytes < body + 128);
        }
    ck_assert_ptr_null(nsd_history_create(0, 4));
    ck_assert_ptr_null(nsd_history_create(4, 0));
}
END_TEST

static Suite *history_suite(void)
{
    Suite *s = suite_create("history");
    TCase *tc = tcase_create("history");
    tcase_add_test(tc, ring_order_and_overwrite);
    tcase_add_test(tc, copy_keeps_entries);
    tcase_add_test(tc, size_bound);
    suite_add_tcase(s, tc);
    return s;
}

NS_TEST_MAIN(history_suite)
