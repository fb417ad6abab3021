/*
 * simple_rnn.c - Keras's SimpleRNN: h_t = act(x_t W + h_{t-1} U + b), h_0 = 0.
 * The time loop and its layout are recurrent.h's (the loops themselves:
 * simple_rnn_steps.h); saved per step: the gate's value (its pre-activation
 * where act' needs it) and h_{t-1}.
 */
#include "recurrent.h"

/* Scratch per sample: forward, the activation of a kept pre-activation;
 * backward, dh and that activation. */
static size_t simple_rnn_row_width(const rnn_dims *d, int backward)
{
    return backward ? 2 * d->u : d->u;
}

static size_t FN(simple_rnn_packings)(const rnn_dims *d, size_t m, int backward,
                                      FN(gemm_packed) *packed)
{
    (void)backward; /* U and U^T: both u x u */
    packed[0] = FN(fusenn_gemm_packed_for)(m, d->u, d->u);
    return 1;
}

static void FN(simple_rnn_pack)(FN(rnn_pass) *p, int backward)
{
    const ptrdiff_t u = (ptrdiff_t)p->d.u;
    FN(fusenn_gemm_pack_b)(&p->packed[0], p->U, backward ? 1 : u, backward ? u : 1, p->Up[0]);
}

/* The time loops, once per ISA */
#define RNN_ISA generic
#define RNN_ATTR
#define RNN_VBYTES 16
#include "simple_rnn_steps.h"
#ifdef RNN_HAVE_X86
#define RNN_ISA avx2
#define RNN_ATTR RNN_AVX2_ATTR
#define RNN_VBYTES 32
#include "simple_rnn_steps.h"
#define RNN_ISA avx512
#define RNN_ATTR RNN_AVX512_ATTR
#define RNN_VBYTES 64
#include "simple_rnn_steps.h"
#endif

static size_t FN(simple_rnn_forward_rows)(const void *ctx, size_t r0, size_t r1)
{
    return RNN_DISPATCH(simple_rnn_forward_rows, ctx, r0, r1);
}

static size_t FN(simple_rnn_backward_rows)(const void *ctx, size_t r0, size_t r1)
{
    return RNN_DISPATCH(simple_rnn_backward_rows, ctx, r0, r1);
}

static size_t simple_rnn_dP_width(const rnn_dims *d) { return d->u; }

static size_t simple_rnn_input_blocks(const rnn_dims *d, rnn_block *blocks)
{
    blocks[0] = (rnn_block){0, 0, d->u};
    return 1;
}

static int FN(simple_rnn_param_grads)(const FN(rnn_pass) *p, const double *sums, real *dW,
                                      real *dU, real *db, int nthreads)
{
    for (size_t j = 0; j < p->d.u; j++)
        db[j] = (real)sums[j];
    return FN(rnn_grad_xh)(p, 0, p->d.u, 0, dW, dU, nthreads);
}

static const FN(rnn_cell) FN(simple_rnn_cell) = {
    .gates = 1,
    .extras = 0,
    .dP_width = simple_rnn_dP_width,
    .input_blocks = simple_rnn_input_blocks,
    .row_width = simple_rnn_row_width,
    .packings = FN(simple_rnn_packings),
    .pack = FN(simple_rnn_pack),
    .forward_rows = FN(simple_rnn_forward_rows),
    .backward_rows = FN(simple_rnn_backward_rows),
    .param_grads = FN(simple_rnn_param_grads),
};

/* ---- the layer kind --------------------------------------------------------- */

static const char *const simple_rnn_attrs[] = {"units", "activation", "return_sequences",
                                               "go_backwards", NULL};

static int FN(simple_rnn_output_shape)(const fusenn_layer *desc, const fusenn_shape *in,
                                       fusenn_shape *out)
{
    return FN(rnn_output_shape)(desc, in, out, 0);
}

static size_t FN(simple_rnn_params)(const fusenn_layer *desc, const fusenn_shape *in,
                                    fusenn_shape *shapes, int *decayed)
{
    return FN(rnn_params)(desc, in, shapes, decayed, 1);
}

const FN(layer_kind) FN(simple_rnn_kind) = {
    .name = "simple_rnn",
    .attrs = simple_rnn_attrs,
    .output_shape = FN(simple_rnn_output_shape),
    .params = FN(simple_rnn_params),
    .saved_bytes = FN(rnn_saved_bytes),
    .work_bytes = FN(rnn_work_bytes),
    .forward = FN(rnn_forward),
    .backward = FN(rnn_backward),
    .impl = &FN(simple_rnn_cell),
};
