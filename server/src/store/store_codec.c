/* store_codec.c - a finalized step as the body of a STEP log row and back
 * (see store_codec.h). */
#include "store_codec.h"

#include <stdlib.h>
#include <string.h>

static void put_u64(unsigned char **p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        (*p)[i] = (unsigned char)(v >> (8 * i));
    *p += 8;
}

static void put_doubles(unsigned char **p, const double *src, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint64_t bits;
        memcpy(&bits, &src[i], sizeof(bits));
        put_u64(p, bits);
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
    for (size_t i = 0; i < n && r->ok; i++) {
        uint64_t bits = get_u64(r);
        memcpy(&dst[i], &bits, sizeof(bits));
    }
}

/* A domain's arrays equal the pooled ones bit for bit (one domain at the
 * step: the same arrivals combined in the same order); stored once. */
static int same_as_pooled(const nsd_step_t *rec, const nsd_step_domain_t *d)
{
    size_t c = rec->channels;
    return c > 0 && d->count == rec->count && memcmp(d->mean, rec->mean, c * 8) == 0 &&
           memcmp(d->var, rec->var, c * 8) == 0;
}

unsigned char *nsd_step_encode(const nsd_step_t *rec, size_t *len)
{
    size_t c = rec->channels;
    size_t arrays = c > 0 ? 2 * c * 8 : 0;
    size_t n = 9 * 8 + arrays;
    for (size_t i = 0; i < rec->n_domains; i++)
        n += 1 + strlen(rec->domains[i].name) + 8 + 1 +
             (same_as_pooled(rec, &rec->domains[i]) ? 0 : arrays);
    unsigned char *buf = malloc(n), *p = buf;
    if (buf == NULL)
        return NULL;
    put_u64(&p, NSD_STEP_BLOB_VERSION);
    put_u64(&p, rec->step);
    put_u64(&p, rec->update);
    put_u64(&p, (uint64_t)rec->complete);
    put_u64(&p, rec->workers);
    put_u64(&p, (uint64_t)rec->first_pending);
    put_u64(&p, c);
    put_u64(&p, rec->count);
    put_u64(&p, rec->n_domains);
    if (c > 0) {
        put_doubles(&p, rec->mean, c);
        put_doubles(&p, rec->var, c);
    }
    for (size_t i = 0; i < rec->n_domains; i++) {
        put_name(&p, rec->domains[i].name);
        put_u64(&p, rec->domains[i].count);
        int same = same_as_pooled(rec, &rec->domains[i]);
        *p++ = (unsigned char)same;
        if (c > 0 && !same) {
            put_doubles(&p, rec->domains[i].mean, c);
            put_doubles(&p, rec->domains[i].var, c);
        }
    }
    *len = n;
    return buf;
}

/* One domain of a STEP body, appended to 's'. */
static void decode_domain(reader_t *r, nsd_step_t *s)
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
        get_doubles(r, d->mean, 2 * c);
}

int nsd_step_decode(const void *body, size_t len, const char *layer, nsd_step_t **dst)
{
    *dst = NULL;
    reader_t r = {body, (const unsigned char *)body + len, body != NULL};
    if (get_u64(&r) != NSD_STEP_BLOB_VERSION || strlen(layer) > NS_NAME_MAX)
        return NS_EINVAL;
    uint64_t step = get_u64(&r), update = get_u64(&r), complete = get_u64(&r);
    uint64_t workers = get_u64(&r), first_pending = get_u64(&r);
    uint64_t c = get_u64(&r), count = get_u64(&r), nd = get_u64(&r);
    /* Sizes must fit in what is left of the body. */
    if (!r.ok || c > (uint64_t)(r.end - r.p) / 16 || nd > (uint64_t)(r.end - r.p) / 10)
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
        get_doubles(&r, s->mean, 2 * (size_t)c);
    for (uint64_t i = 0; i < nd && r.ok; i++)
        decode_domain(&r, s);
    if (!r.ok || r.p != r.end) {
        nsd_step_free(s);
        return NS_EINVAL;
    }
    *dst = s;
    return 0;
}
