/* f32_format_avx2.c - the shortest decimal digits of four float32 at once
 * (AVX2), for ns__f32_put_list() (f32_format.c, which lays the text out):
 * its shortest() and put_decimal() lane by lane, the same arithmetic modulo
 * 2^32 where they wrap, each 64 x 64-bit product's upper half from four
 * 32 x 32-bit products, the 8 ASCII digits by ascii8()'s steps in 32- and
 * 16-bit lanes. The only file of libnsproto built for AVX2; f32_format.c
 * calls it only when libnscore chose its AVX2 kernels. */
#include <immintrin.h>
#include <stdint.h>

#include "f32.h"

/* The upper 64 bits of a * b, lane by lane (a_hi = a >> 32): no sum below
 * overflows, each is at most (2^32 - 1)^2 + 2^33 - 2 < 2^64. */
static inline __m256i mul_high(__m256i a, __m256i a_hi, __m256i b)
{
    const __m256i lo32 = _mm256_set1_epi64x(0xffffffff);
    __m256i b_hi = _mm256_srli_epi64(b, 32);
    __m256i t = _mm256_mul_epu32(a, b);
    __m256i u = _mm256_add_epi64(_mm256_mul_epu32(a_hi, b), _mm256_srli_epi64(t, 32));
    __m256i v = _mm256_add_epi64(_mm256_mul_epu32(a, b_hi), _mm256_and_si256(u, lo32));
    __m256i hi = _mm256_add_epi64(_mm256_mul_epu32(a_hi, b_hi), _mm256_srli_epi64(u, 32));
    return _mm256_add_epi64(hi, _mm256_srli_epi64(v, 32));
}

/* round_to_odd(g, cp) of f32_format.c, modulo 2^32 as its uint32_t. */
static inline __m256i round_to_odd(__m256i g, __m256i g_hi, __m256i cp)
{
    const __m256i lo32 = _mm256_set1_epi64x(0xffffffff);
    __m256i x = mul_high(g, g_hi, cp);
    __m256i sticky = _mm256_srli_epi64(_mm256_add_epi64(_mm256_and_si256(x, lo32), lo32), 32);
    return _mm256_and_si256(_mm256_or_si256(_mm256_srli_epi64(x, 31), sticky), lo32);
}

/* x << n modulo 2^32, and a <= b (both below 2^32): all ones or zero. */
static inline __m256i shl32(__m256i x, int n)
{
    return _mm256_and_si256(_mm256_slli_epi64(x, n), _mm256_set1_epi64x(0xffffffff));
}

static inline __m256i at_most(__m256i a, __m256i b)
{
    return _mm256_xor_si256(_mm256_cmpgt_epi64(a, b), _mm256_set1_epi64x(-1));
}

/* The text parts of f * 10^k for four lanes (f < 10^9), as f32_format.c's
 * put_decimal() computes them: the leading digit, the 8 digits after it
 * as ASCII (lowest byte first), the significant digits and the exponent of
 * the leading digit. pow10 is the table of 10^0 .. 10^9. */
