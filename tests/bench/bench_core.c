/* bench_core.c - libnscore's core benchmark: moments and combine side by side
 * with this machine's streaming read bandwidth and torch.var_mean, printed as
 * a markdown table.
 *
 * Everything is measured in one run on the same data: the NCHW tensor lives in
 * a memfd that the read-bandwidth loop, ns_moments_nchw, the NS_SIMD=scalar
 * child (this program again, "--child") and tests/bench/torch_var_mean.py all
 * map. A time is the median of --reps repetitions after one warm-up, taken
 * with CLOCK_MONOTONIC; every case runs once per round (--rounds) and its
 * fastest round is shown. The exit status reports errors only, never targets. */
#define _GNU_SOURCE /* memfd_create: a tensor PyTorch can map, gone when we exit */

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define BENCH_X86 1
#endif

#include <normstat/core.h>

/* The tensor: 64 x 256 x 64 x 64 float32 = 256 MiB. */
#define T_N 64
#define T_C 256
#define T_INNER (64 * 64)
#define T_SHAPE "64x256x64x64"
#define T_LEN ((size_t)T_N * T_C * T_INNER)
#define T_BYTES (T_LEN * sizeof(float))

/* Combine: 64 workers x 26,560 channels (ResNet-50's BN channels). */
#define CB_WORKERS 64
#define CB_CHANNELS 26560
#define CB_BYTES ((double)CB_WORKERS * CB_CHANNELS * 2 * sizeof(float))

/* Thread counts measured; the targets are judged at the last one. */
#define NTHREADS 2
static const int thread_counts[NTHREADS] = {1, 2};

#define DEFAULT_REPS 7
/* The machine is shared: each case is measured in every round, interleaved
 * with the others, and its fastest median is reported (bandwidth included,
 * which only makes the percentages stricter). */
#define DEFAULT_ROUNDS 4
/* No new round starts after this many seconds, so a busy machine cannot
 * stretch the run much past two minutes. */
#define ROUNDS_BUDGET_SEC 70.0
#define COMBINE_REPS(reps) ((reps) * 3 > 63 ? 63 : (reps) * 3)

typedef struct options_s {
    const char *python; /* interpreter running the PyTorch peer */
    const char *script; /* tests/bench/torch_var_mean.py */
    const char *child;  /* --child TENSOR: time the core only, print raw results */
    int reps;
    int rounds; /* every case is measured once per round; the best median counts */
} options_t;

/* ---------------------------------------------------------------- timing */

static double now_sec(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

typedef int (*step_fn)(void *ctx, int threads);

/* One untimed warm-up, then 'reps' timed calls of fn; 'prepare' (may be NULL)
 * runs untimed before each call. Stores the median time in *sec. Returns the
 * first non-zero return of fn or prepare. */
static int measure(step_fn fn, void *ctx, step_fn prepare, void *prepare_ctx, int threads,
                   int reps, double *sec)
{
    double times[64];
    int rc;

    if (reps > 64)
        reps = 64;
    if (prepare && (rc = prepare(prepare_ctx, threads)) != 0)
        return rc;
    if ((rc = fn(ctx, threads)) != 0)
        return rc;
    for (int i = 0; i < reps; i++) {
        if (prepare && (rc = prepare(prepare_ctx, threads)) != 0)
            return rc;
        double t0 = now_sec();
        rc = fn(ctx, threads);
        times[i] = now_sec() - t0;
        if (rc != 0)
            return rc;
    }
    qsort(times, (size_t)reps, sizeof(times[0]), cmp_double);
    *sec = reps % 2 ? times[reps / 2] : 0.5 * (times[reps / 2 - 1] + times[reps / 2]);
    return 0;
}

/* ---------------------------------------------------------------- read bandwidth */

/* The reference for "streaming read bandwidth": a float sum with enough
 * independent accumulators that only memory limits it. This file is built
 * with -O3 (tests/bench/bench.mk); the AVX2 loop carries its own target
 * attribute and is chosen at run time, so the binary still runs anywhere. */
typedef double (*sum_fn)(const float *src, size_t src_len);

#ifdef BENCH_X86
__attribute__((target("avx2"))) static double sum_avx2(const float *src, size_t src_len)
{
    /* Eight 8-lane accumulators: 64 floats per iteration, two loads per
     * cycle never wait on an add. */
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0,
           a7 = a0;
    size_t i = 0;
    for (; i + 64 <= src_len; i += 64) {
        a0 = _mm256_add_ps(a0, _mm256_loadu_ps(src + i));
        a1 = _mm256_add_ps(a1, _mm256_loadu_ps(src + i + 8));
        a2 = _mm256_add_ps(a2, _mm256_loadu_ps(src + i + 16));
        a3 = _mm256_add_ps(a3, _mm256_loadu_ps(src + i + 24));
        a4 = _mm256_add_ps(a4, _mm256_loadu_ps(src + i + 32));
        a5 = _mm256_add_ps(a5, _mm256_loadu_ps(src + i + 40));
        a6 = _mm256_add_ps(a6, _mm256_loadu_ps(src + i + 48));
        a7 = _mm256_add_ps(a7, _mm256_loadu_ps(src + i + 56));
    }
    a0 = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)),
                       _mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7)));
    float lanes[8];
    _mm256_storeu_ps(lanes, a0);
    double s = 0.0;
    for (int j = 0; j < 8; j++)
        s += lanes[j];
    for (; i < src_len; i++)
        s += src[i];
    return s;
}
#endif

