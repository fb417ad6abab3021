"""Optimizers: SGD (with momentum and Nesterov), Adam, AdamW, RMSprop and Adagrad,
each with optional L2 penalty and gradient clipping.

An optimizer holds its hyperparameters and, once it has stepped, one state
array per parameter; `step` updates the parameters in place through the
model's backend (the C kernels or the NumPy reference). The C training engine
(csrc/plan.c) runs the same steps from engine_config(), bitwise identically.
"""

import math

import numpy as np

from ._common import finite_number

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "get_optimizer"]


def _check_range(name, value, low, high, low_open=False, high_open=True):
    value = finite_number(value, name)
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if too_low or too_high:
        lo = "(" if low_open else "["
        hi = ")" if high_open else "]"
        raise ValueError(f"{name} must lie in {lo}{low}, {high}{hi}, got {value}")
    return value


def _positive_or_none(name, value):
    return None if value is None else _check_range(name, value, 0.0, math.inf, low_open=True)


def _clip_scale(sum_squares, c):
    """Norm clipping's factor c / max(norm, c), norm = sqrt(sum_squares); 1 for a
    NaN norm (the update then fails the finiteness check). csrc/plan.c's
    clip_scale is the same expression."""
    norm = math.sqrt(sum_squares)
    return c / norm if norm > c else 1.0


