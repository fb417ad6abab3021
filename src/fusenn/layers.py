"""Layers: Dense (fully connected), Dropout, BatchNorm; for images Conv2D,
MaxPooling2D, AveragePooling2D, GlobalAveragePooling2D, GlobalMaxPooling2D,
Flatten and Reshape; for sequences Embedding, SimpleRNN, GRU, LSTM,
GlobalAveragePooling1D and GlobalMaxPooling1D.

Every layer computes through the model's backend (fusenn.ops, the C kernels,
or fusenn.reference, the NumPy oracle) with the same protocol:

    compute_output_shape(input_shape)         a sample's output shape (or ValueError)
    build(input_shape, dtype, rng)            draw weights for samples of `input_shape`
    forward(backend, x, training, logits)     -> (y, cache)
    backward(backend, x, y, cache, dy, need_dx) -> (dx or None, [grad per param])
    params                                    trainable arrays, live
    buffers                                   non-trainable arrays saved with the
                                              model (BatchNorm's running statistics)

Shapes are those of one sample (the batch dimension is left out, as Keras's
input_shape): (features,), (height, width, channels) or (steps, features).

A layer that the C training engine (csrc/plan.c) can run states its engine
spec: `engine_kind`, the name of its kind in the engine's table, and
`engine_attrs()`, its attributes by the names that kind's record gives
(csrc/layers/<kind>.c); its params are handed over in `param_names` order. The
engine runs the same kernels in the same order as forward/backward here, so
both paths give the same bits. A layer without an engine kind (a subclass of
Layer that defines only forward and backward) trains op by op.
"""

import numpy as np

from . import initializers
from ._common import ACTIVATIONS, NEEDS_Z, finite_number

__all__ = ["Layer", "Dense", "Dropout", "BatchNorm", "Conv2D", "MaxPooling2D", "AveragePooling2D",
           "GlobalAveragePooling2D", "GlobalMaxPooling2D", "GlobalAveragePooling1D",
           "GlobalMaxPooling1D", "Flatten", "Reshape", "Embedding", "SimpleRNN", "GRU", "LSTM",
           "canonical_activation", "layer_from_config"]

_GOLDEN_GAMMA = 0x9E3779B97F4A7C15  # splitmix64's increment: a mask index's step in the seed

# Keras calls identity "linear" and swish "silu"; None means no activation in
# both Keras and PyTorch.
_ACTIVATION_ALIASES = {None: "identity", "linear": "identity", "none": "identity",
                       "silu": "swish"}


def canonical_activation(activation):
    """The activation's name in ACTIVATIONS, accepting the usual aliases."""
    if isinstance(activation, str) or activation is None:
        name = _ACTIVATION_ALIASES.get(activation, activation)
        if name in ACTIVATIONS:
            return name
    raise ValueError(
        f"unknown activation {activation!r}; expected one of {', '.join(ACTIVATIONS)} "
        f"(or 'linear' / None for identity, 'silu' for swish)"
    )


