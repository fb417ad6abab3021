"""fusenn.sklearn: scikit-learn's estimator checks, and the estimators in scikit-learn's tools."""

import os
import pickle
import subprocess
import sys
import warnings

import numpy as np
import pytest

# check_array_api_input runs only when SciPy's array API support is on, which
# must be set before SciPy is first imported.
os.environ.setdefault("SCIPY_ARRAY_API", "1")
sklearn = pytest.importorskip("sklearn")

from sklearn.datasets import (load_iris, make_multilabel_classification,  # noqa: E402
                              make_regression)
from sklearn.exceptions import ConvergenceWarning, NotFittedError  # noqa: E402
from sklearn.model_selection import GridSearchCV, cross_val_score  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402
from scipy.special import xlogy  # noqa: E402

import fusenn  # noqa: E402
import fusenn.sklearn  # noqa: E402
from fusenn.sklearn import MLPClassifier, MLPRegressor  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

SMALL = dict(hidden_layer_sizes=(16,), max_iter=100, learning_rate_init=0.01)


# dtype=None: the checks' float64 data train float64 networks, which pass
# check_sample_weight_equivalence_on_dense_data (rtol=1e-7) with no expected failure.
# One check ignores the positive_only tag and hands loss="poisson" negative y.
POISSON_XFAIL = {"check_regressor_multioutput": "negative y, which loss='poisson' refuses"}


@parametrize_with_checks(
    [MLPClassifier(**SMALL), MLPRegressor(**SMALL), MLPClassifier(solver="lbfgs", **SMALL),
     MLPRegressor(solver="lbfgs", loss="poisson", **SMALL)],
    expected_failed_checks=lambda est: POISSON_XFAIL if getattr(est, "loss", "") == "poisson"
    else {})
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


@pytest.mark.parametrize("estimator", [MLPClassifier(**SMALL, dtype="float64"),
                                       MLPRegressor(**SMALL, dtype="float64", solver="sgd")],
                         ids=["classifier-adam", "regressor-sgd"])
def test_sample_weight_equivalence_in_float64(estimator):
    from sklearn.utils.estimator_checks import check_sample_weight_equivalence_on_dense_data
    check_sample_weight_equivalence_on_dense_data(type(estimator).__name__, estimator)


@pytest.fixture(scope="module")
def iris():
    X, y = load_iris(return_X_y=True)
    return StandardScaler().fit_transform(X), y


