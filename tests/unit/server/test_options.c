/* test_options.c - normstatd's options: defaults, environment vs flags, sizes, addresses, bad
 * values. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "base/options.h"
#include "harness.h"

static nsd_options_t opts;
static ns_error_detail_t detail;
static const char *const err = detail.message;

/* Parse a NULL-terminated argv (program name added) with environment 'envp'. */
static int parse(char *const envp[], const char *const args[])
{
    char *argv[32];
    int argc = 0;
    argv[argc++] = (char *)"normstatd";
    for (size_t i = 0; args != NULL && args[i] != NULL; i++)
        argv[argc++] = (char *)args[i];
    argv[argc] = NULL;
    memset(&detail, 0, sizeof(detail));
    return nsd_options_parse(&opts, argc, argv, envp, &detail);
}

START_TEST(test_defaults)
{
    ck_assert_int_eq(parse(NULL, NULL), 0);
    ck_assert_str_eq(opts.listen.host, "127.0.0.1");
    ck_assert_uint_eq(opts.listen.port, 8750);
    ck_assert_str_eq(opts.data_dir, "./var");
    ck_assert_int_eq(opts.no_persist, 0);
    ck_assert_int_eq(opts.threads, 4);
    ck_assert_int_eq(opts.core_threads, 1);
    ck_assert_uint_eq(opts.max_body, 16u * 1024u * 1024u);
    ck_assert_uint_eq(opts.max_memory, 0);
    ck_assert_int_eq(opts.max_pending_steps, 1024);
    ck_assert_int_eq(opts.log_level, NSD_LOG_INFO);
    ck_assert_str_eq(opts.log_file, "");
    ck_assert_int_eq(opts.shutdown_timeout, 10000);
    ck_assert_int_eq(opts.routes, 0);
    ck_assert_int_eq(opts.probe.set, 0);
    ck_assert_int_eq(opts.help, 0);
    ck_assert_int_eq(opts.version, 0);
}
END_TEST

START_TEST(test_env_applies)
{
    char *const env[] = {"PATH=/bin",
                         "NORMSTAT_THREADS=8",
                         "NORMSTAT_LISTEN=0.0.0.0:9000",
                         "NORMSTAT_MAX_BODY=1M",
                         "NORMSTAT_NO_PERSIST=true",
                         "NORMSTAT_LOG_LEVEL=debug",
                         "NORMSTAT_DATA_DIR=/tmp/x y",
                         "NORMSTAT_THREADSX=3",
                         NULL};
    ck_assert_int_eq(parse(env, NULL), 0);
    ck_assert_int_eq(opts.threads, 8);
    ck_assert_str_eq(opts.listen.host, "0.0.0.0");
    ck_assert_uint_eq(opts.listen.port, 9000);
    ck_assert_uint_eq(opts.max_body, 1048576u);
    ck_assert_int_eq(opts.no_persist, 1);
    ck_assert_int_eq(opts.log_level, NSD_LOG_DEBUG);
    ck_assert_str_eq(opts.data_dir, "/tmp/x y");
}
END_TEST

START_TEST(test_flags_override_env)
{
    char *const env[] = {"NORMSTAT_THREADS=8", "NORMSTAT_NO_PERSIST=1", "NORMSTAT_LOG_LEVEL=error",
                         "NORMSTAT_MAX_PENDING_STEPS=7", NULL};
    const char *const args[] = {"--threads", "2", "--no-persist=false", "--log-level=warn", NULL};
    ck_assert_int_eq(parse(env, args), 0);
    ck_assert_int_eq(opts.threads, 2);
    ck_assert_int_eq(opts.no_persist, 0);
    ck_assert_int_eq(opts.log_level, NSD_LOG_WARN);
    /* Untouched by flags: the environment's value stays. */
    ck_assert_int_eq(opts.max_pending_steps, 7);
    /* The last flag wins. */
    const char *const twice[] = {"--threads=3", "--threads", "5", "--no-persist", NULL};
    ck_assert_int_eq(parse(NULL, twice), 0);
    ck_assert_int_eq(opts.threads, 5);
    ck_assert_int_eq(opts.no_persist, 1);
}
END_TEST

