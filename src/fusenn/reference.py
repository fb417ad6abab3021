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

from ._common import ACTIVATIONS, ELU_ALPHA, LEAKY_RELU_SLOPE, NEEDS_Z

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


def poisson(a, t, sample_weight=None):
    """Poisson negative log-likelihood of log-rates a (PyTorch's PoissonNLLLoss,
    log_input=True, full=False): returns (loss, da), e = exp(a),
    loss = (1/(n k)) sum_ij sw_i (e - t a), da = sw (e - t) / (n k)."""
    e = np.exp(a)
    loss = _weighted_mean(e.astype(np.float64) - t.astype(np.float64) * a, sample_weight)
    return loss, _scale_rows(e - t, 1 / a.size, sample_weight)


def _commit(w, step, prev, decay=None):
    """w = w * decay - step (w -= step without decay), keeping the old w in prev;
    returns the count of non-finite new weights."""
    if prev is not None:
        prev[...] = w  # may alias g: step is already computed
    if decay is not None:
        w *= decay
    w -= step
    return 0 if np.isfinite(w).all() else int(np.count_nonzero(~np.isfinite(w)))


def _flush_subnormal(state):
    """Zero the subnormal entries of optimizer state, in place (as the C kernels:
    decaying state would otherwise sit on the smallest subnormals, where every
    operation is slow)."""
    state[np.abs(state) < np.finfo(state.dtype).tiny] = 0


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
        _flush_subnormal(v)
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
    _flush_subnormal(m)
    _flush_subnormal(v)
    denom = np.sqrt(v / (1 - beta2**t))
    denom += eps
    decay = w.dtype.type(1 - lr * weight_decay) if weight_decay != 0 else None
    return _commit(w, (lr / (1 - beta1**t)) * m / denom, prev, decay)


# ---- dropout ----------------------------------------------------------------------------
# The mask is splitmix64's finalizer of a counter, exactly as csrc/dropout.c computes
# it, so both backends drop the same elements. uint64 array arithmetic wraps mod 2^64
# without warnings (scalars would warn), hence the 1-element arrays below.

_U64_MASK = 2**64 - 1
_GOLDEN_GAMMA = 0x9E3779B97F4A7C15
_MIX1, _MIX2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def _mix64(z):
    """splitmix64's finalizer, elementwise on a uint64 array."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(_MIX1)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(_MIX2)
    return z ^ (z >> np.uint64(31))


def _mix64_int(z):
    """splitmix64's finalizer on a Python int in [0, 2^64)."""
    z = ((z ^ (z >> 30)) * _MIX1) & _U64_MASK
    z = ((z ^ (z >> 27)) * _MIX2) & _U64_MASK
    return z ^ (z >> 31)


def dropout_seed(base, step):
    """The mask seed of training step `step` of a dropout layer seeded with `base`:
    mix64(mix64(base) + (step + 1) * 0x9E3779B97F4A7C15) mod 2^64."""
    return _mix64_int((_mix64_int(int(base)) + (int(step) + 1) * _GOLDEN_GAMMA) & _U64_MASK)


def _dropout_mask(shape, rate, seed):
    """Boolean keep-mask of an (n, d) batch: element (i, j) has index i*d + j and is
    kept iff mix64(seed + (index + 1) * GOLDEN) >= floor(rate * 2^64)."""
    count = int(np.prod(shape))
    counter = np.arange(1, count + 1, dtype=np.uint64) * np.uint64(_GOLDEN_GAMMA)
    counter += np.array([seed], dtype=np.uint64)
    threshold = int(rate * 2.0**64)  # exact: scaling by 2^64 only moves the exponent
    return (_mix64(counter) >= np.uint64(threshold)).reshape(shape)


