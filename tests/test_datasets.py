"""fusenn.datasets: IDX files (load_idx, load_mnist) and one_hot."""

import gzip
import io
import os
import struct
import tracemalloc

import numpy as np
import pytest

from fusenn import datasets
from idx_files import TYPE_CODES, fake_mnist, idx_bytes, write_idx

DTYPES = list(TYPE_CODES)


def sample(dtype, shape, seed=0):
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        a = rng.standard_normal(shape).astype(dtype)
        if a.size >= 3:
            a.flat[:3] = [np.finfo(dtype).max, np.finfo(dtype).tiny, -0.0]
        return a
    info = np.iinfo(dtype)
    a = rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dtype)
    if a.size >= 2:
        a.flat[:2] = [info.min, info.max]
    return a


class Stream:
    """A binary stream that can only be read (no seek, tell or name)."""

    def __init__(self, data):
        self._f = io.BytesIO(data)

    def read(self, n=-1):
        return self._f.read(n)


# ---- load_idx: round trips -----------------------------------------------------------------------

@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gzip"])
@pytest.mark.parametrize("dtype", DTYPES, ids=[d.name for d in DTYPES])
@pytest.mark.parametrize("shape", [(7,), (3, 5, 4), (2, 1, 3, 2), (0, 28, 28)])
def test_round_trip_path(tmp_path, dtype, gz, shape):
    a = sample(dtype, shape)
    path = write_idx(tmp_path / "a.idx", a, gz)
    b = datasets.load_idx(path)
    assert b.dtype == a.dtype and b.dtype.isnative
    assert b.shape == a.shape
    np.testing.assert_array_equal(b, a)
    b[...] = 0  # writable, not a view of read-only bytes
    assert datasets.load_idx(str(path)).shape == shape


def test_byte_order_on_disk_is_big_endian(tmp_path):
    path = tmp_path / "a"
    path.write_bytes(bytes([0, 0, 0x0B, 1]) + struct.pack(">I", 2) + struct.pack(">hh", 258, -2))
    np.testing.assert_array_equal(datasets.load_idx(path), [258, -2])
    path.write_bytes(bytes([0, 0, 0x0D, 2, 0, 0, 0, 1, 0, 0, 0, 1]) + struct.pack(">f", 1.5))
    assert datasets.load_idx(path).tolist() == [[1.5]]


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gzip"])
@pytest.mark.parametrize("dtype", DTYPES, ids=[d.name for d in DTYPES])
def test_round_trip_file_objects(dtype, gz):
    a = sample(dtype, (4, 3), seed=1)
    data = idx_bytes(a)
    if gz:
        data = gzip.compress(data)
    for f in (io.BytesIO(data), Stream(data)):
        np.testing.assert_array_equal(datasets.load_idx(f), a)
    # read from the current position
    f = io.BytesIO(b"junk" + data)
    f.seek(4)
    np.testing.assert_array_equal(datasets.load_idx(f), a)


def test_gzip_detected_by_content_not_name(tmp_path):
    a = sample(np.uint8, (5, 2))
    (tmp_path / "plain.gz").write_bytes(idx_bytes(a))
    (tmp_path / "packed-idx1-ubyte").write_bytes(gzip.compress(idx_bytes(a)))
    np.testing.assert_array_equal(datasets.load_idx(tmp_path / "plain.gz"), a)
    np.testing.assert_array_equal(datasets.load_idx(tmp_path / "packed-idx1-ubyte"), a)


# ---- load_idx: errors ----------------------------------------------------------------------------

def header(code, *shape):
    return bytes([0, 0, code, len(shape)]) + struct.pack(f">{len(shape)}I", *shape)


BAD_FILES = {
    "empty": (b"", ["empty"]),
    "html": (b"<!DOCTYPE html><html>", ["magic", "zero bytes"]),
    "wrong_magic": (b"\x01\x00\x08\x01\x00\x00\x00\x01\x05", ["magic"]),
    "short_magic": (b"\x00\x00\x08", ["truncated", "header"]),
    "unknown_type": (header(0x0A, 2) + b"\0\0", ["type code", "0x0A"]),
    "zero_dims": (b"\x00\x00\x08\x00\x05", ["dimensions"]),
    "short_dims": (header(0x08, 3, 4)[:9], ["truncated", "header"]),
    "truncated": (header(0x08, 10, 10) + bytes(99), ["truncated", "99"]),
    "truncated_wide": (header(0x0E, 3) + bytes(23), ["truncated", "24"]),
    "trailing": (header(0x08, 3) + bytes(4), ["trailing"]),
    "absurd": (header(0x08, 10**6, 10**6) + bytes(16), ["truncated", "(1000000, 1000000)"]),
    "absurd_dims": (header(0x0E, *[2**32 - 1] * 8) + bytes(8), ["truncated"]),
}


