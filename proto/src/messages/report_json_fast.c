/* report_json_fast.c - a fast path for well-formed JSON reports.
 *
 * jansson builds one heap object per number, which dominates the cost of a
 * report with tens of thousands of channels. This scanner reads the report
 * grammar directly into float arrays. It only ever *accepts*: on anything
 * unusual (strings that are not printable ASCII once unescaped, unknown or
 * repeated keys, wrong types, values out of range, float32 overflow,
 * malformed text) it gives up and the caller decodes the same bytes with
 * jansson, which produces the canonical error. So the fast path must accept
 * exactly what the jansson path accepts, with the same result;
 * tests/unit/proto/test_safetensors.c checks this differentially.
 * Integer fields are read with strtoll as jansson does. Array elements become
 * the float32 nearest their decimal text (strtof's rounding, f32_parse.c);
 * jansson keeps only a double, which rounds to the same float except on a
 * midpoint between two floats, so every valid report with real numbers is
 * decoded here: the only valid bodies left to jansson are those with
 * integers of 19 digits in an array, which it converts exactly too. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "util/f32.h"
#include "proto_internal.h"

typedef struct cursor_s {
    const char *p, *end;
} cursor_t;

static inline void skip_ws(cursor_t *c)
{
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r'))
        c->p++;
}

/* Inline: it runs between every two numbers of an array. */
static inline int eat(cursor_t *c, char ch)
{
    skip_ws(c);
    if (c->p < c->end && *c->p == ch) {
        c->p++;
        return 1;
    }
    return 0;
}

static int hex_digit(char ch)
{
    return ch >= '0' && ch <= '9'   ? ch - '0'
           : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10
           : ch >= 'A' && ch <= 'F' ? ch - 'A' + 10
                                    : -1;
}

/* A string of printable ASCII: *s points into the body, or into 'scratch'
 * (NS_NAME_MAX + 1 bytes) when escapes had to be decoded. Anything else gives
 * up: a key, name or word of a valid report is printable ASCII, so an escape
 * that decodes to something else (or raw non-ASCII) means jansson's error. */
static int plain_string(cursor_t *c, char *scratch, const char **s, size_t *len)
{
    skip_ws(c);
    if (c->p >= c->end || *c->p != '"')
        return 0;
    const char *begin = ++c->p;
    while (c->p < c->end && *c->p != '"') {
        unsigned char ch = (unsigned char)*c->p;
        if (ch == '\\')
            break;
        if (ch < 0x20 || ch >= 0x7f)
            return 0;
        c->p++;
    }
    if (c->p >= c->end)
        return 0;
    size_t n = (size_t)(c->p - begin);
    if (*c->p == '"') {
        *s = begin;
        *len = n;
        c->p++;
        return 1;
    }
    /* Escapes: decode the whole string into scratch. */
    if (n > NS_NAME_MAX)
        return 0;
    memcpy(scratch, begin, n);
    while (c->p < c->end && *c->p != '"') {
        int ch = (unsigned char)*c->p++;
        if (ch == '\\') {
            if (c->p >= c->end)
                return 0;
            ch = (unsigned char)*c->p++;
            if (ch == 'u') {
                int v = 0;
                for (int i = 0; i < 4; i++) {
                    int h = c->p < c->end ? hex_digit(*c->p++) : -1;
                    if (h < 0)
                        return 0;
                    v = v * 16 + h;
                }
                ch = v;
            } else if (ch != '"' && ch != '\\' && ch != '/') {
                return 0; /* \b \f \n \r \t: control characters */
            }
        }
        if (ch < 0x20 || ch >= 0x7f || n >= NS_NAME_MAX)
            return 0;
        scratch[n++] = (char)ch;
    }
    if (c->p >= c->end)
        return 0;
    c->p++;
    scratch[n] = '\0';
    *s = scratch;
    *len = n;
    return 1;
}

static int is_digit(const cursor_t *c)
{
    return c->p < c->end && *c->p >= '0' && *c->p <= '9';
}

