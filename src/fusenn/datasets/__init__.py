"""Small bundled datasets, readers for MNIST-style IDX files, a train/test
splitter and one-hot encoding.

``load_digits`` reads the UCI "Optical Recognition of Handwritten Digits"
8x8 digits (1,797 samples, CC BY 4.0) shipped in ``data/digits.csv.gz``; see
``data/README.md`` for the source and citation. ``load_idx`` and
``load_mnist`` read MNIST, Fashion-MNIST and EMNIST from IDX files the user
has, and ``load_fashion_mnist`` the real Fashion-MNIST where Debian's
``dataset-fashion-mnist`` package installs it (nothing is downloaded).
``load_genesis`` returns a short public-domain text (Genesis 1-11, King James
Version) for character-level language models.
"""

import gzip
import numbers
import os
from importlib.resources import files

import numpy as np

from ._idx import load_idx, load_mnist

__all__ = ["load_digits", "load_genesis", "load_idx", "load_mnist", "load_fashion_mnist", "FASHION_MNIST_CLASSES",
           "train_test_split", "one_hot"]

# Where Debian's dataset-fashion-mnist package puts the IDX files.
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot")

_digits = None  # parsed (1797, 65) int64 array, loaded on first use


def _digits_array():
    global _digits
    if _digits is None:
        with (files(__name__) / "data" / "digits.csv.gz").open("rb") as f:
            with gzip.open(f, "rt") as text:
                _digits = np.loadtxt(text, delimiter=",", dtype=np.int64)
    return _digits


def _float_dtype(dtype):
    try:
        dt = None if dtype is None else np.dtype(dtype)  # np.dtype(None) is float64
    except TypeError:
        dt = None
    if dt is None or dt.type not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
    return dt


def load_digits(dtype="float32", return_images=False, images=False):
    """1,797 8x8 handwritten digits. Returns (X, y): X (1797, 64) of dtype `dtype`
    scaled to [0, 1] (pixel/16), y (1797,) int64 in 0..9. images=True gives X as
    images for Conv2D, (1797, 8, 8, 1) (channels last); return_images=True as
    (1797, 8, 8) pictures."""
    dt = _float_dtype(dtype)
    data = _digits_array()
    X = data[:, :64].astype(dt)
    X /= 16
    y = data[:, 64].copy()
    if images:
        return X.reshape(-1, 8, 8, 1), y
    if return_images:
        return X.reshape(-1, 8, 8), y
    return X, y


def load_genesis():
    """The first eleven chapters of Genesis in the King James Version (1611; public
    domain) as one str of 34,961 characters: one verse per line, each chapter
    after a line "CHAPTER n" and a blank line between chapters (see data/README.md)."""
    return (files(__name__) / "data" / "genesis_kjv.txt").read_text(encoding="ascii")


def load_fashion_mnist(kind="train", path=None, flatten=False, dtype="float32"):
    """The real Fashion-MNIST (Xiao, Rasul and Vollgraf 2017; MIT licence): 60,000
    training or 10,000 test ("test") 28x28 grey images of clothes in 10 classes
    (FASHION_MNIST_CLASSES), read from the IDX files in `path`, by default where
    Debian's package puts them (`apt-get install dataset-fashion-mnist`:
    /usr/share/datasets/fashion-mnist). Nothing is downloaded.

    Returns (X, y): X (n, 28, 28, 1) images for Conv2D (flatten=True: (n, 784)),
    pixels / 255 in [0, 1] of dtype `dtype`; y (n,) int64 labels 0..9."""
    directory = FASHION_MNIST_DIR if path is None else path
    try:
        X, y = load_mnist(directory, "test" if kind == "t10k" else kind, flatten=flatten,
                          dtype=dtype)
    except FileNotFoundError as exc:
        raise FileNotFoundError(
            f"Fashion-MNIST not found ({exc}). On Debian or Ubuntu: "
            f"`apt-get install dataset-fashion-mnist` puts it in {FASHION_MNIST_DIR}; or "
            f"pass path= a directory holding train-images-idx3-ubyte.gz, "
            f"train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz "
            f"(github.com/zalandoresearch/fashion-mnist)") from None
    return (X, y) if flatten else (X[..., None], y)


def _test_count(test_size, n):
    if isinstance(test_size, numbers.Integral) and not isinstance(test_size, bool):
        if not 1 <= test_size < n:
            raise ValueError(f"test_size as a count must be in [1, {n - 1}], got {test_size}")
        return int(test_size)
    if isinstance(test_size, numbers.Real) and not isinstance(test_size, bool):
        if not 0 < test_size < 1:
            raise ValueError(f"test_size as a fraction must be in (0, 1), got {test_size}")
        n_test = int(np.ceil(test_size * n))
        if not 1 <= n_test < n:
            raise ValueError(
                f"test_size={test_size} with {n} samples leaves an empty train or test set"
            )
        return n_test
    raise ValueError(f"test_size must be a float in (0, 1) or an int, got {test_size!r}")


