/* memory.c - every heap allocation fusenn's C code makes goes through here, so
 * fusenn_allocation_count() can prove that training allocates nothing per step. */
#define FUSENN_NO_DTYPE
#include "internal.h"

#include <stdlib.h>

static size_t allocations; /* updated atomically: kernels run on many threads */

void *fusenn_aligned_alloc(size_t bytes)
{
    size_t rounded = (bytes + 63) / 64 * 64;
    void *p = aligned_alloc(64, rounded ? rounded : 64);
    if (p)
        __atomic_add_fetch(&allocations, 1, __ATOMIC_RELAXED);
    return p;
}

void fusenn_aligned_free(void *p)
{
    free(p);
}

size_t fusenn_allocation_count(void)
{
    return __atomic_load_n(&allocations, __ATOMIC_RELAXED);
}
