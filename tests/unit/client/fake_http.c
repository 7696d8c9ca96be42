/* fake_http.c - the canned-reply HTTP server of the client tests (see
 * fake_http.h): one thread, poll() over the listening socket, a wake-up pipe
 * and every accepted connection. */
#define _GNU_SOURCE
#include "fake_http.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

enum { MAX_CONNS = 32, MAX_REQUESTS = 128, MAX_REPLIES = 128 };

typedef struct conn_s {
    int fd; /* -1 when free */
    int id;
    char *buf;
    size_t len, cap;
} conn_t;

typedef struct reply_s {
    fake_mode_t mode;
    int status;
    char content_type[128];
    int has_type;
    char *body;
    size_t body_len;
} reply_t;

struct fake_http_s {
    int listen_fd, wake[2], port;
    char url[64];
    pthread_t thread;
    pthread_mutex_t lock;
    conn_t conns[MAX_CONNS];
    int n_accepted;
    fake_request_t requests[MAX_REQUESTS];
    size_t n_requests;
    reply_t replies[MAX_REPLIES];
    size_t n_replies, next_reply;
};

static const char *reason(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 202:
        return "Accepted";
    case 204:
        return "No Content";
    case 400:
        return "Bad Request";
    case 404:
        return "Not Found";
    case 409:
        return "Conflict";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    default:
        return "Status";
    }
}

static void send_all(int fd, const void *src, size_t len)
{
    const char *p = src;
    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n <= 0)
            return;
        p += n;
        len -= (size_t)n;
    }
}

static void conn_close(conn_t *c)
{
    close(c->fd);
    c->fd = -1;
    free(c->buf);
    c->buf = NULL;
    c->len = c->cap = 0;
}

/* Parse as many complete requests as 'c' holds; answer each. */
static void serve(fake_http_t *f, conn_t *c)
{
    for (;;) {
        char *end = c->len ? memmem(c->buf, c->len, "\r\n\r\n", 4) : NULL;
        if (end == NULL)
            return;
        size_t head_len = (size_t)(end - c->buf) + 4, body_len = 0;
        fake_request_t rq;
        memset(&rq, 0, sizeof(rq));
        char *line_end = memmem(c->buf, head_len, "\r\n", 2);
        char first[2200];
        size_t fl = (size_t)(line_end - c->buf) < sizeof(first) - 1 ? (size_t)(line_end - c->buf)
                                                                    : sizeof(first) - 1;
        memcpy(first, c->buf, fl);
        first[fl] = '\0';
        sscanf(first, "%15s %2047s", rq.method, rq.target);
        size_t hl = head_len - (size_t)(line_end + 2 - c->buf) - 2;
        if (hl >= sizeof(rq.headers))
            hl = sizeof(rq.headers) - 1;
        memcpy(rq.headers, line_end + 2, hl);
        char value[64];
        if (fake_request_header(&rq, "Content-Length", value, sizeof(value)))
            body_len = strtoul(value, NULL, 10);
        if (c->len < head_len + body_len)
            return; /* the body is still coming */
        rq.body = malloc(body_len + 1);
        memcpy(rq.body, c->buf + head_len, body_len);
        rq.body[body_len] = '\0';
        rq.body_len = body_len;
        rq.connection = c->id;
        memmove(c->buf, c->buf + head_len + body_len, c->len - head_len - body_len);
        c->len -= head_len + body_len;

        reply_t fallback = {.mode = FAKE_REPLY,
                            .status = 500,
                            .has_type = 1,
                            .content_type = "application/json",
                            .body =
                                "{\"error\":{\"code\":\"internal\",\"message\":\"fake: no reply "
                                "queued\"}}"};
        fallback.body_len = strlen(fallback.body);
        pthread_mutex_lock(&f->lock);
        if (f->n_requests < MAX_REQUESTS)
            f->requests[f->n_requests++] = rq;
        else
            free(rq.body);
        reply_t *r = f->next_reply < f->n_replies ? &f->replies[f->next_reply++] : &fallback;
        pthread_mutex_unlock(&f->lock);

        if (r->mode == FAKE_SILENT)
            continue;
        if (r->mode == FAKE_CLOSE) {
            conn_close(c);
            return;
        }
        char head[512];
        int n = snprintf(head, sizeof(head), "HTTP/1.1 %d %s\r\nContent-Length: %zu\r\n", r->status,
                         reason(r->status), r->body_len);
        if (r->has_type)
            n += snprintf(head + n, sizeof(head) - (size_t)n, "Content-Type: %s\r\n",
                          r->content_type);
        n += snprintf(head + n, sizeof(head) - (size_t)n, "\r\n");
        send_all(c->fd, head, (size_t)n);
        send_all(c->fd, r->body, r->body_len);
    }
}

