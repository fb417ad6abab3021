"""BatchNorm kernels (fusenn.ops) against the NumPy reference.

Forward (training and inference) and backward on odd shapes, 1x1, column counts
spanning several column blocks, non-contiguous inputs; the running-statistics
update; bitwise thread-count independence; float64 finite-difference checks
of dX, dgamma and dbeta; argument validation.
"""

import numpy as np
import pytest

import fusenn
from fusenn import ops
from fusenn import reference as ref
from test_kernels import DTYPES, LAYOUTS, THREAD_COUNTS, as_layout, assert_close, rand

# d = 130 and 300 give several column blocks; (2000, 20) is tall and narrow.
SHAPES = [pytest.param(s, id="{}x{}".format(*s)) for s in [
    (1, 1), (1, 7), (2, 7), (7, 2), (17, 33), (127, 65), (300, 10), (5, 130),
]]


def operands(rng, shape, dtype, layout="contiguous", offset=0.0):
    """x (optionally shifted by offset), gamma, beta, running stats, dy."""
    n, d = shape
    x = as_layout((offset + 2 * rng.standard_normal(shape)).astype(dtype), layout)
    gamma = (1 + 0.5 * rng.standard_normal(d)).astype(dtype)
    beta = rng.standard_normal(d).astype(dtype)
    running_mean = rng.standard_normal(d).astype(dtype)
    running_var = rng.uniform(0.5, 2.0, d).astype(dtype)
    dy = as_layout(rng.standard_normal(shape).astype(dtype), layout)
    return x, gamma, beta, running_mean, running_var, dy


def copies(*arrays):
    return [a.copy() for a in arrays]


