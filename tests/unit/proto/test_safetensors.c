/* test_safetensors.c - the safetensors parser on hostile input: limits,
 * accessors, a file written by an independent writer, and a seeded mutation
 * fuzz loop over the parser and the report decoders (run it under ASan). */
#include <normstat/proto.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"

/* The jansson decoder, to check the fast JSON path against (library-internal). */
int ns__report_decode_json_full(ns_report_t **dst, const char *src, size_t src_len,
                                ns_error_detail_t *err);
int ns__report_decode_json_fast(ns_report_t **dst, const char *src, size_t src_len,
                                ns_error_detail_t *err);

/* The safetensors parser's two paths (library-internal): the scanner alone
 * (nonzero: it leaves the input to jansson) and the jansson path alone. */
int ns__safetensors_parse_fast(ns_safetensors_t **dst, const uint8_t *src, size_t src_len);
const char *ns__safetensors_dtype_name(const ns_safetensors_t *st, const ns_tensor_t *t);
int ns__safetensors_parse_full(ns_safetensors_t **dst, const uint8_t *src, size_t src_len,
                               ns_error_detail_t *err);

/* Bitwise equality of two decoded reports. */
static int reports_equal(const ns_report_t *a, const ns_report_t *b)
{
    if (a->step != b->step || a->worker != b->worker || strcmp(a->domain, b->domain) != 0 ||
        a->unbiased != b->unbiased || a->update != b->update || a->scope != b->scope ||
        a->world_size != b->world_size || a->n_layers != b->n_layers)
        return 0;
    for (size_t i = 0; i < a->n_layers; i++) {
        const ns_layer_report_t *x = &a->layers[i], *y = &b->layers[i];
        if (strcmp(x->name, y->name) != 0 || x->count != y->count || x->channels != y->channels ||
            !x->mean != !y->mean || !x->var != !y->var)
            return 0;
        if (x->mean && (memcmp(x->mean, y->mean, x->channels * sizeof(float)) != 0 ||
                        memcmp(x->var, y->var, x->channels * sizeof(float)) != 0))
            return 0;
    }
    return 1;
}

/* Decode with the public entry (fast path first) and with jansson only; the
 * outcomes must be identical: same code, same message, same report bits. */
static int decode_both(const char *src, size_t len)
{
    ns_report_t *a = NULL, *b = NULL;
    ns_error_detail_t ea = {0}, eb = {0};
    int ra = ns_report_decode_json(&a, src, len, &ea);
    int rb = ns__report_decode_json_full(&b, src, len, &eb);
    ck_assert_msg(ra == rb, "fast %d (%s) vs jansson %d (%s) on %.*s", ra, ea.message, rb,
                  eb.message, (int)(len > 300 ? 300 : len), src);
    if (ra == 0)
        ck_assert_msg(reports_equal(a, b), "reports differ on %.*s", (int)(len > 300 ? 300 : len),
                      src);
    else
        ck_assert_str_eq(ea.message, eb.message);
    ns_report_free(a);
    ns_report_free(b);
    return ra;
}

/* An independent little writer: header text given verbatim, data appended. */
static uint8_t *make_file(const char *header, const void *data, size_t data_len, size_t *len)
{
    size_t h = strlen(header);
    uint8_t *p = malloc(8 + h + data_len);
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)((uint64_t)h >> (8 * i));
    memcpy(p + 8, header, h);
    if (data_len)
        memcpy(p + 8 + h, data, data_len);
    *len = 8 + h + data_len;
    return p;
}

static int parse_text(const char *header, const void *data, size_t data_len, ns_error_detail_t *err)
{
    size_t len;
    uint8_t *file = make_file(header, data, data_len, &len);
    ns_safetensors_t *st = (ns_safetensors_t *)&st;
    int rc = ns_safetensors_parse(&st, file, len, err);
    if (rc)
        ck_assert_ptr_null(st);
    ns_safetensors_free(st);
    free(file);
    return rc;
}

/* A report of one layer "a" (3 channels, count 5) whose data area starts
 * at a multiple of 8 in the file; 'meta' is the __metadata__ object. */
static uint8_t *borrow_file(const char *meta, const char *dtype, size_t *len)
{
    static const float f32[6] = {1.5f, -2.25f, 3.0f, 0.5f, 0.25f, 4.0f};
    static const double f64[6] = {1.5, -2.25, 3.0, 0.5, 0.25, 4.0};
    const int64_t count = 5;
    int wide = strcmp(dtype, "F64") == 0;
    size_t w = wide ? 8 : 4;
    uint8_t data[6 * 8 + 8];
    memcpy(data, wide ? (const void *)f64 : (const void *)f32, 6 * w);
    memcpy(data + 6 * w, &count, 8);
    char header[512];
    int n = snprintf(header, sizeof(header),
                     "{\"__metadata__\":%s,\"a.mean\":{\"dtype\":\"%s\",\"shape\":[3],"
                     "\"data_offsets\":[0,%zu]},\"a.var\":{\"dtype\":\"%s\",\"shape\":[3],"
                     "\"data_offsets\":[%zu,%zu]},\"a.count\":{\"dtype\":\"I64\",\"shape\":[],"
                     "\"data_offsets\":[%zu,%zu]}}",
                     meta, dtype, 3 * w, dtype, 3 * w, 6 * w, 6 * w, 6 * w + 8);
    while (n % 8 != 0)
        header[n++] = ' '; /* padding, as writers align the data area */
    header[n] = '\0';
    return make_file(header, data, 6 * w + 8, len);
}

/* Decode 'file' placed 'shift' bytes into a buffer; the layer's arrays are
 * checked against the values written and against where they lie. */
static void check_borrow(const uint8_t *file, size_t len, size_t shift, int unbiased,
                         int expect_borrowed)
{
    uint8_t *buf = malloc(len + 8);
    memcpy(buf + shift, file, len);
    ns_report_t *r = NULL;
    ns_error_detail_t err = {0};
    ck_assert_int_eq(ns_report_decode_safetensors_borrowed(&r, buf + shift, len, &err), 0);
    ck_assert_uint_eq(r->n_layers, 1);
    const ns_layer_report_t *l = &r->layers[0];
    ck_assert_uint_eq(l->channels, 3);
    ck_assert_uint_eq(l->count, 5);
    ck_assert_int_eq(l->borrowed, expect_borrowed);
    int inside = (const uint8_t *)l->mean >= buf && (const uint8_t *)l->mean < buf + len + 8;
    ck_assert_int_eq(inside, expect_borrowed);
    const float mean[3] = {1.5f, -2.25f, 3.0f};
    /* Unbiased: var * (n-1)/n with n = 5, evaluated here in double. */
    const double k = unbiased ? 4.0 / 5.0 : 1.0;
    const float var[3] = {(float)(0.5 * k), (float)(0.25 * k), (float)(4.0 * k)};
    ck_assert(memcmp(l->mean, mean, sizeof(mean)) == 0);
    ck_assert(memcmp(l->var, var, sizeof(var)) == 0);
    ns_report_free(r); /* borrowed arrays are left to the buffer */
    free(buf);
}

