"""The C training engine (csrc/plan.c): one C call per step or epoch.

It must give bitwise the results of the op-by-op path through the same C
kernels, for any thread count, whether batches come through fit or
train_on_batch, and must not allocate once warmed up.
"""

import numpy as np
import pytest

import fusenn
from fusenn import _engine, _kernels
from fusenn._validation import check_X, check_y
from fusenn.optimizers import SGD


class OpByOpSGD(SGD):
    """SGD that the engine does not take (a subclass): forces the op-by-op path."""


def make_model(dims, activations, loss, optimizer, dtype="float32", backend="c", seed=0):
    layers = [fusenn.Dense(units, activation=act) for units, act in zip(dims[1:], activations)]
    model = fusenn.Sequential(layers, input_dim=dims[0], dtype=dtype, seed=seed, backend=backend)
    model.compile(loss=loss, optimizer=optimizer)
    return model


def make_data(n, dims, loss, dtype="float32", seed=1):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, dims[0])).astype(dtype)
    if loss == "cross_entropy":
        y = rng.integers(0, dims[-1], n)
    elif loss == "binary_cross_entropy":
        y = (rng.random((n, dims[-1])) > 0.5).astype(dtype)
    else:
        y = rng.standard_normal((n, dims[-1])).astype(dtype)
    return X, y


# name -> (class, settings). The clipping thresholds are small enough that
# clipping happens on these nets (test_clipping_is_active checks that).
OPTIMIZERS = {
    "sgd": (SGD, dict(lr=0.05)),
    "momentum": (SGD, dict(lr=0.05, momentum=0.9)),
    "nesterov": (SGD, dict(lr=0.05, momentum=0.9, nesterov=True)),
    "adam": (fusenn.Adam, dict(lr=0.01)),
    "adamw": (fusenn.AdamW, dict(lr=0.01, weight_decay=0.2)),
    "rmsprop": (fusenn.RMSprop, dict(lr=0.01, rho=0.8)),
    "adagrad": (fusenn.Adagrad, dict(lr=0.05)),
    "sgd-l2-clipvalue": (SGD, dict(lr=0.05, momentum=0.9, l2=0.01, clipvalue=0.02)),
    "adam-l2-clipnorm": (fusenn.Adam, dict(lr=0.01, l2=0.05, clipnorm=0.05)),
    "adamw-global-clipvalue": (fusenn.AdamW, dict(lr=0.01, global_clipnorm=0.1,
                                                  clipvalue=0.03, l2=0.01)),
    "rmsprop-global": (fusenn.RMSprop, dict(lr=0.01, global_clipnorm=0.1)),
    "adagrad-l2-clipnorm-clipvalue": (fusenn.Adagrad, dict(lr=0.05, l2=0.1, clipnorm=0.1,
                                                           clipvalue=0.01)),
}


def optimizer(name, op_by_op=False):
    """A fresh optimizer; op_by_op: of a subclass, which the engine does not take."""
    cls, settings = OPTIMIZERS[name]
    if op_by_op:
        cls = type(f"OpByOp{cls.__name__}", (cls,), {})
    return cls(**settings)


def assert_same_weights(a, b):
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)


NETS = {
    "ce-softmax": ((12, 9, 7, 4), ("relu", "tanh", "softmax"), "cross_entropy"),
    "ce-logits": ((12, 9, 4), ("leaky_relu", "identity"), "cross_entropy"),
    "bce": ((12, 8, 3), ("sigmoid", "sigmoid"), "binary_cross_entropy"),
    "mse-softmax": ((12, 8, 3), ("tanh", "softmax"), "mse"),
    "mse-relu": ((12, 8, 3), ("relu", "relu"), "mse"),
}


