/*
 * recurrent.c - the recurrent kinds' shared parts (recurrent.h): attributes,
 * parameters, the layout of their saved and scratch bytes, and the forward
 * and backward drivers around a kind's cell.
 */
#include "recurrent.h"

/* ---- attributes and parameters ------------------------------------------------- */

static int valid_count(double v) { return v >= 1 && v <= 2147483647.0 && v == (double)(size_t)v; }

static int valid_flag(double v) { return v == 0 || v == 1; }

/* An elementwise activation (softmax needs whole rows). */
static int valid_gate_activation(double v)
{
    return v >= FUSENN_ACT_IDENTITY && v <= FUSENN_ACT_SWISH && v == (double)(int)v &&
           v != FUSENN_ACT_SOFTMAX;
}

int FN(rnn_output_shape)(const fusenn_layer *desc, const fusenn_shape *in, fusenn_shape *out,
                         int gated)
{
    const double *attr = desc->attr;
    if (in->rank != 2 || !valid_count(attr[RNN_UNITS]) ||
        !valid_gate_activation(attr[RNN_ACTIVATION]) ||
        !valid_flag(attr[RNN_RETURN_SEQUENCES]) || !valid_flag(attr[RNN_GO_BACKWARDS]) ||
        (gated && !valid_gate_activation(attr[RNN_RECURRENT_ACTIVATION])))
        return FUSENN_EINVAL;
    const size_t units = (size_t)attr[RNN_UNITS];
    *out = attr[RNN_RETURN_SEQUENCES] ? (fusenn_shape){2, {in->dim[0], units, 0, 0}}
                                      : fusenn_shape1(units);
    return FUSENN_OK;
}

/* kernel (F, G u) and recurrent_kernel (u, G u), both decayed; bias (G u). */
size_t FN(rnn_params)(const fusenn_layer *desc, const fusenn_shape *in, fusenn_shape *shapes,
                      int *decayed, size_t gates)
{
    const size_t u = (size_t)desc->attr[RNN_UNITS];
    shapes[0] = (fusenn_shape){2, {in->dim[1], gates * u, 0, 0}};
    shapes[1] = (fusenn_shape){2, {u, gates * u, 0, 0}};
    shapes[2] = fusenn_shape1(gates * u);
    decayed[0] = decayed[1] = 1;
    decayed[2] = 0;
    return 3;
}

rnn_dims FN(rnn_dims_of)(const FN(layer) *layer, size_t gates)
{
    const double *attr = layer->desc->attr;
    rnn_dims d = {
        .T = layer->in.dim[0], .F = layer->in.dim[1], .u = (size_t)attr[RNN_UNITS], .G = gates,
        .act = (fusenn_activation)(int)attr[RNN_ACTIVATION],
        .rec = (fusenn_activation)(int)attr[RNN_RECURRENT_ACTIVATION],
        .return_sequences = attr[RNN_RETURN_SEQUENCES] != 0,
        .go_backwards = attr[RNN_GO_BACKWARDS] != 0,
        .reset_after = attr[RNN_RESET_AFTER] != 0};
    return d;
}

/* ---- layout ---------------------------------------------------------------------- */

static size_t carve(size_t *offset, size_t bytes)
{
    const size_t at = *offset;
    *offset += (bytes + 63) / 64 * 64;
    return at;
}

/* Lay out a pass over n samples in saved and work (NULL: only measure), its
 * recurrent kernels packed for about n rows; returns the work bytes and sets
 * *saved_bytes. */
