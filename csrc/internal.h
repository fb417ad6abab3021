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

#include <float.h>
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
#define REAL_MIN FLT_MIN /* the smallest normal number */
#elif defined(FUSENN_DTYPE_F64)
typedef double real;
#define FN(name) name##_f64
#define REAL_MIN DBL_MIN
#elif !defined(FUSENN_NO_DTYPE)
#error "compile kernel sources with -DFUSENN_DTYPE_F32 or -DFUSENN_DTYPE_F64"
#endif

/* GEMM micro-kernel ISA levels (cpu.c picks one at run time). */
enum { FUSENN_ISA_GENERIC = 0, FUSENN_ISA_AVX2 = 1, FUSENN_ISA_AVX512 = 2 };
int fusenn_isa_level(void);

/* Counted allocation (memory.c): 64-byte aligned; free with fusenn_aligned_free. */
void *fusenn_aligned_alloc(size_t bytes);
void fusenn_aligned_free(void *p);

/* This thread's number in the innermost parallel region (0 without OpenMP). */
static inline int fusenn_thread_num(void)
{
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

#define FUSENN_MIN(a, b) ((a) < (b) ? (a) : (b))
#define FUSENN_MAX(a, b) ((a) > (b) ? (a) : (b))

/* Below this many elements of work a kernel runs on one thread: starting a
 * parallel region costs a few microseconds, which small layers cannot repay. */
#define FUSENN_PARALLEL_MIN_WORK 32768

/* Threads to use for `work` elements: 1 when small, else the caller's count.
 * Use as: int nt = fusenn_threads_for(work, nthreads);
 *         fusenn_parallel_ranges(nt, n, fn, &ctx); */
static inline int fusenn_threads_for(size_t work, int nthreads)
{
    if (nthreads < 1 || work < FUSENN_PARALLEL_MIN_WORK)
        return 1;
    return nthreads;
}

/* The CPU the calling thread runs on, or -1 where unknown. */
int fusenn_current_cpu(void);

/* Called by every thread as a parallel region starts: a helper thread (not
 * thread 0) that runs on caller_cpu, the CPU of the thread that started the
 * region (fusenn_current_cpu), moves to another CPU it may use (parallel.c). */
void fusenn_leave_cpu(int caller_cpu);

/* The body of a parallel loop: handles iterations [begin, end) with the
 * arguments in *ctx, and returns a count (e.g. of non-finite values) or 0. */
typedef size_t (*fusenn_range_fn)(const void *ctx, size_t begin, size_t end);

/* Runs fn over iterations [0, n) on up to nt threads (parallel.c) and returns
 * the sum of fn's results. The iterations are cut into contiguous pieces, a
 * few per thread; each thread does its own share of them, then whatever is
 * left of the others', so any thread may do any piece. With nt <= 1 it is the
 * plain call fn(ctx, 0, n): no OpenMP runtime call. Each range's results must
 * not depend on the cut (the fixed chunks below give reductions that). */
size_t fusenn_parallel_ranges(int nt, size_t n, fusenn_range_fn fn, const void *ctx);

/* Runs fn(ctx, unit, thread) for units [0, n) on up to nt threads, handed out
 * one at a time as threads come free (parallel.c), for units too large or too
 * uneven for fixed pieces; thread (0 .. nt - 1) indexes per-thread scratch.
 * Returns the sum of fn's results; nt <= 1: a plain loop, no OpenMP call. */
typedef size_t (*fusenn_unit_fn)(const void *ctx, size_t unit, int thread);
size_t fusenn_parallel_units(int nt, size_t n, fusenn_unit_fn fn, const void *ctx);

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

/* Activations whose derivative is not a function of their output: their
 * backward pass reads the pre-activation z (fusenn_activation_needs_z). */
static inline int fusenn_act_needs_z(fusenn_activation act)
{
    return act == FUSENN_ACT_GELU || act == FUSENN_ACT_GELU_TANH || act == FUSENN_ACT_SWISH;
}

/* Constants of the gelu family: 1/sqrt(2), 1/sqrt(2 pi), sqrt(2/pi) and the
 * cubic coefficient of the tanh approximation. */
#define FUSENN_SQRT1_2 0.70710678118654752440
#define FUSENN_INV_SQRT_2PI 0.39894228040143267794
#define FUSENN_SQRT_2_OVER_PI 0.79788456080286535588
#define FUSENN_GELU_TANH_CUBIC 0.044715

#ifndef FUSENN_NO_DTYPE
/* sigmoid(z) and 1 - sigmoid(z) = sigmoid(-z) from e = exp(-|z|), which never
 * overflows: for z >= 0 they are 1 / (1 + e) and e / (1 + e), for z < 0 the
 * other way round. Neither is formed by a subtraction, so both are accurate. */
static inline real FN(sigmoid_pair)(real z, real *one_minus)
{
    real e = exp(-fabs(z));
    real s = (real)1 / ((real)1 + e);
    *one_minus = z >= 0 ? e * s : s;
    return z >= 0 ? s : e * s;
}

/* 2 u of gelu_tanh: 2 sqrt(2/pi) (z + 0.044715 z^3). */
static inline real FN(gelu_tanh_2u)(real z)
{
    return 2 * (real)FUSENN_SQRT_2_OVER_PI * (z + (real)FUSENN_GELU_TANH_CUBIC * (z * z * z));
}

#if defined(FUSENN_DTYPE_F32)
/* float32 sigmoid or tanh of a row in this CPU's (or FUSENN_ISA's) vectors,
 * a may be z (activations.c, from vmath.h) */
void FN(activate_row_vector)(fusenn_activation act, size_t d, const float *z, float *a);
#endif

/* Elementwise activations over one row: a[j] = act(z[j]) for j < d.
 * Softmax is not elementwise and is handled by its callers.
 * Shared by the activation kernels, GEMM's fused store (dense forward), the
 * convolutions and the recurrent gates, so that all give the same bits. */
static inline void FN(activate_row)(fusenn_activation act, size_t d,
                                    const real *z, real *a)
{
    size_t j;
    real unused;
#if defined(FUSENN_DTYPE_F32)
    if (act == FUSENN_ACT_SIGMOID || act == FUSENN_ACT_TANH) {
        FN(activate_row_vector)(act, d, z, a);
        return;
    }
#endif
    switch (act) {
    case FUSENN_ACT_SIGMOID:
        for (j = 0; j < d; j++)
            a[j] = FN(sigmoid_pair)(z[j], &unused);
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
    case FUSENN_ACT_GELU:
        /* z Phi(z), Phi(z) = (1 + erf(z / sqrt 2)) / 2 = erfc(-z / sqrt 2) / 2:
         * erfc has no cancellation where erf(z / sqrt 2) is near -1 */
        for (j = 0; j < d; j++)
            a[j] = (real)0.5 * z[j] * erfc(-z[j] * (real)FUSENN_SQRT1_2);
        break;
    case FUSENN_ACT_GELU_TANH:
        /* (z / 2) (1 + tanh(u)) = z sigmoid(2 u), u = sqrt(2/pi) (z + 0.044715 z^3):
         * the sigmoid form has no cancellation where tanh(u) is near -1 */
        for (j = 0; j < d; j++)
            a[j] = z[j] * FN(sigmoid_pair)(FN(gelu_tanh_2u)(z[j]), &unused);
        break;
    case FUSENN_ACT_ELU: /* expm1 keeps e^z - 1 accurate near 0 */
        for (j = 0; j < d; j++)
            a[j] = z[j] > 0 ? z[j] : (real)FUSENN_ELU_ALPHA * expm1(z[j]);
        break;
    case FUSENN_ACT_SOFTPLUS: /* log(1 + e^z) = max(z, 0) + log1p(e^-|z|), never overflows */
        for (j = 0; j < d; j++)
            a[j] = (z[j] > 0 ? z[j] : (real)0) + log1p(exp(-fabs(z[j])));
        break;
    case FUSENN_ACT_SWISH: /* z sigmoid(z) */
        for (j = 0; j < d; j++)
            a[j] = z[j] * FN(sigmoid_pair)(z[j], &unused);
        break;
    case FUSENN_ACT_IDENTITY:
    case FUSENN_ACT_SOFTMAX:
    default:
        if (a != z)
            memmove(a, z, d * sizeof(real));
        break;
    }
}

/* Activation derivatives over one whole row: dz[j] = da[j] * act'(z[j]),
 * through the output a = act(z) where that is possible, else (gelu, gelu_tanh,
 * swish; z may be NULL for every other activation) through z. For softmax the
 * Jacobian product dz_j = a_j (da_j - sum_i da_i a_i). Each dz[j] is written
 * after z[j], a[j] and da[j] are read (softmax sums the row first), so dz may
 * alias da, a or z. Shared by the activation kernel and the dense layer's
 * fused dZ/db pass. */
static inline void FN(activate_backward_row)(fusenn_activation act, size_t d, const real *z,
                                             const real *a, const real *da, real *dz)
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
    /* The rectifiers load da[j] unconditionally: a conditional load cannot be
     * vectorised, and the branch on random signs mispredicts half the time
     * (it made the dense backward's dZ pass 3 ns per element). */
    case FUSENN_ACT_RELU: /* a > 0 exactly where z > 0 */
        for (j = 0; j < d; j++) {
            const real g = da[j];
            dz[j] = a[j] > 0 ? g : (real)0;
        }
        break;
    case FUSENN_ACT_LEAKY_RELU: /* the slope is positive, so a keeps z's sign */
        for (j = 0; j < d; j++) {
            const real g = da[j];
            dz[j] = a[j] > 0 ? g : (real)FUSENN_LEAKY_RELU_SLOPE * g;
        }
        break;
    case FUSENN_ACT_SOFTMAX: {
        real s = 0;
        for (j = 0; j < d; j++)
            s += da[j] * a[j];
        for (j = 0; j < d; j++)
            dz[j] = a[j] * (da[j] - s);
        break;
    }
    case FUSENN_ACT_GELU: /* Phi(z) + z phi(z), phi(z) = e^(-z^2/2) / sqrt(2 pi) */
        for (j = 0; j < d; j++) {
            real cdf = (real)0.5 * erfc(-z[j] * (real)FUSENN_SQRT1_2);
            real pdf = (real)FUSENN_INV_SQRT_2PI * exp((real)-0.5 * z[j] * z[j]);
            dz[j] = da[j] * (cdf + z[j] * pdf);
        }
        break;
    case FUSENN_ACT_GELU_TANH:
        /* d/dz z s(2u) = s + 2 z s (1 - s) u', s = sigmoid(2 u), u' = c (1 + 3 k z^2).
         * s (1 - s) is 0 wherever u' could overflow: the term is then 0 (not 0 inf) */
        for (j = 0; j < d; j++) {
            real one_minus;
            real s = FN(sigmoid_pair)(FN(gelu_tanh_2u)(z[j]), &one_minus);
            real sp = s * one_minus;
            real du = (real)FUSENN_SQRT_2_OVER_PI *
                      ((real)1 + 3 * (real)FUSENN_GELU_TANH_CUBIC * (z[j] * z[j]));
            dz[j] = da[j] * (s + (sp != 0 ? 2 * z[j] * sp * du : (real)0));
        }
        break;
    case FUSENN_ACT_ELU: /* alpha e^z = a + alpha where z <= 0 */
        for (j = 0; j < d; j++) {
            const real g = da[j];
            dz[j] = a[j] > 0 ? g : g * (a[j] + (real)FUSENN_ELU_ALPHA);
        }
        break;
    case FUSENN_ACT_SOFTPLUS: /* sigmoid(z) = 1 - e^-a */
        for (j = 0; j < d; j++)
            dz[j] = da[j] * -expm1(-a[j]);
        break;
    case FUSENN_ACT_SWISH: /* s + z s (1 - s) = s (1 + z (1 - s)) */
        for (j = 0; j < d; j++) {
            real one_minus;
            real s = FN(sigmoid_pair)(z[j], &one_minus);
            dz[j] = da[j] * (s * ((real)1 + z[j] * one_minus));
        }
        break;
    case FUSENN_ACT_IDENTITY:
    default:
        if (dz != da)
            memmove(dz, da, d * sizeof(real));
        break;
    }
}

