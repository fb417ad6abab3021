"""Conv2D and 2-D pooling: the C layer kinds (csrc/layers/conv2d.c, pool2d.c) through
fusenn.ops against the NumPy reference, and in the training engine.

The reference itself is checked against naive loops; the ops against the reference
on odd sizes, strides, Keras "valid" and "same" pads and explicit ones, dilation,
1x1 kernels and kernels as large as the padded input, 1 channel and many, batch 1,
every activation (those that need z too) and no bias, forward and backward, in
float32 and float64; the same bits on 1, 2 and 3 threads; float64 finite
differences; argument validation. In the engine: small CNNs train bitwise as the
op-by-op path does, close to the NumPy backend, with no allocation per step.
"""

import itertools

import numpy as np
import pytest

import fusenn
from fusenn import _kernels, ops
from fusenn import reference as ref
from fusenn.layers import window_padding
from fusenn.optimizers import SGD
from test_kernels import DTYPES, THREAD_COUNTS, as_layout, assert_close


def pads(mode, hw, kernel, strides, dilation=(1, 1)):
    """Keras's pads for "valid" / "same", or explicit ((top, bottom), (left, right))."""
    if isinstance(mode, str):
        return window_padding(mode, hw, kernel, strides, dilation)
    return mode


# name -> (x shape (n, H, W, Cin), kernel (kh, kw, filters), strides, padding, dilation)
CONV_CASES = {
    "1x1": ((2, 5, 7, 3), (1, 1, 4), (1, 1), "valid", (1, 1)),
    "1x1-stride2": ((2, 7, 6, 3), (1, 1, 5), (2, 2), "valid", (1, 1)),
    "1x1-padded": ((2, 4, 3, 2), (1, 1, 3), (1, 1), ((1, 0), (0, 2)), (1, 1)),
    # padded only bottom and right: the output is larger than the image, so its rows
    # are not the image's (both once read the image itself as the patches)
    "1x1-padded-bottom-right": ((2, 5, 4, 3), (1, 1, 4), (1, 1), ((0, 2), (0, 1)), (1, 1)),
    "1x1-cin1-padded-right": ((2, 5, 4, 1), (1, 1, 20), (1, 1), ((0, 0), (0, 2)), (1, 1)),
    "3x3-same": ((3, 9, 8, 4), (3, 3, 5), (1, 1), "same", (1, 1)),
    "5x5-same-cin1": ((2, 12, 11, 1), (5, 5, 6), (1, 1), "same", (1, 1)),
    "valid-odd": ((2, 13, 9, 6), (5, 3, 7), (1, 1), "valid", (1, 1)),
    "stride2-same": ((2, 9, 10, 3), (3, 3, 4), (2, 2), "same", (1, 1)),
    "stride3x2-pads": ((2, 11, 10, 2), (3, 2, 3), (3, 2), ((2, 1), (0, 2)), (1, 1)),
    "dilation2-same": ((2, 12, 11, 3), (3, 3, 4), (1, 1), "same", (2, 2)),
    "dilation-stride": ((2, 13, 12, 2), (3, 2, 3), (2, 1), ((1, 0), (2, 1)), (2, 3)),
    "kernel-is-input": ((2, 5, 6, 3), (5, 6, 4), (1, 1), "valid", (1, 1)),
    "kernel-is-padded-input": ((2, 3, 4, 2), (5, 6, 3), (1, 1), ((1, 1), (1, 1)), (1, 1)),
    "pads-beyond-kernel": ((1, 4, 4, 2), (2, 2, 3), (1, 1), ((3, 2), (1, 3)), (1, 1)),
    "batch1-many-channels": ((1, 6, 6, 40), (3, 3, 33), (1, 1), "same", (1, 1)),
    "wide-filters": ((3, 10, 10, 17), (3, 3, 70), (1, 1), "valid", (1, 1)),
    "1xN": ((2, 1, 9, 3), (1, 4, 2), (1, 2), "valid", (1, 1)),
    "cin1-stride-dilation": ((2, 11, 12, 1), (3, 2, 3), (2, 3), ((2, 0), (1, 3)), (2, 2)),
    "cin1-pads-beyond-kernel": ((2, 5, 4, 1), (2, 3, 2), (1, 1), ((3, 1), (4, 2)), (1, 1)),
    "cin1-12-filters": ((3, 9, 10, 1), (3, 4, 12), (1, 1), "same", (1, 1)),
    "cin1-tall-stride-dilated": ((2, 13, 11, 1), (3, 3, 5), (2, 1), ((1, 2), (3, 0)), (2, 2)),
    "one-filter-many-channels": ((2, 7, 6, 20), (3, 3, 1), (1, 1), "same", (1, 2)),
}


def conv_operands(rng, case, dtype, bias=True):
    xs, (kh, kw, f), strides, padding, dilation = CONV_CASES[case]
    x = rng.standard_normal(xs).astype(dtype)
    w = (rng.standard_normal((kh, kw, xs[3], f)) / np.sqrt(kh * kw * xs[3])).astype(dtype)
    b = rng.standard_normal(f).astype(dtype) if bias else None
    window = dict(strides=strides, padding=pads(padding, xs[1:3], (kh, kw), strides, dilation),
                  dilation=dilation)
    return x, w, b, window


def conv_k(x, w):
    return w.shape[0] * w.shape[1] * w.shape[2]


# ---- the reference against naive loops ---------------------------------------------------

def naive_conv(x, w, b, s, p, d):
    n, H, W, _ = x.shape
    KH, KW, _, CO = w.shape
    OH = ref.conv2d_output_size(H, KH, s[0], p[0], d[0])
    OW = ref.conv2d_output_size(W, KW, s[1], p[1], d[1])
    y = np.zeros((n, OH, OW, CO))
    for i, oh, ow in itertools.product(range(n), range(OH), range(OW)):
        acc = b.copy()
        for kh, kw in itertools.product(range(KH), range(KW)):
            h, v = oh * s[0] + kh * d[0] - p[0][0], ow * s[1] + kw * d[1] - p[1][0]
            if 0 <= h < H and 0 <= v < W:
                acc += x[i, h, v, :] @ w[kh, kw]
        y[i, oh, ow] = acc
    return y


