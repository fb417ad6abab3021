/*
 * conv2d_winograd.h - Winograd's F(2x2, 3x3) for conv2d.c (included once per
 * dtype by it): the forward, dW and the stride-1 input gradient of 3x3,
 * stride-1, undilated convolutions with a vector's worth of channels in and
 * out (VGG's).
 *
 * Each 2x2 block of outputs (a tile) comes from the 4x4 block of inputs under
 * it, per input channel c (Lavin and Gray, 2015):
 *   Y = A^T [ sum_c (G g_c G^T) . (B^T d_c B) ] A          (. elementwise, 4x4)
 *   B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]
 *   G   = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1]
 *   A^T = [1 1 1 0; 0 1 -1 -1]
 * The sum over channels of each of the 16 elements is a GEMM: V_xi (tiles x
 * Cin) times U_xi (Cin x N). That is 16 multiplies per 4 outputs and channel
 * pair where the patch GEMM does 36: VGG's 3x3 layers do 2.25x fewer.
 *   dX  the same method on dZ with the kernel flipped, its channels swapped
 *   dW  the forward's backward: dM = A dZ A^T per tile, dU_xi = V_xi^T dM_xi
 *       summed over the tiles (16 GEMMs), dW = G^T dU G
 *
 * The transforms only add and subtract (the kernel's also halves), in a fixed
 * order; a tile's forward and dX arithmetic does not depend on which chunk
 * holds it, and dW's chunks and groups are fixed by the batch and channel
 * counts (conv2d.c): the same bits on any thread count. They are not the patch GEMM's bits: in
 * float32, against float64, the largest error of VGG's conv2 and conv4 was
 * 0.3-0.5x the patch GEMM's (tests/test_conv.py compares with the reference).
 */

/* U_xi = (G g G^T)_xi for every (c, f) of a 3x3 kernel w (3, 3, C, N), into
 * u (16 x C x N, xi = 4 row + column); along (c, f), in vectors. */
static void FN(winograd_kernel)(size_t C, size_t N, const real *w, real *u)
{
    const size_t CN = C * N;
    const real half = (real)0.5;
#pragma GCC ivdep
    for (size_t cf = 0; cf < CN; cf++) {
        real t[4][3];
        for (size_t j = 0; j < 3; j++) { /* G g */
            const real g0 = w[j * CN + cf], g1 = w[(3 + j) * CN + cf], g2 = w[(6 + j) * CN + cf];
            t[0][j] = g0;
            t[1][j] = (g0 + g1 + g2) * half;
            t[2][j] = (g0 - g1 + g2) * half;
            t[3][j] = g2;
        }
        for (size_t i = 0; i < 4; i++) { /* (G g) G^T */
            u[(i * 4 + 0) * CN + cf] = t[i][0];
            u[(i * 4 + 1) * CN + cf] = (t[i][0] + t[i][1] + t[i][2]) * half;
            u[(i * 4 + 2) * CN + cf] = (t[i][0] - t[i][1] + t[i][2]) * half;
            u[(i * 4 + 3) * CN + cf] = t[i][2];
        }
    }
}

/* The kernel's gradient from U's: dW = G^T dU_xi G for every (c, f), dU (16 x
 * C x N) into dw (3, 3, C, N). */
static void FN(winograd_kernel_grad)(size_t C, size_t N, const real *du, real *dw)
{
    const size_t CN = C * N;
    const real half = (real)0.5;
#pragma GCC ivdep
    for (size_t cf = 0; cf < CN; cf++) {
        real t[3][4];
        for (size_t b = 0; b < 4; b++) { /* G^T dU */
            const real d0 = du[b * CN + cf], d1 = du[(4 + b) * CN + cf];
            const real d2 = du[(8 + b) * CN + cf], d3 = du[(12 + b) * CN + cf];
            t[0][b] = d0 + (d1 + d2) * half;
            t[1][b] = (d1 - d2) * half;
            t[2][b] = (d1 + d2) * half + d3;
        }
        for (size_t i = 0; i < 3; i++) { /* (G^T dU) G */
            dw[(i * 3 + 0) * CN + cf] = t[i][0] + (t[i][1] + t[i][2]) * half;
            dw[(i * 3 + 1) * CN + cf] = (t[i][1] - t[i][2]) * half;
            dw[(i * 3 + 2) * CN + cf] = (t[i][1] + t[i][2]) * half + t[i][3];
        }
    }
}

/* A tile's B^T d B over C channels, d[a][b] at d + a rs + b C (c-th value at
 * c), into v (element xi = 4 a + b at v + xi xs): channel by channel, which
 * the compiler makes vectors of; C is a constant where the caller's is. */
