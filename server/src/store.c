/* store.c - the SQLite store of normstatd and its background writer thread.
 *
 * DESIGN
 *  Files: --data-dir/normstat.db, WAL mode, synchronous=FULL (see store.h),
 *  PRAGMA application_id = NSD_STORE_APPLICATION_ID, PRAGMA user_version =
 *  NSD_STORE_SCHEMA_VERSION. Tables:
 *    log(seq INTEGER PRIMARY KEY, run, kind, layer, step, body BLOB)
 *        every change of a run since its snapshot, in the order made;
 *    snapshot(run PRIMARY KEY, seq, taken_ms, body)
 *        a run's whole state (checkpoint JSON, doubles with 17 significant
 *        digits: exact); log rows of the run below 'seq' are deleted in the
 *        same transaction that writes it;
 *    meta(key PRIMARY KEY, value)  bookkeeping ("created", "opened").
 *  Log kinds: PUT (config JSON), DOMAIN (a report added a domain), STEP (a
 *  finalized step: counts and per-domain and pooled mean/var as raw
 *  little-endian IEEE doubles, so replay feeds EMA/PreciseBN the very bits
 *  the live path used), RESET (PreciseBN, domain or all). DELETE removes the
 *  run's rows and snapshot; imports and periodic snapshots write a snapshot.
 *
 *  Thread: one writer thread owns the SQLite connection after start-up.
 *  Jobs, and who enqueues them: the registry's persistence hooks, called
 *  under the run's lock on request threads (PUT, DELETE, reports, resets,
 *  imports), on the coordinator (timeouts) and on this thread (snapshots).
 *  Each hook copies what it needs into a job, takes the next sequence number
 *  and appends it to one queue under the store's mutex: the queue order is
 *  the order of the changes of every run, and so is 'seq' in the log.
 *  Ordering: the writer takes the whole queue and writes it, in order, in one
 *  transaction (group commit). It waits up to --commit-interval ms after the
 *  oldest queued job before committing, unless a durable answer is waiting
 *  (nsd_store_after_commit()), the store is stopping, or a retry is due.
 *  Completion: after COMMIT returns, 'committed' = the last seq written;
 *  waiters registered with a seq <= committed are called (outside the mutex)
 *  with 0. Every snapshot_interval ms, or sooner once 64 MiB of log were
 *  written since the last pass, the writer asks the registry to
 *  snapshot each run that has log rows (nsd_registry_snapshot() calls the
 *  run_snapshot hook, which enqueues a job like any other change).
 *  Failure (disk full, I/O error): the transaction is rolled back, so the
 *  committed data is untouched; the batch is KEPT, in order, in front of
 *  whatever is queued later, and retried every retry_ms; every waiting
 *  callback gets NS_EIO at once, and nsd_store_status() reports NS_EIO so
 *  the HTTP side refuses new writes with 503 storage_error. Changes already
 *  applied in memory (a step that finalized) are thus never lost from the
 *  log, nor logged out of order: memory and log agree again as soon as a
 *  retry commits, and service resumes. A /sync answered 503 meanwhile had its
 *  step finalized in memory: it becomes durable with the retry.
 *  Locks: the store's mutex is the innermost lock of the daemon. Hooks take
 *  it under a run's lock (and sometimes the registry's map lock); the writer
 *  releases it before any SQLite call, before asking the registry for
 *  snapshots and before calling waiters, so no run lock ever waits on
 *  SQLite. Nothing is logged under it.
 *  Out of memory in a hook cannot be reported to the registry: the change
 *  is not logged, and every run is snapshotted at the next writer pass,
 *  which makes the log whole again (the writer logs store_enqueue_failed).
 *  One daemon per directory: nsd_store_open() takes flock(LOCK_EX) on
 *  --data-dir for the store's lifetime; a second normstatd is refused.
 *  Stop: nsd_store_stop() lets the writer commit what is queued (retrying
 *  until a deadline if failing), calls the remaining callbacks and joins. A
 *  commit in progress always finishes; a kill -9 at any moment leaves the
 *  last committed transaction (SQLite's atomic commit). */
#define _DEFAULT_SOURCE /* flock() */
#include "store.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <sqlite3.h>

#include "clock.h"
#include "log.h"

#define DEFAULT_RETRY_MS  500u
#define BUSY_TIMEOUT_MS   5000
#define STEP_BLOB_VERSION 1
/* Snapshot early once this much log was written since the last pass, so
 * the log (and recovery time) stays bounded for large, fast runs. */
#define SNAPSHOT_LOG_BYTES (64ull << 20)

enum { KIND_PUT = 1, KIND_DOMAIN = 2, KIND_STEP = 3, KIND_RESET = 4 };
enum { JOB_LOG = 1, JOB_DELETE = 2, JOB_SNAPSHOT = 3 };

typedef struct job_s {
    struct job_s *next;
    uint64_t seq;
    int type; /* JOB_* */
    int kind; /* KIND_* of a JOB_LOG */
    char run[NS_NAME_MAX + 1];
    char layer[NS_NAME_MAX + 1]; /* STEP: the layer, "" otherwise */
    int64_t step;                /* STEP: the step, -1 otherwise */
    unsigned char *body;         /* LOG: the row's body, NULL = SQL NULL */
    size_t body_len;
    json_t *state; /* SNAPSHOT: owned reference */
} job_t;

typedef struct waiter_s {
    struct waiter_s *next;
    uint64_t seq;
    nsd_store_cb cb;
    void *arg;
} waiter_t;

struct nsd_store_s {
    sqlite3 *db;
    int dir_fd; /* holds flock(LOCK_EX) on --data-dir: one daemon per directory */
    char path[4352];
    nsd_store_config_t cfg;
    nsd_registry_t *reg;

    pthread_mutex_t lock;
    pthread_cond_t cond;
    pthread_t thread;
    int started, stopping, exited;
    uint64_t stop_deadline_ms;

