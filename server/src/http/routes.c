/* routes.c - the route table, path matching and query decoding. */
#include "routes.h"

#include <stdio.h>
#include <string.h>

/* GET /v1/runs/{run}/stats: the query of proto/openapi.yaml. */
static const char *const stats_query[] = {"source",   "domain", "mixture", "layers",
                                          "variance", "format", NULL};

/* GET /v1/runs/{run}/drift and /history. */
static const char *const drift_query[] = {"domain", NULL};
static const char *const history_query[] = {"layer", "domain", "channel", NULL};

/* GET /v1/runs: pages of the list. */
static const char *const runs_query[] = {"limit", "after", NULL};

static const nsd_route_t table[] = {
    {"GET", "/v1/runs", nsd_h_runs_list, "runs_list", NSD_BODY_NONE, runs_query},
    {"PUT", "/v1/runs/{run}", nsd_h_run_put, "run_put", NSD_BODY_JSON, NULL},
    {"GET", "/v1/runs/{run}", nsd_h_run_get, "run_get", NSD_BODY_NONE, NULL},
    {"DELETE", "/v1/runs/{run}", nsd_h_run_delete, "run_delete", NSD_BODY_NONE, NULL},
    {"POST", "/v1/runs/{run}/batches", nsd_h_batches, "batches", NSD_BODY_REPORT, NULL},
    {"POST", "/v1/runs/{run}/sync", nsd_h_sync, "sync", NSD_BODY_REPORT, NULL},
    {"POST", "/v1/runs/{run}/grad", nsd_h_grad, "grad", NSD_BODY_REPORT, NULL},
    {"GET", "/v1/runs/{run}/stats", nsd_h_stats, "stats", NSD_BODY_NONE, stats_query},
    {"GET", "/v1/runs/{run}/drift", nsd_h_drift, "drift", NSD_BODY_NONE, drift_query},
    {"GET", "/v1/runs/{run}/history", nsd_h_history, "history", NSD_BODY_NONE, history_query},
    {"POST", "/v1/runs/{run}/precise/reset", nsd_h_precise_reset, "precise_reset", NSD_BODY_JSON,
     NULL},
    {"GET", "/v1/runs/{run}/checkpoint", nsd_h_checkpoint_get, "checkpoint_get", NSD_BODY_NONE,
     NULL},
    {"PUT", "/v1/runs/{run}/checkpoint", nsd_h_checkpoint_put, "checkpoint_put", NSD_BODY_JSON,
     NULL},
    {"GET", "/livez", nsd_h_livez, "livez", NSD_BODY_NONE, NULL},
    {"GET", "/healthz", nsd_h_livez, "healthz", NSD_BODY_NONE, NULL},
    {"GET", "/readyz", nsd_h_readyz, "readyz", NSD_BODY_NONE, NULL},
    {"GET", "/metrics", nsd_h_metrics, "metrics", NSD_BODY_NONE, NULL},
    {"GET", "/v1/version", nsd_h_version, "version", NSD_BODY_NONE, NULL},
    {"GET", "/", nsd_h_ui_redirect, "ui_root", NSD_BODY_NONE, NULL},
    {"GET", "/ui", nsd_h_ui_redirect, "ui_redirect", NSD_BODY_NONE, NULL},
    {"GET", "/ui/", nsd_h_ui_asset, "ui_page", NSD_BODY_NONE, NULL},
    {"GET", "/ui/dashboard.js", nsd_h_ui_asset, "ui_script", NSD_BODY_NONE, NULL},
    {"GET", "/ui/dashboard.css", nsd_h_ui_asset, "ui_style", NSD_BODY_NONE, NULL},
};
#define N_ROUTES (sizeof(table) / sizeof(table[0]))

const nsd_route_t *nsd_routes_table(size_t *n)
{
    *n = N_ROUTES;
    return table;
}

size_t nsd_routes_index(const nsd_route_t *route)
{
    return (size_t)(route - table);
}

/* ---------------------------------------------------------------- decoding */

/* The most segments of any pattern; a longer path matches nothing. */
#define MAX_SEGMENTS 8

typedef struct segment_s {
    const char *text; /* decoded, not terminated */
    size_t len;
    const char *raw; /* as received, for messages */
    size_t raw_len;
} segment_t;

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Percent-decode src[0..len) into dst, which may be src itself or before it
 * ('+' as a space when plus_space).
 * @return the decoded length, or -1 for a '%' not followed by two hex digits. */