static ALWAYS_INLINE void FN(winograd_input_tile)(const real *d, ptrdiff_t rs, size_t C,
                                                  real *restrict v, size_t xs)
{
    const real *r0 = d, *r1 = d + rs, *r2 = d + 2 * rs, *r3 = d + 3 * rs;
#pragma GCC ivdep
    for (size_t c = 0; c < C; c++) {
        real s[4][4];
        for (size_t b = 0; b < 4; b++) { /* B^T d */
            s[0][b] = r0[b * C + c] - r2[b * C + c];
            s[1][b] = r1[b * C + c] + r2[b * C + c];
            s[2][b] = r2[b * C + c] - r1[b * C + c];
            s[3][b] = r1[b * C + c] - r3[b * C + c];
        }
        for (size_t a = 0; a < 4; a++) { /* (B^T d) B */
            v[(a * 4 + 0) * xs + c] = s[a][0] - s[a][2];
            v[(a * 4 + 1) * xs + c] = s[a][1] + s[a][2];
            v[(a * 4 + 2) * xs + c] = s[a][2] - s[a][1];
            v[(a * 4 + 3) * xs + c] = s[a][1] - s[a][3];
        }
    }
}

/* V of tiles [t0, t1) of the images at src (sample stride ld): V_xi's row
 * t - t0 at v + xi xs + (t - t0) C, planes xs apart. A tile reaching into the
 * padding is first copied, with zeros, into pad (16 C). */
static ALWAYS_INLINE void FN(winograd_input)(const patch_geom *q, size_t C, const real *src,
                                             ptrdiff_t ld, size_t t0, size_t t1, real *v,
                                             real *pad, size_t xs)
{
    const size_t TW = winograd_tiles_w(q), per_image = winograd_tiles_h(q) * TW;
    const ptrdiff_t H = (ptrdiff_t)q->h, W = (ptrdiff_t)q->w;
    for (size_t t = t0; t < t1; t++) {
        const size_t i = t / per_image, ty = t % per_image / TW, tx = t % TW;
        const real *x = src + (ptrdiff_t)i * ld;
        const ptrdiff_t h0 = (ptrdiff_t)(2 * ty) - q->top, w0 = (ptrdiff_t)(2 * tx) - q->left;
        real *out = v + (t - t0) * C;
        if (h0 >= 0 && h0 + 4 <= H && w0 >= 0 && w0 + 4 <= W) {
            FN(winograd_input_tile)(x + (h0 * W + w0) * (ptrdiff_t)C, W * (ptrdiff_t)C, C, out,
                                    xs);
            continue;
        }
        for (ptrdiff_t a = 0; a < 4; a++)
            for (ptrdiff_t b = 0; b < 4; b++) {
                const ptrdiff_t h = h0 + a, w = w0 + b;
                real *to = pad + (a * 4 + b) * (ptrdiff_t)C;
                if (h >= 0 && h < H && w >= 0 && w < W)
                    FN(copy)(to, x + (h * W + w) * (ptrdiff_t)C, C);
                else
                    FN(zero)(to, C);
            }
        FN(winograd_input_tile)(pad, 4 * (ptrdiff_t)C, C, out, xs);
    }
}

/* The outputs of tiles [t0, t1) from M (as V: planes xs apart): A^T M A,
 * plus the bias (zeros where there is none), then relu or nothing, into out
 * (rows of N, the images' oh x ow positions one after the other); a tile's
 * outputs past the image's edge go to discard's rows (4 N values). */
static ALWAYS_INLINE void FN(winograd_output)(const patch_geom *q, size_t N, int relu,
                                              const real *m, size_t xs, size_t t0,
                                              size_t t1, const real *bias, real *out,
                                              real *discard)
{
    const size_t TW = winograd_tiles_w(q), per_image = winograd_tiles_h(q) * TW;
    const size_t P = q->oh * q->ow;
    for (size_t t = t0; t < t1; t++) {
        const size_t i = t / per_image, oy = 2 * (t % per_image / TW), ox = 2 * (t % TW);
        real *y[2][2];
        for (size_t a = 0; a < 2; a++)
            for (size_t b = 0; b < 2; b++)
                y[a][b] = oy + a < q->oh && ox + b < q->ow
                              ? out + (i * P + (oy + a) * q->ow + ox + b) * N
                              : discard + (a * 2 + b) * N;
        const real *restrict mt = m + (t - t0) * N;
        real *restrict y00 = y[0][0], *restrict y01 = y[0][1];
        real *restrict y10 = y[1][0], *restrict y11 = y[1][1];
#pragma GCC ivdep
        for (size_t f = 0; f < N; f++) {
            real s[2][4];
            for (size_t b = 0; b < 4; b++) { /* A^T M */
                const real m0 = mt[(0 * 4 + b) * xs + f], m1 = mt[(1 * 4 + b) * xs + f];
                const real m2 = mt[(2 * 4 + b) * xs + f], m3 = mt[(3 * 4 + b) * xs + f];
                s[0][b] = m0 + m1 + m2;
                s[1][b] = m1 - m2 - m3;
            }
            real r[2][2]; /* (A^T M) A, + b, act */
            for (size_t a = 0; a < 2; a++) {
                r[a][0] = s[a][0] + s[a][1] + s[a][2] + bias[f];
                r[a][1] = s[a][1] - s[a][2] - s[a][3] + bias[f];
                if (relu) {
                    r[a][0] = r[a][0] > 0 ? r[a][0] : 0;
                    r[a][1] = r[a][1] > 0 ? r[a][1] : 0;
                }
            }
            y00[f] = r[0][0];
            y01[f] = r[0][1];
            y10[f] = r[1][0];
            y11[f] = r[1][1];
        }
    }
}

