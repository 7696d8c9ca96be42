/* f32_format_exact.h - the reference for f32_format.c's digits: the same
 * Schubfach steps computed with exact integer arithmetic instead of a table
 * of rounded powers of ten. A float32 times a power of ten always fits 192
 * bits, so every comparison here is exact and needs no error analysis:
 * 4v / 10^k and the bounds of the rounding interval are computed as
 * cp * 5^-k * 2^(b-k) (a 64 x 128-bit product) or an integer divided by 5^k,
 * rounded to odd. exact_shortest() gives the digits and power of ten of the
 * shortest decimal that reads back as the float (the nearest on ties of
 * length, even last digit on exact ties), before trailing zeros are dropped.
 * Test-only: slower than the library's version, and independent of its table. */
#ifndef NS_TEST_F32_FORMAT_EXACT_H
#define NS_TEST_F32_FORMAT_EXACT_H

#include <math.h>
#include <stdint.h>

__extension__ typedef unsigned __int128 exact_u128;

/* 5^0 .. 5^45 as {high, low} 64-bit words: the largest scale a float32
 * needs (10^45 brings the smallest subnormal to one digit). Generated with
 * python3 -c "for k in range(46): v=5**k; print(hex(v>>64), hex(v%2**64))" */
static const uint64_t exact_pow5[46][2] = {
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
static uint32_t exact_scale_odd(uint32_t cp, int b, int k)
{
    if (k <= 0) {
        /* cp * 5^-k * 2^(b-k): a 64 x 128 -> 192-bit product, then a shift. */
        int sh = k - b; /* >= 0 except for the few q with 1 <= v < 8 */
        exact_u128 lo = (exact_u128)cp * exact_pow5[-k][1];
        exact_u128 hi = (exact_u128)cp * exact_pow5[-k][0] + (uint64_t)(lo >> 64);
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
        exact_u128 low = ((exact_u128)(uint64_t)hi << 64) | w0;
        uint32_t r = (uint32_t)(low >> sh);
        return r | (uint32_t)((low & (((exact_u128)1 << sh) - 1)) != 0);
    }
    /* k > 0 means v >= 10 and b - k >= 0: an integer divided by 5^k. */
    exact_u128 n = (exact_u128)cp << (b - k);
    exact_u128 d = ((exact_u128)exact_pow5[k][0] << 64) | exact_pow5[k][1];
    exact_u128 r = n / d;
    return (uint32_t)r | (uint32_t)(n - r * d != 0);
}

/* floor(log10(2^q)) and floor(log10(3/4 * 2^q)) for -149 <= q <= 104, in
 * long double: neither is ever an integer but at q = 0 (2^q and 3 * 2^(q-2)
 * are no powers of ten), and in this range each stays farther from one than
 * the rounding error, so floorl() is exact. */
static int exact_floor_log10_pow2(int q)
{
    return (int)floorl((long double)q * 0.301029995663981195213738894724493027L);
}

static int exact_floor_log10_three_quarters_pow2(int q)
{
    return (int)floorl((long double)q * 0.301029995663981195213738894724493027L -
                       0.124938736608299953132449886193870745L);
}

/* The digits and power of ten of the shortest decimal in R. */
static uint32_t exact_shortest(uint32_t bits, int *exp10)
{
    uint32_t t = bits & 0x7fffffu, e = (bits >> 23) & 0xffu;
    uint32_t c = e ? t | 0x800000u : t;
    int q = e ? (int)e - 150 : -149;
    int irregular = t == 0 && e > 1; /* the gap below is half the gap above */
    uint32_t cb = c << 2, cbr = cb + 2, cbl = irregular ? cb - 1 : cb - 2;
    int k = irregular ? exact_floor_log10_three_quarters_pow2(q) : exact_floor_log10_pow2(q);
    uint32_t out = c & 1; /* an odd c excludes the bounds of R */
    /* 4 * v / 10^k and the bounds alike, rounded to odd. */
    uint32_t vb = exact_scale_odd(cb, q, k);
    uint32_t vbl = exact_scale_odd(cbl, q, k);
    uint32_t vbr = exact_scale_odd(cbr, q, k);
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

#endif /* NS_TEST_F32_FORMAT_EXACT_H */
