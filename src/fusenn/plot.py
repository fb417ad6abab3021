"""Plots of training runs and networks (needs matplotlib: ``pip install fusenn[plot]``).

    import fusenn.plot
    fusenn.plot.history(hist, save="history.png")            # loss and accuracy per epoch
    fusenn.plot.weights(model.layers[0], shape=(8, 8))         # what each first-layer neuron sees
    fusenn.plot.confusion_matrix(y_test, model.predict(X_test))

Each function returns a matplotlib Figure; ``save=path`` also writes it as a PNG
(or ``fig.savefig(path)`` later). matplotlib is imported on the first call, not
by ``import fusenn``; with no display (a headless Linux machine, no MPLBACKEND
set) the non-interactive Agg backend is chosen. ``confusion_counts`` needs only
NumPy.
"""

import numbers
import os
import sys

import numpy as np

__all__ = ["history", "weights", "feature_maps", "confusion_matrix", "confusion_counts"]


def _pyplot():
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError(
            "fusenn.plot needs matplotlib, which is not installed: pip install fusenn[plot] "
            "(or pip install matplotlib)"
        ) from e
    headless = sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    if headless and "matplotlib.pyplot" not in sys.modules and not os.environ.get("MPLBACKEND"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _finish(fig, save):
    if save is not None:
        if not isinstance(save, (str, os.PathLike)):
            raise TypeError(f"save must be a file path or None, got {save!r}")
        has_suffix = os.path.splitext(os.fspath(save))[1] != ""
        fig.savefig(save, dpi=100, **({} if has_suffix else {"format": "png"}))
    return fig


# ---- training history ------------------------------------------------------------------------------

def history(hist, metrics=None, save=None):
    """Loss and metric curves per epoch. hist: the History that Sequential.fit returns,
    or its .history dict (e.g. {"loss": [...], "val_loss": [...], "accuracy": [...]}).

    One axes per metric, each showing the training values and, when present, the
    "val_" values: loss and val_loss together, accuracy and val_accuracy together.
    metrics: which metrics to show (a name or a list of names, without "val_");
    default: all but "time" and "lr" (fit's seconds per epoch and learning rate;
    metrics=["loss", "lr"] shows the rate), loss first. Returns the Figure; save: a path to write a PNG."""
    logs = getattr(hist, "history", hist)
    if not isinstance(logs, dict):
        raise TypeError(f"hist must be a fusenn History or its .history dict, got {hist!r}")
    series = {}
    for key, values in logs.items():
        try:
            values = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"history[{key!r}] must be a sequence of numbers") from None
        if values.ndim != 1:
            raise ValueError(f"history[{key!r}] must be a sequence of numbers, "
                             f"got shape {values.shape}")
        series[str(key)] = values
    base = []
    for key in series:
        name = key[4:] if key.startswith("val_") else key
        if name not in base:
            base.append(name)
    if "loss" in base:
        base.remove("loss")
        base.insert(0, "loss")
    if metrics is None:
        # fit's seconds per epoch and learning rate are not learning curves
        metrics = [m for m in base if m not in ("time", "lr")]
    elif isinstance(metrics, str):
        metrics = [metrics]
    else:
        metrics = list(metrics)
    unknown = [m for m in metrics if m not in base]
    if unknown or not metrics:
        raise ValueError(f"metrics {unknown or metrics!r} not in the history; "
                         f"it has {base or 'nothing'}")
    if all(len(series.get(m, ())) + len(series.get("val_" + m, ())) == 0 for m in metrics):
        raise ValueError("the history is empty: no epochs to plot")

    plt = _pyplot()
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for key, label, style in ((metric, "train", "-"), ("val_" + metric, "validation", "--")):
            if key in series and len(series[key]):
                values = series[key]
                ax.plot(np.arange(1, len(values) + 1), values, style, marker="." if
                        len(values) <= 30 else None, label=label)
        ax.set_title(metric)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return _finish(fig, save)


# ---- first-layer weights -----------------------------------------------------------------------------

def _shape2(shape):
    if (not isinstance(shape, (tuple, list)) or len(shape) != 2
            or not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) and s > 0
                       for s in shape)):
        raise ValueError(f"shape must be a pair of positive ints (height, width), got {shape!r}")
    return int(shape[0]), int(shape[1])


