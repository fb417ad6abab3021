/*
 * gemm_ukernel.h - the portable GEMM micro-kernel, a template included by
 * gemm.c once per ISA with these macros set:
 *   UK_NAME    function name           UK_MR, UK_NR  register tile (rows x columns)
 *   UK_VBYTES  vector width in bytes   UK_ATTR       attributes (a target(...) or empty)
 *   UK_NAME_DIRECT     name of the variant that reads A in place (UK_DIRECT_A)
 *   UK_NAME_DIRECT_AB  name of the variant that reads A and B in place (UK_DIRECT_B)
 *   UK_NAME_PACK_B     name of the variant that also packs the B it reads (UK_PACK_B)
 *   UK_NAME_INDIRECT   name of the variant that finds A's rows by pointers (UK_INDIRECT_A)
 *   UK_NAME_INDIRECT_B name of the variant that reads A in place and finds B's
 *                      rows by pointers (UK_INDIRECT_B)
 *   UK_NAME_EDGE       optional: name of the variant for a partial B panel
 *                      read in place (UK_EDGE), given its attributes UK_ATTR_EDGE,
 *                      UK_MASK_LOAD(mask, p), UK_MASK_STORE(p, mask, v) and
 *                      the mask type uk_mask
 *   UK_REALIGN_B       optional, with UK_NAME_EDGE: the A-and-B-in-place variant
 *                      shifts misaligned rows of B into place (UK_ALIGN_B),
 *                      given UK_PERMUTE2(lo, idx, hi)
 * The file includes itself again to define those variants.
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
 * With UK_PACK_B defined too, the kernel also writes each step's NR values of
 * B to b_pack, a packed panel: a larger call packs its full B panels this way,
 * in the first tile that reads them, instead of in a separate pass before
 * it. That pass was 12% of a one-thread 128x784x256 in perf; packing in the
 * kernel made the call 5% faster.
 *
 * With UK_ALIGN_B defined too (the direct-B variant of the kernels whose
 * instantiation sets UK_REALIGN_B; UK_PERMUTE2 is AVX-512's two-vector
 * permute), rows of B that all start at the same offset into a vector are
 * read as aligned vectors and shifted into place: the few-row tiles stream B
 * from L2, and loads straddling two cache lines made a one-row 1x784x256 1.9x
 * slower than an aligned B (1.35x with the permutes). The mid tile, FMA-bound,
 * lost 10% with them.
 *
 * With UK_INDIRECT_A defined (and B from a packed panel), A's rows are found
 * by pointers, as an implicit convolution reads them: the kc steps run
 * through taps of `run` values each, row i's values of tap t starting at
 * rows[t * UK_MR + i] (the first tap `skip` values in). A convolution's
 * patch rows are then read where they lie in the image, instead of being
 * copied (im2col) into a patch matrix first; the sums, and so the bits, are
 * those of the patch matrix's product.
 *
 * With UK_INDIRECT_B defined (and UK_DIRECT_A), A is read in place and B's
 * step p is found by a pointer, brows[p * brow_step] + b_off: a convolution's
 * weight gradient, patches^T dZ, as dZ^T patches, whose B rows are patch
 * rows in the image (each product, and so each sum, is the same).
 *
 * With UK_EDGE defined too (AVX-512 only: it needs masked loads and stores),
 * the kernel touches only the first nr_eff < UK_NR columns of B, bias and C;
 * the other variants ignore nr_eff and compute all UK_NR. A small call's
 * last, partial panel of B is then read in place as well, instead of being
 * copied into a zero-padded panel and stored through a temporary tile (in
 * perf, 15% of 128x128x10). Lanes past nr_eff compute zeros, never stored.
 *
 * Written with GCC/Clang vector extensions, which lower to SSE, AVX, AVX-512
 * or NEON as the target allows. An ISA-specific kernel with intrinsics can
 * replace it without touching packing or blocking.
 */
