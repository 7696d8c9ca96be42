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
    suite_add_tcase(s, tc);
    return s;
}

NS_TEST_MAIN(decode_bound_suite)
