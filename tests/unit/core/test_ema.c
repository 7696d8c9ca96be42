/* test_ema.c - PyTorch's running statistics (EMA, cumulative average, debiased view). */
#include <normstat/core.h>

#include <math.h>
#include <string.h>

#include "harness.h"

enum { C = 7, STEPS = 30 };

typedef struct state_s {
    double rm[C], rv[C], zm[C], zv[C];
    ns_ema_t ema;
} state_t;

static void state_init(state_t *s, int with_zero)
{
    s->ema.running_mean = s->rm;
    s->ema.running_var = s->rv;
    s->ema.zero_mean = with_zero ? s->zm : NULL;
    s->ema.zero_var = with_zero ? s->zv : NULL;
    ns_ema_init(&s->ema, C);
}

/* A step's global statistics: count, mean, biased var. */
typedef struct step_s {
    uint64_t n;
    double mean[C], var[C];
} step_t;

static void random_step(step_t *st, uint64_t *rng)
{
    st->n = 2 + ns_test_rand(rng) % 500;
    for (size_t c = 0; c < C; c++) {
        st->mean[c] = 3.0 * ns_test_normal(rng);
        st->var[c] = 0.1 + 4.0 * ns_test_uniform(rng);
    }
}

START_TEST(test_initial_state)
{
    state_t s;
    memset(&s, 0x55, sizeof(s));
    state_init(&s, 1);
    for (size_t c = 0; c < C; c++) {
        ck_assert(s.rm[c] == 0.0 && s.rv[c] == 1.0);
        ck_assert(s.zm[c] == 0.0 && s.zv[c] == 0.0);
    }
    ck_assert(s.ema.decay == 1.0);
    ck_assert_uint_eq(s.ema.num_batches_tracked, 0);
    double m[C], v[C];
    ck_assert_int_eq(ns_ema_debiased(&s.ema, C, m, v), 0);
    for (size_t c = 0; c < C; c++)
        ck_assert(m[c] == 0.0 && v[c] == 1.0);
}
END_TEST

START_TEST(test_pytorch_documented_example)
{
    /* torch.nn.BatchNorm1d(momentum=0.3) in train mode, fed the same batch
     * twice: running_mean = 0.3 m + 0.7 (0.3 m + 0.7 * 0) = (1 - 0.7^2) m
     * = 0.51 m. For a constant feature the batch variance is 0, so
     * running_var = 0.7 * (0.7 * 1 + 0.3 * 0) + 0.3 * 0 = (1 - 0.3)^2 = 0.49. */
    state_t s;
    state_init(&s, 0);
    step_t st;
    st.n = 16;
    for (size_t c = 0; c < C; c++) {
        st.mean[c] = 1.0 + (double)c;
        st.var[c] = 0.0; /* constant feature */
    }
    for (int i = 0; i < 2; i++)
        ck_assert_int_eq(ns_ema_update(&s.ema, C, st.n, st.mean, st.var, 0.3), 1);
    ck_assert_uint_eq(s.ema.num_batches_tracked, 2);
    for (size_t c = 0; c < C; c++) {
        ck_assert_double_eq_tol(s.rm[c], 0.51 * st.mean[c], 1e-15 * st.mean[c]);
        ck_assert_double_eq_tol(s.rv[c], 0.49, 1e-15);
    }
}
END_TEST

START_TEST(test_momentum_against_recurrence)
{
    /* PyTorch's update, in long double, on random steps of varying N. */
    uint64_t rng = ns_test_seed() + 31;
    state_t s;
    state_init(&s, 1);
    long double rm[C], rv[C];
    for (size_t c = 0; c < C; c++) {
        rm[c] = 0;
        rv[c] = 1;
    }
    const double momentum = 0.1;
    for (int k = 0; k < STEPS; k++) {
        step_t st;
        random_step(&st, &rng);
        ck_assert_int_eq(ns_ema_update(&s.ema, C, st.n, st.mean, st.var, momentum), 1);
        long double f = 0.1L;
        for (size_t c = 0; c < C; c++) {
            rm[c] = (1 - f) * rm[c] + f * st.mean[c];
            rv[c] = (1 - f) * rv[c] + f * ((long double)st.var[c] * st.n / (st.n - 1));
        }
    }
    ck_assert_uint_eq(s.ema.num_batches_tracked, STEPS);
    ck_assert_double_eq_tol(s.ema.decay, pow(0.9, STEPS), 1e-15);
    for (size_t c = 0; c < C; c++) {
        ck_assert_msg(fabsl(s.rm[c] - rm[c]) <= 1e-14L * (1 + fabsl(rm[c])), "%.17g %.17Lg",
                      s.rm[c], rm[c]);
        ck_assert_msg(fabsl(s.rv[c] - rv[c]) <= 1e-14L * rv[c], "%.17g %.17Lg", s.rv[c], rv[c]);
    }
}
END_TEST

