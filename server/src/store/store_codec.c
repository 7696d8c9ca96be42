/* store_codec.c - a finalized step as the body of a STEP log row and back
 * (see store_codec.h). */
#include "store_codec.h"

#include <stdlib.h>
#include <string.h>

/* Bytes are written and read little-endian. On a little-endian host (every
 * host normstatd is built for today) an array is one memcpy; elsewhere it
 * goes byte by byte. */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define HOST_LE 1
#else
#define HOST_LE 0
#endif

static void put_u64(unsigned char **p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        (*p)[i] = (unsigned char)(v >> (8 * i));
    *p += 8;
}

static void put_doubles(unsigned char **p, const double *src, size_t n)
{
    if (HOST_LE) {
        memcpy(*p, src, n * 8);
        *p += n * 8;
        return;
    }
    for (size_t i = 0; i < n; i++) {
        uint64_t bits;
        memcpy(&bits, &src[i], sizeof(bits));
        put_u64(p, bits);
    }
}

static void put_floats(unsigned char **p, const double *src, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        float f = (float)src[i];
        uint32_t bits;
        memcpy(&bits, &f, sizeof(bits));
        if (HOST_LE) {
            memcpy(*p, &bits, 4);
        } else {
            for (int k = 0; k < 4; k++)
                (*p)[k] = (unsigned char)(bits >> (8 * k));
        }
        *p += 4;
    }
}

/* Whether every value is a float32 widened (a single arrival's combination
 * usually is): then 4 bytes hold it exactly. Zeros keep their sign through
 * the round trip; infinities and NaN never reach a step. */
static int all_float32(const double *src, size_t n)
{
    int ok = 1;
    for (size_t i = 0; i < n; i++)
        ok &= (double)(float)src[i] == src[i];
    return ok;
}

/* A mean/var pair of arrays (adjacent or not): its encoding byte, then the
 * values, 4 or 8 bytes each. */
static size_t pair_bytes(int f32, size_t c)
{
    return 1 + 2 * c * (f32 ? 4 : 8);
}

static void put_pair(unsigned char **p, int f32, const double *mean, const double *var, size_t c)
{
    *(*p)++ = (unsigned char)(f32 ? NSD_STEP_ARRAYS_F32 : NSD_STEP_ARRAYS_F64);
    if (f32) {
        put_floats(p, mean, c);
        put_floats(p, var, c);
    } else {
        put_doubles(p, mean, c);
        put_doubles(p, var, c);
    }
}

static void put_name(unsigned char **p, const char *s)
{
    size_t n = strlen(s);
    **p = (unsigned char)n;
    memcpy(*p + 1, s, n);
    *p += 1 + n;
}

/* A reader over a row body; 'ok' drops to 0 on any overrun. */
typedef struct reader_s {
    const unsigned char *p, *end;
    int ok;
} reader_t;

static uint64_t get_u64(reader_t *r)
{
    if (!r->ok || r->end - r->p < 8) {
        r->ok = 0;
        return 0;
    }
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v |= (uint64_t)r->p[i] << (8 * i);
    r->p += 8;
    return v;
}

static void get_name(reader_t *r, char *dst)
{
    size_t n = r->ok && r->p < r->end ? *r->p : 0;
    if (!r->ok || r->p >= r->end || n == 0 || n > NS_NAME_MAX || (size_t)(r->end - r->p) < 1 + n) {
        r->ok = 0;
        dst[0] = '\0';
        return;
    }
    memcpy(dst, r->p + 1, n);
    dst[n] = '\0';
    r->p += 1 + n;
}

/* Doubles decoded into 'dst' (n of them). */
static void get_doubles(reader_t *r, double *dst, size_t n)
{
    if (HOST_LE) {
        if (!r->ok || (size_t)(r->end - r->p) / 8 < n) {
            r->ok = 0;
            return;
        }
        memcpy(dst, r->p, n * 8);
        r->p += n * 8;
        return;
    }
    for (size_t i = 0; i < n && r->ok; i++) {
        uint64_t bits = get_u64(r);
        memcpy(&dst[i], &bits, sizeof(bits));
    }
}

/* float32 values widened into 'dst' (n of them). */
static void get_floats(reader_t *r, double *dst, size_t n)
{
    if (!r->ok || (size_t)(r->end - r->p) / 4 < n) {
        r->ok = 0;
        return;
    }
    for (size_t i = 0; i < n; i++, r->p += 4) {
        uint32_t bits = (uint32_t)r->p[0] | (uint32_t)r->p[1] << 8 | (uint32_t)r->p[2] << 16 |
                        (uint32_t)r->p[3] << 24;
        float f;
        memcpy(&f, &bits, sizeof(f));
        dst[i] = f;
    }
}

/* 2 * c values (mean then var) as version 'v' stores them: doubles in
 * version 1; an encoding byte, then doubles or floats, in version 2. */
static void get_pair(reader_t *r, uint64_t v, double *dst, size_t c)
{
    int enc = NSD_STEP_ARRAYS_F64;
    if (v >= 2)
        enc = r->ok && r->p < r->end ? *r->p++ : (r->ok = 0);
    if (enc == NSD_STEP_ARRAYS_F64)
        get_doubles(r, dst, 2 * c);
    else if (enc == NSD_STEP_ARRAYS_F32)
        get_floats(r, dst, 2 * c);
    else
        r->ok = 0;
}

