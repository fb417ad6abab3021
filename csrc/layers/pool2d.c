/*
 * pool2d.c - MaxPooling2D / AveragePooling2D over images (H, W, C), channels
 * last: output (oh, ow) pools the window of pool_h x pool_w input cells
 * starting at (oh sh - pad_top, ow sw - pad_left), each channel on its own.
 * Padded cells take no part:
 *   max: y = the window's first maximum (row-major order); its index h W + w
 *        within the sample is kept (int32, per output) for the backward pass,
 *        which sends dy there; after a ReLU layer, only where y > 0 (ReLU's
 *        derivative at the maximum, taken over from that layer's backward:
 *        one pass over its activations less)
 *   avg: y = the sum over the cells inside the image / their number (Keras's
 *        "same"); the backward spreads dy / number over those cells
 * Pads are smaller than the pool, so every window holds a cell of the image.
 * Each sample is one thread's, and its gradient is scattered in output order,
 * so the bits do not depend on the thread count.
 */
#include "../layer.h"

enum { POOL_MODE, POOL_H, POOL_W, STRIDE_H, STRIDE_W, PAD_TOP, PAD_BOTTOM, PAD_LEFT, PAD_RIGHT,
       POOL_N_ATTRS };
static const char *const pool2d_attrs[] = {"mode", "pool_h", "pool_w", "stride_h", "stride_w",
                                           "pad_top", "pad_bottom", "pad_left", "pad_right",
                                           NULL};

/* A pooling layer's geometry along both axes. */
typedef struct {
    size_t h, w, c, oh, ow;
    size_t ph, pw, sh, sw, pt, pl;
    int max;
} pool_geom;

static int whole(double v, double min) { return v >= min && v <= 1e9 && v == (double)(size_t)v; }

/* The geometry of desc on samples of shape in, or FUSENN_EINVAL. */
static int pool_geometry(const fusenn_layer *desc, const fusenn_shape *in, pool_geom *g)
{
    const double *a = desc->attr;
    if (in->rank != 3 || (a[POOL_MODE] != FUSENN_POOL_MAX && a[POOL_MODE] != FUSENN_POOL_AVG))
        return FUSENN_EINVAL;
    for (int i = POOL_H; i < PAD_TOP; i++)
        if (!whole(a[i], 1))
            return FUSENN_EINVAL;
    for (int i = PAD_TOP; i < POOL_N_ATTRS; i++)
        if (!whole(a[i], 0))
            return FUSENN_EINVAL;
    g->h = in->dim[0];
    g->w = in->dim[1];
    g->c = in->dim[2];
    g->ph = (size_t)a[POOL_H];
    g->pw = (size_t)a[POOL_W];
    g->sh = (size_t)a[STRIDE_H];
    g->sw = (size_t)a[STRIDE_W];
    g->pt = (size_t)a[PAD_TOP];
    g->pl = (size_t)a[PAD_LEFT];
    const size_t pb = (size_t)a[PAD_BOTTOM], pr = (size_t)a[PAD_RIGHT];
    /* pads below the pool size: no window lies wholly in the padding */
    if (g->pt >= g->ph || pb >= g->ph || g->pl >= g->pw || pr >= g->pw ||
        g->h + g->pt + pb < g->ph || g->w + g->pl + pr < g->pw || g->h * g->w > INT32_MAX)
        return FUSENN_EINVAL;
    g->oh = (g->h + g->pt + pb - g->ph) / g->sh + 1;
    g->ow = (g->w + g->pl + pr - g->pw) / g->sw + 1;
    g->max = a[POOL_MODE] == FUSENN_POOL_MAX;
    return FUSENN_OK;
}

static int FN(pool2d_output_shape)(const fusenn_layer *desc, const fusenn_shape *in,
                                   fusenn_shape *out)
{
    pool_geom g;
    if (pool_geometry(desc, in, &g) != FUSENN_OK)
        return FUSENN_EINVAL;
    *out = (fusenn_shape){3, {g.oh, g.ow, g.c, 0}};
    return FUSENN_OK;
}

/* The input rows [*h0, *h1) and columns [*w0, *w1) of output (oh, ow)'s window. */
static inline void window(const pool_geom *g, size_t oh, size_t ow, size_t *h0, size_t *h1,
                          size_t *w0, size_t *w1)
{
    const size_t top = oh * g->sh, left = ow * g->sw; /* in padded coordinates */
    *h0 = top > g->pt ? top - g->pt : 0;
    *h1 = FUSENN_MIN(top + g->ph - g->pt, g->h);
    *w0 = left > g->pl ? left - g->pl : 0;
    *w1 = FUSENN_MIN(left + g->pw - g->pl, g->w);
}

