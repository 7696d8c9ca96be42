/* test_mixture.c - ns_mixture against doc/design.md's formula, evaluated in long double. */
#include <normstat/core.h>

#include <math.h>

#include "harness.h"

enum { D_MAX = 6, C_MAX = 37 };

/* doc/design.md literally: mean = sum w mean_d, var = sum w (var_d + mean_d^2) - mean^2,
 * in long double (64-bit mantissa: the cancellation costs far less than the
 * double result can resolve for the magnitudes used here). */
static void reference(const double w[], const double mean[][C_MAX], const double var[][C_MAX],
                      size_t d_len, size_t c, long double *m, long double *v)
{
    long double total = 0, sm = 0, s2 = 0;
    for (size_t d = 0; d < d_len; d++)
        total += w[d];
    for (size_t d = 0; d < d_len; d++) {
        long double wd = (long double)w[d] / total;
        sm += wd * mean[d][c];
        s2 += wd * ((long double)var[d][c] + (long double)mean[d][c] * mean[d][c]);
    }
    *m = sm;
    *v = s2 - sm * sm;
}

static void fill(uint64_t *rng, size_t d_len, double w[], double mean[][C_MAX], double var[][C_MAX],
                 ns_component_t comp[])
{
    for (size_t d = 0; d < d_len; d++) {
        w[d] = 0.05 + 3.0 * ns_test_uniform(rng);
        double offset = 4.0 * ns_test_normal(rng);
        for (size_t c = 0; c < C_MAX; c++) {
            mean[d][c] = offset + ns_test_normal(rng);
            var[d][c] = 2.0 * ns_test_uniform(rng);
        }
        comp[d].weight = w[d];
        comp[d].mean = mean[d];
        comp[d].var = var[d];
    }
}

START_TEST(test_against_formula)
{
    uint64_t rng = ns_test_seed() + 11;
    for (int round = 0; round < 50; round++) {
        size_t d_len = 1 + ns_test_rand(&rng) % D_MAX;
        double w[D_MAX], mean[D_MAX][C_MAX], var[D_MAX][C_MAX];
        ns_component_t comp[D_MAX];
        fill(&rng, d_len, w, mean, var, comp);
        double om[C_MAX], ov[C_MAX];
        ck_assert_int_eq(ns_mixture(comp, d_len, C_MAX, om, ov), 0);
        for (size_t c = 0; c < C_MAX; c++) {
            long double m, v, scale = 0;
            reference(w, mean, var, d_len, c, &m, &v);
            for (size_t d = 0; d < d_len; d++)
                scale += var[d][c] + mean[d][c] * mean[d][c];
            /* double arithmetic over <= 6 terms: well inside 1e-14 of the
             * magnitude sum w (var + mean^2) that the formula cancels from */
            ck_assert_msg(fabsl(om[c] - m) <= 1e-14L * (1 + sqrtl(scale)),
                          "mean c=%zu %.17g vs %.17Lg", c, om[c], m);
            ck_assert_msg(fabsl(ov[c] - v) <= 1e-14L * (1 + scale), "var c=%zu %.17g vs %.17Lg", c,
                          ov[c], v);
            ck_assert(ov[c] >= 0);
        }
    }
}
END_TEST

START_TEST(test_known_answer)
{
    /* Two domains, weights 3:1 (normalised 0.75, 0.25), one channel:
     * means 0 and 4, variances 1 and 2.
     * mean = 0.75*0 + 0.25*4 = 1
     * var  = 0.75*(1 + 0) + 0.25*(2 + 16) - 1 = 0.75 + 4.5 - 1 = 4.25 */
    const double m0[] = {0.0}, v0[] = {1.0}, m1[] = {4.0}, v1[] = {2.0};
    ns_component_t comp[] = {{3.0, m0, v0}, {1.0, m1, v1}};
    double m, v;
    ck_assert_int_eq(ns_mixture(comp, 2, 1, &m, &v), 0);
    ck_assert_double_eq_tol(m, 1.0, 1e-15);
    ck_assert_double_eq_tol(v, 4.25, 1e-15);
}
END_TEST

