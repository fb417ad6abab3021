/*
 * optimizers.c - in-place parameter updates over flat arrays.
 *
 * Dtype-generic (see internal.h): compiled once per dtype. Hyperparameters
 * arrive as double and are cast to `real` once, so the per-element arithmetic
 * stays in the parameters' precision. Every element is independent, so the
 * flat loop runs in parallel and the result does not depend on nthreads.
 *
 * Each update returns how many updated weights are not finite, and, when prev
 * is not NULL, keeps the old weights there (prev may alias g, whose values are
 * no longer needed once read): a diverging step can then be undone exactly
 * for the price of one store per weight, with no snapshot.
 */
#include "internal.h"

/* w[i] = new_w, keeping the old value in prev; 1 if new_w is not finite. */
static inline size_t FN(commit)(real *w, real *prev, size_t i, real new_w)
{
    if (prev)
        prev[i] = w[i];
    w[i] = new_w;
    return !isfinite(new_w);
}

/* x, or 0 when x is subnormal: what optimizer state keeps. Decaying state
 * sinks there and stays: a dead ReLU unit's momentum is 0.9 v + 0, and 0.9
 * times the smallest subnormals rounds back to them. Every operation on a
 * subnormal costs a microcode assist (~100 cycles), which doubled the step of
 * a 64-32-10 net. (TensorFlow flushes all CPU math this way.) NaN is kept. */
static inline real FN(flush_subnormal)(real x)
{
    return fabs(x) < REAL_MIN ? (real)0 : x;
}

/* One update call's arrays (m and v: the optimizer's state) and its
 * hyperparameters, cast to real once; each update reads the fields it uses. */
typedef struct {
    real *w, *m, *v, *prev;
    const real *g;
    real lr, eps;
    real mu;                                         /* SGD */
    int nesterov;
    real b1, one_minus_b1, b2, one_minus_b2, c1, c2; /* Adam */
    real decay;                                      /* AdamW's 1 - lr wd */
    int decay_weights;
    real keep, gain;                                 /* RMSprop, Adagrad */
} FN(update_args);

/* SGD with optional (Nesterov) momentum, as PyTorch defines it:
 *   v = momentum v + g
 *   w -= lr v                   (classical)
 *   w -= lr (g + momentum v)    (Nesterov: the step looks ahead along v)
 * momentum == 0 is plain w -= lr g, and v is neither read nor written. */
static size_t FN(sgd_range)(const void *ctx, size_t begin, size_t end)
{
    const FN(update_args) *u = ctx;
    real *w = u->w, *prev = u->prev;
    const real *g = u->g;
    const real lr_r = u->lr;
    size_t bad = 0;
    for (size_t i = begin; i < end; i++)
        bad += FN(commit)(w, prev, i, w[i] - lr_r * g[i]);
    return bad;
}

static size_t FN(sgd_momentum_range)(const void *ctx, size_t begin, size_t end)
{
    const FN(update_args) *u = ctx;
    real *w = u->w, *v = u->v, *prev = u->prev;
    const real *g = u->g;
    const real lr_r = u->lr, mu = u->mu;
    const int nesterov = u->nesterov;
    size_t bad = 0;
    for (size_t i = begin; i < end; i++) {
        const real gi = g[i];
        const real vi = FN(flush_subnormal)(mu * v[i] + gi);
        v[i] = vi;
        bad += FN(commit)(w, prev, i, w[i] - lr_r * (nesterov ? gi + mu * vi : vi));
    }
    return bad;
}

size_t FN(fusenn_sgd_update)(size_t len, real *w, const real *g, real *v,
                             double lr, double momentum, int nesterov, real *prev,
                             int nthreads)
{
    const FN(update_args) args = {.w = w, .g = g, .v = v, .prev = prev,
                                  .lr = (real)lr, .mu = (real)momentum, .nesterov = nesterov};
    return fusenn_parallel_ranges(fusenn_threads_for(len, nthreads), len,
                                  momentum == 0 ? FN(sgd_range) : FN(sgd_momentum_range),
                                  &args);
}