def _width(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be a positive int, got {value!r}")
    if not 1 <= value <= 2**31 - 1:
        raise ValueError(f"{name} must be a positive int below 2**31, got {value}")
    return int(value)


def _fraction(value, name, low, high, high_open=True):
    value = finite_number(value, name)
    if not (low <= value and (value < high if high_open else value <= high)):
        raise ValueError(f"{name} must lie in [{low}, {high}{')' if high_open else ']'}, got {value}")
    return value


def shape_text(shape):
    """A shape as Keras prints it, batch dimension first: (None, 28, 28, 1)."""
    return "(None, " + ", ".join(map(str, shape)) + ")"


def _rows(x):
    """x with every sample's features as rows: (n * rows, last dim); a view."""
    return x.reshape(-1, x.shape[-1])


class Layer:
    """Base class. Subclasses set `param_names` (and `buffer_names`), compute
    their output shape, create their arrays in `_build`, and compute in
    `forward` / `backward`; see the module docstring."""

    engine_kind = None       # the C engine's kind; None: trained op by op
    param_names = ()
    buffer_names = ()
    decayed_params = None    # the kernels the L2 penalty and weight decay apply to
                             # (None: the parameters with two or more dimensions)
    output_activation = "identity"  # what a fused loss (softmax/sigmoid) may absorb
    reads_indices = False    # its input is integer indices (Embedding)
    uses_mask = False        # forward and backward take the sequence's time-step mask
    random = False           # draws random masks: forward takes first_row (its rows' place
                             # in the batch), and the model calls advance() once per step

    def __init__(self):
        self.input_shape = None   # a sample's shape, once built
        self.output_shape = None

    @property
    def name(self):
        return type(self).__name__

    @property
    def built(self):
        return self.input_shape is not None

    @property
    def params(self):
        return [getattr(self, name) for name in self.param_names]

    @property
    def buffers(self):
        return [getattr(self, name) for name in self.buffer_names]

    def count_params(self):
        return sum(p.size for p in self.params) if self.built else 0

    def decayed(self):
        """Per parameter, whether the L2 penalty and weight decay apply to it."""
        if self.decayed_params is None:
            return [p.ndim >= 2 for p in self.params]
        return [name in self.decayed_params for name in self.param_names]

    def output_mask(self, x, mask):
        """The time-step mask of the output (Embedding(mask_zero) makes one); by
        default the input's, which the model drops once there is no time axis."""
        return mask

    def compute_output_shape(self, input_shape):
        """A sample's output shape for samples of `input_shape` (ValueError, naming
        the layer and the shapes, if it cannot take them). Default: unchanged."""
        return tuple(input_shape)

    def build(self, input_shape, dtype, rng):
        """Create the layer's arrays for samples of `input_shape` (an int: flat)."""
        input_shape = (input_shape,) if isinstance(input_shape, (int, np.integer)) else \
            tuple(int(d) for d in input_shape)
        output_shape = self.compute_output_shape(input_shape)
        self._build(input_shape, dtype, rng)
        self.input_shape, self.output_shape = input_shape, tuple(output_shape)

    def _build(self, input_shape, dtype, rng):
        """Create the parameter and buffer arrays (none by default)."""

    def unbuild(self):
        self.input_shape = self.output_shape = None
        for name in (*self.param_names, *self.buffer_names):
            setattr(self, name, None)

    def engine_spec(self):
        """The layer as the C engine takes it ({"kind", "attrs", "buffers", ...}),
        or None when it trains op by op."""
        if self.engine_kind is None:
            return None
        return {"kind": self.engine_kind, "attrs": self.engine_attrs(), "buffers": self.buffers}

    def engine_attrs(self):
        return {}

    def _refuse(self, input_shape, why):
        return ValueError(f"{self!r} cannot take samples of shape {shape_text(input_shape)}: "
                          f"{why}")

    def config(self):
        raise NotImplementedError


class Dense(Layer):
    """A fully connected layer: y = activation(x @ W + b).

    W has shape (fan_in, units) and b shape (units,), as in Keras. On a sequence
    (steps, features) it acts on every step (Keras's Dense on the last axis).
    kernel_initializer: a name from fusenn.initializers ("glorot_uniform",
    "he_normal", ...) or an initializer; by default He-uniform for relu and
    leaky_relu (keeps the activations' variance through rectifiers) and
    Glorot-uniform otherwise. bias_initializer: "zeros" by default.
    """

    engine_kind = "dense"
    param_names = ("W", "b")
    decayed_params = ("W",)

    def __init__(self, units, activation=None, kernel_initializer=None, bias_initializer="zeros"):
        super().__init__()
        self.units = _width(units, "units")
        self.activation = canonical_activation(activation)
        if kernel_initializer is None:
            kernel_initializer = ("he_uniform" if self.activation in ("relu", "leaky_relu")
                                  else "glorot_uniform")
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self.W = None
        self.b = None

    def __repr__(self):
        return f"Dense({self.units}, activation={self.activation!r})"

    @property
    def output_activation(self):
        return self.activation

    def compute_output_shape(self, input_shape):
        if len(input_shape) > 2:
            raise self._refuse(input_shape, "Dense takes features (n_features,) or a sequence "
                                            "(steps, features); put Flatten() before it")
        return (*input_shape[:-1], self.units)

    def _build(self, input_shape, dtype, rng):
        fan_in = input_shape[-1]
        W = self.kernel_initializer((fan_in, self.units), rng, dtype)
        b = self.bias_initializer((self.units,), rng, dtype)
        self.W = np.ascontiguousarray(W, dtype=dtype)
        self.b = np.ascontiguousarray(b, dtype=dtype)

    def engine_attrs(self):
        return {"units": self.units, "activation": self.activation}

    def forward(self, backend, x, training, logits=False):
        """act(x @ W + b); with logits=True the activation is skipped (fused losses).
        The cache is the pre-activation when the activation's derivative needs it."""
        act = "identity" if logits else self.activation
        rows = _rows(x)
        if act in NEEDS_Z:
            z = backend.dense_forward(rows, self.W, self.b, "identity")
            y, cache = backend.activation_forward(z, act), z
        else:
            y, cache = backend.dense_forward(rows, self.W, self.b, act), None
        return y.reshape(*x.shape[:-1], self.units), cache

    def backward(self, backend, x, y, cache, dy, need_dx, logits=False):
        act = "identity" if logits else self.activation
        dw, db, dx = backend.dense_backward(_rows(x), self.W, _rows(y), _rows(dy), act,
                                            need_dx=need_dx, z=cache)
        return (None if dx is None else dx.reshape(x.shape)), [dw, db]

    def config(self):
        return {"type": "Dense", "units": self.units, "activation": self.activation,
                # None for a user's callable: a loaded model gets its weights from the file
                "kernel_initializer": initializers.serialize(self.kernel_initializer),
                "bias_initializer": initializers.serialize(self.bias_initializer) or "zeros"}


class Dropout(Layer):
    """Inverted dropout: while training, each input is zeroed with probability
    `rate` and the others are scaled by 1 / (1 - rate); at inference it passes
    its input through unchanged (Keras and PyTorch semantics).

    Masks are a hash of (seed, training step, element), so training is
    reproducible with the model's seed and identical on any thread count. The
    seed is drawn from the model's generator when the model is built, unless
    given here.
    """

    engine_kind = "dropout"
    random = True

    def __init__(self, rate, seed=None):
        super().__init__()
        self.rate = _fraction(rate, "rate", 0.0, 1.0)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))
                                 or not 0 <= seed < 2**64):
            raise ValueError(f"seed must be an int in [0, 2**64) or None, got {seed!r}")
        self.seed = None if seed is None else int(seed)
        self._base_seed = self.seed
        # steps taken, shared with the C engine (it advances the counter in place)
        self.step_counter = np.zeros(1, dtype=np.uint64)

    def __repr__(self):
        return f"Dropout({self.rate})"

    # The model draws an unseeded layer's seed from a stream of its own (see
    # Sequential.build), so adding dropout does not change weight initialisation.

    def engine_attrs(self):
        return {"rate": self.rate}

    def engine_spec(self):
        return {**super().engine_spec(), "seed": self._base_seed, "counter": self.step_counter}

    def advance(self):
        """One training step done: the next one draws new masks."""
        self.step_counter[0] += 1

    def forward(self, backend, x, training, logits=False, first_row=0):
        """With first_row (a chunk of a batch starting at that row) the masks are
        those the whole batch would draw: the seed moves by the elements before it
        (mask bits hash (seed, element index), see csrc/layers/dropout.c)."""
        if not training or self.rate == 0:
            return x, None
        d = x[0].size
        seed = (backend.dropout_seed(self._base_seed, int(self.step_counter[0]))
                + first_row * d * _GOLDEN_GAMMA) % 2**64
        # a sample's elements are numbered in order, whatever its shape
        y = backend.dropout_forward(x.reshape(len(x), -1), self.rate, seed)
        return y.reshape(x.shape), seed

    def backward(self, backend, x, y, cache, dy, need_dx, logits=False):
        if cache is None:
            return dy, []
        return backend.dropout_backward(dy.reshape(len(dy), -1), self.rate, cache).reshape(dy.shape), []

    def config(self):
        return {"type": "Dropout", "rate": self.rate, "seed": self._base_seed}


