/*
 * layer.h - what a layer kind is to the engine (plan.c); not installed.
 *
 * A layer kind lives in one file under csrc/layers/ with its kernels, and
 * exports one record of operations, `FN(<name>_kind)`, listed in plan.c's
 * table of kinds. The engine knows nothing else about it: it asks the record
 * for the output shape, the parameter tensors, the bytes to keep from the
 * forward pass for the backward pass, and scratch; it carves all of those from
 * its arenas and calls forward and backward.
 *
 * Tensors are batches of samples: n samples, each a C-contiguous block of a
 * per-sample shape (H x W x C for images, T x F for sequences, F for rows),
 * consecutive samples ld elements apart. A kind that needs only rows x columns
 * treats a sample of shape (..., F) as its rows of F.
 */
#ifndef FUSENN_LAYER_H
#define FUSENN_LAYER_H

#include "internal.h"

/* The size of a per-sample shape (the product of its dimensions). */
static inline size_t fusenn_shape_size(const fusenn_shape *s)
{
    size_t size = 1;
    for (size_t i = 0; i < s->rank; i++)
        size *= s->dim[i];
    return size;
}

/* A shape of one dimension. */
static inline fusenn_shape fusenn_shape1(size_t d)
{
    fusenn_shape s = {1, {d, 0, 0, 0}};
    return s;
}

/* The last dimension of a shape, and the rows of it one sample holds. */
static inline size_t fusenn_shape_last(const fusenn_shape *s) { return s->dim[s->rank - 1]; }

static inline size_t fusenn_shape_rows(const fusenn_shape *s)
{
    return fusenn_shape_size(s) / fusenn_shape_last(s);
}

#ifndef FUSENN_NO_DTYPE

/* One layer of a plan, as its kind's operations see it. */
typedef struct {
    const fusenn_layer *desc;  /* the caller's descriptor: attributes, seed, buffers */
    fusenn_shape in, out;      /* per-sample shapes */
    size_t in_size, out_size;  /* their sizes */
    size_t n_params;
    real *param[FUSENN_MAX_PARAMS]; /* in the parameter arena */
    real *grad[FUSENN_MAX_PARAMS];  /* in the gradient arena, shaped like param */
    const void *impl;               /* the kind's own data (its layer_kind.impl) */
} FN(layer);

/* A forward pass over n samples. x is the input (sample stride ldx; real, or
 * int64 indices for a kind that reads indices); y is the layer's output buffer
 * (sample stride ldy). The kind sets *result to where its output is: y, or x
 * itself for a layer that passes its input through. saved is the kind's
 * saved_bytes(n) kept for the backward pass, work its work_bytes(n). logits:
 * the loss applies the output activation itself, so stop before it.
 * mask: which time steps of a sequence are real (n x T bytes, 1 = real, T
 * the first dimension of the sequence), or NULL; a kind that makes a mask
 * (Embedding with mask_zero) points it at its own (in its saved area). The
 * engine drops the mask once a layer's output has no time axis of T steps.
 * row0: the first sample's row in the whole batch when the engine runs a
 * batch in chunks (0 otherwise): random masks (Dropout) depend on it, so a
 * chunk draws the masks the whole batch would.
 * stats: for a kind with running statistics (stats_len), where a training
 * pass records its batch's statistics instead of updating the running ones
 * (the engine folds them later, in chunk order); NULL: update them now. */
typedef struct {
    size_t n, row0;
    const void *x;
    ptrdiff_t ldx;
    real *y;
    ptrdiff_t ldy;
    const real *result;
    ptrdiff_t ld_result;
    void *saved, *work;
    const unsigned char *mask;
    double *stats;
    int training, logits, nthreads;
} FN(forward_args);

/* The backward pass of the last forward pass (same n, x, saved). y is that
 * pass's output (its result, sample stride ldy), dy = dL/dy (contiguous,
 * out_size per sample; the kind may overwrite it). The kind writes each
 * parameter's gradient to layer->grad and, unless dx is NULL (nothing before
 * the layer needs it), dL/dx: into dx (contiguous, in_size per sample), or in
 * place into dy when in and out have the same size; *result says where. */
typedef struct {
    size_t n;
    const void *x;
    ptrdiff_t ldx;
    const real *y;
    ptrdiff_t ldy;
    real *dy, *dx;
    real *result;
    const void *saved;
    void *work;
    const unsigned char *mask; /* the forward pass's input mask */
    int logits, nthreads;
    /* The layer before's output activation, when this kind takes it over
     * (takes_input_activation): dx is dL/d(the layer before's pre-activation),
     * act' judged from x, that activation's output (or from values equal to x
     * where the gradient lands: max pooling reads its maxima). IDENTITY: no. */
    fusenn_activation dx_act;
    int dy_is_dz; /* the layer after took this kind's output_activation over */
} FN(backward_args);

typedef struct {
    const char *name;
    /* Attribute names in the order of fusenn_layer.attr; NULL-terminated. */
    const char *const *attrs;
    /* The output shape for an input shape, or FUSENN_EINVAL if the layer
     * cannot take that input. */
    int (*output_shape)(const fusenn_layer *desc, const fusenn_shape *in, fusenn_shape *out);
    /* The number of parameter tensors (at most FUSENN_MAX_PARAMS), each one's
     * shape, and whether the L2 penalty and weight decay apply to it (kernels
     * yes, biases and scales no). NULL for a kind without parameters. */
    size_t (*params)(const fusenn_layer *desc, const fusenn_shape *in, fusenn_shape *shapes,
                     int *decayed);
    /* Bytes kept from forward to backward, and scratch, for n samples.
     * NULL: none. Carved 64-byte aligned. */
    size_t (*saved_bytes)(const FN(layer) *layer, size_t n);
    size_t (*work_bytes)(const FN(layer) *layer, size_t n);
    int (*forward)(const FN(layer) *layer, FN(forward_args) *a);
    int (*backward)(const FN(layer) *layer, FN(backward_args) *a);
    /* For a kind that keeps running statistics of its training batches
     * (BatchNorm): the doubles a training forward records (forward_args.stats),
     * and the update of the running statistics from one record, exactly the
     * one an unrecorded forward makes. NULL: no statistics. */
    size_t (*stats_len)(const FN(layer) *layer);
    void (*fold_stats)(const FN(layer) *layer, const double *stats);
    /* Fusing an activation's derivative into the next layer's backward pass,
     * which saves a pass over the activations (ReLU before max pooling):
     * output_activation is the activation the kind's forward applies last
     * (IDENTITY: none), which its backward then leaves out when dy_is_dz;
     * takes_input_activation says whether its backward can apply that
     * activation's derivative to dx (dx_act). The engine pairs the two
     * between neighbours, with the same bits as separate passes. NULL: no. */
    fusenn_activation (*output_activation)(const FN(layer) *layer);
    int (*takes_input_activation)(const FN(layer) *layer, fusenn_activation act);
    /* 1 if the input is int64 indices rather than real values. */
    int index_input;
    /* For a kind that reads indices: how many of n samples' indices it cannot
     * take (the engine refuses such a batch before anything changes). */
    size_t (*count_bad_input)(const FN(layer) *layer, size_t n, const void *x, ptrdiff_t ldx);
    /* Data of the kind's own that its operations read as layer->impl: kinds
     * that share their operations (the recurrent ones: their cell) differ in
     * it alone. NULL: none. */
    const void *impl;
} FN(layer_kind);

#endif /* FUSENN_NO_DTYPE */
#endif /* FUSENN_LAYER_H */
