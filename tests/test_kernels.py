"""fusenn.ops (the C kernels) against fusenn.reference (the NumPy oracle).

Every public function of fusenn.ops is called on the same inputs as its twin in
fusenn.reference and the results are compared with tolerances that scale with
the dtype's epsilon and the length of the reductions involved. On top of that:
memory layouts (strided, reversed, transposed, Fortran, read-only views),
thread-count determinism, every GEMM micro-kernel ISA the CPU has (in
subprocesses, since the ISA is chosen once per process), extreme values and
argument validation.
"""

import os
import platform
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import fusenn
from fusenn import _kernels, ops
from fusenn import reference as ref

# ---- parameters -------------------------------------------------------------------

DTYPES = [pytest.param(np.float32, id="f32"), pytest.param(np.float64, id="f64")]
ACTIVATIONS = list(ref.ACTIVATIONS)
SIZES = (1, 2, 7, 17, 33, 65, 127)
TRANSPOSES = [
    pytest.param(ta, tb, id=f"{'T' if ta else 'N'}{'T' if tb else 'N'}")
    for ta in (False, True) for tb in (False, True)
]
LAYOUTS = ("contiguous", "rows", "cols", "reversed", "transposed", "strided_T", "fortran",
           "readonly", "unaligned")
LOSSES = ("softmax_cross_entropy", "sigmoid_binary_cross_entropy", "mse", "mae", "huber",
          "poisson")
THREAD_COUNTS = (1, 2, 3)


def _gemm_sweep():
    """(m, n, k): each size as m, n and k in turn with the other two varied, plus
    non-square triples; not the full cartesian product."""
    shapes = []
    for i, s in enumerate(SIZES):
        o1, o2 = SIZES[(i + 2) % len(SIZES)], SIZES[(i + 5) % len(SIZES)]
        shapes += [(s, o1, o2), (o1, s, o2), (o1, o2, s)]
    shapes += [(7, 33, 2), (127, 1, 65), (2, 127, 17), (65, 7, 1), (33, 17, 256), (17, 9, 257)]
    return list(dict.fromkeys(shapes))


def _mnk_id(shape):
    return "m{}-n{}-k{}".format(*shape)


GEMM_SHAPES = [pytest.param(s, id=_mnk_id(s)) for s in _gemm_sweep()]
# Several MC blocks (m=300), several KC blocks (k=513 > 256 for float64 and the
# portable kernel, k=2049 > 2 * 1024 for float32 on AVX2 and AVX-512), several NC
# blocks (n=4500).
LARGE_GEMM_SHAPES = [pytest.param(s, id=_mnk_id(s))
                     for s in [(300, 257, 129), (40, 50, 513), (19, 70, 2049), (5, 4500, 9)]]
# (n, d_in, d_out) for the dense layer; d_in plays GEMM's k in forward.
DENSE_SHAPES = [pytest.param(s, id="n{}-in{}-out{}".format(*s)) for s in [
    (1, 1, 1), (2, 7, 17), (17, 33, 2), (33, 65, 7), (65, 2, 127), (127, 17, 33),
    (7, 513, 65), (3, 9, 4500),
]]
# (n, d) for activations and losses.
ROW_SHAPES = [pytest.param(s, id="{}x{}".format(*s)) for s in [
    (1, 1), (2, 7), (7, 2), (17, 33), (33, 127), (127, 65), (300, 10),
]]
FLAT_SHAPES = [pytest.param(s, id="x".join(map(str, s)))
               for s in [(1,), (7,), (33, 17), (200, 200)]]


# ---- helpers ------------------------------------------------------------------------

# Allowed error in units of the dtype's epsilon times sqrt(reduction length),
# relative to the largest magnitude of the reference result. The largest error
# observed over this file (all ISAs, 1-3 threads) is about 1 such unit, so 16
# leaves a wide margin; any real bug (a wrong term, a lost kc block, a wrong
# stride, a value computed in float32 for float64) is orders of magnitude above.
TOL_ULPS = 16


def tolerance(dtype, k=1):
    return TOL_ULPS * np.finfo(dtype).eps * np.sqrt(max(k, 1))


def assert_close(got, want, dtype, k=1):
    """Compare a C result with the reference: same type, shape and dtype, and
    values within tolerance(dtype, k) (relative, and absolute to the largest
    reference magnitude). Recurses into tuples; None must match None."""
    if isinstance(want, tuple):
        assert isinstance(got, tuple) and len(got) == len(want)
        for g, w in zip(got, want):
            assert_close(g, w, dtype, k)
        return
    if want is None:
        assert got is None
        return
    if isinstance(want, float):
        assert type(got) is float, f"expected a Python float, got {type(got).__name__}"
    else:
        assert isinstance(got, np.ndarray)
        assert got.shape == want.shape, (got.shape, want.shape)
        assert got.dtype == want.dtype, (got.dtype, want.dtype)
    want = np.asarray(want)
    tol = tolerance(dtype, k)
    scale = float(np.max(np.abs(want), initial=0.0)) or 1.0
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * scale)


def as_layout(values, layout):
    """`values` (C-contiguous) as an array with the same elements in another
    memory layout. Strided views live inside a NaN-filled parent, so a kernel
    that ignores strides reads NaN (a clear failure), never out of bounds."""
    shape, nd = values.shape, values.ndim
    fill = np.nan if values.dtype.kind == "f" else np.iinfo(values.dtype).max
    if layout == "contiguous":
        return values
    if layout == "rows":  # a[::2]
        parent = np.full((2 * shape[0],) + shape[1:], fill, values.dtype)
        view = parent[::2]
    elif layout == "cols":  # a[:, ::3] (a[::3] for 1-D)
        parent = np.full(shape[:-1] + (3 * shape[-1],), fill, values.dtype)
        view = parent[..., ::3]
    elif layout == "reversed":  # a[::-1, ::-1]
        parent = np.full(tuple(2 * s for s in shape), fill, values.dtype)
        view = parent[tuple(slice(None, s) for s in shape)][(slice(None, None, -1),) * nd]
    elif layout == "transposed":  # a.T of a C-contiguous array
        return np.ascontiguousarray(values.T).T
    elif layout == "strided_T":  # neither stride is 1
        return as_layout(np.ascontiguousarray(values.T), "cols").T
    elif layout == "fortran":
        return np.asfortranarray(values)
    elif layout == "readonly":
        view = values.copy()
        view.setflags(write=False)
        return view
    elif layout == "unaligned":  # contiguous, but one byte past an aligned address
        raw = np.zeros(values.nbytes + 1, np.uint8)
        view = raw[1:].view(values.dtype).reshape(shape)
        assert not view.flags.aligned
    else:
        raise ValueError(layout)
    view[...] = values
    return view


def rand(rng, shape, dtype, layout="contiguous", scale=1.0):
    """Standard normal values (times scale) of `dtype` in `layout`."""
    return as_layout((scale * rng.standard_normal(shape)).astype(dtype), layout)


def run_both(name, make_args, dtype, k=1):
    """Call ops.<name> and reference.<name> on fresh copies of the same
    arguments, check the C side left its inputs alone, and compare results."""
    args = make_args()
    before = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
    got = getattr(ops, name)(*args)
    for a, b in zip(args, before):
        if isinstance(a, np.ndarray):
            np.testing.assert_array_equal(a, b, err_msg=f"ops.{name} modified an input")
    want = getattr(ref, name)(*make_args())
    assert_close(got, want, dtype, k)
    return got


def matmul_operands(rng, m, n, k, dtype, trans_a, trans_b, layout="contiguous"):
    a = rand(rng, (k, m) if trans_a else (m, k), dtype, layout)
    b = rand(rng, (n, k) if trans_b else (k, n), dtype, layout)
    return a, b


def dense_operands(rng, shape, dtype, activation, layout="contiguous"):
    """x, w, b, and a consistent y = act(x w + b) plus an upstream gradient dy."""
    n, d_in, d_out = shape
    x = rand(rng, (n, d_in), dtype, layout)
    w = rand(rng, (d_in, d_out), dtype, layout, scale=1 / np.sqrt(max(d_in, 1)))
    b = rand(rng, (d_out,), dtype, layout)
    y = as_layout(ref.dense_forward(np.array(x), np.array(w), np.array(b), activation), layout)
    dy = rand(rng, (n, d_out), dtype, layout)
    return x, w, b, y, dy


