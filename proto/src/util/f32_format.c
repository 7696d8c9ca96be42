/* f32_format.c - shortest round-trip decimal text of a float32.
 *
 * The digits follow Giulietti's Schubfach ("The Schubfach way to render
 * doubles", 2020), specialised to float32 and computed with exact integer
 * arithmetic instead of truncated powers of ten: a float32 times a power of
 * ten always fits 192 bits, so every comparison below is exact and the
 * algorithm needs no error analysis of its own.
 *
 * For v = c * 2^q the values that read back as v form the interval
 * R = [cbl, cbr] * 2^(q-2) (closed when c is even, open when odd), with
 * cb = 4c the value itself. k is chosen with 10^k <= width(R) < 10^(k+1), so
 * R holds at most one multiple of 10^(k+1) (then it is the shortest answer)
 * and at least one multiple of 10^k (otherwise the nearest of the two
 * bracketing v is). The scaled bounds are rounded to odd, which keeps
 * comparisons against even integers exact after dropping the fraction. */
#include <stdint.h>
#include <string.h>

#include "f32.h"

__extension__ typedef unsigned __int128 u128;

/* 5^0 .. 5^45 as {high, low} 64-bit words: the largest scale a float32
 * needs (10^45 brings the smallest subnormal to one digit). Generated with
 * python3 -c "for k in range(46): v=5**k; print(hex(v>>64), hex(v%2**64))" */
static const uint64_t pow5[46][2] = {
    {0x0000000000000000u, 0x0000000000000001u}, {0x0000000000000000u, 0x0000000000000005u},
    {0x0000000000000000u, 0x0000000000000019u}, {0x0000000000000000u, 0x000000000000007du},
    {0x0000000000000000u, 0x0000000000000271u}, {0x0000000000000000u, 0x0000000000000c35u},
    {0x0000000000000000u, 0x0000000000003d09u}, {0x0000000000000000u, 0x000000000001312du},
    {0x0000000000000000u, 0x000000000005f5e1u}, {0x0000000000000000u, 0x00000000001dcd65u},
    {0x0000000000000000u, 0x00000000009502f9u}, {0x0000000000000000u, 0x0000000002e90eddu},
    {0x0000000000000000u, 0x000000000e8d4a51u}, {0x0000000000000000u, 0x0000000048c27395u},
    {0x0000000000000000u, 0x000000016bcc41e9u}, {0x0000000000000000u, 0x000000071afd498du},
    {0x0000000000000000u, 0x0000002386f26fc1u}, {0x0000000000000000u, 0x000000b1a2bc2ec5u},
    {0x0000000000000000u, 0x000003782dace9d9u}, {0x0000000000000000u, 0x00001158e460913du},
    {0x0000000000000000u, 0x000056bc75e2d631u}, {0x0000000000000000u, 0x0001b1ae4d6e2ef5u},
    {0x0000000000000000u, 0x000878678326eac9u}, {0x0000000000000000u, 0x002a5a058fc295edu},
    {0x0000000000000000u, 0x00d3c21bcecceda1u}, {0x0000000000000000u, 0x0422ca8b0a00a425u},
    {0x0000000000000000u, 0x14adf4b7320334b9u}, {0x0000000000000000u, 0x6765c793fa10079du},
    {0x0000000000000002u, 0x04fce5e3e2502611u}, {0x000000000000000au, 0x18f07d736b90be55u},
    {0x0000000000000032u, 0x7cb2734119d3b7a9u}, {0x00000000000000fcu, 0x6f7c40458122964du},
    {0x00000000000004eeu, 0x2d6d415b85acef81u}, {0x00000000000018a6u, 0xe32246c99c60ad85u},
    {0x0000000000007b42u, 0x6fab61f00de36399u}, {0x000000000002684cu, 0x2e58e9b04570f1fdu},
    {0x00000000000c097cu, 0xe7bc90715b34b9f1u}, {0x00000000003c2f70u, 0x86aed236c807a1b5u},
    {0x00000000012ced32u, 0xa16a1b11e8262889u}, {0x0000000005e0a1fdu, 0x2712875988becaadu},
    {0x000000001d6329f1u, 0xc35ca4bfabb9f561u}, {0x0000000092efd1b8u, 0xd0cf37be5aa1cae5u},
    {0x00000002deaf189cu, 0x140c16b7c528f679u}, {0x0000000e596b7b0cu, 0x643c7196d9ccd05du},
    {0x00000047bf19673du, 0xf52e37f2410011d1u}, {0x00000166bb7f0435u, 0xc9e717bb45005915u},
};

/* floor(x) with its lowest bit set when x is not an integer ("round to
 * odd"), for x = cp * 2^b * 10^-k, cp < 2^26, exactly. */
static uint32_t scale_odd(uint32_t cp, int b, int k)
{
    if (k <= 0) {
        /* cp * 5^-k * 2^(b-k): a 64 x 128 -> 192-bit product, then a shift. */
        int sh = k - b; /* >= 0 except for the few q with 1 <= v < 8 */
        u128 lo = (u128)cp * pow5[-k][1];
        u128 hi = (u128)cp * pow5[-k][0] + (uint64_t)(lo >> 64);
        uint64_t w0 = (uint64_t)lo;
        if (sh <= 0)
            return (uint32_t)(w0 << -sh); /* an integer: the value is small */
        /* The result is below 2^32, so it lives in bits sh.. of hi:w0. */
        if (sh >= 64) {
            int s2 = sh - 64;
            uint64_t rest = (uint64_t)hi & ((s2 ? ((uint64_t)1 << s2) : 1) - 1);
            uint32_t r = (uint32_t)(hi >> s2);
            return r | (uint32_t)((s2 && rest) || w0);
        }
        u128 low = ((u128)(uint64_t)hi << 64) | w0;
        uint32_t r = (uint32_t)(low >> sh);
        return r | (uint32_t)((low & (((u128)1 << sh) - 1)) != 0);
    }
    /* k > 0 means v >= 10 and b - k >= 0: an integer divided by 5^k. */
    u128 n = (u128)cp << (b - k);
    u128 d = ((u128)pow5[k][0] << 64) | pow5[k][1];
    u128 r = n / d;
    return (uint32_t)r | (uint32_t)(n - r * d != 0);
}

