/*
 * fusenn.h - the one public header of fusenn's C kernels.
 *
 * Plain C99, no Python. Every kernel exists for float (suffix _f32) and double
 * (suffix _f64); both are generated from one dtype-generic source (see
 * internal.h). Matrices are row-major and described by a pointer plus a leading
 * dimension (elements between consecutive rows; columns are contiguous), except
 * GEMM, which takes a row stride and a column stride per matrix so that
 * transposed and sliced views cost nothing (A^T is A with its strides swapped).
 *
 * Every kernel takes `nthreads`, the number of OpenMP threads it may use: the
 * library keeps its own thread count because OpenMP's setting is per calling
 * thread. Work below a size threshold runs serially whatever nthreads says.
 * Results do not depend on nthreads: reductions use fixed partitions summed in
 * a fixed order, and GEMM never splits the k dimension.
 *
 * Functions returning int return FUSENN_OK or FUSENN_ENOMEM (and
 * fusenn_dense_backward FUSENN_EINVAL, see there).
 */
#ifndef FUSENN_H
#define FUSENN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define FUSENN_OK 0
#define FUSENN_ENOMEM (-1)
#define FUSENN_EINVAL (-3) /* an argument the kernel cannot take (see its doc) */

/* Negative-side slope of leaky_relu (Keras and PyTorch use 0.01 too). */
#define FUSENN_LEAKY_RELU_SLOPE 0.01
/* alpha of elu: z > 0 ? z : alpha (e^z - 1) (Keras and PyTorch default 1). */
#define FUSENN_ELU_ALPHA 1.0

typedef enum {
    FUSENN_ACT_IDENTITY = 0,
    FUSENN_ACT_SIGMOID = 1,
    FUSENN_ACT_TANH = 2,
    FUSENN_ACT_RELU = 3,
    FUSENN_ACT_LEAKY_RELU = 4,
    FUSENN_ACT_SOFTMAX = 5,    /* row-wise */
    FUSENN_ACT_GELU = 6,       /* 0.5 z (1 + erf(z / sqrt 2)), exact (PyTorch's default) */
    FUSENN_ACT_GELU_TANH = 7,  /* 0.5 z (1 + tanh(sqrt(2/pi) (z + 0.044715 z^3))) */
    FUSENN_ACT_ELU = 8,        /* z > 0 ? z : FUSENN_ELU_ALPHA expm1(z) */
    FUSENN_ACT_SOFTPLUS = 9,   /* log(1 + e^z) = max(z, 0) + log1p(e^-|z|) */
    FUSENN_ACT_SWISH = 10      /* swish = silu = z sigmoid(z) */
} fusenn_activation;

/* 1 if the derivative of `act` is not a function of its output, so that its
 * backward pass needs the pre-activation Z (gelu, gelu_tanh, swish), else 0. */
int fusenn_activation_needs_z(fusenn_activation act);

/* ---- build and CPU information (cpu.c) -------------------------------- */

int fusenn_has_openmp(void);        /* 1 if built with OpenMP */
int fusenn_num_procs(void);         /* processors OpenMP may use (1 without OpenMP) */
/* Name of the GEMM micro-kernel ISA in use: "avx512", "avx2" or "generic".
 * Chosen once from the CPU's features; FUSENN_ISA=generic|avx2|avx512 in the
 * environment forces a lower path (a higher one than the CPU has is ignored). */
const char *fusenn_gemm_isa(void);

/* ---- GEMM (gemm.c) ----------------------------------------------------- */

/* C = alpha * A * B + beta * C, with A m x k, B k x n, C m x n.
 * Element (i, j) of X lives at X[i * rs_x + j * cs_x]; strides may be any
 * non-zero value, so op(A) = A^T is A with rs_a and cs_a swapped.
 * beta == 0 never reads C (C may hold NaN). */
int fusenn_gemm_f32(size_t m, size_t n, size_t k, float alpha,
                    const float *A, ptrdiff_t rs_a, ptrdiff_t cs_a,
                    const float *B, ptrdiff_t rs_b, ptrdiff_t cs_b, float beta,
                    float *C, ptrdiff_t rs_c, ptrdiff_t cs_c, int nthreads);
