/* respond.c - answers: queued on the request (counted when queued, so a
 * scrape after an answer was read counts it), JSON and error bodies, and
 * answers deferred until the store committed (nsd_respond_durable). The
 * request life around them is http.c's. */
#include "http.h"

#include <stdlib.h>
#include <string.h>

#include <microhttpd.h>

#include "base/clock.h"
#include "base/log.h"
#include "base/size_limits.h"
#include "counters.h"
#include "store/store.h"
/* ---------------------------------------------------------------- responses */

static void queue(nsd_request_t *req, int status, struct MHD_Response *resp,
                  const char *content_type)
{
    if (content_type != NULL)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
    if (status == 405 && req->allow[0] != '\0')
        MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, req->allow);
    if (status == 401) /* RFC 6750: a token was presented but is not valid */
        MHD_add_response_header(resp, MHD_HTTP_HEADER_WWW_AUTHENTICATE,
                                req->token_unknown
                                    ? "Bearer realm=\"normstat\", error=\"invalid_token\""
                                    : "Bearer realm=\"normstat\"");
    if (atomic_load(&req->server->shutting_down) || req->close_after)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
    if (MHD_queue_response(req->conn, (unsigned)status, resp) != MHD_YES) {
        /* The access handler then returns MHD_NO, which closes the connection. */
        nsd_log(NSD_LOG_WARN, "response_failed", "method=%s status=%d", req->method, status);
        req->status = -1;
    } else {
        req->responded = 1;
        req->status = status;
        /* Counted when queued, before a byte of the answer leaves: a client
         * that has read this answer always sees it in its next scrape. */
        nsd_count_request(req->route, req->method, status,
                          (double)(nsd_now_ns() - req->start_ns) * 1e-9);
    }
    MHD_destroy_response(resp);
}

void nsd_respond(nsd_request_t *req, int status, const char *content_type, char *data, size_t len)
{
    if (req->responded) {
        free(data);
        return;
    }
    struct MHD_Response *resp;
    if (data == NULL || len == 0) {
        free(data);
        resp = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
    } else {
        resp = MHD_create_response_from_buffer_with_free_callback(len, data, free);
        if (resp == NULL)
            free(data);
        else
            nsd_count_body_bytes(0, len);
    }
    if (resp == NULL) {
        /* Nothing can be sent: the access handler returns MHD_NO, closing the connection. */
        nsd_log(NSD_LOG_ERROR, "response_failed", "method=%s reason=out_of_memory", req->method);
        req->status = -1;
        return;
    }
    queue(req, status, resp, content_type);
}

void nsd_respond_parts(nsd_request_t *req, ns_format_t format, const ns_buf_t *parts, size_t n,
                       void (*release)(void *), void *arg)
{
    if (req->responded) {
        release(arg);
        return;
    }
    struct MHD_IoVec *iov = calloc(n ? n : 1, sizeof(*iov));
    size_t total = 0;
    for (size_t i = 0; iov != NULL && i < n; i++) {
        iov[i].iov_base = parts[i].data;
        iov[i].iov_len = parts[i].len;
        total += parts[i].len;
    }
    /* MHD copies the vector (and writes at most IOV_MAX buffers a call);
     * the buffers stay ours until it calls release. */
    struct MHD_Response *resp =
        iov != NULL ? MHD_create_response_from_iovec(iov, (unsigned)n, release, arg) : NULL;
    free(iov);
    if (resp == NULL) {
        release(arg);
        nsd_respond_error(req, NS_ENOMEM, NULL);
        return;
    }
    nsd_count_body_bytes(0, total);
    queue(req, 200, resp,
          format == NS_FORMAT_SAFETENSORS ? "application/safetensors" : "application/json");
}

