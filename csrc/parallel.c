/* parallel.c - the one way kernels run a loop on several threads. */
#define _GNU_SOURCE /* sched_getcpu, sched_setaffinity */
#define FUSENN_NO_DTYPE
#include "internal.h"

#include <time.h>

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

/* A helper that gets no CPU (another process holds it, or another library's
 * threads busy-wait on it) keeps its caller waiting at the end of a region for
 * a scheduler time slice: milliseconds, where the work took microseconds. A
 * caller that waits longer than LATE_WAIT_NS, and longer than its own part
 * took, runs every parallel loop alone for a while, and then tries helpers
 * again; whichever thread does a piece, the bits are the same. The while is
 * ALONE_MIN_NS after a single late helper (the other vCPU was briefly taken),
 * and doubles, up to ALONE_MAX_NS, each time helpers are late again within a
 * while of the last one (the CPU stays taken). Measured on 2 vCPUs, 2 threads,
 * means of 2000 calls, before -> after: a 784-256-10 training step next to a
 * busy process 1.14-1.17 -> 0.94-0.95 ms (one step in ten had waited 4.6 ms;
 * one thread takes 0.89); alternating with NumPy's A @ W 1.14 -> 0.93 ms; a
 * loop of NumPy preprocessing and a 784-256-128-10 step 2.81 -> 2.87 ms. The
 * longest while, 200 ms: that loop 2.84 -> 2.93; 16 ms: a busy process 1.04. */
#define LATE_WAIT_NS 250000
#define ALONE_MIN_NS 4000000
#define ALONE_MAX_NS 50000000
static int64_t alone_until_ns; /* 0: no helper has been late */
static int64_t alone_ns = ALONE_MIN_NS;

int64_t fusenn_clock_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

int fusenn_team_size(int nt)
{
    if (nt <= 1)
        return nt;
    const int64_t until = __atomic_load_n(&alone_until_ns, __ATOMIC_RELAXED);
    return until != 0 && fusenn_clock_ns() < until ? 1 : nt;
}

/* Shared by all threads as a hint: a lost race only moves the while a little. */
void fusenn_region_waited(int64_t start, int64_t caller_done)
{
    const int64_t end = fusenn_clock_ns(), waited = end - caller_done;
    if (waited <= LATE_WAIT_NS || waited <= caller_done - start)
        return;
    const int64_t until = __atomic_load_n(&alone_until_ns, __ATOMIC_RELAXED);
    const int64_t span = __atomic_load_n(&alone_ns, __ATOMIC_RELAXED);
    const int64_t next = until != 0 && end - until < span ? FUSENN_MIN(2 * span, ALONE_MAX_NS)
                                                          : ALONE_MIN_NS;
    __atomic_store_n(&alone_ns, next, __ATOMIC_RELAXED);
    __atomic_store_n(&alone_until_ns, end + next, __ATOMIC_RELAXED);
}

size_t fusenn_parallel_ranges(int nt, size_t n, fusenn_range_fn fn, const void *ctx)
{
    if (n == 0)
        return 0;
    /* No OpenMP call at all on one thread: libgomp allocates and frees a team
     * for every parallel region, even one whose if() clause is false (~0.2 us). */
    if (nt <= 1 || n == 1 || (nt = fusenn_team_size(nt)) <= 1)
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
    const int64_t start = fusenn_clock_ns();
    int64_t caller_done = start;
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
        if (me == 0)
            caller_done = fusenn_clock_ns();
    }
    fusenn_region_waited(start, caller_done);
    return total;
}

size_t fusenn_parallel_units(int nt, size_t n, fusenn_unit_fn fn, const void *ctx)
{
    size_t total = 0;
    if (nt <= 1 || n <= 1 || (nt = fusenn_team_size(nt)) <= 1) { /* no OpenMP call at all */
        for (size_t u = 0; u < n; u++)
            total += fn(ctx, u, 0);
        return total;
    }
    const int caller_cpu = fusenn_current_cpu();
    const int64_t start = fusenn_clock_ns();
    int64_t caller_done = start;
#pragma omp parallel num_threads((int)FUSENN_MIN((size_t)nt, n)) reduction(+:total)
    {
        fusenn_leave_cpu(caller_cpu);
        const int me = fusenn_thread_num();
        /* no barrier after the loop: the caller's finishing time is its own */
#pragma omp for schedule(dynamic, 1) nowait
        for (size_t u = 0; u < n; u++)
            total += fn(ctx, u, me);
        if (me == 0)
            caller_done = fusenn_clock_ns();
    }
    fusenn_region_waited(start, caller_done);
    return total;
}