def pre_activation(x, w, b, activation, layout="contiguous"):
    """z = x w + b when `activation`'s backward needs it (ref.NEEDS_Z), else None."""
    if activation not in ref.NEEDS_Z:
        return None
    return as_layout(ref.dense_forward(np.array(x), np.array(w), np.array(b), "identity"), layout)


def loss_operands(rng, name, shape, dtype, layout="contiguous", logit_scale=2.0):
    """(z or a, labels or t) for the loss `name`."""
    n, k = shape
    z = rand(rng, shape, dtype, layout, scale=logit_scale)
    if name == "softmax_cross_entropy":
        return z, rng.integers(0, k, size=n)
    return z, as_layout(rng.random(shape).astype(dtype), layout)


def loss_k(name, shape):
    """Reduction length behind a loss's outputs (softmax sums each row)."""
    return shape[1] if name == "softmax_cross_entropy" else 1


# ---- coverage of the API -------------------------------------------------------------

TESTED_OPS = {"matmul", "activation_forward", "activation_backward", "dense_forward",
              "dense_backward", "softmax_cross_entropy", "sigmoid_binary_cross_entropy",
              "mse", "mae", "huber", "poisson", "sgd_update", "adam_update", "rmsprop_update",
              "adagrad_update", "sum_squares", "grad_transform",
              # dropout, batchnorm: their own files
              "dropout_forward", "dropout_backward", "dropout_seed", "batchnorm_forward_train",
              "batchnorm_forward_infer", "batchnorm_backward",
              "global_pool_forward", "global_pool_backward", "conv2d_forward",
              "conv2d_backward", "pool2d_forward", "pool2d_backward",  # layer kinds: test_conv.py
              "embedding_forward", "embedding_backward", "simple_rnn_forward",
              "simple_rnn_backward", "gru_forward", "gru_backward", "lstm_forward",
              "lstm_backward"}  # sequences: test_rnn.py


def test_every_op_has_a_reference_twin_and_a_test():
    funcs = {name for name in ops.__all__ if callable(getattr(ops, name))}
    assert funcs == TESTED_OPS
    for name in funcs:
        assert callable(getattr(ref, name)), name
    assert ops.ACTIVATIONS == ref.ACTIVATIONS
    assert ops.LEAKY_RELU_SLOPE == ref.LEAKY_RELU_SLOPE == 0.01
    assert ops.ELU_ALPHA == ref.ELU_ALPHA == 1.0
    assert ops.NEEDS_Z == ref.NEEDS_Z == {"gelu", "gelu_tanh", "swish"}


# ---- GEMM ------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("trans_a, trans_b", TRANSPOSES)
@pytest.mark.parametrize("shape", GEMM_SHAPES)
def test_matmul(shape, trans_a, trans_b, dtype):
    rng = np.random.default_rng(sum(shape))
    a, b = matmul_operands(rng, *shape, dtype, trans_a, trans_b)
    run_both("matmul", lambda: (a, b, trans_a, trans_b), dtype, k=shape[2])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("trans_a, trans_b", TRANSPOSES)
@pytest.mark.parametrize("shape", LARGE_GEMM_SHAPES)
def test_matmul_large_two_threads(shape, trans_a, trans_b, dtype):
    rng = np.random.default_rng(1)
    a, b = matmul_operands(rng, *shape, dtype, trans_a, trans_b)
    with fusenn.threads(2):
        run_both("matmul", lambda: (a, b, trans_a, trans_b), dtype, k=shape[2])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("trans_a, trans_b", TRANSPOSES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_matmul_layouts(layout, trans_a, trans_b, dtype):
    rng = np.random.default_rng(2)
    a, b = matmul_operands(rng, 33, 17, 65, dtype, trans_a, trans_b, layout)
    run_both("matmul", lambda: (a, b, trans_a, trans_b), dtype, k=65)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(0, 5, 3), (4, 0, 3), (4, 5, 0), (0, 0, 0)],
                         ids=_mnk_id)
def test_matmul_zero_sized(shape, dtype):
    m, n, k = shape
    a, b = np.ones((m, k), dtype), np.ones((k, n), dtype)
    # Free a NaN block of the output's size just before: NumPy's small-block
    # cache hands it to the output, so a kernel that skips the store fails.
    junk = np.full((m, n), np.nan, dtype)
    del junk
    c = ops.matmul(a, b)
    assert c.shape == (m, n) and c.dtype == dtype
    np.testing.assert_array_equal(c, np.zeros((m, n), dtype))


def gemm_alpha_beta_case(rng, shape, alpha, beta, dtype, c_layout, nthreads):
    """Run c = alpha a b + beta c through the GEMM binding and compare. With
    beta = 0 the old C is all NaN, which must not reach the result."""
    m, n, k = shape
    a, b = matmul_operands(rng, m, n, k, dtype, False, False)
    c0 = np.full((m, n), np.nan, dtype) if beta == 0 else rand(rng, (m, n), dtype)
    c = as_layout(c0.copy(), c_layout)
    _kernels.gemm(alpha, a, b, beta, c, nthreads)
    want = alpha * (a.astype(np.float64) @ b.astype(np.float64))
    if beta != 0:
        want += beta * c0
    assert_close(c, want.astype(dtype), dtype, k + 1)


# m, n, k: small calls (one thread, B read in place) whose last column panel is
# partial (the masked edge kernel), with and without partial row tiles; a large
# call with edges on every side; few-row calls that take two threads (one row;
# five rows, split 4 + 1).
GEMM_ALPHA_BETA_SHAPES = [(13, 10, 33), (16, 40, 20), (37, 17, 65), (1, 1, 1), (130, 129, 90),
                          (1, 300, 1000), (5, 300, 300)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("c_layout", ["contiguous", "rows", "cols"])
@pytest.mark.parametrize("alpha, beta", [(1.0, 0.0), (0.5, 0.0), (-2.0, 1.0), (1.0, 0.25),
                                         (0.0, 0.5), (0.0, 0.0)])
@pytest.mark.parametrize("shape", GEMM_ALPHA_BETA_SHAPES, ids=_mnk_id)
@pytest.mark.parametrize("nthreads", [1, 2])
def test_gemm_alpha_beta(nthreads, shape, alpha, beta, c_layout, dtype):
    gemm_alpha_beta_case(np.random.default_rng(sum(shape)), shape, alpha, beta, dtype,
                         c_layout, nthreads)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(256, 300, 200), (48, 600, 300), (130, 257, 90),
                                   (130, 129, 90), (784, 256, 128), (800, 300, 70),
                                   (516, 300, 40), (100, 1000, 50), (600, 20, 100)],
                         ids=_mnk_id)
@pytest.mark.parametrize("trans_a", [False, True], ids=["N", "T"])
def test_matmul_bitwise_independent_of_threads(shape, dtype, trans_a):
    """(m, n, k), each with row-major and with transposed A; between them they
    take every multi-thread path:
    - A read in place, column slabs: one per thread (256 x 300, 800 x 300, ...),
      or about four panels each, handed out dynamically (n = 1000);
    - A read in place, row slabs: a transposed A taller than wide (130 x 129,
      784 x 256), or C much taller than wide (600 x 20, whose column panels are
      also too few for 3 threads);
    - a transposed A that is packed (n above the narrow-C threshold, which 257 /
      129 straddle): the column-split path with fewer row blocks than threads
      (48, 130, 256 rows), whole row blocks per thread (516 rows: 2 blocks; 800
      rows: 4 in float32, 3 in float64)."""
    rng = np.random.default_rng(3)
    a, b = matmul_operands(rng, *shape, dtype, trans_a, False)
    results = []
    for nt in THREAD_COUNTS:
        with fusenn.threads(nt):
            results.append(ops.matmul(a, b, trans_a=trans_a))
    for nt, c in zip(THREAD_COUNTS[1:], results[1:]):
        assert np.array_equal(c, results[0]), f"{nt} threads differ from 1 thread"
    assert_close(results[0], (a.T if trans_a else a) @ b, dtype, k=shape[2])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("trans_a", [False, True], ids=["N", "T"])