def dropout_forward(x, rate, seed):
    """Inverted dropout: y = x * mask / (1 - rate), dropped elements exactly 0.

    rate in [0, 1); rate == 0 returns an exact copy. The scale is 1 / (1 - rate)
    rounded to x's dtype, as in the C kernel.
    """
    if rate == 0:
        return x.copy()
    y = np.zeros(x.shape, dtype=x.dtype)
    np.multiply(x, x.dtype.type(1.0 / (1.0 - rate)), out=y,
                where=_dropout_mask(x.shape, rate, seed))
    return y


def dropout_backward(dy, rate, seed):
    """dx = dy * mask / (1 - rate), the forward's mask for the same rate and seed."""
    return dropout_forward(dy, rate, seed)


# ---- batch normalisation ------------------------------------------------------------------
# Statistics and elementwise formulas in float64 (the C kernels accumulate and
# compute in double), results rounded to the input's dtype. The elementwise parts
# use the dtype-rounded mean, invstd, dgamma and dbeta, as the C kernels do.

def _f64(a):
    return np.asarray(a, dtype=np.float64)


def batchnorm_forward_train(x, gamma, beta, running_mean, running_var, momentum=0.99,
                            eps=1e-3):
    """Training-mode batch normalisation over the rows of x (n, d), n >= 1.

    mean = x.mean(0), var = ((x - mean)^2).mean(0) (biased), invstd = 1/sqrt(var + eps),
    y = gamma (x - mean) invstd + beta. Unless running_mean is None, the running
    statistics are updated in place: r = momentum r + (1 - momentum) batch.
    Returns (y, mean, invstd).
    """
    x64 = _f64(x)
    mean64 = x64.mean(axis=0)
    var64 = np.square(x64 - mean64).mean(axis=0)
    mean = mean64.astype(x.dtype)
    invstd = (1.0 / np.sqrt(var64 + eps)).astype(x.dtype)
    if running_mean is not None:
        running_mean[...] = momentum * _f64(running_mean) + (1.0 - momentum) * mean64
        running_var[...] = momentum * _f64(running_var) + (1.0 - momentum) * var64
    y = (x64 - _f64(mean)) * (_f64(gamma) * _f64(invstd)) + _f64(beta)
    return y.astype(x.dtype), mean, invstd


def batchnorm_forward_infer(x, gamma, beta, running_mean, running_var, eps=1e-3):
    """Inference-mode batch normalisation with the running statistics:
    y = gamma (x - running_mean) / sqrt(running_var + eps) + beta."""
    scale = _f64(gamma) * (1.0 / np.sqrt(_f64(running_var) + eps))
    y = (_f64(x) - _f64(running_mean)) * scale + _f64(beta)
    return y.astype(x.dtype)


def batchnorm_backward(x, dy, gamma, mean, invstd, need_dx=True):
    """Gradients of the training forward given dy = dL/dy: returns (dx, dgamma, dbeta).

    With xhat = (x - mean) invstd: dbeta = dy.sum(0), dgamma = (dy xhat).sum(0),
    dx = gamma invstd / n (n dy - dbeta - xhat dgamma); dx is None unless need_dx.
    """
    n = x.shape[0]
    dy64 = _f64(dy)
    xhat = (_f64(x) - _f64(mean)) * _f64(invstd)
    dbeta = dy64.sum(axis=0).astype(x.dtype)
    dgamma = (dy64 * xhat).sum(axis=0).astype(x.dtype)
    dx = None
    if need_dx:
        k = _f64(gamma) * _f64(invstd) / n
        dx = (k * (n * dy64 - _f64(dbeta) - xhat * _f64(dgamma))).astype(x.dtype)
    return dx, dgamma, dbeta


def rmsprop_update(w, g, v, lr, rho=0.9, eps=1e-7, prev=None):
    """RMSprop step, in place on w and v:

    v = rho v + (1 - rho) g^2;  w -= lr g / (sqrt(v) + eps)
    Returns and keeps prev as sgd_update does.
    """
    v *= rho
    v += (1 - rho) * g * g  # ((1 - rho) g) g, as the kernel rounds (and overflows) it
    _flush_subnormal(v)
    denom = np.sqrt(v)
    denom += eps
    return _commit(w, lr * g / denom, prev)


