"""Thread-count control, the OpenMP build, and fork safety."""

import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import fusenn


def test_release_builds_have_openmp():
    # CI builds exactly what users get from `pip install .`: it must be parallel.
    if os.environ.get("CI") and not fusenn.has_openmp():
        pytest.fail("built without OpenMP: the kernels run on one thread")


def test_gemm_isa_is_reported():
    assert fusenn.gemm_isa() in ("generic", "avx2", "avx512")


def test_set_and_get_num_threads():
    before = fusenn.get_num_threads()
    try:
        fusenn.set_num_threads(3)
        assert fusenn.get_num_threads() == 3
    finally:
        fusenn.set_num_threads(None)  # back to the default
    assert fusenn.get_num_threads() == before


@pytest.mark.parametrize("files, want", [
    ({"cpu.max": "150000 100000\n"}, 2),
    ({"cpu.max": "max 100000\n"}, None),
    ({"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 3),
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
    ({}, None),
])
def test_cgroup_cpu_quota_is_read(files, want, tmp_path, monkeypatch):
    from fusenn import _threads
    real_open = open

    def fake_open(path, *args, **kwargs):
        if str(path).startswith("/sys/fs/cgroup/"):
            rel = str(path)[len("/sys/fs/cgroup/"):]
            if rel not in files:
                raise FileNotFoundError(path)
            target = tmp_path / rel.replace("/", "_")
            target.write_text(files[rel])
            return real_open(target, *args, **kwargs)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", fake_open)
    assert _threads._cgroup_cpus() == want


def test_default_follows_openmp_and_threadpoolctl():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    if not fusenn.has_openmp():
        pytest.skip("built without OpenMP")
    default = fusenn.get_num_threads()
    cap = fusenn._threads._CGROUP_CPUS
    assert default == min(fusenn._kernels.omp_max_threads(), cap or 1024)
    with threadpoolctl.threadpool_limits(1):
        assert fusenn.get_num_threads() == 1
        with fusenn.threads(2):  # an explicit count wins
            assert fusenn.get_num_threads() == 2
    with threadpoolctl.threadpool_limits(1, user_api="openmp"):
        assert fusenn.get_num_threads() == 1
    assert fusenn.get_num_threads() == default
    fusenn.set_num_threads(3)
    try:
        with threadpoolctl.threadpool_limits(1):
            assert fusenn.get_num_threads() == 3
    finally:
        fusenn.set_num_threads(None)


@pytest.mark.parametrize("bad, error", [(0, ValueError), (-2, ValueError), (1.5, TypeError),
                                        (True, TypeError), ("2", TypeError)])
def test_bad_thread_counts_are_refused(bad, error):
    with pytest.raises(error, match="number of threads"):
        fusenn.set_num_threads(bad)
    with pytest.raises(error, match="number of threads"):
        with fusenn.threads(bad):
            pass


def test_threads_context_restores_and_is_per_python_thread():
    outer = fusenn.get_num_threads()
    seen_elsewhere = []
    with fusenn.threads(1):
        assert fusenn.get_num_threads() == 1
        t = threading.Thread(target=lambda: seen_elsewhere.append(fusenn.get_num_threads()))
        t.start()
        t.join()
        with fusenn.threads(2):
            assert fusenn.get_num_threads() == 2
        assert fusenn.get_num_threads() == 1
    assert fusenn.get_num_threads() == outer
    assert seen_elsewhere == [outer]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_trains_after_parent_ran_parallel_regions():
    # GNU libgomp hangs in a child forked after a parallel region; fusenn's
    # at-fork handler makes the child run serially instead.
    rng = np.random.default_rng(0)
    X = rng.random((512, 300), dtype=np.float32)
    y = rng.integers(0, 10, 512)

    def model():
        m = fusenn.Sequential([fusenn.Dense(256, activation="relu"), fusenn.Dense(10, activation="softmax")],
                              input_dim=300, seed=0)
        m.compile("cross_entropy", fusenn.SGD(lr=0.01))
        return m

    with fusenn.threads(2):
        model().fit(X, y, epochs=1, batch_size=256, verbose=0)  # parallel regions in the parent
        expected = model().predict(X)
        pid = os.fork()
        if pid == 0:  # child: must neither hang nor differ
            code = 1
            try:
                m = model()
                m.fit(X, y, epochs=1, batch_size=256, verbose=0)
                ok = fusenn.get_num_threads() == 1 and np.array_equal(model().predict(X), expected)
                code = 0 if ok else 1
            finally:
                os._exit(code)
    deadline_s = 60
    for _ in range(deadline_s * 10):
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        threading.Event().wait(0.1)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    pytest.fail("the forked child hung in a fusenn kernel")


# ---- libgomp's idle spin (fusenn/_openmp_env.py) ----------------------------------------

def _python(code, **env):
    """Run `code` in a fresh interpreter whose environment has neither OMP_WAIT_POLICY nor
    GOMP_SPINCOUNT, plus `env`; returns the last line it printed."""
    full = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    full.update(env)
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=full, check=True,
                         capture_output=True, text=True, timeout=120).stdout
    return out.strip().splitlines()[-1]


def test_spin_count_is_set_only_while_the_extension_loads():
    code = """
        import os, subprocess, sys
        import fusenn
        child = subprocess.run([sys.executable, "-c",
                                "import os; print(os.environ.get('GOMP_SPINCOUNT'))"],
                               capture_output=True, text=True, check=True).stdout.strip()
        print(os.environ.get("GOMP_SPINCOUNT"), child)
    """
    assert _python(code) == "None None"  # not left in os.environ, nor passed to a child


@pytest.mark.parametrize("env", [{"GOMP_SPINCOUNT": "12345"}, {"OMP_WAIT_POLICY": "passive"},
                                 {"OMP_WAIT_POLICY": "active", "GOMP_SPINCOUNT": "7"}])
def test_the_users_wait_setting_is_left_alone(env):
    from fusenn._openmp_env import bounded_spin
    environ = dict(env)
    with bounded_spin(environ):
        assert environ == env
    assert environ == env
    code = "import os, fusenn; print(os.environ.get('GOMP_SPINCOUNT'))"
    assert _python(code, **env) == str(env.get("GOMP_SPINCOUNT"))


def test_bounded_spin_sets_and_removes_the_count():
    from fusenn._openmp_env import SPIN_COUNT, bounded_spin
    environ = {"PATH": "/bin"}
    with bounded_spin(environ):
        assert environ == {"PATH": "/bin", "GOMP_SPINCOUNT": str(SPIN_COUNT)}
    assert environ == {"PATH": "/bin"}


# Process CPU time while the main thread sleeps 20 ms right after a 2-thread region: the
# helper thread's idle spin (the median of 9 such sleeps, in ms).
_SPIN_CPU = """
    import time
    import numpy as np
    import fusenn
    X, W = np.ones((512, 784), np.float32), np.ones((784, 256), np.float32)
    cpu = []
    with fusenn.threads(2):
        for _ in range(10):
            time.sleep(0.03)
            fusenn.matmul(X, W)
            start = time.process_time()
            time.sleep(0.02)
            cpu.append(time.process_time() - start)
    print(1e3 * float(np.median(cpu[1:])))
"""


@pytest.mark.skipif(not fusenn.has_openmp(), reason="built without OpenMP")
def test_idle_helper_threads_sleep_soon_after_a_region():
    # libgomp's default spins ~4 ms of CPU after each region here (Intel Xeon); the
    # bounded count ~0.04 ms. OMP_WAIT_POLICY=active (spin forever) shows the check bites.
    assert float(_python(_SPIN_CPU)) < 1.5
    assert float(_python(_SPIN_CPU, OMP_WAIT_POLICY="active")) > 3.0


# ---- pieces handed out dynamically: each done exactly once, whoever does it ---------------

@pytest.mark.parametrize("nthreads", [2, 3, 4, 7])
@pytest.mark.parametrize("length", [32768, 32771, 100_003])
def test_every_piece_of_a_parallel_loop_runs_exactly_once(length, nthreads):
    # An SGD step counts its non-finite results (a sum over the pieces) and updates w and v
    # in place: a piece skipped or done twice changes the count, or w and v.
    rng = np.random.default_rng(length)
    w0 = rng.standard_normal(length).astype(np.float32)
    g = rng.standard_normal(length).astype(np.float32)
    v0 = rng.standard_normal(length).astype(np.float32)
    results = {}
    for nt in (1, nthreads):
        w, v = w0.copy(), v0.copy()
        with fusenn.threads(nt):
            assert fusenn.ops.sgd_update(w, g, v, lr=0.5, momentum=0.9) == 0
            bad = np.full(length, np.inf, np.float32)
            assert fusenn.ops.sgd_update(np.zeros(length, np.float32), bad, None, lr=1.0) == length
        results[nt] = w, v
    for ref, got in zip(results[1], results[nthreads]):
        assert np.array_equal(ref, got)


@pytest.mark.parametrize("nthreads", [2, 3, 4])
@pytest.mark.parametrize("m, k, n, trans_a", [
    (128, 784, 256, False),   # column slabs, fewer panels than 2 per thread
    (128, 300, 2000, False),  # column slabs, many panels
    (784, 128, 256, True),    # row slabs: A transposed
    (2050, 64, 96, False),    # row slabs: C much taller than wide
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_gemm_slab_runs_exactly_once(m, k, n, trans_a, nthreads, dtype):
    # C += A B: a slab skipped leaves its part of C as it was, one done twice adds twice.
    rng = np.random.default_rng(m + n)
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(dtype)
    a = a.T if trans_a else a
    b = rng.standard_normal((k, n)).astype(dtype)
    c0 = rng.standard_normal((m, n)).astype(dtype)
    results = []
    for nt in (1, nthreads):
        c = c0.copy()
        fusenn._kernels.gemm(1.0, a, b, 1.0, c, nt)
        results.append(c)
    assert np.array_equal(results[0], results[1])
    np.testing.assert_allclose(results[0], a.astype(np.float64) @ b + c0,
                               rtol=1e-4 if dtype == np.float32 else 1e-10, atol=1e-3)


# ---- stepping aside while helpers wait for a CPU --------------------------------------------

def _late_region(waited_ms, worked_ms=0.2):
    """Report a region whose caller worked worked_ms and then waited waited_ms for a helper."""
    now = fusenn._kernels.clock_ns()
    fusenn._kernels.region_waited(now - int((worked_ms + waited_ms) * 1e6),
                                  now - int(waited_ms * 1e6))


def _alone_for_ms():
    """How long, from now, parallel loops run on their caller alone (0.5 ms steps)."""
    start = time.perf_counter()
    while fusenn._kernels.team_size(2) == 1:
        time.sleep(0.0005)
    return (time.perf_counter() - start) * 1e3


def test_loops_run_alone_for_a_while_after_a_helper_kept_its_caller_waiting():
    team = fusenn._kernels.team_size
    time.sleep(0.1)  # past any while (at most 50 ms) left by earlier tests
    assert team(1) == 1 and team(2) == 2 and team(5) == 5
    # Waits that are not a helper without a CPU. Being descheduled between the report and
    # the engine's clock adds to the wait, so each gets a few tries on a loaded machine.
    for waited_ms, worked_ms in ((0.1, 0.0), (3.0, 50.0)):  # short; shorter than the work
        for _ in range(5):
            time.sleep(0.06)
            _late_region(waited_ms, worked_ms)
            if team(2) == 2:
                break
        else:
            pytest.fail(f"a wait of {waited_ms} ms after {worked_ms} ms of work counted as late")
    time.sleep(0.06)
    _late_region(waited_ms=3.0)  # a helper without a CPU: alone for 4 ms
    assert team(2) == 1 and team(1) == 1
    first = _alone_for_ms()
    assert 1.0 < first < 60.0  # 4 ms, with room for a slow scheduler
    assert team(4) == 4
    _late_region(waited_ms=3.0)  # late again within a while of the last one: twice as long
    assert _alone_for_ms() > 6.0
    # helpers on time for longer than any while: back to 4 ms (a few tries: the polling
    # sleeps may overshoot on a loaded machine)
    for _ in range(5):
        time.sleep(0.1)
        _late_region(waited_ms=3.0)
        if _alone_for_ms() < 7.0:
            break
    else:
        pytest.fail("the while did not go back to 4 ms after helpers were on time")


@pytest.mark.parametrize("batch", [100, 256])
def test_a_step_taken_alone_gives_the_bits_of_a_step_with_helpers(batch):
    # batch 100: alone, the 300 -> 256 layer's forward GEMM takes the one-thread tile that
    # reads the weights in place (17-128 rows, 128 or more columns), not the two-thread one
    rng = np.random.default_rng(0)
    X = rng.standard_normal((batch, 300)).astype(np.float32)
    y = rng.integers(0, 10, batch)
    weights = []
    for alone in (False, True):
        model = fusenn.Sequential([fusenn.Dense(256, "relu"), fusenn.Dense(10, "softmax")],
                                  input_dim=300, seed=1)
        model.compile("cross_entropy", "adam")
        with fusenn.threads(2):
            for _ in range(3):
                time.sleep(0.06)  # past any while
                if alone:
                    _late_region(waited_ms=3.0)
                assert fusenn._kernels.team_size(2) == (1 if alone else 2)
                model.train_on_batch(X, y)
        weights.append(model.get_weights())
    for a, b in zip(*weights):
        assert np.array_equal(a, b)
