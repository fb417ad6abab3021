"""scikit-learn estimators trained by fusenn: MLPClassifier and MLPRegressor.

    from fusenn.sklearn import MLPClassifier
    clf = MLPClassifier(hidden_layer_sizes=(64,), max_iter=50, random_state=0).fit(X, y)

Parameters, fitted attributes and semantics follow scikit-learn's
sklearn.neural_network estimators of the same names (stochastic solvers only:
"adam" and "sgd"); underneath, a fusenn.Sequential is trained one epoch (one
scikit-learn iteration) per call of its `fit`. scikit-learn is an optional
dependency (`pip install fusenn[sklearn]`); `import fusenn` never imports it.

Losses match scikit-learn's: the updates are those of scikit-learn's loss and
L2 penalty (fusenn's losses are means over outputs too; the gradient scale,
learning rate and epsilon are converted), and `loss_curve_` holds
scikit-learn's loss: cross-entropy summed over the outputs (multi-label) or
half the mean squared error (regression), averaged over the epoch's samples,
plus the L2 penalty term 0.5 * alpha * ||W||^2 / batch per batch.

sample_weight follows scikit-learn's MLP: each batch's loss is the weighted
mean of its samples' losses (sum_i w_i loss_i / sum_i w_i over the batch) and
its L2 gradient alpha * W / sum_i w_i. The estimator draws the batches itself
(so it knows each batch's weight sum) and hands fusenn weights rescaled to
mean 1 in each batch; see _epoch_weights.
"""

import contextlib
import numbers
import warnings

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets, type_of_target, unique_labels
from sklearn.utils.validation import (_check_sample_weight, check_is_fitted, column_or_1d,
                                      validate_data)

from . import distributed
from ._threads import threads
from .layers import Dense
from .model import Sequential
from .optimizers import SGD, Adam

__all__ = ["MLPClassifier", "MLPRegressor"]

# scikit-learn's activation names -> fusenn's
_ACTIVATIONS = {"identity": "identity", "logistic": "sigmoid", "tanh": "tanh", "relu": "relu"}
_SOLVERS = ("adam", "sgd")
_LEARNING_RATES = ("constant", "invscaling", "adaptive")


def _epoch_weights(sample_weight, n, batch_size):
    """The weights fusenn trains one epoch with, and sum over batches of 1 / S_b.

    Batch b holds rows [b * batch_size, (b + 1) * batch_size) and S_b is its
    weight sum (its size without weights). fusenn's batch loss is
    (1 / n_b) sum_i w_i loss_i, scikit-learn's sum_i w_i loss_i / S_b: the
    weights are rescaled by n_b / S_b (mean 1 in every batch). A batch of
    zero weights gets zeros (no data gradient) and counts for nothing.
    """
    starts = np.arange(0, n, batch_size)
    sizes = np.diff(np.append(starts, n))
    if sample_weight is None:
        return None, float(np.sum(1.0 / sizes)), float(len(sizes))
    sums = np.add.reduceat(sample_weight, starts)
    live = sums > 0
    scale = np.zeros_like(sums)
    scale[live] = sizes[live] / sums[live]
    inv_sums = float(np.sum(1.0 / sums[live]))
    # sum over batches of n_b / S_b: the batches' penalty terms in loss_curve_
    penalty_count = float(np.sum(scale))
    return sample_weight * np.repeat(scale, sizes), inv_sums, penalty_count


