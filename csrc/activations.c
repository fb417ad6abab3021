/*
 * activations.c - standalone activation forward and backward passes.
 *
 * Dtype-generic (see internal.h): compiled once per dtype. Rows are
 * independent, so the row loop is what runs in parallel.
 */
#include "internal.h"

void FN(activate_row_baseline)(fusenn_activation act, size_t d, const real *z, real *a)
{
    FN(activate_row)(act, d, z, a);
}

/* A = act(Z). Elementwise activations share FN(activate_row) with GEMM's fused
 * store, so standalone and fused layers give the same bits. Both row helpers
 * read z[j] before writing a[j], which makes A == Z (in place) safe. */
void FN(fusenn_activation_forward)(fusenn_activation act, size_t n, size_t d,
                                   const real *Z, ptrdiff_t ldz,
                                   real *A, ptrdiff_t lda, int nthreads)
{
    if (n == 0 || d == 0)
        return;
    int nt = fusenn_threads_for(n * d, nthreads);
    (void)nt; /* only read by the OpenMP pragma */
#pragma omp parallel for num_threads(nt) if(nt > 1) schedule(static)
    for (size_t i = 0; i < n; i++) {
        const real *z = Z + (ptrdiff_t)i * ldz;
        real *a = A + (ptrdiff_t)i * lda;
        if (act == FUSENN_ACT_SOFTMAX)
            FN(softmax_row)(d, z, a);
        else
            FN(activate_row)(act, d, z, a);
    }
}

/* dZ = dA * act'(Z) row by row (see FN(activate_backward_row)): through the
 * output A, or through Z for the activations fusenn_activation_needs_z names
 * (Z may be NULL otherwise). dZ may alias dA, A or Z. */
void FN(fusenn_activation_backward)(fusenn_activation act, size_t n, size_t d,
                                    const real *Z, ptrdiff_t ldz,
                                    const real *A, ptrdiff_t lda,
                                    const real *dA, ptrdiff_t ldda,
                                    real *dZ, ptrdiff_t lddz, int nthreads)
{
    if (n == 0 || d == 0)
        return;
    const int use_z = fusenn_act_needs_z(act); /* else Z may be NULL: no row pointers into it */
    int nt = fusenn_threads_for(n * d, nthreads);
    (void)nt; /* only read by the OpenMP pragma */
#pragma omp parallel for num_threads(nt) if(nt > 1) schedule(static)
    for (size_t i = 0; i < n; i++)
        FN(activate_backward_row)(act, d, use_z ? Z + (ptrdiff_t)i * ldz : NULL,
                                  A + (ptrdiff_t)i * lda, dA + (ptrdiff_t)i * ldda,
                                  dZ + (ptrdiff_t)i * lddz);
}
