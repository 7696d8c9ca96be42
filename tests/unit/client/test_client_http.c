/* test_client_http.c - the blocking client against a canned-reply server:
 * the exact requests it sends (method, target, headers, body bytes) for
 * every endpoint, how answers map to results and errors (server errors,
 * non-API answers, refused connections, timeouts), keep-alive, and which
 * failures are retried. Expected bodies are written out by hand here. */
#include <normstat/client.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fake_http.h"
#include "harness.h"

static fake_http_t *srv;
static ns_client_t *cli;

/* A client of 'srv' with 'retries' and a 'timeout_ms' bound. */
static ns_client_t *client_of(const char *url, unsigned retries, long timeout_ms)
{
    ns_client_options_t o;
    ns_client_t *c = NULL;
    ns_client_options_default(&o);
    o.url = url;
    o.retries = retries;
    o.timeout_ms = timeout_ms;
    o.retry_delay_ms = 1;
    ck_assert_int_eq(ns_client_create(&c, &o, NULL), 0);
    return c;
}

static void setup(void)
{
    srv = fake_http_start();
    ck_assert_ptr_nonnull(srv);
    cli = client_of(fake_http_url(srv), 2, 5000);
}

static void teardown(void)
{
    ns_client_free(cli);
    fake_http_free(srv);
}

static void reply(int status, const char *type, const char *body)
{
    fake_reply_t r = {.mode = FAKE_REPLY, .status = status, .content_type = type, .body = body};
    fake_http_push(srv, &r);
}

static void reply_bytes(int status, const char *type, const void *body, size_t len)
{
    fake_reply_t r = {
        .mode = FAKE_REPLY, .status = status, .content_type = type, .body = body, .body_len = len};
    fake_http_push(srv, &r);
}

static void reply_mode(fake_mode_t mode)
{
    fake_reply_t r = {.mode = mode};
    fake_http_push(srv, &r);
}

/* Request i was 'method target' with 'body' (NULL: empty) and, when given,
 * this Content-Type and Accept. */
static const fake_request_t *expect_request(size_t i, const char *method, const char *target,
                                            const char *ctype, const char *accept, const void *body,
                                            size_t body_len)
{
    const fake_request_t *rq = fake_http_request(srv, i);
    char v[256];
    ck_assert_ptr_nonnull(rq);
    ck_assert_str_eq(rq->method, method);
    ck_assert_str_eq(rq->target, target);
    if (ctype)
        ck_assert_str_eq(fake_request_header(rq, "Content-Type", v, sizeof(v)), ctype);
    if (accept)
        ck_assert_str_eq(fake_request_header(rq, "Accept", v, sizeof(v)), accept);
    /* No "Expect: 100-continue" round trip before a body. */
    ck_assert_ptr_null(fake_request_header(rq, "Expect", v, sizeof(v)));
    if (body == NULL) {
        ck_assert_uint_eq(rq->body_len, 0);
    } else {
        size_t n = body_len ? body_len : strlen(body);
        ck_assert_uint_eq(rq->body_len, n);
        ck_assert(memcmp(rq->body, body, n) == 0);
    }
    return rq;
}

/* A safetensors file from a header text and a data area, written the way
 * the format's specification says (independent of libnsproto). */
static unsigned char *st_build(const char *header, const void *data, size_t data_len, size_t *len)
{
    size_t h = strlen(header), padded = (h + 7) / 8 * 8;
    unsigned char *b = malloc(8 + padded + data_len);
    for (int i = 0; i < 8; i++)
        b[i] = (unsigned char)((uint64_t)padded >> (8 * i));
    memcpy(b + 8, header, h);
    memset(b + 8 + h, ' ', padded - h);
    memcpy(b + 8 + padded, data, data_len);
    *len = 8 + padded + data_len;
    return b;
}

/* ---------------------------------------------------------------- runs */

