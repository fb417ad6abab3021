"""python -m fusenn demo: train a network on the bundled handwritten digits.

Trains 64 -> 128 (relu) -> 64 (relu) -> 10 (softmax) on 75% of the 1,797
8x8 digits with SGD + momentum, prints per-epoch progress and the test
accuracy, then trains the identical model (same seed, same batches) with the
NumPy reference backend and reports how much faster fusenn's C kernels were.
"""

import argparse
import sys
import time

import numpy as np

import fusenn


def build_model(backend, seed):
    model = fusenn.Sequential(
        [fusenn.Dense(128, activation="relu"),
         fusenn.Dense(64, activation="relu"),
         fusenn.Dense(10, activation="softmax")],
        input_dim=64, seed=seed, backend=backend)
    model.compile(loss="cross_entropy", optimizer=fusenn.SGD(lr=0.05, momentum=0.9))
    return model


def train(backend, data, epochs, batch_size, seed, verbose):
    X_train, X_test, y_train, y_test = data
    model = build_model(backend, seed)
    start = time.perf_counter()
    model.fit(X_train, y_train, epochs=epochs, batch_size=batch_size,
              validation_data=(X_test, y_test), verbose=verbose)
    seconds = time.perf_counter() - start
    return model, seconds


def demo(epochs, batch_size, seed):
    X, y = fusenn.datasets.load_digits()
    data = fusenn.datasets.train_test_split(X, y, test_size=0.25, seed=seed, stratify=y)
    X_train, X_test, y_train, y_test = data
    print(f"fusenn {fusenn.__version__}: {len(X_train)} training and {len(X_test)} test digits "
          f"(8x8 pixels), {fusenn.get_num_threads()} thread(s), GEMM kernel "
          f"{fusenn.gemm_isa()}, OpenMP {'on' if fusenn.has_openmp() else 'OFF'}")
    print("network: 64 -> 128 relu -> 64 relu -> 10 softmax, SGD(lr=0.05, momentum=0.9), "
          f"batch {batch_size}")

    model, c_seconds = train("c", data, epochs, batch_size, seed, verbose=1)
    accuracy = model.evaluate(X_test, y_test)["accuracy"]
    print(f"\ntest accuracy: {accuracy:.4f}")
    print(f"time per epoch (C kernels): {1e3 * c_seconds / epochs:.1f} ms")

    print("\ntraining the same model with the NumPy reference backend ...")
    reference, np_seconds = train("numpy", data, epochs, batch_size, seed, verbose=0)
    agree = np.mean(reference.predict(X_test).argmax(1) == model.predict(X_test).argmax(1))
    print(f"time per epoch (NumPy reference): {1e3 * np_seconds / epochs:.1f} ms")
    print(f"speed-up of fusenn over the NumPy reference: {np_seconds / c_seconds:.2f}x "
          f"(predictions agree on {100 * agree:.1f}% of test digits)")
    return 0 if accuracy >= 0.95 else 1


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fusenn", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="train on the bundled handwritten digits")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="kernel threads (default: all CPUs)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        fusenn.set_num_threads(args.threads)
    return demo(args.epochs, args.batch_size, args.seed)


if __name__ == "__main__":
    sys.exit(main())
