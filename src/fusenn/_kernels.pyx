# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""Bindings of fusenn's C kernels (csrc/fusenn.h): one def per C kernel family.

Thin on purpose: arguments are typed memoryviews (const where read-only, so
read-only arrays work), shapes and dtypes are validated by the Python-facing
callers in fusenn.ops, and every C call runs without the GIL. `real` is fused
over float and double, so each function binds both the _f32 and _f64 kernel.
Matrices other than GEMM's operands must have contiguous rows (unit column
stride); their row stride is passed as the leading dimension.

Two calls are too short for a memoryview's ~0.3 us per argument, and read
ndarrays through NumPy's C API instead: matmul (a 32^3 product takes about a
microsecond) and the training engine's Plan (_plan.pxi; a small net's step
takes ~8 us).

The C declarations live in _cfusenn.pxd. Python names activations, losses and
optimizers by name; the tables below are the one place that maps a name to
its C enum value.
"""
from libc.stdint cimport int64_t, uint64_t
cimport numpy as cnp

from fusenn._cfusenn cimport *

cnp.import_array()

ACTIVATION_IDS = {
    "identity": FUSENN_ACT_IDENTITY, "sigmoid": FUSENN_ACT_SIGMOID, "tanh": FUSENN_ACT_TANH,
    "relu": FUSENN_ACT_RELU, "leaky_relu": FUSENN_ACT_LEAKY_RELU, "softmax": FUSENN_ACT_SOFTMAX,
    "gelu": FUSENN_ACT_GELU, "gelu_tanh": FUSENN_ACT_GELU_TANH, "elu": FUSENN_ACT_ELU,
    "softplus": FUSENN_ACT_SOFTPLUS, "swish": FUSENN_ACT_SWISH,
}
LOSS_IDS = {
    "cross_entropy": FUSENN_LOSS_CROSS_ENTROPY,
    "binary_cross_entropy": FUSENN_LOSS_BINARY_CROSS_ENTROPY,
    "mse": FUSENN_LOSS_MSE, "mae": FUSENN_LOSS_MAE, "huber": FUSENN_LOSS_HUBER,
    "poisson": FUSENN_LOSS_POISSON,
}
OPTIMIZER_IDS = {"sgd": FUSENN_OPT_SGD, "adam": FUSENN_OPT_ADAM, "rmsprop": FUSENN_OPT_RMSPROP,
                 "adagrad": FUSENN_OPT_ADAGRAD}
# Layer attributes given by name: activations and pooling modes.
ATTRIBUTE_VALUES = {**ACTIVATION_IDS, "max": FUSENN_POOL_MAX, "avg": FUSENN_POOL_AVG}

ctypedef fused real:
    float
    double


def has_openmp():
    return bool(fusenn_has_openmp())


def num_procs():
    return fusenn_num_procs()


def omp_max_threads():
    """OpenMP's thread count in the calling thread (0 without OpenMP)."""
    return fusenn_omp_max_threads()


def gemm_isa():
    return fusenn_gemm_isa().decode()


# ---- the thread-count setting (csrc/threads.c; the rules in fusenn/_threads.py) ----

def num_threads():
    """The number of threads the next kernel call from this thread will use."""
    return fusenn_num_threads()


def set_global_threads(int n):
    fusenn_set_global_threads(n)


# ---- helpers kept waiting for a CPU (csrc/parallel.c) ----

def team_size(int n):
    """The team a parallel loop of n threads starts now: n, or 1 while helper
    threads have lately kept their caller waiting for a CPU."""
    return fusenn_team_size(n)


def clock_ns():
    return fusenn_clock_ns()


def region_waited(int64_t start_ns, int64_t caller_done_ns):
    """Report a parallel region as the engine does: it started at start_ns, and its
    caller finished its own part at caller_done_ns and then waited until now."""
    fusenn_region_waited(start_ns, caller_done_ns)


def swap_thread_override(int n):
    return fusenn_swap_thread_override(n)


def mark_forked_child():
    fusenn_mark_forked_child()


def configure_default_threads(int cap, int without_openmp):
    fusenn_configure_default_threads(cap, without_openmp)


def activation_needs_z(int act):
    """True if activation `act`'s backward pass reads the pre-activation z."""
    return bool(fusenn_activation_needs_z(<fusenn_activation>act))


