/*
 * gemm.c - C = act(alpha op(A) op(B) + beta C + bias), BLIS-style.
 *
 * Loop nest (BLIS's five loops):
 *   jc over n in NC-wide blocks
 *     pc over k in KC-deep blocks       -> pack B[pc:pc+kc, jc:jc+nc] into NR-wide panels
 *                                          (or let the first row block's kernels do it)
 *       ic over m in MC-tall blocks     -> pack A[ic:ic+mc, pc:pc+kc] into MR-tall panels
 *         jr over nc in steps of NR
 *           ir over mc in steps of MR   -> micro-kernel: one MR x NR tile, then store
 * Packing copies into contiguous, zero-padded panels, so any strides (and so
 * transposes) cost nothing in the kernel and edge tiles need no special code.
 * Only the micro-kernel (gemm_ukernel.h) knows the ISA; blocking, packing,
 * threading and the fused store are shared by all of them.
 *
 * Determinism: k is never split between threads and every element is summed
 * over the same kc blocks in the same order, so results do not depend on the
 * thread count.
 */
#include "internal.h"

#include <pthread.h>
#include <stdlib.h>

/* How a tile is stored: C = alpha AB + beta C, then bias and act on the last
 * kc block. */
typedef struct {
    real alpha, beta;      /* beta of this kc block (1 after the first) */
    fusenn_activation act; /* applied on the last kc block only */
    int last;              /* this is the last kc block */
} FN(store_params);

/* nr_eff: the columns the edge variant computes; the others compute all NR.
 * b_pack: where the packing variant writes the panel of B it reads. */
typedef void (*FN(ukernel_fn))(size_t kc, const real *a, ptrdiff_t rs_a, ptrdiff_t cs_a,
                               const real *b, ptrdiff_t rs_b, real *c, ptrdiff_t rs_c,
                               const FN(store_params) *sp, const real *bias, size_t nr_eff,
                               real *b_pack);
/* A's rows by pointers, tap by tap (UK_INDIRECT_A in gemm_ukernel.h); B packed. */
typedef void (*FN(ukernel_indirect_fn))(size_t kc, const real *const *rows, size_t run,
                                        size_t skip, const real *b, real *c, ptrdiff_t rs_c,
                                        const FN(store_params) *sp, const real *bias);
/* A in place, B's rows by pointers (UK_INDIRECT_B). */
typedef void (*FN(ukernel_indirect_b_fn))(size_t kc, const real *a, ptrdiff_t rs_a,
                                          ptrdiff_t cs_a, const real *const *brows,
                                          ptrdiff_t brow_step, size_t b_off, real *c,
                                          ptrdiff_t rs_c, const FN(store_params) *sp,
                                          const real *bias);

/* A micro-kernel and the block sizes that suit it. */
typedef struct {
    FN(ukernel_fn) kernel;        /* A from packed panels */
    FN(ukernel_fn) kernel_direct; /* the same, reading A in place (small shapes) */
    FN(ukernel_fn) kernel_direct_ab; /* reading A and B in place (small calls) */
    FN(ukernel_fn) kernel_pack_b;    /* the same, packing the B panel it reads */
    FN(ukernel_fn) kernel_edge;      /* and a partial B panel in place (NULL: packed) */
    FN(ukernel_indirect_fn) kernel_indirect;     /* A's rows by pointers, B packed */
    FN(ukernel_indirect_b_fn) kernel_indirect_b; /* A in place, B's rows by pointers */
    int mr, nr;     /* register tile */
    size_t kc;      /* depth of packed panels: an MR x KC panel of A stays in L1 */
    size_t mc;      /* MC x KC block of A fits in L2 (multiple of mr) */
    size_t nc;      /* KC x NC block of B fits in L3 (multiple of nr) */
} FN(gemm_config);

/* Largest register tile of any kernel (sizes the on-stack tile buffers). */
#define GEMM_MAX_NR 128
#define GEMM_MAX_TILE (16 * GEMM_MAX_NR)

/* Register tiles and cache blocks per ISA (elements). MR x NR accumulators
 * must fit the vector registers with room for B and a broadcast; KC x NR of
 * packed B stays in L1 (L2 with FAST_KC), MC x KC of packed A in L2, KC x NC
 * of packed B in L3.
 * Each can be overridden at compile time for tuning (-DAVX512_KC=...). */
#if defined(FUSENN_DTYPE_F32)
#define LANES_PER_16B 4
typedef int32_t int_same_size_real;
#else
#define LANES_PER_16B 2
typedef int64_t int_same_size_real;
#endif
#ifndef GENERIC_MR
#define GENERIC_MR 4
#endif
#ifndef GENERIC_NR
#define GENERIC_NR (2 * LANES_PER_16B)
#endif
#ifndef GENERIC_KC
#define GENERIC_KC 256
#endif
#ifndef GENERIC_MC
#define GENERIC_MC (GENERIC_MR * 32)
#endif
#ifndef GENERIC_NC
#define GENERIC_NC (GENERIC_NR * 512)
#endif
#ifndef AVX2_MR
#define AVX2_MR 6
#endif
#ifndef AVX2_NR
#define AVX2_NR (4 * LANES_PER_16B)
#endif
/* float32 on AVX2 and AVX-512 sums over k in blocks 1024 deep: each kc block
 * reads and writes C once more, and saving those passes is worth more than
 * keeping B's KC x NR panel in L1. Against 256, one thread: AVX-512 1024^3
 * +6%, 2048^3 +7%, 128x784x256 +3% (two threads: +3%, +4%, +16%); AVX2
 * 1024^3 +6%, 2048^3 +27%. Not for float64 (AVX-512 128x784x256 -8%) nor
 * the portable kernel (-24%). NC is then 16 panels: a packed B block of 4 MB
 * on AVX-512, 1 MB on AVX2. */
#if defined(FUSENN_DTYPE_F32)
#define FAST_KC 1024
#define FAST_NC_PANELS(wide) 16
#else
#define FAST_KC 256
#define FAST_NC_PANELS(wide) (wide)
#endif
#ifndef AVX2_KC
#define AVX2_KC FAST_KC
#endif
#ifndef AVX2_MC
#define AVX2_MC (AVX2_MR * 24)
#endif
#ifndef AVX2_NC
#define AVX2_NC (AVX2_NR * FAST_NC_PANELS(256))
#endif
#ifndef AVX512_MR
#define AVX512_MR 6
#endif
#ifndef AVX512_NR
#define AVX512_NR (16 * LANES_PER_16B)
#endif
#ifndef AVX512_KC
#define AVX512_KC FAST_KC
#endif
#ifndef AVX512_MC
#if defined(FUSENN_DTYPE_F32)
/* 258 rows: with 1024-deep kc blocks a 1 MB block of A, half of L2, so that
 * the B panels it meets stay there too. Two threads, 2048^3: +10% against
 * 384 rows (1.5 MB); one thread and smaller shapes unchanged. */
#define AVX512_MC (AVX512_MR * 43)
#else
#define AVX512_MC (AVX512_MR * 64)
#endif
#endif
#ifndef AVX512_NC
#define AVX512_NC (AVX512_NR * FAST_NC_PANELS(64))
#endif

#define UK_NAME FN(ukernel_generic)
#define UK_NAME_DIRECT FN(ukernel_generic_direct)
#define UK_NAME_DIRECT_AB FN(ukernel_generic_direct_ab)
#define UK_NAME_PACK_B FN(ukernel_generic_pack_b)
#define UK_NAME_INDIRECT FN(ukernel_generic_indirect)
#define UK_NAME_INDIRECT_B FN(ukernel_generic_indirect_b)
#define UK_MR GENERIC_MR
#define UK_NR GENERIC_NR
#define UK_VBYTES 16
#define UK_ATTR
#include "gemm_ukernel.h"

#if defined(__x86_64__) && defined(__GNUC__)
#define FUSENN_HAVE_X86_KERNELS 1
#include <immintrin.h>

/* The AVX-512 kernels' target, and their edge variants': those are tuned for
 * Ice Lake, as with generic tuning GCC 12 reloads the lane mask from the stack
 * before every masked load (one more load per step of a load-bound loop). Not
 * the others: that tuning made the 6 x 64 kernel 2.5x slower. */
#define AVX512_TARGET __attribute__((target("avx512f,avx2,fma")))
#if defined(__clang__) /* GCC's register allocation problem; not every Clang takes tune= */
#define AVX512_EDGE_TARGET AVX512_TARGET
#else
#define AVX512_EDGE_TARGET __attribute__((target("avx512f,avx2,fma,tune=icelake-server")))
#endif

/* AVX-512's masked loads and stores, for the edge kernels (UK_EDGE). */
#if defined(FUSENN_DTYPE_F32)
typedef __mmask16 uk_mask;
#define UK_MASK_LOAD(m, p) _mm512_maskz_loadu_ps((m), (p))
#define UK_MASK_STORE(p, m, v) _mm512_mask_storeu_ps((p), (m), (__m512)(v))
#else
typedef __mmask8 uk_mask;
#define UK_MASK_LOAD(m, p) _mm512_maskz_loadu_pd((m), (p))
#define UK_MASK_STORE(p, m, v) _mm512_mask_storeu_pd((p), (m), (__m512d)(v))
#endif
/* Lanes idx of the two vectors lo, hi (UK_REALIGN_B). */
#if defined(FUSENN_DTYPE_F32)
#define UK_PERMUTE2(lo, idx, hi) \
    _mm512_permutex2var_ps((__m512)(lo), (__m512i)(idx), (__m512)(hi))
#else
#define UK_PERMUTE2(lo, idx, hi) \
    _mm512_permutex2var_pd((__m512d)(lo), (__m512i)(idx), (__m512d)(hi))
#endif
#define UK_NAME FN(ukernel_avx2)
#define UK_NAME_DIRECT FN(ukernel_avx2_direct)
#define UK_NAME_DIRECT_AB FN(ukernel_avx2_direct_ab)
#define UK_NAME_PACK_B FN(ukernel_avx2_pack_b)
#define UK_NAME_INDIRECT FN(ukernel_avx2_indirect)
#define UK_NAME_INDIRECT_B FN(ukernel_avx2_indirect_b)
#define UK_MR AVX2_MR
#define UK_NR AVX2_NR
#define UK_VBYTES 32
#define UK_ATTR __attribute__((target("avx2,fma")))
#include "gemm_ukernel.h"

