/* test_decode_bound.c - ns_decode_bound() is an upper bound of what the
 * decoders hold after decoding the costliest shapes, and the fast JSON
 * path costs a small constant per body byte (it held 18 bytes per body
 * byte for one-channel layers when each array reserved room for 64
 * numbers). Held bytes are glibc's mallinfo2() in-use count, measured
 * around one decode in a fresh process (CK_FORK), compared with the
 * bound and with the body's length. */
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <normstat/proto.h>

#include "harness.h"

/* Library-internal (proto_internal.h): the counts the JSON bounds use. */
typedef struct ns__json_counts_s {
    uint64_t braces, brackets, commas, longest_array;
} ns__json_counts_t;
ns__json_counts_t ns__json_count(const char *p, size_t len);
uint64_t ns__count_byte(const char *p, size_t len, char byte);
uint64_t ns__json_array_length(const char *p, size_t len);

/* Commas before the first bracket, plus one if that bracket closes, else 0. */
static uint64_t plain_array_length(const char *p, size_t len)
{
    uint64_t commas = 0;
    for (size_t i = 0; i < len; i++) {
        if (p[i] == ']')
            return commas + 1;
        if (p[i] == '[')
            return 0;
        commas += p[i] == ',';
    }
    return 0;
}

static size_t held(void)
{
    struct mallinfo2 m = mallinfo2();
    return m.uordblks + m.hblkhd;
}

/* A compact JSON report of 'n' layers, each "mean" and "var" of 'c' values
 * (no arrays at all when c == 0). Caller frees. */
static char *json_report(size_t n, size_t c, size_t *len)
{
    ns_buf_t b;
    ns_buf_init(&b, 0);
    ck_assert_int_eq(ns_buf_printf(&b, "{\"step\":1,\"worker\":0,\"layers\":{"), 0);
    for (size_t i = 0; i < n; i++) {
        ck_assert_int_eq(ns_buf_printf(&b, "%s\"l%zu\":{\"count\":%d", i ? "," : "", i, c ? 4 : 0),
                         0);
        for (int a = 0; c > 0 && a < 2; a++) {
            ck_assert_int_eq(ns_buf_printf(&b, ",\"%s\":[", a ? "var" : "mean"), 0);
            for (size_t k = 0; k < c; k++)
                ck_assert_int_eq(ns_buf_printf(&b, "%s1", k ? "," : ""), 0);
            ck_assert_int_eq(ns_buf_printf(&b, "]"), 0);
        }
        ck_assert_int_eq(ns_buf_printf(&b, "}"), 0);
    }
    ck_assert_int_eq(ns_buf_printf(&b, "}}"), 0);
    return ns_buf_take(&b, len);
}

/* Decode 'src' and return the bytes held by the report, checked against
 * the bound; the cost per body byte is returned for the caller's check. */
static double decode_cost(const char *src, size_t len)
{
    uint64_t bound = ns_decode_bound(src, len, NS_DECODE_REPORT_JSON);
    size_t before = held();
    ns_report_t *r = NULL;
    ns_error_detail_t err = {0};
    ck_assert_int_eq(ns_report_decode_json(&r, src, len, &err), 0);
    size_t cost = held() - before;
    ck_assert_msg(cost <= bound, "held %zu > bound %llu", cost, (unsigned long long)bound);
    ns_report_free(r);
    return (double)cost / (double)len;
}

/* The structural counts, byte by byte as their definition reads. */
static ns__json_counts_t plain_counts(const char *p, size_t len)
{
    ns__json_counts_t n = {0, 0, 0, 0};
    uint64_t run = 0; /* commas + 1 since the last '[', 0 outside */
    for (size_t i = 0; i < len; i++) {
        if (p[i] == '{')
            n.braces++;
        else if (p[i] == '[') {
            n.brackets++;
            run = 1;
        } else if (p[i] == ',') {
            n.commas++;
            if (run > 0)
                run++;
        } else if (p[i] == ']') {
            if (run > n.longest_array)
                n.longest_array = run;
            run = 0;
        }
    }
    if (run > n.longest_array)
        n.longest_array = run;
    return n;
}

