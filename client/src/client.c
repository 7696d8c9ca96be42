/* client.c - the blocking client: one reused libcurl easy handle (one
 * keep-alive connection) and one call per endpoint of the HTTP API. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "client_internal.h"

struct ns_client_s {
    CURL *easy;
    ns_client_options_t opts;
    char *base; /* owned; opts.url points here */
    long last_status;
};

int ns_client_create(ns_client_t **dst, const ns_client_options_t *opts, ns_error_detail_t *err)
{
    ns_client_t *c;
    *dst = NULL;
    if ((c = calloc(1, sizeof(*c))) == NULL)
        return ns_error_set(err, NS_ENOMEM, "", "out of memory");
    int rc = ns__client_setup(&c->opts, &c->base, opts, err);
    if (rc != 0) {
        free(c);
        return rc;
    }
    if ((c->easy = curl_easy_init()) == NULL) {
        free(c->base);
        free(c);
        return ns_error_set(err, NS_ENOMEM, "", "out of memory");
    }
    *dst = c;
    return 0;
}

void ns_client_free(ns_client_t *client)
{
    if (client == NULL)
        return;
    curl_easy_cleanup(client->easy);
    free(client->base);
    free(client);
}

long ns_client_last_status(const ns_client_t *client)
{
    return client->last_status;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
    while (ms > 0 && nanosleep(&ts, &ts) == -1 && errno == EINTR)
        ;
}

/* Runs 'rq' to its outcome on the client's handle, retrying where allowed.
 * Always closes the request except its answer, which the caller reads and
 * frees. */
static int perform(ns_client_t *c, ns__request_t *rq, ns_error_detail_t *err)
{
    for (;;) {
        ns_error_detail_t attempt = {0};
        int retry, rc;
        /* curl_easy_reset keeps the live connection, so the next request
         * goes out on the same keep-alive socket. */
        curl_easy_reset(c->easy);
        if ((rc = ns__request_setup(rq, c->easy, &c->opts)))
            return ns_error_set(err, rc, "", "out of memory");
        CURLcode cc = curl_easy_perform(c->easy);
        rc = ns__request_outcome(rq, c->easy, cc, c->opts.retries, &retry, &attempt);
        c->last_status = rq->status;
        if (!retry) {
            if (rc && err && err->code == 0)
                *err = attempt;
            return rc;
        }
        sleep_ms(c->opts.retry_delay_ms);
    }
}

/* One exchange; on success the answer is appended to 'dst' (may be NULL). */
static int exchange(ns_client_t *c, const char *method, const char *path, const char *query,
                    char *body, size_t body_len, const char *content_type, const char *accept,
                    ns__retry_t retry, ns_buf_t *dst, ns__request_t *keep, ns_error_detail_t *err)
{
    ns__request_t rq;
    int rc = ns__request_init(&rq, method, c->base, path, query, body, body_len, retry);
    if (rc) {
        free(body);
        return ns_error_set(err, rc, "", "out of memory");
    }
    rq.content_type = content_type;
    rq.accept = accept;
    rc = perform(c, &rq, err);
    if (rc == 0 && dst && rq.answer.len)
        rc = ns_buf_append(dst, rq.answer.data, rq.answer.len);
    if (rc == 0 && keep) {
        /* The caller decodes the answer itself. */
        *keep = rq;
        return 0;
    }
    ns__request_close(&rq);
    if (rc && err && err->code == 0)
        ns_error_set(err, rc, "", "%s", ns_strerror(rc));
    return rc;
}

int ns_client_runs_list(ns_client_t *client, ns_buf_t *dst, ns_error_detail_t *err)
{
    return exchange(client, "GET", "/v1/runs", NULL, NULL, 0, NULL, "application/json",
                    NS__RETRY_SAFE, dst, NULL, err);
}

int ns_client_run_put(ns_client_t *client, const char *run, const ns_run_config_t *cfg,
                      int *created, ns_buf_t *dst, ns_error_detail_t *err)
{
    char path[NS_NAME_MAX + 64];
    ns_buf_t body;
    int rc;
    if ((rc = ns__path_run(path, sizeof(path), run, "", err)))
        return rc;
    ns_run_config_t none;
    if (cfg == NULL) {
        ns_run_config_defaults(&none); /* every has_* 0: an empty object */
        cfg = &none;
    }
    ns_buf_init(&body, 0);
    if ((rc = ns_run_config_encode_json(&body, cfg, NS_RUN_CONFIG_SET)))
        return ns_error_set(err, rc, "", "out of memory");
    size_t len;
    char *text = ns_buf_take(&body, &len);
    rc = exchange(client, "PUT", path, NULL, text, len, "application/json", NULL, NS__RETRY_UNSENT,
                  dst, NULL, err);
    if (rc == 0 && created)
        *created = client->last_status == 201;
    return rc;
}

