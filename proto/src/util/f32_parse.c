/* f32_parse.c - JSON number text to a correctly rounded float32.
 *
 * A report's arrays are float32 values that clients print as decimals (often
 * Python's repr of the float32 widened to double, 17 digits), so the value
 * meant is the float nearest the decimal: strtof(), not (float)strtod(),
 * which rounds twice and differs when the double lands on a midpoint between
 * two floats. Two ways:
 *  1. Up to 19 significant digits times a power of ten in double: at most a
 *     few units in the last place of a double away from the decimal, which
 *     rounds to the same float unless it is within those few units of a
 *     midpoint between floats (29 more bits make that about 1 in 10^7).
 *  2. Otherwise (near a midpoint, float subnormals, overflow) strtof on a
 *     copy of the token, in the "C" locale: glibc's strtof honours
 *     LC_NUMERIC, and although normstatd never calls setlocale, a program
 *     linking the library may.
 * The digits are read in one pass into a wrapping 64-bit integer, eight at a
 * time where eight follow, and a fraction after at most three integer
 * digits sixteen bytes at a time (SSE2). What that pass cannot finish (more
 * than 19 digits, rare: clients print at most 17; a value the double
 * estimate cannot decide) is parsed again digit by digit, keeping the first
 * 19 significant digits (parse_careful), off the common path.
 * A whole array (ns__f32_parse_array) is read in one loop without a call
 * per number: a number in the shape printed floats take ("%.9g", the
 * shortest form: at most 3 integer digits and 14 digits in all) is read
 * from one 16-byte block (parse_block), its digits as one integer and the
 * same double estimate; any other shape, or a value the estimate cannot
 * decide, goes through ns__f32_parse_prefix() as above, so each element
 * gets the same bits either way. Where libnscore chose its AVX2 kernels,
 * runs of fixed-notation numbers each followed by a comma are read two at
 * a time (f32_parse_avx2.c, the same digits and estimate), the loop here
 * taking the element it stops at. */
#include <float.h>
#include <locale.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__SSE2__) && defined(__x86_64__)
#include <emmintrin.h>
#define F32_SIXTEEN_DIGITS 1
#endif

#include <normstat/core.h>
#include <normstat/wire_errors.h>

#include "f32.h"

/* 10^-65 .. 10^38 as the nearest doubles: below 10^-65 every 19-digit
 * mantissa gives less than half the smallest float subnormal; from 10^39
 * every mantissa gives more than FLT_MAX. */
#define POW10_MIN (-65)
#define POW10_MAX 38
static const double pow10_d[] = {
    1e-65, 1e-64, 1e-63, 1e-62, 1e-61, 1e-60, 1e-59, 1e-58, 1e-57, 1e-56, 1e-55, 1e-54, 1e-53,
    1e-52, 1e-51, 1e-50, 1e-49, 1e-48, 1e-47, 1e-46, 1e-45, 1e-44, 1e-43, 1e-42, 1e-41, 1e-40,
    1e-39, 1e-38, 1e-37, 1e-36, 1e-35, 1e-34, 1e-33, 1e-32, 1e-31, 1e-30, 1e-29, 1e-28, 1e-27,
    1e-26, 1e-25, 1e-24, 1e-23, 1e-22, 1e-21, 1e-20, 1e-19, 1e-18, 1e-17, 1e-16, 1e-15, 1e-14,
    1e-13, 1e-12, 1e-11, 1e-10, 1e-9,  1e-8,  1e-7,  1e-6,  1e-5,  1e-4,  1e-3,  1e-2,  1e-1,
    1e0,   1e1,   1e2,   1e3,   1e4,   1e5,   1e6,   1e7,   1e8,   1e9,   1e10,  1e11,  1e12,
    1e13,  1e14,  1e15,  1e16,  1e17,  1e18,  1e19,  1e20,  1e21,  1e22,  1e23,  1e24,  1e25,
    1e26,  1e27,  1e28,  1e29,  1e30,  1e31,  1e32,  1e33,  1e34,  1e35,  1e36,  1e37,  1e38,
};

/* Units in the last place of the double estimate allowed away from a float
 * midpoint: the estimate's error is at most 3.1 units (three roundings and
 * digits beyond the 19th). */
