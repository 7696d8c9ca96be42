/* metrics.c - Prometheus text exposition of normstatd's counters (GET
 * /metrics): requests and rejections (counters.h), the registry's and the
 * store's counters, per-run health (bounded by --metrics-max-runs), build
 * and process facts. Each family is a table row or
 * one small function, rendered in a fixed order. */
#include "metrics.h"

#include <dirent.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <normstat/core.h>

#include "base/size_limits.h"
#include "http/conns.h"
#include "http/counters.h"
#include "http/http.h"
#include "http/listener.h"
#include "registry/registry.h"
#include "relay/relay.h"
#include "store/store.h"

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
                     "Start time of the process since unix epoch in seconds.",
                     nsd_counters_get()->start_time);
    return rc;
}

/* The route label of counter slot r. */
static const char *route_label(const nsd_route_t *table, size_t n_routes, size_t r)
{
    return r < n_routes ? table[r].label : "unmatched";
}

static int render_requests(ns_buf_t *dst, const nsd_route_t *table, size_t n_routes)
{
    const nsd_request_counters_t *k = nsd_counters_get();
    int rc = header(dst, "normstat_http_requests_total", "counter",
                    "HTTP requests answered, by route, method and status.");
    for (size_t r = 0; r <= n_routes && rc == 0; r++)
        for (size_t m = 0; m < NSD_COUNTER_METHODS; m++)
            for (size_t s = 0; s < NSD_COUNTER_STATUSES && rc == 0; s++) {
                uint64_t v = atomic_load_explicit(&k->requests[r][m][s], memory_order_relaxed);
                if (v == 0)
                    continue;
                char status[16];
                if (nsd_counter_statuses[s] != 0)
                    snprintf(status, sizeof(status), "%d", nsd_counter_statuses[s]);
                else
                    snprintf(status, sizeof(status), "other");
                rc = ns_buf_printf(dst,
                                   "normstat_http_requests_total{route=\"%s\",method=\"%s\","
                                   "status=\"%s\"} %llu\n",
                                   route_label(table, n_routes, r), nsd_counter_methods[m], status,
                                   (unsigned long long)v);
            }
    return rc;
}

/* The duration histogram of one route slot (nothing while it has no request). */
static int render_duration(ns_buf_t *dst, const char *label, size_t r)
{
    const nsd_request_counters_t *k = nsd_counters_get();
    uint64_t counts[NSD_COUNTER_BUCKETS + 1], total = 0;
    for (size_t b = 0; b <= NSD_COUNTER_BUCKETS; b++) {
        counts[b] = atomic_load_explicit(&k->duration_buckets[r][b], memory_order_relaxed);
        total += counts[b];
    }
    if (total == 0)
        return 0;
    uint64_t cum = 0;
    int rc = 0;
    for (size_t b = 0; b < NSD_COUNTER_BUCKETS && rc == 0; b++) {
        cum += counts[b];
        rc = ns_buf_printf(dst,
                           "normstat_http_request_duration_seconds_bucket{route=\"%s\","
                           "le=\"%g\"} %llu\n",
                           label, nsd_counter_buckets[b], (unsigned long long)cum);
    }
    double sum = (double)atomic_load_explicit(&k->duration_sum_ns[r], memory_order_relaxed) * 1e-9;
    return rc ? rc
              : ns_buf_printf(dst,
                              "normstat_http_request_duration_seconds_bucket{route=\"%s\","
                              "le=\"+Inf\"} %llu\n"
                              "normstat_http_request_duration_seconds_sum{route=\"%s\"} %.9f\n"
                              "normstat_http_request_duration_seconds_count{route=\"%s\"} %llu\n",
                              label, (unsigned long long)total, label, sum, label,
                              (unsigned long long)total);
}

static int render_durations(ns_buf_t *dst, const nsd_route_t *table, size_t n_routes)
{
    int rc = header(dst, "normstat_http_request_duration_seconds", "histogram",
                    "Time from a request's first byte of headers to its answer.");
    for (size_t r = 0; r <= n_routes && rc == 0; r++)
        rc = render_duration(dst, route_label(table, n_routes, r), r);
    return rc;
}

