/* store_queue.c - the store's job queue and commit waiters: the persistence
 * hooks copy each change into a job under the store's mutex, any thread
 * may wait for a commit (see the DESIGN in store_writer.c). */
#include "store_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/clock.h"
#include "registry/registry.h"
#include "store_codec.h"

job_t *nsd_store_job_new(int type, const char *run)
{
    job_t *j = calloc(1, sizeof(*j));
    if (j == NULL)
        return NULL;
    j->type = type;
    j->step = -1;
    snprintf(j->run, sizeof(j->run), "%s", run);
    return j;
}

void nsd_store_job_free(job_t *j)
{
    if (j == NULL)
        return;
    free(j->body);
    free(j->text);
    nsd_store_jobs_free(&j->rows);
    free(j);
}

void nsd_store_jobs_free(nsd_queue_t *q)
{
    for (nsd_qnode_t *n; (n = nsd_queue_pop(q)) != NULL;)
        nsd_store_job_free(JOB_OF(n));
}

void nsd_store_enqueue_locked(nsd_store_t *s, job_t *j)
{
    if (s->ticket != NULL && (j->type == JOB_DELETE || j->type == JOB_SNAPSHOT) &&
        strcmp(j->run, s->ticket->run) == 0)
        s->ticket_void = 1;
    j->seq = s->next_seq++;
    /* A pass's snapshot holds what the log holds already: no answer waits
     * for it (and the writer may commit it after later jobs). */
    if (j->type != JOB_SNAPSHOT || j->text == NULL)
        s->enqueued = j->seq;
    if (nsd_queue_empty(&s->jobs))
        s->first_enqueued_ms = nsd_now_ms();
    nsd_queue_push(&s->jobs, &j->link);
    s->queued++;
    pthread_cond_signal(&s->cond);
}

/* Append a job (NULL: a change could not be copied). Called by the hooks
 * under a run's lock, so it does not log: the writer reports lost changes. */
static void enqueue(nsd_store_t *s, job_t *j)
{
    pthread_mutex_lock(&s->lock);
    if (j == NULL) {
        s->snapshot_all = 1;
        s->lost++;
        pthread_cond_signal(&s->snap_cond);
        pthread_mutex_unlock(&s->lock);
        return;
    }
    nsd_store_enqueue_locked(s, j);
    pthread_mutex_unlock(&s->lock);
}

static job_t *log_job(const char *run, int kind, const void *body, size_t len)
{
    job_t *j = nsd_store_job_new(JOB_LOG, run);
    if (j == NULL)
        return NULL;
    j->kind = kind;
    if (body != NULL) {
        j->body = malloc(len ? len : 1);
        if (j->body == NULL) {
            nsd_store_job_free(j);
            return NULL;
        }
        memcpy(j->body, body, len);
        j->body_len = len;
    }
    return j;
}

static void hook_put(void *arg, const char *run, const ns_run_config_t *c, int created)
{
    (void)created;
    ns_buf_t text = {0};
    int rc = ns_run_config_encode_json(&text, c, NS_RUN_CONFIG_ALL);
    enqueue(arg, rc == 0 ? log_job(run, KIND_PUT, text.data, text.len) : NULL);
    ns_buf_free(&text);
}

static void hook_deleted(void *arg, const char *run)
{
    enqueue(arg, nsd_store_job_new(JOB_DELETE, run));
}

static job_t *step_job(const char *run, const nsd_step_t *rec)
{
    job_t *j = nsd_store_job_new(JOB_LOG, run);
    if (j != NULL) {
        j->kind = KIND_STEP;
        snprintf(j->layer, sizeof(j->layer), "%s", rec->layer);
        j->step = (int64_t)rec->step;
        j->body = nsd_step_encode(rec, &j->body_len);
        if (j->body == NULL) {
            nsd_store_job_free(j);
            j = NULL;
        }
    }
    return j;
}

static void hook_step(void *arg, const char *run, const nsd_step_t *rec)
{
    enqueue(arg, step_job(run, rec));
}

static void hook_domain(void *arg, const char *run, const char *domain)
{
    enqueue(arg, log_job(run, KIND_DOMAIN, domain, strlen(domain)));
}

static void hook_reset(void *arg, const char *run, const char *domain)
{
    enqueue(arg, log_job(run, KIND_RESET, domain, domain ? strlen(domain) : 0));
}

static void hook_snapshot(void *arg, const char *run, char *text)
{
    job_t *j = nsd_store_job_new(JOB_SNAPSHOT, run);
    if (j != NULL) {
        j->text = text; /* taken */
        j->text_len = strlen(text);
    } else {
        free(text);
    }
    enqueue(arg, j);
}

/* A pass's snapshot of 'run', its state copied under the run's lock (held
 * here): the seq it covers and those of the held steps' rows are reserved
 * now, in the order of the run's changes; the JSON comes later
 * (hook_snapshot_end()), and the job is queued then. Rows of the run queued
 * meanwhile get later seqs: they stay in the log, replayed on top of it. */
