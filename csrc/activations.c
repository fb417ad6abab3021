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

#if defined(FUSENN_DTYPE_F32)
/* float32 sigmoid and tanh, once per ISA (vmath.h) */
#define VM_ISA generic
#define VM_ATTR
#define VM_VBYTES 16
#include "vmath.h"
#if defined(__x86_64__) && defined(__GNUC__)
#define VM_ISA avx2
#define VM_ATTR __attribute__((target("avx2,fma")))
#define VM_VBYTES 32
#include "vmath.h"
#define VM_ISA avx512
#define VM_ATTR __attribute__((target("avx512f,avx2,fma")))
#define VM_VBYTES 64
#include "vmath.h"
#endif

void FN(activate_row_vector)(fusenn_activation act, size_t d, const float *z, float *a)
{
    const int is_tanh = act == FUSENN_ACT_TANH;
#if defined(__x86_64__) && defined(__GNUC__)
    switch (fusenn_isa_level()) {
    case FUSENN_ISA_AVX512:
        (is_tanh ? tanh_row_avx512 : sigmoid_row_avx512)(d, z, a);
        return;
    case FUSENN_ISA_AVX2:
        (is_tanh ? tanh_row_avx2 : sigmoid_row_avx2)(d, z, a);
        return;
    default:
        break;
    }
#endif
    (is_tanh ? tanh_row_generic : sigmoid_row_generic)(d, z, a);
}
#endif

/* The rows of one activation call and their arguments. */
typedef struct {
    fusenn_activation act;
    size_t d;
    const real *Z, *A, *dA;
    ptrdiff_t ldz, lda, ldda, ldout;
    real *out; /* A of the forward, dZ of the backward */
} FN(activation_rows);

static size_t FN(forward_rows)(const void *ctx, size_t begin, size_t end)
{
    const FN(activation_rows) *r = ctx;
    const fusenn_activation act = r->act;
    const size_t d = r->d;
    const real *Z = r->Z;
    real *A = r->out;
    const ptrdiff_t ldz = r->ldz, lda = r->ldout;
    for (size_t i = begin; i < end; i++) {
        const real *z = Z + (ptrdiff_t)i * ldz;
        real *a = A + (ptrdiff_t)i * lda;
        if (act == FUSENN_ACT_SOFTMAX)
            FN(softmax_row)(d, z, a);
        else
            FN(activate_row)(act, d, z, a);
    }
    return 0;
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
    const FN(activation_rows) rows = {.act = act, .d = d, .Z = Z, .ldz = ldz,
                                      .out = A, .ldout = lda};
    fusenn_parallel_ranges(fusenn_threads_for(n * d, nthreads), n, FN(forward_rows), &rows);
}

static size_t FN(backward_rows)(const void *ctx, size_t begin, size_t end)
{
    const FN(activation_rows) *r = ctx;
    const fusenn_activation act = r->act;
    const size_t d = r->d;
    const real *Z = r->Z, *A = r->A, *dA = r->dA;
    real *dZ = r->out;
    const ptrdiff_t ldz = r->ldz, lda = r->lda, ldda = r->ldda, lddz = r->ldout;
    const int use_z = fusenn_act_needs_z(act); /* else Z may be NULL: no row pointers into it */
    for (size_t i = begin; i < end; i++)
        FN(activate_backward_row)(act, d, use_z ? Z + (ptrdiff_t)i * ldz : NULL,
                                  A + (ptrdiff_t)i * lda, dA + (ptrdiff_t)i * ldda,
                                  dZ + (ptrdiff_t)i * lddz);
    return 0;
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
    const FN(activation_rows) rows = {.act = act, .d = d, .Z = Z, .ldz = ldz, .A = A,
                                      .lda = lda, .dA = dA, .ldda = ldda,
                                      .out = dZ, .ldout = lddz};
    fusenn_parallel_ranges(fusenn_threads_for(n * d, nthreads), n, FN(backward_rows), &rows);
}
