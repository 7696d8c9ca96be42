/* grad_json.c - decoding and validating a JSON gradient-sum request (/grad). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "proto_internal.h"

#define NAME_RULE "[A-Za-z0-9_.:-]{1,128}"

/* Is 'v' a non-empty array of numbers? Names the first offender. */
static int check_values(const json_t *v, const char *field, ns_error_detail_t *err)
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

/* JSON numbers as doubles: an integer converts with one rounding, a real is
 * jansson's correctly rounded double. */
static void load_values(const json_t *v, double *dst)
{
    size_t i;
    json_t *item;
    json_array_foreach(v, i, item) dst[i] =
        json_is_integer(item) ? (double)json_integer_value(item) : json_real_value(item);
}

static int decode_layer(ns_grad_layer_t *layer, const char *name, const json_t *v,
                        ns_error_detail_t *err)
{
    static const char *const known[] = {NS_FIELD_SUM_DY, NS_FIELD_SUM_DY_XMU, NULL};
    char got[64], field[256];
    if (!ns_name_valid(name))
        return ns_error_set(err, NS_EINVAL, "layers",
                            "invalid layer name \"%.140s\" (names match " NAME_RULE ")", name);
    memcpy(layer->name, name, strlen(name) + 1);
    snprintf(field, sizeof(field), "layers.%s", layer->name);
    if (!json_is_object(v))
        return ns_error_set(err, NS_EINVAL, field, "expected an object, got %s",
                            ns__json_describe(v, got, sizeof(got)));
    snprintf(field, sizeof(field), "layers.%s.", layer->name);
    int rc = ns__json_check_known(v, known, field, err);
    if (rc)
        return rc;
    const json_t *dy = json_object_get(v, NS_FIELD_SUM_DY),
                 *xmu = json_object_get(v, NS_FIELD_SUM_DY_XMU);
    snprintf(field, sizeof(field), "layers.%s.%s", layer->name,
             dy ? NS_FIELD_SUM_DY_XMU : NS_FIELD_SUM_DY);
    if (!dy || !xmu)
        return ns_error_set(err, NS_EINVAL, field, "missing required field");
    snprintf(field, sizeof(field), "layers.%s." NS_FIELD_SUM_DY, layer->name);
    if ((rc = check_values(dy, field, err)))
        return rc;
    snprintf(field, sizeof(field), "layers.%s.sum_dy_xmu", layer->name);
    if ((rc = check_values(xmu, field, err)))
        return rc;
    size_t c = json_array_size(dy);
    if (json_array_size(xmu) != c)
        return ns_error_set(err, NS_EINVAL, field, "expected %zu values (as sum_dy), got %zu", c,
                            json_array_size(xmu));
    if (ns__grad_layer_alloc(layer, c) != 0)
        return ns_error_set(err, NS_ENOMEM, field, "out of memory");
    load_values(dy, layer->sum_dy);
    load_values(xmu, layer->sum_dy_xmu);
    return 0;
}

static int decode_root(ns_grad_t **out, const json_t *root, ns_error_detail_t *err)
{
    static const char *const known[] = {"step", "worker", "layers", NULL};
    char got[64];
    uint64_t u;
    int rc;
    if (!json_is_object(root))
        return ns_error_set(err, NS_EINVAL, "", "request body must be a JSON object, got %s",
                            ns__json_describe(root, got, sizeof(got)));
    if ((rc = ns__json_check_known(root, known, "", err)))
        return rc;
    for (size_t i = 0; i < 3; i++)
        if (!json_object_get(root, known[i]))
            return ns_error_set(err, NS_EINVAL, known[i], "missing required field");
    const json_t *layers = json_object_get(root, "layers");
    if (!json_is_object(layers))
        return ns_error_set(err, NS_EINVAL, "layers", "expected an object, got %s",
                            ns__json_describe(layers, got, sizeof(got)));
    if (json_object_size(layers) == 0)
        return ns_error_set(err, NS_EINVAL, "layers", "must not be empty");
    ns_grad_t *grad = ns__grad_create(json_object_size(layers));
    if (!grad)
        return ns_error_set(err, NS_ENOMEM, "", "out of memory");
    if ((rc = ns__json_get_uint(json_object_get(root, "step"), "step", 0, INT64_MAX,
                                "a non-negative integer", &grad->step, err)))
        goto fail;
    if ((rc = ns__json_get_uint(json_object_get(root, "worker"), "worker", 0, UINT32_MAX,
                                "an integer in [0, 4294967295]", &u, err)))
        goto fail;
    grad->worker = (uint32_t)u;
    size_t i = 0;
    const char *name;
    json_t *layer;
    json_object_foreach((json_t *)layers, name, layer)
    {
        if ((rc = decode_layer(&grad->layers[i++], name, layer, err)))
            goto fail;
    }
    if ((rc = ns__grad_finish(grad, err)))
        goto fail;
    *out = grad;
    return 0;
fail:
    ns_grad_free(grad);
    return rc;
}

int ns_grad_decode_json(ns_grad_t **dst, const char *src, size_t src_len, ns_error_detail_t *err)
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
