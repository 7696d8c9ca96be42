/* test_step_update.c - ns_step_update() against the updates it fuses:
 * ns_ema_update() on each EMA and ns_precise_add(), one after the other,
 * must leave every array and scalar in the same bits; and every kernel
 * table this CPU supports against the scalar reference, bitwise, for every
 * channel count around the vector width. */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "kernels.h"

static uint64_t rng;

enum { CMAX = 67 };

/* An EMA with its own arrays (zero-start ones if 'zero'), random state. */
typedef struct {
    double a[4][CMAX];
    ns_ema_t ema;
} ema_box_t;

typedef struct {
    double a[2][CMAX];
    ns_precise_t acc;
} acc_box_t;

static double urand(void)
{
    return (double)(ns_test_rand(&rng) >> 11) * 0x1p-53;
}

static void ema_fill(ema_box_t *b, size_t c, int zero)
{
    for (size_t i = 0; i < c; i++) {
        b->a[0][i] = urand() * 4 - 2;
        b->a[1][i] = urand() * 3;
        b->a[2][i] = urand() * 4 - 2;
        b->a[3][i] = urand() * 3;
    }
    b->ema.running_mean = b->a[0];
    b->ema.running_var = b->a[1];
    b->ema.zero_mean = zero ? b->a[2] : NULL;
    b->ema.zero_var = zero ? b->a[3] : NULL;
    b->ema.decay = urand();
    b->ema.num_batches_tracked = ns_test_rand(&rng) % 5;
}

static void acc_fill(acc_box_t *b, size_t c, int empty)
{
    for (size_t i = 0; i < c; i++) {
        b->a[0][i] = empty ? 0.0 : urand() * 4 - 2;
        b->a[1][i] = empty ? 0.0 : urand() * 100;
    }
    b->acc.mean = b->a[0];
    b->acc.m2 = b->a[1];
    b->acc.n = empty ? 0 : 1 + ns_test_rand(&rng) % 100000;
    b->acc.num_batches = empty ? 0 : 1 + b->acc.n % 7;
}

/* Copies keep pointing into their own box. */
static void ema_copy(ema_box_t *dst, const ema_box_t *src)
{
    memcpy(dst, src, sizeof(*dst));
    dst->ema.running_mean = dst->a[0];
    dst->ema.running_var = dst->a[1];
    dst->ema.zero_mean = src->ema.zero_mean ? dst->a[2] : NULL;
    dst->ema.zero_var = src->ema.zero_var ? dst->a[3] : NULL;
}

static void acc_copy(acc_box_t *dst, const acc_box_t *src)
{
    memcpy(dst, src, sizeof(*dst));
    dst->acc.mean = dst->a[0];
    dst->acc.m2 = dst->a[1];
}

static int same(const void *a, const void *b, size_t n)
{
    return memcmp(a, b, n) == 0;
}

static void check_ema(const ema_box_t *a, const ema_box_t *b, size_t c)
{
    ck_assert(same(a->a[0], b->a[0], c * 8) && same(a->a[1], b->a[1], c * 8));
    if (a->ema.zero_mean != NULL)
        ck_assert(same(a->a[2], b->a[2], c * 8) && same(a->a[3], b->a[3], c * 8));
    ck_assert(same(&a->ema.decay, &b->ema.decay, 8));
    ck_assert_uint_eq(a->ema.num_batches_tracked, b->ema.num_batches_tracked);
}

static void check_acc(const acc_box_t *a, const acc_box_t *b, size_t c)
{
    ck_assert(same(a->a[0], b->a[0], c * 8) && same(a->a[1], b->a[1], c * 8));
    ck_assert_uint_eq(a->acc.n, b->acc.n);
    ck_assert_uint_eq(a->acc.num_batches, b->acc.num_batches);
}

