"""Regression: a sine from noisy samples
=====================================

Fits y = sin(x) with 1 -> 32 -> 32 -> 1 (tanh, linear output).

From the source tree::

    python examples/regression.py [--epochs 150] [--out-dir .]

Trains with the mean squared error on 750 noisy points (noise standard deviation
0.1, so the best possible test MSE is about 0.01) and prints the test MSE and
the MSE against the noise-free sine; with matplotlib installed it also saves
regression_fit.png (the points, the sine and the network's curve).
"""

import argparse
import os

import numpy as np

import fusenn


def main():
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--epochs", type=int, default=int(os.environ.get("FUSENN_EPOCHS", 150)))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", default=".", help="where to save the PNG picture")
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    x = rng.uniform(-np.pi, np.pi, size=(1000, 1)).astype(np.float32)
    y = (np.sin(x) + rng.normal(0, 0.1, size=x.shape)).astype(np.float32)
    x_train, x_test, y_train, y_test = fusenn.datasets.train_test_split(x, y, seed=args.seed)

    model = fusenn.Sequential([fusenn.Dense(32, activation="tanh"),
                               fusenn.Dense(32, activation="tanh"),
                               fusenn.Dense(1)],  # linear output for a real-valued target
                              input_dim=1, seed=args.seed)
    model.compile(loss="mse", optimizer=fusenn.Adam(lr=0.01))
    model.fit(x_train, y_train, epochs=args.epochs, batch_size=32, verbose=0)

    test_mse = model.evaluate(x_test, y_test)["loss"]
    grid = np.linspace(-np.pi, np.pi, 9, dtype=np.float32)[:, None]
    pred = model.predict(grid)[:, 0]
    for g, p in zip(grid[:, 0], pred):
        print(f"x = {g:+.2f}: sin(x) = {np.sin(g):+.3f}, network {p:+.3f}")
    clean_mse = float(np.mean((model.predict(x_test) - np.sin(x_test)) ** 2))
    print(f"MSE against the noise-free sine: {clean_mse:.4f}")
    print(f"test MSE: {test_mse:.4f}")

    try:
        import matplotlib.pyplot as plt
    except ImportError:
        return
    curve = np.linspace(-np.pi, np.pi, 200, dtype=np.float32)[:, None]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(x_train, y_train, ".", markersize=3, alpha=0.4, label="training points")
    ax.plot(curve, np.sin(curve), "k--", label="sin(x)")
    ax.plot(curve, model.predict(curve), linewidth=2, label="network")
    ax.set_xlabel("x")
    ax.legend()
    fig.tight_layout()
    os.makedirs(args.out_dir, exist_ok=True)
    path = os.path.join(args.out_dir, "regression_fit.png")
    fig.savefig(path, dpi=100)
    print("saved", path)


if __name__ == "__main__":
    main()
