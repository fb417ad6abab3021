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
/* OpenMP's thread count for the calling thread (omp_get_max_threads: follows
 * OMP_NUM_THREADS, the CPU affinity, and omp_set_num_threads as threadpoolctl
 * calls it); 0 without OpenMP. */
int fusenn_omp_max_threads(void);

/* ---- the thread-count setting (threads.c) ------------------------------- */

/* The thread count for the next kernel call from this thread: 1 in a forked
 * child; else the calling thread's override; else the global setting; else
 * OpenMP's count (fusenn_omp_max_threads, or the given affinity count without
 * OpenMP) capped by a CPU quota. 0 clears an override or the global setting. */
int fusenn_num_threads(void);
void fusenn_set_global_threads(int n);
int fusenn_swap_thread_override(int n); /* returns the previous override (0: none) */
void fusenn_mark_forked_child(void);
void fusenn_configure_default_threads(int cap, int without_openmp);

/* ---- helpers kept waiting for a CPU (parallel.c) ---------------------------
 * fusenn_team_size(nt): the team a parallel region starts now, nt, or 1 while
 * helper threads have lately kept their caller waiting for a CPU. The regions
 * of fusenn_parallel_ranges and fusenn_parallel_units (internal.h) report to
 * fusenn_region_waited when they started and when their caller finished its
 * own part (CLOCK_MONOTONIC nanoseconds, fusenn_clock_ns); GEMM's shared-B
 * region, whose threads meet at barriers inside, only follows. */
int64_t fusenn_clock_ns(void);
int fusenn_team_size(int nt);
void fusenn_region_waited(int64_t start, int64_t caller_done);

/* ---- Ctrl-C during long calls (interrupt.c) -------------------------------
 * fusenn_interrupt_begin installs a SIGINT handler that records the signal in
 * a flag and passes it on to the handler it replaces (Python's); the engine's
 * long loops (an epoch, predict, evaluate) poll the flag between batches when
 * asked to and stop with FUSENN_EINTERRUPTED after a whole step. Returns 1 if
 * installed (SIGINT had a handler function; nested calls share it), else 0.
 * Call from one thread (Python's main thread, with the GIL held). */
int fusenn_interrupt_begin(void);
void fusenn_interrupt_end(void);
int fusenn_interrupt_pending(void);
void fusenn_interrupt_clear(void);

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

/* Below this many multiply-adds a GEMM runs on one thread whatever nthreads
 * says (dense.c's backward pass uses the same line to run its two products
 * side by side, and the matmul binding to keep the GIL). */
static inline int fusenn_gemm_is_serial(size_t m, size_t n, size_t k)
{
    return (double)m * (double)n * (double)k < (double)(128 * 128 * 64);
}

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
 * over a fixed partition of rows, so the value does not depend on nthreads.
 *
 * Sample weights: sw (n contiguous values, NULL = all ones) weighs row i:
 *   loss = (1/n) sum_i sw_i loss_i
 * where loss_i is row i's loss (for the elementwise losses the mean over its k
 * outputs), as Keras's default "sum over batch size" reduction; row i's
 * gradient is multiplied by sw_i. Weights of all ones give the unweighted bits. */

/* Softmax + cross-entropy from logits Z (n x k) and integer labels in [0, k):
 *   loss = (1/n) sum_i sw_i (logsumexp(Z_i) - Z_i,label_i)
 *   P = softmax(Z) (if P != NULL),  dZ_i = sw_i (P_i - onehot(label_i)) / n (if dZ != NULL)
 * Labels must already be validated to lie in [0, k). */
double fusenn_softmax_cross_entropy_f32(size_t n, size_t k, const float *Z, ptrdiff_t ldz,
                                        const int64_t *labels, const float *sw,
                                        float *P, ptrdiff_t ldp,
                                        float *dZ, ptrdiff_t lddz, int nthreads);
double fusenn_softmax_cross_entropy_f64(size_t n, size_t k, const double *Z, ptrdiff_t ldz,
                                        const int64_t *labels, const double *sw,
                                        double *P, ptrdiff_t ldp,
                                        double *dZ, ptrdiff_t lddz, int nthreads);

/* Sigmoid + binary cross-entropy from logits Z (n x k) and targets T in [0, 1]:
 *   l_ij = max(z, 0) - z t + log1p(exp(-|z|))   (overflow-safe)
 *   loss = (1/(n k)) sum_ij sw_i l_ij
 *   P = sigmoid(Z) (if P != NULL),  dZ_i = sw_i (P_i - T_i) / (n k) (if dZ != NULL) */
