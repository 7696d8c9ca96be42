/* test_proto_encode.c - statistics responses (JSON and safetensors) read back
 * by independent readers (jansson; a Python/numpy safetensors reader), and
 * error bodies. */
#include <normstat/proto.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "harness.h"

enum { MAX_LAYERS = 6 };

/* A random response: names, channels, arrays with awkward magnitudes. */
typedef struct fixture_s {
    size_t n_layers;
    ns_out_layer_t layers[MAX_LAYERS];
    char names[MAX_LAYERS][NS_NAME_MAX + 1];
    double *arrays[MAX_LAYERS][2];
    ns_meta_t meta[4];
} fixture_t;

static void fixture_make(fixture_t *f, uint64_t *rng)
{
    memset(f, 0, sizeof(*f));
    f->n_layers = 1 + ns_test_rand(rng) % MAX_LAYERS;
    for (size_t l = 0; l < f->n_layers; l++) {
        ns_out_layer_t *L = &f->layers[l];
        /* Not sorted: the encoder keeps the caller's order. */
        snprintf(f->names[l], sizeof(f->names[l]), "layer%zu.%llu.bn", f->n_layers - l,
                 (unsigned long long)(ns_test_rand(rng) % 100));
        L->name = f->names[l];
        L->channels = 1 + ns_test_rand(rng) % 70;
        L->n_arrays = 2;
        L->array_names[0] = "running_mean";
        L->array_names[1] = "running_var";
        for (int a = 0; a < 2; a++) {
            f->arrays[l][a] = malloc(L->channels * sizeof(double));
            for (size_t c = 0; c < L->channels; c++) {
                double v = ns_test_normal(rng) * pow(10.0, (double)(ns_test_rand(rng) % 60) - 30);
                if (ns_test_rand(rng) % 20 == 0)
                    v = (double)(int64_t)(ns_test_rand(rng) % 1000) - 500;
                f->arrays[l][a][c] = v;
            }
            L->arrays[a] = f->arrays[l][a];
        }
        L->n_scalars = 2;
        L->scalar_names[0] = "num_batches_tracked";
        L->scalar_names[1] = "step";
        L->scalars[0] = (int64_t)(ns_test_rand(rng) % 100000);
        L->scalars[1] = l == 0 ? INT64_MAX : -(int64_t)l; /* extremes survive */
    }
    f->meta[0] = (ns_meta_t){.key = "run", .kind = NS_META_STRING, .str = "r\"1\\\n"};
    f->meta[1] = (ns_meta_t){.key = "source", .kind = NS_META_STRING, .str = "ema"};
    f->meta[2] = (ns_meta_t){.key = "step", .kind = NS_META_INT, .num = 1200};
    f->meta[3] = (ns_meta_t){.key = "complete", .kind = NS_META_BOOL, .num = 1};
}

static void fixture_free(fixture_t *f)
{
    for (size_t l = 0; l < f->n_layers; l++)
        for (int a = 0; a < 2; a++)
            free(f->arrays[l][a]);
}

START_TEST(test_json_read_back)
{
    uint64_t rng = ns_test_seed() ^ 0xe1c0de;
    for (int iter = 0; iter < 100; iter++) {
        fixture_t f;
        fixture_make(&f, &rng);
        ns_buf_t buf = {0};
        ck_assert_int_eq(ns_stats_encode(&buf, NS_FORMAT_JSON, f.meta, 4, f.layers, f.n_layers), 0);
        json_error_t jerr;
        json_t *root = json_loadb(buf.data, buf.len, JSON_REJECT_DUPLICATES, &jerr);
        ck_assert_msg(root != NULL, "%s in %s", jerr.text, buf.data);
        /* keys in the given order: meta..., then layers */
        const char *keys[] = {"run", "source", "step", "complete", "layers"};
        size_t k = 0;
        const char *key;
        json_t *v;
        json_object_foreach(root, key, v)
        {
            ck_assert_str_eq(key, keys[k++]);
        }
        ck_assert_uint_eq(k, 5);
        ck_assert_str_eq(json_string_value(json_object_get(root, "run")), "r\"1\\\n");
        ck_assert_int_eq(json_integer_value(json_object_get(root, "step")), 1200);
        ck_assert(json_is_true(json_object_get(root, "complete")));
        json_t *layers = json_object_get(root, "layers");
        ck_assert_uint_eq(json_object_size(layers), f.n_layers);
        size_t l = 0;
        json_object_foreach(layers, key, v)
        {
            const ns_out_layer_t *L = &f.layers[l++];
            ck_assert_str_eq(key, L->name);
            const char *inner[] = {"running_mean", "running_var", "num_batches_tracked", "step"};
            size_t i = 0;
            const char *ikey;
            json_t *iv;
            json_object_foreach(v, ikey, iv)
            {
                ck_assert_str_eq(ikey, inner[i++]);
            }
            for (int a = 0; a < 2; a++) {
                json_t *arr = json_object_get(v, L->array_names[a]);
                ck_assert_uint_eq(json_array_size(arr), L->channels);
                for (size_t c = 0; c < L->channels; c++) {
                    /* The text must round-trip the float32 value exactly. */
                    float want = (float)L->arrays[a][c];
                    float got = (float)json_number_value(json_array_get(arr, c));
                    ck_assert_msg(got == want, "%.9g vs %.9g", (double)got, (double)want);
                }
            }
            ck_assert_int_eq(json_integer_value(json_object_get(v, "num_batches_tracked")),
                             L->scalars[0]);
            ck_assert_int_eq(json_integer_value(json_object_get(v, "step")), L->scalars[1]);
        }
        json_decref(root);
        ns_buf_free(&buf);
        fixture_free(&f);
    }
}
END_TEST

