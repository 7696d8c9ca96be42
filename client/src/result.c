/* result.c - the decoded answer of /sync and /stats: per-layer arrays and
 * counters, read from JSON (jansson) or safetensors (libnsproto's parser). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "client_internal.h"

struct ns_result_s {
    size_t n_layers, cap;
    ns_result_layer_t *layers; /* names and arrays owned */
    int64_t step;
    int complete;
    int64_t workers;
};

enum { PART_MEAN, PART_VAR, PART_COUNT, PART_BATCHES, PART_STEP, PART_UNKNOWN };

static int part_of(const char *name)
{
    static const struct {
        const char *name;
        int part;
    } parts[] = {{NS_FIELD_RUNNING_MEAN, PART_MEAN},
                 {NS_FIELD_MEAN, PART_MEAN},
                 {NS_FIELD_RUNNING_VAR, PART_VAR},
                 {NS_FIELD_VAR, PART_VAR},
                 {NS_FIELD_COUNT, PART_COUNT},
                 {NS_FIELD_NUM_SAMPLES, PART_COUNT},
                 {NS_FIELD_NUM_BATCHES_TRACKED, PART_BATCHES},
                 {NS_FIELD_NUM_BATCHES, PART_BATCHES},
                 {NS_FIELD_STEP, PART_STEP}};
    for (size_t i = 0; i < sizeof(parts) / sizeof(parts[0]); i++)
        if (strcmp(parts[i].name, name) == 0)
            return parts[i].part;
    return PART_UNKNOWN;
}

static ns_result_t *result_new(void)
{
    ns_result_t *res = calloc(1, sizeof(*res));
    if (res) {
        res->step = -1;
        res->complete = 1;
        res->workers = -1;
    }
    return res;
}

void ns_result_free(ns_result_t *res)
{
    if (res == NULL)
        return;
    for (size_t i = 0; i < res->n_layers; i++) {
        free((char *)res->layers[i].name);
        free((float *)res->layers[i].mean);
        free((float *)res->layers[i].var);
    }
    free(res->layers);
    free(res);
}

/* The layer called name[0..len), created when absent; NULL when out of memory. */
static ns_result_layer_t *layer_get(ns_result_t *res, const char *name, size_t len)
{
    for (size_t i = 0; i < res->n_layers; i++)
        if (strlen(res->layers[i].name) == len && memcmp(res->layers[i].name, name, len) == 0)
            return &res->layers[i];
    if (res->n_layers == res->cap) {
        size_t cap = res->cap ? 2 * res->cap : 8;
        ns_result_layer_t *l = realloc(res->layers, cap * sizeof(*l));
        if (l == NULL)
            return NULL;
        res->layers = l;
        res->cap = cap;
    }
    char *copy = malloc(len + 1);
    if (copy == NULL)
        return NULL;
    memcpy(copy, name, len);
    copy[len] = '\0';
    ns_result_layer_t *l = &res->layers[res->n_layers++];
    *l = (ns_result_layer_t){.name = copy, .count = -1, .num_batches = -1, .step = -1};
    return l;
}

/* Sets one array of a layer; every array of a layer has the same length. */
static int layer_array(ns_result_layer_t *l, int part, float *values, size_t n,
                       ns_error_detail_t *err)
{
    const float **slot = part == PART_MEAN ? &l->mean : &l->var;
    if (*slot != NULL || ((l->mean || l->var) && l->channels != n)) {
        free(values);
        return ns_error_set(err, NS_EBADRESPONSE, l->name, "arrays repeated or of unequal length");
    }
    *slot = values;
    l->channels = n;
    return 0;
}

static void layer_scalar(ns_result_layer_t *l, int part, int64_t v)
{
    if (part == PART_COUNT)
        l->count = v;
    else if (part == PART_BATCHES)
        l->num_batches = v;
    else if (part == PART_STEP)
        l->step = v;
}

static int layer_cmp(const void *a, const void *b)
{
    return strcmp(((const ns_result_layer_t *)a)->name, ((const ns_result_layer_t *)b)->name);
}

