/* test_buf.c - ns_buf_t: growth, the hard ceiling, printf, take, free on error. */
#include <normstat/proto.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"

START_TEST(test_zero_initialised_has_no_ceiling)
{
    ns_buf_t buf = {0};
    char chunk[1000];
    /* The reference: the same bytes assembled by hand in a plain array. */
    char *ref = malloc(1000 * 300);
    ck_assert_ptr_nonnull(ref);
    uint64_t rng = ns_test_seed();
    for (int i = 0; i < 300; i++) {
        for (size_t k = 0; k < sizeof(chunk); k++)
            chunk[k] = (char)('a' + ns_test_rand(&rng) % 26);
        memcpy(ref + (size_t)i * sizeof(chunk), chunk, sizeof(chunk));
        ck_assert_int_eq(ns_buf_append(&buf, chunk, sizeof(chunk)), 0);
        ck_assert_uint_eq(buf.len, (size_t)(i + 1) * sizeof(chunk));
        ck_assert(buf.cap > buf.len); /* room for the NUL */
        ck_assert_int_eq(buf.data[buf.len], '\0');
    }
    ck_assert_int_eq(memcmp(buf.data, ref, buf.len), 0);
    size_t len = 0;
    char *bytes = ns_buf_take(&buf, &len);
    ck_assert_uint_eq(len, 300000);
    ck_assert_int_eq(memcmp(bytes, ref, len), 0);
    ck_assert_ptr_null(buf.data);
    ck_assert_uint_eq(buf.len, 0);
    free(bytes);
    free(ref);
    ns_buf_free(&buf);
}
END_TEST

START_TEST(test_ceiling_is_exact)
{
    ns_buf_t buf;
    ns_buf_init(&buf, 10);
    ck_assert_int_eq(ns_buf_append(&buf, "0123456789", 10), 0); /* exactly the ceiling */
    ck_assert_str_eq(buf.data, "0123456789");
    ck_assert_int_eq(ns_buf_append(&buf, "", 0), 0);
    /* One byte more fails and frees the contents. */
    ck_assert_int_eq(ns_buf_append(&buf, "x", 1), NS_ETOOLARGE);
    ck_assert_ptr_null(buf.data);
    ck_assert_uint_eq(buf.len, 0);
    ck_assert_uint_eq(buf.cap, 0);
    /* The buffer is usable again after a failure, ceiling kept. */
    ck_assert_uint_eq(buf.cap_max, 10);
    ck_assert_int_eq(ns_buf_append(&buf, "abc", 3), 0);
    ck_assert_int_eq(ns_buf_append(&buf, "01234567", 8), NS_ETOOLARGE);
    ck_assert_ptr_null(buf.data);
    /* A single append larger than the ceiling. */
    ns_buf_init(&buf, 4);
    ck_assert_int_eq(ns_buf_append(&buf, "hello", 5), NS_ETOOLARGE);
    ns_buf_free(&buf);
}
END_TEST

START_TEST(test_printf)
{
    ns_buf_t buf;
    ns_buf_init(&buf, 0);
    char ref[4096] = "";
    size_t ref_len = 0;
    for (int i = 0; i < 200; i++) {
        ck_assert_int_eq(ns_buf_printf(&buf, "[%d:%s]", i, i % 2 ? "odd" : "even"), 0);
        ref_len += (size_t)snprintf(ref + ref_len, sizeof(ref) - ref_len, "[%d:%s]", i,
                                    i % 2 ? "odd" : "even");
    }
    ck_assert_uint_eq(buf.len, ref_len);
    ck_assert_str_eq(buf.data, ref);
    ns_buf_free(&buf);

    /* printf respects the ceiling exactly: 5 chars fit in 5, not in 4. */
    ns_buf_init(&buf, 5);
    ck_assert_int_eq(ns_buf_printf(&buf, "%s", "abcde"), 0);
    ck_assert_str_eq(buf.data, "abcde");
    ns_buf_free(&buf);
    ns_buf_init(&buf, 4);
    ck_assert_int_eq(ns_buf_printf(&buf, "%s", "abcde"), NS_ETOOLARGE);
    ck_assert_ptr_null(buf.data);
    ns_buf_init(&buf, 8);
    ck_assert_int_eq(ns_buf_printf(&buf, "%d", 1234), 0);
    ck_assert_int_eq(ns_buf_printf(&buf, "%d", 5678), 0);
    ck_assert_int_eq(ns_buf_printf(&buf, "%d", 9), NS_ETOOLARGE);
    ns_buf_free(&buf);
}
END_TEST

START_TEST(test_take_empty_and_free_null)
{
    ns_buf_t buf = {0};
    size_t len = 99;
    char *s = ns_buf_take(&buf, &len);
    ck_assert_ptr_nonnull(s);
    ck_assert_str_eq(s, "");
    ck_assert_uint_eq(len, 0);
    free(s);
    ns_buf_free(NULL);
    ns_buf_free(&buf);
    ns_buf_free(&buf); /* twice is harmless */
    /* take with NULL len, after content */
    ck_assert_int_eq(ns_buf_append(&buf, "ab\0cd", 5), 0); /* binary-safe */
    s = ns_buf_take(&buf, NULL);
    ck_assert_int_eq(memcmp(s, "ab\0cd", 6), 0);
    free(s);
}
END_TEST

static Suite *buf_suite(void)
{
    Suite *s = suite_create("buf");
    TCase *tc = tcase_create("buf");
    tcase_add_test(tc, test_zero_initialised_has_no_ceiling);
    tcase_add_test(tc, test_ceiling_is_exact);
    tcase_add_test(tc, test_printf);
    tcase_add_test(tc, test_take_empty_and_free_null);
    suite_add_tcase(s, tc);
    return s;
}

NS_TEST_MAIN(buf_suite)
