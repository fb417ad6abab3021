/*
 * plan.c - the training engine: a network lowered into layer descriptors and
 * one arena, trained by one C call per step (or per epoch) with no Python and
 * no allocation in the loop.
 *
 * A step on a batch X of n rows, for layers l = 0 .. L-1:
 *   forward   out[l] = layer_l(in_l)             in_0 = X, in_l = out[l-1]
 *             dense:     act(in W + b), through z = in W + b when act' needs z
 *             dropout:   in * mask / (1 - rate), mask hashed from (seed, step)
 *             batchnorm: gamma (in - mean) / sqrt(var + eps) + beta, batch stats
 *             (the last layer, always dense, stops at the logits when the loss
 *             is fused)
 *   loss      g = dL/d out[L-1]                  softmax/sigmoid fused with CE/BCE
 *   backward  each layer turns g into its parameter gradients and dL/d in_l,
 *             ping-ponging between two gradient buffers; it stops after the
 *             first layer that has parameters (nothing upstream needs dX)
 *   update    every parameter, keeping the old weights in the (now dead)
 *             gradient arrays, so a step that overflows is undone exactly
 * Everything runs through the same kernels as the per-op API, so a plan's
 * results are bitwise those of the per-op path, for any thread count.
 */
#include "internal.h"

/* Rows per forward pass in predict / evaluate. */
#define PLAN_CHUNK_ROWS 1024

struct FN(fusenn_plan) {
    size_t n_layers;
    fusenn_layer *layers; /* copied descriptors */
    real **out;           /* out[l]: layer l's output, capacity x d_out (arena) */
    real **z;             /* z[l]: dense pre-activation when act' needs it, else NULL */
    real **stats;         /* stats[l]: batchnorm's batch mean and invstd (2 x d), else NULL */
    const real **in;      /* in[l]: the input layer l saw in the last forward pass */
    ptrdiff_t *ld_in;     /* its row stride */
    const real **res;     /* res[l]: the output it produced (may be in[l]: pass-through) */
    uint64_t *seeds;      /* seeds[l]: dropout mask seed of the last training pass */
    fusenn_loss loss;
    double loss_param;    /* Huber's delta */
    int fused;            /* the loss works from the last layer's logits */
    size_t first_trainable; /* first layer with parameters: backward stops there */
    size_t d_in, k, widest;

    size_t capacity;  /* rows the arena holds */
    void *arena;
    real *x;          /* gathered batch, capacity x d_in */
    int64_t *labels;  /* gathered labels (cross-entropy) */
    real *t;          /* gathered targets, capacity x k (the other losses) */
    real *sw;         /* gathered sample weights, capacity */
    real *p;          /* probabilities from the fused losses, capacity x k */
    real *g[2];       /* gradient ping-pong, capacity x widest */
};

typedef struct FN(fusenn_plan) plan_t;

#define W_OF(layer) ((real *)(layer)->W)
#define B_OF(layer) ((real *)(layer)->b)
#define DW_OF(layer) ((real *)(layer)->dW)
#define DB_OF(layer) ((real *)(layer)->db)

/* Elements of a layer's W (dense: the matrix; batchnorm: gamma) and b. */
static size_t w_len(const fusenn_layer *layer)
{
    switch (layer->kind) {
    case FUSENN_LAYER_DENSE: return layer->d_in * layer->d_out;
    case FUSENN_LAYER_BATCHNORM: return layer->d_out;
    default: return 0;
    }
}

static size_t b_len(const fusenn_layer *layer)
{
    return layer->kind == FUSENN_LAYER_DROPOUT ? 0 : layer->d_out;
}

static int needs_z(const fusenn_layer *layer)
{
    return layer->kind == FUSENN_LAYER_DENSE && fusenn_activation_needs_z(layer->act);
}

/* ---- arena --------------------------------------------------------------- */

/* Reserve `count` elements of `size` bytes at *offset, 64-byte aligned. */
static size_t carve(size_t *offset, size_t count, size_t size)
{
    size_t at = *offset;
    *offset += (count * size + 63) / 64 * 64;
    return at;
}

