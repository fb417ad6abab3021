/*
 * gru.c - Keras's GRU, gates in the order z, r, h (the candidate, written c):
 *   z = rec(x W_z + h U_z + b_z),  r = rec(x W_r + h U_r + b_r)
 *   reset_after (bias (2, 3u): input and recurrent):
 *     c = act(x W_h + b_h + r (h U_h + b'_h))     (one product per step)
 *   reset_after = 0 (bias (3u)):
 *     c = act(x W_h + b_h + (r h) U_h)            (two: h U_zr, then (r h) U_h)
 *   h_new = z h + (1 - z) c
 * The time loop and its layout are recurrent.h's. Saved per step: the three
 * gates' values (pre-activations where the derivative needs them), h before
 * the step, and extra[0]: h U_h + b'_h (reset_after) or r h (not).
 * The backward of reset_after keeps two gradients: dP of the input side
 * [dz, dr, dc] (for dW, dX and the input bias) and of the recurrent side
 * [dz, dr, dc r] (dP2: for dU, dh and the recurrent bias).
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

/* Gate k's value from its stored P (computed unless it is stored as is): in
 * place where the pre-activation is not kept, else in tmp. */
static real *FN(gru_gate)(const rnn_dims *d, int k, real *P, real *tmp, int compute)
{
    const size_t u = d->u;
    const fusenn_activation act = gru_gate_act(d, k);
    real *a = rnn_keeps_z(act) ? tmp + k * u : P + k * u;
    if (compute || rnn_keeps_z(act))
        FN(rnn_activate)(act, u, P + k * u, a);
    return a;
}

/* The state after the step: z h_prev + (1 - z) c, or h_prev at a masked step. */
static void FN(gru_step_out)(const FN(rnn_pass) *p, size_t r, size_t s, size_t t,
                             const real *z, const real *c, real *h)
{
    const size_t u = p->d.u;
    const real *h_prev = FN(rnn_at)(p, p->h, u, r, t);
    if (FN(rnn_real)(p, r, t))
        for (size_t j = 0; j < u; j++)
            h[j] = z[j] * h_prev[j] + (1 - z[j]) * c[j];
    else
        h = (real *)h_prev;
    if (s + 1 < p->d.T)
        memcpy(FN(rnn_at)(p, p->h, u, r, rnn_time(&p->d, s + 1)), h, u * sizeof(real));
    real *out = FN(rnn_output)(p, r, s);
    if (out)
        memcpy(out, h, u * sizeof(real));
}

static size_t FN(gru_forward_rows)(const void *ctx, size_t r0, size_t r1)
{
    const FN(rnn_pass) *p = ctx;
    const rnn_dims *d = &p->d;
    const size_t T = d->T, u = d->u, Gu = 3 * u, m = r1 - r0, w = p->row_width;
    const ptrdiff_t ldh = (ptrdiff_t)(T * u), ldg = (ptrdiff_t)(T * Gu);
    const size_t hp_width = d->reset_after ? Gu : 2 * u; /* the products' row in scratch */
    for (size_t s = 0; s < T; s++) {
        const size_t t = rnn_time(d, s);
        if (s == 0)
            for (size_t r = r0; r < r1; r++)
                memset(FN(rnn_at)(p, p->h, u, r, t), 0, u * sizeof(real));
        /* h U (+ b'), or h U_zr */
        if (FN(fusenn_gemm_with_packed_b)(&p->packed[0], m, 1, FN(rnn_at)(p, p->h, u, r0, t),
                                          ldh, 1, p->Up[0], 0, p->rows + r0 * w, (ptrdiff_t)w,
                                          d->reset_after ? p->b + Gu : NULL))
            return m;
        for (size_t r = r0; r < r1; r++) {
            real *P = FN(rnn_at)(p, p->gates, Gu, r, t), *hp = p->rows + r * w;
            real *tmp = hp + hp_width;
            for (size_t j = 0; j < 2 * u; j++)
                P[j] += hp[j];
            const real *z = FN(gru_gate)(d, GRU_Z, P, tmp, 1);
            const real *rg = FN(gru_gate)(d, GRU_R, P, tmp, 1);
            if (d->reset_after) {
                real *Ph = P + 2 * u;
                const real *hph = hp + 2 * u;
                for (size_t j = 0; j < u; j++)
                    Ph[j] += rg[j] * hph[j];
                memcpy(FN(rnn_at)(p, p->extra[0], u, r, t), hph, u * sizeof(real));
                const real *c = FN(gru_gate)(d, GRU_H, P, tmp, 1);
                FN(gru_step_out)(p, r, s, t, z, c, hp);
            } else { /* r h, for the second product */
                const real *h_prev = FN(rnn_at)(p, p->h, u, r, t);
                real *rh = FN(rnn_at)(p, p->extra[0], u, r, t);
                for (size_t j = 0; j < u; j++)
                    rh[j] = rg[j] * h_prev[j];
            }
        }
        if (d->reset_after)
            continue;
        /* P_h += (r h) U_h, then c and the new state */
        if (FN(fusenn_gemm_with_packed_b)(&p->packed[1], m, 1,
                                          FN(rnn_at)(p, p->extra[0], u, r0, t), ldh, 1,
                                          p->Up[1], 1, FN(rnn_at)(p, p->gates, Gu, r0, t) + 2 * u,
                                          ldg, NULL))
            return m;
        for (size_t r = r0; r < r1; r++) {
            real *P = FN(rnn_at)(p, p->gates, Gu, r, t), *hp = p->rows + r * w;
            real *tmp = hp + hp_width;
            const real *z = FN(gru_gate)(d, GRU_Z, P, tmp, 0);
            const real *c = FN(gru_gate)(d, GRU_H, P, tmp, 1);
            FN(gru_step_out)(p, r, s, t, z, c, hp);
        }
    }
    return 0;
}

