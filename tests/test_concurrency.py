"""fusenn from several Python threads at once.

The C kernels release the GIL, so Python threads really run fusenn code in
parallel (each one possibly with its own OpenMP team). What must hold:

  * different models trained and used from 4 threads at once give the same
    bits as the same work done one model after another, also while NumPy's
    own (BLAS) matmul runs in other threads;
  * fusenn.matmul called from 4 threads at once with different shapes and
    dtypes (which exercises GEMM's per-thread packing buffers) gives the same
    bits as sequential calls;
  * ONE model used from two threads at once: the package does not define this
    yet. The tests accept either results identical to some sequential order of
    the calls, or a ValueError / RuntimeError with a clear message for the call
    that could not run; anything else (mixed-up weights, other exceptions) fails.
    What happened in each trial is written to the terminal.

Every scenario runs in a child process (this file run as a script), so that a
crash (say, two threads corrupting one model's C buffers) fails that test only.
"""

import collections
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import fusenn

WORKERS = 4


# ---- helpers ------------------------------------------------------------------------------

Job = collections.namedtuple("Job", "name sizes activations loss dtype optimizer n epochs batch "
                                    "threads seed backend")

# Big enough that GEMM runs in parallel (> 128*128*64 multiply-adds per call),
# packs several blocks (k > 256) and the engine's arenas hold real batches.
JOBS = [
    Job("relu-ce-f32-sgd", (300, 256, 10), ("relu", "softmax"), "cross_entropy", "float32",
        ("SGD", dict(lr=0.05, momentum=0.9)), 512, 2, 128, 2, 1, "c"),
    Job("tanh-bce-f64-adam", (64, 200, 130, 5), ("tanh", "leaky_relu", "sigmoid"),
        "binary_cross_entropy", "float64", ("Adam", dict(lr=1e-3)), 384, 2, 96, 1, 2, "c"),
    Job("sigmoid-mse-f32-nesterov", (257, 129, 33), ("sigmoid", "identity"), "mse", "float32",
        ("SGD", dict(lr=0.01, momentum=0.5, nesterov=True)), 300, 3, 64, 2, 3, "c"),
    Job("softmax-ce-f64-sgd", (40, 300, 7), ("relu", "identity"), "cross_entropy", "float64",
        ("SGD", dict(lr=0.02)), 600, 2, 200, 1, 4, "c"),
]


def make_data(job):
    rng = np.random.default_rng(job.seed + 100)
    X = rng.standard_normal((job.n, job.sizes[0]))
    k = job.sizes[-1]
    if job.loss == "cross_entropy":
        y = rng.integers(0, k, job.n)
    elif job.loss == "binary_cross_entropy":
        y = (rng.random((job.n, k)) < 0.5).astype(np.float64)
    else:
        y = rng.standard_normal((job.n, k))
    X_test = rng.standard_normal((97, job.sizes[0]))
    return X, y, X_test


def make_model(job):
    layers = [fusenn.Dense(u, a) for u, a in zip(job.sizes[1:], job.activations)]
    model = fusenn.Sequential(layers, input_dim=job.sizes[0], dtype=job.dtype, seed=job.seed,
                              backend=job.backend)
    cls, kwargs = job.optimizer
    model.compile(job.loss, getattr(fusenn, cls)(**kwargs))
    return model


def run_job(job, data, start=None):
    """Train, predict, evaluate; everything a caller could observe, as arrays."""
    X, y, X_test = data
    model = make_model(job)
    if start is not None:
        start.wait()
    with fusenn.threads(job.threads):
        hist = model.fit(X, y, epochs=job.epochs, batch_size=job.batch, verbose=0)
        single = model.train_on_batch(X[:17], y[:17])
        pred = model.predict(X_test)
        ev = model.evaluate(X, y)
    return dict(weights=model.get_weights(), loss=np.array(hist.history["loss"]),
                single=np.array([single]), pred=pred,
                eval=np.array([ev["loss"], ev.get("accuracy", -1.0)]))


