r"""
2. Layers: input, hidden, output
================================

Neurons side by side that read the same inputs form a *layer*. With one
column of weights per neuron, the whole layer is one matrix product:

.. math::

    \mathbf{a} = \sigma(\mathbf{x} W + \mathbf{b}), \qquad
    W \in \mathbb{R}^{n_\text{in} \times n_\text{units}}, \;
    \mathbf{b} \in \mathbb{R}^{n_\text{units}}.

A network stacks layers: each layer's outputs are the next one's inputs.

* The **input layer** is the data itself: here the 64 pixels of an 8x8
  handwritten digit. It has no weights.
* **Hidden layers** compute intermediate features nobody prescribes; training
  finds them.
* The **output layer** has one neuron per answer: ten for the ten digits,
  with a *softmax* activation that turns their sums into probabilities.
"""

# %%
# The digits
# ----------
# fusenn ships the 1,797 8x8 handwritten digits of the UCI "Optical
# Recognition of Handwritten Digits" data set, with pixel values scaled to
# [0, 1].

import matplotlib.pyplot as plt
import numpy as np

import fusenn

# sphinx_gallery_thumbnail_number = 2

X, y = fusenn.datasets.load_digits()
print(X.shape, y.shape)          # 1797 samples of 64 pixels, one label each

fig, axes = plt.subplots(1, 10, figsize=(10, 1.4))
for digit, ax in enumerate(axes):
    ax.imshow(X[y == digit][0].reshape(8, 8), cmap="gray_r")
    ax.set_title(str(digit))
    ax.set_axis_off()
plt.show()

# %%
# A network of three layers
# -------------------------
# 64 inputs, a hidden layer of 16 sigmoid neurons, and 10 softmax outputs:

model = fusenn.Sequential([fusenn.Dense(16, activation="sigmoid"),    # hidden
                           fusenn.Dense(10, activation="softmax")],   # output
                          input_dim=64, seed=0)
model.summary()

# %%
# Each layer holds its weight matrix and bias vector. The hidden layer has
# 64 x 16 weights and 16 biases, the output layer 16 x 10 weights and 10
# biases: 1,210 parameters in all.

for layer in model.layers:
    print(f"{layer}: W {layer.W.shape}, b {layer.b.shape}")

# %%
# The network's output is the two layers applied in turn. Computed by hand
# with the NumPy reference, for the first five digits, it matches
# ``model.predict`` (which runs fusenn's C kernels):

from fusenn import reference

hidden, output = model.layers
h = reference.dense_forward(X[:5], hidden.W, hidden.b, "sigmoid")     # (5, 16)
p = reference.dense_forward(h, output.W, output.b, "softmax")         # (5, 10)
print("by hand:", p[0].round(3))
print("predict:", model.predict(X[:5])[0].round(3))
print("largest difference:", np.abs(p - model.predict(X[:5])).max())
print("each row sums to 1:", p.sum(axis=1))

# %%
# The softmax in plain NumPy reads like its formula,
# :math:`p_k = e^{z_k} / \sum_j e^{z_j}` (subtracting the largest :math:`z`
# first changes nothing mathematically and keeps ``exp`` from overflowing):

z = reference.dense_forward(h, output.W, output.b, "identity")   # the output's sums
e = np.exp(z - z.max(axis=1, keepdims=True))
print(np.abs(e / e.sum(axis=1, keepdims=True) - p).max())

# %%
# The weights are still random, so these probabilities mean nothing yet.
# Sections 5 to 8 show how training sets the weights.
#
# A picture of the network
# ------------------------
# Every line below is one weight (only some of the 64 inputs are drawn); its
# colour is the weight's sign and its width the weight's size.

fig, ax = plt.subplots(figsize=(8, 4.5))
shown = {0: np.arange(0, 64, 4), 1: np.arange(16), 2: np.arange(10)}   # neurons drawn
xpos = {0: 0.0, 1: 1.0, 2: 2.0}
ypos = {k: np.linspace(0, 1, len(v)) for k, v in shown.items()}
for k, layer in enumerate(model.layers):
    big = np.abs(layer.W).max()
    for i, src in enumerate(shown[k]):
        for j, dst in enumerate(shown[k + 1]):
            weight = layer.W[src, dst]
            ax.plot([xpos[k], xpos[k + 1]], [ypos[k][i], ypos[k + 1][j]],
                    color="tab:red" if weight > 0 else "tab:blue",
                    linewidth=1.5 * abs(weight) / big, alpha=0.5)
for k, name in enumerate(["input: 64 pixels\n(every 4th drawn)", "hidden: 16 sigmoid",
                          "output: 10 softmax"]):
    ax.scatter(np.full(len(shown[k]), xpos[k]), ypos[k], s=60, color="white",
               edgecolors="k", zorder=3)
    ax.text(xpos[k], -0.12, name, ha="center", va="top")
for j in range(10):
    ax.text(2.06, ypos[2][j], str(j), va="center")
ax.set_xlim(-0.3, 2.3)
ax.set_ylim(-0.3, 1.05)
ax.set_axis_off()
plt.show()