double fusenn_sigmoid_binary_cross_entropy_f32(size_t n, size_t k, const float *Z, ptrdiff_t ldz,
                                               const float *T, ptrdiff_t ldt, const float *sw,
                                               float *P, ptrdiff_t ldp,
                                               float *dZ, ptrdiff_t lddz, int nthreads);
double fusenn_sigmoid_binary_cross_entropy_f64(size_t n, size_t k, const double *Z, ptrdiff_t ldz,
                                               const double *T, ptrdiff_t ldt, const double *sw,
                                               double *P, ptrdiff_t ldp,
                                               double *dZ, ptrdiff_t lddz, int nthreads);

/* Mean squared error over all n x k elements:
 *   loss = (1/(n k)) sum_ij sw_i (A - T)^2,  dA_i = 2 sw_i (A_i - T_i) / (n k) (if dA != NULL) */
double fusenn_mse_f32(size_t n, size_t k, const float *A, ptrdiff_t lda,
                      const float *T, ptrdiff_t ldt, const float *sw,
                      float *dA, ptrdiff_t ldda, int nthreads);
double fusenn_mse_f64(size_t n, size_t k, const double *A, ptrdiff_t lda,
                      const double *T, ptrdiff_t ldt, const double *sw,
                      double *dA, ptrdiff_t ldda, int nthreads);

/* Mean absolute error over all n x k elements:
 *   loss = (1/(n k)) sum_ij sw_i |A - T|,  dA_i = sw_i sign(A_i - T_i) / (n k) (if dA != NULL)
 * with sign(0) = 0 (the subgradient PyTorch's L1Loss uses). */
double fusenn_mae_f32(size_t n, size_t k, const float *A, ptrdiff_t lda,
                      const float *T, ptrdiff_t ldt, const float *sw,
                      float *dA, ptrdiff_t ldda, int nthreads);
double fusenn_mae_f64(size_t n, size_t k, const double *A, ptrdiff_t lda,
                      const double *T, ptrdiff_t ldt, const double *sw,
                      double *dA, ptrdiff_t ldda, int nthreads);

/* Huber loss (Keras's Huber, PyTorch's HuberLoss) over all n x k elements,
 * d = A - T and delta > 0 (validated by the caller):
 *   l = d^2 / 2 if |d| <= delta, else delta (|d| - delta / 2)
 *   loss = (1/(n k)) sum_ij sw_i l_ij
 *   dA_i = sw_i clip(d_i, -delta, delta) / (n k) (if dA != NULL) */
double fusenn_huber_f32(size_t n, size_t k, const float *A, ptrdiff_t lda,
                        const float *T, ptrdiff_t ldt, double delta, const float *sw,
                        float *dA, ptrdiff_t ldda, int nthreads);
double fusenn_huber_f64(size_t n, size_t k, const double *A, ptrdiff_t lda,
                        const double *T, ptrdiff_t ldt, double delta, const double *sw,
                        double *dA, ptrdiff_t ldda, int nthreads);

/* Poisson negative log-likelihood from log-rates (PyTorch's PoissonNLLLoss with
 * log_input=True, full=False) over all n x k elements, targets T >= 0:
 *   loss = (1/(n k)) sum_ij sw_i (exp(A_ij) - T_ij A_ij)
 *   dA_i = sw_i (exp(A_i) - T_i) / (n k) (if dA != NULL) */
double fusenn_poisson_f32(size_t n, size_t k, const float *A, ptrdiff_t lda,
                          const float *T, ptrdiff_t ldt, const float *sw,
                          float *dA, ptrdiff_t ldda, int nthreads);
double fusenn_poisson_f64(size_t n, size_t k, const double *A, ptrdiff_t lda,
                          const double *T, ptrdiff_t ldt, const double *sw,
                          double *dA, ptrdiff_t ldda, int nthreads);

/* ---- Dropout (dropout.c) -------------------------------------------------
 * Inverted dropout, as Keras and PyTorch: each element is dropped (set to 0)
 * with probability rate and kept elements are scaled by 1 / (1 - rate), so the
 * expected output equals the input and inference needs no rescaling.
 * The mask is a pure function of (seed, element index): element (i, j) of the
 * n x d matrix has index i*d + j (its logical position, whatever the strides)
 * and is kept iff
 *   mix64(seed + (index + 1) * 0x9E3779B97F4A7C15) >= floor(rate * 2^64)
 * (splitmix64's finalizer, arithmetic mod 2^64). So the mask is the same on any
 * thread count, needs no storage (the backward recomputes it) and NumPy can
 * reproduce it bit for bit. rate must lie in [0, 1); rate == 0 copies X exactly.
 * Y may alias X (dX may alias dY) when the leading dimensions are equal. */