class Optimizer:
    """Base class: subclasses define `_state_names`, `_hyperparameters` and
    `_update`, which updates one parameter through the backend and returns its
    count of non-finite weights; those the C engine runs also set
    `_engine_kind` (the engine's name for the update rule) and `_engine_settings`.

    Every optimizer takes the gradient preprocessing options below, applied in
    this order before the update rule on every step:

    l2: coupled L2 penalty, g += l2 * w, on kernels only (the parameters a
        layer lists in decayed_params; by default those with ndim >= 2), never on biases (as Keras' kernel_regularizer, or
        scikit-learn's alpha; PyTorch's SGD weight_decay also decays biases).
        The loss that fit / train_on_batch report does not include the
        penalty term, as in PyTorch.
    clipnorm: each parameter's gradient is rescaled so its L2 norm is at most
        clipnorm (Keras' clipnorm): g *= clipnorm / max(norm, clipnorm).
    global_clipnorm: all gradients are rescaled together so that their joint
        norm is at most global_clipnorm (Keras' global_clipnorm, PyTorch's
        clip_grad_norm_). Mutually exclusive with clipnorm.
    clipvalue: every gradient element is clipped to [-clipvalue, clipvalue].
    None (and l2=0) means off.
    """

    _state_names = ()
    _engine_kind = None

    def __init__(self, l2=0.0, clipnorm=None, global_clipnorm=None, clipvalue=None):
        self.state = None  # {name: [array per parameter]} once stepping starts
        self.iterations = 0
        self._model = None  # weak reference to the one model compiled with this optimizer
        self.l2 = _check_range("l2", l2, 0.0, math.inf)
        self.clipnorm = _positive_or_none("clipnorm", clipnorm)
        self.global_clipnorm = _positive_or_none("global_clipnorm", global_clipnorm)
        self.clipvalue = _positive_or_none("clipvalue", clipvalue)
        if self.clipnorm is not None and self.global_clipnorm is not None:
            raise ValueError("clipnorm (per parameter) and global_clipnorm (all parameters "
                             "together) are mutually exclusive; set only one of them")

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_model"] = None  # a weak reference does not pickle; the model sets it again
        state["_engine_config_cache"] = None
        state["_state_arenas"] = None  # the state lists carry the values; the model re-packs
        return state

    def reset(self):
        """Forget the history: zero the state in place (a training plan may point
        at these arrays) and the step count."""
        for arrays in (self.state or {}).values():
            for a in arrays:
                a.fill(0)
        self.iterations = 0

    def _preprocessing(self):
        return {"l2": self.l2, "clipnorm": self.clipnorm,
                "global_clipnorm": self.global_clipnorm, "clipvalue": self.clipvalue}

    # attributes that are not hyperparameters: setting them keeps the engine settings
    _NOT_SETTINGS = frozenset({"state", "iterations", "_model", "_engine_config_cache",
                               "_state_arenas", "_decaying", "_decayed"})

    def __setattr__(self, name, value):
        if name not in self._NOT_SETTINGS:  # a hyperparameter (lr...): recompute the settings
            self.__dict__["_engine_config_cache"] = None
        object.__setattr__(self, name, value)

    def engine_config(self):
        """The C engine's settings (the fields of fusenn_optimizer in fusenn.h,
        as a dict for _kernels.Plan.set_optimizer), or None when this optimizer
        only runs op by op: a subclass the engine does not know, whose update
        may differ. The same dict object until a hyperparameter changes, so the
        model hands it to the engine only then."""
        kind = type(self).__dict__.get("_engine_kind")
        if kind is None:
            return None
        cached = self.__dict__.get("_engine_config_cache")
        if cached is None:
            cached = {"kind": kind, "lr": self.lr, **self._engine_settings(), "l2": self.l2,
                      "clipnorm": self.clipnorm or 0.0,
                      "global_clipnorm": self.global_clipnorm or 0.0,
                      "clipvalue": self.clipvalue or 0.0}
            self.__dict__["_engine_config_cache"] = cached
        return cached

    def _engine_settings(self):
        return {}

    def ensure_state(self, params, arena=None):
        """The per-parameter state arrays (zeros until stepping starts). Given the
        model's ParamArena they are views of one flat array per state, laid out
        like the parameters, so the C engine updates them in one pass over the
        arena; existing state is moved there (values kept)."""
        shapes = [p.shape for p in params]
        if self.state is not None and any(
                [a.shape for a in arrays] != shapes for arrays in self.state.values()):
            raise ValueError("the optimizer's state does not match the model's parameters")
        if arena is None:
            if self.state is None:
                self.state = {name: [np.zeros_like(p) for p in params]
                              for name in self._state_names}
            return self.state
        flats = self.__dict__.get("_state_arenas") or {}
        if (self.state is None or set(flats) != set(self._state_names)
                or not all(arena.holds(flats[name], self.state[name]) for name in flats)):
            old, self.state, flats = self.state, {}, {}
            for name in self._state_names:
                flats[name], self.state[name] = arena.zeros()
                for view, previous in zip(self.state[name], (old or {}).get(name, ())):
                    view[...] = previous
            self.__dict__["_state_arenas"] = flats
        return self.state

    def state_arenas(self):
        """The flat state arrays behind the state (after ensure_state with an arena)."""
        flats = self.__dict__.get("_state_arenas") or {}
        return [flats[name] for name in self._state_names]

    def step(self, backend, params, grads):
        """Update each parameter in place from its gradient.

        Returns the number of non-finite updated weights. The gradient arrays
        (C-contiguous, writeable) are consumed: first preprocessed in place (L2,
        clipping), then, after the update, they hold the weights from before
        the step, so the caller can undo a diverging step exactly. The L2
        penalty and weight decay apply to the kernels the model's layers name
        (its model sets them), else to the parameters of two or more dimensions.
        """
        self.ensure_state(params)
        self.iterations += 1
        decayed = self.__dict__.get("_decayed")
        if decayed is None or len(decayed) != len(params):
            decayed = [p.ndim >= 2 for p in params]
        self._transform_gradients(backend, params, grads, decayed)
        bad = 0
        for i, (p, g) in enumerate(zip(params, grads)):
            self.__dict__["_decaying"] = decayed[i]  # read by _update (AdamW's decay)
            bad += self._update(backend, p, g, [self.state[name][i] for name in self._state_names])
        return bad

    def _transform_gradients(self, backend, params, grads, decayed):
        """L2, then norm clipping, then value clipping, in place on grads. The C
        engine (transform_gradients in csrc/plan.c) makes the same kernel calls
        in the same order, so both give the same bits."""
        clipvalue = self.clipvalue or 0.0
        l2s = [self.l2 if d else 0.0 for d in decayed]
        per_param = self.clipnorm is not None
        global_norm = not per_param and self.global_clipnorm is not None
        if not per_param and not global_norm:  # one pass: l2 and value clipping together
            for p, g, l2 in zip(params, grads, l2s):
                if l2 > 0 or clipvalue > 0:
                    backend.grad_transform(g, p if l2 > 0 else None, l2, 1.0, clipvalue)
            return
        for p, g, l2 in zip(params, grads, l2s):  # the norm is that of the penalised gradient
            if l2 > 0:
                backend.grad_transform(g, p, l2, 1.0, 0.0)
        scale = 1.0
        if global_norm:
            total = 0.0
            for g in grads:  # in order, as the engine (Python's sum() of floats is compensated)
                total += backend.sum_squares(g)
            scale = _clip_scale(total, self.global_clipnorm)
        for g in grads:
            if per_param:
                scale = _clip_scale(backend.sum_squares(g), self.clipnorm)
            if scale != 1.0 or clipvalue > 0:
                backend.grad_transform(g, None, 0.0, scale, clipvalue)

    def config(self):
        return {"name": type(self).__name__, **self._hyperparameters(), **self._preprocessing()}

    def __repr__(self):
        options = dict(self._hyperparameters())
        options.update({k: v for k, v in self._preprocessing().items() if v not in (None, 0.0)})
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in options.items())})"


