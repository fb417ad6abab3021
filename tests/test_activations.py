"""The activations beyond the original six (gelu, gelu_tanh, elu, softplus,
swish) and the backward-through-z contract, for every activation:

  * the math itself, against naive float64 formulas from Python's math module
    (fusenn.ops and fusenn.reference could agree on a wrong formula);
  * float64 finite differences of every activation's derivative at the kernel
    level, on both backends;
  * extreme inputs (|z| up to 1e4): finite results, no floating-point warnings;
  * float32 sigmoid and tanh (vectors, per ISA): within 3 ulp of the exact value
    at every float32 exponent, subnormal results and signed zeros included;
  * GEMM's fused store gives the same bits as the standalone activation kernel;
  * bitwise independence of the thread count;
  * NEEDS_Z: z is required (ValueError naming z), and the C dense backward
    refuses such activations (FUSENN_EINVAL) without writing anything.
test_kernels.py compares ops with reference for every activation, dtype,
shape and layout; this file does not repeat that.
"""

import math
import textwrap

import numpy as np
import pytest

import fusenn
from fusenn import _kernels, ops
from fusenn import reference as ref
from test_kernels import DTYPES, THREAD_COUNTS, assert_close, run_with_isa

ACTIVATIONS = list(ref.ACTIVATIONS)
BACKENDS = [pytest.param(ops, id="c"), pytest.param(ref, id="numpy")]
NEW = ("gelu", "gelu_tanh", "elu", "softplus", "swish")


def _z_for(activation):
    """Only activations in NEEDS_Z get z in calls that accept None."""
    return activation in ref.NEEDS_Z


def backward(backend, z, a, da, activation):
    return backend.activation_backward(a, da, activation, z if _z_for(activation) else None)


# ---- the math -------------------------------------------------------------------------------

def _sigmoid(x):
    return 1 / (1 + math.exp(-x))


# Naive textbook formulas (fine in float64 on [-6, 6]) and their derivatives.
FORMULAS = {
    "gelu": (lambda x: 0.5 * x * (1 + math.erf(x / math.sqrt(2))),
             lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2)))
             + x * math.exp(-x * x / 2) / math.sqrt(2 * math.pi)),
    "gelu_tanh": (lambda x: 0.5 * x * (1 + math.tanh(math.sqrt(2 / math.pi)
                                                     * (x + 0.044715 * x**3))),
                  None),  # derivative: finite differences below
    "elu": (lambda x: x if x > 0 else math.exp(x) - 1,
            lambda x: 1.0 if x > 0 else math.exp(x)),
    "softplus": (lambda x: math.log(1 + math.exp(x)), _sigmoid),
    "swish": (lambda x: x * _sigmoid(x),
              lambda x: _sigmoid(x) * (1 + x * (1 - _sigmoid(x)))),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("activation", NEW)
def test_new_activations_match_textbook_formulas(activation, backend):
    z = np.linspace(-6, 6, 121).reshape(11, 11)
    f, df = FORMULAS[activation]
    want = np.vectorize(f)(z)
    a = backend.activation_forward(z, activation)
    np.testing.assert_allclose(a, want, rtol=1e-12, atol=1e-14)
    if df is not None:
        dz = backward(backend, z, a, np.ones_like(z), activation)
        np.testing.assert_allclose(dz, np.vectorize(df)(z), rtol=1e-12, atol=1e-14)


def test_known_values():
    """A few fixed float64 values of the definitions."""
    z = np.array([[-1.0, 0.0, 1.0, 2.0]])
    np.testing.assert_allclose(ops.activation_forward(z, "gelu"),
                               [[-0.15865525393145707, 0, 0.8413447460685429,
                                 1.9544997361036416]], rtol=1e-14)
    np.testing.assert_allclose(ops.activation_forward(z, "gelu_tanh"),
                               [[-0.15880800939172324, 0, 0.8411919906082768,
                                 1.954597694087775]], rtol=1e-14)
    np.testing.assert_allclose(ops.activation_forward(z, "elu"),
                               [[math.expm1(-1), 0, 1, 2]], rtol=1e-15)
    np.testing.assert_allclose(ops.activation_forward(z, "softplus"),
                               [[math.log1p(math.exp(-1)), math.log(2), math.log1p(math.e),
                                 math.log1p(math.exp(2))]], rtol=1e-15)
    np.testing.assert_allclose(ops.activation_forward(z, "swish"),
                               [[-_sigmoid(-1), 0, _sigmoid(1), 2 * _sigmoid(2)]], rtol=1e-15)