static int64_t le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return (int64_t)v;
}

static int decode_safetensors(ns_result_t *res, const uint8_t *src, size_t src_len,
                              ns_error_detail_t *err)
{
    ns_safetensors_t *st = NULL;
    ns_error_detail_t perr = {0};
    int rc;
    if ((rc = ns_safetensors_parse(&st, src, src_len, &perr)))
        return ns_error_set(err, NS_EBADRESPONSE, "", "answer: %s", perr.message);
    const char *m;
    if ((m = ns_safetensors_meta(st, NS_FIELD_STEP)))
        res->step = strtoll(m, NULL, 10);
    if ((m = ns_safetensors_meta(st, NS_FIELD_WORKERS)))
        res->workers = strtoll(m, NULL, 10);
    if ((m = ns_safetensors_meta(st, NS_FIELD_COMPLETE)))
        res->complete = strcmp(m, "false") != 0;
    for (size_t i = 0; i < ns_safetensors_count(st); i++) {
        const ns_tensor_t *t = ns_safetensors_at(st, i);
        const char *dot = strrchr(t->name, '.');
        int part = dot ? part_of(dot + 1) : PART_UNKNOWN;
        if (part == PART_UNKNOWN)
            continue; /* a field this client does not know: ignore */
        ns_result_layer_t *l = layer_get(res, t->name, (size_t)(dot - t->name));
        if (l == NULL) {
            rc = ns_error_set(err, NS_ENOMEM, "", "out of memory");
            goto done;
        }
        if (part == PART_MEAN || part == PART_VAR) {
            size_t n = t->ndim == 1 ? (size_t)t->shape[0] : 0;
            size_t w = t->dtype == NS_DTYPE_F32 ? 4 : t->dtype == NS_DTYPE_F64 ? 8 : 0;
            if (t->ndim != 1 || w == 0) {
                rc = ns_error_set(err, NS_EBADRESPONSE, t->name, "expected F32 or F64 [C]");
                goto done;
            }
            float *v = malloc((n ? n : 1) * sizeof(float));
            if (v == NULL) {
                rc = ns_error_set(err, NS_ENOMEM, "", "out of memory");
                goto done;
            }
            for (size_t c = 0; c < n; c++) {
                if (w == 4) {
                    uint32_t bits = 0;
                    for (int b = 3; b >= 0; b--)
                        bits = (bits << 8) | t->data[4 * c + (size_t)b];
                    memcpy(&v[c], &bits, 4);
                } else {
                    uint64_t bits = (uint64_t)le64(t->data + 8 * c);
                    double d;
                    memcpy(&d, &bits, 8);
                    v[c] = (float)d;
                }
            }
            if ((rc = layer_array(l, part, v, n, err)))
                goto done;
        } else {
            if (t->dtype != NS_DTYPE_I64 || t->nbytes != 8) {
                rc = ns_error_set(err, NS_EBADRESPONSE, t->name, "expected I64 []");
                goto done;
            }
            layer_scalar(l, part, le64(t->data));
        }
    }
    rc = 0;
done:
    ns_safetensors_free(st);
    return rc;
}