/* Lay the arena out for `rows` rows and return its size; with base NULL,
 * only measure it. */
static size_t FN(arena_layout)(plan_t *plan, size_t rows, char *base)
{
    size_t size = 0;
    size_t x = carve(&size, rows * plan->d_in, sizeof(real));
    size_t labels = carve(&size, rows, sizeof(int64_t));
    size_t t = carve(&size, rows * plan->k, sizeof(real));
    size_t sw = carve(&size, rows, sizeof(real));
    size_t p = carve(&size, rows * plan->k, sizeof(real));
    size_t g0 = carve(&size, rows * plan->widest, sizeof(real));
    size_t g1 = carve(&size, rows * plan->widest, sizeof(real));
    for (size_t l = 0; l < plan->n_layers; l++) {
        const fusenn_layer *layer = &plan->layers[l];
        size_t out = carve(&size, rows * layer->d_out, sizeof(real));
        size_t z = needs_z(layer) ? carve(&size, rows * layer->d_out, sizeof(real)) : 0;
        size_t stats = layer->kind == FUSENN_LAYER_BATCHNORM
                           ? carve(&size, 2 * layer->d_out, sizeof(real)) : 0;
        if (base) {
            plan->out[l] = (real *)(base + out);
            plan->z[l] = needs_z(layer) ? (real *)(base + z) : NULL;
            plan->stats[l] = layer->kind == FUSENN_LAYER_BATCHNORM ? (real *)(base + stats) : NULL;
        }
    }
    if (base) {
        plan->x = (real *)(base + x);
        plan->labels = (int64_t *)(base + labels);
        plan->t = (real *)(base + t);
        plan->sw = (real *)(base + sw);
        plan->p = (real *)(base + p);
        plan->g[0] = (real *)(base + g0);
        plan->g[1] = (real *)(base + g1);
    }
    return size;
}

/* Make the arena hold `rows` rows; it only ever grows. */
static int FN(reserve)(plan_t *plan, size_t rows)
{
    if (rows <= plan->capacity)
        return FUSENN_OK;
    void *arena = fusenn_aligned_alloc(FN(arena_layout)(plan, rows, NULL));
    if (arena == NULL)
        return FUSENN_ENOMEM;
    fusenn_aligned_free(plan->arena);
    plan->arena = arena;
    plan->capacity = rows;
    FN(arena_layout)(plan, rows, arena);
    return FUSENN_OK;
}

/* ---- create / destroy ------------------------------------------------------ */

plan_t *FN(fusenn_plan_create)(size_t n_layers, const fusenn_layer *layers, fusenn_loss loss,
                               double loss_param)
{
    if (n_layers == 0 || layers[n_layers - 1].kind != FUSENN_LAYER_DENSE)
        return NULL;
    plan_t *plan = fusenn_aligned_alloc(sizeof *plan);
    if (plan == NULL)
        return NULL;
    memset(plan, 0, sizeof *plan);
    plan->layers = fusenn_aligned_alloc(n_layers * sizeof *layers);
    plan->out = fusenn_aligned_alloc(n_layers * sizeof *plan->out);
    plan->z = fusenn_aligned_alloc(n_layers * sizeof *plan->z);
    plan->stats = fusenn_aligned_alloc(n_layers * sizeof *plan->stats);
    plan->in = fusenn_aligned_alloc(n_layers * sizeof *plan->in);
    plan->ld_in = fusenn_aligned_alloc(n_layers * sizeof *plan->ld_in);
    plan->res = fusenn_aligned_alloc(n_layers * sizeof *plan->res);
    plan->seeds = fusenn_aligned_alloc(n_layers * sizeof *plan->seeds);
    if (plan->layers == NULL || plan->out == NULL || plan->z == NULL || plan->stats == NULL ||
        plan->in == NULL || plan->ld_in == NULL || plan->res == NULL || plan->seeds == NULL) {
        FN(fusenn_plan_destroy)(plan);
        return NULL;
    }
    memcpy(plan->layers, layers, n_layers * sizeof *layers);
    plan->n_layers = n_layers;
    plan->loss = loss;
    plan->loss_param = loss_param;
    plan->fused = loss == FUSENN_LOSS_CROSS_ENTROPY || loss == FUSENN_LOSS_BINARY_CROSS_ENTROPY;
    plan->d_in = layers[0].d_in;
    plan->k = layers[n_layers - 1].d_out;
    plan->first_trainable = n_layers;
    for (size_t l = 0; l < n_layers; l++) {
        plan->widest = FUSENN_MAX(plan->widest, FUSENN_MAX(layers[l].d_in, layers[l].d_out));
        if (w_len(&layers[l]) && plan->first_trainable == n_layers)
            plan->first_trainable = l;
    }
    return plan;
}

