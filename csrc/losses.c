/*
 * losses.c - losses fused with their output activation, and their gradients.
 *
 * Dtype-generic (see internal.h): compiled once per dtype.
 *
 * Determinism: the rows are cut into fusenn_num_chunks(n) chunks whose
 * boundaries depend only on n. One thread sums one chunk in double, and the
 * chunk partials are added serially in chunk order, so the loss has the same
 * bits for any nthreads. Gradients are elementwise and need no such care.
 *
 * Sample weights: sw (length n, NULL = all ones) weighs row i's loss by sw_i,
 * loss = (1/n) sum_i sw_i loss_i (Keras's "sum over batch size"), and scales
 * row i's gradient by sw_i. Every term is multiplied by w = sw_i (1.0 when sw
 * is NULL, an exact no-op), so unweighted results and weights of all ones give
 * the same bits.
 */
#include "internal.h"

/* Rows [first, end) of chunk c out of nchunks over n rows. */
static inline void chunk_rows(size_t c, size_t nchunks, size_t n,
                              size_t *first, size_t *end)
{
    *first = fusenn_chunk_start(c, nchunks, n);
    *end = fusenn_chunk_start(c + 1, nchunks, n);
}

/* Weight of row i: sw[i], or 1 without weights. */
static inline double row_weight(const real *sw, size_t i)
{
    return sw ? (double)sw[i] : 1.0;
}

/* Gradient scale of row i: base (1/n, 1/(n k), ...) times the row's weight,
 * rounded once; exactly (real)base without weights or for a weight of 1. */
static inline real row_grad_scale(const real *sw, size_t i, double base)
{
    return (real)(sw ? (double)sw[i] * base : base);
}

/* One loss call's arguments. Z holds the logits (the predictions A of the
 * regression losses), dZ the gradient; grad_base is the gradient's factor
 * before the row weight (1/n, 1/(n k), ...). Chunk c's loss sum goes to
 * partial[c]. */
typedef struct {
    size_t n, k, nchunks;
    const real *Z, *T, *sw;
    const int64_t *labels;
    ptrdiff_t ldz, ldt, ldp, lddz;
    real *P, *dZ;
    double grad_base, delta;
    double *partial;
} FN(loss_args);

/* Runs a loss's chunk function over the fixed row chunks of args (n, k and the
 * operands set) and returns the chunks' loss sums, added in chunk order, over
 * `count`: the same bits for any thread count. */
static double FN(chunked_loss)(FN(loss_args) *args, fusenn_range_fn chunks, double count,
                               int nthreads)
{
    double partial[FUSENN_SUM_CHUNKS];
    args->nchunks = fusenn_num_chunks(args->n);
    args->partial = partial;
    fusenn_parallel_ranges(fusenn_threads_for(args->n * args->k, nthreads), args->nchunks,
                           chunks, args);
    double total = 0;
    for (size_t c = 0; c < args->nchunks; c++)
        total += partial[c];
    return total / count;
}

/* ---- softmax + cross-entropy ---------------------------------------------
 * Per row, with mx = max_j z_j (so no exp overflows):
 *   lse    = mx + log(sum_j exp(z_j - mx))
 *   loss_i = lse - z_label,  loss = (1/n) sum_i sw_i loss_i
 *   p_j    = exp(z_j - mx) / sum_j exp(z_j - mx)
 *   dz_j   = sw_i (p_j - [j == label]) / n   (gradient of the batch loss)
 * The exponentials are computed once, into P if wanted, else into dZ (the
 * probabilities are needed for dZ even when P is NULL). mx and z_label are read
 * before anything is written, so dZ (or P) may alias Z. */
