/* report_safetensors.c - decoding a report sent as safetensors: tensors
 * <layer>.mean, <layer>.var (F32 or F64, [C]) and <layer>.count (I64, []),
 * the scalar fields as strings in __metadata__. */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto_internal.h"

#define NAME_RULE "[A-Za-z0-9_.:-]{1,128}"

enum { PART_MEAN, PART_VAR, PART_COUNT, N_PARTS };

int ns__parse_decimal(const char *s, uint64_t max, uint64_t *out)
{
    uint64_t v = 0;
    if (!s[0])
        return -1;
    for (const char *p = s; *p; p++) {
        if (*p < '0' || *p > '9' || v > (UINT64_MAX - 9) / 10)
            return -1;
        v = v * 10 + (uint64_t)(*p - '0');
    }
    if (v > max)
        return -1;
    *out = v;
    return 0;
}

/* st's __metadata__ (may be absent): the scalar fields of a report. */
static int decode_meta(ns_report_t *report, const ns_safetensors_t *st, ns_error_detail_t *err)
{
    static const char *const known[] = {"step",  "worker",     "domain", "unbiased", "update",
                                        "scope", "world_size", "format", NULL};
    const char *s;
    uint64_t u;
    int rc = ns__safetensors_meta_step_worker(st, known, &report->step, &report->worker, err);
    if (rc)
        return rc;
    if ((s = ns__safetensors_meta_get(st, "domain"))) {
        if (!ns_name_valid(s))
            return ns_error_set(err, NS_EINVAL, "__metadata__.domain",
                                "expected a name matching " NAME_RULE);
        memcpy(report->domain, s, strlen(s) + 1);
    }
    if ((s = ns__safetensors_meta_get(st, "unbiased"))) {
        if (strcmp(s, "true") != 0 && strcmp(s, "false") != 0)
            return ns_error_set(err, NS_EINVAL, "__metadata__.unbiased",
                                "expected \"true\" or \"false\", got \"%.64s\"", s);
        report->unbiased = s[0] == 't';
    }
    if ((s = ns__safetensors_meta_get(st, "update"))) {
        unsigned bits = 0;
        for (const char *p = s;;) {
            const char *comma = strchr(p, ',');
            size_t len = comma ? (size_t)(comma - p) : strlen(p);
            unsigned bit = ns__update_parse_word(p, len);
            if (!bit || (bits & bit))
                return ns_error_set(err, NS_EINVAL, "__metadata__.update",
                                    "expected \"ema\", \"precise\" or \"ema,precise\", got "
                                    "\"%.64s\"",
                                    s);
            bits |= bit;
            if (!comma)
                break;
            p = comma + 1;
        }
        report->update = bits;
    }
    if ((s = ns__safetensors_meta_get(st, "scope"))) {
        if (strcmp(s, "global") == 0)
            report->scope = NS_SCOPE_GLOBAL;
        else if (strcmp(s, "domain") == 0)
            report->scope = NS_SCOPE_DOMAIN;
        else
            return ns_error_set(err, NS_EINVAL, "__metadata__.scope",
                                "expected \"global\" or \"domain\", got \"%.64s\"", s);
    }
    if ((s = ns__safetensors_meta_get(st, "world_size"))) {
        if (ns__parse_decimal(s, NS__WORLD_SIZE_WIRE_MAX, &u) || u < 1)
            return ns_error_set(err, NS_EINVAL, "__metadata__.world_size",
                                "expected an integer in [1, 4294967295], got \"%.64s\"", s);
        report->world_size = (int64_t)u;
    }
    return 0;
}

uint64_t ns__load_le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

#if !(defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__)
static uint32_t load_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
#endif

/* "layers.<layer>.<part>", the field of an error, into buf (formatted only
 * when there is one: most reports have none). */
static const char *part_field(char buf[256], const char *layer, const char *part)
{
    snprintf(buf, 256, "layers.%s.%s", layer, part);
    return buf;
}

/* A mean or var tensor as float32 values; F64 is narrowed (values beyond
 * float32's range become infinity and are refused later, as in JSON) and
 * also kept as sent in *wide (NULL for F32). */