def _stratified_test_indices(labels, n_test, rng):
    _, inv, counts = np.unique(labels, return_inverse=True, return_counts=True)
    n = inv.size
    # Each class gets floor(n_test * count / n) test rows; the remaining rows go
    # to the classes with the largest remainders (ties broken at random).
    alloc, rem = np.divmod(counts * n_test, n)
    order = rng.permutation(counts.size)
    order = order[np.argsort(-rem[order], kind="stable")]
    alloc[order[: n_test - alloc.sum()]] += 1
    # Shuffled row indices grouped by class; take the first alloc[c] of class c.
    perm = rng.permutation(n)
    by_class = perm[np.argsort(inv[perm], kind="stable")]
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    return np.concatenate([by_class[s : s + a] for s, a in zip(starts, alloc)])


def train_test_split(*arrays, test_size=0.25, seed=0, shuffle=True, stratify=None):
    """Like scikit-learn's: returns [a_train, a_test, b_train, b_test, ...]; test_size
    a fraction in (0, 1) or an int count; stratify: labels array for a class-balanced
    split. Seeded with numpy.random.default_rng(seed). Validates: all arrays same
    length (ValueError naming the lengths), test_size range."""
    if not arrays:
        raise ValueError("train_test_split needs at least one array")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))
                             or seed < 0):
        raise ValueError(f"seed must be a non-negative int or None, got {seed!r}")
    arrays = [np.asarray(a) for a in arrays]
    if any(a.ndim == 0 for a in arrays):
        raise ValueError("train_test_split takes arrays with a first dimension, got a scalar")
    lengths = [len(a) for a in arrays]
    if len(set(lengths)) != 1:
        raise ValueError(f"all arrays must have the same length, got lengths {lengths}")
    n = lengths[0]
    n_test = _test_count(test_size, n)

    if stratify is not None:
        if not shuffle:
            raise ValueError("stratify requires shuffle=True")
        stratify = np.asarray(stratify)
        if stratify.ndim != 1:
            raise ValueError(f"stratify must be a 1-D array of labels, got shape {stratify.shape}")
        if len(stratify) != n:
            raise ValueError(f"stratify has length {len(stratify)}, arrays have length {n}")
        rng = np.random.default_rng(seed)
        is_test = np.zeros(n, dtype=bool)
        is_test[_stratified_test_indices(stratify, n_test, rng)] = True
        # Shuffle each side so rows are not grouped by class.
        train = rng.permutation(np.flatnonzero(~is_test))
        test = rng.permutation(np.flatnonzero(is_test))
    elif shuffle:
        perm = np.random.default_rng(seed).permutation(n)
        train, test = perm[n_test:], perm[:n_test]
    else:
        train, test = np.arange(n - n_test), np.arange(n - n_test, n)

    out = []
    for a in arrays:
        out += [a[train], a[test]]
    return out


def one_hot(y, num_classes=None, dtype="float32"):
    """One-hot encode integer labels: returns an array of shape y.shape + (num_classes,)
    with 1 at [..., y] and 0 elsewhere, of dtype `dtype` (like Keras' to_categorical
    and torch.nn.functional.one_hot). num_classes defaults to max(y) + 1. Labels
    must be integers (floats with integral values are accepted) in [0, num_classes).
    The inverse is argmax: ``np.argmax(Y, axis=-1)``."""
    y = np.asarray(y)
    if y.dtype.kind not in "iuf" or y.dtype.kind == "f" and not (
            np.all(np.isfinite(y)) and np.all(y == np.round(y))):
        raise ValueError(f"y must hold integer class labels, got dtype {y.dtype}"
                         + (" with non-integer values" if y.dtype.kind == "f" else ""))
    if num_classes is None:
        if y.size == 0:
            raise ValueError("cannot infer num_classes from an empty y; pass num_classes")
        num_classes = int(y.max()) + 1
    elif isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) \
            or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if y.size and y.min() < 0:
        raise ValueError(f"labels must be non-negative, got {y.min()}")
    if y.size and y.max() >= num_classes:
        raise ValueError(f"label {y.max()} is out of range for num_classes={num_classes}")
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise ValueError(f"dtype must be a NumPy dtype, got {dtype!r}") from None
    if dt.kind not in "biuf":
        raise ValueError(f"dtype must be a numeric or bool dtype, got {dtype!r}")
    out = np.zeros(y.shape + (int(num_classes),), dtype=dt)
    np.put_along_axis(out, y.astype(np.intp)[..., None], 1, axis=-1)
    return out
