/* test_validate.c - ns_find_nonfinite / ns_find_bad_variance against plain isfinite() loops. */
#include <float.h>
#include <math.h>
#include <stdlib.h>

#include <normstat/core.h>

#include "harness.h"

static size_t plain_nonfinite(const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i]))
            return i;
    return n;
}

static size_t plain_bad_variance(const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i]) || (signbit(x[i]) && x[i] != 0.0f)) /* negative; -0.0 allowed */
            return i;
    return n;
}

START_TEST(random_arrays)
{
    uint64_t rng = ns_test_seed() ^ 0xfa11;
    const float specials[] = {NAN,      INFINITY, -INFINITY, -1.0f,   -0.0f,   0.0f,
                              -FLT_MIN, 1e-45f,   -1e-45f,   FLT_MAX, -FLT_MAX};
    float *x = malloc(sizeof(float) * 5000);
    ck_assert_ptr_nonnull(x);
    for (int iter = 0; iter < 3000; iter++) {
        size_t n = iter % 2 ? 1 + ns_test_rand(&rng) % 70 : 1 + ns_test_rand(&rng) % 5000;
        for (size_t i = 0; i < n; i++)
            x[i] = (float)(ns_test_uniform(&rng) * 10.0);
        int hits = (int)(ns_test_rand(&rng) % 4);
        for (int h = 0; h < hits; h++)
            x[ns_test_rand(&rng) % n] =
                specials[ns_test_rand(&rng) % (sizeof(specials) / sizeof(specials[0]))];
        ck_assert_uint_eq(ns_find_nonfinite(x, n), plain_nonfinite(x, n));
        ck_assert_uint_eq(ns_find_bad_variance(x, n), plain_bad_variance(x, n));
    }
    free(x);
}
END_TEST

START_TEST(edge_cases)
{
    const float ok[] = {0.0f, -0.0f, 1.0f, FLT_MAX};
    const float nan1[] = {1.0f, NAN};
    ck_assert_uint_eq(ns_find_nonfinite(ok, 4), 4);
    ck_assert_uint_eq(ns_find_bad_variance(ok, 4), 4); /* -0.0 is a valid variance */
    ck_assert_uint_eq(ns_find_nonfinite(nan1, 2), 1);
    ck_assert_uint_eq(ns_find_bad_variance(nan1, 2), 1);
    ck_assert_uint_eq(ns_find_nonfinite(nan1, 1), 1); /* only the length is scanned */
    ck_assert_uint_eq(ns_find_nonfinite(ok, 0), 0);
    ck_assert_uint_eq(ns_find_bad_variance(ok, 0), 0);
    ck_assert_uint_eq(ns_find_nonfinite(NULL, 0), 0);
    ck_assert_uint_eq(ns_find_bad_variance(NULL, 0), 0);
}
END_TEST

static Suite *validate_suite(void)
{
    Suite *s = suite_create("validate");
    TCase *tc = tcase_create("validate");
    tcase_add_test(tc, random_arrays);
    tcase_add_test(tc, edge_cases);
    suite_add_tcase(s, tc);
    return s;
}

NS_TEST_MAIN(validate_suite)
