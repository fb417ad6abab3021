/*
 * gemm_ukernel.h - the portable GEMM micro-kernel, a template included by
 * gemm.c once per ISA with these macros set:
 *   UK_NAME    function name           UK_MR, UK_NR  register tile (rows x columns)
 *   UK_VBYTES  vector width in bytes   UK_ATTR       attributes (a target(...) or empty)
 *   UK_NAME_DIRECT     name of the variant that reads A in place (UK_DIRECT_A)
 *   UK_NAME_DIRECT_AB  name of the variant that reads A and B in place (UK_DIRECT_B)
 * The file includes itself twice more to define those variants.
 *
 * It accumulates one UK_MR x UK_NR tile AB = sum_p a_p b_p^T from packed
 * panels (a: kc steps of UK_MR values, b: kc steps of UK_NR values) in vector
 * registers, then stores it with the epilogue fused:
 *   C = alpha AB + beta C  [+ bias, then act, when sp->last]
 * C's rows are rs_c apart and its columns contiguous; callers route edge tiles
 * and strided C through a temporary tile (alpha 1, beta 0, no epilogue).
 *
 * With UK_DIRECT_A defined, A is read where it lies instead of from a packed
 * panel: element (i, p) of the MR x kc panel at a[i * rs_a + p * cs_a]. The
 * small-shape path uses it when packing A would cost more than it saves; the
 * arithmetic, and so every result bit, is the same. A packed panel is the
 * case rs_a = 1, cs_a = UK_MR. With UK_DIRECT_B defined too, B's steps are
 * rs_b apart instead of UK_NR (B read in place; a packed panel passes UK_NR):
 * small calls use it for every tile, so they pack neither operand.
 *
 * Written with GCC/Clang vector extensions, which lower to SSE, AVX, AVX-512
 * or NEON as the target allows. An ISA-specific kernel with intrinsics can
 * replace it without touching packing or blocking.
 */
#ifdef UK_DIRECT_A
#define UK_A(i) a[(ptrdiff_t)(i) * rs_a]
#define UK_A_STEP cs_a
#else
#define UK_A(i) a[i]
#define UK_A_STEP UK_MR
#endif
#ifdef UK_DIRECT_B
#define UK_B_STEP rs_b
#else
#define UK_B_STEP UK_NR
#endif
static UK_ATTR void UK_NAME(size_t kc, const real *restrict a, ptrdiff_t rs_a, ptrdiff_t cs_a,
                            const real *restrict b, ptrdiff_t rs_b, real *restrict c,
                            ptrdiff_t rs_c, const FN(store_params) *sp,
                            const real *restrict bias)
{
    (void)rs_a; /* only the direct variants read the strides */
    (void)cs_a;
    (void)rs_b;
    typedef real vec __attribute__((vector_size(UK_VBYTES)));
    typedef int_same_size_real ivec __attribute__((vector_size(UK_VBYTES)));
    enum { LANES = UK_VBYTES / sizeof(real), NV = UK_NR / LANES };
    vec acc[UK_MR][NV];
    /* unrolled: as a loop, one vector wide, GCC zeroed a dead stack copy of
     * acc with rep stosq on every call (2% of 128x128x10) */
#pragma GCC unroll 16
    for (int i = 0; i < UK_MR; i++)
#pragma GCC unroll 16
        for (int v = 0; v < NV; v++)
            acc[i][v] = (vec){0};
    /* Four steps per iteration: the loop's counter and pointer updates no
     * longer take FMA ports' issue slots every step. +5-11% from 128x256x128
     * to 2048^3 on AVX-512 (1 and 2 threads); 8 steps was slower again. */
#pragma GCC unroll 4
    for (size_t p = 0; p < kc; p++) {
        vec bv[NV];
        for (int v = 0; v < NV; v++)
            memcpy(&bv[v], b + v * LANES, sizeof(vec));
        for (int i = 0; i < UK_MR; i++) {
            const real ai = UK_A(i);
            for (int v = 0; v < NV; v++)
                acc[i][v] += ai * bv[v]; /* contracted to FMA where available */
        }
        a += UK_A_STEP;
        b += UK_B_STEP;
    }

    /* The store, with the epilogue in registers. */
    const real alpha = sp->alpha, beta = sp->beta;
    const int last = sp->last;
    const fusenn_activation act = last ? sp->act : FUSENN_ACT_IDENTITY;
    if (alpha == 1 && beta == 0 && act == FUSENN_ACT_IDENTITY && !(last && bias)) {
        /* a plain product (every matmul): no branch per vector, so the
         * accumulators go straight from registers to C */
#pragma GCC unroll 16
        for (int i = 0; i < UK_MR; i++)
#pragma GCC unroll 16
            for (int v = 0; v < NV; v++)
                memcpy(c + (ptrdiff_t)i * rs_c + v * LANES, &acc[i][v], sizeof(vec));
        return;
    }
    vec bias_v[NV];
    for (int v = 0; v < NV; v++) {
        bias_v[v] = (vec){0};
        if (last && bias)
            memcpy(&bias_v[v], bias + v * LANES, sizeof(vec));
    }
    const vec zero = {0};
    const vec slope = zero + (real)FUSENN_LEAKY_RELU_SLOPE;
#pragma GCC unroll 16
    for (int i = 0; i < UK_MR; i++) {
        real *crow = c + (ptrdiff_t)i * rs_c;
#pragma GCC unroll 16
        for (int v = 0; v < NV; v++) {
            vec r = acc[i][v];
            if (alpha != 1)
                r *= alpha;
            if (beta != 0) { /* beta == 0 never reads C, which may hold NaN */
                vec old;
                memcpy(&old, crow + v * LANES, sizeof(vec));
                r += beta * old;
            }
            r += bias_v[v];
            if (act == FUSENN_ACT_RELU || act == FUSENN_ACT_LEAKY_RELU) {
                ivec pos = r > zero; /* lanes: all ones where r > 0 */
                /* two branches: a vector ?: on the scalar act crashes GCC 12
                 * (generic f64 kernel) once this function calls out */
                if (act == FUSENN_ACT_RELU)
                    r = (vec)((ivec)r & pos);
                else
                    r = (vec)(((ivec)r & pos) | ((ivec)(r * slope) & ~pos));
            }
            memcpy(crow + v * LANES, &r, sizeof(vec));
        }
    }
    /* Every other elementwise activation calls libm on the stored rows (still
     * in L1), compiled without this kernel's FMA target: see
     * activate_row_baseline. A separate loop, so that no call sits in the
     * store loop and the accumulators stay in registers through it. */
    if (act != FUSENN_ACT_IDENTITY && act != FUSENN_ACT_RELU && act != FUSENN_ACT_LEAKY_RELU)
        for (int i = 0; i < UK_MR; i++)
            FN(activate_row_baseline)(act, UK_NR, c + (ptrdiff_t)i * rs_c, c + (ptrdiff_t)i * rs_c);
}

#undef UK_A
#undef UK_A_STEP
#undef UK_B_STEP
#undef UK_NAME
#ifndef UK_DIRECT_A
#define UK_DIRECT_A /* second pass: the same kernel reading A in place */
#define UK_NAME UK_NAME_DIRECT
#include "gemm_ukernel.h"
#define UK_DIRECT_B /* third pass: reading A and B in place */
#define UK_NAME UK_NAME_DIRECT_AB
#include "gemm_ukernel.h"
#undef UK_DIRECT_B
#undef UK_DIRECT_A
#undef UK_NAME_DIRECT
#undef UK_NAME_DIRECT_AB
#undef UK_MR
#undef UK_NR
#undef UK_VBYTES
#undef UK_ATTR
#endif
