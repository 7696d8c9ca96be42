/* test_f32_parse.c - JSON number text to float32 (f32_parse.c) against
 * glibc's strtof, which rounds correctly, on millions of generated decimals. */
#include <normstat/wire_errors.h>
#include <normstat/proto.h>

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../../proto/src/util/f32.h"
#include "harness.h"

/* The reference: strtof, with inf meaning "out of range" (NS_EVALUE). */
static void check_in_array(const char *text);
static void check_array_forms(const char *text);

static void check_text(const char *text)
{
    check_in_array(text);
    check_array_forms(text);
    float want = strtof(text, NULL), got = 12345.0f;
    int rc = ns__f32_parse(text, strlen(text), &got);
    if (isinf(want)) {
        CHECK(rc == NS_EVALUE && isinf(got) && signbit(got) == signbit(want),
              "\"%s\": rc %d, got %a, strtof %a", text, rc, (double)got, (double)want);
        return;
    }
    CHECK(rc == 0 && bits_of(got) == bits_of(want),
          "\"%s\": rc %d, got %a (%08x), strtof %a (%08x)", text, rc, (double)got,
          (unsigned)bits_of(got), (double)want, (unsigned)bits_of(want));
}

/* The same number followed by more of an array, as in a report (where the
 * parser reads whole blocks of bytes past the number): it stops at the
 * comma with the same value. */
static void check_in_array(const char *text)
{
    char longer[256];
    snprintf(longer, sizeof(longer), "%s,12345678901234567890]", text);
    const char *stop = NULL;
    int integral;
    float got = 12345.0f, alone = 54321.0f;
    int rc = ns__f32_parse_prefix(longer, longer + strlen(longer), &stop, &integral, &got);
    int rc_alone = ns__f32_parse(text, strlen(text), &alone);
    CHECK(rc == rc_alone && stop == longer + strlen(text) && bits_of(got) == bits_of(alone),
          "\"%s\" in an array: rc %d/%d, stopped after %td, got %a alone %a", text, rc, rc_alone,
          stop ? stop - longer : -1, (double)got, (double)alone);
}

/* What the array element 'text' reads as: strtof's value, an integer as
 * JSON decoders keep it ("-0" is 0; more than 18 digits may not fit int64:
 * refused), and a value beyond float32 refused. @return 1 with *want, or 0. */
static int array_expect(const char *text, float *want)
{
    float f = strtof(text, NULL);
    if (isinf(f))
        return 0;
    if (!strpbrk(text, ".eE")) {
        if (strlen(text) - (text[0] == '-') > 18)
            return 0;
        if (f == 0)
            f = 0.0f;
    }
    *want = f;
    return 1;
}

/* ns__f32_parse_array() over 'len' bytes of src, which must hold 'count'
 * copies of 'text' and end at 'close' (the byte after the ']'). */
static void check_array(const char *src, size_t len, const char *close, const char *text,
                        size_t count, const char *form)
{
    float want, got[4] = {0};
    int ok = array_expect(text, &want);
    const char *pos = src;
    size_t n = 99;
    int rc = ns__f32_parse_array(&pos, src + len, got, 4, &n);
    if (!ok) {
        CHECK(rc == -1, "\"%s\" %s: rc %d, refused by the reference", text, form, rc);
        return;
    }
    CHECK(rc == 1 && n == count && pos == close, "\"%s\" %s: rc %d n %zu stopped after %td", text,
          form, rc, n, pos - src);
    for (size_t i = 0; i < count; i++)
        CHECK(bits_of(got[i]) == bits_of(want), "\"%s\" %s [%zu]: %08x, strtof %08x", text, form, i,
              (unsigned)bits_of(got[i]), (unsigned)bits_of(want));
}

/* The number as an array element: followed by room (where a block of 16
 * bytes, or 48 for two numbers, is read at once), between whitespace, and
 * last in its buffer (an exact allocation, so reading past it is caught by
 * the sanitizers). */