def adagrad_update(w, g, v, lr, eps=1e-10, prev=None):
    """Adagrad step, in place on w and the accumulator v:

    v += g^2;  w -= lr g / (sqrt(v) + eps)
    Returns and keeps prev as sgd_update does.
    """
    v += g * g
    _flush_subnormal(v)
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


# ---- convolution and pooling (channels last) ------------------------------------------------
# Images are (n, height, width, channels), as Keras's default. A window's geometry is
# given explicitly: strides (sh, sw), padding ((top, bottom), (left, right)) and
# dilation (dh, dw); the layers turn Keras's "valid" / "same" into pads.

def conv2d_output_size(size, kernel, stride, pad, dilation):
    """The output length along one axis: floor((size + pads - span) / stride) + 1,
    span = dilation (kernel - 1) + 1, the window's extent."""
    return (size + pad[0] + pad[1] - (dilation * (kernel - 1) + 1)) // stride + 1


def _window_slices(x_padded, kernel, strides, dilation, out_hw):
    """For each tap (i, j) of the window, the input values it multiplies at every
    output position: x_padded[:, oh sh + i dh, ow sw + j dw, :]."""
    (kh, kw), (sh, sw), (dh, dw), (oh, ow) = kernel, strides, dilation, out_hw
    for i in range(kh):
        for j in range(kw):
            yield i, j, x_padded[:, i * dh:i * dh + sh * (oh - 1) + 1:sh,
                                 j * dw:j * dw + sw * (ow - 1) + 1:sw, :]


def _im2col(x, kernel, strides, padding, dilation):
    """The patches of x: (n, OH, OW, KH, KW, C), patch (oh, ow) the window of input
    values output (oh, ow) is computed from (zeros where it reaches the padding)."""
    n, h, w, c = x.shape
    out_hw = tuple(conv2d_output_size(s, k, st, p, d) for s, k, st, p, d in
                   zip((h, w), kernel, strides, padding, dilation))
    x_padded = np.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
    cols = np.empty((n, *out_hw, *kernel, c), dtype=x.dtype)
    for i, j, taps in _window_slices(x_padded, kernel, strides, dilation, out_hw):
        cols[:, :, :, i, j, :] = taps
    return cols


def conv2d_forward(x, w, b, strides=(1, 1), padding=((0, 0), (0, 0)), dilation=(1, 1),
                   activation="identity"):
    """y = act(conv(x, w) + b): x (n, H, W, Cin), w (KH, KW, Cin, Cout) as Keras's
    kernel, b (Cout,) or None; y[n, oh, ow, :] = act(patch(oh, ow) . w + b), the
    patch read with the strides, padding and dilation. y: (n, OH, OW, Cout)."""
    _check_activation(activation)
    cols = _im2col(x, w.shape[:2], strides, padding, dilation)
    z = cols.reshape(*cols.shape[:3], -1) @ w.reshape(-1, w.shape[3])
    if b is not None:
        z += b
    if activation == "identity":
        return z
    return activation_forward(z.reshape(-1, z.shape[3]), activation).reshape(z.shape)


