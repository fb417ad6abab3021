/*
 * internal.h - shared by fusenn's kernel sources; not installed.
 *
 * Dtype-generic sources: every kernel file that includes this header is
 * compiled twice, once with -DFUSENN_DTYPE_F32 and once with -DFUSENN_DTYPE_F64
 * (see CMakeLists.txt). Inside, `real` is the element type and FN(name) appends
 * the dtype suffix, so `FN(fusenn_mse)` defines fusenn_mse_f32 or _f64.
 * <tgmath.h> makes exp, log, tanh, sqrt... resolve to the right precision.
 */
#ifndef FUSENN_INTERNAL_H
#define FUSENN_INTERNAL_H

#include "fusenn.h"

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <tgmath.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(FUSENN_DTYPE_F32)
typedef float real;
#define FN(name) name##_f32
#elif defined(FUSENN_DTYPE_F64)
typedef double real;
#define FN(name) name##_f64
#elif !defined(FUSENN_NO_DTYPE)
#error "compile kernel sources with -DFUSENN_DTYPE_F32 or -DFUSENN_DTYPE_F64"
#endif

/* GEMM micro-kernel ISA levels (cpu.c picks one at run time). */
enum { FUSENN_ISA_GENERIC = 0, FUSENN_ISA_AVX2 = 1, FUSENN_ISA_AVX512 = 2 };
int fusenn_isa_level(void);

/* Counted allocation (memory.c): 64-byte aligned; free with fusenn_aligned_free. */
void *fusenn_aligned_alloc(size_t bytes);
void fusenn_aligned_free(void *p);

#define FUSENN_MIN(a, b) ((a) < (b) ? (a) : (b))
#define FUSENN_MAX(a, b) ((a) > (b) ? (a) : (b))

/* Below this many elements of work a kernel runs on one thread: starting a
 * parallel region costs a few microseconds, which small layers cannot repay. */
#define FUSENN_PARALLEL_MIN_WORK 32768

/* Threads to use for `work` elements: 1 when small, else the caller's count.
 * Use as: int nt = fusenn_threads_for(work, nthreads);
 *         #pragma omp parallel for num_threads(nt) if(nt > 1) schedule(static) */
static inline int fusenn_threads_for(size_t work, int nthreads)
{
    if (nthreads < 1 || work < FUSENN_PARALLEL_MIN_WORK)
        return 1;
    return nthreads;
}

/* Deterministic reductions: rows are split into at most this many chunks,
 * whose boundaries depend only on the row count; each chunk's partial sum is
 * computed by one thread, and the partials are added in chunk order. The
 * result is therefore the same bits for any thread count. */
#define FUSENN_SUM_CHUNKS 64

static inline size_t fusenn_num_chunks(size_t n)
{
    return n < FUSENN_SUM_CHUNKS ? n : FUSENN_SUM_CHUNKS;
}

/* First row of chunk c out of nchunks over n rows (chunk c is [start(c), start(c+1))). */
static inline size_t fusenn_chunk_start(size_t c, size_t nchunks, size_t n)
{
    return (size_t)(((uint64_t)c * n) / nchunks);
}

/* splitmix64 (Steele et al. 2014): its increment, and the finalizer that turns
 * a 64-bit counter into well-mixed bits. */
#define FUSENN_GOLDEN_GAMMA 0x9e3779b97f4a7c15ULL

static inline uint64_t fusenn_mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* Counter-based hash: the (index + 1)-th splitmix64 output from state `seed`,
 * mix64(seed + (index + 1) * GOLDEN) mod 2^64. Dropout masks are this function
 * of (seed, element index), so any thread can compute any element's bit. */
static inline uint64_t fusenn_hash64(uint64_t seed, uint64_t index)
{
    return fusenn_mix64(seed + (index + 1) * FUSENN_GOLDEN_GAMMA);
}

#ifndef FUSENN_NO_DTYPE
/* Elementwise activations over one row: a[j] = act(z[j]) for j < d.
 * Softmax is not elementwise and is handled by its callers.
 * Shared by the activation kernels and GEMM's fused store (dense forward). */
