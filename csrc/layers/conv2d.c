/*
 * conv2d.c - Conv2D over images (H, W, Cin), channels last as Keras:
 *   y[oh, ow, :] = act(sum_{i, j, c} x[oh sh + i dh - pad_top, ow sw + j dw - pad_left, c]
 *                                   w[i, j, c, :] + b)
 * with the kernel w (kh, kw, Cin, F) and the bias b (F); taps that fall in
 * the padding read zeros. The output is (OH, OW, F).
 *
 * Method: GEMMs over patches, in chunks of rows. A row is one output
 * position of one sample; its patch is kh kw Cin values in the kernel's
 * order, and the chunk's patches times w (as a kh kw Cin x F matrix) is one
 * GEMM, with the bias and the activation fused into its store. From two
 * channels on (patches_by_pointer), the GEMM finds each patch's
 * taps by pointers into the image (an implicit convolution: a slot holds the
 * chunk's tap pointers, W is packed once per pass); else the patches are
 * copied into the slot (im2col). Both sum in the same order: the same bits.
 * Each thread owns a slot and takes whole units of work (a chunk, a group, a
 * sample) as they come, so the GEMMs run on one thread each, with no barrier
 * between them.
 *   forward  Y = patches(x) W (+ b, act)
 *   dW       sum over rows of patches(x)^T dZ: chunks are summed into a
 *            fixed number of groups (each group's chunks in order), the
 *            groups are added in order: the same bits on any thread count;
 *            by pointer (fewer than 64 filters) as dZ^T patches, kept
 *            transposed in the groups' partials
 *   dX       stride 1: a convolution of dZ with the kernel flipped and its
 *            channels swapped (patches of dZ times W'), no scatter; other
 *            strides: dZ W^T per chunk, scattered back over the windows
 *            (col2im), one sample per thread in a fixed order
 * A 1x1 kernel with stride 1 and no padding reads its patches in place; the
 * first layer of one-channel images with few filters has kernels of its own
 * (direct_forward, direct_weight_grad). 3x3, stride-1 layers with a vector
 * of channels in and out (VGG's) take Winograd's F(2x2, 3x3) instead
 * (conv2d_winograd.h), 2.25x fewer multiplies: the forward and dW where the
 * activation is relu or none, and dX.
 */
#include "../layer.h"

enum { CONV_FILTERS, CONV_KERNEL_H, CONV_KERNEL_W, CONV_STRIDE_H, CONV_STRIDE_W,
       CONV_DILATION_H, CONV_DILATION_W, CONV_PAD_TOP, CONV_PAD_BOTTOM, CONV_PAD_LEFT,
       CONV_PAD_RIGHT, CONV_USE_BIAS, CONV_ACTIVATION };
static const char *const conv2d_attrs[] = {
    "filters", "kernel_h", "kernel_w", "stride_h", "stride_w", "dilation_h", "dilation_w",
    "pad_top", "pad_bottom", "pad_left", "pad_right", "use_bias", "activation", NULL};

/* Chunks are about this many bytes of patches (a multiple of both GEMM tile
 * heights in rows, within [CONV_MIN_ROWS, CONV_MAX_ROWS]); at most CONV_SLOTS
 * threads, one chunk buffer each; dW sums its chunks in at most CONV_GROUPS
 * groups (Winograd's dW in at most CONV_SLOTS), handed out to the threads one
 * at a time. The chunk is dW's depth:
 * each chunk's product is stored into the group's partial sums, so it fixes
 * dW's bits. At 128 KB VGG's conv3 and conv4 summed 96 and 48 rows; at
 * 512 KB (432 and 216 rows) their dW took 7-14% and 14-16% less on two
 * threads, and the VGG-style step 0.93-0.95x the time on two threads and
 * 0.97-1.00x on one (3 interleaved rounds; 1 MB was no better). About half
 * of Zen 4's 1 MB L2. */
#define CONV_CHUNK_BYTES (512 * 1024)
#define CONV_ROW_STEP 24
#define CONV_MIN_ROWS 24
#define CONV_MAX_ROWS 1032
#define CONV_SLOTS 8
#define CONV_GROUPS 16

/* Values in a 64-byte vector. */
#define V64_LANES (64 / sizeof(real))

/* The register tile of direct_weight_grad: taps x filters. */
#define DIRECT_T 2
#define DIRECT_F 8

/* Where the patches of a convolution come from: an image (h, w, c) read by a
 * kh x kw window with strides and dilations at oh x ow positions, position
 * (0, 0)'s first tap at (-top, -left). */
typedef struct {
    size_t h, w, c, oh, ow;
    size_t kh, kw, sh, sw, dh, dw;
    ptrdiff_t top, left;
} patch_geom;

/* A layer's geometry: its forward patches of x, the patches of dZ for the
 * stride-1 input gradient, and the sizes. */
typedef struct {
    patch_geom fwd, bwd;
    size_t cin, f, k, k_bwd; /* k = kh kw Cin; k_bwd = kh kw F */
    int bias;
    fusenn_activation act;
} conv_geom;

static int whole(double v, double min) { return v >= min && v <= 1e9 && v == (double)(size_t)v; }

/* The activation fused into the forward's store (checked by conv_geometry). */
static fusenn_activation conv_activation(const fusenn_layer *desc)
{
    return (fusenn_activation)(int)desc->attr[CONV_ACTIVATION];
}

static int conv_geometry(const fusenn_layer *desc, const fusenn_shape *in, conv_geom *g)
{
    const double *a = desc->attr;
    if (in->rank != 3)
        return FUSENN_EINVAL;
    for (int i = CONV_FILTERS; i < CONV_PAD_TOP; i++)
        if (!whole(a[i], 1))
            return FUSENN_EINVAL;
    for (int i = CONV_PAD_TOP; i <= CONV_PAD_RIGHT; i++)
        if (!whole(a[i], 0))
            return FUSENN_EINVAL;
    if ((a[CONV_USE_BIAS] != 0 && a[CONV_USE_BIAS] != 1) ||
        !whole(a[CONV_ACTIVATION], 0) || a[CONV_ACTIVATION] > FUSENN_ACT_SWISH)
        return FUSENN_EINVAL;
    patch_geom *p = &g->fwd;
    p->h = in->dim[0];
    p->w = in->dim[1];
    p->c = g->cin = in->dim[2];
    p->kh = (size_t)a[CONV_KERNEL_H];
    p->kw = (size_t)a[CONV_KERNEL_W];
    p->sh = (size_t)a[CONV_STRIDE_H];
    p->sw = (size_t)a[CONV_STRIDE_W];
    p->dh = (size_t)a[CONV_DILATION_H];
    p->dw = (size_t)a[CONV_DILATION_W];
    p->top = (ptrdiff_t)a[CONV_PAD_TOP];
    p->left = (ptrdiff_t)a[CONV_PAD_LEFT];
    const size_t span_h = p->dh * (p->kh - 1) + 1, span_w = p->dw * (p->kw - 1) + 1;
    const size_t padded_h = p->h + (size_t)a[CONV_PAD_TOP] + (size_t)a[CONV_PAD_BOTTOM];
    const size_t padded_w = p->w + (size_t)a[CONV_PAD_LEFT] + (size_t)a[CONV_PAD_RIGHT];
    if (padded_h < span_h || padded_w < span_w)
        return FUSENN_EINVAL;
    p->oh = (padded_h - span_h) / p->sh + 1;
    p->ow = (padded_w - span_w) / p->sw + 1;
    g->f = (size_t)a[CONV_FILTERS];
    g->k = p->kh * p->kw * p->c;
    g->bias = a[CONV_USE_BIAS] != 0;
    g->act = conv_activation(desc);
    /* dx[h, w] = sum_{i, j} dz[h + pad_top - i dh, w + pad_left - j dw] w[i, j]^T:
     * with i' = kh - 1 - i, a stride-1 window over dz whose first tap is at
     * h - (span_h - 1 - pad_top) */
    g->bwd = (patch_geom){.h = p->oh, .w = p->ow, .c = g->f, .oh = p->h, .ow = p->w,
                          .kh = p->kh, .kw = p->kw, .sh = 1, .sw = 1, .dh = p->dh, .dw = p->dw,
                          .top = (ptrdiff_t)span_h - 1 - p->top,
                          .left = (ptrdiff_t)span_w - 1 - p->left};
    g->k_bwd = p->kh * p->kw * g->f;
    return FUSENN_OK;
}

/* The input gradient as a stride-1 convolution of dZ (no scatter) where its
 * GEMM's columns, the input channels, fill a 64-byte vector; else dZ W^T and
 * col2im, whose GEMM is kh kw Cin wide. LeNet's second conv (Cin 6): dX
 * 2.8 ms -> 1.0 ms, one thread. */
static inline int bwd_is_conv(const conv_geom *g)
{
    return g->fwd.sh == 1 && g->fwd.sw == 1 && g->cin * sizeof(real) >= 64;
}

static inline size_t div_up(size_t a, size_t b) { return (a + b - 1) / b; }

/* Whether a pass over patches q into n_out channels takes Winograd's F(2x2,
 * 3x3) (conv2d_winograd.h): 3x3, stride 1, no dilation, and a 64-byte vector
 * of channels in and out. */
static inline int winograd_applies(const patch_geom *q, size_t n_out)
{
    return q->kh == 3 && q->kw == 3 && q->sh == 1 && q->sw == 1 && q->dh == 1 && q->dw == 1 &&
           q->c * sizeof(real) >= 64 && n_out * sizeof(real) >= 64;
}

/* The forward takes it when its store needs no pre-activation kept: relu or none. */
static inline int winograd_forward(const conv_geom *g)
{
    return winograd_applies(&g->fwd, g->f) &&
           (g->act == FUSENN_ACT_IDENTITY || g->act == FUSENN_ACT_RELU);
}

static inline int winograd_input_grad(const conv_geom *g)
{
    return bwd_is_conv(g) && winograd_applies(&g->bwd, g->cin);
}

