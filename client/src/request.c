/* request.c - one HTTP exchange with libcurl: building the request, reading
 * the answer, mapping it to a code, and deciding whether to try again.
 * Shared by the blocking and the asynchronous client. */
#include <ctype.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>

#include "client_internal.h"

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static int curl_init_rc;

static void curl_init_once(void)
{
    curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK ? 0 : NS_ENOMEM;
}

void ns_client_options_default(ns_client_options_t *opts)
{
    memset(opts, 0, sizeof(*opts));
    opts->url = NULL;
    opts->timeout_ms = 30000;
    opts->connect_timeout_ms = 5000;
    opts->retries = 2;
    opts->retry_delay_ms = 100;
    opts->max_response = 0;
    opts->token = NULL;
    opts->cacert = NULL;
}

int ns__client_setup(ns_client_options_t *dst, char **base, const ns_client_options_t *opts,
                     ns_error_detail_t *err)
{
    *base = NULL;
    pthread_once(&curl_once, curl_init_once);
    if (curl_init_rc != 0)
        return ns_error_set(err, curl_init_rc, "", "libcurl initialisation failed");
    if (opts)
        *dst = *opts;
    else
        ns_client_options_default(dst);
    const char *url = dst->url;
    if (url == NULL || url[0] == '\0')
        url = NS_CLIENT_DEFAULT_URL;
    if (strncasecmp(url, "http://", 7) != 0 && strncasecmp(url, "https://", 8) != 0)
        return ns_error_set(err, NS_EINVAL, "url", "'%s' is not an http:// or https:// URL", url);
    const char *token = dst->token != NULL ? dst->token : "";
    for (const char *t = token; *t; t++)
        if ((unsigned char)*t <= 0x20 || (unsigned char)*t >= 0x7f)
            return ns_error_set(err, NS_EINVAL, "token",
                                "expected visible ASCII characters without spaces");
    const char *cacert = dst->cacert != NULL ? dst->cacert : "";
    /* One allocation "url\0token\0cacert\0", so freeing *base frees every copy. */
    size_t url_len = strlen(url), token_len = strlen(token), cacert_len = strlen(cacert);
    char *copy = malloc(url_len + token_len + cacert_len + 3);
    if (copy == NULL)
        return ns_error_set(err, NS_ENOMEM, "", "out of memory");
    memcpy(copy, url, url_len + 1);
    memcpy(copy + url_len + 1, token, token_len + 1);
    memcpy(copy + url_len + token_len + 2, cacert, cacert_len + 1);
    dst->token = token_len > 0 ? copy + url_len + 1 : NULL;
    dst->cacert = cacert_len > 0 ? copy + url_len + token_len + 2 : NULL;
    size_t n = url_len;
    while (n > 0 && copy[n - 1] == '/')
        copy[--n] = '\0';
    dst->url = copy;
    *base = copy;
    return 0;
}

int ns__path_run(char *dst, size_t dst_cap, const char *run, const char *suffix,
                 ns_error_detail_t *err)
{
    /* Valid names need no escaping in a path. */
    if (run == NULL || !ns_name_valid(run))
        return ns_error_set(err, NS_EINVAL, "run", "must match [A-Za-z0-9_.:-]{1,128}");
    snprintf(dst, dst_cap, "/v1/runs/%s%s", run, suffix);
    return 0;
}

/* Append 'key=value', escaping what is not a name character, ':', ',' or '*'. */
static int query_add(ns_buf_t *dst, const char *key, const char *value)
{
    int rc = ns_buf_printf(dst, "%s%s=", dst->len ? "&" : "", key);
    for (const char *p = value; rc == 0 && *p; p++) {
        unsigned char ch = (unsigned char)*p;
        if (isalnum(ch) || strchr("_.:,*-", ch))
            rc = ns_buf_append(dst, p, 1);
        else
            rc = ns_buf_printf(dst, "%%%02X", ch);
    }
    return rc;
}

int ns__stats_query(ns_buf_t *dst, const ns_stats_query_t *q, ns_format_t format)
{
    int rc = 0;
    if (q && q->source && (rc = query_add(dst, "source", q->source)))
        return rc;
    if (q && q->domain && (rc = query_add(dst, "domain", q->domain)))
        return rc;
    if (q && q->mixture && (rc = query_add(dst, "mixture", q->mixture)))
        return rc;
    if (q && q->layers && (rc = query_add(dst, "layers", q->layers)))
        return rc;
    if (q && q->variance_biased && (rc = query_add(dst, "variance", "biased")))
        return rc;
    return query_add(dst, "format", format == NS_FORMAT_SAFETENSORS ? "safetensors" : "json");
}

int ns__drift_query(ns_buf_t *dst, const char *domain)
{
    return domain != NULL ? query_add(dst, "domain", domain) : 0;
}

