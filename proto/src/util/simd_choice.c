/* simd_choice.c - whether libnsproto's AVX2 paths (f32_format_avx2.c,
 * f32_parse_avx2.c) run: where libnscore chose its AVX2 kernels, so the CPU
 * and the OS support AVX2 and NS_SIMD=scalar is not set. One decision for
 * both libraries, taken once. */
#include <pthread.h>
#include <string.h>

#include <normstat/core.h>

#include "f32.h"

static pthread_once_t once = PTHREAD_ONCE_INIT;
static int avx2;

static void choose(void)
{
    avx2 = strcmp(ns_core_kernel(), "avx2") == 0;
}

int ns__proto_avx2(void)
{
    pthread_once(&once, choose);
    return avx2;
}