/* The transforms for each ISA, with the channel counts of VGG-style nets as
 * constants (the same arithmetic whichever: only adds). */
#define WINOGRAD_SIZES(f, n, ...)                                                          \
    switch (n) {                                                                            \
    case 16: f(16, __VA_ARGS__); break;                                                     \
    case 32: f(32, __VA_ARGS__); break;                                                     \
    case 64: f(64, __VA_ARGS__); break;                                                     \
    case 128: f(128, __VA_ARGS__); break;                                                   \
    default: f(n, __VA_ARGS__); break;                                                      \
    }
#define WINOGRAD_INPUT(C, ...) FN(winograd_input)(q, C, __VA_ARGS__)
#define WINOGRAD_OUTPUT(N, ...)                                                             \
    (relu ? FN(winograd_output)(q, N, 1, __VA_ARGS__) : FN(winograd_output)(q, N, 0, __VA_ARGS__))
#define WINOGRAD_TRANSFORMS(isa, attr)                                                     \
    static NO_LIBC_CALLS attr void FN(winograd_input_##isa)(                              \
        const patch_geom *q, const real *src, ptrdiff_t ld, size_t t0, size_t t1, real *v,  \
        real *pad, size_t xs)                                                               \
    {                                                                                       \
        WINOGRAD_SIZES(WINOGRAD_INPUT, q->c, src, ld, t0, t1, v, pad, xs)                   \
    }                                                                                       \
    static NO_LIBC_CALLS attr void FN(winograd_output_##isa)(                             \
        const patch_geom *q, size_t N, const real *m, size_t xs, size_t t0, size_t t1,      \
        const real *bias, int relu, real *out, real *discard)                               \
    {                                                                                       \
        WINOGRAD_SIZES(WINOGRAD_OUTPUT, N, m, xs, t0, t1, bias, out, discard)               \
    }
WINOGRAD_TRANSFORMS(generic, )
#ifdef HAVE_X86_PATCHES
WINOGRAD_TRANSFORMS(avx2, __attribute__((target("avx2"))))
WINOGRAD_TRANSFORMS(avx512, __attribute__((target("avx512f,avx2"))))
#endif
#undef WINOGRAD_TRANSFORMS
#undef WINOGRAD_OUTPUT
#undef WINOGRAD_INPUT
#undef WINOGRAD_SIZES

/* One pass's operands: patches q of the n images at src into n_out channels
 * of out, with the 16 packed U_xi at up. */
typedef struct {
    const patch_geom *q;
    size_t n, n_out, rows; /* rows: tiles per chunk */
    const real *src, *up, *bias;
    ptrdiff_t ld;
    const FN(gemm_packed) *packed;
    int relu;
    real *out;
} FN(winograd_pass);

/* Chunk c's tiles [t0, t1) and its slot: V's and M's planes (vs, ms apart),
 * then pad (16 C) and 5 N values of scratch; V filled from the pass's images. */
typedef struct {
    size_t t0, t1, vs, ms;
    real *v, *m, *scratch;
} FN(winograd_slot);

