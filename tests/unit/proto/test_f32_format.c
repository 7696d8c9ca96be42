/* test_f32_format.c - shortest round-trip text of a float32 (f32_format.c):
 * strtof reads it back bit for bit, it has at most 9 digits, no shorter text
 * reads back (found by trying every precision with snprintf), it is the
 * nearest of its length, jansson reads it as a JSON number, and its digits
 * and layout are those of an exact 192-bit computation (f32_format_exact.h)
 * for whole binades, both ends and a sample of every binade, and random
 * floats. NS_F32_EXHAUSTIVE=1 compares every float32 (a few minutes). */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "../../../proto/src/util/f32.h"
#include "f32_format_exact.h"
#include "harness.h"

/* Significant digits of a decimal: leading and trailing zeros do not count. */
static int significant_digits(const char *s)
{
    char d[32];
    size_t n = 0;
    for (; *s && *s != 'e'; s++)
        if (*s >= '0' && *s <= '9' && n < sizeof(d))
            d[n++] = *s;
    size_t a = 0;
    while (a < n && d[a] == '0')
        a++;
    while (n > a && d[n - 1] == '0')
        n--;
    return (int)(n - a);
}

/* (a) strtof reads it back, (b) at most 9 digits, valid text. */
static void check_round_trip(float f, char *out)
{
    char text[NS__F32_FORMAT_MAX + 8];
    memset(text, 'x', sizeof(text));
    size_t n = ns__f32_format(text, f);
    CHECK(n < NS__F32_FORMAT_MAX && text[n] == '\0' && strlen(text) == n, "%a: length %zu",
          (double)f, n);
    float back = strtof(text, NULL);
    CHECK(bits_of(back) == bits_of(f), "%a (%08x) -> \"%s\" -> %08x", (double)f,
          (unsigned)bits_of(f), text, (unsigned)bits_of(back));
    CHECK(significant_digits(text) <= 9, "%a -> \"%s\"", (double)f, text);
    /* JSON grammar, plainly: -?(0|[1-9]d*)(.d+)?(e-?d+)? */
    const char *p = text + (text[0] == '-');
    CHECK(*p >= '0' && *p <= '9' && !(p[0] == '0' && p[1] >= '0' && p[1] <= '9'), "\"%s\"", text);
    while (*p >= '0' && *p <= '9')
        p++;
    if (*p == '.') {
        CHECK(p[1] >= '0' && p[1] <= '9', "\"%s\"", text);
        for (p++; *p >= '0' && *p <= '9';)
            p++;
    }
    if (*p == 'e') {
        p += 1 + (p[1] == '-');
        CHECK(*p >= '1' && *p <= '9', "\"%s\"", text);
        while (*p >= '0' && *p <= '9')
            p++;
    }
    CHECK(*p == '\0', "\"%s\"", text);
    if (out)
        memcpy(out, text, n + 1);
}

/* (c) shortest and nearest: for each precision n, the n-digit decimals next
 * to the float are M-1, M, M+1 with M from snprintf's correctly rounded %.*e;
 * the first n where one reads back is the shortest length, and the output
 * must have that length and be no farther from the float than any of them. */
static void check_shortest(float f)
{
    char out[NS__F32_FORMAT_MAX + 8], t[64];
    check_round_trip(f, out);
    if (f == 0)
        return;
    long double v = f;
    for (int n = 1; n <= 9; n++) {
        snprintf(t, sizeof(t), "%.*e", n - 1, (double)fabsf(f));
        long long m = 0;
        for (const char *p = t; *p != 'e'; p++)
            if (*p != '.')
                m = m * 10 + (*p - '0');
        int p10 = atoi(strchr(t, 'e') + 1) - (n - 1);
        long double best = -1;
        for (long long c = m - 1; c <= m + 1; c++) {
            snprintf(t, sizeof(t), "%s%llde%d", f < 0 ? "-" : "", c, p10);
            if (c > 0 && strtof(t, NULL) == f) {
                long double dist = fabsl(strtold(t, NULL) - v);
                if (best < 0 || dist < best)
                    best = dist;
            }
        }
        if (best < 0)
            continue;
        CHECK(significant_digits(out) == n, "%a: \"%s\" but %d digits suffice", (double)f, out, n);
        long double mine = fabsl(strtold(out, NULL) - v);
        CHECK(mine <= best * (1 + 1e-15L), "%a: \"%s\" is not the nearest", (double)f, out);
        return;
    }
    ck_abort_msg("%a: no decimal of 9 digits or fewer reads back", (double)f);
}

