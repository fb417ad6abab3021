/* parallel.c - the one way kernels run a loop on several threads. */
#define _GNU_SOURCE /* sched_getcpu, sched_setaffinity */
#define FUSENN_NO_DTYPE
#include "internal.h"

#ifdef __linux__
#include <sched.h>
#endif

/* Pieces per thread in fusenn_parallel_ranges. A helper thread may start late
 * when its CPU is busy (another program, or another library's threads
 * busy-waiting); the threads that are running then do its pieces, so the loop
 * ends about when the work is done, not the helper's share after it starts.
 * On time, each thread does its own contiguous share, as with one piece each:
 * handing the pieces out in turn (schedule(dynamic)) made a two-thread SGD
 * update of a 784x256 layer 3x slower (88 against 26 us), as each thread then
 * finds half its share in the other core's cache. */
#define PIECES_PER_THREAD 4

int fusenn_current_cpu(void)
{
#ifdef __linux__
    return sched_getcpu();
#else
    return -1;
#endif
}

/* Some kernels wake a sleeping thread on the CPU of the thread that wakes it
 * (this machine's VM kernel packs work onto busy vCPUs): a helper woken there
 * only takes turns with its caller, and stays there, as neither thread keeps
 * the CPU busy long enough for the load balancer to move one. Back-to-back
 * 2-thread calls ran 1.6-2.5x slower in that state. The helper moves itself:
 * without the caller's CPU in its mask the scheduler migrates it at once, and
 * with its own mask back it stays where it went. fusenn never pins a thread. */
void fusenn_leave_cpu(int caller_cpu)
{
#ifdef __linux__
    if (caller_cpu < 0 || fusenn_thread_num() == 0 || sched_getcpu() != caller_cpu)
        return;
    cpu_set_t allowed, others;
    if (sched_getaffinity(0, sizeof allowed, &allowed) != 0)
        return;
    others = allowed;
    CPU_CLR(caller_cpu, &others);
    if (CPU_COUNT(&others) == 0)
        return;
    if (sched_setaffinity(0, sizeof others, &others) == 0)
        sched_setaffinity(0, sizeof allowed, &allowed);
#else
    (void)caller_cpu;
#endif
}

size_t fusenn_parallel_ranges(int nt, size_t n, fusenn_range_fn fn, const void *ctx)
{
    if (n == 0)
        return 0;
    /* No OpenMP call at all on one thread: libgomp allocates and frees a team
     * for every parallel region, even one whose if() clause is false (~0.2 us). */
    if (nt <= 1 || n == 1)
        return fn(ctx, 0, n);
    const size_t parts = FUSENN_MIN((size_t)nt, n);
    const size_t pieces = FUSENN_MIN(parts * PIECES_PER_THREAD, n);
    size_t shares[parts];
    /* the next unclaimed piece of each thread's share; through a pointer, as GCC 12
     * with -fsanitize=address,undefined crashes outlining a region that names a VLA */
    size_t *next = shares;
    for (size_t t = 0; t < parts; t++)
        next[t] = fusenn_chunk_start(t, parts, pieces);
    const int caller_cpu = fusenn_current_cpu();
    size_t total = 0;
#pragma omp parallel num_threads((int)parts) reduction(+:total)
    {
        fusenn_leave_cpu(caller_cpu);
        const size_t me = (size_t)fusenn_thread_num();
        /* its own share first, then the others' (also those of threads the
         * runtime did not start) */
        for (size_t k = 0; k < parts; k++) {
            const size_t t = (me + k) % parts, end = fusenn_chunk_start(t + 1, parts, pieces);
            for (size_t p; (p = __atomic_fetch_add(&next[t], 1, __ATOMIC_RELAXED)) < end;)
                total += fn(ctx, fusenn_chunk_start(p, pieces, n),
                            fusenn_chunk_start(p + 1, pieces, n));
        }
    }
    return total;
}
