/*
 * dense.c - the fully connected layer Y = act(X W + b) and its backward pass.
 * X is n x d_in (a batch of rows), W is d_in x d_out (fan_in x units, as
 * Keras), b has d_out entries.
 */
#include "internal.h"

int FN(fusenn_dense_forward)(size_t n, size_t d_in, size_t d_out,
                             const real *X, ptrdiff_t rs_x, ptrdiff_t cs_x,
                             const real *W, ptrdiff_t rs_w, ptrdiff_t cs_w,
                             const real *b, fusenn_activation act,
                             real *Y, ptrdiff_t ldy, int nthreads)
{
    /* Bias and elementwise activations are applied in GEMM's tile store;
     * softmax needs complete rows, so it gets its own pass. */
    fusenn_activation in_store = act == FUSENN_ACT_SOFTMAX ? FUSENN_ACT_IDENTITY : act;
    int rc = FN(fusenn_gemm_fused)(n, d_out, d_in, 1, X, rs_x, cs_x, W, rs_w, cs_w, 0,
                                   Y, ldy, 1, b, in_store, nthreads);
    if (rc == FUSENN_OK && act == FUSENN_ACT_SOFTMAX)
        FN(fusenn_activation_forward)(act, n, d_out, Y, ldy, Y, ldy, nthreads);
    return rc;
}

/* Columns per block in the dZ/db pass: a fixed partition, so each db[j] is
 * summed over rows in order by one thread whatever the thread count. */
#define DB_BLOCK 64

/* The dZ/db pass's arguments. */
typedef struct {
    size_t n, d_out;
    const real *Y, *dY;
    ptrdiff_t ldy, lddy;
    fusenn_activation act;
    real *dZ, *db;
} FN(dz_db_args);

/* Column blocks [begin, end) of the dZ/db pass. */
static size_t FN(dz_db_blocks)(const void *ctx, size_t begin, size_t end)
{
    const FN(dz_db_args) *p = ctx;
    const size_t n = p->n, d_out = p->d_out;
    const real *Y = p->Y, *dY = p->dY;
    const ptrdiff_t ldy = p->ldy, lddy = p->lddy;
    const fusenn_activation act = p->act;
    real *dZ = p->dZ, *db = p->db;
    for (size_t blk = begin; blk < end; blk++) {
        const size_t j0 = blk * DB_BLOCK, w = FUSENN_MIN((size_t)DB_BLOCK, d_out - j0);
        double sum[DB_BLOCK] = {0}; /* double: batch sums of many small terms */
        for (size_t i = 0; i < n; i++) {
            real *dz = dZ + i * d_out + j0;
            if (act != FUSENN_ACT_SOFTMAX)
                FN(activate_backward_row)(act, w, NULL, Y + (ptrdiff_t)i * ldy + j0,
                                          dY + (ptrdiff_t)i * lddy + j0, dz);
            for (size_t j = 0; j < w; j++)
                sum[j] += dz[j];
        }
        for (size_t j = 0; j < w; j++)
            db[j0 + j] = (real)sum[j];
    }
    return 0;
}

/* dZ = dY * act'(Y) and db = sum_i dZ[i, :], in one pass over dY. */
static void FN(dz_and_bias_grad)(size_t n, size_t d_out, const real *Y, ptrdiff_t ldy,
                                 const real *dY, ptrdiff_t lddy, fusenn_activation act,
                                 real *dZ, real *db, int nthreads)
{
    if (act == FUSENN_ACT_SOFTMAX) /* needs whole rows: its own pass, then the sums */
        FN(fusenn_activation_backward)(act, n, d_out, NULL, 0, Y, ldy, dY, lddy, dZ,
                                       (ptrdiff_t)d_out, nthreads);
    const size_t n_blocks = (d_out + DB_BLOCK - 1) / DB_BLOCK;
    const FN(dz_db_args) args = {n, d_out, Y, dY, ldy, lddy, act, dZ, db};
    fusenn_parallel_ranges(n_blocks > 1 ? fusenn_threads_for(n * d_out, nthreads) : 1,
                           n_blocks, FN(dz_db_blocks), &args);
}

/* The backward pass's two products, dW = X^T dZ and dX = dZ W^T: independent,
 * and of the same size (n d_in d_out multiply-adds each). */
typedef struct {
    size_t n, d_in, d_out;
    const real *X, *W, *dZ;
    ptrdiff_t rs_x, cs_x, rs_w, cs_w;
    real *dW, *dX;
    int nthreads; /* threads for each product */
} FN(backward_products);

static int FN(weight_grad)(const FN(backward_products) *p)
{
    /* dW = X^T dZ: X^T is X with its strides swapped. */
    return FN(fusenn_gemm)(p->d_in, p->d_out, p->n, 1, p->X, p->cs_x, p->rs_x, p->dZ,
                           (ptrdiff_t)p->d_out, 1, 0, p->dW, (ptrdiff_t)p->d_out, 1, p->nthreads);
}

static int FN(input_grad)(const FN(backward_products) *p)
{
    /* dX = dZ W^T */
    return FN(fusenn_gemm)(p->n, p->d_in, p->d_out, 1, p->dZ, (ptrdiff_t)p->d_out, 1, p->W,
                           p->cs_w, p->rs_w, 0, p->dX, (ptrdiff_t)p->d_in, 1, p->nthreads);
}

/* Product 0 is dW, product 1 is dX; returns how many failed. */
static size_t FN(backward_products_range)(const void *ctx, size_t begin, size_t end)
{
    const FN(backward_products) *p = ctx;
    size_t failed = 0;
    for (size_t i = begin; i < end; i++)
        failed += (i == 0 ? FN(weight_grad)(p) : FN(input_grad)(p)) != FUSENN_OK;
    return failed;
}

int FN(fusenn_dense_backward)(size_t n, size_t d_in, size_t d_out,
                              const real *X, ptrdiff_t rs_x, ptrdiff_t cs_x,
                              const real *W, ptrdiff_t rs_w, ptrdiff_t cs_w,
                              const real *Y, ptrdiff_t ldy,
                              const real *dY, ptrdiff_t lddy, fusenn_activation act,
                              real *dZ, real *dW, real *db, real *dX, int nthreads)
{
    if (fusenn_act_needs_z(act)) /* act'(Z) is not a function of Y alone */
        return FUSENN_EINVAL;
    FN(dz_and_bias_grad)(n, d_out, Y, ldy, dY, lddy, act, dZ, db, nthreads);
    FN(backward_products) p = {n, d_in, d_out, X, W, dZ, rs_x, cs_x, rs_w, cs_w, dW, dX,
                               nthreads};
    if (dX == NULL) /* the first layer needs no input gradient */
        return FN(weight_grad)(&p);
    /* On two threads, each computes one whole product on its own: the products
     * are the same size, and a one-thread GEMM neither splits panels nor waits
     * for the other thread. Every product's bits are the same on any number of
     * threads, so this changes none. (More threads would need nested parallel
     * regions; they take the products one after the other.) */
    if (nthreads == 2 && !fusenn_gemm_is_serial(n, d_in, d_out)) {
        p.nthreads = 1;
        return fusenn_parallel_ranges(2, 2, FN(backward_products_range), &p) ? FUSENN_ENOMEM
                                                                              : FUSENN_OK;
    }
    int rc = FN(weight_grad)(&p);
    return rc == FUSENN_OK ? FN(input_grad)(&p) : rc;
}
