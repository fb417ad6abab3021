/* validate.c - input checks that must not allocate: a boolean mask of a
 * 60,000 x 784 training set would cost as much memory as the data. */
#include "internal.h"

/* The matrix to check: rows of d values, ldx apart. */
typedef struct {
    size_t d;
    const real *X;
    ptrdiff_t ldx;
} FN(nonfinite_args);

static size_t FN(count_nonfinite_rows)(const void *ctx, size_t begin, size_t end)
{
    const FN(nonfinite_args) *p = ctx;
    const size_t d = p->d;
    const real *X = p->X;
    const ptrdiff_t ldx = p->ldx;
    size_t bad = 0;
    for (size_t i = begin; i < end; i++) {
        const real *x = X + (ptrdiff_t)i * ldx;
        size_t row_bad = 0;
        for (size_t j = 0; j < d; j++)
            row_bad += !isfinite(x[j]);
        bad += row_bad;
    }
    return bad;
}

size_t FN(fusenn_count_nonfinite)(size_t n, size_t d, const real *X, ptrdiff_t ldx, int nthreads)
{
    const FN(nonfinite_args) args = {d, X, ldx};
    return fusenn_parallel_ranges(fusenn_threads_for(n * d, nthreads), n,
                                  FN(count_nonfinite_rows), &args);
}