START_TEST(t_run_put)
{
    ns_run_config_t cfg;
    ns_buf_t out = {0};
    int created = -1;
    ns_run_config_defaults(&cfg);
    cfg.has_world_size = cfg.has_momentum = cfg.has_sync_timeout_ms = 1;
    cfg.has_on_timeout = cfg.has_ema_debias = 1;
    cfg.world_size = 4;
    cfg.momentum = NS_MOMENTUM_CUMULATIVE;
    cfg.sync_timeout_ms = 500;
    cfg.on_timeout_drop = 1;
    cfg.ema_debias = 1;
    reply(201, "application/json", "{\"run\":\"r1\"}");
    ck_assert_int_eq(ns_client_run_put(cli, "r1", &cfg, &created, &out, NULL), 0);
    ck_assert_int_eq(created, 1);
    ck_assert_str_eq(out.data, "{\"run\":\"r1\"}");
    expect_request(0, "PUT", "/v1/runs/r1", "application/json", NULL,
                   "{\"world_size\":4,\"momentum\":null,\"sync_timeout_ms\":500,"
                   "\"on_timeout\":\"drop\",\"ema_debias\":true}",
                   0);

    ns_run_config_defaults(&cfg);
    cfg.has_momentum = 1;
    cfg.momentum = 0.25;
    reply(200, "application/json", "{\"run\":\"r1\"}");
    ck_assert_int_eq(ns_client_run_put(cli, "r1", &cfg, &created, NULL, NULL), 0);
    ck_assert_int_eq(created, 0);
    expect_request(1, "PUT", "/v1/runs/r1", "application/json", NULL, "{\"momentum\":0.25}", 0);

    reply(200, "application/json", "{}");
    ck_assert_int_eq(ns_client_run_put(cli, "r1", NULL, NULL, NULL, NULL), 0);
    expect_request(2, "PUT", "/v1/runs/r1", "application/json", NULL, "{}", 0);
    ns_buf_free(&out);
}
END_TEST

START_TEST(t_run_get_list_delete)
{
    ns_buf_t out = {0};
    reply(200, "application/json", "{\"runs\":[]}");
    ck_assert_int_eq(ns_client_runs_list(cli, &out, NULL), 0);
    ck_assert_str_eq(out.data, "{\"runs\":[]}");
    expect_request(0, "GET", "/v1/runs", NULL, "application/json", NULL, 0);
    ns_buf_free(&out);

    reply(200, "application/json", "{\"run\":\"a.b:c-d_e\"}");
    ck_assert_int_eq(ns_client_run_get(cli, "a.b:c-d_e", &out, NULL), 0);
    expect_request(1, "GET", "/v1/runs/a.b:c-d_e", NULL, NULL, NULL, 0);
    ns_buf_free(&out);

    reply(204, NULL, NULL);
    ck_assert_int_eq(ns_client_run_delete(cli, "r1", NULL), 0);
    ck_assert_int_eq(ns_client_last_status(cli), 204);
    expect_request(2, "DELETE", "/v1/runs/r1", NULL, NULL, NULL, 0);
}
END_TEST

START_TEST(t_invalid_names_send_nothing)
{
    ns_error_detail_t err = {0};
    ck_assert_int_eq(ns_client_run_get(cli, "a/b", NULL, &err), NS_EINVAL);
    ck_assert_str_eq(err.field, "run");
    ck_assert_int_eq(ns_client_run_delete(cli, "", NULL), NS_EINVAL);
    ck_assert_int_eq(ns_client_precise_reset(cli, "r", "x y", NULL, NULL), NS_EINVAL);
    ck_assert_uint_eq(fake_http_count(srv), 0);

    ns_client_t *c = NULL;
    ns_client_options_t o;
    ns_client_options_default(&o);
    o.url = "ftp://127.0.0.1";
    memset(&err, 0, sizeof(err));
    ck_assert_int_eq(ns_client_create(&c, &o, &err), NS_EINVAL);
    ck_assert_ptr_null(c);
    ck_assert_str_eq(err.field, "url");
}
END_TEST

/* ---------------------------------------------------------------- reports */

static float mean_a[2] = {0.5f, -1.25f}, var_a[2] = {2.0f, 0.125f};

static void two_layer_report(ns_report_t *r, ns_layer_report_t *layers)
{
    memset(r, 0, sizeof(*r));
    memset(layers, 0, 2 * sizeof(*layers));
    snprintf(layers[0].name, sizeof(layers[0].name), "a.bn");
    layers[0].count = 3;
    layers[0].channels = 2;
    layers[0].mean = mean_a;
    layers[0].var = var_a;
    snprintf(layers[1].name, sizeof(layers[1].name), "b.bn");
    layers[1].count = 0;
    r->step = 7;
    r->worker = 1;
    snprintf(r->domain, sizeof(r->domain), "photo");
    r->update = NS_UPDATE_EMA;
    r->world_size = -1;
    r->n_layers = 2;
    r->layers = layers;
}

