/* test_proto_report.c - report decoding: the data-driven cases of tests/proto/
 * (JSON and safetensors), random reports against an independent encoder, the
 * unbiased conversion against long double, and error details. */
#include <normstat/proto.h>

#include <dirent.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "harness.h"

#define CASES_DIR "tests/proto"

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 4096, n = 0;
    char *data = malloc(cap);
    for (;;) {
        if (n == cap)
            data = realloc(data, cap *= 2);
        size_t got = fread(data + n, 1, cap - n, f);
        if (got == 0)
            break;
        n += got;
    }
    fclose(f);
    *len = n;
    return data;
}

static int name_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Sorted subdirectory names of 'dir'; returns the count. */
static size_t list_cases(const char *dir, char ***out)
{
    DIR *d = opendir(dir);
    ck_assert_msg(d != NULL, "cannot open %s (run the tests from the repository root)", dir);
    size_t n = 0, cap = 64;
    char **names = malloc(cap * sizeof(*names));
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        if (n == cap)
            names = realloc(names, (cap *= 2) * sizeof(*names));
        names[n++] = strdup(e->d_name);
    }
    closedir(d);
    qsort(names, n, sizeof(*names), name_cmp);
    *out = names;
    return n;
}

/* Decode <dir>/request.json or <dir>/request.safetensors. */
static int decode_case(const char *dir, ns_report_t **report, ns_error_detail_t *err)
{
    char path[400];
    size_t len;
    snprintf(path, sizeof(path), "%s/request.json", dir);
    char *body = read_file(path, &len);
    int rc;
    if (body) {
        rc = ns_report_decode_json(report, body, len, err);
    } else {
        snprintf(path, sizeof(path), "%s/request.safetensors", dir);
        body = read_file(path, &len);
        ck_assert_msg(body != NULL, "%s: no request.json or request.safetensors", dir);
        rc = ns_report_decode_safetensors(report, (const uint8_t *)body, len, err);
    }
    free(body);
    return rc;
}

/* Compare a decoded array with the expected numbers: exact float32 rounding
 * of the expected value, or within 2 ulp when the case converts variances. */
static int compare_values(const char *what, const float *got, size_t n, const json_t *expected,
                          int approx)
{
    if (json_is_null(expected)) {
        if (got) {
            fprintf(stderr, "%s: expected no array\n", what);
            return 1;
        }
        return 0;
    }
    if (!got || json_array_size(expected) != n) {
        fprintf(stderr, "%s: expected %zu values, got %zu\n", what, json_array_size(expected),
                got ? n : 0);
        return 1;
    }
    for (size_t i = 0; i < n; i++) {
        double e = json_number_value(json_array_get(expected, i));
        float ef = (float)e;
        int ok = approx ? fabs((double)got[i] - e) <= 2.0 * FLT_EPSILON * fabs(e) + FLT_MIN
                        : got[i] == ef;
        if (!ok) {
            fprintf(stderr, "%s[%zu]: expected %.9g, got %.9g\n", what, i, (double)ef,
                    (double)got[i]);
            return 1;
        }
    }
    return 0;
}