def test_constants_and_alias():
    assert ref.ELU_ALPHA == ops.ELU_ALPHA == 1.0
    assert ref.ACTIVATIONS[6:] == ("gelu", "gelu_tanh", "elu", "softplus", "swish")
    assert fusenn.Dense(3, "silu").activation == "swish"
    for i, name in enumerate(ref.ACTIVATIONS):  # the C enum agrees with NEEDS_Z
        assert _kernels.activation_needs_z(i) == (name in ref.NEEDS_Z), name


# ---- derivatives by finite differences ----------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_derivative_matches_finite_differences(activation, backend):
    """d/dz sum(act(z) * r) by central differences (float64) against
    activation_backward(act(z), r, z); z keeps away from the relu kinks at 0."""
    rng = np.random.default_rng(20)
    z = rng.standard_normal((4, 7)) * 3
    z[np.abs(z) < 0.05] = 0.5
    z[0, :3] = [-9.0, 9.0, -0.3]  # tails as well
    r = rng.standard_normal(z.shape)
    loss = lambda zz: float(np.sum(backend.activation_forward(zz, activation) * r))  # noqa: E731
    h = 1e-6
    fd = np.empty_like(z)
    for idx in np.ndindex(z.shape):
        zp, zm = z.copy(), z.copy()
        zp[idx] += h
        zm[idx] -= h
        fd[idx] = (loss(zp) - loss(zm)) / (2 * h)
    got = backward(backend, z, backend.activation_forward(z, activation), r, activation)
    np.testing.assert_allclose(got, fd, rtol=1e-6, atol=1e-7 * np.max(np.abs(fd)))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("activation", sorted(ref.NEEDS_Z))
def test_dense_backward_with_z_matches_finite_differences(activation, backend):
    rng = np.random.default_rng(21)
    x, w, b = rng.standard_normal((5, 4)), rng.standard_normal((4, 3)), rng.standard_normal(3)
    r = rng.standard_normal((5, 3))
    loss = lambda xx, ww, bb: float(np.sum(backend.dense_forward(xx, ww, bb, activation) * r))  # noqa: E731
    y = backend.dense_forward(x, w, b, activation)
    z = backend.dense_forward(x, w, b, "identity")
    dw, db, dx = backend.dense_backward(x, w, y, r, activation, z=z)
    h = 1e-6
    for value, grad, which in ((x, dx, 0), (w, dw, 1), (b, db, 2)):
        fd = np.empty_like(value)
        for idx in np.ndindex(value.shape):
            args_p, args_m = [x.copy(), w.copy(), b.copy()], [x.copy(), w.copy(), b.copy()]
            args_p[which][idx] += h
            args_m[which][idx] -= h
            fd[idx] = (loss(*args_p) - loss(*args_m)) / (2 * h)
        np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-7 * np.max(np.abs(fd)))


# ---- extreme inputs ---------------------------------------------------------------------------

EXTREMES = [-1e4, -1e3, -100, -30, -20, -5, -1e-30, -0.0, 0.0, 1e-30, 5, 20, 30, 100, 1e3, 1e4]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_extreme_inputs_are_finite_without_warnings(activation, dtype, backend):
    z = np.array([EXTREMES], dtype)
    da = np.ones_like(z)
    # underflow (exp(-1e4) = 0) is ignored by NumPy's default settings too
    with np.errstate(all="raise", under="ignore"):
        a = backend.activation_forward(z, activation)
        dz = backward(backend, z, a, da, activation)
    assert np.all(np.isfinite(a)) and np.all(np.isfinite(dz))
    if activation in NEW:  # the limits: act(z) -> z, act'(z) -> 1 for z -> +inf
        np.testing.assert_allclose(a[0, -2:], z[0, -2:], rtol=1e-6)
        np.testing.assert_allclose(dz[0, -2:], 1, rtol=1e-6)
        lower = -ref.ELU_ALPHA if activation == "elu" else 0.0  # and -alpha or 0, 0 for -inf
        np.testing.assert_allclose(a[0, :2], lower, atol=1e-30)
        np.testing.assert_allclose(dz[0, :2], 0, atol=1e-30)
    if backend is ops:
        assert_close(a, ref.activation_forward(z, activation), dtype, _k(activation))
        assert_close(dz, backward(ref, z, ref.activation_forward(z, activation), da, activation),
                     dtype, _k(activation))