#define MIDPOINT_MARGIN 16

static pthread_once_t c_locale_once = PTHREAD_ONCE_INIT;
static locale_t c_locale;

static void c_locale_create(void)
{
    c_locale = newlocale(LC_ALL_MASK, "C", (locale_t)0);
}

/* strtof of the token in the "C" locale. Out of line: its buffer and
 * locale switch would otherwise weigh on every number's fast path. */
__attribute__((noinline, cold)) static int parse_slow(const char *src, size_t src_len, float *dst)
{
    char small[64], *text = small;
    if (src_len >= sizeof(small) && !(text = malloc(src_len + 1)))
        return NS_ENOMEM;
    memcpy(text, src, src_len);
    text[src_len] = '\0';
    pthread_once(&c_locale_once, c_locale_create);
    locale_t old = c_locale ? uselocale(c_locale) : (locale_t)0;
    float f = strtof(text, NULL);
    if (old)
        uselocale(old);
    if (text != small)
        free(text);
    *dst = f;
    return isinf(f) ? NS_EVALUE : 0;
}

/* Eight ASCII digits at p as their value, or -1 if they are not all digits:
 * SWAR on a little-endian 64-bit load (Lemire's published method; each step
 * combines neighbouring digit groups with one multiply). */
static int64_t eight_digits(const char *p)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    uint64_t v;
    memcpy(&v, p, sizeof(v));
    if (((v & 0xf0f0f0f0f0f0f0f0u) | (((v + 0x0606060606060606u) & 0xf0f0f0f0f0f0f0f0u) >> 4)) !=
        0x3333333333333333u)
        return -1;
    v = (v & 0x0f0f0f0f0f0f0f0fu) * 2561 >> 8;     /* pairs */
    v = (v & 0x00ff00ff00ff00ffu) * 6553601 >> 16; /* quads */
    return (int64_t)((v & 0x0000ffff0000ffffu) * 42949672960001u >> 32 & 0xffffffffu);
#else
    (void)p;
    return -1;
#endif
}

/* A decimal's digits as scanned: its value is m * 10^exp10. */
typedef struct decimal_s {
    uint64_t m; /* the first 19 significant digits */
    int digits; /* how many m holds */
    int exp10;
} decimal_t;

/* The digits of the integer part, from its first, nonzero one. @return their end. */
static inline const char *scan_integer(const char *p, const char *end, decimal_t *d)
{
    for (; p < end && (unsigned)(*p - '0') <= 9; p++) {
        int64_t eight;
        if (d->digits <= 11 && end - p >= 8 && (eight = eight_digits(p)) >= 0) {
            d->m = d->m * 100000000u + (uint64_t)eight;
            d->digits += 8;
            p += 7;
            continue;
        }
        if (d->digits < 19) {
            d->m = d->m * 10 + (uint64_t)(*p - '0');
            d->digits++;
        } else {
            d->exp10++; /* a digit past the 19th: dropped, kept in exp10 */
        }
    }
    return p;
}

/* The digits of the fraction, from the first after the point. @return their end. */
static inline const char *scan_fraction(const char *p, const char *end, decimal_t *d)
{
    for (; p < end && (unsigned)(*p - '0') <= 9; p++) {
        int64_t eight;
        if (d->m && d->digits <= 11 && end - p >= 8 && (eight = eight_digits(p)) >= 0) {
            d->m = d->m * 100000000u + (uint64_t)eight;
            d->digits += 8;
            d->exp10 -= 8;
            p += 7;
            continue;
        }
        if (d->m == 0 && *p == '0') {
            d->exp10--; /* a leading zero of the fraction */
        } else if (d->digits < 19) {
            d->m = d->m * 10 + (uint64_t)(*p - '0');
            d->digits++;
            d->exp10--;
        } /* else a digit past the 19th: dropped */
    }
    return p;
}

/* Whether the double estimate d (at most a few units in its last place
 * from the decimal) rounds to the same float as the decimal: a float keeps
 * 23 of the 52 fraction bits; the 29 below decide the rounding, and only a
 * value near 1 followed by zeros (a midpoint) can round differently. */
