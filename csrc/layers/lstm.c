/*
 * lstm.c - Keras's LSTM, gates in the order i, f, c (written g), o:
 *   i = rec(P_i), f = rec(P_f), g = act(P_g), o = rec(P_o),  P = x W + h U + b
 *   c = f c_prev + i g,  h = o act(c)
 * The time loop and its layout are recurrent.h's. Saved per step: the four
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

/* The values of the four gates of a step stored at P (in place where the
 * pre-activation is not kept, else into tmp); a[k] points at gate k's. */
static void FN(lstm_gate_values)(const rnn_dims *d, real *P, real *tmp, real **a, int compute)
{
    const size_t u = d->u;
    for (int k = 0; k < 4; k++) {
        const fusenn_activation act = lstm_gate_act(d, k);
        a[k] = rnn_keeps_z(act) ? tmp + k * u : P + k * u;
        if (compute || rnn_keeps_z(act))
            FN(rnn_activate)(act, u, P + k * u, a[k]);
    }
}

static size_t FN(lstm_forward_rows)(const void *ctx, size_t r0, size_t r1)
{
    const FN(rnn_pass) *p = ctx;
    const rnn_dims *d = &p->d;
    const size_t T = d->T, u = d->u, Gu = 4 * u, m = r1 - r0;
    const int keep_c = rnn_keeps_z(d->act);
    real *const c_before = p->extra[0], *const c_after = p->extra[1];
    for (size_t s = 0; s < T; s++) {
        const size_t t = rnn_time(d, s);
        if (s == 0) { /* h_0 = c_0 = 0, and P + 0 U is P */
            for (size_t r = r0; r < r1; r++) {
                memset(FN(rnn_at)(p, p->h, u, r, t), 0, u * sizeof(real));
                memset(FN(rnn_at)(p, c_before, u, r, t), 0, u * sizeof(real));
            }
        } else if (FN(fusenn_gemm_with_packed_b)(&p->packed[0], m, 1,
                                                 FN(rnn_at)(p, p->h, u, r0, t),
                                                 (ptrdiff_t)(T * u), 1, p->Up[0], 1,
                                                 FN(rnn_at)(p, p->gates, Gu, r0, t),
                                                 (ptrdiff_t)(T * Gu), NULL)) {
            return m;
        }
        for (size_t r = r0; r < r1; r++) {
            real *tmp = p->rows + r * p->row_width, *cn = tmp + Gu, *h = tmp + 5 * u, *a[4];
            FN(lstm_gate_values)(d, FN(rnn_at)(p, p->gates, Gu, r, t), tmp, a, 1);
            const real *c_prev = FN(rnn_at)(p, c_before, u, r, t);
            const real *h_prev = FN(rnn_at)(p, p->h, u, r, t);
            for (size_t j = 0; j < u; j++)
                cn[j] = a[LSTM_F][j] * c_prev[j] + a[LSTM_I][j] * a[LSTM_G][j];
            FN(rnn_activate)(d->act, u, cn, h);
            memcpy(FN(rnn_at)(p, c_after, u, r, t), keep_c ? cn : h, u * sizeof(real));
            for (size_t j = 0; j < u; j++)
                h[j] *= a[LSTM_O][j];
            const int real_step = FN(rnn_real)(p, r, t);
            if (s + 1 < T) {
                const size_t next = rnn_time(d, s + 1);
                memcpy(FN(rnn_at)(p, p->h, u, r, next), real_step ? h : h_prev,
                       u * sizeof(real));
                memcpy(FN(rnn_at)(p, c_before, u, r, next), real_step ? cn : c_prev,
                       u * sizeof(real));
            }
            real *out = FN(rnn_output)(p, r, s);
            if (out)
                memcpy(out, real_step ? h : h_prev, u * sizeof(real));
        }
    }
    return 0;
}

/* One sample's step backward: dP of the step from dh and dc, then dc of the
 * step before (dh's part through U follows in the product). */
