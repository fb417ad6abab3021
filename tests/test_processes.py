"""fusenn across processes: forked workers and a saver killed mid-write.

GNU libgomp hangs in a child forked after a parallel region ran in the parent;
fusenn's at-fork handler makes forked children run single-threaded. Every
parallel piece here runs under a timeout so a hang fails the test, not CI.
"""

import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import fusenn

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")

TIMEOUT = 60


def _data():
    rng = np.random.default_rng(0)
    return rng.random((512, 300), dtype=np.float32), rng.integers(0, 10, 512)


def _model():
    model = fusenn.Sequential([fusenn.Dense(256, activation="relu"),
                               fusenn.Dense(10, activation="softmax")], input_dim=300, seed=0)
    model.compile("cross_entropy", fusenn.SGD(lr=0.01, momentum=0.9))
    return model


def train_and_predict(_):
    """In a worker: train a fresh model, return its predictions and thread count."""
    X, y = _data()
    model = _model()
    model.fit(X, y, epochs=2, batch_size=128, verbose=0)
    return model.predict(X), fusenn.get_num_threads()


@pytest.fixture
def parent_ran_parallel_regions():
    """Train in the parent on 2 threads first, then return the expected result."""
    with fusenn.threads(2):
        expected, _ = train_and_predict(None)
        yield expected


def test_multiprocessing_fork_pool(parent_ran_parallel_regions):
    expected = parent_ran_parallel_regions
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(2) as pool:
        results = pool.map_async(train_and_predict, range(2)).get(timeout=TIMEOUT)
    for predictions, threads in results:
        assert threads == 1
        np.testing.assert_array_equal(predictions, expected)  # thread count never changes bits


def test_joblib_fork_workers(parent_ran_parallel_regions):
    joblib = pytest.importorskip("joblib")
    expected = parent_ran_parallel_regions
    results = joblib.Parallel(n_jobs=2, backend="multiprocessing", timeout=TIMEOUT)(
        joblib.delayed(train_and_predict)(i) for i in range(2))
    for predictions, _ in results:
        np.testing.assert_array_equal(predictions, expected)


SAVER = textwrap.dedent("""
    import sys, numpy as np, fusenn
    path = sys.argv[1]
    model = fusenn.Sequential([fusenn.Dense(512, activation="relu"), fusenn.Dense(10)],
                              input_dim=2048, seed=0)
    model.compile("cross_entropy", fusenn.Adam())
    model.save(path)
    print("ready", flush=True)
    version = 0
    while True:  # keep rewriting the file with new weights until killed
        version += 1
        model.set_weights([np.full_like(w, version) for w in model.get_weights()])
        model.save(path)
""")


def test_a_save_killed_mid_write_never_destroys_the_file(tmp_path):
    path = tmp_path / "model.npz"
    for attempt in range(8):
        proc = subprocess.Popen([sys.executable, "-c", SAVER, str(path)], stdout=subprocess.PIPE)
        try:
            assert proc.stdout.readline().strip() == b"ready"
            time.sleep(0.05 + 0.04 * attempt)  # somewhere inside a later save (~9 MB files)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=TIMEOUT)
        model = fusenn.load(path)  # whatever version it is, it is whole
        W1 = model.get_weights()[0]
        assert W1.shape == (2048, 512)
        assert np.all(W1 == W1.flat[0]) or attempt_is_initial(model)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "model.npz"]
    assert all(name.startswith(".model.npz.") for name in leftovers)  # only temp files


def attempt_is_initial(model):
    """The first save holds the random initial weights, not a constant."""
    reference = fusenn.Sequential([fusenn.Dense(512, activation="relu"), fusenn.Dense(10)],
                                  input_dim=2048, seed=0)
    return all(np.array_equal(a, b) for a, b in zip(model.get_weights(), reference.get_weights()))