void FN(fusenn_plan_destroy)(plan_t *plan)
{
    if (plan == NULL)
        return;
    fusenn_aligned_free(plan->arena);
    fusenn_aligned_free(plan->seeds);
    fusenn_aligned_free(plan->res);
    fusenn_aligned_free(plan->ld_in);
    fusenn_aligned_free(plan->in);
    fusenn_aligned_free(plan->stats);
    fusenn_aligned_free(plan->z);
    fusenn_aligned_free(plan->out);
    fusenn_aligned_free(plan->layers);
    fusenn_aligned_free(plan);
}

/* ---- the pieces of a step ------------------------------------------------------ */

/* Forward through every layer, in training mode (batch statistics, dropout
 * masks) or inference mode. The last layer writes to `last` (row stride
 * ld_last) and stops at the logits when `logits` is set. */
static int FN(forward)(plan_t *plan, size_t n, const real *X, ptrdiff_t ldx, int training,
                       int logits, real *last, ptrdiff_t ld_last, int nthreads)
{
    const real *in = X;
    ptrdiff_t ld_in = ldx;
    for (size_t l = 0; l < plan->n_layers; l++) {
        const fusenn_layer *layer = &plan->layers[l];
        const int is_last = l + 1 == plan->n_layers;
        const size_t d = layer->d_out;
        real *y = is_last ? last : plan->out[l];
        ptrdiff_t ldy = is_last ? ld_last : (ptrdiff_t)d;
        plan->in[l] = in;
        plan->ld_in[l] = ld_in;
        switch (layer->kind) {
        case FUSENN_LAYER_DENSE: {
            fusenn_activation act = is_last && logits ? FUSENN_ACT_IDENTITY : layer->act;
            int rc;
            if (fusenn_activation_needs_z(act)) { /* keep z for the backward */
                rc = FN(fusenn_dense_forward)(n, layer->d_in, d, in, ld_in, 1, W_OF(layer),
                                              (ptrdiff_t)d, 1, B_OF(layer), FUSENN_ACT_IDENTITY,
                                              plan->z[l], (ptrdiff_t)d, nthreads);
                FN(fusenn_activation_forward)(act, n, d, plan->z[l], (ptrdiff_t)d, y, ldy,
                                              nthreads);
            } else {
                rc = FN(fusenn_dense_forward)(n, layer->d_in, d, in, ld_in, 1, W_OF(layer),
                                              (ptrdiff_t)d, 1, B_OF(layer), act, y, ldy, nthreads);
            }
            if (rc != FUSENN_OK)
                return rc;
            break;
        }
        case FUSENN_LAYER_DROPOUT:
            if (!training || layer->rate == 0) { /* pass-through: the next layer reads `in` */
                plan->res[l] = in;
                continue;
            }
            plan->seeds[l] = fusenn_dropout_seed(layer->seed, (*layer->step)++);
            FN(fusenn_dropout_forward)(n, d, in, ld_in, layer->rate, plan->seeds[l], y, ldy,
                                       nthreads);
            break;
        case FUSENN_LAYER_BATCHNORM:
            if (training)
                FN(fusenn_batchnorm_forward_train)(n, d, in, ld_in, W_OF(layer), B_OF(layer),
                                                   layer->eps, layer->momentum,
                                                   layer->running_mean, layer->running_var,
                                                   plan->stats[l], plan->stats[l] + d, y, ldy,
                                                   nthreads);
            else
                FN(fusenn_batchnorm_forward_infer)(n, d, in, ld_in, W_OF(layer), B_OF(layer),
                                                   layer->eps, layer->running_mean,
                                                   layer->running_var, y, ldy, nthreads);
            break;
        }
        plan->res[l] = y;
        in = y;
        ld_in = ldy;
    }
    return FUSENN_OK;
}

