/* validate.c - input checks that must not allocate: a boolean mask of a
 * 60,000 x 784 training set would cost as much memory as the data. */
#include "internal.h"

size_t FN(fusenn_count_nonfinite)(size_t n, size_t d, const real *X, ptrdiff_t ldx, int nthreads)
{
    size_t bad = 0;
    int nt = fusenn_threads_for(n * d, nthreads);
    (void)nt; /* only read by the OpenMP pragma */
#pragma omp parallel for num_threads(nt) if(nt > 1) schedule(static) reduction(+:bad)
    for (size_t i = 0; i < n; i++) {
        const real *x = X + (ptrdiff_t)i * ldx;
        size_t row_bad = 0;
        for (size_t j = 0; j < d; j++)
            row_bad += !isfinite(x[j]);
        bad += row_bad;
    }
    return bad;
}
