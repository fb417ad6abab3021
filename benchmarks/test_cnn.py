"""Convolutional networks: one SGD-momentum training step at batch 64 on 28x28x1
images, of LeNet-5 and of a small VGG-style net, by fusenn's C backend ("c"), its
NumPy reference ("numpy") and, when importable, PyTorch ("torch"), on 1 and 2
threads; and the conv kernels of those nets, forward and backward, C against the
NumPy reference.

    LeNet-5:   conv 6@5x5 same -> max-pool 2 -> conv 16@5x5 -> max-pool 2 -> dense 120
               -> 84 -> 10                                  (about 0.36 GFLOP per step)
    VGG-style: conv 32@3x3 same x2 -> max-pool -> conv 64@3x3 same x2 -> max-pool
               -> dense 128 -> 10                           (about 7.2 GFLOP per step)

relu everywhere but the softmax output; cross-entropy; SGD(lr 0.01, momentum 0.9);
float32; every framework from the same initial weights (PyTorch's are fusenn's,
transposed to its NCHW layout). Before timing, each framework's first step is
checked: its loss against a float64 forward of the same weights.
"""

import functools
import math

import numpy as np
import pytest

import fusenn
from fusenn import Conv2D, Dense, Flatten, MaxPooling2D, ops, reference

from conftest import limited_threads

HAS_C_CONV = {"conv2d", "pool2d"} <= set(fusenn._kernels.kinds())
pytestmark = pytest.mark.skipif(not HAS_C_CONV, reason="the C conv2d/pool2d kinds")

NETS = {
    "lenet5-b64": [("conv", 6, 5, "same"), ("pool",), ("conv", 16, 5, "valid"), ("pool",),
                   ("flatten",), ("dense", 120), ("dense", 84), ("out", 10)],
    "vgg-b64": [("conv", 32, 3, "same"), ("conv", 32, 3, "same"), ("pool",),
                ("conv", 64, 3, "same"), ("conv", 64, 3, "same"), ("pool",), ("flatten",),
                ("dense", 128), ("out", 10)],
}
BATCH, SHAPE, LR, MOMENTUM = 64, (28, 28, 1), 0.01, 0.9
BACKENDS = ("c", "numpy", "torch")
THREADS = (1, 2)


def fusenn_layers(spec):
    layers = []
    for kind, *args in spec:
        if kind == "conv":
            layers.append(Conv2D(args[0], args[1], padding=args[2], activation="relu"))
        elif kind == "pool":
            layers.append(MaxPooling2D(2))
        elif kind == "flatten":
            layers.append(Flatten())
        else:
            layers.append(Dense(args[0], "relu" if kind == "dense" else "softmax"))
    return layers


@functools.lru_cache(maxsize=None)
def case(net):
    rng = np.random.default_rng(7)
    X = rng.random((BATCH, *SHAPE), dtype=np.float32)
    y = rng.integers(0, 10, BATCH)
    model = fusenn.Sequential(fusenn_layers(NETS[net]), input_shape=SHAPE, seed=0)
    weights = model.get_weights()
    oracle = fusenn.Sequential(fusenn_layers(NETS[net]), input_shape=SHAPE, dtype="float64",
                               backend="numpy", seed=0)
    oracle.set_weights(weights)
    oracle.compile("cross_entropy", "sgd")
    loss = oracle.evaluate(X.astype(np.float64), y)["loss"]
    flop = 3 * 2 * sum(_macs(layer) for layer in model.layers) * BATCH  # forward + 2x backward
    return X, y, weights, loss, flop


def _macs(layer):
    if isinstance(layer, Conv2D):
        return math.prod(layer.output_shape) * math.prod(layer.kernel.shape[:3])
    if isinstance(layer, Dense):
        return layer.W.size
    return 0


def fusenn_trainer(net, backend):
    X, y, weights, _, _ = case(net)
    model = fusenn.Sequential(fusenn_layers(NETS[net]), input_shape=SHAPE, seed=0,
                              backend=backend)
    model.set_weights(weights)
    model.compile("cross_entropy", fusenn.SGD(lr=LR, momentum=MOMENTUM))
    return functools.partial(model.train_on_batch, X, y)