/* The stride of V's and M's 16 planes of `rows` tiles x c values, plane xi
 * holding the operand of product xi: a cache line past the rows, so that the
 * planes' rows of a tile do not all fall in one L1 set (at 16 KB apart they
 * had made the input transform a third of VGG's conv2 forward). */
static inline size_t winograd_plane(size_t rows, size_t c) { return rows * c + V64_LANES; }

/* A pass's 2x2 output tiles per image. */
static inline size_t winograd_tiles_h(const patch_geom *q) { return (q->oh + 1) / 2; }
static inline size_t winograd_tiles_w(const patch_geom *q) { return (q->ow + 1) / 2; }

/* Tiles over n images, and chunks of `rows` of them. */
static inline size_t winograd_tiles(const patch_geom *q, size_t n)
{
    return n * winograd_tiles_h(q) * winograd_tiles_w(q);
}

static inline size_t winograd_chunks(const patch_geom *q, size_t n, size_t rows)
{
    return div_up(winograd_tiles(q, n), rows);
}

/* Tiles per chunk: a chunk's V and M take about CONV_CHUNK_BYTES, in whole
 * tiles of the mid GEMM tile's 8 rows (the same for any thread count). */
static size_t FN(winograd_chunk_tiles)(size_t c, size_t n_out)
{
    const size_t t = CONV_CHUNK_BYTES / (16 * (c + n_out) * sizeof(real)) / 8 * 8;
    return FUSENN_MAX(t, (size_t)8);
}

/* Whether the patches are the image itself: row r is the image's row r. */
static inline int patches_in_place(const patch_geom *p)
{
    /* a 1x1 kernel, stride 1 and no padding on any side (padding bottom or
     * right makes the output larger than the image: its rows are not the
     * image's) */
    return p->kh == 1 && p->kw == 1 && p->sh == 1 && p->sw == 1 && p->top == 0 && p->left == 0 &&
           p->oh == p->h && p->ow == p->w;
}

/* Whether a GEMM reads the patches where they lie in the image (implicit
 * convolution: tap pointers, fusenn_gemm_indirect) rather than from a copy
 * (im2col, 13% of a VGG-style step): from two channels on. One thread,
 * forward, copy -> by pointer: float32 28x28, 3x3, 2 channels to 16 filters
 * 902-922 -> 646-683 us, LeNet's second conv (6 channels, 5x5) 395-422 ->
 * 335-342; float64, 2 channels 966-1052 -> 807-868. One channel keeps
 * im2row, a tap's run being one value. */
static inline int patches_by_pointer(const patch_geom *p)
{
    return !patches_in_place(p) && p->c >= 2;
}

/* Whether dW reads the patches by pointer too, as dZ^T patches (its
 * transpose, summed alike): where its tiles are whole, so that neither
 * operand is packed. It is then kept transposed in the groups' partials. */
static inline int weight_grad_by_pointer(const patch_geom *p, size_t f)
{
    return patches_by_pointer(p) && FN(fusenn_gemm_rows_b_fits)(f, p->c);
}

/* Rows per chunk for patches of k values (the same for any thread count: dW's
 * sums depend on it). */
static size_t FN(chunk_rows)(size_t k)
{
    size_t rows = CONV_CHUNK_BYTES / (k * sizeof(real)) / CONV_ROW_STEP * CONV_ROW_STEP;
    return FUSENN_MIN(FUSENN_MAX(rows, (size_t)CONV_MIN_ROWS), (size_t)CONV_MAX_ROWS);
}

/* One input channel, fewer filters than a 64-byte vector holds, stride 1
 * along the width, on AVX-512: the direct kernels below (LeNet's first conv). */
static inline int one_channel_direct(const conv_geom *g)
{
    return g->cin == 1 && g->f * sizeof(real) < 64 && g->fwd.sw == 1 &&
           fusenn_isa_level() == FUSENN_ISA_AVX512;
}

/* The zero-padded copy of a one-channel image those kernels read: the rows and
 * columns every tap reaches, from (-top, -left); and how many of them a chunk
 * of `rows` outputs can need. */
static inline size_t pad_h(const patch_geom *q)
{
    return (q->oh - 1) * q->sh + (q->kh - 1) * q->dh + 1;
}

static inline size_t pad_w(const patch_geom *q) { return q->ow + (q->kw - 1) * q->dw; }

static inline size_t chunk_images(const patch_geom *q, size_t rows, size_t n)
{
    return FUSENN_MIN(n, rows / (q->oh * q->ow) + 2);
}

/* The columns a window row reaches, [row_lo, row_lo + row_len): the image's
 * [0, w) and the padding on either side. */
static inline ptrdiff_t row_lo(const patch_geom *g) { return FUSENN_MIN(-g->left, 0); }

static inline size_t row_len(const patch_geom *g)
{
    const ptrdiff_t reach = (ptrdiff_t)((g->ow - 1) * g->sw + (g->kw - 1) * g->dw) - g->left + 1;
    return (size_t)(FUSENN_MAX(reach, (ptrdiff_t)g->w) - row_lo(g));
}

/* The workspace: slots of chunk patches (or Winograd's V and M), the flipped
 * kernel W', W or W' packed, Winograd's 16 packed U_xi, and dW's group
 * partials (kernel, then bias in double). Offsets in bytes. */
typedef struct {
    size_t rows, rows_bwd;   /* chunk rows of the forward / dW, and of dX */
    size_t slots, slot_len;  /* slot_len in reals */
    size_t dzt_at;           /* where a slot's dZ^T starts (one_channel_direct) */
    size_t groups;           /* dW's */
    size_t part_len;         /* a group's partial dW: K F, direct_weight_grad's vectors,
                              * or Winograd's dU: 16 Cin F */
    size_t slot_at, wt_at, part_at, bpart_at, total;
    FN(gemm_packed) packed, packed_bwd; /* W and W' packed, for patches by pointer */
    size_t wp_at, zeros_at;             /* the packed one; zeros for taps in the padding */
    size_t wino_rows, wino_rows_bwd;    /* Winograd's tiles per chunk, or 0: not used */
    FN(gemm_packed) wino, wino_bwd;     /* the form of its 16 packed U_xi */
    size_t wino_at;                     /* where they are packed */
} FN(conv_work);

static size_t carve(size_t *offset, size_t bytes)
{
    size_t at = *offset;
    *offset += (bytes + 63) / 64 * 64;
    return at;
}

static FN(conv_work) FN(work_layout)(const conv_geom *g, size_t n)
{
    FN(conv_work) w;
    const size_t m = n * g->fwd.oh * g->fwd.ow;
    w.rows = FN(chunk_rows)(g->k);
    w.rows_bwd = FN(chunk_rows)(bwd_is_conv(g) ? g->k_bwd : g->k);
    const size_t chunks = div_up(m, w.rows);
    w.groups = FUSENN_MIN(chunks, (size_t)CONV_GROUPS);
    const size_t chunks_bwd = bwd_is_conv(g) ? div_up(n * g->fwd.h * g->fwd.w, w.rows_bwd) : n;
    w.slots = FUSENN_MIN(FUSENN_MAX(chunks, chunks_bwd), (size_t)CONV_SLOTS);
    /* the direct kernels' padded images, then dZ^T (DIRECT_F rows per block of
     * filters); one-channel patches (im2row) keep a padded image row after them */
    const int direct = one_channel_direct(g);
    w.dzt_at = direct ? chunk_images(&g->fwd, w.rows, n) * pad_h(&g->fwd) * pad_w(&g->fwd)
                      : w.rows * g->k + (g->cin == 1 ? row_len(&g->fwd) : 0);
    w.slot_len = FUSENN_MAX(w.dzt_at + (direct ? div_up(g->f, DIRECT_F) * DIRECT_F * w.rows : 0),
                            bwd_is_conv(g) ? w.rows_bwd * g->k_bwd +
                                                 (g->f == 1 ? row_len(&g->bwd) : 0)
                                           : w.rows_bwd * g->k);
    /* patches by pointer: a slot holds a chunk's tap pointers (a last tile
     * padded to at most 16 rows) instead, and W or W' is packed once */
    const int fwd_pointers = patches_by_pointer(&g->fwd);
    const int bwd_pointers = bwd_is_conv(g) && patches_by_pointer(&g->bwd);
    w.packed = FN(fusenn_gemm_packed_for_rows)(g->f, g->k);
    w.packed_bwd = FN(fusenn_gemm_packed_for_rows)(g->cin, g->k_bwd);
    const size_t taps = g->fwd.kh * g->fwd.kw, ptr_reals = div_up(sizeof(real *), sizeof(real));
    /* Winograd: a slot holds a chunk's V and M, and slot 0 the 16 U_xi before
     * they are packed (and, after dW's groups, their sum dU) */
    const int wino = winograd_forward(g), wino_bwd = winograd_input_grad(g);
    w.wino_rows = wino ? FN(winograd_chunk_tiles)(g->cin, g->f) : 0;
    w.wino_rows_bwd = wino_bwd ? FN(winograd_chunk_tiles)(g->f, g->cin) : 0;
    w.wino = FN(fusenn_gemm_packed_for)(FUSENN_MAX(w.wino_rows, (size_t)1), g->f, g->cin);
    w.wino_bwd = FN(fusenn_gemm_packed_for)(FUSENN_MAX(w.wino_rows_bwd, (size_t)1), g->cin,
                                            g->f);
    const size_t wino_chunks =
        FUSENN_MAX(wino ? winograd_chunks(&g->fwd, n, w.wino_rows) : 0,
                   wino_bwd ? winograd_chunks(&g->bwd, n, w.wino_rows_bwd) : 0);
    w.slots = FUSENN_MIN(FUSENN_MAX(w.slots, wino_chunks), (size_t)CONV_SLOTS);
    if (wino || wino_bwd)
        w.slot_len = FUSENN_MAX(w.slot_len, 16 * g->cin * g->f);
    /* V and M of a chunk, a tile's padded copy, its discarded outputs and the bias */
    if (wino)
        w.slot_len = FUSENN_MAX(w.slot_len, 16 * (winograd_plane(w.wino_rows, g->cin) +
                                                  winograd_plane(w.wino_rows, g->f)) +
                                                16 * g->cin + 5 * g->f);
    if (wino_bwd)
        w.slot_len = FUSENN_MAX(w.slot_len, 16 * (winograd_plane(w.wino_rows_bwd, g->f) +
                                                  winograd_plane(w.wino_rows_bwd, g->cin)) +
                                                16 * g->f + 5 * g->cin);
    if (fwd_pointers)
        w.slot_len = FUSENN_MAX(w.slot_len, (w.rows + 16) * taps * ptr_reals);
    if (bwd_pointers)
        w.slot_len = FUSENN_MAX(w.slot_len, (w.rows_bwd + 16) * taps * ptr_reals);
    size_t size = 0;
    w.slot_at = carve(&size, w.slots * ((w.slot_len * sizeof(real) + 63) / 64 * 64));
    w.wt_at = carve(&size, g->k * g->f * sizeof(real)); /* W' or W^T */
    w.wp_at = carve(&size, FUSENN_MAX(fwd_pointers ? w.packed.len : 0,
                                      bwd_pointers ? w.packed_bwd.len : 0) * sizeof(real));
    w.zeros_at = carve(&size, fwd_pointers || bwd_pointers
                                  ? FUSENN_MAX(g->cin, g->f) * sizeof(real) : 0);
    w.wino_at = carve(&size, 16 * FUSENN_MAX(wino ? w.wino.len : 0,
                                             wino_bwd ? w.wino_bwd.len : 0) * sizeof(real));
    w.part_len = direct ? div_up(g->f, DIRECT_F) * g->k * DIRECT_F * V64_LANES : g->k * g->f;
    if (wino) { /* dW by Winograd too: each group sums the 16 dU_xi of its chunks of tiles,
                 * in as many groups as threads can take them (adding 16 up took 1.7% of a
                 * one-thread VGG-style step) */
        w.groups = FUSENN_MIN(winograd_chunks(&g->fwd, n, w.wino_rows), (size_t)CONV_SLOTS);
        w.part_len = 16 * g->cin * g->f;
    }
    w.part_at = carve(&size, w.groups * w.part_len * sizeof(real));
    w.bpart_at = carve(&size, g->bias ? w.groups * g->f * sizeof(double) : 0);
    w.total = size;
    return w;
}