int ns_client_run_get(ns_client_t *client, const char *run, ns_buf_t *dst, ns_error_detail_t *err)
{
    char path[NS_NAME_MAX + 64];
    int rc;
    if ((rc = ns__path_run(path, sizeof(path), run, "", err)))
        return rc;
    return exchange(client, "GET", path, NULL, NULL, 0, NULL, "application/json", NS__RETRY_SAFE,
                    dst, NULL, err);
}

int ns_client_run_delete(ns_client_t *client, const char *run, ns_error_detail_t *err)
{
    char path[NS_NAME_MAX + 64];
    int rc;
    if ((rc = ns__path_run(path, sizeof(path), run, "", err)))
        return rc;
    return exchange(client, "DELETE", path, NULL, NULL, 0, NULL, NULL, NS__RETRY_UNSENT, NULL, NULL,
                    err);
}

static const char *media_type(ns_format_t format)
{
    return format == NS_FORMAT_SAFETENSORS ? "application/safetensors" : "application/json";
}

int ns_client_report_raw(ns_client_t *client, const char *run, const void *src, size_t src_len,
                         ns_format_t format, ns_error_detail_t *err)
{
    char path[NS_NAME_MAX + 64];
    int rc;
    if ((rc = ns__path_run(path, sizeof(path), run, "/batches", err)))
        return rc;
    char *body = malloc(src_len ? src_len : 1);
    if (body == NULL)
        return ns_error_set(err, NS_ENOMEM, "", "out of memory");
    memcpy(body, src, src_len);
    return exchange(client, "POST", path, NULL, body, src_len, media_type(format),
                    "application/json", NS__RETRY_REPORT, NULL, NULL, err);
}

int ns_client_report(ns_client_t *client, const char *run, const ns_report_t *report,
                     ns_format_t format, ns_error_detail_t *err)
{
    char path[NS_NAME_MAX + 64];
    ns_buf_t body;
    size_t len;
    int rc;
    if ((rc = ns__path_run(path, sizeof(path), run, "/batches", err)))
        return rc;
    ns_buf_init(&body, 0);
    if ((rc = ns_report_encode(&body, format, report, err)))
        return rc;
    char *text = ns_buf_take(&body, &len);
    return exchange(client, "POST", path, NULL, text, len, media_type(format), "application/json",
                    NS__RETRY_REPORT, NULL, NULL, err);
}

/* Decode a /sync or /stats answer by its Content-Type. */
static int decode_answer(ns__request_t *rq, ns_result_t **dst, ns_error_detail_t *err)
{
    ns_format_t f = strcmp(rq->answer_type, "application/safetensors") == 0 ? NS_FORMAT_SAFETENSORS
                                                                            : NS_FORMAT_JSON;
    int rc = ns_result_decode(dst, f, rq->answer.data ? rq->answer.data : "", rq->answer.len, err);
    ns__request_close(rq);
    return rc;
}

int ns_client_sync(ns_client_t *client, const char *run, const ns_report_t *report,
                   ns_format_t format, ns_result_t **dst, ns_error_detail_t *err)
{
    char path[NS_NAME_MAX + 64];
    ns_buf_t body;
    ns__request_t rq;
    size_t len;
    int rc;
    *dst = NULL;
    if ((rc = ns__path_run(path, sizeof(path), run, "/sync", err)))
        return rc;
    ns_buf_init(&body, 0);
    if ((rc = ns_report_encode(&body, format, report, err)))
        return rc;
    char *text = ns_buf_take(&body, &len);
    /* The answer comes back as safetensors: exact float32 bits, no parsing
     * of decimal numbers. */
    if ((rc = exchange(client, "POST", path, NULL, text, len, media_type(format),
                       "application/safetensors", NS__RETRY_UNSENT, NULL, &rq, err)))
        return rc;
    return decode_answer(&rq, dst, err);
}

int ns_client_stats_fetch(ns_client_t *client, const char *run, const ns_stats_query_t *query,
                          ns_format_t format, ns_buf_t *dst, ns_error_detail_t *err)
{
    char path[NS_NAME_MAX + 64];
    ns_buf_t q;
    int rc;
    if ((rc = ns__path_run(path, sizeof(path), run, "/stats", err)))
        return rc;
    ns_buf_init(&q, 0);
    if ((rc = ns__stats_query(&q, query, format)))
        return ns_error_set(err, rc, "", "out of memory");
    rc = exchange(client, "GET", path, q.data, NULL, 0, NULL, media_type(format), NS__RETRY_SAFE,
                  dst, NULL, err);
    ns_buf_free(&q);
    return rc;
}

