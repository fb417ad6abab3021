"""Handwritten digits with a small convolutional network: 8x8 images -> conv -> pool -> dense.

    python examples/cnn_digits.py [--epochs 40] [--out-dir .]

Trains on 3/4 of the 1,797 bundled 8x8 digits, given as images (n, 8, 8, 1),
prints the test accuracy and the time per epoch and, if matplotlib is
installed, saves cnn_digits_filters.png (the first layer's 3x3 filters) and
cnn_digits_maps.png (what each convolution responds to in one test digit).
"""

import argparse
import os
import time

import fusenn
from fusenn import Conv2D, Dense, Dropout, Flatten, MaxPooling2D


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=int(os.environ.get("FUSENN_EPOCHS", 40)))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", default=".", help="where to save the PNG pictures")
    args = parser.parse_args()

    X, y = fusenn.datasets.load_digits(images=True)
    X_train, X_test, y_train, y_test = fusenn.datasets.train_test_split(
        X, y, test_size=0.25, seed=args.seed, stratify=y)

    model = fusenn.Sequential([
        Conv2D(16, 3, padding="same", activation="relu"),   # 16 3x3 filters over the image
        Conv2D(32, 3, padding="same", activation="relu"),
        MaxPooling2D(2),                                     # 8x8 -> 4x4
        Flatten(),
        Dropout(0.25),
        Dense(64, activation="relu"),
        Dense(10, activation="softmax"),
    ], input_shape=(8, 8, 1), seed=args.seed)
    model.compile(loss="cross_entropy", optimizer=fusenn.Adam(lr=2e-3))
    model.summary()
    start = time.perf_counter()
    model.fit(X_train, y_train, epochs=args.epochs, batch_size=32, verbose=0)
    per_epoch = (time.perf_counter() - start) / max(args.epochs, 1)

    result = model.evaluate(X_test, y_test)
    print(f"trained for {args.epochs} epochs on {len(X_train)} digits: "
          f"{per_epoch * 1e3:.1f} ms per epoch")
    print(f"test accuracy: {result['accuracy']:.4f}")

    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("matplotlib is not installed: no pictures (pip install fusenn[plot])")
        return
    os.makedirs(args.out_dir, exist_ok=True)
    filters = os.path.join(args.out_dir, "cnn_digits_filters.png")
    maps = os.path.join(args.out_dir, "cnn_digits_maps.png")
    fusenn.plot.weights(model, save=filters)
    fusenn.plot.feature_maps(model, X_test[0], save=maps)
    print("saved", filters, maps)


if __name__ == "__main__":
    main()