int fusenn_gemm_f64(size_t m, size_t n, size_t k, double alpha,
                    const double *A, ptrdiff_t rs_a, ptrdiff_t cs_a,
                    const double *B, ptrdiff_t rs_b, ptrdiff_t cs_b, double beta,
                    double *C, ptrdiff_t rs_c, ptrdiff_t cs_c, int nthreads);

/* ---- Dense layer (dense.c) ---------------------------------------------- */

/* Y = act(X W + b): X n x d_in (strides rs_x, cs_x), W d_in x d_out (strides
 * rs_w, cs_w), b length d_out, Y n x d_out with leading dimension ldy.
 * The bias add and elementwise activations happen in GEMM's store of each
 * output tile; softmax needs whole rows and runs as one pass after it. */
int fusenn_dense_forward_f32(size_t n, size_t d_in, size_t d_out,
                             const float *X, ptrdiff_t rs_x, ptrdiff_t cs_x,
                             const float *W, ptrdiff_t rs_w, ptrdiff_t cs_w,
                             const float *b, fusenn_activation act,
                             float *Y, ptrdiff_t ldy, int nthreads);
int fusenn_dense_forward_f64(size_t n, size_t d_in, size_t d_out,
                             const double *X, ptrdiff_t rs_x, ptrdiff_t cs_x,
                             const double *W, ptrdiff_t rs_w, ptrdiff_t cs_w,
                             const double *b, fusenn_activation act,
                             double *Y, ptrdiff_t ldy, int nthreads);

/* Backward of Y = act(X W + b), given Y and dY = dL/dY:
 *   dZ = dY * act'(Y)      (written to dZ, n x d_out, leading dimension d_out;
 *                           dZ may alias dY when ldy == d_out)
 *   db = sum over rows of dZ   (fused into the pass that writes dZ)
 *   dW = X^T dZ            (d_in x d_out, contiguous)
 *   dX = dZ W^T            (n x d_in, contiguous; skipped when dX is NULL,
 *                           as for the first layer)
 * Pass act = FUSENN_ACT_IDENTITY when dY already is dL/dZ (fused losses).
 * Activations whose derivative needs the pre-activation
 * (fusenn_activation_needs_z) are refused with FUSENN_EINVAL before anything
 * is written: apply fusenn_activation_backward first, then pass identity. */
int fusenn_dense_backward_f32(size_t n, size_t d_in, size_t d_out,
                              const float *X, ptrdiff_t rs_x, ptrdiff_t cs_x,
                              const float *W, ptrdiff_t rs_w, ptrdiff_t cs_w,
                              const float *Y, ptrdiff_t ldy,
                              const float *dY, ptrdiff_t lddy, fusenn_activation act,
                              float *dZ, float *dW, float *db, float *dX, int nthreads);
int fusenn_dense_backward_f64(size_t n, size_t d_in, size_t d_out,
                              const double *X, ptrdiff_t rs_x, ptrdiff_t cs_x,
                              const double *W, ptrdiff_t rs_w, ptrdiff_t cs_w,
                              const double *Y, ptrdiff_t ldy,
                              const double *dY, ptrdiff_t lddy, fusenn_activation act,
                              double *dZ, double *dW, double *db, double *dX, int nthreads);

/* ---- Activations (activations.c) ---------------------------------------- */

/* A = act(Z), n x d. A may alias Z (in place) when lda == ldz. */
void fusenn_activation_forward_f32(fusenn_activation act, size_t n, size_t d,
                                   const float *Z, ptrdiff_t ldz,
                                   float *A, ptrdiff_t lda, int nthreads);
void fusenn_activation_forward_f64(fusenn_activation act, size_t n, size_t d,
                                   const double *Z, ptrdiff_t ldz,
                                   double *A, ptrdiff_t lda, int nthreads);