/* Expected texts written by hand from the values' decimal expansions. */
START_TEST(known_texts)
{
    static const struct {
        uint32_t bits;
        const char *text;
    } cases[] = {
        {0x00000000u, "0"},
        {0x80000000u, "-0"},
        {0x3f800000u, "1"},
        {0xbf800000u, "-1"},
        {0x3dcccccdu, "0.1"},
        {0x3e99999au, "0.3"},
        {0x40200000u, "2.5"},
        {0x42c80000u, "100"},
        {0x4b800000u, "16777216"},
        {0x4ceb79a3u, "123456790"}, /* 123456792: 8 digits suffice */
        {0x4e6e6b28u, "1e9"},
        {0x501502f9u, "1e10"},
        {0x38d1b717u, "0.0001"},
        {0x3727c5acu, "1e-5"},
        {0x00000001u, "1e-45"}, /* 1.40129846e-45 */
        {0x00000005u, "7e-45"},
        {0x007fffffu, "1.1754942e-38"},
        {0x00800000u, "1.1754944e-38"}, /* FLT_MIN */
        {0x7f7fffffu, "3.4028235e38"},  /* FLT_MAX */
        {0x7e967699u, "1e38"},
        /* exact ties between two shortest texts: 3/2048 = 0.00146484375 and
         * 19/1024 = 0.0185546875; the even last digit wins */
        {0x3ac00000u, "0.0014648438"},
        {0x3c980000u, "0.018554688"},
        {0x7f800000u, "null"},
        {0x7fc00000u, "null"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char text[NS__F32_FORMAT_MAX];
        ns__f32_format(text, float_of(cases[i].bits));
        CHECK(strcmp(text, cases[i].text) == 0, "%08x: \"%s\", want \"%s\"",
              (unsigned)cases[i].bits, text, cases[i].text);
    }
}
END_TEST

START_TEST(powers_of_two_and_edges)
{
    for (int e = -149; e <= 127; e++) {
        check_shortest(ldexpf(1.0f, e));
        check_shortest(-ldexpf(1.0f, e));
        check_shortest(nextafterf(ldexpf(1.0f, e), 0));
        check_shortest(nextafterf(ldexpf(1.0f, e), INFINITY));
    }
    for (uint32_t u = 0; u < 20000; u++) { /* subnormals, then the top */
        check_shortest(float_of(u));
        check_shortest(float_of(0x7f7fffffu - u));
        check_shortest(float_of(0x00800000u - 10000 + u));
    }
    /* every power of ten float32 can hold, and its neighbours */
    for (int k = -45; k <= 38; k++) {
        char t[16];
        snprintf(t, sizeof(t), "1e%d", k);
        float f = strtof(t, NULL);
        check_shortest(f);
        check_shortest(nextafterf(f, 0));
        check_shortest(nextafterf(f, INFINITY));
    }
}
END_TEST

START_TEST(random_round_trip)
{
    uint64_t rng = ns_test_seed() ^ 0xd1b54a32d192ed03u;
    for (int i = 0; i < 4000000; i++) {
        float f = float_of((uint32_t)ns_test_rand(&rng));
        if (isfinite(f))
            check_round_trip(f, NULL);
    }
    /* values a BatchNorm layer reports: near 0 and near 1 */
    for (int i = 0; i < 500000; i++) {
        float f = (float)(ns_test_normal(&rng) * (i % 2 ? 1e-3 : 1.0));
        check_round_trip(f, NULL);
    }
}
END_TEST

START_TEST(random_shortest)
{
    uint64_t rng = ns_test_seed() ^ 0x8cb92ba72f3d8dd7u;
    for (int i = 0; i < 200000; i++) {
        float f = float_of((uint32_t)ns_test_rand(&rng));
        if (isfinite(f))
            check_shortest(f);
    }
}
END_TEST

/* jansson, an independent parser, reads every text as a JSON number. */
START_TEST(valid_json)
{
    uint64_t rng = ns_test_seed() ^ 0x5851f42d4c957f2du;
    char doc[64];
    for (int i = 0; i < 20000; i++) {
        float f = float_of((uint32_t)ns_test_rand(&rng) & (i % 2 ? 0xffffffffu : 0x807fffffu));
        if (!isfinite(f))
            continue;
        doc[0] = '[';
        size_t n = ns__f32_format(doc + 1, f);
        memcpy(doc + 1 + n, "]", 2);
        json_error_t err;
        json_t *v = json_loads(doc, 0, &err);
        CHECK(v && json_is_number(json_array_get(v, 0)), "%s: %s", doc, err.text);
        json_decref(v);
    }
}
END_TEST

/* The reference text of a float: exact_shortest()'s digits laid out as the
 * contract says, "%.9g"'s choice of notation written out plainly. */
static void reference_text(float value, char *dst, size_t cap)
{
    uint32_t bits = bits_of(value), mag = bits & 0x7fffffffu;
    const char *sign = bits >> 31 ? "-" : "";
    if (mag == 0) {
        snprintf(dst, cap, "%s0", sign);
        return;
    }
    int k;
    uint32_t f = exact_shortest(mag, &k);
    while (f % 10 == 0) {
        f /= 10;
        k++;
    }
    static const char zeros[] = "00000000";
    char d[16];
    int n = snprintf(d, sizeof(d), "%u", (unsigned)f);
    int e10 = k + n - 1;                     /* the exponent of the leading digit */
    if (e10 >= 0 && e10 < 9 && n <= e10 + 1) /* an integer */
        snprintf(dst, cap, "%s%s%.*s", sign, d, e10 + 1 - n, zeros);
    else if (e10 >= 0 && e10 < 9)
        snprintf(dst, cap, "%s%.*s.%s", sign, e10 + 1, d, d + e10 + 1);
    else if (e10 < 0 && e10 >= -4)
        snprintf(dst, cap, "%s0.%.*s%s", sign, -e10 - 1, zeros, d);
    else
        snprintf(dst, cap, "%s%c%s%se%d", sign, d[0], n > 1 ? "." : "", d + 1, e10);
}

/* ns__f32_format() and ns__f32_put() give the reference text; put writes
 * nothing past its room. */
static void check_exact(uint32_t bits)
{
    float f = float_of(bits);
    char mine[NS__F32_FORMAT_MAX], ref[64], put[NS__F32_PUT_ROOM + 16];
    ns__f32_format(mine, f);
    reference_text(f, ref, sizeof(ref));
    CHECK(strcmp(mine, ref) == 0, "%08x: \"%s\", the exact computation gives \"%s\"",
          (unsigned)bits, mine, ref);
    memset(put, '#', sizeof(put));
    size_t n = ns__f32_put(put, f);
    CHECK(n == strlen(ref) && memcmp(put, ref, n) == 0, "%08x: put \"%.*s\", exact \"%s\"",
          (unsigned)bits, (int)(n < 32 ? n : 32), put, ref);
    CHECK(put[NS__F32_PUT_ROOM] == '#', "%08x: put wrote past its room", (unsigned)bits);
}

/* Every float of the binades BatchNorm statistics live in and of the
 * subnormals, every binade's ends and a sample of its inside, and random
 * bit patterns: the same text as the exact computation. */
START_TEST(same_as_exact)
{
    for (uint32_t u = 0; u < 0x00800000u; u++) /* every subnormal */
        check_exact(u);
    for (uint32_t u = 0x3f000000u; u < 0x40000000u; u++) /* [0.5, 2) */
        check_exact(u);
    uint64_t rng = ns_test_seed() ^ 0x2545f4914f6cdd1du;
    for (uint32_t e = 1; e < 255; e++) /* every binade: both ends, then a sample */
        for (uint32_t i = 0; i < 3 * 1024; i++) {
            uint32_t t = i < 1024 ? i : i < 2048 ? 0x7fffffu - (i - 1024)
                                                 : (uint32_t)ns_test_rand(&rng) & 0x7fffffu;
            check_exact(e << 23 | t);
            check_exact(0x80000000u | e << 23 | t);
        }
    for (int i = 0; i < 4000000; i++) {
        uint32_t bits = (uint32_t)ns_test_rand(&rng);
        if ((bits & 0x7f800000u) != 0x7f800000u)
            check_exact(bits);
    }
    const char *all = getenv("NS_F32_EXHAUSTIVE");
    if (all != NULL && strcmp(all, "1") == 0)
        for (uint64_t u = 0; u < 0x7f800000u; u++) {
            check_exact((uint32_t)u);
            check_exact(0x80000000u | (uint32_t)u);
        }
}
END_TEST

/* The reference text of a double served as float32: beyond float32's
 * range or NaN it is null, otherwise the float it rounds to. */
static void reference_served(double d, char *dst, size_t cap)
{
    if (d != d || d > FLT_MAX || d < -FLT_MAX)
        snprintf(dst, cap, "null");
    else
        reference_text((float)d, dst, cap);
}

/* ns__f32_put_list(): the reference texts joined by commas, for lists of
 * every length up to 40 (random floats of every binade, doubles between
 * floats, beyond float32's range, infinities, NaN, zeros, powers of two,
 * mixed in the groups of four the AVX2 path takes), nothing written past
 * the room it is given. check-units runs it with NS_SIMD=scalar too. */
START_TEST(list_same_as_exact)
{
    enum { MAX_N = 40 };
    uint64_t rng = ns_test_seed() ^ 0x9e3779b97f4a7c15u;
    double src[MAX_N];
    char out[MAX_N * (1 + NS__F32_FORMAT_MAX) + NS__F32_PUT_ROOM + 16];
    char ref[MAX_N * 32], one[64];
    for (int round = 0; round < 20000; round++) {
        size_t n = (size_t)round % (MAX_N + 1);
        for (size_t i = 0; i < n; i++) {
            uint64_t r = ns_test_rand(&rng);
            switch (r % 8) {
            case 0: /* beyond float32's range, some by less than half its last gap */
                src[i] = (r >> 8) % 3 == 0   ? 1e39 * (double)(r >> 40)
                         : (r >> 8) % 3 == 1 ? -3.5e38
                                             : FLT_MAX * (1 + 0x1p-30) * ((r >> 9) % 2 ? 1 : -1);
                break;
            case 1:
                src[i] = (r >> 8) % 3 == 0 ? INFINITY : (r >> 8) % 3 == 1 ? -INFINITY : NAN;
                break;
            case 2: /* zeros, powers of two (their gap below is half the one above) */
                src[i] = (r >> 8) % 4 == 0   ? 0.0
                         : (r >> 8) % 4 == 1 ? -0.0
                                             : float_of((uint32_t)(r >> 16) & 0xff800000u);
                break;
            case 3:
                src[i] = ((double)(r >> 11) / 9007199254740992.0 - 0.5) * 3.0;
                break;
            default: {
                uint32_t bits = (uint32_t)(r >> 16);
                if ((bits & 0x7f800000u) == 0x7f800000u)
                    bits &= 0xbfffffffu; /* a finite float */
                src[i] = float_of(bits);
            }
            }
        }
        size_t len = 0;
        ref[0] = '\0';
        for (size_t i = 0; i < n; i++) {
            reference_served(src[i], one, sizeof(one));
            len += (size_t)snprintf(ref + len, sizeof(ref) - len, "%s%s", i ? "," : "", one);
        }
        size_t room = n * (1 + NS__F32_FORMAT_MAX) + NS__F32_PUT_ROOM;
        memset(out, '#', sizeof(out));
        char *end = ns__f32_put_list(out, src, n);
        CHECK((size_t)(end - out) == len && memcmp(out, ref, len) == 0,
              "list of %zu: \"%.*s\", the references give \"%s\"", n,
              (int)(end - out < 0 ? 0 : end - out), out, ref);
        CHECK(out[room] == '#', "list of %zu wrote past its room", n);
    }
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("f32_format");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, known_texts);
    tcase_add_test(tc, powers_of_two_and_edges);
    tcase_add_test(tc, random_round_trip);
    tcase_add_test(tc, random_shortest);
    tcase_add_test(tc, valid_json);
    tcase_add_test(tc, same_as_exact);
    tcase_add_test(tc, list_same_as_exact);
    suite_add_tcase(s, tc);
    return s;
}

NS_TEST_MAIN(make_suite)