static long percent_decode(char *dst, const char *src, size_t len, int plus_space)
{
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        if (src[i] == '%') {
            if (i + 2 >= len)
                return -1;
            int h = hex_value(src[i + 1]), l = hex_value(src[i + 2]);
            if (h < 0 || l < 0)
                return -1;
            dst[o++] = (char)(h * 16 + l);
            i += 2;
        } else {
            dst[o++] = plus_space && src[i] == '+' ? ' ' : src[i];
        }
    }
    return (long)o;
}

/* "'c'" for a printable character, "byte 0xNN" otherwise. */
static const char *describe_char(char *dst, size_t dst_cap, unsigned char c)
{
    if (c > 0x20 && c < 0x7f)
        snprintf(dst, dst_cap, "'%c'", c);
    else
        snprintf(dst, dst_cap, "byte 0x%02X", c);
    return dst;
}

static int clip(size_t len)
{
    return len > 200 ? 200 : (int)len;
}

/* Split 'path' at '/' and decode each segment into buf (NSD_PATH_MAX bytes).
 * @return 0, NS_ENOTFOUND (not absolute, too long, too many segments) or
 * NS_EINVAL (malformed escape, decoded NUL or '/'; 'err' set). */
static int split_path(const char *path, char *buf, segment_t *segs, size_t *n,
                      ns_error_detail_t *err)
{
    *n = 0;
    if (path[0] != '/' || strlen(path) >= NSD_PATH_MAX)
        return NS_ENOTFOUND;
    char *out = buf;
    for (const char *p = path + 1;;) {
        size_t raw_len = strcspn(p, "/");
        if (*n == MAX_SEGMENTS)
            return NS_ENOTFOUND;
        long dec = percent_decode(out, p, raw_len, 0);
        if (dec < 0)
            return ns_error_set(err, NS_EINVAL, "path",
                                "segment '%.*s' holds a '%%' not followed by two hex digits",
                                clip(raw_len), p);
        for (long i = 0; i < dec; i++) {
            if (out[i] == '\0' || out[i] == '/') {
                char what[16];
                return ns_error_set(err, NS_EINVAL, "path",
                                    "segment '%.*s' decodes to %s, which no path segment may hold",
                                    clip(raw_len), p,
                                    describe_char(what, sizeof(what), (unsigned char)out[i]));
            }
        }
        segs[*n] = (segment_t){out, (size_t)dec, p, raw_len};
        (*n)++;
        out += dec;
        if (p[raw_len] == '\0')
            return 0;
        p += raw_len + 1;
    }
}

/* Does 'pattern' match the n segments? The {run} segment goes to *run_seg. */
static int pattern_matches(const char *pattern, const segment_t *segs, size_t n,
                           const segment_t **run_seg)
{
    *run_seg = NULL;
    const char *p = pattern + 1;
    for (size_t i = 0; i < n; i++) {
        size_t len = strcspn(p, "/");
        if (len == 5 && strncmp(p, "{run}", 5) == 0) {
            if (segs[i].len == 0)
                return 0;
            *run_seg = &segs[i];
        } else if (len != segs[i].len || memcmp(p, segs[i].text, len) != 0) {
            return 0;
        }
        p += len;
        if (*p == '/')
            p++;
        else if (i + 1 < n)
            return 0; /* the path has more segments than the pattern */
    }
    return *p == '\0';
}

/* Is the decoded {run} segment a name? @return 0 or NS_EINVAL naming the character. */
static int check_run_name(const segment_t *seg, ns_error_detail_t *err)
{
    if (seg->len > NS_NAME_MAX)
        return ns_error_set(err, NS_EINVAL, "run",
                            "name of %zu characters; names are [A-Za-z0-9_.:-]{1,128}", seg->len);
    for (size_t i = 0; i < seg->len; i++) {
        unsigned char c = (unsigned char)seg->text[i];
        if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
            c == '_' || c == '.' || c == ':' || c == '-')
            continue;
        char what[16];
        return ns_error_set(err, NS_EINVAL, "run",
                            "%s at position %zu of '%.*s' is not allowed in a name; names are "
                            "[A-Za-z0-9_.:-]{1,128}",
                            describe_char(what, sizeof(what), c), i + 1, clip(seg->raw_len),
                            seg->raw);
    }
    return 0;
}

