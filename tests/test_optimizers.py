"""Optimizer semantics: RMSprop, Adagrad, AdamW, and the gradient preprocessing
every optimizer takes (l2, clipnorm, global_clipnorm, clipvalue), on both backends.

Engine == op-by-op is tests/test_plan.py's job, kernels against the reference
tests/test_kernels.py's, updates against hand computation tests/test_model.py's.
"""

import math

import numpy as np
import pytest

import fusenn
from fusenn import ops
from fusenn import reference as ref
from fusenn.optimizers import get_optimizer

BACKENDS = [pytest.param(ops, id="c"), pytest.param(ref, id="numpy")]
CLASSES = [fusenn.SGD, fusenn.Adam, fusenn.AdamW, fusenn.RMSprop, fusenn.Adagrad]


def params_and_grads(dtype=np.float64):
    """A weight matrix and a bias with gradients of known norms: ||gW|| = 5, ||gb|| = 12."""
    W = np.array([[1.0, -2.0], [0.5, 4.0]], dtype)
    b = np.array([1.0, -1.0, 2.0], dtype)
    gW = np.array([[3.0, 0.0], [0.0, -4.0]], dtype)
    gb = np.array([0.0, 12.0, 0.0], dtype)
    return [W, b], [gW, gb]


def sgd_step_delta(backend, opt, params, grads):
    """The processed gradients, read off a plain SGD step with lr=1 (w -= g)."""
    before = [p.copy() for p in params]
    assert opt.step(backend, params, grads) == 0
    return [w0 - w for w0, w in zip(before, params)]


# ---- preprocessing semantics -----------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_clipnorm_is_per_parameter(backend):
    params, grads = params_and_grads()
    gW, gb = [g.copy() for g in grads]
    dW, db = sgd_step_delta(backend, fusenn.SGD(lr=1.0, clipnorm=6.0), params, grads)
    np.testing.assert_allclose(dW, gW)  # norm 5 <= 6: untouched
    np.testing.assert_allclose(db, gb * 6 / 12)  # norm 12 -> 6
    assert math.isclose(np.linalg.norm(db), 6.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_global_clipnorm_scales_all_gradients_together(backend):
    params, grads = params_and_grads()
    gW, gb = [g.copy() for g in grads]
    dW, db = sgd_step_delta(backend, fusenn.SGD(lr=1.0, global_clipnorm=6.5), params, grads)
    # joint norm sqrt(5^2 + 12^2) = 13 -> 6.5: both halved, directions kept
    np.testing.assert_allclose(dW, gW / 2)
    np.testing.assert_allclose(db, gb / 2)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("option", ["clipnorm", "global_clipnorm"])
def test_norm_clipping_leaves_small_gradients_alone(backend, option):
    params, grads = params_and_grads()
    want = [g.copy() for g in grads]
    got = sgd_step_delta(backend, fusenn.SGD(lr=1.0, **{option: 100.0}), params, grads)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("backend", BACKENDS)
def test_clipvalue_clips_each_element(backend):
    params, grads = params_and_grads()
    want = [np.clip(g, -2.5, 2.5) for g in grads]
    got = sgd_step_delta(backend, fusenn.SGD(lr=1.0, clipvalue=2.5), params, grads)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w)


@pytest.mark.parametrize("backend", BACKENDS)
def test_l2_then_norm_clipping_then_value_clipping(backend):
    params, grads = params_and_grads()
    W, b = [p.copy() for p in params]
    gW, gb = [g.copy() for g in grads]
    opt = fusenn.SGD(lr=1.0, l2=0.5, clipnorm=2.0, clipvalue=1.0)
    dW, db = sgd_step_delta(backend, opt, params, grads)
    pW = gW + 0.5 * W  # the penalty enters the norm; the bias has none
    want_W = np.clip(pW * 2.0 / np.linalg.norm(pW), -1.0, 1.0)
    want_b = np.clip(gb * 2.0 / 12.0, -1.0, 1.0)
    np.testing.assert_allclose(dW, want_W)
    np.testing.assert_allclose(db, want_b)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cls", CLASSES)
def test_l2_and_weight_decay_leave_biases_alone(backend, cls):
    """With zero gradients, only the penalty / the decay moves a weight: the
    weight matrix shrinks, the bias does not move."""
    params, grads = params_and_grads()
    grads = [np.zeros_like(g) for g in grads]
    W, b = [p.copy() for p in params]
    kwargs = dict(weight_decay=0.5) if cls is fusenn.AdamW else dict(l2=0.5)
    opt = cls(lr=0.1, **kwargs)
    opt.step(backend, params, grads)
    np.testing.assert_array_equal(params[1], b)
    assert np.all(np.abs(params[0]) < np.abs(W))
    assert np.all(np.sign(params[0]) == np.sign(W))


