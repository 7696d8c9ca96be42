/* test_last_views.c - a layer's last values are views of its finalized
 * steps, and a steady layer recycles its step (registry/run.h, DESIGN):
 *
 *  - step after step, a report allocates nothing in the registry (malloc
 *    counted around nsd_registry_report, where no sanitizer owns malloc) and
 *    the finalized steps the store hook sees alternate between two buffers;
 *  - the last values of step N stay served, bit for bit, while N + 1 is
 *    pending and after it is applied; a step that finalizes late (timed out)
 *    does not replace a higher step's last values;
 *  - a domain absent from later steps keeps its own last step;
 *  - a checkpoint round-trip carries every last value, and the imported run
 *    then goes on exactly as the original;
 *  - memory_bytes is steady in the steady state and 0 once the run is gone.
 *
 * Each is run with 32 channels (views) and 4 (a layer so small it copies its
 * last values instead, nsd_step_viewed()). References: the reported floats
 * combined in long double (nsd_fixture.h). */
#include "nsd_fixture.h"

#include <errno.h>
#include <stdatomic.h>

#include "registry/step.h"

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define COUNT_MALLOC 0 /* the sanitizer owns malloc */
#else
#define COUNT_MALLOC 1
extern void *__libc_malloc(size_t n);
extern void *__libc_calloc(size_t k, size_t n);
extern void *__libc_realloc(void *p, size_t n);
extern void *__libc_memalign(size_t align, size_t n);
static _Atomic int g_counting;
static _Atomic long g_allocs;

static void count_one(void)
{
    if (atomic_load(&g_counting))
        atomic_fetch_add(&g_allocs, 1);
}
void *malloc(size_t n)
{
    count_one();
    return __libc_malloc(n);
}
void *calloc(size_t k, size_t n)
{
    count_one();
    return __libc_calloc(k, n);
}
void *realloc(void *p, size_t n)
{
    count_one();
    return __libc_realloc(p, n);
}
int posix_memalign(void **p, size_t align, size_t n)
{
    count_one();
    *p = __libc_memalign(align, n);
    return *p != NULL ? 0 : ENOMEM;
}
void *aligned_alloc(size_t align, size_t n)
{
    count_one();
    return __libc_memalign(align, n);
}
#endif

#define CMAX 32
static const size_t channel_cases[] = {32, 4};

static nsd_registry_t *new_registry(uint32_t world_size)
{
    nsd_limits_t lim = {.max_pending_steps = 0, .max_memory = 0, .threads = 1};
    nsd_registry_t *reg = nsd_registry_create(&lim);
    ck_assert_ptr_nonnull(reg);
    ns_run_config_t cfg;
    ns_run_config_defaults(&cfg);
    cfg.has_world_size = 1;
    cfg.world_size = world_size;
    cfg.has_sync_timeout_ms = 1;
    cfg.sync_timeout_ms = 1000;
    ck_assert_int_eq(nsd_registry_put_run(reg, "r", &cfg, NULL, NULL), 0);
    return reg;
}

static uint64_t memory_bytes(nsd_registry_t *reg)
{
    nsd_counters_t cnt;
    nsd_registry_counters(reg, &cnt);
    return cnt.memory_bytes;
}

/* One worker's arrival: batch size and arrays. */
typedef struct arrival_s {
    uint64_t n;
    float mean[CMAX], var[CMAX];
} arrival_t;

static void arrival_make(arrival_t *a, uint64_t *rng, size_t c, uint64_t n)
{
    a->n = n;
    fx_random_floats(rng, a->mean, c, -3.0, 3.0);
    fx_random_floats(rng, a->var, c, 0.0, 4.0);
}

static int send(nsd_registry_t *reg, const arrival_t *a, size_t c, uint64_t step, uint32_t w,
                const char *domain, uint64_t now)
{
    fx_layer_t l = {"bn", a->n, c, a->mean, a->var};
    fx_opts_t o = {.domain = domain};
    return fx_send(reg, "r", step, w, domain ? &o : NULL, &l, 1, now, NULL, NULL);
}