def test_matmul_bits_do_not_depend_on_the_register_tile(dtype, trans_a):
    """GEMM picks its register tile by shape (AVX-512: a 6x64 tile for large calls, 8x32
    below the one-thread threshold of 128 * 128 * 64 multiply-adds, 8x16 for narrow C).
    Every tile sums each element over k in the same order, so rows of a large product
    equal, bit for bit, the product of those rows alone (a small call, another tile)."""
    rng = np.random.default_rng(5)
    a, b = matmul_operands(rng, 200, 100, 300, dtype, trans_a, False)  # 6M multiply-adds
    full = ops.matmul(a, b, trans_a=trans_a)
    for rows in (slice(0, 8), slice(37, 40), slice(190, 200)):
        part = ops.matmul(a[:, rows] if trans_a else a[rows], b, trans_a=trans_a)
        assert np.array_equal(part, full[rows]), f"rows {rows} differ"
    narrow = ops.matmul(a, b[:, :10], trans_a=trans_a)
    assert np.array_equal(narrow, full[:, :10])


def _offset_copy(values, offset):
    """`values` copied into a flat buffer `offset` elements past its start: with
    offsets 0 .. 15 a few-row kernel meets rows of B at every position in a
    vector, aligned and not."""
    buf = np.empty(values.size + offset, values.dtype)
    view = buf[offset:].reshape(values.shape)
    view[...] = values
    return view


def few_rows_bits_check(rng, dtype):
    """Calls with 1 to 17 rows (the row tiles, rows split past the last whole
    tile, two threads from 256K multiply-adds) give, bit for bit, the rows of a
    140-row product (the large-call tile): row-major and transposed A and B,
    rows of B at every offset into a vector, and the fused bias + activation of
    dense_forward. k crosses a KC boundary (1024 for float32 on AVX2 and
    AVX-512, else 256). A transposed A that deep sums in 256-deep blocks of its
    own, so its rows are compared with the whole transposed product, on 1-3
    threads; but a compact one-row A^T is a contiguous row, and sums as one.
    Within one 1024-deep block, a transposed A has the bits of a contiguous one."""
    k = 1100 if dtype == np.float32 else 300
    for n in (256, 129):
        a, b = matmul_operands(rng, 140, n, k, dtype, False, False)
        full = ops.matmul(a, b)
        a_t = np.ascontiguousarray(a.T)
        full_at = ops.matmul(a_t, b, trans_a=True)
        for nt in (1, 2, 3):
            with fusenn.threads(nt):
                assert np.array_equal(ops.matmul(a_t, b, trans_a=True), full_at), (n, nt)
        shallow = slice(0, 1000)
        assert np.array_equal(ops.matmul(np.ascontiguousarray(a[:, shallow].T), b[shallow],
                                         trans_a=True),
                              ops.matmul(a[:, shallow], b[shallow])), (n, "shallow A^T")
        bias = rng.standard_normal(n).astype(dtype)
        dense = {act: ops.dense_forward(a, b, bias, act) for act in ("relu", "sigmoid")}
        bt = np.ascontiguousarray(b.T)
        for m in range(1, 18):
            rows = slice(7 * m, 8 * m)
            want = full[rows]
            for nt in (1, 2):
                with fusenn.threads(nt):
                    assert np.array_equal(ops.matmul(a[rows], b), want), (m, n, nt)
            at = np.ascontiguousarray(a[rows].T)
            want_at = want if m == 1 else full_at[rows]
            for nt in (1, 2):
                with fusenn.threads(nt):
                    assert np.array_equal(ops.matmul(at, b, trans_a=True), want_at), \
                        (m, n, nt, "A^T")
            assert np.array_equal(ops.matmul(a[rows], bt, trans_b=True), want), (m, n, "B^T")
            for act, y in dense.items():
                assert np.array_equal(ops.dense_forward(a[rows], b, bias, act), y[rows]), \
                    (m, n, act)
        for m in (1, 2, 4, 8):
            rows = slice(3, 3 + m)
            for offset in range(16):
                got = ops.matmul(a[rows], _offset_copy(b, offset))
                assert np.array_equal(got, full[rows]), (m, n, "offset", offset)


@pytest.mark.parametrize("dtype", DTYPES)
def test_few_rows_bits_match_the_large_call_tile(dtype):
    few_rows_bits_check(np.random.default_rng(6), dtype)


def _aligned_copy(values, offset=0):
    """`values` copied to `offset` elements past a 64-byte boundary."""
    step = 64 // values.itemsize
    buf = np.empty(values.size + 2 * step, values.dtype)
    start = (-buf.ctypes.data % 64) // values.itemsize + offset
    view = buf[start:start + values.size].reshape(values.shape)
    view[...] = values
    return view


def in_place_b_bits_check(rng, dtype):
    """One-thread calls of 17 to 128 rows and from 128 columns whose B has its
    rows on cache lines (the engine's weights) read B in place on the small
    calls' tile: the same bits as the rows of a 300-row product (the large-call
    tile), as two threads and as a B off a cache line (B packed), for matmul
    and the fused bias + activation of dense_forward; k crosses a KC boundary."""
    k = 1100 if dtype == np.float32 else 300
    for n in (128, 144, 256):  # rows of 64-byte multiples; 144: a partial last panel
        a, b = matmul_operands(rng, 300, n, k, dtype, False, False)
        bias = rng.standard_normal(n).astype(dtype)
        full = ops.matmul(a, b)
        relu = ops.dense_forward(a, b, bias, "relu")
        b_lines, b_off = _aligned_copy(b), _aligned_copy(b, 1)
        for m in (17, 33, 64, 100, 128, 129):
            rows = slice(300 - m, 300)
            for bb in (b_lines, b_off):
                for nt in (1, 2):
                    with fusenn.threads(nt):
                        assert np.array_equal(ops.matmul(a[rows], bb), full[rows]), (m, n, nt)
                        assert np.array_equal(ops.dense_forward(a[rows], bb, bias, "relu"),
                                              relu[rows]), (m, n, nt, "relu")
            # C = alpha A B + beta C and C += A B: the same bits on 1 and 2 threads too
            c0 = rng.standard_normal((m, n)).astype(dtype)
            for alpha, beta in ((0.5, 0.7), (1.0, 1.0), (1.0, 0.7), (0.5, 1.0)):
                outs = []
                for nt in (1, 2):
                    c = c0.copy()
                    _kernels.gemm(alpha, a[rows], b_lines, beta, c, nt)
                    outs.append(c)
                assert np.array_equal(outs[0], outs[1]), (m, n, alpha, beta)


@pytest.mark.parametrize("dtype", DTYPES)
def test_in_place_b_bits_match_two_threads(dtype):
    in_place_b_bits_check(np.random.default_rng(16), dtype)


def _cpu_isas():
    """GEMM ISA levels this CPU supports, as fusenn names them."""
    isas = ["generic"]
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return isas
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((set(line.split(":", 1)[1].split()) for line in f
                          if line.startswith("flags")), set())
    except OSError:
        return isas
    if {"avx2", "fma"} <= flags:
        isas.append("avx2")
        if "avx512f" in flags:
            isas.append("avx512")
    return isas