/* Loss of the last layer's output z against the targets, rows weighted by sw
 * (NULL: unweighted); dZ (may be NULL) gets dL/dz. *correct counts correct
 * predictions. */
static double FN(loss)(plan_t *plan, size_t n, const real *z, const int64_t *labels,
                       const real *T, ptrdiff_t ldt, const real *sw, real *dz, double *correct,
                       int nthreads)
{
    const size_t k = plan->k;
    const ptrdiff_t ldk = (ptrdiff_t)k;
    double loss = 0;
    size_t hits = 0;
    switch (plan->loss) {
    case FUSENN_LOSS_CROSS_ENTROPY:
        loss = FN(fusenn_softmax_cross_entropy)(n, k, z, ldk, labels, sw, plan->p, ldk, dz, ldk,
                                                nthreads);
        for (size_t i = 0; i < n; i++) { /* argmax, first of ties (as NumPy) */
            const real *p = plan->p + i * k;
            size_t best = 0;
            for (size_t j = 1; j < k; j++)
                best = p[j] > p[best] ? j : best;
            hits += (int64_t)best == labels[i];
        }
        break;
    case FUSENN_LOSS_BINARY_CROSS_ENTROPY:
        loss = FN(fusenn_sigmoid_binary_cross_entropy)(n, k, z, ldk, T, ldt, sw, plan->p, ldk, dz,
                                                       ldk, nthreads);
        for (size_t i = 0; i < n; i++)
            for (size_t j = 0; j < k; j++)
                hits += (plan->p[i * k + j] > (real)0.5) == (T[(ptrdiff_t)i * ldt + j] > (real)0.5);
        break;
    case FUSENN_LOSS_MAE:
        loss = FN(fusenn_mae)(n, k, z, ldk, T, ldt, sw, dz, ldk, nthreads);
        break;
    case FUSENN_LOSS_HUBER:
        loss = FN(fusenn_huber)(n, k, z, ldk, T, ldt, plan->loss_param, sw, dz, ldk, nthreads);
        break;
    case FUSENN_LOSS_MSE:
    default:
        loss = FN(fusenn_mse)(n, k, z, ldk, T, ldt, sw, dz, ldk, nthreads);
        break;
    }
    *correct = (double)hits;
    return loss;
}

/* Zero the optimizer state and its step count: after a diverging step the
 * state holds the diverging gradients. */
static void FN(reset_optimizer)(plan_t *plan, fusenn_optimizer *opt)
{
    for (size_t l = 0; l < plan->n_layers; l++) {
        const fusenn_layer *layer = &plan->layers[l];
        for (int s = 0; s < 2; s++) {
            if (layer->W_state[s])
                memset(layer->W_state[s], 0, w_len(layer) * sizeof(real));
            if (layer->b_state[s])
                memset(layer->b_state[s], 0, b_len(layer) * sizeof(real));
        }
    }
    opt->steps = 0;
}

/* Update one parameter array; the old values go to its gradient array.
 * weight_decay is the optimizer's for weight matrices, 0 for biases. */
static size_t FN(update)(const fusenn_optimizer *opt, size_t len, real *w, real *g,
                         void *const state[2], double weight_decay, int nthreads)
{
    switch (opt->kind) {
    case FUSENN_OPT_ADAM:
        return FN(fusenn_adam_update)(len, w, g, state[0], state[1], opt->lr, opt->beta1,
                                      opt->beta2, opt->eps, weight_decay, opt->steps, g,
                                      nthreads);
    case FUSENN_OPT_RMSPROP:
        return FN(fusenn_rmsprop_update)(len, w, g, state[0], opt->lr, opt->rho, opt->eps, g,
                                         nthreads);
    case FUSENN_OPT_ADAGRAD:
        return FN(fusenn_adagrad_update)(len, w, g, state[0], opt->lr, opt->eps, g, nthreads);
    case FUSENN_OPT_SGD:
    default:
        return FN(fusenn_sgd_update)(len, w, g, state[0], opt->lr, opt->momentum,
                                     opt->nesterov, g, nthreads);
    }
}

