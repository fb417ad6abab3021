/*
 * plan.c - the training engine: a network lowered into layers of the kinds in
 * the table below and one arena, trained by one C call per step (or per
 * epoch) with no Python and no allocation in the loop.
 *
 * A step on a batch X of n samples, for layers l = 0 .. L-1:
 *   forward   out[l] = layer_l(in_l)             in_0 = X, in_l = out[l-1]
 *             (the last layer stops at the logits when the loss is fused)
 *   loss      g = dL/d out[L-1]                  softmax/sigmoid fused with CE/BCE
 *   backward  each layer turns g into its parameter gradients and dL/d in_l,
 *             ping-ponging between two gradient buffers; it stops after the
 *             first layer that has parameters (nothing upstream needs dX)
 *   update    every parameter tensor, keeping the old weights in the (now
 *             dead) gradient arena, so a step that overflows is undone exactly
 * The engine knows a layer only through its kind's record (layer.h): here are
 * the loop over layers, the arena carving, the optimizer pass over (parameter,
 * gradient, state) triples and the table of kinds. Everything runs through the
 * same kernels as the per-op API, so a plan's results are bitwise those of the
 * per-op path, for any thread count.
 */
#include "layer.h"

#include <time.h>

/* Samples per forward pass in predict / evaluate. */
#define PLAN_CHUNK_ROWS 1024

/* ---- the table of layer kinds ----------------------------------------------- */

extern const FN(layer_kind) FN(dense_kind), FN(dropout_kind), FN(batchnorm_kind),
    FN(reshape_kind), FN(global_pool_kind), FN(conv2d_kind), FN(pool2d_kind),
    FN(embedding_kind), FN(simple_rnn_kind), FN(gru_kind), FN(lstm_kind);

static const FN(layer_kind) *const FN(kinds)[] = {
    &FN(dense_kind),
    &FN(dropout_kind),
    &FN(batchnorm_kind),
    &FN(reshape_kind),
    &FN(global_pool_kind),
    &FN(conv2d_kind),
    &FN(pool2d_kind),
    &FN(embedding_kind),
    &FN(simple_rnn_kind),
    &FN(gru_kind),
    &FN(lstm_kind),
};

#define N_KINDS (sizeof FN(kinds) / sizeof FN(kinds)[0])

#if defined(FUSENN_DTYPE_F32) /* names are the same for both dtypes: defined once */
int fusenn_kind_count(void) { return (int)N_KINDS; }

const char *fusenn_kind_name(int kind)
{
    return kind >= 0 && kind < (int)N_KINDS ? FN(kinds)[kind]->name : NULL;
}

int fusenn_kind_find(const char *name)
{
    for (size_t i = 0; i < N_KINDS; i++)
        if (strcmp(FN(kinds)[i]->name, name) == 0)
            return (int)i;
    return -1;
}

int fusenn_kind_reads_indices(int kind)
{
    return kind >= 0 && kind < (int)N_KINDS && FN(kinds)[kind]->index_input;
}

const char *fusenn_kind_attr(int kind, size_t i)
{
    if (kind < 0 || kind >= (int)N_KINDS)
        return NULL;
    const char *const *attrs = FN(kinds)[kind]->attrs;
    for (size_t j = 0; attrs && attrs[j]; j++)
        if (j == i)
            return attrs[j];
    return NULL;
}
#endif

static int valid_shape(const fusenn_shape *s)
{
    if (s->rank < 1 || s->rank > FUSENN_MAX_RANK)
        return 0;
    for (size_t i = 0; i < s->rank; i++)
        if (s->dim[i] == 0)
            return 0;
    return 1;
}

/* ---- one layer, called directly ----------------------------------------------------- */

/* The kind's view of a layer of `desc` on samples of shape `in`, its
 * parameters and gradients at params and grads (NULL: not given). */
static int FN(layer_view)(const fusenn_layer *desc, const fusenn_shape *in, real *const *params,
                          real *const *grads, const FN(layer_kind) **kind, FN(layer) *layer)
{
    if (desc->kind < 0 || desc->kind >= (int)N_KINDS || !valid_shape(in))
        return FUSENN_EINVAL;
    *kind = FN(kinds)[desc->kind];
    memset(layer, 0, sizeof *layer);
    layer->desc = desc;
    layer->in = *in;
    layer->impl = (*kind)->impl;
    if ((*kind)->output_shape(desc, in, &layer->out) != FUSENN_OK || !valid_shape(&layer->out))
        return FUSENN_EINVAL;
    layer->in_size = fusenn_shape_size(&layer->in);
    layer->out_size = fusenn_shape_size(&layer->out);
    fusenn_shape shapes[FUSENN_MAX_PARAMS];
    int decayed[FUSENN_MAX_PARAMS];
    layer->n_params = (*kind)->params ? (*kind)->params(desc, in, shapes, decayed) : 0;
    for (size_t i = 0; i < layer->n_params; i++) {
        layer->param[i] = params ? params[i] : NULL;
        layer->grad[i] = grads ? grads[i] : NULL;
    }
    return FUSENN_OK;
}

#if defined(FUSENN_DTYPE_F32) /* shapes are the same for both dtypes: defined once */
int fusenn_layer_describe(const fusenn_layer *desc, const fusenn_shape *in, fusenn_shape *out,
                          size_t *n_params, fusenn_shape *param_shapes)
{
    const FN(layer_kind) *kind;
    FN(layer) layer;
    if (FN(layer_view)(desc, in, NULL, NULL, &kind, &layer) != FUSENN_OK)
        return FUSENN_EINVAL;
    *out = layer.out;
    int decayed[FUSENN_MAX_PARAMS];
    *n_params = kind->params ? kind->params(desc, in, param_shapes, decayed) : 0;
    return FUSENN_OK;
}
#endif

size_t FN(fusenn_layer_saved_bytes)(const fusenn_layer *desc, const fusenn_shape *in, size_t n)
{
    const FN(layer_kind) *kind;
    FN(layer) layer;
    if (FN(layer_view)(desc, in, NULL, NULL, &kind, &layer) != FUSENN_OK || !kind->saved_bytes)
        return 0;
    return kind->saved_bytes(&layer, n);
}

size_t FN(fusenn_layer_work_bytes)(const fusenn_layer *desc, const fusenn_shape *in, size_t n)
{
    const FN(layer_kind) *kind;
    FN(layer) layer;
    if (FN(layer_view)(desc, in, NULL, NULL, &kind, &layer) != FUSENN_OK || !kind->work_bytes)
        return 0;
    return kind->work_bytes(&layer, n);
}

int FN(fusenn_layer_forward)(const fusenn_layer *desc, const fusenn_shape *in, size_t n,
                             const void *x, ptrdiff_t ldx, real *const *params, real *y,
                             void *saved, void *work, const unsigned char *mask, int training,
                             int logits, int nthreads, const void **result,
                             const unsigned char **mask_out)
{
    const FN(layer_kind) *kind;
    FN(layer) layer;
    if (FN(layer_view)(desc, in, params, NULL, &kind, &layer) != FUSENN_OK)
        return FUSENN_EINVAL;
    FN(forward_args) a = {.n = n, .x = x, .ldx = ldx, .y = y, .ldy = (ptrdiff_t)layer.out_size,
                          .saved = saved, .work = work, .mask = mask, .training = training,
                          .logits = logits, .nthreads = nthreads};
    const int rc = kind->forward(&layer, &a);
    *result = a.result;
    *mask_out = a.mask;
    return rc;
}

