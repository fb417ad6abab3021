"""The compiled backend: fusenn's C kernels behind validated NumPy functions.

Every function has the same name, signature and math as its twin in
``fusenn.reference`` (the NumPy oracle), so either module can serve as a
model's backend. Each one checks its arguments, allocates the outputs and calls
one binding in ``fusenn._kernels`` (src/fusenn/_kernels.pyx), which releases the
GIL and calls the C kernel of the same name in csrc/ (for example
``dense_forward`` -> ``fusenn_dense_forward_f32`` in csrc/dense.c).
"""

import numpy as np

from . import _kernels
from ._common import ACTIVATIONS, ELU_ALPHA, LEAKY_RELU_SLOPE, NEEDS_Z, finite_number, huber_delta
from ._threads import get_num_threads

__all__ = [
    "ACTIVATIONS", "NEEDS_Z", "LEAKY_RELU_SLOPE", "ELU_ALPHA", "matmul", "activation_forward",
    "activation_backward", "dense_forward", "dense_backward", "softmax_cross_entropy",
    "sigmoid_binary_cross_entropy", "mse", "mae", "huber", "poisson", "sgd_update",
    "adam_update", "rmsprop_update", "adagrad_update", "sum_squares", "grad_transform",
    "dropout_forward", "dropout_backward", "dropout_seed", "batchnorm_forward_train",
    "batchnorm_forward_infer", "batchnorm_backward", "global_pool_forward",
    "global_pool_backward", "conv2d_forward", "conv2d_backward", "pool2d_forward",
    "pool2d_backward", "embedding_forward", "embedding_backward", "simple_rnn_forward",
    "simple_rnn_backward", "gru_forward", "gru_backward", "lstm_forward", "lstm_backward",
]

_ACTIVATION_IDS = _kernels.ACTIVATION_IDS  # name -> fusenn_activation (the binding's table)
_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _activation_id(activation):
    try:
        return _ACTIVATION_IDS[activation]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown activation {activation!r}; expected one of {', '.join(ACTIVATIONS)}"
        ) from None


def _float_array(a, name, ndim, dtype=None):
    """`a` as an ndarray of `ndim` dims and a float dtype (`dtype` if given)."""
    a = np.asarray(a)
    if a.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got {a.dtype}")
    if dtype is not None and a.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype} like the other operands, got {a.dtype}")
    if a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {a.shape}")
    if not a.flags.aligned:  # strides must be whole elements for the C kernels
        a = a.copy()
    return a


def _expect_shape(a, name, shape):
    if a.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {a.shape}")


def contiguous_rows(a):
    """`a` with contiguous rows (unit column stride, as the C kernels read them),
    copying only if needed."""
    if a.ndim == 2 and a.shape[1] > 1 and a.strides[1] != a.itemsize:
        return np.ascontiguousarray(a)
    return a


def _matmul_checked(a, b, trans_a, trans_b):
    """matmul for any input other than two float arrays of one dtype and matching
    sizes, which _kernels.matmul takes straight to C."""
    a = _float_array(a, "a", 2)
    b = _float_array(b, "b", 2, a.dtype)
    A = a.T if trans_a else a
    B = b.T if trans_b else b
    if A.shape[1] != B.shape[0]:
        raise ValueError(
            f"matmul: op(a) has shape {A.shape} and op(b) has shape {B.shape}; "
            f"op(a).shape[1] must equal op(b).shape[0]"
        )
    c = np.empty((A.shape[0], B.shape[1]), dtype=a.dtype)
    _kernels.gemm(1.0, A, B, 0.0, c, get_num_threads())
    return c


_kernels.set_matmul_checked(_matmul_checked)
matmul = _kernels.matmul  # op(a) @ op(b); the common case checks and calls C in Cython


def activation_forward(z, activation):
    act = _activation_id(activation)
    z = contiguous_rows(_float_array(z, "z", 2))
    a = np.empty_like(z, order="C")
    _kernels.activation_forward(act, z, a, get_num_threads())
    return a


def _pre_activation(z, activation, shape, dtype, what="the pre-activation"):
    """z checked like the output it produced (None allowed unless NEEDS_Z)."""
    if z is None:
        if activation in NEEDS_Z:
            raise ValueError(f"z ({what}) is required for activation {activation!r}: "
                             f"its derivative is not a function of the output")
        return None
    z = contiguous_rows(_float_array(z, "z", 2, dtype))
    _expect_shape(z, "z", shape)
    return z


def activation_backward(a, da, activation, z=None):
    """dz = da * act'(z), through the output a = act(z) or, for the activations
    in NEEDS_Z (which require it), through the pre-activation z."""
    act = _activation_id(activation)
    a = contiguous_rows(_float_array(a, "a", 2))
    da = contiguous_rows(_float_array(da, "da", 2, a.dtype))
    _expect_shape(da, "da", a.shape)
    z = _pre_activation(z, activation, a.shape, a.dtype)
    dz = np.empty_like(a, order="C")
    _kernels.activation_backward(act, a, da, dz, z, get_num_threads())
    return dz


def _check_dense(x, w, b):
    x = _float_array(x, "x", 2)
    w = _float_array(w, "w", 2, x.dtype)
    b = _float_array(b, "b", 1, x.dtype)
    if w.shape[0] != x.shape[1]:
        raise ValueError(f"w must have shape ({x.shape[1]}, units) to match x {x.shape}, got {w.shape}")
    _expect_shape(b, "b", (w.shape[1],))
    return x, w, np.ascontiguousarray(b)


def dense_forward(x, w, b, activation):
    """act(x @ w + b), with the bias and activation fused into GEMM's store."""
    act = _activation_id(activation)
    x, w, b = _check_dense(x, w, b)
    y = np.empty((x.shape[0], w.shape[1]), dtype=x.dtype)
    _kernels.dense_forward(x, w, b, act, y, get_num_threads())
    return y


