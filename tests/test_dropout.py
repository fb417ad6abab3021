"""Dropout kernels (fusenn.ops) against the NumPy reference, bit for bit.

The mask is a pure function of (seed, element index), so the C kernels and
the reference must agree exactly (masks and outputs), on any thread count and
for any memory layout of the input. On top of that: the statistics of the mask
(kept fraction, inverted scaling, independence of neighbours), seeds, the
finite-difference gradient and argument validation.
"""

import numpy as np
import pytest

import fusenn
from fusenn import ops
from fusenn import reference as ref
from test_kernels import DTYPES, LAYOUTS, THREAD_COUNTS, as_layout, rand

SHAPES = [pytest.param(s, id="{}x{}".format(*s)) for s in [
    (1, 1), (2, 7), (7, 2), (17, 33), (127, 65), (300, 10), (3, 1000),
]]
RATES = [0.0, 0.1, 0.5, 0.9, 0.999]
GOLDEN = 0x9E3779B97F4A7C15


def bits(a):
    """The bytes of a float array as unsigned ints, for bitwise comparisons."""
    a = np.ascontiguousarray(a)
    return a.view({4: np.uint32, 8: np.uint64}[a.itemsize])


def assert_bitwise(got, want):
    assert got.shape == want.shape and got.dtype == want.dtype, (got.shape, want.shape)
    np.testing.assert_array_equal(bits(got), bits(want))


def c_mask(shape, rate, seed, dtype=np.float64):
    """The C kernel's keep-mask, read off the output for an input of ones."""
    return ops.dropout_forward(np.ones(shape, dtype), rate, seed) != 0


# ---- the hash ------------------------------------------------------------------------------

def test_hash_is_splitmix64():
    """The reference hash is splitmix64: its first outputs from state 0 are the
    published values, and mask index i is the (i+1)-th output from state seed."""
    first = ref._mix64(np.arange(1, 3, dtype=np.uint64) * np.uint64(GOLDEN))
    assert [int(v) for v in first] == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4]
    # threshold just above / at the first output: index 0 dropped / kept
    h0 = 0xE220A8397B1DCDAF
    assert not ref._dropout_mask((1, 1), (h0 + 2**11) / 2**64, 0)[0, 0]
    assert ref._dropout_mask((1, 1), (h0 - 2**12) / 2**64, 0)[0, 0]
    assert not c_mask((1, 1), (h0 + 2**11) / 2**64, 0)[0, 0]
    assert c_mask((1, 1), (h0 - 2**12) / 2**64, 0)[0, 0]


def test_dropout_seed_matches_reference_and_formula():
    mask = 2**64 - 1

    def mix(z):
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        return z ^ (z >> 31)

    cases = [(0, 0), (0, 1), (1, 0), (7, 3), (2**64 - 1, 2**64 - 1), (12345, 10**9)]
    for base, step in cases:
        got = ops.dropout_seed(base, step)
        assert type(got) is int and 0 <= got < 2**64
        assert got == ref.dropout_seed(base, step)
        assert got == mix((mix(base) + (step + 1) * GOLDEN) & mask)
    assert ops.dropout_seed(np.uint64(2**64 - 1), np.int64(5)) == ref.dropout_seed(2**64 - 1, 5)
    seeds = {ops.dropout_seed(base, step) for base in range(4) for step in range(50)}
    assert len(seeds) == 200  # every (layer, step) gets its own seed