def assert_same_bits(got, want, what):
    for key in want:
        g, w = got[key], want[key]
        if isinstance(w, list):
            assert len(g) == len(w)
            for i, (a, b) in enumerate(zip(g, w)):
                assert a.dtype == b.dtype and np.array_equal(a, b), \
                    f"{what}: {key}[{i}] differs from the sequential run " \
                    f"(max |diff| {np.max(np.abs(a - b)):.3g})"
        else:
            assert np.array_equal(g, w), f"{what}: {key} differs: {g} vs {w}"


class NumpyNoise:
    """Threads doing NumPy (BLAS) matmuls until stopped; counts them."""

    def __init__(self, n_threads=2, size=256):
        self.stop = threading.Event()
        self.count = 0
        self.errors = []
        rng = np.random.default_rng(7)
        self.a = rng.standard_normal((size, size))
        self.want = self.a @ self.a
        self.threads = [threading.Thread(target=self.loop, daemon=True) for _ in range(n_threads)]

    def loop(self):
        while not self.stop.is_set():
            c = self.a @ self.a
            if not np.allclose(c, self.want):
                self.errors.append("NumPy matmul gave a different result under load")
            self.count += 1

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join()


# ---- different models in different threads ---------------------------------------------------

def scenario_different_models_in_threads_match_sequential_runs(say):
    data = [make_data(job) for job in JOBS]
    t0 = time.perf_counter()
    sequential = [run_job(job, d) for job, d in zip(JOBS, data)]
    t_seq = time.perf_counter() - t0

    for trial in range(2):
        start = threading.Barrier(WORKERS)
        t0 = time.perf_counter()
        with NumpyNoise() as noise, ThreadPoolExecutor(max_workers=WORKERS) as pool:
            futures = [pool.submit(run_job, job, d, start) for job, d in zip(JOBS, data)]
            concurrent = [f.result(timeout=120) for f in futures]
        t_conc = time.perf_counter() - t0
        assert not noise.errors, noise.errors[0]
        for job, got, want in zip(JOBS, concurrent, sequential):
            assert_same_bits(got, want, f"{job.name} (trial {trial})")
    say(f"\nconcurrency: 4 models sequentially {t_seq:.2f} s, in 4 threads {t_conc:.2f} s "
        f"alongside {noise.count} NumPy matmuls in 2 more threads; identical bits")


def scenario_same_architecture_models_in_threads_are_independent(say):
    """Several models of one architecture and seed, each on its own data: the same
    code paths and buffer sizes at the same time in every thread."""
    job = JOBS[0]._replace(epochs=1)
    datas = [make_data(job._replace(seed=s)) for s in range(WORKERS)]
    sequential = [run_job(job, d) for d in datas]
    start = threading.Barrier(WORKERS)
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        concurrent = list(pool.map(lambda d: run_job(job, d, start), datas, timeout=120))
    for i, (got, want) in enumerate(zip(concurrent, sequential)):
        assert_same_bits(got, want, f"model {i}")


# ---- fusenn.matmul from several threads ----------------------------------------------------

MATMUL_CASES = [  # (m, n, k, dtype, trans_a, trans_b, kernel threads)
    (1, 1, 1, np.float32, False, False, 1),
    (300, 257, 129, np.float64, False, True, 2),   # several MC blocks, parallel
    (40, 50, 513, np.float32, True, False, 1),     # several KC blocks
    (5, 4500, 9, np.float64, False, False, 2),     # several NC blocks, column split
    (128, 128, 300, np.float32, True, True, 2),
    (17, 33, 65, np.float64, True, True, 1),
    (200, 150, 260, np.float32, False, False, 3),
    (513, 7, 3, np.float64, True, False, 1),
]


def matmul_operands(case, seed):
    m, n, k, dtype, ta, tb, _ = case
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((k, m) if ta else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if tb else (k, n)).astype(dtype)
    return a, b


