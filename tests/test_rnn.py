"""Embedding, SimpleRNN, GRU and LSTM: the C kinds (csrc/layers/embedding.c,
simple_rnn.c, gru.c, lstm.c) against the NumPy reference, the same bits on any
thread count, finite-difference gradients, and training in the engine (bitwise
the op-by-op path, close to the NumPy backend, no allocation per step)."""

import itertools

import numpy as np
import pytest

import fusenn
from fusenn import _kernels, ops
from fusenn import reference as ref

DTYPES = [np.float32, np.float64]
GATE_ACTIVATIONS = [a for a in ops.ACTIVATIONS if a != "softmax"]

# name -> (op prefix, gates, extra options, bias shape for u units)
KINDS = {
    "simple_rnn": ("simple_rnn", 1, {}, lambda u: (u,)),
    "lstm": ("lstm", 4, {}, lambda u: (4 * u,)),
    "gru": ("gru", 3, {"reset_after": True}, lambda u: (2, 3 * u)),
    "gru-reset-before": ("gru", 3, {"reset_after": False}, lambda u: (3 * u,)),
}


def weights(kind, F, u, dtype, rng, scale=0.5):
    _, G, _, bias_shape = KINDS[kind]
    return [(scale * rng.standard_normal(shape)).astype(dtype)
            for shape in ((F, G * u), (u, G * u), bias_shape(u))]


def options(kind, **kw):
    return {**KINDS[kind][2], **kw}


def run(backend, kind, x, params, dy=None, **kw):
    """The forward output, or with dy the backward's (dx, dW, dU, db)."""
    prefix = KINDS[kind][0]
    if dy is None:
        return getattr(backend, f"{prefix}_forward")(x, *params, **options(kind, **kw))
    return getattr(backend, f"{prefix}_backward")(x, *params, dy, **options(kind, **kw))


def assert_close(got, want, dtype, what=""):
    if want is None:
        assert got is None, what
        return
    assert got.shape == want.shape and got.dtype == want.dtype, what
    scale = max(float(np.abs(want).max(initial=0)), 1.0)
    if dtype == np.float64:
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12 * scale, err_msg=what)
    else:
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5 * scale, err_msg=what)


def check_against_reference(kind, dtype, n, T, F, u, mask=None, seed=0, scale=0.5, **kw):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, T, F)).astype(dtype)
    params = weights(kind, F, u, dtype, rng, scale)
    want = run(ref, kind, x, params, mask=mask, **kw)
    assert_close(run(ops, kind, x, params, mask=mask, **kw), want, dtype, "forward")
    dy = rng.standard_normal(want.shape).astype(dtype)
    for need_dx in (True, False):
        got = run(ops, kind, x, params, dy, mask=mask, need_dx=need_dx, **kw)
        expected = run(ref, kind, x, params, dy, mask=mask, need_dx=need_dx, **kw)
        for name, g, e in zip(("dx", "dkernel", "drecurrent_kernel", "dbias"), got, expected):
            assert_close(g, e, dtype, name)


# ---- kernels against the reference -----------------------------------------------------------