static size_t FN(softmax_ce_chunks)(const void *ctx, size_t c0, size_t c1)
{
    const FN(loss_args) *q = ctx;
    const size_t n = q->n, k = q->k, nchunks = q->nchunks;
    const real *Z = q->Z, *sw = q->sw;
    const int64_t *labels = q->labels;
    const ptrdiff_t ldz = q->ldz, ldp = q->ldp, lddz = q->lddz;
    real *P = q->P, *dZ = q->dZ;
    const double inv_n = q->grad_base;
    double *partial = q->partial;
    for (size_t c = c0; c < c1; c++) {
        size_t first, end;
        chunk_rows(c, nchunks, n, &first, &end);
        double loss_sum = 0;
        for (size_t i = first; i < end; i++) {
            const real *z = Z + (ptrdiff_t)i * ldz;
            real *p = P ? P + (ptrdiff_t)i * ldp : NULL;
            real *dz = dZ ? dZ + (ptrdiff_t)i * lddz : NULL;
            const int64_t label = labels[i];
            const double w = row_weight(sw, i);
            const real scale = row_grad_scale(sw, i, inv_n); /* sw_i / n */
            size_t j;

            real mx = z[0];
            for (j = 1; j < k; j++)
                mx = z[j] > mx ? z[j] : mx;
            const real z_label = z[label];

            /* e_j = exp(z_j - mx), kept in P or dZ when either is wanted */
            real *e = p ? p : dz;
            real sum_exp = 0;
            if (e) {
                for (j = 0; j < k; j++) {
                    e[j] = exp(z[j] - mx);
                    sum_exp += e[j];
                }
            } else {
                for (j = 0; j < k; j++)
                    sum_exp += exp(z[j] - mx);
            }
            const real lse = mx + log(sum_exp);
            loss_sum += w * ((double)lse - (double)z_label);

            /* p = e / sum_exp; dz = p sw_i / n, the same bits with or without P */
            const real inv_sum = (real)1 / sum_exp;
            if (p) {
                for (j = 0; j < k; j++)
                    p[j] *= inv_sum;
                if (dz)
                    for (j = 0; j < k; j++)
                        dz[j] = p[j] * scale;
            } else if (dz) {
                for (j = 0; j < k; j++)
                    dz[j] = (dz[j] * inv_sum) * scale;
            }
            if (dz)
                dz[label] -= scale; /* the one-hot term */
        }
        partial[c] = loss_sum;
    }
    return 0;
}

double FN(fusenn_softmax_cross_entropy)(size_t n, size_t k, const real *Z, ptrdiff_t ldz,
                                        const int64_t *labels, const real *sw,
                                        real *P, ptrdiff_t ldp,
                                        real *dZ, ptrdiff_t lddz, int nthreads)
{
    if (n == 0 || k == 0)
        return 0.0;
    FN(loss_args) args = {.n = n, .k = k, .Z = Z, .ldz = ldz, .labels = labels, .sw = sw,
                          .P = P, .ldp = ldp, .dZ = dZ, .lddz = lddz,
                          .grad_base = 1.0 / (double)n};
    return FN(chunked_loss)(&args, FN(softmax_ce_chunks), (double)n, nthreads);
}

/* ---- sigmoid + binary cross-entropy ----------------------------------------
 * Per element, from the logit z and target t:
 *   l = -t log(s) - (1 - t) log(1 - s)  with s = sigmoid(z)
 *     = max(z, 0) - z t + log1p(exp(-|z|))    (never overflows)
 *   dl/dz = s - t, averaged over the n k elements;
 *   loss = (1/(n k)) sum_ij sw_i l_ij,  dz_ij = sw_i (s_ij - t_ij) / (n k).
 * e = exp(-|z|) serves both the loss and s (the same formula as
 * FN(activate_row)). Each element is read before it is written, so P or dZ
 * may alias Z. */
static size_t FN(sigmoid_bce_chunks)(const void *ctx, size_t c0, size_t c1)
{
    const FN(loss_args) *q = ctx;
    const size_t n = q->n, k = q->k, nchunks = q->nchunks;
    const real *Z = q->Z, *T = q->T, *sw = q->sw;
    const ptrdiff_t ldz = q->ldz, ldt = q->ldt, ldp = q->ldp, lddz = q->lddz;
    real *P = q->P, *dZ = q->dZ;
    const double inv_nk = q->grad_base;
    double *partial = q->partial;
    for (size_t c = c0; c < c1; c++) {
        size_t first, end;
        chunk_rows(c, nchunks, n, &first, &end);
        double loss_sum = 0;
        for (size_t i = first; i < end; i++) {
            const real *z = Z + (ptrdiff_t)i * ldz;
            const real *t = T + (ptrdiff_t)i * ldt;
            real *p = P ? P + (ptrdiff_t)i * ldp : NULL;
            real *dz = dZ ? dZ + (ptrdiff_t)i * lddz : NULL;
            const double w = row_weight(sw, i);
            const real scale = row_grad_scale(sw, i, inv_nk); /* sw_i / (n k) */
            for (size_t j = 0; j < k; j++) {
                const real zj = z[j], tj = t[j];
                const real e = exp(-fabs(zj));
                loss_sum += w * (double)((zj > 0 ? zj : (real)0) - zj * tj + log1p(e));
                const real r = (real)1 / ((real)1 + e);
                const real s = zj >= 0 ? r : e * r;
                if (p)
                    p[j] = s;
                if (dz)
                    dz[j] = (s - tj) * scale;
            }
        }
        partial[c] = loss_sum;
    }
    return 0;
}

