/* threads.c - fusenn's thread-count setting, read by every kernel call from
 * Python (src/fusenn/_threads.py documents the rules). Kept in C so that
 * reading it costs a few nanoseconds: it is read once per call, and a small
 * call (32^3 GEMM) takes well under a microsecond.
 *
 * Written and read from Python with the GIL held, so plain ints suffice; the
 * override is per OS thread, which is per Python thread. */
#define FUSENN_NO_DTYPE
#include "internal.h"

#include <limits.h>

static int global_threads;                /* set_num_threads(n); 0: not set */
static _Thread_local int override_threads; /* threads(n) in this thread; 0: none */
static int forked_child;                  /* in a child forked from the importer */
static int default_cap = INT_MAX;         /* a cgroup CPU quota, if any */
static int default_without_openmp = 1;    /* the default without OpenMP: the CPUs we may use */

int fusenn_num_threads(void)
{
    if (forked_child)
        return 1;
    if (override_threads > 0)
        return override_threads;
    if (global_threads > 0)
        return global_threads;
    int n = fusenn_omp_max_threads();
    if (n <= 0)
        n = default_without_openmp;
    return n < default_cap ? n : default_cap;
}

void fusenn_set_global_threads(int n) { global_threads = n > 0 ? n : 0; }

int fusenn_swap_thread_override(int n)
{
    const int previous = override_threads;
    override_threads = n > 0 ? n : 0;
    return previous;
}

void fusenn_mark_forked_child(void) { forked_child = 1; }

void fusenn_configure_default_threads(int cap, int without_openmp)
{
    default_cap = cap > 0 ? cap : INT_MAX;
    default_without_openmp = without_openmp > 0 ? without_openmp : 1;
}
