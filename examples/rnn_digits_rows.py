"""Handwritten digits read row by row by an LSTM: each 8x8 digit is a sequence of 8 rows.

    python examples/rnn_digits_rows.py [--epochs 30] [--units 64]

A recurrent network sees one row of 8 pixels per time step (T = 8, F = 8), carries
its state from row to row and classifies the digit from its state after the last
row. Trains on 3/4 of the 1,797 bundled digits and prints the test accuracy and the
time per epoch.
"""

import argparse
import os
import time

import fusenn
from fusenn import LSTM, Dense


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=int(os.environ.get("FUSENN_EPOCHS", 30)))
    parser.add_argument("--units", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    X, y = fusenn.datasets.load_digits(return_images=True)  # (1797, 8, 8): 8 rows of 8 pixels
    X_train, X_test, y_train, y_test = fusenn.datasets.train_test_split(
        X, y, test_size=0.25, seed=args.seed, stratify=y)

    model = fusenn.Sequential([
        LSTM(args.units),                  # reads the rows in order; outputs its last state
        Dense(10, activation="softmax"),   # one neuron per digit
    ], input_shape=(8, 8), seed=args.seed)
    model.compile(loss="cross_entropy", optimizer=fusenn.Adam(lr=5e-3))
    model.summary()
    start = time.perf_counter()
    model.fit(X_train, y_train, epochs=args.epochs, batch_size=32, verbose=0)
    per_epoch = (time.perf_counter() - start) / max(args.epochs, 1)

    result = model.evaluate(X_test, y_test)
    print(f"trained for {args.epochs} epochs on {len(X_train)} digits: "
          f"{per_epoch * 1e3:.1f} ms per epoch")
    print(f"test accuracy: {result['accuracy']:.4f}")


if __name__ == "__main__":
    main()
