"""The model toolkit: Dropout and BatchNorm layers, every activation and loss in
models, sample and class weights, validation_split, callbacks, initial_epoch,
summary and the progress display.

Layers are checked three ways: the C engine against the op-by-op path through
the same kernels (bitwise), the C backend against the NumPy reference
(tolerance), and the training-mode gradient of whole models against finite
differences (float64).
"""

import io
import math

import numpy as np
import pytest

import fusenn
from fusenn import BatchNorm, Dense, Dropout, callbacks
from fusenn.optimizers import SGD, Adam, Optimizer


class OpByOpSGD(SGD):
    """SGD the engine does not take (a subclass): forces the op-by-op path."""


def data(n, d, k, loss, dtype="float32", seed=1):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(dtype)
    if loss == "cross_entropy":
        y = rng.permutation(np.arange(n) % k)
    elif loss == "binary_cross_entropy":
        y = (rng.random((n, k)) > 0.5).astype(dtype)
    else:
        y = rng.standard_normal((n, k)).astype(dtype)
    return X, y


# (layers factory, loss): every layer kind, every activation, every loss
NETS = {
    "dropout-bn-ce": (lambda: [Dense(16, "relu"), BatchNorm(), Dropout(0.3), Dense(8, "gelu"),
                               Dropout(0.2), Dense(4, "softmax")], "cross_entropy"),
    "input-dropout": (lambda: [Dropout(0.25), Dense(9, "elu"), Dense(3, "sigmoid")],
                      "binary_cross_entropy"),
    "bn-first": (lambda: [BatchNorm(momentum=0.9), Dense(10, "swish"), BatchNorm(),
                          Dense(3, "identity")], "mse"),
    "gelu-tanh-mae": (lambda: [Dense(10, "gelu_tanh"), Dense(7, "softplus"),
                               Dense(3, "tanh")], "mae"),
    "huber": (lambda: [Dense(10, "leaky_relu"), Dropout(0.5), Dense(2, "identity")], "huber"),
    "mse-softmax": (lambda: [Dense(6, "relu"), Dense(3, "softmax")], "mse"),
}
D_IN = 11


def model_for(net, opt, dtype="float32", backend="c", seed=0):
    layers, loss = NETS[net]
    model = fusenn.Sequential(layers(), input_dim=D_IN, dtype=dtype, seed=seed, backend=backend)
    model.compile(loss=loss, optimizer=opt)
    return model


def assert_same_weights(a, b):
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)