void fusenn_dropout_forward_f32(size_t n, size_t d, const float *X, ptrdiff_t ldx,
                                double rate, uint64_t seed, float *Y, ptrdiff_t ldy,
                                int nthreads);
void fusenn_dropout_forward_f64(size_t n, size_t d, const double *X, ptrdiff_t ldx,
                                double rate, uint64_t seed, double *Y, ptrdiff_t ldy,
                                int nthreads);

/* dX = dY * mask / (1 - rate): the forward's mask for the same (rate, seed). */
void fusenn_dropout_backward_f32(size_t n, size_t d, const float *dY, ptrdiff_t lddy,
                                 double rate, uint64_t seed, float *dX, ptrdiff_t lddx,
                                 int nthreads);
void fusenn_dropout_backward_f64(size_t n, size_t d, const double *dY, ptrdiff_t lddy,
                                 double rate, uint64_t seed, double *dX, ptrdiff_t lddx,
                                 int nthreads);

/* The mask seed of training step `step` of a dropout layer with seed `base`
 * (shuffle.c): mix64(mix64(base) + (step + 1) * 0x9E3779B97F4A7C15). */
uint64_t fusenn_dropout_seed(uint64_t base, uint64_t step);

/* ---- Batch normalisation (batchnorm.c) ------------------------------------
 * Per feature (column) of an n x d matrix, Keras conventions:
 *   mean = sum_i x_ij / n,  var = sum_i (x_ij - mean)^2 / n   (biased)
 *   invstd = 1 / sqrt(var + eps),  y = gamma (x - mean) invstd + beta
 * Column sums are accumulated in double, each column over its rows in order,
 * so the statistics do not depend on nthreads. The elementwise parts are
 * computed in double from the stored (dtype-rounded) mean and invstd. */

/* Training forward: batch statistics into mean and invstd (length d, kept for
 * the backward), Y from them, and, unless running_mean is NULL, the running
 * statistics updated in place:
 *   running = momentum * running + (1 - momentum) * batch    (mean and var).
 * n must be >= 1 (n == 1 gives var 0). Y may alias X when ldy == ldx. */
void fusenn_batchnorm_forward_train_f32(size_t n, size_t d, const float *X, ptrdiff_t ldx,
                                        const float *gamma, const float *beta,
                                        double eps, double momentum,
                                        float *running_mean, float *running_var,
                                        float *mean, float *invstd,
                                        float *Y, ptrdiff_t ldy, int nthreads);
void fusenn_batchnorm_forward_train_f64(size_t n, size_t d, const double *X, ptrdiff_t ldx,
                                        const double *gamma, const double *beta,
                                        double eps, double momentum,
                                        double *running_mean, double *running_var,
                                        double *mean, double *invstd,
                                        double *Y, ptrdiff_t ldy, int nthreads);

/* Inference forward: y = gamma (x - running_mean) / sqrt(running_var + eps) + beta.
 * Y may alias X when ldy == ldx. */
void fusenn_batchnorm_forward_infer_f32(size_t n, size_t d, const float *X, ptrdiff_t ldx,
                                        const float *gamma, const float *beta, double eps,
                                        const float *running_mean, const float *running_var,
                                        float *Y, ptrdiff_t ldy, int nthreads);
void fusenn_batchnorm_forward_infer_f64(size_t n, size_t d, const double *X, ptrdiff_t ldx,
                                        const double *gamma, const double *beta, double eps,
                                        const double *running_mean, const double *running_var,
                                        double *Y, ptrdiff_t ldy, int nthreads);

/* Backward of the training forward, from X, dY = dL/dY and the saved mean and
 * invstd; with xhat = (x - mean) invstd:
 *   dbeta = sum_i dy,  dgamma = sum_i dy xhat
 *   dx = gamma invstd / n * (n dy - dbeta - xhat dgamma)
 * dX is skipped when NULL (first layer) and may alias dY when lddx == lddy. */
void fusenn_batchnorm_backward_f32(size_t n, size_t d, const float *X, ptrdiff_t ldx,
                                   const float *dY, ptrdiff_t lddy, const float *gamma,
                                   const float *mean, const float *invstd,
                                   float *dX, ptrdiff_t lddx, float *dgamma, float *dbeta,
                                   int nthreads);
