/* test_client_async.c - the asynchronous client on a libuv loop against a
 * canned-reply server: concurrent reports, a /sync answer delivered to the
 * callback, errors, retries, connection reuse, and teardown with requests
 * in flight. Every loop run is bounded by the client's timeout. */
#include <normstat/client.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <uv.h>

#include "fake_http.h"
#include "harness.h"

enum { MAX_CALLS = 16 };

typedef struct outcome_s {
    int called, status;
    ns_error_detail_t err;
    ns_result_t *result;
} outcome_t;

static fake_http_t *srv;
static uv_loop_t loop;
static ns_client_async_t *acli;
static outcome_t outcomes[MAX_CALLS];

static void on_done(int status, const ns_error_detail_t *err, ns_result_t *result, void *arg)
{
    outcome_t *o = arg;
    o->called++;
    o->status = status;
    if (err)
        o->err = *err;
    o->result = result;
}

static ns_client_async_t *async_of(const char *url, unsigned retries, long timeout_ms)
{
    ns_client_options_t o;
    ns_client_async_t *c = NULL;
    ns_client_options_default(&o);
    o.url = url;
    o.retries = retries;
    o.timeout_ms = timeout_ms;
    ck_assert_int_eq(ns_client_async_create(&c, &loop, &o, NULL), 0);
    return c;
}

static void setup(void)
{
    memset(outcomes, 0, sizeof(outcomes));
    ck_assert_int_eq(uv_loop_init(&loop), 0);
    srv = fake_http_start();
    ck_assert_ptr_nonnull(srv);
    acli = async_of(fake_http_url(srv), 2, 5000);
}

static void teardown(void)
{
    ns_client_async_free(acli);
    uv_run(&loop, UV_RUN_DEFAULT); /* closes the client's handles */
    ck_assert_int_eq(uv_loop_close(&loop), 0);
    fake_http_free(srv);
    for (int i = 0; i < MAX_CALLS; i++)
        ns_result_free(outcomes[i].result);
}

static void reply(int status, const char *type, const char *body)
{
    fake_reply_t r = {.mode = FAKE_REPLY, .status = status, .content_type = type, .body = body};
    fake_http_push(srv, &r);
}

static float mean[3] = {0.5f, 1.0f, -3.0f}, var[3] = {1.0f, 0.25f, 2.0f};

static void report_of(ns_report_t *r, ns_layer_report_t *layer, uint32_t worker, uint64_t step)
{
    memset(r, 0, sizeof(*r));
    memset(layer, 0, sizeof(*layer));
    snprintf(layer->name, sizeof(layer->name), "bn1");
    layer->count = 8;
    layer->channels = 3;
    layer->mean = mean;
    layer->var = var;
    r->step = step;
    r->worker = worker;
    r->update = NS_UPDATE_EMA | NS_UPDATE_PRECISE;
    r->world_size = -1;
    r->n_layers = 1;
    r->layers = layer;
}

START_TEST(t_concurrent_reports)
{
    enum { N = 4 };
    ns_report_t r;
    ns_layer_report_t layer;
    for (int i = 0; i < N; i++)
        reply(202, "application/json", "{\"accepted\":true}");
    for (uint32_t w = 0; w < N; w++) {
        report_of(&r, &layer, w, 10);
        ck_assert_int_eq(
            ns_client_async_report(acli, "r1", &r, NS_FORMAT_JSON, on_done, &outcomes[w], NULL), 0);
    }
    /* The report was encoded when queued: changing the arrays now must not
     * change what is sent. */
    mean[0] = 99.0f;
    ck_assert_uint_eq(ns_client_async_pending(acli), N);
    uv_run(&loop, UV_RUN_DEFAULT);
    mean[0] = 0.5f;
    ck_assert_uint_eq(ns_client_async_pending(acli), 0);
    int seen[N] = {0};
    for (int w = 0; w < N; w++) {
        ck_assert_int_eq(outcomes[w].called, 1);
        ck_assert_int_eq(outcomes[w].status, 0);
    }
    ck_assert_uint_eq(fake_http_count(srv), N);
    for (size_t i = 0; i < N; i++) {
        const fake_request_t *rq = fake_http_request(srv, i);
        char want[256];
        unsigned w;
        ck_assert_str_eq(rq->method, "POST");
        ck_assert_str_eq(rq->target, "/v1/runs/r1/batches");
        ck_assert_int_eq(sscanf((const char *)rq->body, "{\"step\":10,\"worker\":%u", &w), 1);
        ck_assert_uint_lt(w, N);
        seen[w]++;
        snprintf(want, sizeof(want),
                 "{\"step\":10,\"worker\":%u,\"unbiased\":false,\"update\":[\"ema\",\"precise\"],"
                 "\"layers\":{\"bn1\":{\"count\":8,\"mean\":[0.5,1,-3],\"var\":[1,0.25,2]}}}",
                 w);
        ck_assert_str_eq((const char *)rq->body, want);
    }
    for (int w = 0; w < N; w++)
        ck_assert_int_eq(seen[w], 1);
    /* Concurrent requests need their own connections, at most one each. */
    ck_assert_uint_le(fake_http_connections(srv), N);
}
END_TEST