# ---- pointers and strides in elements -----------------------------------------
# A zero-sized view has no element 0 to take the address of: pass NULL, the C
# kernels never dereference it when a size is 0.

cdef inline const real *cptr2(const real[:, :] a) noexcept nogil:
    return &a[0, 0] if a.shape[0] > 0 and a.shape[1] > 0 else NULL

cdef inline real *ptr2(real[:, :] a) noexcept nogil:
    return &a[0, 0] if a.shape[0] > 0 and a.shape[1] > 0 else NULL

cdef inline real *ptr2c(real[:, ::1] a) noexcept nogil:
    return &a[0, 0] if a.shape[0] > 0 and a.shape[1] > 0 else NULL

cdef inline real *ptr1c(real[::1] a) noexcept nogil:
    return &a[0] if a.shape[0] > 0 else NULL

cdef inline const real *cptr1c(const real[::1] a) noexcept nogil:
    return &a[0] if a.shape[0] > 0 else NULL

cdef inline Py_ssize_t rs(const real[:, :] a) noexcept nogil:
    return a.strides[0] // <Py_ssize_t>sizeof(real)

cdef inline Py_ssize_t cs(const real[:, :] a) noexcept nogil:
    return a.strides[1] // <Py_ssize_t>sizeof(real)


FUSENN_EINVAL_CODE = FUSENN_EINVAL  # fusenn_dense_backward given an activation that needs z


cdef inline int check(int rc) except -1:
    if rc == FUSENN_EINVAL:
        raise ValueError("fusenn: this activation's derivative needs the pre-activation z; "
                         "apply activation_backward with z first, then pass identity")
    if rc != FUSENN_OK:
        raise MemoryError("fusenn: could not allocate GEMM packing buffers")
    return 0


# ---- GEMM ------------------------------------------------------------------------

def gemm(double alpha, const real[:, :] a, const real[:, :] b, double beta, real[:, :] c,
         int nthreads):
    """c = alpha a b + beta c for any strides (pass a.T for a transposed operand)."""
    cdef size_t m = c.shape[0], n = c.shape[1], k = a.shape[1]
    cdef int rc
    with nogil:
        if real is float:
            rc = fusenn_gemm_f32(m, n, k, <float>alpha, cptr2(a), rs(a), cs(a),
                                 cptr2(b), rs(b), cs(b), <float>beta,
                                 ptr2(c), rs(c), cs(c), nthreads)
        else:
            rc = fusenn_gemm_f64(m, n, k, alpha, cptr2(a), rs(a), cs(a),
                                 cptr2(b), rs(b), cs(b), beta,
                                 ptr2(c), rs(c), cs(c), nthreads)
    check(rc)


_matmul_checked = None  # fusenn.ops' path for every other input (set_matmul_checked)


def set_matmul_checked(fn):
    global _matmul_checked
    _matmul_checked = fn


def matmul(a, b, bint trans_a=False, bint trans_b=False):
    """op(a) @ op(b) by fusenn's GEMM, where op transposes when asked (no copy).

    fusenn.ops.matmul is this function: at 32^3 the multiply itself takes well
    under a microsecond, so the common case (two aligned, native 2-D float32 or
    float64 ndarrays of one dtype with matching inner sizes) goes from here
    straight to C, with no Python frame in between. Anything else goes to
    fusenn.ops' checked path, which converts or explains."""
    c = _matmul_fast(a, b, trans_a, trans_b, fusenn_num_threads())
    return c if c is not None else _matmul_checked(a, b, trans_a, trans_b)