START_TEST(test_borrowed_arrays)
{
    size_t len;
    uint8_t *f = borrow_file("{\"step\":\"1\",\"worker\":\"0\"}", "F32", &len);
    check_borrow(f, len, 0, 0, 1); /* aligned: read in place */
    check_borrow(f, len, 1, 0, 0); /* misaligned: copied */
    check_borrow(f, len, 2, 0, 0);
    check_borrow(f, len, 4, 0, 1);
    free(f);
    f = borrow_file("{\"step\":\"1\",\"worker\":\"0\",\"unbiased\":\"true\"}", "F32", &len);
    check_borrow(f, len, 0, 1, 0); /* converted: a copy */
    free(f);
    f = borrow_file("{\"step\":\"1\",\"worker\":\"0\"}", "F64", &len);
    check_borrow(f, len, 0, 0, 0); /* narrowed: a copy */
    free(f);
}
END_TEST

START_TEST(test_accessors)
{
    /* Header keys out of data order; tensors come back sorted by offset. */
    const char *header = "{\"b\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[12,20]},"
                         "\"__metadata__\":{\"k\":\"v\",\"empty\":\"\"},"
                         "\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,12]},"
                         "\"z\":{\"dtype\":\"BF16\",\"shape\":[0,7],\"data_offsets\":[20,20]},"
                         "\"h\":{\"dtype\":\"F16\",\"shape\":[1,1,1,2],\"data_offsets\":[20,24]}}";
    uint8_t data[24];
    for (size_t i = 0; i < sizeof(data); i++)
        data[i] = (uint8_t)i;
    size_t len;
    uint8_t *file = make_file(header, data, sizeof(data), &len);
    ns_safetensors_t *st = NULL;
    ns_error_detail_t err = {0};
    ck_assert_int_eq(ns_safetensors_parse(&st, file, len, &err), 0);
    ck_assert_uint_eq(ns_safetensors_count(st), 4);
    const char *order[] = {"a", "b", "z", "h"};
    const size_t offs[] = {0, 12, 20, 20}, sizes[] = {12, 8, 0, 4};
    for (size_t i = 0; i < 4; i++) {
        const ns_tensor_t *t = ns_safetensors_at(st, i);
        ck_assert_str_eq(t->name, order[i]);
        ck_assert_ptr_eq(t->data, file + 8 + strlen(header) + offs[i]);
        ck_assert_uint_eq(t->nbytes, sizes[i]);
        ck_assert_ptr_eq(ns_safetensors_find(st, order[i]), t);
    }
    ck_assert_ptr_null(ns_safetensors_at(st, 4));
    ck_assert_ptr_null(ns_safetensors_find(st, "nope"));
    const ns_tensor_t *a = ns_safetensors_find(st, "a");
    ck_assert_int_eq(a->dtype, NS_DTYPE_F32);
    ck_assert_uint_eq(a->ndim, 1);
    ck_assert_uint_eq(a->shape[0], 3);
    ck_assert_int_eq(ns_safetensors_find(st, "b")->dtype, NS_DTYPE_I64);
    ck_assert_uint_eq(ns_safetensors_find(st, "b")->ndim, 0);
    ck_assert_int_eq(ns_safetensors_find(st, "z")->dtype, NS_DTYPE_OTHER);
    ck_assert_uint_eq(ns_safetensors_find(st, "h")->ndim, 4);
    ck_assert_str_eq(ns_safetensors_meta(st, "k"), "v");
    ck_assert_str_eq(ns_safetensors_meta(st, "empty"), "");
    ck_assert_ptr_null(ns_safetensors_meta(st, "missing"));
    ns_safetensors_free(st);
    free(file);
    ns_safetensors_free(NULL);
    ck_assert_uint_eq(ns_safetensors_count(NULL), 0);
}
END_TEST

START_TEST(test_dtype_sizes)
{
    /* Sizes from the safetensors specification, one tensor of 3 elements each. */
    static const struct {
        const char *dtype;
        size_t size;
    } table[] = {{"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E5M2", 1}, {"F8_E4M3", 1},
                 {"I16", 2},  {"U16", 2}, {"F16", 2}, {"BF16", 2},    {"I32", 4},
                 {"U32", 4},  {"F32", 4}, {"F64", 8}, {"I64", 8},     {"U64", 8}};
    uint8_t data[24] = {0};
    char header[200];
    for (size_t i = 0; i < sizeof(table) / sizeof(table[0]); i++) {
        size_t n = 3 * table[i].size;
        snprintf(header, sizeof(header),
                 "{\"t\":{\"dtype\":\"%s\",\"shape\":[3],\"data_offsets\":[0,%zu]}}",
                 table[i].dtype, n);
        ck_assert_msg(parse_text(header, data, n, NULL) == 0, "%s", table[i].dtype);
        /* One byte short of the right size is refused. */
        snprintf(header, sizeof(header),
                 "{\"t\":{\"dtype\":\"%s\",\"shape\":[3],\"data_offsets\":[0,%zu]}}",
                 table[i].dtype, n - 1);
        ck_assert_int_eq(parse_text(header, data, n - 1, NULL), NS_EINVAL);
    }
    ck_assert_int_eq(parse_text("{\"t\":{\"dtype\":\"f32\",\"shape\":[],\"data_offsets\":[0,4]}}",
                                data, 4, NULL),
                     NS_EINVAL);
    ck_assert_int_eq(
        parse_text("{\"t\":{\"dtype\":3,\"shape\":[],\"data_offsets\":[0,4]}}", data, 4, NULL),
        NS_EINVAL);
}
END_TEST

