/* normstat/proto.h - the wire protocol of normstat (libnsproto), shared by
 * normstatd and its clients.
 *
 * Decoding turns a whole request body into a plain C struct and validates all
 * of it first: a body either decodes completely or the call fails with one
 * error that names the offending field by its JSON path, e.g.
 *   "layers.layer1.0.bn1.mean: expected 64 values, got 63".
 * Nothing half-decoded is ever returned. Encoding writes responses (JSON or
 * safetensors) into a byte buffer with a hard ceiling.
 *
 * Threads: no global state; every function is reentrant. Objects are not
 * shared between threads without the caller's locking. */
#ifndef NORMSTAT_PROTO_H
#define NORMSTAT_PROTO_H

#include <stddef.h>
#include <stdint.h>

#include <normstat/core.h>
#include <normstat/export.h>
#include <normstat/wire_errors.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Longest run, layer or domain name; names match [A-Za-z0-9_.:-]{1,128}. */
#define NS_NAME_MAX 128

/* ---------------------------------------------------------------- errors */

/* Detail of a failed call: caller-owned, first error wins (a call does not
 * overwrite a detail already set), may be NULL where accepted. 'field' is the
 * JSON path of the offending field ("" when the whole body is at fault);
 * 'message' is the full text sent to clients, "<field>: <what>". */
typedef struct ns_error_detail_s {
    int code; /* NS_E*, 0 while no error is recorded */
    char field[256];
    char message[512];
} ns_error_detail_t;

/*! ns_error_set() :
 *  Record an error in 'detail' unless one is already there; formats
 *  "<field>: <fmt...>" (or just fmt when field is "" or NULL).
 *  @return code, so callers can `return ns_error_set(...)`. */
NS_API int ns_error_set(ns_error_detail_t *detail, int code, const char *field, const char *fmt,
                        ...) __attribute__((format(printf, 4, 5)));

/*! ns_name_valid() : 1 if 's' matches [A-Za-z0-9_.:-]{1,128}, else 0. */
NS_API int ns_name_valid(const char *s);

/* ---------------------------------------------------------------- buffers */

/* A growable byte buffer with a hard ceiling (curl's dynbuf): appending past
 * 'cap_max' fails with NS_ETOOLARGE, a failed append frees the contents, and
 * ns_buf_take() hands the bytes to the caller. Zero-initialise, or use
 * ns_buf_init(). */
typedef struct ns_buf_s {
    char *data;
    size_t len;
    size_t cap;
    size_t cap_max;
} ns_buf_t;

/*! ns_buf_init() : an empty buffer holding at most 'cap_max' bytes; 0 means
 *  no ceiling (so a zero-initialised buffer is unbounded). */
NS_API void ns_buf_init(ns_buf_t *buf, size_t cap_max);
/*! @return 0, NS_ETOOLARGE past the ceiling or NS_ENOMEM; on error the
 *  buffer is emptied and freed. */
NS_API int ns_buf_append(ns_buf_t *buf, const void *src, size_t src_len);
/*! ns_buf_reserve() : make room for 'extra' more bytes (plus the NUL)
 *  without changing len, e.g. for a body whose Content-Length is known.
 *  @return as ns_buf_append(). */