SHAPES = {  # (n, T, F, u)
    "small": (3, 5, 4, 3),
    "one-step": (2, 1, 3, 4),
    "one-unit": (3, 6, 2, 1),
    "batch-1": (1, 7, 5, 6),
    "odd": (5, 9, 13, 17),
    "wide": (6, 4, 3, 40),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", KINDS)
def test_against_reference(kind, shape, dtype):
    n, T, F, u = SHAPES[shape]
    mask = np.random.default_rng(5).random((n, T)) > 0.3
    for seq, back, m in itertools.product((False, True), (False, True), (None, mask)):
        check_against_reference(kind, dtype, n, T, F, u, mask=m, return_sequences=seq,
                                go_backwards=back)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("kind", KINDS)
def test_two_hundred_steps(kind, dtype):
    mask = np.ones((2, 200), bool)
    mask[1, 150:] = False  # a padded tail
    for seq in (False, True):
        check_against_reference(kind, dtype, 2, 200, 3, 4, scale=0.3, return_sequences=seq,
                                mask=mask)


@pytest.mark.parametrize("kind", KINDS)
def test_masked_steps_and_samples(kind):
    """An all-masked sample keeps the zero state (and takes no gradient); a masked
    step repeats the state in the sequence."""
    rng = np.random.default_rng(3)
    n, T, F, u = 4, 6, 3, 5
    mask = rng.random((n, T)) > 0.4
    mask[0] = False
    mask[1] = True
    mask[2, 0] = False
    mask[2, 1] = True
    x = rng.standard_normal((n, T, F))
    params = weights(kind, F, u, np.float64, rng)
    y = run(ops, kind, x, params, mask=mask, return_sequences=True)
    assert np.all(y[0] == 0)
    for s in range(1, T):
        np.testing.assert_array_equal(y[~mask[:, s], s], y[~mask[:, s], s - 1])
    dx = run(ops, kind, x, params, np.ones_like(y), mask=mask, return_sequences=True)[0]
    assert np.all(dx[0] == 0) and np.all(dx[~mask] == 0)
    check_against_reference(kind, np.float64, n, T, F, u, mask=mask, return_sequences=True,
                            go_backwards=True)
    check_against_reference(kind, np.float32, n, T, F, u, mask=np.zeros((n, T), bool))


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("activation", GATE_ACTIVATIONS)
@pytest.mark.parametrize("kind", KINDS)
def test_every_activation(kind, activation, dtype):
    """Every elementwise activation as activation, and as recurrent_activation."""
    mask = np.random.default_rng(2).random((3, 4)) > 0.2
    check_against_reference(kind, dtype, 3, 4, 3, 5, activation=activation, mask=mask,
                            return_sequences=True)
    if kind != "simple_rnn":
        check_against_reference(kind, dtype, 3, 4, 3, 5, recurrent_activation=activation,
                                mask=mask)


def test_float32_gates_are_accurate():
    """The vectorised float32 sigmoid and tanh of the gates, through a one-step
    SimpleRNN with W = I (x W is exact): within 3 ulp of the float64 values (values
    under exp(-87) = 1.6e-38, where the exponential stops, within 2e-38)."""
    z = np.concatenate([np.linspace(-30, 30, 60001), np.linspace(-0.5, 0.5, 20001),
                        [0.0, -0.0, 1e-30, -1e-30, 1e-6, 88.0, -88.0, 1e4, -1e4]])
    z = z.astype(np.float32)
    x = z.reshape(-1, 1, 1)
    eye = np.ones((1, 1), np.float32)
    for activation, exact in (("sigmoid", lambda v: ref.activation_forward(v, "sigmoid")),
                              ("tanh", np.tanh)):
        y = ops.simple_rnn_forward(x, eye, np.zeros((1, 1), np.float32),
                                   np.zeros(1, np.float32), activation=activation)[:, 0]
        want = exact(z.astype(np.float64))
        ulp = np.spacing(np.abs(want).astype(np.float32)).astype(np.float64)
        assert np.all(np.abs(y - want) <= np.where(np.abs(want) < 2e-38, 2e-38, 3 * ulp)), \
            activation
    nan = ops.simple_rnn_forward(np.full((1, 1, 1), np.nan, np.float32), eye,
                                 np.zeros((1, 1), np.float32), np.zeros(1, np.float32))
    assert np.isnan(nan).all()


def test_embedding_against_reference():
    rng = np.random.default_rng(4)
    for dtype in DTYPES:
        table = rng.standard_normal((11, 7)).astype(dtype)
        x = rng.integers(0, 11, (5, 9))
        x[0] = 3  # repeated indices sum in order
        np.testing.assert_array_equal(ops.embedding_forward(x, table),
                                      ref.embedding_forward(x, table))
        dy = rng.standard_normal((5, 9, 7)).astype(dtype)
        np.testing.assert_array_equal(ops.embedding_backward(x, dy, table.shape),
                                      ref.embedding_backward(x, dy, table.shape))
    with pytest.raises(ValueError, match="largest is 11"):
        ops.embedding_forward(np.array([[0, 11]]), table)
    with pytest.raises(TypeError, match="integer"):
        ops.embedding_forward(np.zeros((2, 3)), table)


# ---- the same bits on any thread count -----------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_same_bits_on_one_to_three_threads(kind):
    """Large enough that the time loop and the products run on several threads."""
    rng = np.random.default_rng(7)
    n, T, F, u = 37, 9, 11, 64
    x = rng.standard_normal((n, T, F)).astype(np.float32)
    params = weights(kind, F, u, np.float32, rng, 0.3)
    mask = rng.random((n, T)) > 0.2
    results = []
    for threads in (1, 2, 3):
        with fusenn.threads(threads):
            y = run(ops, kind, x, params, mask=mask, return_sequences=True)
            grads = run(ops, kind, x, params, np.cos(y), mask=mask, return_sequences=True)
            results.append([y, *grads])
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


def test_embedding_gradient_same_bits_on_one_to_three_threads():
    rng = np.random.default_rng(8)
    x = rng.integers(0, 5, (300, 40))  # few rows: every one repeated many times
    dy = rng.standard_normal((300, 40, 70)).astype(np.float32)
    grads = []
    for threads in (1, 2, 3):
        with fusenn.threads(threads):
            grads.append(ops.embedding_backward(x, dy, (5, 70)))
    for g in grads[1:]:
        np.testing.assert_array_equal(grads[0], g)


# ---- finite differences (float64, through ops) -------------------------------------------------------

EPS = 1e-6


def numeric_grad(f, array, idx):
    old = array[idx]
    array[idx] = old + EPS
    up = f()
    array[idx] = old - EPS
    down = f()
    array[idx] = old
    return (up - down) / (2 * EPS)


def check_fd(loss, arrays, grads, rng, samples=6):
    for array, grad in zip(arrays, grads):
        for _ in range(samples):
            idx = tuple(rng.integers(0, s) for s in array.shape)
            num = numeric_grad(loss, array, idx)
            assert abs(num - grad[idx]) <= 1e-6 * max(1.0, abs(num)), (idx, num, grad[idx])


@pytest.mark.parametrize("masked", [False, True], ids=["unmasked", "masked"])
@pytest.mark.parametrize("seq", [False, True], ids=["last", "sequences"])
@pytest.mark.parametrize("kind", KINDS)
def test_finite_differences(kind, seq, masked):
    rng = np.random.default_rng(11)
    n, T, F, u = 3, 5, 4, 3
    x = rng.standard_normal((n, T, F))
    params = weights(kind, F, u, np.float64, rng, 0.8)
    mask = rng.random((n, T)) > 0.3 if masked else None
    kw = dict(return_sequences=seq, go_backwards=masked, mask=mask)
    g = rng.standard_normal(run(ops, kind, x, params, **kw).shape)
    grads = run(ops, kind, x, params, g, **kw)
    check_fd(lambda: float((run(ops, kind, x, params, **kw) * g).sum()), [x, *params], grads,
             rng)


@pytest.mark.parametrize("kinds", [("simple_rnn", "lstm"), ("lstm", "gru"),
                                   ("gru-reset-before", "simple_rnn")], ids="-".join)
def test_finite_differences_stacked(kinds):
    """Two layers, the first returning sequences into the second, with a mask."""
    rng = np.random.default_rng(12)
    n, T, F, u1, u2 = 3, 4, 3, 4, 3
    x = rng.standard_normal((n, T, F))
    p1 = weights(kinds[0], F, u1, np.float64, rng, 0.8)
    p2 = weights(kinds[1], u1, u2, np.float64, rng, 0.8)
    mask = rng.random((n, T)) > 0.25

    def forward():
        h = run(ops, kinds[0], x, p1, mask=mask, return_sequences=True)
        return h, run(ops, kinds[1], h, p2, mask=mask)

    h, y = forward()
    g = rng.standard_normal(y.shape)
    dh, *g2 = run(ops, kinds[1], h, p2, g, mask=mask)
    dx, *g1 = run(ops, kinds[0], x, p1, dh, mask=mask, return_sequences=True)
    check_fd(lambda: float((forward()[1] * g).sum()), [x, *p1, *p2], [dx, *g1, *g2], rng)


# ---- the reference's own checks ---------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_reference_finite_differences(kind):
    """The NumPy twins against finite differences, every option."""
    rng = np.random.default_rng(0)
    n, T, F, u = 3, 5, 4, 3
    x = rng.standard_normal((n, T, F))
    mask = rng.random((n, T)) > 0.3
    for seq, back, m in itertools.product((False, True), (False, True), (None, mask)):
        params = weights(kind, F, u, np.float64, rng, 1.0)
        kw = dict(return_sequences=seq, go_backwards=back, mask=m)
        g = rng.standard_normal(run(ref, kind, x, params, **kw).shape)
        grads = run(ref, kind, x, params, g, **kw)
        check_fd(lambda: float((run(ref, kind, x, params, **kw) * g).sum()), [x, *params],
                 grads, rng, samples=4)


def test_reference_all_masked_sample_is_zero():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 5, 4))
    mask = np.ones((3, 5), bool)
    mask[0] = False
    y = ref.lstm_forward(x, *weights("lstm", 4, 3, np.float64, rng, 1.0), mask=mask)
    assert np.all(y[0] == 0)