START_TEST(test_limits)
{
    ns_error_detail_t err = {0};
    ns_safetensors_t *st = (ns_safetensors_t *)&st;
    uint8_t small[8] = {0};
    /* shorter than 8 bytes, NULL */
    ck_assert_int_eq(ns_safetensors_parse(&st, small, 7, &err), NS_EINVAL);
    ck_assert_ptr_null(st);
    ck_assert_int_eq(ns_safetensors_parse(&st, NULL, 0, NULL), NS_EINVAL);
    /* header length 0: empty is not JSON */
    ck_assert_int_eq(ns_safetensors_parse(&st, small, 8, NULL), NS_EINVAL);
    /* the smallest valid file: "{}" */
    ck_assert_int_eq(parse_text("{}", NULL, 0, NULL), 0);
    ck_assert_int_eq(parse_text("{}      ", NULL, 0, NULL), 0);
    ck_assert_int_eq(parse_text("{} x", NULL, 0, NULL), NS_EINVAL);
    ck_assert_int_eq(parse_text("\"{}\"", NULL, 0, NULL), NS_EINVAL);
    /* Header length of 2^64-1 must not wrap around. */
    uint8_t huge[16];
    memset(huge, 0xff, 8);
    memcpy(huge + 8, "{}      ", 8);
    ck_assert_int_eq(ns_safetensors_parse(&st, huge, sizeof(huge), NULL), NS_EINVAL);
    /* The 100 MB header ceiling: a buffer that holds 100,000,001 header bytes. */
    size_t n = 8 + 100000001u;
    uint8_t *big = calloc(1, n);
    ck_assert_ptr_nonnull(big);
    uint64_t h = 100000001u;
    for (int i = 0; i < 8; i++)
        big[i] = (uint8_t)(h >> (8 * i));
    ns_error_detail_t e2 = {0};
    ck_assert_int_eq(ns_safetensors_parse(&st, big, n, &e2), NS_EINVAL);
    ck_assert_str_eq(e2.message, "safetensors: header length 100000001 exceeds 100000000");
    free(big);
    /* Offsets near 2^63 and a shape product that wraps 64 bits. */
    ck_assert_int_eq(parse_text("{\"t\":{\"dtype\":\"U8\",\"shape\":[1],"
                                "\"data_offsets\":[9223372036854775807,9223372036854775807]}}",
                                NULL, 0, NULL),
                     NS_EINVAL);
    ck_assert_int_eq(parse_text("{\"t\":{\"dtype\":\"I64\",\"shape\":[2305843009213693952],"
                                "\"data_offsets\":[0,0]}}",
                                NULL, 0, NULL),
                     NS_EINVAL);
    ck_assert_int_eq(
        parse_text("{\"t\":{\"dtype\":\"U8\",\"shape\":[],\"data_offsets\":[0]}}", "x", 1, NULL),
        NS_EINVAL);
    ck_assert_int_eq(parse_text("{\"t\":{\"dtype\":\"U8\",\"shape\":[],\"data_offsets\":[0,1,1]}}",
                                "x", 1, NULL),
                     NS_EINVAL);
    ck_assert_int_eq(parse_text("{\"t\":{\"dtype\":\"U8\",\"shape\":[1.0],\"data_offsets\":[0,1]}}",
                                "x", 1, NULL),
                     NS_EINVAL);
    ck_assert_int_eq(
        parse_text("{\"t\":{\"dtype\":\"U8\",\"shape\":[],\"data_offsets\":[0,1]}}", "x", 1, NULL),
        0);
    ck_assert_int_eq(parse_text("{\"t\":{\"shape\":[],\"data_offsets\":[0,1]}}", "x", 1, NULL),
                     NS_EINVAL);
    ck_assert_int_eq(parse_text("{\"t\":[1]}", NULL, 0, NULL), NS_EINVAL);
    /* Two zero-sized tensors at one offset tile nothing and overlap nothing. */
    ck_assert_int_eq(parse_text("{\"a\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[1,1]},"
                                "\"b\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[1,1]},"
                                "\"c\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}",
                                "x", 1, NULL),
                     0);
}
END_TEST

/* ---------------------------------------------------------------- fuzz */