void fusenn_batchnorm_backward_f64(size_t n, size_t d, const double *X, ptrdiff_t ldx,
                                   const double *dY, ptrdiff_t lddy, const double *gamma,
                                   const double *mean, const double *invstd,
                                   double *dX, ptrdiff_t lddx, double *dgamma, double *dbeta,
                                   int nthreads);

/* ---- Optimizers (optimizers.c), in place over flat arrays of length len ----
 * Each returns the number of updated weights that are not finite. When prev
 * is not NULL it receives the weights from before the update (prev may alias
 * g), so a diverging step can be undone exactly. The state (v, m) never keeps a
 * subnormal number: those are stored as 0 (see optimizers.c for why). */

/* SGD. momentum == 0: w -= lr g (v unused, may be NULL). Otherwise
 *   v = momentum v + g;  w -= lr v,  or with Nesterov w -= lr (g + momentum v). */
size_t fusenn_sgd_update_f32(size_t len, float *w, const float *g, float *v,
                             double lr, double momentum, int nesterov, float *prev,
                             int nthreads);
size_t fusenn_sgd_update_f64(size_t len, double *w, const double *g, double *v,
                             double lr, double momentum, int nesterov, double *prev,
                             int nthreads);

/* Adam, step t >= 1 (bias correction), eps added after the square root, with
 * AdamW's decoupled weight decay in PyTorch's form (weight_decay == 0 is plain
 * Adam, bitwise):
 *   w *= 1 - lr weight_decay
 *   m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
 *   w -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps) */
size_t fusenn_adam_update_f32(size_t len, float *w, const float *g, float *m, float *v,
                              double lr, double beta1, double beta2, double eps,
                              double weight_decay, int64_t t, float *prev, int nthreads);
size_t fusenn_adam_update_f64(size_t len, double *w, const double *g, double *m, double *v,
                              double lr, double beta1, double beta2, double eps,
                              double weight_decay, int64_t t, double *prev, int nthreads);

/* RMSprop: v = rho v + (1 - rho) g^2;  w -= lr g / (sqrt(v) + eps) */
size_t fusenn_rmsprop_update_f32(size_t len, float *w, const float *g, float *v, double lr,
                                 double rho, double eps, float *prev, int nthreads);
size_t fusenn_rmsprop_update_f64(size_t len, double *w, const double *g, double *v, double lr,
                                 double rho, double eps, double *prev, int nthreads);

/* Adagrad: v += g^2;  w -= lr g / (sqrt(v) + eps)   (v starts at zero) */
size_t fusenn_adagrad_update_f32(size_t len, float *w, const float *g, float *v, double lr,
                                 double eps, float *prev, int nthreads);
size_t fusenn_adagrad_update_f64(size_t len, double *w, const double *g, double *v, double lr,
                                 double eps, double *prev, int nthreads);

/* Gradient preprocessing, applied before an update:
 * sum_squares returns sum_i x_i^2, accumulated in double over fixed chunks (the
 * same bits for any nthreads); the norm for norm clipping is its square root. */
double fusenn_sum_squares_f32(size_t len, const float *x, int nthreads);
double fusenn_sum_squares_f64(size_t len, const double *x, int nthreads);

/* In place: g = clip(scale * (g + l2 * w), -clipvalue, clipvalue).
 * w is not read (may be NULL) when l2 == 0; clipvalue <= 0 means no clipping. */
void fusenn_grad_transform_f32(size_t len, float *g, const float *w, double l2, double scale,
                               double clipvalue, int nthreads);
void fusenn_grad_transform_f64(size_t len, double *g, const double *w, double l2, double scale,
                               double clipvalue, int nthreads);

/* ---- Utilities (memory.c, shuffle.c, validate.c) ------------------------- */

/* Number of heap allocations fusenn's C code has made since the library was
 * loaded (packing buffers, plan arenas). Constant across steady-state steps. */
size_t fusenn_allocation_count(void);

/* order = a permutation of 0..n-1 drawn from `seed` (splitmix64 + Fisher-Yates):
 * the batch order of one epoch of fit(). */
void fusenn_shuffle(uint64_t seed, size_t n, int64_t *order);

/* Index of the first of n labels outside [0, k), or n if all lie inside. */
size_t fusenn_first_label_out_of_range(size_t n, const int64_t *labels, int64_t k);

/* Number of NaN and infinite values in the n x d matrix X. */
size_t fusenn_count_nonfinite_f32(size_t n, size_t d, const float *X, ptrdiff_t ldx, int nthreads);
size_t fusenn_count_nonfinite_f64(size_t n, size_t d, const double *X, ptrdiff_t ldx, int nthreads);