static int load_values(const ns_safetensors_t *st, const ns_tensor_t *t, const char *layer,
                       const char *part, float **out, double **wide, size_t *len,
                       ns_error_detail_t *err)
{
    char buf[256];
    *wide = NULL;
    if (t->dtype != NS_DTYPE_F32 && t->dtype != NS_DTYPE_F64)
        return ns_error_set(err, NS_EINVAL, part_field(buf, layer, part),
                            "expected dtype F32 or F64, got %s", ns__safetensors_dtype_name(st, t));
    if (t->ndim != 1 || t->shape[0] < 1)
        return ns_error_set(err, NS_EINVAL, part_field(buf, layer, part),
                            "expected shape [C] with C >= 1");
    size_t n = (size_t)t->shape[0];
    float *values = malloc(n * sizeof(*values));
    if (!values)
        return ns_error_set(err, NS_ENOMEM, part_field(buf, layer, part), "out of memory");
    if (t->dtype == NS_DTYPE_F32) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        memcpy(values, t->data, n * sizeof(float));
#else
        for (size_t i = 0; i < n; i++) {
            uint32_t bits = load_le32(t->data + 4 * i);
            memcpy(&values[i], &bits, sizeof(bits));
        }
#endif
    } else {
        double *kept = malloc(n * sizeof(*kept));
        if (!kept) {
            free(values);
            return ns_error_set(err, NS_ENOMEM, part_field(buf, layer, part), "out of memory");
        }
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        memcpy(kept, t->data, n * sizeof(double));
#else
        for (size_t i = 0; i < n; i++) {
            uint64_t bits = ns__load_le64(t->data + 8 * i);
            memcpy(&kept[i], &bits, sizeof(bits));
        }
#endif
        for (size_t i = 0; i < n; i++) {
            double d = kept[i];
            values[i] = d > FLT_MAX ? INFINITY : d < -FLT_MAX ? -INFINITY : (float)d;
        }
        *wide = kept;
    }
    *out = values;
    *len = n;
    return 0;
}

/* 1 if mean and var can be read in place: F32 [C] of equal C, 4-byte
 * aligned, on a little-endian machine. */
static int borrowable(const ns_tensor_t *mean, const ns_tensor_t *var)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    return mean->dtype == NS_DTYPE_F32 && var->dtype == NS_DTYPE_F32 && mean->ndim == 1 &&
           var->ndim == 1 && mean->shape[0] >= 1 && var->shape[0] == mean->shape[0] &&
           (uintptr_t)mean->data % _Alignof(float) == 0 &&
           (uintptr_t)var->data % _Alignof(float) == 0;
#else
    (void)mean;
    (void)var;
    return 0;
#endif
}

/* 'borrow': arrays may point into the body (biased reports only: an
 * unbiased variance is converted, which needs a copy). */
