/*
 * simple_rnn_steps.h - SimpleRNN's time loops for one ISA (a template included
 * by simple_rnn.c once per ISA; see recurrent.h).
 */
#include "rnn_vmath.h"

static RNN_ATTR size_t RNN_ISA_FN(simple_rnn_forward_rows)(const void *ctx, size_t r0,
                                                           size_t r1)
{
    const FN(rnn_pass) *p = ctx;
    const rnn_dims *d = &p->d;
    const size_t T = d->T, u = d->u, m = r1 - r0;
    const ptrdiff_t ld = (ptrdiff_t)u, ldh = (ptrdiff_t)p->h_width;
    const int keep_z = rnn_keeps_z(d->act);
    for (size_t s = 0; s < T; s++) {
        const size_t t = rnn_time(d, s);
        if (s == 0) /* h_0 = 0, and P + 0 U is P */
            for (size_t r = r0; r < r1; r++)
                memset(FN(rnn_h)(p, r, t), 0, u * sizeof(real));
        else if (FN(fusenn_gemm_with_packed_b)(&p->packed[0], m, 1, FN(rnn_h)(p, r0, t),
                                               ldh, 1, p->Up[0], 1,
                                               FN(rnn_at)(p, p->gates, u, r0, t), ld, NULL))
            return m;
        for (size_t r = r0; r < r1; r++) {
            real *z = FN(rnn_at)(p, p->gates, u, r, t);
            const real *h_prev = FN(rnn_h)(p, r, t);
            real *a = keep_z ? p->rows + r * p->row_width : z;
            FN(activate_row)(d->act, u, z, a);
            const real *h = FN(rnn_real)(p, r, t) ? a : h_prev;
            if (s + 1 < T)
                memcpy(FN(rnn_h)(p, r, rnn_time(d, s + 1)), h, u * sizeof(real));
            real *out = FN(rnn_output)(p, r, s);
            if (out)
                memcpy(out, h, u * sizeof(real));
        }
    }
    return 0;
}

/* One sample's step backward: dz = dh act'(z) into dP (and its sums); dh = 0,
 * to which the product adds dz U^T. */
static inline RNN_ATTR void RNN_ISA_FN(simple_rnn_cell_backward)(const rnn_dims *d,
                                                                 const real *z, real *dh,
                                                                 real *a_tmp, real *dz,
                                                                 double *sums)
{
    const size_t u = d->u;
    const int keep_z = rnn_keeps_z(d->act);
    const real *a = z;
    if (keep_z) {
        FN(activate_row)(d->act, u, z, a_tmp);
        a = a_tmp;
    }
    RNN_ISA_FN(rnn_activate_backward)(d->act, u, keep_z ? z : NULL, a, dh, dz);
#pragma GCC ivdep
    for (size_t j = 0; j < u; j++) {
        sums[j] += dz[j];
        dh[j] = 0;
    }
}

static RNN_ATTR size_t RNN_ISA_FN(simple_rnn_backward_rows)(const void *ctx, size_t r0,
                                                            size_t r1)
{
    const FN(rnn_pass) *p = ctx;
    const rnn_dims *d = &p->d;
    const size_t T = d->T, u = d->u, m = r1 - r0, w = p->row_width;
    const ptrdiff_t ld = (ptrdiff_t)u;
    for (size_t r = r0; r < r1; r++) {
        FN(rnn_last_dh)(p, r, p->rows + r * w);
        memset(p->sums + r * u, 0, u * sizeof(double));
    }
    for (size_t s = T; s-- > 0;) {
        const size_t t = rnn_time(d, s);
        for (size_t r = r0; r < r1; r++) {
            real *dh = p->rows + r * w, *dz = FN(rnn_at)(p, p->dP, u, r, t);
            if (d->return_sequences) {
                const real *dy = p->dy + (r * T + s) * u;
#pragma GCC ivdep
                for (size_t j = 0; j < u; j++)
                    dh[j] += dy[j];
            }
            if (FN(rnn_real)(p, r, t))
                RNN_ISA_FN(simple_rnn_cell_backward)(d, FN(rnn_at)(p, p->gates, u, r, t), dh,
                                                     dh + u, dz, p->sums + r * u);
            else /* dh carries over */
                memset(dz, 0, u * sizeof(real));
        }
        if (s > 0 && FN(fusenn_gemm_with_packed_b)(&p->packed[0], m, 1,
                                                   FN(rnn_at)(p, p->dP, u, r0, t), ld, 1,
                                                   p->Up[0], 1, p->rows + r0 * w,
                                                   (ptrdiff_t)w, NULL))
            return m;
    }
    return 0;
}

#undef RNN_ISA
#undef RNN_ATTR
#undef RNN_VBYTES
