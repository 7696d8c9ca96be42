/* normstat/client.h - libnormstat, the C client of normstatd.
 *
 * Two interfaces over the same HTTP API (proto/openapi.yaml; doc/design.md):
 *
 *  * ns_client_t, blocking: one call per endpoint, each returning when the
 *    answer is in. One libcurl easy handle per client, reused for every call,
 *    so consecutive calls share one keep-alive connection.
 *  * ns_client_async_t, non-blocking, driven by the caller's libuv loop
 *    (libcurl's multi-socket API on uv_poll_t and uv_timer_t): a trainer
 *    queues a report and goes on with its step; a callback on the loop thread
 *    delivers the outcome. Concurrent requests share a pool of keep-alive
 *    connections.
 *
 * Errors. Every call returns 0 or a negative NS_E* code (the server's, of
 * normstat/wire_errors.h, or the client's own, NS_CLIENT_ERROR_MAP below) and
 * fills an optional caller-owned ns_error_detail_t (first error wins).
 * An error answer of the server reaches the caller intact: its wire code
 * ("duplicate_report") is mapped back to its NS_E* value and its message is
 * copied verbatim into detail->message. Failures of the client itself are
 * distinct codes: NS_ECONNECT (refused or unreachable: nothing was sent),
 * NS_EREQTIMEOUT (no complete answer within options.timeout_ms),
 * NS_EBADRESPONSE (an answer that is not the API's, e.g. a proxy's HTML 502;
 * the message says "HTTP <status>: <start of body>", or "HTTP <status>
 * <code>: <message>" for an error in the API's format with a code of
 * another program, e.g. a shard proxy's 502 shard_unavailable).
 *
 * Retries. Only where they are safe: GETs are retried after a connection
 * failure or timeout; DELETE, PUT and precise reset only when the
 * connection could not be made (nothing was sent). A report (/batches) is
 * idempotent per (worker, step), so it is retried after any transport
 * failure, and when a retry is answered 409 duplicate_report (or
 * stale_step, the step the first attempt completed has finalized) the first
 * attempt landed, and the call succeeds. /sync is retried only when the
 * connection could not be made, since its answer cannot be recovered from a
 * duplicate. At most options.retries retries, options.retry_delay_ms apart
 * (blocking interface; the asynchronous one retries at once). Beneath these
 * rules libcurl itself resends a request once when a reused keep-alive
 * connection turns out to have been closed before any byte of the answer
 * (the usual idle-connection race); for a report that is harmless, and a
 * /sync resent that way may be answered duplicate_report.
 *
 * Threads. An ns_client_t is used by one thread at a time; create one per
 * thread. An ns_client_async_t and everything queued on it belong to the
 * thread running its uv loop; its callbacks run there. ns_result_t objects
 * are immutable once returned and may be read from any thread. libcurl's
 * global initialisation happens once, on the first create (thread-safe with
 * libcurl >= 7.84).
 *
 * Ownership: create/free for objects the library allocates; ns_buf_t
 * outputs (normstat/proto.h) are appended to and belong to the caller, who
 * frees them with ns_buf_free() (also after an error). Reports are read during
 * the call only: the caller's arrays may be reused as soon as it returns, also
 * in the asynchronous interface. */
#ifndef NORMSTAT_CLIENT_H
#define NORMSTAT_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#include <normstat/export.h>
#include <normstat/proto.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The server a client talks to when no URL is given (normstatd's default). */
#define NS_CLIENT_DEFAULT_URL "http://127.0.0.1:8750"

/* ---------------------------------------------------------------- errors */

/* Failures of the client itself, never sent by a server; their codes follow
 * those of normstat/wire_errors.h and are pinned likewise.
 * XX(NAME, code, name, default message) */
