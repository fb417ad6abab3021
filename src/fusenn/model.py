"""Sequential: a stack of Dense layers with compile / fit / predict / evaluate.

The model is backend-agnostic: every numeric operation goes through
`self.backend`, either fusenn.ops (the C kernels) or fusenn.reference (the
NumPy oracle), which share names and signatures. Everything else here is
bookkeeping, validation and I/O.
"""

import json
import math
import os
import tempfile
import threading
import time
import weakref

import numpy as np

from . import _kernels, ops, reference
from . import callbacks as callbacks_module
from .ops import contiguous_rows, finite_number
from ._threads import get_num_threads
from .layers import BatchNorm, Dense, Dropout, Layer, layer_from_config
from .losses import get_loss
from .optimizers import get_optimizer

__all__ = ["Sequential", "History", "load", "FORMAT_VERSION"]

BACKENDS = {"c": ops, "numpy": reference}
DTYPES = {"float32": np.float32, "float64": np.float64}
FORMAT_VERSION = 1  # of the .npz files written by save()
PREDICT_CHUNK = 1024  # rows per forward pass in predict/evaluate (as csrc/plan.c)
_ACTIVATION_IDS = {name: i for i, name in enumerate(reference.ACTIVATIONS)}  # C enum values


def _dtype_name(dtype):
    try:
        name = np.dtype(dtype).name
    except TypeError:
        name = None
    if dtype is None or name not in DTYPES:
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    return name


MAX_SIZE = 2**31 - 1  # largest layer width, input_dim, batch_size or epochs accepted


def _positive_int(value, name, allow_zero=False):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < (0 if allow_zero else 1):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '>= 1'}, got {value}")
    if value > MAX_SIZE:
        raise ValueError(f"{name} must be at most {MAX_SIZE}, got {value}")
    return int(value)


def _writeable(a):
    """`a` if it is a writeable C-contiguous array (or None), else such a copy."""
    if a is None or (a.flags.writeable and a.flags.c_contiguous):
        return a
    return np.array(a, order="C")


class History:
    """What fit() returns: `history` maps each metric to its per-epoch values."""

    def __init__(self):
        self.epoch = []
        self.history = {}

    def append(self, epoch, logs):
        self.epoch.append(epoch)
        for key, value in logs.items():
            self.history.setdefault(key, []).append(value)

    def __repr__(self):
        return f"History(epochs={len(self.epoch)}, keys={list(self.history)})"


