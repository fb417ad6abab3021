/*
 * batchnorm.c - batch normalisation over the rows of an n x d matrix.
 *
 * Dtype-generic (see internal.h): compiled once per dtype.
 *
 * Layout of the work: columns are cut into blocks of at most BN_MAX_BLOCK.
 * Column statistics (sums over rows) are computed one block per loop
 * iteration, each column summed in double over rows 0..n-1 in order, so its
 * bits do not depend on the block width or on which thread runs it (nor on
 * nthreads). The elementwise passes then run over tiles of (row range, column
 * block); each tile derives its columns' coefficients from the length-d
 * statistics into a small stack array, so nothing is allocated.
 */
#include "internal.h"

#define BN_MAX_BLOCK 64

/* Columns per block: about d / nt, a multiple of 8, between 8 and BN_MAX_BLOCK. */
static inline size_t block_width(size_t d, int nt)
{
    size_t w = (d + (size_t)nt - 1) / (size_t)nt;
    w = (w + 7) & ~(size_t)7;
    return FUSENN_MAX(FUSENN_MIN(w, (size_t)BN_MAX_BLOCK), (size_t)8);
}

/* Row ranges of the elementwise passes: one when serial, else a few per
 * thread of at least 16 rows. Any split gives the same bits (no reductions). */
static inline size_t row_tiles(size_t n, int nt)
{
    if (nt <= 1)
        return 1;
    size_t most = (n + 15) / 16;
    return FUSENN_MAX(FUSENN_MIN(4 * (size_t)nt, most), (size_t)1);
}

/* ---- training forward -------------------------------------------------------
 * Per column block: mean = sum x / n, var = sum (x - mean)^2 / n (two passes
 * in double), invstd = 1 / sqrt(var + eps), running statistics updated. Then
 * per tile: y = (x - mean) * (gamma invstd) + beta from the stored mean and
 * invstd. A barrier separates the two loops, so Y may alias X. */
void FN(fusenn_batchnorm_forward_train)(size_t n, size_t d, const real *X, ptrdiff_t ldx,
                                        const real *gamma, const real *beta,
                                        double eps, double momentum,
                                        real *running_mean, real *running_var,
                                        real *mean, real *invstd,
                                        real *Y, ptrdiff_t ldy, int nthreads)
{
    if (n == 0 || d == 0)
        return;
    int nt = fusenn_threads_for(n * d, nthreads);
    const size_t width = block_width(d, nt), nblocks = (d + width - 1) / width;
    const size_t nrows = row_tiles(n, nt);
#pragma omp parallel num_threads(nt) if(nt > 1)
    {
#pragma omp for schedule(static)
        for (size_t b = 0; b < nblocks; b++) {
            const size_t j0 = b * width, w = FUSENN_MIN(width, d - j0);
            double mu[BN_MAX_BLOCK], sq[BN_MAX_BLOCK];
            size_t i, j;
            for (j = 0; j < w; j++)
                mu[j] = sq[j] = 0;
            for (i = 0; i < n; i++) {
                const real *x = X + (ptrdiff_t)i * ldx + j0;
                for (j = 0; j < w; j++)
                    mu[j] += (double)x[j];
            }
            for (j = 0; j < w; j++)
                mu[j] /= (double)n;
            for (i = 0; i < n; i++) {
                const real *x = X + (ptrdiff_t)i * ldx + j0;
                for (j = 0; j < w; j++) {
                    const double c = (double)x[j] - mu[j];
                    sq[j] += c * c;
                }
            }
            for (j = 0; j < w; j++) {
                const double var = sq[j] / (double)n;
                mean[j0 + j] = (real)mu[j];
                invstd[j0 + j] = (real)(1.0 / sqrt(var + eps));
                if (running_mean) {
                    running_mean[j0 + j] = (real)(momentum * (double)running_mean[j0 + j] +
                                                  (1.0 - momentum) * mu[j]);
                    running_var[j0 + j] = (real)(momentum * (double)running_var[j0 + j] +
                                                 (1.0 - momentum) * var);
                }
            }
        }
#pragma omp for schedule(static)
        for (size_t t = 0; t < nrows * nblocks; t++) {
            const size_t b = t % nblocks, j0 = b * width, w = FUSENN_MIN(width, d - j0);
            const size_t i0 = fusenn_chunk_start(t / nblocks, nrows, n);
            const size_t i1 = fusenn_chunk_start(t / nblocks + 1, nrows, n);
            double m[BN_MAX_BLOCK], s[BN_MAX_BLOCK], o[BN_MAX_BLOCK];
            size_t j;
            for (j = 0; j < w; j++) {
                m[j] = (double)mean[j0 + j];
                s[j] = (double)gamma[j0 + j] * (double)invstd[j0 + j];
                o[j] = (double)beta[j0 + j];
            }
            for (size_t i = i0; i < i1; i++) {
                const real *x = X + (ptrdiff_t)i * ldx + j0;
                real *y = Y + (ptrdiff_t)i * ldy + j0;
                for (j = 0; j < w; j++)
                    y[j] = (real)(((double)x[j] - m[j]) * s[j] + o[j]);
            }
        }
    }
}

/* ---- inference forward ----------------------------------------------------------
 * y = (x - running_mean) * (gamma / sqrt(running_var + eps)) + beta, per tile. */