# Runs in a fresh interpreter with FUSENN_ISA set (read once per process). It
# imports this file for its helpers and checks matmul around the tile edges of
# every kernel (MR/NR up to 8/64: the small shapes reach the small-call tiles,
# the k = 300 ones the large-call tiles), across the KC boundaries (256, and
# 1024 for float32 on AVX2 and AVX-512), the fused bias + activation store of
# dense_forward, and alpha / beta; and count_nonfinite, also compiled per ISA.
_ISA_CHILD = textwrap.dedent("""
    import sys
    import numpy as np
    import fusenn
    from fusenn import ops, reference as ref
    sys.path.insert(0, sys.argv[2])
    from test_kernels import (GEMM_ALPHA_BETA_SHAPES, assert_close, dense_operands,
                              few_rows_bits_check, gemm_alpha_beta_case, in_place_b_bits_check,
                              matmul_operands, nonfinite_check)

    assert fusenn.gemm_isa() == sys.argv[1], (fusenn.gemm_isa(), sys.argv[1])
    rng = np.random.default_rng(4)
    edge = list(range(1, 26)) + [31, 32, 33, 63, 65, 97]  # 1 .. 3 MR + 1 of the 8-row tiles
    shapes = [(m, n, edge[(i * 3 + j) % len(edge)])
              for i, m in enumerate(edge) for j, n in enumerate(edge)]
    shapes += [(m, n, k) for m in (1, 8, 33) for n in (7, 32, 65) for k in (255, 256, 257)]
    shapes += [(m, n, k) for m in (3, 9) for n in (10, 65) for k in (1023, 1024, 1025)]
    shapes += [(300, 40, 20), (9, 2100, 20)]  # several MC / NC blocks
    shapes += [(m, n, 300) for m in (61, 66, 67) for n in (63, 129, 191)]  # large-call tiles
    # the few-row tiles (up to 128 columns wide), their edges and row splits
    shapes += [(m, n, 1 + 37 * m % 60) for m in range(1, 18) for n in (31, 127, 128, 129, 257)]
    for dtype in (np.float32, np.float64):
        for idx, (m, n, k) in enumerate(shapes):
            ta, tb = idx % 2 == 1, idx % 4 >= 2
            a, b = matmul_operands(rng, m, n, k, dtype, ta, tb)
            assert_close(ops.matmul(a, b, ta, tb), ref.matmul(a, b, ta, tb), dtype, k)
        for act in ref.ACTIVATIONS:
            for shape in [(13, 257, 33), (6, 5, 31), (1, 40, 200), (7, 60, 129)]:
                x, w, b, _, _ = dense_operands(rng, shape, dtype, act)
                assert_close(ops.dense_forward(x, w, b, act),
                             ref.dense_forward(x, w, b, act), dtype, shape[1])
        for shape in GEMM_ALPHA_BETA_SHAPES:
            for alpha, beta in [(0.5, 0.0), (-2.0, 1.0)]:
                for c_layout in ("contiguous", "cols"):
                    gemm_alpha_beta_case(rng, shape, alpha, beta, dtype, c_layout, 1)
        few_rows_bits_check(rng, dtype)
        nonfinite_check(rng, dtype)
        in_place_b_bits_check(rng, dtype)
        a, b = matmul_operands(rng, 200, 150, 260, dtype, False, False)
        outs = []
        for nt in (1, 2, 3):
            with fusenn.threads(nt):
                outs.append(ops.matmul(a, b))
        assert all(np.array_equal(o, outs[0]) for o in outs), "thread-dependent result"
        assert_close(outs[0], a @ b, dtype, 260)
    print("ok", fusenn.gemm_isa())
""")