def _numpy_forward(est, X):
    """The network's outputs computed in NumPy from coefs_ / intercepts_."""
    act = {"relu": lambda z: np.maximum(z, 0), "tanh": np.tanh, "identity": lambda z: z,
           "logistic": lambda z: 1 / (1 + np.exp(-z))}[est.activation]
    a = np.asarray(X, dtype=np.float64)
    for i, (W, b) in enumerate(zip(est.coefs_, est.intercepts_)):
        z = a @ W.astype(np.float64) + b
        a = act(z) if i < len(est.coefs_) - 1 else z
    if est.out_activation_ == "softmax":
        e = np.exp(a - a.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    if est.out_activation_ == "logistic":
        return 1 / (1 + np.exp(-a))
    return a


# ---- classification ----------------------------------------------------------------


def test_multiclass_string_labels(iris):
    X, y = iris
    names = np.array(["setosa", "versicolor", "virginica"])[y]
    clf = MLPClassifier(hidden_layer_sizes=(20,), max_iter=200, learning_rate_init=0.01,
                        random_state=0).fit(X, names)
    assert list(clf.classes_) == ["setosa", "versicolor", "virginica"]
    assert clf.n_features_in_ == 4 and clf.n_outputs_ == 3 and clf.out_activation_ == "softmax"
    assert clf.score(X, names) > 0.9
    P = clf.predict_proba(X)
    assert P.shape == (150, 3) and P.dtype == np.float64
    np.testing.assert_allclose(P.sum(axis=1), 1, rtol=1e-6)
    np.testing.assert_array_equal(clf.predict(X), clf.classes_[P.argmax(axis=1)])
    np.testing.assert_allclose(clf.predict_log_proba(X), np.log(P))
    # coefs_ / intercepts_ are what predict uses
    assert [W.shape for W in clf.coefs_] == [(4, 20), (20, 3)]
    np.testing.assert_allclose(P, _numpy_forward(clf, X), rtol=1e-4, atol=1e-6)


def test_binary_uses_one_sigmoid_unit(iris):
    X, y = iris
    yb = np.where(y == 2, "yes", "no")
    clf = MLPClassifier(hidden_layer_sizes=(8,), max_iter=200, learning_rate_init=0.01,
                        activation="tanh", random_state=0).fit(X, yb)
    assert clf.n_outputs_ == 1 and clf.out_activation_ == "logistic"
    assert clf.coefs_[-1].shape == (8, 1)
    P = clf.predict_proba(X)
    assert P.shape == (150, 2)
    np.testing.assert_allclose(P[:, 1], _numpy_forward(clf, X)[:, 0], rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(clf.predict(X), np.where(P[:, 1] > 0.5, "yes", "no"))
    assert clf.score(X, yb) > 0.9


def test_multilabel():
    X, Y = make_multilabel_classification(n_samples=200, n_features=10, n_classes=4,
                                          random_state=0)
    X = StandardScaler().fit_transform(X)
    clf = MLPClassifier(hidden_layer_sizes=(32,), max_iter=300, learning_rate_init=0.01,
                        random_state=0).fit(X, Y)
    np.testing.assert_array_equal(clf.classes_, np.arange(4))
    assert clf.out_activation_ == "logistic" and clf.n_outputs_ == 4
    P = clf.predict_proba(X)
    assert P.shape == (200, 4)
    pred = clf.predict(X)
    assert pred.shape == (200, 4)
    np.testing.assert_array_equal(pred, (P > 0.5).astype(int))
    assert np.mean(pred == Y) > 0.85


def test_loss_curve_is_sklearns_loss():
    """loss_curve_ holds scikit-learn's loss: binary cross-entropy summed over the
    labels (multi-label), half the mean squared error and half the Poisson
    deviance (regression)."""
    X, Y = make_multilabel_classification(n_samples=60, n_features=5, n_classes=3, random_state=1)
    X = StandardScaler().fit_transform(X)
    # one full batch and a learning rate so small that the weights do not move
    kw = dict(hidden_layer_sizes=(5,), max_iter=1, batch_size=60, learning_rate_init=1e-12,
              alpha=0.0, dtype="float64", random_state=0)
    clf = MLPClassifier(**kw).fit(X, Y)
    P = clf.predict_proba(X)
    bce = -(Y * np.log(P) + (1 - Y) * np.log(1 - P)).sum(axis=1).mean()
    np.testing.assert_allclose(clf.loss_curve_[0], bce, rtol=1e-8)
    assert clf.loss_ == clf.loss_curve_[-1]

    Xr, yr = make_regression(n_samples=60, n_features=5, n_targets=3, random_state=1)
    reg = MLPRegressor(**kw).fit(Xr, yr)
    np.testing.assert_allclose(reg.loss_curve_[0], 0.5 * np.mean((reg.predict(Xr) - yr) ** 2),
                               rtol=1e-8)
    # half the Poisson deviance, summed over the outputs, from exp outputs
    counts = np.random.default_rng(1).poisson(2.0, size=(60, 2))
    poisson = MLPRegressor(loss="poisson", **kw).fit(Xr, counts)
    mu = poisson.predict(Xr)
    assert poisson.out_activation_ == "exp"
    np.testing.assert_allclose(mu, np.exp(_numpy_forward(poisson, Xr)), rtol=1e-12)
    deviance = (xlogy(counts, counts / mu) - counts + mu).sum(axis=1).mean()
    np.testing.assert_allclose(poisson.loss_curve_[0], deviance, rtol=1e-8)

    # plus the L2 term, 0.5 * alpha * ||W||^2 / batch per batch
    kw.update(alpha=0.3, batch_size=25)  # batches of 25, 25, 10
    reg = MLPRegressor(**kw).fit(Xr, yr)
    penalty = 0.5 * 0.3 * sum((W ** 2).sum() for W in reg.coefs_) * 3 / 60
    np.testing.assert_allclose(
        reg.loss_curve_[0], 0.5 * np.mean((reg.predict(Xr) - yr) ** 2) + penalty, rtol=1e-8)


@pytest.mark.parametrize("alpha", [0.0, 0.5])
@pytest.mark.parametrize("n_targets", [1, 3])
def test_sgd_step_is_sklearns_update(alpha, n_targets):
    """One full-batch SGD step equals scikit-learn's: W -= lr * (X^T (p - y) / n + alpha W / n)."""
    X, y = make_regression(n_samples=40, n_features=6, n_targets=n_targets, random_state=2)
    y = y / y.std()
    reg = MLPRegressor(hidden_layer_sizes=(7,), activation="tanh", solver="sgd", momentum=0.0,
                       learning_rate_init=0.05, alpha=alpha, batch_size=40, max_iter=1,
                       shuffle=False, warm_start=True, dtype="float64", random_state=0)
    reg.fit(X, y)
    W = [w.copy() for w in reg.coefs_]
    b = [c.copy() for c in reg.intercepts_]
    reg.fit(X, y)  # warm start: one more epoch = one step from W, b
    n = len(X)
    h = np.tanh(X @ W[0] + b[0])
    d2 = (h @ W[1] + b[1] - y.reshape(n, -1)) / n
    d1 = (d2 @ W[1].T) * (1 - h ** 2)
    expected = [W[0] - 0.05 * (X.T @ d1 + alpha * W[0] / n),
                W[1] - 0.05 * (h.T @ d2 + alpha * W[1] / n)]
    for got, want in zip(reg.coefs_, expected):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(reg.intercepts_[1], b[1] - 0.05 * d2.sum(axis=0), rtol=1e-10,
                               atol=1e-12)


def _sklearn_has_mlp_sample_weight():
    import inspect
    from sklearn.neural_network import MLPRegressor as Reference
    return "sample_weight" in inspect.signature(Reference.fit).parameters


@pytest.mark.skipif(not _sklearn_has_mlp_sample_weight(),
                    reason="scikit-learn's MLP has sample_weight from 1.7")
@pytest.mark.parametrize("batch_size, alpha, weighted", [(20, 0.0, True), (50, 0.3, True),
                                                         (25, 0.3, False)],
                         ids=["minibatch-weighted", "fullbatch-weighted-alpha",
                              "minibatch-alpha"])
@pytest.mark.parametrize("kind", ["regressor-sgd", "multiclass-adam", "binary-sgd",
                                  "multilabel-adam"])
def test_weighted_epoch_is_sklearns(kind, batch_size, alpha, weighted):
    """One epoch (batches of 20, 20, 10 or one of 50; no shuffling) from the same
    weights gives scikit-learn's weights and loss_curve_, with sample weights
    (zeros included) and the L2 penalty where its per-batch strength is one
    number (alpha / S_b: one batch, or unweighted equal batches). Adam agrees to
    ~1e-5 only: fusenn adds epsilon to sqrt(v_hat), scikit-learn to sqrt(v)."""
    from sklearn import neural_network
    rng = np.random.default_rng(5)
    n = 50
    X = rng.normal(size=(n, 4))
    estimator, solver = kind.split("-")
    if estimator == "regressor":
        y = X @ rng.normal(size=(4, 2)) + 0.1 * rng.normal(size=(n, 2))
    elif estimator == "multilabel":
        y = (X @ rng.normal(size=(4, 3)) > 0).astype(int)
    else:
        y = np.array(["a", "b", "c"] if estimator == "multiclass" else ["no", "yes"])[
            (X[:, 0] > 0).astype(int) + (X[:, 1] > 0.5 if estimator == "multiclass" else 0)]
    sw = rng.uniform(0, 3, size=n) * (rng.random(n) > 0.2) if weighted else None
    kw = dict(hidden_layer_sizes=(5,), activation="tanh", solver=solver, alpha=alpha,
              batch_size=batch_size, learning_rate_init=0.05, momentum=0.5, max_iter=1,
              shuffle=False, warm_start=True, random_state=0)
    ours = (MLPRegressor if estimator == "regressor" else MLPClassifier)(dtype="float64", **kw)
    ours.fit(X, y, sample_weight=sw)
    start = [a.copy() for a in ours.coefs_ + ours.intercepts_]
    ours.fit(X, y, sample_weight=sw)  # warm start: one epoch from `start`, fresh optimizer
    reference = getattr(neural_network, type(ours).__name__)(**kw)
    reference.fit(X, y, sample_weight=sw)
    k = len(ours.coefs_)
    reference.coefs_, reference.intercepts_ = [a.copy() for a in start[:k]], [
        a.copy() for a in start[k:]]
    reference.fit(X, y, sample_weight=sw)
    rtol = 1e-9 if solver == "sgd" else 1e-3
    for got, want in zip(ours.coefs_ + ours.intercepts_,
                         reference.coefs_ + reference.intercepts_):
        np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * 1e-2)
    # loss_curve_ uses the weights after the epoch for the L2 term (scikit-learn
    # those before each batch's update)
    np.testing.assert_allclose(ours.loss_curve_[-1], reference.loss_curve_[-1],
                               rtol=1e-2 if alpha else 1e-12 if solver == "sgd" else 1e-5)


def test_sample_weight_semantics(iris):
    X, y = iris
    kw = dict(hidden_layer_sizes=(6,), max_iter=20, batch_size=32, learning_rate_init=0.02,
              random_state=0)
    plain = MLPClassifier(**kw).fit(X, y)
    ones = MLPClassifier(**kw).fit(X, y, sample_weight=np.ones(len(y)))
    for a, b in zip(plain.coefs_ + plain.intercepts_, ones.coefs_ + ones.intercepts_):
        np.testing.assert_array_equal(a, b)
    assert plain.loss_curve_ == ones.loss_curve_
    # a constant factor only weakens the L2 term (alpha / sum of the batch's
    # weights): each batch's loss is a weighted mean
    unpenalised = MLPClassifier(alpha=0.0, **kw).fit(X, y)
    scaled = MLPClassifier(alpha=0.0, **kw).fit(X, y, sample_weight=np.full(len(y), 7.5))
    for a, b in zip(unpenalised.coefs_, scaled.coefs_):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # weights favouring one class shift the predictions towards it
    w = np.where(y == 2, 20.0, 1.0)
    heavy = MLPClassifier(**kw).fit(X, y, sample_weight=w)
    assert heavy.predict_proba(X)[:, 2].mean() > plain.predict_proba(X)[:, 2].mean() + 0.1
    # partial_fit takes sample_weight before classes, as scikit-learn's
    part = MLPClassifier(**kw).partial_fit(X, y, w, classes=[0, 1, 2])
    assert part.n_iter_ == 1
    with pytest.raises(ValueError, match="[Nn]egative"):
        MLPClassifier(**kw).fit(X, y, sample_weight=-np.ones(len(y)))
    with pytest.raises(ValueError, match="zero"):
        MLPRegressor(**kw).fit(X, y, sample_weight=np.zeros(len(y)))
    # early stopping splits the weights with the samples and scores with them
    es = MLPRegressor(early_stopping=True, **kw).fit(X[:, :3], X[:, 3], sample_weight=w)
    assert len(es.validation_scores_) == es.n_iter_


# ---- regression -------------------------------------------------------------------------


def test_multioutput_regression():
    X, Y = make_regression(n_samples=200, n_features=6, n_targets=3, random_state=0)
    Y = Y / Y.std(axis=0)
    reg = MLPRegressor(hidden_layer_sizes=(32,), max_iter=300, learning_rate_init=0.01,
                       random_state=0).fit(X, Y)
    pred = reg.predict(X)
    assert pred.shape == (200, 3) and pred.dtype == np.float64
    assert reg.n_outputs_ == 3 and reg.out_activation_ == "identity"
    assert reg.score(X, Y) > 0.9
    np.testing.assert_allclose(pred, _numpy_forward(reg, X), rtol=1e-4, atol=1e-4)
    one = MLPRegressor(hidden_layer_sizes=(8,), max_iter=5, random_state=0).fit(X, Y[:, 0])
    assert one.predict(X).shape == (200,)


# ---- training control -----------------------------------------------------------------


def test_convergence_and_max_iter(iris):
    X, y = iris
    with pytest.warns(ConvergenceWarning, match="Maximum iterations \\(3\\)"):
        clf = MLPClassifier(hidden_layer_sizes=(4,), max_iter=3, random_state=0).fit(X, y)
    assert clf.n_iter_ == 3 and len(clf.loss_curve_) == 3
    # a tolerance no epoch can beat: stop after n_iter_no_change + 1 epochs without a warning
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        clf = MLPClassifier(hidden_layer_sizes=(4,), max_iter=100, tol=1e3, n_iter_no_change=3,
                            random_state=0).fit(X, y)
    assert clf.n_iter_ == 5
    assert clf.best_loss_ == min(clf.loss_curve_) and clf.validation_scores_ is None


def test_adaptive_learning_rate_divides_by_five(iris):
    X, y = iris
    kw = dict(hidden_layer_sizes=(4,), solver="sgd", learning_rate_init=0.1, tol=1e3,
              n_iter_no_change=2, max_iter=200, random_state=0)
    constant = MLPClassifier(**kw).fit(X, y)
    adaptive = MLPClassifier(learning_rate="adaptive", **kw).fit(X, y)
    assert constant.n_iter_ == 4
    # the first stall after 4 epochs, then every 3; 0.1 / 5**k is above 1e-6 for k <= 7:
    # eight divisions, and the ninth stall stops
    assert adaptive.n_iter_ == 4 + 8 * 3
    np.testing.assert_allclose(adaptive.model_.optimizer.lr, 0.1 / 5 ** 8)
    # invscaling: lr = learning_rate_init / (samples seen + 1) ** power_t, set per epoch
    inv = MLPClassifier(**{**kw, "learning_rate": "invscaling", "tol": 1e-4, "max_iter": 3,
                           "power_t": 0.25}).fit(X, y)
    np.testing.assert_allclose(inv.model_.optimizer.lr, 0.1 / (2 * 150 + 1) ** 0.25)


def test_early_stopping_restores_best_weights(iris):
    X, y = iris
    kw = dict(hidden_layer_sizes=(6,), early_stopping=True, validation_fraction=0.3,
              n_iter_no_change=1000, learning_rate_init=0.05, random_state=0)
    clf = MLPClassifier(max_iter=40, **kw).fit(X, y)
    scores = clf.validation_scores_
    assert len(scores) == clf.n_iter_ == 40 and len(clf.loss_curve_) == 40
    assert clf.best_validation_score_ == max(scores) and clf.best_loss_ is None
    best = int(np.argmax(scores))
    assert best < 39, "the test needs the best epoch before the last"
    # the same run stopped after the best epoch ends with the weights clf restored
    short = MLPClassifier(max_iter=best + 1, **kw).fit(X, y)
    for a, b in zip(clf.coefs_ + clf.intercepts_, short.coefs_ + short.intercepts_):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(clf.predict_proba(X), short.predict_proba(X))
    with pytest.raises(ValueError, match="early_stopping"):
        clf.partial_fit(X, y)


def test_warm_start_continues(iris):
    X, y = iris
    clf = MLPClassifier(hidden_layer_sizes=(5,), max_iter=4, warm_start=True, random_state=0)
    clf.fit(X, y)
    first = [w.copy() for w in clf.coefs_]
    clf.fit(X, y)
    assert len(clf.loss_curve_) == 8 and clf.n_iter_ == 4
    assert not np.array_equal(first[0], clf.coefs_[0])
    with pytest.raises(ValueError, match="same classes"):
        clf.fit(X[y < 2], y[y < 2])
    with pytest.raises(ValueError, match="keep hidden_layer_sizes, activation"):
        clf.set_params(activation="tanh").fit(X, y)
    clf.set_params(activation="relu")
    cold = MLPClassifier(hidden_layer_sizes=(5,), max_iter=4, random_state=0).fit(X, y)
    np.testing.assert_array_equal(cold.coefs_[0], first[0])


def test_partial_fit(iris):
    X, y = iris
    clf = MLPClassifier(hidden_layer_sizes=(10,), learning_rate_init=0.01, random_state=0)
    with pytest.raises(ValueError, match="classes must be passed"):
        clf.partial_fit(X, y)
    clf.partial_fit(X[y == 0], y[y == 0], classes=[0, 1, 2])
    assert clf.n_outputs_ == 3 and clf.n_iter_ == 1
    for _ in range(60):
        clf.partial_fit(X, y)
    assert clf.score(X, y) > 0.85 and clf.t_ == 50 + 60 * 150
    with pytest.raises(ValueError, match="not in `self.classes_`"):
        clf.partial_fit(X, y + 1)
    with pytest.raises(ValueError, match="features"):
        clf.partial_fit(X[:, :3], y)
    with pytest.raises(ValueError, match="not the same as on last call"):
        clf.partial_fit(X, y, classes=[0, 1, 2, 3])
    clf.partial_fit(X, y, classes=[2, 0, 1])  # the same classes
    for Estimator in (MLPClassifier, MLPRegressor):  # scikit-learn's: stochastic solvers only
        assert not hasattr(Estimator(solver="lbfgs"), "partial_fit")

    reg = MLPRegressor(hidden_layer_sizes=(10,), random_state=0)
    reg.partial_fit(X[:, :3], X[:, 3])
    reg.partial_fit(X[:, :3], X[:, 3])
    assert len(reg.loss_curve_) == 2 and reg.loss_curve_[1] < reg.loss_curve_[0]


def test_no_hidden_layer_is_a_linear_model(iris):
    X, y = iris
    clf = MLPClassifier(hidden_layer_sizes=(), max_iter=100, learning_rate_init=0.05,
                        random_state=0).fit(X, y)
    assert [W.shape for W in clf.coefs_] == [(4, 3)] and clf.n_layers_ == 2
    assert clf.score(X, y) > 0.8


def test_bad_parameters(iris):
    X, y = iris
    for bad in [dict(activation="softmax"), dict(hidden_layer_sizes=(0,)), dict(dtype="int32"),
                dict(batch_size=0), dict(learning_rate="optimal"), dict(n_threads=0),
                dict(validation_fraction=1.0), dict(momentum=1.5), dict(solver="newton"),
                dict(max_fun=0), dict(n_iter_no_change=0), dict(n_iter_no_change=2.5)]:
        with pytest.raises(ValueError):
            MLPClassifier(**bad).fit(X, y)
    with pytest.raises(ValueError, match="squared_error"):
        MLPRegressor(loss="huber").fit(X, y)
    with pytest.raises(ValueError, match="y >= 0"):
        MLPRegressor(loss="poisson").fit(X, y - 1)
    with pytest.raises(NotFittedError):
        MLPRegressor().predict(X)


def test_dtype_follows_X(iris):
    """dtype=None: float32 X trains float32, any other X float64 (scikit-learn's
    rule); predict_proba and the regressor's predict return the network's dtype.
    An explicit dtype wins; continuing keeps the network's dtype."""
    X, y = iris
    kw = dict(hidden_layer_sizes=(5,), max_iter=5, random_state=0)
    for X_in, want in [(X, np.float64), (X.astype(np.float32), np.float32),
                       (np.round(X * 10).astype(np.int64), np.float64)]:
        clf = MLPClassifier(**kw).fit(X_in, y)
        reg = MLPRegressor(**kw).fit(X_in, X[:, 0])
        for est in (clf, reg):
            assert est.model_.dtype == want
            assert all(a.dtype == want for a in est.coefs_ + est.intercepts_)
        assert clf.predict_proba(X_in).dtype == want and reg.predict(X_in).dtype == want
    assert MLPClassifier(dtype="float32", **kw).fit(X, y).coefs_[0].dtype == np.float32
    warm = MLPRegressor(warm_start=True, **kw).fit(X.astype(np.float32), X[:, 0])
    warm.fit(X, X[:, 0])  # float64 X continues the float32 network
    assert warm.model_.dtype == np.float32
    with pytest.raises(ValueError, match="keep dtype"):
        warm.set_params(dtype="float64").fit(X, X[:, 0])


def test_threads_give_the_same_bits(iris):
    X, y = iris
    kw = dict(hidden_layer_sizes=(40, 30), max_iter=10, random_state=0)
    one = MLPClassifier(n_threads=1, **kw).fit(X, y)
    two = MLPClassifier(n_threads=2, **kw).fit(X, y)
    for a, b in zip(one.coefs_ + one.intercepts_, two.coefs_ + two.intercepts_):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(one.predict_proba(X), two.predict_proba(X))


def test_n_iter_no_change_inf(iris):
    X, y = iris
    clf = MLPClassifier(hidden_layer_sizes=(4,), max_iter=6, tol=1e9, n_iter_no_change=np.inf,
                        random_state=0).fit(X, y)
    assert clf.n_iter_ == 6 and clf._no_improvement_count == 5


def test_diverging_fit(iris):
    """With early stopping, a fit whose weights blow up scores NaN and ends with
    the best weights (scikit-learn's issue #29504); without, scikit-learn's error."""
    X, y = iris
    kw = dict(hidden_layer_sizes=(20,), activation="identity", solver="sgd",
              learning_rate_init=1.0, max_iter=20, random_state=0)
    with pytest.warns(ConvergenceWarning, match="best validation score"):
        reg = MLPRegressor(early_stopping=True, **kw).fit(X, y)
    scores = reg.validation_scores_
    assert np.isnan(scores[-1]) and len(scores) == reg.n_iter_ < 20
    best = int(np.nanargmax(scores))
    assert reg.best_validation_score_ == scores[best] and np.isfinite(reg.predict(X)).all()
    short = MLPRegressor(early_stopping=True, **{**kw, "max_iter": best + 1}).fit(X, y)
    for a, b in zip(reg.coefs_ + reg.intercepts_, short.coefs_ + short.intercepts_):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="Solver produced non-finite parameter weights"):
        MLPRegressor(**kw).fit(X, y)


