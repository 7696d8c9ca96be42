/* encode.c - statistics and /sync responses as JSON or safetensors. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "util/f32.h"
#include "proto_internal.h"

/* Whether 'extra' more bytes stay within dst's ceiling. */
static int fits(const ns_buf_t *dst, size_t extra)
{
    return dst->cap_max == 0 || (dst->len <= dst->cap_max && extra <= dst->cap_max - dst->len);
}

/* The values as JSON numbers, comma-separated: each the shortest text that
 * reads back as the same float32 (JSON has no NaN or infinity: null),
 * written straight into room reserved for the whole array at once (one
 * allocation, no copies as it grows), a block at a time near the ceiling. */
static int float_array(ns_buf_t *dst, const double *src, size_t n)
{
    enum { BLOCK = 256, WORST = 1 + NS__F32_FORMAT_MAX /* a comma and a number */ };
    if (n <= SIZE_MAX / WORST - 1 && fits(dst, n * WORST + NS__F32_PUT_ROOM)) {
        int rc = ns_buf_reserve(dst, n * WORST + NS__F32_PUT_ROOM);
        if (rc)
            return rc;
        char *end = ns__f32_put_list(dst->data + dst->len, src, n);
        dst->len = (size_t)(end - dst->data);
        *end = '\0';
        return 0;
    }
    for (size_t c0 = 0; c0 < n; c0 += BLOCK) {
        size_t c1 = n - c0 < BLOCK ? n : c0 + BLOCK;
        size_t worst = (c1 - c0) * WORST + NS__F32_PUT_ROOM;
        if (!fits(dst, worst)) {
            /* Near the ceiling: number by number, so a text that fits fits. */
            for (size_t c = c0; c < c1; c++) {
                char num[1 + NS__F32_FORMAT_MAX] = ",";
                size_t k = ns__f32_format(num + 1, ns__f32_narrow(src[c]));
                int rc = ns_buf_append(dst, c ? num : num + 1, c ? k + 1 : k);
                if (rc)
                    return rc;
            }
            continue;
        }
        int rc = ns_buf_reserve(dst, worst);
        if (rc)
            return rc;
        char *p = dst->data + dst->len;
        if (c0)
            *p++ = ',';
        p = ns__f32_put_list(p, src + c0, c1 - c0);
        dst->len = (size_t)(p - dst->data);
        *p = '\0';
    }
    return 0;
}

/* The head of a JSON answer: "{" and the meta members, then "layers":{. */
static int json_head(ns_buf_t *dst, const ns_meta_t *meta, size_t n_meta)
{
    int rc;
    if ((rc = ns_buf_append(dst, "{", 1)))
        return rc;
    for (size_t i = 0; i < n_meta; i++) {
        if ((rc = ns__buf_append_json_string(dst, meta[i].key)) ||
            (rc = ns_buf_append(dst, ":", 1)))
            return rc;
        switch (meta[i].kind) {
        case NS_META_STRING:
            rc = ns__buf_append_json_string(dst, meta[i].str ? meta[i].str : "");
            break;
        case NS_META_INT:
            rc = ns_buf_printf(dst, "%lld", (long long)meta[i].num);
            break;
        case NS_META_BOOL:
            rc = ns_buf_printf(dst, "%s", meta[i].num ? "true" : "false");
            break;
        case NS_META_INT_LIST:
            rc = ns_buf_printf(dst, "[%s]", meta[i].str ? meta[i].str : "");
            break;
        }
        if (rc || (rc = ns_buf_append(dst, ",", 1)))
            return rc;
    }
    return ns_buf_append(dst, "\"layers\":{", 10);
}

/* Layer l's part for its array a (a == 0 also when it has none): the
 * layer's opening with its first array, a later array, and after the last
 * array the scalars and the layer's closing. */
static int json_layer_part(ns_buf_t *dst, const ns_out_layer_t *layers, size_t l, size_t a)
{
    const ns_out_layer_t *layer = &layers[l];
    int rc;
    if (a == 0 && ((l && (rc = ns_buf_append(dst, ",", 1))) ||
                   (rc = ns__buf_append_json_string(dst, layer->name)) ||
                   (rc = ns_buf_append(dst, ":{", 2))))
        return rc;
    if (a < layer->n_arrays) {
        if ((a && (rc = ns_buf_append(dst, ",", 1))) ||
            (rc = ns__buf_append_json_string(dst, layer->array_names[a])) ||
            (rc = ns_buf_append(dst, ":[", 2)) ||
            (rc = float_array(dst, layer->arrays[a], layer->channels)) ||
            (rc = ns_buf_append(dst, "]", 1)))
            return rc;
    }
    if (a + 1 < layer->n_arrays)
        return 0;
    for (size_t s = 0; s < layer->n_scalars; s++) {
        if (((layer->n_arrays || s) && (rc = ns_buf_append(dst, ",", 1))) ||
            (rc = ns__buf_append_json_string(dst, layer->scalar_names[s])) ||
            (rc = ns_buf_printf(dst, ":%lld", (long long)layer->scalars[s])))
            return rc;
    }
    return ns_buf_append(dst, "}", 1);
}