#define NS_CLIENT_ERROR_MAP(XX)                                                                    \
    XX(ECONNECT, -22, "connect_failed", "could not connect to the server")                         \
    XX(EREQTIMEOUT, -23, "request_timeout", "no answer within the client's timeout")               \
    XX(EBADRESPONSE, -24, "bad_response", "unexpected response from the server")

#define NS__CLIENT_ENUM(name, code, wire, msg) NS_##name = code,
enum ns_client_error_e { NS_CLIENT_ERROR_MAP(NS__CLIENT_ENUM) };
#undef NS__CLIENT_ENUM

/*! ns_client_strerror() :
 *  @return the default message of any code this library returns: the
 *  client's own above, else ns_strerror(). Static storage. */
NS_API const char *ns_client_strerror(int code);

/*! ns_client_error_name() :
 *  @return the name of any code this library returns: the client's own
 *  ("connect_failed"), else the wire name of ns_error_name(). */
NS_API const char *ns_client_error_name(int code);

/* ---------------------------------------------------------------- options */

typedef struct ns_client_options_s {
    const char *url;         /* base URL, e.g. "http://host:8750"; NULL: the default */
    long timeout_ms;         /* whole exchange; 0: none. Default 30000 */
    long connect_timeout_ms; /* connection set-up; 0: libcurl's. Default 5000 */
    unsigned retries;        /* extra attempts where safe. Default 2 */
    long retry_delay_ms;     /* between attempts (blocking). Default 100 */
    size_t max_response;     /* ceiling of an answer's body in bytes; 0: none */
    const char *token;       /* sent as "Authorization: Bearer <token>"; NULL or "": none.
                              * Copied; visible ASCII without spaces (else NS_EINVAL) */
    const char *cacert;      /* https: PEM file of the CAs to trust instead of the system's
                              * (a self-signed server certificate works); NULL or "":
                              * libcurl's default bundle. Copied */
} ns_client_options_t;

/*! ns_client_options_default() : fills 'opts' with the defaults above. */
NS_API void ns_client_options_default(ns_client_options_t *opts);

/* ---------------------------------------------------------------- results */

/* One layer of an answer with per-channel statistics. Arrays are float32, as
 * they travel; borrowed from the result that holds them. Fields the source
 * does not serve are -1. */
typedef struct ns_result_layer_s {
    const char *name;
    size_t channels;
    const float *mean;   /* running_mean (ema, precise), mean (last, sync) */
    const float *var;    /* running_var (ema, precise), var (last, sync; biased) */
    int64_t count;       /* values per channel (last, sync); num_samples (precise) */
    int64_t num_batches; /* num_batches_tracked (ema); num_batches (precise) */
    int64_t step;        /* last step applied to the layer (stats answers) */
} ns_result_layer_t;

/* The decoded answer of /sync or /stats. Opaque; read with the functions
 * below; free with ns_result_free(). Layers are sorted by name. */
typedef struct ns_result_s ns_result_t;

/*! ns_result_count() : number of layers. */
NS_API size_t ns_result_count(const ns_result_t *res);
/*! ns_result_at() : layer i (borrowed), NULL when i is out of range. */
NS_API const ns_result_layer_t *ns_result_at(const ns_result_t *res, size_t i);
/*! ns_result_find() : the layer called 'name' (borrowed), or NULL. */
NS_API const ns_result_layer_t *ns_result_find(const ns_result_t *res, const char *name);
/*! ns_result_step() : the answer's "step" (-1 when absent). */
NS_API int64_t ns_result_step(const ns_result_t *res);
/*! ns_result_complete() : /sync: 1 if every worker arrived, 0 if a timeout
 *  finalized the step with the arrivals it had; 1 for other answers. */
NS_API int ns_result_complete(const ns_result_t *res);
/*! ns_result_workers() : /sync: arrivals combined; -1 for other answers. */
NS_API int64_t ns_result_workers(const ns_result_t *res);

