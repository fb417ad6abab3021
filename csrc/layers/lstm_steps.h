/*
 * lstm_steps.h - the LSTM's time loops for one ISA (a template included by
 * lstm.c once per ISA; see recurrent.h).
 */
#include "rnn_vmath.h"

/* The values of the four gates of a step stored at P (in place where the
 * pre-activation is not kept, else into tmp); a[k] points at gate k's. */
static inline RNN_ATTR void RNN_ISA_FN(lstm_gate_values)(const rnn_dims *d, real *P, real *tmp,
                                                         real **a, int compute)
{
    const size_t u = d->u;
    for (int k = 0; k < 4; k++) {
        const fusenn_activation act = lstm_gate_act(d, k);
        a[k] = rnn_keeps_z(act) ? tmp + k * u : P + k * u;
        if (compute || rnn_keeps_z(act))
            FN(activate_row)(act, u, P + k * u, a[k]);
    }
}

/* One sample's step forward from its pre-activations P: the gates, c, act(c)
 * (kept in c_after, or c where act' needs it) and the new state h (into
 * tmp, which holds 6u: kept gates' values, c, h). */
static inline RNN_ATTR void RNN_ISA_FN(lstm_cell_forward)(const rnn_dims *d, real *P,
                                                          const real *restrict c_prev,
                                                          real *restrict c_after, real *tmp)
{
    const size_t u = d->u;
    real *a[4];
    RNN_ISA_FN(lstm_gate_values)(d, P, tmp, a, 1);
    real *restrict cn = tmp + 4 * u, *restrict h = tmp + 5 * u;
    const real *restrict i = a[LSTM_I], *restrict f = a[LSTM_F], *restrict g = a[LSTM_G];
    const real *restrict o = a[LSTM_O];
#pragma GCC ivdep
    for (size_t j = 0; j < u; j++)
        cn[j] = f[j] * c_prev[j] + i[j] * g[j];
    FN(activate_row)(d->act, u, cn, h);
    if (rnn_keeps_z(d->act))
        memcpy(c_after, cn, u * sizeof(real));
#pragma GCC ivdep
    for (size_t j = 0; j < u; j++) {
        if (!rnn_keeps_z(d->act))
            c_after[j] = h[j];
        h[j] *= o[j];
    }
}

