/*
 * dropout.c - inverted dropout, forward and backward.
 *
 * Dtype-generic (see internal.h): compiled once per dtype. The keep/drop bit
 * of element (i, j) is fusenn_hash64(seed, i*d + j) >= floor(rate * 2^64), a
 * pure function of its logical position, so rows run in parallel with no
 * shared state and the backward recomputes the forward's mask.
 */
#include "../layer.h"

/* floor(rate * 2^64): exact, since scaling a double by 2^64 only moves its
 * exponent and every rate < 1 gives a product below 2^64. rate >= 1 drops all. */
static inline uint64_t drop_threshold(double rate)
{
    if (!(rate > 0))
        return 0;
    if (rate >= 1)
        return UINT64_MAX;
    return (uint64_t)(rate * 18446744073709551616.0);
}

#if defined(FUSENN_DTYPE_F32)
typedef uint32_t real_bits;
#else
typedef uint64_t real_bits;
#endif

/* keep ? v : +0, without a branch: a random mask defeats branch prediction
 * (a branch made rate 0.5 four times slower than rate 0.9). */
static inline real FN(keep_or_zero)(int keep, real v)
{
    real_bits bits;
    memcpy(&bits, &v, sizeof bits);
    bits &= (real_bits)0 - (real_bits)keep;
    memcpy(&v, &bits, sizeof v);
    return v;
}

/* One dropout call's arguments. */
typedef struct {
    size_t d;
    const real *X;
    ptrdiff_t ldx, ldy;
    double rate;
    uint64_t seed, threshold;
    real scale;
    real *Y;
} FN(dropout_args);

static size_t FN(dropout_rows)(const void *ctx, size_t begin, size_t end)
{
    const FN(dropout_args) *p = ctx;
    const size_t d = p->d;
    const real *X = p->X;
    real *Y = p->Y;
    const ptrdiff_t ldx = p->ldx, ldy = p->ldy;
    const double rate = p->rate;
    const uint64_t seed = p->seed, threshold = p->threshold;
    const real scale = p->scale;
    for (size_t i = begin; i < end; i++) {
        const real *x = X + (ptrdiff_t)i * ldx;
        real *y = Y + (ptrdiff_t)i * ldy;
        if (rate == 0) { /* keep everything: an exact copy */
            if (y != x)
                memmove(y, x, d * sizeof(real));
            continue;
        }
        const uint64_t first = (uint64_t)i * (uint64_t)d;
        for (size_t j = 0; j < d; j++)
            y[j] = FN(keep_or_zero)(fusenn_hash64(seed, first + j) >= threshold, x[j] * scale);
    }
    return 0;
}

/* Y = X * mask * scale, scale = 1 / (1 - rate) rounded to the dtype; dropped
 * elements are exactly 0 (also for non-finite inputs). Each element is read
 * before it is written, so Y may alias X. */
static void FN(dropout_apply)(size_t n, size_t d, const real *X, ptrdiff_t ldx, double rate,
                              uint64_t seed, real *Y, ptrdiff_t ldy, int nthreads)
{
    if (n == 0 || d == 0)
        return;
    const FN(dropout_args) args = {
        .d = d, .X = X, .ldx = ldx, .ldy = ldy, .rate = rate, .seed = seed,
        .threshold = drop_threshold(rate),
        .scale = rate < 1 ? (real)(1.0 / (1.0 - rate)) : (real)0, .Y = Y};
    fusenn_parallel_ranges(fusenn_threads_for(n * d, nthreads), n, FN(dropout_rows), &args);
}

void FN(fusenn_dropout_forward)(size_t n, size_t d, const real *X, ptrdiff_t ldx,
                                double rate, uint64_t seed, real *Y, ptrdiff_t ldy,
                                int nthreads)
{
    FN(dropout_apply)(n, d, X, ldx, rate, seed, Y, ldy, nthreads);
}

/* d(x mask scale)/dx = mask scale: the backward is the forward applied to dY. */
void FN(fusenn_dropout_backward)(size_t n, size_t d, const real *dY, ptrdiff_t lddy,
                                 double rate, uint64_t seed, real *dX, ptrdiff_t lddx,
                                 int nthreads)
{
    FN(dropout_apply)(n, d, dY, lddy, rate, seed, dX, lddx, nthreads);
}

/* ---- the layer kind --------------------------------------------------------- */

enum { DROPOUT_RATE };
static const char *const dropout_attrs[] = {"rate", NULL};

static int FN(dropout_output_shape)(const fusenn_layer *desc, const fusenn_shape *in,
                                    fusenn_shape *out)
{
    const double rate = desc->attr[DROPOUT_RATE];
    if (!(rate >= 0 && rate < 1) || (rate > 0 && desc->counter == NULL))
        return FUSENN_EINVAL;
    *out = *in;
    return FUSENN_OK;
}

/* The seed of the training pass's masks. */
static size_t FN(dropout_saved_bytes)(const FN(layer) *layer, size_t n)
{
    (void)layer;
    (void)n;
    return sizeof(uint64_t);
}

/* Each element as the sample's element number, so masks do not depend on the
 * sample's shape. At inference (or rate 0) the input passes through. The
 * training step's masks come from the step counter, which the engine advances
 * once per step; a chunk of a batch starting at row row0 shifts the seed by
 * row0 d counter increments, so its elements get the indices they have in the
 * whole batch (fusenn_hash64(seed, index) steps the seed by GOLDEN per index). */
static int FN(dropout_forward_kind)(const FN(layer) *layer, FN(forward_args) *a)
{
    const fusenn_layer *desc = layer->desc;
    const double rate = desc->attr[DROPOUT_RATE];
    if (!a->training || rate == 0) { /* pass-through: the next layer reads x */
        a->result = a->x;
        a->ld_result = a->ldx;
        return FUSENN_OK;
    }
    const uint64_t seed = fusenn_dropout_seed(desc->seed, *desc->counter) +
                          (uint64_t)a->row0 * (uint64_t)layer->in_size * FUSENN_GOLDEN_GAMMA;
    memcpy(a->saved, &seed, sizeof seed);
    FN(fusenn_dropout_forward)(a->n, layer->in_size, a->x, a->ldx, rate, seed, a->y, a->ldy,
                               a->nthreads);
    a->result = a->y;
    a->ld_result = a->ldy;
    return FUSENN_OK;
}

static int FN(dropout_backward_kind)(const FN(layer) *layer, FN(backward_args) *a)
{
    a->result = a->dy; /* in place */
    if (a->y == a->x) /* the forward passed its input through */
        return FUSENN_OK;
    uint64_t seed;
    memcpy(&seed, a->saved, sizeof seed);
    const ptrdiff_t d = (ptrdiff_t)layer->in_size;
    FN(fusenn_dropout_backward)(a->n, layer->in_size, a->dy, d, layer->desc->attr[DROPOUT_RATE],
                                seed, a->dy, d, a->nthreads);
    return FUSENN_OK;
}

const FN(layer_kind) FN(dropout_kind) = {
    .name = "dropout",
    .attrs = dropout_attrs,
    .output_shape = FN(dropout_output_shape),
    .saved_bytes = FN(dropout_saved_bytes),
    .forward = FN(dropout_forward_kind),
    .backward = FN(dropout_backward_kind),
};
