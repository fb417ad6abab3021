"""MNIST (or Fashion-MNIST, EMNIST) from IDX files you have
========================================================

784 -> 128 relu -> 10.

From the source tree::

    python examples/mnist_idx.py [DIRECTORY] [--epochs 5] [--prefix emnist-digits]

DIRECTORY (default: $FUSENN_MNIST_DIR, else ./mnist) holds train-images-idx3-ubyte,
train-labels-idx1-ubyte, t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte,
raw or gzipped (.gz). fusenn downloads nothing: if the files are not there, this
prints where to get them and exits.
"""

import argparse
import os
import sys

import fusenn

HOW_TO_GET = """\
No MNIST IDX files in {dir!r} ({error}).
Get the four files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz,
t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) from a copy of MNIST, for example
  https://github.com/zalandoresearch/fashion-mnist (Fashion-MNIST, same format and names)
  https://ossci-datasets.s3.amazonaws.com/mnist/ (the MNIST mirror torchvision uses)
or EMNIST (https://www.nist.gov/itl/products-and-services/emnist-dataset; use --prefix,
e.g. --prefix emnist-digits), put them in one directory and run
  python mnist_idx.py DIRECTORY        (or set FUSENN_MNIST_DIR=DIRECTORY)"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("directory", nargs="?",
                        default=os.environ.get("FUSENN_MNIST_DIR", "mnist"))
    parser.add_argument("--epochs", type=int, default=int(os.environ.get("FUSENN_EPOCHS", 5)))
    parser.add_argument("--prefix", default="", help="file name prefix, e.g. emnist-digits")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", default=None,
                        help="save mnist_weights.png here (needs matplotlib)")
    args = parser.parse_args()

    try:
        X_train, y_train = fusenn.datasets.load_mnist(args.directory, "train", prefix=args.prefix)
        X_test, y_test = fusenn.datasets.load_mnist(args.directory, "test", prefix=args.prefix)
    except FileNotFoundError as e:
        print(HOW_TO_GET.format(dir=args.directory, error=e))
        return 0
    classes = int(max(y_train.max(), y_test.max())) + 1
    side = int(round(X_train.shape[1] ** 0.5))
    print(f"{len(X_train)} training and {len(X_test)} test images of {X_train.shape[1]} "
          f"pixels, {classes} classes")

    model = fusenn.Sequential([fusenn.Dense(128, activation="relu"),
                               fusenn.Dense(classes, activation="softmax")],
                              input_dim=X_train.shape[1], seed=args.seed)
    model.compile(loss="cross_entropy", optimizer=fusenn.SGD(lr=0.05, momentum=0.9))
    model.fit(X_train, y_train, epochs=args.epochs, batch_size=128, verbose=1,
              validation_data=(X_test, y_test))
    print(f"test accuracy: {model.evaluate(X_test, y_test)['accuracy']:.4f}")

    if args.out_dir is not None and side * side == X_train.shape[1]:
        path = os.path.join(args.out_dir, "mnist_weights.png")
        fusenn.plot.weights(model.layers[0], shape=(side, side), max_neurons=36, save=path)
        print("saved", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