static int decode_layer(const ns_safetensors_t *st, ns_layer_report_t *layer,
                        const ns__st_piece_t *parts[N_PARTS], int borrow, ns_error_detail_t *err)
{
    char buf[256];
    const ns_tensor_t *count = parts[PART_COUNT] ? parts[PART_COUNT]->tensor : NULL;
    if (!count)
        return ns_error_set(err, NS_EINVAL, part_field(buf, layer->name, NS_FIELD_COUNT),
                            "missing tensor");
    if (count->dtype != NS_DTYPE_I64)
        return ns_error_set(err, NS_EINVAL, part_field(buf, layer->name, NS_FIELD_COUNT),
                            "expected dtype I64, got %s", ns__safetensors_dtype_name(st, count));
    if (!(count->ndim == 0 || (count->ndim == 1 && count->shape[0] == 1)))
        return ns_error_set(err, NS_EINVAL, part_field(buf, layer->name, NS_FIELD_COUNT),
                            "expected shape [] (a scalar)");
    int64_t n = (int64_t)ns__load_le64(count->data);
    if (n < 0)
        return ns_error_set(err, NS_EINVAL, part_field(buf, layer->name, NS_FIELD_COUNT),
                            "expected a non-negative integer, got %lld", (long long)n);
    layer->count = (uint64_t)n;

    if (!parts[PART_MEAN] || !parts[PART_VAR]) {
        const char *field =
            part_field(buf, layer->name, parts[PART_MEAN] ? NS_FIELD_VAR : NS_FIELD_MEAN);
        if (parts[PART_MEAN] || parts[PART_VAR])
            return ns_error_set(err, NS_EINVAL, field,
                                "missing tensor (mean and var come together)");
        if (layer->count > 0)
            return ns_error_set(err, NS_EINVAL, field, "missing tensor (required when count > 0)");
        return 0;
    }
    if (borrow && borrowable(parts[PART_MEAN]->tensor, parts[PART_VAR]->tensor)) {
        /* Aligned F32 little-endian: the values are used where they lie. */
        layer->mean = (float *)(void *)parts[PART_MEAN]->tensor->data;
        layer->var = (float *)(void *)parts[PART_VAR]->tensor->data;
        layer->channels = (size_t)parts[PART_MEAN]->tensor->shape[0];
        layer->borrowed = 1;
        return 0;
    }
    size_t n_mean, n_var;
    int rc = load_values(st, parts[PART_MEAN]->tensor, layer->name, NS_FIELD_MEAN, &layer->mean,
                         &layer->mean64, &n_mean, err);
    if (rc)
        return rc;
    layer->channels = n_mean;
    if ((rc = load_values(st, parts[PART_VAR]->tensor, layer->name, NS_FIELD_VAR, &layer->var,
                          &layer->var64, &n_var, err)))
        return rc;
    if (n_var != n_mean)
        return ns_error_set(err, NS_EINVAL, part_field(buf, layer->name, NS_FIELD_VAR),
                            "expected %zu values, got %zu", n_mean, n_var);
    /* Doubles are kept only as a pair: one F32 tensor makes the layer float32. */
    if ((layer->mean64 == NULL) != (layer->var64 == NULL)) {
        free(layer->mean64);
        free(layer->var64);
        layer->mean64 = layer->var64 = NULL;
    }
    return 0;
}

/* An F64 value that is finite yet not finite as float32 overflowed. */
static int overflow_hint(void *ctx, const ns_layer_report_t *layer, int is_var, size_t index,
                         char *dst, size_t dst_cap)
{
    char name[NS_NAME_MAX + 8];
    snprintf(name, sizeof(name), "%s.%s", layer->name, is_var ? NS_FIELD_VAR : NS_FIELD_MEAN);
    const ns_tensor_t *t = ns_safetensors_find(ctx, name);
    if (!t || t->dtype != NS_DTYPE_F64 || index >= t->nbytes / 8)
        return -1;
    uint64_t bits = ns__load_le64(t->data + 8 * index);
    double d;
    memcpy(&d, &bits, sizeof(d));
    if (!isfinite(d))
        return -1;
    snprintf(dst, dst_cap, "value %g is outside the float32 range", d);
    return 0;
}

static const char *const part_names[] = {NS_FIELD_MEAN, NS_FIELD_VAR, NS_FIELD_COUNT, NULL};
#define PART_NAMING "<layer>.mean, <layer>.var or <layer>.count"

/* The layers of 'report' (n_layers zeroed ones) from the pieces, checked. */
static int decode_layers(ns_report_t *report, const ns_safetensors_t *st,
                         const ns__st_piece_t *pieces, int borrow, ns_error_detail_t *err)
{
    int rc;
    for (size_t i = 0, l = 0; i < st->n_tensors; l++) {
        const ns__st_piece_t *parts[N_PARTS];
        ns_layer_report_t *layer = &report->layers[l];
        const char *name = ns__safetensors_next_layer(pieces, st->n_tensors, &i, parts, N_PARTS);
        memcpy(layer->name, name, sizeof(layer->name));
        if ((rc = decode_layer(st, layer, parts, borrow && !report->unbiased, err)))
            return rc;
    }
    return ns__report_finish(report, err, overflow_hint, (void *)st);
}