def conv2d_backward(x, w, y, dy, strides=(1, 1), padding=((0, 0), (0, 0)), dilation=(1, 1),
                    activation="identity", need_dx=True, z=None, bias=True):
    """Gradients of conv2d_forward given dy = dL/dy: (dw, db, dx).

    dz = dy act'(z); dw = sum over outputs of patch^T dz (the patches are x's
    windows); db = sum of dz over every output (None when bias is False); dx
    scatters dz w^T back over each output's window (col2im), None unless need_dx.
    """
    _check_activation(activation)
    if activation in NEEDS_Z and z is None:
        raise ValueError(f"z (the pre-activation) is required for activation {activation!r}")
    cout = w.shape[3]
    dz = dy if activation == "identity" else activation_backward(
        y.reshape(-1, cout), dy.reshape(-1, cout), activation,
        None if z is None else z.reshape(-1, cout)).reshape(dy.shape)
    cols = _im2col(x, w.shape[:2], strides, padding, dilation)
    dz_rows = dz.reshape(-1, cout)
    dw = (cols.reshape(dz_rows.shape[0], -1).T @ dz_rows).reshape(w.shape)
    db = dz_rows.sum(axis=0) if bias else None
    dx = None
    if need_dx:
        dcols = (dz_rows @ w.reshape(-1, cout).T).reshape(cols.shape)
        (pt, pb), (pl, pr) = padding
        dx_padded = np.zeros((x.shape[0], x.shape[1] + pt + pb, x.shape[2] + pl + pr,
                              x.shape[3]), dtype=x.dtype)
        for i, j, taps in _window_slices(dx_padded, w.shape[:2], strides, dilation,
                                         dz.shape[1:3]):
            taps += dcols[:, :, :, i, j, :]  # a view of dx_padded: the scatter-add
        dx = dx_padded[:, pt:pt + x.shape[1], pl:pl + x.shape[2], :].copy()
    return dw, db, dx


def pool2d_forward(x, pool_size=(2, 2), strides=(2, 2), padding=((0, 0), (0, 0)), mode="max"):
    """Max or average pooling of x (n, H, W, C) over windows pool_size apart by
    strides, each channel on its own: (y, argmax). argmax (max pooling only; else
    None) holds, per output, the index h * W + w of the input it took (the first
    maximum in the window's row-major order). Padded cells take no part: they are
    never a maximum and an average is over the window's cells inside the image
    (Keras's "same")."""
    n, h, w, c = x.shape
    out_hw = tuple(conv2d_output_size(s, k, st, p, 1) for s, k, st, p in
                   zip((h, w), pool_size, strides, padding))
    if mode not in ("max", "avg"):
        raise ValueError(f"mode must be 'max' or 'avg', got {mode!r}")
    # each output's window of input positions, and whether each lies inside
    rows = np.arange(out_hw[0])[:, None] * strides[0] - padding[0][0] + np.arange(pool_size[0])
    cols = np.arange(out_hw[1])[:, None] * strides[1] - padding[1][0] + np.arange(pool_size[1])
    inside = (((rows >= 0) & (rows < h))[:, None, :, None] &
              ((cols >= 0) & (cols < w))[None, :, None, :])     # (OH, OW, KH, KW)
    index = np.clip(rows, 0, h - 1)[:, None, :, None] * w + np.clip(cols, 0, w - 1)[None, :, None, :]
    windows = x.reshape(n, h * w, c)[:, index.reshape(-1), :].reshape(
        n, *out_hw, pool_size[0] * pool_size[1], c)
    inside = inside.reshape(*out_hw, -1)
    if mode == "avg":
        count = inside.sum(axis=-1)[:, :, None]
        summed = np.where(inside[None, :, :, :, None], windows, 0).sum(axis=3)
        return summed / count.astype(x.dtype), None
    windows = np.where(inside[None, :, :, :, None], windows, -np.inf).astype(x.dtype)
    best = windows.argmax(axis=3)                                # (n, OH, OW, C)
    argmax = np.take_along_axis(index.reshape(*out_hw, -1)[None, :, :, :, None],
                                best[:, :, :, None, :], axis=3)[:, :, :, 0, :]
    return np.take_along_axis(windows, best[:, :, :, None, :], axis=3)[:, :, :, 0, :], \
        argmax.astype(np.int64)


