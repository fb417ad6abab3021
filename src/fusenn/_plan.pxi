# Included by _kernels.pyx: the binding of the training engine (csrc/plan.c).
# Plan holds a C plan plus references to every array it points into; the
# model's engine module (fusenn/_engine.py) builds one when a C-backend model
# trains with one of fusenn's optimizers, and validates everything it passes in.

from cpython.mem cimport PyMem_Calloc, PyMem_Free
from libc.stdint cimport uint64_t, uintptr_t
from libc.string cimport memset

import threading

import numpy
from cpython.exc cimport PyErr_CheckSignals

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


cdef void *address(object array, object dtype, size_t size, str what) except NULL:
    """The data pointer of a C-contiguous, writeable array of `dtype` and `size` elements."""
    if (array.dtype != dtype or array.size != size or not array.flags.c_contiguous
            or not array.flags.writeable):
        raise ValueError(f"{what} must be a C-contiguous, writeable {dtype} array of "
                         f"{size} elements")
    return <void *><uintptr_t>array.__array_interface__["data"][0]


def kinds():
    """{kind name: (attribute names, in the order of fusenn_layer.attr)} of the engine."""
    table = {}
    cdef int k
    cdef size_t i
    cdef const char *name
    for k in range(fusenn_kind_count()):
        attrs = []
        i = 0
        name = fusenn_kind_attr(k, i)
        while name != NULL:
            attrs.append(name.decode())
            i += 1
            name = fusenn_kind_attr(k, i)
        table[fusenn_kind_name(k).decode()] = tuple(attrs)
    return table


cdef int lower_layer(dict spec, fusenn_layer *desc, object dtype, list keep) except -1:
    """Fill one descriptor from a layer's engine spec (see Plan): the kind by name,
    attributes in the kind's order (activation names as their C values)."""
    kind = spec["kind"]
    desc.kind = fusenn_kind_find(kind.encode())
    if desc.kind < 0:
        raise ValueError(f"the engine has no layer kind {kind!r}")
    attrs = dict(spec.get("attrs", {}))
    cdef size_t i = 0
    cdef const char *name = fusenn_kind_attr(desc.kind, 0)
    while name != NULL:
        key = name.decode()
        if key not in attrs:
            raise ValueError(f"layer kind {kind!r} needs attribute {key!r}")
        value = attrs.pop(key)
        desc.attr[i] = ATTRIBUTE_VALUES[value] if isinstance(value, str) else value
        i += 1
        name = fusenn_kind_attr(desc.kind, i)
    if attrs:
        raise ValueError(f"layer kind {kind!r} has no attributes {sorted(attrs)}")
    offsets = spec.get("param_offsets", ())
    if len(offsets) > FUSENN_MAX_PARAMS:
        raise ValueError(f"a layer has at most {FUSENN_MAX_PARAMS} parameter tensors")
    for i in range(len(offsets)):
        desc.param_offset[i] = offsets[i]
    desc.seed = spec.get("seed", 0)
    counter = spec.get("counter")
    if counter is not None:
        if counter.dtype != numpy.uint64:
            raise ValueError("a layer's step counter must be a uint64 array")
        desc.counter = <uint64_t *>address(counter, counter.dtype, 1, "a step counter")
        keep.append(counter)
    buffers = spec.get("buffers", ())
    if len(buffers) > 2:
        raise ValueError("a layer has at most 2 buffers")
    for i in range(len(buffers)):
        desc.buffer[i] = address(buffers[i], dtype, buffers[i].size, "a layer buffer")
        keep.append(buffers[i])
    return 0


# ---- Ctrl-C (csrc/interrupt.c) ----------------------------------------------------

# predict and evaluate of at most this many samples are not interruptible: they
# return within milliseconds, and arming the handler costs about a microsecond
SHORT_CALL_SAMPLES = 64


cdef bint begin_interruptible():
    """Arm the engine's Ctrl-C flag, from the main thread only (Python delivers
    KeyboardInterrupt there); True if armed (then call fusenn_interrupt_end)."""
    return threading.current_thread() is threading.main_thread() and fusenn_interrupt_begin()


