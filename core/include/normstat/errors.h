/* normstat/errors.h - the project's error codes, defined once.
 *
 * Every row of NS_ERROR_MAP carries a pinned negative code, the HTTP status it
 * maps to, the stable wire string used in error bodies and metrics labels, and
 * a default message. The enum, ns_strerror(), ns_error_name() and
 * ns_error_http_status() are all generated from this table, so they cannot
 * drift apart. Codes never change value once released. The last rows
 * (connect_failed, request_timeout, bad_response) are raised by clients only,
 * never sent by the server. */
#ifndef NORMSTAT_ERRORS_H
#define NORMSTAT_ERRORS_H

#include <normstat/export.h>

#ifdef __cplusplus
extern "C" {
#endif

/* XX(NAME, code, http status, wire string, default message) */
#define NS_ERROR_MAP(XX)                                                              \
    XX(EINVAL, -1, 400, "bad_request", "malformed request")                          \
    XX(ENOTFOUND, -2, 404, "not_found", "no such resource")                          \
    XX(ECHANNELS, -3, 409, "channel_mismatch", "channel count differs from the layer's") \
    XX(ESTALE, -4, 409, "stale_step", "step already finalized")                      \
    XX(EDUPLICATE, -5, 409, "duplicate_report", "worker already reported this step") \
    XX(EVALUE, -6, 422, "bad_value", "non-finite or negative value")                 \
    XX(EWORKER, -7, 409, "worker_out_of_range", "worker outside world_size")         \
    XX(ECONFLICT, -8, 409, "conflict", "request conflicts with current state")       \
    XX(ETOOLARGE, -9, 413, "body_too_large", "request body too large")               \
    XX(EMEDIATYPE, -10, 415, "unsupported_media_type", "unsupported content type")   \
    XX(EBUSY, -11, 429, "too_many_pending", "too many pending steps")                \
    XX(ESHUTDOWN, -12, 503, "shutting_down", "server is shutting down")              \
    XX(ENOTREADY, -13, 503, "not_ready", "server is not ready")                      \
    XX(ETIMEDOUT, -14, 504, "sync_timeout", "step timed out and was dropped")        \
    XX(ENOMEM, -15, 503, "out_of_memory", "out of memory")                           \
    XX(EIO, -16, 503, "storage_error", "storage unavailable")                        \
    XX(EMETHOD, -17, 405, "method_not_allowed", "method not allowed")                \
    XX(EUNAUTHORIZED, -18, 401, "unauthorized", "authentication required")           \
    XX(EFORBIDDEN, -19, 403, "forbidden", "not allowed")                             \
    XX(EINTERNAL, -20, 500, "internal", "internal error")                            \
    XX(EMEMORY, -21, 429, "memory_budget", "memory budget exceeded")                 \
    XX(ECONNECT, -22, 503, "connect_failed", "could not connect to the server")      \
    XX(EREQTIMEOUT, -23, 504, "request_timeout", "no answer within the client's timeout") \
    XX(EBADRESPONSE, -24, 502, "bad_response", "unexpected response from the server")

typedef enum ns_error_e {
    NS_OK = 0,
#define NS__ERROR_ENUM(name, code, status, wire, msg) NS_##name = code,
    NS_ERROR_MAP(NS__ERROR_ENUM)
#undef NS__ERROR_ENUM
} ns_error_t;

/*! ns_strerror() :
 *  @return the default message of 'code' ("success" for 0, "unknown error" for
 *  a code not in the table). Static storage; thread-safe. */
NS_API const char *ns_strerror(int code);

/*! ns_error_name() :
 *  @return the wire string of 'code' ("ok" for 0, "unknown" otherwise). */
NS_API const char *ns_error_name(int code);

/*! ns_error_http_status() :
 *  @return the HTTP status 'code' maps to (200 for 0, 500 if unknown). */
NS_API int ns_error_http_status(int code);

#ifdef __cplusplus
}
#endif
#endif /* NORMSTAT_ERRORS_H */