static void FN(lstm_cell_backward)(const rnn_dims *d, real *P, const real *c_prev,
                                   const real *c_after, real *tmp, real *dP)
{
    const size_t u = d->u;
    real *dh = tmp, *dc = tmp + u, *tc = tmp + 6 * u, *dcn = tmp + 7 * u, *a[4];
    FN(lstm_gate_values)(d, P, tmp + 2 * u, a, 0);
    const int keep_c = rnn_keeps_z(d->act);
    if (keep_c)
        FN(rnn_activate)(d->act, u, c_after, tc);
    else
        tc = (real *)c_after;
    for (size_t j = 0; j < u; j++)
        dcn[j] = dh[j] * a[LSTM_O][j];
    FN(activate_backward_row)(d->act, u, keep_c ? c_after : NULL, tc, dcn, dcn);
    real *dPi = dP, *dPf = dP + u, *dPg = dP + 2 * u, *dPo = dP + 3 * u;
    for (size_t j = 0; j < u; j++) {
        dcn[j] += dc[j];
        dPi[j] = dcn[j] * a[LSTM_G][j];
        dPf[j] = dcn[j] * c_prev[j];
        dPg[j] = dcn[j] * a[LSTM_I][j];
        dPo[j] = dh[j] * tc[j];
        dc[j] = dcn[j] * a[LSTM_F][j];
    }
    for (int k = 0; k < 4; k++) {
        const fusenn_activation act = lstm_gate_act(d, k);
        FN(activate_backward_row)(act, u, rnn_keeps_z(act) ? P + k * u : NULL, a[k],
                                  dP + k * u, dP + k * u);
    }
    memset(dh, 0, u * sizeof(real)); /* the product adds dP U^T */
}

static size_t FN(lstm_backward_rows)(const void *ctx, size_t r0, size_t r1)
{
    const FN(rnn_pass) *p = ctx;
    const rnn_dims *d = &p->d;
    const size_t T = d->T, u = d->u, Gu = 4 * u, m = r1 - r0, w = p->row_width;
    for (size_t r = r0; r < r1; r++) { /* dh of the last state, dc = 0 */
        real *dh = p->rows + r * w;
        if (d->return_sequences)
            memset(dh, 0, u * sizeof(real));
        else
            memcpy(dh, p->dy + r * u, u * sizeof(real));
        memset(dh + u, 0, u * sizeof(real));
    }
    for (size_t s = T; s-- > 0;) {
        const size_t t = rnn_time(d, s);
        for (size_t r = r0; r < r1; r++) {
            real *tmp = p->rows + r * w, *dP = FN(rnn_at)(p, p->dP, Gu, r, t);
            if (d->return_sequences) {
                const real *dy = p->dy + (r * T + s) * u;
                for (size_t j = 0; j < u; j++)
                    tmp[j] += dy[j];
            }
            if (FN(rnn_real)(p, r, t))
                FN(lstm_cell_backward)(d, FN(rnn_at)(p, p->gates, Gu, r, t),
                                       FN(rnn_at)(p, p->extra[0], u, r, t),
                                       FN(rnn_at)(p, p->extra[1], u, r, t), tmp, dP);
            else /* dh and dc carry over */
                memset(dP, 0, Gu * sizeof(real));
        }
        if (s > 0 && FN(fusenn_gemm_with_packed_b)(&p->packed[0], m, 1,
                                                   FN(rnn_at)(p, p->dP, Gu, r0, t),
                                                   (ptrdiff_t)(T * Gu), 1, p->Up[0], 1,
                                                   p->rows + r0 * w, (ptrdiff_t)w, NULL))
            return m;
    }
    return 0;
}

static int FN(lstm_param_grads)(const FN(rnn_pass) *p, real *dU, real *db, int nthreads)
{
    const size_t steps = p->n * p->d.T, u = p->d.u, Gu = 4 * u;
    FN(rnn_column_sums)(steps, Gu, p->dP, (ptrdiff_t)Gu, db, nthreads);
    return FN(fusenn_gemm)(u, Gu, steps, 1, p->h, 1, (ptrdiff_t)u, p->dP, (ptrdiff_t)Gu, 1, 0,
                           dU, (ptrdiff_t)Gu, 1, nthreads);
}

static const FN(rnn_cell) FN(lstm_cell) = {
    .gates = 4,
    .extras = 2,
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

static size_t FN(lstm_saved_bytes)(const FN(layer) *layer, size_t n)
{
    return FN(rnn_saved_bytes)(layer, n, &FN(lstm_cell));
}

static size_t FN(lstm_work_bytes)(const FN(layer) *layer, size_t n)
{
    return FN(rnn_work_bytes)(layer, n, &FN(lstm_cell));
}

static int FN(lstm_forward)(const FN(layer) *layer, FN(forward_args) *a)
{
    return FN(rnn_forward)(layer, a, &FN(lstm_cell));
}

static int FN(lstm_backward)(const FN(layer) *layer, FN(backward_args) *a)
{
    return FN(rnn_backward)(layer, a, &FN(lstm_cell));
}

const FN(layer_kind) FN(lstm_kind) = {
    .name = "lstm",
    .attrs = lstm_attrs,
    .output_shape = FN(lstm_output_shape),
    .params = FN(lstm_params),
    .saved_bytes = FN(lstm_saved_bytes),
    .work_bytes = FN(lstm_work_bytes),
    .forward = FN(lstm_forward),
    .backward = FN(lstm_backward),
};
