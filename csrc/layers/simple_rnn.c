/*
 * simple_rnn.c - Keras's SimpleRNN: h_t = act(x_t W + h_{t-1} U + b), h_0 = 0.
 * The time loop and its layout are recurrent.h's; saved per step: the
 * gate's value (its pre-activation where act' needs it) and h_{t-1}.
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

static size_t FN(simple_rnn_forward_rows)(const void *ctx, size_t r0, size_t r1)
{
    const FN(rnn_pass) *p = ctx;
    const rnn_dims *d = &p->d;
    const size_t T = d->T, u = d->u, m = r1 - r0;
    const ptrdiff_t ld = (ptrdiff_t)(T * u);
    const int keep_z = rnn_keeps_z(d->act);
    for (size_t s = 0; s < T; s++) {
        const size_t t = rnn_time(d, s);
        if (s == 0) /* h_0 = 0, and P + 0 U is P */
            for (size_t r = r0; r < r1; r++)
                memset(FN(rnn_at)(p, p->h, u, r, t), 0, u * sizeof(real));
        else if (FN(fusenn_gemm_with_packed_b)(&p->packed[0], m, 1, FN(rnn_at)(p, p->h, u, r0, t),
                                               ld, 1, p->Up[0], 1,
                                               FN(rnn_at)(p, p->gates, u, r0, t), ld, NULL))
            return m;
        for (size_t r = r0; r < r1; r++) {
            real *z = FN(rnn_at)(p, p->gates, u, r, t);
            const real *h_prev = FN(rnn_at)(p, p->h, u, r, t);
            real *a = keep_z ? p->rows + r * p->row_width : z;
            FN(rnn_activate)(d->act, u, z, a);
            const real *h = FN(rnn_real)(p, r, t) ? a : h_prev;
            if (s + 1 < T)
                memcpy(FN(rnn_at)(p, p->h, u, r, rnn_time(d, s + 1)), h, u * sizeof(real));
            real *out = FN(rnn_output)(p, r, s);
            if (out)
                memcpy(out, h, u * sizeof(real));
        }
    }
    return 0;
}

static size_t FN(simple_rnn_backward_rows)(const void *ctx, size_t r0, size_t r1)
{
    const FN(rnn_pass) *p = ctx;
    const rnn_dims *d = &p->d;
    const size_t T = d->T, u = d->u, m = r1 - r0, w = p->row_width;
    const ptrdiff_t ld = (ptrdiff_t)(T * u);
    const int keep_z = rnn_keeps_z(d->act);
    for (size_t r = r0; r < r1; r++) { /* dh of the last state */
        real *dh = p->rows + r * w;
        if (d->return_sequences)
            memset(dh, 0, u * sizeof(real));
        else
            memcpy(dh, p->dy + r * u, u * sizeof(real));
    }
    for (size_t s = T; s-- > 0;) {
        const size_t t = rnn_time(d, s);
        for (size_t r = r0; r < r1; r++) {
            real *dh = p->rows + r * w, *dz = FN(rnn_at)(p, p->dP, u, r, t);
            if (d->return_sequences) {
                const real *dy = p->dy + (r * T + s) * u;
                for (size_t j = 0; j < u; j++)
                    dh[j] += dy[j];
            }
            if (!FN(rnn_real)(p, r, t)) { /* dh carries over */
                memset(dz, 0, u * sizeof(real));
                continue;
            }
            const real *z = FN(rnn_at)(p, p->gates, u, r, t);
            const real *a = z;
            if (keep_z) {
                FN(rnn_activate)(d->act, u, z, dh + u);
                a = dh + u;
            }
            FN(activate_backward_row)(d->act, u, keep_z ? z : NULL, a, dh, dz);
            memset(dh, 0, u * sizeof(real)); /* the product below adds dz U^T */
        }
        if (s > 0 && FN(fusenn_gemm_with_packed_b)(&p->packed[0], m, 1,
                                                   FN(rnn_at)(p, p->dP, u, r0, t), ld, 1,
                                                   p->Up[0], 1, p->rows + r0 * w,
                                                   (ptrdiff_t)w, NULL))
            return m;
    }
    return 0;
}

static int FN(simple_rnn_param_grads)(const FN(rnn_pass) *p, real *dU, real *db, int nthreads)
{
    const size_t steps = p->n * p->d.T, u = p->d.u;
    FN(rnn_column_sums)(steps, u, p->dP, (ptrdiff_t)u, db, nthreads);
    return FN(fusenn_gemm)(u, u, steps, 1, p->h, 1, (ptrdiff_t)u, p->dP, (ptrdiff_t)u, 1, 0, dU,
                           (ptrdiff_t)u, 1, nthreads);
}

static const FN(rnn_cell) FN(simple_rnn_cell) = {
    .gates = 1,
    .extras = 0,
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

static size_t FN(simple_rnn_saved_bytes)(const FN(layer) *layer, size_t n)
{
    return FN(rnn_saved_bytes)(layer, n, &FN(simple_rnn_cell));
}

static size_t FN(simple_rnn_work_bytes)(const FN(layer) *layer, size_t n)
{
    return FN(rnn_work_bytes)(layer, n, &FN(simple_rnn_cell));
}

static int FN(simple_rnn_forward)(const FN(layer) *layer, FN(forward_args) *a)
{
    return FN(rnn_forward)(layer, a, &FN(simple_rnn_cell));
}

static int FN(simple_rnn_backward)(const FN(layer) *layer, FN(backward_args) *a)
{
    return FN(rnn_backward)(layer, a, &FN(simple_rnn_cell));
}

const FN(layer_kind) FN(simple_rnn_kind) = {
    .name = "simple_rnn",
    .attrs = simple_rnn_attrs,
    .output_shape = FN(simple_rnn_output_shape),
    .params = FN(simple_rnn_params),
    .saved_bytes = FN(simple_rnn_saved_bytes),
    .work_bytes = FN(simple_rnn_work_bytes),
    .forward = FN(simple_rnn_forward),
    .backward = FN(simple_rnn_backward),
};
