"""Weight initialisers: statistics, truncation, determinism, config round trips."""

import json
import math
import pickle

import numpy as np
import pytest

from fusenn import initializers as I

FAN_IN, FAN_OUT = 300, 500  # 150,000 values: the sample moments are within ~1% of the truth

# name -> (scale, fan) of the variance-scaling families
VS = {
    "glorot_uniform": (1.0, (FAN_IN + FAN_OUT) / 2), "glorot_normal": (1.0, (FAN_IN + FAN_OUT) / 2),
    "he_uniform": (2.0, FAN_IN), "he_normal": (2.0, FAN_IN),
    "lecun_uniform": (1.0, FAN_IN), "lecun_normal": (1.0, FAN_IN),
}


def draw(spec, shape=(FAN_IN, FAN_OUT), seed=0, dtype="float64"):
    return I.get(spec)(shape, np.random.default_rng(seed), dtype)


@pytest.mark.parametrize("name", [n for n in VS if n.endswith("uniform")])
def test_uniform_limits_and_moments(name):
    scale, fan = VS[name]
    limit = math.sqrt(3 * scale / fan)
    w = draw(name)
    assert w.shape == (FAN_IN, FAN_OUT) and w.dtype == np.float64
    assert np.abs(w).max() <= limit
    assert np.abs(w).max() > 0.999 * limit  # fills the interval
    assert abs(w.mean()) < 0.01 * limit
    assert w.std() == pytest.approx(limit / math.sqrt(3), rel=0.01)  # U(-a, a) has sd a/sqrt(3)


@pytest.mark.parametrize("name", [n for n in VS if n.endswith("normal")])
def test_truncated_normal_moments_and_truncation(name):
    scale, fan = VS[name]
    stddev = math.sqrt(scale / fan) / 0.87962566103423978  # of the normal before truncation
    w = draw(name)
    assert np.abs(w).max() <= 2 * stddev  # nothing beyond 2 sd: truncated
    assert np.abs(w).max() > 1.99 * stddev  # but up to it
    assert abs(w.mean()) < 0.01 * stddev
    # the truncated values have the variance scale / fan
    assert w.std() == pytest.approx(math.sqrt(scale / fan), rel=0.01)
    # the redraw keeps the normal's shape inside [-2, 2]: P(|z| < 1 | |z| < 2) = 0.6827 / 0.9545 = 0.7153
    assert np.mean(np.abs(w) < stddev) == pytest.approx(0.7153, abs=0.004)


def test_matches_the_formulas_draw_for_draw():
    """uniform: exactly rng.uniform(-limit, limit); so he_uniform / glorot_uniform give
    the same weights as fusenn's Dense layers drew before initialisers existed."""
    shape = (7, 5)
    for name, limit in [("he_uniform", math.sqrt(6.0 / 7)), ("glorot_uniform", math.sqrt(6.0 / 12)),
                        ("lecun_uniform", math.sqrt(3.0 / 7))]:
        want = np.random.default_rng(3).uniform(-limit, limit, size=shape)
        np.testing.assert_array_equal(draw(name, shape, seed=3), want)


def test_redraws_use_the_generator_deterministically():
    a, b = draw("he_normal", seed=7), draw("he_normal", seed=7)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, draw("he_normal", seed=8))
    # a generator is consumed: two calls on one generator differ
    rng = np.random.default_rng(0)
    init = I.get("glorot_normal")
    assert not np.array_equal(init((4, 4), rng, "float64"), init((4, 4), rng, "float64"))
    # an int seed is accepted in place of a generator
    np.testing.assert_array_equal(init((4, 4), 5, "float64"), init((4, 4), np.random.default_rng(5), "float64"))


@pytest.mark.parametrize("name", list(VS) + ["zeros", "ones"])
def test_float32_is_the_float64_draw_cast(name):
    w64 = draw(name, (33, 17), seed=1, dtype="float64")
    w32 = draw(name, (33, 17), seed=1, dtype=np.float32)
    assert w32.dtype == np.float32
    np.testing.assert_array_equal(w32, w64.astype(np.float32))


