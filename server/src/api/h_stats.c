/* h_stats.c - GET /v1/runs/{run}/stats: population statistics as JSON or safetensors. */
#include <stdlib.h>
#include <string.h>

#include "base/size_limits.h"
#include "http/http.h"
#include "registry/registry.h"

static int name_cmp(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* A layer named twice would be answered twice. @return 0 or NS_EINVAL naming it. */
static int check_unique(const char (*names)[NS_NAME_MAX + 1], size_t n, ns_error_detail_t *err)
{
    const char **sorted = malloc(n * sizeof(*sorted));
    if (sorted == NULL)
        return ns_error_set(err, NS_ENOMEM, "layers", "out of memory");
    for (size_t i = 0; i < n; i++)
        sorted[i] = names[i];
    qsort(sorted, n, sizeof(*sorted), name_cmp);
    int rc = 0;
    for (size_t i = 1; i < n && rc == 0; i++)
        if (strcmp(sorted[i - 1], sorted[i]) == 0)
            rc = ns_error_set(err, NS_EINVAL, "layers", "layer '%s' named more than once",
                              sorted[i]);
    free(sorted);
    return rc;
}

/* Split "l1,l2" into distinct names. @return 0 or NS_EINVAL (err set); *dst malloc'd. */
static int parse_layers(const char *src, char (**dst)[NS_NAME_MAX + 1], size_t *n,
                        ns_error_detail_t *err)
{
    size_t count = 1;
    for (const char *p = src; *p; p++)
        count += *p == ',';
    char(*names)[NS_NAME_MAX + 1] = calloc(count, sizeof(*names));
    if (names == NULL)
        return ns_error_set(err, NS_ENOMEM, "layers", "out of memory");
    size_t i = 0;
    for (const char *p = src;; i++) {
        size_t len = strcspn(p, ",");
        if (len == 0 || len > NS_NAME_MAX) {
            free(names);
            return ns_error_set(err, NS_EINVAL, "layers",
                                "expected comma-separated layer names, got '%.200s'", src);
        }
        memcpy(names[i], p, len);
        names[i][len] = '\0';
        if (!ns_name_valid(names[i])) {
            free(names);
            return ns_error_set(err, NS_EINVAL, "layers", "invalid layer name '%.130s'", p);
        }
        if (p[len] == '\0')
            break;
        p += len + 1;
    }
    int rc = check_unique((const char(*)[NS_NAME_MAX + 1]) names, i + 1, err);
    if (rc != 0) {
        free(names);
        return rc;
    }
    *dst = names;
    *n = i + 1;
    return 0;
}

/* Fill 'q' and 'format' from the query string (its parameters checked
 * against the route's list in routes.c) and Accept. @return 0 or NS_EINVAL. */
static int parse_query(nsd_request_t *req, nsd_stats_query_t *q, char (**layers)[NS_NAME_MAX + 1],
                       ns_format_t *format, ns_error_detail_t *err)
{
    const char *v = nsd_request_query(req, "source");
    if (v == NULL || strcmp(v, "ema") == 0)
        q->source = NSD_SOURCE_EMA;
    else if (strcmp(v, "precise") == 0)
        q->source = NSD_SOURCE_PRECISE;
    else if (strcmp(v, "last") == 0)
        q->source = NSD_SOURCE_LAST;
    else
        return ns_error_set(err, NS_EINVAL, "source", "expected ema, precise or last, got '%.100s'",
                            v);

    const char *domain = nsd_request_query(req, "domain");
    const char *mixture = nsd_request_query(req, "mixture");
    if (domain != NULL && mixture != NULL)
        return ns_error_set(err, NS_EINVAL, "mixture", "give either domain or mixture, not both");
    if (domain != NULL) {
        if (strcmp(domain, "*") != 0 && !ns_name_valid(domain))
            return ns_error_set(err, NS_EINVAL, "domain",
                                "expected a domain name or *, got '%.130s'", domain);
        strcpy(q->domain, domain);
    }
    if (mixture != NULL &&
        ns_mixture_parse(q->mixture, NSD_MIXTURE_MAX, &q->n_mixture, mixture, err) != 0)
        return NS_EINVAL;

    v = nsd_request_query(req, "layers");
    if (v != NULL) {
        if (parse_layers(v, layers, &q->n_layers, err) != 0)
            return err->code;
        const char(*names)[NS_NAME_MAX + 1] = *layers;
        q->layers = names;
    }
    v = nsd_request_query(req, "variance");
    if (v != NULL) {
        if (strcmp(v, "biased") == 0)
            q->biased = 1;
        else if (strcmp(v, "unbiased") != 0)
            return ns_error_set(err, NS_EINVAL, "variance",
                                "expected biased or unbiased, got '%.100s'", v);
    }
    v = nsd_request_query(req, "format");
    const char *accept = nsd_request_header(req, "Accept");
    if (v == NULL)
        *format = accept != NULL && strstr(accept, "application/safetensors") != NULL
                      ? NS_FORMAT_SAFETENSORS
                      : NS_FORMAT_JSON;
    else if (strcmp(v, "json") == 0)
        *format = NS_FORMAT_JSON;
    else if (strcmp(v, "safetensors") == 0)
        *format = NS_FORMAT_SAFETENSORS;
    else
        return ns_error_set(err, NS_EINVAL, "format", "expected json or safetensors, got '%.100s'",
                            v);
    return 0;
}

void nsd_h_stats(nsd_request_t *req)
{
    ns_error_detail_t err = {0};
    nsd_stats_query_t *q = calloc(1, sizeof(*q));
    char(*layers)[NS_NAME_MAX + 1] = NULL;
    nsd_stats_t *stats = NULL;
    ns_format_t format = NS_FORMAT_JSON;
    ns_buf_t buf;
    ns_buf_init(&buf, NSD_ANSWER_MAX);
    int rc = q == NULL ? NS_ENOMEM : parse_query(req, q, &layers, &format, &err);
    rc = rc ? rc : nsd_registry_stats(req->server->registry, req->run, q, &stats, &err);
    rc = rc ? rc
            : ns_stats_encode(&buf, format, stats->meta, stats->n_meta, stats->layers,
                              stats->n_layers);
    if (rc != 0) {
        nsd_respond_detail(req, rc, &err);
    } else {
        nsd_respond_encoded(req, format, &buf);
    }
    ns_buf_free(&buf);
    nsd_stats_free(stats);
    free(layers);
    free(q);
}
