"""The loss kernels with per-sample weights, and the regression losses mae, huber and poisson.

fusenn.ops (C) against fusenn.reference (NumPy) for all six losses, with and
without sample weights; the weighting rule loss = (1/n) sum_i sw_i loss_i with
row i's gradient scaled by sw_i (Keras's "sum over batch size"); float64
finite differences of every loss gradient; thread-count determinism;
validation of sample_weight and Huber's delta; the Loss objects (names,
aliases, Huber(delta), config, pickling) and models trained with mae / huber.
"""

import pickle

import numpy as np
import pytest

import fusenn
from fusenn import ops
from fusenn import reference as ref
from fusenn.losses import LOSSES, Huber, Loss, get_loss
from test_kernels import DTYPES, LAYOUTS, THREAD_COUNTS, as_layout, assert_close

NAMES = ("softmax_cross_entropy", "sigmoid_binary_cross_entropy", "mse", "mae", "huber",
         "poisson")
SHAPES = [pytest.param(s, id="{}x{}".format(*s)) for s in [
    (1, 1), (2, 7), (7, 2), (17, 33), (65, 3), (300, 10),
]]
DELTA = 0.8  # Huber's delta in these tests: random differences fall on both sides


def operands(rng, name, shape, dtype, layout="contiguous"):
    """(z or a, labels or t) for the loss `name`."""
    n, k = shape
    z = as_layout((2 * rng.standard_normal(shape)).astype(dtype), layout)
    if name == "softmax_cross_entropy":
        return z, rng.integers(0, k, size=n)
    if name == "sigmoid_binary_cross_entropy":
        return z, as_layout(rng.random(shape).astype(dtype), layout)
    if name == "poisson":  # counts, from log-rates z
        return z, as_layout(rng.poisson(3, shape).astype(dtype), layout)
    return z, as_layout(rng.standard_normal(shape).astype(dtype), layout)


def weights(rng, n, dtype=np.float64):
    """Weights in [0, 3) with some exact zeros."""
    w = 3 * rng.random(n)
    w[rng.random(n) < 0.2] = 0
    return w.astype(dtype)


def call(module, name, args, sample_weight=None):
    extra = (DELTA,) if name == "huber" else ()
    return getattr(module, name)(*args, *extra, sample_weight=sample_weight)


def reduction_k(name, shape):
    return shape[1] if name == "softmax_cross_entropy" else 1


def grad(result):
    """The gradient output of a loss (dz or da) - the last element."""
    return result[-1]


# ---- C against the reference ------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("name", NAMES)
def test_matches_reference(name, weighted, shape, dtype):
    rng = np.random.default_rng(list(shape))
    args = operands(rng, name, shape, dtype)
    sw = weights(rng, shape[0], dtype) if weighted else None
    before = [np.array(a) for a in args]
    got = call(ops, name, args, sw)
    for a, b in zip(args, before):
        np.testing.assert_array_equal(a, b, err_msg="an input was modified")
    want = call(ref, name, [np.array(a) for a in args], None if sw is None else sw.copy())
    assert len(got) == (3 if "entropy" in name else 2)
    assert_close(got, want, dtype, reduction_k(name, shape))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", NAMES)
def test_layouts(name, layout, dtype):
    """Non-contiguous, read-only and unaligned operands and weights."""
    rng = np.random.default_rng(3)
    args = operands(rng, name, (17, 9), dtype, layout)
    sw = weights(rng, 17)
    want = call(ref, name, [np.array(a) for a in args], sw.astype(dtype))
    got = call(ops, name, args, as_layout(sw, layout))
    assert_close(got, want, dtype, reduction_k(name, (17, 9)))


