/* metrics.c - Prometheus text exposition of normstatd's counters (GET /metrics). */
#include "metrics.h"

#include <dirent.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "http.h"
#include "registry.h"
#include "store.h"

/* Dimensions of the request counters: every route plus "unmatched", a fixed
 * list of methods and statuses (anything else is "other"), so counting is
 * one atomic increment with no lock and no allocation. */
#define MAX_ROUTES 32
static const char *const methods[] = {"GET", "HEAD", "PUT", "POST", "DELETE", "other"};
#define N_METHODS (sizeof(methods) / sizeof(methods[0]))
static const int statuses[] = {200, 201, 202, 204, 400, 401, 403, 404, 405,
                               409, 413, 415, 422, 429, 500, 503, 504, 0};
#define N_STATUSES (sizeof(statuses) / sizeof(statuses[0]))
static const double buckets[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                 0.25,   0.5,   1,      2.5,   5,    10,    30,   60};
#define N_BUCKETS (sizeof(buckets) / sizeof(buckets[0]))

static const int error_codes[] = {
#define CODE(owner, name, code, status, wire, msg) code,
    NS_WIRE_ERROR_MAP(CODE)
#undef CODE
};
#define N_ERRORS (sizeof(error_codes) / sizeof(error_codes[0]))

static atomic_uint_fast64_t requests[MAX_ROUTES + 1][N_METHODS][N_STATUSES];
static atomic_uint_fast64_t duration_buckets[MAX_ROUTES + 1][N_BUCKETS + 1];
static atomic_uint_fast64_t duration_sum_ns[MAX_ROUTES + 1];
static atomic_uint_fast64_t rejections[N_ERRORS];
static double start_time;