/* ---- Training engine (plan.c; layer kinds in csrc/layers/) ------------------
 * A network lowered into a plan: a chain of layers, each of a kind from the
 * engine's table (dense, dropout, batchnorm, ...), whose parameters live in one
 * contiguous arena and their gradients in another (both the caller's), plus an
 * arena owned by the plan for the batch, every layer's output, what each layer
 * keeps for its backward pass, and the gradients flowing back. A training step
 * is one call: forward, loss, backward, update. The plan's arena grows only
 * when a batch larger than any before arrives, so steady state allocates
 * nothing.
 *
 * Tensors are batches of samples; a sample is a C-contiguous block of a
 * per-sample shape (F for rows of features, H x W x C for images, T x F for
 * sequences). The loss reads the last layer's output as rows of its last
 * dimension (k outputs per row). */

#define FUSENN_EDIVERGED (-2) /* a loss or updated weight was not finite */
/* fusenn_plan_train_batch's batch holds a NaN or infinity, a label outside
 * [0, k), or a binary cross-entropy target outside [0, 1]; nothing changed */
#define FUSENN_EBADINPUT (-4)
/* an interruptible call saw Ctrl-C (fusenn_interrupt_begin) and stopped after a
 * whole step */
#define FUSENN_EINTERRUPTED (-5)

typedef enum {
    FUSENN_LOSS_CROSS_ENTROPY = 0,        /* softmax + cross-entropy, integer labels */
    FUSENN_LOSS_BINARY_CROSS_ENTROPY = 1, /* sigmoid + binary cross-entropy, targets */
    FUSENN_LOSS_MSE = 2,                  /* mean squared error on the outputs */
    FUSENN_LOSS_MAE = 3,                  /* mean absolute error on the outputs */
    FUSENN_LOSS_HUBER = 4,                /* Huber loss on the outputs (needs a delta) */
    FUSENN_LOSS_POISSON = 5               /* Poisson NLL, the outputs are log-rates */
} fusenn_loss;

typedef enum {
    FUSENN_OPT_SGD = 0,
    FUSENN_OPT_ADAM = 1,    /* AdamW when weight_decay > 0 */
    FUSENN_OPT_RMSPROP = 2,
    FUSENN_OPT_ADAGRAD = 3
} fusenn_optimizer_kind;

/* An optimizer's settings. Each step, before the updates:
 *   1. l2 > 0: g += l2 w for every decayed parameter (kernels, never biases)
 *   2. clipnorm > 0: each parameter's g *= c / ||g|| when ||g|| > c;
 *      global_clipnorm > 0: every g *= c / ||all g|| when that norm is > c
 *      (||.|| from fusenn_sum_squares; at most one of the two is set)
 *   3. clipvalue > 0: g = clip(g, -clipvalue, clipvalue)
 * weight_decay (Adam only) decays the decayed parameters too, never the others. */
typedef struct {
    fusenn_optimizer_kind kind;
    double lr;
    double momentum; /* SGD */
    int nesterov;    /* SGD */
    double beta1, beta2, eps; /* Adam (eps also RMSprop, Adagrad) */
    double rho;          /* RMSprop */
    double weight_decay; /* Adam: decoupled decay (AdamW), 0 = off */
    double l2;           /* coupled L2 penalty, 0 = off */
    double clipnorm, global_clipnorm, clipvalue; /* gradient clipping, <= 0 = off */
    int64_t steps;   /* updates applied so far; each step adds one (Adam's t) */
} fusenn_optimizer;

#define FUSENN_MAX_RANK 4    /* dimensions of a sample */
#define FUSENN_MAX_ATTRS 16  /* attributes of a layer */
#define FUSENN_MAX_PARAMS 4  /* parameter tensors of a layer */

/* A per-sample shape: dim[0 .. rank). */
typedef struct {
    size_t rank;
    size_t dim[FUSENN_MAX_RANK];
} fusenn_shape;

/* The engine's layer kinds, found by name ("dense", "dropout", "batchnorm",
 * ...): the kind's index, or -1. fusenn_kind_attr names attribute i of a kind
 * (the order of fusenn_layer.attr), NULL past the last;
 * fusenn_kind_reads_indices is 1 for a kind whose input is int64 indices. */
int fusenn_kind_find(const char *name);
int fusenn_kind_count(void);
const char *fusenn_kind_name(int kind);
const char *fusenn_kind_attr(int kind, size_t i);
int fusenn_kind_reads_indices(int kind);