class BatchNorm(Layer):
    """Batch normalisation (Ioffe and Szegedy) per feature, the last axis of a
    sample (the channels of an image, Keras's axis=-1):
    y = gamma (x - mean) / sqrt(var + eps) + beta.

    Training normalises with the batch's mean and (biased) variance over every
    row of the batch and updates the running statistics: running = momentum *
    running + (1 - momentum) * batch. Inference (predict, evaluate) uses the
    running statistics. Defaults are Keras's (momentum 0.99, eps 1e-3);
    PyTorch's momentum=0.1 is this momentum=0.9.
    """

    engine_kind = "batchnorm"
    param_names = ("gamma", "beta")
    decayed_params = ()
    buffer_names = ("running_mean", "running_var")

    def __init__(self, momentum=0.99, eps=1e-3):
        super().__init__()
        self.momentum = _fraction(momentum, "momentum", 0.0, 1.0, high_open=False)
        self.eps = finite_number(eps, "eps")
        if self.eps <= 0:
            raise ValueError(f"eps must be > 0, got {self.eps}")
        self.gamma = self.beta = self.running_mean = self.running_var = None

    def __repr__(self):
        return f"BatchNorm(momentum={self.momentum}, eps={self.eps})"

    def _build(self, input_shape, dtype, rng):
        features = input_shape[-1]
        self.gamma = np.ones(features, dtype=dtype)
        self.beta = np.zeros(features, dtype=dtype)
        self.running_mean = np.zeros(features, dtype=dtype)
        self.running_var = np.ones(features, dtype=dtype)

    def engine_attrs(self):
        return {"momentum": self.momentum, "eps": self.eps}

    def forward(self, backend, x, training, logits=False):
        rows = _rows(x)
        if not training:
            y = backend.batchnorm_forward_infer(rows, self.gamma, self.beta, self.running_mean,
                                                self.running_var, eps=self.eps)
            return y.reshape(x.shape), None
        y, mean, invstd = backend.batchnorm_forward_train(
            rows, self.gamma, self.beta, self.running_mean, self.running_var,
            momentum=self.momentum, eps=self.eps)
        return y.reshape(x.shape), (mean, invstd)

    def backward(self, backend, x, y, cache, dy, need_dx, logits=False):
        mean, invstd = cache
        dx, dgamma, dbeta = backend.batchnorm_backward(_rows(x), _rows(dy), self.gamma, mean,
                                                       invstd, need_dx=need_dx)
        return (None if dx is None else dx.reshape(x.shape)), [dgamma, dbeta]

    def config(self):
        return {"type": "BatchNorm", "momentum": self.momentum, "eps": self.eps}