/* FN(activate_row) compiled once, in activations.c, for the baseline ISA.
 * GEMM's micro-kernels are compiled for AVX2/AVX-512 targets where the
 * compiler contracts a * b + c into FMA; calling this instead of inlining
 * activate_row keeps the fused store's bits those of the standalone kernel. */
void FN(activate_row_baseline)(fusenn_activation act, size_t d, const real *z, real *a);

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

/* A k x n operand B packed once for many products A B (gemm.c): the recurrent
 * layers' h U at every time step. fusenn_gemm_packed_for picks the tile for
 * products of about m rows and says how many elements the packed form takes;
 * fusenn_gemm_with_packed_b then computes C = alpha A B + beta C (+ bias) for
 * any m rows of A on the calling thread alone, C's columns contiguous. The
 * bits are those of fusenn_gemm on the same operands, A's rows contiguous
 * (a transposed A deeper than one kc block sums in blocks of its own there:
 * gemm.c's kc_for). */
typedef struct {
    const void *cfg; /* the tile (gemm.c's configuration) */
    size_t n, k;
    size_t len;      /* elements of the packed form */
} FN(gemm_packed);

FN(gemm_packed) FN(fusenn_gemm_packed_for)(size_t m, size_t n, size_t k);
size_t FN(fusenn_gemm_packed_len_upto)(size_t m, size_t n, size_t k);
void FN(fusenn_gemm_pack_b)(const FN(gemm_packed) *p, const real *B, ptrdiff_t rs_b,
                            ptrdiff_t cs_b, real *Bp);