static int render_rejections(ns_buf_t *dst)
{
    const nsd_request_counters_t *k = nsd_counters_get();
    int rc = header(dst, "normstat_rejections_total", "counter",
                    "Requests refused, by reason (the error code of the answer).");
    for (size_t i = 0; i < NSD_COUNTER_ERRORS && rc == 0; i++)
        rc = ns_buf_printf(
            dst, "normstat_rejections_total{reason=\"%s\"} %llu\n",
            ns_error_name(nsd_counter_errors[i]),
            (unsigned long long)atomic_load_explicit(&k->rejections[i], memory_order_relaxed));
    return rc;
}

/* Body bytes through HTTP: the network load of this tier, headers aside. */
static int render_body_bytes(ns_buf_t *dst)
{
    const nsd_request_counters_t *k = nsd_counters_get();
    int rc = sample(dst, "normstat_http_request_body_bytes_total", "counter",
                    "Bytes of request bodies read (headers not counted).", "%llu",
                    (unsigned long long)atomic_load(&k->body_bytes_in));
    return rc ? rc
              : sample(dst, "normstat_http_response_body_bytes_total", "counter",
                       "Bytes of response bodies sent (headers not counted).", "%llu",
                       (unsigned long long)atomic_load(&k->body_bytes_out));
}

/* A sample per row, each a uint64_t at 'offset' in the struct at 'base'. */
typedef struct u64_row_s {
    const char *name, *type, *help;
    size_t offset;
} u64_row_t;

static int render_u64_rows(ns_buf_t *dst, const u64_row_t *rows, size_t n, const void *base)
{
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        uint64_t v;
        memcpy(&v, (const char *)base + rows[i].offset, sizeof(v));
        rc = sample(dst, rows[i].name, rows[i].type, rows[i].help, "%llu", (unsigned long long)v);
    }
    return rc;
}

static int render_registry(ns_buf_t *dst, nsd_registry_t *reg)
{
    nsd_counters_t c;
    memset(&c, 0, sizeof(c));
    if (reg != NULL)
        nsd_registry_counters(reg, &c);
    static const u64_row_t registry_rows[] = {
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
        {"normstat_memory_bytes", "gauge",
         "Bytes counted against --max-memory: runs, statistics, pending arrivals, request bodies "
         "and their decoding, answers being written (checkpoint, drift, run status).",
         offsetof(nsd_counters_t, memory_bytes)},
    };
    return render_u64_rows(dst, registry_rows, sizeof(registry_rows) / sizeof(registry_rows[0]),
                           &c);
}

int nsd_metrics_render(ns_buf_t *dst, nsd_registry_t *reg)
{
    size_t n_routes;
    const nsd_route_t *table = nsd_routes_table(&n_routes);
    if (n_routes > NSD_COUNTER_ROUTES)
        n_routes = NSD_COUNTER_ROUTES;
    int rc = render_requests(dst, table, n_routes);
    rc = rc ? rc : render_durations(dst, table, n_routes);
    rc = rc ? rc : render_rejections(dst);
    rc = rc ? rc : render_body_bytes(dst);
    rc = rc ? rc : render_registry(dst, reg);
    rc = rc ? rc
            : header(dst, "normstat_build_info", "gauge",
                     "Version and statistics kernel of this daemon (value 1).");
    rc = rc ? rc
            : ns_buf_printf(dst, "normstat_build_info{version=\"%s\",kernel=\"%s\"} 1\n",
                            NS_VERSION_STRING, ns_core_kernel());
    return rc ? rc : render_process(dst);
}

/* ---------------------------------------------------------------- per run */

#define PER_RUN " Per run, for at most --metrics-max-runs runs (the most recently active)."

/* The per-run families, in this order: HELP and TYPE always (so the
 * families exist with no run), then one sample per run and label set. */