# ---- images ---------------------------------------------------------------------------

def _pair(value, name):
    """An int or a pair of ints (height, width), each >= 1, as a pair."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (value, value)
    try:
        pair = tuple(value)
    except TypeError:
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}") from None
    if len(pair) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    return tuple(_width(v, name) for v in pair)


def _padding_mode(padding):
    if not isinstance(padding, str) or padding.lower() not in ("valid", "same"):
        raise ValueError(f"padding must be 'valid' or 'same', got {padding!r}")
    return padding.lower()


def window_padding(mode, sizes, kernel, strides, dilation=(1, 1)):
    """Keras's padding as ((top, bottom), (left, right)): none for "valid"; for
    "same" enough that the output has ceil(size / stride) positions, the odd cell
    at the bottom / right (as TensorFlow)."""
    if mode == "valid":
        return ((0, 0), (0, 0))
    pads = []
    for size, k, s, d in zip(sizes, kernel, strides, dilation):
        out = -(-size // s)
        total = max((out - 1) * s + d * (k - 1) + 1 - size, 0)
        pads.append((total // 2, total - total // 2))
    return tuple(pads)


def _window_output(layer, input_shape, kernel, strides, padding, dilation=(1, 1)):
    """The output height and width of a window layer, or a ValueError naming it."""
    if len(input_shape) != 3:
        raise layer._refuse(input_shape, "it takes images (height, width, channels)")
    out = []
    for size, k, s, p, d in zip(input_shape[:2], kernel, strides, padding, dilation):
        span = d * (k - 1) + 1
        if size + p[0] + p[1] < span:
            raise layer._refuse(input_shape, f"its window ({kernel[0]}x{kernel[1]}, dilation "
                                             f"{dilation[0]}x{dilation[1]}) is larger than the "
                                             f"padded image")
        out.append((size + p[0] + p[1] - span) // s + 1)
    return tuple(out)


def _flat_pads(padding):
    (top, bottom), (left, right) = padding
    return {"pad_top": top, "pad_bottom": bottom, "pad_left": left, "pad_right": right}


class Conv2D(Layer):
    """A 2-D convolution over images (channels last, as Keras):
    y[oh, ow, :] = activation(sum over the window of x * kernel + bias).

    kernel has shape (kernel_h, kernel_w, channels_in, filters) and bias
    (filters,), as Keras's. strides, dilation_rate: an int or a pair;
    padding "valid" (no padding) or "same" (outputs ceil(size / stride), the odd
    padding cell at the bottom / right, as Keras). kernel_initializer: by
    default He-uniform for relu and leaky_relu and Glorot-uniform otherwise
    (fan in = kernel_h kernel_w channels_in, as Keras).
    """

    engine_kind = "conv2d"
    decayed_params = ("kernel",)

    def __init__(self, filters, kernel_size, strides=1, padding="valid", dilation_rate=1,
                 activation=None, use_bias=True, kernel_initializer=None,
                 bias_initializer="zeros"):
        super().__init__()
        self.filters = _width(filters, "filters")
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.strides = _pair(strides, "strides")
        self.padding = _padding_mode(padding)
        self.dilation_rate = _pair(dilation_rate, "dilation_rate")
        self.activation = canonical_activation(activation)
        self.use_bias = bool(use_bias)
        if kernel_initializer is None:
            kernel_initializer = ("he_uniform" if self.activation in ("relu", "leaky_relu")
                                  else "glorot_uniform")
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self.param_names = ("kernel", "bias") if self.use_bias else ("kernel",)
        self.kernel = self.bias = None
        self.pads = None  # ((top, bottom), (left, right)), once built

    def __repr__(self):
        return (f"Conv2D({self.filters}, {self.kernel_size}, strides={self.strides}, "
                f"padding={self.padding!r}, activation={self.activation!r})")

    @property
    def output_activation(self):
        return self.activation

    def _geometry(self, input_shape):
        pads = window_padding(self.padding, input_shape[:2], self.kernel_size, self.strides,
                              self.dilation_rate)
        out = _window_output(self, input_shape, self.kernel_size, self.strides, pads,
                             self.dilation_rate)
        return pads, out

    def compute_output_shape(self, input_shape):
        return (*self._geometry(input_shape)[1], self.filters)

    def _build(self, input_shape, dtype, rng):
        shape = (*self.kernel_size, input_shape[2], self.filters)
        self.kernel = np.ascontiguousarray(self.kernel_initializer(shape, rng, dtype), dtype=dtype)
        if self.use_bias:
            self.bias = np.ascontiguousarray(self.bias_initializer((self.filters,), rng, dtype),
                                             dtype=dtype)
        self.pads = self._geometry(input_shape)[0]

    def unbuild(self):
        super().unbuild()
        self.pads = None

    def engine_attrs(self):
        return {"filters": self.filters, "kernel_h": self.kernel_size[0],
                "kernel_w": self.kernel_size[1], "stride_h": self.strides[0],
                "stride_w": self.strides[1], "dilation_h": self.dilation_rate[0],
                "dilation_w": self.dilation_rate[1], **_flat_pads(self.pads),
                "use_bias": int(self.use_bias), "activation": self.activation}

    def _window(self):
        return dict(strides=self.strides, padding=self.pads, dilation=self.dilation_rate)

    def forward(self, backend, x, training, logits=False):
        act = "identity" if logits else self.activation
        if act in NEEDS_Z:
            z = backend.conv2d_forward(x, self.kernel, self.bias, activation="identity",
                                       **self._window())
            return backend.activation_forward(_rows(z), act).reshape(z.shape), z
        return backend.conv2d_forward(x, self.kernel, self.bias, activation=act,
                                      **self._window()), None

    def backward(self, backend, x, y, cache, dy, need_dx, logits=False):
        act = "identity" if logits else self.activation
        dw, db, dx = backend.conv2d_backward(x, self.kernel, y, dy, activation=act,
                                             need_dx=need_dx, z=cache, bias=self.use_bias,
                                             **self._window())
        return dx, [dw, db] if self.use_bias else [dw]

    def config(self):
        return {"type": "Conv2D", "filters": self.filters, "kernel_size": list(self.kernel_size),
                "strides": list(self.strides), "padding": self.padding,
                "dilation_rate": list(self.dilation_rate), "activation": self.activation,
                "use_bias": self.use_bias,
                "kernel_initializer": initializers.serialize(self.kernel_initializer),
                "bias_initializer": initializers.serialize(self.bias_initializer) or "zeros"}


class _Pooling2D(Layer):
    """Max or average pooling over windows of pool_size, strides apart (default:
    pool_size, as Keras), each channel on its own. padding "same" pads as Conv2D;
    padded cells are never a maximum and are left out of averages (Keras)."""

    engine_kind = "pool2d"
    mode = None

    def __init__(self, pool_size=2, strides=None, padding="valid"):
        super().__init__()
        self.pool_size = _pair(pool_size, "pool_size")
        self.strides = self.pool_size if strides is None else _pair(strides, "strides")
        self.padding = _padding_mode(padding)
        self.pads = None

    def __repr__(self):
        return (f"{type(self).__name__}(pool_size={self.pool_size}, strides={self.strides}, "
                f"padding={self.padding!r})")

    def _geometry(self, input_shape):
        pads = window_padding(self.padding, input_shape[:2], self.pool_size, self.strides)
        return pads, _window_output(self, input_shape, self.pool_size, self.strides, pads)

    def compute_output_shape(self, input_shape):
        return (*self._geometry(input_shape)[1], input_shape[2])

    def _build(self, input_shape, dtype, rng):
        self.pads = self._geometry(input_shape)[0]

    def unbuild(self):
        super().unbuild()
        self.pads = None

    def engine_attrs(self):
        return {"mode": self.mode, "pool_h": self.pool_size[0], "pool_w": self.pool_size[1],
                "stride_h": self.strides[0], "stride_w": self.strides[1], **_flat_pads(self.pads)}

    def _window(self):
        return dict(pool_size=self.pool_size, strides=self.strides, padding=self.pads,
                    mode=self.mode)

    def forward(self, backend, x, training, logits=False):
        return backend.pool2d_forward(x, **self._window())

    def backward(self, backend, x, y, cache, dy, need_dx, logits=False):
        return backend.pool2d_backward(dy, x.shape, cache, **self._window()), []

    def config(self):
        return {"type": type(self).__name__, "pool_size": list(self.pool_size),
                "strides": list(self.strides), "padding": self.padding}


class MaxPooling2D(_Pooling2D):
    __doc__ = "Max pooling of images. " + _Pooling2D.__doc__
    mode = "max"


class AveragePooling2D(_Pooling2D):
    __doc__ = "Average pooling of images. " + _Pooling2D.__doc__
    mode = "avg"


class _GlobalPooling(Layer):
    """The mean (or max) of each channel over all positions of a sample: images
    (height, width, channels) or sequences (steps, features) -> (channels,)."""

    engine_kind = "global_pool"
    mode = None

    def __repr__(self):
        return f"{type(self).__name__}()"

    def compute_output_shape(self, input_shape):
        if len(input_shape) < 2:
            raise self._refuse(input_shape, "it pools images or sequences; the input is "
                                            "already flat")
        return (input_shape[-1],)

    def engine_attrs(self):
        return {"mode": self.mode}

    def forward(self, backend, x, training, logits=False):
        return backend.global_pool_forward(x, self.mode), None

    def backward(self, backend, x, y, cache, dy, need_dx, logits=False):
        return backend.global_pool_backward(x, dy, self.mode), []

    def config(self):
        return {"type": type(self).__name__}


class GlobalAveragePooling2D(_GlobalPooling):
    __doc__ = _GlobalPooling.__doc__
    mode = "avg"


class GlobalMaxPooling2D(_GlobalPooling):
    __doc__ = _GlobalPooling.__doc__ + " The gradient goes to each channel's first maximum."
    mode = "max"


class _GlobalPooling1D(_GlobalPooling):
    """Over the steps of a sequence (steps, features) -> (features,): with a
    time-step mask (Embedding(mask_zero=True)), over its real steps only, as Keras."""

    uses_mask = True

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 2:
            raise self._refuse(input_shape, "it pools sequences (steps, features)")
        return (input_shape[-1],)

    def forward(self, backend, x, training, logits=False, mask=None):
        return backend.global_pool_forward(x, self.mode, mask=mask), None

    def backward(self, backend, x, y, cache, dy, need_dx, logits=False, mask=None):
        return backend.global_pool_backward(x, dy, self.mode, mask=mask), []


class GlobalAveragePooling1D(_GlobalPooling1D):
    __doc__ = _GlobalPooling1D.__doc__
    mode = "avg"


class GlobalMaxPooling1D(_GlobalPooling1D):
    __doc__ = _GlobalPooling1D.__doc__ + " The gradient goes to each feature's first maximum."
    mode = "max"


class Reshape(Layer):
    """Gives each sample a new shape of the same size (row-major order, as NumPy's
    reshape); one dimension may be -1 (inferred). No copy is made."""

    engine_kind = "reshape"

    def __init__(self, target_shape):
        super().__init__()
        try:
            target = tuple(target_shape)
        except TypeError:
            raise TypeError(f"target_shape must be a tuple of ints, got {target_shape!r}") from None
        ints = all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) for d in target)
        if (not ints or not 1 <= len(target) <= 4 or sum(d == -1 for d in target) > 1
                or not all(d == -1 or d >= 1 for d in target)):
            raise ValueError(f"target_shape must be 1 to 4 positive ints (one may be -1), got "
                             f"{target_shape!r}")
        self.target_shape = tuple(int(d) for d in target)

    def __repr__(self):
        return f"Reshape({self.target_shape})"

    def compute_output_shape(self, input_shape):
        size = int(np.prod(input_shape))
        known = int(np.prod([d for d in self.target_shape if d != -1]))
        if (-1 in self.target_shape and size % known) or (
                -1 not in self.target_shape and known != size):
            raise self._refuse(input_shape, f"its {size} values per sample do not fill "
                                            f"{self.target_shape}")
        return tuple(size // known if d == -1 else d for d in self.target_shape)

    def engine_attrs(self):
        dims = (*self.output_shape, 0, 0, 0)[:4]
        return {"rank": len(self.output_shape), "dim0": dims[0], "dim1": dims[1],
                "dim2": dims[2], "dim3": dims[3]}

    def forward(self, backend, x, training, logits=False):
        return x.reshape(len(x), *self.output_shape), None

    def backward(self, backend, x, y, cache, dy, need_dx, logits=False):
        return dy.reshape(x.shape), []

    def config(self):
        return {"type": "Reshape", "target_shape": list(self.target_shape)}


class Flatten(Reshape):
    """Each sample as one row of features, row-major over (height, width,
    channels), as Keras's Flatten."""

    def __init__(self):
        super().__init__((-1,))

    def __repr__(self):
        return "Flatten()"

    def config(self):
        return {"type": "Flatten"}


