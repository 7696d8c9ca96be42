/* test_routes.c - the route table (matching, {run} extraction, 404/405) and the HTTP front over
 * real sockets: keep-alive, error bodies, Allow, 413/415, /sync suspend and resume, shutdown. */
#include <arpa/inet.h>
#include <math.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "base/log.h"
#include "base/options.h"
#include "harness.h"
#include "http/counters.h"
#include "http/http.h"
#include "http/routes.h"
#include "registry/registry.h"

/* ---------------------------------------------------------------- matching */

/* The API of proto/openapi.yaml, written out independently of routes.c. */
static const struct {
    const char *method, *path, *pattern, *run;
} expected[] = {
    {"GET", "/v1/runs", "/v1/runs", ""},
    {"PUT", "/v1/runs/r1", "/v1/runs/{run}", "r1"},
    {"GET", "/v1/runs/r1", "/v1/runs/{run}", "r1"},
    {"DELETE", "/v1/runs/r1", "/v1/runs/{run}", "r1"},
    {"POST", "/v1/runs/a.b:c-d_E9/batches", "/v1/runs/{run}/batches", "a.b:c-d_E9"},
    {"POST", "/v1/runs/r1/sync", "/v1/runs/{run}/sync", "r1"},
    {"POST", "/v1/runs/r1/grad", "/v1/runs/{run}/grad", "r1"},
    {"GET", "/v1/runs/run/stats", "/v1/runs/{run}/stats", "run"},
    {"GET", "/v1/runs/r1/drift", "/v1/runs/{run}/drift", "r1"},
    {"GET", "/v1/runs/r1/history", "/v1/runs/{run}/history", "r1"},
    {"POST", "/v1/runs/x/precise/reset", "/v1/runs/{run}/precise/reset", "x"},
    {"GET", "/v1/runs/x/checkpoint", "/v1/runs/{run}/checkpoint", "x"},
    {"PUT", "/v1/runs/x/checkpoint", "/v1/runs/{run}/checkpoint", "x"},
    {"GET", "/livez", "/livez", ""},
    {"GET", "/healthz", "/healthz", ""},
    {"GET", "/readyz", "/readyz", ""},
    {"GET", "/metrics", "/metrics", ""},
    {"GET", "/v1/version", "/v1/version", ""},
    {"GET", "/", "/", ""},
    {"GET", "/ui", "/ui", ""},
    {"GET", "/ui/", "/ui/", ""},
    {"GET", "/ui/dashboard.js", "/ui/dashboard.js", ""},
    {"GET", "/ui/dashboard.css", "/ui/dashboard.css", ""},
    {"HEAD", "/v1/runs/r1/stats", "/v1/runs/{run}/stats", "r1"},
};

START_TEST(test_match)
{
    for (size_t i = 0; i < sizeof(expected) / sizeof(expected[0]); i++) {
        const nsd_route_t *route = NULL;
        char run[NS_NAME_MAX + 1] = "junk", allow[64];
        int rc = nsd_routes_match(expected[i].method, expected[i].path, &route, run, sizeof(run),
                                  allow, sizeof(allow), NULL);
        ck_assert_msg(rc == 0, "%s %s: %d", expected[i].method, expected[i].path, rc);
        ck_assert_str_eq(route->pattern, expected[i].pattern);
        const char *m = strcmp(expected[i].method, "HEAD") == 0 ? "GET" : expected[i].method;
        ck_assert_str_eq(route->method, m);
        ck_assert_str_eq(run, expected[i].run);
        ck_assert_ptr_nonnull(route->handler);
    }
    /* Every table row is one of the expected (method, pattern) pairs, labels unique. */
    size_t n;
    const nsd_route_t *table = nsd_routes_table(&n);
    ck_assert_uint_eq(n, 23);
    for (size_t i = 0; i < n; i++) {
        int found = 0;
        for (size_t j = 0; j < sizeof(expected) / sizeof(expected[0]); j++)
            found |= strcmp(table[i].method, expected[j].method) == 0 &&
                     strcmp(table[i].pattern, expected[j].pattern) == 0;
        ck_assert_msg(found, "unexpected route %s %s", table[i].method, table[i].pattern);
        ck_assert_uint_eq(nsd_routes_index(&table[i]), i);
        for (size_t j = 0; j < i; j++)
            ck_assert_str_ne(table[i].label, table[j].label);
    }
}
END_TEST

