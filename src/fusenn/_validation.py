"""The model's checks of what users pass to fit, predict, evaluate and
train_on_batch: every error names the argument and the expected shape."""

import math

import numpy as np

from . import ops
from ._common import finite_number, positive_int

_INT64 = np.dtype(np.int64)

__all__ = ["check_X", "check_indices", "check_y", "check_data", "check_weights", "check_input_shape", "writeable",
           "positive_int", "split_validation"]


def writeable(a):
    """`a` if it is a writeable C-contiguous array (or None), else such a copy."""
    if a is None or (a.flags.writeable and a.flags.c_contiguous):
        return a
    return np.array(a, order="C")


def _want(model):
    """The expected shape of a batch, for messages."""
    if model.input_shape is None:
        return "(n_samples, n_features)"
    return "(n_samples, " + ", ".join(map(str, model.input_shape)) + ")"


def check_indices(model, X, name="X", values=True):
    """X as int64 indices (n, steps) for a model whose first layer reads indices
    (Embedding); values=False leaves the range check to the caller (the engine)."""
    layer = model.layers[0]
    X = np.asarray(X)
    if X.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integer indices for {layer!r}, got dtype {X.dtype}"
                        + ("; a float array of whole numbers can be converted with "
                           "X.astype(int)" if X.dtype.kind == "f" else ""))
    if X.ndim != 2 or (model.input_shape is not None and X.shape[1:] != model.input_shape):
        raise ValueError(f"{name} must be 2-D with shape {_want(model)} (integer indices per "
                         f"step), got shape {X.shape}")
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"{name} is empty: expected at least one sample of one step, got "
                         f"shape {X.shape}")
    if values and X.size:
        low, high = X.min(), X.max()
        if low < 0 or high >= layer.input_dim:
            raise ValueError(f"{name} holds indices outside [0, {layer.input_dim}) of {layer!r}: "
                             f"the largest is {high}, the smallest {low}")
    return np.ascontiguousarray(X, dtype=np.int64)


def check_X(model, X, name="X", values=True):
    """X as an array of the model's dtype shaped (n, *input_shape), samples of
    one row with contiguous columns, samples of several rows C-contiguous;
    values=False leaves the NaN/infinity check to the caller (the engine).
    For a model whose first layer reads indices: int64 indices (check_indices)."""
    if model.layers and model.layers[0].reads_indices:
        return check_indices(model, X, name, values)
    if (type(X) is np.ndarray and X.dtype is model.dtype and X.shape[1:] == model.input_shape
            and X.flags.c_contiguous and len(X)):  # the common case, kept cheap
        if values and ops.count_nonfinite(X):
            raise ValueError(f"{name} contains NaN or infinity")
        return X
    X = np.asarray(X)
    if X.dtype.kind not in "fiub":
        raise TypeError(f"{name} must hold numbers, got dtype {X.dtype}")
    rank = None if model.input_shape is None else len(model.input_shape) + 1
    if X.ndim < 2 or (rank is not None and X.ndim != rank):
        raise ValueError(f"{name} must be {rank or 2}-D with shape {_want(model)}, got shape "
                         f"{X.shape}")
    if X.shape[0] == 0:
        raise ValueError(f"{name} is empty: expected at least one sample, got shape {X.shape}")
    if 0 in X.shape[1:]:
        raise ValueError(f"{name} has no features: expected at least one column, got shape "
                         f"{X.shape}")
    if model.input_shape is not None and X.shape[1:] != model.input_shape:
        raise ValueError(f"{name} must have shape {_want(model)}, got {X.shape}")
    if X.dtype is not model.dtype and X.dtype != model.dtype:
        X = X.astype(model.dtype)
    X = ops.contiguous_rows(X) if X.ndim == 2 else np.ascontiguousarray(X)
    if values and ops.count_nonfinite(X):  # no mask as big as X
        raise ValueError(f"{name} contains NaN or infinity")
    return X