def weights(layer_or_array, shape=(8, 8), max_neurons=64, cmap="RdBu_r", save=None):
    """Each neuron's incoming weights drawn as an image: what the first layer looks for.

    layer_or_array: a fusenn Dense layer (its W, shape (inputs, units)), a Conv2D
    layer (each filter's kernel_h x kernel_w weights, averaged over its input
    channels when it has several), a Sequential (its first layer with weights),
    or an array of shape (inputs, units) (a 1-D array is one neuron).
    shape: the image shape of a Dense neuron, with inputs == shape[0] * shape[1]
    (8x8 digits, 28x28 MNIST); a Conv2D filter has its own. Shows the first
    max_neurons neurons in a grid, red positive and blue negative on one colour
    scale centred at zero (cmap: any matplotlib colormap). Returns the Figure;
    save: a path to write a PNG."""
    obj = layer_or_array
    if hasattr(obj, "layers"):  # a model: its first layer with weights (skips e.g. Dropout)
        with_weights = [layer for layer in obj.layers if hasattr(layer, "W") or
                        hasattr(layer, "kernel")]
        if not with_weights:
            raise ValueError("the model has no layers with weights")
        obj = with_weights[0]
    what, unit = "incoming weights", "neurons"
    if hasattr(obj, "W") or hasattr(obj, "kernel"):
        W = getattr(obj, "W", None) if hasattr(obj, "W") else obj.kernel
        if W is None:
            raise ValueError(f"{obj!r} is not built yet: it has no weights to show "
                             f"(give the model input_shape or train it first)")
        if hasattr(obj, "kernel"):  # (kh, kw, cin, filters): one kh x kw image per filter
            shape = W.shape[:2]
            what, unit = "kernels" if W.shape[2] == 1 else "kernels (mean over input channels)", \
                "filters"
            W = np.asarray(W, dtype=np.float64).mean(axis=2).reshape(-1, W.shape[3])
    else:
        W = obj
    try:
        W = np.asarray(W, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"expected a Dense layer, a Conv2D layer or an array of weights, got "
                        f"{layer_or_array!r}") from None
    if W.ndim == 1:
        W = W[:, None]
    if W.ndim != 2 or W.shape[1] == 0:
        raise ValueError(f"weights must have shape (inputs, units), got {W.shape}")
    if not np.all(np.isfinite(W)):
        raise ValueError("weights contain NaN or inf")
    h, w = _shape2(tuple(shape))
    if W.shape[0] != h * w:
        raise ValueError(f"the layer has {W.shape[0]} inputs per neuron, which cannot be shown "
                         f"as shape {(h, w)} ({h * w} pixels); pass shape= with "
                         f"height * width == {W.shape[0]}")
    if isinstance(max_neurons, bool) or not isinstance(max_neurons, numbers.Integral) \
            or max_neurons < 1:
        raise ValueError(f"max_neurons must be a positive int, got {max_neurons!r}")
    n = min(W.shape[1], int(max_neurons))
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    limit = float(np.max(np.abs(W[:, :n]))) or 1.0

    plt = _pyplot()
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols + 1.0, 1.3 * rows + 0.4),
                             squeeze=False)
    image = None
    for j, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if j < n:
            image = ax.imshow(W[:, j].reshape(h, w), cmap=cmap, vmin=-limit, vmax=limit,
                              interpolation="nearest")
            ax.set_title(str(j), fontsize=7, pad=2)
    fig.suptitle(f"{what} of {n} of {W.shape[1]} {unit}")
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8)
    return _finish(fig, save)


# ---- feature maps ------------------------------------------------------------------------------------

def feature_maps(model, x, max_maps=16, cmap="viridis", save=None):
    """What each convolutional layer of `model` responds to in one image x
    ((height, width, channels), or a batch of one): one row per Conv2D layer,
    its first max_maps output channels (feature maps) as images, next to the
    input. Runs the model in inference mode. Returns the Figure; save: a PNG path."""
    from .layers import Conv2D
    convs = [i for i, layer in enumerate(getattr(model, "layers", ())) if isinstance(layer, Conv2D)]
    if not convs:
        raise ValueError("the model has no Conv2D layers: feature maps are their outputs")
    model._require_built()
    x = np.asarray(x)
    if x.ndim == len(model.input_shape):
        x = x[None]
    if x.shape[1:] != model.input_shape or x.shape[0] != 1:
        raise ValueError(f"x must be one image of shape {model.input_shape} (or a batch of "
                         f"one), got shape {x.shape}")
    if isinstance(max_maps, bool) or not isinstance(max_maps, numbers.Integral) or max_maps < 1:
        raise ValueError(f"max_maps must be a positive int, got {max_maps!r}")
    from ._validation import check_X
    outputs = model._forward(check_X(model, x), training=False)[0]
    maps = [np.asarray(outputs[i + 1][0], dtype=np.float64) for i in convs]
    cols = 1 + min(int(max_maps), max(m.shape[-1] for m in maps))
    plt = _pyplot()
    fig, axes = plt.subplots(len(maps), cols, figsize=(1.2 * cols + 0.4, 1.3 * len(maps) + 0.5),
                             squeeze=False)
    picture = np.asarray(x[0], dtype=np.float64)
    for row, (i, m) in enumerate(zip(convs, maps)):
        for ax in axes[row]:
            ax.set_axis_off()
        axes[row, 0].imshow(picture[..., 0] if picture.shape[-1] != 3 else picture,
                            cmap="gray", interpolation="nearest")
        axes[row, 0].set_title(f"{i + 1}. {model.layers[i].filters} maps", fontsize=7, pad=2)
        for j in range(min(m.shape[-1], cols - 1)):
            axes[row, j + 1].imshow(m[..., j], cmap=cmap, interpolation="nearest")
            axes[row, j + 1].set_title(str(j), fontsize=7, pad=2)
    fig.suptitle("feature maps of each Conv2D layer (input on the left)")
    return _finish(fig, save)


