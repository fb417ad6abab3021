"""benchmarks/distributed_epoch.py (the epoch table of docs/guide/distributed.md) on a
small epoch, every variant once, so that the script cannot rot; timing is its
own (run it directly for the table). Skipped without mpirun or mpi4py, except
on CI (CI=true), which installs both."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "distributed_epoch.py")


def test_distributed_epoch_script_runs():
    missing = [what for what, there in (("mpirun", shutil.which("mpirun")),
                                        ("mpi4py", importlib.util.find_spec("mpi4py")))
               if there is None]
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the MPI benchmark: {', '.join(missing)} missing")
        pytest.skip(f"{', '.join(missing)} missing")
    env = dict(os.environ, OMPI_MCA_mpi_yield_when_idle="1")
    out = subprocess.run([sys.executable, SCRIPT, "--rounds", "1", "--rows", "1024",
                          "--batch", "128"], capture_output=True, text=True, env=env,
                         timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    results = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(results) == {f"128|{v}" for v in ("2 ranks x 1 thread",
                                                 "2 ranks x 1 thread, TCP loopback",
                                                 "1 process x 2 threads",
                                                 "1 process x 1 thread")}
    ranks = results["128|2 ranks x 1 thread"][0]["ranks"]
    assert [r["steps"] for r in ranks] == [8, 8]