def test_coefs_are_the_networks_weights(iris):
    """coefs_ / intercepts_ view the network: writes into them and new arrays
    assigned to them are what predict and further training use."""
    X, y = iris
    clf = MLPClassifier(hidden_layer_sizes=(6,), max_iter=20, random_state=0).fit(X, y)
    assert clf.coefs_[0] is clf.model_.layers[0].W
    clf.intercepts_[1][:] = [5.0, 0.0, 0.0]  # in place
    np.testing.assert_allclose(clf.predict_proba(X), _numpy_forward(clf, X), rtol=1e-12)
    rng = np.random.default_rng(0)
    new = [rng.normal(size=(4, 6)), rng.normal(size=(6, 3))]
    clf.coefs_ = new  # scikit-learn's way of loading weights
    clf.intercepts_[0] = np.ones(6)
    P = clf.predict_proba(X)
    np.testing.assert_array_equal(clf.coefs_[0], new[0])
    np.testing.assert_allclose(P, _numpy_forward(clf, X), rtol=1e-12)
    assert clf.coefs_[0] is clf.model_.layers[0].W and clf.intercepts_[0][0] == 1.0
    clf.coefs_[1] = np.zeros((5, 3))
    with pytest.raises(ValueError, match="shape"):
        clf.predict(X)
    # on an estimator that has none, they are the weights partial_fit starts from
    fresh = MLPClassifier(hidden_layer_sizes=(6,), solver="sgd", learning_rate_init=1e-12)
    fresh.coefs_, fresh.intercepts_ = [a.copy() for a in new], [np.ones(6), np.zeros(3)]
    fresh.partial_fit(X, y, classes=[0, 1, 2])
    np.testing.assert_allclose(fresh.coefs_[0], new[0], rtol=1e-9)
    bad = MLPClassifier(hidden_layer_sizes=(7,), warm_start=True)
    bad.coefs_, bad.intercepts_ = new, [np.ones(6), np.zeros(3)]
    with pytest.raises(ValueError, match="coefs_ have shapes"):
        bad.fit(X, y)