static int check_valid(const char *dir, const ns_report_t *r)
{
    char path[1024], what[1024];
    json_error_t jerr;
    snprintf(path, sizeof(path), "%s/expected.json", dir);
    json_t *x = json_load_file(path, 0, &jerr);
    ck_assert_msg(x != NULL, "%s: %s", path, jerr.text);
    int bad = 0;
    unsigned update = 0;
    size_t i;
    json_t *item;
    json_array_foreach(json_object_get(x, "update"), i, item)
    {
        update |= strcmp(json_string_value(item), "ema") == 0 ? NS_UPDATE_EMA : NS_UPDATE_PRECISE;
    }
    const char *scope = json_string_value(json_object_get(x, "scope"));
    bad |= r->step != (uint64_t)json_integer_value(json_object_get(x, "step"));
    bad |= r->worker != (uint32_t)json_integer_value(json_object_get(x, "worker"));
    bad |= strcmp(r->domain, json_string_value(json_object_get(x, "domain"))) != 0;
    bad |= r->unbiased != json_is_true(json_object_get(x, "unbiased"));
    bad |= r->update != update;
    bad |= r->scope != (strcmp(scope, "domain") == 0 ? NS_SCOPE_DOMAIN : NS_SCOPE_GLOBAL);
    bad |= r->world_size != json_integer_value(json_object_get(x, "world_size"));
    if (bad)
        fprintf(stderr, "%s: a scalar field differs from expected.json\n", dir);
    const json_t *layers = json_object_get(x, "layers");
    if (r->n_layers != json_array_size(layers)) {
        fprintf(stderr, "%s: expected %zu layers, got %zu\n", dir, json_array_size(layers),
                r->n_layers);
        bad = 1;
    } else {
        json_array_foreach(layers, i, item)
        {
            const ns_layer_report_t *l = &r->layers[i];
            if (strcmp(l->name, json_string_value(json_object_get(item, "name"))) != 0 ||
                l->count != (uint64_t)json_integer_value(json_object_get(item, "count"))) {
                fprintf(stderr, "%s: layer %zu is %s count %llu\n", dir, i, l->name,
                        (unsigned long long)l->count);
                bad = 1;
                continue;
            }
            snprintf(what, sizeof(what), "%s: %s.mean", dir, l->name);
            bad |= compare_values(what, l->mean, l->channels, json_object_get(item, "mean"), 0);
            snprintf(what, sizeof(what), "%s: %s.var", dir, l->name);
            bad |= compare_values(what, l->var, l->channels, json_object_get(item, "var"),
                                  r->unbiased);
        }
    }
    json_decref(x);
    return bad;
}

START_TEST(test_valid_cases)
{
    char **names, dir[300];
    size_t n = list_cases(CASES_DIR "/valid", &names);
    int failed = 0;
    ck_assert_uint_ge(n, 10);
    for (size_t i = 0; i < n; i++) {
        ns_report_t *r = NULL;
        ns_error_detail_t err = {0};
        snprintf(dir, sizeof(dir), CASES_DIR "/valid/%s", names[i]);
        int rc = decode_case(dir, &r, &err);
        if (rc != 0) {
            fprintf(stderr, "%s: rejected: %d %s\n", dir, rc, err.message);
            failed++;
        } else {
            failed += check_valid(dir, r);
        }
        ns_report_free(r);
        free(names[i]);
    }
    free(names);
    ck_assert_msg(failed == 0, "%d valid case(s) failed, see stderr", failed);
}
END_TEST

START_TEST(test_invalid_cases)
{
    char **names, dir[300], path[400];
    size_t n = list_cases(CASES_DIR "/invalid", &names);
    int failed = 0;
    ck_assert_uint_ge(n, 25);
    for (size_t i = 0; i < n; i++) {
        ns_report_t *r = (ns_report_t *)&r; /* must be reset to NULL */
        ns_error_detail_t err = {0};
        size_t len;
        snprintf(dir, sizeof(dir), CASES_DIR "/invalid/%s", names[i]);
        snprintf(path, sizeof(path), "%s/error", dir);
        char *expected = read_file(path, &len);
        ck_assert_msg(expected != NULL, "%s: missing", path);
        while (len && (expected[len - 1] == '\n' || expected[len - 1] == '\r'))
            len--;
        expected[len] = '\0';
        int rc = decode_case(dir, &r, &err);
        char got[700];
        snprintf(got, sizeof(got), "%d %s %s", ns_error_http_status(rc), ns_error_name(rc),
                 err.message);
        if (rc == 0 || r != NULL || err.code != rc || strcmp(got, expected) != 0) {
            fprintf(stderr, "%s:\n  expected: %s\n  got:      %s\n", dir, expected, got);
            failed++;
        }
        ns_report_free(rc == 0 ? r : NULL);
        free(expected);
        free(names[i]);
    }
    free(names);
    ck_assert_msg(failed == 0, "%d invalid case(s) failed, see stderr", failed);
}
END_TEST

/* ---------------------------------------------------------------- random reports */

typedef struct ref_layer_s {
    char name[NS_NAME_MAX + 1];
    uint64_t count;
    size_t channels;
    double *mean, *var;
} ref_layer_t;