static inline int f32_decided(double d)
{
    uint64_t bits;
    memcpy(&bits, &d, sizeof(bits));
    int64_t low = (int64_t)(bits & ((UINT64_C(1) << 29) - 1)) - (INT64_C(1) << 28);
    return (uint64_t)(low + MIDPOINT_MARGIN - 1) > 2 * MIDPOINT_MARGIN - 2;
}

/* m * 10^exp10 (m > 0) as a double that rounds to the same float as the
 * exact decimal, or 0 where it may not (near a midpoint between floats,
 * float subnormals, overflow, beyond the table's powers). */
static inline double f32_estimate(uint64_t m, int exp10)
{
    unsigned power = (unsigned)(exp10 - POW10_MIN);
    if (power > POW10_MAX - POW10_MIN)
        return 0;
    double d = (double)m * pow10_d[power];
    if (d >= 0x1p-126 && d <= FLT_MAX && f32_decided(d))
        return d;
    return 0;
}

/* The float nearest m * 10^exp10, negated if neg; src is the whole token,
 * for strtof near a midpoint. @return 0, NS_EVALUE or NS_ENOMEM. */
static int decimal_to_f32(const decimal_t *dec, int neg, const char *src, size_t src_len,
                          float *dst)
{
    float f;
    double d;
    if (dec->m == 0 || dec->exp10 < POW10_MIN)
        f = 0.0f; /* below 2^64 * 10^-66, far under half of 2^-149 */
    else if (dec->exp10 > POW10_MAX)
        f = INFINITY; /* at least 10^39 */
    else if ((d = f32_estimate(dec->m, dec->exp10)) != 0)
        f = (float)d;
    else
        return parse_slow(src, src_len, dst);
    *dst = neg ? -f : f;
    return isinf(f) ? NS_EVALUE : 0;
}

/* Digits at p, up to end, appended to *m (wrapping past 19 digits): eight
 * at a time while eight are there, then one by one. @return their end. */
static inline const char *scan_digits(const char *p, const char *end, uint64_t *m)
{
    uint64_t v = *m;
    int64_t eight;
    while (end - p >= 8 && (eight = eight_digits(p)) >= 0) {
        v = v * 100000000u + (uint64_t)eight;
        p += 8;
    }
    for (; p < end && (unsigned)(*p - '0') <= 9; p++)
        v = v * 10 + (uint64_t)(*p - '0');
    *m = v;
    return p;
}

#ifdef F32_SIXTEEN_DIGITS
/* Each byte lane's index, 0..15. */
static inline __m128i lane_index(void)
{
    return _mm_setr_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
}

/* The sixteen digit values (0..9) of t read as one decimal, the first the
 * most significant. Pairs: one 16-bit multiply by 10 * 256 + 1 leaves
 * 10 * first + second in the high byte; then quads and eights, each one
 * multiply-add of neighbouring lanes. */
static inline uint64_t lanes_value(__m128i t)
{
    __m128i pairs = _mm_srli_epi16(_mm_mullo_epi16(t, _mm_set1_epi16(10 * 256 + 1)), 8);
    __m128i quads = _mm_madd_epi16(pairs, _mm_set1_epi32(1 << 16 | 100));
    __m128i eights = _mm_madd_epi16(_mm_packs_epi32(quads, quads), _mm_set1_epi32(1 << 16 | 10000));
    uint64_t both = (uint64_t)_mm_cvtsi128_si64(eights);
    return (both & 0xffffffffu) * 100000000u + (both >> 32);
}

/* The bytes at p less '0', and a bit per byte that is a digit. */
static inline __m128i block_digits(const char *p, unsigned *digit)
{
    __m128i t = _mm_sub_epi8(_mm_loadu_si128((const __m128i *)(const void *)p), _mm_set1_epi8('0'));
    *digit = (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(_mm_min_epu8(t, _mm_set1_epi8(9)), t));
    return t;
}

/* The digits that start the sixteen bytes at p: @return how many (0..16),
 * and in *padded their value followed by zeros to sixteen digits (the
 * fraction's digits times 10^16). */
static inline unsigned sixteen_digits(const char *p, uint64_t *padded)
{
    unsigned digit;
    __m128i t = block_digits(p, &digit);
    unsigned n = (unsigned)__builtin_ctz(~digit);
    *padded = lanes_value(_mm_and_si128(t, _mm_cmplt_epi8(lane_index(), _mm_set1_epi8((char)n))));
    return n;
}
#endif

