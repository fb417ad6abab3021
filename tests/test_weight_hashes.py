"""Trained weights must keep their bits across refactors of the engine.

A fixed set of trainings (dense, convolutional and recurrent layer kinds,
every activation, loss and optimizer; fit and train_on_batch; float32 and
float64) is hashed: weights after
training, optimizer state, per-epoch losses and predictions. The hashes
recorded before a refactor live in tests/data/weight_hashes.json, one table
per GEMM ISA (the ISAs round differently); this test trains again on 1, 2 and
3 threads and compares. Regenerate the table only on purpose, when a change
is meant to change results:

    python tests/test_weight_hashes.py --record      # runs every ISA this CPU has
"""

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import fusenn

HERE = os.path.dirname(os.path.abspath(__file__))
TABLE = os.path.join(HERE, "data", "weight_hashes.json")

# name -> (layers factory, loss, optimizer factory, input width or shape, outputs)
D = fusenn.Dense
C = fusenn.Conv2D
CASES = {
    "relu-softmax-ce-momentum": (
        lambda: [D(96, "relu"), D(10, "softmax")], "cross_entropy",
        lambda: fusenn.SGD(lr=0.05, momentum=0.9), 300, 10),
    "gelu-bn-dropout-logits-ce-adam": (
        lambda: [D(64, "gelu"), fusenn.BatchNorm(), fusenn.Dropout(0.3), D(10, "identity")],
        "cross_entropy", lambda: fusenn.Adam(lr=0.01, l2=0.01, clipnorm=0.5), 300, 10),
    "tanh-sigmoid-bce-rmsprop": (
        lambda: [D(48, "tanh"), D(3, "sigmoid")], "binary_cross_entropy",
        lambda: fusenn.RMSprop(lr=0.01, global_clipnorm=0.3), 300, 3),
    "swish-dropout-mse-adamw": (
        lambda: [D(80, "swish"), fusenn.Dropout(0.2), D(2, "identity")], "mse",
        lambda: fusenn.AdamW(lr=0.01, weight_decay=0.1, clipvalue=0.05), 300, 2),
    "elu-gelu_tanh-mae-adagrad": (
        lambda: [D(40, "elu"), D(24, "gelu_tanh"), D(2, "identity")], "mae",
        lambda: fusenn.Adagrad(lr=0.05), 300, 2),
    "leaky-bn-softplus-huber-nesterov": (
        lambda: [D(300, "leaky_relu"), fusenn.BatchNorm(momentum=0.9), D(20, "softplus"),
                 D(1, "identity")], fusenn.losses.Huber(delta=0.5),
        lambda: fusenn.SGD(lr=0.02, momentum=0.9, nesterov=True, l2=0.001), 300, 1),
    "sigmoid-softmax-mse-sgd": (
        lambda: [D(30, "sigmoid"), D(5, "softmax")], "mse",
        lambda: fusenn.SGD(lr=0.5), 300, 5),
    "dropout-first-relu-ce-adam": (
        lambda: [fusenn.Dropout(0.1), D(256, "relu"), D(128, "relu"), D(10, "softmax")],
        "cross_entropy", lambda: fusenn.Adam(lr=1e-3), 300, 10),
    # convolutions by im2col and by Winograd's F(2x2, 3x3) (forward, dX, dW), pooling
    "conv-pool-flatten-ce-momentum": (
        lambda: [C(32, 3, padding="same", activation="relu"),
                 C(16, 3, padding="same", activation="relu"), fusenn.MaxPooling2D(2),
                 C(8, 3, activation="tanh"), fusenn.Flatten(), D(4, "softmax")],
        "cross_entropy", lambda: fusenn.SGD(lr=0.02, momentum=0.9), (8, 8, 2), 4),
    "simple_rnn-gru-lstm-ce-adam": (
        lambda: [fusenn.SimpleRNN(8, return_sequences=True),
                 fusenn.GRU(8, return_sequences=True), fusenn.LSTM(8), D(3, "softmax")],
        "cross_entropy", lambda: fusenn.Adam(lr=0.01), (6, 4), 3),
}


def _data(loss, d, k, dtype, n=700, seed=3):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, *np.atleast_1d(d))).astype(dtype)
    name = loss if isinstance(loss, str) else loss.name
    if name == "cross_entropy":
        y = rng.integers(0, k, n)
    elif name == "binary_cross_entropy":
        y = (rng.random((n, k)) > 0.5).astype(dtype)
    else:
        y = rng.standard_normal((n, k)).astype(dtype)
    return X, y


def train_and_hash(name, dtype):
    """sha256 of everything one training of case `name` produces."""
    layers, loss, opt, d, k = CASES[name]
    X, y = _data(loss, d, k, dtype)
    shape = dict(input_dim=d) if isinstance(d, int) else dict(input_shape=d)
    model = fusenn.Sequential(layers(), **shape, dtype=dtype, seed=11)
    model.compile(loss=loss, optimizer=opt())
    sw = np.linspace(0.5, 1.5, 600)
    hist = model.fit(X[:600], y[:600], epochs=2, batch_size=128, verbose=0,
                     validation_data=(X[600:], y[600:]), sample_weight=sw)
    losses = [model.train_on_batch(X[i:i + 50], y[i:i + 50]) for i in range(0, 200, 50)]
    h = hashlib.sha256()
    for w in model.get_weights():
        h.update(np.ascontiguousarray(w).tobytes())
    for arrays in (model.optimizer.state or {}).values():
        for a in arrays:
            h.update(np.ascontiguousarray(a).tobytes())
    h.update(repr([hist.history[key] for key in sorted(hist.history) if key not in ("time",)])
             .encode())
    h.update(repr(losses).encode())
    h.update(model.predict(X[600:]).tobytes())
    return h.hexdigest()


def all_hashes():
    return {f"{name}-{dtype}": train_and_hash(name, dtype)
            for name in CASES for dtype in ("float32", "float64")}


def _recorded():
    if not os.path.exists(TABLE):
        return {}
    with open(TABLE) as f:
        return json.load(f)


@pytest.mark.parametrize("nthreads", [1, 2, 3])
def test_weights_keep_their_bits(nthreads):
    table = _recorded().get(fusenn.gemm_isa())
    if table is None:
        pytest.skip(f"no hashes recorded for ISA {fusenn.gemm_isa()}")
    with fusenn.threads(nthreads):
        got = all_hashes()
    changed = sorted(key for key in table if got.get(key) != table[key])
    assert not changed, f"trained weights changed bits ({fusenn.gemm_isa()}): {changed}"
    assert set(got) == set(table)


if __name__ == "__main__":
    if sys.argv[1:] == ["--one-isa"]:
        print(json.dumps({fusenn.gemm_isa(): all_hashes()}))
    elif sys.argv[1:] == ["--record"]:
        table = {}
        for isa in ("generic", "avx2", "avx512"):
            out = subprocess.run([sys.executable, __file__, "--one-isa"], check=True,
                                 capture_output=True, text=True,
                                 env={**os.environ, "FUSENN_ISA": isa}).stdout
            table.update(json.loads(out))  # a CPU without the ISA reports a lower one
        os.makedirs(os.path.dirname(TABLE), exist_ok=True)
        with open(TABLE, "w") as f:
            json.dump(table, f, indent=1, sort_keys=True)
            f.write("\n")
        print(f"recorded {sum(map(len, table.values()))} hashes for {sorted(table)} in {TABLE}")
    else:
        sys.exit(__doc__)
