"""Handwritten digits with a multilayer perceptron
===============================================

64 pixels -> 64 relu neurons -> 10 digits.

From the source tree::

    python examples/digits_mlp.py [--epochs 30] [--out-dir .]

Trains on 3/4 of the 1,797 bundled 8x8 digits, prints the test accuracy and, if
matplotlib is installed, saves digits_history.png (loss and accuracy per epoch),
digits_weights.png (each hidden neuron's 64 incoming weights as an 8x8 image:
the strokes it looks for) and digits_confusion.png.
"""

import argparse
import os

import numpy as np

import fusenn


def main():
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--epochs", type=int, default=int(os.environ.get("FUSENN_EPOCHS", 30)))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", default=".", help="where to save the PNG pictures")
    args = parser.parse_args()

    X, y = fusenn.datasets.load_digits()
    X_train, X_test, y_train, y_test = fusenn.datasets.train_test_split(
        X, y, test_size=0.25, seed=args.seed, stratify=y)

    model = fusenn.Sequential([fusenn.Dense(64, activation="relu"),
                               fusenn.Dense(10, activation="softmax")],
                              input_dim=64, seed=args.seed)
    model.compile(loss="cross_entropy", optimizer=fusenn.SGD(lr=0.05, momentum=0.9))
    hist = model.fit(X_train, y_train, epochs=args.epochs, batch_size=32,
                     validation_data=(X_test, y_test), verbose=0)

    result = model.evaluate(X_test, y_test)
    predicted = model.predict(X_test).argmax(axis=1)
    print(f"trained 64-64-10 for {args.epochs} epochs on {len(X_train)} digits")
    print("wrongly classified test digits (true -> predicted):",
          ", ".join(f"{t}->{p}" for t, p in zip(y_test[predicted != y_test],
                                                predicted[predicted != y_test])) or "none")
    print(f"test accuracy: {result['accuracy']:.4f}")

    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("matplotlib is not installed: no pictures (pip install fusenn[plot])")
        return
    os.makedirs(args.out_dir, exist_ok=True)
    saved = []
    for name, make in (
            ("digits_history.png", lambda path: fusenn.plot.history(hist, save=path)),
            ("digits_weights.png", lambda path: fusenn.plot.weights(model.layers[0], (8, 8),
                                                                    save=path)),
            ("digits_confusion.png", lambda path: fusenn.plot.confusion_matrix(
                y_test, predicted, labels=np.arange(10), save=path))):
        path = os.path.join(args.out_dir, name)
        make(path)
        saved.append(path)
    print("saved", ", ".join(saved))


if __name__ == "__main__":
    main()
