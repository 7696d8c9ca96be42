/* decode_bound.c - what decoding a body may allocate, known before it is
 * decoded (see ns_decode_bound() in proto.h).
 *
 * DESIGN
 *  The bounds follow the decoders' allocations; tests/unit/proto/
 *  test_decode_bound.c checks them against what the allocator holds after
 *  decoding the worst shapes (one-channel layers, layers without arrays,
 *  one long array), so a decoder that grows costlier fails there.
 *  Report, fast JSON path (report_json_fast.c): the report; one array of
 *  layers sized by the '{' count, plus as much again for qsort's buffer;
 *  per float array one exact allocation (4 bytes a number, a number per
 *  ',' or '[') with its allocator overhead; while one array longer than 64
 *  numbers is parsed, its doubling buffer (at most 12 bytes a number; a
 *  layer's second array takes the first's length, at most 4 bytes a number
 *  of the longest array before it is trimmed or refused).
 *  jansson: a tree costs about 20 bytes per body byte at its worst (a
 *  one-character number is a 32-byte value and an 8-byte slot; measured
 *  13 for a safetensors header); counted as 24. safetensors: the header
 *  as a jansson tree, the tensor index (two small structs a tensor, a
 *  tensor per '{'), then the values (float32 as
 *  sent, float64 narrowed: at most the data area for a report; gradient
 *  sums widen float32 to double: twice the data area). */
#include <string.h>

#include "proto_internal.h"

/* malloc's bookkeeping and rounding per allocation, at most (glibc: 8 and 16). */
#define ALLOC_OVERHEAD     32u
#define JSON_TREE_PER_BYTE 24u
#define TENSOR_INDEX_BYTES 256u  /* ns_tensor_t, its span and name, per tensor */
#define FIXED_BYTES        8192u /* the message struct, scratch, small strings */

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

/* One byte of the count. */
static inline void count_byte(ns__json_counts_t *n, uint64_t *in_array, char ch)
{
    switch (ch) {
    case '{':
        n->braces++;
        break;
    case '[':
        n->brackets++;
        *in_array = 1;
        break;
    case ',':
        n->commas++;
        *in_array += *in_array ? 1 : 0;
        break;
    case ']':
        n->longest_array = *in_array > n->longest_array ? *in_array : n->longest_array;
        *in_array = 0;
        break;
    default:
        break;
    }
}

#if defined(__SSE2__)
/* The sum of the 16 byte counters of v (each <= 255). */
static inline uint64_t sum_bytes(__m128i v)
{
    const __m128i s = _mm_sad_epu8(v, _mm_setzero_si128());
    return (uint64_t)_mm_extract_epi16(s, 0) + (uint64_t)_mm_extract_epi16(s, 4);
}

/* Whether the 64 bytes x0..x3 may hold a bracket or a brace: with the bits
 * 0x26 cleared, '{' '}' '[' ']' are all 0x59, as are only 'Y', '_', 'y'
 * and DEL, rare between numbers. */
static inline int may_hold_bracket(__m128i x0, __m128i x1, __m128i x2, __m128i x3)
{
    const __m128i fold = _mm_set1_epi8((char)0xd9), folded = _mm_set1_epi8(0x59);
    __m128i rare = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(_mm_and_si128(x0, fold), folded),
                                             _mm_cmpeq_epi8(_mm_and_si128(x1, fold), folded)),
                                _mm_or_si128(_mm_cmpeq_epi8(_mm_and_si128(x2, fold), folded),
                                             _mm_cmpeq_epi8(_mm_and_si128(x3, fold), folded)));
    return _mm_movemask_epi8(rare);
}

/* counts (byte counters) plus the commas of x0..x3: at most 4 a counter. */
static inline __m128i add_commas(__m128i counts, __m128i x0, __m128i x1, __m128i x2, __m128i x3)
{
    const __m128i comma = _mm_set1_epi8(',');
    counts = _mm_sub_epi8(counts, _mm_cmpeq_epi8(x0, comma)); /* a comma is -1 */
    counts = _mm_sub_epi8(counts, _mm_cmpeq_epi8(x1, comma));
    counts = _mm_sub_epi8(counts, _mm_cmpeq_epi8(x2, comma));
    return _mm_sub_epi8(counts, _mm_cmpeq_epi8(x3, comma));
}
#endif

