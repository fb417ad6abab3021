"""Losses, and how each pairs with the model's output activation.

cross_entropy and binary_cross_entropy are computed from the last layer's
logits by the fused kernels (softmax + cross-entropy, sigmoid + binary
cross-entropy): numerically stable, and the gradient with respect to the logits
is simply (p - target) / batch. They therefore require the output activation
to be the matching softmax / sigmoid (predict returns probabilities) or
identity (the outputs are logits, as with PyTorch's CrossEntropyLoss and
BCEWithLogitsLoss). The regression losses mse, mae and huber work with any
output activation; Huber's delta is set with fusenn.losses.Huber(delta=...).
poisson (PyTorch's PoissonNLLLoss with log_input=True) reads an identity
output as the log of the rate, exp(a) - t a per element for counts t >= 0:
predict returns log-rates, whose exp is the predicted mean.
"""

import numpy as np

from ._common import huber_delta

__all__ = ["LOSSES", "Loss", "Huber", "get_loss"]


class Loss:
    def __init__(self, name, engine, fused_kernel, output_activations, targets, kernel=None):
        self.name = name
        self.engine = engine                      # the C engine's loss of that name, or None
        self.fused_kernel = fused_kernel          # backend function name, or None
        self.output_activations = output_activations  # allowed, or None for any
        self.targets = targets                    # "labels" or "values"
        self.kernel = kernel                      # backend function of a non-fused loss

    def __repr__(self):
        return f"Loss({self.name!r})"

    def config(self):
        """What get_loss needs to rebuild this loss (JSON-safe): its name."""
        return self.name

    def _kernel_args(self):
        """Extra positional arguments of the backend function after (a, t)."""
        return ()

    def compute(self, backend, a, t, sample_weight=None):
        """(loss, dL/da) of a non-fused loss for outputs a and targets t, through
        the backend (fusenn.ops or fusenn.reference)."""
        if self.kernel is None:
            raise ValueError(f"loss {self.name!r} is fused with the output activation; "
                             f"call backend.{self.fused_kernel} on the logits")
        return getattr(backend, self.kernel)(a, t, *self._kernel_args(),
                                             sample_weight=sample_weight)

    def check_output_activation(self, activation):
        if self.output_activations is not None and activation not in self.output_activations:
            allowed = " or ".join(repr(a) for a in self.output_activations)
            raise ValueError(
                f"loss {self.name!r} needs the last layer's activation to be {allowed}, "
                f"got {activation!r}"
            )

    @property
    def has_accuracy(self):
        return self.fused_kernel is not None

    def correct(self, p, y):
        """Correct predictions from probabilities p: rows whose argmax is the label
        (cross-entropy), outputs on the right side of 0.5 (binary); 0 for regression."""
        if self.targets == "labels":
            return int(np.count_nonzero(p.argmax(axis=1) == y))
        if self.fused_kernel is not None:
            return int(np.count_nonzero((p > 0.5) == (y > 0.5)))
        return 0

    def accuracy(self, correct, n, k):
        """Accuracy from a count of correct predictions over n samples (or rows) of k
        outputs (0 when there are none: every step masked)."""
        total = n if self.targets == "labels" else n * k
        return correct / total if total else 0.0


LOSSES = {
    "cross_entropy": Loss("cross_entropy", "cross_entropy", "softmax_cross_entropy",
                          ("softmax", "identity"), "labels"),
    "binary_cross_entropy": Loss("binary_cross_entropy", "binary_cross_entropy",
                                 "sigmoid_binary_cross_entropy", ("sigmoid", "identity"),
                                 "values"),
    "mse": Loss("mse", "mse", None, None, "values", "mse"),
    "mae": Loss("mae", "mae", None, None, "values", "mae"),
    "poisson": Loss("poisson", "poisson", None, ("identity",), "values", "poisson"),
}
# Keras' and PyTorch's names for the same losses.
_ALIASES = {
    "sparse_categorical_crossentropy": "cross_entropy",
    "categorical_crossentropy": "cross_entropy",
    "crossentropy": "cross_entropy",
    "binary_crossentropy": "binary_cross_entropy",
    "bce": "binary_cross_entropy",
    "mean_squared_error": "mse",
    "mean_absolute_error": "mae",
    "l1": "mae",
    "huber_loss": "huber",
}


class Huber(Loss):
    """The Huber loss (Keras's Huber, PyTorch's HuberLoss): per output, with
    d = prediction - target, d^2 / 2 where |d| <= delta and delta (|d| - delta / 2)
    beyond; the mean over all outputs. delta must be a finite number > 0."""

    def __init__(self, delta=1.0):
        super().__init__("huber", "huber", None, None, "values", "huber")
        self.delta = huber_delta(delta)

    def __repr__(self):
        return f"Huber(delta={self.delta!r})"

    def config(self):
        return {"name": self.name, "delta": self.delta}

    def _kernel_args(self):
        return (self.delta,)


LOSSES["huber"] = Huber()


def get_loss(loss):
    """A Loss from an instance, a name (or alias) or a saved config: a name or a
    dict {"name": ..., plus parameters such as "delta" for huber}."""
    if isinstance(loss, Loss):
        return loss
    if isinstance(loss, dict):
        params = dict(loss)
        base = get_loss(params.pop("name", None))
        if not params:
            return base
        if isinstance(base, Huber):
            unknown = set(params) - {"delta"}
            if unknown:
                raise ValueError(f"loss 'huber' takes only 'delta', got {sorted(map(repr, unknown))}")
            return Huber(params["delta"])
        raise ValueError(f"loss {base.name!r} takes no parameters, got {sorted(map(repr, params))}")
    key = _ALIASES.get(loss, loss) if isinstance(loss, str) else None
    if key not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; expected one of {', '.join(LOSSES)}, "
                         f"a fusenn.losses.Loss such as fusenn.losses.Huber(delta=...)")
    return LOSSES[key]