@pytest.mark.parametrize("net", NETS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_engine_is_bitwise_the_op_by_op_path(net, dtype):
    loss = NETS[net][1]
    k = model_for(net, SGD()).output_dim
    X, y = data(37, D_IN, k, loss, dtype)
    sw = np.random.default_rng(5).uniform(0, 2, 37)
    engine = model_for(net, SGD(lr=0.05, momentum=0.9), dtype)
    by_op = model_for(net, OpByOpSGD(lr=0.05, momentum=0.9), dtype)
    assert engine._engine() is not None and by_op._engine() is None
    for weights in (None, sw):
        for _ in range(3):
            assert engine.train_on_batch(X, y, sample_weight=weights) == \
                by_op.train_on_batch(X, y, sample_weight=weights)
    assert_same_weights(engine, by_op)
    np.testing.assert_array_equal(engine.predict(X), by_op.predict(X))
    assert engine.evaluate(X, y) == by_op.evaluate(X, y)
    assert engine.evaluate(X, y, sample_weight=sw) == by_op.evaluate(X, y, sample_weight=sw)
    h1 = engine.fit(X, y, epochs=2, batch_size=8, sample_weight=sw, verbose=0)
    h2 = by_op.fit(X, y, epochs=2, batch_size=8, sample_weight=sw, verbose=0)
    assert_same_weights(engine, by_op)
    drop = lambda h: {k: v for k, v in h.history.items() if k != "time"}
    assert drop(h1) == drop(h2)


class OpByOpAdamW(fusenn.AdamW):
    """AdamW the engine does not take."""


@pytest.mark.parametrize("options", [dict(global_clipnorm=0.5, l2=1e-3),
                                     dict(clipnorm=0.3, clipvalue=0.01)])
def test_engine_preprocesses_gradients_of_every_layer_kind_as_the_op_by_op_path(options):
    X, y = data(37, D_IN, 4, "cross_entropy")
    engine = model_for("dropout-bn-ce", fusenn.AdamW(lr=0.01, **options))
    by_op = model_for("dropout-bn-ce", OpByOpAdamW(lr=0.01, **options))
    assert engine._engine() is not None and by_op._engine() is None
    engine.fit(X, y, epochs=2, batch_size=8, verbose=0)
    by_op.fit(X, y, epochs=2, batch_size=8, verbose=0)
    assert_same_weights(engine, by_op)


@pytest.mark.parametrize("net", NETS)
def test_c_backend_agrees_with_the_numpy_reference(net):
    loss = NETS[net][1]
    k = model_for(net, SGD()).output_dim
    X, y = data(40, D_IN, k, loss, "float64")
    c = model_for(net, Adam(lr=0.01), "float64", "c")
    ref = model_for(net, Adam(lr=0.01), "float64", "numpy")
    hc = c.fit(X, y, epochs=3, batch_size=10, verbose=0)
    hr = ref.fit(X, y, epochs=3, batch_size=10, verbose=0)
    for wc, wr in zip(c.get_weights(), ref.get_weights()):
        np.testing.assert_allclose(wc, wr, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(hc.history["loss"], hr.history["loss"], rtol=1e-9)
    np.testing.assert_allclose(c.predict(X), ref.predict(X), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_layers_are_bitwise_independent_of_threads(threads):
    # wide enough for the parallel paths of dropout, batchnorm and the activations
    layers = lambda: [Dense(300, "gelu"), BatchNorm(), Dropout(0.3), Dense(200, "swish"),
                      Dense(10, "softmax")]
    X, y = data(512, 120, 10, "cross_entropy")

    def train(nt):
        model = fusenn.Sequential(layers(), input_dim=120, seed=4)
        model.compile("cross_entropy", Adam(lr=0.01))
        with fusenn.threads(nt):
            model.fit(X, y, epochs=2, batch_size=128, verbose=0)
        return model.get_weights()

    for a, b in zip(train(1), train(threads)):
        np.testing.assert_array_equal(a, b)


def test_no_allocation_per_step_once_warm_with_every_layer_kind():
    from fusenn import _kernels
    X, y = data(200, D_IN, 4, "cross_entropy")
    sw = np.linspace(0.5, 1.5, 200)
    model = model_for("dropout-bn-ce", fusenn.AdamW(lr=0.01, global_clipnorm=1.0, l2=1e-4))
    model.fit(X, y, epochs=1, batch_size=32, sample_weight=sw, verbose=0)  # warm-up
    model.train_on_batch(X[:32], y[:32], sample_weight=sw[:32])
    before = _kernels.allocation_count()
    model.fit(X, y, epochs=3, batch_size=32, sample_weight=sw, verbose=0)
    for _ in range(10):
        model.train_on_batch(X[:32], y[:32], sample_weight=sw[:32])
    assert _kernels.allocation_count() == before


# ---- gradients of whole models in training mode -----------------------------------------

class GradientRecorder(Optimizer):
    """Records the gradients the model hands to step() and never updates."""

    def step(self, backend, params, grads):
        self.grads = [np.array(g, dtype=np.float64, copy=True) for g in grads]

    def _hyperparameters(self):
        return {}


def training_loss(model, X, y, counters, stats):
    """The training-mode loss for the current weights, with every dropout mask
    and batchnorm running statistic as they were when the gradient was taken."""
    for layer, c in zip(model.layers, counters):
        if isinstance(layer, Dropout):
            layer.step_counter[0] = c
    fused = model.loss.fused_kernel is not None
    outputs = model._forward(X, training=True, logits=fused)[0]
    loss = model._loss_and_grad(outputs[-1], y)[0]
    for layer, (m, v) in zip([l for l in model.layers if isinstance(l, BatchNorm)], stats):
        layer.running_mean[...] = m  # the forward pass updated them
        layer.running_var[...] = v
    return loss


@pytest.mark.parametrize("backend", ["c", "numpy"])
@pytest.mark.parametrize("net", ["dropout-bn-ce", "input-dropout", "bn-first", "gelu-tanh-mae"])
def test_training_gradients_match_finite_differences(net, backend):
    loss_name = NETS[net][1]
    model = model_for(net, GradientRecorder(), "float64", backend, seed=2)
    rng = np.random.default_rng(3)
    X, y = data(6, D_IN, model.output_dim, loss_name, "float64", seed=4)
    if loss_name == "mae":
        y = model.predict(X) + rng.choice([-1.0, 1.0], size=y.shape)  # far from the kink
    counters = [int(l.step_counter[0]) if isinstance(l, Dropout) else 0 for l in model.layers]
    stats = [(l.running_mean.copy(), l.running_var.copy()) for l in model.layers
             if isinstance(l, BatchNorm)]
    model.train_on_batch(X, y)
    grads = model.optimizer.grads
    eps = 1e-6
    for p, g in zip(model.params, grads):
        idx = rng.choice(p.size, size=min(p.size, 6), replace=False)
        for i in idx:
            flat = p.reshape(-1)
            old = flat[i]
            flat[i] = old + eps
            up = training_loss(model, X, y, counters, stats)
            flat[i] = old - eps
            down = training_loss(model, X, y, counters, stats)
            flat[i] = old
            numeric = (up - down) / (2 * eps)
            assert abs(numeric - g.reshape(-1)[i]) <= 1e-6 * abs(numeric) + 1e-8, \
                (p.shape, i, numeric, g.reshape(-1)[i])


# ---- Dropout and BatchNorm behaviour ------------------------------------------------------

def test_dropout_is_inactive_at_inference_and_reproducible():
    X, y = data(64, D_IN, 3, "cross_entropy")
    with_drop = fusenn.Sequential([Dense(20, "relu"), Dropout(0.5), Dense(3, "softmax")],
                                  input_dim=D_IN, seed=1)
    plain = fusenn.Sequential([Dense(20, "relu"), Dense(3, "softmax")], input_dim=D_IN, seed=1)
    plain.set_weights(with_drop.get_weights())
    for m in (with_drop, plain):
        m.compile("cross_entropy", SGD(lr=0.1))
    np.testing.assert_array_equal(with_drop.predict(X), plain.predict(X))
    assert with_drop.evaluate(X, y) == plain.evaluate(X, y)
    with_drop.train_on_batch(X, y)
    plain.train_on_batch(X, y)
    assert not np.array_equal(with_drop.get_weights()[0], plain.get_weights()[0])
    # the same seed reproduces the same masks
    again = fusenn.Sequential([Dense(20, "relu"), Dropout(0.5), Dense(3, "softmax")],
                              input_dim=D_IN, seed=1)
    again.compile("cross_entropy", SGD(lr=0.1))
    again.train_on_batch(X, y)
    assert_same_weights(again, with_drop)


def test_dropout_rate_zero_is_the_plain_network():
    X, y = data(30, D_IN, 3, "cross_entropy")
    a = fusenn.Sequential([Dense(8, "relu"), Dropout(0.0), Dense(3, "softmax")], input_dim=D_IN, seed=2)
    b = fusenn.Sequential([Dense(8, "relu"), Dense(3, "softmax")], input_dim=D_IN, seed=2)
    b.set_weights(a.get_weights())
    for m in (a, b):
        m.compile("cross_entropy", SGD(lr=0.1))
        m.fit(X, y, epochs=2, batch_size=7, verbose=0)
    assert_same_weights(a, b)


def test_batchnorm_running_statistics_and_inference_mode():
    rng = np.random.default_rng(0)
    X = (rng.standard_normal((256, 4)) * [1, 2, 3, 4] + [5, -1, 0, 2]).astype(np.float64)
    y = rng.standard_normal((256, 4))
    bn = BatchNorm(momentum=0.0)  # running statistics = the last batch's
    model = fusenn.Sequential([bn, Dense(4)], input_dim=4, dtype="float64", seed=0)
    model.compile("mse", SGD(lr=1e-9))
    model.train_on_batch(X, y)
    np.testing.assert_allclose(bn.running_mean, X.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(bn.running_var, X.var(axis=0), rtol=1e-12)
    # inference normalises with the running statistics
    W, b = model.layers[1].W, model.layers[1].b
    xhat = (X - bn.running_mean) / np.sqrt(bn.running_var + bn.eps)
    np.testing.assert_allclose(model.predict(X), (xhat * bn.gamma + bn.beta) @ W + b, rtol=1e-9)
    assert len(model.get_weights()) == 6  # gamma, beta, running mean, running var, W, b


def test_batchnorm_model_saves_and_loads(tmp_path):
    X, y = data(50, D_IN, 4, "cross_entropy")
    model = model_for("dropout-bn-ce", Adam(lr=0.01))
    model.fit(X, y, epochs=2, batch_size=10, verbose=0)
    model.save(tmp_path / "m.npz")
    loaded = fusenn.load(tmp_path / "m.npz")
    assert [type(l) for l in loaded.layers] == [type(l) for l in model.layers]
    assert_same_weights(model, loaded)
    np.testing.assert_array_equal(model.predict(X), loaded.predict(X))
    model.fit(X, y, epochs=1, batch_size=10, verbose=0, shuffle=False)
    loaded.fit(X, y, epochs=1, batch_size=10, verbose=0, shuffle=False)
    # dropout seeds travel in the file; the step counters restart, so masks may differ
    assert loaded.layers[2].config() == model.layers[2].config()


def test_load_refuses_a_negative_running_variance(tmp_path):
    model = fusenn.Sequential([BatchNorm(), Dense(2)], input_dim=3)
    model.save(tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz") as f:
        arrays = dict(f)
    arrays["buffer_1"] = -np.ones(3, dtype=np.float32)
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match="running variance is negative"):
        fusenn.load(tmp_path / "bad.npz")


def test_set_weights_refuses_negative_running_variance():
    model = fusenn.Sequential([BatchNorm(), Dense(2)], input_dim=3)
    w = model.get_weights()
    w[3] = -np.ones(3, dtype=np.float32)
    with pytest.raises(ValueError, match=r"running_var1.*negative"):
        model.set_weights(w)


@pytest.mark.parametrize("bad, error, match", [
    (lambda: Dropout(1.0), ValueError, "rate must lie in"),
    (lambda: Dropout(-0.1), ValueError, "rate must lie in"),
    (lambda: Dropout("0.5"), TypeError, "rate must be a number"),
    (lambda: Dropout(0.5, seed=-1), ValueError, "seed"),
    (lambda: BatchNorm(momentum=1.5), ValueError, "momentum"),
    (lambda: BatchNorm(eps=0), ValueError, "eps"),
    (lambda: fusenn.Sequential([Dense(3), Dense(3, "relu")]).compile("cross_entropy"),
     ValueError, "activation to be 'softmax' or 'identity'"),
    (lambda: fusenn.Sequential([Dense(3), "relu"]), TypeError, "fusenn layers"),
])
def test_bad_layer_arguments(bad, error, match):
    with pytest.raises(error, match=match):
        bad()


def test_a_layer_cannot_appear_twice():
    d = Dense(3)
    with pytest.raises(ValueError, match="already in this model"):
        fusenn.Sequential([d, d])


# ---- sample and class weights ------------------------------------------------------------

@pytest.mark.parametrize("backend", ["c", "numpy"])
def test_integer_sample_weights_equal_repeated_rows(backend):
    X, y = data(12, D_IN, 3, "cross_entropy", "float64")
    reps = np.array([1, 2, 0, 3, 1, 1, 2, 1, 1, 0, 1, 2])
    weighted = fusenn.Sequential([Dense(5, "tanh"), Dense(3, "softmax")], input_dim=D_IN,
                                 dtype="float64", seed=0, backend=backend)
    weighted.compile("cross_entropy", SGD(lr=0.1))
    repeated = fusenn.Sequential([Dense(5, "tanh"), Dense(3, "softmax")], input_dim=D_IN,
                                 dtype="float64", seed=0, backend=backend)
    repeated.compile("cross_entropy", SGD(lr=0.1 * reps.sum() / len(X)))
    # the batch loss is the mean of weighted row losses over the batch's rows
    lw = weighted.evaluate(X, y, sample_weight=reps)["loss"]
    lr = repeated.evaluate(np.repeat(X, reps, axis=0), np.repeat(y, reps))["loss"]
    assert lw == pytest.approx(lr * reps.sum() / len(X), rel=1e-12)
    weighted.train_on_batch(X, y, sample_weight=reps)
    repeated.train_on_batch(np.repeat(X, reps, axis=0), np.repeat(y, reps))
    for a, b in zip(weighted.get_weights(), repeated.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def test_class_weight_is_a_sample_weight_per_class():
    X, y = data(40, D_IN, 3, "cross_entropy")
    make = lambda: fusenn.Sequential([Dense(6, "relu"), Dense(3, "softmax")], input_dim=D_IN, seed=9)
    a, b = make(), make()
    for m in (a, b):
        m.compile("cross_entropy", SGD(lr=0.1))
    a.fit(X, y, epochs=2, batch_size=8, class_weight={0: 2.0, 2: 0.5}, verbose=0)
    b.fit(X, y, epochs=2, batch_size=8, sample_weight=np.array([2.0, 1.0, 0.5])[y], verbose=0)
    assert_same_weights(a, b)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(sample_weight=np.ones(3)), ValueError, "sample_weight must be a 1-D array of 40"),
    (dict(sample_weight=-np.ones(40)), ValueError, "non-negative"),
    (dict(sample_weight=np.full(40, np.nan)), ValueError, "finite"),
    (dict(sample_weight=np.array(["a"] * 40)), ValueError, "sample_weight"),
    (dict(class_weight=[1, 2]), TypeError, "class_weight must be a dict"),
    (dict(class_weight={5: 1.0}), ValueError, "classes are 0 .. 2"),
    (dict(class_weight={0: -1.0}), ValueError, r"class_weight\[0\]"),
])
def test_bad_weights(kwargs, error, match):
    X, y = data(40, D_IN, 3, "cross_entropy")
    model = fusenn.Sequential([Dense(3, "softmax")], input_dim=D_IN)
    model.compile("cross_entropy")
    with pytest.raises(error, match=match):
        model.fit(X, y, verbose=0, **kwargs)


def test_class_weight_needs_labels():
    X, y = data(10, D_IN, 2, "mse")
    model = fusenn.Sequential([Dense(2)], input_dim=D_IN)
    model.compile("mse")
    with pytest.raises(ValueError, match="class_weight needs class labels"):
        model.fit(X, y, class_weight={0: 1.0}, verbose=0)


# ---- fit extras --------------------------------------------------------------------------

def test_validation_split_holds_out_the_last_samples():
    X, y = data(50, D_IN, 3, "cross_entropy")
    a = fusenn.Sequential([Dense(3, "softmax")], input_dim=D_IN, seed=0)
    b = fusenn.Sequential([Dense(3, "softmax")], input_dim=D_IN, seed=0)
    for m in (a, b):
        m.compile("cross_entropy", SGD(lr=0.1))
    ha = a.fit(X, y, epochs=2, validation_split=0.2, verbose=0)
    hb = b.fit(X[:40], y[:40], epochs=2, validation_data=(X[40:], y[40:]), verbose=0)
    assert ha.history["val_loss"] == hb.history["val_loss"]
    assert_same_weights(a, b)
    with pytest.raises(ValueError, match="validation_split"):
        a.fit(X, y, validation_split=1.0, verbose=0)
    with pytest.raises(ValueError, match="leaves no validation"):
        a.fit(X, y, validation_split=0.001, verbose=0)


def test_initial_epoch_resumes_the_count():
    X, y = data(20, D_IN, 3, "cross_entropy")
    model = fusenn.Sequential([Dense(3, "softmax")], input_dim=D_IN)
    model.compile("cross_entropy")
    hist = model.fit(X, y, epochs=5, initial_epoch=3, verbose=0)
    assert hist.epoch == [3, 4]
    assert model.fit(X, y, epochs=2, initial_epoch=2, verbose=0).epoch == []


def test_early_stopping_stops_and_restores_the_best_weights():
    X, y = data(60, D_IN, 3, "cross_entropy")
    model = fusenn.Sequential([Dense(3, "softmax")], input_dim=D_IN, seed=0)
    model.compile("cross_entropy", SGD(lr=5.0))  # so large the validation loss gets worse
    seen = []
    record = callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: seen.append((logs["val_loss"], model.get_weights())))
    stop = callbacks.EarlyStopping(monitor="val_loss", patience=2, restore_best_weights=True)
    hist = model.fit(X, y, epochs=50, validation_split=0.3, callbacks=[record, stop], verbose=0)
    assert len(hist.epoch) < 50
    best = min(range(len(seen)), key=lambda i: seen[i][0])
    for a, b in zip(model.get_weights(), seen[best][1]):
        np.testing.assert_array_equal(a, b)


def test_learning_rate_scheduler_reaches_the_engine():
    X, y = data(40, D_IN, 3, "cross_entropy")
    make = lambda: fusenn.Sequential([Dense(3, "softmax")], input_dim=D_IN, seed=0)
    scheduled, manual = make(), make()
    scheduled.compile("cross_entropy", SGD(lr=0.1))
    manual.compile("cross_entropy", SGD(lr=0.1))
    sched = callbacks.LearningRateScheduler(lambda epoch: 0.1 * 0.5 ** epoch)
    hist = scheduled.fit(X, y, epochs=3, callbacks=[sched], verbose=0)
    assert hist.history["lr"] == [0.1, 0.05, 0.025]
    for epoch in range(3):
        manual.optimizer.lr = 0.1 * 0.5 ** epoch
        manual.fit(X, y, epochs=epoch + 1, initial_epoch=epoch, verbose=0)
    assert_same_weights(scheduled, manual)


def test_model_checkpoint_saves_loadable_models(tmp_path):
    X, y = data(40, D_IN, 3, "cross_entropy")
    model = fusenn.Sequential([Dense(4, "relu"), Dense(3, "softmax")], input_dim=D_IN, seed=0)
    model.compile("cross_entropy", Adam(lr=0.01))
    path = str(tmp_path / "ckpt-{epoch:02d}.npz")
    model.fit(X, y, epochs=3, validation_split=0.25,
              callbacks=[callbacks.ModelCheckpoint(path, save_best_only=False)], verbose=0)
    files = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("."))
    assert files == ["ckpt-01.npz", "ckpt-02.npz", "ckpt-03.npz"]
    last = fusenn.load(tmp_path / "ckpt-03.npz")
    assert_same_weights(last, model)


