"""Writers of IDX files for the tests (fusenn itself only reads them)."""

import gzip
import struct

import numpy as np

TYPE_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(np.int16): 0x0B,
              np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D, np.dtype(np.float64): 0x0E}


def idx_bytes(array):
    """The IDX encoding of `array`: header (0, 0, type code, ndim, big-endian sizes), then
    the items big-endian in row-major order."""
    array = np.asarray(array)
    header = struct.pack(">BBBB", 0, 0, TYPE_CODES[array.dtype], array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path, array, gz=False):
    data = idx_bytes(array)
    with open(path, "wb") as f:
        f.write(gzip.compress(data) if gz else data)
    return path


def fake_mnist(directory, n_train=60, n_test=20, rows=28, cols=28, prefix="", test_stem="t10k",
               gz=False, seed=0):
    """Write a small MNIST-like set whose labels are learnable: class c lights up the
    c-th horizontal band of the image. Returns the train and test (images, labels)."""
    rng = np.random.default_rng(seed)
    out = []
    for stem, n in (("train", n_train), (test_stem, n_test)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        rng.shuffle(labels)
        images = rng.integers(0, 40, size=(n, rows, cols)).astype(np.uint8)
        band = max(rows // 10, 1)
        for i, c in enumerate(labels):
            images[i, (c * band) % rows: (c * band) % rows + band, :] = 255
        ext = ".gz" if gz else ""
        write_idx(f"{directory}/{prefix}{stem}-images-idx3-ubyte{ext}", images, gz)
        write_idx(f"{directory}/{prefix}{stem}-labels-idx1-ubyte{ext}", labels, gz)
        out.append((images, labels))
    return out
