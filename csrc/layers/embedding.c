/*
 * embedding.c - Keras's Embedding: int64 indices x (T per sample) to rows of
 * a table (input_dim x output_dim), y[t] = table[x[t]]. With mask_zero,
 * index 0 is padding: the forward pass makes the time-step mask (x != 0, in
 * its saved bytes), which the recurrent layers after it read.
 * The backward pass adds every step's dy row into its index's row of the
 * table's gradient, in the order of the steps (sample by sample), whatever
 * the thread count: threads split the columns, each scanning every step.
 * It never has an input gradient (it reads indices; the engine takes it only
 * as the first layer).
 */
#include "../layer.h"

enum { EMBEDDING_INPUT_DIM, EMBEDDING_OUTPUT_DIM, EMBEDDING_MASK_ZERO };
static const char *const embedding_attrs[] = {"input_dim", "output_dim", "mask_zero", NULL};

static int valid_count(double v) { return v >= 1 && v <= 2147483647.0 && v == (double)(size_t)v; }

static int FN(embedding_output_shape)(const fusenn_layer *desc, const fusenn_shape *in,
                                      fusenn_shape *out)
{
    const double *attr = desc->attr;
    if (in->rank != 1 || !valid_count(attr[EMBEDDING_INPUT_DIM]) ||
        !valid_count(attr[EMBEDDING_OUTPUT_DIM]) ||
        (attr[EMBEDDING_MASK_ZERO] != 0 && attr[EMBEDDING_MASK_ZERO] != 1))
        return FUSENN_EINVAL;
    *out = (fusenn_shape){2, {in->dim[0], (size_t)attr[EMBEDDING_OUTPUT_DIM], 0, 0}};
    return FUSENN_OK;
}

static size_t FN(embedding_params)(const fusenn_layer *desc, const fusenn_shape *in,
                                   fusenn_shape *shapes, int *decayed)
{
    (void)in;
    shapes[0] = (fusenn_shape){2, {(size_t)desc->attr[EMBEDDING_INPUT_DIM],
                                   (size_t)desc->attr[EMBEDDING_OUTPUT_DIM], 0, 0}};
    decayed[0] = 1;
    return 1;
}

/* The mask, with mask_zero. */
static size_t FN(embedding_saved_bytes)(const FN(layer) *layer, size_t n)
{
    return layer->desc->attr[EMBEDDING_MASK_ZERO] != 0 ? n * layer->in_size : 0;
}

static size_t FN(embedding_count_bad_input)(const FN(layer) *layer, size_t n, const void *x,
                                            ptrdiff_t ldx)
{
    const int64_t rows = (int64_t)layer->desc->attr[EMBEDDING_INPUT_DIM];
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        const int64_t *idx = (const int64_t *)x + (ptrdiff_t)i * ldx;
        for (size_t t = 0; t < layer->in_size; t++)
            bad += idx[t] < 0 || idx[t] >= rows;
    }
    return bad;
}

typedef struct {
    const FN(layer) *layer;
    size_t n;
    const int64_t *x;
    ptrdiff_t ldx;
    real *y;
    ptrdiff_t ldy;
    unsigned char *mask;
    const real *dy;
} FN(embedding_args);

static size_t FN(embedding_samples)(const void *ctx, size_t begin, size_t end)
{
    const FN(embedding_args) *p = ctx;
    const size_t T = p->layer->in_size, D = fusenn_shape_last(&p->layer->out);
    const real *table = p->layer->param[0];
    for (size_t i = begin; i < end; i++) {
        const int64_t *idx = p->x + (ptrdiff_t)i * p->ldx;
        real *y = p->y + (ptrdiff_t)i * p->ldy;
        for (size_t t = 0; t < T; t++) {
            memcpy(y + t * D, table + (size_t)idx[t] * D, D * sizeof(real));
            if (p->mask)
                p->mask[i * T + t] = idx[t] != 0;
        }
    }
    return 0;
}

static int FN(embedding_forward)(const FN(layer) *layer, FN(forward_args) *a)
{
    if (FN(embedding_count_bad_input)(layer, a->n, a->x, a->ldx)) /* never read past the table */
        return FUSENN_EINVAL;
    unsigned char *mask = layer->desc->attr[EMBEDDING_MASK_ZERO] != 0 ? a->saved : NULL;
    const FN(embedding_args) args = {layer, a->n, a->x, a->ldx, a->y, a->ldy, mask, NULL};
    fusenn_parallel_ranges(fusenn_threads_for(a->n * layer->out_size, a->nthreads), a->n,
                           FN(embedding_samples), &args);
    a->result = a->y;
    a->ld_result = a->ldy;
    if (mask)
        a->mask = mask;
    return FUSENN_OK;
}

/* Columns per block of the gradient's partition (a cache line's worth). */
#define EMBEDDING_BLOCK (64 / sizeof(real))

static size_t FN(embedding_grad_blocks)(const void *ctx, size_t begin, size_t end)
{
    const FN(embedding_args) *p = ctx;
    const FN(layer) *layer = p->layer;
    const size_t T = layer->in_size, D = fusenn_shape_last(&layer->out);
    const size_t rows = (size_t)layer->desc->attr[EMBEDDING_INPUT_DIM], n = p->n;
    const size_t j0 = begin * EMBEDDING_BLOCK, j1 = FUSENN_MIN(end * EMBEDDING_BLOCK, D);
    real *grad = layer->grad[0];
    for (size_t r = 0; r < rows; r++)
        memset(grad + r * D + j0, 0, (j1 - j0) * sizeof(real));
    for (size_t i = 0; i < n; i++) {
        const int64_t *idx = p->x + (ptrdiff_t)i * p->ldx;
        for (size_t t = 0; t < T; t++) {
            real *g = grad + (size_t)idx[t] * D;
            const real *dy = p->dy + (i * T + t) * D;
            for (size_t j = j0; j < j1; j++)
                g[j] += dy[j];
        }
    }
    return 0;
}

static int FN(embedding_backward)(const FN(layer) *layer, FN(backward_args) *a)
{
    const size_t D = fusenn_shape_last(&layer->out);
    const size_t blocks = (D + EMBEDDING_BLOCK - 1) / EMBEDDING_BLOCK;
    const FN(embedding_args) args = {layer, a->n, a->x, a->ldx, NULL, 0, NULL, a->dy};
    fusenn_parallel_ranges(fusenn_threads_for(a->n * layer->out_size, a->nthreads), blocks,
                           FN(embedding_grad_blocks), &args);
    a->result = NULL;
    return FUSENN_OK;
}

const FN(layer_kind) FN(embedding_kind) = {
    .name = "embedding",
    .attrs = embedding_attrs,
    .output_shape = FN(embedding_output_shape),
    .params = FN(embedding_params),
    .saved_bytes = FN(embedding_saved_bytes),
    .forward = FN(embedding_forward),
    .backward = FN(embedding_backward),
    .index_input = 1,
    .count_bad_input = FN(embedding_count_bad_input),
};