# ---- sequences ------------------------------------------------------------------------

class Embedding(Layer):
    """A learned vector for each of input_dim indices: integer sequences (steps,)
    become (steps, output_dim), y[t] = embeddings[x[t]] (Keras's Embedding).

    mask_zero: index 0 is padding: the recurrent layers after it skip those steps
    (the state carries over them) and the loss leaves them out, so one batch can
    hold sequences of different lengths. The gradient adds up repeated indices in
    a fixed order. An index outside [0, input_dim) is refused, naming the largest."""

    engine_kind = "embedding"
    param_names = ("embeddings",)
    decayed_params = ("embeddings",)
    reads_indices = True

    def __init__(self, input_dim, output_dim, embeddings_initializer="uniform", mask_zero=False):
        super().__init__()
        self.input_dim = _width(input_dim, "input_dim")
        self.output_dim = _width(output_dim, "output_dim")
        self.embeddings_initializer = initializers.get(embeddings_initializer)
        self.mask_zero = bool(mask_zero)
        self.embeddings = None

    def __repr__(self):
        return f"Embedding({self.input_dim}, {self.output_dim}, mask_zero={self.mask_zero})"

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 1:
            raise self._refuse(input_shape, "it takes a sequence of integer indices (steps,) "
                                            "per sample")
        return (input_shape[0], self.output_dim)

    def _build(self, input_shape, dtype, rng):
        self.embeddings = np.ascontiguousarray(
            self.embeddings_initializer((self.input_dim, self.output_dim), rng, dtype),
            dtype=dtype)

    def engine_attrs(self):
        return {"input_dim": self.input_dim, "output_dim": self.output_dim,
                "mask_zero": int(self.mask_zero)}

    def output_mask(self, x, mask):
        return x != 0 if self.mask_zero else mask

    def forward(self, backend, x, training, logits=False):
        return backend.embedding_forward(x, self.embeddings), None

    def backward(self, backend, x, y, cache, dy, need_dx, logits=False):
        return None, [backend.embedding_backward(x, dy, self.embeddings.shape)]

    def config(self):
        return {"type": "Embedding", "input_dim": self.input_dim, "output_dim": self.output_dim,
                "embeddings_initializer": initializers.serialize(self.embeddings_initializer)
                or "uniform", "mask_zero": self.mask_zero}