    /* under lock */
    job_t *head, *tail; /* queued, in seq order */
    uint64_t queued;
    uint64_t first_enqueued_ms; /* when the oldest queued job arrived */
    uint64_t next_seq;          /* the seq the next job gets */
    uint64_t enqueued;          /* the last seq handed out */
    uint64_t committed;         /* the last seq committed */
    job_t *retry;               /* a failed batch, retried first */
    uint64_t retry_at_ms;
    waiter_t *waiters, *waiters_tail; /* ascending seq */
    int snapshot_all;                 /* a hook lost a change: snapshot every run */
    uint64_t lost;                    /* changes lost that way, logged by the writer */
    unsigned fail_commits;            /* testing */

    _Atomic int failing;
    _Atomic uint64_t n_commits, n_failures, n_rows, n_snapshots, commit_us_sum, commit_last_us;
    _Atomic uint64_t last_snapshot_ms; /* 0 = none */

    /* writer thread only */
    uint64_t log_bytes; /* log body bytes committed since the last snapshot pass */
    sqlite3_stmt *ins_log, *del_log_run, *del_log_before, *ins_snap, *del_snap;
};

static uint64_t mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static uint64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static int fail(nsd_store_error_t *err, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail(nsd_store_error_t *err, const char *path, const char *fmt, ...)
{
    if (err != NULL) {
        snprintf(err->path, sizeof(err->path), "%s", path);
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->reason, sizeof(err->reason), fmt, ap);
        va_end(ap);
    }
    return NS_EIO;
}

/* ---------------------------------------------------------------- encoding */

static void put_u64(unsigned char **p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        (*p)[i] = (unsigned char)(v >> (8 * i));
    *p += 8;
}

static void put_doubles(unsigned char **p, const double *src, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint64_t bits;
        memcpy(&bits, &src[i], sizeof(bits));
        put_u64(p, bits);
    }
}

static void put_name(unsigned char **p, const char *s)
{
    size_t n = strlen(s);
    **p = (unsigned char)n;
    memcpy(*p + 1, s, n);
    *p += 1 + n;
}

/* A reader over a row body; 'ok' drops to 0 on any overrun. */
typedef struct reader_s {
    const unsigned char *p, *end;
    int ok;
} reader_t;

static uint64_t get_u64(reader_t *r)
{
    if (!r->ok || r->end - r->p < 8) {
        r->ok = 0;
        return 0;
    }
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v |= (uint64_t)r->p[i] << (8 * i);
    r->p += 8;
    return v;
}

static void get_name(reader_t *r, char *dst)
{
    size_t n = r->ok && r->p < r->end ? *r->p : 0;
    if (!r->ok || r->p >= r->end || n == 0 || n > NS_NAME_MAX || (size_t)(r->end - r->p) < 1 + n) {
        r->ok = 0;
        dst[0] = '\0';
        return;
    }
    memcpy(dst, r->p + 1, n);
    dst[n] = '\0';
    r->p += 1 + n;
}

/* Doubles decoded into 'dst' (n of them). */
static void get_doubles(reader_t *r, double *dst, size_t n)
{
    for (size_t i = 0; i < n && r->ok; i++) {
        uint64_t bits = get_u64(r);
        memcpy(&dst[i], &bits, sizeof(bits));
    }
}

/* A domain's arrays equal the pooled ones bit for bit (one domain at the
 * step: the same arrivals combined in the same order); stored once. */
static int same_as_pooled(const nsd_step_record_t *rec, const nsd_domain_result_t *d)
{
    size_t c = rec->channels;
    return c > 0 && d->count == rec->count && memcmp(d->mean, rec->mean, c * 8) == 0 &&
           memcmp(d->var, rec->var, c * 8) == 0;
}

/* STEP body: version, step, update, complete, workers, first_pending,
 * channels, count, n_domains, pooled mean[C] var[C] (if C > 0), then per
 * domain: name, count, a flag (1: arrays as pooled), mean[C], var[C] (if
 * C > 0 and the flag is 0). */
static unsigned char *encode_step(const nsd_step_record_t *rec, size_t *len)
{
    size_t c = rec->channels;
    size_t arrays = c > 0 ? 2 * c * 8 : 0;
    size_t n = 9 * 8 + arrays;
    for (size_t i = 0; i < rec->n_domains; i++)
        n += 1 + strlen(rec->domains[i].domain) + 8 + 1 +
             (same_as_pooled(rec, &rec->domains[i]) ? 0 : arrays);
    unsigned char *buf = malloc(n), *p = buf;
    if (buf == NULL)
        return NULL;
    put_u64(&p, STEP_BLOB_VERSION);
    put_u64(&p, rec->step);
    put_u64(&p, rec->update);
    put_u64(&p, (uint64_t)rec->complete);
    put_u64(&p, rec->workers);
    put_u64(&p, (uint64_t)rec->first_pending);
    put_u64(&p, c);
    put_u64(&p, rec->count);
    put_u64(&p, rec->n_domains);
    if (c > 0) {
        put_doubles(&p, rec->mean, c);
        put_doubles(&p, rec->var, c);
    }
    for (size_t i = 0; i < rec->n_domains; i++) {
        put_name(&p, rec->domains[i].domain);
        put_u64(&p, rec->domains[i].count);
        int same = same_as_pooled(rec, &rec->domains[i]);
        *p++ = (unsigned char)same;
        if (c > 0 && !same) {
            put_doubles(&p, rec->domains[i].mean, c);
            put_doubles(&p, rec->domains[i].var, c);
        }
    }
    *len = n;
    return buf;
}

/* A decoded STEP body; free with step_clear(). */
typedef struct step_row_s {
    nsd_step_record_t rec;
    nsd_domain_result_t *domains;
    char (*names)[NS_NAME_MAX + 1];
    double *arrays;
} step_row_t;

static void step_clear(step_row_t *s)
{
    free(s->domains);
    free(s->names);
    free(s->arrays);
    memset(s, 0, sizeof(*s));
}