START_TEST(test_json_shapes)
{
    /* No meta, no layers; and a layer with scalars only; non-finite -> null. */
    ns_buf_t buf = {0};
    ck_assert_int_eq(ns_stats_encode(&buf, NS_FORMAT_JSON, NULL, 0, NULL, 0), 0);
    ck_assert_str_eq(buf.data, "{\"layers\":{}}");
    ns_buf_free(&buf);
    double vals[3] = {INFINITY, 0.1, 1e300};
    ns_out_layer_t layer = {
        .name = "l", .channels = 3, .n_arrays = 1, .array_names = {"mean"}, .arrays = {vals}};
    ns_out_layer_t counts = {
        .name = "c", .n_scalars = 1, .scalar_names = {"count"}, .scalars = {-3}};
    ns_out_layer_t both[2] = {layer, counts};
    ck_assert_int_eq(ns_stats_encode(&buf, NS_FORMAT_JSON, NULL, 0, both, 2), 0);
    /* (float)0.1 is written in its shortest round-trip form. */
    ck_assert_str_eq(buf.data,
                     "{\"layers\":{\"l\":{\"mean\":[null,0.1,null]},\"c\":{\"count\":-3}}}");
    ns_buf_free(&buf);
}
END_TEST

/* The parts of the JSON encoding, each encoded alone and in reverse order,
 * appended in order: the bytes of the whole encoding, a valid JSON text
 * (jansson), and for a small answer the text written out by hand. */
static void check_parts(const ns_meta_t *meta, size_t n_meta, const ns_out_layer_t *layers,
                        size_t n_layers, const char *want)
{
    size_t n = ns_stats_json_parts(layers, n_layers);
    ns_buf_t *parts = calloc(n, sizeof(*parts));
    for (size_t p = n; p-- > 0;)
        ck_assert_int_eq(ns_stats_encode_json_part(&parts[p], meta, n_meta, layers, n_layers, p),
                         0);
    ns_buf_t none = {0};
    ck_assert_int_eq(ns_stats_encode_json_part(&none, meta, n_meta, layers, n_layers, n),
                     NS_EINVAL);
    ns_buf_free(&none);
    ns_buf_t joined = {0}, whole = {0};
    for (size_t p = 0; p < n; p++) {
        ck_assert_uint_gt(parts[p].len, 0);
        ck_assert_int_eq(ns_buf_append(&joined, parts[p].data, parts[p].len), 0);
        ns_buf_free(&parts[p]);
    }
    free(parts);
    ck_assert_int_eq(ns_stats_encode(&whole, NS_FORMAT_JSON, meta, n_meta, layers, n_layers), 0);
    ck_assert_uint_eq(joined.len, whole.len);
    ck_assert(memcmp(joined.data, whole.data, whole.len) == 0);
    json_error_t jerr;
    json_t *root = json_loadb(joined.data, joined.len, JSON_REJECT_DUPLICATES, &jerr);
    ck_assert_msg(root != NULL, "%s in %s", jerr.text, joined.data);
    ck_assert_uint_eq(json_object_size(json_object_get(root, "layers")), n_layers);
    json_decref(root);
    if (want != NULL)
        ck_assert_str_eq(joined.data, want);
    ns_buf_free(&joined);
    ns_buf_free(&whole);
}