@pytest.mark.parametrize("name", NAMES)
def test_weights_of_other_types_are_converted(name):
    """A list or integer weights give the same bits as float weights of the arrays' dtype."""
    rng = np.random.default_rng(4)
    args = operands(rng, name, (5, 4), np.float32)
    want = call(ops, name, args, np.array([1, 0, 2, 3, 1], np.float32))
    for sw in ([1, 0, 2, 3, 1], np.array([1, 0, 2, 3, 1], np.int64),
               np.array([1, 0, 2, 3, 1], np.float64), np.array([1, 0, 2, 3, 1], np.uint8)):
        got = call(ops, name, args, sw)
        assert got[0] == want[0]
        for g, w in zip(got[1:], want[1:]):
            assert np.array_equal(g, w)


# ---- the weighting rule -------------------------------------------------------------------

def _bitwise_equal(a, b):
    assert a[0] == b[0]
    for x, y in zip(a[1:], b[1:]):
        assert x.dtype == y.dtype and np.array_equal(x, y)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [pytest.param((13, 5), id="13x5"),
                                   pytest.param((2000, 33), id="2000x33")])
@pytest.mark.parametrize("name", NAMES)
def test_weights_of_ones_are_unweighted_bitwise(name, shape, dtype):
    args = operands(np.random.default_rng(5), name, shape, dtype)
    with fusenn.threads(2):
        _bitwise_equal(call(ops, name, args, np.ones(shape[0])), call(ops, name, args))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", NAMES)
def test_constant_weight_scales_loss_and_gradient(name, dtype):
    """sw = 2 everywhere doubles the loss and the gradient, exactly (a power of 2);
    sw = 0.3 scales them by 0.3 up to rounding. Probabilities do not change."""
    args = operands(np.random.default_rng(6), name, (33, 7), dtype)
    plain = call(ops, name, args)
    two = call(ops, name, args, np.full(33, 2.0))
    assert two[0] == 2 * plain[0]
    assert np.array_equal(grad(two), 2 * grad(plain))
    if len(plain) == 3:
        assert np.array_equal(two[1], plain[1])
    third = call(ops, name, args, np.full(33, 0.3))
    c = float(dtype(0.3))  # the weight as the kernel sees it
    np.testing.assert_allclose(third[0], c * plain[0], rtol=1e-12)
    # atol: softmax's p - 1 cancels, so relative error is large where p is near 1
    tol = 8 * np.finfo(dtype).eps
    want = c * grad(plain)
    np.testing.assert_allclose(grad(third), want, rtol=tol, atol=tol * np.abs(want).max())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", NAMES)
def test_zero_weights_drop_rows(name, dtype):
    """Rows of weight 0 add nothing to the loss and get a zero gradient; the loss is
    still divided by the full n (Keras's sum over batch size)."""
    rng = np.random.default_rng(7)
    n = 12
    args = operands(rng, name, (n, 5), dtype)
    keep = np.arange(n) % 3 != 0
    sw = keep.astype(np.float64)
    got = call(ops, name, args, sw)
    subset = call(ops, name, [a[keep] for a in args])
    np.testing.assert_allclose(got[0], subset[0] * keep.sum() / n, rtol=1e-13)
    assert np.all(grad(got)[~keep] == 0)
    assert np.all(np.any(grad(got)[keep] != 0, axis=1))
    want = grad(subset) * keep.sum() / n
    tol = 8 * np.finfo(dtype).eps
    np.testing.assert_allclose(grad(got)[keep], want, rtol=tol, atol=tol * np.abs(want).max())
    nothing = call(ops, name, args, np.zeros(n))
    assert nothing[0] == 0 and np.all(grad(nothing) == 0)
    if len(nothing) == 3:  # the probabilities do not depend on the weights
        assert np.array_equal(nothing[1], got[1])