def scenario_concurrent_matmul_with_different_shapes_matches_sequential(say):
    operands = [matmul_operands(c, i) for i, c in enumerate(MATMUL_CASES)]
    want = []
    for case, (a, b) in zip(MATMUL_CASES, operands):
        with fusenn.threads(case[6]):
            want.append(fusenn.matmul(a, b, case[4], case[5]))
    for (a, b), case, w in zip(operands, MATMUL_CASES, want):
        np.testing.assert_allclose(w, (a.T if case[4] else a) @ (b.T if case[5] else b),
                                   rtol=1e-3 if case[3] == np.float32 else 1e-10,
                                   atol=1e-3 if case[3] == np.float32 else 1e-10)

    start = threading.Barrier(WORKERS)
    deadline = time.perf_counter() + 4.0

    def worker(w):
        start.wait()
        calls, bad = 0, []
        order = np.random.default_rng(w).permutation(len(MATMUL_CASES) * 3) % len(MATMUL_CASES)
        while time.perf_counter() < deadline or calls < len(order):
            i = int(order[calls % len(order)])
            case = MATMUL_CASES[i]
            a, b = operands[i]
            with fusenn.threads(case[6]):
                c = fusenn.matmul(a, b, case[4], case[5])
            if not np.array_equal(c, want[i]):
                bad.append((w, calls, case[:3], np.dtype(case[3]).name))
            calls += 1
        return calls, bad

    with NumpyNoise(n_threads=1) as noise, ThreadPoolExecutor(max_workers=WORKERS) as pool:
        results = list(pool.map(worker, range(WORKERS), timeout=120))
    total = sum(r[0] for r in results)
    bad = [b for r in results for b in r[1]]
    say(f"\nconcurrency: {total} fusenn.matmul calls from {WORKERS} threads "
        f"({noise.count} NumPy matmuls alongside), {len(bad)} differed from sequential")
    assert not bad, f"{len(bad)} concurrent matmul results differ, e.g. {bad[:5]}"


def scenario_threads_context_is_per_thread_under_concurrency(say):
    """fusenn.threads(n) in one Python thread never leaks into another."""
    seen = collections.defaultdict(set)
    start = threading.Barrier(WORKERS)

    def worker(n):
        with fusenn.threads(n):
            start.wait()
            for _ in range(200):
                seen[n].add(fusenn.get_num_threads())
                fusenn.matmul(np.ones((8, 8)), np.ones((8, 8)))
        return fusenn.get_num_threads()

    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        after = list(pool.map(worker, range(1, WORKERS + 1)))
    assert all(seen[n] == {n} for n in range(1, WORKERS + 1)), dict(seen)
    assert len(set(after)) == 1  # every thread back to the global default


# ---- one model, two threads ---------------------------------------------------------------------

CLEAR_WORDS = ("thread", "in use", "concurrent", "busy", "another")


def acceptable_error(exc):
    return isinstance(exc, (ValueError, RuntimeError)) and any(
        w in str(exc).lower() for w in CLEAR_WORDS)


def one_model_job(backend):
    return JOBS[0]._replace(epochs=2, backend=backend, threads=1)


def snapshot_after(job, calls):
    """Weights after running `calls` (names) in order on a fresh model."""
    model = make_model(job)
    for call in calls:
        call(model)
    return model.get_weights()


