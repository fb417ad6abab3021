"""fusenn.plot: every function returns a Figure, saves a PNG and rejects bad input."""

import subprocess
import sys

import numpy as np
import pytest

import fusenn
from fusenn import plot

PNG = b"\x89PNG\r\n\x1a\n"


def test_import_fusenn_does_not_import_matplotlib():
    # and without matplotlib, the error says what to install
    code = ("import sys, fusenn, fusenn.plot\n"
            "print('matplotlib' in sys.modules)\n"
            "sys.modules['matplotlib'] = None\n"
            "try:\n    fusenn.plot.history({'loss': [1.0]})\n"
            "except ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    lines = out.stdout.splitlines()
    assert lines[0] == "False"
    assert "pip install fusenn[plot]" in lines[1]


def test_confusion_counts_needs_only_numpy():
    C, labels = plot.confusion_counts([0, 1, 2, 2, 1], [0, 2, 2, 2, 1])
    assert labels.tolist() == [0, 1, 2]
    assert C.dtype == np.int64
    assert C.tolist() == [[1, 0, 0], [0, 1, 1], [0, 0, 2]]
    # labels in a given order; samples outside them are not counted
    C, labels = plot.confusion_counts(["b", "a", "c"], ["a", "a", "c"], labels=["b", "a"])
    assert C.tolist() == [[0, 1], [0, 1]]
    # scores and one-hot rows are reduced by argmax, a single column by 0.5
    P = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    C, _ = plot.confusion_counts(np.eye(2)[[0, 1, 1]], P)
    assert C.tolist() == [[1, 0], [1, 1]]
    C, _ = plot.confusion_counts([0, 1, 1], np.array([[0.2], [0.7], [0.4]]))
    assert C.tolist() == [[1, 0], [1, 1]]
    y = np.random.default_rng(0).integers(0, 7, 500)
    p = np.random.default_rng(1).integers(0, 7, 500)
    C, _ = plot.confusion_counts(y, p)
    expected = np.zeros((7, 7), int)
    np.add.at(expected, (y, p), 1)
    np.testing.assert_array_equal(C, expected)


@pytest.mark.parametrize("args, match", [
    (([0, 1], [0]), "same length"),
    (([], []), "no labels"),
    (([[[0]]], [[[0]]]), "shape"),
    (([0], [0], [1, 1]), "repeat"),
    (([0], [0], []), "labels"),
])
def test_confusion_counts_errors(args, match):
    with pytest.raises(ValueError, match=match):
        plot.confusion_counts(*args)


@pytest.fixture
def Figure():
    return pytest.importorskip("matplotlib.figure").Figure


@pytest.fixture
def close():
    pytest.importorskip("matplotlib")
    figures = []
    yield figures.append
    import matplotlib.pyplot as plt
    for fig in figures:
        plt.close(fig)


def check_png(path):
    with open(path, "rb") as f:
        assert f.read(8) == PNG


def trained():
    X, y = fusenn.datasets.load_digits()
    model = fusenn.Sequential([fusenn.Dense(16, activation="relu"),
                               fusenn.Dense(10, activation="softmax")], input_dim=64, seed=0)
    model.compile(loss="cross_entropy", optimizer=fusenn.SGD(lr=0.1, momentum=0.9))
    hist = model.fit(X[:300], y[:300], epochs=3, validation_data=(X[300:400], y[300:400]),
                     verbose=0)
    return model, hist, X[300:400], y[300:400]


def test_history(tmp_path, close, Figure):
    model, hist, _, _ = trained()
    fig = plot.history(hist, save=tmp_path / "h.png")
    close(fig)
    assert isinstance(fig, Figure)
    check_png(tmp_path / "h.png")
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["loss", "accuracy"]
    assert [line.get_label() for line in fig.axes[0].get_lines()] == ["train", "validation"]
    np.testing.assert_allclose(fig.axes[0].get_lines()[0].get_ydata(), hist.history["loss"])
    fig = plot.history(hist.history, metrics="accuracy", save=str(tmp_path / "noext"))
    close(fig)
    check_png(tmp_path / "noext")
    assert [ax.get_title() for ax in fig.axes] == ["accuracy"]
    fig = plot.history({"loss": [3, 2, 1]})  # no validation, no accuracy
    close(fig)
    assert len(fig.axes) == 1 and len(fig.axes[0].get_lines()) == 1
    logs = {"loss": [3, 2], "time": [0.1, 0.1], "lr": [0.1, 0.05], "mae": [1, 0.5],
            "val_mae": [2, 1]}
    fig = plot.history(logs)  # time and lr only on request
    close(fig)
    assert [ax.get_title() for ax in fig.axes] == ["loss", "mae"]
    fig = plot.history(logs, metrics=["lr", "loss"])
    close(fig)
    assert [ax.get_title() for ax in fig.axes] == ["lr", "loss"]


@pytest.mark.parametrize("hist, kwargs, error, match", [
    ({"loss": [1, 2]}, dict(metrics="accuracy"), ValueError, "not in the history"),
    ({"loss": [1, 2]}, dict(metrics=[]), ValueError, "not in the history"),
    ({}, {}, ValueError, "nothing"),
    ({"loss": []}, {}, ValueError, "empty"),
    ({"loss": ["a"]}, {}, ValueError, "numbers"),
    ({"loss": [[1, 2]]}, {}, ValueError, "numbers"),
    ([1, 2], {}, TypeError, "History"),
    ({"loss": [1.0]}, dict(save=3), TypeError, "save"),
])
def test_history_errors(hist, kwargs, error, match):
    plt = pytest.importorskip("matplotlib.pyplot")
    before = plt.get_fignums()
    with pytest.raises(error, match=match):
        plot.history(hist, **kwargs)
    for num in set(plt.get_fignums()) - set(before):
        plt.close(num)


def test_weights(tmp_path, close, Figure):
    model, _, _, _ = trained()
    fig = plot.weights(model.layers[0], save=tmp_path / "w.png")
    close(fig)
    assert isinstance(fig, Figure)
    check_png(tmp_path / "w.png")
    images = [ax.get_images()[0] for ax in fig.axes if ax.get_images()]
    assert len(images) == 16
    np.testing.assert_allclose(images[5].get_array(), model.layers[0].W[:, 5].reshape(8, 8))
    fig = plot.weights(model, max_neurons=5)  # a model: its first layer
    close(fig)
    assert sum(1 for ax in fig.axes if ax.get_images()) == 5
    fig = plot.weights(np.random.default_rng(0).standard_normal((28 * 28, 3)), shape=(28, 28))
    close(fig)
    assert sum(1 for ax in fig.axes if ax.get_images()) == 3
    fig = plot.weights(np.zeros(12), shape=(3, 4))
    close(fig)


@pytest.mark.parametrize("target, kwargs, error, match", [
    (np.zeros((64, 4)), dict(shape=(7, 7)), ValueError, "64 inputs"),
    (np.zeros((64, 4)), dict(shape=(8,)), ValueError, "shape"),
    (np.zeros((64, 4)), dict(shape=(8, 0)), ValueError, "shape"),
    (np.zeros((64, 4)), dict(max_neurons=0), ValueError, "max_neurons"),
    (np.zeros((2, 64, 4)), {}, ValueError, "inputs, units"),
    (np.zeros((64, 0)), {}, ValueError, "inputs, units"),
    (np.full((64, 1), np.nan), {}, ValueError, "NaN"),
    (fusenn.Dense(4), {}, ValueError, "not built"),
    (fusenn.Sequential(), {}, ValueError, "no layers with weights"),
    ("abc", {}, TypeError, "Dense layer"),
])
def test_weights_errors(target, kwargs, error, match):
    with pytest.raises(error, match=match):
        plot.weights(target, **kwargs)


def test_confusion_matrix(tmp_path, close, Figure):
    model, _, X, y = trained()
    P = model.predict(X)
    fig = plot.confusion_matrix(y, P, save=tmp_path / "c.png")
    close(fig)
    assert isinstance(fig, Figure)
    check_png(tmp_path / "c.png")
    counts, _ = plot.confusion_counts(y, P)
    np.testing.assert_array_equal(fig.axes[0].get_images()[0].get_array(), counts)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert len(texts) == counts.size and texts[0] == str(counts[0, 0])
    for normalize, axis in ((True, 1), ("true", 1), ("pred", 0), ("all", None)):
        fig = plot.confusion_matrix([0, 0, 1, 2], [0, 1, 1, 1], labels=[0, 1, 2, 3],
                                    normalize=normalize)
        close(fig)
        C = np.array([[1, 1, 0, 0], [0, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]], float)
        total = C.sum(axis=axis, keepdims=axis is not None)
        expected = np.divide(C, total, out=np.zeros_like(C), where=total > 0)
        np.testing.assert_allclose(fig.axes[0].get_images()[0].get_array(), expected)
    with pytest.raises(ValueError, match="normalize"):
        plot.confusion_matrix([0], [0], normalize="rows")
    with pytest.raises(ValueError, match="same length"):
        plot.confusion_matrix([0, 1], [0])