static void random_name(char *dst, size_t len, uint64_t *rng)
{
    static const char alphabet[] = "ABCXYZabcxyz0189_.:-";
    for (size_t i = 0; i < len; i++)
        dst[i] = alphabet[ns_test_rand(rng) % (sizeof(alphabet) - 1)];
    dst[len] = '\0';
}

static int ref_cmp(const void *a, const void *b)
{
    return strcmp(((const ref_layer_t *)a)->name, ((const ref_layer_t *)b)->name);
}

START_TEST(test_random_reports)
{
    uint64_t rng = ns_test_seed() ^ 0x9e3779b97f4a7c15ull;
    for (int iter = 0; iter < 200; iter++) {
        size_t n_layers = 1 + ns_test_rand(&rng) % 8;
        ref_layer_t *ref = calloc(n_layers, sizeof(*ref));
        int unbiased = ns_test_rand(&rng) % 2;
        ns_buf_t body = {0};
        /* The body is assembled here with printf, independent of the decoder. */
        ns_buf_printf(&body, "{\"worker\":%d,\"unbiased\":%s,\"layers\":{", iter,
                      unbiased ? "true" : "false");
        for (size_t l = 0; l < n_layers; l++) {
            ref_layer_t *x = &ref[l];
            /* distinct names: a numeric suffix keeps them unique */
            random_name(x->name, 1 + ns_test_rand(&rng) % 100, &rng);
            snprintf(x->name + strlen(x->name), sizeof(x->name) - strlen(x->name), "%zu", l);
            x->count =
                ns_test_rand(&rng) % 4 == 0 ? ns_test_rand(&rng) % 2 : ns_test_rand(&rng) % 1000000;
            x->channels = 1 + ns_test_rand(&rng) % 300;
            x->mean = malloc(x->channels * sizeof(double));
            x->var = malloc(x->channels * sizeof(double));
            ns_buf_printf(&body, "%s\"%s\":{\"count\":%llu,\"mean\":[", l ? "," : "", x->name,
                          (unsigned long long)x->count);
            for (size_t c = 0; c < x->channels; c++) {
                x->mean[c] =
                    ns_test_normal(&rng) * pow(10.0, (double)(ns_test_rand(&rng) % 20) - 10);
                ns_buf_printf(&body, "%s%.17g", c ? "," : "", x->mean[c]);
            }
            ns_buf_printf(&body, "],\"var\":[");
            for (size_t c = 0; c < x->channels; c++) {
                x->var[c] = ns_test_rand(&rng) % 10 == 0 ? (double)(ns_test_rand(&rng) % 100)
                                                         : ns_test_uniform(&rng) * 5.0;
                ns_buf_printf(&body, "%s%.17g", c ? "," : "", x->var[c]);
            }
            ns_buf_printf(&body, "]}");
        }
        ns_buf_printf(&body, "},\"step\":%d}", iter * 3);
        ck_assert_ptr_nonnull(body.data);

        ns_report_t *r = NULL;
        ns_error_detail_t err = {0};
        int rc = ns_report_decode_json(&r, body.data, body.len, &err);
        ck_assert_msg(rc == 0, "iteration %d: %s", iter, err.message);
        qsort(ref, n_layers, sizeof(*ref), ref_cmp);
        ck_assert_uint_eq(r->n_layers, n_layers);
        ck_assert_uint_eq(r->step, (uint64_t)iter * 3);
        ck_assert_uint_eq(r->worker, (uint32_t)iter);
        for (size_t l = 0; l < n_layers; l++) {
            const ns_layer_report_t *got = &r->layers[l];
            ck_assert_str_eq(got->name, ref[l].name);
            ck_assert_uint_eq(got->count, ref[l].count);
            ck_assert_uint_eq(got->channels, ref[l].channels);
            for (size_t c = 0; c < got->channels; c++) {
                ck_assert(got->mean[c] == (float)ref[l].mean[c]);
                /* The unbiased -> biased reference in long double. */
                long double v = (float)ref[l].var[c];
                if (unbiased)
                    v = ref[l].count <= 1
                            ? 0.0L
                            : v * (long double)(ref[l].count - 1) / (long double)ref[l].count;
                long double diff = fabsl((long double)got->var[c] - v);
                ck_assert_msg(diff <= v * 1.2e-7L, "var %.9Lg vs %.9g", v, (double)got->var[c]);
            }
        }
        ns_report_free(r);
        for (size_t l = 0; l < n_layers; l++) {
            free(ref[l].mean);
            free(ref[l].var);
        }
        free(ref);
        ns_buf_free(&body);
    }
}
END_TEST

