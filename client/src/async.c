/* async.c - the asynchronous client: libcurl's multi-socket API driven by
 * the caller's libuv loop.
 *
 * DESIGN
 *  libcurl tells us which sockets to watch (socket callback) and when to
 *  call it back (timer callback); we keep one uv_poll_t per socket and one
 *  uv_timer_t per client, and hand readiness back with
 *  curl_multi_socket_action(). Finished transfers are collected after every
 *  action (curl_multi_info_read), mapped to a code as the blocking client
 *  does, retried on a fresh add of the same easy handle where allowed, or
 *  completed by calling the request's callback. The multi handle keeps a
 *  pool of connections, so consecutive and concurrent requests reuse
 *  keep-alive connections.
 *  Order: the server requires each worker's steps to increase, and
 *  concurrent transfers travel on different connections, so requests of the
 *  same (run, worker) are sent one at a time in the order they were queued:
 *  a request waits (not added to the multi handle) while an earlier one of
 *  its key is in flight, and is started when that one completes. Different
 *  workers' requests go out concurrently.
 *  Threads: everything runs on the loop's thread; nothing here locks.
 *  Teardown: ns_client_async_free() removes and frees the transfers in
 *  flight (their callbacks are not called), closes the multi handle (which
 *  reports its sockets removed) and closes the uv handles; the client's
 *  memory is freed in the timer's close callback. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client_internal.h"

typedef struct async_req_s async_req_t;
typedef struct sock_s sock_t;

struct ns_client_async_s {
    uv_loop_t *loop;
    CURLM *multi;
    uv_timer_t timer;
    ns_client_options_t opts;
    char *base;
    size_t pending;
    async_req_t *reqs, *reqs_tail; /* queued or in flight, oldest first */
    sock_t *socks;                 /* watched sockets, doubly linked */
};

struct async_req_s {
    ns__request_t rq;
    CURL *easy;
    int is_sync;
    int started;                /* added to the multi handle */
    char key[NS_NAME_MAX + 16]; /* "<worker>/<run>": requests sent in order */
    ns_async_cb cb;
    void *arg;
    ns_client_async_t *owner;
    async_req_t *prev, *next;
};

struct sock_s {
    uv_poll_t poll;
    curl_socket_t fd;
    ns_client_async_t *owner;
    sock_t *prev, *next;
};

static void req_free(async_req_t *r)
{
    ns_client_async_t *c = r->owner;
    if (r->prev)
        r->prev->next = r->next;
    else
        c->reqs = r->next;
    if (r->next)
        r->next->prev = r->prev;
    else
        c->reqs_tail = r->prev;
    c->pending--;
    curl_easy_cleanup(r->easy);
    ns__request_close(&r->rq);
    free(r);
}

static void on_poll_closed(uv_handle_t *h)
{
    free(h->data);
}

static void sock_close(sock_t *s)
{
    ns_client_async_t *c = s->owner;
    if (s->prev)
        s->prev->next = s->next;
    else
        c->socks = s->next;
    if (s->next)
        s->next->prev = s->prev;
    uv_poll_stop(&s->poll);
    uv_close((uv_handle_t *)&s->poll, on_poll_closed);
}

static int req_start(ns_client_async_t *c, async_req_t *r)
{
    if (curl_multi_add_handle(c->multi, r->easy) != CURLM_OK)
        return NS_ENOMEM;
    r->started = 1;
    return 0;
}

/* Start the oldest waiting request of 'key', if any; one that cannot be
 * started is completed with the error and the next one is tried. */
static void start_waiting(ns_client_async_t *c, const char *key)
{
    for (;;) {
        async_req_t *r = c->reqs;
        while (r && (r->started || strcmp(r->key, key) != 0))
            r = r->next;
        if (r == NULL || req_start(c, r) == 0)
            return;
        ns_error_detail_t err = {0};
        ns_async_cb cb = r->cb;
        void *arg = r->arg;
        ns_error_set(&err, NS_ENOMEM, "", "could not start the request");
        req_free(r);
        if (cb)
            cb(NS_ENOMEM, &err, NULL, arg);
    }
}