void nsd_respond_static(nsd_request_t *req, int status, const char *content_type, const void *data,
                        size_t len, const char *const headers[])
{
    if (req->responded)
        return;
    struct MHD_Response *resp = MHD_create_response_from_buffer(
        len, len > 0 ? (void *)data : (void *)"", MHD_RESPMEM_PERSISTENT);
    if (resp == NULL) {
        nsd_log(NSD_LOG_ERROR, "response_failed", "method=%s reason=out_of_memory", req->method);
        req->status = -1;
        return;
    }
    for (size_t i = 0; headers != NULL && headers[i] != NULL && headers[i + 1] != NULL; i += 2)
        MHD_add_response_header(resp, headers[i], headers[i + 1]);
    queue(req, status, resp, content_type);
}

/* A streamed answer: the producer and the piece it wrote last. */
typedef struct stream_s {
    nsd_stream_next_fn next;
    void (*free_state)(void *state);
    void *state;
    ns_buf_t piece;
    size_t sent; /* of piece */
    int done;
} stream_t;

static void stream_free(void *cls)
{
    stream_t *s = cls;
    s->free_state(s->state);
    ns_buf_free(&s->piece);
    free(s);
}

/* libmicrohttpd's reader: fills its block from as many pieces as fit, so a
 * chunk is a block, not a layer. */
static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    (void)pos;
    stream_t *s = cls;
    size_t n = 0;
    while (n < max) {
        if (s->sent == s->piece.len) {
            if (s->done)
                break;
            s->piece.len = 0;
            s->sent = 0;
            if (s->next(s->state, &s->piece, &s->done) != 0) {
                nsd_log(NSD_LOG_ERROR, "response_failed", "reason=stream_error");
                return MHD_CONTENT_READER_END_WITH_ERROR;
            }
            continue;
        }
        size_t take = s->piece.len - s->sent < max - n ? s->piece.len - s->sent : max - n;
        memcpy(buf + n, s->piece.data + s->sent, take);
        s->sent += take;
        n += take;
    }
    if (n == 0)
        return MHD_CONTENT_READER_END_OF_STREAM;
    nsd_count_body_bytes(0, n);
    return (ssize_t)n;
}

void nsd_respond_stream(nsd_request_t *req, const char *content_type, nsd_stream_next_fn next,
                        void (*free_state)(void *state), void *state)
{
    stream_t *s = req->responded ? NULL : calloc(1, sizeof(*s));
    struct MHD_Response *resp = NULL;
    if (s != NULL) {
        *s = (stream_t){.next = next, .free_state = free_state, .state = state};
        ns_buf_init(&s->piece, NSD_ANSWER_MAX);
        resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, NSD_STREAM_BLOCK, stream_read, s,
                                                 stream_free);
    }
    if (resp == NULL) {
        if (s != NULL)
            stream_free(s);
        else
            free_state(state);
        if (!req->responded)
            nsd_respond_error(req, NS_ENOMEM, NULL);
        return;
    }
    queue(req, 200, resp, content_type);
}

void nsd_respond_json(nsd_request_t *req, int status, json_t *body)
{
    if (body == NULL) {
        nsd_respond_error(req, NS_ENOMEM, NULL);
        return;
    }
    char *text = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    if (text == NULL) {
        nsd_respond_error(req, NS_ENOMEM, NULL);
        return;
    }
    nsd_respond(req, status, "application/json", text, strlen(text));
}

void nsd_respond_error(nsd_request_t *req, int code, const char *message)
{
    if (req->responded)
        return;
    ns_buf_t buf;
    ns_buf_init(&buf, NSD_ERROR_BODY_MAX);
    int status = ns_error_http_status(code);
    nsd_count_rejection(code);
    if (ns_error_encode_json(&buf, code, message ? message : ns_strerror(code)) != 0) {
        static const char oom[] =
            "{\"error\":{\"code\":\"out_of_memory\",\"message\":\"out of memory\"}}";
        ns_buf_free(&buf);
        struct MHD_Response *resp =
            MHD_create_response_from_buffer(sizeof(oom) - 1, (void *)oom, MHD_RESPMEM_PERSISTENT);
        if (resp != NULL)
            queue(req, 503, resp, "application/json");
        return;
    }
    if (nsd_log_enabled(NSD_LOG_DEBUG)) {
        char q[600];
        nsd_log_write(NSD_LOG_DEBUG, "request_rejected",
                      "method=%s path=%s status=%d code=%s msg=%s", req->method, req->path, status,
                      ns_error_name(code),
                      nsd_log_quote(q, sizeof(q), message ? message : ns_strerror(code)));
    }
    size_t len;
    char *data = ns_buf_take(&buf, &len);
    nsd_respond(req, status, "application/json", data, len);
}

