"""scikit-learn estimators trained by fusenn: MLPClassifier and MLPRegressor.

    from fusenn.sklearn import MLPClassifier
    clf = MLPClassifier(hidden_layer_sizes=(64,), max_iter=50, random_state=0).fit(X, y)

Parameters, fitted attributes and semantics follow scikit-learn's
sklearn.neural_network estimators of the same names; underneath is a
fusenn.Sequential (`model_`). The stochastic solvers ("adam", "sgd") train it
one epoch (one scikit-learn iteration) per call of its `fit`; "lbfgs" hands
the full-batch loss and gradient fusenn computes to
scipy.optimize.minimize(method="L-BFGS-B"), as scikit-learn does. Weights
start as scikit-learn draws them (the same calls on the same random_state),
and batches and the early-stopping split come from the same stream.
scikit-learn is an optional dependency (`pip install fusenn[sklearn]`);
`import fusenn` never imports it.

Losses match scikit-learn's: the updates are those of scikit-learn's loss and
L2 penalty (fusenn's losses are means over outputs; the gradient scale,
learning rate and epsilon are converted), and `loss_curve_` holds
scikit-learn's loss: cross-entropy summed over the outputs (multi-label),
half the mean squared error or half the Poisson deviance (regression),
averaged over the epoch's samples, plus the L2 penalty term
0.5 * alpha * ||W||^2 / batch per batch.

sample_weight follows scikit-learn's MLP: each batch's loss is the weighted
mean of its samples' losses (sum_i w_i loss_i / sum_i w_i over the batch) and
its L2 gradient alpha * W / sum_i w_i. The estimator draws the batches itself
(so it knows each batch's weight sum) and hands fusenn weights rescaled to
mean 1 in each batch; see _epoch_weights.

coefs_ and intercepts_ are views of the network's weights: writing into them,
or assigning new arrays (as scikit-learn's users load weights), changes the
network used by the next predict, fit or partial_fit.
"""

import contextlib
import numbers
import types
import warnings

import numpy as np
import scipy
import scipy.optimize
import scipy.sparse
from scipy.special import xlogy
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import check_classification_targets, type_of_target, unique_labels
from sklearn.utils.validation import (_check_sample_weight, check_is_fitted, column_or_1d,
                                      validate_data)

from . import distributed
from ._threads import threads
from .layers import Dense
from .model import Sequential
from .optimizers import SGD, Adam, Optimizer

__all__ = ["MLPClassifier", "MLPRegressor"]

# scikit-learn's activation names -> fusenn's
_ACTIVATIONS = {"identity": "identity", "logistic": "sigmoid", "tanh": "tanh", "relu": "relu"}
_SOLVERS = ("lbfgs", "sgd", "adam")
_STOCHASTIC_SOLVERS = ("sgd", "adam")
_LEARNING_RATES = ("constant", "invscaling", "adaptive")
_REGRESSION_LOSSES = {"squared_error": "mse", "poisson": "poisson"}
_NON_FINITE = ("Solver produced non-finite parameter weights. The input data may contain "
               "large values and need to be preprocessed.")
# SciPy 1.15 dropped L-BFGS-B's iprint (scikit-learn passes it to older versions only)
_LBFGS_IPRINT = tuple(int(part) for part in scipy.__version__.split(".")[:2]) < (1, 15)


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


class _FullBatchGradient(Optimizer):
    """The "optimizer" L-BFGS compiles into the model: a train_on_batch over all
    samples computes the loss and the gradients, step() keeps the gradients and
    leaves the weights alone (it runs op by op, on the C kernels)."""

    def step(self, backend, params, grads):
        self.grads = grads
        return 0

    def _hyperparameters(self):
        return {}


