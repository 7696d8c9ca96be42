/* test_errors.c - the error tables (the core's codes, the protocol's
 * NS_WIRE_ERROR_MAP, the client's NS_CLIENT_ERROR_MAP) and the lookups
 * generated from them agree. */
#include <normstat/client.h>
#include <normstat/errors.h>
#include <normstat/wire_errors.h>

#include <string.h>

#include "harness.h"

typedef struct row_s {
    int code;
    int status;
    const char *name;
    const char *message;
    int enum_value;
} row_t;

/* The table as the header spells it, with each enum constant next to its row
 * so a constant that drifted from its row is caught too. */
static const row_t rows[] = {
#define ROW(owner, name, code, status, wire, msg) {code, status, wire, msg, NS_##name},
    NS_WIRE_ERROR_MAP(ROW)
#undef ROW
};
#define NROWS (sizeof(rows) / sizeof(rows[0]))

/* The client's own codes: no HTTP status, they never travel. */
static const row_t client_rows[] = {
#define ROW(name, code, wire, msg) {code, 0, wire, msg, NS_##name},
    NS_CLIENT_ERROR_MAP(ROW)
#undef ROW
};
#define NCLIENT (sizeof(client_rows) / sizeof(client_rows[0]))

static void check_name_and_message(const row_t *r)
{
    ck_assert_int_eq(r->enum_value, r->code);
    ck_assert_int_lt(r->code, 0);
    ck_assert_uint_gt(strlen(r->message), 0);
    /* wire names are lower_snake_case: they become JSON codes and labels */
    ck_assert_uint_gt(strlen(r->name), 0);
    for (const char *p = r->name; *p; p++)
        ck_assert_msg((*p >= 'a' && *p <= 'z') || *p == '_', "bad wire name %s", r->name);
}

START_TEST(test_rows_consistent)
{
    ck_assert_uint_ge(NROWS, 1);
    for (size_t i = 0; i < NROWS; i++) {
        const row_t *r = &rows[i];
        check_name_and_message(r);
        ck_assert_str_eq(ns_strerror(r->code), r->message);
        ck_assert_str_eq(ns_error_name(r->code), r->name);
        ck_assert_int_eq(ns_error_http_status(r->code), r->status);
        ck_assert_int_ge(r->status, 400);
        ck_assert_int_le(r->status, 599);
        /* the client sees the same names and messages */
        ck_assert_str_eq(ns_client_strerror(r->code), r->message);
        ck_assert_str_eq(ns_client_error_name(r->code), r->name);
    }
}
END_TEST

START_TEST(test_client_rows_consistent)
{
    ck_assert_uint_ge(NCLIENT, 1);
    for (size_t i = 0; i < NCLIENT; i++) {
        const row_t *r = &client_rows[i];
        check_name_and_message(r);
        ck_assert_str_eq(ns_client_strerror(r->code), r->message);
        ck_assert_str_eq(ns_client_error_name(r->code), r->name);
        /* never a server's code or name */
        ck_assert_str_eq(ns_error_name(r->code), "unknown");
        ck_assert_int_eq(ns_error_from_name(r->name), 0);
    }
}
END_TEST

START_TEST(test_reverse_lookup)
{
    for (size_t i = 0; i < NROWS; i++)
        ck_assert_int_eq(ns_error_from_name(rows[i].name), rows[i].code);
    ck_assert_int_eq(ns_error_from_name("duplicate_report"), NS_EDUPLICATE);
    ck_assert_int_eq(ns_error_from_name(NULL), 0);
    ck_assert_int_eq(ns_error_from_name(""), 0);
    ck_assert_int_eq(ns_error_from_name("ok"), 0);
    ck_assert_int_eq(ns_error_from_name("unknown"), 0);
    ck_assert_int_eq(ns_error_from_name("Bad_Request"), 0);
}
END_TEST

START_TEST(test_codes_and_names_unique)
{
    /* one numbering across the protocol's and the client's tables */
    row_t all[NROWS + NCLIENT];
    memcpy(all, rows, sizeof(rows));
    memcpy(all + NROWS, client_rows, sizeof(client_rows));
    for (size_t i = 0; i < NROWS + NCLIENT; i++)
        for (size_t j = i + 1; j < NROWS + NCLIENT; j++) {
            ck_assert_msg(all[i].code != all[j].code, "code %d twice", all[i].code);
            ck_assert_msg(strcmp(all[i].name, all[j].name) != 0, "name %s twice", all[i].name);
        }
}
END_TEST

START_TEST(test_pinned_values)
{
    /* Released codes never change value. */
    ck_assert_int_eq(NS_EINVAL, -1);
    ck_assert_int_eq(NS_ENOTFOUND, -2);
    ck_assert_int_eq(NS_ECHANNELS, -3);
    ck_assert_int_eq(NS_EVALUE, -6);
    ck_assert_int_eq(ns_error_http_status(NS_EINVAL), 400);
    ck_assert_int_eq(ns_error_http_status(NS_ENOTFOUND), 404);
    ck_assert_int_eq(ns_error_http_status(NS_EVALUE), 422);
    ck_assert_str_eq(ns_error_name(NS_EINVAL), "bad_request");
    ck_assert_int_eq(NS_EMEMORY, -21);
    ck_assert_int_eq(NS_ECONNECT, -22);
    ck_assert_int_eq(NS_EREQTIMEOUT, -23);
    ck_assert_int_eq(NS_EBADRESPONSE, -24);
    ck_assert_int_eq(NS_ECONNS, -25);
    ck_assert_int_eq(ns_error_http_status(NS_ECONNS), 503);
    ck_assert_str_eq(ns_client_error_name(NS_ECONNECT), "connect_failed");
}
END_TEST

START_TEST(test_success_and_unknown)
{
    ck_assert_int_eq(NS_OK, 0);
    ck_assert_str_eq(ns_strerror(0), "success");
    ck_assert_str_eq(ns_error_name(0), "ok");
    ck_assert_int_eq(ns_error_http_status(0), 200);

    const int unknown[] = {1, 42, -9999, -1000000, (int)0x80000000u};
    for (size_t i = 0; i < sizeof(unknown) / sizeof(unknown[0]); i++) {
        int in_table = 0;
        for (size_t j = 0; j < NROWS; j++)
            in_table |= rows[j].code == unknown[i];
        if (in_table)
            continue;
        ck_assert_str_eq(ns_strerror(unknown[i]), "unknown error");
        ck_assert_str_eq(ns_error_name(unknown[i]), "unknown");
        ck_assert_int_eq(ns_error_http_status(unknown[i]), 500);
        ck_assert_str_eq(ns_client_strerror(unknown[i]), "unknown error");
        ck_assert_str_eq(ns_client_error_name(unknown[i]), "unknown");
    }
}
END_TEST

static Suite *errors_suite(void)
{
    Suite *s = suite_create("errors");
    TCase *tc = tcase_create("map");
    tcase_add_test(tc, test_rows_consistent);
    tcase_add_test(tc, test_client_rows_consistent);
    tcase_add_test(tc, test_reverse_lookup);
    tcase_add_test(tc, test_codes_and_names_unique);
    tcase_add_test(tc, test_pinned_values);
    tcase_add_test(tc, test_success_and_unknown);
    suite_add_tcase(s, tc);
    return s;
}

NS_TEST_MAIN(errors_suite)
