"""Readers for the IDX format of MNIST, Fashion-MNIST and EMNIST.

An IDX file is a header followed by the data, all big-endian:
two zero bytes, a type code (0x08 ubyte, 0x09 byte, 0x0B short, 0x0C int,
0x0D float, 0x0E double), the number of dimensions d, then d uint32 sizes;
the data are the prod(sizes) items in row-major order.
"""

import gzip
import os
import zlib

import numpy as np

__all__ = ["load_idx", "load_mnist"]

IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 24  # read compressed data 16 MiB at a time


class _Prefixed:
    """A read-only stream: `prefix` bytes already consumed from `raw`, then the rest of `raw`."""

    def __init__(self, prefix, raw):
        self._prefix = prefix
        self._raw = raw

    def read(self, n=-1):
        if n is None or n < 0:
            out, self._prefix = self._prefix + self._raw.read(), b""
            return out
        if self._prefix:
            out, self._prefix = self._prefix[:n], self._prefix[n:]
            if len(out) < n:
                out += self._raw.read(n - len(out))
            return out
        return self._raw.read(n)


def _read_up_to(stream, n):
    """Up to n bytes: fewer only at the end of the stream. Reads in chunks, so a
    header claiming a huge size costs no more memory than the data really there."""
    chunks, have = [], 0
    while have < n:
        chunk = stream.read(min(n - have, _CHUNK))
        if not chunk:
            break
        chunks.append(chunk)
        have += len(chunk)
    return b"".join(chunks)


def _remaining_bytes(f):
    """Bytes left in a seekable uncompressed file, or None if it cannot be told."""
    try:
        if not f.seekable():
            return None
        pos = f.tell()
        end = f.seek(0, os.SEEK_END)
        f.seek(pos)
        return end - pos
    except (AttributeError, OSError, ValueError):
        return None


def _parse(stream, name, compressed, remaining):
    header = _read_up_to(stream, 4)
    if len(header) == 0:
        raise ValueError(f"{name}: empty file, not an IDX file")
    if len(header) < 4:
        raise ValueError(f"{name}: truncated IDX header ({len(header)} bytes, need at least 4)")
    if header[:2] != b"\0\0":
        raise ValueError(
            f"{name}: not an IDX file: its magic number {header.hex()} should start with two "
            f"zero bytes (0000xxxx); is it another format, or an error page saved by a download?"
        )
    code, ndim = header[2], header[3]
    if code not in IDX_TYPES:
        known = ", ".join(f"0x{c:02X}" for c in IDX_TYPES)
        raise ValueError(f"{name}: unknown IDX type code 0x{code:02X} (known: {known})")
    if not 1 <= ndim <= 32:
        raise ValueError(f"{name}: IDX header gives {ndim} dimensions; expected 1 to 32")
    dims_bytes = _read_up_to(stream, 4 * ndim)
    if len(dims_bytes) < 4 * ndim:
        raise ValueError(
            f"{name}: truncated IDX header: {ndim} dimension sizes need {4 * ndim} bytes, "
            f"found {len(dims_bytes)}"
        )
    shape = tuple(int(d) for d in np.frombuffer(dims_bytes, dtype=">u4"))
    dtype = np.dtype(IDX_TYPES[code])
    count = 1
    for d in shape:
        count *= d  # Python ints: no overflow whatever the header says
    nbytes = count * dtype.itemsize
    what = f"header says shape {shape} of {dtype.name} ({nbytes:,} data bytes)"
    if remaining is not None:
        # An uncompressed file's length is known: check before reading anything.
        left = remaining - 4 - 4 * ndim
        if left < nbytes:
            raise ValueError(f"{name}: truncated or corrupt IDX file: {what}, "
                             f"but only {left:,} bytes follow the header")
        if left > nbytes:
            raise ValueError(f"{name}: {left - nbytes:,} bytes of trailing data after the "
                             f"IDX data ({what}); the file is corrupt or not one IDX array")
    data = _read_up_to(stream, nbytes)
    if len(data) < nbytes:
        packed = " (after decompression)" if compressed else ""
        raise ValueError(f"{name}: truncated or corrupt IDX file: {what}, but only "
                         f"{len(data):,} bytes follow the header{packed}")
    if stream.read(1):
        raise ValueError(f"{name}: trailing data after the IDX data ({what}); "
                         f"the file is corrupt or not one IDX array")
    array = np.frombuffer(data, dtype=dtype).reshape(shape)
    return array.astype(dtype.newbyteorder("="))  # native byte order, writable


def load_idx(file):
    """Read one IDX array (the format of MNIST, Fashion-MNIST and EMNIST).

    Parameters
    ----------
    file : str, os.PathLike or binary file object
        A path, or a file object read from its current position. The data may
        be raw or gzip-compressed; gzip is recognised by its magic bytes, not
        by the file name.

    Returns
    -------
    numpy.ndarray
        The stored shape, in native byte order, of dtype uint8, int8, int16,
        int32, float32 or float64 (type codes 0x08, 0x09, 0x0B, 0x0C, 0x0D,
        0x0E).

    Raises
    ------
    ValueError
        Naming the file, for a wrong magic number, an unknown type code, a
        truncated file, data after the array, or a header whose sizes the file
        does not hold (checked before allocating, so a corrupt header cannot
        make it allocate gigabytes); gzip errors are reported as ValueError too.
    """
    if hasattr(file, "read"):
        name = getattr(file, "name", None)
        name = f"<{type(file).__name__} file object>" if name is None else repr(name)
        return _load_stream(file, name)
    if not isinstance(file, (str, bytes, os.PathLike)):
        raise TypeError(f"file must be a path or a binary file object, got {file!r}")
    with open(file, "rb") as f:
        return _load_stream(f, repr(os.fsdecode(file)))


