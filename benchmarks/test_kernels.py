"""Kernel benchmarks: fusenn's C kernels ("c") vs the NumPy reference ("numpy"), float32.

One group per operation and shape (e.g. "gemm-1024"), so each speed-up is read
within a group. Shapes, data and float64 oracles live in conftest.py; every test
checks the result it timed, so `--benchmark-disable` doubles as a smoke test.
"""

from fusenn import ops, reference

BACKEND = {"c": ops, "numpy": reference}


def test_gemm(run, gemm_case, limit_threads, gemm_shape, nthreads, backend):
    """1 and 2 threads (NumPy's BLAS limited too): groups "gemm-1024-1t", "gemm-1024-2t"."""
    case = gemm_case(gemm_shape)
    a, b, trans_a, trans_b = case.args()
    matmul = BACKEND[backend].matmul
    with limit_threads(backend, nthreads) as info:
        c = run(f"gemm-{gemm_shape}-{nthreads}t", backend,
                lambda: matmul(a, b, trans_a=trans_a, trans_b=trans_b),
                info=dict(m=case.m, k=case.k, n=case.n, trans_a=trans_a, trans_b=trans_b,
                          dtype=case.dtype.name, flop=case.flop, **info))
    case.check(c)


def test_dense_forward(run, dense_case, dense_shape, backend):
    case = dense_case(dense_shape)
    result = run(f"dense_forward-{dense_shape}", backend, BACKEND[backend].dense_forward,
                 *case.forward_args(), info=dict(activation=case.activation))
    case.check_forward(result)


def test_dense_backward(run, dense_case, dense_shape, backend):
    case = dense_case(dense_shape)
    result = run(f"dense_backward-{dense_shape}", backend, BACKEND[backend].dense_backward,
                 *case.backward_args(), info=dict(activation=case.activation, need_dx=True))
    case.check_backward(result)


def test_softmax_cross_entropy(run, softmax_case, softmax_shape, backend):
    case = softmax_case(softmax_shape)
    result = run(f"softmax_cross_entropy-{softmax_shape}", backend,
                 BACKEND[backend].softmax_cross_entropy, *case.args())
    case.check(result)
