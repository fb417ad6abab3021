"""Sequential end to end: hand-checked updates, backend agreement, training, determinism,
and the messages of rejected input."""

import math

import numpy as np
import pytest

import fusenn

BACKENDS = ("c", "numpy")
DTYPES = ("float32", "float64")


def make_model(sizes, activations, loss="cross_entropy", optimizer="sgd", seed=0,
               backend="c", dtype="float64"):
    layers = [fusenn.Dense(units, act) for units, act in zip(sizes[1:], activations)]
    model = fusenn.Sequential(layers, input_dim=sizes[0], dtype=dtype, seed=seed, backend=backend)
    model.compile(loss=loss, optimizer=optimizer)
    return model


def assert_weights_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def all_finite(model):
    return all(np.all(np.isfinite(w)) for w in model.get_weights())


# ---- hand-worked updates ------------------------------------------------------------
# The expected values come from scalar Python arithmetic written out below, not from
# fusenn.reference, so both backends are checked against an independent oracle.

def sigmoid(z):
    return 1.0 / (1.0 + math.exp(-z))


def zeros_like_nested(params):
    return [np.zeros_like(p) for p in params]


def sigmoid_mlp_mse_by_hand(params, X, T):
    """2 -> 2 sigmoid -> 1 sigmoid, mse. Returns (loss, [gW1, gb1, gW2, gb2])."""
    W1, b1, W2, b2 = params
    gW1, gb1, gW2, gb2 = grads = zeros_like_nested(params)
    n, loss = len(X), 0.0
    for x, (t,) in zip(X, T):
        h = [sigmoid(x[0] * W1[0, j] + x[1] * W1[1, j] + b1[j]) for j in range(2)]
        o = sigmoid(h[0] * W2[0, 0] + h[1] * W2[1, 0] + b2[0])
        loss += (o - t) ** 2 / n
        dz2 = 2.0 * (o - t) / n * o * (1.0 - o)
        gb2[0] += dz2
        for j in range(2):
            gW2[j, 0] += h[j] * dz2
            dz1 = dz2 * W2[j, 0] * h[j] * (1.0 - h[j])
            gb1[j] += dz1
            for i in range(2):
                gW1[i, j] += x[i] * dz1
    return loss, grads


def softmax_ce_by_hand(params, X, labels):
    """2 -> 3 softmax, cross-entropy. Returns (loss, [gW, gb])."""
    W, b = params
    gW, gb = grads = zeros_like_nested(params)
    n, loss = len(X), 0.0
    for x, label in zip(X, labels):
        z = [x[0] * W[0, k] + x[1] * W[1, k] + b[k] for k in range(3)]
        total = sum(math.exp(zk) for zk in z)
        p = [math.exp(zk) / total for zk in z]
        loss += -math.log(p[label]) / n
        for k in range(3):
            dz = (p[k] - (1.0 if k == label else 0.0)) / n
            gb[k] += dz
            for i in range(2):
                gW[i, k] += x[i] * dz
    return loss, grads


HAND_NETS = {
    "sigmoid-mse": dict(
        sizes=(2, 2, 1), activations=("sigmoid", "sigmoid"), loss="mse",
        weights=[np.array([[0.15, -0.25], [0.2, 0.3]]), np.array([0.35, -0.1]),
                 np.array([[0.4], [-0.45]]), np.array([0.6])],
        X=np.array([[0.05, 0.1], [-0.3, 0.8], [1.0, -0.5]]),
        y=np.array([[0.01], [0.99], [0.5]]),
        by_hand=sigmoid_mlp_mse_by_hand),
    "softmax-ce": dict(
        sizes=(2, 3), activations=("softmax",), loss="cross_entropy",
        weights=[np.array([[0.1, -0.2, 0.3], [0.4, 0.05, -0.6]]), np.array([0.01, -0.02, 0.03])],
        X=np.array([[1.0, 2.0], [-0.5, 0.25], [0.3, -1.2], [2.0, 0.1]]),
        y=np.array([2, 0, 1, 0]),
        by_hand=softmax_ce_by_hand),
}


def sgd_by_hand(params, grads, state, lr, momentum=0.0, nesterov=False):
    velocity = state.setdefault("velocity", zeros_like_nested(params))
    for w, g, v in zip(params, grads, velocity):
        for i in np.ndindex(w.shape):
            v[i] = momentum * v[i] + g[i]
            w[i] -= lr * (g[i] + momentum * v[i] if nesterov else v[i])


