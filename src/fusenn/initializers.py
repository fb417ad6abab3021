"""Weight initialisers, chosen by name as in Keras.

    init = fusenn.initializers.get("he_normal")
    W = init((fan_in, units), np.random.default_rng(0), np.float32)

An initializer is a callable `init(shape, rng, dtype) -> ndarray`: `rng` is a
NumPy Generator (or a seed), `shape` a tuple of ints. For a 2-D shape
(fan_in, fan_out) = shape (a Dense kernel is (inputs, units)); for a 1-D shape
fan_in = fan_out = shape[0]; for more dimensions the leading ones are a
receptive field, as in Keras. Random values are drawn in float64 and then cast,
so float32 and float64 models built from one seed agree.

The variance-scaling families (Keras' formulas; PyTorch calls Glorot "xavier"
and He "kaiming"), with `fan` and `scale` per family:

    glorot: scale 1, fan = (fan_in + fan_out) / 2      he: scale 2, fan = fan_in
    lecun:  scale 1, fan = fan_in
    *_uniform: U(-limit, limit), limit = sqrt(3 * scale / fan)
    *_normal:  a normal truncated at 2 standard deviations (values beyond are
               redrawn), stddev = sqrt(scale / fan) / 0.87962566103423978, so the
               truncated values have variance scale / fan.

Two more, for recurrent layers and embeddings (Keras's): `orthogonal`, a
(semi-)orthogonal matrix over (prod(shape[:-1]), shape[-1]) from the QR
decomposition of a standard normal matrix (signs fixed by R's diagonal), and
`uniform`, U(-0.05, 0.05) (Keras's RandomUniform, the Embedding default).

Names are case-insensitive. `config()` gives a JSON-serialisable description
(a name, or {"name": "constant", "value": v}) and `get(config)` rebuilds the
initializer.
"""

import math

import numpy as np

from ._common import finite_number

__all__ = ["Initializer", "GlorotUniform", "GlorotNormal", "HeUniform", "HeNormal",
           "LecunUniform", "LecunNormal", "Orthogonal", "RandomUniform", "Zeros", "Ones",
           "Constant", "get", "serialize", "NAMES"]

# the standard deviation of a standard normal truncated to [-2, 2]
TRUNCATED_NORMAL_STDDEV = 0.87962566103423978


def _check_shape(shape):
    if isinstance(shape, (int, np.integer)) and not isinstance(shape, (bool, np.bool_)):
        shape = (shape,)
    if isinstance(shape, (str, bytes)) or not hasattr(shape, "__iter__"):
        raise TypeError(f"shape must be a tuple of ints, got {shape!r}")
    shape = tuple(shape)
    for n in shape:
        if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)):
            raise TypeError(f"shape must be a tuple of ints, got {shape!r}")
        if n < 0:
            raise ValueError(f"shape must hold non-negative sizes, got {shape!r}")
    return tuple(int(n) for n in shape)


def _check_dtype(dtype):
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dtype is None or dt is None or dt.kind != "f":
        raise TypeError(f"dtype must be a floating-point dtype such as 'float32' or 'float64', "
                        f"got {dtype!r}")
    return dt


def _check_rng(rng):
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (bool, np.bool_)) or not isinstance(rng, (int, np.integer)) or rng < 0:
        raise TypeError(f"rng must be a numpy.random.Generator or a non-negative int seed, "
                        f"got {rng!r}")
    return np.random.default_rng(int(rng))


def fans(shape):
    """(fan_in, fan_out) of a weight array of this shape, as Keras computes them."""
    shape = _check_shape(shape)
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    receptive_field = math.prod(shape[:-2])
    return shape[-2] * receptive_field, shape[-1] * receptive_field


class Initializer:
    """Base class: subclasses define `_draw(shape, rng)` (float64 values) and `name`."""

    name = None

    def __call__(self, shape, rng, dtype="float32"):
        shape = _check_shape(shape)
        dtype = _check_dtype(dtype)
        rng = _check_rng(rng)
        values = self._draw(shape, rng)
        with np.errstate(over="ignore"):
            out = values.astype(dtype)
        if not np.all(np.isfinite(out)):
            raise ValueError(f"{self!r} gives values too large for {dtype.name}")
        return out

    def config(self):
        return self.name

    def __repr__(self):
        return f"{type(self).__name__}()"

    def __eq__(self, other):
        return type(self) is type(other) and self.config() == other.config()

    def __hash__(self):
        return hash(repr(self))


class _VarianceScaling(Initializer):
    scale = 1.0
    fan_mode = "fan_in"
    distribution = "uniform"

    def _draw(self, shape, rng):
        fan_in, fan_out = fans(shape)
        fan = {"fan_in": fan_in, "fan_avg": (fan_in + fan_out) / 2}[self.fan_mode]
        fan = max(1.0, fan)
        if self.distribution == "uniform":
            limit = math.sqrt(3.0 * self.scale / fan)
            return rng.uniform(-limit, limit, size=shape)
        stddev = math.sqrt(self.scale / fan) / TRUNCATED_NORMAL_STDDEV
        return stddev * _truncated_standard_normal(shape, rng)


def _truncated_standard_normal(shape, rng):
    """Standard normal values, each outside [-2, 2] redrawn until it falls inside."""
    z = rng.standard_normal(size=shape)
    outside = np.flatnonzero(np.abs(z) > 2.0)
    flat = z.reshape(-1)
    while outside.size:
        flat[outside] = rng.standard_normal(size=outside.size)
        outside = outside[np.abs(flat[outside]) > 2.0]
    return z


