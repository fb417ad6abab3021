/*
 * vmath.h - float32 sigmoid and tanh over a row, in one ISA's vectors: a
 * template that activations.c includes once per ISA, with VM_ISA (the name
 * suffix: generic, avx2, avx512), VM_ATTR (the functions' target) and
 * VM_VBYTES (vector bytes) defined. libm's exp and tanh, one element at a time
 * in double, cost 10-20 ns an element: more than the GEMM before them in a
 * tanh or sigmoid layer.
 * Every element, a row's tail too (through a padded vector), goes through the
 * same operations, so a value's bits depend only on the ISA, never on where
 * it sits in a row, on the thread count or on the layer that asks.
 *
 * exp(x), x <= 0 (all these functions need): x = n ln 2 + r, |r| <= ln 2 / 2,
 * exp(r) by its Taylor polynomial of degree 7 (truncation under 1e-8
 * relative), times 2^n in two exact halves, 2^(n/2) 2^(n - n/2), so that a
 * result below FLT_MIN rounds once to its subnormal (x is clamped at -104,
 * where exp(x) rounds to 0). Then, as FN(sigmoid_pair) does, without
 * cancellation:
 *   sigmoid(z) = 1 / (1 + e) for z >= 0, e / (1 + e) below, e = exp(-|z|)
 *   tanh(z) = sign(z) (1 - e) / (1 + e), e = exp(-2 |z|), for |z| >= 0.35,
 *             below by its Taylor series to z^13 (truncation under 1e-9);
 *             tanh is odd, so it is computed at |z| and takes z's sign bit
 *             (tanh(-0) = -0).
 * Against float64 NumPy over every float32 exponent (tests/test_activations.py):
 * at most 3 ulp. NaN stays NaN (the clamp keeps what it does not compare
 * below); +-inf give 0 or 1, and +-1.
 */

#define VM_PASTE_(a, b) a##_##b
#define VM_PASTE(a, b) VM_PASTE_(a, b)
#define VM_NAME(x) VM_PASTE(x, VM_ISA)

typedef float VM_NAME(vec) __attribute__((vector_size(VM_VBYTES)));
typedef int32_t VM_NAME(ivec) __attribute__((vector_size(VM_VBYTES)));
typedef uint32_t VM_NAME(uvec) __attribute__((vector_size(VM_VBYTES)));

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
    typedef VM_NAME(uvec) uvec;
    const vec zero = {0}, lo = zero - 104.0f;
    x = VM_NAME(select)(x < lo, lo, x);
    const vec shifter = zero + 12582912.0f; /* 1.5 2^23: adding it rounds to an integer */
    vec n = (x * 1.44269504088896341f + shifter) - shifter;
    vec r = x - n * 0.693359375f; /* ln 2 in two parts: the first times n is exact */
    r = r - n * -2.12194440e-4f;
    vec p = r * (1.0f / 5040) + (1.0f / 720);
    p = p * r + (1.0f / 120);
    p = p * r + (1.0f / 24);
    p = p * r + (1.0f / 6);
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    n = VM_NAME(select)(n == n, n, zero); /* NaN's n: any integer (p is NaN already) */
    const ivec n_all = __builtin_convertvector(n, ivec), n_half = n_all >> 1;
    const uvec half = (uvec)(n_half + 127) << 23, rest = (uvec)(n_all - n_half + 127) << 23;
    return p * (vec)half * (vec)rest;
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
    typedef VM_NAME(ivec) ivec;
    const vec zero = {0};
    const ivec sign_bit = (ivec){0} + INT32_MIN;
    const ivec sign = (ivec)z & sign_bit;
    const vec az = (vec)((ivec)z & ~sign_bit);
    const vec e = VM_NAME(exp_neg)(-2.0f * az);
    const vec big = (1.0f - e) / (1.0f + e);
    const vec z2 = az * az;
    vec p = z2 * (21844.0f / 6081075) + (-1382.0f / 155925);
    p = p * z2 + (62.0f / 2835);
    p = p * z2 + (-17.0f / 315);
    p = p * z2 + (2.0f / 15);
    p = p * z2 + (-1.0f / 3);
    const vec small = az + (az * z2) * p;
    return (vec)((ivec)VM_NAME(select)(az < zero + 0.35f, small, big) | sign);
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

#undef VM_NAME
#undef VM_PASTE
#undef VM_PASTE_
#undef VM_ISA
#undef VM_ATTR
#undef VM_VBYTES
