/* rejection_log.c - refused reports logged at info, naming run, worker,
 * layer and reason, rate-limited per run (see rejection_log.h). */
#include "rejection_log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/clock.h"
#include "base/log.h"
#include "registry/registry.h"

/* The layer an error's field names: "layers.<layer>", optionally followed by
 * ".mean[i]", ".var[i]" or ".count" (a layer name may hold dots). "-" when
 * the field names no layer. */
static const char *field_layer(const char *field, char *dst, size_t dst_cap)
{
    static const char prefix[] = "layers.";
    if (strncmp(field, prefix, sizeof(prefix) - 1) != 0 || field[sizeof(prefix) - 1] == '\0')
        return "-";
    snprintf(dst, dst_cap, "%s", field + sizeof(prefix) - 1);
    char *bracket = strchr(dst, '[');
    if (bracket != NULL)
        *bracket = '\0';
    static const char *const suffixes[] = {"." NS_FIELD_MEAN, "." NS_FIELD_VAR, "." NS_FIELD_COUNT,
                                           ".sum_dy", ".sum_dy_xmu"};
    size_t len = strlen(dst);
    for (size_t i = 0; i < sizeof(suffixes) / sizeof(suffixes[0]); i++) {
        size_t sl = strlen(suffixes[i]);
        if (len > sl && strcmp(dst + len - sl, suffixes[i]) == 0) {
            dst[len - sl] = '\0';
            break;
        }
    }
    return dst;
}

/* The "worker" of a body that did not decode, if it can be read: the
 * safetensors metadata string or the JSON field. @return -1 otherwise. */
static long body_worker(const nsd_request_t *req)
{
    const char *body = req->body.data;
    if (body == NULL || req->body.len == 0)
        return -1;
    long worker = -1;
    if (req->body_format == NS_FORMAT_SAFETENSORS) {
        ns_safetensors_t *st = NULL;
        if (ns_safetensors_parse(&st, (const uint8_t *)body, req->body.len, NULL) == 0) {
            const char *w = ns_safetensors_meta(st, "worker");
            char *end;
            long v = w != NULL ? strtol(w, &end, 10) : -1;
            if (w != NULL && *w != '\0' && *end == '\0' && v >= 0)
                worker = v;
        }
        ns_safetensors_free(st);
        return worker;
    }
    json_t *root = json_loadb(body, req->body.len, 0, NULL);
    json_t *w = json_object_get(root, "worker");
    if (json_is_integer(w) && json_integer_value(w) >= 0)
        worker = (long)json_integer_value(w);
    json_decref(root);
    return worker;
}

void nsd_reject_report(nsd_request_t *req, int code, const ns_error_detail_t *err, long worker)
{
    uint64_t withheld = 0;
    int log =
        nsd_registry_note_rejection(req->server->registry, req->run, code, nsd_now_ms(), &withheld);
    if (log && nsd_log_enabled(NSD_LOG_INFO)) {
        if (worker == NSD_WORKER_UNKNOWN)
            worker = body_worker(req);
        char layer[NS_NAME_MAX + 1], wtext[24], q[600];
        const char *message = err != NULL && err->message[0] ? err->message : ns_strerror(code);
        if (worker >= 0)
            snprintf(wtext, sizeof(wtext), "%ld", worker);
        else
            snprintf(wtext, sizeof(wtext), "-");
        nsd_log_write(NSD_LOG_INFO, "report_rejected",
                      "run=%s route=%s worker=%s layer=%s reason=%s status=%d withheld=%llu "
                      "message=%s",
                      req->run, req->route != NULL ? req->route->label : "-", wtext,
                      field_layer(err != NULL ? err->field : "", layer, sizeof(layer)),
                      ns_error_name(code), ns_error_http_status(code), (unsigned long long)withheld,
                      nsd_log_quote(q, sizeof(q), message));
    }
    nsd_respond_detail(req, code, err);
}
