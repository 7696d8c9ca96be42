/* safetensors.c - a checked parser for safetensors buffers from untrusted
 * clients: every length, offset, dtype and shape is verified before use, and
 * nothing is read outside [src, src + src_len). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "proto_internal.h"

/* Largest header accepted (the reference implementation's limit). */
#define HEADER_MAX (100u * 1000u * 1000u)

static const struct {
    const char *name;
    size_t size;
    ns_dtype_t dtype;
} dtypes[] = {
    {"F32", 4, NS_DTYPE_F32},       {"F64", 8, NS_DTYPE_F64},       {"I64", 8, NS_DTYPE_I64},
    {"BOOL", 1, NS_DTYPE_OTHER},    {"U8", 1, NS_DTYPE_OTHER},      {"I8", 1, NS_DTYPE_OTHER},
    {"F8_E5M2", 1, NS_DTYPE_OTHER}, {"F8_E4M3", 1, NS_DTYPE_OTHER}, {"I16", 2, NS_DTYPE_OTHER},
    {"U16", 2, NS_DTYPE_OTHER},     {"F16", 2, NS_DTYPE_OTHER},     {"BF16", 2, NS_DTYPE_OTHER},
    {"I32", 4, NS_DTYPE_OTHER},     {"U32", 4, NS_DTYPE_OTHER},     {"U64", 8, NS_DTYPE_OTHER},
};

size_t ns__dtype_size(const char *name, ns_dtype_t *dtype)
{
    for (size_t i = 0; i < sizeof(dtypes) / sizeof(dtypes[0]); i++)
        if (strcmp(dtypes[i].name, name) == 0) {
            *dtype = dtypes[i].dtype;
            return dtypes[i].size;
        }
    return 0;
}

/* Offsets kept while sorting: begin/end relative to the data area. */
typedef struct span_s {
    uint64_t begin, end;
    size_t index;
} span_t;

static int span_cmp(const void *a, const void *b)
{
    const span_t *x = a, *y = b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end)
        return x->end < y->end ? -1 : 1;
    return x->index < y->index ? -1 : x->index > y->index;
}

static int parse_tensor(ns_tensor_t *t, span_t *span, const char *name, const json_t *v,
                        uint64_t data_len, ns_error_detail_t *err)
{
    const char *key;
    json_t *member;
    size_t i;
    json_t *dim;

    if (strlen(name) >= sizeof(t->name))
        return ns_error_set(err, NS_EINVAL, "", "safetensors: tensor name \"%.64s...\" is too long",
                            name);
    memcpy(t->name, name, strlen(name) + 1);
    if (!json_is_object(v))
        return ns_error_set(err, NS_EINVAL, name, "tensor entry must be an object");
    json_object_foreach((json_t *)v, key, member)
    {
        if (strcmp(key, "dtype") != 0 && strcmp(key, "shape") != 0 &&
            strcmp(key, "data_offsets") != 0)
            return ns_error_set(err, NS_EINVAL, name, "unknown tensor field \"%.64s\"", key);
    }
    const char *dtype = json_string_value(json_object_get(v, "dtype"));
    if (!dtype)
        return ns_error_set(err, NS_EINVAL, name, "dtype: expected a string");
    size_t elem = ns__dtype_size(dtype, &t->dtype);
    if (!elem)
        return ns_error_set(err, NS_EINVAL, name, "unknown dtype \"%.32s\"", dtype);

    const json_t *shape = json_object_get(v, "shape");
    if (!json_is_array(shape) || json_array_size(shape) > 4)
        return ns_error_set(err, NS_EINVAL, name,
                            "shape: expected an array of at most 4 non-negative integers");
    uint64_t count = 1;
    t->ndim = json_array_size(shape);
    json_array_foreach(shape, i, dim)
    {
        if (!json_is_integer(dim) || json_integer_value(dim) < 0)
            return ns_error_set(err, NS_EINVAL, name,
                                "shape: expected an array of at most 4 non-negative integers");
        t->shape[i] = (uint64_t)json_integer_value(dim);
        if (__builtin_mul_overflow(count, t->shape[i], &count))
            return ns_error_set(err, NS_EINVAL, name, "shape: size overflows");
    }
    uint64_t nbytes;
    if (__builtin_mul_overflow(count, (uint64_t)elem, &nbytes))
        return ns_error_set(err, NS_EINVAL, name, "shape: size overflows");

    const json_t *offsets = json_object_get(v, "data_offsets");
    const json_t *b = json_array_get(offsets, 0), *e = json_array_get(offsets, 1);
    if (!json_is_array(offsets) || json_array_size(offsets) != 2 || !json_is_integer(b) ||
        !json_is_integer(e) || json_integer_value(b) < 0 || json_integer_value(e) < 0)
        return ns_error_set(err, NS_EINVAL, name,
                            "data_offsets: expected [begin, end], non-negative integers");
    span->begin = (uint64_t)json_integer_value(b);
    span->end = (uint64_t)json_integer_value(e);
    if (span->begin > span->end || span->end > data_len)
        return ns_error_set(err, NS_EINVAL, name,
                            "data_offsets [%llu, %llu] outside the data area (%llu bytes)",
                            (unsigned long long)span->begin, (unsigned long long)span->end,
                            (unsigned long long)data_len);
    if (span->end - span->begin != nbytes)
        return ns_error_set(
            err, NS_EINVAL, name, "data_offsets span %llu bytes, but shape and dtype %s need %llu",
            (unsigned long long)(span->end - span->begin), dtype, (unsigned long long)nbytes);
    t->nbytes = (size_t)nbytes;
    return 0;
}