def dense_backward(x, w, y, dy, activation, need_dx=True, z=None):
    """(dw, db, dx) of y = act(x @ w + b) given dy = dL/dy; dx is None unless need_dx.

    Activations in NEEDS_Z require z, the pre-activation x @ w + b: their dz
    comes from activation_backward, then the identity layer backward runs on it.
    """
    act = _activation_id(activation)
    x = _float_array(x, "x", 2)
    w = _float_array(w, "w", 2, x.dtype)
    if w.shape[0] != x.shape[1]:
        raise ValueError(f"w must have shape ({x.shape[1]}, units) to match x {x.shape}, got {w.shape}")
    out_shape = (x.shape[0], w.shape[1])
    y = contiguous_rows(_float_array(y, "y", 2, x.dtype))
    dy = contiguous_rows(_float_array(dy, "dy", 2, x.dtype))
    _expect_shape(y, "y", out_shape)
    _expect_shape(dy, "dy", out_shape)
    z = _pre_activation(z, activation, out_shape, x.dtype, "the pre-activation x @ w + b")
    dz = np.empty(out_shape, dtype=x.dtype)
    dw = np.empty(w.shape, dtype=x.dtype)
    db = np.empty(w.shape[1], dtype=x.dtype)
    dx = np.empty(x.shape, dtype=x.dtype) if need_dx else None
    nthreads = get_num_threads()
    if activation in NEEDS_Z:
        # the C layer refuses these (FUSENN_EINVAL): dz first, then identity in place on it
        _kernels.activation_backward(act, y, dy, dz, z, nthreads)
        dy, act = dz, _ACTIVATION_IDS["identity"]
    _kernels.dense_backward(x, w, y, dy, act, dz, dw, db, dx, nthreads)
    return dw, db, dx


def _nonempty(a, name):
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {a.shape}): a loss needs at least one "
                         f"sample and one output")
    return a


def count_nonfinite(x):
    """The number of NaN and infinite values in a float32/float64 array of any shape
    (one pass in C, no temporary as big as x; the model's input checks)."""
    rows = x.reshape(len(x), -1) if x.ndim > 2 else (x.reshape(1, -1) if x.ndim < 2 else x)
    return _kernels.count_nonfinite(contiguous_rows(rows), get_num_threads())


def shuffle(order, seed):
    """Fill the int64 array `order` with the permutation of its indices drawn from
    `seed` (csrc/shuffle.c): the sample order of an epoch of fit, on both backends."""
    _kernels.shuffle(order, seed)


def labels_in_range(labels, k):
    """Integer labels as a contiguous int64 array, and the first one outside
    [0, k) (None if all are inside), in one pass (shared by the model's checks)."""
    if labels.dtype.kind == "u" and labels.size and labels.max() > np.iinfo(np.int64).max:
        return None, labels.max()  # would wrap to a negative int64
    labels = np.ascontiguousarray(labels, dtype=np.int64)
    bad = _kernels.first_label_out_of_range(labels, k)
    return labels, (None if bad < 0 else labels[bad])


def _labels(labels, n, k):
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise TypeError(f"labels must be integer class indices, got dtype {labels.dtype}")
    _expect_shape(labels, "labels", (n,))
    labels, bad = labels_in_range(labels, k)
    if bad is not None:
        raise ValueError(f"labels must lie in [0, {k}), found {bad}")
    return labels


def _sample_weight(sample_weight, n, dtype):
    """Per-sample weights as a contiguous array of `dtype` and shape (n,), or None."""
    if sample_weight is None:
        return None
    sw = np.asarray(sample_weight)
    if sw.dtype.kind not in "fiu":
        raise TypeError(f"sample_weight must hold real numbers, got dtype {sw.dtype}")
    if sw.shape != (n,):
        raise ValueError(f"sample_weight must have shape ({n},) (one weight per sample), "
                         f"got {sw.shape}")
    with np.errstate(over="ignore"):  # too large for dtype: inf, rejected below
        sw = np.require(sw, dtype=dtype, requirements=["C_CONTIGUOUS", "ALIGNED"])
    if not np.all(np.isfinite(sw)):
        raise ValueError(f"sample_weight must be finite (and representable in {dtype})")
    if n and sw.min() < 0:
        raise ValueError(f"sample_weight must be >= 0, found {sw[sw < 0][0]}")
    return sw


def softmax_cross_entropy(z, labels, sample_weight=None):
    """(loss, p, dz) for logits z and integer labels: the cross-entropy of softmax(z),
    (1/n) sum_i sw_i loss_i with sample_weight sw (all ones when None)."""
    z = _nonempty(contiguous_rows(_float_array(z, "z", 2)), "z")
    labels = _labels(labels, *z.shape)
    sw = _sample_weight(sample_weight, z.shape[0], z.dtype)
    p = np.empty_like(z, order="C")
    dz = np.empty_like(z, order="C")
    loss = _kernels.softmax_cross_entropy(z, labels, sw, p, dz, get_num_threads())
    return loss, p, dz


def sigmoid_binary_cross_entropy(z, t, sample_weight=None):
    """(loss, p, dz) for logits z and targets t in [0, 1]: mean binary cross-entropy,
    row i weighted by sample_weight[i]."""
    z = _nonempty(contiguous_rows(_float_array(z, "z", 2)), "z")
    t = contiguous_rows(_float_array(t, "t", 2, z.dtype))
    _expect_shape(t, "t", z.shape)
    sw = _sample_weight(sample_weight, z.shape[0], z.dtype)
    p = np.empty_like(z, order="C")
    dz = np.empty_like(z, order="C")
    loss = _kernels.sigmoid_binary_cross_entropy(z, t, sw, p, dz, get_num_threads())
    return loss, p, dz


