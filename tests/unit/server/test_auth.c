/* test_auth.c - normstatd's bearer-token authentication: loading the admin token
 * from a file, the variable or neither, the scoped token file, judging
 * Authorization headers, the scope each route needs, and reloads. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/options.h"
#include "harness.h"
#include "http/auth.h"

static nsd_options_t opts;
static nsd_auth_t *auth;
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

/* Options from 'envp' and 'args' (up to four, NULL-terminated), then nsd_auth_create(). */
static int load4(char *const envp[], const char *a1, const char *a2, const char *a3, const char *a4)
{
    char *argv[] = {(char *)"normstatd", (char *)a1, (char *)a2, (char *)a3, (char *)a4, NULL};
    int argc = 1;
    while (argc < 5 && argv[argc] != NULL)
        argc++;
    memset(&detail, 0, sizeof(detail));
    nsd_auth_free(auth);
    auth = NULL;
    ck_assert_int_eq(nsd_options_parse(&opts, argc, argv, envp, &detail), 0);
    return nsd_auth_create(&auth, &opts, &detail);
}

static int load(char *const envp[], const char *a1, const char *a2)
{
    return load4(envp, a1, a2, NULL, NULL);
}

/* The scope 'header' is granted, 0 when it is refused (401). */
static int scope_of(const char *header)
{
    nsd_grant_t g;
    int unknown;
    return nsd_auth_check(auth, header, &g, &unknown) == 0 ? (int)g.scope : 0;
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
    ck_assert_ptr_null(auth);
    /* The file, trailing "\n" or "\r\n" dropped, nothing else: an admin token. */
    write_file(path, sizeof(path), "t1", "abc.DEF-1\n", 10);
    ck_assert_int_eq(load(NULL, "--auth-token-file", path), 0);
    ck_assert_int_eq(scope_of("Bearer abc.DEF-1"), NSD_SCOPE_ADMIN);
    ck_assert_int_eq(scope_of("Bearer abc.DEF-"), 0);
    write_file(path, sizeof(path), "t2", "xyz\r\n", 5);
    ck_assert_int_eq(load(NULL, "--auth-token-file", path), 0);
    ck_assert_int_eq(scope_of("Bearer xyz"), NSD_SCOPE_ADMIN);
    write_file(path, sizeof(path), "t3", "nonl", 4);
    ck_assert_int_eq(load(NULL, "--auth-token-file", path), 0);
    ck_assert_int_eq(scope_of("Bearer nonl"), NSD_SCOPE_ADMIN);
    /* The file through its variable. */
    char env_file[4300];
    snprintf(env_file, sizeof(env_file), "NORMSTAT_AUTH_TOKEN_FILE=%s", path);
    char *envp1[] = {env_file, NULL};
    ck_assert_int_eq(load(envp1, NULL, NULL), 0);
    ck_assert_int_eq(scope_of("Bearer nonl"), NSD_SCOPE_ADMIN);
    /* The token itself through NORMSTAT_AUTH_TOKEN. */
    char *envp2[] = {(char *)"NORMSTAT_AUTH_TOKEN=direct~token", NULL};
    ck_assert_int_eq(load(envp2, NULL, NULL), 0);
    ck_assert_int_eq(scope_of("Bearer direct~token"), NSD_SCOPE_ADMIN);
    ck_assert_int_eq(scope_of("Bearer direct~toke"), 0);
}
END_TEST

