/* main.c - normstatd: parse options, open the store, start the registry, HTTP and the
 * coordinator, recover, shut down cleanly.
 *
 * Start-up order: the store is opened and validated before anything listens
 * (an unusable data directory stops the daemon with exit 1 and one line);
 * then HTTP starts, so /livez and /readyz answer while the store is
 * recovered (reads allowed, writes 503 not_ready); then the persistence hooks
 * and the writer start and /readyz turns 200. Shutdown: the coordinator
 * drains requests, the store commits everything queued, then HTTP stops. */
#include <stdio.h>
#include <string.h>

#include <normstat/core.h>

#include "base/clock.h"
#include "base/log.h"
#include "base/options.h"
#include "coord.h"
#include "http/auth.h"
#include "http/counters.h"
#include "http/http.h"
#include "http/tls.h"
#include "registry/registry.h"
#include "relay/relay.h"
#include "store/store.h"

extern char **environ;

/* One line in the log, whatever --log-level says, and on stderr too when
 * the log goes to a file: the daemon exits 1 right after. */
static void store_unusable(const nsd_store_error_t *serr, const nsd_options_t *opts)
{
    char qp[600], qr[600];
    nsd_log_write(NSD_LOG_ERROR, "store_unusable", "path=%s reason=%s",
                  nsd_log_quote(qp, sizeof(qp), serr->path),
                  nsd_log_quote(qr, sizeof(qr), serr->reason));
    if (opts->log_file[0] != '\0')
        fprintf(stderr, "normstatd: store unusable: %s: %s\n", serr->path, serr->reason);
}

/* What main() started, torn down in one place in reverse order. */
typedef struct daemon_s {
    nsd_options_t opts;
    nsd_auth_t *auth; /* NULL: authentication off */
    nsd_tls_t *tls;   /* NULL: plain HTTP */
    nsd_server_t server;
    nsd_store_t *store;
    nsd_relay_t *relay;
    nsd_coord_t *coord;
    int http_started;
} daemon_t;

static void daemon_teardown(daemon_t *d)
{
    if (d->http_started)
        nsd_http_stop(&d->server);
    nsd_relay_free(d->relay);
    d->server.relay = NULL;
    if (d->server.registry != NULL)
        nsd_registry_set_wakeup(d->server.registry, NULL, NULL);
    nsd_coord_free(d->coord);
    nsd_registry_free(d->server.registry);
    nsd_store_free(d->store);
    nsd_tls_free(d->tls);
    nsd_auth_free(d->auth);
}

/* Options, then the commands that answer without a daemon (--help,
 * --version, --routes, --probe) and the token file. @return -1 to go on,
 * or the exit status. */
static int configure(daemon_t *d, int argc, char **argv)
{
    ns_error_detail_t err = {0};
    if (nsd_options_parse(&d->opts, argc, argv, environ, &err) != 0) {
        fprintf(stderr, "normstatd: %s\n", err.message);
        return 2;
    }
    if (d->opts.help) {
        nsd_options_help(stdout, "normstatd");
        return 0;
    }
    if (d->opts.version) {
        printf("normstatd %s (kernel %s)\n", NS_VERSION_STRING, ns_core_kernel());
        return 0;
    }
    if (d->opts.routes) {
        nsd_routes_print(stdout);
        return 0;
    }
    if (d->opts.probe.set)
        return nsd_probe_run(&d->opts);
    if (nsd_auth_create(&d->auth, &d->opts, &err) != 0) {
        fprintf(stderr, "normstatd: %s\n", err.message);
        return 2;
    }
    if (nsd_tls_load(&d->tls, &d->opts, &err) != 0) {
        fprintf(stderr, "normstatd: %s\n", err.message);
        return 2;
    }
    /* A relay keeps no store: a data directory named for it is a mistake. */
    if (d->opts.upstream[0] != '\0' && strcmp(d->opts.data_dir, "./var") != 0 &&
        !d->opts.no_persist) {
        fprintf(stderr, "normstatd: --data-dir: a relay (--upstream) keeps no store; its "
                        "upstream persists the run (give --no-persist or drop --data-dir)\n");
        return 2;
    }
    nsd_log_set_level((int)d->opts.log_level);
    if (nsd_log_open(d->opts.log_file, &err) != 0) {
        fprintf(stderr, "normstatd: %s\n", err.message);
        return 2;
    }
    return -1;
}