START_TEST(test_json_parts)
{
    check_parts(NULL, 0, NULL, 0, "{\"layers\":{}}");
    double vals[2] = {0.5, -2};
    ns_meta_t meta[2] = {{.key = "step", .kind = NS_META_INT, .num = 7},
                         {.key = "missing", .kind = NS_META_INT_LIST, .str = "1,3"}};
    ns_out_layer_t l[3] = {
        {.name = "a", .channels = 2, .n_arrays = 2, .array_names = {"mean", "var"},
         .arrays = {vals, vals}, .n_scalars = 1, .scalar_names = {"count"}, .scalars = {9}},
        {.name = "b", .n_scalars = 1, .scalar_names = {"count"}, .scalars = {0}},
        {.name = "c", .channels = 1, .n_arrays = 1, .array_names = {"mean"}, .arrays = {vals}}};
    ck_assert_uint_eq(ns_stats_json_parts(l, 3), 5);
    check_parts(meta, 2, l, 3,
                "{\"step\":7,\"missing\":[1,3],\"layers\":{\"a\":{\"mean\":[0.5,-2],"
                "\"var\":[0.5,-2],\"count\":9},\"b\":{\"count\":0},\"c\":{\"mean\":[0.5]}}}");
    check_parts(meta, 1, &l[1], 1, "{\"step\":7,\"layers\":{\"b\":{\"count\":0}}}");
    /* More arrays than parts: dealt evenly into NS_STATS_JSON_PARTS_MAX. */
    enum { MANY = 700 };
    ns_out_layer_t *many = calloc(MANY, sizeof(*many));
    char(*names)[16] = calloc(MANY, sizeof(*names));
    for (size_t i = 0; i < MANY; i++) {
        snprintf(names[i], sizeof(names[i]), "m%zu", i);
        many[i] = l[i % 3];
        many[i].name = names[i];
    }
    ck_assert_uint_eq(ns_stats_json_parts(many, MANY), NS_STATS_JSON_PARTS_MAX);
    check_parts(meta, 2, many, MANY, NULL);
    ck_assert_uint_eq(ns_stats_json_parts(many, 150), 1 + 150 / 3 * 4); /* one array a part */
    check_parts(meta, 2, many, 150, NULL);
    free(many);
    free(names);
    uint64_t rng = ns_test_seed() ^ 0x9a27c0de;
    for (int iter = 0; iter < 50; iter++) {
        fixture_t f;
        fixture_make(&f, &rng);
        for (size_t i = 0; i < f.n_layers; i++) /* some layers with one array or none */
            f.layers[i].n_arrays = (size_t)(ns_test_rand(&rng) % 3);
        check_parts(f.meta, 4, f.layers, f.n_layers, NULL);
        fixture_free(&f);
    }
}
END_TEST

/* The Python reader: standard library + numpy only, written from the
 * safetensors specification. Prints a JSON summary of the file. */
static const char *py_reader =
    "import json, struct, sys\n"
    "import numpy as np\n"
    "b = open(sys.argv[1], 'rb').read()\n"
    "n = struct.unpack('<Q', b[:8])[0]\n"
    "h = json.loads(b[8:8 + n].decode('utf-8'))\n"
    "data = b[8 + n:]\n"
    "out = {'header_len': n, 'padded': b[8:8 + n].decode() != b[8:8 + n].decode().rstrip(' ') or n "
    "% 8 == 0,\n"
    "       'meta': h.pop('__metadata__', None), 'names': list(h), 'tensors': {}}\n"
    "end = 0\n"
    "for k, v in h.items():\n"
    "    s, e = v['data_offsets']\n"
    "    assert s == end, (k, s, end)\n"
    "    end = e\n"
    "    dt = {'F32': '<f4', 'I64': '<i8'}[v['dtype']]\n"
    "    a = np.frombuffer(data[s:e], dtype=dt).reshape(v['shape'])\n"
    "    out['tensors'][k] = {'dtype': v['dtype'], 'shape': v['shape'],\n"
    "                         'values': [float(x) if v['dtype'] == 'F32' else int(x) for x in "
    "a.reshape(-1)]}\n"
    "assert end == len(data), (end, len(data))\n"
    "print(json.dumps(out))\n";