START_TEST(t_same_worker_in_order)
{
    /* Four steps of one worker queued at once go out one at a time, in the
     * order queued (the server refuses a step below one it has seen), while
     * another worker's report goes out beside them. */
    enum { N = 4 };
    ns_report_t r;
    ns_layer_report_t layer;
    for (int i = 0; i < N + 1; i++)
        reply(202, "application/json", "{}");
    for (int i = 0; i < N; i++) {
        report_of(&r, &layer, 3, (uint64_t)(i + 1));
        ck_assert_int_eq(
            ns_client_async_report(acli, "r1", &r, NS_FORMAT_JSON, on_done, &outcomes[i], NULL), 0);
    }
    report_of(&r, &layer, 3, 1);
    /* Same worker of another run: its own queue. */
    ck_assert_int_eq(
        ns_client_async_report(acli, "r2", &r, NS_FORMAT_JSON, on_done, &outcomes[N], NULL), 0);
    ck_assert_uint_eq(ns_client_async_pending(acli), N + 1);
    uv_run(&loop, UV_RUN_DEFAULT);
    for (int i = 0; i < N + 1; i++) {
        ck_assert_int_eq(outcomes[i].called, 1);
        ck_assert_int_eq(outcomes[i].status, 0);
    }
    ck_assert_uint_eq(fake_http_count(srv), N + 1);
    unsigned long long last = 0;
    int r2 = 0;
    for (size_t i = 0; i < N + 1; i++) {
        const fake_request_t *rq = fake_http_request(srv, i);
        unsigned long long step;
        ck_assert_int_eq(sscanf((const char *)rq->body, "{\"step\":%llu,", &step), 1);
        if (strcmp(rq->target, "/v1/runs/r2/batches") == 0) {
            r2++;
            continue;
        }
        ck_assert_uint_eq(step, last + 1);
        last = step;
    }
    ck_assert_int_eq(r2, 1);
    ck_assert_uint_eq(last, N);
    /* One at a time per worker: the r1 chain and the r2 report were the only
     * transfers ever in flight together, so two connections served all. */
    ck_assert_uint_le(fake_http_connections(srv), 2);
}
END_TEST

/* Queues the next report from the callback of the previous one. */
typedef struct chain_s {
    ns_client_async_t *client;
    int left, done, failed;
} chain_t;

static void chain_next(int status, const ns_error_detail_t *err, ns_result_t *result, void *arg)
{
    chain_t *c = arg;
    ns_report_t r;
    ns_layer_report_t layer;
    (void)err;
    ns_result_free(result);
    c->done++;
    if (status)
        c->failed++;
    if (c->left-- > 0) {
        report_of(&r, &layer, 0, (uint64_t)c->done + 1);
        if (ns_client_async_report(c->client, "r1", &r, NS_FORMAT_SAFETENSORS, chain_next, c, NULL))
            c->failed++;
    }
}