#define UK_NAME FN(ukernel_avx512)
#define UK_NAME_DIRECT FN(ukernel_avx512_direct)
#define UK_NAME_DIRECT_AB FN(ukernel_avx512_direct_ab)
#define UK_NAME_PACK_B FN(ukernel_avx512_pack_b)
#define UK_NAME_INDIRECT FN(ukernel_avx512_indirect)
#define UK_NAME_INDIRECT_B FN(ukernel_avx512_indirect_b)
#define UK_MR AVX512_MR
#define UK_NR AVX512_NR
#define UK_VBYTES 64
#define UK_ATTR AVX512_TARGET
#include "gemm_ukernel.h"

/* AVX-512's tile for the MLP shapes: 8 x 2 vectors. Batches are powers of two,
 * which 6 rows leave a remainder of; 16 accumulators still hide the FMA
 * latency. (AVX2's and the portable wide tiles serve both roles.) */
#define UK_NAME FN(ukernel_avx512_mid)
#define UK_NAME_DIRECT FN(ukernel_avx512_mid_direct)
#define UK_NAME_DIRECT_AB FN(ukernel_avx512_mid_direct_ab)
#define UK_NAME_PACK_B FN(ukernel_avx512_mid_pack_b)
#define UK_NAME_INDIRECT FN(ukernel_avx512_mid_indirect)
#define UK_NAME_INDIRECT_B FN(ukernel_avx512_mid_indirect_b)
#define UK_NAME_EDGE FN(ukernel_avx512_mid_edge)
#define UK_ATTR_EDGE AVX512_EDGE_TARGET
#define UK_MR 8
#define UK_NR (8 * LANES_PER_16B)
#define UK_VBYTES 64
#define UK_ATTR AVX512_TARGET
#include "gemm_ukernel.h"

/* Narrow tiles, one vector wide, for outputs with few columns (a 10-unit
 * output layer would waste most of a 64-wide tile). */
#define UK_NAME FN(ukernel_avx2_narrow)
#define UK_NAME_DIRECT FN(ukernel_avx2_narrow_direct)
#define UK_NAME_DIRECT_AB FN(ukernel_avx2_narrow_direct_ab)
#define UK_NAME_PACK_B FN(ukernel_avx2_narrow_pack_b)
#define UK_NAME_INDIRECT FN(ukernel_avx2_narrow_indirect)
#define UK_NAME_INDIRECT_B FN(ukernel_avx2_narrow_indirect_b)
#define UK_MR 8
#define UK_NR (2 * LANES_PER_16B)
#define UK_VBYTES 32
#define UK_ATTR __attribute__((target("avx2,fma")))
#include "gemm_ukernel.h"

#define UK_NAME FN(ukernel_avx512_narrow)
#define UK_NAME_DIRECT FN(ukernel_avx512_narrow_direct)
#define UK_NAME_DIRECT_AB FN(ukernel_avx512_narrow_direct_ab)
#define UK_NAME_PACK_B FN(ukernel_avx512_narrow_pack_b)
#define UK_NAME_INDIRECT FN(ukernel_avx512_narrow_indirect)
#define UK_NAME_INDIRECT_B FN(ukernel_avx512_narrow_indirect_b)
#define UK_NAME_EDGE FN(ukernel_avx512_narrow_edge)
#define UK_ATTR_EDGE AVX512_EDGE_TARGET
#ifndef AVX512_NARROW_MR
#define AVX512_NARROW_MR 8
#endif
#define UK_MR AVX512_NARROW_MR
#define UK_NR (4 * LANES_PER_16B)
#define UK_VBYTES 64
#define UK_ATTR AVX512_TARGET
#include "gemm_ukernel.h"
#endif

/* Row tiles for calls with few rows (m <= GEMM_FEW_ROWS: batch-1 to batch-16
 * inference): 1, 2 or 4 rows by enough column vectors that the independent
 * sums hide the FMA latency, reading A and B in place. With one row each
 * value of B is used once, so the call streams B and no packing can pay.
 * AVX-512, one row: 8 vectors; at 1x784x256 4 vectors took 5-20% longer, 6
 * took 30% longer, 16 were no faster. The AVX-512 ones shift rows of B that
 * start off a vector boundary into place (UK_REALIGN_B, gemm_ukernel.h). */
#ifdef FUSENN_HAVE_X86_KERNELS
#ifndef AVX512_ROW1_NV
#define AVX512_ROW1_NV 8
#endif
#ifndef AVX512_ROW2_NV
#define AVX512_ROW2_NV 8
#endif
#ifndef AVX512_ROW4_NV
#define AVX512_ROW4_NV 4
#endif
#define UK_NAME FN(ukernel_avx512_row1)
#define UK_NAME_DIRECT FN(ukernel_avx512_row1_direct)
#define UK_NAME_DIRECT_AB FN(ukernel_avx512_row1_direct_ab)
#define UK_NAME_PACK_B FN(ukernel_avx512_row1_pack_b)
#define UK_NAME_INDIRECT FN(ukernel_avx512_row1_indirect)
#define UK_NAME_INDIRECT_B FN(ukernel_avx512_row1_indirect_b)
#define UK_NAME_EDGE FN(ukernel_avx512_row1_edge)
#define UK_REALIGN_B
#define UK_ATTR_EDGE AVX512_EDGE_TARGET
#define UK_MR 1
#define UK_NR (AVX512_ROW1_NV * 4 * LANES_PER_16B)
#define UK_VBYTES 64
#define UK_ATTR AVX512_TARGET
#include "gemm_ukernel.h"

#define UK_NAME FN(ukernel_avx512_row2)
#define UK_NAME_DIRECT FN(ukernel_avx512_row2_direct)
#define UK_NAME_DIRECT_AB FN(ukernel_avx512_row2_direct_ab)
#define UK_NAME_PACK_B FN(ukernel_avx512_row2_pack_b)
#define UK_NAME_INDIRECT FN(ukernel_avx512_row2_indirect)
#define UK_NAME_INDIRECT_B FN(ukernel_avx512_row2_indirect_b)
#define UK_NAME_EDGE FN(ukernel_avx512_row2_edge)
#define UK_REALIGN_B
#define UK_ATTR_EDGE AVX512_EDGE_TARGET
#define UK_MR 2
#define UK_NR (AVX512_ROW2_NV * 4 * LANES_PER_16B)
#define UK_VBYTES 64
#define UK_ATTR AVX512_TARGET
#include "gemm_ukernel.h"

#define UK_NAME FN(ukernel_avx512_row4)
#define UK_NAME_DIRECT FN(ukernel_avx512_row4_direct)
#define UK_NAME_DIRECT_AB FN(ukernel_avx512_row4_direct_ab)
#define UK_NAME_PACK_B FN(ukernel_avx512_row4_pack_b)
#define UK_NAME_INDIRECT FN(ukernel_avx512_row4_indirect)
#define UK_NAME_INDIRECT_B FN(ukernel_avx512_row4_indirect_b)
#define UK_NAME_EDGE FN(ukernel_avx512_row4_edge)
#define UK_REALIGN_B
#define UK_ATTR_EDGE AVX512_EDGE_TARGET
#define UK_MR 4
#define UK_NR (AVX512_ROW4_NV * 4 * LANES_PER_16B)
#define UK_VBYTES 64
#define UK_ATTR AVX512_TARGET
#include "gemm_ukernel.h"

#define UK_NAME FN(ukernel_avx2_row1)
#define UK_NAME_DIRECT FN(ukernel_avx2_row1_direct)
#define UK_NAME_DIRECT_AB FN(ukernel_avx2_row1_direct_ab)
#define UK_NAME_PACK_B FN(ukernel_avx2_row1_pack_b)
#define UK_NAME_INDIRECT FN(ukernel_avx2_row1_indirect)
#define UK_NAME_INDIRECT_B FN(ukernel_avx2_row1_indirect_b)
#define UK_MR 1
#define UK_NR (8 * 2 * LANES_PER_16B)
#define UK_VBYTES 32
#define UK_ATTR __attribute__((target("avx2,fma")))
#include "gemm_ukernel.h"

#define UK_NAME FN(ukernel_avx2_row2)
#define UK_NAME_DIRECT FN(ukernel_avx2_row2_direct)
#define UK_NAME_DIRECT_AB FN(ukernel_avx2_row2_direct_ab)
#define UK_NAME_PACK_B FN(ukernel_avx2_row2_pack_b)
#define UK_NAME_INDIRECT FN(ukernel_avx2_row2_indirect)
#define UK_NAME_INDIRECT_B FN(ukernel_avx2_row2_indirect_b)
#define UK_MR 2
#define UK_NR (4 * 2 * LANES_PER_16B)
#define UK_VBYTES 32
#define UK_ATTR __attribute__((target("avx2,fma")))
#include "gemm_ukernel.h"

#define UK_NAME FN(ukernel_avx2_row4)
#define UK_NAME_DIRECT FN(ukernel_avx2_row4_direct)
#define UK_NAME_DIRECT_AB FN(ukernel_avx2_row4_direct_ab)
#define UK_NAME_PACK_B FN(ukernel_avx2_row4_pack_b)
#define UK_NAME_INDIRECT FN(ukernel_avx2_row4_indirect)
#define UK_NAME_INDIRECT_B FN(ukernel_avx2_row4_indirect_b)
#define UK_MR 4
#define UK_NR (2 * 2 * LANES_PER_16B)
#define UK_VBYTES 32
#define UK_ATTR __attribute__((target("avx2,fma")))
#include "gemm_ukernel.h"

#endif

#define UK_NAME FN(ukernel_generic_row1)
#define UK_NAME_DIRECT FN(ukernel_generic_row1_direct)
#define UK_NAME_DIRECT_AB FN(ukernel_generic_row1_direct_ab)
#define UK_NAME_PACK_B FN(ukernel_generic_row1_pack_b)
#define UK_NAME_INDIRECT FN(ukernel_generic_row1_indirect)
#define UK_NAME_INDIRECT_B FN(ukernel_generic_row1_indirect_b)
#define UK_MR 1
#define UK_NR (8 * LANES_PER_16B)
#define UK_VBYTES 16
#define UK_ATTR
#include "gemm_ukernel.h"

#define UK_NAME FN(ukernel_generic_row2)
#define UK_NAME_DIRECT FN(ukernel_generic_row2_direct)
#define UK_NAME_DIRECT_AB FN(ukernel_generic_row2_direct_ab)
#define UK_NAME_PACK_B FN(ukernel_generic_row2_pack_b)
#define UK_NAME_INDIRECT FN(ukernel_generic_row2_indirect)
#define UK_NAME_INDIRECT_B FN(ukernel_generic_row2_indirect_b)
#define UK_MR 2
#define UK_NR (4 * LANES_PER_16B)
#define UK_VBYTES 16
#define UK_ATTR
#include "gemm_ukernel.h"