static FN(winograd_slot) FN(winograd_chunk_in)(const FN(winograd_pass) *p, size_t c,
                                               real *slot)
{
    const patch_geom *q = p->q;
    const size_t t0 = c * p->rows;
    FN(winograd_slot) s = {t0, FUSENN_MIN(winograd_tiles(q, p->n), t0 + p->rows),
                           winograd_plane(p->rows, q->c), winograd_plane(p->rows, p->n_out),
                           slot, NULL, NULL};
    s.m = s.v + 16 * s.vs;
    real *pad = s.m + 16 * s.ms;
    s.scratch = pad + 16 * q->c;
#ifdef HAVE_X86_PATCHES
    const int isa = fusenn_isa_level();
    if (isa == FUSENN_ISA_AVX512)
        FN(winograd_input_avx512)(q, p->src, p->ld, s.t0, s.t1, s.v, pad, s.vs);
    else if (isa == FUSENN_ISA_AVX2)
        FN(winograd_input_avx2)(q, p->src, p->ld, s.t0, s.t1, s.v, pad, s.vs);
    else
#endif
        FN(winograd_input_generic)(q, p->src, p->ld, s.t0, s.t1, s.v, pad, s.vs);
    return s;
}

/* Chunk c of a pass, in slot: V, the 16 products into M, the outputs. */
static size_t FN(winograd_chunk)(const void *ctx, size_t c, real *slot)
{
    const FN(winograd_pass) *p = ctx;
    const patch_geom *q = p->q;
    const size_t C = q->c, N = p->n_out;
    const FN(winograd_slot) s = FN(winograd_chunk_in)(p, c, slot);
    real *discard = s.scratch, *bias = discard + 4 * N;
    for (size_t f = 0; f < N; f++) /* adding a zero bias turns -0 into +0, nothing else */
        bias[f] = p->bias ? p->bias[f] : 0;
    size_t failed = 0;
    for (size_t xi = 0; xi < 16; xi++) /* M_xi = V_xi U_xi */
        failed += FN(fusenn_gemm_with_packed_b)(p->packed, s.t1 - s.t0, 1, s.v + xi * s.vs,
                                                (ptrdiff_t)C, 1, p->up + xi * p->packed->len, 0,
                                                s.m + xi * s.ms, (ptrdiff_t)N, NULL) != FUSENN_OK;
#ifdef HAVE_X86_PATCHES
    const int isa = fusenn_isa_level();
    if (isa == FUSENN_ISA_AVX512)
        FN(winograd_output_avx512)(q, N, s.m, s.ms, s.t0, s.t1, bias, p->relu, p->out, discard);
    else if (isa == FUSENN_ISA_AVX2)
        FN(winograd_output_avx2)(q, N, s.m, s.ms, s.t0, s.t1, bias, p->relu, p->out, discard);
    else
#endif
        FN(winograd_output_generic)(q, N, s.m, s.ms, s.t0, s.t1, bias, p->relu, p->out,
                                    discard);
    return failed;
}

/* dM of tiles [t0, t1) (as M: planes xs apart): A dZ A^T of each tile's 2x2
 * outputs (zeros past the image's edge), dZ = dY relu'(y) first where relu
 * (y's samples ldy apart), written back over dY; and the bias's sums, in
 * double, tile by tile. */
static ALWAYS_INLINE void FN(winograd_output_grad)(const patch_geom *q, size_t N, int relu,
                                                   real *dz, const real *y, ptrdiff_t ldy,
                                                   size_t t0, size_t t1, real *m, size_t xs,
                                                   double *bsum, real *zeros)
{
    const size_t TW = winograd_tiles_w(q), per_image = winograd_tiles_h(q) * TW;
    const size_t P = q->oh * q->ow;
    for (size_t t = t0; t < t1; t++) {
        const size_t i = t / per_image, oy = 2 * (t % per_image / TW), ox = 2 * (t % TW);
        real *d[2][2];
        const real *yy[2][2];
        for (size_t a = 0; a < 2; a++)
            for (size_t b = 0; b < 2; b++) {
                const int inside = oy + a < q->oh && ox + b < q->ow;
                const size_t at = ((oy + a) * q->ow + ox + b) * N;
                d[a][b] = inside ? dz + i * P * N + at : zeros + (a * 2 + b) * N; /* stay 0 */
                yy[a][b] = inside ? y + (ptrdiff_t)i * ldy + (ptrdiff_t)at : zeros;
            }
        real *restrict mt = m + (t - t0) * N;
        real *restrict d00 = d[0][0], *restrict d01 = d[0][1];
        real *restrict d10 = d[1][0], *restrict d11 = d[1][1];
        if (relu)
#pragma GCC ivdep
            for (size_t f = 0; f < N; f++) {
                d00[f] = yy[0][0][f] > 0 ? d00[f] : 0;
                d01[f] = yy[0][1][f] > 0 ? d01[f] : 0;
                d10[f] = yy[1][0][f] > 0 ? d10[f] : 0;
                d11[f] = yy[1][1][f] > 0 ? d11[f] : 0;
            }
        if (bsum)
#pragma GCC ivdep
            for (size_t f = 0; f < N; f++)
                bsum[f] += ((double)d00[f] + (double)d01[f]) + ((double)d10[f] + (double)d11[f]);
#pragma GCC ivdep
        for (size_t f = 0; f < N; f++) {
            const real z[2][2] = {{d00[f], d01[f]}, {d10[f], d11[f]}};
            real r[4][2]; /* A dZ */
            for (size_t b = 0; b < 2; b++) {
                r[0][b] = z[0][b];
                r[1][b] = z[0][b] + z[1][b];
                r[2][b] = z[0][b] - z[1][b];
                r[3][b] = -z[1][b];
            }
            for (size_t a = 0; a < 4; a++) { /* (A dZ) A^T */
                mt[(a * 4 + 0) * xs + f] = r[a][0];
                mt[(a * 4 + 1) * xs + f] = r[a][0] + r[a][1];
                mt[(a * 4 + 2) * xs + f] = r[a][0] - r[a][1];
                mt[(a * 4 + 3) * xs + f] = -r[a][1];
            }
        }
    }
}

