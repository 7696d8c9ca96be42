/* bench_registry.c - reports applied to one run by several threads, in
 * process: the registry's API (nsd_registry_report), no HTTP and no
 * decoding, so the clients do not share the cores with a server.
 *
 *   bench_registry [--layers resnet50|NxC] [--threads 1,2,4] [--seconds S]
 *                  [--rounds R]
 *
 * Two cases, each thread count in turn, the thread counts interleaved in
 * rounds (1, 2, 4, 1, 2, 4, ...), so a busy stretch of a shared machine
 * hurts one round of every count rather than one count:
 *  - split: one run of world_size 1; the model's layers are dealt into T
 *    parts of nearly equal channels (bench_model.h) and thread t reports
 *    part t, step after step: reports to different layers of one run. Every
 *    report finalizes and applies its step (combine, EMA, PreciseBN, last
 *    statistics).
 *  - workers: one run of world_size T; thread t is worker t and reports
 *    every layer: reports to the same layers of one run, a step completed
 *    by every T-th report (no thread more than 4 steps ahead of the slowest).
 * A report is built before each call (its arrays allocated and copied from
 * a template, as a decoder hands them over); that is part of the thread's
 * time. Output: one key=value line per case, thread count and round:
 * model_rps is reports per second counted in whole models (the channels
 * applied per second / the model's channels), cpu_s the process's CPU
 * time over the round, vcsw its voluntary context switches (see cpu_s()). No persistence hooks (the store's cost is table 5's). */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <normstat/proto.h>

#include "bench_model.h"
#include "registry/registry.h"

#define MAX_THREADS 64
#define AHEAD       4 /* workers case: steps a worker may run ahead of the slowest */

typedef struct bench_s {
    nsd_registry_t *reg;
    const char *run;
    int workers_case;
    unsigned threads;
    _Atomic int go, stop;
    _Atomic uint64_t sent[MAX_THREADS]; /* steps sent by each thread */
} bench_t;

typedef struct thread_s {
    bench_t *b;
    unsigned id;
    model_t part;        /* the layers this thread reports */
    float **mean, **var; /* templates, one per layer */
    uint64_t reports, channels;
    int failed;
} thread_t;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* The process's CPU time, and its voluntary context switches: a thread
 * that blocks on a lock held by another gives up its CPU (one switch), a
 * thread preempted by other work does not count, so the switches per report
 * say how often reports waited for each other whatever the machine's load. */
static double cpu_s(long *vcsw)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    *vcsw = ru.ru_nvcsw;
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec * 1e-6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec * 1e-6;
}

static uint64_t rng_next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static void templates(thread_t *t, uint64_t seed)
{
    t->mean = calloc(t->part.n, sizeof(*t->mean));
    t->var = calloc(t->part.n, sizeof(*t->var));
    if (t->mean == NULL || t->var == NULL)
        model_die("out of memory");
    for (size_t i = 0; i < t->part.n; i++) {
        size_t c = t->part.chans[i];
        t->mean[i] = malloc(c * sizeof(float));
        t->var[i] = malloc(c * sizeof(float));
        if (t->mean[i] == NULL || t->var[i] == NULL)
            model_die("out of memory");
        for (size_t k = 0; k < c; k++) {
            t->mean[i][k] = (float)((double)(rng_next(&seed) >> 11) / 9007199254740992.0 * 2 - 1);
            t->var[i][k] = (float)(0.5 + (double)(rng_next(&seed) >> 11) / 9007199254740992.0);
        }
    }
}

/* The report of step 'step': the thread's layers (already in name order
 * for the registry: sorted here once, see main), arrays copied in. */
static ns_report_t *report_make(const thread_t *t, uint64_t step)
{
    ns_report_t *r = calloc(1, sizeof(*r));
    ns_layer_report_t *ls = calloc(t->part.n, sizeof(*ls));
    if (r == NULL || ls == NULL)
        model_die("out of memory");
    r->step = step;
    r->worker = t->b->workers_case ? t->id : 0;
    snprintf(r->domain, sizeof(r->domain), "default");
    r->update = NS_UPDATE_EMA | NS_UPDATE_PRECISE;
    r->scope = NS_SCOPE_GLOBAL;
    r->world_size = -1;
    r->n_layers = t->part.n;
    r->layers = ls;
    for (size_t i = 0; i < t->part.n; i++) {
        size_t c = t->part.chans[i];
        snprintf(ls[i].name, sizeof(ls[i].name), "%s", t->part.names[i]);
        ls[i].count = 200704;
        ls[i].channels = c;
        ls[i].mean = malloc(c * sizeof(float));
        ls[i].var = malloc(c * sizeof(float));
        if (ls[i].mean == NULL || ls[i].var == NULL)
            model_die("out of memory");
        memcpy(ls[i].mean, t->mean[i], c * sizeof(float));
        memcpy(ls[i].var, t->var[i], c * sizeof(float));
    }
    return r;
}

static uint64_t slowest(bench_t *b)
{
    uint64_t m = UINT64_MAX;
    for (unsigned i = 0; i < b->threads; i++) {
        uint64_t s = atomic_load(&b->sent[i]);
        if (s < m)
            m = s;
    }
    return m;
}

static void *thread_main(void *p)
{
    thread_t *t = p;
    bench_t *b = t->b;
    while (!atomic_load(&b->go))
        sched_yield();
    for (uint64_t step = 0; !atomic_load(&b->stop); step++) {
        while (b->workers_case && step > slowest(b) + AHEAD && !atomic_load(&b->stop))
            sched_yield();
        ns_error_detail_t err = {0};
        if (nsd_registry_report(b->reg, b->run, report_make(t, step), 0, NULL, NULL, &err) != 0) {
            fprintf(stderr, "bench_registry: report: %s\n", err.message);
            t->failed = 1;
            break;
        }
        t->reports++;
        t->channels += t->part.total;
        atomic_store(&b->sent[t->id], step + 1);
    }
    return NULL;
}

