"""Layers: the fully connected `Dense` layer and its weight initialisation."""

import math

import numpy as np

from .reference import ACTIVATIONS

__all__ = ["Dense", "canonical_activation"]

# Keras calls identity "linear"; None means no activation in both Keras and PyTorch.
# silu is PyTorch's name for swish.
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
        f"(or 'linear' / None for identity)"
    )


class Dense:
    """A fully connected layer: y = activation(x @ W + b).

    W has shape (fan_in, units) and b shape (units,), as in Keras. Weights are
    drawn when the model is built: He-uniform for relu and leaky_relu (keeps
    the activations' variance through rectifiers), Glorot-uniform otherwise;
    biases start at zero.
    """

    def __init__(self, units, activation=None):
        if isinstance(units, bool) or not isinstance(units, (int, np.integer)):
            raise TypeError(f"units must be a positive int, got {units!r}")
        if not 1 <= units <= 2**31 - 1:
            raise ValueError(f"units must be a positive int below 2**31, got {units}")
        self.units = int(units)
        self.activation = canonical_activation(activation)
        self.W = None
        self.b = None

    def __repr__(self):
        return f"Dense({self.units}, activation={self.activation!r})"

    @property
    def built(self):
        return self.W is not None

    def build(self, fan_in, dtype, rng):
        """Draw the weights for `fan_in` inputs from the generator `rng`."""
        if self.activation in ("relu", "leaky_relu"):
            limit = math.sqrt(6.0 / fan_in)
        else:
            limit = math.sqrt(6.0 / (fan_in + self.units))
        # Drawn in float64 so float32 and float64 models with one seed agree.
        self.W = rng.uniform(-limit, limit, size=(fan_in, self.units)).astype(dtype)
        self.b = np.zeros(self.units, dtype=dtype)

    def config(self):
        return {"type": "Dense", "units": self.units, "activation": self.activation}
