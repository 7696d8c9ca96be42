/* harness.h - shared helpers of the Check unit tests: seeded random numbers
 * (printed, replayable with NS_TEST_SEED) and a main() per test program. */
#ifndef NS_TEST_HARNESS_H
#define NS_TEST_HARNESS_H

#include <check.h>
#include <stdint.h>
#include <string.h>

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

/* CHECK(cond, fmt, ...) : for loops over millions of samples. Check's
 * ck_assert_* reports every passing assertion to the runner (one write
 * each), which would dominate; this calls Check only on failure. */
#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond))                                                                               \
            ck_abort_msg(__VA_ARGS__);                                                             \
    } while (0)

/* The bits of a float32, and the float32 of some bits. */
static inline uint32_t bits_of(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof(u));
    return u;
}

static inline float float_of(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof(f));
    return f;
}

/* NS_TEST_MAIN(make_suite) : defines main() for a test program. */
#define NS_TEST_MAIN(make_suite)                                                                   \
    int main(void) { return ns_test_run(make_suite()); }

#endif