static double sum_plain(const float *src, size_t src_len)
{
    /* Sixteen independent accumulators: -O3 turns the inner loop into
     * vector adds without reassociating (no -ffast-math needed). */
    float acc[16] = {0};
    size_t i = 0;
    for (; i + 16 <= src_len; i += 16)
        for (size_t j = 0; j < 16; j++)
            acc[j] += src[i + j];
    double s = 0.0;
    for (size_t j = 0; j < 16; j++)
        s += acc[j];
    for (; i < src_len; i++)
        s += src[i];
    return s;
}

typedef struct bw_ctx_s {
    const float *src;
    size_t src_len;
    sum_fn sum;
    const char *name;
    volatile double sink; /* keeps the sums alive */
} bw_ctx_t;

static void bw_init(bw_ctx_t *c, const float *src, size_t src_len)
{
    c->src = src;
    c->src_len = src_len;
    c->sum = sum_plain;
    c->name = "plain C, -O3";
#ifdef BENCH_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2")) { /* checks OS support (XGETBV) too */
        c->sum = sum_avx2;
        c->name = "AVX2, 8 accumulators";
    }
#endif
    c->sink = 0.0;
}

/* Sum the buffer split in 'threads' contiguous parts, one per thread. */
static int step_bandwidth(void *p, int threads)
{
    bw_ctx_t *c = p;
    double total = 0.0;
#pragma omp parallel num_threads(threads) reduction(+ : total)
    {
        size_t t = (size_t)omp_get_thread_num(), nt = (size_t)omp_get_num_threads();
        size_t lo = c->src_len / nt * t;
        size_t hi = t + 1 == nt ? c->src_len : c->src_len / nt * (t + 1);
        total += c->sum(c->src + lo, hi - lo);
    }
    c->sink = c->sink + total;
    return 0;
}

/* Read the whole tensor (256 MiB, 8x the L3) so the next step starts cold. */
static int step_evict(void *p, int threads)
{
    (void)threads;
    return step_bandwidth(p, NTHREADS);
}

/* ---------------------------------------------------------------- data */

static uint64_t rng_next(uint64_t *s) /* xorshift64* */
{
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 2685821657736338717ull;
}

/* Channel c has mean (c % 17 - 8) / 4 and spread 0.5 + (c % 5) / 4; values
 * are a sum of two uniforms (triangular), seeded per (n, c) plane so the data
 * does not depend on the thread count. Writing it also touches every page. */
