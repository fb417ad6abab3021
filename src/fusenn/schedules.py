"""Learning-rate schedules: the learning rate as a function of the epoch.

    schedule = fusenn.schedules.CosineDecay(0.1, epochs=45, warmup_epochs=5)
    model.fit(X, y, epochs=50,
              callbacks=[fusenn.callbacks.LearningRateScheduler(schedule)])

Each schedule is a callable `schedule(epoch) -> lr` with a 0-based epoch. The
learning rate changes once per epoch, at the epoch's start, like PyTorch's
per-epoch schedulers (StepLR, ExponentialLR, CosineAnnealingLR stepped once an
epoch): a fit epoch runs inside the C engine, so there is no per-batch hook.

Every schedule can start with a linear warm-up: during the first
`warmup_epochs` epochs lr = initial_lr * (epoch + 1) / (warmup_epochs + 1), so
the rate climbs towards initial_lr without reaching it; the decay then starts
at initial_lr and counts its epochs from the end of the warm-up.
"""

import math

import numpy as np

from ._common import finite_number

__all__ = ["Schedule", "StepDecay", "ExponentialDecay", "CosineDecay"]


def int_arg(value, name, minimum=0):
    """`value` as an int >= minimum, or TypeError / ValueError naming `name`."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def positive_number(value, name):
    """`value` as a finite float > 0, or TypeError / ValueError naming `name`."""
    value = finite_number(value, name)
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return value


class Schedule:
    """Base class: the warm-up and the epoch check. Subclasses define
    `_decay(t)`, the rate t epochs after the warm-up, and `_params()`."""

    def __init__(self, initial_lr, warmup_epochs):
        self.initial_lr = positive_number(initial_lr, "initial_lr")
        self.warmup_epochs = int_arg(warmup_epochs, "warmup_epochs")

    def __call__(self, epoch):
        epoch = int_arg(epoch, "epoch")
        if epoch < self.warmup_epochs:
            return self.initial_lr * (epoch + 1) / (self.warmup_epochs + 1)
        return float(self._decay(epoch - self.warmup_epochs))

    def _params(self):
        raise NotImplementedError

    def __repr__(self):
        params = {"initial_lr": self.initial_lr, **self._params(), "warmup_epochs": self.warmup_epochs}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in params.items())})"

    def __eq__(self, other):
        return type(self) is type(other) and repr(self) == repr(other)

    def __hash__(self):
        return hash(repr(self))


class StepDecay(Schedule):
    """lr = initial_lr * gamma ** (t // step_size), t the epochs since the warm-up
    (PyTorch's StepLR)."""

    def __init__(self, initial_lr, step_size, gamma=0.1, warmup_epochs=0):
        super().__init__(initial_lr, warmup_epochs)
        self.step_size = int_arg(step_size, "step_size", minimum=1)
        self.gamma = _decay_factor(gamma)

    def _decay(self, t):
        return self.initial_lr * self.gamma ** (t // self.step_size)

    def _params(self):
        return {"step_size": self.step_size, "gamma": self.gamma}


class ExponentialDecay(Schedule):
    """lr = initial_lr * gamma ** t, t the epochs since the warm-up
    (PyTorch's ExponentialLR)."""

    def __init__(self, initial_lr, gamma, warmup_epochs=0):
        super().__init__(initial_lr, warmup_epochs)
        self.gamma = _decay_factor(gamma)

    def _decay(self, t):
        return self.initial_lr * self.gamma ** t

    def _params(self):
        return {"gamma": self.gamma}


class CosineDecay(Schedule):
    """Half a cosine from initial_lr down to min_lr over `epochs` epochs after the
    warm-up, then min_lr (PyTorch's CosineAnnealingLR with T_max=epochs, without
    restarts):

        lr = min_lr + (initial_lr - min_lr) * (1 + cos(pi * t / epochs)) / 2,  t <= epochs

    With fit(epochs=warmup_epochs + epochs) the last epoch has t = epochs - 1, so
    the rate stays above min_lr; it is min_lr from t = epochs on. A min_lr of 0
    (the default) is only reached past that point, where the optimizer cannot
    take it (its learning rate must be > 0): give min_lr > 0 to train longer.
    """

    def __init__(self, initial_lr, epochs, min_lr=0.0, warmup_epochs=0):
        super().__init__(initial_lr, warmup_epochs)
        self.epochs = int_arg(epochs, "epochs", minimum=1)
        self.min_lr = finite_number(min_lr, "min_lr")
        if not 0 <= self.min_lr <= self.initial_lr:
            raise ValueError(f"min_lr must lie in [0, initial_lr={self.initial_lr}], got {self.min_lr}")

    def _decay(self, t):
        if t >= self.epochs:
            return self.min_lr
        return self.min_lr + (self.initial_lr - self.min_lr) * (1 + math.cos(math.pi * t / self.epochs)) / 2

    def _params(self):
        return {"epochs": self.epochs, "min_lr": self.min_lr}


def _decay_factor(gamma):
    gamma = finite_number(gamma, "gamma")
    if not 0 < gamma <= 1:
        raise ValueError(f"gamma must lie in (0, 1] (the factor the rate is multiplied by), got {gamma}")
    return gamma