START_TEST(t_report_json)
{
    ns_report_t r;
    ns_layer_report_t layers[2];
    two_layer_report(&r, layers);
    reply(202, "application/json", "{\"accepted\":true,\"step\":7,\"worker\":1}");
    ck_assert_int_eq(ns_client_report(cli, "r1", &r, NS_FORMAT_JSON, NULL), 0);
    expect_request(0, "POST", "/v1/runs/r1/batches", "application/json", "application/json",
                   "{\"step\":7,\"worker\":1,\"domain\":\"photo\",\"unbiased\":false,"
                   "\"update\":[\"ema\"],\"layers\":{\"a.bn\":{\"count\":3,\"mean\":[0.5,-1.25],"
                   "\"var\":[2,0.125]},\"b.bn\":{\"count\":0}}}",
                   0);

    /* world_size, scope and unbiased are sent when set. */
    r.world_size = 4;
    r.scope = NS_SCOPE_DOMAIN;
    r.unbiased = 1;
    r.update = NS_UPDATE_EMA | NS_UPDATE_PRECISE;
    r.domain[0] = '\0';
    r.n_layers = 1;
    reply(202, "application/json", "{}");
    ck_assert_int_eq(ns_client_report(cli, "r1", &r, NS_FORMAT_JSON, NULL), 0);
    expect_request(1, "POST", "/v1/runs/r1/batches", "application/json", NULL,
                   "{\"step\":7,\"worker\":1,\"unbiased\":true,\"update\":[\"ema\",\"precise\"],"
                   "\"scope\":\"domain\",\"world_size\":4,\"layers\":{\"a.bn\":{\"count\":3,"
                   "\"mean\":[0.5,-1.25],\"var\":[2,0.125]}}}",
                   0);
}
END_TEST

START_TEST(t_report_safetensors)
{
    ns_report_t r;
    ns_layer_report_t layers[2];
    two_layer_report(&r, layers);
    r.n_layers = 1;
    r.domain[0] = '\0';
    /* little-endian float32 bits of 0.5, -1.25, 2, 0.125 and int64 3 */
    const unsigned char data[] = {0, 0, 0, 0x3f, 0, 0, 0xa0, 0xbf, 0, 0, 0, 0x40,
                                  0, 0, 0, 0x3e, 3, 0, 0,    0,    0, 0, 0, 0};
    size_t len;
    unsigned char *want =
        st_build("{\"__metadata__\":{\"step\":\"7\",\"worker\":\"1\",\"unbiased\":\"false\","
                 "\"update\":\"ema\"},"
                 "\"a.bn.mean\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                 "\"a.bn.var\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]},"
                 "\"a.bn.count\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[16,24]}}",
                 data, sizeof(data), &len);
    reply(202, "application/json", "{}");
    ck_assert_int_eq(ns_client_report(cli, "r1", &r, NS_FORMAT_SAFETENSORS, NULL), 0);
    expect_request(0, "POST", "/v1/runs/r1/batches", "application/safetensors", NULL, want, len);
    free(want);

    /* A raw body goes out byte for byte with the format's media type. */
    reply(202, "application/json", "{}");
    ck_assert_int_eq(ns_client_report_raw(cli, "r2", "\x01\x02", 2, NS_FORMAT_SAFETENSORS, NULL),
                     0);
    expect_request(1, "POST", "/v1/runs/r2/batches", "application/safetensors", NULL, "\x01\x02",
                   2);
}
END_TEST

START_TEST(t_report_nonfinite_json)
{
    ns_report_t r;
    ns_layer_report_t layers[2];
    float bad[2] = {1.0f, 0.0f};
    ns_error_detail_t err = {0};
    two_layer_report(&r, layers);
    bad[1] = bad[1] / bad[1]; /* NaN */
    layers[0].var = bad;
    ck_assert_int_eq(ns_client_report(cli, "r1", &r, NS_FORMAT_JSON, &err), NS_EVALUE);
    ck_assert_str_eq(err.field, "layers.a.bn.var");
    ck_assert_uint_eq(fake_http_count(srv), 0);
}
END_TEST

/* ---------------------------------------------------------------- statistics */

/* running_mean [1.5, -2], running_var [0.25, 4] of layer "a.bn"; 3 batches,
 * 96 samples, step 5; top-level step "5". */
static unsigned char *precise_answer(size_t *len)
{
    const unsigned char data[] = {0,  0, 0xc0, 0x3f, 0, 0, 0,    0xc0, /* 1.5f, -2.0f */
                                  0,  0, 0x80, 0x3e, 0, 0, 0x80, 0x40, /* 0.25f, 4.0f */
                                  3,  0, 0,    0,    0, 0, 0,    0,    /* 3 */
                                  96, 0, 0,    0,    0, 0, 0,    0,    /* 96 */
                                  5,  0, 0,    0,    0, 0, 0,    0};   /* 5 */
    return st_build(
        "{\"__metadata__\":{\"run\":\"r1\",\"source\":\"precise\",\"step\":\"5\"},"
        "\"a.bn.running_mean\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
        "\"a.bn.running_var\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]},"
        "\"a.bn.num_batches\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[16,24]},"
        "\"a.bn.num_samples\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[24,32]},"
        "\"a.bn.step\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[32,40]}}",
        data, sizeof(data), len);
}