def test_reference_matches_pytorch():
    """Keras's LSTM gates (i, f, c, o) are PyTorch's (i, f, g, o); Keras's GRU (z, r, h)
    is PyTorch's (r, z, n) reordered; reset_after is PyTorch's GRU."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    n, T, F, u = 2, 6, 4, 3
    x = rng.standard_normal((n, T, F))
    W, U, b = weights("lstm", F, u, np.float64, rng, 1.0)
    lstm = torch.nn.LSTM(F, u, batch_first=True, dtype=torch.float64)
    with torch.no_grad():
        lstm.weight_ih_l0.copy_(torch.tensor(W.T))
        lstm.weight_hh_l0.copy_(torch.tensor(U.T))
        lstm.bias_ih_l0.copy_(torch.tensor(b))
        lstm.bias_hh_l0.zero_()
    want = lstm(torch.tensor(x))[0].detach().numpy()
    np.testing.assert_allclose(ref.lstm_forward(x, W, U, b, return_sequences=True), want,
                               atol=1e-14)
    np.testing.assert_allclose(ops.lstm_forward(x, W, U, b, return_sequences=True), want,
                               atol=1e-13)

    def perm(a):
        return np.concatenate([a[..., u:2 * u], a[..., :u], a[..., 2 * u:]], axis=-1)

    W, U, b = weights("gru", F, u, np.float64, rng, 1.0)
    gru = torch.nn.GRU(F, u, batch_first=True, dtype=torch.float64)
    with torch.no_grad():
        gru.weight_ih_l0.copy_(torch.tensor(perm(W).T))
        gru.weight_hh_l0.copy_(torch.tensor(perm(U).T))
        gru.bias_ih_l0.copy_(torch.tensor(perm(b[0])))
        gru.bias_hh_l0.copy_(torch.tensor(perm(b[1])))
    want = gru(torch.tensor(x))[0].detach().numpy()
    np.testing.assert_allclose(ref.gru_forward(x, W, U, b, return_sequences=True), want,
                               atol=1e-14)
    np.testing.assert_allclose(ops.gru_forward(x, W, U, b, return_sequences=True), want,
                               atol=1e-13)


# ---- training in the engine --------------------------------------------------------------------

def _optimizer(op_by_op):
    cls = fusenn.Adam
    if op_by_op:  # a subclass, which the engine does not take
        cls = type("OpByOpAdam", (cls,), {})
    return cls(lr=0.01)


def _text_data(n, T, vocab, classes, rng, per_step):
    X = rng.integers(1, vocab, (n, T))
    lengths = rng.integers(1, T + 1, n)
    X[np.arange(T) >= lengths[:, None]] = 0  # padded tails
    X[3] = 0  # a sample of padding only
    y = rng.integers(0, classes, (n, T) if per_step else n)
    return X, y


NETS = {  # name -> (input shape, layers, data(rng, dtype))
    "embedding-gru-dense-per-step": (
        (7,), lambda: [fusenn.Embedding(20, 6, mask_zero=True),
                       fusenn.GRU(5, return_sequences=True), fusenn.Dense(4, "softmax")],
        lambda rng, dtype: _text_data(40, 7, 20, 4, rng, True)),
    "lstm-dense": (
        (6, 5), lambda: [fusenn.LSTM(8), fusenn.Dense(3, "softmax")],
        lambda rng, dtype: (rng.standard_normal((40, 6, 5)).astype(dtype),
                            rng.integers(0, 3, 40))),
    "stacked-simple_rnn-lstm": (
        (6, 5), lambda: [fusenn.SimpleRNN(7, return_sequences=True, go_backwards=True),
                         fusenn.LSTM(6, return_sequences=True), fusenn.LSTM(4),
                         fusenn.Dense(2, "softmax")],
        lambda rng, dtype: (rng.standard_normal((40, 6, 5)).astype(dtype),
                            rng.integers(0, 2, 40))),
    "embedding-lstm-pool": (
        (8,), lambda: [fusenn.Embedding(15, 4, mask_zero=True),
                       fusenn.LSTM(6, return_sequences=True), fusenn.GlobalAveragePooling1D(),
                       fusenn.Dense(3, "softmax")],
        lambda rng, dtype: _text_data(40, 8, 15, 3, rng, False)),
    "gru-reset-before-mse": (
        (5, 3), lambda: [fusenn.GRU(6, reset_after=False, activation="relu",
                                    recurrent_activation="swish", return_sequences=True),
                         fusenn.SimpleRNN(4, activation="gelu"), fusenn.Dense(2)],
        lambda rng, dtype: (rng.standard_normal((40, 5, 3)).astype(dtype),
                            rng.standard_normal((40, 2)).astype(dtype))),
}


def _model(net, dtype, op_by_op=False, backend="c"):
    in_shape, layers, _ = NETS[net]
    model = fusenn.Sequential(layers(), input_shape=in_shape, dtype=dtype, seed=5,
                              backend=backend)
    loss = "mse" if net.endswith("mse") else "cross_entropy"
    model.compile(loss=loss, optimizer=_optimizer(op_by_op))
    return model


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("net", NETS)
def test_engine_is_bitwise_the_op_by_op_path(net, dtype):
    X, y = NETS[net][2](np.random.default_rng(1), dtype)
    engine, by_op = _model(net, dtype), _model(net, dtype, op_by_op=True)
    assert engine._engine() is not None and by_op._engine() is None
    for _ in range(3):
        assert engine.train_on_batch(X, y) == by_op.train_on_batch(X, y)
    h1 = engine.fit(X, y, epochs=2, batch_size=16, verbose=0)
    h2 = by_op.fit(X, y, epochs=2, batch_size=16, verbose=0)
    for a, b in zip(engine.get_weights(), by_op.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert {k: v for k, v in h1.history.items() if k != "time"} == \
        {k: v for k, v in h2.history.items() if k != "time"}
    np.testing.assert_array_equal(engine.predict(X), by_op.predict(X))
    assert engine.evaluate(X, y) == by_op.evaluate(X, y)


@pytest.mark.parametrize("net", NETS)
def test_engine_is_close_to_the_numpy_backend(net):
    X, y = NETS[net][2](np.random.default_rng(2), "float64")
    c, numpy = _model(net, "float64"), _model(net, "float64", backend="numpy")
    for _ in range(3):
        assert c.train_on_batch(X, y) == pytest.approx(numpy.train_on_batch(X, y), rel=1e-10)
    for a, b in zip(c.get_weights(), numpy.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(c.predict(X), numpy.predict(X), rtol=1e-8, atol=1e-10)


def test_engine_same_bits_on_one_to_three_threads():
    rng = np.random.default_rng(3)
    X, y = _text_data(96, 12, 30, 5, rng, True)
    results = []
    for threads in (1, 2, 3):
        model = fusenn.Sequential([fusenn.Embedding(30, 16, mask_zero=True),
                                   fusenn.LSTM(40, return_sequences=True),
                                   fusenn.GRU(36, return_sequences=True),
                                   fusenn.Dense(5, "softmax")], input_shape=(12,), seed=2)
        model.compile("cross_entropy", fusenn.Adam(lr=0.01))
        with fusenn.threads(threads):
            model.fit(X, y, epochs=2, batch_size=48, verbose=0)
            results.append(model.get_weights() + [model.predict(X)])
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


def test_no_allocation_per_step():
    rng = np.random.default_rng(4)
    X, y = _text_data(64, 10, 25, 4, rng, False)
    model = fusenn.Sequential([fusenn.Embedding(25, 12, mask_zero=True), fusenn.GRU(40),
                               fusenn.Dense(4, "softmax")], input_shape=(10,), seed=1)
    model.compile("cross_entropy", "adam")
    with fusenn.threads(2):
        model.fit(X, y, epochs=1, batch_size=32, verbose=0)  # warm-up: arena, packing buffers
        model.train_on_batch(X[:32], y[:32])
        before = _kernels.allocation_count()
        model.fit(X, y, epochs=3, batch_size=32, verbose=0)
        for _ in range(10):
            model.train_on_batch(X[:32], y[:32])
    assert _kernels.allocation_count() == before


# ---- bad input --------------------------------------------------------------------------------

def test_bad_input_names_the_problem():
    text = fusenn.Sequential([fusenn.Embedding(10, 4), fusenn.LSTM(3), fusenn.Dense(2, "softmax")],
                             input_shape=(5,), seed=0)
    text.compile("cross_entropy", "adam")
    X = np.arange(10).reshape(2, 5) % 10
    y = np.array([0, 1])
    with pytest.raises(TypeError, match="integer"):
        text.fit(X.astype(np.float32), y, verbose=0)
    with pytest.raises(ValueError, match="largest is 12"):
        text.fit(np.where(X == 3, 12, X), y, verbose=0)
    with pytest.raises(ValueError, match="shape"):
        text.predict(X[:, :4])
    with pytest.raises(ValueError, match="shape"):
        text.predict(X[:, :, None])
    series = fusenn.Sequential([fusenn.GRU(3), fusenn.Dense(2, "softmax")], input_shape=(5, 2))
    series.compile("cross_entropy", "adam")
    Xs = np.zeros((2, 5, 2), np.float32)
    with pytest.raises(ValueError, match="shape"):
        series.fit(np.zeros((2, 4, 2), np.float32), y, verbose=0)
    with pytest.raises(ValueError, match="shape"):
        series.predict(Xs[:, :, 0])
    with pytest.raises(ValueError):
        fusenn.Sequential([fusenn.LSTM(3)], input_shape=(4, 4, 2))
    assert series.fit(Xs, y, verbose=0) is not None


def test_ops_refuse_bad_arguments():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 4))
    W, U, b = weights("lstm", 4, 5, np.float64, rng)
    with pytest.raises(ValueError, match="recurrent_kernel"):
        ops.lstm_forward(x, W, U[:, :-1], b)
    with pytest.raises(ValueError, match="kernel"):
        ops.lstm_forward(x[:, :, :3], W, U, b)
    with pytest.raises(ValueError, match="bias"):
        ops.lstm_forward(x, W, U, b[:-1])
    with pytest.raises(ValueError, match="x"):
        ops.lstm_forward(x[0], W, U, b)
    with pytest.raises(TypeError, match="float"):
        ops.lstm_forward(x.astype(np.float32), W, U, b)
    with pytest.raises(ValueError, match="mask"):
        ops.lstm_forward(x, W, U, b, mask=np.ones((2, 4), bool))
    with pytest.raises(ValueError, match="softmax"):
        ops.lstm_forward(x, W, U, b, recurrent_activation="softmax")
    with pytest.raises(ValueError, match="dy"):
        ops.lstm_backward(x, W, U, b, np.zeros((2, 3, 5)))
    Wg, Ug, bg = weights("gru", 4, 5, np.float64, rng)
    with pytest.raises(ValueError, match="bias"):
        ops.gru_forward(x, Wg, Ug, bg, reset_after=False)