static inline real *FN(slot)(const FN(conv_work) *w, void *work, size_t s)
{
    return (real *)((char *)work + w->slot_at + s * ((w->slot_len * sizeof(real) + 63) / 64 * 64));
}

static inline real *FN(packed_w)(const FN(conv_work) *w, void *work)
{
    return (real *)((char *)work + w->wp_at);
}

static inline real *FN(zeros)(const FN(conv_work) *w, void *work)
{
    return (real *)((char *)work + w->zeros_at);
}

/* Before a pass that reads patches by pointer: the zeros that padding taps
 * point to (a tap is Cin or F values). */
static void FN(set_zeros)(const conv_geom *g, const FN(conv_work) *w, void *work)
{
    real *z = FN(zeros)(w, work);
    for (size_t j = 0; j < FUSENN_MAX(g->cin, g->f); j++)
        z[j] = 0;
}

/* ... and, for the forward and dX, W (K x N) packed. */
static void FN(prepare_by_pointer)(const conv_geom *g, const FN(conv_work) *w,
                                   const FN(gemm_packed) *packed, const real *W, void *work)
{
    FN(fusenn_gemm_pack_b)(packed, W, (ptrdiff_t)packed->n, 1, FN(packed_w)(w, work));
    FN(set_zeros)(g, w, work);
}

/* Copy, add or zero `len` values in vectors of 64 bytes, then 16, then one by one;
 * inlined into the patch builders, which are compiled for each ISA (a 64-byte
 * vector is one AVX-512 move, two AVX2 or four SSE2 ones). Not memcpy /
 * memset: most runs are a few values (one channel, one kernel row), and calls
 * took 15% of a LeNet step; GCC turns even these loops into calls unless told
 * not to (NO_LIBC_CALLS on the functions they are inlined into). */
#if defined(__GNUC__) && !defined(__clang__)
#define NO_LIBC_CALLS __attribute__((optimize("no-tree-loop-distribute-patterns")))
#else
#define NO_LIBC_CALLS
#endif
#define ALWAYS_INLINE inline __attribute__((always_inline))
typedef real FN(v64) __attribute__((vector_size(64), aligned(sizeof(real)), may_alias));
typedef real FN(v16) __attribute__((vector_size(16), aligned(sizeof(real)), may_alias));
#define V16_LANES (16 / sizeof(real))

static ALWAYS_INLINE void FN(copy)(real *restrict d, const real *restrict s, size_t len)
{
    size_t j = 0;
    for (; j + V64_LANES <= len; j += V64_LANES)
        *(FN(v64) *)(d + j) = *(const FN(v64) *)(s + j);
    for (; j + V16_LANES <= len; j += V16_LANES)
        *(FN(v16) *)(d + j) = *(const FN(v16) *)(s + j);
    for (; j < len; j++)
        d[j] = s[j];
}

static ALWAYS_INLINE void FN(add_to)(real *restrict d, const real *restrict s, size_t len)
{
    size_t j = 0;
    for (; j + V64_LANES <= len; j += V64_LANES)
        *(FN(v64) *)(d + j) += *(const FN(v64) *)(s + j);
    for (; j + V16_LANES <= len; j += V16_LANES)
        *(FN(v16) *)(d + j) += *(const FN(v16) *)(s + j);
    for (; j < len; j++)
        d[j] += s[j];
}

static ALWAYS_INLINE void FN(zero)(real *d, size_t len)
{
    size_t j = 0;
    for (; j + V64_LANES <= len; j += V64_LANES)
        *(FN(v64) *)(d + j) = (FN(v64)){0};
    for (; j + V16_LANES <= len; j += V16_LANES)
        *(FN(v16) *)(d + j) = (FN(v16)){0};
    for (; j < len; j++)
        d[j] = 0;
}

/* The patches of rows [r0, r1) (row r: sample r / (oh ow), position r % (oh ow))
 * of images at src (sample stride ld) into dst, kh kw c values per row. */
static ALWAYS_INLINE void FN(im2col)(const patch_geom *g, const real *src, ptrdiff_t ld,
                                     size_t r0, size_t r1, real *dst)
{
    const size_t P = g->oh * g->ow, C = g->c, run = g->kw * C, K = g->kh * run;
    const ptrdiff_t H = (ptrdiff_t)g->h, W = (ptrdiff_t)g->w;
    const ptrdiff_t reach_w = (ptrdiff_t)((g->kw - 1) * g->dw);
    size_t i = r0 / P, oh = r0 % P / g->ow, ow = r0 % g->ow;
    for (size_t r = r0; r < r1; r++, dst += K) {
        const real *x = src + (ptrdiff_t)i * ld;
        const ptrdiff_t h0 = (ptrdiff_t)(oh * g->sh) - g->top;
        const ptrdiff_t w0 = (ptrdiff_t)(ow * g->sw) - g->left;
        const int whole_run = g->dw == 1 && w0 >= 0 && w0 + reach_w < W;
        for (size_t a = 0; a < g->kh; a++) {
            real *d = dst + a * run;
            const ptrdiff_t h = h0 + (ptrdiff_t)(a * g->dh);
            if (h < 0 || h >= H) {
                FN(zero)(d, run);
                continue;
            }
            const real *xr = x + h * W * (ptrdiff_t)C;
            if (whole_run) { /* the window's row lies inside: one contiguous run */
                FN(copy)(d, xr + w0 * (ptrdiff_t)C, run);
                continue;
            }
            for (size_t b = 0; b < g->kw; b++) {
                const ptrdiff_t w = w0 + (ptrdiff_t)(b * g->dw);
                if (w >= 0 && w < W)
                    FN(copy)(d + b * C, xr + w * (ptrdiff_t)C, C);
                else
                    FN(zero)(d + b * C, C);
            }
        }
        if (++ow == g->ow) {
            ow = 0;
            if (++oh == g->oh) {
                oh = 0;
                i++;
            }
        }
    }
}

/* The same patches transposed (one channel only): row t = (i, j) of dst holds
 * tap t of rows r0 .. r1 - 1. Per output row and kernel row, the image row is
 * copied once into rowbuf with its padding, and each tap's run is a plain copy
 * from it (where im2col copies kw single values per output). */
static ALWAYS_INLINE void FN(im2row)(const patch_geom *g, const real *src, ptrdiff_t ld,
                                     size_t r0, size_t r1, real *dst, real *rowbuf)
{
    const size_t P = g->oh * g->ow, n = r1 - r0, W = g->w, L = row_len(g);
    const ptrdiff_t lo = row_lo(g), sw = (ptrdiff_t)g->sw;
    size_t i = r0 / P, oh = r0 % P / g->ow, ow0 = r0 % g->ow;
    for (size_t r = r0; r < r1;) { /* one output row at a time */
        const size_t len = FUSENN_MIN(r1 - r, g->ow - ow0);
        real *d = dst + (r - r0);
        for (size_t a = 0; a < g->kh; a++, d += g->kw * n) {
            const ptrdiff_t h = (ptrdiff_t)(oh * g->sh + a * g->dh) - g->top;
            if (h < 0 || h >= (ptrdiff_t)g->h) {
                for (size_t b = 0; b < g->kw; b++)
                    FN(zero)(d + b * n, len);
                continue;
            }
            FN(zero)(rowbuf, (size_t)-lo);
            FN(copy)(rowbuf - lo, src + (ptrdiff_t)i * ld + h * (ptrdiff_t)W, W);
            FN(zero)(rowbuf - lo + W, L - W + (size_t)lo);
            for (size_t b = 0; b < g->kw; b++) {
                /* output column ow reads column ow sw + b dw - left */
                const real *from = rowbuf + (ptrdiff_t)(ow0 * g->sw + b * g->dw) - g->left - lo;
                if (sw == 1)
                    FN(copy)(d + b * n, from, len);
                else
                    for (size_t j = 0; j < len; j++)
                        d[b * n + j] = from[(ptrdiff_t)j * sw];
            }
        }
        r += len;
        ow0 = 0;
        if (++oh == g->oh) {
            oh = 0;
            i++;
        }
    }
}