START_TEST(t_stats_query_and_result)
{
    size_t len;
    unsigned char *answer = precise_answer(&len);
    ns_stats_query_t q = {
        .source = "precise", .domain = "photo", .layers = "a.bn,b.bn", .variance_biased = 1};
    ns_result_t *res = NULL;
    reply_bytes(200, "application/safetensors", answer, len);
    ck_assert_int_eq(ns_client_stats(cli, "r1", &q, &res, NULL), 0);
    expect_request(0, "GET",
                   "/v1/runs/r1/stats?source=precise&domain=photo&layers=a.bn,b.bn"
                   "&variance=biased&format=safetensors",
                   NULL, "application/safetensors", NULL, 0);
    ck_assert_uint_eq(ns_result_count(res), 1);
    ck_assert_int_eq(ns_result_step(res), 5);
    const ns_result_layer_t *l = ns_result_find(res, "a.bn");
    ck_assert_ptr_nonnull(l);
    ck_assert_uint_eq(l->channels, 2);
    ck_assert(l->mean[0] == 1.5f && l->mean[1] == -2.0f);
    ck_assert(l->var[0] == 0.25f && l->var[1] == 4.0f);
    ck_assert_int_eq(l->num_batches, 3);
    ck_assert_int_eq(l->count, 96);
    ck_assert_int_eq(l->step, 5);

    float m[2], v[2];
    double md[3], vd[3];
    ck_assert_int_eq(ns_result_copy(res, "a.bn", m, v, 2), 2);
    ck_assert(m[0] == 1.5f && m[1] == -2.0f && v[0] == 0.25f && v[1] == 4.0f);
    ck_assert_int_eq(ns_result_copy_f64(res, "a.bn", md, vd, 3), 2);
    ck_assert(md[0] == 1.5 && md[1] == -2.0 && vd[0] == 0.25 && vd[1] == 4.0);
    ck_assert_int_eq(ns_result_copy(res, "a.bn", m, v, 1), NS_EINVAL);
    ck_assert_int_eq(ns_result_copy(res, "zz", m, v, 2), NS_ENOTFOUND);
    ns_result_free(res);

    /* Defaults leave the query to the server; values are escaped where needed. */
    ns_buf_t out = {0};
    reply(200, "application/json", "{}");
    ck_assert_int_eq(ns_client_stats_fetch(cli, "r1", NULL, NS_FORMAT_JSON, &out, NULL), 0);
    expect_request(1, "GET", "/v1/runs/r1/stats?format=json", NULL, "application/json", NULL, 0);
    ns_stats_query_t q2 = {.mixture = "a:0.7,b:0.3", .domain = "*", .source = "x y&z"};
    reply(200, "application/json", "{}");
    ck_assert_int_eq(ns_client_stats_fetch(cli, "r1", &q2, NS_FORMAT_JSON, &out, NULL), 0);
    expect_request(2, "GET",
                   "/v1/runs/r1/stats?source=x%20y%26z&domain=*&mixture=a:0.7,b:0.3"
                   "&format=json",
                   NULL, NULL, NULL, 0);
    ns_buf_free(&out);

    /* Saved to a file: the answer's bytes. */
    char path[] = "/tmp/test_client_statsXXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    close(fd);
    reply_bytes(200, "application/safetensors", answer, len);
    ck_assert_int_eq(ns_client_stats_save(cli, "r1", NULL, NS_FORMAT_SAFETENSORS, path, NULL), 0);
    FILE *f = fopen(path, "rb");
    unsigned char back[512];
    size_t got = fread(back, 1, sizeof(back), f);
    fclose(f);
    unlink(path);
    ck_assert_uint_eq(got, len);
    ck_assert(memcmp(back, answer, len) == 0);
    free(answer);
}
END_TEST

START_TEST(t_sync_json_answer)
{
    ns_report_t r;
    ns_layer_report_t layers[2];
    ns_result_t *res = NULL;
    two_layer_report(&r, layers);
    r.n_layers = 1;
    reply(200, "application/json",
          "{\"step\":7,\"complete\":false,\"workers\":2,\"layers\":{\"a.bn\":{\"count\":20,"
          "\"mean\":[0.5,1],\"var\":[2,3]}}}");
    ck_assert_int_eq(ns_client_sync(cli, "r1", &r, NS_FORMAT_JSON, &res, NULL), 0);
    expect_request(0, "POST", "/v1/runs/r1/sync", "application/json", "application/safetensors",
                   "{\"step\":7,\"worker\":1,\"domain\":\"photo\",\"unbiased\":false,"
                   "\"update\":[\"ema\"],\"layers\":{\"a.bn\":{\"count\":3,\"mean\":[0.5,-1.25],"
                   "\"var\":[2,0.125]}}}",
                   0);
    ck_assert_int_eq(ns_result_step(res), 7);
    ck_assert_int_eq(ns_result_complete(res), 0);
    ck_assert_int_eq(ns_result_workers(res), 2);
    const ns_result_layer_t *l = ns_result_at(res, 0);
    ck_assert_str_eq(l->name, "a.bn");
    ck_assert_int_eq(l->count, 20);
    ck_assert(l->mean[0] == 0.5f && l->mean[1] == 1.0f && l->var[0] == 2.0f && l->var[1] == 3.0f);
    ns_result_free(res);
}
END_TEST

