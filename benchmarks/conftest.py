"""Shared data, oracles and settings for fusenn's benchmarks (pytest-benchmark).

    pytest benchmarks/ --benchmark-only                         # measure
    pytest benchmarks/ --benchmark-only --benchmark-json=b.json && python benchmarks/report.py b.json
    pytest benchmarks/ --benchmark-disable                      # smoke test: each case runs once

Every benchmark times the C backend (fusenn.ops, id "c") and the NumPy
reference (fusenn.reference, id "numpy") on the same float32 inputs, in one
pytest-benchmark group per operation and shape, and checks the result it timed
against a float64 oracle, so the --benchmark-disable run is a real test.

Fairness: the machine's speed drifts, so a speed-up is only meaningful between
measurements taken close together. The test ids are generated shape-outer,
backend-inner ("c-1024", "numpy-1024", "c-256", ...) and pytest runs them in
that order, so both halves of a ratio are measured back to back.

The data and oracles here are deterministic (fixed seeds) and cached for the
session, so the C and NumPy variants of a case see identical arrays.

The training benchmarks (test_train_step.py, test_epoch.py) also take a thread
count (groups end in "-1t" / "-2t"; see limited_threads) and, when importable,
time PyTorch ("torch") and scikit-learn ("sklearn") on the same net, data and
initial weights; without them those variants are skipped. None of threadpoolctl,
torch or scikit-learn is a fusenn dependency: install them for a comparison run.
"""

import contextlib
import functools
import os
import shlex
import time

import numpy as np
import pytest

import fusenn
from fusenn import ops, reference

try:  # optional: limits NumPy's BLAS threads for the 1-thread cases
    import threadpoolctl
except ImportError:
    threadpoolctl = None

BACKENDS = {"c": ops, "numpy": reference}
DTYPE = np.float32
U32 = 2.0 ** -24  # unit roundoff of float32

# Defaults for the benchmark timing, applied as a `benchmark` marker to the tests
# in this directory unless the same setting is given on the command line
# (--benchmark-max-time, --benchmark-min-rounds, ...) or by a test's own marker.
# A group's pair runs within ~2-3 s, which keeps drift out of the ratios.
BENCHMARK_DEFAULTS = {
    "max_time": 1.0,   # seconds of measured rounds per test
    "min_rounds": 50,  # floor: one slow calibration call (load spike) must not leave ~10 rounds
}
# Before measuring, each enabled benchmark calls its function for this long
# (at least twice): OpenMP threads spin up, caches and the CPU clock warm up.
# pytest-benchmark's own --benchmark-warmup is tied to max_time, hence this.
WARMUP_SECONDS = float(os.environ.get("FUSENN_BENCH_WARMUP", "0.1"))

_CLI_FLAGS = {
    "max_time": "--benchmark-max-time",
    "min_rounds": "--benchmark-min-rounds",
    "min_time": "--benchmark-min-time",
    "warmup": "--benchmark-warmup",
    "warmup_iterations": "--benchmark-warmup-iterations",
}


# ---- settings and machine info ----------------------------------------------------------

def _given_on_command_line(config, flag):
    args = list(config.invocation_params.args)
    args += shlex.split(os.environ.get("PYTEST_ADDOPTS", ""))
    args += list(config.getini("addopts"))
    return any(a == flag or a.startswith(flag + "=") for a in args)


def pytest_collection_modifyitems(config, items):
    here = os.path.dirname(os.path.abspath(__file__))
    defaults = {k: v for k, v in BENCHMARK_DEFAULTS.items()
                if not _given_on_command_line(config, _CLI_FLAGS[k])}
    for item in items:
        if "benchmark" not in getattr(item, "fixturenames", ()):
            continue
        if not os.path.abspath(str(item.path)).startswith(here + os.sep):
            continue
        own = item.get_closest_marker("benchmark")
        kwargs = dict(defaults, **(own.kwargs if own else {}))
        if kwargs:
            item.add_marker(pytest.mark.benchmark(**kwargs), append=False)


def fusenn_info():
    """What a reader needs to interpret the numbers: threads, GEMM ISA, BLAS."""
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        blas = f"{blas.get('name', '?')} {blas.get('version', '')}".strip()
    except Exception:  # older NumPy: no mode="dicts"
        blas = "unknown"
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count()
    return {
        "fusenn_version": fusenn.__version__,
        "num_threads": fusenn.get_num_threads(),
        "gemm_isa": fusenn.gemm_isa(),
        "has_openmp": bool(fusenn.has_openmp()),
        "numpy_version": np.__version__,
        "numpy_blas": blas,
        "cpus_available": cpus,
        "env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                           "MKL_NUM_THREADS", "OMP_PROC_BIND") if k in os.environ},
    }


