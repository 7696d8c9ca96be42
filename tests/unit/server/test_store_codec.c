/* test_store_codec.c - the STEP row body: every step decodes to the same
 * bits it was encoded from, float32-exact arrays take 4 bytes a value and
 * others 8, a version 1 body built here byte by byte (the layout an earlier
 * release wrote) still decodes, and damaged bodies are refused. */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "registry/step.h"
#include "store/store_codec.h"

static uint64_t rng;

/* A double that is not a float32 widened (53 random mantissa bits). */
static double wide_double(void)
{
    double x = (double)(ns_test_rand(&rng) >> 11) * 0x1p-53 * 4.0 - 2.0;
    return (double)(float)x == x ? x + 0x1p-40 : x;
}

/* A float32 widened, signs and zeros included. */
static double float_double(void)
{
    uint64_t r = ns_test_rand(&rng);
    if (r % 17 == 0)
        return r % 2 ? -0.0 : 0.0;
    return (double)(float)((double)(int32_t)(r >> 32) * 0x1p-20);
}

static void fill(double *dst, size_t n, int f32)
{
    for (size_t i = 0; i < n; i++)
        dst[i] = f32 ? float_double() : wide_double();
}

static int same_bits(const double *a, const double *b, size_t n)
{
    return memcmp(a, b, n * sizeof(double)) == 0;
}

/* Encode, decode, compare everything; @return the body's length. */
static size_t round_trip(const nsd_step_t *s)
{
    size_t len = 0;
    unsigned char *body = nsd_step_encode(s, &len);
    ck_assert_ptr_nonnull(body);
    nsd_step_t *d = NULL;
    ck_assert_int_eq(nsd_step_decode(body, len, s->layer, &d), 0);
    ck_assert_uint_eq(d->step, s->step);
    ck_assert_uint_eq(d->update, s->update);
    ck_assert_int_eq(d->complete, s->complete);
    ck_assert_uint_eq(d->workers, s->workers);
    ck_assert_int_eq(d->first_pending, s->first_pending);
    ck_assert_uint_eq(d->channels, s->channels);
    ck_assert_uint_eq(d->count, s->count);
    ck_assert_uint_eq(d->n_domains, s->n_domains);
    size_t c = s->channels;
    if (c > 0) {
        ck_assert(same_bits(d->mean, s->mean, c));
        ck_assert(same_bits(d->var, s->var, c));
    }
    for (size_t i = 0; i < s->n_domains; i++) {
        ck_assert_str_eq(d->domains[i].name, s->domains[i].name);
        ck_assert_uint_eq(d->domains[i].count, s->domains[i].count);
        if (c > 0) {
            ck_assert(same_bits(d->domains[i].mean, s->domains[i].mean, c));
            ck_assert(same_bits(d->domains[i].var, s->domains[i].var, c));
        }
    }
    /* Every strict prefix is refused (the body is read to its last byte). */
    for (size_t cut = 0; cut < len; cut += 1 + cut / 7) {
        nsd_step_t *t = NULL;
        ck_assert_int_eq(nsd_step_decode(body, cut, s->layer, &t), NS_EINVAL);
        ck_assert_ptr_null(t);
    }
    nsd_step_free(d);
    free(body);
    return len;
}

static nsd_step_t *make_step(size_t c, int pooled_f32)
{
    nsd_step_t *s = nsd_step_create("layer1.0.bn1", 1234567, c);
    ck_assert_ptr_nonnull(s);
    s->update = 3;
    s->complete = 1;
    s->workers = 4;
    s->first_pending = 1234500;
    s->count = 802816;
    fill(s->mean, c, pooled_f32);
    fill(s->var, c, pooled_f32);
    return s;
}

/* Header (9 x 8 bytes), then per array pair an encoding byte and 2C values. */
START_TEST(test_sizes_follow_the_values)
{
    rng = ns_test_seed();
    const size_t c = 256;
    for (int f32 = 0; f32 <= 1; f32++) {
        nsd_step_t *s = make_step(c, f32);
        ck_assert_ptr_nonnull(nsd_step_add_domain(s, 0, "default", s->count, s->mean, NULL));
        size_t len = round_trip(s);
        ck_assert_uint_eq(len, 72 + 1 + 2 * c * (f32 ? 4 : 8) + (1 + 7 + 8 + 1));
        nsd_step_free(s);
    }
    /* One value that is not a float32 keeps the whole pair in doubles. */
    nsd_step_t *s = make_step(c, 1);
    s->var[c - 1] = wide_double();
    ck_assert_uint_eq(round_trip(s), 72 + 1 + 2 * c * 8);
    nsd_step_free(s);
}
END_TEST