static int decode_json(ns_result_t *res, const char *src, size_t src_len, ns_error_detail_t *err)
{
    json_error_t jerr;
    json_t *root = json_loadb(src, src_len, JSON_REJECT_DUPLICATES, &jerr), *layers, *body;
    const char *name;
    int rc = 0;
    if (!json_is_object(root)) {
        json_decref(root);
        return ns_error_set(err, NS_EBADRESPONSE, "", "answer is not a JSON object: %s", jerr.text);
    }
    json_t *v;
    if (json_is_integer(v = json_object_get(root, NS_FIELD_STEP)))
        res->step = json_integer_value(v);
    if (json_is_integer(v = json_object_get(root, NS_FIELD_WORKERS)))
        res->workers = json_integer_value(v);
    if (json_is_boolean(v = json_object_get(root, NS_FIELD_COMPLETE)))
        res->complete = json_is_true(v);
    layers = json_object_get(root, "layers");
    if (!json_is_object(layers)) {
        rc = ns_error_set(err, NS_EBADRESPONSE, "layers", "missing or not an object");
        goto done;
    }
    json_object_foreach(layers, name, body)
    {
        const char *key;
        ns_result_layer_t *l = layer_get(res, name, strlen(name));
        if (l == NULL) {
            rc = ns_error_set(err, NS_ENOMEM, "", "out of memory");
            goto done;
        }
        json_object_foreach(body, key, v)
        {
            int part = part_of(key);
            if (part == PART_MEAN || part == PART_VAR) {
                size_t n = json_array_size(v);
                float *a = malloc((n ? n : 1) * sizeof(float));
                if (a == NULL) {
                    rc = ns_error_set(err, NS_ENOMEM, "", "out of memory");
                    goto done;
                }
                for (size_t c = 0; c < n; c++)
                    a[c] = (float)json_number_value(json_array_get(v, c));
                if (!json_is_array(v)) {
                    free(a);
                    rc = ns_error_set(err, NS_EBADRESPONSE, name, "%s is not an array", key);
                    goto done;
                }
                if ((rc = layer_array(l, part, a, n, err)))
                    goto done;
            } else if (part != PART_UNKNOWN && json_is_integer(v)) {
                layer_scalar(l, part, json_integer_value(v));
            }
        }
    }
done:
    json_decref(root);
    return rc;
}

int ns_result_decode(ns_result_t **dst, ns_format_t format, const void *src, size_t src_len,
                     ns_error_detail_t *err)
{
    ns_result_t *res = result_new();
    int rc;
    *dst = NULL;
    if (res == NULL)
        return ns_error_set(err, NS_ENOMEM, "", "out of memory");
    if (format == NS_FORMAT_SAFETENSORS)
        rc = decode_safetensors(res, src, src_len, err);
    else
        rc = decode_json(res, src, src_len, err);
    if (rc) {
        ns_result_free(res);
        return rc;
    }
    qsort(res->layers, res->n_layers, sizeof(*res->layers), layer_cmp);
    *dst = res;
    return 0;
}

size_t ns_result_count(const ns_result_t *res)
{
    return res->n_layers;
}

const ns_result_layer_t *ns_result_at(const ns_result_t *res, size_t i)
{
    return i < res->n_layers ? &res->layers[i] : NULL;
}

const ns_result_layer_t *ns_result_find(const ns_result_t *res, const char *name)
{
    ns_result_layer_t key = {.name = name};
    return bsearch(&key, res->layers, res->n_layers, sizeof(key), layer_cmp);
}

int64_t ns_result_step(const ns_result_t *res)
{
    return res->step;
}

int ns_result_complete(const ns_result_t *res)
{
    return res->complete;
}

int64_t ns_result_workers(const ns_result_t *res)
{
    return res->workers;
}

long ns_result_copy(const ns_result_t *res, const char *name, float *mean_dst, float *var_dst,
                    size_t dst_cap)
{
    const ns_result_layer_t *l = ns_result_find(res, name);
    if (l == NULL)
        return NS_ENOTFOUND;
    if (dst_cap < l->channels)
        return NS_EINVAL;
    if (mean_dst && l->mean)
        memcpy(mean_dst, l->mean, l->channels * sizeof(float));
    if (var_dst && l->var)
        memcpy(var_dst, l->var, l->channels * sizeof(float));
    return (long)l->channels;
}

long ns_result_copy_f64(const ns_result_t *res, const char *name, double *mean_dst, double *var_dst,
                        size_t dst_cap)
{
    const ns_result_layer_t *l = ns_result_find(res, name);
    if (l == NULL)
        return NS_ENOTFOUND;
    if (dst_cap < l->channels)
        return NS_EINVAL;
    for (size_t c = 0; c < l->channels; c++) {
        if (mean_dst && l->mean)
            mean_dst[c] = l->mean[c];
        if (var_dst && l->var)
            var_dst[c] = l->var[c];
    }
    return (long)l->channels;
}