int ns_client_stats(ns_client_t *client, const char *run, const ns_stats_query_t *query,
                    ns_result_t **dst, ns_error_detail_t *err)
{
    char path[NS_NAME_MAX + 64];
    ns__request_t rq;
    ns_buf_t q;
    int rc;
    *dst = NULL;
    if ((rc = ns__path_run(path, sizeof(path), run, "/stats", err)))
        return rc;
    ns_buf_init(&q, 0);
    if ((rc = ns__stats_query(&q, query, NS_FORMAT_SAFETENSORS)))
        return ns_error_set(err, rc, "", "out of memory");
    rc = exchange(client, "GET", path, q.data, NULL, 0, NULL, "application/safetensors",
                  NS__RETRY_SAFE, NULL, &rq, err);
    ns_buf_free(&q);
    if (rc)
        return rc;
    return decode_answer(&rq, dst, err);
}

/* Write src to 'path' through "<path>.tmp" and a rename, so a reader never
 * sees half a file. */
static int write_file(const char *path, const char *src, size_t src_len, ns_error_detail_t *err)
{
    size_t n = strlen(path) + 5;
    char *tmp = malloc(n);
    if (tmp == NULL)
        return ns_error_set(err, NS_ENOMEM, "", "out of memory");
    snprintf(tmp, n, "%s.tmp", path);
    FILE *f = fopen(tmp, "wb");
    int ok = f != NULL && fwrite(src, 1, src_len, f) == src_len;
    if (f != NULL && fclose(f) != 0)
        ok = 0;
    if (ok && rename(tmp, path) != 0)
        ok = 0;
    int rc = 0;
    if (!ok) {
        rc = ns_error_set(err, NS_EIO, "", "%s: %s", path, strerror(errno));
        remove(tmp);
    }
    free(tmp);
    return rc;
}

static int read_file(const char *path, ns_buf_t *dst, ns_error_detail_t *err)
{
    char chunk[65536];
    size_t n;
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return ns_error_set(err, NS_EIO, "", "%s: %s", path, strerror(errno));
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
        if (ns_buf_append(dst, chunk, n)) {
            fclose(f);
            return ns_error_set(err, NS_ENOMEM, "", "out of memory");
        }
    int bad = ferror(f);
    fclose(f);
    if (bad)
        return ns_error_set(err, NS_EIO, "", "%s: read error", path);
    return 0;
}

int ns_client_stats_save(ns_client_t *client, const char *run, const ns_stats_query_t *query,
                         ns_format_t format, const char *path, ns_error_detail_t *err)
{
    ns_buf_t body;
    int rc;
    ns_buf_init(&body, 0);
    if ((rc = ns_client_stats_fetch(client, run, query, format, &body, err)) == 0)
        rc = write_file(path, body.data ? body.data : "", body.len, err);
    ns_buf_free(&body);
    return rc;
}

int ns_client_precise_reset(ns_client_t *client, const char *run, const char *domain,
                            int64_t *generation, ns_error_detail_t *err)
{
    char path[NS_NAME_MAX + 64];
    ns_buf_t body, answer;
    size_t len;
    int rc;
    if ((rc = ns__path_run(path, sizeof(path), run, "/precise/reset", err)))
        return rc;
    if (domain && strcmp(domain, "*") != 0 && !ns_name_valid(domain))
        return ns_error_set(err, NS_EINVAL, "domain", "must match [A-Za-z0-9_.:-]{1,128} or *");
    ns_buf_init(&body, 0);
    rc = domain ? ns_buf_printf(&body, "{\"domain\":\"%s\"}", domain) : ns_buf_printf(&body, "{}");
    if (rc)
        return ns_error_set(err, rc, "", "out of memory");
    char *text = ns_buf_take(&body, &len);
    ns_buf_init(&answer, 0);
    rc = exchange(client, "POST", path, NULL, text, len, "application/json", "application/json",
                  NS__RETRY_UNSENT, &answer, NULL, err);
    if (rc == 0 && generation) {
        /* {"run": ..., "generation": N, ...} */
        const char *g = answer.data ? strstr(answer.data, "\"generation\"") : NULL;
        if (g == NULL || (g = strchr(g, ':')) == NULL)
            rc = ns_error_set(err, NS_EBADRESPONSE, "generation", "missing from the answer");
        else
            *generation = strtoll(g + 1, NULL, 10);
    }
    ns_buf_free(&answer);
    return rc;
}

