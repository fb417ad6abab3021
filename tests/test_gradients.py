"""Finite-difference checks of every parameter gradient, on both backends, in float64.

How the analytic gradient is obtained: the model is compiled with
`GradientRecorder`, an Optimizer whose step() stores the gradients that
Sequential._train_step hands it and leaves the parameters alone. One
train_on_batch therefore yields exactly the gradients the real training path
computes (forward, fused loss kernel, dense_backward of every layer), with no
update and no `w_before - w_after` rounding.

The numeric gradient is the central difference of model.evaluate(X, y)["loss"]
(the same loss on the same batch) after set_weights with one entry moved by
+-EPS. Inputs, weights and biases are redrawn until every pre-activation is at
least KINK_MARGIN away from 0, so relu / leaky_relu kinks never lie inside a
difference interval.
"""

import itertools

import numpy as np
import pytest

import fusenn
from fusenn.optimizers import Optimizer

BACKENDS = ("c", "numpy")
ACTIVATIONS = fusenn.reference.ACTIVATIONS  # every one, as a hidden layer
CLASSIC = ("identity", "sigmoid", "tanh", "relu", "leaky_relu", "softmax")
OUTPUT_ACTIVATIONS = {
    "cross_entropy": ("softmax", "identity"),
    "binary_cross_entropy": ("sigmoid", "identity"),
    "mse": ACTIVATIONS,
    "mae": CLASSIC,
    "huber": CLASSIC,
    "poisson": ("identity",),
}
# |output - target| where a regression loss's derivative has a kink (huber: delta = 1)
OUTPUT_KINKS = {"mae": 0.0, "huber": 1.0}
EPS = 1e-6
KINK_MARGIN = 1e-3  # >> EPS * |x| (|x| < 5), so no perturbation crosses a kink
RTOL, ATOL = 1e-6, 2e-9  # ATOL: the difference quotient carries ~1e-10 of rounding noise


class GradientRecorder(Optimizer):
    """An "optimizer" that records the gradients it is given and never updates."""

    def step(self, backend, params, grads):
        self.grads = [np.array(g, dtype=np.float64, copy=True) for g in grads]

    def _hyperparameters(self):
        return {}


def make_targets(loss, rng, n, k):
    if loss == "cross_entropy":
        return rng.permutation(np.arange(n) % k)  # every class present
    if loss == "binary_cross_entropy":
        return rng.uniform(0.05, 0.95, size=(n, k))
    if loss == "poisson":
        return rng.poisson(2.0, size=(n, k)).astype(float)
    return rng.normal(size=(n, k))


def pre_activations(X, weights):
    """z = h @ W + b of every layer, h running through the layers' activations."""
    zs, h = [], X
    for W, b, act in weights:
        z = h @ W + b
        zs.append(z)
        h = fusenn.reference.activation_forward(z, act)
    return zs


def kink_free_problem(sizes, activations, loss, n, seed):
    """(X, y, [W1, b1, ...]) with every pre-activation at least KINK_MARGIN from 0
    (and every |output - target| as far from the loss's kink, for mae and huber).

    Candidates are drawn from consecutive seeds, so the result is deterministic.
    """
    for attempt in itertools.count():
        rng = np.random.default_rng([seed, attempt])
        X = rng.normal(size=(n, sizes[0]))
        weights = [(rng.normal(scale=1 / np.sqrt(d_in), size=(d_in, d_out)),
                    rng.normal(scale=0.3, size=d_out), act)
                   for d_in, d_out, act in zip(sizes[:-1], sizes[1:], activations)]
        zs = pre_activations(X, weights)
        if all(np.abs(z).min() > KINK_MARGIN for z in zs):
            y = make_targets(loss, rng, n, sizes[-1])
            out = fusenn.reference.activation_forward(zs[-1], activations[-1])
            if loss in OUTPUT_KINKS and (np.abs(np.abs(out - y) - OUTPUT_KINKS[loss]).min()
                                         <= KINK_MARGIN):
                continue
            # mae's output gradient is +-1/(n k): its column sums (b2's gradient) can cancel
            # exactly, and then the check would compare zeros
            if loss == "mae" and np.abs(fusenn.reference.activation_backward(
                    out, np.sign(out - y), activations[-1]).sum(axis=0)).min() < 1e-3:
                continue
            return X, y, [a for W, b, _ in weights for a in (W, b)]
        assert attempt < 1000, "could not draw a kink-free problem"


def build_model(sizes, activations, loss, backend):
    layers = [fusenn.Dense(units, act) for units, act in zip(sizes[1:], activations)]
    model = fusenn.Sequential(layers, input_dim=sizes[0], dtype="float64", seed=0,
                              backend=backend)
    model.compile(loss=loss, optimizer=GradientRecorder())
    return model


def analytic_gradients(model, X, y, weights):
    model.set_weights(weights)
    model.train_on_batch(X, y)
    return model.optimizer.grads


def numeric_gradients(model, X, y, weights):
    """Central differences of the batch loss with respect to every entry of every array."""
    def loss_at(i, index, delta):
        moved = [w.copy() for w in weights]
        moved[i][index] += delta
        model.set_weights(moved)
        return model.evaluate(X, y)["loss"]

    grads = []
    for i, w in enumerate(weights):
        g = np.empty_like(w)
        for index in np.ndindex(w.shape):
            g[index] = (loss_at(i, index, EPS) - loss_at(i, index, -EPS)) / (2 * EPS)
        grads.append(g)
    return grads


def check_gradients(sizes, activations, loss, backend, n, seed):
    X, y, weights = kink_free_problem(sizes, activations, loss, n, seed)
    model = build_model(sizes, activations, loss, backend)
    analytic = analytic_gradients(model, X, y, weights)
    numeric = numeric_gradients(model, X, y, weights)
    assert len(analytic) == len(numeric) == 2 * (len(sizes) - 1)
    for i, (a, g) in enumerate(zip(analytic, numeric)):
        assert a.shape == weights[i].shape
        name = f"{'Wb'[i % 2]}{i // 2 + 1}"
        np.testing.assert_allclose(a, g, rtol=RTOL, atol=ATOL, err_msg=f"gradient of {name}")
        # the comparison means something only if the gradient is not (almost) all zero
        assert np.abs(g).max() > 1e-5, f"the gradient of {name} vanishes: a useless check"


ACTIVATION_LOSS_CASES = [
    (hidden, output, loss)
    for loss, outputs in OUTPUT_ACTIVATIONS.items()
    for output in outputs
    for hidden in ACTIVATIONS
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("hidden,output,loss", ACTIVATION_LOSS_CASES,
                         ids=["-".join(case) for case in ACTIVATION_LOSS_CASES])
def test_two_layer_gradients(hidden, output, loss, backend):
    check_gradients(sizes=(5, 4, 3), activations=(hidden, output), loss=loss,
                    backend=backend, n=6, seed=ACTIVATION_LOSS_CASES.index((hidden, output, loss)))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("activations", [("tanh", "relu", "softmax"),
                                         ("gelu", "swish", "softmax"),
                                         ("elu", "gelu_tanh", "identity")])
def test_three_layer_gradients(backend, activations):
    check_gradients(sizes=(6, 5, 4, 3), activations=activations,
                    loss="cross_entropy", backend=backend, n=8, seed=12345)
