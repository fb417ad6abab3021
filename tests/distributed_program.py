"""Run by tests/test_distributed.py under `mpirun -n P` (and alone, as P = 1):
every case trains, evaluates or predicts with fusenn.distributed and, on every
rank, with one process (model.fit(..., batch_chunks=C)); rank 0 prints one
JSON object {case: "ok" or what differed} as its last line. Small data: each
case takes milliseconds."""

import json
import os
import sys
import tempfile
import traceback

import numpy as np

import fusenn
import fusenn.distributed as dist
from fusenn.callbacks import Callback, EarlyStopping, LearningRateScheduler, ReduceLROnPlateau

OPTIMIZERS = {
    "sgd": lambda: fusenn.SGD(lr=0.05),
    "nesterov": lambda: fusenn.SGD(lr=0.05, momentum=0.9, nesterov=True),
    "adam": lambda: fusenn.Adam(lr=0.01),
    "adamw-clipnorm": lambda: fusenn.AdamW(lr=0.01, weight_decay=0.01, clipnorm=0.5),
    "rmsprop-global-clipnorm": lambda: fusenn.RMSprop(lr=0.01, l2=1e-3, global_clipnorm=0.3),
    "adagrad-clipvalue": lambda: fusenn.Adagrad(lr=0.05, clipvalue=0.01),
}
# loss -> (output units, activation)
LOSSES = {"cross_entropy": (5, "softmax"), "binary_cross_entropy": (3, "sigmoid"),
          "mse": (3, "identity"), "mae": (3, "tanh"), "huber": (3, "identity"),
          "poisson": (3, "identity")}


