"""One full training step, model.train_on_batch, on the C backend vs the NumPy backend.

Both models are built with seed 0 (identical float32 weights) and compiled with
cross-entropy and SGD(lr=0.01, momentum=0.9). Before timing, the first step is
checked against a float64 NumPy model started from the same weights; the timed
calls then keep training on the same batch.
"""

import math


def test_train_step(run, train_case, net, backend):
    case = train_case(net)
    model = case.make_model(backend)
    case.check_first_step(model, model.train_on_batch(case.X, case.y))
    loss = run(f"train_step-{net}", backend, model.train_on_batch, case.X, case.y,
               info=dict(layers="-".join(map(str, case.sizes)), batch=case.batch))
    assert math.isfinite(loss)