START_TEST(test_cumulative_average)
{
    /* momentum=None: after k steps running_mean is the plain average of the
     * step means and running_var the plain average of the unbiased step
     * variances var * N / (N - 1), each step with its own N. */
    uint64_t rng = ns_test_seed() + 32;
    state_t s;
    state_init(&s, 1);
    long double sm[C] = {0}, sv[C] = {0};
    for (int k = 1; k <= STEPS; k++) {
        step_t st;
        random_step(&st, &rng);
        ck_assert_int_eq(ns_ema_update(&s.ema, C, st.n, st.mean, st.var, NS_MOMENTUM_CUMULATIVE),
                         1);
        for (size_t c = 0; c < C; c++) {
            sm[c] += st.mean[c];
            sv[c] += (long double)st.var[c] * st.n / (st.n - 1);
        }
        double dm[C], dv[C];
        ck_assert_int_eq(ns_ema_debiased(&s.ema, C, dm, dv), 0);
        for (size_t c = 0; c < C; c++) {
            long double am = sm[c] / k, av = sv[c] / k;
            ck_assert_msg(fabsl(s.rm[c] - am) <= 1e-14L * (1 + fabsl(am)), "k=%d", k);
            ck_assert_msg(fabsl(s.rv[c] - av) <= 1e-14L * av, "k=%d %.17g %.17Lg", k, s.rv[c], av);
            /* the first step has f = 1, so there is no bias to remove */
            ck_assert_msg(fabsl(dm[c] - am) <= 1e-14L * (1 + fabsl(am)), "k=%d", k);
            ck_assert_msg(fabsl(dv[c] - av) <= 1e-14L * av, "k=%d", k);
        }
    }
    ck_assert_uint_eq(s.ema.num_batches_tracked, STEPS);
}
END_TEST

START_TEST(test_small_batches_skipped)
{
    uint64_t rng = ns_test_seed() + 33;
    state_t s, before;
    state_init(&s, 1);
    step_t st;
    random_step(&st, &rng);
    ck_assert_int_eq(ns_ema_update(&s.ema, C, st.n, st.mean, st.var, 0.1), 1);
    memcpy(&before, &s, sizeof(s));
    for (uint64_t n = 0; n < 2; n++) {
        ck_assert_int_eq(ns_ema_update(&s.ema, C, n, st.mean, st.var, 0.1), 0);
        ck_assert_int_eq(ns_ema_update(&s.ema, C, n, st.mean, st.var, NS_MOMENTUM_CUMULATIVE), 0);
    }
    ck_assert(memcmp(s.rm, before.rm, sizeof(s.rm)) == 0);
    ck_assert(memcmp(s.rv, before.rv, sizeof(s.rv)) == 0);
    ck_assert(memcmp(s.zm, before.zm, sizeof(s.zm)) == 0);
    ck_assert(memcmp(s.zv, before.zv, sizeof(s.zv)) == 0);
    ck_assert(s.ema.decay == before.ema.decay);
    ck_assert_uint_eq(s.ema.num_batches_tracked, 1);
}
END_TEST

START_TEST(test_momentum_zero_and_one)
{
    uint64_t rng = ns_test_seed() + 34;
    step_t st;
    random_step(&st, &rng);

    /* momentum 0: the statistics never move, but the step is counted (as
     * PyTorch increments num_batches_tracked) */
    state_t s;
    state_init(&s, 1);
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(ns_ema_update(&s.ema, C, st.n, st.mean, st.var, 0.0), 1);
    ck_assert_uint_eq(s.ema.num_batches_tracked, 3);
    double dm[C], dv[C];
    ck_assert_int_eq(ns_ema_debiased(&s.ema, C, dm, dv), 0);
    for (size_t c = 0; c < C; c++) {
        ck_assert(s.rm[c] == 0.0 && s.rv[c] == 1.0);
        ck_assert(dm[c] == 0.0 && dv[c] == 1.0);
    }

    /* momentum 1: the running statistics are the last step's */
    ck_assert_int_eq(ns_ema_update(&s.ema, C, st.n, st.mean, st.var, 1.0), 1);
    random_step(&st, &rng);
    ck_assert_int_eq(ns_ema_update(&s.ema, C, st.n, st.mean, st.var, 1.0), 1);
    ck_assert(s.ema.decay == 0.0);
    ck_assert_int_eq(ns_ema_debiased(&s.ema, C, dm, dv), 0);
    for (size_t c = 0; c < C; c++) {
        long double uv = (long double)st.var[c] * st.n / (st.n - 1);
        ck_assert(s.rm[c] == st.mean[c]);
        ck_assert(dm[c] == st.mean[c]);
        ck_assert(fabsl(s.rv[c] - uv) <= 4.5e-16L * uv);
        ck_assert(dv[c] == s.rv[c]);
    }
}
END_TEST