static RNN_ATTR size_t RNN_ISA_FN(lstm_forward_rows)(const void *ctx, size_t r0, size_t r1)
{
    const FN(rnn_pass) *p = ctx;
    const rnn_dims *d = &p->d;
    const size_t T = d->T, u = d->u, Gu = 4 * u, m = r1 - r0;
    real *const c_before = p->extra[0], *const c_after = p->extra[1];
    for (size_t s = 0; s < T; s++) {
        const size_t t = rnn_time(d, s);
        if (s == 0) { /* h_0 = c_0 = 0, and P + 0 U is P */
            for (size_t r = r0; r < r1; r++) {
                memset(FN(rnn_h)(p, r, t), 0, u * sizeof(real));
                memset(FN(rnn_at)(p, c_before, u, r, t), 0, u * sizeof(real));
            }
        } else if (FN(fusenn_gemm_with_packed_b)(&p->packed[0], m, 1,
                                                 FN(rnn_h)(p, r0, t),
                                                 (ptrdiff_t)p->h_width, 1, p->Up[0], 1,
                                                 FN(rnn_at)(p, p->gates, Gu, r0, t),
                                                 (ptrdiff_t)Gu, NULL)) {
            return m;
        }
        for (size_t r = r0; r < r1; r++) {
            real *tmp = p->rows + r * p->row_width, *cn = tmp + Gu, *h = tmp + 5 * u;
            const real *c_prev = FN(rnn_at)(p, c_before, u, r, t);
            const real *h_prev = FN(rnn_h)(p, r, t);
            RNN_ISA_FN(lstm_cell_forward)(d, FN(rnn_at)(p, p->gates, Gu, r, t), c_prev,
                                          FN(rnn_at)(p, c_after, u, r, t), tmp);
            const int real_step = FN(rnn_real)(p, r, t);
            if (s + 1 < T) {
                const size_t next = rnn_time(d, s + 1);
                memcpy(FN(rnn_h)(p, r, next), real_step ? h : h_prev,
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

/* One sample's step backward: dP of the step (and its sums) from dh and dc
 * (tmp: dh, dc, then scratch), dc of the step before, and dh = 0, to which
 * the product adds dP U^T. */
static inline RNN_ATTR void RNN_ISA_FN(lstm_cell_backward)(const rnn_dims *d, real *P,
                                                           const real *restrict c_prev,
                                                           const real *c_after, real *tmp,
                                                           real *restrict dP,
                                                           double *restrict sums)
{
    const size_t u = d->u;
    real *restrict dh = tmp, *restrict dc = tmp + u, *restrict dcn = tmp + 7 * u, *a[4];
    const real *restrict tc = c_after;
    RNN_ISA_FN(lstm_gate_values)(d, P, tmp + 2 * u, a, 0);
    const int keep_c = rnn_keeps_z(d->act);
    if (keep_c) {
        FN(activate_row)(d->act, u, c_after, tmp + 6 * u);
        tc = tmp + 6 * u;
    }
    const real *restrict i = a[LSTM_I], *restrict f = a[LSTM_F], *restrict g = a[LSTM_G];
    const real *restrict o = a[LSTM_O];
#pragma GCC ivdep
    for (size_t j = 0; j < u; j++)
        dcn[j] = dh[j] * o[j];
    RNN_ISA_FN(rnn_activate_backward)(d->act, u, keep_c ? c_after : NULL, tc, dcn, dcn);
    real *restrict dPi = dP, *restrict dPf = dP + u, *restrict dPg = dP + 2 * u;
    real *restrict dPo = dP + 3 * u;
#pragma GCC ivdep
    for (size_t j = 0; j < u; j++) {
        const real dc_new = dcn[j] + dc[j];
        dPi[j] = dc_new * g[j];
        dPf[j] = dc_new * c_prev[j];
        dPg[j] = dc_new * i[j];
        dPo[j] = dh[j] * tc[j];
        dc[j] = dc_new * f[j];
        dh[j] = 0;
    }
    for (int k = 0; k < 4; k++) {
        const fusenn_activation act = lstm_gate_act(d, k);
        RNN_ISA_FN(rnn_activate_backward)(act, u, rnn_keeps_z(act) ? P + k * u : NULL, a[k],
                                  dP + k * u, dP + k * u);
    }
#pragma GCC ivdep
    for (size_t j = 0; j < 4 * u; j++)
        sums[j] += dP[j];
}

static RNN_ATTR size_t RNN_ISA_FN(lstm_backward_rows)(const void *ctx, size_t r0, size_t r1)
{
    const FN(rnn_pass) *p = ctx;
    const rnn_dims *d = &p->d;
    const size_t T = d->T, u = d->u, Gu = 4 * u, m = r1 - r0, w = p->row_width;
    for (size_t r = r0; r < r1; r++) { /* dh of the last state, dc = 0 */
        real *dh = p->rows + r * w;
        FN(rnn_last_dh)(p, r, dh);
        memset(dh + u, 0, u * sizeof(real));
        memset(p->sums + r * Gu, 0, Gu * sizeof(double));
    }
    for (size_t s = T; s-- > 0;) {
        const size_t t = rnn_time(d, s);
        for (size_t r = r0; r < r1; r++) {
            real *tmp = p->rows + r * w, *dP = FN(rnn_at)(p, p->dP, Gu, r, t);
            if (d->return_sequences) {
                const real *dy = p->dy + (r * T + s) * u;
#pragma GCC ivdep
                for (size_t j = 0; j < u; j++)
                    tmp[j] += dy[j];
            }
            if (FN(rnn_real)(p, r, t))
                RNN_ISA_FN(lstm_cell_backward)(d, FN(rnn_at)(p, p->gates, Gu, r, t),
                                               FN(rnn_at)(p, p->extra[0], u, r, t),
                                               FN(rnn_at)(p, p->extra[1], u, r, t), tmp, dP,
                                               p->sums + r * Gu);
            else /* dh and dc carry over */
                memset(dP, 0, Gu * sizeof(real));
        }
        if (s > 0 && FN(fusenn_gemm_with_packed_b)(&p->packed[0], m, 1,
                                                   FN(rnn_at)(p, p->dP, Gu, r0, t),
                                                   (ptrdiff_t)Gu, 1, p->Up[0], 1,
                                                   p->rows + r0 * w, (ptrdiff_t)w, NULL))
            return m;
    }
    return 0;
}

#undef RNN_ISA
#undef RNN_ATTR
#undef RNN_VBYTES