/* One layer of a network. Arrays are of the plan's dtype and must outlive it. */
typedef struct {
    int kind;                        /* fusenn_kind_find */
    double attr[FUSENN_MAX_ATTRS];   /* as fusenn_kind_attr names them (integers are exact) */
    size_t param_offset[FUSENN_MAX_PARAMS]; /* each parameter tensor's first element in
                                               the arenas */
    uint64_t seed;                   /* dropout: the masks' base seed */
    uint64_t *counter;               /* dropout: training passes so far, advanced in place */
    void *buffer[2];                 /* persistent non-trainable tensors (batchnorm: the
                                        running mean and variance, updated while training) */
} fusenn_layer;

/* Pooling modes (the "mode" attribute of the pooling kinds). */
typedef enum {
    FUSENN_POOL_MAX = 0,
    FUSENN_POOL_AVG = 1
} fusenn_pool_mode;

/* ---- One layer of a kind, called directly --------------------------------
 * The per-op API of every layer kind: the same forward and backward the
 * engine runs, on n samples of shape `in` (sample stride ldx). params and
 * grads list the layer's parameter tensors (fusenn_layer_describe gives their
 * number and shapes; param_offset is not used). saved (saved_bytes) carries
 * what the forward keeps for the backward; work (work_bytes) is scratch. y
 * and dy are contiguous (out_size per sample), dx too (in_size per sample, or
 * NULL: not needed). *result is where the output (or dL/dx) ended up: y or x
 * for a forward that passes its input through, dx or dy for a backward that
 * worked in place. Returns FUSENN_OK, FUSENN_EINVAL (the layer cannot take
 * the input) or FUSENN_ENOMEM. mask: the time steps of a sequence that are
 * real (n x T bytes) or NULL; a forward that makes a mask (Embedding with
 * mask_zero) sets *mask_out to it (else to mask). */
int fusenn_layer_describe(const fusenn_layer *desc, const fusenn_shape *in, fusenn_shape *out,
                          size_t *n_params, fusenn_shape *param_shapes);
size_t fusenn_layer_saved_bytes_f32(const fusenn_layer *desc, const fusenn_shape *in, size_t n);
size_t fusenn_layer_saved_bytes_f64(const fusenn_layer *desc, const fusenn_shape *in, size_t n);
size_t fusenn_layer_work_bytes_f32(const fusenn_layer *desc, const fusenn_shape *in, size_t n);
size_t fusenn_layer_work_bytes_f64(const fusenn_layer *desc, const fusenn_shape *in, size_t n);
int fusenn_layer_forward_f32(const fusenn_layer *desc, const fusenn_shape *in, size_t n,
                             const void *x, ptrdiff_t ldx, float *const *params, float *y,
                             void *saved, void *work, const unsigned char *mask, int training,
                             int logits, int nthreads, const void **result,
                             const unsigned char **mask_out);
int fusenn_layer_forward_f64(const fusenn_layer *desc, const fusenn_shape *in, size_t n,
                             const void *x, ptrdiff_t ldx, double *const *params, double *y,
                             void *saved, void *work, const unsigned char *mask, int training,
                             int logits, int nthreads, const void **result,
                             const unsigned char **mask_out);
int fusenn_layer_backward_f32(const fusenn_layer *desc, const fusenn_shape *in, size_t n,
                              const void *x, ptrdiff_t ldx, const float *y,
                              float *const *params, float *const *grads, const void *saved,
                              void *work, const unsigned char *mask, float *dy, float *dx,
                              int logits, int nthreads, void **result);
int fusenn_layer_backward_f64(const fusenn_layer *desc, const fusenn_shape *in, size_t n,
                              const void *x, ptrdiff_t ldx, const double *y,
                              double *const *params, double *const *grads, const void *saved,
                              void *work, const unsigned char *mask, double *dy, double *dx,
                              int logits, int nthreads, void **result);

/* A network to plan. The optimizer state arenas are shaped like the parameter
 * arena: SGD {velocity or NULL, NULL}, Adam {m, v}, RMSprop and Adagrad {v, NULL}.
 * With a cross-entropy loss the last layer's output activation must be softmax
 * or identity, with binary cross-entropy sigmoid or identity (the losses work
 * from logits: the last layer stops before its activation when training).
 * loss_param is Huber's delta (ignored by the other losses). */
typedef struct {
    size_t n_layers;
    const fusenn_layer *layers;
    fusenn_shape input;   /* a sample of X (int64 indices if the first kind reads indices) */
    fusenn_loss loss;
    double loss_param;
    void *params, *grads; /* the arenas, arena_len elements each */
    void *state[2];
    size_t arena_len;
} fusenn_network;