def torch_trainer(net):
    """The same net in PyTorch (NCHW), from the same weights: kernels transposed to
    (out, in, kh, kw), and the first dense layer's rows permuted from fusenn's (H, W, C)
    flattening order to PyTorch's (C, H, W)."""
    torch = pytest.importorskip("torch")
    X, y, weights, _, _ = case(net)
    flat = next(layer for layer in fusenn.Sequential(fusenn_layers(NETS[net]),
                                                     input_shape=SHAPE).layers
                if isinstance(layer, Flatten)).input_shape  # (H, W, C) before Flatten
    layers, w, first_dense = [], iter(weights), True
    for kind, *args in NETS[net]:
        if kind == "conv":
            kernel, bias = next(w), next(w)
            conv = torch.nn.Conv2d(kernel.shape[2], kernel.shape[3], kernel.shape[0],
                                   padding="same" if args[2] == "same" else 0)
            with torch.no_grad():
                conv.weight.copy_(torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy()))
                conv.bias.copy_(torch.from_numpy(bias))
            layers += [conv, torch.nn.ReLU()]
        elif kind == "pool":
            layers.append(torch.nn.MaxPool2d(2))
        elif kind == "flatten":
            layers.append(torch.nn.Flatten())
        else:
            W, b = next(w), next(w)
            if first_dense:
                W = W.reshape(*flat, -1).transpose(2, 0, 1, 3).reshape(W.shape)
                first_dense = False
            lin = torch.nn.Linear(*W.shape)
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(W.T)))
                lin.bias.copy_(torch.from_numpy(b))
            layers += [lin] + ([torch.nn.ReLU()] if kind == "dense" else [])
    model = torch.nn.Sequential(*layers)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    loss_fn = torch.nn.CrossEntropyLoss()
    Xt = torch.from_numpy(X.transpose(0, 3, 1, 2).copy())
    yt = torch.from_numpy(y)

    def step():
        opt.zero_grad()
        loss = loss_fn(model(Xt), yt)
        loss.backward()
        opt.step()
        return loss.item()

    return step


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("nthreads", THREADS)
@pytest.mark.parametrize("cnn", NETS)  # not `net`: conftest parametrizes that one
def test_cnn_train_step(run, cnn, nthreads, backend):
    net = cnn
    _, _, _, want_loss, flop = case(net)
    if backend == "numpy" and net == "vgg-b64" and nthreads == 2:
        pytest.skip("the NumPy reference's VGG step takes seconds; timed on one thread only")
    with limited_threads(backend, nthreads) as info:
        step = torch_trainer(net) if backend == "torch" else fusenn_trainer(net, backend)
        loss = step()
        assert abs(loss - want_loss) <= 1e-4 * abs(want_loss), (backend, loss, want_loss)
        settings = dict(rounds=3, iterations=1, warmup_rounds=1) if backend == "numpy" else None
        run(f"cnn_step-{net}-{nthreads}t", backend, step, pedantic=settings,
            info=dict(batch=BATCH, flop=flop, **info))


# ---- the conv layers of both nets, forward and backward ----------------------------------

CONV_SHAPES = {  # id -> (input H, W, Cin, filters, kernel, padding)
    "lenet-conv1": (28, 28, 1, 6, 5, "same"),
    "lenet-conv2": (14, 14, 6, 16, 5, "valid"),
    "vgg-conv1": (28, 28, 1, 32, 3, "same"),
    "vgg-conv2": (28, 28, 32, 32, 3, "same"),
    "vgg-conv3": (14, 14, 32, 64, 3, "same"),
    "vgg-conv4": (14, 14, 64, 64, 3, "same"),
}


@functools.lru_cache(maxsize=None)
def conv_case(name):
    h, w, cin, cout, k, padding = CONV_SHAPES[name]
    rng = np.random.default_rng(11)
    x = rng.random((BATCH, h, w, cin), dtype=np.float32)
    kernel = (rng.standard_normal((k, k, cin, cout)) / math.sqrt(k * k * cin)).astype(np.float32)
    bias = (0.1 * rng.standard_normal(cout)).astype(np.float32)
    pads = fusenn.layers.window_padding(padding, (h, w), (k, k), (1, 1))
    y = reference.conv2d_forward(x, kernel, bias, padding=pads, activation="relu")
    dy = (0.01 * rng.standard_normal(y.shape)).astype(np.float32)
    macs = y.size * k * k * cin
    return x, kernel, bias, pads, y, dy, macs


@pytest.mark.parametrize("backend", ("c", "numpy"))
@pytest.mark.parametrize("nthreads", THREADS)
@pytest.mark.parametrize("conv", CONV_SHAPES)
@pytest.mark.parametrize("direction", ("forward", "backward"))
def test_conv_kernel(run, direction, conv, nthreads, backend):
    x, kernel, bias, pads, y, dy, macs = conv_case(conv)
    be = ops if backend == "c" else reference
    with limited_threads(backend, nthreads) as info:
        if direction == "forward":
            fn = functools.partial(be.conv2d_forward, x, kernel, bias, padding=pads,
                                   activation="relu")
            flop = 2 * macs
        else:
            fn = functools.partial(be.conv2d_backward, x, kernel, y, dy, padding=pads,
                                   activation="relu", need_dx=conv not in ("lenet-conv1",
                                                                          "vgg-conv1"))
            flop = 4 * macs if conv not in ("lenet-conv1", "vgg-conv1") else 2 * macs
        got = fn()
        want = (reference.conv2d_forward(x, kernel, bias, padding=pads, activation="relu")
                if direction == "forward" else None)
        if want is not None:
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
        run(f"conv_{direction}-{conv}-{nthreads}t", backend, fn,
            info=dict(batch=BATCH, flop=flop, **info))
