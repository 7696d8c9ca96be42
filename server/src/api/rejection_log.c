/* rejection_log.c - refused reports logged at info, naming run, worker,
 * layer and reason, rate-limited per run (see rejection_log.h). */
#include "rejection_log.h"

#include <ctype.h>
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

/* A JSON string at b[i] == '"': its text (escapes left as they are) into
 * *text, *len. @return the index after its closing quote, or len if none. */
static size_t string_at(const char *b, size_t len, size_t i, const char **text, size_t *tlen)
{
    size_t start = ++i;
    while (i < len && b[i] != '"')
        i += b[i] == '\\' ? 2 : 1;
    *text = b + start;
    *tlen = (i < len ? i : len) - start;
    return i < len ? i + 1 : len;
}

static int is_key(const char *text, size_t len, const char *want)
{
    return len == strlen(want) && memcmp(text, want, len) == 0;
}

/* What a JSON body that did not decode still tells, in one pass that builds
 * nothing (the body may be 16 MiB): its top-level "worker" and the layer (a
 * key of the top-level "layers") holding the first NaN or Infinity literal,
 * which JSON lacks but Python's json.dumps writes. Only for the log line:
 * a body that is not JSON at all yields what it yields. */
static long json_body_names(const char *b, size_t len, char *layer, size_t layer_cap)
{
    long worker = -1;
    int depth = 0, named = 0;
    const char *top = "", *second = ""; /* the last keys read at depths 1 and 2 */
    size_t top_len = 0, second_len = 0;
    for (size_t i = 0; i < len;) {
        char ch = b[i];
        if (ch == '"') {
            const char *text;
            size_t tlen;
            i = string_at(b, len, i, &text, &tlen);
            size_t j = i;
            while (j < len && isspace((unsigned char)b[j]))
                j++;
            if (j < len && b[j] == ':' && depth == 1)
                top = text, top_len = tlen;
            else if (j < len && b[j] == ':' && depth == 2)
                second = text, second_len = tlen;
            continue;
        }
        if (ch == '{' || ch == '[')
            depth++;
        else if (ch == '}' || ch == ']')
            depth--;
        else if (depth == 1 && isdigit((unsigned char)ch) && is_key(top, top_len, "worker")) {
            for (worker = 0; i < len && isdigit((unsigned char)b[i]) && worker <= NS_WORLD_SIZE_MAX;
                 i++)
                worker = worker * 10 + (b[i] - '0');
            if (worker > NS_WORLD_SIZE_MAX) /* no such worker: name none */
                worker = -1;
            while (i < len && isdigit((unsigned char)b[i]))
                i++;
            continue;
        } else if (depth >= 3 && !named && is_key(top, top_len, "layers") &&
                   ((len - i >= 3 && memcmp(b + i, "NaN", 3) == 0) ||
                    (len - i >= 8 && memcmp(b + i, "Infinity", 8) == 0))) {
            named = 1; /* the first only, and only a name a layer may have (it is logged) */
            char name[NS_NAME_MAX + 1];
            snprintf(name, sizeof(name), "%.*s", (int)(second_len <= NS_NAME_MAX ? second_len : 0),
                     second);
            if (ns_name_valid(name))
                snprintf(layer, layer_cap, "%s", name);
        }
        i++;
    }
    return worker;
}

/* The worker of a body that did not decode, if it can be read (the
 * safetensors metadata string or the JSON field), and for JSON the layer
 * holding a non-finite literal into layer (left as it is otherwise).
 * @return the worker, or -1. */
static long body_worker(const nsd_request_t *req, char *layer, size_t layer_cap)
{
    const char *body = req->body.data;
    if (body == NULL || req->body.len == 0)
        return -1;
    if (req->body_format != NS_FORMAT_SAFETENSORS)
        return json_body_names(body, req->body.len, layer, layer_cap);
    long worker = -1;
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

void nsd_reject_report(nsd_request_t *req, int code, const ns_error_detail_t *err, long worker)
{
    uint64_t withheld = 0;
    int log =
        nsd_registry_note_rejection(req->server->registry, req->run, code, nsd_now_ms(), &withheld);
    if (log && nsd_log_enabled(NSD_LOG_INFO)) {
        char layer[NS_NAME_MAX + 1], body_layer[NS_NAME_MAX + 1] = "-", wtext[24], q[600];
        if (worker == NSD_WORKER_UNKNOWN)
            worker = body_worker(req, body_layer, sizeof(body_layer));
        const char *layer_name = field_layer(err != NULL ? err->field : "", layer, sizeof(layer));
        if (strcmp(layer_name, "-") == 0)
            layer_name = body_layer;
        const char *message = err != NULL && err->message[0] ? err->message : ns_strerror(code);
        if (worker >= 0)
            snprintf(wtext, sizeof(wtext), "%ld", worker);
        else
            snprintf(wtext, sizeof(wtext), "-");
        nsd_log_write(NSD_LOG_INFO, "report_rejected",
                      "run=%s route=%s worker=%s layer=%s reason=%s status=%d withheld=%llu "
                      "message=%s",
                      req->run, req->route != NULL ? req->route->label : "-", wtext, layer_name,
                      ns_error_name(code), ns_error_http_status(code), (unsigned long long)withheld,
                      nsd_log_quote(q, sizeof(q), message));
    }
    nsd_respond_detail(req, code, err);
}