int FN(fusenn_layer_backward)(const fusenn_layer *desc, const fusenn_shape *in, size_t n,
                              const void *x, ptrdiff_t ldx, const real *y, real *const *params,
                              real *const *grads, const void *saved, void *work,
                              const unsigned char *mask, real *dy, real *dx, int logits,
                              int nthreads, void **result)
{
    const FN(layer_kind) *kind;
    FN(layer) layer;
    if (FN(layer_view)(desc, in, params, grads, &kind, &layer) != FUSENN_OK)
        return FUSENN_EINVAL;
    FN(backward_args) a = {.n = n, .x = x, .ldx = ldx, .y = y, .ldy = (ptrdiff_t)layer.out_size,
                           .dy = dy, .dx = dx, .saved = saved, .work = work, .mask = mask,
                           .logits = logits, .nthreads = nthreads};
    const int rc = kind->backward(&layer, &a);
    *result = a.result;
    return rc;
}

/* ---- the plan ------------------------------------------------------------------- */

/* A parameter tensor in the arenas. */
typedef struct {
    size_t offset, len;
    int decayed; /* the L2 penalty and weight decay apply */
} param_t;

/* A layer of the plan, and what its last forward pass read and produced. */
typedef struct {
    const FN(layer_kind) *kind;
    fusenn_layer desc; /* the caller's descriptor, copied */
    FN(layer) layer;   /* its view for the kind (layer.desc points at desc) */
    real *out;         /* its output buffer (arena) */
    void *saved, *work;
    const void *in;
    ptrdiff_t ld_in;
    const real *res;
    ptrdiff_t ld_res;
    const unsigned char *mask; /* the time-step mask it saw */
    size_t stats_at;   /* where its batch statistics go in a chunk's record */
    fusenn_activation dx_act; /* taken over from the layer before (backward_args) */
    int dy_is_dz;             /* its output activation taken over by the layer after */
} FN(plan_layer);

struct FN(fusenn_plan) {
    size_t n_layers;
    FN(plan_layer) *layers;
    size_t n_params;
    param_t *params;      /* every parameter tensor, layer by layer */
    real *w, *g, *state[2];
    fusenn_loss loss;
    double loss_param;    /* Huber's delta */
    int fused;            /* the loss works from the last layer's logits */
    size_t first_trainable; /* first layer with parameters: backward stops there */
    int index_input;      /* X holds int64 indices */
    size_t d_in, x_bytes; /* elements and bytes of a sample of X */
    fusenn_shape out_shape;
    size_t out_size, k, rows; /* the loss reads `rows` rows of k outputs per sample */
    const unsigned char *out_mask; /* the last forward pass's mask of the output's steps */
    size_t widest;

    size_t capacity; /* samples the arena holds */
    void *arena;
    char *x;         /* gathered batch */
    int64_t *labels; /* gathered labels (cross-entropy), rows per sample */
    real *t;         /* gathered targets (the other losses) */
    real *sw;        /* gathered sample weights */
    real *p;         /* probabilities from the fused losses */
    real *z;         /* evaluate's outputs of a chunk, forwarded in parts */
    unsigned char *z_mask; /* and their time-step mask, when they have one */
    real *g2[2];     /* gradient ping-pong */
    real *sw_rows;   /* weights per loss row (a chunk's scaled to its share of the batch) */
    real *g_chunk;   /* a chunk's gradients before they are added (owned; arena_len) */
    size_t arena_len;
    size_t record_len;   /* doubles in a chunk's record (REC_*, then batch statistics) */
    double *records;     /* a step's records (owned; records_cap chunks) */
    size_t records_cap;
};

/* A chunk's record: how its gradient went, its loss and correct predictions,
 * then the batch statistics of the kinds that keep running ones (stats_at). */
enum { REC_RC, REC_LOSS, REC_CORRECT, REC_STATS };

typedef struct FN(fusenn_plan) plan_t;

/* ---- arena ------------------------------------------------------------------------ */

/* Reserve `bytes` at *offset, 64-byte aligned. */
static size_t carve(size_t *offset, size_t bytes)
{
    size_t at = *offset;
    *offset += (bytes + 63) / 64 * 64;
    return at;
}

static size_t FN(saved_bytes)(const FN(plan_layer) *pl, size_t n)
{
    return pl->kind->saved_bytes ? pl->kind->saved_bytes(&pl->layer, n) : 0;
}

static size_t FN(work_bytes)(const FN(plan_layer) *pl, size_t n)
{
    return pl->kind->work_bytes ? pl->kind->work_bytes(&pl->layer, n) : 0;
}

/* Lay the arena out for `n` samples and return its size; with base NULL,
 * only measure it. */
static size_t FN(arena_layout)(plan_t *plan, size_t n, char *base)
{
    const size_t r = sizeof(real), rows = n * plan->rows;
    size_t size = 0;
    size_t x = carve(&size, n * plan->x_bytes);
    size_t labels = carve(&size, rows * sizeof(int64_t));
    size_t t = carve(&size, n * plan->out_size * r);
    size_t sw = carve(&size, n * r);
    size_t p = carve(&size, n * plan->out_size * r);
    size_t z = carve(&size, n * plan->out_size * r);
    size_t z_mask = carve(&size, rows);
    size_t g0 = carve(&size, n * plan->widest * r);
    size_t g1 = carve(&size, n * plan->widest * r);
    size_t sw_rows = carve(&size, rows * r);
    for (size_t l = 0; l < plan->n_layers; l++) {
        FN(plan_layer) *pl = &plan->layers[l];
        size_t out = carve(&size, n * pl->layer.out_size * r);
        size_t saved = carve(&size, FN(saved_bytes)(pl, n));
        size_t work = carve(&size, FN(work_bytes)(pl, n));
        if (base) {
            pl->out = (real *)(base + out);
            pl->saved = base + saved;
            pl->work = base + work;
        }
    }
    if (base) {
        plan->x = base + x;
        plan->labels = (int64_t *)(base + labels);
        plan->t = (real *)(base + t);
        plan->sw = (real *)(base + sw);
        plan->p = (real *)(base + p);
        plan->z = (real *)(base + z);
        plan->z_mask = (unsigned char *)(base + z_mask);
        plan->g2[0] = (real *)(base + g0);
        plan->g2[1] = (real *)(base + g1);
        plan->sw_rows = (real *)(base + sw_rows);
    }
    return size;
}