/* The fraction's digits at p appended to *m, after 'int_digits' integer
 * digits: @return their end; *scale is the power of ten m now holds beyond
 * the integer (their count, plus the padding zeros of sixteen_digits()). */
static inline const char *scan_fraction_digits(const char *p, const char *end,
                                               size_t int_digits, uint64_t *m, ptrdiff_t *scale)
{
    const char *begin = p;
#ifdef F32_SIXTEEN_DIGITS
    /* at most 3 + 16 digits: m * 10^16 + padded stays below 10^19 */
    if (int_digits <= 3 && end - p >= 16) {
        uint64_t padded;
        unsigned n = sixteen_digits(p, &padded);
        if (n == 0)
            return p;
        *m = *m * 10000000000000000u + padded;
        if (n < 16) {
            *scale = 16;
            return p + n;
        }
        p = scan_digits(p + 16, end, m); /* more may follow */
        *scale = p - begin;
        return p;
    }
#else
    (void)int_digits;
#endif
    p = scan_digits(p, end, m);
    *scale = p - begin;
    return p;
}

/* The exponent part at p (after 'e' or 'E'), added to *exp10. @return its
 * end, or NULL if it has no digits. */
static inline const char *scan_exponent(const char *p, const char *end, int *exp10)
{
    int eneg = 0, e = 0;
    if (p < end && (*p == '+' || *p == '-'))
        eneg = *p++ == '-';
    if (p == end || (unsigned)(*p - '0') > 9)
        return NULL;
    for (; p < end && (unsigned)(*p - '0') <= 9; p++)
        if (e < 100000) /* beyond any float; keeps exp10 from overflowing */
            e = e * 10 + (*p - '0');
    *exp10 += eneg ? -e : e;
    return p;
}

/* ns__f32_parse_prefix() digit by digit, keeping the first 19 significant
 * digits: for what the fast path leaves (more digits, or a value the double
 * estimate cannot decide). */
__attribute__((noinline, cold)) static int parse_careful(const char *src, const char *end,
                                                         const char **stop, int *integral,
                                                         float *dst)
{
    const char *p = src;
    decimal_t dec = {0, 0, 0};
    int neg = 0;
    *integral = 1;
    if (p < end && *p == '-') {
        neg = 1;
        p++;
    }
    if (p == end || (unsigned)(*p - '0') > 9)
        return NS_EINVAL;
    if (*p == '0')
        p++;
    else
        p = scan_integer(p, end, &dec);
    if (p < end && *p == '.') {
        *integral = 0;
        p++;
        if (p == end || (unsigned)(*p - '0') > 9)
            return NS_EINVAL;
        p = scan_fraction(p, end, &dec);
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        *integral = 0;
        if (!(p = scan_exponent(p + 1, end, &dec.exp10)))
            return NS_EINVAL;
    }
    *stop = p;
    return decimal_to_f32(&dec, neg, src, (size_t)(p - src), dst);
}

int ns__f32_parse_prefix(const char *src, const char *end, const char **stop, int *integral,
                         float *dst)
{
    const char *p = src;
    uint64_t m = 0;
    int neg = 0, exp10 = 0;

    /* JSON grammar: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?, each
     * part taken whole when it is there (the grammar needs no going back). */
    *integral = 1;
    if (p < end && *p == '-') {
        neg = 1;
        p++;
    }
    if (p == end || (unsigned)(*p - '0') > 9)
        return NS_EINVAL;
    const char *mantissa = p;
    m = (uint64_t)(*p++ - '0'); /* one digit, as most floats have: no scan */
    if (m != 0 && p < end && (unsigned)(*p - '0') <= 9)
        p = scan_digits(p, end, &m);
    size_t n_digits = (size_t)(p - mantissa);
    if (p < end && *p == '.') {
        ptrdiff_t scale;
        *integral = 0;
        const char *fraction = ++p;
        p = scan_fraction_digits(p, end, n_digits, &m, &scale);
        if (p == fraction)
            return NS_EINVAL;
        n_digits += (size_t)scale;
        exp10 = -(int)(n_digits <= 19 ? scale : 0);
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        *integral = 0;
        if (!(p = scan_exponent(p + 1, end, &exp10)))
            return NS_EINVAL;
    }
    *stop = p;
    if (n_digits <= 19) { /* leading zeros count here; parse_careful skips them */
        if (m == 0) {
            *dst = neg ? -0.0f : 0.0f;
            return 0;
        }
        double d = f32_estimate(m, exp10);
        if (d != 0) {
            *dst = (float)(neg ? -d : d);
            return 0;
        }
    }
    return parse_careful(src, end, stop, integral, dst);
}

