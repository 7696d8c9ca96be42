/* mhd_errors.c - libmicrohttpd's own error answers in the API's JSON error body.
 *
 * libmicrohttpd answers what it cannot parse (a malformed request line or
 * header, bad chunked encoding, an unsupported HTTP version, a request too
 * big for a connection's memory) itself, before any callback of ours runs,
 * with an HTML page compiled into it; 0.9.75 has no option to replace it.
 * Every such answer is made by one call, through the library's PLT, to
 * MHD_create_response_from_buffer() with one of those pages. normstatd
 * defines that function: the dynamic linker binds the library's call (and
 * ours) here, and this wrapper hands a page's text to the real function
 * (dlsym(RTLD_NEXT)) as {"error": {"code", "message"}} instead, with
 * Content-Type: application/json; anything else passes through unchanged.
 * The status line stays libmicrohttpd's. test_api_strict.py sends each kind
 * of malformed request and fails if an HTML page ever comes back (a later
 * libmicrohttpd that made the call internally would). */
#define _GNU_SOURCE /* RTLD_NEXT */
#include <dlfcn.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <microhttpd.h>

typedef struct MHD_Response *(*create_fn)(size_t size, void *buffer,
                                          enum MHD_ResponseMemoryMode mode);

static create_fn real_create(void)
{
    static _Atomic(create_fn) real;
    create_fn f = atomic_load_explicit(&real, memory_order_acquire);
    if (f == NULL) {
        void *sym = dlsym(RTLD_NEXT, "MHD_create_response_from_buffer");
        memcpy(&f, &sym, sizeof(f)); /* POSIX: a data pointer that names a function */
        atomic_store_explicit(&real, f, memory_order_release);
    }
    return f;
}

/* The wire code of a page, from its title: 413 pages name the body's size,
 * 500 one is the library's "internal" error, every other is a request the
 * daemon could not read. */
static const char *page_code(const char *page)
{
    if (strstr(page, "<title>Request content too large</title>") != NULL)
        return "body_too_large";
    if (strstr(page, "<title>Internal server error</title>") != NULL)
        return "internal";
    return "bad_request";
}

/* The page's <body> text, tags and entities dropped, into 'dst' as a JSON
 * string's contents (the pages hold no quote or backslash of their own).
 * @return 0, or -1 if 'page' is not one of libmicrohttpd's pages. */
static int page_message(const char *page, size_t len, char *dst, size_t cap)
{
    static const char open[] = "<html><head><title>";
    if (len < sizeof(open) - 1 || memcmp(page, open, sizeof(open) - 1) != 0)
        return -1;
    const char *p = memmem(page, len, "<body>", 6);
    if (p == NULL)
        return -1;
    const char *end = page + len;
    size_t n = 0;
    for (p += 6; p < end && n + 1 < cap; p++) {
        if (*p == '<') { /* a tag: skipped, </body> ends it */
            if ((size_t)(end - p) >= 7 && memcmp(p, "</body>", 7) == 0)
                break;
            const char *gt = memchr(p, '>', (size_t)(end - p));
            if (gt == NULL)
                break;
            p = gt;
        } else if (*p == '&') { /* &quot; and the like: a plain quote mark */
            const char *semi = memchr(p, ';', (size_t)(end - p));
            if (semi == NULL)
                break;
            dst[n++] = '\'';
            p = semi;
        } else if (*p != '"' && *p != '\\' && (unsigned char)*p >= 0x20) {
            dst[n++] = *p;
        }
    }
    dst[n] = '\0';
    return 0;
}

/* Visible, and in normstatd's dynamic symbol table (server.mk), so that the
 * library's call binds here. */
__attribute__((visibility("default"))) struct MHD_Response *
MHD_create_response_from_buffer(size_t size, void *buffer, enum MHD_ResponseMemoryMode mode)
{
    create_fn create = real_create();
    if (create == NULL)
        return NULL;
    char message[400], body[512];
    if (buffer == NULL || page_message(buffer, size, message, sizeof(message)) != 0)
        return create(size, buffer, mode);
    int n = snprintf(body, sizeof(body), "{\"error\":{\"code\":\"%s\",\"message\":\"%s\"}}",
                     page_code(buffer), message);
    if (n < 0 || (size_t)n >= sizeof(body))
        return create(size, buffer, mode);
    struct MHD_Response *r = create((size_t)n, body, MHD_RESPMEM_MUST_COPY);
    if (mode == MHD_RESPMEM_MUST_FREE) /* the page was the caller's to give */
        free(buffer);
    if (r != NULL)
        MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
    return r;
}
