/* run_config.c - a run's configuration: defaults and the PUT /v1/runs/{run} body. */
#include <math.h>
#include <stdio.h>
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
                json_integer_value(v) > UINT32_MAX)
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