@pytest.mark.parametrize("trial", range(20))
def test_reference_is_the_naive_loop_and_its_finite_difference(trial):
    """The NumPy twins against loops over every output (conv, max and avg pooling) and
    their backward passes against central differences of sum(y * g)."""
    rng = np.random.default_rng(trial)
    while True:  # a window that fits
        H, W, C, CO = (int(v) for v in rng.integers(1, 8, 4))
        KH, KW = (int(v) for v in rng.integers(1, 4, 2))
        s = tuple(int(v) for v in rng.integers(1, 3, 2))
        d = tuple(int(v) for v in rng.integers(1, 3, 2))
        p = tuple((int(rng.integers(0, 3)), int(rng.integers(0, 3))) for _ in range(2))
        if all(ref.conv2d_output_size(*a) >= 1 for a in zip((H, W), (KH, KW), s, p, d)):
            break
    x, w, b = rng.standard_normal((2, H, W, C)), rng.standard_normal((KH, KW, C, CO)), \
        rng.standard_normal(CO)
    y = ref.conv2d_forward(x, w, b, s, p, d)
    np.testing.assert_allclose(y, naive_conv(x, w, b, s, p, d), rtol=1e-12, atol=1e-12)
    g = rng.standard_normal(y.shape)
    dw, db, dx = ref.conv2d_backward(x, w, y, g, s, p, d)
    eps = 1e-6
    for arr, grad in ((x, dx), (w, dw)):
        idx = tuple(int(rng.integers(0, sz)) for sz in arr.shape)
        old = arr[idx]
        arr[idx] = old + eps
        lp = (ref.conv2d_forward(x, w, b, s, p, d) * g).sum()
        arr[idx] = old - eps
        lm = (ref.conv2d_forward(x, w, b, s, p, d) * g).sum()
        arr[idx] = old
        assert abs((lp - lm) / (2 * eps) - grad[idx]) < 1e-6
    np.testing.assert_allclose(db, g.sum(axis=(0, 1, 2)))
    ph, pw = (int(v) for v in rng.integers(1, 4, 2))
    pp = ((int(rng.integers(0, ph)), int(rng.integers(0, ph))),
          (int(rng.integers(0, pw)), int(rng.integers(0, pw))))
    if any(ref.conv2d_output_size(*a, 1) < 1 for a in zip((H, W), (ph, pw), s, pp)):
        return
    for mode in ("max", "avg"):
        y, a = ref.pool2d_forward(x, (ph, pw), s, pp, mode)
        for oh, ow in itertools.product(range(y.shape[1]), range(y.shape[2])):
            hs = [h for h in range(oh * s[0] - pp[0][0], oh * s[0] - pp[0][0] + ph) if 0 <= h < H]
            ws = [v for v in range(ow * s[1] - pp[1][0], ow * s[1] - pp[1][0] + pw) if 0 <= v < W]
            win = x[:, hs][:, :, ws]
            want = win.max(axis=(1, 2)) if mode == "max" else win.mean(axis=(1, 2))
            np.testing.assert_allclose(y[:, oh, ow], want, rtol=1e-12)
        g = rng.standard_normal(y.shape)
        dx = ref.pool2d_backward(g, x.shape, a, (ph, pw), s, pp, mode)
        idx = tuple(int(rng.integers(0, sz)) for sz in x.shape)
        old = x[idx]
        x[idx] = old + eps
        lp = (ref.pool2d_forward(x, (ph, pw), s, pp, mode)[0] * g).sum()
        x[idx] = old - eps
        lm = (ref.pool2d_forward(x, (ph, pw), s, pp, mode)[0] * g).sum()
        x[idx] = old
        assert abs((lp - lm) / (2 * eps) - dx[idx]) < 1e-6


# ---- conv2d against the reference --------------------------------------------------------

def check_conv(x, w, b, window, activation, dtype, need_dx=True):
    """ops.conv2d_forward / _backward against the reference on the same operands."""
    inputs = [a.copy() for a in (x, w)]
    y = ops.conv2d_forward(x, w, b, activation=activation, **window)
    want_y = ref.conv2d_forward(x, w, b, activation=activation, **window)
    k = conv_k(x, w)
    assert_close(y, want_y, dtype, k)
    z = ref.conv2d_forward(x, w, b, **window) if activation in ops.NEEDS_Z else None
    dy = np.random.default_rng(3).standard_normal(y.shape).astype(dtype)
    got = ops.conv2d_backward(x, w, want_y, dy, activation=activation, need_dx=need_dx, z=z,
                              bias=b is not None, **window)
    want = ref.conv2d_backward(x, w, want_y, dy, activation=activation, need_dx=need_dx, z=z,
                               bias=b is not None, **window)
    # dW and db sum over every output position of every sample
    assert_close(got[:2], want[:2], dtype, y.shape[0] * y.shape[1] * y.shape[2])
    assert_close(got[2], want[2], dtype, k)
    for before, after in zip(inputs, (x, w)):
        np.testing.assert_array_equal(before, after)
    return got


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d(case, dtype):
    x, w, b, window = conv_operands(np.random.default_rng(len(case)), case, dtype)
    check_conv(x, w, b, window, "identity", dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ops.ACTIVATIONS)