enum { RUN_DRIFT, RUN_APPLIED, RUN_PENDING, RUN_SKIPPED, RUN_REJECTIONS, RUN_LAG };
static const struct {
    const char *name, *type, *help;
} run_families[] = {
    {"normstat_run_drift_worst", "gauge",
     "Largest EMA vs PreciseBN mean distance (in population stds) over the run's layers and "
     "domains, labelled with its layer (GET /v1/runs/{run}/drift)." PER_RUN},
    {"normstat_run_steps_applied_total", "counter",
     "Finalized steps applied since the daemon started." PER_RUN},
    {"normstat_run_pending_steps", "gauge", "Steps waiting for workers." PER_RUN},
    {"normstat_run_steps_skipped_total", "counter",
     "Applied steps whose global count was below 2 (EMA untouched)." PER_RUN},
    {"normstat_run_rejections_total", "counter",
     "Reports and gradient sums refused, by reason (the error code of the answer)." PER_RUN},
    {"normstat_run_worker_lag_steps", "gauge",
     "Largest lag of a worker: the highest step any worker reported minus its own "
     "highest." PER_RUN},
};

static int render_run_family(ns_buf_t *dst, size_t f, const nsd_run_health_t *h, size_t n)
{
    int rc = header(dst, run_families[f].name, run_families[f].type, run_families[f].help);
    const char *name = run_families[f].name;
    for (size_t i = 0; i < n && rc == 0; i++) {
        const nsd_run_health_t *r = &h[i];
        switch (f) {
        case RUN_DRIFT:
            if (r->has_worst)
                rc = ns_buf_printf(dst, "%s{run=\"%s\",layer=\"%s\"} %.17g\n", name, r->run,
                                   r->worst_layer, r->worst_mean_max);
            break;
        case RUN_REJECTIONS:
            for (size_t k = 0; k < NSD_REJECTION_REASONS && rc == 0; k++)
                rc = ns_buf_printf(dst, "%s{run=\"%s\",reason=\"%s\"} %llu\n", name, r->run,
                                   ns_error_name(nsd_rejection_code(k)),
                                   (unsigned long long)r->rejections[k]);
            break;
        case RUN_LAG:
            if (r->worker_lag >= 0)
                rc = ns_buf_printf(dst, "%s{run=\"%s\"} %lld\n", name, r->run,
                                   (long long)r->worker_lag);
            break;
        default: {
            uint64_t v = f == RUN_APPLIED   ? r->steps_applied
                         : f == RUN_PENDING ? r->pending_steps
                                            : r->skipped_steps;
            rc = ns_buf_printf(dst, "%s{run=\"%s\"} %llu\n", name, r->run, (unsigned long long)v);
        }
        }
    }
    return rc;
}

/* The per-run series of the 'max_runs' most recently active runs. */
static int render_runs(ns_buf_t *dst, nsd_registry_t *reg, size_t max_runs)
{
    nsd_run_health_t *h = NULL;
    size_t n = 0;
    if (reg != NULL && max_runs > 0 && nsd_registry_health(reg, max_runs, &h, &n) != 0)
        return NS_ENOMEM;
    int rc = 0;
    for (size_t f = 0; f < sizeof(run_families) / sizeof(run_families[0]) && rc == 0; f++)
        rc = render_run_family(dst, f, h, n);
    free(h);
    return rc;
}

/* How a store row's value is read from nsd_store_stats_t and printed. */
enum { STORE_U64 = 1, STORE_US_AS_SECONDS, STORE_FLAG, STORE_AGE_MS_AS_SECONDS };