/*! ns_result_copy() :
 *  Copy layer 'name''s mean and var into caller buffers of 'dst_cap' floats
 *  each (either may be NULL to skip it).
 *  @return the layer's channel count; NS_ENOTFOUND if no such layer;
 *  NS_EINVAL if dst_cap is smaller than the channel count. */
NS_API long ns_result_copy(const ns_result_t *res, const char *name, float *mean_dst,
                           float *var_dst, size_t dst_cap);
/*! ns_result_copy_f64() : as ns_result_copy(), widened to double. */
NS_API long ns_result_copy_f64(const ns_result_t *res, const char *name, double *mean_dst,
                               double *var_dst, size_t dst_cap);

/*! ns_result_decode() :
 *  Decode a /sync or /stats answer body ('format' says which encoding) into
 *  a new result. Exposed so that bodies stored in files can be read too.
 *  @return 0 with *dst set, or NS_EBADRESPONSE with 'err'. */
NS_API int ns_result_decode(ns_result_t **dst, ns_format_t format, const void *src, size_t src_len,
                            ns_error_detail_t *err);

/*! ns_result_free() : accepts NULL. */
NS_API void ns_result_free(ns_result_t *res);

/* ---------------------------------------------------------------- queries */

/* Query of GET /v1/runs/{run}/stats; NULL / 0 fields are left out, so the
 * server's defaults apply (source ema, domain "*", all layers, unbiased). */
typedef struct ns_stats_query_s {
    const char *source;  /* "ema", "precise" or "last" */
    const char *domain;  /* a domain or "*"; exclusive with mixture */
    const char *mixture; /* "a:0.7,b:0.3" */
    const char *layers;  /* "l1,l2" */
    int variance_biased; /* precise only: M2/n instead of M2/(n-1) */
} ns_stats_query_t;

/* ---------------------------------------------------------------- blocking client */

typedef struct ns_client_s ns_client_t;

/*! ns_client_create() :
 *  A client for the server at opts->url ('opts' NULL: all defaults). The
 *  options are copied. Nothing is sent until the first call.
 *  @return 0 with *dst set; NS_EINVAL for a URL that is not http(s)://;
 *  NS_ENOMEM. */
NS_API int ns_client_create(ns_client_t **dst, const ns_client_options_t *opts,
                            ns_error_detail_t *err);

/*! ns_client_free() : closes the connection; accepts NULL. */
NS_API void ns_client_free(ns_client_t *client);

/*! ns_client_last_status() : HTTP status of the last answer (0 if none). */
NS_API long ns_client_last_status(const ns_client_t *client);

/*! ns_client_runs_list() : GET /v1/runs; the JSON body is appended to 'dst'. */
NS_API int ns_client_runs_list(ns_client_t *client, ns_buf_t *dst, ns_error_detail_t *err);

/*! ns_client_run_put() :
 *  PUT /v1/runs/{run} with the fields of 'cfg' whose has_* are set ('cfg'
 *  NULL: an empty body; momentum NS_MOMENTUM_CUMULATIVE is sent as null).
 *  *created (may be NULL) is 1 on 201, 0 on 200; the run's JSON status is
 *  appended to 'dst' (may be NULL). */
NS_API int ns_client_run_put(ns_client_t *client, const char *run, const ns_run_config_t *cfg,
                             int *created, ns_buf_t *dst, ns_error_detail_t *err);

/*! ns_client_run_get() : GET /v1/runs/{run}; JSON appended to 'dst'. */
NS_API int ns_client_run_get(ns_client_t *client, const char *run, ns_buf_t *dst,
                             ns_error_detail_t *err);

/*! ns_client_run_delete() : DELETE /v1/runs/{run}. */
NS_API int ns_client_run_delete(ns_client_t *client, const char *run, ns_error_detail_t *err);

/*! ns_client_report() :
 *  POST /v1/runs/{run}/batches with 'report' encoded as 'format' (see
 *  ns_report_encode()). Returns once the server accepted it (202). */