def pytest_benchmark_update_machine_info(config, machine_info):
    """The run's JSON records fusenn's settings, the CPU model and this core's
    float32 FMA peak, measured at the start of the run (report.py reads it)."""
    machine_info["fusenn"] = fusenn_info()
    import fma_peak  # benchmarks/ is on sys.path: pytest inserts a conftest's directory
    machine_info["fusenn"]["cpu_model"] = fma_peak.cpu_model()
    isa, gflops = fma_peak.measure()
    machine_info["fusenn"]["fma_peak"] = {"isa": isa, "gflops_per_core_f32": gflops}


def pytest_report_header(config):
    i = fusenn_info()
    return (f"fusenn {i['fusenn_version']}: {i['num_threads']} threads, gemm_isa={i['gemm_isa']}, "
            f"openmp={i['has_openmp']}; numpy {i['numpy_version']} ({i['numpy_blas']})")


# ---- running a benchmark --------------------------------------------------------------

def pytest_generate_tests(metafunc):
    """Parametrize (<shape argument>, backend) for every shape, shape-outer and backend-inner,
    so a group's C and NumPy variants run back to back; ids read "c-1024", "numpy-1024".
    Tests that also take `nthreads` get (<shape>, nthreads, backend), shape-outer, then
    threads, backend-inner (the training tests also over TRAIN_BACKENDS); ids read
    "c-64-32-10-b32-1t"."""
    names = metafunc.fixturenames
    for argname, shapes in SHAPE_ARGS.items():
        if argname not in names or "backend" not in names:
            continue

        def marks(shape):
            settings = SHAPE_BENCHMARK_SETTINGS.get(shape)
            return [pytest.mark.benchmark(**settings)] if settings else []

        if "nthreads" in names:
            metafunc.parametrize((argname, "nthreads", "backend"), [
                pytest.param(shape, n, backend, id=f"{backend}-{shape}-{n}t", marks=marks(shape))
                for shape in shapes for n in THREAD_COUNTS[argname]
                for backend in BACKENDS_FOR.get(argname, BACKENDS)])
        else:
            metafunc.parametrize((argname, "backend"), [
                pytest.param(shape, backend, id=f"{backend}-{shape}", marks=marks(shape))
                for shape in shapes for backend in BACKENDS])


@contextlib.contextmanager
def limited_threads(backend, n):
    """Run the block with `n` threads for everything `backend` computes with: fusenn's
    kernels (all backends: fit / train_on_batch check their input with a C kernel), NumPy's
    BLAS via threadpoolctl (the numpy and sklearn backends compute with it) and, for
    torch, torch.set_num_threads. Yields extra_info entries describing the limits.

    Without threadpoolctl NumPy's BLAS runs its default thread count (the CPU count, or
    OPENBLAS_NUM_THREADS etc.); a 1-thread case that depends on BLAS is then skipped.
    """
    info = {"blas_threads": n}
    with contextlib.ExitStack() as stack:
        stack.enter_context(fusenn.threads(n))
        if threadpoolctl is not None:
            stack.enter_context(threadpoolctl.threadpool_limits(limits=n, user_api="blas"))
        elif backend in ("numpy", "sklearn") and n == 1:
            pytest.skip("threadpoolctl is not installed: cannot limit NumPy's BLAS to 1 thread "
                        "(pip install threadpoolctl to run this case)")
        else:
            info["blas_threads"] = "default"
        if backend == "torch":
            torch = pytest.importorskip("torch")
            previous = torch.get_num_threads()
            torch.set_num_threads(n)
            stack.callback(torch.set_num_threads, previous)
        yield info


