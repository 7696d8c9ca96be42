/* grad_safetensors.c - decoding a gradient-sum request sent as safetensors:
 * tensors <layer>.sum_dy and <layer>.sum_dy_xmu (F32 or F64, [C], one dtype
 * for all), "step" and "worker" as strings in __metadata__. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto_internal.h"

#define NAME_RULE "[A-Za-z0-9_.:-]{1,128}"

enum { PART_DY, PART_XMU };

/* One tensor of the file, seen as (layer, part). */
typedef struct piece_s {
    char layer[NS_NAME_MAX + 1];
    int part;
    const ns_tensor_t *tensor;
} piece_t;

static int piece_cmp(const void *a, const void *b)
{
    const piece_t *x = a, *y = b;
    int c = strcmp(x->layer, y->layer);
    return c ? c : (x->part > y->part) - (x->part < y->part);
}

static int decode_meta(ns_grad_t *grad, const json_t *meta, ns_error_detail_t *err)
{
    static const char *const known[] = {"step", "worker", "format", NULL};
    const char *s;
    uint64_t u;
    if (!meta)
        return ns_error_set(err, NS_EINVAL, "__metadata__.step", "missing required field");
    int rc = ns__json_check_known(meta, known, "__metadata__.", err);
    if (rc)
        return rc;
    if (!(s = json_string_value(json_object_get(meta, "step"))))
        return ns_error_set(err, NS_EINVAL, "__metadata__.step", "missing required field");
    if (ns__parse_decimal(s, INT64_MAX, &grad->step))
        return ns_error_set(err, NS_EINVAL, "__metadata__.step",
                            "expected a non-negative integer, got \"%.64s\"", s);
    if (!(s = json_string_value(json_object_get(meta, "worker"))))
        return ns_error_set(err, NS_EINVAL, "__metadata__.worker", "missing required field");
    if (ns__parse_decimal(s, UINT32_MAX, &u))
        return ns_error_set(err, NS_EINVAL, "__metadata__.worker",
                            "expected an integer in [0, 4294967295], got \"%.64s\"", s);
    grad->worker = (uint32_t)u;
    return 0;
}

/* Check one array's tensor: dtype (the first tensor fixes it), shape [C]. */
static int check_tensor(const ns_safetensors_t *st, const ns_tensor_t *t, const char *field,
                        ns_dtype_t *dtype, const char **dtype_field, ns_error_detail_t *err)
{
    if (t->dtype != NS_DTYPE_F32 && t->dtype != NS_DTYPE_F64)
        return ns_error_set(err, NS_EINVAL, field, "expected dtype F32 or F64, got %s",
                            ns__safetensors_dtype_name(st, t));
    if (*dtype_field == NULL) {
        *dtype = t->dtype;
        *dtype_field = t->name;
    } else if (t->dtype != *dtype) {
        return ns_error_set(err, NS_EINVAL, field,
                            "expected dtype %s (as %.140s: one dtype per request), got %s",
                            *dtype == NS_DTYPE_F32 ? "F32" : "F64", *dtype_field,
                            ns__safetensors_dtype_name(st, t));
    }
    if (t->ndim != 1 || t->shape[0] < 1)
        return ns_error_set(err, NS_EINVAL, field, "expected shape [C] with C >= 1");
    return 0;
}