/* Units of the body: one per layer array, one for a layer without arrays. */
static size_t layer_units(const ns_out_layer_t *layer)
{
    return layer->n_arrays ? layer->n_arrays : 1;
}

static size_t json_units(const ns_out_layer_t *layers, size_t n_layers)
{
    size_t n = 0;
    for (size_t l = 0; l < n_layers; l++)
        n += layer_units(&layers[l]);
    return n;
}

size_t ns_stats_json_parts(const ns_out_layer_t *layers, size_t n_layers)
{
    size_t units = json_units(layers, n_layers);
    return 1 + (units < NS_STATS_JSON_PARTS_MAX - 1 ? units : NS_STATS_JSON_PARTS_MAX - 1);
}

int ns_stats_encode_json_part(ns_buf_t *dst, const ns_meta_t *meta, size_t n_meta,
                              const ns_out_layer_t *layers, size_t n_layers, size_t part)
{
    size_t units = json_units(layers, n_layers), n_parts = ns_stats_json_parts(layers, n_layers);
    if (part >= n_parts)
        return NS_EINVAL;
    int rc = 0;
    if (part == 0) {
        rc = json_head(dst, meta, n_meta);
    } else {
        /* Body part p holds units [u0, u1), the units dealt evenly. */
        size_t body = n_parts - 1, u0 = (part - 1) * units / body, u1 = part * units / body;
        size_t u = 0;
        for (size_t l = 0; l < n_layers && u < u1 && rc == 0; l++)
            for (size_t a = 0; a < layer_units(&layers[l]) && u < u1 && rc == 0; a++, u++)
                if (u >= u0)
                    rc = json_layer_part(dst, layers, l, a);
    }
    /* The last part closes "layers" and the answer. */
    return rc || part + 1 < n_parts ? rc : ns_buf_append(dst, "}}", 2);
}

static int encode_json(ns_buf_t *dst, const ns_meta_t *meta, size_t n_meta,
                       const ns_out_layer_t *layers, size_t n_layers)
{
    size_t n = ns_stats_json_parts(layers, n_layers);
    int rc = 0;
    for (size_t p = 0; p < n && rc == 0; p++)
        rc = ns_stats_encode_json_part(dst, meta, n_meta, layers, n_layers, p);
    return rc;
}

/* Only the scalars a PyTorch state_dict holds become tensors, so
 * load_state_dict(strict=False) reports no unexpected keys; the others
 * (NS_FIELD_STEP, NS_FIELD_NUM_SAMPLES, ...) travel as "<layer>.<name>" metadata. */
static int scalar_is_tensor(const char *name)
{
    return strcmp(name, NS_FIELD_NUM_BATCHES_TRACKED) == 0 || strcmp(name, NS_FIELD_COUNT) == 0;
}

/* The header's __metadata__ object: the run's meta, then the layers' scalars
 * that are no tensors. It always comes first (possibly empty), so every
 * tensor entry can start with a comma. */
static int header_metadata(ns_buf_t *h, const ns_meta_t *meta, size_t n_meta,
                           const ns_out_layer_t *layers, size_t n_layers)
{
    int rc;
    if ((rc = ns_buf_append(h, "{\"__metadata__\":{", 17)))
        return rc;
    for (size_t i = 0; i < n_meta; i++) {
        char num[32];
        const char *value = num;
        if (meta[i].kind == NS_META_STRING || meta[i].kind == NS_META_INT_LIST)
            value = meta[i].str ? meta[i].str : "";
        else if (meta[i].kind == NS_META_BOOL)
            value = meta[i].num ? "true" : "false";
        else
            snprintf(num, sizeof(num), "%lld", (long long)meta[i].num);
        if ((i && (rc = ns_buf_append(h, ",", 1))) ||
            (rc = ns__buf_append_json_string(h, meta[i].key)) || (rc = ns_buf_append(h, ":", 1)) ||
            (rc = ns__buf_append_json_string(h, value)))
            return rc;
    }
    for (size_t l = 0; l < n_layers; l++) {
        const ns_out_layer_t *layer = &layers[l];
        for (size_t s = 0; s < layer->n_scalars; s++) {
            char key[2 * NS_NAME_MAX + 32], num[32];
            if (scalar_is_tensor(layer->scalar_names[s]))
                continue;
            snprintf(key, sizeof(key), "%s.%s", layer->name, layer->scalar_names[s]);
            snprintf(num, sizeof(num), "%lld", (long long)layer->scalars[s]);
            if ((h->len > 17 && (rc = ns_buf_append(h, ",", 1))) ||
                (rc = ns__buf_append_json_string(h, key)) || (rc = ns_buf_append(h, ":", 1)) ||
                (rc = ns__buf_append_json_string(h, num)))
                return rc;
        }
    }
    return ns_buf_append(h, "}", 1);
}