static void fill_tensor(float *dst)
{
#pragma omp parallel for schedule(static)
    for (size_t plane = 0; plane < (size_t)T_N * T_C; plane++) {
        size_t c = plane % T_C;
        float mu = (float)((double)((int)(c % 17) - 8) * 0.25);
        float sigma = (float)(0.5 + (double)(c % 5) * 0.25);
        uint64_t s = 0x9E3779B97F4A7C15ull * (plane + 1);
        float *row = dst + plane * T_INNER;
        for (size_t i = 0; i < T_INNER; i++) {
            uint64_t r = rng_next(&s);
            float u = (float)(r >> 40) * (1.0f / 16777216.0f);
            float v = (float)((r >> 16) & 0xFFFFFF) * (1.0f / 16777216.0f);
            row[i] = mu + sigma * (u + v - 1.0f);
        }
    }
}

typedef struct combine_ctx_s {
    ns_arrival_t arrivals[CB_WORKERS];
    float *data; /* [CB_WORKERS][2][CB_CHANNELS] */
    double *mean, *var;
    uint64_t n;
} combine_ctx_t;

static int combine_init(combine_ctx_t *c)
{
    c->data = malloc(sizeof(float) * CB_WORKERS * 2 * CB_CHANNELS);
    c->mean = malloc(sizeof(double) * CB_CHANNELS);
    c->var = malloc(sizeof(double) * CB_CHANNELS);
    if (!c->data || !c->mean || !c->var)
        return -1;
    uint64_t s = 0x2545F4914F6CDD1Dull;
    for (size_t w = 0; w < CB_WORKERS; w++) {
        float *mean = c->data + w * 2 * CB_CHANNELS, *var = mean + CB_CHANNELS;
        for (size_t ch = 0; ch < CB_CHANNELS; ch++) {
            double u = (double)(rng_next(&s) >> 11) * 0x1.0p-53;
            mean[ch] = (float)((double)(ch % 13) * 0.1 - 0.6 + 0.05 * u);
            var[ch] = (float)(0.5 + (double)(ch % 7) * 0.2 + 0.1 * u);
        }
        /* Unequal batches, as with a last partial batch or uneven sharding. */
        c->arrivals[w] = (ns_arrival_t){.n = 200704 + 64 * w, .mean = mean, .var = var};
    }
    return 0;
}

static void combine_free(combine_ctx_t *c)
{
    free(c->data);
    free(c->mean);
    free(c->var);
}

static int step_combine(void *p, int threads)
{
    combine_ctx_t *c = p;
    return ns_combine(c->arrivals, CB_WORKERS, CB_CHANNELS, &c->n, c->mean, c->var, threads);
}

typedef struct moments_ctx_s {
    const float *src;
    double mean[T_C], m2[T_C];
} moments_ctx_t;

static int step_moments(void *p, int threads)
{
    moments_ctx_t *c = p;
    return ns_moments_nchw(c->src, T_N, T_C, T_INNER, c->mean, c->m2, threads);
}

/* ---------------------------------------------------------------- the core cases */

/* What this process measures of libnscore with its own kernel. */
typedef struct core_times_s {
    double moments[NTHREADS];
    double combine_cold[NTHREADS];
    double combine_warm[NTHREADS];
    double var[T_C]; /* biased, from the last moments call */
    double mean[T_C];
} core_times_t;

