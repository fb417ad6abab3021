/*
 * gru.c - Keras's GRU, gates in the order z, r, h (the candidate, written c):
 *   z = rec(x W_z + h U_z + b_z),  r = rec(x W_r + h U_r + b_r)
 *   reset_after (bias (2, 3u): input and recurrent):
 *     c = act(x W_h + b_h + r (h U_h + b'_h))     (one product per step)
 *   reset_after = 0 (bias (3u)):
 *     c = act(x W_h + b_h + (r h) U_h)            (two: h U_zr, then (r h) U_h)
 *   h_new = z h + (1 - z) c
 * The time loop and its layout are recurrent.h's (the loops themselves:
 * gru_steps.h). Saved per step: the three gates' values (pre-activations
 * where the derivative needs them), h before the step, and extra[0]:
 * h U_h + b'_h (reset_after) or r h (not).
 */
#include "recurrent.h"

enum { GRU_Z, GRU_R, GRU_H };

static inline fusenn_activation gru_gate_act(const rnn_dims *d, int k)
{
    return k == GRU_H ? d->act : d->rec;
}

/* Scratch per sample: forward, the recurrent products (3u, or 2u without
 * reset_after) and the gates' values where pre-activations are kept (3u);
 * backward, dh, the gates' values and (without reset_after) d(r h). */
static size_t gru_row_width(const rnn_dims *d, int backward)
{
    if (backward)
        return (d->reset_after ? 4 : 5) * d->u;
    return (d->reset_after ? 6 : 5) * d->u;
}

static size_t FN(gru_packings)(const rnn_dims *d, size_t m, int backward,
                               FN(gemm_packed) *packed)
{
    const size_t u = d->u;
    if (d->reset_after) { /* U, or U^T */
        packed[0] = backward ? FN(fusenn_gemm_packed_for)(m, u, 3 * u)
                             : FN(fusenn_gemm_packed_for)(m, 3 * u, u);
        return 1;
    }
    if (backward) { /* U_h^T, U_zr^T */
        packed[0] = FN(fusenn_gemm_packed_for)(m, u, u);
        packed[1] = FN(fusenn_gemm_packed_for)(m, u, 2 * u);
    } else { /* U_zr, U_h */
        packed[0] = FN(fusenn_gemm_packed_for)(m, 2 * u, u);
        packed[1] = FN(fusenn_gemm_packed_for)(m, u, u);
    }
    return 2;
}

static void FN(gru_pack)(FN(rnn_pass) *p, int backward)
{
    const ptrdiff_t Gu = (ptrdiff_t)(3 * p->d.u);
    const real *U = p->U, *U_h = p->U + 2 * p->d.u;
    const ptrdiff_t rs = backward ? 1 : Gu, cs = backward ? Gu : 1;
    if (p->d.reset_after) {
        FN(fusenn_gemm_pack_b)(&p->packed[0], U, rs, cs, p->Up[0]);
    } else {
        FN(fusenn_gemm_pack_b)(&p->packed[0], backward ? U_h : U, rs, cs, p->Up[0]);
        FN(fusenn_gemm_pack_b)(&p->packed[1], backward ? U : U_h, rs, cs, p->Up[1]);
    }
}

/* The time loops, once per ISA */
#define RNN_ISA generic
#define RNN_ATTR
#define RNN_VBYTES 16
#include "gru_steps.h"
#ifdef RNN_HAVE_X86
#define RNN_ISA avx2
#define RNN_ATTR RNN_AVX2_ATTR
#define RNN_VBYTES 32
#include "gru_steps.h"
#define RNN_ISA avx512
#define RNN_ATTR RNN_AVX512_ATTR
#define RNN_VBYTES 64
#include "gru_steps.h"
#endif

static size_t FN(gru_forward_rows)(const void *ctx, size_t r0, size_t r1)
{
    return RNN_DISPATCH(gru_forward_rows, ctx, r0, r1);
}

static size_t FN(gru_backward_rows)(const void *ctx, size_t r0, size_t r1)
{
    return RNN_DISPATCH(gru_backward_rows, ctx, r0, r1);
}

