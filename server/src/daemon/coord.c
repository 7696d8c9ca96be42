/* coord.c - the coordinator loop: step deadlines, signals, graceful shutdown.
 *
 * DESIGN
 *  Thread: main()'s thread runs one libuv loop after the HTTP daemon
 *  started; it is the only thread with SIGTERM/SIGINT/SIGHUP unblocked
 *  (nsd_coord_block_signals() ran before any thread was created, so MHD's
 *  and OpenMP's threads inherit the blocked mask).
 *
 *  Jobs, and who enqueues them:
 *   - expire: a one-shot uv_timer_t armed at the deadline that
 *     nsd_registry_expire() returned (stopped when it returned UINT64_MAX).
 *     The registry calls nsd_coord_wakeup() from request threads when a new
 *     pending step or a shorter sync_timeout_ms may make the deadline
 *     earlier; that uv_async_send() runs expire at once and re-arms. Chosen
 *     over a fixed 20 ms tick: timeouts fire within a millisecond of their
 *     deadline and an idle daemon does not wake up at all. Sends coalesce,
 *     so a burst of reports costs one expire pass per loop iteration.
 *   - SIGHUP: reopen the log file (logrotate), re-read the TLS certificate
 *     and key (tls.c) and the token files (auth.c); a file that fails to
 *     load leaves what was in use and logs an error.
 *   - SIGTERM/SIGINT: graceful shutdown, in this order:
 *       1. mark shutting down: /readyz answers 503, responses carry
 *          "Connection: close";
 *       2. stop accepting connections (nsd_http_quiesce: the accept thread ends);
 *       3. nsd_registry_shutdown(): every waiting /sync is woken with
 *          NS_ESHUTDOWN and answered 503 shutting_down on an MHD thread
 *          (no connection stays suspended, which MHD_stop_daemon forbids);
 *          later reports are refused with 503; a relay's waiters likewise
 *          (nsd_relay_stop());
 *       4. a 10 ms drain timer waits until no request is in flight or
 *          --shutdown-timeout passed, then stops the loop; main() lets the
 *          store commit what is queued, stops the daemon (closing idle
 *          keep-alive connections) and exits 0 (1 if the store could not
 *          commit everything).
 *     A second SIGTERM/SIGINT during the drain stops waiting at once.
 *  Completion: nsd_coord_run() returns when the loop stopped. */
#include "coord.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "base/clock.h"
#include "base/log.h"
#include "http/auth.h"
#include "http/tls.h"
#include "registry/registry.h"
#include "relay/relay.h"

#define DRAIN_POLL_MS 10

struct nsd_coord_s {
    nsd_server_t *server;
    uv_loop_t loop;
    uv_timer_t expire_timer;
    uv_timer_t drain_timer;
    uv_async_t wakeup;
    uv_signal_t sig_term, sig_int, sig_hup;
    uint64_t drain_deadline_ms;
    int draining;
};

/* The signals only the loop thread receives. */
static void loop_signals(sigset_t *set)
{
    sigemptyset(set);
    sigaddset(set, SIGTERM);
    sigaddset(set, SIGINT);
    sigaddset(set, SIGHUP);
}

void nsd_coord_block_signals(sigset_t *old)
{
    sigset_t set;
    loop_signals(&set);
    pthread_sigmask(SIG_BLOCK, &set, old);
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &sa, NULL);
}

static void on_expire_timer(uv_timer_t *t);

static void run_expire(nsd_coord_t *c)
{
    if (atomic_load(&c->server->shutting_down))
        return;
    uint64_t now = nsd_now_ms();
    uint64_t next = nsd_registry_expire(c->server->registry, now);
    if (next == UINT64_MAX) {
        uv_timer_stop(&c->expire_timer);
        return;
    }
    uint64_t delay = next > now ? next - now : 0;
    uv_update_time(&c->loop);
    /* A deadline that is due is retried on the next iteration, not in a tight loop here. */
    uv_timer_start(&c->expire_timer, on_expire_timer, delay, 0);
}

static void on_expire_timer(uv_timer_t *t)
{
    run_expire(t->data);
}

static void on_wakeup(uv_async_t *a)
{
    run_expire(a->data);
}

void nsd_coord_wakeup(void *arg)
{
    nsd_coord_t *c = arg;
    uv_async_send(&c->wakeup);
}

static void stop_loop(nsd_coord_t *c)
{
    uv_timer_stop(&c->expire_timer);
    uv_timer_stop(&c->drain_timer);
    uv_signal_stop(&c->sig_term);
    uv_signal_stop(&c->sig_int);
    uv_signal_stop(&c->sig_hup);
    uv_stop(&c->loop);
}

static void on_drain_timer(uv_timer_t *t)
{
    nsd_coord_t *c = t->data;
    long in_flight = atomic_load(&c->server->in_flight);
    if (in_flight == 0) {
        nsd_log(NSD_LOG_INFO, "shutdown_drained", "in_flight=0");
        stop_loop(c);
    } else if (nsd_now_ms() >= c->drain_deadline_ms) {
        nsd_log(NSD_LOG_WARN, "shutdown_timeout", "in_flight=%ld timeout_ms=%lld", in_flight,
                (long long)c->server->opts->shutdown_timeout);
        stop_loop(c);
    }
}