static inline void FN(activate_row)(fusenn_activation act, size_t d,
                                    const real *z, real *a)
{
    size_t j;
    switch (act) {
    case FUSENN_ACT_SIGMOID:
        /* sigmoid via exp(-|z|), which never overflows */
        for (j = 0; j < d; j++) {
            real e = exp(-fabs(z[j]));
            real s = (real)1 / ((real)1 + e);
            a[j] = z[j] >= 0 ? s : e * s;
        }
        break;
    case FUSENN_ACT_TANH:
        for (j = 0; j < d; j++)
            a[j] = tanh(z[j]);
        break;
    case FUSENN_ACT_RELU:
        for (j = 0; j < d; j++)
            a[j] = z[j] > 0 ? z[j] : (real)0;
        break;
    case FUSENN_ACT_LEAKY_RELU:
        for (j = 0; j < d; j++)
            a[j] = z[j] > 0 ? z[j] : (real)FUSENN_LEAKY_RELU_SLOPE * z[j];
        break;
    case FUSENN_ACT_IDENTITY:
    case FUSENN_ACT_SOFTMAX:
    default:
        if (a != z)
            memmove(a, z, d * sizeof(real));
        break;
    }
}

/* Activation derivatives over one whole row, through the output a = act(z):
 * dz[j] = da[j] * act'(z[j]); for softmax the Jacobian product
 * dz_j = a_j (da_j - sum_i da_i a_i). Each dz[j] is written after a[j] and
 * da[j] are read (softmax sums the row first), so dz may alias da or a.
 * Shared by the activation kernel and the dense layer's fused dZ/db pass. */
static inline void FN(activate_backward_row)(fusenn_activation act, size_t d, const real *a,
                                             const real *da, real *dz)
{
    size_t j;
    switch (act) {
    case FUSENN_ACT_SIGMOID: /* s' = s (1 - s) */
        for (j = 0; j < d; j++)
            dz[j] = da[j] * a[j] * ((real)1 - a[j]);
        break;
    case FUSENN_ACT_TANH: /* tanh' = 1 - tanh^2 */
        for (j = 0; j < d; j++)
            dz[j] = da[j] * ((real)1 - a[j] * a[j]);
        break;
    case FUSENN_ACT_RELU: /* a > 0 exactly where z > 0 */
        for (j = 0; j < d; j++)
            dz[j] = a[j] > 0 ? da[j] : (real)0;
        break;
    case FUSENN_ACT_LEAKY_RELU: /* the slope is positive, so a keeps z's sign */
        for (j = 0; j < d; j++)
            dz[j] = a[j] > 0 ? da[j] : (real)FUSENN_LEAKY_RELU_SLOPE * da[j];
        break;
    case FUSENN_ACT_SOFTMAX: {
        real s = 0;
        for (j = 0; j < d; j++)
            s += da[j] * a[j];
        for (j = 0; j < d; j++)
            dz[j] = a[j] * (da[j] - s);
        break;
    }
    case FUSENN_ACT_IDENTITY:
    default:
        if (dz != da)
            memmove(dz, da, d * sizeof(real));
        break;
    }
}

/* Row-wise softmax of one row, max-subtracted so exp never overflows. */
static inline void FN(softmax_row)(size_t d, const real *z, real *a)
{
    size_t j;
    real mx = z[0], sum = 0;
    for (j = 1; j < d; j++)
        mx = z[j] > mx ? z[j] : mx;
    for (j = 0; j < d; j++) {
        a[j] = exp(z[j] - mx);
        sum += a[j];
    }
    real inv = (real)1 / sum;
    for (j = 0; j < d; j++)
        a[j] *= inv;
}

/* GEMM with a fused epilogue, used by the dense layer (gemm.c):
 * C = act(alpha A B + beta C + bias), bias (length n, may be NULL) broadcast
 * over rows, act elementwise (softmax is not allowed here). Same strides
 * convention as fusenn_gemm_*. */
int FN(fusenn_gemm_fused)(size_t m, size_t n, size_t k, real alpha,
                          const real *A, ptrdiff_t rs_a, ptrdiff_t cs_a,
                          const real *B, ptrdiff_t rs_b, ptrdiff_t cs_b, real beta,
                          real *C, ptrdiff_t rs_c, ptrdiff_t cs_c,
                          const real *bias, fusenn_activation act, int nthreads);
#endif /* FUSENN_NO_DTYPE */

#endif /* FUSENN_INTERNAL_H */