START_TEST(test_sizes)
{
    static const struct {
        const char *text;
        uint64_t bytes;
    } good[] = {
        {"0", 0},
        {"123", 123},
        {"64K", 65536},
        {"64k", 65536},
        {"1KiB", 1024},
        {"1KB", 1024},
        {"16M", 16777216},
        {"2G", 2147483648ull},
        {"3g", 3221225472ull},
        {"1T", 1099511627776ull},
        {"18446744073709551615", 18446744073709551615ull},
        {"16777215T", 18446742974197923840ull},
    };
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        uint64_t v = 1;
        ck_assert_msg(nsd_options_parse_size(good[i].text, &v) == 0, "%s", good[i].text);
        ck_assert_msg(v == good[i].bytes, "%s -> %llu", good[i].text, (unsigned long long)v);
    }
    static const char *const bad[] = {"",
                                      "K",
                                      "-1",
                                      "+1",
                                      " 1",
                                      "1 ",
                                      "1.5M",
                                      "12X",
                                      "1MM",
                                      "1Mi",
                                      "1iB",
                                      "16777216T",
                                      "18446744073709551616",
                                      "0x10"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        uint64_t v = 7;
        ck_assert_msg(nsd_options_parse_size(bad[i], &v) == NS_EINVAL, "'%s' accepted", bad[i]);
        ck_assert_uint_eq(v, 7);
    }
    const char *const args[] = {"--max-body", "512K", "--max-memory=1G", NULL};
    ck_assert_int_eq(parse(NULL, args), 0);
    ck_assert_uint_eq(opts.max_body, 524288u);
    ck_assert_uint_eq(opts.max_memory, 1073741824u);
}
END_TEST