static void on_stop_signal(uv_signal_t *s, int signum)
{
    nsd_coord_t *c = s->data;
    if (c->draining) {
        nsd_log(NSD_LOG_WARN, "shutdown_forced", "signal=%d in_flight=%ld", signum,
                atomic_load(&c->server->in_flight));
        stop_loop(c);
        return;
    }
    c->draining = 1;
    nsd_log(NSD_LOG_INFO, "shutdown_begin", "signal=%d in_flight=%ld timeout_ms=%lld", signum,
            atomic_load(&c->server->in_flight), (long long)c->server->opts->shutdown_timeout);
    atomic_store(&c->server->shutting_down, 1);
    nsd_http_quiesce(c->server);
    uv_timer_stop(&c->expire_timer);
    nsd_registry_shutdown(c->server->registry);
    nsd_relay_stop(c->server->relay);
    c->drain_deadline_ms = nsd_now_ms() + (uint64_t)c->server->opts->shutdown_timeout;
    uv_timer_start(&c->drain_timer, on_drain_timer, 0, DRAIN_POLL_MS);
}

/* SIGHUP: new connections get the files' certificate and key if they load;
 * otherwise the pair in use stays and the error is logged. */
static void reload_tls(nsd_tls_t *tls)
{
    ns_error_detail_t err = {0};
    int changed;
    if (nsd_tls_reload(tls, &changed, &err) != 0) {
        char q[600];
        nsd_log(NSD_LOG_ERROR, "tls_reload_failed", "reason=%s kept=previous",
                nsd_log_quote(q, sizeof(q), err.message));
        return;
    }
    nsd_tls_info_t info;
    nsd_tls_info(tls, &info);
    nsd_log(NSD_LOG_INFO, changed ? "tls_reloaded" : "tls_unchanged",
            "sha256=%s not_after=%s chain=%u", info.sha256, info.not_after, info.chain);
}

/* SIGHUP: later requests are judged by the token files if they load;
 * otherwise the tokens in use stay and the error is logged. */
static void reload_auth(nsd_auth_t *auth)
{
    ns_error_detail_t err = {0};
    size_t count;
    if (nsd_auth_reload(auth, &count, &err) != 0) {
        char q[600];
        nsd_log(NSD_LOG_ERROR, "auth_reload_failed", "reason=%s kept=previous tokens=%zu",
                nsd_log_quote(q, sizeof(q), err.message), count);
        return;
    }
    nsd_log(NSD_LOG_INFO, "auth_reloaded", "tokens=%zu", count);
}

static void on_hup(uv_signal_t *s, int signum)
{
    nsd_coord_t *c = s->data;
    ns_error_detail_t err = {0};
    if (nsd_log_reopen(&err) != 0) {
        char q[600];
        nsd_log(NSD_LOG_ERROR, "log_reopen_failed", "signal=%d reason=%s", signum,
                nsd_log_quote(q, sizeof(q), err.message));
    } else {
        nsd_log(NSD_LOG_INFO, "log_reopened", "signal=%d", signum);
    }
    if (c->server->tls != NULL)
        reload_tls(c->server->tls);
    if (c->server->auth != NULL)
        reload_auth(c->server->auth);
}

nsd_coord_t *nsd_coord_create(nsd_server_t *server)
{
    nsd_coord_t *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    c->server = server;
    int rc = uv_loop_init(&c->loop);
    if (rc != 0) {
        nsd_log(NSD_LOG_ERROR, "coord_failed", "step=loop_init error=%s", uv_strerror(rc));
        free(c);
        return NULL;
    }
    uv_timer_init(&c->loop, &c->expire_timer);
    uv_timer_init(&c->loop, &c->drain_timer);
    c->expire_timer.data = c->drain_timer.data = c;
    rc = uv_async_init(&c->loop, &c->wakeup, on_wakeup);
    c->wakeup.data = c;
    uv_signal_init(&c->loop, &c->sig_term);
    uv_signal_init(&c->loop, &c->sig_int);
    uv_signal_init(&c->loop, &c->sig_hup);
    c->sig_term.data = c->sig_int.data = c->sig_hup.data = c;
    rc = rc ? rc : uv_signal_start(&c->sig_term, on_stop_signal, SIGTERM);
    rc = rc ? rc : uv_signal_start(&c->sig_int, on_stop_signal, SIGINT);
    rc = rc ? rc : uv_signal_start(&c->sig_hup, on_hup, SIGHUP);
    if (rc != 0) {
        nsd_log(NSD_LOG_ERROR, "coord_failed", "step=handles error=%s", uv_strerror(rc));
        nsd_coord_free(c);
        return NULL;
    }
    return c;
}

int nsd_coord_run(nsd_coord_t *c)
{
    sigset_t set;
    loop_signals(&set);
    pthread_sigmask(SIG_UNBLOCK, &set, NULL);
    run_expire(c);
    uv_run(&c->loop, UV_RUN_DEFAULT);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    return 0;
}

static void on_closed(uv_handle_t *h)
{
    (void)h;
}

static void close_one(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h))
        uv_close(h, on_closed);
}

void nsd_coord_free(nsd_coord_t *c)
{
    if (c == NULL)
        return;
    uv_walk(&c->loop, close_one, NULL);
    uv_run(&c->loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&c->loop) != 0)
        nsd_log(NSD_LOG_WARN, "coord_close", "%s", "handles still open");
    free(c);
}