def pool2d_backward(dy, x_shape, argmax=None, pool_size=(2, 2), strides=(2, 2),
                    padding=((0, 0), (0, 0)), mode="max"):
    """dx of pool2d_forward given dy = dL/dy (n, OH, OW, C): max pooling sends each
    output's gradient to the input in argmax; average pooling spreads it evenly over
    the window's cells inside the image. Contributions to one input add up."""
    n, h, w, c = x_shape
    dx = np.zeros((n, h * w, c), dtype=dy.dtype)
    if mode == "max":
        for i in range(n):
            for ch in range(c):
                np.add.at(dx[i, :, ch], argmax[i, :, :, ch].reshape(-1), dy[i, :, :, ch].reshape(-1))
        return dx.reshape(x_shape)
    out_hw = dy.shape[1:3]
    for oh in range(out_hw[0]):
        r0 = oh * strides[0] - padding[0][0]
        rs = range(max(r0, 0), min(r0 + pool_size[0], h))
        for ow in range(out_hw[1]):
            c0 = ow * strides[1] - padding[1][0]
            cs = range(max(c0, 0), min(c0 + pool_size[1], w))
            share = dy[:, oh, ow, :] / dy.dtype.type(len(rs) * len(cs))
            for r in rs:
                for col in cs:
                    dx[:, r * w + col, :] += share
    return dx.reshape(x_shape)


def global_pool_forward(x, mode="avg", mask=None):
    """The mean (or max) of every channel over all positions of a sample:
    x (n, ..., C) -> (n, C). With a time-step mask (n, steps) of a sequence, over
    its real steps only (a sample with none gives 0)."""
    rows = x.reshape(x.shape[0], -1, x.shape[-1])
    real = np.ones(rows.shape[:2], bool) if mask is None else np.asarray(mask, bool)
    if mode == "avg":
        count = real.sum(axis=1)[:, None]
        total = np.where(real[:, :, None], rows, 0).sum(axis=1, dtype=np.float64)
        return np.where(count > 0, total / np.maximum(count, 1), 0).astype(x.dtype)
    if mode == "max":
        best = np.where(real[:, :, None], rows, -np.inf).max(axis=1)
        return np.where(real.any(axis=1)[:, None], best, 0).astype(x.dtype)
    raise ValueError(f"mode must be 'max' or 'avg', got {mode!r}")


def global_pool_backward(x, dy, mode="avg", mask=None):
    """dx of global_pool_forward: dy / (real) positions everywhere real (avg), or
    dy at each channel's first maximum among the real positions (max)."""
    rows = x.reshape(x.shape[0], -1, x.shape[-1])
    real = np.ones(rows.shape[:2], bool) if mask is None else np.asarray(mask, bool)
    if mode == "avg":
        count = real.sum(axis=1)[:, None, None].astype(dy.dtype)
        share = np.where(count > 0, dy[:, None, :] / np.maximum(count, 1), 0)
        dx = np.where(real[:, :, None], share, 0).astype(dy.dtype)
    else:
        dx = np.zeros_like(rows)
        first = np.where(real[:, :, None], rows, -np.inf).argmax(axis=1)
        np.put_along_axis(dx, first[:, None, :], np.where(real.any(axis=1)[:, None], dy, 0)
                          [:, None, :], axis=1)
    return dx.reshape(x.shape)


# ---- embeddings and recurrent layers (Keras's weights and gate orders) -----------------------
# A sequence is (n, T, features). The recurrent layers read its steps in order (reversed
# with go_backwards, outputs too) and return the last state h (n, units), or every
# step's h (n, T, units) with return_sequences. mask (n, T) marks the real steps: at a
# masked step a sample's state carries over unchanged (and so does its output). The
# backward passes recompute the forward states, then run back through time.

def embedding_forward(x, table):
    """y[n, t] = table[x[n, t]]: int indices x (n, T), table (input_dim, output_dim)."""
    return table[x]


def embedding_backward(x, dy, table_shape):
    """dtable: every step's dy row added to its index's row, in (n, t) order."""
    dtable = np.zeros(table_shape, dtype=dy.dtype)
    np.add.at(dtable, x.reshape(-1), dy.reshape(-1, table_shape[1]))
    return dtable


