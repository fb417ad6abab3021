/*
 * gemm_ukernel.h - the portable GEMM micro-kernel, a template included by
 * gemm.c once per ISA with these macros set:
 *   UK_NAME    function name           UK_MR, UK_NR  register tile (rows x columns)
 *   UK_VBYTES  vector width in bytes   UK_ATTR       attributes (a target(...) or empty)
 *
 * It computes one UK_MR x UK_NR tile AB = sum_p a_p b_p^T from packed panels
 * (a: kc steps of UK_MR values, b: kc steps of UK_NR values) and stores it
 * row-major to ab. Written with GCC/Clang vector extensions, which lower to
 * SSE, AVX, AVX-512 or NEON as the target allows: the accumulators are
 * UK_MR x (UK_NR / lanes) vectors that stay in registers. An ISA-specific
 * kernel with intrinsics can replace it without touching packing or blocking.
 */
static UK_ATTR void UK_NAME(size_t kc, const real *restrict a,
                            const real *restrict b, real *restrict ab)
{
    typedef real vec __attribute__((vector_size(UK_VBYTES)));
    enum { LANES = UK_VBYTES / sizeof(real), NV = UK_NR / LANES };
    vec acc[UK_MR][NV];
    for (int i = 0; i < UK_MR; i++)
        for (int v = 0; v < NV; v++)
            acc[i][v] = (vec){0};
    for (size_t p = 0; p < kc; p++) {
        vec bv[NV];
        for (int v = 0; v < NV; v++)
            memcpy(&bv[v], b + v * LANES, sizeof(vec));
        for (int i = 0; i < UK_MR; i++) {
            const real ai = a[i];
            for (int v = 0; v < NV; v++)
                acc[i][v] += ai * bv[v]; /* contracted to FMA where available */
        }
        a += UK_MR;
        b += UK_NR;
    }
    for (int i = 0; i < UK_MR; i++)
        for (int v = 0; v < NV; v++)
            memcpy(ab + i * UK_NR + v * LANES, &acc[i][v], sizeof(vec));
}

#undef UK_NAME
#undef UK_MR
#undef UK_NR
#undef UK_VBYTES
#undef UK_ATTR
