/*
 * conv2d_winograd.h - Winograd's F(2x2, 3x3) for conv2d.c (included once per
 * dtype by it): the forward and the stride-1 input gradient of 3x3, stride-1,
 * undilated convolutions with a vector's worth of channels in and out (VGG's).
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
 *
 * The transforms only add and subtract (the kernel's also halves), in a fixed
 * order, and a tile's arithmetic does not depend on which chunk holds it: the
 * same bits on any thread count. They are not the patch GEMM's bits; the
 * error stays within a few units of the inputs' rounding (tests/test_conv.py).
 */

/* U_xi = (G g G^T)_xi for every (c, f) of a 3x3 kernel w (3, 3, C, N), into
 * u (16 x C x N, xi = 4 row + column). */
static void FN(winograd_kernel)(size_t C, size_t N, const real *w, real *u)
{
    const size_t CN = C * N;
    for (size_t cf = 0; cf < CN; cf++) {
        real g[3][3], t[4][3];
        for (int i = 0; i < 3; i++)
            for (int j = 0; j < 3; j++)
                g[i][j] = w[(size_t)(i * 3 + j) * CN + cf];
        for (int j = 0; j < 3; j++) { /* G g */
            t[0][j] = g[0][j];
            t[1][j] = (g[0][j] + g[1][j] + g[2][j]) * (real)0.5;
            t[2][j] = (g[0][j] - g[1][j] + g[2][j]) * (real)0.5;
            t[3][j] = g[2][j];
        }
        for (int i = 0; i < 4; i++) { /* (G g) G^T */
            u[(size_t)(i * 4 + 0) * CN + cf] = t[i][0];
            u[(size_t)(i * 4 + 1) * CN + cf] = (t[i][0] + t[i][1] + t[i][2]) * (real)0.5;
            u[(size_t)(i * 4 + 2) * CN + cf] = (t[i][0] - t[i][1] + t[i][2]) * (real)0.5;
            u[(size_t)(i * 4 + 3) * CN + cf] = t[i][2];
        }
    }
}

/* V_xi's rows of tiles [t0, t1) of the images at src (sample stride ld): row
 * t - t0 of the plane at v + xi plane, the tile's B^T d B over its C
 * channels; inputs in the padding read `zeros`. Channel by channel, so that
 * the compiler makes vectors of the channels. */
static ALWAYS_INLINE void FN(winograd_input)(const patch_geom *q, const real *src, ptrdiff_t ld,
                                             size_t t0, size_t t1, const real *zeros,
                                             real *v, size_t plane)
{
    const size_t C = q->c, TW = winograd_tiles_w(q), per_image = winograd_tiles_h(q) * TW;
    const ptrdiff_t H = (ptrdiff_t)q->h, W = (ptrdiff_t)q->w;
    for (size_t t = t0; t < t1; t++) {
        const size_t i = t / per_image, ty = t % per_image / TW, tx = t % TW;
        const real *x = src + (ptrdiff_t)i * ld;
        const ptrdiff_t h0 = (ptrdiff_t)(2 * ty) - q->top, w0 = (ptrdiff_t)(2 * tx) - q->left;
        const real *d[4][4];
        for (int a = 0; a < 4; a++)
            for (int b = 0; b < 4; b++) {
                const ptrdiff_t h = h0 + a, w = w0 + b;
                d[a][b] = h >= 0 && h < H && w >= 0 && w < W ? x + (h * W + w) * (ptrdiff_t)C
                                                           : zeros;
            }
        real *out = v + (t - t0) * C;
        const size_t xi_stride = plane;
#pragma GCC ivdep
        for (size_t c = 0; c < C; c++) {
            real s[4][4];
            for (int b = 0; b < 4; b++) { /* B^T d */
                s[0][b] = d[0][b][c] - d[2][b][c];
                s[1][b] = d[1][b][c] + d[2][b][c];
                s[2][b] = d[2][b][c] - d[1][b][c];
                s[3][b] = d[1][b][c] - d[3][b][c];
            }
            for (int a = 0; a < 4; a++) { /* (B^T d) B */
                out[(size_t)(a * 4 + 0) * xi_stride + c] = s[a][0] - s[a][2];
                out[(size_t)(a * 4 + 1) * xi_stride + c] = s[a][1] + s[a][2];
                out[(size_t)(a * 4 + 2) * xi_stride + c] = s[a][2] - s[a][1];
                out[(size_t)(a * 4 + 3) * xi_stride + c] = s[a][1] - s[a][3];
            }
        }
    }
}

