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

const char *ns__safetensors_dtype_name(const ns_safetensors_t *st, const ns_tensor_t *t)
{
    size_t i = (size_t)(t - st->tensors);
    if (st->dtype_ids != NULL && i < st->n_tensors)
        return dtypes[st->dtype_ids[i]].name;
    const char *s =
        json_string_value(json_object_get(json_object_get(st->header, t->name), "dtype"));
    return s ? s : "?";
}

/* Offsets kept while sorting: begin/end relative to the data area. */
typedef struct span_s {
    uint64_t begin, end;
    size_t index;
    unsigned char dtype_id; /* the scanner's: an index of dtypes[] */
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

/* The ranges, sorted, must tile the data area exactly (no overlap, no hole);
 * then the tensors are reordered by offset and pointed into the input. */
static int tile(ns_safetensors_t *st, span_t *spans, size_t n, const uint8_t *data,
                uint64_t data_len, int with_ids, ns_error_detail_t *err)
{
    size_t in_order = 1; /* writers usually emit offset order: then no sort */
    while (in_order < n && span_cmp(&spans[in_order - 1], &spans[in_order]) < 0)
        in_order++;
    if (in_order < n)
        qsort(spans, n, sizeof(*spans), span_cmp);
    uint64_t at = 0;
    for (size_t i = 0; i < n; i++) {
        const ns_tensor_t *t = &st->tensors[spans[i].index];
        if (spans[i].begin != at)
            return ns_error_set(err, NS_EINVAL, t->name,
                                spans[i].begin < at
                                    ? "data_offsets overlap another tensor"
                                    : "data_offsets leave a hole before this tensor");
        at = spans[i].end;
    }
    if (at != data_len)
        return ns_error_set(err, NS_EINVAL, "",
                            "safetensors: tensors cover %llu of the %llu data bytes",
                            (unsigned long long)at, (unsigned long long)data_len);
    /* The scanner's dtype ids (one byte each) share the block. */
    size_t ids = with_ids ? n : 0;
    size_t need = (n ? n : 1) * sizeof(ns_tensor_t) + ids;
    ns_tensor_t *sorted;
    if (st->keep) {
        if (st->tensors_bytes < need) {
            ns_tensor_t *grown = realloc(st->sorted, need);
            if (!grown)
                return ns_error_set(err, NS_ENOMEM, "", "out of memory");
            st->sorted = grown;
            st->tensors_bytes = need;
        }
        sorted = st->sorted;
    } else if (!(sorted = malloc(need))) {
        return ns_error_set(err, NS_ENOMEM, "", "out of memory");
    }
    unsigned char *dtype_ids = with_ids ? (unsigned char *)(sorted + (n ? n : 1)) : NULL;
    for (size_t i = 0; i < n; i++) {
        sorted[i] = st->tensors[spans[i].index];
        sorted[i].data = data + spans[i].begin;
        if (dtype_ids != NULL)
            dtype_ids[i] = spans[i].dtype_id;
    }
    if (st->keep)
        st->scan = st->tensors; /* for the next parse */
    else
        free(st->tensors);
    st->tensors = sorted;
    st->n_tensors = n;
    st->dtype_ids = dtype_ids;
    return 0;
}

/* ---- the common case without a JSON tree ----
 * A strict scanner for well-formed headers: strings without escapes, control
 * or non-ASCII bytes, non-negative integers of at most 18 digits, exactly the
 * three tensor fields, string metadata, no duplicate key. It only ever
 * accepts: anything else (including every error) goes to the jansson path,
 * which then reports it, so messages do not depend on the path taken. The
 * result matches the jansson path's, without its tree: the metadata in
 * st->meta_owned, each tensor's dtype spelling as an index of dtypes[] in
 * st->dtype_ids (what ns__safetensors_dtype_name() returns). */

typedef struct scan_s {
    const char *p, *end;
} scan_t;

static void scan_ws(scan_t *s)
{
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\n' || *s->p == '\r' || *s->p == '\t'))
        s->p++;
}

/* Consume 'c' if it comes next (after whitespace: writers rarely put any,
 * so 'c' itself is looked for first). Inlined, as are the string and number
 * scans: a header is thousands of short tokens. */
static inline __attribute__((always_inline)) int scan_lit(scan_t *s, char c)
{
    if (s->p < s->end && *s->p == c) {
        s->p++;
        return 1;
    }
    scan_ws(s);
    if (s->p < s->end && *s->p == c) {
        s->p++;
        return 1;
    }
    return 0;
}

/* Bytes that end a plain string: the quote, and those left to jansson
 * (escape, control, non-ASCII). */
static int string_stop(unsigned char c)
{
    return c == '"' || c == '\\' || c < 0x20 || c >= 0x80;
}

static inline __attribute__((always_inline)) int scan_string(scan_t *s, const char **v, size_t *len)
{
    if (!scan_lit(s, '"'))
        return 0;
    const char *b = s->p;
    while (s->p < s->end && !string_stop((unsigned char)*s->p))
        s->p++;
    if (s->p == s->end || *s->p != '"')
        return 0;
    *v = b;
    *len = (size_t)(s->p - b);
    s->p++;
    return 1;
}

static inline __attribute__((always_inline)) int scan_uint(scan_t *s, uint64_t *v)
{
    scan_ws(s);
    const char *b = s->p;
    uint64_t x = 0;
    while (s->p < s->end && *s->p >= '0' && *s->p <= '9')
        x = x * 10 + (uint64_t)(*s->p++ - '0');
    size_t len = (size_t)(s->p - b);
    if (len == 0 || len > 18 || (len > 1 && *b == '0'))
        return 0;
    if (s->p < s->end && (*s->p == '.' || *s->p == 'e' || *s->p == 'E'))
        return 0;
    *v = x;
    return 1;
}

static int scan_key_is(const char *k, size_t len, const char *want)
{
    return len == strlen(want) && memcmp(k, want, len) == 0;
}

/* One {"dtype", "shape", "data_offsets"} entry, checked as parse_tensor does. */
static int scan_tensor(scan_t *s, ns_tensor_t *t, span_t *span, uint64_t data_len)
{
    const char *dtype = NULL;
    size_t dtype_len = 0;
    unsigned seen = 0;
    if (!scan_lit(s, '{'))
        return 0;
    for (int k = 0; k < 3; k++) {
        const char *key;
        size_t len;
        if ((k && !scan_lit(s, ',')) || !scan_string(s, &key, &len) || !scan_lit(s, ':'))
            return 0;
        if (scan_key_is(key, len, "dtype") && !(seen & 1)) {
            seen |= 1;
            if (!scan_string(s, &dtype, &dtype_len))
                return 0;
        } else if (scan_key_is(key, len, "shape") && !(seen & 2)) {
            seen |= 2;
            if (!scan_lit(s, '['))
                return 0;
            if (!scan_lit(s, ']'))
                for (;;) {
                    if (t->ndim == 4 || !scan_uint(s, &t->shape[t->ndim]))
                        return 0;
                    t->ndim++;
                    if (scan_lit(s, ']'))
                        break;
                    if (!scan_lit(s, ','))
                        return 0;
                }
        } else if (scan_key_is(key, len, "data_offsets") && !(seen & 4)) {
            seen |= 4;
            if (!scan_lit(s, '[') || !scan_uint(s, &span->begin) || !scan_lit(s, ',') ||
                !scan_uint(s, &span->end) || !scan_lit(s, ']'))
                return 0;
        } else {
            return 0;
        }
    }
    if (!scan_lit(s, '}'))
        return 0;

    char name[16];
    if (dtype_len >= sizeof(name))
        return 0;
    memcpy(name, dtype, dtype_len);
    name[dtype_len] = '\0';
    size_t elem = 0;
    for (size_t k = 0; k < sizeof(dtypes) / sizeof(dtypes[0]) && !elem; k++)
        if (strcmp(dtypes[k].name, name) == 0) {
            t->dtype = dtypes[k].dtype;
            elem = dtypes[k].size;
            span->dtype_id = (unsigned char)k;
        }
    if (!elem)
        return 0;
    uint64_t count = 1;
    for (size_t i = 0; i < t->ndim; i++)
        if (__builtin_mul_overflow(count, t->shape[i], &count))
            return 0;
    uint64_t nbytes;
    if (__builtin_mul_overflow(count, (uint64_t)elem, &nbytes))
        return 0;
    if (span->begin > span->end || span->end > data_len || span->end - span->begin != nbytes)
        return 0;
    t->nbytes = (size_t)nbytes;
    return 1;
}

/* 1 if the metadata table holds 'key' (klen bytes). */
static int table_has(const ns_safetensors_t *st, const char *key, size_t klen)
{
    for (uint32_t i = 0; i < st->n_meta; i++) {
        const char *k = st->meta_text + st->meta_key[i];
        if (strlen(k) == klen && memcmp(k, key, klen) == 0)
            return 1;
    }
    return 0;
}

/* The table moved into a new object, meta_owned (metadata it cannot hold). */
static int table_to_object(ns_safetensors_t *st)
{
    if (!(st->meta_owned = json_object()))
        return 0;
    for (uint32_t i = 0; i < st->n_meta; i++)
        if (json_object_set_new_nocheck(st->meta_owned, st->meta_text + st->meta_key[i],
                                        json_string_nocheck(st->meta_text + st->meta_value[i])))
            return 0;
    st->meta_table = 0;
    st->n_meta = 0;
    st->meta = st->meta_owned;
    return 1;
}

/* One member of the metadata, new: into the table while it fits (no
 * allocation), else into meta_owned. */
static int meta_add(ns_safetensors_t *st, const char *key, size_t klen, const char *value,
                    size_t vlen)
{
    size_t used = st->n_meta ? st->meta_value[st->n_meta - 1] +
                                   strlen(st->meta_text + st->meta_value[st->n_meta - 1]) + 1
                             : 0;
    if (st->meta_table && st->n_meta < NS__ST_META_MAX &&
        klen + vlen + 2 <= NS__ST_META_TEXT - used) {
        memcpy(st->meta_text + used, key, klen);
        st->meta_text[used + klen] = '\0';
        memcpy(st->meta_text + used + klen + 1, value, vlen);
        st->meta_text[used + klen + 1 + vlen] = '\0';
        st->meta_key[st->n_meta] = (uint16_t)used;
        st->meta_value[st->n_meta] = (uint16_t)(used + klen + 1);
        st->n_meta++;
        return 1;
    }
    if (st->meta_table && !table_to_object(st))
        return 0;
    return json_object_setn_new_nocheck(st->meta_owned, key, klen,
                                        json_stringn_nocheck(value, vlen)) == 0;
}

/* "__metadata__": {string: string, ...} into st's table (or meta_owned). */
static int scan_meta(scan_t *s, ns_safetensors_t *st)
{
    if (!scan_lit(s, '{'))
        return 0;
    st->meta_table = 1;
    if (scan_lit(s, '}'))
        return 1;
    do {
        const char *key, *value;
        size_t klen, vlen;
        if (!scan_string(s, &key, &klen) || !scan_lit(s, ':') || !scan_string(s, &value, &vlen))
            return 0;
        if (st->meta_table ? table_has(st, key, klen)
                           : json_object_getn(st->meta, key, klen) != NULL)
            return 0; /* a duplicate: the jansson path reports it */
        if (!meta_add(st, key, klen, value, vlen))
            return 0;
    } while (scan_lit(s, ','));
    return scan_lit(s, '}');
}

/* Whether two tensors share a name (the jansson path then reports it): an
 * open-addressing set of tensor indices over FNV-1a hashes of the names. */
static int has_duplicate_name(const ns_tensor_t *tensors, size_t n)
{
    size_t cap = 16;
    while (cap < 2 * n)
        cap *= 2;
    uint32_t local[512];
    uint32_t *slot = cap <= 512 ? local : malloc(cap * sizeof(*slot));
    if (!slot)
        return 1;
    memset(slot, 0xff, cap * sizeof(*slot)); /* UINT32_MAX: empty */
    int dup = 0;
    for (size_t i = 0; i < n && !dup; i++) {
        uint64_t h = 1469598103934665603u;
        for (const unsigned char *c = (const unsigned char *)tensors[i].name; *c; c++)
            h = (h ^ *c) * 1099511628211u;
        size_t k = (size_t)h & (cap - 1);
        while (slot[k] != UINT32_MAX && !dup) {
            dup = strcmp(tensors[slot[k]].name, tensors[i].name) == 0;
            k = (k + 1) & (cap - 1);
        }
        slot[k] = (uint32_t)i;
    }
    if (slot != local)
        free(slot);
    return dup;
}

/* @return 0 with *dst filled, or nonzero: use the jansson path. */
/* The scan into 'st', empty but for the arrays it keeps (keep 1).
 * @return 1 when parsed, 0 where the jansson path decides. */
static int scan_into(ns_safetensors_t *st, const char *header, size_t header_len,
                     const uint8_t *data, uint64_t data_len)
{
    scan_t s = {header, header + header_len};
    span_t *spans = st->keep ? st->spans : NULL;
    size_t n = 0, cap = 0;
    if (st->keep) {
        st->tensors = st->scan;
        cap = st->scan_cap < st->spans_cap ? st->scan_cap : st->spans_cap;
    }
    /* First capacity: about one entry per 64 header bytes (ResNet-50's take
     * ~80), bounded so that a huge header cannot claim memory up front. */
    size_t guess = header_len / 64 + 4 < 1024 ? header_len / 64 + 4 : 1024;
    int ok = 0;
    if (!scan_lit(&s, '{'))
        goto out;
    if (!scan_lit(&s, '}')) {
        do {
            const char *name;
            size_t len;
            if (!scan_string(&s, &name, &len) || !scan_lit(&s, ':'))
                goto out;
            if (scan_key_is(name, len, "__metadata__")) {
                if (st->meta_table || st->meta_owned != NULL || !scan_meta(&s, st))
                    goto out; /* a second one, or malformed */
                continue;
            }
            if (len >= sizeof(st->tensors->name) || n >= UINT32_MAX - 1)
                goto out;
            if (n == cap) {
                size_t ncap = cap ? 2 * cap : guess;
                ns_tensor_t *t = realloc(st->tensors, ncap * sizeof(*t));
                if (t)
                    st->tensors = t;
                span_t *sp = realloc(spans, ncap * sizeof(*sp));
                if (sp)
                    spans = sp;
                if (st->keep) { /* the kept arrays follow */
                    st->scan = st->tensors;
                    st->spans = spans;
                    st->scan_cap = t ? ncap : st->scan_cap;
                    st->spans_cap = sp ? ncap : st->spans_cap;
                }
                if (!t || !sp)
                    goto out;
                cap = ncap;
            }
            ns_tensor_t *t = &st->tensors[n];
            memset(t, 0, sizeof(*t));
            memcpy(t->name, name, len);
            spans[n].index = n;
            if (!scan_tensor(&s, t, &spans[n], data_len))
                goto out;
            n++;
        } while (scan_lit(&s, ','));
        if (!scan_lit(&s, '}'))
            goto out;
    }
    scan_ws(&s);
    if (s.p != s.end || has_duplicate_name(st->tensors, n))
        goto out;
    if (!st->tensors && !(st->tensors = malloc(sizeof(*st->tensors))))
        goto out;
    if (st->keep && st->scan == NULL) {
        st->scan = st->tensors;
        st->scan_cap = 1;
    }
    ok = tile(st, spans, n, data, data_len, 1, NULL) == 0;
out:
    if (!st->keep)
        free(spans);
    return ok;
}

/* @return 0 with *dst filled, or nonzero: use the jansson path. */
static int parse_fast(ns_safetensors_t **dst, const char *header, size_t header_len,
                      const uint8_t *data, uint64_t data_len)
{
    ns_safetensors_t *st = calloc(1, sizeof(*st));
    if (!st || !scan_into(st, header, header_len, data, data_len)) {
        ns_safetensors_free(st);
        return 1;
    }
    *dst = st;
    return 0;
}

/* The jansson path: every check in a fixed order, with its message. */
static int parse_full(ns_safetensors_t **dst, const char *header, size_t header_len,
                      const uint8_t *data, uint64_t data_len, ns_error_detail_t *err)
{
    ns_safetensors_t *st = NULL;
    span_t *spans = NULL;
    json_error_t jerr;
    int rc = 0;

    st = calloc(1, sizeof(*st));
    if (!st)
        return ns_error_set(err, NS_ENOMEM, "", "out of memory");
    st->header = json_loadb(header, header_len, JSON_REJECT_DUPLICATES, &jerr);
    if (!st->header) {
        rc = ns_error_set(err, NS_EINVAL, "", "safetensors: header is not valid JSON: %s",
                          jerr.text);
        goto fail;
    }
    if (!json_is_object(st->header)) {
        rc = ns_error_set(err, NS_EINVAL, "", "safetensors: header is not a JSON object");
        goto fail;
    }

    size_t n = json_object_size(st->header);
    json_t *meta = json_object_get(st->header, "__metadata__");
    if (meta) {
        const char *key;
        json_t *value;
        if (!json_is_object(meta)) {
            rc = ns_error_set(err, NS_EINVAL, "__metadata__", "expected an object of strings");
            goto fail;
        }
        json_object_foreach(meta, key, value)
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
    if ((rc = tile(st, spans, n, data, data_len, 0, err)))
        goto fail;
    free(spans);
    *dst = st;
    return 0;
fail:
    free(spans);
    ns_safetensors_free(st);
    return rc;
}

/* The header length checks shared by both paths. */
static int check_lengths(const uint8_t *src, size_t src_len, uint64_t *header_len,
                         ns_error_detail_t *err)
{
    if (!src || src_len < 8)
        return ns_error_set(
            err, NS_EINVAL, "",
            "safetensors: body of %zu bytes is shorter than the 8-byte header length",
            src ? src_len : 0);
    uint64_t len = 0;
    for (int i = 7; i >= 0; i--)
        len = len << 8 | src[i];
    if (len > src_len - 8)
        return ns_error_set(err, NS_EINVAL, "",
                            "safetensors: header length %llu exceeds the %zu bytes that follow",
                            (unsigned long long)len, src_len - 8);
    if (len > HEADER_MAX)
        return ns_error_set(err, NS_EINVAL, "", "safetensors: header length %llu exceeds %u",
                            (unsigned long long)len, HEADER_MAX);
    *header_len = len;
    return 0;
}

/* ns__safetensors_parse_full() : ns_safetensors_parse() without the scanner
 * (library-internal; the unit tests compare both paths). */
int ns__safetensors_parse_full(ns_safetensors_t **dst, const uint8_t *src, size_t src_len,
                               ns_error_detail_t *err);
int ns__safetensors_parse_full(ns_safetensors_t **dst, const uint8_t *src, size_t src_len,
                               ns_error_detail_t *err)
{
    uint64_t header_len;
    int rc;
    *dst = NULL;
    if ((rc = check_lengths(src, src_len, &header_len, err)))
        return rc;
    return parse_full(dst, (const char *)src + 8, (size_t)header_len, src + 8 + header_len,
                      src_len - 8 - header_len, err);
}

/* ns__safetensors_parse_fast() : the scanner alone (library-internal, for the
 * unit tests). @return 0 with *dst, or nonzero where the jansson path decides. */
int ns__safetensors_parse_fast(ns_safetensors_t **dst, const uint8_t *src, size_t src_len);
int ns__safetensors_parse_fast(ns_safetensors_t **dst, const uint8_t *src, size_t src_len)
{
    uint64_t header_len;
    *dst = NULL;
    if (check_lengths(src, src_len, &header_len, NULL))
        return 1;
    return parse_fast(dst, (const char *)src + 8, (size_t)header_len, src + 8 + header_len,
                      src_len - 8 - header_len);
}

int ns_safetensors_parse(ns_safetensors_t **dst, const uint8_t *src, size_t src_len,
                         ns_error_detail_t *err)
{
    uint64_t header_len;
    int rc;
    *dst = NULL;
    if ((rc = check_lengths(src, src_len, &header_len, err)))
        return rc;
    const char *header = (const char *)src + 8;
    const uint8_t *data = src + 8 + header_len;
    uint64_t data_len = src_len - 8 - header_len;
    if (parse_fast(dst, header, (size_t)header_len, data, data_len) == 0)
        return 0;
    return parse_full(dst, header, (size_t)header_len, data, data_len, err);
}

int ns__safetensors_reparse(ns_safetensors_t **dst, const uint8_t *src, size_t src_len,
                            ns_error_detail_t *err)
{
    ns_safetensors_t *st = *dst;
    uint64_t header_len;
    int rc;
    if (st != NULL && !st->keep) { /* the jansson path's: nothing to reuse */
        ns_safetensors_free(st);
        st = *dst = NULL;
    }
    if ((rc = check_lengths(src, src_len, &header_len, err)))
        return rc;
    if (st == NULL) {
        if (!(st = calloc(1, sizeof(*st))))
            return ns_error_set(err, NS_ENOMEM, "", "out of memory");
        st->keep = 1;
        *dst = st;
    }
    /* Emptied but for the kept arrays. */
    json_decref(st->meta_owned);
    st->meta_owned = NULL;
    st->meta = NULL;
    st->meta_table = 0;
    st->n_meta = 0;
    st->n_tensors = 0;
    st->dtype_ids = NULL;
    const char *header = (const char *)src + 8;
    const uint8_t *data = src + 8 + header_len;
    uint64_t data_len = src_len - 8 - header_len;
    if (scan_into(st, header, (size_t)header_len, data, data_len))
        return 0;
    ns_safetensors_free(st);
    *dst = NULL;
    return parse_full(dst, header, (size_t)header_len, data, data_len, err);
}

size_t ns__safetensors_bytes(const ns_safetensors_t *st)
{
    if (st == NULL)
        return 0;
    if (!st->keep)
        return sizeof(*st) + st->n_tensors * (sizeof(ns_tensor_t) + 1);
    return sizeof(*st) + st->scan_cap * sizeof(ns_tensor_t) + st->spans_cap * sizeof(span_t) +
           st->tensors_bytes;
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

const char *ns__safetensors_meta_get(const ns_safetensors_t *st, const char *key)
{
    for (uint32_t i = 0; st->meta_table && i < st->n_meta; i++)
        if (strcmp(st->meta_text + st->meta_key[i], key) == 0)
            return st->meta_text + st->meta_value[i];
    return st->meta ? json_string_value(json_object_get(st->meta, key)) : NULL;
}

int ns__safetensors_meta_check_known(const ns_safetensors_t *st, const char *const *known,
                                     const char *prefix, ns_error_detail_t *err)
{
    if (!st->meta_table)
        return st->meta ? ns__json_check_known(st->meta, known, prefix, err) : 0;
    for (uint32_t m = 0; m < st->n_meta; m++) {
        int rc = ns__check_known_key(st->meta_text + st->meta_key[m], known, prefix, err);
        if (rc != 0)
            return rc;
    }
    return 0;
}

const char *ns_safetensors_meta(const ns_safetensors_t *st, const char *key)
{
    if (!st || !key)
        return NULL;
    return ns__safetensors_meta_get(st, key);
}

void ns_safetensors_free(ns_safetensors_t *st)
{
    if (!st)
        return;
    json_decref(st->header);
    json_decref(st->meta_owned);
    if (st->keep) {
        if (st->tensors != st->scan && st->tensors != st->sorted)
            free(st->tensors);
        free(st->scan);
        free(st->sorted);
        free(st->spans);
    } else {
        free(st->tensors); /* and the dtype ids in its block */
    }
    free(st);
}