class SGD(Optimizer):
    """Stochastic gradient descent, as PyTorch defines momentum:
    v = momentum * v + grad;  w -= lr * v  (Nesterov: w -= lr * (grad + momentum * v)).

    l2, clipnorm, global_clipnorm, clipvalue: see Optimizer (the reported loss
    does not include the L2 term)."""

    _engine_kind = "sgd"

    def __init__(self, lr=0.01, momentum=0.0, nesterov=False,
                 *, l2=0.0, clipnorm=None, global_clipnorm=None, clipvalue=None):
        super().__init__(l2=l2, clipnorm=clipnorm, global_clipnorm=global_clipnorm,
                         clipvalue=clipvalue)
        self.lr = _check_range("lr", lr, 0.0, math.inf, low_open=True)
        self.momentum = _check_range("momentum", momentum, 0.0, 1.0)
        if nesterov and self.momentum == 0:
            raise ValueError("nesterov=True needs a momentum > 0")
        self.nesterov = bool(nesterov)
        self._state_names = ("velocity",) if self.momentum else ()

    def _hyperparameters(self):
        return {"lr": self.lr, "momentum": self.momentum, "nesterov": self.nesterov}

    def _engine_settings(self):
        return {"momentum": self.momentum, "nesterov": self.nesterov}

    def _update(self, backend, p, g, state):
        v = state[0] if state else None
        return backend.sgd_update(p, g, v, self.lr, self.momentum, self.nesterov, prev=g)


