"""Losses, and how each pairs with the model's output activation.

cross_entropy and binary_cross_entropy are computed from the last layer's
logits by the fused kernels (softmax + cross-entropy, sigmoid + binary
cross-entropy): numerically stable, and the gradient with respect to the logits
is simply (p - target) / batch. They therefore require the output activation
to be the matching softmax / sigmoid (predict returns probabilities) or
identity (the outputs are logits, as with PyTorch's CrossEntropyLoss and
BCEWithLogitsLoss). mse works with any output activation.
"""

import numpy as np

__all__ = ["LOSSES", "get_loss"]


class Loss:
    def __init__(self, name, engine_id, fused_kernel, output_activations, targets):
        self.name = name
        self.engine_id = engine_id                # fusenn_loss in csrc/fusenn.h
        self.fused_kernel = fused_kernel          # backend function name, or None
        self.output_activations = output_activations  # allowed, or None for any
        self.targets = targets                    # "labels" or "values"

    def __repr__(self):
        return f"Loss({self.name!r})"

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
        (cross-entropy), outputs on the right side of 0.5 (binary); 0 for mse."""
        if self.targets == "labels":
            return int(np.count_nonzero(p.argmax(axis=1) == y))
        if self.fused_kernel is not None:
            return int(np.count_nonzero((p > 0.5) == (y > 0.5)))
        return 0

    def accuracy(self, correct, n, k):
        """Accuracy from a count of correct predictions over n samples of k outputs."""
        return correct / (n if self.targets == "labels" else n * k)


LOSSES = {
    "cross_entropy": Loss("cross_entropy", 0, "softmax_cross_entropy", ("softmax", "identity"),
                          "labels"),
    "binary_cross_entropy": Loss("binary_cross_entropy", 1, "sigmoid_binary_cross_entropy",
                                 ("sigmoid", "identity"), "values"),
    "mse": Loss("mse", 2, None, None, "values"),
}
# Keras' and PyTorch's names for the same losses.
_ALIASES = {
    "sparse_categorical_crossentropy": "cross_entropy",
    "categorical_crossentropy": "cross_entropy",
    "crossentropy": "cross_entropy",
    "binary_crossentropy": "binary_cross_entropy",
    "bce": "binary_cross_entropy",
    "mean_squared_error": "mse",
}


def get_loss(name):
    key = _ALIASES.get(name, name) if isinstance(name, str) else None
    if key not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; expected one of {', '.join(LOSSES)}")
    return LOSSES[key]