static int decode_step(const void *body, size_t len, const char *layer, step_row_t *dst)
{
    memset(dst, 0, sizeof(*dst));
    reader_t r = {body, (const unsigned char *)body + len, body != NULL};
    if (get_u64(&r) != STEP_BLOB_VERSION)
        return NS_EINVAL;
    nsd_step_record_t *rec = &dst->rec;
    rec->layer = layer;
    rec->step = get_u64(&r);
    rec->update = (unsigned)get_u64(&r);
    rec->complete = (int)get_u64(&r);
    rec->workers = (uint32_t)get_u64(&r);
    rec->first_pending = (int64_t)get_u64(&r);
    uint64_t c = get_u64(&r);
    rec->count = get_u64(&r);
    uint64_t nd = get_u64(&r);
    /* Sizes must fit in what is left of the body. */
    if (!r.ok || c > (uint64_t)(r.end - r.p) / 16 || nd > (uint64_t)(r.end - r.p) / 10)
        return NS_EINVAL;
    rec->channels = (size_t)c;
    rec->n_domains = (size_t)nd;
    dst->domains = calloc(nd ? nd : 1, sizeof(*dst->domains));
    dst->names = calloc(nd ? nd : 1, sizeof(*dst->names));
    dst->arrays = malloc((2 * c * (nd + 1)) * sizeof(double) + 1);
    if (dst->domains == NULL || dst->names == NULL || dst->arrays == NULL) {
        step_clear(dst);
        return NS_ENOMEM;
    }
    double *a = dst->arrays;
    if (c > 0) {
        rec->mean = a;
        rec->var = a + c;
        get_doubles(&r, a, 2 * c);
        a += 2 * c;
    }
    for (size_t i = 0; i < nd && r.ok; i++) {
        get_name(&r, dst->names[i]);
        dst->domains[i].domain = dst->names[i];
        dst->domains[i].count = get_u64(&r);
        int same = r.ok && r.p < r.end ? *r.p++ : (r.ok = 0);
        if (c > 0 && same == 1) {
            dst->domains[i].mean = rec->mean;
            dst->domains[i].var = rec->var;
        } else if (same != 0) {
            r.ok = 0;
        } else if (c > 0) {
            dst->domains[i].mean = a;
            dst->domains[i].var = a + c;
            get_doubles(&r, a, 2 * c);
            a += 2 * c;
        }
    }
    rec->domains = dst->domains;
    if (!r.ok || r.p != r.end) {
        step_clear(dst);
        return NS_EINVAL;
    }
    return 0;
}

/* ---------------------------------------------------------------- queue (any thread) */

static job_t *job_new(int type, const char *run)
{
    job_t *j = calloc(1, sizeof(*j));
    if (j == NULL)
        return NULL;
    j->type = type;
    j->step = -1;
    snprintf(j->run, sizeof(j->run), "%s", run);
    return j;
}

static void job_free(job_t *j)
{
    if (j == NULL)
        return;
    free(j->body);
    json_decref(j->state);
    free(j);
}

static void jobs_free(job_t *j)
{
    while (j != NULL) {
        job_t *next = j->next;
        job_free(j);
        j = next;
    }
}

/* Append a job (NULL: a change could not be copied). Called by the hooks
 * under a run's lock, so it does not log: the writer reports lost changes. */
static void enqueue(nsd_store_t *s, job_t *j)
{
    pthread_mutex_lock(&s->lock);
    if (j == NULL) {
        s->snapshot_all = 1;
        s->lost++;
        pthread_cond_signal(&s->cond);
        pthread_mutex_unlock(&s->lock);
        return;
    }
    j->seq = s->next_seq++;
    s->enqueued = j->seq;
    if (s->tail)
        s->tail->next = j;
    else {
        s->head = j;
        s->first_enqueued_ms = nsd_now_ms();
    }
    s->tail = j;
    s->queued++;
    pthread_cond_signal(&s->cond);
    pthread_mutex_unlock(&s->lock);
}

static job_t *log_job(const char *run, int kind, const void *body, size_t len)
{
    job_t *j = job_new(JOB_LOG, run);
    if (j == NULL)
        return NULL;
    j->kind = kind;
    if (body != NULL) {
        j->body = malloc(len ? len : 1);
        if (j->body == NULL) {
            job_free(j);
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
    json_t *m = c->momentum == NS_MOMENTUM_CUMULATIVE ? json_null() : json_real(c->momentum);
    json_t *o =
        json_pack("{s:I, s:o, s:I, s:s, s:b}", "world_size", (json_int_t)c->world_size, "momentum",
                  m, "sync_timeout_ms", (json_int_t)c->sync_timeout_ms, "on_timeout",
                  c->on_timeout_drop ? "drop" : "partial", "ema_debias", c->ema_debias);
    char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    enqueue(arg, text ? log_job(run, KIND_PUT, text, strlen(text)) : NULL);
    free(text);
}

static void hook_deleted(void *arg, const char *run)
{
    enqueue(arg, job_new(JOB_DELETE, run));
}

static void hook_step(void *arg, const char *run, const nsd_step_record_t *rec)
{
    job_t *j = job_new(JOB_LOG, run);
    if (j != NULL) {
        j->kind = KIND_STEP;
        snprintf(j->layer, sizeof(j->layer), "%s", rec->layer);
        j->step = (int64_t)rec->step;
        j->body = encode_step(rec, &j->body_len);
        if (j->body == NULL) {
            job_free(j);
            j = NULL;
        }
    }
    enqueue(arg, j);
}

static void hook_domain(void *arg, const char *run, const char *domain)
{
    enqueue(arg, log_job(run, KIND_DOMAIN, domain, strlen(domain)));
}

static void hook_reset(void *arg, const char *run, const char *domain)
{
    enqueue(arg, log_job(run, KIND_RESET, domain, domain ? strlen(domain) : 0));
}

static void hook_snapshot(void *arg, const char *run, json_t *state)
{
    job_t *j = job_new(JOB_SNAPSHOT, run);
    if (j != NULL)
        j->state = json_incref(state);
    enqueue(arg, j);
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
}

/* ---------------------------------------------------------------- waiters */

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
            w->next = NULL;
            w->seq = s->enqueued;
            w->cb = cb;
            w->arg = arg;
            if (s->waiters_tail)
                s->waiters_tail->next = w;
            else
                s->waiters = w;
            s->waiters_tail = w;
            pthread_cond_signal(&s->cond);
            pthread_mutex_unlock(&s->lock);
            return;
        }
    }
    pthread_mutex_unlock(&s->lock);
    cb(arg, status);
}

/* Detach the waiters to call: all of them (everything = 1) or those whose
 * seq is committed. Lock held. */
