"""Fashion-MNIST read row by row by a GRU
=======================================

Each 28x28 image is a sequence of 28 rows. From the source tree::

    apt-get install dataset-fashion-mnist      # the real data, 30 MB (Debian, Ubuntu)
    python examples/fashion_mnist_gru.py [--epochs 5] [--units 128] [--train-samples N] [--data DIR]

Reads the 60,000 training and 10,000 test 28x28 images of clothes (from
/usr/share/datasets/fashion-mnist, or --data DIR holding the IDX .gz files).
A GRU sees one row of 28 pixels per time step (T = 28, F = 28), carries its state
from row to row and a softmax Dense classifies the image from the state after the
last row. Prints the accuracy and the time of each epoch. Nothing is downloaded.
"""

import argparse
import os
import time

import fusenn
from fusenn import GRU, Dense, callbacks


class EpochTimes(callbacks.Callback):
    def on_epoch_end(self, epoch, logs):
        print(f"epoch {epoch + 1}: {logs['time']:.2f} s, loss {logs['loss']:.4f}, "
              f"accuracy {logs['accuracy']:.4f}, test accuracy {logs['val_accuracy']:.4f}",
              flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=int(os.environ.get("FUSENN_EPOCHS", 5)))
    parser.add_argument("--units", type=int, default=128)
    parser.add_argument("--train-samples", type=int, default=60000,
                        help="train on the first N training images (for a quick run)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--data", default=None, help="directory of the Fashion-MNIST IDX files")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    try:
        X_train, y_train = fusenn.datasets.load_fashion_mnist("train", path=args.data)
        X_test, y_test = fusenn.datasets.load_fashion_mnist("test", path=args.data)
    except FileNotFoundError as exc:
        print(exc)
        return
    # (n, 28, 28, 1) -> (n, 28, 28): 28 steps of one row of 28 pixels
    X_train, y_train = X_train[:args.train_samples, ..., 0], y_train[:args.train_samples]
    X_test = X_test[..., 0]
    print(f"{len(X_train)} training and {len(X_test)} test images read as "
          f"{X_train.shape[1]} rows of {X_train.shape[2]} pixels, classes: "
          f"{', '.join(fusenn.datasets.FASHION_MNIST_CLASSES)}")

    model = fusenn.Sequential([
        GRU(args.units),                   # reads the rows in order; outputs its last state
        Dense(10, activation="softmax"),   # one neuron per class
    ], input_shape=(28, 28), seed=args.seed)
    model.compile(loss="cross_entropy", optimizer=fusenn.Adam(lr=2e-3))
    model.summary()
    start = time.perf_counter()
    model.fit(X_train, y_train, epochs=args.epochs, batch_size=args.batch_size,
              validation_data=(X_test, y_test), callbacks=[EpochTimes()], verbose=0)
    elapsed = time.perf_counter() - start
    result = model.evaluate(X_test, y_test)
    print(f"time per epoch: {elapsed / max(args.epochs, 1):.2f} s "
          f"({fusenn.get_num_threads()} threads, {fusenn.gemm_isa()})")
    print(f"test accuracy: {result['accuracy']:.4f}")


if __name__ == "__main__":
    main()