@pytest.mark.parametrize("source", ["path", "gzip_path", "bytesio", "stream", "gzip_stream"])
@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_files(tmp_path, case, source):
    data, words = BAD_FILES[case]
    if "gzip" in source:
        data = gzip.compress(data)
    if source.endswith("path"):
        target = tmp_path / f"{case}-idx3-ubyte"
        target.write_bytes(data)
        name = target.name
    else:
        target = io.BytesIO(data) if source == "bytesio" else Stream(data)
        name = None
    tracemalloc.start()
    try:
        with pytest.raises(ValueError) as info:
            datasets.load_idx(target)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    msg = str(info.value)
    for word in words:
        assert word.lower() in msg.lower(), msg
    if name is not None:
        assert name in msg
    assert peak < 64 << 20, f"reading a {len(data)}-byte file allocated {peak} bytes"


def test_absurd_header_fails_before_reading(tmp_path):
    # A raw file's length is checked before any data are read.
    path = tmp_path / "big"
    path.write_bytes(header(0x08, 10**6, 10**6) + bytes(10))
    with pytest.raises(ValueError, match="only 10 bytes follow the header"):
        datasets.load_idx(path)


@pytest.mark.parametrize("cut", [5, 15, -9, -3])
def test_corrupt_gzip(tmp_path, cut):
    data = gzip.compress(idx_bytes(sample(np.uint8, (50, 50))))
    path = tmp_path / "cut.gz"
    path.write_bytes(data[:cut])
    with pytest.raises(ValueError, match="cut.gz"):
        datasets.load_idx(path)


def test_gzip_with_trailing_data_inside(tmp_path):
    path = tmp_path / "t.gz"
    path.write_bytes(gzip.compress(idx_bytes(sample(np.uint8, (3,))) + b"x"))
    with pytest.raises(ValueError, match="trailing"):
        datasets.load_idx(path)


def test_bad_file_arguments(tmp_path):
    with pytest.raises(TypeError, match="path or a binary file"):
        datasets.load_idx(123)
    with pytest.raises(FileNotFoundError):
        datasets.load_idx(tmp_path / "missing")
    path = write_idx(tmp_path / "a", sample(np.uint8, (3,)))
    with open(path, "r", encoding="latin-1") as f:
        with pytest.raises(TypeError, match="binary"):
            datasets.load_idx(f)


# ---- load_mnist ------------------------------------------------------------------------------------

@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gzip"])
def test_load_mnist(tmp_path, gz):
    (train_x, train_y), (test_x, test_y) = fake_mnist(tmp_path, 30, 12, gz=gz)
    X, y = datasets.load_mnist(tmp_path)
    assert X.shape == (30, 784) and X.dtype == np.float32
    assert y.shape == (30,) and y.dtype == np.int64
    np.testing.assert_array_equal(X, train_x.reshape(30, 784).astype(np.float32) / 255)
    np.testing.assert_array_equal(y, train_y)
    assert X.min() >= 0 and X.max() == 1
    for kind in ("test", "t10k"):
        X, y = datasets.load_mnist(str(tmp_path), kind=kind)
        np.testing.assert_array_equal(y, test_y)
        assert X.shape == (12, 784)
    X, y = datasets.load_mnist(tmp_path, "test", normalize=False, flatten=False)
    assert X.dtype == np.uint8
    np.testing.assert_array_equal(X, test_x)
    X, _ = datasets.load_mnist(tmp_path, flatten=False, dtype="float64")
    assert X.shape == (30, 28, 28) and X.dtype == np.float64


@pytest.mark.parametrize("prefix", ["emnist-digits", "emnist-digits-"])
def test_load_mnist_emnist_prefix(tmp_path, prefix):
    (_, train_y), (_, test_y) = fake_mnist(tmp_path, 20, 10, rows=7, cols=5,
                                           prefix="emnist-digits-", test_stem="test", gz=True)
    X, y = datasets.load_mnist(tmp_path, prefix=prefix)
    assert X.shape == (20, 35)
    np.testing.assert_array_equal(y, train_y)
    _, y = datasets.load_mnist(tmp_path, "test", prefix=prefix)
    np.testing.assert_array_equal(y, test_y)
    with pytest.raises(FileNotFoundError, match="prefix="):
        datasets.load_mnist(tmp_path)  # names it found are suggested