@pytest.fixture
def run(benchmark):
    """run(group, backend, fn, *args, info={...}, pedantic=None) -> fn(*args): benchmark
    fn(*args) in `group` after a warm-up; extra_info records the backend, fusenn's thread
    count, GEMM ISA and `info`. pedantic=dict(rounds=..., warmup_rounds=...) times a fixed
    number of calls with benchmark.pedantic instead (for calls that take seconds)."""

    def _run(group, backend, fn, *args, info=None, pedantic=None):
        benchmark.group = group
        benchmark.extra_info.update(backend=backend, num_threads=fusenn.get_num_threads(),
                                    gemm_isa=fusenn.gemm_isa(), **(info or {}))
        if pedantic is not None:  # rounds, iterations, warmup_rounds of benchmark.pedantic
            return benchmark.pedantic(fn, args=args, **pedantic)
        if benchmark.enabled and WARMUP_SECONDS > 0:
            fn(*args)
            start, calls = time.perf_counter(), 1
            while calls < 2 or time.perf_counter() - start < WARMUP_SECONDS:
                fn(*args)
                calls += 1
        return benchmark(fn, *args)

    return _run


# ---- checking results against a float64 oracle -------------------------------------------

def _gamma(k, u=U32):
    """Higham's gamma_k for unit roundoff u (float32 by default): |fl(sum of k products) -
    exact| <= gamma_k * sum |products|, whatever the summation order, blocking or FMA use."""
    return 1.01 * k * u / (1 - k * u)


def assert_bounded(got, want, bound, what, dtype=DTYPE):
    """|got - want| <= bound elementwise (want, bound in float64)."""
    got = np.asarray(got)
    assert got.shape == want.shape, f"{what}: shape {got.shape}, expected {want.shape}"
    assert got.dtype == dtype, f"{what}: dtype {got.dtype}, expected {np.dtype(dtype)}"
    err = np.abs(got.astype(np.float64) - want)
    bad = ~(err <= bound)  # also catches NaN
    if bad.any():
        i = np.unravel_index(np.argmax(np.where(bad, err / np.maximum(bound, 1e-300), 0)), err.shape)
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {err.size} elements exceed the float32 error bound; "
            f"worst at {tuple(map(int, i))}: got {got[i]!r}, want {want[i]!r}, bound {bound[i]:.3g}")


def _uniform(rng, shape, low=-1.0, high=1.0):
    return rng.uniform(low, high, size=shape).astype(DTYPE)


def _f64(a):
    return np.asarray(a, dtype=np.float64)


class GemmCase:
    """C = op(a) @ op(b), M x K x N, where op transposes when trans_a / trans_b (the
    operand is stored transposed, as X^T in dW = X^T dZ and W^T in dX = dZ W^T)."""

    def __init__(self, m, k, n, trans_a=False, trans_b=False, dtype=DTYPE, seed=0):
        rng = np.random.default_rng(seed)
        self.m, self.k, self.n = m, k, n
        self.trans_a, self.trans_b, self.dtype = trans_a, trans_b, np.dtype(dtype)
        self.a = _uniform(rng, (k, m) if trans_a else (m, k)).astype(dtype)
        self.b = _uniform(rng, (n, k) if trans_b else (k, n)).astype(dtype)
        A = _f64(self.a.T if trans_a else self.a)
        B = _f64(self.b.T if trans_b else self.b)
        self.want = A @ B
        u = np.finfo(dtype).eps / 2
        self.bound = _gamma(k, u) * (np.abs(A) @ np.abs(B)) + 1e-30
        self.flop = 2 * m * k * n

    def args(self):
        return (self.a, self.b, self.trans_a, self.trans_b)

    def check(self, c):
        assert_bounded(c, self.want, self.bound, f"gemm {self.m}x{self.k}x{self.n}", self.dtype)


