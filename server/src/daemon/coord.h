/* coord.h - the coordinator: normstatd's libuv loop (step deadlines, signals, shutdown).
 *
 * The loop runs on the thread that calls nsd_coord_run() (main()'s), which
 * is the only thread with SIGTERM, SIGINT and SIGHUP unblocked. Other
 * threads reach it only through nsd_coord_wakeup() (uv_async_send). */
#ifndef NSD_COORD_H
#define NSD_COORD_H

#include <signal.h>

#include "http/http.h"

/*! nsd_coord_block_signals() :
 *  Block SIGTERM, SIGINT and SIGHUP in the calling thread (and in every
 *  thread it starts afterwards) and ignore SIGPIPE. Call in main() before
 *  any thread exists. 'old' (may be NULL) receives the previous mask. */
void nsd_coord_block_signals(sigset_t *old);

/*! nsd_coord_create() :
 *  The loop with its handles (expire timer, wakeup async, signal watchers)
 *  for 'server'; signal handlers are installed here. Install
 *  nsd_coord_wakeup() as the registry's wakeup hook afterwards.
 *  @return the coordinator, or NULL (logged). */
nsd_coord_t *nsd_coord_create(nsd_server_t *server);

/*! nsd_coord_wakeup() :
 *  The registry's wakeup hook: a step deadline may be earlier than the timer
 *  knows. Any thread; coalesces. 'arg' is the nsd_coord_t. */
void nsd_coord_wakeup(void *arg);

/*! nsd_coord_run() :
 *  Unblock the signals in this thread and run the loop until a graceful
 *  shutdown finished draining (or --shutdown-timeout passed). The caller
 *  then stops the HTTP daemon.
 *  @return 0 after a graceful shutdown. */
int nsd_coord_run(nsd_coord_t *coord);

/*! nsd_coord_free() : close the loop; after nsd_coord_run() returned. Accepts NULL. */
void nsd_coord_free(nsd_coord_t *coord);

#endif