int ns_safetensors_parse(ns_safetensors_t **dst, const uint8_t *src, size_t src_len,
                         ns_error_detail_t *err)
{
    ns_safetensors_t *st = NULL;
    span_t *spans = NULL;
    json_error_t jerr;
    int rc = 0;

    *dst = NULL;
    if (!src || src_len < 8)
        return ns_error_set(
            err, NS_EINVAL, "",
            "safetensors: body of %zu bytes is shorter than the 8-byte header length",
            src ? src_len : 0);
    uint64_t header_len = 0;
    for (int i = 7; i >= 0; i--)
        header_len = header_len << 8 | src[i];
    if (header_len > src_len - 8)
        return ns_error_set(err, NS_EINVAL, "",
                            "safetensors: header length %llu exceeds the %zu bytes that follow",
                            (unsigned long long)header_len, src_len - 8);
    if (header_len > HEADER_MAX)
        return ns_error_set(err, NS_EINVAL, "", "safetensors: header length %llu exceeds %u",
                            (unsigned long long)header_len, HEADER_MAX);

    st = calloc(1, sizeof(*st));
    if (!st)
        return ns_error_set(err, NS_ENOMEM, "", "out of memory");
    st->header =
        json_loadb((const char *)src + 8, (size_t)header_len, JSON_REJECT_DUPLICATES, &jerr);
    if (!st->header) {
        rc = ns_error_set(err, NS_EINVAL, "", "safetensors: header is not valid JSON: %s",
                          jerr.text);
        goto fail;
    }
    if (!json_is_object(st->header)) {
        rc = ns_error_set(err, NS_EINVAL, "", "safetensors: header is not a JSON object");
        goto fail;
    }

    const uint8_t *data = src + 8 + header_len;
    uint64_t data_len = src_len - 8 - header_len;
    size_t n = json_object_size(st->header);
    const json_t *meta = json_object_get(st->header, "__metadata__");
    if (meta) {
        const char *key;
        json_t *value;
        if (!json_is_object(meta)) {
            rc = ns_error_set(err, NS_EINVAL, "__metadata__", "expected an object of strings");
            goto fail;
        }
        json_object_foreach((json_t *)meta, key, value)
        {
            if (!json_is_string(value)) {
                char field[256];
                snprintf(field, sizeof(field), "__metadata__.%.200s", key);
                rc = ns_error_set(err, NS_EINVAL, field, "expected a string");
                goto fail;
            }
        }
        st->meta = meta;
        n--;
    }

    st->tensors = calloc(n ? n : 1, sizeof(*st->tensors));
    spans = calloc(n ? n : 1, sizeof(*spans));
    if (!st->tensors || !spans) {
        rc = ns_error_set(err, NS_ENOMEM, "", "out of memory");
        goto fail;
    }
    {
        const char *key;
        json_t *value;
        size_t i = 0;
        json_object_foreach(st->header, key, value)
        {
            if (strcmp(key, "__metadata__") == 0)
                continue;
            spans[i].index = i;
            if ((rc = parse_tensor(&st->tensors[i], &spans[i], key, value, data_len, err)))
                goto fail;
            i++;
        }
    }

    /* The ranges, sorted, must tile the data area exactly: no overlap, no hole. */
    qsort(spans, n, sizeof(*spans), span_cmp);
    uint64_t at = 0;
    for (size_t i = 0; i < n; i++) {
        const ns_tensor_t *t = &st->tensors[spans[i].index];
        if (spans[i].begin != at) {
            rc = ns_error_set(err, NS_EINVAL, t->name,
                              spans[i].begin < at ? "data_offsets overlap another tensor"
                                                  : "data_offsets leave a hole before this tensor");
            goto fail;
        }
        at = spans[i].end;
    }
    if (at != data_len) {
        rc = ns_error_set(err, NS_EINVAL, "",
                          "safetensors: tensors cover %llu of the %llu data bytes",
                          (unsigned long long)at, (unsigned long long)data_len);
        goto fail;
    }

    /* Reorder the tensors by offset and point them into the input. */
    {
        ns_tensor_t *sorted = malloc((n ? n : 1) * sizeof(*sorted));
        if (!sorted) {
            rc = ns_error_set(err, NS_ENOMEM, "", "out of memory");
            goto fail;
        }
        for (size_t i = 0; i < n; i++) {
            sorted[i] = st->tensors[spans[i].index];
            sorted[i].data = data + spans[i].begin;
        }
        free(st->tensors);
        st->tensors = sorted;
        st->n_tensors = n;
    }
    free(spans);
    *dst = st;
    return 0;
fail:
    free(spans);
    ns_safetensors_free(st);
    return rc;
}

size_t ns_safetensors_count(const ns_safetensors_t *st)
{
    return st ? st->n_tensors : 0;
}

const ns_tensor_t *ns_safetensors_at(const ns_safetensors_t *st, size_t i)
{
    return st && i < st->n_tensors ? &st->tensors[i] : NULL;
}

const ns_tensor_t *ns_safetensors_find(const ns_safetensors_t *st, const char *name)
{
    if (!st || !name)
        return NULL;
    for (size_t i = 0; i < st->n_tensors; i++)
        if (strcmp(st->tensors[i].name, name) == 0)
            return &st->tensors[i];
    return NULL;
}

const char *ns_safetensors_meta(const ns_safetensors_t *st, const char *key)
{
    if (!st || !st->meta || !key)
        return NULL;
    return json_string_value(json_object_get(st->meta, key));
}

void ns_safetensors_free(ns_safetensors_t *st)
{
    if (!st)
        return;
    json_decref(st->header);
    free(st->tensors);
    free(st);
}