/* Norm clipping's factor c / max(norm, c) (1 when the norm is NaN). */
static double clip_scale(double sum_squares, double c)
{
    const double norm = sqrt(sum_squares);
    return norm > c ? c / norm : 1.0;
}

/* Parameter p of the plan (W of layer p / 2 when p is even, else its b):
 * its length (0 for layers without parameters), weights and gradient. */
static size_t FN(param)(const plan_t *plan, size_t p, real **w, real **g)
{
    const fusenn_layer *layer = &plan->layers[p / 2];
    if (p % 2) {
        *w = B_OF(layer);
        *g = DB_OF(layer);
        return b_len(layer);
    }
    *w = W_OF(layer);
    *g = DW_OF(layer);
    return w_len(layer);
}

/* The L2 penalty and weight decay apply to weight matrices only (as the
 * Python optimizers: parameters with ndim >= 2), never to biases or gamma. */
static int is_matrix(const plan_t *plan, size_t p)
{
    return p % 2 == 0 && plan->layers[p / 2].kind == FUSENN_LAYER_DENSE;
}

/* Preprocess every gradient as fusenn/optimizers.py does (same kernels, same
 * order, so the same bits): the L2 penalty on weight matrices, then norm
 * clipping (per parameter or global), then value clipping. */
static void FN(transform_gradients)(plan_t *plan, const fusenn_optimizer *opt, int nthreads)
{
    const size_t P = 2 * plan->n_layers;
    const double clipvalue = opt->clipvalue > 0 ? opt->clipvalue : 0;
    const int per_param = opt->clipnorm > 0, global = !per_param && opt->global_clipnorm > 0;
    real *w, *g;
    if (!per_param && !global) { /* one pass: l2 and value clipping together */
        for (size_t p = 0; p < P; p++) {
            const size_t len = FN(param)(plan, p, &w, &g);
            const double l2 = is_matrix(plan, p) ? opt->l2 : 0;
            if (len && (l2 > 0 || clipvalue > 0))
                FN(fusenn_grad_transform)(len, g, l2 > 0 ? w : NULL, l2, 1.0, clipvalue,
                                          nthreads);
        }
        return;
    }
    if (opt->l2 > 0) /* the norm is that of the penalised gradient */
        for (size_t p = 0; p < P; p += 2) {
            const size_t len = FN(param)(plan, p, &w, &g);
            if (is_matrix(plan, p))
                FN(fusenn_grad_transform)(len, g, w, opt->l2, 1.0, 0, nthreads);
        }
    double scale = 1.0;
    if (global) {
        double total = 0;
        for (size_t p = 0; p < P; p++) {
            const size_t len = FN(param)(plan, p, &w, &g);
            total += FN(fusenn_sum_squares)(len, g, nthreads);
        }
        scale = clip_scale(total, opt->global_clipnorm);
    }
    for (size_t p = 0; p < P; p++) {
        const size_t len = FN(param)(plan, p, &w, &g);
        if (len == 0)
            continue;
        if (per_param)
            scale = clip_scale(FN(fusenn_sum_squares)(len, g, nthreads), opt->clipnorm);
        if (scale != 1.0 || clipvalue > 0)
            FN(fusenn_grad_transform)(len, g, NULL, 0, scale, clipvalue, nthreads);
    }
}

/* Backward through layer l: g = dL/d(its output) (row stride d_out) becomes
 * the parameter gradients and, if need_dx, dL/d(its input) in *dx_out. */