static int run_core(const float *tensor, int reps, core_times_t *out)
{
    static moments_ctx_t mc; /* static: 4 KiB of results, off the stack */
    combine_ctx_t cc;
    bw_ctx_t evict;
    int rc = 0;

    mc.src = tensor;
    bw_init(&evict, tensor, T_LEN);
    if (combine_init(&cc) != 0) {
        fprintf(stderr, "bench_core: out of memory\n");
        combine_free(&cc);
        return -1;
    }
    for (int k = 0; k < NTHREADS && rc == 0; k++) {
        int t = thread_counts[k];
        if ((rc = measure(step_moments, &mc, NULL, NULL, t, reps, &out->moments[k])) != 0) {
            fprintf(stderr, "bench_core: ns_moments_nchw: error %d\n", rc);
            break;
        }
        /* Cold: the arrivals come from DRAM, as after decoding other requests.
         * A combine takes about a millisecond, so it gets more repetitions. */
        if ((rc = measure(step_combine, &cc, step_evict, &evict, t, COMBINE_REPS(reps),
                          &out->combine_cold[k])) != 0 ||
            (rc = measure(step_combine, &cc, NULL, NULL, t, COMBINE_REPS(reps),
                          &out->combine_warm[k])) != 0) {
            fprintf(stderr, "bench_core: ns_combine: error %d\n", rc);
            break;
        }
    }
    for (size_t c = 0; c < T_C; c++) {
        out->mean[c] = mc.mean[c];
        out->var[c] = mc.m2[c] / ((double)T_N * T_INNER);
    }
    combine_free(&cc);
    return rc;
}

/* ---------------------------------------------------------------- peers */

/* Reads "key v1 v2 ..." into at most 'cap' doubles; returns how many. */
static size_t parse_values(const char *s, double *dst, size_t cap)
{
    size_t k = 0;
    char *end;
    while (k < cap) {
        double v = strtod(s, &end);
        if (end == s)
            break;
        dst[k++] = v;
        s = end;
    }
    return k;
}

static const char *line_value(const char *line, const char *key)
{
    size_t len = strlen(key);
    return strncmp(line, key, len) == 0 && line[len] == ' ' ? line + len + 1 : NULL;
}

typedef struct torch_s {
    int ok;
    char why[200];
    char version[64];
    double sec[NTHREADS];
    int threads_seen[NTHREADS];
    double var[T_C], mean[T_C];
} torch_t;

/* Runs the PyTorch peer at each thread count on the same tensor. */
static void run_torch(const options_t *o, const char *tensor_path, torch_t *tr)
{
    char cmd[1024];
    char *line = NULL;
    size_t cap = 0;

    tr->ok = 0;
    if (access(o->python, X_OK) != 0) {
        snprintf(tr->why, sizeof tr->why, "%s not found", o->python);
        return;
    }
    if (access(o->script, R_OK) != 0) {
        snprintf(tr->why, sizeof tr->why, "%s not found", o->script);
        return;
    }
    for (int k = 0; k < NTHREADS; k++) {
        int got_sec = 0;
        size_t got_var = 0, got_mean = 0;
        snprintf(cmd, sizeof cmd, "'%s' '%s' '%s' %s %d %d", o->python, o->script, tensor_path,
                 T_SHAPE, thread_counts[k], o->reps < 5 ? o->reps : 5);
        FILE *f = popen(cmd, "r");
        if (!f) {
            snprintf(tr->why, sizeof tr->why, "cannot start %s: %s", o->python, strerror(errno));
            free(line);
            return;
        }
        tr->why[0] = '\0';
        while (getline(&line, &cap, f) > 0) {
            const char *v;
            line[strcspn(line, "\n")] = '\0';
            if ((v = line_value(line, "seconds")))
                got_sec = sscanf(v, "%lf", &tr->sec[k]) == 1;
            else if ((v = line_value(line, "threads")))
                tr->threads_seen[k] = atoi(v);
            else if ((v = line_value(line, "torch")))
                snprintf(tr->version, sizeof tr->version, "%s", v);
            else if ((v = line_value(line, "var")))
                got_var = parse_values(v, tr->var, T_C);
            else if ((v = line_value(line, "mean")))
                got_mean = parse_values(v, tr->mean, T_C);
            else if ((v = line_value(line, "error")))
                snprintf(tr->why, sizeof tr->why, "%s", v);
        }
        int status = pclose(f);
        if (status != 0 || !got_sec || got_var != T_C || got_mean != T_C) {
            if (!tr->why[0])
                snprintf(tr->why, sizeof tr->why, "%s failed (status %d)", o->script, status);
            free(line);
            return;
        }
    }
    free(line);
    tr->ok = 1;
}

/* Runs this program again with NS_SIMD=scalar; fills 'out' from its output.
 * Returns 0, or -1 if it failed (an error of the benchmark). */
static int run_scalar_child(const options_t *o, const char *tensor_path, core_times_t *out,
                            char *kernel, size_t kernel_cap)
{
    char exe[512], cmd[1200];
    char *line = NULL;
    size_t cap = 0;
    int fields = 0;

    ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (len <= 0)
        return -1;
    exe[len] = '\0';
    snprintf(cmd, sizeof cmd, "NS_SIMD=scalar '%s' --reps %d --child '%s'", exe, o->reps,
             tensor_path);
    FILE *f = popen(cmd, "r");
    if (!f)
        return -1;
    while (getline(&line, &cap, f) > 0) {
        const char *v;
        double vals[NTHREADS * 3];
        if ((v = line_value(line, "kernel"))) {
            snprintf(kernel, kernel_cap, "%.*s", (int)strcspn(v, "\n"), v);
            fields++;
        } else if ((v = line_value(line, "times")) && parse_values(v, vals, NTHREADS * 3) ==
                                                          NTHREADS * 3) {
            for (int k = 0; k < NTHREADS; k++) {
                out->moments[k] = vals[k];
                out->combine_cold[k] = vals[NTHREADS + k];
                out->combine_warm[k] = vals[2 * NTHREADS + k];
            }
            fields++;
        } else if ((v = line_value(line, "var")) && parse_values(v, out->var, T_C) == T_C) {
            fields++;
        }
    }
    free(line);
    return pclose(f) == 0 && fields == 3 ? 0 : -1;
}

/* --child: measure with whatever kernel NS_SIMD selects; raw output for the parent. */
static int child_main(const options_t *o)
{
    static core_times_t ct;
    int fd = open(o->child, O_RDONLY);
    if (fd < 0) {
        fprintf(stderr, "bench_core: %s: %s\n", o->child, strerror(errno));
        return 1;
    }
    void *map = mmap(NULL, T_BYTES, PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (map == MAP_FAILED) {
        fprintf(stderr, "bench_core: mmap: %s\n", strerror(errno));
        return 1;
    }
    int rc = run_core(map, o->reps, &ct);
    munmap(map, T_BYTES);
    if (rc != 0)
        return 1;
    printf("kernel %s\ntimes", ns_core_kernel());
    for (int k = 0; k < NTHREADS; k++)
        printf(" %.9f", ct.moments[k]);
    for (int k = 0; k < NTHREADS; k++)
        printf(" %.9f", ct.combine_cold[k]);
    for (int k = 0; k < NTHREADS; k++)
        printf(" %.9f", ct.combine_warm[k]);
    printf("\nvar");
    for (size_t c = 0; c < T_C; c++)
        printf(" %.17g", ct.var[c]);
    printf("\n");
    return ferror(stdout) ? 1 : 0;
}

/* Keeps the faster time of each case; results (var, mean) of the last round. */
static void keep_best(core_times_t *best, const core_times_t *round, int first)
{
    for (int k = 0; k < NTHREADS; k++) {
        best->moments[k] = first ? round->moments[k] : fmin(best->moments[k], round->moments[k]);
        best->combine_cold[k] =
            first ? round->combine_cold[k] : fmin(best->combine_cold[k], round->combine_cold[k]);
        best->combine_warm[k] =
            first ? round->combine_warm[k] : fmin(best->combine_warm[k], round->combine_warm[k]);
    }
    memcpy(best->var, round->var, sizeof best->var);
    memcpy(best->mean, round->mean, sizeof best->mean);
}

/* ---------------------------------------------------------------- report */

static void cpu_model(char *dst, size_t dst_cap)
{
    char buf[512];
    FILE *f = fopen("/proc/cpuinfo", "r");
    snprintf(dst, dst_cap, "unknown");
    if (!f)
        return;
    while (fgets(buf, sizeof buf, f)) {
        const char *colon = strchr(buf, ':');
        if (colon && (strncmp(buf, "model name", 10) == 0 || strncmp(buf, "Model", 5) == 0)) {
            snprintf(dst, dst_cap, "%.*s", (int)strcspn(colon + 2, "\n"), colon + 2);
            break;
        }
    }
    fclose(f);
}

/* Reads the aggregate "cpu" line of /proc/stat: total and idle (+iowait) ticks. */
static int cpu_ticks(unsigned long long *total, unsigned long long *idle)
{
    unsigned long long v[8] = {0};
    FILE *f = fopen("/proc/stat", "r");
    if (!f)
        return -1;
    int got = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3],
                     &v[4], &v[5], &v[6], &v[7]);
    fclose(f);
    if (got < 5)
        return -1;
    *total = v[0] + v[1] + v[2] + v[3] + v[4] + v[5] + v[6] + v[7];
    *idle = v[3] + v[4];
    return 0;
}