START_TEST(test_invalid_arguments)
{
    state_t s;
    state_init(&s, 1);
    step_t st;
    uint64_t rng = ns_test_seed() + 35;
    random_step(&st, &rng);
    const double bad[] = {-0.1, 1.1, -2.0, NAN, INFINITY, -INFINITY};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        ck_assert_int_eq(ns_ema_update(&s.ema, C, st.n, st.mean, st.var, bad[i]), NS_EINVAL);
    /* refused even when the step would have been skipped */
    ck_assert_int_eq(ns_ema_update(&s.ema, C, 1, st.mean, st.var, NAN), NS_EINVAL);
    ck_assert_int_eq(ns_ema_update(&s.ema, C, st.n, NULL, st.var, 0.1), NS_EINVAL);
    ck_assert_int_eq(ns_ema_update(&s.ema, C, st.n, st.mean, NULL, 0.1), NS_EINVAL);
    ck_assert_int_eq(ns_ema_update(NULL, C, st.n, st.mean, st.var, 0.1), NS_EINVAL);
    s.ema.zero_var = NULL; /* only one of the pair */
    ck_assert_int_eq(ns_ema_update(&s.ema, C, st.n, st.mean, st.var, 0.1), NS_EINVAL);
    ck_assert_uint_eq(s.ema.num_batches_tracked, 0);
    for (size_t c = 0; c < C; c++)
        ck_assert(s.rm[c] == 0.0 && s.rv[c] == 1.0);

    state_t plain;
    state_init(&plain, 0);
    double m[C], v[C];
    ck_assert_int_eq(ns_ema_debiased(&plain.ema, C, m, v), NS_EINVAL);
    ck_assert_int_eq(ns_ema_update(&plain.ema, C, st.n, st.mean, st.var, 0.1), 1);
}
END_TEST

START_TEST(test_debiased_one_step_exact)
{
    uint64_t rng = ns_test_seed() + 36;
    const double momenta[] = {0.1, 0.3, 0.01, 1e-6, 0.9};
    for (size_t i = 0; i < sizeof(momenta) / sizeof(momenta[0]); i++) {
        state_t s;
        state_init(&s, 1);
        step_t st;
        random_step(&st, &rng);
        ck_assert_int_eq(ns_ema_update(&s.ema, C, st.n, st.mean, st.var, momenta[i]), 1);
        double dm[C], dv[C];
        ck_assert_int_eq(ns_ema_debiased(&s.ema, C, dm, dv), 0);
        for (size_t c = 0; c < C; c++) {
            /* the mean is the step's bit for bit; the variance is the step's
             * unbiased variance, one rounding of var * n/(n-1) away */
            ck_assert_msg(dm[c] == st.mean[c], "momentum %g: %.17g vs %.17g", momenta[i], dm[c],
                          st.mean[c]);
            long double uv = (long double)st.var[c] * st.n / (st.n - 1);
            ck_assert_msg(fabsl(dv[c] - uv) <= 4.5e-16L * uv, "%.17g vs %.17Lg", dv[c], uv);
        }
    }
}
END_TEST

START_TEST(test_debiased_weighted_average)
{
    /* After k steps with momentum f the zero-start average divided by
     * 1 - (1-f)^k is the average of the steps with weights f (1-f)^(k-i),
     * normalised; computed here directly in long double. */
    uint64_t rng = ns_test_seed() + 37;
    const double momenta[] = {0.1, 0.003};
    for (size_t mi = 0; mi < 2; mi++) {
        const double f = momenta[mi];
        state_t s;
        state_init(&s, 1);
        static step_t steps[STEPS];
        for (int k = 0; k < STEPS; k++) {
            random_step(&steps[k], &rng);
            ck_assert_int_eq(ns_ema_update(&s.ema, C, steps[k].n, steps[k].mean, steps[k].var, f),
                             1);
            double dm[C], dv[C];
            ck_assert_int_eq(ns_ema_debiased(&s.ema, C, dm, dv), 0);
            for (size_t c = 0; c < C; c++) {
                long double wsum = 0, am = 0, av = 0;
                for (int i = 0; i <= k; i++) {
                    long double w = (long double)f * powl(1.0L - f, k - i);
                    wsum += w;
                    am += w * steps[i].mean[c];
                    av += w * ((long double)steps[i].var[c] * steps[i].n / (steps[i].n - 1));
                }
                am /= wsum;
                av /= wsum;
                ck_assert_msg(fabsl(dm[c] - am) <= 1e-13L * (1 + fabsl(am)),
                              "f=%g k=%d: %.17g vs %.17Lg", f, k, dm[c], am);
                ck_assert_msg(fabsl(dv[c] - av) <= 1e-13L * av, "f=%g k=%d: %.17g vs %.17Lg", f, k,
                              dv[c], av);
            }
        }
    }
}
END_TEST

static Suite *ema_suite(void)
{
    Suite *s = suite_create("ema");
    TCase *tc = tcase_create("ema");
    tcase_add_test(tc, test_initial_state);
    tcase_add_test(tc, test_pytorch_documented_example);
    tcase_add_test(tc, test_momentum_against_recurrence);
    tcase_add_test(tc, test_cumulative_average);
    tcase_add_test(tc, test_small_batches_skipped);
    tcase_add_test(tc, test_momentum_zero_and_one);
    tcase_add_test(tc, test_invalid_arguments);
    tcase_add_test(tc, test_debiased_one_step_exact);
    tcase_add_test(tc, test_debiased_weighted_average);
    suite_add_tcase(s, tc);
    return s;
}

NS_TEST_MAIN(ema_suite)