def _regression_operands(a, t, sample_weight):
    a = _nonempty(contiguous_rows(_float_array(a, "a", 2)), "a")
    t = contiguous_rows(_float_array(t, "t", 2, a.dtype))
    _expect_shape(t, "t", a.shape)
    sw = _sample_weight(sample_weight, a.shape[0], a.dtype)
    return a, t, sw, np.empty_like(a, order="C")


def mse(a, t, sample_weight=None):
    """(loss, da): mean squared error over all elements and its gradient, row i
    weighted by sample_weight[i]."""
    a, t, sw, da = _regression_operands(a, t, sample_weight)
    loss = _kernels.mse(a, t, sw, da, get_num_threads())
    return loss, da


def mae(a, t, sample_weight=None):
    """(loss, da): mean absolute error over all elements and its (sub)gradient
    sign(a - t) / (n k), row i weighted by sample_weight[i]."""
    a, t, sw, da = _regression_operands(a, t, sample_weight)
    loss = _kernels.mae(a, t, sw, da, get_num_threads())
    return loss, da


def huber(a, t, delta=1.0, sample_weight=None):
    """(loss, da): mean Huber loss (quadratic for |a - t| <= delta, linear beyond)
    and its gradient clip(a - t, -delta, delta) / (n k), row i weighted by
    sample_weight[i]."""
    delta = huber_delta(delta)
    a, t, sw, da = _regression_operands(a, t, sample_weight)
    loss = _kernels.huber(a, t, delta, sw, da, get_num_threads())
    return loss, da


def poisson(a, t, sample_weight=None):
    """(loss, da): mean Poisson negative log-likelihood of log-rates a for counts
    t >= 0, exp(a) - t a over all elements, and its gradient (exp(a) - t) / (n k),
    row i weighted by sample_weight[i]."""
    a, t, sw, da = _regression_operands(a, t, sample_weight)
    loss = _kernels.poisson(a, t, sw, da, get_num_threads())
    return loss, da


def _state(a, name, like):
    """A flat, writable view of a parameter or optimizer array shaped like `like`."""
    if not isinstance(like, np.ndarray) or like.dtype not in _FLOAT_DTYPES:
        raise TypeError("w must be a float32 or float64 ndarray")
    if not isinstance(a, np.ndarray) or a.dtype != like.dtype:
        raise TypeError(f"{name} must be an ndarray of dtype {like.dtype} like w, "
                        f"got {getattr(a, 'dtype', type(a).__name__)}")
    _expect_shape(a, name, like.shape)
    if not a.flags.c_contiguous or not a.flags.writeable:
        raise ValueError(f"{name} must be C-contiguous and writeable (it is updated in place)")
    return a.reshape(-1)


def _grad(g, w):
    """The gradient of `w` as a flat contiguous array."""
    g = _float_array(g, "g", w.ndim, w.dtype)
    _expect_shape(g, "g", w.shape)
    return np.ascontiguousarray(g).reshape(-1)


def _prev(prev, w):
    return None if prev is None else _state(prev, "prev", w)


def sgd_update(w, g, v, lr, momentum=0.0, nesterov=False, prev=None):
    """In place: v = momentum v + g; w -= lr v (Nesterov: w -= lr (g + momentum v)).

    Returns the number of non-finite updated weights; prev (may be g) receives
    the weights from before the step.
    """
    lr, momentum = finite_number(lr, "lr"), finite_number(momentum, "momentum")
    wf = _state(w, "w", w)
    gf = _grad(g, w)
    vf = _state(v, "v", w) if momentum != 0 else None
    return _kernels.sgd_update(wf, gf, vf, lr, momentum, bool(nesterov), _prev(prev, w),
                               get_num_threads())


def adam_update(w, g, m, v, t, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
                prev=None):
    """In place, step t >= 1: bias-corrected Adam with eps added after the square root;
    weight_decay > 0 first decays w by 1 - lr * weight_decay (AdamW).

    Returns and keeps prev as sgd_update does.
    """
    if isinstance(t, bool) or not isinstance(t, (int, np.integer)):
        raise TypeError(f"t (the step count) must be an int, got {t!r}")
    if not 1 <= t < 2**62:
        raise ValueError(f"t (the step count) must be >= 1, got {t}")
    wf = _state(w, "w", w)
    gf = _grad(g, w)
    return _kernels.adam_update(wf, gf, _state(m, "m", w), _state(v, "v", w), int(t),
                                finite_number(lr, "lr"), finite_number(beta1, "beta1"),
                                finite_number(beta2, "beta2"), finite_number(eps, "eps"),
                                finite_number(weight_decay, "weight_decay"),
                                _prev(prev, w), get_num_threads())


# ---- dropout ----------------------------------------------------------------------------

def _rate(rate):
    rate = finite_number(rate, "rate")
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"rate (the fraction of inputs dropped) must be in [0, 1), got {rate}")
    return rate


def _uint64(value, name):
    """A seed or counter as a Python int in [0, 2**64)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {value!r}")
    value = int(value)
    if not 0 <= value < 2**64:
        raise ValueError(f"{name} must be an int in [0, 2**64), got "
                         f"{value if value.bit_length() < 200 else 'a huge int'}")
    return value


def dropout_forward(x, rate, seed):
    """Inverted dropout of x (n, d): elements dropped with probability rate (a
    function of seed and position only), the kept ones scaled by 1 / (1 - rate)."""
    x = contiguous_rows(_float_array(x, "x", 2))
    rate, seed = _rate(rate), _uint64(seed, "seed")
    y = np.empty(x.shape, dtype=x.dtype)
    _kernels.dropout_forward(x, rate, seed, y, get_num_threads())
    return y


def dropout_backward(dy, rate, seed):
    """dx = dy * mask / (1 - rate), with the forward's mask for the same rate and seed."""
    dy = contiguous_rows(_float_array(dy, "dy", 2))
    rate, seed = _rate(rate), _uint64(seed, "seed")
    dx = np.empty(dy.shape, dtype=dy.dtype)
    _kernels.dropout_backward(dy, rate, seed, dx, get_num_threads())
    return dx