static uint8_t *load(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "cannot open %s (run from the repository root)", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *p = malloc((size_t)n);
    ck_assert_uint_eq(fread(p, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    *len = (size_t)n;
    return p;
}

/* One random edit: flip bits, overwrite with a "dangerous" byte, insert or
 * delete a byte, truncate, or rewrite the header length. */
static size_t mutate(uint8_t *buf, size_t len, size_t cap, uint64_t *rng)
{
    static const char hot[] = "0123456789[]{},:\"-.eE \\\xff";
    size_t at = len ? ns_test_rand(rng) % len : 0;
    switch (ns_test_rand(rng) % 7) {
    case 0:
        if (len)
            buf[at] ^= (uint8_t)(1u << (ns_test_rand(rng) % 8));
        break;
    case 1:
        if (len)
            buf[at] = (uint8_t)hot[ns_test_rand(rng) % (sizeof(hot) - 1)];
        break;
    case 2:
        if (len < cap) {
            memmove(buf + at + 1, buf + at, len - at);
            buf[at] = (uint8_t)hot[ns_test_rand(rng) % (sizeof(hot) - 1)];
            len++;
        }
        break;
    case 3:
        if (len) {
            memmove(buf + at, buf + at + 1, len - at - 1);
            len--;
        }
        break;
    case 4:
        len = at;
        break;
    case 5:
        if (len >= 8) {
            uint64_t h = 0;
            for (int i = 7; i >= 0; i--)
                h = h << 8 | buf[i];
            h += (uint64_t)(int64_t)((int)(ns_test_rand(rng) % 17) - 8);
            if (ns_test_rand(rng) % 8 == 0)
                h = ns_test_rand(rng);
            for (int i = 0; i < 8; i++)
                buf[i] = (uint8_t)(h >> (8 * i));
        }
        break;
    default:
        if (len > 8) /* a digit inside the header: offsets and shapes */
            for (size_t i = 8 + at % (len - 8); i < len; i++)
                if (buf[i] >= '0' && buf[i] <= '9') {
                    buf[i] = (uint8_t)('0' + ns_test_rand(rng) % 10);
                    break;
                }
        break;
    }
    return len;
}

/* Every accepted file must describe tensors inside the input. */
static void check_accepted(const ns_safetensors_t *st, const uint8_t *src, size_t len)
{
    size_t n = ns_safetensors_count(st);
    const uint8_t *prev_end = NULL;
    for (size_t i = 0; i < n; i++) {
        const ns_tensor_t *t = ns_safetensors_at(st, i);
        ck_assert(t->data >= src && t->data + t->nbytes <= src + len);
        ck_assert(prev_end == NULL || t->data >= prev_end);
        prev_end = t->data + t->nbytes;
        ck_assert_uint_le(t->ndim, 4);
    }
}

START_TEST(test_fuzz)
{
    static const char *seeds[] = {"tests/proto/valid/st_all_metadata/request.safetensors",
                                  "tests/proto/valid/st_minimal/request.safetensors"};
    uint64_t rng = ns_test_seed() ^ 0x5afe7e50u;
    size_t accepted = 0, total = 0;
    /* One scratch for every input: what it keeps never shows. */
    ns_report_scratch_t *scratch = ns_report_scratch_new();
    ck_assert_ptr_nonnull(scratch);
    for (size_t s = 0; s < 2; s++) {
        size_t orig_len;
        uint8_t *orig = load(seeds[s], &orig_len);
        size_t cap = orig_len + 64;
        uint8_t *work = malloc(cap);
        for (int iter = 0; iter < 6000; iter++) {
            memcpy(work, orig, orig_len);
            size_t len = orig_len;
            int edits = 1 + (int)(ns_test_rand(&rng) % 4);
            for (int e = 0; e < edits; e++)
                len = mutate(work, len, cap, &rng);
            /* An exact-size copy, so ASan sees any read past the end. */
            uint8_t *exact = malloc(len ? len : 1);
            memcpy(exact, work, len);
            ns_safetensors_t *st = NULL;
            ns_error_detail_t err = {0};
            int rc = ns_safetensors_parse(&st, exact, len, &err);
            ck_assert(rc == 0 || (rc == NS_EINVAL && err.code == NS_EINVAL && st == NULL));
            if (rc == 0) {
                accepted++;
                check_accepted(st, exact, len);
            }
            ns_safetensors_free(st);
            ns_report_t *r = NULL;
            ns_error_detail_t err2 = {0};
            rc = ns_report_decode_safetensors(&r, exact, len, &err2);
            ck_assert(rc == 0 || rc == NS_EINVAL || rc == NS_EVALUE);
            ck_assert(rc == 0 ? r != NULL : (r == NULL && err2.code == rc && err2.message[0]));
            /* Reading in place decides nothing differently. */
            ns_report_t *b = NULL;
            ns_error_detail_t err3 = {0};
            ck_assert_int_eq(ns_report_decode_safetensors_borrowed(&b, exact, len, &err3), rc);
            if (rc == 0)
                ck_assert(reports_equal(r, b));
            else
                ck_assert_str_eq(err3.message, err2.message);
            ns_report_t *k = NULL;
            ns_error_detail_t err4 = {0};
            ck_assert_int_eq(ns_report_decode_safetensors_into(scratch, &k, exact, len, &err4), rc);
            if (rc == 0)
                ck_assert(reports_equal(r, k));
            else
                ck_assert(k == NULL && strcmp(err4.message, err2.message) == 0);
            ns_report_free(k);
            ns_report_free(b);
            ns_report_free(r);
            free(exact);
            total++;
        }
        free(work);
        free(orig);
    }
    ns_report_scratch_free(scratch);
    fprintf(stderr, "safetensors fuzz: %zu inputs, %zu parsed\n", total, accepted);
    ck_assert_uint_gt(accepted, 0);
}
END_TEST

START_TEST(test_fuzz_json_report)
{
    const char *base = "{\"step\":12,\"worker\":3,\"domain\":\"d\",\"unbiased\":true,"
                       "\"update\":[\"ema\",\"precise\"],\"scope\":\"domain\",\"world_size\":4,"
                       "\"layers\":{\"a.b\":{\"count\":5,\"mean\":[1,2.5,-3e-3],\"var\":[0,1,2]},"
                       "\"c\":{\"count\":0}}}";
    size_t base_len = strlen(base), cap = base_len + 64;
    uint64_t rng = ns_test_seed() ^ 0x15017u;
    uint8_t *work = malloc(cap);
    size_t accepted = 0;
    for (int iter = 0; iter < 10000; iter++) {
        memcpy(work, base, base_len);
        size_t len = base_len;
        int edits = 1 + (int)(ns_test_rand(&rng) % 3);
        for (int e = 0; e < edits; e++) {
            size_t before = len;
            len = mutate(work, len, cap, &rng);
            if (len < before / 2) /* keep most truncations short of the start */
                len = before - 1;
        }
        char *exact = malloc(len ? len : 1);
        memcpy(exact, work, len);
        ns_report_t *r = NULL;
        ns_error_detail_t err = {0};
        int rc = ns_report_decode_json(&r, exact, len, &err);
        ck_assert(rc == 0 || rc == NS_EINVAL || rc == NS_EVALUE);
        ck_assert(rc == 0 ? r != NULL : (r == NULL && err.code == rc && err.message[0]));
        accepted += rc == 0;
        ns_report_free(r);
        decode_both(exact, len);
        free(exact);
    }
    free(work);
    fprintf(stderr, "json report fuzz: 10000 inputs, %zu accepted\n", accepted);
}
END_TEST

/* Numbers in many spellings: the fast path's conversion must give the bits
 * jansson's (strtod / strtoll) gives. */
/* Field-by-field equality of two parses of the same buffer. */
static void check_same_parse(const ns_safetensors_t *a, const ns_safetensors_t *b, const char *what)
{
    static const char *const keys[] = {"step",   "worker", "domain", "unbiased", "update", "scope",
                                       "world_size", "format", "k", "empty", "x", "",
                                       "k0", "k3", "k15", "k16", "k19"};
    ck_assert_uint_eq(ns_safetensors_count(a), ns_safetensors_count(b));
    for (size_t i = 0; i < ns_safetensors_count(a); i++) {
        const ns_tensor_t *x = ns_safetensors_at(a, i), *y = ns_safetensors_at(b, i);
        ck_assert_msg(strcmp(x->name, y->name) == 0 && x->dtype == y->dtype &&
                          x->ndim == y->ndim && x->data == y->data && x->nbytes == y->nbytes &&
                          memcmp(x->shape, y->shape, sizeof(x->shape)) == 0,
                      "tensor %zu differs on %s", i, what);
        /* The spelling error messages quote (the scanner keeps no tree). */
        const char *dx = ns__safetensors_dtype_name(a, x), *dy = ns__safetensors_dtype_name(b, y);
        ck_assert_msg(strcmp(dx, dy) == 0, "dtype %s vs %s of tensor %zu on %s", dx, dy, i, what);
    }
    for (size_t k = 0; k < sizeof(keys) / sizeof(keys[0]); k++) {
        const char *x = ns_safetensors_meta(a, keys[k]), *y = ns_safetensors_meta(b, keys[k]);
        ck_assert_msg(!x == !y && (!x || strcmp(x, y) == 0), "metadata %s differs on %s", keys[k],
                      what);
    }
}

/* Both paths and the public entry on one buffer: the scanner, when it
 * accepts, gives exactly the jansson result; the public entry always gives
 * the jansson outcome (code, field, message). @return whether the scanner
 * accepted. */
static int parse_three(const uint8_t *file, size_t len, const char *what, int *valid)
{
    uint8_t *exact = malloc(len ? len : 1); /* exact size, for ASan */
    memcpy(exact, file, len);
    ns_safetensors_t *fast = NULL, *full = NULL, *pub = NULL;
    ns_error_detail_t efull = {0}, epub = {0};
    int rfast = ns__safetensors_parse_fast(&fast, exact, len);
    int rfull = ns__safetensors_parse_full(&full, exact, len, &efull);
    int rpub = ns_safetensors_parse(&pub, exact, len, &epub);
    ck_assert_msg(rfast == 0 ? fast != NULL : fast == NULL, "scanner result on %s", what);
    if (rfast == 0)
        ck_assert_msg(rfull == 0, "scanner accepts, jansson refuses (%s) on %s", efull.message,
                      what);
    ck_assert_int_eq(rpub, rfull);
    if (rfull == 0) {
        check_same_parse(pub, full, what);
        if (fast)
            check_same_parse(fast, full, what);
    } else {
        ck_assert_int_eq(epub.code, efull.code);
        ck_assert_str_eq(epub.field, efull.field);
        ck_assert_str_eq(epub.message, efull.message);
    }
    *valid = rfull == 0;
    ns_safetensors_free(fast);
    ns_safetensors_free(full);
    ns_safetensors_free(pub);
    free(exact);
    return rfast == 0;
}

/* A header edit that keeps the text JSON-like: whitespace, structural
 * characters, digits, quotes, escapes, copied or removed stretches. */
static size_t mutate_header(char *h, size_t len, size_t cap, uint64_t *rng)
{
    static const char alphabet[] = " \t\n\r{}[],:\"0123456789-.eE\\uFI64_xa";
    size_t at = len ? (size_t)(ns_test_rand(rng) % len) : 0;
    switch (ns_test_rand(rng) % 6) {
    case 0: /* insert whitespace */
    case 1: /* insert a character of the grammar */
        if (len < cap) {
            memmove(h + at + 1, h + at, len - at);
            h[at] = ns_test_rand(rng) % 6 == 0 ? (char)(ns_test_rand(rng) % 256)
                    : ns_test_rand(rng) % 2   ? " \t\n\r"[ns_test_rand(rng) % 4]
                                              : alphabet[ns_test_rand(rng) % (sizeof(alphabet) - 1)];
            len++;
        }
        break;
    case 2: /* replace */
        if (len)
            h[at] = alphabet[ns_test_rand(rng) % (sizeof(alphabet) - 1)];
        break;
    case 3: /* delete a short stretch */
        if (len) {
            size_t n = 1 + (size_t)(ns_test_rand(rng) % 4);
            if (n > len - at)
                n = len - at;
            memmove(h + at, h + at + n, len - at - n);
            len -= n;
        }
        break;
    case 4: { /* copy a stretch elsewhere (duplicate keys, entries) */
        size_t from = len ? (size_t)(ns_test_rand(rng) % len) : 0;
        size_t n = 1 + (size_t)(ns_test_rand(rng) % 80);
        if (n > len - from)
            n = len - from;
        if (len + n <= cap) {
            char tmp[80];
            memcpy(tmp, h + from, n);
            memmove(h + at + n, h + at, len - at);
            memcpy(h + at, tmp, n);
            len += n;
        }
        break;
    }
    default: /* bump a digit (offsets, shapes) */
        for (size_t i = 0; i < len; i++) {
            size_t j = (at + i) % len;
            if (h[j] >= '0' && h[j] <= '9') {
                h[j] = (char)('0' + (h[j] - '0' + 1 + (int)(ns_test_rand(rng) % 9)) % 10);
                break;
            }
        }
        break;
    }
    return len;
}

/* Metadata text beyond what the scanner keeps without a tree (1 KiB): a
 * 1,500-byte value comes back whole, with the members around it. */
START_TEST(test_long_metadata)
{
    enum { LONG = 1500 };
    char value[LONG + 1], header[LONG + 256];
    memset(value, 'v', LONG);
    value[LONG] = '\0';
    snprintf(header, sizeof(header),
             "{\"x\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
             "\"__metadata__\":{\"k\":\"1\",\"long\":\"%s\",\"k19\":\"2\"}}",
             value);
    const uint8_t data[4] = {1, 2, 3, 4};
    size_t len;
    uint8_t *file = make_file(header, data, sizeof(data), &len);
    ns_safetensors_t *fast = NULL;
    ck_assert_int_eq(ns__safetensors_parse_fast(&fast, file, len), 0);
    ck_assert_str_eq(ns_safetensors_meta(fast, "long"), value);
    ck_assert_str_eq(ns_safetensors_meta(fast, "k"), "1");
    ck_assert_str_eq(ns_safetensors_meta(fast, "k19"), "2");
    ck_assert_ptr_null(ns_safetensors_meta(fast, "missing"));
    ns_safetensors_free(fast);
    free(file);
}
END_TEST

START_TEST(test_scanner_vs_jansson)
{
    /* Valid files: the checked-in cases, the accessor header, and spellings
     * that are valid JSON but unusual (whitespace everywhere, field order,
     * escapes, empty objects): the public result must always be jansson's. */
    static const char *files[] = {"tests/proto/valid/st_all_metadata/request.safetensors",
                                  "tests/proto/valid/st_minimal/request.safetensors",
                                  "tests/proto/valid/st_unpadded_header/request.safetensors"};
    static const char *headers[] = {
        "{\"b\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[12,20]},"
        "\"__metadata__\":{\"k\":\"v\",\"empty\":\"\"},"
        "\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,12]},"
        "\"z\":{\"dtype\":\"BF16\",\"shape\":[0,7],\"data_offsets\":[20,20]},"
        "\"h\":{\"dtype\":\"F16\",\"shape\":[1,1,1,2],\"data_offsets\":[20,24]}}",
        " \n{ \"a\" :\t{ \"shape\" : [ 3 ] , \"data_offsets\" : [ 0 , 12 ] , \"dtype\" : \"F32\" }"
        " , \"b\":{\"data_offsets\":[12,36],\"dtype\":\"F64\",\"shape\":[1,3,1,1]} }\r\n ",
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,12]},"
        "\"b\\u002e\":{\"dtype\":\"F\\u0036\\u0034\",\"shape\":[1],\"data_offsets\":[12,20]},"
        "\"c\":{\"dtype\":\"I64\",\"shape\":[2],\"data_offsets\":[20,36]}}",
        "{\"__metadata__\":{},\"x\":{\"dtype\":\"U8\",\"shape\":[36],\"data_offsets\":[0,36]}}",
        "{\"x\":{\"dtype\":\"U8\",\"shape\":[36],\"data_offsets\":[0,36]},"
        "\"__metadata__\":{\"k\":\"caf\\u00e9\",\"x\":\"\xc3\xa9\"}}",
        "{\"x\":{\"dtype\":\"U8\",\"shape\":[36],\"data_offsets\":[0,36]},"
        "\"__metadata__\":{\"k\":\"1\",\"k\":\"2\"}}",
        /* More metadata members than the scanner's table holds (16): into a
         * jansson object on the way; then a duplicate beyond that point. */
        "{\"x\":{\"dtype\":\"U8\",\"shape\":[36],\"data_offsets\":[0,36]},"
        "\"__metadata__\":{\"k0\":\"0\",\"k1\":\"1\",\"k2\":\"2\",\"k3\":\"3\",\"k4\":\"4\",\"k5\":"
        "\"5\",\"k6\":\"6\",\"k7\":\"7\",\"k8\":\"8\",\"k9\":\"9\",\"k10\":\"10\",\"k11\":\"11\","
        "\"k12\":\"12\",\"k13\":\"13\",\"k14\":\"14\",\"k15\":\"15\",\"k16\":\"16\",\"k17\":\"17\","
        "\"k18\":\"18\",\"k19\":\"19\"}}",
        "{\"x\":{\"dtype\":\"U8\",\"shape\":[36],\"data_offsets\":[0,36]},"
        "\"__metadata__\":{\"k0\":\"0\",\"k1\":\"1\",\"k2\":\"2\",\"k3\":\"3\",\"k4\":\"4\",\"k5\":"
        "\"5\",\"k6\":\"6\",\"k7\":\"7\",\"k8\":\"8\",\"k9\":\"9\",\"k10\":\"10\",\"k11\":\"11\","
        "\"k12\":\"12\",\"k13\":\"13\",\"k14\":\"14\",\"k15\":\"15\",\"k16\":\"16\",\"k17\":\"17\","
        "\"k3\":\"x\"}}",
        "{\"x\":{\"dtype\":\"U8\",\"shape\":[-0],\"data_offsets\":[0,36]}}",
        "{\"x\":{\"dtype\":\"U8\",\"shape\":[36],\"data_offsets\":[0,36],\"dtype\":\"U8\"}}",
        "{\"x\":{\"dtype\":\"U8\",\"shape\":[36],\"data_offsets\":[0,36]},"
        "\"x\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[36,36]}}",
        "{\"x\":{\"dtype\":\"U8\",\"shape\":[036],\"data_offsets\":[0,36]}}",
        "{\"x\":{\"dtype\":\"U8\",\"shape\":[36.0],\"data_offsets\":[0,36]}}",
        "{\"x\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,36],\"data_offsets\":[0,36]}}",
        "{\"x\":{\"dtype\":\"U8\",\"shape\":[36],\"data_offsets\":[0,36]}} x",
        "{}",
    };
    uint8_t data[36];
    for (size_t i = 0; i < sizeof(data); i++)
        data[i] = (uint8_t)(i * 7);
    enum { CAP = 4096 };
    char *h = malloc(CAP);
    uint64_t rng = ns_test_seed() ^ 0xd1ffu;
    size_t fast = 0, valid_total = 0, total = 0, fast_seeds = 0;
    size_t n_seeds = sizeof(files) / sizeof(files[0]) + sizeof(headers) / sizeof(headers[0]);
    for (size_t s = 0; s < n_seeds; s++) {
        /* Seed: header text and data area. */
        uint8_t *orig = NULL;
        const uint8_t *sdata;
        size_t hlen, dlen;
        if (s < sizeof(files) / sizeof(files[0])) {
            size_t len;
            orig = load(files[s], &len);
            uint64_t n = 0;
            for (int i = 7; i >= 0; i--)
                n = n << 8 | orig[i];
            ck_assert_uint_le(n, len - 8);
            hlen = (size_t)n;
            ck_assert_uint_lt(hlen, CAP / 2);
            memcpy(h, orig + 8, hlen);
            sdata = orig + 8 + hlen;
            dlen = len - 8 - hlen;
        } else {
            const char *text = headers[s - sizeof(files) / sizeof(files[0])];
            hlen = strlen(text);
            memcpy(h, text, hlen);
            sdata = data;
            dlen = s == sizeof(files) / sizeof(files[0]) ? 24 /* the accessor header */
                   : strcmp(text, "{}") == 0            ? 0
                                                        : sizeof(data);
        }
        char *seed = malloc(hlen ? hlen : 1);
        memcpy(seed, h, hlen);
        for (int iter = 0; iter < 3000; iter++) {
            size_t len = hlen;
            memcpy(h, seed, hlen);
            int edits = iter == 0 ? 0 : 1 + (int)(ns_test_rand(&rng) % 3);
            for (int e = 0; e < edits; e++)
                len = mutate_header(h, len, CAP / 2, &rng);
            size_t flen;
            h[len] = '\0';
            uint8_t *file = malloc(8 + len + dlen);
            for (int i = 0; i < 8; i++)
                file[i] = (uint8_t)((uint64_t)len >> (8 * i));
            memcpy(file + 8, h, len);
            if (dlen)
                memcpy(file + 8 + len, sdata, dlen);
            flen = 8 + len + dlen;
            int valid;
            int took = parse_three(file, flen, h, &valid);
            fast += took;
            valid_total += valid;
            if (iter == 0)
                fast_seeds += took;
            total++;
            free(file);
        }
        free(seed);
        free(orig);
    }
    free(h);
    fprintf(stderr, "scanner vs jansson: %zu headers, %zu valid, %zu by the scanner\n", total,
            valid_total, fast);
    /* The plain seeds (3 files, the accessor and whitespace headers, the empty
     * and U8 ones, the one of 20 metadata members) must take the scanner; the
     * escaped, non-ASCII, duplicate (2), -0, leading-zero, real, 5-dim and
     * trailing-text ones must not. */
    ck_assert_uint_eq(fast_seeds, 8);
    ck_assert_uint_gt(fast, valid_total / 2); /* most valid edits keep to the grammar */
    ck_assert_uint_gt(valid_total - fast, 0);
}
END_TEST

