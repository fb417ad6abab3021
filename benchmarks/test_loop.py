"""A user's training loop, on 2 threads (NumPy's BLAS and the framework's): each batch
of 128 MNIST-shaped images is preprocessed with NumPy (scaled to [0, 1], centred, whitened
by a 784 x 784 matrix with @, a little noise added), then one training step of
784-256-128-10 (SGD with momentum): fusenn's train_on_batch ("c"), its NumPy backend
("numpy") or a PyTorch step ("torch"). One timed call is one batch of the loop, so the
group shows what NumPy's threads and the framework's do to each other
(train_step-784-256-128-10-b128-2t is the step alone).
"""

import functools

import numpy as np
import pytest

from conftest import limited_threads

BATCH, BATCHES = 128, 16


@functools.lru_cache(maxsize=None)
def data():
    rng = np.random.default_rng(5)
    raw = rng.integers(0, 256, size=(BATCH * BATCHES, 784), dtype=np.uint8)
    y = rng.integers(0, 10, BATCH * BATCHES)
    mean = raw.mean(axis=0, dtype=np.float32) / 255
    whiten = (np.eye(784) + 0.01 * rng.standard_normal((784, 784))).astype(np.float32)
    return raw, y, mean, whiten


def loop(step):
    """A callable doing the next batch of the loop: NumPy preprocessing, then step."""
    raw, y, mean, whiten = data()
    rng = np.random.default_rng(0)
    state = {"i": 0}

    def one_batch():
        i = state["i"] % BATCHES
        state["i"] += 1
        rows = slice(i * BATCH, (i + 1) * BATCH)
        xb = raw[rows].astype(np.float32) / 255 - mean
        xb = xb @ whiten  # NumPy's BLAS, on its threads
        xb += rng.standard_normal(xb.shape, dtype=np.float32) * 0.01
        return step(xb, y[rows])

    return one_batch


@pytest.mark.parametrize("backend", ("c", "numpy", "torch"))
def test_training_loop_with_numpy_work(run, train_case, backend):
    case = train_case("784-256-128-10-b128")
    with limited_threads(backend, 2) as info:
        if backend == "torch":
            import torch
            net, _, opt, loss_fn = case.torch_model()

            def step(X, y):
                opt.zero_grad()
                loss = loss_fn(net(torch.from_numpy(X)), torch.from_numpy(y))
                loss.backward()
                opt.step()
                return loss.item()
        else:
            step = case.make_model(backend).train_on_batch
        one_batch = loop(step)
        assert np.isfinite(one_batch())
        run("loop-numpy-work-784-256-128-10-b128-2t", backend, one_batch,
            info=dict(batch=BATCH, **info))
