/* grad_safetensors.c - decoding a gradient-sum request sent as safetensors:
 * tensors <layer>.sum_dy and <layer>.sum_dy_xmu (F32 or F64, [C], one dtype
 * for all), "step" and "worker" as strings in __metadata__. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto_internal.h"

enum { PART_DY, PART_XMU, N_PARTS };

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

static int decode_layer(const ns_safetensors_t *st, ns_grad_layer_t *layer,
                        const ns__st_piece_t *parts[N_PARTS], ns_dtype_t *dtype,
                        const char **dtype_field, ns_error_detail_t *err)
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
    static const char *const known[] = {"step", "worker", "format", NULL};
    static const char *const part_names[] = {NS_FIELD_SUM_DY, NS_FIELD_SUM_DY_XMU, NULL};
    ns_safetensors_t *st = NULL;
    ns_grad_t *grad = NULL;
    ns__st_piece_t *pieces = NULL;
    size_t n_layers;
    int rc;
    *dst = NULL;
    if ((rc = ns_safetensors_parse(&st, src, src_len, err)))
        return rc;
    if (!(grad = ns__grad_create(0))) {
        rc = ns_error_set(err, NS_ENOMEM, "", "out of memory");
        goto out;
    }
    if ((rc = ns__safetensors_meta_step_worker(st, known, &grad->step, &grad->worker, err)))
        goto out;
    if ((rc = ns__safetensors_layer_pieces(st, part_names, "<layer>.sum_dy or <layer>.sum_dy_xmu",
                                           &pieces, &n_layers, err)))
        goto out;
    if (!(grad->layers = calloc(n_layers, sizeof(*grad->layers)))) {
        rc = ns_error_set(err, NS_ENOMEM, "", "out of memory");
        goto out;
    }
    grad->n_layers = n_layers;
    const char *dtype_field = NULL;
    for (size_t i = 0, l = 0; i < st->n_tensors; l++) {
        const ns__st_piece_t *parts[N_PARTS];
        ns_grad_layer_t *layer = &grad->layers[l];
        const char *name = ns__safetensors_next_layer(pieces, st->n_tensors, &i, parts, N_PARTS);
        memcpy(layer->name, name, sizeof(layer->name));
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