def dropout_seed(base, step):
    """The mask seed (an int in [0, 2**64)) of training step `step` of a dropout
    layer seeded with `base`."""
    return int(_kernels.dropout_seed(_uint64(base, "base"), _uint64(step, "step")))


# ---- batch normalisation ------------------------------------------------------------------

def _features(a, name, x):
    """A per-feature vector (gamma, beta, mean, ...) of x's dtype and length x.shape[1]."""
    a = _float_array(a, name, 1, x.dtype)
    _expect_shape(a, name, (x.shape[1],))
    return np.ascontiguousarray(a)


def _batch(x, name="x"):
    x = contiguous_rows(_float_array(x, name, 2))
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty (shape {x.shape}): batch statistics need at "
                         f"least one sample")
    return x


def _running_stats(running_mean, running_var, x):
    """The running statistics the training forward updates in place: both None, or
    writeable, aligned, C-contiguous vectors of x's dtype and length x.shape[1]."""
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must both be arrays or both be None")
    if running_mean is None:
        return None, None
    for a, name in ((running_mean, "running_mean"), (running_var, "running_var")):
        if not isinstance(a, np.ndarray) or a.dtype != x.dtype:
            raise TypeError(f"{name} must be an ndarray of dtype {x.dtype} like x (it is "
                            f"updated in place), got {getattr(a, 'dtype', type(a).__name__)}")
        _expect_shape(a, name, (x.shape[1],))
        if not (a.flags.c_contiguous and a.flags.writeable and a.flags.aligned):
            raise ValueError(f"{name} must be C-contiguous and writeable (it is updated in "
                             f"place)")
    return running_mean, running_var


def _eps(eps):
    eps = finite_number(eps, "eps")
    if eps <= 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    return eps


def batchnorm_forward_train(x, gamma, beta, running_mean, running_var, momentum=0.99,
                            eps=1e-3):
    """Training-mode batch normalisation of x (n, d) per feature: returns (y, mean,
    invstd) and, unless they are None, updates running_mean and running_var in place:
    r = momentum r + (1 - momentum) batch (biased variance, as Keras)."""
    x = _batch(x)
    gamma, beta = _features(gamma, "gamma", x), _features(beta, "beta", x)
    momentum = finite_number(momentum, "momentum")
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    eps = _eps(eps)
    running_mean, running_var = _running_stats(running_mean, running_var, x)
    y = np.empty(x.shape, dtype=x.dtype)
    mean = np.empty(x.shape[1], dtype=x.dtype)
    invstd = np.empty(x.shape[1], dtype=x.dtype)
    _kernels.batchnorm_forward_train(x, gamma, beta, eps, momentum, running_mean, running_var,
                                     mean, invstd, y, get_num_threads())
    return y, mean, invstd


def batchnorm_forward_infer(x, gamma, beta, running_mean, running_var, eps=1e-3):
    """Inference-mode batch normalisation with the running statistics:
    y = gamma (x - running_mean) / sqrt(running_var + eps) + beta."""
    x = contiguous_rows(_float_array(x, "x", 2))
    gamma, beta = _features(gamma, "gamma", x), _features(beta, "beta", x)
    running_mean = _features(running_mean, "running_mean", x)
    running_var = _features(running_var, "running_var", x)
    if running_var.size and not running_var.min() >= 0:  # also catches NaN
        raise ValueError("running_var must be >= 0 (a variance)")
    eps = _eps(eps)
    y = np.empty(x.shape, dtype=x.dtype)
    _kernels.batchnorm_forward_infer(x, gamma, beta, running_mean, running_var, eps, y,
                                     get_num_threads())
    return y


def batchnorm_backward(x, dy, gamma, mean, invstd, need_dx=True):
    """(dx, dgamma, dbeta) of the training forward given dy = dL/dy and its saved mean
    and invstd; dx is None unless need_dx."""
    x = _batch(x)
    dy = contiguous_rows(_float_array(dy, "dy", 2, x.dtype))
    _expect_shape(dy, "dy", x.shape)
    gamma = _features(gamma, "gamma", x)
    mean, invstd = _features(mean, "mean", x), _features(invstd, "invstd", x)
    dgamma = np.empty(x.shape[1], dtype=x.dtype)
    dbeta = np.empty(x.shape[1], dtype=x.dtype)
    dx = np.empty(x.shape, dtype=x.dtype) if need_dx else None
    _kernels.batchnorm_backward(x, dy, gamma, mean, invstd, dx, dgamma, dbeta,
                                get_num_threads())
    return dx, dgamma, dbeta
def rmsprop_update(w, g, v, lr, rho=0.9, eps=1e-7, prev=None):
    """In place: v = rho v + (1 - rho) g^2; w -= lr g / (sqrt(v) + eps).

    Returns and keeps prev as sgd_update does.
    """
    lr, rho, eps = finite_number(lr, "lr"), finite_number(rho, "rho"), finite_number(eps, "eps")
    wf = _state(w, "w", w)
    gf = _grad(g, w)
    return _kernels.rmsprop_update(wf, gf, _state(v, "v", w), lr, rho, eps, _prev(prev, w),
                                   get_num_threads())


def adagrad_update(w, g, v, lr, eps=1e-10, prev=None):
    """In place: v += g^2; w -= lr g / (sqrt(v) + eps).

    Returns and keeps prev as sgd_update does.
    """
    lr, eps = finite_number(lr, "lr"), finite_number(eps, "eps")
    wf = _state(w, "w", w)
    gf = _grad(g, w)
    return _kernels.adagrad_update(wf, gf, _state(v, "v", w), lr, eps, _prev(prev, w),
                                   get_num_threads())