int FN(fusenn_gemm_with_packed_b)(const FN(gemm_packed) *p, size_t m, real alpha,
                                  const real *A, ptrdiff_t rs_a, ptrdiff_t cs_a,
                                  const real *Bp, real beta, real *C, ptrdiff_t rs_c,
                                  const real *bias);

/* An implicit convolution's product (gemm.c): C = act(A B + bias) on the
 * calling thread, B packed as above, and A's m rows found by pointers rather
 * than stored: each row is k / run runs of `run` contiguous values (a
 * convolution's taps), run t of row i of tile i / mr at
 * rows[((i / mr) k / run + t) mr + i % mr], mr = fusenn_gemm_packed_mr(p),
 * with p from fusenn_gemm_packed_for_rows.
 * A tile's rows past m must point to readable values (zeros, say). The bits
 * are those of fusenn_gemm_fused on the matrix of those rows. */
FN(gemm_packed) FN(fusenn_gemm_packed_for_rows)(size_t n, size_t k);
size_t FN(fusenn_gemm_packed_mr)(const FN(gemm_packed) *p);
int FN(fusenn_gemm_indirect)(const FN(gemm_packed) *p, size_t m, size_t run,
                             const real *const *rows, const real *Bp, real *C, ptrdiff_t rs_c,
                             const real *bias, fusenn_activation act);

/* A convolution's weight gradient, dZ^T patches, with the patches where they
 * lie (gemm.c): C = A B + beta C on the calling thread, A (m x k) read in
 * place, B (k x taps run) by row pointers: element (p, t run + j) of B at
 * brows[p taps + t][j]. Only where fusenn_gemm_rows_b_fits(m, run): whole
 * register tiles, so that nothing is packed (else FUSENN_EINVAL). The bits
 * are those of fusenn_gemm on the same operands, or, A being transposed (dZ^T
 * in place, as the convolutions pass it), with A and B swapped and transposed:
 * both sum in the same kc blocks (gemm.c's kc_for). */
int FN(fusenn_gemm_rows_b_fits)(size_t m, size_t run);
int FN(fusenn_gemm_rows_b)(size_t m, size_t taps, size_t run, size_t k, const real *A,
                           ptrdiff_t rs_a, ptrdiff_t cs_a, const real *const *brows, real beta,
                           real *C, ptrdiff_t rs_c);
#endif /* FUSENN_NO_DTYPE */

#endif /* FUSENN_INTERNAL_H */
