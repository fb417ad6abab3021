/*
 * rnn_vmath.h - the gates' activations over rows, for the time loops of one
 * ISA (included by each <kind>_steps.h, with RNN_ISA, RNN_ATTR and
 * RNN_VBYTES set; see recurrent.h): float32 sigmoid and tanh in vectors, as
 * libm's scalar expf and tanhf were a third of an LSTM step; every other
 * activation, and float64, as the other layers compute them.
 * Every element, the row's tail too (through a padded vector), goes through
 * the same operations, so a value's bits depend only on the ISA, never on
 * where it sits in a row or on the thread count.
 *
 * exp(x), x <= 0 (all these functions need): x = n ln 2 + r, |r| <= ln 2 / 2,
 * exp(r) by its Taylor polynomial of degree 7 (truncation under 1e-8
 * relative), times 2^n built in the exponent bits; x is clamped at -87 so
 * that 2^n stays a normal number (exp(-87) = 1.6e-38 stands for anything
 * smaller). Then, as FN(sigmoid_pair) does, without cancellation:
 *   sigmoid(z) = 1 / (1 + e) for z >= 0, e / (1 + e) below, e = exp(-|z|)
 *   tanh(z) = sign(z) (1 - e) / (1 + e), e = exp(-2 |z|), for |z| >= 0.35,
 *             below by its Taylor series to z^13 (truncation under 1e-9)
 * Measured against libm over [-20, 20]: at most 3 ulp. NaN stays NaN (the
 * clamps keep what they do not compare below).
 */

#define VM_NAME(x) RNN_ISA_FN(x)
#define VM_VBYTES RNN_VBYTES
#define VM_ATTR RNN_ATTR

#if defined(FUSENN_DTYPE_F32)
typedef float VM_NAME(vec) __attribute__((vector_size(VM_VBYTES)));
typedef int32_t VM_NAME(ivec) __attribute__((vector_size(VM_VBYTES)));

/* yes where mask (a comparison's all-ones lanes), else no (C has no vector ?:) */
static inline VM_ATTR VM_NAME(vec) VM_NAME(select)(VM_NAME(ivec) mask, VM_NAME(vec) yes,
                                                   VM_NAME(vec) no)
{
    typedef VM_NAME(ivec) ivec;
    return (VM_NAME(vec))(((ivec)yes & mask) | ((ivec)no & ~mask));
}

/* exp(x) for x <= 0 (or NaN) */
static inline VM_ATTR VM_NAME(vec) VM_NAME(exp_neg)(VM_NAME(vec) x)
{
    typedef VM_NAME(vec) vec;
    typedef VM_NAME(ivec) ivec;
    const vec zero = {0}, lo = zero - 87.0f;
    x = VM_NAME(select)(x < lo, lo, x);
    const vec shifter = zero + 12582912.0f; /* 1.5 2^23: adding it rounds to an integer */
    const vec n = (x * 1.44269504088896341f + shifter) - shifter;
    vec r = x - n * 0.693359375f; /* ln 2 in two parts: the first times n is exact */
    r = r - n * -2.12194440e-4f;
    vec p = r * (1.0f / 5040) + (1.0f / 720);
    p = p * r + (1.0f / 120);
    p = p * r + (1.0f / 24);
    p = p * r + (1.0f / 6);
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    const ivec scale = (__builtin_convertvector(n, ivec) + 127) << 23;
    return p * (vec)scale;
}

static inline VM_ATTR VM_NAME(vec) VM_NAME(sigmoid_vec)(VM_NAME(vec) z)
{
    typedef VM_NAME(vec) vec;
    const vec zero = {0};
    const vec e = VM_NAME(exp_neg)(VM_NAME(select)(z < zero, z, -z));
    const vec s = 1.0f / (1.0f + e);
    return VM_NAME(select)(z >= zero, s, e * s);
}

static inline VM_ATTR VM_NAME(vec) VM_NAME(tanh_vec)(VM_NAME(vec) z)
{
    typedef VM_NAME(vec) vec;
    const vec zero = {0};
    const vec az = VM_NAME(select)(z < zero, -z, z);
    const vec e = VM_NAME(exp_neg)(-2.0f * az);
    const vec big = (1.0f - e) / (1.0f + e);
    const vec z2 = z * z;
    vec p = z2 * (21844.0f / 6081075) + (-1382.0f / 155925);
    p = p * z2 + (62.0f / 2835);
    p = p * z2 + (-17.0f / 315);
    p = p * z2 + (2.0f / 15);
    p = p * z2 + (-1.0f / 3);
    const vec small = z + (z * z2) * p;
    return VM_NAME(select)(az < zero + 0.35f, small, VM_NAME(select)(z < zero, -big, big));
}

/* a[j] = f(z[j]) for j < d; a may be z */
#define VM_ROW(fn)                                                                      \
    static VM_ATTR void VM_NAME(fn##_row)(size_t d, const float *z, float *a)            \
    {                                                                                    \
        typedef VM_NAME(vec) vec;                                                        \
        enum { LANES = VM_VBYTES / sizeof(float) };                                      \
        size_t j = 0;                                                                    \
        for (; j + LANES <= d; j += LANES) {                                             \
            vec v;                                                                       \
            memcpy(&v, z + j, sizeof v);                                                 \
            v = VM_NAME(fn##_vec)(v);                                                    \
            memcpy(a + j, &v, sizeof v);                                                 \
        }                                                                                \
        if (j < d) { /* the tail, padded with zeros */                                   \
            vec v = {0};                                                                 \
            memcpy(&v, z + j, (d - j) * sizeof(float));                                  \
            v = VM_NAME(fn##_vec)(v);                                                    \
            memcpy(a + j, &v, (d - j) * sizeof(float));                                  \
        }                                                                                \
    }
VM_ROW(sigmoid)
VM_ROW(tanh)
#undef VM_ROW
#endif

/* a[j] = act(z[j]) for j < d (a may be z) */
static inline VM_ATTR void VM_NAME(rnn_activate)(fusenn_activation act, size_t d, const real *z,
                                                 real *a)
{
#if defined(FUSENN_DTYPE_F32)
    if (act == FUSENN_ACT_SIGMOID) {
        VM_NAME(sigmoid_row)(d, z, a);
        return;
    }
    if (act == FUSENN_ACT_TANH) {
        VM_NAME(tanh_row)(d, z, a);
        return;
    }
#endif
    FN(activate_row)(act, d, z, a);
}

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
#undef VM_VBYTES
#undef VM_ATTR