def sum_squares(x):
    """sum(x**2) accumulated in float64, the same bits for any thread count."""
    x = np.asarray(x)
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"x must be float32 or float64, got {x.dtype}")
    return _kernels.sum_squares(np.ascontiguousarray(x).reshape(-1), get_num_threads())


def grad_transform(g, w, l2=0.0, scale=1.0, clipvalue=0.0):
    """In place on g: g = clip(scale * (g + l2 * w), -clipvalue, clipvalue).

    w is only read when l2 != 0 (it may be None then); clipvalue <= 0 means
    no clipping. Returns None.
    """
    l2, scale = finite_number(l2, "l2"), finite_number(scale, "scale")
    clipvalue = finite_number(clipvalue, "clipvalue")
    if not isinstance(g, np.ndarray) or g.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"g must be a float32 or float64 ndarray, got "
                        f"{getattr(g, 'dtype', type(g).__name__)}")
    gf = _state(g, "g", g)
    wf = None
    if l2 != 0:
        if w is None:
            raise ValueError("w is needed when l2 != 0 (the penalty's gradient is l2 * w)")
        w = _float_array(w, "w", g.ndim, g.dtype)
        _expect_shape(w, "w", g.shape)
        wf = np.ascontiguousarray(w).reshape(-1)
    _kernels.grad_transform(gf, wf, l2, scale, clipvalue, get_num_threads())


# ---- layer kinds, through the engine's record of each (csrc/layers/<kind>.c) --------------
# _kernels.layer_forward / layer_backward run one layer of a kind exactly as the
# training engine does: fusenn_layer_forward / _backward in csrc/plan.c.

def _pool_mode(mode):
    if not isinstance(mode, str) or mode not in ("max", "avg"):
        raise ValueError(f"mode must be 'max' or 'avg', got {mode!r}")
    return mode


def _samples(x, name, min_rank=2):
    """x as a C-contiguous float array of at least `min_rank` dims with samples."""
    x = np.asarray(x)
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got {x.dtype}")
    if x.ndim < min_rank or x.ndim > 5 or 0 in x.shape:
        raise ValueError(f"{name} must be a non-empty batch of samples with {min_rank - 1} to 4 "
                         f"dimensions each, got shape {x.shape}")
    return np.ascontiguousarray(x)


def _mask(mask, x):
    """A time-step mask for the sequences x (n, steps, ...) as a C-contiguous bool
    array, or None."""
    if mask is None:
        return None
    mask = np.asarray(mask)
    if mask.dtype != bool or mask.shape != x.shape[:2]:
        raise ValueError(f"mask must be a bool array of shape {x.shape[:2]} (samples, steps), "
                         f"got {mask.dtype} {mask.shape}")
    return np.ascontiguousarray(mask)


def global_pool_forward(x, mode="avg", mask=None):
    """The mean (mode "avg") or maximum ("max") of every channel over all positions
    of a sample: x (n, ..., C) -> (n, C) (csrc/layers/global_pool.c); with a mask
    (n, steps) of sequences (n, steps, C), over the real steps only."""
    x = _samples(x, "x", 3)
    spec = {"kind": "global_pool", "attrs": {"mode": _pool_mode(mode)}}
    return _kernels.layer_forward(spec, x, [], mask=_mask(mask, x),
                                  nthreads=get_num_threads())[0]


def global_pool_backward(x, dy, mode="avg", mask=None):
    """dx of global_pool_forward given dy = dL/dy (n, C)."""
    x = _samples(x, "x", 3)
    dy = _float_array(dy, "dy", 2, x.dtype)
    _expect_shape(dy, "dy", (x.shape[0], x.shape[-1]))
    spec = {"kind": "global_pool", "attrs": {"mode": _pool_mode(mode)}}
    y = np.empty(dy.shape, dtype=x.dtype)  # not read by this kind
    return _kernels.layer_backward(spec, x, y, dy, [], np.empty(0, np.uint8), True,
                                   mask=_mask(mask, x), nthreads=get_num_threads())[0]


# ---- convolution and pooling (csrc/layers/conv2d.c, pool2d.c) -----------------------------

def _int_pair(value, name, minimum):
    """A pair of ints >= minimum, or an error naming the argument."""
    try:
        pair = tuple(value)
    except TypeError:
        pair = None
    if (pair is None or len(pair) != 2 or not all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) and minimum <= v <= 2**30
            for v in pair)):
        raise ValueError(f"{name} must be a pair of ints >= {minimum} (height, width), got "
                         f"{value!r}")
    return tuple(int(v) for v in pair)


def _pads(padding):
    """((top, bottom), (left, right)) as ints >= 0, or an error naming padding."""
    try:
        pads = tuple(tuple(p) for p in padding)
    except TypeError:
        pads = None
    if pads is None or len(pads) != 2 or not all(len(p) == 2 for p in pads):
        raise ValueError(f"padding must be ((top, bottom), (left, right)), got {padding!r}")
    return tuple(_int_pair(p, "padding", 0) for p in pads)


def _images(x, name):
    """x as a C-contiguous float array of images (n, height, width, channels)."""
    x = np.asarray(x)
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got {x.dtype}")
    if x.ndim != 4 or 0 in x.shape:
        raise ValueError(f"{name} must be a non-empty batch of images (n, height, width, "
                         f"channels), got shape {x.shape}")
    return np.ascontiguousarray(x)


