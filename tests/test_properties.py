"""Property tests (hypothesis): fusenn.ops against fusenn.reference, and the model API.

Every kernel in fusenn.ops is run on random inputs next to its NumPy twin in
fusenn.reference: random shapes (0 where legal, 1, primes, up to 130), memory
layouts (C / Fortran order, sliced rows and columns, negative steps, transposes),
both dtypes, and value classes (normal, wide exponent range, tiny, subnormal,
signed zeros, huge, and NaN/inf where IEEE semantics make the result
order-independent).

Tolerances are error bounds, not fudge factors: each comparison allows
c * eps * (reduction length) * (magnitude of the terms involved), computed
element-wise in float64 from the absolute values of the operands (for GEMM
that is the classic |A| |B| bound), plus a floor of a few subnormals per term
for gradual underflow. Where the reference result is NaN or +-inf the C
result must be the same non-finite value.

"Huge" values (1e30 in float32, 1e160 in float64) are used only where the
overflow semantics of the two implementations are the same by construction:
in a product that feeds a sum, only one side may be huge and the other stays
moderate (|x| < ~50), so no finite sum overflows (that would depend on
summation order and FMA contraction, which the two do not share); and mse's
loss is compared with its documented float64-squared definition (in float32
the reference squares in float32 and gives inf above |a - t| ~ 1.8e19, the
kernel a finite value).

Known reference limitation: reference softmax cannot reduce a row of length 0
(NumPy raises), so for d = 0 only the kernel's empty result is checked.

Budgets: the whole file runs in well under 60 s. Set CI=1 for the "ci" profile
(derandomized, so runs are reproducible). The number of examples run per test
is written to the terminal at the end of the module (and with
--hypothesis-show-statistics hypothesis reports it too).
"""

import collections
import functools
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, note, settings
from hypothesis import strategies as st

import fusenn
from fusenn import ops
from fusenn import reference as ref

# ---- hypothesis profiles ----------------------------------------------------------------

_COMMON = dict(deadline=None, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                      HealthCheck.filter_too_much])
settings.register_profile("ci", derandomize=True, database=None, **_COMMON)
settings.register_profile("dev", **_COMMON)
settings.load_profile("ci" if os.environ.get("CI") else "dev")

EXAMPLES = collections.Counter()  # test name -> examples actually run

# Each property test runs in a child pytest process (test_property_in_subprocess
# below), so that a crash in a kernel (a segfault on some strided input, say) fails
# that one test instead of killing the whole run. In the child this is set:
INNER = os.environ.get("FUSENN_PROPERTIES_INNER") == "1"
inner = pytest.mark.skipif(not INNER, reason="run in a subprocess by test_property_in_subprocess")


@pytest.fixture(scope="module", autouse=True)
def _report_example_counts(request):
    yield
    lines = [f"  {name}: {count}" for name, count in sorted(EXAMPLES.items())]
    text = (f"hypothesis examples run in test_properties.py (total {sum(EXAMPLES.values())}):\n"
            + "\n".join(lines))
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None:
        print(text)
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line("")
        reporter.write_line(text)


def count(name):
    EXAMPLES[name] += 1


# ---- value and layout generation ---------------------------------------------------------

DTYPES = (np.float32, np.float64)
HUGE = {np.float32: 1e30, np.float64: 1e160}
TINY = {np.float32: 1e-30, np.float64: 1e-300}
SIZES = st.one_of(st.sampled_from([0, 1, 2, 3, 5, 7, 11, 13, 17, 31, 37, 61, 67, 127, 128, 129,
                                   130]),
                  st.integers(0, 130))
POS_SIZES = SIZES.filter(lambda s: s > 0)
SMALL_SIZES = st.one_of(st.sampled_from([0, 1, 2, 3, 5, 7, 13, 31, 64, 65]), st.integers(0, 70))

# Value classes: "mixed" sprinkles every special class into normal values.
FINITE_KINDS = ("normal", "wide", "tiny", "subnormal", "zeros", "mixed", "integers")
HUGE_KINDS = ("huge", "mixed_huge")
NONFINITE_KINDS = ("mixed_nonfinite",)
# Bounded by ~50: the partner of a huge operand in a product, so that no finite
# sum of up to 130 such products overflows (a finite overflow would depend on
# summation order, which the two implementations do not share).
MODERATE_KINDS = ("normal", "tiny", "subnormal", "zeros", "mixed", "integers")


def kinds_for(side, huge_side, base=FINITE_KINDS, extra=()):
    """Value kinds for operand `side` when `huge_side` (or None) may hold huge values."""
    if huge_side is None:
        return base + extra
    if side == huge_side:
        return base + HUGE_KINDS + extra
    return tuple(k for k in base if k in MODERATE_KINDS) + extra


def _specials(dtype, huge, nonfinite):
    fi = np.finfo(dtype)
    vals = [0.0, -0.0, 1.0, -1.0, fi.smallest_subnormal, -fi.smallest_subnormal,
            fi.smallest_normal, -fi.smallest_normal / 3, TINY[dtype], -TINY[dtype], 0.5, -2.0]
    if huge:
        vals += [HUGE[dtype], -HUGE[dtype], 3.5 * HUGE[dtype]]
    if nonfinite:
        vals += [np.nan, np.inf, -np.inf]
    return np.array(vals, dtype=dtype)


