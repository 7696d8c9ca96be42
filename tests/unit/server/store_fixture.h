/* store_fixture.h - what the store's unit tests (test_store.c,
 * test_store_wal.c) share: waiting, bounded, for the writer's commit. */
#ifndef STORE_FIXTURE_H
#define STORE_FIXTURE_H

#include <check.h>
#include <pthread.h>
#include <time.h>

#include "store/store.h"

/* How long a test waits for the writer before it fails (only on failure). */
#define WAIT_LIMIT_S 30

typedef struct waitflag_s {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int done, status;
} waitflag_t;

static inline void on_commit(void *arg, int status)
{
    waitflag_t *w = arg;
    pthread_mutex_lock(&w->lock);
    w->done = 1;
    w->status = status;
    pthread_cond_signal(&w->cond);
    pthread_mutex_unlock(&w->lock);
}

/* nsd_store_after_commit() and wait for its callback. @return its status. */
static inline int wait_commit(nsd_store_t *s)
{
    waitflag_t w = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0};
    nsd_store_after_commit(s, on_commit, &w);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += WAIT_LIMIT_S;
    pthread_mutex_lock(&w.lock);
    while (!w.done)
        if (pthread_cond_timedwait(&w.cond, &w.lock, &ts) != 0)
            break;
    int done = w.done, status = w.status;
    pthread_mutex_unlock(&w.lock);
    ck_assert_msg(done, "no commit callback within %d s", WAIT_LIMIT_S);
    return status;
}

#endif
