# Included by _kernels.pyx: the binding of the training engine (csrc/plan.c).
# Plan holds a C plan plus references to every array it points into; the
# model (fusenn/model.py) builds one when a C-backend model trains with one of
# fusenn's optimizers, and validates everything it passes in.

from cpython.mem cimport PyMem_Calloc, PyMem_Free
from libc.stdint cimport uint64_t, uintptr_t

cdef extern from "fusenn.h" nogil:
    int FUSENN_EDIVERGED
    int FUSENN_EBADINPUT
    size_t fusenn_allocation_count()
    size_t fusenn_first_label_out_of_range(size_t n, const int64_t *labels, int64_t k)
    void fusenn_shuffle(uint64_t seed, size_t n, int64_t *order)
    size_t fusenn_count_nonfinite_f32(size_t n, size_t d, const float *X, Py_ssize_t ldx, int nthreads)
    size_t fusenn_count_nonfinite_f64(size_t n, size_t d, const double *X, Py_ssize_t ldx, int nthreads)

    ctypedef enum fusenn_loss:
        pass
    ctypedef enum fusenn_optimizer_kind:
        pass
    ctypedef struct fusenn_optimizer:
        fusenn_optimizer_kind kind
        double lr, momentum
        int nesterov
        double beta1, beta2, eps
        double rho, weight_decay, l2
        double clipnorm, global_clipnorm, clipvalue
        int64_t steps
    ctypedef enum fusenn_layer_kind:
        FUSENN_LAYER_DENSE
        FUSENN_LAYER_DROPOUT
        FUSENN_LAYER_BATCHNORM
    ctypedef struct fusenn_layer:
        fusenn_layer_kind kind
        size_t d_in, d_out
        fusenn_activation act
        void *W
        void *b
        void *dW
        void *db
        void *W_state[2]
        void *b_state[2]
        double rate
        uint64_t seed
        uint64_t *step
        double momentum, eps
        void *running_mean
        void *running_var
    ctypedef struct fusenn_plan_f32:
        pass
    ctypedef struct fusenn_plan_f64:
        pass

    fusenn_plan_f32 *fusenn_plan_create_f32(size_t n_layers, const fusenn_layer *layers, fusenn_loss loss,
                                            double loss_param)
    fusenn_plan_f64 *fusenn_plan_create_f64(size_t n_layers, const fusenn_layer *layers, fusenn_loss loss,
                                            double loss_param)
    void fusenn_plan_destroy_f32(fusenn_plan_f32 *plan)
    void fusenn_plan_destroy_f64(fusenn_plan_f64 *plan)
    int fusenn_plan_train_batch_f32(fusenn_plan_f32 *plan, size_t n, const float *X, Py_ssize_t ldx,
                                    const int64_t *labels, const float *T, Py_ssize_t ldt,
                                    const float *sw, fusenn_optimizer *opt, double *loss, double *correct, int nthreads)
    int fusenn_plan_train_batch_f64(fusenn_plan_f64 *plan, size_t n, const double *X, Py_ssize_t ldx,
                                    const int64_t *labels, const double *T, Py_ssize_t ldt,
                                    const double *sw, fusenn_optimizer *opt, double *loss, double *correct, int nthreads)
    int fusenn_plan_train_epoch_f32(fusenn_plan_f32 *plan, size_t n, const float *X, Py_ssize_t ldx,
                                    const int64_t *labels, const float *T, Py_ssize_t ldt,
                                    const float *sw, const int64_t *order, size_t batch_size, size_t first_batch,
                                    size_t n_batches, fusenn_optimizer *opt, double *loss,
                                    double *loss_sum, double *correct_sum, int nthreads)
    int fusenn_plan_train_epoch_f64(fusenn_plan_f64 *plan, size_t n, const double *X, Py_ssize_t ldx,
                                    const int64_t *labels, const double *T, Py_ssize_t ldt,
                                    const double *sw, const int64_t *order, size_t batch_size, size_t first_batch,
                                    size_t n_batches, fusenn_optimizer *opt, double *loss,
                                    double *loss_sum, double *correct_sum, int nthreads)
    int fusenn_plan_predict_f32(fusenn_plan_f32 *plan, size_t n, const float *X, Py_ssize_t ldx,
                                float *out, Py_ssize_t ldo, int nthreads)
    int fusenn_plan_predict_f64(fusenn_plan_f64 *plan, size_t n, const double *X, Py_ssize_t ldx,
                                double *out, Py_ssize_t ldo, int nthreads)
    int fusenn_plan_evaluate_f32(fusenn_plan_f32 *plan, size_t n, const float *X, Py_ssize_t ldx,
                                 const int64_t *labels, const float *T, Py_ssize_t ldt,
                                 const float *sw, double *loss_sum, double *correct_sum, int nthreads)
    int fusenn_plan_evaluate_f64(fusenn_plan_f64 *plan, size_t n, const double *X, Py_ssize_t ldx,
                                 const int64_t *labels, const double *T, Py_ssize_t ldt,
                                 const double *sw, double *loss_sum, double *correct_sum, int nthreads)