/* GET of a run's JSON view at 'suffix' with the query in 'q' (freed here). */
static int get_view(ns_client_t *client, const char *run, const char *suffix, ns_buf_t *q, int qrc,
                    ns_buf_t *dst, ns_error_detail_t *err)
{
    char path[NS_NAME_MAX + 64];
    int rc = ns__path_run(path, sizeof(path), run, suffix, err);
    if (rc == 0 && qrc != 0)
        rc = ns_error_set(err, qrc, "", "out of memory");
    if (rc == 0)
        rc = exchange(client, "GET", path, q->data, NULL, 0, NULL, "application/json",
                      NS__RETRY_SAFE, dst, NULL, err);
    ns_buf_free(q);
    return rc;
}

int ns_client_drift(ns_client_t *client, const char *run, const char *domain, ns_buf_t *dst,
                    ns_error_detail_t *err)
{
    ns_buf_t q;
    ns_buf_init(&q, 0);
    int qrc = ns__drift_query(&q, domain);
    return get_view(client, run, "/drift", &q, qrc, dst, err);
}

int ns_client_history(ns_client_t *client, const char *run, const char *layer, const char *domain,
                      long channel, ns_buf_t *dst, ns_error_detail_t *err)
{
    if (layer == NULL)
        return ns_error_set(err, NS_EINVAL, "layer", "required");
    ns_buf_t q;
    ns_buf_init(&q, 0);
    int qrc = ns__history_query(&q, layer, domain, channel);
    return get_view(client, run, "/history", &q, qrc, dst, err);
}

int ns_client_checkpoint_get(ns_client_t *client, const char *run, ns_buf_t *dst,
                             ns_error_detail_t *err)
{
    char path[NS_NAME_MAX + 64];
    int rc;
    if ((rc = ns__path_run(path, sizeof(path), run, "/checkpoint", err)))
        return rc;
    return exchange(client, "GET", path, NULL, NULL, 0, NULL, "application/json", NS__RETRY_SAFE,
                    dst, NULL, err);
}

int ns_client_checkpoint_put(ns_client_t *client, const char *run, const void *src, size_t src_len,
                             ns_error_detail_t *err)
{
    char path[NS_NAME_MAX + 64];
    int rc;
    if ((rc = ns__path_run(path, sizeof(path), run, "/checkpoint", err)))
        return rc;
    char *body = malloc(src_len ? src_len : 1);
    if (body == NULL)
        return ns_error_set(err, NS_ENOMEM, "", "out of memory");
    memcpy(body, src, src_len);
    return exchange(client, "PUT", path, NULL, body, src_len, "application/json",
                    "application/json", NS__RETRY_UNSENT, NULL, NULL, err);
}

int ns_client_checkpoint_save(ns_client_t *client, const char *run, const char *path,
                              ns_error_detail_t *err)
{
    ns_buf_t body;
    int rc;
    ns_buf_init(&body, 0);
    if ((rc = ns_client_checkpoint_get(client, run, &body, err)) == 0)
        rc = write_file(path, body.data ? body.data : "", body.len, err);
    ns_buf_free(&body);
    return rc;
}

int ns_client_checkpoint_restore(ns_client_t *client, const char *run, const char *path,
                                 ns_error_detail_t *err)
{
    ns_buf_t body;
    int rc;
    ns_buf_init(&body, 0);
    if ((rc = read_file(path, &body, err)) == 0)
        rc = ns_client_checkpoint_put(client, run, body.data ? body.data : "", body.len, err);
    ns_buf_free(&body);
    return rc;
}

int ns_client_health(ns_client_t *client, int ready, ns_buf_t *dst, ns_error_detail_t *err)
{
    return exchange(client, "GET", ready ? "/readyz" : "/livez", NULL, NULL, 0, NULL, NULL,
                    NS__RETRY_SAFE, dst, NULL, err);
}

int ns_client_version(ns_client_t *client, ns_buf_t *dst, ns_error_detail_t *err)
{
    return exchange(client, "GET", "/v1/version", NULL, NULL, 0, NULL, "application/json",
                    NS__RETRY_SAFE, dst, NULL, err);
}

int ns_client_metrics(ns_client_t *client, ns_buf_t *dst, ns_error_detail_t *err)
{
    return exchange(client, "GET", "/metrics", NULL, NULL, 0, NULL, NULL, NS__RETRY_SAFE, dst, NULL,
                    err);
}