def run_with_isa(isa, source):
    """Run `source` in a fresh interpreter with FUSENN_ISA=isa (read once per process),
    argv[1] the ISA and argv[2] this directory; skip where the CPU lacks the ISA.
    Returns its standard output."""
    if isa not in _cpu_isas():
        pytest.skip(f"CPU lacks {isa}")
    env = dict(os.environ, FUSENN_ISA=isa, SKBUILD_EDITABLE_VERBOSE="0")
    proc = subprocess.run([sys.executable, "-c", source, isa, str(Path(__file__).parent)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout


@pytest.mark.parametrize("isa", ["generic", "avx2", "avx512"])
def test_gemm_isa_paths(isa):
    assert run_with_isa(isa, _ISA_CHILD).split() == ["ok", isa]


# ---- activations -------------------------------------------------------------------------

def _act_k(activation, d):
    return d if activation == "softmax" else 1


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", ROW_SHAPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_activation_forward(activation, shape, dtype):
    """Also pins the Python name -> C enum mapping: each name must give its own math."""
    z = rand(np.random.default_rng(5), shape, dtype, scale=3.0)
    run_both("activation_forward", lambda: (z, activation), dtype, _act_k(activation, shape[1]))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", ROW_SHAPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_activation_backward(activation, shape, dtype):
    """z only where the activation needs it: the others must work without."""
    rng = np.random.default_rng(6)
    z = rand(rng, shape, dtype, scale=3.0)
    a = ref.activation_forward(z, activation)
    da = rand(rng, shape, dtype)
    z = z if activation in ref.NEEDS_Z else None
    run_both("activation_backward", lambda: (a, da, activation, z), dtype,
             _act_k(activation, shape[1]))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_activation_layouts(activation, layout, dtype):
    rng = np.random.default_rng(7)
    z = rand(rng, (17, 33), dtype, layout, scale=3.0)
    a = as_layout(ref.activation_forward(np.array(z), activation), layout)
    da = rand(rng, (17, 33), dtype, layout)
    k = _act_k(activation, 33)
    run_both("activation_forward", lambda: (z, activation), dtype, k)
    run_both("activation_backward", lambda: (a, da, activation, z), dtype, k)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_saturates_exactly(dtype):
    z = np.array([[-np.inf, -1000, 0, 1000, np.inf]], dtype)
    with np.errstate(all="raise"):
        a = ops.activation_forward(z, "sigmoid")
    np.testing.assert_array_equal(a, np.array([[0, 0, 0.5, 1, 1]], dtype))
    assert_close(a, ref.activation_forward(z, "sigmoid"), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_rows_sum_to_one(dtype):
    rng = np.random.default_rng(8)
    z = rand(rng, (40, 65), dtype, scale=5.0)
    z[::3] = np.where(rng.random((14, 65)) < 0.5, -1000, 1000).astype(dtype)
    z[1] = 1000  # all equal: uniform row
    a = ops.activation_forward(z, "softmax")
    assert np.all(np.isfinite(a)) and np.all(a >= 0)
    np.testing.assert_allclose(a.sum(axis=1), 1, rtol=0, atol=tolerance(dtype, 65))
    np.testing.assert_allclose(a[1], 1 / 65, rtol=tolerance(dtype, 65))
    assert_close(a, ref.activation_forward(z, "softmax"), dtype, 65)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation, slope", [("relu", 0.0), ("leaky_relu", 0.01)])
def test_relu_at_zero(activation, slope, dtype):
    s = dtype(slope)  # the kernels multiply by the slope rounded to the dtype
    z = np.array([[-0.0, 0.0, -2.0, 3.0]], dtype)
    a = ops.activation_forward(z, activation)
    np.testing.assert_array_equal(a, np.array([[0, 0, s * dtype(-2), 3]], dtype))
    # The derivative at 0 is taken as the negative side's (a > 0 is the test).
    da = np.array([[5, 5, 5, 5]], dtype)
    dz = ops.activation_backward(a, da, activation)
    np.testing.assert_array_equal(dz, np.array([[s * dtype(5)] * 3 + [5]], dtype))
    assert_close(dz, ref.activation_backward(a, da, activation), dtype)


# ---- dense layer ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", DENSE_SHAPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_dense_forward(activation, shape, dtype):
    x, w, b, _, _ = dense_operands(np.random.default_rng(9), shape, dtype, activation)
    k = shape[1] + (shape[2] if activation == "softmax" else 0)
    run_both("dense_forward", lambda: (x, w, b, activation), dtype, k)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("need_dx", [True, False], ids=["dx", "no_dx"])
@pytest.mark.parametrize("shape", DENSE_SHAPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_dense_backward(activation, shape, need_dx, dtype):
    x, w, b, y, dy = dense_operands(np.random.default_rng(10), shape, dtype, activation)
    z = pre_activation(x, w, b, activation)
    k = max(shape[0], shape[2])  # dw and db sum over n rows, dx over d_out
    got = run_both("dense_backward", lambda: (x, w, y, dy, activation, need_dx, z), dtype, k)
    assert (got[2] is None) == (not need_dx)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("activation", ["identity", "sigmoid", "softmax", "gelu_tanh"])
def test_dense_layouts(activation, layout, dtype):
    """Every matrix operand in the given layout (the bias vector: next test)."""
    shape = (17, 33, 7)
    x, w, b, y, dy = dense_operands(np.random.default_rng(11), shape, dtype, activation, layout)
    b = np.ascontiguousarray(b)
    z = pre_activation(x, w, b, activation, layout)
    run_both("dense_forward", lambda: (x, w, b, activation), dtype, 33 + 7)
    run_both("dense_backward", lambda: (x, w, y, dy, activation, True, z), dtype, 17)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["rows", "cols", "reversed", "readonly"])
@pytest.mark.parametrize("activation", ["identity", "relu", "softmax"])
def test_dense_forward_bias_layouts(activation, layout, dtype):
    """A strided or reversed bias view (b[::2], b[::3], b[::-1]); x, w contiguous."""
    x, w, b, _, _ = dense_operands(np.random.default_rng(11), (17, 33, 7), dtype, activation)
    b = as_layout(b, layout)
    run_both("dense_forward", lambda: (x, w, b, activation), dtype, 33 + 7)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_zero_inputs_gives_activated_bias(dtype):
    """d_in = 0 is GEMM's k = 0: y = act(b) on every row."""
    b = np.array([-1.0, 0.5, 2.0], dtype)
    y = ops.dense_forward(np.ones((4, 0), dtype), np.ones((0, 3), dtype), b, "relu")
    np.testing.assert_array_equal(y, np.tile(np.array([0, 0.5, 2.0], dtype), (4, 1)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ["relu", "softmax", "swish"])
def test_dense_bitwise_independent_of_threads(activation, dtype):
    """n=48 forward uses the column-split GEMM path with 3 threads; d_out > 64
    gives the bias gradient several column blocks."""
    x, w, b, y, dy = dense_operands(np.random.default_rng(12), (48, 300, 600), dtype, activation)
    z = pre_activation(x, w, b, activation)
    results = []
    for nt in THREAD_COUNTS:
        with fusenn.threads(nt):
            results.append((ops.dense_forward(x, w, b, activation),)
                           + ops.dense_backward(x, w, y, dy, activation, z=z))
    for res in results[1:]:
        for got, first in zip(res, results[0]):
            assert np.array_equal(got, first)
    assert_close(results[0][0], ref.dense_forward(x, w, b, activation), dtype, 300 + 600)


# ---- losses --------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", ROW_SHAPES)
@pytest.mark.parametrize("name", LOSSES)
def test_loss(name, shape, dtype):
    args = loss_operands(np.random.default_rng(13), name, shape, dtype)
    run_both(name, lambda: args, dtype, loss_k(name, shape))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", LOSSES)
def test_loss_layouts(name, layout, dtype):
    z, second = loss_operands(np.random.default_rng(14), name, (17, 33), dtype, layout)
    if name == "softmax_cross_entropy":  # labels: other int dtypes and strided views
        second = as_layout(second.astype(np.int32), "rows")
    run_both(name, lambda: (z, second), dtype, loss_k(name, (17, 33)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["softmax_cross_entropy", "sigmoid_binary_cross_entropy"])
def test_loss_extreme_logits(name, dtype):
    rng = np.random.default_rng(15)
    z, second = loss_operands(rng, name, (33, 10), dtype)
    z[:] = np.where(rng.random(z.shape) < 0.5, -1000, 1000)
    z[0] = 1000  # a row of ties
    with np.errstate(all="raise"):
        loss, p, dz = getattr(ops, name)(z, second)
    assert np.isfinite(loss) and np.all(np.isfinite(p)) and np.all(np.isfinite(dz))
    assert_close((loss, p, dz), getattr(ref, name)(z, second), dtype, 10)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", LOSSES)
def test_loss_bitwise_independent_of_threads(name, dtype):
    args = loss_operands(np.random.default_rng(16), name, (4000, 50), dtype)
    results = []
    for nt in THREAD_COUNTS:
        with fusenn.threads(nt):
            results.append(getattr(ops, name)(*args))
    for res in results[1:]:
        assert res[0] == results[0][0]
        for got, first in zip(res[1:], results[0][1:]):
            assert np.array_equal(got, first)
    assert_close(results[0], getattr(ref, name)(*args), dtype, loss_k(name, (4000, 50)))


@pytest.mark.parametrize("labels, error, match", [
    pytest.param([0, 1, 5], ValueError, r"\[0, 5\)", id="too_large"),
    pytest.param([0, -1, 2], ValueError, r"\[0, 5\)", id="negative"),
    pytest.param([0.0, 1.0, 2.0], TypeError, "labels", id="float"),
    pytest.param([True, False, True], TypeError, "labels", id="bool"),
    pytest.param([0, 1], ValueError, r"\(3,\)", id="too_short"),
    pytest.param([0, 1, 2, 3], ValueError, r"\(3,\)", id="too_long"),
    pytest.param([[0], [1], [2]], ValueError, r"\(3,\)", id="2d"),
])
def test_softmax_cross_entropy_label_validation(labels, error, match):
    with pytest.raises(error, match=match):
        ops.softmax_cross_entropy(np.zeros((3, 5)), np.array(labels))


# ---- optimizers --------------------------------------------------------------------------

def _optimizer_state(rng, shape, dtype, names, squares=True):
    """Random w, momentum / first moment m, and a non-negative second moment or
    accumulator v (unless squares is False: SGD's v is a momentum buffer, which
    may have any sign)."""
    state = {name: rand(rng, shape, dtype) for name in names}
    if squares and "v" in state:
        state["v"] = np.abs(state["v"])
    return state


def _run_optimizer_steps(name, shape, dtype, state_names, kwargs_for_step, steps=3,
                         g_layout="contiguous"):
    """Apply `steps` updates with ops and reference to copies of the same state
    and compare all state arrays after every step."""
    rng = np.random.default_rng(17)
    state = _optimizer_state(rng, shape, dtype, state_names, squares=name != "sgd_update")
    c_state = {k: v.copy() for k, v in state.items()}
    r_state = {k: v.copy() for k, v in state.items()}
    for t in range(1, steps + 1):
        g = rand(rng, shape, dtype, g_layout)
        kwargs = kwargs_for_step(t)
        c_bad = getattr(ops, name)(g=g, **c_state, **kwargs)
        r_bad = getattr(ref, name)(g=np.array(g), **r_state, **kwargs)
        assert c_bad == r_bad == 0
        for key in state_names:
            assert_close(c_state[key], r_state[key], dtype)
        assert not np.array_equal(c_state["w"], state["w"])


SGD_VARIANTS = [
    pytest.param(dict(momentum=0.0), id="plain"),
    pytest.param(dict(momentum=0.9), id="momentum"),
    pytest.param(dict(momentum=0.9, nesterov=True), id="nesterov"),
    pytest.param(dict(momentum=0.0, nesterov=True), id="nesterov_no_momentum"),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", FLAT_SHAPES)
@pytest.mark.parametrize("variant", SGD_VARIANTS)
def test_sgd_update(variant, shape, dtype):
    names = ("w", "v") if variant["momentum"] else ("w",)
    extra = {} if variant["momentum"] else {"v": None}
    _run_optimizer_steps("sgd_update", shape, dtype, names,
                         lambda t: dict(lr=0.05, **variant, **extra))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", FLAT_SHAPES)
def test_adam_update(shape, dtype):
    _run_optimizer_steps("adam_update", shape, dtype, ("w", "m", "v"),
                         lambda t: dict(t=t, lr=0.01, beta1=0.8, beta2=0.99, eps=1e-7))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", FLAT_SHAPES)
def test_adamw_update(shape, dtype):
    _run_optimizer_steps("adam_update", shape, dtype, ("w", "m", "v"),
                         lambda t: dict(t=t, lr=0.01, beta1=0.8, beta2=0.99, eps=1e-7,
                                        weight_decay=0.3))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", FLAT_SHAPES)
def test_rmsprop_update(shape, dtype):
    _run_optimizer_steps("rmsprop_update", shape, dtype, ("w", "v"),
                         lambda t: dict(lr=0.01, rho=0.8, eps=1e-6))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", FLAT_SHAPES)
def test_adagrad_update(shape, dtype):
    _run_optimizer_steps("adagrad_update", shape, dtype, ("w", "v"),
                         lambda t: dict(lr=0.05, eps=1e-9))


@pytest.mark.parametrize("backend", [ops, ref], ids=["c", "numpy"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_adamw_is_adam_on_decayed_weights(backend, dtype):
    """weight_decay first scales w by 1 - lr wd (PyTorch's AdamW), then Adam steps;
    weight_decay=0 is plain Adam, bitwise."""
    rng = np.random.default_rng(21)
    w, g, m = (rand(rng, (5, 6), dtype) for _ in range(3))
    v = np.abs(rand(rng, (5, 6), dtype))
    lr, wd = 0.1, 0.5
    decoupled = [a.copy() for a in (w, g, m, v)]
    backend.adam_update(*decoupled, 3, lr=lr, weight_decay=wd)
    by_hand = [w * dtype(1 - lr * wd), g.copy(), m.copy(), v.copy()]
    backend.adam_update(*by_hand, 3, lr=lr)
    assert_close(decoupled[0], by_hand[0], dtype)
    for got, want in zip(decoupled[1:], by_hand[1:]):  # the moments ignore the decay
        np.testing.assert_array_equal(got, want)
    plain, zero = [a.copy() for a in (w, g, m, v)], [a.copy() for a in (w, g, m, v)]
    backend.adam_update(*plain, 3, lr=lr)
    backend.adam_update(*zero, 3, lr=lr, weight_decay=0.0)
    assert not np.allclose(decoupled[0], plain[0], rtol=1e-3)
    for a, b in zip(plain, zero):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(0,), (1,), (7,), (33, 17), (3, 4, 5), (300, 301)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("layout", ["contiguous", "cols", "reversed", "fortran", "readonly"])
def test_sum_squares(shape, dtype, layout):
    rng = np.random.default_rng(22)
    x = rand(rng, shape, dtype, layout if len(shape) > 1 or layout == "readonly" else
             "contiguous")
    got = ops.sum_squares(x)
    want = ref.sum_squares(x)
    assert type(got) is float
    # accumulated in double from the values as they are: float64-accurate even for float32
    np.testing.assert_allclose(got, want, rtol=1e-13 * np.sqrt(max(x.size, 1)))
    assert got == pytest.approx(float(np.sum(np.asarray(x, np.float64) ** 2)), rel=1e-12)


def test_sum_squares_of_float32_is_exact_in_double():
    x = np.full(1000, 1e-3, np.float32) + np.float32(0)  # each x^2 needs more than float32
    assert ops.sum_squares(x) == pytest.approx(1000 * float(np.float32(1e-3)) ** 2, rel=1e-14)
    assert ops.sum_squares(np.float32([3e30, 4e30])) == pytest.approx(25e60, rel=1e-7)


GRAD_TRANSFORMS = [
    pytest.param(dict(l2=0.3), id="l2"),
    pytest.param(dict(scale=0.25), id="scale"),
    pytest.param(dict(clipvalue=0.5), id="clip"),
    pytest.param(dict(l2=0.3, scale=0.7, clipvalue=0.4), id="all"),
    pytest.param(dict(l2=0.0, scale=1.0, clipvalue=0.0), id="identity"),
    pytest.param(dict(clipvalue=-1.0), id="negative_clip_is_off"),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", FLAT_SHAPES)
@pytest.mark.parametrize("kwargs", GRAD_TRANSFORMS)
def test_grad_transform(kwargs, shape, dtype):
    rng = np.random.default_rng(23)
    g, w = rand(rng, shape, dtype), rand(rng, shape, dtype, "cols" if len(shape) > 1 else
                                         "contiguous")
    w_before = w.copy()
    got, want = g.copy(), g.copy()
    assert ops.grad_transform(got, w, **kwargs) is None
    ref.grad_transform(want, np.array(w), **kwargs)
    np.testing.assert_array_equal(w, w_before)
    assert_close(got, want, dtype)
    # the math, written out in float64
    expect = kwargs.get("scale", 1.0) * (g.astype(np.float64) + kwargs.get("l2", 0.0) * w)
    c = kwargs.get("clipvalue", 0.0)
    if c > 0:
        expect = np.clip(expect, -c, c)
        assert np.abs(got).max() <= c
    np.testing.assert_allclose(got, expect, rtol=4 * np.finfo(dtype).eps, atol=4e-7)


@pytest.mark.parametrize("backend", [ops, ref], ids=["c", "numpy"])
def test_grad_transform_without_w_and_with_non_finite_values(backend):
    g = np.array([np.nan, np.inf, -np.inf, 2.0, -3.0, 0.1])
    backend.grad_transform(g, None, scale=0.5, clipvalue=1.0)  # w unused when l2 == 0
    np.testing.assert_array_equal(g, [np.nan, 1.0, -1.0, 1.0, -1.0, 0.05])


def test_grad_transform_needs_w_for_l2():
    g = np.ones(3)
    with pytest.raises(ValueError, match=r"\bw\b"):
        ops.grad_transform(g, None, l2=0.1)
    np.testing.assert_array_equal(g, np.ones(3))


@pytest.mark.parametrize("dtype", DTYPES)
def test_new_optimizer_kernels_bitwise_independent_of_threads(dtype):
    n = 3 * 32768 + 5  # above the parallel threshold, not a multiple of anything
    rng = np.random.default_rng(24)
    w, g = rand(rng, (n,), dtype), rand(rng, (n,), dtype)
    v = np.abs(rand(rng, (n,), dtype))
    results = []
    for nt in THREAD_COUNTS:
        with fusenn.threads(nt):
            out = {"sum_squares": ops.sum_squares(g)}
            gt = g.copy()
            ops.grad_transform(gt, w, l2=0.1, scale=0.9, clipvalue=1.5)
            out["grad_transform"] = gt
            for name, call in [("rmsprop", lambda s: ops.rmsprop_update(*s, 0.01)),
                               ("adagrad", lambda s: ops.adagrad_update(*s, 0.01))]:
                state = [w.copy(), g, v.copy()]
                call(state)
                out[name] = state[0], state[2]
            state = [w.copy(), g, v.copy(), v.copy()]
            ops.adam_update(*state, 2, weight_decay=0.1)
            out["adamw"] = state[0], state[2], state[3]
        results.append(out)
    for other in results[1:]:
        assert other["sum_squares"] == results[0]["sum_squares"]
        for key in ("grad_transform", "rmsprop", "adagrad", "adamw"):
            np.testing.assert_array_equal(np.asarray(other[key]), np.asarray(results[0][key]))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", [lay for lay in LAYOUTS if lay != "contiguous"])
def test_optimizer_gradient_layouts(layout, dtype):
    """The gradient may be any view; the updated state must be C-contiguous."""
    _run_optimizer_steps("adam_update", (9, 13), dtype, ("w", "m", "v"),
                         lambda t: dict(t=t), steps=1, g_layout=layout)
    _run_optimizer_steps("sgd_update", (9, 13), dtype, ("w", "v"),
                         lambda t: dict(lr=0.1, momentum=0.9), steps=1, g_layout=layout)


# ---- input checks ---------------------------------------------------------------------------

def nonfinite_check(rng, dtype):
    """ops.count_nonfinite counts NaN and +-inf, not huge or subnormal values, at every
    position of a vector (rows of 1 to 40 values, and 784) and in strided rows, on 1
    and 2 threads (from 64K values)."""
    fi = np.finfo(dtype)
    for d in list(range(1, 41)) + [784]:
        x = rng.standard_normal((9, d)).astype(dtype)
        x[rng.random(x.shape) < 0.3] = fi.max
        x[rng.random(x.shape) < 0.2] = fi.smallest_subnormal
        for value in (np.nan, np.inf, -np.inf):
            x[rng.random(x.shape) < 0.1] = value
        want = int(np.count_nonzero(~np.isfinite(x)))
        assert ops.count_nonfinite(x) == want, d
        assert ops.count_nonfinite(x[::2]) == np.count_nonzero(~np.isfinite(x[::2])), d
    big = np.zeros((100, 784), dtype)
    big[[0, 50, 99], [783, 0, 400]] = (np.nan, np.inf, -np.inf)
    for nt in (1, 2):
        with fusenn.threads(nt):
            assert ops.count_nonfinite(big) == 3


@pytest.mark.parametrize("dtype", DTYPES)
def test_count_nonfinite(dtype):
    nonfinite_check(np.random.default_rng(19), dtype)


# ---- argument validation --------------------------------------------------------------------

def _valid_args(name, dtype=np.float64):
    """Small valid keyword arguments for ops.<name>."""
    rng = np.random.default_rng(18)
    m = lambda *shape: rand(rng, shape, dtype)  # noqa: E731
    return {
        "matmul": lambda: dict(a=m(3, 4), b=m(4, 5)),
        "activation_forward": lambda: dict(z=m(3, 4), activation="tanh"),
        "activation_backward": lambda: dict(a=m(3, 4), da=m(3, 4), activation="tanh",
                                            z=m(3, 4)),
        "dense_forward": lambda: dict(x=m(2, 4), w=m(4, 3), b=m(3), activation="relu"),
        "dense_backward": lambda: dict(x=m(2, 4), w=m(4, 3), y=m(2, 3), dy=m(2, 3),
                                       activation="relu", z=m(2, 3)),
        "softmax_cross_entropy": lambda: dict(z=m(3, 4), labels=np.array([0, 3, 1])),
        "sigmoid_binary_cross_entropy": lambda: dict(z=m(3, 4), t=m(3, 4)),
        "mse": lambda: dict(a=m(3, 4), t=m(3, 4)),
        "mae": lambda: dict(a=m(3, 4), t=m(3, 4)),
        "huber": lambda: dict(a=m(3, 4), t=m(3, 4), delta=0.5),
        "poisson": lambda: dict(a=m(3, 4), t=np.abs(m(3, 4))),
        "sgd_update": lambda: dict(w=m(3, 4), g=m(3, 4), v=m(3, 4), lr=0.1, momentum=0.9),
        "adam_update": lambda: dict(w=m(3, 4), g=m(3, 4), m=m(3, 4), v=m(3, 4), t=1),
        "dropout_forward": lambda: dict(x=m(3, 4), rate=0.5, seed=7),
        "dropout_backward": lambda: dict(dy=m(3, 4), rate=0.5, seed=7),
        "dropout_seed": lambda: dict(base=7, step=3),
        "batchnorm_forward_train": lambda: dict(x=m(3, 4), gamma=m(4), beta=m(4),
                                                running_mean=m(4), running_var=np.abs(m(4))),
        "batchnorm_forward_infer": lambda: dict(x=m(3, 4), gamma=m(4), beta=m(4),
                                                running_mean=m(4), running_var=np.abs(m(4))),
        "batchnorm_backward": lambda: dict(x=m(3, 4), dy=m(3, 4), gamma=m(4), mean=m(4),
                                           invstd=np.abs(m(4))),
        "rmsprop_update": lambda: dict(w=m(3, 4), g=m(3, 4), v=np.abs(m(3, 4)), lr=0.01),
        "adagrad_update": lambda: dict(w=m(3, 4), g=m(3, 4), v=np.abs(m(3, 4)), lr=0.01),
        "sum_squares": lambda: dict(x=m(3, 4)),
        "grad_transform": lambda: dict(g=m(3, 4), w=m(3, 4), l2=0.1, scale=0.5, clipvalue=1.0),
        "global_pool_forward": lambda: dict(x=m(3, 5, 4), mode="avg"),
        "global_pool_backward": lambda: dict(x=m(3, 5, 4), dy=m(3, 4), mode="max"),
        "conv2d_forward": lambda: dict(x=m(2, 5, 4, 3), w=m(3, 2, 3, 4), b=m(4),
                                       padding=((1, 1), (0, 1)), activation="gelu"),
        "conv2d_backward": lambda: dict(x=m(2, 5, 4, 3), w=m(3, 2, 3, 4), y=m(2, 3, 3, 4),
                                        dy=m(2, 3, 3, 4), z=m(2, 3, 3, 4), activation="gelu"),
        "pool2d_forward": lambda: dict(x=m(2, 5, 4, 3), mode="avg"),
        "pool2d_backward": lambda: dict(dy=m(2, 2, 2, 3), x_shape=(2, 5, 4, 3),
                                        argmax=np.zeros((2, 2, 2, 3), np.int64)),
        "embedding_forward": lambda: dict(x=np.array([[1, 0, 3], [2, 2, 1]]), table=m(4, 3)),
        "embedding_backward": lambda: dict(x=np.array([[1, 0, 3], [2, 2, 1]]), dy=m(2, 3, 3),
                                           table_shape=(4, 3)),
        "simple_rnn_forward": lambda: dict(x=m(2, 3, 4), kernel=m(4, 5),
                                           recurrent_kernel=m(5, 5), bias=m(5)),
        "simple_rnn_backward": lambda: dict(x=m(2, 3, 4), kernel=m(4, 5),
                                            recurrent_kernel=m(5, 5), bias=m(5), dy=m(2, 5)),
        "gru_forward": lambda: dict(x=m(2, 3, 4), kernel=m(4, 15), recurrent_kernel=m(5, 15),
                                    bias=m(2, 15)),
        "gru_backward": lambda: dict(x=m(2, 3, 4), kernel=m(4, 15), recurrent_kernel=m(5, 15),
                                     bias=m(2, 15), dy=m(2, 5)),
        "lstm_forward": lambda: dict(x=m(2, 3, 4), kernel=m(4, 20), recurrent_kernel=m(5, 20),
                                     bias=m(20)),
        "lstm_backward": lambda: dict(x=m(2, 3, 4), kernel=m(4, 20), recurrent_kernel=m(5, 20),
                                      bias=m(20), dy=m(2, 5)),
    }[name]()


ARRAY_ARGS = [pytest.param(op, arg, id=f"{op}-{arg}") for op, args in [
    ("matmul", "a b"), ("activation_forward", "z"), ("activation_backward", "a da z"),
    ("dense_forward", "x w b"), ("dense_backward", "x w y dy z"), ("softmax_cross_entropy", "z"),
    ("sigmoid_binary_cross_entropy", "z t"), ("mse", "a t"), ("mae", "a t"), ("huber", "a t"),
    ("poisson", "a t"),
    ("sgd_update", "w g v"),
    ("adam_update", "w g m v"), ("rmsprop_update", "w g v"), ("adagrad_update", "w g v"),
    ("sum_squares", "x"), ("grad_transform", "g w"), ("dropout_forward", "x"),
    ("dropout_backward", "dy"),
    ("batchnorm_forward_train", "x gamma beta running_mean running_var"),
    ("batchnorm_forward_infer", "x gamma beta running_mean running_var"),
    ("batchnorm_backward", "x dy gamma mean invstd"),
    ("global_pool_forward", "x"), ("global_pool_backward", "x dy"),
    ("conv2d_forward", "x w b"), ("conv2d_backward", "x w y dy z"), ("pool2d_forward", "x"),
    ("pool2d_backward", "dy"),
    ("embedding_forward", "table"), ("embedding_backward", "dy"),
    *[(f"{kind}_{way}", "x kernel recurrent_kernel bias" + (" dy" if way == "backward" else ""))
      for kind in ("simple_rnn", "gru", "lstm") for way in ("forward", "backward")],
] for arg in args.split()]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", sorted(TESTED_OPS))
def test_valid_args_are_accepted(op, dtype):
    """The baseline the validation tests below break one argument of."""
    getattr(ops, op)(**_valid_args(op, dtype))


@pytest.mark.parametrize("bad_dtype", [np.int64, np.float16], ids=["int64", "float16"])
@pytest.mark.parametrize("op, arg", ARRAY_ARGS)
def test_wrong_dtype_is_type_error_naming_the_argument(op, arg, bad_dtype):
    kwargs = _valid_args(op)
    kwargs[arg] = kwargs[arg].astype(bad_dtype)
    with pytest.raises(TypeError, match=rf"\b{arg}\b"):
        getattr(ops, op)(**kwargs)


@pytest.mark.parametrize("op, arg", [p for p in ARRAY_ARGS if p.values[0] not in
                                     ("activation_forward", "softmax_cross_entropy",
                                      "dropout_forward", "dropout_backward", "sum_squares",
                                      "global_pool_forward", "pool2d_forward",
                                      "pool2d_backward", "embedding_forward",
                                      "embedding_backward")])
def test_mixed_float_dtypes_is_type_error(op, arg):
    kwargs = _valid_args(op, np.float64)
    kwargs[arg] = kwargs[arg].astype(np.float32)
    with pytest.raises(TypeError, match="float"):
        getattr(ops, op)(**kwargs)


def _replace(op, **changes):
    """ops.<op> called with valid float64 arguments except `changes` (shapes)."""
    rng = np.random.default_rng(19)
    kwargs = _valid_args(op)
    kwargs.update({k: rand(rng, v, np.float64) for k, v in changes.items()})
    return lambda: getattr(ops, op)(**kwargs)


SHAPE_ERRORS = [
    pytest.param(_replace("matmul", a=(3,)), "2-D", id="matmul-a_1d"),
    pytest.param(_replace("matmul", b=(2, 4, 5)), "2-D", id="matmul-b_3d"),
    pytest.param(_replace("matmul", b=(5, 5)), "(3, 4)", id="matmul-inner"),
    pytest.param(_replace("activation_forward", z=(12,)), "2-D", id="act_fwd-z_1d"),
    pytest.param(_replace("activation_backward", da=(4, 3)), "(3, 4)", id="act_bwd-da"),
    pytest.param(_replace("activation_backward", z=(3, 5)), "(3, 4)", id="act_bwd-z"),
    pytest.param(_replace("activation_backward", z=(12,)), "2-D", id="act_bwd-z_1d"),
    pytest.param(_replace("dense_forward", x=(2, 4, 1)), "2-D", id="dense_fwd-x_3d"),
    pytest.param(_replace("dense_forward", w=(5, 3)), "(4, units)", id="dense_fwd-w"),
    pytest.param(_replace("dense_forward", b=(4,)), "(3,)", id="dense_fwd-b"),
    pytest.param(_replace("dense_forward", b=(1, 3)), "1-D", id="dense_fwd-b_2d"),
    pytest.param(_replace("dense_backward", w=(3, 3)), "(4, units)", id="dense_bwd-w"),
    pytest.param(_replace("dense_backward", y=(2, 4)), "(2, 3)", id="dense_bwd-y"),
    pytest.param(_replace("dense_backward", dy=(3, 3)), "(2, 3)", id="dense_bwd-dy"),
    pytest.param(_replace("dense_backward", z=(3, 2)), "(2, 3)", id="dense_bwd-z"),
    pytest.param(_replace("sigmoid_binary_cross_entropy", t=(3, 5)), "(3, 4)", id="bce-t"),
    pytest.param(_replace("softmax_cross_entropy", z=(4,)), "2-D", id="ce-z_1d"),
    pytest.param(_replace("mse", t=(4, 3)), "(3, 4)", id="mse-t"),
    pytest.param(_replace("mse", t=(3, 4, 1)), "2-D", id="mse-t_3d"),
    pytest.param(_replace("mae", t=(4, 3)), "(3, 4)", id="mae-t"),
    pytest.param(_replace("huber", a=(3,)), "2-D", id="huber-a_1d"),
    pytest.param(_replace("sgd_update", g=(4, 3)), "(3, 4)", id="sgd-g"),
    pytest.param(_replace("sgd_update", v=(12,)), "(3, 4)", id="sgd-v"),
    pytest.param(_replace("adam_update", g=(3, 5)), "(3, 4)", id="adam-g"),
    pytest.param(_replace("adam_update", m=(3, 5)), "(3, 4)", id="adam-m"),
    pytest.param(_replace("adam_update", v=(4, 3)), "(3, 4)", id="adam-v"),
    pytest.param(_replace("rmsprop_update", g=(4, 3)), "(3, 4)", id="rmsprop-g"),
    pytest.param(_replace("rmsprop_update", v=(12,)), "(3, 4)", id="rmsprop-v"),
    pytest.param(_replace("adagrad_update", v=(3, 5)), "(3, 4)", id="adagrad-v"),
    pytest.param(_replace("grad_transform", w=(4, 3)), "(3, 4)", id="grad_transform-w"),
    pytest.param(_replace("grad_transform", w=(12,)), "2-D", id="grad_transform-w_1d"),
]


@pytest.mark.parametrize("call, expected", SHAPE_ERRORS)
def test_wrong_shape_is_value_error_with_expected_shape(call, expected):
    with pytest.raises(ValueError, match=re.escape(expected)):
        call()


@pytest.mark.parametrize("op, arg", [("sgd_update", "w"), ("sgd_update", "v"),
                                     ("adam_update", "m"), ("adam_update", "v"),
                                     ("rmsprop_update", "v"), ("adagrad_update", "w"),
                                     ("grad_transform", "g")],
                         ids=lambda x: x)
@pytest.mark.parametrize("layout", ["rows", "fortran", "readonly"])
def test_optimizer_state_must_be_writable_c_contiguous(op, arg, layout):
    kwargs = _valid_args(op)
    kwargs[arg] = as_layout(kwargs[arg], layout)
    before = {k: np.array(v) for k, v in kwargs.items() if isinstance(v, np.ndarray)}
    with pytest.raises(ValueError, match=rf"\b{arg}\b"):
        getattr(ops, op)(**kwargs)
    for k, v in before.items():  # nothing was updated
        np.testing.assert_array_equal(kwargs[k], v)


@pytest.mark.parametrize("bad", ["mish", "RELU", "silu", "", None, 3], ids=repr)
@pytest.mark.parametrize("op", ["activation_forward", "activation_backward", "dense_forward",
                                "dense_backward"])
def test_unknown_activation_lists_allowed_names(op, bad):
    kwargs = _valid_args(op)
    kwargs["activation"] = bad
    with pytest.raises(ValueError) as info:
        getattr(ops, op)(**kwargs)
    for name in ACTIVATIONS:
        assert name in str(info.value)


@pytest.mark.parametrize("t", [0, -1])
def test_adam_step_must_be_positive(t):
    kwargs = _valid_args("adam_update")
    kwargs["t"] = t
    w = kwargs["w"].copy()
    with pytest.raises(ValueError, match=r"\bt\b.*>= 1"):
        ops.adam_update(**kwargs)
    np.testing.assert_array_equal(kwargs["w"], w)


@pytest.mark.parametrize("backend", [ops, ref], ids=["c", "numpy"])
@pytest.mark.parametrize("name", ["sgd", "sgd_momentum", "adam", "adamw", "rmsprop", "adagrad"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_optimizer_keeps_previous_weights_and_counts_overflow(backend, name, dtype):
    """prev (here aliasing g, as the model uses it) receives the weights from
    before the step, and the return value counts the non-finite new weights."""
    big = np.finfo(dtype).max
    w = np.array([1.0, -2.0, big, 3.0, -big], dtype=dtype)
    w0 = w.copy()
    g = np.array([0.5, 0.25, -big, 0.0, big], dtype=dtype)  # overflows elements 2 and 4
    state = np.zeros_like(w), np.zeros_like(w)
    with np.errstate(over="ignore", invalid="ignore"):
        if name in ("adam", "adamw"):
            decay = 0.01 if name == "adamw" else 0.0
            bad = backend.adam_update(w, g, *state, 1, lr=10.0, weight_decay=decay, prev=g)
        elif name == "rmsprop":
            bad = backend.rmsprop_update(w, g, state[0], 10.0, prev=g)
        elif name == "adagrad":
            bad = backend.adagrad_update(w, g, state[0], 10.0, prev=g)
        else:
            momentum = 0.9 if name == "sgd_momentum" else 0.0
            bad = backend.sgd_update(w, g, state[0], 10.0, momentum=momentum, prev=g)
    np.testing.assert_array_equal(g, w0)
    finite = np.isfinite(w)
    assert bad == np.count_nonzero(~finite)
    assert bad >= 1 and finite[[0, 1, 3]].all()