cdef object _matmul_fast(a, b, bint trans_a, bint trans_b, int nthreads):
    """op(a) @ op(b) into a new C-contiguous array, or None if the inputs are not
    the common case. NumPy's C API rather than typed memoryviews, for speed."""
    if not cnp.PyArray_Check(a) or not cnp.PyArray_Check(b):
        return None
    cdef cnp.ndarray A = <cnp.ndarray>a, B = <cnp.ndarray>b
    cdef int typenum = cnp.PyArray_TYPE(A)
    if ((typenum != cnp.NPY_FLOAT32 and typenum != cnp.NPY_FLOAT64)
            or cnp.PyArray_TYPE(B) != typenum or cnp.PyArray_NDIM(A) != 2
            or cnp.PyArray_NDIM(B) != 2 or not cnp.PyArray_ISBEHAVED_RO(A)
            or not cnp.PyArray_ISBEHAVED_RO(B)):  # aligned, native byte order
        return None
    cdef Py_ssize_t size = cnp.PyArray_ITEMSIZE(A)
    # op(a) is m x k with strides (rs_a, cs_a) in elements; transposing swaps them
    cdef int ra = 1 if trans_a else 0, rb = 1 if trans_b else 0
    cdef cnp.npy_intp m = cnp.PyArray_DIMS(A)[ra], k = cnp.PyArray_DIMS(A)[1 - ra]
    cdef cnp.npy_intp kb = cnp.PyArray_DIMS(B)[rb], n = cnp.PyArray_DIMS(B)[1 - rb]
    if k != kb:
        return None
    cdef Py_ssize_t rs_a = cnp.PyArray_STRIDES(A)[ra] // size, cs_a = cnp.PyArray_STRIDES(A)[1 - ra] // size
    cdef Py_ssize_t rs_b = cnp.PyArray_STRIDES(B)[rb] // size, cs_b = cnp.PyArray_STRIDES(B)[1 - rb] // size
    cdef cnp.npy_intp dims[2]
    dims[0], dims[1] = m, n
    cdef cnp.ndarray C = cnp.PyArray_EMPTY(2, dims, typenum, 0)
    cdef const void *pa = cnp.PyArray_DATA(A)
    cdef const void *pb = cnp.PyArray_DATA(B)
    cdef void *pc = cnp.PyArray_DATA(C)
    cdef int rc
    # A call too small for two threads (a few µs) keeps the GIL: releasing and
    # retaking it cost 8% of 32^3 (19% of 8^3).
    if fusenn_gemm_is_serial(m, n, k):
        rc = _matmul_call(typenum, m, n, k, pa, rs_a, cs_a, pb, rs_b, cs_b, pc, nthreads)
    else:
        with nogil:
            rc = _matmul_call(typenum, m, n, k, pa, rs_a, cs_a, pb, rs_b, cs_b, pc, nthreads)
    check(rc)
    return C


cdef inline int _matmul_call(int typenum, size_t m, size_t n, size_t k, const void *pa,
                             Py_ssize_t rs_a, Py_ssize_t cs_a, const void *pb, Py_ssize_t rs_b,
                             Py_ssize_t cs_b, void *pc, int nthreads) noexcept nogil:
    if typenum == cnp.NPY_FLOAT32:
        return fusenn_gemm_f32(m, n, k, 1, <const float *>pa, rs_a, cs_a, <const float *>pb,
                               rs_b, cs_b, 0, <float *>pc, n, 1, nthreads)
    return fusenn_gemm_f64(m, n, k, 1, <const double *>pa, rs_a, cs_a, <const double *>pb,
                           rs_b, cs_b, 0, <double *>pc, n, 1, nthreads)


# ---- dense layer -------------------------------------------------------------------

def dense_forward(const real[:, :] x, const real[:, :] w, const real[::1] b, int act,
                  real[:, :] y, int nthreads):
    """y = act(x w + b); y has contiguous rows."""
    cdef size_t n = x.shape[0], d_in = x.shape[1], d_out = w.shape[1]
    cdef int rc
    with nogil:
        if real is float:
            rc = fusenn_dense_forward_f32(n, d_in, d_out, cptr2(x), rs(x), cs(x),
                                          cptr2(w), rs(w), cs(w), cptr1c(b),
                                          <fusenn_activation>act, ptr2(y), rs(y), nthreads)
        else:
            rc = fusenn_dense_forward_f64(n, d_in, d_out, cptr2(x), rs(x), cs(x),
                                          cptr2(w), rs(w), cs(w), cptr1c(b),
                                          <fusenn_activation>act, ptr2(y), rs(y), nthreads)
    check(rc)