/* Make the arena hold `n` samples; it only ever grows. */
static int FN(reserve)(plan_t *plan, size_t n)
{
    if (n <= plan->capacity)
        return FUSENN_OK;
    void *arena = fusenn_aligned_alloc(FN(arena_layout)(plan, n, NULL));
    if (arena == NULL)
        return FUSENN_ENOMEM;
    fusenn_aligned_free(plan->arena);
    plan->arena = arena;
    plan->capacity = n;
    FN(arena_layout)(plan, n, arena);
    return FUSENN_OK;
}

/* ---- create / destroy ---------------------------------------------------------------- */

void FN(fusenn_plan_destroy)(plan_t *plan)
{
    if (plan == NULL)
        return;
    fusenn_aligned_free(plan->arena);
    fusenn_aligned_free(plan->g_chunk);
    fusenn_aligned_free(plan->records);
    fusenn_aligned_free(plan->params);
    fusenn_aligned_free(plan->layers);
    fusenn_aligned_free(plan);
}

/* Layer l of the network: its kind, shapes and parameters, checked. */
static int FN(plan_layer_init)(plan_t *plan, const fusenn_network *net, size_t l,
                               const fusenn_shape *in)
{
    FN(plan_layer) *pl = &plan->layers[l];
    const fusenn_layer *desc = &net->layers[l];
    if (desc->kind < 0 || desc->kind >= (int)N_KINDS)
        return FUSENN_EINVAL;
    pl->kind = FN(kinds)[desc->kind];
    pl->desc = *desc;
    FN(layer) *layer = &pl->layer;
    layer->desc = &pl->desc;
    layer->in = *in;
    layer->impl = pl->kind->impl;
    if ((pl->kind->index_input && (l > 0 || !pl->kind->count_bad_input)) ||
        pl->kind->output_shape(desc, in, &layer->out) != FUSENN_OK || !valid_shape(&layer->out))
        return FUSENN_EINVAL;
    layer->in_size = fusenn_shape_size(&layer->in);
    layer->out_size = fusenn_shape_size(&layer->out);
    fusenn_shape shapes[FUSENN_MAX_PARAMS];
    int decayed[FUSENN_MAX_PARAMS] = {0};
    layer->n_params = pl->kind->params ? pl->kind->params(desc, in, shapes, decayed) : 0;
    if (layer->n_params > FUSENN_MAX_PARAMS)
        return FUSENN_EINVAL;
    for (size_t i = 0; i < layer->n_params; i++) {
        const size_t offset = desc->param_offset[i], len = fusenn_shape_size(&shapes[i]);
        if (offset > net->arena_len || len > net->arena_len - offset)
            return FUSENN_EINVAL;
        layer->param[i] = plan->w + offset;
        layer->grad[i] = plan->g + offset;
        plan->params[plan->n_params++] = (param_t){offset, len, decayed[i]};
    }
    return FUSENN_OK;
}

int FN(fusenn_plan_create)(const fusenn_network *net, plan_t **out, size_t *bad_layer)
{
    const size_t L = net->n_layers;
    *out = NULL;
    *bad_layer = L;
    if (L == 0 || !valid_shape(&net->input) || net->params == NULL || net->grads == NULL)
        return FUSENN_EINVAL;
    plan_t *plan = fusenn_aligned_alloc(sizeof *plan);
    if (plan == NULL)
        return FUSENN_ENOMEM;
    memset(plan, 0, sizeof *plan);
    plan->layers = fusenn_aligned_alloc(L * sizeof *plan->layers);
    plan->params = fusenn_aligned_alloc(L * FUSENN_MAX_PARAMS * sizeof *plan->params);
    if (plan->layers == NULL || plan->params == NULL) {
        FN(fusenn_plan_destroy)(plan);
        return FUSENN_ENOMEM;
    }
    memset(plan->layers, 0, L * sizeof *plan->layers);
    plan->n_layers = L;
    plan->w = net->params;
    plan->g = net->grads;
    plan->arena_len = net->arena_len;
    plan->state[0] = net->state[0];
    plan->state[1] = net->state[1];
    plan->loss = net->loss;
    plan->loss_param = net->loss_param;
    plan->fused = net->loss == FUSENN_LOSS_CROSS_ENTROPY ||
                  net->loss == FUSENN_LOSS_BINARY_CROSS_ENTROPY;
    plan->first_trainable = L;
    plan->record_len = REC_STATS;
    fusenn_shape shape = net->input;
    for (size_t l = 0; l < L; l++) {
        const size_t params_before = plan->n_params;
        if (FN(plan_layer_init)(plan, net, l, &shape) != FUSENN_OK) {
            *bad_layer = l;
            FN(fusenn_plan_destroy)(plan);
            return FUSENN_EINVAL;
        }
        FN(plan_layer) *pl = &plan->layers[l];
        const FN(layer) *layer = &pl->layer;
        if (pl->kind->stats_len) {
            pl->stats_at = plan->record_len;
            plan->record_len += pl->kind->stats_len(layer);
        }
        plan->widest = FUSENN_MAX(plan->widest, FUSENN_MAX(layer->in_size, layer->out_size));
        if (plan->n_params > params_before && plan->first_trainable == L)
            plan->first_trainable = l;
        shape = layer->out;
    }
    /* a layer takes over the activation derivative of the layer before where
     * both backward passes run and both kinds can (see layer.h) */
    for (size_t l = plan->first_trainable + 1; l < L; l++) {
        FN(plan_layer) *before = &plan->layers[l - 1], *pl = &plan->layers[l];
        const fusenn_activation act = before->kind->output_activation
                                          ? before->kind->output_activation(&before->layer)
                                          : FUSENN_ACT_IDENTITY;
        if (act != FUSENN_ACT_IDENTITY && pl->kind->takes_input_activation &&
            pl->kind->takes_input_activation(&pl->layer, act)) {
            pl->dx_act = act;
            before->dy_is_dz = 1;
        }
    }
    plan->index_input = plan->layers[0].kind->index_input;
    plan->d_in = fusenn_shape_size(&net->input);
    plan->x_bytes = plan->d_in * (plan->index_input ? sizeof(int64_t) : sizeof(real));
    plan->out_shape = shape;
    plan->out_size = fusenn_shape_size(&shape);
    plan->k = fusenn_shape_last(&shape);
    plan->rows = fusenn_shape_rows(&shape);
    *out = plan;
    return FUSENN_OK;
}

fusenn_shape FN(fusenn_plan_output_shape)(const plan_t *plan) { return plan->out_shape; }

/* ---- the pieces of a step ------------------------------------------------------ */

/* Sample i of X (sample stride ldx, in elements of X's type). */
static inline const void *FN(sample)(const plan_t *plan, const void *X, ptrdiff_t ldx, size_t i)
{
    const size_t elem = plan->index_input ? sizeof(int64_t) : sizeof(real);
    return (const char *)X + (ptrdiff_t)i * ldx * (ptrdiff_t)elem;
}

/* Forward through every layer, in training mode (batch statistics, dropout
 * masks) or inference mode. The last layer writes to `last` (sample stride
 * ld_last; NULL: its own buffer) and stops at the logits when `logits` is
 * set; its result is plan->layers[L-1].res. A training pass records batch
 * statistics into `record` (a chunk's, REC_*) for FN(fold_record). */