@pytest.mark.parametrize("name", NAMES)
def test_integer_weights_equal_repeated_rows(name):
    """As scikit-learn's sample_weight: weight 2 counts a row twice. With the
    'sum over batch size' rule, loss(sw) * n / sum(sw) is the mean over the
    repeated batch."""
    rng = np.random.default_rng(8)
    args = operands(rng, name, (6, 4), np.float64)
    sw = np.array([2, 0, 1, 3, 1, 1])
    repeated = [np.repeat(a, sw, axis=0) for a in args]
    got = call(ops, name, args, sw)
    want = call(ops, name, repeated)
    np.testing.assert_allclose(got[0] * 6 / sw.sum(), want[0], rtol=1e-13)


# ---- known values --------------------------------------------------------------------------

@pytest.mark.parametrize("module", [ops, ref], ids=["c", "numpy"])
def test_mae_known_values(module):
    a = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    t = np.array([[1.0, 0.0, 5.0], [1.0, -1.0, 0.5]])
    loss, da = module.mae(a, t)
    assert loss == pytest.approx((0 + 2 + 2 + 1 + 1 + 0.5) / 6, rel=1e-15)
    np.testing.assert_array_equal(da, np.array([[0, 1, -1], [-1, 1, -1]]) / 6)
    loss, da = module.mae(a, t, sample_weight=[0.5, 2.0])
    assert loss == pytest.approx((0.5 * 4 + 2 * 2.5) / 6, rel=1e-15)
    np.testing.assert_array_equal(da, np.array([[0, 0.5, -0.5], [-2, 2, -2]]) / 6)


@pytest.mark.parametrize("module", [ops, ref], ids=["c", "numpy"])
def test_huber_known_values(module):
    """PyTorch's HuberLoss(delta=1) on the same numbers: 0.5 d^2 inside, delta (|d| - delta/2) beyond."""
    a = np.array([[0.0, 3.0], [-2.0, 0.25]])
    t = np.array([[0.5, 0.0], [0.0, 0.0]])
    loss, da = module.huber(a, t)
    assert loss == pytest.approx((0.125 + 2.5 + 1.5 + 0.03125) / 4, rel=1e-15)
    np.testing.assert_array_equal(da, np.array([[-0.5, 1.0], [-1.0, 0.25]]) / 4)
    loss, da = module.huber(a, t, delta=2.0)  # |d| == delta is quadratic
    assert loss == pytest.approx((0.125 + 2 * 2 + 2 + 0.03125) / 4, rel=1e-15)
    np.testing.assert_array_equal(da, np.array([[-0.5, 2.0], [-2.0, 0.25]]) / 4)


@pytest.mark.parametrize("dtype", DTYPES)
def test_huber_limits(dtype):
    """A delta beyond every |d| gives mse / 2; a tiny delta gives delta (mae - delta / 2)."""
    a, t = operands(np.random.default_rng(9), "huber", (20, 6), dtype)
    sw = weights(np.random.default_rng(10), 20)
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    big = ops.huber(a, t, delta=1e3, sample_weight=sw)
    mse = ops.mse(a, t, sample_weight=sw)
    np.testing.assert_allclose(big[0], mse[0] / 2, rtol=rtol)
    np.testing.assert_allclose(big[1], mse[1] / 2, rtol=rtol)
    delta = 1e-4
    small = ops.huber(a, t, delta=delta, sample_weight=sw)
    mae = ops.mae(a, t, sample_weight=sw)
    np.testing.assert_allclose(small[0], delta * (mae[0] - delta / 2 * np.mean(sw)), rtol=rtol)
    np.testing.assert_allclose(small[1], delta * mae[1], rtol=rtol)


@pytest.mark.parametrize("module", [ops, ref], ids=["c", "numpy"])
def test_poisson_known_values(module):
    """PyTorch's PoissonNLLLoss(log_input=True) on the same numbers: exp(a) - t a."""
    a = np.array([[0.0, np.log(2.0)], [1.0, -1.0]])
    t = np.array([[1.0, 0.0], [3.0, 2.0]])
    loss, da = module.poisson(a, t)
    want = [[1.0, 2.0], [np.e - 3.0, np.exp(-1.0) + 2.0]]
    assert loss == pytest.approx(np.mean(want), rel=1e-15)
    np.testing.assert_allclose(da, np.array([[0.0, 2.0], [np.e - 3.0, np.exp(-1.0) - 2.0]]) / 4,
                               rtol=1e-15, atol=1e-17)