/* A domain's arrays equal the pooled ones bit for bit (one domain at the
 * step: the same arrivals combined in the same order); stored once. */
static int same_as_pooled(const nsd_step_t *rec, const nsd_step_domain_t *d)
{
    size_t c = rec->channels;
    if (c > 0 && d->count == rec->count && d->mean == rec->mean && d->var == rec->var)
        return 1; /* the arrays are shared */
    return c > 0 && d->count == rec->count && memcmp(d->mean, rec->mean, c * 8) == 0 &&
           memcmp(d->var, rec->var, c * 8) == 0;
}

unsigned char *nsd_step_encode(const nsd_step_t *rec, size_t *len)
{
    size_t c = rec->channels;
    int pooled_f32 = c > 0 && all_float32(rec->mean, c) && all_float32(rec->var, c);
    /* Per domain: 0 own arrays in doubles, 1 as pooled, 2 own in floats. */
    unsigned char kind_small[8], *kind = kind_small;
    if (rec->n_domains > sizeof(kind_small) && (kind = malloc(rec->n_domains)) == NULL)
        return NULL;
    size_t n = 9 * 8 + (c > 0 ? pair_bytes(pooled_f32, c) : 0);
    for (size_t i = 0; i < rec->n_domains; i++) {
        const nsd_step_domain_t *d = &rec->domains[i];
        kind[i] = same_as_pooled(rec, d)                                         ? 1
                  : (c > 0 && all_float32(d->mean, c) && all_float32(d->var, c)) ? 2
                                                                                 : 0;
        n +=
            1 + strlen(d->name) + 8 + 1 + (c > 0 && kind[i] != 1 ? pair_bytes(kind[i] == 2, c) : 0);
    }
    unsigned char *buf = malloc(n), *p = buf;
    if (buf != NULL) {
        put_u64(&p, NSD_STEP_BLOB_VERSION);
        put_u64(&p, rec->step);
        put_u64(&p, rec->update);
        put_u64(&p, (uint64_t)rec->complete);
        put_u64(&p, rec->workers);
        put_u64(&p, (uint64_t)rec->first_pending);
        put_u64(&p, c);
        put_u64(&p, rec->count);
        put_u64(&p, rec->n_domains);
        if (c > 0)
            put_pair(&p, pooled_f32, rec->mean, rec->var, c);
        for (size_t i = 0; i < rec->n_domains; i++) {
            const nsd_step_domain_t *d = &rec->domains[i];
            put_name(&p, d->name);
            put_u64(&p, d->count);
            *p++ = (unsigned char)(kind[i] == 1);
            if (c > 0 && kind[i] != 1)
                put_pair(&p, kind[i] == 2, d->mean, d->var, c);
        }
        *len = n;
    }
    if (kind != kind_small)
        free(kind);
    return buf;
}

/* One domain of a STEP body, appended to 's'. */
static void decode_domain(reader_t *r, uint64_t v, nsd_step_t *s)
{
    size_t c = s->channels;
    char name[NS_NAME_MAX + 1];
    get_name(r, name);
    uint64_t count = get_u64(r);
    int same = r->ok && r->p < r->end ? *r->p++ : (r->ok = 0);
    if (!r->ok || same > 1 || (same == 1 && c == 0)) {
        r->ok = 0;
        return;
    }
    nsd_step_domain_t *d =
        nsd_step_add_domain(s, NSD_STEP_NO_INDEX, name, count, same ? s->mean : NULL, NULL);
    if (d == NULL) {
        r->ok = 0;
        return;
    }
    if (c > 0 && !same)
        get_pair(r, v, d->mean, c);
}

int nsd_step_decode(const void *body, size_t len, const char *layer, nsd_step_t **dst)
{
    *dst = NULL;
    reader_t r = {body, (const unsigned char *)body + len, body != NULL};
    uint64_t v = get_u64(&r);
    if (v < 1 || v > NSD_STEP_BLOB_VERSION || strlen(layer) > NS_NAME_MAX)
        return NS_EINVAL;
    uint64_t step = get_u64(&r), update = get_u64(&r), complete = get_u64(&r);
    uint64_t workers = get_u64(&r), first_pending = get_u64(&r);
    uint64_t c = get_u64(&r), count = get_u64(&r), nd = get_u64(&r);
    /* Sizes must fit in what is left of the body. */
    if (!r.ok || c > (uint64_t)(r.end - r.p) / 8 || nd > (uint64_t)(r.end - r.p) / 10)
        return NS_EINVAL;
    nsd_step_t *s = nsd_step_create(layer, step, (size_t)c);
    if (s == NULL)
        return NS_ENOMEM;
    s->update = (unsigned)update;
    s->complete = (int)complete;
    s->workers = (uint32_t)workers;
    s->first_pending = (int64_t)first_pending;
    s->count = count;
    if (c > 0)
        get_pair(&r, v, s->mean, (size_t)c);
    for (uint64_t i = 0; i < nd && r.ok; i++)
        decode_domain(&r, v, s);
    if (!r.ok || r.p != r.end) {
        nsd_step_free(s);
        return NS_EINVAL;
    }
    *dst = s;
    return 0;
}