static int FN(forward)(plan_t *plan, size_t n, size_t row0, const void *X, ptrdiff_t ldx,
                       int training, int logits, real *last, ptrdiff_t ld_last, double *record,
                       int nthreads)
{
    const void *in = X;
    ptrdiff_t ld_in = ldx;
    const unsigned char *mask = NULL;
    size_t steps = 0; /* the mask's time steps */
    for (size_t l = 0; l < plan->n_layers; l++) {
        FN(plan_layer) *pl = &plan->layers[l];
        const int is_last = l + 1 == plan->n_layers;
        FN(forward_args) a = {
            .n = n, .row0 = row0, .x = in, .ldx = ld_in,
            .y = is_last && last ? last : pl->out,
            .ldy = is_last && last ? ld_last : (ptrdiff_t)pl->layer.out_size,
            .saved = pl->saved, .work = pl->work, .mask = mask,
            .stats = training && pl->kind->stats_len ? record + pl->stats_at : NULL,
            .training = training, .logits = is_last && logits, .nthreads = nthreads};
        pl->in = in;
        pl->ld_in = ld_in;
        pl->mask = mask;
        const int rc = pl->kind->forward(&pl->layer, &a);
        if (rc != FUSENN_OK)
            return rc;
        pl->res = a.result;
        pl->ld_res = a.ld_result;
        in = a.result;
        ld_in = a.ld_result;
        if (a.mask != mask) /* a new mask, over the steps of this layer's input */
            steps = pl->layer.in.dim[0];
        const fusenn_shape *out = &pl->layer.out;
        mask = a.mask && out->rank >= 2 && out->dim[0] == steps ? a.mask : NULL;
    }
    plan->out_mask = mask;
    return FUSENN_OK;
}

/* Loss of the last layer's output z (rows of k, row stride ldz) against the
 * targets, rows weighted by sw (NULL: unweighted); dZ (may be NULL) gets
 * dL/dz. *correct counts correct predictions, of the rows mask marks real
 * (NULL: all). */
static double FN(loss)(plan_t *plan, size_t rows, const real *z, ptrdiff_t ldz,
                       const int64_t *labels, const real *T, ptrdiff_t ldt, const real *sw,
                       const unsigned char *mask, real *dz, double *correct, int nthreads)
{
    const size_t k = plan->k;
    const ptrdiff_t ldk = (ptrdiff_t)k;
    double loss = 0;
    size_t hits = 0;
    switch (plan->loss) {
    case FUSENN_LOSS_CROSS_ENTROPY:
        loss = FN(fusenn_softmax_cross_entropy)(rows, k, z, ldz, labels, sw, plan->p, ldk, dz,
                                                ldk, nthreads);
        for (size_t i = 0; i < rows; i++) { /* argmax, first of ties (as NumPy) */
            const real *p = plan->p + i * k;
            size_t best = 0;
            for (size_t j = 1; j < k; j++)
                best = p[j] > p[best] ? j : best;
            hits += (int64_t)best == labels[i] && (!mask || mask[i]);
        }
        break;
    case FUSENN_LOSS_BINARY_CROSS_ENTROPY:
        loss = FN(fusenn_sigmoid_binary_cross_entropy)(rows, k, z, ldz, T, ldt, sw, plan->p, ldk,
                                                       dz, ldk, nthreads);
        for (size_t i = 0; i < rows; i++)
            for (size_t j = 0; j < k && (!mask || mask[i]); j++)
                hits += (plan->p[i * k + j] > (real)0.5) == (T[(ptrdiff_t)i * ldt + j] > (real)0.5);
        break;
    case FUSENN_LOSS_MAE:
        loss = FN(fusenn_mae)(rows, k, z, ldz, T, ldt, sw, dz, ldk, nthreads);
        break;
    case FUSENN_LOSS_HUBER:
        loss = FN(fusenn_huber)(rows, k, z, ldz, T, ldt, plan->loss_param, sw, dz, ldk, nthreads);
        break;
    case FUSENN_LOSS_POISSON:
        loss = FN(fusenn_poisson)(rows, k, z, ldz, T, ldt, sw, dz, ldk, nthreads);
        break;
    case FUSENN_LOSS_MSE:
    default:
        loss = FN(fusenn_mse)(rows, k, z, ldz, T, ldt, sw, dz, ldk, nthreads);
        break;
    }
    *correct = (double)hits;
    return loss;
}

/* The loss of n samples' outputs z (sample stride ldz; a sample of several rows
 * is contiguous): their rows as the loss reads them. Sample weights are
 * repeated for each of a sample's rows (into plan->sw_rows, which may hold sw). */
static double FN(batch_loss)(plan_t *plan, size_t n, const real *z, ptrdiff_t ldz,
                             const int64_t *labels, const real *T, ptrdiff_t ldt, const real *sw,
                             const unsigned char *mask, real *dz, double *correct, int nthreads)
{
    const size_t r = plan->rows;
    real *rows_sw = plan->sw_rows;
    if (mask) { /* masked steps weigh 0, the others rows / valid (Keras): a mean over valid steps */
        size_t valid = 0;
        for (size_t i = 0; i < n * r; i++)
            valid += mask[i] != 0;
        const double scale = valid ? (double)(n * r) / (double)valid : 0;
        for (size_t i = n; i-- > 0;) /* backwards: sw may be the first n of rows_sw */
            for (size_t j = r; j-- > 0;)
                rows_sw[i * r + j] = mask[i * r + j] ? (real)((sw ? sw[i] : 1) * scale) : 0;
        sw = rows_sw;
    } else if (r > 1 && sw) {
        for (size_t i = n; i-- > 0;) /* backwards: sw may be the first n of rows_sw */
            for (size_t j = r; j-- > 0;)
                rows_sw[i * r + j] = sw[i];
        sw = rows_sw;
    }
    const ptrdiff_t k = (ptrdiff_t)plan->k;
    return FN(loss)(plan, n * r, z, r > 1 ? k : ldz, labels, T, r > 1 ? k : ldt, sw, mask, dz,
                    correct, nthreads);
}

/* Zero the optimizer state and its step count: after a diverging step the
 * state holds the diverging gradients. */
static void FN(reset_optimizer)(plan_t *plan, fusenn_optimizer *opt)
{
    for (size_t p = 0; p < plan->n_params; p++)
        for (int s = 0; s < 2; s++)
            if (plan->state[s])
                memset(plan->state[s] + plan->params[p].offset, 0,
                       plan->params[p].len * sizeof(real));
    opt->steps = 0;
}

/* Update one parameter tensor; the old values go to its gradient array.
 * weight_decay is the optimizer's for decayed tensors, 0 for the others. */
