/* run_config.c - a run's configuration: defaults, and its JSON (the PUT
 * /v1/runs/{run} body, a run's view, the store's log) in both directions. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "proto_internal.h"

void ns_run_config_defaults(ns_run_config_t *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->world_size = 1;
    cfg->momentum = 0.1;
    cfg->sync_timeout_ms = 60000;
    cfg->on_timeout_drop = 0;
    cfg->ema_debias = 0;
}

static int only_space(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r' && s[i] != '\n')
            return 0;
    return 1;
}

static int decode(ns_run_config_t *cfg, const json_t *root, ns_error_detail_t *err)
{
    const char *key;
    json_t *v;
    if (!json_is_object(root))
        return ns_error_set(err, NS_EINVAL, "", "request body must be a JSON object");
    json_object_foreach((json_t *)root, key, v)
    {
        if (strcmp(key, "world_size") == 0) {
            if (!json_is_integer(v) || json_integer_value(v) < 1 ||
                json_integer_value(v) > NS__WORLD_SIZE_WIRE_MAX)
                return ns_error_set(err, NS_EINVAL, key, "expected an integer in [1, 4294967295]");
            cfg->world_size = (uint32_t)json_integer_value(v);
            cfg->has_world_size = 1;
        } else if (strcmp(key, "momentum") == 0) {
            if (json_is_null(v)) {
                cfg->momentum = NS_MOMENTUM_CUMULATIVE;
            } else {
                double m = json_number_value(v);
                if (!json_is_number(v) || !(m >= 0.0 && m <= 1.0))
                    return ns_error_set(err, NS_EINVAL, key,
                                        "expected a number in [0, 1] or null (cumulative average)");
                cfg->momentum = m;
            }
            cfg->has_momentum = 1;
        } else if (strcmp(key, "sync_timeout_ms") == 0) {
            if (!json_is_integer(v) || json_integer_value(v) < 1)
                return ns_error_set(err, NS_EINVAL, key, "expected an integer >= 1");
            cfg->sync_timeout_ms = (uint64_t)json_integer_value(v);
            cfg->has_sync_timeout_ms = 1;
        } else if (strcmp(key, "on_timeout") == 0) {
            const char *s = json_string_value(v);
            if (!s || (strcmp(s, "partial") != 0 && strcmp(s, "drop") != 0))
                return ns_error_set(err, NS_EINVAL, key, "expected \"partial\" or \"drop\"");
            cfg->on_timeout_drop = s[0] == 'd';
            cfg->has_on_timeout = 1;
        } else if (strcmp(key, "ema_debias") == 0) {
            if (!json_is_boolean(v))
                return ns_error_set(err, NS_EINVAL, key, "expected a boolean");
            cfg->ema_debias = json_is_true(v);
            cfg->has_ema_debias = 1;
        } else {
            char field[256];
            snprintf(field, sizeof(field), "%.160s", key);
            return ns_error_set(err, NS_EINVAL, field, "unknown field");
        }
    }
    return 0;
}

int ns_run_config_decode_json(ns_run_config_t *dst, const char *src, size_t src_len,
                              ns_error_detail_t *err)
{
    json_t *root;
    if (!src || only_space(src, src_len))
        return 0; /* an empty body is an empty object */
    int rc = ns__json_load(&root, src, src_len, err);
    if (rc)
        return rc;
    ns_run_config_t cfg = *dst; /* dst stays unchanged on error */
    rc = decode(&cfg, root, err);
    json_decref(root);
    if (rc == 0)
        *dst = cfg;
    return rc;
}

/* The fields in wire order; with 'only_set', those whose has_* is set. */
static json_t *config_object(const ns_run_config_t *cfg, int only_set)
{
    json_t *o = json_object();
    int ok = o != NULL;
    if (ok && (!only_set || cfg->has_world_size))
        ok = json_object_set_new(o, "world_size", json_integer((json_int_t)cfg->world_size)) == 0;
    if (ok && (!only_set || cfg->has_momentum))
        ok = json_object_set_new(o, "momentum",
                                 cfg->momentum == NS_MOMENTUM_CUMULATIVE
                                     ? json_null()
                                     : json_real(cfg->momentum)) == 0;
    if (ok && (!only_set || cfg->has_sync_timeout_ms))
        ok = json_object_set_new(o, "sync_timeout_ms",
                                 json_integer((json_int_t)cfg->sync_timeout_ms)) == 0;
    if (ok && (!only_set || cfg->has_on_timeout))
        ok = json_object_set_new(o, "on_timeout",
                                 json_string(cfg->on_timeout_drop ? "drop" : "partial")) == 0;
    if (ok && (!only_set || cfg->has_ema_debias))
        ok = json_object_set_new(o, "ema_debias", json_boolean(cfg->ema_debias)) == 0;
    if (!ok) {
        json_decref(o);
        return NULL;
    }
    return o;
}

int ns_run_config_encode_json(ns_buf_t *dst, const ns_run_config_t *cfg,
                              ns_run_config_fields_t fields)
{
    json_t *o = config_object(cfg, fields == NS_RUN_CONFIG_SET);
    char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (text == NULL) {
        ns_buf_free(dst);
        return NS_ENOMEM;
    }
    int rc = ns_buf_append(dst, text, strlen(text));
    free(text);
    return rc;
}