# ---- scikit-learn's MLP, number for number ---------------------------------------------------


def _problem(kind, n=200, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 5))
    labels = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0.5)
    y = {"multiclass": lambda: np.array(["a", "b", "c"])[labels],
         "binary": lambda: (X[:, 2] > 0).astype(int),
         "multilabel": lambda: (X[:, :3] > 0.2).astype(int),
         "squared_error": lambda: X @ rng.normal(size=5) + 0.1 * rng.normal(size=n),
         "poisson": lambda: rng.poisson(np.exp(0.3 * X[:, 0] + 0.2))}[kind]()
    if kind in ("squared_error", "poisson"):
        return X, y, "MLPRegressor", {"loss": kind}
    return X, y, "MLPClassifier", {}


def _both(kind, **kw):
    """This estimator and scikit-learn's, fitted alike."""
    from sklearn import neural_network
    X, y, name, extra = _problem(kind)
    kw.update(extra, hidden_layer_sizes=(7,), activation="tanh", random_state=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return (getattr(fusenn.sklearn, name)(**kw).fit(X, y),
                getattr(neural_network, name)(**kw).fit(X, y), X)


KINDS = ["multiclass", "binary", "multilabel", "squared_error", "poisson"]


@pytest.mark.parametrize("early_stopping", [False, True], ids=["", "early_stopping"])
@pytest.mark.parametrize("kind", KINDS)
def test_sgd_follows_sklearn(kind, early_stopping):
    """The same initial weights, shuffles and early-stopping split as scikit-learn
    (the same calls on the same random_state): SGD follows it number for number
    (alpha=0 and batches of one size, where fusenn's L2 step is scikit-learn's)."""
    ours, theirs, X = _both(kind, solver="sgd", alpha=0.0, batch_size=32, max_iter=4,
                            learning_rate_init=0.05, early_stopping=early_stopping,
                            validation_fraction=0.2)
    for a, b in zip(ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-12)
    if early_stopping:
        np.testing.assert_allclose(ours.validation_scores_, theirs.validation_scores_,
                                   rtol=1e-12)
    if kind in ("squared_error", "poisson"):
        np.testing.assert_allclose(ours.predict(X), theirs.predict(X), rtol=1e-12)
    else:
        np.testing.assert_array_equal(ours.predict(X), theirs.predict(X))


def test_initial_weights_are_sklearns():
    """float32 X: scikit-learn's float64 draws rounded to float32, as scikit-learn."""
    from sklearn import neural_network
    X, y, _, _ = _problem("binary")
    kw = dict(hidden_layer_sizes=(7,), solver="sgd", learning_rate_init=1e-300, max_iter=1,
              random_state=3)  # nothing moves
    for dtype in (np.float64, np.float32):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            ours = MLPClassifier(**kw).fit(X.astype(dtype), y)
            theirs = neural_network.MLPClassifier(**kw).fit(X.astype(dtype), y)
        for a, b in zip(ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_):
            assert a.dtype == b.dtype == dtype
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kind", KINDS)
def test_lbfgs_follows_sklearn(kind):
    """L-BFGS from the same weights on the same loss and gradient takes
    scikit-learn's steps: 20 iterations agree to rounding."""
    ours, theirs, X = _both(kind, solver="lbfgs", alpha=1e-3, max_iter=20)
    assert ours.n_iter_ == theirs.n_iter_ <= 20
    np.testing.assert_allclose(ours.loss_, theirs.loss_, rtol=1e-10)
    for a, b in zip(ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-11)
    assert not hasattr(ours, "loss_curve_")  # as scikit-learn's lbfgs


def test_lbfgs_limits_and_model(iris, tmp_path):
    X, y = iris
    with pytest.warns(ConvergenceWarning, match="lbfgs failed to converge"):
        clf = MLPClassifier(solver="lbfgs", hidden_layer_sizes=(10,), max_fun=7,
                            random_state=0).fit(X, y)
    assert clf.n_iter_ <= 7
    with pytest.warns(ConvergenceWarning, match="max_iter=3"):
        clf = MLPClassifier(solver="lbfgs", hidden_layer_sizes=(10,), max_iter=3,
                            random_state=0).fit(X, y)
    assert clf.n_iter_ == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        clf = MLPClassifier(solver="lbfgs", hidden_layer_sizes=(10,), tol=1e-3,
                            random_state=0).fit(X, y)
    assert clf.score(X, y) > 0.97 and clf.n_iter_ < 200
    # model_ is an ordinary fusenn model afterwards: it saves, loads and predicts the same
    assert isinstance(clf.model_.optimizer, fusenn.Adam)
    clf.model_.save(tmp_path / "lbfgs.npz")
    np.testing.assert_array_equal(fusenn.load(tmp_path / "lbfgs.npz").predict(X),
                                  clf.predict_proba(X))


@pytest.mark.parametrize("kind", KINDS)
def test_lbfgs_gradient_matches_finite_differences(kind):
    """The objective L-BFGS gets, with sample weights and the L2 term, against
    central differences of its own loss."""
    X, y, name, extra = _problem(kind, n=12, seed=1)
    est = getattr(fusenn.sklearn, name)(solver="lbfgs", hidden_layer_sizes=(3,),
                                        activation="tanh", alpha=0.3, max_iter=2, random_state=0,
                                        **extra)
    sw = np.random.default_rng(2).uniform(0.5, 2, size=len(X))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X, y, sample_weight=sw)
    T = est._validate_fit_data(X, y, np.float64, False, False, None)[1]
    theta = np.concatenate([a.ravel() for a in est.coefs_ + est.intercepts_])
    value, grad = est._loss_grad_lbfgs(theta, X, T, sw)
    numeric = np.empty_like(theta)
    for i in range(len(theta)):
        step = np.zeros_like(theta)
        step[i] = 1e-6
        numeric[i] = (est._loss_grad_lbfgs(theta + step, X, T, sw)[0]
                      - est._loss_grad_lbfgs(theta - step, X, T, sw)[0]) / 2e-6
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8)
    assert np.isfinite(value)