void nsd_respond_encoded(nsd_request_t *req, ns_format_t format, ns_buf_t *buf)
{
    size_t len;
    char *data = ns_buf_take(buf, &len);
    nsd_respond(req, 200,
                format == NS_FORMAT_SAFETENSORS ? "application/safetensors" : "application/json",
                data, len);
}

void nsd_respond_detail(nsd_request_t *req, int code, const ns_error_detail_t *err)
{
    if (err != NULL && err->code != 0 && err->message[0] != '\0')
        nsd_respond_error(req, err->code, err->message);
    else
        nsd_respond_error(req, code, NULL);
}

/* A response held back until the store committed (nsd_respond_durable). */
typedef struct durable_s {
    int status;
    json_t *body;
    char *text; /* or a body already written as JSON text */
    size_t text_len;
    int store_status;
} durable_t;

static void durable_free(void *p)
{
    durable_t *d = p;
    if (d != NULL) {
        json_decref(d->body);
        free(d->text);
    }
    free(d);
}

/* The store's callback: any thread, exactly once. */
static void durable_done(void *arg, int status)
{
    nsd_request_t *req = arg;
    ((durable_t *)req->user)->store_status = status;
    nsd_request_wake(req);
}

static void durable_answer(nsd_request_t *req)
{
    durable_t *d = req->user;
    if (d->store_status != 0) {
        nsd_respond_error(req, d->store_status,
                          d->store_status == NS_EIO
                              ? "the change is applied in memory but could not be committed to the "
                                "data directory; it is retried"
                              : NULL);
        return;
    }
    if (d->text != NULL) {
        char *text = d->text;
        d->text = NULL;
        nsd_respond(req, d->status, "application/json", text, d->text_len);
        return;
    }
    json_t *body = d->body;
    d->body = NULL;
    if (body == NULL)
        nsd_respond(req, d->status, NULL, NULL, 0);
    else
        nsd_respond_json(req, d->status, body);
}

/* The deferral itself: 'd' is taken. */
static void durable_defer(nsd_request_t *req, durable_t *d)
{
    req->user = d;
    req->user_free = durable_free;
    nsd_request_defer(req, durable_answer);
    nsd_store_after_commit(req->server->store, durable_done, req);
}

void nsd_respond_durable_text(nsd_request_t *req, int status, ns_buf_t *text)
{
    size_t len;
    char *data = ns_buf_take(text, &len);
    if (req->server->store == NULL) {
        nsd_respond(req, status, "application/json", data, len);
        return;
    }
    durable_t *d = calloc(1, sizeof(*d));
    if (d == NULL) {
        free(data);
        nsd_respond_error(req, NS_ENOMEM, NULL);
        return;
    }
    *d = (durable_t){.status = status, .text = data, .text_len = len};
    durable_defer(req, d);
}

void nsd_respond_durable(nsd_request_t *req, int status, json_t *body)
{
    nsd_store_t *store = req->server->store;
    if (store == NULL) {
        if (body == NULL && status != 204)
            nsd_respond_error(req, NS_ENOMEM, NULL);
        else if (body == NULL)
            nsd_respond(req, status, NULL, NULL, 0);
        else
            nsd_respond_json(req, status, body);
        return;
    }
    durable_t *d = calloc(1, sizeof(*d));
    if (d == NULL) {
        json_decref(body);
        nsd_respond_error(req, NS_ENOMEM, NULL);
        return;
    }
    d->status = status;
    d->body = body;
    durable_defer(req, d);
}

/* ---------------------------------------------------------------- requests */
