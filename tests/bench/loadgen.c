/* loadgen.c - the benchmark load generator: keep-alive HTTP/1.1 reports to normstatd
 * (or any server) on libuv, bounded in time and count, with its own and the server's CPU.
 *
 *   loadgen ingest --port P --format json|st [--conns N] [--layers SPEC] [--workers W]
 *                  [--seconds S] [--max N] [--pid PID] [--run NAME] [--path batches|sync]
 *   loadgen sync   --port P --workers W [--layers SPEC] [--format json|st] [--iters N]
 *                  [--answer json|st]
 *                  [--seconds S] [--warmup K] [--pid PID] [--run NAME]
 *                  [--ports P0,P1,... --group G]
 *   loadgen decode [--layers SPEC] [--seconds S]
 *   loadgen body   [--layers SPEC] [--format json|st] [--worker W] [--workers N]
 *                  [--first-step K] > FILE
 * sync --ports/--group: worker i connects to port P(i / G) as worker i % G (G local
 * workers per relay, normstatd --upstream). Common: --run-exact 1 uses --run as the run name
 * (ingest: NAME-cI), else a pid suffix keeps runs apart; --first-step K starts at step 1000000 + K.
 * ingest --split 1: every connection reports into one run (NAME-PID, world
 * size 1), connection i the part i of the layers (bench_model.h), so the
 * connections report different layers of one run; channel_rps counts the
 * channels of the acknowledged reports per second.
 *
 * --answer asks for the answer in that format (an Accept header; without it the
 * answer follows the request's format); answer_bytes is the mean answer body.
 *
 * SPEC is "resnet50" (53 BatchNorm layers of torchvision's ResNet-50, 26,560
 * channels) or "NxC" (N layers of C channels). Each request is one worker's
 * report of one step; the bodies are encoded once with ns_report_encode() and
 * only their step digits are rewritten per request, so the generator costs
 * little CPU. Results are one line of key=value pairs on stdout. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <uv.h>

#include <normstat/proto.h>

#include "bench_model.h"

#define STEP_BASE   1000000ull /* 7 digits, rewritten in place */
#define STEP_DIGITS 7
#define STEP_LAST   9999999ull
#define HDR_MAX     4096

/* ---------------------------------------------------------------- options */

typedef struct opts_s {
    const char *mode;
    int port;
    ns_format_t format;
    int conns;
    const char *layers;
    unsigned workers;
    double seconds;
    uint64_t max;
    long pid;
    const char *run;
    const char *path;
    int warmup;
    int run_exact;       /* use --run as given (no pid and connection suffix) */
    uint64_t first_step; /* steps start at STEP_BASE + first_step */
    unsigned worker;     /* body: the worker */
    int split;           /* ingest: one run, connection i reports part i of the layers */
    const char *ports;   /* sync: one port per group of workers */
    unsigned group;      /* sync: workers per port (their local ranks 0..G-1) */
    int answer;          /* an ns_format_t sent as Accept, or -1: none */
} opts_t;

static void die(const char *what)
{
    fprintf(stderr, "loadgen: %s\n", what);
    exit(2);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static double self_cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec * 1e-6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec * 1e-6;
}