static size_t FN(rnn_layout)(const rnn_dims *d, size_t n, const FN(rnn_cell) *cell,
                             int backward, FN(rnn_pass) *p, char *saved, char *work,
                             size_t *saved_bytes)
{
    const size_t r = sizeof(real), steps = n * d->T, Gu = d->G * d->u;
    size_t s = 0, w = 0;
    const size_t xh = carve(&s, steps * (d->F + d->u) * r), gates = carve(&s, steps * Gu * r);
    size_t extra[2] = {0, 0}, packed[RNN_MAX_PACKED] = {0, 0};
    for (size_t e = 0; e < cell->extras; e++)
        extra[e] = carve(&s, steps * d->u * r);
    *saved_bytes = s;
    const size_t n_packed = cell->packings(d, n, backward, p->packed);
    /* room for the tile of any fewer rows: the plan runs smaller batches in this work */
    for (size_t i = 0; i < n_packed; i++)
        packed[i] = carve(&w, FN(fusenn_gemm_packed_len_upto)(n, p->packed[i].n,
                                                              p->packed[i].k) * r);
    const size_t row_width = cell->row_width(d, backward), dP_width = cell->dP_width(d);
    const size_t rows = carve(&w, n * row_width * r);
    const size_t dP = backward ? carve(&w, steps * dP_width * r) : 0;
    const size_t sums = backward ? carve(&w, n * dP_width * sizeof(double)) : 0;
    const size_t xs = carve(&w, steps * d->F * r);
    const size_t dWU = backward ? carve(&w, (d->F + d->u) * Gu * r) : 0;
    if (saved) {
        p->d = *d;
        p->n = n;
        p->xh = (real *)(saved + xh);
        p->h_width = d->F + d->u;
        p->h = p->xh + d->F;
        p->gates = (real *)(saved + gates);
        for (size_t e = 0; e < cell->extras; e++)
            p->extra[e] = (real *)(saved + extra[e]);
        for (size_t i = 0; i < n_packed; i++)
            p->Up[i] = (real *)(work + packed[i]);
        p->rows = (real *)(work + rows);
        p->row_width = row_width;
        p->dP = backward ? (real *)(work + dP) : NULL;
        p->dP_width = dP_width;
        p->sums = backward ? (double *)(work + sums) : NULL;
        p->xs = (real *)(work + xs);
        p->dWU = backward ? (real *)(work + dWU) : NULL;
    }
    return w;
}

/* Samples per forward pass at inference: the saved states of every step are
 * not needed then, and a pass over a large batch would touch (and so page in)
 * the whole saved area of a training batch that size. About this many bytes
 * of per-step arrays per pass; the bits do not depend on the split. */
#define RNN_INFER_BYTES ((size_t)8 << 20)

static size_t FN(rnn_infer_chunk)(const rnn_dims *d, size_t n, const FN(rnn_cell) *cell)
{
    const size_t per_sample = d->T * (d->F + d->u * (d->G + 1 + cell->extras)) * sizeof(real);
    return FUSENN_MAX((size_t)1, FUSENN_MIN(n, RNN_INFER_BYTES / per_sample));
}

size_t FN(rnn_saved_bytes)(const FN(layer) *layer, size_t n)
{
    const FN(rnn_cell) *cell = layer->impl;
    const rnn_dims d = FN(rnn_dims_of)(layer, cell->gates);
    FN(rnn_pass) p;
    size_t saved;
    FN(rnn_layout)(&d, n, cell, 0, &p, NULL, NULL, &saved);
    return saved;
}

size_t FN(rnn_work_bytes)(const FN(layer) *layer, size_t n)
{
    const FN(rnn_cell) *cell = layer->impl;
    const rnn_dims d = FN(rnn_dims_of)(layer, cell->gates);
    FN(rnn_pass) p;
    size_t saved;
    const size_t forward = FN(rnn_layout)(&d, n, cell, 0, &p, NULL, NULL, &saved);
    const size_t backward = FN(rnn_layout)(&d, n, cell, 1, &p, NULL, NULL, &saved);
    const size_t infer = FN(rnn_layout)(&d, FN(rnn_infer_chunk)(&d, n, cell), cell, 0, &p,
                                        NULL, NULL, &saved);
    return FUSENN_MAX(FUSENN_MAX(forward, backward), infer);
}

/* ---- the passes ---------------------------------------------------------------------- */

/* Samples per unit of the time loop's work on several threads: a few units
 * per thread, handed out as threads come free, so that a thread slowed by
 * another machine on its vCPU holds the others back less; at least the
 * per-step products' tallest tile. */
#define RNN_UNITS_PER_THREAD 4
#define RNN_MIN_UNIT 8

/* The time loop fn over samples [0, m): on one thread, or on several taking
 * units of samples (the bits do not depend on how the samples are cut, each
 * one's arithmetic is the same); returns fn's failures. The per-step
 * products' size decides whether several threads pay, as for one GEMM. */
typedef struct {
    fusenn_range_fn fn;
    const void *ctx;
    size_t unit, m;
} rnn_units;

static size_t rnn_unit(const void *ctx, size_t i, int thread)
{
    const rnn_units *u = ctx;
    (void)thread;
    return u->fn(u->ctx, i * u->unit, FUSENN_MIN((i + 1) * u->unit, u->m));
}

