"""The model's side of the C training engine (csrc/plan.c, bound as _kernels.Plan).

A model keeps every parameter tensor in one contiguous arena (ParamArena), the
layers' parameter attributes being views of it; the engine's gradients live in
a second arena of the same layout and the optimizer's state in more. The
engine reads the network from each layer's engine spec (layers.py), so this
module knows no layer kind by name.
"""

import math

import numpy as np

from . import _kernels

__all__ = ["ParamArena", "plan_for", "targets", "raise_for", "EDIVERGED", "EBADINPUT"]

EDIVERGED = _kernels.FUSENN_EDIVERGED_CODE
EBADINPUT = _kernels.FUSENN_EBADINPUT_CODE
EINVAL = _kernels.FUSENN_EINVAL_CODE
ALIGN_BYTES = 64  # each tensor starts on a cache line


class ParamArena:
    """The layout of tensors of `shapes` in one flat array of `dtype`, each
    starting ALIGN_BYTES-aligned."""

    def __init__(self, shapes, dtype):
        self.shapes = [tuple(shape) for shape in shapes]
        self.dtype = np.dtype(dtype)
        step = ALIGN_BYTES // self.dtype.itemsize
        self.offsets, size = [], 0
        for shape in self.shapes:
            self.offsets.append(size)
            size += -(-math.prod(shape) // step) * step
        self.size = size

    def zeros(self):
        """(flat, views): a zeroed, aligned flat array and the tensors in it."""
        step = ALIGN_BYTES // self.dtype.itemsize
        buffer = np.zeros(max(self.size, 1) + step, dtype=self.dtype)
        skip = (-buffer.ctypes.data % ALIGN_BYTES) // self.dtype.itemsize
        flat = buffer[skip:skip + max(self.size, 1)]
        return flat, self.views(flat)

    def views(self, flat):
        return [flat[o:o + math.prod(s)].reshape(s) for o, s in zip(self.offsets, self.shapes)]

    def holds(self, flat, arrays):
        """Whether `arrays` are this layout's views of `flat` (nobody replaced one)."""
        base = flat.ctypes.data
        return len(arrays) == len(self.shapes) and all(
            isinstance(a, np.ndarray) and a.dtype == self.dtype and a.shape == shape
            and a.ctypes.data == base + o * self.dtype.itemsize
            for a, shape, o in zip(arrays, self.shapes, self.offsets))


def pack_params(model):
    """Move every layer's parameters into one new arena (values kept) and make the
    layers' attributes views of it."""
    layers = [layer for layer in model.layers if layer.param_names]
    arena = ParamArena([p.shape for layer in layers for p in layer.params], model.dtype)
    flat, views = arena.zeros()
    views = iter(views)
    for layer in layers:
        for name in layer.param_names:
            view = next(views)
            view[...] = getattr(layer, name)
            setattr(layer, name, view)
    model._arena, model._arena_flat = arena, flat
    model._plan = None


def _network(model):
    """The network as _kernels.Plan takes it, or None if a layer or the loss has no
    engine counterpart (a subclass: op by op)."""
    specs = [layer.engine_spec() for layer in model.layers]
    if model.loss.engine is None or any(spec is None for spec in specs):
        return None
    arena = model._arena
    if not arena.holds(model._arena_flat, model.params):  # a parameter was rebound
        pack_params(model)
        arena = model._arena
    offsets = iter(arena.offsets)
    for layer, spec in zip(model.layers, specs):
        spec["param_offsets"] = [next(offsets) for _ in layer.param_names]
    model.optimizer.ensure_state(model.params, arena)  # its state in arenas like the params
    return {"input_shape": model.input_shape, "layers": specs, "loss": model.loss.engine,
            "loss_param": getattr(model.loss, "delta", 0.0), "params": model._arena_flat,
            "grads": arena.zeros()[0], "state": model.optimizer.state_arenas()}


def inference_plan(model):
    """The plan predict runs on: the training plan when there is one, else (an
    uncompiled model) one built for inference only, which training replaces.
    None when the model runs op by op."""
    if model._plan is not None:
        return model._plan
    if model.loss is not None:
        return plan_for(model)
    if model.backend_name != "c":
        return None
    specs = [layer.engine_spec() for layer in model.layers]
    if any(spec is None for spec in specs):
        return None
    offsets = iter(model._arena.offsets)
    for layer, spec in zip(model.layers, specs):
        spec["param_offsets"] = [next(offsets) for _ in layer.param_names]
    network = {"input_shape": model.input_shape, "layers": specs, "loss": "mse",
               "params": model._arena_flat, "grads": model._arena.zeros()[0], "state": []}
    model._plan = _kernels.Plan(network, model.dtype)
    model._plan_config = INFERENCE_ONLY
    return model._plan


INFERENCE_ONLY = object()  # model._plan_config of a plan built by inference_plan


def plan_for(model):
    """The C training plan for `model`, or None when it trains op by op: on the
    NumPy backend, or with an optimizer, loss or layer the engine does not know
    (a subclass). The plan points at the model's arenas, buffers and optimizer
    state; the optimizer's hyperparameters and step count are handed over on
    every call, so changing them between calls works."""
    plan, optimizer = model._plan, model.optimizer
    cached = optimizer.__dict__.get("_engine_config_cache")
    if (plan is not None and cached is not None and cached is model._plan_config
            and plan.steps == optimizer.iterations):
        return plan  # nothing changed since the last call (the common case, kept cheap)
    config = optimizer.engine_config()
    if model.backend_name != "c" or config is None:
        return None
    if model._plan is None or model._plan_config is INFERENCE_ONLY:
        network = _network(model)
        if network is None:
            return None
        model._plan = _kernels.Plan(network, model.dtype)
        model._plan_config = None
    if config is not model._plan_config:  # new settings (engine_config caches them)
        model._plan.set_optimizer(config, optimizer.iterations)
        model._plan_config = config
    elif model._plan.steps != optimizer.iterations:  # e.g. after optimizer.reset()
        model._plan.set_steps(optimizer.iterations)
    return model._plan


def targets(model, y):
    """(labels, targets) as the engine takes them: one of the two is None; labels
    flat (one per output row), targets one row per sample (views)."""
    if model.loss.targets == "labels":
        return (y if y.ndim == 1 else y.reshape(-1)), None
    return None, (y if y.ndim == 2 else y.reshape(len(y), -1))


def samples(X):
    """X as the engine reads it: each sample one row of its size (a view)."""
    return X if X.ndim == 2 else X.reshape(len(X), -1)


def raise_for(model, plan, code, where, loss):
    """Sync the optimizer's step count and turn an engine code into an exception."""
    # not a hyperparameter: set directly, past Optimizer.__setattr__'s cache check
    model.optimizer.__dict__["iterations"] = plan.steps
    if code == EDIVERGED:
        raise model._divergence_error(where, loss)
    if code == EINVAL:
        raise ValueError(f"the training engine cannot read this batch in {where} (samples of "
                         f"several rows must be contiguous)")
    if code != 0:
        raise MemoryError("fusenn: out of memory in the training engine")
