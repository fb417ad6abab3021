/*
 * recurrent.h - what the recurrent kinds (simple_rnn.c, gru.c, lstm.c) share:
 * Keras's attributes and weights, the time loop's data layout and its
 * drivers (recurrent.c). A kind supplies its cell: how it packs its recurrent
 * kernel, and its forward and backward time loops over a range of samples.
 * Its layer_kind record names the shared operations (rnn_forward, ...) and
 * passes the cell as impl, which they read as layer->impl.
 *
 * A layer reads sequences x (T x F per sample) and keeps a state h of u units
 * (LSTM also a cell state c); its G gates have weights kernel W (F x G u),
 * recurrent_kernel U (u x G u) and a bias. It returns the last state (u) or,
 * with return_sequences, every step's (T x u, in the order the steps are read:
 * reversed with go_backwards). A step whose mask byte is 0 carries the state
 * over unchanged (its output repeats it).
 *
 * Forward:  P = X W + b over all T n steps (one GEMM, in the saved gates);
 *           per step, P_t += h U (U packed once per call), then the cell
 *           turns P_t into its gates and the new state in one pass per row.
 * Backward: per step in reverse, the cell turns dh into dP_t (the
 *           pre-activations' gradient), then dh = dP_t U^T (U^T packed once);
 *           after the loop dW = X^T dP, dU = H^T dP and dX = dP W^T are one
 *           GEMM each over all steps, db a column sum of dP.
 * Samples are independent through the recurrence, so the time loop splits
 * them between threads (no barrier per step); every row's sums are the same
 * whatever the split, so the bits do not depend on the thread count.
 *
 * Per-step arrays are step-major, (T, n, width), indexed by the time step t
 * a step reads (not by the order of reading): a step's rows are contiguous,
 * and all arrays list the rows of every step in the same order, so the
 * products over all steps take them as they are. The forward pass copies the
 * input x_t next to the state h_{t-1} each step starts from (XH, rows of
 * F + u): the input projection and dW read X there, dU and the steps' h U
 * read H.
 */
#ifndef FUSENN_RECURRENT_H
#define FUSENN_RECURRENT_H

#include "../layer.h"

/* Attributes, in this order for every recurrent kind (SimpleRNN has the first
 * four, LSTM five). */
enum {
    RNN_UNITS,
    RNN_ACTIVATION,
    RNN_RETURN_SEQUENCES,
    RNN_GO_BACKWARDS,
    RNN_RECURRENT_ACTIVATION,
    RNN_RESET_AFTER
};

/* A layer's dimensions and options. */
typedef struct {
    size_t T, F, u, G;         /* steps, features, units, gates */
    fusenn_activation act, rec; /* activation, recurrent_activation */
    int return_sequences, go_backwards, reset_after;
} rnn_dims;

/* The time step read at step s. */
static inline size_t rnn_time(const rnn_dims *d, size_t s)
{
    return d->go_backwards ? d->T - 1 - s : s;
}

#ifndef FUSENN_NO_DTYPE

#define RNN_MAX_PACKED 2

/* One pass (forward or backward) over n samples: the layer's arrays as the
 * time loops see them. Row r of a per-step array X at time t: rnn_at. */
typedef struct FN(rnn_pass) {
    rnn_dims d;
    size_t n;
    const real *x;               /* n x T x F, contiguous */
    const real *W, *U, *b;
    real *y;                     /* forward output, sample stride ldy */
    ptrdiff_t ldy;
    const real *dy;              /* backward: dL/dy, contiguous */
    const unsigned char *mask;   /* n x T, or NULL */
    /* saved: */
    real *xh;                    /* T n (F + u): each step's input and the state it starts
                                    from */
    real *h;                     /* xh + F: the states, rows h_width = F + u apart */
    size_t h_width;
    real *gates;                 /* T n G u: P, then the gates (pre-activations where the
                                    activation's derivative needs them) */
    real *extra[2];              /* T n u each: the kind's (see its file) */
    /* work: */
    FN(gemm_packed) packed[RNN_MAX_PACKED];
    real *Up[RNN_MAX_PACKED];    /* the packed recurrent kernels of this pass */
    real *rows;                  /* n x row_width: per-sample scratch */
    size_t row_width;
    real *dP;                    /* backward: T n dP_width, the pre-activations' gradient */
    real *xs;                    /* T n F: forward, X for the projection (read from XH,
                                    rows F + u apart, it ran at 90 GF/s, against 140);
                                    backward, dX before it is put in sample order */
    real *dWU;                   /* backward: (F + u) x G u, [dW; dU] before they are put apart */
    size_t dP_width;
    double *sums;                /* backward: n x dP_width, each sample's sum of its dP rows */
} FN(rnn_pass);

/* Columns [from, from + width) of dP rows that are the gradient of the input
 * projection's columns [to, to + width) (of X W + b), for dX. */
typedef struct {
    size_t from, to, width;
} rnn_block;

/* A recurrent kind's cell. */
typedef struct {
    size_t gates, extras;    /* G, and the kind's per-step arrays of u (extra) */
    /* the width of a dP row, and its input-side blocks (at most 2) */
    size_t (*dP_width)(const rnn_dims *d);
    size_t (*input_blocks)(const rnn_dims *d, rnn_block *blocks);
    /* per-sample scratch of the forward and backward passes, in elements */
    size_t (*row_width)(const rnn_dims *d, int backward);
    /* the recurrent kernel's packings of a pass over about m rows, and the
     * elements of each; pack(p, backward) fills p->Up */
    size_t (*packings)(const rnn_dims *d, size_t m, int backward, FN(gemm_packed) *packed);
    void (*pack)(FN(rnn_pass) *p, int backward);
    /* the time loop over samples [begin, end): forward from the gates'
     * input projection; backward into dP and each sample's sums of it (both
     * return failures) */
    fusenn_range_fn forward_rows, backward_rows;
    /* dW, dU, and db from the sums of every dP row (sums), after the
     * backward time loop */
    int (*param_grads)(const FN(rnn_pass) *p, const double *sums, real *dW, real *dU, real *db,
                       int nthreads);
} FN(rnn_cell);