NS_API int ns_buf_reserve(ns_buf_t *buf, size_t extra);
NS_API int ns_buf_printf(ns_buf_t *buf, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/*! ns_buf_take() : the bytes (NUL-terminated, *len set if non-NULL) are the
 *  caller's to free(); the buffer is left empty. Never NULL (empty string). */
NS_API char *ns_buf_take(ns_buf_t *buf, size_t *len);
NS_API void ns_buf_free(ns_buf_t *buf);

/* ---------------------------------------------------------------- field names */

/* The names statistics travel under, one spelling for the server and its
 * clients. Per layer of a report and of a /sync or source=last answer: */
#define NS_FIELD_MEAN  "mean"
#define NS_FIELD_VAR   "var"   /* biased in answers; as "unbiased" says in reports */
#define NS_FIELD_COUNT "count" /* values per channel */
/* Per layer of a statistics answer, keyed like a PyTorch BatchNorm state_dict
 * (source=ema); source=precise counts num_batches and num_samples instead. */
#define NS_FIELD_RUNNING_MEAN        "running_mean"
#define NS_FIELD_RUNNING_VAR         "running_var"
#define NS_FIELD_NUM_BATCHES_TRACKED "num_batches_tracked"
#define NS_FIELD_NUM_BATCHES         "num_batches"
#define NS_FIELD_NUM_SAMPLES         "num_samples"
#define NS_FIELD_STEP                "step" /* also the step of a report or answer */
/* Top level of a /sync answer. */
#define NS_FIELD_COMPLETE "complete"
#define NS_FIELD_WORKERS  "workers"
#define NS_FIELD_MISSING  "missing"
/* Per layer of a gradient-sum request or answer (POST /grad). */
#define NS_FIELD_SUM_DY     "sum_dy"
#define NS_FIELD_SUM_DY_XMU "sum_dy_xmu"

/* ---------------------------------------------------------------- reports */

/* Which population statistics a report feeds ("update" field). */
#define NS_UPDATE_EMA     1u
#define NS_UPDATE_PRECISE 2u

/* Which arrivals a /sync answer combines ("scope" field). */
typedef enum ns_scope_e { NS_SCOPE_GLOBAL = 0, NS_SCOPE_DOMAIN = 1 } ns_scope_t;

/* One layer of a report. When count == 0 and the body omitted mean and var,
 * channels == 0 and mean == var == NULL. var is always biased after decoding
 * (an unbiased report is converted with (n-1)/n). mean64 and var64 are the
 * arrays in double when they travel as F64 (safetensors, both tensors F64),
 * else NULL: decoding keeps them (mean and var then hold them rounded to
 * float32) and the combination uses them; encoding writes them as F64.
 * 'borrowed' (ns_report_decode_safetensors_borrowed()): mean and var point
 * into the decoded body, valid while it lives; ns_report_free() leaves them. */
typedef struct ns_layer_report_s {
    char name[NS_NAME_MAX + 1];
    uint64_t count;
    size_t channels;
    float *mean;
    float *var;
    double *mean64;
    double *var64;
    int borrowed;
} ns_layer_report_t;

/* One worker's report of one step: the body of /batches and /sync. Layers are
 * sorted by name (strcmp) and unique. */
typedef struct ns_report_s {
    uint64_t step;
    uint32_t worker;
    char domain[NS_NAME_MAX + 1]; /* "default" when absent */
    int unbiased;                 /* as sent; var is already converted */
    unsigned update;              /* NS_UPDATE_* bits; both when absent */
    ns_scope_t scope;             /* NS_SCOPE_GLOBAL when absent */
    int64_t world_size;           /* -1 when absent; used when a report creates a run */
    size_t n_layers;
    ns_layer_report_t *layers;
    void *scratch; /* decoded into a ns_report_scratch_t (which owns it), else NULL */
} ns_report_t;

/*! ns_report_decode_json() :
 *  Decode and fully validate a JSON report body (jansson, duplicate keys
 *  rejected). On success *dst owns a new report (free with ns_report_free).
 *  @return 0; NS_EINVAL (400) for malformed JSON, wrong types, missing or
 *  unknown fields, bad names, mean/var lengths that differ; NS_EVALUE (422)
 *  for non-finite means or variances and negative variances. On error *dst
 *  is NULL and 'err' says which field. */
NS_API int ns_report_decode_json(ns_report_t **dst, const char *src, size_t src_len,
                                 ns_error_detail_t *err);

/*! ns_report_decode_safetensors() :
 *  The same report as safetensors: tensors <layer>.mean, <layer>.var (F32,
 *  [C]) and <layer>.count (I64, []), scalars as strings in __metadata__
 *  ("step", "worker", "domain", "unbiased", "update" = "ema,precise",
 *  "scope", "world_size"). The input is hostile: every length, offset, dtype
 *  and shape is checked before use. @return as ns_report_decode_json(). */
NS_API int ns_report_decode_safetensors(ns_report_t **dst, const uint8_t *src, size_t src_len,
                                        ns_error_detail_t *err);

/*! ns_report_decode_safetensors_borrowed() :
 *  As ns_report_decode_safetensors(), but a layer whose mean and var are
 *  little-endian F32 at 4-byte aligned offsets of a biased report is not
 *  copied: its arrays point into 'src' (the layer's 'borrowed' is 1), so the
 *  report must not outlive 'src'. Other layers are decoded as usual. */
NS_API int ns_report_decode_safetensors_borrowed(ns_report_t **dst, const uint8_t *src,
                                                 size_t src_len, ns_error_detail_t *err);

/* What a decoder keeps from one report to the next (a connection's), so
 * that a stream of reports of one shape allocates nothing: the report and
 * its layers, the safetensors header's tensor arrays, the layer index. */
typedef struct ns_report_scratch_s ns_report_scratch_t;

/*! ns_report_scratch_new() : @return an empty scratch, or NULL (no memory). */
NS_API ns_report_scratch_t *ns_report_scratch_new(void);
/*! ns_report_scratch_free() : free it and what it keeps; accepts NULL. The
 *  report decoded into it must have been freed (ns_report_free()). */
NS_API void ns_report_scratch_free(ns_report_scratch_t *scratch);
/*! ns_report_scratch_bytes() : what it holds on the heap now. */
NS_API size_t ns_report_scratch_bytes(const ns_report_scratch_t *scratch);

/*! ns_report_decode_safetensors_into() :
 *  ns_report_decode_safetensors_borrowed() into 'scratch': *dst is the
 *  scratch's report (arrays borrowed from 'src' where they can be), valid
 *  until ns_report_free(*dst), which must come before the next decode into
 *  the scratch and frees only the arrays decoding allocated. */
NS_API int ns_report_decode_safetensors_into(ns_report_scratch_t *scratch, ns_report_t **dst,
                                             const uint8_t *src, size_t src_len,
                                             ns_error_detail_t *err);

/* What a body is decoded as, for ns_decode_bound(). */
typedef enum ns_decode_kind_e {
    NS_DECODE_REPORT_JSON = 0,    /* ns_report_decode_json(), its fast path */
    NS_DECODE_JSON_TREE = 1,      /* any jansson decode of the whole body */
    NS_DECODE_REPORT_SAFETENSORS, /* ns_report_decode_safetensors() */
    NS_DECODE_GRAD_SAFETENSORS    /* ns_grad_decode_safetensors() */
} ns_decode_kind_t;

/*! ns_decode_bound() :
 *  An upper bound of the bytes decoding 'src' as 'kind' allocates at its
 *  peak (the decoded message and everything transient, allocator overhead
 *  included), found by a scan that allocates nothing: counts of braces,
 *  brackets and commas for JSON, the declared header length for
 *  safetensors. A consumer checks it against a memory budget before it
 *  decodes, so a body that could not fit is refused unparsed. */
NS_API uint64_t ns_decode_bound(const void *src, size_t src_len, ns_decode_kind_t kind);

/*! ns_report_decode_json_bounded() :
 *  ns_report_decode_json() that allocates at most 'max_bytes' (as
 *  ns_decode_bound() counts): the fast path's bound is the caller's to check
 *  beforehand; a body the fast path does not read (not in the canonical
 *  form) is decoded with jansson only if NS_DECODE_JSON_TREE's bound fits,
 *  else NS_EMEMORY with a message saying what it would need. */
NS_API int ns_report_decode_json_bounded(ns_report_t **dst, const char *src, size_t src_len,
                                         uint64_t max_bytes, ns_error_detail_t *err);

/*! ns_report_free() : free a decoded report; accepts NULL. One decoded into
 *  a scratch gives its layers back to it. */
NS_API void ns_report_free(ns_report_t *report);

/* ---------------------------------------------------------------- run config */

/* The most workers a run may have. A world_size travels as any integer in
 * [1, 2^32 - 1] (beyond that a body is malformed); a run refuses one above
 * this limit with NS_EINVAL, "world_size: must be in [1, 65536]". */
#define NS_WORLD_SIZE_MAX 65536u

/* What a run accepts of one layer of a report (NS_EVALUE beyond), chosen so
 * that nothing derived from accepted reports can overflow:
 *  - count <= 2^32: a step's total is at most NS_WORLD_SIZE_MAX * 2^32 =
 *    2^48, so it fits a uint64_t and a double exactly; a layer's PreciseBN
 *    accumulators (at most 2^63 - 1 samples, served as int64; a report that
 *    would pass it is refused) then hold at least 32767 steps of the
 *    largest possible total.
 *  - |mean| <= 2^60 and var <= 2^120: every combination, EMA, PreciseBN
 *    accumulator, pooled view and mixture of such values has |mean| <= 2^60
 *    and a variance below 2^123, well inside float32, so no served value
 *    is ever infinite (JSON null). */
#define NS_COUNT_MAX    ((uint64_t)1 << 32)
#define NS_MEAN_ABS_MAX 0x1p60
#define NS_VAR_MAX      0x1p120

/* Body of PUT /v1/runs/{run}. has_* say which fields the body set. */
typedef struct ns_run_config_s {
    int has_world_size, has_momentum, has_sync_timeout_ms, has_on_timeout, has_ema_debias;
    uint32_t world_size;      /* >= 1; default 1 */
    double momentum;          /* [0, 1] or NS_MOMENTUM_CUMULATIVE (JSON null); default 0.1 */
    uint64_t sync_timeout_ms; /* >= 1; default 60000 */
    int on_timeout_drop;      /* 0 "partial" (default), 1 "drop" */
    int ema_debias;           /* default 0 */
} ns_run_config_t;

/*! ns_run_config_defaults() : the defaults of doc/design.md "Concepts", every has_* 0. */
NS_API void ns_run_config_defaults(ns_run_config_t *cfg);

/*! ns_run_config_decode_json() :
 *  Decode a PUT body into 'dst' (which keeps its values for absent fields,
 *  and gets has_* set for present ones). An empty body is an empty object.
 *  @return 0 or NS_EINVAL with 'err' naming the field; dst unchanged on error. */
NS_API int ns_run_config_decode_json(ns_run_config_t *dst, const char *src, size_t src_len,
                                     ns_error_detail_t *err);

/* Which fields ns_run_config_encode_json() writes. */
typedef enum ns_run_config_fields_e {
    NS_RUN_CONFIG_ALL = 0, /* every field: a run's view, a store's log, a checkpoint */
    NS_RUN_CONFIG_SET = 1  /* only those whose has_* is set: a PUT changing just them */
} ns_run_config_fields_t;

/*! ns_run_config_encode_json() :
 *  Append 'cfg' to 'dst' as compact JSON, the form ns_run_config_decode_json()
 *  reads: {"world_size", "momentum" (null for NS_MOMENTUM_CUMULATIVE, else a
 *  number that reads back as the same double), "sync_timeout_ms",
 *  "on_timeout" ("partial" or "drop"), "ema_debias"} in that order.
 *  @return 0, NS_ETOOLARGE or NS_ENOMEM (dst freed on error). */
NS_API int ns_run_config_encode_json(ns_buf_t *dst, const ns_run_config_t *cfg,
                                     ns_run_config_fields_t fields);

/* ---------------------------------------------------------------- mixtures */

typedef struct ns_mixture_weight_s {
    char domain[NS_NAME_MAX + 1];
    double weight;
} ns_mixture_weight_t;

/*! ns_mixture_parse() :
 *  Parse a mixture query "a:0.7,b:0.3" into dst[0..dst_cap), writing the
 *  count to *dst_len. Weights are finite and >= 0, at least one > 0, domains
 *  valid names, none repeated.
 *  @return 0 or NS_EINVAL (field "mixture"). */
NS_API int ns_mixture_parse(ns_mixture_weight_t *dst, size_t dst_cap, size_t *dst_len,
                            const char *src, ns_error_detail_t *err);

/* ---------------------------------------------------------------- responses */

typedef enum ns_format_e { NS_FORMAT_JSON = 0, NS_FORMAT_SAFETENSORS = 1 } ns_format_t;

/* A top-level field of a statistics response: JSON member and, in
 * safetensors, a __metadata__ entry (values become strings there). */
/* NS_META_INT_LIST: 'str' holds comma-separated decimal integers ("2,3", or
 * "" for none), a JSON array of integers and the same string in safetensors. */
typedef enum ns_meta_kind_e {
    NS_META_STRING,
    NS_META_INT,
    NS_META_BOOL,
    NS_META_INT_LIST
} ns_meta_kind_t;
typedef struct ns_meta_s {
    const char *key;
    ns_meta_kind_t kind;
    const char *str; /* NS_META_STRING, NS_META_INT_LIST */
    int64_t num;     /* NS_META_INT, NS_META_BOOL (0/1) */
} ns_meta_t;

#define NS_OUT_ARRAYS_MAX  2
#define NS_OUT_SCALARS_MAX 4

/* One layer of a statistics response: up to two per-channel arrays (served
 * as float32) and up to four integer scalars (I64 in safetensors). */
typedef struct ns_out_layer_s {
    const char *name;
    size_t channels;
    size_t n_arrays;
    const char *array_names[NS_OUT_ARRAYS_MAX]; /* NS_FIELD_*, e.g. NS_FIELD_RUNNING_MEAN */
    const double *arrays[NS_OUT_ARRAYS_MAX];
    size_t n_scalars;
    const char *scalar_names[NS_OUT_SCALARS_MAX]; /* e.g. NS_FIELD_NUM_BATCHES_TRACKED */
    int64_t scalars[NS_OUT_SCALARS_MAX];
} ns_out_layer_t;

/*! ns_stats_encode() :
 *  Encode a statistics or /sync response into 'dst'.
 *  JSON: {<meta...>, "layers": {<name>: {<arrays as float32 numbers>,
 *  <scalars>}}}. Safetensors: tensors "<name>.<array>" (F32, [channels]) and,
 *  for the scalars a state_dict holds ("num_batches_tracked", "count"),
 *  "<name>.<scalar>" (I64, []); meta and the other scalars ("<name>.step")
 *  are __metadata__ strings. So torch's load_state_dict(strict=False) takes
 *  the file with no unexpected keys.
 *  @return 0, NS_ETOOLARGE or NS_ENOMEM (dst freed). */
NS_API int ns_stats_encode(ns_buf_t *dst, ns_format_t format, const ns_meta_t *meta, size_t n_meta,
                           const ns_out_layer_t *layers, size_t n_layers);

/*! ns_stats_json_parts() / ns_stats_encode_json_part() :
 *  The JSON encoding of ns_stats_encode() cut into parts that can be
 *  encoded apart, in any order and by several threads at once: part 0 is
 *  the opening and the meta, then each part holds layer arrays (one per
 *  part; with more arrays than NS_STATS_JSON_PARTS_MAX - 1, consecutive
 *  ones dealt evenly into that many parts, so the parts fit one vectored
 *  write); a layer without arrays counts as one. The last part closes the
 *  answer. Parts 0 .. ns_stats_json_parts() - 1 appended one after the
 *  other are the bytes ns_stats_encode() writes for NS_FORMAT_JSON.
 *  @return (encode_json_part) 0, NS_EINVAL (no such part), NS_ETOOLARGE or
 *  NS_ENOMEM; 'dst' then holds a partial text. */
#define NS_STATS_JSON_PARTS_MAX 256
NS_API size_t ns_stats_json_parts(const ns_out_layer_t *layers, size_t n_layers);
NS_API int ns_stats_encode_json_part(ns_buf_t *dst, const ns_meta_t *meta, size_t n_meta,
                                     const ns_out_layer_t *layers, size_t n_layers, size_t part);

/*! ns_error_encode_json() :
 *  {"error": {"code": "<wire name>", "message": "<message>"}}.
 *  @return 0 or NS_ENOMEM. */
NS_API int ns_error_encode_json(ns_buf_t *dst, int code, const char *message);

/* ---------------------------------------------------------------- safetensors */

/* One tensor of a parsed safetensors file; data points into the input. */
typedef enum ns_dtype_e { NS_DTYPE_F32, NS_DTYPE_F64, NS_DTYPE_I64, NS_DTYPE_OTHER } ns_dtype_t;
typedef struct ns_tensor_s {
    char name[2 * NS_NAME_MAX + 32];
    ns_dtype_t dtype;
    size_t ndim;
    uint64_t shape[4];
    const uint8_t *data; /* little-endian, possibly unaligned */
    size_t nbytes;
} ns_tensor_t;

/* A parsed safetensors file: tensors sorted by data offset, metadata as a
 * JSON object text (or NULL). Borrowed views into the caller's input. */
typedef struct ns_safetensors_s ns_safetensors_t;

/*! ns_safetensors_parse() :
 *  Parse and check a safetensors buffer: 8-byte little-endian header length
 *  within the buffer and at most 100 MB, a JSON object header, every
 *  tensor's dtype known, shape product * dtype size == its byte range, ranges
 *  inside the data area, not overlapping, and covering it.
 *  @return 0 or NS_EINVAL with 'err'. */
NS_API int ns_safetensors_parse(ns_safetensors_t **dst, const uint8_t *src, size_t src_len,
                                ns_error_detail_t *err);
NS_API size_t ns_safetensors_count(const ns_safetensors_t *st);
NS_API const ns_tensor_t *ns_safetensors_at(const ns_safetensors_t *st, size_t i);
NS_API const ns_tensor_t *ns_safetensors_find(const ns_safetensors_t *st, const char *name);
/*! @return the __metadata__ value of 'key' (borrowed), or NULL. */
NS_API const char *ns_safetensors_meta(const ns_safetensors_t *st, const char *key);
NS_API void ns_safetensors_free(ns_safetensors_t *st);

/* ---------------------------------------------------------------- report encoding */

/*! ns_report_encode() :
 *  Append 'report' to 'dst' as the body of /batches or /sync, in JSON or in
 *  safetensors (the forms ns_report_decode_json() and
 *  ns_report_decode_safetensors() read). Layers are written in the caller's
 *  order; a layer with channels == 0 is written as count only. var is sent as
 *  given, with "unbiased" saying how it is to be read. An empty 'domain' and
 *  world_size -1 are left out (the server's defaults); scope is written only
 *  when it is NS_SCOPE_DOMAIN. Non-finite values make JSON fail with
 *  NS_EVALUE (JSON cannot carry them) and travel as they are in safetensors,
 *  for the server to reject.
 *  @return 0; NS_EINVAL for a report the server could never accept (bad
 *  names, update 0, count > 0 without arrays, no layers); NS_EVALUE;
 *  NS_ETOOLARGE or NS_ENOMEM. On error 'dst' is freed and 'err' (may be
 *  NULL) says why. */
NS_API int ns_report_encode(ns_buf_t *dst, ns_format_t format, const ns_report_t *report,
                            ns_error_detail_t *err);

/* ---------------------------------------------------------------- gradient sums */

/* One layer of a gradient-sum request or answer (POST /grad): the
 * per-channel sums SyncBatchNorm all-reduces in backward. Both arrays live in
 * one block of 2 * channels doubles: sum_dy owns it (free(sum_dy) frees both),
 * sum_dy_xmu == sum_dy + channels. */
typedef struct ns_grad_layer_s {
    char name[NS_NAME_MAX + 1];
    size_t channels;
    double *sum_dy;
    double *sum_dy_xmu;
} ns_grad_layer_t;

/* A request (step, worker, layers) or an answer (step, workers, layers) of
 * POST /v1/runs/{run}/grad. Layers are sorted by name (strcmp) and unique.
 * 'dtype' is the element type the arrays travelled in: NS_DTYPE_F32 or
 * NS_DTYPE_F64 for safetensors, NS_DTYPE_F64 for JSON (numbers are read as
 * doubles); an answer is encoded in it. Values are widened to double on
 * decoding. */
typedef struct ns_grad_s {
    uint64_t step;
    uint32_t worker;  /* request: the sender */
    uint32_t workers; /* answer: the workers summed */
    ns_dtype_t dtype;
    size_t n_layers;
    ns_grad_layer_t *layers;
} ns_grad_t;

/*! ns_grad_decode_json() :
 *  Decode and fully validate {"step", "worker", "layers": {<layer>:
 *  {"sum_dy": [C numbers], "sum_dy_xmu": [C numbers]}}}: unknown or missing
 *  fields, wrong types, bad names, empty or unequal arrays are NS_EINVAL
 *  (400) naming the field. On success *dst owns a new request (free with
 *  ns_grad_free()). @return 0, NS_EINVAL or NS_ENOMEM; *dst NULL on error. */
NS_API int ns_grad_decode_json(ns_grad_t **dst, const char *src, size_t src_len,
                               ns_error_detail_t *err);

/*! ns_grad_decode_safetensors() :
 *  The same request as safetensors: tensors <layer>.sum_dy and
 *  <layer>.sum_dy_xmu, shape [C], all of one dtype, F32 or F64; "step" and
 *  "worker" as decimal strings in __metadata__ ("format" is ignored, other
 *  entries refused). Structure errors are NS_EINVAL (400); a non-finite
 *  value is NS_EVALUE (422) naming the element, e.g.
 *  "layers.layer1.0.bn1.sum_dy[3]". The input is hostile: everything is
 *  checked before use. @return as ns_grad_decode_json(), or NS_EVALUE. */
NS_API int ns_grad_decode_safetensors(ns_grad_t **dst, const uint8_t *src, size_t src_len,
                                      ns_error_detail_t *err);

/*! ns_grad_free() : free a request or answer and its arrays; accepts NULL. */
NS_API void ns_grad_free(ns_grad_t *grad);

/*! ns_grad_encode_answer() :
 *  Append the answer of POST /grad for 'grad' (step, workers, layers) to
 *  'dst'. JSON: {"step", "workers", "layers": {<layer>: {"sum_dy": [...],
 *  "sum_dy_xmu": [...]}}}, each double printed in the fewest digits that
 *  read back as the same double. Safetensors: <layer>.sum_dy and
 *  <layer>.sum_dy_xmu in grad->dtype (F32: each double rounded once to
 *  float32; beyond its range it becomes infinity), "step" and "workers" as
 *  __metadata__ strings. Every value must be finite for JSON.
 *  @return 0, NS_EVALUE (non-finite value in JSON), NS_ETOOLARGE or NS_ENOMEM
 *  (dst freed on error). */
NS_API int ns_grad_encode_answer(ns_buf_t *dst, ns_format_t format, const ns_grad_t *grad);

#ifdef __cplusplus
}
#endif
#endif /* NORMSTAT_PROTO_H */
