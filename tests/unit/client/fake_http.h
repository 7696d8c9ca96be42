/* fake_http.h - a canned-reply HTTP/1.1 server for the client's unit tests:
 * it records every request (method, target, headers, body, connection) and
 * answers each with the next queued reply, on 127.0.0.1 in its own thread. */
#ifndef NS_TEST_FAKE_HTTP_H
#define NS_TEST_FAKE_HTTP_H

#include <stddef.h>

typedef enum fake_mode_e {
    FAKE_REPLY = 0, /* answer with status, content type and body (keep-alive) */
    FAKE_SILENT,    /* read the request, never answer */
    FAKE_CLOSE      /* read the request, close the connection without answering */
} fake_mode_t;

typedef struct fake_reply_s {
    fake_mode_t mode;
    int status;
    const char *content_type; /* NULL: no Content-Type header */
    const void *body;
    size_t body_len; /* 0 with a non-NULL body: strlen(body) */
} fake_reply_t;

typedef struct fake_request_s {
    char method[16];
    char target[2048];  /* path and query, as sent */
    char headers[4096]; /* "Name: value\r\n" lines as sent */
    unsigned char *body;
    size_t body_len;
    int connection; /* 0, 1, ...: which accepted connection carried it */
} fake_request_t;

typedef struct fake_http_s fake_http_t;

/* Start listening on 127.0.0.1:<ephemeral>; NULL on failure. */
fake_http_t *fake_http_start(void);
int fake_http_port(const fake_http_t *f);
/* "http://127.0.0.1:<port>" (static per server). */
const char *fake_http_url(const fake_http_t *f);
/* Queue the answer to the next request (copied). Without a queued reply a
 * request gets 500 with an "internal" error body. */
void fake_http_push(fake_http_t *f, const fake_reply_t *reply);
size_t fake_http_count(fake_http_t *f);
size_t fake_http_connections(fake_http_t *f);
/* Request i (0-based), valid until fake_http_free(). */
const fake_request_t *fake_http_request(fake_http_t *f, size_t i);
/* The value of header 'name' (case-insensitive) of 'rq' copied into dst, or
 * NULL when the request has no such header. */
const char *fake_request_header(const fake_request_t *rq, const char *name, char *dst,
                                size_t dst_cap);
/* Stop the thread, close every socket, free everything. */
void fake_http_free(fake_http_t *f);

/* A port on 127.0.0.1 nothing listens on (bound, then closed). */
int fake_closed_port(void);

#endif
