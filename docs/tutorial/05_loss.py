r"""
5. The loss
===========

To improve a network we first need a number that says how wrong it is: the
*loss*. For classification with softmax outputs :math:`\mathbf{p}` and the
true class :math:`y`, the usual loss is the *cross-entropy*, the negative log
of the probability given to the right answer, averaged over the batch:

.. math::

    L = \frac{1}{n} \sum_{i=1}^{n} -\log p_{i, y_i}.

It is 0 for a confident right answer and grows without bound as the right
answer's probability goes to 0. A network that guesses uniformly among 10
classes scores :math:`\log 10 \approx 2.303`.

For regression (predicting numbers) the usual loss is the *mean squared
error*, :math:`L = \frac{1}{n} \sum_i (a_i - t_i)^2`.
"""

# %%
# Cross-entropy, three ways
# -------------------------
# fusenn computes the cross-entropy from the output layer's sums *before* the
# softmax (the *logits* :math:`\mathbf{z}`), fused with the softmax: it is
# then :math:`\log \sum_k e^{z_k} - z_y`, which never takes the log of 0. The
# kernel returns the loss, the probabilities and the loss's gradient (used in
# section 7).

import matplotlib.pyplot as plt
import numpy as np

import fusenn
from fusenn import ops, reference

rng = np.random.default_rng(0)
z = rng.normal(size=(5, 10))                     # logits of 5 samples, 10 classes
labels = np.array([3, 1, 4, 1, 5])

loss_c, p, _ = ops.softmax_cross_entropy(z, labels)          # fusenn's C kernel
loss_np, _, _ = reference.softmax_cross_entropy(z, labels)   # the NumPy reference
probabilities = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
loss_math = np.mean(-np.log(probabilities[np.arange(5), labels]))   # the formula
print(loss_c, loss_np, loss_math)

# %%
# The loss of a network
# ---------------------
# ``model.evaluate`` reports the loss over a data set. An untrained network
# scores about :math:`\log 10`; training lowers it.

X, y = fusenn.datasets.load_digits()
X_train, X_test, y_train, y_test = fusenn.datasets.train_test_split(
    X, y, test_size=0.25, seed=0, stratify=y)
model = fusenn.Sequential([fusenn.Dense(32, activation="relu"),
                           fusenn.Dense(10, activation="softmax")],
                          input_dim=64, seed=0)
model.compile(loss="cross_entropy", optimizer=fusenn.SGD(lr=0.05, momentum=0.9))
print("untrained:", model.evaluate(X_test, y_test), " log(10) =", np.log(10))
model.fit(X_train, y_train, epochs=20, batch_size=32, verbose=0)
print("trained:  ", model.evaluate(X_test, y_test))

# %%
# The same number from the reference: the hidden layer, the output layer's
# logits, and the fused loss.

hidden, output = model.layers
h = reference.dense_forward(X_test, hidden.W, hidden.b, "relu")
logits = reference.dense_forward(h, output.W, output.b, "identity")
print("NumPy reference:", reference.softmax_cross_entropy(logits, y_test)[0])

# %%
# Where the loss comes from
# -------------------------
# Each test digit's loss is :math:`-\log` of the probability the network gave
# its true class. Most digits sit near the bottom right of the curve; the few
# misclassified ones (probability below about 0.5) contribute most of the
# loss.

P = model.predict(X_test)
p_true = P[np.arange(len(y_test)), y_test]
wrong = P.argmax(axis=1) != y_test
grid = np.linspace(0.005, 1, 400)

fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
axes[0].plot(grid, -np.log(grid), color="gray", label="$-\\log p$")
axes[0].scatter(p_true[~wrong], -np.log(p_true[~wrong]), s=8, label="classified right")
axes[0].scatter(p_true[wrong], -np.log(p_true[wrong]), s=20, color="tab:red",
                label="classified wrong")
axes[0].set_xlabel("probability of the true class")
axes[0].set_ylabel("loss")
axes[0].legend()
losses = -np.log(p_true)
axes[1].hist(losses, bins=40, log=True)
axes[1].set_xlabel("loss of one test digit")
axes[1].set_ylabel("number of digits")
axes[1].set_title(f"mean {losses.mean():.3f}; the {wrong.sum()} wrong ones: "
                  f"{losses[wrong].sum() / losses.sum():.0%} of the total")
fig.tight_layout()
plt.show()

# %%
# Mean squared error
# ------------------
# For numeric targets, ``loss="mse"``; the kernel returns the loss and its
# gradient :math:`2 (a - t) / n`:

a = rng.normal(size=(4, 1))
t = rng.normal(size=(4, 1))
loss_c, grad_c = ops.mse(a, t)
loss_np, grad_np = reference.mse(a, t)
print(loss_c, loss_np, np.mean((a - t) ** 2))
print(np.abs(grad_c - 2 * (a - t) / 4).max())
