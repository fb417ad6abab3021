"""Fashion-MNIST with a LeNet-style convolutional network.

    apt-get install dataset-fashion-mnist      # the real data, 30 MB (Debian, Ubuntu)
    python examples/cnn_fashion_mnist.py [--epochs 5] [--train-samples N] [--data DIR]

Reads the 60,000 training and 10,000 test 28x28 images of clothes (from
/usr/share/datasets/fashion-mnist, or --data DIR holding the IDX .gz files),
trains LeNet-5 (conv 6@5x5 same -> max-pool -> conv 16@5x5 -> max-pool ->
dense 120 -> 84 -> 10) and prints the accuracy and the time of each epoch.
Nothing is downloaded.
"""

import argparse
import os
import time

import fusenn
from fusenn import Conv2D, Dense, Flatten, MaxPooling2D, callbacks


class EpochTimes(callbacks.Callback):
    def on_epoch_end(self, epoch, logs):
        print(f"epoch {epoch + 1}: {logs['time']:.2f} s, loss {logs['loss']:.4f}, "
              f"accuracy {logs['accuracy']:.4f}, test accuracy {logs['val_accuracy']:.4f}",
              flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=int(os.environ.get("FUSENN_EPOCHS", 5)))
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
    X_train, y_train = X_train[:args.train_samples], y_train[:args.train_samples]
    print(f"{len(X_train)} training and {len(X_test)} test images of "
          f"{'x'.join(map(str, X_train.shape[1:]))}, classes: "
          f"{', '.join(fusenn.datasets.FASHION_MNIST_CLASSES)}")

    model = fusenn.Sequential([
        Conv2D(6, 5, padding="same", activation="relu"), MaxPooling2D(),
        Conv2D(16, 5, activation="relu"), MaxPooling2D(),
        Flatten(), Dense(120, activation="relu"), Dense(84, activation="relu"),
        Dense(10, activation="softmax"),
    ], input_shape=(28, 28, 1), seed=args.seed)
    model.compile(loss="cross_entropy", optimizer=fusenn.SGD(lr=0.05, momentum=0.9))
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
