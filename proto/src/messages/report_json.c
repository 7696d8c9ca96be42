/* report_json.c - decoding and validating a JSON report body (/batches, /sync). */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "proto_internal.h"

#define NAME_RULE "[A-Za-z0-9_.:-]{1,128}"

const char *ns__json_describe(const json_t *v, char *dst, size_t dst_cap)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return "an object";
    case JSON_ARRAY:
        return "an array";
    case JSON_STRING:
        return "a string";
    case JSON_TRUE:
        return "true";
    case JSON_FALSE:
        return "false";
    case JSON_NULL:
        return "null";
    case JSON_INTEGER:
        snprintf(dst, dst_cap, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        return dst;
    case JSON_REAL:
        snprintf(dst, dst_cap, "%.17g", json_real_value(v));
        return dst;
    }
    return "?";
}

int ns__check_known_key(const char *key, const char *const *known, const char *prefix,
                        ns_error_detail_t *err)
{
    for (size_t i = 0; known[i]; i++)
        if (strcmp(known[i], key) == 0)
            return 0;
    char field[256];
    snprintf(field, sizeof(field), "%s%.160s", prefix, key);
    return ns_error_set(err, NS_EINVAL, field, "unknown field");
}

int ns__json_check_known(const json_t *obj, const char *const *known, const char *prefix,
                         ns_error_detail_t *err)
{
    const char *key;
    json_t *value;
    json_object_foreach((json_t *)obj, key, value)
    {
        int rc = ns__check_known_key(key, known, prefix, err);
        if (rc != 0)
            return rc;
    }
    return 0;
}

int ns__json_get_uint(const json_t *v, const char *field, uint64_t min, uint64_t max,
                      const char *expected, uint64_t *out, ns_error_detail_t *err)
{
    char got[64];
    if (!json_is_integer(v) || json_integer_value(v) < 0 || (uint64_t)json_integer_value(v) < min ||
        (uint64_t)json_integer_value(v) > max)
        return ns_error_set(err, NS_EINVAL, field, "expected %s, got %s", expected,
                            ns__json_describe(v, got, sizeof(got)));
    *out = (uint64_t)json_integer_value(v);
    return 0;
}

int ns__json_check_numbers(const json_t *v, const char *field, ns_error_detail_t *err)
{
    char got[64], elem[256];
    size_t i;
    json_t *item;
    if (!json_is_array(v))
        return ns_error_set(err, NS_EINVAL, field, "expected an array of numbers, got %s",
                            ns__json_describe(v, got, sizeof(got)));
    if (json_array_size(v) == 0)
        return ns_error_set(err, NS_EINVAL, field, "expected at least 1 value");
    json_array_foreach(v, i, item)
    {
        if (!json_is_number(item)) {
            snprintf(elem, sizeof(elem), "%s[%zu]", field, i);
            return ns_error_set(err, NS_EINVAL, elem, "expected a number, got %s",
                                ns__json_describe(item, got, sizeof(got)));
        }
    }
    return 0;
}

int ns__json_check_root(const json_t *root, const char *const *known, const json_t **layers,
                        ns_error_detail_t *err)
{
    static const char *const required[] = {"step", "worker", "layers"};
    char got[64];
    int rc;
    if (!json_is_object(root))
        return ns_error_set(err, NS_EINVAL, "", "request body must be a JSON object, got %s",
                            ns__json_describe(root, got, sizeof(got)));
    if ((rc = ns__json_check_known(root, known, "", err)))
        return rc;
    for (size_t i = 0; i < 3; i++)
        if (!json_object_get(root, required[i]))
            return ns_error_set(err, NS_EINVAL, required[i], "missing required field");
    *layers = json_object_get(root, "layers");
    if (!json_is_object(*layers))
        return ns_error_set(err, NS_EINVAL, "layers", "expected an object, got %s",
                            ns__json_describe(*layers, got, sizeof(got)));
    if (json_object_size(*layers) == 0)
        return ns_error_set(err, NS_EINVAL, "layers", "must not be empty");
    return 0;
}

int ns__json_get_step_worker(const json_t *root, uint64_t *step, uint32_t *worker,
                             ns_error_detail_t *err)
{
    uint64_t u;
    int rc = ns__json_get_uint(json_object_get(root, "step"), "step", 0, INT64_MAX,
                               "a non-negative integer", step, err);
    if (rc)
        return rc;
    if ((rc = ns__json_get_uint(json_object_get(root, "worker"), "worker", 0, UINT32_MAX,
                                "an integer in [0, 4294967295]", &u, err)))
        return rc;
    *worker = (uint32_t)u;
    return 0;
}