static int decode(ns_report_t **dst, const uint8_t *src, size_t src_len, int borrow,
                  ns_error_detail_t *err)
{
    ns_safetensors_t *st = NULL;
    ns_report_t *report = NULL;
    ns__st_piece_t *pieces = NULL;
    size_t n_layers;
    int rc;

    *dst = NULL;
    if ((rc = ns_safetensors_parse(&st, src, src_len, err)))
        return rc;
    /* Scalars first, as the JSON decoder checks step and worker first. */
    if (!(report = ns__report_create(0))) {
        rc = ns_error_set(err, NS_ENOMEM, "", "out of memory");
        goto out;
    }
    if ((rc = decode_meta(report, st, err)))
        goto out;
    if ((rc = ns__safetensors_layer_pieces(st, part_names, PART_NAMING, &pieces, &n_layers, err)))
        goto out;
    if (!(report->layers = calloc(n_layers, sizeof(*report->layers)))) {
        rc = ns_error_set(err, NS_ENOMEM, "", "out of memory");
        goto out;
    }
    report->n_layers = n_layers;
    if ((rc = decode_layers(report, st, pieces, borrow, err)))
        goto out;
    *dst = report;
    report = NULL;
out:
    ns_report_free(report);
    free(pieces);
    ns_safetensors_free(st);
    return rc;
}

/* ---------------------------------------------------------------- into a scratch */

struct ns_report_scratch_s {
    ns_safetensors_t *st; /* its arrays kept (ns__safetensors_reparse()) */
    ns__st_piece_t *pieces;
    size_t pieces_cap;
    ns_report_t report;
    size_t layers_cap;
};

ns_report_scratch_t *ns_report_scratch_new(void)
{
    return calloc(1, sizeof(ns_report_scratch_t));
}

void ns_report_scratch_free(ns_report_scratch_t *scratch)
{
    if (!scratch)
        return;
    ns_safetensors_free(scratch->st);
    free(scratch->pieces);
    free(scratch->report.layers);
    free(scratch);
}

size_t ns_report_scratch_bytes(const ns_report_scratch_t *scratch)
{
    if (!scratch)
        return 0;
    return sizeof(*scratch) + ns__safetensors_bytes(scratch->st) +
           scratch->pieces_cap * sizeof(*scratch->pieces) +
           scratch->layers_cap * sizeof(*scratch->report.layers);
}

int ns_report_decode_safetensors_into(ns_report_scratch_t *scratch, ns_report_t **dst,
                                      const uint8_t *src, size_t src_len, ns_error_detail_t *err)
{
    ns_report_t *report = &scratch->report;
    ns_layer_report_t *layers = report->layers;
    size_t n_layers;
    int rc;

    *dst = NULL;
    memset(report, 0, sizeof(*report));
    report->layers = layers;
    report->scratch = scratch;
    ns__report_defaults(report);
    if ((rc = ns__safetensors_reparse(&scratch->st, src, src_len, err)))
        return rc;
    if ((rc = decode_meta(report, scratch->st, err)))
        return rc;
    if ((rc = ns__safetensors_layer_pieces_into(scratch->st, part_names, PART_NAMING,
                                                &scratch->pieces, &scratch->pieces_cap, &n_layers,
                                                err)))
        return rc;
    if (n_layers > scratch->layers_cap) {
        layers = realloc(report->layers, n_layers * sizeof(*layers));
        if (!layers)
            return ns_error_set(err, NS_ENOMEM, "", "out of memory");
        report->layers = layers;
        scratch->layers_cap = n_layers;
    }
    memset(report->layers, 0, n_layers * sizeof(*report->layers));
    report->n_layers = n_layers;
    if ((rc = decode_layers(report, scratch->st, scratch->pieces, 1, err))) {
        ns_report_free(report); /* what the layers allocated */
        return rc;
    }
    *dst = report;
    return 0;
}

int ns_report_decode_safetensors(ns_report_t **dst, const uint8_t *src, size_t src_len,
                                 ns_error_detail_t *err)
{
    return decode(dst, src, src_len, 0, err);
}

int ns_report_decode_safetensors_borrowed(ns_report_t **dst, const uint8_t *src, size_t src_len,
                                          ns_error_detail_t *err)
{
    return decode(dst, src, src_len, 1, err);
}
