/* proto_internal.h - helpers shared by the files of libnsproto (not installed). */
#ifndef NS_PROTO_INTERNAL_H
#define NS_PROTO_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include <normstat/proto.h>

/* What the scanner keeps of "__metadata__" without a tree (a report's fits). */
#define NS__ST_META_MAX  16
#define NS__ST_META_TEXT 1024

/* A parsed safetensors buffer (safetensors.c). */
struct ns_safetensors_s {
    json_t *header;     /* the jansson path's tree (owns meta), or NULL */
    const json_t *meta; /* borrowed from header or meta_owned, or NULL */
    json_t *meta_owned; /* the scanner's "__metadata__" when it outgrows the table */
    /* The scanner's "__metadata__" as a table (meta_table 1, meta NULL):
     * n_meta keys and values, NUL-terminated in meta_text at these offsets,
     * in header order. */
    int meta_table;
    uint32_t n_meta;
    uint16_t meta_key[NS__ST_META_MAX], meta_value[NS__ST_META_MAX];
    char meta_text[NS__ST_META_TEXT];
    size_t n_tensors;
    ns_tensor_t *tensors;     /* sorted by data offset */
    unsigned char *dtype_ids; /* scanner: tensor i's dtype spelling, an index of
                                 safetensors.c's table; NULL on the jansson path */
    /* Parsed by ns__safetensors_reparse() (keep 1): the arrays stay for the
     * next parse; 'tensors' (and the ids) is a block of tensors_bytes. */
    int keep;
    ns_tensor_t *scan;   /* the scanner's tensors in header order */
    ns_tensor_t *sorted; /* the block 'tensors' points to once parsed */
    void *spans;
    size_t scan_cap, spans_cap, tensors_bytes;
};

/* ns__safetensors_reparse() :
 *  ns_safetensors_parse() into *st, reusing the arrays of the previous parse
 *  into it (*st NULL: a new one). Headers the scanner cannot take are parsed
 *  by the jansson path into a new *st. Free with ns_safetensors_free().
 *  ns__safetensors_bytes(): what *st holds on the heap. */
int ns__safetensors_reparse(ns_safetensors_t **st, const uint8_t *src, size_t src_len,
                            ns_error_detail_t *err);
size_t ns__safetensors_bytes(const ns_safetensors_t *st);

/* The range of a world_size on the wire: any uint32 from 1. A run accepts
 * less (NS_WORLD_SIZE_MAX), which the daemon checks; a body beyond this range
 * is malformed ("expected an integer in [1, 4294967295]"). */
#define NS__WORLD_SIZE_WIRE_MAX UINT32_MAX

/* ns__buf_append_json_string() : append 's' as a quoted, escaped JSON string. */
int ns__buf_append_json_string(ns_buf_t *buf, const char *s);

/* ns__report_create() : an empty report with the wire's defaults (doc/design.md) and room for
 * 'n_layers' zeroed layers. @return NULL when out of memory. */
ns_report_t *ns__report_create(size_t n_layers);
/* ns__report_defaults() : the wire's defaults into a zeroed report. */
void ns__report_defaults(ns_report_t *report);

/* ns__report_finish() : sort layers by name, reject duplicates, check every
 * value (non-finite, negative variance: NS_EVALUE) and convert unbiased
 * variances to biased. 'nonfinite_hint' may say why element i of a layer's
 * array is not finite (e.g. a JSON value outside float32 range); may be NULL.
 * @return 0 or the error recorded in 'err'. */
typedef int (*ns__value_hint_fn)(void *ctx, const ns_layer_report_t *layer, int is_var,
                                 size_t index, char *dst, size_t dst_cap);
int ns__report_finish(ns_report_t *report, ns_error_detail_t *err, ns__value_hint_fn hint,
                      void *hint_ctx);

/* ns__grad_create() : an empty gradient-sum request (dtype F64) with room
 * for 'n_layers' zeroed layers. @return NULL when out of memory. */
ns_grad_t *ns__grad_create(size_t n_layers);

/* ns__grad_layer_alloc() : the block of both arrays of 'layer' ('channels'
 * each). @return 0 or NS_ENOMEM. */
int ns__grad_layer_alloc(ns_grad_layer_t *layer, size_t channels);