# ---- C against the reference ------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("shape", SHAPES)
def test_dropout_matches_reference_bitwise(shape, rate, dtype):
    rng = np.random.default_rng(sum(shape))
    x, dy = rand(rng, shape, dtype), rand(rng, shape, dtype)
    seed = int(rng.integers(0, 2**63)) * 2 + 1
    x0, dy0 = x.copy(), dy.copy()
    y, dx = ops.dropout_forward(x, rate, seed), ops.dropout_backward(dy, rate, seed)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(dy, dy0)
    assert_bitwise(y, ref.dropout_forward(x, rate, seed))
    assert_bitwise(dx, ref.dropout_backward(dy, rate, seed))
    keep = ref._dropout_mask(shape, rate, seed)
    np.testing.assert_array_equal(c_mask(shape, rate, seed, dtype), keep)
    # kept elements are x / (1 - rate) rounded once, dropped ones exactly +0
    scale = dtype(1.0 / (1.0 - rate))
    assert_bitwise(y, np.where(keep, x * scale, dtype(0)))
    assert_bitwise(dx, np.where(keep, dy * scale, dtype(0)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_dropout_layouts(layout, dtype):
    """Any view of x: the mask follows the logical position (i, j), not memory."""
    rng = np.random.default_rng(3)
    values = rand(rng, (17, 33), dtype)
    x = as_layout(values, layout)
    for op in ("dropout_forward", "dropout_backward"):
        got = getattr(ops, op)(x, 0.3, 99)
        assert got.flags.c_contiguous
        assert_bitwise(got, getattr(ref, op)(values, 0.3, 99))
    np.testing.assert_array_equal(x, values)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rate_zero_is_an_exact_copy(dtype):
    x = np.array([[np.nan, -0.0, np.inf], [-np.inf, 1e-45, np.finfo(dtype).max]], dtype)
    for backend in (ops, ref):
        assert_bitwise(backend.dropout_forward(x, 0.0, 5), x)
        assert_bitwise(backend.dropout_backward(x, 0, 5), x)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dropped_non_finite_inputs_give_zero(dtype):
    x = np.full((40, 50), np.inf, dtype)
    x[::2] = np.nan
    y = ops.dropout_forward(x, 0.5, 1)
    keep = ref._dropout_mask(x.shape, 0.5, 1)
    assert np.all(y[~keep] == 0) and not np.any(np.isfinite(y[keep]))
    assert_bitwise(y, ref.dropout_forward(x, 0.5, 1))


@pytest.mark.parametrize("shape", [(0, 5), (5, 0), (0, 0)])
def test_empty(shape):
    for op in ("dropout_forward", "dropout_backward"):
        out = getattr(ops, op)(np.zeros(shape, np.float32), 0.5, 1)
        assert out.shape == shape and out.dtype == np.float32


# ---- statistics of the mask -----------------------------------------------------------

@pytest.mark.parametrize("rate", [0.1, 0.3, 0.5, 0.8])
def test_kept_fraction_and_inverted_scaling(rate):
    """About 1 - rate of a large matrix is kept, and thanks to the 1 / (1 - rate)
    scaling the output's mean is the input's (to 6 standard errors)."""
    n, d = 1000, 1000
    x = np.random.default_rng(4).uniform(0.5, 1.5, size=(n, d))
    y = ops.dropout_forward(x, rate, 2024)
    keep = y != 0
    p = 1 - rate
    assert abs(keep.mean() - p) < 6 * np.sqrt(p * rate / keep.size)
    # every row and column keeps roughly its share too (no striping)
    assert np.all(np.abs(keep.mean(axis=1) - p) < 6 * np.sqrt(p * rate / d))
    assert np.all(np.abs(keep.mean(axis=0) - p) < 6 * np.sqrt(p * rate / n))
    assert abs(y.mean() - x.mean()) < 6 * y.std() / np.sqrt(y.size)
    # neighbours are independent: both kept about p^2 of the time
    both = (keep[:, 1:] & keep[:, :-1]).mean()
    assert abs(both - p * p) < 6 * np.sqrt(p * p * (1 - p * p) / both.size)


def test_different_seeds_give_different_masks():
    shape, rate = (64, 100), 0.5
    seeds = [0, 1, 2, GOLDEN, 2**64 - 1] + [ops.dropout_seed(5, step) for step in range(4)]
    masks = [c_mask(shape, rate, s) for s in seeds]
    for i in range(len(masks)):
        np.testing.assert_array_equal(masks[i], c_mask(shape, rate, seeds[i]))  # same seed
        for j in range(i):
            agree = (masks[i] == masks[j]).mean()
            assert 0.4 < agree < 0.6, (seeds[i], seeds[j], agree)


def test_mask_is_nested_across_rates():
    """One seed's masks shrink as the rate grows: what rate 0.6 keeps, 0.3 keeps."""
    low, high = c_mask((50, 60), 0.3, 8), c_mask((50, 60), 0.6, 8)
    assert np.all(low[high]) and low.sum() > high.sum()


# ---- threads --------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_bitwise_independent_of_threads(dtype):
    x = rand(np.random.default_rng(5), (400, 301), dtype)  # above the parallel threshold
    results = []
    for nt in THREAD_COUNTS:
        with fusenn.threads(nt):
            results.append((ops.dropout_forward(x, 0.4, 77), ops.dropout_backward(x, 0.4, 77)))
    for got in results:
        assert_bitwise(got[0], results[0][0])
        assert_bitwise(got[1], results[0][1])
    assert_bitwise(results[0][0], ref.dropout_forward(x, 0.4, 77))


# ---- gradient -------------------------------------------------------------------------

@pytest.mark.parametrize("backend", [ops, ref], ids=["c", "numpy"])
def test_backward_is_the_finite_difference_gradient(backend):
    """loss = sum(dropout(x) * R): d loss / dx from central differences."""
    rng = np.random.default_rng(6)
    x, r = rng.normal(size=(6, 9)), rng.normal(size=(6, 9))
    rate, seed, eps = 0.4, 31, 1e-6
    dx = backend.dropout_backward(r, rate, seed)
    numeric = np.empty_like(x)
    for idx in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += eps
        xm[idx] -= eps
        numeric[idx] = (np.sum(backend.dropout_forward(xp, rate, seed) * r)
                        - np.sum(backend.dropout_forward(xm, rate, seed) * r)) / (2 * eps)
    np.testing.assert_allclose(dx, numeric, rtol=1e-6, atol=1e-8)
    assert np.count_nonzero(dx == 0) > 0 and np.count_nonzero(dx) > 0


# ---- validation -----------------------------------------------------------------------

@pytest.mark.parametrize("op, arr_name", [("dropout_forward", "x"), ("dropout_backward", "dy")])
@pytest.mark.parametrize("kwargs, error, match", [
    pytest.param(dict(rate=-0.1), ValueError, r"rate.*\[0, 1\)", id="rate_negative"),
    pytest.param(dict(rate=1.0), ValueError, r"rate.*\[0, 1\)", id="rate_one"),
    pytest.param(dict(rate=float("nan")), ValueError, "rate", id="rate_nan"),
    pytest.param(dict(rate="0.5"), TypeError, "rate", id="rate_str"),
    pytest.param(dict(rate=True), TypeError, "rate", id="rate_bool"),
    pytest.param(dict(seed=-1), ValueError, r"seed.*2\*\*64", id="seed_negative"),
    pytest.param(dict(seed=2**64), ValueError, r"seed.*2\*\*64", id="seed_too_large"),
    pytest.param(dict(seed=1.0), TypeError, "seed", id="seed_float"),
    pytest.param(dict(seed=None), TypeError, "seed", id="seed_none"),
    pytest.param(dict(seed=False), TypeError, "seed", id="seed_bool"),
])
def test_bad_rate_or_seed(op, arr_name, kwargs, error, match):
    args = {arr_name: np.ones((3, 4)), "rate": 0.5, "seed": 1, **kwargs}
    with pytest.raises(error, match=match):
        getattr(ops, op)(**args)


@pytest.mark.parametrize("op, arr_name", [("dropout_forward", "x"), ("dropout_backward", "dy")])
def test_bad_array(op, arr_name):
    with pytest.raises(ValueError, match=rf"\b{arr_name}\b.*2-D"):
        getattr(ops, op)(**{arr_name: np.ones(4), "rate": 0.5, "seed": 1})
    with pytest.raises(TypeError, match=rf"\b{arr_name}\b.*float"):
        getattr(ops, op)(**{arr_name: np.ones((2, 2), np.int32), "rate": 0.5, "seed": 1})


@pytest.mark.parametrize("arg", ["base", "step"])
@pytest.mark.parametrize("value, error", [(-1, ValueError), (2**64, ValueError),
                                          (0.5, TypeError), (None, TypeError),
                                          (True, TypeError)], ids=repr)
def test_dropout_seed_validation(arg, value, error):
    args = {"base": 1, "step": 2, arg: value}
    with pytest.raises(error, match=rf"\b{arg}\b"):
        ops.dropout_seed(**args)