/* 'source=last' of the layer (pooled or 'domain') equals the long double
 * combination of arrivals a[0..k) at 'step', to the float64 rounding. */
static void check_last(nsd_registry_t *reg, const char *domain, const arrival_t *const *a, size_t k,
                       size_t c, uint64_t step)
{
    uint64_t n[2];
    const float *mm[2], *vv[2];
    for (size_t i = 0; i < k; i++) {
        n[i] = a[i]->n;
        mm[i] = a[i]->mean;
        vv[i] = a[i]->var;
    }
    long double rm[CMAX], rv[CMAX];
    uint64_t N = fx_ref_combine(k, n, mm, vv, c, rm, rv);
    nsd_stats_t *s = fx_stats(reg, "r", NSD_SOURCE_LAST, domain);
    const ns_out_layer_t *l = fx_layer_of(s, "bn");
    ck_assert_ptr_nonnull(l);
    ck_assert_int_eq(fx_scalar(l, "step"), (int64_t)step);
    ck_assert_int_eq(fx_scalar(l, "count"), (int64_t)N);
    for (size_t i = 0; i < c; i++) {
        fx_close(l->arrays[0][i], rm[i], 1e-13, "last mean", i);
        fx_close(l->arrays[1][i], rv[i], 1e-13, "last var", i);
    }
    nsd_stats_free(s);
}

/* The finalized steps the store hook is handed: their buffers. */
typedef struct seen_s {
    int steps;
    const void *buf[64];
} seen_t;

static void on_step(void *arg, const char *run, const nsd_step_t *f)
{
    (void)run;
    seen_t *seen = arg;
    if (seen->steps < 64)
        seen->buf[seen->steps] = f;
    seen->steps++;
}

START_TEST(test_steady_state_allocates_no_step)
{
    uint64_t rng = ns_test_seed();
    size_t c = channel_cases[_i];
    nsd_registry_t *reg = new_registry(1);
    seen_t seen = {0};
    nsd_persist_t hooks = {.arg = &seen, .step_finalized = on_step};
    nsd_registry_set_persist(reg, &hooks);
    arrival_t a;
    uint64_t steady_memory = 0;
    for (uint64_t step = 0; step < 12; step++) {
        arrival_make(&a, &rng, c, 8 + step);
        fx_layer_t l = {"bn", a.n, c, a.mean, a.var};
        ns_report_t *r = fx_report(step, 0, NULL, &l, 1);
        float *body = fx_borrow(r); /* arrays read in place, as safetensors */
        ns_error_detail_t err = {0};
#if COUNT_MALLOC
        atomic_store(&g_allocs, 0);
        atomic_store(&g_counting, 1);
#endif
        int rc = nsd_registry_report(reg, "r", r, step, NULL, NULL, &err);
#if COUNT_MALLOC
        atomic_store(&g_counting, 0);
        long allocs = atomic_load(&g_allocs);
        /* From the third report on, everything a step needs is kept; a
         * tiny layer makes its step (and keeps none). */
        long want = nsd_step_viewed(c) ? 0 : 1;
        ck_assert_msg(step < 2 || allocs == want, "report %llu of a steady layer: %ld allocations",
                      (unsigned long long)step, allocs);
#endif
        ck_assert_int_eq(rc, 0);
        free(body);
        const arrival_t *one[1] = {&a};
        check_last(reg, NULL, one, 1, c, step);
        if (step == 2)
            steady_memory = memory_bytes(reg);
        if (step > 2)
            ck_assert_uint_eq(memory_bytes(reg), steady_memory);
    }
    ck_assert_int_eq(seen.steps, 12);
    /* A viewed layer refills two buffers in turn; a tiny one makes a step
     * each time (malloc may hand the same address back, so only the viewed
     * case is asserted). */
    if (nsd_step_viewed(c))
        for (int k = 3; k < seen.steps; k++)
            ck_assert_ptr_eq(seen.buf[k], seen.buf[k - 2]);
    ck_assert_int_eq(nsd_registry_delete_run(reg, "r", NULL), 0);
    ck_assert_uint_eq(memory_bytes(reg), 0);
    nsd_registry_free(reg);
}
END_TEST