static size_t FN(update)(const plan_t *plan, const fusenn_optimizer *opt, const param_t *p,
                         double weight_decay, int nthreads)
{
    real *w = plan->w + p->offset, *g = plan->g + p->offset;
    real *s0 = plan->state[0] ? plan->state[0] + p->offset : NULL;
    real *s1 = plan->state[1] ? plan->state[1] + p->offset : NULL;
    switch (opt->kind) {
    case FUSENN_OPT_ADAM:
        return FN(fusenn_adam_update)(p->len, w, g, s0, s1, opt->lr, opt->beta1, opt->beta2,
                                      opt->eps, weight_decay, opt->steps, g, nthreads);
    case FUSENN_OPT_RMSPROP:
        return FN(fusenn_rmsprop_update)(p->len, w, g, s0, opt->lr, opt->rho, opt->eps, g,
                                         nthreads);
    case FUSENN_OPT_ADAGRAD:
        return FN(fusenn_adagrad_update)(p->len, w, g, s0, opt->lr, opt->eps, g, nthreads);
    case FUSENN_OPT_SGD:
    default:
        return FN(fusenn_sgd_update)(p->len, w, g, s0, opt->lr, opt->momentum, opt->nesterov, g,
                                     nthreads);
    }
}

/* Norm clipping's factor c / max(norm, c) (1 when the norm is NaN). */
static double clip_scale(double sum_squares, double c)
{
    const double norm = sqrt(sum_squares);
    return norm > c ? c / norm : 1.0;
}

/* Preprocess every gradient as fusenn/optimizers.py does (same kernels, same
 * order, so the same bits): the L2 penalty on decayed tensors, then norm
 * clipping (per tensor or global), then value clipping. */
static void FN(transform_gradients)(plan_t *plan, const fusenn_optimizer *opt, int nthreads)
{
    const double clipvalue = opt->clipvalue > 0 ? opt->clipvalue : 0;
    const int per_param = opt->clipnorm > 0, global = !per_param && opt->global_clipnorm > 0;
    if (!per_param && !global) { /* one pass: l2 and value clipping together */
        for (size_t i = 0; i < plan->n_params; i++) {
            const param_t *p = &plan->params[i];
            const double l2 = p->decayed ? opt->l2 : 0;
            if (l2 > 0 || clipvalue > 0)
                FN(fusenn_grad_transform)(p->len, plan->g + p->offset,
                                          l2 > 0 ? plan->w + p->offset : NULL, l2, 1.0,
                                          clipvalue, nthreads);
        }
        return;
    }
    if (opt->l2 > 0) /* the norm is that of the penalised gradient */
        for (size_t i = 0; i < plan->n_params; i++) {
            const param_t *p = &plan->params[i];
            if (p->decayed)
                FN(fusenn_grad_transform)(p->len, plan->g + p->offset, plan->w + p->offset,
                                          opt->l2, 1.0, 0, nthreads);
        }
    double scale = 1.0;
    if (global) {
        double total = 0;
        for (size_t i = 0; i < plan->n_params; i++)
            total += FN(fusenn_sum_squares)(plan->params[i].len, plan->g + plan->params[i].offset,
                                            nthreads);
        scale = clip_scale(total, opt->global_clipnorm);
    }
    for (size_t i = 0; i < plan->n_params; i++) {
        const param_t *p = &plan->params[i];
        real *g = plan->g + p->offset;
        if (per_param)
            scale = clip_scale(FN(fusenn_sum_squares)(p->len, g, nthreads), opt->clipnorm);
        if (scale != 1.0 || clipvalue > 0)
            FN(fusenn_grad_transform)(p->len, g, NULL, 0, scale, clipvalue, nthreads);
    }
}

/* Advance the step counters of the layers that draw random masks (Dropout):
 * once per training step, however many chunks its batch takes. */
static void FN(advance_counters)(plan_t *plan)
{
    for (size_t l = 0; l < plan->n_layers; l++)
        if (plan->layers[l].desc.counter)
            ++*plan->layers[l].desc.counter;
}

/* Point every layer's parameter gradients into the arena g (the caller's, or
 * the chunk buffer). */
static void FN(grads_into)(plan_t *plan, real *g)
{
    for (size_t l = 0, p = 0; l < plan->n_layers; l++) {
        FN(layer) *layer = &plan->layers[l].layer;
        for (size_t i = 0; i < layer->n_params; i++, p++)
            layer->grad[i] = g + plan->params[p].offset;
    }
}

/* Forward, loss and backward of `rows` rows of a batch of n samples, the first
 * being row r0 of the batch (X, labels, T and sw point at it), the parameter
 * gradients into the arena the layers point at. A chunk of the batch (rows <
 * n) weighs its rows by their share of the batch, rows / n, so that the
 * chunks' losses and gradients add up to the batch's. The chunk's loss,
 * correct predictions and batch statistics go to its record.
 * FUSENN_EDIVERGED: the loss is not finite (no gradient taken). */
static int FN(chunk_gradients)(plan_t *plan, size_t n, size_t r0, size_t rows, const void *X,
                               ptrdiff_t ldx, const int64_t *labels, const real *T,
                               ptrdiff_t ldt, const real *sw, double *record, int nthreads)
{
    const size_t L = plan->n_layers;
    int rc = FN(forward)(plan, rows, r0, X, ldx, 1, plan->fused, NULL, 0, record, nthreads);
    if (rc != FUSENN_OK)
        return rc;
    if (rows < n) { /* the chunk's share of the batch */
        const double share = (double)rows / (double)n;
        for (size_t i = 0; i < rows; i++)
            plan->sw_rows[i] = (real)((sw ? (double)sw[i] : 1.0) * share);
        sw = plan->sw_rows;
    }
    int cur = 0; /* plan->g2[cur] holds dL/d(output of the layer being differentiated) */
    const FN(plan_layer) *last = &plan->layers[L - 1];
    const double loss = FN(batch_loss)(plan, rows, last->res, last->ld_res, labels, T, ldt, sw,
                                       plan->out_mask, plan->g2[cur], &record[REC_CORRECT],
                                       nthreads);
    record[REC_LOSS] = loss;
    if (!isfinite(loss))
        return FUSENN_EDIVERGED;

    for (size_t l = L; l-- > plan->first_trainable;) {
        FN(plan_layer) *pl = &plan->layers[l];
        FN(backward_args) a = {
            .n = rows, .x = pl->in, .ldx = pl->ld_in, .y = pl->res, .ldy = pl->ld_res,
            .dy = plan->g2[cur], .dx = l > plan->first_trainable ? plan->g2[1 - cur] : NULL,
            .saved = pl->saved, .work = pl->work, .mask = pl->mask,
            .logits = l + 1 == L && plan->fused, .nthreads = nthreads,
            .dx_act = pl->dx_act, .dy_is_dz = pl->dy_is_dz};
        rc = pl->kind->backward(&pl->layer, &a);
        if (rc != FUSENN_OK)
            return rc;
        if (a.result == plan->g2[1 - cur])
            cur = 1 - cur;
    }
    return FUSENN_OK;
}

/* The added-up gradients in plan->g: one optimizer step, undone exactly when
 * an updated weight is not finite (FUSENN_EDIVERGED). */