static size_t FN(rnn_time_loop)(const rnn_dims *d, size_t m, fusenn_range_fn fn,
                                const void *ctx, int nthreads)
{
    /* alone (fusenn_team_size), one range: the per-step products take all samples */
    if (fusenn_team_size(nthreads) <= 1 || m < 2
        || fusenn_gemm_is_serial(m * d->T, d->G * d->u, d->u))
        return fn(ctx, 0, m);
    const size_t nt = FUSENN_MIN((size_t)nthreads, m);
    const size_t unit = FUSENN_MAX((m + RNN_UNITS_PER_THREAD * nt - 1) / (RNN_UNITS_PER_THREAD * nt),
                                   FUSENN_MIN((size_t)RNN_MIN_UNIT, (m + nt - 1) / nt));
    const rnn_units units = {fn, ctx, unit, m};
    return fusenn_parallel_units((int)nt, (m + unit - 1) / unit, rnn_unit, &units);
}

/* A sample-major array (n, T, F) and a step-major one (T, n; rows ld apart),
 * and a contiguous step-major copy (or NULL). */
typedef struct {
    size_t n, T, F;
    real *samples, *steps;
    ptrdiff_t ld;
    int to_steps; /* copy samples into steps (and copy), else back */
    real *copy;
} FN(rnn_reorder_args);

static size_t FN(rnn_reorder_samples)(const void *ctx, size_t begin, size_t end)
{
    const FN(rnn_reorder_args) *p = ctx;
    const size_t bytes = p->F * sizeof(real);
    for (size_t r = begin; r < end; r++)
        for (size_t t = 0; t < p->T; t++) {
            real *sample = p->samples + (r * p->T + t) * p->F;
            real *step = p->steps + (ptrdiff_t)(t * p->n + r) * p->ld;
            if (!p->to_steps) {
                memcpy(sample, step, bytes);
                continue;
            }
            memcpy(step, sample, bytes);
            if (p->copy)
                memcpy(p->copy + (t * p->n + r) * p->F, sample, bytes);
        }
    return 0;
}

/* Elements below which the reorder copies on one thread: a copy of a few MB
 * takes tens of microseconds, less than waking a second thread can cost on a
 * busy machine (a 2-thread LSTM step at 64x28x28x128 ran 7 parallel regions
 * in 195 ms of wall time, 7.6 ms on one thread, under a load of 10 on 2
 * vCPUs). */
#define RNN_REORDER_PARALLEL_MIN ((size_t)1 << 21)

static void FN(rnn_reorder)(size_t n, size_t T, size_t F, real *samples, real *steps,
                            ptrdiff_t ld, int to_steps, real *copy, int nthreads)
{
    const FN(rnn_reorder_args) args = {n, T, F, samples, steps, ld, to_steps, copy};
    fusenn_parallel_ranges(n * T * F < RNN_REORDER_PARALLEL_MIN ? 1 : nthreads, n,
                           FN(rnn_reorder_samples), &args);
}

int FN(rnn_forward)(const FN(layer) *layer, FN(forward_args) *a)
{
    const FN(rnn_cell) *cell = layer->impl;
    const rnn_dims d = FN(rnn_dims_of)(layer, cell->gates);
    const size_t n = a->n, Gu = d.G * d.u;
    if (a->ldx != (ptrdiff_t)layer->in_size) /* the steps of all samples are read as rows */
        return FUSENN_EINVAL;
    a->result = a->y;
    a->ld_result = a->ldy;
    const size_t chunk = a->training ? n : FN(rnn_infer_chunk)(&d, n, cell);
    FN(rnn_pass) p;
    size_t saved;
    FN(rnn_layout)(&d, chunk, cell, 0, &p, a->saved, a->work, &saved);
    p.W = layer->param[0];
    p.U = layer->param[1];
    p.b = layer->param[2];
    p.ldy = a->ldy;
    cell->pack(&p, 0);
    for (size_t n0 = 0; n0 < n; n0 += chunk) {
        const size_t m = FUSENN_MIN(chunk, n - n0);
        p.n = m;
        p.x = (const real *)a->x + n0 * layer->in_size;
        p.y = a->y + (ptrdiff_t)n0 * a->ldy;
        p.mask = a->mask ? a->mask + n0 * d.T : NULL;
        FN(rnn_reorder)(m, d.T, d.F, (real *)p.x, p.xh, (ptrdiff_t)p.h_width, 1, p.xs,
                        a->nthreads);
        /* P = X W + b over every step (GRU's input bias is the first row of its bias) */
        int rc = FN(fusenn_gemm_fused)(m * d.T, Gu, d.F, 1, p.xs, (ptrdiff_t)d.F, 1, p.W,
                                       (ptrdiff_t)Gu, 1, 0, p.gates, (ptrdiff_t)Gu, 1, p.b,
                                       FUSENN_ACT_IDENTITY, a->nthreads);
        if (rc != FUSENN_OK)
            return rc;
        if (FN(rnn_time_loop)(&d, m, cell->forward_rows, &p, a->nthreads))
            return FUSENN_ENOMEM;
    }
    return FUSENN_OK;
}