def make_values(seed, shape, dtype, kind):
    """Values of `kind` for `shape` (C-contiguous), from a numpy generator."""
    rng = np.random.default_rng(seed)
    fi = np.finfo(dtype)
    normal = rng.standard_normal(shape)
    if kind == "normal":
        v = normal * 10.0 ** rng.uniform(-1, 1)
    elif kind == "wide":  # each element its own exponent
        v = normal * 10.0 ** rng.uniform(-6, 6, shape)
    elif kind == "tiny":
        v = normal * TINY[dtype]
    elif kind == "subnormal":
        v = rng.uniform(-1, 1, shape) * float(fi.smallest_normal)
    elif kind == "zeros":
        v = np.where(rng.random(shape) < 0.5, 0.0, -0.0)
    elif kind == "integers":
        v = rng.integers(-3, 4, shape).astype(np.float64)
    elif kind == "huge":
        v = np.sign(normal) * HUGE[dtype] * rng.uniform(1, 4, shape)
    elif kind in ("mixed", "mixed_huge", "mixed_nonfinite"):
        v = normal.astype(dtype)
        specials = _specials(dtype, kind != "mixed", kind == "mixed_nonfinite")
        mask = rng.random(shape) < rng.uniform(0.05, 0.5)
        v[mask] = rng.choice(specials, size=int(mask.sum()))
        return v.astype(dtype)
    else:
        raise ValueError(kind)
    return np.asarray(v).astype(dtype)


LAYOUT = st.tuples(st.sampled_from(["C", "F"]), st.sampled_from([1, 1, 2, 3, -1, -2]),
                   st.sampled_from([1, 1, 2, -1, -3]))


def with_layout(values, layout):
    """The same elements in another memory layout: storage order C or F, and a
    step (possibly negative) per axis. Strided views live in a NaN-filled
    parent, so a kernel that ignores a stride reads NaN."""
    order, s0, s1 = layout
    if values.ndim == 1:
        steps, storage, flip = (s0,), values, False
    else:
        flip = order == "F"
        storage = values.T if flip else values
        steps = (s1, s0) if flip else (s0, s1)
    if all(s == 1 for s in steps):
        out = np.ascontiguousarray(storage).copy()
    else:
        parent = np.full(tuple(abs(s) * d for s, d in zip(steps, storage.shape)), np.nan,
                         values.dtype)
        out = parent[tuple(slice(None, None, s) for s in steps)]
        assert out.shape == storage.shape
        out[...] = storage
    return out.T if flip else out


@st.composite
def operand(draw, shape, dtype, kinds=FINITE_KINDS, layout=True):
    kind = draw(st.sampled_from(kinds))
    seed = draw(st.integers(0, 2**32 - 1))
    values = make_values(seed, shape, dtype, kind)
    lay = draw(LAYOUT) if layout else ("C", 1, 1)
    note(f"operand {shape} {np.dtype(dtype).name} kind={kind} seed={seed} layout={lay}")
    return with_layout(values, lay)


# ---- comparison --------------------------------------------------------------------------

def quiet(fn):
    """Run with NumPy's floating-point warnings off: error bounds may overflow to
    inf (no usable bound), which `check` handles; the reference warns on inf - inf."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with np.errstate(all="ignore"):
            return fn(*args, **kwargs)
    return wrapper


def f64abs(a):
    """|a| in float64 with non-finite entries replaced by 0 (for error bounds)."""
    a = np.asarray(a, dtype=np.float64)
    return np.where(np.isfinite(a), np.abs(a), 0.0)


def eps(dtype):
    return float(np.finfo(dtype).eps)


def floor(dtype, terms=1):
    """Absolute error allowed for gradual underflow: a few subnormals per summed term."""
    return 4.0 * (terms + 2) * float(np.finfo(dtype).smallest_subnormal)


def check(got, want, bound, what, signed_zeros=False):
    """got vs want: same type/shape/dtype; same NaN and signed-inf pattern;
    |got - want| <= bound elsewhere (bound broadcast, float64), where an inf counts
    as within a bound that reaches past the dtype's largest finite value on its side."""
    if isinstance(want, float):
        assert type(got) is float, f"{what}: expected a Python float, got {type(got)}"
    else:
        assert isinstance(got, np.ndarray), f"{what}: got {type(got)}"
        assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
        assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} != {want.dtype}"
    g = np.asarray(got, dtype=np.float64)
    w = np.asarray(want, dtype=np.float64)
    # a bound that overflowed (inf, or 0 * inf = NaN) only says "no usable bound here"
    bound = np.nan_to_num(np.broadcast_to(np.asarray(bound, dtype=np.float64), w.shape),
                          nan=np.inf)
    nan_w, nan_g = np.isnan(w), np.isnan(g)
    bad = nan_w != nan_g
    inf_w = np.isinf(w)
    bad |= inf_w & (g != w)
    fin = np.isfinite(w)
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.abs(g - w)
    # where the bound reaches past the dtype's largest value, an overflow to inf of that
    # sign is within it
    top = float(np.finfo(want.dtype if isinstance(want, np.ndarray) else np.float64).max)
    with np.errstate(invalid="ignore"):
        overflowed = fin & (((g == np.inf) & (w + bound > top)) |
                            ((g == -np.inf) & (w - bound < -top)))
    bad |= fin & ~(err <= bound) & ~overflowed
    if signed_zeros:
        bad |= (w == 0) & (g == 0) & (np.signbit(w) != np.signbit(g))
    if np.any(bad):
        idx = np.argwhere(bad) if w.ndim else [()]
        first = tuple(idx[0])
        raise AssertionError(
            f"{what}: {int(np.sum(bad))} of {w.size} elements differ; first at {first}: "
            f"got {g[first]!r} want {w[first]!r} |diff| {err[first]!r} bound {bound[first]!r}")