@pytest.mark.parametrize("net", NETS)
@pytest.mark.parametrize("opt", OPTIMIZERS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_engine_is_bitwise_the_op_by_op_path(net, opt, dtype):
    dims, acts, loss = NETS[net]
    X, y = make_data(40, dims, loss, dtype)
    engine = make_model(dims, acts, loss, optimizer(opt), dtype)
    by_op = make_model(dims, acts, loss, optimizer(opt, op_by_op=True), dtype)
    assert engine._engine() is not None and by_op._engine() is None
    for _ in range(4):
        assert engine.train_on_batch(X, y) == by_op.train_on_batch(X, y)
    assert_same_weights(engine, by_op)
    np.testing.assert_array_equal(engine.predict(X), by_op.predict(X))
    assert engine.evaluate(X, y) == by_op.evaluate(X, y)
    h1 = engine.fit(X, y, epochs=2, batch_size=16, verbose=0)
    h2 = by_op.fit(X, y, epochs=2, batch_size=16, verbose=0)
    assert_same_weights(engine, by_op)
    assert {k: v for k, v in h1.history.items() if k != "time"} == \
        {k: v for k, v in h2.history.items() if k != "time"}


@pytest.mark.parametrize("opt", [name for name in OPTIMIZERS if "clip" in name])
def test_clipping_is_active(opt):
    """The clipped settings above change the training (else the bitwise test
    would not cover the clipping paths)."""
    dims, acts, loss = NETS["ce-softmax"]
    X, y = make_data(40, dims, loss)
    cls, settings = OPTIMIZERS[opt]
    unclipped = {k: v for k, v in settings.items()
                 if k not in ("clipnorm", "global_clipnorm", "clipvalue")}
    a = make_model(dims, acts, loss, cls(**settings))
    b = make_model(dims, acts, loss, cls(**unclipped))
    a.fit(X, y, epochs=1, batch_size=16, verbose=0)
    b.fit(X, y, epochs=1, batch_size=16, verbose=0)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        assert not np.allclose(wa, wb, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_engine_agrees_with_the_numpy_reference(dtype):
    dims, acts, loss = NETS["ce-softmax"]
    X, y = make_data(64, dims, loss, dtype)
    c = make_model(dims, acts, loss, SGD(lr=0.1, momentum=0.9), dtype, backend="c")
    ref = make_model(dims, acts, loss, SGD(lr=0.1, momentum=0.9), dtype, backend="numpy")
    c.fit(X, y, epochs=3, batch_size=10, verbose=0)
    ref.fit(X, y, epochs=3, batch_size=10, verbose=0)
    tol = 1e-4 if dtype == "float32" else 1e-10
    for wc, wr in zip(c.get_weights(), ref.get_weights()):
        np.testing.assert_allclose(wc, wr, rtol=tol, atol=tol)


def assert_same_weights_for_thread_counts(dims, acts, n, make_optimizer, thread_counts,
                                          epochs, batch_size):
    loss = "cross_entropy"
    X, y = make_data(n, dims, loss)
    results = []
    for threads in thread_counts:
        model = make_model(dims, acts, loss, make_optimizer())
        with fusenn.threads(threads):
            model.fit(X, y, epochs=epochs, batch_size=batch_size, verbose=0)
        results.append(model.get_weights())
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


def test_weights_are_bitwise_identical_for_1_to_4_threads():
    # big enough that GEMMs, losses and updates all take their parallel paths
    assert_same_weights_for_thread_counts((300, 256, 128, 10), ("relu", "relu", "softmax"), 1000,
                                          lambda: SGD(lr=0.01, momentum=0.9), (1, 2, 3, 4),
                                          epochs=2, batch_size=256)


@pytest.mark.parametrize("opt", ["adamw-global-clipvalue", "adagrad-l2-clipnorm-clipvalue",
                                 "rmsprop"])
def test_new_optimizers_bitwise_for_1_to_3_threads(opt):
    # W1 has 40 000 elements: the update, sum_squares and grad_transform kernels run in parallel
    assert_same_weights_for_thread_counts((40, 1000, 10), ("relu", "softmax"), 64,
                                          lambda: optimizer(opt), (1, 2, 3), epochs=1,
                                          batch_size=32)


def test_fit_is_train_on_batch_over_the_same_batches():
    dims, acts, loss = NETS["ce-softmax"]
    X, y = make_data(50, dims, loss)
    fitted = make_model(dims, acts, loss, fusenn.Adam(lr=0.01), seed=3)
    stepped = make_model(dims, acts, loss, fusenn.Adam(lr=0.01), seed=3)
    fitted.fit(X, y, epochs=3, batch_size=16, verbose=0)
    # replay the epochs' permutations: fit draws one seed per epoch from the model's generator
    rng = np.random.default_rng(3)
    rng.uniform(size=sum(w.size for w in stepped.get_weights()[::2]))  # the weight draws
    for _ in range(3):
        order = np.empty(len(X), dtype=np.int64)
        _kernels.shuffle(order, int(rng.integers(0, 2**63)))
        for first in range(0, len(X), 16):
            idx = order[first:first + 16]
            stepped.train_on_batch(X[idx], y[idx])
    assert_same_weights(fitted, stepped)


def test_no_allocation_per_step_once_warm():
    dims, acts, loss = NETS["ce-softmax"]
    X, y = make_data(200, dims, loss)
    model = make_model(dims, acts, loss, SGD(lr=0.01, momentum=0.9))
    model.fit(X, y, epochs=1, batch_size=32, verbose=0)  # warm-up: arena and packing buffers
    model.train_on_batch(X[:32], y[:32])
    before = _kernels.allocation_count()
    model.fit(X, y, epochs=3, batch_size=32, verbose=0)
    for _ in range(20):
        model.train_on_batch(X[:32], y[:32])
    assert _kernels.allocation_count() == before


def test_the_arena_grows_for_a_larger_batch_and_shrinking_is_free():
    dims, acts, loss = NETS["ce-softmax"]
    X, y = make_data(300, dims, loss)
    model = make_model(dims, acts, loss, SGD(lr=0.01))
    model.train_on_batch(X[:10], y[:10])
    grown = _kernels.allocation_count()
    model.train_on_batch(X[:200], y[:200])  # larger: one new arena
    assert _kernels.allocation_count() > grown
    settled = _kernels.allocation_count()
    for n in (1, 7, 200, 13):  # smaller or equal: reuse
        model.train_on_batch(X[:n], y[:n])
    assert _kernels.allocation_count() == settled


@pytest.mark.parametrize("n, batch", [(37, 10), (10, 10), (9, 10), (1, 1)])
def test_partial_last_batch(n, batch):
    dims, acts, loss = NETS["bce"]
    X, y = make_data(n, dims, loss)
    engine = make_model(dims, acts, loss, SGD(lr=0.1))
    by_op = make_model(dims, acts, loss, OpByOpSGD(lr=0.1))
    engine.fit(X, y, epochs=2, batch_size=batch, verbose=0)
    by_op.fit(X, y, epochs=2, batch_size=batch, verbose=0)
    assert_same_weights(engine, by_op)


@pytest.mark.parametrize("dims, acts", [
    ((5, 3), ("softmax",)),                                    # one layer
    ((1, 1, 1, 2), ("relu", "tanh", "softmax")),               # widths of 1
    ((6,) + (4,) * 9 + (3,), ("tanh",) * 9 + ("softmax",)),    # many layers
])
def test_shapes(dims, acts):
    X, y = make_data(20, dims, "cross_entropy")
    engine = make_model(dims, acts, "cross_entropy", SGD(lr=0.1, momentum=0.5))
    by_op = make_model(dims, acts, "cross_entropy", OpByOpSGD(lr=0.1, momentum=0.5))
    engine.fit(X, y, epochs=2, batch_size=8, verbose=0)
    by_op.fit(X, y, epochs=2, batch_size=8, verbose=0)
    assert_same_weights(engine, by_op)
    np.testing.assert_array_equal(engine.predict(X), by_op.predict(X))


def test_optimizer_changes_between_calls_reach_the_engine():
    dims, acts, loss = NETS["ce-softmax"]
    X, y = make_data(30, dims, loss)
    engine = make_model(dims, acts, loss, SGD(lr=0.1))
    by_op = make_model(dims, acts, loss, OpByOpSGD(lr=0.1))
    for lr in (0.1, 0.01, 0.3):
        engine.optimizer.lr = by_op.optimizer.lr = lr
        engine.train_on_batch(X, y)
        by_op.train_on_batch(X, y)
    assert_same_weights(engine, by_op)
    assert engine.optimizer.iterations == by_op.optimizer.iterations == 3


DIVERGING = {
    "sgd": lambda: SGD(lr=1e3, momentum=0.9),
    "adamw-l2-clipnorm": lambda: fusenn.AdamW(lr=1e36, weight_decay=1e-30, l2=0.1,
                                              clipnorm=1.0),
    "rmsprop-global": lambda: fusenn.RMSprop(lr=1e36, global_clipnorm=1.0, clipvalue=0.5),
    "adagrad": lambda: fusenn.Adagrad(lr=1e36),
}


@pytest.mark.parametrize("opt", DIVERGING)
@pytest.mark.parametrize("where", ["train_on_batch", "fit"])
def test_divergence_in_the_engine_restores_the_previous_weights(where, opt):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, 4)).astype(np.float32)
    y = X @ rng.normal(size=(4, 1)).astype(np.float32)
    model = make_model((4, 8, 1), ("relu", "identity"), "mse", DIVERGING[opt]())
    assert model._engine() is not None
    with pytest.raises(ValueError, match="learning rate"):
        for _ in range(100):
            before = model.get_weights()
            if where == "fit":
                model.fit(X, y, epochs=1, batch_size=64, verbose=0)
            else:
                model.train_on_batch(X, y)
    for w, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(w, b)
    assert model.optimizer.iterations == 0
    assert all(not s.any() for states in model.optimizer.state.values() for s in states)