/* ---------------------------------------------------------------- errors */

START_TEST(test_error_set_first_wins)
{
    ns_error_detail_t err = {0};
    ck_assert_int_eq(ns_error_set(&err, NS_EVALUE, "layers.a.var[2]", "negative variance %g", -0.5),
                     NS_EVALUE);
    ck_assert_int_eq(err.code, NS_EVALUE);
    ck_assert_str_eq(err.field, "layers.a.var[2]");
    ck_assert_str_eq(err.message, "layers.a.var[2]: negative variance -0.5");
    ck_assert_int_eq(ns_error_set(&err, NS_EINVAL, "step", "other"), NS_EINVAL);
    ck_assert_int_eq(err.code, NS_EVALUE);
    ck_assert_str_eq(err.message, "layers.a.var[2]: negative variance -0.5");
    ns_error_detail_t e2 = {0};
    ns_error_set(&e2, NS_EINVAL, NULL, "whole body %d", 1);
    ck_assert_str_eq(e2.field, "");
    ck_assert_str_eq(e2.message, "whole body 1");
    ck_assert_int_eq(ns_error_set(NULL, NS_ENOMEM, "", "x"), NS_ENOMEM);
    /* Long text is truncated, never overflowing. */
    char big[2000];
    memset(big, 'q', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    ns_error_detail_t e3 = {0};
    ns_error_set(&e3, NS_EINVAL, big, "%s", big);
    ck_assert_uint_eq(strlen(e3.field), sizeof(e3.field) - 1);
    ck_assert_uint_eq(strlen(e3.message), sizeof(e3.message) - 1);
}
END_TEST

START_TEST(test_name_valid)
{
    char name[200];
    ck_assert_int_eq(ns_name_valid("layer1.0.bn1"), 1);
    ck_assert_int_eq(ns_name_valid("A-Z_a:z.09"), 1);
    ck_assert_int_eq(ns_name_valid(""), 0);
    ck_assert_int_eq(ns_name_valid(NULL), 0);
    ck_assert_int_eq(ns_name_valid("*"), 0);
    ck_assert_int_eq(ns_name_valid("a b"), 0);
    ck_assert_int_eq(ns_name_valid("a/b"), 0);
    ck_assert_int_eq(ns_name_valid("caf\xc3\xa9"), 0);
    memset(name, 'n', 128);
    name[128] = '\0';
    ck_assert_int_eq(ns_name_valid(name), 1);
    name[128] = 'n';
    name[129] = '\0';
    ck_assert_int_eq(ns_name_valid(name), 0);
    /* Every byte value once, against the rule written as a set. */
    for (int c = 1; c < 256; c++) {
        char s[2] = {(char)c, 0};
        int expect =
            strchr("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:-", c) != NULL;
        ck_assert_int_eq(ns_name_valid(s), expect);
    }
}
END_TEST

START_TEST(test_decode_leaves_dst_null)
{
    ns_report_t *r = (ns_report_t *)&r;
    ck_assert_int_eq(ns_report_decode_json(&r, "{}", 2, NULL), NS_EINVAL);
    ck_assert_ptr_null(r);
    r = (ns_report_t *)&r;
    ck_assert_int_eq(ns_report_decode_json(&r, NULL, 0, NULL), NS_EINVAL);
    ck_assert_ptr_null(r);
    ns_report_free(NULL);
}
END_TEST

static Suite *proto_report_suite(void)
{
    Suite *s = suite_create("proto_report");
    TCase *tc = tcase_create("report");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_valid_cases);
    tcase_add_test(tc, test_invalid_cases);
    tcase_add_test(tc, test_random_reports);
    tcase_add_test(tc, test_error_set_first_wins);
    tcase_add_test(tc, test_name_valid);
    tcase_add_test(tc, test_decode_leaves_dst_null);
    suite_add_tcase(s, tc);
    return s;
}

NS_TEST_MAIN(proto_report_suite)