def equal_weights(a, b):
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def two_thread_trial(job, call_a, call_b):
    """Run call_a and call_b on one model from two threads released together.
    Returns (outcome of a, outcome of b, final weights)."""
    model = make_model(job)
    start = threading.Barrier(2)
    outcomes = [None, None]

    def run(i, call):
        start.wait()
        try:
            call(model)
            outcomes[i] = "ok"
        except Exception as exc:  # judged by the caller
            outcomes[i] = exc

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate((call_a, call_b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
        assert not t.is_alive(), "a call hung"
    return outcomes[0], outcomes[1], model.get_weights()


def describe(outcome):
    return "ok" if outcome == "ok" else f"{type(outcome).__name__}: {outcome}"


def scenario_one_model_fit_from_two_threads(say, backend):
    """Two fits of one model at once, on different data. Accepted: final weights
    equal to fit A then B, B then A, or (when one call was refused with a clear
    ValueError/RuntimeError) the other fit alone."""
    job = one_model_job(backend)
    X, y, _ = make_data(job)
    Xb, yb, _ = make_data(job._replace(seed=9))

    def fit_a(m):
        m.fit(X, y, epochs=job.epochs, batch_size=job.batch, verbose=0)

    def fit_b(m):
        m.fit(Xb, yb, epochs=job.epochs, batch_size=job.batch, verbose=0)

    orders = {"A then B": snapshot_after(job, [fit_a, fit_b]),
              "B then A": snapshot_after(job, [fit_b, fit_a]),
              "A only": snapshot_after(job, [fit_a]),
              "B only": snapshot_after(job, [fit_b])}
    seen = collections.Counter()
    problems = []
    for trial in range(6):
        a, b, weights = two_thread_trial(job, fit_a, fit_b)
        matches = [name for name, w in orders.items() if equal_weights(weights, w)]
        seen[(describe(a)[:90], describe(b)[:90], matches[0] if matches else "no order")] += 1
        for name, outcome in (("A", a), ("B", b)):
            if outcome != "ok" and not acceptable_error(outcome):
                problems.append(f"trial {trial}: fit {name} raised {describe(outcome)}")
        allowed = {("ok", "ok"): ("A then B", "B then A"), ("ok", "err"): ("A only",),
                   ("err", "ok"): ("B only",), ("err", "err"): ()}[
            ("ok" if a == "ok" else "err", "ok" if b == "ok" else "err")]
        if not any(m in allowed for m in matches):
            problems.append(f"trial {trial}: outcomes ({describe(a)}; {describe(b)}) but the "
                            f"final weights match {matches or 'no sequential order'}")
    say(f"\none model, fit from two threads ({backend} backend), 6 trials: " + "; ".join(
        f"{n}x [A: {a} | B: {b} | weights: {m}]" for (a, b, m), n in seen.items()))
    assert not problems, "\n".join(problems)


def scenario_one_model_predict_while_training_from_another_thread(say, backend):
    """predict in one thread while the other fits: predict returns the outputs of
    the weights before or after the fit (bitwise), or is refused clearly; the fit's
    result is the fit alone (predict must not disturb it)."""
    job = one_model_job(backend)
    X, y, X_test = make_data(job)

    def fit(m):
        m.fit(X, y, epochs=job.epochs, batch_size=job.batch, verbose=0)

    before = make_model(job).predict(X_test)
    trained = make_model(job)
    fit(trained)
    after = trained.predict(X_test)
    fit_alone = trained.get_weights()

    seen = collections.Counter()
    problems = []
    for trial in range(6):
        preds = []

        def predict_many(m):
            for _ in range(20):
                preds.append(m.predict(X_test))

        a, b, weights = two_thread_trial(job, fit, predict_many)
        for name, outcome in (("fit", a), ("predict", b)):
            if outcome != "ok" and not acceptable_error(outcome):
                problems.append(f"trial {trial}: {name} raised {describe(outcome)}")
        mixed = sum(not (np.array_equal(p, before) or np.array_equal(p, after)) for p in preds)
        if mixed:
            problems.append(f"trial {trial}: {mixed} of {len(preds)} predictions match neither "
                            f"the weights before nor after the fit")
        if a == "ok" and not equal_weights(weights, fit_alone):
            problems.append(f"trial {trial}: the fit's weights differ from the fit alone")
        seen[(describe(a)[:80], describe(b)[:80], f"{len(preds)} predictions, {mixed} mixed")] += 1
    say(f"\none model, predict during fit ({backend} backend), 6 trials: " + "; ".join(
        f"{n}x [fit: {a} | predict: {b} | {p}]" for (a, b, p), n in seen.items()))
    assert not problems, "\n".join(problems)


def scenario_one_model_predict_from_two_threads(say):
    """Inference only (no training): two threads predicting on one model must both
    get the sequential result, or one is refused with a clear error."""
    job = one_model_job("c")
    _, _, X_test = make_data(job)
    model = make_model(job)
    want = model.predict(X_test)
    results = {"same": 0, "refused": 0, "different": 0}
    errors = []
    start = threading.Barrier(2)

    def worker():
        start.wait()
        for _ in range(50):
            try:
                p = model.predict(X_test)
            except Exception as exc:
                if acceptable_error(exc):
                    results["refused"] += 1
                else:
                    errors.append(describe(exc))
                continue
            results["same" if np.array_equal(p, want) else "different"] += 1

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    say(f"\none model, predict from two threads: {results}")
    assert not errors, errors[:3]
    assert results["different"] == 0


# ---- running the scenarios in child processes --------------------------------------------

def child_main(name, args):
    """Run scenario `name`; print one RESULT line: its messages and any failure."""
    lines = []
    try:
        globals()[name](lines.append, *args)
        failure = None
    except AssertionError as exc:
        failure = f"AssertionError: {exc}"
    except Exception as exc:  # reported as a failure of the scenario
        import traceback
        failure = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=8)}"
    sys.stdout.flush()
    print("RESULT " + json.dumps({"lines": lines, "failure": failure}), flush=True)