def test_one_model_from_two_threads_at_once_is_refused():
    import threading
    dims, acts, loss = (300, 256, 10), ("relu", "softmax"), "cross_entropy"
    X, y = make_data(4096, dims, loss)
    model = make_model(dims, acts, loss, SGD(lr=0.01))
    errors = []
    start = threading.Barrier(2)

    def train():
        start.wait()  # both calls begin together; one fit takes far longer than a start-up
        try:
            model.fit(X, y, epochs=3, batch_size=64, verbose=0)
        except RuntimeError as exc:
            errors.append(str(exc))

    threads = [threading.Thread(target=train) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 1 and "another thread" in errors[0]


def test_a_pickled_model_trains_on_like_the_original():
    import pickle
    dims, acts, loss = NETS["ce-softmax"]
    X, y = make_data(30, dims, loss)
    model = make_model(dims, acts, loss, fusenn.Adam(lr=0.01))
    model.fit(X, y, epochs=1, batch_size=8, verbose=0)
    clone = pickle.loads(pickle.dumps(model))
    model.fit(X, y, epochs=2, batch_size=8, verbose=0)
    clone.fit(X, y, epochs=2, batch_size=8, verbose=0)
    assert_same_weights(model, clone)


def test_shuffle_is_a_seeded_permutation():
    a = np.empty(1000, np.int64)
    b = np.empty(1000, np.int64)
    _kernels.shuffle(a, 42)
    _kernels.shuffle(b, 42)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(np.sort(a), np.arange(1000))
    _kernels.shuffle(b, 43)
    assert not np.array_equal(a, b)
    assert abs(np.corrcoef(a, np.arange(1000))[0, 1]) < 0.1


def test_training_memory_is_not_proportional_to_the_data():
    """fit on a large array allocates (from Python/NumPy) little beyond one
    permutation of the rows: no copies, masks or gathered batches of X."""
    import tracemalloc
    n, d = 20000, 784
    X = np.random.default_rng(0).random((n, d), dtype=np.float32)  # 63 MB
    y = np.random.default_rng(1).integers(0, 10, n)
    model = make_model((d, 64, 10), ("relu", "softmax"), "cross_entropy", SGD(lr=0.01, momentum=0.9))
    tracemalloc.start()
    try:
        model.fit(X, y, epochs=1, batch_size=128, validation_data=(X[:5000], y[:5000]), verbose=0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    permutation = n * 8
    assert peak < permutation + 4 * 2**20, f"peak {peak / 2**20:.1f} MiB"


# The engine checks a train_on_batch batch's values itself (one pass in C, no Python
# pass over X); the model then re-runs its checks to name the problem.
BAD_BATCHES = {
    "nan-X": ("cross_entropy", lambda X, y: (np.where(X > 1, np.nan, X), y), r"X contains NaN"),
    "inf-X": ("mse", lambda X, y: (np.where(X > 1, np.inf, X), y), r"X contains NaN"),
    "label-too-big": ("cross_entropy", lambda X, y: (X, np.where(y == 1, 3, y)),
                      r"outside \[0, 3\).*found 3"),
    "label-negative": ("cross_entropy", lambda X, y: (X, np.where(y == 1, -1, y)), r"found -1"),
    "uint64-label-wraps": ("cross_entropy",
                           lambda X, y: (X, np.where(y == 1, 2**64 - 1, y).astype(np.uint64)),
                           r"found 18446744073709551615"),
    "nan-target": ("mse", lambda X, y: (X, np.where(y > 1, np.nan, y)), r"y contains NaN"),
    "bce-target-above-1": ("binary_cross_entropy", lambda X, y: (X, np.where(y > 0.5, 2.0, y)),
                           r"targets in \[0, 1\]"),
}


@pytest.mark.parametrize("case", BAD_BATCHES)
def test_the_engine_refuses_a_bad_batch_before_changing_anything(case):
    loss, corrupt = BAD_BATCHES[case][:2]
    act = {"cross_entropy": "softmax", "binary_cross_entropy": "sigmoid", "mse": "identity"}[loss]
    model = make_model((4, 5, 3), ("relu", act), loss, SGD(lr=0.1, momentum=0.9))
    X, y = make_data(32, (4, 5, 3), loss)
    model.train_on_batch(X, y)
    before, steps = model.get_weights(), model.optimizer.iterations
    bad_X, bad_y = corrupt(X, y)
    with pytest.raises(ValueError, match=BAD_BATCHES[case][2]):
        model.train_on_batch(bad_X, bad_y)
    for a, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(a, b)
    assert model.optimizer.iterations == steps
    # the C check itself, not only the model's re-check, refuses the batch
    plan = model._engine()
    labels, T = _engine.targets(model, check_y(model, bad_y, len(X), values=False))
    code, _, _ = plan.train_batch(check_X(model, bad_X, values=False), labels, T, None, 1)
    assert code == _kernels.FUSENN_EBADINPUT_CODE
    assert model.optimizer.iterations == steps and plan.steps == steps


def test_the_plan_takes_only_arrays_it_can_read_in_place():
    """The binding reads arrays through NumPy's C API: anything but aligned, native,
    row-contiguous arrays of the plan's dtype and widths is refused (the model converts)."""
    model = make_model((4, 5, 3), ("relu", "softmax"), "cross_entropy", SGD(lr=0.1))
    X, y = make_data(8, (4, 5, 3), "cross_entropy")
    model.train_on_batch(X, y)
    plan = model._engine()
    bad = {"float64": X.astype(np.float64), "big-endian": X.astype(">f4"),
           "columns-strided": np.repeat(X, 2, axis=1)[:, ::2], "too-wide": np.ones((8, 5), np.float32),
           "1-D": X.ravel(), "list": X.tolist()}
    for name, bad_X in bad.items():
        with pytest.raises((ValueError, TypeError)):
            plan.train_batch(bad_X, y, None, None, 1)
    with pytest.raises(ValueError, match="labels"):
        plan.train_batch(X, y.astype(np.int32), None, None, 1)
    with pytest.raises(ValueError, match="labels"):
        plan.train_batch(X, y[:-1], None, None, 1)
    # while the model converts the same inputs and trains
    for name in ("float64", "big-endian", "columns-strided", "list"):
        model.train_on_batch(bad[name], y)


# ---- layer kinds as plug-ins: any last layer, samples of several rows -------------------

ANY_LAST = {
    "batchnorm-last-mse": ((12,), lambda: [fusenn.Dense(8, "relu"), fusenn.Dense(3),
                                           fusenn.BatchNorm()], "mse", (3,)),
    "dropout-last-ce": ((12,), lambda: [fusenn.Dense(8, "tanh"), fusenn.Dense(4),
                                        fusenn.Dropout(0.3)], "cross_entropy", (4,)),
    "sequence-ce-per-step": ((5, 6), lambda: [fusenn.Dense(7, "gelu"), fusenn.BatchNorm(),
                                              fusenn.Dropout(0.2), fusenn.Dense(4, "softmax")],
                             "cross_entropy", (5, 4)),
    "sequence-bce": ((3, 6), lambda: [fusenn.Dense(5, "relu"), fusenn.Dense(2, "sigmoid")],
                     "binary_cross_entropy", (3, 2)),
}


def sequence_data(n, in_shape, out_shape, loss, dtype, seed=1):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, *in_shape)).astype(dtype)
    if loss == "cross_entropy":
        y = rng.integers(0, out_shape[-1], (n, *out_shape[:-1])).reshape(n, *out_shape[:-1])
        return X, (y[:, 0] if y.shape[1:] == (1,) else y) if len(out_shape) > 1 else \
            rng.integers(0, out_shape[-1], n)
    if loss == "binary_cross_entropy":
        return X, (rng.random((n, *out_shape)) > 0.5).astype(dtype)
    return X, rng.standard_normal((n, *out_shape)).astype(dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("net", ANY_LAST)
def test_any_layer_kind_last_and_samples_of_several_rows(net, dtype):
    """The loss fuses with whatever layer comes last, and a Dense, BatchNorm or
    Dropout on sequences acts per step; the engine gives the op-by-op bits."""
    in_shape, layers, loss, out_shape = ANY_LAST[net]
    X, y = sequence_data(40, in_shape, out_shape, loss, dtype)
    sw = np.linspace(0.5, 2.0, len(X))
    models = []
    for op_by_op in (False, True):
        model = fusenn.Sequential(layers(), input_shape=in_shape, dtype=dtype, seed=5)
        model.compile(loss=loss, optimizer=optimizer("adam", op_by_op))
        models.append(model)
    engine, by_op = models
    assert engine._engine() is not None and by_op._engine() is None
    assert engine.output_shape == out_shape
    for _ in range(3):
        assert engine.train_on_batch(X, y, sample_weight=sw) == \
            by_op.train_on_batch(X, y, sample_weight=sw)
    h1 = engine.fit(X, y, epochs=2, batch_size=16, verbose=0)
    h2 = by_op.fit(X, y, epochs=2, batch_size=16, verbose=0)
    assert_same_weights(engine, by_op)
    assert {k: v for k, v in h1.history.items() if k != "time"} == \
        {k: v for k, v in h2.history.items() if k != "time"}
    np.testing.assert_array_equal(engine.predict(X), by_op.predict(X))
    assert engine.predict(X).shape == (40, *out_shape)
    assert engine.evaluate(X, y) == by_op.evaluate(X, y)


def test_per_step_cross_entropy_is_the_mean_over_every_step():
    """Labels (n, T): the loss and accuracy average over all n T steps (Keras)."""
    X, y = sequence_data(30, (5, 6), (5, 4), "cross_entropy", "float64")
    model = fusenn.Sequential([fusenn.Dense(4, "softmax")], input_shape=(5, 6),
                              dtype="float64", seed=0)
    model.compile("cross_entropy", "sgd")
    p = model.predict(X)
    expected = -np.mean(np.log(np.take_along_axis(p, y[..., None], axis=-1)))
    result = model.evaluate(X, y)
    assert result["loss"] == pytest.approx(expected, rel=1e-12)
    assert result["accuracy"] == pytest.approx(np.mean(p.argmax(-1) == y))


def test_predict_takes_one_call_and_falls_back_for_anything_else():
    """predict's engine path (also for an uncompiled model) gives the op-by-op bits;
    inputs it cannot take as they are go through the checked path."""
    dims, acts, loss = NETS["ce-softmax"]
    X, y = make_data(30, dims, loss)
    model = fusenn.Sequential([fusenn.Dense(u, a) for u, a in zip(dims[1:], acts)],
                              input_dim=dims[0], seed=4)
    by_op = fusenn.Sequential([fusenn.Dense(u, a) for u, a in zip(dims[1:], acts)],
                              input_dim=dims[0], seed=4, backend="numpy")
    p = model.predict(X)  # uncompiled: an inference plan
    assert model._plan is not None
    np.testing.assert_allclose(p, by_op.predict(X), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(model.predict(X[:1]), p[:1])
    np.testing.assert_array_equal(model.predict(X.astype(np.float64)), p)  # converted
    np.testing.assert_array_equal(model.predict(X.tolist()), p)
    np.testing.assert_array_equal(model.predict(np.asfortranarray(X)), p)
    with pytest.raises(ValueError, match="X contains NaN"):
        model.predict(np.where(X > 1, np.nan, X))
    with pytest.raises(ValueError, match=r"shape \(n_samples, 12\)"):
        model.predict(X[:, :5])
    with pytest.raises(ValueError, match="empty"):
        model.predict(X[:0])
    model.compile(loss, optimizer("adam"))  # training replaces the inference plan
    model.fit(X, y, epochs=2, batch_size=8, verbose=0)
    by_op.set_weights(model.get_weights())
    np.testing.assert_allclose(model.predict(X), by_op.predict(X), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("nthreads", [1, 2])
@pytest.mark.parametrize("short_rows", [7, 50])
def test_long_predict_in_parts_gives_the_bits_of_short_calls(nthreads, short_rows):
    """A long predict runs in interruptible parts sized by time (16 samples first);
    each output's bits do not depend on the parts, so they equal short calls' (7 rows:
    the few-row tiles; 50 rows on one thread: the tile that reads the 160-column weights
    in place)."""
    model = fusenn.Sequential([fusenn.Dense(160, "relu"), fusenn.Dense(5, "softmax")],
                              input_dim=40, seed=3)
    X = np.random.default_rng(0).standard_normal((2500, 40)).astype(np.float32)
    with fusenn.threads(nthreads):
        whole = model.predict(X)
        short = np.concatenate([model.predict(X[i:i + short_rows])
                                for i in range(0, len(X), short_rows)])
    np.testing.assert_array_equal(whole, short)


# ---- batches in chunks (the single-process form of a distributed fit) -------------------------

@pytest.mark.parametrize("chunks", [2, 3, 4, 7])
@pytest.mark.parametrize("net", ["ce-softmax", "bce"])
def test_chunked_steps_are_bitwise_the_op_by_op_ones(net, chunks):
    """With batch_chunks, the engine and the op-by-op path take the same chunk
    gradients and add them in the same order; Dropout and BatchNorm included."""
    dims, acts, loss = NETS[net]
    X, y = make_data(45, dims, loss)
    sw = np.linspace(0.5, 1.5, len(X))

    def make(op_by_op):
        layers = [fusenn.Dense(dims[1], acts[0]), fusenn.Dropout(0.3), fusenn.BatchNorm(),
                  *[fusenn.Dense(u, a) for u, a in zip(dims[2:], acts[1:])]]
        model = fusenn.Sequential(layers, input_dim=dims[0], seed=2)
        model.compile(loss, optimizer("adamw-global-clipvalue", op_by_op))
        return model

    engine, by_op = make(False), make(True)
    for _ in range(2):
        assert engine.train_on_batch(X, y, sample_weight=sw, batch_chunks=chunks) == \
            by_op.train_on_batch(X, y, sample_weight=sw, batch_chunks=chunks)
    h1 = engine.fit(X, y, epochs=2, batch_size=16, batch_chunks=chunks, verbose=0)
    h2 = by_op.fit(X, y, epochs=2, batch_size=16, batch_chunks=chunks, verbose=0)
    assert_same_weights(engine, by_op)
    assert {k: v for k, v in h1.history.items() if k != "time"} == \
        {k: v for k, v in h2.history.items() if k != "time"}


@pytest.mark.parametrize("chunks", [1, 3])
def test_sample_weights_of_sequence_outputs_in_fit(chunks):
    """fit weighs each step of a sample by the sample's weight (the engine once
    read weights for rows it had not expanded): engine and op by op agree."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((21, 5, 3)).astype(np.float32)
    y = rng.standard_normal((21, 5, 2)).astype(np.float32)
    sw = rng.uniform(0.5, 1.5, len(X))

    def make(op_by_op):
        model = fusenn.Sequential([fusenn.Dense(4, "tanh"), fusenn.Dense(2)],
                                  input_shape=(5, 3), seed=1)
        model.compile("mse", optimizer("momentum", op_by_op))
        return model

    engine, by_op = make(False), make(True)
    h1 = engine.fit(X, y, epochs=2, batch_size=8, sample_weight=sw, batch_chunks=chunks, verbose=0)
    h2 = by_op.fit(X, y, epochs=2, batch_size=8, sample_weight=sw, batch_chunks=chunks, verbose=0)
    assert_same_weights(engine, by_op)
    assert h1.history["loss"] == h2.history["loss"]


def test_chunks_add_up_to_the_batch():
    """Without BatchNorm a chunked step is the plain step up to rounding (the
    gradient is a sum either way), and Dropout draws the whole batch's masks: the
    bits differ only by the order of the additions."""
    dims, acts, loss = (12, 30, 4), ("relu", "softmax"), "cross_entropy"
    X, y = make_data(64, dims, loss, dtype="float64")
    models = []
    for chunks in (1, 4):
        model = fusenn.Sequential([fusenn.Dense(30, "relu"), fusenn.Dropout(0.4),
                                   fusenn.Dense(4, "softmax")], input_dim=12, dtype="float64",
                                  seed=1)
        model.compile(loss, fusenn.SGD(lr=0.1))
        model.fit(X, y, epochs=2, batch_size=32, batch_chunks=chunks, verbose=0)
        models.append(model)
    for a, b in zip(models[0].get_weights(), models[1].get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
        assert not np.array_equal(a, b) or a.ndim == 1  # the rounding did move the weights