/* The patch builders for each ISA: im2row (one channel) or im2col. */
static NO_LIBC_CALLS void FN(build_patches)(const patch_geom *g, const real *src, ptrdiff_t ld,
                                            size_t r0, size_t r1, real *dst)
{
    if (g->c == 1)
        FN(im2row)(g, src, ld, r0, r1, dst, dst + g->kh * g->kw * (r1 - r0));
    else
        FN(im2col)(g, src, ld, r0, r1, dst);
}

#if defined(__x86_64__) && defined(__GNUC__)
#define HAVE_X86_PATCHES 1
#include <immintrin.h>
static NO_LIBC_CALLS __attribute__((target("avx2"))) void
FN(build_patches_avx2)(const patch_geom *g, const real *src, ptrdiff_t ld, size_t r0, size_t r1,
                       real *dst)
{
    if (g->c == 1)
        FN(im2row)(g, src, ld, r0, r1, dst, dst + g->kh * g->kw * (r1 - r0));
    else
        FN(im2col)(g, src, ld, r0, r1, dst);
}

static NO_LIBC_CALLS __attribute__((target("avx512f,avx2"))) void
FN(build_patches_avx512)(const patch_geom *g, const real *src, ptrdiff_t ld, size_t r0,
                         size_t r1, real *dst)
{
    if (g->c == 1)
        FN(im2row)(g, src, ld, r0, r1, dst, dst + g->kh * g->kw * (r1 - r0));
    else
        FN(im2col)(g, src, ld, r0, r1, dst);
}
#endif

/* bsum[f] += dz[j F + f] for the n rows j in order, in double: 32 or 8
 * columns at a time in registers over all the rows, not bsum loaded and
 * stored for each row (2% of a VGG-style step). Each column's sum in the
 * same order. */
static ALWAYS_INLINE void FN(column_sums)(const real *dz, size_t n, size_t F, double *bsum)
{
    typedef double v8d __attribute__((vector_size(64), aligned(sizeof(double))));
    typedef real v8r __attribute__((vector_size(8 * sizeof(real)), aligned(sizeof(real))));
    size_t f = 0;
    for (; f + 32 <= F; f += 32) { /* four sums at once: an add's latency, not one per row */
        v8d acc[4];
        memcpy(acc, bsum + f, sizeof acc);
        for (size_t j = 0; j < n; j++)
            for (int v = 0; v < 4; v++) {
                v8r x;
                memcpy(&x, dz + j * F + f + 8 * v, sizeof x);
                acc[v] += __builtin_convertvector(x, v8d);
            }
        memcpy(bsum + f, acc, sizeof acc);
    }
    for (; f + 8 <= F; f += 8) {
        v8d acc;
        memcpy(&acc, bsum + f, sizeof acc);
        for (size_t j = 0; j < n; j++) {
            v8r v;
            memcpy(&v, dz + j * F + f, sizeof v);
            acc += __builtin_convertvector(v, v8d);
        }
        memcpy(bsum + f, &acc, sizeof acc);
    }
    for (; f < F; f++)
        for (size_t j = 0; j < n; j++)
            bsum[f] += dz[j * F + f];
}

static void FN(column_sums_generic)(const real *dz, size_t n, size_t F, double *bsum)
{
    FN(column_sums)(dz, n, F, bsum);
}

#ifdef HAVE_X86_PATCHES
static __attribute__((target("avx512f,avx2"))) void
FN(column_sums_avx512)(const real *dz, size_t n, size_t F, double *bsum)
{
    FN(column_sums)(dz, n, F, bsum);
}
#endif

/* The patch matrix of rows [r0, r1), element (row r, tap t) at
 * A[(r - r0) rs + t cs]: the image itself (1x1), transposed patches (one
 * channel), or patches (im2col); copied into slot. */
typedef struct {
    const real *A;
    ptrdiff_t rs, cs;
} FN(patch_matrix);

static FN(patch_matrix) FN(patches)(const patch_geom *g, const real *src, ptrdiff_t ld,
                                    size_t r0, size_t r1, real *slot)
{
    if (patches_in_place(g) && ld == (ptrdiff_t)(g->h * g->w * g->c))
        return (FN(patch_matrix)){src + r0 * g->c, (ptrdiff_t)g->c, 1};
#ifdef HAVE_X86_PATCHES
    const int isa = fusenn_isa_level();
    if (isa == FUSENN_ISA_AVX512)
        FN(build_patches_avx512)(g, src, ld, r0, r1, slot);
    else if (isa == FUSENN_ISA_AVX2)
        FN(build_patches_avx2)(g, src, ld, r0, r1, slot);
    else
#endif
        FN(build_patches)(g, src, ld, r0, r1, slot);
    if (g->c == 1)
        return (FN(patch_matrix)){slot, 1, (ptrdiff_t)(r1 - r0)};
    return (FN(patch_matrix)){slot, (ptrdiff_t)(g->kh * g->kw * g->c), 1};
}

/* The taps of a window at (h0, w0) of image x, every mr-th entry of t from
 * t[0]: each tap's c values in the image, or zeros in the padding. */
static void FN(edge_taps)(const patch_geom *g, const real *x, ptrdiff_t h0, ptrdiff_t w0,
                          const real *zeros, const real **t, size_t mr)
{
    const ptrdiff_t H = (ptrdiff_t)g->h, W = (ptrdiff_t)g->w, C = (ptrdiff_t)g->c;
    for (size_t a = 0; a < g->kh; a++) {
        const ptrdiff_t h = h0 + (ptrdiff_t)(a * g->dh);
        for (size_t b = 0; b < g->kw; b++) {
            const ptrdiff_t w = w0 + (ptrdiff_t)(b * g->dw);
            const int inside = h >= 0 && h < H && w >= 0 && w < W;
            t[(a * g->kw + b) * mr] = inside ? x + (h * W + w) * C : zeros;
        }
    }
}

/* The tap pointers of rows [r0, r1) of patches of images at src (sample
 * stride ld), as fusenn_gemm_indirect reads them: tile by tile (mr rows),
 * tap by tap, a pointer per row to the tap's c values in the image, or to
 * zeros where the tap falls in the padding; a last tile's rows past r1 read
 * zeros too. */
static void FN(tap_pointers)(const patch_geom *g, const real *src, ptrdiff_t ld, size_t r0,
                             size_t r1, size_t mr, const real *zeros, const real **table)
{
    const size_t P = g->oh * g->ow, C = g->c, taps = g->kh * g->kw, m = r1 - r0;
    const ptrdiff_t H = (ptrdiff_t)g->h, W = (ptrdiff_t)g->w;
    const ptrdiff_t reach_h = (ptrdiff_t)((g->kh - 1) * g->dh);
    const ptrdiff_t reach_w = (ptrdiff_t)((g->kw - 1) * g->dw);
    enum { MAX_TAPS = 64, MAX_MR = 16 };
    /* a window inside the image: each tap's offset in bytes from its first tap */
    uintptr_t offset[MAX_TAPS];
    const int by_offset = taps <= MAX_TAPS && mr <= MAX_MR;
    for (size_t tap = 0; by_offset && tap < taps; tap++)
        offset[tap] = (uintptr_t)(((ptrdiff_t)(tap / g->kw * g->dh) * W +
                                   (ptrdiff_t)(tap % g->kw * g->dw)) *
                                  (ptrdiff_t)(C * sizeof(real)));
    size_t i = r0 / P, oh = r0 % P / g->ow, ow = r0 % g->ow;
    for (size_t r = 0; r < m; r += mr) { /* tile by tile */
        const real **tile = table + r / mr * taps * mr;
        uintptr_t first[MAX_MR] = {0}; /* each row's first tap, where its window lies inside */
        size_t edge[MAX_MR], edges = 0; /* the other rows */
        for (size_t row = 0; row < mr; row++) {
            if (r + row >= m) { /* past the last row: zeros */
                if (by_offset)
                    edge[edges++] = row;
                else
                    for (size_t tap = 0; tap < taps; tap++)
                        tile[tap * mr + row] = zeros;
                continue;
            }
            const real *x = src + (ptrdiff_t)i * ld;
            const ptrdiff_t h0 = (ptrdiff_t)(oh * g->sh) - g->top;
            const ptrdiff_t w0 = (ptrdiff_t)(ow * g->sw) - g->left;
            if (by_offset && h0 >= 0 && h0 + reach_h < H && w0 >= 0 && w0 + reach_w < W) {
                first[row] = (uintptr_t)(x + (h0 * W + w0) * (ptrdiff_t)C);
            } else if (by_offset) {
                edge[edges++] = row;
            } else {
                FN(edge_taps)(g, x, h0, w0, zeros, tile + row, mr);
            }
            if (++ow == g->ow) {
                ow = 0;
                if (++oh == g->oh) {
                    oh = 0;
                    i++;
                }
            }
        }
        if (!by_offset)
            continue;
        /* every row a tap at a time (contiguous stores, in vectors), then the
         * rows whose windows reach the padding, or are past the last, again */
        for (size_t tap = 0; tap < taps; tap++)
            for (size_t row = 0; row < mr; row++)
                tile[tap * mr + row] = (const real *)(first[row] + offset[tap]);
        for (size_t e = 0; e < edges; e++) {
            const size_t row = edge[e];
            if (r + row >= m) {
                for (size_t tap = 0; tap < taps; tap++)
                    tile[tap * mr + row] = zeros;
                continue;
            }
            const size_t at = r0 + r + row;
            const size_t ie = at / P, ohe = at % P / g->ow, owe = at % g->ow;
            FN(edge_taps)(g, src + (ptrdiff_t)ie * ld, (ptrdiff_t)(ohe * g->sh) - g->top,
                          (ptrdiff_t)(owe * g->sw) - g->left, zeros, tile + row, mr);
        }
    }
}

