/* harness.h - shared helpers of the Check unit tests: seeded random numbers
 * (printed, replayable with NS_TEST_SEED) and a main() per test program. */
#ifndef NS_TEST_HARNESS_H
#define NS_TEST_HARNESS_H

#include <check.h>
#include <stdint.h>

/* The seed of this run: NS_TEST_SEED from the environment, else time-based.
 * Printed once, so a failure can be replayed. */
uint64_t ns_test_seed(void);

/* xorshift64* generator; state must not be 0. */
uint64_t ns_test_rand(uint64_t *state);
/* Uniform in [0, 1). */
double ns_test_uniform(uint64_t *state);
/* Standard normal (Box-Muller). */
double ns_test_normal(uint64_t *state);

/* Runs 'suite' with Check's runner; returns the process exit status. */
int ns_test_run(Suite *suite);

/* NS_TEST_MAIN(make_suite) : defines main() for a test program. */
#define NS_TEST_MAIN(make_suite)                                                                   \
    int main(void) { return ns_test_run(make_suite()); }

#endif
