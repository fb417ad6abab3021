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
from ._threads import get_num_threads
from .reference import ACTIVATIONS, ELU_ALPHA, LEAKY_RELU_SLOPE, NEEDS_Z

__all__ = [
    "ACTIVATIONS", "NEEDS_Z", "LEAKY_RELU_SLOPE", "ELU_ALPHA", "matmul", "activation_forward",
    "activation_backward", "dense_forward", "dense_backward", "softmax_cross_entropy",
    "sigmoid_binary_cross_entropy", "mse", "sgd_update", "adam_update",
]

# Position in ACTIVATIONS is the C enum value (fusenn_activation in fusenn.h).
_ACTIVATION_IDS = {name: i for i, name in enumerate(ACTIVATIONS)}
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


def matmul(a, b, trans_a=False, trans_b=False):
    """op(a) @ op(b) by fusenn's GEMM, where op transposes when asked (no copy)."""
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


def _labels(labels, n, k):
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise TypeError(f"labels must be integer class indices, got dtype {labels.dtype}")
    _expect_shape(labels, "labels", (n,))
    if n and (labels.min() < 0 or labels.max() >= k):
        bad = labels[(labels < 0) | (labels >= k)][0]
        raise ValueError(f"labels must lie in [0, {k}), found {bad}")
    return np.ascontiguousarray(labels, dtype=np.int64)


def softmax_cross_entropy(z, labels):
    """(loss, p, dz) for logits z and integer labels: mean cross-entropy of softmax(z)."""
    z = _nonempty(contiguous_rows(_float_array(z, "z", 2)), "z")
    labels = _labels(labels, *z.shape)
    p = np.empty_like(z, order="C")
    dz = np.empty_like(z, order="C")
    loss = _kernels.softmax_cross_entropy(z, labels, p, dz, get_num_threads())
    return loss, p, dz


def sigmoid_binary_cross_entropy(z, t):
    """(loss, p, dz) for logits z and targets t in [0, 1]: mean binary cross-entropy."""
    z = _nonempty(contiguous_rows(_float_array(z, "z", 2)), "z")
    t = contiguous_rows(_float_array(t, "t", 2, z.dtype))
    _expect_shape(t, "t", z.shape)
    p = np.empty_like(z, order="C")
    dz = np.empty_like(z, order="C")
    loss = _kernels.sigmoid_binary_cross_entropy(z, t, p, dz, get_num_threads())
    return loss, p, dz


def mse(a, t):
    """(loss, da): mean squared error over all elements and its gradient."""
    a = _nonempty(contiguous_rows(_float_array(a, "a", 2)), "a")
    t = contiguous_rows(_float_array(t, "t", 2, a.dtype))
    _expect_shape(t, "t", a.shape)
    da = np.empty_like(a, order="C")
    loss = _kernels.mse(a, t, da, get_num_threads())
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


def finite_number(value, name):
    """A hyperparameter as a finite float, or an error naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    try:
        value = float(value)
    except OverflowError:
        raise ValueError(f"{name} is far too large") from None
    if not np.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


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


def adam_update(w, g, m, v, t, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, prev=None):
    """In place, step t >= 1: bias-corrected Adam with eps added after the square root.

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
                                _prev(prev, w), get_num_threads())