def adam_by_hand(params, grads, state, lr, beta1=0.9, beta2=0.999, eps=1e-8):
    m_all = state.setdefault("m", zeros_like_nested(params))
    v_all = state.setdefault("v", zeros_like_nested(params))
    t = state["t"] = state.get("t", 0) + 1
    for w, g, m, v in zip(params, grads, m_all, v_all):
        for i in np.ndindex(w.shape):
            m[i] = beta1 * m[i] + (1 - beta1) * g[i]
            v[i] = beta2 * v[i] + (1 - beta2) * g[i] ** 2
            m_hat = m[i] / (1 - beta1 ** t)
            v_hat = v[i] / (1 - beta2 ** t)
            w[i] -= lr * m_hat / (math.sqrt(v_hat) + eps)


def adamw_by_hand(params, grads, state, weight_decay, **adam):
    """PyTorch's AdamW, with the biases (1-D) left undecayed."""
    lr = adam["lr"]
    before = [w.copy() for w in params]
    adam_by_hand(params, grads, state, **adam)
    for w, w0 in zip(params, before):
        if w.ndim >= 2:
            w -= lr * weight_decay * w0


def rmsprop_by_hand(params, grads, state, lr, rho=0.9, eps=1e-7):
    v_all = state.setdefault("v", zeros_like_nested(params))
    for w, g, v in zip(params, grads, v_all):
        for i in np.ndindex(w.shape):
            v[i] = rho * v[i] + (1 - rho) * g[i] ** 2
            w[i] -= lr * g[i] / (math.sqrt(v[i]) + eps)


def adagrad_by_hand(params, grads, state, lr, eps=1e-10):
    v_all = state.setdefault("v", zeros_like_nested(params))
    for w, g, v in zip(params, grads, v_all):
        for i in np.ndindex(w.shape):
            v[i] += g[i] ** 2
            w[i] -= lr * g[i] / (math.sqrt(v[i]) + eps)


def preprocess_by_hand(update, l2=0.0, clipnorm=None, global_clipnorm=None, clipvalue=None):
    """`update` preceded by Keras' gradient preprocessing, written out: the L2
    penalty's gradient on weight matrices, norm clipping, value clipping."""
    def preprocessed(params, grads, state, **hyper):
        grads = [g + l2 * w if w.ndim >= 2 else g.copy() for w, g in zip(params, grads)]
        norms = [math.sqrt(sum(x * x for x in g.ravel())) for g in grads]
        if clipnorm is not None:
            grads = [g * clipnorm / max(n, clipnorm) for g, n in zip(grads, norms)]
        if global_clipnorm is not None:
            total = math.sqrt(sum(n * n for n in norms))
            grads = [g * global_clipnorm / max(total, global_clipnorm) for g in grads]
        if clipvalue is not None:
            grads = [np.clip(g, -clipvalue, clipvalue) for g in grads]
        update(params, grads, state, **hyper)
    return preprocessed