class DenseCase:
    """A Dense layer x (n, d_in) -> (n, d_out): forward act(x @ w + b), and its backward."""

    def __init__(self, n, d_in, d_out, activation="relu", seed=1):
        rng = np.random.default_rng(seed)
        self.activation = activation
        self.shape = (n, d_in, d_out)
        self.x = _uniform(rng, (n, d_in), 0.0, 1.0)  # like pixel inputs
        lim = np.sqrt(6.0 / d_in)  # He-uniform, as fusenn.Dense draws for relu
        self.w = _uniform(rng, (d_in, d_out), -lim, lim)
        self.b = _uniform(rng, (d_out,), -0.1, 0.1)
        X, W, B = _f64(self.x), _f64(self.w), _f64(self.b)
        z = X @ W + B
        assert activation == "relu", "oracles are written for relu"
        self.want_y = np.maximum(z, 0.0)
        self.bound_y = _gamma(d_in + 1) * (np.abs(X) @ np.abs(W) + np.abs(B)) + 1e-30
        # Backward inputs: y is the float32 forward output, dy a random upstream gradient.
        self.y = reference.dense_forward(self.x, self.w, self.b, activation)
        self.dy = _uniform(rng, (n, d_out), -0.01, 0.01)
        dz = np.where(_f64(self.y) > 0, _f64(self.dy), 0.0)  # exact in float32 too
        adz = np.abs(dz)
        self.want_dw, self.bound_dw = X.T @ dz, _gamma(n) * (np.abs(X).T @ adz) + 1e-30
        self.want_db, self.bound_db = dz.sum(axis=0), _gamma(n) * adz.sum(axis=0) + 1e-30
        self.want_dx, self.bound_dx = dz @ W.T, _gamma(d_out) * (adz @ np.abs(W).T) + 1e-30

    def forward_args(self):
        return (self.x, self.w, self.b, self.activation)

    def backward_args(self):
        return (self.x, self.w, self.y, self.dy, self.activation, True)

    def check_forward(self, y):
        assert_bounded(y, self.want_y, self.bound_y, "dense_forward y")

    def check_backward(self, grads):
        dw, db, dx = grads
        assert_bounded(dw, self.want_dw, self.bound_dw, "dense_backward dw")
        assert_bounded(db, self.want_db, self.bound_db, "dense_backward db")
        assert dx is not None, "dense_backward: need_dx=True returned no dx"
        assert_bounded(dx, self.want_dx, self.bound_dx, "dense_backward dx")


class SoftmaxCase:
    """Fused softmax + cross-entropy on logits (n, k) and integer labels."""

    def __init__(self, n, k, seed=2):
        rng = np.random.default_rng(seed)
        self.z = (3 * rng.standard_normal((n, k))).astype(DTYPE)
        self.labels = rng.integers(0, k, size=n)
        Z = _f64(self.z)
        e = np.exp(Z - Z.max(axis=1, keepdims=True))
        self.want_p = e / e.sum(axis=1, keepdims=True)
        rows = np.arange(n)
        self.want_loss = float(np.mean(-np.log(self.want_p[rows, self.labels])))
        self.want_dz = self.want_p.copy()
        self.want_dz[rows, self.labels] -= 1
        self.want_dz /= n
        # exp/log/division in float32 (vectorised exp may be a few ulp off): 1e-5 relative,
        # with an absolute floor for dz's p - 1 cancellation.
        self.bound_p = 1e-5 * self.want_p + 1e-9
        self.bound_dz = 1e-5 * np.abs(self.want_dz) + 1e-6 / n

    def args(self):
        return (self.z, self.labels)

    def check(self, result):
        loss, p, dz = result
        assert isinstance(loss, float) and abs(loss - self.want_loss) <= 1e-5 * abs(self.want_loss) + 1e-7, \
            f"softmax_cross_entropy loss {loss!r}, want {self.want_loss!r}"
        assert_bounded(p, self.want_p, self.bound_p, "softmax_cross_entropy p")
        assert_bounded(dz, self.want_dz, self.bound_dz, "softmax_cross_entropy dz")


