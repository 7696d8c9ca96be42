/* target.c - the request target and body framing as received (see target.h).
 *
 * DESIGN
 *  Request target: libmicrohttpd 0.9.75 decodes the path in place (a %00
 *  cuts a name short, a %2F adds a segment) and parses the query into the
 *  connection's memory pool, where too many parameters make it queue a 431
 *  that it never sends (the connection hangs until the timeout). So on_uri,
 *  called with the target as received before MHD parses it, takes a copy
 *  of the query and ends the string MHD would parse; the unescape callback
 *  leaves the path as received; routes.c then decodes both strictly. A raw
 *  NUL byte in the target ends the string MHD hands us early: on_access
 *  sees it from where MHD's request line puts the version (0.9.x only).
 *  Framing: MHD takes the first of several Content-Length headers and
 *  prefers Transfer-Encoding to Content-Length; a request whose framing is
 *  ambiguous is answered 400 before its body and the connection closed. */
#include "target.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <microhttpd.h>

int nsd_target_record(nsd_request_t *req, const char *uri)
{
    req->target = uri;
    req->target_len = uri != NULL ? strlen(uri) : 0;
    const char *q = uri != NULL ? strchr(uri, '?') : NULL;
    if (q != NULL) {
        req->query = strdup(q + 1);
        if (req->query == NULL)
            return NS_ENOMEM;
#if MHD_VERSION < 0x01000000
        /* 0.9.x parses the query from this very buffer right after this
         * call: leave it nothing to parse (see the DESIGN above). */
        ((char *)q)[1] = '\0';
#endif
    }
    return 0;
}

size_t nsd_target_unescape(void *cls, struct MHD_Connection *conn, char *s)
{
    (void)cls;
    (void)conn;
    return strlen(s);
}

void nsd_target_check_nul(nsd_request_t *req, const char *url, const char *version)
{
#if MHD_VERSION < 0x01000000
    /* 0.9.x keeps the request line in one buffer, the version right
     * after the target and its separator: unless a raw NUL byte in the
     * target ended the string MHD handed us early. */
    req->target_nul = req->target == url && version != url + req->target_len + 1;
#else
    (void)req;
    (void)url;
    (void)version;
#endif
}

/* The framing headers of a request, as MHD_get_connection_values() lists them. */
typedef struct framing_s {
    const char *length; /* the first Content-Length */
    int lengths_differ;
    const char *encoding; /* the last Transfer-Encoding */
    int encodings;
} framing_t;

static enum MHD_Result framing_one(void *cls, enum MHD_ValueKind kind, const char *key,
                                   const char *value)
{
    framing_t *f = cls;
    (void)kind;
    if (value == NULL)
        value = "";
    if (strcasecmp(key, MHD_HTTP_HEADER_CONTENT_LENGTH) == 0) {
        if (f->length != NULL && strcmp(f->length, value) != 0)
            f->lengths_differ = 1;
        if (f->length == NULL)
            f->length = value;
    } else if (strcasecmp(key, MHD_HTTP_HEADER_TRANSFER_ENCODING) == 0) {
        f->encoding = value;
        f->encodings++;
    }
    return MHD_YES;
}

int nsd_target_check_framing(nsd_request_t *req)
{
    framing_t f = {0};
    MHD_get_connection_values(req->conn, MHD_HEADER_KIND, framing_one, &f);
    ns_error_detail_t *err = &req->pending_detail;
    if (f.lengths_differ)
        return ns_error_set(err, NS_EINVAL, "Content-Length",
                            "given more than once with different values");
    if (f.length != NULL && f.encodings > 0)
        return ns_error_set(err, NS_EINVAL, "Content-Length",
                            "given together with Transfer-Encoding; send one of them");
    if (f.encodings > 1 || (f.encodings == 1 && strcasecmp(f.encoding, "chunked") != 0))
        return ns_error_set(err, NS_EINVAL, "Transfer-Encoding",
                            "only a single \"chunked\" is accepted");
    return 0;
}