/* Domains: as pooled, own doubles, own floats; no arrays at all. */
START_TEST(test_domains_round_trip)
{
    rng = ns_test_seed();
    const size_t c = 97;
    nsd_step_t *s = make_step(c, 0);
    double own[2 * 97];
    fill(own, 2 * c, 1);
    ck_assert_ptr_nonnull(nsd_step_add_domain(s, 0, "photo", 11, own, own + c));
    fill(own, 2 * c, 0);
    ck_assert_ptr_nonnull(nsd_step_add_domain(s, 1, "sketch", 22, own, own + c));
    ck_assert_ptr_nonnull(nsd_step_add_domain(s, 2, "x", s->count, s->mean, NULL));
    round_trip(s);
    nsd_step_free(s);

    nsd_step_t *e = nsd_step_create("empty", 3, 0);
    ck_assert_ptr_nonnull(e);
    ck_assert_ptr_nonnull(nsd_step_add_domain(e, 0, "default", 0, NULL, NULL));
    ck_assert_uint_eq(round_trip(e), 72 + 1 + 7 + 8 + 1);
    nsd_step_free(e);
}
END_TEST

static void le64(unsigned char **p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        *(*p)++ = (unsigned char)(v >> (8 * i));
}

static void le_double(unsigned char **p, double x)
{
    uint64_t b;
    memcpy(&b, &x, sizeof(b));
    le64(p, b);
}

/* A version 1 body as an earlier release wrote it: no encoding bytes. */
START_TEST(test_reads_version_1)
{
    rng = ns_test_seed();
    enum { C = 5 };
    double mean[C], var[C], dmean[C], dvar[C];
    fill(mean, C, 0), fill(var, C, 0), fill(dmean, C, 0), fill(dvar, C, 1);
    unsigned char body[1024], *p = body;
    le64(&p, 1), le64(&p, 42), le64(&p, 1), le64(&p, 0), le64(&p, 2), le64(&p, (uint64_t)-1);
    le64(&p, C), le64(&p, 300), le64(&p, 2);
    for (int i = 0; i < C; i++)
        le_double(&p, mean[i]);
    for (int i = 0; i < C; i++)
        le_double(&p, var[i]);
    *p++ = 1, *p++ = 'a', le64(&p, 300), *p++ = 1;
    *p++ = 2, *p++ = 'b', *p++ = 'c', le64(&p, 7), *p++ = 0;
    for (int i = 0; i < C; i++)
        le_double(&p, dmean[i]);
    for (int i = 0; i < C; i++)
        le_double(&p, dvar[i]);
    nsd_step_t *s = NULL;
    ck_assert_int_eq(nsd_step_decode(body, (size_t)(p - body), "bn", &s), 0);
    ck_assert_uint_eq(s->step, 42);
    ck_assert_uint_eq(s->update, 1);
    ck_assert_int_eq(s->complete, 0);
    ck_assert_int_eq(s->first_pending, -1);
    ck_assert_uint_eq(s->count, 300);
    ck_assert(same_bits(s->mean, mean, C) && same_bits(s->var, var, C));
    ck_assert_uint_eq(s->n_domains, 2);
    ck_assert_str_eq(s->domains[0].name, "a");
    ck_assert(same_bits(s->domains[0].mean, mean, C));
    ck_assert_str_eq(s->domains[1].name, "bc");
    ck_assert_uint_eq(s->domains[1].count, 7);
    ck_assert(same_bits(s->domains[1].mean, dmean, C) && same_bits(s->domains[1].var, dvar, C));
    nsd_step_free(s);
    /* A version this build does not know is refused. */
    body[0] = 3;
    ck_assert_int_eq(nsd_step_decode(body, (size_t)(p - body), "bn", &s), NS_EINVAL);
    body[0] = 0;
    ck_assert_int_eq(nsd_step_decode(body, (size_t)(p - body), "bn", &s), NS_EINVAL);
}
END_TEST

/* An encoding byte other than 0 and 1 is refused. */
START_TEST(test_bad_encoding_refused)
{
    rng = ns_test_seed();
    nsd_step_t *s = make_step(8, 1);
    size_t len;
    unsigned char *body = nsd_step_encode(s, &len);
    ck_assert_ptr_nonnull(body);
    ck_assert_uint_eq(body[72], NSD_STEP_ARRAYS_F32);
    body[72] = 2;
    nsd_step_t *d = NULL;
    ck_assert_int_eq(nsd_step_decode(body, len, s->layer, &d), NS_EINVAL);
    ck_assert_ptr_null(d);
    free(body);
    nsd_step_free(s);
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("store_codec");
    TCase *tc = tcase_create("step_body");
    tcase_add_test(tc, test_sizes_follow_the_values);
    tcase_add_test(tc, test_domains_round_trip);
    tcase_add_test(tc, test_reads_version_1);
    tcase_add_test(tc, test_bad_encoding_refused);
    suite_add_tcase(s, tc);
    return s;
}

NS_TEST_MAIN(make_suite)