FUSENN_EDIVERGED_CODE = FUSENN_EDIVERGED
FUSENN_EBADINPUT_CODE = FUSENN_EBADINPUT


def allocation_count():
    """Heap allocations made by fusenn's C code so far (see fusenn.h)."""
    return fusenn_allocation_count()


def shuffle(int64_t[::1] order, uint64_t seed):
    """Fill `order` with the permutation of 0..len-1 drawn from `seed`."""
    cdef int64_t *p = &order[0] if order.shape[0] > 0 else NULL
    with nogil:
        fusenn_shuffle(seed, order.shape[0], p)


def first_label_out_of_range(const int64_t[::1] labels, int64_t k):
    """Index of the first label outside [0, k), or -1 (one pass, no temporaries)."""
    cdef size_t n = labels.shape[0], i
    if n == 0:
        return -1
    with nogil:
        i = fusenn_first_label_out_of_range(n, &labels[0], k)
    return -1 if i == n else <Py_ssize_t>i


def count_nonfinite(const real[:, :] X, int nthreads):
    """Number of NaN / infinite values in X (rows contiguous)."""
    cdef size_t bad
    with nogil:
        if real is float:
            bad = fusenn_count_nonfinite_f32(X.shape[0], X.shape[1], cptr2(X), rs(X), nthreads)
        else:
            bad = fusenn_count_nonfinite_f64(X.shape[0], X.shape[1], cptr2(X), rs(X), nthreads)
    return bad


cdef void *address(object array, object dtype, size_t size) except NULL:
    """The data pointer of a C-contiguous, writeable array of `dtype` and `size` elements."""
    if (array.dtype != dtype or array.size != size or not array.flags.c_contiguous
            or not array.flags.writeable):
        raise ValueError(f"plan arrays must be C-contiguous, writeable {dtype} arrays "
                         f"shaped like their layer's parameters")
    return <void *><uintptr_t>array.__array_interface__["data"][0]


# The per-dtype calls, fused over `real`; `plan` is a fusenn_plan_f32/_f64.

cdef struct batch_t:
    # a batch as the engine reads it: rows of X, and labels or targets T, and weights
    size_t n
    const void *X
    Py_ssize_t ldx
    const int64_t *labels
    const void *T
    Py_ssize_t ldt
    const void *sw


cdef const void *rows_ptr(object a, int typenum, Py_ssize_t n, Py_ssize_t d, str name,
                          Py_ssize_t *ld) except? NULL:
    """The data of `a`, an ndarray of `typenum` shaped (n, d) (n < 0: any number of
    rows) with contiguous rows, and its row stride in elements. NumPy's C API rather
    than a typed memoryview: acquiring one costs ~0.3 us, a third of a small net's step."""
    if not cnp.PyArray_Check(a):
        raise TypeError(f"{name} must be a NumPy array")
    cdef cnp.ndarray arr = <cnp.ndarray>a
    cdef cnp.npy_intp *shape = cnp.PyArray_DIMS(arr)
    cdef cnp.npy_intp *strides = cnp.PyArray_STRIDES(arr)
    cdef Py_ssize_t size = cnp.PyArray_ITEMSIZE(arr)
    if (cnp.PyArray_NDIM(arr) != 2 or not cnp.PyArray_EquivTypenums(cnp.PyArray_TYPE(arr), typenum)
            or (n >= 0 and shape[0] != n) or shape[1] != d or not cnp.PyArray_ISBEHAVED_RO(arr)
            or (d > 1 and strides[1] != size) or strides[0] % size != 0):
        raise ValueError(f"{name} must be an aligned, native {cnp.PyArray_DescrFromType(typenum)} array "
                         f"of shape ({n if n >= 0 else 'n'}, {d}) with contiguous rows")
    ld[0] = strides[0] // size
    return cnp.PyArray_DATA(arr)