class MLPCase:
    """An MLP of layer `sizes` (hidden layers of one of HIDDEN_ACTIVATIONS, softmax output)
    trained with cross-entropy
    and SGD(lr=0.01, momentum=0.9) in float32, from the weights `w0` ([W1, b1, ...] in
    fusenn's layout, W (fan_in, units)), by fusenn or, for comparison, by PyTorch or
    scikit-learn. Subclasses set sizes, activations, X, y and w0.

    make_trainer(backend) -> (train, weights): `train()` does the case's unit of work and
    returns its loss; `weights()` returns the current weights in fusenn's layout. Backends:
    "c" / "numpy" (fusenn.Sequential), "torch" (nn.Sequential of Linear and ReLU, Tanh or
    Sigmoid, CrossEntropyLoss on the logits, torch.optim.SGD) and "sklearn" (MLPClassifier,
    solver="sgd", alpha=0, nesterovs_momentum=False, batch_size = the case's batch). The
    last two skip the test when the package is not importable. Every framework implements
    momentum as v = 0.9 v + g, w -= 0.01 v (sklearn as v = 0.9 v - 0.01 g, w += v: the same).
    """

    LR, MOMENTUM = 0.01, 0.9
    ADAM_LR = 1e-3  # Adam's default in Keras and PyTorch (beta1 0.9, beta2 0.999, eps 1e-8)
    w0 = None
    optimizer = "sgd"  # or "adam"

    def make_optimizer(self):
        if self.optimizer == "adam":
            return fusenn.Adam(lr=self.ADAM_LR)
        return fusenn.SGD(lr=self.LR, momentum=self.MOMENTUM)

    def make_model(self, backend, dtype="float32"):
        layers = [fusenn.Dense(u, activation=a) for u, a in zip(self.sizes[1:], self.activations)]
        model = fusenn.Sequential(layers, input_dim=self.sizes[0], dtype=dtype, seed=0, backend=backend)
        model.compile(loss="cross_entropy", optimizer=self.make_optimizer())
        if self.w0 is not None:
            model.set_weights(self.w0)
        return model

    def make_trainer(self, backend):
        return getattr(self, f"_{backend}_trainer")()

    def _c_trainer(self):
        return self._fusenn_trainer("c")

    def _numpy_trainer(self):
        return self._fusenn_trainer("numpy")

    def torch_model(self):
        """(net, linear layers, optimizer, loss function), float32, starting at w0."""
        torch = pytest.importorskip("torch")
        linears, layers = [], []
        for i in range(len(self.sizes) - 1):
            lin = torch.nn.Linear(self.sizes[i], self.sizes[i + 1], dtype=torch.float32)
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(self.w0[2 * i].T))
                lin.bias.copy_(torch.from_numpy(self.w0[2 * i + 1]))
            linears.append(lin)
            if i < len(self.sizes) - 2:
                layers += [lin, getattr(torch.nn, HIDDEN_ACTIVATIONS[self.activations[i]][0])()]
            else:
                layers.append(lin)
        net = torch.nn.Sequential(*layers)
        opt = (torch.optim.Adam(net.parameters(), lr=self.ADAM_LR, eps=1e-8)
               if self.optimizer == "adam" else
               torch.optim.SGD(net.parameters(), lr=self.LR, momentum=self.MOMENTUM))
        return net, linears, opt, torch.nn.CrossEntropyLoss()

    @staticmethod
    def torch_weights(linears):
        return [a for lin in linears
                for a in (lin.weight.detach().numpy().T.copy(), lin.bias.detach().numpy().copy())]

    def sklearn_model(self, batch, shuffle):
        """An MLPClassifier at w0 with zero momentum, so its next partial_fit is a first step."""
        if self.optimizer != "sgd":  # sklearn's Adam adds eps to sqrt(v), not sqrt(v_hat)
            pytest.skip("scikit-learn is compared with SGD only")
        nn = pytest.importorskip("sklearn.neural_network")
        clf = nn.MLPClassifier(hidden_layer_sizes=tuple(self.sizes[1:-1]),
                               activation=HIDDEN_ACTIVATIONS[self.activations[0]][1],
                               solver="sgd", learning_rate_init=self.LR, momentum=self.MOMENTUM,
                               nesterovs_momentum=False, alpha=0.0, batch_size=batch,
                               shuffle=shuffle, random_state=0)
        # The first partial_fit draws sklearn's own weights (and takes a step on one batch):
        # overwrite them and the momentum in place.
        clf.partial_fit(self.X[:batch], self.y[:batch], classes=np.arange(self.sizes[-1]))
        for p, w in zip(clf.coefs_ + clf.intercepts_, self.w0[0::2] + self.w0[1::2]):
            np.copyto(p, w)
        for v in clf._optimizer.velocities:
            v[...] = 0
        return clf

    @staticmethod
    def sklearn_weights(clf):
        return [a.copy() for pair in zip(clf.coefs_, clf.intercepts_) for a in pair]


