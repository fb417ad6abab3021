r"""
1. A neuron: weights, bias, activation
======================================

A neuron takes inputs :math:`x_1, \dots, x_n`, multiplies each by a weight,
adds a bias, and passes the sum through an *activation function*:

.. math::

    z = w_1 x_1 + \dots + w_n x_n + b = \mathbf{w} \cdot \mathbf{x} + b,
    \qquad a = \sigma(z) = \frac{1}{1 + e^{-z}}.

The weights say how much each input counts (and in which direction), the bias
shifts the point at which the neuron switches on, and the activation (here the
sigmoid) squashes the sum into the interval (0, 1).
"""

# %%
# In NumPy the formulas read as they are written:

import numpy as np

x = np.array([0.5, -1.0, 2.0])    # three inputs
w = np.array([0.8, 0.2, -0.5])    # one weight per input
b = 0.1                           # the bias

z = w @ x + b                     # the weighted sum
a = 1 / (1 + np.exp(-z))          # the sigmoid activation
print(f"z = {z:.4f}, a = {a:.4f}")

# %%
# With fusenn
# -----------
# A neuron is a layer of one unit: ``Dense(1, activation="sigmoid")``. fusenn
# stores a layer's weights as a matrix ``W`` of shape (inputs, units), as
# Keras does, and its bias as a vector ``b`` of shape (units,). A model with
# that one layer computes the same number for a *batch* of inputs, one row per
# sample:

import fusenn

model = fusenn.Sequential([fusenn.Dense(1, activation="sigmoid")],
                          input_dim=3, dtype="float64")
model.set_weights([w.reshape(3, 1), np.array([b])])     # W (3, 1), b (1,)
print("fusenn:", model.predict(x.reshape(1, 3)))         # a batch of one sample

# %%
# Underneath, the model calls fusenn's C kernel ``fusenn.ops.dense_forward``,
# which computes ``activation(x @ W + b)`` for a whole batch in one pass. Its
# twin ``fusenn.reference.dense_forward`` does the same in plain NumPy; every
# kernel in ``fusenn.ops`` has such a twin, with the same name and arguments,
# and the tests hold the two to the same results.

from fusenn import ops, reference

X = x.reshape(1, 3)
W = w.reshape(3, 1)
print("C kernel:       ", ops.dense_forward(X, W, np.array([b]), "sigmoid"))
print("NumPy reference:", reference.dense_forward(X, W, np.array([b]), "sigmoid"))

# %%
# What a neuron computes
# ----------------------
# With two inputs we can draw a neuron's output over the whole input plane.
# The output is 0.5 on the line :math:`\mathbf{w} \cdot \mathbf{x} + b = 0`,
# grows towards 1 in the direction of :math:`\mathbf{w}` and falls towards 0
# in the other: a single neuron separates the plane with a straight line. The
# weights set the line's direction and steepness, the bias moves it.

import matplotlib.pyplot as plt

neuron = fusenn.Sequential([fusenn.Dense(1, activation="sigmoid")], input_dim=2,
                           dtype="float64")
grid = np.linspace(-3, 3, 121)
points = np.array([[u, v] for v in grid for u in grid])        # (x1, x2) on a grid

fig, axes = plt.subplots(1, 2, figsize=(9, 4), sharey=True)
for ax, (w_pair, bias) in zip(axes, [((1.0, 2.0), 0.0), ((3.0, 1.0), -2.0)]):
    neuron.set_weights([np.array(w_pair).reshape(2, 1), np.array([bias])])
    out = neuron.predict(points).reshape(len(grid), len(grid))
    image = ax.imshow(out, origin="lower", extent=(-3, 3, -3, 3), cmap="RdBu_r",
                      vmin=0, vmax=1)
    ax.contour(grid, grid, out, levels=[0.5], colors="k", linewidths=1)
    ax.arrow(0, 0, *w_pair, width=0.04, color="k", length_includes_head=True)
    ax.set_title(f"w = {w_pair}, b = {bias}")
    ax.set_xlabel("$x_1$")
axes[0].set_ylabel("$x_2$")
fig.colorbar(image, ax=axes, label="neuron output a")
plt.show()

# %%
# The arrow is the weight vector. A neuron can therefore tell apart only
# classes that a straight line separates; the next section stacks neurons into
# layers, which removes that limit.