static int FN(backward_layer)(plan_t *plan, size_t l, size_t n, real *g, real *spare,
                              int need_dx, int logits, real **dx_out, int nthreads)
{
    const fusenn_layer *layer = &plan->layers[l];
    const size_t d = layer->d_out;
    const real *in = plan->in[l];
    const ptrdiff_t ld_in = plan->ld_in[l];
    *dx_out = g; /* the layers other than dense work in place */
    switch (layer->kind) {
    case FUSENN_LAYER_DENSE: {
        fusenn_activation act = logits ? FUSENN_ACT_IDENTITY : layer->act;
        if (fusenn_activation_needs_z(act)) { /* dZ from z, in place; then as identity */
            FN(fusenn_activation_backward)(act, n, d, plan->z[l], (ptrdiff_t)d, plan->res[l],
                                           (ptrdiff_t)d, g, (ptrdiff_t)d, g, (ptrdiff_t)d,
                                           nthreads);
            act = FUSENN_ACT_IDENTITY;
        }
        /* dZ overwrites dY in place (allowed: same leading dimension) */
        *dx_out = need_dx ? spare : NULL;
        return FN(fusenn_dense_backward)(n, layer->d_in, d, in, ld_in, 1, W_OF(layer),
                                         (ptrdiff_t)d, 1, plan->res[l], (ptrdiff_t)d, g,
                                         (ptrdiff_t)d, act, g, DW_OF(layer), DB_OF(layer),
                                         *dx_out, nthreads);
    }
    case FUSENN_LAYER_DROPOUT:
        if (plan->res[l] != in) /* not a pass-through */
            FN(fusenn_dropout_backward)(n, d, g, (ptrdiff_t)d, layer->rate, plan->seeds[l], g,
                                        (ptrdiff_t)d, nthreads);
        return FUSENN_OK;
    case FUSENN_LAYER_BATCHNORM:
        FN(fusenn_batchnorm_backward)(n, d, in, ld_in, g, (ptrdiff_t)d, W_OF(layer),
                                      plan->stats[l], plan->stats[l] + d, need_dx ? g : NULL,
                                      (ptrdiff_t)d, DW_OF(layer), DB_OF(layer), nthreads);
        return FUSENN_OK;
    }
    return FUSENN_OK;
}

/* One step on a batch whose rows are X (row stride ldx). */
static int FN(step)(plan_t *plan, size_t n, const real *X, ptrdiff_t ldx,
                    const int64_t *labels, const real *T, ptrdiff_t ldt, const real *sw,
                    fusenn_optimizer *opt, double *loss, double *correct, int nthreads)
{
    const size_t L = plan->n_layers;
    real *z = plan->out[L - 1];
    int rc = FN(forward)(plan, n, X, ldx, 1, plan->fused, z, (ptrdiff_t)plan->k, nthreads);
    if (rc != FUSENN_OK)
        return rc;
    int cur = 0; /* plan->g[cur] holds dL/d(output of the layer being differentiated) */
    *loss = FN(loss)(plan, n, z, labels, T, ldt, sw, plan->g[cur], correct, nthreads);
    if (!isfinite(*loss))
        return FUSENN_EDIVERGED; /* nothing has changed yet */

    for (size_t l = L; l-- > plan->first_trainable;) {
        const int need_dx = l > plan->first_trainable;
        real *dx;
        rc = FN(backward_layer)(plan, l, n, plan->g[cur], plan->g[1 - cur], need_dx,
                                l + 1 == L && plan->fused, &dx, nthreads);
        if (rc != FUSENN_OK)
            return rc;
        if (dx == plan->g[1 - cur])
            cur = 1 - cur;
    }

    opt->steps++;
    FN(transform_gradients)(plan, opt, nthreads);
    size_t bad = 0;
    for (size_t l = 0; l < L; l++) {
        const fusenn_layer *layer = &plan->layers[l];
        if (w_len(layer) == 0)
            continue;
        /* weight decay (AdamW) for dense weight matrices only, never biases or gamma */
        bad += FN(update)(opt, w_len(layer), W_OF(layer), DW_OF(layer), layer->W_state,
                          layer->kind == FUSENN_LAYER_DENSE ? opt->weight_decay : 0, nthreads);
        bad += FN(update)(opt, b_len(layer), B_OF(layer), DB_OF(layer), layer->b_state, 0,
                          nthreads);
    }
    if (bad) { /* undo: the gradient arrays hold the weights from before the step */
        for (size_t l = 0; l < L; l++) {
            const fusenn_layer *layer = &plan->layers[l];
            if (w_len(layer) == 0)
                continue;
            memcpy(W_OF(layer), DW_OF(layer), w_len(layer) * sizeof(real));
            memcpy(B_OF(layer), DB_OF(layer), b_len(layer) * sizeof(real));
        }
        return FUSENN_EDIVERGED;
    }
    return FUSENN_OK;
}