def dense_backward(const real[:, :] x, const real[:, :] w, const real[:, :] y,
                   const real[:, :] dy, int act, real[:, ::1] dz, real[:, ::1] dw,
                   real[::1] db, real[:, ::1] dx, int nthreads):
    """dz, dw, db and (unless dx is None) dx of y = act(x w + b); outputs C-contiguous."""
    cdef size_t n = x.shape[0], d_in = x.shape[1], d_out = w.shape[1]
    cdef real *dx_ptr = NULL
    cdef int rc
    if dx is not None:
        dx_ptr = ptr2c(dx)
    with nogil:
        if real is float:
            rc = fusenn_dense_backward_f32(n, d_in, d_out, cptr2(x), rs(x), cs(x),
                                           cptr2(w), rs(w), cs(w), cptr2(y), rs(y),
                                           cptr2(dy), rs(dy), <fusenn_activation>act,
                                           ptr2c(dz), ptr2c(dw), ptr1c(db), dx_ptr, nthreads)
        else:
            rc = fusenn_dense_backward_f64(n, d_in, d_out, cptr2(x), rs(x), cs(x),
                                           cptr2(w), rs(w), cs(w), cptr2(y), rs(y),
                                           cptr2(dy), rs(dy), <fusenn_activation>act,
                                           ptr2c(dz), ptr2c(dw), ptr1c(db), dx_ptr, nthreads)
    check(rc)


# ---- activations --------------------------------------------------------------------

def activation_forward(int act, const real[:, :] z, real[:, :] a, int nthreads):
    cdef size_t n = z.shape[0], d = z.shape[1]
    with nogil:
        if real is float:
            fusenn_activation_forward_f32(<fusenn_activation>act, n, d, cptr2(z), rs(z),
                                          ptr2(a), rs(a), nthreads)
        else:
            fusenn_activation_forward_f64(<fusenn_activation>act, n, d, cptr2(z), rs(z),
                                          ptr2(a), rs(a), nthreads)


def activation_backward(int act, const real[:, :] a, const real[:, :] da, real[:, :] dz,
                        const real[:, :] z, int nthreads):
    """dz = da * act'(z); z may be None unless activation_needs_z(act) (it comes
    after the arrays that are never None, which pick the dtype)."""
    cdef size_t n = a.shape[0], d = a.shape[1]
    cdef const real *z_ptr = NULL
    cdef Py_ssize_t ldz = 0
    if z is not None:
        z_ptr = cptr2(z)
        ldz = rs(z)
    elif fusenn_activation_needs_z(<fusenn_activation>act):
        raise ValueError("z (the pre-activation) is required for this activation")
    with nogil:
        if real is float:
            fusenn_activation_backward_f32(<fusenn_activation>act, n, d, z_ptr, ldz,
                                           cptr2(a), rs(a), cptr2(da), rs(da), ptr2(dz), rs(dz),
                                           nthreads)
        else:
            fusenn_activation_backward_f64(<fusenn_activation>act, n, d, z_ptr, ldz,
                                           cptr2(a), rs(a), cptr2(da), rs(da), ptr2(dz), rs(dz),
                                           nthreads)


# ---- losses ------------------------------------------------------------------------
# sw: per-sample weights (n contiguous values) or None for all ones; every loss
# is (1/n) sum_i sw_i loss_i and row i's gradient is scaled by sw_i.

cdef inline const real *weights_ptr(const real[::1] sw) noexcept:
    return cptr1c(sw) if sw is not None else NULL


def softmax_cross_entropy(const real[:, :] z, const int64_t[::1] labels, const real[::1] sw,
                          real[:, :] p, real[:, :] dz, int nthreads):
    """Returns the mean loss; fills p = softmax(z) and dz = sw (p - onehot) / n."""
    cdef size_t n = z.shape[0], k = z.shape[1]
    cdef const int64_t *lab = &labels[0] if n > 0 else NULL
    cdef const real *w = weights_ptr(sw)
    cdef double loss
    with nogil:
        if real is float:
            loss = fusenn_softmax_cross_entropy_f32(n, k, cptr2(z), rs(z), lab, w,
                                                    ptr2(p), rs(p), ptr2(dz), rs(dz), nthreads)
        else:
            loss = fusenn_softmax_cross_entropy_f64(n, k, cptr2(z), rs(z), lab, w,
                                                    ptr2(p), rs(p), ptr2(dz), rs(dz), nthreads)
    return loss