#define UK_NAME FN(ukernel_generic_narrow)
#define UK_NAME_DIRECT FN(ukernel_generic_narrow_direct)
#define UK_NAME_DIRECT_AB FN(ukernel_generic_narrow_direct_ab)
#define UK_NAME_PACK_B FN(ukernel_generic_narrow_pack_b)
#define UK_NAME_INDIRECT FN(ukernel_generic_narrow_indirect)
#define UK_NAME_INDIRECT_B FN(ukernel_generic_narrow_indirect_b)
#define UK_MR 4
#define UK_NR LANES_PER_16B
#define UK_VBYTES 16
#define UK_ATTR
#include "gemm_ukernel.h"

/* One table entry per ISA level: the wide, mid and narrow configurations.
 * All three of a level share its KC, so that every tile sums each element
 * over the same kc blocks and the choice of tile does not change the bits.
 * K(x) names a kernel's variants: packed, A in place, A and B in place, A
 * and B in place packing B, A's rows by pointers, and B's rows by pointers
 * (A in place); KE(x) adds the edge variant, which the small-call (mid,
 * narrow) AVX-512 kernels have. */
#define K(x)                                                                                \
    FN(x), FN(x##_direct), FN(x##_direct_ab), FN(x##_pack_b), NULL, FN(x##_indirect),      \
        FN(x##_indirect_b)
#define KE(x)                                                                               \
    FN(x), FN(x##_direct), FN(x##_direct_ab), FN(x##_pack_b), FN(x##_edge),                \
        FN(x##_indirect), FN(x##_indirect_b)
static const FN(gemm_config) FN(gemm_configs)[][3] = {
    {{K(ukernel_generic), GENERIC_MR, GENERIC_NR, GENERIC_KC, GENERIC_MC, GENERIC_NC},
     {K(ukernel_generic), GENERIC_MR, GENERIC_NR, GENERIC_KC, GENERIC_MC, GENERIC_NC},
     {K(ukernel_generic_narrow), 4, LANES_PER_16B, GENERIC_KC, 4 * 32, LANES_PER_16B * 512}},
#ifdef FUSENN_HAVE_X86_KERNELS
    {{K(ukernel_avx2), AVX2_MR, AVX2_NR, AVX2_KC, AVX2_MC, AVX2_NC},
     {K(ukernel_avx2), AVX2_MR, AVX2_NR, AVX2_KC, AVX2_MC, AVX2_NC},
     {K(ukernel_avx2_narrow), 8, 2 * LANES_PER_16B, AVX2_KC, 8 * 24, 2 * LANES_PER_16B * 512}},
    {{K(ukernel_avx512), AVX512_MR, AVX512_NR, AVX512_KC, AVX512_MC, AVX512_NC},
     {KE(ukernel_avx512_mid), 8, 8 * LANES_PER_16B, AVX512_KC, 8 * 48, 8 * LANES_PER_16B * 128},
     {KE(ukernel_avx512_narrow), AVX512_NARROW_MR, 4 * LANES_PER_16B, AVX512_KC,
      AVX512_NARROW_MR * 24, 4 * LANES_PER_16B * 256}},
#endif
};

/* Tiles for calls with few rows, per ISA level, from the lowest: 1, 2, 4 and
 * then the level's tile for more rows (AVX-512: the 8-row mid tile; AVX2: its
 * 6-row tile, which beat 8 x 1 and 4 x 3 vectors from 8 to 16 rows; the
 * portable level: its only tile, 4 rows). The same KC as the level's other
 * tiles, so the same bits. Calls with at most GEMM_FEW_ROWS rows take them,
 * in one MC block; a packed (transposed) B block is ROW_NC columns wide. */
#define GEMM_FEW_ROWS 16
#define ROW_NC (256 * LANES_PER_16B)
static const FN(gemm_config) FN(gemm_row_configs)[][4] = {
    {{K(ukernel_generic_row1), 1, 8 * LANES_PER_16B, GENERIC_KC, GEMM_FEW_ROWS, ROW_NC},
     {K(ukernel_generic_row2), 2, 4 * LANES_PER_16B, GENERIC_KC, GEMM_FEW_ROWS, ROW_NC},
     {K(ukernel_generic), GENERIC_MR, GENERIC_NR, GENERIC_KC, GENERIC_MC, GENERIC_NC},
     {K(ukernel_generic), GENERIC_MR, GENERIC_NR, GENERIC_KC, GENERIC_MC, GENERIC_NC}},
#ifdef FUSENN_HAVE_X86_KERNELS
    {{K(ukernel_avx2_row1), 1, 16 * LANES_PER_16B, AVX2_KC, GEMM_FEW_ROWS, ROW_NC},
     {K(ukernel_avx2_row2), 2, 8 * LANES_PER_16B, AVX2_KC, GEMM_FEW_ROWS, ROW_NC},
     {K(ukernel_avx2_row4), 4, 4 * LANES_PER_16B, AVX2_KC, GEMM_FEW_ROWS, ROW_NC},
     {K(ukernel_avx2), AVX2_MR, AVX2_NR, AVX2_KC, AVX2_MC, AVX2_NC}},
    {{KE(ukernel_avx512_row1), 1, AVX512_ROW1_NV * 4 * LANES_PER_16B, AVX512_KC, GEMM_FEW_ROWS,
      ROW_NC},
     {KE(ukernel_avx512_row2), 2, AVX512_ROW2_NV * 4 * LANES_PER_16B, AVX512_KC, GEMM_FEW_ROWS,
      ROW_NC},
     {KE(ukernel_avx512_row4), 4, AVX512_ROW4_NV * 4 * LANES_PER_16B, AVX512_KC, GEMM_FEW_ROWS,
      ROW_NC},
     {KE(ukernel_avx512_mid), 8, 8 * LANES_PER_16B, AVX512_KC, 8 * 48, 8 * LANES_PER_16B * 128}},
#endif
};
#undef K
#undef KE

/* This CPU's (or FUSENN_ISA's) row of the tile tables: its ISA level, or the
 * highest the build has kernels for. */
static int FN(table_level)(void)
{
    const int level = fusenn_isa_level();
    const int available = (int)(sizeof(FN(gemm_configs)) / sizeof(FN(gemm_configs)[0])) - 1;
    return level > available ? available : level;
}

/* Few-row calls split off rows past their tile's last whole one (below) only
 * from this many values of B, read in place: with a smaller B the second call
 * costs more than it saves (6x32x32 0.37 -> 0.47 us), and a B that is packed
 * (transposed) would be packed twice (float64 5x784x256 144 -> 202 us). */
#define GEMM_SPLIT_MIN_B (64 * 64)

/* The kernel for this CPU (or FUSENN_ISA) and the shape: narrow when C has few
 * columns, the mid tile for calls that run on one thread anyway, else the wide
 * one. Measured (AVX-512, float32, ratio to NumPy): the mid tile takes 32^3
 * from 1.05x to 1.25x and 64^3 from 0.97x to 1.02x, and wins 5% on one thread
 * at the MLP shapes, but loses 10-25% there on two threads and 14% at 1024^3.
 * With at most GEMM_FEW_ROWS rows a row tile instead, unless C has few columns
 * and at least the narrow tile's rows, or C is under half the row tile's width
 * and its partial panel would be packed (no edge kernel, or a transposed B:
 * float64 1x128x10 with B^T 1.6 -> 2.7 us on the 1-row tile). One thread,
 * AVX-512, float32, B 16 bytes off a cache line, the tiles before -> the row
 * tiles: 1x784x256 28 -> 7.1 us, 4x784x256 29 -> 13, 8x784x256 50 -> 22,
 * 1x256x128 4.0 -> 1.2, 4x128x10 0.72 -> 0.60; 16x16x16 stays narrow (0.17
 * us, 0.23 on the mid tile's edge kernel). Every tile sums each element in
 * the same order, so the choice does not change the bits, even where it
 * depends on the thread count (GEMM_IN_PLACE_B_ROWS, which is therefore
 * limited to the alpha and beta whose stores round alike on every tile). */
static const FN(gemm_config) *FN(gemm_select)(int serial, size_t m, size_t n, size_t k,
                                              int b_rows_contiguous)
{
    const int level = FN(table_level)();
    const FN(gemm_config) *trio = FN(gemm_configs)[level];
    const FN(gemm_config) *full = serial || m <= GEMM_FEW_ROWS ? &trio[1] : &trio[0];
    const int few_columns = n <= (size_t)full->nr / 2;
    if (m <= GEMM_FEW_ROWS && (m < (size_t)trio[2].mr || !few_columns)) {
        /* With a large enough B, the tallest tile no taller than m rows, or
         * than m + 1 from 3 rows (3 rows on the 4-row tile: a pass over B for
         * one row costs about what a 4-row tile's does, 1x100x300 1.8 us,
         * 4x100x300 2.2), the caller splitting off the rows that would pad
         * it with more zero rows; else the lowest tile that takes all rows. */
        const FN(gemm_config) *rows = FN(gemm_row_configs)[level];
        const int split = b_rows_contiguous && n * k >= GEMM_SPLIT_MIN_B;
        const size_t most = split ? m + (m >= 3) : (size_t)-1;
        int tile = 0;
        while (tile < 3 && (size_t)rows[tile].mr < m && (size_t)rows[tile + 1].mr <= most)
            tile++;
        if ((rows[tile].kernel_edge != NULL && b_rows_contiguous) || n > (size_t)rows[tile].nr / 2)
            return &rows[tile];
    }
    return few_columns ? &trio[2] : full;
}

/* A call with few rows streams B, and threads that take column slabs of B
 * each finish it sooner from this many multiply-adds (and two panels), well
 * below the line of fusenn_gemm_is_serial; a one-row call counts as two rows,
 * as loading B costs it more than its multiply-adds. Two threads against
 * one, AVX-512, float32 (B 16 bytes off a cache line, as NumPy's arrays):
 * 1x784x256 7.1 -> 5.2 us, 1x512x256 4.7 -> 3.8, 4x256x256 4.3 -> 3.4,
 * 8x256x128 3.5 -> 3.1, 16x128x128 3.6 -> 3.3; below the line 8x128x128 1.9
 * -> 2.3, 1x256x256 equal. */
#ifndef GEMM_FEW_ROWS_PARALLEL
#define GEMM_FEW_ROWS_PARALLEL (256.0 * 1024)
#endif

/* When the micro-kernel reads A in place instead of from packed panels (the
 * bits are the same either way). Measured on AVX-512, float32:
 *  - C at most this many register tiles wide: each A panel is reused by too
 *    few B panels to repay packing it. 1 and 2 threads: 64^3 85 -> 115 GF/s,
 *    128x128x10 29 -> 59, 128x784x256 141 -> 161 (2t 209 -> 273),
 *    dZ W^T 128x128x256 125 -> 136 (2t 170 -> 223); no shape got slower.
 *  - A's rows contiguous: one thread 1024^3 151 -> 163 GF/s, 2048^3 equal;
 *    more threads then take column slabs (below). Not for a transposed A
 *    (1024^3: 157 -> 126). */
#ifndef GEMM_DIRECT_A_MAX_PANELS
#define GEMM_DIRECT_A_MAX_PANELS 4
#endif

/* Calls too small for two threads (with B's rows contiguous) read B in place
 * too and pack nothing: packing B cost 10% of 64^3. Measured on AVX-512,
 * float32, one thread: 32^3 +14%, 64^3 +12%, 32x64x32 +21%, 96^3 +6%.
 * -DGEMM_DIRECT_B=0 turns it off, for comparison. */
#ifndef GEMM_DIRECT_B
#define GEMM_DIRECT_B 1
#endif

/* One-thread calls of up to this many rows (and GEMM_IN_PLACE_B_COLS columns
 * or more) whose B has its rows on cache lines (the engine's weights) take
 * the small calls' path too: B read in place and the mid tile (8 rows:
 * batches of 64 and 128 fill it). Packing B took longer than reading it in
 * place from L2, and doubled what the call keeps there. AVX-512, float32,
 * one thread, B aligned, X W + b with relu,
 * medians of 6 runs, us: 32x784x256 90 -> 68, 64x784x256 152 -> 134,
 * 96x784x256 218 -> 204, 128x784x256 296 -> 279, 64x256x128 26 -> 23;
 * 256x784x256 572 -> 579 (so not past 128 rows). B 16 bytes off a cache
 * line: every 64-byte load straddles two lines, and 64 rows took 155 -> 164,
 * 128 rows 296 -> 330 (so only aligned). AVX2 and the portable kernels: even
 * (-1% to +1%), but AVX2 at 32 rows (147 -> 138). Only from 128 columns:
 * the convolutions' 48x64x576 and 96x64x288 (one thread, VGG) gained
 * nothing (medians of 8 runs +2% and +1%, within their ranges). */
#ifndef GEMM_IN_PLACE_B_ROWS
#define GEMM_IN_PLACE_B_ROWS 128
#endif
#ifndef GEMM_IN_PLACE_B_COLS
#define GEMM_IN_PLACE_B_COLS 128
#endif
/* ... and only for a B that is one contiguous array (rows n apart) of at most
 * this many bytes, which every row tile then reads from L2. One thread,
 * float32, us, packed -> in place: 64x1024x1024 1.14-1.19 ms -> 1.67-1.93,
 * 128x1024x1024 1.83-1.92 -> 3.37-3.77 (4 MB: from L3 for every row tile);
 * a 128-column slice of rows 512 apart (a GRU's dU), 1792 deep: 28 rows
 * 124-125 -> 150-160, 128 rows 379-387 -> 538-587 (rows 2 KB apart share a
 * quarter of L2's sets); 784x512 (1.6 MB) even; 2048x128 (1 MB) 118-122 ->
 * 95-98. Half of this Xeon's 2 MB L2; Zen 4's is 1 MB (not yet measured). */
#ifndef GEMM_IN_PLACE_B_BYTES
#define GEMM_IN_PLACE_B_BYTES ((size_t)1 << 20)
#endif

/* The depth of the kc blocks a product sums in: its tile's, but for a
 * transposed A (a weight gradient X^T dZ, read a cache line per step) deeper
 * than one block, GEMM_TRANSPOSED_A_KC. Read in place, such an A's lines are
 * shared by the tiles of neighbouring rows, and a 1024-deep tile's lines are
 * out of L1 before the next tile reads them; a 256-deep one's are not. By
 * A's layout and k only, never m, so that any rows of a product have the bits
 * of the whole; a compact k x 1 A (cs_a = 1) is a contiguous row and sums as
 * one. fusenn_gemm_fused and fusenn_gemm_rows_b (the same products with A
 * and B swapped) both take it. AVX-512, ms, 1024 -> 256, one thread:
 * 320x256x3200 (a SimpleRNN's [x h]^T dP) 3.61-3.73 -> 3.25-3.31,
 * 256x128x4096 1.91-1.94 -> 1.61-1.73, 784x256x2048 5.40-5.67 -> 5.09-5.19;
 * two threads: 320x256x3200 1.86-1.94 -> 1.65-1.72, 784x256x2048 2.78-2.88
 * -> 2.55-2.60. A packed (C wider than four panels): 156x512x1792 1.99-2.07
 * -> 1.84-1.85, 2048^3 level, but 2048^3 on AVX2 219-223 -> 226-236. Few rows
 * lose (one tile reads each line): 9x32x8192 0.058 -> 0.065 (two threads
 * 0.070 -> 0.085). A contiguous A keeps its tile's depth: with 256,
 * 1024x256x2048 5.4-6.0 -> 5.9-6.3, 64x128x4096 0.39-0.44 -> 0.43-0.45. */
#ifndef GEMM_TRANSPOSED_A_KC
#define GEMM_TRANSPOSED_A_KC 256
#endif
static size_t FN(kc_for)(const FN(gemm_config) *cfg, size_t k, ptrdiff_t rs_a, ptrdiff_t cs_a)
{
    const int transposed_a = rs_a == 1 && cs_a != 1;
    return transposed_a && k > cfg->kc && cfg->kc > GEMM_TRANSPOSED_A_KC ? GEMM_TRANSPOSED_A_KC
                                                                          : cfg->kc;
}

/* Column slabs (threads reading A in place) are about this many panels wide:
 * small enough to balance two threads when one vCPU is slowed (dynamic
 * schedule), wide enough that each slab reuses its A blocks. Measured (two
 * threads, alternating): 4 and 8 panels within 1-2%, both ahead of one slab
 * per thread by 3-7% at 512^3-2048^3. */
#ifndef GEMM_SLAB_PANELS
#define GEMM_SLAB_PANELS 4
#endif

/* In a call that reads B in place (direct_b), whether the panel nr_eff wide
 * is read in place too, rather than packed: a full one always, a partial one
 * where the ISA has an edge kernel. */
static inline int FN(b_panel_in_place)(const FN(gemm_config) *cfg, size_t nr_eff)
{
    return nr_eff == (size_t)cfg->nr || cfg->kernel_edge != NULL;
}

/* ---- packing ---------------------------------------------------------- */

/* Pack rows [0, mr_eff) x depth [0, kc) of A into one MR-tall panel: kc
 * steps of mr values, zero-padded past mr_eff. */
static void FN(pack_a_panel)(size_t mr_eff, int mr, size_t kc, const real *A,
                             ptrdiff_t rs, ptrdiff_t cs, real *dst)
{
    if (rs == 1) { /* A transposed: each step's mr values are contiguous */
        for (size_t p = 0; p < kc; p++) {
            memcpy(dst + p * (size_t)mr, A + (ptrdiff_t)p * cs, mr_eff * sizeof(real));
            for (size_t i = mr_eff; i < (size_t)mr; i++)
                dst[p * (size_t)mr + i] = 0;
        }
        return;
    }
    if (mr_eff == (size_t)mr && cs == 1) { /* full panel of contiguous rows */
        /* transposed in blocks of 8 steps, as pack_b_panel does for B^T */
        size_t p0 = 0;
        for (; p0 + 8 <= kc; p0 += 8)
            for (size_t i = 0; i < (size_t)mr; i++) {
                const real *a = A + (ptrdiff_t)i * rs + (ptrdiff_t)p0;
                for (size_t t = 0; t < 8; t++)
                    dst[(p0 + t) * (size_t)mr + i] = a[t];
            }
        for (size_t i = 0; i < (size_t)mr; i++)
            for (size_t p = p0; p < kc; p++)
                dst[p * (size_t)mr + i] = A[(ptrdiff_t)i * rs + (ptrdiff_t)p];
        return;
    }
    /* zeros first, in one memset, then a row at a time (zero padding per
     * step was a memset call per step) */
    memset(dst, 0, kc * (size_t)mr * sizeof(real));
    for (size_t i = 0; i < mr_eff; i++) {
        const real *a = A + (ptrdiff_t)i * rs;
        for (size_t p = 0; p < kc; p++)
            dst[p * (size_t)mr + i] = a[(ptrdiff_t)p * cs];
    }
}

/* Transpose blocks of TB x TB in 16-byte registers, which every target has
 * (SSE2 is x86-64's baseline; wider vectors there lower to scalar moves). */
#define TB (16 / (int)sizeof(real))
typedef real FN(tb_vec) __attribute__((vector_size(16)));

/* dst[t * ld_dst + j] = src[t + j * ld_src] for t, j < TB: TB contiguous
 * values of each of TB columns become TB contiguous values of each of TB rows. */
static inline void FN(transpose_block)(const real *src, ptrdiff_t ld_src, real *dst,
                                       size_t ld_dst)
{
    typedef FN(tb_vec) vec;
    vec r[TB], o[TB];
    for (int j = 0; j < TB; j++)
        memcpy(&r[j], src + (ptrdiff_t)j * ld_src, sizeof(vec));
#if defined(FUSENN_DTYPE_F32)
    /* 4 x 4: interleave the rows pairwise, then take 64-bit halves */
    const vec t0 = __builtin_shufflevector(r[0], r[1], 0, 4, 1, 5);
    const vec t1 = __builtin_shufflevector(r[0], r[1], 2, 6, 3, 7);
    const vec t2 = __builtin_shufflevector(r[2], r[3], 0, 4, 1, 5);
    const vec t3 = __builtin_shufflevector(r[2], r[3], 2, 6, 3, 7);
    o[0] = __builtin_shufflevector(t0, t2, 0, 1, 4, 5);
    o[1] = __builtin_shufflevector(t0, t2, 2, 3, 6, 7);
    o[2] = __builtin_shufflevector(t1, t3, 0, 1, 4, 5);
    o[3] = __builtin_shufflevector(t1, t3, 2, 3, 6, 7);
#else
    o[0] = __builtin_shufflevector(r[0], r[1], 0, 2); /* 2 x 2 */
    o[1] = __builtin_shufflevector(r[0], r[1], 1, 3);
#endif
    for (int t = 0; t < TB; t++)
        memcpy(dst + (size_t)t * ld_dst, &o[t], sizeof(vec));
}

/* Pack depth [0, kc) x columns [0, nr_eff) of B into one NR-wide panel. */
static void FN(pack_b_panel)(size_t nr_eff, int nr, size_t kc, const real *B,
                             ptrdiff_t rs, ptrdiff_t cs, real *dst)
{
    if (rs == 1 && cs != 1) {
        /* Columns contiguous (B transposed, as W^T in dX = dZ W^T): TB x TB
         * blocks transposed in registers, the ragged edges value by value.
         * Each column's cache line is read once, whole (PB steps): columns a
         * power-of-two apart share few L1 sets, and revisiting a line missed
         * every time. Scalar copies took 18% of a 128x256 * (784x256)^T. */
        const size_t PB = 64 / sizeof(real);
        const size_t kt = kc / TB * TB, jt = nr_eff / TB * TB;
        for (size_t p0 = 0; p0 < kt; p0 += PB) {
            const size_t p1 = FUSENN_MIN(p0 + PB, kt);
            for (size_t j0 = 0; j0 < jt; j0 += TB)
                for (size_t p = p0; p < p1; p += TB)
                    FN(transpose_block)(B + (ptrdiff_t)p + (ptrdiff_t)j0 * cs, cs,
                                        dst + p * nr + j0, (size_t)nr);
            for (size_t p = p0; p < p1; p++)
                for (size_t j = jt; j < nr_eff; j++)
                    dst[p * nr + j] = B[(ptrdiff_t)p + (ptrdiff_t)j * cs];
        }
        for (size_t p = kt; p < kc; p++)
            for (size_t j = 0; j < nr_eff; j++)
                dst[p * nr + j] = B[(ptrdiff_t)p + (ptrdiff_t)j * cs];
    } else if (cs == 1) { /* rows contiguous: a copy per step, which vectorises */
        for (size_t p = 0; p < kc; p++) {
            const real *row = B + (ptrdiff_t)p * rs;
            real *d = dst + p * nr;
            for (size_t j = 0; j < nr_eff; j++)
                d[j] = row[j];
        }
    } else {
        for (size_t p = 0; p < kc; p++)
            for (size_t j = 0; j < nr_eff; j++)
                dst[p * nr + j] = B[(ptrdiff_t)p * rs + (ptrdiff_t)j * cs];
    }
    if (nr_eff < (size_t)nr)
        for (size_t p = 0; p < kc; p++)
            for (size_t j = nr_eff; j < (size_t)nr; j++)
                dst[p * nr + j] = 0;
}

/* ---- the store: alpha, beta, bias, activation ------------------------- */


/* Write the mr_eff x nr_eff corner of tile ab (row stride nr) to C: edge
 * tiles and strided C, which the micro-kernel's fused store does not take.
 * Contiguous rows of C are finished in place; strided ones in a row buffer. */
static void FN(store_tile)(size_t mr_eff, size_t nr_eff, int nr, const real *ab,
                           real *C, ptrdiff_t rs_c, ptrdiff_t cs_c,
                           const real *bias, const FN(store_params) *sp)
{
    real row[GEMM_MAX_NR];
    const int epilogue = sp->last && (bias || sp->act != FUSENN_ACT_IDENTITY);
    if (sp->alpha == 1 && sp->beta == 0 && !epilogue && cs_c == 1) {
        /* the common edge tile (a plain product): a copy per row */
        for (size_t i = 0; i < mr_eff; i++)
            memcpy(C + (ptrdiff_t)i * rs_c, ab + i * (size_t)nr, nr_eff * sizeof(real));
        return;
    }
    for (size_t i = 0; i < mr_eff; i++) {
        real *c = C + (ptrdiff_t)i * rs_c;
        real *dst = cs_c == 1 ? c : row; /* contiguous, so these loops vectorise */
        const real *t = ab + i * (size_t)nr;
        if (sp->beta == 0) { /* beta = 0 never reads C, which may hold NaN */
            for (size_t j = 0; j < nr_eff; j++)
                dst[j] = sp->alpha * t[j];
        } else if (cs_c == 1) {
            for (size_t j = 0; j < nr_eff; j++)
                dst[j] = sp->alpha * t[j] + sp->beta * c[j];
        } else {
            for (size_t j = 0; j < nr_eff; j++)
                dst[j] = sp->alpha * t[j] + sp->beta * c[(ptrdiff_t)j * cs_c];
        }
        if (sp->last) {
            if (bias)
                for (size_t j = 0; j < nr_eff; j++)
                    dst[j] += bias[j];
            FN(activate_row)(sp->act, nr_eff, dst, dst);
        }
        if (dst == row)
            for (size_t j = 0; j < nr_eff; j++)
                c[(ptrdiff_t)j * cs_c] = row[j];
    }
}

/* k == 0: C = act(beta C + bias). */
static void FN(gemm_scale_only)(size_t m, size_t n, real beta, real *C, ptrdiff_t rs_c,
                                ptrdiff_t cs_c, const real *bias, fusenn_activation act)
{
    for (size_t i = 0; i < m; i++) {
        for (size_t j = 0; j < n; j++) {
            real *c = C + (ptrdiff_t)i * rs_c + (ptrdiff_t)j * cs_c;
            real v = beta == 0 ? (real)0 : beta * *c;
            if (bias)
                v += bias[j];
            FN(activate_row)(act, 1, &v, &v);
            *c = v;
        }
    }
}

/* ---- packing buffers ---------------------------------------------------- */

/* Each calling thread keeps one buffer that only grows; its size is bounded
 * by the block sizes (not by the matrices), so steady-state calls allocate
 * nothing. It holds the shared B block followed by one A block per thread.
 * A pthread key frees it when the thread exits. */
typedef struct {
    real *ptr;
    size_t len;
} FN(pack_cache);

static pthread_key_t FN(pack_key);
static pthread_once_t FN(pack_key_once) = PTHREAD_ONCE_INIT;

static void FN(pack_cache_free)(void *p)
{
    FN(pack_cache) *cache = p;
    fusenn_aligned_free(cache->ptr);
    fusenn_aligned_free(cache);
}

static void FN(pack_key_create)(void)
{
    pthread_key_create(&FN(pack_key), FN(pack_cache_free));
}

static real *FN(pack_buffer)(size_t len)
{
    pthread_once(&FN(pack_key_once), FN(pack_key_create));
    FN(pack_cache) *cache = pthread_getspecific(FN(pack_key));
    if (cache == NULL) {
        cache = fusenn_aligned_alloc(sizeof *cache);
        if (cache == NULL)
            return NULL;
        cache->ptr = NULL;
        cache->len = 0;
        if (pthread_setspecific(FN(pack_key), cache) != 0) {
            fusenn_aligned_free(cache);
            return NULL;
        }
    }
    if (cache->len < len) {
        fusenn_aligned_free(cache->ptr);
        cache->ptr = fusenn_aligned_alloc(len * sizeof(real));
        cache->len = cache->ptr ? len : 0;
    }
    return cache->ptr;
}

/* ---- the blocked product ------------------------------------------------ */

/* Multiply the mc x kc block of A by the packed kc x nc block of B (Bp), tiles
 * with jr in [jr0, jr1) panels, and store into C. A is packed (Ap, MR-tall
 * panels) unless A_direct is given: then full MR-row panels are read in place
 * from A_direct (strides rs_a, cs_a) and only the partial last panel is packed,
 * at its place in Ap. Likewise B: with B_direct (contiguous rows, rs_b apart),
 * full NR-wide panels are read in place and only the partial one is packed,
 * unless the configuration has an edge kernel, which reads that one in place
 * too. With B_first instead (B's block in place, rows rs_b apart), the first
 * tile of each full panel reads it there and packs it into Bp as it goes; the
 * other tiles read Bp. */
static void FN(macro_kernel)(const FN(gemm_config) *cfg, size_t mc, size_t nc, size_t kc,
                             const real *Ap, const real *A_direct, ptrdiff_t rs_a,
                             ptrdiff_t cs_a, real *Bp, const real *B_direct,
                             const real *B_first, ptrdiff_t rs_b, size_t jp0, size_t jp1,
                             real *C, ptrdiff_t rs_c, ptrdiff_t cs_c,
                             const real *bias, const FN(store_params) *sp)
{
    const size_t mr = (size_t)cfg->mr, nr = (size_t)cfg->nr;
    real ab[GEMM_MAX_TILE] __attribute__((aligned(64)));
    const FN(store_params) to_tile = {1, 0, FUSENN_ACT_IDENTITY, 0};
    for (size_t jp = jp0; jp < jp1; jp++) {
        size_t jr = jp * nr, nr_eff = FUSENN_MIN(nr, nc - jr);
        const real *bias_jr = bias ? bias + jr : NULL;
        const int b_in_place = B_direct != NULL && FN(b_panel_in_place)(cfg, nr_eff);
        const int edge = b_in_place && nr_eff < nr; /* for the edge kernel */
        const real *b_panel = b_in_place ? B_direct + jr : Bp + jr * kc;
        const ptrdiff_t panel_step = b_in_place ? rs_b : (ptrdiff_t)nr;
        for (size_t ir = 0; ir < mc; ir += mr) {
            /* the panel's first tile packs it, reading B in place */
            const int packing = B_first != NULL && nr_eff == nr && ir == 0;
            const real *b = packing ? B_first + jr : b_panel;
            const ptrdiff_t b_step = packing ? rs_b : panel_step;
            real *b_pack = packing ? Bp + jr * kc : NULL;
            size_t mr_eff = FUSENN_MIN(mr, mc - ir);
            real *c = C + (ptrdiff_t)ir * rs_c + (ptrdiff_t)jr * cs_c;
            const int direct = A_direct != NULL && mr_eff == mr;
            const real *a = direct ? A_direct + (ptrdiff_t)ir * rs_a : Ap + ir * kc;
            /* with B read in place, one kernel takes every tile: a packed
             * panel is A with strides (1, mr), B with step nr */
            FN(ukernel_fn) kernel = edge       ? cfg->kernel_edge
                                  : packing  ? cfg->kernel_pack_b
                                  : B_direct ? cfg->kernel_direct_ab
                                  : direct   ? cfg->kernel_direct : cfg->kernel;
            const ptrdiff_t a_rs = direct ? rs_a : 1, a_cs = direct ? cs_a : (ptrdiff_t)mr;
            if (mr_eff == mr && (nr_eff == nr || edge) && cs_c == 1) {
                kernel(kc, a, a_rs, a_cs, b, b_step, c, rs_c, sp, bias_jr, nr_eff, b_pack);
            } else { /* edge tile or strided C: via a temporary tile */
                kernel(kc, a, a_rs, a_cs, b, b_step, ab, (ptrdiff_t)nr, &to_tile, NULL, nr_eff,
                       b_pack);
                FN(store_tile)(mr_eff, nr_eff, cfg->nr, ab, c, rs_c, cs_c, bias_jr, sp);
            }
        }
    }
}

/* One GEMM call's operands and blocking, shared by the threads working on it. */
typedef struct {
    const FN(gemm_config) *cfg;
    size_t m, n, k;
    real alpha, beta;
    const real *A, *B, *bias;
    ptrdiff_t rs_a, cs_a, rs_b, cs_b, rs_c, cs_c;
    real *C;
    fusenn_activation act;
    real *Bp, *Ap;       /* packed B block; A block(s) */
    size_t a_len;        /* elements per A block */
    int split_columns;   /* threads share each A block and split its columns */
    int direct_a;        /* read A in place, packing only partial panels (small n) */
    int direct_b;        /* read B in place, packing only a partial panel (small calls) */
    int pack_b_first;    /* full B panels packed by the first tile that reads them */
} FN(gemm_call);

/* Pack the MR-tall panels [ip0, ip1) of the mc x kc block of A at (ic, pc) into
 * Ap; with direct A, only a partial last panel (the kernel reads the others in
 * place). */
static void FN(pack_a_block)(const FN(gemm_call) *g, size_t ic, size_t pc, size_t mc,
                             size_t kc, size_t ip0, size_t ip1, real *Ap)
{
    const size_t mr = (size_t)g->cfg->mr;
    for (size_t ip = ip0; ip < ip1; ip++) {
        const size_t mr_eff = FUSENN_MIN(mr, mc - ip * mr);
        if (g->direct_a && mr_eff == mr)
            continue;
        FN(pack_a_panel)(mr_eff, g->cfg->mr, kc,
                         g->A + (ptrdiff_t)(ic + ip * mr) * g->rs_a + (ptrdiff_t)pc * g->cs_a,
                         g->rs_a, g->cs_a, Ap + ip * mr * kc);
    }
}

/* Pack the NR-wide panels [jp0, jp1) of the kc x nc block of B at (pc, jc) into Bp. */
static void FN(pack_b_block)(const FN(gemm_call) *g, size_t pc, size_t jc, size_t kc,
                             size_t nc, size_t jp0, size_t jp1)
{
    const size_t nr = (size_t)g->cfg->nr;
    for (size_t jp = jp0; jp < jp1; jp++) {
        const size_t nr_eff = FUSENN_MIN(nr, nc - jp * nr);
        if (g->direct_b && FN(b_panel_in_place)(g->cfg, nr_eff))
            continue; /* read in place */
        if (g->pack_b_first && nr_eff == nr)
            continue; /* packed by the macro-kernel */
        FN(pack_b_panel)(nr_eff, g->cfg->nr, kc,
                         g->B + (ptrdiff_t)pc * g->rs_b + (ptrdiff_t)(jc + jp * nr) * g->cs_b,
                         g->rs_b, g->cs_b, g->Bp + jp * nr * kc);
    }
}

/* Where the block of A at (ic, pc) lies, when the kernel reads it in place. */
static const real *FN(direct_a)(const FN(gemm_call) *g, size_t ic, size_t pc)
{
    return g->direct_a ? g->A + (ptrdiff_t)ic * g->rs_a + (ptrdiff_t)pc * g->cs_a : NULL;
}

/* Where the block of B at (pc, jc) lies, when the kernel reads it in place. */
static const real *FN(direct_b)(const FN(gemm_call) *g, size_t pc, size_t jc)
{
    return g->direct_b ? g->B + (ptrdiff_t)pc * g->rs_b + (ptrdiff_t)jc : NULL;
}

/* Row block ib of C's columns [jc, jc + nc) at depth block [pc, pc + kc): pack
 * its A (into this thread's Ap) and multiply it by the packed B block, which
 * the first row block packs as it goes (pack_b_first: one thread, in order). */
static void FN(gemm_row_block)(const FN(gemm_call) *g, size_t ib, size_t pc, size_t jc,
                               size_t kc, size_t nc, const FN(store_params) *sp, real *Ap)
{
    const size_t mr = (size_t)g->cfg->mr, MC = g->cfg->mc, nr = (size_t)g->cfg->nr;
    const size_t ic = ib * MC, mc = FUSENN_MIN(MC, g->m - ic);
    FN(pack_a_block)(g, ic, pc, mc, kc, 0, (mc + mr - 1) / mr, Ap);
    const real *B_first =
        g->pack_b_first && ib == 0 ? g->B + (ptrdiff_t)pc * g->rs_b + (ptrdiff_t)jc : NULL;
    FN(macro_kernel)(g->cfg, mc, nc, kc, Ap, FN(direct_a)(g, ic, pc), g->rs_a, g->cs_a,
                     g->Bp, FN(direct_b)(g, pc, jc), B_first, g->rs_b, 0, (nc + nr - 1) / nr,
                     g->C + (ptrdiff_t)ic * g->rs_c + (ptrdiff_t)jc * g->cs_c,
                     g->rs_c, g->cs_c, g->bias ? g->bias + jc : NULL, sp);
}

/* The blocked loops, run by every thread of the team, or by the caller alone
 * (serial: no parallel region, and no worksharing loops, which would still
 * call the OpenMP runtime). split_columns is never set when serial. */
static void FN(gemm_blocked)(const FN(gemm_call) *g, int tid, int serial)
{
    const FN(gemm_config) *cfg = g->cfg;
    const size_t mr = (size_t)cfg->mr, nr = (size_t)cfg->nr;
    const size_t KC = cfg->kc, MC = cfg->mc, NC = cfg->nc;
    const size_t m = g->m, n = g->n, k = g->k, m_blocks = (m + MC - 1) / MC;
    real *Ap = g->Ap + (g->split_columns ? 0 : (size_t)tid * g->a_len);
    for (size_t jc = 0; jc < n; jc += NC) {
        const size_t nc = FUSENN_MIN(NC, n - jc);
        const size_t n_panels = (nc + nr - 1) / nr;
        const real *bias_jc = g->bias ? g->bias + jc : NULL;
        for (size_t pc = 0; pc < k; pc += KC) {
            const size_t kc = FUSENN_MIN(KC, k - pc);
            const FN(store_params) sp = {g->alpha, pc == 0 ? g->beta : (real)1, g->act,
                                         pc + kc == k};
            if (serial) { /* even an orphaned static loop calls libgomp (and a barrier) */
                FN(pack_b_block)(g, pc, jc, kc, nc, 0, n_panels);
            } else {
#pragma omp for schedule(static)
                for (size_t jp = 0; jp < n_panels; jp++)
                    FN(pack_b_block)(g, pc, jc, kc, nc, jp, jp + 1);
            }

            if (g->split_columns) {
                for (size_t ic = 0; ic < m; ic += MC) {
                    const size_t mc = FUSENN_MIN(MC, m - ic);
                    const size_t m_panels = (mc + mr - 1) / mr;
#pragma omp for schedule(static)
                    for (size_t ip = 0; ip < m_panels; ip++)
                        FN(pack_a_block)(g, ic, pc, mc, kc, ip, ip + 1, Ap);
#pragma omp for schedule(static)
                    for (size_t jp = 0; jp < n_panels; jp++)
                        FN(macro_kernel)(cfg, mc, nc, kc, Ap, FN(direct_a)(g, ic, pc),
                                         g->rs_a, g->cs_a, g->Bp, FN(direct_b)(g, pc, jc),
                                         NULL, g->rs_b, jp, jp + 1,
                                         g->C + (ptrdiff_t)ic * g->rs_c + (ptrdiff_t)jc * g->cs_c,
                                         g->rs_c, g->cs_c, bias_jc, &sp);
                }
            } else if (serial) { /* an orphaned dynamic loop mallocs a work share */
                for (size_t ib = 0; ib < m_blocks; ib++)
                    FN(gemm_row_block)(g, ib, pc, jc, kc, nc, &sp, Ap);
            } else {
#pragma omp for schedule(dynamic, 1)
                for (size_t ib = 0; ib < m_blocks; ib++)
                    FN(gemm_row_block)(g, ib, pc, jc, kc, nc, &sp, Ap);
            }
        }
    }
}

/* A call cut into slabs of whole rows or column panels of C, each run by the
 * serial loops with the buffers of the thread that takes it. */
typedef struct {
    const FN(gemm_call) *g;
    int by_rows;
    size_t n_slabs, units, unit, end; /* slab s: units [chunk(s), chunk(s + 1)) */
    real *buf;                        /* per_thread elements per thread: B, then A */
    size_t per_thread, b_len;
} FN(gemm_slabs);

static size_t FN(gemm_slab_range)(const void *ctx, size_t first, size_t last)
{
    const FN(gemm_slabs) *s = ctx;
    const FN(gemm_call) *g = s->g;
    for (size_t t = first; t < last; t++) {
        const size_t lo = fusenn_chunk_start(t, s->n_slabs, s->units) * s->unit;
        const size_t hi = FUSENN_MIN(fusenn_chunk_start(t + 1, s->n_slabs, s->units) * s->unit,
                                     s->end);
        if (lo >= hi)
            continue;
        FN(gemm_call) slab = *g;
        if (s->by_rows) {
            slab.m = hi - lo;
            slab.A = g->A + (ptrdiff_t)lo * g->rs_a;
            slab.C = g->C + (ptrdiff_t)lo * g->rs_c;
        } else {
            slab.n = hi - lo;
            slab.B = g->B + (ptrdiff_t)lo * g->cs_b;
            slab.C = g->C + (ptrdiff_t)lo * g->cs_c;
            slab.bias = g->bias ? g->bias + lo : NULL;
        }
        slab.Bp = s->buf + (size_t)fusenn_thread_num() * s->per_thread;
        slab.Ap = slab.Bp + s->b_len;
        slab.split_columns = 0;
        FN(gemm_blocked)(&slab, 0, 1);
    }
    return 0;
}

int FN(fusenn_gemm_fused)(size_t m, size_t n, size_t k, real alpha,
                          const real *A, ptrdiff_t rs_a, ptrdiff_t cs_a,
                          const real *B, ptrdiff_t rs_b, ptrdiff_t cs_b, real beta,
                          real *C, ptrdiff_t rs_c, ptrdiff_t cs_c,
                          const real *bias, fusenn_activation act, int nthreads)
{
    if (m == 0 || n == 0)
        return FUSENN_OK;
    if (k == 0 || alpha == 0) {
        FN(gemm_scale_only)(m, n, beta, C, rs_c, cs_c, bias, act);
        return FUSENN_OK;
    }
    nthreads = fusenn_team_size(nthreads); /* 1 while helpers wait for a CPU */
    /* in_place_b (GEMM_IN_PLACE_B_ROWS) runs on one thread, as a small call
     * past GEMM_FEW_ROWS does, and takes its tiles and B in place: other
     * tiles than with two threads, but every tile sums in the same order.
     * Only for C = A B and C += A B (all the engine's calls): a tile moved to
     * or from the edge is stored by store_tile instead of the kernel, which
     * rounds alpha t + beta c differently for other alpha and beta. */
    const int small = fusenn_gemm_is_serial(m, n, k);
    const int in_place_b = nthreads <= 1 && m > GEMM_FEW_ROWS && m <= GEMM_IN_PLACE_B_ROWS
                        && n >= GEMM_IN_PLACE_B_COLS && cs_b == 1 && (uintptr_t)B % 64 == 0
                        && rs_b == (ptrdiff_t)n && k * n * sizeof(real) <= GEMM_IN_PLACE_B_BYTES
                        && (size_t)rs_b * sizeof(real) % 64 == 0
                        && alpha == 1 && (beta == 0 || beta == 1);
    const FN(gemm_config) *cfg = FN(gemm_select)(small || in_place_b, m, n, k, cs_b == 1);
    const size_t kc_depth = FN(kc_for)(cfg, k, rs_a, cs_a);
    FN(gemm_config) transposed_a_cfg; /* cfg, summing in blocks of that depth */
    if (kc_depth != cfg->kc) {
        transposed_a_cfg = *cfg;
        transposed_a_cfg.kc = kc_depth;
        cfg = &transposed_a_cfg;
    }
    const size_t mr = (size_t)cfg->mr, nr = (size_t)cfg->nr;
    /* Few rows that would leave a tile padded with two or more zero rows:
     * the rows past the last whole tile go to a call of their own, with a
     * tile of their height (one more pass over B, but neither packing nor
     * wasted multiply-adds). One thread, AVX-512, B 784x256: 5 rows (4 + 1)
     * 29 -> 20 us, 9 rows (8 + 1) 44 -> 34; B 64x64: 5 rows 0.80 -> 0.69 us. */
    if (m <= GEMM_FEW_ROWS && m > mr && m % mr != 0 && m % mr < mr - 1
        && n * k >= GEMM_SPLIT_MIN_B && cs_b == 1) {
        const size_t head = m - m % mr;
        int rc = FN(fusenn_gemm_fused)(head, n, k, alpha, A, rs_a, cs_a, B, rs_b, cs_b, beta,
                                       C, rs_c, cs_c, bias, act, nthreads);
        if (rc != FUSENN_OK)
            return rc;
        return FN(fusenn_gemm_fused)(m - head, n, k, alpha, A + (ptrdiff_t)head * rs_a, rs_a,
                                     cs_a, B, rs_b, cs_b, beta, C + (ptrdiff_t)head * rs_c,
                                     rs_c, cs_c, bias, act, nthreads);
    }
    const int serial = small && !(m <= GEMM_FEW_ROWS && n >= 2 * nr
                                  && (double)FUSENN_MAX(m, 2) * (double)n * (double)k
                                         >= GEMM_FEW_ROWS_PARALLEL);

    const int nt = serial || nthreads < 1 ? 1 : nthreads;
    const size_t m_blocks = (m + cfg->mc - 1) / cfg->mc;
    const size_t kc_max = FUSENN_MIN(cfg->kc, k);
    FN(gemm_call) g = {
        .cfg = cfg, .m = m, .n = n, .k = k, .alpha = alpha, .beta = beta,
        .A = A, .B = B, .bias = bias, .rs_a = rs_a, .cs_a = cs_a, .rs_b = rs_b, .cs_b = cs_b,
        .rs_c = rs_c, .cs_c = cs_c, .C = C, .act = act,
        .a_len = kc_max * ((FUSENN_MIN(cfg->mc, m) + mr - 1) / mr * mr),
        /* Row blocks that do not divide evenly between the threads: all threads
         * pack each A block together and split its columns. Otherwise each
         * thread takes whole row blocks with its own A. */
        .split_columns = m_blocks % (size_t)nt != 0,
        .direct_a = n <= GEMM_DIRECT_A_MAX_PANELS * nr || cs_a == 1,
        .direct_b = GEMM_DIRECT_B && (serial || m <= GEMM_FEW_ROWS || in_place_b) && cs_b == 1,
    };
    const size_t b_len = kc_max * ((FUSENN_MIN(cfg->nc, n) + nr - 1) / nr * nr);
    /* Threads that read A in place need not share anything: each takes
     * slabs of whole column panels (about GEMM_SLAB_PANELS, at least one per
     * thread, handed out by fusenn_parallel_ranges: a thread that starts late
     * finds its slabs done by the others) and runs the serial loops on each with
     * its own buffers, with no barrier per k block (they cost ~10% of a
     * two-thread 128x784x256). Against splitting rows over a shared packed B,
     * two threads: 512x784x256 +47%, 1024^3 +10%, 2048^3 +6%, 512^3 +16%.
     * Same tiles, same sums: the same bits. */
    const size_t n_panels = (n + nr - 1) / nr;
    /* Slabs of rows instead (then each thread packs all of B, but reads only
     * its part of A) where A is the operand that costs more to read: C much
     * taller than wide, a transposed A (a cache line per k step) taller than
     * wide, or too few column panels to go round. Two threads, alternating,
     * best times: 256x128x128 (A^T) +19%, 784x256x128 (A^T) +7-9%,
     * 2048x128x128 +11-15%, 1024x256x10 +24%, X^T dZ 784x128x256 +2-17%;
     * columns stay ahead at 512x784x256 and 1024x1024x512 (m = 2n; rows -2
     * to -3%). */
    const size_t m_tiles = (m + mr - 1) / mr;
    const int by_rows = m_tiles >= (size_t)nt
                     && (n_panels < (size_t)nt || m >= 4 * n || (cs_a != 1 && m > n));
    const int slabs = nt > 1 && g.direct_a && (by_rows || n_panels >= (size_t)nt);
    /* A thread that has the B block to itself packs its full panels in its
     * first row block's kernels (B's rows contiguous; serial loops, in order).
     * One thread: 128x784x256 +5%, 128x256x128 +8%, 784x128x256 (X^T dZ) +2%;
     * two threads +4-8% on those. */
    g.pack_b_first = (nt == 1 || slabs) && !g.direct_b && cs_b == 1;
    const size_t per_thread = (b_len + g.a_len + 15) / 16 * 16; /* slabs start 64-byte aligned */
    real *buf = FN(pack_buffer)(slabs ? per_thread * (size_t)nt
                                      : b_len + g.a_len * (size_t)(g.split_columns ? 1 : nt));
    if (buf == NULL)
        return FUSENN_ENOMEM;
    g.Bp = buf;
    g.Ap = buf + b_len;

    if (nt == 1) {
        FN(gemm_blocked)(&g, 0, 1); /* no parallel region: small calls pay nothing for it */
        return FUSENN_OK;
    }
    if (slabs) {
        /* rows: one slab per thread (each packs all of B); columns: about
         * GEMM_SLAB_PANELS panels each */
        const size_t units = by_rows ? m_tiles : n_panels, unit = by_rows ? mr : nr;
        const size_t end = by_rows ? m : n;
        const size_t n_slabs =
            by_rows ? (size_t)nt : FUSENN_MAX((size_t)nt, n_panels / GEMM_SLAB_PANELS);
        const FN(gemm_slabs) s = {&g, by_rows, n_slabs, units, unit, end, buf, per_thread, b_len};
        fusenn_parallel_ranges(nt, n_slabs, FN(gemm_slab_range), &s);
        return FUSENN_OK;
    }
    const int caller_cpu = fusenn_current_cpu();
#pragma omp parallel num_threads(nt)
    {
        fusenn_leave_cpu(caller_cpu);
        FN(gemm_blocked)(&g, fusenn_thread_num(), 0);
    }
    return FUSENN_OK;
}

int FN(fusenn_gemm)(size_t m, size_t n, size_t k, real alpha,
                    const real *A, ptrdiff_t rs_a, ptrdiff_t cs_a,
                    const real *B, ptrdiff_t rs_b, ptrdiff_t cs_b, real beta,
                    real *C, ptrdiff_t rs_c, ptrdiff_t cs_c, int nthreads)
{
    return FN(fusenn_gemm_fused)(m, n, k, alpha, A, rs_a, cs_a, B, rs_b, cs_b, beta,
                                 C, rs_c, cs_c, NULL, FUSENN_ACT_IDENTITY, nthreads);
}

/* ---- B packed once, for many products ------------------------------------ */

/* The recurrent layers multiply by the same recurrent kernel at every time
 * step: packing it once per pass, not once per step, saves T - 1 packings.
 * The packed form is each kc block's NR-wide panels (zero-padded), one block
 * after the other, for the tile gemm_select picks for one thread and about m
 * rows; a product may then take any rows. Every tile of a level sums each
 * element over the same kc blocks in the same order, so the product has the
 * bits of fusenn_gemm on the same operands, A's rows contiguous (the only
 * kind the recurrent layers pass; a deep transposed A would take kc_for's
 * blocks there). */
/* The packed form of a k x n B for tile cfg: k steps of whole NR panels. */
static FN(gemm_packed) FN(packed_form)(const FN(gemm_config) *cfg, size_t n, size_t k)
{
    const size_t nr = (size_t)cfg->nr;
    FN(gemm_packed) p = {cfg, n, k, k * ((n + nr - 1) / nr * nr)};
    return p;
}

FN(gemm_packed) FN(fusenn_gemm_packed_for)(size_t m, size_t n, size_t k)
{
    return FN(packed_form)(FN(gemm_select)(1, FUSENN_MAX(m, (size_t)1), n, k, 1), n, k);
}

/* The most elements the packed form takes for any m' <= m rows: the tile, so
 * its NR padding, changes only up to GEMM_FEW_ROWS rows. A workspace sized
 * for a batch must hold the packing of any smaller one. */
size_t FN(fusenn_gemm_packed_len_upto)(size_t m, size_t n, size_t k)
{
    size_t len = FN(fusenn_gemm_packed_for)(m, n, k).len;
    for (size_t rows = 1; rows <= FUSENN_MIN(m, (size_t)GEMM_FEW_ROWS); rows++)
        len = FUSENN_MAX(len, FN(fusenn_gemm_packed_for)(rows, n, k).len);
    return len;
}

void FN(fusenn_gemm_pack_b)(const FN(gemm_packed) *p, const real *B, ptrdiff_t rs_b,
                            ptrdiff_t cs_b, real *Bp)
{
    const FN(gemm_config) *cfg = p->cfg;
    const size_t nr = (size_t)cfg->nr, n_panels = (p->n + nr - 1) / nr;
    for (size_t pc = 0; pc < p->k; pc += cfg->kc) {
        const size_t kc = FUSENN_MIN(cfg->kc, p->k - pc);
        real *block = Bp + pc * n_panels * nr;
        for (size_t jp = 0; jp < n_panels; jp++)
            FN(pack_b_panel)(FUSENN_MIN(nr, p->n - jp * nr), cfg->nr, kc,
                             B + (ptrdiff_t)pc * rs_b + (ptrdiff_t)(jp * nr) * cs_b, rs_b, cs_b,
                             block + jp * nr * kc);
    }
}

int FN(fusenn_gemm_with_packed_b)(const FN(gemm_packed) *p, size_t m, real alpha,
                                  const real *A, ptrdiff_t rs_a, ptrdiff_t cs_a,
                                  const real *Bp, real beta, real *C, ptrdiff_t rs_c,
                                  const real *bias)
{
    const FN(gemm_config) *cfg = p->cfg;
    const size_t mr = (size_t)cfg->mr, nr = (size_t)cfg->nr, n = p->n, k = p->k;
    const size_t n_panels = (n + nr - 1) / nr, full = m / mr * mr;
    if (m == 0 || n == 0)
        return FUSENN_OK;
    if (k == 0) {
        FN(gemm_scale_only)(m, n, beta, C, rs_c, 1, bias, FUSENN_ACT_IDENTITY);
        return FUSENN_OK;
    }
    /* A is read in place but for a partial last panel, packed here */
    real *Ap = full < m ? FN(pack_buffer)(mr * FUSENN_MIN(cfg->kc, k)) : NULL;
    if (full < m && Ap == NULL)
        return FUSENN_ENOMEM;
    for (size_t pc = 0; pc < k; pc += cfg->kc) {
        const size_t kc = FUSENN_MIN(cfg->kc, k - pc);
        const FN(store_params) sp = {alpha, pc == 0 ? beta : (real)1, FUSENN_ACT_IDENTITY,
                                     pc + kc == k};
        real *block = (real *)Bp + pc * n_panels * nr;
        const real *A_pc = A + (ptrdiff_t)pc * cs_a;
        for (size_t ic = 0; ic < full; ic += cfg->mc) /* MC rows of A stay in L2 */
            FN(macro_kernel)(cfg, FUSENN_MIN(cfg->mc, full - ic), n, kc, NULL,
                             A_pc + (ptrdiff_t)ic * rs_a, rs_a, cs_a, block, NULL, NULL, 0, 0,
                             n_panels, C + (ptrdiff_t)ic * rs_c, rs_c, 1, bias, &sp);
        if (full < m) {
            FN(pack_a_panel)(m - full, cfg->mr, kc, A_pc + (ptrdiff_t)full * rs_a, rs_a, cs_a,
                             Ap);
            FN(macro_kernel)(cfg, m - full, n, kc, Ap, NULL, rs_a, cs_a, block, NULL, NULL, 0,
                             0, n_panels, C + (ptrdiff_t)full * rs_c, rs_c, 1, bias, &sp);
        }
    }
    return FUSENN_OK;
}

/* This CPU's (or FUSENN_ISA's) wide, mid and narrow tiles. */
static const FN(gemm_config) *FN(level_tiles)(void)
{
    return FN(gemm_configs)[FN(table_level)()];
}

/* The packed form for fusenn_gemm_indirect: the one-thread tile of the
 * level whose panels C's n columns fill best (the same bits whichever):
 * the wide tile from its width on, as it reads each row's taps once for all
 * of them (VGG's 64-filter convolutions on the mid tile's two panels were
 * slower than im2col). */
FN(gemm_packed) FN(fusenn_gemm_packed_for_rows)(size_t n, size_t k)
{
    const FN(gemm_config) *trio = FN(level_tiles)();
    return FN(packed_form)(n >= (size_t)trio[0].nr       ? &trio[0]
                           : n > (size_t)trio[1].nr / 2 ? &trio[1] : &trio[2],
                           n, k);
}

size_t FN(fusenn_gemm_packed_mr)(const FN(gemm_packed) *p)
{
    return (size_t)((const FN(gemm_config) *)p->cfg)->mr;
}

int FN(fusenn_gemm_indirect)(const FN(gemm_packed) *p, size_t m, size_t run,
                             const real *const *rows, const real *Bp, real *C, ptrdiff_t rs_c,
                             const real *bias, fusenn_activation act)
{
    const FN(gemm_config) *cfg = p->cfg;
    const size_t mr = (size_t)cfg->mr, nr = (size_t)cfg->nr, n = p->n, k = p->k;
    if (m == 0 || n == 0)
        return FUSENN_OK;
    if (k == 0) {
        FN(gemm_scale_only)(m, n, 0, C, rs_c, 1, bias, act);
        return FUSENN_OK;
    }
    if (run == 0 || k % run != 0)
        return FUSENN_EINVAL;
    const size_t n_panels = (n + nr - 1) / nr, taps = k / run;
    real ab[GEMM_MAX_TILE] __attribute__((aligned(64)));
    const FN(store_params) to_tile = {1, 0, FUSENN_ACT_IDENTITY, 0};
    for (size_t pc = 0; pc < k; pc += cfg->kc) {
        const size_t kc = FUSENN_MIN(cfg->kc, k - pc);
        const FN(store_params) sp = {1, pc == 0 ? 0 : (real)1, act, pc + kc == k};
        const real *block = Bp + pc * n_panels * nr;
        /* tile by tile, its panels in turn: the tile's rows, read from where
         * they lie, stay in L1 for every panel of B */
        for (size_t ir = 0; ir < m; ir += mr) {
            const size_t mr_eff = FUSENN_MIN(mr, m - ir);
            const real *const *tile = rows + (ir / mr * taps + pc / run) * mr;
            for (size_t jp = 0; jp < n_panels; jp++) {
                const size_t jr = jp * nr, nr_eff = FUSENN_MIN(nr, n - jr);
                const real *b = block + jr * kc, *bias_jr = bias ? bias + jr : NULL;
                real *c = C + (ptrdiff_t)ir * rs_c + (ptrdiff_t)jr;
                if (mr_eff == mr && nr_eff == nr) {
                    cfg->kernel_indirect(kc, tile, run, pc % run, b, c, rs_c, &sp, bias_jr);
                } else { /* edge tile: via a temporary tile */
                    cfg->kernel_indirect(kc, tile, run, pc % run, b, ab, (ptrdiff_t)nr,
                                         &to_tile, NULL);
                    FN(store_tile)(mr_eff, nr_eff, cfg->nr, ab, c, rs_c, 1, bias_jr, &sp);
                }
            }
        }
    }
    return FUSENN_OK;
}

/* Whole tiles, and fewer rows than the wide tile has columns: a convolution's
 * dW with as many filters (patches^T dZ through an im2col copy) takes the wide
 * tile, whose 24 accumulators gained more than the copy costs. One thread,
 * VGG-style dW, ms, copy -> by pointer: 32 filters 9.5-10.4 -> 9.0-9.1; 64
 * filters 4.3-4.4 -> 4.7 (32 channels), 8.4-8.6 -> 8.7-9.0 (64). */
int FN(fusenn_gemm_rows_b_fits)(size_t m, size_t run)
{
    const FN(gemm_config) *trio = FN(level_tiles)();
    return m % (size_t)trio[1].mr == 0 && run % (size_t)trio[1].nr == 0 && m < (size_t)trio[0].nr;
}

int FN(fusenn_gemm_rows_b)(size_t m, size_t taps, size_t run, size_t k, const real *A,
                           ptrdiff_t rs_a, ptrdiff_t cs_a, const real *const *brows, real beta,
                           real *C, ptrdiff_t rs_c)
{
    const FN(gemm_config) *cfg = &FN(level_tiles)()[1]; /* the one-thread tile */
    const size_t mr = (size_t)cfg->mr, nr = (size_t)cfg->nr, n = taps * run;
    if (!FN(fusenn_gemm_rows_b_fits)(m, run))
        return FUSENN_EINVAL;
    if (m == 0 || n == 0)
        return FUSENN_OK;
    if (k == 0) {
        FN(gemm_scale_only)(m, n, beta, C, rs_c, 1, NULL, FUSENN_ACT_IDENTITY);
        return FUSENN_OK;
    }
    const size_t KC = FN(kc_for)(cfg, k, rs_a, cs_a);
    for (size_t pc = 0; pc < k; pc += KC) {
        const size_t kc = FUSENN_MIN(KC, k - pc);
        const FN(store_params) sp = {1, pc == 0 ? beta : (real)1, FUSENN_ACT_IDENTITY,
                                     pc + kc == k};
        /* panel by panel, A's tiles in turn: the panel's kc rows stay in L1 */
        for (size_t jr = 0; jr < n; jr += nr)
            for (size_t ir = 0; ir < m; ir += mr)
                cfg->kernel_indirect_b(kc, A + (ptrdiff_t)ir * rs_a + (ptrdiff_t)pc * cs_a, rs_a,
                                       cs_a, brows + pc * taps + jr / run, (ptrdiff_t)taps,
                                       jr % run, C + (ptrdiff_t)ir * rs_c + (ptrdiff_t)jr, rs_c,
                                       &sp, NULL);
    }
    return FUSENN_OK;
}
