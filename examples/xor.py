"""XOR, the function a single neuron cannot learn
==============================================

2 inputs -> 4 tanh neurons -> 1 sigmoid.

From the source tree::

    python examples/xor.py [--epochs 1000] [--out-dir .]

The four input pairs are not linearly separable, so the network needs its hidden
layer. Prints the network's output for each pair and whether all four are right;
with matplotlib installed it also saves xor_surface.png (the network's output
over the unit square).
"""

import argparse
import os

import numpy as np

import fusenn


def main():
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--epochs", type=int, default=int(os.environ.get("FUSENN_EPOCHS", 1000)))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", default=".", help="where to save the PNG picture")
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

    try:
        import matplotlib.pyplot as plt
    except ImportError:
        return
    side = np.linspace(-0.25, 1.25, 121, dtype=np.float32)
    grid = np.array([[a, b] for b in side for a in side], dtype=np.float32)
    surface = model.predict(grid).reshape(len(side), len(side))
    fig, ax = plt.subplots(figsize=(5, 4.2))
    image = ax.imshow(surface, origin="lower", extent=(-0.25, 1.25, -0.25, 1.25),
                      cmap="RdBu_r", vmin=0, vmax=1)
    ax.contour(side, side, surface, levels=[0.5], colors="k", linewidths=1)
    ax.scatter(X[:, 0], X[:, 1], c=["black" if t else "white" for t in y[:, 0]], s=120,
               edgecolors="k")
    ax.set_xlabel("x1")
    ax.set_ylabel("x2")
    ax.set_title("network output; targets 1 black, 0 white", fontsize=10)
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    os.makedirs(args.out_dir, exist_ok=True)
    path = os.path.join(args.out_dir, "xor_surface.png")
    fig.savefig(path, dpi=100)
    print("saved", path)


if __name__ == "__main__":
    main()