static void digit_parts(__m256i f, __m128i k32, const uint32_t *pow10, ns_f32_parts_t *out)
{
    __m128i f32 = _mm256_castsi256_si128(
        _mm256_permutevar8x32_epi32(f, _mm256_setr_epi32(0, 2, 4, 6, 0, 0, 0, 0)));
    /* n = the digits of f: 1 + how many of 10^1 .. 10^8 it reaches */
    __m128i n = _mm_set1_epi32(1);
    for (int i = 1; i <= 8; i++)
        n = _mm_sub_epi32(n, _mm_cmpgt_epi32(f32, _mm_set1_epi32((int)pow10[i] - 1)));
    __m128i e10 = _mm_add_epi32(k32, _mm_sub_epi32(n, _mm_set1_epi32(1)));
    __m128i scale = _mm_i32gather_epi32((const int *)pow10, _mm_sub_epi32(_mm_set1_epi32(9), n), 4);
    __m256i x = _mm256_cvtepu32_epi64(_mm_mullo_epi32(f32, scale)); /* 9 digits, below 10^9 */
    /* lead = x / 10^8, rest = x % 10^8 (x * 0x55e63b89 >> 57 exact below 10^9) */
    __m256i lead = _mm256_srli_epi64(_mm256_mul_epu32(x, _mm256_set1_epi64x(0x55e63b89)), 57);
    __m256i rest = _mm256_sub_epi64(x, _mm256_mul_epu32(lead, _mm256_set1_epi64x(100000000)));
    /* ascii8() of f32_format.c: the halves, pairs and digits side by side,
     * in 32-bit and then 16-bit lanes (no product crosses a lane) */
    __m256i hi4 = _mm256_srli_epi64(_mm256_mul_epu32(rest, _mm256_set1_epi64x(0xd1b71759)), 45);
    __m256i lo4 = _mm256_sub_epi64(rest, _mm256_mul_epu32(hi4, _mm256_set1_epi64x(10000)));
    __m256i v = _mm256_or_si256(hi4, _mm256_slli_epi64(lo4, 32));
    __m256i q =
        _mm256_and_si256(_mm256_srli_epi32(_mm256_mullo_epi32(v, _mm256_set1_epi32(10486)), 20),
                         _mm256_set1_epi32(0x7f));
    v = _mm256_or_si256(
        q,
        _mm256_slli_epi32(_mm256_sub_epi32(v, _mm256_mullo_epi32(q, _mm256_set1_epi32(100))), 16));
    q = _mm256_and_si256(_mm256_srli_epi16(_mm256_mullo_epi16(v, _mm256_set1_epi16(103)), 10),
                         _mm256_set1_epi16(0xf));
    v = _mm256_or_si256(
        q, _mm256_slli_epi16(_mm256_sub_epi16(v, _mm256_mullo_epi16(q, _mm256_set1_epi16(10))), 8));
    __m256i ascii = _mm256_or_si256(v, _mm256_set1_epi8(0x30));
    /* significant digits: 1 + the 8 less the trailing zeros (the high bytes) */
    unsigned zero_bytes =
        (unsigned)_mm256_movemask_epi8(_mm256_cmpeq_epi8(v, _mm256_setzero_si256()));
    _mm256_storeu_si256((__m256i *)out->rest, ascii);
    uint64_t leads[4];
    _mm256_storeu_si256((__m256i *)leads, lead);
    int e[4];
    _mm_storeu_si128((__m128i *)e, e10);
    for (int j = 0; j < 4; j++) {
        unsigned nonzero = ~zero_bytes >> (8 * j) & 0xff;
        out->lead[j] = (char)('0' + leads[j]);
        out->n[j] = 32 - __builtin_clz(nonzero << 1 | 1); /* 1 + its bit length */
        out->e10[j] = e[j];
    }
}