static void *run(void *arg)
{
    fake_http_t *f = arg;
    for (;;) {
        struct pollfd p[MAX_CONNS + 2];
        int map[MAX_CONNS + 2];
        nfds_t n = 0;
        p[n] = (struct pollfd){.fd = f->wake[0], .events = POLLIN};
        map[n++] = -1;
        p[n] = (struct pollfd){.fd = f->listen_fd, .events = POLLIN};
        map[n++] = -2;
        for (int i = 0; i < MAX_CONNS; i++)
            if (f->conns[i].fd >= 0) {
                p[n] = (struct pollfd){.fd = f->conns[i].fd, .events = POLLIN};
                map[n++] = i;
            }
        if (poll(p, n, -1) < 0)
            continue;
        if (p[0].revents)
            return NULL;
        if (p[1].revents & POLLIN) {
            int fd = accept(f->listen_fd, NULL, NULL);
            int slot = 0;
            while (fd >= 0 && slot < MAX_CONNS && f->conns[slot].fd >= 0)
                slot++;
            if (fd >= 0 && slot < MAX_CONNS) {
                pthread_mutex_lock(&f->lock);
                f->conns[slot].fd = fd;
                f->conns[slot].id = f->n_accepted++;
                pthread_mutex_unlock(&f->lock);
            } else if (fd >= 0) {
                close(fd);
            }
        }
        for (nfds_t k = 2; k < n; k++) {
            if (!(p[k].revents & (POLLIN | POLLHUP | POLLERR)))
                continue;
            conn_t *c = &f->conns[map[k]];
            if (c->cap - c->len < 65536) {
                c->cap = c->cap * 2 + 65536;
                c->buf = realloc(c->buf, c->cap);
            }
            ssize_t got = recv(c->fd, c->buf + c->len, c->cap - c->len, 0);
            if (got <= 0) {
                conn_close(c);
                continue;
            }
            c->len += (size_t)got;
            serve(f, c);
        }
    }
}

fake_http_t *fake_http_start(void)
{
    fake_http_t *f = calloc(1, sizeof(*f));
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = 0};
    socklen_t alen = sizeof(addr);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    for (int i = 0; i < MAX_CONNS; i++)
        f->conns[i].fd = -1;
    pthread_mutex_init(&f->lock, NULL);
    f->listen_fd = socket(AF_INET, SOCK_STREAM, 0);
    if (f->listen_fd < 0 || bind(f->listen_fd, (struct sockaddr *)&addr, sizeof(addr)) != 0 ||
        listen(f->listen_fd, 64) != 0 ||
        getsockname(f->listen_fd, (struct sockaddr *)&addr, &alen) != 0 || pipe(f->wake) != 0) {
        free(f);
        return NULL;
    }
    f->port = ntohs(addr.sin_port);
    snprintf(f->url, sizeof(f->url), "http://127.0.0.1:%d", f->port);
    pthread_create(&f->thread, NULL, run, f);
    return f;
}

int fake_http_port(const fake_http_t *f)
{
    return f->port;
}

const char *fake_http_url(const fake_http_t *f)
{
    return f->url;
}

void fake_http_push(fake_http_t *f, const fake_reply_t *reply)
{
    pthread_mutex_lock(&f->lock);
    if (f->n_replies < MAX_REPLIES) {
        reply_t *r = &f->replies[f->n_replies++];
        r->mode = reply->mode;
        r->status = reply->status;
        r->has_type = reply->content_type != NULL;
        if (r->has_type)
            snprintf(r->content_type, sizeof(r->content_type), "%s", reply->content_type);
        r->body_len = reply->body ? (reply->body_len ? reply->body_len : strlen(reply->body)) : 0;
        r->body = malloc(r->body_len + 1);
        if (r->body_len)
            memcpy(r->body, reply->body, r->body_len);
    }
    pthread_mutex_unlock(&f->lock);
}

size_t fake_http_count(fake_http_t *f)
{
    pthread_mutex_lock(&f->lock);
    size_t n = f->n_requests;
    pthread_mutex_unlock(&f->lock);
    return n;
}

size_t fake_http_connections(fake_http_t *f)
{
    pthread_mutex_lock(&f->lock);
    size_t n = (size_t)f->n_accepted;
    pthread_mutex_unlock(&f->lock);
    return n;
}

const fake_request_t *fake_http_request(fake_http_t *f, size_t i)
{
    pthread_mutex_lock(&f->lock);
    const fake_request_t *rq = i < f->n_requests ? &f->requests[i] : NULL;
    pthread_mutex_unlock(&f->lock);
    return rq;
}

const char *fake_request_header(const fake_request_t *rq, const char *name, char *dst,
                                size_t dst_cap)
{
    size_t n = strlen(name);
    for (const char *line = rq->headers; *line;) {
        const char *eol = strstr(line, "\r\n");
        if (eol == NULL)
            eol = line + strlen(line);
        if ((size_t)(eol - line) > n && strncasecmp(line, name, n) == 0 && line[n] == ':') {
            const char *v = line + n + 1;
            while (*v == ' ')
                v++;
            size_t len = (size_t)(eol - v) < dst_cap - 1 ? (size_t)(eol - v) : dst_cap - 1;
            memcpy(dst, v, len);
            dst[len] = '\0';
            return dst;
        }
        line = *eol ? eol + 2 : eol;
    }
    return NULL;
}

void fake_http_free(fake_http_t *f)
{
    if (f == NULL)
        return;
    if (write(f->wake[1], "x", 1) != 1)
        perror("fake_http: wake");
    pthread_join(f->thread, NULL);
    for (int i = 0; i < MAX_CONNS; i++)
        if (f->conns[i].fd >= 0)
            conn_close(&f->conns[i]);
    close(f->listen_fd);
    close(f->wake[0]);
    close(f->wake[1]);
    for (size_t i = 0; i < f->n_requests; i++)
        free(f->requests[i].body);
    for (size_t i = 0; i < f->n_replies; i++)
        free(f->replies[i].body);
    pthread_mutex_destroy(&f->lock);
    free(f);
}

int fake_closed_port(void)
{
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = 0};
    socklen_t alen = sizeof(addr);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int port = -1;
    if (fd >= 0 && bind(fd, (struct sockaddr *)&addr, sizeof(addr)) == 0 &&
        getsockname(fd, (struct sockaddr *)&addr, &alen) == 0)
        port = ntohs(addr.sin_port);
    if (fd >= 0)
        close(fd);
    return port;
}
