"""Layers: Dense (fully connected), Dropout and BatchNorm.

Every layer computes through the model's backend (fusenn.ops, the C kernels,
or fusenn.reference, the NumPy oracle) with the same protocol:

    build(fan_in, dtype, rng)                 draw weights for `fan_in` inputs
    forward(backend, x, training, logits)     -> (y, cache)
    backward(backend, x, y, cache, dy, need_dx) -> (dx or None, [grad per param])
    params                                    trainable arrays, live
    buffers                                   non-trainable arrays saved with the
                                              model (BatchNorm's running statistics)

The C training engine (csrc/plan.c) runs the same layers from descriptors
(`engine_layer` in model.py), through the same kernels in the same order, so
both paths give the same bits.
"""

import math

import numpy as np

from . import initializers
from .reference import ACTIVATIONS, NEEDS_Z

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
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not (low <= value and (value < high if high_open else value <= high)):
        raise ValueError(f"{name} must lie in [{low}, {high}{')' if high_open else ']'}, got {value}")
    return value


class Layer:
    """Base class. Subclasses set `units` once built (the output width)."""

    units = None
    param_names = ()
    buffer_names = ()

    def __init__(self):
        self.input_dim = None

    @property
    def built(self):
        return self.input_dim is not None

    @property
    def params(self):
        return [getattr(self, name) for name in self.param_names]

    @property
    def buffers(self):
        return [getattr(self, name) for name in self.buffer_names]

    def count_params(self):
        return sum(p.size for p in self.params) if self.built else 0

    def unbuild(self):
        self.input_dim = None

    def config(self):
        raise NotImplementedError


class Dense(Layer):
    """A fully connected layer: y = activation(x @ W + b).

    W has shape (fan_in, units) and b shape (units,), as in Keras.
    kernel_initializer: a name from fusenn.initializers ("glorot_uniform",
    "he_normal", ...) or an initializer; by default He-uniform for relu and
    leaky_relu (keeps the activations' variance through rectifiers) and
    Glorot-uniform otherwise. bias_initializer: "zeros" by default.
    """

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

    def build(self, fan_in, dtype, rng):
        W = self.kernel_initializer((fan_in, self.units), rng, dtype)
        b = self.bias_initializer((self.units,), rng, dtype)
        self.W = np.ascontiguousarray(W, dtype=dtype)
        self.b = np.ascontiguousarray(b, dtype=dtype)
        self.input_dim = fan_in

    def unbuild(self):
        super().unbuild()
        self.W = self.b = None

    def forward(self, backend, x, training, logits=False):
        """act(x @ W + b); with logits=True the activation is skipped (fused losses).
        The cache is the pre-activation when the activation's derivative needs it."""
        act = "identity" if logits else self.activation
        if act in NEEDS_Z:
            z = backend.dense_forward(x, self.W, self.b, "identity")
            return backend.activation_forward(z, act), z
        return backend.dense_forward(x, self.W, self.b, act), None

    def backward(self, backend, x, y, cache, dy, need_dx, logits=False):
        act = "identity" if logits else self.activation
        dw, db, dx = backend.dense_backward(x, self.W, y, dy, act, need_dx=need_dx, z=cache)
        return dx, [dw, db]

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

    def build(self, fan_in, dtype, rng):
        if self.seed is None:
            self._base_seed = int(rng.integers(0, 2**63))
        self.units = fan_in
        self.input_dim = fan_in

    def unbuild(self):
        super().unbuild()
        self.units = None

    def forward(self, backend, x, training, logits=False):
        if not training or self.rate == 0:
            return x, None
        seed = backend.dropout_seed(self._base_seed, int(self.step_counter[0]))
        self.step_counter[0] += 1
        return backend.dropout_forward(x, self.rate, seed), seed

    def backward(self, backend, x, y, cache, dy, need_dx, logits=False):
        if cache is None:
            return dy, []
        return backend.dropout_backward(dy, self.rate, cache), []

    def config(self):
        return {"type": "Dropout", "rate": self.rate, "seed": self._base_seed}


class BatchNorm(Layer):
    """Batch normalisation of dense activations (Ioffe and Szegedy), per feature:
    y = gamma (x - mean) / sqrt(var + eps) + beta.

    Training normalises with the batch's mean and (biased) variance and updates
    the running statistics: running = momentum * running + (1 - momentum) *
    batch. Inference (predict, evaluate) uses the running statistics. Defaults
    are Keras's (momentum 0.99, eps 1e-3); PyTorch's momentum=0.1 is this
    momentum=0.9.
    """

    param_names = ("gamma", "beta")
    buffer_names = ("running_mean", "running_var")

    def __init__(self, momentum=0.99, eps=1e-3):
        super().__init__()
        self.momentum = _fraction(momentum, "momentum", 0.0, 1.0, high_open=False)
        self.eps = _fraction(eps, "eps", 0.0, math.inf)
        if self.eps <= 0:
            raise ValueError(f"eps must be > 0, got {self.eps}")
        self.gamma = self.beta = self.running_mean = self.running_var = None

    def __repr__(self):
        return f"BatchNorm(momentum={self.momentum}, eps={self.eps})"

    def build(self, fan_in, dtype, rng):
        self.gamma = np.ones(fan_in, dtype=dtype)
        self.beta = np.zeros(fan_in, dtype=dtype)
        self.running_mean = np.zeros(fan_in, dtype=dtype)
        self.running_var = np.ones(fan_in, dtype=dtype)
        self.units = fan_in
        self.input_dim = fan_in

    def unbuild(self):
        super().unbuild()
        self.units = None
        self.gamma = self.beta = self.running_mean = self.running_var = None

    def forward(self, backend, x, training, logits=False):
        if not training:
            return backend.batchnorm_forward_infer(x, self.gamma, self.beta, self.running_mean,
                                                   self.running_var, eps=self.eps), None
        y, mean, invstd = backend.batchnorm_forward_train(
            x, self.gamma, self.beta, self.running_mean, self.running_var,
            momentum=self.momentum, eps=self.eps)
        return y, (mean, invstd)

    def backward(self, backend, x, y, cache, dy, need_dx, logits=False):
        mean, invstd = cache
        dx, dgamma, dbeta = backend.batchnorm_backward(x, dy, self.gamma, mean, invstd,
                                                       need_dx=need_dx)
        return dx, [dgamma, dbeta]

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
