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
#include "../layer.h"

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

/* How a call's work is cut: nt threads, nblocks column blocks of `width`
 * columns, nrows row ranges; tile t of the elementwise passes is row range
 * t / nblocks of column block t % nblocks. */
typedef struct {
    int nt;
    size_t n, d, width, nblocks, nrows;
} layout;

static inline layout layout_for(size_t n, size_t d, int nthreads)
{
    layout L;
    L.nt = fusenn_threads_for(n * d, nthreads);
    L.n = n;
    L.d = d;
    L.width = block_width(d, L.nt);
    L.nblocks = (d + L.width - 1) / L.width;
    L.nrows = row_tiles(n, L.nt);
    return L;
}

/* Rows [i0, i1) and columns [j0, j0 + w) of a tile or column block. */
typedef struct {
    size_t i0, i1, j0, w;
} tile;

static inline tile column_block(const layout *L, size_t b)
{
    tile tl = {0, L->n, b * L->width, FUSENN_MIN(L->width, L->d - b * L->width)};
    return tl;
}

static inline tile tile_at(const layout *L, size_t t)
{
    tile tl = column_block(L, t % L->nblocks);
    tl.i0 = fusenn_chunk_start(t / L->nblocks, L->nrows, L->n);
    tl.i1 = fusenn_chunk_start(t / L->nblocks + 1, L->nrows, L->n);
    return tl;
}

/* One tile of y = (x - center) * scale + beta, in double, where per column
 * scale = gamma * invstd, or gamma / sqrt(var + eps) when invstd is NULL. */
static void FN(normalize_tile)(tile tl, const real *X, ptrdiff_t ldx, const real *gamma,
                               const real *beta, const real *center, const real *invstd,
                               const real *var, double eps, real *Y, ptrdiff_t ldy)
{
    double m[BN_MAX_BLOCK], s[BN_MAX_BLOCK], o[BN_MAX_BLOCK];
    size_t j;
    for (j = 0; j < tl.w; j++) {
        const size_t c = tl.j0 + j;
        m[j] = (double)center[c];
        s[j] = invstd ? (double)gamma[c] * (double)invstd[c]
                      : (double)gamma[c] * (1.0 / sqrt((double)var[c] + eps));
        o[j] = (double)beta[c];
    }
    for (size_t i = tl.i0; i < tl.i1; i++) {
        const real *x = X + (ptrdiff_t)i * ldx + tl.j0;
        real *y = Y + (ptrdiff_t)i * ldy + tl.j0;
        for (j = 0; j < tl.w; j++)
            y[j] = (real)(((double)x[j] - m[j]) * s[j] + o[j]);
    }
}

/* The normalising pass's arguments (see FN(normalize_tile)). */
typedef struct {
    layout L;
    const real *X, *gamma, *beta, *center, *invstd, *var;
    ptrdiff_t ldx, ldy;
    double eps;
    real *Y;
} FN(normalize_args);

static size_t FN(normalize_tiles)(const void *ctx, size_t t0, size_t t1)
{
    const FN(normalize_args) *p = ctx;
    for (size_t t = t0; t < t1; t++)
        FN(normalize_tile)(tile_at(&p->L, t), p->X, p->ldx, p->gamma, p->beta, p->center,
                           p->invstd, p->var, p->eps, p->Y, p->ldy);
    return 0;
}

/* ---- training forward -------------------------------------------------------
 * Per column block: mean = sum x / n, var = sum (x - mean)^2 / n (two passes
 * in double), invstd = 1 / sqrt(var + eps), running statistics updated (or
 * the batch's mean and var recorded, in double, for a later update). Then per
 * tile: y = (x - mean) * (gamma invstd) + beta from the stored mean and
 * invstd. All statistics are stored before the tiles start, so Y may alias X. */
typedef struct {
    layout L;
    const real *X;
    ptrdiff_t ldx;
    double eps, momentum;
    real *running_mean, *running_var, *mean, *invstd;
    double *record; /* d means then d variances, or NULL */
} FN(stats_args);

/* A running statistic after a batch whose statistic is `stat`: the one formula
 * of the immediate and the recorded update, so both give the same bits. */