/* The share of all processors others kept busy over half a second (0..1),
 * or -1 if unknown: the load average lags too much to tell a quiet moment. */
static double cpu_busy_before(void)
{
    unsigned long long t0, i0, t1, i1;
    struct timespec half = {0, 500000000L};
    if (cpu_ticks(&t0, &i0) != 0)
        return -1.0;
    nanosleep(&half, NULL);
    if (cpu_ticks(&t1, &i1) != 0 || t1 <= t0)
        return -1.0;
    return 1.0 - (double)(i1 - i0) / (double)(t1 - t0);
}

static double max_rel_diff(const double *a, const double *ref, size_t len)
{
    double worst = 0.0;
    for (size_t i = 0; i < len; i++) {
        double d = fabs(a[i] - ref[i]) / fmax(fabs(ref[i]), 1e-300);
        if (!(d <= worst)) /* also catches NaN */
            worst = d;
    }
    return worst;
}

static double max_abs_diff(const double *a, const double *ref, size_t len)
{
    double worst = 0.0;
    for (size_t i = 0; i < len; i++) {
        double d = fabs(a[i] - ref[i]);
        if (!(d <= worst))
            worst = d;
    }
    return worst;
}

static double gbps(double bytes, double sec) { return bytes / sec * 1e-9; }

static void row(const char *what, int threads, double sec, double bytes, double bw_sec,
                double bw_bytes, double torch_sec)
{
    printf("| %s | %d | %.2f | %.2f | %.0f %% | ", what, threads, sec * 1e3, gbps(bytes, sec),
           100.0 * gbps(bytes, sec) / gbps(bw_bytes, bw_sec));
    if (torch_sec > 0)
        printf("%.2fx |\n", torch_sec / sec);
    else
        printf("|\n");
}

static const char *verdict(int met) { return met ? "met" : "not met"; }

/* ---------------------------------------------------------------- main */