/* ns__grad_finish() : sort layers by name, reject duplicates (400), then
 * non-finite values (422, naming the element). @return 0 or the error. */
int ns__grad_finish(ns_grad_t *grad, ns_error_detail_t *err);

/* ns__report_decode_json_fast() : decode a well-formed JSON report without
 * jansson. @return 0 with *dst set, a negative NS_E* code for a value error
 * (422), or 1 when the body needs the full decoder (anything unusual). */
int ns__report_decode_json_fast(ns_report_t **dst, const char *src, size_t src_len,
                                ns_error_detail_t *err);

/* ns__report_decode_json_full() : the jansson decoder (canonical errors). */
int ns__report_decode_json_full(ns_report_t **dst, const char *src, size_t src_len,
                                ns_error_detail_t *err);

/* ns__update_parse_word() : the NS_UPDATE_* bit of "ema" / "precise" (length
 * 'len'), or 0 if the word is neither. */
unsigned ns__update_parse_word(const char *s, size_t len);

/* ns__dtype_size() : bytes per element of a safetensors dtype name, or 0 if
 * unknown; sets *dtype. */
size_t ns__dtype_size(const char *name, ns_dtype_t *dtype);

/* ns__json_load() : parse a JSON body (duplicate keys rejected) into *dst.
 * @return 0, or NS_EINVAL with 'err' giving the position, or the field's
 * path when a number is too big for an integer. */
int ns__json_load(json_t **dst, const char *src, size_t src_len, ns_error_detail_t *err);

/* ns__parse_decimal() : a __metadata__ integer: decimal digits only ("+1",
 * " 1", "1.0" are refused), value <= max. @return 0 or -1. */
int ns__parse_decimal(const char *s, uint64_t max, uint64_t *out);

/* ns__json_count() : the structural bytes of JSON text that bound what
 * decoding it may allocate (decode_bound.c): '{', '[' and ',' counted, and
 * the most commas+1 inside one '[' ... ']' (the longest array). */
typedef struct ns__json_counts_s {
    uint64_t braces, brackets, commas, longest_array;
} ns__json_counts_t;
ns__json_counts_t ns__json_count(const char *p, size_t len);

/* ns__json_array_length() : for the text after a '[', the commas before the
 * first bracket plus one when that bracket is ']' (the most numbers the
 * array can hold, never more than ns__json_count()'s longest_array), else 0. */
uint64_t ns__json_array_length(const char *p, size_t len);

/* ns__count_byte() : how many times 'byte' occurs in p[0, len). */
uint64_t ns__count_byte(const char *p, size_t len, char byte);

/* ns__safetensors_dtype_name() : the dtype of 't' as the header spelled it. */
const char *ns__safetensors_dtype_name(const ns_safetensors_t *st, const ns_tensor_t *t);

/* ns__load_le64() : a little-endian load that assumes no alignment. */
uint64_t ns__load_le64(const uint8_t *p);

/* The safetensors decoders' shared part (safetensors_layers.c).
 * ns__safetensors_meta_step_worker(): NS_EINVAL naming the first member of
 * st's __metadata__ (may be absent) not in 'known', else its required "step"
 * and "worker". ns__safetensors_layer_pieces(): each tensor named
 * <layer>.<part>, 'part' one of 'parts' (NULL-terminated; 'naming' says so in
 * the error), with a valid layer name, sorted by (layer, part); @return 0 with
 * *pieces (st->n_tensors of them, free()) and *n_layers >= 1, or the error.
 * ns__safetensors_next_layer(): the layer starting at pieces[*i], its pieces
 * by part in 'by_part' (NULL where absent); moves *i to the next layer. */
typedef struct ns__st_piece_s {
    char layer[NS_NAME_MAX + 1];
    int part; /* index in 'parts' */
    const ns_tensor_t *tensor;
} ns__st_piece_t;
int ns__safetensors_meta_step_worker(const ns_safetensors_t *st, const char *const *known,
                                     uint64_t *step, uint32_t *worker, ns_error_detail_t *err);

/* ns__safetensors_meta_get() : the __metadata__ value of 'key', or NULL.
 * ns__safetensors_meta_check_known() : NS_EINVAL naming (after 'prefix')
 * the first member not in 'known' (NULL-terminated), else 0. */
