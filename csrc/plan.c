/*
 * plan.c - the training engine: a network lowered into layer descriptors and
 * one arena, trained by one C call per step (or per epoch) with no Python and
 * no allocation in the loop.
 *
 * A step on a batch X of n rows, for layers l = 0 .. L-1:
 *   forward   out[l] = act_l(in_l W_l + b_l)     in_0 = X, in_l = out[l-1]
 *             (the last layer stops at the logits when the loss is fused)
 *   loss      g = dL/d out[L-1]                  softmax/sigmoid fused with CE/BCE
 *   backward  dense_backward turns g into dW_l, db_l and dL/d in_l, layer by
 *             layer, ping-ponging between two gradient buffers; the first
 *             layer's dX is never computed
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
    fusenn_loss loss;
    int fused;            /* the loss works from the last layer's logits */
    size_t d_in, k, widest;

    size_t capacity;  /* rows the arena holds */
    void *arena;
    real *x;          /* gathered batch, capacity x d_in */
    int64_t *labels;  /* gathered labels (cross-entropy) */
    real *t;          /* gathered targets, capacity x k (the other losses) */
    real *p;          /* probabilities from the fused losses, capacity x k */
    real *g[2];       /* gradient ping-pong, capacity x widest */
};

typedef struct FN(fusenn_plan) plan_t;