typedef struct fusenn_plan_f32 fusenn_plan_f32;
typedef struct fusenn_plan_f64 fusenn_plan_f64;

/* A plan for the network; the descriptors are copied. Returns FUSENN_OK,
 * FUSENN_ENOMEM, or FUSENN_EINVAL with *bad_layer the index of a layer whose
 * kind, attributes, input shape or parameters do not fit (n_layers: the
 * network as a whole, e.g. no layers or parameters outside the arenas). */
int fusenn_plan_create_f32(const fusenn_network *net, fusenn_plan_f32 **plan, size_t *bad_layer);
int fusenn_plan_create_f64(const fusenn_network *net, fusenn_plan_f64 **plan, size_t *bad_layer);
void fusenn_plan_destroy_f32(fusenn_plan_f32 *plan);
void fusenn_plan_destroy_f64(fusenn_plan_f64 *plan);

/* The plan's per-sample output shape. */
fusenn_shape fusenn_plan_output_shape_f32(const fusenn_plan_f32 *plan);
fusenn_shape fusenn_plan_output_shape_f64(const fusenn_plan_f64 *plan);

/* One training step on n samples X (sample stride ldx; samples of several
 * rows must be contiguous: ldx equal to their size) with labels (cross-entropy:
 * one per output row) or targets T (the output's shape, sample stride ldt),
 * samples weighted by sw (n; NULL: unweighted). On FUSENN_EDIVERGED the
 * weights are those from before the step, the optimizer state is zeroed and
 * opt->steps is 0. The batch is checked before anything changes:
 * FUSENN_EBADINPUT if it cannot be trained on. *loss is the batch loss;
 * *correct counts correct predictions (rows for cross-entropy, elements for
 * binary cross-entropy). chunks > 1: the batch's gradient is the sum over
 * that many chunks of its rows (fusenn_chunk_start's cut), each chunk's
 * gradient computed alone (its rows weighted by their share of the batch,
 * Dropout's masks those of the whole batch, BatchNorm's statistics the
 * chunk's own) and the chunks' added in order; the ranks of a distributed fit
 * add theirs the same way. 1 (or 0): the plain step. */
int fusenn_plan_train_batch_f32(fusenn_plan_f32 *plan, size_t n, const void *X, ptrdiff_t ldx,
                                const int64_t *labels, const float *T, ptrdiff_t ldt,
                                const float *sw, size_t chunks, fusenn_optimizer *opt,
                                double *loss, double *correct, int nthreads);
int fusenn_plan_train_batch_f64(fusenn_plan_f64 *plan, size_t n, const void *X, ptrdiff_t ldx,
                                const int64_t *labels, const double *T, ptrdiff_t ldt,
                                const double *sw, size_t chunks, fusenn_optimizer *opt,
                                double *loss, double *correct, int nthreads);

/* Batches [first_batch, first_batch + n_batches) of an epoch over n samples:
 * batch b is the samples order[b * batch_size ...] (the last one may be short),
 * gathered into the arena with their targets and weights. Adds loss x samples
 * and correct predictions of every batch to *loss_sum and *correct_sum; *loss
 * is the last batch's loss (the diverging one on FUSENN_EDIVERGED); *done
 * counts the batches trained. interruptible: poll for Ctrl-C
 * (fusenn_interrupt_begin) before each batch and return FUSENN_EINTERRUPTED. */
int fusenn_plan_train_epoch_f32(fusenn_plan_f32 *plan, size_t n, const void *X, ptrdiff_t ldx,
                                const int64_t *labels, const float *T, ptrdiff_t ldt,
                                const float *sw, const int64_t *order, size_t batch_size,
                                size_t chunks, size_t first_batch, size_t n_batches,
                                fusenn_optimizer *opt, double *loss, double *loss_sum,
                                double *correct_sum, size_t *done, int interruptible,
                                int nthreads);
int fusenn_plan_train_epoch_f64(fusenn_plan_f64 *plan, size_t n, const void *X, ptrdiff_t ldx,
                                const int64_t *labels, const double *T, ptrdiff_t ldt,
                                const double *sw, const int64_t *order, size_t batch_size,
                                size_t chunks, size_t first_batch, size_t n_batches,
                                fusenn_optimizer *opt, double *loss, double *loss_sum,
                                double *correct_sum, size_t *done, int interruptible,
                                int nthreads);