const char *ns__safetensors_meta_get(const ns_safetensors_t *st, const char *key);
int ns__safetensors_meta_check_known(const ns_safetensors_t *st, const char *const *known,
                                     const char *prefix, ns_error_detail_t *err);
int ns__safetensors_layer_pieces(const ns_safetensors_t *st, const char *const *parts,
                                 const char *naming, ns__st_piece_t **pieces, size_t *n_layers,
                                 ns_error_detail_t *err);
/* ns__safetensors_layer_pieces_into() : the same into *pieces, a buffer of
 * *cap pieces kept by the caller (grown as needed; it stays the caller's
 * on error too). */
int ns__safetensors_layer_pieces_into(const ns_safetensors_t *st, const char *const *parts,
                                      const char *naming, ns__st_piece_t **pieces, size_t *cap,
                                      size_t *n_layers, ns_error_detail_t *err);
const char *ns__safetensors_next_layer(const ns__st_piece_t *pieces, size_t n, size_t *i,
                                       const ns__st_piece_t **by_part, size_t n_parts);

/* JSON decoding helpers (report_json.c). ns__json_describe(): what a client
 * sent, for "expected X, got Y" ('dst' holds numbers). ns__json_check_known():
 * NS_EINVAL naming the first member of 'obj' not in 'known' (NULL-terminated),
 * prefixed by 'prefix'. ns__json_get_uint(): an integer in [min, max]; reals
 * such as 1.5 or 1.0 are refused. */
const char *ns__json_describe(const json_t *v, char *dst, size_t dst_cap);
/* ns__check_known_key(): 0 if 'key' is one of the NULL-terminated 'known',
 * else NS_EINVAL "unknown field" naming prefix + key. */
int ns__check_known_key(const char *key, const char *const *known, const char *prefix,
                        ns_error_detail_t *err);
int ns__json_check_known(const json_t *obj, const char *const *known, const char *prefix,
                         ns_error_detail_t *err);
int ns__json_get_uint(const json_t *v, const char *field, uint64_t min, uint64_t max,
                      const char *expected, uint64_t *out, ns_error_detail_t *err);

/* What the JSON decoders of reports and gradient sums share (report_json.c).
 * ns__json_check_numbers(): 'v' is a non-empty array of numbers (else an
 * error naming 'field' or its first offending element).
 * ns__json_check_root(): 'root' is an object with members in 'known' only,
 * among them "step", "worker" and a non-empty object "layers" (*layers).
 * ns__json_get_step_worker(): root's "step" and "worker".
 * ns__json_check_layer(): the valid layer name 'name' copied to 'name_dst',
 * and its value 'v' an object with members in 'known' only. */
int ns__json_check_numbers(const json_t *v, const char *field, ns_error_detail_t *err);
int ns__json_check_root(const json_t *root, const char *const *known, const json_t **layers,
                        ns_error_detail_t *err);
int ns__json_get_step_worker(const json_t *root, uint64_t *step, uint32_t *worker,
                             ns_error_detail_t *err);
int ns__json_check_layer(char name_dst[NS_NAME_MAX + 1], const char *name, const json_t *v,
                         const char *const *known, ns_error_detail_t *err);

/* Little-endian stores for the safetensors writers. */
void ns__store_le32(uint8_t *p, uint32_t v);
void ns__store_le64(uint8_t *p, uint64_t v);

/* ns__safetensors_header_tensor() : append to a safetensors header the entry
 * of tensor "<layer>.<part>" (a JSON key, then its dtype, shape [channels] or
 * [] when 'scalar', and data_offsets [begin, end]), led by a comma. */
int ns__safetensors_header_tensor(ns_buf_t *h, const char *layer, const char *part,
                                  const char *dtype, int scalar, size_t channels, uint64_t begin,
                                  uint64_t end);

/* ns__safetensors_frame() : close the JSON 'header' (its final "}" is
 * appended here), pad it to 8 bytes, and append the length prefix and the
 * header to 'dst' followed by 'data_len' bytes of room, which the caller
 * fills through *data. @return 0, NS_ETOOLARGE or NS_ENOMEM (dst freed). */
int ns__safetensors_frame(ns_buf_t *dst, ns_buf_t *header, uint64_t data_len, uint8_t **data);

#endif /* NS_PROTO_INTERNAL_H */