/* Relay mode: no store; reports go to the relay's forwarding thread. */
static int start_relay(daemon_t *d)
{
    const nsd_options_t *opts = &d->opts;
    ns_error_detail_t err = {0};
    char q[600];
    char *token = NULL;
    if (nsd_auth_single_token(opts, &token, &err) != 0) {
        nsd_log(NSD_LOG_ERROR, "start_failed", "step=relay reason=%s",
                nsd_log_quote(q, sizeof(q), err.message));
        return 1;
    }
    nsd_relay_config_t cfg = {
        .upstream = opts->upstream,
        .token = token, /* the admin token: the relay speaks for its workers upstream */
        .rank = opts->relay_rank,
        .local_world_size = (uint32_t)opts->local_world_size,
        .relays = opts->relays > 0 ? opts->relays : -1,
        .timeout_ms = (uint64_t)opts->relay_timeout,
        .max_pending = (uint32_t)opts->max_pending_steps,
        .threads = (int)opts->core_threads,
        .forward_f32 = opts->relay_f32,
    };
    int rc = nsd_relay_create(&d->relay, &cfg, &err);
    nsd_auth_token_free(token);
    if (rc != 0) {
        nsd_log(NSD_LOG_ERROR, "start_failed", "step=relay reason=%s",
                nsd_log_quote(q, sizeof(q), err.message));
        return 1;
    }
    d->server.relay = d->relay;
    nsd_log_write(NSD_LOG_INFO, "relay", "upstream=%s rank=%lld local_world_size=%lld relays=%lld",
                  nsd_log_quote(q, sizeof(q), opts->upstream), (long long)opts->relay_rank,
                  (long long)opts->local_world_size, (long long)opts->relays);
    return 0;
}

/* The registry, the store (opened and validated before anything listens),
 * the coordinator and HTTP. @return 0, or 1 after logging why. */
static int start(daemon_t *d)
{
    const nsd_options_t *opts = &d->opts;
    char q[600];
    ns_error_detail_t err = {0};
    nsd_limits_t limits = {
        .max_pending_steps = (uint32_t)opts->max_pending_steps,
        .max_memory = opts->max_memory,
        .history_steps = (uint32_t)opts->history_steps,
        .threads = (int)opts->core_threads,
    };
    d->server.opts = opts;
    d->server.auth = d->auth;
    d->server.tls = d->tls;
    d->server.registry = nsd_registry_create(&limits);
    if (d->server.registry == NULL) {
        nsd_log(NSD_LOG_ERROR, "start_failed", "step=registry reason=%s", "out_of_memory");
        return 1;
    }
    if (opts->upstream[0] != '\0') {
        if (start_relay(d) != 0)
            return 1;
    } else if (!opts->no_persist) {
        nsd_store_config_t scfg = {
            .commit_interval_ms = (uint64_t)opts->commit_interval,
            .snapshot_interval_ms = (uint64_t)opts->snapshot_interval,
            .skip_damaged_runs = opts->skip_damaged_runs,
            .no_fsync = opts->no_fsync,
        };
        static nsd_store_error_t serr;
        if (nsd_store_open(&d->store, opts->data_dir, &scfg, &serr) != 0) {
            store_unusable(&serr, opts);
            return 1;
        }
        d->server.store = d->store;
    }
    d->coord = nsd_coord_create(&d->server);
    if (d->coord == NULL)
        return 1;
    nsd_registry_set_wakeup(d->server.registry, nsd_coord_wakeup, d->coord);
    if (nsd_http_start(&d->server, &err) != 0) {
        nsd_log(NSD_LOG_ERROR, "start_failed", "step=listen reason=%s",
                nsd_log_quote(q, sizeof(q), err.message));
        return 1;
    }
    d->http_started = 1;
    /* Written whatever --log-level says: tests and scripts find the port here. */
    nsd_log_write(NSD_LOG_INFO, "listening", "addr=%s threads=%lld scheme=%s", d->server.addr,
                  (long long)opts->threads, d->tls != NULL ? "https" : "http");
    if (d->tls != NULL) {
        nsd_tls_info_t info;
        nsd_tls_info(d->tls, &info);
        nsd_log(NSD_LOG_INFO, "tls_loaded", "sha256=%s not_after=%s chain=%u", info.sha256,
                info.not_after, info.chain);
    }
    return 0;
}

