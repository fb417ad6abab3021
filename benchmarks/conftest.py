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
"""

import functools
import os
import shlex
import time

import numpy as np
import pytest

import fusenn
from fusenn import ops, reference

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
    machine_info["fusenn"] = fusenn_info()


def pytest_report_header(config):
    i = fusenn_info()
    return (f"fusenn {i['fusenn_version']}: {i['num_threads']} threads, gemm_isa={i['gemm_isa']}, "
            f"openmp={i['has_openmp']}; numpy {i['numpy_version']} ({i['numpy_blas']})")


# ---- running a benchmark --------------------------------------------------------------

def pytest_generate_tests(metafunc):
    """Parametrize (<shape argument>, backend) for every shape, shape-outer and backend-inner,
    so a group's C and NumPy variants run back to back; ids read "c-1024", "numpy-1024"."""
    for argname, shapes in SHAPE_ARGS.items():
        if argname in metafunc.fixturenames and "backend" in metafunc.fixturenames:
            metafunc.parametrize((argname, "backend"), [
                pytest.param(shape, backend, id=f"{backend}-{shape}")
                for shape in shapes for backend in BACKENDS])


@pytest.fixture
def run(benchmark):
    """run(group, backend, fn, *args, info={...}) -> fn(*args): benchmark fn(*args) in `group`
    after a warm-up; extra_info records the backend, thread count, GEMM ISA and `info`."""

    def _run(group, backend, fn, *args, info=None):
        benchmark.group = group
        benchmark.extra_info.update(backend=backend, num_threads=fusenn.get_num_threads(),
                                    gemm_isa=fusenn.gemm_isa(), **(info or {}))
        if benchmark.enabled and WARMUP_SECONDS > 0:
            fn(*args)
            start, calls = time.perf_counter(), 1
            while calls < 2 or time.perf_counter() - start < WARMUP_SECONDS:
                fn(*args)
                calls += 1
        return benchmark(fn, *args)

    return _run


# ---- checking results against a float64 oracle -------------------------------------------

def _gamma(k):
    """Higham's gamma_k for float32: |fl(sum of k products) - exact| <= gamma_k * sum |products|,
    whatever the summation order, blocking or FMA use."""
    return 1.01 * k * U32 / (1 - k * U32)


def assert_bounded(got, want, bound, what):
    """|got - want| <= bound elementwise (want, bound in float64)."""
    got = np.asarray(got)
    assert got.shape == want.shape, f"{what}: shape {got.shape}, expected {want.shape}"
    assert got.dtype == DTYPE, f"{what}: dtype {got.dtype}, expected {np.dtype(DTYPE)}"
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
    """C = op(a) @ b (op = transpose when trans_a), M x K x N."""

    def __init__(self, m, k, n, trans_a=False, seed=0):
        rng = np.random.default_rng(seed)
        self.m, self.k, self.n, self.trans_a = m, k, n, trans_a
        self.a = _uniform(rng, (k, m) if trans_a else (m, k))
        self.b = _uniform(rng, (k, n))
        A, B = _f64(self.a.T if trans_a else self.a), _f64(self.b)
        self.want = A @ B
        self.bound = _gamma(k) * (np.abs(A) @ np.abs(B)) + 1e-30
        self.flop = 2 * m * k * n

    def args(self):
        return (self.a, self.b, self.trans_a)

    def check(self, c):
        assert_bounded(c, self.want, self.bound, f"gemm {self.m}x{self.k}x{self.n}")


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


