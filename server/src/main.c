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

#include "auth.h"
#include "clock.h"
#include "coord.h"
#include "http.h"
#include "log.h"
#include "metrics.h"
#include "options.h"
#include "registry.h"
#include "store.h"

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

int main(int argc, char **argv)
{
    static nsd_options_t opts;
    char err[600];
    if (nsd_options_parse(&opts, argc, argv, environ, err, sizeof(err)) != 0) {
        fprintf(stderr, "normstatd: %s\n", err);
        return 2;
    }
    if (opts.help) {
        nsd_options_help(stdout, "normstatd");
        return 0;
    }
    if (opts.version) {
        printf("normstatd %s (kernel %s)\n", NS_VERSION_STRING, ns_core_kernel());
        return 0;
    }
    if (opts.routes) {
        nsd_routes_print(stdout);
        return 0;
    }
    if (opts.probe.set)
        return nsd_probe_run(&opts);
    static nsd_auth_t auth;
    if (nsd_auth_load(&auth, &opts, err, sizeof(err)) != 0) {
        fprintf(stderr, "normstatd: %s\n", err);
        return 2;
    }

    nsd_log_set_level((int)opts.log_level);
    int rc = nsd_log_open(opts.log_file);
    if (rc != 0) {
        fprintf(stderr, "normstatd: --log-file: cannot open '%s': %s\n", opts.log_file,
                strerror(-rc));
        return 2;
    }
    /* Before any thread exists, so every later thread inherits the mask. */
    nsd_coord_block_signals(NULL);
    /* This thread's OpenMP team is created now, while the signals are
     * blocked, and reused by the reductions the coordinator runs later. */
#pragma omp parallel num_threads((int)opts.core_threads)
    {
    }
    nsd_metrics_init();

    char q[600];
    nsd_log(NSD_LOG_INFO, "starting",
            "version=%s kernel=%s threads=%lld core_threads=%lld max_body=%llu max_memory=%llu "
            "max_pending_steps=%lld data_dir=%s persist=%d auth=%d",
            NS_VERSION_STRING, ns_core_kernel(), (long long)opts.threads,
            (long long)opts.core_threads, (unsigned long long)opts.max_body,
            (unsigned long long)opts.max_memory, (long long)opts.max_pending_steps,
            nsd_log_quote(q, sizeof(q), opts.data_dir), !opts.no_persist, auth.len > 0);

    nsd_limits_t limits = {
        .max_pending_steps = (uint32_t)opts.max_pending_steps,
        .max_memory = opts.max_memory,
        .threads = (int)opts.core_threads,
    };
    static nsd_server_t server;
    server.opts = &opts;
    server.auth = auth.len > 0 ? &auth : NULL;
    server.registry = nsd_registry_create(&limits);
    if (server.registry == NULL) {
        nsd_log(NSD_LOG_ERROR, "start_failed", "step=registry reason=%s", "out_of_memory");
        return 1;
    }
    nsd_store_t *store = NULL;
    if (!opts.no_persist) {
        nsd_store_config_t scfg = {
            .commit_interval_ms = (uint64_t)opts.commit_interval,
            .snapshot_interval_ms = (uint64_t)opts.snapshot_interval,
        };
        static nsd_store_error_t serr;
        if (nsd_store_open(&store, opts.data_dir, &scfg, &serr) != 0) {
            store_unusable(&serr, &opts);
            nsd_registry_free(server.registry);
            return 1;
        }
        server.store = store;
    }
    nsd_coord_t *coord = nsd_coord_create(&server);
    if (coord == NULL) {
        nsd_store_free(store);
        nsd_registry_free(server.registry);
        return 1;
    }
    nsd_registry_set_wakeup(server.registry, nsd_coord_wakeup, coord);
    if (nsd_http_start(&server, err, sizeof(err)) != 0) {
        nsd_log(NSD_LOG_ERROR, "start_failed", "step=listen reason=%s",
                nsd_log_quote(q, sizeof(q), err));
        nsd_coord_free(coord);
        nsd_store_free(store);
        nsd_registry_free(server.registry);
        return 1;
    }
    /* Written whatever --log-level says: tests and scripts find the port here. */
    nsd_log_write(NSD_LOG_INFO, "listening", "addr=%s threads=%lld", server.addr,
                  (long long)opts.threads);
    if (store != NULL) {
        static nsd_store_error_t serr;
        nsd_store_recovery_t rec;
        if (nsd_store_recover(store, server.registry, &rec, &serr) != 0) {
            store_unusable(&serr, &opts);
            nsd_http_stop(&server);
            nsd_coord_free(coord);
            nsd_store_free(store);
            nsd_registry_free(server.registry);
            return 1;
        }
        nsd_log_write(NSD_LOG_INFO, "recovered",
                      "runs=%llu steps=%llu rows=%llu snapshots=%llu ms=%llu",
                      (unsigned long long)rec.runs, (unsigned long long)rec.steps,
                      (unsigned long long)rec.rows, (unsigned long long)rec.snapshots,
                      (unsigned long long)rec.ms);
        nsd_persist_t hooks;
        nsd_store_hooks(store, &hooks);
        nsd_registry_set_persist(server.registry, &hooks);
        if (nsd_store_start(store, server.registry) != 0) {
            nsd_log(NSD_LOG_ERROR, "start_failed", "step=store_writer");
            nsd_http_stop(&server);
            nsd_coord_free(coord);
            nsd_store_free(store);
            nsd_registry_free(server.registry);
            return 1;
        }
    }
    atomic_store(&server.ready, 1);
    nsd_log(NSD_LOG_INFO, "ready", "addr=%s persist=%d", server.addr, store != NULL);

    nsd_coord_run(coord);

    /* Every change made so far is committed before the process ends; the
     * writer is never interrupted in the middle of a transaction (signals
     * stay blocked on this thread from here on). */
    int exit_code = 0;
    if (store != NULL && nsd_store_stop(store, (uint64_t)opts.shutdown_timeout) != 0)
        exit_code = 1;
    nsd_http_stop(&server);
    nsd_registry_set_wakeup(server.registry, NULL, NULL);
    nsd_coord_free(coord);
    nsd_registry_free(server.registry);
    nsd_store_free(store);
    nsd_log(NSD_LOG_INFO, "stopped", "exit=%d", exit_code);
    nsd_log_close();
    return exit_code;
}
