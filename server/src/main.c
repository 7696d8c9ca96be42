/* main.c - normstatd: parse options, start the registry, HTTP and the coordinator, shut down
 * cleanly. */
#include <stdio.h>
#include <string.h>

#include <normstat/core.h>

#include "clock.h"
#include "coord.h"
#include "http.h"
#include "log.h"
#include "metrics.h"
#include "options.h"
#include "registry.h"

extern char **environ;

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
            "max_pending_steps=%lld data_dir=%s persist=%d",
            NS_VERSION_STRING, ns_core_kernel(), (long long)opts.threads,
            (long long)opts.core_threads, (unsigned long long)opts.max_body,
            (unsigned long long)opts.max_memory, (long long)opts.max_pending_steps,
            nsd_log_quote(q, sizeof(q), opts.data_dir), !opts.no_persist);

    nsd_limits_t limits = {
        .max_pending_steps = (uint32_t)opts.max_pending_steps,
        .max_memory = opts.max_memory,
        .threads = (int)opts.core_threads,
    };
    static nsd_server_t server;
    server.opts = &opts;
    server.registry = nsd_registry_create(&limits);
    if (server.registry == NULL) {
        nsd_log(NSD_LOG_ERROR, "start_failed", "step=registry reason=%s", "out_of_memory");
        return 1;
    }
    nsd_coord_t *coord = nsd_coord_create(&server);
    if (coord == NULL) {
        nsd_registry_free(server.registry);
        return 1;
    }
    nsd_registry_set_wakeup(server.registry, nsd_coord_wakeup, coord);
    if (nsd_http_start(&server, err, sizeof(err)) != 0) {
        nsd_log(NSD_LOG_ERROR, "start_failed", "step=listen reason=%s",
                nsd_log_quote(q, sizeof(q), err));
        nsd_coord_free(coord);
        nsd_registry_free(server.registry);
        return 1;
    }
    /* Written whatever --log-level says: tests and scripts find the port here. */
    nsd_log_write(NSD_LOG_INFO, "listening", "addr=%s threads=%lld", server.addr,
                  (long long)opts.threads);
    /* Nothing to recover yet (the store comes later): ready at once. */
    atomic_store(&server.ready, 1);
    nsd_log(NSD_LOG_INFO, "ready", "addr=%s", server.addr);

    nsd_coord_run(coord);

    nsd_http_stop(&server);
    nsd_registry_set_wakeup(server.registry, NULL, NULL);
    nsd_coord_free(coord);
    nsd_registry_free(server.registry);
    nsd_log(NSD_LOG_INFO, "stopped", "exit=%d", 0);
    nsd_log_close();
    return 0;
}
