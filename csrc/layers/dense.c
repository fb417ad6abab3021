/*
 * dense.c - the fully connected layer Y = act(X W + b) and its backward pass.
 * X is n x d_in (a batch of rows), W is d_in x d_out (fan_in x units, as
 * Keras), b has d_out entries. On a sample of several rows (a sequence T x F)
 * it acts on each row, as Keras's Dense acts on the last axis.
 */
#include "../layer.h"

int FN(fusenn_dense_forward)(size_t n, size_t d_in, size_t d_out,
                             const real *X, ptrdiff_t rs_x, ptrdiff_t cs_x,
                             const real *W, ptrdiff_t rs_w, ptrdiff_t cs_w,
                             const real *b, fusenn_activation act,
                             real *Y, ptrdiff_t ldy, int nthreads)
{
    /* Bias and elementwise activations are applied in GEMM's tile store;
     * softmax needs complete rows, so it gets its own pass. */
    fusenn_activation in_store = act == FUSENN_ACT_SOFTMAX ? FUSENN_ACT_IDENTITY : act;
    int rc = FN(fusenn_gemm_fused)(n, d_out, d_in, 1, X, rs_x, cs_x, W, rs_w, cs_w, 0,
                                   Y, ldy, 1, b, in_store, nthreads);
    if (rc == FUSENN_OK && act == FUSENN_ACT_SOFTMAX)
        FN(fusenn_activation_forward)(act, n, d_out, Y, ldy, Y, ldy, nthreads);
    return rc;
}

/* Columns per block in the dZ/db pass: a fixed partition, so each db[j] is
 * summed over rows in order by one thread whatever the thread count. */
#define DB_BLOCK 64

/* The dZ/db pass's arguments. */
typedef struct {
    size_t n, d_out;
    const real *Y, *dY;
    ptrdiff_t ldy, lddy;
    fusenn_activation act;
    real *dZ, *db;
} FN(dz_db_args);

/* Column blocks [begin, end) of the dZ/db pass. */
static size_t FN(dz_db_blocks)(const void *ctx, size_t begin, size_t end)
{
    const FN(dz_db_args) *p = ctx;
    const size_t n = p->n, d_out = p->d_out;
    const real *Y = p->Y, *dY = p->dY;
    const ptrdiff_t ldy = p->ldy, lddy = p->lddy;
    const fusenn_activation act = p->act;
    real *dZ = p->dZ, *db = p->db;
    for (size_t blk = begin; blk < end; blk++) {
        const size_t j0 = blk * DB_BLOCK, w = FUSENN_MIN((size_t)DB_BLOCK, d_out - j0);
        double sum[DB_BLOCK] = {0}; /* double: batch sums of many small terms */
        for (size_t i = 0; i < n; i++) {
            real *dz = dZ + i * d_out + j0;
            if (act != FUSENN_ACT_SOFTMAX)
                FN(activate_backward_row)(act, w, NULL, Y + (ptrdiff_t)i * ldy + j0,
                                          dY + (ptrdiff_t)i * lddy + j0, dz);
            for (size_t j = 0; j < w; j++)
                sum[j] += dz[j];
        }
        for (size_t j = 0; j < w; j++)
            db[j0 + j] = (real)sum[j];
    }
    return 0;
}

/* dZ = dY * act'(Y) and db = sum_i dZ[i, :], in one pass over dY. */
static void FN(dz_and_bias_grad)(size_t n, size_t d_out, const real *Y, ptrdiff_t ldy,
                                 const real *dY, ptrdiff_t lddy, fusenn_activation act,
                                 real *dZ, real *db, int nthreads)
{
    if (act == FUSENN_ACT_SOFTMAX) /* needs whole rows: its own pass, then the sums */
        FN(fusenn_activation_backward)(act, n, d_out, NULL, 0, Y, ldy, dY, lddy, dZ,
                                       (ptrdiff_t)d_out, nthreads);
    const size_t n_blocks = (d_out + DB_BLOCK - 1) / DB_BLOCK;
    const FN(dz_db_args) args = {n, d_out, Y, dY, ldy, lddy, act, dZ, db};
    fusenn_parallel_ranges(n_blocks > 1 ? fusenn_threads_for(n * d_out, nthreads) : 1,
                           n_blocks, FN(dz_db_blocks), &args);
}

