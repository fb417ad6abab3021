"""Hyperparameter searches over fusenn.sklearn's estimators in parallel: joblib's
loky, threading and dask backends give the scores of a sequential search (the
bits do not depend on thread counts), and a fit in a worker takes its share of
the cores (fusenn.distributed.worker_threads): workers x threads <= cores."""

import os

import numpy as np
import pytest

pytest.importorskip("sklearn")
joblib = pytest.importorskip("joblib")

from sklearn.model_selection import GridSearchCV  # noqa: E402

import fusenn  # noqa: E402
from fusenn.distributed import worker_threads  # noqa: E402
from fusenn.sklearn import MLPClassifier  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

GRID = {"alpha": [1e-4, 1e-2], "hidden_layer_sizes": [(8,), (12,)]}


def data():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((90, 6)).astype(np.float32)
    return X, (X[:, 0] + 0.5 * X[:, 1] > 0).astype(int) + (X[:, 2] > 1)


def search(n_jobs):
    X, y = data()
    estimator = MLPClassifier(max_iter=5, batch_size=16, random_state=0)
    grid = GridSearchCV(estimator, GRID, cv=3, n_jobs=n_jobs).fit(X, y)
    return grid.cv_results_["mean_test_score"], grid.best_estimator_.predict_proba(X)


@pytest.fixture(scope="module")
def sequential():
    return search(None)


def fused_threads():
    """The kernel threads a fit in this worker would run on."""
    threads = worker_threads()
    return (threads if threads is not None else fusenn.get_num_threads()), \
        os.environ.get("OMP_NUM_THREADS")


def assert_shares_the_cores(probes, workers):
    cores = fusenn.get_num_threads()
    for threads, _ in probes:
        assert threads * min(workers, cores) <= max(cores, workers), (probes, cores)


@pytest.mark.parametrize("backend", ["loky", "threading"])
def test_joblib_backends(backend, sequential):
    with joblib.parallel_backend(backend):
        scores, proba = search(2)
    np.testing.assert_array_equal(scores, sequential[0])
    np.testing.assert_array_equal(proba, sequential[1])
    probes = joblib.Parallel(n_jobs=2, backend=backend)(
        joblib.delayed(fused_threads)() for _ in range(2))
    assert_shares_the_cores(probes, 2)


def test_outside_workers_fusenn_decides():
    assert worker_threads() is None or os.environ.get("OMP_NUM_THREADS") is None


@pytest.mark.parametrize("cluster", [dict(processes=False, n_workers=1, threads_per_worker=2),
                                     dict(n_workers=2, threads_per_worker=1)],
                         ids=["threads", "processes"])
def test_dask_backend(cluster, sequential):
    distributed = pytest.importorskip("distributed")
    with distributed.Client(dashboard_address=None, **cluster) as client:
        with joblib.parallel_backend("dask"):
            scores, proba = search(2)
            probes = joblib.Parallel(n_jobs=2)(joblib.delayed(fused_threads)() for _ in range(2))
        client.shutdown()
    np.testing.assert_array_equal(scores, sequential[0])
    np.testing.assert_array_equal(proba, sequential[1])
    assert_shares_the_cores(probes, 2)