def sigmoid_binary_cross_entropy(const real[:, :] z, const real[:, :] t, const real[::1] sw,
                                 real[:, :] p, real[:, :] dz, int nthreads):
    """Returns the mean loss; fills p = sigmoid(z) and dz = sw (p - t) / (n k)."""
    cdef size_t n = z.shape[0], k = z.shape[1]
    cdef const real *w = weights_ptr(sw)
    cdef double loss
    with nogil:
        if real is float:
            loss = fusenn_sigmoid_binary_cross_entropy_f32(n, k, cptr2(z), rs(z), cptr2(t), rs(t),
                                                           w, ptr2(p), rs(p), ptr2(dz), rs(dz),
                                                           nthreads)
        else:
            loss = fusenn_sigmoid_binary_cross_entropy_f64(n, k, cptr2(z), rs(z), cptr2(t), rs(t),
                                                           w, ptr2(p), rs(p), ptr2(dz), rs(dz),
                                                           nthreads)
    return loss


def mse(const real[:, :] a, const real[:, :] t, const real[::1] sw, real[:, :] da, int nthreads):
    """Returns the mean squared error; fills da = 2 sw (a - t) / (n k)."""
    cdef size_t n = a.shape[0], k = a.shape[1]
    cdef const real *w = weights_ptr(sw)
    cdef double loss
    with nogil:
        if real is float:
            loss = fusenn_mse_f32(n, k, cptr2(a), rs(a), cptr2(t), rs(t), w, ptr2(da), rs(da),
                                  nthreads)
        else:
            loss = fusenn_mse_f64(n, k, cptr2(a), rs(a), cptr2(t), rs(t), w, ptr2(da), rs(da),
                                  nthreads)
    return loss


def mae(const real[:, :] a, const real[:, :] t, const real[::1] sw, real[:, :] da, int nthreads):
    """Returns the mean absolute error; fills da = sw sign(a - t) / (n k)."""
    cdef size_t n = a.shape[0], k = a.shape[1]
    cdef const real *w = weights_ptr(sw)
    cdef double loss
    with nogil:
        if real is float:
            loss = fusenn_mae_f32(n, k, cptr2(a), rs(a), cptr2(t), rs(t), w, ptr2(da), rs(da),
                                  nthreads)
        else:
            loss = fusenn_mae_f64(n, k, cptr2(a), rs(a), cptr2(t), rs(t), w, ptr2(da), rs(da),
                                  nthreads)
    return loss


def huber(const real[:, :] a, const real[:, :] t, double delta, const real[::1] sw,
          real[:, :] da, int nthreads):
    """Returns the mean Huber loss (delta > 0); fills da = sw clip(a - t, +-delta) / (n k)."""
    cdef size_t n = a.shape[0], k = a.shape[1]
    cdef const real *w = weights_ptr(sw)
    cdef double loss
    with nogil:
        if real is float:
            loss = fusenn_huber_f32(n, k, cptr2(a), rs(a), cptr2(t), rs(t), delta, w,
                                    ptr2(da), rs(da), nthreads)
        else:
            loss = fusenn_huber_f64(n, k, cptr2(a), rs(a), cptr2(t), rs(t), delta, w,
                                    ptr2(da), rs(da), nthreads)
    return loss


def poisson(const real[:, :] a, const real[:, :] t, const real[::1] sw, real[:, :] da,
            int nthreads):
    """Returns the mean Poisson NLL of log-rates a; fills da = sw (exp(a) - t) / (n k)."""
    cdef size_t n = a.shape[0], k = a.shape[1]
    cdef const real *w = weights_ptr(sw)
    cdef double loss
    with nogil:
        if real is float:
            loss = fusenn_poisson_f32(n, k, cptr2(a), rs(a), cptr2(t), rs(t), w, ptr2(da),
                                      rs(da), nthreads)
        else:
            loss = fusenn_poisson_f64(n, k, cptr2(a), rs(a), cptr2(t), rs(t), w, ptr2(da),
                                      rs(da), nthreads)
    return loss


# ---- optimizers (flat, contiguous parameter arrays) ------------------------------------

def sgd_update(real[::1] w, const real[::1] g, real[::1] v, double lr, double momentum,
               bint nesterov, real[::1] prev, int nthreads):
    """Returns the number of non-finite updated weights; prev may be None."""
    cdef real *v_ptr = ptr1c(v) if v is not None else NULL
    cdef real *prev_ptr = ptr1c(prev) if prev is not None else NULL
    cdef size_t bad
    with nogil:
        if real is float:
            bad = fusenn_sgd_update_f32(w.shape[0], ptr1c(w), cptr1c(g), v_ptr, lr, momentum,
                                        nesterov, prev_ptr, nthreads)
        else:
            bad = fusenn_sgd_update_f64(w.shape[0], ptr1c(w), cptr1c(g), v_ptr, lr, momentum,
                                        nesterov, prev_ptr, nthreads)
    return bad