class TrainCase(MLPCase):
    """One training step on one batch (X, y): model.train_on_batch for fusenn, one
    forward/backward/optimizer step for torch, one partial_fit for sklearn.

    Before timing, each framework's first step from w0 is checked against one step of the
    NumPy backend in float64 from the same weights. The check compares whole gradients, so
    (with relu hidden layers; tanh and sigmoid have no mask) no relu mask may depend on
    float32 rounding (a flipped mask moves an update by up to
    ~1e-2 relative). The data make the hidden pre-activations exact in float32: binary inputs,
    fusenn's seed-0 weights rounded to multiples of 2^-8, and hidden biases that are odd
    multiples of half the grid of h @ W. Each hidden pre-activation is then a non-zero
    multiple of a power of two g with sum |terms| < 2^24 g, which float32 computes exactly in
    any summation order, blocking or FMA use. The softmax layer and the backward pass carry
    ordinary float32 rounding. (The timing does not depend on the values.)
    """

    W_GRID = 2.0 ** -8

    def __init__(self, sizes, activations, batch, optimizer="sgd", seed=26):
        rng = np.random.default_rng(seed)
        self.sizes, self.activations, self.batch = sizes, activations, batch
        self.optimizer = optimizer
        self.X = rng.integers(0, 2, size=(batch, sizes[0])).astype(DTYPE)  # binary "pixels"
        self.y = rng.integers(0, sizes[-1], size=batch)
        w0 = self.make_model("numpy", dtype="float64").get_weights()  # fusenn's seed-0 draw
        h, grid = _f64(self.X), 1.0  # a layer's input and the grid its values lie on
        for i, act in enumerate(activations):
            W = np.round(w0[2 * i] / self.W_GRID) * self.W_GRID
            w0[2 * i] = W
            if i == len(activations) - 1:
                assert act == "softmax", "TrainCase: the output layer must be softmax"
                break
            if act != "relu":  # smooth: float32 rounding moves the update by ~1e-5 at most
                assert "relu" not in activations, "TrainCase: relu or smooth hidden layers"
                continue
            grid *= self.W_GRID / 2  # h @ W lies on grid * 2^-8; b and z on odd multiples of half that
            m = int(0.05 / grid)
            w0[2 * i + 1] = b = (2.0 * rng.integers(-m, m, size=W.shape[1]) + 1) * grid
            assert (np.abs(h) @ np.abs(W) + np.abs(b)).max() < 2.0 ** 24 * grid, \
                f"TrainCase {sizes}: layer {i + 1} pre-activations are not exact in float32"
            h = np.maximum(h @ W + b, 0.0)  # exact in float64 too (< 2^24 grid points)
        self.w0 = [w.astype(DTYPE) for w in w0]
        oracle = self.make_model("numpy", dtype="float64")  # starts at w0
        self.want_loss = oracle.train_on_batch(self.X, self.y)
        self.want_delta = [w1 - _f64(w0) for w1, w0 in zip(oracle.get_weights(), self.w0)]

    def _fusenn_trainer(self, backend):
        model = self.make_model(backend)
        return functools.partial(model.train_on_batch, self.X, self.y), model.get_weights

    def _torch_trainer(self):
        net, linears, opt, loss_fn = self.torch_model()
        import torch
        X, y = torch.from_numpy(self.X), torch.from_numpy(self.y)

        def step():
            opt.zero_grad()
            loss = loss_fn(net(X), y)
            loss.backward()
            opt.step()
            return loss.item()

        return step, lambda: self.torch_weights(linears)

    def _sklearn_trainer(self):
        clf = self.sklearn_model(self.batch, shuffle=False)  # one batch per partial_fit

        def step():
            clf.partial_fit(self.X, self.y)
            return float(clf.loss_)

        return step, lambda: self.sklearn_weights(clf)

    def check_first_step(self, weights, loss, dtype=DTYPE):
        """`weights` ([W1, b1, ...]) result from exactly one step on (X, y) from w0, which
        returned `loss`. dtype=None: any float dtype (sklearn chooses its own)."""
        assert abs(loss - self.want_loss) <= 1e-5 * abs(self.want_loss), \
            f"first step: loss {loss!r}, want {self.want_loss!r}"
        assert len(weights) == len(self.w0), f"first step: {len(weights)} parameters, want {len(self.w0)}"
        for i, (w1, w0, want) in enumerate(zip(weights, self.w0, self.want_delta)):
            assert dtype is None or w1.dtype == dtype, f"param {i}: dtype {w1.dtype}, want {np.dtype(dtype)}"
            assert w1.shape == w0.shape, f"param {i}: shape {w1.shape}, want {w0.shape}"
            delta = _f64(w1) - _f64(w0)
            # Relative (Frobenius) error of the update lr * v: float32 rounding of w1
            # alone contributes ~|w| u / |lr g| ~ 1e-4 here; a wrong gradient is >> 1e-3.
            rel = np.linalg.norm(delta - want) / np.linalg.norm(want)
            assert rel < 2e-3, f"first step: update of param {i} off by {rel:.2e} (relative)"