int nsd_routes_match(const char *method, const char *path, const nsd_route_t **route, char *run,
                     size_t run_cap, char *allow, size_t allow_cap, ns_error_detail_t *err)
{
    const char *want = strcmp(method, "HEAD") == 0 ? "GET" : method;
    size_t allow_len = 0;
    int path_found = 0;
    if (run_cap > 0)
        run[0] = '\0';
    if (allow_cap > 0)
        allow[0] = '\0';
    char buf[NSD_PATH_MAX];
    segment_t segs[MAX_SEGMENTS];
    size_t n;
    int rc = split_path(path, buf, segs, &n, err);
    if (rc != 0)
        return rc;
    for (size_t i = 0; i < N_ROUTES; i++) {
        const segment_t *seg;
        if (!pattern_matches(table[i].pattern, segs, n, &seg))
            continue;
        path_found = 1;
        if (strcmp(table[i].method, want) != 0) {
            int w = snprintf(allow + allow_len, allow_cap - allow_len, "%s%s",
                             allow_len ? ", " : "", table[i].method);
            if (w > 0 && (size_t)w < allow_cap - allow_len)
                allow_len += (size_t)w;
            continue;
        }
        *route = &table[i];
        if (seg == NULL)
            return 0;
        rc = check_run_name(seg, err);
        if (rc == 0 && seg->len >= run_cap)
            rc = ns_error_set(err, NS_EINVAL, "run", "name longer than the buffer");
        if (rc != 0)
            return rc;
        memcpy(run, seg->text, seg->len);
        run[seg->len] = '\0';
        return 0;
    }
    return path_found ? NS_EMETHOD : NS_ENOTFOUND;
}

int nsd_query_parse(char *src, nsd_param_t *params, size_t cap, size_t *n, ns_error_detail_t *err)
{
    /* Decoding only shrinks and writes behind the reading position, so the
     * names and values are decoded in place. */
    *n = 0;
    char *out = src;
    for (char *p = src; *p != '\0';) {
        size_t len = strcspn(p, "&");
        char *next = p[len] == '&' ? p + len + 1 : p + len;
        if (len == 0) {
            p = next;
            continue;
        }
        size_t key_len = strcspn(p, "=&");
        char raw_key[64];
        snprintf(raw_key, sizeof(raw_key), "%.*s", key_len > 60 ? 60 : (int)key_len, p);
        if (*n == cap)
            return ns_error_set(err, NS_EINVAL, "query", "more than %zu query parameters", cap);
        char *key = out;
        long kl = percent_decode(key, p, key_len, 1);
        if (kl < 0)
            return ns_error_set(err, NS_EINVAL, raw_key,
                                "query parameter name with a '%%' not followed by two hex digits");
        if (kl == 0)
            return ns_error_set(err, NS_EINVAL, "query", "a query parameter without a name");
        if (memchr(key, '\0', (size_t)kl) != NULL)
            return ns_error_set(
                err, NS_EINVAL, raw_key,
                "query parameter name decodes to byte 0x00, which no name may hold");
        key[kl] = '\0';
        out = key + kl + 1;
        const char *value = "";
        if (key_len < len) {
            char *v = out;
            long vl = percent_decode(v, p + key_len + 1, len - key_len - 1, 1);
            if (vl < 0)
                return ns_error_set(err, NS_EINVAL, key,
                                    "query value with a '%%' not followed by two hex digits");
            if (memchr(v, '\0', (size_t)vl) != NULL)
                return ns_error_set(err, NS_EINVAL, key,
                                    "query value decodes to byte 0x00, which no value may hold");
            v[vl] = '\0';
            out = v + vl + 1;
            value = v;
        }
        for (size_t i = 0; i < *n; i++)
            if (strcmp(params[i].key, key) == 0)
                return ns_error_set(err, NS_EINVAL, key,
                                    "query parameter given more than once; give it once");
        params[*n] = (nsd_param_t){key, value};
        (*n)++;
        p = next;
    }
    return 0;
}

void nsd_routes_print(FILE *out)
{
    for (size_t i = 0; i < N_ROUTES; i++)
        fprintf(out, "%-7s %-32s %s\n", table[i].method, table[i].pattern, table[i].label);
}