def _window_size(sizes, kernel, strides, padding, dilation, what):
    """The output height and width, or a ValueError when the window does not fit."""
    out = []
    for size, k, s, p, d in zip(sizes, kernel, strides, padding, dilation):
        span = d * (k - 1) + 1
        if size + p[0] + p[1] < span:
            raise ValueError(f"the {what} ({kernel[0]}x{kernel[1]}, dilation "
                             f"{dilation[0]}x{dilation[1]}) is larger than the padded input "
                             f"({sizes[0]}x{sizes[1]} with padding {padding})")
        out.append((size + p[0] + p[1] - span) // s + 1)
    return tuple(out)


def _conv_spec(x, w, strides, padding, dilation, activation, bias):
    """The conv2d layer spec for images x and kernel w, and the output shape."""
    if w.shape[2] != x.shape[3] or 0 in w.shape:
        raise ValueError(f"w must have shape (kernel_h, kernel_w, {x.shape[3]}, filters) for "
                         f"x of shape {x.shape}, got {w.shape}")
    strides, dilation = _int_pair(strides, "strides", 1), _int_pair(dilation, "dilation", 1)
    padding = _pads(padding)
    _activation_id(activation)  # checked here; the binding maps the name
    out_hw = _window_size(x.shape[1:3], w.shape[:2], strides, padding, dilation, "kernel")
    (top, bottom), (left, right) = padding
    spec = {"kind": "conv2d", "attrs": {
        "filters": w.shape[3], "kernel_h": w.shape[0], "kernel_w": w.shape[1],
        "stride_h": strides[0], "stride_w": strides[1], "dilation_h": dilation[0],
        "dilation_w": dilation[1], "pad_top": top, "pad_bottom": bottom, "pad_left": left,
        "pad_right": right, "use_bias": int(bias), "activation": activation}}
    return spec, (x.shape[0], *out_hw, w.shape[3])


def conv2d_forward(x, w, b, strides=(1, 1), padding=((0, 0), (0, 0)), dilation=(1, 1),
                   activation="identity"):
    """y = act(conv(x, w) + b): x (n, H, W, Cin), w (KH, KW, Cin, Cout) as Keras's kernel,
    b (Cout,) or None; y (n, OH, OW, Cout). strides (sh, sw), padding ((top, bottom),
    (left, right)), dilation (dh, dw) (csrc/layers/conv2d.c)."""
    x = _images(x, "x")
    w = np.ascontiguousarray(_float_array(w, "w", 4, x.dtype))
    params = [w]
    if b is not None:
        b = _float_array(b, "b", 1, x.dtype)
        _expect_shape(b, "b", (w.shape[3],))
        params.append(np.ascontiguousarray(b))
    spec, _ = _conv_spec(x, w, strides, padding, dilation, activation, b is not None)
    return _kernels.layer_forward(spec, x, params, nthreads=get_num_threads())[0]


def conv2d_backward(x, w, y, dy, strides=(1, 1), padding=((0, 0), (0, 0)), dilation=(1, 1),
                    activation="identity", need_dx=True, z=None, bias=True):
    """Gradients of conv2d_forward given dy = dL/dy: (dw, db, dx); db is None unless
    bias, dx None unless need_dx. Activations in NEEDS_Z require z, the pre-activation."""
    x = _images(x, "x")
    w = np.ascontiguousarray(_float_array(w, "w", 4, x.dtype))
    spec, out_shape = _conv_spec(x, w, strides, padding, dilation, activation, bias)
    y = np.ascontiguousarray(_float_array(y, "y", 4, x.dtype))
    _expect_shape(y, "y", out_shape)
    dy = _float_array(dy, "dy", 4, x.dtype)
    _expect_shape(dy, "dy", out_shape)
    saved = np.empty(0, np.uint8)
    if activation in NEEDS_Z:
        if z is None:
            raise ValueError(f"z (the pre-activation) is required for activation "
                             f"{activation!r}: its derivative is not a function of the output")
        z = np.ascontiguousarray(_float_array(z, "z", 4, x.dtype))
        _expect_shape(z, "z", out_shape)
        saved = z.reshape(-1).view(np.uint8)
    params = [w, np.zeros(w.shape[3], x.dtype)] if bias else [w]  # the bias is not read
    dx, grads = _kernels.layer_backward(spec, x, y, dy, params, saved, bool(need_dx),
                                        nthreads=get_num_threads())
    return grads[0], grads[1] if bias else None, dx


def _pool_spec(shape, pool_size, strides, padding, mode):
    """The pool2d layer spec for images of `shape`, and the output shape."""
    pool_size, strides = _int_pair(pool_size, "pool_size", 1), _int_pair(strides, "strides", 1)
    padding = _pads(padding)
    mode = _pool_mode(mode)
    if any(p >= k for pads, k in zip(padding, pool_size) for p in pads):
        raise ValueError(f"padding must be smaller than pool_size {pool_size} on each side "
                         f"(a window wholly in the padding pools nothing), got {padding}")
    out_hw = _window_size(shape[1:3], pool_size, strides, padding, (1, 1), "pool window")
    (top, bottom), (left, right) = padding
    spec = {"kind": "pool2d", "attrs": {
        "mode": mode, "pool_h": pool_size[0], "pool_w": pool_size[1], "stride_h": strides[0],
        "stride_w": strides[1], "pad_top": top, "pad_bottom": bottom, "pad_left": left,
        "pad_right": right}}
    return spec, (shape[0], *out_hw, shape[3])


def pool2d_forward(x, pool_size=(2, 2), strides=(2, 2), padding=((0, 0), (0, 0)), mode="max"):
    """Max or average pooling of x (n, H, W, C) over windows pool_size apart by strides,
    each channel on its own: (y, argmax). argmax (max pooling; else None) holds, per
    output, the index h * W + w of the input it took (the window's first maximum);
    padded cells are never a maximum and are left out of averages
    (csrc/layers/pool2d.c)."""
    x = _images(x, "x")
    spec, _ = _pool_spec(x.shape, pool_size, strides, padding, mode)
    y, saved, _ = _kernels.layer_forward(spec, x, [], nthreads=get_num_threads())
    if mode != "max":
        return y, None
    return y, saved.view(np.int32).reshape(y.shape).astype(np.int64)


def pool2d_backward(dy, x_shape, argmax=None, pool_size=(2, 2), strides=(2, 2),
                    padding=((0, 0), (0, 0)), mode="max"):
    """dx (of shape x_shape) of pool2d_forward given dy = dL/dy (n, OH, OW, C): max
    pooling sends each output's gradient to the input in argmax, average pooling spreads
    it over the window's cells inside the image."""
    try:
        x_shape = tuple(x_shape)
    except TypeError:
        x_shape = None
    if (x_shape is None or len(x_shape) != 4 or not all(
            isinstance(d, (int, np.integer)) and not isinstance(d, bool) and 1 <= d <= 2**31
            for d in x_shape)):
        raise ValueError(f"x_shape must be the input's shape (n, height, width, channels) of "
                         f"ints >= 1, got {x_shape!r}")
    x_shape = tuple(int(d) for d in x_shape)
    dy = _float_array(dy, "dy", 4)
    spec, out_shape = _pool_spec(x_shape, pool_size, strides, padding, mode)
    _expect_shape(dy, "dy", out_shape)
    saved = np.empty(0, np.uint8)
    if mode == "max":
        if argmax is None:
            raise ValueError("argmax (from pool2d_forward) is required for max pooling")
        argmax = np.asarray(argmax)
        if argmax.dtype.kind not in "iu":
            raise TypeError(f"argmax must be an integer array, got {argmax.dtype}")
        _expect_shape(argmax, "argmax", out_shape)
        if argmax.size and not (argmax.min() >= 0 and argmax.max() < x_shape[1] * x_shape[2]):
            raise ValueError(f"argmax must hold input indices h * W + w in [0, "
                             f"{x_shape[1] * x_shape[2]}) (from pool2d_forward)")
        saved = np.ascontiguousarray(argmax, dtype=np.int32).reshape(-1).view(np.uint8)
    x = np.empty(x_shape, dtype=dy.dtype)  # only its shape is read
    y = np.empty(out_shape, dtype=dy.dtype)  # not read
    return _kernels.layer_backward(spec, x, y, dy, [], saved, True,
                                   nthreads=get_num_threads())[0]
# ---- sequences: embeddings and recurrent layers (csrc/layers/embedding.c, simple_rnn.c,
# gru.c, lstm.c). The backward passes run the forward again for the states they keep.

def _indices(x, input_dim):
    """x as C-contiguous int64 indices (n, steps), every one in [0, input_dim)."""
    x = np.asarray(x)
    if x.dtype.kind not in "iu":
        raise TypeError(f"x must hold integer indices, got dtype {x.dtype}")
    if x.ndim != 2 or 0 in x.shape:
        raise ValueError(f"x must be a non-empty 2-D array of indices (samples, steps), got "
                         f"shape {x.shape}")
    low, high = x.min(), x.max()
    if low < 0 or high >= input_dim:
        raise ValueError(f"x holds indices outside [0, {input_dim}): the largest is {high}, "
                         f"the smallest {low}")
    return np.ascontiguousarray(x, dtype=np.int64)


def _param(a):
    """A parameter as the layer binding takes it: C-contiguous and writeable."""
    return a if a.flags.c_contiguous and a.flags.writeable else np.array(a, order="C")


def _embedding_spec(table_shape):
    return {"kind": "embedding", "attrs": {"input_dim": table_shape[0],
                                           "output_dim": table_shape[1], "mask_zero": 0}}


def embedding_forward(x, table):
    """y[n, t] = table[x[n, t]]: int indices x (n, T), table (input_dim, output_dim)."""
    table = _float_array(table, "table", 2)
    if 0 in table.shape:
        raise ValueError(f"table must not be empty, got shape {table.shape}")
    x = _indices(x, table.shape[0])
    return _kernels.layer_forward(_embedding_spec(table.shape), x, [_param(table)],
                                  nthreads=get_num_threads())[0]


def embedding_backward(x, dy, table_shape):
    """dtable: every step's dy row added to its index's row, in (n, t) order."""
    if (not isinstance(table_shape, (tuple, list)) or len(table_shape) != 2
            or not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 1
                       for d in table_shape)):
        raise ValueError(f"table_shape must be (input_dim, output_dim) of positive ints, got "
                         f"{table_shape!r}")
    table_shape = tuple(int(d) for d in table_shape)
    x = _indices(x, table_shape[0])
    dy = _float_array(dy, "dy", 3)
    _expect_shape(dy, "dy", (*x.shape, table_shape[1]))
    dy = np.ascontiguousarray(dy)
    table = np.empty(table_shape, dtype=dy.dtype)  # not read by the gradient pass
    return _kernels.layer_backward(_embedding_spec(table_shape), x, dy, dy, [table],
                                   np.empty(0, np.uint8), False,
                                   nthreads=get_num_threads())[1][0]