HAND_OPTIMIZERS = {
    "sgd": (lambda: fusenn.SGD(lr=0.5), sgd_by_hand, dict(lr=0.5)),
    "momentum": (lambda: fusenn.SGD(lr=0.5, momentum=0.9), sgd_by_hand,
                 dict(lr=0.5, momentum=0.9)),
    "nesterov": (lambda: fusenn.SGD(lr=0.5, momentum=0.9, nesterov=True), sgd_by_hand,
                 dict(lr=0.5, momentum=0.9, nesterov=True)),
    "adam": (lambda: fusenn.Adam(lr=0.05, beta1=0.8, beta2=0.95, eps=1e-3), adam_by_hand,
             dict(lr=0.05, beta1=0.8, beta2=0.95, eps=1e-3)),
    "adamw": (lambda: fusenn.AdamW(lr=0.05, beta1=0.8, beta2=0.95, eps=1e-3, weight_decay=0.3),
              adamw_by_hand, dict(lr=0.05, beta1=0.8, beta2=0.95, eps=1e-3, weight_decay=0.3)),
    "rmsprop": (lambda: fusenn.RMSprop(lr=0.05, rho=0.8, eps=1e-4), rmsprop_by_hand,
                dict(lr=0.05, rho=0.8, eps=1e-4)),
    "adagrad": (lambda: fusenn.Adagrad(lr=0.2, eps=1e-6), adagrad_by_hand,
                dict(lr=0.2, eps=1e-6)),
    # thresholds low enough to clip on these nets
    "sgd-l2-clipnorm": (lambda: fusenn.SGD(lr=0.5, momentum=0.9, l2=0.2, clipnorm=0.05),
                        preprocess_by_hand(sgd_by_hand, l2=0.2, clipnorm=0.05),
                        dict(lr=0.5, momentum=0.9)),
    "adam-l2-global-clipvalue": (
        lambda: fusenn.Adam(lr=0.05, l2=0.1, global_clipnorm=0.05, clipvalue=0.01),
        preprocess_by_hand(adam_by_hand, l2=0.1, global_clipnorm=0.05, clipvalue=0.01),
        dict(lr=0.05)),
    "rmsprop-clipvalue": (lambda: fusenn.RMSprop(lr=0.05, clipvalue=0.02),
                          preprocess_by_hand(rmsprop_by_hand, clipvalue=0.02), dict(lr=0.05)),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("optimizer", HAND_OPTIMIZERS)
@pytest.mark.parametrize("net", HAND_NETS)
def test_updates_match_hand_computation(net, optimizer, backend):
    spec = HAND_NETS[net]
    make_optimizer, update_by_hand, hyper = HAND_OPTIMIZERS[optimizer]
    model = make_model(spec["sizes"], spec["activations"], spec["loss"], make_optimizer(),
                       backend=backend)
    model.set_weights(spec["weights"])
    expected = [w.copy() for w in spec["weights"]]
    state = {}
    for step in range(3):  # several steps, so momentum and Adam's moments matter
        expected_loss, grads = spec["by_hand"](expected, spec["X"], spec["y"])
        update_by_hand(expected, grads, state, **hyper)
        loss = model.train_on_batch(spec["X"], spec["y"])
        assert loss == pytest.approx(expected_loss, rel=1e-12, abs=1e-14)
        for got, want in zip(model.get_weights(), expected):
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-12, err_msg=f"step {step + 1}")


# ---- the two backends agree --------------------------------------------------------------

AGREEMENT_OPTIMIZERS = {
    "momentum": lambda: fusenn.SGD(lr=0.1, momentum=0.9),
    "nesterov": lambda: fusenn.SGD(lr=0.1, momentum=0.9, nesterov=True),
    "adam": lambda: fusenn.Adam(lr=0.01),
    "adamw": lambda: fusenn.AdamW(lr=0.01, weight_decay=0.1),
    "rmsprop": lambda: fusenn.RMSprop(lr=0.01),
    "adagrad": lambda: fusenn.Adagrad(lr=0.05),
    "sgd-l2-global": lambda: fusenn.SGD(lr=0.1, momentum=0.9, l2=0.01, global_clipnorm=0.5),
    "adam-clipnorm-clipvalue": lambda: fusenn.Adam(lr=0.01, clipnorm=0.3, clipvalue=0.05),
}
AGREEMENT_TOLERANCE = {"float32": dict(rtol=1e-4, atol=1e-5), "float64": dict(rtol=1e-10, atol=1e-12)}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("optimizer", AGREEMENT_OPTIMIZERS)
def test_c_and_numpy_backends_agree(dtype, optimizer):
    sizes, acts = (20, 16, 8, 4), ("relu", "tanh", "softmax")
    models = {b: make_model(sizes, acts, optimizer=AGREEMENT_OPTIMIZERS[optimizer](), seed=7,
                            backend=b, dtype=dtype) for b in BACKENDS}
    assert_weights_equal(models["c"].get_weights(), models["numpy"].get_weights())
    rng = np.random.default_rng(1)
    tol = AGREEMENT_TOLERANCE[dtype]
    for _ in range(8):
        X, y = rng.normal(size=(16, 20)), rng.integers(0, 4, size=16)
        losses = [models[b].train_on_batch(X, y) for b in BACKENDS]
        np.testing.assert_allclose(losses[0], losses[1], **tol)
    for got, want in zip(models["c"].get_weights(), models["numpy"].get_weights()):
        assert got.dtype == want.dtype == np.dtype(dtype)
        np.testing.assert_allclose(got, want, **tol)
    np.testing.assert_allclose(models["c"].predict(X), models["numpy"].predict(X), **tol)


