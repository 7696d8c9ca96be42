/* test_answer_cache.c - the shared /sync answers: a key finds the body
 * added for it, byte for byte; a key that differs in any byte, or in length,
 * finds nothing; the oldest entry goes first; oversized answers are not kept. */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "api/answer_cache.h"
#include "harness.h"

static void fill(ns_buf_t *b, size_t n, unsigned char seed)
{
    ns_buf_init(b, 0);
    unsigned char *tmp = malloc(n ? n : 1);
    for (size_t i = 0; i < n; i++)
        tmp[i] = (unsigned char)(seed + i * 7);
    ck_assert_int_eq(ns_buf_append(b, tmp, n), 0);
    free(tmp);
}

static int finds(const ns_buf_t *key, const ns_buf_t *want)
{
    ns_buf_t got;
    ns_buf_init(&got, 0);
    int found = nsd_answer_cache_find(key, &got);
    int same = found && got.len == want->len && memcmp(got.data, want->data, got.len) == 0;
    ns_buf_free(&got);
    ck_assert(!found || same);
    return found;
}

START_TEST(test_exact_keys)
{
    ns_buf_t key, body, other;
    fill(&key, 5000, 1);
    fill(&body, 8000, 2);
    ck_assert(!finds(&key, &body));
    nsd_answer_cache_add(&key, &body);
    ck_assert(finds(&key, &body));
    /* One byte changed anywhere, or one byte fewer: not the same answer. */
    for (size_t at = 0; at < key.len; at += 997) {
        fill(&other, key.len, 1);
        other.data[at] ^= 1;
        ck_assert(!finds(&other, &body));
        ns_buf_free(&other);
    }
    fill(&other, key.len - 1, 1);
    ck_assert(!finds(&other, &body));
    ns_buf_free(&other);
    ns_buf_free(&key);
    ns_buf_free(&body);
}
END_TEST

START_TEST(test_oldest_replaced_and_bounded)
{
    ns_buf_t keys[NSD_ANSWER_CACHE_ENTRIES + 1], bodies[NSD_ANSWER_CACHE_ENTRIES + 1];
    for (int i = 0; i <= NSD_ANSWER_CACHE_ENTRIES; i++) {
        fill(&keys[i], 100, (unsigned char)(10 + i));
        fill(&bodies[i], 50 + (size_t)i, (unsigned char)(90 + i));
        nsd_answer_cache_add(&keys[i], &bodies[i]);
    }
    ck_assert(!finds(&keys[0], &bodies[0]));
    for (int i = 1; i <= NSD_ANSWER_CACHE_ENTRIES; i++)
        ck_assert(finds(&keys[i], &bodies[i]));
    ns_buf_t big;
    fill(&big, NSD_ANSWER_CACHE_MAX_BYTES, 3);
    nsd_answer_cache_add(&keys[0], &big);
    ck_assert(!finds(&keys[0], &big));
    ns_buf_free(&big);
    for (int i = 0; i <= NSD_ANSWER_CACHE_ENTRIES; i++) {
        ns_buf_free(&keys[i]);
        ns_buf_free(&bodies[i]);
    }
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("answer_cache");
    TCase *tc = tcase_create("answer_cache");
    tcase_add_test(tc, test_exact_keys);
    tcase_add_test(tc, test_oldest_replaced_and_bounded);
    suite_add_tcase(s, tc);
    return s;
}

NS_TEST_MAIN(make_suite)
