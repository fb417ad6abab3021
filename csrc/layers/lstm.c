/*
 * lstm.c - Keras's LSTM, gates in the order i, f, c (written g), o:
 *   i = rec(P_i), f = rec(P_f), g = act(P_g), o = rec(P_o),  P = x W + h U + b
 *   c = f c_prev + i g,  h = o act(c)
 * The time loop and its layout are recurrent.h's (the loops themselves:
 * lstm_steps.h). Saved per step: the four
 * gates' values (pre-activations where the derivative needs them), h and c
 * before the step (extra[0] holds c) and act(c) (extra[1]; c itself where
 * act' needs it).
 */
#include "recurrent.h"

enum { LSTM_I, LSTM_F, LSTM_G, LSTM_O };

static inline fusenn_activation lstm_gate_act(const rnn_dims *d, int k)
{
    return k == LSTM_G ? d->act : d->rec;
}

/* Scratch per sample: forward, the gates' values where pre-activations are
 * kept, the new c and act(c); backward, dh, dc, the gates' values, act(c)
 * and dc_new. */
static size_t lstm_row_width(const rnn_dims *d, int backward)
{
    return (backward ? 8 : 6) * d->u;
}

static size_t FN(lstm_packings)(const rnn_dims *d, size_t m, int backward,
                                FN(gemm_packed) *packed)
{
    const size_t u = d->u;
    packed[0] = backward ? FN(fusenn_gemm_packed_for)(m, u, 4 * u) /* U^T */
                         : FN(fusenn_gemm_packed_for)(m, 4 * u, u);
    return 1;
}

static void FN(lstm_pack)(FN(rnn_pass) *p, int backward)
{
    const ptrdiff_t Gu = (ptrdiff_t)(4 * p->d.u);
    FN(fusenn_gemm_pack_b)(&p->packed[0], p->U, backward ? 1 : Gu, backward ? Gu : 1, p->Up[0]);
}

/* The time loops, once per ISA */
#define RNN_ISA generic
#define RNN_ATTR
#define RNN_VBYTES 16
#include "lstm_steps.h"
#ifdef RNN_HAVE_X86
#define RNN_ISA avx2
#define RNN_ATTR RNN_AVX2_ATTR
#define RNN_VBYTES 32
#include "lstm_steps.h"
#define RNN_ISA avx512
#define RNN_ATTR RNN_AVX512_ATTR
#define RNN_VBYTES 64
#include "lstm_steps.h"
#endif

static size_t FN(lstm_forward_rows)(const void *ctx, size_t r0, size_t r1)
{
    return RNN_DISPATCH(lstm_forward_rows, ctx, r0, r1);
}

static size_t FN(lstm_backward_rows)(const void *ctx, size_t r0, size_t r1)
{
    return RNN_DISPATCH(lstm_backward_rows, ctx, r0, r1);
}

static size_t lstm_dP_width(const rnn_dims *d) { return 4 * d->u; }

static size_t lstm_input_blocks(const rnn_dims *d, rnn_block *blocks)
{
    blocks[0] = (rnn_block){0, 0, 4 * d->u};
    return 1;
}

static int FN(lstm_param_grads)(const FN(rnn_pass) *p, const double *sums, real *dW,
                                real *dU, real *db, int nthreads)
{
    for (size_t j = 0; j < 4 * p->d.u; j++)
        db[j] = (real)sums[j];
    return FN(rnn_grad_xh)(p, 0, 4 * p->d.u, 0, dW, dU, nthreads);
}

static const FN(rnn_cell) FN(lstm_cell) = {
    .gates = 4,
    .extras = 2,
    .dP_width = lstm_dP_width,
    .input_blocks = lstm_input_blocks,
    .row_width = lstm_row_width,
    .packings = FN(lstm_packings),
    .pack = FN(lstm_pack),
    .forward_rows = FN(lstm_forward_rows),
    .backward_rows = FN(lstm_backward_rows),
    .param_grads = FN(lstm_param_grads),
};

/* ---- the layer kind --------------------------------------------------------- */

static const char *const lstm_attrs[] = {"units", "activation", "return_sequences",
                                         "go_backwards", "recurrent_activation", NULL};

static int FN(lstm_output_shape)(const fusenn_layer *desc, const fusenn_shape *in,
                                 fusenn_shape *out)
{
    return FN(rnn_output_shape)(desc, in, out, 1);
}

static size_t FN(lstm_params)(const fusenn_layer *desc, const fusenn_shape *in,
                              fusenn_shape *shapes, int *decayed)
{
    return FN(rnn_params)(desc, in, shapes, decayed, 4);
}

const FN(layer_kind) FN(lstm_kind) = {
    .name = "lstm",
    .attrs = lstm_attrs,
    .output_shape = FN(lstm_output_shape),
    .params = FN(lstm_params),
    .saved_bytes = FN(rnn_saved_bytes),
    .work_bytes = FN(rnn_work_bytes),
    .forward = FN(rnn_forward),
    .backward = FN(rnn_backward),
    .impl = &FN(lstm_cell),
};