static void *hook_snapshot_begin(void *arg, const char *run, const nsd_queue_t *held)
{
    nsd_store_t *s = arg;
    job_t *j = nsd_store_job_new(JOB_SNAPSHOT, run);
    for (const nsd_qnode_t *n = held->head; j != NULL && n != NULL; n = n->next) {
        job_t *row = step_job(run, nsd_container_of(n, nsd_step_t, link));
        if (row == NULL) {
            nsd_store_job_free(j);
            j = NULL;
        } else {
            nsd_queue_push(&j->rows, &row->link);
        }
    }
    pthread_mutex_lock(&s->lock);
    if (j == NULL) {
        s->snapshot_all = 1; /* nothing is lost: the log still holds all of it */
    } else {
        j->covers = s->next_seq;
        for (nsd_qnode_t *n = j->rows.head; n != NULL; n = n->next)
            JOB_OF(n)->seq = s->next_seq++;
        s->ticket = j;
        s->ticket_void = 0;
    }
    pthread_mutex_unlock(&s->lock);
    return j;
}

/* The snapshot's JSON text (taken; NULL: out of memory), made with no lock
 * held; queued unless its run was deleted or imported meanwhile. */
static void hook_snapshot_end(void *arg, void *ticket, char *text)
{
    nsd_store_t *s = arg;
    job_t *j = ticket;
    size_t len = text != NULL ? strlen(text) : 0; /* not under the store's lock */
    pthread_mutex_lock(&s->lock);
    int drop = s->ticket_void || text == NULL;
    if (text == NULL)
        s->snapshot_all = 1;
    s->ticket = NULL;
    if (!drop) {
        s->text_bytes += len;
        j->text = text;
        j->text_len = len;
        nsd_store_enqueue_locked(s, j);
    }
    pthread_mutex_unlock(&s->lock);
    if (drop) {
        free(text);
        nsd_store_job_free(j);
    }
}

void nsd_store_hooks(nsd_store_t *s, nsd_persist_t *dst)
{
    memset(dst, 0, sizeof(*dst));
    dst->arg = s;
    dst->run_put = hook_put;
    dst->run_deleted = hook_deleted;
    dst->step_finalized = hook_step;
    dst->domain_added = hook_domain;
    dst->precise_reset = hook_reset;
    dst->run_snapshot = hook_snapshot;
    dst->snapshot_begin = hook_snapshot_begin;
    dst->snapshot_end = hook_snapshot_end;
}

void nsd_store_after_commit(nsd_store_t *s, nsd_store_cb cb, void *arg)
{
    int status = 0;
    pthread_mutex_lock(&s->lock);
    if (s->enqueued <= s->committed) {
        status = 0;
    } else if (s->exited || !s->started) {
        status = NS_ESHUTDOWN;
    } else if (atomic_load(&s->failing)) {
        status = NS_EIO;
    } else {
        waiter_t *w = malloc(sizeof(*w));
        if (w == NULL) {
            status = NS_ENOMEM;
        } else {
            w->seq = s->enqueued;
            w->cb = cb;
            w->arg = arg;
            nsd_queue_push(&s->waiters, &w->link);
            pthread_cond_signal(&s->cond);
            pthread_mutex_unlock(&s->lock);
            return;
        }
    }
    pthread_mutex_unlock(&s->lock);
    cb(arg, status);
}

nsd_queue_t nsd_store_take_waiters(nsd_store_t *s, int everything)
{
    nsd_queue_t done = {0};
    while (!nsd_queue_empty(&s->waiters) &&
           (everything || WAITER_OF(s->waiters.head)->seq <= s->committed))
        nsd_queue_push(&done, nsd_queue_pop(&s->waiters));
    return done;
}

void nsd_store_call_waiters(nsd_queue_t *waiters, uint64_t committed, int status)
{
    for (nsd_qnode_t *n; (n = nsd_queue_pop(waiters)) != NULL;) {
        waiter_t *w = WAITER_OF(n);
        w->cb(w->arg, w->seq <= committed ? 0 : status);
        free(w);
    }
}

int nsd_store_status(nsd_store_t *s)
{
    return atomic_load(&s->failing) ? NS_EIO : 0;
}

void nsd_store_stats(nsd_store_t *s, nsd_store_stats_t *dst)
{
    memset(dst, 0, sizeof(*dst));
    dst->commits = atomic_load(&s->n_commits);
    dst->commit_failures = atomic_load(&s->n_failures);
    dst->rows = atomic_load(&s->n_rows);
    dst->bytes = atomic_load(&s->n_bytes);
    dst->snapshots = atomic_load(&s->n_snapshots);
    dst->commit_seconds_sum_us = atomic_load(&s->commit_us_sum);
    dst->commit_last_us = atomic_load(&s->commit_last_us);
    dst->failing = atomic_load(&s->failing);
    uint64_t last = atomic_load(&s->last_snapshot_ms);
    dst->last_snapshot_age_ms = last == 0 ? -1 : (int64_t)(nsd_now_ms() - last);
    pthread_mutex_lock(&s->lock);
    dst->queued = s->queued;
    pthread_mutex_unlock(&s->lock);
}

void nsd_store_fail_commits(nsd_store_t *s, unsigned n)
{
    pthread_mutex_lock(&s->lock);
    s->fail_commits = n;
    pthread_mutex_unlock(&s->lock);
}
