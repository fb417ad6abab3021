/*
 * dropout.c - inverted dropout, forward and backward.
 *
 * Dtype-generic (see internal.h): compiled once per dtype. The keep/drop bit
 * of element (i, j) is fusenn_hash64(seed, i*d + j) >= floor(rate * 2^64), a
 * pure function of its logical position, so rows run in parallel with no
 * shared state and the backward recomputes the forward's mask.
 */
#include "internal.h"

/* floor(rate * 2^64): exact, since scaling a double by 2^64 only moves its
 * exponent and every rate < 1 gives a product below 2^64. rate >= 1 drops all. */
static inline uint64_t drop_threshold(double rate)
{
    if (!(rate > 0))
        return 0;
    if (rate >= 1)
        return UINT64_MAX;
    return (uint64_t)(rate * 18446744073709551616.0);
}

#if defined(FUSENN_DTYPE_F32)
typedef uint32_t real_bits;
#else
typedef uint64_t real_bits;
#endif

/* keep ? v : +0, without a branch: a random mask defeats branch prediction
 * (a branch made rate 0.5 four times slower than rate 0.9). */
static inline real FN(keep_or_zero)(int keep, real v)
{
    real_bits bits;
    memcpy(&bits, &v, sizeof bits);
    bits &= (real_bits)0 - (real_bits)keep;
    memcpy(&v, &bits, sizeof v);
    return v;
}

/* Y = X * mask * scale, scale = 1 / (1 - rate) rounded to the dtype; dropped
 * elements are exactly 0 (also for non-finite inputs). Each element is read
 * before it is written, so Y may alias X. */
static void FN(dropout_apply)(size_t n, size_t d, const real *X, ptrdiff_t ldx, double rate,
                              uint64_t seed, real *Y, ptrdiff_t ldy, int nthreads)
{
    if (n == 0 || d == 0)
        return;
    const uint64_t threshold = drop_threshold(rate);
    const real scale = rate < 1 ? (real)(1.0 / (1.0 - rate)) : (real)0;
    int nt = fusenn_threads_for(n * d, nthreads);
    (void)nt; /* only read by the OpenMP pragma */
#pragma omp parallel for num_threads(nt) if(nt > 1) schedule(static)
    for (size_t i = 0; i < n; i++) {
        const real *x = X + (ptrdiff_t)i * ldx;
        real *y = Y + (ptrdiff_t)i * ldy;
        if (rate == 0) { /* keep everything: an exact copy */
            if (y != x)
                memmove(y, x, d * sizeof(real));
            continue;
        }
        const uint64_t first = (uint64_t)i * (uint64_t)d;
        for (size_t j = 0; j < d; j++)
            y[j] = FN(keep_or_zero)(fusenn_hash64(seed, first + j) >= threshold, x[j] * scale);
    }
}

void FN(fusenn_dropout_forward)(size_t n, size_t d, const real *X, ptrdiff_t ldx,
                                double rate, uint64_t seed, real *Y, ptrdiff_t ldy,
                                int nthreads)
{
    FN(dropout_apply)(n, d, X, ldx, rate, seed, Y, ldy, nthreads);
}

/* d(x mask scale)/dx = mask scale: the backward is the forward applied to dY. */
void FN(fusenn_dropout_backward)(size_t n, size_t d, const real *dY, ptrdiff_t lddy,
                                 double rate, uint64_t seed, real *dX, ptrdiff_t lddx,
                                 int nthreads)
{
    FN(dropout_apply)(n, d, dY, lddy, rate, seed, dX, lddx, nthreads);
}
