/* f32_format.c - shortest round-trip decimal text of a float32.
 *
 * The digits follow Giulietti's Schubfach ("The Schubfach way to render
 * doubles", 2020) in its float32 form (as in Java's FloatToDecimal): for
 * v = c * 2^q the values that read back as v form the interval
 * R = [cbl, cbr] * 2^(q-2) (closed when c is even, open when odd), with
 * cb = 4c the value itself. k is chosen with 10^k <= width(R) < 10^(k+1), so
 * R holds at most one multiple of 10^(k+1) (then it is the shortest answer)
 * and at least one multiple of 10^k (otherwise the nearest of the two
 * bracketing v is). The scaled bounds are 4v / 10^k rounded to odd, computed
 * with one 64 x 64-bit multiplication by a 63-bit power of ten rounded up:
 * the paper's proof (its appendix) bounds the error below what could change
 * a comparison. The unit test compares every
 * float32 in whole binades and millions of others with an exact 192-bit
 * computation of the same digits and with strtof. */
#include <stdint.h>
#include <string.h>

#include "f32.h"

__extension__ typedef unsigned __int128 u128;

#define K_MIN (-45) /* the range of k over every finite float32 */
#define K_MAX 31

/* g(k) = floor(10^-k * 2^(62 - floor(log2(10^-k)))) + 1 for K_MIN <= k <= K_MAX: the
 * upper 63 bits of the 126-bit value the paper calls g, plus one. Generated with
 * exact rationals: for k: F = floor(log2(10^-k)); g = floor(10^-k / 2^(F-125)) + 1;
 * print((g >> 63) + 1). */
static const uint64_t g_table[K_MAX - K_MIN + 1] = {
    0x59aedfc10d7279c6u, 0x47bf19673df52e38u, 0x72cb5bd86321e38du,
    0x5bd5e313828182d7u, 0x4977e8dc68679be0u, 0x758ca7c70d7292ffu,
    0x5e0a1fd271287599u, 0x4b3b4ca85a86c47bu, 0x785ee10d5da46d91u,
    0x604be73de4838adau, 0x4d0985cb1d3608afu, 0x7b426fab61f00de4u,
    0x629b8c891b267183u, 0x4ee2d6d415b85acfu, 0x7e37be2022c0914cu,
    0x64f964e68233a770u, 0x50c783eb9b5c85f3u, 0x409f9cbc7c4a04c3u,
    0x6765c793fa10079eu, 0x52b7d2dcc80cd2e5u, 0x422ca8b0a00a4251u,
    0x69e10de76676d081u, 0x54b40b1f852bda01u, 0x43c33c1937564801u,
    0x6c6b935b8bbd4001u, 0x56bc75e2d6310001u, 0x4563918244f40001u,
    0x6f05b59d3b200001u, 0x58d15e1762800001u, 0x470de4df82000001u,
    0x71afd498d0000001u, 0x5af3107a40000001u, 0x48c2739500000001u,
    0x746a528800000001u, 0x5d21dba000000001u, 0x4a817c8000000001u,
    0x7735940000000001u, 0x5f5e100000000001u, 0x4c4b400000000001u,
    0x7a12000000000001u, 0x61a8000000000001u, 0x4e20000000000001u,
    0x7d00000000000001u, 0x6400000000000001u, 0x5000000000000001u,
    0x4000000000000001u, 0x6666666666666667u, 0x51eb851eb851eb86u,
    0x4189374bc6a7ef9eu, 0x68db8bac710cb296u, 0x53e2d6238da3c212u,
    0x431bde82d7b634dbu, 0x6b5fca6af2bd215fu, 0x55e63b88c230e77fu,
    0x44b82fa09b5a52ccu, 0x6df37f675ef6eae0u, 0x57f5ff85e5925580u,
    0x465e6604b7a84466u, 0x709709a125da070au, 0x5a126e1a84ae6c08u,
    0x480ebe7b9d58566du, 0x734aca5f6226f0aeu, 0x5c3bd5191b525a25u,
    0x49c97747490eae84u, 0x760f253edb4ab0d3u, 0x5e72843249088d76u,
    0x4b8ed0283a6d3df8u, 0x78e480405d7b9659u, 0x60b6cd004ac94514u,
    0x4d5f0a66a23a9daau, 0x7bcb43d769f762a9u, 0x63090312bb2c4eeeu,
    0x4f3a68dbc8f03f25u, 0x7ec3daf941806507u, 0x65697bfa9acd1da0u,
    0x51212ffbaf0a7e19u, 0x40e7599625a1fe7bu,
};

/* floor(log10(2^q)), or floor(log10(3/4 * 2^q)) when 'three_quarters' is
 * 1, for -149 <= q <= 104, and floor(log2(10^e)) for |e| <= 50; the
 * constants are log10(2), log10(3/4) and log2(10) times a power of two,
 * rounded so that no argument in range lands on the wrong side of an
 * integer (checked by the unit test). */