/* Collect finished transfers: retry, or complete with the callback. */
static void check_done(ns_client_async_t *c)
{
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(c->multi, &left)) != NULL) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        async_req_t *r = NULL;
        CURL *easy = msg->easy_handle;
        CURLcode cc = msg->data.result;
        curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&r);
        curl_multi_remove_handle(c->multi, easy);

        ns_error_detail_t err = {0};
        ns_result_t *res = NULL;
        int retry, rc = ns__request_outcome(&r->rq, easy, cc, c->opts.retries, &retry, &err);
        if (retry) {
            if (ns__request_setup(&r->rq, easy, &c->opts) == 0 &&
                curl_multi_add_handle(c->multi, easy) == CURLM_OK)
                continue;
        }
        if (rc == 0 && r->is_sync) {
            ns_format_t f = strcmp(r->rq.answer_type, "application/safetensors") == 0
                                ? NS_FORMAT_SAFETENSORS
                                : NS_FORMAT_JSON;
            rc = ns_result_decode(&res, f, r->rq.answer.data ? r->rq.answer.data : "",
                                  r->rq.answer.len, &err);
        }
        ns_async_cb cb = r->cb;
        void *arg = r->arg;
        char key[sizeof(r->key)];
        memcpy(key, r->key, sizeof(key));
        /* Freed before the callback, so the callback may queue more. */
        req_free(r);
        /* The next request of this worker goes out before the callback
         * runs, so one queued from the callback comes after it. */
        start_waiting(c, key);
        if (cb)
            cb(rc, &err, res, arg);
        else
            ns_result_free(res);
    }
}

static void on_poll(uv_poll_t *h, int status, int events)
{
    sock_t *s = h->data;
    ns_client_async_t *c = s->owner;
    int flags = 0, running;
    if (status < 0)
        flags = CURL_CSELECT_ERR;
    else {
        if (events & UV_READABLE)
            flags |= CURL_CSELECT_IN;
        if (events & UV_WRITABLE)
            flags |= CURL_CSELECT_OUT;
    }
    curl_multi_socket_action(c->multi, s->fd, flags, &running);
    check_done(c);
}