/* The header's tensor entries, in data order: each layer's arrays (F32),
 * then its scalars that are tensors (I64). *data_len: the bytes they take. */
static int header_tensors(ns_buf_t *h, const ns_out_layer_t *layers, size_t n_layers,
                          uint64_t *data_len)
{
    uint64_t at = 0;
    int rc;
    for (size_t l = 0; l < n_layers; l++) {
        const ns_out_layer_t *layer = &layers[l];
        uint64_t bytes = (uint64_t)layer->channels * 4;
        if (layer->channels > UINT64_MAX / 4 / NS_OUT_ARRAYS_MAX)
            return NS_ETOOLARGE;
        for (size_t a = 0; a < layer->n_arrays; a++, at += bytes)
            if ((rc = ns__safetensors_header_tensor(h, layer->name, layer->array_names[a], "F32", 0,
                                                    layer->channels, at, at + bytes)))
                return rc;
        for (size_t s = 0; s < layer->n_scalars; s++) {
            if (!scalar_is_tensor(layer->scalar_names[s]))
                continue;
            if ((rc = ns__safetensors_header_tensor(h, layer->name, layer->scalar_names[s], "I64",
                                                    1, 0, at, at + 8)))
                return rc;
            at += 8;
        }
    }
    *data_len = at;
    return 0;
}

/* The tensors' data at p, in the order header_tensors() listed them. */
static void write_tensors(uint8_t *p, const ns_out_layer_t *layers, size_t n_layers)
{
    for (size_t l = 0; l < n_layers; l++) {
        const ns_out_layer_t *layer = &layers[l];
        for (size_t a = 0; a < layer->n_arrays; a++)
            for (size_t c = 0; c < layer->channels; c++, p += 4) {
                float f = ns__f32_narrow(layer->arrays[a][c]);
                uint32_t bits;
                memcpy(&bits, &f, sizeof(bits));
                ns__store_le32(p, bits);
            }
        for (size_t s = 0; s < layer->n_scalars; s++)
            if (scalar_is_tensor(layer->scalar_names[s])) {
                ns__store_le64(p, (uint64_t)layer->scalars[s]);
                p += 8;
            }
    }
}

static int encode_safetensors(ns_buf_t *dst, const ns_meta_t *meta, size_t n_meta,
                              const ns_out_layer_t *layers, size_t n_layers)
{
    ns_buf_t h;
    uint64_t at = 0;
    uint8_t *p;
    int rc;

    ns_buf_init(&h, dst->cap_max);
    /* Sized once for the usual entry (a ResNet-50 answer's header would
     * double its way up in nine reallocations); it still grows if needed. */
    size_t guess = 256 + n_meta * 64;
    for (size_t l = 0; l < n_layers; l++)
        guess += (layers[l].n_arrays + layers[l].n_scalars) * (strlen(layers[l].name) + 96);
    if (h.cap_max != 0 && guess > h.cap_max)
        guess = h.cap_max; /* a header too big fails where it did before */
    if ((rc = ns_buf_reserve(&h, guess)))
        goto fail;
    if ((rc = header_metadata(&h, meta, n_meta, layers, n_layers)) ||
        (rc = header_tensors(&h, layers, n_layers, &at)) ||
        (rc = ns__safetensors_frame(dst, &h, at, &p)))
        goto fail;
    write_tensors(p, layers, n_layers);
    ns_buf_free(&h);
    return 0;
fail:
    ns_buf_free(&h);
    ns_buf_free(dst);
    return rc;
}

int ns_stats_encode(ns_buf_t *dst, ns_format_t format, const ns_meta_t *meta, size_t n_meta,
                    const ns_out_layer_t *layers, size_t n_layers)
{
    if (format == NS_FORMAT_SAFETENSORS)
        return encode_safetensors(dst, meta, n_meta, layers, n_layers);
    return encode_json(dst, meta, n_meta, layers, n_layers);
}