/* One sample's step backward, up to what needs d(r h) (reset_after = 0) or
 * completely (reset_after): dP (and dP2) of the step, and in dh the part of
 * dh_prev that does not go through U. */
static void FN(gru_cell_backward)(const FN(rnn_pass) *p, size_t r, size_t t, real *tmp)
{
    const rnn_dims *d = &p->d;
    const size_t u = d->u, Gu = 3 * u;
    real *P = FN(rnn_at)(p, p->gates, Gu, r, t), *dh = tmp, *A = tmp + u;
    const real *h_prev = FN(rnn_at)(p, p->h, u, r, t);
    const real *z = FN(gru_gate)(d, GRU_Z, P, A, 0), *c = FN(gru_gate)(d, GRU_H, P, A, 0);
    real *dP = FN(rnn_at)(p, p->dP, Gu, r, t), *dPz = dP, *dPr = dP + u, *dPc = dP + 2 * u;
    for (size_t j = 0; j < u; j++) {
        dPc[j] = dh[j] * (1 - z[j]);
        dPz[j] = dh[j] * (h_prev[j] - c[j]);
        dh[j] *= z[j];
    }
    FN(activate_backward_row)(d->act, u, rnn_keeps_z(d->act) ? P + 2 * u : NULL, c, dPc, dPc);
    FN(activate_backward_row)(d->rec, u, rnn_keeps_z(d->rec) ? P : NULL, z, dPz, dPz);
    if (!d->reset_after)
        return;
    const real *rg = FN(gru_gate)(d, GRU_R, P, A, 0), *hph = FN(rnn_at)(p, p->extra[0], u, r, t);
    real *dP2 = FN(rnn_at)(p, p->dP2, Gu, r, t);
    for (size_t j = 0; j < u; j++) {
        dPr[j] = dPc[j] * hph[j];
        dP2[2 * u + j] = dPc[j] * rg[j];
    }
    FN(activate_backward_row)(d->rec, u, rnn_keeps_z(d->rec) ? P + u : NULL, rg, dPr, dPr);
    memcpy(dP2, dP, 2 * u * sizeof(real));
}

/* reset_after = 0: dr from d(r h) = dc U_h^T (drh), and dh's part r d(r h). */
static void FN(gru_cell_backward_reset)(const FN(rnn_pass) *p, size_t r, size_t t, real *tmp)
{
    const rnn_dims *d = &p->d;
    const size_t u = d->u, Gu = 3 * u;
    real *P = FN(rnn_at)(p, p->gates, Gu, r, t), *dh = tmp, *A = tmp + u, *drh = tmp + 4 * u;
    const real *h_prev = FN(rnn_at)(p, p->h, u, r, t);
    const real *rg = FN(gru_gate)(d, GRU_R, P, A, 0);
    real *dPr = FN(rnn_at)(p, p->dP, Gu, r, t) + u;
    for (size_t j = 0; j < u; j++) {
        dPr[j] = drh[j] * h_prev[j];
        dh[j] += drh[j] * rg[j];
    }
    FN(activate_backward_row)(d->rec, u, rnn_keeps_z(d->rec) ? P + u : NULL, rg, dPr, dPr);
}