#if defined(UK_INDIRECT_A)
#define UK_A(i) ap[i][p]
#elif defined(UK_DIRECT_A)
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
/* Vector v of a row of B, bias or C: whole, or its first nr_eff lanes. */
#ifdef UK_EDGE
#define UK_LOAD(dst, src, v) ((dst) = (vec)UK_MASK_LOAD(UK_LANE_MASK(v), (src)))
#define UK_STORE(dst, src, v) UK_MASK_STORE((dst), UK_LANE_MASK(v), (src))
#define UK_COLS nr_eff
#else
#define UK_LOAD(dst, src, v) memcpy(&(dst), (src), sizeof(vec))
#define UK_STORE(dst, src, v) memcpy((dst), &(src), sizeof(vec))
#define UK_COLS UK_NR
#endif
#if defined(UK_INDIRECT_A)
static UK_ATTR void UK_NAME(size_t kc, const real *const *restrict rows, size_t run, size_t skip,
                            const real *restrict b, real *restrict c, ptrdiff_t rs_c,
                            const FN(store_params) *sp, const real *restrict bias)
{
#elif defined(UK_INDIRECT_B)
static UK_ATTR void UK_NAME(size_t kc, const real *restrict a, ptrdiff_t rs_a, ptrdiff_t cs_a,
                            const real *const *restrict brows, ptrdiff_t brow_step,
                            size_t b_off, real *restrict c, ptrdiff_t rs_c,
                            const FN(store_params) *sp, const real *restrict bias)
{
#else
static UK_ATTR void UK_NAME(size_t kc, const real *restrict a, ptrdiff_t rs_a, ptrdiff_t cs_a,
                            const real *restrict b, ptrdiff_t rs_b, real *restrict c,
                            ptrdiff_t rs_c, const FN(store_params) *sp,
                            const real *restrict bias, size_t nr_eff, real *restrict b_pack)
{
    (void)rs_a; /* only the direct variants read the strides */
    (void)cs_a;
    (void)rs_b;
    (void)nr_eff; /* and only the edge variant nr_eff, */
    (void)b_pack; /* and the packing one b_pack */
#endif
    typedef real vec __attribute__((vector_size(UK_VBYTES)));
    typedef int_same_size_real ivec __attribute__((vector_size(UK_VBYTES)));
    enum { LANES = UK_VBYTES / sizeof(real), NV = UK_NR / LANES };
#ifdef UK_EDGE
    /* UK_LANE_MASK(v): the lanes of vector v below nr_eff (< UK_NR <= 128) */
#if UK_NR > 64
    const unsigned __int128 lanes = ((unsigned __int128)1 << nr_eff) - 1;
#else
    const unsigned long long lanes = (1ull << nr_eff) - 1;
#endif
#define UK_LANE_MASK(v) ((uk_mask)(lanes >> ((v) * LANES)))
#endif
    vec acc[UK_MR][NV];
    /* unrolled: as a loop, one vector wide, GCC zeroed a dead stack copy of
     * acc with rep stosq on every call (2% of 128x128x10) */
#pragma GCC unroll 16
    for (int i = 0; i < UK_MR; i++)
#pragma GCC unroll 16
        for (int v = 0; v < NV; v++)
            acc[i][v] = (vec){0};
    /* One step: every row's value of A times the NV vectors of B in bv. */
#define UK_FMAS(bv)                                                                       \
    _Pragma("GCC unroll 16") for (int i = 0; i < UK_MR; i++) {                           \
        const real ai = UK_A(i);                                                          \
        _Pragma("GCC unroll 16") for (int v = 0; v < NV; v++)                             \
            acc[i][v] += ai * (bv)[v]; /* contracted to FMA where available */           \
    }
    /* One step whose NV vectors of B start at `from` (the pointer variants). */
#define UK_STEP_FROM(from)                                                                \
    do {                                                                                  \
        const real *from_ = (from);                                                       \
        vec bv_[NV];                                                                      \
        _Pragma("GCC unroll 16") for (int v = 0; v < NV; v++)                             \
            memcpy(&bv_[v], from_ + v * LANES, sizeof(vec));                              \
        UK_FMAS(bv_)                                                                      \
    } while (0)
#if defined(UK_INDIRECT_A)
    /* tap by tap: row i's pointer, then the tap's steps as from a packed panel */
    for (size_t done = 0, len; done < kc; done += len, rows += UK_MR, skip = 0) {
        len = run - skip < kc - done ? run - skip : kc - done;
        const real *ap[UK_MR];
#pragma GCC unroll 16
        for (int i = 0; i < UK_MR; i++)
            ap[i] = rows[i] + skip;
#pragma GCC unroll 4
        for (size_t p = 0; p < len; p++) {
            UK_STEP_FROM(b);
            b += UK_NR;
        }
    }
#elif defined(UK_INDIRECT_B)
    /* B's row pointers by a running pointer, and A's rows at constant offsets
     * when they are adjacent (dZ^T read in place, as the convolutions' dW
     * passes it): with a multiply per step and a register per row of A, GCC
     * ran out of registers and kept one in a vector register. VGG's conv2
     * (32 -> 32 channels, 28x28, batch 64), ops.conv2d_backward without dX,
     * ms: AVX-512 8.55-9.38 -> 8.10-8.25, two threads 4.37-4.75 -> 4.09-4.24,
     * AVX2 13.5-13.9 -> 12.7-13.4. Same sums, same bits. */
    const real *const *bp = brows;
#define UK_INDIRECT_B_STEPS                                                               \
    _Pragma("GCC unroll 4") for (size_t p = 0; p < kc; p++, bp += brow_step) {            \
        UK_STEP_FROM(*bp + b_off);                                                        \
        a += UK_A_STEP;                                                                   \
    }
    if (rs_a == 1) {
#undef UK_A
#define UK_A(i) a[i]
        UK_INDIRECT_B_STEPS
#undef UK_A
#define UK_A(i) a[(ptrdiff_t)(i) * rs_a]
    } else {
        UK_INDIRECT_B_STEPS
    }
#undef UK_INDIRECT_B_STEPS
#elif defined(UK_ALIGN_B)
    /* B's rows all start `shift` lanes past a vector boundary (NumPy's large
     * arrays start 16 bytes past one): read whole aligned vectors, the end
     * ones masked to the row, and permute each adjacent pair into place.
     * Loads that straddle two cache lines cost more than the permutes. */
    const size_t shift = (uintptr_t)b / sizeof(real) % LANES;
    if (shift != 0 && rs_b % LANES == 0) {
        ivec idx;
        for (int l = 0; l < LANES; l++)
            idx[l] = (int_same_size_real)(shift + (size_t)l);
        const uk_mask head = (uk_mask)(~0ull << shift), tail = (uk_mask)((1ull << shift) - 1);
        const real *ba = b - shift;
#pragma GCC unroll 4
        for (size_t p = 0; p < kc; p++) {
            vec w[NV + 1], bv[NV];
            w[0] = (vec)UK_MASK_LOAD(head, ba);
#pragma GCC unroll 16
            for (int v = 1; v < NV; v++)
                memcpy(&w[v], ba + v * LANES, sizeof(vec));
            w[NV] = (vec)UK_MASK_LOAD(tail, ba + NV * LANES);
#pragma GCC unroll 16
            for (int v = 0; v < NV; v++)
                bv[v] = (vec)UK_PERMUTE2(w[v], idx, w[v + 1]);
            UK_FMAS(bv)
            a += UK_A_STEP;
            ba += rs_b;
        }
    } else
#endif
#if !defined(UK_INDIRECT_A) && !defined(UK_INDIRECT_B)
    /* Four steps per iteration: the loop's counter and pointer updates no
     * longer take FMA ports' issue slots every step. +5-11% from 128x256x128
     * to 2048^3 on AVX-512 (1 and 2 threads); 8 steps was slower again. */
#pragma GCC unroll 4
    for (size_t p = 0; p < kc; p++) {
        vec bv[NV];
        /* unrolled: left to GCC, eight 32-byte vectors of B became a copy
         * loop through the stack (the AVX2 one-row tile ran 6x slower) */
#pragma GCC unroll 16
        for (int v = 0; v < NV; v++)
            UK_LOAD(bv[v], b + v * LANES, v);
#ifdef UK_PACK_B
#pragma GCC unroll 16
        for (int v = 0; v < NV; v++)
            memcpy(b_pack + v * LANES, &bv[v], sizeof(vec));
        b_pack += UK_NR;
#endif
        UK_FMAS(bv)
        a += UK_A_STEP;
        b += UK_B_STEP;
    }
#endif

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
                UK_STORE(c + (ptrdiff_t)i * rs_c + v * LANES, acc[i][v], v);
        return;
    }
    vec bias_v[NV];
    for (int v = 0; v < NV; v++) {
        bias_v[v] = (vec){0};
        if (last && bias)
            UK_LOAD(bias_v[v], bias + v * LANES, v);
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
                UK_LOAD(old, crow + v * LANES, v);
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
            UK_STORE(crow + v * LANES, r, v);
        }
    }
    /* Every other elementwise activation runs on the stored rows (still in L1)
     * through one out-of-line call (libm, or vmath.h's float32 sigmoid and
     * tanh), compiled without this kernel's FMA target: see
     * activate_row_baseline. A separate loop, so that no call sits in the
     * store loop and the accumulators stay in registers through it. */
    if (act != FUSENN_ACT_IDENTITY && act != FUSENN_ACT_RELU && act != FUSENN_ACT_LEAKY_RELU)
        for (int i = 0; i < UK_MR; i++)
            FN(activate_row_baseline)(act, UK_COLS, c + (ptrdiff_t)i * rs_c,
                                      c + (ptrdiff_t)i * rs_c);
}