START_TEST(test_weights_normalised)
{
    uint64_t rng = ns_test_seed() + 12;
    double w[D_MAX], mean[D_MAX][C_MAX], var[D_MAX][C_MAX];
    ns_component_t comp[D_MAX], scaled[D_MAX];
    fill(&rng, 4, w, mean, var, comp);
    for (size_t d = 0; d < 4; d++) {
        scaled[d] = comp[d];
        scaled[d].weight = comp[d].weight * 1000.0;
    }
    double m1[C_MAX], v1[C_MAX], m2[C_MAX], v2[C_MAX];
    ck_assert_int_eq(ns_mixture(comp, 4, C_MAX, m1, v1), 0);
    ck_assert_int_eq(ns_mixture(scaled, 4, C_MAX, m2, v2), 0);
    for (size_t c = 0; c < C_MAX; c++) {
        ck_assert_double_eq_tol(m1[c], m2[c], 1e-13 * (1 + fabs(m1[c])));
        ck_assert_double_eq_tol(v1[c], v2[c], 1e-13 * (1 + v1[c]));
    }
}
END_TEST

START_TEST(test_single_component_identity)
{
    uint64_t rng = ns_test_seed() + 13;
    double w[D_MAX], mean[D_MAX][C_MAX], var[D_MAX][C_MAX];
    ns_component_t comp[D_MAX];
    fill(&rng, 1, w, mean, var, comp);
    double m[C_MAX], v[C_MAX];
    ck_assert_int_eq(ns_mixture(comp, 1, C_MAX, m, v), 0);
    for (size_t c = 0; c < C_MAX; c++) {
        ck_assert(m[c] == mean[0][c]);
        ck_assert(v[c] == var[0][c]);
    }
    /* a second component of weight 0 changes nothing either */
    fill(&rng, 2, w, mean, var, comp);
    comp[1].weight = 0.0;
    ck_assert_int_eq(ns_mixture(comp, 2, C_MAX, m, v), 0);
    for (size_t c = 0; c < C_MAX; c++) {
        ck_assert(m[c] == mean[0][c]);
        ck_assert(v[c] == var[0][c]);
    }
}
END_TEST

START_TEST(test_invalid)
{
    const double m0[] = {1.0}, v0[] = {1.0};
    double m, v;
    ns_component_t comp[] = {{1.0, m0, v0}, {1.0, m0, v0}};
    const double bad[] = {-1.0, NAN, INFINITY, -INFINITY};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        comp[1].weight = bad[i];
        ck_assert_int_eq(ns_mixture(comp, 2, 1, &m, &v), NS_EINVAL);
    }
    comp[0].weight = 0.0; /* all weights zero */
    comp[1].weight = 0.0;
    ck_assert_int_eq(ns_mixture(comp, 2, 1, &m, &v), NS_EINVAL);
    comp[0].weight = comp[1].weight = 1.0;
    ck_assert_int_eq(ns_mixture(NULL, 2, 1, &m, &v), NS_EINVAL);
    ck_assert_int_eq(ns_mixture(comp, 0, 1, &m, &v), NS_EINVAL);
    ck_assert_int_eq(ns_mixture(comp, 2, 0, &m, &v), NS_EINVAL);
    ck_assert_int_eq(ns_mixture(comp, 2, 1, NULL, &v), NS_EINVAL);
    ck_assert_int_eq(ns_mixture(comp, 2, 1, &m, NULL), NS_EINVAL);
    comp[1].mean = NULL;
    ck_assert_int_eq(ns_mixture(comp, 2, 1, &m, &v), NS_EINVAL);
    /* weights whose sum overflows to infinity */
    comp[1].mean = m0;
    comp[0].weight = comp[1].weight = 1e308;
    ck_assert_int_eq(ns_mixture(comp, 2, 1, &m, &v), NS_EINVAL);
}
END_TEST

static Suite *mixture_suite(void)
{
    Suite *s = suite_create("mixture");
    TCase *tc = tcase_create("mixture");
    tcase_add_test(tc, test_against_formula);
    tcase_add_test(tc, test_known_answer);
    tcase_add_test(tc, test_weights_normalised);
    tcase_add_test(tc, test_single_component_identity);
    tcase_add_test(tc, test_invalid);
    suite_add_tcase(s, tc);
    return s;
}

NS_TEST_MAIN(mixture_suite)