# ---- real training ---------------------------------------------------------------------------

def test_digits_mlp_reaches_95_percent():
    X, y = fusenn.datasets.load_digits()
    X_train, X_test, y_train, y_test = fusenn.datasets.train_test_split(X, y, seed=0, stratify=y)
    model = fusenn.Sequential([fusenn.Dense(64, "relu"), fusenn.Dense(10, "softmax")],
                              input_dim=64, seed=0)
    model.compile(loss="cross_entropy", optimizer=fusenn.SGD(lr=0.1, momentum=0.9))
    epochs = 20
    hist = model.fit(X_train, y_train, epochs=epochs, batch_size=32,
                     validation_data=(X_test, y_test), verbose=0)
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert len(hist.history[key]) == epochs
    assert hist.epoch == list(range(epochs))
    loss = hist.history["loss"]
    assert loss[-1] < 0.2 * loss[0]
    assert loss[-1] < min(loss[:5])
    result = model.evaluate(X_test, y_test)
    assert result["accuracy"] >= 0.95
    assert result["accuracy"] == pytest.approx(hist.history["val_accuracy"][-1])
    assert np.mean(model.predict(X_test).argmax(axis=1) == y_test) == result["accuracy"]


THREAD_OPTIMIZERS = {"momentum": lambda: fusenn.SGD(lr=0.05, momentum=0.9),
                     "adam": lambda: fusenn.Adam(lr=1e-3)}


def train_big_model(optimizer, dtype, n_threads):
    """Layers big enough that GEMM, the dZ/db pass, the loss and the updates go parallel."""
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(512, 300)), rng.integers(0, 128, size=512)
    with fusenn.threads(n_threads):
        model = make_model((300, 256, 128), ("relu", "softmax"), optimizer=THREAD_OPTIMIZERS[optimizer](),
                           dtype=dtype)
        hist = model.fit(X, y, epochs=2, batch_size=256, verbose=0)
        return model.get_weights(), hist.history["loss"], model.predict(X)


@pytest.mark.parametrize("n_threads", [2, 3])  # 3 > the row blocks: GEMM's column-split path
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("optimizer", THREAD_OPTIMIZERS)
def test_results_do_not_depend_on_thread_count(optimizer, dtype, n_threads):
    w1, loss1, pred1 = train_big_model(optimizer, dtype, 1)
    wn, lossn, predn = train_big_model(optimizer, dtype, n_threads)
    assert loss1 == lossn
    assert_weights_equal(w1, wn)
    np.testing.assert_array_equal(pred1, predn)


def fit_shuffled(seed, initial_weights=None):
    rng = np.random.default_rng(5)
    X, y = rng.normal(size=(60, 6)), rng.integers(0, 3, size=60)
    model = make_model((6, 8, 3), ("tanh", "softmax"), optimizer=fusenn.SGD(lr=0.1), seed=seed)
    if initial_weights is not None:
        model.set_weights(initial_weights)
    initial = model.get_weights()
    model.fit(X, y, epochs=3, batch_size=8, shuffle=True, verbose=0)
    return initial, model.get_weights()


def test_seeded_fit_is_reproducible():
    initial_a, trained_a = fit_shuffled(seed=11)
    initial_b, trained_b = fit_shuffled(seed=11)
    assert_weights_equal(initial_a, initial_b)
    assert_weights_equal(trained_a, trained_b)


def test_different_seeds_give_different_initialisation_and_shuffling():
    initial_a, trained_a = fit_shuffled(seed=11)
    initial_c, _ = fit_shuffled(seed=12)
    assert not np.array_equal(initial_a[0], initial_c[0])
    # same starting weights, different seed: only the shuffling differs
    _, trained_d = fit_shuffled(seed=12, initial_weights=initial_a)
    assert not np.array_equal(trained_a[0], trained_d[0])


def xor_problem():
    X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=float)
    return X, np.array([[0], [1], [1], [0]], dtype=float)


def linear_problem():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(200, 3))
    return X, X @ np.array([[1.5, -1.0], [0.5, 2.0], [-2.0, 0.25]]) + np.array([0.3, -0.7])