#undef UK_A
#undef UK_A_STEP
#undef UK_B_STEP
#undef UK_LOAD
#undef UK_STORE
#undef UK_LANE_MASK
#undef UK_FMAS
#undef UK_STEP_FROM
#undef UK_COLS
#undef UK_NAME
#if !defined(UK_DIRECT_A) && !defined(UK_INDIRECT_A)
#define UK_INDIRECT_A /* second pass: A's rows by pointers */
#define UK_NAME UK_NAME_INDIRECT
#include "gemm_ukernel.h"
#undef UK_INDIRECT_A
#define UK_DIRECT_A /* third pass: the same kernel reading A in place */
#define UK_NAME UK_NAME_DIRECT
#include "gemm_ukernel.h"
#define UK_INDIRECT_B /* fourth pass: A in place, B's rows by pointers */
#define UK_NAME UK_NAME_INDIRECT_B
#include "gemm_ukernel.h"
#undef UK_INDIRECT_B
#define UK_DIRECT_B /* fifth pass: reading A and B in place */
#define UK_NAME UK_NAME_DIRECT_AB
#ifdef UK_REALIGN_B
#define UK_ALIGN_B
#endif
#include "gemm_ukernel.h"
#undef UK_ALIGN_B
#undef UK_REALIGN_B
#define UK_PACK_B /* sixth pass: reading A and B in place, packing B */
#define UK_NAME UK_NAME_PACK_B
#include "gemm_ukernel.h"
#undef UK_PACK_B
#ifdef UK_NAME_EDGE
#define UK_EDGE /* seventh pass: A and B in place, a partial panel of B */
#define UK_NAME UK_NAME_EDGE
#undef UK_ATTR
#define UK_ATTR UK_ATTR_EDGE
#include "gemm_ukernel.h"
#undef UK_EDGE
#undef UK_NAME_EDGE
#undef UK_ATTR_EDGE
#endif
#undef UK_DIRECT_B
#undef UK_DIRECT_A
#undef UK_NAME_DIRECT
#undef UK_NAME_DIRECT_AB
#undef UK_NAME_PACK_B
#undef UK_NAME_INDIRECT
#undef UK_NAME_INDIRECT_B
#undef UK_MR
#undef UK_NR
#undef UK_VBYTES
#undef UK_ATTR
#endif
