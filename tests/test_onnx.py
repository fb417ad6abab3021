"""ONNX export (fusenn.onnx_export.to_onnx): for every layer kind, activation and
a few whole models, onnx.checker passes on the exported graph and onnxruntime
gives predict's outputs within 1e-5 (float32) at batch sizes 1 and 7.

Weights, biases and BatchNorm's running statistics are drawn at random, so
every parameter counts. Models run on the C backend where the engine has all
their kinds and on the NumPy backend (the reference) otherwise."""

import subprocess
import sys

import numpy as np
import pytest

import fusenn
from fusenn import (GRU, LSTM, AveragePooling2D, BatchNorm, Conv2D, Dense, Dropout, Embedding,
                    Flatten, GlobalAveragePooling1D, GlobalAveragePooling2D, GlobalMaxPooling1D,
                    GlobalMaxPooling2D, MaxPooling2D, Reshape, SimpleRNN)
from fusenn._common import ACTIVATIONS
from fusenn._kernels import kinds

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from fusenn.onnx_export import DEFAULT_OPSET, EXPORTERS, MIN_OPSET, to_onnx  # noqa: E402

ENGINE_KINDS = set(kinds())
TOLERANCE = {"float32": 1e-5, "float64": 1e-12}
BATCHES = (1, 7)


def build(layers, input_shape, dtype="float32", scale=0.5, seed=0):
    """A model of `layers` with every weight and running statistic drawn at random."""
    backend = "c" if all(layer.engine_kind in ENGINE_KINDS for layer in layers) else "numpy"
    model = fusenn.Sequential(layers, input_shape=input_shape, dtype=dtype, seed=seed,
                              backend=backend)
    rng = np.random.default_rng(seed)
    weights = []
    for layer in model.layers:
        for name in (*layer.param_names, *layer.buffer_names):
            w = scale * rng.standard_normal(getattr(layer, name).shape)
            weights.append(np.abs(w) + 0.5 if name == "running_var" else w)
    model.set_weights(weights)
    return model


def images(shape, dtype="float32", n=max(BATCHES), seed=1):
    return np.random.default_rng(seed).standard_normal((n, *shape)).astype(dtype)


