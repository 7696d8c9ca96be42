/* test_auth.c - normstatd's bearer-token authentication: loading the token from a
 * file, the variable or neither, and judging Authorization headers. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/options.h"
#include "harness.h"
#include "http/auth.h"

static nsd_options_t opts;
static nsd_auth_t auth;
static ns_error_detail_t detail;
static const char *const err = detail.message;
static char dir[] = "/tmp/nsd-test-auth-XXXXXX";

static void setup(void)
{
    ck_assert_ptr_nonnull(mkdtemp(dir));
}

static void teardown(void)
{
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    ck_assert_int_eq(system(cmd), 0);
    memcpy(dir + strlen(dir) - 6, "XXXXXX", 6);
}

/* Options from 'envp' and 'args' (NULL-terminated), then nsd_auth_load(). */
static int load(char *const envp[], const char *a1, const char *a2)
{
    char *argv[] = {(char *)"normstatd", (char *)a1, (char *)a2, NULL};
    int argc = a1 == NULL ? 1 : a2 == NULL ? 2 : 3;
    memset(&detail, 0, sizeof(detail));
    ck_assert_int_eq(nsd_options_parse(&opts, argc, argv, envp, &detail), 0);
    return nsd_auth_load(&auth, &opts, &detail);
}

/* A file under 'dir' holding 'len' bytes of 'content'; its path in 'path'. */
static void write_file(char *path, size_t cap, const char *name, const char *content, size_t len)
{
    snprintf(path, cap, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(content, 1, len, f), len);
    ck_assert_int_eq(fclose(f), 0);
}

START_TEST(test_load_sources)
{
    char path[4200];
    /* Neither: off. */
    ck_assert_int_eq(load(NULL, NULL, NULL), 0);
    ck_assert_uint_eq(auth.len, 0);
    /* The file, trailing "\n" or "\r\n" dropped, nothing else. */
    write_file(path, sizeof(path), "t1", "abc.DEF-1\n", 10);
    ck_assert_int_eq(load(NULL, "--auth-token-file", path), 0);
    ck_assert_uint_eq(auth.len, 9);
    ck_assert_str_eq(auth.token, "abc.DEF-1");
    write_file(path, sizeof(path), "t2", "xyz\r\n", 5);
    ck_assert_int_eq(load(NULL, "--auth-token-file", path), 0);
    ck_assert_str_eq(auth.token, "xyz");
    write_file(path, sizeof(path), "t3", "nonl", 4);
    ck_assert_int_eq(load(NULL, "--auth-token-file", path), 0);
    ck_assert_str_eq(auth.token, "nonl");
    /* The file through its variable. */
    char env_file[4300];
    snprintf(env_file, sizeof(env_file), "NORMSTAT_AUTH_TOKEN_FILE=%s", path);
    char *envp1[] = {env_file, NULL};
    ck_assert_int_eq(load(envp1, NULL, NULL), 0);
    ck_assert_str_eq(auth.token, "nonl");
    /* The token itself through NORMSTAT_AUTH_TOKEN. */
    char *envp2[] = {(char *)"NORMSTAT_AUTH_TOKEN=direct~token", NULL};
    ck_assert_int_eq(load(envp2, NULL, NULL), 0);
    ck_assert_str_eq(auth.token, "direct~token");
    ck_assert_uint_eq(auth.len, 12);
}
END_TEST

START_TEST(test_load_errors)
{
    char path[4200];
    /* Both sources. */
    write_file(path, sizeof(path), "ok", "secretvalue\n", 12);
    char *envp[] = {(char *)"NORMSTAT_AUTH_TOKEN=secretvalue", NULL};
    ck_assert_int_eq(load(envp, "--auth-token-file", path), NS_EINVAL);
    ck_assert_uint_eq(auth.len, 0);
    ck_assert_ptr_nonnull(strstr(err, "not both"));
    /* Empty, only a newline, inner space, two lines, control characters. */
    static const char *const bad[] = {"", "\n", "two words\n", "a\nb\n", "tab\there", "\n\n"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        write_file(path, sizeof(path), "bad", bad[i], strlen(bad[i]));
        ck_assert_int_eq(load(NULL, "--auth-token-file", path), NS_EINVAL);
        ck_assert_uint_eq(auth.len, 0);
        ck_assert_ptr_nonnull(strstr(err, "--auth-token-file"));
    }
    /* Missing file: the path is named, a token never is. */
    snprintf(path, sizeof(path), "%s/missing", dir);
    ck_assert_int_eq(load(NULL, "--auth-token-file", path), NS_EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "missing"));
    /* A file as large as the buffer is refused, not cut. */
    static char big[4096];
    memset(big, 'k', sizeof(big));
    write_file(path, sizeof(path), "big", big, sizeof(big));
    ck_assert_int_eq(load(NULL, "--auth-token-file", path), NS_EINVAL);
    ck_assert_uint_eq(auth.len, 0);
    /* Errors of the variable name the option, not the value. */
    char *envp2[] = {(char *)"NORMSTAT_AUTH_TOKEN=has space", NULL};
    ck_assert_int_eq(load(envp2, NULL, NULL), NS_EINVAL);
    ck_assert_ptr_null(strstr(err, "has space"));
}
END_TEST