def test_conv2d_activations(activation, dtype):
    x, w, b, window = conv_operands(np.random.default_rng(4), "stride3x2-pads", dtype)
    check_conv(x, w, b, window, activation, dtype)
    x, w, b, window = conv_operands(np.random.default_rng(5), "3x3-same", dtype)
    check_conv(x, w, b, window, activation, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", ["3x3-same", "stride2-same", "1x1"])
def test_conv2d_without_bias_or_input_gradient(case, dtype):
    x, w, _, window = conv_operands(np.random.default_rng(6), case, dtype, bias=False)
    dw, db, dx = check_conv(x, w, None, window, "relu", dtype, need_dx=False)
    assert db is None and dx is None


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv2d_non_contiguous_operands(dtype):
    x, w, b, window = conv_operands(np.random.default_rng(7), "dilation-stride", dtype)
    check_conv(as_layout(x, "rows"), as_layout(w, "reversed"), as_layout(b, "cols"), window,
               "tanh", dtype)


def random_geometry(rng):
    """A random convolution: 1-3 samples, images up to 13x13, 1-40 channels, kernels up
    to 5x5, strides and dilations up to 2, each side padded 0-6 (past the kernel too);
    the special cases (a side 1, stride 1, no padding) each half the time."""
    def pick(low, high):
        return 1 if low == 1 and rng.random() < 0.5 else int(rng.integers(low, high))
    while True:
        kh, kw = pick(1, 6), pick(1, 6)
        strides = (pick(1, 3),) * 2 if rng.random() < 0.5 else (pick(1, 3), pick(1, 3))
        dilation = (pick(1, 3), pick(1, 3))
        h, w = pick(1, 14), pick(1, 14)
        padding = tuple(tuple(0 if rng.random() < 0.5 else int(rng.integers(1, 7))
                              for _ in range(2)) for _ in range(2))
        if all(ref.conv2d_output_size(*a) >= 1 for a in
               zip((h, w), (kh, kw), strides, padding, dilation)):
            cin = int(rng.choice([1, 2, 3, 5, 8, 17, 40]))
            return ((int(rng.integers(1, 4)), h, w, cin), (kh, kw, int(rng.integers(1, 40))),
                    dict(strides=strides, padding=padding, dilation=dilation))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", range(4))
def test_conv2d_random_geometries_against_the_reference(seed, dtype):
    """Forward, dW, db and dX of 40 random geometries per seed against the reference:
    every path (in place, by pointer, im2col, im2row, the direct kernels) on shapes no
    one chose. A 1x1 kernel padded only below or right once came out wrong here."""
    rng = np.random.default_rng(100 + seed)
    for _ in range(40):
        xs, (kh, kw, f), window = random_geometry(rng)
        x = rng.standard_normal(xs).astype(dtype)
        w = (rng.standard_normal((kh, kw, xs[3], f)) / np.sqrt(kh * kw * xs[3])).astype(dtype)
        check_conv(x, w, rng.standard_normal(f).astype(dtype), window, "relu", dtype)


# Convolutions whose GEMMs read the patches in the image by tap pointers (two channels
# or more) rather than from an im2col copy.
BY_POINTER_CASES = {
    "2-channels-5x5-valid": ((2, 9, 8, 2), (5, 5, 6), (1, 1), "valid", (1, 1)),
    # 6 filters: fewer than a 64-byte vector, so not Winograd's in float64 either
    "3x3-same-8": ((3, 9, 8, 8), (3, 3, 6), (1, 1), "same", (1, 1)),
    "5x3-valid-many": ((2, 9, 11, 40), (5, 3, 33), (1, 1), "valid", (1, 1)),
    "dilated-pads-wide": ((2, 10, 9, 17), (3, 2, 70), (1, 1), ((2, 1), (0, 3)), (2, 3)),
    "stride2-same": ((2, 11, 10, 12), (3, 3, 9), (2, 2), "same", (1, 1)),
    "long-taps": ((1, 6, 5, 300), (2, 2, 20), (1, 1), "same", (1, 1)),  # k past one kc block
    "more-than-64-taps": ((2, 10, 9, 8), (9, 8, 5), (1, 1), "same", (1, 1)),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", BY_POINTER_CASES)
def test_conv2d_by_pointer_is_bitwise_the_patch_matrix_product(case, dtype):
    """The forward and the stride-1 input gradient sum each output over the same taps in
    the same order as the GEMM of the patch matrix (fusenn.matmul on the reference's
    im2col), so their bits are that product's, bias and relu added after it."""
    xs, (kh, kw, f), strides, padding, dilation = BY_POINTER_CASES[case]
    rng = np.random.default_rng(11)
    x = rng.standard_normal(xs).astype(dtype)
    w = (rng.standard_normal((kh, kw, xs[3], f)) / np.sqrt(kh * kw * xs[3])).astype(dtype)
    b = rng.standard_normal(f).astype(dtype)
    pad = pads(padding, xs[1:3], (kh, kw), strides, dilation)
    y = ops.conv2d_forward(x, w, b, strides, pad, dilation, activation="relu")
    cols = ref._im2col(x, (kh, kw), strides, pad, dilation)
    z = fusenn.matmul(cols.reshape(-1, kh * kw * xs[3]), w.reshape(-1, f)) + b
    assert np.array_equal(y, np.maximum(z, 0).reshape(y.shape))
    for layout in ("rows", "reversed"):  # samples apart in a NaN-filled parent; any strides
        got = ops.conv2d_forward(as_layout(x, layout), as_layout(w, layout), b, strides, pad,
                                 dilation, activation="relu")
        assert np.array_equal(got, y), layout
    if strides != (1, 1) or xs[3] * x.itemsize < 64:  # dx by dZ W^T and col2im instead
        return
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = ops.conv2d_backward(x, w, y, dy, strides, pad, dilation)[2]
    # dx: a stride-1 convolution of dy, padded so that it has x's size, by the kernel
    # flipped with its channels swapped
    span = [d * (k - 1) for d, k in zip(dilation, (kh, kw))]
    back = tuple((s - p[0], xs[a + 1] - y.shape[a + 1] + p[0]) for a, (s, p) in
                 enumerate(zip(span, pad)))
    dcols = ref._im2col(dy, (kh, kw), (1, 1), back, dilation)
    flipped = w[::-1, ::-1].transpose(0, 1, 3, 2).reshape(-1, xs[3])
    want = fusenn.matmul(dcols.reshape(-1, kh * kw * f), np.ascontiguousarray(flipped))
    assert np.array_equal(dx, want.reshape(dx.shape))


# Winograd's F(2x2, 3x3) (csrc/layers/conv2d_winograd.h) computes the forward and dW (relu
# or no activation) and the stride-1 input gradient (any activation) of 3x3, stride-1,
# undilated convolutions with a 64-byte vector of channels in and out: 16 values in
# float32, 8 in float64. name -> (x shape, filters, padding)
WINOGRAD_CASES = {
    "same-even": ((2, 8, 6, 16), 16, "same"),
    "same-odd": ((3, 7, 9, 17), 20, "same"),  # partial tiles; channels past a vector
    "valid-odd": ((2, 9, 7, 33), 16, "valid"),
    "asymmetric-pads": ((1, 5, 6, 16), 24, ((0, 2), (1, 0))),
    "pads-past-kernel": ((1, 6, 5, 16), 16, ((3, 1), (0, 4))),  # dX's window starts inside
    "one-output": ((1, 3, 3, 16), 16, "valid"),
    "one-pixel-same": ((2, 1, 1, 16), 16, "same"),
    "vgg-conv2": ((2, 28, 28, 32), 32, "same"),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("activation", ["relu", "identity", "tanh"])
@pytest.mark.parametrize("case", WINOGRAD_CASES)
def test_conv2d_winograd_against_the_reference(case, activation, bias, dtype):
    """The forward, dW, db and dX against the reference; and what takes Winograd's
    transforms (the forward and dW with relu or none, dX always) is not the bits of the
    patch GEMM (fusenn.matmul on the reference's im2col), so these cases really take
    them. With tanh the forward and dW keep the patch GEMM and dX, by Winograd, reads the
    dZ that dW wrote."""
    xs, f, padding = WINOGRAD_CASES[case]
    rng = np.random.default_rng(21)
    x = rng.standard_normal(xs).astype(dtype)
    w = (rng.standard_normal((3, 3, xs[3], f)) / np.sqrt(9 * xs[3])).astype(dtype)
    b = rng.standard_normal(f).astype(dtype) if bias else None
    pad = pads(padding, xs[1:3], (3, 3), (1, 1))
    dw, db, dx = check_conv(x, w, b, dict(padding=pad), activation, dtype)
    y = ops.conv2d_forward(x, w, b, padding=pad, activation=activation)
    cols = ref._im2col(x, (3, 3), (1, 1), pad, (1, 1)).reshape(-1, 9 * xs[3])
    gemm = fusenn.matmul(cols, w.reshape(-1, f)).reshape(y.shape) + (0 if b is None else b)
    dz = np.random.default_rng(3).standard_normal(y.shape).astype(dtype)  # check_conv's dy
    if activation == "relu":
        gemm = np.maximum(gemm, 0)
        dz = dz * (ref.conv2d_forward(x, w, b, padding=pad, activation="relu") > 0)
    # a 1x1 image reads only the centre tap: a product and zeros, exact either way; the
    # patch path's dW is one product only while its rows fit one chunk (432 rows here)
    if xs[1] * xs[2] > 1 and activation != "tanh":
        assert not np.array_equal(y, gemm)
        if y.shape[0] * y.shape[1] * y.shape[2] <= 432:
            assert not np.array_equal(dw, fusenn.matmul(np.ascontiguousarray(cols.T),
                                                        dz.reshape(-1, f)).reshape(dw.shape))
    back = tuple((2 - p[0], xs[a + 1] - y.shape[a + 1] + p[0]) for a, p in enumerate(pad))
    if min(min(p) for p in back) < 0:  # dX's window starts inside dy: check_conv covers it
        return
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = ops.conv2d_backward(x, w, y, dy, padding=pad, activation="identity", bias=bias)[2]
    dcols = ref._im2col(dy, (3, 3), (1, 1), back, (1, 1)).reshape(-1, 9 * f)
    flipped = np.ascontiguousarray(w[::-1, ::-1].transpose(0, 1, 3, 2).reshape(-1, xs[3]))
    gemm_dx = fusenn.matmul(dcols, flipped).reshape(dx.shape)
    assert_close(dx, gemm_dx, dtype, 9 * f)
    if xs[1] * xs[2] > 1:
        assert not np.array_equal(dx, gemm_dx)


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv2d_winograd_non_contiguous_operands(dtype):
    """Strided x, kernel, bias, y and dy give the contiguous operands' bits."""
    rng = np.random.default_rng(23)
    x = rng.standard_normal((3, 7, 9, 17)).astype(dtype)
    w = (rng.standard_normal((3, 3, 17, 20)) / 12).astype(dtype)
    b = rng.standard_normal(20).astype(dtype)
    window = dict(padding=((1, 1), (1, 1)))
    y = ops.conv2d_forward(x, w, b, activation="relu", **window)
    dy = rng.standard_normal(y.shape).astype(dtype)
    want = ops.conv2d_backward(x, w, y, dy, activation="relu", **window)
    for layout in ("rows", "reversed"):
        got_y = ops.conv2d_forward(as_layout(x, layout), as_layout(w, layout),
                                   as_layout(b, "cols"), activation="relu", **window)
        assert np.array_equal(got_y, y), layout
        got = ops.conv2d_backward(as_layout(x, layout), as_layout(w, layout),
                                  as_layout(y, layout), as_layout(dy, layout),
                                  activation="relu", **window)
        for g, w_ in zip(got, want):
            assert np.array_equal(g, w_), layout


def test_conv2d_winograd_gradients_are_finite_differences():
    """float64, 8 channels in and out: Winograd's forward, dW and input gradient."""
    rng = np.random.default_rng(22)
    x = rng.standard_normal((1, 5, 4, 8))
    w = rng.standard_normal((3, 3, 8, 8)) / 8
    b = rng.standard_normal(8)
    window = dict(padding=((1, 1), (1, 1)))
    g = rng.standard_normal((1, 5, 4, 8))

    def loss():
        return float((ops.conv2d_forward(x, w, b, **window) * g).sum())

    y = ops.conv2d_forward(x, w, b, **window)
    dw, db, dx = ops.conv2d_backward(x, w, y, g, **window)
    for name, arr, grad in (("x", x, dx), ("w", w, dw), ("b", b, db)):
        np.testing.assert_allclose(grad, central_difference(loss, arr), rtol=1e-6, atol=1e-8,
                                   err_msg=f"gradient of {name}")


# (input height, width, kernel, strides, padding): 42 output rows (2x2: a 3x3 kernel with
# a vector of filters takes Winograd's dW); and a 1x1 kernel at stride 2 over 85 x 47,
# 1032 rows, the deepest chunk, past a 1024-deep kc block
BY_POINTER_DW = {"2x2-same-42-rows": (6, 7, 2, 1, "same"),
                 "1x1-stride2-1032-rows": (85, 47, 1, 2, "valid")}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("filters", [8, 16, 24])
@pytest.mark.parametrize("case", BY_POINTER_DW)
def test_conv2d_weight_gradient_by_pointer_is_bitwise_the_patch_matrix_product(case, filters,
                                                                               dtype):
    """dW as dZ^T patches with the patches read in the image (32 channels, filters a
    multiple of 8 and fewer than 64): each product and each sum as in patches^T dZ,
    in the same kc blocks. Both cases' output rows fit one chunk, so dW is that one
    product."""
    h, w_, k, st, padding = BY_POINTER_DW[case]
    rng = np.random.default_rng(12)
    x = rng.standard_normal((1, h, w_, 32)).astype(dtype)
    w = (rng.standard_normal((k, k, 32, filters)) / 17).astype(dtype)
    pad = pads(padding, (h, w_), (k, k), (st, st))
    y = ops.conv2d_forward(x, w, None, strides=(st, st), padding=pad)
    rows = y.shape[1] * y.shape[2]
    dy = rng.standard_normal(y.shape).astype(dtype)
    dw = ops.conv2d_backward(x, w, y, dy, strides=(st, st), padding=pad, need_dx=False,
                             bias=False)[0]
    cols = ref._im2col(x, (k, k), (st, st), pad, (1, 1)).reshape(rows, -1)
    want = fusenn.matmul(cols.T, dy.reshape(rows, filters))
    assert np.array_equal(dw, want.reshape(dw.shape))


# shapes whose GEMMs, dW groups and input gradients run on several threads
THREADED_CONVS = {
    "3x3-same": ((8, 28, 28, 8), (3, 3, 16), (1, 1), "same", (1, 1)),
    "3x3-same-32": ((8, 28, 28, 32), (3, 3, 32), (1, 1), "same", (1, 1)),  # Winograd
    "5x5-cin1": ((16, 28, 28, 1), (5, 5, 6), (1, 1), "same", (1, 1)),
    "3x3-cin1-12-filters": ((16, 27, 26, 1), (3, 3, 12), (1, 1), "valid", (1, 1)),
    "stride2": ((6, 21, 21, 8), (3, 3, 32), (2, 2), "valid", (1, 1)),
    "1x1": ((4, 16, 16, 32), (1, 1, 48), (1, 1), "valid", (1, 1)),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", THREADED_CONVS)
def test_conv2d_bitwise_independent_of_threads(case, dtype):
    xs, (kh, kw, f), strides, padding, dilation = THREADED_CONVS[case]
    rng = np.random.default_rng(9)
    x = rng.standard_normal(xs).astype(dtype)
    w = (rng.standard_normal((kh, kw, xs[3], f)) / np.sqrt(kh * kw * xs[3])).astype(dtype)
    b = rng.standard_normal(f).astype(dtype)
    window = dict(strides=strides, padding=pads(padding, xs[1:3], (kh, kw), strides),
                  dilation=dilation)
    results = []
    for nt in THREAD_COUNTS:
        with fusenn.threads(nt):
            y = ops.conv2d_forward(x, w, b, activation="relu", **window)
            dy = np.random.default_rng(10).standard_normal(y.shape).astype(dtype)
            results.append((y, *ops.conv2d_backward(x, w, y, dy, activation="relu", **window)))
    for res in results[1:]:
        for got, first in zip(res, results[0]):
            assert np.array_equal(got, first)
    want_y = ref.conv2d_forward(x, w, b, activation="relu", **window)
    assert_close(results[0][0], want_y, dtype, conv_k(x, w))
    want = ref.conv2d_backward(x, w, results[0][0], dy, activation="relu", **window)
    assert_close(results[0][1:3], want[:2], dtype, y.size // f)
    assert_close(results[0][3], want[2], dtype, conv_k(x, w))


# ---- pooling against the reference ------------------------------------------------------

# name -> (x shape, pool_size, strides, padding)
POOL_CASES = {
    "2x2": ((2, 8, 6, 3), (2, 2), (2, 2), "valid"),
    "2x2-odd-valid": ((2, 7, 5, 3), (2, 2), (2, 2), "valid"),
    "2x2-odd-same": ((2, 7, 5, 3), (2, 2), (2, 2), "same"),
    "3x3-stride1-same": ((1, 5, 6, 4), (3, 3), (1, 1), "same"),
    "3x2-stride2x1": ((3, 9, 7, 2), (3, 2), (2, 1), ((1, 2), (1, 0))),
    "overlapping": ((2, 6, 6, 1), (3, 3), (2, 2), "same"),
    "pool-is-input": ((2, 4, 5, 3), (4, 5), (1, 1), "valid"),
    "1x1-stride3": ((2, 7, 8, 5), (1, 1), (3, 3), "valid"),
    "many-channels": ((1, 4, 4, 70), (2, 2), (2, 2), "valid"),
}


def pool_operands(rng, case, dtype):
    xs, pool, strides, padding = POOL_CASES[case]
    # distinct values: the maximum of every window is unique
    x = rng.permutation(np.prod(xs)).reshape(xs).astype(dtype) / np.prod(xs) - 0.5
    return x, dict(pool_size=pool, strides=strides,
                   padding=pads(padding, xs[1:3], pool, strides))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["max", "avg"])
@pytest.mark.parametrize("case", POOL_CASES)
def test_pool2d(case, mode, dtype):
    x, window = pool_operands(np.random.default_rng(len(case)), case, dtype)
    y, argmax = ops.pool2d_forward(x, mode=mode, **window)
    want_y, want_arg = ref.pool2d_forward(x, mode=mode, **window)
    assert_close(y, want_y, dtype, window["pool_size"][0] * window["pool_size"][1])
    if mode == "max":
        assert argmax.dtype == np.int64
        np.testing.assert_array_equal(argmax, want_arg)
    else:
        assert argmax is None
    dy = np.random.default_rng(2).standard_normal(y.shape).astype(dtype)
    dx = ops.pool2d_backward(dy, x.shape, argmax, mode=mode, **window)
    assert_close(dx, ref.pool2d_backward(dy, x.shape, want_arg, mode=mode, **window), dtype, 9)


def test_max_pool_takes_the_first_maximum():
    x = np.zeros((1, 4, 4, 2))
    x[0, 1, 1, 0] = x[0, 1, 0, 0] = 1.0  # a tie in the first window of channel 0
    y, argmax = ops.pool2d_forward(x, (2, 2), (2, 2))
    assert argmax[0, 0, 0, 0] == 1 * 4 + 0 and argmax[0, 0, 0, 1] == 0
    np.testing.assert_array_equal(argmax, ref.pool2d_forward(x, (2, 2), (2, 2))[1])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["max", "avg"])
def test_pool2d_bitwise_independent_of_threads(mode, dtype):
    rng = np.random.default_rng(12)
    x = rng.standard_normal((16, 28, 28, 8)).astype(dtype)
    window = dict(pool_size=(3, 3), strides=(2, 2), padding=((1, 1), (0, 1)))
    results = []
    for nt in THREAD_COUNTS:
        with fusenn.threads(nt):
            y, argmax = ops.pool2d_forward(x, mode=mode, **window)
            dy = np.random.default_rng(13).standard_normal(y.shape).astype(dtype)
            results.append((y, ops.pool2d_backward(dy, x.shape, argmax, mode=mode, **window)))
    for res in results[1:]:
        for got, first in zip(res, results[0]):
            assert np.array_equal(got, first)


# ---- finite differences (float64, through ops) --------------------------------------------

def central_difference(f, arr, eps=1e-6):
    """d f() / d arr by central differences, arr changed in place and restored."""
    grad = np.empty_like(arr)
    for idx in np.ndindex(arr.shape):
        old = arr[idx]
        arr[idx] = old + eps
        plus = f()
        arr[idx] = old - eps
        minus = f()
        arr[idx] = old
        grad[idx] = (plus - minus) / (2 * eps)
    return grad


@pytest.mark.parametrize("activation", ["identity", "tanh", "gelu", "softmax"])
@pytest.mark.parametrize("case", ["3x3-same", "dilation-stride", "pads-beyond-kernel",
                                  "1x1-stride2"])
def test_conv2d_gradients_are_finite_differences(case, activation):
    rng = np.random.default_rng(14)
    x, w, b, window = conv_operands(rng, case, np.float64)
    x, w = x[:1, :6, :6, :3].copy(), w[:, :, :3, :3].copy()  # small: every entry is checked
    b = b[:3].copy()
    g = rng.standard_normal(ops.conv2d_forward(x, w, b, **window).shape)

    def loss():
        return float((ops.conv2d_forward(x, w, b, activation=activation, **window) * g).sum())

    y = ops.conv2d_forward(x, w, b, activation=activation, **window)
    z = ops.conv2d_forward(x, w, b, **window)
    dw, db, dx = ops.conv2d_backward(x, w, y, g, activation=activation, z=z, **window)
    for name, arr, grad in (("x", x, dx), ("w", w, dw), ("b", b, db)):
        np.testing.assert_allclose(grad, central_difference(loss, arr), rtol=1e-6, atol=1e-8,
                                   err_msg=f"gradient of {name}")


@pytest.mark.parametrize("mode", ["max", "avg"])
@pytest.mark.parametrize("case", ["2x2-odd-same", "3x2-stride2x1", "overlapping"])
def test_pool2d_gradient_is_the_finite_difference(case, mode):
    x, window = pool_operands(np.random.default_rng(15), case, np.float64)
    y, argmax = ops.pool2d_forward(x, mode=mode, **window)
    g = np.random.default_rng(16).standard_normal(y.shape)
    dx = ops.pool2d_backward(g, x.shape, argmax, mode=mode, **window)
    numeric = central_difference(
        lambda: float((ops.pool2d_forward(x, mode=mode, **window)[0] * g).sum()), x, 1e-7)
    np.testing.assert_allclose(dx, numeric, rtol=1e-6, atol=1e-8)


# ---- argument validation ------------------------------------------------------------------

def _conv_args(**changes):
    rng = np.random.default_rng(17)
    args = dict(x=rng.standard_normal((2, 6, 5, 3)), w=rng.standard_normal((3, 2, 3, 4)),
                b=rng.standard_normal(4))
    args.update(changes)
    return args


CONV_ERRORS = [
    pytest.param(dict(x=np.ones((6, 5, 3))), "x", id="x-3d"),
    pytest.param(dict(w=np.ones((3, 2, 2, 4))), "(kernel_h, kernel_w, 3, filters)", id="w-cin"),
    pytest.param(dict(w=np.ones((3, 2, 3))), "4-D", id="w-3d"),
    pytest.param(dict(b=np.ones(5)), "(4,)", id="b-shape"),
    pytest.param(dict(w=np.ones((7, 2, 3, 4))), "larger than the padded input", id="w-big"),
    pytest.param(dict(strides=(0, 1)), "strides", id="strides-zero"),
    pytest.param(dict(strides=2), "strides", id="strides-int"),
    pytest.param(dict(dilation=(1, -1)), "dilation", id="dilation-negative"),
    pytest.param(dict(padding=((1, 1),)), "padding", id="padding-one-axis"),
    pytest.param(dict(padding=((1, -1), (0, 0))), "padding", id="padding-negative"),
    pytest.param(dict(activation="mish"), "activation", id="activation"),
]


@pytest.mark.parametrize("changes, message", CONV_ERRORS)
def test_conv2d_forward_refuses_bad_arguments(changes, message):
    with pytest.raises(ValueError) as info:
        ops.conv2d_forward(**_conv_args(**changes))
    assert message in str(info.value)


def test_conv2d_backward_refuses_bad_arguments():
    args = _conv_args()
    y = ops.conv2d_forward(**args)
    base = dict(x=args["x"], w=args["w"], y=y, dy=y)
    for changes, message in [(dict(dy=y[:, :-1]), f"dy must have shape {y.shape}"),
                             (dict(y=y[:1]), f"y must have shape {y.shape}"),
                             (dict(activation="gelu"), "z (the pre-activation) is required"),
                             (dict(activation="gelu", z=y[..., :2]), "z must have shape"),
                             (dict(x=args["x"][:, :4]), "y must have shape (2, 2, 4, 4)")]:
        with pytest.raises(ValueError) as info:
            ops.conv2d_backward(**{**base, **changes})
        assert message in str(info.value)
    with pytest.raises(TypeError, match="dy"):
        ops.conv2d_backward(**{**base, "dy": y.astype(np.float32)})
    with pytest.raises(TypeError, match="w"):
        ops.conv2d_forward(**_conv_args(w=args["w"].astype(np.int64)))


def test_pool2d_refuses_bad_arguments():
    x = np.random.default_rng(18).standard_normal((2, 5, 4, 3))
    for kwargs, message in [(dict(pool_size=(6, 2)), "larger than the padded input"),
                            (dict(padding=((2, 0), (0, 0))), "smaller than pool_size"),
                            (dict(strides=(1, 0)), "strides"),
                            (dict(mode="min"), "mode"),
                            (dict(pool_size=(2,)), "pool_size")]:
        with pytest.raises(ValueError) as info:
            ops.pool2d_forward(x, **kwargs)
        assert message in str(info.value)
    y, argmax = ops.pool2d_forward(x)
    for kwargs, message in [(dict(dy=y[:, :1]), f"dy must have shape {y.shape}"),
                            (dict(argmax=None), "argmax"),
                            (dict(argmax=argmax[:1]), "argmax must have shape"),
                            (dict(argmax=argmax + 100), "argmax must hold input indices"),
                            (dict(x_shape=(2, 5, 4)), "x_shape")]:
        call = {**dict(dy=y, x_shape=x.shape, argmax=argmax), **kwargs}
        with pytest.raises(ValueError) as info:
            ops.pool2d_backward(**call)
        assert message in str(info.value)
    with pytest.raises(TypeError, match="argmax"):
        ops.pool2d_backward(y, x.shape, argmax.astype(np.float64))


# ---- in the engine ---------------------------------------------------------------------------

class OpByOpSGD(SGD):
    """SGD that the engine does not take (a subclass): forces the op-by-op path."""


class OpByOpAdam(fusenn.Adam):
    """Adam that the engine does not take."""


CNNS = {
    "conv-pool-same": ((11, 12, 2), lambda: [
        fusenn.Conv2D(4, 3, activation="relu"), fusenn.MaxPooling2D(),
        fusenn.Conv2D(5, 3, padding="same", activation="tanh"),
        fusenn.AveragePooling2D(padding="same"), fusenn.Flatten(),
        fusenn.Dense(3, "softmax")], "cross_entropy", (3,)),
    "batchnorm-dropout": ((10, 9, 1), lambda: [
        fusenn.Conv2D(6, (3, 2), strides=(2, 1), padding="same", activation="gelu"),
        fusenn.BatchNorm(), fusenn.Dropout(0.3),
        fusenn.Conv2D(4, 3, dilation_rate=2, use_bias=False, activation="swish"),
        fusenn.MaxPooling2D(3, strides=1, padding="same"), fusenn.Flatten(),
        fusenn.Dense(3, "softmax")], "cross_entropy", (3,)),
    "global-pools": ((8, 8, 3), lambda: [
        fusenn.Conv2D(6, 1, activation="leaky_relu"), fusenn.Conv2D(5, 3, activation="elu"),
        fusenn.GlobalAveragePooling2D(), fusenn.Dense(4, "sigmoid")],
        "binary_cross_entropy", (4,)),
    "global-max": ((7, 9, 2), lambda: [
        fusenn.Conv2D(5, 3, padding="same", activation="relu"), fusenn.MaxPooling2D(),
        fusenn.Conv2D(6, 2, strides=2, activation="relu"), fusenn.GlobalMaxPooling2D(),
        fusenn.Dense(3, "softmax")], "cross_entropy", (3,)),
    # the second and third convolutions take Winograd's method (16 channels in and out, a
    # float32 vector); max pooling takes the second's ReLU derivative, so that one's dW
    # starts from dZ (dy_is_dz); the third has no bias
    "winograd": ((9, 7, 3), lambda: [
        fusenn.Conv2D(16, 3, padding="same", activation="relu"),
        fusenn.Conv2D(16, 3, padding="same", activation="relu"), fusenn.MaxPooling2D(),
        fusenn.Conv2D(16, 3, padding="same", activation="relu", use_bias=False),
        fusenn.Flatten(), fusenn.Dense(3, "softmax")], "cross_entropy", (3,)),
    "conv-last-mse": ((6, 7, 2), lambda: [
        fusenn.Conv2D(4, 3, padding="same", activation="relu"),
        fusenn.Conv2D(2, 3, padding="same", activation="gelu_tanh")], "mse", (6, 7, 2)),
}


def cnn_data(n, in_shape, loss, out_shape, dtype, seed=1):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, *in_shape)).astype(dtype)
    if loss == "cross_entropy":
        return X, rng.integers(0, out_shape[-1], n)
    if loss == "binary_cross_entropy":
        return X, (rng.random((n, *out_shape)) > 0.5).astype(dtype)
    return X, rng.standard_normal((n, *out_shape)).astype(dtype)


def cnn(net, optimizer, dtype, backend="c"):
    in_shape, layers, loss, out_shape = CNNS[net]
    model = fusenn.Sequential(layers(), input_shape=in_shape, dtype=dtype, seed=5,
                              backend=backend)
    model.compile(loss=loss, optimizer=optimizer)
    assert model.output_shape == out_shape
    return model


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("net", CNNS)
def test_cnn_engine_is_bitwise_the_op_by_op_path(net, dtype):
    in_shape, _, loss, out_shape = CNNS[net]
    X, y = cnn_data(40, in_shape, loss, out_shape, dtype)
    sw = np.linspace(0.5, 2.0, len(X))
    engine = cnn(net, fusenn.Adam(lr=0.01), dtype)
    by_op = cnn(net, OpByOpAdam(lr=0.01), dtype)
    assert engine._engine() is not None and by_op._engine() is None
    for _ in range(3):
        assert engine.train_on_batch(X, y, sample_weight=sw) == \
            by_op.train_on_batch(X, y, sample_weight=sw)
    h1 = engine.fit(X, y, epochs=2, batch_size=16, verbose=0)
    h2 = by_op.fit(X, y, epochs=2, batch_size=16, verbose=0)
    for wa, wb in zip(engine.get_weights(), by_op.get_weights()):
        np.testing.assert_array_equal(wa, wb)
    assert {k: v for k, v in h1.history.items() if k != "time"} == \
        {k: v for k, v in h2.history.items() if k != "time"}
    np.testing.assert_array_equal(engine.predict(X), by_op.predict(X))
    assert engine.evaluate(X, y) == by_op.evaluate(X, y)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("net", ["conv-pool-same", "global-max", "winograd"])
def test_cnn_engine_agrees_with_the_numpy_backend(net, dtype):
    in_shape, _, loss, out_shape = CNNS[net]
    X, y = cnn_data(48, in_shape, loss, out_shape, dtype)
    c = cnn(net, SGD(lr=0.05, momentum=0.9), dtype)
    numpy = cnn(net, SGD(lr=0.05, momentum=0.9), dtype, backend="numpy")
    c.fit(X, y, epochs=2, batch_size=16, verbose=0)
    numpy.fit(X, y, epochs=2, batch_size=16, verbose=0)
    tol = 2e-4 if dtype == "float32" else 1e-10
    for wc, wr in zip(c.get_weights(), numpy.get_weights()):
        np.testing.assert_allclose(wc, wr, rtol=tol, atol=tol)


def test_cnn_weights_are_bitwise_identical_for_1_to_3_threads():
    """Large enough that the conv GEMMs, dW groups, pooling and BatchNorm run in parallel;
    the second convolution takes Winograd's method."""
    def layers():
        return [fusenn.Conv2D(16, 3, padding="same", activation="relu"),
                fusenn.Conv2D(16, 3, padding="same", activation="relu"),
                fusenn.MaxPooling2D(), fusenn.BatchNorm(),
                fusenn.Conv2D(16, 3, strides=2, activation="relu"),
                fusenn.AveragePooling2D(), fusenn.Flatten(), fusenn.Dense(10, "softmax")]
    rng = np.random.default_rng(19)
    X = rng.standard_normal((96, 28, 28, 3)).astype("float32")
    y = rng.integers(0, 10, len(X))
    results = []
    for nt in THREAD_COUNTS:
        model = fusenn.Sequential(layers(), input_shape=(28, 28, 3), dtype="float32", seed=2)
        model.compile("cross_entropy", SGD(lr=0.05, momentum=0.9))
        with fusenn.threads(nt):
            model.fit(X, y, epochs=1, batch_size=48, verbose=0)
        results.append(model.get_weights())
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


def test_cnn_gradients_are_finite_differences():
    """float64, end to end through the engine's layer kinds: the weights' gradients of
    the batch loss (recorded by an optimizer that never steps) against central
    differences of evaluate()."""
    class Recorder(fusenn.optimizers.Optimizer):
        def step(self, backend, params, grads):
            self.grads = [np.array(g, copy=True) for g in grads]

        def _hyperparameters(self):
            return {}

    layers = [fusenn.Conv2D(3, 3, padding="same", activation="tanh"),
              fusenn.AveragePooling2D(padding="same"),
              fusenn.Conv2D(2, 2, strides=(1, 2), activation="gelu"), fusenn.Flatten(),
              fusenn.Dense(3, "softmax")]
    model = fusenn.Sequential(layers, input_shape=(5, 6, 2), dtype="float64", seed=0)
    model.compile("cross_entropy", Recorder())
    rng = np.random.default_rng(20)
    X, y = rng.standard_normal((4, 5, 6, 2)), np.array([0, 1, 2, 1])
    weights = model.get_weights()
    model.train_on_batch(X, y)
    analytic = model.optimizer.grads

    def loss():
        model.set_weights(weights)
        return model.evaluate(X, y)["loss"]

    for i, w in enumerate(weights):
        np.testing.assert_allclose(analytic[i], central_difference(loss, w), rtol=1e-6,
                                   atol=1e-9, err_msg=f"gradient of weight array {i}")


def test_cnn_no_allocation_per_step_once_warm():
    model = cnn("batchnorm-dropout", SGD(lr=0.01, momentum=0.9), "float32")
    X, y = cnn_data(200, (10, 9, 1), "cross_entropy", (3,), "float32")
    model.fit(X, y, epochs=1, batch_size=32, verbose=0)  # warm-up: arena and packing buffers
    model.train_on_batch(X[:32], y[:32])
    before = _kernels.allocation_count()
    model.fit(X, y, epochs=2, batch_size=32, verbose=0)
    for _ in range(10):
        model.train_on_batch(X[:32], y[:32])
    assert _kernels.allocation_count() == before