#define W_OF(layer) ((real *)(layer)->W)
#define B_OF(layer) ((real *)(layer)->b)
#define DW_OF(layer) ((real *)(layer)->dW)
#define DB_OF(layer) ((real *)(layer)->db)

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
    size_t p = carve(&size, rows * plan->k, sizeof(real));
    size_t g0 = carve(&size, rows * plan->widest, sizeof(real));
    size_t g1 = carve(&size, rows * plan->widest, sizeof(real));
    for (size_t l = 0; l < plan->n_layers; l++) {
        size_t out = carve(&size, rows * plan->layers[l].d_out, sizeof(real));
        if (base)
            plan->out[l] = (real *)(base + out);
    }
    if (base) {
        plan->x = (real *)(base + x);
        plan->labels = (int64_t *)(base + labels);
        plan->t = (real *)(base + t);
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

plan_t *FN(fusenn_plan_create)(size_t n_layers, const fusenn_layer *layers, fusenn_loss loss)
{
    if (n_layers == 0)
        return NULL;
    plan_t *plan = fusenn_aligned_alloc(sizeof *plan);
    if (plan == NULL)
        return NULL;
    memset(plan, 0, sizeof *plan);
    plan->layers = fusenn_aligned_alloc(n_layers * sizeof *layers);
    plan->out = fusenn_aligned_alloc(n_layers * sizeof *plan->out);
    if (plan->layers == NULL || plan->out == NULL) {
        FN(fusenn_plan_destroy)(plan);
        return NULL;
    }
    memcpy(plan->layers, layers, n_layers * sizeof *layers);
    plan->n_layers = n_layers;
    plan->loss = loss;
    plan->fused = loss != FUSENN_LOSS_MSE;
    plan->d_in = layers[0].d_in;
    plan->k = layers[n_layers - 1].d_out;
    for (size_t l = 0; l < n_layers; l++)
        plan->widest = FUSENN_MAX(plan->widest, layers[l].d_out);
    return plan;
}

void FN(fusenn_plan_destroy)(plan_t *plan)
{
    if (plan == NULL)
        return;
    fusenn_aligned_free(plan->arena);
    fusenn_aligned_free(plan->out);
    fusenn_aligned_free(plan->layers);
    fusenn_aligned_free(plan);
}

/* ---- the pieces of a step ------------------------------------------------------ */

/* Forward through every layer. The last layer writes to `last` (row stride
 * ld_last) and stops at the logits when `logits` is set. */
static int FN(forward)(plan_t *plan, size_t n, const real *X, ptrdiff_t ldx, int logits,
                       real *last, ptrdiff_t ld_last, int nthreads)
{
    const real *in = X;
    ptrdiff_t ld_in = ldx;
    for (size_t l = 0; l < plan->n_layers; l++) {
        const fusenn_layer *layer = &plan->layers[l];
        const int is_last = l + 1 == plan->n_layers;
        fusenn_activation act = is_last && logits ? FUSENN_ACT_IDENTITY : layer->act;
        real *y = is_last ? last : plan->out[l];
        ptrdiff_t ldy = is_last ? ld_last : (ptrdiff_t)layer->d_out;
        int rc = FN(fusenn_dense_forward)(n, layer->d_in, layer->d_out, in, ld_in, 1,
                                          W_OF(layer), (ptrdiff_t)layer->d_out, 1, B_OF(layer),
                                          act, y, ldy, nthreads);
        if (rc != FUSENN_OK)
            return rc;
        in = y;
        ld_in = ldy;
    }
    return FUSENN_OK;
}

/* Loss of the last layer's output z against the targets; dZ (may be NULL) gets
 * dL/dz. *correct counts correct predictions. */
static double FN(loss)(plan_t *plan, size_t n, const real *z, const int64_t *labels,
                       const real *T, ptrdiff_t ldt, real *dz, double *correct, int nthreads)
{
    const size_t k = plan->k;
    const ptrdiff_t ldk = (ptrdiff_t)k;
    double loss = 0;
    size_t hits = 0;
    switch (plan->loss) {
    case FUSENN_LOSS_CROSS_ENTROPY:
        loss = FN(fusenn_softmax_cross_entropy)(n, k, z, ldk, labels, plan->p, ldk, dz, ldk,
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
        loss = FN(fusenn_sigmoid_binary_cross_entropy)(n, k, z, ldk, T, ldt, plan->p, ldk, dz,
                                                       ldk, nthreads);
        for (size_t i = 0; i < n; i++)
            for (size_t j = 0; j < k; j++)
                hits += (plan->p[i * k + j] > (real)0.5) == (T[(ptrdiff_t)i * ldt + j] > (real)0.5);
        break;
    case FUSENN_LOSS_MSE:
    default:
        loss = FN(fusenn_mse)(n, k, z, ldk, T, ldt, dz, ldk, nthreads);
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
                memset(layer->W_state[s], 0, layer->d_in * layer->d_out * sizeof(real));
            if (layer->b_state[s])
                memset(layer->b_state[s], 0, layer->d_out * sizeof(real));
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
 * its length, weights and gradient. */
static size_t FN(param)(const plan_t *plan, size_t p, real **w, real **g)
{
    const fusenn_layer *layer = &plan->layers[p / 2];
    if (p % 2) {
        *w = B_OF(layer);
        *g = DB_OF(layer);
        return layer->d_out;
    }
    *w = W_OF(layer);
    *g = DW_OF(layer);
    return layer->d_in * layer->d_out;
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
            const double l2 = p % 2 ? 0 : opt->l2;
            if (l2 > 0 || clipvalue > 0)
                FN(fusenn_grad_transform)(len, g, l2 > 0 ? w : NULL, l2, 1.0, clipvalue,
                                          nthreads);
        }
        return;
    }
    if (opt->l2 > 0) /* the norm is that of the penalised gradient */
        for (size_t p = 0; p < P; p += 2) {
            const size_t len = FN(param)(plan, p, &w, &g);
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
        if (per_param)
            scale = clip_scale(FN(fusenn_sum_squares)(len, g, nthreads), opt->clipnorm);
        if (scale != 1.0 || clipvalue > 0)
            FN(fusenn_grad_transform)(len, g, NULL, 0, scale, clipvalue, nthreads);
    }
}

/* One step on a batch whose rows are X (row stride ldx). */
static int FN(step)(plan_t *plan, size_t n, const real *X, ptrdiff_t ldx,
                    const int64_t *labels, const real *T, ptrdiff_t ldt,
                    fusenn_optimizer *opt, double *loss, double *correct, int nthreads)
{
    const size_t L = plan->n_layers;
    real *z = plan->out[L - 1];
    int rc = FN(forward)(plan, n, X, ldx, plan->fused, z, (ptrdiff_t)plan->k, nthreads);
    if (rc != FUSENN_OK)
        return rc;
    int cur = 0; /* plan->g[cur] holds dL/d(output of the layer being differentiated) */
    *loss = FN(loss)(plan, n, z, labels, T, ldt, plan->g[cur], correct, nthreads);
    if (!isfinite(*loss))
        return FUSENN_EDIVERGED; /* nothing has changed yet */

    for (size_t l = L; l-- > 0;) {
        const fusenn_layer *layer = &plan->layers[l];
        const fusenn_activation act = l + 1 == L && plan->fused ? FUSENN_ACT_IDENTITY : layer->act;
        const real *in = l == 0 ? X : plan->out[l - 1];
        const ptrdiff_t ld_in = l == 0 ? ldx : (ptrdiff_t)layer->d_in;
        real *dy = plan->g[cur];
        real *dx = l == 0 ? NULL : plan->g[1 - cur];
        /* dZ overwrites dY in place (allowed: same leading dimension) */
        rc = FN(fusenn_dense_backward)(n, layer->d_in, layer->d_out, in, ld_in, 1, W_OF(layer),
                                       (ptrdiff_t)layer->d_out, 1, plan->out[l],
                                       (ptrdiff_t)layer->d_out, dy, (ptrdiff_t)layer->d_out, act,
                                       dy, DW_OF(layer), DB_OF(layer), dx, nthreads);
        if (rc != FUSENN_OK)
            return rc;
        cur = 1 - cur;
    }

    opt->steps++;
    FN(transform_gradients)(plan, opt, nthreads);
    size_t bad = 0;
    for (size_t l = 0; l < L; l++) {
        const fusenn_layer *layer = &plan->layers[l];
        bad += FN(update)(opt, layer->d_in * layer->d_out, W_OF(layer), DW_OF(layer),
                          layer->W_state, opt->weight_decay, nthreads);
        bad += FN(update)(opt, layer->d_out, B_OF(layer), DB_OF(layer), layer->b_state, 0,
                          nthreads);
    }
    if (bad) { /* undo: the gradient arrays hold the weights from before the step */
        for (size_t l = 0; l < L; l++) {
            const fusenn_layer *layer = &plan->layers[l];
            memcpy(W_OF(layer), DW_OF(layer), layer->d_in * layer->d_out * sizeof(real));
            memcpy(B_OF(layer), DB_OF(layer), layer->d_out * sizeof(real));
        }
        return FUSENN_EDIVERGED;
    }
    return FUSENN_OK;
}

/* ---- public entry points --------------------------------------------------------- */

int FN(fusenn_plan_train_batch)(plan_t *plan, size_t n, const real *X, ptrdiff_t ldx,
                                const int64_t *labels, const real *T, ptrdiff_t ldt,
                                fusenn_optimizer *opt, double *loss, double *correct, int nthreads)
{
    int rc = FN(reserve)(plan, n);
    if (rc != FUSENN_OK)
        return rc;
    rc = FN(step)(plan, n, X, ldx, labels, T, ldt, opt, loss, correct, nthreads);
    if (rc == FUSENN_EDIVERGED)
        FN(reset_optimizer)(plan, opt);
    return rc;
}

/* Copy the rows order[0..n) of X (and of the targets) into the arena. */
static void FN(gather)(plan_t *plan, size_t n, const int64_t *order, const real *X,
                       ptrdiff_t ldx, const int64_t *labels, const real *T, ptrdiff_t ldt,
                       int nthreads)
{
    const size_t d = plan->d_in, k = plan->k;
    int nt = fusenn_threads_for(n * d, nthreads);
    (void)nt; /* only read by the OpenMP pragma */
#pragma omp parallel for num_threads(nt) if(nt > 1) schedule(static)
    for (size_t i = 0; i < n; i++) {
        const ptrdiff_t row = (ptrdiff_t)order[i];
        memcpy(plan->x + i * d, X + row * ldx, d * sizeof(real));
        if (labels)
            plan->labels[i] = labels[row];
        else
            memcpy(plan->t + i * k, T + row * ldt, k * sizeof(real));
    }
}

int FN(fusenn_plan_train_epoch)(plan_t *plan, size_t n, const real *X, ptrdiff_t ldx,
                                const int64_t *labels, const real *T, ptrdiff_t ldt,
                                const int64_t *order, size_t batch_size, size_t first_batch,
                                size_t n_batches, fusenn_optimizer *opt, double *loss,
                                double *loss_sum, double *correct_sum, int nthreads)
{
    if (batch_size == 0)
        return FUSENN_OK;
    int rc = FN(reserve)(plan, FUSENN_MIN(batch_size, n));
    for (size_t b = first_batch; rc == FUSENN_OK && b < first_batch + n_batches; b++) {
        const size_t start = b * batch_size;
        if (start >= n)
            break;
        const size_t rows = FUSENN_MIN(batch_size, n - start);
        FN(gather)(plan, rows, order + start, X, ldx, labels, T, ldt, nthreads);
        double correct = 0;
        rc = FN(step)(plan, rows, plan->x, (ptrdiff_t)plan->d_in, labels ? plan->labels : NULL,
                      plan->t, (ptrdiff_t)plan->k, opt, loss, &correct, nthreads);
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
        rc = FN(forward)(plan, rows, X + (ptrdiff_t)start * ldx, ldx, 0,
                         out + (ptrdiff_t)start * ldo, ldo, nthreads);
    }
    return rc;
}

int FN(fusenn_plan_evaluate)(plan_t *plan, size_t n, const real *X, ptrdiff_t ldx,
                             const int64_t *labels, const real *T, ptrdiff_t ldt,
                             double *loss_sum, double *correct_sum, int nthreads)
{
    const size_t L = plan->n_layers;
    int rc = FN(reserve)(plan, FUSENN_MIN(n, (size_t)PLAN_CHUNK_ROWS));
    for (size_t start = 0; rc == FUSENN_OK && start < n; start += PLAN_CHUNK_ROWS) {
        const size_t rows = FUSENN_MIN((size_t)PLAN_CHUNK_ROWS, n - start);
        real *z = plan->out[L - 1];
        rc = FN(forward)(plan, rows, X + (ptrdiff_t)start * ldx, ldx, plan->fused, z,
                         (ptrdiff_t)plan->k, nthreads);
        if (rc != FUSENN_OK)
            break;
        double correct = 0;
        double loss = FN(loss)(plan, rows, z, labels ? labels + start : NULL,
                               T ? T + (ptrdiff_t)start * ldt : NULL, ldt, NULL, &correct,
                               nthreads);
        *loss_sum += loss * (double)rows;
        *correct_sum += correct;
    }
    return rc;
}