/* ---- one-channel layers with few filters: direct kernels --------------------
 * The first conv of one-channel images with few filters (LeNet's: 5x5, 6
 * filters over 28x28) is a tiny product (kh kw x F) over many positions. The
 * GEMM's tiles are 16 filters wide, of which F work, and its patches copied
 * every tap of every position (im2row: 0.3 of the layer's 0.6 ms forward).
 * Here the positions are the vector lanes: each sample is copied once,
 * zero-padded, and every tap is a shifted read of it.
 *   forward  y[j, f] = sum_t xp[j + off(t)] w[t, f] + b[f]: the taps in order,
 *            then the bias, as the GEMM's store (the same bits)
 *   dW       acc[t][f] += xp[j + off(t)] dZ^T[f, j] lane by lane over a
 *            group's positions (DIRECT_T x DIRECT_F accumulators in registers over
 *            a chunk); the lanes are summed in order at the end
 * Partial vectors (an output row's tail) are masked loads. */

#ifdef HAVE_X86_PATCHES
#if defined(FUSENN_DTYPE_F32)
#define MASK_LOAD(m, p) ((FN(v64))_mm512_maskz_loadu_ps((__mmask16)(m), (p)))
#else
#define MASK_LOAD(m, p) ((FN(v64))_mm512_maskz_loadu_pd((__mmask8)(m), (p)))
#endif

/* The first `len` values at p, the rest 0. */
static ALWAYS_INLINE __attribute__((target("avx512f,avx2,fma"))) FN(v64)
FN(load_part)(const real *p, size_t len)
{
    return len == V64_LANES ? *(const FN(v64) *)p : MASK_LOAD((1u << len) - 1, p);
}

/* Sample x into xp (pad_h x pad_w), zeros outside the image. */
static ALWAYS_INLINE void FN(pad_image)(const patch_geom *q, const real *x, real *xp)
{
    const size_t PW = pad_w(q);
    const size_t c0 = FUSENN_MIN((size_t)q->left, PW), c1 = FUSENN_MIN(q->left + q->w, PW);
    for (size_t r = 0; r < pad_h(q); r++) {
        const ptrdiff_t h = (ptrdiff_t)r - q->top;
        real *d = xp + r * PW;
        if (h < 0 || h >= (ptrdiff_t)q->h) {
            FN(zero)(d, PW);
            continue;
        }
        FN(zero)(d, c0);
        FN(copy)(d + c0, x + h * (ptrdiff_t)q->w + (ptrdiff_t)(c0 - (size_t)q->left), c1 - c0);
        FN(zero)(d + c1, PW - c1);
    }
}

/* Rows [r0, r1) of out (F values each, row r at out + r F) from the images at
 * x (sample stride ldx), xp holding one padded image. */
static NO_LIBC_CALLS __attribute__((target("avx512f,avx2,fma"))) void
FN(direct_forward)(const patch_geom *q, size_t F, const real *x, ptrdiff_t ldx, size_t r0,
                   size_t r1, const real *w, const real *bias, real *out, real *xp)
{
    typedef FN(v64) vec;
    const size_t P = q->oh * q->ow, PW = pad_w(q), KW = q->kw;
    real tile[DIRECT_F][V64_LANES] __attribute__((aligned(64)));
    size_t i = r0 / P, oh = r0 % P / q->ow, ow0 = r0 % q->ow, padded = (size_t)-1;
    for (size_t r = r0; r < r1;) { /* one output row at a time */
        const size_t ow1 = ow0 + FUSENN_MIN(r1 - r, q->ow - ow0);
        if (padded != i)
            FN(pad_image)(q, x + (ptrdiff_t)i * ldx, xp);
        padded = i;
        for (size_t ow = ow0; ow < ow1; ow += V64_LANES) {
            const size_t len = FUSENN_MIN(V64_LANES, ow1 - ow);
            real *o = out + (r + ow - ow0) * F;
            for (size_t fb = 0; fb < F; fb += DIRECT_F) {
                vec acc[DIRECT_F];
                for (size_t f = 0; f < DIRECT_F; f++)
                    acc[f] = (vec){0};
                for (size_t a = 0; a < q->kh; a++) {
                    const real *row = xp + (oh * q->sh + a * q->dh) * PW + ow;
                    for (size_t b = 0; b < KW; b++) {
                        const vec av = FN(load_part)(row + b * q->dw, len);
                        const real *wt = w + (a * KW + b) * F;
                        for (size_t f = 0; f < DIRECT_F; f++) /* past F: repeats the last filter */
                            acc[f] += av * wt[FUSENN_MIN(fb + f, F - 1)];
                    }
                }
                for (size_t f = 0; f < DIRECT_F; f++) {
                    if (bias)
                        acc[f] += bias[FUSENN_MIN(fb + f, F - 1)];
                    *(vec *)tile[f] = acc[f];
                }
                for (size_t l = 0; l < len; l++)
                    for (size_t f = fb; f < FUSENN_MIN(F, fb + DIRECT_F); f++)
                        o[l * F + f] = tile[f - fb][l];
            }
        }
        r += ow1 - ow0;
        ow0 = 0;
        if (++oh == q->oh) {
            oh = 0;
            i++;
        }
    }
}

/* acc[t][f] (+)= xp[j + off(t)] dzt[f n + j] lane by lane over the rows [r0, r1)
 * (n of them, j = r - r0), t < kh kw, f < DIRECT_F (dzt's rows past the filters
 * zero); acc_out holds kh kw x DIRECT_F vectors; imgs room for the padded images
 * of the chunk's samples. */
static NO_LIBC_CALLS __attribute__((target("avx512f,avx2,fma"))) void
FN(direct_weight_grad)(const patch_geom *q, const real *x, ptrdiff_t ldx, size_t r0, size_t r1,
                       const real *dzt, int first, real *acc_out, real *imgs)
{
    typedef FN(v64) vec;
    const size_t P = q->oh * q->ow, PW = pad_w(q), image = pad_h(q) * PW, n = r1 - r0;
    const size_t T = q->kh * q->kw, i0 = r0 / P;
    for (size_t i = i0; i <= (r1 - 1) / P; i++)
        FN(pad_image)(q, x + (ptrdiff_t)i * ldx, imgs + (i - i0) * image);
    for (size_t t0 = 0; t0 < T; t0 += DIRECT_T) {
        size_t off[DIRECT_T];
        vec *out[DIRECT_T];
        vec acc[DIRECT_T][DIRECT_F];
        for (size_t u = 0; u < DIRECT_T; u++) { /* an odd last tap is computed twice */
            const size_t t = FUSENN_MIN(t0 + u, T - 1);
            off[u] = t / q->kw * q->dh * PW + t % q->kw * q->dw;
            out[u] = (vec *)acc_out + t * DIRECT_F;
            for (size_t f = 0; f < DIRECT_F; f++)
                acc[u][f] = first ? (vec){0} : out[u][f];
        }
        size_t i = i0, oh = r0 % P / q->ow, ow0 = r0 % q->ow;
        for (size_t r = r0; r < r1;) { /* one output row at a time */
            const size_t ow1 = ow0 + FUSENN_MIN(r1 - r, q->ow - ow0);
            const real *row = imgs + (i - i0) * image + oh * q->sh * PW;
            for (size_t ow = ow0; ow < ow1; ow += V64_LANES) {
                const size_t len = FUSENN_MIN(V64_LANES, ow1 - ow), j = r - r0 + ow - ow0;
                vec av[DIRECT_T], bv[DIRECT_F];
                for (size_t u = 0; u < DIRECT_T; u++)
                    av[u] = FN(load_part)(row + off[u] + ow, len);
                for (size_t f = 0; f < DIRECT_F; f++)
                    bv[f] = FN(load_part)(dzt + f * n + j, len);
                for (size_t u = 0; u < DIRECT_T; u++)
                    for (size_t f = 0; f < DIRECT_F; f++)
                        acc[u][f] += av[u] * bv[f];
            }
            r += ow1 - ow0;
            ow0 = 0;
            if (++oh == q->oh) {
                oh = 0;
                i++;
            }
        }
        for (size_t u = DIRECT_T; u-- > 0;) /* the duplicate tap first: the real one wins */
            for (size_t f = 0; f < DIRECT_F; f++)
                out[u][f] = acc[u][f];
    }
}

/* dzt[f n + j] = dz[j F + f] for j < n, f < F, gathered 64 bytes at a time; and
 * unless bsum is NULL, bsum[f] += the row's sum (its lanes in float, then
 * added in order in double). Values one by one took 5% of a LeNet step. */
static NO_LIBC_CALLS __attribute__((target("avx512f,avx2,fma"))) void
FN(direct_transpose)(const real *dz, size_t n, size_t F, real *dzt, double *bsum)
{
    typedef FN(v64) vec;
#if defined(FUSENN_DTYPE_F32)
    const __m512i at = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        _mm512_set1_epi32((int)F));
#define GATHER(m, p) \
    ((vec)_mm512_mask_i32gather_ps(_mm512_setzero_ps(), (__mmask16)(m), at, (p), 4))
#else
    const __m256i at = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                                          _mm256_set1_epi32((int)F));
#define GATHER(m, p) \
    ((vec)_mm512_mask_i32gather_pd(_mm512_setzero_pd(), (__mmask8)(m), at, (p), 8))
#endif
    for (size_t f = 0; f < F; f++) {
        vec sum = {0};
        for (size_t j = 0; j < n; j += V64_LANES) {
            const size_t len = FUSENN_MIN(V64_LANES, n - j);
            const vec v = GATHER((1u << len) - 1, dz + j * F + f);
            sum += v;
            if (len == V64_LANES)
                *(vec *)(dzt + f * n + j) = v;
            else
                for (size_t l = 0; l < len; l++)
                    dzt[f * n + j + l] = v[l];
        }
        if (bsum)
            for (size_t l = 0; l < V64_LANES; l++)
                bsum[f] += sum[l];
    }
