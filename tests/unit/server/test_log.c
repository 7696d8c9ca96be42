/* test_log.c - normstatd's logfmt lines: format, level threshold, quoting, reopen. */
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/log.h"
#include "harness.h"

static char path[64];

static void setup(void)
{
    snprintf(path, sizeof(path), "/tmp/nsd-test-log-%ld.log", (long)getpid());
    unlink(path);
    ck_assert_int_eq(nsd_log_open(path, NULL), 0);
    nsd_log_set_level(NSD_LOG_INFO);
}

static void teardown(void)
{
    nsd_log_close();
    unlink(path);
}

/* The whole file 'p' (static buffer). */
static const char *slurp(const char *p)
{
    static char buf[8192];
    FILE *f = fopen(p, "r");
    ck_assert_ptr_nonnull(f);
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

static int evaluated;
static int count_evaluation(void)
{
    return ++evaluated;
}

START_TEST(test_line_format)
{
    nsd_log(NSD_LOG_INFO, "run_created", "run=%s world_size=%d", "r1", 4);
    const char *text = slurp(path);
    regex_t re;
    ck_assert_int_eq(
        regcomp(&re,
                "^ts=[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{3}Z "
                "level=info event=run_created run=r1 world_size=4\n$",
                REG_EXTENDED),
        0);
    ck_assert_msg(regexec(&re, text, 0, NULL, 0) == 0, "line: '%s'", text);
    regfree(&re);
}
END_TEST

START_TEST(test_threshold)
{
    evaluated = 0;
    nsd_log(NSD_LOG_DEBUG, "hidden", "n=%d", count_evaluation());
    ck_assert_int_eq(evaluated, 0); /* arguments not evaluated below the threshold */
    nsd_log(NSD_LOG_WARN, "shown", "n=%d", count_evaluation());
    ck_assert_int_eq(evaluated, 1);
    nsd_log_set_level(NSD_LOG_ERROR);
    nsd_log(NSD_LOG_WARN, "hidden_too", "n=%d", count_evaluation());
    nsd_log(NSD_LOG_ERROR, "failed", "n=%d", 2);
    const char *text = slurp(path);
    ck_assert_ptr_null(strstr(text, "hidden"));
    ck_assert_ptr_nonnull(strstr(text, "level=warn event=shown n=1\n"));
    ck_assert_ptr_nonnull(strstr(text, "level=error event=failed n=2\n"));
    ck_assert_int_eq(nsd_log_level_parse("debug"), NSD_LOG_DEBUG);
    ck_assert_int_eq(nsd_log_level_parse("warning"), NSD_LOG_WARN);
    ck_assert_int_eq(nsd_log_level_parse("Info"), -1);
}
END_TEST

START_TEST(test_quote)
{
    char q[64];
    ck_assert_str_eq(nsd_log_quote(q, sizeof(q), "plain-value_1.2"), "plain-value_1.2");
    ck_assert_str_eq(nsd_log_quote(q, sizeof(q), ""), "\"\"");
    ck_assert_str_eq(nsd_log_quote(q, sizeof(q), "two words"), "\"two words\"");
    ck_assert_str_eq(nsd_log_quote(q, sizeof(q), "a=b"), "\"a=b\"");
    ck_assert_str_eq(nsd_log_quote(q, sizeof(q), "say \"hi\"\\"), "\"say \\\"hi\\\"\\\\\"");
    ck_assert_str_eq(nsd_log_quote(q, sizeof(q), "line\nnext\t"), "\"line\\nnext\\x09\"");
    /* Truncated, still closed. */
    char small[8];
    const char *t = nsd_log_quote(small, sizeof(small), "a long value");
    ck_assert_uint_lt(strlen(t), sizeof(small));
    ck_assert_int_eq(t[0], '"');
    ck_assert_int_eq(t[strlen(t) - 1], '"');
}
END_TEST

START_TEST(test_reopen)
{
    char moved[80];
    snprintf(moved, sizeof(moved), "%s.1", path);
    nsd_log(NSD_LOG_INFO, "before", "n=%d", 1);
    ck_assert_int_eq(rename(path, moved), 0);
    nsd_log(NSD_LOG_INFO, "still_old", "n=%d", 2); /* the open file moved with it */
    ck_assert_int_eq(nsd_log_reopen(NULL), 0);
    nsd_log(NSD_LOG_INFO, "after", "n=%d", 3);
    const char *old_text = slurp(moved);
    ck_assert_ptr_nonnull(strstr(old_text, "event=before"));
    ck_assert_ptr_nonnull(strstr(old_text, "event=still_old"));
    ck_assert_ptr_null(strstr(old_text, "event=after"));
    const char *new_text = slurp(path);
    ck_assert_ptr_nonnull(strstr(new_text, "event=after n=3\n"));
    ck_assert_ptr_null(strstr(new_text, "event=before"));
    unlink(moved);
    ck_assert_int_lt(nsd_log_open("/nonexistent-dir/x.log", NULL), 0);
}
END_TEST

static Suite *log_suite(void)
{
    Suite *s = suite_create("log");
    TCase *tc = tcase_create("log");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_line_format);
    tcase_add_test(tc, test_threshold);
    tcase_add_test(tc, test_quote);
    tcase_add_test(tc, test_reopen);
    suite_add_tcase(s, tc);
    return s;
}

NS_TEST_MAIN(log_suite)
