/*
 * global_pool.c - GlobalAveragePooling / GlobalMaxPooling: a sample of
 * positions x channels (an image's H W positions, a sequence's T steps) to
 * one value per channel, its mean or its maximum:
 *   avg: y_c = (1/S) sum_s x_sc          dx_sc = dy_c / S
 *   max: y_c = max_s x_sc                dx_sc = dy_c at the first maximum, else 0
 * With a sequence's time-step mask, over its real steps only (S of them; a
 * sample with none gives 0 and takes no gradient).
 * Each sample is one thread's: sums run over the positions in order, so the
 * bits do not depend on the thread count.
 */
#include "../layer.h"

enum { GLOBAL_POOL_MODE };
static const char *const global_pool_attrs[] = {"mode", NULL};

static int FN(global_pool_output_shape)(const fusenn_layer *desc, const fusenn_shape *in,
                                        fusenn_shape *out)
{
    const double mode = desc->attr[GLOBAL_POOL_MODE];
    if (in->rank < 2 || (mode != FUSENN_POOL_MAX && mode != FUSENN_POOL_AVG))
        return FUSENN_EINVAL;
    *out = fusenn_shape1(fusenn_shape_last(in));
    return FUSENN_OK;
}

typedef struct {
    size_t positions, channels;
    int max;
    const real *x, *dy;
    ptrdiff_t ldx;
    real *y, *dx;
    ptrdiff_t ldy;
    const unsigned char *mask; /* n x positions, or NULL */
} FN(global_pool_args);

/* The position of channel c's first maximum among the real positions of sample
 * x (real: its mask row, or NULL), or `positions` if there is none. */
static inline size_t FN(first_max)(const real *x, const unsigned char *real_step,
                                   size_t positions, size_t channels, size_t c)
{
    size_t best = positions;
    for (size_t s = 0; s < positions; s++)
        if ((!real_step || real_step[s]) &&
            (best == positions || x[s * channels + c] > x[best * channels + c]))
            best = s;
    return best;
}

/* The number of real positions of a sample. */
static inline size_t real_count(const unsigned char *real_step, size_t positions)
{
    if (!real_step)
        return positions;
    size_t count = 0;
    for (size_t s = 0; s < positions; s++)
        count += real_step[s] != 0;
    return count;
}

static size_t FN(global_pool_samples)(const void *ctx, size_t begin, size_t end)
{
    const FN(global_pool_args) *p = ctx;
    const size_t S = p->positions, C = p->channels;
    for (size_t i = begin; i < end; i++) {
        const real *x = p->x + (ptrdiff_t)i * p->ldx;
        const unsigned char *real_step = p->mask ? p->mask + i * S : NULL;
        const size_t count = real_count(real_step, S);
        real *y = p->y + (ptrdiff_t)i * p->ldy;
        for (size_t c = 0; c < C; c++) {
            if (count == 0) {
                y[c] = 0;
            } else if (p->max) {
                y[c] = x[FN(first_max)(x, real_step, S, C, c) * C + c];
            } else {
                double sum = 0; /* double: many terms */
                for (size_t s = 0; s < S; s++)
                    if (!real_step || real_step[s])
                        sum += x[s * C + c];
                y[c] = (real)(sum / (double)count);
            }
        }
    }
    return 0;
}

static size_t FN(global_pool_grad_samples)(const void *ctx, size_t begin, size_t end)
{
    const FN(global_pool_args) *p = ctx;
    const size_t S = p->positions, C = p->channels;
    for (size_t i = begin; i < end; i++) {
        const real *x = p->x + (ptrdiff_t)i * p->ldx, *dy = p->dy + i * C;
        const unsigned char *real_step = p->mask ? p->mask + i * S : NULL;
        const size_t count = real_count(real_step, S);
        real *dx = p->dx + i * S * C;
        memset(dx, 0, S * C * sizeof(real));
        if (count == 0)
            continue;
        if (p->max) {
            for (size_t c = 0; c < C; c++)
                dx[FN(first_max)(x, real_step, S, C, c) * C + c] = dy[c];
            continue;
        }
        for (size_t s = 0; s < S; s++)
            if (!real_step || real_step[s])
                for (size_t c = 0; c < C; c++)
                    dx[s * C + c] = dy[c] / (real)count;
    }
    return 0;
}

static int FN(global_pool_forward)(const FN(layer) *layer, FN(forward_args) *a)
{
    const size_t C = fusenn_shape_last(&layer->in), S = layer->in_size / C;
    const FN(global_pool_args) args = {
        .positions = S, .channels = C, .max = layer->desc->attr[GLOBAL_POOL_MODE] == FUSENN_POOL_MAX,
        .x = a->x, .ldx = a->ldx, .y = a->y, .ldy = a->ldy, .mask = a->mask};
    fusenn_parallel_ranges(fusenn_threads_for(a->n * layer->in_size, a->nthreads), a->n,
                           FN(global_pool_samples), &args);
    a->result = a->y;
    a->ld_result = a->ldy;
    return FUSENN_OK;
}

static int FN(global_pool_backward)(const FN(layer) *layer, FN(backward_args) *a)
{
    a->result = a->dx;
    if (a->dx == NULL)
        return FUSENN_OK;
    const size_t C = fusenn_shape_last(&layer->in), S = layer->in_size / C;
    const FN(global_pool_args) args = {
        .positions = S, .channels = C, .max = layer->desc->attr[GLOBAL_POOL_MODE] == FUSENN_POOL_MAX,
        .x = a->x, .ldx = a->ldx, .dy = a->dy, .dx = a->dx, .mask = a->mask};
    fusenn_parallel_ranges(fusenn_threads_for(a->n * layer->in_size, a->nthreads), a->n,
                           FN(global_pool_grad_samples), &args);
    return FUSENN_OK;
}

const FN(layer_kind) FN(global_pool_kind) = {
    .name = "global_pool",
    .attrs = global_pool_attrs,
    .output_shape = FN(global_pool_output_shape),
    .forward = FN(global_pool_forward),
    .backward = FN(global_pool_backward),
};