static const struct {
    const char *name, *type, *help;
    int kind;
    size_t offset;
} store_rows[] = {
    {"normstat_store_commits_total", "counter", "Group-committed store transactions.", STORE_U64,
     offsetof(nsd_store_stats_t, commits)},
    {"normstat_store_commit_failures_total", "counter",
     "Store commits that failed (disk full, I/O error); each is retried.", STORE_U64,
     offsetof(nsd_store_stats_t, commit_failures)},
    {"normstat_store_rows_total", "counter",
     "Log rows committed (finalized steps, configurations, domains, resets).", STORE_U64,
     offsetof(nsd_store_stats_t, rows)},
    {"normstat_store_bytes_total", "counter",
     "Bytes of log row bodies and snapshots committed (what the store writes, before SQLite's "
     "own pages).",
     STORE_U64, offsetof(nsd_store_stats_t, bytes)},
    {"normstat_store_snapshots_total", "counter",
     "Run snapshots committed (periodic and checkpoint imports).", STORE_U64,
     offsetof(nsd_store_stats_t, snapshots)},
    {"normstat_store_commit_seconds_total", "counter", "Time spent committing (sum over commits).",
     STORE_US_AS_SECONDS, offsetof(nsd_store_stats_t, commit_seconds_sum_us)},
    {"normstat_store_commit_last_seconds", "gauge", "Duration of the last successful commit.",
     STORE_US_AS_SECONDS, offsetof(nsd_store_stats_t, commit_last_us)},
    {"normstat_store_queued_jobs", "gauge", "Changes waiting for the store's writer.", STORE_U64,
     offsetof(nsd_store_stats_t, queued)},
    {"normstat_store_failing", "gauge", "1 while store commits fail (writes are refused with 503).",
     STORE_FLAG, offsetof(nsd_store_stats_t, failing)},
    {"normstat_store_last_snapshot_age_seconds", "gauge",
     "Seconds since the last snapshot was committed (-1: none since start).",
     STORE_AGE_MS_AS_SECONDS, offsetof(nsd_store_stats_t, last_snapshot_age_ms)},
};

static int store_row(ns_buf_t *dst, size_t i, const nsd_store_stats_t *st)
{
    const char *field = (const char *)st + store_rows[i].offset;
    uint64_t u;
    int64_t age;
    int flag;
    switch (store_rows[i].kind) {
    case STORE_U64:
        memcpy(&u, field, sizeof(u));
        return sample(dst, store_rows[i].name, store_rows[i].type, store_rows[i].help, "%llu",
                      (unsigned long long)u);
    case STORE_US_AS_SECONDS:
        memcpy(&u, field, sizeof(u));
        return sample(dst, store_rows[i].name, store_rows[i].type, store_rows[i].help, "%.6f",
                      (double)u * 1e-6);
    case STORE_FLAG:
        memcpy(&flag, field, sizeof(flag));
        return sample(dst, store_rows[i].name, store_rows[i].type, store_rows[i].help, "%d", flag);
    default:
        memcpy(&age, field, sizeof(age));
        return sample(dst, store_rows[i].name, store_rows[i].type, store_rows[i].help, "%.3f",
                      age < 0 ? -1.0 : (double)age * 1e-3);
    }
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
    for (size_t i = 0; i < sizeof(store_rows) / sizeof(store_rows[0]) && rc == 0; i++)
        rc = store_row(dst, i, &st);
    return rc;
}

/* Connections: open by pool, accepted, refused and closed by reason. */
static int render_connections(ns_buf_t *dst, nsd_conns_t *conns)
{
    nsd_conns_stats_t st;
    memset(&st, 0, sizeof(st));
    if (conns != NULL)
        nsd_conns_stats(conns, &st);
    int rc = header(dst, "normstat_connections_open", "gauge",
                    "Connections open, by pool (general, or reserved for probes).");
    rc = rc ? rc
            : ns_buf_printf(dst,
                            "normstat_connections_open{pool=\"general\"} %llu\n"
                            "normstat_connections_open{pool=\"reserve\"} %llu\n",
                            (unsigned long long)st.open_general,
                            (unsigned long long)st.open_reserve);
    rc = rc ? rc
            : sample(dst, "normstat_connections_accepted_total", "counter", "Connections accepted.",
                     "%llu", (unsigned long long)st.accepted);
    rc = rc ? rc
            : header(dst, "normstat_connections_refused_total", "counter",
                     "Connections refused at accept, by reason (per_address, limit).");
    for (size_t i = 0; i < NSD_REFUSED_REASONS && rc == 0; i++)
        rc = ns_buf_printf(dst, "normstat_connections_refused_total{reason=\"%s\"} %llu\n",
                           nsd_conns_refused_names[i], (unsigned long long)st.refused[i]);
    rc = rc ? rc
            : header(dst, "normstat_connections_closed_total", "counter",
                     "Connections the daemon closed, by reason (a deadline, or evicted for a "
                     "newcomer).");
    for (size_t i = 0; i < NSD_CLOSED_REASONS && rc == 0; i++)
        rc = ns_buf_printf(dst, "normstat_connections_closed_total{reason=\"%s\"} %llu\n",
                           nsd_conns_closed_names[i], (unsigned long long)st.closed[i]);
    return rc;
}