/* utime + stime of another process from /proc/PID/stat, in seconds; -1 if unknown. */
static double proc_cpu_s(long pid)
{
    if (pid <= 0)
        return -1;
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *p = strrchr(buf, ')'); /* the command name may hold spaces */
    if (p == NULL)
        return -1;
    unsigned long long ut = 0, st = 0;
    /* After ")": state(3) ... utime is field 14, stime 15. */
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
        return -1;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

/* ---------------------------------------------------------------- reports */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static double rng_unit(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (double)(rng_state >> 11) * (1.0 / 9007199254740992.0);
}

/* One body of worker 'worker' at STEP_BASE; *step_at is the offset of its step digits. */
static char *body_make(const model_t *m, ns_format_t fmt, unsigned worker, int64_t world_size,
                       size_t *len, size_t *step_at)
{
    ns_report_t r;
    memset(&r, 0, sizeof(r));
    r.step = STEP_BASE;
    r.worker = worker;
    r.update = NS_UPDATE_EMA | NS_UPDATE_PRECISE;
    r.world_size = world_size;
    r.n_layers = m->n;
    r.layers = calloc(m->n, sizeof(*r.layers));
    if (r.layers == NULL)
        die("out of memory");
    rng_state = 0x9e3779b97f4a7c15ull + worker;
    for (size_t i = 0; i < m->n; i++) {
        ns_layer_report_t *l = &r.layers[i];
        snprintf(l->name, sizeof(l->name), "%s", m->names[i]);
        l->count = 200704;
        l->channels = m->chans[i];
        l->mean = malloc(l->channels * sizeof(float));
        l->var = malloc(l->channels * sizeof(float));
        if (l->mean == NULL || l->var == NULL)
            die("out of memory");
        for (size_t c = 0; c < l->channels; c++) {
            l->mean[c] = (float)(rng_unit() * 2.0 - 1.0);
            l->var[c] = (float)(0.5 + rng_unit());
        }
    }
    ns_buf_t buf;
    ns_buf_init(&buf, 0);
    ns_error_detail_t err;
    memset(&err, 0, sizeof(err));
    if (ns_report_encode(&buf, fmt, &r, &err) != 0) {
        fprintf(stderr, "loadgen: encode: %s\n", err.message);
        exit(2);
    }
    for (size_t i = 0; i < m->n; i++) {
        free(r.layers[i].mean);
        free(r.layers[i].var);
    }
    free(r.layers);
    char *body = ns_buf_take(&buf, len);
    /* Both forms start with the step: {"step":1000000 / {"__metadata__":{"step":"1000000". */
    const char *key = fmt == NS_FORMAT_JSON ? body : body + 8;
    const char *s = strstr(key, "\"step\"");
    const char *d = s ? strstr(s, "1000000") : NULL;
    if (d == NULL)
        die("step not found in the encoded body");
    *step_at = (size_t)(d - body);
    return body;
}

static void body_set_step(char *body, size_t at, uint64_t step)
{
    char digits[STEP_DIGITS + 1];
    snprintf(digits, sizeof(digits), "%07" PRIu64, step);
    memcpy(body + at, digits, STEP_DIGITS);
}

/* ---------------------------------------------------------------- connections */

typedef struct conn_s conn_t;
typedef struct gen_s {
    opts_t o;
    uv_loop_t *loop;
    conn_t *conns;
    int n_conns;
    double t_start, t_stop;
    uint64_t issued, done, ok, errors, reconnects, body_bytes, answer_bytes;
    uint64_t channels_ok; /* channels of the acknowledged reports */
    int stopping, failed, guard_closed;
    uint64_t last_k; /* sync: every worker sends steps [0, last_k) */
    double *lat;     /* per response, seconds; sync: per worker per step after warm-up */
    size_t n_lat, cap_lat;
    uv_timer_t guard;
} gen_t;

struct conn_s {
    gen_t *g;
    int id;
    int port;
    uv_tcp_t *tcp;
    uv_connect_t creq;
    uv_write_t wreq;
    char **tpl;      /* one body per worker this connection sends for */
    size_t *tpl_len; /* their lengths */
    size_t *tpl_step;
    unsigned n_tpl;
    size_t chans; /* channels of one of its bodies */
    char run[160];
    uint64_t k; /* requests sent on this connection */
    char hdr_out[512];
    /* response parsing */
    char hdr_in[HDR_MAX];
    size_t hdr_len;
    int in_body;
    size_t body_left;
    int status, close_after;
    char errbuf[256];
    size_t errlen;
    int wrote, answered, busy, reopen;
    double t0;
    char rbuf[65536];
};

static void conn_next(conn_t *c);
static void conn_open(conn_t *c);

static void gen_maybe_finish(gen_t *g)
{
    for (int i = 0; i < g->n_conns; i++)
        if (g->conns[i].busy || g->conns[i].tcp != NULL)
            return;
    if (g->guard_closed)
        return;
    g->guard_closed = 1;
    uv_timer_stop(&g->guard);
    uv_close((uv_handle_t *)&g->guard, NULL);
}

static void on_closed(uv_handle_t *h)
{
    conn_t *c = h->data;
    free(h);
    if (c->reopen && !c->g->failed) {
        c->reopen = 0;
        conn_open(c); /* the server closed a keep-alive connection: reconnect */
        return;
    }
    gen_maybe_finish(c->g);
}

static void conn_close(conn_t *c)
{
    if (c->tcp != NULL) {
        uv_tcp_t *t = c->tcp;
        c->tcp = NULL;
        t->data = c;
        uv_close((uv_handle_t *)t, on_closed);
    }
}

static void lat_push(gen_t *g, double v)
{
    if (g->n_lat == g->cap_lat) {
        size_t cap = g->cap_lat ? g->cap_lat * 2 : 4096;
        double *p = realloc(g->lat, cap * sizeof(*p));
        if (p == NULL)
            die("out of memory");
        g->lat = p;
        g->cap_lat = cap;
    }
    g->lat[g->n_lat++] = v;
}

static void request_done(conn_t *c)
{
    gen_t *g = c->g;
    double t = now_s();
    c->busy = 0;
    g->done++;
    if (c->status >= 200 && c->status < 300) {
        g->ok++;
        g->channels_ok += c->chans;
        int skip =
            strcmp(g->o.mode, "sync") == 0 && c->k <= g->o.first_step + (uint64_t)g->o.warmup;
        if (!skip)
            lat_push(g, t - c->t0);
    } else {
        g->errors++;
        if (g->errors <= 3)
            fprintf(stderr, "loadgen: HTTP %d: %.*s\n", c->status, (int)c->errlen, c->errbuf);
    }
    if (c->close_after) {
        g->reconnects++;
        c->reopen = 1;
        conn_close(c);
        return;
    }
    conn_next(c);
}

static void maybe_done(conn_t *c)
{
    if (c->busy && c->wrote && c->answered)
        request_done(c);
}

/* Parse the status line and headers; 0 when complete, 1 need more, -1 error. */
static int parse_head(conn_t *c)
{
    c->hdr_in[c->hdr_len] = '\0';
    char *end = strstr(c->hdr_in, "\r\n\r\n");
    if (end == NULL)
        return c->hdr_len >= HDR_MAX - 1 ? -1 : 1;
    if (sscanf(c->hdr_in, "HTTP/1.%*d %d", &c->status) != 1)
        return -1;
    c->body_left = 0;
    c->close_after = 0;
    for (char *line = strstr(c->hdr_in, "\r\n") + 2; line < end; line = strstr(line, "\r\n") + 2) {
        if (strncasecmp(line, "Content-Length:", 15) == 0) {
            c->body_left = strtoull(line + 15, NULL, 10);
            c->g->answer_bytes += c->body_left;
        }
        else if (strncasecmp(line, "Connection:", 11) == 0 && strstr(line, "close") != NULL &&
                 strstr(line, "close") < strstr(line, "\r\n"))
            c->close_after = 1;
        else if (strncasecmp(line, "Transfer-Encoding:", 18) == 0)
            return -1; /* not sent by the servers measured here */
    }
    return (int)((end + 4) - c->hdr_in); /* offset of the body (> 1) */
}

static void consume_body(conn_t *c, const char *p, size_t n)
{
    if (c->status >= 300 && c->errlen < sizeof(c->errbuf)) {
        size_t k = sizeof(c->errbuf) - c->errlen;
        k = k < n ? k : n;
        memcpy(c->errbuf + c->errlen, p, k);
        c->errlen += k;
    }
    c->body_left -= n;
    if (c->body_left == 0) {
        c->answered = 1;
        c->in_body = 0;
        maybe_done(c);
    }
}

static void on_alloc(uv_handle_t *h, size_t size, uv_buf_t *buf)
{
    (void)size;
    conn_t *c = h->data;
    *buf = uv_buf_init(c->rbuf, sizeof(c->rbuf));
}

static void conn_fail(conn_t *c, const char *what)
{
    fprintf(stderr, "loadgen: connection %d: %s\n", c->id, what);
    c->g->failed = 1;
    c->g->stopping = 1;
    c->busy = 0;
    conn_close(c);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    conn_t *c = s->data;
    if (nread < 0) {
        if (c->busy)
            conn_fail(c, nread == UV_EOF ? "closed by the server mid-request"
                                         : uv_strerror((int)nread));
        else
            conn_close(c);
        return;
    }
    const char *p = buf->base;
    size_t n = (size_t)nread;
    while (n > 0) {
        if (!c->busy)
            return conn_fail(c, "bytes without a request");
        if (!c->in_body) {
            size_t room = HDR_MAX - 1 - c->hdr_len;
            size_t take = n < room ? n : room;
            size_t before = c->hdr_len;
            memcpy(c->hdr_in + c->hdr_len, p, take);
            c->hdr_len += take;
            int off = parse_head(c);
            if (off < 0)
                return conn_fail(c, "bad response head");
            if (off == 1) {
                p += take;
                n -= take;
                continue;
            }
            size_t used = (size_t)off - before;
            p += used;
            n -= used;
            c->in_body = 1;
            c->errlen = 0;
            if (c->body_left == 0) {
                c->in_body = 0;
                c->answered = 1;
                maybe_done(c);
                continue;
            }
        }
        size_t k = n < c->body_left ? n : c->body_left;
        consume_body(c, p, k);
        p += k;
        n -= k;
    }
}

static void on_write(uv_write_t *w, int status)
{
    conn_t *c = w->data;
    if (status < 0) {
        if (c->tcp != NULL)
            conn_fail(c, uv_strerror(status));
        return;
    }
    c->wrote = 1;
    maybe_done(c);
}

static void conn_next(conn_t *c)
{
    gen_t *g = c->g;
    double t = now_s();
    if (strcmp(g->o.mode, "sync") == 0) {
        /* Every worker must send the same steps, or the last one would wait for
         * a worker that stopped: on time-out, finish the steps already begun. */
        if (g->last_k == 0 && (t >= g->t_stop || g->failed)) {
            g->last_k = 1;
            for (int i = 0; i < g->n_conns; i++)
                if (g->conns[i].k > g->last_k)
                    g->last_k = g->conns[i].k;
        }
        if (c->k >= g->o.first_step + g->o.max || (g->last_k != 0 && c->k >= g->last_k) ||
            g->failed) {
            g->stopping = 1;
            conn_close(c);
            return;
        }
    } else if (g->stopping || t >= g->t_stop || g->issued >= g->o.max ||
               STEP_BASE + c->k / c->n_tpl > STEP_LAST) {
        g->stopping = 1;
        conn_close(c);
        return;
    }
    unsigned w = (unsigned)(c->k % c->n_tpl);
    uint64_t step = STEP_BASE + c->k / c->n_tpl;
    body_set_step(c->tpl[w], c->tpl_step[w], step);
    const char *accept = g->o.answer < 0                  ? ""
                         : g->o.answer == NS_FORMAT_JSON ? "Accept: application/json\r\n"
                                                         : "Accept: application/safetensors\r\n";
    int hl =
        snprintf(c->hdr_out, sizeof(c->hdr_out),
                 "POST /v1/runs/%s/%s HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 "Content-Type: %s\r\n%sContent-Length: %zu\r\n\r\n",
                 c->run, g->o.path,
                 g->o.format == NS_FORMAT_JSON ? "application/json" : "application/safetensors",
                 accept, c->tpl_len[w]);
    uv_buf_t bufs[2] = {uv_buf_init(c->hdr_out, (unsigned)hl),
                        uv_buf_init(c->tpl[w], (unsigned)c->tpl_len[w])};
    c->k++;
    g->issued++;
    g->body_bytes += c->tpl_len[w];
    c->busy = 1;
    c->wrote = c->answered = 0;
    c->in_body = 0;
    c->hdr_len = 0;
    c->t0 = t;
    c->wreq.data = c;
    int rc = uv_write(&c->wreq, (uv_stream_t *)c->tcp, bufs, 2, on_write);
    if (rc != 0)
        conn_fail(c, uv_strerror(rc));
}

static void on_connect(uv_connect_t *req, int status)
{
    conn_t *c = req->data;
    if (status < 0 || c->tcp == NULL)
        return conn_fail(c, status < 0 ? uv_strerror(status) : "closed");
    uv_tcp_nodelay(c->tcp, 1);
    uv_read_start((uv_stream_t *)c->tcp, on_alloc, on_read);
    conn_next(c);
}

static void conn_open(conn_t *c)
{
    c->tcp = malloc(sizeof(*c->tcp));
    if (c->tcp == NULL)
        die("out of memory");
    uv_tcp_init(c->g->loop, c->tcp);
    c->tcp->data = c;
    struct sockaddr_in addr;
    uv_ip4_addr("127.0.0.1", c->port, &addr);
    c->creq.data = c;
    int rc = uv_tcp_connect(&c->creq, c->tcp, (const struct sockaddr *)&addr, on_connect);
    if (rc != 0)
        conn_fail(c, uv_strerror(rc));
}

/* A hard bound: whatever the server does, the run ends seconds + 30 s after it began. */
static void on_guard(uv_timer_t *t)
{
    gen_t *g = t->data;
    fprintf(stderr, "loadgen: time limit reached with requests in flight\n");
    g->failed = 1;
    uv_stop(g->loop);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double pct(const double *v, size_t n, double p)
{
    if (n == 0)
        return 0;
    size_t i = (size_t)(p * (double)(n - 1) + 0.5);
    return v[i < n ? i : n - 1];
}

/* ingest: conns connections, each with its own run of world_size W, reports of
 * worker k % W at step k / W; sync: W connections, one per worker, one shared run. */
static int run_http(const opts_t *o)
{
    model_t m;
    model_make(&m, o->layers);
    gen_t g;
    memset(&g, 0, sizeof(g));
    g.o = *o;
    g.loop = uv_default_loop();
    int is_sync = strcmp(o->mode, "sync") == 0;
    g.n_conns = is_sync ? (int)o->workers : o->conns;
    g.conns = calloc((size_t)g.n_conns, sizeof(*g.conns));
    if (g.conns == NULL)
        die("out of memory");
    unsigned pid = (unsigned)getpid();
    const char *ports = o->ports;
    for (int i = 0; i < g.n_conns; i++) {
        conn_t *c = &g.conns[i];
        c->g = &g;
        c->id = i;
        c->port = o->port;
        unsigned worker = (unsigned)i;
        if (ports != NULL && is_sync) {
            if (*ports == '\0')
                die("--ports lists fewer ports than --workers / --group");
            c->port = atoi(ports);
            worker = (unsigned)i % o->group;
            if ((unsigned)i % o->group == o->group - 1) {
                const char *comma = strchr(ports, ',');
                ports = comma != NULL ? comma + 1 : "";
            }
        }
        c->n_tpl = is_sync ? 1 : o->workers;
        c->tpl = calloc(c->n_tpl, sizeof(*c->tpl));
        c->tpl_len = calloc(c->n_tpl, sizeof(*c->tpl_len));
        c->tpl_step = calloc(c->n_tpl, sizeof(*c->tpl_step));
        if (c->tpl == NULL || c->tpl_len == NULL || c->tpl_step == NULL)
            die("out of memory");
        model_t part = m;
        if (o->split)
            model_part(&m, (unsigned)i, (unsigned)g.n_conns, &part);
        c->chans = part.total;
        for (unsigned w = 0; w < c->n_tpl; w++)
            c->tpl[w] = body_make(&part, o->format, is_sync ? worker : w, (int64_t)o->workers,
                                  &c->tpl_len[w], &c->tpl_step[w]);
        if (o->split)
            model_free(&part);
        c->k = o->first_step * c->n_tpl;
        if (o->split)
            snprintf(c->run, sizeof(c->run), "%s-%u", o->run, pid);
        else if (o->run_exact)
            snprintf(c->run, sizeof(c->run), "%s%s%d", o->run, is_sync ? "" : "-c",
                     is_sync ? 0 : i);
        else if (is_sync)
            snprintf(c->run, sizeof(c->run), "%s-%u", o->run, pid);
        else
            snprintf(c->run, sizeof(c->run), "%s-%u-c%d", o->run, pid, i);
    }
    double srv0 = proc_cpu_s(o->pid), cpu0 = self_cpu_s();
    g.t_start = now_s();
    g.t_stop = g.t_start + o->seconds;
    uv_timer_init(g.loop, &g.guard);
    g.guard.data = &g;
    uv_timer_start(&g.guard, on_guard, (uint64_t)((o->seconds + 30) * 1000), 0);
    for (int i = 0; i < g.n_conns; i++)
        conn_open(&g.conns[i]);
    uv_run(g.loop, UV_RUN_DEFAULT);
    double el = now_s() - g.t_start;
    double cpu = self_cpu_s() - cpu0, srv1 = proc_cpu_s(o->pid);
    double srv = srv0 >= 0 && srv1 >= 0 ? srv1 - srv0 : -1;
    qsort(g.lat, g.n_lat, sizeof(*g.lat), cmp_double);
    size_t body_len = g.conns[0].tpl_len[0];
    printf("mode=%s format=%s layers=%s channels=%zu n_layers=%zu conns=%d workers=%u "
           "body_bytes=%zu requests=%" PRIu64 " ok=%" PRIu64 " errors=%" PRIu64
           " reconnects=%" PRIu64 " seconds=%.4f rps=%.3f mbps=%.3f client_cpu=%.4f "
           "server_cpu=%.4f p50_us=%.1f p99_us=%.1f samples=%zu channel_rps=%.1f "
           "answer_bytes=%.0f\n",
           o->mode, o->format == NS_FORMAT_JSON ? "json" : "st", o->layers, m.total, m.n, g.n_conns,
           o->workers, body_len, g.done, g.ok, g.errors, g.reconnects, el, (double)g.ok / el,
           (double)g.body_bytes / el / 1e6, cpu, srv, pct(g.lat, g.n_lat, 0.50) * 1e6,
           pct(g.lat, g.n_lat, 0.99) * 1e6, g.n_lat, (double)g.channels_ok / el,
           g.done ? (double)g.answer_bytes / (double)g.done : 0.0);
    fflush(stdout);
    return g.failed || g.ok == 0 ? 1 : 0;
}

/* ---------------------------------------------------------------- in-process decoders */

/* json_loadb and a walk over every layer's arrays: what a plain jansson tree costs. */
static double jansson_walk(const char *body, size_t len)
{
    json_error_t jerr;
    json_t *root = json_loadb(body, len, 0, &jerr);
    if (root == NULL)
        die("jansson rejected the body");
    double sum = 0;
    json_t *layers = json_object_get(root, "layers"), *layer;
    const char *name;
    json_object_foreach(layers, name, layer)
    {
        (void)name;
        sum += json_number_value(json_object_get(layer, "count"));
        static const char *arrays[2] = {"mean", "var"};
        for (int a = 0; a < 2; a++) {
            json_t *arr = json_object_get(layer, arrays[a]);
            size_t n = json_array_size(arr);
            for (size_t i = 0; i < n; i++)
                sum += (float)json_number_value(json_array_get(arr, i));
        }
    }
    json_decref(root);
    return sum;
}

typedef enum { DEC_JANSSON, DEC_NS_JSON, DEC_NS_ST } dec_kind_t;

static double decode_rate(dec_kind_t kind, const char *body, size_t len, double seconds,
                          double *sink)
{
    double t0 = now_s(), t;
    uint64_t n = 0;
    do {
        if (kind == DEC_JANSSON) {
            *sink += jansson_walk(body, len);
        } else {
            ns_report_t *r = NULL;
            ns_error_detail_t err;
            memset(&err, 0, sizeof(err));
            int rc = kind == DEC_NS_JSON
                         ? ns_report_decode_json(&r, body, len, &err)
                         : ns_report_decode_safetensors(&r, (const uint8_t *)body, len, &err);
            if (rc != 0) {
                fprintf(stderr, "loadgen: decode: %s\n", err.message);
                exit(2);
            }
            *sink += r->layers[0].mean[0];
            ns_report_free(r);
        }
        n++;
        t = now_s();
    } while (t - t0 < seconds || n < 3);
    return (double)n / (t - t0);
}

static int run_decode(const opts_t *o)
{
    model_t m;
    model_make(&m, o->layers);
    size_t jl, js, sl, ss;
    char *jb = body_make(&m, NS_FORMAT_JSON, 0, 1, &jl, &js);
    char *sb = body_make(&m, NS_FORMAT_SAFETENSORS, 0, 1, &sl, &ss);
    double sink = 0;
    double each = o->seconds / 3;
    double rj = decode_rate(DEC_JANSSON, jb, jl, each, &sink);
    double rn = decode_rate(DEC_NS_JSON, jb, jl, each, &sink);
    double rs = decode_rate(DEC_NS_ST, sb, sl, each, &sink);
    printf("mode=decode layers=%s channels=%zu n_layers=%zu json_bytes=%zu st_bytes=%zu "
           "jansson_rps=%.3f ns_json_rps=%.3f ns_st_rps=%.3f jansson_mbps=%.3f sink=%g\n",
           o->layers, m.total, m.n, jl, sl, rj, rn, rs, rj * (double)jl / 1e6, sink);
    free(jb);
    free(sb);
    return 0;
}

/* One body on stdout (step STEP_BASE + --first-step, worker --worker, world_size
 * --workers), for scripts that send a few requests of their own. */
static int run_body(const opts_t *o)
{
    model_t m;
    model_make(&m, o->layers);
    size_t len, at;
    char *b = body_make(&m, o->format, o->worker, (int64_t)o->workers, &len, &at);
    body_set_step(b, at, STEP_BASE + o->first_step);
    fprintf(stderr, "step_offset=%zu\n", at);
    int rc = fwrite(b, 1, len, stdout) == len && fflush(stdout) == 0 ? 0 : 1;
    free(b);
    return rc;
}

/* ---------------------------------------------------------------- main */

int main(int argc, char **argv)
{
    if (argc < 2)
        die("usage: loadgen ingest|sync|decode [options] (see the top of loadgen.c)");
    opts_t o = {.mode = argv[1],
                .port = 0,
                .format = NS_FORMAT_JSON,
                .conns = 2,
                .layers = "resnet50",
                .workers = 1,
                .seconds = 3,
                .max = 1000000,
                .pid = 0,
                .run = "bench",
                .path = NULL,
                .warmup = 5,
                .answer = -1};
    for (int i = 2; i < argc; i++) {
        const char *k = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (v == NULL)
            die("option without a value");
        i++;
        if (strcmp(k, "--port") == 0)
            o.port = atoi(v);
        else if (strcmp(k, "--format") == 0)
            o.format = strcmp(v, "json") == 0 ? NS_FORMAT_JSON : NS_FORMAT_SAFETENSORS;
        else if (strcmp(k, "--conns") == 0)
            o.conns = atoi(v);
        else if (strcmp(k, "--layers") == 0)
            o.layers = v;
        else if (strcmp(k, "--workers") == 0)
            o.workers = (unsigned)atoi(v);
        else if (strcmp(k, "--seconds") == 0)
            o.seconds = atof(v);
        else if (strcmp(k, "--max") == 0 || strcmp(k, "--iters") == 0)
            o.max = strtoull(v, NULL, 10);
        else if (strcmp(k, "--pid") == 0)
            o.pid = atol(v);
        else if (strcmp(k, "--run") == 0)
            o.run = v;
        else if (strcmp(k, "--path") == 0)
            o.path = v;
        else if (strcmp(k, "--warmup") == 0)
            o.warmup = atoi(v);
        else if (strcmp(k, "--split") == 0)
            o.split = atoi(v);
        else if (strcmp(k, "--run-exact") == 0)
            o.run_exact = atoi(v);
        else if (strcmp(k, "--first-step") == 0)
            o.first_step = strtoull(v, NULL, 10);
        else if (strcmp(k, "--worker") == 0)
            o.worker = (unsigned)atoi(v);
        else if (strcmp(k, "--ports") == 0)
            o.ports = v;
        else if (strcmp(k, "--group") == 0)
            o.group = (unsigned)atoi(v);
        else if (strcmp(k, "--answer") == 0)
            o.answer = strcmp(v, "json") == 0 ? NS_FORMAT_JSON : NS_FORMAT_SAFETENSORS;
        else
            die("unknown option");
    }
    if (o.workers < 1 || o.conns < 1 || o.seconds <= 0)
        die("--workers, --conns and --seconds must be positive");
    if (strcmp(o.mode, "decode") == 0)
        return run_decode(&o);
    if (strcmp(o.mode, "body") == 0)
        return run_body(&o);
    if (o.ports != NULL && (o.group < 1 || o.workers % o.group != 0))
        die("--ports needs --group G dividing --workers");
    if (o.port <= 0 && o.ports == NULL)
        die("--port is required");
    if (strcmp(o.mode, "sync") == 0) {
        o.path = o.path ? o.path : "sync";
    } else if (strcmp(o.mode, "ingest") == 0) {
        o.path = o.path ? o.path : "batches";
    } else {
        die("mode: ingest, sync or decode");
    }
    return run_http(&o);
}