double FN(fusenn_sigmoid_binary_cross_entropy)(size_t n, size_t k, const real *Z, ptrdiff_t ldz,
                                               const real *T, ptrdiff_t ldt, const real *sw,
                                               real *P, ptrdiff_t ldp,
                                               real *dZ, ptrdiff_t lddz, int nthreads)
{
    if (n == 0 || k == 0)
        return 0.0;
    FN(loss_args) args = {.n = n, .k = k, .Z = Z, .ldz = ldz, .T = T, .ldt = ldt, .sw = sw,
                          .P = P, .ldp = ldp, .dZ = dZ, .lddz = lddz,
                          .grad_base = 1.0 / ((double)n * (double)k)};
    return FN(chunked_loss)(&args, FN(sigmoid_bce_chunks), (double)n * (double)k, nthreads);
}

/* ---- elementwise regression losses: mse, mae, huber, poisson ------------------
 * One loop, inlined with a constant `kind` into a chunk function per loss, so
 * each compiles to its own loop. Per element, d = a - t:
 *   mse:     l = d^2,                                     dl/da = 2 d
 *   mae:     l = |d|,                                     dl/da = sign(d) (0 at d == 0,
 *                                                         as PyTorch's L1Loss; NaN for NaN)
 *   huber:   l = d^2 / 2 if |d| <= delta else delta (|d| - delta / 2),
 *                                                         dl/da = clip(d, -delta, delta)
 *   poisson: l = exp(a) - t a (a the log of the rate),    dl/da = exp(a) - t
 * loss = (1/(n k)) sum_ij sw_i l_ij,  dA_ij = sw_i dl/da / (n k). Losses are
 * computed in double from d (poisson's from exp(a) in real and a); mse's
 * square as (w d) d, so that w = 1 gives the bits of d d even where the
 * compiler contracts the sum into an FMA. dA may alias A. */
enum regression_kind { REG_MSE, REG_MAE, REG_HUBER, REG_POISSON };

static inline __attribute__((always_inline)) size_t FN(regression_chunks)(
    enum regression_kind kind, const void *ctx, size_t c0, size_t c1)
{
    const FN(loss_args) *q = ctx;
    const size_t n = q->n, k = q->k, nchunks = q->nchunks;
    const real *A = q->Z, *T = q->T, *sw = q->sw;
    const ptrdiff_t lda = q->ldz, ldt = q->ldt, ldda = q->lddz;
    real *dA = q->dZ;
    const double base = q->grad_base, delta = q->delta;
    const real delta_r = (real)delta;
    double *partial = q->partial;
    (void)delta_r;
    for (size_t c = c0; c < c1; c++) {
        size_t first, end;
        chunk_rows(c, nchunks, n, &first, &end);
        double loss_sum = 0;
        for (size_t i = first; i < end; i++) {
            const real *a = A + (ptrdiff_t)i * lda;
            const real *t = T + (ptrdiff_t)i * ldt;
            real *da = dA ? dA + (ptrdiff_t)i * ldda : NULL;
            const double w = row_weight(sw, i);
            const real scale = row_grad_scale(sw, i, base); /* sw_i base */
            for (size_t j = 0; j < k; j++) {
                const real diff = a[j] - t[j];
                real g; /* dl/da without mse's factor 2 (it is in scale) */
                if (kind == REG_MSE) {
                    const double wdiff = w * (double)diff;
                    loss_sum += wdiff * (double)diff;
                    g = diff;
                } else if (kind == REG_MAE) {
                    loss_sum += w * (double)fabs(diff);
                    g = diff > 0 ? (real)1 : diff < 0 ? (real)-1 : diff; /* 0, or NaN */
                } else if (kind == REG_POISSON) {
                    const real e = exp(a[j]);
                    loss_sum += w * ((double)e - (double)t[j] * (double)a[j]);
                    g = e - t[j];
                } else {
                    const double ad = fabs((double)diff);
                    if (ad <= delta) { /* quadratic region */
                        loss_sum += w * (0.5 * ad * ad);
                        g = diff;
                    } else { /* linear region (or NaN, which keeps diff) */
                        loss_sum += w * (delta * (ad - 0.5 * delta));
                        g = diff > 0 ? delta_r : diff < 0 ? -delta_r : diff;
                    }
                }
                if (da)
                    da[j] = g * scale;
            }
        }
        partial[c] = loss_sum;
    }
    return 0;
}