static size_t FN(gru_backward_rows)(const void *ctx, size_t r0, size_t r1)
{
    const FN(rnn_pass) *p = ctx;
    const rnn_dims *d = &p->d;
    const size_t T = d->T, u = d->u, Gu = 3 * u, m = r1 - r0, w = p->row_width;
    const ptrdiff_t ldg = (ptrdiff_t)(T * Gu);
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
            real *tmp = p->rows + r * w;
            if (d->return_sequences) {
                const real *dy = p->dy + (r * T + s) * u;
                for (size_t j = 0; j < u; j++)
                    tmp[j] += dy[j];
            }
            if (FN(rnn_real)(p, r, t)) {
                FN(gru_cell_backward)(p, r, t, tmp);
            } else { /* dh carries over */
                memset(FN(rnn_at)(p, p->dP, Gu, r, t), 0, Gu * sizeof(real));
                if (d->reset_after)
                    memset(FN(rnn_at)(p, p->dP2, Gu, r, t), 0, Gu * sizeof(real));
            }
        }
        if (d->reset_after) { /* dh += dP2 U^T */
            if (s > 0 && FN(fusenn_gemm_with_packed_b)(&p->packed[0], m, 1,
                                                       FN(rnn_at)(p, p->dP2, Gu, r0, t), ldg,
                                                       1, p->Up[0], 1, p->rows + r0 * w,
                                                       (ptrdiff_t)w, NULL))
                return m;
            continue;
        }
        /* d(r h) = dc U_h^T; then dr, and dh += [dz, dr] U_zr^T */
        if (FN(fusenn_gemm_with_packed_b)(&p->packed[0], m, 1,
                                          FN(rnn_at)(p, p->dP, Gu, r0, t) + 2 * u, ldg, 1,
                                          p->Up[0], 0, p->rows + r0 * w + 4 * u, (ptrdiff_t)w,
                                          NULL))
            return m;
        for (size_t r = r0; r < r1; r++)
            if (FN(rnn_real)(p, r, t))
                FN(gru_cell_backward_reset)(p, r, t, p->rows + r * w);
        if (s > 0 && FN(fusenn_gemm_with_packed_b)(&p->packed[1], m, 1,
                                                   FN(rnn_at)(p, p->dP, Gu, r0, t), ldg, 1,
                                                   p->Up[1], 1, p->rows + r0 * w, (ptrdiff_t)w,
                                                   NULL))
            return m;
    }
    return 0;
}

static int FN(gru_param_grads)(const FN(rnn_pass) *p, real *dU, real *db, int nthreads)
{
    const size_t steps = p->n * p->d.T, u = p->d.u, Gu = 3 * u;
    const ptrdiff_t ld = (ptrdiff_t)Gu;
    FN(rnn_column_sums)(steps, Gu, p->dP, ld, db, nthreads);
    if (p->d.reset_after) { /* the recurrent side: dU = H^T dP2, its bias the second row */
        FN(rnn_column_sums)(steps, Gu, p->dP2, ld, db + Gu, nthreads);
        return FN(fusenn_gemm)(u, Gu, steps, 1, p->h, 1, (ptrdiff_t)u, p->dP2, ld, 1, 0, dU, ld,
                               1, nthreads);
    }
    /* dU_zr = H^T dP_zr, dU_h = (r H)^T dP_c */
    int rc = FN(fusenn_gemm)(u, 2 * u, steps, 1, p->h, 1, (ptrdiff_t)u, p->dP, ld, 1, 0, dU,
                             ld, 1, nthreads);
    if (rc != FUSENN_OK)
        return rc;
    return FN(fusenn_gemm)(u, u, steps, 1, p->extra[0], 1, (ptrdiff_t)u, p->dP + 2 * u, ld, 1, 0,
                           dU + 2 * u, ld, 1, nthreads);
}

static const FN(rnn_cell) FN(gru_cell) = {
    .gates = 3,
    .extras = 1,
    .second_dP = 1,
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

static size_t FN(gru_saved_bytes)(const FN(layer) *layer, size_t n)
{
    return FN(rnn_saved_bytes)(layer, n, &FN(gru_cell));
}

static size_t FN(gru_work_bytes)(const FN(layer) *layer, size_t n)
{
    return FN(rnn_work_bytes)(layer, n, &FN(gru_cell));
}

static int FN(gru_forward)(const FN(layer) *layer, FN(forward_args) *a)
{
    return FN(rnn_forward)(layer, a, &FN(gru_cell));
}

static int FN(gru_backward)(const FN(layer) *layer, FN(backward_args) *a)
{
    return FN(rnn_backward)(layer, a, &FN(gru_cell));
}

const FN(layer_kind) FN(gru_kind) = {
    .name = "gru",
    .attrs = gru_attrs,
    .output_shape = FN(gru_output_shape),
    .params = FN(gru_params),
    .saved_bytes = FN(gru_saved_bytes),
    .work_bytes = FN(gru_work_bytes),
    .forward = FN(gru_forward),
    .backward = FN(gru_backward),
};