static int FN(apply_gradients)(plan_t *plan, fusenn_optimizer *opt, int nthreads)
{
    opt->steps++;
    FN(transform_gradients)(plan, opt, nthreads);
    size_t bad = 0;
    for (size_t i = 0; i < plan->n_params; i++) {
        const param_t *p = &plan->params[i];
        bad += FN(update)(plan, opt, p, p->decayed ? opt->weight_decay : 0, nthreads);
    }
    if (bad) { /* undo: the gradient arena holds the weights from before the step */
        for (size_t i = 0; i < plan->n_params; i++)
            memcpy(plan->w + plan->params[i].offset, plan->g + plan->params[i].offset,
                   plan->params[i].len * sizeof(real));
        return FUSENN_EDIVERGED;
    }
    return FUSENN_OK;
}

/* g += h over every parameter tensor. */
typedef struct {
    real *g;
    const real *h;
} FN(add_args);

static size_t FN(add_range)(const void *ctx, size_t begin, size_t end)
{
    const FN(add_args) *p = ctx;
    for (size_t i = begin; i < end; i++)
        p->g[i] += p->h[i];
    return 0;
}

static void FN(add_gradients)(plan_t *plan, real *g, const real *h, int nthreads)
{
    for (size_t i = 0; i < plan->n_params; i++) {
        const param_t *p = &plan->params[i];
        fusenn_parallel_ranges(fusenn_threads_for(p->len, nthreads), p->len, FN(add_range),
                               &(FN(add_args)){g + p->offset, h + p->offset});
    }
}

/* Chunks [c0, c1) of a batch of n samples cut into `chunks` (fusenn_chunk_start),
 * X, labels, T and sw holding the batch's rows from the first of chunk c0 on:
 * each chunk's gradient goes to grads[c - c0] (NULL: every chunk's to plan->g),
 * added in order to the gradients there when the chunk before went to the same
 * arena: (((g_0 + g_1) + g_2) + ...). Each chunk's record goes to
 * records[(c - c0) record_len ...]; empty chunks and those after a failed one
 * get a zero record (FUSENN_OK, loss 0). Returns the first failure. */
static int FN(chunks_gradients)(plan_t *plan, size_t n, size_t chunks, size_t c0, size_t c1,
                                const void *X, ptrdiff_t ldx, const int64_t *labels,
                                const real *T, ptrdiff_t ldt, const real *sw,
                                real *const *grads, double *records, int nthreads)
{
    const size_t len = plan->record_len, first = fusenn_chunk_start(c0, chunks, n);
    memset(records, 0, (c1 - c0) * len * sizeof(double));
    const real *previous = NULL; /* where the last nonempty chunk's gradient went */
    int rc = FUSENN_OK;
    for (size_t c = c0; c < c1 && rc == FUSENN_OK; c++) {
        const size_t r0 = fusenn_chunk_start(c, chunks, n), r1 = fusenn_chunk_start(c + 1, chunks, n);
        if (r0 == r1)
            continue;
        real *to = grads ? grads[c - c0] : plan->g;
        const int add = to == previous;
        if (add && plan->g_chunk == NULL) {
            plan->g_chunk = fusenn_aligned_alloc(FUSENN_MAX(plan->arena_len, (size_t)1) *
                                                 sizeof(real));
            if (plan->g_chunk == NULL)
                rc = FUSENN_ENOMEM;
        }
        const size_t i = r0 - first; /* the chunk's first row in X */
        double *record = records + (c - c0) * len;
        if (rc == FUSENN_OK) {
            FN(grads_into)(plan, add ? plan->g_chunk : to);
            rc = FN(chunk_gradients)(plan, n, r0, r1 - r0, FN(sample)(plan, X, ldx, i), ldx,
                                     labels ? labels + i * plan->rows : NULL,
                                     T ? T + (ptrdiff_t)i * ldt : NULL, ldt, sw ? sw + i : NULL,
                                     record, nthreads);
        }
        if (rc == FUSENN_OK && add)
            FN(add_gradients)(plan, to, plan->g_chunk, nthreads);
        record[REC_RC] = rc;
        previous = to;
    }
    FN(grads_into)(plan, plan->g);
    return rc;
}

/* Apply a chunk's recorded batch statistics to the running ones. */
static void FN(fold_record)(plan_t *plan, const double *record)
{
    for (size_t l = 0; l < plan->n_layers; l++) {
        const FN(plan_layer) *pl = &plan->layers[l];
        if (pl->kind->fold_stats)
            pl->kind->fold_stats(&pl->layer, record + pl->stats_at);
    }
}

/* The end of a step whose gradient is in plan->g and whose chunks' records
 * are in `records` (all `chunks` of them): in chunk order up to a failed
 * chunk, the records' statistics folded into the running ones and their losses
 * and correct predictions added up; the step counters advanced; then the
 * update, unless a chunk failed or the loss is not finite. */
static int FN(finish_step)(plan_t *plan, size_t n, size_t chunks, const double *records,
                           fusenn_optimizer *opt, double *loss, double *correct, int nthreads)
{
    *loss = *correct = 0;
    int rc = FUSENN_OK;
    for (size_t c = 0; c < chunks && rc == FUSENN_OK; c++) {
        if (fusenn_chunk_start(c, chunks, n) == fusenn_chunk_start(c + 1, chunks, n))
            continue;
        const double *record = records + c * plan->record_len;
        rc = (int)record[REC_RC];
        if (rc == FUSENN_OK || rc == FUSENN_EDIVERGED) /* its forward pass ran */
            FN(fold_record)(plan, record);
        *loss += record[REC_LOSS];
        *correct += record[REC_CORRECT];
    }
    FN(advance_counters)(plan); /* also after a failed step, as the op-by-op path */
    if (rc == FUSENN_OK && !isfinite(*loss))
        rc = FUSENN_EDIVERGED;
    return rc == FUSENN_OK ? FN(apply_gradients)(plan, opt, nthreads) : rc;
}

/* Room for the records of a step of `chunks` chunks; it only ever grows. */
static int FN(reserve_records)(plan_t *plan, size_t chunks)
{
    if (chunks <= plan->records_cap)
        return FUSENN_OK;
    double *records = fusenn_aligned_alloc(chunks * plan->record_len * sizeof(double));
    if (records == NULL)
        return FUSENN_ENOMEM;
    fusenn_aligned_free(plan->records);
    plan->records = records;
    plan->records_cap = chunks;
    return FUSENN_OK;
}

/* One step on a batch of n samples X (sample stride ldx), its gradient the
 * sum over `chunks` chunks of rows (fusenn_chunk_start), each chunk's added in
 * order: (((g_0 + g_1) + g_2) + ...), the way ranks add theirs (distributed).
 * One chunk is the plain step. Empty chunks add nothing. */
static int FN(step)(plan_t *plan, size_t n, const void *X, ptrdiff_t ldx,
                    const int64_t *labels, const real *T, ptrdiff_t ldt, const real *sw,
                    size_t chunks, fusenn_optimizer *opt, double *loss, double *correct,
                    int nthreads)
{
    chunks = FUSENN_MAX(chunks, (size_t)1);
    const int rc = FN(reserve_records)(plan, chunks);
    if (rc != FUSENN_OK)
        return rc;
    FN(chunks_gradients)(plan, n, chunks, 0, chunks, X, ldx, labels, T, ldt, sw, NULL,
                         plan->records, nthreads);
    return FN(finish_step)(plan, n, chunks, plan->records, opt, loss, correct, nthreads);
}

