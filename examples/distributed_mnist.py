"""Data-parallel training over MPI
================================

Every rank ends with the weights one process would have, to the bit. From the
source tree::

    mpirun -n 2 -x OMP_NUM_THREADS=1 python examples/distributed_mnist.py [--epochs 5]
    python examples/distributed_mnist.py          # one process: the same weights

Fashion-MNIST (784-256-128-10) when it is installed (`apt-get install
dataset-fashion-mnist`), else the bundled 8x8 digits (64-256-128-10); --data
digits forces them. Rank 0 caches the training images as a .npy that every
rank memory-maps (each reads only the rows of its chunks of every batch). Each
global batch of --batch-size rows is cut into --chunks chunks (default: one
per rank); a run on any number of ranks that divides --chunks gives the same
weights. Rank 0 prints the epochs, each rank's time per step (computing its
chunks' gradients, communicating, adding, updating) and the test accuracy.
"""

import argparse
import hashlib
import os
import tempfile
import time

import numpy as np

import fusenn
import fusenn.distributed as dist


def load(which):
    if which != "digits":
        try:
            X, y = fusenn.datasets.load_fashion_mnist("train", flatten=True)
            Xt, yt = fusenn.datasets.load_fashion_mnist("test", flatten=True)
            return "Fashion-MNIST", X, y, Xt, yt
        except FileNotFoundError:
            if which == "fashion":
                raise
    X, y = fusenn.datasets.load_digits()
    X, Xt, y, yt = fusenn.datasets.train_test_split(X, y, test_size=0.25, seed=0, stratify=y)
    return "digits", X, y, Xt, yt


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=int(os.environ.get("FUSENN_EPOCHS", 5)))
    parser.add_argument("--batch-size", type=int, default=512, help="global batch (all ranks)")
    parser.add_argument("--chunks", type=int, default=None,
                        help="chunks per batch (default: the number of ranks)")
    parser.add_argument("--data", choices=["auto", "fashion", "digits"], default="auto")
    parser.add_argument("--cache", default=tempfile.gettempdir(),
                        help="directory for the memory-mapped copy of X (shared by the ranks)")
    args = parser.parse_args()

    dist.init()
    rank, size = dist.rank(), dist.size()
    name, X, y, X_test, y_test = load(args.data)
    path = os.path.join(args.cache, f"fusenn-{name}-{X.shape[0]}x{X.shape[1]}.npy")
    if rank == 0 and not os.path.exists(path):
        np.save(path + ".tmp.npy", X)
        os.replace(path + ".tmp.npy", path)
    dist.barrier()
    X = np.load(path, mmap_mode="r")

    model = fusenn.Sequential([fusenn.Dense(256, "relu"), fusenn.Dropout(0.2),
                               fusenn.Dense(128, "relu"), fusenn.Dense(10, "softmax")],
                              input_dim=X.shape[1], seed=0)
    model.compile("cross_entropy", fusenn.Adam(lr=1e-3))
    start = time.perf_counter()
    dist.fit(model, X, y, epochs=args.epochs, batch_size=args.batch_size,
             batch_chunks=args.chunks, validation_data=(X_test, y_test),
             verbose=2 if rank == 0 else 0)
    seconds = time.perf_counter() - start
    result = dist.evaluate(model, X_test, y_test)

    digest = hashlib.sha256(b"".join(w.tobytes() for w in model.get_weights())).hexdigest()
    timings = dist._Group().allgather((dist.stats(), digest))
    if rank != 0:
        return
    chunks = args.chunks or size
    print(f"{name}: {X.shape[0]} samples, {X.shape[1]}-256-128-10, {size} rank(s) x "
          f"{fusenn.get_num_threads()} thread(s), global batch {args.batch_size} in {chunks} "
          f"chunks, {args.epochs} epochs in {seconds:.2f} s")
    print("per step, ms: rank  compute  communicate  add  update")
    for r, (t, _) in enumerate(timings):
        steps = max(t["steps"], 1)
        print(f"               {r:>4}  " + "  ".join(
            f"{1e3 * t[k] / steps:{len(k)}.3f}" for k in ("compute", "communicate", "add", "update")))
    print(f"weights identical on every rank: {len({d for _, d in timings}) == 1}")
    print(f"weights digest: {digest[:16]}")
    print(f"test accuracy: {result['accuracy']:.4f}")


if __name__ == "__main__":
    main()
