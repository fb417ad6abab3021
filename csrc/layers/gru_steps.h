/*
 * gru_steps.h - the GRU's time loops for one ISA (a template included by
 * gru.c once per ISA; see recurrent.h).
 */
#include "rnn_vmath.h"

/* Gate k's value from its stored P (computed unless it is stored as is): in
 * place where the pre-activation is not kept, else in tmp. */
static inline RNN_ATTR real *RNN_ISA_FN(gru_gate)(const rnn_dims *d, int k, real *P, real *tmp,
                                                  int compute)
{
    const size_t u = d->u;
    const fusenn_activation act = gru_gate_act(d, k);
    real *a = rnn_keeps_z(act) ? tmp + k * u : P + k * u;
    if (compute || rnn_keeps_z(act))
        FN(activate_row)(act, u, P + k * u, a);
    return a;
}

/* The state after the step: z h_prev + (1 - z) c, or h_prev at a masked step
 * (h: scratch for the new state). */
static inline RNN_ATTR void RNN_ISA_FN(gru_step_out)(const FN(rnn_pass) *p, size_t r, size_t s,
                                                     size_t t, const real *restrict z,
                                                     const real *restrict c,
                                                     real *restrict h)
{
    const size_t u = p->d.u;
    const real *restrict h_prev = FN(rnn_h)(p, r, t);
    if (FN(rnn_real)(p, r, t)) {
#pragma GCC ivdep
        for (size_t j = 0; j < u; j++)
            h[j] = z[j] * h_prev[j] + (1 - z[j]) * c[j];
    } else {
        h = (real *)h_prev;
    }
    if (s + 1 < p->d.T)
        memcpy(FN(rnn_h)(p, r, rnn_time(&p->d, s + 1)), h, u * sizeof(real));
    real *out = FN(rnn_output)(p, r, s);
    if (out)
        memcpy(out, h, u * sizeof(real));
}

static RNN_ATTR size_t RNN_ISA_FN(gru_forward_rows)(const void *ctx, size_t r0, size_t r1)
{
    const FN(rnn_pass) *p = ctx;
    const rnn_dims *d = &p->d;
    const size_t T = d->T, u = d->u, Gu = 3 * u, m = r1 - r0, w = p->row_width;
    const ptrdiff_t ldh = (ptrdiff_t)p->h_width, ldr = (ptrdiff_t)u, ldg = (ptrdiff_t)Gu;
    const size_t hp_width = d->reset_after ? Gu : 2 * u; /* the products' row in scratch */
    for (size_t s = 0; s < T; s++) {
        const size_t t = rnn_time(d, s);
        if (s == 0)
            for (size_t r = r0; r < r1; r++)
                memset(FN(rnn_h)(p, r, t), 0, u * sizeof(real));
        /* h U (+ b'), or h U_zr */
        if (FN(fusenn_gemm_with_packed_b)(&p->packed[0], m, 1, FN(rnn_h)(p, r0, t),
                                          ldh, 1, p->Up[0], 0, p->rows + r0 * w, (ptrdiff_t)w,
                                          d->reset_after ? p->b + Gu : NULL))
            return m;
        for (size_t r = r0; r < r1; r++) {
            real *restrict P = FN(rnn_at)(p, p->gates, Gu, r, t);
            real *restrict hp = p->rows + r * w, *tmp = hp + hp_width;
#pragma GCC ivdep
            for (size_t j = 0; j < 2 * u; j++)
                P[j] += hp[j];
            const real *z = RNN_ISA_FN(gru_gate)(d, GRU_Z, P, tmp, 1);
            const real *restrict rg = RNN_ISA_FN(gru_gate)(d, GRU_R, P, tmp, 1);
            if (d->reset_after) {
                real *restrict Ph = P + 2 * u;
                const real *restrict hph = hp + 2 * u;
                real *restrict keep = FN(rnn_at)(p, p->extra[0], u, r, t);
#pragma GCC ivdep
                for (size_t j = 0; j < u; j++) {
                    Ph[j] += rg[j] * hph[j];
                    keep[j] = hph[j];
                }
                const real *c = RNN_ISA_FN(gru_gate)(d, GRU_H, P, tmp, 1);
                RNN_ISA_FN(gru_step_out)(p, r, s, t, z, c, hp);
            } else { /* r h, for the second product */
                const real *restrict h_prev = FN(rnn_h)(p, r, t);
                real *restrict rh = FN(rnn_at)(p, p->extra[0], u, r, t);
#pragma GCC ivdep
                for (size_t j = 0; j < u; j++)
                    rh[j] = rg[j] * h_prev[j];
            }
        }
        if (d->reset_after)
            continue;
        /* P_h += (r h) U_h, then c and the new state */
        if (FN(fusenn_gemm_with_packed_b)(&p->packed[1], m, 1,
                                          FN(rnn_at)(p, p->extra[0], u, r0, t), ldr, 1,
                                          p->Up[1], 1, FN(rnn_at)(p, p->gates, Gu, r0, t) + 2 * u,
                                          ldg, NULL))
            return m;
        for (size_t r = r0; r < r1; r++) {
            real *P = FN(rnn_at)(p, p->gates, Gu, r, t), *hp = p->rows + r * w;
            real *tmp = hp + hp_width;
            const real *z = RNN_ISA_FN(gru_gate)(d, GRU_Z, P, tmp, 0);
            const real *c = RNN_ISA_FN(gru_gate)(d, GRU_H, P, tmp, 1);
            RNN_ISA_FN(gru_step_out)(p, r, s, t, z, c, hp);
        }
    }
    return 0;
}