# ---- finite differences ---------------------------------------------------------------------

FD_EPS = 1e-6
FD_MARGIN = 1e-3  # no difference interval crosses a kink of mae (d = 0) or huber (|d| = delta)


def _kink_free(name, rng, shape):
    """float64 operands whose differences stay FD_MARGIN away from the kinks;
    huber gets differences in both regions."""
    while True:
        args = operands(rng, name, shape, np.float64)
        if name in ("mae", "huber"):
            d = np.abs(args[0] - args[1])
            kink = 0.0 if name == "mae" else DELTA
            if np.abs(d - kink).min() < FD_MARGIN:
                continue
            if name == "huber" and not (np.any(d < DELTA) and np.any(d > DELTA)):
                continue
        return args


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("module", [ops, ref], ids=["c", "numpy"])
@pytest.mark.parametrize("name", NAMES)
def test_gradient_matches_finite_differences(name, module, weighted):
    rng = np.random.default_rng(11)
    shape = (5, 4)
    z, second = _kink_free(name, rng, shape)
    sw = weights(rng, shape[0]) if weighted else None
    analytic = grad(call(module, name, (z, second), sw))
    numeric = np.empty_like(z)
    for index in np.ndindex(z.shape):
        up, down = z.copy(), z.copy()
        up[index] += FD_EPS
        down[index] -= FD_EPS
        numeric[index] = (call(module, name, (up, second), sw)[0]
                          - call(module, name, (down, second), sw)[0]) / (2 * FD_EPS)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-9)
    assert np.abs(numeric).max() > 1e-3  # not a vacuous comparison


# ---- threads ---------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", NAMES)
def test_bitwise_independent_of_threads(name, dtype):
    rng = np.random.default_rng(12)
    args = operands(rng, name, (3000, 40), dtype)
    sw = weights(rng, 3000)
    results = []
    for nt in THREAD_COUNTS:
        with fusenn.threads(nt):
            results.append(call(ops, name, args, sw))
    for res in results[1:]:
        _bitwise_equal(res, results[0])
    assert_close(results[0], call(ref, name, args, sw.astype(dtype)), dtype,
                 reduction_k(name, (3000, 40)))


# ---- validation --------------------------------------------------------------------------------

BAD_WEIGHTS = [
    pytest.param(np.ones(4), ValueError, r"sample_weight.*\(5,\)", id="short"),
    pytest.param(np.ones(6), ValueError, r"sample_weight.*\(5,\)", id="long"),
    pytest.param(np.ones((5, 1)), ValueError, r"sample_weight.*\(5,\)", id="2d"),
    pytest.param(np.float64(1.0), ValueError, r"sample_weight.*\(5,\)", id="scalar"),
    pytest.param([1, 1, -0.5, 1, 1], ValueError, r"sample_weight.*>= 0.*-0\.5", id="negative"),
    pytest.param([1, 1, np.nan, 1, 1], ValueError, "sample_weight.*finite", id="nan"),
    pytest.param([1, np.inf, 1, 1, 1], ValueError, "sample_weight.*finite", id="inf"),
    pytest.param(["a"] * 5, TypeError, "sample_weight", id="str"),
    pytest.param(np.ones(5, complex), TypeError, "sample_weight", id="complex"),
    pytest.param(np.ones(5, bool), TypeError, "sample_weight", id="bool"),
    pytest.param(np.full(5, None), TypeError, "sample_weight", id="object"),
]


@pytest.mark.parametrize("sw, error, match", BAD_WEIGHTS)
@pytest.mark.parametrize("name", NAMES)
def test_bad_sample_weight(name, sw, error, match):
    args = operands(np.random.default_rng(13), name, (5, 3), np.float64)
    with pytest.raises(error, match=match):
        call(ops, name, args, sw)


