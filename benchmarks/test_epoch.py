"""One epoch of training on 60,000 MNIST-shaped samples (784-256-128-10, batch 128,
shuffled, SGD(lr=0.01, momentum=0.9), float32, 2 threads): fusenn's fit on the C backend
("c") vs its NumPy backend ("numpy"), and torch / sklearn when importable.

An epoch takes ~0.3-3 s, so each variant is timed with benchmark.pedantic over a few
rounds (EpochCase.pedantic in conftest.py); each round continues training the same model.
Under --benchmark-disable the data have EPOCH_SMOKE_ROWS rows and the epoch runs once.
The check: the epoch's loss is finite and the trained net's loss over the data set is
below the initial one.
"""

import math


def test_epoch(run, epoch_case, limit_threads, epoch_net, nthreads, backend):
    case = epoch_case(epoch_net)
    with limit_threads(backend, nthreads) as info:
        epoch, weights = case.make_trainer(backend)
        loss = run(f"epoch-{epoch_net}-{nthreads}t", backend, epoch, pedantic=case.pedantic,
                   info=dict(layers="-".join(map(str, case.sizes)), batch=case.batch,
                             samples=len(case.X), **info))
    assert math.isfinite(loss), f"epoch loss {loss!r}"
    after = case.loss_of(weights())
    assert after < case.initial_loss, f"loss over the data {after:.4f}, initially {case.initial_loss:.4f}"