/* Connections open on each HTTP thread (each of the listener's daemons). */
static int render_http_threads(ns_buf_t *dst, const nsd_listener_t *listener)
{
    int rc = header(dst, "normstat_http_connections", "gauge",
                    "Connections open on each HTTP thread (new ones go to the least loaded).");
    for (unsigned i = 0; i < nsd_listener_threads(listener) && rc == 0; i++)
        rc = ns_buf_printf(dst, "normstat_http_connections{thread=\"%u\"} %ld\n", i,
                           nsd_listener_connections(listener, i));
    return rc;
}

/* Relay mode's counters (zero, and the upstream up, in a daemon that is no relay). */
static int render_relay(ns_buf_t *dst, nsd_relay_t *relay)
{
    nsd_relay_stats_t st;
    nsd_relay_stats(relay, &st);
    static const u64_row_t rows[] = {
        {"normstat_relay_forwarded_total", "counter",
         "Node reports (one per node step) the upstream accepted.",
         offsetof(nsd_relay_stats_t, forwarded)},
        {"normstat_relay_upstream_failures_total", "counter",
         "Forwards that could not reach the upstream (refused, timed out, 502, 503); each is "
         "retried with backoff.",
         offsetof(nsd_relay_stats_t, failures)},
        {"normstat_relay_rejected_total", "counter",
         "Forwards the upstream answered with an error (handed to the local waiters).",
         offsetof(nsd_relay_stats_t, rejected)},
        {"normstat_relay_partial_total", "counter",
         "Node steps forwarded after --relay-timeout without every local worker.",
         offsetof(nsd_relay_stats_t, partial)},
        {"normstat_relay_abandoned_total", "counter",
         "Node steps given up after --relay-timeout of failed forwards (waiters got 503).",
         offsetof(nsd_relay_stats_t, abandoned)},
        {"normstat_relay_collecting", "gauge", "Node steps waiting for local workers.",
         offsetof(nsd_relay_stats_t, collecting)},
        {"normstat_relay_forwarding", "gauge",
         "Node steps being forwarded or waiting to be retried.",
         offsetof(nsd_relay_stats_t, forwarding)},
        {"normstat_relay_backoff_ms", "gauge",
         "Current delay before the next retry of a failed forward (0 while the upstream is up).",
         offsetof(nsd_relay_stats_t, backoff_ms)},
    };
    int rc = sample(dst, "normstat_relay_enabled", "gauge",
                    "1 if this daemon is a relay (--upstream).", "%d", relay != NULL);
    rc = rc ? rc
            : sample(dst, "normstat_relay_upstream_up", "gauge",
                     "0 while the last forward could not reach the upstream, else 1.", "%d",
                     st.upstream_up);
    rc = rc ? rc : render_u64_rows(dst, rows, sizeof(rows) / sizeof(rows[0]), &st);
    return rc;
}

void nsd_h_metrics(nsd_request_t *req)
{
    ns_buf_t buf;
    ns_buf_init(&buf, NSD_METRICS_MAX);
    int rc = nsd_metrics_render(&buf, req->server->registry);
    rc = rc ? rc
            : sample(&buf, "normstat_http_requests_in_flight", "gauge",
                     "Requests begun and not yet answered (this one included).", "%ld",
                     atomic_load(&req->server->in_flight));
    rc = rc ? rc : render_connections(&buf, req->server->conns);
    rc = rc ? rc : render_http_threads(&buf, req->server->listener);
    rc = rc ? rc : render_store(&buf, req->server->store);
    rc = rc ? rc
            : render_runs(&buf, req->server->registry, (size_t)req->server->opts->metrics_max_runs);
    rc = rc ? rc : render_relay(&buf, req->server->relay);
    if (rc != 0) {
        ns_buf_free(&buf);
        nsd_respond_error(req, NS_ENOMEM, NULL);
        return;
    }
    size_t len;
    char *text = ns_buf_take(&buf, &len);
    nsd_respond(req, 200, "text/plain; version=0.0.4; charset=utf-8", text, len);
}