START_TEST(test_addresses)
{
    nsd_addr_t a;
    ck_assert_int_eq(nsd_options_parse_addr("127.0.0.1:0", &a), 0);
    ck_assert_str_eq(a.host, "127.0.0.1");
    ck_assert_uint_eq(a.port, 0);
    ck_assert_int_eq(nsd_options_parse_addr("[::1]:8750", &a), 0);
    ck_assert_str_eq(a.host, "::1");
    ck_assert_uint_eq(a.port, 8750);
    ck_assert_int_eq(nsd_options_parse_addr("localhost:65535", &a), 0);
    ck_assert_str_eq(a.host, "localhost");
    ck_assert_uint_eq(a.port, 65535);
    static const char *const bad[] = {"",
                                      ":80",
                                      "127.0.0.1",
                                      "127.0.0.1:",
                                      "127.0.0.1:65536",
                                      "127.0.0.1:-1",
                                      "127.0.0.1:8o",
                                      "::1:80",
                                      "[::1]",
                                      "[nothex]:80",
                                      "a b:80",
                                      "host:123456"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        ck_assert_msg(nsd_options_parse_addr(bad[i], &a) == NS_EINVAL, "'%s' accepted", bad[i]);
}
END_TEST

/* Each bad value fails with one line naming the flag or variable. */
START_TEST(test_bad_values)
{
    static const struct {
        const char *args[4];
        const char *env;
        const char *names;
    } cases[] = {
        {{"--threads", "0"}, NULL, "--threads"},
        {{"--threads", "1025"}, NULL, "--threads"},
        {{"--threads", "four"}, NULL, "--threads"},
        {{"--threads", "4x"}, NULL, "--threads"},
        {{"--threads=", NULL}, NULL, "--threads"},
        {{"--core-threads", "-1"}, NULL, "--core-threads"},
        {{"--max-body", "0"}, NULL, "--max-body"},
        {{"--max-body", "5Q"}, NULL, "--max-body"},
        {{"--max-pending-steps", "0"}, NULL, "--max-pending-steps"},
        {{"--log-level", "loud"}, NULL, "--log-level"},
        {{"--listen", "8750"}, NULL, "--listen"},
        {{"--shutdown-timeout", "-5"}, NULL, "--shutdown-timeout"},
        {{"--no-persist=maybe"}, NULL, "--no-persist"},
        {{"--help=yes"}, NULL, "--help"},
        {{"--threads"}, NULL, "--threads"},
        {{"--bogus"}, NULL, "--bogus"},
        {{"listen"}, NULL, "listen"},
        {{NULL}, "NORMSTAT_THREADS=", "NORMSTAT_THREADS"},
        {{NULL}, "NORMSTAT_MAX_BODY=lots", "NORMSTAT_MAX_BODY"},
        {{NULL}, "NORMSTAT_LISTEN=nohost", "NORMSTAT_LISTEN"},
        {{NULL}, "NORMSTAT_NO_PERSIST=2", "NORMSTAT_NO_PERSIST"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *const env[] = {(char *)cases[i].env, NULL};
        ck_assert_msg(parse(cases[i].env ? env : NULL, cases[i].args) == NS_EINVAL, "case %zu", i);
        ck_assert_msg(strstr(err, cases[i].names) != NULL, "case %zu: '%s'", i, err);
        ck_assert_msg(strchr(err, '\n') == NULL, "case %zu: more than one line", i);
    }
}
END_TEST

START_TEST(test_actions)
{
    const char *const a1[] = {"--probe", NULL};
    ck_assert_int_eq(parse(NULL, a1), 0);
    ck_assert_int_eq(opts.probe.set, 1);
    ck_assert_str_eq(opts.probe.url, "");
    const char *const a2[] = {"--probe", "http://127.0.0.1:1/readyz", "--threads", "2", NULL};
    ck_assert_int_eq(parse(NULL, a2), 0);
    ck_assert_int_eq(opts.probe.set, 1);
    ck_assert_str_eq(opts.probe.url, "http://127.0.0.1:1/readyz");
    ck_assert_int_eq(opts.threads, 2);
    const char *const a3[] = {"--probe", "--listen", "0.0.0.0:1", NULL};
    ck_assert_int_eq(parse(NULL, a3), 0);
    ck_assert_str_eq(opts.probe.url, "");
    ck_assert_uint_eq(opts.listen.port, 1);
    const char *const a4[] = {"-h", "-V", "--routes", NULL};
    ck_assert_int_eq(parse(NULL, a4), 0);
    ck_assert(opts.help && opts.version && opts.routes);
}
END_TEST

/* --help is generated from options.def: every flag and variable appears. */
START_TEST(test_help)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    ck_assert_ptr_nonnull(f);
    nsd_options_help(f, "normstatd");
    fclose(f);
    static const char *const expect[] = {"--listen HOST:PORT",
                                         "NORMSTAT_LISTEN",
                                         "127.0.0.1:8750",
                                         "--data-dir DIR",
                                         "NORMSTAT_DATA_DIR",
                                         "--no-persist",
                                         "--threads N",
                                         "--core-threads N",
                                         "--max-body BYTES",
                                         "16M",
                                         "--max-memory",
                                         "--max-pending-steps N",
                                         "--log-level LEVEL",
                                         "--log-file FILE",
                                         "--shutdown-timeout MS",
                                         "--routes",
                                         "--probe [URL]",
                                         "--help",
                                         "--version"};
    for (size_t i = 0; i < sizeof(expect) / sizeof(expect[0]); i++)
        ck_assert_msg(strstr(text, expect[i]) != NULL, "missing '%s'", expect[i]);
    free(text);
}
END_TEST

static Suite *options_suite(void)
{
    Suite *s = suite_create("options");
    TCase *tc = tcase_create("options");
    tcase_add_test(tc, test_defaults);
    tcase_add_test(tc, test_env_applies);
    tcase_add_test(tc, test_flags_override_env);
    tcase_add_test(tc, test_sizes);
    tcase_add_test(tc, test_addresses);
    tcase_add_test(tc, test_bad_values);
    tcase_add_test(tc, test_actions);
    tcase_add_test(tc, test_help);
    suite_add_tcase(s, tc);
    return s;
}

NS_TEST_MAIN(options_suite)