static waiter_t *take_waiters(nsd_store_t *s, int everything)
{
    waiter_t *done = NULL, **tail = &done;
    while (s->waiters != NULL && (everything || s->waiters->seq <= s->committed)) {
        waiter_t *w = s->waiters;
        s->waiters = w->next;
        w->next = NULL;
        *tail = w;
        tail = &w->next;
    }
    if (s->waiters == NULL)
        s->waiters_tail = NULL;
    return done;
}

/* Call detached waiters (no lock held): committed ones get 0, others 'status'. */
static void call_waiters(waiter_t *w, uint64_t committed, int status)
{
    while (w != NULL) {
        waiter_t *next = w->next;
        w->cb(w->arg, w->seq <= committed ? 0 : status);
        free(w);
        w = next;
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

/* ---------------------------------------------------------------- open */

static int exec(sqlite3 *db, const char *sql)
{
    return sqlite3_exec(db, sql, NULL, NULL, NULL);
}

/* One integer from a query; 'ok' 0 if it failed. */
static int64_t query_int(sqlite3 *db, const char *sql, int *rc)
{
    sqlite3_stmt *st = NULL;
    int64_t v = 0;
    *rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
    if (*rc == SQLITE_OK) {
        *rc = sqlite3_step(st);
        if (*rc == SQLITE_ROW) {
            v = sqlite3_column_int64(st, 0);
            *rc = SQLITE_OK;
        } else if (*rc == SQLITE_DONE) {
            *rc = SQLITE_OK;
        }
    }
    sqlite3_finalize(st);
    return v;
}

static const char SCHEMA[] =
    "CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);"
    "CREATE TABLE log(seq INTEGER PRIMARY KEY, run TEXT NOT NULL, kind INTEGER NOT NULL,"
    " layer TEXT, step INTEGER, body BLOB);"
    "CREATE INDEX log_run ON log(run, seq);"
    "CREATE TABLE snapshot(run TEXT PRIMARY KEY, seq INTEGER NOT NULL,"
    " taken_ms INTEGER NOT NULL, body TEXT NOT NULL);";

/* Check the directory; create it if missing (not its parents). */
static int check_dir(const char *dir, nsd_store_error_t *err)
{
    struct stat sb;
    if (stat(dir, &sb) != 0) {
        if (errno != ENOENT)
            return fail(err, dir, "cannot stat data directory: %s", strerror(errno));
        if (mkdir(dir, 0750) != 0)
            return fail(err, dir, "cannot create data directory: %s", strerror(errno));
        if (stat(dir, &sb) != 0)
            return fail(err, dir, "cannot stat data directory: %s", strerror(errno));
    }
    if (!S_ISDIR(sb.st_mode))
        return fail(err, dir, "data directory is not a directory");
    if (access(dir, W_OK | X_OK) != 0)
        return fail(err, dir, "data directory is not writable: %s", strerror(errno));
    return 0;
}

/* Validate (or initialise) the opened database. */
static int check_db(nsd_store_t *s, nsd_store_error_t *err)
{
    sqlite3 *db = s->db;
    int rc;
    /* The first read of the header: a file that is not SQLite fails here. */
    int64_t app = query_int(db, "PRAGMA application_id", &rc);
    if (rc != SQLITE_OK)
        return fail(err, s->path, "not a normstat database (%s)", sqlite3_errmsg(db));
    int64_t version = query_int(db, "PRAGMA user_version", &rc);
    int64_t tables = rc == SQLITE_OK ? query_int(db, "SELECT count(*) FROM sqlite_master", &rc) : 0;
    if (rc != SQLITE_OK)
        return fail(err, s->path, "not a normstat database (%s)", sqlite3_errmsg(db));
    if (app != NSD_STORE_APPLICATION_ID && (tables > 0 || version != 0 || app != 0))
        return fail(err, s->path,
                    "foreign SQLite database (application_id %lld, %lld tables): not a normstat "
                    "store",
                    (long long)app, (long long)tables);
    if (version > NSD_STORE_SCHEMA_VERSION)
        return fail(err, s->path,
                    "schema version %lld is newer than this build's %d: use a newer normstatd",
                    (long long)version, NSD_STORE_SCHEMA_VERSION);
    if (app == NSD_STORE_APPLICATION_ID && version < 1)
        return fail(err, s->path, "schema version %lld unknown", (long long)version);
    if (tables > 0) {
        sqlite3_stmt *st = NULL;
        rc = sqlite3_prepare_v2(db, "PRAGMA quick_check", -1, &st, NULL);
        const unsigned char *res = NULL;
        if (rc == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
            res = sqlite3_column_text(st, 0);
        int ok = res != NULL && strcmp((const char *)res, "ok") == 0;
        char what[200];
        snprintf(what, sizeof(what), "%s", res ? (const char *)res : sqlite3_errmsg(db));
        for (char *p = what; *p != '\0'; p++) /* one line */
            if (*p == '\n')
                *p = ' ';
        sqlite3_finalize(st);
        if (!ok)
            return fail(err, s->path, "database is corrupt (quick_check: %s)", what);
    }
    /* WAL and full sync (store.h says why). */
    sqlite3_stmt *st = NULL;
    rc = sqlite3_prepare_v2(db, "PRAGMA journal_mode=WAL", -1, &st, NULL);
    const unsigned char *mode = NULL;
    if (rc == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
        mode = sqlite3_column_text(st, 0);
    int wal = mode != NULL && strcmp((const char *)mode, "wal") == 0;
    sqlite3_finalize(st);
    if (!wal)
        return fail(err, s->path, "cannot switch to WAL mode (%s)", sqlite3_errmsg(db));
    if (exec(db, "PRAGMA synchronous=FULL") != SQLITE_OK)
        return fail(err, s->path, "cannot set synchronous=FULL (%s)", sqlite3_errmsg(db));
    /* Create the schema (a new file), and prove the file is writable. */
    char sql[256];
    if (exec(db, "BEGIN IMMEDIATE") != SQLITE_OK)
        return fail(err, s->path, "cannot write the database (%s)", sqlite3_errmsg(db));
    rc = SQLITE_OK;
    if (tables == 0) {
        rc = exec(db, SCHEMA);
        snprintf(sql, sizeof(sql), "PRAGMA application_id=%d", NSD_STORE_APPLICATION_ID);
        rc = rc ? rc : exec(db, sql);
        snprintf(sql, sizeof(sql), "PRAGMA user_version=%d", NSD_STORE_SCHEMA_VERSION);
        rc = rc ? rc : exec(db, sql);
        snprintf(sql, sizeof(sql), "INSERT INTO meta VALUES('created', '%llu')",
                 (unsigned long long)wall_ms());
        rc = rc ? rc : exec(db, sql);
    }
    /* Migrations from older versions go here (there are none yet). */
    snprintf(sql, sizeof(sql), "INSERT OR REPLACE INTO meta VALUES('opened', '%llu')",
             (unsigned long long)wall_ms());
    rc = rc ? rc : exec(db, sql);
    rc = rc ? rc : exec(db, "COMMIT");
    if (rc != SQLITE_OK) {
        int code = sqlite3_errcode(db);
        char msg[256];
        snprintf(msg, sizeof(msg), "%s", sqlite3_errmsg(db));
        exec(db, "ROLLBACK");
        if (code == SQLITE_CORRUPT || code == SQLITE_NOTADB)
            return fail(err, s->path, "database is corrupt (%s)", msg);
        return fail(err, s->path, "cannot write the database (%s)", msg);
    }
    /* Sequence numbers continue after the highest one stored. */
    int64_t a = query_int(db, "SELECT coalesce(max(seq), 0) FROM log", &rc);
    int64_t b =
        rc == SQLITE_OK ? query_int(db, "SELECT coalesce(max(seq), 0) FROM snapshot", &rc) : 0;
    if (rc != SQLITE_OK)
        return fail(err, s->path, "cannot read the database (%s)", sqlite3_errmsg(db));
    s->committed = (uint64_t)(a > b ? a : b);
    s->enqueued = s->committed;
    s->next_seq = s->committed + 1;
    return 0;
}

int nsd_store_open(nsd_store_t **dst, const char *dir, const nsd_store_config_t *cfg,
                   nsd_store_error_t *err)
{
    *dst = NULL;
    int rc = check_dir(dir, err);
    if (rc != 0)
        return rc;
    nsd_store_t *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return fail(err, dir, "out of memory");
    snprintf(s->path, sizeof(s->path), "%s/%s", dir, NSD_STORE_FILE);
    s->dir_fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (s->dir_fd < 0 || flock(s->dir_fd, LOCK_EX | LOCK_NB) != 0) {
        int e = errno;
        if (s->dir_fd >= 0)
            close(s->dir_fd);
        s->dir_fd = -1;
        free(s);
        if (e == EWOULDBLOCK)
            return fail(err, dir, "data directory is in use by another normstatd");
        return fail(err, dir, "cannot lock data directory: %s", strerror(e));
    }
    if (cfg != NULL)
        s->cfg = *cfg;
    if (s->cfg.retry_ms == 0)
        s->cfg.retry_ms = DEFAULT_RETRY_MS;
    pthread_mutex_init(&s->lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&s->cond, &ca);
    pthread_condattr_destroy(&ca);

    struct stat sb;
    if (stat(s->path, &sb) == 0 && !S_ISREG(sb.st_mode)) {
        rc = fail(err, s->path, "database path is not a regular file");
        goto fail;
    }
    rc = sqlite3_open_v2(s->path, &s->db,
                         SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) {
        rc = fail(err, s->path, "cannot open the database (%s)",
                  s->db ? sqlite3_errmsg(s->db) : sqlite3_errstr(rc));
        goto fail;
    }
    sqlite3_busy_timeout(s->db, BUSY_TIMEOUT_MS);
    sqlite3_extended_result_codes(s->db, 0);
    rc = check_db(s, err);
    if (rc != 0)
        goto fail;
    *dst = s;
    return 0;
fail:
    nsd_store_free(s);
    return NS_EIO;
}

/* ---------------------------------------------------------------- recovery */

/* A run's snapshot seq (rows below it were truncated with it). */
typedef struct snap_seq_s {
    char run[NS_NAME_MAX + 1];
    uint64_t seq;
} snap_seq_t;

static int apply_row(nsd_registry_t *reg, const char *run, int kind, const char *layer,
                     const void *body, size_t len, ns_error_detail_t *e)
{
    char text[NS_NAME_MAX + 1];
    switch (kind) {
    case KIND_PUT: {
        ns_run_config_t cfg;
        ns_run_config_defaults(&cfg);
        int rc = ns_run_config_decode_json(&cfg, body ? body : "", len, e);
        return rc ? rc : nsd_registry_put_run(reg, run, &cfg, NULL, e);
    }
    case KIND_DOMAIN:
    case KIND_RESET:
        if (len > NS_NAME_MAX || (kind == KIND_DOMAIN && (body == NULL || len == 0)))
            return ns_error_set(e, NS_EINVAL, "body", "bad domain");
        if (body != NULL)
            memcpy(text, body, len);
        text[len] = '\0';
        if (kind == KIND_DOMAIN)
            return nsd_registry_replay_domain(reg, run, text, e);
        return nsd_registry_precise_reset(reg, run, body != NULL && len > 0 ? text : NULL, NULL, e);
    case KIND_STEP: {
        step_row_t row;
        int rc = decode_step(body, len, layer ? layer : "", &row);
        if (rc != 0)
            return ns_error_set(e, rc, "body", "undecodable step record");
        rc = nsd_registry_replay_step(reg, run, &row.rec, e);
        step_clear(&row);
        return rc;
    }
    default:
        return ns_error_set(e, NS_EINVAL, "kind", "unknown row kind %d", kind);
    }
}

int nsd_store_recover(nsd_store_t *s, nsd_registry_t *reg, nsd_store_recovery_t *out,
                      nsd_store_error_t *err)
{
    uint64_t t0 = nsd_now_ms();
    nsd_store_recovery_t r;
    memset(&r, 0, sizeof(r));
    snap_seq_t *snaps = NULL;
    size_t n_snaps = 0, cap_snaps = 0;
    sqlite3_stmt *st = NULL;
    int rc = 0;
    ns_error_detail_t e = {0};

    if (sqlite3_prepare_v2(s->db, "SELECT run, seq, body FROM snapshot ORDER BY run", -1, &st,
                           NULL) != SQLITE_OK) {
        rc = fail(err, s->path, "cannot read snapshots (%s)", sqlite3_errmsg(s->db));
        goto out;
    }
    int step;
    while ((step = sqlite3_step(st)) == SQLITE_ROW) {
        const char *run = (const char *)sqlite3_column_text(st, 0);
        const char *body = (const char *)sqlite3_column_text(st, 2);
        size_t len = (size_t)sqlite3_column_bytes(st, 2);
        if (run == NULL || body == NULL || !ns_name_valid(run)) {
            rc = fail(err, s->path, "corrupt snapshot row");
            goto out;
        }
        int irc = nsd_registry_checkpoint_import(reg, run, body, len, &e);
        if (irc != 0) {
            rc = fail(err, s->path, "snapshot of run %s cannot be loaded: %s", run, e.message);
            goto out;
        }
        if (n_snaps == cap_snaps) {
            size_t cap = cap_snaps ? 2 * cap_snaps : 16;
            snap_seq_t *p = realloc(snaps, cap * sizeof(*p));
            if (p == NULL) {
                rc = fail(err, s->path, "out of memory");
                goto out;
            }
            snaps = p;
            cap_snaps = cap;
        }
        snprintf(snaps[n_snaps].run, sizeof(snaps[n_snaps].run), "%s", run);
        snaps[n_snaps].seq = (uint64_t)sqlite3_column_int64(st, 1);
        n_snaps++;
        r.snapshots++;
    }
    if (step != SQLITE_DONE) {
        rc = fail(err, s->path, "cannot read snapshots (%s)", sqlite3_errmsg(s->db));
        goto out;
    }
    sqlite3_finalize(st);
    st = NULL;

    if (sqlite3_prepare_v2(s->db, "SELECT seq, run, kind, layer, body FROM log ORDER BY seq", -1,
                           &st, NULL) != SQLITE_OK) {
        rc = fail(err, s->path, "cannot read the log (%s)", sqlite3_errmsg(s->db));
        goto out;
    }
    while ((step = sqlite3_step(st)) == SQLITE_ROW) {
        uint64_t seq = (uint64_t)sqlite3_column_int64(st, 0);
        const char *run = (const char *)sqlite3_column_text(st, 1);
        int kind = sqlite3_column_int(st, 2);
        const char *layer = (const char *)sqlite3_column_text(st, 3);
        const void *body = sqlite3_column_blob(st, 4);
        size_t len = (size_t)sqlite3_column_bytes(st, 4);
        if (run == NULL || !ns_name_valid(run)) {
            rc = fail(err, s->path, "corrupt log row %llu", (unsigned long long)seq);
            goto out;
        }
        int skip = 0;
        for (size_t i = 0; i < n_snaps; i++)
            if (strcmp(snaps[i].run, run) == 0 && seq < snaps[i].seq)
                skip = 1;
        if (skip)
            continue;
        memset(&e, 0, sizeof(e));
        int arc = apply_row(reg, run, kind, layer, body, len, &e);
        if (arc != 0) {
            rc = fail(err, s->path, "log row %llu (run %s) cannot be replayed: %s %s",
                      (unsigned long long)seq, run, e.field, e.message);
            goto out;
        }
        r.rows++;
        r.steps += kind == KIND_STEP;
    }
    if (step != SQLITE_DONE) {
        rc = fail(err, s->path, "cannot read the log (%s)", sqlite3_errmsg(s->db));
        goto out;
    }
    nsd_registry_replay_finish(reg);
    nsd_counters_t c;
    nsd_registry_counters(reg, &c);
    r.runs = c.runs;
    r.ms = nsd_now_ms() - t0;
out:
    sqlite3_finalize(st);
    free(snaps);
    if (out != NULL)
        *out = r;
    return rc;
}

/* ---------------------------------------------------------------- writer */

static int prepare_all(nsd_store_t *s)
{
    int rc = sqlite3_prepare_v2(
        s->db, "INSERT INTO log(seq, run, kind, layer, step, body) VALUES(?1, ?2, ?3, ?4, ?5, ?6)",
        -1, &s->ins_log, NULL);
    rc =
        rc ? rc
           : sqlite3_prepare_v2(s->db, "DELETE FROM log WHERE run = ?1", -1, &s->del_log_run, NULL);
    rc = rc ? rc
            : sqlite3_prepare_v2(s->db, "DELETE FROM log WHERE run = ?1 AND seq < ?2", -1,
                                 &s->del_log_before, NULL);
    rc = rc ? rc
            : sqlite3_prepare_v2(s->db,
                                 "INSERT OR REPLACE INTO snapshot(run, seq, taken_ms, body) "
                                 "VALUES(?1, ?2, ?3, ?4)",
                                 -1, &s->ins_snap, NULL);
    rc = rc ? rc
            : sqlite3_prepare_v2(s->db, "DELETE FROM snapshot WHERE run = ?1", -1, &s->del_snap,
                                 NULL);
    return rc;
}

/* Run a prepared statement once. */
static int run_stmt(sqlite3_stmt *st)
{
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

static int write_job(nsd_store_t *s, const job_t *j, uint64_t *rows)
{
    int rc;
    switch (j->type) {
    case JOB_LOG:
        sqlite3_bind_int64(s->ins_log, 1, (sqlite3_int64)j->seq);
        sqlite3_bind_text(s->ins_log, 2, j->run, -1, SQLITE_STATIC);
        sqlite3_bind_int(s->ins_log, 3, j->kind);
        if (j->layer[0] != '\0')
            sqlite3_bind_text(s->ins_log, 4, j->layer, -1, SQLITE_STATIC);
        if (j->step >= 0)
            sqlite3_bind_int64(s->ins_log, 5, j->step);
        if (j->body != NULL)
            sqlite3_bind_blob(s->ins_log, 6, j->body, (int)j->body_len, SQLITE_STATIC);
        rc = run_stmt(s->ins_log);
        *rows += rc == SQLITE_OK;
        return rc;
    case JOB_DELETE:
        sqlite3_bind_text(s->del_log_run, 1, j->run, -1, SQLITE_STATIC);
        rc = run_stmt(s->del_log_run);
        sqlite3_bind_text(s->del_snap, 1, j->run, -1, SQLITE_STATIC);
        return rc ? rc : run_stmt(s->del_snap);
    case JOB_SNAPSHOT: {
        char *text = json_dumps(j->state, JSON_COMPACT);
        if (text == NULL)
            return SQLITE_NOMEM;
        sqlite3_bind_text(s->ins_snap, 1, j->run, -1, SQLITE_STATIC);
        sqlite3_bind_int64(s->ins_snap, 2, (sqlite3_int64)j->seq);
        sqlite3_bind_int64(s->ins_snap, 3, (sqlite3_int64)wall_ms());
        sqlite3_bind_text(s->ins_snap, 4, text, -1, SQLITE_STATIC);
        rc = run_stmt(s->ins_snap);
        free(text);
        if (rc != SQLITE_OK)
            return rc;
        sqlite3_bind_text(s->del_log_before, 1, j->run, -1, SQLITE_STATIC);
        sqlite3_bind_int64(s->del_log_before, 2, (sqlite3_int64)j->seq);
        return run_stmt(s->del_log_before);
    }
    }
    return SQLITE_MISUSE;
}

/* Write a batch in one transaction. @return SQLITE_OK, or the error with
 * its message in why (rolled back). */
static int write_batch(nsd_store_t *s, const job_t *batch, int inject, uint64_t *rows, char *why,
                       size_t why_cap)
{
    *rows = 0;
    if (inject) {
        snprintf(why, why_cap, "%s (injected)", sqlite3_errstr(SQLITE_FULL));
        return SQLITE_FULL;
    }
    int rc = exec(s->db, "BEGIN IMMEDIATE");
    for (const job_t *j = batch; rc == SQLITE_OK && j != NULL; j = j->next)
        rc = write_job(s, j, rows);
    if (rc == SQLITE_OK)
        rc = exec(s->db, "COMMIT");
    if (rc != SQLITE_OK) {
        snprintf(why, why_cap, "%s", sqlite3_errmsg(s->db));
        if (!sqlite3_get_autocommit(s->db))
            exec(s->db, "ROLLBACK");
    }
    return rc;
}

/* Ask the registry to snapshot each run that has log rows (or every run). */
static void take_snapshots(nsd_store_t *s, int all)
{
    sqlite3_stmt *st = NULL;
    const char *sql = all ? "SELECT DISTINCT run FROM log UNION SELECT run FROM snapshot"
                          : "SELECT DISTINCT run FROM log";
    if (sqlite3_prepare_v2(s->db, sql, -1, &st, NULL) != SQLITE_OK)
        return;
    size_t n = 0;
    while (sqlite3_step(st) == SQLITE_ROW) {
        const char *run = (const char *)sqlite3_column_text(st, 0);
        if (run != NULL && nsd_registry_snapshot(s->reg, run, NULL) == 0)
            n++;
    }
    sqlite3_finalize(st);
    if (all) {
        /* Runs changed since the last commit may have no row at all yet. */
        json_t *list = nsd_registry_list_json(s->reg);
        size_t i;
        json_t *v;
        json_array_foreach(json_object_get(list, "runs"), i, v)
        {
            const char *run = json_string_value(json_object_get(v, "run"));
            if (run != NULL && nsd_registry_snapshot(s->reg, run, NULL) == 0)
                n++;
        }
        json_decref(list);
    }
    if (n > 0)
        nsd_log(NSD_LOG_DEBUG, "store_snapshot", "runs=%zu", n);
}

static void abs_deadline(struct timespec *ts, uint64_t delay_ms)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    uint64_t ns = (uint64_t)ts->tv_nsec + (delay_ms % 1000u) * 1000000u;
    ts->tv_sec += (time_t)(delay_ms / 1000u + ns / 1000000000u);
    ts->tv_nsec = (long)(ns % 1000000000u);
}

static void *writer_main(void *arg)
{
    nsd_store_t *s = arg;
    uint64_t next_snapshot =
        s->cfg.snapshot_interval_ms ? nsd_now_ms() + s->cfg.snapshot_interval_ms : UINT64_MAX;
    char why[512], q[600];
    pthread_mutex_lock(&s->lock);
    for (;;) {
        uint64_t now = nsd_now_ms();
        int have = s->head != NULL || s->retry != NULL;
        if (s->stopping && !have)
            break;
        if (have && atomic_load(&s->failing) && now < s->retry_at_ms) {
            if (s->stopping && now >= s->stop_deadline_ms)
                break;
            struct timespec ts;
            uint64_t until = s->retry_at_ms;
            if (s->stopping && s->stop_deadline_ms < until)
                until = s->stop_deadline_ms;
            abs_deadline(&ts, until - now);
            pthread_cond_timedwait(&s->cond, &s->lock, &ts);
            continue;
        }
        if (have) {
            int due = s->retry != NULL || s->waiters != NULL || s->stopping ||
                      s->cfg.commit_interval_ms == 0 ||
                      now >= s->first_enqueued_ms + s->cfg.commit_interval_ms;
            if (!due) {
                struct timespec ts;
                abs_deadline(&ts, s->first_enqueued_ms + s->cfg.commit_interval_ms - now);
                pthread_cond_timedwait(&s->cond, &s->lock, &ts);
                continue;
            }
            /* The batch: a failed one first, then everything queued. */
            job_t *batch = s->retry, *last = NULL;
            if (batch != NULL) {
                last = batch;
                while (last->next)
                    last = last->next;
                last->next = s->head;
            } else {
                batch = s->head;
            }
            if (s->tail != NULL)
                last = s->tail;
            s->retry = NULL;
            s->head = s->tail = NULL;
            s->queued = 0;
            int inject = s->fail_commits > 0;
            if (inject)
                s->fail_commits--;
            pthread_mutex_unlock(&s->lock);

            uint64_t t0 = mono_us(), rows = 0;
            int rc = write_batch(s, batch, inject, &rows, why, sizeof(why));
            uint64_t us = mono_us() - t0;

            pthread_mutex_lock(&s->lock);
            waiter_t *done;
            int was_failing = atomic_load(&s->failing);
            if (rc == SQLITE_OK) {
                s->committed = last->seq;
                atomic_store(&s->failing, 0);
                atomic_fetch_add(&s->n_commits, 1);
                atomic_fetch_add(&s->n_rows, rows);
                atomic_fetch_add(&s->commit_us_sum, us);
                atomic_store(&s->commit_last_us, us);
                uint64_t snaps = 0;
                for (const job_t *j = batch; j != NULL; j = j->next) {
                    snaps += j->type == JOB_SNAPSHOT;
                    s->log_bytes += j->body_len;
                }
                if (snaps > 0) {
                    atomic_fetch_add(&s->n_snapshots, snaps);
                    atomic_store(&s->last_snapshot_ms, nsd_now_ms());
                }
                done = take_waiters(s, 0);
                uint64_t committed = s->committed;
                pthread_mutex_unlock(&s->lock);
                jobs_free(batch);
                if (was_failing)
                    nsd_log(NSD_LOG_INFO, "store_write_resumed", "path=%s",
                            nsd_log_quote(q, sizeof(q), s->path));
                call_waiters(done, committed, 0);
            } else {
                /* Keep the batch, in order, ahead of later jobs; retry later. */
                s->retry = batch;
                s->retry_at_ms = nsd_now_ms() + s->cfg.retry_ms;
                atomic_store(&s->failing, 1);
                atomic_fetch_add(&s->n_failures, 1);
                done = take_waiters(s, 1);
                uint64_t committed = s->committed;
                pthread_mutex_unlock(&s->lock);
                char qp[600];
                nsd_log(NSD_LOG_ERROR, "store_write_failed", "path=%s reason=%s retry_ms=%llu",
                        nsd_log_quote(qp, sizeof(qp), s->path), nsd_log_quote(q, sizeof(q), why),
                        (unsigned long long)s->cfg.retry_ms);
                call_waiters(done, committed, NS_EIO);
            }
            pthread_mutex_lock(&s->lock);
            continue;
        }
        if (s->stopping)
            break;
        if (s->snapshot_all || now >= next_snapshot ||
            (s->cfg.snapshot_interval_ms && s->log_bytes >= SNAPSHOT_LOG_BYTES)) {
            int all = s->snapshot_all;
            uint64_t lost = s->lost;
            s->snapshot_all = 0;
            s->lost = 0;
            s->log_bytes = 0;
            pthread_mutex_unlock(&s->lock);
            if (lost > 0)
                nsd_log(NSD_LOG_ERROR, "store_enqueue_failed", "reason=out_of_memory changes=%llu",
                        (unsigned long long)lost);
            take_snapshots(s, all);
            next_snapshot = s->cfg.snapshot_interval_ms ? nsd_now_ms() + s->cfg.snapshot_interval_ms
                                                        : UINT64_MAX;
            pthread_mutex_lock(&s->lock);
            continue;
        }
        if (next_snapshot == UINT64_MAX) {
            pthread_cond_wait(&s->cond, &s->lock);
        } else {
            struct timespec ts;
            abs_deadline(&ts, next_snapshot - now);
            pthread_cond_timedwait(&s->cond, &s->lock, &ts);
        }
    }
    /* Stopped: whoever still waits learns whether its data made it. */
    s->exited = 1;
    waiter_t *done = take_waiters(s, 1);
    uint64_t committed = s->committed, lost = s->lost;
    s->lost = 0;
    pthread_mutex_unlock(&s->lock);
    if (lost > 0)
        nsd_log(NSD_LOG_ERROR, "store_enqueue_failed", "reason=out_of_memory changes=%llu",
                (unsigned long long)lost);
    call_waiters(done, committed, NS_EIO);
    return NULL;
}

int nsd_store_start(nsd_store_t *s, nsd_registry_t *reg)
{
    s->reg = reg;
    if (prepare_all(s) != SQLITE_OK) {
        nsd_log(NSD_LOG_ERROR, "store_start_failed", "reason=prepare error=%s",
                sqlite3_errmsg(s->db));
        return NS_EIO;
    }
    pthread_mutex_lock(&s->lock);
    int rc = pthread_create(&s->thread, NULL, writer_main, s);
    s->started = rc == 0;
    pthread_mutex_unlock(&s->lock);
    return rc == 0 ? 0 : NS_ENOMEM;
}

int nsd_store_stop(nsd_store_t *s, uint64_t timeout_ms)
{
    if (s == NULL)
        return 0;
    pthread_mutex_lock(&s->lock);
    int started = s->started;
    if (!s->stopping) {
        s->stopping = 1;
        s->stop_deadline_ms = nsd_now_ms() + timeout_ms;
        pthread_cond_signal(&s->cond);
    }
    pthread_mutex_unlock(&s->lock);
    if (started) {
        pthread_join(s->thread, NULL);
        s->started = 0;
    }
    pthread_mutex_lock(&s->lock);
    s->exited = 1;
    int lost = s->enqueued > s->committed;
    uint64_t n = 0;
    for (job_t *j = s->retry; j != NULL; j = j->next)
        n++;
    n += s->queued;
    pthread_mutex_unlock(&s->lock);
    if (lost) {
        char q[600];
        nsd_log(NSD_LOG_ERROR, "store_flush_failed", "path=%s jobs=%llu",
                nsd_log_quote(q, sizeof(q), s->path), (unsigned long long)n);
        return NS_EIO;
    }
    return 0;
}

void nsd_store_free(nsd_store_t *s)
{
    if (s == NULL)
        return;
    if (s->started)
        nsd_store_stop(s, 0);
    sqlite3_finalize(s->ins_log);
    sqlite3_finalize(s->del_log_run);
    sqlite3_finalize(s->del_log_before);
    sqlite3_finalize(s->ins_snap);
    sqlite3_finalize(s->del_snap);
    if (s->db != NULL)
        sqlite3_close(s->db);
    if (s->dir_fd >= 0)
        close(s->dir_fd); /* releases the directory's lock */
    jobs_free(s->retry);
    jobs_free(s->head);
    waiter_t *w = take_waiters(s, 1);
    call_waiters(w, s->committed, NS_ESHUTDOWN);
    pthread_cond_destroy(&s->cond);
    pthread_mutex_destroy(&s->lock);
    free(s);
}