class _BaseMLP(BaseEstimator):
    """What MLPClassifier and MLPRegressor share: parameters, the solvers,
    convergence and early stopping. Subclasses validate and encode targets
    (`_validate_fit_data`), choose the output layer and loss (`_output`) and
    score (`_val_score`)."""

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam",
                 alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000,
                 dtype=None, n_threads=None):
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
        self.max_fun = max_fun
        self.dtype = dtype
        self.n_threads = n_threads

    def __setstate__(self, state):
        super().__setstate__(state)
        if "model_" in state:  # coefs_ unpickle as copies: views of the network again
            self._pull_coefs()

    # ---- parameter checks -----------------------------------------------------

    def _check_params(self):
        """Validate the parameters (at fit, as scikit-learn does); returns the
        hidden layer sizes as a list."""
        def number(name, low, high=np.inf, low_open=False, high_open=False):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (
                    (value > low if low_open else value >= low)
                    and (value < high if high_open else value <= high)):
                lo, hi = "(" if low_open else "[", ")" if high_open else "]"
                raise ValueError(f"{name} must be a number in {lo}{low}, {high}{hi}, got {value!r}")

        def integer(name, low, or_inf=False):
            value = getattr(self, name)
            if or_inf and isinstance(value, numbers.Real) and value == np.inf:
                return
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
                raise ValueError(f"{name} must be an int >= {low}{' or np.inf' if or_inf else ''}, "
                                 f"got {value!r}")

        if self.solver not in _SOLVERS:
            raise ValueError(f"solver must be one of {', '.join(map(repr, _SOLVERS))}, "
                             f"got {self.solver!r}")
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
        integer("n_iter_no_change", 1, or_inf=True)
        integer("max_fun", 1)
        if self.n_threads is not None:
            integer("n_threads", 1)
        if self.dtype is not None:
            try:
                dtype = np.dtype(self.dtype)
            except TypeError:
                dtype = None
            if dtype not in (np.float32, np.float64):
                raise ValueError(f"dtype must be None, 'float32' or 'float64', got {self.dtype!r}")
        return [int(s) for s in sizes]

    def _threads(self):
        n = self.n_threads if self.n_threads is not None else distributed.worker_threads()
        return contextlib.nullcontext() if n is None else threads(int(n))

    def _stochastic_solver(self):
        """available_if's test for partial_fit (scikit-learn's: stochastic solvers only)."""
        if self.solver not in _STOCHASTIC_SOLVERS:
            raise AttributeError(f"partial_fit is only available for stochastic optimizers. "
                                 f"{self.solver} is not stochastic.")
        return True

    # ---- the network ----------------------------------------------------------------

    def _make_optimizer(self):
        """A fresh fusenn optimizer for this estimator's solver, in fusenn's units
        (see _sync_optimizer); Adam for "lbfgs", whose model_ then saves and
        trains like any fusenn model."""
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

    def _build(self, layer_units, dtype):
        """A new network of these layer sizes (input first) and its training state."""
        units, out_activation, loss = self._output()
        if units != layer_units[-1]:
            raise ValueError(f"the output layer has {layer_units[-1]} units; these targets "
                             f"need {units}")
        act = _ACTIVATIONS[self.activation]
        layers = [Dense(n, activation=act) for n in layer_units[1:-1]]
        layers.append(Dense(units, out_activation))
        self.model_ = Sequential(layers, input_dim=layer_units[0], dtype=dtype.name, seed=0)
        self.model_.compile(loss=loss, optimizer=self._make_optimizer())
        self.n_layers_ = len(layer_units)
        self.n_outputs_ = units
        self.out_activation_ = {"sigmoid": "logistic"}.get(out_activation, out_activation)
        if loss == "poisson":
            self.out_activation_ = "exp"  # the network outputs the log of the rate
        self.n_iter_ = 0
        self.t_ = 0
        self._learning_rate = float(self.learning_rate_init)

    def _reset_curves(self):
        """The stochastic solvers' record: loss curve, validation scores, best weights."""
        self.loss_curve_ = []
        self._no_improvement_count = 0
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

    def _init_weights(self, random_state):
        """scikit-learn's initialisation (its _init_coef), drawn by the same calls:
        per layer W, then b, uniform in +-sqrt(factor / (fan_in + fan_out)) with
        factor 2 for the logistic activation and 6 otherwise."""
        factor = 2.0 if self.activation == "logistic" else 6.0
        weights = []
        for layer in self.model_.layers:
            fan_in, fan_out = layer.W.shape
            bound = np.sqrt(factor / (fan_in + fan_out))
            weights.append(random_state.uniform(-bound, bound, (fan_in, fan_out)))
            weights.append(random_state.uniform(-bound, bound, fan_out))
        self.model_.set_weights(weights)

    def _link_coefs(self):
        """coefs_ and intercepts_ as views of the network's weights."""
        self.coefs_ = [layer.W for layer in self.model_.layers]
        self.intercepts_ = [layer.b for layer in self.model_.layers]

    def _pull_coefs(self):
        """Copy into the network the coefs_ / intercepts_ a user assigned (writes
        into the views are there already), then view them again."""
        layers = self.model_.layers
        coefs, intercepts = list(self.coefs_), list(self.intercepts_)
        if (len(coefs) == len(intercepts) == len(layers)
                and all(c is layer.W and b is layer.b
                        for c, b, layer in zip(coefs, intercepts, layers))):
            return
        if not len(coefs) == len(intercepts) == len(layers):
            raise ValueError(f"coefs_ and intercepts_ must hold one array per layer "
                             f"({len(layers)}), got {len(coefs)} and {len(intercepts)}")
        self.model_.set_weights([a for pair in zip(coefs, intercepts) for a in pair])
        self._link_coefs()

    def _adopt_coefs(self, n_features, sizes, dtype):
        """A network for the coefs_ / intercepts_ a user set on an estimator with
        none (scikit-learn then trains them with partial_fit or warm_start)."""
        coefs = [np.asarray(c) for c in self.coefs_]
        units = [n_features] + sizes + [self._n_outputs]
        if [c.shape for c in coefs] != list(zip(units[:-1], units[1:])):
            raise ValueError(f"coefs_ have shapes {[c.shape for c in coefs]}; with "
                             f"hidden_layer_sizes={sizes}, these data need "
                             f"{list(zip(units[:-1], units[1:]))}")
        self._build(units, dtype)
        self._pull_coefs()

    def _check_continuation(self, sizes):
        """warm_start and partial_fit continue the fitted network: refuse changes
        of its shape, activation or loss (_fit_dtype refuses a new dtype)."""
        hidden = self.model_.layers[:-1]
        old = [layer.units for layer in hidden]
        if (old != sizes or self.model_.loss.name != self._output()[2]
                or any(layer.activation != _ACTIVATIONS[self.activation] for layer in hidden)):
            raise ValueError(f"warm_start and partial_fit continue the fitted network: "
                             f"keep hidden_layer_sizes, activation and loss as they were "
                             f"(hidden_layer_sizes={old})")

    # ---- fit ----------------------------------------------------------------------------

    def _fit_dtype(self, first_pass):
        """The dtype X is validated to: the network's when it continues, else
        dtype, or with dtype=None X's float dtype (float32 stays float32, anything
        else becomes float64, as scikit-learn's MLP)."""
        if not first_pass and hasattr(self, "model_"):
            if self.dtype is not None and np.dtype(self.dtype) != self.model_.dtype:
                raise ValueError(f"warm_start and partial_fit continue the fitted network: "
                                 f"keep dtype as it was ({self.model_.dtype.name!r})")
            return self.model_.dtype
        return (np.float64, np.float32) if self.dtype is None else np.dtype(self.dtype)

    def _fit(self, X, y, sample_weight, incremental, classes=None):
        sizes = self._check_params()
        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")
        first_pass = not hasattr(self, "coefs_") or (not self.warm_start and not incremental)
        X, target = self._validate_fit_data(X, y, self._fit_dtype(first_pass), incremental,
                                            first_pass, classes)
        dtype = X.dtype
        if sample_weight is not None:
            # fusenn's weighted loss takes no negative weights (scikit-learn's MLP does)
            sample_weight = _check_sample_weight(sample_weight, X, dtype=np.float64,
                                                 ensure_non_negative=True)
        random_state = check_random_state(self.random_state)
        fresh = first_pass or not hasattr(self, "model_")
        if first_pass:
            self._build([X.shape[1]] + sizes + [self._n_outputs], dtype)
            self._init_weights(random_state)
            self._link_coefs()
        elif fresh:
            self._adopt_coefs(X.shape[1], sizes, dtype)
        else:
            self._check_continuation(sizes)
            self._pull_coefs()
        try:
            with self._threads():
                if self.solver == "lbfgs":
                    self._fit_lbfgs(X, target, sample_weight)
                else:
                    self._fit_stochastic(X, target, sample_weight, incremental, fresh,
                                         random_state)
        finally:  # coefs_ always view the network predict uses
            self._link_coefs()
        return self

    def _loss_offsets(self, target):
        """Per-sample terms of scikit-learn's loss that fusenn's leaves out (they
        have no gradient), or None."""
        return None

    def _fit_lbfgs(self, X, target, sample_weight):
        """scikit-learn's L-BFGS: scipy's L-BFGS-B on the full-batch loss and
        gradient (_loss_grad_lbfgs), limited by max_iter, max_fun and tol."""
        packed = np.concatenate([p.ravel() for p in self._packing_order()]).astype(np.float64)
        options = {"maxfun": self.max_fun, "maxiter": self.max_iter, "gtol": self.tol}
        if _LBFGS_IPRINT:
            options["iprint"] = 1 if self.verbose else -1
        result = scipy.optimize.minimize(self._loss_grad_lbfgs, packed, method="L-BFGS-B",
                                         jac=True, options=options,
                                         args=(X, target, sample_weight))
        self.n_iter_ = min(int(result.nit), self.max_iter)
        if result.status != 0:
            hint = (f"\nIncrease the number of iterations (max_iter={self.max_iter})."
                    if self.n_iter_ == self.max_iter else "")
            warnings.warn(f"lbfgs failed to converge after {self.n_iter_} iteration(s) "
                          f"(status={result.status}):\n{result.message}{hint}\nYou might also "
                          f"want to scale the data.", ConvergenceWarning, stacklevel=3)
        self._unpack(result.x)
        # result.fun is the objective's loss; scikit-learn reports its own, which
        # for several squared-error outputs weighs the data term 1 / k
        n = X.shape[0]
        penalty = self._penalty(n if sample_weight is None else float(sample_weight.sum()))
        self.loss_ = float(penalty + (result.fun - penalty) * self._grad_scale / self._loss_scale)
        self.model_.compile(loss=self.model_.loss, optimizer=self._make_optimizer())

    def _packing_order(self):
        """The network's arrays in scikit-learn's packing: every W, then every b."""
        layers = self.model_.layers
        return [layer.W for layer in layers] + [layer.b for layer in layers]

    def _unpack(self, packed):
        start = 0
        for p in self._packing_order():
            np.copyto(p, packed[start:start + p.size].reshape(p.shape))
            start += p.size

    def _penalty(self, weight_sum):
        """scikit-learn's L2 term, 0.5 * alpha * ||W||^2 / (samples or weight sum);
        inf for weights on their way to diverging."""
        with np.errstate(over="ignore"):
            sq = sum(float(np.dot(layer.W.ravel(), layer.W.ravel()))
                     for layer in self.model_.layers)
        return 0.5 * self.alpha * sq / weight_sum

    def _loss_grad_lbfgs(self, packed, X, y, sample_weight=None, *_buffers):
        """L-BFGS's objective: scikit-learn's loss and its gradient (packed as
        `packed`: every W, then every b) with the weights set to `packed`.

        fusenn computes them in one train_on_batch over all samples, whose
        optimizer keeps the gradients and changes nothing. The data term is
        fusenn's loss over _grad_scale, consistent with the gradient; it is
        scikit-learn's loss, except for several squared-error outputs, where
        scikit-learn's reported loss weighs it 1 / k but its gradient does not.
        y: the targets as the network trains on them (scikit-learn's one-hot
        class columns are taken too). scikit-learn's signature: its work arrays
        (_buffers) are not needed."""
        model = self.model_
        if not isinstance(model.optimizer, _FullBatchGradient):
            model.compile(loss=model.loss, optimizer=_FullBatchGradient())
        self._unpack(packed)
        n = X.shape[0]
        weight_sum = n if sample_weight is None else float(np.sum(sample_weight))
        w = None if sample_weight is None else np.asarray(sample_weight) * (n / weight_sum)
        T = self._network_targets(y)
        try:
            loss = model.train_on_batch(X, T, sample_weight=w)
        except ValueError as err:  # the loss overflowed: L-BFGS-B steps back
            if "diverged" not in str(err):
                raise
            return np.inf, np.zeros_like(packed)
        offsets = self._loss_offsets(T)
        if offsets is not None:
            loss_offset = float(np.mean(offsets) if w is None else np.dot(w, offsets) / n)
        else:
            loss_offset = 0.0
        grads = model.optimizer.grads  # W1, b1, W2, b2, ...
        pieces = []
        for layer, g in zip(model.layers, grads[0::2]):
            pieces.append((g / self._grad_scale + self.alpha / weight_sum * layer.W).ravel())
        pieces += [(g / self._grad_scale).ravel() for g in grads[1::2]]
        value = loss / self._grad_scale + loss_offset + self._penalty(weight_sum)
        return value, np.concatenate(pieces).astype(np.float64)

    def _fit_stochastic(self, X, target, sample_weight, incremental, fresh, random_state):
        optimizer = self.model_.optimizer
        if not incremental or type(optimizer) is not type(self._make_optimizer()):
            self.model_.compile(loss=self.model_.loss, optimizer=self._make_optimizer())
            self._learning_rate = float(self.learning_rate_init)
        # a new network, or one L-BFGS trained, or early_stopping switched since
        if (fresh or not hasattr(self, "loss_curve_")
                or (self.validation_scores_ is None) == bool(self.early_stopping)):
            self._reset_curves()
        if self.early_stopping:
            # scikit-learn stratifies single-output classification only
            stratify = target.astype(bool) if self._stratify() else None
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
                              f"samples ({n}); using {n}", UserWarning, stacklevel=4)
            batch_size = min(int(self.batch_size), n)
        n_batches = -(-n // batch_size)
        offsets = self._loss_offsets(y_train)
        sample_idx = np.arange(n)

        self.n_iter_ = 0
        try:
            for _ in range(self.max_iter):
                if self.shuffle:  # scikit-learn's sklearn.utils.shuffle, on the same stream
                    perm = np.arange(n)
                    random_state.shuffle(perm)
                    sample_idx = sample_idx[perm]
                    X_epoch, y_epoch = X_train[sample_idx], y_train[sample_idx]
                    w_epoch = None if w_train is None else w_train[sample_idx]
                else:
                    X_epoch, y_epoch, w_epoch = X_train, y_train, w_train
                w_epoch, inv_sums, penalty_count = _epoch_weights(w_epoch, n, batch_size)
                self._sync_optimizer(inv_sums / n_batches)
                try:
                    history = self.model_.fit(X_epoch, y_epoch, epochs=1, batch_size=batch_size,
                                              shuffle=False, sample_weight=w_epoch, verbose=0)
                except ValueError as err:
                    if "diverged" not in str(err):
                        raise
                    if not self.early_stopping:
                        raise ValueError(f"{_NON_FINITE} (fusenn: {err})") from err
                    self._diverged(n, err)
                    break
                loss = history.history["loss"][0] / self._loss_scale
                if offsets is not None:
                    epoch_offsets = offsets[sample_idx] if self.shuffle else offsets
                    loss += float(np.mean(epoch_offsets) if w_epoch is None
                                  else np.dot(w_epoch, epoch_offsets) / n)
                if self.alpha > 0:  # per batch 0.5 * alpha * ||W||^2 / S_b, times n_b / n
                    loss += self._penalty(1.0) * penalty_count / n
                self.n_iter_ += 1
                self.t_ += n
                self.loss_ = loss
                self.loss_curve_.append(loss)
                if self.verbose:
                    print(f"Iteration {self.n_iter_}, loss = {loss:.8f}")
                self._update_no_improvement_count(X_val, y_val, w_val)
                if self.early_stopping and np.isnan(self.validation_scores_[-1]):
                    warnings.warn(f"The validation outputs overflowed in iteration "
                                  f"{self.n_iter_}; keeping the weights of the best validation "
                                  f"score.", ConvergenceWarning, stacklevel=4)
                    break
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
        finally:
            if self.early_stopping:
                self.model_.set_weights([p for pair in zip(self._best_coefs, self._best_intercepts)
                                         for p in pair])

    def _diverged(self, n, err):
        """An epoch diverged with early stopping on (scikit-learn's issue #29504):
        it scores NaN and training ends; the best weights are restored."""
        self.n_iter_ += 1
        self.t_ += n
        self.loss_ = float("nan")
        self.loss_curve_.append(self.loss_)
        self.validation_scores_.append(float("nan"))
        warnings.warn(f"Training diverged in iteration {self.n_iter_} ({err}); keeping the "
                      f"weights of the best validation score.", ConvergenceWarning, stacklevel=4)

    def _val_outputs(self, X_val):
        """The outputs on the validation set, or None where they overflow
        (scikit-learn then scores NaN)."""
        try:
            out = self._outputs(X_val)
        except ValueError as err:
            if "overflowed" not in str(err):
                raise
            return None
        return out if np.all(np.isfinite(out)) else None

    @property
    def _optimizer(self):
        """The stochastic solver's state as scikit-learn names it (its own tests read
        `_optimizer.learning_rate`): the learning rate in scikit-learn's units, which
        invscaling and adaptive schedules change; fusenn's optimizer is
        `model_.optimizer`, its `lr` in fusenn's units (see _sync_optimizer)."""
        if not hasattr(self, "_learning_rate"):
            raise AttributeError("_optimizer exists after fit")
        return types.SimpleNamespace(learning_rate=self._learning_rate)

    def _update_no_improvement_count(self, X_val, y_val, w_val):
        if self.early_stopping:
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

    # ---- predict --------------------------------------------------------------------

    def _validate_X(self, X, reset, dtype):
        """X as the network reads it: validated, sparse matrices made dense."""
        X = validate_data(self, X, accept_sparse=("csr", "csc"), reset=reset, dtype=dtype)
        return X.toarray() if scipy.sparse.issparse(X) else X

    def _forward(self, X):
        """The network's outputs for X (probabilities for classifiers)."""
        check_is_fitted(self, "model_")
        self._pull_coefs()
        X = self._validate_X(X, reset=False, dtype=self.model_.dtype)
        with self._threads():
            return self._outputs(X)

    def _outputs(self, X):
        return self.model_.predict(X)

    def _stratify(self):
        return False

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        return tags


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """Multi-layer perceptron classifier, scikit-learn's MLPClassifier trained by fusenn.

    Parameters are scikit-learn's (solver "lbfgs", "sgd" or "adam"), plus
    `dtype` (None: the network computes in X's float dtype, float32 staying
    float32 and anything else float64, as scikit-learn; or "float32" /
    "float64") and `n_threads` (None: fusenn's thread count, or in a joblib or
    dask worker its share of the cores, fusenn.distributed.worker_threads; else
    the number of kernel threads for fit and predict). Binary targets train one
    sigmoid output with binary cross-entropy, more classes a softmax output with
    cross-entropy, multi-label indicator matrices one sigmoid output per
    label. Sparse X is made dense. `model_` is the underlying fusenn.Sequential.
    """

    def fit(self, X, y, sample_weight=None):
        """Train on (X, y) with the solver; returns self.

        sample_weight: one non-negative weight per sample, or None (all 1);
        scikit-learn's semantics (see the module's docstring)."""
        return self._fit(X, y, sample_weight, incremental=False)

    @available_if(_BaseMLP._stochastic_solver)
    def partial_fit(self, X, y, sample_weight=None, classes=None):
        """One epoch over (X, y); `classes` (all the labels) is required on the first
        call, and must not change later. sample_weight as in fit."""
        known = getattr(self, "classes_", None)
        if known is None and classes is None:
            raise ValueError("classes must be passed on the first call to partial_fit.")
        if known is not None and classes is not None and not np.array_equal(
                known, unique_labels(classes)):
            raise ValueError(f"`classes={classes!r}` is not the same as on last call to "
                             f"partial_fit, was: {known!r}")
        return self._fit(X, y, sample_weight, incremental=True, classes=classes)

    def _validate_fit_data(self, X, y, dtype, incremental, first_pass, classes):
        X, y = validate_data(self, X, y, accept_sparse=("csr", "csc"), multi_output=True,
                             dtype=dtype, reset=first_pass)
        X = X.toarray() if scipy.sparse.issparse(X) else X
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        check_classification_targets(y)
        multilabel = type_of_target(y) == "multilabel-indicator"
        # scikit-learn's rule: classes are (re)defined unless continuing
        if not hasattr(self, "classes_") or (not self.warm_start and not incremental):
            self._multilabel = multilabel
            if classes is not None:
                self.classes_ = unique_labels(classes)
            elif multilabel:
                self.classes_ = np.arange(y.shape[1])
            else:
                self.classes_ = unique_labels(y)
            if multilabel and y.shape[1] != len(self.classes_):
                raise ValueError(f"y has {y.shape[1]} labels, `classes` {len(self.classes_)}")
            if not multilabel and np.setdiff1d(unique_labels(y), self.classes_).size:
                raise ValueError(f"`y` has classes not in `classes`: {self.classes_}")
        elif multilabel != self._multilabel or (multilabel and y.shape[1] != len(self.classes_)):
            raise ValueError("y must have the same kind of targets (and number of labels) "
                             "as in the previous call to fit")
        elif not multilabel:
            present = unique_labels(y)
            if self.warm_start:
                if set(present) != set(self.classes_):
                    raise ValueError(
                        f"warm_start can only be used where `y` has the same classes as in "
                        f"the previous call to fit. Previously got {self.classes_}, `y` has "
                        f"{present}")
            elif np.setdiff1d(present, self.classes_).size:
                raise ValueError(f"`y` has classes not in `self.classes_`. "
                                 f"`self.classes_` has {self.classes_}. 'y' has {present}.")
        return X, self._encode(y, X.dtype)

    def _encode(self, y, dtype):
        """The targets as the network trains on them."""
        if self._multilabel:
            return np.ascontiguousarray(y, dtype=dtype)
        index = np.searchsorted(self.classes_, y)
        k = len(self.classes_)
        if k <= 2:  # one sigmoid unit: the probability of classes_[1]
            return (index == 1).astype(dtype).reshape(-1, 1)
        return index.astype(np.int64)

    def _network_targets(self, y):
        """Targets for the network; scikit-learn's one-hot class columns become
        class indices for the softmax output."""
        if self.model_.loss.targets == "labels":
            y = np.asarray(y)
            return np.argmax(y, axis=1) if y.ndim == 2 else y
        return np.asarray(y, dtype=self.model_.dtype)

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

    def _stratify(self):
        return self._n_outputs == 1 and not self._multilabel

    def _decode(self, P):
        if self._multilabel:
            return (P > 0.5).astype(int)
        if P.shape[1] == 1:
            return self.classes_[(P[:, 0] > 0.5).astype(np.intp) if len(self.classes_) == 2
                                 else np.zeros(len(P), dtype=np.intp)]
        return self.classes_[np.argmax(P, axis=1)]

    def _val_score(self, X_val, y_val, w_val):
        P = self._val_outputs(X_val)
        if P is None:
            return float("nan")
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
        """Class probabilities, shape (n_samples, n_classes), columns in classes_
        order, in the network's dtype."""
        P = self._forward(X)
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

    loss="squared_error": identity outputs with fusenn's "mse" loss;
    loss="poisson": identity outputs read as log-rates with fusenn's "poisson"
    loss, predict returning their exp (scikit-learn's exp output; y >= 0).
    y may be 2-D (multi-output). Other parameters as MLPClassifier's (loss is
    keyword-only here: scikit-learn takes it as the first positional argument).
    `model_` is the underlying fusenn.Sequential.
    """

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, loss="squared_error",
                 solver="adam", alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000,
                 dtype=None, n_threads=None):
        super().__init__(
            hidden_layer_sizes, activation, solver=solver, alpha=alpha, batch_size=batch_size,
            learning_rate=learning_rate, learning_rate_init=learning_rate_init, power_t=power_t,
            max_iter=max_iter, shuffle=shuffle, random_state=random_state, tol=tol,
            verbose=verbose, warm_start=warm_start, momentum=momentum,
            nesterovs_momentum=nesterovs_momentum, early_stopping=early_stopping,
            validation_fraction=validation_fraction, beta_1=beta_1, beta_2=beta_2,
            epsilon=epsilon, n_iter_no_change=n_iter_no_change, max_fun=max_fun, dtype=dtype,
            n_threads=n_threads)
        self.loss = loss

    def fit(self, X, y, sample_weight=None):
        """Train on (X, y) with the solver; returns self.

        sample_weight: one non-negative weight per sample, or None (all 1);
        scikit-learn's semantics (see the module's docstring)."""
        return self._fit(X, y, sample_weight, incremental=False)

    @available_if(_BaseMLP._stochastic_solver)
    def partial_fit(self, X, y, sample_weight=None):
        """One epoch over (X, y); sample_weight as in fit."""
        return self._fit(X, y, sample_weight, incremental=True)

    def _check_params(self):
        if self.loss not in _REGRESSION_LOSSES:
            raise ValueError(f"loss must be 'squared_error' or 'poisson', got {self.loss!r}")
        return super()._check_params()

    def _validate_fit_data(self, X, y, dtype, incremental, first_pass, classes):
        X, y = validate_data(self, X, y, accept_sparse=("csr", "csc"), multi_output=True,
                             y_numeric=True, dtype=dtype, reset=first_pass)
        X = X.toarray() if scipy.sparse.issparse(X) else X
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        Y = np.ascontiguousarray(y.reshape(len(y), -1), dtype=X.dtype)
        if self.loss == "poisson" and np.any(Y < 0):
            raise ValueError("loss='poisson' needs y >= 0 (counts or rates)")
        if not hasattr(self, "_n_targets") or first_pass:
            self._n_targets = Y.shape[1]
        elif Y.shape[1] != self._n_targets:
            raise ValueError(f"y must have {self._n_targets} target column(s) as in the "
                             f"previous call to fit, got {Y.shape[1]}")
        return X, Y

    def _network_targets(self, y):
        y = np.asarray(y, dtype=self.model_.dtype)
        return y.reshape(len(y), -1)

    @property
    def _n_outputs(self):
        return self._n_targets

    def _output(self):
        k = self._n_targets
        if self.loss == "poisson":
            # fusenn's poisson: mean over all elements of exp(z) - y z, gradient
            # (exp(z) - y) / (n k); scikit-learn's: summed over the outputs
            self._loss_scale = self._grad_scale = 1.0 / k
            return k, "identity", "poisson"
        # fusenn's mse: mean over all elements of (p - y)^2, gradient 2 (p - y) / (n k);
        # scikit-learn's: half of that loss, gradient (p - y) / n
        self._loss_scale = 2.0
        self._grad_scale = 2.0 / k
        return k, "identity", "mse"

    def _loss_offsets(self, target):
        """Half the Poisson deviance has y log(y) - y per output beyond fusenn's loss."""
        if self.loss != "poisson":
            return None
        Y = target.astype(np.float64)
        return (xlogy(Y, Y) - Y).sum(axis=1)

    def _outputs(self, X):
        out = self.model_.predict(X)
        if self.loss == "poisson":
            with np.errstate(over="ignore"):
                np.exp(out, out=out)
        return out

    def _val_score(self, X_val, y_val, w_val):
        out = self._val_outputs(X_val)
        if out is None:
            return float("nan")
        with np.errstate(over="ignore", invalid="ignore"):  # huge outputs score -inf or NaN
            return float(r2_score(y_val, out, sample_weight=w_val))

    def predict(self, X):
        """The predicted values in the network's dtype: shape (n_samples,) for one
        target, else (n_samples, n_targets)."""
        out = self._forward(X)
        return out.ravel() if out.shape[1] == 1 else out

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.positive_only = self.loss == "poisson"
        return tags