int FN(rnn_output_shape)(const fusenn_layer *desc, const fusenn_shape *in, fusenn_shape *out,
                         int gated);
size_t FN(rnn_params)(const fusenn_layer *desc, const fusenn_shape *in, fusenn_shape *shapes,
                      int *decayed, size_t gates);
rnn_dims FN(rnn_dims_of)(const FN(layer) *layer, size_t gates);
/* The recurrent kinds' operations; each kind's record passes its cell as impl. */
size_t FN(rnn_saved_bytes)(const FN(layer) *layer, size_t n);
size_t FN(rnn_work_bytes)(const FN(layer) *layer, size_t n);
int FN(rnn_forward)(const FN(layer) *layer, FN(forward_args) *a);
/* The weights' gradients of dP columns [from, from + width) over every step,
 * as columns [to, to + width) of dW and dU: both in one product [X H]^T dP
 * (dP read once), or dW alone (X^T dP), or dU alone from the states S (rows
 * ld_s apart; S^T dP). */
int FN(rnn_grad_xh)(const FN(rnn_pass) *p, size_t from, size_t width, size_t to, real *dW,
                    real *dU, int nthreads);
int FN(rnn_grad_x)(const FN(rnn_pass) *p, size_t from, size_t width, size_t to, real *dW,
                   int nthreads);
int FN(rnn_grad_s)(const FN(rnn_pass) *p, const real *S, ptrdiff_t ld_s, size_t from,
                   size_t width, size_t to, real *dU, int nthreads);
int FN(rnn_backward)(const FN(layer) *layer, FN(backward_args) *a);

/* Whether a gate's stored value is its pre-activation (the activation's
 * derivative needs it) rather than its value. */
static inline int rnn_keeps_z(fusenn_activation act) { return fusenn_act_needs_z(act); }

/* Row r of per-step array X (width per step) at time t. */
static inline real *FN(rnn_at)(const FN(rnn_pass) *p, real *X, size_t width, size_t r, size_t t)
{
    return X + (t * p->n + r) * width;
}

/* Sample r's state before the step that reads time t. */
static inline real *FN(rnn_h)(const FN(rnn_pass) *p, size_t r, size_t t)
{
    return p->h + (t * p->n + r) * p->h_width;
}

/* The mask byte of sample r at time t (1 without a mask). */
static inline int FN(rnn_real)(const FN(rnn_pass) *p, size_t r, size_t t)
{
    return p->mask == NULL || p->mask[r * p->d.T + t] != 0;
}

/* Where the forward pass writes sample r's state after step s, or NULL (an
 * output of the last state only, before the last step). */
static inline real *FN(rnn_output)(const FN(rnn_pass) *p, size_t r, size_t s)
{
    real *y = p->y + (ptrdiff_t)r * p->ldy;
    if (p->d.return_sequences)
        return y + s * p->d.u;
    return s + 1 == p->d.T ? y : NULL;
}

/* dh (and dc) of the last state, before the backward time loop: dy, or 0
 * with return_sequences (each step adds its own). */
static inline void FN(rnn_last_dh)(const FN(rnn_pass) *p, size_t r, real *dh)
{
    const size_t u = p->d.u;
    if (p->d.return_sequences)
        memset(dh, 0, u * sizeof(real));
    else
        memcpy(dh, p->dy + r * u, u * sizeof(real));
}

/* ---- the time loops, compiled once per ISA ------------------------------------
 * Each kind's time loops are a template (<kind>_steps.h) that its file
 * includes once per ISA with RNN_ISA (generic, avx2, avx512), RNN_ATTR (the
 * functions' target) and RNN_VBYTES (vector bytes) defined: the gates' loops
 * then vectorise to the ISA's width. RNN_ISA_FN(name) names an instance's
 * function (name_avx512_f32), RNN_DISPATCH calls the one for this CPU (or
 * FUSENN_ISA). */
#define RNN_PASTE_(a, b, c) a##_##b##_##c
#define RNN_PASTE(a, b, c) RNN_PASTE_(a, b, c)
#if defined(FUSENN_DTYPE_F32)
#define RNN_DTYPE f32
#else
#define RNN_DTYPE f64
#endif
#define RNN_ISA_FN(name) RNN_PASTE(name, RNN_ISA, RNN_DTYPE)
#if defined(__x86_64__) && defined(__GNUC__)
#define RNN_HAVE_X86 1
#define RNN_DISPATCH(name, ...)                                                          \
    (fusenn_isa_level() == FUSENN_ISA_AVX512 ? RNN_PASTE(name, avx512, RNN_DTYPE)(__VA_ARGS__) \
     : fusenn_isa_level() == FUSENN_ISA_AVX2 ? RNN_PASTE(name, avx2, RNN_DTYPE)(__VA_ARGS__)   \
                                             : RNN_PASTE(name, generic, RNN_DTYPE)(__VA_ARGS__))
#define RNN_AVX2_ATTR __attribute__((target("avx2,fma")))
#define RNN_AVX512_ATTR __attribute__((target("avx512f,avx2,fma")))
#else
#define RNN_DISPATCH(name, ...) RNN_PASTE(name, generic, RNN_DTYPE)(__VA_ARGS__)
#endif

#endif /* FUSENN_NO_DTYPE */
#endif /* FUSENN_RECURRENT_H */