START_TEST(test_scanner_resnet50)
{
    /* The daemon's common input: ResNet-50's 53 BatchNorm layers (26,560
     * channels) as ns_report_encode() writes them take the scanner and give
     * the jansson result. */
    static const size_t stage[4][2] = {{3, 64}, {4, 128}, {6, 256}, {3, 512}};
    enum { LAYERS = 53 };
    ns_layer_report_t layers[LAYERS];
    float *values = malloc(2 * 26560 * sizeof(float));
    size_t n = 0, used = 0;
    memset(layers, 0, sizeof(layers));
    snprintf(layers[n].name, sizeof(layers[n].name), "bn1");
    layers[n++].channels = 64;
    for (size_t s = 0; s < 4; s++) {
        for (size_t b = 0; b < stage[s][0]; b++)
            for (size_t k = 0; k < 3; k++) {
                snprintf(layers[n].name, sizeof(layers[n].name), "layer%zu.%zu.bn%zu", s + 1, b,
                         k + 1);
                layers[n++].channels = k == 2 ? 4 * stage[s][1] : stage[s][1];
            }
        snprintf(layers[n].name, sizeof(layers[n].name), "layer%zu.0.downsample.1", s + 1);
        layers[n++].channels = 4 * stage[s][1];
    }
    ck_assert_uint_eq(n, LAYERS);
    for (size_t l = 0; l < n; l++) {
        layers[l].count = 200704;
        layers[l].mean = values + used;
        layers[l].var = values + used + layers[l].channels;
        for (size_t c = 0; c < 2 * layers[l].channels; c++)
            values[used + c] = (float)(c % 17) * 0.25f + 0.5f;
        used += 2 * layers[l].channels;
    }
    ck_assert_uint_eq(used, 2 * 26560);
    ns_report_t report = {0};
    report.step = 1234567;
    report.unbiased = 1;
    report.update = NS_UPDATE_EMA | NS_UPDATE_PRECISE;
    report.scope = NS_SCOPE_GLOBAL;
    report.world_size = 1;
    report.n_layers = n;
    report.layers = layers;
    ns_buf_t buf = {0};
    ns_error_detail_t err = {0};
    ck_assert_msg(ns_report_encode(&buf, NS_FORMAT_SAFETENSORS, &report, &err) == 0, "%s",
                  err.message);
    int valid;
    ck_assert(parse_three((const uint8_t *)buf.data, buf.len, "resnet50", &valid));
    ck_assert(valid);
    ns_safetensors_t *st = NULL;
    ck_assert_int_eq(ns__safetensors_parse_fast(&st, (const uint8_t *)buf.data, buf.len), 0);
    ck_assert_uint_eq(ns_safetensors_count(st), 3 * LAYERS);
    ck_assert_str_eq(ns_safetensors_meta(st, "step"), "1234567");
    ns_safetensors_free(st);
    ns_report_t *back = NULL;
    ck_assert_int_eq(ns_report_decode_safetensors(&back, (const uint8_t *)buf.data, buf.len, &err),
                     0);
    ck_assert_uint_eq(back->n_layers, LAYERS);
    ns_report_free(back);
    ns_buf_free(&buf);
    free(values);
}
END_TEST