def _load_stream(f, name):
    magic = f.read(2)
    if not isinstance(magic, bytes):
        raise TypeError(f"{name}: file must be opened in binary mode ('rb')")
    if magic != _GZIP_MAGIC:
        remaining = _remaining_bytes(f)
        stream = _Prefixed(magic, f)
        return _parse(stream, name, False, None if remaining is None else remaining + len(magic))
    try:
        with gzip.GzipFile(fileobj=_Prefixed(magic, f), mode="rb") as gz:
            return _parse(gz, name, True, None)
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"{name}: corrupt gzip data ({e})") from e


def _find(directory, candidates):
    for c in candidates:
        p = os.path.join(directory, c)
        if os.path.isfile(p):
            return p
    return None


def _candidates(prefix, stem, what):
    # "train-images-idx3-ubyte" is the original name; some copies use ".idx3-ubyte".
    idx = "idx3-ubyte" if what == "images" else "idx1-ubyte"
    names = []
    prefixes = [prefix] if not prefix or prefix.endswith(("-", "_")) else [prefix + "-", prefix]
    for p in prefixes:
        for s in stem:
            for sep in ("-", "."):
                for ext in ("", ".gz"):
                    names.append(f"{p}{s}-{what}{sep}{idx}{ext}")
    return names


def load_mnist(path, kind="train", prefix="", normalize=True, flatten=True, dtype="float32"):
    """Load MNIST-style IDX files from the directory `path` (nothing is downloaded).

    Parameters
    ----------
    path : str or os.PathLike
        The directory holding the files. Each file may be raw or gzipped (a
        ``.gz`` name); ``.idx3-ubyte`` instead of ``-idx3-ubyte`` is accepted
        too. Fashion-MNIST uses MNIST's names.
    kind : {"train", "test"}, default "train"
        ``"train"`` reads ``train-images-idx3-ubyte`` and
        ``train-labels-idx1-ubyte``; ``"test"`` (or ``"t10k"``) reads
        ``t10k-images-idx3-ubyte`` / ``t10k-labels-idx1-ubyte``, or
        ``test-images...`` as EMNIST names them.
    prefix : str, default ""
        Put before the names, for EMNIST's files: ``prefix="emnist-digits"``
        reads ``emnist-digits-train-images-idx3-ubyte.gz`` (the ``-`` is
        added if missing).
    normalize : bool, default True
        Pixels / 255 in [0, 1] of dtype `dtype`; False keeps the stored uint8
        pixels.
    flatten : bool, default True
        X as rows ``(n, rows * cols)``; False: ``(n, rows, cols)``.
    dtype : {"float32", "float64"}, default "float32"

    Returns
    -------
    X : numpy.ndarray
        The images. EMNIST's are stored transposed:
        ``X.reshape(-1, 28, 28).transpose(0, 2, 1)`` shows them upright.
    y : numpy.ndarray
        ``(n,)`` int64 labels.

    Raises
    ------
    FileNotFoundError
        Listing the names looked for.
    ValueError
        If the image and label counts differ or a file is not the expected
        IDX array.
    """
    if not isinstance(kind, str) or kind not in ("train", "test", "t10k"):
        raise ValueError(f"kind must be 'train' or 'test' (or 't10k'), got {kind!r}")
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a string, got {prefix!r}")
    if normalize:
        from . import _float_dtype  # here: the package imports this module
        dt = _float_dtype(dtype)
    if not isinstance(path, (str, bytes, os.PathLike)):
        raise TypeError(f"path must be a directory path, got {path!r}")
    directory = os.fsdecode(path)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"MNIST directory {directory!r} does not exist or is not a directory")
    stem = ("train",) if kind == "train" else ("t10k", "test")
    files = {}
    for what in ("images", "labels"):
        names = _candidates(prefix, stem, what)
        found = _find(directory, names)
        if found is None:
            hint = ""
            if not prefix:
                others = sorted(n for n in os.listdir(directory)
                                if any(f"-{s}-{what}" in n for s in stem))
                if others:
                    hint = f"; found {others[:3]}: pass prefix= (the part before '{stem[0]}-')"
            raise FileNotFoundError(
                f"no {kind} {what} in {directory!r}: looked for {', '.join(names)}{hint}"
            )
        files[what] = found
    images = load_idx(files["images"])
    labels = load_idx(files["labels"])
    if images.ndim != 3:
        raise ValueError(f"{files['images']!r}: expected images of shape (n, rows, cols), "
                         f"got shape {images.shape}")
    if labels.ndim != 1:
        raise ValueError(f"{files['labels']!r}: expected labels of shape (n,), got shape {labels.shape}")
    if len(images) != len(labels):
        raise ValueError(f"{files['images']!r} has {len(images)} images but "
                         f"{files['labels']!r} has {len(labels)} labels")
    if normalize:
        if images.dtype != np.uint8:
            raise ValueError(f"{files['images']!r}: normalize=True expects uint8 pixels, "
                             f"got {images.dtype}; pass normalize=False")
        X = images.astype(dt)
        X /= 255
    else:
        X = images
    if flatten:
        X = X.reshape(len(X), -1)
    return X, labels.astype(np.int64)