/* World size 2. Step 2 finalizes while step 1 is still pending: it is the
 * last. Step 1 then times out and finalizes late (partial): the last stays
 * step 2's, through step 2 being applied, until step 3 replaces it. */
START_TEST(test_last_of_a_step_applied_out_of_order)
{
    uint64_t rng = ns_test_seed() + 1;
    size_t c = channel_cases[_i];
    nsd_registry_t *reg = new_registry(2);
    arrival_t s1, s2[2], s3[2];
    arrival_make(&s1, &rng, c, 5);
    for (int w = 0; w < 2; w++) {
        arrival_make(&s2[w], &rng, c, 3 + (uint64_t)w);
        arrival_make(&s3[w], &rng, c, 7 + (uint64_t)w);
    }
    ck_assert_int_eq(send(reg, &s1, c, 1, 0, NULL, 10), 0); /* step 1: worker 0 only */
    ck_assert_int_eq(send(reg, &s2[0], c, 2, 0, NULL, 20), 0);
    ck_assert_int_eq(send(reg, &s2[1], c, 2, 1, NULL, 20), 0);
    const arrival_t *two[2] = {&s2[0], &s2[1]};
    check_last(reg, NULL, two, 2, c, 2); /* finalized, not applied (1 pending) */
    nsd_stats_t *s = fx_stats(reg, "r", NSD_SOURCE_EMA, NULL);
    ck_assert_int_eq(fx_scalar(fx_layer_of(s, "bn"), "num_batches_tracked"), 0);
    nsd_stats_free(s);
    ck_assert_uint_eq(nsd_registry_expire(reg, 1010), UINT64_MAX); /* step 1 late */
    s = fx_stats(reg, "r", NSD_SOURCE_EMA, NULL);
    ck_assert_int_eq(fx_scalar(fx_layer_of(s, "bn"), "num_batches_tracked"), 2);
    nsd_stats_free(s);
    check_last(reg, NULL, two, 2, c, 2); /* step 2 applied, still the last */
    ck_assert_int_eq(send(reg, &s3[0], c, 3, 0, NULL, 1020), 0);
    check_last(reg, NULL, two, 2, c, 2); /* step 3 pending */
    ck_assert_int_eq(send(reg, &s3[1], c, 3, 1, NULL, 1020), 0);
    const arrival_t *three[2] = {&s3[0], &s3[1]};
    check_last(reg, NULL, three, 2, c, 3);
    ck_assert_int_eq(nsd_registry_delete_run(reg, "r", NULL), 0);
    ck_assert_uint_eq(memory_bytes(reg), 0);
    nsd_registry_free(reg);
}
END_TEST

/* Step 1: worker 0 in domain a, worker 1 in domain b. Steps 2 and 3: both
 * in a. Domain b's last stays step 1 (worker 1's arrival alone) while the
 * pooled and a's move on. */
static void domain_steps(nsd_registry_t *reg, size_t c, uint64_t *rng, arrival_t (*a)[2])
{
    for (uint64_t step = 1; step <= 3; step++) {
        for (uint32_t w = 0; w < 2; w++) {
            arrival_make(&a[step - 1][w], rng, c, 2 + step + w);
            const char *dom = step == 1 && w == 1 ? "b" : "a";
            ck_assert_int_eq(send(reg, &a[step - 1][w], c, step, w, dom, step), 0);
        }
    }
}