def adam_update(real[::1] w, const real[::1] g, real[::1] m, real[::1] v, int64_t t,
                double lr, double beta1, double beta2, double eps, double weight_decay,
                real[::1] prev, int nthreads):
    """Returns the number of non-finite updated weights; prev may be None."""
    cdef real *prev_ptr = ptr1c(prev) if prev is not None else NULL
    cdef size_t bad
    with nogil:
        if real is float:
            bad = fusenn_adam_update_f32(w.shape[0], ptr1c(w), cptr1c(g), ptr1c(m), ptr1c(v),
                                         lr, beta1, beta2, eps, weight_decay, t, prev_ptr,
                                         nthreads)
        else:
            bad = fusenn_adam_update_f64(w.shape[0], ptr1c(w), cptr1c(g), ptr1c(m), ptr1c(v),
                                         lr, beta1, beta2, eps, weight_decay, t, prev_ptr,
                                         nthreads)
    return bad


# ---- dropout --------------------------------------------------------------------------------

def dropout_forward(const real[:, :] x, double rate, uint64_t seed, real[:, :] y, int nthreads):
    """y = x * mask(seed) / (1 - rate); y has contiguous rows."""
    cdef size_t n = x.shape[0], d = x.shape[1]
    with nogil:
        if real is float:
            fusenn_dropout_forward_f32(n, d, cptr2(x), rs(x), rate, seed, ptr2(y), rs(y),
                                       nthreads)
        else:
            fusenn_dropout_forward_f64(n, d, cptr2(x), rs(x), rate, seed, ptr2(y), rs(y),
                                       nthreads)


def dropout_backward(const real[:, :] dy, double rate, uint64_t seed, real[:, :] dx,
                     int nthreads):
    """dx = dy * mask(seed) / (1 - rate); dx has contiguous rows."""
    cdef size_t n = dy.shape[0], d = dy.shape[1]
    with nogil:
        if real is float:
            fusenn_dropout_backward_f32(n, d, cptr2(dy), rs(dy), rate, seed, ptr2(dx), rs(dx),
                                        nthreads)
        else:
            fusenn_dropout_backward_f64(n, d, cptr2(dy), rs(dy), rate, seed, ptr2(dx), rs(dx),
                                        nthreads)


def dropout_seed(uint64_t base, uint64_t step):
    return fusenn_dropout_seed(base, step)


# ---- batch normalisation -------------------------------------------------------------------

def batchnorm_forward_train(const real[:, :] x, const real[::1] gamma, const real[::1] beta,
                            double eps, double momentum, real[::1] running_mean,
                            real[::1] running_var, real[::1] mean, real[::1] invstd,
                            real[:, :] y, int nthreads):
    """Batch statistics into mean, invstd; y; running statistics (may be None) in place."""
    cdef size_t n = x.shape[0], d = x.shape[1]
    cdef real *rm = ptr1c(running_mean) if running_mean is not None else NULL
    cdef real *rv = ptr1c(running_var) if running_var is not None else NULL
    with nogil:
        if real is float:
            fusenn_batchnorm_forward_train_f32(n, d, cptr2(x), rs(x), cptr1c(gamma),
                                               cptr1c(beta), eps, momentum, rm, rv,
                                               ptr1c(mean), ptr1c(invstd), ptr2(y), rs(y),
                                               nthreads)
        else:
            fusenn_batchnorm_forward_train_f64(n, d, cptr2(x), rs(x), cptr1c(gamma),
                                               cptr1c(beta), eps, momentum, rm, rv,
                                               ptr1c(mean), ptr1c(invstd), ptr2(y), rs(y),
                                               nthreads)


def batchnorm_forward_infer(const real[:, :] x, const real[::1] gamma, const real[::1] beta,
                            const real[::1] running_mean, const real[::1] running_var,
                            double eps, real[:, :] y, int nthreads):
    cdef size_t n = x.shape[0], d = x.shape[1]
    with nogil:
        if real is float:
            fusenn_batchnorm_forward_infer_f32(n, d, cptr2(x), rs(x), cptr1c(gamma),
                                               cptr1c(beta), eps, cptr1c(running_mean),
                                               cptr1c(running_var), ptr2(y), rs(y), nthreads)
        else:
            fusenn_batchnorm_forward_infer_f64(n, d, cptr2(x), rs(x), cptr1c(gamma),
                                               cptr1c(beta), eps, cptr1c(running_mean),
                                               cptr1c(running_var), ptr2(y), rs(y), nthreads)