START_TEST(test_fast_path_numbers)
{
    uint64_t rng = ns_test_seed() ^ 0xf10a7;
    ns_buf_t body = {0};
    int fast = 0;
    for (int iter = 0; iter < 400; iter++) {
        ns_buf_init(&body, 0);
        ns_buf_printf(&body, "{\"step\":%d,\"worker\":0,\"layers\":{\"l\":{\"count\":7,\"mean\":[",
                      iter);
        int n = 1 + (int)(ns_test_rand(&rng) % 64);
        for (int i = 0; i < n; i++) {
            double v = ns_test_normal(&rng) * pow(10.0, (double)(ns_test_rand(&rng) % 74) - 37);
            switch (ns_test_rand(&rng) % 6) {
            case 0: /* integers, including -0 and 16+ digit ones */
                ns_buf_printf(&body, "%s%lld", i ? "," : "",
                              (long long)(ns_test_normal(&rng) *
                                          pow(10.0, (double)(ns_test_rand(&rng) % 16))));
                break;
            case 1:
                ns_buf_printf(&body, "%s%s", i ? "," : "", ns_test_rand(&rng) % 2 ? "-0" : "-0.0");
                break;
            case 2: /* near float32's limits */
                ns_buf_printf(&body, "%s%.9g", i ? "," : "",
                              (ns_test_rand(&rng) % 2 ? 3.4028234e38 : 1.1754943e-38) *
                                  (1 - 1e-7 * fabs(ns_test_normal(&rng))));
                break;
            default:
                ns_buf_printf(&body, i ? "," : "");
                switch (ns_test_rand(&rng) % 8) {
                case 0:
                    ns_buf_printf(&body, "%.17g", v);
                    break;
                case 1:
                    ns_buf_printf(&body, "%.9g", v);
                    break;
                case 2:
                    ns_buf_printf(&body, "%g", v);
                    break;
                case 3:
                    ns_buf_printf(&body, "%.3e", v);
                    break;
                case 4:
                    ns_buf_printf(&body, "%.15E", v);
                    break;
                case 5:
                    ns_buf_printf(&body, "%.0f", v);
                    break;
                case 6:
                    ns_buf_printf(&body, "%.20f", fabs(v) < 1e20 ? v : 1.5);
                    break;
                default:
                    ns_buf_printf(&body, "%.12g", v);
                    break;
                }
            }
        }
        ns_buf_printf(&body, "],\"var\":[");
        for (int i = 0; i < n; i++)
            ns_buf_printf(&body, "%s%.*g", i ? "," : "", 1 + (int)(ns_test_rand(&rng) % 17),
                          fabs(ns_test_normal(&rng)) *
                              pow(10.0, (double)(ns_test_rand(&rng) % 60) - 30));
        ns_buf_printf(&body, "]}}}");
        decode_both(body.data, body.len);
        ns_report_t *r = NULL;
        if (ns__report_decode_json_fast(&r, body.data, body.len, NULL) == 0)
            fast++;
        ns_report_free(r);
        ns_buf_free(&body);
    }
    /* Most bodies must take the fast path, or this test checks nothing. */
    ck_assert_msg(fast > 100, "only %d of 400 bodies took the fast path", fast);
    /* Spellings JSON forbids, or that only jansson's path explains. */
    static const char *const odd[] = {
        "{\"step\":1,\"worker\":0,\"layers\":{\"l\":{\"count\":1,\"mean\":[01],\"var\":[1]}}}",
        "{\"step\":1,\"worker\":0,\"layers\":{\"l\":{\"count\":1,\"mean\":[1.],\"var\":[1]}}}",
        "{\"step\":1,\"worker\":0,\"layers\":{\"l\":{\"count\":1,\"mean\":[.5],\"var\":[1]}}}",
        "{\"step\":1,\"worker\":0,\"layers\":{\"l\":{\"count\":1,\"mean\":[+1],\"var\":[1]}}}",
        "{\"step\":1,\"worker\":0,\"layers\":{\"l\":{\"count\":1,\"mean\":[1e],\"var\":[1]}}}",
        "{\"step\":1,\"worker\":0,\"layers\":{\"l\":{\"count\":1,\"mean\":[1e+],\"var\":[1]}}}",
        "{\"step\":1,\"worker\":0,\"layers\":{\"l\":{\"count\":1,\"mean\":[1,],\"var\":[1]}}}",
        "{\"step\":1,\"worker\":0,\"layers\":{\"l\":{\"count\":1,\"mean\":[1e39],\"var\":[1]}}}",
        "{\"step\":1,\"worker\":0,\"layers\":{\"l\":{\"count\":1,\"mean\":[1e400],\"var\":[1]}}}",
        "{\"step\":1,\"worker\":0,\"layers\":{\"l\":{\"count\":1,\"mean\":[1e-400],\"var\":[1]}}}",
        "{\"step\":1,\"worker\":0,\"layers\":{\"l\":{\"count\":1,\"mean\":[12345678901234567890],"
        "\"var\":[1]}}}",
        "{\"step\":1,\"worker\":0,\"layers\":{\"l\":{\"count\":1,\"mean\":[123456789012345678],"
        "\"var\":[1]}}}",
        "{\"step\":1,\"worker\":0,\"layers\":{\"l\":{\"count\":1,\"mean\":[1],\"var\":[-1e-50]}}}",
        "{\"step\":1,\"worker\":0,\"layers\":{\"l\":{\"count\":1,\"mean\":[1],\"var\":[-0]}}}",
        "{\"step\":1,\"worker\":0,\"layers\":{\"l\":{\"count\":1,\"mean\":[1],\"var\":[-0.0]}}}",
        "{\"step\":1.0,\"worker\":0,\"layers\":{\"l\":{\"count\":0}}}",
        "{\"step\":1,\"worker\":0,\"layers\":{\"l\":{\"count\":0}},\"domain\":\"caf\\u00e9\"}",
        "{\"step\":1,\"worker\":0,\"layers\":{\"l\":{\"count\":0},\"k\":{\"count\":0},\"l\":{"
        "\"count\":0}}}",
        "{\"step\":1,\"worker\":0,\"layers\":{\"l\":{\"count\":0}}}\n\n",
        "{\"step\":1,\"worker\":0,\"layers\":{\"l\":{\"count\":0}}} {}",
        "{\"step\":1,\"worker\":0,\"update\":[\"ema\",\"ema\"],\"layers\":{\"l\":{\"count\":0}}}",
        "{\"step\":1,\"worker\":0,\"update\":[],\"layers\":{\"l\":{\"count\":0}}}",
        "{\"step\":1,\"worker\":0,\"layers\":{}}",
        "{\"step\":1,\"worker\":0,\"layers\":{\"l\":{}}}",
        "{\"step\":1,\"worker\":0,\"layers\":{\"l\":{\"count\":0,\"mean\":[],\"var\":[]}}}",
        "{\"step\":1,\"worker\":0,\"world_size\":0,\"layers\":{\"l\":{\"count\":0}}}",
        "{\"step\":9223372036854775807,\"worker\":4294967295,\"layers\":{\"l\":{\"count\":"
        "18446744073709551615}}}",
        "{\"step\":1,\"worker\":0,\"unbiased\":true,\"layers\":{\"l\":{\"count\":3,\"mean\":[1,2],"
        "\"var\":[3,4]}}}",
    };
    for (size_t i = 0; i < sizeof(odd) / sizeof(odd[0]); i++)
        decode_both(odd[i], strlen(odd[i]));
}
END_TEST

