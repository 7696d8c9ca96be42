/* normstat/wire_errors.h - every error of the HTTP API, defined once.
 *
 * Each row of NS_WIRE_ERROR_MAP carries the owner of the code, its pinned
 * negative value, the HTTP status it is answered with, the stable wire name
 * used in error bodies ({"error": {"code": "<wire name>"}}) and in the
 * metrics' reason label, and a default message. Rows owned by CORE restate a
 * code of normstat/errors.h (checked when libnsproto is built); rows owned by
 * PROTO define their code here. ns_strerror(), ns_error_name(),
 * ns_error_http_status() and ns_error_from_name() are generated from the
 * table, so they cannot drift apart. Codes never change value once released.
 *
 * Threads: the lookups read constant tables only; call them from any thread. */
#ifndef NORMSTAT_WIRE_ERRORS_H
#define NORMSTAT_WIRE_ERRORS_H

#include <normstat/errors.h>
#include <normstat/export.h>

#ifdef __cplusplus
extern "C" {
#endif

/* XX(owner, NAME, code, http status, wire name, default message) */
#define NS_WIRE_ERROR_MAP(XX)                                                                      \
    XX(CORE, EINVAL, -1, 400, "bad_request", "malformed request")                                  \
    XX(CORE, ENOTFOUND, -2, 404, "not_found", "no such resource")                                  \
    XX(PROTO, ECHANNELS, -3, 409, "channel_mismatch", "channel count differs from the layer's")    \
    XX(PROTO, ESTALE, -4, 409, "stale_step", "step already finalized")                             \
    XX(PROTO, EDUPLICATE, -5, 409, "duplicate_report", "worker already reported this step")        \
    XX(CORE, EVALUE, -6, 422, "bad_value", "non-finite or negative value")                         \
    XX(PROTO, EWORKER, -7, 409, "worker_out_of_range", "worker outside world_size")                \
    XX(PROTO, ECONFLICT, -8, 409, "conflict", "request conflicts with current state")              \
    XX(PROTO, ETOOLARGE, -9, 413, "body_too_large", "request body too large")                      \
    XX(PROTO, EMEDIATYPE, -10, 415, "unsupported_media_type", "unsupported content type")          \
    XX(PROTO, EBUSY, -11, 429, "too_many_pending", "too many pending steps")                       \
    XX(PROTO, ESHUTDOWN, -12, 503, "shutting_down", "server is shutting down")                     \
    XX(PROTO, ENOTREADY, -13, 503, "not_ready", "server is not ready")                             \
    XX(PROTO, ETIMEDOUT, -14, 504, "sync_timeout", "step timed out and was dropped")               \
    XX(PROTO, ENOMEM, -15, 503, "out_of_memory", "out of memory")                                  \
    XX(PROTO, EIO, -16, 503, "storage_error", "storage unavailable")                               \
    XX(PROTO, EMETHOD, -17, 405, "method_not_allowed", "method not allowed")                       \
    XX(PROTO, EUNAUTHORIZED, -18, 401, "unauthorized", "authentication required")                  \
    XX(PROTO, EFORBIDDEN, -19, 403, "forbidden", "not allowed")                                    \
    XX(PROTO, EINTERNAL, -20, 500, "internal", "internal error")                                   \
    XX(PROTO, EMEMORY, -21, 429, "memory_budget", "memory budget exceeded")                        \
    XX(PROTO, ECONNS, -25, 503, "too_many_connections", "too many connections")

/* The codes the protocol adds to the core's: the PROTO rows above. 'name' is
 * pasted at once, before <errno.h>'s EINVAL or ENOMEM could expand it. */
#define NS__WIRE_ENUM_CORE(constant, code)
#define NS__WIRE_ENUM_PROTO(constant, code)                 constant = code,
#define NS__WIRE_ENUM(owner, name, code, status, wire, msg) NS__WIRE_ENUM_##owner(NS_##name, code)
enum ns_wire_error_e { NS_WIRE_ERROR_MAP(NS__WIRE_ENUM) };
#undef NS__WIRE_ENUM
#undef NS__WIRE_ENUM_PROTO
#undef NS__WIRE_ENUM_CORE

/*! ns_strerror() :
 *  @return the default message of 'code' ("success" for 0, "unknown error" for
 *  a code not in the table). Static storage. */
NS_API const char *ns_strerror(int code);

/*! ns_error_name() :
 *  @return the wire name of 'code' ("ok" for 0, "unknown" otherwise). */
NS_API const char *ns_error_name(int code);

/*! ns_error_http_status() :
 *  @return the HTTP status 'code' is answered with (200 for 0, 500 if unknown). */
NS_API int ns_error_http_status(int code);

/*! ns_error_from_name() :
 *  The code of an error body's wire name, e.g. "duplicate_report" ->
 *  NS_EDUPLICATE. @return the code, or 0 for NULL or a name not in the table. */
NS_API int ns_error_from_name(const char *wire_name);

#ifdef __cplusplus
}
#endif
#endif /* NORMSTAT_WIRE_ERRORS_H */