#define WINOGRAD_OUTPUT_GRAD(N)                                                             \
    (relu ? FN(winograd_output_grad)(q, N, 1, dz, y, ldy, t0, t1, m, xs, bsum, zeros)      \
          : FN(winograd_output_grad)(q, N, 0, dz, y, ldy, t0, t1, m, xs, bsum, zeros))
#define WINOGRAD_GRAD_TRANSFORM(isa, attr)                                                 \
    static NO_LIBC_CALLS attr void FN(winograd_output_grad_##isa)(                        \
        const patch_geom *q, size_t N, int relu, real *dz, const real *y, ptrdiff_t ldy,    \
        size_t t0, size_t t1, real *m, size_t xs, double *bsum, real *zeros)                \
    {                                                                                       \
        switch (N) {                                                                        \
        case 32: WINOGRAD_OUTPUT_GRAD(32); break;                                           \
        case 64: WINOGRAD_OUTPUT_GRAD(64); break;                                           \
        default: WINOGRAD_OUTPUT_GRAD(N); break;                                            \
        }                                                                                   \
    }
WINOGRAD_GRAD_TRANSFORM(generic, )
#ifdef HAVE_X86_PATCHES
WINOGRAD_GRAD_TRANSFORM(avx2, __attribute__((target("avx2"))))
WINOGRAD_GRAD_TRANSFORM(avx512, __attribute__((target("avx512f,avx2"))))
#endif
#undef WINOGRAD_GRAD_TRANSFORM
#undef WINOGRAD_OUTPUT_GRAD

/* Chunk c of dW by Winograd, in slot: V of x's tiles, dM of dY's (dZ written
 * back), then part's dU_xi (+)= V_xi^T dM_xi (= when first). */
static size_t FN(winograd_weight_grad_chunk)(const FN(winograd_pass) *p, size_t c, int first,
                                             const real *y, ptrdiff_t ldy, real *part,
                                             double *bsum, real *slot)
{
    const patch_geom *q = p->q;
    const size_t C = q->c, N = p->n_out;
    const FN(winograd_slot) s = FN(winograd_chunk_in)(p, c, slot);
    real *zeros = s.scratch, *dz = p->out; /* 4 N zeros */
    for (size_t j = 0; j < 4 * N; j++)
        zeros[j] = 0;
#ifdef HAVE_X86_PATCHES
    const int isa = fusenn_isa_level();
    if (isa == FUSENN_ISA_AVX512)
        FN(winograd_output_grad_avx512)(q, N, p->relu, dz, y, ldy, s.t0, s.t1, s.m, s.ms, bsum,
                                        zeros);
    else if (isa == FUSENN_ISA_AVX2)
        FN(winograd_output_grad_avx2)(q, N, p->relu, dz, y, ldy, s.t0, s.t1, s.m, s.ms, bsum,
                                      zeros);
    else
#endif
        FN(winograd_output_grad_generic)(q, N, p->relu, dz, y, ldy, s.t0, s.t1, s.m, s.ms, bsum,
                                         zeros);
    size_t failed = 0;
    for (size_t xi = 0; xi < 16; xi++) /* V_xi^T: C x m, read transposed */
        failed += FN(fusenn_gemm)(C, N, s.t1 - s.t0, 1, s.v + xi * s.vs, 1, (ptrdiff_t)C,
                                  s.m + xi * s.ms, (ptrdiff_t)N, 1, first ? 0 : 1,
                                  part + xi * C * N, (ptrdiff_t)N, 1, 1) != FUSENN_OK;
    return failed;
}