def test_sparse_X_is_made_dense(iris):
    import scipy.sparse
    X, y = iris
    X = np.where(X > 0.5, X, 0)
    kw = dict(hidden_layer_sizes=(5,), max_iter=10, random_state=0)
    dense = MLPClassifier(**kw).fit(X, y)
    sparse = MLPClassifier(**kw).fit(scipy.sparse.csr_matrix(X), y)
    for a, b in zip(dense.coefs_, sparse.coefs_):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(dense.predict_proba(X),
                                  sparse.predict_proba(scipy.sparse.csc_array(X)))


def test_sklearn_params_pass_to_fusenn():
    from sklearn import neural_network
    for name, kw in [("MLPClassifier", {}), ("MLPRegressor", {"loss": "poisson"})]:
        params = getattr(neural_network, name)(max_fun=99, **kw).get_params()
        ours = getattr(fusenn.sklearn, name)(**params)
        assert {k: v for k, v in ours.get_params().items()
                if k not in ("dtype", "n_threads")} == params


# ---- scikit-learn's tools ---------------------------------------------------------------


def test_pipeline_gridsearch_cross_val_score(iris):
    X, y = load_iris(return_X_y=True)
    pipe = make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=(10,), max_iter=150,
                                                         learning_rate_init=0.02, random_state=0))
    assert pipe.fit(X, y).score(X, y) > 0.9
    scores = cross_val_score(pipe, X, y, cv=3)
    assert scores.shape == (3,) and scores.mean() > 0.85
    grid = GridSearchCV(pipe, {"mlpclassifier__alpha": [1e-4, 1e-2],
                               "mlpclassifier__hidden_layer_sizes": [(4,), (10,)]}, cv=3)
    grid.fit(X, y)
    assert set(grid.best_params_) == {"mlpclassifier__alpha", "mlpclassifier__hidden_layer_sizes"}
    assert grid.best_score_ > 0.85
    Xr, yr = make_regression(n_samples=150, n_features=4, noise=1.0, random_state=0)
    reg = make_pipeline(StandardScaler(), MLPRegressor(hidden_layer_sizes=(10,), max_iter=200,
                                                       learning_rate_init=0.02, random_state=0))
    assert cross_val_score(reg, Xr, yr / yr.std(), cv=3).mean() > 0.8


@pytest.mark.parametrize("Estimator", [MLPClassifier, MLPRegressor])
def test_pickle_round_trip_keeps_training_state(Estimator, iris):
    X, y = iris
    if Estimator is MLPRegressor:
        X, y = X[:, :3], X[:, 3]
    est = Estimator(hidden_layer_sizes=(8,), max_iter=20, random_state=0).fit(X, y)
    before = est.predict(X)
    copy = pickle.loads(pickle.dumps(est))
    np.testing.assert_array_equal(copy.predict(X), before)
    # Adam's moments and step count survive: continued training is bitwise the same
    for e in (est, copy):
        for _ in range(3):
            e.partial_fit(X, y)
    for a, b in zip(est.coefs_ + est.intercepts_, copy.coefs_ + copy.intercepts_):
        np.testing.assert_array_equal(a, b)
    assert copy.model_.optimizer.iterations == est.model_.optimizer.iterations > 3
    np.testing.assert_array_equal(copy.predict(X), est.predict(X))


def test_import_fusenn_does_not_import_sklearn():
    code = "import sys, fusenn; print(any(m.split('.')[0] == 'sklearn' for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