/* floor(log10(2^q)) and floor(log10(3/4 * 2^q)) for -149 <= q <= 104; the
 * constants are log10(2) and log10(3/4) times 2^20, rounded so that no q in
 * range lands on the wrong side of an integer (checked by the unit test). */
static int floor_log10_pow2(int q)
{
    return (q * 315653) >> 20;
}

static int floor_log10_three_quarters_pow2(int q)
{
    return (q * 315653 - 131008) >> 20;
}

/* The digits and power of ten of the shortest decimal in R. */
static uint32_t shortest(uint32_t bits, int *exp10)
{
    uint32_t t = bits & 0x7fffffu, e = (bits >> 23) & 0xffu;
    uint32_t c = e ? t | 0x800000u : t;
    int q = e ? (int)e - 150 : -149;
    int irregular = t == 0 && e > 1; /* the gap below is half the gap above */
    uint32_t cb = c << 2, cbr = cb + 2, cbl = irregular ? cb - 1 : cb - 2;
    int k = irregular ? floor_log10_three_quarters_pow2(q) : floor_log10_pow2(q);
    uint32_t out = c & 1; /* an odd c excludes the bounds of R */
    /* 4 * v / 10^k and the bounds alike, rounded to odd. */
    uint32_t vb = scale_odd(cb, q, k);
    uint32_t vbl = scale_odd(cbl, q, k);
    uint32_t vbr = scale_odd(cbr, q, k);
    uint32_t s = vb >> 2; /* floor(v / 10^k) */

    /* One digit fewer: the multiple of 10^(k+1) below or above v. */
    uint32_t sp10 = s / 10 * 10, tp10 = sp10 + 10;
    int upin = vbl + out <= sp10 << 2, wpin = (tp10 << 2) + out <= vbr;
    if (upin != wpin) {
        *exp10 = k;
        return upin ? sp10 : tp10;
    }
    /* Otherwise s or s + 1, whichever is in R; the nearer if both are. */
    uint32_t u = s + 1;
    int uin = vbl + out <= s << 2, win = (u << 2) + out <= vbr;
    *exp10 = k;
    if (uin != win)
        return uin ? s : u;
    uint32_t mid = (s + u) << 1; /* compared with vb, both times 4 */
    return vb < mid || (vb == mid && !(s & 1)) ? s : u;
}

static const char digit_pairs[] = "00010203040506070809101112131415161718192021222324"
                                  "25262728293031323334353637383940414243444546474849"
                                  "50515253545556575859606162636465666768697071727374"
                                  "75767778798081828384858687888990919293949596979899";

/* Write the n decimal digits of f at dst. */
static void put_digits(char *dst, uint32_t f, int n)
{
    char *p = dst + n;
    while (f >= 100) {
        uint32_t r = f % 100;
        f /= 100;
        p -= 2;
        memcpy(p, digit_pairs + 2 * r, 2);
    }
    if (f >= 10) {
        p -= 2;
        memcpy(p, digit_pairs + 2 * f, 2);
    } else {
        *--p = (char)('0' + f);
    }
}

static int count_digits(uint32_t f)
{
    int n = 1;
    while (f >= 10) {
        f /= 10;
        n++;
    }
    return n;
}

size_t ns__f32_format(char *dst, float value)
{
    uint32_t bits;
    char *p = dst;
    memcpy(&bits, &value, sizeof(bits));
    if (bits >> 31)
        *p++ = '-';
    bits &= 0x7fffffffu;
    if (bits >= 0x7f800000u) {
        memcpy(dst, "null", 5);
        return 4;
    }
    if (bits == 0) {
        *p++ = '0';
        *p = '\0';
        return (size_t)(p - dst);
    }
    int k;
    uint32_t f = shortest(bits, &k);
    while (f % 10 == 0) {
        f /= 10;
        k++;
    }
    int n = count_digits(f);
    int e10 = k + n - 1; /* the exponent of the leading digit */
    if (e10 >= 0 && e10 < 9) {
        if (n <= e10 + 1) { /* an integer: digits, then zeros */
            put_digits(p, f, n);
            memset(p + n, '0', (size_t)(e10 + 1 - n));
            p += e10 + 1;
        } else {
            put_digits(p + 1, f, n);
            memmove(p, p + 1, (size_t)e10 + 1);
            p[e10 + 1] = '.';
            p += n + 1;
        }
    } else if (e10 < 0 && e10 >= -4) {
        int zeros = -e10 - 1;
        memcpy(p, "0.0000", (size_t)(2 + zeros));
        p += 2 + zeros;
        put_digits(p, f, n);
        p += n;
    } else {
        put_digits(p + 1, f, n);
        p[0] = p[1];
        if (n > 1) {
            p[1] = '.';
            p += n + 1;
        } else {
            p += 1;
        }
        *p++ = 'e';
        int x = e10;
        if (x < 0) {
            *p++ = '-';
            x = -x;
        }
        if (x >= 10) {
            memcpy(p, digit_pairs + 2 * x, 2);
            p += 2;
        } else {
            *p++ = (char)('0' + x);
        }
    }
    *p = '\0';
    return (size_t)(p - dst);
}