/* ---- public entry points --------------------------------------------------------- */

/* FUSENN_OK if a batch can be trained on, else FUSENN_EBADINPUT: X or T not
 * finite, a label outside [0, k), a binary cross-entropy target outside [0, 1].
 * (fit checks its whole data set once in Python instead.) */
static int FN(check_batch)(const plan_t *plan, size_t n, const void *X, ptrdiff_t ldx,
                           const int64_t *labels, const real *T, ptrdiff_t ldt, int nthreads)
{
    const size_t k = plan->k, rows = n * plan->rows;
    const FN(plan_layer) *first = &plan->layers[0];
    if (plan->index_input ? first->kind->count_bad_input(&first->layer, n, X, ldx)
                          : FN(fusenn_count_nonfinite)(n, plan->d_in, X, ldx, nthreads))
        return FUSENN_EBADINPUT;
    if (plan->rows > 1)
        ldt = (ptrdiff_t)k; /* samples of several rows are contiguous */
    if (plan->loss == FUSENN_LOSS_CROSS_ENTROPY) {
        if (fusenn_first_label_out_of_range(rows, labels, (int64_t)k) < rows)
            return FUSENN_EBADINPUT;
    } else if (FN(fusenn_count_nonfinite)(rows, k, T, ldt, nthreads)) {
        return FUSENN_EBADINPUT;
    } else if (plan->loss == FUSENN_LOSS_BINARY_CROSS_ENTROPY) {
        for (size_t i = 0; i < rows; i++)
            for (size_t j = 0; j < k; j++)
                if (!(T[(ptrdiff_t)i * ldt + j] >= 0 && T[(ptrdiff_t)i * ldt + j] <= 1))
                    return FUSENN_EBADINPUT;
    }
    return FUSENN_OK;
}

/* Samples of several rows are read as rows: they must be contiguous. */
static int FN(samples_fit)(const plan_t *plan, ptrdiff_t ldx)
{
    const FN(layer) *first = &plan->layers[0].layer;
    return fusenn_shape_rows(&first->in) == 1 || ldx == (ptrdiff_t)plan->d_in;
}

int FN(fusenn_plan_train_batch)(plan_t *plan, size_t n, const void *X, ptrdiff_t ldx,
                                const int64_t *labels, const real *T, ptrdiff_t ldt,
                                const real *sw, size_t chunks, fusenn_optimizer *opt,
                                double *loss, double *correct, int nthreads)
{
    if (!FN(samples_fit)(plan, ldx))
        return FUSENN_EINVAL;
    int rc = FN(check_batch)(plan, n, X, ldx, labels, T, ldt, nthreads);
    if (rc == FUSENN_OK)
        rc = FN(reserve)(plan, n);
    if (rc != FUSENN_OK)
        return rc;
    rc = FN(step)(plan, n, X, ldx, labels, T, ldt, sw, chunks, opt, loss, correct, nthreads);
    if (rc == FUSENN_EDIVERGED)
        FN(reset_optimizer)(plan, opt);
    return rc;
}

/* A gather's source samples; the destination is the plan's arena. */
typedef struct {
    const plan_t *plan;
    const int64_t *order, *labels;
    const void *X;
    const real *T, *sw;
    ptrdiff_t ldx, ldt;
} FN(gather_args);

static size_t FN(gather_samples)(const void *ctx, size_t begin, size_t end)
{
    const FN(gather_args) *p = ctx;
    const plan_t *plan = p->plan;
    const size_t out_size = plan->out_size, r = plan->rows;
    for (size_t i = begin; i < end; i++) {
        const size_t row = (size_t)p->order[i];
        memcpy(plan->x + i * plan->x_bytes, FN(sample)(plan, p->X, p->ldx, row), plan->x_bytes);
        if (p->labels)
            memcpy(plan->labels + i * r, p->labels + row * r, r * sizeof(int64_t));
        else
            memcpy(plan->t + i * out_size, p->T + (ptrdiff_t)row * p->ldt,
                   out_size * sizeof(real));
        if (p->sw)
            plan->sw[i] = p->sw[row];
    }
    return 0;
}

/* Copy the samples order[0..n) of X (and their targets and weights) into the arena. */
static void FN(gather)(plan_t *plan, size_t n, const int64_t *order, const void *X,
                       ptrdiff_t ldx, const int64_t *labels, const real *T, ptrdiff_t ldt,
                       const real *sw, int nthreads)
{
    const FN(gather_args) args = {plan, order, labels, X, T, sw, ldx, ldt};
    fusenn_parallel_ranges(fusenn_threads_for(n * plan->d_in, nthreads), n,
                           FN(gather_samples), &args);
}

int FN(fusenn_plan_train_epoch)(plan_t *plan, size_t n, const void *X, ptrdiff_t ldx,
                                const int64_t *labels, const real *T, ptrdiff_t ldt,
                                const real *sw, const int64_t *order, size_t batch_size,
                                size_t chunks, size_t first_batch, size_t n_batches,
                                fusenn_optimizer *opt, double *loss, double *loss_sum,
                                double *correct_sum, size_t *done, int interruptible,
                                int nthreads)
{
    *done = 0;
    if (batch_size == 0)
        return FUSENN_OK;
    if (plan->rows > 1)
        ldt = (ptrdiff_t)plan->out_size;
    int rc = FN(reserve)(plan, FUSENN_MIN(batch_size, n));
    for (size_t b = first_batch; rc == FUSENN_OK && b < first_batch + n_batches; b++) {
        const size_t start = b * batch_size;
        if (start >= n)
            break;
        if (interruptible && fusenn_interrupt_pending())
            return FUSENN_EINTERRUPTED;
        const size_t rows = FUSENN_MIN(batch_size, n - start);
        FN(gather)(plan, rows, order + start, X, ldx, labels, T, ldt, sw, nthreads);
        double correct = 0;
        rc = FN(step)(plan, rows, plan->x, (ptrdiff_t)plan->d_in, labels ? plan->labels : NULL,
                      plan->t, (ptrdiff_t)plan->out_size, sw ? plan->sw : NULL, chunks, opt, loss,
                      &correct, nthreads);
        if (rc == FUSENN_OK) {
            *loss_sum += *loss * (double)rows;
            *correct_sum += correct;
            ++*done;
        }
    }
    if (rc == FUSENN_EDIVERGED)
        FN(reset_optimizer)(plan, opt);
    return rc;
}

size_t FN(fusenn_plan_record_len)(const plan_t *plan) { return plan->record_len; }

