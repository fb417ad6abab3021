"""Callbacks: code that fit() runs at the start and end of training and of each epoch.

    stop = fusenn.callbacks.EarlyStopping(monitor="val_loss", patience=5,
                                          restore_best_weights=True)
    model.fit(X, y, epochs=100, validation_data=(Xv, yv), callbacks=[stop])

The protocol is Keras': a Callback has a `model` (set by `set_model`) and the
methods on_train_begin(logs), on_train_end(logs), on_epoch_begin(epoch, logs)
and on_epoch_end(epoch, logs). `epoch` is 0-based; at the end of an epoch
`logs` holds that epoch's metrics: "loss", "accuracy" (classification),
"val_loss" / "val_accuracy" (with validation data), "time" (seconds) and "lr"
(when a learning-rate callback ran). Callbacks may add keys to `logs`; a
callback stops training by setting `model.stop_training = True`.

A fit epoch runs inside the C engine, so there are no per-batch hooks.
"""

import inspect
import math
import os
import string
import sys
import warnings

import numpy as np

from ._common import finite_number
from .schedules import int_arg, positive_number

__all__ = ["Callback", "CallbackList", "EarlyStopping", "ModelCheckpoint",
           "LearningRateScheduler", "ReduceLROnPlateau", "LambdaCallback", "ProgressBar"]


def _flag(value, name):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def _verbose(value):
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if not isinstance(value, (int, np.integer)) or value not in (0, 1, 2):
        raise ValueError(f"verbose must be 0, 1 or 2, got {value!r}")
    return int(value)