/* dP rows: [dz, dr, dc r, dc] with reset_after (the first three are the
 * recurrent side's, for dU, dh and the recurrent bias; dz, dr, dc the input
 * side's), else [dz, dr, dc]. */
static size_t gru_dP_width(const rnn_dims *d) { return (d->reset_after ? 4 : 3) * d->u; }

static size_t gru_input_blocks(const rnn_dims *d, rnn_block *blocks)
{
    const size_t u = d->u;
    if (!d->reset_after) {
        blocks[0] = (rnn_block){0, 0, 3 * u};
        return 1;
    }
    blocks[0] = (rnn_block){0, 0, 2 * u};
    blocks[1] = (rnn_block){3 * u, 2 * u, u};
    return 2;
}

static int FN(gru_param_grads)(const FN(rnn_pass) *p, const double *sums, real *dW,
                               real *dU, real *db, int nthreads)
{
    const size_t u = p->d.u, Gu = 3 * u, c = p->d.reset_after ? 3 * u : 2 * u; /* dc's column */
    for (size_t j = 0; j < Gu; j++) /* the input side: dz, dr, dc */
        db[j] = (real)sums[j < 2 * u ? j : c + j - 2 * u];
    if (p->d.reset_after) /* the recurrent side's bias: dz, dr, dc r */
        for (size_t j = 0; j < Gu; j++)
            db[Gu + j] = (real)sums[j];
    /* z and r: [dW; dU] = [X H]^T [dz, dr]; h: dW = X^T dc, and dU = H^T (dc r)
     * with reset_after, else (r H)^T dc */
    int rc = FN(rnn_grad_xh)(p, 0, 2 * u, 0, dW, dU, nthreads);
    if (rc == FUSENN_OK)
        rc = FN(rnn_grad_x)(p, c, u, 2 * u, dW, nthreads);
    if (rc == FUSENN_OK)
        rc = p->d.reset_after
                 ? FN(rnn_grad_s)(p, p->h, (ptrdiff_t)p->h_width, 2 * u, u, 2 * u, dU, nthreads)
                 : FN(rnn_grad_s)(p, p->extra[0], (ptrdiff_t)u, 2 * u, u, 2 * u, dU, nthreads);
    return rc;
}

static const FN(rnn_cell) FN(gru_cell) = {
    .gates = 3,
    .extras = 1,
    .dP_width = gru_dP_width,
    .input_blocks = gru_input_blocks,
    .row_width = gru_row_width,
    .packings = FN(gru_packings),
    .pack = FN(gru_pack),
    .forward_rows = FN(gru_forward_rows),
    .backward_rows = FN(gru_backward_rows),
    .param_grads = FN(gru_param_grads),
};

/* ---- the layer kind --------------------------------------------------------- */

static const char *const gru_attrs[] = {"units", "activation", "return_sequences",
                                        "go_backwards", "recurrent_activation", "reset_after",
                                        NULL};

static int FN(gru_output_shape)(const fusenn_layer *desc, const fusenn_shape *in,
                                fusenn_shape *out)
{
    const double reset_after = desc->attr[RNN_RESET_AFTER];
    if (reset_after != 0 && reset_after != 1)
        return FUSENN_EINVAL;
    return FN(rnn_output_shape)(desc, in, out, 1);
}

static size_t FN(gru_params)(const fusenn_layer *desc, const fusenn_shape *in,
                             fusenn_shape *shapes, int *decayed)
{
    const size_t n = FN(rnn_params)(desc, in, shapes, decayed, 3);
    if (desc->attr[RNN_RESET_AFTER] != 0) /* [input bias, recurrent bias] */
        shapes[2] = (fusenn_shape){2, {2, shapes[2].dim[0], 0, 0}};
    return n;
}

const FN(layer_kind) FN(gru_kind) = {
    .name = "gru",
    .attrs = gru_attrs,
    .output_shape = FN(gru_output_shape),
    .params = FN(gru_params),
    .saved_bytes = FN(rnn_saved_bytes),
    .work_bytes = FN(rnn_work_bytes),
    .forward = FN(rnn_forward),
    .backward = FN(rnn_backward),
    .impl = &FN(gru_cell),
};
