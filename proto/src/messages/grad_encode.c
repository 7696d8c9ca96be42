/* grad_encode.c - the answer of POST /grad (summed gradient statistics) as JSON
 * or safetensors. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto_internal.h"

/* The fewest significant digits (15 to 17) that read back as 'd'. */
static int format_double(char *dst, size_t dst_cap, double d)
{
    int n = 0;
    for (int prec = 15; prec <= 17; prec++) {
        n = snprintf(dst, dst_cap, "%.*g", prec, d);
        if (strtod(dst, NULL) == d)
            break;
    }
    return n;
}

static int encode_json(ns_buf_t *dst, const ns_grad_t *g)
{
    static const char *const arrays[2] = {NS_FIELD_SUM_DY, NS_FIELD_SUM_DY_XMU};
    int rc = ns_buf_printf(dst, "{\"step\":%llu,\"workers\":%u,\"layers\":{",
                           (unsigned long long)g->step, g->workers);
    for (size_t l = 0; rc == 0 && l < g->n_layers; l++) {
        const ns_grad_layer_t *layer = &g->layers[l];
        if ((l && (rc = ns_buf_append(dst, ",", 1))) ||
            (rc = ns__buf_append_json_string(dst, layer->name)) ||
            (rc = ns_buf_append(dst, ":{", 2)))
            return rc;
        for (int a = 0; a < 2; a++) {
            const double *v = a ? layer->sum_dy_xmu : layer->sum_dy;
            if ((rc = ns_buf_printf(dst, "%s\"%s\":[", a ? "," : "", arrays[a])))
                return rc;
            for (size_t c = 0; c < layer->channels; c++) {
                char num[40] = ",";
                if (!isfinite(v[c])) {
                    ns_buf_free(dst);
                    return NS_EVALUE;
                }
                int n = format_double(num + 1, sizeof(num) - 1, v[c]);
                if ((rc = ns_buf_append(dst, c ? num : num + 1, (size_t)(c ? n + 1 : n))))
                    return rc;
            }
            if ((rc = ns_buf_append(dst, "]", 1)))
                return rc;
        }
        rc = ns_buf_append(dst, "}", 1);
    }
    return rc ? rc : ns_buf_append(dst, "}}", 2);
}

static int encode_safetensors(ns_buf_t *dst, const ns_grad_t *g)
{
    static const char *const arrays[2] = {NS_FIELD_SUM_DY, NS_FIELD_SUM_DY_XMU};
    int f64 = g->dtype == NS_DTYPE_F64;
    size_t elem = f64 ? 8 : 4;
    uint64_t at = 0;
    ns_buf_t h;
    ns_buf_init(&h, dst->cap_max);
    int rc = ns_buf_printf(&h, "{\"__metadata__\":{\"step\":\"%llu\",\"workers\":\"%u\"}",
                           (unsigned long long)g->step, g->workers);
    for (size_t l = 0; rc == 0 && l < g->n_layers; l++) {
        const ns_grad_layer_t *layer = &g->layers[l];
        if (layer->channels > UINT64_MAX / 16) {
            rc = NS_ETOOLARGE;
            break;
        }
        uint64_t bytes = (uint64_t)layer->channels * elem;
        for (int a = 0; rc == 0 && a < 2; a++, at += bytes) {
            rc = ns__safetensors_header_tensor(&h, layer->name, arrays[a], f64 ? "F64" : "F32", 0,
                                               layer->channels, at, at + bytes);
        }
    }
    uint8_t *p;
    if (rc == 0)
        rc = ns__safetensors_frame(dst, &h, at, &p);
    ns_buf_free(&h);
    if (rc != 0) {
        ns_buf_free(dst);
        return rc;
    }
    for (size_t l = 0; l < g->n_layers; l++) {
        const ns_grad_layer_t *layer = &g->layers[l];
        /* Both arrays are one block: sum_dy then sum_dy_xmu. */
        for (size_t k = 0; k < 2 * layer->channels; k++, p += elem) {
            double d = layer->sum_dy[k];
            if (f64) {
                uint64_t bits;
                memcpy(&bits, &d, sizeof(bits));
                ns__store_le64(p, bits);
            } else {
                float f = (float)d; /* IEEE: rounded once, infinity past the range */
                uint32_t bits;
                memcpy(&bits, &f, sizeof(bits));
                ns__store_le32(p, bits);
            }
        }
    }
    return 0;
}

int ns_grad_encode_answer(ns_buf_t *dst, ns_format_t format, const ns_grad_t *grad)
{
    if (format == NS_FORMAT_SAFETENSORS)
        return encode_safetensors(dst, grad);
    return encode_json(dst, grad);
}