/* One sample's step backward, from dh (tmp: dh, then scratch): dz and dc, and
 * in dh the part of dh_prev that does not go through U; with reset_after
 * also dr, dc r and the sums of the dP row (without, dr needs d(r h) first:
 * gru_cell_backward_reset). */
static inline RNN_ATTR void RNN_ISA_FN(gru_cell_backward)(const FN(rnn_pass) *p, size_t r,
                                                          size_t t, real *tmp)
{
    const rnn_dims *d = &p->d;
    const size_t u = d->u, Gu = 3 * u;
    real *P = FN(rnn_at)(p, p->gates, Gu, r, t), *restrict dh = tmp, *A = tmp + u;
    const real *restrict h_prev = FN(rnn_h)(p, r, t);
    const real *restrict z = RNN_ISA_FN(gru_gate)(d, GRU_Z, P, A, 0);
    const real *restrict c = RNN_ISA_FN(gru_gate)(d, GRU_H, P, A, 0);
    real *dP = FN(rnn_at)(p, p->dP, p->dP_width, r, t);
    real *restrict dPz = dP, *restrict dPr = dP + u;
    real *restrict dPc = dP + (d->reset_after ? 3 : 2) * u;
#pragma GCC ivdep
    for (size_t j = 0; j < u; j++) {
        dPc[j] = dh[j] * (1 - z[j]);
        dPz[j] = dh[j] * (h_prev[j] - c[j]);
        dh[j] *= z[j];
    }
    RNN_ISA_FN(rnn_activate_backward)(d->act, u, rnn_keeps_z(d->act) ? P + 2 * u : NULL, c, dPc, dPc);
    RNN_ISA_FN(rnn_activate_backward)(d->rec, u, rnn_keeps_z(d->rec) ? P : NULL, z, dPz, dPz);
    if (!d->reset_after)
        return;
    const real *restrict rg = RNN_ISA_FN(gru_gate)(d, GRU_R, P, A, 0);
    const real *restrict hph = FN(rnn_at)(p, p->extra[0], u, r, t);
    real *restrict dPcr = dP + 2 * u;
#pragma GCC ivdep
    for (size_t j = 0; j < u; j++) {
        dPr[j] = dPc[j] * hph[j];
        dPcr[j] = dPc[j] * rg[j];
    }
    RNN_ISA_FN(rnn_activate_backward)(d->rec, u, rnn_keeps_z(d->rec) ? P + u : NULL, rg, dPr, dPr);
    double *restrict sums = p->sums + r * p->dP_width;
#pragma GCC ivdep
    for (size_t j = 0; j < 4 * u; j++)
        sums[j] += dP[j];
}

/* reset_after = 0: dr from d(r h) = dc U_h^T (drh), dh's part r d(r h), and
 * the sums of the dP row. */