/* ---------------------------------------------------------------- other endpoints */

START_TEST(t_precise_checkpoint_health)
{
    int64_t gen = 0;
    reply(200, "application/json", "{\"run\":\"r1\",\"domain\":\"photo\",\"generation\":12}");
    ck_assert_int_eq(ns_client_precise_reset(cli, "r1", "photo", &gen, NULL), 0);
    ck_assert_int_eq(gen, 12);
    expect_request(0, "POST", "/v1/runs/r1/precise/reset", "application/json", NULL,
                   "{\"domain\":\"photo\"}", 0);
    reply(200, "application/json", "{\"run\":\"r1\",\"domain\":\"*\",\"generation\":13}");
    ck_assert_int_eq(ns_client_precise_reset(cli, "r1", NULL, &gen, NULL), 0);
    ck_assert_int_eq(gen, 13);
    expect_request(1, "POST", "/v1/runs/r1/precise/reset", NULL, NULL, "{}", 0);

    const char *ck = "{\"format\":\"normstat-checkpoint\",\"layers\":{}}";
    char path[] = "/tmp/test_client_ckXXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    close(fd);
    reply(200, "application/json", ck);
    ck_assert_int_eq(ns_client_checkpoint_save(cli, "r1", path, NULL), 0);
    expect_request(2, "GET", "/v1/runs/r1/checkpoint", NULL, NULL, NULL, 0);
    reply(200, "application/json", "{\"run\":\"r2\"}");
    ck_assert_int_eq(ns_client_checkpoint_restore(cli, "r2", path, NULL), 0);
    expect_request(3, "PUT", "/v1/runs/r2/checkpoint", "application/json", NULL, ck, 0);
    unlink(path);
    ns_error_detail_t err = {0};
    ck_assert_int_eq(ns_client_checkpoint_restore(cli, "r2", path, &err), NS_EIO);
    ck_assert_uint_eq(fake_http_count(srv), 4);

    ns_buf_t out = {0};
    reply(200, "application/json", "{\"status\":\"ok\"}");
    ck_assert_int_eq(ns_client_health(cli, 0, &out, NULL), 0);
    expect_request(4, "GET", "/livez", NULL, NULL, NULL, 0);
    reply(503, "application/json",
          "{\"error\":{\"code\":\"not_ready\",\"message\":\"recovering\"}}");
    memset(&err, 0, sizeof(err));
    ck_assert_int_eq(ns_client_health(cli, 1, &out, &err), NS_ENOTREADY);
    ck_assert_str_eq(err.message, "recovering");
    expect_request(5, "GET", "/readyz", NULL, NULL, NULL, 0);
    reply(200, "application/json", "{\"version\":\"0.1.0\"}");
    ck_assert_int_eq(ns_client_version(cli, &out, NULL), 0);
    expect_request(6, "GET", "/v1/version", NULL, NULL, NULL, 0);
    reply(200, "text/plain", "# HELP x\n");
    ck_assert_int_eq(ns_client_metrics(cli, &out, NULL), 0);
    expect_request(7, "GET", "/metrics", NULL, NULL, NULL, 0);
    ck_assert_str_eq(out.data, "{\"status\":\"ok\"}{\"version\":\"0.1.0\"}# HELP x\n");
    ns_buf_free(&out);
}
END_TEST

/* ---------------------------------------------------------------- errors */

START_TEST(t_error_409_intact)
{
    ns_error_detail_t err = {0};
    ns_buf_t out = {0};
    reply(409, "application/json",
          "{\"error\":{\"code\":\"channel_mismatch\",\"message\":\"layers.layer1.0.bn1.mean: "
          "expected 64 values, got 63\"}}");
    ck_assert_int_eq(ns_client_run_get(cli, "r1", &out, &err), NS_ECHANNELS);
    ck_assert_int_eq(err.code, NS_ECHANNELS);
    ck_assert_str_eq(err.message, "layers.layer1.0.bn1.mean: expected 64 values, got 63");
    ck_assert_int_eq(ns_client_last_status(cli), 409);
    ck_assert_uint_eq(out.len, 0);
    /* Not retried: the server answered. */
    ck_assert_uint_eq(fake_http_count(srv), 1);
}
END_TEST