class GlorotUniform(_VarianceScaling):
    """U(-limit, limit) with limit = sqrt(6 / (fan_in + fan_out)); PyTorch's xavier_uniform_."""
    name, fan_mode, distribution = "glorot_uniform", "fan_avg", "uniform"


class GlorotNormal(_VarianceScaling):
    """Truncated normal with variance 2 / (fan_in + fan_out)."""
    name, fan_mode, distribution = "glorot_normal", "fan_avg", "truncated_normal"


class HeUniform(_VarianceScaling):
    """U(-limit, limit) with limit = sqrt(6 / fan_in); for relu layers."""
    name, scale, distribution = "he_uniform", 2.0, "uniform"


class HeNormal(_VarianceScaling):
    """Truncated normal with variance 2 / fan_in; for relu layers."""
    name, scale, distribution = "he_normal", 2.0, "truncated_normal"


class LecunUniform(_VarianceScaling):
    """U(-limit, limit) with limit = sqrt(3 / fan_in)."""
    name, distribution = "lecun_uniform", "uniform"


class LecunNormal(_VarianceScaling):
    """Truncated normal with variance 1 / fan_in."""
    name, distribution = "lecun_normal", "truncated_normal"


class Orthogonal(Initializer):
    """A matrix with orthonormal columns (or rows, when wider than tall) over the
    shape (prod(shape[:-1]), shape[-1]): Q of the QR decomposition of a standard
    normal matrix, its columns' signs those of R's diagonal (Keras's, gain 1).
    The default recurrent kernel of SimpleRNN, GRU and LSTM."""

    name = "orthogonal"

    def _draw(self, shape, rng):
        if len(shape) < 2:
            raise ValueError(f"an orthogonal initializer needs at least 2 dimensions, got {shape}")
        rows, cols = math.prod(shape[:-1]), shape[-1]
        a = rng.standard_normal(size=(max(rows, cols), min(rows, cols)))
        q, r = np.linalg.qr(a)
        q *= np.sign(np.diag(r))
        if rows < cols:
            q = q.T
        return q[:rows, :cols].reshape(shape)


class RandomUniform(Initializer):
    """U(-0.05, 0.05): Keras's "uniform", the default of Embedding."""

    name = "uniform"

    def _draw(self, shape, rng):
        return rng.uniform(-0.05, 0.05, size=shape)


class Constant(Initializer):
    """Every value equal to `value` (a finite number)."""

    name = "constant"

    def __init__(self, value=0.0):
        self.value = finite_number(value, "value")

    def _draw(self, shape, rng):
        return np.full(shape, self.value, dtype=np.float64)

    def config(self):
        return {"name": "constant", "value": self.value}

    def __repr__(self):
        return f"Constant({self.value!r})"


class _NamedConstant(Constant):
    """A constant saved by name ("zeros", "ones") rather than by value."""

    fill = 0.0

    def __init__(self):
        super().__init__(self.fill)

    def config(self):
        return self.name

    def __repr__(self):
        return f"{type(self).__name__}()"


class Zeros(_NamedConstant):
    name, fill = "zeros", 0.0


class Ones(_NamedConstant):
    name, fill = "ones", 1.0


_BY_NAME = {cls.name: cls for cls in (GlorotUniform, GlorotNormal, HeUniform, HeNormal,
                                      LecunUniform, LecunNormal, Orthogonal, RandomUniform,
                                      Zeros, Ones)}
_ALIASES = {"xavier_uniform": "glorot_uniform", "xavier_normal": "glorot_normal",
            "kaiming_uniform": "he_uniform", "kaiming_normal": "he_normal"}
NAMES = tuple(_BY_NAME) + tuple(_ALIASES)  # every name get() accepts


def _unknown(spec):
    return ValueError(f"unknown initializer {spec!r}; expected one of {', '.join(NAMES)}, "
                      f"Constant(value) ({{'name': 'constant', 'value': v}}) or a callable "
                      f"init(shape, rng, dtype)")


def get(spec):
    """An initializer from a name, a config (as `config()` returns), an
    Initializer instance or class, or a user callable init(shape, rng, dtype)
    (returned as it is)."""
    if isinstance(spec, Initializer):
        return spec
    if isinstance(spec, type) and issubclass(spec, Initializer):
        if spec in (Initializer, _VarianceScaling, _NamedConstant):
            raise _unknown(spec)
        return spec()
    if isinstance(spec, str):
        name = spec.lower()
        name = _ALIASES.get(name, name)
        if name not in _BY_NAME:
            raise _unknown(spec)
        return _BY_NAME[name]()
    if isinstance(spec, dict):
        name = spec.get("name")
        if isinstance(name, str) and name.lower() == "constant":
            if set(spec) != {"name", "value"}:
                raise ValueError(f"a constant initializer's config is {{'name': 'constant', "
                                 f"'value': v}}, got {spec!r}")
            return Constant(spec["value"])
        if set(spec) != {"name"} or not isinstance(name, str):
            raise _unknown(spec)
        return get(name)
    if callable(spec):
        return spec
    raise TypeError(f"initializer must be a name, a config dict or a callable "
                    f"init(shape, rng, dtype), got {spec!r}")


def serialize(initializer):
    """The initializer's config() (JSON-serialisable), or None for a user
    callable, which cannot be saved by name."""
    if isinstance(initializer, Initializer):
        return initializer.config()
    if callable(initializer):
        return None
    raise TypeError(f"initializer must be an initializer or a callable, got {initializer!r}")