/* dZ = dA * act'(Z). Where the derivative is a function of the output it is
 * computed through A = act(Z) (sigmoid, tanh, relu, leaky_relu, elu:
 * a > 0 ? 1 : a + alpha, softplus: sigmoid(z) = -expm1(-a)); gelu, gelu_tanh
 * and swish read the pre-activation Z instead (see
 * fusenn_activation_needs_z). Z may be NULL (and ldz anything) for every other
 * activation; A and dA are always required. For softmax this is the row-wise
 * Jacobian product
 * dZ = A * (dA - sum_j dA_j A_j).
 * dZ may alias dA (or A, or Z) when their leading dimensions are equal. */
void fusenn_activation_backward_f32(fusenn_activation act, size_t n, size_t d,
                                    const float *Z, ptrdiff_t ldz,
                                    const float *A, ptrdiff_t lda,
                                    const float *dA, ptrdiff_t ldda,
                                    float *dZ, ptrdiff_t lddz, int nthreads);
void fusenn_activation_backward_f64(fusenn_activation act, size_t n, size_t d,
                                    const double *Z, ptrdiff_t ldz,
                                    const double *A, ptrdiff_t lda,
                                    const double *dA, ptrdiff_t ldda,
                                    double *dZ, ptrdiff_t lddz, int nthreads);

/* ---- Losses (losses.c) ---------------------------------------------------
 * Each returns the loss (mean over the batch, as Keras and PyTorch) and, when
 * the output pointer is not NULL, its gradient. Sums are accumulated in double
 * over a fixed partition of rows, so the value does not depend on nthreads. */

/* Softmax + cross-entropy from logits Z (n x k) and integer labels in [0, k):
 *   loss = mean_i (logsumexp(Z_i) - Z_i,label_i)
 *   P = softmax(Z) (if P != NULL),  dZ = (P - onehot(labels)) / n (if dZ != NULL)
 * Labels must already be validated to lie in [0, k). */
double fusenn_softmax_cross_entropy_f32(size_t n, size_t k, const float *Z, ptrdiff_t ldz,
                                        const int64_t *labels, float *P, ptrdiff_t ldp,
                                        float *dZ, ptrdiff_t lddz, int nthreads);
double fusenn_softmax_cross_entropy_f64(size_t n, size_t k, const double *Z, ptrdiff_t ldz,
                                        const int64_t *labels, double *P, ptrdiff_t ldp,
                                        double *dZ, ptrdiff_t lddz, int nthreads);

/* Sigmoid + binary cross-entropy from logits Z (n x k) and targets T in [0, 1]:
 *   loss = mean_ij (max(z, 0) - z t + log1p(exp(-|z|)))   (overflow-safe)
 *   P = sigmoid(Z) (if P != NULL),  dZ = (P - T) / (n k) (if dZ != NULL) */
double fusenn_sigmoid_binary_cross_entropy_f32(size_t n, size_t k, const float *Z, ptrdiff_t ldz,
                                               const float *T, ptrdiff_t ldt,
                                               float *P, ptrdiff_t ldp,
                                               float *dZ, ptrdiff_t lddz, int nthreads);
double fusenn_sigmoid_binary_cross_entropy_f64(size_t n, size_t k, const double *Z, ptrdiff_t ldz,
                                               const double *T, ptrdiff_t ldt,
                                               double *P, ptrdiff_t ldp,
                                               double *dZ, ptrdiff_t lddz, int nthreads);

/* Mean squared error over all n x k elements:
 *   loss = mean_ij (A - T)^2,  dA = 2 (A - T) / (n k) (if dA != NULL) */
double fusenn_mse_f32(size_t n, size_t k, const float *A, ptrdiff_t lda,
                      const float *T, ptrdiff_t ldt, float *dA, ptrdiff_t ldda, int nthreads);
double fusenn_mse_f64(size_t n, size_t k, const double *A, ptrdiff_t lda,
                      const double *T, ptrdiff_t ldt, double *dA, ptrdiff_t ldda, int nthreads);

/* ---- Optimizers (optimizers.c), in place over flat arrays of length len ----
 * Each returns the number of updated weights that are not finite. When prev
 * is not NULL it receives the weights from before the update (prev may alias
 * g), so a diverging step can be undone exactly. */

