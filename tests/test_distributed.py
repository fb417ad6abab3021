"""fusenn.distributed: training over MPI ranks gives one process's bits.

Each rank count runs tests/distributed_program.py once (under `mpirun -n 2`,
`mpirun -n 4 --oversubscribe`, and alone as one rank), every case comparing
the distributed fit, evaluate and predict with one process's on every rank.
Without mpirun or mpi4py the MPI runs are skipped, except on CI (CI=true),
which installs both and must run them.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import fusenn
import fusenn.distributed as dist

HERE = os.path.dirname(os.path.abspath(__file__))
PROGRAM = os.path.join(HERE, "distributed_program.py")
ON_CI = os.environ.get("CI") == "true"
with open(PROGRAM) as f:  # the program's cases, by name (it imports MPI: not imported here)
    CASES = [line[len("def case_"):line.index("(")] for line in f if line.startswith("def case_")]


def _mpi_missing():
    """Why the MPI runs cannot happen here, or None."""
    if shutil.which("mpirun") is None:
        return "mpirun not found (Debian: apt-get install openmpi-bin libopenmpi-dev)"
    if importlib.util.find_spec("mpi4py") is None:
        return "mpi4py not installed (pip install 'fusenn[mpi]')"
    return None


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", OMPI_ALLOW_RUN_AS_ROOT="1",
               OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", RUN_ID=str(os.getpid()),
               OMPI_MCA_mpi_yield_when_idle="1")  # ranks may share cores
    env.pop("CI", None)
    return env


def _run(command):
    result = subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=600)
    lines = result.stdout.strip().splitlines()
    assert result.returncode == 0 and lines, \
        f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return json.loads(lines[-1])


_results = {}


def results(ranks):
    """{case: outcome} of the program on `ranks` ranks (0: alone, no mpirun)."""
    if ranks not in _results:
        if ranks == 0:
            command = [sys.executable, PROGRAM]
        else:
            missing = _mpi_missing()
            if missing:
                if ON_CI:
                    pytest.fail(f"CI must run the MPI tests: {missing}")
                pytest.skip(missing)
            command = ["mpirun", "-n", str(ranks), *(["--oversubscribe"] if ranks > 2 else []),
                       sys.executable, PROGRAM]
        out = _run(command)
        assert out["size"] == max(ranks, 1)
        _results[ranks] = out["results"]
    return _results[ranks]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("ranks", [0, 2, 4])
def test_distributed_is_one_process(ranks, case):
    outcome = results(ranks)[case]
    if outcome.startswith("skip: "):
        pytest.skip(outcome[6:])
    assert outcome == "ok", outcome


# ---- without MPI ------------------------------------------------------------------------

def test_one_rank_without_mpi_in_process(monkeypatch):
    """One rank without MPI (as without mpi4py: MPI is not started in the test
    process): fit is model.fit with batch_chunks."""
    monkeypatch.setattr(dist, "_world", False)
    assert dist.rank() == 0 and dist.size() == 1
    dist.barrier()
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((50, 6)).astype(np.float32), rng.integers(0, 3, 50)

    def make():
        model = fusenn.Sequential([fusenn.Dense(8, "relu"), fusenn.BatchNorm(),
                                   fusenn.Dense(3, "softmax")], input_dim=6, seed=0)
        model.compile("cross_entropy", "adam")
        return model

    for chunks in (None, 3):
        a, b = make(), make()
        dist.fit(a, X, y, epochs=2, batch_size=16, verbose=0, batch_chunks=chunks)
        b.fit(X, y, epochs=2, batch_size=16, verbose=0, batch_chunks=chunks or 1)
        for wa, wb in zip(a.get_weights(), b.get_weights()):
            np.testing.assert_array_equal(wa, wb)
    assert dist.stats()["steps"] == 8


def test_op_by_op_models_are_refused(monkeypatch):
    monkeypatch.setattr(dist, "_world", False)
    model = fusenn.Sequential([fusenn.Dense(3, "softmax")], input_dim=4, backend="numpy")
    model.compile("cross_entropy", "sgd")
    with pytest.raises(ValueError, match="needs the C engine"):
        dist.fit(model, np.zeros((4, 4), np.float32), np.zeros(4, np.int64), verbose=0)


_NO_MPI4PY = ("import sys; sys.modules['mpi4py'] = None\n"
              "import numpy as np, fusenn, fusenn.distributed as dist\n")


def test_without_mpi4py_outside_mpirun_one_rank():
    code = _NO_MPI4PY + (
        "m = fusenn.Sequential([fusenn.Dense(2, 'softmax')], input_dim=3, seed=0)\n"
        "m.compile('cross_entropy', 'sgd')\n"
        "dist.fit(m, np.ones((4, 3), np.float32), np.array([0, 1, 0, 1]), verbose=0)\n"
        "print(dist.rank(), dist.size())\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "PMI"))}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0 and out.stdout.split() == ["0", "1"], out.stderr


def test_without_mpi4py_under_a_launcher_a_clear_error():
    code = _NO_MPI4PY + "dist.size()\n"
    env = dict(os.environ, OMPI_COMM_WORLD_SIZE="2")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode != 0 and "cannot import mpi4py" in out.stderr
    assert "pip install 'fusenn[mpi]'" in out.stderr


# ---- the example ------------------------------------------------------------------------

EXAMPLE = os.path.join(os.path.dirname(HERE), "examples", "distributed_mnist.py")


@pytest.mark.skipif(not os.path.exists(EXAMPLE), reason="examples/ is not next to tests/")
def test_example_on_two_ranks_is_one_process(tmp_path):
    """The example's weights on 2 ranks are those of one process cutting each
    batch into the same 2 chunks."""
    args = [EXAMPLE, "--data", "digits", "--epochs", "2", "--batch-size", "64", "--chunks", "2",
            "--cache", str(tmp_path)]
    outputs = [subprocess.run([sys.executable, *args], capture_output=True, text=True,
                              env=_env(), timeout=600)]
    missing = _mpi_missing()
    if missing and not ON_CI:
        pytest.skip(missing)
    assert not missing, f"CI must run the MPI tests: {missing}"
    outputs.append(subprocess.run(["mpirun", "-n", "2", sys.executable, *args],
                                  capture_output=True, text=True, env=_env(), timeout=600))
    digests = []
    for out in outputs:
        assert out.returncode == 0, out.stdout + out.stderr
        assert "weights identical on every rank: True" in out.stdout
        assert float(out.stdout.split("test accuracy: ")[1]) > 0.8
        digests.append(out.stdout.split("weights digest: ")[1].split()[0])
    assert digests[0] == digests[1]