class Sequential:
    """A feed-forward network: each layer's output is the next one's input.

    >>> model = Sequential([Dense(64, activation="relu"), Dense(10, activation="softmax")],
    ...                    input_dim=64, seed=0)
    >>> model.compile(loss="cross_entropy", optimizer=SGD(lr=0.1, momentum=0.9))

    backend: "c" (fusenn's kernels) or "numpy" (the pure-NumPy reference).
    seed: makes weight initialisation and fit()'s shuffling reproducible.
    """

    def __init__(self, layers=(), input_dim=None, dtype="float32", seed=None, backend="c"):
        if not isinstance(backend, str) or backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}")
        try:
            layers = [] if layers is None else list(layers)
        except TypeError:
            raise TypeError(f"layers must be a list of fusenn.Dense layers, got {layers!r}") from None
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
            raise ValueError(f"seed must be a non-negative int or None, got {seed!r}")
        self.backend_name = backend
        self.backend = BACKENDS[backend]
        self.dtype = np.dtype(DTYPES[_dtype_name(dtype)])
        self.seed = None if seed is None else int(seed)
        self._rng = np.random.default_rng(self.seed)
        self.layers = []
        self.input_dim = None
        self.loss = None
        self.optimizer = None
        self._plan = None  # the C training engine, built on first use (see _engine)
        self._plan_config = None  # the optimizer settings last handed to it
        self._lock = threading.Lock()
        self.stop_training = False  # set by callbacks (EarlyStopping) to end fit()
        for layer in layers:
            self.add(layer)
        if input_dim is not None:
            self.build(input_dim)

    def __getstate__(self):
        # the C plan, the lock and the backend module are rebuilt on unpickling
        state = dict(self.__dict__)
        state["_plan"] = state["_plan_config"] = None
        del state["_lock"], state["backend"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.backend = BACKENDS[self.backend_name]
        self._lock = threading.Lock()
        # the C plan writes in place (parameters, buffers, Dropout's step
        # counter, optimizer state): arrays unpickled read-only (joblib's
        # memory maps) or non-contiguous become private C-contiguous copies
        for layer in self.layers:
            for name, value in vars(layer).items():
                if isinstance(value, np.ndarray):
                    setattr(layer, name, _writeable(value))
        if self.optimizer is not None:
            self.optimizer._model = weakref.ref(self)
            if self.optimizer.state is not None:
                self.optimizer.state = {name: [_writeable(a) for a in arrays]
                                        for name, arrays in self.optimizer.state.items()}

    def __repr__(self):
        return (f"Sequential({self.layers}, input_dim={self.input_dim}, dtype={self.dtype.name!r}, "
                f"backend={self.backend_name!r})")

    # ---- structure --------------------------------------------------------

    def add(self, layer):
        if not isinstance(layer, Layer):
            raise TypeError(f"layers must be fusenn layers (Dense, Dropout, BatchNorm), got {layer!r}")
        if self.built:
            raise ValueError("cannot add layers to a model that is already built")
        if any(layer is other for other in self.layers):
            raise ValueError(f"{layer!r} is already in this model; create a new layer instead")
        self.layers.append(layer)

    @property
    def built(self):
        return bool(self.layers) and all(layer.built for layer in self.layers)

    def build(self, input_dim):
        """Draw every layer's weights for inputs of `input_dim` features."""
        input_dim = _positive_int(input_dim, "input_dim")
        if not self.layers:
            raise ValueError("the model has no layers; pass Dense layers to Sequential([...])")
        if self.built:
            if input_dim != self.input_dim:
                raise ValueError(f"the model is built for input_dim={self.input_dim}, got {input_dim}")
            return
        fan_in = input_dim
        # dropout masks come from their own stream of the model's seed, so adding
        # or removing a Dropout changes neither the weights drawn nor fit's shuffles
        mask_seeds = np.random.default_rng(None if self.seed is None else [self.seed, 1])
        try:
            for layer in self.layers:
                layer.build(fan_in, self.dtype, self._rng)
                if isinstance(layer, Dropout) and layer.seed is None:
                    layer._base_seed = int(mask_seeds.integers(0, 2**63))
                fan_in = layer.units
        except BaseException:  # e.g. MemoryError: leave the model unbuilt
            for layer in self.layers:
                layer.unbuild()
            raise
        self.input_dim = input_dim

    @property
    def output_dim(self):
        return self.layers[-1].units if self.layers else None

    @property
    def params(self):
        """The trainable arrays [W1, b1, W2, b2, ...], live (not copies)."""
        return [p for layer in self.layers for p in layer.params]

    @property
    def buffers(self):
        """The non-trainable arrays saved with the model (BatchNorm's running
        statistics), live."""
        return [a for layer in self.layers for a in layer.buffers]

    def _weight_arrays(self):
        """(label, array) of every parameter and buffer, layer by layer, as
        get_weights orders them: W1, b1, gamma2, beta2, running_mean2, ..."""
        return [(f"{name}{i + 1}", getattr(layer, name))
                for i, layer in enumerate(self.layers)
                for name in (*layer.param_names, *layer.buffer_names)]

    def get_weights(self):
        """Copies of every layer's weights, in layer order (Keras's order: Dense
        W, b; BatchNorm gamma, beta, running mean, running variance)."""
        self._require_built()
        return [a.copy() for _, a in self._weight_arrays()]

    def set_weights(self, weights):
        """Copy `weights` ([W1, b1, ...], as get_weights returns) into the model."""
        self._require_built()
        arrays = self._weight_arrays()
        labels = ", ".join(label for label, _ in arrays[:2]) + ", ..."
        if isinstance(weights, (str, bytes, np.ndarray)) or not hasattr(weights, "__iter__"):
            raise TypeError(f"weights must be a list of arrays [{labels}]")
        weights = list(weights)
        if len(weights) != len(arrays):
            raise ValueError(f"weights must hold {len(arrays)} arrays [{labels}], got {len(weights)}")
        params = [a for _, a in arrays]
        checked = []
        for i, ((label, p), w) in enumerate(zip(arrays, weights)):
            w = np.asarray(w)
            name = f"weights[{i}] ({label})"
            if w.shape != p.shape:
                raise ValueError(f"{name} must have shape {p.shape}, got {w.shape}")
            if w.dtype.kind not in "fiub":
                raise TypeError(f"{name} must be numeric, got dtype {w.dtype}")
            with np.errstate(over="ignore", invalid="ignore"):
                w = w.astype(p.dtype)
            if not np.all(np.isfinite(w)):
                raise ValueError(f"{name} contains NaN or infinity (or values too large "
                                 f"for {p.dtype})")
            if label.startswith("running_var") and np.any(w < 0):
                raise ValueError(f"{name} is a variance and must not be negative")
            checked.append(w)
        for p, w in zip(params, checked):
            np.copyto(p, w)

    # ---- compile ------------------------------------------------------------

    def compile(self, loss="cross_entropy", optimizer="sgd"):
        """Choose the loss and the optimizer (an instance, or 'sgd', 'adam', 'adamw',
        'rmsprop', 'adagrad' with default settings)."""
        if not self.layers:
            raise ValueError("the model has no layers; pass Dense layers to Sequential([...])")
        if not isinstance(self.layers[-1], Dense):
            raise ValueError(f"the last layer must be a Dense layer (the output), got "
                             f"{self.layers[-1]!r}")
        loss = get_loss(loss)
        loss.check_output_activation(self.layers[-1].activation)
        optimizer = get_optimizer(optimizer)
        owner = optimizer._model() if optimizer._model else None
        if owner is not None and owner is not self:
            raise ValueError("this optimizer is already compiled into another model; give "
                             "each model its own optimizer (its state is shaped for one model)")
        # everything is valid: only now change the model
        self.loss = loss
        self.optimizer = optimizer
        self.optimizer._model = weakref.ref(self)
        self.optimizer.state = None  # fresh state shaped for this model
        self.optimizer.iterations = 0
        self._plan = None

    # ---- validation -----------------------------------------------------------

    def _require_built(self):
        if not self.built:
            raise ValueError("the model is not built: pass input_dim=... to Sequential, call "
                             "model.build(input_dim), or fit it first")

    def _require_compiled(self):
        if self.loss is None:
            raise ValueError("the model is not compiled: call model.compile(loss=..., optimizer=...) first")

    def _check_X(self, X, name="X", values=True):
        """X as a 2-D array of the model's dtype with contiguous rows; values=False
        leaves the NaN/infinity check to the caller (the engine's train_batch)."""
        X = np.asarray(X)
        if X.dtype.kind not in "fiub":
            raise TypeError(f"{name} must hold numbers, got dtype {X.dtype}")
        if X.ndim != 2:
            want = f"(n_samples, {self.input_dim})" if self.input_dim else "(n_samples, n_features)"
            raise ValueError(f"{name} must be 2-D with shape {want}, got shape {X.shape}")
        n, d = X.shape
        if n == 0:
            raise ValueError(f"{name} is empty: expected at least one sample, got shape {X.shape}")
        if d == 0:
            raise ValueError(f"{name} has no features: expected at least one column, got shape {X.shape}")
        if self.input_dim is not None and d != self.input_dim:
            raise ValueError(f"{name} must have shape (n_samples, {self.input_dim}), got {X.shape}")
        if X.dtype is not self.dtype and X.dtype != self.dtype:
            X = X.astype(self.dtype)
        X = contiguous_rows(X)
        if values and _kernels.count_nonfinite(X, get_num_threads()):  # no mask as big as X
            raise ValueError(f"{name} contains NaN or infinity")
        return X

    def _check_y(self, y, n, name="y", values=True):
        """y as the loss takes it (int64 labels, or an (n, k) array of the model's
        dtype); values=False leaves the range and NaN checks to the caller."""
        y = np.asarray(y)
        k = self.output_dim
        if self.loss.targets == "labels":
            if y.ndim != 1 or y.shape[0] != n:
                hint = "; for one-hot targets pass y.argmax(axis=1)" if y.ndim == 2 else ""
                raise ValueError(f"{name} must be integer class labels of shape ({n},), "
                                 f"got shape {y.shape}{hint}")
            if y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
                y = y.astype(np.int64)
            if y.dtype.kind not in "iu":
                raise TypeError(f"{name} must hold integer class labels, got dtype {y.dtype}")
            if not values:  # a uint64 label too large for int64 wraps to a negative one: caught too
                return np.ascontiguousarray(y, dtype=np.int64)
            y, bad = ops.labels_in_range(y, k)
            if bad is not None:
                raise ValueError(f"{name} holds class labels outside [0, {k}) (the last layer has "
                                 f"{k} units): found {bad}")
            return y
        if y.ndim == 1 and k == 1:
            y = y.reshape(-1, 1)
        if y.shape != (n, k):
            raise ValueError(f"{name} must have shape ({n}, {k}), got {y.shape}")
        if y.dtype.kind not in "fiub":
            raise TypeError(f"{name} must hold numbers, got dtype {y.dtype}")
        y = contiguous_rows(np.asarray(y, dtype=self.dtype))
        if not values:
            return y
        if _kernels.count_nonfinite(y, get_num_threads()):
            raise ValueError(f"{name} contains NaN or infinity")
        if self.loss.name == "binary_cross_entropy" and (y.min() < 0 or y.max() > 1):
            raise ValueError(f"{name} must hold targets in [0, 1] for binary_cross_entropy")
        return y

    def _check_data(self, X, y, name_x="X", name_y="y", values=True):
        self._require_compiled()
        X = self._check_X(X, name_x, values)
        y = self._check_y(y, X.shape[0], name_y, values)
        if self.input_dim is None:  # not built (build sets input_dim last)
            self.build(X.shape[1])  # like Keras: the first valid data fixes input_dim
        return X, y

    # ---- the math ---------------------------------------------------------------

    def _forward(self, X, training, logits=False):
        """(outputs, caches): outputs[0] = X and outputs[i + 1] is layer i's output;
        with logits=True the last (Dense) layer stops before its activation."""
        outputs, caches = [X], []
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            y, cache = layer.forward(self.backend, outputs[-1], training, logits and i == last)
            outputs.append(y)
            caches.append(cache)
        return outputs, caches

    def _loss_and_grad(self, z, y, sample_weight=None):
        """(loss, probabilities for metrics, dL/dz) of the last layer's output z:
        logits for the fused losses, the activated output otherwise."""
        kw = {} if sample_weight is None else {"sample_weight": sample_weight}
        if self.loss.fused_kernel:
            # the fused kernel applies softmax / sigmoid to the logits itself
            return getattr(self.backend, self.loss.fused_kernel)(z, y, **kw)
        loss, da = self.loss.compute(self.backend, z, y, **kw)
        return loss, z, da

    def _train_step(self, X, y, where, sample_weight=None):
        """Forward, loss, backward and update on one batch, op by op; returns
        (loss, correct predictions).

        A non-finite loss raises before anything changes; an update that makes
        weights non-finite is undone exactly (the optimizer leaves the previous
        weights in the gradient arrays). Either way the optimizer state is reset,
        as the C engine does.
        """
        fused = self.loss.fused_kernel is not None
        outputs, caches = self._forward(X, training=True, logits=fused)
        loss, p, dy = self._loss_and_grad(outputs[-1], y, sample_weight)
        if not math.isfinite(loss):
            self.optimizer.reset()
            raise self._divergence_error(where, loss)
        grads = []
        last = len(self.layers) - 1
        # nothing before the first layer with parameters needs a gradient (as csrc/plan.c)
        first_trainable = next(i for i, layer in enumerate(self.layers) if layer.param_names)
        for i in range(last, first_trainable - 1, -1):
            dy, layer_grads = self.layers[i].backward(
                self.backend, outputs[i], outputs[i + 1], caches[i], dy,
                i > first_trainable, logits=fused and i == last)
            grads[:0] = layer_grads
        if self.optimizer.step(self.backend, self.params, grads):
            for param, previous in zip(self.params, grads):
                np.copyto(param, previous)
            self.optimizer.reset()
            raise self._divergence_error(where, loss)
        return loss, self.loss.correct(p, y)

    @staticmethod
    def _divergence_error(where, loss):
        return ValueError(f"training diverged in {where} (loss {loss:.4g}, or the update made "
                          f"weights overflow); the weights are those from before that step; "
                          f"try a lower learning rate")

    # ---- the C engine ---------------------------------------------------------------

    def _engine(self):
        """The C training plan (csrc/plan.c) for this model, or None when it trains
        op by op: on the NumPy backend, or with an optimizer or loss the engine
        does not know (a subclass). The plan points at the model's weights,
        gradient buffers, optimizer state and running statistics; the
        optimizer's hyperparameters and step count are handed over on every
        call, so changing them between calls works."""
        plan, optimizer = self._plan, self.optimizer
        cached = optimizer.__dict__.get("_engine_config_cache")
        if (plan is not None and cached is not None and cached is self._plan_config
                and plan.steps == optimizer.iterations):
            return plan  # nothing changed since the last call (the common case, kept cheap)
        config = optimizer.engine_config()
        if self.backend is not ops or config is None:
            return None
        if self._plan is None:
            if self.loss.engine_id is None or any(
                    type(layer) not in (Dense, Dropout, BatchNorm) for layer in self.layers):
                return None  # a custom layer or loss: op by op
            state = self.optimizer.ensure_state(self.params)
            names = self.optimizer._state_names
            specs, j = [], 0  # j: index of the layer's first parameter in self.params
            for layer in self.layers:
                if isinstance(layer, Dropout):
                    specs.append({"kind": "dropout", "d": layer.units, "rate": layer.rate,
                                  "seed": layer._base_seed, "step": layer.step_counter})
                    continue
                W, b = layer.params
                spec = {"kind": "dense" if isinstance(layer, Dense) else "batchnorm",
                        "W": W, "b": b, "dW": np.empty_like(W), "db": np.empty_like(b),
                        "W_state": [state[name][j] for name in names],
                        "b_state": [state[name][j + 1] for name in names]}
                if isinstance(layer, Dense):
                    spec["act"] = _ACTIVATION_IDS[layer.activation]
                else:
                    spec.update(momentum=layer.momentum, eps=layer.eps,
                                running_mean=layer.running_mean, running_var=layer.running_var)
                specs.append(spec)
                j += 2
            self._plan = _kernels.Plan(specs, self.loss.engine_id, self.dtype,
                                       getattr(self.loss, "delta", 0.0))
            self._plan_config = None
        if config is not self._plan_config:  # new settings (engine_config caches them)
            self._plan.set_optimizer(config, self.optimizer.iterations)
            self._plan_config = config
        elif self._plan.steps != self.optimizer.iterations:  # e.g. after optimizer.reset()
            self._plan.set_steps(self.optimizer.iterations)
        return self._plan

    def _targets(self, y):
        """(labels, targets) as the engine takes them: one of the two is None."""
        return (y, None) if self.loss.targets == "labels" else (None, y)

    def _engine_result(self, plan, code, where, loss):
        """Sync the optimizer's step count and turn an engine code into an exception."""
        # not a hyperparameter: set directly, past Optimizer.__setattr__'s cache check
        self.optimizer.__dict__["iterations"] = plan.steps
        if code == _kernels.FUSENN_EDIVERGED_CODE:
            raise self._divergence_error(where, loss)
        if code != 0:
            raise MemoryError("fusenn: out of memory in the training engine")

    def _exclusive(self):
        """One call at a time per model (training and inference share its buffers):
        `with self._exclusive():` holds the model's lock, or raises RuntimeError."""
        self._acquire()
        return _Release(self._lock)

    def _acquire(self):
        """Take the model's lock, or raise RuntimeError if another thread holds it."""
        if not self._lock.acquire(False):
            raise RuntimeError("this model is already in use by another thread; use one "
                               "model per thread, or serialise the calls")

    # ---- sample weights ----------------------------------------------------------------

    def _check_weights(self, y, n, sample_weight, class_weight):
        """Per-sample weights (or None) from sample_weight and class_weight, as
        Keras combines them: their product."""
        sw = None
        if sample_weight is not None:
            sw = np.asarray(sample_weight)
            if sw.dtype.kind not in "fiub" or sw.ndim != 1 or sw.shape[0] != n:
                raise ValueError(f"sample_weight must be a 1-D array of {n} numbers (one per "
                                 f"sample), got {'shape ' + str(sw.shape) if sw.dtype.kind in 'fiub' else 'dtype ' + str(sw.dtype)}")
            sw = sw.astype(np.float64)
            if not np.all(np.isfinite(sw)) or np.any(sw < 0):
                raise ValueError("sample_weight must hold finite, non-negative numbers")
        if class_weight is not None:
            if not isinstance(class_weight, dict):
                raise TypeError(f"class_weight must be a dict {{class: weight}}, got {class_weight!r}")
            if self.loss.targets == "labels":
                classes, k = y, self.output_dim
            elif self.loss.name == "binary_cross_entropy" and self.output_dim == 1:
                classes, k = (y[:, 0] > 0.5).astype(np.int64), 2
            else:
                raise ValueError("class_weight needs class labels: loss 'cross_entropy', or "
                                 "'binary_cross_entropy' with one output")
            table = np.ones(k)
            for c, w in class_weight.items():
                if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or not 0 <= c < k:
                    raise ValueError(f"class_weight has class {c!r}; classes are 0 .. {k - 1}")
                w = float(w) if isinstance(w, (int, float, np.integer, np.floating)) else math.nan
                if not math.isfinite(w) or w < 0:
                    raise ValueError(f"class_weight[{c}] must be a finite, non-negative number")
                table[c] = w
            cw = table[classes]
            sw = cw if sw is None else sw * cw
        return None if sw is None else sw.astype(self.dtype)

    # ---- public training API -------------------------------------------------

    def train_on_batch(self, X, y, sample_weight=None, class_weight=None):
        """One forward pass, backward pass and optimizer update; returns the batch loss.

        sample_weight (one per row) and class_weight ({class: weight}) scale
        each row's loss (Keras semantics: the batch loss is the mean of the
        weighted row losses). If the loss or the updated weights are not
        finite, ValueError is raised, the weights are left as they were before
        the call and the optimizer state is reset.
        """
        # Shapes and dtypes here; the engine checks the values (NaN, label range) in its
        # own pass. class_weight looks labels up in a table, so they are checked first.
        X_in, y_in = X, y
        X, y = self._check_data(X, y, values=class_weight is not None)
        sw = (None if sample_weight is None and class_weight is None else
              self._check_weights(y, X.shape[0], sample_weight, class_weight))
        self._acquire()  # as `with self._exclusive()`, minus a context manager's calls
        try:
            plan = self._engine()
            if plan is None:
                self._check_data(X_in, y_in)
                loss, _ = self._train_step(X, y, "train_on_batch", sw)
            else:
                labels, T = self._targets(y)
                code, loss, _ = plan.train_batch(X, labels, T, sw, get_num_threads())
                if code == _kernels.FUSENN_EBADINPUT_CODE:
                    self._check_data(X_in, y_in)  # raises, naming what is wrong
                    raise ValueError("the batch holds values the training engine refuses")
                self._engine_result(plan, code, "train_on_batch", loss)
        finally:
            self._lock.release()
        return loss

    def fit(self, X, y, epochs=1, batch_size=32, shuffle=True, validation_data=None, verbose="auto",
            callbacks=None, validation_split=0.0, class_weight=None, sample_weight=None,
            initial_epoch=0):
        """Train for `epochs` passes over (X, y) in mini-batches; returns a History.

        Each epoch visits the samples in a permutation drawn from the model's
        seed (the same on both backends). Per-epoch loss and accuracy are
        averages over the epoch's batches (measured before each batch's update,
        as Keras reports them).

        validation_data=(Xv, yv) or validation_split (the last fraction of the
        samples, taken before shuffling, as Keras) add val_ metrics computed
        after each epoch. callbacks: fusenn.callbacks objects (EarlyStopping,
        ModelCheckpoint, LearningRateScheduler, ...). initial_epoch: resume
        counting epochs from there (runs epochs - initial_epoch epochs).
        verbose: 0 silent, 1 progress bar, 2 one line per epoch, "auto" a bar
        when stdout is a terminal and silence otherwise.

        If a step's loss or updated weights are not finite, ValueError is
        raised naming the epoch; the weights are those from before that step
        and the optimizer state is reset.
        """
        X, y = self._check_data(X, y)
        epochs = _positive_int(epochs, "epochs", allow_zero=True)
        initial_epoch = _positive_int(initial_epoch, "initial_epoch", allow_zero=True)
        sw = self._check_weights(y, X.shape[0], sample_weight, class_weight)
        if validation_data is None and validation_split:
            split = finite_number(validation_split, "validation_split")
            if not 0 <= split < 1:
                raise ValueError(f"validation_split must lie in [0, 1), got {validation_split}")
            n_val = int(X.shape[0] * split)
            if n_val == 0 or n_val == X.shape[0]:
                raise ValueError(f"validation_split={validation_split} leaves no validation or no "
                                 f"training samples out of {X.shape[0]}")
            cut = X.shape[0] - n_val
            validation_data = (X[cut:], y[cut:])
            X, y = X[:cut], y[:cut]
            sw = None if sw is None else sw[:cut]
        elif validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
                raise ValueError("validation_data must be a pair (X_val, y_val)")
            validation_data = self._check_data(*validation_data, name_x="validation X",
                                               name_y="validation y")
        batch_size = min(_positive_int(batch_size, "batch_size"), X.shape[0])
        callback_list = callbacks_module.CallbackList(
            [*([] if callbacks is None else _as_list(callbacks, "callbacks")),
             callbacks_module.ProgressBar(epochs, verbose)], self)
        n = X.shape[0]
        n_batches = -(-n // batch_size)
        order = np.arange(n, dtype=np.int64)  # the one array proportional to the data
        history = History()
        self.stop_training = False
        with self._exclusive():
            callback_list.on_train_begin()
            for epoch in range(initial_epoch, epochs):
                callback_list.on_epoch_begin(epoch)
                start = time.perf_counter()
                if shuffle:
                    _kernels.shuffle(order, int(self._rng.integers(0, 2**63)))
                where = f"epoch {epoch + 1}"
                plan = self._engine()  # hands over the current learning rate
                if plan is not None:
                    code, loss, loss_sum, correct = plan.train_epoch(
                        X, *self._targets(y), sw, order, batch_size, 0, n_batches,
                        get_num_threads())
                    self._engine_result(plan, code, where, loss)
                else:
                    loss_sum, correct = 0.0, 0
                    for first in range(0, n, batch_size):
                        idx = order[first:first + batch_size]
                        loss, hits = self._train_step(X[idx], y[idx], where,
                                                      None if sw is None else sw[idx])
                        loss_sum += loss * len(idx)
                        correct += hits
                logs = {"loss": loss_sum / n}
                if self.loss.has_accuracy:
                    logs["accuracy"] = self.loss.accuracy(correct, n, self.output_dim)
                if validation_data is not None:
                    logs.update({f"val_{k}": v for k, v in self._evaluate(*validation_data).items()})
                logs["time"] = time.perf_counter() - start
                logs["lr"] = self.optimizer.lr  # the rate this epoch ran with
                callback_list.on_epoch_end(epoch, logs)
                history.append(epoch, logs)
                if self.stop_training:
                    break
            callback_list.on_train_end()
        return history

    def predict(self, X, batch_size=None):
        """The network's outputs for X: probabilities for softmax/sigmoid outputs.
        Dropout is inactive and BatchNorm uses its running statistics.

        batch_size only bounds the rows per forward pass of the op-by-op path;
        results do not depend on it."""
        self._require_built()
        X = self._check_X(X)
        chunk = PREDICT_CHUNK if batch_size is None else _positive_int(batch_size, "batch_size")
        with self._exclusive():
            plan = self._engine() if self.loss is not None else None
            if plan is not None:
                out = np.empty((X.shape[0], self.output_dim), dtype=self.dtype)
                if plan.predict(X, out, get_num_threads()) != 0:
                    raise MemoryError("fusenn: out of memory in the training engine")
            else:
                parts = [self._forward(X[i:i + chunk], training=False)[0][-1]
                         for i in range(0, X.shape[0], chunk)]
                out = parts[0] if len(parts) == 1 else np.concatenate(parts)
                if out is X:  # a network of dropouts only
                    out = X.copy()
        if _kernels.count_nonfinite(out, get_num_threads()):
            raise ValueError(f"X is too large for this network in {self.dtype}: its outputs "
                             f"overflowed (or the weights are too large)")
        return out

    def evaluate(self, X, y, batch_size=None, sample_weight=None):
        """{'loss': ..., 'accuracy': ...} over (X, y) (accuracy only for classification;
        the loss weighted by sample_weight if given)."""
        self._require_built()
        X, y = self._check_data(X, y)
        sw = self._check_weights(y, X.shape[0], sample_weight, None)
        if batch_size is not None:
            _positive_int(batch_size, "batch_size")  # accepted for Keras compatibility
        with self._exclusive():
            return self._evaluate(X, y, sw)

    def _evaluate(self, X, y, sw=None):
        n = X.shape[0]
        plan = self._engine()
        if plan is not None:
            code, loss_sum, correct = plan.evaluate(X, *self._targets(y), sw, get_num_threads())
            if code != 0:
                raise MemoryError("fusenn: out of memory in the training engine")
        else:
            fused = self.loss.fused_kernel is not None
            loss_sum, correct = 0.0, 0
            for i in range(0, n, PREDICT_CHUNK):
                Xc, yc = X[i:i + PREDICT_CHUNK], y[i:i + PREDICT_CHUNK]
                swc = None if sw is None else sw[i:i + PREDICT_CHUNK]
                z = self._forward(Xc, training=False, logits=fused)[0][-1]
                loss, p, _ = self._loss_and_grad(z, yc, swc)
                loss_sum += loss * len(Xc)
                correct += self.loss.correct(p, yc)
        if not math.isfinite(loss_sum):
            raise ValueError(f"X is too large for this network in {self.dtype}: the loss "
                             f"overflowed (or the weights are too large)")
        result = {"loss": loss_sum / n}
        if self.loss.has_accuracy:
            result["accuracy"] = self.loss.accuracy(correct, n, self.output_dim)
        return result

    # ---- summary -----------------------------------------------------------------------

    def summary(self, print_fn=print):
        """Print a table of the layers, their output shapes and parameter counts
        (as Keras's model.summary()); returns the text. print_fn=None only returns it."""
        if print_fn is not None and not callable(print_fn):
            raise TypeError(f"print_fn must be a function taking a string, or None, got {print_fn!r}")
        rows = [("Layer (type)", "Output shape", "Params")]
        for i, layer in enumerate(self.layers):
            name = type(layer).__name__
            if isinstance(layer, Dense):
                name += f" ({layer.activation})"
            shape = f"(None, {layer.units})" if layer.units is not None else "(None, ?)"
            rows.append((f"{i + 1}. {name}", shape,
                         f"{layer.count_params():,}" if layer.built else "?"))
        widths = [max(len(r[c]) for r in rows) for c in range(3)]
        line = "-" * (sum(widths) + 6)
        fmt = lambda r: f"{r[0]:<{widths[0]}}   {r[1]:<{widths[1]}}   {r[2]:>{widths[2]}}"
        total = sum(layer.count_params() for layer in self.layers)
        buffers = sum(a.size for a in self.buffers) if self.built else 0
        text = [f"Sequential (input_dim={self.input_dim}, dtype={self.dtype.name}, "
                f"backend={self.backend_name!r})", line, fmt(rows[0]), line,
                *map(fmt, rows[1:]), line,
                f"Trainable params: {total:,}" + ("" if self.built else " (not built yet)")]
        if buffers:
            text.append(f"Non-trainable params: {buffers:,}")
        if self.loss is not None:
            text.append(f"Loss: {self.loss.name}   Optimizer: {self.optimizer!r}")
        text = "\n".join(text)
        if print_fn is not None:
            print_fn(text)
        return text

    # ---- save / load -----------------------------------------------------------------

    def config(self):
        return {
            "input_dim": self.input_dim,
            "dtype": self.dtype.name,
            "seed": self.seed,
            "backend": self.backend_name,
            "layers": [layer.config() for layer in self.layers],
            "loss": self.loss.config() if self.loss else None,
            "optimizer": self.optimizer.config() if self.optimizer else None,
            "optimizer_iterations": self.optimizer.iterations if self.optimizer else 0,
        }

    def save(self, path):
        """Write architecture, weights and optimizer state to an .npz file (no pickle).

        The file is written to a temporary file in the same directory, synced,
        and renamed over `path`, so an interrupted save never destroys an
        existing file.
        """
        self._require_built()
        arrays = {"fusenn_format": np.array(FORMAT_VERSION),
                  "config": np.array(json.dumps(self.config()))}
        for i, p in enumerate(self.params):
            arrays[f"param_{i}"] = p
        for i, a in enumerate(self.buffers):
            arrays[f"buffer_{i}"] = a
        if self.optimizer is not None and self.optimizer.state is not None:
            for name, states in self.optimizer.state.items():
                for i, s in enumerate(states):
                    arrays[f"opt_{name}_{i}"] = s
        _atomic_write(path, lambda f: np.savez(f, **arrays))


class _Release:
    """Releases a held lock on leaving a with block (cheaper than a generator
    context manager on every train_on_batch)."""
    __slots__ = ("lock",)

    def __init__(self, lock):
        self.lock = lock

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.lock.release()


def _as_list(value, name):
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise TypeError(f"{name} must be a list, got {value!r}")
    return list(value)


def _atomic_write(path, write):
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if hasattr(os, "O_DIRECTORY"):  # make the rename itself durable
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def load(path):
    """Read a model written by Sequential.save. Never unpickles anything."""
    def bad(why):
        return ValueError(f"{os.fspath(path)!s} is not a valid fusenn model file: {why}")

    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {key: f[key] for key in f.files}
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except Exception as exc:  # truncated zip, wrong format, pickled content...
        raise bad(f"{type(exc).__name__}: {exc}") from None
    if "fusenn_format" not in arrays or "config" not in arrays:
        raise bad("missing 'fusenn_format' or 'config'")
    version = arrays["fusenn_format"]
    if version.shape != () or version.dtype.kind not in "iu":
        raise bad("corrupt format version")
    if int(version) != FORMAT_VERSION:
        raise bad(f"format version {int(version)}, this fusenn reads version {FORMAT_VERSION}")
    try:
        config = json.loads(str(arrays["config"]))
        layers = [layer_from_config(spec) for spec in config["layers"]]
        model = Sequential(layers, input_dim=config["input_dim"], dtype=config["dtype"],
                           seed=config["seed"], backend=config["backend"])
        if config["loss"] is not None:
            model.compile(config["loss"], config["optimizer"])
    except (ValueError, TypeError, KeyError) as exc:
        raise bad(f"bad config ({type(exc).__name__}: {exc})") from None
    params = model.params
    for kind, targets in (("param", params), ("buffer", model.buffers)):
        for i, a in enumerate(targets):
            key = f"{kind}_{i}"
            saved = arrays.get(key)
            if saved is None or saved.shape != a.shape or saved.dtype != a.dtype:
                raise bad(f"{key} is missing or does not match the config "
                          f"(expected {a.dtype} {a.shape})")
            if not np.all(np.isfinite(saved)):
                raise bad(f"{key} contains NaN or infinity")
            a[...] = saved
    if any(label.startswith("running_var") and np.any(a < 0) for label, a in model._weight_arrays()):
        raise bad("a BatchNorm running variance is negative")
    opt = model.optimizer
    if opt is not None:
        opt.iterations = int(config.get("optimizer_iterations", 0))
        if any(key.startswith("opt_") for key in arrays):
            opt.state = {}
            for name in opt._state_names:
                states = [arrays.get(f"opt_{name}_{i}") for i in range(len(params))]
                if any(s is None or s.shape != p.shape or s.dtype != p.dtype
                       for s, p in zip(states, params)):
                    raise bad(f"optimizer state {name!r} is missing or mismatched")
                opt.state[name] = [s.copy() for s in states]
    return model
