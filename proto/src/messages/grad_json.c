/* grad_json.c - decoding and validating a JSON gradient-sum request (/grad). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "proto_internal.h"

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
    char field[256];
    int rc = ns__json_check_layer(layer->name, name, v, known, err);
    if (rc)
        return rc;
    const json_t *dy = json_object_get(v, NS_FIELD_SUM_DY),
                 *xmu = json_object_get(v, NS_FIELD_SUM_DY_XMU);
    snprintf(field, sizeof(field), "layers.%s.%s", layer->name,
             dy ? NS_FIELD_SUM_DY_XMU : NS_FIELD_SUM_DY);
    if (!dy || !xmu)
        return ns_error_set(err, NS_EINVAL, field, "missing required field");
    snprintf(field, sizeof(field), "layers.%s." NS_FIELD_SUM_DY, layer->name);
    if ((rc = ns__json_check_numbers(dy, field, err)))
        return rc;
    snprintf(field, sizeof(field), "layers.%s.sum_dy_xmu", layer->name);
    if ((rc = ns__json_check_numbers(xmu, field, err)))
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
    const json_t *layers;
    int rc;
    if ((rc = ns__json_check_root(root, known, &layers, err)))
        return rc;
    ns_grad_t *grad = ns__grad_create(json_object_size(layers));
    if (!grad)
        return ns_error_set(err, NS_ENOMEM, "", "out of memory");
    if ((rc = ns__json_get_step_worker(root, &grad->step, &grad->worker, err)))
        goto fail;
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