/* Argmax indices, per output (max pooling only). */
static size_t FN(pool2d_saved_bytes)(const FN(layer) *layer, size_t n)
{
    return layer->desc->attr[POOL_MODE] == FUSENN_POOL_MAX ? n * layer->out_size * sizeof(int32_t)
                                                           : 0;
}

typedef struct {
    pool_geom g;
    const real *x, *dy;
    ptrdiff_t ldx;
    real *y, *dx;
    ptrdiff_t ldy;
    int32_t *arg_out;   /* the forward's argmax indices (max pooling) */
    const int32_t *arg; /* the backward's */
    const real *maxima; /* the backward's, with ReLU' of the input: the forward's y */
} FN(pool2d_args);

#define ALWAYS_INLINE inline __attribute__((always_inline))

/* Channels go in vectors of VBYTES (64, else 16), in blocks from cb; a last
 * partial block overlaps the one before it (recomputing some channels, with
 * the same result), and fewer channels than a 16-byte vector one by one. The
 * functions that use them are compiled for AVX-512 as well (pool_samples). */
#if defined(FUSENN_DTYPE_F32)
typedef int32_t FN(lane_int);
#else
typedef int64_t FN(lane_int);
#endif

/* Output o's channels [cb, cb + VBYTES) from the window [h0, h1) x [w0, w1) of
 * x: the first maximum, branch-free (a branch on random data mispredicts half
 * the time: it made max pooling 10% of a LeNet step), and its index; or the
 * mean. */
#define POOL_BLOCK(NAME, VBYTES)                                                             \
    static ALWAYS_INLINE void FN(NAME)(const pool_geom *g, const real *x, size_t h0,           \
                                       size_t h1, size_t w0, size_t w1, size_t cb, real *y,    \
                                       int32_t *arg)                                           \
    {                                                                                          \
        typedef real vec __attribute__((vector_size(VBYTES), aligned(sizeof(real)), may_alias)); \
        typedef FN(lane_int) ivec __attribute__((vector_size(VBYTES)));                        \
        const size_t C = g->c, W = g->w, L = VBYTES / sizeof(real);                            \
        if (g->max) {                                                                          \
            vec best = *(const vec *)(x + (h0 * W + w0) * C + cb);                             \
            ivec at = (ivec){0} + (FN(lane_int))(h0 * W + w0);                                 \
            for (size_t h = h0; h < h1; h++)                                                   \
                for (size_t w = w0; w < w1; w++) {                                             \
                    const vec v = *(const vec *)(x + (h * W + w) * C + cb);                    \
                    const ivec better = v > best;                                              \
                    best = (vec)(((ivec)v & better) | ((ivec)best & ~better));                 \
                    at = (((ivec){0} + (FN(lane_int))(h * W + w)) & better) | (at & ~better);  \
                }                                                                              \
            *(vec *)(y + cb) = best;                                                           \
            for (size_t l = 0; l < L; l++)                                                     \
                arg[cb + l] = (int32_t)at[l];                                                  \
            return;                                                                            \
        }                                                                                      \
        vec sum = {0};                                                                         \
        for (size_t h = h0; h < h1; h++)                                                       \
            for (size_t w = w0; w < w1; w++)                                                   \
                sum += *(const vec *)(x + (h * W + w) * C + cb);                               \
        *(vec *)(y + cb) = sum / (real)((h1 - h0) * (w1 - w0));                                \
    }

POOL_BLOCK(block64, 64)
POOL_BLOCK(block16, 16)

/* The gradient of a window that is the only one to hold its cells, channels
 * [cb, cb + 64 bytes): dx of cell `at` = dy where it was the maximum (and,
 * given the window's maxima y, where y > 0), else 0; or dy / count. */
static ALWAYS_INLINE void FN(block64_grad)(const pool_geom *g, const real *dy,
                                           const int32_t *arg, const real *y, int32_t at,
                                           real count, size_t cb, real *dx)
{
    typedef real vec __attribute__((vector_size(64), aligned(sizeof(real)), may_alias));
    typedef FN(lane_int) ivec __attribute__((vector_size(64)));
    const vec d = *(const vec *)(dy + cb);
    if (!g->max) {
        *(vec *)(dx + cb) = d / count;
        return;
    }
    ivec taken = {0};
    for (size_t l = 0; l < 64 / sizeof(real); l++)
        taken[l] = arg[cb + l];
    ivec keep = taken == (FN(lane_int))at;
    if (y)
        keep &= *(const vec *)(y + cb) > 0;
    *(vec *)(dx + cb) = (vec)((ivec)d & keep);
}