def session(proto):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # other processes share this machine's two cores
    return ort.InferenceSession(proto.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def exported(model, **kwargs):
    proto = to_onnx(model, **kwargs)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def assert_exports(model, X, **kwargs):
    """The exported graph passes the checker and gives predict's outputs."""
    run = session(exported(model, **kwargs))
    tol = TOLERANCE[model.dtype.name]
    for n in BATCHES:
        got = run.run(None, {"input": X[:n]})[0]
        want = model.predict(X[:n])
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


# ---- one layer kind at a time -------------------------------------------------------------

@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("input_shape", [(6,), (5, 6)], ids=["flat", "sequence"])
def test_dense(activation, input_shape):
    model = build([Dense(4, activation=activation)], input_shape)
    assert_exports(model, images(input_shape))


@pytest.mark.parametrize("input_shape", [(6,), (5, 4, 3), (7, 3)], ids=["flat", "image", "sequence"])
def test_batchnorm(input_shape):
    model = build([BatchNorm(eps=1e-2)], input_shape)
    assert_exports(model, images(input_shape))


def test_dropout_is_omitted():
    model = build([Dense(8, activation="relu"), Dropout(0.5), Dense(3, activation="softmax")], (5,))
    proto = exported(model)
    assert "Dropout" not in {node.op_type for node in proto.graph.node}
    assert_exports(model, images((5,)))
    assert_exports(build([Dropout(0.3)], (4,)), images((4,)))  # only dropout: the identity


@pytest.mark.parametrize("layers, input_shape", [
    ([Flatten()], (3, 4, 2)),
    ([Reshape((4, 6))], (3, 4, 2)),
    ([Reshape((2, -1, 3)), Flatten()], (12,)),
    ([Conv2D(3, 2), Flatten()], (4, 5, 2)),           # row-major over (height, width, channels)
    ([Conv2D(3, 2), Reshape((6, 6))], (4, 5, 2)),
    ([Dense(32), Reshape((4, 8, 1)), Conv2D(2, 3), GlobalMaxPooling2D()], (5,)),
], ids=["flatten", "reshape", "reshape-flatten", "conv-flatten", "conv-reshape", "dense-image"])
def test_flatten_reshape(layers, input_shape):
    assert_exports(build(layers, input_shape), images(input_shape))


@pytest.mark.parametrize("conv", [
    lambda: Conv2D(4, 3),
    lambda: Conv2D(4, 3, padding="same"),
    lambda: Conv2D(3, (2, 3), strides=2, padding="same"),  # the odd padding cell bottom / right
    lambda: Conv2D(3, (4, 2), strides=(3, 2), padding="same"),
    lambda: Conv2D(2, 3, dilation_rate=2, padding="same"),
    lambda: Conv2D(2, (2, 3), dilation_rate=(2, 1), strides=(1, 2)),
    lambda: Conv2D(5, 1, use_bias=False),
    lambda: Conv2D(4, 3, activation="relu", use_bias=False),
    lambda: Conv2D(4, 2, activation="softmax"),           # over the channels
    lambda: Conv2D(4, 2, activation="gelu"),
], ids=["valid", "same", "same-stride", "same-stride-hw", "dilation", "dilation-stride",
        "1x1-nobias", "relu-nobias", "softmax", "gelu"])
def test_conv2d(conv):
    input_shape = (9, 8, 3)
    assert_exports(build([conv()], input_shape), images(input_shape))


@pytest.mark.parametrize("pool", [MaxPooling2D, AveragePooling2D])
@pytest.mark.parametrize("kwargs", [
    {}, {"pool_size": 3}, {"pool_size": (2, 3), "strides": 1}, {"padding": "same"},
    {"pool_size": 3, "strides": 2, "padding": "same"}, {"pool_size": (3, 2), "strides": (2, 3),
                                                        "padding": "same"},
], ids=["2x2", "3x3", "2x3-stride1", "same", "3x3-stride2-same", "3x2-same-hw"])
def test_pooling2d(pool, kwargs):
    input_shape = (7, 8, 3)  # odd sizes: "same" pads, "valid" drops a row
    assert_exports(build([pool(**kwargs)], input_shape), images(input_shape))


@pytest.mark.parametrize("pool", [GlobalAveragePooling2D, GlobalMaxPooling2D])
def test_global_pooling2d(pool):
    assert_exports(build([pool()], (5, 6, 3)), images((5, 6, 3)))
    # after a convolution: over the channels-first images inside the graph
    assert_exports(build([Conv2D(4, 2), pool()], (5, 6, 3)), images((5, 6, 3)))


@pytest.mark.parametrize("pool", [GlobalAveragePooling1D, GlobalMaxPooling1D,
                                  GlobalAveragePooling2D])
def test_global_pooling_sequences(pool):
    assert_exports(build([pool()], (6, 4)), images((6, 4)))


def indices(n=max(BATCHES), steps=8, vocabulary=12, seed=2, padding="right"):
    """Integer sequences in [1, vocabulary); with padding, zeros (index 0): "right"
    after each sample's real steps (one sample all padding, one none), "anywhere"
    at random places."""
    rng = np.random.default_rng(seed)
    X = rng.integers(1, vocabulary, (n, steps))
    if padding == "right":
        for row, length in zip(X, [3, steps, 0, 1, steps - 1, 5, 2]):
            row[length:] = 0
    elif padding == "anywhere":
        X[rng.random(X.shape) < 0.4] = 0
        X[-1] = 0
    return X


@pytest.mark.parametrize("mask_zero", [False, True])
def test_embedding(mask_zero):
    model = build([Embedding(12, 5, mask_zero=mask_zero)], (8,))
    proto = exported(model)
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT64
    assert_exports(model, indices())


RECURRENT = [(SimpleRNN, {}), (GRU, {}), (GRU, {"reset_after": False}), (LSTM, {})]
RECURRENT_IDS = ["simple_rnn", "gru", "gru-reset-before", "lstm"]


@pytest.mark.parametrize("cls, kwargs", RECURRENT, ids=RECURRENT_IDS)
@pytest.mark.parametrize("return_sequences", [False, True], ids=["last", "sequences"])
@pytest.mark.parametrize("go_backwards", [False, True], ids=["forwards", "backwards"])
def test_recurrent(cls, kwargs, return_sequences, go_backwards):
    layer = cls(5, return_sequences=return_sequences, go_backwards=go_backwards, **kwargs)
    assert_exports(build([layer], (6, 3)), images((6, 3)))


@pytest.mark.parametrize("cls, kwargs", RECURRENT, ids=RECURRENT_IDS)
@pytest.mark.parametrize("activation, recurrent_activation", [
    ("relu", "sigmoid"), ("identity", "sigmoid"), ("leaky_relu", "softplus"),
    ("elu", "tanh"), ("softplus", "identity"), ("tanh", "leaky_relu"),
])
def test_recurrent_activations(cls, kwargs, activation, recurrent_activation):
    """Each activation ONNX's recurrent ops have, with alphas where they take one."""
    if cls is not SimpleRNN:
        kwargs = {**kwargs, "recurrent_activation": recurrent_activation}
    layer = cls(5, activation=activation, **kwargs)
    assert_exports(build([layer], (4, 3), scale=0.3), images((4, 3)))


@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh", "swish"])
def test_recurrent_activation_without_onnx_form(activation):
    for layer in (SimpleRNN(3, activation=activation), GRU(3, recurrent_activation=activation)):
        model = build([layer], (4, 2))
        with pytest.raises(ValueError, match=f"no activation '{activation}'"):
            to_onnx(model)


@pytest.mark.parametrize("cls, kwargs", RECURRENT, ids=RECURRENT_IDS)
@pytest.mark.parametrize("return_sequences", [False, True], ids=["last", "sequences"])
@pytest.mark.parametrize("go_backwards", [False, True], ids=["forwards", "backwards"])
@pytest.mark.parametrize("padding", ["right", "anywhere"])
def test_recurrent_masked(cls, kwargs, return_sequences, go_backwards, padding):
    """Embedding(mask_zero): the state carries over padded steps wherever they are."""
    layers = [Embedding(12, 4, mask_zero=True),
              cls(5, return_sequences=return_sequences, go_backwards=go_backwards, **kwargs)]
    assert_exports(build(layers, (8,)), indices(padding=padding))


@pytest.mark.parametrize("pool", [GlobalAveragePooling1D, GlobalMaxPooling1D])
@pytest.mark.parametrize("padding", ["right", "anywhere"])
def test_global_pooling1d_masked(pool, padding):
    """Over the real steps only; a sample of padding only gives 0."""
    model = build([Embedding(12, 4, mask_zero=True), Dense(3), pool()], (8,))
    assert_exports(model, indices(padding=padding))


# ---- whole models -----------------------------------------------------------------------

MODELS = {  # name: (layers, input shape); a function, as a layer belongs to one model
    "mlp": lambda: ([Dense(32, activation="relu"), Dropout(0.2), Dense(16, activation="tanh"),
                     Dense(10, activation="softmax")], (20,)),
    "mlp-batchnorm-sigmoid": lambda: ([Dense(16), BatchNorm(), Dense(16, activation="swish"),
                                       Dense(3, activation="sigmoid")], (8,)),
    "lenet": lambda: ([Conv2D(6, 5, padding="same", activation="relu"), MaxPooling2D(),
                       Conv2D(16, 5, activation="relu"), MaxPooling2D(), Dropout(0.25), Flatten(),
                       Dense(32, activation="relu"), Dense(10, activation="softmax")],
                      (28, 28, 1)),
    "conv-batchnorm": lambda: ([Conv2D(8, 3, padding="same"), BatchNorm(),
                                Conv2D(8, 3, strides=2, activation="elu"), BatchNorm(),
                                AveragePooling2D(padding="same"), GlobalAveragePooling2D(),
                                Dense(4, activation="softmax")], (11, 10, 3)),
    "image-rows-gru": lambda: ([Conv2D(4, 3, padding="same"), Reshape((7, 24)), GRU(6),
                                Dense(2, activation="softmax")], (7, 6, 2)),
    "gru-classifier": lambda: ([GRU(16), Dense(3, activation="softmax")], (10, 4)),
    "lstm-classifier": lambda: ([LSTM(16, return_sequences=True), LSTM(8, go_backwards=True),
                                 Dense(1, activation="sigmoid")], (10, 4)),
    "per-step-dense": lambda: ([SimpleRNN(8, return_sequences=True), BatchNorm(),
                                Dense(4, activation="softmax")], (6, 3)),
}


@pytest.mark.parametrize("name", MODELS)
def test_models(name):
    layers, input_shape = MODELS[name]()
    assert_exports(build(layers, input_shape, scale=0.3), images(input_shape))


MASKED_MODELS = {
    "embedding-gru": lambda: [Embedding(12, 6, mask_zero=True), Dense(6, activation="relu"),
                              GRU(8), Dense(3, activation="softmax")],  # the mask passes Dense
    "embedding-lstm-per-step": lambda: [Embedding(12, 6, mask_zero=True),
                                        LSTM(8, return_sequences=True),
                                        Dense(4, activation="softmax")],
    "embedding-stacked": lambda: [Embedding(12, 6, mask_zero=True),
                                  GRU(8, return_sequences=True, go_backwards=True), Dropout(0.1),
                                  SimpleRNN(6, return_sequences=True), GlobalAveragePooling1D(),
                                  Dense(1, activation="sigmoid")],
}


@pytest.mark.parametrize("name", MASKED_MODELS)
@pytest.mark.parametrize("padding", ["right", "anywhere"])
def test_masked_models(name, padding):
    assert_exports(build(MASKED_MODELS[name](), (8,), scale=0.3), indices(padding=padding))


def test_trained_model():
    """A model after fit (moved running statistics, trained weights), on the C engine."""
    X = images((10,), n=200)
    y = (X[:, 0] + X[:, 1] > 0).astype(np.int64)
    model = fusenn.Sequential([Dense(16, activation="relu"), BatchNorm(), Dropout(0.2),
                               Dense(2, activation="softmax")], input_dim=10, seed=0)
    model.compile(loss="cross_entropy", optimizer="adam")
    model.fit(X, y, epochs=3, batch_size=16, verbose=0)
    assert_exports(model, X[:7])


# ---- dtypes, opsets, files and errors ------------------------------------------------------

# onnxruntime's CPU provider has no double kernels for Conv, AveragePool, RNN, GRU,
# LSTM, Elu, Softplus and Erf (gelu): those float64 graphs are checked, not run
DOUBLE_RUNS = {
    "mlp": lambda: ([Dense(8, activation="relu"), BatchNorm(), Dense(6, activation="swish"),
                     Dense(6, activation="gelu_tanh"), Dense(3, activation="softmax")], (5,)),
    "maxpool": lambda: ([MaxPooling2D(padding="same"), Flatten(),
                         Dense(2, activation="sigmoid")], (5, 5, 2)),
    "embedding-pool": lambda: ([Embedding(12, 4, mask_zero=True), GlobalMaxPooling1D(),
                                Dense(2, activation="leaky_relu")], (8,)),
}


@pytest.mark.parametrize("name", DOUBLE_RUNS)
def test_float64(name):
    layers, input_shape = DOUBLE_RUNS[name]()
    model = build(layers, input_shape, dtype="float64")
    X = indices() if name.startswith("embedding") else images(input_shape, "float64")
    assert_exports(model, X)


@pytest.mark.parametrize("name", ["lenet", "conv-batchnorm", "lstm-classifier"])
def test_float64_graphs_check(name):
    layers, input_shape = MODELS[name]()
    proto = exported(build(layers, input_shape, dtype="float64"))
    assert proto.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.DOUBLE


@pytest.mark.parametrize("opset", [MIN_OPSET, DEFAULT_OPSET, 18, 21])
def test_opsets(opset):
    """Reduce* take their axes as an attribute before opset 18 and as an input from 18 on."""
    for layers, input_shape, X in [
            (MASKED_MODELS["embedding-stacked"](), (8,), indices(padding="anywhere")),
            (*MODELS["conv-batchnorm"](), images((11, 10, 3)))]:
        model = build(layers, input_shape, scale=0.3)
        assert exported(model, opset=opset).opset_import[0].version == opset
        assert_exports(model, X, opset=opset)


def test_newest_opset():
    """The newest opset the installed onnx knows (onnxruntime may not run it yet)."""
    newest = onnx.defs.onnx_opset_version()
    for layers, input_shape in (MODELS["lenet"](), MODELS["lstm-classifier"](),
                                (MASKED_MODELS["embedding-stacked"](), (8,))):
        exported(build(layers, input_shape), opset=newest)


def test_graph_interface():
    model = build([Conv2D(4, 3), MaxPooling2D(), Flatten(), Dense(3, activation="softmax")],
                  (8, 8, 1))
    proto = exported(model)
    (inp,), (out,) = proto.graph.input, proto.graph.output
    dims = lambda value: [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
    assert (inp.name, dims(inp)) == ("input", ["batch", 8, 8, 1])
    assert (out.name, dims(out)) == ("output", ["batch", 3])
    assert proto.producer_name == "fusenn" and proto.opset_import[0].version == DEFAULT_OPSET
    # one transpose into the convolutions' layout and one out of it
    assert [node.op_type for node in proto.graph.node].count("Transpose") == 2


def test_writes_file(tmp_path):
    model = build(MODELS["mlp"]()[0], (20,))
    path = tmp_path / "model.onnx"
    proto = to_onnx(model, path)
    assert onnx.load(str(path)) == proto
    X = images((20,))
    run = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(run.run(None, {"input": X})[0], model.predict(X), rtol=1e-5,
                               atol=1e-5)


def test_model_method(tmp_path):
    model = build(MODELS["mlp"]()[0], (20,))
    path = tmp_path / "method.onnx"
    assert model.to_onnx(path, opset=MIN_OPSET) == to_onnx(model, opset=MIN_OPSET)
    assert onnx.load(str(path)).opset_import[0].version == MIN_OPSET


class Scale(fusenn.Layer):
    """A user's layer: y = 2 x, trained op by op."""

    def forward(self, backend, x, training, logits=False):
        return 2 * x, None

    def backward(self, backend, x, y, cache, dy, need_dx, logits=False):
        return 2 * dy, []


class MyDense(Dense):
    """A subclass of a layer with an exporter may compute something else: no export."""


@pytest.mark.parametrize("custom", [Scale, lambda: MyDense(3)], ids=["layer", "subclass"])
def test_custom_layer_is_refused(custom):
    model = fusenn.Sequential([Dense(4), custom()], input_dim=3, seed=0)
    name = type(model.layers[1]).__qualname__
    with pytest.raises(TypeError, match=rf"layer 2 .*no exporter for .*\b{name}\b"):
        to_onnx(model)


def test_errors():
    with pytest.raises(ValueError, match="not built"):
        to_onnx(fusenn.Sequential([Dense(3)]))
    model = build([Dense(3)], (4,))
    for opset in (MIN_OPSET - 1, onnx.defs.onnx_opset_version() + 1, 17.0, "17"):
        with pytest.raises(ValueError, match="opset must be an int"):
            to_onnx(model, opset=opset)
    model = fusenn.Sequential([Dropout(0.1), Embedding(5, 2)], input_shape=(4,), backend="numpy")
    with pytest.raises(ValueError, match=r"layer 2 \(Embedding\).*only the first layer"):
        to_onnx(model)


def test_without_onnx(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ImportError, match=r"pip install onnx"):
        to_onnx(build([Dense(3)], (4,)))


def test_import_fusenn_leaves_onnx_alone():
    code = "import sys, fusenn, fusenn.onnx_export; print('onnx' in sys.modules)"
    out = subprocess.check_output([sys.executable, "-c", code], text=True)
    assert out.split()[-1] == "False"  # (an editable install may print its rebuild first)


def test_every_layer_kind_has_an_exporter():
    assert set(fusenn.layers.LAYER_TYPES.values()) <= set(EXPORTERS)