/* A JSON integer that fits int64 (jansson refuses the others). Reals give
 * up: the fields read with this are integers, and jansson says what else was
 * sent. */
static int integer(cursor_t *c, long long *out)
{
    char text[24];
    skip_ws(c);
    const char *begin = c->p;
    if (c->p < c->end && *c->p == '-')
        c->p++;
    if (!is_digit(c))
        return 0;
    if (*c->p == '0')
        c->p++;
    else
        while (is_digit(c))
            c->p++;
    if (c->p < c->end && (*c->p == '.' || *c->p == 'e' || *c->p == 'E'))
        return 0;
    size_t len = (size_t)(c->p - begin);
    if (len - (*begin == '-') > 19)
        return 0;
    memcpy(text, begin, len);
    text[len] = '\0';
    errno = 0;
    *out = strtoll(text, NULL, 10);
    return errno == 0;
}

static int uint_field(cursor_t *c, uint64_t min, uint64_t max, uint64_t *out)
{
    long long v;
    if (!integer(c, &v) || v < 0 || (uint64_t)v < min || (uint64_t)v > max)
        return 0;
    *out = (uint64_t)v;
    return 1;
}

/* '[' number (',' number)* ']' into float32 (ns__f32_parse_array()),
 * allocated to its exact length: decoding costs at most 4 bytes per number
 * plus one allocation per array (ns_report_decode_bound() relies on it).
 * 'known' is the length the array must have (the layer's other array's),
 * else 0: then its commas give it (one vector scan). Short arrays are
 * parsed on the stack, longer ones in one allocation of that length (an
 * unknown one grown by doubling if the text is not what it seemed, and
 * trimmed). */
static int float_array(cursor_t *c, size_t known, float **out, size_t *len)
{
    float stack[64], *v = stack;
    size_t n = 0, cap = sizeof(stack) / sizeof(stack[0]);
    if (!eat(c, '['))
        return 0;
    uint64_t expect = known ? known : ns__json_array_length(c->p, (size_t)(c->end - c->p));
    if (expect > cap) {
        if (!(v = malloc(expect * sizeof(*v))))
            return 0;
        cap = (size_t)expect;
    }
    for (;;) {
        size_t got;
        int rc = ns__f32_parse_array(&c->p, c->end, v + n, cap - n, &got);
        n += got;
        if (rc > 0)
            break;
        if (rc < 0 || known)
            goto fail; /* longer than its other array: jansson says so */
        float *grown = realloc(v == stack ? NULL : v, (cap *= 2) * sizeof(*v));
        if (!grown)
            goto fail;
        if (v == stack)
            memcpy(grown, stack, sizeof(stack));
        v = grown;
    }
    float *exact = v == stack ? malloc(n * sizeof(*v)) : n == cap ? v : realloc(v, n * sizeof(*v));
    if (!exact)
        goto fail;
    if (v == stack)
        memcpy(exact, stack, n * sizeof(*v));
    *out = exact;
    *len = n;
    return 1;
fail:
    if (v != stack)
        free(v);
    return 0;
}

/* Whether the key of length 'len' is the string literal 'lit'. */
#define KEY_IS(key, len, lit) ((len) == sizeof(lit) - 1 && memcmp((key), (lit), (len)) == 0)

