"""Plain-NumPy reference implementation of fusenn's kernels.

Every function here computes exactly the math documented in csrc/fusenn.h and
has the same name and signature as its counterpart in the compiled backend
``fusenn.ops``. It serves two purposes: it is the oracle the C kernels are
tested and benchmarked against, and it is the ``backend="numpy"`` option.

Arrays are computed in the dtype they arrive in (float32 stays float32);
losses are returned as Python floats, summed with a float64 accumulator as the
C kernels do. Callers validate shapes and dtypes; only activation names are
checked here.
"""

import math

import numpy as np

ACTIVATIONS = ("identity", "sigmoid", "tanh", "relu", "leaky_relu", "softmax",
               "gelu", "gelu_tanh", "elu", "softplus", "swish")
# Activations whose derivative is not a function of their output: their
# backward pass needs the pre-activation z as well.
NEEDS_Z = frozenset({"gelu", "gelu_tanh", "swish"})
LEAKY_RELU_SLOPE = 0.01
ELU_ALPHA = 1.0
_SQRT1_2 = math.sqrt(0.5)
_INV_SQRT_2PI = 1 / math.sqrt(2 * math.pi)
_SQRT_2_OVER_PI = math.sqrt(2 / math.pi)
_GELU_TANH_CUBIC = 0.044715
# NumPy has no erfc: Python's (libm's), elementwise in float64.
_erfc_f64 = np.frompyfunc(math.erfc, 1, 1)


def _check_activation(activation):
    if activation not in ACTIVATIONS:
        raise ValueError(
            f"unknown activation {activation!r}; expected one of {', '.join(ACTIVATIONS)}"
        )


def _sigmoid(z):
    # exp(-|z|) never overflows, so extreme logits give no warnings.
    e = np.exp(-np.abs(z))
    s = 1 / (1 + e)
    return np.where(z >= 0, s, e * s), e


def _sigmoid_pair(z):
    """(sigmoid(z), 1 - sigmoid(z)); 1 - sigmoid(z) = sigmoid(-z) is formed
    without a subtraction, so it stays accurate where sigmoid(z) is near 1."""
    e = np.exp(-np.abs(z))
    s = 1 / (1 + e)
    pos = z >= 0
    return np.where(pos, s, e * s), np.where(pos, e * s, s)


def _erfc(x):
    """erfc elementwise, in x's dtype."""
    return _erfc_f64(x.astype(np.float64)).astype(x.dtype)


def _gelu_tanh_2u(z):
    """2 u of gelu_tanh: 2 sqrt(2/pi) (z + 0.044715 z^3)."""
    with np.errstate(over="ignore"):  # z^3 = inf only where the sigmoid of it is 0 or 1
        return 2 * _c(_SQRT_2_OVER_PI, z) * (z + _c(_GELU_TANH_CUBIC, z) * (z * z * z))


def _c(value, like):
    """A constant rounded to the dtype of `like`, as the C kernels do."""
    return like.dtype.type(value)


def _softmax(z):
    a = np.exp(z - z.max(axis=-1, keepdims=True))
    a *= 1 / a.sum(axis=-1, keepdims=True)
    return a


def matmul(a, b, trans_a=False, trans_b=False):
    """op(a) @ op(b), where op transposes when the matching flag is set."""
    return (a.T if trans_a else a) @ (b.T if trans_b else b)


def activation_forward(z, activation):
    """a = act(z) as a new array; softmax is row-wise."""
    _check_activation(activation)
    if activation == "identity":
        return z.copy()
    if activation == "sigmoid":
        return _sigmoid(z)[0]
    if activation == "tanh":
        return np.tanh(z)
    if activation == "relu":
        return np.where(z > 0, z, 0)
    if activation == "leaky_relu":
        return np.where(z > 0, z, LEAKY_RELU_SLOPE * z)
    if activation == "gelu":
        # z Phi(z), Phi(z) = (1 + erf(z / sqrt 2)) / 2 = erfc(-z / sqrt 2) / 2:
        # erfc has no cancellation where erf(z / sqrt 2) is near -1
        return _c(0.5, z) * z * _erfc(-z * _c(_SQRT1_2, z))
    if activation == "gelu_tanh":
        # (z / 2) (1 + tanh(u)) = z sigmoid(2 u), u = sqrt(2/pi) (z + 0.044715 z^3):
        # the sigmoid form has no cancellation where tanh(u) is near -1
        return z * _sigmoid(_gelu_tanh_2u(z))[0]
    if activation == "elu":
        # expm1 of z <= 0 only (no overflow warnings); where, not minimum, keeps -0
        return np.where(z > 0, z, _c(ELU_ALPHA, z) * np.expm1(np.where(z > 0, 0, z)))
    if activation == "softplus":  # log(1 + e^z) = max(z, 0) + log1p(e^-|z|), never overflows
        return np.maximum(z, 0) + np.log1p(np.exp(-np.abs(z)))
    if activation == "swish":  # z sigmoid(z)
        return z * _sigmoid(z)[0]
    return _softmax(z)