static int floor_log10_pow2(int q, uint32_t three_quarters)
{
    return (q * 315653 - 131008 * (int)three_quarters) >> 20;
}

static int floor_log2_pow10(int e)
{
    return (e * 217706) >> 16;
}

/* The upper bits of g * cp, rounded to odd: 4v / 10^k (or a bound) with
 * the fraction's presence kept in the lowest bit. */
static uint32_t round_to_odd(uint64_t g, uint64_t cp)
{
    uint64_t x = (uint64_t)(((u128)g * cp) >> 64);
    return (uint32_t)(x >> 31) | (uint32_t)((x & 0xffffffffu) != 0);
}

/* The digits f of the shortest decimal f * 10^k in R for v = c * 2^q,
 * with k as computed here (*exp10). The candidate is chosen by arithmetic,
 * not by branches: which one wins follows the digits of v, which no branch
 * predictor can guess. Kept out of line: inlined into the array loop, the
 * compiler turns the layout's branches into selects too and the loop ran
 * a third slower. */
static __attribute__((noinline)) uint32_t shortest(uint32_t c, int q, uint32_t irregular,
                                                   int *exp10)
{
    uint64_t cb = (uint64_t)c << 2, cbr = cb + 2, cbl = cb - 2 + irregular;
    int k = floor_log10_pow2(q, irregular);
    int h = q + floor_log2_pow10(-k) + 33;
    uint64_t g = g_table[k - K_MIN];
    uint32_t out = c & 1; /* an odd c excludes the bounds of R */
    uint32_t vb = round_to_odd(g, cb << h);
    uint32_t vbl = round_to_odd(g, cbl << h) + out; /* the bounds, R's own or not */
    uint32_t vbr = round_to_odd(g, cbr << h) - out;
    uint32_t s = vb >> 2; /* floor(v / 10^k) */
    *exp10 = k;
    /* One digit fewer: the multiple of 10^(k+1) below or above v, when
     * exactly one of them is in R. */
    uint32_t sp10 = s / 10 * 10, tp10 = sp10 + 10;
    uint32_t upin = vbl <= sp10 << 2, wpin = tp10 << 2 <= vbr;
    uint32_t ten = upin ? sp10 : tp10;
    /* Otherwise s or s + 1, whichever is in R; the nearer if both are
     * (4s + 2 is their midpoint, compared with vb, both times 4). */
    uint32_t u = s + 1;
    uint32_t uin = vbl <= s << 2, win = u << 2 <= vbr;
    uint32_t mid = (s + u) << 1;
    uint32_t nearer_s = vb < mid || (vb == mid && !(s & 1));
    uint32_t take_s = (uin & (win ^ 1)) | ((uin ^ win ^ 1) & nearer_s);
    uint32_t one = s + 1 - take_s;
    uint32_t use_ten = 0u - (upin ^ wpin); /* all ones or zero */
    return (ten & use_ten) | (one & ~use_ten);
}

/* The 8 decimal digits of v < 10^8 as ASCII, most significant in the
 * lowest byte (memory order on a little-endian machine): the halves, pairs
 * and digits split side by side in one 64-bit word, each division by a
 * constant a multiplication exact for the lane's range. */
static inline uint64_t ascii8(uint32_t v)
{
    uint64_t x = (uint64_t)(v / 10000) | (uint64_t)(v % 10000) << 32;
    uint64_t q = ((x * 10486) >> 20) & 0x0000007f0000007full; /* / 100 below 10^4 */
    x = q | (x - q * 100) << 16;
    q = ((x * 103) >> 10) & 0x000f000f000f000full; /* / 10 below 100 */
    x = q | (x - q * 10) << 8;
    return x | 0x3030303030303030ull;
}

static void store64(char *p, uint64_t v)
{
#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    memcpy(p, &v, 8);
}

static const uint32_t pow10[10] = {1,      10,      100,      1000,      10000,
                                   100000, 1000000, 10000000, 100000000, 1000000000};

static int count_digits(uint32_t f)
{
    int n = (32 - __builtin_clz(f | 1)) * 1233 >> 12; /* floor(log10(2^bits)) */
    return n + (f >= pow10[n]);
}

/* The text of lead.rest * 10^e10 in scientific notation at p, as "%.9g"
 * writes it ("1e-45", "3.4028235e38"): n significant digits, the first
 * 'lead', the others the first bytes of 'rest' (ASCII, lowest byte first).
 * @return the end of the text. */
static char *put_scientific(char *p, char lead, uint64_t rest, int n, int e10)
{
    p[0] = lead;
    p[1] = '.';
    store64(p + 2, rest);
    p += n > 1 ? n + 1 : 1;
    *p++ = 'e';
    int e = e10;
    if (e < 0) {
        *p++ = '-';
        e = -e;
    }
    if (e >= 10)
        *p++ = (char)('0' + e / 10);
    *p++ = (char)('0' + e % 10);
    return p;
}