static inline real FN(running_update)(double momentum, real running, double stat)
{
    return (real)(momentum * (double)running + (1.0 - momentum) * stat);
}

static size_t FN(batch_stats_blocks)(const void *ctx, size_t b0, size_t b1)
{
    const FN(stats_args) *p = ctx;
    const size_t n = p->L.n;
    const real *X = p->X;
    const ptrdiff_t ldx = p->ldx;
    const double eps = p->eps, momentum = p->momentum;
    real *running_mean = p->running_mean, *running_var = p->running_var;
    real *mean = p->mean, *invstd = p->invstd;
    for (size_t b = b0; b < b1; b++) {
        const tile blk = column_block(&p->L, b);
        const size_t j0 = blk.j0, w = blk.w;
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
            if (p->record) {
                p->record[j0 + j] = mu[j];
                p->record[p->L.d + j0 + j] = var;
            } else if (running_mean) {
                running_mean[j0 + j] = FN(running_update)(momentum, running_mean[j0 + j], mu[j]);
                running_var[j0 + j] = FN(running_update)(momentum, running_var[j0 + j], var);
            }
        }
    }
    return 0;
}

/* The training forward; record non-NULL: the batch's statistics go there
 * (2 d doubles) instead of into the running ones. */
static void FN(forward_train)(size_t n, size_t d, const real *X, ptrdiff_t ldx,
                              const real *gamma, const real *beta, double eps, double momentum,
                              real *running_mean, real *running_var, double *record,
                              real *mean, real *invstd, real *Y, ptrdiff_t ldy, int nthreads)
{
    if (n == 0 || d == 0)
        return;
    const layout L = layout_for(n, d, nthreads);
    const FN(stats_args) stats = {L, X, ldx, eps, momentum, running_mean, running_var,
                                  mean, invstd, record};
    fusenn_parallel_ranges(L.nt, L.nblocks, FN(batch_stats_blocks), &stats);
    const FN(normalize_args) norm = {.L = L, .X = X, .gamma = gamma, .beta = beta,
                                     .center = mean, .invstd = invstd, .ldx = ldx,
                                     .ldy = ldy, .Y = Y};
    fusenn_parallel_ranges(L.nt, L.nrows * L.nblocks, FN(normalize_tiles), &norm);
}

void FN(fusenn_batchnorm_forward_train)(size_t n, size_t d, const real *X, ptrdiff_t ldx,
                                        const real *gamma, const real *beta,
                                        double eps, double momentum,
                                        real *running_mean, real *running_var,
                                        real *mean, real *invstd,
                                        real *Y, ptrdiff_t ldy, int nthreads)
{
    FN(forward_train)(n, d, X, ldx, gamma, beta, eps, momentum, running_mean, running_var, NULL,
                      mean, invstd, Y, ldy, nthreads);
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
    const layout L = layout_for(n, d, nthreads);
    const FN(normalize_args) norm = {.L = L, .X = X, .gamma = gamma, .beta = beta,
                                     .center = running_mean, .var = running_var,
                                     .eps = eps, .ldx = ldx, .ldy = ldy, .Y = Y};
    fusenn_parallel_ranges(L.nt, L.nrows * L.nblocks, FN(normalize_tiles), &norm);
}

/* ---- backward --------------------------------------------------------------------
 * Per column block, with xhat = (x - mean) invstd in double:
 *   dbeta = sum_i dy,  dgamma = sum_i dy xhat.
 * Then per tile, from the stored (dtype-rounded) sums:
 *   dx = (gamma invstd / n) (n dy - dbeta - xhat dgamma).
 * All of dY is read before the tiles start, so dX may alias dY. */
typedef struct {
    layout L;
    const real *X, *dY, *gamma, *mean, *invstd;
    ptrdiff_t ldx, lddy, lddx;
    real *dX, *dgamma, *dbeta;
} FN(bn_backward_args);

