/* harness.c - seeded randomness and the runner shared by the unit tests. */
#include "harness.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

uint64_t ns_test_seed(void)
{
    static uint64_t seed;
    if (seed == 0) {
        const char *env = getenv("NS_TEST_SEED");
        seed = env ? strtoull(env, NULL, 0) : (uint64_t)time(NULL) * 2654435761u;
        if (seed == 0)
            seed = 1;
        fprintf(stderr, "seed: NS_TEST_SEED=%llu\n", (unsigned long long)seed);
    }
    return seed;
}

uint64_t ns_test_rand(uint64_t *state)
{
    uint64_t x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return x * 2685821657736338717ull;
}

double ns_test_uniform(uint64_t *state)
{
    return (double)(ns_test_rand(state) >> 11) * 0x1.0p-53;
}

double ns_test_normal(uint64_t *state)
{
    double u1 = ns_test_uniform(state), u2 = ns_test_uniform(state);
    if (u1 < 1e-300)
        u1 = 1e-300;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

int ns_test_run(Suite *suite)
{
    ns_test_seed();
    SRunner *runner = srunner_create(suite);
    srunner_run_all(runner, CK_NORMAL);
    int failed = srunner_ntests_failed(runner);
    srunner_free(runner);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