TRAINING_PROBLEMS = {
    "xor-bce": dict(problem=xor_problem, sizes=(2, 8, 1), activations=("tanh", "sigmoid"),
                    loss="binary_cross_entropy", optimizer=lambda: fusenn.Adam(lr=0.05),
                    epochs=300, batch_size=4, keys={"loss", "accuracy"}, final_loss=0.1),
    "xor-bce-logits": dict(problem=xor_problem, sizes=(2, 8, 1), activations=("tanh", "identity"),
                           loss="binary_cross_entropy", optimizer=lambda: fusenn.Adam(lr=0.05),
                           epochs=300, batch_size=4, keys={"loss", "accuracy"}, final_loss=0.1),
    "linear-mse": dict(problem=linear_problem, sizes=(3, 2), activations=("identity",),
                       loss="mse", optimizer=lambda: fusenn.SGD(lr=0.05, momentum=0.5),
                       epochs=30, batch_size=20, keys={"loss"}, final_loss=1e-4),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", TRAINING_PROBLEMS)
def test_small_problems_train(name, backend):
    spec = TRAINING_PROBLEMS[name]
    X, y = spec["problem"]()
    model = make_model(spec["sizes"], spec["activations"], spec["loss"], spec["optimizer"](),
                       seed=1, backend=backend)
    before = model.evaluate(X, y)
    assert set(before) == spec["keys"]
    hist = model.fit(X, y, epochs=spec["epochs"], batch_size=spec["batch_size"], verbose=0)
    assert set(hist.history) == spec["keys"] | {"time"}
    after = model.evaluate(X, y)
    assert after["loss"] < spec["final_loss"] < before["loss"]
    if "accuracy" in after:
        assert after["accuracy"] == 1.0
    pred = model.predict(X)
    assert pred.shape == y.shape and pred.dtype == np.float64


def test_linear_regression_recovers_coefficients():
    X, y = linear_problem()
    model = make_model((3, 2), ("linear",), "mse", fusenn.SGD(lr=0.05, momentum=0.5), seed=1)
    model.fit(X, y, epochs=60, batch_size=20, verbose=0)
    W, b = model.get_weights()
    np.testing.assert_allclose(W, [[1.5, -1.0], [0.5, 2.0], [-2.0, 0.25]], atol=1e-3)
    np.testing.assert_allclose(b, [0.3, -0.7], atol=1e-3)


def test_mse_accepts_1d_targets_for_one_output():
    X, y = linear_problem()
    model = make_model((3, 1), ("identity",), "mse")
    assert set(model.evaluate(X, y[:, 0])) == {"loss"}
    model.train_on_batch(X, y[:, 0])
    assert model.predict(X).shape == (200, 1)


# ---- divergence ---------------------------------------------------------------------------

def diverging_model(dtype):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, 4))
    model = make_model((4, 8, 1), ("relu", "identity"), "mse", fusenn.SGD(lr=1e3), dtype=dtype)
    return model, X, X @ rng.normal(size=(4, 1))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch_size", [16, 64], ids=["4-batches-per-epoch", "1-batch-per-epoch"])
def test_diverging_fit_raises_and_keeps_finite_weights(batch_size, dtype):
    model, X, y = diverging_model(dtype)
    with pytest.raises(ValueError, match="diverged.*learning rate"):
        model.fit(X, y, epochs=50, batch_size=batch_size, verbose=0)
    assert all_finite(model)
    model.predict(X)  # still usable


@pytest.mark.parametrize("dtype", DTYPES)
def test_diverging_train_on_batch_raises_and_keeps_finite_weights(dtype):
    model, X, y = diverging_model(dtype)
    with pytest.raises(ValueError, match="diverged.*learning rate"):
        for _ in range(50):
            model.train_on_batch(X, y)
    assert all_finite(model)


# ---- rejected input ---------------------------------------------------------------------------
# Each case: (call(model, X, y), exception, pattern the message must match). `model` is a
# compiled 4 -> 3 softmax model, X (5, 4) and y (5,) are valid data.

def call_with_X(model, method, X, y):
    """model.<method> on X (and on y resized to len(X), so only X is wrong)."""
    if method == "predict":
        return model.predict(X)
    kwargs = {"verbose": 0} if method == "fit" else {}
    return getattr(model, method)(X, np.resize(y, len(X)), **kwargs)