/* ---- public entry points --------------------------------------------------------- */

/* FUSENN_OK if a batch can be trained on, else FUSENN_EBADINPUT: X or T not
 * finite, a label outside [0, k), a binary cross-entropy target outside [0, 1].
 * (fit checks its whole data set once in Python instead.) */
static int FN(check_batch)(const plan_t *plan, size_t n, const real *X, ptrdiff_t ldx,
                           const int64_t *labels, const real *T, ptrdiff_t ldt, int nthreads)
{
    const size_t k = plan->k;
    if (FN(fusenn_count_nonfinite)(n, plan->layers[0].d_in, X, ldx, nthreads))
        return FUSENN_EBADINPUT;
    if (plan->loss == FUSENN_LOSS_CROSS_ENTROPY) {
        if (fusenn_first_label_out_of_range(n, labels, (int64_t)k) < n)
            return FUSENN_EBADINPUT;
    } else if (FN(fusenn_count_nonfinite)(n, k, T, ldt, nthreads)) {
        return FUSENN_EBADINPUT;
    } else if (plan->loss == FUSENN_LOSS_BINARY_CROSS_ENTROPY) {
        for (size_t i = 0; i < n; i++)
            for (size_t j = 0; j < k; j++)
                if (!(T[(ptrdiff_t)i * ldt + j] >= 0 && T[(ptrdiff_t)i * ldt + j] <= 1))
                    return FUSENN_EBADINPUT;
    }
    return FUSENN_OK;
}

int FN(fusenn_plan_train_batch)(plan_t *plan, size_t n, const real *X, ptrdiff_t ldx,
                                const int64_t *labels, const real *T, ptrdiff_t ldt,
                                const real *sw, fusenn_optimizer *opt, double *loss,
                                double *correct, int nthreads)
{
    int rc = FN(check_batch)(plan, n, X, ldx, labels, T, ldt, nthreads);
    if (rc == FUSENN_OK)
        rc = FN(reserve)(plan, n);
    if (rc != FUSENN_OK)
        return rc;
    rc = FN(step)(plan, n, X, ldx, labels, T, ldt, sw, opt, loss, correct, nthreads);
    if (rc == FUSENN_EDIVERGED)
        FN(reset_optimizer)(plan, opt);
    return rc;
}

/* A gather's source rows; the destination is the plan's arena. */
typedef struct {
    const plan_t *plan;
    const int64_t *order, *labels;
    const real *X, *T, *sw;
    ptrdiff_t ldx, ldt;
} FN(gather_args);

static size_t FN(gather_rows)(const void *ctx, size_t begin, size_t end)
{
    const FN(gather_args) *p = ctx;
    const size_t d = p->plan->d_in, k = p->plan->k;
    const int64_t *order = p->order, *labels = p->labels;
    const real *X = p->X, *T = p->T, *sw = p->sw;
    const ptrdiff_t ldx = p->ldx, ldt = p->ldt;
    real *x_to = p->plan->x, *t_to = p->plan->t, *sw_to = p->plan->sw;
    int64_t *labels_to = p->plan->labels;
    for (size_t i = begin; i < end; i++) {
        const ptrdiff_t row = (ptrdiff_t)order[i];
        memcpy(x_to + i * d, X + row * ldx, d * sizeof(real));
        if (labels)
            labels_to[i] = labels[row];
        else
            memcpy(t_to + i * k, T + row * ldt, k * sizeof(real));
        if (sw)
            sw_to[i] = sw[row];
    }
    return 0;
}