NS_API int ns_client_report(ns_client_t *client, const char *run, const ns_report_t *report,
                            ns_format_t format, ns_error_detail_t *err);

/*! ns_client_report_raw() :
 *  POST an already encoded report body ('format' sets its Content-Type),
 *  with the retry rules of ns_client_report(). */
NS_API int ns_client_report_raw(ns_client_t *client, const char *run, const void *src,
                                size_t src_len, ns_format_t format, ns_error_detail_t *err);

/*! ns_client_sync() :
 *  POST /v1/runs/{run}/sync: blocks until every worker reported the step
 *  (or the run's sync timeout passed) and returns the step's global
 *  statistics in a new *dst (free with ns_result_free). Mind that
 *  options.timeout_ms must exceed the time the slowest worker takes. */
NS_API int ns_client_sync(ns_client_t *client, const char *run, const ns_report_t *report,
                          ns_format_t format, ns_result_t **dst, ns_error_detail_t *err);

/*! ns_client_stats() :
 *  GET /v1/runs/{run}/stats ('query' NULL: the defaults) into a new *dst.
 *  Fetched as safetensors, so the values are the server's float32 bits. */
NS_API int ns_client_stats(ns_client_t *client, const char *run, const ns_stats_query_t *query,
                           ns_result_t **dst, ns_error_detail_t *err);

/*! ns_client_stats_fetch() : the raw answer in 'format', appended to 'dst'. */
NS_API int ns_client_stats_fetch(ns_client_t *client, const char *run,
                                 const ns_stats_query_t *query, ns_format_t format, ns_buf_t *dst,
                                 ns_error_detail_t *err);

/*! ns_client_stats_save() :
 *  Write the answer in 'format' to the file 'path' (replaced atomically:
 *  written to "<path>.tmp" and renamed). NS_EIO if the file cannot be written. */
NS_API int ns_client_stats_save(ns_client_t *client, const char *run, const ns_stats_query_t *query,
                                ns_format_t format, const char *path, ns_error_detail_t *err);

/*! ns_client_precise_reset() :
 *  POST /v1/runs/{run}/precise/reset for 'domain' (NULL: all domains);
 *  *generation (may be NULL) receives the new generation number. */
NS_API int ns_client_precise_reset(ns_client_t *client, const char *run, const char *domain,
                                   int64_t *generation, ns_error_detail_t *err);

/*! ns_client_drift() :
 *  GET /v1/runs/{run}/drift: every row's EMA vs PreciseBN drift, worst first
 *  ('domain' NULL: every row; a name, or "*" for the pooled rows); the JSON
 *  answer is appended to 'dst'. */
NS_API int ns_client_drift(ns_client_t *client, const char *run, const char *domain, ns_buf_t *dst,
                           ns_error_detail_t *err);

/*! ns_client_history() :
 *  GET /v1/runs/{run}/history: the last applied steps of 'layer' for one
 *  channel ('domain' NULL: the server's default "*"; 'channel' < 0: 0), with
 *  PreciseBN's current value; the JSON answer is appended to 'dst'. */
NS_API int ns_client_history(ns_client_t *client, const char *run, const char *layer,
                             const char *domain, long channel, ns_buf_t *dst,
                             ns_error_detail_t *err);

/*! ns_client_checkpoint_get() : GET /v1/runs/{run}/checkpoint into 'dst'. */
NS_API int ns_client_checkpoint_get(ns_client_t *client, const char *run, ns_buf_t *dst,
                                    ns_error_detail_t *err);
/*! ns_client_checkpoint_put() : PUT /v1/runs/{run}/checkpoint with a body
 *  that came from ns_client_checkpoint_get(). */
NS_API int ns_client_checkpoint_put(ns_client_t *client, const char *run, const void *src,
                                    size_t src_len, ns_error_detail_t *err);
/*! ns_client_checkpoint_save() : the checkpoint written to the file 'path'
 *  (atomically, as ns_client_stats_save). */
