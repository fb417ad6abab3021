/* parallel.c - the one way kernels run a loop on several threads. */
#define FUSENN_NO_DTYPE
#include "internal.h"

size_t fusenn_parallel_ranges(int nt, size_t n, fusenn_range_fn fn, const void *ctx)
{
    if (n == 0)
        return 0;
    /* No OpenMP call at all on one thread: libgomp allocates and frees a team
     * for every parallel region, even one whose if() clause is false (~0.2 us). */
    if (nt <= 1 || n == 1)
        return fn(ctx, 0, n);
    const size_t parts = FUSENN_MIN((size_t)nt, n);
    size_t total = 0;
#pragma omp parallel for num_threads((int)parts) schedule(static) reduction(+:total)
    for (size_t t = 0; t < parts; t++)
        total += fn(ctx, fusenn_chunk_start(t, parts, n), fusenn_chunk_start(t + 1, parts, n));
    return total;
}
