"""A short training run for tools/valgrind.sh: every C kernel family, little compute.

A few steps of small models on the C backend (both dtypes, every loss and
optimizer, 1 and 2 threads), predict, evaluate, save and load. Kept small: under
valgrind it runs ~50x slower than natively.
"""

import os
import sys
import tempfile

import numpy as np

import fusenn


def main():
    with tempfile.TemporaryDirectory(prefix="fusenn-valgrind-") as tmp:
        run(tmp)
    print(f"valgrind_train: ok (openmp={fusenn.has_openmp()}, isa={fusenn.gemm_isa()})")


def run(tmp):
    X, y = fusenn.datasets.load_digits()
    X, y = X[:192], y[:192]
    rng = np.random.default_rng(0)
    onehot = (y[:, None] == np.arange(10)).astype("float64")
    cases = [  # (loss, output activation, targets, a fresh optimizer per model)
        ("cross_entropy", "softmax", y, lambda: fusenn.SGD(lr=0.05, momentum=0.9)),
        ("cross_entropy", "identity", y, lambda: fusenn.Adam(lr=1e-3)),
        ("binary_cross_entropy", "sigmoid", onehot,
         lambda: fusenn.SGD(lr=0.1, momentum=0.9, nesterov=True)),
        ("mse", "tanh", rng.standard_normal((len(y), 10)) * 0.5, lambda: fusenn.SGD(lr=0.05)),
    ]
    for dtype in ("float32", "float64"):
        for nthreads in (1, 2):
            for loss, out_act, target, make_opt in cases:
                target = target.astype(dtype) if target.dtype.kind == "f" else target
                with fusenn.threads(nthreads):
                    model = fusenn.Sequential([fusenn.Dense(24, activation="relu"),
                                               fusenn.Dense(16, activation="leaky_relu"),
                                               fusenn.Dense(12, activation="sigmoid"),
                                               fusenn.Dense(10, activation=out_act)],
                                              input_dim=64, dtype=dtype, seed=1, backend="c")
                    model.compile(loss=loss, optimizer=make_opt())
                    model.fit(X, target, epochs=2, batch_size=48, verbose=0,
                              validation_data=(X[:40], target[:40]))
                    model.train_on_batch(X[:17], target[:17])
                    P = model.predict(X[:33])
                    logs = model.evaluate(X[:50], target[:50])
                    assert np.all(np.isfinite(P)) and np.isfinite(logs["loss"]), (loss, dtype)
                    path = os.path.join(tmp, f"m-{dtype}-{nthreads}-{loss}.npz")
                    model.save(path)
                    again = fusenn.load(path)
                    assert np.array_equal(again.predict(X[:33]), P), (loss, dtype, nthreads)
                    # GEMM alone: transposes, strided views, shapes past the block sizes.
                    A = rng.standard_normal((70, 130)).astype(dtype)
                    B = rng.standard_normal((70, 300)).astype(dtype)
                    C = fusenn.matmul(A, B[:, ::3], trans_a=True)
                    np.testing.assert_allclose(C, A.T @ B[:, ::3], rtol=1e-3, atol=1e-3)


if __name__ == "__main__":
    sys.exit(main())