static void check_array_forms(const char *text)
{
    char buf[400];
    int len = snprintf(buf, sizeof(buf), "%s,%s]%64s", text, text, "");
    check_array(buf, (size_t)len, buf + len - 64, text, 2, "with room");
    len = snprintf(buf, sizeof(buf), "%s ,\n\t%s\r\n]%64s", text, text, "");
    check_array(buf, (size_t)len, buf + len - 64, text, 2, "with whitespace");
    size_t exact_len = strlen(text) + 1;
    char *exact = malloc(exact_len);
    CHECK(exact != NULL, "out of memory");
    memcpy(exact, text, exact_len - 1);
    exact[exact_len - 1] = ']';
    check_array(exact, exact_len, exact + exact_len, text, 1, "at the end");
    free(exact);
}

/* Arrays as a report holds them: each element against strtof (one by one,
 * array_expect()), with room after the array and ending the buffer; the
 * number shapes the block path reads and those it leaves to the general
 * path (4 integer digits, more than 14 digits, 3-digit exponents,
 * subnormals, midpoints, overflow); and arrays that are not arrays of
 * numbers, which are refused. */
START_TEST(array_shapes_and_boundaries)
{
    /* a report's shapes, then one of each */
    static const char *const valid[] = {
        "0.71958822,-0.0388242528,1.23456789e-05,-1.5E+03,7,-0,-0.0,0e5,999,100.5",
        "\n\t0.71958822\r\n,\n-0.0388242528\n,1.25e-3 ,7 ",
        " 1.5 , -2.5 ",
        "1.5",
        "-1.5",
        "12.25",
        "-123.125",
        "1234.5",
        "0.123456789012",
        "0.1234567890123",
        "0.12345678901234",
        "-0.1234567890123456789",
        "1e5",
        "1E-05",
        "-1.5e+38",
        "1.5e-45",
        "7.1e-46",
        "1e-46",
        "3.4028235e38",
        "1.17549435e-38",
        "1.6777217e7",
        "-1.6777219e+7",
        "16777217",
        "1.0000000596046447753906251",
        "9.99999999e-5",
        "1e0",
        "1e-0",
        "0.0",
        "123456789012345678",
        "-123456789012345678",
        "5e-324",
    };
    for (size_t i = 0; i < sizeof(valid) / sizeof(valid[0]); i++) {
        /* the elements, one by one, as the reference reads them */
        char list[256], copy[256];
        snprintf(list, sizeof(list), "%s", valid[i]);
        float want[16];
        size_t count = 0;
        int ok = 1;
        for (char *save = NULL, *t = strtok_r(list, ",", &save); t; t = strtok_r(NULL, ",", &save))
            ok &= array_expect(t, &want[count++]);
        for (int room = 0; room < 2; room++) {
            int len = snprintf(copy, sizeof(copy), room ? "%s]%20s" : "%s]", valid[i], "");
            char *src = malloc((size_t)len);
            ck_assert_ptr_nonnull(src);
            memcpy(src, copy, (size_t)len);
            const char *pos = src;
            float got[16];
            size_t n = 99;
            int rc = ns__f32_parse_array(&pos, src + len, got, 16, &n);
            if (!ok) {
                CHECK(rc == -1, "[%s, room %d: rc %d, refused by the reference", valid[i], room,
                      rc);
            } else {
                CHECK(rc == 1 && n == count && pos == src + strlen(valid[i]) + 1,
                      "[%s, room %d: rc %d n %zu/%zu", valid[i], room, rc, n, count);
                for (size_t k = 0; k < count; k++)
                    CHECK(bits_of(got[k]) == bits_of(want[k]), "[%s, room %d [%zu]: %08x vs %08x",
                          valid[i], room, k, (unsigned)bits_of(got[k]), (unsigned)bits_of(want[k]));
            }
            free(src);
        }
    }
    /* not arrays of numbers (the text after the '['), and last one that is:
     * its ']' ends the array, and what follows is the caller's */
    static const char *const bad[] = {
        "]",
        " ]",
        "1,]",
        ",1]",
        "1 2]",
        "1,2",
        "1.5.2]",
        "1e5e1]",
        "1e5.5]",
        "-]",
        "1,-]",
        "01]",
        "-01.5]",
        "1.]",
        "1.e5]",
        ".5]",
        "+1]",
        "1e]",
        "1e+]",
        "[1]]",
        "1;2]",
        "1.5-2]",
        "1.5+]",
        "0x10]",
        "1,,2]",
        "\"1\"]",
        "null]",
        "1e100]",
        "-3.5e38]",
        "1e39]",
        "12345678901234567890]",
        "-1234567890123456789]",
        "1.5",
        "0.25,0.5e",
        "1.5]x",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        for (int room = 0; room < 2; room++) {
            char copy[128];
            int len = snprintf(copy, sizeof(copy), room ? "%s%20s" : "%s", bad[i], "");
            char *src = malloc((size_t)len + 1);
            ck_assert_ptr_nonnull(src);
            memcpy(src, copy, (size_t)len);
            const char *pos = src;
            float got[16];
            size_t n = 99;
            int rc = ns__f32_parse_array(&pos, src + len, got, 16, &n);
            int want = strcmp(bad[i], "1.5]x") == 0 ? 1 : -1;
            CHECK(rc == want, "[%s, room %d: rc %d", bad[i], room, rc);
            free(src);
        }
}
END_TEST

/* One element of a generated array: mostly the fixed-notation shapes read
 * two at a time (random floats as "%.9g" and the shortest form print them,
 * decimals a few units from a midpoint between floats, which the double
 * estimate cannot decide), and among them the shapes that stop a run
 * (exponents, integers, 4 integer digits, leading spaces, long fractions). */
static void array_element_text(uint64_t *rng, char *dst, size_t cap)
{
    uint64_t r = ns_test_rand(rng);
    unsigned kind = (unsigned)(r % 16);
    double unit = (double)(ns_test_rand(rng) >> 11) * 0x1p-53;
    const char *sign = r >> 8 & 1 ? "-" : "";
    if (kind < 6) { /* a float as clients print it, 1e-3 .. 1000 */
        snprintf(dst, cap, "%s%.9g", sign, (double)(float)(pow(10, unit * 6 - 3)));
    } else if (kind < 11) {
        /* the decimal of 14 or 15 significant digits nearest a midpoint
         * between floats (1 .. 1000, mostly below 10, where it may be within
         * a unit of a double of it) */
        float f = (float)(1 + unit * (kind < 9 ? 9 : 999)), g = nextafterf(f, INFINITY);
        double mid = ((double)f + (double)g) / 2;
        snprintf(dst, cap, "%s%.*f", sign, f >= 100 ? 11 : f >= 10 ? 12 : 13, mid);
    } else if (kind == 11) {
        snprintf(dst, cap, "%s%.9g", sign, (double)(float)(unit * 1e-4));
    } else if (kind == 12) {
        snprintf(dst, cap, "%s%u", sign, (unsigned)(r >> 20 & 0xfff));
    } else if (kind == 13) {
        snprintf(dst, cap, "%s%.4f", sign, 1000 + unit * 9000);
    } else if (kind == 14) {
        snprintf(dst, cap, " %s%.6f", sign, unit * 10);
    } else {
        snprintf(dst, cap, "%s%.17g", sign, (double)(float)unit);
    }
}

/* Long arrays of mixed elements, read with room for a random number of
 * elements at a time: each element strtof's value, whichever path took it
 * (pairs, a single one before another shape, the element-by-element loop);
 * the buffer ends at the array's ']' (the sanitizers catch reading past). */
START_TEST(array_runs_of_mixed_elements)
{
    uint64_t rng = ns_test_seed() ^ 0xbf58476d1ce4e5b9u;
    enum { ELEMENTS = 200, ROUNDS = 2000 };
    static char text[ELEMENTS * 40 + 2];
    static float want[ELEMENTS], got[ELEMENTS];
    for (int round = 0; round < ROUNDS; round++) {
        size_t len = 0;
        for (size_t i = 0; i < ELEMENTS; i++) {
            char element[40];
            array_element_text(&rng, element, sizeof(element));
            int ok = array_expect(element, &want[i]);
            CHECK(ok, "\"%s\": refused by the reference", element);
            len += (size_t)snprintf(text + len, sizeof(text) - len, "%s%s", i ? "," : "", element);
        }
        text[len++] = ']';
        char *src = malloc(len);
        ck_assert_ptr_nonnull(src);
        memcpy(src, text, len);
        const char *pos = src;
        size_t total = 0, n = 0;
        int rc = 0;
        while (rc == 0 && total < ELEMENTS) {
            size_t room = 1 + (size_t)(ns_test_rand(&rng) % 9);
            if (room > ELEMENTS - total)
                room = ELEMENTS - total;
            rc = ns__f32_parse_array(&pos, src + len, got + total, room, &n);
            CHECK(n <= room, "round %d: %zu written with room for %zu", round, n, room);
            total += n;
        }
        CHECK(rc == 1 && total == ELEMENTS && pos == src + len, "round %d: rc %d, %zu elements",
              round, rc, total);
        for (size_t i = 0; i < total && i < ELEMENTS; i++)
            CHECK(bits_of(got[i]) == bits_of(want[i]), "round %d [%zu]: %08x, strtof %08x", round,
                  i, (unsigned)bits_of(got[i]), (unsigned)bits_of(want[i]));
        free(src);
    }
}
END_TEST

/* Room for fewer elements than the array has: it stops after dst_cap, at
 * the next element, and goes on from there. */
START_TEST(array_in_parts)
{
    static const char text[] = "1.5,-2.5, 3.25e1,4,0.0625]                    ";
    const float want[] = {1.5f, -2.5f, 32.5f, 4.0f, 0.0625f};
    const char *end = text + sizeof(text) - 1, *pos = text;
    float got[5];
    size_t n = 99, total = 0;
    ck_assert_int_eq(ns__f32_parse_array(&pos, end, got, 0, &n), 0);
    ck_assert(n == 0 && pos == text);
    ck_assert_int_eq(ns__f32_parse_array(&pos, end, got, 2, &n), 0);
    total += n;
    ck_assert(n == 2 && pos == text + 9); /* at " 3.25e1" */
    ck_assert_int_eq(ns__f32_parse_array(&pos, end, got + total, 2, &n), 0);
    total += n;
    ck_assert_int_eq(ns__f32_parse_array(&pos, end, got + total, 2, &n), 1);
    total += n;
    ck_assert(total == 5 && pos == text + 26);
    for (int i = 0; i < 5; i++)
        ck_assert_uint_eq(bits_of(got[i]), bits_of(want[i]));
    /* exactly the room it needs */
    pos = text;
    ck_assert_int_eq(ns__f32_parse_array(&pos, end, got, 5, &n), 1);
    ck_assert(n == 5 && pos == text + 26);
    /* a bad element after a full part */
    static const char bad[] = "1,2,]";
    pos = bad;
    ck_assert_int_eq(ns__f32_parse_array(&pos, bad + 5, got, 2, &n), 0);
    ck_assert_int_eq(ns__f32_parse_array(&pos, bad + 5, got, 2, &n), -1);
}
END_TEST

/* Known answers: bit patterns from the binary32 layout by hand, or (the
 * decimals with many digits) by exact rational rounding with Python's
 * fractions module; neither conversion under comparison made them. */
/* The prefix form: where the number ends, whether it is an integer, and
 * the value strtof gives the number's text alone. */
START_TEST(prefix_stops_where_the_grammar_does)
{
    static const struct {
        const char *text;
        size_t number_len; /* 0: no number at the start */
        int integral;
    } cases[] = {
        {"0.5,", 3, 0},        {"-12]", 3, 1},         {"1e5 ", 3, 0},     {"1E+05}", 5, 0},
        {"-0.000001e-3x", 12, 0}, {"0.5.1", 3, 0},     {"1-2", 1, 1},      {"00", 1, 1},
        {"123456789012", 12, 1}, {"7", 1, 1},          {"-", 0, 0},        {".5", 0, 0},
        {"1.", 0, 0},          {"1e", 0, 0},           {"1e+", 0, 0},      {"x1", 0, 0},
        {"3.4028235e38,", 12, 0}, {"1.17549435e-38]", 14, 0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const char *t = cases[i].text;
        const char *stop = NULL;
        int integral = -1;
        float got = 0, want = 0;
        int rc = ns__f32_parse_prefix(t, t + strlen(t), &stop, &integral, &got);
        if (cases[i].number_len == 0) {
            ck_assert_msg(rc == NS_EINVAL, "%s: rc %d", t, rc);
            continue;
        }
        ck_assert_msg(rc == 0, "%s: rc %d", t, rc);
        ck_assert_msg(stop == t + cases[i].number_len, "%s: stopped after %td", t, stop - t);
        ck_assert_int_eq(integral, cases[i].integral);
        char copy[32];
        snprintf(copy, sizeof(copy), "%.*s", (int)cases[i].number_len, t);
        want = strtof(copy, NULL);
        ck_assert_msg(memcmp(&got, &want, sizeof(got)) == 0, "%s: %a, strtof %a", t, got, want);
    }
}
END_TEST

START_TEST(known_values)
{
    static const struct {
        const char *text;
        uint32_t bits;
    } cases[] = {
        {"0", 0x00000000u},
        {"-0", 0x80000000u},
        {"0e0", 0x00000000u},
        {"-0.0e-5", 0x80000000u},
        {"0.000", 0x00000000u},
        {"1", 0x3f800000u},
        {"0.1", 0x3dcccccdu},
        {"-2.5", 0xc0200000u},
        {"1e-45", 0x00000001u}, /* smallest subnormal 1.40129846e-45 */
        {"1.4e-45", 0x00000001u},
        {"7e-46", 0x00000000u},          /* below 2^-150 = 7.00649e-46: zero */
        {"7.1e-46", 0x00000001u},        /* above half the smallest subnormal */
        {"1.17549435e-38", 0x00800000u}, /* FLT_MIN */
        {"1.1754942e-38", 0x007fffffu},  /* largest subnormal */
        {"3.4028235e38", 0x7f7fffffu},   /* FLT_MAX, shortest form */
        {"3.4028234663852886e38", 0x7f7fffffu},
        {"340282356779733661637539395458142568447", 0x7f7fffffu}, /* 2^128-2^103-1 */
        {"16777217", 0x4b800000u},                                /* 2^24 + 1: tie, even is 2^24 */
        {"16777219", 0x4b800002u},                                /* tie, even is 2^24 + 4 */
        {"0.000000123", 0x340411fcu},
        {"1e-100000000000", 0x00000000u},
        {"12345678901234567890123456789e-20", 0x4ceb79a3u},
        /* 1 + 2^-24 is the midpoint of 1 and its successor; a hair above it
         * the double is the midpoint itself, so (float)strtod gives 1. */
        {"1.0000000596046447753906251", 0x3f800001u},
        {"1.0000000596046447753906249", 0x3f800000u},
        {"1.000000059604644775390625", 0x3f800000u}, /* the tie: even */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        float got;
        int rc = ns__f32_parse(cases[i].text, strlen(cases[i].text), &got);
        CHECK(rc == 0 && bits_of(got) == cases[i].bits, "\"%s\": rc %d, got %08x want %08x",
              cases[i].text, rc, (unsigned)bits_of(got), (unsigned)cases[i].bits);
        check_text(cases[i].text);
    }
}
END_TEST

START_TEST(overflow_and_syntax)
{
    static const char *const over[] = {"3.4028236e38",
                                       "-3.4028236e38",
                                       "1e39",
                                       "-1e39",
                                       "340282356779733661637539395458142568448", /* 2^128-2^103 */
                                       "1e100000000000"};
    for (size_t i = 0; i < sizeof(over) / sizeof(over[0]); i++) {
        float got;
        ck_assert_int_eq(ns__f32_parse(over[i], strlen(over[i]), &got), NS_EVALUE);
        CHECK(isinf(got) && (signbit(got) != 0) == (over[i][0] == '-'), "%s", over[i]);
    }
    static const char *const bad[] = {"",    "-",    "+1",  "01",    "1.",  ".5",  "1e",
                                      "1e+", "1 ",   " 1",  "0x1",   "inf", "nan", "1.5.",
                                      "--1", "1e5e", "-.1", "1E+-2", "00",  "1,5", "1e 5"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        float got;
        CHECK(ns__f32_parse(bad[i], strlen(bad[i]), &got) == NS_EINVAL, "\"%s\"", bad[i]);
    }
    /* Only 'src_len' bytes are read. */
    float got;
    ck_assert_int_eq(ns__f32_parse("2.5e1", 3, &got), 0);
    ck_assert(got == 2.5f);
    /* digits past 'src_len', where eight at a time would reach them */
    ck_assert_int_eq(ns__f32_parse("0.123456789012", 6, &got), 0);
    CHECK(bits_of(got) == bits_of(strtof("0.1234", NULL)), "%a", (double)got);
    ck_assert_int_eq(ns__f32_parse("12345678901234567890", 9, &got), 0);
    CHECK(bits_of(got) == bits_of(strtof("123456789", NULL)), "%a", (double)got);
}
END_TEST

static float random_finite(uint64_t *rng)
{
    for (;;) {
        float f = float_of((uint32_t)ns_test_rand(rng));
        if (isfinite(f))
            return f;
    }
}

/* Every float32 printed as C programs and Python print them. */
START_TEST(random_floats_printed)
{
    uint64_t rng = ns_test_seed() ^ 0x9e3779b97f4a7c15u;
    char text[64];
    for (int i = 0; i < 1000000; i++) {
        float f = random_finite(&rng);
        snprintf(text, sizeof(text), "%.9g", (double)f);
        check_text(text);
        snprintf(text, sizeof(text), "%.17g", (double)f); /* repr of float32 -> double */
        check_text(text);
        snprintf(text, sizeof(text), "%.*g", 1 + i % 8, (double)f);
        check_text(text);
    }
    /* The shortest round-trip form, found by trying precisions (sampled). */
    for (int i = 0; i < 100000; i++) {
        float f = random_finite(&rng);
        for (int prec = 1; prec <= 9; prec++) {
            snprintf(text, sizeof(text), "%.*g", prec, (double)f);
            if (strtof(text, NULL) == f)
                break;
        }
        check_text(text);
    }
}
END_TEST

/* Random decimals: 1..25 digits, a point anywhere (or none), leading zeros,
 * exponents -60..60, either sign; every case is valid JSON. */
START_TEST(random_decimals)
{
    uint64_t rng = ns_test_seed() ^ 0x2545f4914f6cdd1du;
    char text[128];
    for (int i = 0; i < 3000000; i++) {
        char *p = text;
        uint64_t r = ns_test_rand(&rng);
        int ndig = 1 + (int)(r % 25), point = (int)((r >> 8) % (uint64_t)(ndig + 1));
        int lead = (int)((r >> 16) % 8), style = (int)((r >> 20) % 4);
        if ((r >> 24) & 1)
            *p++ = '-';
        if (point == 0 || style == 0) { /* "0.000ddd" */
            *p++ = '0';
            *p++ = '.';
            for (int z = 0; z < lead; z++)
                *p++ = '0';
            point = -1;
        }
        for (int d = 0; d < ndig; d++) {
            if (d == point)
                *p++ = '.';
            uint64_t x = ns_test_rand(&rng);
            *p++ = (char)('0' + (d == 0 && point != -1 ? 1 + x % 9 : x % 10));
        }
        if (style != 3) {
            int e = (int)(ns_test_rand(&rng) % 121) - 60;
            p += snprintf(p, 16, "%s%d", style == 1 ? "E" : "e", e);
        }
        *p = '\0';
        check_text(text);
    }
}
END_TEST

/* Append the decimal digits of 'src' plus 'delta' (+1/-1) in the last place. */
static void bump_last(char *s, int delta)
{
    char *p = s + strlen(s) - 1;
    for (; p >= s; p--) {
        if (*p < '0' || *p > '9')
            continue;
        if (delta > 0 && *p == '9') {
            *p = '0';
            continue;
        }
        if (delta < 0 && *p == '0') {
            *p = '9';
            continue;
        }
        *p = (char)(*p + delta);
        return;
    }
}

/* The exact decimal value of a double (glibc prints it exactly), as
 * "d.ddd...e+X" without trailing zeros in the digits. */
static void exact_decimal(char *dst, size_t cap, double d)
{
    char buf[400];
    snprintf(buf, sizeof(buf), "%.200e", d);
    char *e = strchr(buf, 'e');
    char *q = e;
    while (q[-1] == '0')
        q--;
    if (q[-1] == '.')
        q--;
    snprintf(dst, cap, "%.*s%s", (int)(q - buf), buf, e);
}

/* Decimals at, just above and just below the midpoints between adjacent
 * floats: where rounding via double goes wrong. */
static void check_midpoints(uint32_t u)
{
    float f = float_of(u), g = nextafterf(f, INFINITY);
    if (!isfinite(f) || !isfinite(g))
        return;
    double mid = ((double)f + (double)g) / 2; /* exact: 25 significant bits */
    char exact[300], text[300];
    exact_decimal(exact, sizeof(exact), mid);
    check_text(exact);
    char *e = strchr(exact, 'e');
    size_t mant = (size_t)(e - exact);
    /* just above / below: append "0...01" or bump the last digit down and
     * append "9...9" */
    snprintf(text, sizeof(text), "%.*s%s000001%s", (int)mant, exact, strchr(exact, '.') ? "" : ".",
             e);
    check_text(text);
    snprintf(text, sizeof(text), "%.*s", (int)mant, exact);
    bump_last(text, -1);
    snprintf(text + strlen(text), sizeof(text) - strlen(text), "%s999999%s",
             strchr(exact, '.') ? "" : ".", e);
    check_text(text);
    /* +-1 in the last place of the exact digits, and of a 17-, 20- and 25-digit prefix */
    for (int k = 0; k < 4; k++) {
        static const size_t keep[] = {0, 18, 21, 26}; /* digits plus the point */
        size_t n = keep[k] && keep[k] < mant ? keep[k] : mant;
        for (int delta = -1; delta <= 1; delta += 2) {
            snprintf(text, sizeof(text), "%.*s", (int)n, exact);
            bump_last(text, delta);
            strcat(text, e);
            if (text[0] != '0' || text[1] != '.')
                check_text(text);
        }
    }
}

START_TEST(midpoints_and_boundaries)
{
    uint64_t rng = ns_test_seed() ^ 0x94d049bb133111ebu;
    for (int i = 0; i < 150000; i++)
        check_midpoints((uint32_t)ns_test_rand(&rng) & 0x7fffffffu);
    /* subnormals, the normal boundary, the top of the range */
    static const uint32_t around[] = {0x00000000u, 0x00800000u, 0x7f7fffffu, 0x3f800000u,
                                      0x4b800000u};
    char text[64];
    for (size_t a = 0; a < sizeof(around) / sizeof(around[0]); a++)
        for (int64_t d = -3000; d <= 3000; d++) {
            int64_t u = (int64_t)around[a] + d;
            if (u < 0 || u > 0x7f7fffff)
                continue;
            float f = float_of((uint32_t)u);
            check_midpoints((uint32_t)u);
            snprintf(text, sizeof(text), "%.9g", (double)f);
            check_text(text);
            snprintf(text, sizeof(text), "%.17g", (double)-f);
            check_text(text);
        }
}
END_TEST

/* Through the public decoder: report arrays get strtof's value even where
 * strtod then narrowing differs (a hair above the midpoint 1 + 2^-24), with
 * plain or escaped names and a 19-digit step. */
START_TEST(report_values_are_strtof)
{
    static const char *const bodies[] = {
        "{\"step\":1,\"worker\":0,\"layers\":{\"bn1\":{\"count\":2,"
        "\"mean\":[1.0000000596046447753906251,-0,-0.0,3.4028235e38],"
        "\"var\":[1.0000000596046447753906251,1,1,1]}}}",
        "{\"st\\u0065p\":1000000000000000000,\"worker\":0,\"layers\":{\"\\u0062n1\":{"
        "\"count\":2,\"mean\":[1.0000000596046447753906251,-0,-0.0,3.4028235e38],"
        "\"var\":[1.0000000596046447753906251,1,1,1]}}}",
    };
    for (size_t i = 0; i < sizeof(bodies) / sizeof(bodies[0]); i++) {
        ns_report_t *r = NULL;
        ns_error_detail_t err = {0};
        int rc = ns_report_decode_json(&r, bodies[i], strlen(bodies[i]), &err);
        CHECK(rc == 0, "body %zu: %d %s", i, rc, err.message);
        CHECK(r->n_layers == 1 && strcmp(r->layers[0].name, "bn1") == 0 &&
                  r->layers[0].channels == 4,
              "body %zu", i);
        const float *m = r->layers[0].mean;
        CHECK(bits_of(m[0]) == 0x3f800001u && bits_of(r->layers[0].var[0]) == 0x3f800001u,
              "body %zu: %08x", i, (unsigned)bits_of(m[0]));
        /* an integer -0 is jansson's integer 0; a real -0.0 keeps its sign */
        CHECK(bits_of(m[1]) == 0 && bits_of(m[2]) == 0x80000000u && bits_of(m[3]) == 0x7f7fffffu,
              "body %zu: %08x %08x %08x", i, (unsigned)bits_of(m[1]), (unsigned)bits_of(m[2]),
              (unsigned)bits_of(m[3]));
        ns_report_free(r);
    }
    /* beyond float32's range: 422 */
    const char *over = "{\"step\":1,\"worker\":0,\"layers\":{\"bn1\":{\"count\":2,"
                       "\"mean\":[3.4028236e38],\"var\":[1]}}}";
    ns_report_t *r = NULL;
    ns_error_detail_t err = {0};
    CHECK(ns_report_decode_json(&r, over, strlen(over), &err) == NS_EVALUE, "%s", err.message);
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("f32_parse");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, known_values);
    tcase_add_test(tc, prefix_stops_where_the_grammar_does);
    tcase_add_test(tc, overflow_and_syntax);
    tcase_add_test(tc, random_floats_printed);
    tcase_add_test(tc, random_decimals);
    tcase_add_test(tc, midpoints_and_boundaries);
    tcase_add_test(tc, report_values_are_strtof);
    tcase_add_test(tc, array_shapes_and_boundaries);
    tcase_add_test(tc, array_in_parts);
    tcase_add_test(tc, array_runs_of_mixed_elements);
    suite_add_tcase(s, tc);
    return s;
}

NS_TEST_MAIN(make_suite)