/* The backward pass's two products, dW = X^T dZ and dX = dZ W^T: independent,
 * and of the same size (n d_in d_out multiply-adds each). */
typedef struct {
    size_t n, d_in, d_out;
    const real *X, *W, *dZ;
    ptrdiff_t rs_x, cs_x, rs_w, cs_w;
    real *dW, *dX;
    int nthreads; /* threads for each product */
} FN(backward_products);

static int FN(weight_grad)(const FN(backward_products) *p)
{
    /* dW = X^T dZ: X^T is X with its strides swapped. */
    return FN(fusenn_gemm)(p->d_in, p->d_out, p->n, 1, p->X, p->cs_x, p->rs_x, p->dZ,
                           (ptrdiff_t)p->d_out, 1, 0, p->dW, (ptrdiff_t)p->d_out, 1, p->nthreads);
}

static int FN(input_grad)(const FN(backward_products) *p)
{
    /* dX = dZ W^T */
    return FN(fusenn_gemm)(p->n, p->d_in, p->d_out, 1, p->dZ, (ptrdiff_t)p->d_out, 1, p->W,
                           p->cs_w, p->rs_w, 0, p->dX, (ptrdiff_t)p->d_in, 1, p->nthreads);
}

/* Product 0 is dW, product 1 is dX; returns how many failed. */
static size_t FN(backward_products_range)(const void *ctx, size_t begin, size_t end)
{
    const FN(backward_products) *p = ctx;
    size_t failed = 0;
    for (size_t i = begin; i < end; i++)
        failed += (i == 0 ? FN(weight_grad)(p) : FN(input_grad)(p)) != FUSENN_OK;
    return failed;
}

int FN(fusenn_dense_backward)(size_t n, size_t d_in, size_t d_out,
                              const real *X, ptrdiff_t rs_x, ptrdiff_t cs_x,
                              const real *W, ptrdiff_t rs_w, ptrdiff_t cs_w,
                              const real *Y, ptrdiff_t ldy,
                              const real *dY, ptrdiff_t lddy, fusenn_activation act,
                              real *dZ, real *dW, real *db, real *dX, int nthreads)
{
    if (fusenn_act_needs_z(act)) /* act'(Z) is not a function of Y alone */
        return FUSENN_EINVAL;
    FN(dz_and_bias_grad)(n, d_out, Y, ldy, dY, lddy, act, dZ, db, nthreads);
    FN(backward_products) p = {n, d_in, d_out, X, W, dZ, rs_x, cs_x, rs_w, cs_w, dW, dX,
                               nthreads};
    if (dX == NULL) /* the first layer needs no input gradient */
        return FN(weight_grad)(&p);
    /* On two threads, each computes one whole product on its own: the products
     * are the same size, and a one-thread GEMM neither splits panels nor waits
     * for the other thread. Every product's bits are the same on any number of
     * threads, so this changes none. (More threads would need nested parallel
     * regions; they take the products one after the other.) */
    if (nthreads == 2 && !fusenn_gemm_is_serial(n, d_in, d_out)) {
        p.nthreads = 1;
        return fusenn_parallel_ranges(2, 2, FN(backward_products_range), &p) ? FUSENN_ENOMEM
                                                                              : FUSENN_OK;
    }
    int rc = FN(weight_grad)(&p);
    return rc == FUSENN_OK ? FN(input_grad)(&p) : rc;
}

/* ---- the layer kind --------------------------------------------------------- */

enum { DENSE_UNITS, DENSE_ACTIVATION };
static const char *const dense_attrs[] = {"units", "activation", NULL};

static inline fusenn_activation dense_act(const fusenn_layer *desc)
{
    return (fusenn_activation)(int)desc->attr[DENSE_ACTIVATION];
}

static int FN(dense_output_shape)(const fusenn_layer *desc, const fusenn_shape *in,
                                  fusenn_shape *out)
{
    const double units = desc->attr[DENSE_UNITS];
    if (in->rank < 1 || !(units >= 1) || units != (double)(size_t)units)
        return FUSENN_EINVAL;
    *out = *in;
    out->dim[in->rank - 1] = (size_t)units;
    return FUSENN_OK;
}