/* One case: fused vs one by one, from the same random state. */
static void one_case(size_t c, size_t n_ema, int zero, int precise, int empty, uint64_t n,
                     double momentum)
{
    ema_box_t e[2], r[2];
    acc_box_t p, q;
    double mean[CMAX], var[CMAX];
    for (size_t i = 0; i < c; i++) {
        mean[i] = urand() * 6 - 3;
        var[i] = urand() * 5;
    }
    for (size_t k = 0; k < 2; k++) {
        ema_fill(&e[k], c, zero);
        ema_copy(&r[k], &e[k]);
    }
    acc_fill(&p, c, empty);
    acc_copy(&q, &p);

    ns_ema_t *list[2] = {&e[0].ema, &e[1].ema};
    int applied[2] = {-1, -1};
    ck_assert_int_eq(
        ns_step_update(list, n_ema, precise ? &p.acc : NULL, c, n, mean, var, momentum, applied),
        0);
    for (size_t k = 0; k < n_ema; k++)
        ck_assert_int_eq(applied[k], ns_ema_update(&r[k].ema, c, n, mean, var, momentum));
    if (precise)
        ck_assert_int_eq(ns_precise_add(&q.acc, c, n, mean, var), 0);
    for (size_t k = 0; k < 2; k++)
        check_ema(&e[k], &r[k], c);
    check_acc(&p, &q, c);
}

START_TEST(test_matches_separate_updates)
{
    rng = ns_test_seed();
    const double momenta[] = {0.1, 0.25, 0.0, 1.0, NS_MOMENTUM_CUMULATIVE};
    const uint64_t counts[] = {0, 1, 2, 3, 200704, (uint64_t)1 << 40};
    size_t cases = 0;
    for (size_t c = 1; c <= CMAX; c += (c < 12 ? 1 : 11))
        for (size_t n_ema = 0; n_ema <= 2; n_ema++)
            for (int zero = 0; zero <= 1; zero++)
                for (int precise = 0; precise <= 1; precise++)
                    for (int empty = 0; empty <= precise; empty++)
                        for (size_t m = 0; m < sizeof(momenta) / sizeof(momenta[0]); m++)
                            for (size_t k = 0; k < sizeof(counts) / sizeof(counts[0]); k++) {
                                one_case(c, n_ema, zero, precise, empty, counts[k], momenta[m]);
                                cases++;
                            }
    ck_assert_uint_gt(cases, 1000);
}
END_TEST

/* Refused as the single updates refuse, and nothing changed. */
START_TEST(test_refusals_change_nothing)
{
    rng = ns_test_seed();
    ema_box_t e, r;
    acc_box_t p, q;
    double mean[4] = {1, 2, 3, 4}, var[4] = {1, 1, 1, 1};
    ema_fill(&e, 4, 1);
    ema_copy(&r, &e);
    acc_fill(&p, 4, 0);
    acc_copy(&q, &p);
    ns_ema_t *list[3] = {&e.ema, &e.ema, &e.ema};
    int applied[3];
    ck_assert_int_eq(ns_step_update(list, 1, &p.acc, 4, 10, mean, var, 1.5, applied), NS_EINVAL);
    ck_assert_int_eq(ns_step_update(list, 3, &p.acc, 4, 10, mean, var, 0.1, applied), NS_EINVAL);
    ck_assert_int_eq(ns_step_update(list, 1, &p.acc, 4, 10, NULL, var, 0.1, applied), NS_EINVAL);
    p.acc.n = UINT64_MAX - 5;
    acc_copy(&q, &p);
    ck_assert_int_eq(ns_step_update(list, 1, &p.acc, 4, 10, mean, var, 0.1, applied), NS_EINVAL);
    check_ema(&e, &r, 4);
    check_acc(&p, &q, 4);
}
END_TEST