START_TEST(test_safetensors_read_back)
{
    uint64_t rng = ns_test_seed() ^ 0x5afe;
    for (int iter = 0; iter < 5; iter++) {
        fixture_t f;
        fixture_make(&f, &rng);
        ns_buf_t buf = {0};
        ck_assert_int_eq(
            ns_stats_encode(&buf, NS_FORMAT_SAFETENSORS, f.meta, 4, f.layers, f.n_layers), 0);
        uint64_t hlen = 0;
        for (int i = 7; i >= 0; i--)
            hlen = hlen << 8 | (uint8_t)buf.data[i];
        ck_assert_uint_eq(hlen % 8, 0);

        /* 1. our own checked parser */
        ns_safetensors_t *st = NULL;
        ns_error_detail_t err = {0};
        ck_assert_msg(ns_safetensors_parse(&st, (const uint8_t *)buf.data, buf.len, &err) == 0,
                      "%s", err.message);
        ck_assert_str_eq(ns_safetensors_meta(st, "run"), "r\"1\\\n");
        ck_assert_str_eq(ns_safetensors_meta(st, "step"), "1200");
        ck_assert_str_eq(ns_safetensors_meta(st, "complete"), "true");
        size_t t = 0;
        for (size_t l = 0; l < f.n_layers; l++) {
            const ns_out_layer_t *L = &f.layers[l];
            for (int a = 0; a < 2; a++, t++) {
                const ns_tensor_t *x = ns_safetensors_at(st, t);
                char name[300];
                snprintf(name, sizeof(name), "%s.%s", L->name, L->array_names[a]);
                ck_assert_str_eq(x->name, name);
                ck_assert_int_eq(x->dtype, NS_DTYPE_F32);
                ck_assert_uint_eq(x->ndim, 1);
                ck_assert_uint_eq(x->shape[0], L->channels);
                for (size_t c = 0; c < L->channels; c++) {
                    float v;
                    memcpy(&v, x->data + 4 * c, 4);
                    ck_assert(v == (float)L->arrays[a][c]);
                }
            }
            /* num_batches_tracked is a state_dict tensor ... */
            const ns_tensor_t *x = ns_safetensors_at(st, t++);
            char name[300];
            snprintf(name, sizeof(name), "%s.num_batches_tracked", L->name);
            ck_assert_str_eq(x->name, name);
            ck_assert_int_eq(x->dtype, NS_DTYPE_I64);
            ck_assert_uint_eq(x->ndim, 0);
            int64_t v;
            memcpy(&v, x->data, 8);
            ck_assert_int_eq(v, L->scalars[0]);
            /* ... step is not: it travels as metadata "<layer>.step" */
            char expect[32];
            snprintf(name, sizeof(name), "%s.step", L->name);
            snprintf(expect, sizeof(expect), "%lld", (long long)L->scalars[1]);
            ck_assert_ptr_null(ns_safetensors_find(st, name));
            ck_assert_str_eq(ns_safetensors_meta(st, name), expect);
        }
        ck_assert_uint_eq(ns_safetensors_count(st), t);
        ns_safetensors_free(st);

        /* 2. the independent Python reader */
        char path[] = "/tmp/ns_encode_XXXXXX";
        int fd = mkstemp(path);
        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(write(fd, buf.data, buf.len), (ssize_t)buf.len);
        close(fd);
        char script[] = "/tmp/ns_reader_XXXXXX";
        fd = mkstemp(script);
        ck_assert_int_eq(write(fd, py_reader, strlen(py_reader)), (ssize_t)strlen(py_reader));
        close(fd);
        char cmd[200];
        snprintf(cmd, sizeof(cmd), "/usr/bin/python3 %s %s", script, path);
        FILE *p = popen(cmd, "r");
        ck_assert_ptr_nonnull(p);
        json_error_t jerr;
        json_t *out = json_loadf(p, 0, &jerr);
        ck_assert_int_eq(pclose(p), 0);
        unlink(path);
        unlink(script);
        ck_assert_msg(out != NULL, "python reader output: %s", jerr.text);
        ck_assert_int_eq(json_integer_value(json_object_get(out, "header_len")), (json_int_t)hlen);
        json_t *meta = json_object_get(out, "meta");
        ck_assert_str_eq(json_string_value(json_object_get(meta, "source")), "ema");
        ck_assert_str_eq(json_string_value(json_object_get(meta, "step")), "1200");
        json_t *tensors = json_object_get(out, "tensors");
        for (size_t l = 0; l < f.n_layers; l++) {
            const ns_out_layer_t *L = &f.layers[l];
            for (int a = 0; a < 2; a++) {
                char name[300];
                snprintf(name, sizeof(name), "%s.%s", L->name, L->array_names[a]);
                json_t *vals = json_object_get(json_object_get(tensors, name), "values");
                ck_assert_uint_eq(json_array_size(vals), L->channels);
                for (size_t c = 0; c < L->channels; c++)
                    ck_assert((float)json_real_value(json_array_get(vals, c)) ==
                              (float)L->arrays[a][c]);
            }
            char name[300];
            snprintf(name, sizeof(name), "%s.num_batches_tracked", L->name);
            json_t *x = json_object_get(tensors, name);
            ck_assert_int_eq(json_array_size(json_object_get(x, "shape")), 0);
            ck_assert_int_eq(json_integer_value(json_array_get(json_object_get(x, "values"), 0)),
                             L->scalars[0]);
        }
        json_decref(out);
        ns_buf_free(&buf);
        fixture_free(&f);
    }
}
END_TEST