class TrainCase:
    """One model.train_on_batch step of an MLP: cross-entropy, SGD(lr 0.01, momentum 0.9)."""

    def __init__(self, sizes, activations, batch, seed=26):
        rng = np.random.default_rng(seed)
        self.sizes, self.activations, self.batch = sizes, activations, batch
        self.X = _uniform(rng, (batch, sizes[0]), 0.0, 1.0)
        self.y = rng.integers(0, sizes[-1], size=batch)
        self.w0 = self.make_model("numpy").get_weights()  # float32, drawn from seed 0
        # The oracle: one step of the NumPy backend in float64 from the same float32 weights.
        oracle = self.make_model("numpy", dtype="float64")
        oracle.set_weights(self.w0)
        # The check compares whole gradients, so no hidden pre-activation may sit so close to 0
        # that float32 rounding could flip its relu mask (that moves an update by ~1e-2
        # relative). Typical float32 error there is ~1e-6; seed 26 keeps every |z| > 7e-5.
        h = _f64(self.X)
        for layer in oracle.layers[:-1]:
            z = h @ layer.W + layer.b
            assert np.abs(z).min() > 2e-5, f"TrainCase(seed={seed}): a pre-activation is ~0; pick another seed"
            h = reference.activation_forward(z, layer.activation)
        self.want_loss = oracle.train_on_batch(self.X, self.y)
        self.want_delta = [w1 - _f64(w0) for w1, w0 in zip(oracle.get_weights(), self.w0)]

    def make_model(self, backend, dtype="float32"):
        layers = [fusenn.Dense(u, activation=a) for u, a in zip(self.sizes[1:], self.activations)]
        model = fusenn.Sequential(layers, input_dim=self.sizes[0], dtype=dtype, seed=0, backend=backend)
        model.compile(loss="cross_entropy", optimizer=fusenn.SGD(lr=0.01, momentum=0.9))
        return model

    def check_first_step(self, model, loss):
        """`model` has taken exactly one step on (X, y) from w0, returning `loss`."""
        assert abs(loss - self.want_loss) <= 1e-5 * abs(self.want_loss), \
            f"train_on_batch loss {loss!r}, want {self.want_loss!r}"
        for i, (w1, w0, want) in enumerate(zip(model.get_weights(), self.w0, self.want_delta)):
            assert w1.dtype == DTYPE
            delta = _f64(w1) - _f64(w0)
            # Relative (Frobenius) error of the update lr * v: float32 rounding of w1
            # alone contributes ~|w| u / |lr g| ~ 1e-4 here; a wrong gradient is >> 1e-3.
            rel = np.linalg.norm(delta - want) / np.linalg.norm(want)
            assert rel < 2e-3, f"train_on_batch: update of param {i} off by {rel:.2e} (relative)"


# ---- session-wide cached cases -------------------------------------------------------------

GEMM_SHAPES = {  # id -> (M, K, N, trans_a): C (M, N) = op(A) (M, K) @ B (K, N)
    "64": (64, 64, 64, False),
    "256": (256, 256, 256, False),
    "1024": (1024, 1024, 1024, False),
    "128x784x256": (128, 784, 256, False),   # MLP layer 1 forward: X @ W1
    "128x256x128": (128, 256, 128, False),   # MLP layer 2 forward: H1 @ W2
    "784x128x256": (784, 128, 256, True),    # MLP layer 1 dW = X^T @ dZ, X (128, 784)
}
DENSE_SHAPES = {"128x784x256": (128, 784, 256)}  # batch x d_in x d_out, relu
SOFTMAX_SHAPES = {"128x10": (128, 10), "1024x10": (1024, 10)}
TRAIN_NETS = {  # id -> (layer sizes, activations, batch)
    "784-256-128-10-b128": ((784, 256, 128, 10), ("relu", "relu", "softmax"), 128),
    "64-32-10-b32": ((64, 32, 10), ("relu", "softmax"), 32),
}


# test argument name -> the shapes it is parametrized over (see pytest_generate_tests)
SHAPE_ARGS = {"gemm_shape": GEMM_SHAPES, "dense_shape": DENSE_SHAPES,
              "softmax_shape": SOFTMAX_SHAPES, "net": TRAIN_NETS}


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
    return TrainCase(*TRAIN_NETS[name])


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