int FN(fusenn_plan_chunk_gradients)(plan_t *plan, const void *X, ptrdiff_t ldx,
                                    const int64_t *labels, const real *T, ptrdiff_t ldt,
                                    const real *sw, const int64_t *batch, size_t n,
                                    size_t chunks, size_t c0, size_t c1, real *const *grads,
                                    double *records, int nthreads)
{
    if (chunks == 0 || c0 > c1 || c1 > chunks)
        return FUSENN_EINVAL;
    if (plan->rows > 1)
        ldt = (ptrdiff_t)plan->out_size;
    const size_t first = fusenn_chunk_start(c0, chunks, n);
    const size_t rows = fusenn_chunk_start(c1, chunks, n) - first;
    const int rc = FN(reserve)(plan, FUSENN_MAX(rows, (size_t)1));
    if (rc != FUSENN_OK) { /* every record says so: the ranks agree the step failed */
        memset(records, 0, (c1 - c0) * plan->record_len * sizeof(double));
        for (size_t c = c0; c < c1; c++)
            records[(c - c0) * plan->record_len + REC_RC] = rc;
        return rc;
    }
    FN(gather)(plan, rows, batch + first, X, ldx, labels, T, ldt, sw, nthreads);
    return FN(chunks_gradients)(plan, n, chunks, c0, c1, plan->x, (ptrdiff_t)plan->d_in,
                                labels ? plan->labels : NULL, plan->t,
                                (ptrdiff_t)plan->out_size, sw ? plan->sw : NULL, grads, records,
                                nthreads);
}

int FN(fusenn_plan_apply_step)(plan_t *plan, size_t n, size_t chunks, const double *records,
                               fusenn_optimizer *opt, double *loss, double *correct,
                               int nthreads)
{
    if (chunks == 0)
        return FUSENN_EINVAL;
    const int rc = FN(finish_step)(plan, n, chunks, records, opt, loss, correct, nthreads);
    if (rc == FUSENN_EDIVERGED)
        FN(reset_optimizer)(plan, opt);
    return rc;
}

/* Seconds on a monotonic clock. */
static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* The outputs of samples [0, n) of X into out (sample stride ldo), in
 * inference mode, stopping at the logits when `logits` is set. Forward passes
 * take PLAN_CHUNK_ROWS samples; an interruptible call takes fewer, about 10 ms
 * of work each, and polls for Ctrl-C between them (the bits of each output do
 * not depend on how samples are grouped). It starts with 16 and then sizes each
 * part from the last one's time: doubling from 16 cut a 1024-row call into
 * seven small forward passes, each packing the weights again. */
static int FN(infer)(plan_t *plan, size_t n, const void *X, ptrdiff_t ldx, int logits, real *out,
                     ptrdiff_t ldo, unsigned char *out_mask, int interruptible, int nthreads)
{
    const FN(plan_layer) *last = &plan->layers[plan->n_layers - 1];
    const size_t bytes = plan->out_size * sizeof(real);
    size_t part = interruptible ? FUSENN_MIN((size_t)16, (size_t)PLAN_CHUNK_ROWS)
                                : PLAN_CHUNK_ROWS;
    for (size_t start = 0; start < n;) {
        if (interruptible && fusenn_interrupt_pending())
            return FUSENN_EINTERRUPTED;
        const size_t rows = FUSENN_MIN(part, n - start);
        real *to = out + (ptrdiff_t)start * ldo;
        const double t0 = interruptible ? now() : 0;
        int rc = FN(forward)(plan, rows, 0, FN(sample)(plan, X, ldx, start), ldx, 0, logits, to,
                             ldo, NULL, nthreads);
        if (rc != FUSENN_OK)
            return rc;
        if (last->res != to) /* the last layer passed its input through */
            for (size_t i = 0; i < rows; i++)
                memcpy(to + (ptrdiff_t)i * ldo, last->res + (ptrdiff_t)i * last->ld_res, bytes);
        if (out_mask && plan->out_mask) /* the part's mask, before the next part's */
            memcpy(out_mask + start * plan->rows, plan->out_mask, rows * plan->rows);
        start += rows;
        if (interruptible) { /* the next part: about 10 ms at this part's pace */
            const double took = now() - t0;
            const double fit = took > 0 ? (double)rows * 10e-3 / took : (double)PLAN_CHUNK_ROWS;
            part = (size_t)FUSENN_MAX(1.0, FUSENN_MIN(fit, (double)PLAN_CHUNK_ROWS));
        }
    }
    return FUSENN_OK;
}

int FN(fusenn_plan_predict)(plan_t *plan, size_t n, const void *X, ptrdiff_t ldx,
                            real *out, ptrdiff_t ldo, int interruptible, int nthreads)
{
    if (!FN(samples_fit)(plan, ldx))
        return FUSENN_EINVAL;
    const FN(plan_layer) *first = &plan->layers[0];
    if (plan->index_input ? first->kind->count_bad_input(&first->layer, n, X, ldx)
                          : FN(fusenn_count_nonfinite)(n, plan->d_in, X, ldx, nthreads))
        return FUSENN_EBADINPUT;
    int rc = FN(reserve)(plan, FUSENN_MIN(n, (size_t)PLAN_CHUNK_ROWS));
    if (rc == FUSENN_OK)
        rc = FN(infer)(plan, n, X, ldx, 0, out, ldo, NULL, interruptible, nthreads);
    if (rc == FUSENN_OK && FN(fusenn_count_nonfinite)(n, plan->out_size, out, ldo, nthreads))
        return FUSENN_EDIVERGED;
    return rc;
}

int FN(fusenn_plan_evaluate)(plan_t *plan, size_t n, const void *X, ptrdiff_t ldx,
                             const int64_t *labels, const real *T, ptrdiff_t ldt,
                             const real *sw, double *loss_sum, double *correct_sum,
                             int interruptible, int nthreads)
{
    if (!FN(samples_fit)(plan, ldx))
        return FUSENN_EINVAL;
    if (plan->rows > 1)
        ldt = (ptrdiff_t)plan->out_size;
    const ptrdiff_t ldz = (ptrdiff_t)plan->out_size;
    int rc = FN(reserve)(plan, FUSENN_MIN(n, (size_t)PLAN_CHUNK_ROWS));
    /* the loss sums over chunks of PLAN_CHUNK_ROWS samples, whatever the forward parts */
    for (size_t start = 0; rc == FUSENN_OK && start < n; start += PLAN_CHUNK_ROWS) {
        const size_t rows = FUSENN_MIN((size_t)PLAN_CHUNK_ROWS, n - start);
        rc = FN(infer)(plan, rows, FN(sample)(plan, X, ldx, start), ldx, plan->fused, plan->z,
                       ldz, plan->z_mask, interruptible, nthreads);
        if (rc != FUSENN_OK)
            break;
        double correct = 0;
        double loss = FN(batch_loss)(plan, rows, plan->z, ldz,
                                     labels ? labels + start * plan->rows : NULL,
                                     T ? T + (ptrdiff_t)start * ldt : NULL, ldt,
                                     sw ? sw + start : NULL, plan->out_mask ? plan->z_mask : NULL,
                                     NULL, &correct, nthreads);
        *loss_sum += loss * (double)rows;
        *correct_sum += correct;
    }
    return rc;
}
