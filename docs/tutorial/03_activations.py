r"""
3. Sigmoid vs ReLU
==================

The activation is what makes a network more than one big matrix product:
without it, layers of :math:`\mathbf{x} W + \mathbf{b}` would collapse into a
single linear map. The two classic choices:

.. math::

    \sigma(z) = \frac{1}{1 + e^{-z}}, \qquad \sigma'(z) = \sigma(z)\,(1 - \sigma(z))

    \operatorname{ReLU}(z) = \max(0, z), \qquad
    \operatorname{ReLU}'(z) = \begin{cases} 1 & z > 0 \\ 0 & z \le 0 \end{cases}

The derivatives matter as much as the functions: training (sections 6 and 7)
multiplies them together, layer after layer.
"""

# %%
# Computing both
# --------------
# fusenn's kernels compute an activation with ``activation_forward(z, name)``
# and its backward pass with ``activation_backward(a, da, name)``, which
# returns ``da * act'(z)``: with ``da`` all ones, that is the derivative. The
# NumPy reference has the same two functions, and the formulas above give the
# same numbers:

import matplotlib.pyplot as plt
import numpy as np

from fusenn import ops, reference

z = np.linspace(-6, 6, 241).reshape(-1, 1)       # a column: one value per row
ones = np.ones_like(z)

curves = {}
for name in ("sigmoid", "relu"):
    a = ops.activation_forward(z, name)                      # fusenn's C kernel
    da = ops.activation_backward(a, ones, name)              # act'(z)
    a_ref = reference.activation_forward(z, name)            # the NumPy reference
    da_ref = reference.activation_backward(a_ref, ones, name)
    print(f"{name}: C vs NumPy reference differ by at most "
          f"{max(np.abs(a - a_ref).max(), np.abs(da - da_ref).max()):.1e}")
    curves[name] = a[:, 0], da[:, 0]

s = 1 / (1 + np.exp(-z))                                      # the formulas
print("sigmoid formula:", np.abs(s - curves["sigmoid"][0][:, None]).max(),
      np.abs(s * (1 - s) - curves["sigmoid"][1][:, None]).max())
print("relu formula:   ", np.abs(np.maximum(0, z) - curves["relu"][0][:, None]).max(),
      np.abs((z > 0) - curves["relu"][1][:, None]).max())

fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
for ax, name in zip(axes, ("sigmoid", "relu")):
    a, da = curves[name]
    ax.plot(z[:, 0], a, label=f"{name}(z)")
    ax.plot(z[:, 0], da, "--", label=f"{name}'(z)")
    ax.axhline(0, color="gray", linewidth=0.5)
    ax.axvline(0, color="gray", linewidth=0.5)
    ax.set_xlabel("z")
    ax.set_title(name)
    ax.legend()
axes[1].set_ylim(-0.5, 3)
plt.show()

# %%
# What the pictures say
# ---------------------
# * The sigmoid's derivative is at most 1/4 (at :math:`z = 0`) and nearly 0
#   once :math:`|z|` exceeds 4 or 5: a *saturated* sigmoid neuron barely
#   learns. Through ten sigmoid layers the derivatives alone shrink the
#   gradient by a factor of at least :math:`4^{10} \approx 10^6`: the
#   *vanishing gradient* that kept deep networks from training before ReLU.
# * ReLU's derivative is exactly 1 for every positive input, however large,
#   so gradients pass through active ReLU neurons unchanged. For negative
#   inputs it is 0: a neuron whose sum is negative for every sample is *dead*
#   and stops learning. He initialisation (fusenn's default for ReLU layers)
#   scales the first weights so that this rarely happens.
# * ReLU costs one comparison; the sigmoid an exponential.

print("sigmoid'(0) =", curves["sigmoid"][1][120], "  0.25 ** 10 =", 0.25 ** 10)

# %%
# The other activations
# ---------------------
# fusenn has the usual others too, each with its derivative in the C kernels
# and in the reference: ``tanh`` (a sigmoid stretched to (-1, 1)),
# ``leaky_relu`` (slope 0.01 below zero, so no neuron dies), ``elu``,
# ``softplus`` (a smooth ReLU), and ``gelu`` and ``swish`` (used by
# transformers). ``softmax`` works on a whole row and belongs in output
# layers.

names = ["tanh", "leaky_relu", "elu", "softplus", "gelu", "swish"]
fig, axes = plt.subplots(1, len(names), figsize=(14, 2.6), sharey=True)
z4 = np.linspace(-4, 4, 161).reshape(-1, 1)
for ax, name in zip(axes, names):
    a = ops.activation_forward(z4, name)
    # gelu and swish compute their derivative from z itself (ops.NEEDS_Z)
    da = ops.activation_backward(a, np.ones_like(z4), name, z=z4)
    ax.plot(z4[:, 0], a[:, 0], label="f(z)")
    ax.plot(z4[:, 0], da[:, 0], "--", label="f'(z)")
    ax.axhline(0, color="gray", linewidth=0.5)
    ax.set_title(name)
axes[0].legend()
axes[0].set_ylim(-1.5, 4)
plt.show()