START_TEST(t_error_502_not_json)
{
    ns_error_detail_t err = {0};
    reply(502, "text/html", "<html>Bad Gateway</html>");
    ck_assert_int_eq(ns_client_version(cli, NULL, &err), NS_EBADRESPONSE);
    ck_assert_ptr_nonnull(strstr(err.message, "HTTP 502"));
    ck_assert_ptr_nonnull(strstr(err.message, "<html>Bad Gateway</html>"));
    /* A JSON body with an unknown code is not the API's either. */
    memset(&err, 0, sizeof(err));
    reply(500, "application/json", "{\"error\":{\"code\":\"nope\",\"message\":\"m\"}}");
    ck_assert_int_eq(ns_client_version(cli, NULL, &err), NS_EBADRESPONSE);
    ck_assert_uint_eq(fake_http_count(srv), 2);
    /* ... but its code and whole message are kept (a shard proxy's 502). */
    ck_assert_str_eq(err.message, "HTTP 500 nope: m");
    memset(&err, 0, sizeof(err));
    reply(502, "application/json",
          "{\"error\":{\"code\":\"shard_unavailable\",\"message\":\"shard 10.0.0.7:8750 did "
          "not answer (refused, or the connection dropped): only the runs on that shard are "
          "affected\"}}");
    ck_assert_int_eq(ns_client_run_get(cli, "r1", NULL, &err), NS_EBADRESPONSE);
    ck_assert_str_eq(err.message, "HTTP 502 shard_unavailable: shard 10.0.0.7:8750 did not answer "
                                  "(refused, or the connection dropped): only the runs on that "
                                  "shard are affected");
    ck_assert_int_eq(ns_client_last_status(cli), 502);
}
END_TEST

START_TEST(t_refused)
{
    char url[64];
    ns_error_detail_t err = {0};
    snprintf(url, sizeof(url), "http://127.0.0.1:%d", fake_closed_port());
    ns_client_t *c = client_of(url, 2, 2000);
    ck_assert_int_eq(ns_client_health(c, 0, NULL, &err), NS_ECONNECT);
    ck_assert_int_eq(err.code, NS_ECONNECT);
    ck_assert_int_eq(ns_client_last_status(c), 0);
    ns_client_free(c);
}
END_TEST

START_TEST(t_timeout)
{
    ns_error_detail_t err = {0};
    ns_client_t *c = client_of(fake_http_url(srv), 0, 200);
    reply_mode(FAKE_SILENT);
    ck_assert_int_eq(ns_client_version(c, NULL, &err), NS_EREQTIMEOUT);
    ck_assert_int_eq(err.code, NS_EREQTIMEOUT);
    ck_assert_uint_eq(fake_http_count(srv), 1);
    ns_client_free(c);

    /* A GET is retried after a timeout: two silent attempts, then an error. */
    c = client_of(fake_http_url(srv), 1, 200);
    reply_mode(FAKE_SILENT);
    reply_mode(FAKE_SILENT);
    ck_assert_int_eq(ns_client_version(c, NULL, NULL), NS_EREQTIMEOUT);
    ck_assert_uint_eq(fake_http_count(srv), 3);
    ns_client_free(c);
}
END_TEST

START_TEST(t_keepalive)
{
    ns_report_t r;
    ns_layer_report_t layers[2];
    ns_result_t *res = NULL;
    size_t len;
    unsigned char *answer = precise_answer(&len);
    two_layer_report(&r, layers);
    reply(200, "application/json", "{\"status\":\"ok\"}");
    reply(200, "application/json", "{\"runs\":[]}");
    reply(202, "application/json", "{}");
    reply(202, "application/json", "{}");
    reply_bytes(200, "application/safetensors", answer, len);
    reply(204, NULL, NULL);
    ck_assert_int_eq(ns_client_health(cli, 0, NULL, NULL), 0);
    ck_assert_int_eq(ns_client_runs_list(cli, NULL, NULL), 0);
    ck_assert_int_eq(ns_client_report(cli, "r1", &r, NS_FORMAT_JSON, NULL), 0);
    ck_assert_int_eq(ns_client_report(cli, "r1", &r, NS_FORMAT_SAFETENSORS, NULL), 0);
    ck_assert_int_eq(ns_client_stats(cli, "r1", NULL, &res, NULL), 0);
    ck_assert_int_eq(ns_client_run_delete(cli, "r1", NULL), 0);
    ck_assert_uint_eq(fake_http_count(srv), 6);
    ck_assert_uint_eq(fake_http_connections(srv), 1);
    for (size_t i = 0; i < 6; i++)
        ck_assert_int_eq(fake_http_request(srv, i)->connection, 0);
    ns_result_free(res);
    free(answer);
}
END_TEST