static void on_timer(uv_timer_t *h)
{
    ns_client_async_t *c = h->data;
    int running;
    curl_multi_socket_action(c->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    check_done(c);
}

/* CURLMOPT_SOCKETFUNCTION */
static int on_socket(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
    ns_client_async_t *c = userp;
    sock_t *s = socketp;
    (void)easy;
    if (what == CURL_POLL_REMOVE) {
        if (s) {
            curl_multi_assign(c->multi, fd, NULL);
            sock_close(s);
        }
        return 0;
    }
    if (s == NULL) {
        if ((s = calloc(1, sizeof(*s))) == NULL)
            return -1;
        if (uv_poll_init_socket(c->loop, &s->poll, fd) != 0) {
            free(s);
            return -1;
        }
        s->fd = fd;
        s->owner = c;
        s->poll.data = s;
        s->next = c->socks;
        if (c->socks)
            c->socks->prev = s;
        c->socks = s;
        curl_multi_assign(c->multi, fd, s);
    }
    int events = 0;
    if (what == CURL_POLL_IN || what == CURL_POLL_INOUT)
        events |= UV_READABLE;
    if (what == CURL_POLL_OUT || what == CURL_POLL_INOUT)
        events |= UV_WRITABLE;
    return uv_poll_start(&s->poll, events, on_poll) == 0 ? 0 : -1;
}

/* CURLMOPT_TIMERFUNCTION */
static int on_timer_change(CURLM *multi, long timeout_ms, void *userp)
{
    ns_client_async_t *c = userp;
    (void)multi;
    if (timeout_ms < 0)
        uv_timer_stop(&c->timer);
    else
        /* 0 means "as soon as possible": the next loop iteration, since
         * socket_action must not be called from inside this callback. */
        uv_timer_start(&c->timer, on_timer, (uint64_t)timeout_ms, 0);
    return 0;
}

int ns_client_async_create(ns_client_async_t **dst, uv_loop_t *loop,
                           const ns_client_options_t *opts, ns_error_detail_t *err)
{
    ns_client_async_t *c;
    *dst = NULL;
    if (loop == NULL)
        return ns_error_set(err, NS_EINVAL, "loop", "a uv loop is required");
    if ((c = calloc(1, sizeof(*c))) == NULL)
        return ns_error_set(err, NS_ENOMEM, "", "out of memory");
    int rc = ns__client_setup(&c->opts, &c->base, opts, err);
    if (rc != 0) {
        free(c);
        return rc;
    }
    c->loop = loop;
    if ((c->multi = curl_multi_init()) == NULL) {
        free(c->base);
        free(c);
        return ns_error_set(err, NS_ENOMEM, "", "out of memory");
    }
    uv_timer_init(loop, &c->timer);
    c->timer.data = c;
    curl_multi_setopt(c->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
    curl_multi_setopt(c->multi, CURLMOPT_SOCKETDATA, c);
    curl_multi_setopt(c->multi, CURLMOPT_TIMERFUNCTION, on_timer_change);
    curl_multi_setopt(c->multi, CURLMOPT_TIMERDATA, c);
    *dst = c;
    return 0;
}

static void on_timer_closed(uv_handle_t *h)
{
    ns_client_async_t *c = h->data;
    free(c->base);
    free(c);
}

void ns_client_async_free(ns_client_async_t *client)
{
    if (client == NULL)
        return;
    while (client->reqs) {
        if (client->reqs->started)
            curl_multi_remove_handle(client->multi, client->reqs->easy);
        req_free(client->reqs);
    }
    curl_multi_cleanup(client->multi);
    client->multi = NULL;
    while (client->socks)
        sock_close(client->socks);
    uv_timer_stop(&client->timer);
    uv_close((uv_handle_t *)&client->timer, on_timer_closed);
}

size_t ns_client_async_pending(const ns_client_async_t *client)
{
    return client->pending;
}

static int queue(ns_client_async_t *c, const char *run, const ns_report_t *report,
                 ns_format_t format, int is_sync, ns_async_cb cb, void *arg, ns_error_detail_t *err)
{
    char path[NS_NAME_MAX + 64];
    ns_buf_t body;
    size_t len;
    int rc;
    if ((rc = ns__path_run(path, sizeof(path), run, is_sync ? "/sync" : "/batches", err)))
        return rc;
    ns_buf_init(&body, 0);
    if ((rc = ns_report_encode(&body, format, report, err)))
        return rc;
    char *text = ns_buf_take(&body, &len);
    async_req_t *r = calloc(1, sizeof(*r));
    if (r == NULL) {
        free(text);
        return ns_error_set(err, NS_ENOMEM, "", "out of memory");
    }
    if ((rc = ns__request_init(&r->rq, "POST", c->base, path, NULL, text, len,
                               is_sync ? NS__RETRY_UNSENT : NS__RETRY_REPORT))) {
        ns__request_close(&r->rq); /* frees 'text', which the request took */
        free(r);
        return ns_error_set(err, rc, "", "out of memory");
    }
    r->rq.content_type =
        format == NS_FORMAT_SAFETENSORS ? "application/safetensors" : "application/json";
    r->rq.accept = is_sync ? "application/safetensors" : "application/json";
    r->is_sync = is_sync;
    r->cb = cb;
    r->arg = arg;
    r->owner = c;
    if ((r->easy = curl_easy_init()) == NULL || ns__request_setup(&r->rq, r->easy, &c->opts)) {
        curl_easy_cleanup(r->easy);
        ns__request_close(&r->rq);
        free(r);
        return ns_error_set(err, NS_ENOMEM, "", "out of memory");
    }
    curl_easy_setopt(r->easy, CURLOPT_PRIVATE, r);
    snprintf(r->key, sizeof(r->key), "%u/%s", (unsigned)report->worker, run);
    /* Behind an earlier request of the same worker: wait for it. */
    int wait = 0;
    for (async_req_t *q = c->reqs; q && !wait; q = q->next)
        wait = strcmp(q->key, r->key) == 0;
    if (!wait && req_start(c, r) != 0) {
        curl_easy_cleanup(r->easy);
        ns__request_close(&r->rq);
        free(r);
        return ns_error_set(err, NS_ENOMEM, "", "could not queue the request");
    }
    r->prev = c->reqs_tail;
    if (c->reqs_tail)
        c->reqs_tail->next = r;
    else
        c->reqs = r;
    c->reqs_tail = r;
    c->pending++;
    return 0;
}

int ns_client_async_report(ns_client_async_t *client, const char *run, const ns_report_t *report,
                           ns_format_t format, ns_async_cb cb, void *arg, ns_error_detail_t *err)
{
    return queue(client, run, report, format, 0, cb, arg, err);
}

int ns_client_async_sync(ns_client_async_t *client, const char *run, const ns_report_t *report,
                         ns_format_t format, ns_async_cb cb, void *arg, ns_error_detail_t *err)
{
    return queue(client, run, report, format, 1, cb, arg, err);
}