static size_t FN(mse_chunks)(const void *ctx, size_t c0, size_t c1)
{
    return FN(regression_chunks)(REG_MSE, ctx, c0, c1);
}

static size_t FN(mae_chunks)(const void *ctx, size_t c0, size_t c1)
{
    return FN(regression_chunks)(REG_MAE, ctx, c0, c1);
}

static size_t FN(huber_chunks)(const void *ctx, size_t c0, size_t c1)
{
    return FN(regression_chunks)(REG_HUBER, ctx, c0, c1);
}

static size_t FN(poisson_chunks)(const void *ctx, size_t c0, size_t c1)
{
    return FN(regression_chunks)(REG_POISSON, ctx, c0, c1);
}

static inline __attribute__((always_inline)) double FN(regression_loss)(
    enum regression_kind kind, size_t n, size_t k, const real *A, ptrdiff_t lda,
    const real *T, ptrdiff_t ldt, double delta, const real *sw, real *dA, ptrdiff_t ldda,
    int nthreads)
{
    if (n == 0 || k == 0)
        return 0.0;
    /* the factor of dl/da in the gradient of the mean: 2 for mse's d^2 */
    const double base = (kind == REG_MSE ? 2.0 : 1.0) / ((double)n * (double)k);
    FN(loss_args) args = {.n = n, .k = k, .Z = A, .ldz = lda, .T = T, .ldt = ldt, .sw = sw,
                          .dZ = dA, .lddz = ldda, .grad_base = base, .delta = delta};
    return FN(chunked_loss)(&args,
                            kind == REG_MSE     ? FN(mse_chunks)
                            : kind == REG_MAE   ? FN(mae_chunks)
                            : kind == REG_HUBER ? FN(huber_chunks)
                                                : FN(poisson_chunks),
                            (double)n * (double)k, nthreads);
}

double FN(fusenn_mse)(size_t n, size_t k, const real *A, ptrdiff_t lda,
                      const real *T, ptrdiff_t ldt, const real *sw,
                      real *dA, ptrdiff_t ldda, int nthreads)
{
    return FN(regression_loss)(REG_MSE, n, k, A, lda, T, ldt, 0.0, sw, dA, ldda, nthreads);
}

double FN(fusenn_mae)(size_t n, size_t k, const real *A, ptrdiff_t lda,
                      const real *T, ptrdiff_t ldt, const real *sw,
                      real *dA, ptrdiff_t ldda, int nthreads)
{
    return FN(regression_loss)(REG_MAE, n, k, A, lda, T, ldt, 0.0, sw, dA, ldda, nthreads);
}

double FN(fusenn_huber)(size_t n, size_t k, const real *A, ptrdiff_t lda,
                        const real *T, ptrdiff_t ldt, double delta, const real *sw,
                        real *dA, ptrdiff_t ldda, int nthreads)
{
    return FN(regression_loss)(REG_HUBER, n, k, A, lda, T, ldt, delta, sw, dA, ldda, nthreads);
}

double FN(fusenn_poisson)(size_t n, size_t k, const real *A, ptrdiff_t lda,
                          const real *T, ptrdiff_t ldt, const real *sw,
                          real *dA, ptrdiff_t ldda, int nthreads)
{
    return FN(regression_loss)(REG_POISSON, n, k, A, lda, T, ldt, 0.0, sw, dA, ldda, nthreads);
}
