"""predict at batch 1, 8, 64 and 1024 on 784-256-128-10 (relu, relu, softmax; float32)
on 1 and 2 threads: fusenn's model.predict ("c") against a three-line NumPy forward
("numpy": two relu layers and a softmax with NumPy's @), PyTorch in inference mode
("torch") and onnxruntime ("onnxruntime", a session on an ONNX graph of the same
weights: MatMul, Add, Relu, Softmax), each when importable. Every framework's output is
checked against a float64 forward before timing.
"""

import functools

import numpy as np
import pytest

import fusenn

from conftest import limited_threads

SIZES = (784, 256, 128, 10)
BATCHES = (1, 8, 64, 1024)
THREADS = (1, 2)
BACKENDS = ("c", "numpy", "torch", "onnxruntime")


@functools.lru_cache(maxsize=None)
def weights():
    model = fusenn.Sequential([fusenn.Dense(256, "relu"), fusenn.Dense(128, "relu"),
                               fusenn.Dense(10, "softmax")], input_dim=784, seed=0)
    return model.get_weights()


@functools.lru_cache(maxsize=None)
def batch(n):
    return np.random.default_rng(n).random((n, SIZES[0]), dtype=np.float32)


def reference_forward(X, w):
    h = np.maximum(X @ w[0] + w[1], 0)
    h = np.maximum(h @ w[2] + w[3], 0)
    z = h @ w[4] + w[5]
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def c_predictor(nthreads):
    model = fusenn.Sequential([fusenn.Dense(256, "relu"), fusenn.Dense(128, "relu"),
                               fusenn.Dense(10, "softmax")], input_dim=784, seed=0)
    model.set_weights(weights())
    return model.predict


def numpy_predictor(nthreads):
    w = weights()
    return lambda X: reference_forward(X, w)


def torch_predictor(nthreads):
    torch = pytest.importorskip("torch")
    w = weights()
    layers = []
    for i in range(3):
        lin = torch.nn.Linear(*w[2 * i].shape)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(w[2 * i].T)))
            lin.bias.copy_(torch.from_numpy(w[2 * i + 1]))
        layers += [lin, torch.nn.ReLU()] if i < 2 else [lin, torch.nn.Softmax(dim=1)]
    net = torch.nn.Sequential(*layers).eval()

    def predict(X):
        with torch.inference_mode():
            return net(torch.from_numpy(X)).numpy()

    return predict


def onnxruntime_predictor(nthreads):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    helper, w = onnx.helper, weights()
    inits = [onnx.numpy_helper.from_array(a, name) for a, name in
             zip(w, ("W1", "b1", "W2", "b2", "W3", "b3"))]
    nodes = [helper.make_node("MatMul", ["input", "W1"], ["m1"]),
             helper.make_node("Add", ["m1", "b1"], ["a1"]), helper.make_node("Relu", ["a1"], ["h1"]),
             helper.make_node("MatMul", ["h1", "W2"], ["m2"]),
             helper.make_node("Add", ["m2", "b2"], ["a2"]), helper.make_node("Relu", ["a2"], ["h2"]),
             helper.make_node("MatMul", ["h2", "W3"], ["m3"]),
             helper.make_node("Add", ["m3", "b3"], ["z"]),
             helper.make_node("Softmax", ["z"], ["output"], axis=1)]
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, [None, 784])],
        [helper.make_tensor_value_info("output", onnx.TensorProto.FLOAT, [None, 10])], inits)
    options = ort.SessionOptions()
    options.intra_op_num_threads = nthreads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(helper.make_model(graph).SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return lambda X: session.run(None, {"input": X})[0]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("nthreads", THREADS)
@pytest.mark.parametrize("n", BATCHES)
def test_predict(run, n, nthreads, backend):
    X = batch(n)
    with limited_threads(backend, nthreads) as info:
        predict = globals()[f"{backend}_predictor"](nthreads)
        want = reference_forward(X.astype(np.float64), [a.astype(np.float64) for a in weights()])
        np.testing.assert_allclose(predict(X), want, rtol=1e-4, atol=1e-6)
        run(f"predict-784-256-128-10-b{n}-{nthreads}t", backend, predict, X,
            info=dict(batch=n, **info))