class _Recurrent(Layer):
    """A recurrent layer over sequences (steps, features): the last state (units,),
    or every step's state (steps, units) with return_sequences; go_backwards reads
    the steps in reverse (and returns them so). Keras's weights: kernel (features,
    G units), recurrent_kernel (units, G units), bias; Glorot-uniform kernel,
    orthogonal recurrent kernel, zero bias. With a time-step mask the state
    carries over masked steps."""

    param_names = ("kernel", "recurrent_kernel", "bias")
    decayed_params = ("kernel", "recurrent_kernel")
    uses_mask = True
    gates = 1

    def __init__(self, units, activation="tanh", return_sequences=False, go_backwards=False):
        super().__init__()
        self.units = _width(units, "units")
        self.activation = canonical_activation(activation)
        if self.activation == "softmax":
            raise ValueError("a recurrent layer's activation must be elementwise, not softmax")
        self.return_sequences = bool(return_sequences)
        self.go_backwards = bool(go_backwards)
        self.kernel = self.recurrent_kernel = self.bias = None

    def __repr__(self):
        return (f"{type(self).__name__}({self.units}, return_sequences={self.return_sequences}"
                f"{', go_backwards=True' if self.go_backwards else ''})")

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 2:
            raise self._refuse(input_shape, "it takes sequences (steps, features); an image "
                                            "(H, W, C) can be read row by row after "
                                            "Reshape((H, W * C))")
        return (input_shape[0], self.units) if self.return_sequences else (self.units,)

    def _bias(self, dtype):
        return np.zeros(self.gates * self.units, dtype=dtype)

    def _build(self, input_shape, dtype, rng):
        G, u = self.gates, self.units
        glorot, orthogonal = initializers.get("glorot_uniform"), initializers.get("orthogonal")
        self.kernel = np.ascontiguousarray(glorot((input_shape[1], G * u), rng, dtype))
        self.recurrent_kernel = np.ascontiguousarray(orthogonal((u, G * u), rng, dtype))
        self.bias = np.ascontiguousarray(self._bias(dtype))

    def engine_attrs(self):
        return {"units": self.units, "activation": self.activation,
                "return_sequences": int(self.return_sequences),
                "go_backwards": int(self.go_backwards)}

    def _options(self):
        return dict(activation=self.activation, return_sequences=self.return_sequences,
                    go_backwards=self.go_backwards)

    def forward(self, backend, x, training, logits=False, mask=None):
        y = getattr(backend, f"{self.engine_kind}_forward")(
            x, self.kernel, self.recurrent_kernel, self.bias, mask=mask, **self._options())
        return y, None

    def backward(self, backend, x, y, cache, dy, need_dx, logits=False, mask=None):
        dx, *grads = getattr(backend, f"{self.engine_kind}_backward")(
            x, self.kernel, self.recurrent_kernel, self.bias, dy, mask=mask, need_dx=need_dx,
            **self._options())
        return dx, grads

    def config(self):
        return {"type": type(self).__name__, "units": self.units, "activation": self.activation,
                "return_sequences": self.return_sequences, "go_backwards": self.go_backwards}