def data(n, loss, d=12, dtype="float32", seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(dtype)
    units = LOSSES[loss][0]
    if loss == "cross_entropy":
        return X, rng.integers(0, units, n)
    if loss == "binary_cross_entropy":
        return X, (rng.random((n, units)) > 0.5).astype(dtype)
    if loss == "poisson":
        return X, rng.poisson(1.5, (n, units)).astype(dtype)
    return X, rng.standard_normal((n, units)).astype(dtype)


def mlp(loss="cross_entropy", optimizer="adam", dtype="float32", seed=3, d=12):
    units, activation = LOSSES[loss]
    model = fusenn.Sequential([fusenn.Dense(16, "relu"), fusenn.Dropout(0.3), fusenn.BatchNorm(),
                               fusenn.Dense(8, "tanh"), fusenn.Dense(units, activation)],
                              input_dim=d, dtype=dtype, seed=seed)
    model.compile(loss, OPTIMIZERS[optimizer]())
    return model


def cnn(seed=4):
    model = fusenn.Sequential([fusenn.Conv2D(4, 3, activation="relu", padding="same"),
                               fusenn.BatchNorm(), fusenn.MaxPooling2D(2), fusenn.Flatten(),
                               fusenn.Dropout(0.2), fusenn.Dense(3, "softmax")],
                              input_shape=(6, 6, 2), seed=seed)
    model.compile("cross_entropy", fusenn.Adam(lr=0.01))
    return model


def text_data(n, steps, vocab, classes, rng, per_step):
    """Padded integer sequences (index 0 masked) and a label per sequence or per step."""
    X = rng.integers(1, vocab, (n, steps))
    X[np.arange(steps) >= rng.integers(1, steps + 1, n)[:, None]] = 0
    X[3] = 0  # a sequence of padding only
    return X, rng.integers(0, classes, (n, steps) if per_step else n)


def gated_rnn(seed=5):
    model = fusenn.Sequential([fusenn.Embedding(20, 6, mask_zero=True),
                               fusenn.LSTM(7, return_sequences=True), fusenn.GRU(5),
                               fusenn.Dense(4, "softmax")], input_shape=(9,), seed=seed)
    model.compile("cross_entropy", fusenn.RMSprop(lr=0.01))
    return model


def per_step_rnn(seed=6):
    model = fusenn.Sequential([fusenn.Embedding(20, 6, mask_zero=True),
                               fusenn.SimpleRNN(8, return_sequences=True, go_backwards=True),
                               fusenn.Dense(3, "softmax")], input_shape=(9,), seed=seed)
    model.compile("cross_entropy", fusenn.Adam(lr=0.01))
    return model


def differences(a, b):
    """What differs between two models' weights and histories ('' if nothing)."""
    bad = [i for i, (x, y) in enumerate(zip(a.get_weights(), b.get_weights()))
           if not np.array_equal(x, y)]
    out = f"weights {bad} differ" if bad else ""
    ha = {k: v for k, v in a.history.history.items() if k != "time"}
    hb = {k: v for k, v in b.history.history.items() if k != "time"}
    if ha != hb:
        out += f" history {ha} != {hb}"
    return out


def same_fit(make, X, y, chunks=None, **kwargs):
    """dist.fit and model.fit(batch_chunks=C) from the same model: '' or what differs."""
    kwargs.setdefault("verbose", 0)
    model, reference = make(), make()
    dist.fit(model, X, y, batch_chunks=chunks, **kwargs)
    reference.fit(X, y, batch_chunks=chunks or dist.size(), **kwargs)
    return differences(model, reference)


# ---- cases: each returns '' when the distributed result is one process's ---------------

def case_losses():
    out = ""
    for loss in LOSSES:
        X, y = data(75, loss)
        out += same_fit(lambda: mlp(loss), X, y, epochs=2, batch_size=16)
    return out


def case_optimizers():
    X, y = data(75, "cross_entropy")
    return "".join(same_fit(lambda: mlp(optimizer=name), X, y, epochs=2, batch_size=16)
                   for name in OPTIMIZERS)


def case_float64_and_more_chunks():
    X, y = data(70, "mse", dtype="float64")
    return same_fit(lambda: mlp("mse", "nesterov", dtype="float64"), X, y,
                    chunks=2 * dist.size(), epochs=2, batch_size=20)


def case_sample_and_class_weights():
    X, y = data(70, "cross_entropy")
    sw = np.linspace(0.2, 2.0, len(X))
    return same_fit(mlp, X, y, epochs=2, batch_size=16, sample_weight=sw,
                    class_weight={0: 2.0, 3: 0.5})


def case_empty_chunks():
    """Batches of 2 rows cut into 4 chunks (and into 2 per rank): most chunks empty."""
    X, y = data(7, "cross_entropy")
    return (same_fit(mlp, X, y, chunks=4 * dist.size(), epochs=2, batch_size=2)
            + same_fit(mlp, X, y, epochs=2, batch_size=1))


def case_validation_and_schedule():
    X, y = data(80, "cross_entropy")
    Xv, yv = data(30, "cross_entropy", seed=1)
    schedule = lambda: [LearningRateScheduler(lambda epoch: 0.02 / (1 + epoch)),  # noqa: E731
                        ReduceLROnPlateau("loss", factor=0.5, patience=0, min_delta=10)]
    out = ""
    for kwargs in ({"validation_data": (Xv, yv)}, {"validation_split": 0.25}):
        model, reference = mlp(), mlp()
        dist.fit(model, X, y, epochs=3, batch_size=16, verbose=0, callbacks=schedule(), **kwargs)
        reference.fit(X, y, epochs=3, batch_size=16, verbose=0, callbacks=schedule(),
                      batch_chunks=dist.size(), **kwargs)
        out += differences(model, reference)
    return out


def case_early_stopping():
    """EarlyStopping on rank 0 stops every rank after the same epoch and restores
    the best weights everywhere."""
    X, y = data(60, "cross_entropy")
    Xv, yv = data(40, "cross_entropy", seed=2)
    stop = lambda: [EarlyStopping("val_loss", patience=1, min_delta=0.05,  # noqa: E731
                                  restore_best_weights=True)]
    model, reference = mlp(optimizer="sgd"), mlp(optimizer="sgd")
    kwargs = dict(epochs=30, batch_size=16, verbose=0, validation_data=(Xv, yv))
    dist.fit(model, X, y, callbacks=stop(), **kwargs)
    reference.fit(X, y, callbacks=stop(), batch_chunks=dist.size(), **kwargs)
    out = differences(model, reference)
    epochs = len(model.history.epoch)
    if not 1 < epochs < 30:
        out += f" EarlyStopping did not stop early ({epochs} epochs)"
    return out


class _Counter(Callback):
    def __init__(self):
        super().__init__()
        self.epochs = 0

    def on_epoch_end(self, epoch, logs=None):
        self.epochs += 1


def case_callbacks_on_rank_0_only():
    X, y = data(40, "cross_entropy")
    counter = _Counter()
    dist.fit(mlp(), X, y, epochs=2, batch_size=16, verbose=0, callbacks=[counter])
    return "" if counter.epochs == (2 if dist.rank() == 0 else 0) else \
        f"rank {dist.rank()} ran {counter.epochs} epochs' callbacks"


def case_unseeded_models_start_alike():
    """Models built without a seed start from rank 0's weights (and shuffles)."""
    X, y = data(40, "cross_entropy")
    model = mlp(seed=None)
    dist.fit(model, X, y, epochs=2, batch_size=16, verbose=0)
    digest = [w.tobytes() for w in model.get_weights()]
    return "" if all(d == digest for d in dist._Group().allgather(digest)) else \
        "the ranks' weights differ"


def case_divergence():
    X, y = data(40, "mse")
    y *= 1e30
    model = mlp("mse", "sgd")
    try:
        dist.fit(model, X, y, epochs=1, batch_size=8, verbose=0)
    except ValueError as exc:
        return "" if "diverged in epoch 1" in str(exc) else f"raised {exc}"
    return "did not raise"


def case_evaluate_and_predict():
    """2500 rows: three of the 1024-row blocks one process sums the loss over."""
    out = ""
    for loss in ("cross_entropy", "huber"):
        X, y = data(2500, loss)
        model = mlp(loss)
        model.fit(X[:64], y[:64], epochs=1, batch_size=16, verbose=0)
        sw = np.linspace(0.5, 1.5, len(X))
        if dist.evaluate(model, X, y, sample_weight=sw) != model.evaluate(X, y, sample_weight=sw):
            out += f"evaluate ({loss}) differs "
        if not np.array_equal(dist.predict(model, X), model.predict(X)):
            out += f"predict ({loss}) differs "
        if not np.array_equal(dist.predict(model, X[:3]), model.predict(X[:3])):
            out += f"predict of fewer rows than ranks ({loss}) differs "
    return out


def case_memory_mapped_X():
    X, y = data(90, "cross_entropy")
    path = os.path.join(tempfile.gettempdir(), f"fusenn-dist-{os.environ.get('RUN_ID', 0)}.npy")
    if dist.rank() == 0:
        np.save(path, X)
    dist.barrier()
    try:
        Xm = np.load(path, mmap_mode="r")
        model, reference = mlp(), mlp()
        dist.fit(model, Xm, y, epochs=2, batch_size=16, verbose=0)
        reference.fit(X, y, epochs=2, batch_size=16, verbose=0, batch_chunks=dist.size())
        out = differences(model, reference)
        if dist.evaluate(model, Xm, y) != reference.evaluate(X, y):
            out += " evaluate differs"
    finally:
        dist.barrier()
        if dist.rank() == 0:
            os.remove(path)
    return out


def case_cnn():
    rng = np.random.default_rng(5)
    X = rng.standard_normal((30, 6, 6, 2)).astype(np.float32)
    y = rng.integers(0, 3, 30)
    return same_fit(cnn, X, y, epochs=2, batch_size=8)


def case_rnn():
    """Masked sequences: Embedding + LSTM + GRU per sequence, SimpleRNN per step.
    Batches cut into equal chunks: on AVX-512 the recurrent backward crashes on
    a batch smaller than an earlier one, in one process too (train_on_batch on
    4 rows, then on 2)."""
    rng = np.random.default_rng(7)
    X, y = text_data(48, 9, 20, 4, rng, False)
    Xs, ys = text_data(48, 9, 20, 3, rng, True)
    return (same_fit(gated_rnn, X, y, epochs=2, batch_size=16)
            + same_fit(per_step_rnn, Xs, ys, epochs=2, batch_size=16,
                       sample_weight=np.linspace(0.5, 1.5, 48)))


def case_bad_chunks():
    if dist.size() == 1:
        return ""
    X, y = data(20, "cross_entropy")
    try:
        dist.fit(mlp(), X, y, batch_chunks=dist.size() + 1, verbose=0)
    except ValueError as exc:
        return "" if "multiple of the number of ranks" in str(exc) else f"raised {exc}"
    return "did not raise"


def main():
    cases = {name[5:]: f for name, f in globals().items() if name.startswith("case_")}
    if len(sys.argv) > 1:
        cases = {name: cases[name] for name in sys.argv[1:]}
    results = {}
    for name, case in cases.items():
        try:
            result = case() or "ok"
        except Exception:  # noqa: BLE001 - reported, and the other cases still run
            result = traceback.format_exc()
        results[name] = result
    gathered = dist._Group().allgather(results)
    if dist.rank() == 0:
        merged = {}
        for name in results:
            outcomes = [res[name] for res in gathered]
            merged[name] = (outcomes[0] if len(set(outcomes)) == 1 else
                            "; ".join(f"rank {r}: {o}" for r, o in enumerate(outcomes)))
        print(json.dumps({"size": dist.size(), "results": merged}))


if __name__ == "__main__":
    main()