void nsd_metrics_init(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    start_time = (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static size_t route_slot(const nsd_route_t *route)
{
    size_t n;
    nsd_routes_table(&n);
    if (route == NULL)
        return n < MAX_ROUTES ? n : MAX_ROUTES;
    size_t i = nsd_routes_index(route);
    return i < MAX_ROUTES ? i : MAX_ROUTES;
}

void nsd_metrics_request(const nsd_route_t *route, const char *method, int status, double seconds)
{
    size_t r = route_slot(route), m = N_METHODS - 1, s = N_STATUSES - 1, b = N_BUCKETS;
    for (size_t i = 0; i + 1 < N_METHODS; i++)
        if (strcmp(method, methods[i]) == 0)
            m = i;
    for (size_t i = 0; i + 1 < N_STATUSES; i++)
        if (statuses[i] == status)
            s = i;
    for (size_t i = 0; i < N_BUCKETS; i++)
        if (seconds <= buckets[i]) {
            b = i;
            break;
        }
    atomic_fetch_add_explicit(&requests[r][m][s], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&duration_buckets[r][b], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&duration_sum_ns[r], (uint_fast64_t)(seconds * 1e9),
                              memory_order_relaxed);
}

void nsd_metrics_rejection(int code)
{
    for (size_t i = 0; i < N_ERRORS; i++)
        if (error_codes[i] == code)
            atomic_fetch_add_explicit(&rejections[i], 1, memory_order_relaxed);
}

static int header(ns_buf_t *dst, const char *name, const char *type, const char *help)
{
    return ns_buf_printf(dst, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* One unlabelled sample with its HELP and TYPE lines; 'fmt' formats the value. */
static int sample(ns_buf_t *dst, const char *name, const char *type, const char *help,
                  const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static int sample(ns_buf_t *dst, const char *name, const char *type, const char *help,
                  const char *fmt, ...)
{
    char value[64];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(value, sizeof(value), fmt, ap);
    va_end(ap);
    int rc = header(dst, name, type, help);
    return rc ? rc : ns_buf_printf(dst, "%s %s\n", name, value);
}

static int scalar(ns_buf_t *dst, const char *name, const char *type, const char *help, double value)
{
    return sample(dst, name, type, help, "%.17g", value);
}

/* Process facts from /proc (Linux); absent elsewhere. */
static int render_process(ns_buf_t *dst)
{
    int rc = 0;
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) == 0)
        rc = scalar(dst, "process_cpu_seconds_total", "counter",
                    "Total user and system CPU time spent in seconds.",
                    (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec * 1e-6 +
                        (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec * 1e-6);
    FILE *f = fopen("/proc/self/statm", "r");
    if (f != NULL) {
        unsigned long long size, resident;
        long page = sysconf(_SC_PAGESIZE);
        if (fscanf(f, "%llu %llu", &size, &resident) == 2) {
            rc = rc ? rc
                    : scalar(dst, "process_virtual_memory_bytes", "gauge",
                             "Virtual memory size in bytes.", (double)size * (double)page);
            rc = rc ? rc
                    : scalar(dst, "process_resident_memory_bytes", "gauge",
                             "Resident memory size in bytes.", (double)resident * (double)page);
        }
        fclose(f);
    }
    DIR *d = opendir("/proc/self/fd");
    if (d != NULL) {
        long n = 0;
        while (readdir(d) != NULL)
            n++;
        closedir(d);
        rc = rc ? rc
                : scalar(dst, "process_open_fds", "gauge", "Number of open file descriptors.",
                         (double)(n - 3)); /* ".", ".." and the DIR's own fd */
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
        rc = rc ? rc
                : scalar(dst, "process_max_fds", "gauge",
                         "Maximum number of open file descriptors.", (double)rl.rlim_cur);
    rc = rc ? rc
            : scalar(dst, "process_start_time_seconds", "gauge",
                     "Start time of the process since unix epoch in seconds.", start_time);
    return rc;
}

int nsd_metrics_render(ns_buf_t *dst, nsd_registry_t *reg)
{
    size_t n_routes;
    const nsd_route_t *table = nsd_routes_table(&n_routes);
    if (n_routes > MAX_ROUTES)
        n_routes = MAX_ROUTES;
    int rc = header(dst, "normstat_http_requests_total", "counter",
                    "HTTP requests answered, by route, method and status.");
    for (size_t r = 0; r <= n_routes && rc == 0; r++) {
        const char *label = r < n_routes ? table[r].label : "unmatched";
        for (size_t m = 0; m < N_METHODS; m++)
            for (size_t s = 0; s < N_STATUSES && rc == 0; s++) {
                uint64_t v = atomic_load_explicit(&requests[r][m][s], memory_order_relaxed);
                if (v == 0)
                    continue;
                char status[16];
                if (statuses[s] != 0)
                    snprintf(status, sizeof(status), "%d", statuses[s]);
                else
                    snprintf(status, sizeof(status), "other");
                rc = ns_buf_printf(dst,
                                   "normstat_http_requests_total{route=\"%s\",method=\"%s\","
                                   "status=\"%s\"} %llu\n",
                                   label, methods[m], status, (unsigned long long)v);
            }
    }
    rc = rc ? rc
            : header(dst, "normstat_http_request_duration_seconds", "histogram",
                     "Time from a request's first byte of headers to its answer.");
    for (size_t r = 0; r <= n_routes && rc == 0; r++) {
        const char *label = r < n_routes ? table[r].label : "unmatched";
        uint64_t counts[N_BUCKETS + 1], total = 0;
        for (size_t b = 0; b <= N_BUCKETS; b++) {
            counts[b] = atomic_load_explicit(&duration_buckets[r][b], memory_order_relaxed);
            total += counts[b];
        }
        if (total == 0)
            continue;
        uint64_t cum = 0;
        for (size_t b = 0; b < N_BUCKETS && rc == 0; b++) {
            cum += counts[b];
            rc = ns_buf_printf(dst,
                               "normstat_http_request_duration_seconds_bucket{route=\"%s\","
                               "le=\"%g\"} %llu\n",
                               label, buckets[b], (unsigned long long)cum);
        }
        double sum = (double)atomic_load_explicit(&duration_sum_ns[r], memory_order_relaxed) * 1e-9;
        rc = rc ? rc
                : ns_buf_printf(dst,
                                "normstat_http_request_duration_seconds_bucket{route=\"%s\","
                                "le=\"+Inf\"} %llu\n"
                                "normstat_http_request_duration_seconds_sum{route=\"%s\"} %.9f\n"
                                "normstat_http_request_duration_seconds_count{route=\"%s\"} %llu\n",
                                label, (unsigned long long)total, label, sum, label,
                                (unsigned long long)total);
    }

    rc = rc ? rc
            : header(dst, "normstat_rejections_total", "counter",
                     "Requests refused, by reason (the error code of the answer).");
    for (size_t i = 0; i < N_ERRORS && rc == 0; i++)
        rc = ns_buf_printf(
            dst, "normstat_rejections_total{reason=\"%s\"} %llu\n", ns_error_name(error_codes[i]),
            (unsigned long long)atomic_load_explicit(&rejections[i], memory_order_relaxed));

    nsd_counters_t c;
    memset(&c, 0, sizeof(c));
    if (reg != NULL)
        nsd_registry_counters(reg, &c);
    static const struct {
        const char *name, *type, *help;
        size_t offset;
    } registry_rows[] = {
        {"normstat_steps_finalized_total", "counter",
         "Pending steps finalized (complete, or partial at their timeout).",
         offsetof(nsd_counters_t, steps_finalized)},
        {"normstat_steps_applied_total", "counter",
         "Finalized steps applied to the population statistics.",
         offsetof(nsd_counters_t, steps_applied)},
        {"normstat_steps_timed_out_total", "counter", "Pending steps that reached sync_timeout_ms.",
         offsetof(nsd_counters_t, steps_timed_out)},
        {"normstat_steps_dropped_total", "counter", "Timed-out steps discarded (on_timeout drop).",
         offsetof(nsd_counters_t, steps_dropped)},
        {"normstat_steps_skipped_total", "counter",
         "Applied steps whose global count was below 2 (EMA untouched).",
         offsetof(nsd_counters_t, steps_skipped)},
        {"normstat_reports_accepted_total", "counter", "Worker reports accepted.",
         offsetof(nsd_counters_t, reports_accepted)},
        {"normstat_pending_steps", "gauge", "Steps waiting for workers.",
         offsetof(nsd_counters_t, pending_steps)},
        {"normstat_sync_waiters", "gauge", "/sync requests waiting for their step.",
         offsetof(nsd_counters_t, sync_waiters)},
        {"normstat_grad_steps_completed_total", "counter",
         "Gradient-sum steps (POST /grad) completed by every worker.",
         offsetof(nsd_counters_t, grad_steps_completed)},
        {"normstat_grad_steps_timed_out_total", "counter",
         "Gradient-sum steps discarded at sync_timeout_ms (their waiters got 504).",
         offsetof(nsd_counters_t, grad_steps_timed_out)},
        {"normstat_grad_pending_steps", "gauge", "Gradient-sum steps waiting for workers.",
         offsetof(nsd_counters_t, grad_pending_steps)},
        {"normstat_grad_waiters", "gauge", "/grad requests waiting for their step.",
         offsetof(nsd_counters_t, grad_waiters)},
        {"normstat_runs", "gauge", "Runs held.", offsetof(nsd_counters_t, runs)},
        {"normstat_memory_bytes", "gauge", "Bytes of statistics state and pending arrivals.",
         offsetof(nsd_counters_t, memory_bytes)},
    };
    for (size_t i = 0; i < sizeof(registry_rows) / sizeof(registry_rows[0]) && rc == 0; i++) {
        uint64_t v;
        memcpy(&v, (const char *)&c + registry_rows[i].offset, sizeof(v));
        rc = sample(dst, registry_rows[i].name, registry_rows[i].type, registry_rows[i].help,
                    "%llu", (unsigned long long)v);
    }
    rc = rc ? rc
            : header(dst, "normstat_build_info", "gauge",
                     "Version and statistics kernel of this daemon (value 1).");
    rc = rc ? rc
            : ns_buf_printf(dst, "normstat_build_info{version=\"%s\",kernel=\"%s\"} 1\n",
                            NS_VERSION_STRING, ns_core_kernel());
    return rc ? rc : render_process(dst);
}

/* The store's counters (all zero with --no-persist, so they always exist). */
static int render_store(ns_buf_t *dst, nsd_store_t *store)
{
    nsd_store_stats_t st;
    memset(&st, 0, sizeof(st));
    st.last_snapshot_age_ms = -1;
    if (store != NULL)
        nsd_store_stats(store, &st);
    int rc =
        sample(dst, "normstat_store_enabled", "gauge",
               "1 if the persistent store is in use (0 with --no-persist).", "%d", store != NULL);
    rc = rc ? rc
            : sample(dst, "normstat_store_commits_total", "counter",
                     "Group-committed store transactions.", "%llu", (unsigned long long)st.commits);
    rc = rc ? rc
            : sample(dst, "normstat_store_commit_failures_total", "counter",
                     "Store commits that failed (disk full, I/O error); each is retried.", "%llu",
                     (unsigned long long)st.commit_failures);
    rc = rc ? rc
            : sample(dst, "normstat_store_rows_total", "counter",
                     "Log rows committed (finalized steps, configurations, domains, resets).",
                     "%llu", (unsigned long long)st.rows);
    rc = rc ? rc
            : sample(dst, "normstat_store_snapshots_total", "counter",
                     "Run snapshots committed (periodic and checkpoint imports).", "%llu",
                     (unsigned long long)st.snapshots);
    rc = rc ? rc
            : sample(dst, "normstat_store_commit_seconds_total", "counter",
                     "Time spent committing (sum over commits).", "%.6f",
                     (double)st.commit_seconds_sum_us * 1e-6);
    rc = rc ? rc
            : sample(dst, "normstat_store_commit_last_seconds", "gauge",
                     "Duration of the last successful commit.", "%.6f",
                     (double)st.commit_last_us * 1e-6);
    rc = rc ? rc
            : sample(dst, "normstat_store_queued_jobs", "gauge",
                     "Changes waiting for the store's writer.", "%llu",
                     (unsigned long long)st.queued);
    rc = rc ? rc
            : sample(dst, "normstat_store_failing", "gauge",
                     "1 while store commits fail (writes are refused with 503).", "%d", st.failing);
    rc =
        rc ? rc
           : sample(dst, "normstat_store_last_snapshot_age_seconds", "gauge",
                    "Seconds since the last snapshot was committed (-1: none since start).", "%.3f",
                    st.last_snapshot_age_ms < 0 ? -1.0 : (double)st.last_snapshot_age_ms * 1e-3);
    return rc;
}

void nsd_h_metrics(nsd_request_t *req)
{
    ns_buf_t buf;
    ns_buf_init(&buf, 64u * 1024u * 1024u);
    int rc = nsd_metrics_render(&buf, req->server->registry);
    rc = rc ? rc
            : sample(&buf, "normstat_http_requests_in_flight", "gauge",
                     "Requests begun and not yet answered (this one included).", "%ld",
                     atomic_load(&req->server->in_flight));
    rc = rc ? rc : render_store(&buf, req->server->store);
    if (rc != 0) {
        ns_buf_free(&buf);
        nsd_respond_error(req, NS_ENOMEM, NULL);
        return;
    }
    size_t len;
    char *text = ns_buf_take(&buf, &len);
    nsd_respond(req, 200, "text/plain; version=0.0.4; charset=utf-8", text, len);
}