/* SGD. momentum == 0: w -= lr g (v unused, may be NULL). Otherwise
 *   v = momentum v + g;  w -= lr v,  or with Nesterov w -= lr (g + momentum v). */
size_t fusenn_sgd_update_f32(size_t len, float *w, const float *g, float *v,
                             double lr, double momentum, int nesterov, float *prev,
                             int nthreads);
size_t fusenn_sgd_update_f64(size_t len, double *w, const double *g, double *v,
                             double lr, double momentum, int nesterov, double *prev,
                             int nthreads);

/* Adam, step t >= 1 (bias correction), eps added after the square root:
 *   m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
 *   w -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps) */
size_t fusenn_adam_update_f32(size_t len, float *w, const float *g, float *m, float *v,
                              double lr, double beta1, double beta2, double eps,
                              int64_t t, float *prev, int nthreads);
size_t fusenn_adam_update_f64(size_t len, double *w, const double *g, double *m, double *v,
                              double lr, double beta1, double beta2, double eps,
                              int64_t t, double *prev, int nthreads);

/* ---- Utilities (memory.c, shuffle.c, validate.c) ------------------------- */

/* Number of heap allocations fusenn's C code has made since the library was
 * loaded (packing buffers, plan arenas). Constant across steady-state steps. */
size_t fusenn_allocation_count(void);

/* order = a permutation of 0..n-1 drawn from `seed` (splitmix64 + Fisher-Yates):
 * the batch order of one epoch of fit(). */
void fusenn_shuffle(uint64_t seed, size_t n, int64_t *order);

/* Number of NaN and infinite values in the n x d matrix X. */
size_t fusenn_count_nonfinite_f32(size_t n, size_t d, const float *X, ptrdiff_t ldx, int nthreads);
size_t fusenn_count_nonfinite_f64(size_t n, size_t d, const double *X, ptrdiff_t ldx, int nthreads);

/* ---- Training engine (plan.c) ---------------------------------------------
 * A network lowered into a plan: per-layer descriptors pointing at the
 * caller's weights, gradients and optimizer state, plus one arena (owned by
 * the plan) for the batch, every layer's output and the gradients flowing
 * back. A training step is one call: forward, loss, backward, update. The
 * arena grows only when a batch larger than any before arrives, so steady
 * state allocates nothing. All matrices are row-major and contiguous. */

#define FUSENN_EDIVERGED (-2) /* a loss or updated weight was not finite */

typedef enum {
    FUSENN_LOSS_CROSS_ENTROPY = 0,        /* softmax + cross-entropy, integer labels */
    FUSENN_LOSS_BINARY_CROSS_ENTROPY = 1, /* sigmoid + binary cross-entropy, targets */
    FUSENN_LOSS_MSE = 2                   /* mean squared error on the outputs */
} fusenn_loss;

typedef enum { FUSENN_OPT_SGD = 0, FUSENN_OPT_ADAM = 1 } fusenn_optimizer_kind;

typedef struct {
    fusenn_optimizer_kind kind;
    double lr;
    double momentum; /* SGD */
    int nesterov;    /* SGD */
    double beta1, beta2, eps; /* Adam */
    int64_t steps;   /* updates applied so far; each step adds one (Adam's t) */
} fusenn_optimizer;

/* One dense layer of a plan. Pointers are to `real` (the plan's dtype). */
typedef struct {
    size_t d_in, d_out;
    fusenn_activation act;
    void *W, *b;          /* d_in x d_out, d_out */
    void *dW, *db;        /* gradients, same shapes */
    void *W_state[2];     /* optimizer state shaped like W: SGD {velocity or NULL,
                             NULL}, Adam {m, v} */
    void *b_state[2];     /* the same for b */
} fusenn_layer;

typedef struct fusenn_plan_f32 fusenn_plan_f32;
typedef struct fusenn_plan_f64 fusenn_plan_f64;

