"""Layers: Dense (fully connected), Dropout and BatchNorm.

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

__all__ = ["Layer", "Dense", "Dropout", "BatchNorm", "canonical_activation", "layer_from_config"]

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
    output_activation = "identity"  # what a fused loss (softmax/sigmoid) may absorb

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

    def forward(self, backend, x, training, logits=False):
        if not training or self.rate == 0:
            return x, None
        seed = backend.dropout_seed(self._base_seed, int(self.step_counter[0]))
        self.step_counter[0] += 1
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


LAYER_TYPES = {"Dense": Dense, "Dropout": Dropout, "BatchNorm": BatchNorm}


def layer_from_config(spec):
    """The layer a config() dict describes (used by fusenn.load)."""
    spec = dict(spec)
    kind = spec.pop("type", "Dense")  # files from fusenn 0.1 hold only Dense layers
    if kind not in LAYER_TYPES:
        raise ValueError(f"unknown layer type {kind!r}")
    return LAYER_TYPES[kind](**spec)
