"""Recurrent networks: one Adam training step of a sequence classifier (a recurrent
layer reading every step, then a softmax Dense on its last state) by fusenn's C
backend ("c"), its NumPy reference ("numpy") and, when importable, PyTorch ("torch"),
on 1 and 2 threads, at issue 15's two sizes:

    b64-t28-f28-u128     batch 64, 28 steps of 28 features (MNIST read row by row), 128 units
    b32-t100-f64-u256    batch 32, 100 steps of 64 features, 256 units

for LSTM, GRU (reset_after, PyTorch's form) and SimpleRNN (tanh). float32;
cross-entropy over 10 classes; Adam(lr 1e-3). Every framework starts from the same
weights (PyTorch's are fusenn's transposed, with the GRU's gate blocks reordered from
Keras's z, r, h to PyTorch's r, z, n). Before timing, each framework's first step is
checked: its loss against a float64 forward of the same weights.

"rnn_products" groups time the step's matrix products alone, as four large GEMMs
(fusenn.matmul, "c", and NumPy's BLAS, "numpy"): X W over all steps, the steps' h U and
dP U^T stacked, and [X H]^T dP. They are the step's multiply-adds (the flop count of its
group) in 4 calls instead of 2 T + 2, without its elementwise work: what the step's
arithmetic costs at the GEMM's large-call rate, next to the step's own time.
"""

import functools

import numpy as np
import pytest

import fusenn
from fusenn import GRU, LSTM, Dense, SimpleRNN

from conftest import limited_threads

HAS_C_RNN = {"lstm", "gru", "simple_rnn"} <= set(fusenn._kernels.kinds())
pytestmark = pytest.mark.skipif(not HAS_C_RNN, reason="the C recurrent kinds")

LAYERS = {"lstm": (LSTM, 4), "gru": (GRU, 3), "simple_rnn": (SimpleRNN, 1)}  # class, gates
SIZES = {"b64-t28-f28-u128": (64, 28, 28, 128), "b32-t100-f64-u256": (32, 100, 64, 256)}
CLASSES, LR = 10, 1e-3
BACKENDS = ("c", "numpy", "torch")
THREADS = (1, 2)


def fusenn_model(layer, size, **kwargs):
    _, t, f, units = SIZES[size]
    return fusenn.Sequential([LAYERS[layer][0](units), Dense(CLASSES, "softmax")],
                             input_shape=(t, f), seed=0, **kwargs)


@functools.lru_cache(maxsize=None)
def case(layer, size):
    n, t, f, units = SIZES[size]
    rng = np.random.default_rng(5)
    X = rng.standard_normal((n, t, f)).astype(np.float32)
    y = rng.integers(0, CLASSES, n)
    weights = fusenn_model(layer, size).get_weights()
    oracle = fusenn_model(layer, size, dtype="float64", backend="numpy")
    oracle.set_weights(weights)
    oracle.compile("cross_entropy", "sgd")
    loss = oracle.evaluate(X.astype(np.float64), y)["loss"]
    return X, y, weights, loss, step_flop(layer, size) + 3 * 2 * n * units * CLASSES


def step_flop(layer, size):
    """The recurrent layer's multiply-adds in one training step, times 2: X W at every
    step, h U and dP U^T at every step but the first (h_0 = 0), [X H]^T dP at every step
    (dW and dU); the first layer's dX is not computed."""
    n, t, f, units = SIZES[size]
    gu = LAYERS[layer][1] * units
    return 2 * n * (t * f * gu + 2 * (t - 1) * units * gu + t * (f + units) * gu)


def fusenn_trainer(layer, size, backend):
    X, y, weights, _, _ = case(layer, size)
    model = fusenn_model(layer, size, backend=backend)
    model.set_weights(weights)
    model.compile("cross_entropy", fusenn.Adam(lr=LR))
    return functools.partial(model.train_on_batch, X, y)