START_TEST(test_not_found)
{
    static const char *const paths[] = {"//",
                                        "",
                                        "/ui//",
                                        "/ui/x",
                                        "/ui/dashboard.js/",
                                        "/uix",
                                        "/v1",
                                        "/v1/run",
                                        "/v1/runs/",
                                        "/v1/runs//stats",
                                        "/v1/runs/r1/",
                                        "/v1/runs/r1/unknown",
                                        "/v1/runs/r1/stats/x",
                                        "/livez/",
                                        "/v1/runs/r1/precise",
                                        "/V1/runs",
                                        "/metricsx"};
    for (size_t i = 0; i < sizeof(paths) / sizeof(paths[0]); i++) {
        const nsd_route_t *route = NULL;
        char run[NS_NAME_MAX + 1], allow[64];
        ck_assert_msg(nsd_routes_match("GET", paths[i], &route, run, sizeof(run), allow,
                                       sizeof(allow), NULL) == NS_ENOTFOUND,
                      "'%s' matched", paths[i]);
    }
}
END_TEST

START_TEST(test_method_not_allowed)
{
    static const struct {
        const char *method, *path, *allow;
    } cases[] = {
        {"POST", "/v1/runs/r1", "PUT, GET, DELETE"},
        {"PATCH", "/v1/runs/r1", "PUT, GET, DELETE"},
        {"GET", "/v1/runs/r1/batches", "POST"},
        {"GET", "/v1/runs/r1/sync", "POST"},
        {"DELETE", "/v1/runs/r1/checkpoint", "GET, PUT"},
        {"POST", "/metrics", "GET"},
        {"PUT", "/v1/runs", "GET"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const nsd_route_t *route = NULL;
        char run[NS_NAME_MAX + 1], allow[64];
        ck_assert_int_eq(nsd_routes_match(cases[i].method, cases[i].path, &route, run, sizeof(run),
                                          allow, sizeof(allow), NULL),
                         NS_EMETHOD);
        ck_assert_str_eq(allow, cases[i].allow);
    }
}
END_TEST

START_TEST(test_bad_run_names)
{
    char long_name[200], path[300];
    memset(long_name, 'a', 129);
    long_name[129] = '\0';
    const char *names[] = {"bad name", "a%20b", "ünï", "a*b", long_name};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        snprintf(path, sizeof(path), "/v1/runs/%s/stats", names[i]);
        const nsd_route_t *route = NULL;
        char run[NS_NAME_MAX + 1], allow[64];
        ck_assert_msg(nsd_routes_match("GET", path, &route, run, sizeof(run), allow, sizeof(allow),
                                       NULL) == NS_EINVAL,
                      "%s", path);
        ck_assert_ptr_nonnull(route);
    }
    /* 128 characters is the longest valid name. */
    long_name[128] = '\0';
    snprintf(path, sizeof(path), "/v1/runs/%s", long_name);
    const nsd_route_t *route = NULL;
    char run[NS_NAME_MAX + 1], allow[64];
    ck_assert_int_eq(
        nsd_routes_match("DELETE", path, &route, run, sizeof(run), allow, sizeof(allow), NULL), 0);
    ck_assert_str_eq(run, long_name);
}
END_TEST