def _gate_activation(activation, name):
    """An elementwise activation's name (a gate's), naming the argument if not."""
    try:
        _activation_id(activation)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None
    if activation == "softmax":
        raise ValueError(f"{name} must be elementwise, not softmax")
    return activation


def _recurrent(kind, gates, x, kernel, recurrent_kernel, bias, mask, activation,
               return_sequences, go_backwards, bias_rows=None, **attrs):
    """(spec, x, params, mask, units) of a recurrent op, checked: x (n, T, F),
    kernel (F, G u), recurrent_kernel (u, G u), bias (G u,) or (bias_rows, G u)."""
    x = _float_array(x, "x", 3)
    if 0 in x.shape:
        raise ValueError(f"x must be a non-empty batch of sequences (samples, steps, features), "
                         f"got shape {x.shape}")
    kernel = _float_array(kernel, "kernel", 2, x.dtype)
    recurrent_kernel = _float_array(recurrent_kernel, "recurrent_kernel", 2, x.dtype)
    units = recurrent_kernel.shape[0]
    if units == 0 or recurrent_kernel.shape != (units, gates * units):
        raise ValueError(f"recurrent_kernel must have shape (units, {gates} * units) with units "
                         f">= 1, got {recurrent_kernel.shape}")
    _expect_shape(kernel, "kernel", (x.shape[2], gates * units))
    bias = _float_array(bias, "bias", 1 if bias_rows is None else 2, x.dtype)
    _expect_shape(bias, "bias", (gates * units,) if bias_rows is None
                  else (bias_rows, gates * units))
    x = np.ascontiguousarray(x)
    spec = {"kind": kind, "attrs": {
        "units": units, "activation": _gate_activation(activation, "activation"),
        "return_sequences": int(bool(return_sequences)),
        "go_backwards": int(bool(go_backwards)), **attrs}}
    return spec, x, [_param(kernel), _param(recurrent_kernel), _param(bias)], _mask(mask, x), units