class SimpleRNN(_Recurrent):
    """h_t = activation(x_t W + h_{t-1} U + b): the plain recurrent layer (Keras's SimpleRNN)."""

    engine_kind = "simple_rnn"
    __doc__ += _Recurrent.__doc__


class _Gated(_Recurrent):
    def __init__(self, units, activation="tanh", recurrent_activation="sigmoid",
                 return_sequences=False, go_backwards=False):
        super().__init__(units, activation, return_sequences, go_backwards)
        self.recurrent_activation = canonical_activation(recurrent_activation)
        if self.recurrent_activation == "softmax":
            raise ValueError("a recurrent_activation must be elementwise, not softmax")

    def engine_attrs(self):
        return {**super().engine_attrs(), "recurrent_activation": self.recurrent_activation}

    def _options(self):
        return {**super()._options(), "recurrent_activation": self.recurrent_activation}

    def config(self):
        return {**super().config(), "recurrent_activation": self.recurrent_activation}


class GRU(_Gated):
    """The gated recurrent unit, Keras's GRU: gates z (update), r (reset), h in that
    order in the kernels. reset_after=True (Keras's and PyTorch's form) applies the
    reset gate after the recurrent product, with a bias (2, 3 units): [input bias,
    recurrent bias]; reset_after=False before it, with a bias (3 units,).
        z = rec(x W_z + h U_z + b_z);  r = rec(x W_r + h U_r + b_r)
        c = act(x W_h + b_h + r (h U_h + b'_h));  h = z h_prev + (1 - z) c"""

    engine_kind = "gru"
    gates = 3

    def __init__(self, units, activation="tanh", recurrent_activation="sigmoid",
                 return_sequences=False, go_backwards=False, reset_after=True):
        super().__init__(units, activation, recurrent_activation, return_sequences, go_backwards)
        self.reset_after = bool(reset_after)

    def _bias(self, dtype):
        shape = (2, 3 * self.units) if self.reset_after else (3 * self.units,)
        return np.zeros(shape, dtype=dtype)

    def engine_attrs(self):
        return {**super().engine_attrs(), "reset_after": int(self.reset_after)}

    def _options(self):
        return {**super()._options(), "reset_after": self.reset_after}

    def config(self):
        return {**super().config(), "reset_after": self.reset_after}