def test_weight_too_large_for_float32():
    a = np.zeros((2, 2), np.float32)
    with pytest.raises(ValueError, match="sample_weight.*finite"):
        ops.mse(a, a, sample_weight=[1.0, 1e300])
    assert ops.mse(a, a, sample_weight=[1.0, 1e30])[0] == 0  # large but representable


@pytest.mark.parametrize("delta, error", [
    pytest.param(0.0, ValueError, id="zero"), pytest.param(-1.0, ValueError, id="negative"),
    pytest.param(float("nan"), ValueError, id="nan"), pytest.param(float("inf"), ValueError, id="inf"),
    pytest.param("1", TypeError, id="str"), pytest.param(None, TypeError, id="none"),
    pytest.param(True, TypeError, id="bool"), pytest.param(np.ones(2), TypeError, id="array"),
])
def test_bad_huber_delta(delta, error):
    a = np.zeros((2, 2))
    with pytest.raises(error, match="delta"):
        ops.huber(a, a, delta=delta)
    with pytest.raises(error, match="delta"):
        Huber(delta)


def test_huber_delta_may_be_an_int_or_numpy_number():
    a, t = np.zeros((1, 2)), np.array([[3.0, 0.5]])
    want = ops.huber(a, t, 2.0)
    for delta in (2, np.int32(2), np.float32(2)):
        got = ops.huber(a, t, delta)
        assert got[0] == want[0] and np.array_equal(got[1], want[1])


# ---- Loss objects ------------------------------------------------------------------------------

@pytest.mark.parametrize("alias, name", [
    ("mae", "mae"), ("mean_absolute_error", "mae"), ("l1", "mae"),
    ("huber", "huber"), ("huber_loss", "huber"), ("mse", "mse"),
])
def test_loss_names(alias, name):
    loss = get_loss(alias)
    assert loss.name == name and loss is LOSSES[name]
    assert loss.targets == "values" and loss.output_activations is None
    assert not loss.has_accuracy and loss.fused_kernel is None
    assert loss.engine == name  # the C engine's loss of the same name


def test_huber_objects():
    assert get_loss("huber").delta == 1.0
    h = Huber(delta=0.25)
    assert isinstance(h, Loss) and h.delta == 0.25 and h.name == "huber" and h.engine == "huber"
    assert get_loss(h) is h
    assert h.config() == {"name": "huber", "delta": 0.25}
    back = get_loss(h.config())
    assert isinstance(back, Huber) and back.delta == 0.25
    assert get_loss({"name": "huber"}).delta == 1.0
    assert get_loss({"name": "l1"}) is LOSSES["mae"]
    assert get_loss("mae").config() == "mae"
    copy = pickle.loads(pickle.dumps(h))
    assert isinstance(copy, Huber) and copy.delta == 0.25
    assert pickle.loads(pickle.dumps(get_loss("mae"))).name == "mae"
    assert "0.25" in repr(h)


@pytest.mark.parametrize("config, match", [
    ({"name": "huber", "delta": -1}, "delta"),
    ({"name": "huber", "beta": 1}, "beta"),
    ({"name": "mse", "delta": 1}, "mse"),
    ({"name": "nope"}, "nope"),
    ({"delta": 1.0}, "unknown loss"),
    ("huberr", "huberr"),
])
def test_bad_loss_configs(config, match):
    with pytest.raises(ValueError, match=match):
        get_loss(config)


@pytest.mark.parametrize("module", [ops, ref], ids=["c", "numpy"])
def test_loss_compute(module):
    rng = np.random.default_rng(14)
    a, t = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    sw = np.array([1.0, 0.0, 2.0, 0.5])
    for loss, want in [(get_loss("mse"), module.mse(a, t, sample_weight=sw)),
                       (get_loss("mae"), module.mae(a, t, sample_weight=sw)),
                       (Huber(0.3), module.huber(a, t, 0.3, sample_weight=sw))]:
        got = loss.compute(module, a, t, sample_weight=sw)
        assert got[0] == want[0] and np.array_equal(got[1], want[1])
    with pytest.raises(ValueError, match="fused"):
        get_loss("cross_entropy").compute(module, a, t)