int ns__json_check_layer(char name_dst[NS_NAME_MAX + 1], const char *name, const json_t *v,
                         const char *const *known, ns_error_detail_t *err)
{
    char got[64], field[256];
    if (!ns_name_valid(name))
        return ns_error_set(err, NS_EINVAL, "layers",
                            "invalid layer name \"%.140s\" (names match " NAME_RULE ")", name);
    memcpy(name_dst, name, strlen(name) + 1);
    snprintf(field, sizeof(field), "layers.%s", name_dst);
    if (!json_is_object(v))
        return ns_error_set(err, NS_EINVAL, field, "expected an object, got %s",
                            ns__json_describe(v, got, sizeof(got)));
    snprintf(field, sizeof(field), "layers.%s.", name_dst);
    return ns__json_check_known(v, known, field, err);
}

static int decode_update(const json_t *v, unsigned *out, ns_error_detail_t *err)
{
    char got[64], field[32];
    size_t i;
    json_t *item;
    if (!json_is_array(v))
        return ns_error_set(err, NS_EINVAL, "update",
                            "expected an array of \"ema\" and/or \"precise\", got %s",
                            ns__json_describe(v, got, sizeof(got)));
    if (json_array_size(v) == 0)
        return ns_error_set(err, NS_EINVAL, "update", "must not be empty");
    unsigned bits = 0;
    json_array_foreach(v, i, item)
    {
        snprintf(field, sizeof(field), "update[%zu]", i);
        unsigned bit = json_is_string(item) ? ns__update_parse_word(json_string_value(item),
                                                                    json_string_length(item))
                                            : 0;
        if (!bit)
            return ns_error_set(err, NS_EINVAL, field, "expected \"ema\" or \"precise\"");
        if (bits & bit)
            return ns_error_set(err, NS_EINVAL, field, "\"%s\" is repeated",
                                json_string_value(item));
        bits |= bit;
    }
    *out = bits;
    return 0;
}

/* A "mean" or "var" array: at least one JSON number, each made float32. A
 * value beyond float32's range becomes infinity and is refused later (422). */
static int decode_values(const json_t *v, const char *field, float **out, size_t *len,
                         ns_error_detail_t *err)
{
    size_t i;
    json_t *item;
    int rc = ns__json_check_numbers(v, field, err);
    if (rc)
        return rc;
    size_t n = json_array_size(v);
    float *values = malloc(n * sizeof(*values));
    if (!values)
        return ns_error_set(err, NS_ENOMEM, field, "out of memory");
    json_array_foreach(v, i, item)
    {
        /* The float32 nearest the decimal, as in the fast path (f32_parse.c):
         * an int64 converts with one rounding, and jansson's correctly
         * rounded double of a real rounds to that float too unless the
         * double is exactly a midpoint between two floats. Valid reports
         * with reals never get here (report_json_fast.c), so that case only
         * shapes error messages. Past float32's range the value becomes
         * infinity (refused, 422). */
        values[i] =
            json_is_integer(item) ? (float)json_integer_value(item) : (float)json_real_value(item);
    }
    *out = values;
    *len = n;
    return 0;
}

static int decode_layer(ns_layer_report_t *layer, const char *name, const json_t *v,
                        ns_error_detail_t *err)
{
    static const char *const known[] = {NS_FIELD_COUNT, NS_FIELD_MEAN, NS_FIELD_VAR, NULL};
    char field[256];
    int rc = ns__json_check_layer(layer->name, name, v, known, err);
    if (rc)
        return rc;
    const char *lname = layer->name; /* at most NS_NAME_MAX bytes */

    const json_t *count = json_object_get(v, NS_FIELD_COUNT);
    snprintf(field, sizeof(field), "layers.%s." NS_FIELD_COUNT, lname);
    if (!count)
        return ns_error_set(err, NS_EINVAL, field, "missing required field");
    rc = ns__json_get_uint(count, field, 0, UINT64_MAX, "a non-negative integer", &layer->count,
                           err);
    if (rc)
        return rc;

    const json_t *mean = json_object_get(v, NS_FIELD_MEAN), *var = json_object_get(v, NS_FIELD_VAR);
    if (!mean || !var) {
        snprintf(field, sizeof(field), "layers.%s.%s", lname, mean ? NS_FIELD_VAR : NS_FIELD_MEAN);
        if (mean || var)
            return ns_error_set(err, NS_EINVAL, field, "missing (mean and var come together)");
        if (layer->count > 0)
            return ns_error_set(err, NS_EINVAL, field, "missing (required when count > 0)");
        return 0; /* count 0 without arrays: an empty batch */
    }
    size_t n_mean, n_var;
    snprintf(field, sizeof(field), "layers.%s.mean", lname);
    rc = decode_values(mean, field, &layer->mean, &n_mean, err);
    if (rc)
        return rc;
    layer->channels = n_mean;
    snprintf(field, sizeof(field), "layers.%s.var", lname);
    rc = decode_values(var, field, &layer->var, &n_var, err);
    if (rc)
        return rc;
    if (n_var != n_mean)
        return ns_error_set(err, NS_EINVAL, field, "expected %zu values, got %zu", n_mean, n_var);
    return 0;
}

