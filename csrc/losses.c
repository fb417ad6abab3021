/*
 * losses.c - losses fused with their output activation, and their gradients.
 *
 * Dtype-generic (see internal.h): compiled once per dtype.
 *
 * Determinism: the rows are cut into fusenn_num_chunks(n) chunks whose
 * boundaries depend only on n. One thread sums one chunk in double, and the
 * chunk partials are added serially in chunk order, so the loss has the same
 * bits for any nthreads. Gradients are elementwise and need no such care.
 */
#include "internal.h"

/* Rows [first, end) of chunk c out of nchunks over n rows. */
static inline void chunk_rows(size_t c, size_t nchunks, size_t n,
                              size_t *first, size_t *end)
{
    *first = fusenn_chunk_start(c, nchunks, n);
    *end = fusenn_chunk_start(c + 1, nchunks, n);
}

/* Sum of partial[0..nchunks) in chunk order. */
static inline double sum_partials(const double *partial, size_t nchunks)
{
    double total = 0;
    for (size_t c = 0; c < nchunks; c++)
        total += partial[c];
    return total;
}

/* ---- softmax + cross-entropy ---------------------------------------------
 * Per row, with mx = max_j z_j (so no exp overflows):
 *   lse    = mx + log(sum_j exp(z_j - mx))
 *   loss_i = lse - z_label
 *   p_j    = exp(z_j - mx) / sum_j exp(z_j - mx)
 *   dz_j   = (p_j - [j == label]) / n       (gradient of the batch mean)
 * The exponentials are computed once, into P if wanted, else into dZ (the
 * probabilities are needed for dZ even when P is NULL). mx and z_label are read
 * before anything is written, so dZ (or P) may alias Z. */
double FN(fusenn_softmax_cross_entropy)(size_t n, size_t k, const real *Z, ptrdiff_t ldz,
                                        const int64_t *labels, real *P, ptrdiff_t ldp,
                                        real *dZ, ptrdiff_t lddz, int nthreads)
{
    if (n == 0 || k == 0)
        return 0.0;
    const size_t nchunks = fusenn_num_chunks(n);
    double partial[FUSENN_SUM_CHUNKS];
    const real inv_n = (real)(1.0 / (double)n);
    int nt = fusenn_threads_for(n * k, nthreads);
    (void)nt; /* only read by the OpenMP pragma */

#pragma omp parallel for num_threads(nt) if(nt > 1) schedule(static)
    for (size_t c = 0; c < nchunks; c++) {
        size_t first, end;
        chunk_rows(c, nchunks, n, &first, &end);
        double loss_sum = 0;
        for (size_t i = first; i < end; i++) {
            const real *z = Z + (ptrdiff_t)i * ldz;
            real *p = P ? P + (ptrdiff_t)i * ldp : NULL;
            real *dz = dZ ? dZ + (ptrdiff_t)i * lddz : NULL;
            const int64_t label = labels[i];
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
            loss_sum += (double)lse - (double)z_label;

            /* p = e / sum_exp; dz = p / n, the same bits with or without P */
            const real inv_sum = (real)1 / sum_exp;
            if (p) {
                for (j = 0; j < k; j++)
                    p[j] *= inv_sum;
                if (dz)
                    for (j = 0; j < k; j++)
                        dz[j] = p[j] * inv_n;
            } else if (dz) {
                for (j = 0; j < k; j++)
                    dz[j] = (dz[j] * inv_sum) * inv_n;
            }
            if (dz)
                dz[label] -= inv_n; /* the one-hot term */
        }
        partial[c] = loss_sum;
    }
    return sum_partials(partial, nchunks) / (double)n;
}

/* ---- sigmoid + binary cross-entropy ----------------------------------------
 * Per element, from the logit z and target t:
 *   l = -t log(s) - (1 - t) log(1 - s)  with s = sigmoid(z)
 *     = max(z, 0) - z t + log1p(exp(-|z|))    (never overflows)
 *   dl/dz = s - t, averaged over the n k elements.
 * e = exp(-|z|) serves both the loss and s (the same formula as
 * FN(activate_row)). Each element is read before it is written, so P or dZ
 * may alias Z. */
double FN(fusenn_sigmoid_binary_cross_entropy)(size_t n, size_t k, const real *Z, ptrdiff_t ldz,
                                               const real *T, ptrdiff_t ldt,
                                               real *P, ptrdiff_t ldp,
                                               real *dZ, ptrdiff_t lddz, int nthreads)
{
    if (n == 0 || k == 0)
        return 0.0;
    const size_t nchunks = fusenn_num_chunks(n);
    double partial[FUSENN_SUM_CHUNKS];
    const real inv_nk = (real)(1.0 / ((double)n * (double)k));
    int nt = fusenn_threads_for(n * k, nthreads);
    (void)nt; /* only read by the OpenMP pragma */

#pragma omp parallel for num_threads(nt) if(nt > 1) schedule(static)
    for (size_t c = 0; c < nchunks; c++) {
        size_t first, end;
        chunk_rows(c, nchunks, n, &first, &end);
        double loss_sum = 0;
        for (size_t i = first; i < end; i++) {
            const real *z = Z + (ptrdiff_t)i * ldz;
            const real *t = T + (ptrdiff_t)i * ldt;
            real *p = P ? P + (ptrdiff_t)i * ldp : NULL;
            real *dz = dZ ? dZ + (ptrdiff_t)i * lddz : NULL;
            for (size_t j = 0; j < k; j++) {
                const real zj = z[j], tj = t[j];
                const real e = exp(-fabs(zj));
                loss_sum += (double)((zj > 0 ? zj : (real)0) - zj * tj + log1p(e));
                const real r = (real)1 / ((real)1 + e);
                const real s = zj >= 0 ? r : e * r;
                if (p)
                    p[j] = s;
                if (dz)
                    dz[j] = (s - tj) * inv_nk;
            }
        }
        partial[c] = loss_sum;
    }
    return sum_partials(partial, nchunks) / ((double)n * (double)k);
}

/* ---- mean squared error ------------------------------------------------------
 *   loss = mean (a - t)^2,  dl/da = 2 (a - t) / (n k)
 * The square is taken in double. dA may alias A. */
double FN(fusenn_mse)(size_t n, size_t k, const real *A, ptrdiff_t lda,
                      const real *T, ptrdiff_t ldt, real *dA, ptrdiff_t ldda, int nthreads)
{
    if (n == 0 || k == 0)
        return 0.0;
    const size_t nchunks = fusenn_num_chunks(n);
    double partial[FUSENN_SUM_CHUNKS];
    const real grad_scale = (real)(2.0 / ((double)n * (double)k));
    int nt = fusenn_threads_for(n * k, nthreads);
    (void)nt; /* only read by the OpenMP pragma */

#pragma omp parallel for num_threads(nt) if(nt > 1) schedule(static)
    for (size_t c = 0; c < nchunks; c++) {
        size_t first, end;
        chunk_rows(c, nchunks, n, &first, &end);
        double loss_sum = 0;
        for (size_t i = first; i < end; i++) {
            const real *a = A + (ptrdiff_t)i * lda;
            const real *t = T + (ptrdiff_t)i * ldt;
            real *da = dA ? dA + (ptrdiff_t)i * ldda : NULL;
            for (size_t j = 0; j < k; j++) {
                const real diff = a[j] - t[j];
                loss_sum += (double)diff * (double)diff;
                if (da)
                    da[j] = diff * grad_scale;
            }
        }
        partial[c] = loss_sum;
    }
    return sum_partials(partial, nchunks) / ((double)n * (double)k);
}