int FN(rnn_grad_xh)(const FN(rnn_pass) *p, size_t from, size_t width, size_t to, real *dW,
                    real *dU, int nthreads)
{
    const size_t F = p->d.F, u = p->d.u, Gu = p->d.G * u;
    int rc = FN(fusenn_gemm)(F + u, width, p->n * p->d.T, 1, p->xh, 1, (ptrdiff_t)p->h_width,
                             p->dP + from, (ptrdiff_t)p->dP_width, 1, 0, p->dWU,
                             (ptrdiff_t)width, 1, nthreads);
    for (size_t i = 0; rc == FUSENN_OK && i < F + u; i++)
        memcpy((i < F ? dW + i * Gu : dU + (i - F) * Gu) + to, p->dWU + i * width,
               width * sizeof(real));
    return rc;
}

int FN(rnn_grad_x)(const FN(rnn_pass) *p, size_t from, size_t width, size_t to, real *dW,
                   int nthreads)
{
    return FN(fusenn_gemm)(p->d.F, width, p->n * p->d.T, 1, p->xh, 1, (ptrdiff_t)p->h_width,
                           p->dP + from, (ptrdiff_t)p->dP_width, 1, 0, dW + to,
                           (ptrdiff_t)(p->d.G * p->d.u), 1, nthreads);
}

int FN(rnn_grad_s)(const FN(rnn_pass) *p, const real *S, ptrdiff_t ld_s, size_t from,
                   size_t width, size_t to, real *dU, int nthreads)
{
    return FN(fusenn_gemm)(p->d.u, width, p->n * p->d.T, 1, S, 1, ld_s, p->dP + from,
                           (ptrdiff_t)p->dP_width, 1, 0, dU + to,
                           (ptrdiff_t)(p->d.G * p->d.u), 1, nthreads);
}

/* Each sample's sums of its dP rows (rows [begin, end) of p->sums), added up
 * in sample order into the first: the same bits for any thread count. */
static void FN(rnn_sum_samples)(const FN(rnn_pass) *p)
{
    const size_t w = p->dP_width;
    for (size_t r = 1; r < p->n; r++)
        for (size_t j = 0; j < w; j++)
            p->sums[j] += p->sums[r * w + j];
}

int FN(rnn_backward)(const FN(layer) *layer, FN(backward_args) *a)
{
    const FN(rnn_cell) *cell = layer->impl;
    const rnn_dims d = FN(rnn_dims_of)(layer, cell->gates);
    const size_t n = a->n, Gu = d.G * d.u, steps = n * d.T;
    if (a->ldx != (ptrdiff_t)layer->in_size)
        return FUSENN_EINVAL;
    a->result = a->dx;
    FN(rnn_pass) p;
    size_t saved;
    FN(rnn_layout)(&d, n, cell, 1, &p, (char *)a->saved, a->work, &saved);
    p.W = layer->param[0];
    p.U = layer->param[1];
    p.b = layer->param[2];
    p.dy = a->dy;
    p.mask = a->mask;
    cell->pack(&p, 1);
    if (FN(rnn_time_loop)(&d, n, cell->backward_rows, &p, a->nthreads))
        return FUSENN_ENOMEM;
    FN(rnn_sum_samples)(&p);
    int rc = cell->param_grads(&p, p.sums, layer->grad[0], layer->grad[1], layer->grad[2],
                               a->nthreads);
    /* dX = dP W^T over every step, a product per input-side block */
    rnn_block blocks[2];
    const size_t n_blocks = cell->input_blocks(&d, blocks);
    const ptrdiff_t ld = (ptrdiff_t)p.dP_width;
    for (size_t i = 0; a->dx && i < n_blocks && rc == FUSENN_OK; i++)
        rc = FN(fusenn_gemm)(steps, d.F, blocks[i].width, 1, p.dP + blocks[i].from, ld, 1,
                             p.W + blocks[i].to, 1, (ptrdiff_t)Gu, i > 0, p.xs, (ptrdiff_t)d.F,
                             1, a->nthreads);
    if (a->dx && rc == FUSENN_OK)
        FN(rnn_reorder)(n, d.T, d.F, a->dx, p.xs, (ptrdiff_t)d.F, 0, NULL, a->nthreads);
    return rc;
}