#undef GATHER
}
#endif

/* ---- forward ---------------------------------------------------------------- */

typedef struct {
    conv_geom g;
    FN(conv_work) w;
    size_t n;
    const real *x, *kernel, *bias;
    ptrdiff_t ldx, ldy;
    real *y, *z; /* z: where the pre-activation is kept, or NULL */
    fusenn_activation act;
    void *work;
} FN(conv_fwd);

/* The activation of rows [r0, r1), from out (z, or y itself; sample stride
 * ld_out) into y: the chunk at once where its rows are contiguous and the
 * activation elementwise, else row by row. The standalone activation
 * kernel's code, so the same bits. */
static void FN(activate_rows)(const FN(conv_fwd) *p, size_t r0, size_t r1, const real *out,
                              ptrdiff_t ld_out)
{
    const size_t P = p->g.fwd.oh * p->g.fwd.ow, F = p->g.f;
    const fusenn_activation act = p->act;
    if (act == FUSENN_ACT_IDENTITY && out == p->y)
        return;
    if (act != FUSENN_ACT_SOFTMAX && ld_out == (ptrdiff_t)(P * F) &&
        p->ldy == (ptrdiff_t)(P * F)) {
        FN(activate_row_baseline)(act, (r1 - r0) * F, out + r0 * F, p->y + r0 * F);
        return;
    }
    for (size_t r = r0; r < r1; r++) {
        const real *zr = out + (ptrdiff_t)(r / P) * ld_out + (ptrdiff_t)(r % P * F);
        real *yr = p->y + (ptrdiff_t)(r / P) * p->ldy + (ptrdiff_t)(r % P * F);
        if (act == FUSENN_ACT_SOFTMAX)
            FN(softmax_row)(F, zr, yr);
        else
            FN(activate_row_baseline)(act, F, zr, yr);
    }
}

/* Chunk c of the forward, in slot. */
static size_t FN(forward_chunk)(const void *ctx, size_t c, real *slot)
{
    const FN(conv_fwd) *p = ctx;
    const conv_geom *g = &p->g;
    const size_t P = g->fwd.oh * g->fwd.ow, F = g->f, R = p->w.rows, m = p->n * P;
    const fusenn_activation act = p->act;
    /* the GEMM's store applies the bias and an elementwise activation; softmax
     * (whole rows) and an activation whose z is kept run over the chunk's rows after it */
    const int after = p->z != NULL || act == FUSENN_ACT_SOFTMAX;
    real *out = p->z ? p->z : p->y;
    const ptrdiff_t ld_out = p->z ? (ptrdiff_t)(P * F) : p->ldy;
    const int contiguous = ld_out == (ptrdiff_t)(P * F);
    const size_t r0 = c * R, r1 = FUSENN_MIN(m, r0 + R);
#ifdef HAVE_X86_PATCHES
    if (one_channel_direct(g) && contiguous) {
        FN(direct_forward)(&g->fwd, F, p->x, p->ldx, r0, r1, p->kernel, p->bias, out, slot);
        FN(activate_rows)(p, r0, r1, out, ld_out);
        return 0;
    }
#endif
    if (patches_by_pointer(&g->fwd) && contiguous) {
        const real **taps = (const real **)(void *)slot;
        FN(tap_pointers)(&g->fwd, p->x, p->ldx, r0, r1, FN(fusenn_gemm_packed_mr)(&p->w.packed),
                         FN(zeros)(&p->w, p->work), taps);
        const int rc = FN(fusenn_gemm_indirect)(&p->w.packed, r1 - r0, g->cin, taps,
                                                FN(packed_w)(&p->w, p->work), out + r0 * F,
                                                (ptrdiff_t)F, p->bias,
                                                after ? FUSENN_ACT_IDENTITY : act);
        if (after)
            FN(activate_rows)(p, r0, r1, out, ld_out);
        return rc != FUSENN_OK;
    }
    const FN(patch_matrix) A = FN(patches)(&g->fwd, p->x, p->ldx, r0, r1, slot);
    size_t failed = 0;
    for (size_t r = r0, e; r < r1; r = e) { /* a GEMM per sample unless the output is contiguous */
        e = contiguous ? r1 : FUSENN_MIN(r1, (r / P + 1) * P);
        failed += FN(fusenn_gemm_fused)(
                      e - r, F, g->k, 1, A.A + (ptrdiff_t)(r - r0) * A.rs, A.rs, A.cs,
                      p->kernel, (ptrdiff_t)F, 1, 0,
                      out + (ptrdiff_t)(r / P) * ld_out + (ptrdiff_t)(r % P * F),
                      (ptrdiff_t)F, 1, p->bias, after ? FUSENN_ACT_IDENTITY : act,
                      1) != FUSENN_OK;
    }
    if (after)
        FN(activate_rows)(p, r0, r1, out, ld_out);
    return failed;
}

/* Work given to the threads one unit at a time, fn(ctx, unit, the running
 * thread's slot), as GEMM's slabs are: a vCPU slowed by other machines then
 * holds the others back less. A unit's result does not depend on who runs it. */
typedef size_t (*FN(unit_fn))(const void *ctx, size_t unit, real *slot);

typedef struct {
    FN(unit_fn) fn;
    const void *ctx;
    const FN(conv_work) *w;
    void *work;
} FN(conv_units);

static size_t FN(conv_unit)(const void *ctx, size_t unit, int thread)
{
    const FN(conv_units) *c = ctx;
    return c->fn(c->ctx, unit, FN(slot)(c->w, c->work, (size_t)thread));
}

static size_t FN(run_units)(size_t threads, size_t units, FN(unit_fn) fn, const void *ctx,
                            const FN(conv_work) *w, void *work)
{
    const FN(conv_units) c = {fn, ctx, w, work};
    return fusenn_parallel_units((int)threads, units, FN(conv_unit), &c);
}

/* Threads for a pass of `units` parts of work over m rows of GEMMs m x n x k. */
static size_t conv_threads(int nthreads, size_t units, size_t m, size_t n, size_t k)
{
    if (nthreads <= 1 || fusenn_gemm_is_serial(m, n, k))
        return 1;
    return FUSENN_MIN((size_t)nthreads, FUSENN_MIN(units, (size_t)CONV_SLOTS));
}

/* ---- Winograd's passes --------------------------------------------------------- */

#include "conv2d_winograd.h"

/* A pass over patches q of the n images at src (sample stride ld) into n_out
 * channels of out with the 3x3 kernel w (3, 3, q->c, n_out): its 16 U_xi
 * computed in slot 0 and packed, then the chunks of tiles on the threads. */
static int FN(winograd_run)(const FN(conv_work) *w, void *work, const patch_geom *q,
                            size_t n_out, size_t rows, const FN(gemm_packed) *packed,
                            const real *kernel, size_t n, const real *src, ptrdiff_t ld,
                            const real *bias, int relu, real *out, size_t threads)
{
    real *u = FN(slot)(w, work, 0), *up = (real *)((char *)work + w->wino_at);
    FN(winograd_kernel)(q->c, n_out, kernel, u);
    for (size_t xi = 0; xi < 16; xi++)
        FN(fusenn_gemm_pack_b)(packed, u + xi * q->c * n_out, (ptrdiff_t)n_out, 1,
                               up + xi * packed->len);
    const FN(winograd_pass) p = {q, n, n_out, rows, src, up, bias, ld, packed, relu, out};
    const size_t chunks = winograd_chunks(q, n, rows);
    return FN(run_units)(FUSENN_MAX(FUSENN_MIN(threads, chunks), (size_t)1), chunks,
                         FN(winograd_chunk), &p, w, work)
               ? FUSENN_ENOMEM : FUSENN_OK;
}

/* ---- backward ---------------------------------------------------------------- */

typedef struct {
    conv_geom g;
    FN(conv_work) w;
    size_t n;
    const real *x, *y, *z, *kernel;
    ptrdiff_t ldx, ldy;
    real *dz, *dx, *wt;
    fusenn_activation act;
    void *work;
} FN(conv_bwd);

/* dW's group gi: dZ = dY act'(.) of its rows, in place, and its partial sums
 * of dZ (for db, in double) and of patches^T dZ (Winograd: of dU_xi = V_xi^T
 * dM_xi), its chunks in order. */
