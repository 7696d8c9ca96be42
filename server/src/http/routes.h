/* routes.h - the route table of normstatd's HTTP API: method + path pattern -> handler,
 * and the strict decoding of the request target (path segments, query).
 *
 * Patterns are literal path segments and "{run}", which matches one
 * non-empty segment (validated as a name after matching). Paths are matched
 * as received: each segment is percent-decoded on its own, so a decoded '/'
 * never makes a new segment and a decoded NUL never cuts a name short (both
 * are refused). The table is static and read-only; every function may be
 * called from any thread. */
#ifndef NSD_ROUTES_H
#define NSD_ROUTES_H

#include <stddef.h>
#include <stdio.h>

#include <normstat/proto.h>

typedef struct nsd_request_s nsd_request_t;

/* A handler answers 'req' with one of http.h's nsd_respond_*() calls, or
 * defers it (nsd_request_defer()) and answers when woken. */
typedef void (*nsd_handler_fn)(nsd_request_t *req);

/* What a route accepts as a request body. */
typedef enum nsd_body_e {
    NSD_BODY_NONE = 0,   /* body ignored (still bounded by --max-body) */
    NSD_BODY_JSON = 1,   /* application/json, or no Content-Type */
    NSD_BODY_REPORT = 2, /* application/json (default) or application/safetensors
                            (reports and gradient sums) */
} nsd_body_t;

typedef struct nsd_route_s {
    const char *method;
    const char *pattern;
    nsd_handler_fn handler;
    const char *label; /* the "route" label of /metrics */
    nsd_body_t body;
    const char *const *query; /* the query parameters it accepts (NULL-terminated); NULL: none */
} nsd_route_t;

/* A path longer than this matches no route (the longest route is far shorter). */
#define NSD_PATH_MAX 1024
/* Query parameters of one request; no route accepts more than a few. */
#define NSD_QUERY_PARAMS_MAX 16

/* One decoded query parameter; both strings point into the decoded buffer. */
typedef struct nsd_param_s {
    const char *key;
    const char *value; /* "" for a parameter without '=' */
} nsd_param_t;

/*! nsd_routes_table() : the table, in the order --routes prints it; *n set. */
const nsd_route_t *nsd_routes_table(size_t *n);

/*! nsd_routes_index() : position of 'route' in the table (for metrics). */
size_t nsd_routes_index(const nsd_route_t *route);

/*! nsd_routes_match() :
 *  Find the route of 'method' (HEAD matches GET routes) and 'path' (as
 *  received, percent-encoded, without the query). On a match *route is set
 *  and, when the pattern has "{run}", the decoded segment is copied into
 *  run[0..run_cap) ("" otherwise).
 *  @return 0; NS_ENOTFOUND when no pattern matches the path; NS_EMETHOD when
 *  a pattern matches but not with this method (allow[0..allow_cap) gets the
 *  methods that would, as "GET, PUT"); NS_EINVAL when a segment holds a
 *  malformed escape, a decoded NUL or '/' (*route is not set), or the {run}
 *  segment is not a valid name (*route is then set); 'err' (may be NULL)
 *  names the offending character. */
int nsd_routes_match(const char *method, const char *path, const nsd_route_t **route, char *run,
                     size_t run_cap, char *allow, size_t allow_cap, ns_error_detail_t *err);

/*! nsd_query_parse() :
 *  Decode the query string 'src' (after '?', may be empty) in place:
 *  parameters split at '&' (empty pieces skipped), name and value at the
 *  first '=', '+' and %XX decoded. params[0..cap) get the parameters in
 *  order, *n their count.
 *  @return 0, or NS_EINVAL ('err' naming the parameter) for a malformed
 *  escape, a decoded NUL, an empty name, a name given twice, or more than
 *  'cap' parameters. */
int nsd_query_parse(char *src, nsd_param_t *params, size_t cap, size_t *n, ns_error_detail_t *err);

/*! nsd_routes_print() : the table as "METHOD PATTERN LABEL" lines. */
void nsd_routes_print(FILE *out);

/* Handlers (h_*.c, metrics.c). */
void nsd_h_runs_list(nsd_request_t *req);
void nsd_h_run_put(nsd_request_t *req);
void nsd_h_run_get(nsd_request_t *req);
void nsd_h_run_delete(nsd_request_t *req);
void nsd_h_batches(nsd_request_t *req);
void nsd_h_sync(nsd_request_t *req);
void nsd_h_grad(nsd_request_t *req);
void nsd_h_stats(nsd_request_t *req);
void nsd_h_drift(nsd_request_t *req);
void nsd_h_history(nsd_request_t *req);
void nsd_h_precise_reset(nsd_request_t *req);
void nsd_h_checkpoint_get(nsd_request_t *req);
void nsd_h_checkpoint_put(nsd_request_t *req);
void nsd_h_livez(nsd_request_t *req);
void nsd_h_readyz(nsd_request_t *req);
void nsd_h_version(nsd_request_t *req);
void nsd_h_metrics(nsd_request_t *req);
void nsd_h_ui_redirect(nsd_request_t *req);
void nsd_h_ui_asset(nsd_request_t *req);

#endif
