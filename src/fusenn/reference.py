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


def _commit(w, step, prev, decay=None):
    """w = w * decay - step (w -= step without decay), keeping the old w in prev;
    returns the count of non-finite new weights."""
    if prev is not None:
        prev[...] = w  # may alias g: step is already computed
    if decay is not None:
        w *= decay
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


def adam_update(w, g, m, v, t, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
                prev=None):
    """Adam step t >= 1, in place on w, m and v, with AdamW's decoupled decay:

    w *= 1 - lr weight_decay   (only when weight_decay != 0)
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
    decay = w.dtype.type(1 - lr * weight_decay) if weight_decay != 0 else None
    return _commit(w, (lr / (1 - beta1**t)) * m / denom, prev, decay)


def rmsprop_update(w, g, v, lr, rho=0.9, eps=1e-7, prev=None):
    """RMSprop step, in place on w and v:

    v = rho v + (1 - rho) g^2;  w -= lr g / (sqrt(v) + eps)
    Returns and keeps prev as sgd_update does.
    """
    v *= rho
    v += (1 - rho) * g * g  # ((1 - rho) g) g, as the kernel rounds (and overflows) it
    denom = np.sqrt(v)
    denom += eps
    return _commit(w, lr * g / denom, prev)


def adagrad_update(w, g, v, lr, eps=1e-10, prev=None):
    """Adagrad step, in place on w and the accumulator v:

    v += g^2;  w -= lr g / (sqrt(v) + eps)
    Returns and keeps prev as sgd_update does.
    """
    v += g * g
    denom = np.sqrt(v)
    denom += eps
    return _commit(w, lr * g / denom, prev)


def sum_squares(x):
    """sum(x**2) accumulated in float64, as a Python float."""
    x = np.asarray(x, dtype=np.float64)
    return float(np.dot(x.ravel(), x.ravel()))


def grad_transform(g, w, l2=0.0, scale=1.0, clipvalue=0.0):
    """In place on g: g = clip(scale * (g + l2 * w), -clipvalue, clipvalue).

    w is only read when l2 != 0; clipvalue <= 0 means no clipping.
    """
    real = g.dtype.type
    with np.errstate(over="ignore"):  # a bound beyond the dtype's range clips nothing
        if l2 != 0:
            g += real(l2) * w
        if scale != 1:
            g *= real(scale)
        if clipvalue > 0:
            np.clip(g, -real(clipvalue), real(clipvalue), out=g)
