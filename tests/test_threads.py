"""Thread-count control, the OpenMP build, and fork safety."""

import os
import threading

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