/* A report of one layer with 'n' channels, its arrays in the order given,
 * element 'at' of the array 'bad_key' replaced by 'bad' (raw text), and
 * 'extra' elements more in the second array. */
static void array_body(ns_buf_t *b, int var_first, int n, const char *bad_key, int at,
                       const char *bad, int extra)
{
    static const char *const keys[2][2] = {{"mean", "var"}, {"var", "mean"}};
    ns_buf_init(b, 0);
    ns_buf_printf(b, "{\"step\":3,\"worker\":0,\"layers\":{\"l\":{\"count\":9");
    for (int a = 0; a < 2; a++) {
        const char *key = keys[var_first][a];
        ns_buf_printf(b, ",\"%s\":[", key);
        for (int i = 0; i < n + (a == 1 ? extra : 0); i++) {
            ns_buf_printf(b, i ? "," : "");
            if (bad_key && strcmp(key, bad_key) == 0 && i == at)
                ns_buf_printf(b, "%s", bad);
            else
                ns_buf_printf(b, "%.9g", (i % 2 && key[0] == 'm' ? -0.25 : 1.0) / (i + 3.0));
        }
        ns_buf_printf(b, "]");
    }
    ns_buf_printf(b, "}}}");
}

/* Malformed elements at the start, the middle and the end of either array
 * (where the fast path reads 16-byte blocks, and next to the body's end),
 * and arrays of different lengths in either order: the fast path leaves
 * each to jansson's, so the answer is the same code and message, and an
 * element of the wrong kind or range is named by its field. */