def sum_error(n, k):
    """Relative error of the C losses' float64 accumulation: rows are cut into 64
    chunks summed sequentially (up to ceil(n/64) * k terms), then the partials."""
    return (-(-n // 64) * k + 64) * 2.0**-52


def unchanged(before, after, what):
    for i, (b, a) in enumerate(zip(before, after)):
        if isinstance(b, np.ndarray):
            assert np.array_equal(a, b, equal_nan=True), f"{what} modified input {i}"


def snapshot(args):
    return [a.copy() if isinstance(a, np.ndarray) else a for a in args]


def reference(name, *args):
    with np.errstate(all="ignore"):
        return getattr(ref, name)(*args)


# ---- GEMM --------------------------------------------------------------------------------

@inner
@settings(max_examples=300)
@given(data=st.data(), m=SIZES, n=SIZES, k=SIZES, trans_a=st.booleans(), trans_b=st.booleans(),
       dtype=st.sampled_from(DTYPES), huge_side=st.sampled_from([None, "a", "b"]),
       nonfinite=st.booleans(), threads=st.sampled_from([1, 2]))
@quiet
def test_matmul_matches_reference(data, m, n, k, trans_a, trans_b, dtype, huge_side, nonfinite,
                                  threads):
    assume(m * n * k <= 130 * 130 * 64)
    count("matmul")
    extra = NONFINITE_KINDS if nonfinite else ()
    a = data.draw(operand((k, m) if trans_a else (m, k), dtype,
                          kinds_for("a", huge_side, extra=extra)), "a")
    b = data.draw(operand((n, k) if trans_b else (k, n), dtype,
                          kinds_for("b", huge_side, extra=extra)), "b")
    before = snapshot([a, b])
    with fusenn.threads(threads):
        got = ops.matmul(a, b, trans_a, trans_b)
    unchanged(before, [a, b], "matmul")
    want = reference("matmul", a, b, trans_a, trans_b)
    A, B = (a.T if trans_a else a), (b.T if trans_b else b)
    bound = (f64abs(A) @ f64abs(B)) * (2 * (k + 2) * eps(dtype)) + floor(dtype, k)
    # Where the finite products of an element can overflow the dtype, its value
    # depends on summation order and on FMA (which never rounds a product): e.g.
    # inf + (3.5e30 * 3.5e30) is NaN in NumPy's float32 but inf with FMA, the
    # exact answer. Any result is legitimate there; every other element is checked.
    may_overflow = f64abs(A) @ f64abs(B) > np.finfo(dtype).max  # f64abs drops inf/NaN
    check(np.where(may_overflow, want, got), want, bound, "matmul")


# ---- activations -------------------------------------------------------------------------

@quiet
def activation_forward_bound(z, want, activation):
    dtype = want.dtype
    d = want.shape[1] if want.ndim == 2 else 1
    if activation in ("identity", "relu", "leaky_relu"):
        return 0.0  # a copy, a select, one product identical in both: exact
    if activation == "softmax":  # exp per element + a d-term positive sum
        return f64abs(want) * (2 * (d + 16) * eps(dtype)) + floor(dtype, d)
    # sigmoid, tanh, elu, softplus, swish, gelu, gelu_tanh: libm vs NumPy, a few
    # roundings; plus the conditioning of erfc(x) (~2 x^2) and of sigmoid(v)
    # (~|v|) in the tails, should the two round their argument differently
    return f64abs(want) * ((16 + _tail_condition(z, activation)) * eps(dtype)) + floor(dtype)


def _tail_condition(z, activation):
    """Relative error amplification of gelu's erfc / gelu_tanh's sigmoid(2u) at z."""
    with np.errstate(over="ignore", invalid="ignore"):
        Z = np.nan_to_num(np.abs(np.asarray(z, dtype=np.float64)), posinf=0.0)
        if activation == "gelu":
            return 4 * Z * Z
        if activation == "gelu_tanh":
            return 8 * Z * (1 + Z * Z)
    return 0.0


@inner
@settings(max_examples=200)
@given(data=st.data(), n=SIZES, d=SIZES, dtype=st.sampled_from(DTYPES),
       activation=st.sampled_from(ref.ACTIVATIONS), threads=st.sampled_from([1, 2]))
@quiet
def test_activation_forward_matches_reference(data, n, d, dtype, activation, threads):
    count("activation_forward")
    z = data.draw(operand((n, d), dtype, FINITE_KINDS + HUGE_KINDS + NONFINITE_KINDS), "z")
    before = snapshot([z])
    with fusenn.threads(threads):
        got = ops.activation_forward(z, activation)
    unchanged(before, [z], "activation_forward")
    if activation == "softmax" and d == 0:
        # NumPy's reference cannot reduce an empty row (max of nothing); the kernel
        # returns the empty result, which is all there is to check.
        assert got.shape == (n, 0) and got.dtype == dtype
        return
    want = reference("activation_forward", np.array(z), activation)
    check(got, want, activation_forward_bound(z, want, activation),
          f"activation_forward[{activation}]", signed_zeros=activation != "softmax")
    if activation in ("sigmoid", "softmax"):
        fin = np.isfinite(got)
        assert np.all((got[fin] >= 0) & (got[fin] <= 1))


@quiet
def activation_backward_bound(a, da, want, activation, z=None):
    dtype = want.dtype
    A, dA = f64abs(a), f64abs(da)
    if activation in ("identity", "relu", "leaky_relu"):
        return 0.0
    if activation == "sigmoid":  # (da a)(1 - a) in the same order in both
        return dA * A * (1 + A) * (4 * eps(dtype)) + floor(dtype)
    if activation == "tanh":  # da (1 - a a): cancellation in 1 - a^2, maybe FMA
        return dA * (1 + A * A) * (4 * eps(dtype)) + floor(dtype)
    if activation == "elu":  # da (a + 1) where a <= 0: one add and one product
        return dA * (1 + A) * (4 * eps(dtype)) + floor(dtype)
    if activation in ("softplus", "gelu", "gelu_tanh", "swish"):
        # |act'| is at most ~1.13; libm vs NumPy and the tails as in the forward bound
        return (dA * (16 + _tail_condition(z, activation)) * 2 * eps(dtype)
                + f64abs(want) * (16 * eps(dtype)) + floor(dtype))
    d = want.shape[1]  # softmax: a_j (da_j - sum_i da_i a_i)
    s = (dA * A).sum(axis=1, keepdims=True)
    return A * (dA + s) * (2 * (d + 4) * eps(dtype)) + floor(dtype, d)


@inner
@settings(max_examples=200)
@given(data=st.data(), n=SIZES, d=SIZES, dtype=st.sampled_from(DTYPES),
       activation=st.sampled_from(ref.ACTIVATIONS), consistent=st.booleans(),
       huge_side=st.sampled_from([None, "a", "da"]), threads=st.sampled_from([1, 2]))
@quiet
def test_activation_backward_matches_reference(data, n, d, dtype, activation, consistent,
                                               huge_side, threads):
    count("activation_backward")
    if activation == "softmax" and d == 0:  # NumPy cannot reduce empty rows (see above)
        got = ops.activation_backward(np.zeros((n, 0), dtype), np.zeros((n, 0), dtype),
                                      activation)
        assert got.shape == (n, 0) and got.dtype == dtype
        return
    z = None
    if consistent:  # a = act(z), as in training
        huge_side = None if huge_side == "a" else huge_side
        z = make_values(data.draw(st.integers(0, 2**32 - 1)), (n, d), dtype,
                        data.draw(st.sampled_from(kinds_for("a", huge_side))))
        a = with_layout(reference("activation_forward", z, activation), data.draw(LAYOUT))
        z = with_layout(z, data.draw(LAYOUT))
    else:
        a = data.draw(operand((n, d), dtype, kinds_for("a", huge_side, extra=NONFINITE_KINDS)))
        if activation in ref.NEEDS_Z:  # any z: these read z alone
            z = data.draw(operand((n, d), dtype, kinds_for("a", huge_side,
                                                           extra=NONFINITE_KINDS)), "z")
    if activation not in ref.NEEDS_Z:
        z = None  # the others must not need it
    da = data.draw(operand((n, d), dtype, kinds_for("da", huge_side, extra=NONFINITE_KINDS)))
    args = [a, da] + ([z] if z is not None else [])
    before = snapshot(args)
    with fusenn.threads(threads):
        got = ops.activation_backward(a, da, activation, z)
    unchanged(before, args, "activation_backward")
    want = reference("activation_backward", np.array(a), np.array(da), activation,
                     None if z is None else np.array(z))
    check(got, want, activation_backward_bound(a, da, want, activation, z),
          f"activation_backward[{activation}]")


# ---- dense layer --------------------------------------------------------------------------

@quiet
def dense_z_bound(x, w, b):
    """Bound on the error of z = x w + b (GEMM with k = d_in, then one add)."""
    k = x.shape[1]
    dtype = x.dtype
    return (f64abs(x) @ f64abs(w) + f64abs(b)) * (2 * (k + 3) * eps(dtype)) + floor(dtype, k)


@quiet
def dense_forward_bound(x, w, b, want, activation):
    dtype = want.dtype
    ez = dense_z_bound(x, w, b)
    if activation in ("identity", "relu", "leaky_relu"):
        return ez  # Lipschitz 1, and the final select/product is exact
    if activation in ("sigmoid", "tanh", "elu", "softplus", "swish", "gelu", "gelu_tanh"):
        # Lipschitz ~1.13 at most; then the activation's own error at z
        z = reference("dense_forward", np.array(x), np.array(w), np.array(b), "identity")
        return (1.2 * ez + f64abs(want) * ((16 + _tail_condition(z, activation)) * eps(dtype))
                + floor(dtype))
    # softmax: an error E in every logit moves each output by at most a factor exp(+-2E)
    d = want.shape[1]
    row = ez.max(axis=1, keepdims=True) if d else ez
    with np.errstate(over="ignore", invalid="ignore"):
        grow = np.expm1(2 * row)
        bound = f64abs(want) * (grow + 2 * (d + 16) * eps(dtype)) + floor(dtype, d)
    return np.where(np.isfinite(grow), bound, np.inf)  # logits too inexact to compare


@st.composite
def dense_inputs(draw, dtype, n, d_in, d_out):
    huge_side = draw(st.sampled_from([None, "x", "w"]))
    x = draw(operand((n, d_in), dtype, kinds_for("x", huge_side)))
    w = draw(operand((d_in, d_out), dtype, kinds_for("w", huge_side)))
    b = draw(operand((d_out,), dtype, kinds_for("b", huge_side)))
    return x, w, b, huge_side


@inner
@settings(max_examples=200)
@given(data=st.data(), n=SIZES, d_in=SIZES, d_out=SIZES, dtype=st.sampled_from(DTYPES),
       activation=st.sampled_from(ref.ACTIVATIONS), threads=st.sampled_from([1, 2]))
@quiet
def test_dense_forward_matches_reference(data, n, d_in, d_out, dtype, activation, threads):
    assume(n * d_in * d_out <= 130 * 130 * 64)
    count("dense_forward")
    x, w, b, _ = data.draw(dense_inputs(dtype, n, d_in, d_out))
    before = snapshot([x, w, b])
    with fusenn.threads(threads):
        got = ops.dense_forward(x, w, b, activation)
    unchanged(before, [x, w, b], "dense_forward")
    if activation == "softmax" and d_out == 0:  # the reference cannot (see above)
        assert got.shape == (n, 0) and got.dtype == dtype
        return
    want = reference("dense_forward", np.array(x), np.array(w), np.array(b), activation)
    check(got, want, dense_forward_bound(x, w, b, want, activation),
          f"dense_forward[{activation}]")


@inner
@settings(max_examples=200)
@given(data=st.data(), n=SIZES, d_in=SIZES, d_out=SIZES, dtype=st.sampled_from(DTYPES),
       activation=st.sampled_from(ref.ACTIVATIONS), need_dx=st.booleans(),
       consistent=st.booleans(), threads=st.sampled_from([1, 2]))
@quiet
def test_dense_backward_matches_reference(data, n, d_in, d_out, dtype, activation, need_dx,
                                          consistent, threads):
    assume(n * d_in * d_out <= 130 * 130 * 64)
    assume(not (activation == "softmax" and d_out == 0))  # the reference cannot (see above)
    count("dense_backward")
    x, w, b, huge_side = data.draw(dense_inputs(dtype, n, d_in, d_out))
    # With a huge x or w, dz must stay moderate (see MODERATE_KINDS): y = act(x w + b)
    # bounds act'(y) for every activation, and dy is moderate.
    consistent = consistent or huge_side is not None
    if consistent:
        y = with_layout(reference("dense_forward", np.array(x), np.array(w), np.array(b),
                                  activation), data.draw(LAYOUT))
        assume(np.all(np.isfinite(y)))
    else:  # any y: the kernel's math is defined through y alone
        y = data.draw(operand((n, d_out), dtype, FINITE_KINDS), "y")
    dy = data.draw(operand((n, d_out), dtype, kinds_for("dy", huge_side)), "dy")
    # the pre-activation for the activations that need it (any z if not consistent)
    z = None
    if activation in ref.NEEDS_Z:
        z = (reference("dense_forward", np.array(x), np.array(w), np.array(b), "identity")
             if consistent else data.draw(operand((n, d_out), dtype, FINITE_KINDS), "z"))
    args = [x, w, y, dy]
    before = snapshot(args)
    with fusenn.threads(threads):
        got = ops.dense_backward(x, w, y, dy, activation, need_dx, z)
    unchanged(before, args, "dense_backward")
    want = reference("dense_backward", *[np.array(a) for a in args], activation, need_dx,
                     None if z is None else np.array(z))
    assert isinstance(got, tuple) and len(got) == 3
    assert (got[2] is None) == (not need_dx)

    # dz as both compute it, and its error bound, then the three reductions over it
    dz = reference("activation_backward", np.array(y), np.array(dy), activation,
                   None if z is None else np.array(z))
    edz = activation_backward_bound(y, dy, dz, activation, z)
    edz = np.broadcast_to(np.asarray(edz, dtype=np.float64), dz.shape)
    DZ, X, W = f64abs(dz), f64abs(x), f64abs(w)
    e = eps(dtype)
    check(got[0], want[0], (X.T @ DZ) * (2 * (n + 2) * e) + X.T @ edz + floor(dtype, n),
          f"dense_backward[{activation}] dw")
    check(got[1], want[1], DZ.sum(axis=0) * (2 * (n + 2) * e) + edz.sum(axis=0)
          + floor(dtype, n), f"dense_backward[{activation}] db")
    if need_dx:
        check(got[2], want[2], (DZ @ W.T) * (2 * (d_out + 2) * e) + edz @ W.T
              + floor(dtype, d_out), f"dense_backward[{activation}] dx")


# ---- losses -----------------------------------------------------------------------------

LOSS_KINDS = ("normal", "wide", "tiny", "subnormal", "zeros", "mixed", "integers", "huge",
              "mixed_huge")


@inner
@settings(max_examples=200)
@given(data=st.data(), n=POS_SIZES, k=POS_SIZES, dtype=st.sampled_from(DTYPES),
       label_dtype=st.sampled_from([np.int64, np.int32, np.uint8, np.int16]),
       label_step=st.sampled_from([1, 2, -1]), threads=st.sampled_from([1, 2]))
@quiet
def test_softmax_cross_entropy_matches_reference(data, n, k, dtype, label_dtype, label_step,
                                                 threads):
    count("softmax_cross_entropy")
    z = data.draw(operand((n, k), dtype, LOSS_KINDS), "z")
    seed = data.draw(st.integers(0, 2**32 - 1))
    kmax = min(k, np.iinfo(label_dtype).max + 1)
    labels = np.random.default_rng(seed).integers(0, kmax, n).astype(label_dtype)
    parent = np.zeros(abs(label_step) * n, label_dtype)
    lab = parent[::label_step]
    lab[...] = labels
    before = snapshot([z, lab])
    with fusenn.threads(threads):
        got = ops.softmax_cross_entropy(z, lab)
    unchanged(before, [z, lab], "softmax_cross_entropy")
    want = reference("softmax_cross_entropy", np.array(z), labels.astype(np.int64))
    e = eps(dtype)
    p = f64abs(want[1])
    onehot = np.zeros((n, k))
    onehot[np.arange(n), labels] = 1
    Z = f64abs(z)
    row_terms = Z.max(axis=1) + Z[np.arange(n), labels] + math.log(k) + 1
    check(got[0], want[0],
          float(np.mean(row_terms)) * (4 * (k + 4) * e + sum_error(n, 1)) + floor(dtype, k),
          "softmax_cross_entropy loss")
    check(got[1], want[1], p * (2 * (k + 16) * e) + floor(dtype, k), "softmax_cross_entropy p")
    check(got[2], want[2], (p * (2 * (k + 20) * e) + onehot * (4 * e)) / n + floor(dtype, k),
          "softmax_cross_entropy dz")
    assert np.isfinite(got[0]) and np.all(np.isfinite(got[1])) and np.all(np.isfinite(got[2]))


@inner
@settings(max_examples=150)
@given(data=st.data(), n=POS_SIZES, k=POS_SIZES, dtype=st.sampled_from(DTYPES),
       threads=st.sampled_from([1, 2]))
@quiet
def test_sigmoid_binary_cross_entropy_matches_reference(data, n, k, dtype, threads):
    count("sigmoid_binary_cross_entropy")
    z = data.draw(operand((n, k), dtype, LOSS_KINDS), "z")
    seed = data.draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    t_values = np.where(rng.random((n, k)) < 0.3, rng.integers(0, 2, (n, k)),
                        rng.random((n, k))).astype(dtype)
    t = with_layout(t_values, data.draw(LAYOUT))
    before = snapshot([z, t])
    with fusenn.threads(threads):
        got = ops.sigmoid_binary_cross_entropy(z, t)
    unchanged(before, [z, t], "sigmoid_binary_cross_entropy")
    want = reference("sigmoid_binary_cross_entropy", np.array(z), np.array(t))
    e = eps(dtype)
    Z, T, P = f64abs(z), f64abs(t), f64abs(want[1])
    check(got[0], want[0], float(np.mean(Z + Z * T + 1)) * (8 * e + sum_error(n, k)) + floor(dtype),
          "bce loss")
    check(got[1], want[1], P * (16 * e) + floor(dtype), "bce p")
    check(got[2], want[2], (P + T) / (n * k) * (20 * e) + floor(dtype), "bce dz")


@inner
@settings(max_examples=150)
@given(data=st.data(), n=POS_SIZES, k=POS_SIZES, dtype=st.sampled_from(DTYPES),
       threads=st.sampled_from([1, 2]))
@quiet
def test_mse_matches_reference(data, n, k, dtype, threads):
    count("mse")
    a = data.draw(operand((n, k), dtype, LOSS_KINDS), "a")
    t = data.draw(operand((n, k), dtype, LOSS_KINDS), "t")
    before = snapshot([a, t])
    with fusenn.threads(threads):
        got = ops.mse(a, t)
    unchanged(before, [a, t], "mse")
    want = reference("mse", np.array(a), np.array(t))
    e = eps(dtype)
    with np.errstate(over="ignore", invalid="ignore"):
        d = (np.array(a) - np.array(t))  # rounded to the dtype once, as in both
        exact = float(np.mean(d.astype(np.float64) ** 2))  # the documented loss
    if math.isfinite(want[0]) or dtype == np.float64:
        check(got[0], want[0], abs(want[0]) * (4 * e + sum_error(n, k)) + floor(dtype),
              "mse loss vs reference")
    # In float32 the reference squares in float32 (inf above ~1.8e19) while the C
    # kernel squares in double as its header says: compare with that definition.
    check(got[0], exact, abs(exact) * (4 * e + sum_error(n, k)) + floor(dtype),
          "mse loss vs float64 definition")
    check(got[1], want[1], f64abs(want[1]) * (4 * e) + floor(dtype), "mse da")


# ---- optimizers ---------------------------------------------------------------------------

FLAT_SHAPES = st.one_of(st.tuples(SIZES), st.tuples(SMALL_SIZES, SMALL_SIZES),
                        st.tuples(st.integers(0, 9), st.integers(0, 9), st.integers(0, 9)))
OPT_KINDS = FINITE_KINDS + HUGE_KINDS


def state_array(draw, shape, dtype, kinds, nonneg=False):
    seed = draw(st.integers(0, 2**32 - 1))
    v = make_values(seed, shape, dtype, draw(st.sampled_from(kinds)))
    return np.abs(v) if nonneg else v


@inner
@settings(max_examples=150)
@given(data=st.data(), shape=FLAT_SHAPES, dtype=st.sampled_from(DTYPES),
       lr=st.sampled_from([1e-3, 0.01, 0.1, 1.0, 10.0]),
       momentum=st.sampled_from([0.0, 0.5, 0.9, 0.99]), nesterov=st.booleans(),
       steps=st.integers(1, 3), threads=st.sampled_from([1, 2]))
@quiet
def test_sgd_update_matches_reference(data, shape, dtype, lr, momentum, nesterov, steps,
                                      threads):
    count("sgd_update")
    w = state_array(data.draw, shape, dtype, OPT_KINDS)
    v = state_array(data.draw, shape, dtype, FINITE_KINDS)
    w_ref, v_ref = w.copy(), v.copy()
    e = eps(dtype)
    for step in range(steps):
        g = data.draw(operand(shape, dtype, FINITE_KINDS, layout=len(shape) <= 2), f"g{step}")
        g_before = g.copy()
        w_prev, v_prev = f64abs(w_ref), f64abs(v_ref)
        with fusenn.threads(threads):
            ops.sgd_update(w, g, v if momentum else None, lr, momentum, nesterov)
        assert np.array_equal(g, g_before), "sgd_update modified g"
        reference("sgd_update", w_ref, np.array(g), v_ref if momentum else None, lr, momentum,
                  nesterov)
        G = f64abs(g)
        v_bound = (momentum * v_prev + G) * (4 * e) + floor(dtype)
        check(v, v_ref, v_bound, f"sgd v (step {step})")
        step_size = lr * (G + momentum * f64abs(v_ref) + (momentum * v_prev if momentum else 0))
        check(w, w_ref, (f64abs(w_ref) + w_prev + step_size) * (4 * e)
              + lr * (1 + momentum) * v_bound + floor(dtype), f"sgd w (step {step})")
        # continue from identical states so errors do not compound
        w[...] = w_ref
        v[...] = v_ref


@inner
@settings(max_examples=200)
@given(data=st.data(), shape=FLAT_SHAPES, dtype=st.sampled_from(DTYPES),
       lr=st.sampled_from([1e-3, 0.01, 0.1, 1.0]), beta1=st.sampled_from([0.0, 0.5, 0.9]),
       beta2=st.sampled_from([0.0, 0.9, 0.999]), adam_eps=st.sampled_from([1e-8, 1e-7, 1e-3]),
       t0=st.sampled_from([1, 2, 10, 1000, 10**6]), steps=st.integers(1, 3),
       threads=st.sampled_from([1, 2]))
@quiet
def test_adam_update_matches_reference(data, shape, dtype, lr, beta1, beta2, adam_eps, t0, steps,
                                       threads):
    count("adam_update")
    w = state_array(data.draw, shape, dtype, OPT_KINDS)
    m = state_array(data.draw, shape, dtype, FINITE_KINDS)
    v = state_array(data.draw, shape, dtype, FINITE_KINDS, nonneg=True)
    w_ref, m_ref, v_ref = w.copy(), m.copy(), v.copy()
    e = eps(dtype)
    for step in range(steps):
        t = t0 + step
        g = data.draw(operand(shape, dtype, OPT_KINDS, layout=len(shape) <= 2), f"g{step}")
        g_before = g.copy()
        w_prev, m_prev, v_prev = f64abs(w_ref), f64abs(m_ref), f64abs(v_ref)
        with fusenn.threads(threads):
            ops.adam_update(w, g, m, v, t, lr, beta1, beta2, adam_eps)
        assert np.array_equal(g, g_before), "adam_update modified g"
        reference("adam_update", w_ref, np.array(g), m_ref, v_ref, t, lr, beta1, beta2, adam_eps)
        G = f64abs(g)
        m_bound = (beta1 * m_prev + (1 - beta1) * G) * (4 * e) + floor(dtype)
        check(m, m_ref, m_bound, f"adam m (step {step})")
        with np.errstate(over="ignore"):
            v_bound = (beta2 * v_prev + (1 - beta2) * G * G) * (4 * e) + floor(dtype)
        check(v, v_ref, v_bound, f"adam v (step {step})")
        c1 = 1 - beta1 ** t
        c2 = 1 - beta2 ** t
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            V = f64abs(v_ref)
            denom = np.sqrt(V / c2) + adam_eps
            update = lr * (f64abs(m_ref) / c1) / denom
            # the update's own roundings (a dozen), an error in m (a subnormal one is
            # amplified by lr / (c1 eps)), and an error in v through the sqrt
            s_v = np.sqrt(V / c2)
            d_sqrt = np.minimum(v_bound / c2 / np.maximum(2 * s_v, 1e-300),
                                np.sqrt(v_bound / c2))
            # (an intermediate lr m / c1 that is subnormal is rounded absolutely, then
            # divided by denom, which is as small as eps when v underflows)
            d_update = (update * (24 * e) + m_bound / denom * (lr / c1)
                        + update * d_sqrt / denom + floor(dtype) / denom)
        w_bound = (f64abs(w_ref) + w_prev) * (4 * e) + d_update + floor(dtype)
        check(w, w_ref, np.nan_to_num(w_bound, nan=np.inf), f"adam w (step {step})")
        w[...] = w_ref
        m[...] = m_ref
        v[...] = v_ref


# ---- the model API -------------------------------------------------------------------------

# The activations models train with so far (gelu, gelu_tanh, elu, softplus and
# swish are kernel-level only until the model passes pre-activations around).
MODEL_ACTIVATIONS = ("identity", "sigmoid", "tanh", "relu", "leaky_relu", "softmax")
OUTPUT_ACTIVATIONS = {
    "cross_entropy": ["softmax", "identity", "linear", None],
    "binary_cross_entropy": ["sigmoid", "identity", "linear", None],
    "mse": list(MODEL_ACTIVATIONS) + ["linear", None],
}
LOSS_NAMES = st.sampled_from(["cross_entropy", "binary_cross_entropy", "mse",
                              "sparse_categorical_crossentropy", "bce", "mean_squared_error"])
CANONICAL_LOSS = {"sparse_categorical_crossentropy": "cross_entropy",
                  "bce": "binary_cross_entropy", "mean_squared_error": "mse"}


@st.composite
def architectures(draw):
    loss = draw(LOSS_NAMES)
    canonical = CANONICAL_LOSS.get(loss, loss)
    n_layers = draw(st.integers(1, 4))
    widths = draw(st.lists(st.integers(1, 40), min_size=n_layers, max_size=n_layers))
    if canonical == "cross_entropy" and widths[-1] < 2:
        widths[-1] = draw(st.integers(2, 12))
    hidden = draw(st.lists(st.sampled_from(list(MODEL_ACTIVATIONS) + ["linear", None]),
                           min_size=n_layers - 1, max_size=n_layers - 1))
    last = draw(st.sampled_from(OUTPUT_ACTIVATIONS[canonical]))
    optimizer = draw(st.one_of(
        st.sampled_from(["sgd", "adam"]),
        st.builds(lambda lr, mom, nest: ("SGD", dict(lr=lr, momentum=mom,
                                                      nesterov=nest and mom > 0)),
                  st.sampled_from([1e-3, 1e-2, 5e-2]), st.sampled_from([0.0, 0.5, 0.9]),
                  st.booleans()),
        st.builds(lambda lr, b1: ("Adam", dict(lr=lr, beta1=b1)),
                  st.sampled_from([1e-4, 1e-3, 1e-2]), st.sampled_from([0.0, 0.9]))))
    return dict(loss=loss, canonical=canonical, widths=widths, activations=hidden + [last],
                optimizer=optimizer)


def make_optimizer(spec):
    if isinstance(spec, str):
        return spec
    cls, kwargs = spec
    return getattr(fusenn, cls)(**kwargs)


def make_targets(rng, canonical, n, k):
    if canonical == "cross_entropy":
        return rng.integers(0, k, n)
    if canonical == "binary_cross_entropy":
        return np.where(rng.random((n, k)) < 0.5, rng.integers(0, 2, (n, k)),
                        rng.random((n, k)))
    y = rng.standard_normal((n, k))
    return y[:, 0] if (k == 1 and rng.random() < 0.5) else y  # 1-D targets for one output


def build_model(arch, input_dim, seed, backend, dtype="float64"):
    layers = [fusenn.Dense(units, act) for units, act in zip(arch["widths"], arch["activations"])]
    model = fusenn.Sequential(layers, input_dim=input_dim, dtype=dtype, seed=seed,
                              backend=backend)
    model.compile(loss=arch["loss"], optimizer=make_optimizer(arch["optimizer"]))
    return model


def train_and_predict(arch, input_dim, seed, backend, X, y, Xp, epochs, batch_size, how):
    model = build_model(arch, input_dim, seed, backend)
    losses = []
    if how == "fit":
        hist = model.fit(X, y, epochs=epochs, batch_size=batch_size, verbose=0,
                         shuffle=bool(seed % 2))
        assert hist.epoch == list(range(epochs))
        losses = hist.history.get("loss", [])
        assert len(losses) == epochs
    else:
        for i in range(epochs):
            losses.append(model.train_on_batch(X[i::epochs], y[i::epochs]))
    pred = model.predict(Xp)
    evaluation = model.evaluate(X, y)
    return model, np.array(losses, dtype=np.float64), pred, evaluation


def check_prediction(pred, arch, n_pred, dtype=np.float64):
    k = arch["widths"][-1]
    assert isinstance(pred, np.ndarray)
    assert pred.shape == (n_pred, k) and pred.dtype == dtype
    assert np.all(np.isfinite(pred))
    last = arch["activations"][-1]
    if last == "softmax":
        assert np.all(pred >= 0) and np.all(pred <= 1)
        np.testing.assert_allclose(pred.sum(axis=1), 1, rtol=0, atol=1e-9 * k)
    elif last == "sigmoid":
        assert np.all(pred >= 0) and np.all(pred <= 1)
    elif last == "relu":
        assert np.all(pred >= 0)
    elif last == "tanh":
        assert np.all(np.abs(pred) <= 1)


@inner
@settings(max_examples=80)
@given(arch=architectures(), input_dim=st.integers(1, 40), n=st.integers(1, 48),
       n_pred=st.integers(1, 70), seed=st.integers(0, 2**31 - 1), epochs=st.integers(1, 3),
       batches=st.integers(1, 6), how=st.sampled_from(["fit", "train_on_batch"]))
@quiet
def test_model_backends_agree_on_random_architectures(arch, input_dim, n, n_pred, seed, epochs,
                                                      batches, how):
    """Fit a few steps with the C and the NumPy backend (float64) and predict:
    no exception, the right shapes, and the same numbers."""
    count("model_backends_agree")
    if how == "train_on_batch":
        n = max(n, epochs)
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, input_dim))
    y = make_targets(rng, arch["canonical"], n, arch["widths"][-1])
    Xp = rng.standard_normal((n_pred, input_dim))
    batch_size = max(1, -(-n // batches))
    results = {}
    for backend in ("c", "numpy"):
        results[backend] = train_and_predict(arch, input_dim, seed, backend, X, y, Xp, epochs,
                                             batch_size, how)
    (mc, lc, pc, ec), (mn, ln, pn, en) = results["c"], results["numpy"]
    check_prediction(pc, arch, n_pred)
    check_prediction(pn, arch, n_pred)
    assert np.all(np.isfinite(lc))
    # float64 both ways; GEMM summation order is the only difference, amplified
    # by a few optimizer steps: 1e-8 relative to the magnitudes is ample.
    np.testing.assert_allclose(lc, ln, rtol=1e-8, atol=1e-10)
    for wc, wn in zip(mc.get_weights(), mn.get_weights()):
        np.testing.assert_allclose(wc, wn, rtol=1e-8, atol=1e-10 * (1 + np.abs(wn).max()))
    np.testing.assert_allclose(pc, pn, rtol=1e-8, atol=1e-10 * (1 + np.abs(pn).max()))
    assert ec.keys() == en.keys()
    for key in ec:
        assert math.isfinite(ec[key])
        np.testing.assert_allclose(ec[key], en[key], rtol=1e-8, atol=1e-10)
    if "accuracy" in ec:
        assert 0 <= ec["accuracy"] <= 1


@inner
@settings(max_examples=40)
@given(arch=architectures(), input_dim=st.integers(1, 40), n=st.integers(1, 40),
       seed=st.integers(0, 2**31 - 1), chunk=st.integers(1, 50),
       backend=st.sampled_from(["c", "numpy"]))
@quiet
def test_model_predict_is_row_independent_and_chunking_invariant(arch, input_dim, n, seed, chunk,
                                                                 backend):
    """predict in chunks == predict at once == predict row by row (same bits for
    the C backend, whose GEMM never splits k), and evaluate matches the loss
    computed from predict."""
    count("model_predict_chunking")
    rng = np.random.default_rng(seed)
    model = build_model(arch, input_dim, seed, backend)
    X = rng.standard_normal((n, input_dim))
    whole = model.predict(X)
    check_prediction(whole, arch, n)
    chunked = model.predict(X, batch_size=chunk)
    rows = np.concatenate([model.predict(X[i:i + 1]) for i in range(n)])
    if backend == "c":
        assert np.array_equal(whole, chunked)
        assert np.array_equal(whole, rows)
    else:  # NumPy's BLAS may block differently for different row counts
        np.testing.assert_allclose(chunked, whole, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(rows, whole, rtol=1e-12, atol=1e-14)
    y = make_targets(rng, arch["canonical"], n, arch["widths"][-1])
    ev = model.evaluate(X, y)
    ev_chunked = model.evaluate(X, y, batch_size=chunk)
    np.testing.assert_allclose(ev_chunked["loss"], ev["loss"], rtol=1e-10, atol=1e-12)
    if arch["canonical"] == "mse":
        target = np.asarray(y, dtype=np.float64).reshape(whole.shape)
        np.testing.assert_allclose(ev["loss"], np.mean((whole - target) ** 2), rtol=1e-10,
                                   atol=1e-14)


# ---- every property test in its own process -------------------------------------------------

PROPERTY_TESTS = sorted(name for name, obj in list(globals().items())
                        if name.startswith("test_") and callable(obj)
                        and name != "test_property_in_subprocess")


@pytest.mark.skipif(INNER, reason="the child process runs the property tests themselves")
@pytest.mark.parametrize("name", PROPERTY_TESTS)
def test_property_in_subprocess(name):
    env = dict(os.environ, FUSENN_PROPERTIES_INNER="1", SKBUILD_EDITABLE_VERBOSE="0")
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", f"{__file__}::{name}", "-q",
                               "-p", "no:cacheprovider", "--no-header"],
                              env=env, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{name} hung (> 300 s); output tail:\n{(exc.stdout or '')[-3000:]}")
    out = proc.stdout + proc.stderr
    for key, n in re.findall(r"^  (\w+): (\d+)$", out, flags=re.M):
        EXAMPLES[key] += int(n)
    if proc.returncode < 0:
        pytest.fail(f"{name} crashed the interpreter (signal {-proc.returncode}); "
                    f"output tail:\n{out[-4000:]}")
    assert proc.returncode == 0 and " passed" in out, f"{name} failed:\n{out[-8000:]}"
