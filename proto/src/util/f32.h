/* f32.h - float32 <-> decimal text for JSON arrays (library-internal). */
#ifndef NS_PROTO_F32_H
#define NS_PROTO_F32_H

#include <stddef.h>

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

#endif /* NS_PROTO_F32_H */
