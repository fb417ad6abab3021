"""XOR, the function a single neuron cannot learn: 2 inputs -> 4 tanh neurons -> 1 sigmoid.
========================================================================================

From the source tree::

    python examples/xor.py [--epochs 1000]

The four input pairs are not linearly separable, so the network needs its hidden
layer. Prints the network's output for each pair and whether all four are right.
"""

import argparse
import os

import numpy as np

import fusenn


def main():
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--epochs", type=int, default=int(os.environ.get("FUSENN_EPOCHS", 1000)))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float32)
    y = np.array([[0], [1], [1], [0]], dtype=np.float32)  # x1 XOR x2

    model = fusenn.Sequential([fusenn.Dense(4, activation="tanh"),
                               fusenn.Dense(1, activation="sigmoid")],
                              input_dim=2, seed=args.seed)
    model.compile(loss="binary_cross_entropy", optimizer=fusenn.SGD(lr=0.5, momentum=0.9))
    hist = model.fit(X, y, epochs=args.epochs, batch_size=4, verbose=0)  # full batch

    out = model.predict(X)[:, 0]
    for (a, b), p, t in zip(X.astype(int), out, y[:, 0].astype(int)):
        print(f"{a} XOR {b} = {t}: network says {p:.3f} -> {int(p > 0.5)}")
    print(f"final loss: {hist.history['loss'][-1]:.4f}")
    print(f"all correct: {bool(np.all((out > 0.5) == (y[:, 0] > 0.5)))}")


if __name__ == "__main__":
    main()
