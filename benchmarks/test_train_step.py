"""One full training step of an MLP on one batch: fusenn's C backend ("c") vs its NumPy
backend ("numpy"), and, when importable, PyTorch ("torch") and scikit-learn ("sklearn").

Nets (TRAIN_NETS in conftest.py): relu hidden layers (tanh and sigmoid in the "-tanh" and
"-sigmoid" nets), softmax output, cross-entropy,
SGD(lr=0.01, momentum=0.9) (or Adam(lr=1e-3), the default of Keras and scikit-learn, for
the "-adam" net; scikit-learn then sits out: its Adam adds eps to sqrt(v)), float32, all
frameworks from the same initial weights; each at 1 and 2 threads, one group per net and
thread count ("train_step-64-32-10-b32-1t").
"n threads" limits every pool the backend computes with: fusenn's kernels
(fusenn.threads), NumPy's BLAS (threadpoolctl) and torch's (torch.set_num_threads).

Before timing, each framework's first step is checked against a float64 NumPy model
started from the same weights; the timed calls then keep training on the same batch.
fusenn times model.train_on_batch; torch zero_grad + forward + loss + backward +
optimizer step + loss.item(); sklearn one partial_fit (input validation included).
"""

import math


def test_train_step(run, train_case, limit_threads, net, nthreads, backend):
    case = train_case(net)
    with limit_threads(backend, nthreads) as info:
        step, weights = case.make_trainer(backend)
        loss = step()
        case.check_first_step(weights(), loss, dtype=None if backend == "sklearn" else case.X.dtype)
        loss = run(f"train_step-{net}-{nthreads}t", backend, step,
                   info=dict(layers="-".join(map(str, case.sizes)), batch=case.batch, **info))
    assert math.isfinite(loss)