cdef const void *vector_ptr(object a, int typenum, Py_ssize_t n, str name) except? NULL:
    """The data of `a`, a contiguous ndarray of `typenum` with n elements (None: NULL)."""
    if a is None:
        return NULL
    if not cnp.PyArray_Check(a):
        raise TypeError(f"{name} must be a NumPy array")
    cdef cnp.ndarray arr = <cnp.ndarray>a
    if (cnp.PyArray_NDIM(arr) != 1 or not cnp.PyArray_EquivTypenums(cnp.PyArray_TYPE(arr), typenum)
            or cnp.PyArray_DIMS(arr)[0] != n or not cnp.PyArray_IS_C_CONTIGUOUS(arr)
            or not cnp.PyArray_ISBEHAVED_RO(arr)):
        raise ValueError(f"{name} must be a contiguous {cnp.PyArray_DescrFromType(typenum)} "
                         f"array of {n} elements")
    return cnp.PyArray_DATA(arr)


cdef class Plan:
    """A network lowered into fusenn's C training engine.

    layers: one dict per layer (built by fusenn.model's engine_layer):
      {"kind": "dense", "W", "b", "dW", "db", "act", "W_state", "b_state"}
      {"kind": "batchnorm", "W" (gamma), "b" (beta), "dW", "db", "W_state",
       "b_state", "momentum", "eps", "running_mean", "running_var"}
      {"kind": "dropout", "d", "rate", "seed", "step"} (step: a uint64 array of
       one element that the engine advances)
    where the states are lists of 0-2 arrays shaped like W / b (SGD:
    [velocity] or []; Adam: [m, v]; RMSprop, Adagrad: [v]). loss: the fusenn_loss value, loss_param
    Huber's delta. Every array must be C-contiguous and of `dtype`; the plan
    keeps them alive. Return codes of the methods are those of csrc/fusenn.h.
    """
    cdef void *plan
    cdef readonly bint f64
    cdef int typenum  # NPY_FLOAT32 or NPY_FLOAT64
    cdef Py_ssize_t d_in, k  # input and output widths
    cdef fusenn_optimizer opt
    cdef list arrays

    def __cinit__(self):
        self.plan = NULL

    def __init__(self, list layers, int loss, object dtype, double loss_param=0.0):
        import numpy
        dtype = numpy.dtype(dtype)
        self.f64 = dtype == numpy.float64
        self.typenum = cnp.NPY_FLOAT64 if self.f64 else cnp.NPY_FLOAT32
        self.arrays = []
        cdef Py_ssize_t n = len(layers), i, s
        cdef size_t w_size, d
        if n == 0:
            raise ValueError("a plan needs at least one layer")
        cdef fusenn_layer *descs = <fusenn_layer *>PyMem_Calloc(n, sizeof(fusenn_layer))
        if descs == NULL:
            raise MemoryError()
        try:
            for i in range(n):
                spec = layers[i]
                kind = spec["kind"]
                if kind == "dropout":
                    d = spec["d"]
                    step = spec["step"]
                    if step.dtype != numpy.uint64:
                        raise ValueError("a dropout step counter must be a uint64 array")
                    descs[i].kind = FUSENN_LAYER_DROPOUT
                    descs[i].d_in = descs[i].d_out = d
                    descs[i].rate = spec["rate"]
                    descs[i].seed = spec["seed"]
                    descs[i].step = <uint64_t *>address(step, step.dtype, 1)
                    self.arrays.append(step)
                else:
                    W, b = spec["W"], spec["b"]
                    if kind == "dense":
                        descs[i].kind = FUSENN_LAYER_DENSE
                        if W.ndim != 2:
                            raise ValueError("a dense layer's W must be 2-D")
                        descs[i].d_in, descs[i].d_out = W.shape[0], W.shape[1]
                        descs[i].act = <fusenn_activation>spec["act"]
                    elif kind == "batchnorm":
                        descs[i].kind = FUSENN_LAYER_BATCHNORM
                        descs[i].d_in = descs[i].d_out = W.shape[0]
                        descs[i].momentum = spec["momentum"]
                        descs[i].eps = spec["eps"]
                        d = W.shape[0]
                        descs[i].running_mean = address(spec["running_mean"], dtype, d)
                        descs[i].running_var = address(spec["running_var"], dtype, d)
                        self.arrays.extend([spec["running_mean"], spec["running_var"]])
                    else:
                        raise ValueError(f"unknown plan layer kind {kind!r}")
                    w_size = W.size
                    d = descs[i].d_out
                    descs[i].W = address(W, dtype, w_size)
                    descs[i].b = address(b, dtype, d)
                    descs[i].dW = address(spec["dW"], dtype, w_size)
                    descs[i].db = address(spec["db"], dtype, d)
                    W_state, b_state = spec["W_state"], spec["b_state"]
                    for s in range(2):
                        descs[i].W_state[s] = (address(W_state[s], dtype, w_size)
                                               if s < len(W_state) else NULL)
                        descs[i].b_state[s] = (address(b_state[s], dtype, d)
                                               if s < len(b_state) else NULL)
                    self.arrays.extend([W, b, spec["dW"], spec["db"], *W_state, *b_state])
                if i > 0 and descs[i].d_in != descs[i - 1].d_out:
                    raise ValueError("plan layers must chain: each layer's input width is "
                                     "the previous layer's output width")
            if descs[n - 1].kind != FUSENN_LAYER_DENSE:
                raise ValueError("a plan's last layer must be dense")
            self.d_in, self.k = descs[0].d_in, descs[n - 1].d_out
            if self.f64:
                self.plan = fusenn_plan_create_f64(n, descs, <fusenn_loss>loss, loss_param)
            else:
                self.plan = fusenn_plan_create_f32(n, descs, <fusenn_loss>loss, loss_param)
        finally:
            PyMem_Free(descs)
        if self.plan == NULL:
            raise MemoryError("fusenn: could not allocate the training plan")

    def __dealloc__(self):
        if self.plan != NULL:
            if self.f64:
                fusenn_plan_destroy_f64(<fusenn_plan_f64 *>self.plan)
            else:
                fusenn_plan_destroy_f32(<fusenn_plan_f32 *>self.plan)

    def set_optimizer(self, dict config, int64_t steps):
        """The optimizer's settings (Optimizer.engine_config(): the fields of
        fusenn_optimizer, missing ones 0) and its step count."""
        known = {"kind", "lr", "momentum", "nesterov", "beta1", "beta2", "eps", "rho",
                 "weight_decay", "l2", "clipnorm", "global_clipnorm", "clipvalue"}
        unknown = set(config) - known
        if unknown:
            raise ValueError(f"unknown engine optimizer settings {sorted(unknown)}")
        get = config.get
        self.opt.kind = <fusenn_optimizer_kind><int>get("kind", 0)
        self.opt.lr = get("lr", 0.0)
        self.opt.momentum = get("momentum", 0.0)
        self.opt.nesterov = bool(get("nesterov", False))
        self.opt.beta1 = get("beta1", 0.0)
        self.opt.beta2 = get("beta2", 0.0)
        self.opt.eps = get("eps", 0.0)
        self.opt.rho = get("rho", 0.0)
        self.opt.weight_decay = get("weight_decay", 0.0)
        self.opt.l2 = get("l2", 0.0)
        self.opt.clipnorm = get("clipnorm", 0.0)
        self.opt.global_clipnorm = get("global_clipnorm", 0.0)
        self.opt.clipvalue = get("clipvalue", 0.0)
        self.opt.steps = steps

    def set_steps(self, int64_t steps):
        """Only the step count (the settings are unchanged)."""
        self.opt.steps = steps

    @property
    def steps(self):
        """Optimizer steps taken (Adam's t), as the engine left it."""
        return self.opt.steps

    cdef int batch(self, X, labels, T, sw, batch_t *b) except -1:
        """Pointers into a batch the model has validated: X (n x d_in), labels
        (int64, n) or T (n x k), sw (n weights) or None."""
        b.X = rows_ptr(X, self.typenum, -1, self.d_in, "X", &b.ldx)
        b.n = cnp.PyArray_DIMS(<cnp.ndarray>X)[0]
        b.labels = <const int64_t *>vector_ptr(labels, cnp.NPY_INT64, b.n, "labels")
        b.T, b.ldt = NULL, 0
        if T is not None:
            b.T = rows_ptr(T, self.typenum, b.n, self.k, "T", &b.ldt)
        b.sw = vector_ptr(sw, self.typenum, b.n, "sample weights")
        return 0

    def train_batch(self, X, labels, T, sw, int nthreads):
        """One step (sw: per-row weights or None): returns (code, loss, correct).
        The batch's values are checked first (FUSENN_EBADINPUT: nothing changed)."""
        cdef batch_t b
        self.batch(X, labels, T, sw, &b)
        cdef double loss = 0, correct = 0
        cdef int rc
        with nogil:
            if self.f64:
                rc = fusenn_plan_train_batch_f64(<fusenn_plan_f64 *>self.plan, b.n, <const double *>b.X,
                                                 b.ldx, b.labels, <const double *>b.T, b.ldt,
                                                 <const double *>b.sw, &self.opt, &loss, &correct,
                                                 nthreads)
            else:
                rc = fusenn_plan_train_batch_f32(<fusenn_plan_f32 *>self.plan, b.n, <const float *>b.X,
                                                 b.ldx, b.labels, <const float *>b.T, b.ldt,
                                                 <const float *>b.sw, &self.opt, &loss, &correct,
                                                 nthreads)
        return rc, loss, correct

    def train_epoch(self, X, labels, T, sw, const int64_t[::1] order, size_t batch_size,
                    size_t first_batch, size_t n_batches, int nthreads):
        """Batches [first_batch, first_batch + n_batches) of an epoch in `order`:
        returns (code, last batch loss, sum of loss x rows, correct predictions)."""
        cdef batch_t b
        self.batch(X, labels, T, sw, &b)
        cdef const int64_t *o = &order[0] if order.shape[0] > 0 else NULL
        cdef double loss = 0, loss_sum = 0, correct_sum = 0
        cdef int rc
        with nogil:
            if self.f64:
                rc = fusenn_plan_train_epoch_f64(<fusenn_plan_f64 *>self.plan, b.n, <const double *>b.X,
                                                 b.ldx, b.labels, <const double *>b.T, b.ldt,
                                                 <const double *>b.sw, o, batch_size, first_batch,
                                                 n_batches, &self.opt, &loss, &loss_sum,
                                                 &correct_sum, nthreads)
            else:
                rc = fusenn_plan_train_epoch_f32(<fusenn_plan_f32 *>self.plan, b.n, <const float *>b.X,
                                                 b.ldx, b.labels, <const float *>b.T, b.ldt,
                                                 <const float *>b.sw, o, batch_size, first_batch,
                                                 n_batches, &self.opt, &loss, &loss_sum,
                                                 &correct_sum, nthreads)
        return rc, loss, loss_sum, correct_sum

    def predict(self, X, out, int nthreads):
        """Fill out (n x outputs, C-contiguous) with the network's outputs for X."""
        cdef Py_ssize_t ldx, ldo
        cdef const void *x = rows_ptr(X, self.typenum, -1, self.d_in, "X", &ldx)
        cdef size_t n = cnp.PyArray_DIMS(<cnp.ndarray>X)[0]
        cdef void *o = <void *>rows_ptr(out, self.typenum, n, self.k, "out", &ldo)
        if not cnp.PyArray_ISWRITEABLE(<cnp.ndarray>out):
            raise ValueError("out must be writeable")
        cdef int rc
        with nogil:
            if self.f64:
                rc = fusenn_plan_predict_f64(<fusenn_plan_f64 *>self.plan, n, <const double *>x, ldx,
                                             <double *>o, ldo, nthreads)
            else:
                rc = fusenn_plan_predict_f32(<fusenn_plan_f32 *>self.plan, n, <const float *>x, ldx,
                                             <float *>o, ldo, nthreads)
        return rc

    def evaluate(self, X, labels, T, sw, int nthreads):
        """Returns (code, sum of loss x rows, correct predictions)."""
        cdef batch_t b
        self.batch(X, labels, T, sw, &b)
        cdef double loss_sum = 0, correct_sum = 0
        cdef int rc
        with nogil:
            if self.f64:
                rc = fusenn_plan_evaluate_f64(<fusenn_plan_f64 *>self.plan, b.n, <const double *>b.X,
                                              b.ldx, b.labels, <const double *>b.T, b.ldt,
                                              <const double *>b.sw, &loss_sum, &correct_sum, nthreads)
            else:
                rc = fusenn_plan_evaluate_f32(<fusenn_plan_f32 *>self.plan, b.n, <const float *>b.X,
                                              b.ldx, b.labels, <const float *>b.T, b.ldt,
                                              <const float *>b.sw, &loss_sum, &correct_sum, nthreads)
        return rc, loss_sum, correct_sum