def _recurrent_backward(spec, x, params, mask, units, dy, need_dx):
    """(dx or None, dkernel, drecurrent_kernel, dbias), after the forward pass that
    fills the states the backward pass reads."""
    steps = spec["attrs"]["return_sequences"]
    dy = _float_array(dy, "dy", 3 if steps else 2, x.dtype)
    _expect_shape(dy, "dy", (x.shape[0], x.shape[1], units) if steps else (x.shape[0], units))
    nthreads = get_num_threads()
    y, saved, _ = _kernels.layer_forward(spec, x, params, training=True, mask=mask,
                                         nthreads=nthreads)
    dx, grads = _kernels.layer_backward(spec, x, y, dy, params, saved, bool(need_dx), mask=mask,
                                        nthreads=nthreads)
    return (dx, *grads)


def _forward(spec, x, params, mask, _units):
    return _kernels.layer_forward(spec, x, params, mask=mask, nthreads=get_num_threads())[0]


def _gru_attrs(recurrent_activation, reset_after):
    return dict(bias_rows=2 if reset_after else None, reset_after=int(bool(reset_after)),
                recurrent_activation=_gate_activation(recurrent_activation,
                                                      "recurrent_activation"))


def simple_rnn_forward(x, kernel, recurrent_kernel, bias, activation="tanh",
                       return_sequences=False, go_backwards=False, mask=None):
    """h_t = act(x_t W + h_{t-1} U + b), h_0 = 0, over x (n, T, F): the last state
    (n, units), or every step's (n, T, units) with return_sequences; go_backwards
    reads the steps in reverse (and returns them so); where mask (n, T) is False
    the state carries over."""
    return _forward(*_recurrent("simple_rnn", 1, x, kernel, recurrent_kernel, bias, mask,
                                activation, return_sequences, go_backwards))


def simple_rnn_backward(x, kernel, recurrent_kernel, bias, dy, activation="tanh",
                        return_sequences=False, go_backwards=False, mask=None, need_dx=True):
    """(dx or None, dkernel, drecurrent_kernel, dbias) of simple_rnn_forward."""
    return _recurrent_backward(*_recurrent("simple_rnn", 1, x, kernel, recurrent_kernel, bias,
                                           mask, activation, return_sequences, go_backwards),
                               dy, need_dx)


def gru_forward(x, kernel, recurrent_kernel, bias, activation="tanh",
                recurrent_activation="sigmoid", return_sequences=False, go_backwards=False,
                reset_after=True, mask=None):
    """Keras's GRU, gates in the order z, r, h (fusenn.reference.gru_forward gives the
    equations); bias (2, 3 units) with reset_after, else (3 units,)."""
    return _forward(*_recurrent("gru", 3, x, kernel, recurrent_kernel, bias, mask, activation,
                                return_sequences, go_backwards,
                                **_gru_attrs(recurrent_activation, reset_after)))


def gru_backward(x, kernel, recurrent_kernel, bias, dy, activation="tanh",
                 recurrent_activation="sigmoid", return_sequences=False, go_backwards=False,
                 reset_after=True, mask=None, need_dx=True):
    """(dx or None, dkernel, drecurrent_kernel, dbias) of gru_forward."""
    return _recurrent_backward(*_recurrent("gru", 3, x, kernel, recurrent_kernel, bias, mask,
                                           activation, return_sequences, go_backwards,
                                           **_gru_attrs(recurrent_activation, reset_after)),
                               dy, need_dx)


def lstm_forward(x, kernel, recurrent_kernel, bias, activation="tanh",
                 recurrent_activation="sigmoid", return_sequences=False, go_backwards=False,
                 mask=None):
    """Keras's LSTM, gates in the order i, f, c, o (fusenn.reference.lstm_forward gives
    the equations)."""
    return _forward(*_recurrent("lstm", 4, x, kernel, recurrent_kernel, bias, mask, activation,
                                return_sequences, go_backwards,
                                recurrent_activation=_gate_activation(recurrent_activation,
                                                                      "recurrent_activation")))


def lstm_backward(x, kernel, recurrent_kernel, bias, dy, activation="tanh",
                  recurrent_activation="sigmoid", return_sequences=False, go_backwards=False,
                  mask=None, need_dx=True):
    """(dx or None, dkernel, drecurrent_kernel, dbias) of lstm_forward."""
    return _recurrent_backward(*_recurrent("lstm", 4, x, kernel, recurrent_kernel, bias, mask,
                                           activation, return_sequences, go_backwards,
                                           recurrent_activation=_gate_activation(
                                               recurrent_activation, "recurrent_activation")),
                               dy, need_dx)