BAD_X = {
    "too-wide": (np.ones((5, 5)), ValueError, r"X must have shape \(n_samples, 4\), got \(5, 5\)"),
    "too-narrow": (np.ones((5, 3)), ValueError, r"X must have shape \(n_samples, 4\), got \(5, 3\)"),
    "1-D": (np.ones(4), ValueError, r"X must be 2-D with shape \(n_samples, 4\), got shape \(4,\)"),
    "3-D": (np.ones((5, 4, 1)), ValueError, r"X must be 2-D with shape \(n_samples, 4\)"),
    "strings": (np.full((5, 4), "1.0"), TypeError, r"X must hold numbers, got dtype <U3"),
    "objects": (np.ones((5, 4), dtype=object), TypeError, r"X must hold numbers, got dtype object"),
    "nan": (np.where(np.eye(5, 4) > 0, np.nan, 1.0), ValueError, r"X contains NaN or infinity"),
    "inf": (np.where(np.eye(5, 4) > 0, -np.inf, 1.0), ValueError, r"X contains NaN or infinity"),
    "empty": (np.ones((0, 4)), ValueError, r"X is empty.*shape \(0, 4\)"),
}


@pytest.mark.parametrize("method", ["fit", "train_on_batch", "evaluate", "predict"])
@pytest.mark.parametrize("case", BAD_X)
def test_bad_X_is_rejected_with_a_clear_message(case, method, small_model, data):
    bad_X, exc, pattern = BAD_X[case]
    before = small_model.get_weights()
    with pytest.raises(exc, match=pattern):
        call_with_X(small_model, method, bad_X, data[1])
    assert_weights_equal(small_model.get_weights(), before)


BAD_Y = {
    "too-short": (np.array([0, 1, 2, 0]), ValueError,
                  r"y must be integer class labels of shape \(5,\), got shape \(4,\)"),
    "too-long": (np.zeros(6, dtype=int), ValueError, r"shape \(5,\), got shape \(6,\)"),
    "label-too-big": (np.array([0, 1, 3, 0, 1]), ValueError, r"y .*outside \[0, 3\).*found 3"),
    "label-negative": (np.array([0, -1, 2, 0, 1]), ValueError, r"y .*outside \[0, 3\).*found -1"),
    "non-integer-floats": (np.array([0, 1.5, 2, 0, 1]), TypeError,
                           r"y must hold integer class labels, got dtype float64"),
    "one-hot": (np.eye(3)[[0, 1, 2, 0, 1]], ValueError, r"shape \(5,\), got shape \(5, 3\).*argmax"),
    "strings": (np.array(list("01201")), TypeError, r"y must hold integer class labels"),
}


@pytest.mark.parametrize("method", ["fit", "train_on_batch", "evaluate"])
@pytest.mark.parametrize("case", BAD_Y)
def test_bad_y_is_rejected_with_a_clear_message(case, method, small_model, data):
    bad_y, exc, pattern = BAD_Y[case]
    kwargs = {"verbose": 0} if method == "fit" else {}
    with pytest.raises(exc, match=pattern):
        getattr(small_model, method)(data[0], bad_y, **kwargs)


def test_integer_valued_float_labels_are_accepted(small_model, data):
    X, y = data
    small_model.train_on_batch(X, y.astype(float))


@pytest.fixture
def small_model():
    return make_model((4, 3), ("softmax",))


@pytest.fixture
def data():
    return np.random.default_rng(0).normal(size=(5, 4)), np.array([0, 1, 2, 0, 1])


def unbuilt_model(activation="softmax"):
    return fusenn.Sequential([fusenn.Dense(3, activation)])