# ---- summary and progress --------------------------------------------------------------------

def test_summary_lists_layers_shapes_and_parameter_counts():
    model = fusenn.Sequential([Dense(32, "relu"), BatchNorm(), Dropout(0.2), Dense(10, "softmax")],
                              input_dim=64)
    text = model.summary(print_fn=None)
    lines = text.splitlines()
    assert any("Dense (relu)" in l and "(None, 32)" in l and "2,080" in l for l in lines)
    assert any("BatchNorm" in l and "64" in l for l in lines)
    assert any("Dropout" in l and l.rstrip().endswith("0") for l in lines)
    assert "Trainable params: 2,474" in text  # 64*32+32 + 2*32 + 32*10+10
    assert "Non-trainable params: 64" in text
    unbuilt = fusenn.Sequential([Dense(3)]).summary(print_fn=None)
    assert "not built" in unbuilt


@pytest.mark.parametrize("verbose, lines", [(0, 0), (2, 3), ("auto", 0)])
def test_verbose_modes(verbose, lines, capsys):
    X, y = data(20, D_IN, 3, "cross_entropy")
    model = fusenn.Sequential([Dense(3, "softmax")], input_dim=D_IN)
    model.compile("cross_entropy")
    model.fit(X, y, epochs=3, verbose=verbose)  # captured stdout is not a terminal
    out = capsys.readouterr().out
    assert len(out.splitlines()) == lines
    if lines:
        assert "Epoch 3/3" in out and "loss" in out and "accuracy" in out