# ---- C against the reference ----------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("momentum", [0.99, 0.5])
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_train(shape, momentum, dtype):
    rng = np.random.default_rng(sum(shape))
    x, gamma, beta, rm, rv, _ = operands(rng, shape, dtype)
    inputs = copies(x, gamma, beta)
    c_rm, c_rv = copies(rm, rv)
    r_rm, r_rv = copies(rm, rv)
    got = ops.batchnorm_forward_train(x, gamma, beta, c_rm, c_rv, momentum=momentum, eps=1e-3)
    for a, b in zip((x, gamma, beta), inputs):
        np.testing.assert_array_equal(a, b)
    want = ref.batchnorm_forward_train(x, gamma, beta, r_rm, r_rv, momentum=momentum, eps=1e-3)
    assert_close(got, want, dtype, shape[0])
    assert_close(c_rm, r_rm, dtype, shape[0])
    assert_close(c_rv, r_rv, dtype, shape[0])
    assert not np.array_equal(c_rm, rm) and not np.array_equal(c_rv, rv)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_infer(shape, dtype):
    x, gamma, beta, rm, rv, _ = operands(np.random.default_rng(1), shape, dtype)
    got = ops.batchnorm_forward_infer(x, gamma, beta, rm, rv, eps=1e-2)
    assert_close(got, ref.batchnorm_forward_infer(x, gamma, beta, rm, rv, eps=1e-2), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("need_dx", [True, False], ids=["dx", "no_dx"])
@pytest.mark.parametrize("shape", SHAPES)
def test_backward(shape, need_dx, dtype):
    x, gamma, beta, _, _, dy = operands(np.random.default_rng(2), shape, dtype)
    _, mean, invstd = ref.batchnorm_forward_train(x, gamma, beta, None, None)
    got = ops.batchnorm_backward(x, dy, gamma, mean, invstd, need_dx=need_dx)
    want = ref.batchnorm_backward(x, dy, gamma, mean, invstd, need_dx=need_dx)
    assert (got[0] is None) == (not need_dx)
    assert_close(got, want, dtype, shape[0])


@pytest.mark.parametrize("dtype", DTYPES)
def test_large_offset(dtype):
    """Two-pass statistics in double: a mean 1000 standard deviations away from 0
    still normalises to mean 0 and variance 1 (a one-pass E[x^2] - mean^2 would not)."""
    x, gamma, beta, rm, rv, dy = operands(np.random.default_rng(3), (64, 40), dtype,
                                          offset=2000.0)
    ones, zeros = np.ones(40, dtype), np.zeros(40, dtype)
    y, mean, invstd = ops.batchnorm_forward_train(x, ones, zeros, None, None, eps=1e-12)
    assert_close((y, mean, invstd), ref.batchnorm_forward_train(x, ones, zeros, None, None,
                                                                eps=1e-12), dtype, 64)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(invstd, 1 / x64.std(axis=0), rtol=1e-4 if dtype == np.float32
                               else 1e-12)
    tol = 3e-3 if dtype == np.float32 else 1e-9  # float32 rounds the mean 2000 to 1.2e-4
    np.testing.assert_allclose(y.astype(np.float64).mean(axis=0), 0, atol=tol)
    np.testing.assert_allclose(y.astype(np.float64).std(axis=0), 1, atol=tol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_layouts(layout, dtype):
    """x and dy in any layout; per-feature vectors strided, reversed or read-only."""
    shape = (17, 70)
    x, gamma, beta, rm, rv, dy = operands(np.random.default_rng(4), shape, dtype, layout)
    vec = "rows" if layout in ("contiguous", "fortran", "transposed") else (
        "reversed" if layout in ("cols", "strided_T") else "readonly")
    if layout == "unaligned":
        vec = "unaligned"
    g, b, m, v = (as_layout(a, vec) for a in (gamma, beta, rm, rv))
    xc, dyc = np.array(x), np.array(dy)
    y, mean, invstd = ops.batchnorm_forward_train(x, g, b, None, None)
    assert_close((y, mean, invstd), ref.batchnorm_forward_train(xc, gamma, beta, None, None),
                 dtype, 17)
    assert y.flags.c_contiguous
    assert_close(ops.batchnorm_forward_infer(x, g, b, m, v),
                 ref.batchnorm_forward_infer(xc, gamma, beta, rm, rv), dtype)
    assert_close(ops.batchnorm_backward(x, dy, g, as_layout(mean, vec), as_layout(invstd, vec)),
                 ref.batchnorm_backward(xc, dyc, gamma, mean, invstd), dtype, 17)
    np.testing.assert_array_equal(x, xc)


# ---- semantics -----------------------------------------------------------------------

@pytest.mark.parametrize("backend", [ops, ref], ids=["c", "numpy"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_running_statistics_update(backend, dtype):
    """Keras: running = momentum running + (1 - momentum) batch, batch variance biased;
    momentum 0 copies the batch statistics, momentum 1 keeps the running ones."""
    rng = np.random.default_rng(5)
    x1, x2 = (rng.normal(3, 2, size=(20, 6)).astype(dtype) for _ in range(2))
    gamma, beta = np.ones(6, dtype), np.zeros(6, dtype)
    rm, rv = np.zeros(6, dtype), np.ones(6, dtype)
    want_m, want_v = np.zeros(6), np.ones(6)
    for x in (x1, x2):
        backend.batchnorm_forward_train(x, gamma, beta, rm, rv, momentum=0.9)
        x64 = x.astype(np.float64)
        want_m = 0.9 * want_m + 0.1 * x64.mean(axis=0)
        want_v = 0.9 * want_v + 0.1 * x64.var(axis=0)  # ddof=0
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(rm, want_m, rtol=rtol)
    np.testing.assert_allclose(rv, want_v, rtol=rtol)
    backend.batchnorm_forward_train(x1, gamma, beta, rm, rv, momentum=0.0)
    np.testing.assert_allclose(rm, x1.astype(np.float64).mean(axis=0), rtol=rtol)
    np.testing.assert_allclose(rv, x1.astype(np.float64).var(axis=0), rtol=rtol)
    before = rm.copy(), rv.copy()
    backend.batchnorm_forward_train(x2, gamma, beta, rm, rv, momentum=1.0)
    np.testing.assert_array_equal(rm, before[0])
    np.testing.assert_array_equal(rv, before[1])


@pytest.mark.parametrize("dtype", DTYPES)
def test_default_momentum_and_eps_are_keras(dtype):
    x, gamma, beta, rm, rv, _ = operands(np.random.default_rng(6), (9, 5), dtype)
    c_rm, c_rv = copies(rm, rv)
    y, mean, invstd = ops.batchnorm_forward_train(x, gamma, beta, c_rm, c_rv)
    x64 = x.astype(np.float64)
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(invstd, 1 / np.sqrt(x64.var(axis=0) + 1e-3), rtol=rtol)
    np.testing.assert_allclose(c_rm, 0.99 * rm + 0.01 * x64.mean(axis=0), rtol=rtol)
    np.testing.assert_allclose(
        ops.batchnorm_forward_infer(x, gamma, beta, rm, rv),
        gamma * (x64 - rm) / np.sqrt(rv.astype(np.float64) + 1e-3) + beta, rtol=rtol * 10,
        atol=rtol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_inference_uses_the_running_statistics(dtype):
    """Inference normalises with the running statistics, not the batch's: its output
    does not depend on the other rows of the batch, and equals training's output
    exactly when the running statistics are the batch's."""
    x, gamma, beta, rm, rv, _ = operands(np.random.default_rng(7), (30, 8), dtype)
    y_all = ops.batchnorm_forward_infer(x, gamma, beta, rm, rv)
    y_row = ops.batchnorm_forward_infer(x[3:4], gamma, beta, rm, rv)
    np.testing.assert_array_equal(y_all[3:4], y_row)
    y_train, mean, invstd = ops.batchnorm_forward_train(x, gamma, beta, None, None)
    assert not np.allclose(y_all, y_train, rtol=0.1)
    var = x.astype(np.float64).var(axis=0).astype(dtype)
    assert_close(ops.batchnorm_forward_infer(x, gamma, beta, mean, var), y_train, dtype, 30)
    np.testing.assert_allclose(y_train.astype(np.float64).mean(axis=0), beta,
                               atol=1e-4 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_single_row_and_constant_columns(dtype):
    """n = 1 (as Keras allows) and constant columns have variance 0: y = beta,
    invstd = 1 / sqrt(eps), dx = 0, all finite."""
    gamma, beta = np.array([2.0, -1.0, 0.5], dtype), np.array([0.25, 1.0, -3.0], dtype)
    for x in (np.array([[1.0, -5.0, 1e3]], dtype), np.tile(np.array([1.0, -5.0, 1e3], dtype),
                                                           (9, 1))):
        rm, rv = np.zeros(3, dtype), np.ones(3, dtype)
        y, mean, invstd = ops.batchnorm_forward_train(x, gamma, beta, rm, rv, eps=1e-3)
        np.testing.assert_array_equal(y, np.broadcast_to(beta, x.shape))
        np.testing.assert_array_equal(mean, x[0])
        np.testing.assert_allclose(invstd, 1 / np.sqrt(1e-3), rtol=1e-6)
        np.testing.assert_allclose(rv, 0.99, rtol=1e-6)
        dx, dgamma, dbeta = ops.batchnorm_backward(x, np.ones_like(x), gamma, mean, invstd)
        np.testing.assert_array_equal(dx, 0)
        np.testing.assert_array_equal(dgamma, 0)
        np.testing.assert_array_equal(dbeta, x.shape[0])


@pytest.mark.parametrize("shape", [(3, 0), (0, 4)])
def test_empty_features_or_inference_batch(shape):
    d = shape[1]
    x = np.zeros(shape)
    y = ops.batchnorm_forward_infer(x, np.ones(d), np.zeros(d), np.zeros(d), np.ones(d))
    assert y.shape == shape
    if shape[0]:
        y, mean, invstd = ops.batchnorm_forward_train(x, np.ones(d), np.zeros(d), None, None)
        assert y.shape == shape and mean.shape == invstd.shape == (0,)
        dx, dg, db = ops.batchnorm_backward(x, x, np.ones(d), mean, invstd)
        assert dx.shape == shape and dg.shape == db.shape == (0,)


# ---- threads --------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(300, 200), (2000, 20), (40, 1001)],
                         ids=["300x200", "2000x20", "40x1001"])
def test_bitwise_independent_of_threads(shape, dtype):
    x, gamma, beta, rm, rv, dy = operands(np.random.default_rng(8), shape, dtype)
    results = []
    for nt in THREAD_COUNTS:
        with fusenn.threads(nt):
            c_rm, c_rv = copies(rm, rv)
            train = ops.batchnorm_forward_train(x, gamma, beta, c_rm, c_rv)
            infer = ops.batchnorm_forward_infer(x, gamma, beta, rm, rv)
            back = ops.batchnorm_backward(x, dy, gamma, train[1], train[2])
            results.append(train + (c_rm, c_rv, infer) + back)
    for res in results[1:]:
        for got, first in zip(res, results[0]):
            assert np.array_equal(got, first)
    assert_close(results[0][:3], ref.batchnorm_forward_train(x, gamma, beta, None, None),
                 dtype, shape[0])


# ---- finite differences ---------------------------------------------------------------

@pytest.mark.parametrize("backend", [ops, ref], ids=["c", "numpy"])
@pytest.mark.parametrize("shape", [(7, 5), (2, 3), (70, 3)], ids=["7x5", "2x3", "70x3"])
def test_backward_is_the_finite_difference_gradient(backend, shape):
    """loss = sum(Y * R) of the training forward, float64: dX, dgamma, dbeta from
    central differences of every entry."""
    rng = np.random.default_rng(9)
    n, d = shape
    x = rng.normal(1.0, 2.0, size=shape)
    gamma, beta = rng.normal(size=d), rng.normal(size=d)
    r = rng.normal(size=shape)

    def loss(x, gamma, beta):
        return float(np.sum(backend.batchnorm_forward_train(x, gamma, beta, None, None)[0] * r))

    _, mean, invstd = backend.batchnorm_forward_train(x, gamma, beta, None, None)
    dx, dgamma, dbeta = backend.batchnorm_backward(x, r, gamma, mean, invstd)
    eps = 1e-6
    for name, analytic in (("x", dx), ("gamma", dgamma), ("beta", dbeta)):
        args = {"x": x, "gamma": gamma, "beta": beta}
        numeric = np.empty_like(analytic)
        for idx in np.ndindex(analytic.shape):
            plus = {k: v.copy() for k, v in args.items()}
            minus = {k: v.copy() for k, v in args.items()}
            plus[name][idx] += eps
            minus[name][idx] -= eps
            numeric[idx] = (loss(**plus) - loss(**minus)) / (2 * eps)
        np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-7, err_msg=name)


# ---- validation -----------------------------------------------------------------------

def valid(dtype=np.float64):
    rng = np.random.default_rng(10)
    x, gamma, beta, rm, rv, dy = operands(rng, (4, 3), dtype)
    return dict(x=x, gamma=gamma, beta=beta, running_mean=rm, running_var=rv), dy


@pytest.mark.parametrize("arg", ["running_mean", "running_var"])
@pytest.mark.parametrize("bad, error, match", [
    pytest.param(lambda a: a.astype(np.float32), TypeError, "float64", id="dtype"),
    pytest.param(lambda a: list(a), TypeError, "ndarray", id="list"),
    pytest.param(lambda a: as_layout(a, "rows"), ValueError, "C-contiguous", id="strided"),
    pytest.param(lambda a: as_layout(a, "readonly"), ValueError, "writeable", id="readonly"),
    pytest.param(lambda a: as_layout(a, "unaligned"), ValueError, "C-contiguous",
                 id="unaligned"),
    pytest.param(lambda a: np.append(a, 1.0), ValueError, r"\(3,\)", id="length"),
    pytest.param(lambda a: None, ValueError, "both", id="only_one_none"),
])
def test_running_statistics_validation(arg, bad, error, match):
    kwargs, _ = valid()
    kwargs[arg] = bad(kwargs[arg])
    before = [np.array(kwargs[k], copy=True) for k in ("running_mean", "running_var")
              if kwargs[k] is not None]
    with pytest.raises(error, match=match) as info:
        ops.batchnorm_forward_train(**kwargs)
    assert arg in str(info.value)
    after = [np.asarray(kwargs[k]) for k in ("running_mean", "running_var")
             if kwargs[k] is not None]
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)


def test_running_statistics_may_both_be_none():
    kwargs, _ = valid()
    y, mean, invstd = ops.batchnorm_forward_train(**{**kwargs, "running_mean": None,
                                                     "running_var": None})
    y2 = ops.batchnorm_forward_train(**kwargs)[0]
    np.testing.assert_array_equal(y, y2)


@pytest.mark.parametrize("call, error, match", [
    pytest.param(lambda k, dy: ops.batchnorm_forward_train(**{**k, "x": k["x"][:0]}),
                 ValueError, r"\bx\b.*empty", id="train_empty_batch"),
    pytest.param(lambda k, dy: ops.batchnorm_backward(k["x"][:0], dy[:0], k["gamma"],
                                                      k["gamma"], k["gamma"]),
                 ValueError, r"\bx\b.*empty", id="backward_empty_batch"),
    pytest.param(lambda k, dy: ops.batchnorm_forward_train(**{**k, "gamma": np.ones(4)}),
                 ValueError, r"gamma.*\(3,\)", id="gamma_length"),
    pytest.param(lambda k, dy: ops.batchnorm_forward_train(**{**k, "beta": np.ones((1, 3))}),
                 ValueError, r"beta.*1-D", id="beta_2d"),
    pytest.param(lambda k, dy: ops.batchnorm_forward_train(**{**k, "x": np.ones(3)}),
                 ValueError, r"\bx\b.*2-D", id="x_1d"),
    pytest.param(lambda k, dy: ops.batchnorm_forward_train(**k, momentum=1.5),
                 ValueError, r"momentum.*\[0, 1\]", id="momentum_range"),
    pytest.param(lambda k, dy: ops.batchnorm_forward_train(**k, momentum="0.9"),
                 TypeError, "momentum", id="momentum_str"),
    pytest.param(lambda k, dy: ops.batchnorm_forward_train(**k, eps=0.0),
                 ValueError, r"eps.*> 0", id="eps_zero"),
    pytest.param(lambda k, dy: ops.batchnorm_forward_infer(**k, eps=float("inf")),
                 ValueError, "eps", id="infer_eps_inf"),
    pytest.param(lambda k, dy: ops.batchnorm_forward_infer(**{**k, "running_var": -k[
        "running_var"]}), ValueError, r"running_var.*>= 0", id="infer_negative_var"),
    pytest.param(lambda k, dy: ops.batchnorm_forward_infer(**{**k, "running_mean": None}),
                 TypeError, "running_mean", id="infer_none"),
    pytest.param(lambda k, dy: ops.batchnorm_forward_infer(
        **{**k, "running_mean": k["running_mean"].astype(np.float32)}), TypeError,
        "running_mean", id="infer_dtype"),
    pytest.param(lambda k, dy: ops.batchnorm_backward(k["x"], dy[:, :2], k["gamma"],
                                                      k["gamma"], k["gamma"]),
                 ValueError, r"dy.*\(4, 3\)", id="backward_dy_shape"),
    pytest.param(lambda k, dy: ops.batchnorm_backward(k["x"], dy, k["gamma"], k["gamma"][:2],
                                                      k["gamma"]),
                 ValueError, r"mean.*\(3,\)", id="backward_mean_length"),
    pytest.param(lambda k, dy: ops.batchnorm_backward(k["x"], dy, k["gamma"], k["gamma"],
                                                      k["gamma"].astype(np.float32)),
                 TypeError, "invstd", id="backward_invstd_dtype"),
])
def test_validation(call, error, match):
    kwargs, dy = valid()
    before = kwargs["running_mean"].copy()
    with pytest.raises(error, match=match):
        call(kwargs, dy)
    np.testing.assert_array_equal(kwargs["running_mean"], before)