def activation_backward(a, da, activation, z=None):
    """dz = da * act'(z), written through the forward output a = act(z), or
    through the pre-activation z for the activations in NEEDS_Z (gelu,
    gelu_tanh, swish), which require it."""
    _check_activation(activation)
    if activation in NEEDS_Z and z is None:
        raise ValueError(f"z (the pre-activation) is required for activation {activation!r}")
    if activation == "identity":
        return da.copy()
    if activation == "sigmoid":
        return da * a * (1 - a)
    if activation == "tanh":
        return da * (1 - a * a)
    if activation == "relu":
        return np.where(a > 0, da, 0)
    if activation == "leaky_relu":
        return np.where(a > 0, da, LEAKY_RELU_SLOPE * da)
    if activation == "gelu":  # Phi(z) + z phi(z), phi(z) = e^(-z^2/2) / sqrt(2 pi)
        cdf = _c(0.5, z) * _erfc(-z * _c(_SQRT1_2, z))
        with np.errstate(over="ignore"):  # z^2 = inf gives exp(-inf) = 0
            pdf = _c(_INV_SQRT_2PI, z) * np.exp(_c(-0.5, z) * z * z)
        return da * (cdf + z * pdf)
    if activation == "gelu_tanh":
        # d/dz z s(2u) = s + 2 z s (1 - s) u', s = sigmoid(2 u), u' = c (1 + 3 k z^2).
        # s (1 - s) is 0 wherever u' could overflow: the term is then 0 (not 0 inf)
        s, one_minus = _sigmoid_pair(_gelu_tanh_2u(z))
        sp = s * one_minus
        with np.errstate(over="ignore", invalid="ignore"):
            du = _c(_SQRT_2_OVER_PI, z) * (1 + 3 * _c(_GELU_TANH_CUBIC, z) * (z * z))
            term = 2 * z * sp * du
        return da * (s + np.where(sp != 0, term, 0))
    if activation == "elu":  # alpha e^z = a + alpha where z <= 0
        return np.where(a > 0, da, da * (a + _c(ELU_ALPHA, a)))
    if activation == "softplus":  # sigmoid(z) = 1 - e^-a
        return da * -np.expm1(-a)
    if activation == "swish":  # s + z s (1 - s) = s (1 + z (1 - s))
        s, one_minus = _sigmoid_pair(z)
        return da * (s * (1 + z * one_minus))
    return a * (da - (da * a).sum(axis=-1, keepdims=True))


def dense_forward(x, w, b, activation):
    """y = act(x @ w + b); x (n, d_in), w (d_in, d_out), b (d_out,)."""
    _check_activation(activation)
    z = x @ w
    z += b
    return z if activation == "identity" else activation_forward(z, activation)


def dense_backward(x, w, y, dy, activation, need_dx=True, z=None):
    """Gradients of y = act(x @ w + b) given dy = dL/dy: returns (dw, db, dx).

    dx is None when need_dx is False (the first layer needs no input gradient).
    Activations in NEEDS_Z require z, the pre-activation x @ w + b.
    """
    _check_activation(activation)
    if activation in NEEDS_Z and z is None:
        raise ValueError(f"z (the pre-activation x @ w + b) is required for activation "
                         f"{activation!r}")
    # dy is only read, so identity can use it as dz without a copy.
    dz = dy if activation == "identity" else activation_backward(y, dy, activation, z)
    dw = x.T @ dz
    db = dz.sum(axis=0)
    dx = dz @ w.T if need_dx else None
    return dw, db, dx


def softmax_cross_entropy(z, labels):
    """Softmax + cross-entropy from logits z (n, k) and int labels (n,).

    Returns (loss, p, dz): loss = mean(logsumexp(z) - z[label]),
    p = softmax(z), dz = (p - onehot(labels)) / n.
    """
    n = z.shape[0]
    rows = np.arange(n)
    shifted = z - z.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    s = e.sum(axis=1)
    # logsumexp(z) - z[label] == log(sum exp(shifted)) - shifted[label]
    loss = float(np.mean(np.log(s) - shifted[rows, labels], dtype=np.float64))
    p = e
    p *= (1 / s)[:, None]
    dz = p.copy()
    dz[rows, labels] -= 1
    dz /= n
    return loss, p, dz


def sigmoid_binary_cross_entropy(z, t):
    """Sigmoid + binary cross-entropy from logits z (n, k) and targets t (n, k).

    Returns (loss, p, dz): loss = mean(max(z, 0) - z t + log1p(exp(-|z|))),
    p = sigmoid(z), dz = (p - t) / (n k).
    """
    p, e = _sigmoid(z)
    loss = float(np.mean(np.maximum(z, 0) - z * t + np.log1p(e), dtype=np.float64))
    dz = p - t
    dz /= z.size
    return loss, p, dz


def mse(a, t):
    """Mean squared error: returns (loss, da), loss = mean((a - t)^2), da = 2 (a - t) / a.size."""
    d = a - t
    loss = float(np.mean(d * d, dtype=np.float64))
    d *= 2 / a.size
    return loss, d


def _commit(w, step, prev):
    """w -= step, keeping the old w in prev; returns the count of non-finite new weights."""
    if prev is not None:
        prev[...] = w  # may alias g: step is already computed
    w -= step
    return 0 if np.isfinite(w).all() else int(np.count_nonzero(~np.isfinite(w)))


def sgd_update(w, g, v, lr, momentum=0.0, nesterov=False, prev=None):
    """SGD step, in place on w (and v; v may be None when momentum == 0).

    v = momentum v + g; w -= lr v, or with Nesterov w -= lr (g + momentum v).
    Returns the number of non-finite updated weights; prev (may be g) receives
    the weights from before the step.
    """
    if momentum == 0:
        step = lr * g
    else:
        v *= momentum
        v += g
        step = lr * (g + momentum * v) if nesterov else lr * v
    return _commit(w, step, prev)


def adam_update(w, g, m, v, t, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, prev=None):
    """Adam step t >= 1, in place on w, m and v:

    m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
    w -= lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
    Returns and keeps prev as sgd_update does.
    """
    m *= beta1
    m += (1 - beta1) * g
    v *= beta2
    v += (1 - beta2) * (g * g)
    denom = np.sqrt(v / (1 - beta2**t))
    denom += eps
    return _commit(w, (lr / (1 - beta1**t)) * m / denom, prev)