ns__json_counts_t ns__json_count(const char *p, size_t len)
{
    ns__json_counts_t n = {0};
    uint64_t in_array = 0;
    size_t i = 0;
#if defined(__SSE2__)
    /* 64 bytes at a time while they hold no bracket or brace (nearly all
     * of a body: numbers and commas; may_hold_bracket()). There only the
     * commas count, and in_array does not change but by them, so a run of
     * such blocks is counted in byte counters, summed when another block
     * comes, or before a counter could pass 255. A block that may hold a
     * bracket goes byte by byte. The same sums as byte by byte. */
    __m128i commas = _mm_setzero_si128();
    unsigned run = 0;
    for (; i + 64 <= len; i += 64) {
        const __m128i *block = (const __m128i *)(const void *)(p + i);
        __m128i x0 = _mm_loadu_si128(block), x1 = _mm_loadu_si128(block + 1),
                x2 = _mm_loadu_si128(block + 2), x3 = _mm_loadu_si128(block + 3);
        int rare = may_hold_bracket(x0, x1, x2, x3);
        if (!rare) {
            commas = add_commas(commas, x0, x1, x2, x3);
            if (++run < 63) /* 63 blocks keep a counter under 256 */
                continue;
        }
        uint64_t c = sum_bytes(commas);
        n.commas += c;
        in_array += in_array ? c : 0;
        commas = _mm_setzero_si128();
        run = 0;
        if (rare)
            for (size_t k = i; k < i + 64; k++)
                count_byte(&n, &in_array, p[k]);
    }
    uint64_t c = sum_bytes(commas);
    n.commas += c;
    in_array += in_array ? c : 0;
#endif
    for (; i < len; i++)
        count_byte(&n, &in_array, p[i]);
    n.longest_array = in_array > n.longest_array ? in_array : n.longest_array;
    return n;
}

uint64_t ns__count_byte(const char *p, size_t len, char byte)
{
    uint64_t n = 0;
    size_t i = 0;
#if defined(__SSE2__)
    const __m128i b = _mm_set1_epi8(byte);
    __m128i counts = _mm_setzero_si128();
    for (unsigned run = 0; i + 16 <= len; i += 16) {
        const __m128i x = _mm_loadu_si128((const __m128i *)(const void *)(p + i));
        counts = _mm_sub_epi8(counts, _mm_cmpeq_epi8(x, b)); /* a match is -1 */
        if (++run == 255) {
            n += sum_bytes(counts);
            counts = _mm_setzero_si128();
            run = 0;
        }
    }
    n += sum_bytes(counts);
#endif
    for (; i < len; i++)
        n += p[i] == byte;
    return n;
}

uint64_t ns__json_array_length(const char *p, size_t len)
{
    uint64_t commas = 0;
    size_t i = 0;
#if defined(__SSE2__)
    /* 64 bytes at a time up to the block that may hold a bracket
     * (may_hold_bracket()), which goes byte by byte below. */
    __m128i counts = _mm_setzero_si128();
    for (unsigned run = 0; i + 64 <= len; i += 64) {
        const __m128i *block = (const __m128i *)(const void *)(p + i);
        __m128i x0 = _mm_loadu_si128(block), x1 = _mm_loadu_si128(block + 1),
                x2 = _mm_loadu_si128(block + 2), x3 = _mm_loadu_si128(block + 3);
        if (may_hold_bracket(x0, x1, x2, x3))
            break;
        counts = add_commas(counts, x0, x1, x2, x3);
        if (++run == 63) { /* a counter stays under 256 */
            commas += sum_bytes(counts);
            counts = _mm_setzero_si128();
            run = 0;
        }
    }
    commas += sum_bytes(counts);
#endif
    for (; i < len; i++) {
        if (p[i] == ']')
            return commas + 1;
        if (p[i] == '[')
            return 0;
        commas += p[i] == ',';
    }
    return 0;
}

static uint64_t report_json_bound(const char *src, size_t len)
{
    ns__json_counts_t n = ns__json_count(src, len);
    uint64_t layers = 2 * n.braces * (sizeof(ns_layer_report_t) + ALLOC_OVERHEAD);
    uint64_t arrays = n.brackets * ALLOC_OVERHEAD + 4 * (n.commas + n.brackets);
    return FIXED_BYTES + sizeof(ns_report_t) + layers + arrays + 12 * n.longest_array;
}

/* The header length a safetensors body declares, clamped to the body. */
static uint64_t safetensors_header(const unsigned char *src, size_t len)
{
    if (len < 8)
        return 0;
    uint64_t h = 0;
    for (int i = 7; i >= 0; i--)
        h = (h << 8) | src[i];
    return h > len - 8 ? len - 8 : h;
}

static uint64_t safetensors_bound(const unsigned char *src, size_t len, unsigned data_factor)
{
    uint64_t header = safetensors_header(src, len);
    uint64_t tensors = ns__count_byte((const char *)src + 8 * (len >= 8), (size_t)header, '{');
    uint64_t data = len - (len >= 8 ? 8 : len) - header;
    return FIXED_BYTES + JSON_TREE_PER_BYTE * header + tensors * TENSOR_INDEX_BYTES +
           tensors * (sizeof(ns_layer_report_t) + 2 * ALLOC_OVERHEAD) + data_factor * data;
}

uint64_t ns_decode_bound(const void *src, size_t src_len, ns_decode_kind_t kind)
{
    if (src == NULL)
        src_len = 0;
    switch (kind) {
    case NS_DECODE_REPORT_JSON:
        return report_json_bound(src, src_len);
    case NS_DECODE_REPORT_SAFETENSORS:
        return safetensors_bound(src, src_len, 1);
    case NS_DECODE_GRAD_SAFETENSORS:
        return safetensors_bound(src, src_len, 2);
    default:
        return FIXED_BYTES + JSON_TREE_PER_BYTE * (uint64_t)src_len;
    }
}