int ns__history_query(ns_buf_t *dst, const char *layer, const char *domain, long channel)
{
    char number[24];
    int rc = query_add(dst, "layer", layer);
    if (rc == 0 && domain != NULL)
        rc = query_add(dst, "domain", domain);
    snprintf(number, sizeof(number), "%ld", channel);
    if (rc == 0 && channel >= 0)
        rc = query_add(dst, "channel", number);
    return rc;
}

int ns__request_init(ns__request_t *rq, const char *method, const char *base, const char *path,
                     const char *query, char *body, size_t body_len, ns__retry_t retry)
{
    memset(rq, 0, sizeof(*rq));
    rq->method = method;
    rq->body = body;
    rq->body_len = body_len;
    rq->retry = retry;
    size_t n = strlen(base) + strlen(path) + (query ? strlen(query) : 0) + 2;
    if ((rq->url = malloc(n)) == NULL)
        return NS_ENOMEM;
    snprintf(rq->url, n, "%s%s%s%s", base, path, query && query[0] ? "?" : "", query ? query : "");
    return 0;
}

void ns__request_close(ns__request_t *rq)
{
    free(rq->url);
    free(rq->body);
    curl_slist_free_all(rq->headers);
    ns_buf_free(&rq->answer);
    rq->url = rq->body = NULL;
    rq->headers = NULL;
}

static size_t on_body(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    ns__request_t *rq = userdata;
    size_t n = size * nmemb;
    /* A short count makes libcurl fail the transfer with CURLE_WRITE_ERROR. */
    if (rq->max_answer && rq->answer.len + n > rq->max_answer)
        return 0;
    return ns_buf_append(&rq->answer, ptr, n) == 0 ? n : 0;
}

static size_t on_header(char *buf, size_t size, size_t nitems, void *userdata)
{
    ns__request_t *rq = userdata;
    size_t n = size * nitems;
    if (n > 13 && strncasecmp(buf, "Content-Type:", 13) == 0) {
        size_t i = 13, j = 0;
        while (i < n && (buf[i] == ' ' || buf[i] == '\t'))
            i++;
        while (i < n && j + 1 < sizeof(rq->answer_type) && buf[i] != ';' && buf[i] != '\r' &&
               buf[i] != '\n' && buf[i] != ' ')
            rq->answer_type[j++] = (char)tolower((unsigned char)buf[i++]);
        rq->answer_type[j] = '\0';
    }
    return n;
}

int ns__request_setup(ns__request_t *rq, CURL *easy, const ns_client_options_t *opts)
{
    char line[160];
    ns_buf_free(&rq->answer);
    ns_buf_init(&rq->answer, 0);
    rq->status = 0;
    rq->answer_type[0] = '\0';
    rq->errbuf[0] = '\0';
    rq->max_answer = opts->max_response;
    if (rq->headers == NULL) {
        struct curl_slist *h = NULL, *t;
        /* No "Expect: 100-continue": it costs a round trip per report. */
        if ((t = curl_slist_append(h, "Expect:")) == NULL)
            goto nomem;
        h = t;
        if (rq->content_type) {
            snprintf(line, sizeof(line), "Content-Type: %s", rq->content_type);
            if ((t = curl_slist_append(h, line)) == NULL)
                goto nomem_list;
            h = t;
        }
        if (rq->accept) {
            snprintf(line, sizeof(line), "Accept: %s", rq->accept);
            if ((t = curl_slist_append(h, line)) == NULL)
                goto nomem_list;
            h = t;
        }
        if (opts->token != NULL) {
            /* Tokens may be long: built on the heap, wiped once libcurl has its copy. */
            size_t n = strlen(opts->token) + sizeof("Authorization: Bearer ");
            char *auth = malloc(n);
            if (auth == NULL)
                goto nomem_list;
            snprintf(auth, n, "Authorization: Bearer %s", opts->token);
            t = curl_slist_append(h, auth);
            memset(auth, 0, n);
            free(auth);
            if (t == NULL)
                goto nomem_list;
            h = t;
        }
        rq->headers = h;
        goto built;
    nomem_list:
        curl_slist_free_all(h);
    nomem:
        return NS_ENOMEM;
    }
built:
    curl_easy_setopt(easy, CURLOPT_URL, rq->url);
    curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(easy, CURLOPT_HTTPHEADER, rq->headers);
    curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(easy, CURLOPT_WRITEDATA, rq);
    curl_easy_setopt(easy, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(easy, CURLOPT_HEADERDATA, rq);
    curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, rq->errbuf);
    curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, opts->timeout_ms);
    curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT_MS, opts->connect_timeout_ms);
    curl_easy_setopt(easy, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(easy, CURLOPT_USERAGENT, "libnormstat/" NS_VERSION_STRING);
    if (opts->cacert != NULL)
        curl_easy_setopt(easy, CURLOPT_CAINFO, opts->cacert);
    if (strcmp(rq->method, "GET") == 0) {
        curl_easy_setopt(easy, CURLOPT_HTTPGET, 1L);
    } else {
        curl_easy_setopt(easy, CURLOPT_CUSTOMREQUEST, rq->method);
        if (rq->body || strcmp(rq->method, "DELETE") != 0) {
            curl_easy_setopt(easy, CURLOPT_POSTFIELDS, rq->body ? rq->body : "");
            curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)rq->body_len);
        }
    }
    return 0;
}