def format_value(value):
    """A metric as Keras prints it: 4 decimals, or 4 significant digits in
    exponent form for values below 1e-3."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        return str(value)
    value = float(value)
    return f"{value:.4e}" if value != 0 and abs(value) < 1e-3 else f"{value:.4f}"


class Callback:
    """Base class: every hook does nothing. Subclass and override the hooks you need."""

    def __init__(self):
        self.model = None

    def set_model(self, model):
        self.model = model

    def on_train_begin(self, logs=None):
        pass

    def on_train_end(self, logs=None):
        pass

    def on_epoch_begin(self, epoch, logs=None):
        pass

    def on_epoch_end(self, epoch, logs=None):
        pass


class CallbackList:
    """Calls each hook of every callback in turn, in list order, with the same
    `logs` dict (so a key one callback adds is seen by the ones after it)."""

    def __init__(self, callbacks=None, model=None):
        if callbacks is None:
            callbacks = []
        elif isinstance(callbacks, Callback):
            callbacks = [callbacks]
        elif isinstance(callbacks, (str, bytes, dict)) or not hasattr(callbacks, "__iter__"):
            raise TypeError(f"callbacks must be a list of fusenn.callbacks.Callback instances, "
                            f"got {callbacks!r}")
        self.callbacks = list(callbacks)
        for i, cb in enumerate(self.callbacks):
            if not isinstance(cb, Callback):
                raise TypeError(f"callbacks[{i}] must be a fusenn.callbacks.Callback instance, "
                                f"got {cb!r}")
        self.model = None
        if model is not None:
            self.set_model(model)

    def append(self, callback):
        if not isinstance(callback, Callback):
            raise TypeError(f"callback must be a fusenn.callbacks.Callback instance, got {callback!r}")
        self.callbacks.append(callback)
        if self.model is not None:
            callback.set_model(self.model)

    def set_model(self, model):
        self.model = model
        for cb in self.callbacks:
            cb.set_model(model)

    def __iter__(self):
        return iter(self.callbacks)

    def __len__(self):
        return len(self.callbacks)

    def on_train_begin(self, logs=None):
        logs = {} if logs is None else logs
        for cb in self.callbacks:
            cb.on_train_begin(logs)

    def on_train_end(self, logs=None):
        logs = {} if logs is None else logs
        for cb in self.callbacks:
            cb.on_train_end(logs)

    def on_epoch_begin(self, epoch, logs=None):
        logs = {} if logs is None else logs
        for cb in self.callbacks:
            cb.on_epoch_begin(epoch, logs)

    def on_epoch_end(self, epoch, logs=None):
        logs = {} if logs is None else logs
        for cb in self.callbacks:
            cb.on_epoch_end(epoch, logs)


class _Monitor(Callback):
    """A callback that watches one metric: mode, comparison, a one-time warning
    when the metric is missing from the logs."""

    def __init__(self, monitor, mode, min_delta=0.0):
        super().__init__()
        if not isinstance(monitor, str) or not monitor:
            raise TypeError(f"monitor must be the name of a metric such as 'val_loss', got {monitor!r}")
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
        self.monitor = monitor
        self.mode = mode
        # as Keras: accuracies are maximised, everything else minimised
        self._maximise = mode == "max" or (mode == "auto" and "acc" in monitor)
        self.min_delta = finite_number(min_delta, "min_delta")
        if self.min_delta < 0:
            raise ValueError(f"min_delta must be >= 0, got {self.min_delta}")
        self._warned = False

    def _worst(self):
        return -math.inf if self._maximise else math.inf

    def _improves(self, current, reference):
        """Whether `current` beats `reference` by more than min_delta (NaN never does)."""
        if self._maximise:
            return current - self.min_delta > reference
        return current + self.min_delta < reference

    def _current(self, logs):
        value = (logs or {}).get(self.monitor)
        if value is None:
            if not self._warned:
                self._warned = True
                available = ", ".join(logs or {}) or "none"
                warnings.warn(f"{type(self).__name__}: the monitored metric {self.monitor!r} is not in "
                              f"the epoch's logs (available: {available}); it does nothing",
                              RuntimeWarning, stacklevel=3)
            return None
        return float(value)


class EarlyStopping(_Monitor):
    """Stop training when the monitored metric has stopped improving.

    An epoch improves when the metric beats the best so far by more than
    min_delta. Training stops once `patience` epochs in a row have not improved
    (patience=0: at the first epoch that does not improve). With a `baseline`,
    an epoch only resets the count if it also beats the baseline, so training
    stops after `patience` epochs if none beats it (as Keras documents it).
    Epochs before `start_from_epoch` are not watched; a NaN never improves.

    restore_best_weights: at the end of training (stopped early or not) the
    model gets back the weights of the best epoch, as in Keras 3.

    After training, `stopped_epoch` is the 0-based epoch at which training was
    stopped (0 if it was not), `best` the best value and `best_epoch` its epoch.
    """

    def __init__(self, monitor="val_loss", min_delta=0.0, patience=0, mode="auto",
                 restore_best_weights=False, baseline=None, start_from_epoch=0, verbose=0):
        super().__init__(monitor, mode, min_delta)
        self.patience = int_arg(patience, "patience")
        self.restore_best_weights = _flag(restore_best_weights, "restore_best_weights")
        self.baseline = None if baseline is None else finite_number(baseline, "baseline")
        self.start_from_epoch = int_arg(start_from_epoch, "start_from_epoch")
        self.verbose = _verbose(verbose)
        self._reset()

    def _reset(self):
        self.wait = 0
        self.stopped_epoch = 0
        self.best = self._worst()
        self.best_epoch = None
        self.best_weights = None
        self._warned = False

    def on_train_begin(self, logs=None):
        self._reset()

    def on_epoch_end(self, epoch, logs=None):
        current = self._current(logs)
        if current is None or epoch < self.start_from_epoch:
            return
        self.wait += 1
        if self._improves(current, self.best) or self.best_epoch is None and not math.isnan(current):
            self.best = current
            self.best_epoch = epoch
            if self.restore_best_weights:
                self.best_weights = [np.array(w, copy=True) for w in self.model.get_weights()]
            if self.baseline is None or self._improves(current, self.baseline):
                self.wait = 0
                return
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.stopped_epoch > 0 and self.verbose:
            print(f"Epoch {self.stopped_epoch + 1}: early stopping", flush=True)
        if self.restore_best_weights and self.best_weights is not None:
            if self.verbose:
                print(f"Restoring model weights from the end of the best epoch: "
                      f"{self.best_epoch + 1}.", flush=True)
            self.model.set_weights(self.best_weights)


class ModelCheckpoint(_Monitor):
    """Save the model (model.save(path)) at the end of every epoch, or only when
    the monitored metric improved on its best (save_best_only=True).

    filepath may hold format fields filled from the epoch's logs, and {epoch}
    (1-based, as Keras): "ckpt-{epoch:02d}-{val_loss:.3f}.npz". Missing parent
    directories are created. `best` is the best monitored value so far and
    `last_saved` the path of the last file written.
    """

    def __init__(self, filepath, monitor="val_loss", save_best_only=False, mode="auto", verbose=0):
        super().__init__(monitor, mode)
        try:
            filepath = os.fspath(filepath)
        except TypeError:
            raise TypeError(f"filepath must be a str or os.PathLike, got {filepath!r}") from None
        if not isinstance(filepath, str) or not filepath:
            raise ValueError(f"filepath must be a non-empty str path, got {filepath!r}")
        try:
            fields = [field for _, field, _, _ in string.Formatter().parse(filepath) if field is not None]
        except ValueError as exc:
            raise ValueError(f"filepath {filepath!r} is not a valid format string ({exc}); "
                             f"write literal braces as '{{{{' and '}}}}'") from None
        if any(not field or field.isdigit() for field in fields):
            raise ValueError(f"filepath {filepath!r} has a positional format field; name it, "
                             f"e.g. {{epoch}} or {{val_loss:.3f}}")
        self.filepath = filepath
        self.save_best_only = _flag(save_best_only, "save_best_only")
        self.verbose = _verbose(verbose)
        self.best = self._worst()
        self.last_saved = None

    def on_train_begin(self, logs=None):
        # like Keras, `best` carries over between fit calls: a resumed run only
        # overwrites the best file with a better one
        self._warned = False

    def path_for(self, epoch, logs=None):
        """The file name for 0-based `epoch` with these logs."""
        try:
            return self.filepath.format(**{**(logs or {}), "epoch": epoch + 1})
        except KeyError as exc:
            raise KeyError(f"ModelCheckpoint filepath {self.filepath!r} names {exc.args[0]!r}, which "
                           f"is not in the epoch's logs (available: epoch, {', '.join(logs or {})})"
                           ) from None

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.save_best_only:
            current = self._current(logs)
            if current is None or not self._improves(current, self.best):
                return
            if self.verbose:
                print(f"Epoch {epoch + 1}: {self.monitor} improved from {self.best:.5f} to "
                      f"{current:.5f}, saving model", flush=True)
            self.best = current
        path = self.path_for(epoch, logs)
        directory = os.path.dirname(path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        if self.verbose and not self.save_best_only:
            print(f"Epoch {epoch + 1}: saving model to {path}", flush=True)
        self.model.save(path)
        self.last_saved = path


def _schedule_arity(schedule):
    """2 if schedule can be called as f(epoch, lr), else 1 (f(epoch))."""
    try:
        signature = inspect.signature(schedule)
    except (TypeError, ValueError):  # builtins without a signature
        return 1
    try:
        signature.bind(0, 0.1)
        return 2
    except TypeError:
        pass
    try:
        signature.bind(0)
        return 1
    except TypeError:
        raise TypeError(f"schedule must take (epoch) or (epoch, lr), got a callable with "
                        f"signature {signature}") from None


def _optimizer_of(model, who):
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None or not hasattr(optimizer, "lr"):
        raise ValueError(f"{who} needs a compiled model with an optimizer (call model.compile first)")
    return optimizer


class LearningRateScheduler(Callback):
    """Set the optimizer's learning rate at the start of each epoch from
    `schedule(epoch)` or `schedule(epoch, lr)` (lr: the current rate), with a
    0-based epoch; see fusenn.schedules for ready-made schedules. The rate
    (model.optimizer.lr) is put in the epoch's logs as "lr".

    The schedule must return a finite number > 0: anything else raises
    ValueError naming the epoch.
    """

    def __init__(self, schedule, verbose=0):
        super().__init__()
        if not callable(schedule):
            raise TypeError(f"schedule must be a callable f(epoch) or f(epoch, lr), got {schedule!r}")
        self.schedule = schedule
        self._arity = _schedule_arity(schedule)
        self.verbose = _verbose(verbose)

    def on_epoch_begin(self, epoch, logs=None):
        optimizer = _optimizer_of(self.model, "LearningRateScheduler")
        if self._arity == 2:
            lr = self.schedule(epoch, float(optimizer.lr))
        else:
            lr = self.schedule(epoch)
        try:
            lr = positive_number(lr, "lr")
        except (TypeError, ValueError) as exc:
            raise ValueError(f"the schedule returned an invalid learning rate for epoch {epoch} "
                             f"(0-based): {exc}") from None
        optimizer.lr = lr
        if self.verbose:
            print(f"Epoch {epoch + 1}: LearningRateScheduler setting learning rate to {lr:.6g}.",
                  flush=True)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["lr"] = float(_optimizer_of(self.model, "LearningRateScheduler").lr)


class ReduceLROnPlateau(_Monitor):
    """Multiply the learning rate by `factor` when the monitored metric has not
    improved (by more than min_delta) for `patience` epochs; the `cooldown`
    epochs after a reduction do not count as bad epochs (as PyTorch; Keras
    already counts the last of them). Never goes below min_lr. The rate is
    put in the epoch's logs as "lr" (the rate the epoch ran with); a
    reduction takes effect from the next epoch.
    """

    def __init__(self, monitor="val_loss", factor=0.1, patience=10, min_delta=1e-4, cooldown=0,
                 min_lr=0.0, mode="auto", verbose=0):
        super().__init__(monitor, mode, min_delta)
        self.factor = finite_number(factor, "factor")
        if not 0 < self.factor < 1:
            raise ValueError(f"factor must lie in (0, 1) (the rate is multiplied by it), got {self.factor}")
        self.patience = int_arg(patience, "patience")
        self.cooldown = int_arg(cooldown, "cooldown")
        self.min_lr = finite_number(min_lr, "min_lr")
        if self.min_lr < 0:
            raise ValueError(f"min_lr must be >= 0, got {self.min_lr}")
        self.verbose = _verbose(verbose)
        self._reset()

    def _reset(self):
        self.wait = 0
        self.cooldown_counter = 0
        self.best = self._worst()
        self._warned = False

    def on_train_begin(self, logs=None):
        self._reset()

    @property
    def in_cooldown(self):
        return self.cooldown_counter > 0

    def on_epoch_end(self, epoch, logs=None):
        optimizer = _optimizer_of(self.model, "ReduceLROnPlateau")
        if logs is not None:
            logs["lr"] = float(optimizer.lr)
        current = self._current(logs)
        if current is None:
            return
        improved = self._improves(current, self.best)
        if improved:
            self.best = current
            self.wait = 0
        if self.in_cooldown:  # this epoch is one of the `cooldown` ignored ones
            self.cooldown_counter -= 1
            self.wait = 0
            return
        if improved:
            return
        self.wait += 1
        if self.wait >= self.patience:
            old_lr = float(optimizer.lr)
            if old_lr > self.min_lr:
                new_lr = max(old_lr * self.factor, self.min_lr)
                if new_lr > 0:  # the rate must stay > 0 (factor * tiny can underflow)
                    optimizer.lr = new_lr
                    if self.verbose:
                        print(f"Epoch {epoch + 1}: ReduceLROnPlateau reducing learning rate to "
                              f"{new_lr:.6g}.", flush=True)
            self.cooldown_counter = self.cooldown
            self.wait = 0


class LambdaCallback(Callback):
    """A callback from plain functions: on_epoch_begin(epoch, logs),
    on_epoch_end(epoch, logs), on_train_begin(logs), on_train_end(logs)."""

    def __init__(self, on_epoch_begin=None, on_epoch_end=None, on_train_begin=None,
                 on_train_end=None):
        super().__init__()
        hooks = {"on_epoch_begin": on_epoch_begin, "on_epoch_end": on_epoch_end,
                 "on_train_begin": on_train_begin, "on_train_end": on_train_end}
        for name, fn in hooks.items():
            if fn is not None:
                if not callable(fn):
                    raise TypeError(f"{name} must be a callable or None, got {fn!r}")
                setattr(self, name, fn)  # the instance attribute shadows the no-op method


def _is_interactive(stream):
    """Whether `stream` is a terminal (or a Jupyter kernel's output, which
    displays like one although isatty() says no)."""
    try:
        if stream.isatty():
            return True
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed file
        return False
    return type(stream).__module__.split(".")[0] == "ipykernel"


def _tqdm():
    """tqdm.tqdm, or None when tqdm is not installed (it is optional)."""
    try:
        import tqdm
    except ImportError:
        return None
    return tqdm.tqdm


class ProgressBar(Callback):
    """fit's progress display, one update per epoch.

    verbose:
      0       nothing;
      "auto"  (fit's default) as 1 when the output is a terminal (or a Jupyter
              notebook), else nothing: logs and CI stay clean;
      1       one bar over the epochs, updated at the end of each, with the
              epoch's loss, accuracy, validation metrics and time (tqdm when it
              is installed, else a plain line rewritten with '\\r');
      2       one plain line per epoch, for logs and CI:
              "Epoch 3/10 - 0.012s - loss: 0.1234 - accuracy: 0.9700 - val_loss: ..."
    file: the output stream (default: sys.stdout at the start of training).
    `epochs` is fit's epochs (the last epoch, 1-based); a run resumed with
    initial_epoch starts the count there.
    """

    BAR_WIDTH = 20  # characters of the plain bar

    def __init__(self, epochs, verbose="auto", file=None):
        super().__init__()
        self.epochs = int_arg(epochs, "epochs")
        if not (isinstance(verbose, str) and verbose == "auto"):
            try:
                verbose = _verbose(verbose)
            except ValueError:
                raise ValueError(f"verbose must be 0, 1, 2 or 'auto', got {verbose!r}") from None
        if file is not None and not callable(getattr(file, "write", None)):
            raise TypeError(f"file must be a writable text stream or None, got {file!r}")
        self.verbose = verbose
        self.file = file
        self._stream = None
        self._mode = 0
        self._bar = None
        self._line_length = 0

    def on_train_begin(self, logs=None):
        self._stream = sys.stdout if self.file is None else self.file
        if self.verbose == "auto":
            self._mode = 1 if _is_interactive(self._stream) else 0
        else:
            self._mode = self.verbose
        self._bar = None
        self._line_length = 0

    def _metrics(self, logs, sep):
        parts = [f"{key}{sep}{format_value(value)}" for key, value in logs.items() if key != "time"]
        if "time" in logs:
            parts.append(f"time{sep}{float(logs['time']):.3f}s")
        return parts

    def _open_bar(self, epoch):
        """Start the bar (mode 1) at the first epoch seen: tqdm, or False for the
        plain fallback."""
        if self._bar is None:
            tqdm = _tqdm()
            if tqdm is None:
                self._bar = False
            else:
                self._bar = tqdm(total=self.epochs, initial=epoch, file=self._stream, unit="epoch",
                                 desc="Epoch", dynamic_ncols=True, leave=True)

    def on_epoch_begin(self, epoch, logs=None):
        if self._stream is None:
            self.on_train_begin()
        if self._mode == 1:
            self._open_bar(epoch)  # so tqdm's clock runs during the first epoch

    def on_epoch_end(self, epoch, logs=None):
        if self._stream is None:
            self.on_train_begin()
        if not self._mode:
            return
        logs = logs or {}
        if self._mode == 2:
            parts = [f"Epoch {epoch + 1}/{self.epochs}"]
            if "time" in logs:
                parts.append(f"{float(logs['time']):.3f}s")
            parts += [f"{key}: {format_value(value)}" for key, value in logs.items() if key != "time"]
            print(" - ".join(parts), file=self._stream, flush=True)
            return
        self._open_bar(epoch)
        if self._bar:
            self._bar.set_postfix_str(", ".join(self._metrics(logs, "=")), refresh=False)
            self._bar.update(1)
            return
        done = min(epoch + 1, self.epochs)
        filled = self.BAR_WIDTH * done // max(self.epochs, 1)
        bar = ("=" * filled + ">")[:self.BAR_WIDTH].ljust(self.BAR_WIDTH)
        line = " - ".join([f"Epoch {epoch + 1}/{self.epochs} [{bar}]"]
                          + self._metrics(logs, ": "))
        pad = " " * max(0, self._line_length - len(line))  # erase the end of a longer line
        self._stream.write("\r" + line + pad)
        self._stream.flush()
        self._line_length = len(line)

    def on_train_end(self, logs=None):
        if self._bar:
            self._bar.close()
        elif self._bar is False and self._line_length:
            self._stream.write("\n")
            self._stream.flush()
        self._bar = None
        self._line_length = 0
