"""save / load: bit-exact round trips, rejection of bad files, atomic and well-permissioned writes."""

import os

import numpy as np
import pytest

import fusenn
import fusenn.model

DTYPES = ("float32", "float64")
OPTIMIZERS = {
    "sgd": lambda: fusenn.SGD(lr=0.05),
    "momentum": lambda: fusenn.SGD(lr=0.05, momentum=0.9, nesterov=True),
    "adam": lambda: fusenn.Adam(lr=0.01, beta1=0.85, beta2=0.99, eps=1e-7),
    "adamw": lambda: fusenn.AdamW(lr=0.01, weight_decay=0.05, clipnorm=0.5),
    "rmsprop": lambda: fusenn.RMSprop(lr=0.01, rho=0.8, l2=1e-3, clipvalue=0.2),
    "adagrad": lambda: fusenn.Adagrad(lr=0.05, global_clipnorm=0.3),
}


def make_model(dtype="float64", optimizer="momentum", backend="c", compile=True):
    model = fusenn.Sequential([fusenn.Dense(7, "relu"), fusenn.Dense(5, "tanh"),
                               fusenn.Dense(3, "softmax")],
                              input_dim=4, dtype=dtype, seed=3, backend=backend)
    if compile:
        model.compile(loss="cross_entropy", optimizer=OPTIMIZERS[optimizer]())
    return model


def batches(n_batches, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.normal(size=(10, 4)), rng.integers(0, 3, size=10)) for _ in range(n_batches)]


def train(model, data):
    for X, y in data:
        model.train_on_batch(X, y)


def assert_weights_identical(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(x, y)


def saved_model_file(tmp_path, name="model.npz"):
    model = make_model()
    train(model, batches(2))
    path = tmp_path / name
    model.save(path)
    return model, path


def config_without_iterations(model):
    return {k: v for k, v in model.config().items() if k != "optimizer_iterations"}


# ---- round trips -------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["c", "numpy"])
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_round_trip_is_bit_exact_and_training_continues_identically(tmp_path, dtype, optimizer,
                                                                      backend):
    model = make_model(dtype, optimizer, backend)
    train(model, batches(3, seed=1))
    path = tmp_path / "model.npz"
    model.save(path)
    loaded = fusenn.load(path)

    # layers, dtype, loss, optimizer hyperparameters (iterations: see the next test)
    assert config_without_iterations(loaded) == config_without_iterations(model)
    assert [l.config() for l in loaded.layers] == [l.config() for l in model.layers]
    assert loaded.dtype == np.dtype(dtype) and loaded.loss.name == "cross_entropy"
    assert type(loaded.optimizer) is type(model.optimizer)
    assert_weights_identical(loaded.get_weights(), model.get_weights())
    for name, states in (model.optimizer.state or {}).items():
        assert_weights_identical(loaded.optimizer.state[name], states)
    X = batches(1, seed=2)[0][0]
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))

    more = batches(4, seed=3)
    train(model, more)
    train(loaded, more)
    assert_weights_identical(loaded.get_weights(), model.get_weights())


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_round_trip_preserves_optimizer_iterations(tmp_path, optimizer):
    model = make_model(optimizer=optimizer)
    train(model, batches(3))
    model.save(tmp_path / "m.npz")
    loaded = fusenn.load(tmp_path / "m.npz")
    assert model.optimizer.iterations == 3
    assert loaded.optimizer.iterations == 3
    assert loaded.config() == model.config()


@pytest.mark.parametrize("trained", [False, True], ids=["fresh", "trained"])
@pytest.mark.parametrize("compiled", [False, True], ids=["uncompiled", "compiled"])
def test_round_trip_of_untrained_or_uncompiled_models(tmp_path, compiled, trained):
    model = make_model(compile=compiled)
    if trained and compiled:
        train(model, batches(1))
    model.save(str(tmp_path / "m.npz"))  # str paths work as well as pathlib ones
    loaded = fusenn.load(str(tmp_path / "m.npz"))
    assert loaded.config() == model.config()
    assert_weights_identical(loaded.get_weights(), model.get_weights())
    assert (loaded.loss is None) == (not compiled)


# ---- rejected files --------------------------------------------------------------------------

def arrays_of(path):
    with np.load(path) as f:
        return {key: f[key] for key in f.files}