def _steps(T, go_backwards):
    return range(T - 1, -1, -1) if go_backwards else range(T)


def _act(z, name):
    return activation_forward(z, name)


def _dact(z, a, da, name):
    """da * act'(z), through a = act(z) (or z where the derivative needs it)."""
    return activation_backward(a, da, name, z)


def _keep(mask, t, new, old):
    """new where step t of a sample is real, else old (the state carries over)."""
    return new if mask is None else np.where(mask[:, t][:, None], new, old)


def _outputs(hs, return_sequences):
    return np.stack(hs, axis=1) if return_sequences else hs[-1]


def simple_rnn_forward(x, kernel, recurrent_kernel, bias, activation="tanh",
                       return_sequences=False, go_backwards=False, mask=None):
    """h_t = act(x_t W + h_{t-1} U + b), h_0 = 0."""
    h = np.zeros((x.shape[0], recurrent_kernel.shape[0]), dtype=x.dtype)
    hs = []
    for t in _steps(x.shape[1], go_backwards):
        h = _keep(mask, t, _act(x[:, t] @ kernel + h @ recurrent_kernel + bias, activation), h)
        hs.append(h)
    return _outputs(hs, return_sequences)


def simple_rnn_backward(x, kernel, recurrent_kernel, bias, dy, activation="tanh",
                        return_sequences=False, go_backwards=False, mask=None, need_dx=True):
    """(dx or None, dkernel, drecurrent_kernel, dbias) of simple_rnn_forward."""
    steps = list(_steps(x.shape[1], go_backwards))
    h = np.zeros((x.shape[0], recurrent_kernel.shape[0]), dtype=x.dtype)
    trace = []  # (h_{t-1}, z_t, h_t) of each step
    for t in steps:
        z = x[:, t] @ kernel + h @ recurrent_kernel + bias
        h_prev, h = h, _keep(mask, t, _act(z, activation), h)
        trace.append((h_prev, z, h))
    dW, dU, db = np.zeros_like(kernel), np.zeros_like(recurrent_kernel), np.zeros_like(bias)
    dx = np.zeros_like(x) if need_dx else None
    dh = np.zeros_like(h) if return_sequences else dy.copy()
    for s in range(len(steps) - 1, -1, -1):
        t, (h_prev, z, h) = steps[s], trace[s]
        if return_sequences:
            dh = dh + dy[:, s]
        dz = _keep(mask, t, _dact(z, _act(z, activation), dh, activation), 0 * dh)
        dW += x[:, t].T @ dz
        dU += h_prev.T @ dz
        db += dz.sum(axis=0)
        if need_dx:
            dx[:, t] = dz @ kernel.T
        dh = dz @ recurrent_kernel.T + _keep(mask, t, 0 * dh, dh)
    return dx, dW, dU, db


def gru_forward(x, kernel, recurrent_kernel, bias, activation="tanh",
                recurrent_activation="sigmoid", return_sequences=False, go_backwards=False,
                reset_after=True, mask=None):
    """Keras's GRU, gates in the order z, r, h. reset_after (bias (2, 3 units): input
    and recurrent biases):
        z = rec(x W_z + b_z + h U_z + b'_z);  r = rec(x W_r + b_r + h U_r + b'_r)
        c = act(x W_h + b_h + r (h U_h + b'_h));  h = z h_prev + (1 - z) c
    without reset_after (bias (3 units,)): c = act(x W_h + b_h + (r h) U_h)."""
    u = recurrent_kernel.shape[0]
    h = np.zeros((x.shape[0], u), dtype=x.dtype)
    hs = []
    for t in _steps(x.shape[1], go_backwards):
        xp = x[:, t] @ kernel + (bias[0] if reset_after else bias)
        if reset_after:
            hp = h @ recurrent_kernel + bias[1]
            z = _act(xp[:, :u] + hp[:, :u], recurrent_activation)
            r = _act(xp[:, u:2 * u] + hp[:, u:2 * u], recurrent_activation)
            c = _act(xp[:, 2 * u:] + r * hp[:, 2 * u:], activation)
        else:
            hp = h @ recurrent_kernel[:, :2 * u]
            z = _act(xp[:, :u] + hp[:, :u], recurrent_activation)
            r = _act(xp[:, u:2 * u] + hp[:, u:], recurrent_activation)
            c = _act(xp[:, 2 * u:] + (r * h) @ recurrent_kernel[:, 2 * u:], activation)
        h = _keep(mask, t, z * h + (1 - z) * c, h)
        hs.append(h)
    return _outputs(hs, return_sequences)