/* ---------------------------------------------------------------- retries */

START_TEST(t_retry_report_duplicate_is_success)
{
    ns_report_t r;
    ns_layer_report_t layers[2];
    two_layer_report(&r, layers);
    /* The first attempt is read and then the connection drops: it may have
     * landed, and the retry's duplicate_report says it did. */
    reply_mode(FAKE_CLOSE);
    reply(409, "application/json",
          "{\"error\":{\"code\":\"duplicate_report\",\"message\":\"worker 1 already reported "
          "step 7\"}}");
    ck_assert_int_eq(ns_client_report(cli, "r1", &r, NS_FORMAT_JSON, NULL), 0);
    ck_assert_uint_eq(fake_http_count(srv), 2);
    const fake_request_t *a = fake_http_request(srv, 0), *b = fake_http_request(srv, 1);
    ck_assert_uint_eq(a->body_len, b->body_len);
    ck_assert(memcmp(a->body, b->body, a->body_len) == 0);
    ck_assert_uint_eq(fake_http_connections(srv), 2);
}
END_TEST

START_TEST(t_duplicate_first_attempt_is_error)
{
    ns_report_t r;
    ns_layer_report_t layers[2];
    ns_error_detail_t err = {0};
    two_layer_report(&r, layers);
    reply(409, "application/json",
          "{\"error\":{\"code\":\"duplicate_report\",\"message\":\"worker 1 already reported "
          "step 7\"}}");
    ck_assert_int_eq(ns_client_report(cli, "r1", &r, NS_FORMAT_JSON, &err), NS_EDUPLICATE);
    ck_assert_str_eq(err.message, "worker 1 already reported step 7");
    ck_assert_uint_eq(fake_http_count(srv), 1);
}
END_TEST

START_TEST(t_retry_rules)
{
    ns_buf_t out = {0};
    ns_report_t r;
    ns_layer_report_t layers[2];
    ns_result_t *res = NULL;
    two_layer_report(&r, layers);

    /* GET: retried after a dropped connection. */
    reply_mode(FAKE_CLOSE);
    reply(200, "application/json", "{\"run\":\"r1\"}");
    ck_assert_int_eq(ns_client_run_get(cli, "r1", &out, NULL), 0);
    ck_assert_str_eq(out.data, "{\"run\":\"r1\"}");
    ck_assert_uint_eq(fake_http_count(srv), 2);

    /* PUT, DELETE and /sync: not retried once the request went out. Each
     * starts on a fresh client: on a reused keep-alive connection libcurl
     * itself resends once when the connection turns out closed. */
    ns_client_t *c = client_of(fake_http_url(srv), 2, 5000);
    reply_mode(FAKE_CLOSE);
    ck_assert_int_eq(ns_client_run_put(c, "r1", NULL, NULL, NULL, NULL), NS_ECONNECT);
    ck_assert_uint_eq(fake_http_count(srv), 3);
    ns_client_free(c);
    c = client_of(fake_http_url(srv), 2, 5000);
    reply_mode(FAKE_CLOSE);
    ck_assert_int_eq(ns_client_run_delete(c, "r1", NULL), NS_ECONNECT);
    ck_assert_uint_eq(fake_http_count(srv), 4);
    ns_client_free(c);
    c = client_of(fake_http_url(srv), 2, 5000);
    reply_mode(FAKE_CLOSE);
    ck_assert_int_eq(ns_client_sync(c, "r1", &r, NS_FORMAT_JSON, &res, NULL), NS_ECONNECT);
    ck_assert_ptr_null(res);
    ck_assert_uint_eq(fake_http_count(srv), 5);
    ns_client_free(c);

    /* A report: at most 'retries' more attempts, each one the same body. */
    c = client_of(fake_http_url(srv), 2, 5000);
    reply_mode(FAKE_CLOSE);
    reply_mode(FAKE_CLOSE);
    reply_mode(FAKE_CLOSE);
    ck_assert_int_eq(ns_client_report(c, "r1", &r, NS_FORMAT_JSON, NULL), NS_ECONNECT);
    ck_assert_uint_eq(fake_http_count(srv), 8);
    for (size_t i = 6; i < 8; i++)
        ck_assert(memcmp(fake_http_request(srv, i)->body, fake_http_request(srv, 5)->body,
                         fake_http_request(srv, 5)->body_len) == 0);
    ns_client_free(c);
    ns_buf_free(&out);
}
END_TEST

