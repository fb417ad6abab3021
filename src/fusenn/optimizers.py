"""Optimizers: SGD (with momentum and Nesterov) and Adam.

An optimizer holds its hyperparameters and, once it has stepped, one state
array per parameter; `step` updates the parameters in place through the
model's backend (the C kernels or the NumPy reference).
"""

import math

import numpy as np

from .ops import finite_number

__all__ = ["Optimizer", "SGD", "Adam", "get_optimizer"]


def _check_range(name, value, low, high, low_open=False, high_open=True):
    value = finite_number(value, name)
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if too_low or too_high:
        lo = "(" if low_open else "["
        hi = ")" if high_open else "]"
        raise ValueError(f"{name} must lie in {lo}{low}, {high}{hi}, got {value}")
    return value


class Optimizer:
    """Base class: subclasses define `_state_names` and `_update`, which updates
    one parameter through the backend and returns its count of non-finite
    weights."""

    _state_names = ()

    def __init__(self):
        self.state = None  # {name: [array per parameter]} once stepping starts
        self.iterations = 0
        self._model = None  # weak reference to the one model compiled with this optimizer

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_model"] = None  # a weak reference does not pickle; the model sets it again
        return state

    def reset(self):
        """Forget the history: zero the state in place (a training plan may point
        at these arrays) and the step count."""
        for arrays in (self.state or {}).values():
            for a in arrays:
                a.fill(0)
        self.iterations = 0

    def engine_config(self):
        """(kind, lr, momentum, nesterov, beta1, beta2, eps) for the C engine, or
        None when this optimizer only runs op by op (subclasses)."""
        return None

    def ensure_state(self, params):
        """Allocate the per-parameter state arrays (zeros) if not done yet."""
        shapes = [p.shape for p in params]
        if self.state is not None and any(
                [a.shape for a in arrays] != shapes for arrays in self.state.values()):
            raise ValueError("the optimizer's state does not match the model's parameters")
        if self.state is None:
            self.state = {name: [np.zeros_like(p) for p in params] for name in self._state_names}
        return self.state

    def step(self, backend, params, grads):
        """Update each parameter in place from its gradient.

        Returns the number of non-finite updated weights. The gradient arrays
        are consumed: afterwards they hold the weights from before the step,
        so the caller can undo a diverging step exactly.
        """
        self.ensure_state(params)
        self.iterations += 1
        bad = 0
        for i, (p, g) in enumerate(zip(params, grads)):
            bad += self._update(backend, p, g, [self.state[name][i] for name in self._state_names])
        return bad

    def config(self):
        return {"name": type(self).__name__, **self._hyperparameters()}


class SGD(Optimizer):
    """Stochastic gradient descent, as PyTorch defines momentum:
    v = momentum * v + grad;  w -= lr * v  (Nesterov: w -= lr * (grad + momentum * v))."""

    def __init__(self, lr=0.01, momentum=0.0, nesterov=False):
        super().__init__()
        self.lr = _check_range("lr", lr, 0.0, math.inf, low_open=True)
        self.momentum = _check_range("momentum", momentum, 0.0, 1.0)
        if nesterov and self.momentum == 0:
            raise ValueError("nesterov=True needs a momentum > 0")
        self.nesterov = bool(nesterov)
        self._state_names = ("velocity",) if self.momentum else ()

    def _hyperparameters(self):
        return {"lr": self.lr, "momentum": self.momentum, "nesterov": self.nesterov}

    def engine_config(self):
        if type(self) is not SGD:
            return None
        return (0, self.lr, self.momentum, self.nesterov, 0.0, 0.0, 0.0)

    def _update(self, backend, p, g, state):
        v = state[0] if state else None
        return backend.sgd_update(p, g, v, self.lr, self.momentum, self.nesterov, prev=g)

    def __repr__(self):
        return f"SGD(lr={self.lr}, momentum={self.momentum}, nesterov={self.nesterov})"


class Adam(Optimizer):
    """Adam (Kingma and Ba) with bias correction; eps is added after the square root."""

    _state_names = ("m", "v")

    def __init__(self, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8):
        super().__init__()
        self.lr = _check_range("lr", lr, 0.0, math.inf, low_open=True)
        self.beta1 = _check_range("beta1", beta1, 0.0, 1.0)
        self.beta2 = _check_range("beta2", beta2, 0.0, 1.0)
        self.eps = _check_range("eps", eps, 0.0, math.inf, low_open=True)

    def _hyperparameters(self):
        return {"lr": self.lr, "beta1": self.beta1, "beta2": self.beta2, "eps": self.eps}

    def engine_config(self):
        if type(self) is not Adam:
            return None
        return (1, self.lr, 0.0, False, self.beta1, self.beta2, self.eps)

    def _update(self, backend, p, g, state):
        m, v = state
        return backend.adam_update(p, g, m, v, self.iterations, self.lr, self.beta1, self.beta2,
                                   self.eps, prev=g)

    def __repr__(self):
        return f"Adam(lr={self.lr}, beta1={self.beta1}, beta2={self.beta2}, eps={self.eps})"


_OPTIMIZERS = {"sgd": SGD, "adam": Adam}


def get_optimizer(optimizer):
    """An Optimizer from an instance, a name ('sgd', 'adam') or a saved config dict."""
    if isinstance(optimizer, Optimizer):
        return optimizer
    if isinstance(optimizer, str) and optimizer.lower() in _OPTIMIZERS:
        return _OPTIMIZERS[optimizer.lower()]()
    if isinstance(optimizer, dict) and str(optimizer.get("name", "")).lower() in _OPTIMIZERS:
        params = {k: v for k, v in optimizer.items() if k != "name"}
        return _OPTIMIZERS[optimizer["name"].lower()](**params)
    raise ValueError(f"unknown optimizer {optimizer!r}; expected 'sgd', 'adam' or an "
                     f"instance of fusenn.SGD / fusenn.Adam")