void FN(fusenn_batchnorm_forward_infer)(size_t n, size_t d, const real *X, ptrdiff_t ldx,
                                        const real *gamma, const real *beta, double eps,
                                        const real *running_mean, const real *running_var,
                                        real *Y, ptrdiff_t ldy, int nthreads)
{
    if (n == 0 || d == 0)
        return;
    int nt = fusenn_threads_for(n * d, nthreads);
    (void)nt; /* only read by the OpenMP pragma */
    const size_t width = block_width(d, nt), nblocks = (d + width - 1) / width;
    const size_t nrows = row_tiles(n, nt);
#pragma omp parallel for num_threads(nt) if(nt > 1) schedule(static)
    for (size_t t = 0; t < nrows * nblocks; t++) {
        const size_t b = t % nblocks, j0 = b * width, w = FUSENN_MIN(width, d - j0);
        const size_t i0 = fusenn_chunk_start(t / nblocks, nrows, n);
        const size_t i1 = fusenn_chunk_start(t / nblocks + 1, nrows, n);
        double m[BN_MAX_BLOCK], s[BN_MAX_BLOCK], o[BN_MAX_BLOCK];
        size_t j;
        for (j = 0; j < w; j++) {
            m[j] = (double)running_mean[j0 + j];
            s[j] = (double)gamma[j0 + j] * (1.0 / sqrt((double)running_var[j0 + j] + eps));
            o[j] = (double)beta[j0 + j];
        }
        for (size_t i = i0; i < i1; i++) {
            const real *x = X + (ptrdiff_t)i * ldx + j0;
            real *y = Y + (ptrdiff_t)i * ldy + j0;
            for (j = 0; j < w; j++)
                y[j] = (real)(((double)x[j] - m[j]) * s[j] + o[j]);
        }
    }
}

/* ---- backward --------------------------------------------------------------------
 * Per column block, with xhat = (x - mean) invstd in double:
 *   dbeta = sum_i dy,  dgamma = sum_i dy xhat.
 * Then per tile, from the stored (dtype-rounded) sums:
 *   dx = (gamma invstd / n) (n dy - dbeta - xhat dgamma).
 * dY is read whole before dX is written (barrier), so dX may alias dY. */
void FN(fusenn_batchnorm_backward)(size_t n, size_t d, const real *X, ptrdiff_t ldx,
                                   const real *dY, ptrdiff_t lddy, const real *gamma,
                                   const real *mean, const real *invstd,
                                   real *dX, ptrdiff_t lddx, real *dgamma, real *dbeta,
                                   int nthreads)
{
    if (d == 0)
        return;
    int nt = fusenn_threads_for(n * d, nthreads);
    const size_t width = block_width(d, nt), nblocks = (d + width - 1) / width;
    const size_t nrows = row_tiles(n, nt);
#pragma omp parallel num_threads(nt) if(nt > 1)
    {
#pragma omp for schedule(static)
        for (size_t b = 0; b < nblocks; b++) {
            const size_t j0 = b * width, w = FUSENN_MIN(width, d - j0);
            double m[BN_MAX_BLOCK], is[BN_MAX_BLOCK], sum_dy[BN_MAX_BLOCK], sum_dyx[BN_MAX_BLOCK];
            size_t i, j;
            for (j = 0; j < w; j++) {
                m[j] = (double)mean[j0 + j];
                is[j] = (double)invstd[j0 + j];
                sum_dy[j] = sum_dyx[j] = 0;
            }
            for (i = 0; i < n; i++) {
                const real *x = X + (ptrdiff_t)i * ldx + j0;
                const real *dy = dY + (ptrdiff_t)i * lddy + j0;
                for (j = 0; j < w; j++) {
                    const double xhat = ((double)x[j] - m[j]) * is[j];
                    sum_dy[j] += (double)dy[j];
                    sum_dyx[j] += (double)dy[j] * xhat;
                }
            }
            for (j = 0; j < w; j++) {
                dbeta[j0 + j] = (real)sum_dy[j];
                dgamma[j0 + j] = (real)sum_dyx[j];
            }
        }
        if (dX && n > 0) {
#pragma omp for schedule(static)
            for (size_t t = 0; t < nrows * nblocks; t++) {
                const size_t b = t % nblocks, j0 = b * width, w = FUSENN_MIN(width, d - j0);
                const size_t i0 = fusenn_chunk_start(t / nblocks, nrows, n);
                const size_t i1 = fusenn_chunk_start(t / nblocks + 1, nrows, n);
                double m[BN_MAX_BLOCK], is[BN_MAX_BLOCK], k[BN_MAX_BLOCK];
                double db[BN_MAX_BLOCK], dg[BN_MAX_BLOCK];
                const double nd = (double)n;
                size_t j;
                for (j = 0; j < w; j++) {
                    m[j] = (double)mean[j0 + j];
                    is[j] = (double)invstd[j0 + j];
                    k[j] = (double)gamma[j0 + j] * is[j] / nd;
                    db[j] = (double)dbeta[j0 + j];
                    dg[j] = (double)dgamma[j0 + j];
                }
                for (size_t i = i0; i < i1; i++) {
                    const real *x = X + (ptrdiff_t)i * ldx + j0;
                    const real *dy = dY + (ptrdiff_t)i * lddy + j0;
                    real *dx = dX + (ptrdiff_t)i * lddx + j0;
                    for (j = 0; j < w; j++) {
                        const double xhat = ((double)x[j] - m[j]) * is[j];
                        dx[j] = (real)(k[j] * (nd * (double)dy[j] - db[j] - xhat * dg[j]));
                    }
                }
            }
        }
    }
}