/* Every table against the scalar reference, bitwise, around the vector width. */
START_TEST(test_tables_match_scalar)
{
    rng = ns_test_seed();
    const ns_kernels_t *tables[2] = {&ns__kernels_scalar, NULL};
#if defined(__x86_64__) || defined(__i386__)
    if (ns__cpu_has_avx2_fma())
        tables[1] = &ns__kernels_avx2;
#endif
    for (size_t t = 1; t < 2 && tables[t] != NULL; t++)
        for (size_t c = 0; c <= CMAX; c++)
            for (int empty = 0; empty <= 1; empty++) {
                ema_box_t e[2], r[2];
                acc_box_t p, q;
                double mean[CMAX], var[CMAX];
                for (size_t i = 0; i < c; i++) {
                    mean[i] = urand() * 6 - 3;
                    var[i] = urand() * 5;
                }
                ema_fill(&e[0], c, 1);
                ema_fill(&e[1], c, (int)(c % 2)); /* both with zero arrays: the unrolled path */
                ema_copy(&r[0], &e[0]);
                ema_copy(&r[1], &e[1]);
                acc_fill(&p, c, empty);
                acc_copy(&q, &p);
                ns__ema_pass_t pe[2], pr[2];
                for (int k = 0; k < 2; k++) {
                    pe[k] = (ns__ema_pass_t){e[k].ema.running_mean,
                                             e[k].ema.running_var,
                                             e[k].ema.zero_mean,
                                             e[k].ema.zero_var,
                                             0.75,
                                             0.25,
                                             0.5,
                                             0.5};
                    pr[k] = (ns__ema_pass_t){r[k].ema.running_mean,
                                             r[k].ema.running_var,
                                             r[k].ema.zero_mean,
                                             r[k].ema.zero_var,
                                             0.75,
                                             0.25,
                                             0.5,
                                             0.5};
                }
                ns__precise_pass_t pp = {p.acc.mean, p.acc.m2, empty, 7.0, 0.3, 11.0};
                ns__precise_pass_t pq = {q.acc.mean, q.acc.m2, empty, 7.0, 0.3, 11.0};
                tables[t]->step_update(mean, var, c, 1.25, pe, 2, &pp, NULL);
                ns__kernels_scalar.step_update(mean, var, c, 1.25, pr, 2, &pq, NULL);
                check_ema(&e[0], &r[0], c);
                check_ema(&e[1], &r[1], c);
                check_acc(&p, &q, c);
            }
}
END_TEST

/* widen: every table gives the float32 values as doubles, exactly. */
START_TEST(test_widen_exact)
{
    rng = ns_test_seed();
    const ns_kernels_t *tables[2] = {&ns__kernels_scalar, NULL};
#if defined(__x86_64__) || defined(__i386__)
    if (ns__cpu_has_avx2_fma())
        tables[1] = &ns__kernels_avx2;
#endif
    float src[CMAX];
    double dst[CMAX + 1];
    for (size_t t = 0; t < 2 && tables[t] != NULL; t++)
        for (size_t n = 0; n <= CMAX; n++) {
            for (size_t i = 0; i < n; i++) {
                uint32_t bits = (uint32_t)ns_test_rand(&rng);
                if ((bits & 0x7f800000u) == 0x7f800000u)
                    bits &= 0xbfffffffu; /* finite */
                memcpy(&src[i], &bits, 4);
            }
            dst[n] = 42.0;
            tables[t]->widen(dst, src, n);
            for (size_t i = 0; i < n; i++)
                ck_assert(dst[i] == (double)src[i] && !signbit(dst[i]) == !signbit(src[i]));
            ck_assert(dst[n] == 42.0); /* nothing past n */
        }
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("step_update");
    TCase *tc = tcase_create("step_update");
    tcase_add_test(tc, test_matches_separate_updates);
    tcase_add_test(tc, test_refusals_change_nothing);
    tcase_add_test(tc, test_tables_match_scalar);
    tcase_add_test(tc, test_widen_exact);
    suite_add_tcase(s, tc);
    return s;
}

NS_TEST_MAIN(make_suite)