class EpochCase(MLPCase):
    """One epoch of training on MNIST-shaped synthetic data: n x 784 float32 pixels in [0, 1),
    labels 0..9 from a fixed random linear map of the pixels (so the loss can fall),
    784-256-128-10, batch 128, shuffled every epoch, SGD(lr 0.01, momentum 0.9), from
    fusenn's seed-0 weights. train() returns the epoch's mean batch loss.

    fusenn: model.fit(X, y, epochs=1, batch_size=128, shuffle=True) (input checks included);
    torch: a randperm and a loop over index batches; sklearn: one partial_fit over (X, y)
    with shuffle=True (MLPClassifier shuffles and batches inside).
    """

    sizes, activations, batch = (784, 256, 128, 10), ("relu", "relu", "softmax"), 128
    pedantic = dict(rounds=3, iterations=1, warmup_rounds=1)  # how to time it: ~0.3-3 s a call

    def __init__(self, n, seed=3):
        rng = np.random.default_rng(seed)
        self.X = rng.random((n, self.sizes[0]), dtype=DTYPE)
        R = rng.standard_normal((self.sizes[0], self.sizes[-1])).astype(DTYPE)
        self.y = np.argmax((self.X - 0.5) @ R, axis=1)
        self.w0 = self.make_model("numpy").get_weights()
        self.initial_loss = self.loss_of(self.w0)

    def loss_of(self, weights):
        """Cross-entropy over the whole data set of a net with `weights`."""
        model = self.make_model("c")
        model.set_weights(weights)
        return model.evaluate(self.X, self.y)["loss"]

    def _fusenn_trainer(self, backend):
        model = self.make_model(backend)

        def epoch():
            history = model.fit(self.X, self.y, epochs=1, batch_size=self.batch, shuffle=True, verbose=0)
            return history.history["loss"][0]

        return epoch, model.get_weights

    def _torch_trainer(self):
        net, linears, opt, loss_fn = self.torch_model()
        import torch
        X, y, n = torch.from_numpy(self.X), torch.from_numpy(self.y), len(self.X)
        gen = torch.Generator().manual_seed(0)

        def epoch():
            order, total = torch.randperm(n, generator=gen), 0.0
            for first in range(0, n, self.batch):
                idx = order[first:first + self.batch]
                opt.zero_grad()
                loss = loss_fn(net(X[idx]), y[idx])
                loss.backward()
                opt.step()
                total += loss.item() * len(idx)
            return total / n

        return epoch, lambda: self.torch_weights(linears)

    def _sklearn_trainer(self):
        clf = self.sklearn_model(self.batch, shuffle=True)

        def epoch():
            clf.partial_fit(self.X, self.y)
            return float(clf.loss_)

        return epoch, lambda: self.sklearn_weights(clf)


# ---- session-wide cached cases -------------------------------------------------------------

GEMM_SHAPES = {  # id -> (M, K, N, trans_a, trans_b[, dtype]): C (M, N) = op(A) (M, K) @ op(B) (K, N)
    "32": (32, 32, 32, False, False),
    "64": (64, 64, 64, False, False),
    "128x128x10": (128, 128, 10, False, False),  # an output layer: H @ W, 10 classes
    "256": (256, 256, 256, False, False),
    "1024": (1024, 1024, 1024, False, False),
    "2048": (2048, 2048, 2048, False, False),
    "1024-f64": (1024, 1024, 1024, False, False, np.float64),
    "128x784x256": (128, 784, 256, False, False),  # MLP layer 1 forward: X @ W1
    "128x256x128": (128, 256, 128, False, False),  # MLP layer 2 forward: H1 @ W2
    "784x128x256": (784, 128, 256, True, False),   # MLP layer 1 dW = X^T @ dZ, X (128, 784)
    "128x128x256": (128, 128, 256, False, True),   # MLP layer 2 dX = dZ @ W2^T, W2 (256, 128)
    "1x784x256": (1, 784, 256, False, False),      # the MLP's layers at batch 1 (predict) ...
    "1x256x128": (1, 256, 128, False, False),
    "1x128x10": (1, 128, 10, False, False),
    "8x784x256": (8, 784, 256, False, False),      # ... and at batches 8 and 16
    "16x784x256": (16, 784, 256, False, False),
}
DENSE_SHAPES = {"128x784x256": (128, 784, 256),  # batch x d_in x d_out, relu
                "1x784x256": (1, 784, 256), "8x784x256": (8, 784, 256)}