/* Output o's channel c alone, where fewer channels than a 16-byte vector holds. */
static ALWAYS_INLINE void FN(pool_channel)(const pool_geom *g, const real *x, size_t h0,
                                           size_t h1, size_t w0, size_t w1, size_t c, real *y,
                                           int32_t *arg)
{
    const size_t C = g->c, W = g->w;
    if (g->max) {
        real best = x[(h0 * W + w0) * C + c];
        int32_t at = (int32_t)(h0 * W + w0);
        for (size_t h = h0; h < h1; h++)
            for (size_t w = w0; w < w1; w++) {
                const real v = x[(h * W + w) * C + c];
                at = v > best ? (int32_t)(h * W + w) : at;
                best = v > best ? v : best;
            }
        y[c] = best;
        arg[c] = at;
        return;
    }
    real sum = 0;
    for (size_t h = h0; h < h1; h++)
        for (size_t w = w0; w < w1; w++)
            sum += x[(h * W + w) * C + c];
    y[c] = sum / (real)((h1 - h0) * (w1 - w0));
}

#define L64 (64 / sizeof(real))
#define L16 (16 / sizeof(real))

/* Channel block c of C in vectors of `lanes`, the last one overlapping. */
static inline size_t block_start(size_t c, size_t lanes, size_t C)
{
    return c + lanes <= C ? c : C - lanes;
}

static ALWAYS_INLINE void FN(pool_samples)(const FN(pool2d_args) *p, size_t begin, size_t end)
{
    const pool_geom *g = &p->g;
    const size_t C = g->c, out_size = g->oh * g->ow * C;
    for (size_t i = begin; i < end; i++) {
        const real *x = p->x + (ptrdiff_t)i * p->ldx;
        real *y = p->y + (ptrdiff_t)i * p->ldy;
        int32_t *arg = p->arg_out ? p->arg_out + i * out_size : NULL;
        for (size_t oh = 0; oh < g->oh; oh++)
            for (size_t ow = 0; ow < g->ow; ow++) {
                size_t h0, h1, w0, w1;
                window(g, oh, ow, &h0, &h1, &w0, &w1);
                const size_t o = (oh * g->ow + ow) * C;
                int32_t *a = arg ? arg + o : NULL;
                if (C >= L64)
                    for (size_t c = 0; c < C; c += L64)
                        FN(block64)(g, x, h0, h1, w0, w1, block_start(c, L64, C), y + o, a);
                else if (C >= L16)
                    for (size_t c = 0; c < C; c += L16)
                        FN(block16)(g, x, h0, h1, w0, w1, block_start(c, L16, C), y + o, a);
                else
                    for (size_t c = 0; c < C; c++)
                        FN(pool_channel)(g, x, h0, h1, w0, w1, c, y + o, a);
            }
    }
}

/* The windows tile the image: every cell is in exactly one window. */
static inline int tiles(const pool_geom *g)
{
    return g->sh == g->ph && g->sw == g->pw && g->pt == 0 && g->pl == 0 &&
           g->oh * g->ph == g->h && g->ow * g->pw == g->w;
}

/* dx of samples [begin, end): where the windows tile the image, each cell
 * written once from its window; else zeroed, then every output's gradient
 * added over its window in output order. */
static ALWAYS_INLINE void FN(pool_grad_samples)(const FN(pool2d_args) *p, size_t begin,
                                                size_t end)
{
    const pool_geom *g = &p->g;
    const size_t C = g->c, P = g->oh * g->ow, in_size = g->h * g->w * C;
    for (size_t i = begin; i < end; i++) {
        const real *dy = p->dy + i * P * C;
        const int32_t *arg = g->max ? p->arg + i * P * C : NULL;
        const real *y = p->maxima ? p->maxima + (ptrdiff_t)i * p->ldy : NULL;
        real *dx = p->dx + i * in_size;
        if (tiles(g) && C >= L64) { /* (fewer channels: the scatter below was faster) */
            const real count = (real)(g->ph * g->pw);
            for (size_t oh = 0, o = 0; oh < g->oh; oh++)
                for (size_t ow = 0; ow < g->ow; ow++, o++) {
                    const int32_t *a = arg ? arg + o * C : NULL;
                    for (size_t h = oh * g->ph; h < (oh + 1) * g->ph; h++)
                        for (size_t w = ow * g->pw; w < (ow + 1) * g->pw; w++) {
                            const int32_t at = (int32_t)(h * g->w + w);
                            for (size_t c = 0; c < C; c += L64)
                                FN(block64_grad)(g, dy + o * C, a, y ? y + o * C : NULL, at,
                                                 count, block_start(c, L64, C),
                                                 dx + (size_t)at * C);
                        }
                }
            continue;
        }
        memset(dx, 0, in_size * sizeof(real));
        if (g->max) { /* the maximum y is the value at the cell: its ReLU' is y > 0 */
            for (size_t o = 0; o < P; o++)
                for (size_t c = 0; c < C; c++) {
                    const real d = dy[o * C + c];
                    dx[(size_t)arg[o * C + c] * C + c] += y && !(y[o * C + c] > 0) ? 0 : d;
                }
            continue;
        }
        for (size_t oh = 0; oh < g->oh; oh++)
            for (size_t ow = 0; ow < g->ow; ow++) {
                size_t h0, h1, w0, w1;
                window(g, oh, ow, &h0, &h1, &w0, &w1);
                const real count = (real)((h1 - h0) * (w1 - w0));
                const real *d = dy + (oh * g->ow + ow) * C;
                for (size_t h = h0; h < h1; h++)
                    for (size_t w = w0; w < w1; w++) {
                        real *t = dx + (h * g->w + w) * C;
                        for (size_t c = 0; c < C; c++)
                            t[c] += d[c] / count;
                    }
            }
    }
}

