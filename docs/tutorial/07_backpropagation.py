r"""
7. Backpropagation
==================

Gradient descent needs the loss's derivative with respect to every weight.
*Backpropagation* computes all of them with the chain rule, going backwards
from the loss through the layers, reusing what the forward pass computed.

Take a network with one sigmoid hidden layer and a softmax output, and a
batch :math:`X` of :math:`n` samples with labels :math:`y`:

.. math::

    Z_1 = X W_1 + \mathbf{b}_1, \quad H = \sigma(Z_1), \quad
    Z_2 = H W_2 + \mathbf{b}_2,

    P = \operatorname{softmax}(Z_2), \quad
    L = \frac{1}{n} \sum_i -\log P_{i, y_i}.

The chain rule, one layer at a time from the output back (:math:`Y` is the
one-hot matrix of the labels, :math:`\odot` the elementwise product):

.. math::
    :nowrap:

    \[\begin{aligned}
    \frac{\partial L}{\partial Z_2} &= \frac{1}{n} (P - Y)
    && \text{softmax and cross-entropy together} \\
    \frac{\partial L}{\partial W_2} &= H^\top \frac{\partial L}{\partial Z_2}, \quad
    \frac{\partial L}{\partial \mathbf{b}_2} = \sum_i \Big(\frac{\partial L}{\partial Z_2}\Big)_i
    && \text{since } Z_2 = H W_2 + \mathbf{b}_2 \\
    \frac{\partial L}{\partial H} &= \frac{\partial L}{\partial Z_2} W_2^\top
    && \text{the gradient passed back} \\
    \frac{\partial L}{\partial Z_1} &= \frac{\partial L}{\partial H} \odot H \odot (1 - H)
    && \sigma' = \sigma (1 - \sigma) \\
    \frac{\partial L}{\partial W_1} &= X^\top \frac{\partial L}{\partial Z_1}, \quad
    \frac{\partial L}{\partial \mathbf{b}_1} = \sum_i \Big(\frac{\partial L}{\partial Z_1}\Big)_i.
    \end{aligned}\]

Each layer needs only the gradient of its output and what it saw in the
forward pass; it returns the gradients of its weights and of its input.
"""

# %%
# A small network and a batch
# ---------------------------
# 4 inputs, 5 sigmoid hidden neurons, 3 classes, in float64 so that the
# finite differences below are accurate.

import matplotlib.pyplot as plt
import numpy as np

import fusenn
from fusenn import ops, reference

rng = np.random.default_rng(1)
X = rng.normal(size=(8, 4))
y = rng.integers(0, 3, size=8)

model = fusenn.Sequential([fusenn.Dense(5, activation="sigmoid"),
                           fusenn.Dense(3, activation="softmax")],
                          input_dim=4, dtype="float64", seed=0)
model.compile(loss="cross_entropy", optimizer=fusenn.SGD(lr=0.1))
W1, b1, W2, b2 = model.get_weights()

# %%
# The chain rule in NumPy
# -----------------------
# The equations above, line by line:

n = len(X)
H = 1 / (1 + np.exp(-(X @ W1 + b1)))                 # forward
Z2 = H @ W2 + b2
P = np.exp(Z2) / np.exp(Z2).sum(axis=1, keepdims=True)
Y = np.eye(3)[y]

dZ2 = (P - Y) / n                                     # backward
dW2, db2 = H.T @ dZ2, dZ2.sum(axis=0)
dH = dZ2 @ W2.T
dZ1 = dH * H * (1 - H)
dW1, db1 = X.T @ dZ1, dZ1.sum(axis=0)
by_hand = [dW1, db1, dW2, db2]

# %%
# With fusenn's kernels and with the reference
# --------------------------------------------
# fusenn's layers do exactly this: the fused loss kernel returns
# :math:`\partial L / \partial Z_2`, and each layer's ``dense_backward``
# returns the gradients of its weights, its bias and its input. The first
# layer needs no input gradient (``need_dx=False``).


def gradients(backend):
    H = backend.dense_forward(X, W1, b1, "sigmoid")
    Z2 = backend.dense_forward(H, W2, b2, "identity")          # the logits
    loss, P, dZ2 = backend.softmax_cross_entropy(Z2, y)
    dW2, db2, dH = backend.dense_backward(H, W2, Z2, dZ2, "identity")
    dW1, db1, _ = backend.dense_backward(X, W1, H, dH, "sigmoid", need_dx=False)
    return [dW1, db1, dW2, db2]


names = ["W1", "b1", "W2", "b2"]
for label, backend in [("C kernels", ops), ("NumPy reference", reference)]:
    grads = gradients(backend)
    print(f"{label:16s} vs by hand:",
          ", ".join(f"{name} {np.abs(g - h).max():.1e}"
                    for name, g, h in zip(names, grads, by_hand)))

# %%
# Checked against finite differences
# ----------------------------------
# A derivative is a limit of differences:
# :math:`\partial L / \partial w \approx (L(w + \epsilon) - L(w - \epsilon)) / 2\epsilon`.
# Nudging each of the 43 parameters in turn and asking the model for its loss
# (``model.evaluate``) gives every gradient entry independently of the chain
# rule, with an error of order :math:`\epsilon^2`.

eps = 1e-5
weights = model.get_weights()
numeric = []
for k, w in enumerate(weights):
    g = np.zeros_like(w)
    for index in np.ndindex(w.shape):
        losses = []
        for sign in (+1, -1):
            nudged = [v.copy() for v in weights]
            nudged[k][index] += sign * eps
            model.set_weights(nudged)
            losses.append(model.evaluate(X, y)["loss"])
        g[index] = (losses[0] - losses[1]) / (2 * eps)
    numeric.append(g)
model.set_weights(weights)

analytic = np.concatenate([g.ravel() for g in gradients(ops)])
numeric = np.concatenate([g.ravel() for g in numeric])
relative = np.abs(analytic - numeric).max() / np.abs(analytic).max()
print(f"{analytic.size} gradient entries; largest relative difference {relative:.1e}")

fig, ax = plt.subplots(figsize=(5, 5))
ax.plot(numeric, analytic, "o", markersize=5)
lim = 1.1 * np.abs(analytic).max()
ax.plot([-lim, lim], [-lim, lim], color="gray", linewidth=0.8)
ax.set_xlabel("finite differences")
ax.set_ylabel("backpropagation (fusenn's kernels)")
ax.set_title("every gradient entry of the 2-layer net")
plt.show()

# %%
# What a training step does with them
# -----------------------------------
# One step of plain SGD moves every weight by :math:`-\eta` times its
# gradient. ``train_on_batch`` runs forward, backward and update in fusenn's C
# engine; the weights it leaves are the ones the gradients above predict:

lr = model.optimizer.lr
model.train_on_batch(X, y)
expected = [w - lr * g for w, g in zip(weights, gradients(ops))]
print("after one step:", max(np.abs(w - e).max()
                             for w, e in zip(model.get_weights(), expected)))