SOFTMAX_SHAPES = {"128x10": (128, 10), "1024x10": (1024, 10)}
TRAIN_NETS = {  # id -> (layer sizes, activations, batch)
    "64-32-10-b32": ((64, 32, 10), ("relu", "softmax"), 32),
    "784-256-128-10-b128": ((784, 256, 128, 10), ("relu", "relu", "softmax"), 128),
    "784-256-128-10-b128-adam": ((784, 256, 128, 10), ("relu", "relu", "softmax"), 128, "adam"),
    "784-256-128-10-b512": ((784, 256, 128, 10), ("relu", "relu", "softmax"), 512),
    "1024-1024-1024-10-b256": ((1024, 1024, 1024, 10), ("relu", "relu", "softmax"), 256),
    # the textbook's activations: their exp / tanh cost more than the GEMMs' stores
    "784-256-128-10-b128-tanh": ((784, 256, 128, 10), ("tanh", "tanh", "softmax"), 128),
    "784-256-128-10-b128-sigmoid": ((784, 256, 128, 10), ("sigmoid", "sigmoid", "softmax"), 128),
}
# hidden activation -> (PyTorch module, scikit-learn's name) of the comparison nets
HIDDEN_ACTIVATIONS = {"relu": ("ReLU", "relu"), "tanh": ("Tanh", "tanh"),
                      "sigmoid": ("Sigmoid", "logistic")}
ALTERNATING_NETS = {"784-256-10-b128": ((784, 256, 10), ("relu", "softmax"), 128)}  # test_alternating
EPOCH_NETS = {"784-256-128-10-b128": 60_000}  # id -> rows (EpochCase's net and batch)
EPOCH_SMOKE_ROWS = 2_000  # rows under --benchmark-disable, so the smoke test stays fast

# Per-shape timing settings (a benchmark marker on those cases): a 1024-wide step takes
# ~30-150 ms, so 50 rounds per variant would stretch a group's run to ~40 s.
SHAPE_BENCHMARK_SETTINGS = {"1024-1024-1024-10-b256": dict(min_rounds=20),
                            "2048": dict(min_rounds=10), "1024-f64": dict(min_rounds=20),
                            "1024": dict(min_rounds=20)}


# test argument name -> the shapes it is parametrized over (see pytest_generate_tests)
SHAPE_ARGS = {"gemm_shape": GEMM_SHAPES, "dense_shape": DENSE_SHAPES,
              "softmax_shape": SOFTMAX_SHAPES, "net": TRAIN_NETS, "epoch_net": EPOCH_NETS}
# Arguments also parametrized over thread counts and over the comparison frameworks, for
# tests that take an `nthreads` argument: argname -> thread counts.
THREAD_COUNTS = {"gemm_shape": (1, 2), "net": (1, 2), "epoch_net": (2,)}
TRAIN_BACKENDS = ("c", "numpy", "torch", "sklearn")
BACKENDS_FOR = {"net": TRAIN_BACKENDS, "epoch_net": TRAIN_BACKENDS}  # others: c and numpy


@functools.lru_cache(maxsize=None)
def gemm_case_for(name):
    return GemmCase(*GEMM_SHAPES[name])


@functools.lru_cache(maxsize=None)
def dense_case_for(name):
    return DenseCase(*DENSE_SHAPES[name])


@functools.lru_cache(maxsize=None)
def softmax_case_for(name):
    return SoftmaxCase(*SOFTMAX_SHAPES[name])


@functools.lru_cache(maxsize=None)
def train_case_for(name):
    return TrainCase(*(TRAIN_NETS.get(name) or ALTERNATING_NETS[name]))


@functools.lru_cache(maxsize=None)
def epoch_case_for(name, rows):
    return EpochCase(rows)


@pytest.fixture(scope="session")
def gemm_case():
    return gemm_case_for


@pytest.fixture(scope="session")
def dense_case():
    return dense_case_for


@pytest.fixture(scope="session")
def softmax_case():
    return softmax_case_for


@pytest.fixture(scope="session")
def train_case():
    return train_case_for


@pytest.fixture(scope="session")
def epoch_case(request):
    """epoch_case(name): the EpochCase for EPOCH_NETS[name], generated once per session;
    EPOCH_SMOKE_ROWS rows instead of 60,000 under --benchmark-disable."""
    disabled = request.config.getoption("benchmark_disable", False)
    return lambda name: epoch_case_for(name, EPOCH_SMOKE_ROWS if disabled else EPOCH_NETS[name])


@pytest.fixture(scope="session")
def limit_threads():
    return limited_threads