cdef int raise_pending_signal() except -1:
    """Let Python run its SIGINT handler (KeyboardInterrupt by default), after the
    engine stopped on the flag; returns if the handler raised nothing."""
    fusenn_interrupt_clear()
    PyErr_CheckSignals()
    return 0


# ---- one layer of a kind, called directly (csrc/plan.c's fusenn_layer_*) ----------

cdef void *data_of(object a):
    return <void *><uintptr_t>a.__array_interface__["data"][0] if a.size else NULL


cdef int describe(dict spec, tuple in_shape, fusenn_layer *desc, fusenn_shape *shape,
                  fusenn_shape *out, size_t *n_params, fusenn_shape *param_shapes,
                  object dtype, list keep) except -1:
    """A layer spec and its input shape as the C layer API takes them."""
    lower_layer(spec, desc, dtype, keep)
    if not 1 <= len(in_shape) <= FUSENN_MAX_RANK:
        raise ValueError(f"a sample has 1 to {FUSENN_MAX_RANK} dimensions, got {in_shape}")
    shape.rank = len(in_shape)
    cdef Py_ssize_t i
    for i in range(shape.rank):
        shape.dim[i] = in_shape[i]
    if fusenn_layer_describe(desc, shape, out, n_params, param_shapes) != FUSENN_OK:
        raise ValueError(f"a {spec['kind']} layer with {spec.get('attrs')} cannot take samples of "
                         f"shape {in_shape}")
    return 0


cdef tuple shape_tuple(fusenn_shape *s):
    return tuple(s.dim[i] for i in range(s.rank))


cdef const unsigned char *mask_of(object mask, size_t n, tuple in_shape) except? NULL:
    """A time-step mask (bool or uint8, C-contiguous, (n, T): T the input's first
    dimension), or NULL for None."""
    if mask is None:
        return NULL
    if (mask.dtype not in (numpy.bool_, numpy.uint8) or not mask.flags.c_contiguous
            or mask.shape != (n, in_shape[0])):
        raise ValueError(f"mask must be a C-contiguous bool array of shape {(n, in_shape[0])}")
    return <const unsigned char *>data_of(mask)


def layer_forward(dict spec, x, list params, saved=None, bint training=False,
                  bint logits=False, mask=None, int nthreads=1):
    """One forward pass of a layer of spec {"kind", "attrs", ...} on x (n samples,
    C-contiguous; int64 for a kind that reads indices) with its parameter arrays
    (C-contiguous, of the layer's dtype, in the kind's order) and the time-step
    mask of a sequence (or None): returns (y, saved, mask), saved being the bytes
    the kind keeps for the backward pass (given: reused) and mask the output's
    (a new bool array when the kind made one, else the one given)."""
    dtype = numpy.dtype(params[0].dtype if params else x.dtype)
    cdef fusenn_layer desc
    cdef fusenn_shape shape, out
    cdef fusenn_shape pshapes[FUSENN_MAX_PARAMS]
    cdef size_t n_params, i
    cdef list keep = []
    memset(&desc, 0, sizeof(desc))
    describe(spec, tuple(x.shape[1:]), &desc, &shape, &out, &n_params, pshapes, dtype, keep)
    cdef void *pp[FUSENN_MAX_PARAMS]
    if len(params) != n_params:
        raise ValueError(f"a {spec['kind']} layer has {n_params} parameter tensors, got {len(params)}")
    for i in range(n_params):
        pp[i] = address(params[i], dtype, params[i].size, f"parameter {i}")
        if params[i].shape != shape_tuple(&pshapes[i]):
            raise ValueError(f"parameter {i} must have shape {shape_tuple(&pshapes[i])}, "
                             f"got {params[i].shape}")
    if not x.flags.c_contiguous:
        raise ValueError("x must be C-contiguous")
    cdef size_t n = x.shape[0]
    cdef bint f64 = dtype == numpy.float64
    y = numpy.empty((n, *shape_tuple(&out)), dtype=dtype)
    cdef size_t saved_bytes = (fusenn_layer_saved_bytes_f64(&desc, &shape, n) if f64 else
                               fusenn_layer_saved_bytes_f32(&desc, &shape, n))
    cdef size_t work_bytes = (fusenn_layer_work_bytes_f64(&desc, &shape, n) if f64 else
                              fusenn_layer_work_bytes_f32(&desc, &shape, n))
    if saved is None:
        saved = numpy.empty(saved_bytes, dtype=numpy.uint8)
    elif saved.dtype != numpy.uint8 or saved.size != saved_bytes or not saved.flags.c_contiguous:
        raise ValueError(f"saved must be {saved_bytes} contiguous bytes")
    work = numpy.empty(work_bytes, dtype=numpy.uint8)
    cdef const void *px = data_of(x)
    cdef void *py = data_of(y)
    cdef void *ps = data_of(saved)
    cdef void *pw = data_of(work)
    cdef Py_ssize_t ldx = shape_size(&shape)
    cdef const void *result = NULL
    cdef const unsigned char *pm = mask_of(mask, n, tuple(x.shape[1:]))
    cdef const unsigned char *mask_out = NULL
    cdef int rc
    with nogil:
        if f64:
            rc = fusenn_layer_forward_f64(&desc, &shape, n, px, ldx, <double **>pp, <double *>py,
                                          ps, pw, pm, training, logits, nthreads, &result,
                                          &mask_out)
        else:
            rc = fusenn_layer_forward_f32(&desc, &shape, n, px, ldx, <float **>pp, <float *>py,
                                          ps, pw, pm, training, logits, nthreads, &result,
                                          &mask_out)
    layer_check(rc, spec)
    if result == px:  # the layer passes its input through
        y = x.reshape(y.shape)
    if mask_out != pm:  # the kind made a mask, in its saved bytes: a copy the caller keeps
        steps = x.shape[1]
        mask = numpy.frombuffer(saved, dtype=numpy.uint8, count=n * steps,
                                offset=<size_t>(mask_out - <const unsigned char *>ps)
                                ).reshape(n, steps).astype(bool)
    return y, saved, mask


