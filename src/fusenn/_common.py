"""Names, constants and argument checks shared by both backends and the model API.

The C backend (fusenn.ops) and the NumPy reference (fusenn.reference) both
import from here and never from each other; the model modules take their
number checks from here rather than from a backend.
"""

import math

import numpy as np

__all__ = ["ACTIVATIONS", "NEEDS_Z", "LEAKY_RELU_SLOPE", "ELU_ALPHA", "finite_number",
           "huber_delta", "positive_int"]

# The activations, by the names the model API and both backends use (the C
# binding maps each to its enum value in csrc/fusenn.h).
ACTIVATIONS = ("identity", "sigmoid", "tanh", "relu", "leaky_relu", "softmax",
               "gelu", "gelu_tanh", "elu", "softplus", "swish")
# Activations whose derivative is not a function of their output: their
# backward pass needs the pre-activation z as well.
NEEDS_Z = frozenset({"gelu", "gelu_tanh", "swish"})
LEAKY_RELU_SLOPE = 0.01  # FUSENN_LEAKY_RELU_SLOPE
ELU_ALPHA = 1.0          # FUSENN_ELU_ALPHA

MAX_SIZE = 2**31 - 1  # largest width, size, batch_size or epoch count accepted


def finite_number(value, name):
    """A hyperparameter as a finite float, or an error naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    try:
        value = float(value)
    except OverflowError:
        raise ValueError(f"{name} is far too large") from None
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def huber_delta(delta):
    """Huber's delta as a float > 0, or an error naming it."""
    delta = finite_number(delta, "delta")
    if not delta > 0:
        raise ValueError(f"delta must be > 0, got {delta}")
    return delta


def positive_int(value, name, allow_zero=False):
    """An int >= 1 (>= 0 with allow_zero) and at most MAX_SIZE, or an error naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < (0 if allow_zero else 1):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '>= 1'}, got {value}")
    if value > MAX_SIZE:
        raise ValueError(f"{name} must be at most {MAX_SIZE}, got {value}")
    return int(value)