static size_t FN(pool2d_samples)(const void *ctx, size_t begin, size_t end)
{
    FN(pool_samples)(ctx, begin, end);
    return 0;
}

static size_t FN(pool2d_grad_samples)(const void *ctx, size_t begin, size_t end)
{
    FN(pool_grad_samples)(ctx, begin, end);
    return 0;
}

#if defined(__x86_64__) && defined(__GNUC__)
#define HAVE_AVX512_POOL 1
static __attribute__((target("avx512f,avx2"))) size_t
FN(pool2d_samples_avx512)(const void *ctx, size_t begin, size_t end)
{
    FN(pool_samples)(ctx, begin, end);
    return 0;
}

static __attribute__((target("avx512f,avx2"))) size_t
FN(pool2d_grad_samples_avx512)(const void *ctx, size_t begin, size_t end)
{
    FN(pool_grad_samples)(ctx, begin, end);
    return 0;
}
#endif

static int FN(pool2d_forward)(const FN(layer) *layer, FN(forward_args) *a)
{
    FN(pool2d_args) args = {.x = a->x, .ldx = a->ldx, .y = a->y, .ldy = a->ldy};
    if (pool_geometry(layer->desc, &layer->in, &args.g) != FUSENN_OK)
        return FUSENN_EINVAL;
    args.arg_out = args.g.max ? a->saved : NULL;
    fusenn_range_fn fn = FN(pool2d_samples);
#ifdef HAVE_AVX512_POOL
    if (fusenn_isa_level() == FUSENN_ISA_AVX512)
        fn = FN(pool2d_samples_avx512);
#endif
    fusenn_parallel_ranges(fusenn_threads_for(a->n * layer->in_size, a->nthreads), a->n, fn,
                           &args);
    a->result = a->y;
    a->ld_result = a->ldy;
    return FUSENN_OK;
}

static int FN(pool2d_backward)(const FN(layer) *layer, FN(backward_args) *a)
{
    a->result = a->dx;
    if (a->dx == NULL)
        return FUSENN_OK;
    FN(pool2d_args) args = {.dy = a->dy, .dx = a->dx, .ldy = a->ldy,
                            .maxima = a->dx_act == FUSENN_ACT_RELU ? a->y : NULL};
    if (pool_geometry(layer->desc, &layer->in, &args.g) != FUSENN_OK)
        return FUSENN_EINVAL;
    args.arg = args.g.max ? a->saved : NULL;
    fusenn_range_fn fn = FN(pool2d_grad_samples);
#ifdef HAVE_AVX512_POOL
    if (fusenn_isa_level() == FUSENN_ISA_AVX512)
        fn = FN(pool2d_grad_samples_avx512);
#endif
    fusenn_parallel_ranges(fusenn_threads_for(a->n * layer->in_size, a->nthreads), a->n, fn,
                           &args);
    return FUSENN_OK;
}

/* Max pooling applies ReLU's derivative of its input (see the top). */
static int FN(pool2d_takes_input_activation)(const FN(layer) *layer, fusenn_activation act)
{
    return act == FUSENN_ACT_RELU && layer->desc->attr[POOL_MODE] == FUSENN_POOL_MAX;
}

const FN(layer_kind) FN(pool2d_kind) = {
    .name = "pool2d",
    .attrs = pool2d_attrs,
    .output_shape = FN(pool2d_output_shape),
    .saved_bytes = FN(pool2d_saved_bytes),
    .forward = FN(pool2d_forward),
    .backward = FN(pool2d_backward),
    .takes_input_activation = FN(pool2d_takes_input_activation),
};
