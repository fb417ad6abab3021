/*
 * reshape.c - Reshape and Flatten: a sample keeps its values in row-major order
 * and takes a new shape of the same size. Nothing is copied: the output is the
 * input, read with the new shape, and the gradient flows back unchanged.
 */
#include "../layer.h"

enum { RESHAPE_RANK, RESHAPE_DIM0 };
static const char *const reshape_attrs[] = {"rank", "dim0", "dim1", "dim2", "dim3", NULL};

static int FN(reshape_output_shape)(const fusenn_layer *desc, const fusenn_shape *in,
                                    fusenn_shape *out)
{
    const double rank = desc->attr[RESHAPE_RANK];
    if (!(rank >= 1 && rank <= FUSENN_MAX_RANK) || rank != (double)(size_t)rank)
        return FUSENN_EINVAL;
    out->rank = (size_t)rank;
    for (size_t i = 0; i < FUSENN_MAX_RANK; i++)
        out->dim[i] = i < out->rank ? (size_t)desc->attr[RESHAPE_DIM0 + i] : 0;
    return fusenn_shape_size(out) == fusenn_shape_size(in) ? FUSENN_OK : FUSENN_EINVAL;
}

static int FN(reshape_forward)(const FN(layer) *layer, FN(forward_args) *a)
{
    (void)layer;
    a->result = a->x;
    a->ld_result = a->ldx;
    return FUSENN_OK;
}

static int FN(reshape_backward)(const FN(layer) *layer, FN(backward_args) *a)
{
    (void)layer;
    a->result = a->dy;
    return FUSENN_OK;
}

const FN(layer_kind) FN(reshape_kind) = {
    .name = "reshape",
    .attrs = reshape_attrs,
    .output_shape = FN(reshape_output_shape),
    .forward = FN(reshape_forward),
    .backward = FN(reshape_backward),
};
