"""Convolutional networks through the model API: Keras's shapes, padding and
errors, summaries, saving, data, float64 finite-difference gradients of whole
CNNs on both backends. The kernels against the reference are test_conv.py's."""

import json
import math

import numpy as np
import pytest

import fusenn
from fusenn import (AveragePooling2D, BatchNorm, Conv2D, Dense, Dropout, Flatten,
                    GlobalAveragePooling2D, GlobalMaxPooling2D, MaxPooling2D, Reshape)
from fusenn._kernels import kinds
from fusenn.layers import window_padding
from fusenn.optimizers import Optimizer

HAS_C_CONV = {"conv2d", "pool2d"} <= set(kinds())
BACKENDS = [pytest.param("numpy"),
            pytest.param("c", marks=pytest.mark.skipif(not HAS_C_CONV,
                                                       reason="the C conv2d/pool2d kinds"))]


# ---- shapes and padding, as Keras --------------------------------------------------------

@pytest.mark.parametrize("size", [1, 2, 5, 8, 28])
@pytest.mark.parametrize("kernel", [1, 2, 3, 5])
@pytest.mark.parametrize("stride", [1, 2, 3])
@pytest.mark.parametrize("dilation", [1, 2])
def test_same_padding_is_keras(size, kernel, stride, dilation):
    """'same': ceil(size / stride) outputs, the odd padding cell at the bottom/right."""
    (top, bottom), _ = window_padding("same", (size, size), (kernel, kernel), (stride, stride),
                                      (dilation, dilation))
    span = dilation * (kernel - 1) + 1
    out = (size + top + bottom - span) // stride + 1
    assert out == math.ceil(size / stride)
    total = max((out - 1) * stride + span - size, 0)
    assert (top, bottom) == (total // 2, total - total // 2)


@pytest.mark.parametrize("layer, input_shape, output_shape", [
    (Conv2D(6, 5, padding="same"), (28, 28, 1), (28, 28, 6)),
    (Conv2D(16, 5), (14, 14, 6), (10, 10, 16)),
    (Conv2D(4, (3, 2), strides=(2, 1), dilation_rate=(1, 2)), (9, 7, 3), (4, 5, 4)),
    (Conv2D(3, 7), (7, 7, 2), (1, 1, 3)),  # a kernel as large as the input
    (MaxPooling2D(), (28, 28, 6), (14, 14, 6)),
    (MaxPooling2D(3, strides=2, padding="same"), (7, 7, 2), (4, 4, 2)),
    (AveragePooling2D((2, 3)), (5, 7, 4), (2, 2, 4)),
    (GlobalAveragePooling2D(), (5, 7, 4), (4,)),
    (GlobalMaxPooling2D(), (6, 3), (3,)),
    (Flatten(), (5, 5, 16), (400,)),
    (Reshape((2, -1)), (3, 4), (2, 6)),
    (Dense(5), (7, 3), (7, 5)),
])
def test_output_shapes(layer, input_shape, output_shape):
    assert layer.compute_output_shape(input_shape) == output_shape


@pytest.mark.parametrize("make, input_shape, match", [
    (lambda: Conv2D(4, 5), (4, 8, 1), r"Conv2D.*\(None, 4, 8, 1\).*larger than the padded"),
    (lambda: Conv2D(4, 3, dilation_rate=3), (6, 6, 1), "larger than the padded"),
    (lambda: MaxPooling2D(3), (2, 8, 1), "MaxPooling2D.*larger"),
    (lambda: Conv2D(4, 3), (28, 28), r"images \(height, width, channels\)"),
    (lambda: Dense(10), (7, 7, 16), "Flatten"),
    (lambda: GlobalAveragePooling2D(), (16,), "already flat"),
    (lambda: Reshape((3, 3)), (10,), "do not fill"),
])
def test_a_layer_that_cannot_take_its_input_says_so(make, input_shape, match):
    with pytest.raises(ValueError, match=match):
        fusenn.Sequential([make()], input_shape=input_shape)


@pytest.mark.parametrize("make, match", [
    (lambda: Conv2D(0, 3), "filters"),
    (lambda: Conv2D(4, -3), "kernel_size"),
    (lambda: Conv2D(4, (3, 0)), "kernel_size"),
    (lambda: Conv2D(4, 3, strides=0), "strides"),
    (lambda: Conv2D(4, 3, padding="full"), "padding"),
    (lambda: MaxPooling2D(0), "pool_size"),
    (lambda: AveragePooling2D(2, strides=(1, 2, 3)), "strides"),
    (lambda: Reshape((0, 3)), "target_shape"),
])
def test_bad_layer_arguments(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def lenet(**kw):
    return fusenn.Sequential([Conv2D(6, 5, padding="same", activation="relu"), MaxPooling2D(),
                              Conv2D(16, 5, activation="relu"), MaxPooling2D(), Flatten(),
                              Dense(120, "relu"), Dense(84, "relu"), Dense(10, "softmax")],
                             input_shape=(28, 28, 1), **kw)


def test_summary_shows_keras_shapes_and_parameter_counts():
    import re
    text = lenet().summary(print_fn=None)
    for row in (r"1\. Conv2D \(relu\) +\(None, 28, 28, 6\) +156\n",
                r"2\. MaxPooling2D +\(None, 14, 14, 6\) +0\n",
                r"3\. Conv2D \(relu\) +\(None, 10, 10, 16\) +2,416\n",
                r"5\. Flatten +\(None, 400\) +0\n",
                r"6\. Dense \(relu\) +\(None, 120\) +48,120\n"):
        assert re.search(row, text), text
    assert "Trainable params: 61,706" in text  # LeNet-5 as Keras counts it


def test_weights_have_keras_shapes():
    model = fusenn.Sequential([Conv2D(4, (3, 2)), Conv2D(5, 1, use_bias=False), Flatten(),
                               Dense(2)], input_shape=(6, 5, 3))
    shapes = [w.shape for w in model.get_weights()]
    assert shapes == [(3, 2, 3, 4), (4,), (1, 1, 4, 5), (80, 2), (2,)]


def test_images_that_do_not_match_input_shape_are_refused():
    model = lenet()
    model.compile("cross_entropy", "sgd")
    with pytest.raises(ValueError, match=r"X must have shape \(n_samples, 28, 28, 1\).*"
                                         r"\(4, 28, 28, 3\)"):
        model.predict(np.zeros((4, 28, 28, 3), np.float32))
    with pytest.raises(ValueError, match=r"X must be 4-D with shape \(n_samples, 28, 28, 1\)"):
        model.predict(np.zeros((4, 784), np.float32))
    with pytest.raises(ValueError, match=r"y must be integer class labels of shape \(4,\)"):
        model.fit(np.zeros((4, 28, 28, 1), np.float32), np.zeros((4, 10)), verbose=0)


# ---- finite-difference gradients of whole CNNs -------------------------------------------

class GradientRecorder(Optimizer):
    """Records the gradients the model's training step hands over; never updates."""

    def step(self, backend, params, grads):
        self.grads = [np.array(g, dtype=np.float64, copy=True) for g in grads]

    def _hyperparameters(self):
        return {}


NETS = {
    "conv-avgpool-flatten": ((7, 6, 2), lambda: [
        Conv2D(3, (3, 2), strides=(2, 1), padding="same", activation="tanh"),
        AveragePooling2D(2, strides=1, padding="same"), Conv2D(4, 2, dilation_rate=2,
                                                               activation="gelu"),
        Flatten(), Dense(3, "softmax")], "cross_entropy"),
    "conv-maxpool-global": ((6, 6, 1), lambda: [
        Conv2D(4, 3, activation="swish"), MaxPooling2D(2, padding="same"),
        Conv2D(5, 1, use_bias=False, activation="sigmoid"), GlobalAveragePooling2D(),
        Dense(2)], "mse"),
    "conv-bn-globalmax": ((5, 5, 3), lambda: [
        Conv2D(4, 3, padding="same"), BatchNorm(), GlobalMaxPooling2D(), Dense(1, "sigmoid")],
        "binary_cross_entropy"),
    "conv-last": ((5, 4, 2), lambda: [Conv2D(3, 2, activation="tanh"), Reshape((-1,))],
                  "mse"),
}


def _targets(loss, rng, n, out):
    if loss == "cross_entropy":
        return rng.permutation(np.arange(n) % out[-1])
    if loss == "binary_cross_entropy":
        return rng.uniform(0.1, 0.9, size=(n, *out))
    return rng.normal(size=(n, *out))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("net", NETS)
def test_cnn_gradients_match_finite_differences(net, backend):
    in_shape, layers, loss = NETS[net]
    rng = np.random.default_rng(3)
    model = fusenn.Sequential(layers(), input_shape=in_shape, dtype="float64", seed=1,
                              backend=backend)
    model.compile(loss, GradientRecorder())
    X = rng.normal(size=(5, *in_shape))
    y = _targets(loss, rng, 5, model.output_shape)
    model.train_on_batch(X, y)
    grads = model.optimizer.grads
    weights = model.get_weights()
    params = [w for w, (label, _) in zip(weights, model._weight_arrays())
              if not label.startswith("running")]
    assert len(params) == len(grads)
    eps = 1e-6
    checked = 0
    for p_index, (p, g) in enumerate(zip(params, grads)):
        for flat in rng.choice(p.size, size=min(p.size, 6), replace=False):
            index = np.unravel_index(flat, p.shape)
            moved = []
            for sign in (1, -1):
                w = [a.copy() for a in weights]
                where = [i for i, (label, _) in enumerate(model._weight_arrays())
                         if not label.startswith("running")][p_index]
                w[where][index] += sign * eps
                model.set_weights(w)
                # BatchNorm in training mode: the loss of the training forward
                model._require_compiled()
                fused = model.loss.fused_kernel is not None
                z = model._forward(X, training=True, logits=fused)[0][-1]
                moved.append(model._loss_and_grad(z, y)[0])
            model.set_weights(weights)
            numeric = (moved[0] - moved[1]) / (2 * eps)
            assert g[index] == pytest.approx(numeric, rel=1e-5, abs=1e-8), (p_index, index)
            checked += 1
    assert checked >= 8


def _relu_then_max_pooling(backend, dtype, channels):
    Constant = fusenn.initializers.Constant
    return fusenn.Sequential([
        Conv2D(3, 3, padding="same", activation="relu", bias_initializer=Constant(-0.8)),
        MaxPooling2D(2, strides=1),  # overlapping windows: the gradient is scattered
        Conv2D(channels, 2, activation="relu", bias_initializer=Constant(-0.3)),
        MaxPooling2D(2),  # tiling windows of 64 bytes of channels or more: by whole vectors
        Flatten(), Dense(3, "softmax")], input_shape=(6, 6, 2), dtype=dtype, seed=1,
        backend=backend)


@pytest.mark.skipif(not HAS_C_CONV, reason="the C conv2d/pool2d kinds")
@pytest.mark.parametrize("nthreads", [1, 2])
@pytest.mark.parametrize("dtype, channels", [("float64", 8), ("float32", 24)])  # 24: overlapping
def test_max_pooling_after_relu_trains_as_the_reference(nthreads, dtype, channels):
    # The engine applies ReLU's derivative in max pooling's backward pass instead of the
    # conv's. Negative biases leave some windows all zero, whose maximum passes no gradient.
    rng = np.random.default_rng(4)
    X = rng.normal(size=(16, 6, 6, 2)).astype(dtype)
    y = rng.integers(0, 3, 16)
    weights = []
    for backend in ("c", "numpy"):
        model = _relu_then_max_pooling(backend, dtype, channels)
        model.compile("cross_entropy", fusenn.SGD(0.1, momentum=0.9))
        with fusenn.threads(nthreads):
            for _ in range(3):
                model.train_on_batch(X, y)
        weights.append(model.get_weights())
    tol = dict(rtol=1e-9, atol=1e-12) if dtype == "float64" else dict(rtol=1e-4, atol=1e-5)
    for got, want in zip(*weights):
        np.testing.assert_allclose(got, want, **tol)


# ---- saving, data, examples -----------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_a_cnn_saves_and_loads(backend, tmp_path):
    X, y = fusenn.datasets.load_digits(images=True)
    model = fusenn.Sequential([Conv2D(4, 3, padding="same", activation="relu"), MaxPooling2D(),
                               Dropout(0.2), Conv2D(8, 3), BatchNorm(), GlobalAveragePooling2D(),
                               Dense(10, "softmax")], input_shape=(8, 8, 1), seed=0,
                              backend=backend)
    model.compile("cross_entropy", fusenn.Adam(1e-2))
    model.fit(X[:200], y[:200], epochs=1, batch_size=32, verbose=0)
    model.save(tmp_path / "cnn.npz")
    loaded = fusenn.load(tmp_path / "cnn.npz")
    assert loaded.input_shape == (8, 8, 1)
    assert [type(a).__name__ for a in loaded.layers] == [type(a).__name__ for a in model.layers]
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(model.predict(X[:50]), loaded.predict(X[:50]))
    with np.load(tmp_path / "cnn.npz") as f:
        assert int(f["fusenn_format"]) == fusenn.saving.FORMAT_VERSION == 2


def test_version_1_files_still_load(tmp_path):
    """fusenn 0.1 wrote input_dim in the config under format version 1."""
    model = fusenn.Sequential([Dense(3, "relu"), Dense(2, "softmax")], input_dim=4, seed=0)
    model.compile("cross_entropy", "adam")
    model.train_on_batch(np.ones((2, 4), np.float32), np.array([0, 1]))
    model.save(tmp_path / "v2.npz")
    with np.load(tmp_path / "v2.npz") as f:
        arrays = {k: f[k] for k in f.files}
    config = json.loads(str(arrays["config"]))
    config["input_dim"] = config.pop("input_shape")[0]
    arrays["config"] = np.array(json.dumps(config))
    arrays["fusenn_format"] = np.array(1)
    np.savez(tmp_path / "v1.npz", **arrays)
    loaded = fusenn.load(tmp_path / "v1.npz")
    assert loaded.input_dim == 4 and loaded.optimizer.iterations == 1
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_digits_as_images():
    X, y = fusenn.datasets.load_digits(images=True)
    flat, _ = fusenn.datasets.load_digits()
    assert X.shape == (1797, 8, 8, 1) and X.dtype == np.float32
    np.testing.assert_array_equal(X.reshape(1797, 64), flat)


def test_fashion_mnist_says_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        fusenn.datasets.load_fashion_mnist(path=tmp_path)


@pytest.mark.skipif(not fusenn.datasets._idx.os.path.isdir(fusenn.datasets.FASHION_MNIST_DIR),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_is_the_real_data():
    X, y = fusenn.datasets.load_fashion_mnist("test")
    assert X.shape == (10000, 28, 28, 1) and y.shape == (10000,)
    assert X.dtype == np.float32 and 0 <= X.min() and X.max() == 1
    assert np.bincount(y).tolist() == [1000] * 10
    assert y[:5].tolist() == [9, 2, 1, 1, 6]  # the first test labels as published