START_TEST(test_domain_keeps_its_last_step)
{
    uint64_t rng = ns_test_seed() + 2;
    size_t c = channel_cases[_i];
    nsd_registry_t *reg = new_registry(2);
    arrival_t a[3][2];
    domain_steps(reg, c, &rng, a);
    const arrival_t *b1[1] = {&a[0][1]}, *a1[1] = {&a[0][0]};
    const arrival_t *both3[2] = {&a[2][0], &a[2][1]};
    check_last(reg, "b", b1, 1, c, 1);
    check_last(reg, "a", both3, 2, c, 3);
    check_last(reg, NULL, both3, 2, c, 3);
    (void)a1;
    ck_assert_int_eq(nsd_registry_delete_run(reg, "r", NULL), 0);
    ck_assert_uint_eq(memory_bytes(reg), 0);
    nsd_registry_free(reg);
}
END_TEST

static char *checkpoint_text(nsd_registry_t *reg)
{
    json_t *cp = nsd_registry_checkpoint_export(reg, "r", NULL);
    ck_assert_ptr_nonnull(cp);
    char *text = json_dumps(cp, JSON_SORT_KEYS | JSON_COMPACT);
    json_decref(cp);
    ck_assert_ptr_nonnull(text);
    return text;
}

/* The state of test_domain_keeps_its_last_step exported and imported into a
 * new registry: the same last values; then the same two more steps to both
 * (the imported steps are released and their buffers reused) leave the same
 * checkpoint. */
START_TEST(test_checkpoint_round_trip)
{
    uint64_t rng = ns_test_seed() + 3;
    size_t c = channel_cases[_i];
    nsd_registry_t *reg = new_registry(2);
    arrival_t a[3][2];
    domain_steps(reg, c, &rng, a);
    char *text = checkpoint_text(reg);
    nsd_registry_t *copy = new_registry(2);
    ns_error_detail_t err = {0};
    ck_assert_msg(nsd_registry_checkpoint_import(copy, "r", text, strlen(text), &err) == 0, "%s",
                  err.message);
    const arrival_t *b1[1] = {&a[0][1]}, *both3[2] = {&a[2][0], &a[2][1]};
    check_last(copy, "b", b1, 1, c, 1);
    check_last(copy, "a", both3, 2, c, 3);
    check_last(copy, NULL, both3, 2, c, 3);
    char *again = checkpoint_text(copy);
    ck_assert_str_eq(again, text);
    free(again);
    free(text);
    arrival_t more[2][2];
    for (uint64_t step = 4; step <= 5; step++)
        for (uint32_t w = 0; w < 2; w++) {
            arrival_make(&more[step - 4][w], &rng, c, step + w);
            const char *dom = step == 5 && w == 0 ? "b" : "a";
            ck_assert_int_eq(send(reg, &more[step - 4][w], c, step, w, dom, step), 0);
            ck_assert_int_eq(send(copy, &more[step - 4][w], c, step, w, dom, step), 0);
        }
    const arrival_t *b5[1] = {&more[1][0]};
    check_last(copy, "b", b5, 1, c, 5);
    text = checkpoint_text(reg);
    again = checkpoint_text(copy);
    ck_assert_str_eq(again, text);
    free(again);
    free(text);
    ck_assert_int_eq(nsd_registry_delete_run(copy, "r", NULL), 0);
    ck_assert_uint_eq(memory_bytes(copy), 0);
    nsd_registry_free(copy);
    nsd_registry_free(reg);
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("last_views");
    TCase *tc = tcase_create("last_views");
    tcase_set_timeout(tc, 60);
    int n = (int)(sizeof(channel_cases) / sizeof(channel_cases[0]));
    tcase_add_loop_test(tc, test_steady_state_allocates_no_step, 0, n);
    tcase_add_loop_test(tc, test_last_of_a_step_applied_out_of_order, 0, n);
    tcase_add_loop_test(tc, test_domain_keeps_its_last_step, 0, n);
    tcase_add_loop_test(tc, test_checkpoint_round_trip, 0, n);
    suite_add_tcase(s, tc);
    return s;
}

NS_TEST_MAIN(make_suite)