static int layer_object(cursor_t *c, ns_layer_report_t *layer)
{
    char scratch[NS_NAME_MAX + 1];
    unsigned seen = 0;
    size_t n_mean = 0, n_var = 0;
    if (!eat(c, '{'))
        return 0;
    do {
        const char *key;
        size_t len;
        if (!plain_string(c, scratch, &key, &len) || !eat(c, ':'))
            return 0;
        if (KEY_IS(key, len, NS_FIELD_COUNT) && !(seen & 1)) {
            seen |= 1;
            if (!uint_field(c, 0, UINT64_MAX, &layer->count))
                return 0;
        } else if (KEY_IS(key, len, NS_FIELD_MEAN) && !(seen & 2)) {
            seen |= 2;
            if (!float_array(c, n_var, &layer->mean, &n_mean))
                return 0;
        } else if (KEY_IS(key, len, NS_FIELD_VAR) && !(seen & 4)) {
            seen |= 4;
            if (!float_array(c, n_mean, &layer->var, &n_var))
                return 0;
        } else {
            return 0;
        }
    } while (eat(c, ','));
    if (!eat(c, '}') || !(seen & 1))
        return 0;
    if ((seen & 6) == 0)
        return layer->count == 0;
    if ((seen & 6) != 6 || n_mean != n_var)
        return 0;
    layer->channels = n_mean;
    return 1;
}

static int layer_cmp(const void *a, const void *b)
{
    return strcmp(((const ns_layer_report_t *)a)->name, ((const ns_layer_report_t *)b)->name);
}

/* An upper bound of the layers left in the body: its '{' count. */
static size_t layers_at_most(const cursor_t *c)
{
    size_t n = 0;
    for (const char *p = c->p; (p = memchr(p, '{', (size_t)(c->end - p))) != NULL; p++)
        n++;
    return n;
}

static int layers_object(cursor_t *c, ns_report_t *r)
{
    char scratch[NS_NAME_MAX + 1];
    size_t cap = 0;
    if (!eat(c, '{'))
        return 0;
    /* One allocation for every layer (no doubling), trimmed at the end. */
    if (r->layers == NULL && (cap = layers_at_most(c)) > 0 &&
        (r->layers = malloc(cap * sizeof(*r->layers))) == NULL)
        return 0;
    do {
        const char *name;
        size_t len;
        if (!plain_string(c, scratch, &name, &len) || len < 1 || len > NS_NAME_MAX || !eat(c, ':'))
            return 0;
        if (r->n_layers == cap) {
            size_t grown_cap = cap ? 2 * cap : 64;
            ns_layer_report_t *grown = realloc(r->layers, grown_cap * sizeof(*grown));
            if (!grown)
                return 0;
            r->layers = grown;
            cap = grown_cap;
        }
        ns_layer_report_t *layer = &r->layers[r->n_layers++];
        memset(layer, 0, sizeof(*layer));
        memcpy(layer->name, name, len);
        layer->name[len] = '\0';
        if (!ns_name_valid(layer->name) || !layer_object(c, layer))
            return 0;
    } while (eat(c, ','));
    if (!eat(c, '}'))
        return 0;
    if (r->n_layers < cap) {
        ns_layer_report_t *exact = realloc(r->layers, r->n_layers * sizeof(*r->layers));
        if (exact != NULL || r->n_layers == 0)
            r->layers = exact;
    }
    /* Repeated names are jansson's "duplicate object key" error. */
    qsort(r->layers, r->n_layers, sizeof(*r->layers), layer_cmp);
    for (size_t i = 0; i + 1 < r->n_layers; i++)
        if (strcmp(r->layers[i].name, r->layers[i + 1].name) == 0)
            return 0;
    return 1;
}

static int update_array(cursor_t *c, unsigned *out)
{
    char scratch[NS_NAME_MAX + 1];
    unsigned bits = 0;
    if (!eat(c, '['))
        return 0;
    do {
        const char *s;
        size_t len;
        if (!plain_string(c, scratch, &s, &len))
            return 0;
        unsigned bit = ns__update_parse_word(s, len);
        if (!bit || (bits & bit))
            return 0;
        bits |= bit;
    } while (eat(c, ','));
    if (!eat(c, ']'))
        return 0;
    *out = bits;
    return 1;
}

static int literal(cursor_t *c, const char *word)
{
    size_t len = strlen(word);
    skip_ws(c);
    if ((size_t)(c->end - c->p) < len || memcmp(c->p, word, len) != 0)
        return 0;
    c->p += len;
    return 1;
}