BAD_CALLS = {
    "unknown-activation": (lambda m, X, y: fusenn.Dense(3, activation="mish"),
                           ValueError, r"unknown activation 'mish'; expected one of identity"),
    "unknown-loss": (lambda m, X, y: m.compile(loss="hinge"),
                     ValueError, r"unknown loss 'hinge'; expected one of cross_entropy"),
    "unknown-optimizer": (lambda m, X, y: m.compile(optimizer="adadelta"),
                          ValueError, r"unknown optimizer 'adadelta'.*'rmsprop'"),
    "relu-output-with-cross-entropy": (
        lambda m, X, y: unbuilt_model("relu").compile(loss="cross_entropy"),
        ValueError, r"'cross_entropy' needs the last layer's activation to be 'softmax' or 'identity', "
                    r"got 'relu'"),
    "softmax-output-with-bce": (
        lambda m, X, y: unbuilt_model("softmax").compile(loss="binary_cross_entropy"),
        ValueError, r"'binary_cross_entropy' needs .* 'sigmoid' or 'identity', got 'softmax'"),
    "predict-before-build": (lambda m, X, y: unbuilt_model().predict(X),
                             ValueError, r"not built"),
    "get-weights-before-build": (lambda m, X, y: unbuilt_model().get_weights(),
                                 ValueError, r"not built"),
    "fit-before-compile": (lambda m, X, y: fusenn.Sequential([fusenn.Dense(3)], input_dim=4).fit(X, y),
                           ValueError, r"not compiled.*compile\(loss="),
    "batch-size-zero": (lambda m, X, y: m.fit(X, y, batch_size=0),
                        ValueError, r"batch_size must be >= 1, got 0"),
    "batch-size-negative": (lambda m, X, y: m.fit(X, y, batch_size=-4),
                            ValueError, r"batch_size must be >= 1, got -4"),
    "batch-size-float": (lambda m, X, y: m.fit(X, y, batch_size=2.0),
                         TypeError, r"batch_size must be an int, got 2.0"),
    "predict-batch-size-zero": (lambda m, X, y: m.predict(X, batch_size=0),
                                ValueError, r"batch_size must be >= 1, got 0"),
    "epochs-negative": (lambda m, X, y: m.fit(X, y, epochs=-1),
                        ValueError, r"epochs must be >= 0, got -1"),
    "validation-X-wrong-shape": (lambda m, X, y: m.fit(X, y, validation_data=(X[:, :3], y)),
                                 ValueError, r"validation X must have shape \(n_samples, 4\)"),
    "validation-not-a-pair": (lambda m, X, y: m.fit(X, y, validation_data=X),
                              ValueError, r"validation_data must be a pair"),
    "sgd-lr-zero": (lambda m, X, y: fusenn.SGD(lr=0), ValueError, r"lr must lie in \(0.0, inf\), got 0.0"),
    "sgd-lr-negative": (lambda m, X, y: fusenn.SGD(lr=-0.1), ValueError, r"lr must lie in \(0.0, inf\)"),
    "adam-lr-zero": (lambda m, X, y: fusenn.Adam(lr=0.0), ValueError, r"lr must lie in \(0.0, inf\)"),
    "momentum-one": (lambda m, X, y: fusenn.SGD(momentum=1.0),
                     ValueError, r"momentum must lie in \[0.0, 1.0\), got 1.0"),
    "momentum-above-one": (lambda m, X, y: fusenn.SGD(momentum=1.5),
                           ValueError, r"momentum must lie in \[0.0, 1.0\), got 1.5"),
    "nesterov-without-momentum": (lambda m, X, y: fusenn.SGD(nesterov=True),
                                  ValueError, r"nesterov=True needs a momentum > 0"),
    "set-weights-count": (lambda m, X, y: m.set_weights(m.get_weights()[:1]),
                          ValueError, r"weights must hold 2 arrays \[W1, b1, ...\], got 1"),
    "set-weights-shape": (lambda m, X, y: m.set_weights([np.ones((3, 4)), np.ones(3)]),
                          ValueError, r"weights\[0\] \(W1\) must have shape \(4, 3\), got \(3, 4\)"),
    "set-weights-nan": (lambda m, X, y: m.set_weights([np.ones((4, 3)), np.array([0, np.nan, 0])]),
                        ValueError, r"weights\[1\] \(b1\) contains NaN or infinity"),
    "model-dtype-int32": (lambda m, X, y: fusenn.Sequential([fusenn.Dense(3)], dtype="int32"),
                          ValueError, r"dtype must be 'float32' or 'float64', got 'int32'"),
    "backend-gpu": (lambda m, X, y: fusenn.Sequential([fusenn.Dense(3)], backend="gpu"),
                    ValueError, r"backend must be one of 'c', 'numpy', got 'gpu'"),
}


@pytest.mark.parametrize("case", BAD_CALLS)
def test_bad_call_is_rejected_with_a_clear_message(case, small_model, data):
    call, exc, pattern = BAD_CALLS[case]
    with pytest.raises(exc, match=pattern):
        call(small_model, *data)


def test_rejected_set_weights_leaves_the_model_unchanged(small_model):
    before = small_model.get_weights()
    with pytest.raises(ValueError):
        small_model.set_weights([np.ones((4, 3)), np.array([0, np.nan, 0])])
    assert_weights_equal(small_model.get_weights(), before)