/* An answer that is not the API's: "HTTP <status>: <start of the body>". */
static int bad_answer(ns__request_t *rq, ns_error_detail_t *err, const char *what)
{
    char text[161];
    size_t j = 0;
    for (size_t i = 0; i < rq->answer.len && j + 1 < sizeof(text); i++) {
        unsigned char ch = (unsigned char)rq->answer.data[i];
        text[j++] = (ch >= 32 && ch < 127) ? (char)ch : ' ';
    }
    text[j] = '\0';
    return ns_error_set(err, NS_EBADRESPONSE, "", "HTTP %ld: %s%s%s", rq->status, what,
                        j ? ": " : "", text);
}

/* An error answer: {"error": {"code": ..., "message": ...}} passed on intact. */
static int server_error(ns__request_t *rq, ns_error_detail_t *err)
{
    json_t *root = json_loadb(rq->answer.data ? rq->answer.data : "", rq->answer.len, 0, NULL);
    json_t *e = json_object_get(root, "error");
    const char *wire = json_string_value(json_object_get(e, "code"));
    const char *message = json_string_value(json_object_get(e, "message"));
    int code = ns_error_from_name(wire);
    int rc;
    if (code == 0 && wire != NULL && message != NULL) /* e.g. a shard proxy's 502 */
        rc = ns_error_set(err, NS_EBADRESPONSE, "", "HTTP %ld %s: %s", rq->status, wire, message);
    else if (code == 0 || message == NULL)
        rc = bad_answer(rq, err, "not an error of the API");
    else
        rc = ns_error_set(err, code, "", "%s", message);
    json_decref(root);
    return rc;
}

int ns__request_outcome(ns__request_t *rq, CURL *easy, CURLcode cc, unsigned max_retries,
                        int *retry, ns_error_detail_t *err)
{
    long sent = 0;
    int rc, transport = 1;
    curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &rq->status);
    curl_easy_getinfo(easy, CURLINFO_REQUEST_SIZE, &sent);
    rq->attempts++;
    *retry = 0;
    const char *why = rq->errbuf[0] ? rq->errbuf : curl_easy_strerror(cc);

    switch (cc) {
    case CURLE_OK:
        transport = 0;
        if (rq->status >= 200 && rq->status < 300)
            rc = 0;
        else
            rc = server_error(rq, err);
        break;
    case CURLE_COULDNT_CONNECT:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
        rc = ns_error_set(err, NS_ECONNECT, "", "%s: %s", rq->url, why);
        break;
    case CURLE_OPERATION_TIMEDOUT:
        rc = ns_error_set(err, NS_EREQTIMEOUT, "", "%s: %s", rq->url, why);
        break;
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CACERT_BADFILE:
        /* No trusted connection: trying again would fail the same way. */
        transport = 0;
        rc = ns_error_set(err, NS_ECONNECT, "", "%s: TLS: %s", rq->url, why);
        break;
    case CURLE_WRITE_ERROR:
        transport = 0;
        rc = ns_error_set(err, NS_EBADRESPONSE, "", "%s: answer larger than %zu bytes", rq->url,
                          rq->max_answer);
        break;
    case CURLE_OUT_OF_MEMORY:
        transport = 0;
        rc = ns_error_set(err, NS_ENOMEM, "", "out of memory");
        break;
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_PARTIAL_FILE:
        rc = ns_error_set(err, NS_ECONNECT, "", "%s: connection lost: %s", rq->url, why);
        break;
    default:
        transport = 0;
        rc = ns_error_set(err, NS_EBADRESPONSE, "", "%s: %s", rq->url, why);
        break;
    }

    /* A report the server already has, answered to a retry: the first
     * attempt landed, which is what the caller asked for. */
    if (rq->retry == NS__RETRY_REPORT && rq->maybe_landed &&
        (rc == NS_EDUPLICATE || rc == NS_ESTALE))
        return 0;
    if (transport && rq->attempts <= max_retries) {
        int unsent = sent == 0 && rc == NS_ECONNECT;
        if (unsent || rq->retry != NS__RETRY_UNSENT)
            *retry = 1;
        if (!unsent)
            rq->maybe_landed = 1;
    }
    return rc;
}