int ns__f32_parse(const char *src, size_t src_len, float *dst)
{
    const char *stop;
    int integral;
    float f;
    int rc = ns__f32_parse_prefix(src, src + src_len, &stop, &integral, &f);
    if (rc == NS_EINVAL || stop != src + src_len)
        return NS_EINVAL; /* not a number, or more after one */
    if (rc != NS_ENOMEM)
        *dst = f;
    return rc;
}

/* ------------------------------------------------------------ arrays */

/* The bytes a number token may hold: where one follows a number, the
 * token is longer than the number (and not one). */
static const unsigned char number_byte[256] = {
    ['0'] = 1, ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1, ['5'] = 1, ['6'] = 1, ['7'] = 1,
    ['8'] = 1, ['9'] = 1, ['-'] = 1, ['.'] = 1, ['e'] = 1, ['E'] = 1, ['+'] = 1,
};

static inline const char *skip_space(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
        p++;
    return p;
}

#ifdef F32_SIXTEEN_DIGITS
/* 16 bytes of 0xff then 16 of 0: loaded from 16 - n, lanes below n set. */
static const unsigned char lanes_below_table[32] = {
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
};

static inline __m128i lanes_below(unsigned n)
{
    return _mm_loadu_si128((const __m128i *)(const void *)(lanes_below_table + 16 - n));
}

/* The exponent after 'e' at p: at most two digits, as printed floats have.
 * @return its end, or NULL for another form (the general path reads it). */
static inline const char *block_exponent(const char *p, const char *end, int *exp10)
{
    int eneg = 0, e;
    if (p < end && (*p == '-' || *p == '+'))
        eneg = *p++ == '-';
    if (p == end || (unsigned)(*p - '0') > 9)
        return NULL;
    e = *p++ - '0';
    if (p < end && (unsigned)(*p - '0') <= 9)
        e = e * 10 + (*p++ - '0');
    if (p < end && (unsigned)(*p - '0') <= 9)
        return NULL;
    *exp10 += eneg ? -e : e;
    return p;
}

/* The number at p in the shapes printed floats take, read from one 16-byte
 * block after the sign (the caller ensures 17 bytes are there):
 * -?D{1,3}(.D+)?(e[+-]?D{1,2})?, its digits and point within the block's
 * first 15 bytes ("%.9g" and the shortest form print at most 9 significant
 * digits). The integer digits move one byte up, over the point: the block
 * then holds the k + f digits of the significand m at bytes 1..k+f and
 * zeros elsewhere, whose value as sixteen digits is m * 10^(15-k-f), so the
 * number is that value times 10^(k-15+exponent), whatever f is. An integer
 * zero has no sign (as array_element() makes it). @return the number's end
 * (before 'end') with *dst set, or NULL for the general path (another shape, a value the
 * double estimate cannot decide). */