@pytest.mark.parametrize("backend", BACKENDS)
def test_adamw_decay_is_decoupled_from_the_gradient_scale(backend):
    """AdamW's decay is lr * weight_decay * w whatever the gradients; Adam's
    coupled l2 goes through Adam's normalisation (a tiny l2 still moves w by ~lr)."""
    params, grads = params_and_grads()
    grads = [np.zeros_like(g) for g in grads]
    W = params[0].copy()
    fusenn.AdamW(lr=0.1, weight_decay=0.5).step(backend, params, grads)
    np.testing.assert_allclose(params[0], W * (1 - 0.1 * 0.5), rtol=1e-15)
    params, grads = params_and_grads()
    grads = [np.zeros_like(g) for g in grads]
    fusenn.Adam(lr=0.1, l2=1e-3).step(backend, params, grads)
    np.testing.assert_allclose(params[0], W - 0.1 * np.sign(W), rtol=1e-3)


@pytest.mark.parametrize("backend", ["c", "numpy"])
def test_reported_loss_excludes_the_l2_term(backend):
    X = np.random.default_rng(0).normal(size=(20, 3))
    y = np.arange(20) % 2
    losses = []
    for l2 in (0.0, 10.0):
        model = fusenn.Sequential([fusenn.Dense(2, "softmax")], input_dim=3, seed=0,
                                  backend=backend)
        model.compile("cross_entropy", fusenn.SGD(lr=0.1, l2=l2))
        losses.append(model.train_on_batch(X, y))
    assert losses[0] == losses[1]


# ---- training ------------------------------------------------------------------------------

TRAINING = {
    "sgd-l2-clipnorm": lambda: fusenn.SGD(lr=0.1, momentum=0.9, l2=1e-4, clipnorm=1.0),
    "adam-global": lambda: fusenn.Adam(lr=0.01, global_clipnorm=1.0),
    "adamw": lambda: fusenn.AdamW(lr=0.01),
    "rmsprop": lambda: fusenn.RMSprop(lr=0.005),
    "rmsprop-clipvalue": lambda: fusenn.RMSprop(lr=0.005, clipvalue=0.1),
    "adagrad": lambda: fusenn.Adagrad(lr=0.1),
    "adagrad-l2": lambda: fusenn.Adagrad(lr=0.1, l2=1e-3),
}


@pytest.mark.parametrize("backend", ["c", "numpy"])
@pytest.mark.parametrize("name", TRAINING)
def test_a_model_learns_with_each_optimizer(name, backend):
    rng = np.random.default_rng(5)
    X = rng.normal(size=(300, 8))
    y = np.argmax(X @ rng.normal(size=(8, 3)), axis=1)
    model = fusenn.Sequential([fusenn.Dense(16, "tanh"), fusenn.Dense(3, "softmax")],
                              input_dim=8, seed=2, backend=backend)
    model.compile("cross_entropy", TRAINING[name]())
    before = model.evaluate(X, y)
    hist = model.fit(X, y, epochs=15, batch_size=32, verbose=0)
    after = model.evaluate(X, y)
    assert after["loss"] < 0.5 * before["loss"]
    assert hist.history["loss"][-1] < hist.history["loss"][0]
    assert after["accuracy"] > 0.85


# ---- construction, names, config -------------------------------------------------------------

def test_defaults_follow_keras_and_pytorch():
    assert fusenn.RMSprop().config() == {"name": "RMSprop", "lr": 0.001, "rho": 0.9, "eps": 1e-7,
                                         "l2": 0.0, "clipnorm": None, "global_clipnorm": None,
                                         "clipvalue": None}
    assert fusenn.Adagrad().config()["lr"] == 0.01 and fusenn.Adagrad().eps == 1e-10
    w = fusenn.AdamW()
    assert (w.lr, w.beta1, w.beta2, w.eps, w.weight_decay) == (1e-3, 0.9, 0.999, 1e-8, 0.01)


@pytest.mark.parametrize("name, cls", [("rmsprop", fusenn.RMSprop), ("Adagrad", fusenn.Adagrad),
                                       ("adamw", fusenn.AdamW), ("ADAM", fusenn.Adam)])
def test_names(name, cls):
    assert type(get_optimizer(name)) is cls