static size_t FN(weight_grad_group)(const void *ctx, size_t gi, real *slot)
{
    const FN(conv_bwd) *p = ctx;
    const conv_geom *g = &p->g;
    const size_t P = g->fwd.oh * g->fwd.ow, F = g->f, K = g->k, R = p->w.rows, m = p->n * P;
    const size_t chunks = div_up(m, R);
    const int flat = p->act != FUSENN_ACT_SOFTMAX && p->ldy == (ptrdiff_t)(P * F);
    const int direct = one_channel_direct(g), by_pointer = weight_grad_by_pointer(&g->fwd, F);
    size_t failed = 0;
    real *part = (real *)((char *)p->work + p->w.part_at) + gi * p->w.part_len;
    double *bsum = g->bias ? (double *)((char *)p->work + p->w.bpart_at) + gi * F : NULL;
    if (bsum)
        for (size_t j = 0; j < F; j++)
            bsum[j] = 0;
    if (p->w.wino_rows) {
        const FN(winograd_pass) pass = {&g->fwd, p->n, F, p->w.wino_rows, p->x, NULL, NULL,
                                        p->ldx, NULL, p->act == FUSENN_ACT_RELU, p->dz};
        const size_t w_chunks = winograd_chunks(&g->fwd, p->n, p->w.wino_rows);
        const size_t c0 = fusenn_chunk_start(gi, p->w.groups, w_chunks);
        const size_t c1 = fusenn_chunk_start(gi + 1, p->w.groups, w_chunks);
        for (size_t c = c0; c < c1; c++)
            failed += FN(winograd_weight_grad_chunk)(&pass, c, c == c0, p->y, p->ldy, part,
                                                     bsum, slot);
        return failed;
    }
    const size_t c0 = fusenn_chunk_start(gi, p->w.groups, chunks);
    const size_t c1 = fusenn_chunk_start(gi + 1, p->w.groups, chunks);
    for (size_t c = c0; c < c1; c++) {
        const size_t r0 = c * R, r1 = FUSENN_MIN(m, r0 + R);
        if (p->act != FUSENN_ACT_IDENTITY && flat) { /* elementwise: the rows as one */
            FN(activate_backward_row)(p->act, (r1 - r0) * F, p->z ? p->z + r0 * F : NULL,
                                      p->y + r0 * F, p->dz + r0 * F, p->dz + r0 * F);
        } else if (p->act != FUSENN_ACT_IDENTITY) {
            for (size_t r = r0; r < r1; r++)
                FN(activate_backward_row)(p->act, F, p->z ? p->z + r * F : NULL,
                                          p->y + (ptrdiff_t)(r / P) * p->ldy +
                                              (ptrdiff_t)(r % P * F),
                                          p->dz + r * F, p->dz + r * F);
        }
        const size_t n = r1 - r0;
        real *dzt = slot + p->w.dzt_at;
        const real *dz = p->dz + r0 * F;
#ifdef HAVE_X86_PATCHES
        if (direct) {
            FN(direct_transpose)(dz, n, F, dzt, bsum);
            for (size_t f = F; f < div_up(F, DIRECT_F) * DIRECT_F; f++) /* the rows past F */
                FN(zero)(dzt + f * n, n);
            for (size_t fb = 0; fb < F; fb += DIRECT_F)
                FN(direct_weight_grad)(&g->fwd, p->x, p->ldx, r0, r1, dzt + fb * n, c == c0,
                                       part + fb / DIRECT_F * K * DIRECT_F * V64_LANES, slot);
            continue;
        }
#endif
        if (bsum) {
#ifdef HAVE_X86_PATCHES
            if (fusenn_isa_level() == FUSENN_ISA_AVX512)
                FN(column_sums_avx512)(dz, n, F, bsum);
            else
#endif
                FN(column_sums_generic)(dz, n, F, bsum);
        }
        if (by_pointer) { /* part^T (+)= dZ^T patches */
            const real **rows = (const real **)(void *)slot;
            FN(tap_pointers)(&g->fwd, p->x, p->ldx, r0, r1, 1, FN(zeros)(&p->w, p->work), rows);
            failed += FN(fusenn_gemm_rows_b)(F, g->fwd.kh * g->fwd.kw, g->cin, n, dz, 1,
                                             (ptrdiff_t)F, rows, c == c0 ? 0 : 1, part,
                                             (ptrdiff_t)K) != FUSENN_OK;
            continue;
        }
        const FN(patch_matrix) A = FN(patches)(&g->fwd, p->x, p->ldx, r0, r1, slot);
        /* part (+)= patches^T dZ: the patches read transposed */
        failed += FN(fusenn_gemm)(K, F, n, 1, A.A, A.cs, A.rs, p->dz + r0 * F,
                                  (ptrdiff_t)F, 1, c == c0 ? 0 : 1, part, (ptrdiff_t)F, 1,
                                  1) != FUSENN_OK;
    }
    return failed;
}

/* Chunk c of the stride-1 input gradient: the patches of dZ (in slot) times W'. */
static size_t FN(input_grad_chunk)(const void *ctx, size_t c, real *slot)
{
    const FN(conv_bwd) *p = ctx;
    const conv_geom *g = &p->g;
    const size_t Cin = g->cin, R = p->w.rows_bwd, m = p->n * g->fwd.h * g->fwd.w;
    const ptrdiff_t ld_dz = (ptrdiff_t)(g->fwd.oh * g->fwd.ow * g->f);
    const size_t r0 = c * R, r1 = FUSENN_MIN(m, r0 + R);
    if (patches_by_pointer(&g->bwd)) {
        const real **taps = (const real **)(void *)slot;
        FN(tap_pointers)(&g->bwd, p->dz, ld_dz, r0, r1,
                         FN(fusenn_gemm_packed_mr)(&p->w.packed_bwd), FN(zeros)(&p->w, p->work),
                         taps);
        return FN(fusenn_gemm_indirect)(&p->w.packed_bwd, r1 - r0, g->f, taps,
                                        FN(packed_w)(&p->w, p->work), p->dx + r0 * Cin,
                                        (ptrdiff_t)Cin, NULL, FUSENN_ACT_IDENTITY) != FUSENN_OK;
    }
    const FN(patch_matrix) A = FN(patches)(&g->bwd, p->dz, ld_dz, r0, r1, slot);
    return FN(fusenn_gemm)(r1 - r0, Cin, g->k_bwd, 1, A.A, A.rs, A.cs, p->wt, (ptrdiff_t)Cin,
                           1, 0, p->dx + r0 * Cin, (ptrdiff_t)Cin, 1, 1) != FUSENN_OK;
}

/* Add the rows [r0, r1) of dcols (K values each: the input gradient of one
 * output's window) over their windows into dx (the images of samples
 * r / (oh ow), in_size apart), in row order. */
static ALWAYS_INLINE void FN(col2im)(const patch_geom *q, const real *dcols, size_t r0,
                                     size_t r1, real *dx)
{
    const size_t P = q->oh * q->ow, C = q->c, K = q->kh * q->kw * C;
    const size_t in_size = q->h * q->w * C;
    const ptrdiff_t H = (ptrdiff_t)q->h, W = (ptrdiff_t)q->w;
    size_t i = r0 / P, oh = r0 % P / q->ow, ow = r0 % q->ow;
    for (size_t r = r0; r < r1; r++) {
        const real *s = dcols + (r - r0) * K;
        real *image = dx + i * in_size;
        const ptrdiff_t h0 = (ptrdiff_t)(oh * q->sh) - q->top;
        const ptrdiff_t w0 = (ptrdiff_t)(ow * q->sw) - q->left;
        if (++ow == q->ow) { /* the next row's position */
            ow = 0;
            if (++oh == q->oh) {
                oh = 0;
                i++;
            }
        }
        const int whole_run = q->dw == 1 && w0 >= 0 && w0 + (ptrdiff_t)q->kw <= W;
        for (size_t a = 0; a < q->kh; a++) {
            const ptrdiff_t h = h0 + (ptrdiff_t)(a * q->dh);
            if (h < 0 || h >= H)
                continue;
            if (whole_run) { /* the window's row lies inside: one run */
                FN(add_to)(image + (h * W + w0) * (ptrdiff_t)C, s + a * q->kw * C, q->kw * C);
                continue;
            }
            for (size_t b = 0; b < q->kw; b++) {
                const ptrdiff_t w = w0 + (ptrdiff_t)(b * q->dw);
                if (w >= 0 && w < W)
                    FN(add_to)(image + (h * W + w) * (ptrdiff_t)C, s + (a * q->kw + b) * C, C);
            }
        }
    }
}

static void FN(col2im_generic)(const patch_geom *q, const real *dcols, size_t r0, size_t r1,
                               real *dx)
{
    FN(col2im)(q, dcols, r0, r1, dx);
}

#ifdef HAVE_X86_PATCHES
static __attribute__((target("avx512f,avx2"))) void
FN(col2im_avx512)(const patch_geom *q, const real *dcols, size_t r0, size_t r1, real *dx)
{
    FN(col2im)(q, dcols, r0, r1, dx);
}
#endif

/* Sample i of the strided input gradient: zeroed, then per chunk of its rows
 * dZ W^T (into slot) added over the windows in row order. */
static size_t FN(col2im_sample)(const void *ctx, size_t i, real *slot)
{
    const FN(conv_bwd) *p = ctx;
    const conv_geom *g = &p->g;
    const patch_geom *q = &g->fwd;
    const size_t P = q->oh * q->ow, F = g->f, K = g->k, R = p->w.rows_bwd;
    const size_t in_size = q->h * q->w * q->c;
    size_t failed = 0;
    FN(zero)(p->dx + i * in_size, in_size);
    for (size_t r0 = i * P; r0 < (i + 1) * P; r0 += R) {
        const size_t r1 = FUSENN_MIN((i + 1) * P, r0 + R);
        failed += FN(fusenn_gemm)(r1 - r0, K, F, 1, p->dz + r0 * F, (ptrdiff_t)F, 1, p->wt,
                                  (ptrdiff_t)K, 1, 0, slot, (ptrdiff_t)K, 1, 1) != FUSENN_OK;
#ifdef HAVE_X86_PATCHES
        if (fusenn_isa_level() == FUSENN_ISA_AVX512) {
            FN(col2im_avx512)(q, slot, r0, r1, p->dx);
            continue;
        }
#endif
        FN(col2im_generic)(q, slot, r0, r1, p->dx);
    }
    return failed;
}

/* W' for the stride-1 input gradient, (kh kw F) x Cin: the kernel flipped in
 * both directions with its channels swapped, W'[i', j', f, c] = w[kh-1-i', kw-1-j', c, f]. */
static void FN(flip_kernel)(const conv_geom *g, const real *w, real *wt)
{
    const size_t KH = g->fwd.kh, KW = g->fwd.kw, Cin = g->cin, F = g->f;
    for (size_t a = 0; a < KH; a++)
        for (size_t b = 0; b < KW; b++) {
            const real *src = w + ((KH - 1 - a) * KW + (KW - 1 - b)) * Cin * F;
            real *dst = wt + (a * KW + b) * F * Cin;
            for (size_t f = 0; f < F; f++)
                for (size_t c = 0; c < Cin; c++)
                    dst[f * Cin + c] = src[c * F + f];
        }
}

/* ---- the layer kind ------------------------------------------------------------ */

static int FN(conv2d_output_shape)(const fusenn_layer *desc, const fusenn_shape *in,
                                   fusenn_shape *out)
{
    conv_geom g;
    if (conv_geometry(desc, in, &g) != FUSENN_OK)
        return FUSENN_EINVAL;
    *out = (fusenn_shape){3, {g.fwd.oh, g.fwd.ow, g.f, 0}};
    return FUSENN_OK;
}