START_TEST(test_check)
{
    nsd_auth_t a = {.token = "s3cret/Token=", .len = 13};
    ck_assert_int_eq(nsd_auth_check(&a, "Bearer s3cret/Token="), 0);
    ck_assert_int_eq(nsd_auth_check(&a, "bearer s3cret/Token="), 0); /* scheme is case-free */
    ck_assert_int_eq(nsd_auth_check(&a, "Bearer   s3cret/Token=  "), 0);
    /* Missing or malformed: 401. */
    static const char *const unauth[] = {NULL,
                                         "",
                                         "Bearer",
                                         "Bearer ",
                                         "Bearer  ",
                                         "Basic s3cret/Token=",
                                         "s3cret/Token=",
                                         "Bearer s3cret/Token= x",
                                         "Bearers3cret/Token=",
                                         "Bearer s3cret\x01/Token="};
    for (size_t i = 0; i < sizeof(unauth) / sizeof(unauth[0]); i++)
        ck_assert_int_eq(nsd_auth_check(&a, unauth[i]), NS_EUNAUTHORIZED);
    /* Well-formed, another token: 403 (prefix, extension, one byte off, case). */
    static const char *const forbid[] = {
        "Bearer s3cret/Token",  "Bearer s3cret/Token==", "Bearer s3cret/Tokem=",
        "Bearer S3cret/Token=", "Bearer t3cret/Token=",  "Bearer x"};
    for (size_t i = 0; i < sizeof(forbid) / sizeof(forbid[0]); i++)
        ck_assert_int_eq(nsd_auth_check(&a, forbid[i]), NS_EFORBIDDEN);
    /* Off: everything passes. */
    nsd_auth_t off = {.len = 0};
    ck_assert_int_eq(nsd_auth_check(&off, NULL), 0);
    ck_assert_int_eq(nsd_auth_check(NULL, "Basic x"), 0);
}
END_TEST

START_TEST(test_exempt)
{
    ck_assert_int_eq(nsd_auth_exempt("GET", "/livez"), 1);
    ck_assert_int_eq(nsd_auth_exempt("GET", "/healthz"), 1);
    ck_assert_int_eq(nsd_auth_exempt("GET", "/readyz"), 1);
    ck_assert_int_eq(nsd_auth_exempt("POST", "/livez"), 0);
    ck_assert_int_eq(nsd_auth_exempt("GET", "/livez/"), 0);
    ck_assert_int_eq(nsd_auth_exempt("GET", "/metrics"), 0);
    ck_assert_int_eq(nsd_auth_exempt("GET", "/v1/version"), 0);
    ck_assert_int_eq(nsd_auth_exempt("GET", "/v1/runs"), 0);
    /* The dashboard's files: one plain name under /ui/, nothing else. */
    ck_assert_int_eq(nsd_auth_exempt("GET", "/"), 1);
    ck_assert_int_eq(nsd_auth_exempt("GET", "/ui"), 1);
    ck_assert_int_eq(nsd_auth_exempt("GET", "/ui/"), 1);
    ck_assert_int_eq(nsd_auth_exempt("GET", "/ui/dashboard.js"), 1);
    ck_assert_int_eq(nsd_auth_exempt("HEAD", "/ui/"), 0);
    ck_assert_int_eq(nsd_auth_exempt("POST", "/ui/"), 0);
    ck_assert_int_eq(nsd_auth_exempt("GET", "/ui/../v1/runs"), 0);
    ck_assert_int_eq(nsd_auth_exempt("GET", "/ui/..%2Fmetrics"), 0);
    ck_assert_int_eq(nsd_auth_exempt("GET", "/ui/.."), 0);
    ck_assert_int_eq(nsd_auth_exempt("GET", "/uix"), 0);
    ck_assert_int_eq(nsd_auth_exempt("GET", "/ui/x/"), 0);
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("auth");
    TCase *tc = tcase_create("auth");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_load_sources);
    tcase_add_test(tc, test_load_errors);
    tcase_add_test(tc, test_check);
    tcase_add_test(tc, test_exempt);
    suite_add_tcase(s, tc);
    return s;
}

NS_TEST_MAIN(make_suite)