static int cmp_name(const void *a, const void *b)
{
    return strcmp((const char *)a, (const char *)b);
}

/* The part's layers in name order (as a decoder sorts them). */
static void sort_part(model_t *m)
{
    typedef struct {
        char name[64];
        size_t chans;
    } entry_t;
    entry_t *e = calloc(m->n ? m->n : 1, sizeof(*e));
    if (e == NULL)
        model_die("out of memory");
    for (size_t i = 0; i < m->n; i++) {
        memcpy(e[i].name, m->names[i], 64);
        e[i].chans = m->chans[i];
    }
    qsort(e, m->n, sizeof(*e), cmp_name);
    for (size_t i = 0; i < m->n; i++) {
        memcpy(m->names[i], e[i].name, 64);
        m->chans[i] = e[i].chans;
    }
    free(e);
}

/* One measurement: T threads for 'seconds' on a fresh registry. */
static int measure(const model_t *m, int workers_case, unsigned T, double seconds, int round)
{
    bench_t *b = calloc(1, sizeof(*b));
    thread_t *th = calloc(T, sizeof(*th));
    pthread_t *pt = calloc(T, sizeof(*pt));
    if (b == NULL || th == NULL || pt == NULL)
        model_die("out of memory");
    b->reg = nsd_registry_create(NULL);
    b->run = "bench";
    b->workers_case = workers_case;
    b->threads = T;
    ns_run_config_t cfg;
    ns_run_config_defaults(&cfg);
    cfg.has_world_size = 1;
    cfg.world_size = workers_case ? T : 1;
    if (b->reg == NULL || nsd_registry_put_run(b->reg, b->run, &cfg, NULL, NULL) != 0)
        model_die("registry");
    for (unsigned i = 0; i < T; i++) {
        th[i].b = b;
        th[i].id = i;
        model_part(m, workers_case ? 0 : i, workers_case ? 1 : T, &th[i].part);
        sort_part(&th[i].part);
        templates(&th[i], 0x9e3779b97f4a7c15ull + i);
        if (pthread_create(&pt[i], NULL, thread_main, &th[i]) != 0)
            model_die("pthread_create");
    }
    long v0, v1;
    double c0 = cpu_s(&v0), t0 = now_s();
    atomic_store(&b->go, 1);
    struct timespec ts = {(time_t)seconds, (long)((seconds - (double)(time_t)seconds) * 1e9)};
    nanosleep(&ts, NULL);
    atomic_store(&b->stop, 1);
    uint64_t reports = 0, channels = 0;
    int failed = 0;
    for (unsigned i = 0; i < T; i++) {
        pthread_join(pt[i], NULL);
        reports += th[i].reports;
        channels += th[i].channels;
        failed |= th[i].failed;
    }
    double el = now_s() - t0, cpu = cpu_s(&v1) - c0;
    printf("case=%s threads=%u round=%d reports=%llu seconds=%.4f rps=%.2f model_rps=%.2f "
           "cpu_s=%.3f vcsw=%ld channels=%zu failed=%d\n",
           workers_case ? "workers" : "split", T, round, (unsigned long long)reports, el,
           (double)reports / el, (double)channels / (double)m->total / el, cpu, v1 - v0, m->total,
           failed);
    fflush(stdout);
    nsd_registry_free(b->reg);
    for (unsigned i = 0; i < T; i++) {
        for (size_t k = 0; k < th[i].part.n; k++) {
            free(th[i].mean[k]);
            free(th[i].var[k]);
        }
        free(th[i].mean);
        free(th[i].var);
        model_free(&th[i].part);
    }
    free(th);
    free(pt);
    free(b);
    return failed;
}

int main(int argc, char **argv)
{
    const char *layers = "resnet50", *threads = "1,2,4";
    double seconds = 2.0;
    int rounds = 3;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--layers") == 0)
            layers = argv[i + 1];
        else if (strcmp(argv[i], "--threads") == 0)
            threads = argv[i + 1];
        else if (strcmp(argv[i], "--seconds") == 0)
            seconds = atof(argv[i + 1]);
        else if (strcmp(argv[i], "--rounds") == 0)
            rounds = atoi(argv[i + 1]);
        else
            model_die("usage: bench_registry [--layers SPEC] [--threads 1,2,4] [--seconds S] "
                      "[--rounds R]");
    }
    unsigned counts[16], n_counts = 0;
    for (const char *p = threads; *p && n_counts < 16;) {
        unsigned long v = strtoul(p, (char **)&p, 10);
        if (v < 1 || v > MAX_THREADS)
            model_die("--threads: counts from 1 to 64");
        counts[n_counts++] = (unsigned)v;
        if (*p == ',')
            p++;
        else if (*p)
            model_die("--threads: a comma-separated list");
    }
    if (seconds <= 0 || rounds < 1)
        model_die("--seconds and --rounds must be positive");
    model_t m;
    model_make(&m, layers);
    int failed = 0;
    for (int r = 1; r <= rounds; r++)
        for (int wc = 0; wc <= 1; wc++)
            for (unsigned i = 0; i < n_counts; i++)
                failed |= measure(&m, wc, counts[i], seconds, r);
    model_free(&m);
    return failed ? 1 : 0;
}
