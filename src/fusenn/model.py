"""Sequential: a stack of layers with compile / fit / predict / evaluate.

The model is backend-agnostic: every numeric operation goes through
`self.backend`, either fusenn.ops (the C kernels) or fusenn.reference (the
NumPy oracle), which share names and signatures; on the C backend, training
and inference run in the C engine through fusenn._engine. The checks of
users' arrays live in _validation.py, saving and loading in saving.py.
"""

import math
import signal
import threading
import time
import weakref

import numpy as np

from . import _engine, ops, reference, saving
from . import callbacks as callbacks_module
from ._common import positive_int
from ._threads import get_num_threads
from ._validation import (check_data, check_input_shape, check_weights, check_X, split_validation,
                          writeable)
from .layers import Dropout, Layer, shape_text
from .losses import get_loss
from .optimizers import get_optimizer

__all__ = ["Sequential", "History", "load", "FORMAT_VERSION"]

BACKENDS = {"c": ops, "numpy": reference}
DTYPES = {"float32": np.float32, "float64": np.float64}
FORMAT_VERSION = saving.FORMAT_VERSION  # of the .npz files written by save()
PREDICT_CHUNK = 1024  # samples per forward pass in predict/evaluate (as csrc/plan.c)
load = saving.load


def _dtype_name(dtype):
    try:
        name = np.dtype(dtype).name
    except TypeError:
        name = None
    if dtype is None or name not in DTYPES:
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    return name


class History:
    """What `Sequential.fit` returns: the metrics of each epoch.

    Attributes
    ----------
    epoch : list of int
        The 0-based epochs that ran.
    history : dict of str to list
        Each metric's per-epoch values: ``"loss"``, ``"accuracy"``
        (classification), ``"val_loss"`` and ``"val_accuracy"`` (with
        validation data), ``"time"`` (the epoch's seconds) and ``"lr"`` (the
        learning rate it ran with), plus keys callbacks add.
    """

    def __init__(self):
        self.epoch = []
        self.history = {}

    def append(self, epoch, logs):
        """Record one epoch's `logs` (a dict of metric values)."""
        self.epoch.append(epoch)
        for key, value in logs.items():
            self.history.setdefault(key, []).append(value)

    def __repr__(self):
        return f"History(epochs={len(self.epoch)}, keys={list(self.history)})"


