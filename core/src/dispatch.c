/* dispatch.c - CPU feature detection and the once-per-process choice of kernel table.
 *
 * Built with baseline flags: nothing here may use an instruction the oldest
 * supported CPU lacks. AVX2 is used only if CPUID reports AVX2, FMA, AVX and
 * OSXSAVE *and* XGETBV shows the OS saves the YMM state (XCR0 bits 1 and 2);
 * a CPU with AVX2 under an OS that does not save YMM registers would corrupt
 * them on every context switch. NS_SIMD=scalar forces the reference table,
 * NS_SIMD=avx2 asks for AVX2 (still only if supported); other values are
 * ignored. */
#include "kernels.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>

/* XGETBV with ECX = 0 (XCR0). Spelled as inline asm because the _xgetbv
 * intrinsic needs -mxsave, and this file keeps baseline flags. */
static uint64_t read_xcr0(void)
{
    uint32_t eax, edx;
    __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
    return ((uint64_t)edx << 32) | eax;
}

int ns__cpu_has_avx2_fma(void)
{
    unsigned int eax, ebx, ecx, edx;

    if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx))
        return 0;
    const unsigned int fma = 1u << 12, osxsave = 1u << 27, avx = 1u << 28;
    if ((ecx & (fma | osxsave | avx)) != (fma | osxsave | avx))
        return 0;
    /* The OS must enable SSE (bit 1) and AVX (bit 2) state saving. */
    if ((read_xcr0() & 0x6) != 0x6)
        return 0;
    if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx))
        return 0;
    return (ebx & (1u << 5)) != 0; /* AVX2 */
}
#else
int ns__cpu_has_avx2_fma(void)
{
    return 0;
}
#endif

static pthread_once_t choice_once = PTHREAD_ONCE_INIT;
static const ns_kernels_t *chosen;

static void choose(void)
{
    const char *want = getenv("NS_SIMD");
    const ns_kernels_t *table = &ns__kernels_scalar;

#if defined(__x86_64__) || defined(__i386__)
    /* Default and NS_SIMD=avx2 both mean: the best table this CPU supports. */
    if (ns__cpu_has_avx2_fma())
        table = &ns__kernels_avx2;
#endif
    if (want != NULL && strcmp(want, "scalar") == 0)
        table = &ns__kernels_scalar;
    chosen = table;
}

const ns_kernels_t *ns__kernels(void)
{
    pthread_once(&choice_once, choose);
    return chosen;
}