START_TEST(test_segments_decoded_strictly)
{
    /* Each segment decodes on its own: a decoded NUL or '/' never reaches a
     * name or makes a segment, and the message names the character. */
    static const struct {
        const char *method, *path, *named;
    } bad[] = {
        {"DELETE", "/v1/runs/r1%00x", "0x00"},
        {"PUT", "/v1/runs/zz%00", "0x00"},
        {"GET", "/v1/runs/victim%2Fstats", "'/'"},
        {"GET", "/v1/runs/victim%2fstats", "'/'"},
        {"GET", "/v1%2Fruns", "'/'"},
        {"GET", "/v1/runs/a%zz", "'%'"},
        {"GET", "/v1/runs/a%4", "'%'"},
        {"GET", "/v1/runs/a%", "'%'"},
        {"PUT", "/v1/runs/a%20b", "0x20"},
        {"PUT", "/v1/runs/a%2Ab", "'*'"},
        {"PUT", "/v1/runs/%C3%BC", "0xC3"},
        {"POST", "/v1/runs/a+b/batches", "'+'"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        const nsd_route_t *route = NULL;
        char run[NS_NAME_MAX + 1] = "junk", allow[64];
        ns_error_detail_t err = {0};
        int rc = nsd_routes_match(bad[i].method, bad[i].path, &route, run, sizeof(run), allow,
                                  sizeof(allow), &err);
        ck_assert_msg(rc == NS_EINVAL, "%s %s: %d", bad[i].method, bad[i].path, rc);
        ck_assert_msg(strstr(err.message, bad[i].named) != NULL, "%s: message '%s' lacks %s",
                      bad[i].path, err.message, bad[i].named);
        ck_assert_str_eq(run, "");
    }
    /* Escaped characters of the grammar stand for themselves. */
    const nsd_route_t *route = NULL;
    char run[NS_NAME_MAX + 1], allow[64];
    ck_assert_int_eq(nsd_routes_match("GET", "/v1/runs/a%2Db%2e%3Ac/st%61ts", &route, run,
                                      sizeof(run), allow, sizeof(allow), NULL),
                     0);
    ck_assert_str_eq(route->pattern, "/v1/runs/{run}/stats");
    ck_assert_str_eq(run, "a-b.:c");
}
END_TEST

START_TEST(test_query_parse)
{
    char q1[] = "source=ema&layers=a%2Cb&variance=un+biased&flag&&x=%41%42";
    nsd_param_t p[NSD_QUERY_PARAMS_MAX];
    size_t n = 99;
    ck_assert_int_eq(nsd_query_parse(q1, p, NSD_QUERY_PARAMS_MAX, &n, NULL), 0);
    ck_assert_uint_eq(n, 5);
    static const char *const want[][2] = {
        {"source", "ema"}, {"layers", "a,b"}, {"variance", "un biased"}, {"flag", ""}, {"x", "AB"}};
    for (size_t i = 0; i < 5; i++) {
        ck_assert_str_eq(p[i].key, want[i][0]);
        ck_assert_str_eq(p[i].value, want[i][1]);
    }
    char q2[] = "";
    ck_assert_int_eq(nsd_query_parse(q2, p, NSD_QUERY_PARAMS_MAX, &n, NULL), 0);
    ck_assert_uint_eq(n, 0);

    static const struct {
        const char *query, *named;
    } bad[] = {
        {"source=ema%00", "source: "},
        {"source=ema&source=precise", "source: "},
        {"a=1&b=2&a=1", "a: "},
        {"s%6Furce=1&source=2", "source: "},
        {"x%00=1", "0x00"},
        {"=ema", "without a name"},
        {"source=%zz", "source: "},
        {"so%4urce=1", "so%4urce: "},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char buf[64];
        snprintf(buf, sizeof(buf), "%s", bad[i].query);
        ns_error_detail_t err = {0};
        ck_assert_msg(nsd_query_parse(buf, p, NSD_QUERY_PARAMS_MAX, &n, &err) == NS_EINVAL, "%s",
                      bad[i].query);
        ck_assert_msg(strstr(err.message, bad[i].named) != NULL, "%s: message '%s'", bad[i].query,
                      err.message);
    }
    /* More parameters than the cap: refused, never written past it. */
    char many[4096] = "";
    for (int i = 0; i <= (int)NSD_QUERY_PARAMS_MAX; i++)
        snprintf(many + strlen(many), sizeof(many) - strlen(many), "p%d=1&", i);
    ns_error_detail_t err = {0};
    ck_assert_int_eq(nsd_query_parse(many, p, NSD_QUERY_PARAMS_MAX, &n, &err), NS_EINVAL);
    ck_assert_ptr_nonnull(strstr(err.message, "more than"));
}
END_TEST

/* ---------------------------------------------------------------- over HTTP */

static nsd_options_t opts;
static nsd_server_t server;

static void start_server(void)
{
    char *argv[] = {"normstatd", "--listen",  "127.0.0.1:0", "--max-body",
                    "4K",        "--threads", "2",           NULL};
    ck_assert_int_eq(nsd_options_parse(&opts, 7, argv, NULL, NULL), 0);
    memset(&server, 0, sizeof(server));
    server.opts = &opts;
    server.registry = nsd_registry_create(NULL);
    ck_assert_ptr_nonnull(server.registry);
    nsd_counters_init();
    nsd_log_set_level(NSD_LOG_WARN);
    ck_assert_int_eq(nsd_http_start(&server, NULL), 0);
    ck_assert_uint_ne(server.port, 0);
    atomic_store(&server.ready, 1);
}

static void stop_server(void)
{
    nsd_registry_shutdown(server.registry);
    nsd_http_stop(&server);
    nsd_registry_free(server.registry);
}

static int connect_server(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    ck_assert_int_ge(fd, 0);
    /* Bounds every read: a hung server fails the test instead of hanging it. */
    struct timeval tv = {20, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    struct sockaddr_in a;
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_port = htons(server.port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ck_assert_int_eq(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    return fd;
}

static void send_all(int fd, const char *data, size_t len)
{
    while (len > 0) {
        ssize_t n = send(fd, data, len, 0);
        ck_assert_int_gt(n, 0);
        data += n;
        len -= (size_t)n;
    }
}

static void send_request(int fd, const char *method, const char *path, const char *ctype,
                         const char *body)
{
    char head[1024];
    size_t blen = body ? strlen(body) : 0;
    int n = snprintf(head, sizeof(head), "%s %s HTTP/1.1\r\nHost: test\r\n", method, path);
    if (ctype != NULL)
        n += snprintf(head + n, sizeof(head) - (size_t)n, "Content-Type: %s\r\n", ctype);
    if (body != NULL)
        n += snprintf(head + n, sizeof(head) - (size_t)n, "Content-Length: %zu\r\n", blen);
    n += snprintf(head + n, sizeof(head) - (size_t)n, "\r\n");
    send_all(fd, head, (size_t)n);
    if (blen > 0)
        send_all(fd, body, blen);
}

/* Case-insensitive strstr (strcasestr is a GNU extension). */
static const char *find_ci(const char *hay, const char *needle)
{
    size_t n = strlen(needle);
    for (; *hay; hay++)
        if (strncasecmp(hay, needle, n) == 0)
            return hay;
    return NULL;
}

typedef struct response_s {
    int status;
    char headers[2048];
    char body[65536];
} response_t;

/* Read one response (Content-Length framed, as MHD sends for buffers). */
static void read_response(int fd, response_t *r)
{
    static char buf[16384];
    size_t got = 0;
    char *end = NULL;
    memset(r, 0, sizeof(*r));
    while (end == NULL) {
        ck_assert_uint_lt(got, sizeof(buf) - 1);
        ssize_t n = recv(fd, buf + got, 1, 0); /* byte by byte: never read past this response */
        ck_assert_msg(n == 1, "connection closed or timed out after %zu bytes", got);
        got++;
        buf[got] = '\0';
        end = got >= 4 ? strstr(buf, "\r\n\r\n") : NULL;
    }
    ck_assert_int_eq(sscanf(buf, "HTTP/1.1 %d", &r->status), 1);
    size_t hlen = (size_t)(end - buf);
    ck_assert_uint_lt(hlen, sizeof(r->headers));
    memcpy(r->headers, buf, hlen);
    const char *cl = find_ci(r->headers, "\r\nContent-Length:");
    size_t len = cl ? strtoul(cl + 17, NULL, 10) : 0;
    ck_assert_uint_lt(len, sizeof(r->body));
    size_t have = 0;
    while (have < len) {
        ssize_t n = recv(fd, r->body + have, len - have, 0);
        ck_assert_int_gt(n, 0);
        have += (size_t)n;
    }
}

static response_t *roundtrip(int fd, const char *method, const char *path, const char *ctype,
                             const char *body)
{
    static response_t r;
    send_request(fd, method, path, ctype, body);
    read_response(fd, &r);
    return &r;
}

/* The error code of an error body. */
static const char *error_code(const response_t *r)
{
    static char code[64];
    json_error_t jerr;
    json_t *root = json_loads(r->body, 0, &jerr);
    ck_assert_msg(root != NULL, "not JSON: %s", r->body);
    const char *c = json_string_value(json_object_get(json_object_get(root, "error"), "code"));
    ck_assert_ptr_nonnull(c);
    ck_assert_ptr_nonnull(
        json_string_value(json_object_get(json_object_get(root, "error"), "message")));
    snprintf(code, sizeof(code), "%s", c);
    json_decref(root);
    return code;
}

START_TEST(test_keep_alive)
{
    start_server();
    int fd = connect_server();
    response_t *r = roundtrip(fd, "GET", "/livez", NULL, NULL);
    ck_assert_int_eq(r->status, 200);
    ck_assert_ptr_null(find_ci(r->headers, "Connection: close"));
    r = roundtrip(fd, "GET", "/v1/version", NULL, NULL);
    ck_assert_int_eq(r->status, 200);
    ck_assert_ptr_nonnull(strstr(r->body, "\"kernel\""));
    /* A request with a body, an error, then another request: still one connection. */
    r = roundtrip(fd, "PUT", "/v1/runs/r1", "application/json", "{\"world_size\": 3}");
    ck_assert_int_eq(r->status, 201);
    r = roundtrip(fd, "PUT", "/v1/runs/r1", NULL, "{}");
    ck_assert_int_eq(r->status, 200);
    r = roundtrip(fd, "GET", "/nope", NULL, NULL);
    ck_assert_int_eq(r->status, 404);
    ck_assert_str_eq(error_code(r), "not_found");
    r = roundtrip(fd, "GET", "/v1/runs/r1", NULL, NULL);
    ck_assert_int_eq(r->status, 200);
    ck_assert_ptr_nonnull(strstr(r->body, "\"world_size\":3"));
    ck_assert_ptr_null(find_ci(r->headers, "Connection: close"));
    close(fd);
    stop_server();
}
END_TEST

/* The value of the sample 'series' ("name{labels}") in a /metrics body, or -1. */
static long long metric(const char *body, const char *series)
{
    char key[256];
    snprintf(key, sizeof(key), "\n%s ", series);
    const char *p = strstr(body, key);
    return p ? strtoll(p + strlen(key), NULL, 10) : -1;
}

static const char *const counted[] = {
    "normstat_rejections_total{reason=\"method_not_allowed\"}",
    "normstat_rejections_total{reason=\"not_found\"}",
    "normstat_rejections_total{reason=\"unsupported_media_type\"}",
    "normstat_rejections_total{reason=\"bad_request\"}",
    "normstat_rejections_total{reason=\"body_too_large\"}",
    "normstat_rejections_total{reason=\"sync_timeout\"}",
    "normstat_rejections_total{reason=\"memory_budget\"}",
    "normstat_http_requests_total{route=\"run_get\",method=\"GET\",status=\"404\"}",
};

static void read_counters(long long *dst)
{
    int fd = connect_server();
    response_t *r = roundtrip(fd, "GET", "/metrics", NULL, NULL);
    ck_assert_int_eq(r->status, 200);
    for (size_t i = 0; i < sizeof(counted) / sizeof(counted[0]); i++) {
        dst[i] = metric(r->body, counted[i]);
        if (i + 1 < sizeof(counted) / sizeof(counted[0])) /* the last may not exist yet */
            ck_assert_msg(dst[i] >= 0, "%s missing", counted[i]);
        else if (dst[i] < 0)
            dst[i] = 0;
    }
    close(fd);
}

START_TEST(test_errors_over_http)
{
    start_server();
    long long before[8], after[8];
    read_counters(before);
    int fd = connect_server();
    response_t *r = roundtrip(fd, "POST", "/v1/runs/r1", NULL, NULL);
    ck_assert_int_eq(r->status, 405);
    ck_assert_str_eq(error_code(r), "method_not_allowed");
    ck_assert_ptr_nonnull(strstr(r->headers, "\r\nAllow: PUT, GET, DELETE"));
    r = roundtrip(fd, "GET", "/v1/runs/bad*name", NULL, NULL);
    ck_assert_int_eq(r->status, 400);
    ck_assert_str_eq(error_code(r), "bad_request");
    r = roundtrip(fd, "POST", "/v1/runs/r1/batches", "text/plain", "{}");
    ck_assert_int_eq(r->status, 415);
    ck_assert_str_eq(error_code(r), "unsupported_media_type");
    r = roundtrip(fd, "PUT", "/v1/runs/r1", "application/safetensors", "{}");
    ck_assert_int_eq(r->status, 415);
    r = roundtrip(fd, "GET", "/v1/runs/missing", NULL, NULL);
    ck_assert_int_eq(r->status, 404);
    ck_assert_str_eq(error_code(r), "not_found");
    r = roundtrip(fd, "GET", "/v1/runs/missing/stats?source=nope", NULL, NULL);
    ck_assert_int_eq(r->status, 400);
    ck_assert_ptr_nonnull(strstr(r->body, "source"));
    r = roundtrip(fd, "GET", "/v1/runs/missing/stats?colour=red", NULL, NULL);
    ck_assert_int_eq(r->status, 400);
    ck_assert_ptr_nonnull(strstr(r->body, "colour"));
    r = roundtrip(fd, "POST", "/v1/runs/r1/batches", "application/json", "{\"step\": ");
    ck_assert_int_eq(r->status, 400);
    close(fd);
    /* Larger than --max-body (4K): refused from Content-Length, connection closed. */
    fd = connect_server();
    char *big = malloc(5000);
    memset(big, ' ', 4999);
    big[4999] = '\0';
    r = roundtrip(fd, "POST", "/v1/runs/r1/batches", "application/json", big);
    ck_assert_int_eq(r->status, 413);
    ck_assert_str_eq(error_code(r), "body_too_large");
    free(big);
    close(fd);
    /* Every rejection reason is exported (even at 0) and counted by reason. */
    read_counters(after);
    static const long long delta[8] = {1, 1, 2, 4, 1, 0, 0, 1};
    for (size_t i = 0; i < 8; i++)
        ck_assert_msg(after[i] - before[i] == delta[i], "%s: %lld -> %lld", counted[i], before[i],
                      after[i]);
    stop_server();
}
END_TEST

/* Poll the registry until 'n' /sync requests wait (bounded; not a timing assertion). */
static void wait_for_waiters(uint64_t n)
{
    for (int i = 0; i < 20000; i++) {
        nsd_counters_t c;
        nsd_registry_counters(server.registry, &c);
        if (c.sync_waiters == n)
            return;
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    ck_abort_msg("sync_waiters never reached %llu", (unsigned long long)n);
}

static double json_at(json_t *root, const char *layer, const char *key, size_t i)
{
    json_t *l = json_object_get(json_object_get(root, "layers"), layer);
    ck_assert_ptr_nonnull(l);
    json_t *v = json_object_get(l, key);
    return json_is_array(v) ? json_number_value(json_array_get(v, i)) : json_number_value(v);
}

START_TEST(test_sync_two_workers)
{
    start_server();
    uint64_t seed = ns_test_seed();
    float mean[2][3], var[2][3];
    unsigned long count[2] = {5 + ns_test_rand(&seed) % 100, 5 + ns_test_rand(&seed) % 100};
    char body[2][1024];
    for (int w = 0; w < 2; w++) {
        for (int c = 0; c < 3; c++) {
            mean[w][c] = (float)ns_test_normal(&seed);
            var[w][c] = (float)(0.1 + ns_test_uniform(&seed));
        }
        snprintf(body[w], sizeof(body[w]),
                 "{\"step\": 7, \"worker\": %d, \"world_size\": 2, \"layers\": {\"bn\": "
                 "{\"count\": %lu, \"mean\": [%.9g, %.9g, %.9g], \"var\": [%.9g, %.9g, %.9g]}}}",
                 w, count[w], mean[w][0], mean[w][1], mean[w][2], var[w][0], var[w][1], var[w][2]);
    }
    int a = connect_server(), b = connect_server();
    send_request(a, "POST", "/v1/runs/s1/sync", "application/json", body[0]);
    wait_for_waiters(1); /* worker 0 is suspended before worker 1 arrives */
    send_request(b, "POST", "/v1/runs/s1/sync", "application/json", body[1]);
    response_t rb, ra;
    read_response(b, &rb);
    read_response(a, &ra);
    ck_assert_int_eq(ra.status, 200);
    ck_assert_int_eq(rb.status, 200);
    ck_assert_str_eq(ra.body, rb.body);
    json_error_t jerr;
    json_t *root = json_loads(ra.body, 0, &jerr);
    ck_assert_ptr_nonnull(root);
    ck_assert_int_eq(json_integer_value(json_object_get(root, "step")), 7);
    ck_assert(json_is_true(json_object_get(root, "complete")));
    ck_assert_int_eq(json_integer_value(json_object_get(root, "workers")), 2);
    ck_assert_int_eq((long)json_at(root, "bn", "count", 0), (long)(count[0] + count[1]));
    for (int c = 0; c < 3; c++) {
        /* SyncBN's global batch, evaluated here in long double. */
        long double n0 = count[0], n1 = count[1], n = n0 + n1;
        long double m = (n0 * mean[0][c] + n1 * mean[1][c]) / n;
        long double v = (n0 * (var[0][c] + (mean[0][c] - m) * (mean[0][c] - m)) +
                         n1 * (var[1][c] + (mean[1][c] - m) * (mean[1][c] - m))) /
                        n;
        ck_assert_double_eq_tol(json_at(root, "bn", "mean", (size_t)c), (double)m,
                                1e-6 * (1 + fabsl(m)));
        ck_assert_double_eq_tol(json_at(root, "bn", "var", (size_t)c), (double)v, 1e-6 * (1 + v));
    }
    json_decref(root);
    /* Both connections stay usable (keep-alive across a suspended request). */
    response_t *r = roundtrip(a, "GET", "/v1/runs/s1/stats?source=last", NULL, NULL);
    ck_assert_int_eq(r->status, 200);
    close(a);
    close(b);
    stop_server();
}
END_TEST

START_TEST(test_sync_answered_at_shutdown)
{
    start_server();
    int a = connect_server();
    send_request(a, "POST", "/v1/runs/s2/sync", "application/json",
                 "{\"step\": 1, \"worker\": 0, \"world_size\": 2, \"layers\": {\"bn\": "
                 "{\"count\": 4, \"mean\": [1], \"var\": [1]}}}");
    wait_for_waiters(1);
    /* What the coordinator does on SIGTERM, from this (non-MHD) thread. */
    atomic_store(&server.shutting_down, 1);
    nsd_registry_shutdown(server.registry);
    response_t r;
    read_response(a, &r);
    ck_assert_int_eq(r.status, 503);
    ck_assert_str_eq(error_code(&r), "shutting_down");
    ck_assert_ptr_nonnull(find_ci(r.headers, "Connection: close"));
    close(a);
    int b = connect_server();
    response_t *rr = roundtrip(b, "GET", "/readyz", NULL, NULL);
    ck_assert_int_eq(rr->status, 503);
    close(b);
    stop_server();
}
END_TEST

static Suite *routes_suite(void)
{
    Suite *s = suite_create("routes");
    TCase *tc = tcase_create("table");
    tcase_add_test(tc, test_match);
    tcase_add_test(tc, test_not_found);
    tcase_add_test(tc, test_method_not_allowed);
    tcase_add_test(tc, test_bad_run_names);
    tcase_add_test(tc, test_segments_decoded_strictly);
    tcase_add_test(tc, test_query_parse);
    suite_add_tcase(s, tc);
    TCase *http = tcase_create("http");
    tcase_set_timeout(http, 60);
    tcase_add_test(http, test_keep_alive);
    tcase_add_test(http, test_errors_over_http);
    tcase_add_test(http, test_sync_two_workers);
    tcase_add_test(http, test_sync_answered_at_shutdown);
    suite_add_tcase(s, http);
    return s;
}

NS_TEST_MAIN(routes_suite)