def run_scenario(name, *args, timeout=240):
    env = dict(os.environ, SKBUILD_EDITABLE_VERBOSE="0")
    try:
        proc = subprocess.run([sys.executable, __file__, name, *args], env=env,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{name}{list(args)} hung (> {timeout} s); output tail:\n"
                    f"{(exc.stdout or '')[-2000:]}{(exc.stderr or '')[-2000:]}")
    results = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not results:
        how = (f"signal {-proc.returncode}" if proc.returncode < 0
               else f"exit status {proc.returncode}")
        pytest.fail(f"{name}{list(args)} crashed the child process ({how}); output tail:\n"
                    f"{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return json.loads(results[-1][len("RESULT "):])



def check_scenario(say, name, *args):
    result = run_scenario(name, *args)
    for line in result["lines"]:
        say(line)
    assert result["failure"] is None, result["failure"]


def test_different_models_in_threads_match_sequential_runs(say):
    check_scenario(say, "scenario_different_models_in_threads_match_sequential_runs")


def test_same_architecture_models_in_threads_are_independent(say):
    check_scenario(say, "scenario_same_architecture_models_in_threads_are_independent")


def test_concurrent_matmul_with_different_shapes_matches_sequential(say):
    check_scenario(say, "scenario_concurrent_matmul_with_different_shapes_matches_sequential")


def test_threads_context_is_per_thread_under_concurrency(say):
    check_scenario(say, "scenario_threads_context_is_per_thread_under_concurrency")


@pytest.mark.parametrize("backend", ["c", "numpy"])
def test_one_model_fit_from_two_threads(backend, say):
    """See scenario_one_model_fit_from_two_threads."""
    check_scenario(say, "scenario_one_model_fit_from_two_threads", backend)


@pytest.mark.parametrize("backend", ["c", "numpy"])
def test_one_model_predict_while_training_from_another_thread(backend, say):
    """See scenario_one_model_predict_while_training_from_another_thread."""
    check_scenario(say, "scenario_one_model_predict_while_training_from_another_thread", backend)


def test_one_model_predict_from_two_threads(say):
    check_scenario(say, "scenario_one_model_predict_from_two_threads")


if __name__ == "__main__":
    child_main(sys.argv[1], sys.argv[2:])
