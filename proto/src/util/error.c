/* error.c - error details (first error wins), name validation and error bodies. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "proto_internal.h"

int ns_error_set(ns_error_detail_t *detail, int code, const char *field, const char *fmt, ...)
{
    if (!detail || detail->code != 0)
        return code;
    detail->code = code;
    if (!field)
        field = "";
    snprintf(detail->field, sizeof(detail->field), "%s", field);
    size_t off = 0;
    if (field[0]) {
        int n = snprintf(detail->message, sizeof(detail->message), "%s: ", field);
        off = n < 0                                 ? 0
              : (size_t)n < sizeof(detail->message) ? (size_t)n
                                                    : sizeof(detail->message) - 1;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail->message + off, sizeof(detail->message) - off, fmt, ap);
    va_end(ap);
    return code;
}

int ns_name_valid(const char *s)
{
    size_t n = 0;
    if (!s)
        return 0;
    for (; s[n]; n++) {
        char c = s[n];
        int ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                 c == '_' || c == '.' || c == ':' || c == '-';
        if (!ok || n >= NS_NAME_MAX)
            return 0;
    }
    return n >= 1;
}

int ns_error_encode_json(ns_buf_t *dst, int code, const char *message)
{
    if (!message || !message[0])
        message = ns_strerror(code);
    json_t *msg = json_string(message);
    if (!msg) {
        /* Not UTF-8 (a message may quote client bytes): keep the ASCII part. */
        char *ascii = strdup(message);
        if (!ascii) {
            ns_buf_free(dst);
            return NS_ENOMEM;
        }
        for (char *p = ascii; *p; p++)
            if ((unsigned char)*p >= 0x80)
                *p = '?';
        msg = json_string(ascii);
        free(ascii);
    }
    json_t *root =
        msg ? json_pack("{s:{s:s,s:o}}", "error", "code", ns_error_name(code), "message", msg)
            : NULL;
    char *text = root ? json_dumps(root, JSON_COMPACT) : NULL;
    json_decref(root);
    if (!text) {
        ns_buf_free(dst);
        return NS_ENOMEM;
    }
    int rc = ns_buf_append(dst, text, strlen(text));
    free(text);
    return rc;
}