def batchnorm_backward(const real[:, :] x, const real[:, :] dy, const real[::1] gamma,
                       const real[::1] mean, const real[::1] invstd, real[:, :] dx,
                       real[::1] dgamma, real[::1] dbeta, int nthreads):
    """dgamma, dbeta and (unless dx is None) dx; dx has contiguous rows."""
    cdef size_t n = x.shape[0], d = x.shape[1]
    cdef real *dx_ptr = NULL
    cdef Py_ssize_t lddx = 0
    if dx is not None:
        dx_ptr = ptr2(dx)
        lddx = rs(dx)
    with nogil:
        if real is float:
            fusenn_batchnorm_backward_f32(n, d, cptr2(x), rs(x), cptr2(dy), rs(dy),
                                          cptr1c(gamma), cptr1c(mean), cptr1c(invstd),
                                          dx_ptr, lddx, ptr1c(dgamma), ptr1c(dbeta), nthreads)
        else:
            fusenn_batchnorm_backward_f64(n, d, cptr2(x), rs(x), cptr2(dy), rs(dy),
                                          cptr1c(gamma), cptr1c(mean), cptr1c(invstd),
                                          dx_ptr, lddx, ptr1c(dgamma), ptr1c(dbeta), nthreads)


# ---- more optimizers and gradient transforms ------------------------------------------------

def rmsprop_update(real[::1] w, const real[::1] g, real[::1] v, double lr, double rho,
                   double eps, real[::1] prev, int nthreads):
    """Returns the number of non-finite updated weights; prev may be None."""
    cdef real *prev_ptr = ptr1c(prev) if prev is not None else NULL
    cdef size_t bad
    with nogil:
        if real is float:
            bad = fusenn_rmsprop_update_f32(w.shape[0], ptr1c(w), cptr1c(g), ptr1c(v), lr, rho,
                                            eps, prev_ptr, nthreads)
        else:
            bad = fusenn_rmsprop_update_f64(w.shape[0], ptr1c(w), cptr1c(g), ptr1c(v), lr, rho,
                                            eps, prev_ptr, nthreads)
    return bad


def adagrad_update(real[::1] w, const real[::1] g, real[::1] v, double lr, double eps,
                   real[::1] prev, int nthreads):
    """Returns the number of non-finite updated weights; prev may be None."""
    cdef real *prev_ptr = ptr1c(prev) if prev is not None else NULL
    cdef size_t bad
    with nogil:
        if real is float:
            bad = fusenn_adagrad_update_f32(w.shape[0], ptr1c(w), cptr1c(g), ptr1c(v), lr, eps,
                                            prev_ptr, nthreads)
        else:
            bad = fusenn_adagrad_update_f64(w.shape[0], ptr1c(w), cptr1c(g), ptr1c(v), lr, eps,
                                            prev_ptr, nthreads)
    return bad


def sum_squares(const real[::1] x, int nthreads):
    """sum of x**2 in double (the same bits for any thread count)."""
    cdef double s
    with nogil:
        if real is float:
            s = fusenn_sum_squares_f32(x.shape[0], cptr1c(x), nthreads)
        else:
            s = fusenn_sum_squares_f64(x.shape[0], cptr1c(x), nthreads)
    return s


def grad_transform(real[::1] g, const real[::1] w, double l2, double scale, double clipvalue,
                   int nthreads):
    """In place: g = clip(scale (g + l2 w), -clipvalue, clipvalue); w may be None if l2 == 0."""
    cdef const real *w_ptr = cptr1c(w) if w is not None else NULL
    with nogil:
        if real is float:
            fusenn_grad_transform_f32(g.shape[0], ptr1c(g), w_ptr, l2, scale, clipvalue,
                                      nthreads)
        else:
            fusenn_grad_transform_f64(g.shape[0], ptr1c(g), w_ptr, l2, scale, clipvalue,
                                      nthreads)


include "_plan.pxi"
