/* malloc_count.c - an LD_PRELOAD counter of heap allocations for
 * bench_profile.py: every malloc, calloc, realloc, posix_memalign and
 * aligned_alloc call of the process, written at exit to the file named by
 * NS_MALLOC_COUNT_OUT ("allocations=N"). glibc's internal entry points do
 * the work, so nothing is allocated or changed otherwise. */
#define _GNU_SOURCE
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

extern void *__libc_malloc(size_t n);
extern void *__libc_calloc(size_t n, size_t size);
extern void *__libc_realloc(void *p, size_t n);
extern void *__libc_memalign(size_t align, size_t n);

static atomic_ulong calls;

void *malloc(size_t n)
{
    atomic_fetch_add_explicit(&calls, 1, memory_order_relaxed);
    return __libc_malloc(n);
}

void *calloc(size_t n, size_t size)
{
    atomic_fetch_add_explicit(&calls, 1, memory_order_relaxed);
    return __libc_calloc(n, size);
}

void *realloc(void *p, size_t n)
{
    atomic_fetch_add_explicit(&calls, 1, memory_order_relaxed);
    return __libc_realloc(p, n);
}

int posix_memalign(void **p, size_t align, size_t n)
{
    atomic_fetch_add_explicit(&calls, 1, memory_order_relaxed);
    *p = __libc_memalign(align, n);
    return *p != NULL || n == 0 ? 0 : 12; /* ENOMEM */
}

void *aligned_alloc(size_t align, size_t n)
{
    atomic_fetch_add_explicit(&calls, 1, memory_order_relaxed);
    return __libc_memalign(align, n);
}

__attribute__((destructor)) static void report(void)
{
    const char *path = getenv("NS_MALLOC_COUNT_OUT");
    FILE *f = path != NULL ? fopen(path, "w") : NULL;
    if (f == NULL)
        return;
    fprintf(f, "allocations=%lu\n", (unsigned long)atomic_load(&calls));
    fclose(f);
}