static size_t FN(param_grad_blocks)(const void *ctx, size_t b0, size_t b1)
{
    const FN(bn_backward_args) *p = ctx;
    const size_t n = p->L.n;
    const real *X = p->X, *dY = p->dY, *mean = p->mean, *invstd = p->invstd;
    const ptrdiff_t ldx = p->ldx, lddy = p->lddy;
    real *dgamma = p->dgamma, *dbeta = p->dbeta;
    for (size_t b = b0; b < b1; b++) {
        const tile blk = column_block(&p->L, b);
        const size_t j0 = blk.j0, w = blk.w;
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
    return 0;
}

static size_t FN(input_grad_tiles)(const void *ctx, size_t t0, size_t t1)
{
    const FN(bn_backward_args) *p = ctx;
    const real *X = p->X, *dY = p->dY, *gamma = p->gamma, *mean = p->mean;
    const real *invstd = p->invstd, *dgamma = p->dgamma, *dbeta = p->dbeta;
    const ptrdiff_t ldx = p->ldx, lddy = p->lddy, lddx = p->lddx;
    real *dX = p->dX;
    const double nd = (double)p->L.n;
    for (size_t t = t0; t < t1; t++) {
        const tile tl = tile_at(&p->L, t);
        double m[BN_MAX_BLOCK], is[BN_MAX_BLOCK], k[BN_MAX_BLOCK];
        double db[BN_MAX_BLOCK], dg[BN_MAX_BLOCK];
        size_t j;
        for (j = 0; j < tl.w; j++) {
            const size_t c = tl.j0 + j;
            m[j] = (double)mean[c];
            is[j] = (double)invstd[c];
            k[j] = (double)gamma[c] * is[j] / nd;
            db[j] = (double)dbeta[c];
            dg[j] = (double)dgamma[c];
        }
        for (size_t i = tl.i0; i < tl.i1; i++) {
            const real *x = X + (ptrdiff_t)i * ldx + tl.j0;
            const real *dy = dY + (ptrdiff_t)i * lddy + tl.j0;
            real *dx = dX + (ptrdiff_t)i * lddx + tl.j0;
            for (j = 0; j < tl.w; j++) {
                const double xhat = ((double)x[j] - m[j]) * is[j];
                dx[j] = (real)(k[j] * (nd * (double)dy[j] - db[j] - xhat * dg[j]));
            }
        }
    }
    return 0;
}

void FN(fusenn_batchnorm_backward)(size_t n, size_t d, const real *X, ptrdiff_t ldx,
                                   const real *dY, ptrdiff_t lddy, const real *gamma,
                                   const real *mean, const real *invstd,
                                   real *dX, ptrdiff_t lddx, real *dgamma, real *dbeta,
                                   int nthreads)
{
    if (d == 0)
        return;
    const layout L = layout_for(n, d, nthreads);
    const FN(bn_backward_args) args = {L, X, dY, gamma, mean, invstd, ldx, lddy, lddx,
                                    dX, dgamma, dbeta};
    fusenn_parallel_ranges(L.nt, L.nblocks, FN(param_grad_blocks), &args);
    if (dX && n > 0)
        fusenn_parallel_ranges(L.nt, L.nrows * L.nblocks, FN(input_grad_tiles), &args);
}

/* ---- the layer kind --------------------------------------------------------- */
/* Per feature: the last dimension of a sample (channels of an image, features
 * of a time step), statistics over every row of the batch (Keras's axis=-1). */

enum { BN_MOMENTUM, BN_EPS };
static const char *const batchnorm_attrs[] = {"momentum", "eps", NULL};

static int FN(batchnorm_output_shape)(const fusenn_layer *desc, const fusenn_shape *in,
                                      fusenn_shape *out)
{
    const double momentum = desc->attr[BN_MOMENTUM], eps = desc->attr[BN_EPS];
    if (in->rank < 1 || !(momentum >= 0 && momentum <= 1) || !(eps > 0) ||
        desc->buffer[0] == NULL || desc->buffer[1] == NULL)
        return FUSENN_EINVAL;
    *out = *in;
    return FUSENN_OK;
}

static size_t FN(batchnorm_params)(const fusenn_layer *desc, const fusenn_shape *in,
                                   fusenn_shape *shapes, int *decayed)
{
    (void)desc;
    shapes[0] = shapes[1] = fusenn_shape1(fusenn_shape_last(in)); /* gamma, beta */
    decayed[0] = decayed[1] = 0;
    return 2;
}

/* The batch's mean and invstd. */
static size_t FN(batchnorm_saved_bytes)(const FN(layer) *layer, size_t n)
{
    (void)n;
    return 2 * fusenn_shape_last(&layer->in) * sizeof(real);
}

/* Rows of the batch (every sample's rows of d features; the output has the
 * input's shape) and their stride. */
static inline size_t bn_rows(const FN(layer) *layer, size_t n, ptrdiff_t ld, ptrdiff_t *rs)
{
    const size_t per_sample = fusenn_shape_rows(&layer->in);
    *rs = per_sample == 1 ? ld : (ptrdiff_t)fusenn_shape_last(&layer->in);
    return n * per_sample;
}

static int FN(batchnorm_forward_kind)(const FN(layer) *layer, FN(forward_args) *a)
{
    const fusenn_layer *desc = layer->desc;
    const size_t d = fusenn_shape_last(&layer->in);
    ptrdiff_t rs_x, rs_y;
    const size_t rows = bn_rows(layer, a->n, a->ldx, &rs_x);
    bn_rows(layer, a->n, a->ldy, &rs_y);
    real *stats = a->saved;
    if (a->training)
        FN(forward_train)(rows, d, a->x, rs_x, layer->param[0], layer->param[1],
                          desc->attr[BN_EPS], desc->attr[BN_MOMENTUM], desc->buffer[0],
                          desc->buffer[1], a->stats, stats, stats + d, a->y, rs_y, a->nthreads);
    else
        FN(fusenn_batchnorm_forward_infer)(rows, d, a->x, rs_x, layer->param[0], layer->param[1],
                                           desc->attr[BN_EPS], desc->buffer[0], desc->buffer[1],
                                           a->y, rs_y, a->nthreads);
    a->result = a->y;
    a->ld_result = a->ldy;
    return FUSENN_OK;
}

static int FN(batchnorm_backward_kind)(const FN(layer) *layer, FN(backward_args) *a)
{
    const size_t d = fusenn_shape_last(&layer->in);
    ptrdiff_t rs_x;
    const size_t rows = bn_rows(layer, a->n, a->ldx, &rs_x);
    const real *stats = a->saved;
    a->result = a->dy; /* dX overwrites dY in place */
    FN(fusenn_batchnorm_backward)(rows, d, a->x, rs_x, a->dy, (ptrdiff_t)d, layer->param[0],
                                  stats, stats + d, a->dx ? a->dy : NULL, (ptrdiff_t)d,
                                  layer->grad[0], layer->grad[1], a->nthreads);
    return FUSENN_OK;
}

/* A training pass's batch mean and variance, per feature. */
static size_t FN(batchnorm_stats_len)(const FN(layer) *layer)
{
    return 2 * fusenn_shape_last(&layer->in);
}

static void FN(batchnorm_fold_stats)(const FN(layer) *layer, const double *stats)
{
    const size_t d = fusenn_shape_last(&layer->in);
    const double momentum = layer->desc->attr[BN_MOMENTUM];
    real *running_mean = layer->desc->buffer[0], *running_var = layer->desc->buffer[1];
    for (size_t j = 0; j < d; j++) {
        running_mean[j] = FN(running_update)(momentum, running_mean[j], stats[j]);
        running_var[j] = FN(running_update)(momentum, running_var[j], stats[d + j]);
    }
}

const FN(layer_kind) FN(batchnorm_kind) = {
    .name = "batchnorm",
    .attrs = batchnorm_attrs,
    .output_shape = FN(batchnorm_output_shape),
    .params = FN(batchnorm_params),
    .saved_bytes = FN(batchnorm_saved_bytes),
    .forward = FN(batchnorm_forward_kind),
    .backward = FN(batchnorm_backward_kind),
    .stats_len = FN(batchnorm_stats_len),
    .fold_stats = FN(batchnorm_fold_stats),
};