/* The outputs of tiles [t0, t1) from M (16 planes of rows of N, as V): A^T M A, plus
 * the bias (or not), then relu or nothing, into out (rows of N, the images'
 * oh x ow positions one after the other); outputs past the image's edge go to
 * `discard` (N values). */
static ALWAYS_INLINE void FN(winograd_output)(const patch_geom *q, size_t N, const real *m,
                                              size_t t0, size_t t1, size_t plane,
                                              const real *bias, int relu, real *out,
                                              real *discard)
{
    const size_t TW = winograd_tiles_w(q), per_image = winograd_tiles_h(q) * TW;
    const size_t P = q->oh * q->ow, xi_stride = plane;
    for (size_t t = t0; t < t1; t++) {
        const size_t i = t / per_image, oy = 2 * (t % per_image / TW), ox = 2 * (t % TW);
        real *y[2][2];
        for (int a = 0; a < 2; a++)
            for (int b = 0; b < 2; b++)
                y[a][b] = oy + a < q->oh && ox + b < q->ow
                              ? out + (i * P + (oy + a) * q->ow + ox + b) * N
                              : discard;
        const real *mt = m + (t - t0) * N;
#pragma GCC ivdep
        for (size_t f = 0; f < N; f++) {
            real s[2][4];
            for (int b = 0; b < 4; b++) { /* A^T M */
                const real m0 = mt[(size_t)(0 * 4 + b) * xi_stride + f];
                const real m1 = mt[(size_t)(1 * 4 + b) * xi_stride + f];
                const real m2 = mt[(size_t)(2 * 4 + b) * xi_stride + f];
                const real m3 = mt[(size_t)(3 * 4 + b) * xi_stride + f];
                s[0][b] = m0 + m1 + m2;
                s[1][b] = m1 - m2 - m3;
            }
            const real beta = bias ? bias[f] : 0;
            for (int a = 0; a < 2; a++) { /* (A^T M) A, + b, act */
                real r0 = s[a][0] + s[a][1] + s[a][2] + beta;
                real r1 = s[a][1] - s[a][2] - s[a][3] + beta;
                if (relu) {
                    r0 = r0 > 0 ? r0 : 0;
                    r1 = r1 > 0 ? r1 : 0;
                }
                y[a][0][f] = r0;
                y[a][1][f] = r1;
            }
        }
    }
}

/* The transforms compiled for each ISA (the same arithmetic, only adds). */
static NO_LIBC_CALLS void FN(winograd_input_generic)(const patch_geom *q, const real *src,
                                                     ptrdiff_t ld, size_t t0, size_t t1,
                                                     const real *zeros, real *v, size_t plane)
{
    FN(winograd_input)(q, src, ld, t0, t1, zeros, v, plane);
}

static NO_LIBC_CALLS void FN(winograd_output_generic)(const patch_geom *q, size_t N,
                                                      const real *m, size_t t0, size_t t1,
                                                      size_t plane, const real *bias, int relu,
                                                      real *out, real *discard)
{
    FN(winograd_output)(q, N, m, t0, t1, plane, bias, relu, out, discard);
}

#ifdef HAVE_X86_PATCHES
static NO_LIBC_CALLS __attribute__((target("avx2"))) void
FN(winograd_input_avx2)(const patch_geom *q, const real *src, ptrdiff_t ld, size_t t0,
                        size_t t1, const real *zeros, real *v, size_t plane)
{
    FN(winograd_input)(q, src, ld, t0, t1, zeros, v, plane);
}

