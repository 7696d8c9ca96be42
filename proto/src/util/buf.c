/* buf.c - ns_buf_t, a growable byte buffer with a hard ceiling (curl's dynbuf). */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto_internal.h"

/* cap_max == 0 (a zero-initialised buffer) means no ceiling. */
static size_t ceiling(const ns_buf_t *buf)
{
    return buf->cap_max ? buf->cap_max : SIZE_MAX - 1;
}

void ns_buf_init(ns_buf_t *buf, size_t cap_max)
{
    buf->data = NULL;
    buf->len = 0;
    buf->cap = 0;
    buf->cap_max = cap_max;
}

void ns_buf_free(ns_buf_t *buf)
{
    if (!buf)
        return;
    free(buf->data);
    buf->data = NULL;
    buf->len = 0;
    buf->cap = 0;
}

int ns_buf_reserve(ns_buf_t *buf, size_t extra)
{
    size_t max = ceiling(buf);
    if (extra > max || buf->len > max - extra) {
        ns_buf_free(buf);
        return NS_ETOOLARGE;
    }
    size_t need = buf->len + extra + 1; /* room for the NUL */
    if (need <= buf->cap)
        return 0;
    /* Double, but never beyond the ceiling (+1 for the NUL). */
    size_t cap = buf->cap ? buf->cap : 64;
    while (cap < need)
        cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    if (cap > max + 1)
        cap = max + 1;
    char *data = realloc(buf->data, cap);
    if (!data) {
        ns_buf_free(buf);
        return NS_ENOMEM;
    }
    buf->data = data;
    buf->cap = cap;
    return 0;
}

int ns_buf_append(ns_buf_t *buf, const void *src, size_t src_len)
{
    int rc = ns_buf_reserve(buf, src_len);
    if (rc)
        return rc;
    if (src_len)
        memcpy(buf->data + buf->len, src, src_len);
    buf->len += src_len;
    buf->data[buf->len] = '\0';
    return 0;
}

int ns_buf_printf(ns_buf_t *buf, const char *fmt, ...)
{
    va_list ap;
    size_t room = buf->cap > buf->len ? buf->cap - buf->len : 0;
    va_start(ap, fmt);
    int n = vsnprintf(room ? buf->data + buf->len : NULL, room, fmt, ap);
    va_end(ap);
    if (n < 0) {
        ns_buf_free(buf);
        return NS_EINVAL;
    }
    if ((size_t)n >= room) {
        int rc = ns_buf_reserve(buf, (size_t)n);
        if (rc)
            return rc;
        va_start(ap, fmt);
        vsnprintf(buf->data + buf->len, (size_t)n + 1, fmt, ap);
        va_end(ap);
    }
    buf->len += (size_t)n;
    return 0;
}

char *ns_buf_take(ns_buf_t *buf, size_t *len)
{
    char *data = buf->data;
    size_t n = buf->len;
    if (!data) {
        data = malloc(1);
        if (data)
            data[0] = '\0';
        n = 0;
    }
    buf->data = NULL;
    buf->len = 0;
    buf->cap = 0;
    if (len)
        *len = n;
    return data;
}

int ns__buf_append_json_string(ns_buf_t *buf, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    size_t n = strlen(s), out = 2;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        out += c == '"' || c == '\\' ? 2 : c < 0x20 ? 6 : 1;
    }
    int rc = ns_buf_reserve(buf, out);
    if (rc)
        return rc;
    char *p = buf->data + buf->len;
    *p++ = '"';
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            *p++ = '\\';
            *p++ = (char)c;
        } else if (c < 0x20) {
            *p++ = '\\';
            *p++ = 'u';
            *p++ = '0';
            *p++ = '0';
            *p++ = hex[c >> 4];
            *p++ = hex[c & 15];
        } else {
            *p++ = (char)c;
        }
    }
    *p++ = '"';
    buf->len = (size_t)(p - buf->data);
    buf->data[buf->len] = '\0';
    return 0;
}