static size_t FN(dense_params)(const fusenn_layer *desc, const fusenn_shape *in,
                               fusenn_shape *shapes, int *decayed)
{
    const size_t units = (size_t)desc->attr[DENSE_UNITS];
    shapes[0] = (fusenn_shape){2, {fusenn_shape_last(in), units, 0, 0}}; /* W, a kernel */
    shapes[1] = fusenn_shape1(units);                                     /* b */
    decayed[0] = 1;
    decayed[1] = 0;
    return 2;
}

/* The pre-activation z, kept when the activation's derivative needs it. */
static size_t FN(dense_saved_bytes)(const FN(layer) *layer, size_t n)
{
    return fusenn_act_needs_z(dense_act(layer->desc)) ? n * layer->out_size * sizeof(real) : 0;
}

/* The rows n samples of `shape` (sample stride ld) hold, and their stride:
 * rows of the last dimension, several per sample for a sequence (the engine
 * keeps samples of several rows contiguous, so one stride serves all). */
static inline size_t dense_rows(const fusenn_shape *shape, size_t n, ptrdiff_t ld,
                                ptrdiff_t *row_stride)
{
    const size_t per_sample = fusenn_shape_rows(shape);
    *row_stride = per_sample == 1 ? ld : (ptrdiff_t)fusenn_shape_last(shape);
    return n * per_sample;
}

static int FN(dense_forward_kind)(const FN(layer) *layer, FN(forward_args) *a)
{
    const size_t d_in = fusenn_shape_last(&layer->in), d_out = fusenn_shape_last(&layer->out);
    ptrdiff_t rs_x, rs_y;
    const size_t rows = dense_rows(&layer->in, a->n, a->ldx, &rs_x);
    dense_rows(&layer->out, a->n, a->ldy, &rs_y);
    const fusenn_activation act = a->logits ? FUSENN_ACT_IDENTITY : dense_act(layer->desc);
    const real *x = a->x;
    a->result = a->y;
    a->ld_result = a->ldy;
    if (fusenn_act_needs_z(act)) { /* keep z for the backward */
        real *z = a->saved;
        int rc = FN(fusenn_dense_forward)(rows, d_in, d_out, x, rs_x, 1, layer->param[0],
                                          (ptrdiff_t)d_out, 1, layer->param[1],
                                          FUSENN_ACT_IDENTITY, z, (ptrdiff_t)d_out, a->nthreads);
        FN(fusenn_activation_forward)(act, rows, d_out, z, (ptrdiff_t)d_out, a->y, rs_y,
                                      a->nthreads);
        return rc;
    }
    return FN(fusenn_dense_forward)(rows, d_in, d_out, x, rs_x, 1, layer->param[0],
                                    (ptrdiff_t)d_out, 1, layer->param[1], act, a->y, rs_y,
                                    a->nthreads);
}

static int FN(dense_backward_kind)(const FN(layer) *layer, FN(backward_args) *a)
{
    const size_t d_in = fusenn_shape_last(&layer->in), d_out = fusenn_shape_last(&layer->out);
    ptrdiff_t rs_x, rs_y;
    const size_t rows = dense_rows(&layer->in, a->n, a->ldx, &rs_x);
    dense_rows(&layer->out, a->n, a->ldy, &rs_y);
    fusenn_activation act = a->logits ? FUSENN_ACT_IDENTITY : dense_act(layer->desc);
    if (fusenn_act_needs_z(act)) { /* dZ from z, in place; then as identity */
        FN(fusenn_activation_backward)(act, rows, d_out, a->saved, (ptrdiff_t)d_out, a->y, rs_y,
                                       a->dy, (ptrdiff_t)d_out, a->dy, (ptrdiff_t)d_out,
                                       a->nthreads);
        act = FUSENN_ACT_IDENTITY;
    }
    /* dZ overwrites dY in place (allowed: same leading dimension) */
    a->result = a->dx;
    return FN(fusenn_dense_backward)(rows, d_in, d_out, a->x, rs_x, 1, layer->param[0],
                                     (ptrdiff_t)d_out, 1, a->y, rs_y, a->dy, (ptrdiff_t)d_out,
                                     act, a->dy, layer->grad[0], layer->grad[1], a->dx,
                                     a->nthreads);
}

const FN(layer_kind) FN(dense_kind) = {
    .name = "dense",
    .attrs = dense_attrs,
    .output_shape = FN(dense_output_shape),
    .params = FN(dense_params),
    .saved_bytes = FN(dense_saved_bytes),
    .forward = FN(dense_forward_kind),
    .backward = FN(dense_backward_kind),
};