def without(key):
    def edit(arrays):
        del arrays[key]
        return arrays
    return edit


def replaced(key, value):
    def edit(arrays):
        arrays[key] = value(arrays) if callable(value) else value
        return arrays
    return edit


class MakesDirectoryWhenUnpickled:
    """Unpickling this calls os.mkdir(marker): proof that load unpickled something."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def pickled_object_array(marker):
    return np.array([MakesDirectoryWhenUnpickled(marker), 1], dtype=object)


BAD_NPZ_EDITS = {
    "missing-param": without("param_1"),
    "missing-config": without("config"),
    "missing-format": without("fusenn_format"),
    "wrong-format-version": replaced("fusenn_format", np.array(fusenn.model.FORMAT_VERSION + 1)),
    "format-version-not-an-int": replaced("fusenn_format", np.array("1")),
    "transposed-param": replaced("param_0", lambda a: a["param_0"].T.copy()),
    "param-of-other-dtype": replaced("param_2", lambda a: a["param_2"].astype(np.float32)),
    "nan-param": replaced("param_1", lambda a: np.full_like(a["param_1"], np.nan)),
    "config-not-json": replaced("config", np.array("{not json")),
    "config-unknown-activation": replaced(
        "config", lambda a: np.array(str(a["config"]).replace('"tanh"', '"mish"'))),
    "mismatched-optimizer-state": replaced("opt_velocity_0", np.zeros((2, 2))),
}


@pytest.mark.parametrize("case", BAD_NPZ_EDITS)
def test_load_rejects_inconsistent_npz(tmp_path, case):
    _, path = saved_model_file(tmp_path)
    bad = tmp_path / "bad.npz"
    np.savez(bad, **BAD_NPZ_EDITS[case](arrays_of(path)))
    with pytest.raises(ValueError, match="is not a valid fusenn model file"):
        fusenn.load(bad)


@pytest.mark.parametrize("key", ["config", "param_0", "extra"])
def test_load_refuses_pickled_objects_without_unpickling(tmp_path, key):
    _, path = saved_model_file(tmp_path)
    marker = tmp_path / "unpickled"
    arrays = arrays_of(path)
    arrays[key] = pickled_object_array(marker)
    bad = tmp_path / "pickled.npz"
    np.savez(bad, **arrays)  # allow_pickle defaults to True when saving
    with pytest.raises(ValueError, match="is not a valid fusenn model file"):
        fusenn.load(bad)
    assert not marker.exists()


def truncated(data):
    return data[: len(data) // 2]


BAD_BYTES = {
    "truncated": truncated,
    "truncated-to-header": lambda data: data[:30],
    "random-bytes": lambda data: np.random.default_rng(0).bytes(len(data)),
    "empty": lambda data: b"",
    "text": lambda data: b"hello, this is not a model\n",
}


@pytest.mark.parametrize("case", BAD_BYTES)
def test_load_rejects_corrupt_files(tmp_path, case):
    _, path = saved_model_file(tmp_path)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(BAD_BYTES[case](path.read_bytes()))
    with pytest.raises(ValueError, match="is not a valid fusenn model file"):
        fusenn.load(bad)


def test_load_rejects_a_plain_npy_file(tmp_path):
    bad = tmp_path / "array.npy"
    np.save(bad, np.ones(3))
    with pytest.raises(ValueError, match="is not a valid fusenn model file"):
        fusenn.load(bad)


def test_load_of_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        fusenn.load(tmp_path / "nope.npz")


# ---- atomic, well-permissioned writes ---------------------------------------------------------

def fail_after_partial_write(monkeypatch):
    """Make numpy.savez (what Sequential.save writes with) die after writing a few bytes."""
    real_savez = np.savez

    def failing_savez(file, *args, **kwargs):
        real_savez(file, *args, **kwargs)
        file.seek(10)
        file.truncate()
        raise OSError("simulated disk full")

    monkeypatch.setattr(fusenn.model.np, "savez", failing_savez)


def test_failed_save_keeps_the_previous_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    original, path = saved_model_file(tmp_path)
    before = path.read_bytes()
    changed = make_model(optimizer="adam")
    train(changed, batches(3, seed=9))

    fail_after_partial_write(monkeypatch)
    with pytest.raises(OSError, match="simulated disk full"):
        changed.save(path)

    assert sorted(os.listdir(tmp_path)) == [path.name]
    assert path.read_bytes() == before
    assert_weights_identical(fusenn.load(path).get_weights(), original.get_weights())


def test_failed_first_save_leaves_nothing(tmp_path, monkeypatch):
    fail_after_partial_write(monkeypatch)
    with pytest.raises(OSError):
        make_model().save(tmp_path / "model.npz")
    assert os.listdir(tmp_path) == []


def test_save_over_existing_file_replaces_it(tmp_path):
    _, path = saved_model_file(tmp_path)
    other = make_model(optimizer="adam")
    train(other, batches(2, seed=4))
    other.save(path)
    assert sorted(os.listdir(tmp_path)) == [path.name]
    assert_weights_identical(fusenn.load(path).get_weights(), other.get_weights())


@pytest.fixture
def umask(request):
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002], indirect=True)
def test_saved_file_has_the_permissions_the_umask_allows(tmp_path, umask):
    _, path = saved_model_file(tmp_path)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


# ---- pickle ---------------------------------------------------------------------


def pickle_with_readonly_arrays(model):
    """Pickle and unpickle `model` the way joblib's memory maps hand arrays
    back: every array's data lives in a read-only buffer."""
    import pickle
    buffers = []
    data = pickle.dumps(model, protocol=5, buffer_callback=buffers.append)
    return pickle.loads(data, buffers=[memoryview(b.raw()).toreadonly() for b in buffers])