/* options.token: "Authorization: Bearer <token>" on every request, the
 * token copied at creation; none without it; 401/403 map to their codes. */
START_TEST(t_bearer_token)
{
    char v[2048], token[1200], expect[1300];
    ns_error_detail_t err = {0};
    reply(200, "application/json", "{\"version\":\"x\"}");
    ck_assert_int_eq(ns_client_version(cli, NULL, &err), 0);
    ck_assert_ptr_null(
        fake_request_header(fake_http_request(srv, 0), "Authorization", v, sizeof(v)));

    ns_client_options_t o;
    ns_client_options_default(&o);
    ck_assert_ptr_null(o.token);
    o.url = fake_http_url(srv);
    o.retries = 2;
    o.retry_delay_ms = 1;
    /* Longer than any fixed header line; visible ASCII of every kind. */
    for (size_t i = 0; i < 1100; i++)
        token[i] = (char)('!' + (int)(i % 94));
    token[1100] = '\0';
    snprintf(expect, sizeof(expect), "Bearer %s", token);
    o.token = token;
    ns_client_t *c = NULL;
    ck_assert_int_eq(ns_client_create(&c, &o, NULL), 0);
    memset(token, 'x', 1100); /* the client holds its own copy */
    reply(200, "application/json", "{\"version\":\"x\"}");
    ck_assert_int_eq(ns_client_version(c, NULL, &err), 0);
    reply(201, "application/json", "{}");
    ck_assert_int_eq(ns_client_run_put(c, "r1", NULL, NULL, NULL, &err), 0);
    for (size_t i = 1; i <= 2; i++)
        ck_assert_str_eq(
            fake_request_header(fake_http_request(srv, i), "Authorization", v, sizeof(v)), expect);

    reply(401, "application/json",
          "{\"error\":{\"code\":\"unauthorized\",\"message\":\"authentication required\"}}");
    ck_assert_int_eq(ns_client_version(c, NULL, &err), NS_EUNAUTHORIZED);
    ck_assert_int_eq(ns_client_last_status(c), 401);
    reply(403, "application/json",
          "{\"error\":{\"code\":\"forbidden\",\"message\":\"not accepted\"}}");
    ck_assert_int_eq(ns_client_version(c, NULL, &err), NS_EFORBIDDEN);
    ck_assert_int_eq(ns_client_last_status(c), 403);
    /* Answers, so not retried. */
    ck_assert_uint_eq(fake_http_count(srv), 5);
    ns_client_free(c);

    /* A token that cannot be a header value is refused before anything is sent. */
    static const char *const bad[] = {"two words", "line\r\nX-Injected: 1", "tab\t", "\x7f"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        o.token = bad[i];
        c = NULL;
        memset(&err, 0, sizeof(err));
        ck_assert_int_eq(ns_client_create(&c, &o, &err), NS_EINVAL);
        ck_assert_ptr_null(c);
        ck_assert_str_eq(err.field, "token");
    }
    /* "" is no token. */
    o.token = "";
    ck_assert_int_eq(ns_client_create(&c, &o, NULL), 0);
    reply(200, "application/json", "{\"version\":\"x\"}");
    ck_assert_int_eq(ns_client_version(c, NULL, &err), 0);
    ck_assert_ptr_null(
        fake_request_header(fake_http_request(srv, 5), "Authorization", v, sizeof(v)));
    ck_assert_uint_eq(fake_http_count(srv), 6);
    ns_client_free(c);
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("client_http");
    TCase *tc = tcase_create("client_http");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 20);
    tcase_add_test(tc, t_run_put);
    tcase_add_test(tc, t_run_get_list_delete);
    tcase_add_test(tc, t_invalid_names_send_nothing);
    tcase_add_test(tc, t_report_json);
    tcase_add_test(tc, t_report_safetensors);
    tcase_add_test(tc, t_report_nonfinite_json);
    tcase_add_test(tc, t_stats_query_and_result);
    tcase_add_test(tc, t_sync_json_answer);
    tcase_add_test(tc, t_precise_checkpoint_health);
    tcase_add_test(tc, t_error_409_intact);
    tcase_add_test(tc, t_error_502_not_json);
    tcase_add_test(tc, t_refused);
    tcase_add_test(tc, t_timeout);
    tcase_add_test(tc, t_keepalive);
    tcase_add_test(tc, t_retry_report_duplicate_is_success);
    tcase_add_test(tc, t_duplicate_first_attempt_is_error);
    tcase_add_test(tc, t_retry_rules);
    tcase_add_test(tc, t_bearer_token);
    suite_add_tcase(s, tc);
    return s;
}

NS_TEST_MAIN(make_suite)
