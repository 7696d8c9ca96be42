/* client_internal.h - what the files of libnormstat share (not installed). */
#ifndef NS_CLIENT_INTERNAL_H
#define NS_CLIENT_INTERNAL_H

#include <curl/curl.h>
#include <uv.h>

#include <normstat/client.h>

/* When a failed attempt may be repeated (see client.h, "Retries"). */
typedef enum ns__retry_e {
    NS__RETRY_UNSENT, /* only when nothing was sent: PUT, DELETE, POST */
    NS__RETRY_SAFE,   /* also after the request went out: GET */
    NS__RETRY_REPORT  /* as SAFE; a duplicate on a retry means the first landed */
} ns__retry_t;

/* One HTTP exchange, kept across its attempts. */
typedef struct ns__request_s {
    const char *method;       /* "GET", "PUT", "POST", "DELETE" */
    char *url;                /* owned */
    const char *content_type; /* of the body, or NULL */
    const char *accept;       /* Accept header, or NULL */
    char *body;               /* owned, NULL for none */
    size_t body_len;
    ns__retry_t retry;
    unsigned attempts; /* made so far */
    int maybe_landed;  /* an earlier attempt may have reached the server */
    size_t max_answer; /* 0: no ceiling */
    struct curl_slist *headers;
    char errbuf[CURL_ERROR_SIZE];
    /* the answer of the last attempt */
    long status;
    char answer_type[128]; /* Content-Type, without parameters */
    ns_buf_t answer;
} ns__request_t;

/*! ns__client_setup() :
 *  What both clients do first: curl_global_init() once per process, 'dst'
 *  = 'opts' (NULL: the defaults), and *base = a copy of its URL (NULL or
 *  "": the default) without trailing slashes, checked to be http:// or
 *  https://; dst->url then points at *base, which the caller frees, and
 *  dst->token and dst->cacert at copies in the same allocation.
 *  @return 0, or NS_ENOMEM / NS_EINVAL (err set, *base NULL). */
int ns__client_setup(ns_client_options_t *dst, char **base, const ns_client_options_t *opts,
                     ns_error_detail_t *err);

/*! ns__request_init() :
 *  'base' + 'path' (+ '?' + 'query' when non-empty) with 'method'; 'body'
 *  (may be NULL) is taken over and freed by ns__request_close(), also on
 *  error. @return 0 or NS_ENOMEM. */
int ns__request_init(ns__request_t *rq, const char *method, const char *base, const char *path,
                     const char *query, char *body, size_t body_len, ns__retry_t retry);

/*! ns__request_setup() : prepare 'easy' (fresh or reset) for the next attempt. */
int ns__request_setup(ns__request_t *rq, CURL *easy, const ns_client_options_t *opts);

/*! ns__request_outcome() :
 *  What the attempt that ended with 'cc' amounts to: 0 (a 2xx answer), the
 *  server's error, or a client failure. *retry is set to 1 when another
 *  attempt is allowed by the request's rules and 'max_retries'.
 *  @return the code, with 'err' filled. */
int ns__request_outcome(ns__request_t *rq, CURL *easy, CURLcode cc, unsigned max_retries,
                        int *retry, ns_error_detail_t *err);

/*! ns__request_close() : frees what the request owns; safe to call twice. */
void ns__request_close(ns__request_t *rq);

/*! ns__path_run() : "/v1/runs/<run><suffix>" into dst. @return 0 or NS_EINVAL
 *  (invalid run name, with 'err'). */
int ns__path_run(char *dst, size_t dst_cap, const char *run, const char *suffix,
                 ns_error_detail_t *err);

/*! ns__stats_query() : the query string of 'q' plus "format=..." into 'dst'. */
int ns__stats_query(ns_buf_t *dst, const ns_stats_query_t *q, ns_format_t format);

/*! ns__drift_query(), ns__history_query() : the query strings of GET
 *  .../drift and .../history into 'dst' (NULL domain, channel < 0: left out). */
int ns__drift_query(ns_buf_t *dst, const char *domain);
int ns__history_query(ns_buf_t *dst, const char *layer, const char *domain, long channel);

#endif /* NS_CLIENT_INTERNAL_H */