/* The text lead.rest * 10^e10 (n significant digits) at p, as "%.9g" lays
 * it out; p has room for NS__F32_PUT_ROOM bytes, of which the text takes
 * at most 15 (writes past the text are scratch). Fixed notation, the
 * common case: "0.000000" and the digits after it below 1; at or above 1
 * the digits, those after the point moved one byte up (one store), and
 * the point. @return the end of the text. */
static inline char *put_text(char *p, char lead, uint64_t rest, int n, int e10)
{
    if (e10 < -4 || e10 > 8)
        return put_scientific(p, lead, rest, n, e10);
    if (e10 < 0) {
        memcpy(p, "0.000000", 8);
        p += 1 - e10; /* "0." and -e10 - 1 zeros */
        *p = lead;
        store64(p + 1, rest);
        return p + n;
    }
    *p = lead;
    store64(p + 1, rest);
    store64(p + e10 + 2, rest >> (8 * e10 & 63)); /* rest from its byte e10 */
    p[e10 + 1] = '.';
    /* An integer (no significant digit after the point) ends before it. */
    return p + (n > e10 + 1 ? n + 1 : e10 + 1);
}

/* The text of f * 10^k (0 < f < 10^9) at p, as put_text() lays it out.
 * @return the end of the text. */
static inline char *put_decimal(char *p, uint32_t f, int k)
{
    int n = count_digits(f);
    int e10 = k + n - 1;           /* the exponent of the leading digit */
    uint32_t x = f * pow10[9 - n]; /* 9 digits, the significant ones first */
    char lead = (char)('0' + x / 100000000);
    uint64_t rest = ascii8(x % 100000000); /* the other 8 */
    uint64_t zeros = rest ^ 0x3030303030303030ull;
    /* significant digits: 1 + the 8 less the trailing zeros (the high bytes) */
    n = 1 + (zeros ? 8 - __builtin_clzll(zeros) / 8 : 0);
    return put_text(p, lead, rest, n, e10);
}

/* ns__f32_put(), inlined into the array loop too. */
static inline size_t put_f32(char *dst, float value)
{
    uint32_t bits;
    memcpy(&bits, &value, sizeof(bits));
    uint32_t mag = bits & 0x7fffffffu;
    if (mag >= 0x7f800000u) {
        memcpy(dst, "null", 4);
        return 4;
    }
    char *p = dst;
    *p = '-';
    p += bits >> 31;
    if (mag == 0) {
        *p = '0';
        return (size_t)(p + 1 - dst);
    }
    uint32_t t = mag & 0x7fffffu, e = mag >> 23;
    /* A subnormal: c = t and q = -149; a power of two: the gap below it is
     * half the gap above (irregular). */
    uint32_t c = e ? t | 0x800000u : t;
    int q = (int)(e + !e) - 150;
    int k;
    uint32_t f = shortest(c, q, t == 0 && e > 1, &k);
    p = put_decimal(p, f, k);
    return (size_t)(p - dst);
}

size_t ns__f32_put(char *dst, float value)
{
    return put_f32(dst, value);
}

#if defined(__x86_64__) || defined(__i386__)
/* Values [i, i + 4) of src, the first preceded by a comma unless i == 0. */
static char *put_four(char *dst, const double *src, size_t i)
{
    float v[4];
    uint32_t bits[4];
    ns_f32_parts_t t;
    for (int j = 0; j < 4; j++) {
        v[j] = ns__f32_narrow(src[i + j]);
        memcpy(&bits[j], &v[j], sizeof(bits[j]));
    }
    unsigned done = ns__f32_text4_avx2(bits, g_table, K_MIN, pow10, &t);
    for (int j = 0; j < 4; j++) {
        *dst = ',';
        dst += i + (size_t)j != 0;
        if (done >> j & 1) {
            *dst = '-';
            dst = put_text(dst + (bits[j] >> 31), t.lead[j], t.rest[j], t.n[j], t.e10[j]);
        } else {
            dst += put_f32(dst, v[j]);
        }
    }
    return dst;
}
#endif

char *ns__f32_put_list(char *dst, const double *src, size_t n)
{
    size_t i = 0;
#if defined(__x86_64__) || defined(__i386__)
    if (ns__proto_avx2()) /* the digits four at a time */
        for (; n - i >= 4; i += 4)
            dst = put_four(dst, src, i);
#endif
    for (; i < n; i++) {
        float v = ns__f32_narrow(src[i]);
        *dst = ',';
        dst += i != 0; /* the comma stays before every value but the first */
        dst += put_f32(dst, v);
    }
    return dst;
}

size_t ns__f32_format(char *dst, float value)
{
    char text[NS__F32_PUT_ROOM];
    size_t n = ns__f32_put(text, value);
    text[n] = '\0';
    memcpy(dst, text, NS__F32_FORMAT_MAX); /* one fixed-size copy: dst has this room */
    return n;
}