# ---- models -----------------------------------------------------------------------------------

def _regression_model(loss, backend, dtype="float64"):
    model = fusenn.Sequential([fusenn.Dense(8, "tanh"), fusenn.Dense(2, "identity")],
                              input_dim=3, dtype=dtype, seed=0, backend=backend)
    model.compile(loss=loss, optimizer=fusenn.SGD(lr=0.05, momentum=0.5))
    return model


def _regression_data():
    rng = np.random.default_rng(15)
    X = rng.standard_normal((64, 3))
    y = np.stack([X[:, 0] - 0.5 * X[:, 1], np.sin(X[:, 2])], axis=1)
    y[::16] += 5  # outliers, where mae and huber differ from mse
    return X, y


@pytest.mark.parametrize("loss", ["mae", "huber", Huber(0.5)], ids=["mae", "huber", "huber0.5"])
def test_models_train_and_backends_agree(loss):
    X, y = _regression_data()
    histories, weights = [], []
    for backend in ("c", "numpy"):
        model = _regression_model(loss, backend)
        assert (model._engine() is not None) == (backend == "c")  # the C engine runs them
        h = model.fit(X, y, epochs=5, batch_size=16, shuffle=True)
        assert "accuracy" not in h.history
        histories.append(h.history["loss"])
        weights.append(model.get_weights())
    assert histories[0][-1] < histories[0][0]
    np.testing.assert_allclose(histories[0], histories[1], rtol=1e-10)
    for a, b in zip(*weights):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    result = model.evaluate(X, y)
    assert set(result) == {"loss"} and np.isfinite(result["loss"])


def test_poisson_model_learns_log_rates():
    """A Poisson GLM (one identity unit) in the engine and op by op, and the loss
    refusing other output activations: its output is a log-rate."""
    rng = np.random.default_rng(16)
    X = rng.standard_normal((400, 3))
    coef = np.array([0.3, -0.2, 0.5])
    y = rng.poisson(np.exp(X @ coef + 0.5))[:, None].astype(float)
    weights = []
    for backend in ("c", "numpy"):
        model = fusenn.Sequential([fusenn.Dense(1, "identity")], input_dim=3, dtype="float64",
                                  seed=0, backend=backend)
        model.compile(loss="poisson", optimizer=fusenn.SGD(lr=0.1))
        assert (model._engine() is not None) == (backend == "c")
        h = model.fit(X, y, epochs=40, batch_size=50)
        assert "accuracy" not in h.history and h.history["loss"][-1] < h.history["loss"][0]
        weights.append(model.get_weights())
    for a, b in zip(*weights):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(weights[0][0].ravel(), coef, atol=0.1)
    assert get_loss("poisson").output_activations == ("identity",)
    model = fusenn.Sequential([fusenn.Dense(1, "relu")], input_dim=3)
    with pytest.raises(ValueError, match="poisson.*identity"):
        model.compile(loss="poisson")


def test_model_save_load_keeps_huber_delta(tmp_path):
    X, y = _regression_data()
    model = _regression_model(Huber(0.3), "c", "float32")
    model.fit(X, y, epochs=1, batch_size=16)
    model.save(tmp_path / "m.npz")
    loaded = fusenn.load(tmp_path / "m.npz")
    assert isinstance(loaded.loss, Huber) and loaded.loss.delta == 0.3
    assert loaded.evaluate(X, y)["loss"] == model.evaluate(X, y)["loss"]
    again = pickle.loads(pickle.dumps(model))
    assert isinstance(again.loss, Huber) and again.loss.delta == 0.3