START_TEST(test_ceiling_and_append)
{
    uint64_t rng = ns_test_seed() ^ 0xce11;
    fixture_t f;
    fixture_make(&f, &rng);
    for (int fmt = 0; fmt < 2; fmt++) {
        ns_buf_t full = {0};
        ck_assert_int_eq(ns_stats_encode(&full, (ns_format_t)fmt, f.meta, 4, f.layers, f.n_layers),
                         0);
        /* exactly the size fits; one byte less is 413 and frees dst */
        ns_buf_t buf;
        ns_buf_init(&buf, full.len);
        ck_assert_int_eq(ns_stats_encode(&buf, (ns_format_t)fmt, f.meta, 4, f.layers, f.n_layers),
                         0);
        ck_assert_uint_eq(buf.len, full.len);
        ck_assert_int_eq(memcmp(buf.data, full.data, full.len), 0);
        ns_buf_free(&buf);
        ns_buf_init(&buf, full.len - 1);
        ck_assert_int_eq(ns_stats_encode(&buf, (ns_format_t)fmt, f.meta, 4, f.layers, f.n_layers),
                         NS_ETOOLARGE);
        ck_assert_ptr_null(buf.data);
        ck_assert_uint_eq(buf.len, 0);
        ns_buf_free(&full);
    }
    fixture_free(&f);
}
END_TEST

START_TEST(test_error_body)
{
    struct {
        int code;
        const char *message, *want_code, *want_message;
    } cases[] = {
        {NS_EINVAL, "layers.l1.mean: expected 64 values, got 63", "bad_request",
         "layers.l1.mean: expected 64 values, got 63"},
        {NS_EVALUE, NULL, "bad_value", "non-finite or negative value"},
        {NS_ETOOLARGE, "", "body_too_large", "request body too large"},
        {NS_ESHUTDOWN, "quote \" backslash \\ newline \n tab \t bell \a", "shutting_down",
         "quote \" backslash \\ newline \n tab \t bell \a"},
        {NS_EINVAL, "caf\xc3\xa9 \xff\xfe bad", "bad_request", "caf?? ?? bad"},
        {12345, "x", "unknown", "x"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        ns_buf_t buf = {0};
        ck_assert_int_eq(ns_error_encode_json(&buf, cases[i].code, cases[i].message), 0);
        json_error_t jerr;
        json_t *root = json_loadb(buf.data, buf.len, JSON_REJECT_DUPLICATES, &jerr);
        ck_assert_msg(root != NULL, "%s", jerr.text);
        ck_assert_uint_eq(json_object_size(root), 1);
        json_t *e = json_object_get(root, "error");
        ck_assert_uint_eq(json_object_size(e), 2);
        ck_assert_str_eq(json_string_value(json_object_get(e, "code")), cases[i].want_code);
        ck_assert_str_eq(json_string_value(json_object_get(e, "message")), cases[i].want_message);
        json_decref(root);
        ns_buf_free(&buf);
    }
    /* Control characters never appear raw in the body. */
    ns_buf_t buf = {0};
    ns_error_encode_json(&buf, NS_EINVAL, "a\nb\x01");
    ck_assert_ptr_null(strchr(buf.data, '\n'));
    ck_assert_ptr_null(strchr(buf.data, '\x01'));
    ns_buf_free(&buf);
    ns_buf_init(&buf, 10);
    ck_assert_int_eq(ns_error_encode_json(&buf, NS_EINVAL, "too long for ten bytes"), NS_ETOOLARGE);
    ck_assert_ptr_null(buf.data);
}
END_TEST

static Suite *proto_encode_suite(void)
{
    Suite *s = suite_create("proto_encode");
    TCase *tc = tcase_create("encode");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_json_read_back);
    tcase_add_test(tc, test_json_shapes);
    tcase_add_test(tc, test_json_parts);
    tcase_add_test(tc, test_safetensors_read_back);
    tcase_add_test(tc, test_ceiling_and_append);
    tcase_add_test(tc, test_error_body);
    suite_add_tcase(s, tc);
    return s;
}

NS_TEST_MAIN(proto_encode_suite)