/* A plan for n_layers chained layers (layer l's d_out is layer l+1's d_in).
 * The descriptors are copied; the arrays they point to must outlive the plan.
 * With a cross-entropy loss the last layer's activation must be softmax or
 * identity, with binary cross-entropy sigmoid or identity (the losses work
 * from logits). Returns NULL when out of memory. */
fusenn_plan_f32 *fusenn_plan_create_f32(size_t n_layers, const fusenn_layer *layers, fusenn_loss loss);
fusenn_plan_f64 *fusenn_plan_create_f64(size_t n_layers, const fusenn_layer *layers, fusenn_loss loss);
void fusenn_plan_destroy_f32(fusenn_plan_f32 *plan);
void fusenn_plan_destroy_f64(fusenn_plan_f64 *plan);

/* One training step on X (n x d_in, row stride ldx) with labels (cross-entropy)
 * or targets T (n x k, row stride ldt; otherwise). On FUSENN_EDIVERGED the
 * weights are those from before the step, the optimizer state is zeroed and
 * opt->steps is 0. *loss is the batch loss; *correct counts correct
 * predictions (rows for cross-entropy, elements for binary cross-entropy). */
int fusenn_plan_train_batch_f32(fusenn_plan_f32 *plan, size_t n, const float *X, ptrdiff_t ldx,
                                const int64_t *labels, const float *T, ptrdiff_t ldt,
                                fusenn_optimizer *opt, double *loss, double *correct, int nthreads);
int fusenn_plan_train_batch_f64(fusenn_plan_f64 *plan, size_t n, const double *X, ptrdiff_t ldx,
                                const int64_t *labels, const double *T, ptrdiff_t ldt,
                                fusenn_optimizer *opt, double *loss, double *correct, int nthreads);

/* Batches [first_batch, first_batch + n_batches) of an epoch over n samples:
 * batch b is the rows order[b * batch_size ...] (the last one may be short),
 * gathered into the arena. Adds loss x rows and correct predictions of every
 * batch to *loss_sum and *correct_sum; *loss is the last batch's loss (the
 * diverging one on FUSENN_EDIVERGED). */
int fusenn_plan_train_epoch_f32(fusenn_plan_f32 *plan, size_t n, const float *X, ptrdiff_t ldx,
                                const int64_t *labels, const float *T, ptrdiff_t ldt,
                                const int64_t *order, size_t batch_size, size_t first_batch,
                                size_t n_batches, fusenn_optimizer *opt, double *loss,
                                double *loss_sum, double *correct_sum, int nthreads);
int fusenn_plan_train_epoch_f64(fusenn_plan_f64 *plan, size_t n, const double *X, ptrdiff_t ldx,
                                const int64_t *labels, const double *T, ptrdiff_t ldt,
                                const int64_t *order, size_t batch_size, size_t first_batch,
                                size_t n_batches, fusenn_optimizer *opt, double *loss,
                                double *loss_sum, double *correct_sum, int nthreads);

/* The network's outputs for X (n x d_in) into out (n x k, row stride ldo),
 * in chunks of rows. */
int fusenn_plan_predict_f32(fusenn_plan_f32 *plan, size_t n, const float *X, ptrdiff_t ldx,
                            float *out, ptrdiff_t ldo, int nthreads);
int fusenn_plan_predict_f64(fusenn_plan_f64 *plan, size_t n, const double *X, ptrdiff_t ldx,
                            double *out, ptrdiff_t ldo, int nthreads);

/* Loss x rows summed over chunks into *loss_sum, correct predictions into
 * *correct_sum (as train_batch counts them). */
int fusenn_plan_evaluate_f32(fusenn_plan_f32 *plan, size_t n, const float *X, ptrdiff_t ldx,
                             const int64_t *labels, const float *T, ptrdiff_t ldt,
                             double *loss_sum, double *correct_sum, int nthreads);
int fusenn_plan_evaluate_f64(fusenn_plan_f64 *plan, size_t n, const double *X, ptrdiff_t ldx,
                             const int64_t *labels, const double *T, ptrdiff_t ldt,
                             double *loss_sum, double *correct_sum, int nthreads);

#ifdef __cplusplus
}
#endif
#endif /* FUSENN_H */