static size_t FN(conv2d_params)(const fusenn_layer *desc, const fusenn_shape *in,
                                fusenn_shape *shapes, int *decayed)
{
    conv_geom g;
    conv_geometry(desc, in, &g);
    shapes[0] = (fusenn_shape){4, {g.fwd.kh, g.fwd.kw, g.cin, g.f}}; /* the kernel */
    decayed[0] = 1;
    if (!g.bias)
        return 1;
    shapes[1] = fusenn_shape1(g.f);
    decayed[1] = 0;
    return 2;
}

/* The pre-activation z, kept when the activation's derivative needs it. */
static size_t FN(conv2d_saved_bytes)(const FN(layer) *layer, size_t n)
{
    return fusenn_act_needs_z(conv_activation(layer->desc)) ? n * layer->out_size * sizeof(real)
                                                            : 0;
}

static size_t FN(conv2d_work_bytes)(const FN(layer) *layer, size_t n)
{
    conv_geom g;
    if (conv_geometry(layer->desc, &layer->in, &g) != FUSENN_OK)
        return 0;
    return FN(work_layout)(&g, n).total;
}

static int FN(conv2d_forward)(const FN(layer) *layer, FN(forward_args) *a)
{
    FN(conv_fwd) p = {.n = a->n, .x = a->x, .ldx = a->ldx, .y = a->y, .ldy = a->ldy,
                      .kernel = layer->param[0], .work = a->work};
    if (conv_geometry(layer->desc, &layer->in, &p.g) != FUSENN_OK)
        return FUSENN_EINVAL;
    p.w = FN(work_layout)(&p.g, a->n);
    p.bias = p.g.bias ? layer->param[1] : NULL;
    p.act = a->logits ? FUSENN_ACT_IDENTITY : p.g.act;
    p.z = fusenn_act_needs_z(p.act) ? a->saved : NULL;
    const size_t m = a->n * p.g.fwd.oh * p.g.fwd.ow;
    const size_t chunks = div_up(m, p.w.rows);
    a->result = a->y;
    a->ld_result = a->ldy;
    if (p.w.wino_rows && p.z == NULL && a->ldy == (ptrdiff_t)(p.g.fwd.oh * p.g.fwd.ow * p.g.f))
        return FN(winograd_run)(&p.w, a->work, &p.g.fwd, p.g.f, p.w.wino_rows, &p.w.wino,
                                p.kernel, a->n, a->x, a->ldx, p.bias, p.act == FUSENN_ACT_RELU,
                                a->y, conv_threads(a->nthreads, chunks, m, p.g.f, p.g.k));
    if (patches_by_pointer(&p.g.fwd))
        FN(prepare_by_pointer)(&p.g, &p.w, &p.w.packed, p.kernel, a->work);
    const size_t failed =
        FN(run_units)(conv_threads(a->nthreads, chunks, m, p.g.f, p.g.k), chunks,
                      FN(forward_chunk), &p, &p.w, a->work);
    return failed ? FUSENN_ENOMEM : FUSENN_OK;
}

/* dW from the groups' partial sums, elements [j0, j1): each the groups' sums
 * added in order (and, for the direct kernels' lane vectors, their lanes). */
typedef struct {
    const conv_geom *g;
    const FN(conv_work) *w;
    const real *part;
    real *dw;
} FN(group_sums);

static size_t FN(add_groups)(const void *ctx, size_t j0, size_t j1)
{
    const FN(group_sums) *p = ctx;
    const size_t K = p->g->k, F = p->g->f, len = p->w->part_len, groups = p->w->groups;
    const int transposed = weight_grad_by_pointer(&p->g->fwd, F); /* partials hold dW^T */
    for (size_t j = j0; j < j1; j++) {
        if (one_channel_direct(p->g)) {
            const size_t t = j / F, f = j % F, block = f / DIRECT_F;
            const real *v = p->part + ((block * K + t) * DIRECT_F + f % DIRECT_F) * V64_LANES;
            real s = 0;
            for (size_t gi = 0; gi < groups; gi++)
                for (size_t l = 0; l < V64_LANES; l++)
                    s += v[gi * len + l];
            p->dw[j] = s;
            continue;
        }
        const size_t at = transposed ? j % F * K + j / F : j; /* element (t, f) of dW */
        real s = p->part[at];
        for (size_t gi = 1; gi < groups; gi++)
            s += p->part[gi * len + at];
        p->dw[j] = s;
    }
    return 0;
}

/* Winograd's dU from the groups' partial sums, elements [j0, j1), the groups in order. */
typedef struct {
    const real *part;
    real *du;
    size_t len, groups;
} FN(dU_sums);

static size_t FN(add_dU_groups)(const void *ctx, size_t j0, size_t j1)
{
    const FN(dU_sums) *p = ctx;
    for (size_t j = j0; j < j1; j++)
        p->du[j] = p->part[j];
    for (size_t gi = 1; gi < p->groups; gi++)
        for (size_t j = j0; j < j1; j++)
            p->du[j] += p->part[gi * p->len + j];
    return 0;
}

static int FN(conv2d_backward)(const FN(layer) *layer, FN(backward_args) *a)
{
    FN(conv_bwd) p = {.n = a->n, .x = a->x, .ldx = a->ldx, .y = a->y, .ldy = a->ldy,
                      .kernel = layer->param[0], .dz = a->dy, .dx = a->dx, .work = a->work};
    if (conv_geometry(layer->desc, &layer->in, &p.g) != FUSENN_OK)
        return FUSENN_EINVAL;
    const conv_geom *g = &p.g;
    p.w = FN(work_layout)(g, a->n);
    p.act = a->logits || a->dy_is_dz ? FUSENN_ACT_IDENTITY : g->act; /* dy is dZ already */
    p.z = fusenn_act_needs_z(p.act) ? a->saved : NULL;
    const size_t m = a->n * g->fwd.oh * g->fwd.ow, K = g->k, F = g->f;
    if (weight_grad_by_pointer(&g->fwd, F))
        FN(set_zeros)(g, &p.w, a->work);

    if (FN(run_units)(conv_threads(a->nthreads, p.w.groups, m, F, K), p.w.groups,
                      FN(weight_grad_group), &p, &p.w, a->work))
        return FUSENN_ENOMEM;
    const real *part = (const real *)((const char *)a->work + p.w.part_at);
    if (p.w.wino_rows) { /* the groups' dU added in order (in slot 0), then dW = G^T dU G */
        const FN(dU_sums) sums = {part, FN(slot)(&p.w, a->work, 0), p.w.part_len, p.w.groups};
        fusenn_parallel_ranges(fusenn_threads_for(p.w.groups * p.w.part_len, a->nthreads),
                               p.w.part_len, FN(add_dU_groups), &sums);
        FN(winograd_kernel_grad)(g->cin, F, sums.du, layer->grad[0]);
    } else {
        const FN(group_sums) sums = {g, &p.w, part, layer->grad[0]};
        fusenn_parallel_ranges(fusenn_threads_for(p.w.groups * K * F, a->nthreads), K * F,
                               FN(add_groups), &sums);
    }
    if (g->bias) {
        const double *bpart = (const double *)((const char *)a->work + p.w.bpart_at);
        for (size_t j = 0; j < F; j++) {
            double s = bpart[j];
            for (size_t gi = 1; gi < p.w.groups; gi++)
                s += bpart[gi * F + j];
            layer->grad[1][j] = (real)s;
        }
    }

    a->result = a->dx;
    if (a->dx == NULL) /* the first layer needs no input gradient */
        return FUSENN_OK;
    if (bwd_is_conv(g)) {
        p.wt = (real *)((char *)a->work + p.w.wt_at);
        FN(flip_kernel)(g, layer->param[0], p.wt);
        const size_t m_in = a->n * g->fwd.h * g->fwd.w;
        if (p.w.wino_rows_bwd) {
            const size_t chunks = div_up(m_in, p.w.rows_bwd);
            return FN(winograd_run)(&p.w, a->work, &g->bwd, g->cin, p.w.wino_rows_bwd,
                                    &p.w.wino_bwd, p.wt, a->n, p.dz,
                                    (ptrdiff_t)(g->fwd.oh * g->fwd.ow * F), NULL, 0, a->dx,
                                    conv_threads(a->nthreads, chunks, m_in, g->cin, g->k_bwd));
        }
        if (patches_by_pointer(&g->bwd))
            FN(prepare_by_pointer)(g, &p.w, &p.w.packed_bwd, p.wt, a->work);
        const size_t chunks = div_up(m_in, p.w.rows_bwd);
        return FN(run_units)(conv_threads(a->nthreads, chunks, m_in, g->cin, g->k_bwd), chunks,
                             FN(input_grad_chunk), &p, &p.w, a->work)
                   ? FUSENN_ENOMEM : FUSENN_OK;
    }
    p.wt = (real *)((char *)a->work + p.w.wt_at); /* W^T, rows contiguous for the GEMM */
    for (size_t k = 0; k < K; k++)
        for (size_t f = 0; f < F; f++)
            p.wt[f * K + k] = layer->param[0][k * F + f];
    return FN(run_units)(conv_threads(a->nthreads, a->n, m, K, F), a->n, FN(col2im_sample), &p,
                         &p.w, a->work)
               ? FUSENN_ENOMEM : FUSENN_OK;
}

static fusenn_activation FN(conv2d_output_activation)(const FN(layer) *layer)
{
    return conv_activation(layer->desc);
}

const FN(layer_kind) FN(conv2d_kind) = {
    .name = "conv2d",
    .attrs = conv2d_attrs,
    .output_shape = FN(conv2d_output_shape),
    .params = FN(conv2d_params),
    .saved_bytes = FN(conv2d_saved_bytes),
    .work_bytes = FN(conv2d_work_bytes),
    .forward = FN(conv2d_forward),
    .backward = FN(conv2d_backward),
    .output_activation = FN(conv2d_output_activation),
};