def torch_trainer(layer, size):
    torch = pytest.importorskip("torch")
    X, y, weights, _, _ = case(layer, size)
    _, _, f, units = SIZES[size]
    kernel, recurrent, bias, W, b = weights
    cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "simple_rnn": torch.nn.RNN}[layer]
    rnn = cls(f, units, batch_first=True)
    if layer == "gru":  # Keras's blocks z, r, h -> PyTorch's r, z, n
        order = lambda a: np.concatenate([a[..., units:2 * units], a[..., :units],
                                          a[..., 2 * units:]], axis=-1)
        kernel, recurrent, bias = order(kernel), order(recurrent), order(bias)
        bias_ih, bias_hh = bias[0], bias[1]
    else:  # LSTM's i, f, c, o is PyTorch's i, f, g, o
        bias_ih, bias_hh = bias, np.zeros_like(bias)
    head = torch.nn.Linear(units, CLASSES)
    with torch.no_grad():
        for name, value in (("weight_ih_l0", kernel.T), ("weight_hh_l0", recurrent.T),
                            ("bias_ih_l0", bias_ih), ("bias_hh_l0", bias_hh)):
            getattr(rnn, name).copy_(torch.from_numpy(np.ascontiguousarray(value)))
        head.weight.copy_(torch.from_numpy(np.ascontiguousarray(W.T)))
        head.bias.copy_(torch.from_numpy(b))
    params = list(rnn.parameters()) + list(head.parameters())
    opt = torch.optim.Adam(params, lr=LR)
    loss_fn = torch.nn.CrossEntropyLoss()
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)

    def step():
        opt.zero_grad()
        out, _ = rnn(Xt)
        loss = loss_fn(head(out[:, -1]), yt)
        loss.backward()
        opt.step()
        return loss.item()

    return step


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("nthreads", THREADS)
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("layer", LAYERS)
def test_rnn_train_step(run, layer, size, nthreads, backend):
    _, _, _, want_loss, flop = case(layer, size)
    if backend == "numpy" and nthreads == 2:
        pytest.skip("the NumPy reference's steps take tens of milliseconds: one thread only")
    with limited_threads(backend, nthreads) as info:
        step = torch_trainer(layer, size) if backend == "torch" else fusenn_trainer(layer, size,
                                                                                      backend)
        loss = step()
        assert abs(loss - want_loss) <= 1e-4 * abs(want_loss), (backend, loss, want_loss)
        settings = dict(rounds=5, iterations=1, warmup_rounds=1) if backend == "numpy" else None
        run(f"rnn_step-{layer}-{size}-{nthreads}t", backend, step, pedantic=settings,
            info=dict(batch=SIZES[size][0], flop=flop, **info))


@functools.lru_cache(maxsize=None)
def products(size, layer):
    """The step's products as four GEMMs' operands (random float32; the values do not
    matter to the time): (a, b, trans_a, trans_b) each."""
    n, t, f, units = SIZES[size]
    gu = LAYERS[layer][1] * units
    rng = np.random.default_rng(7)

    def new(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    return ((new(n * t, f), new(f, gu), False, False),                 # X W
            (new(n * (t - 1), units), new(units, gu), False, False),   # h U, every step
            (new(n * (t - 1), gu), new(units, gu), False, True),       # dP U^T, every step
            (new(n * t, f + units), new(n * t, gu), True, False))      # [X H]^T dP


@pytest.mark.parametrize("backend", ("c", "numpy"))
@pytest.mark.parametrize("nthreads", THREADS)
@pytest.mark.parametrize("layer", LAYERS)
def test_rnn_products(run, layer, nthreads, backend):
    size = "b32-t100-f64-u256"
    calls = products(size, layer)
    ops = fusenn.ops if backend == "c" else fusenn.reference
    with limited_threads(backend, nthreads) as info:
        out = run(f"rnn_products-{layer}-{size}-{nthreads}t", backend,
                  lambda: [ops.matmul(*call) for call in calls],
                  info=dict(flop=step_flop(layer, size), **info))
    for (a, b, trans_a, trans_b), c in zip(calls, out):
        want = (a.T if trans_a else a).astype(np.float64) @ (b.T if trans_b else b)
        k = a.shape[0] if trans_a else a.shape[1]
        assert np.abs(c - want).max() <= 4 * k * 2.0 ** -24 * np.abs(want).max() + 1e-30
