/* f32.h - float32 <-> decimal text for JSON arrays (library-internal). */
#ifndef NS_PROTO_F32_H
#define NS_PROTO_F32_H

#include <float.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>

/* A served double as float32: beyond float32's range it becomes infinity
 * (JSON: null), otherwise it is rounded once. */
static inline float ns__f32_narrow(double d)
{
    return d > FLT_MAX ? INFINITY : d < -FLT_MAX ? -INFINITY : (float)d;
}

/* Whether the AVX2 paths run (simd_choice.c): libnscore chose its AVX2
 * kernels. */
int ns__proto_avx2(void);

/* Longest text ns__f32_format() writes, plus its NUL: "-1.23456789e-45". */
#define NS__F32_FORMAT_MAX 16

/* ns__f32_parse() :
 * Convert the JSON number token 'src' (exactly 'src_len' bytes, no sign other
 * than a leading '-', no surrounding space) to the nearest float32, ties to
 * even: the value strtof() gives in the "C" locale, whatever the current
 * locale. A value that rounds below the smallest subnormal is a signed zero.
 * @return 0, NS_EINVAL if 'src' is not a JSON number, NS_EVALUE if the value
 * rounds to infinity (*dst is then +-inf), or NS_ENOMEM (a token longer than
 * 63 bytes that needs strtof could not be copied). Thread-safe. */
int ns__f32_parse(const char *src, size_t src_len, float *dst);

/* ns__f32_parse_prefix() :
 * ns__f32_parse() of the JSON number that starts at 'src' and ends where its
 * grammar ends (at most at 'end'); *stop is set there, *integral to 0 when
 * it has a fraction or an exponent. The caller decides what may follow.
 * @return as ns__f32_parse(); *stop is set unless NS_EINVAL. */
int ns__f32_parse_prefix(const char *src, const char *end, const char **stop, int *integral,
                         float *dst);

/* ns__f32_parse_array() :
 * The elements of a JSON array of numbers, from *pos (just after its '[')
 * up to 'end', into dst[0, dst_cap): each as ns__f32_parse_prefix() reads
 * it, with whitespace around it, ',' between and ']' after the last. An
 * integer element is what JSON decoders make of it: "-0" is 0 (an integer
 * has no sign), and one of more than 18 digits is refused (it may not fit
 * int64). *n is set to the elements written, *pos to where reading stopped.
 * @return 1: the array ended (*pos after its ']'); 0: dst_cap elements were
 * written and the array goes on at *pos (call again with room); -1: not an
 * array of numbers that are finite float32 (an empty one included), or a
 * token too long to copy for strtof. Thread-safe. */
int ns__f32_parse_array(const char **pos, const char *end, float *dst, size_t dst_cap, size_t *n);

/* ns__f32_parse_run_avx2() (f32_parse_avx2.c, x86 only, AVX2 CPUs only) :
 * The elements at *pos of the shape -?D{1,3}.D+ (at most 15 bytes after
 * the sign) each followed by a comma, two at a time, into dst[0, cap), as
 * ns__f32_parse_array() reads them; a pair may start only before 'limit'
 * (48 bytes readable from it). Stops before the first element of another
 * shape, one the double estimate cannot decide, or when fewer than 2 of
 * cap are left. @return the elements written; *pos is after the last one's
 * comma. */
size_t ns__f32_parse_run_avx2(const char **pos, const char *limit, float *dst, size_t cap);

/* ns__f32_format() :
 * Write finite 'value' as the shortest decimal that ns__f32_parse() (and
 * strtof) reads back to the same float, the nearest such decimal to 'value'
 * when several qualify (ties to an even last digit): at most 9 significant
 * digits, a valid JSON number. Notation as "%.9g" chooses it: fixed for
 * decimal exponents -4..8 ("0.1", "3", "-0", "0.000123"), otherwise
 * scientific without '+' or leading zeros ("1e-45", "3.4028235e38").
 * 'dst' has room for NS__F32_FORMAT_MAX bytes; the text is NUL-terminated.
 * @return its length. Non-finite values are the caller's to handle (they
 * write "null"); here they give "null" too. Thread-safe. */
size_t ns__f32_format(char *dst, float value);

/* Room ns__f32_put() may write: the text and scratch bytes after it. */
#define NS__F32_PUT_ROOM 32

/* ns__f32_put() :
 * ns__f32_format()'s text at 'dst', which has room for NS__F32_PUT_ROOM
 * bytes: what follows the text is scratch, not a NUL. For writers of many
 * numbers into one buffer (no copy through a local buffer).
 * @return the text's length. Thread-safe. */
size_t ns__f32_put(char *dst, float value);

/* ns__f32_put_list() :
 * The n values narrowed to float32, comma-separated, each as
 * ns__f32_put() writes it (beyond float32's range: infinity, "null"), at
 * 'dst', which has room for n * (1 + NS__F32_FORMAT_MAX) + NS__F32_PUT_ROOM
 * bytes; what follows the list is scratch.
 * @return the end of the list. Thread-safe. */
char *ns__f32_put_list(char *dst, const double *src, size_t n);

/* The text of four numbers f * 10^k in parts (f32_format.c lays them out):
 * the leading digit, the 8 digits after it (ASCII, lowest byte first; the
 * trailing zeros not significant), the significant digits, the exponent of
 * the leading digit. */
typedef struct {
    uint64_t rest[4];
    char lead[4];
    int n[4], e10[4];
} ns_f32_parts_t;

/* ns__f32_text4_avx2() (f32_format_avx2.c, x86 only, AVX2 CPUs only) :
 * The parts of the shortest decimal text of the four float32 'bits' (sign
 * aside), as f32_format.c computes them, with its tables 'g_table'
 * (indexed from k_min) and 'pow10' (10^0 .. 10^9). Lanes of zeros,
 * subnormals, powers of two, infinities and NaNs are left to the caller.
 * @return a mask of the lanes done (bit j: lane j). */
unsigned ns__f32_text4_avx2(const uint32_t bits[4], const uint64_t *g_table, int k_min,
                            const uint32_t *pow10, ns_f32_parts_t *parts);

#endif /* NS_PROTO_F32_H */