class LSTM(_Gated):
    """Long short-term memory, Keras's LSTM: gates i, f, c, o in that order,
        i = rec(x W_i + h U_i + b_i);  f = rec(x W_f + h U_f + b_f)
        g = act(x W_c + h U_c + b_c);  o = rec(x W_o + h U_o + b_o)
        c = f c_prev + i g;  h = o act(c)
    unit_forget_bias: the forget gate's bias starts at 1 (Keras's default)."""

    engine_kind = "lstm"
    gates = 4

    def __init__(self, units, activation="tanh", recurrent_activation="sigmoid",
                 return_sequences=False, go_backwards=False, unit_forget_bias=True):
        super().__init__(units, activation, recurrent_activation, return_sequences, go_backwards)
        self.unit_forget_bias = bool(unit_forget_bias)

    def _bias(self, dtype):
        bias = np.zeros(4 * self.units, dtype=dtype)
        if self.unit_forget_bias:
            bias[self.units:2 * self.units] = 1
        return bias

    def config(self):
        return {**super().config(), "unit_forget_bias": self.unit_forget_bias}


LAYER_TYPES = {cls.__name__: cls for cls in (
    Dense, Dropout, BatchNorm, Conv2D, MaxPooling2D, AveragePooling2D, GlobalAveragePooling2D,
    GlobalMaxPooling2D, GlobalAveragePooling1D, GlobalMaxPooling1D, Reshape, Flatten, Embedding,
    SimpleRNN, GRU, LSTM)}


def layer_from_config(spec):
    """The layer a config() dict describes (used by fusenn.load)."""
    spec = dict(spec)
    kind = spec.pop("type", "Dense")  # files from fusenn 0.1 hold only Dense layers
    if kind not in LAYER_TYPES:
        raise ValueError(f"unknown layer type {kind!r}")
    return LAYER_TYPES[kind](**spec)