enum {
    F_STEP = 1,
    F_WORKER = 2,
    F_DOMAIN = 4,
    F_UNBIASED = 8,
    F_UPDATE = 16,
    F_SCOPE = 32,
    F_WORLD = 64,
    F_LAYERS = 128
};

/* The value of the root's key 'field' (one F_ bit) into r. @return 1, or 0 to give up. */
static int root_value(cursor_t *c, ns_report_t *r, unsigned field, char *scratch)
{
    const char *s;
    size_t slen;
    uint64_t u;
    switch (field) {
    case F_STEP:
        if (!uint_field(c, 0, INT64_MAX, &r->step))
            return 0;
        break;
    case F_WORKER:
        if (!uint_field(c, 0, UINT32_MAX, &u))
            return 0;
        r->worker = (uint32_t)u;
        break;
    case F_DOMAIN:
        if (!plain_string(c, scratch, &s, &slen) || slen < 1 || slen > NS_NAME_MAX)
            return 0;
        memcpy(r->domain, s, slen);
        r->domain[slen] = '\0';
        if (!ns_name_valid(r->domain))
            return 0;
        break;
    case F_UNBIASED:
        if (literal(c, "true"))
            r->unbiased = 1;
        else if (literal(c, "false"))
            r->unbiased = 0;
        else
            return 0;
        break;
    case F_UPDATE:
        if (!update_array(c, &r->update))
            return 0;
        break;
    case F_SCOPE:
        if (!plain_string(c, scratch, &s, &slen))
            return 0;
        if (slen == 6 && memcmp(s, "global", 6) == 0)
            r->scope = NS_SCOPE_GLOBAL;
        else if (slen == 6 && memcmp(s, "domain", 6) == 0)
            r->scope = NS_SCOPE_DOMAIN;
        else
            return 0;
        break;
    case F_WORLD:
        if (!uint_field(c, 1, NS__WORLD_SIZE_WIRE_MAX, &u))
            return 0;
        r->world_size = (int64_t)u;
        break;
    default:
        if (!layers_object(c, r))
            return 0;
    }
    return 1;
}

static int root_object(cursor_t *c, ns_report_t *r)
{
    char scratch[NS_NAME_MAX + 1];
    unsigned seen = 0;
    if (!eat(c, '{'))
        return 0;
    do {
        const char *key;
        size_t len;
        unsigned field;
        if (!plain_string(c, scratch, &key, &len) || !eat(c, ':'))
            return 0;
#define KEY(lit) KEY_IS(key, len, lit)
        field = KEY("step")         ? F_STEP
                : KEY("worker")     ? F_WORKER
                : KEY("domain")     ? F_DOMAIN
                : KEY("unbiased")   ? F_UNBIASED
                : KEY("update")     ? F_UPDATE
                : KEY("scope")      ? F_SCOPE
                : KEY("world_size") ? F_WORLD
                : KEY("layers")     ? F_LAYERS
                                    : 0;
#undef KEY
        if (!field || (seen & field))
            return 0;
        seen |= field;
        if (!root_value(c, r, field, scratch))
            return 0;
    } while (eat(c, ','));
    if (!eat(c, '}'))
        return 0;
    skip_ws(c);
    return c->p == c->end &&
           (seen & (F_STEP | F_WORKER | F_LAYERS)) == (F_STEP | F_WORKER | F_LAYERS);
}

int ns__report_decode_json_fast(ns_report_t **dst, const char *src, size_t src_len,
                                ns_error_detail_t *err)
{
    if (!src)
        return 1;
    ns_report_t *r = ns__report_create(0);
    if (!r)
        return 1;
    cursor_t c = {src, src + src_len};
    if (!root_object(&c, r)) {
        ns_report_free(r);
        return 1;
    }
    /* Well-formed: only value checks (422) remain, as in the jansson path. */
    int rc = ns__report_finish(r, err, NULL, NULL);
    if (rc) {
        ns_report_free(r);
        return rc;
    }
    *dst = r;
    return 0;
}