static int parse_args(int argc, char **argv, options_t *o)
{
    o->python = "/usr/bin/python3";
    o->script = "tests/bench/torch_var_mean.py";
    o->child = NULL;
    o->reps = DEFAULT_REPS;
    o->rounds = DEFAULT_ROUNDS;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--python") == 0 && i + 1 < argc)
            o->python = argv[++i];
        else if (strcmp(argv[i], "--script") == 0 && i + 1 < argc)
            o->script = argv[++i];
        else if (strcmp(argv[i], "--child") == 0 && i + 1 < argc)
            o->child = argv[++i];
        else if (strcmp(argv[i], "--reps") == 0 && i + 1 < argc)
            o->reps = atoi(argv[++i]);
        else if (strcmp(argv[i], "--rounds") == 0 && i + 1 < argc)
            o->rounds = atoi(argv[++i]);
        else {
            fprintf(stderr,
                    "usage: bench_core [--reps N] [--rounds R] [--python PYTHON] [--script torch_var_mean.py]\n"
                    "Prints a markdown table: libnscore moments and combine against the\n"
                    "read bandwidth and torch.var_mean, measured in this run.\n");
            return -1;
        }
    }
    if (o->reps < 1 || o->reps > 63 || o->rounds < 1 || o->rounds > 20) {
        fprintf(stderr, "bench_core: --reps must be in 1..63, --rounds in 1..20\n");
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    static core_times_t ours, scalar;
    static torch_t torch;
    options_t o;
    bw_ctx_t bw;
    double bw_sec[NTHREADS];
    char tensor_path[64], cpu[256], scalar_kernel[32] = "?";
    int rc = 1;

    if (parse_args(argc, argv, &o) != 0)
        return 2;
    if (o.child)
        return child_main(&o);

    double busy = cpu_busy_before(), t_start = now_sec();
    int fd = memfd_create("normstat-bench-tensor", MFD_CLOEXEC);
    if (fd < 0 || ftruncate(fd, (off_t)T_BYTES) != 0) {
        fprintf(stderr, "bench_core: memfd: %s\n", strerror(errno));
        return 1;
    }
    float *tensor = mmap(NULL, T_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (tensor == MAP_FAILED) {
        fprintf(stderr, "bench_core: mmap: %s\n", strerror(errno));
        close(fd);
        return 1;
    }
    /* The peers open the same memory by name while this process lives. */
    snprintf(tensor_path, sizeof tensor_path, "/proc/%ld/fd/%d", (long)getpid(), fd);
    fill_tensor(tensor);

    bw_init(&bw, tensor, T_LEN);
    int rounds_done = 0;
    for (int r = 0; r < o.rounds && (r == 0 || now_sec() - t_start < ROUNDS_BUDGET_SEC); r++) {
        static core_times_t round_ours, round_scalar;
        static torch_t round_torch;
        double sec;

        for (int k = 0; k < NTHREADS; k++) {
            measure(step_bandwidth, &bw, NULL, NULL, thread_counts[k], o.reps, &sec);
            bw_sec[k] = r == 0 || sec < bw_sec[k] ? sec : bw_sec[k];
        }
        if (run_core(tensor, o.reps, &round_ours) != 0)
            goto out;
        keep_best(&ours, &round_ours, r == 0);
        if (run_scalar_child(&o, tensor_path, &round_scalar, scalar_kernel,
                             sizeof scalar_kernel) != 0) {
            fprintf(stderr, "bench_core: the NS_SIMD=scalar run failed\n");
            goto out;
        }
        keep_best(&scalar, &round_scalar, r == 0);
        if (r == 0 || torch.ok) {
            run_torch(&o, tensor_path, &round_torch);
            if (r == 0 || !round_torch.ok) {
                torch = round_torch;
            } else {
                for (int k = 0; k < NTHREADS; k++)
                    torch.sec[k] = fmin(torch.sec[k], round_torch.sec[k]);
            }
        }
        rounds_done++;
    }
    cpu_model(cpu, sizeof cpu);

    const char *kernel = ns_core_kernel();
    double tb = (double)T_BYTES;
    printf("### libnscore core benchmark\n\n");
    printf("- CPU: %s, %ld processors online, %.0f %% busy with other work just before the "
           "run; libnscore %s, kernel `%s` (NS_SIMD=scalar rows: `%s`)\n",
           cpu, sysconf(_SC_NPROCESSORS_ONLN), 100.0 * busy, ns_core_version(), kernel,
           scalar_kernel);
    printf("- tensor: float32 NCHW %s (256 MiB), the same memory for every row; combine: "
           "%d workers x %d channels (%.1f MB of float32 mean + var)\n",
           T_SHAPE, CB_WORKERS, CB_CHANNELS, CB_BYTES * 1e-6);
    printf("- times: median of %d runs (combine: %d) after a warm-up, best of %d interleaved rounds%s; "
           "GB = 1e9 bytes read; read bandwidth: float sum over the tensor (%s)\n",
           o.reps, COMBINE_REPS(o.reps), rounds_done,
           rounds_done < o.rounds ? " (time budget)" : "", bw.name);
    if (busy > 0.2)
        printf("- **warning**: the machine was busy (%.0f %%): times, above all at %d "
               "threads, are not trustworthy; run again when it is idle\n",
               100.0 * busy, thread_counts[NTHREADS - 1]);
    if (torch.ok)
        printf("- torch %s: `torch.var_mean(x, dim=(0,2,3), unbiased=False)` on the same "
               "memory, median of %d\n\n",
               torch.version, o.reps < 5 ? o.reps : 5);
    else
        printf("- torch: not available (%s)\n\n", torch.why);

    printf("| measurement | threads | ms | GB/s | %% of read bw | speed vs torch.var_mean |\n");
    printf("|---|---:|---:|---:|---:|---:|\n");
    for (int k = 0; k < NTHREADS; k++)
        row("read bandwidth (reference)", thread_counts[k], bw_sec[k], tb, bw_sec[k], tb, 0);
    for (int k = 0; k < NTHREADS; k++) {
        char what[96];
        double ts = torch.ok ? torch.sec[k] : 0;
        snprintf(what, sizeof what, "ns_moments_nchw (%s)", kernel);
        row(what, thread_counts[k], ours.moments[k], tb, bw_sec[k], tb, ts);
        snprintf(what, sizeof what, "ns_moments_nchw (%s, NS_SIMD=scalar)", scalar_kernel);
        row(what, thread_counts[k], scalar.moments[k], tb, bw_sec[k], tb, ts);
        if (torch.ok)
            row("torch.var_mean", thread_counts[k], torch.sec[k], tb, bw_sec[k], tb, ts);
    }
    for (int k = 0; k < NTHREADS; k++) {
        char what[96];
        snprintf(what, sizeof what, "ns_combine 64 x 26560 (%s), cold caches", kernel);
        row(what, thread_counts[k], ours.combine_cold[k], CB_BYTES, bw_sec[k], tb, 0);
        snprintf(what, sizeof what, "ns_combine 64 x 26560 (%s), cold caches", scalar_kernel);
        row(what, thread_counts[k], scalar.combine_cold[k], CB_BYTES, bw_sec[k], tb, 0);
        snprintf(what, sizeof what, "ns_combine 64 x 26560 (%s), inputs in cache", kernel);
        row(what, thread_counts[k], ours.combine_warm[k], CB_BYTES, bw_sec[k], tb, 0);
    }

    printf("\n");
    if (torch.ok) {
        printf("- agreement with torch: var max relative difference %.2g, mean max absolute "
               "difference %.2g; ",
               max_rel_diff(ours.var, torch.var, T_C), max_abs_diff(ours.mean, torch.mean, T_C));
        printf("torch threads seen: %d, %d\n", torch.threads_seen[0], torch.threads_seen[1]);
    }
    printf("- agreement: max relative difference of var, %s vs %s %.2g\n", kernel, scalar_kernel,
           max_rel_diff(ours.var, scalar.var, T_C));

    int last = NTHREADS - 1, t = thread_counts[last];
    double moments_bw = gbps(tb, ours.moments[last]) / gbps(tb, bw_sec[last]);
    double combine_bw = gbps(CB_BYTES, ours.combine_cold[last]) / gbps(tb, bw_sec[last]);
    printf("\n| target (%d threads) | measured | |\n|---|---:|---|\n", t);
    if (torch.ok) {
        double speed = torch.sec[last] / ours.moments[last];
        printf("| moments >= 1.5x torch.var_mean | %.2fx | %s |\n", speed, verdict(speed >= 1.5));
    } else {
        printf("| moments >= 1.5x torch.var_mean | torch: not available | |\n");
    }
    printf("| moments >= 70 %% of read bandwidth | %.0f %% | %s |\n", 100 * moments_bw,
           verdict(moments_bw >= 0.70));
    printf("| combine >= 50 %% of read bandwidth (cold caches) | %.0f %% | %s |\n",
           100 * combine_bw, verdict(combine_bw >= 0.50));
    printf("\n(bench time %.0f s)\n", now_sec() - t_start);
    rc = ferror(stdout) ? 1 : 0;
out:
    munmap(tensor, T_BYTES);
    close(fd);
    return rc;
}