class Sequential:
    """A feed-forward network: each layer's output is the next one's input.

    Parameters
    ----------
    layers : list of Layer, optional
        The layers, first to last; more can be appended with `add` until the
        model is built.
    input_dim : int, optional
        The number of features of a flat sample: ``input_dim=d`` is
        ``input_shape=(d,)``.
    dtype : {"float32", "float64"}, default "float32"
        The dtype of every weight and of the computation.
    seed : int, optional
        Makes the initial weights, `fit`'s shuffles and Dropout's masks
        reproducible; None draws them from fresh entropy.
    backend : {"c", "numpy"}, default "c"
        ``"c"`` runs fusenn's C kernels and its training engine; ``"numpy"``
        runs `fusenn.reference`, the same math in plain NumPy, one call per
        operation.
    input_shape : tuple of int, optional
        One sample's shape without the batch dimension: ``(features,)``,
        images ``(height, width, channels)`` or sequences ``(steps,
        features)``. Give it or `input_dim`, not both; without either the
        first `fit` (or `build`) fixes it.

    Attributes
    ----------
    layers : list of Layer
        The layers.
    input_shape : tuple of int or None
        A sample's shape, once built.
    loss, optimizer
        What `compile` chose (None before).
    history : History or None
        The History of the last `fit`, also when Ctrl-C stopped it.
    stop_training : bool
        Set to True (by a callback) to end `fit` after the current epoch.

    See Also
    --------
    fusenn.load : read a model written by `save`.

    Examples
    --------
    >>> import fusenn
    >>> X, y = fusenn.datasets.load_digits()
    >>> model = fusenn.Sequential([fusenn.Dense(64, activation="relu"),
    ...                            fusenn.Dense(10, activation="softmax")],
    ...                           input_dim=64, seed=0)
    >>> model.compile(loss="cross_entropy", optimizer=fusenn.SGD(lr=0.1, momentum=0.9))
    >>> history = model.fit(X, y, epochs=5, batch_size=32, verbose=0)
    >>> model.predict(X[:2]).shape
    (2, 10)
    """

    def __init__(self, layers=(), input_dim=None, dtype="float32", seed=None, backend="c",
                 input_shape=None):
        if not isinstance(backend, str) or backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}")
        try:
            layers = [] if layers is None else list(layers)
        except TypeError:
            raise TypeError(f"layers must be a list of fusenn layers, got {layers!r}") from None
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
            raise ValueError(f"seed must be a non-negative int or None, got {seed!r}")
        if input_dim is not None and input_shape is not None:
            raise ValueError("give input_shape or input_dim, not both (input_dim=d is "
                             "input_shape=(d,))")
        self.backend_name = backend
        self.backend = BACKENDS[backend]
        self.dtype = np.dtype(DTYPES[_dtype_name(dtype)])
        self.seed = None if seed is None else int(seed)
        self._rng = np.random.default_rng(self.seed)
        self.layers = []
        self.input_shape = None  # a sample's shape, once built
        self.loss = None
        self.optimizer = None
        self._arena = self._arena_flat = None  # every parameter, in one array (_engine)
        self._plan = None  # the C training engine, built on first use (see _engine)
        self._plan_config = None  # the optimizer settings last handed to it
        self._lock = threading.Lock()
        self.stop_training = False  # set by callbacks (EarlyStopping) to end fit()
        self.history = None  # the History of the last fit, also when Ctrl-C stopped it
        for layer in layers:
            self.add(layer)
        if input_dim is not None:
            self.build(check_input_shape(input_dim, "input_dim"))
        elif input_shape is not None:
            self.build(input_shape)

    def __getstate__(self):
        # the C plan, the lock, the backend module and the arenas (the layers and
        # the optimizer state carry the values) are rebuilt on unpickling
        state = dict(self.__dict__)
        state["_plan"] = state["_plan_config"] = None
        state["_arena"] = state["_arena_flat"] = None
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
                    setattr(layer, name, writeable(value))
        if self.built:
            _engine.pack_params(self)
        if self.optimizer is not None:
            self.optimizer._model = weakref.ref(self)
            if self.optimizer.state is not None and self.built:
                self.optimizer.ensure_state(self.params, self._arena)

    def __repr__(self):
        shape = self.input_shape
        where = (f"input_dim={shape[0]}" if shape is not None and len(shape) == 1
                 else f"input_shape={shape}")
        return (f"Sequential({self.layers}, {where}, dtype={self.dtype.name!r}, "
                f"backend={self.backend_name!r})")

    # ---- structure --------------------------------------------------------

    def add(self, layer):
        """Append `layer` to the model (before it is built).

        Raises
        ------
        TypeError
            If `layer` is not a fusenn `Layer`.
        ValueError
            If the model is already built, or the layer is already in it.
        """
        if not isinstance(layer, Layer):
            raise TypeError(f"layers must be fusenn layers (Dense, Dropout, BatchNorm, ...), "
                            f"got {layer!r}")
        if self.built:
            raise ValueError("cannot add layers to a model that is already built")
        if any(layer is other for other in self.layers):
            raise ValueError(f"{layer!r} is already in this model; create a new layer instead")
        self.layers.append(layer)

    @property
    def built(self):
        """Whether every layer has its weights (the input shape is known)."""
        return self.input_shape is not None  # set once every layer is built

    @property
    def input_dim(self):
        """The number of features of a flat sample (None for images and sequences)."""
        shape = self.input_shape
        return shape[0] if shape is not None and len(shape) == 1 else None

    @property
    def output_shape(self):
        """A sample's output shape (None until built)."""
        return self.layers[-1].output_shape if self.built else None

    @property
    def output_dim(self):
        """The number of outputs per row (the last dimension of the output)."""
        if self.built:
            return self.output_shape[-1]
        return getattr(self.layers[-1], "units", None) if self.layers else None

    def _output_shapes(self, input_shape):
        """Every layer's output shape for samples of `input_shape`, without building
        (ValueError naming the layer that cannot take its input)."""
        shapes = []
        for layer in self.layers:
            input_shape = tuple(layer.compute_output_shape(input_shape))
            shapes.append(input_shape)
        return shapes

    def build(self, input_shape):
        """Draw every layer's weights for samples of `input_shape`.

        Parameters
        ----------
        input_shape : int or tuple of int
            One sample's shape (an int: the number of features). Building an
            already built model checks that the shape is the same.

        Raises
        ------
        ValueError
            If a layer cannot take its input's shape (naming the layer), or the
            model is built for another shape.
        """
        shape = check_input_shape(input_shape)
        if not self.layers:
            raise ValueError("the model has no layers; pass layers to Sequential([...])")
        if self.built:
            if shape != self.input_shape:
                raise ValueError(f"the model is built for {self._shape_name(self.input_shape)}, "
                                 f"got {self._shape_name(shape)}")
            return
        self._output_shapes(shape)  # a layer that cannot take its input fails before any draw
        # dropout masks come from their own stream of the model's seed, so adding
        # or removing a Dropout changes neither the weights drawn nor fit's shuffles
        mask_seeds = np.random.default_rng(None if self.seed is None else [self.seed, 1])
        try:
            for layer in self.layers:
                layer.build(shape, self.dtype, self._rng)
                if isinstance(layer, Dropout) and layer.seed is None:
                    layer._base_seed = int(mask_seeds.integers(0, 2**63))
                shape = layer.output_shape
            self.input_shape = check_input_shape(input_shape)
            _engine.pack_params(self)
        except BaseException:  # e.g. MemoryError: leave the model unbuilt
            for layer in self.layers:
                layer.unbuild()
            self.input_shape = None
            raise

    @staticmethod
    def _shape_name(shape):
        return f"input_dim={shape[0]}" if len(shape) == 1 else f"input_shape={shape}"

    @property
    def params(self):
        """The trainable arrays ``[W1, b1, W2, b2, ...]``, live (not copies)."""
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
        """Copies of every layer's weights, in layer order.

        Returns
        -------
        list of numpy.ndarray
            Keras's order: Dense ``W``, ``b``; BatchNorm ``gamma``, ``beta``,
            running mean, running variance; and so on for each layer.
        """
        self._require_built()
        return [a.copy() for _, a in self._weight_arrays()]

    def set_weights(self, weights):
        """Copy `weights` into the model.

        Parameters
        ----------
        weights : list of array_like
            One array per parameter and buffer, as `get_weights` returns them,
            each of the shape of the array it replaces; values are cast to the
            model's dtype.

        Raises
        ------
        ValueError
            If the count or a shape is wrong, a value is not finite, or a
            running variance is negative; the model is then left unchanged.
        """
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
        """Choose the loss and the optimizer.

        Parameters
        ----------
        loss : str or fusenn.losses.Loss, default "cross_entropy"
            ``"cross_entropy"``, ``"binary_cross_entropy"``, ``"mse"``,
            ``"mae"``, ``"huber"`` (or Keras's names for them), or an instance
            such as ``fusenn.losses.Huber(delta=2.0)``. The loss works on the
            last layer's output, whatever its kind; cross-entropy and binary
            cross-entropy take over its softmax or sigmoid (or read logits).
        optimizer : str or fusenn.optimizers.Optimizer, default "sgd"
            An instance, or ``"sgd"``, ``"adam"``, ``"adamw"``, ``"rmsprop"``,
            ``"adagrad"`` with default settings. An optimizer belongs to one
            model; its state starts afresh.

        Raises
        ------
        ValueError
            If the loss does not fit the last layer's activation (cross-entropy
            needs softmax or identity, binary cross-entropy sigmoid or
            identity), a name is unknown, or the optimizer is compiled into
            another model.
        """
        if not self.layers:
            raise ValueError("the model has no layers; pass layers to Sequential([...])")
        loss = get_loss(loss)
        loss.check_output_activation(self.layers[-1].output_activation)
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
            raise ValueError("the model is not built: pass input_shape=... (or input_dim=...) "
                             "to Sequential, call model.build(input_shape), or fit it first")

    def _require_compiled(self):
        if self.loss is None:
            raise ValueError("the model is not compiled: call model.compile(loss=..., optimizer=...) first")

    def _rows_per_sample(self):
        """Output rows (of output_dim values) per sample: one, or the steps of a sequence."""
        return math.prod(self.output_shape[:-1])

    def _masked_output(self):
        """Whether the output carries a time-step mask: an Embedding(mask_zero) first
        and every layer after it keeping the steps (the rule of _forward)."""
        first = self.layers[0]
        if not getattr(first, "mask_zero", False):
            return False
        steps = first.input_shape[0]
        return all(len(layer.output_shape) >= 2 and layer.output_shape[0] == steps
                   for layer in self.layers)

    def _scored_rows(self, X):
        """The output rows accuracy is over: every step of every sample, or the real
        steps when the output is masked (index 0 is padding)."""
        if self._masked_output():
            return int(np.count_nonzero(X))
        return len(X) * self._rows_per_sample()

    # ---- the math, op by op ---------------------------------------------------------

    def _forward(self, X, training, logits=False, first_row=0):
        """(outputs, caches, masks): outputs[0] = X and outputs[i + 1] is layer i's
        output; masks[i] the time-step mask layer i saw (None: none) and masks[-1]
        the output's. With logits=True the last layer stops before its activation.
        A mask (made by Embedding(mask_zero)) lasts while outputs keep its steps,
        as in the C engine."""
        outputs, caches, masks = [X], [], [None]
        mask, steps, last = None, None, len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = outputs[-1]
            kw = {"mask": mask} if layer.uses_mask else {}
            if layer.random:
                kw["first_row"] = first_row
            y, cache = layer.forward(self.backend, x, training, logits and i == last, **kw)
            new = layer.output_mask(x, mask)
            if new is not mask:
                steps = layer.input_shape[0]
            out = layer.output_shape
            mask = new if new is not None and len(out) >= 2 and out[0] == steps else None
            outputs.append(y)
            caches.append(cache)
            masks.append(mask)
        return outputs, caches, masks

    def _loss_and_grad(self, z, y, sample_weight=None, mask=None):
        """(loss, probabilities for metrics, dL/dz) of the last layer's output z:
        logits for the fused losses, the activated output otherwise. The loss
        reads z as rows of its last dimension; masked steps weigh 0 and the loss
        is the mean over the real ones (Keras)."""
        k = z.shape[-1]
        rows = z.reshape(-1, k)
        per_sample = len(rows) // len(z)
        if mask is not None:
            real = mask.reshape(-1)
            scale = len(real) / real.sum() if real.any() else 0.0
            weights = 1.0 if sample_weight is None else np.repeat(sample_weight, per_sample)
            sample_weight = (np.where(real, weights * scale, 0.0)).astype(z.dtype)
        elif sample_weight is not None and per_sample > 1:
            sample_weight = np.repeat(sample_weight, per_sample)
        kw = {} if sample_weight is None else {"sample_weight": sample_weight}
        labels = self.loss.targets == "labels"
        t = y.reshape(-1) if labels else y.reshape(-1, k)
        if self.loss.fused_kernel:
            # the fused kernel applies softmax / sigmoid to the logits itself
            loss, p, dz = getattr(self.backend, self.loss.fused_kernel)(rows, t, **kw)
        else:
            (loss, dz), p = self.loss.compute(self.backend, rows, t, **kw), rows
        return loss, p, dz.reshape(z.shape)

    def _correct(self, p, y, mask=None):
        t = y.reshape(-1) if self.loss.targets == "labels" else y.reshape(-1, p.shape[-1])
        if mask is not None:
            real = mask.reshape(-1)
            p, t = p[real], t[real]
        return self.loss.correct(p, t)

    def _train_step(self, X, y, where, sample_weight=None, chunks=1):
        """Forward, loss, backward and update on one batch, op by op; returns
        (loss, correct predictions). chunks > 1: the gradient is the ordered sum
        of that many chunks' (rows cut as the C engine cuts them), each computed
        alone with its rows weighted by their share of the batch.

        A non-finite loss raises before anything changes; an update that makes
        weights non-finite is undone exactly (the optimizer leaves the previous
        weights in the gradient arrays). Either way the optimizer state is reset,
        as the C engine does.
        """
        fused = self.loss.fused_kernel is not None
        n, chunks = len(X), max(1, chunks)
        loss, correct, grads = 0.0, 0, None
        last = len(self.layers) - 1
        # nothing before the first layer with parameters needs a gradient (as csrc/plan.c)
        first_trainable = next((i for i, layer in enumerate(self.layers) if layer.param_names),
                               len(self.layers))
        try:
            for c in range(chunks):
                r0, r1 = c * n // chunks, (c + 1) * n // chunks
                if r0 == r1:
                    continue
                sw = None if sample_weight is None else sample_weight[r0:r1]
                if r1 - r0 < n:  # the chunk's share of the batch
                    share = (r1 - r0) / n
                    sw = ((1.0 if sw is None else sw.astype(np.float64)) * share
                          * np.ones(r1 - r0)).astype(self.dtype)
                outputs, caches, masks = self._forward(X[r0:r1], training=True, logits=fused,
                                                       first_row=r0)
                chunk_loss, p, dy = self._loss_and_grad(outputs[-1], y[r0:r1], sw, masks[-1])
                loss += chunk_loss
                correct += self._correct(p, y[r0:r1], masks[-1])
                if not math.isfinite(chunk_loss):
                    break
                chunk_grads = []
                for i in range(last, first_trainable - 1, -1):
                    layer = self.layers[i]
                    kw = {"mask": masks[i]} if layer.uses_mask else {}
                    dy, layer_grads = layer.backward(
                        self.backend, outputs[i], outputs[i + 1], caches[i], dy,
                        i > first_trainable, logits=fused and i == last, **kw)
                    chunk_grads[:0] = layer_grads
                grads = chunk_grads if grads is None else [g + h for g, h in
                                                           zip(grads, chunk_grads)]
        finally:
            for layer in self.layers:  # once per step, as the engine
                if layer.random:
                    layer.advance()
        if not math.isfinite(loss):
            self.optimizer.reset()
            raise self._divergence_error(where, loss)
        grads = [np.ascontiguousarray(g) for g in grads]
        # which parameters the L2 penalty and weight decay apply to (the layers say)
        self.optimizer.__dict__["_decayed"] = [d for layer in self.layers for d in layer.decayed()]
        if self.optimizer.step(self.backend, self.params, grads):
            for param, previous in zip(self.params, grads):
                np.copyto(param, previous)
            self.optimizer.reset()
            raise self._divergence_error(where, loss)
        return loss, correct

    @staticmethod
    def _divergence_error(where, loss):
        return ValueError(f"training diverged in {where} (loss {loss:.4g}, or the update made "
                          f"weights overflow); the weights are those from before that step; "
                          f"try a lower learning rate")

    # ---- the C engine ---------------------------------------------------------------

    def _engine(self):
        """The C training plan for this model, or None when it trains op by op
        (see fusenn._engine.plan_for)."""
        return _engine.plan_for(self)

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

    # ---- public training API -------------------------------------------------

    def train_on_batch(self, X, y, sample_weight=None, class_weight=None, batch_chunks=1):
        """One forward pass, backward pass and optimizer update on one batch.

        Parameters
        ----------
        X : array_like
            The batch, shape ``(n, *input_shape)``.
        y : array_like
            Integer labels ``(n,)`` for cross-entropy (one per step on
            sequence outputs), targets of the output's shape otherwise.
        sample_weight : array_like, optional
            One weight per row: the batch loss is the mean of the weighted row
            losses (Keras's semantics).
        class_weight : dict, optional
            ``{class: weight}``, multiplied into each row's weight by its label.
        batch_chunks : int, default 1
            See `fit`.

        Returns
        -------
        float
            The batch loss, computed before the update.

        Raises
        ------
        ValueError
            If the batch is invalid (naming what is wrong), or the loss or the
            updated weights are not finite: the weights are then as they were
            before the call and the optimizer state is reset.
        """
        # Shapes and dtypes here; the engine checks the values (NaN, label range) in its
        # own pass. class_weight looks labels up in a table, so they are checked first.
        X_in, y_in = X, y
        X, y = check_data(self, X, y, values=class_weight is not None)
        sw = (None if sample_weight is None and class_weight is None else
              check_weights(self, y, X.shape[0], sample_weight, class_weight))
        chunks = 1 if batch_chunks == 1 else positive_int(batch_chunks, "batch_chunks")
        self._acquire()  # as `with self._exclusive()`, minus a context manager's calls
        try:
            plan = self._engine()
            if plan is None:
                check_data(self, X_in, y_in)
                with _BetweenSteps():
                    loss, _ = self._train_step(X, y, "train_on_batch", sw, chunks)
            else:
                labels, T = _engine.targets(self, y)
                try:
                    code, loss, _ = plan.train_batch(_engine.samples(X), labels, T, sw,
                                                     get_num_threads(), chunks)
                finally:  # a Ctrl-C that arrived during the step is raised here
                    self.optimizer.__dict__["iterations"] = plan.steps
                if code == _engine.EBADINPUT:
                    check_data(self, X_in, y_in)  # raises, naming what is wrong
                    raise ValueError("the batch holds values the training engine refuses")
                _engine.raise_for(self, plan, code, "train_on_batch", loss)
        finally:
            self._lock.release()
        return loss

    def fit(self, X, y, epochs=1, batch_size=32, shuffle=True, validation_data=None, verbose="auto",
            callbacks=None, validation_split=0.0, class_weight=None, sample_weight=None,
            initial_epoch=0, batch_chunks=1):
        """Train for `epochs` passes over ``(X, y)`` in mini-batches.

        Each epoch visits the samples in a permutation drawn from the model's
        seed (the same on both backends). Per-epoch loss and accuracy are
        averages over the epoch's batches (measured before each batch's update,
        as Keras reports them). On the C backend each epoch is one call into
        the training engine.

        Parameters
        ----------
        X : array_like
            Samples, shape ``(n, *input_shape)`` (integer indices for an
            Embedding first layer).
        y : array_like
            Integer labels ``(n,)`` for cross-entropy (one per step on
            sequence outputs), targets of the output's shape otherwise.
        epochs : int, default 1
            The epoch to stop after (counting from 0, or from `initial_epoch`).
        batch_size : int, default 32
            Samples per update; the last batch of an epoch may be smaller.
        shuffle : bool, default True
            Visit the samples in a new seeded permutation each epoch.
        validation_data : tuple (X_val, y_val), optional
            Evaluated after each epoch: adds ``val_loss`` (and
            ``val_accuracy``) to the logs.
        verbose : {0, 1, 2, "auto"}, default "auto"
            0 silent, 1 a progress bar (tqdm when installed), 2 one line per
            epoch, ``"auto"`` a bar when stdout is a terminal and silence
            otherwise.
        callbacks : list of fusenn.callbacks.Callback, optional
            EarlyStopping, ModelCheckpoint, LearningRateScheduler, ...
        validation_split : float, default 0.0
            The last fraction of the samples, taken before shuffling (as
            Keras), used as validation data instead of `validation_data`.
        class_weight : dict, optional
            ``{class: weight}`` scaling each row's loss by its label.
        sample_weight : array_like, optional
            One weight per sample scaling its loss (Keras's semantics).
        initial_epoch : int, default 0
            Resume counting epochs from there (runs ``epochs -
            initial_epoch`` epochs).
        batch_chunks : int, default 1
            Each batch's gradient is the sum of that many chunks' (the rows
            cut evenly, each chunk's gradient taken alone, its rows weighted by
            their share of the batch, added in order), as
            ``fusenn.distributed.fit`` computes it over ranks: with the same
            `batch_chunks`, the bits are the same. Dropout draws the whole
            batch's masks; BatchNorm normalises each chunk with its own
            statistics. 1: the plain step.

        Returns
        -------
        History
            The per-epoch metrics, also kept as ``model.history``.

        Raises
        ------
        ValueError
            If the data are invalid (naming what is wrong), or a step's loss or
            updated weights are not finite: the error names the epoch, the
            weights are those from before that step and the optimizer state is
            reset.
        KeyboardInterrupt
            On Ctrl-C, within a batch; the model is as after its last whole
            step and ``model.history`` holds the epochs that finished.
        """
        X, y = check_data(self, X, y)
        chunks = positive_int(batch_chunks, "batch_chunks")
        epochs = positive_int(epochs, "epochs", allow_zero=True)
        initial_epoch = positive_int(initial_epoch, "initial_epoch", allow_zero=True)
        sw = check_weights(self, y, X.shape[0], sample_weight, class_weight)
        if validation_data is None and validation_split:
            X, y, sw, validation_data = split_validation(X, y, sw, validation_split)
        elif validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
                raise ValueError("validation_data must be a pair (X_val, y_val)")
            validation_data = check_data(self, *validation_data, name_x="validation X",
                                         name_y="validation y")
        batch_size = min(positive_int(batch_size, "batch_size"), X.shape[0])
        callback_list = callbacks_module.CallbackList(
            [*([] if callbacks is None else _as_list(callbacks, "callbacks")),
             callbacks_module.ProgressBar(epochs, verbose)], self)
        n = X.shape[0]
        n_batches = -(-n // batch_size)
        rows = self._scored_rows(X)
        order = np.arange(n, dtype=np.int64)  # the one array proportional to the data
        history = self.history = History()  # Keras keeps it on the model (also after Ctrl-C)
        self.stop_training = False
        with self._exclusive():
            callback_list.on_train_begin()
            for epoch in range(initial_epoch, epochs):
                callback_list.on_epoch_begin(epoch)
                start = time.perf_counter()
                if shuffle:
                    ops.shuffle(order, int(self._rng.integers(0, 2**63)))
                where = f"epoch {epoch + 1}"
                plan = self._engine()  # hands over the current learning rate
                if plan is not None:
                    try:  # Ctrl-C stops the engine after a whole step (KeyboardInterrupt)
                        code, loss, loss_sum, correct = plan.train_epoch(
                            _engine.samples(X), *_engine.targets(self, y), sw, order,
                            batch_size, 0, n_batches, get_num_threads(), chunks)
                    finally:
                        self.optimizer.__dict__["iterations"] = plan.steps
                    _engine.raise_for(self, plan, code, where, loss)
                else:
                    loss_sum, correct = 0.0, 0
                    with _BetweenSteps() as steps:
                        for first in range(0, n, batch_size):
                            steps.raise_pending()
                            idx = order[first:first + batch_size]
                            loss, hits = self._train_step(X[idx], y[idx], where,
                                                          None if sw is None else sw[idx], chunks)
                            loss_sum += loss * len(idx)
                            correct += hits
                logs = {"loss": loss_sum / n}
                if self.loss.has_accuracy:
                    logs["accuracy"] = self.loss.accuracy(correct, rows, self.output_dim)
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
        """The network's outputs for `X`.

        Dropout is inactive and BatchNorm uses its running statistics.

        Parameters
        ----------
        X : array_like
            Samples, shape ``(n, *input_shape)``.
        batch_size : int, optional
            Bounds the samples per forward pass of the op-by-op path; the
            results do not depend on it.

        Returns
        -------
        numpy.ndarray
            Shape ``(n, *output_shape)`` in the model's dtype: probabilities
            for softmax and sigmoid outputs.
        """
        if self._plan is not None and batch_size is None:  # the engine, X as it takes it:
            out = self._plan.predict_array(X, self._lock)  # one call, checks included
            if out is not None:
                return out
        if self.input_shape is None:
            self._require_built()
        X = check_X(self, X, values=False)  # the engine checks the values in its own pass
        if batch_size is not None:
            positive_int(batch_size, "batch_size")
        with self._exclusive():
            plan = _engine.inference_plan(self)
            if plan is not None:
                out = np.empty((X.shape[0], *self.output_shape), dtype=self.dtype)
                code = plan.predict(_engine.samples(X), _engine.samples(out), get_num_threads())
                if code == 0:
                    return out
                if code == _engine.EBADINPUT:
                    check_X(self, X)  # raises, naming the problem
                if code != _engine.EDIVERGED:
                    raise MemoryError("fusenn: out of memory in the training engine")
            else:
                check_X(self, X)
                chunk = PREDICT_CHUNK if batch_size is None else batch_size
                parts = [self._forward(X[i:i + chunk], training=False)[0][-1]
                         for i in range(0, X.shape[0], chunk)]
                out = parts[0] if len(parts) == 1 else np.concatenate(parts)
                if out is X:  # a network of dropouts only
                    out = X.copy()
                if not ops.count_nonfinite(out):
                    return out
        raise ValueError(f"X is too large for this network in {self.dtype}: its outputs "
                         f"overflowed (or the weights are too large)")

    def evaluate(self, X, y, batch_size=None, sample_weight=None):
        """The loss (and accuracy) over ``(X, y)``, in inference mode.

        Parameters
        ----------
        X, y : array_like
            As in `fit`.
        batch_size : int, optional
            Accepted for Keras compatibility; the result does not depend on it.
        sample_weight : array_like, optional
            One weight per sample for the loss.

        Returns
        -------
        dict
            ``{"loss": ..., "accuracy": ...}``; accuracy only for the
            classification losses.
        """
        self._require_built()
        X, y = check_data(self, X, y)
        sw = check_weights(self, y, X.shape[0], sample_weight, None)
        if batch_size is not None:
            positive_int(batch_size, "batch_size")  # accepted for Keras compatibility
        with self._exclusive():
            return self._evaluate(X, y, sw)

    def _evaluate(self, X, y, sw=None):
        n = X.shape[0]
        plan = self._engine()
        if plan is not None:
            code, loss_sum, correct = plan.evaluate(_engine.samples(X), *_engine.targets(self, y),
                                                    sw, get_num_threads())
            if code != 0:
                raise MemoryError("fusenn: out of memory in the training engine")
        else:
            fused = self.loss.fused_kernel is not None
            loss_sum, correct = 0.0, 0
            for i in range(0, n, PREDICT_CHUNK):
                Xc, yc = X[i:i + PREDICT_CHUNK], y[i:i + PREDICT_CHUNK]
                swc = None if sw is None else sw[i:i + PREDICT_CHUNK]
                outputs, _, masks = self._forward(Xc, training=False, logits=fused)
                loss, p, _ = self._loss_and_grad(outputs[-1], yc, swc, masks[-1])
                loss_sum += loss * len(Xc)
                correct += self._correct(p, yc, masks[-1])
        if not math.isfinite(loss_sum):
            raise ValueError(f"X is too large for this network in {self.dtype}: the loss "
                             f"overflowed (or the weights are too large)")
        result = {"loss": loss_sum / n}
        if self.loss.has_accuracy:
            result["accuracy"] = self.loss.accuracy(correct, self._scored_rows(X),
                                                    self.output_dim)
        return result

    # ---- summary -----------------------------------------------------------------------

    def summary(self, print_fn=print):
        """A table of the layers, their output shapes and parameter counts.

        As Keras's ``model.summary()``: output shapes as ``(None, 28, 28, 6)``,
        then the parameter totals, the loss and the optimizer.

        Parameters
        ----------
        print_fn : callable or None, default print
            Called with the text; None only returns it.

        Returns
        -------
        str
            The table.
        """
        if print_fn is not None and not callable(print_fn):
            raise TypeError(f"print_fn must be a function taking a string, or None, got {print_fn!r}")
        rows = [("Layer (type)", "Output shape", "Params")]
        for i, layer in enumerate(self.layers):
            name = type(layer).__name__
            activation = getattr(layer, "activation", None)
            if isinstance(activation, str):
                name += f" ({activation})"
            if layer.built:
                shape = shape_text(layer.output_shape)
            elif getattr(layer, "units", None) is not None:
                shape = f"(None, {layer.units})"
            else:
                shape = "(None, ?)"
            rows.append((f"{i + 1}. {name}", shape,
                         f"{layer.count_params():,}" if layer.built else "?"))
        widths = [max(len(r[c]) for r in rows) for c in range(3)]
        line = "-" * (sum(widths) + 6)
        fmt = lambda r: f"{r[0]:<{widths[0]}}   {r[1]:<{widths[1]}}   {r[2]:>{widths[2]}}"
        total = sum(layer.count_params() for layer in self.layers)
        buffers = sum(a.size for a in self.buffers) if self.built else 0
        where = (self._shape_name(self.input_shape) if self.input_shape is not None
                 else "input_dim=None")
        text = [f"Sequential ({where}, dtype={self.dtype.name}, "
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
            "input_shape": None if self.input_shape is None else list(self.input_shape),
            "dtype": self.dtype.name,
            "seed": self.seed,
            "backend": self.backend_name,
            "layers": [layer.config() for layer in self.layers],
            "loss": self.loss.config() if self.loss else None,
            "optimizer": self.optimizer.config() if self.optimizer else None,
            "optimizer_iterations": self.optimizer.iterations if self.optimizer else 0,
        }

    def to_onnx(self, path=None, opset=None):
        """The model as an ONNX graph that computes `predict`.

        Needs the ``onnx`` extra; see `fusenn.onnx_export.to_onnx` for what
        each layer becomes.

        Parameters
        ----------
        path : str or os.PathLike, optional
            Where to write the graph (also returned).
        opset : int, optional
            The ONNX opset, 17 by default; any from 13 to the newest the
            installed onnx knows.

        Returns
        -------
        onnx.ModelProto
            Input ``"input"``, output ``"output"``, the batch dimension
            dynamic; also written to `path` if given.
        """
        from .onnx_export import to_onnx
        return to_onnx(self, path, opset)

    def save(self, path):
        """Write the architecture, weights and optimizer state to an ``.npz`` file.

        The file is written to a temporary file in the same directory, synced,
        and renamed over `path`, so an interrupted save never destroys an
        existing file. Nothing is pickled; `fusenn.load` reads it back.

        Parameters
        ----------
        path : str or os.PathLike
            The file to write.
        """
        saving.save(self, path)


class _BetweenSteps:
    """Ctrl-C during op-by-op training takes effect between steps, never inside
    one: while the block runs (in the main thread, with Python's default SIGINT
    handler), the signal is recorded and raised as KeyboardInterrupt by
    raise_pending() or at the end of the block. The C engine needs none of this:
    it polls for the signal between its own steps."""
    __slots__ = ("pending", "previous")

    def __enter__(self):
        self.pending = False
        self.previous = None
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            self.previous = signal.signal(signal.SIGINT, self._record)
        return self

    def _record(self, signum, frame):
        self.pending = True

    def raise_pending(self):
        if self.pending:
            self.pending = False
            raise KeyboardInterrupt

    def __exit__(self, kind, exc, tb):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
        if kind is None:
            self.raise_pending()


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