@pytest.mark.parametrize("make", [
    lambda: fusenn.RMSprop(lr=0.02, rho=0.5, eps=1e-6, clipvalue=0.3),
    lambda: fusenn.Adagrad(lr=0.2, l2=0.01, global_clipnorm=2.0),
    lambda: fusenn.AdamW(lr=0.02, weight_decay=0.1, clipnorm=1.5),
    lambda: fusenn.SGD(lr=0.3, momentum=0.5, l2=1e-3),
], ids=["rmsprop", "adagrad", "adamw", "sgd"])
def test_config_rebuilds_the_optimizer_and_repr_shows_it(make):
    opt = make()
    clone = get_optimizer(opt.config())
    assert type(clone) is type(opt) and clone.config() == opt.config()
    assert clone.engine_config() == opt.engine_config()
    text = repr(opt)
    assert text.startswith(type(opt).__name__ + "(")
    for key, value in opt.config().items():
        if key != "name" and value not in (None, 0.0):
            assert f"{key}={value!r}" in text


def test_subclasses_train_op_by_op():
    class MyRMSprop(fusenn.RMSprop):
        pass

    assert fusenn.RMSprop().engine_config()["kind"] == "rmsprop"
    assert fusenn.Adagrad().engine_config()["kind"] == "adagrad"
    assert fusenn.AdamW().engine_config()["kind"] == "adam"
    assert fusenn.AdamW().engine_config()["weight_decay"] == 0.01
    assert fusenn.Adam(l2=0.1).engine_config()["weight_decay"] == 0.0
    assert MyRMSprop().engine_config() is None


@pytest.mark.parametrize("call, match", [
    (lambda: fusenn.SGD(clipnorm=1.0, global_clipnorm=1.0), "mutually exclusive"),
    (lambda: fusenn.Adam(clipnorm=0.0), "clipnorm"),
    (lambda: fusenn.RMSprop(global_clipnorm=-1.0), "global_clipnorm"),
    (lambda: fusenn.Adagrad(clipvalue=0), "clipvalue"),
    (lambda: fusenn.SGD(l2=-0.1), "l2"),
    (lambda: fusenn.SGD(l2=math.inf), "l2"),
    (lambda: fusenn.AdamW(weight_decay=-0.01), "weight_decay"),
    (lambda: fusenn.RMSprop(rho=1.0), "rho"),
    (lambda: fusenn.RMSprop(eps=0.0), "eps"),
    (lambda: fusenn.Adagrad(lr=0.0), "lr"),
    (lambda: fusenn.Adagrad(eps=-1e-10), "eps"),
])
def test_bad_settings_are_refused(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_preprocessing_options_are_keyword_only():
    with pytest.raises(TypeError):
        fusenn.SGD(0.1, 0.9, False, 0.01)
    with pytest.raises(TypeError, match="clip_norm"):
        fusenn.Adam(clip_norm=1.0)


# name -> (kernel, its state arrays (by position after w, g), settings)
DECAYING_STATE = {
    "sgd-momentum": ("sgd_update", 1, dict(lr=0.1, momentum=0.9)),
    "nesterov": ("sgd_update", 1, dict(lr=0.1, momentum=0.9, nesterov=True)),
    "adam": ("adam_update", 2, dict(t=3, lr=0.1)),
    "rmsprop": ("rmsprop_update", 1, dict(lr=0.1, rho=0.9)),
    "adagrad": ("adagrad_update", 1, dict(lr=0.1)),
}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", DECAYING_STATE)
def test_optimizer_state_never_keeps_subnormals(name, dtype):
    """A dead unit's momentum (0.9 v + 0) would sink to the smallest subnormals and
    stay there, making every later update slow: state is flushed to 0 instead, by
    both backends, while normal values (and the weights) are untouched."""
    kernel, n_state, kw = DECAYING_STATE[name]
    tiny = np.finfo(dtype).tiny
    smallest = np.finfo(dtype).smallest_subnormal
    results = []
    for backend in (ops, ref):
        w = np.array([1.0, -2.0, 0.5, 3.0], dtype=dtype)
        g = np.array([0.0, 0.0, 0.0, 1e-3], dtype=dtype)  # the first three: a dead unit
        state = [np.array([smallest, -4 * smallest, 4 * tiny, 0.5], dtype=dtype)
                 for _ in range(n_state)]
        getattr(backend, kernel)(w, g, *state, **kw)
        for s in state:
            assert s[0] == 0 and s[1] == 0, f"{backend.__name__}: subnormal state kept: {s}"
            assert not np.any((s != 0) & (np.abs(s) < tiny)), s
        results.append((w, state))
    (w_c, s_c), (w_r, s_r) = results
    np.testing.assert_allclose(w_c, w_r, rtol=1e-6)
    for a, b in zip(s_c, s_r):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    assert np.all(s_c[0][2:] != 0)  # normal state decays but is kept