/* Recover the store (HTTP already answers: reads allowed, writes 503
 * not_ready), then install the persistence hooks and start the writer.
 * @return 0, or 1 after logging why. */
static int recover(daemon_t *d)
{
    static nsd_store_error_t serr;
    nsd_store_recovery_t rec;
    if (nsd_store_recover(d->store, d->server.registry, &rec, &serr) != 0) {
        store_unusable(&serr, &d->opts);
        return 1;
    }
    nsd_log_write(
        NSD_LOG_INFO, "recovered", "runs=%llu steps=%llu rows=%llu snapshots=%llu ms=%llu",
        (unsigned long long)rec.runs, (unsigned long long)rec.steps, (unsigned long long)rec.rows,
        (unsigned long long)rec.snapshots, (unsigned long long)rec.ms);
    nsd_persist_t hooks;
    nsd_store_hooks(d->store, &hooks);
    nsd_registry_set_persist(d->server.registry, &hooks);
    if (nsd_store_start(d->store, d->server.registry) != 0) {
        nsd_log(NSD_LOG_ERROR, "start_failed", "step=store_writer");
        return 1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    static daemon_t d;
    int rc = configure(&d, argc, argv);
    if (rc >= 0)
        return rc;
    /* Before any thread exists, so every later thread inherits the mask. */
    nsd_coord_block_signals(NULL);
    /* This thread's OpenMP team is created now, while the signals are
     * blocked, and reused by the reductions the coordinator runs later. */
#pragma omp parallel num_threads((int)d.opts.core_threads)
    {
    }
    nsd_counters_init();

    char q[600];
    nsd_log(NSD_LOG_INFO, "starting",
            "version=%s kernel=%s threads=%lld core_threads=%lld max_body=%llu max_memory=%llu "
            "max_pending_steps=%lld data_dir=%s persist=%d fsync=%d auth=%d",
            NS_VERSION_STRING, ns_core_kernel(), (long long)d.opts.threads,
            (long long)d.opts.core_threads, (unsigned long long)d.opts.max_body,
            (unsigned long long)d.opts.max_memory, (long long)d.opts.max_pending_steps,
            nsd_log_quote(q, sizeof(q), d.opts.data_dir), !d.opts.no_persist, !d.opts.no_fsync,
            d.auth != NULL);

    if (start(&d) != 0 || (d.store != NULL && recover(&d) != 0)) {
        daemon_teardown(&d);
        return 1;
    }
    atomic_store(&d.server.ready, 1);
    nsd_log(NSD_LOG_INFO, "ready", "addr=%s persist=%d", d.server.addr, d.store != NULL);

    nsd_coord_run(d.coord);

    /* Every change made so far is committed before the process ends; the
     * writer is never interrupted in the middle of a transaction (signals
     * stay blocked on this thread from here on). */
    int exit_code = 0;
    if (d.store != NULL && nsd_store_stop(d.store, (uint64_t)d.opts.shutdown_timeout) != 0)
        exit_code = 1;
    daemon_teardown(&d);
    nsd_log(NSD_LOG_INFO, "stopped", "exit=%d", exit_code);
    nsd_log_close();
    return exit_code;
}
