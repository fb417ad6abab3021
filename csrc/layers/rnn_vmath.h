/*
 * rnn_vmath.h - the gates' activation derivatives over rows, for the time
 * loops of one ISA (included by each <kind>_steps.h, with RNN_ISA, RNN_ATTR
 * and RNN_VBYTES set; see recurrent.h): sigmoid's and tanh's from their
 * values, in this ISA's vectors. The activations themselves are
 * FN(activate_row)'s, as in every other layer (float32 sigmoid and tanh in
 * vectors: vmath.h).
 */

#define VM_NAME(x) RNN_ISA_FN(x)
#define VM_ATTR RNN_ATTR

/* dz[j] = da[j] act'(z[j]) for j < d, through a = act(z) (z where
 * rnn_keeps_z(act), else it may be NULL); dz may be da. Sigmoid and tanh in
 * this ISA's vectors, the others as FN(activate_backward_row). */
static inline VM_ATTR void VM_NAME(rnn_activate_backward)(fusenn_activation act, size_t d,
                                                          const real *z, const real *a,
                                                          const real *da, real *dz)
{
    if (act == FUSENN_ACT_SIGMOID) {
#pragma GCC ivdep
        for (size_t j = 0; j < d; j++)
            dz[j] = da[j] * a[j] * (1 - a[j]);
    } else if (act == FUSENN_ACT_TANH) {
#pragma GCC ivdep
        for (size_t j = 0; j < d; j++)
            dz[j] = da[j] * (1 - a[j] * a[j]);
    } else {
        FN(activate_backward_row)(act, d, z, a, da, dz);
    }
}

#undef VM_NAME
#undef VM_ATTR