NS_API int ns_client_checkpoint_save(ns_client_t *client, const char *run, const char *path,
                                     ns_error_detail_t *err);
/*! ns_client_checkpoint_restore() : PUT the file 'path' (NS_EIO if unreadable). */
NS_API int ns_client_checkpoint_restore(ns_client_t *client, const char *run, const char *path,
                                        ns_error_detail_t *err);

/*! ns_client_health() :
 *  GET /livez ('ready' 0) or /readyz ('ready' 1). @return 0 when the server
 *  answers 200; its JSON body is appended to 'dst' (may be NULL). */
NS_API int ns_client_health(ns_client_t *client, int ready, ns_buf_t *dst, ns_error_detail_t *err);

/*! ns_client_version() : GET /v1/version; JSON appended to 'dst'. */
NS_API int ns_client_version(ns_client_t *client, ns_buf_t *dst, ns_error_detail_t *err);

/*! ns_client_metrics() : GET /metrics; Prometheus text appended to 'dst'. */
NS_API int ns_client_metrics(ns_client_t *client, ns_buf_t *dst, ns_error_detail_t *err);

/* ---------------------------------------------------------------- asynchronous client */

typedef struct ns_client_async_s ns_client_async_t;

/* libuv's loop (uv_loop_t), declared here so that this header needs <uv.h>
 * only where the caller already uses libuv. */
struct uv_loop_s;

/*! ns_async_cb :
 *  Outcome of an asynchronous call, on the loop thread. 'status' is 0 or an
 *  NS_E* code, 'err' (valid during the call only) its detail. 'result' is
 *  the /sync answer (NULL for reports and on error); the callback owns it and
 *  frees it with ns_result_free(). A callback may queue new requests; it must
 *  not free the client. */
typedef void (*ns_async_cb)(int status, const ns_error_detail_t *err, ns_result_t *result,
                            void *arg);

/*! ns_client_async_create() :
 *  An asynchronous client on 'loop' (which the caller runs). The options
 *  are copied. @return 0, NS_EINVAL, NS_ENOMEM. */
NS_API int ns_client_async_create(ns_client_async_t **dst, struct uv_loop_s *loop,
                                  const ns_client_options_t *opts, ns_error_detail_t *err);

/*! ns_client_async_free() :
 *  Close the client. Requests still in flight are abandoned: their callbacks
 *  are not called. The client's handles are closed on the loop, so run the
 *  loop once more (uv_run) before closing it. Accepts NULL. */
NS_API void ns_client_async_free(ns_client_async_t *client);

/*! ns_client_async_pending() : requests queued or in flight. */
NS_API size_t ns_client_async_pending(const ns_client_async_t *client);

/*! ns_client_async_report() :
 *  Queue POST /v1/runs/{run}/batches; 'cb' (may be NULL) is called once
 *  with the outcome. The report is encoded before this returns.
 *  Requests of the same (run, worker), reports and syncs alike, are sent one
 *  at a time in the order they were queued, because the server requires
 *  each worker's steps to increase; requests of different workers are sent
 *  concurrently. A callback may therefore queue the next step at once.
 *  @return 0 (queued), or an error and 'cb' is never called. */
NS_API int ns_client_async_report(ns_client_async_t *client, const char *run,
                                  const ns_report_t *report, ns_format_t format, ns_async_cb cb,
                                  void *arg, ns_error_detail_t *err);

/*! ns_client_async_sync() :
 *  Queue POST /v1/runs/{run}/sync; 'cb' receives the global statistics.
 *  @return as ns_client_async_report(). */
NS_API int ns_client_async_sync(ns_client_async_t *client, const char *run,
                                const ns_report_t *report, ns_format_t format, ns_async_cb cb,
                                void *arg, ns_error_detail_t *err);

#ifdef __cplusplus
}
#endif
#endif /* NORMSTAT_CLIENT_H */
