r"""
9. Then CNNs and RNNs
=====================

A dense layer connects every input to every neuron and knows nothing about
where an input sits. Two kinds of layers build that knowledge in.

**Convolutional networks (CNNs)** read images. A convolutional layer slides
small *filters* (here 3x3 pixels) over the image; at each position a filter
computes a neuron's weighted sum of the pixels under it,

.. math::

    y_{i,j,f} = \operatorname{ReLU}\Big(\sum_{u,v,c} x_{i+u,\,j+v,\,c}\, K_{u,v,c,f} + b_f\Big),

so one filter's few weights are shared by every position, and its output, a
*feature map*, says where in the image the filter's pattern occurs. A
*pooling* layer then keeps the largest value of each 2x2 block, halving the
map's size.

**Recurrent networks (RNNs)** read sequences, one step at a time, carrying a
*state* :math:`\mathbf{h}_t` from step to step:

.. math::

    \mathbf{h}_t = \tanh(\mathbf{x}_t W + \mathbf{h}_{t-1} U + \mathbf{b}),
    \qquad \mathbf{h}_0 = 0.

GRU and LSTM layers add *gates*, learned sigmoids that decide what the state
keeps and what it forgets, so that it can remember over many steps.

fusenn has both kinds as layers (channels-last images and Keras's weight
layouts): ``Conv2D``, ``MaxPooling2D``, ``AveragePooling2D``, the global
poolings, ``Flatten``, ``Reshape``; ``Embedding``, ``SimpleRNN``, ``GRU`` and
``LSTM``.
"""

# %%
# A convolutional network on the digits
# -------------------------------------
# The digits as images, (n, 8, 8, 1): height, width and one (grey) channel.

import matplotlib.pyplot as plt
import numpy as np

import fusenn
from fusenn import (GRU, LSTM, Conv2D, Dense, Embedding, Flatten, MaxPooling2D,
                    SimpleRNN, ops, reference)

X, y = fusenn.datasets.load_digits(images=True)
X_train, X_test, y_train, y_test = fusenn.datasets.train_test_split(
    X, y, test_size=0.25, seed=0, stratify=y)

cnn = fusenn.Sequential([Conv2D(8, 3, padding="same", activation="relu"),  # 8 filters
                         MaxPooling2D(2),                                   # 8x8 -> 4x4
                         Flatten(),                                         # 4 * 4 * 8
                         Dense(10, activation="softmax")],
                        input_shape=(8, 8, 1), seed=0)
cnn.compile(loss="cross_entropy", optimizer=fusenn.Adam(lr=3e-3))
cnn.summary()
cnn.fit(X_train, y_train, epochs=20, batch_size=32, verbose=0)
print(cnn.evaluate(X_test, y_test))

# %%
# The convolution by hand
# -----------------------
# The first layer's feature maps for one test digit, from fusenn's C kernel
# and from the NumPy reference ("same" padding adds one row and column of
# zeros around the 8x8 image), and one value from the formula above:

conv = cnn.layers[0]
x = X_test[:1]
maps = ops.conv2d_forward(x, conv.kernel, conv.bias, padding=conv.pads,
                          activation="relu")
maps_np = reference.conv2d_forward(x, conv.kernel, conv.bias, padding=conv.pads,
                                   activation="relu")
print("feature maps:", maps.shape, " C vs NumPy reference:",
      np.abs(maps - maps_np).max())

padded = np.pad(x[0, :, :, 0], 1)
i, j, f = 3, 4, 0
window = padded[i:i + 3, j:j + 3]         # the 3x3 pixels under the filter
value = max(0.0, np.sum(window * conv.kernel[:, :, 0, f]) + conv.bias[f])
print(f"y[{i}, {j}, {f}]: kernel {maps[0, i, j, f]:.6f}, formula {value:.6f}")

# %%
# The eight learned 3x3 filters:

fusenn.plot.weights(cnn)
plt.show()

# %%
# and their feature maps for that digit:

fusenn.plot.feature_maps(cnn, X_test[0])
plt.show()

# %%
# A recurrent network on the same digits
# --------------------------------------
# Read each digit as a sequence: 8 steps, one row of 8 pixels per step. The
# network sees the rows one after the other and must remember what it saw.

S_train = X_train.reshape(-1, 8, 8)          # (n, steps, features)
S_test = X_test.reshape(-1, 8, 8)

rnn = fusenn.Sequential([SimpleRNN(32), Dense(10, activation="softmax")],
                        input_shape=(8, 8), seed=0)
rnn.compile(loss="cross_entropy", optimizer=fusenn.Adam(lr=3e-3))
rnn.fit(S_train, y_train, epochs=20, batch_size=32, verbose=0)
print("SimpleRNN:", rnn.evaluate(S_test, y_test))

# %%
# The recurrence in NumPy, step by step, gives the state that the output
# layer reads; the reference and fusenn's model agree with it:

cell, head = rnn.layers
s = S_test[:1]
h = np.zeros((1, 32), dtype=s.dtype)
for t in range(8):
    h = np.tanh(s[:, t] @ cell.kernel + h @ cell.recurrent_kernel + cell.bias)
print("reference state:", np.abs(reference.simple_rnn_forward(
    s, cell.kernel, cell.recurrent_kernel, cell.bias) - h).max())
print("predict:        ", np.abs(reference.dense_forward(h, head.W, head.b, "softmax")
                                 - rnn.predict(s)).max())

# %%
# A GRU and an LSTM of the same size, trained the same way. On sequences of 8
# steps the plain recurrence holds on well enough; the gates pay off when what
# matters lies many steps back.

for layer in (GRU(32), LSTM(32)):
    model = fusenn.Sequential([layer, Dense(10, activation="softmax")],
                              input_shape=(8, 8), seed=0)
    model.compile(loss="cross_entropy", optimizer=fusenn.Adam(lr=3e-3))
    model.fit(S_train, y_train, epochs=20, batch_size=32, verbose=0)
    print(f"{type(layer).__name__}:", model.evaluate(S_test, y_test))

# %%
# Sequences of words: Embedding
# -----------------------------
# Text arrives as integer *tokens*. An ``Embedding`` layer gives each token a
# learned vector; with ``mask_zero=True`` the token 0 is padding, so sequences
# of different lengths share a batch and the recurrent layer skips the padded
# steps. A toy task: sequences of 3 to 12 tokens from 1..9, and the label says
# whether the token 1 occurs more often than the token 2.

rng = np.random.default_rng(0)
tokens = np.zeros((3000, 12), dtype=np.int64)
for row, length in zip(tokens, rng.integers(3, 13, size=len(tokens))):
    row[:length] = rng.integers(1, 10, size=length)
more_ones = (tokens == 1).sum(axis=1) > (tokens == 2).sum(axis=1)
labels = more_ones.astype(np.float32)[:, None]
print(tokens[:3])

counter = fusenn.Sequential([Embedding(10, 8, mask_zero=True), GRU(16),
                             Dense(1, activation="sigmoid")], input_shape=(12,), seed=0)
counter.compile(loss="binary_cross_entropy", optimizer=fusenn.Adam(lr=5e-3))
history = counter.fit(tokens[:2400], labels[:2400], epochs=20, batch_size=32,
                      validation_data=(tokens[2400:], labels[2400:]), verbose=0)
print("GRU on tokens:", counter.evaluate(tokens[2400:], labels[2400:]))
fusenn.plot.history(history)
plt.show()

# %%
# Where to go from here
# ---------------------
# The :doc:`examples gallery <../auto_examples/index>` trains LeNet-5 on the
# 60,000 Fashion-MNIST images and a character-level GRU that learns to write
# like Genesis; the :doc:`user guide <../guide/index>` covers the layers'
# options, training with callbacks and learning-rate schedules, performance,
# and export to ONNX.