/* Random text, brackets rare or common, at every alignment and length. */
START_TEST(test_counts_match_bytewise)
{
    uint64_t rng = ns_test_seed() ^ 0xb0c7;
    static char text[4096 + 16];
    int checks = 0;
    for (int round = 0; round < 400; round++) {
        size_t len = ns_test_rand(&rng) % 4096;
        unsigned bracket_odds = 1 + (unsigned)(ns_test_rand(&rng) % 300);
        for (size_t i = 0; i < len + 16; i++) {
            uint64_t r = ns_test_rand(&rng);
            text[i] = r % bracket_odds == 0 ? "[]"[(r >> 20) % 2]
                      : r % 7 == 0          ? ','
                      : r % 31 == 0         ? "{}"[(r >> 20) % 2]
                                            : "0123456789.-e \n\"ab\xc3"[(r >> 24) % 19];
        }
        size_t off = ns_test_rand(&rng) % 16;
        ns__json_counts_t got = ns__json_count(text + off, len);
        ns__json_counts_t want = plain_counts(text + off, len);
        ck_assert_uint_eq(ns__count_byte(text + off, len, '{'), want.braces);
        /* From every '[': the array's length, never above the longest. */
        for (size_t k = 0; k < len; k++)
            if (text[off + k] == '[') {
                uint64_t a = ns__json_array_length(text + off + k + 1, len - k - 1);
                ck_assert_uint_eq(a, plain_array_length(text + off + k + 1, len - k - 1));
                ck_assert_uint_le(a, want.longest_array);
            }
        ck_assert_uint_eq(ns__count_byte(text + off, len, '['), want.brackets);
        ck_assert_msg(got.braces == want.braces && got.brackets == want.brackets &&
                          got.commas == want.commas && got.longest_array == want.longest_array,
                      "round %d: %zu bytes at offset %zu", round, len, off);
        checks++;
    }
    /* One array far longer than 255 chunks of 16 bytes without a bracket
     * (byte counters would overflow unless summed in time). */
    size_t long_len = 1 + 2 * 50000 + 2;
    char *long_text = malloc(long_len);
    ck_assert_ptr_nonnull(long_text);
    long_text[0] = '[';
    for (size_t i = 0; i < 50000; i++)
        memcpy(long_text + 1 + 2 * i, i % 97 ? "1," : "{,", 2);
    memcpy(long_text + long_len - 2, "1]", 2);
    ns__json_counts_t lg = ns__json_count(long_text, long_len);
    ns__json_counts_t lw = plain_counts(long_text, long_len);
    ck_assert_uint_eq(lg.commas, 50000);
    ck_assert_uint_eq(lg.longest_array, 50001);
    ck_assert_uint_eq(lw.longest_array, 50001);
    ck_assert_uint_eq(lg.braces, lw.braces);
    ck_assert_uint_eq(ns__count_byte(long_text, long_len, ','), 50000);
    ck_assert_uint_eq(ns__json_array_length(long_text + 1, long_len - 1), 50001);
    ck_assert_uint_eq(ns__count_byte(long_text, long_len, '{'), lw.braces);
    free(long_text);
    /* A report body: long arrays split across chunks. */
    size_t blen;
    char *body = json_report(7, 301, &blen);
    ns__json_counts_t got = ns__json_count(body, blen), want = plain_counts(body, blen);
    ck_assert_uint_eq(got.commas, want.commas);
    ck_assert_uint_eq(got.longest_array, 301);
    ck_assert_uint_eq(want.longest_array, 301);
    ck_assert_uint_eq(got.braces, want.braces);
    free(body);
    ck_assert_int_eq(checks, 400);
}
END_TEST

START_TEST(test_one_channel_layers)
{
    size_t len;
    char *src = json_report(20000, 1, &len);
    double per_byte = decode_cost(src, len);
    /* ns_layer_report_t and two 4-byte arrays per ~40 bytes of JSON */
    ck_assert_msg(per_byte <= 6.5, "%.2f bytes held per body byte", per_byte);
    free(src);
}
END_TEST

START_TEST(test_layers_without_arrays)
{
    size_t len;
    char *src = json_report(20000, 0, &len);
    decode_cost(src, len);
    free(src);
}
END_TEST

START_TEST(test_wide_layers)
{
    size_t len;
    char *src = json_report(8, 4096, &len);
    double per_byte = decode_cost(src, len);
    ck_assert_msg(per_byte <= 2.5, "%.2f bytes held per body byte", per_byte);
    free(src);
}
END_TEST

START_TEST(test_bound_refuses_without_parsing)
{
    /* Garbage is never parsed by ns_decode_bound(); a non-canonical body
     * is refused by the bounded decoder when its jansson tree does not fit. */
    const char body[] = "{\"step\": 1.0, \"worker\": 0, \"layers\": {\"a\": {\"count\": 0}}}";
    uint64_t tree = ns_decode_bound(body, sizeof(body) - 1, NS_DECODE_JSON_TREE);
    ck_assert_uint_ge(tree, 24 * (sizeof(body) - 1));
    ns_report_t *r = NULL;
    ns_error_detail_t err = {0};
    ck_assert_int_eq(ns_report_decode_json_bounded(&r, body, sizeof(body) - 1, tree - 1, &err),
                     NS_EMEMORY);
    ck_assert_ptr_null(r);
    memset(&err, 0, sizeof(err));
    ck_assert_int_eq(ns_report_decode_json_bounded(&r, body, sizeof(body) - 1, tree, &err),
                     NS_EINVAL); /* step 1.0 is not an integer */
}
END_TEST

static Suite *decode_bound_suite(void)
{
    Suite *s = suite_create("decode_bound");
    TCase *tc = tcase_create("bound");
    tcase_add_test(tc, test_one_channel_layers);
    tcase_add_test(tc, test_layers_without_arrays);
    tcase_add_test(tc, test_wide_layers);
    tcase_add_test(tc, test_bound_refuses_without_parsing);
    tcase_add_test(tc, test_counts_match_bytewise);
    suite_add_tcase(s, tc);
    return s;
}

NS_TEST_MAIN(decode_bound_suite)