def gru_backward(x, kernel, recurrent_kernel, bias, dy, activation="tanh",
                 recurrent_activation="sigmoid", return_sequences=False, go_backwards=False,
                 reset_after=True, mask=None, need_dx=True):
    """(dx or None, dkernel, drecurrent_kernel, dbias) of gru_forward."""
    u = recurrent_kernel.shape[0]
    U_zr, U_h = recurrent_kernel[:, :2 * u], recurrent_kernel[:, 2 * u:]
    steps = list(_steps(x.shape[1], go_backwards))
    h = np.zeros((x.shape[0], u), dtype=x.dtype)
    trace = []
    for t in steps:  # the forward, keeping each step's pre-activations
        xp = x[:, t] @ kernel + (bias[0] if reset_after else bias)
        hp = h @ recurrent_kernel + bias[1] if reset_after else h @ U_zr
        pz, pr = xp[:, :u] + hp[:, :u], xp[:, u:2 * u] + hp[:, u:2 * u]
        z, r = _act(pz, recurrent_activation), _act(pr, recurrent_activation)
        pc = xp[:, 2 * u:] + (r * hp[:, 2 * u:] if reset_after else (r * h) @ U_h)
        c = _act(pc, activation)
        trace.append((h, hp, pz, z, pr, r, pc, c))
        h = _keep(mask, t, z * h + (1 - z) * c, h)
    dW, dU, db = np.zeros_like(kernel), np.zeros_like(recurrent_kernel), np.zeros_like(bias)
    dx = np.zeros_like(x) if need_dx else None
    dh = np.zeros_like(h) if return_sequences else dy.copy()
    for s in range(len(steps) - 1, -1, -1):
        t, (h_prev, hp, pz, z, pr, r, pc, c) = steps[s], trace[s]
        if return_sequences:
            dh = dh + dy[:, s]
        real = _keep(mask, t, dh, 0 * dh)  # the gradient of this step's own update
        dpc = _dact(pc, c, real * (1 - z), activation)
        dpz = _dact(pz, z, real * (h_prev - c), recurrent_activation)
        if reset_after:
            dpr = _dact(pr, r, dpc * hp[:, 2 * u:], recurrent_activation)
            dxp = np.concatenate([dpz, dpr, dpc], axis=1)
            dhp = np.concatenate([dpz, dpr, dpc * r], axis=1)
            dU += h_prev.T @ dhp
            db[0] += dxp.sum(axis=0)
            db[1] += dhp.sum(axis=0)
            dh_prev = dhp @ recurrent_kernel.T
        else:
            drh = dpc @ U_h.T  # d(r h)
            dpr = _dact(pr, r, drh * h_prev, recurrent_activation)
            dxp = np.concatenate([dpz, dpr, dpc], axis=1)
            dU[:, :2 * u] += h_prev.T @ np.concatenate([dpz, dpr], axis=1)
            dU[:, 2 * u:] += (r * h_prev).T @ dpc
            db += dxp.sum(axis=0)
            dh_prev = np.concatenate([dpz, dpr], axis=1) @ U_zr.T + drh * r
        dW += x[:, t].T @ dxp
        if need_dx:
            dx[:, t] = dxp @ kernel.T
        dh = dh_prev + real * z + _keep(mask, t, 0 * dh, dh)
    return dx, dW, dU, db