/* Why element 'index' is not finite: JSON has no NaN or infinity, so it was a
 * number outside float32's range. */
static int overflow_hint(void *ctx, const ns_layer_report_t *layer, int is_var, size_t index,
                         char *dst, size_t dst_cap)
{
    const json_t *layers = ctx;
    const json_t *arr = json_object_get(json_object_get(layers, layer->name),
                                        is_var ? NS_FIELD_VAR : NS_FIELD_MEAN);
    const json_t *item = json_array_get(arr, index);
    if (!json_is_number(item))
        return -1;
    snprintf(dst, dst_cap, "value %g is outside the float32 range", json_number_value(item));
    return 0;
}

static int decode_root(ns_report_t **out, const json_t *root, ns_error_detail_t *err)
{
    static const char *const known[] = {"step",  "worker",     "domain", "unbiased", "update",
                                        "scope", "world_size", "layers", NULL};
    char got[64];
    const json_t *v;
    uint64_t u;
    int rc;

    const json_t *layers;
    if ((rc = ns__json_check_root(root, known, &layers, err)))
        return rc;

    ns_report_t *report = ns__report_create(json_object_size(layers));
    if (!report)
        return ns_error_set(err, NS_ENOMEM, "", "out of memory");

    if ((rc = ns__json_get_step_worker(root, &report->step, &report->worker, err)))
        goto fail;
    if ((v = json_object_get(root, "domain"))) {
        if (!json_is_string(v) || !ns_name_valid(json_string_value(v))) {
            rc = ns_error_set(err, NS_EINVAL, "domain", "expected a name matching " NAME_RULE);
            goto fail;
        }
        memcpy(report->domain, json_string_value(v), json_string_length(v) + 1);
    }
    if ((v = json_object_get(root, "unbiased"))) {
        if (!json_is_boolean(v)) {
            rc = ns_error_set(err, NS_EINVAL, "unbiased", "expected a boolean, got %s",
                              ns__json_describe(v, got, sizeof(got)));
            goto fail;
        }
        report->unbiased = json_is_true(v);
    }
    if ((v = json_object_get(root, "update")) && (rc = decode_update(v, &report->update, err)))
        goto fail;
    if ((v = json_object_get(root, "scope"))) {
        const char *s = json_string_value(v); /* NULL unless a string */
        if (s && strcmp(s, "global") == 0) {
            report->scope = NS_SCOPE_GLOBAL;
        } else if (s && strcmp(s, "domain") == 0) {
            report->scope = NS_SCOPE_DOMAIN;
        } else {
            rc = ns_error_set(err, NS_EINVAL, "scope", "expected \"global\" or \"domain\"");
            goto fail;
        }
    }
    if ((v = json_object_get(root, "world_size"))) {
        if ((rc = ns__json_get_uint(v, "world_size", 1, NS__WORLD_SIZE_WIRE_MAX,
                                    "an integer in [1, 4294967295]", &u, err)))
            goto fail;
        report->world_size = (int64_t)u;
    }

    size_t i = 0;
    const char *name;
    json_t *layer;
    json_object_foreach((json_t *)layers, name, layer)
    {
        if ((rc = decode_layer(&report->layers[i++], name, layer, err)))
            goto fail;
    }
    if ((rc = ns__report_finish(report, err, overflow_hint, (void *)layers)))
        goto fail;
    *out = report;
    return 0;
fail:
    ns_report_free(report);
    return rc;
}

int ns__report_decode_json_full(ns_report_t **dst, const char *src, size_t src_len,
                                ns_error_detail_t *err)
{
    json_t *root;
    *dst = NULL;
    int rc = ns__json_load(&root, src, src_len, err);
    if (rc)
        return rc;
    rc = decode_root(dst, root, err);
    json_decref(root);
    return rc;
}

int ns_report_decode_json(ns_report_t **dst, const char *src, size_t src_len,
                          ns_error_detail_t *err)
{
    return ns_report_decode_json_bounded(dst, src, src_len, UINT64_MAX, err);
}

int ns_report_decode_json_bounded(ns_report_t **dst, const char *src, size_t src_len,
                                  uint64_t max_bytes, ns_error_detail_t *err)
{
    *dst = NULL;
    int rc = ns__report_decode_json_fast(dst, src, src_len, err);
    if (rc <= 0)
        return rc;
    uint64_t need = ns_decode_bound(src, src_len, NS_DECODE_JSON_TREE);
    if (need > max_bytes)
        return ns_error_set(err, NS_EMEMORY, "",
                            "the body is not in the form the fast decoder reads (compact JSON, "
                            "integers for integer fields); decoding it otherwise needs up to "
                            "%llu bytes, over the memory budget",
                            (unsigned long long)need);
    return ns__report_decode_json_full(dst, src, src_len, err);
}