/* Widen a checked tensor's little-endian values to double. */
static void load_values(const ns_tensor_t *t, double *dst)
{
    size_t n = (size_t)t->shape[0];
    for (size_t i = 0; i < n; i++) {
        if (t->dtype == NS_DTYPE_F64) {
            uint64_t bits = ns__load_le64(t->data + 8 * i);
            memcpy(&dst[i], &bits, sizeof(double));
        } else {
            const uint8_t *p = t->data + 4 * i;
            uint32_t bits =
                (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
            float f;
            memcpy(&f, &bits, sizeof(f));
            dst[i] = (double)f;
        }
    }
}

static int decode_layer(const ns_safetensors_t *st, ns_grad_layer_t *layer, const piece_t *parts[2],
                        ns_dtype_t *dtype, const char **dtype_field, ns_error_detail_t *err)
{
    char field[256];
    const char *names[2] = {NS_FIELD_SUM_DY, NS_FIELD_SUM_DY_XMU};
    for (int p = 0; p < 2; p++) {
        snprintf(field, sizeof(field), "layers.%s.%s", layer->name, names[p]);
        if (!parts[p])
            return ns_error_set(err, NS_EINVAL, field, "missing tensor");
        int rc = check_tensor(st, parts[p]->tensor, field, dtype, dtype_field, err);
        if (rc)
            return rc;
    }
    size_t c = (size_t)parts[PART_DY]->tensor->shape[0];
    size_t c2 = (size_t)parts[PART_XMU]->tensor->shape[0];
    if (c2 != c)
        return ns_error_set(err, NS_EINVAL, field, "expected %zu values (as sum_dy), got %zu", c,
                            c2);
    if (ns__grad_layer_alloc(layer, c) != 0)
        return ns_error_set(err, NS_ENOMEM, field, "out of memory");
    load_values(parts[PART_DY]->tensor, layer->sum_dy);
    load_values(parts[PART_XMU]->tensor, layer->sum_dy_xmu);
    return 0;
}

int ns_grad_decode_safetensors(ns_grad_t **dst, const uint8_t *src, size_t src_len,
                               ns_error_detail_t *err)
{
    ns_safetensors_t *st = NULL;
    ns_grad_t *grad = NULL;
    piece_t *pieces = NULL;
    int rc;
    *dst = NULL;
    if ((rc = ns_safetensors_parse(&st, src, src_len, err)))
        return rc;
    if (!(grad = ns__grad_create(0))) {
        rc = ns_error_set(err, NS_ENOMEM, "", "out of memory");
        goto out;
    }
    if ((rc = decode_meta(grad, st->meta, err)))
        goto out;
    size_t n = st->n_tensors;
    if (!(pieces = calloc(n ? n : 1, sizeof(*pieces)))) {
        rc = ns_error_set(err, NS_ENOMEM, "", "out of memory");
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        const ns_tensor_t *t = &st->tensors[i];
        const char *dot = strrchr(t->name, '.');
        const char *suffix = dot ? dot + 1 : "";
        int part = strcmp(suffix, NS_FIELD_SUM_DY) == 0       ? PART_DY
                   : strcmp(suffix, NS_FIELD_SUM_DY_XMU) == 0 ? PART_XMU
                                                              : -1;
        if (part < 0) {
            rc = ns_error_set(err, NS_EINVAL, "",
                              "safetensors: tensor \"%.200s\" is not named <layer>.sum_dy or "
                              "<layer>.sum_dy_xmu",
                              t->name);
            goto out;
        }
        size_t len = (size_t)(dot - t->name);
        if (len < 1 || len > NS_NAME_MAX) {
            rc = ns_error_set(err, NS_EINVAL, "layers",
                              "invalid layer name \"%.*s\" (names match " NAME_RULE ")",
                              (int)(len < 140 ? len : 140), t->name);
            goto out;
        }
        memcpy(pieces[i].layer, t->name, len);
        pieces[i].layer[len] = '\0';
        if (!ns_name_valid(pieces[i].layer)) {
            rc = ns_error_set(err, NS_EINVAL, "layers",
                              "invalid layer name \"%s\" (names match " NAME_RULE ")",
                              pieces[i].layer);
            goto out;
        }
        pieces[i].part = part;
        pieces[i].tensor = t;
    }
    qsort(pieces, n, sizeof(*pieces), piece_cmp);
    size_t n_layers = 0;
    for (size_t i = 0; i < n; i++)
        n_layers += i == 0 || strcmp(pieces[i].layer, pieces[i - 1].layer) != 0;
    if (n_layers == 0) {
        rc = ns_error_set(err, NS_EINVAL, "layers", "must not be empty");
        goto out;
    }
    if (!(grad->layers = calloc(n_layers, sizeof(*grad->layers)))) {
        rc = ns_error_set(err, NS_ENOMEM, "", "out of memory");
        goto out;
    }
    grad->n_layers = n_layers;
    const char *dtype_field = NULL;
    for (size_t i = 0, l = 0; i < n; l++) {
        const piece_t *parts[2] = {NULL, NULL};
        ns_grad_layer_t *layer = &grad->layers[l];
        memcpy(layer->name, pieces[i].layer, sizeof(layer->name));
        for (; i < n && strcmp(pieces[i].layer, layer->name) == 0; i++)
            parts[pieces[i].part] = &pieces[i];
        if ((rc = decode_layer(st, layer, parts, &grad->dtype, &dtype_field, err)))
            goto out;
    }
    if ((rc = ns__grad_finish(grad, err)))
        goto out;
    *dst = grad;
    grad = NULL;
out:
    ns_grad_free(grad);
    free(pieces);
    ns_safetensors_free(st);
    return rc;
}
