/* f32_parse_avx2.c - two JSON numbers of a float array at once (AVX2), for
 * ns__f32_parse_array() (f32_parse.c): the numbers its block path reads in
 * the shape "%.9g" and the shortest form print in fixed notation,
 * -?D{1,3}.D+ within 16 bytes after the sign, each followed by a comma.
 * The two commas come first (one 32-byte compare), so a pair's place does
 * not wait for the previous pair's digits. Each number's 16 bytes go to
 * one 128-bit lane; one pshufb moves the integer digits one byte up over
 * the point (the same padded digits as the block path: m * 10^(15-k-f) for
 * k integer and f fraction digits), and pmaddubsw/pmaddwd combine them
 * into two 8-digit halves. The double
 * estimate is the block path's, so each float is the same bits; a value it
 * cannot decide (near a midpoint between floats) is left to the caller.
 * The only file of libnsproto besides f32_format_avx2.c built for AVX2;
 * f32_parse.c calls it only when libnscore chose its AVX2 kernels. */
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "f32.h"

/* pshufb control for k integer digits and a number 'len' bytes long after
 * the sign (point included): byte 0 zero, bytes 1..k the integer digits
 * (from 0..k-1), bytes k+1..len-1 the fraction's (in place), the rest zero. */
#define CTRL(j, k, len) ((j) == 0 || (j) >= (len) ? 0x80 : (j) <= (k) ? (j) - 1 : (j))
#define ROW(k, len)                                                                               \
    {CTRL(0, k, len),  CTRL(1, k, len),  CTRL(2, k, len),  CTRL(3, k, len),                       \
     CTRL(4, k, len),  CTRL(5, k, len),  CTRL(6, k, len),  CTRL(7, k, len),                       \
     CTRL(8, k, len),  CTRL(9, k, len),  CTRL(10, k, len), CTRL(11, k, len),                      \
     CTRL(12, k, len), CTRL(13, k, len), CTRL(14, k, len), CTRL(15, k, len)}
#define ROWS(k)                                                                                   \
    ROW(k, 0), ROW(k, 1), ROW(k, 2), ROW(k, 3), ROW(k, 4), ROW(k, 5), ROW(k, 6), ROW(k, 7),       \
        ROW(k, 8), ROW(k, 9), ROW(k, 10), ROW(k, 11), ROW(k, 12), ROW(k, 13), ROW(k, 14),         \
        ROW(k, 15)
static const unsigned char align_ctrl[4][16][16] __attribute__((aligned(16))) = {
    {ROWS(0)}, {ROWS(1)}, {ROWS(2)}, {ROWS(3)}};

/* 10^(k-15) for k = 0..3, as the block path's table has them. */
static const double block_scale[4] = {1e-15, 1e-14, 1e-13, 1e-12};

/* One number's shape: its digits less '0' (the 16 bytes after the sign),
 * k and its length after the sign. */
typedef struct {
    __m128i t;
    unsigned k, len, neg;
} shape_t;

/* @return 1 if the text [p, comma) is a number of the shape this file
 * reads. Where it ends comes from the comma, not from its digits, so the
 * next number's place does not wait for this one's. */
static inline int shape_of(const char *p, const char *comma, shape_t *s)
{
    s->neg = *p == '-';
    const char *q = p + s->neg;
    s->t = _mm_sub_epi8(_mm_loadu_si128((const __m128i *)(const void *)q), _mm_set1_epi8('0'));
    unsigned digit =
        (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(_mm_min_epu8(s->t, _mm_set1_epi8(9)), s->t));
    unsigned k = (unsigned)__builtin_ctz(~digit);
    s->k = k;
    s->len = (unsigned)(comma - q);
    if (k - 1 > 2 || (k > 1 && q[0] == '0') || q[k] != '.')
        return 0; /* 1..3 integer digits without a leading zero, then the point */
    /* the point, then only digits up to the comma (at least one), in the block */
    return s->len >= k + 2 && s->len <= 15 &&
           (unsigned)__builtin_ctz(~(digit | 1u << k)) == s->len;
}

