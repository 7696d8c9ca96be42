/* version.c - what was built and what this process runs: version, kernel set, processors. */
#include <normstat/core.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "kernels.h"

const char *ns_core_version(void)
{
    return NS_VERSION_STRING;
}

const char *ns_core_kernel(void)
{
    return ns__kernels()->name;
}

int ns_core_max_threads(void)
{
#ifdef _OPENMP
    int n = omp_get_num_procs();
    return n > 0 ? n : 1;
#else
    return 1;
#endif
}