def check_y(model, y, n, name="y", values=True, out=None):
    """y as the loss takes it (int64 labels, one per output row, or an array of the
    model's dtype shaped like the output, `out`: the model's output shape by
    default); values=False leaves the range and NaN checks to the caller."""
    out = model.output_shape if out is None else out
    k = out[-1]
    labels = model.loss.targets == "labels"
    if (not values and labels and type(y) is np.ndarray and y.dtype is _INT64
            and y.shape == (n,) and len(out) == 1 and y.flags.c_contiguous):
        return y  # the common case of train_on_batch, kept cheap
    y = np.asarray(y)
    if labels:
        want = (n, *out[:-1])
        if y.shape != want:
            hint = (f"; for one-hot targets pass y.argmax(axis={len(want)})"
                    if y.ndim == len(want) + 1 else "")
            raise ValueError(f"{name} must be integer class labels of shape {want}, "
                             f"got shape {y.shape}{hint}")
        if y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
            y = y.astype(np.int64)
        if y.dtype.kind not in "iu":
            raise TypeError(f"{name} must hold integer class labels, got dtype {y.dtype}")
        if not values:  # a uint64 label too large for int64 wraps to a negative one: caught too
            return np.ascontiguousarray(y, dtype=np.int64)
        labels, bad = ops.labels_in_range(y.reshape(-1), k)
        if bad is not None:
            raise ValueError(f"{name} holds class labels outside [0, {k}) (the last layer has "
                             f"{k} units): found {bad}")
        return labels.reshape(y.shape)
    if y.ndim == 1 and out == (1,):
        y = y.reshape(-1, 1)
    if y.shape != (n, *out):
        raise ValueError(f"{name} must have shape {(n, *out)}, got {y.shape}")
    if y.dtype.kind not in "fiub":
        raise TypeError(f"{name} must hold numbers, got dtype {y.dtype}")
    y = np.asarray(y, dtype=model.dtype)
    y = ops.contiguous_rows(y) if y.ndim == 2 else np.ascontiguousarray(y)
    if not values:
        return y
    if ops.count_nonfinite(y):
        raise ValueError(f"{name} contains NaN or infinity")
    if model.loss.name == "binary_cross_entropy" and (y.min() < 0 or y.max() > 1):
        raise ValueError(f"{name} must hold targets in [0, 1] for binary_cross_entropy")
    return y


def check_data(model, X, y, name_x="X", name_y="y", values=True):
    model._require_compiled()
    X = check_X(model, X, name_x, values)
    out = model._output_shapes(X.shape[1:])[-1] if model.input_shape is None else None
    y = check_y(model, y, X.shape[0], name_y, values, out)
    if model.input_shape is None:  # like Keras: the first valid data fixes the input shape
        model.build(X.shape[1:])
    return X, y


def check_weights(model, y, n, sample_weight, class_weight):
    """Per-sample weights (or None) from sample_weight and class_weight, as
    Keras combines them: their product."""
    sw = None
    if sample_weight is not None:
        sw = np.asarray(sample_weight)
        if sw.dtype.kind not in "fiub" or sw.ndim != 1 or sw.shape[0] != n:
            got = f"shape {sw.shape}" if sw.dtype.kind in "fiub" else f"dtype {sw.dtype}"
            raise ValueError(f"sample_weight must be a 1-D array of {n} numbers (one per "
                             f"sample), got {got}")
        sw = sw.astype(np.float64)
        if not np.all(np.isfinite(sw)) or np.any(sw < 0):
            raise ValueError("sample_weight must hold finite, non-negative numbers")
    if class_weight is not None:
        if not isinstance(class_weight, dict):
            raise TypeError(f"class_weight must be a dict {{class: weight}}, got {class_weight!r}")
        k = model.output_shape[-1]
        if model.loss.targets == "labels" and y.ndim == 1:
            classes = y
        elif model.loss.name == "binary_cross_entropy" and model.output_shape == (1,):
            classes, k = (y[:, 0] > 0.5).astype(np.int64), 2
        else:
            raise ValueError("class_weight needs class labels, one per sample: loss "
                             "'cross_entropy', or 'binary_cross_entropy' with one output")
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
    return None if sw is None else sw.astype(model.dtype)


def split_validation(X, y, sw, validation_split):
    """The last validation_split share of the rows held out, as Keras does (before any
    shuffle): (X, y, sw, (X_val, y_val)) for the rest and the held-out rows."""
    split = finite_number(validation_split, "validation_split")
    if not 0 <= split < 1:
        raise ValueError(f"validation_split must lie in [0, 1), got {validation_split}")
    n_val = int(X.shape[0] * split)
    if n_val == 0 or n_val == X.shape[0]:
        raise ValueError(f"validation_split={validation_split} leaves no validation or no "
                         f"training samples out of {X.shape[0]}")
    cut = X.shape[0] - n_val
    return X[:cut], y[:cut], None if sw is None else sw[:cut], (X[cut:], y[cut:])


def check_input_shape(shape, name="input_shape"):
    """A sample's shape as a tuple of positive ints (an int: features)."""
    if isinstance(shape, (int, np.integer)) and not isinstance(shape, bool):
        shape = (shape,)
    try:
        shape = tuple(shape)
    except TypeError:
        raise TypeError(f"{name} must be an int or a tuple of ints, got {shape!r}") from None
    if not 1 <= len(shape) <= 4:
        raise ValueError(f"{name} must have 1 to 4 dimensions (a sample, without the batch), "
                         f"got {shape!r}")
    return tuple(positive_int(d, name) for d in shape)