size_t ns__f32_parse_run_avx2(const char **pos, const char *limit, float *dst, size_t cap)
{
    const char *p = *pos;
    size_t n = 0;
    const __m256i pair_weights = _mm256_set1_epi16(1 << 8 | 10);
    const __m256i quad_weights = _mm256_set1_epi32(1 << 16 | 100);
    const __m256i eight_weights = _mm256_set1_epi32(1 << 16 | 10000);
    const __m256i two52 = _mm256_set1_epi64x(0x4330000000000000);
    const __m256i low29 = _mm256_set1_epi64x((INT64_C(1) << 29) - 1);
    /* undecided: the low 29 bits within MIDPOINT_MARGIN - 1 (15) of 2^28 */
    const __m256i mid = _mm256_set1_epi64x((INT64_C(1) << 28) - 15);
    const __m256i margin = _mm256_set1_epi64x(30);
    const __m256i comma_byte = _mm256_set1_epi8(',');
    while (cap - n >= 2 && p < limit) {
        /* the next two commas within 32 bytes: the numbers' ends */
        unsigned commas = (unsigned)_mm256_movemask_epi8(_mm256_cmpeq_epi8(
            _mm256_loadu_si256((const __m256i *)(const void *)p), comma_byte));
        if (commas == 0)
            break;
        const char *comma_a = p + __builtin_ctz(commas);
        commas &= commas - 1;
        const char *comma_b = commas ? p + __builtin_ctz(commas) : comma_a;
        shape_t a, b;
        if (!shape_of(p, comma_a, &a))
            break;
        int b_ok = commas != 0 && shape_of(comma_a + 1, comma_b, &b);
        if (!b_ok)
            b = a; /* lanes computed and dropped */
        __m256i t = _mm256_inserti128_si256(_mm256_castsi128_si256(a.t), b.t, 1);
        __m256i ctrl = _mm256_inserti128_si256(
            _mm256_castsi128_si256(
                _mm_load_si128((const __m128i *)(const void *)align_ctrl[a.k][a.len])),
            _mm_load_si128((const __m128i *)(const void *)align_ctrl[b.k][b.len]), 1);
        __m256i digits = _mm256_shuffle_epi8(t, ctrl);
        __m256i pairs = _mm256_maddubs_epi16(digits, pair_weights);
        __m256i quads = _mm256_madd_epi16(pairs, quad_weights);
        __m256i eights = _mm256_madd_epi16(_mm256_packus_epi32(quads, quads), eight_weights);
        /* each 64-bit lane: the first 8 digits * 10^8 + the next 8, below 2^52 */
        __m256i m = _mm256_add_epi64(_mm256_mul_epu32(eights, _mm256_set1_epi64x(100000000)),
                                     _mm256_srli_epi64(eights, 32));
        __m256d exact = _mm256_sub_pd(_mm256_castsi256_pd(_mm256_or_si256(m, two52)),
                                      _mm256_castsi256_pd(two52));
        __m256d scale = _mm256_insertf128_pd(_mm256_castpd128_pd256(_mm_set1_pd(block_scale[a.k])),
                                             _mm_set1_pd(block_scale[b.k]), 1);
        __m256d d = _mm256_mul_pd(exact, scale);
        __m256i x = _mm256_sub_epi64(_mm256_and_si256(_mm256_castpd_si256(d), low29), mid);
        __m256i decided = _mm256_or_si256(_mm256_cmpgt_epi64(_mm256_setzero_si256(), x),
                                          _mm256_cmpgt_epi64(x, margin));
        unsigned ok = (unsigned)_mm256_movemask_pd(_mm256_castsi256_pd(decided));
        /* the floats in lanes 0 and 2, their signs set without a branch */
        __m128i f = _mm_castps_si128(_mm256_cvtpd_ps(d));
        uint32_t bits_a = (uint32_t)_mm_cvtsi128_si32(f) | a.neg << 31;
        uint32_t bits_b = (uint32_t)_mm_extract_epi32(f, 2) | b.neg << 31;
        if (!(ok & 1))
            break;
        memcpy(&dst[n++], &bits_a, sizeof(bits_a));
        p = comma_a + 1;
        if (!b_ok || !(ok & 4))
            break;
        memcpy(&dst[n++], &bits_b, sizeof(bits_b));
        p = comma_b + 1;
    }
    *pos = p;
    return n;
}