/* Adam (Kingma & Ba), step t >= 1, with AdamW's decoupled weight decay
 * (Loshchilov & Hutter, in PyTorch's form):
 *   w *= 1 - lr wd                    decay, skipped when wd == 0 (plain Adam)
 *   m = b1 m + (1 - b1) g             first-moment estimate
 *   v = b2 v + (1 - b2) g^2           second-moment estimate
 *   w -= lr (m / c1) / (sqrt(v / c2) + eps),  c1 = 1 - b1^t, c2 = 1 - b2^t
 * m and v start at zero, so they are biased towards zero early on; dividing by
 * c1 and c2 undoes that. The corrections are computed once, in double. */
static size_t FN(adam_range)(const void *ctx, size_t begin, size_t end)
{
    const FN(update_args) *u = ctx;
    real *w = u->w, *m = u->m, *v = u->v, *prev = u->prev;
    const real *g = u->g;
    const real lr_r = u->lr;
    const real b1 = u->b1, one_minus_b1 = u->one_minus_b1;
    const real b2 = u->b2, one_minus_b2 = u->one_minus_b2;
    const real c1 = u->c1, c2 = u->c2, decay = u->decay, eps_r = u->eps;
    const int decay_weights = u->decay_weights;
    size_t bad = 0;
    for (size_t i = begin; i < end; i++) {
        const real gi = g[i];
        const real mi = FN(flush_subnormal)(b1 * m[i] + one_minus_b1 * gi);
        const real vi = FN(flush_subnormal)(b2 * v[i] + one_minus_b2 * gi * gi);
        m[i] = mi;
        v[i] = vi;
        const real wi = decay_weights ? w[i] * decay : w[i];
        bad += FN(commit)(w, prev, i, wi - lr_r * (mi / c1) / (sqrt(vi / c2) + eps_r));
    }
    return bad;
}

size_t FN(fusenn_adam_update)(size_t len, real *w, const real *g, real *m, real *v,
                              double lr, double beta1, double beta2, double eps,
                              double weight_decay, int64_t t, real *prev, int nthreads)
{
    const FN(update_args) args = {
        .w = w, .g = g, .m = m, .v = v, .prev = prev, .lr = (real)lr, .eps = (real)eps,
        .decay = (real)(1.0 - lr * weight_decay), /* AdamW: w *= 1 - lr wd first */
        .decay_weights = weight_decay != 0,
        .b1 = (real)beta1, .one_minus_b1 = (real)(1.0 - beta1),
        .b2 = (real)beta2, .one_minus_b2 = (real)(1.0 - beta2),
        .c1 = (real)(1.0 - pow(beta1, (double)t)), .c2 = (real)(1.0 - pow(beta2, (double)t))};
    return fusenn_parallel_ranges(fusenn_threads_for(len, nthreads), len, FN(adam_range),
                                  &args);
}

/* The shared step of RMSprop and Adagrad, which differ only in how v keeps
 * the squared gradients:
 *   v = keep v + gain g^2;  w -= lr g / (sqrt(v) + eps) */
static size_t FN(scaled_range)(const void *ctx, size_t begin, size_t end)
{
    const FN(update_args) *u = ctx;
    real *w = u->w, *v = u->v, *prev = u->prev;
    const real *g = u->g;
    const real lr_r = u->lr;
    const real keep = u->keep, gain = u->gain, eps_r = u->eps;
    size_t bad = 0;
    for (size_t i = begin; i < end; i++) {
        const real gi = g[i];
        const real vi = FN(flush_subnormal)(keep * v[i] + gain * gi * gi);
        v[i] = vi;
        bad += FN(commit)(w, prev, i, w[i] - lr_r * gi / (sqrt(vi) + eps_r));
    }
    return bad;
}

static size_t FN(scaled_update)(size_t len, real *w, const real *g, real *v, double lr,
                                real keep, real gain, double eps, real *prev, int nthreads)
{
    const FN(update_args) args = {.w = w, .g = g, .v = v, .prev = prev, .lr = (real)lr,
                                  .eps = (real)eps, .keep = keep, .gain = gain};
    return fusenn_parallel_ranges(fusenn_threads_for(len, nthreads), len, FN(scaled_range),
                                  &args);
}