/* A step in parts, for ranks that each take some chunks of every batch
 * (fusenn.distributed) and add the chunks' gradients in order; a plain step
 * is these parts in one process.
 *
 * fusenn_plan_chunk_gradients: the gradients of chunks [c0, c1) of the batch
 * of samples batch[0..n) of X (cut into `chunks` chunks by fusenn_chunk_start;
 * only the rows of chunks c0 .. c1-1 are read), each computed alone as
 * fusenn_plan_train_batch's chunked step computes it. Chunk c's gradient goes
 * to grads[c - c0], an arena laid out like the parameters (NULL: every chunk's
 * to the plan's gradient arena); a chunk that goes to the arena the chunk
 * before it went to is added to it: (((g_0 + g_1) + g_2) + ...). Each chunk
 * leaves a record of fusenn_plan_record_len doubles in records[(c - c0) ...]:
 * its outcome, loss, correct predictions and the batch statistics it
 * recorded instead of updating running ones (BatchNorm's). Returns the first
 * chunk's failure (also in the records). Ranks add others' gradients to
 * theirs elementwise (IEEE additions, as the engine adds).
 * fusenn_plan_apply_step: with the batch's summed gradient in the plan's
 * gradient arena and the records of all `chunks` chunks, in order: folds the
 * recorded statistics into the running ones, adds up the loss and correct
 * predictions (to a failed chunk), advances the layers' step counters and
 * makes the update (FUSENN_EDIVERGED as fusenn_plan_train_batch). */
size_t fusenn_plan_record_len_f32(const fusenn_plan_f32 *plan);
size_t fusenn_plan_record_len_f64(const fusenn_plan_f64 *plan);
int fusenn_plan_chunk_gradients_f32(fusenn_plan_f32 *plan, const void *X, ptrdiff_t ldx,
                                    const int64_t *labels, const float *T, ptrdiff_t ldt,
                                    const float *sw, const int64_t *batch, size_t n,
                                    size_t chunks, size_t c0, size_t c1, float *const *grads,
                                    double *records, int nthreads);
int fusenn_plan_chunk_gradients_f64(fusenn_plan_f64 *plan, const void *X, ptrdiff_t ldx,
                                    const int64_t *labels, const double *T, ptrdiff_t ldt,
                                    const double *sw, const int64_t *batch, size_t n,
                                    size_t chunks, size_t c0, size_t c1, double *const *grads,
                                    double *records, int nthreads);
int fusenn_plan_apply_step_f32(fusenn_plan_f32 *plan, size_t n, size_t chunks,
                               const double *records, fusenn_optimizer *opt, double *loss,
                               double *correct, int nthreads);
int fusenn_plan_apply_step_f64(fusenn_plan_f64 *plan, size_t n, size_t chunks,
                               const double *records, fusenn_optimizer *opt, double *loss,
                               double *correct, int nthreads);

/* The network's outputs for n samples X into out (sample stride ldo), in
 * chunks of samples, in inference mode (no dropout, batchnorm's running
 * statistics). interruptible: poll for Ctrl-C about every 10 ms of work.
 * FUSENN_EBADINPUT: X holds a NaN or infinity, or an index the first layer
 * cannot take (nothing computed);
 * FUSENN_EDIVERGED: an output is not finite (X too large for the weights). */
int fusenn_plan_predict_f32(fusenn_plan_f32 *plan, size_t n, const void *X, ptrdiff_t ldx,
                            float *out, ptrdiff_t ldo, int interruptible, int nthreads);
int fusenn_plan_predict_f64(fusenn_plan_f64 *plan, size_t n, const void *X, ptrdiff_t ldx,
                            double *out, ptrdiff_t ldo, int interruptible, int nthreads);

/* Loss x samples summed over chunks into *loss_sum (samples weighted by sw,
 * may be NULL), correct predictions into *correct_sum (as train_batch counts
 * them). */
int fusenn_plan_evaluate_f32(fusenn_plan_f32 *plan, size_t n, const void *X, ptrdiff_t ldx,
                             const int64_t *labels, const float *T, ptrdiff_t ldt,
                             const float *sw, double *loss_sum, double *correct_sum,
                             int interruptible, int nthreads);
int fusenn_plan_evaluate_f64(fusenn_plan_f64 *plan, size_t n, const void *X, ptrdiff_t ldx,
                             const int64_t *labels, const double *T, ptrdiff_t ldt,
                             const double *sw, double *loss_sum, double *correct_sum,
                             int interruptible, int nthreads);

#ifdef __cplusplus
}
#endif
#endif /* FUSENN_H */