def test_fans_of_1d_and_nd_shapes():
    assert I.fans((5,)) == (5, 5)
    assert I.fans((4, 6)) == (4, 6)
    assert I.fans((3, 3, 4, 8)) == (36, 72)  # Keras: leading dims are a receptive field
    assert I.fans(()) == (1, 1)
    # a bias vector of n: he_uniform limit sqrt(6 / n)
    b = draw("he_uniform", (10000,))
    assert np.abs(b).max() <= math.sqrt(6 / 10000) and np.abs(b).max() > 0.99 * math.sqrt(6 / 10000)


def test_constants():
    np.testing.assert_array_equal(draw("zeros", (3, 2)), np.zeros((3, 2)))
    np.testing.assert_array_equal(draw("ones", (4,), dtype="float32"), np.ones(4, np.float32))
    c = I.Constant(0.25)((2, 3), np.random.default_rng(0), "float32")
    assert c.dtype == np.float32 and np.all(c == 0.25)
    with pytest.raises(ValueError, match="float32"):
        I.Constant(1e300)((2,), np.random.default_rng(0), "float32")
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="value"):
            I.Constant(bad)
    with pytest.raises(TypeError, match="value"):
        I.Constant("1")


def test_names_aliases_and_case():
    pairs = [("xavier_uniform", "glorot_uniform"), ("xavier_normal", "glorot_normal"),
             ("kaiming_uniform", "he_uniform"), ("kaiming_normal", "he_normal")]
    for alias, name in pairs:
        assert I.get(alias) == I.get(name)
        np.testing.assert_array_equal(draw(alias, (6, 4)), draw(name, (6, 4)))
    assert isinstance(I.get("He_Normal"), I.HeNormal)
    assert isinstance(I.get("GLOROT_UNIFORM"), I.GlorotUniform)
    assert isinstance(I.get(I.LecunNormal), I.LecunNormal)  # a class is instantiated
    init = I.HeUniform()
    assert I.get(init) is init


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ValueError) as info:
        I.get("glorot")
    for name in ("glorot_uniform", "he_normal", "kaiming_uniform", "lecun_normal", "zeros", "ones"):
        assert name in str(info.value)
    for bad in ({"name": "he_normal", "scale": 3}, {"name": "nope"}, {"value": 1}, {"name": 3},
                {"name": "constant"}):
        with pytest.raises(ValueError):
            I.get(bad)
    for bad in (None, 3, 2.5, b"zeros"):
        with pytest.raises(TypeError, match="initializer"):
            I.get(bad)


def test_user_callables_are_accepted():
    def mine(shape, rng, dtype):
        return np.full(shape, 3.0, dtype=dtype)
    assert I.get(mine) is mine
    assert I.serialize(mine) is None


@pytest.mark.parametrize("spec", I.NAMES + ("constant",))
def test_config_round_trip_through_json_and_pickle(spec):
    init = I.Constant(-0.5) if spec == "constant" else I.get(spec)
    config = json.loads(json.dumps(init.config()))
    rebuilt = I.get(config)
    assert rebuilt == init and type(rebuilt) is type(init)
    assert I.serialize(init) == init.config()
    np.testing.assert_array_equal(draw(rebuilt, (5, 3), seed=2), draw(init, (5, 3), seed=2))
    unpickled = pickle.loads(pickle.dumps(init))
    assert unpickled == init
    np.testing.assert_array_equal(draw(unpickled, (5, 3), seed=2), draw(init, (5, 3), seed=2))
    assert I.Constant(-0.5).config() == {"name": "constant", "value": -0.5}
    assert I.get("xavier_normal").config() == "glorot_normal"  # aliases save the canonical name


def test_bad_call_arguments():
    init = I.get("he_normal")
    rng = np.random.default_rng(0)
    with pytest.raises(TypeError, match="dtype"):
        init((2, 2), rng, "int32")
    with pytest.raises(TypeError, match="dtype"):
        init((2, 2), rng, None)
    with pytest.raises(TypeError, match="shape"):
        init((2.0, 2), rng, "float32")
    with pytest.raises(TypeError, match="shape"):
        init("2, 2", rng, "float32")
    with pytest.raises(ValueError, match="shape"):
        init((2, -1), rng, "float32")
    with pytest.raises(TypeError, match="rng"):
        init((2, 2), np.random.RandomState(0), "float32")
    with pytest.raises(TypeError, match="rng"):
        init((2, 2), -1, "float32")
    assert init(3, rng).shape == (3,) and init(3, rng).dtype == np.float32  # default float32