static inline const char *parse_block(const char *p, const char *end, float *dst)
{
    int neg = *p == '-';
    const char *q = p + neg;
    __m128i t = _mm_sub_epi8(_mm_loadu_si128((const __m128i *)(const void *)q), _mm_set1_epi8('0'));
    __m128i is_digit = _mm_cmpeq_epi8(_mm_min_epu8(t, _mm_set1_epi8(9)), t);
    unsigned digit = (unsigned)_mm_movemask_epi8(is_digit);
    unsigned k = (unsigned)__builtin_ctz(~digit), len = k;
    if (k - 1 > 2 || (k > 1 && q[0] == '0')) /* 1..3 integer digits, no leading zero */
        return NULL;
    if (q[k] == '.') {
        unsigned f = (unsigned)__builtin_ctz(~(digit >> (k + 1)));
        len = k + 1 + f;
        if (f == 0 || len > 15) /* no fraction digit, or more may follow the block */
            return NULL;
    }
    /* bytes below k: the integer's digits; from k + 1 to len: the fraction's */
    __m128i integer = k == 1 ? _mm_cvtsi32_si128(0xff) : lanes_below(k);
    __m128i fraction =
        _mm_andnot_si128(k == 1 ? _mm_cvtsi32_si128(0xffff) : lanes_below(k + 1), lanes_below(len));
    uint64_t m = lanes_value(
        _mm_or_si128(_mm_and_si128(t, fraction), _mm_slli_si128(_mm_and_si128(t, integer), 1)));
    const char *r = q + len;
    float f;
    if ((*r | 0x20) != 'e') {
        /* 10^-14 <= value < 10^3 when m > 0: no range to check */
        double d = (double)(int64_t)m * pow10_d[(int)k - 15 - POW10_MIN];
        if (!f32_decided(d))
            return NULL;
        f = (float)d;
        if (m == 0 && len == k)
            neg = 0; /* an integer zero */
    } else {
        int exp10 = (int)k - 15;
        if (!(r = block_exponent(r + 1, end, &exp10)) || r == end)
            return NULL;
        double d = m ? f32_estimate(m, exp10) : 1;
        if (d == 0)
            return NULL;
        f = m ? (float)d : 0.0f;
    }
    *dst = neg ? -f : f;
    return r;
}
#endif

#if defined(__x86_64__) || defined(__i386__)
/* Where ns__proto_avx2(), numbers come two at a time. */
#define F32_PARSE_AVX2 1
#endif

/* One element of an array at *pos by the general parser: whitespace, the
 * number, and what may follow it. @return 1 with *pos after the number, or 0. */
static int array_element(const char **pos, const char *end, float *dst)
{
    const char *p = skip_space(*pos, end), *stop;
    int integral;
    if (ns__f32_parse_prefix(p, end, &stop, &integral, dst) != 0)
        return 0;
    if (integral && stop - p > 18 + (*p == '-'))
        return 0; /* an integer that may not fit int64 */
    if (stop < end && number_byte[(unsigned char)*stop])
        return 0; /* e.g. "1-2", "0.5.1": not one number */
    if (integral && *dst == 0)
        *dst = 0.0f; /* "-0" is the integer 0, which has no sign */
    *pos = stop;
    return 1;
}

int ns__f32_parse_array(const char **pos, const char *end, float *dst, size_t dst_cap, size_t *n)
{
    const char *p = *pos;
    float *out = dst, *const out_end = dst + dst_cap;
    int rc = -1;
#ifdef F32_SIXTEEN_DIGITS
    const char *const block_end = end - p > 16 ? end - 16 : p; /* before it: 17 bytes */
#endif
#ifdef F32_PARSE_AVX2
    const int avx2 = ns__proto_avx2() && end - p > 48;
    const char *const run_limit = avx2 ? end - 48 : p; /* before it: 48 bytes */
#endif
    for (;;) {
#ifdef F32_PARSE_AVX2
        if (avx2 && p < run_limit)
            out += ns__f32_parse_run_avx2(&p, run_limit, out, (size_t)(out_end - out));
#endif
        if (out == out_end) {
            rc = 0;
            break;
        }
        /* most elements: a block-shaped number and a comma right after */
        const char *r = NULL;
        float f = 0;
#ifdef F32_SIXTEEN_DIGITS
        if (p < block_end)
            r = parse_block(p, end, &f);
#endif
        if (r != NULL) {
            *out = f;
            if (*r == ',') {
                out++;
                p = r + 1;
                continue;
            }
            if (number_byte[(unsigned char)*r])
                break; /* e.g. "0.5.1": not one number */
            p = r;
        } else if (!array_element(&p, end, out)) {
            break;
        }
        out++;
        p = skip_space(p, end);
        if (p < end && *p == ',') {
            p++;
            continue;
        }
        if (p < end && *p == ']') {
            p++;
            rc = 1;
        }
        break;
    }
    *pos = p;
    *n = (size_t)(out - dst);
    return rc;
}