class Adam(Optimizer):
    """Adam (Kingma and Ba) with bias correction; eps is added after the square root.

    l2, clipnorm, global_clipnorm, clipvalue: see Optimizer. l2 is the coupled
    penalty (added to the gradient, so Adam rescales it); for decoupled weight
    decay use AdamW. The reported loss does not include the L2 term."""

    _state_names = ("m", "v")
    _engine_kind = "adam"

    def __init__(self, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8,
                 *, l2=0.0, clipnorm=None, global_clipnorm=None, clipvalue=None):
        super().__init__(l2=l2, clipnorm=clipnorm, global_clipnorm=global_clipnorm,
                         clipvalue=clipvalue)
        self.lr = _check_range("lr", lr, 0.0, math.inf, low_open=True)
        self.beta1 = _check_range("beta1", beta1, 0.0, 1.0)
        self.beta2 = _check_range("beta2", beta2, 0.0, 1.0)
        self.eps = _check_range("eps", eps, 0.0, math.inf, low_open=True)

    def _hyperparameters(self):
        return {"lr": self.lr, "beta1": self.beta1, "beta2": self.beta2, "eps": self.eps}

    def _weight_decay(self):
        return 0.0

    def _engine_settings(self):
        return {"beta1": self.beta1, "beta2": self.beta2, "eps": self.eps,
                "weight_decay": self._weight_decay()}

    def _update(self, backend, p, g, state):
        m, v = state
        decay = self._weight_decay() if self.__dict__.get("_decaying", p.ndim >= 2) else 0.0
        return backend.adam_update(p, g, m, v, self.iterations, self.lr, self.beta1, self.beta2,
                                   self.eps, weight_decay=decay, prev=g)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov and Hutter), as PyTorch's
    AdamW: each step first decays the weight matrices, w *= 1 - lr * weight_decay,
    then takes the Adam step. Biases and other 1-D parameters are not decayed
    (PyTorch decays every parameter unless told otherwise; Keras users exclude
    biases with exclude_from_weight_decay).

    l2, clipnorm, global_clipnorm, clipvalue: see Optimizer. The reported loss
    includes no decay or penalty term."""

    _engine_kind = "adam"

    def __init__(self, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01,
                 *, l2=0.0, clipnorm=None, global_clipnorm=None, clipvalue=None):
        super().__init__(lr, beta1, beta2, eps, l2=l2, clipnorm=clipnorm,
                         global_clipnorm=global_clipnorm, clipvalue=clipvalue)
        self.weight_decay = _check_range("weight_decay", weight_decay, 0.0, math.inf)

    def _hyperparameters(self):
        return {**super()._hyperparameters(), "weight_decay": self.weight_decay}

    def _weight_decay(self):
        return self.weight_decay


class RMSprop(Optimizer):
    """RMSprop: v = rho * v + (1 - rho) * grad**2;  w -= lr * grad / (sqrt(v) + eps).

    Defaults are Keras' (lr=0.001, rho=0.9, eps=1e-7); eps is added after the
    square root, as PyTorch does (Keras adds it inside). No momentum, not
    centered. l2, clipnorm, global_clipnorm, clipvalue: see Optimizer (the
    reported loss does not include the L2 term)."""

    _state_names = ("v",)
    _engine_kind = "rmsprop"

    def __init__(self, lr=1e-3, rho=0.9, eps=1e-7,
                 *, l2=0.0, clipnorm=None, global_clipnorm=None, clipvalue=None):
        super().__init__(l2=l2, clipnorm=clipnorm, global_clipnorm=global_clipnorm,
                         clipvalue=clipvalue)
        self.lr = _check_range("lr", lr, 0.0, math.inf, low_open=True)
        self.rho = _check_range("rho", rho, 0.0, 1.0)
        self.eps = _check_range("eps", eps, 0.0, math.inf, low_open=True)

    def _hyperparameters(self):
        return {"lr": self.lr, "rho": self.rho, "eps": self.eps}

    def _engine_settings(self):
        return {"rho": self.rho, "eps": self.eps}

    def _update(self, backend, p, g, state):
        return backend.rmsprop_update(p, g, state[0], self.lr, self.rho, self.eps, prev=g)


class Adagrad(Optimizer):
    """Adagrad: v += grad**2;  w -= lr * grad / (sqrt(v) + eps), with the
    accumulator v starting at 0 (PyTorch's defaults lr=0.01, eps=1e-10; no lr
    decay). l2, clipnorm, global_clipnorm, clipvalue: see Optimizer (the
    reported loss does not include the L2 term)."""

    _state_names = ("v",)
    _engine_kind = "adagrad"

    def __init__(self, lr=0.01, eps=1e-10,
                 *, l2=0.0, clipnorm=None, global_clipnorm=None, clipvalue=None):
        super().__init__(l2=l2, clipnorm=clipnorm, global_clipnorm=global_clipnorm,
                         clipvalue=clipvalue)
        self.lr = _check_range("lr", lr, 0.0, math.inf, low_open=True)
        self.eps = _check_range("eps", eps, 0.0, math.inf, low_open=True)

    def _hyperparameters(self):
        return {"lr": self.lr, "eps": self.eps}

    def _engine_settings(self):
        return {"eps": self.eps}

    def _update(self, backend, p, g, state):
        return backend.adagrad_update(p, g, state[0], self.lr, self.eps, prev=g)


_OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW, "rmsprop": RMSprop, "adagrad": Adagrad}


def get_optimizer(optimizer):
    """An Optimizer from an instance, a name ('sgd', 'adam', 'adamw', 'rmsprop',
    'adagrad') or a saved config dict."""
    if isinstance(optimizer, Optimizer):
        return optimizer
    if isinstance(optimizer, str) and optimizer.lower() in _OPTIMIZERS:
        return _OPTIMIZERS[optimizer.lower()]()
    if isinstance(optimizer, dict) and str(optimizer.get("name", "")).lower() in _OPTIMIZERS:
        params = {k: v for k, v in optimizer.items() if k != "name"}
        return _OPTIMIZERS[optimizer["name"].lower()](**params)
    names = ", ".join(repr(name) for name in _OPTIMIZERS)
    classes = " / ".join(f"fusenn.{cls.__name__}" for cls in _OPTIMIZERS.values())
    raise ValueError(f"unknown optimizer {optimizer!r}; expected one of {names} or an "
                     f"instance of {classes}")
