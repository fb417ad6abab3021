r"""
6. Gradient descent
===================

The loss is a function of the weights. Training looks for weights where it is
small, by walking downhill: the *gradient* :math:`\nabla L(\mathbf{w})` points
in the direction in which the loss grows fastest, so each step moves the
weights a little the other way,

.. math::

    \mathbf{w} \leftarrow \mathbf{w} - \eta \, \nabla L(\mathbf{w}),

where the *learning rate* :math:`\eta` sets the step's size. A network has
thousands of weights, but with two we can draw the whole loss surface and the
path the weights take on it.
"""

# %%
# A neuron with two weights
# -------------------------
# A linear neuron :math:`a = w_1 x_1 + w_2 x_2 + b` fitted to noisy points of
# :math:`t = 2 x_1 - x_2` with the mean squared error. The inputs and targets
# have mean zero, so the best bias is 0; the bias starts at 0 and its gradient,
# the mean of the residuals, stays 0 (the first print below checks it). The
# loss then depends on :math:`w_1` and :math:`w_2` only. The second input
# varies less than the first, which stretches the loss surface into a valley.

import matplotlib.pyplot as plt
import numpy as np

import fusenn
from fusenn import reference

rng = np.random.default_rng(0)
X = rng.normal(size=(200, 2)) * [1.0, 0.35]
t = X @ [[2.0], [-1.0]] + rng.normal(scale=0.3, size=(200, 1))
X -= X.mean(axis=0)
t -= t.mean()
start = np.array([[-2.0], [2.5]])        # the weights' starting point

# %%
# With fusenn
# -----------
# ``train_on_batch`` takes one gradient-descent step on the batch it is given:
# here the whole data set, so every step follows the exact gradient. After
# each step we record the weights.


def fusenn_path(lr, momentum=0.0, steps=40):
    model = fusenn.Sequential([fusenn.Dense(1)], input_dim=2, dtype="float64")
    model.compile(loss="mse", optimizer=fusenn.SGD(lr=lr, momentum=momentum))
    model.set_weights([start, np.zeros(1)])
    path = [start.ravel()]
    for _ in range(steps):
        model.train_on_batch(X, t)
        W, b = model.get_weights()
        path.append(W.ravel())
    print(f"lr={lr}, momentum={momentum}: bias after {steps} steps {b[0]:.1e}")
    return np.array(path)


paths = {"lr 0.05": fusenn_path(0.05),
         "lr 0.8": fusenn_path(0.8),
         "lr 0.05, momentum 0.9": fusenn_path(0.05, momentum=0.9)}

# %%
# With the NumPy reference
# ------------------------
# The same steps written out: forward pass, loss and its gradient with
# respect to the output, the layer's backward pass (which gives the gradients
# of the weights and the bias, section 7), and the update
# :math:`\mathbf{w} \leftarrow \mathbf{w} - \eta \nabla L`.


def reference_path(lr, steps=40):
    W, b = start.copy(), np.zeros(1)
    path = [W.ravel().copy()]
    for _ in range(steps):
        a = reference.dense_forward(X, W, b, "identity")          # a = X W + b
        loss, da = reference.mse(a, t)                            # dL/da = 2 (a-t)/n
        dW, db, _ = reference.dense_backward(X, W, a, da, "identity", need_dx=False)
        reference.sgd_update(W, dW, None, lr)                     # W -= lr * dW
        reference.sgd_update(b, db, None, lr)
        path.append(W.ravel().copy())
    return np.array(path)


print("largest difference from fusenn's path:",
      np.abs(reference_path(0.05) - paths["lr 0.05"]).max())

# %%
# The loss surface and the paths
# ------------------------------
# The loss on a grid of :math:`(w_1, w_2)`, as contour lines, with the three
# paths. With a small learning rate the weights first slide down the steep
# side of the valley and then crawl along its floor. A large one overshoots
# across the valley and zig-zags; 0.8 still converges, and fastest here, but
# above about 1.04 (2 divided by the largest curvature of this surface) each
# zig-zag would be wider than the last and the weights would diverge. Momentum (SGD keeps a running sum of past
# gradients, :math:`\mathbf{v} \leftarrow 0.9 \mathbf{v} + \nabla L`, and steps
# along it) gathers speed along the floor and overshoots the minimum before
# settling.

w1, w2 = np.meshgrid(np.linspace(-3, 4, 141), np.linspace(-3.5, 3.5, 141))
grid = np.stack([w1.ravel(), w2.ravel()])                        # (2, points)
surface = np.mean((X @ grid - t) ** 2, axis=0).reshape(w1.shape)
best = np.linalg.lstsq(X, t, rcond=None)[0].ravel()
colors = dict(zip(paths, ["tab:blue", "tab:orange", "tab:red"]))

fig, ax = plt.subplots(figsize=(7.5, 6))
contours = ax.contour(w1, w2, surface, levels=np.geomspace(surface.min() + 0.01,
                                                           surface.max(), 14),
                      cmap="viridis", linewidths=0.8)
ax.clabel(contours, fmt="%.2g", fontsize=7)
for label, path in paths.items():
    ax.plot(path[:, 0], path[:, 1], ".-", color=colors[label], label=label,
            markersize=4)
ax.plot(*start.ravel(), "ko")
ax.annotate("start", start.ravel(), textcoords="offset points", xytext=(6, 6))
ax.plot(*best, "k*", markersize=12, label="least-squares minimum")
ax.set_xlabel("$w_1$")
ax.set_ylabel("$w_2$")
ax.set_title("mean squared error over the two weights, 40 steps each")
ax.legend(loc="lower left")
plt.show()

# %%
# The loss along each path, above the least-squares minimum's:

lowest = np.mean((X @ best[:, None] - t) ** 2)
fig, ax = plt.subplots(figsize=(7, 3.5))
for label, path in paths.items():
    ax.semilogy(np.mean((X @ path.T - t) ** 2, axis=0) - lowest, color=colors[label],
                label=label)
ax.set_xlabel("step")
ax.set_ylabel("loss - minimum loss")
ax.legend()
fig.tight_layout()
plt.show()

# %%
# With more than two weights nothing changes but the picture: the gradient
# has one entry per weight, and *backpropagation*, next, computes all of them
# at the cost of about two forward passes. Training on a random mini-batch at
# a time instead of the whole data set (*stochastic* gradient descent, what
# ``fit`` does) gives noisy but much cheaper steps.