/* Copy the rows order[0..n) of X (and of the targets and weights) into the arena. */
static void FN(gather)(plan_t *plan, size_t n, const int64_t *order, const real *X,
                       ptrdiff_t ldx, const int64_t *labels, const real *T, ptrdiff_t ldt,
                       const real *sw, int nthreads)
{
    const FN(gather_args) args = {plan, order, labels, X, T, sw, ldx, ldt};
    fusenn_parallel_ranges(fusenn_threads_for(n * plan->d_in, nthreads), n,
                           FN(gather_rows), &args);
}

int FN(fusenn_plan_train_epoch)(plan_t *plan, size_t n, const real *X, ptrdiff_t ldx,
                                const int64_t *labels, const real *T, ptrdiff_t ldt,
                                const real *sw, const int64_t *order, size_t batch_size,
                                size_t first_batch, size_t n_batches, fusenn_optimizer *opt,
                                double *loss, double *loss_sum, double *correct_sum, int nthreads)
{
    if (batch_size == 0)
        return FUSENN_OK;
    int rc = FN(reserve)(plan, FUSENN_MIN(batch_size, n));
    for (size_t b = first_batch; rc == FUSENN_OK && b < first_batch + n_batches; b++) {
        const size_t start = b * batch_size;
        if (start >= n)
            break;
        const size_t rows = FUSENN_MIN(batch_size, n - start);
        FN(gather)(plan, rows, order + start, X, ldx, labels, T, ldt, sw, nthreads);
        double correct = 0;
        rc = FN(step)(plan, rows, plan->x, (ptrdiff_t)plan->d_in, labels ? plan->labels : NULL,
                      plan->t, (ptrdiff_t)plan->k, sw ? plan->sw : NULL, opt, loss, &correct,
                      nthreads);
        if (rc == FUSENN_OK) {
            *loss_sum += *loss * (double)rows;
            *correct_sum += correct;
        }
    }
    if (rc == FUSENN_EDIVERGED)
        FN(reset_optimizer)(plan, opt);
    return rc;
}

int FN(fusenn_plan_predict)(plan_t *plan, size_t n, const real *X, ptrdiff_t ldx,
                            real *out, ptrdiff_t ldo, int nthreads)
{
    int rc = FN(reserve)(plan, FUSENN_MIN(n, (size_t)PLAN_CHUNK_ROWS));
    for (size_t start = 0; rc == FUSENN_OK && start < n; start += PLAN_CHUNK_ROWS) {
        const size_t rows = FUSENN_MIN((size_t)PLAN_CHUNK_ROWS, n - start);
        rc = FN(forward)(plan, rows, X + (ptrdiff_t)start * ldx, ldx, 0, 0,
                         out + (ptrdiff_t)start * ldo, ldo, nthreads);
    }
    return rc;
}

int FN(fusenn_plan_evaluate)(plan_t *plan, size_t n, const real *X, ptrdiff_t ldx,
                             const int64_t *labels, const real *T, ptrdiff_t ldt,
                             const real *sw, double *loss_sum, double *correct_sum, int nthreads)
{
    const size_t L = plan->n_layers;
    int rc = FN(reserve)(plan, FUSENN_MIN(n, (size_t)PLAN_CHUNK_ROWS));
    for (size_t start = 0; rc == FUSENN_OK && start < n; start += PLAN_CHUNK_ROWS) {
        const size_t rows = FUSENN_MIN((size_t)PLAN_CHUNK_ROWS, n - start);
        real *z = plan->out[L - 1];
        rc = FN(forward)(plan, rows, X + (ptrdiff_t)start * ldx, ldx, 0, plan->fused, z,
                         (ptrdiff_t)plan->k, nthreads);
        if (rc != FUSENN_OK)
            break;
        double correct = 0;
        double loss = FN(loss)(plan, rows, z, labels ? labels + start : NULL,
                               T ? T + (ptrdiff_t)start * ldt : NULL, ldt,
                               sw ? sw + start : NULL, NULL, &correct, nthreads);
        *loss_sum += loss * (double)rows;
        *correct_sum += correct;
    }
    return rc;
}