# ---- confusion matrix --------------------------------------------------------------------------------

def _labels_1d(y, name):
    y = np.asarray(y)
    if y.ndim == 2:  # probabilities or one-hot rows: the class is the argmax
        if y.shape[1] == 0:
            raise ValueError(f"{name} has no columns")
        y = y.argmax(axis=1) if y.shape[1] > 1 else (y[:, 0] > 0.5).astype(np.int64)
    if y.ndim != 1:
        raise ValueError(f"{name} must be labels of shape (n,) or scores of shape (n, classes), "
                         f"got shape {y.shape}")
    return y


def confusion_counts(y_true, y_pred, labels=None):
    """The confusion matrix as counts (NumPy only): C[i, j] is the number of samples
    of class labels[i] predicted as labels[j] (rows true, columns predicted, as in
    scikit-learn). y_true, y_pred: labels of shape (n,), or 2-D scores such as
    model.predict's probabilities or one-hot rows, reduced by argmax (one column:
    threshold 0.5). labels: the classes in order; default the sorted union of both;
    samples whose labels are not in it are not counted. Returns (C int64, labels)."""
    y_true = _labels_1d(y_true, "y_true")
    y_pred = _labels_1d(y_pred, "y_pred")
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true and y_pred must have the same length, "
                         f"got {len(y_true)} and {len(y_pred)}")
    if labels is None:
        labels = np.union1d(y_true, y_pred)
    else:
        labels = np.asarray(labels)
        if labels.ndim != 1 or labels.size == 0:
            raise ValueError(f"labels must be a non-empty 1-D list of classes, got {labels!r}")
        if np.unique(labels).size != labels.size:
            raise ValueError(f"labels must not repeat, got {labels.tolist()}")
    if labels.size == 0:
        raise ValueError("no labels: y_true and y_pred are empty")
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]

    def index(y):
        pos = np.searchsorted(sorted_labels, y).clip(0, labels.size - 1)
        found = sorted_labels[pos] == y
        return np.where(found, order[pos], -1)

    try:
        t, p = index(y_true), index(y_pred)
    except TypeError:
        raise ValueError("y_true, y_pred and labels must hold comparable labels") from None
    keep = (t >= 0) & (p >= 0)
    k = labels.size
    counts = np.bincount(t[keep] * k + p[keep], minlength=k * k).reshape(k, k)
    return counts.astype(np.int64), labels


def confusion_matrix(y_true, y_pred, labels=None, normalize=False, cmap="Blues", save=None):
    """The confusion matrix as a heat map with each cell's value written in it.

    y_true, y_pred, labels: as in confusion_counts (rows true, columns predicted).
    normalize: False (counts), True or "true" (each row divided by its total: the
    fraction of each true class predicted as each class; the diagonal is the
    per-class recall), "pred" (columns) or "all". Returns the Figure; save: a
    path to write a PNG."""
    if normalize not in (False, True, "true", "pred", "all"):
        raise ValueError(f"normalize must be False, True, 'true', 'pred' or 'all', "
                         f"got {normalize!r}")
    counts, labels = confusion_counts(y_true, y_pred, labels)
    values = counts.astype(np.float64)
    if normalize:
        axis = {True: 1, "true": 1, "pred": 0, "all": None}[normalize]
        total = values.sum(axis=axis, keepdims=axis is not None)
        values = np.divide(values, total, out=np.zeros_like(values), where=total > 0)

    plt = _pyplot()
    k = len(labels)
    size = min(max(3.5, 0.55 * k + 2.0), 14.0)
    fig, ax = plt.subplots(figsize=(size + 1.0, size))
    image = ax.imshow(values, cmap=cmap, vmin=0, interpolation="nearest")
    fig.colorbar(image, ax=ax, shrink=0.8)
    names = [str(x) for x in labels.tolist()]
    ax.set_xticks(range(k))
    ax.set_xticklabels(names, rotation=45 if max(map(len, names)) > 3 else 0)
    ax.set_yticks(range(k))
    ax.set_yticklabels(names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix" + (" (normalized)" if normalize else ""))
    if k <= 30:
        top = values.max() if values.size else 0
        for i in range(k):
            for j in range(k):
                text = f"{values[i, j]:.2f}" if normalize else str(counts[i, j])
                ax.text(j, i, text, ha="center", va="center", fontsize=8,
                        color="white" if top and values[i, j] > top / 2 else "black")
    fig.tight_layout()
    return _finish(fig, save)
