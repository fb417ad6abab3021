r"""
4. The feed-forward pass on one digit
=====================================

The *feed-forward pass* is the network at work: the input goes into the first
layer, each layer's activations go into the next, and the output layer's
activations are the answer.

.. math::

    \mathbf{h}_1 = \operatorname{ReLU}(\mathbf{x} W_1 + \mathbf{b}_1), \quad
    \mathbf{h}_2 = \operatorname{ReLU}(\mathbf{h}_1 W_2 + \mathbf{b}_2), \quad
    \mathbf{p} = \operatorname{softmax}(\mathbf{h}_2 W_3 + \mathbf{b}_3).

Here we follow one handwritten digit through a trained network of two hidden
layers and look at every layer's activations.
"""

# %%
# A trained network
# -----------------
# Training is the subject of sections 5 to 8; here it is one call to ``fit``
# (a second or less).

import matplotlib.pyplot as plt
import numpy as np

import fusenn
from fusenn import ops, reference

X, y = fusenn.datasets.load_digits()
X_train, X_test, y_train, y_test = fusenn.datasets.train_test_split(
    X, y, test_size=0.25, seed=0, stratify=y)

model = fusenn.Sequential([fusenn.Dense(32, activation="relu"),
                           fusenn.Dense(16, activation="relu"),
                           fusenn.Dense(10, activation="softmax")],
                          input_dim=64, seed=0)
model.compile(loss="cross_entropy", optimizer=fusenn.SGD(lr=0.05, momentum=0.9))
model.fit(X_train, y_train, epochs=30, batch_size=32, verbose=0)
print(model.evaluate(X_test, y_test))

# %%
# Layer by layer
# --------------
# Take one test digit and apply the layers in turn, with fusenn's C kernels
# (``fusenn.ops``) and with the NumPy reference: a batch of one sample, one
# ``dense_forward`` per layer.

x = X_test[:1]                          # shape (1, 64): a batch of one digit
activations_c, activations_np = [x], [x]
for layer in model.layers:
    activations_c.append(ops.dense_forward(activations_c[-1], layer.W, layer.b,
                                           layer.activation))
    activations_np.append(reference.dense_forward(activations_np[-1], layer.W, layer.b,
                                                  layer.activation))

h1, h2, p = activations_c[1:]
print("hidden 1:", h1.shape, " hidden 2:", h2.shape, " output:", p.shape)
print("C kernels vs NumPy reference:",
      max(np.abs(a - b).max() for a, b in zip(activations_c, activations_np)))
print("vs model.predict:", np.abs(p - model.predict(x)).max())
print(f"true digit {y_test[0]}, predicted {p.argmax()} with probability {p.max():.3f}")

# %%
# The NumPy reference's ``dense_forward`` is the formula itself; for a ReLU
# layer it is:

W1, b1 = model.layers[0].W, model.layers[0].b
print(np.abs(np.maximum(0, x @ W1 + b1) - h1).max())

# %%
# The activations of each layer
# -----------------------------
# From left to right: the input (64 pixels), the 32 and 16 hidden neurons
# (drawn as grids, brighter means more active; a ReLU neuron that is off is
# exactly 0), and the ten output probabilities.

fig, axes = plt.subplots(1, 4, figsize=(13, 3.2),
                         gridspec_kw={"width_ratios": [1, 1, 1, 2]})
panels = [(x, (8, 8), "input: 64 pixels"), (h1, (4, 8), "hidden 1: 32 ReLU"),
          (h2, (4, 4), "hidden 2: 16 ReLU")]
for ax, (values, shape, title) in zip(axes, panels):
    ax.imshow(values.reshape(shape), cmap="magma" if ax is not axes[0] else "gray_r")
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
axes[3].bar(range(10), p[0], color=["tab:orange" if k == p.argmax() else "tab:blue"
                                    for k in range(10)])
axes[3].set_xticks(range(10))
axes[3].set_ylim(0, 1)
axes[3].set_title("output: 10 softmax probabilities")
axes[3].set_xlabel("digit")
fig.tight_layout()
plt.show()

print(f"active neurons: {np.count_nonzero(h1)} of 32 in hidden 1, "
      f"{np.count_nonzero(h2)} of 16 in hidden 2")

# %%
# Different digits light up different neurons. The same layers for the first
# test example of each digit, one column per digit:

fig, axes = plt.subplots(3, 10, figsize=(12, 4.2))
for digit in range(10):
    sample = X_test[y_test == digit][:1]
    a1 = ops.dense_forward(sample, model.layers[0].W, model.layers[0].b, "relu")
    a2 = ops.dense_forward(a1, model.layers[1].W, model.layers[1].b, "relu")
    panels = [(sample, (8, 8), "gray_r"), (a1, (4, 8), "magma"), (a2, (4, 4), "magma")]
    for ax, (values, shape, cmap) in zip(axes[:, digit], panels):
        ax.imshow(values.reshape(shape), cmap=cmap)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, digit].set_title(str(digit))
for ax, name in zip(axes[:, 0], ["input", "hidden 1", "hidden 2"]):
    ax.set_ylabel(name)
fig.tight_layout()
plt.show()