def lstm_forward(x, kernel, recurrent_kernel, bias, activation="tanh",
                 recurrent_activation="sigmoid", return_sequences=False, go_backwards=False,
                 mask=None):
    """Keras's LSTM, gates in the order i, f, c, o:
        i = rec(x W_i + h U_i + b_i);  f = rec(x W_f + h U_f + b_f)
        g = act(x W_c + h U_c + b_c);  o = rec(x W_o + h U_o + b_o)
        c = f c_prev + i g;  h = o act(c)"""
    u = recurrent_kernel.shape[0]
    h = np.zeros((x.shape[0], u), dtype=x.dtype)
    c = np.zeros_like(h)
    hs = []
    for t in _steps(x.shape[1], go_backwards):
        p = x[:, t] @ kernel + h @ recurrent_kernel + bias
        i = _act(p[:, :u], recurrent_activation)
        f = _act(p[:, u:2 * u], recurrent_activation)
        g = _act(p[:, 2 * u:3 * u], activation)
        o = _act(p[:, 3 * u:], recurrent_activation)
        c_new = f * c + i * g
        h, c = _keep(mask, t, o * _act(c_new, activation), h), _keep(mask, t, c_new, c)
        hs.append(h)
    return _outputs(hs, return_sequences)


def lstm_backward(x, kernel, recurrent_kernel, bias, dy, activation="tanh",
                  recurrent_activation="sigmoid", return_sequences=False, go_backwards=False,
                  mask=None, need_dx=True):
    """(dx or None, dkernel, drecurrent_kernel, dbias) of lstm_forward."""
    u = recurrent_kernel.shape[0]
    steps = list(_steps(x.shape[1], go_backwards))
    h = np.zeros((x.shape[0], u), dtype=x.dtype)
    c = np.zeros_like(h)
    trace = []
    for t in steps:
        p = x[:, t] @ kernel + h @ recurrent_kernel + bias
        gates = [_act(p[:, k * u:(k + 1) * u], a) for k, a in
                 enumerate((recurrent_activation, recurrent_activation, activation,
                            recurrent_activation))]
        c_new = gates[1] * c + gates[0] * gates[2]
        tc = _act(c_new, activation)
        trace.append((h, c, p, gates, c_new, tc))
        h, c = _keep(mask, t, gates[3] * tc, h), _keep(mask, t, c_new, c)
    dW, dU, db = np.zeros_like(kernel), np.zeros_like(recurrent_kernel), np.zeros_like(bias)
    dx = np.zeros_like(x) if need_dx else None
    dh = np.zeros_like(h) if return_sequences else dy.copy()
    dc = np.zeros_like(h)
    for s in range(len(steps) - 1, -1, -1):
        t, (h_prev, c_prev, p, (i, f, g, o), c_new, tc) = steps[s], trace[s]
        if return_sequences:
            dh = dh + dy[:, s]
        real_h, real_c = _keep(mask, t, dh, 0 * dh), _keep(mask, t, dc, 0 * dc)
        dcn = real_c + _dact(c_new, tc, real_h * o, activation)
        dp = np.concatenate([
            _dact(p[:, :u], i, dcn * g, recurrent_activation),
            _dact(p[:, u:2 * u], f, dcn * c_prev, recurrent_activation),
            _dact(p[:, 2 * u:3 * u], g, dcn * i, activation),
            _dact(p[:, 3 * u:], o, real_h * tc, recurrent_activation)], axis=1)
        dW += x[:, t].T @ dp
        dU += h_prev.T @ dp
        db += dp.sum(axis=0)
        if need_dx:
            dx[:, t] = dp @ kernel.T
        dh = dp @ recurrent_kernel.T + _keep(mask, t, 0 * dh, dh)
        dc = dcn * f + _keep(mask, t, 0 * dc, dc)
    return dx, dW, dU, db