START_TEST(test_load_errors)
{
    char path[4200];
    /* Both sources. */
    write_file(path, sizeof(path), "ok", "secretvalue\n", 12);
    char *envp[] = {(char *)"NORMSTAT_AUTH_TOKEN=secretvalue", NULL};
    ck_assert_int_eq(load(envp, "--auth-token-file", path), NS_EINVAL);
    ck_assert_ptr_null(auth);
    ck_assert_ptr_nonnull(strstr(err, "not both"));
    /* Empty, only a newline, inner space, two lines, control characters. */
    static const char *const bad[] = {"", "\n", "two words\n", "a\nb\n", "tab\there", "\n\n"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        write_file(path, sizeof(path), "bad", bad[i], strlen(bad[i]));
        ck_assert_int_eq(load(NULL, "--auth-token-file", path), NS_EINVAL);
        ck_assert_ptr_null(auth);
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
    ck_assert_ptr_null(auth);
    /* Errors of the variable name the option, not the value. */
    char *envp2[] = {(char *)"NORMSTAT_AUTH_TOKEN=has space", NULL};
    ck_assert_int_eq(load(envp2, NULL, NULL), NS_EINVAL);
    ck_assert_ptr_null(strstr(err, "has space"));
}
END_TEST

START_TEST(test_check)
{
    char *envp[] = {(char *)"NORMSTAT_AUTH_TOKEN=s3cret/Token=", NULL};
    ck_assert_int_eq(load(envp, NULL, NULL), 0);
    ck_assert_int_eq(scope_of("Bearer s3cret/Token="), NSD_SCOPE_ADMIN);
    ck_assert_int_eq(scope_of("bearer s3cret/Token="), NSD_SCOPE_ADMIN); /* scheme is case-free */
    ck_assert_int_eq(scope_of("Bearer   s3cret/Token=  "), NSD_SCOPE_ADMIN);
    nsd_grant_t g;
    int unknown;
    /* Missing or malformed: 401, not "unknown". */
    static const char *const malformed[] = {NULL,
                                            "",
                                            "Bearer",
                                            "Bearer ",
                                            "Bearer  ",
                                            "Basic s3cret/Token=",
                                            "s3cret/Token=",
                                            "Bearer s3cret/Token= x",
                                            "Bearers3cret/Token="};
    for (size_t i = 0; i < sizeof(malformed) / sizeof(malformed[0]); i++) {
        ck_assert_int_eq(nsd_auth_check(auth, malformed[i], &g, &unknown), NS_EUNAUTHORIZED);
        ck_assert_int_eq(unknown, 0);
    }
    /* Well-formed, no such token: 401 "unknown" (prefix, extension, one byte
     * off, case, a control character). */
    static const char *const other[] = {
        "Bearer s3cret/Token",     "Bearer s3cret/Token==", "Bearer s3cret/Tokem=",
        "Bearer S3cret/Token=",    "Bearer t3cret/Token=",  "Bearer x",
        "Bearer s3cret\x01/Token="};
    for (size_t i = 0; i < sizeof(other) / sizeof(other[0]); i++) {
        ck_assert_int_eq(nsd_auth_check(auth, other[i], &g, &unknown), NS_EUNAUTHORIZED);
        ck_assert_int_eq(unknown, 1);
    }
    /* Off: everything passes as admin. */
    ck_assert_int_eq(nsd_auth_check(NULL, "Basic x", &g, &unknown), 0);
    ck_assert_int_eq(g.scope, NSD_SCOPE_ADMIN);
}
END_TEST

START_TEST(test_tokens_file)
{
    char path[4200], single[4200];
    static const char good[] = "# tokens of the lab\n"
                               "adm-1 admin\n"
                               "\n"
                               "   rd-2\tread   \r\n"
                               "wr-3 write exp-*\n"
                               "wr-4 write run-[0-9]?\n"
                               "  # indented comment\n"
                               "wr-5\twrite\t*";
    write_file(path, sizeof(path), "tokens", good, sizeof(good) - 1);
    write_file(single, sizeof(single), "single", "solo\n", 5);
    ck_assert_int_eq(load4(NULL, "--auth-tokens-file", path, "--auth-token-file", single), 0);
    ck_assert_int_eq(scope_of("Bearer adm-1"), NSD_SCOPE_ADMIN);
    ck_assert_int_eq(scope_of("Bearer rd-2"), NSD_SCOPE_READ);
    ck_assert_int_eq(scope_of("Bearer wr-3"), NSD_SCOPE_WRITE);
    ck_assert_int_eq(scope_of("Bearer solo"), NSD_SCOPE_ADMIN);
    ck_assert_int_eq(scope_of("Bearer read"), 0);
    ck_assert_int_eq(scope_of("Bearer #"), 0);
    nsd_grant_t g;
    int unknown;
    ck_assert_int_eq(nsd_auth_check(auth, "Bearer wr-4", &g, &unknown), 0);
    ck_assert_str_eq(g.pattern, "run-[0-9]?");
    ck_assert_int_eq(nsd_auth_check(auth, "Bearer wr-5", &g, &unknown), 0);
    ck_assert_str_eq(g.pattern, "*");
    /* Errors name the option and the line, never the token. */
    static const struct {
        const char *text, *want;
    } bad[] = {
        {"tok-a admin\ntok-b writer x\n", "line 2: unknown scope 'writer'"},
        {"tok-a write\n", "line 1: write takes one RUN_GLOB"},
        {"tok-a read exp\n", "line 1: read takes nothing"},
        {"tok-a admin now\n", "line 1: admin takes nothing"},
        {"tok-a write exp/1\n", "line 1: RUN_GLOB 'exp/1'"},
        {"tok-a\n", "line 1: expected"},
        {"tok-a admin\n\ntok-a read\n", "line 3: a token given before"},
        {"solo read\n", "line 1: a token given before"},
        {"# nothing\n\n", "holds no token"},
        {"", "holds no token"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        write_file(path, sizeof(path), "bad", bad[i].text, strlen(bad[i].text));
        ck_assert_int_eq(load4(NULL, "--auth-tokens-file", path, "--auth-token-file", single),
                         NS_EINVAL);
        ck_assert_ptr_null(auth);
        ck_assert_msg(strstr(err, "--auth-tokens-file") && strstr(err, bad[i].want), "case %zu: %s",
                      i, err);
        ck_assert_ptr_null(strstr(err, "tok-a"));
        ck_assert_ptr_null(strstr(err, "solo"));
    }
    snprintf(path, sizeof(path), "%s/missing", dir);
    ck_assert_int_eq(load(NULL, "--auth-tokens-file", path), NS_EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "missing"));
}
END_TEST

/* 0 when 'header' may make the request, else the missing scope's first letter. */
static int permit(const char *header, const char *method, const char *run)
{
    nsd_grant_t g;
    int unknown;
    ck_assert_int_eq(nsd_auth_check(auth, header, &g, &unknown), 0);
    const char *need = NULL;
    ns_error_detail_t e = {0};
    int rc = nsd_auth_permit(&g, method, run, &need, &e);
    if (rc == 0)
        return 0;
    ck_assert_int_eq(rc, NS_EFORBIDDEN);
    ck_assert_ptr_nonnull(need);
    ck_assert_ptr_nonnull(strstr(e.message, need));
    return need[0];
}

START_TEST(test_permit)
{
    char path[4200];
    static const char file[] = "A admin\nR read\nW write exp-*\n";
    write_file(path, sizeof(path), "tokens", file, sizeof(file) - 1);
    ck_assert_int_eq(load(NULL, "--auth-tokens-file", path), 0);
    static const struct {
        const char *method, *run;
        int admin, read, write; /* 0 allowed, else the missing scope's letter */
    } cases[] = {
        {"GET", "", 0, 0, 'r'}, /* list runs, metrics, version */
        {"HEAD", "", 0, 0, 'r'},
        {"GET", "exp-1", 0, 0, 0}, /* a run the write token matches */
        {"HEAD", "exp-1", 0, 0, 0},
        {"GET", "other", 0, 0, 'r'},  /* one it does not */
        {"POST", "exp-1", 0, 'w', 0}, /* reports, /grad, precise reset */
        {"PUT", "exp-1", 0, 'w', 0},  /* configuration, checkpoint import */
        {"POST", "other", 0, 'w', 'w'},
        {"PUT", "exp", 0, 'w', 'w'},
        {"POST", "xexp-1", 0, 'w', 'w'},
        {"DELETE", "exp-1", 0, 'a', 'a'},
        {"DELETE", "other", 0, 'a', 'a'},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        ck_assert_int_eq(permit("Bearer A", cases[i].method, cases[i].run), cases[i].admin);
        ck_assert_msg(permit("Bearer R", cases[i].method, cases[i].run) == cases[i].read,
                      "read %s %s", cases[i].method, cases[i].run);
        ck_assert_msg(permit("Bearer W", cases[i].method, cases[i].run) == cases[i].write,
                      "write %s %s", cases[i].method, cases[i].run);
    }
}
END_TEST

START_TEST(test_reload)
{
    char path[4200];
    static const char first[] = "one admin\ntwo read\n";
    write_file(path, sizeof(path), "tokens", first, strlen(first));
    ck_assert_int_eq(load(NULL, "--auth-tokens-file", path), 0);
    ck_assert_int_eq(scope_of("Bearer two"), NSD_SCOPE_READ);
    /* A new file: new tokens in, removed ones out, scopes changed. */
    static const char second[] = "two admin\nthree write r*\n";
    write_file(path, sizeof(path), "tokens", second, strlen(second));
    size_t count = 0;
    ck_assert_int_eq(nsd_auth_reload(auth, &count, &detail), 0);
    ck_assert_uint_eq(count, 2);
    ck_assert_int_eq(scope_of("Bearer one"), 0);
    ck_assert_int_eq(scope_of("Bearer two"), NSD_SCOPE_ADMIN);
    ck_assert_int_eq(scope_of("Bearer three"), NSD_SCOPE_WRITE);
    /* A bad file, an empty one, a missing one: the tokens in use stay. */
    static const char *const bad[] = {"two admin\nfour sudo\n", "# none\n", NULL};
    for (size_t i = 0; i < 3; i++) {
        if (bad[i] != NULL)
            write_file(path, sizeof(path), "tokens", bad[i], strlen(bad[i]));
        else
            ck_assert_int_eq(unlink(path), 0);
        memset(&detail, 0, sizeof(detail));
        ck_assert_int_eq(nsd_auth_reload(auth, &count, &detail), NS_EINVAL);
        ck_assert_ptr_nonnull(strstr(err, "--auth-tokens-file"));
        ck_assert_uint_eq(count, 2);
        ck_assert_int_eq(scope_of("Bearer two"), NSD_SCOPE_ADMIN);
        ck_assert_int_eq(scope_of("Bearer three"), NSD_SCOPE_WRITE);
        ck_assert_int_eq(scope_of("Bearer four"), 0);
    }
    nsd_auth_free(auth);
    auth = NULL;
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
    tcase_add_test(tc, test_tokens_file);
    tcase_add_test(tc, test_permit);
    tcase_add_test(tc, test_reload);
    tcase_add_test(tc, test_exempt);
    suite_add_tcase(s, tc);
    return s;
}

NS_TEST_MAIN(make_suite)