START_TEST(t_sequential_reuse_connection)
{
    chain_t c = {.client = acli, .left = 4};
    ns_report_t r;
    ns_layer_report_t layer;
    for (int i = 0; i < 5; i++)
        reply(202, "application/json", "{}");
    report_of(&r, &layer, 0, 1);
    ck_assert_int_eq(
        ns_client_async_report(acli, "r1", &r, NS_FORMAT_SAFETENSORS, chain_next, &c, NULL), 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    ck_assert_int_eq(c.done, 5);
    ck_assert_int_eq(c.failed, 0);
    ck_assert_uint_eq(fake_http_count(srv), 5);
    ck_assert_uint_eq(fake_http_connections(srv), 1);
    char v[64];
    ck_assert_str_eq(fake_request_header(fake_http_request(srv, 4), "Content-Type", v, sizeof(v)),
                     "application/safetensors");
}
END_TEST

START_TEST(t_sync_answer)
{
    ns_report_t r;
    ns_layer_report_t layer;
    report_of(&r, &layer, 1, 3);
    reply(200, "application/json",
          "{\"step\":3,\"complete\":true,\"workers\":2,\"layers\":{\"bn1\":{\"count\":16,"
          "\"mean\":[0.25,0.5,0.75],\"var\":[1,2,3]}}}");
    ck_assert_int_eq(
        ns_client_async_sync(acli, "r1", &r, NS_FORMAT_JSON, on_done, &outcomes[0], NULL), 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    ck_assert_int_eq(outcomes[0].called, 1);
    ck_assert_int_eq(outcomes[0].status, 0);
    const fake_request_t *rq = fake_http_request(srv, 0);
    char v[64];
    ck_assert_str_eq(rq->target, "/v1/runs/r1/sync");
    ck_assert_str_eq(fake_request_header(rq, "Accept", v, sizeof(v)), "application/safetensors");
    ns_result_t *res = outcomes[0].result;
    ck_assert_ptr_nonnull(res);
    ck_assert_int_eq(ns_result_workers(res), 2);
    ck_assert_int_eq(ns_result_complete(res), 1);
    float m[3], s[3];
    ck_assert_int_eq(ns_result_copy(res, "bn1", m, s, 3), 3);
    ck_assert(m[0] == 0.25f && m[1] == 0.5f && m[2] == 0.75f);
    ck_assert(s[0] == 1.0f && s[1] == 2.0f && s[2] == 3.0f);
    ck_assert_int_eq(ns_result_find(res, "bn1")->count, 16);
}
END_TEST

START_TEST(t_errors_and_retries)
{
    ns_report_t r;
    ns_layer_report_t layer;
    report_of(&r, &layer, 0, 5);
    /* 1: a server error reaches the callback intact. */
    reply(409, "application/json",
          "{\"error\":{\"code\":\"channel_mismatch\",\"message\":\"layers.bn1.mean: expected 4 "
          "values, got 3\"}}");
    ck_assert_int_eq(
        ns_client_async_report(acli, "r1", &r, NS_FORMAT_JSON, on_done, &outcomes[0], NULL), 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    ck_assert_int_eq(outcomes[0].status, NS_ECHANNELS);
    ck_assert_str_eq(outcomes[0].err.message, "layers.bn1.mean: expected 4 values, got 3");

    /* 2: a dropped connection, then duplicate_report: the first landed. */
    ns_client_async_t *fresh = async_of(fake_http_url(srv), 2, 5000);
    fake_reply_t close_it = {.mode = FAKE_CLOSE};
    fake_http_push(srv, &close_it);
    reply(409, "application/json",
          "{\"error\":{\"code\":\"duplicate_report\",\"message\":\"worker 0 already reported\"}}");
    ck_assert_int_eq(
        ns_client_async_report(fresh, "r1", &r, NS_FORMAT_JSON, on_done, &outcomes[1], NULL), 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    ck_assert_int_eq(outcomes[1].called, 1);
    ck_assert_int_eq(outcomes[1].status, 0);
    ck_assert_uint_eq(fake_http_count(srv), 3);
    ns_client_async_free(fresh);

    /* 3: refused. */
    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d", fake_closed_port());
    ns_client_async_t *nowhere = async_of(url, 1, 2000);
    ck_assert_int_eq(
        ns_client_async_report(nowhere, "r1", &r, NS_FORMAT_JSON, on_done, &outcomes[2], NULL), 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    ck_assert_int_eq(outcomes[2].status, NS_ECONNECT);
    ns_client_async_free(nowhere);

    /* 4: a server that never answers, 200 ms timeout, no retries. */
    ns_client_async_t *slow = async_of(fake_http_url(srv), 0, 200);
    fake_reply_t silent = {.mode = FAKE_SILENT};
    fake_http_push(srv, &silent);
    ck_assert_int_eq(
        ns_client_async_report(slow, "r1", &r, NS_FORMAT_JSON, on_done, &outcomes[3], NULL), 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    ck_assert_int_eq(outcomes[3].status, NS_EREQTIMEOUT);
    ns_client_async_free(slow);

    /* 5: an invalid run is refused at once and the callback never runs. */
    ns_error_detail_t err = {0};
    ck_assert_int_eq(
        ns_client_async_report(acli, "no/such", &r, NS_FORMAT_JSON, on_done, &outcomes[4], &err),
        NS_EINVAL);
    uv_run(&loop, UV_RUN_DEFAULT);
    ck_assert_int_eq(outcomes[4].called, 0);
    ck_assert_uint_eq(fake_http_count(srv), 4);
}
END_TEST

START_TEST(t_free_in_flight)
{
    ns_report_t r;
    ns_layer_report_t layer;
    ns_client_async_t *c = async_of(fake_http_url(srv), 0, 5000);
    fake_reply_t silent = {.mode = FAKE_SILENT};
    fake_http_push(srv, &silent);
    report_of(&r, &layer, 0, 1);
    ck_assert_int_eq(
        ns_client_async_report(c, "r1", &r, NS_FORMAT_JSON, on_done, &outcomes[0], NULL), 0);
    /* Turn the loop until the request has reached the server. */
    for (int i = 0; i < 5000 && fake_http_count(srv) == 0; i++) {
        uv_run(&loop, UV_RUN_NOWAIT);
        nanosleep(&(struct timespec){.tv_nsec = 1000000}, NULL);
    }
    ck_assert_uint_eq(fake_http_count(srv), 1);
    ns_client_async_free(c);
    uv_run(&loop, UV_RUN_DEFAULT);
    ck_assert_int_eq(outcomes[0].called, 0);
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("client_async");
    TCase *tc = tcase_create("client_async");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 20);
    tcase_add_test(tc, t_concurrent_reports);
    tcase_add_test(tc, t_same_worker_in_order);
    tcase_add_test(tc, t_sequential_reuse_connection);
    tcase_add_test(tc, t_sync_answer);
    tcase_add_test(tc, t_errors_and_retries);
    tcase_add_test(tc, t_free_in_flight);
    suite_add_tcase(s, tc);
    return s;
}

NS_TEST_MAIN(make_suite)
