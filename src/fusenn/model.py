"""Sequential: a stack of Dense layers with compile / fit / predict / evaluate.

The model is backend-agnostic: every numeric operation goes through
`self.backend`, either fusenn.ops (the C kernels) or fusenn.reference (the
NumPy oracle), which share names and signatures. Everything else here is
bookkeeping, validation and I/O.
"""

import contextlib
import json
import math
import os
import sys
import tempfile
import threading
import time
import weakref

import numpy as np

from . import _kernels, ops, reference
from .ops import contiguous_rows
from ._threads import get_num_threads
from .layers import Dense
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
        self._lock = threading.Lock()
        for layer in layers:
            self.add(layer)
        if input_dim is not None:
            self.build(input_dim)

    def __getstate__(self):
        # the C plan, the lock and the backend module are rebuilt on unpickling
        state = dict(self.__dict__)
        state["_plan"] = None
        del state["_lock"], state["backend"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.backend = BACKENDS[self.backend_name]
        self._lock = threading.Lock()
        if self.optimizer is not None:
            self.optimizer._model = weakref.ref(self)

    def __repr__(self):
        return (f"Sequential({self.layers}, input_dim={self.input_dim}, dtype={self.dtype.name!r}, "
                f"backend={self.backend_name!r})")

    # ---- structure --------------------------------------------------------

    def add(self, layer):
        if not isinstance(layer, Dense):
            raise TypeError(f"layers must be fusenn.Dense instances, got {layer!r}")
        if self.built:
            raise ValueError("cannot add layers to a model that is already built")
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
        try:
            for layer in self.layers:
                layer.build(fan_in, self.dtype, self._rng)
                fan_in = layer.units
        except BaseException:  # e.g. MemoryError: leave the model unbuilt
            for layer in self.layers:
                layer.W = layer.b = None
            raise
        self.input_dim = input_dim

    @property
    def output_dim(self):
        return self.layers[-1].units if self.layers else None

    @property
    def params(self):
        """The trainable arrays [W1, b1, W2, b2, ...], live (not copies)."""
        return [p for layer in self.layers for p in (layer.W, layer.b)]

    def get_weights(self):
        self._require_built()
        return [p.copy() for p in self.params]

    def set_weights(self, weights):
        """Copy `weights` ([W1, b1, ...], as get_weights returns) into the model."""
        self._require_built()
        params = self.params
        if isinstance(weights, (str, bytes, np.ndarray)) or not hasattr(weights, "__iter__"):
            raise TypeError("weights must be a list of arrays [W1, b1, W2, b2, ...]")
        weights = list(weights)
        if len(weights) != len(params):
            raise ValueError(f"weights must hold {len(params)} arrays [W1, b1, ...], got {len(weights)}")
        checked = []
        for i, (p, w) in enumerate(zip(params, weights)):
            w = np.asarray(w)
            kind = "W" if i % 2 == 0 else "b"
            name = f"weights[{i}] ({kind}{i // 2 + 1})"
            if w.shape != p.shape:
                raise ValueError(f"{name} must have shape {p.shape}, got {w.shape}")
            if w.dtype.kind not in "fiub":
                raise TypeError(f"{name} must be numeric, got dtype {w.dtype}")
            with np.errstate(over="ignore", invalid="ignore"):
                w = w.astype(p.dtype)
            if not np.all(np.isfinite(w)):
                raise ValueError(f"{name} contains NaN or infinity (or values too large "
                                 f"for {p.dtype})")
            checked.append(w)
        for p, w in zip(params, checked):
            np.copyto(p, w)

    # ---- compile ------------------------------------------------------------

    def compile(self, loss="cross_entropy", optimizer="sgd"):
        """Choose the loss and the optimizer (an instance, or 'sgd', 'adam', 'adamw',
        'rmsprop', 'adagrad' with default settings)."""
        if not self.layers:
            raise ValueError("the model has no layers; pass Dense layers to Sequential([...])")
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

    def _check_X(self, X, name="X"):
        X = np.asarray(X)
        if X.dtype.kind not in "fiub":
            raise TypeError(f"{name} must hold numbers, got dtype {X.dtype}")
        if X.ndim != 2:
            want = f"(n_samples, {self.input_dim})" if self.input_dim else "(n_samples, n_features)"
            raise ValueError(f"{name} must be 2-D with shape {want}, got shape {X.shape}")
        if X.shape[0] == 0:
            raise ValueError(f"{name} is empty: expected at least one sample, got shape {X.shape}")
        if X.shape[1] == 0:
            raise ValueError(f"{name} has no features: expected at least one column, got shape {X.shape}")
        if self.input_dim is not None and X.shape[1] != self.input_dim:
            raise ValueError(f"{name} must have shape (n_samples, {self.input_dim}), got {X.shape}")
        X = contiguous_rows(np.asarray(X, dtype=self.dtype))
        if _kernels.count_nonfinite(X, get_num_threads()):  # no mask as big as X
            raise ValueError(f"{name} contains NaN or infinity")
        return X

    def _check_y(self, y, n, name="y"):
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
            if n and (y.min() < 0 or y.max() >= k):
                bad = y[(y < 0) | (y >= k)][0]
                raise ValueError(f"{name} holds class labels outside [0, {k}) (the last layer has "
                                 f"{k} units): found {bad}")
            return np.ascontiguousarray(y, dtype=np.int64)
        if y.ndim == 1 and k == 1:
            y = y.reshape(-1, 1)
        if y.shape != (n, k):
            raise ValueError(f"{name} must have shape ({n}, {k}), got {y.shape}")
        if y.dtype.kind not in "fiub":
            raise TypeError(f"{name} must hold numbers, got dtype {y.dtype}")
        y = contiguous_rows(np.asarray(y, dtype=self.dtype))
        if _kernels.count_nonfinite(y, get_num_threads()):
            raise ValueError(f"{name} contains NaN or infinity")
        if self.loss.name == "binary_cross_entropy" and (y.min() < 0 or y.max() > 1):
            raise ValueError(f"{name} must hold targets in [0, 1] for binary_cross_entropy")
        return y

    def _check_data(self, X, y, name_x="X", name_y="y"):
        self._require_compiled()
        X = self._check_X(X, name_x)
        y = self._check_y(y, X.shape[0], name_y)
        if not self.built:
            self.build(X.shape[1])  # like Keras: the first valid data fixes input_dim
        return X, y

    # ---- the math ---------------------------------------------------------------

    def _forward(self, X, last_activation=None):
        """Outputs of every layer for X, the last one with `last_activation` if given."""
        outputs = [X]
        for i, layer in enumerate(self.layers):
            act = last_activation if (last_activation and i == len(self.layers) - 1) else layer.activation
            outputs.append(self.backend.dense_forward(outputs[-1], layer.W, layer.b, act))
        return outputs

    def _loss_and_grad(self, outputs, y):
        """(loss, probabilities for metrics, dL/d(last output), last layer's activation for backward)."""
        if self.loss.fused_kernel:
            # outputs[-1] are logits here: the fused kernel applies softmax / sigmoid itself
            loss, p, dz = getattr(self.backend, self.loss.fused_kernel)(outputs[-1], y)
            return loss, p, dz, "identity"
        loss, da = self.backend.mse(outputs[-1], y)
        return loss, outputs[-1], da, self.layers[-1].activation

    def _train_step(self, X, y, where):
        """Forward, loss, backward and update on one batch, op by op; returns
        (loss, correct predictions).

        A non-finite loss raises before anything changes; an update that makes
        weights non-finite is undone exactly (the optimizer leaves the previous
        weights in the gradient arrays). Either way the optimizer state is reset,
        as the C engine does.
        """
        outputs = self._forward(X, "identity" if self.loss.fused_kernel else None)
        loss, p, dy, last_act = self._loss_and_grad(outputs, y)
        if not math.isfinite(loss):
            self.optimizer.reset()
            raise self._divergence_error(where, loss)
        grads = [None] * (2 * len(self.layers))
        for i in reversed(range(len(self.layers))):
            layer = self.layers[i]
            act = last_act if i == len(self.layers) - 1 else layer.activation
            dw, db, dy = self.backend.dense_backward(outputs[i], layer.W, outputs[i + 1], dy, act,
                                                     need_dx=i > 0)
            grads[2 * i], grads[2 * i + 1] = dw, db
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
        op by op: on the NumPy backend, or with an optimizer the engine does not
        know (a subclass). The plan points at the model's weights, gradient
        buffers and optimizer state; the optimizer's hyperparameters and step
        count are handed over on every call, so changing them between calls works."""
        config = self.optimizer.engine_config()
        if self.backend is not ops or config is None:
            return None
        if self._plan is None:
            state = self.optimizer.ensure_state(self.params)
            names = self.optimizer._state_names
            layers = []
            for i, layer in enumerate(self.layers):
                dW, db = np.empty_like(layer.W), np.empty_like(layer.b)
                layers.append((layer.W, layer.b, dW, db, _ACTIVATION_IDS[layer.activation],
                               [state[name][2 * i] for name in names],
                               [state[name][2 * i + 1] for name in names]))
            self._plan = _kernels.Plan(layers, self.loss.engine_id, self.dtype)
        self._plan.set_optimizer(config, self.optimizer.iterations)
        return self._plan

    def _targets(self, y):
        """(labels, targets) as the engine takes them: one of the two is None."""
        return (y, None) if self.loss.targets == "labels" else (None, y)

    def _engine_result(self, plan, code, where, loss):
        """Sync the optimizer's step count and turn an engine code into an exception."""
        self.optimizer.iterations = plan.steps
        if code == _kernels.FUSENN_EDIVERGED_CODE:
            raise self._divergence_error(where, loss)
        if code != 0:
            raise MemoryError("fusenn: out of memory in the training engine")

    @contextlib.contextmanager
    def _exclusive(self):
        """One call at a time per model: training and inference share its buffers."""
        if not self._lock.acquire(blocking=False):
            raise RuntimeError("this model is already in use by another thread; use one "
                               "model per thread, or serialise the calls")
        try:
            yield
        finally:
            self._lock.release()

    # ---- public training API -------------------------------------------------

    def train_on_batch(self, X, y):
        """One forward pass, backward pass and optimizer update; returns the batch loss.

        If the loss or the updated weights are not finite, ValueError is raised,
        the weights are left as they were before the call and the optimizer
        state is reset.
        """
        X, y = self._check_data(X, y)
        with self._exclusive():
            plan = self._engine()
            if plan is None:
                loss, _ = self._train_step(X, y, "train_on_batch")
            else:
                code, loss, _ = plan.train_batch(X, *self._targets(y), get_num_threads())
                self._engine_result(plan, code, "train_on_batch", loss)
        return loss

    def fit(self, X, y, epochs=1, batch_size=32, shuffle=True, validation_data=None, verbose=1):
        """Train for `epochs` passes over (X, y) in mini-batches; returns a History.

        Each epoch visits the samples in a permutation drawn from the model's
        seed (the same on both backends). Per-epoch loss and accuracy are
        averages over the epoch's batches (measured before each batch's update,
        as Keras reports them); with validation_data=(Xv, yv) the val_ metrics
        are computed after the epoch. If a step's loss or updated weights are
        not finite, ValueError is raised naming the epoch; the weights are those
        from before that step and the optimizer state is reset.
        """
        X, y = self._check_data(X, y)
        epochs = _positive_int(epochs, "epochs", allow_zero=True)
        batch_size = min(_positive_int(batch_size, "batch_size"), X.shape[0])
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
                raise ValueError("validation_data must be a pair (X_val, y_val)")
            Xv, yv = self._check_data(*validation_data, name_x="validation X", name_y="validation y")
        n = X.shape[0]
        n_batches = -(-n // batch_size)
        order = np.arange(n, dtype=np.int64)  # the one array proportional to the data
        history = History()
        with self._exclusive():
            plan = self._engine()
            for epoch in range(epochs):
                start = time.perf_counter()
                if shuffle:
                    _kernels.shuffle(order, int(self._rng.integers(0, 2**63)))
                where = f"epoch {epoch + 1}"
                if plan is not None:
                    code, loss, loss_sum, correct = plan.train_epoch(
                        X, *self._targets(y), order, batch_size, 0, n_batches, get_num_threads())
                    self._engine_result(plan, code, where, loss)
                else:
                    loss_sum, correct = 0.0, 0
                    for first in range(0, n, batch_size):
                        idx = order[first:first + batch_size]
                        loss, hits = self._train_step(X[idx], y[idx], where)
                        loss_sum += loss * len(idx)
                        correct += hits
                logs = {"loss": loss_sum / n}
                if self.loss.has_accuracy:
                    logs["accuracy"] = self.loss.accuracy(correct, n, self.output_dim)
                if validation_data is not None:
                    logs.update({f"val_{k}": v for k, v in self._evaluate(Xv, yv).items()})
                logs["time"] = time.perf_counter() - start
                history.append(epoch, logs)
                if verbose:
                    self._print_epoch(epoch, epochs, logs)
        return history

    @staticmethod
    def _print_epoch(epoch, epochs, logs):
        parts = [f"Epoch {epoch + 1}/{epochs}", f"{logs['time']:.3f}s"]
        parts += [f"{k}: {v:.4f}" for k, v in logs.items() if k != "time"]
        print(" - ".join(parts), file=sys.stdout, flush=True)

    def predict(self, X, batch_size=None):
        """The network's outputs for X: probabilities for softmax/sigmoid outputs.

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
                parts = [self._forward(X[i:i + chunk])[-1] for i in range(0, X.shape[0], chunk)]
                out = parts[0] if len(parts) == 1 else np.concatenate(parts)
        if _kernels.count_nonfinite(out, get_num_threads()):
            raise ValueError(f"X is too large for this network in {self.dtype}: its outputs "
                             f"overflowed (or the weights are too large)")
        return out

    def evaluate(self, X, y, batch_size=None):
        """{'loss': ..., 'accuracy': ...} over (X, y) (accuracy only for classification)."""
        self._require_built()
        X, y = self._check_data(X, y)
        if batch_size is not None:
            _positive_int(batch_size, "batch_size")  # accepted for Keras compatibility
        with self._exclusive():
            return self._evaluate(X, y)

    def _evaluate(self, X, y):
        n = X.shape[0]
        plan = self._engine()
        if plan is not None:
            code, loss_sum, correct = plan.evaluate(X, *self._targets(y), get_num_threads())
            if code != 0:
                raise MemoryError("fusenn: out of memory in the training engine")
        else:
            last = "identity" if self.loss.fused_kernel else None
            loss_sum, correct = 0.0, 0
            for i in range(0, n, PREDICT_CHUNK):
                Xc, yc = X[i:i + PREDICT_CHUNK], y[i:i + PREDICT_CHUNK]
                loss, p, _, _ = self._loss_and_grad(self._forward(Xc, last), yc)
                loss_sum += loss * len(Xc)
                correct += self.loss.correct(p, yc)
        if not math.isfinite(loss_sum):
            raise ValueError(f"X is too large for this network in {self.dtype}: the loss "
                             f"overflowed (or the weights are too large)")
        result = {"loss": loss_sum / n}
        if self.loss.has_accuracy:
            result["accuracy"] = self.loss.accuracy(correct, n, self.output_dim)
        return result

    # ---- save / load -----------------------------------------------------------------

    def config(self):
        return {
            "input_dim": self.input_dim,
            "dtype": self.dtype.name,
            "seed": self.seed,
            "backend": self.backend_name,
            "layers": [layer.config() for layer in self.layers],
            "loss": self.loss.name if self.loss else None,
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
        if self.optimizer is not None and self.optimizer.state is not None:
            for name, states in self.optimizer.state.items():
                for i, s in enumerate(states):
                    arrays[f"opt_{name}_{i}"] = s
        _atomic_write(path, lambda f: np.savez(f, **arrays))


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
        layers = [Dense(spec["units"], spec["activation"]) for spec in config["layers"]]
        model = Sequential(layers, input_dim=config["input_dim"], dtype=config["dtype"],
                           seed=config["seed"], backend=config["backend"])
        if config["loss"] is not None:
            model.compile(config["loss"], config["optimizer"])
    except (ValueError, TypeError, KeyError) as exc:
        raise bad(f"bad config ({type(exc).__name__}: {exc})") from None
    params = model.params
    for i, p in enumerate(params):
        saved = arrays.get(f"param_{i}")
        if saved is None or saved.shape != p.shape or saved.dtype != p.dtype:
            raise bad(f"param_{i} is missing or does not match the config "
                      f"(expected {p.dtype} {p.shape})")
        if not np.all(np.isfinite(saved)):
            raise bad(f"param_{i} contains NaN or infinity")
        p[...] = saved
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