static NO_LIBC_CALLS __attribute__((target("avx2"))) void
FN(winograd_output_avx2)(const patch_geom *q, size_t N, const real *m, size_t t0, size_t t1,
                         size_t plane, const real *bias, int relu, real *out, real *discard)
{
    FN(winograd_output)(q, N, m, t0, t1, plane, bias, relu, out, discard);
}

static NO_LIBC_CALLS __attribute__((target("avx512f,avx2"))) void
FN(winograd_input_avx512)(const patch_geom *q, const real *src, ptrdiff_t ld, size_t t0,
                          size_t t1, const real *zeros, real *v, size_t plane)
{
    FN(winograd_input)(q, src, ld, t0, t1, zeros, v, plane);
}

static NO_LIBC_CALLS __attribute__((target("avx512f,avx2"))) void
FN(winograd_output_avx512)(const patch_geom *q, size_t N, const real *m, size_t t0, size_t t1,
                           size_t plane, const real *bias, int relu, real *out, real *discard)
{
    FN(winograd_output)(q, N, m, t0, t1, plane, bias, relu, out, discard);
}
#endif

/* One pass's operands: patches q of the n images at src into n_out channels
 * of out, with the 16 packed U_xi at up. */
typedef struct {
    const patch_geom *q;
    size_t n, n_out, rows; /* rows: tiles per chunk */
    const real *src, *zeros, *up, *bias;
    ptrdiff_t ld;
    const FN(gemm_packed) *packed;
    int relu;
    real *out;
} FN(winograd_pass);

/* Chunk c of a pass, in slot: V, the 16 products into M, the outputs. */
static size_t FN(winograd_chunk)(const void *ctx, size_t c, real *slot)
{
    const FN(winograd_pass) *p = ctx;
    const patch_geom *q = p->q;
    const size_t total = p->n * winograd_tiles_h(q) * winograd_tiles_w(q);
    const size_t t0 = c * p->rows, t1 = FUSENN_MIN(total, t0 + p->rows), m = t1 - t0;
    const size_t C = q->c, N = p->n_out;
    const size_t v_plane = winograd_plane(p->rows, C), m_plane = winograd_plane(p->rows, N);
    real *v = slot, *mm = v + 16 * v_plane, *discard = mm + 16 * m_plane;
#ifdef HAVE_X86_PATCHES
    const int isa = fusenn_isa_level();
    if (isa == FUSENN_ISA_AVX512)
        FN(winograd_input_avx512)(q, p->src, p->ld, t0, t1, p->zeros, v, v_plane);
    else if (isa == FUSENN_ISA_AVX2)
        FN(winograd_input_avx2)(q, p->src, p->ld, t0, t1, p->zeros, v, v_plane);
    else
#endif
        FN(winograd_input_generic)(q, p->src, p->ld, t0, t1, p->zeros, v, v_plane);
    size_t failed = 0;
    for (size_t xi = 0; xi < 16; xi++)
        failed += FN(fusenn_gemm_with_packed_b)(p->packed, m, 1, v + xi * v_plane,
                                                (ptrdiff_t)C, 1, p->up + xi * p->packed->len, 0,
                                                mm + xi * m_plane, (ptrdiff_t)N,
                                                NULL) != FUSENN_OK;
#ifdef HAVE_X86_PATCHES
    if (isa == FUSENN_ISA_AVX512)
        FN(winograd_output_avx512)(q, N, mm, t0, t1, m_plane, p->bias, p->relu, p->out, discard);
    else if (isa == FUSENN_ISA_AVX2)
        FN(winograd_output_avx2)(q, N, mm, t0, t1, m_plane, p->bias, p->relu, p->out, discard);
    else
#endif
        FN(winograd_output_generic)(q, N, mm, t0, t1, m_plane, p->bias, p->relu, p->out,
                                    discard);
    return failed;
}