def layer_backward(dict spec, x, y, dy, list params, saved, bint need_dx, bint logits=False,
                   mask=None, int nthreads=1):
    """The backward pass of layer_forward's call (mask: the one it was given),
    given dy = dL/dy: returns (dx or None, [gradient of each parameter]). dy is
    not modified."""
    dtype = numpy.dtype(params[0].dtype if params else y.dtype)
    cdef fusenn_layer desc
    cdef fusenn_shape shape, out
    cdef fusenn_shape pshapes[FUSENN_MAX_PARAMS]
    cdef size_t n_params, i
    cdef list keep = []
    memset(&desc, 0, sizeof(desc))
    describe(spec, tuple(x.shape[1:]), &desc, &shape, &out, &n_params, pshapes, dtype, keep)
    cdef void *pp[FUSENN_MAX_PARAMS]
    cdef void *pg[FUSENN_MAX_PARAMS]
    grads = [numpy.empty(shape_tuple(&pshapes[i]), dtype=dtype) for i in range(n_params)]
    for i in range(n_params):
        pp[i] = address(params[i], dtype, params[i].size, f"parameter {i}")
        pg[i] = data_of(grads[i])
    cdef size_t n = x.shape[0]
    cdef bint f64 = dtype == numpy.float64
    out_shape = (n, *shape_tuple(&out))
    if y.shape != out_shape or dy.shape != out_shape:
        raise ValueError(f"y and dy must have shape {out_shape}, got {y.shape} and {dy.shape}")
    for name, a in (("x", x), ("y", y), ("saved", saved)):
        if not a.flags.c_contiguous:
            raise ValueError(f"{name} must be C-contiguous")
    dy = numpy.array(dy, dtype=dtype, order="C")  # the kernels may work in place on it
    dx = numpy.empty(x.shape, dtype=dtype) if need_dx else None
    cdef size_t work_bytes = (fusenn_layer_work_bytes_f64(&desc, &shape, n) if f64 else
                              fusenn_layer_work_bytes_f32(&desc, &shape, n))
    work = numpy.empty(work_bytes, dtype=numpy.uint8)
    cdef const void *px = data_of(x)
    cdef const void *py = data_of(y)
    cdef void *pdy = data_of(dy)
    cdef void *pdx = data_of(dx) if need_dx else NULL
    cdef const void *ps = data_of(saved)
    cdef void *pw = data_of(work)
    cdef Py_ssize_t ldx = shape_size(&shape)
    cdef void *result = NULL
    cdef const unsigned char *pm = mask_of(mask, n, tuple(x.shape[1:]))
    cdef int rc
    with nogil:
        if f64:
            rc = fusenn_layer_backward_f64(&desc, &shape, n, px, ldx, <const double *>py,
                                           <double **>pp, <double **>pg, ps, pw, pm,
                                           <double *>pdy, <double *>pdx, logits, nthreads,
                                           &result)
        else:
            rc = fusenn_layer_backward_f32(&desc, &shape, n, px, ldx, <const float *>py,
                                           <float **>pp, <float **>pg, ps, pw, pm,
                                           <float *>pdy, <float *>pdx, logits, nthreads,
                                           &result)
    layer_check(rc, spec)
    if need_dx and result == pdy:  # computed in place
        dx = dy.reshape(x.shape)
    return dx, grads