unsigned ns__f32_text4_avx2(const uint32_t bits[4], const uint64_t *g_table, int k_min,
                            const uint32_t *pow10, ns_f32_parts_t *parts)
{
    const __m256i lo32 = _mm256_set1_epi64x(0xffffffff), one = _mm256_set1_epi64x(1);
    __m128i b = _mm_loadu_si128((const __m128i *)bits);
    __m128i mag = _mm_and_si128(b, _mm_set1_epi32(0x7fffffff));
    __m128i e = _mm_srli_epi32(mag, 23), t = _mm_and_si128(mag, _mm_set1_epi32(0x7fffff));
    /* The lanes done here: normal (0 < e < 255) and not a power of two. */
    __m128i done = _mm_andnot_si128(_mm_cmpeq_epi32(t, _mm_setzero_si128()),
                                    _mm_and_si128(_mm_cmpgt_epi32(e, _mm_setzero_si128()),
                                                  _mm_cmplt_epi32(e, _mm_set1_epi32(255))));
    unsigned mask = (unsigned)_mm_movemask_ps(_mm_castsi128_ps(done));
    if (mask == 0)
        return 0;
    /* k = floor(log10(2^q)), h = q + floor(log2(10^-k)) + 33, as in shortest() */
    __m128i q = _mm_sub_epi32(e, _mm_set1_epi32(150));
    __m128i k32 = _mm_srai_epi32(_mm_mullo_epi32(q, _mm_set1_epi32(315653)), 20);
    __m128i minus_k = _mm_sub_epi32(_mm_setzero_si128(), k32);
    __m128i h = _mm_add_epi32(
        _mm_add_epi32(q, _mm_srai_epi32(_mm_mullo_epi32(minus_k, _mm_set1_epi32(217706)), 16)),
        _mm_set1_epi32(33));
    /* the other lanes: any valid index and shift, their results unused */
    __m128i index = _mm_and_si128(_mm_sub_epi32(k32, _mm_set1_epi32(k_min)), done);
    __m256i h64 = _mm256_cvtepu32_epi64(_mm_and_si128(h, done));
    __m256i g = _mm256_i32gather_epi64((const long long *)g_table, index, 8);
    __m256i g_hi = _mm256_srli_epi64(g, 32);
    __m256i c = _mm256_cvtepu32_epi64(_mm_or_si128(t, _mm_set1_epi32(0x800000)));
    __m256i cb = _mm256_slli_epi64(c, 2), out = _mm256_and_si256(c, one);
    __m256i two = _mm256_set1_epi64x(2);
    __m256i vb = round_to_odd(g, g_hi, _mm256_sllv_epi64(cb, h64));
    __m256i vbl = round_to_odd(g, g_hi, _mm256_sllv_epi64(_mm256_sub_epi64(cb, two), h64));
    __m256i vbr = round_to_odd(g, g_hi, _mm256_sllv_epi64(_mm256_add_epi64(cb, two), h64));
    vbl = _mm256_and_si256(_mm256_add_epi64(vbl, out), lo32);
    vbr = _mm256_and_si256(_mm256_sub_epi64(vbr, out), lo32);
    __m256i s = _mm256_srli_epi64(vb, 2);
    /* s / 10 * 10: s * ceil(2^35 / 10) >> 35 is exact below 2^32 */
    __m256i s10 = _mm256_srli_epi64(_mm256_mul_epu32(s, _mm256_set1_epi64x(0xcccccccd)), 35);
    __m256i sp10 = _mm256_add_epi64(_mm256_slli_epi64(s10, 3), _mm256_slli_epi64(s10, 1));
    __m256i tp10 = _mm256_and_si256(_mm256_add_epi64(sp10, _mm256_set1_epi64x(10)), lo32);
    __m256i upin = at_most(vbl, shl32(sp10, 2)), wpin = at_most(shl32(tp10, 2), vbr);
    __m256i ten = _mm256_blendv_epi8(tp10, sp10, upin);
    __m256i u = _mm256_and_si256(_mm256_add_epi64(s, one), lo32);
    __m256i uin = at_most(vbl, shl32(s, 2)), win = at_most(shl32(u, 2), vbr);
    __m256i mid = shl32(_mm256_add_epi64(s, u), 1);
    __m256i even = _mm256_cmpeq_epi64(_mm256_and_si256(s, one), _mm256_setzero_si256());
    __m256i nearer_s = _mm256_or_si256(_mm256_cmpgt_epi64(mid, vb),
                                       _mm256_and_si256(_mm256_cmpeq_epi64(vb, mid), even));
    __m256i take_s = _mm256_or_si256(_mm256_andnot_si256(win, uin),
                                     _mm256_andnot_si256(_mm256_xor_si256(uin, win), nearer_s));
    __m256i digits = _mm256_blendv_epi8(u, s, take_s);
    digits = _mm256_blendv_epi8(digits, ten, _mm256_xor_si256(upin, wpin));
    digit_parts(digits, k32, pow10, parts);
    return mask;
}