START_TEST(test_fast_path_array_errors)
{
    static const struct {
        const char *text;
        int named; /* the error names the element (not a syntax error) */
    } bad[] = {
        {"1.5.2", 0}, {"1e5e1", 0},   {"01", 0},
        {"1 2", 0},   {"-", 0},       {"", 0},
        {"1.", 0},    {"+1", 0},      {"0x10", 0},
        {"1e", 0},    {"\"x\"", 1},   {"null", 1},
        {"true", 1},  {"[1]", 1},     {"{}", 1},
        {"1e39", 1},  {"-3.5e38", 1}, {"12345678901234567890", 1},
    };
    ns_buf_t body = {0};
    static const char *const keys[] = {"mean", "var"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        for (int k = 0; k < 2; k++)
            for (int var_first = 0; var_first < 2; var_first++)
                for (int where = 0; where < 3; where++) {
                    int n = 40, at = where == 0 ? 0 : where == 1 ? n / 2 : n - 1;
                    array_body(&body, var_first, n, keys[k], at, bad[i].text, 0);
                    ck_assert_int_ne(decode_both(body.data, body.len), 0);
                    if (bad[i].named) {
                        ns_report_t *r = NULL;
                        ns_error_detail_t err = {0};
                        char field[64];
                        snprintf(field, sizeof(field), "layers.l.%s[%d]", keys[k], at);
                        ck_assert_int_ne(ns_report_decode_json(&r, body.data, body.len, &err), 0);
                        ck_assert_str_eq(err.field, field);
                        ck_assert_msg(strstr(err.message, field) != NULL, "%s", err.message);
                    }
                    ns_buf_free(&body);
                }
    /* one array longer or shorter than the other, in either order */
    for (int var_first = 0; var_first < 2; var_first++)
        for (int extra = -2; extra <= 2; extra++) {
            array_body(&body, var_first, 100, NULL, 0, NULL, extra);
            int rc = decode_both(body.data, body.len);
            ns_report_t *r = NULL;
            ns_error_detail_t err = {0};
            int fast = ns__report_decode_json_fast(&r, body.data, body.len, &err);
            if (extra == 0) {
                ck_assert_int_eq(rc, 0);
                ck_assert_int_eq(fast, 0); /* either order takes the fast path */
                ck_assert_uint_eq(r->layers[0].channels, 100);
            } else {
                ck_assert_int_ne(rc, 0);
                ck_assert_int_ne(fast, 0);
                ck_assert_int_eq(ns_report_decode_json(&r, body.data, body.len, &err), rc);
                ck_assert_str_eq(err.field, "layers.l.var");
            }
            ns_report_free(r);
            ns_buf_free(&body);
        }
}
END_TEST

static Suite *safetensors_suite(void)
{
    Suite *s = suite_create("safetensors");
    TCase *tc = tcase_create("safetensors");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_accessors);
    tcase_add_test(tc, test_borrowed_arrays);
    tcase_add_test(tc, test_dtype_sizes);
    tcase_add_test(tc, test_limits);
    tcase_add_test(tc, test_fuzz);
    tcase_add_test(tc, test_fuzz_json_report);
    tcase_add_test(tc, test_fast_path_numbers);
    tcase_add_test(tc, test_long_metadata);
    tcase_add_test(tc, test_fast_path_array_errors);
    tcase_add_test(tc, test_scanner_vs_jansson);
    tcase_add_test(tc, test_scanner_resnet50);
    suite_add_tcase(s, tc);
    return s;
}

NS_TEST_MAIN(safetensors_suite)