cdef Py_ssize_t shape_size(fusenn_shape *s) noexcept:
    cdef Py_ssize_t size = 1
    cdef size_t i
    for i in range(s.rank):
        size *= s.dim[i]
    return size


cdef int layer_check(int rc, dict spec) except -1:
    if rc == FUSENN_ENOMEM:
        raise MemoryError(f"fusenn: out of memory in a {spec['kind']} layer")
    if rc != FUSENN_OK:
        raise ValueError(f"the {spec['kind']} layer refused its arguments")
    return 0


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

    network: a dict (built by fusenn._engine) with
      "input_shape": a sample's shape; "loss": a name of LOSS_IDS; "loss_param":
      Huber's delta; "params", "grads": the parameter and gradient arenas (flat,
      C-contiguous, of `dtype`); "state": the optimizer's 0-2 state arenas shaped
      like "params"; "layers": one spec per layer,
        {"kind": a name of kinds(), "attrs": {attribute: number or activation name},
         "param_offsets": [where each parameter tensor starts in the arenas],
         "seed": dropout's base seed, "counter": a uint64 array of one element that
         the engine advances (dropout), "buffers": persistent arrays (batchnorm's
         running mean and variance)}.
    The plan keeps every array alive. Return codes of the methods are those of
    csrc/fusenn.h.
    """
    cdef void *plan
    cdef readonly bint f64
    cdef int typenum    # NPY_FLOAT32 or NPY_FLOAT64
    cdef int x_typenum  # the input's: the dtype's, or NPY_INT64 for index input
    cdef Py_ssize_t d_in, out_size  # a sample's input and output sizes
    cdef Py_ssize_t out_rows        # the rows of the output's last dimension in a sample
    cdef readonly tuple input_shape, output_shape
    cdef fusenn_optimizer opt
    cdef list arrays

    def __cinit__(self):
        self.plan = NULL

    def __init__(self, dict network, object dtype):
        dtype = numpy.dtype(dtype)
        self.f64 = dtype == numpy.float64
        self.typenum = cnp.NPY_FLOAT64 if self.f64 else cnp.NPY_FLOAT32
        layers = network["layers"]
        params, grads, state = network["params"], network["grads"], list(network["state"])
        self.arrays = [params, grads, *state]
        cdef fusenn_network net
        memset(&net, 0, sizeof(net))
        net.n_layers = len(layers)
        if net.n_layers == 0:
            raise ValueError("a plan needs at least one layer")
        shape = tuple(network["input_shape"])
        if not 1 <= len(shape) <= FUSENN_MAX_RANK:
            raise ValueError(f"a sample has 1 to {FUSENN_MAX_RANK} dimensions, got {shape}")
        net.input.rank = len(shape)
        cdef Py_ssize_t i
        for i in range(len(shape)):
            net.input.dim[i] = shape[i]
        net.loss = <fusenn_loss>LOSS_IDS[network["loss"]]
        net.loss_param = network.get("loss_param", 0.0)
        net.arena_len = params.size
        net.params = address(params, dtype, params.size, "the parameter arena")
        net.grads = address(grads, dtype, params.size, "the gradient arena")
        if len(state) > 2:
            raise ValueError("an optimizer has at most 2 state arenas")
        for i in range(len(state)):
            net.state[i] = address(state[i], dtype, params.size, "an optimizer state arena")
        cdef fusenn_layer *descs = <fusenn_layer *>PyMem_Calloc(net.n_layers, sizeof(fusenn_layer))
        if descs == NULL:
            raise MemoryError()
        cdef size_t bad = 0
        cdef int rc
        try:
            for i in range(net.n_layers):
                lower_layer(layers[i], &descs[i], dtype, self.arrays)
            net.layers = descs
            descs_kind0 = descs[0].kind
            if self.f64:
                rc = fusenn_plan_create_f64(&net, <fusenn_plan_f64 **>&self.plan, &bad)
            else:
                rc = fusenn_plan_create_f32(&net, <fusenn_plan_f32 **>&self.plan, &bad)
        finally:
            PyMem_Free(descs)
        if rc == FUSENN_ENOMEM:
            raise MemoryError("fusenn: could not allocate the training plan")
        if rc != FUSENN_OK:
            where = (f"layer {bad} ({layers[bad]['kind']})" if bad < net.n_layers
                     else "the network")
            raise ValueError(f"the engine refused {where}: its attributes, input shape or "
                             f"parameters do not fit")
        cdef fusenn_shape out = (fusenn_plan_output_shape_f64(<fusenn_plan_f64 *>self.plan)
                                 if self.f64 else
                                 fusenn_plan_output_shape_f32(<fusenn_plan_f32 *>self.plan))
        self.output_shape = tuple(out.dim[i] for i in range(out.rank))
        self.out_size = 1
        for i in range(out.rank):
            self.out_size *= out.dim[i]
        self.out_rows = self.out_size // out.dim[out.rank - 1]
        self.d_in = 1
        for d in shape:
            self.d_in *= d
        self.input_shape = shape
        self.x_typenum = (cnp.NPY_INT64 if fusenn_kind_reads_indices(descs_kind0)
                          else self.typenum)

    def __dealloc__(self):
        if self.plan != NULL:
            if self.f64:
                fusenn_plan_destroy_f64(<fusenn_plan_f64 *>self.plan)
            else:
                fusenn_plan_destroy_f32(<fusenn_plan_f32 *>self.plan)

    def set_optimizer(self, dict config, int64_t steps):
        """The optimizer's settings (Optimizer.engine_config(): "kind", a name of
        OPTIMIZER_IDS, and the other fields of fusenn_optimizer, missing ones 0)
        and its step count."""
        known = {"kind", "lr", "momentum", "nesterov", "beta1", "beta2", "eps", "rho",
                 "weight_decay", "l2", "clipnorm", "global_clipnorm", "clipvalue"}
        unknown = set(config) - known
        if unknown:
            raise ValueError(f"unknown engine optimizer settings {sorted(unknown)}")
        get = config.get
        self.opt.kind = <fusenn_optimizer_kind>OPTIMIZER_IDS[config["kind"]]
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
        """Pointers into a batch the model has validated: X (n samples as rows of
        d_in), labels (int64, one per output row: n x rows) or T (n x out_size),
        sw (n weights) or None."""
        b.X = rows_ptr(X, self.x_typenum, -1, self.d_in, "X", &b.ldx)
        b.n = cnp.PyArray_DIMS(<cnp.ndarray>X)[0]
        b.labels = <const int64_t *>vector_ptr(labels, cnp.NPY_INT64, b.n * self.out_rows,
                                               "labels")
        b.T, b.ldt = NULL, 0
        if T is not None:
            b.T = rows_ptr(T, self.typenum, b.n, self.out_size, "T", &b.ldt)
        b.sw = vector_ptr(sw, self.typenum, b.n, "sample weights")
        return 0

    def train_batch(self, X, labels, T, sw, int nthreads, size_t chunks=1):
        """One step (sw: per-row weights or None): returns (code, loss, correct).
        The batch's values are checked first (FUSENN_EBADINPUT: nothing changed).
        chunks: the gradient as the ordered sum of that many chunks' (fusenn.h)."""
        cdef batch_t b
        self.batch(X, labels, T, sw, &b)
        cdef double loss = 0, correct = 0
        cdef int rc
        with nogil:
            if self.f64:
                rc = fusenn_plan_train_batch_f64(<fusenn_plan_f64 *>self.plan, b.n, b.X,
                                                 b.ldx, b.labels, <const double *>b.T, b.ldt,
                                                 <const double *>b.sw, chunks, &self.opt, &loss,
                                                 &correct, nthreads)
            else:
                rc = fusenn_plan_train_batch_f32(<fusenn_plan_f32 *>self.plan, b.n, b.X,
                                                 b.ldx, b.labels, <const float *>b.T, b.ldt,
                                                 <const float *>b.sw, chunks, &self.opt, &loss,
                                                 &correct, nthreads)
        return rc, loss, correct

    def train_epoch(self, X, labels, T, sw, const int64_t[::1] order, size_t batch_size,
                    size_t first_batch, size_t n_batches, int nthreads, size_t chunks=1):
        """Batches [first_batch, first_batch + n_batches) of an epoch in `order`:
        returns (code, last batch loss, sum of loss x rows, correct predictions).
        From the main thread, Ctrl-C stops it after a whole step: KeyboardInterrupt
        is raised (the plan's step count is that of the steps taken)."""
        cdef batch_t b
        self.batch(X, labels, T, sw, &b)
        cdef const int64_t *o = &order[0] if order.shape[0] > 0 else NULL
        cdef double loss = 0, loss_sum = 0, correct_sum = 0
        cdef size_t done = 0
        cdef int rc
        cdef bint interruptible = begin_interruptible()
        try:
            while True:
                with nogil:
                    if self.f64:
                        rc = fusenn_plan_train_epoch_f64(
                            <fusenn_plan_f64 *>self.plan, b.n, b.X, b.ldx, b.labels,
                            <const double *>b.T, b.ldt, <const double *>b.sw, o, batch_size,
                            chunks, first_batch, n_batches, &self.opt, &loss, &loss_sum,
                            &correct_sum, &done, interruptible, nthreads)
                    else:
                        rc = fusenn_plan_train_epoch_f32(
                            <fusenn_plan_f32 *>self.plan, b.n, b.X, b.ldx, b.labels,
                            <const float *>b.T, b.ldt, <const float *>b.sw, o, batch_size,
                            chunks, first_batch, n_batches, &self.opt, &loss, &loss_sum,
                            &correct_sum, &done, interruptible, nthreads)
                if rc != FUSENN_EINTERRUPTED:
                    return rc, loss, loss_sum, correct_sum
                raise_pending_signal()  # KeyboardInterrupt, unless a handler chose otherwise
                first_batch += done
                n_batches -= done
        finally:
            if interruptible:
                fusenn_interrupt_end()

    # ---- a step in parts (fusenn.distributed; fusenn.h) ------------------------------

    @property
    def record_len(self):
        """Doubles in a chunk's record (chunk_gradients, apply_step)."""
        return (fusenn_plan_record_len_f64(<fusenn_plan_f64 *>self.plan) if self.f64 else
                fusenn_plan_record_len_f32(<fusenn_plan_f32 *>self.plan))

    @property
    def grads(self):
        """The gradient arena the plan adds the chunks' gradients into and updates from."""
        return self.arrays[1]

    cdef void *arena(self, a, str what) except NULL:
        return address(a, self.arrays[1].dtype, self.arrays[1].size, what)

    def chunk_gradients(self, X, labels, T, sw, const int64_t[::1] batch, size_t chunks,
                        size_t c0, size_t c1, list grads, double[::1] records, int nthreads):
        """The gradients of chunks [c0, c1) of the batch X[batch] cut into `chunks`
        (the caller checked that batch indexes X): chunk c's into grads[c - c0]
        (arrays like the gradient arena; None: all into the gradient arena), added
        to the one before when it is the same array; each chunk's record into
        records[(c - c0) * record_len ...]. Returns the first failure's code."""
        cdef batch_t b
        self.batch(X, labels, T, sw, &b)
        cdef size_t len_ = self.record_len, i
        if c0 > c1 or c1 > chunks or chunks == 0:
            raise ValueError(f"chunks [{c0}, {c1}) of {chunks}")
        if <size_t>records.shape[0] < (c1 - c0) * len_:
            raise ValueError(f"records must hold {(c1 - c0) * len_} doubles")
        if grads is not None and <size_t>len(grads) != c1 - c0:
            raise ValueError(f"grads must list {c1 - c0} arrays")
        cdef void **to = NULL
        cdef int rc
        if grads is not None and c1 > c0:
            to = <void **>PyMem_Calloc(c1 - c0, sizeof(void *))
            if to == NULL:
                raise MemoryError()
        try:
            for i in range(c1 - c0 if grads is not None else 0):
                to[i] = self.arena(grads[i], "a chunk's gradient arena")
            with nogil:
                if self.f64:
                    rc = fusenn_plan_chunk_gradients_f64(
                        <fusenn_plan_f64 *>self.plan, b.X, b.ldx, b.labels, <const double *>b.T,
                        b.ldt, <const double *>b.sw, &batch[0] if batch.shape[0] else NULL,
                        batch.shape[0], chunks, c0, c1, <double **>to,
                        &records[0] if records.shape[0] else NULL, nthreads)
                else:
                    rc = fusenn_plan_chunk_gradients_f32(
                        <fusenn_plan_f32 *>self.plan, b.X, b.ldx, b.labels, <const float *>b.T,
                        b.ldt, <const float *>b.sw, &batch[0] if batch.shape[0] else NULL,
                        batch.shape[0], chunks, c0, c1, <float **>to,
                        &records[0] if records.shape[0] else NULL, nthreads)
        finally:
            PyMem_Free(to)
        return rc

    def apply_step(self, size_t n, size_t chunks, const double[::1] records, int nthreads):
        """The end of a step on n samples whose summed gradient is in the gradient
        arena, from the records of its `chunks` chunks: returns (code, loss, correct)."""
        if chunks == 0 or <size_t>records.shape[0] < chunks * self.record_len:
            raise ValueError(f"records must hold {chunks} chunks' records")
        cdef double loss = 0, correct = 0
        cdef int rc
        with nogil:
            if self.f64:
                rc = fusenn_plan_apply_step_f64(<fusenn_plan_f64 *>self.plan, n, chunks,
                                                &records[0], &self.opt, &loss, &correct,
                                                nthreads)
            else:
                rc = fusenn_plan_apply_step_f32(<fusenn_plan_f32 *>self.plan, n, chunks,
                                                &records[0], &self.opt, &loss, &correct,
                                                nthreads)
        return rc, loss, correct

    def predict_array(self, X, lock):
        """The outputs for X in a new array, when X is the common case (an aligned,
        C-contiguous ndarray of the plan's input dtype and sample shape, with one
        sample or more); else None, and nothing is done. None also when the
        engine refuses X's values or the outputs overflow: the caller then takes
        the checked path, which names the problem. Holds `lock` (a model's) for
        the call; RuntimeError if another thread holds it. One call from Python:
        predict's per-call cost at batch 1."""
        if not cnp.PyArray_Check(X):
            return None
        cdef cnp.ndarray x = <cnp.ndarray>X
        cdef int ndim = cnp.PyArray_NDIM(x)
        if (ndim != 1 + len(self.input_shape) or cnp.PyArray_TYPE(x) != self.x_typenum
                or not cnp.PyArray_IS_C_CONTIGUOUS(x) or not cnp.PyArray_ISBEHAVED_RO(x)):
            return None
        cdef cnp.npy_intp *shape = cnp.PyArray_DIMS(x)
        cdef Py_ssize_t i
        if shape[0] < 1:
            return None
        for i in range(1, ndim):
            if shape[i] != self.input_shape[i - 1]:
                return None
        cdef size_t n = shape[0]
        cdef cnp.npy_intp dims[FUSENN_MAX_RANK + 1]
        dims[0] = shape[0]
        for i in range(len(self.output_shape)):
            dims[i + 1] = self.output_shape[i]
        cdef cnp.ndarray out = cnp.PyArray_EMPTY(1 + len(self.output_shape), dims, self.typenum, 0)
        cdef const void *px = cnp.PyArray_DATA(x)
        cdef void *po = cnp.PyArray_DATA(out)
        cdef int nthreads = fusenn_num_threads(), rc
        if not lock.acquire(False):
            raise RuntimeError("this model is already in use by another thread; use one "
                               "model per thread, or serialise the calls")
        try:
            if n > SHORT_CALL_SAMPLES:  # long: interruptible, through the general path
                rc = self.predict(X.reshape(n, self.d_in), out.reshape(n, self.out_size),
                                  nthreads)
            else:
                with nogil:
                    if self.f64:
                        rc = fusenn_plan_predict_f64(<fusenn_plan_f64 *>self.plan, n, px,
                                                     self.d_in, <double *>po, self.out_size, 0,
                                                     nthreads)
                    else:
                        rc = fusenn_plan_predict_f32(<fusenn_plan_f32 *>self.plan, n, px,
                                                     self.d_in, <float *>po, self.out_size, 0,
                                                     nthreads)
        finally:
            lock.release()
        return out if rc == FUSENN_OK else None

    def predict(self, X, out, int nthreads):
        """Fill out (n x out_size, C-contiguous) with the network's outputs for X.
        A large call from the main thread stops on Ctrl-C (KeyboardInterrupt)."""
        cdef Py_ssize_t ldx, ldo
        cdef const void *x = rows_ptr(X, self.x_typenum, -1, self.d_in, "X", &ldx)
        cdef size_t n = cnp.PyArray_DIMS(<cnp.ndarray>X)[0]
        cdef void *o = <void *>rows_ptr(out, self.typenum, n, self.out_size, "out", &ldo)
        if not cnp.PyArray_ISWRITEABLE(<cnp.ndarray>out):
            raise ValueError("out must be writeable")
        cdef int rc
        cdef bint interruptible = n > SHORT_CALL_SAMPLES and begin_interruptible()
        try:
            while True:
                with nogil:
                    if self.f64:
                        rc = fusenn_plan_predict_f64(<fusenn_plan_f64 *>self.plan, n, x, ldx,
                                                     <double *>o, ldo, interruptible, nthreads)
                    else:
                        rc = fusenn_plan_predict_f32(<fusenn_plan_f32 *>self.plan, n, x, ldx,
                                                     <float *>o, ldo, interruptible, nthreads)
                if rc != FUSENN_EINTERRUPTED:
                    return rc
                raise_pending_signal()
        finally:
            if interruptible:
                fusenn_interrupt_end()

    def evaluate(self, X, labels, T, sw, int nthreads):
        """Returns (code, sum of loss x rows, correct predictions). A large call
        from the main thread stops on Ctrl-C (KeyboardInterrupt)."""
        cdef batch_t b
        self.batch(X, labels, T, sw, &b)
        cdef double loss_sum = 0, correct_sum = 0
        cdef int rc
        cdef bint interruptible = b.n > SHORT_CALL_SAMPLES and begin_interruptible()
        try:
            while True:
                loss_sum = correct_sum = 0
                with nogil:
                    if self.f64:
                        rc = fusenn_plan_evaluate_f64(
                            <fusenn_plan_f64 *>self.plan, b.n, b.X, b.ldx, b.labels,
                            <const double *>b.T, b.ldt, <const double *>b.sw, &loss_sum,
                            &correct_sum, interruptible, nthreads)
                    else:
                        rc = fusenn_plan_evaluate_f32(
                            <fusenn_plan_f32 *>self.plan, b.n, b.X, b.ldx, b.labels,
                            <const float *>b.T, b.ldt, <const float *>b.sw, &loss_sum,
                            &correct_sum, interruptible, nthreads)
                if rc != FUSENN_EINTERRUPTED:
                    return rc, loss_sum, correct_sum
                raise_pending_signal()
        finally:
            if interruptible:
                fusenn_interrupt_end()