def _k(activation):
    return len(EXTREMES) if activation == "softmax" else 1


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", NEW)
def test_extreme_pre_activations_in_dense_forward(activation, dtype):
    """Through GEMM's fused store: z = x w + b = +-1e4 and other extremes."""
    x = np.ones((3, 1), dtype)
    w = np.array([EXTREMES], dtype)
    b = np.zeros(len(EXTREMES), dtype)
    with np.errstate(all="raise"):
        y = ops.dense_forward(x, w, b, activation)
    assert np.all(np.isfinite(y))
    np.testing.assert_array_equal(y, np.repeat(ops.activation_forward(w, activation), 3, 0))


# ---- float32 sigmoid and tanh: vectors, per ISA --------------------------------------------

def float32_sigmoid_tanh_check(most_ulp=3.0):
    """ops' float32 sigmoid and tanh against float64 NumPy: random bit patterns (every
    exponent and sign), a fine grid over [-110, 110] (sigmoid's subnormal results lie
    below -87.3) and the special values. Returns the largest errors, in ulp of the
    float32 nearest the exact value."""
    rng = np.random.default_rng(31)
    z = rng.integers(0, 2**32, size=1_000_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    z = np.concatenate([z[np.isfinite(z)], np.linspace(-110, 110, 1_000_001, dtype=np.float32)])
    e = np.exp(-np.abs(z.astype(np.float64)))  # sigmoid without cancellation, as FN(sigmoid_pair)
    exact = {"tanh": np.tanh(z.astype(np.float64)), "sigmoid": np.where(z >= 0, 1, e) / (1 + e)}
    worst = {}
    for act, want in exact.items():
        got = ops.activation_forward(z.reshape(1, -1), act).ravel()
        ulp = np.spacing(np.abs(want).astype(np.float32)).astype(np.float64)
        err = np.abs(got - want) / ulp
        i = int(np.argmax(err))
        assert err[i] <= most_ulp, f"{act}({z[i]!r}) = {got[i]!r}, want {want[i]!r}: {err[i]:.2f}"
        worst[act] = float(err[i])
    special = np.float32([[-0.0, 0.0, -np.inf, np.inf, np.nan, -200, 200]])
    t, s = (ops.activation_forward(special, act)[0] for act in ("tanh", "sigmoid"))
    assert np.signbit(t[0]) and t[0] == 0 and not np.signbit(t[1]) and t[1] == 0
    np.testing.assert_array_equal(t[2:4], [-1, 1])
    np.testing.assert_array_equal(s[:4], [0.5, 0.5, 0, 1])
    assert np.isnan(t[4]) and np.isnan(s[4])
    np.testing.assert_array_equal(t[5:], [-1, 1])
    np.testing.assert_array_equal(s[5:], [0, 1])
    return worst


# Runs float32_sigmoid_tanh_check in a fresh interpreter with FUSENN_ISA set (read once
# per process), so that each ISA's vector code is checked.
_ULP_CHILD = textwrap.dedent("""
    import sys
    import fusenn
    sys.path.insert(0, sys.argv[2])
    from test_activations import float32_sigmoid_tanh_check

    assert fusenn.gemm_isa() == sys.argv[1], (fusenn.gemm_isa(), sys.argv[1])
    print("ok", sys.argv[1], float32_sigmoid_tanh_check())
""")


@pytest.mark.parametrize("isa", ["generic", "avx2", "avx512"])
def test_float32_sigmoid_tanh_within_3_ulp(isa):
    assert run_with_isa(isa, _ULP_CHILD).split()[:2] == ["ok", isa]


# ---- fused store, threads ------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_fused_store_gives_the_bits_of_the_standalone_kernel(activation, dtype):
    """dense_forward applies elementwise activations in GEMM's tile store (full
    tiles in the micro-kernel, edge tiles in the generic store); both must
    give exactly activation_forward(x w + b)."""
    rng = np.random.default_rng(22)
    for n, d_in, d_out in [(13, 33, 37), (64, 8, 64), (1, 1, 1)]:
        x = rng.standard_normal((n, d_in)).astype(dtype)
        w = (rng.standard_normal((d_in, d_out)) * 2).astype(dtype)
        b = rng.standard_normal(d_out).astype(dtype)
        z = ops.dense_forward(x, w, b, "identity")
        np.testing.assert_array_equal(ops.dense_forward(x, w, b, activation),
                                      ops.activation_forward(z, activation))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_activation_kernels_bitwise_independent_of_threads(activation, dtype):
    rng = np.random.default_rng(23)
    z = (rng.standard_normal((300, 129)) * 4).astype(dtype)  # above the parallel threshold
    da = rng.standard_normal(z.shape).astype(dtype)
    results = []
    for nt in THREAD_COUNTS:
        with fusenn.threads(nt):
            a = ops.activation_forward(z, activation)
            results.append((a, backward(ops, z, a, da, activation)))
    for res in results[1:]:
        for got, first in zip(res, results[0]):
            assert np.array_equal(got, first)


# ---- the z contract --------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("activation", sorted(ref.NEEDS_Z))
def test_needs_z_without_z_is_value_error(activation, backend):
    rng = np.random.default_rng(24)
    x, w, b = rng.standard_normal((3, 4)), rng.standard_normal((4, 2)), rng.standard_normal(2)
    y = backend.dense_forward(x, w, b, activation)
    with pytest.raises(ValueError, match=r"\bz\b"):
        backend.activation_backward(y, y, activation)
    with pytest.raises(ValueError, match=r"\bz\b"):
        backend.dense_backward(x, w, y, y, activation)


@pytest.mark.parametrize("activation", [a for a in ACTIVATIONS if a not in ref.NEEDS_Z])
def test_z_is_ignored_where_not_needed(activation):
    rng = np.random.default_rng(25)
    z = rng.standard_normal((5, 6))
    a, da = ops.activation_forward(z, activation), rng.standard_normal(z.shape)
    np.testing.assert_array_equal(ops.activation_backward(a, da, activation, z + 1),
                                  ops.activation_backward(a, da, activation))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", sorted(ref.NEEDS_Z))
def test_c_dense_backward_refuses_needs_z_activations(activation, dtype):
    """fusenn_dense_backward returns FUSENN_EINVAL (the binding: ValueError)
    before writing any output."""
    rng = np.random.default_rng(26)
    x, w = rng.standard_normal((3, 4)).astype(dtype), rng.standard_normal((4, 2)).astype(dtype)
    y = dy = rng.standard_normal((3, 2)).astype(dtype)
    outs = [np.full((3, 2), np.nan, dtype), np.full((4, 2), np.nan, dtype),
            np.full(2, np.nan, dtype), np.full((3, 4), np.nan, dtype)]
    with pytest.raises(ValueError, match="pre-activation"):
        _kernels.dense_backward(x, w, y, dy, ACTIVATIONS.index(activation), *outs, 1)
    assert all(np.isnan(o).all() for o in outs)
    assert _kernels.FUSENN_EINVAL_CODE == -3


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_gelu_tanh_where_the_cubic_overflows(dtype, backend):
    """z^3 overflows the dtype: the sigmoid saturates, so act = z or -0 and act' = 1 or 0."""
    big = np.sqrt(np.finfo(dtype).max)
    z = np.array([[-big, big]], dtype)
    with np.errstate(all="raise", under="ignore"):
        a = backend.activation_forward(z, "gelu_tanh")
        dz = backend.activation_backward(a, np.ones_like(z), "gelu_tanh", z)
    np.testing.assert_array_equal(a, [[0, big]])
    np.testing.assert_array_equal(dz, [[0, 1]])
