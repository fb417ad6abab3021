r"""
8. Training on the handwritten digits
=====================================

Everything so far, put together: a network reads the 8x8 digits, the
cross-entropy says how wrong it is, backpropagation gives the gradient, and
gradient descent on small random batches (*mini-batches*) of the training set
improves the weights, epoch after epoch (an *epoch* is one pass over the
training set). We keep a quarter of the digits aside to test the network on
digits it never saw.
"""

# %%
# Training with fusenn
# --------------------
# ``fit`` does all of it in fusenn's C engine: each epoch (shuffle, forward,
# loss, backward and update for every batch) is one call into C. The
# validation data are evaluated after each epoch.

import time

import matplotlib.pyplot as plt
import numpy as np

import fusenn
from fusenn import reference

# sphinx_gallery_thumbnail_number = 2

X, y = fusenn.datasets.load_digits()
X_train, X_test, y_train, y_test = fusenn.datasets.train_test_split(
    X, y, test_size=0.25, seed=0, stratify=y)


def make_model(backend):
    model = fusenn.Sequential([fusenn.Dense(32, activation="relu"),
                               fusenn.Dense(10, activation="softmax")],
                              input_dim=64, seed=0, backend=backend)
    model.compile(loss="cross_entropy", optimizer=fusenn.SGD(lr=0.05, momentum=0.9))
    return model


model = make_model("c")
start = time.perf_counter()
history = model.fit(X_train, y_train, epochs=40, batch_size=32,
                    validation_data=(X_test, y_test), verbose=0)
seconds_c = time.perf_counter() - start
print(f"40 epochs in {seconds_c:.3f} s; test set: {model.evaluate(X_test, y_test)}")

# %%
# The same model on the NumPy backend
# -----------------------------------
# ``backend="numpy"`` runs the same model through ``fusenn.reference``, one
# NumPy call per operation. Same seed, same batches, same math: the losses
# and weights agree to float32's rounding.

model_np = make_model("numpy")
start = time.perf_counter()
history_np = model_np.fit(X_train, y_train, epochs=40, batch_size=32,
                          validation_data=(X_test, y_test), verbose=0)
seconds_np = time.perf_counter() - start
print(f"NumPy backend: {seconds_np:.3f} s, {seconds_np / seconds_c:.1f}x fusenn's time")
print("largest difference of the epoch losses:",
      np.abs(np.subtract(history.history["loss"], history_np.history["loss"])).max())
pairs = zip(model.get_weights(), model_np.get_weights())
print("largest difference of the weights:", max(np.abs(a - b).max() for a, b in pairs))

# %%
# What ``fit`` does, written out
# ------------------------------
# The training loop in plain NumPy with the reference's kernels: shuffle, then
# for each mini-batch a forward pass, the loss's gradient, a backward pass and
# an SGD-with-momentum step per parameter. (It draws its own shuffles, so its
# numbers differ a little from ``fit``'s.)

rng = np.random.default_rng(0)
template = make_model("numpy")                    # only for its initial weights
W1, b1, W2, b2 = template.get_weights()
params = [W1, b1, W2, b2]
velocity = [np.zeros_like(p) for p in params]
for epoch in range(40):
    order = rng.permutation(len(X_train))
    for first in range(0, len(order), 32):
        batch = order[first:first + 32]
        x, labels = X_train[batch], y_train[batch]
        h = reference.dense_forward(x, W1, b1, "relu")
        z = reference.dense_forward(h, W2, b2, "identity")
        loss, p, dz = reference.softmax_cross_entropy(z, labels)
        dW2, db2, dh = reference.dense_backward(h, W2, z, dz, "identity")
        dW1, db1, _ = reference.dense_backward(x, W1, h, dh, "relu", need_dx=False)
        for param, grad, v in zip(params, [dW1, db1, dW2, db2], velocity):
            reference.sgd_update(param, grad, v, lr=0.05, momentum=0.9)

h = reference.dense_forward(X_test, W1, b1, "relu")
predicted = reference.dense_forward(h, W2, b2, "softmax").argmax(axis=1)
print(f"the loop's test accuracy: {np.mean(predicted == y_test):.4f}")

# %%
# Learning curves
# ---------------
# ``fusenn.plot.history`` draws the loss and accuracy per epoch, on the
# training batches (measured during the epoch, before each update) and on the
# test set. The training loss keeps falling; the test loss levels off, and the
# gap between the two is how much the network fits its training digits better
# than new ones.

fusenn.plot.history(history)
plt.show()

# %%
# The first layer's neurons
# -------------------------
# Each hidden neuron has one weight per pixel, so its 64 weights can be drawn
# as an 8x8 picture: red pixels excite the neuron, blue ones inhibit it. These
# are the strokes and blobs the network learned to look for.

fusenn.plot.weights(model.layers[0], shape=(8, 8))
plt.show()

# %%
# The confusion matrix
# --------------------
# Rows are the true digits, columns the predicted ones: the diagonal holds the
# digits classified right, everything else a mistake, telling which digits the
# network confuses.

P = model.predict(X_test)
fusenn.plot.confusion_matrix(y_test, P, labels=np.arange(10))
plt.show()

# %%
# And the mistakes themselves:

wrong = np.flatnonzero(P.argmax(axis=1) != y_test)
fig, axes = plt.subplots(1, min(len(wrong), 10), figsize=(10, 1.6), squeeze=False)
for ax, i in zip(axes[0], wrong):
    ax.imshow(X_test[i].reshape(8, 8), cmap="gray_r")
    ax.set_title(f"{y_test[i]} as {P[i].argmax()}", fontsize=9)
    ax.set_axis_off()
plt.show()