class _BaseMLP(BaseEstimator):
    """What MLPClassifier and MLPRegressor share: parameters, the epoch loop,
    convergence and early stopping. Subclasses encode targets (`_encode_fit`),
    choose the output layer and loss (`_output`) and score (`_val_score`)."""

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam",
                 alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10,
                 dtype="float32", n_threads=None):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.dtype = dtype
        self.n_threads = n_threads

    # ---- parameter checks -----------------------------------------------------

    def _check_params(self):
        """Validate the parameters (at fit, as scikit-learn does); returns the
        hidden layer sizes as a list and the NumPy dtype."""
        def number(name, low, high=np.inf, low_open=False, high_open=False):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (
                    (value > low if low_open else value >= low)
                    and (value < high if high_open else value <= high)):
                lo, hi = "(" if low_open else "[", ")" if high_open else "]"
                raise ValueError(f"{name} must be a number in {lo}{low}, {high}{hi}, got {value!r}")

        def integer(name, low):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")

        if self.solver == "lbfgs":
            raise ValueError("solver='lbfgs' is not supported by fusenn (it trains with "
                             "mini-batch gradient steps); use solver='adam' or 'sgd'")
        if self.solver not in _SOLVERS:
            raise ValueError(f"solver must be 'adam' or 'sgd', got {self.solver!r}")
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(map(repr, _ACTIVATIONS))}, "
                             f"got {self.activation!r}")
        if self.learning_rate not in _LEARNING_RATES:
            raise ValueError(f"learning_rate must be one of "
                             f"{', '.join(map(repr, _LEARNING_RATES))}, got {self.learning_rate!r}")
        sizes = self.hidden_layer_sizes
        sizes = list(sizes) if hasattr(sizes, "__iter__") else [sizes]
        for size in sizes:
            if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size <= 0:
                raise ValueError(f"hidden_layer_sizes must be positive ints, got "
                                 f"{self.hidden_layer_sizes!r}")
        if not (self.batch_size == "auto" or (
                isinstance(self.batch_size, numbers.Integral)
                and not isinstance(self.batch_size, bool) and self.batch_size >= 1)):
            raise ValueError(f"batch_size must be 'auto' or an int >= 1, got {self.batch_size!r}")
        number("alpha", 0)
        number("learning_rate_init", 0, low_open=True)
        number("power_t", 0)
        integer("max_iter", 1)
        number("tol", 0)
        number("momentum", 0, 1)
        number("validation_fraction", 0, 1, low_open=True, high_open=True)
        number("beta_1", 0, 1, high_open=True)
        number("beta_2", 0, 1, high_open=True)
        number("epsilon", 0, low_open=True)
        integer("n_iter_no_change", 1)
        if self.n_threads is not None:
            integer("n_threads", 1)
        try:
            dtype = np.dtype(self.dtype)
        except TypeError:
            dtype = None
        if dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}")
        return [int(s) for s in sizes], dtype

    def _threads(self):
        n = self.n_threads if self.n_threads is not None else distributed.worker_threads()
        return contextlib.nullcontext() if n is None else threads(int(n))

    # ---- training ---------------------------------------------------------------

    def _make_optimizer(self):
        """A fresh fusenn optimizer for this estimator's solver, in fusenn's units
        (see _sync_optimizer)."""
        if self.solver == "sgd":
            return SGD(lr=1.0, momentum=self.momentum,
                       nesterov=bool(self.nesterovs_momentum) and self.momentum > 0)
        return Adam(lr=1.0, beta1=self.beta_1, beta2=self.beta_2, eps=self.epsilon)

    def _sync_optimizer(self, inv_weight_sum):
        """Hand the current learning rate and L2 strength to the optimizer.

        fusenn's gradient is `_grad_scale` times scikit-learn's (its losses are
        means over outputs), so SGD's learning rate is divided by it, Adam's
        epsilon multiplied by it, and the L2 strength is alpha / S (the
        gradient of scikit-learn's penalty; S is a batch's size, or its weight
        sum with sample weights) times it: the updates are then
        scikit-learn's. fusenn's L2 strength is one number per epoch: 1 / S is
        the epoch's mean over batches, exact when every batch has the same S
        (one batch, or no weights and batch_size dividing the samples)."""
        opt = self.model_.optimizer
        s = self._grad_scale
        if isinstance(opt, SGD):
            opt.lr = self._learning_rate / s
        else:
            opt.lr = self._learning_rate
            opt.eps = self.epsilon * s
        opt.l2 = self.alpha * inv_weight_sum * s

    def _build(self, sizes, dtype, n_features, random_state):
        units, out_activation, loss = self._output()
        act = _ACTIVATIONS[self.activation]
        layers = [Dense(n, activation=act) for n in sizes] + [Dense(units, out_activation)]
        seed = int(random_state.randint(np.iinfo(np.int32).max))
        self.model_ = Sequential(layers, input_dim=n_features, dtype=dtype.name, seed=seed)
        self._shuffle_rng = np.random.default_rng(seed)  # the batches of every epoch
        self.model_.compile(loss=loss, optimizer=self._make_optimizer())
        self.n_layers_ = len(sizes) + 2
        self.n_outputs_ = self._n_outputs
        self.out_activation_ = {"sigmoid": "logistic"}.get(out_activation, out_activation)
        self.loss_curve_ = []
        self._no_improvement_count = 0
        self.t_ = 0
        self._learning_rate = float(self.learning_rate_init)
        if self.early_stopping:
            self.validation_scores_ = []
            self.best_validation_score_ = -np.inf
            self.best_loss_ = None
            self._best_coefs = [layer.W.copy() for layer in self.model_.layers]
            self._best_intercepts = [layer.b.copy() for layer in self.model_.layers]
        else:
            self.validation_scores_ = None
            self.best_validation_score_ = None
            self.best_loss_ = np.inf

    def _fit(self, X, y, sample_weight, incremental, classes=None):
        sizes, dtype = self._check_params()
        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")
        first_pass = not hasattr(self, "model_") or (not self.warm_start and not incremental)
        if not first_pass:
            hidden = self.model_.layers[:-1]
            old = [layer.units for layer in hidden]
            if (old != sizes or self.model_.dtype != dtype
                    or any(layer.activation != _ACTIVATIONS[self.activation] for layer in hidden)):
                raise ValueError(f"warm_start and partial_fit continue the fitted network: "
                                 f"keep hidden_layer_sizes, activation and dtype as they were "
                                 f"(hidden_layer_sizes={old}, dtype={self.model_.dtype.name!r})")
        X, target = self._validate_fit_data(X, y, dtype, incremental, first_pass, classes)
        if sample_weight is not None:
            # fusenn's weighted loss takes no negative weights (scikit-learn's MLP does)
            sample_weight = _check_sample_weight(sample_weight, X, dtype=np.float64,
                                                 ensure_non_negative=True)
        random_state = check_random_state(self.random_state)
        if first_pass:
            self._build(sizes, dtype, X.shape[1], random_state)
        elif not incremental or self.model_.optimizer is None:
            self.model_.compile(loss=self.model_.loss.name, optimizer=self._make_optimizer())
            self._learning_rate = float(self.learning_rate_init)

        if self.early_stopping:
            stratify = target if (self._is_single_label_classifier()) else None
            arrays = (X, target) if sample_weight is None else (X, target, sample_weight)
            split = train_test_split(*arrays, random_state=random_state,
                                     test_size=self.validation_fraction, stratify=stratify)
            X_train, X_val, y_train, y_val = split[:4]
            w_train, w_val = split[4:] if sample_weight is not None else (None, None)
            if X_val.shape[0] < 2:
                raise ValueError("The validation set is too small. Increase "
                                 "'validation_fraction' or the size of your dataset.")
        else:
            X_train, y_train, w_train = X, target, sample_weight
            X_val = y_val = w_val = None
        n = X_train.shape[0]
        if self.batch_size == "auto":
            batch_size = min(200, n)
        else:
            if self.batch_size > n:
                warnings.warn(f"batch_size={self.batch_size} is larger than the number of "
                              f"samples ({n}); using {n}", UserWarning, stacklevel=3)
            batch_size = min(int(self.batch_size), n)
        n_batches = -(-n // batch_size)

        self.n_iter_ = 0
        try:
            with self._threads():
                for _ in range(self.max_iter):
                    if self.shuffle:
                        order = self._shuffle_rng.permutation(n)
                        X_epoch, y_epoch = X_train[order], y_train[order]
                        w_epoch = None if w_train is None else w_train[order]
                    else:
                        X_epoch, y_epoch, w_epoch = X_train, y_train, w_train
                    w_epoch, inv_sums, penalty_count = _epoch_weights(w_epoch, n, batch_size)
                    self._sync_optimizer(inv_sums / n_batches)
                    history = self.model_.fit(X_epoch, y_epoch, epochs=1, batch_size=batch_size,
                                              shuffle=False, sample_weight=w_epoch, verbose=0)
                    loss = history.history["loss"][0] / self._loss_scale
                    if self.alpha > 0:  # per batch 0.5 * alpha * ||W||^2 / S_b, times n_b / n
                        sq = sum(float(np.dot(W.ravel(), W.ravel()))
                                 for W in self.model_.params[0::2])
                        loss += 0.5 * self.alpha * sq * penalty_count / n
                    self.n_iter_ += 1
                    self.t_ += n
                    self.loss_ = loss
                    self.loss_curve_.append(loss)
                    if self.verbose:
                        print(f"Iteration {self.n_iter_}, loss = {loss:.8f}")
                    self._update_no_improvement_count(X_val, y_val, w_val)
                    if self.solver == "sgd" and self.learning_rate == "invscaling":
                        self._learning_rate = (self.learning_rate_init
                                               / (self.t_ + 1) ** self.power_t)
                    if self._no_improvement_count > self.n_iter_no_change:
                        what = ("Validation score" if self.early_stopping else "Training loss")
                        msg = (f"{what} did not improve more than tol={self.tol:f} for "
                               f"{self.n_iter_no_change} consecutive epochs.")
                        if self.solver == "sgd" and self.learning_rate == "adaptive" \
                                and self._learning_rate > 1e-6:
                            self._learning_rate /= 5.0
                            self._no_improvement_count = 0
                            if self.verbose:
                                print(f"{msg} Setting learning rate to {self._learning_rate:f}")
                        else:
                            if self.verbose:
                                print(f"{msg} Stopping.")
                            break
                    if incremental:
                        break
                    if self.n_iter_ == self.max_iter:
                        warnings.warn(f"Stochastic Optimizer: Maximum iterations "
                                      f"({self.max_iter}) reached and the optimization "
                                      f"hasn't converged yet.", ConvergenceWarning)
        except KeyboardInterrupt:  # as scikit-learn: keep what was learnt so far
            warnings.warn("Training interrupted by user.")
        finally:  # coefs_ always describe the network predict uses
            if self.early_stopping and hasattr(self, "_best_coefs"):
                self.model_.set_weights([p for pair in zip(self._best_coefs, self._best_intercepts)
                                         for p in pair])
            self._store_coefs()
        return self

    def _update_no_improvement_count(self, X_val, y_val, w_val):
        if self.early_stopping:
            with self._threads():
                score = self._val_score(X_val, y_val, w_val)
            self.validation_scores_.append(score)
            if self.verbose:
                print(f"Validation score: {score:f}")
            if score < self.best_validation_score_ + self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if score > self.best_validation_score_:
                self.best_validation_score_ = score
                self._best_coefs = [layer.W.copy() for layer in self.model_.layers]
                self._best_intercepts = [layer.b.copy() for layer in self.model_.layers]
        else:
            if self.loss_curve_[-1] > self.best_loss_ - self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if self.loss_curve_[-1] < self.best_loss_:
                self.best_loss_ = self.loss_curve_[-1]

    def _store_coefs(self):
        self.coefs_ = [layer.W.copy() for layer in self.model_.layers]
        self.intercepts_ = [layer.b.copy() for layer in self.model_.layers]

    def _forward(self, X):
        """The network's outputs (probabilities for classifiers) for validated X."""
        check_is_fitted(self, "model_")
        X = validate_data(self, X, reset=False, dtype=self.model_.dtype)
        with self._threads():
            return self.model_.predict(X)

    def _is_single_label_classifier(self):
        return False

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = False
        return tags


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """Multi-layer perceptron classifier, scikit-learn's MLPClassifier trained by fusenn.

    Parameters are scikit-learn's (solver "adam" or "sgd"; "lbfgs" raises
    ValueError at fit) plus `dtype` ("float32" or "float64": the precision the
    network computes in) and `n_threads` (None: fusenn's thread count, or in a
    joblib or dask worker its share of the cores, fusenn.distributed.worker_threads;
    else the number of kernel threads for fit and predict). Binary targets train one
    sigmoid output with binary cross-entropy, more classes a softmax output
    with cross-entropy, multi-label indicator matrices one sigmoid output per
    label. `model_` is the underlying fusenn.Sequential.
    """

    def fit(self, X, y, sample_weight=None):
        """Train on (X, y) for up to max_iter epochs; returns self.

        sample_weight: one non-negative weight per sample, or None (all 1);
        scikit-learn's semantics (see the module's docstring)."""
        return self._fit(X, y, sample_weight, incremental=False)

    def partial_fit(self, X, y, sample_weight=None, classes=None):
        """One epoch over (X, y); `classes` (all the labels) is required on the first call.
        sample_weight as in fit."""
        if not hasattr(self, "classes_") and classes is None:
            raise ValueError("classes must be passed on the first call to partial_fit.")
        return self._fit(X, y, sample_weight, incremental=True, classes=classes)

    def _validate_fit_data(self, X, y, dtype, incremental, first_pass, classes):
        X, y = validate_data(self, X, y, multi_output=True, dtype=dtype, reset=first_pass)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        check_classification_targets(y)
        kind = type_of_target(y)
        if first_pass:
            if kind == "multilabel-indicator":
                self.classes_ = np.arange(y.shape[1])
                self._multilabel = True
            else:
                labels = y if (classes is None or not incremental) else classes
                self.classes_ = unique_labels(labels)
                self._multilabel = False
            if not self._multilabel and np.setdiff1d(unique_labels(y), self.classes_).size:
                raise ValueError(f"`y` has classes not in `classes`: {self.classes_}")
        else:
            if (kind == "multilabel-indicator") != self._multilabel or (
                    self._multilabel and y.shape[1] != len(self.classes_)):
                raise ValueError("y must have the same kind of targets (and number of labels) "
                                 "as in the previous call to fit")
            if not self._multilabel:
                present = unique_labels(y)
                if self.warm_start and not incremental:
                    if set(present) != set(self.classes_):
                        raise ValueError(
                            f"warm_start can only be used where `y` has the same classes as "
                            f"in the previous call to fit. Previously got {self.classes_}, "
                            f"`y` has {present}")
                elif np.setdiff1d(present, self.classes_).size:
                    raise ValueError(f"`y` has classes not in `self.classes_`. "
                                     f"`self.classes_` has {self.classes_}. 'y' has {present}.")
        return X, self._encode(y, dtype)

    def _encode(self, y, dtype):
        """The targets as the network trains on them."""
        if self._multilabel:
            return np.ascontiguousarray(y, dtype=dtype)
        index = np.searchsorted(self.classes_, y)
        k = len(self.classes_)
        if k <= 2:  # one sigmoid unit: the probability of classes_[1]
            return (index == 1).astype(dtype).reshape(-1, 1)
        return index.astype(np.int64)

    @property
    def _n_outputs(self):
        k = len(self.classes_)
        return k if (self._multilabel or k > 2) else 1

    def _output(self):
        if self._multilabel or len(self.classes_) <= 2:
            k = self._n_outputs
            self._grad_scale = self._loss_scale = 1.0 / k  # fusenn: mean over outputs
            return k, "sigmoid", "binary_cross_entropy"
        self._grad_scale = self._loss_scale = 1.0
        return len(self.classes_), "softmax", "cross_entropy"

    def _is_single_label_classifier(self):
        return not self._multilabel

    def _decode(self, P):
        if self._multilabel:
            return (P > 0.5).astype(int)
        if P.shape[1] == 1:
            return self.classes_[(P[:, 0] > 0.5).astype(np.intp) if len(self.classes_) == 2
                                 else np.zeros(len(P), dtype=np.intp)]
        return self.classes_[np.argmax(P, axis=1)]

    def _val_score(self, X_val, y_val, w_val):
        P = self.model_.predict(X_val)
        if self._multilabel:
            truth, pred = y_val, (P > 0.5).astype(y_val.dtype)
        elif y_val.ndim == 2:
            truth = (y_val[:, 0] > 0.5) if len(self.classes_) == 2 else np.zeros(len(y_val), bool)
            pred = P[:, 0] > 0.5
        else:
            truth, pred = y_val, np.argmax(P, axis=1)
        return float(accuracy_score(truth, pred, sample_weight=w_val))

    def predict(self, X):
        """The predicted labels (an indicator matrix for multi-label targets)."""
        return self._decode(self._forward(X))

    def predict_proba(self, X):
        """Class probabilities, shape (n_samples, n_classes), columns in classes_ order
        (float64, whatever the network's dtype)."""
        P = self._forward(X).astype(np.float64)
        if self._multilabel or P.shape[1] > 1:
            return P
        if len(self.classes_) == 1:
            return np.ones_like(P)
        return np.hstack([1 - P, P])

    def predict_log_proba(self, X):
        """The logarithm of predict_proba."""
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags


class MLPRegressor(RegressorMixin, _BaseMLP):
    """Multi-layer perceptron regressor, scikit-learn's MLPRegressor trained by fusenn.

    Identity output units with fusenn's "mse" loss; y may be 2-D (multi-output).
    Parameters as MLPClassifier's. `model_` is the underlying fusenn.Sequential.
    """

    def fit(self, X, y, sample_weight=None):
        """Train on (X, y) for up to max_iter epochs; returns self.

        sample_weight: one non-negative weight per sample, or None (all 1);
        scikit-learn's semantics (see the module's docstring)."""
        return self._fit(X, y, sample_weight, incremental=False)

    def partial_fit(self, X, y, sample_weight=None):
        """One epoch over (X, y); sample_weight as in fit."""
        return self._fit(X, y, sample_weight, incremental=True)

    def _validate_fit_data(self, X, y, dtype, incremental, first_pass, classes):
        X, y = validate_data(self, X, y, multi_output=True, y_numeric=True, dtype=dtype,
                             reset=first_pass)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        Y = np.ascontiguousarray(y.reshape(len(y), -1), dtype=dtype)
        if first_pass:
            self._n_targets = Y.shape[1]
        elif Y.shape[1] != self._n_targets:
            raise ValueError(f"y must have {self._n_targets} target column(s) as in the "
                             f"previous call to fit, got {Y.shape[1]}")
        return X, Y

    @property
    def _n_outputs(self):
        return self._n_targets

    def _output(self):
        k = self._n_targets
        # fusenn's mse: mean over all elements of (p - y)^2, gradient 2 (p - y) / (n k);
        # scikit-learn's: half of that loss, gradient (p - y) / n
        self._loss_scale = 2.0
        self._grad_scale = 2.0 / k
        return k, "identity", "mse"

    def _val_score(self, X_val, y_val, w_val):
        return float(r2_score(y_val, self.model_.predict(X_val), sample_weight=w_val))

    def predict(self, X):
        """The predicted values: shape (n_samples,) for one target, else (n_samples, n_targets)."""
        out = self._forward(X).astype(np.float64)
        return out.ravel() if out.shape[1] == 1 else out

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags
