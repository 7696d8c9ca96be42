/* report_encode.c - encoding a worker's report (the body of /batches and
 * /sync) as JSON or safetensors, the inverse of report_json.c and
 * report_safetensors.c; used by the clients. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "proto_internal.h"

/* Everything the encoders need to be true of 'report' before writing a byte. */
static int check_report(const ns_report_t *report, ns_error_detail_t *err)
{
    char field[NS_NAME_MAX + 32];
    if (report->domain[0] && !ns_name_valid(report->domain))
        return ns_error_set(err, NS_EINVAL, "domain", "must match [A-Za-z0-9_.:-]{1,128}");
    if (report->update == 0 || (report->update & ~(NS_UPDATE_EMA | NS_UPDATE_PRECISE)))
        return ns_error_set(err, NS_EINVAL, "update", "must name ema, precise or both");
    if (report->world_size == 0 || report->world_size > (int64_t)NS__WORLD_SIZE_WIRE_MAX)
        return ns_error_set(err, NS_EINVAL, "world_size", "must be in [1, 4294967295] or -1");
    if (report->step > (uint64_t)INT64_MAX)
        return ns_error_set(err, NS_EINVAL, "step", "must be at most 2^63-1");
    if (report->n_layers == 0 || report->layers == NULL)
        return ns_error_set(err, NS_EINVAL, "layers", "at least one layer is required");
    for (size_t i = 0; i < report->n_layers; i++) {
        const ns_layer_report_t *l = &report->layers[i];
        if (!ns_name_valid(l->name))
            return ns_error_set(err, NS_EINVAL, "layers",
                                "layer %zu: name must match "
                                "[A-Za-z0-9_.:-]{1,128}",
                                i);
        snprintf(field, sizeof(field), "layers.%s", l->name);
        if (l->count > (uint64_t)INT64_MAX)
            return ns_error_set(err, NS_EINVAL, field, "count must be at most 2^63-1");
        if (l->channels == 0 && l->count > 0)
            return ns_error_set(err, NS_EINVAL, field, "count > 0 needs mean and var");
        if (l->channels > 0 && (l->mean == NULL || l->var == NULL))
            return ns_error_set(err, NS_EINVAL, field, "mean and var must both be given");
    }
    return 0;
}

static int append_floats(ns_buf_t *dst, const float *src, size_t src_len, const char *layer,
                         const char *part, ns_error_detail_t *err)
{
    int rc;
    for (size_t c = 0; c < src_len; c++) {
        /* JSON has no NaN or infinity: refuse here rather than send a body
         * the server must reject as malformed. */
        if (!isfinite(src[c])) {
            char field[NS_NAME_MAX + 32];
            snprintf(field, sizeof(field), "layers.%s.%s", layer, part);
            return ns_error_set(err, NS_EVALUE, field,
                                "value %zu is not finite (JSON cannot carry it)", c);
        }
        /* "%.9g" round-trips float32. */
        if ((rc = ns_buf_printf(dst, c ? ",%.9g" : "%.9g", (double)src[c])))
            return ns_error_set(err, rc, "", "%s", ns_strerror(rc));
    }
    return 0;
}

static int encode_json(ns_buf_t *dst, const ns_report_t *r, ns_error_detail_t *err)
{
    int rc;
    if ((rc = ns_buf_printf(dst, "{\"step\":%llu,\"worker\":%u", (unsigned long long)r->step,
                            (unsigned)r->worker)))
        goto nomem;
    if (r->domain[0] && (rc = ns_buf_printf(dst, ",\"domain\":\"%s\"", r->domain)))
        goto nomem;
    if ((rc = ns_buf_printf(dst, ",\"unbiased\":%s,\"update\":[%s%s%s]",
                            r->unbiased ? "true" : "false",
                            (r->update & NS_UPDATE_EMA) ? "\"ema\"" : "",
                            r->update == (NS_UPDATE_EMA | NS_UPDATE_PRECISE) ? "," : "",
                            (r->update & NS_UPDATE_PRECISE) ? "\"precise\"" : "")))
        goto nomem;
    if (r->scope == NS_SCOPE_DOMAIN && (rc = ns_buf_printf(dst, ",\"scope\":\"domain\"")))
        goto nomem;
    if (r->world_size > 0 &&
        (rc = ns_buf_printf(dst, ",\"world_size\":%lld", (long long)r->world_size)))
        goto nomem;
    if ((rc = ns_buf_append(dst, ",\"layers\":{", 11)))
        goto nomem;
    for (size_t i = 0; i < r->n_layers; i++) {
        const ns_layer_report_t *l = &r->layers[i];
        if ((rc = ns_buf_printf(dst, "%s\"%s\":{\"" NS_FIELD_COUNT "\":%llu", i ? "," : "", l->name,
                                (unsigned long long)l->count)))
            goto nomem;
        if (l->channels > 0) {
            if ((rc = ns_buf_printf(dst, ",\"" NS_FIELD_MEAN "\":[")) ||
                (rc = append_floats(dst, l->mean, l->channels, l->name, NS_FIELD_MEAN, err)) ||
                (rc = ns_buf_printf(dst, "],\"" NS_FIELD_VAR "\":[")) ||
                (rc = append_floats(dst, l->var, l->channels, l->name, NS_FIELD_VAR, err)) ||
                (rc = ns_buf_append(dst, "]", 1)))
                goto fail;
        }
        if ((rc = ns_buf_append(dst, "}", 1)))
            goto nomem;
    }
    if ((rc = ns_buf_append(dst, "}}", 2)))
        goto nomem;
    return 0;
nomem:
    ns_error_set(err, rc, "", "%s", ns_strerror(rc));
fail:
    ns_buf_free(dst);
    return rc;
}

static void store_f32s(uint8_t *p, const float *src, size_t n)
{
    for (size_t i = 0; i < n; i++, p += 4) {
        uint32_t bits;
        memcpy(&bits, &src[i], sizeof(bits));
        for (int b = 0; b < 4; b++)
            p[b] = (uint8_t)(bits >> (8 * b));
    }
}

static void store_f64s(uint8_t *p, const double *src, size_t n)
{
    for (size_t i = 0; i < n; i++, p += 8) {
        uint64_t bits;
        memcpy(&bits, &src[i], sizeof(bits));
        ns__store_le64(p, bits);
    }
}

static int encode_safetensors(ns_buf_t *dst, const ns_report_t *r, ns_error_detail_t *err)
{
    ns_buf_t h;
    uint64_t at = 0;
    int rc;

    ns_buf_init(&h, dst->cap_max);
    if ((rc = ns_buf_printf(&h, "{\"__metadata__\":{\"step\":\"%llu\",\"worker\":\"%u\"",
                            (unsigned long long)r->step, (unsigned)r->worker)))
        goto fail;
    if (r->domain[0] && (rc = ns_buf_printf(&h, ",\"domain\":\"%s\"", r->domain)))
        goto fail;
    if ((rc =
             ns_buf_printf(&h, ",\"unbiased\":\"%s\",\"update\":\"%s%s%s\"",
                           r->unbiased ? "true" : "false", (r->update & NS_UPDATE_EMA) ? "ema" : "",
                           r->update == (NS_UPDATE_EMA | NS_UPDATE_PRECISE) ? "," : "",
                           (r->update & NS_UPDATE_PRECISE) ? "precise" : "")))
        goto fail;
    if (r->scope == NS_SCOPE_DOMAIN && (rc = ns_buf_printf(&h, ",\"scope\":\"domain\"")))
        goto fail;
    if (r->world_size > 0 &&
        (rc = ns_buf_printf(&h, ",\"world_size\":\"%lld\"", (long long)r->world_size)))
        goto fail;
    if ((rc = ns_buf_append(&h, "}", 1)))
        goto fail;
    for (size_t i = 0; i < r->n_layers; i++) {
        const ns_layer_report_t *l = &r->layers[i];
        const int wide = l->mean64 != NULL && l->var64 != NULL;
        const char *dtype = wide ? "F64" : "F32";
        uint64_t bytes = (uint64_t)l->channels * (wide ? 8 : 4);
        if (l->channels > 0) {
            if ((rc = ns__safetensors_header_tensor(&h, l->name, NS_FIELD_MEAN, dtype, 0,
                                                    l->channels, at, at + bytes)))
                goto fail;
            at += bytes;
            if ((rc = ns__safetensors_header_tensor(&h, l->name, NS_FIELD_VAR, dtype, 0,
                                                    l->channels, at, at + bytes)))
                goto fail;
            at += bytes;
        }
        if ((rc = ns__safetensors_header_tensor(&h, l->name, NS_FIELD_COUNT, "I64", 1, 0, at,
                                                at + 8)))
            goto fail;
        at += 8;
    }
    uint8_t *p;
    if ((rc = ns__safetensors_frame(dst, &h, at, &p)))
        goto fail;
    /* Non-finite values are sent as they are: the server rejects them (422)
     * and counts the rejection, which is what an operator wants to see. */
    for (size_t i = 0; i < r->n_layers; i++) {
        const ns_layer_report_t *l = &r->layers[i];
        if (l->channels > 0 && l->mean64 != NULL && l->var64 != NULL) {
            store_f64s(p, l->mean64, l->channels);
            p += l->channels * 8;
            store_f64s(p, l->var64, l->channels);
            p += l->channels * 8;
        } else if (l->channels > 0) {
            store_f32s(p, l->mean, l->channels);
            p += l->channels * 4;
            store_f32s(p, l->var, l->channels);
            p += l->channels * 4;
        }
        ns__store_le64(p, l->count);
        p += 8;
    }
    ns_buf_free(&h);
    return 0;
fail:
    ns_error_set(err, rc, "", "%s", ns_strerror(rc));
    ns_buf_free(&h);
    ns_buf_free(dst);
    return rc;
}

int ns_report_encode(ns_buf_t *dst, ns_format_t format, const ns_report_t *report,
                     ns_error_detail_t *err)
{
    int rc;
    if (dst == NULL || report == NULL)
        return ns_error_set(err, NS_EINVAL, "", "dst and report are required");
    if ((rc = check_report(report, err)))
        return rc;
    if (format == NS_FORMAT_SAFETENSORS)
        return encode_safetensors(dst, report, err);
    return encode_json(dst, report, err);
}
