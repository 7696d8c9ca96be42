/* h_drift.c - GET /v1/runs/{run}/drift and /history: EMA vs PreciseBN drift
 * per layer, and one layer's recent steps. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/size_limits.h"
#include "http/http.h"
#include "registry/registry.h"

void nsd_h_drift(nsd_request_t *req)
{
    ns_error_detail_t err = {0};
    char what[NS_NAME_MAX + 64];
    snprintf(what, sizeof(what), "the drift of run '%s'", req->run);
    /* Every row's text, whatever the filter: the bound is cheap and a
     * filter rarely keeps much less. */
    uint64_t bytes = nsd_registry_view_bytes(req->server->registry, req->run, NSD_VIEW_DRIFT);
    if (nsd_request_reserve(req, bytes, what) != 0) {
        nsd_respond_detail(req, NS_EMEMORY, &req->pending_detail);
        return;
    }
    ns_buf_t text;
    ns_buf_init(&text, NSD_ANSWER_MAX);
    int rc = nsd_registry_drift_text(req->server->registry, req->run,
                                     nsd_request_query(req, "domain"), &text, &err);
    if (rc != 0) {
        nsd_respond_detail(req, rc, &err);
        return;
    }
    nsd_respond_encoded(req, NS_FORMAT_JSON, &text);
}

/* channel=N: a decimal integer >= 0. @return 0 or NS_EINVAL (err). */
static int parse_channel(const char *src, int64_t *dst, ns_error_detail_t *err)
{
    *dst = -1;
    if (src == NULL)
        return 0;
    char *end;
    errno = 0;
    long long v = strtoll(src, &end, 10);
    if (src[0] < '0' || src[0] > '9' || *end != '\0' || errno != 0)
        return ns_error_set(err, NS_EINVAL, "channel", "expected a channel number, got '%.40s'",
                            src);
    *dst = v;
    return 0;
}

void nsd_h_history(nsd_request_t *req)
{
    ns_error_detail_t err = {0};
    const char *layer = nsd_request_query(req, "layer");
    const char *domain = nsd_request_query(req, "domain");
    int64_t channel;
    int rc = parse_channel(nsd_request_query(req, "channel"), &channel, &err);
    if (rc == 0 && (layer == NULL || !ns_name_valid(layer)))
        rc = ns_error_set(&err, NS_EINVAL, "layer",
                          layer == NULL ? "required: the layer whose history to serve"
                                        : "invalid layer name");
    if (rc == 0 && domain != NULL && strcmp(domain, "*") != 0 && !ns_name_valid(domain))
        rc = ns_error_set(&err, NS_EINVAL, "domain", "expected a domain name or *");
    json_t *j = rc == 0 ? nsd_registry_history_json(req->server->registry, req->run, layer, domain,
                                                    channel, &err)
                        : NULL;
    if (j == NULL) {
        nsd_respond_detail(req, err.code ? err.code : NS_ENOMEM, &err);
        return;
    }
    nsd_respond_json(req, 200, j);
}
