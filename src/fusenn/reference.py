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

import numpy as np

ACTIVATIONS = ("identity", "sigmoid", "tanh", "relu", "leaky_relu", "softmax")
LEAKY_RELU_SLOPE = 0.01


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
    return _softmax(z)


def activation_backward(a, da, activation):
    """dz = da * act'(z), written through the forward output a = act(z)."""
    _check_activation(activation)
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
    return a * (da - (da * a).sum(axis=-1, keepdims=True))


def dense_forward(x, w, b, activation):
    """y = act(x @ w + b); x (n, d_in), w (d_in, d_out), b (d_out,)."""
    _check_activation(activation)
    z = x @ w
    z += b
    return z if activation == "identity" else activation_forward(z, activation)


def dense_backward(x, w, y, dy, activation, need_dx=True):
    """Gradients of y = act(x @ w + b) given dy = dL/dy: returns (dw, db, dx).

    dx is None when need_dx is False (the first layer needs no input gradient).
    """
    # dy is only read, so identity can use it as dz without a copy.
    dz = dy if activation == "identity" else activation_backward(y, dy, activation)
    dw = x.T @ dz
    db = dz.sum(axis=0)
    dx = dz @ w.T if need_dx else None
    return dw, db, dx


def _weighted_mean(losses, sample_weight):
    """The batch loss as a Python float, summed in float64: the mean of the
    per-row (1-D) or per-element (2-D) losses, each row's times its weight
    sample_weight[i] when weights are given, so (1/n) sum_i sw_i loss_i."""
    if sample_weight is None:
        return float(np.mean(losses, dtype=np.float64))
    w = np.asarray(sample_weight, dtype=np.float64)
    w = w if losses.ndim == 1 else w[:, None]
    return float(np.mean(losses.astype(np.float64) * w))


def _scale_rows(g, base, sample_weight):
    """g *= base, or with weights g_i *= sw_i base (the row factor rounded to g's
    dtype once, as the C kernels do), in place; returns g."""
    if sample_weight is None:
        g *= base
    else:
        g *= (np.asarray(sample_weight, dtype=np.float64) * base).astype(g.dtype)[:, None]
    return g


def softmax_cross_entropy(z, labels, sample_weight=None):
    """Softmax + cross-entropy from logits z (n, k) and int labels (n,).

    Returns (loss, p, dz): loss = (1/n) sum_i sw_i (logsumexp(z_i) - z_i[label_i]),
    p = softmax(z), dz = sw (p - onehot(labels)) / n; sw = sample_weight (n,),
    all ones when None.
    """
    n = z.shape[0]
    rows = np.arange(n)
    shifted = z - z.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    s = e.sum(axis=1)
    # logsumexp(z) - z[label] == log(sum exp(shifted)) - shifted[label]
    loss = _weighted_mean(np.log(s) - shifted[rows, labels], sample_weight)
    p = e
    p *= (1 / s)[:, None]
    dz = p.copy()
    dz[rows, labels] -= 1
    if sample_weight is None:
        dz /= n
    else:
        _scale_rows(dz, 1 / n, sample_weight)
    return loss, p, dz


def sigmoid_binary_cross_entropy(z, t, sample_weight=None):
    """Sigmoid + binary cross-entropy from logits z (n, k) and targets t (n, k).

    Returns (loss, p, dz): l = max(z, 0) - z t + log1p(exp(-|z|)),
    loss = (1/(n k)) sum_ij sw_i l_ij, p = sigmoid(z), dz = sw (p - t) / (n k).
    """
    p, e = _sigmoid(z)
    loss = _weighted_mean(np.maximum(z, 0) - z * t + np.log1p(e), sample_weight)
    dz = p - t
    if sample_weight is None:
        dz /= z.size
    else:
        _scale_rows(dz, 1 / z.size, sample_weight)
    return loss, p, dz


def mse(a, t, sample_weight=None):
    """Mean squared error: returns (loss, da), loss = (1/(n k)) sum_ij sw_i (a - t)^2,
    da = 2 sw (a - t) / (n k)."""
    d = a - t
    loss = _weighted_mean(d * d, sample_weight)
    return loss, _scale_rows(d, 2 / a.size, sample_weight)


def mae(a, t, sample_weight=None):
    """Mean absolute error: returns (loss, da), loss = (1/(n k)) sum_ij sw_i |a - t|,
    da = sw sign(a - t) / (n k) (0 where a == t)."""
    d = a - t
    loss = _weighted_mean(np.abs(d), sample_weight)
    return loss, _scale_rows(np.sign(d), 1 / a.size, sample_weight)


def huber(a, t, delta=1.0, sample_weight=None):
    """Huber loss (Keras's Huber, PyTorch's HuberLoss), delta > 0: returns (loss, da).

    With d = a - t: l = d^2 / 2 where |d| <= delta, else delta (|d| - delta / 2);
    loss = (1/(n k)) sum_ij sw_i l_ij, da = sw clip(d, -delta, delta) / (n k).
    The loss is computed in float64 from d.
    """
    d = a - t
    ad = np.abs(d).astype(np.float64)
    quadratic = ad <= delta
    loss = _weighted_mean(np.where(quadratic, 0.5 * ad * ad, delta * (ad - 0.5 * delta)),
                          sample_weight)
    g = np.clip(d.astype(np.float64), -delta, delta).astype(d.dtype)  # d where quadratic
    return loss, _scale_rows(g, 1 / a.size, sample_weight)


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