def model_arrays(model):
    return [*model.params, *model.buffers, model.layers[2].step_counter,
            *[a for arrays in (model.optimizer.state or {}).values() for a in arrays]]


@pytest.mark.parametrize("optimizer", ["momentum", "adam"])
def test_unpickled_read_only_arrays_become_writeable_and_training_continues(optimizer):
    model = fusenn.Sequential([fusenn.Dense(6, "relu"), fusenn.BatchNorm(),
                               fusenn.Dropout(0.2), fusenn.Dense(3, "softmax")],
                              input_dim=4, dtype="float32", seed=1)
    model.compile(loss="cross_entropy", optimizer=OPTIMIZERS[optimizer]())
    data = batches(4)
    train(model, data[:2])
    model.predict(data[0][0])
    copy = pickle_with_readonly_arrays(model)
    arrays = model_arrays(copy)
    assert len(arrays) == len(model_arrays(model)) == 9 + 6 * len(model.optimizer._state_names)
    for a in arrays:
        assert a.flags.writeable and a.flags.c_contiguous
    for m in (model, copy):  # the C engine trains the copies exactly as the originals
        train(m, data[2:])
        m.fit(data[0][0], data[0][1], epochs=2, batch_size=4, verbose=0)
    assert_weights_identical(model_arrays(model), model_arrays(copy))
    assert copy.optimizer.iterations == model.optimizer.iterations
    np.testing.assert_array_equal(copy.predict(data[1][0]), model.predict(data[1][0]))


def test_unpickling_packs_the_parameters_into_one_writeable_arena():
    """After unpickling (whatever arrays came back: read-only, Fortran-ordered),
    every parameter is a view of the model's one arena and the optimizer's
    state of its state arenas, with the values it had."""
    model = make_model(dtype="float32", optimizer="adam")
    train(model, batches(1))
    state = model.__getstate__()
    W_ro = model.layers[1].W.copy()
    W_ro.flags.writeable = False
    W_strided = np.asfortranarray(model.layers[2].W)
    m_ro = model.optimizer.state["m"][0].copy()
    m_ro.flags.writeable = False
    model.layers[1].W, model.layers[2].W = W_ro, W_strided
    model.optimizer.state["m"][0] = m_ro
    copy = fusenn.Sequential.__new__(fusenn.Sequential)
    copy.__setstate__(state)
    assert copy._arena.holds(copy._arena_flat, copy.params)
    for name, flat in zip(copy.optimizer._state_names, copy.optimizer.state_arenas()):
        assert copy._arena.holds(flat, copy.optimizer.state[name])
    for got, was in [(copy.layers[1].W, W_ro), (copy.layers[2].W, W_strided),
                     (copy.optimizer.state["m"][0], m_ro)]:
        assert got.flags.writeable and got.flags.c_contiguous
        np.testing.assert_array_equal(got, was)