/* RMSprop (Hinton; PyTorch's form, eps added after the square root):
 *   v = rho v + (1 - rho) g^2         running mean of the squared gradient
 *   w -= lr g / (sqrt(v) + eps) */
size_t FN(fusenn_rmsprop_update)(size_t len, real *w, const real *g, real *v, double lr,
                                 double rho, double eps, real *prev, int nthreads)
{
    return FN(scaled_update)(len, w, g, v, lr, (real)rho, (real)(1.0 - rho), eps, prev,
                             nthreads);
}

/* Adagrad (Duchi et al.): the accumulator v sums every squared gradient,
 *   v += g^2;  w -= lr g / (sqrt(v) + eps)   (keep = gain = 1: exact, same bits) */
size_t FN(fusenn_adagrad_update)(size_t len, real *w, const real *g, real *v, double lr,
                                 double eps, real *prev, int nthreads)
{
    return FN(scaled_update)(len, w, g, v, lr, 1, 1, eps, prev, nthreads);
}

/* ---- gradient transforms (before the update) ------------------------------ */

/* sum_i x_i^2 in double: each of the fixed chunks is summed in index order by
 * one thread, then the partials are added in chunk order. */
typedef struct {
    size_t len, nchunks;
    const real *x;
    double *partial;
} FN(sum_squares_args);

static size_t FN(sum_squares_chunks)(const void *ctx, size_t c0, size_t c1)
{
    const FN(sum_squares_args) *p = ctx;
    const size_t len = p->len, nchunks = p->nchunks;
    const real *x = p->x;
    double *partial = p->partial;
    for (size_t c = c0; c < c1; c++) {
        const size_t end = fusenn_chunk_start(c + 1, nchunks, len);
        double s = 0;
        for (size_t i = fusenn_chunk_start(c, nchunks, len); i < end; i++)
            s += (double)x[i] * (double)x[i];
        partial[c] = s;
    }
    return 0;
}

double FN(fusenn_sum_squares)(size_t len, const real *x, int nthreads)
{
    const size_t nchunks = fusenn_num_chunks(len);
    double partial[FUSENN_SUM_CHUNKS];
    const FN(sum_squares_args) args = {len, nchunks, x, partial};
    fusenn_parallel_ranges(fusenn_threads_for(len, nthreads), nchunks,
                           FN(sum_squares_chunks), &args);
    double total = 0;
    for (size_t c = 0; c < nchunks; c++)
        total += partial[c];
    return total;
}

/* g = clip(scale (g + l2 w), -clipvalue, clipvalue): the L2 penalty's gradient,
 * norm clipping's rescaling and value clipping in one pass. w is only read
 * when l2 != 0; clipvalue <= 0 means no clipping; NaN stays NaN. */
typedef struct {
    real *g;
    const real *w;
    real l2, scale, hi;
    int add_l2, clip;
} FN(grad_transform_args);

static size_t FN(grad_transform_range)(const void *ctx, size_t begin, size_t end)
{
    const FN(grad_transform_args) *p = ctx;
    real *g = p->g;
    const real *w = p->w;
    const real l2_r = p->l2, scale_r = p->scale, hi = p->hi;
    const int add_l2 = p->add_l2, clip = p->clip;
    for (size_t i = begin; i < end; i++) {
        real gi = add_l2 ? g[i] + l2_r * w[i] : g[i];
        gi = scale_r * gi;
        if (clip)
            gi = gi > hi ? hi : (gi < -hi ? -hi : gi);
        g[i] = gi;
    }
    return 0;
}

void FN(fusenn_grad_transform)(size_t len, real *g, const real *w, double l2, double scale,
                               double clipvalue, int nthreads)
{
    const FN(grad_transform_args) args = {g, w, (real)l2, (real)scale, (real)clipvalue,
                                          l2 != 0 && w != NULL, clipvalue > 0};
    fusenn_parallel_ranges(fusenn_threads_for(len, nthreads), len,
                           FN(grad_transform_range), &args);
}
