/* validate.c - input checks that must not allocate: a boolean mask of a
 * 60,000 x 784 training set would cost as much memory as the data. */
#include "internal.h"

/* The matrix to check: rows of d values, ldx apart. */
typedef struct {
    size_t d;
    const real *X;
    ptrdiff_t ldx;
} FN(nonfinite_args);

/* Values per 32-bit count: summing each compare into a 32-bit lane takes one
 * instruction per vector, a 64-bit sum three. */
#define NONFINITE_BLOCK ((size_t)1 << 20)

static inline __attribute__((always_inline)) size_t
FN(count_nonfinite_body)(const void *ctx, size_t begin, size_t end)
{
    const FN(nonfinite_args) *p = ctx;
    const size_t d = p->d;
    size_t bad = 0;
    for (size_t i = begin; i < end; i++) {
        const real *x = p->X + (ptrdiff_t)i * p->ldx;
        for (size_t j0 = 0; j0 < d; j0 += NONFINITE_BLOCK) {
            const size_t j1 = FUSENN_MIN(d, j0 + NONFINITE_BLOCK);
            uint32_t block_bad = 0;
            for (size_t j = j0; j < j1; j++)
                block_bad += !isfinite(x[j]);
            bad += block_bad;
        }
    }
    return bad;
}

static size_t FN(count_nonfinite_rows)(const void *ctx, size_t begin, size_t end)
{
    return FN(count_nonfinite_body)(ctx, begin, end);
}

/* Wider vectors where the CPU has them: predict checks every input, and at
 * batch 64 of 784 values the baseline (SSE2) loop took 8 us of 190. */
#if defined(__x86_64__) && defined(__GNUC__)
#define HAVE_X86_NONFINITE 1
static __attribute__((target("avx2"))) size_t
FN(count_nonfinite_rows_avx2)(const void *ctx, size_t begin, size_t end)
{
    return FN(count_nonfinite_body)(ctx, begin, end);
}

static __attribute__((target("avx512f,avx512bw,avx2"))) size_t
FN(count_nonfinite_rows_avx512)(const void *ctx, size_t begin, size_t end)
{
    return FN(count_nonfinite_body)(ctx, begin, end);
}
#endif

size_t FN(fusenn_count_nonfinite)(size_t n, size_t d, const real *X, ptrdiff_t ldx, int nthreads)
{
    const FN(nonfinite_args) args = {d, X, ldx};
    fusenn_range_fn rows = FN(count_nonfinite_rows);
#ifdef HAVE_X86_NONFINITE
    const int isa = fusenn_isa_level();
    if (isa == FUSENN_ISA_AVX512)
        rows = FN(count_nonfinite_rows_avx512);
    else if (isa == FUSENN_ISA_AVX2)
        rows = FN(count_nonfinite_rows_avx2);
#endif
    return fusenn_parallel_ranges(fusenn_threads_for(n * d, nthreads), n, rows, &args);
}