def test_load_mnist_dot_names(tmp_path):
    write_idx(tmp_path / "train-images.idx3-ubyte", np.zeros((2, 3, 3), np.uint8))
    write_idx(tmp_path / "train-labels.idx1-ubyte", np.array([1, 2], np.uint8))
    X, y = datasets.load_mnist(tmp_path)
    assert X.shape == (2, 9) and y.tolist() == [1, 2]


def test_load_mnist_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        datasets.load_mnist(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError) as info:
        datasets.load_mnist(tmp_path)
    assert "train-images-idx3-ubyte" in str(info.value)
    assert "train-images-idx3-ubyte.gz" in str(info.value)
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((3, 4, 4), np.uint8))
    with pytest.raises(FileNotFoundError, match="train-labels-idx1-ubyte"):
        datasets.load_mnist(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(4, np.uint8), gz=True)
    with pytest.raises(ValueError, match="3 images but .* 4 labels"):
        datasets.load_mnist(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros((3, 1), np.uint8), gz=True)
    with pytest.raises(ValueError, match="labels of shape"):
        datasets.load_mnist(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(3, np.uint8), gz=True)
    assert datasets.load_mnist(tmp_path)[0].shape == (3, 16)
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((3, 16), np.uint8))
    with pytest.raises(ValueError, match="rows, cols"):
        datasets.load_mnist(tmp_path)
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((3, 4, 4), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        datasets.load_mnist(tmp_path)
    assert datasets.load_mnist(tmp_path, normalize=False)[0].dtype == np.float32
    with pytest.raises(ValueError, match="kind"):
        datasets.load_mnist(tmp_path, kind="validation")
    with pytest.raises(ValueError, match="dtype"):
        datasets.load_mnist(tmp_path, dtype="int32")
    with pytest.raises(TypeError, match="prefix"):
        datasets.load_mnist(tmp_path, prefix=1)


# ---- one_hot -------------------------------------------------------------------------------------

def test_one_hot():
    Y = datasets.one_hot([2, 0, 1, 2])
    assert Y.dtype == np.float32 and Y.shape == (4, 3)
    np.testing.assert_array_equal(Y, np.eye(3, dtype=np.float32)[[2, 0, 1, 2]])
    np.testing.assert_array_equal(np.argmax(Y, axis=-1), [2, 0, 1, 2])
    Y = datasets.one_hot(np.array([[1, 0], [3, 3]], dtype=np.uint8), num_classes=5, dtype="int64")
    assert Y.shape == (2, 2, 5) and Y.dtype == np.int64
    np.testing.assert_array_equal(Y.argmax(-1), [[1, 0], [3, 3]])
    assert Y.sum() == 4
    assert datasets.one_hot(np.array([1.0, 0.0]), dtype=bool).tolist() == [[False, True],
                                                                            [True, False]]
    assert datasets.one_hot([], num_classes=4).shape == (0, 4)
    assert datasets.one_hot(np.int64(3), num_classes=np.int32(4)).tolist() == [0, 0, 0, 1]
    _, y = datasets.load_digits()
    np.testing.assert_array_equal(datasets.one_hot(y).argmax(1), y)


@pytest.mark.parametrize("kwargs, match", [
    (dict(y=[0, -1]), "non-negative"),
    (dict(y=[0, 3], num_classes=3), "out of range"),
    (dict(y=[0.5]), "integer"),
    (dict(y=[np.nan]), "integer"),
    (dict(y=["a"]), "integer"),
    (dict(y=[]), "empty"),
    (dict(y=[1], num_classes=0), "num_classes"),
    (dict(y=[1], num_classes=2.0), "num_classes"),
    (dict(y=[1], num_classes=True), "num_classes"),
    (dict(y=[1], dtype="U3"), "dtype"),
    (dict(y=[1], dtype="nonsense"), "dtype"),
])
def test_one_hot_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        datasets.one_hot(**kwargs)


def test_load_genesis():
    text = datasets.load_genesis()
    assert len(text) == 34961 and text.isascii()
    assert text.startswith("CHAPTER 1\nIn the beginning God created the heaven and the earth.\n")
    assert text.endswith("And the days of Terah were two hundred and five years: and Terah died in Haran.\n")
    assert text.count("CHAPTER ") == 11 and "\n\nCHAPTER 11\n" in text