static inline RNN_ATTR void RNN_ISA_FN(gru_cell_backward_reset)(const FN(rnn_pass) *p,
                                                                size_t r, size_t t, real *tmp)
{
    const rnn_dims *d = &p->d;
    const size_t u = d->u, Gu = 3 * u;
    real *P = FN(rnn_at)(p, p->gates, Gu, r, t), *restrict dh = tmp, *A = tmp + u;
    const real *restrict drh = tmp + 4 * u;
    const real *restrict h_prev = FN(rnn_h)(p, r, t);
    const real *restrict rg = RNN_ISA_FN(gru_gate)(d, GRU_R, P, A, 0);
    real *dP = FN(rnn_at)(p, p->dP, Gu, r, t), *restrict dPr = dP + u;
#pragma GCC ivdep
    for (size_t j = 0; j < u; j++) {
        dPr[j] = drh[j] * h_prev[j];
        dh[j] += drh[j] * rg[j];
    }
    RNN_ISA_FN(rnn_activate_backward)(d->rec, u, rnn_keeps_z(d->rec) ? P + u : NULL, rg, dPr, dPr);
    double *restrict sums = p->sums + r * Gu;
#pragma GCC ivdep
    for (size_t j = 0; j < Gu; j++)
        sums[j] += dP[j];
}

static RNN_ATTR size_t RNN_ISA_FN(gru_backward_rows)(const void *ctx, size_t r0, size_t r1)
{
    const FN(rnn_pass) *p = ctx;
    const rnn_dims *d = &p->d;
    const size_t T = d->T, u = d->u, m = r1 - r0, w = p->row_width, wd = p->dP_width;
    const ptrdiff_t ld = (ptrdiff_t)wd;
    for (size_t r = r0; r < r1; r++) { /* dh of the last state */
        FN(rnn_last_dh)(p, r, p->rows + r * w);
        memset(p->sums + r * wd, 0, wd * sizeof(double));
    }
    for (size_t s = T; s-- > 0;) {
        const size_t t = rnn_time(d, s);
        for (size_t r = r0; r < r1; r++) {
            real *tmp = p->rows + r * w;
            if (d->return_sequences) {
                const real *dy = p->dy + (r * T + s) * u;
#pragma GCC ivdep
                for (size_t j = 0; j < u; j++)
                    tmp[j] += dy[j];
            }
            if (FN(rnn_real)(p, r, t)) /* else dh carries over */
                RNN_ISA_FN(gru_cell_backward)(p, r, t, tmp);
            else
                memset(FN(rnn_at)(p, p->dP, wd, r, t), 0, wd * sizeof(real));
        }
        if (d->reset_after) { /* dh += [dz, dr, dc r] U^T */
            if (s > 0 && FN(fusenn_gemm_with_packed_b)(&p->packed[0], m, 1,
                                                       FN(rnn_at)(p, p->dP, wd, r0, t), ld, 1,
                                                       p->Up[0], 1, p->rows + r0 * w,
                                                       (ptrdiff_t)w, NULL))
                return m;
            continue;
        }
        /* d(r h) = dc U_h^T; then dr, and dh += [dz, dr] U_zr^T */
        if (FN(fusenn_gemm_with_packed_b)(&p->packed[0], m, 1,
                                          FN(rnn_at)(p, p->dP, wd, r0, t) + 2 * u, ld, 1,
                                          p->Up[0], 0, p->rows + r0 * w + 4 * u, (ptrdiff_t)w,
                                          NULL))
            return m;
        for (size_t r = r0; r < r1; r++)
            if (FN(rnn_real)(p, r, t))
                RNN_ISA_FN(gru_cell_backward_reset)(p, r, t, p->rows + r * w);
        if (s > 0 && FN(fusenn_gemm_with_packed_b)(&p->packed[1], m, 1,
                                                   FN(rnn_at)(p, p->dP, wd, r0, t), ld, 1,
                                                   p->Up[1], 1, p->rows + r0 * w, (ptrdiff_t)w,
                                                   NULL))
            return m;
    }
    return 0;
}

#undef RNN_ISA
#undef RNN_ATTR
#undef RNN_VBYTES
