"""API-level fuzzing: wrong things thrown at every public function and method.

Acceptable outcomes of a call are only
  * a correct result (checked per function: shapes, finiteness for finite
    inputs, agreement with fusenn.reference for the kernels), or
  * ValueError / TypeError / MemoryError (OSError too for file paths) whose
    message is non-empty and names the problem (contains the argument's name
    or one of a few words given per case),
and a rejected call on a model must leave the model as it was (weights,
built state, input_dim, optimizer step count).

Never a crash, a hang, another exception type, or silent garbage (NaN or inf
out of finite inputs). Every case runs in a worker subprocess (this file run
as a script), which reports each case as it starts and ends; a worker that
dies or stalls is reported with the case it was running and a new worker
carries on after it. Two parts:

  1. a systematic table: (callable, argument, bad value) for every argument of
     every public callable, each bad value substituted into an otherwise valid
     call (plus hand-written cases: labels out of range, mismatched weights,
     a NaN batch, absurd sizes, shared objects...);
  2. a hypothesis-driven part (in one worker process) that draws a callable
     and replaces any subset of its arguments by random junk.
"""

import collections
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
CASE_TIMEOUT_S = 10.0  # a single case that runs longer than this is reported as a hang
ACCEPTED = (ValueError, TypeError, MemoryError)



# ---- valid calls --------------------------------------------------------------------------

def _fusenn():
    import fusenn  # imported lazily: the parent (pytest) process never runs a case
    return fusenn


def rng():
    return np.random.default_rng(0)


def arr(*shape, dtype=np.float64, scale=1.0):
    return (scale * rng().standard_normal(shape)).astype(dtype)


def probs(*shape):
    return rng().random(shape)


N, D, K = 6, 4, 3  # samples, features, classes of the small models


def model(loss="cross_entropy", built=True, compiled=True, backend="c", dtype="float32",
          optimizer="sgd", last=None):
    f = _fusenn()
    last = last or {"cross_entropy": "softmax", "binary_cross_entropy": "sigmoid",
                    "mse": "identity"}[loss]
    m = f.Sequential([f.Dense(5, "relu"), f.Dense(K, last)], input_dim=D if built else None,
                     dtype=dtype, seed=0, backend=backend)
    if compiled:
        m.compile(loss=loss, optimizer=optimizer)
    return m


def X_ok(n=N):
    return arr(n, D)


def y_for(loss, n=N):
    if loss == "cross_entropy":
        return np.arange(n) % K
    if loss == "binary_cross_entropy":
        return (probs(n, K) > 0.5).astype(np.float64)
    return arr(n, K)


def weights_ok(n=N):
    return 2 * probs(n)


# bad sample weights for every loss (each names sample_weight)
WEIGHT_CASES = [
    ("sw_negative", dict(sample_weight=lambda: -weights_ok()), ["sample_weight"]),
    ("sw_nan", dict(sample_weight=lambda: np.where(np.arange(N) == 2, np.nan, 1.0)),
     ["sample_weight"]),
    ("sw_short", dict(sample_weight=lambda: weights_ok(N - 1)), ["sample_weight"]),
    ("sw_zero", dict(sample_weight=lambda: np.zeros(N)), []),
    ("sw_int_list", dict(sample_weight=lambda: [1] * N), []),
    ("sw_huge", dict(sample_weight=lambda: np.full(N, 1e300)), []),
]


class Spec:
    """A public callable: how to get it and its valid arguments (by name).

    target(obj) -> the callable, where obj is a fresh object from make_obj()
    (a model for methods, else None). valid: {arg: factory}. check(result, args,
    obj) validates a successful call (raises AssertionError). extra: hand-made
    (label, {arg: factory}, keywords) cases."""

    def __init__(self, name, target, valid, check=None, make_obj=None, keywords=None,
                 skip=None, extra=(), varargs=None, state=None):
        self.name = name
        self.target = target
        self.kinds = {k: v[0] for k, v in valid.items()}
        self.valid = {k: v[1] for k, v in valid.items()}
        self.check = check
        self.make_obj = make_obj
        self.keywords = keywords or {}
        self.skip = skip or {}
        self.extra = list(extra)
        self.varargs = varargs
        self.state = state


# ---- generic bad values ------------------------------------------------------------------

class Unconvertible:
    def __repr__(self):
        return "<Unconvertible>"


GENERIC_BAD = {
    "None": lambda: None,
    "str": lambda: "abc",
    "list_of_str": lambda: ["a", "b", "c"],
    "dict": lambda: {"k": 1},
    "object": lambda: Unconvertible(),
    "complex_arr": lambda: np.ones((N, D), complex),
    "bool_arr": lambda: np.ones((N, D), bool),
    "object_arr": lambda: np.full((N, D), 1.0, dtype=object),
    "str_arr": lambda: np.full((N, D), "x"),
    "0d_arr": lambda: np.array(1.5),
    "3d_arr": lambda: np.ones((2, N, D)),
    "1d_arr": lambda: np.ones(D),
    "empty_arr": lambda: np.zeros((0, D)),
    "nan_arr": lambda: np.full((N, D), np.nan),
    "inf_arr": lambda: np.full((N, D), -np.inf),
    "int_arr": lambda: np.ones((N, D), np.int64),
    "f16_arr": lambda: np.ones((N, D), np.float16),
    "bigendian_arr": lambda: np.ones((N, D), ">f8"),
    "neg_int": lambda: -1,
    "zero": lambda: 0,
    "huge_int": lambda: 10**12,
    "bigint": lambda: 10**400,
    "float": lambda: 2.5,
    "nan": lambda: float("nan"),
    "inf": lambda: float("inf"),
    "true": lambda: True,
    "bytes": lambda: b"abc",
    "tuple": lambda: (1, 2),
    "func": lambda: (lambda: 1),
}
GENERIC_BAD["complex"] = lambda: 1j
GENERIC_BAD["np_int"] = lambda: np.int64(2)
GENERIC_BAD["empty_str"] = lambda: ""
_ARRAYS = [k for k in GENERIC_BAD if k.endswith("_arr")]

# Which bad values each kind of argument gets.
KIND_BAD = {
    "array": _ARRAYS + ["None", "str", "list_of_str", "dict", "object", "float", "true", "func"],
    "scalar": ["None", "str", "object", "1d_arr", "0d_arr", "complex", "nan", "inf", "neg_int",
               "zero", "bigint", "true", "np_int"],
    "count": ["None", "str", "float", "nan", "inf", "true", "neg_int", "zero", "huge_int",
              "bigint", "1d_arr", "0d_arr", "np_int"],
    "flag": ["None", "str", "0d_arr", "np_int"],
    "name": ["None", "str", "empty_str", "list_of_str", "dict", "object", "zero", "1d_arr",
             "bytes"],
    "path": ["None", "object", "zero", "bytes", "dict", "1d_arr", "empty_str"],
    "seq": ["None", "str", "object", "zero", "float", "dict", "0d_arr", "3d_arr",
            "list_of_str", "func"],
}
# A bad value for a "count" that is a legitimate request for a lot of work: skipped
# where it would just run for ever (epochs=10**12 trains for ever, as asked).
WORK_COUNTS = ("huge_int", "bigint")


# ---- expected results -----------------------------------------------------------------------

def finite_numbers(value):
    """True if every number in `value` (arrays, lists, scalars) is finite."""
    if isinstance(value, (bool, int, np.integer)):
        return True
    if isinstance(value, (float, np.floating)):
        return math.isfinite(value)
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "fc":
            return bool(np.all(np.isfinite(value)))
        if value.dtype.kind == "O":
            return all(finite_numbers(v) for v in value.ravel())
        return True
    if isinstance(value, (list, tuple)):
        return all(finite_numbers(v) for v in value)
    if isinstance(value, dict):
        return all(finite_numbers(v) for v in value.values())
    return True


# Callables whose true result can exceed the dtype for finite inputs: a sum of
# squares of 1e200 is inf in float64, and the optimizers rely on that (a global
# norm of inf clips the step to nothing).
OVERFLOW_IS_THE_ANSWER = {"ops.sum_squares"}


def all_finite_out(result):
    if result is None:
        return True
    if isinstance(result, np.ndarray):
        return result.dtype.kind not in "fc" or bool(np.all(np.isfinite(result)))
    if isinstance(result, (float, np.floating)):
        return math.isfinite(result)
    if isinstance(result, (list, tuple)):
        return all(all_finite_out(r) for r in result)
    if isinstance(result, dict):
        return all(all_finite_out(r) for r in result.values())
    return True


def ops_check(name):
    """A successful fusenn.ops call: the same as fusenn.reference on the coerced inputs."""
    def check(result, args, obj):
        f = _fusenn()
        if name in ("sgd_update", "adam_update", "rmsprop_update", "adagrad_update",
                    "grad_transform"):
            return  # in place; validated by the finiteness rule and test_properties
        try:
            coerced = {}
            for k, v in args.items():
                if isinstance(v, (list, tuple)):
                    v = np.asarray(v)
                coerced[k] = v.copy() if isinstance(v, np.ndarray) else v
            with np.errstate(all="ignore"):
                want = getattr(f.reference, name)(**coerced)
        except Exception:
            return  # the reference takes pre-validated inputs only
        got = result
        if isinstance(want, tuple):
            assert isinstance(got, tuple) and len(got) == len(want), "result structure differs"
            pairs = zip(got, want)
        else:
            pairs = [(got, want)]
        for g, w in pairs:
            if w is None:
                assert g is None
                continue
            g, w = np.asarray(g, dtype=np.float64), np.asarray(w, dtype=np.float64)
            assert g.shape == w.shape, f"shape {g.shape} != reference {w.shape}"
            scale = float(np.max(np.abs(w[np.isfinite(w)]), initial=0.0)) or 1.0
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4 * scale, equal_nan=True)
    return check


def check_model_predict(result, args, obj):
    assert isinstance(result, np.ndarray) and result.ndim == 2
    assert result.shape[1] == obj.output_dim


def check_history(result, args, obj):
    assert type(result).__name__ == "History"


def check_float(result, args, obj):
    assert isinstance(result, float)


def check_eval(result, args, obj):
    assert isinstance(result, dict) and "loss" in result


def check_set_weights(result, args, obj):
    got = obj.get_weights()
    for g, w in zip(got, list(args["weights"])):
        np.testing.assert_array_equal(g, np.asarray(w).astype(g.dtype))


def check_sequential(result, args, obj):
    assert type(result).__name__ == "Sequential"


def check_threads(result, args, obj):
    """After set_num_threads(n) succeeded, kernels must still work."""
    f = _fusenn()
    a = arr(3, 4)
    np.testing.assert_allclose(f.matmul(a, a.T), a @ a.T, rtol=1e-12)


def check_saved(result, args, obj):
    f = _fusenn()
    loaded = f.load(args["path"])
    for a, b in zip(loaded.get_weights(), obj.get_weights()):
        np.testing.assert_array_equal(a, b)


def check_optimizer(result, args, obj):
    """An accepted optimizer trains a small model (op by op and in the engine)
    and its config rebuilds it."""
    f = _fusenn()
    assert f.optimizers.get_optimizer(result.config()).config() == result.config()
    m = model(optimizer=result)
    try:
        m.train_on_batch(X_ok(), y_for("cross_entropy"))
    except ValueError as exc:  # a legitimately huge lr may diverge; it must say so
        assert "diverged" in str(exc), str(exc)


def _preprocessing(**values):
    """Valid arguments for the options every optimizer takes (overridable)."""
    valid = dict(l2=1e-4, clipnorm=1.0, global_clipnorm=None, clipvalue=0.5)
    valid.update(values)
    return {k: ("scalar", lambda v=v: v) for k, v in valid.items()}


def check_digits(result, args, obj):
    X, y = result
    assert X.shape[0] == y.shape[0] == 1797


def check_split(result, args, obj):
    assert isinstance(result, list) and len(result) % 2 == 0


def model_state(m):
    """What a rejected call must not change."""
    if m is None or type(m).__name__ != "Sequential":
        return None
    weights = [w.copy() for w in m.params] if m.built else None
    opt = m.optimizer
    return dict(built=m.built, input_dim=m.input_dim, n_layers=len(m.layers),
                loss=getattr(m.loss, "name", None),
                iterations=getattr(opt, "iterations", None), weights=weights)


def states_equal(a, b):
    if a is None or b is None:
        return a is b
    for key in a:
        if key == "weights":
            if (a[key] is None) != (b[key] is None):
                return False
            if a[key] is not None and (len(a[key]) != len(b[key]) or not all(
                    np.array_equal(x, y, equal_nan=True) for x, y in zip(a[key], b[key]))):
                return False
        elif a[key] != b[key]:
            return False
    return True


# ---- the public API -----------------------------------------------------------------------------

def _ops(name):
    return lambda obj: getattr(_fusenn().ops, name)


def _method(name):
    return lambda obj: getattr(obj, name)


def _attr(*path):
    def get(obj):
        target = _fusenn()
        for p in path:
            target = getattr(target, p)
        return target
    return get


def _tmpfile(name="m.npz"):
    return lambda: os.path.join(WORKDIR, name)


WORKDIR = tempfile.gettempdir()  # replaced by the worker with its own directory

SPECS = [
    Spec("matmul", _attr("matmul"),
         dict(a=("array", lambda: arr(N, D)), b=("array", lambda: arr(D, K)),
              trans_a=("flag", lambda: False), trans_b=("flag", lambda: False)),
         check=ops_check("matmul"),
         extra=[("a_b_mismatch", dict(b=lambda: arr(D + 1, K)), ["op(a)", "shape"]),
                ("dtype_mix", dict(b=lambda: arr(D, K, dtype=np.float32)), ["b", "dtype"]),
                ("zero_stride", dict(a=lambda: np.broadcast_to(arr(1, D), (N, D))), []),
                ("neg_strides", dict(a=lambda: arr(N, D)[::-1, ::-1]), []),
                ("absurd_output", dict(a=lambda: np.ones((10**6, 1)),
                                       b=lambda: np.ones((1, 10**7))), ["allocate"]),
                ("unaligned", dict(a=lambda: np.frombuffer(b"\0" + bytes(8 * N * D), np.uint8)[1:]
                                   .view(np.float64).reshape(N, D)), [])]),
    Spec("ops.activation_forward", _ops("activation_forward"),
         dict(z=("array", lambda: arr(N, D)), activation=("name", lambda: "relu")),
         check=ops_check("activation_forward"),
         extra=[("unknown_act", dict(activation=lambda: "RELU"), ["activation"]),
                ("list_act", dict(activation=lambda: ["relu"]), ["activation"]),
                ("softmax_empty_rows", dict(z=lambda: np.zeros((3, 0)),
                                            activation=lambda: "softmax"), [])]),
    Spec("ops.activation_backward", _ops("activation_backward"),
         dict(a=("array", lambda: probs(N, D)), da=("array", lambda: arr(N, D)),
              activation=("name", lambda: "sigmoid"), z=("array", lambda: arr(N, D))),
         check=ops_check("activation_backward"),
         extra=[("shape_mismatch", dict(da=lambda: arr(N, D + 1)), ["da"]),
                ("z_shape", dict(z=lambda: arr(N + 1, D)), ["z"]),
                ("gelu_with_z", dict(activation=lambda: "gelu"), []),
                ("gelu_without_z", dict(activation=lambda: "gelu", z=lambda: None), ["z"]),
                ("swish_z_dtype_mix", dict(activation=lambda: "swish",
                                           z=lambda: arr(N, D, dtype=np.float32)), ["z"])]),
    Spec("ops.dense_forward", _ops("dense_forward"),
         dict(x=("array", lambda: arr(N, D)), w=("array", lambda: arr(D, K)),
              b=("array", lambda: arr(K)), activation=("name", lambda: "tanh")),
         check=ops_check("dense_forward"),
         extra=[("w_rows", dict(w=lambda: arr(D + 1, K)), ["w"]),
                ("b_len", dict(b=lambda: arr(K + 1)), ["b"]),
                ("b_2d", dict(b=lambda: arr(1, K)), ["b"])]),
    Spec("ops.dense_backward", _ops("dense_backward"),
         dict(x=("array", lambda: arr(N, D)), w=("array", lambda: arr(D, K)),
              y=("array", lambda: arr(N, K)), dy=("array", lambda: arr(N, K)),
              activation=("name", lambda: "relu"), need_dx=("flag", lambda: True),
              z=("array", lambda: arr(N, K))),
         check=ops_check("dense_backward"),
         extra=[("y_shape", dict(y=lambda: arr(N, K + 1)), ["y"]),
                ("dy_shape", dict(dy=lambda: arr(N + 1, K)), ["dy"]),
                ("z_shape", dict(z=lambda: arr(N, K + 1)), ["z"]),
                ("gelu_tanh_with_z", dict(activation=lambda: "gelu_tanh"), []),
                ("swish_without_z", dict(activation=lambda: "swish", z=lambda: None), ["z"])]),
    Spec("ops.softmax_cross_entropy", _ops("softmax_cross_entropy"),
         dict(z=("array", lambda: arr(N, K)), labels=("array", lambda: np.arange(N) % K),
              sample_weight=("array", weights_ok)),
         check=ops_check("softmax_cross_entropy"),
         extra=[("label_neg", dict(labels=lambda: np.array([0, 1, 2, -1, 0, 1])), ["labels"]),
                ("label_k", dict(labels=lambda: np.array([0, 1, 2, K, 0, 1])), ["labels"]),
                ("label_uint_huge", dict(labels=lambda: np.full(N, 2**64 - 1, np.uint64)),
                 ["labels"]),
                ("label_float", dict(labels=lambda: np.arange(N) * 0.5), ["labels"]),
                ("label_2d", dict(labels=lambda: np.zeros((N, 1), int)), ["labels"]),
                ("label_short", dict(labels=lambda: np.zeros(N - 1, int)), ["labels"]),
                ("label_strided", dict(labels=lambda: (np.arange(2 * N) % K)[::2]), []),
                ("empty_batch", dict(z=lambda: np.zeros((0, K)),
                                     labels=lambda: np.zeros(0, int)), ["z", "empty"])]
         + WEIGHT_CASES),
    Spec("ops.sigmoid_binary_cross_entropy", _ops("sigmoid_binary_cross_entropy"),
         dict(z=("array", lambda: arr(N, K)), t=("array", lambda: probs(N, K)),
              sample_weight=("array", weights_ok)),
         check=ops_check("sigmoid_binary_cross_entropy"),
         extra=[("t_shape", dict(t=lambda: probs(N, K + 1)), ["t"])] + WEIGHT_CASES),
    *[Spec(f"ops.{name}", _ops(name),
           dict(a=("array", lambda: arr(N, K)), t=("array", lambda: arr(N, K)),
                **({"delta": ("scalar", lambda: 0.7)} if name == "huber" else {}),
                sample_weight=("array", weights_ok)),
           check=ops_check(name),
           extra=[("t_shape", dict(t=lambda: arr(N + 1, K)), ["t"]),
                  ("empty", dict(a=lambda: np.zeros((N, 0)), t=lambda: np.zeros((N, 0))),
                   ["a", "empty"])] + WEIGHT_CASES
           + ([("delta_tiny", dict(delta=lambda: 1e-300), []),
               ("delta_huge_f32", dict(a=lambda: arr(N, K, dtype=np.float32),
                                       t=lambda: arr(N, K, dtype=np.float32),
                                       delta=lambda: 1e300), [])]
              if name == "huber" else []))
      for name in ("mse", "mae", "huber", "poisson")],
    Spec("losses.Huber", _attr("losses", "Huber"), dict(delta=("scalar", lambda: 0.5)),
         check=lambda result, args, obj: None),
    Spec("ops.sgd_update", _ops("sgd_update"),
         dict(w=("array", lambda: arr(D, K)), g=("array", lambda: arr(D, K)),
              v=("array", lambda: np.zeros((D, K))), lr=("scalar", lambda: 0.1),
              momentum=("scalar", lambda: 0.9), nesterov=("flag", lambda: False)),
         check=ops_check("sgd_update"),
         extra=[("w_readonly", dict(w=lambda: _readonly(arr(D, K))), ["w"]),
                ("w_strided", dict(w=lambda: arr(D, 2 * K)[:, ::2]), ["w"]),
                ("v_shape", dict(v=lambda: np.zeros((K, D))), ["v"]),
                ("v_none_with_momentum", dict(v=lambda: None), ["v"]),
                ("g_f32", dict(g=lambda: arr(D, K, dtype=np.float32)), ["g"])]),
    Spec("ops.adam_update", _ops("adam_update"),
         dict(w=("array", lambda: arr(D, K)), g=("array", lambda: arr(D, K)),
              m=("array", lambda: np.zeros((D, K))), v=("array", lambda: np.zeros((D, K))),
              t=("count", lambda: 1), lr=("scalar", lambda: 1e-3),
              beta1=("scalar", lambda: 0.9), beta2=("scalar", lambda: 0.999),
              eps=("scalar", lambda: 1e-8)),
         check=ops_check("adam_update"),
         extra=[("t_zero", dict(t=lambda: 0), ["t"]),
                ("m_is_w_shape_T", dict(m=lambda: np.zeros((K, D))), ["m"]),
                ("adamw", dict(weight_decay=lambda: 0.01), []),
                ("weight_decay_nan", dict(weight_decay=lambda: float("nan")),
                 ["weight_decay"])]),
    Spec("ops.dropout_forward", _ops("dropout_forward"),
         dict(x=("array", lambda: arr(N, D)), rate=("scalar", lambda: 0.5),
              seed=("count", lambda: 3)),
         check=ops_check("dropout_forward"),
         extra=[("rate_one", dict(rate=lambda: 1.0), ["rate"]),
                ("seed_2_64", dict(seed=lambda: 2**64), ["seed"]),
                ("seed_uint64_max", dict(seed=lambda: np.uint64(2**64 - 1)), []),
                ("x_f32_strided", dict(x=lambda: arr(N, 2 * D, dtype=np.float32)[::-1, ::2]),
                 [])]),
    Spec("ops.dropout_backward", _ops("dropout_backward"),
         dict(dy=("array", lambda: arr(N, D)), rate=("scalar", lambda: 0.25),
              seed=("count", lambda: 3)),
         check=ops_check("dropout_backward"),
         extra=[("rate_negative", dict(rate=lambda: -0.5), ["rate"])]),
    Spec("ops.dropout_seed", _ops("dropout_seed"),
         dict(base=("count", lambda: 7), step=("count", lambda: 11)),
         check=ops_check("dropout_seed"),
         extra=[("base_2_64", dict(base=lambda: 2**64), ["base"])]),
    Spec("ops.batchnorm_forward_train", _ops("batchnorm_forward_train"),
         dict(x=("array", lambda: arr(N, D)), gamma=("array", lambda: arr(D)),
              beta=("array", lambda: arr(D)), running_mean=("array", lambda: np.zeros(D)),
              running_var=("array", lambda: np.ones(D)), momentum=("scalar", lambda: 0.9),
              eps=("scalar", lambda: 1e-3)),
         check=ops_check("batchnorm_forward_train"),
         extra=[("no_running_stats", dict(running_mean=lambda: None,
                                          running_var=lambda: None), []),
                ("running_readonly", dict(running_mean=lambda: _readonly(np.zeros(D))),
                 ["running_mean"]),
                ("running_f32", dict(running_var=lambda: np.ones(D, np.float32)),
                 ["running_var"]),
                ("gamma_len", dict(gamma=lambda: arr(D + 1)), ["gamma"]),
                ("momentum_above_one", dict(momentum=lambda: 1.5), ["momentum"]),
                ("single_row", dict(x=lambda: arr(1, D)), []),
                ("constant_column", dict(x=lambda: np.ones((N, D))), [])]),
    Spec("ops.batchnorm_forward_infer", _ops("batchnorm_forward_infer"),
         dict(x=("array", lambda: arr(N, D)), gamma=("array", lambda: arr(D)),
              beta=("array", lambda: arr(D)), running_mean=("array", lambda: arr(D)),
              running_var=("array", lambda: probs(D)), eps=("scalar", lambda: 1e-3)),
         check=ops_check("batchnorm_forward_infer"),
         extra=[("negative_var", dict(running_var=lambda: -probs(D)), ["running_var"]),
                ("empty_batch", dict(x=lambda: np.zeros((0, D))), [])]),
    Spec("ops.batchnorm_backward", _ops("batchnorm_backward"),
         dict(x=("array", lambda: arr(N, D)), dy=("array", lambda: arr(N, D)),
              gamma=("array", lambda: arr(D)), mean=("array", lambda: arr(D)),
              invstd=("array", lambda: probs(D)), need_dx=("flag", lambda: True)),
         check=ops_check("batchnorm_backward"),
         extra=[("dy_shape", dict(dy=lambda: arr(N, D + 1)), ["dy"]),
                ("invstd_len", dict(invstd=lambda: probs(D - 1)), ["invstd"]),
                ("no_dx", dict(need_dx=lambda: False), [])]),
    Spec("ops.rmsprop_update", _ops("rmsprop_update"),
         dict(w=("array", lambda: arr(D, K)), g=("array", lambda: arr(D, K)),
              v=("array", lambda: np.zeros((D, K))), lr=("scalar", lambda: 1e-3),
              rho=("scalar", lambda: 0.9), eps=("scalar", lambda: 1e-7)),
         check=ops_check("rmsprop_update"),
         extra=[("v_shape", dict(v=lambda: np.zeros((K, D))), ["v"]),
                ("v_f32", dict(v=lambda: np.zeros((D, K), np.float32)), ["v"])]),
    Spec("ops.adagrad_update", _ops("adagrad_update"),
         dict(w=("array", lambda: arr(D, K)), g=("array", lambda: arr(D, K)),
              v=("array", lambda: np.zeros((D, K))), lr=("scalar", lambda: 0.01),
              eps=("scalar", lambda: 1e-10)),
         check=ops_check("adagrad_update"),
         extra=[("v_readonly", dict(v=lambda: _readonly(np.zeros((D, K)))), ["v"]),
                ("g_shape", dict(g=lambda: arr(K, D)), ["g"])]),
    Spec("ops.sum_squares", _ops("sum_squares"), dict(x=("array", lambda: arr(N, D))),
         check=ops_check("sum_squares"),
         extra=[("x_f32_strided", dict(x=lambda: arr(N, 2 * D, dtype=np.float32)[:, ::2]), []),
                ("x_empty", dict(x=lambda: np.zeros((0, D))), [])]),
    Spec("ops.grad_transform", _ops("grad_transform"),
         dict(g=("array", lambda: arr(D, K)), w=("array", lambda: arr(D, K)),
              l2=("scalar", lambda: 0.01), scale=("scalar", lambda: 0.5),
              clipvalue=("scalar", lambda: 1.0)),
         check=ops_check("grad_transform"),
         extra=[("w_none_without_l2", dict(w=lambda: None, l2=lambda: 0.0), []),
                ("w_shape", dict(w=lambda: arr(K, D)), ["w"]),
                ("g_strided", dict(g=lambda: arr(D, 2 * K)[:, ::2]), ["g"]),
                ("g_list", dict(g=lambda: arr(D, K).tolist()), ["g"])]),
    Spec("Sequential", _attr("Sequential"),
         dict(layers=("seq", lambda: [_fusenn().Dense(3, "relu"), _fusenn().Dense(2, "softmax")]),
              input_dim=("count", lambda: D), dtype=("name", lambda: "float32"),
              seed=("count", lambda: 0), backend=("name", lambda: "c")),
         check=check_sequential,
         extra=[("layers_not_dense", dict(layers=lambda: [_fusenn().Dense(2), "relu"]),
                 ["layers", "Dense"]),
                ("layers_str", dict(layers=lambda: "abc"), ["layers", "Dense"]),
                ("same_layer_twice", dict(layers=lambda: [_same_dense()] * 2), ["layer"]),
                ("dtype_f16", dict(dtype=lambda: "float16"), ["dtype"]),
                ("backend_C", dict(backend=lambda: "C"), ["backend"]),
                ("absurd_input_dim", dict(input_dim=lambda: 10**12), ["allocate", "input_dim"]),
                # units above 2**31 are refused by Dense itself; this one is valid but
                # cannot be allocated when the model is built
                ("absurd_units", dict(layers=lambda: [_fusenn().Dense(2**30)],
                                      input_dim=lambda: 10**4),
                 ["allocate", "units"])]),
    Spec("Sequential.add", _method("add"), dict(layer=("seq", lambda: _fusenn().Dense(2))),
         make_obj=lambda: _unbuilt_uncompiled(),
         extra=[("add_after_build", dict(), ["built"])]),
    Spec("Sequential.build", _method("build"), dict(input_dim=("count", lambda: D)),
         make_obj=lambda: model(built=False, compiled=False),
         extra=[("absurd", dict(input_dim=lambda: 10**12), ["allocate", "input_dim"])]),
    Spec("Sequential.compile", _method("compile"),
         dict(loss=("name", lambda: "cross_entropy"), optimizer=("name", lambda: "sgd")),
         make_obj=lambda: model(compiled=False),
         extra=[("loss_vs_relu_output", dict(loss=lambda: "cross_entropy"), ["activation"],
                 lambda: model(compiled=False, last="relu")),
                ("optimizer_class", dict(optimizer=lambda: _fusenn().SGD), ["optimizer"]),
                ("loss_huber_instance", dict(loss=lambda: _fusenn().losses.Huber(0.5)), []),
                ("loss_huber_dict", dict(loss=lambda: {"name": "huber", "delta": 0.5}), []),
                ("loss_huber_bad_delta", dict(loss=lambda: {"name": "huber", "delta": -1}),
                 ["delta"]),
                ("loss_mse_with_delta", dict(loss=lambda: {"name": "mse", "delta": 1}),
                 ["mse"]),
                ("optimizer_bad_dict", dict(optimizer=lambda: {"name": "sgd", "lr": -1}),
                 ["lr"]),
                ("optimizer_dict_extra_key", dict(optimizer=lambda: {"name": "sgd", "foo": 1}),
                 ["foo"])]),
    Spec("Sequential.fit", _method("fit"),
         dict(X=("array", lambda: X_ok()), y=("array", lambda: y_for("cross_entropy")),
              epochs=("count", lambda: 2), batch_size=("count", lambda: 4),
              shuffle=("flag", lambda: True), validation_data=("seq", lambda: None),
              verbose=("flag", lambda: 0)),
         check=check_history, make_obj=lambda: model(),
         skip={"epochs": list(WORK_COUNTS)},
         keywords={"validation_data": ["validation"]},
         extra=[("labels_out_of_range", dict(y=lambda: np.array([0, 1, 2, 3, 0, 1])), ["y"]),
                ("labels_negative", dict(y=lambda: np.array([0, 1, -2, 1, 0, 1])), ["y"]),
                ("labels_non_integer", dict(y=lambda: np.arange(N) * 0.5), ["y"]),
                ("labels_onehot", dict(y=lambda: np.eye(K)[np.arange(N) % K]), ["y"]),
                ("labels_nan", dict(y=lambda: np.full(N, np.nan)), ["y"]),
                ("y_short", dict(y=lambda: np.arange(N - 1) % K), ["y"]),
                ("X_features", dict(X=lambda: arr(N, D + 1)), ["X"]),
                ("X_nan_row", dict(X=lambda: _with(X_ok(), (2, 1), np.nan)), ["X"]),
                ("X_beyond_float32", dict(X=lambda: np.full((N, D), 1e300)), ["X"]),
                ("batch_size_huge", dict(batch_size=lambda: 10**12), []),
                ("epochs_zero", dict(epochs=lambda: 0), []),
                ("epochs_negative", dict(epochs=lambda: -1), ["epochs"]),
                ("validation_1_tuple", dict(validation_data=lambda: (X_ok(),)), ["validation"]),
                ("sample_weight_ok", dict(sample_weight=lambda: np.ones(N)), []),
                ("sample_weight_short", dict(sample_weight=lambda: np.ones(N - 1)),
                 ["sample_weight"]),
                ("sample_weight_negative", dict(sample_weight=lambda: -np.ones(N)),
                 ["sample_weight"]),
                ("sample_weight_str", dict(sample_weight=lambda: np.full(N, "x")),
                 ["sample_weight"]),
                ("class_weight_ok", dict(class_weight=lambda: {0: 2.0, 1: 0.5}), []),
                ("class_weight_list", dict(class_weight=lambda: [1.0, 2.0]), ["class_weight"]),
                ("class_weight_unknown_class", dict(class_weight=lambda: {K: 1.0}),
                 ["class_weight"]),
                ("class_weight_nan", dict(class_weight=lambda: {0: float("nan")}),
                 ["class_weight"]),
                ("validation_split_ok", dict(validation_split=lambda: 0.5), []),
                ("validation_split_one", dict(validation_split=lambda: 1.0),
                 ["validation_split"]),
                ("validation_split_nan", dict(validation_split=lambda: float("nan")),
                 ["validation_split"]),
                ("validation_split_str", dict(validation_split=lambda: "0.2"),
                 ["validation_split"]),
                ("callbacks_not_a_list", dict(callbacks=lambda: 3), ["callbacks"]),
                ("callbacks_bad_item", dict(callbacks=lambda: [3]), ["callbacks"]),
                ("initial_epoch_resume", dict(initial_epoch=lambda: 1), []),
                ("initial_epoch_negative", dict(initial_epoch=lambda: -1), ["initial_epoch"]),
                ("initial_epoch_float", dict(initial_epoch=lambda: 1.5), ["initial_epoch"]),
                ("verbose_lines", dict(verbose=lambda: 2), []),
                ("verbose_3", dict(verbose=lambda: 3), ["verbose"]),
                ("validation_bad_X", dict(validation_data=lambda: (arr(N, D + 2), y_for(
                    "cross_entropy"))), ["validation"]),
                ("validation_bad_y", dict(validation_data=lambda: (X_ok(), np.full(N, 7))),
                 ["validation"]),
                ("unbuilt_zero_features", dict(X=lambda: np.zeros((N, 0))), ["X", "feature"],
                 lambda: model(built=False)),
                ("unbuilt_bad_dtype", dict(X=lambda: np.full((N, D + 1), "x")), ["X"],
                 lambda: model(built=False)),
                ("unbuilt_nan", dict(X=lambda: np.full((N, D + 1), np.nan)), ["X"],
                 lambda: model(built=False)),
                ("uncompiled", dict(), ["compile"], lambda: model(compiled=False)),
                ("bce_targets_out_of_range", dict(y=lambda: np.full((N, K), 2.0)), ["y"],
                 lambda: model("binary_cross_entropy")),
                ("mse_y_shape", dict(y=lambda: arr(N, K + 1)), ["y"], lambda: model("mse")),
                ("mse_huge_targets_f32", dict(y=lambda: np.full((N, K), 1e30)),
                 ["diverged", "y"], lambda: model("mse")),
                ("diverging_lr", dict(y=lambda: arr(N, K, scale=1e3)), ["diverged"],
                 lambda: model("mse", optimizer=_fusenn().SGD(lr=1e6))),
                ("numpy_backend_labels_out_of_range",
                 dict(y=lambda: np.array([0, 1, 2, 3, 0, 1])), ["y"],
                 lambda: model(backend="numpy"))]),
    Spec("Sequential.train_on_batch", _method("train_on_batch"),
         dict(X=("array", lambda: X_ok()), y=("array", lambda: y_for("cross_entropy"))),
         check=check_float, make_obj=lambda: model(),
         extra=[("labels_out_of_range", dict(y=lambda: np.array([0, 1, 2, 9, 0, 1])), ["y"]),
                ("uncompiled", dict(), ["compile"], lambda: model(compiled=False)),
                ("unbuilt_bad_dtype", dict(X=lambda: np.full((N, D + 1), "x")), ["X"],
                 lambda: model(built=False))]),
    Spec("Sequential.predict", _method("predict"),
         dict(X=("array", lambda: X_ok()), batch_size=("count", lambda: None)),
         check=check_model_predict, make_obj=lambda: model(),
         keywords={"batch_size": ["batch_size"]},
         extra=[("X_features", dict(X=lambda: arr(N, D + 1)), ["X"]),
                ("X_list_of_lists", dict(X=lambda: X_ok().tolist()), []),
                ("X_1d", dict(X=lambda: np.ones(D)), ["X"]),
                ("huge_finite_X_f32", dict(X=lambda: np.full((N, D), 3e38, np.float32)), ["X"]),
                ("unbuilt", dict(), ["built"], lambda: model(built=False)),
                ("uncompiled", dict(), [], lambda: model(compiled=False)),
                ("numpy_backend", dict(), [], lambda: model(backend="numpy"))]),
    Spec("Sequential.evaluate", _method("evaluate"),
         dict(X=("array", lambda: X_ok()), y=("array", lambda: y_for("cross_entropy")),
              batch_size=("count", lambda: None)),
         check=check_eval, make_obj=lambda: model(),
         extra=[("labels_out_of_range", dict(y=lambda: np.array([0, 1, 2, 5, 0, 1])), ["y"]),
                ("huge_finite_X_f32", dict(X=lambda: np.full((N, D), 3e38, np.float32)), ["X"]),
                ("uncompiled", dict(), ["compile"], lambda: model(compiled=False))]),
    Spec("Sequential.summary", _method("summary"), dict(print_fn=("name", lambda: None)),
         make_obj=lambda: model(),
         skip={"print_fn": ["None"]},  # None: return the text without printing it
         extra=[("print_fn_list_append", dict(print_fn=lambda: [].append), [])]),
    Spec("Sequential.get_weights", _method("get_weights"), dict(),
         make_obj=lambda: model(),
         extra=[("unbuilt", dict(), ["built"], lambda: model(built=False))]),
    Spec("Sequential.set_weights", _method("set_weights"),
         dict(weights=("seq", lambda: model().get_weights())),
         check=check_set_weights, make_obj=lambda: model(),
         extra=[("too_few", dict(weights=lambda: model().get_weights()[:-1]), ["weights"]),
                ("too_many", dict(weights=lambda: model().get_weights() + [np.zeros(2)]),
                 ["weights"]),
                ("wrong_shape", dict(weights=lambda: [w.T for w in model().get_weights()]),
                 ["weights", "shape"]),
                ("swapped_order", dict(weights=lambda: model().get_weights()[::-1]),
                 ["weights"]),
                ("nan_weights", dict(weights=lambda: [_with(w, (0,) * w.ndim, np.nan)
                                                      for w in model().get_weights()]),
                 ["weights", "NaN"]),
                ("overflow_float32", dict(weights=lambda: [np.full(w.shape, 1e300)
                                                           for w in model().get_weights()]),
                 ["weights"]),
                ("complex_weights", dict(weights=lambda: [w.astype(complex)
                                                          for w in model().get_weights()]),
                 ["weights"]),
                ("str_weights", dict(weights=lambda: [np.full(w.shape, "a")
                                                      for w in model().get_weights()]),
                 ["weights"]),
                ("generator", dict(weights=lambda: (w for w in model().get_weights())), []),
                ("unbuilt", dict(), ["built"], lambda: model(built=False))]),
    Spec("Sequential.save", _method("save"), dict(path=("path", _tmpfile())),
         check=check_saved, make_obj=lambda: model(),
         keywords={"path": ["path", "str", "PathLike", "file", "directory"]},
         extra=[("directory", dict(path=lambda: WORKDIR), ["directory", WORKDIR]),
                ("missing_dir", dict(path=lambda: os.path.join(WORKDIR, "no", "such", "m.npz")),
                 ["No such file", "directory"]),
                ("unbuilt", dict(), ["built"], lambda: model(built=False))]),
    Spec("load", _attr("load"), dict(path=("path", lambda: _saved_model())),
         check=lambda result, args, obj: check_sequential(result, args, obj),
         keywords={"path": ["path", "str", "PathLike", "file", "directory", "valid"]},
         extra=[("missing", dict(path=lambda: os.path.join(WORKDIR, "missing.npz")),
                 ["No such file"]),
                ("directory", dict(path=lambda: WORKDIR), ["directory", "valid"]),
                ("not_npz", dict(path=lambda: _write("junk.npz", b"hello")), ["valid"]),
                ("plain_npy", dict(path=lambda: _npy()), ["valid"])]),
    Spec("Dense", _attr("Dense"), dict(units=("count", lambda: 3),
                                       activation=("name", lambda: "relu"),
                                       kernel_initializer=("name", lambda: "he_normal"),
                                       bias_initializer=("name", lambda: "zeros")),
         check=lambda result, args, obj: None,
         skip={"kernel_initializer": ["None"]},  # None: the default for the activation
         keywords={"kernel_initializer": ["initializer"], "bias_initializer": ["initializer"]},
         extra=[("np_int", dict(units=lambda: np.int64(3)), []),
                ("alias_linear", dict(activation=lambda: "linear"), []),
                ("alias_silu", dict(activation=lambda: "silu"), []),
                ("unknown_act", dict(activation=lambda: "mish"), ["activation"])]),
    Spec("Dropout", _attr("Dropout"), dict(rate=("scalar", lambda: 0.5),
                                           seed=("count", lambda: 7)),
         check=lambda result, args, obj: None,
         # rate 0 keeps everything; seeds are any int in [0, 2**64) or None
         skip={"rate": ["zero"], "seed": ["None", "zero", "huge_int", "np_int"]},
         extra=[("rate_one", dict(rate=lambda: 1.0), ["rate"]),
                ("seed_2_64", dict(seed=lambda: 2**64), ["seed"])]),
    Spec("BatchNorm", _attr("BatchNorm"), dict(momentum=("scalar", lambda: 0.99),
                                               eps=("scalar", lambda: 1e-3)),
         check=lambda result, args, obj: None,
         skip={"momentum": ["zero"]},  # momentum 0: the running stats are the last batch's
         extra=[("momentum_one", dict(momentum=lambda: 1.0), []),
                ("momentum_above_one", dict(momentum=lambda: 1.01), ["momentum"])]),
    Spec("Conv2D", _attr("Conv2D"),
         dict(filters=("count", lambda: 4), kernel_size=("count", lambda: 3),
              strides=("count", lambda: 1), padding=("name", lambda: "same"),
              dilation_rate=("count", lambda: 1), activation=("name", lambda: "relu"),
              use_bias=("flag", lambda: True)),
         check=lambda result, args, obj: None,
         skip={"use_bias": ["zero", "one", "np_bool"]},  # any truth value is a bool
         extra=[("pairs", dict(kernel_size=lambda: (3, 2), strides=lambda: (2, 1)), []),
                ("kernel_triple", dict(kernel_size=lambda: (3, 3, 3)), ["kernel_size"]),
                ("kernel_zero_pair", dict(kernel_size=lambda: (3, 0)), ["kernel_size"]),
                ("padding_full", dict(padding=lambda: "full"), ["padding"])]),
    *[Spec(name, _attr(name),
           dict(pool_size=("count", lambda: 2), strides=("count", lambda: 2),
                padding=("name", lambda: "valid")),
           check=lambda result, args, obj: None,
           extra=[("strides_none", dict(strides=lambda: None), []),
                  ("pool_pair", dict(pool_size=lambda: (3, 2)), []),
                  ("pool_negative", dict(pool_size=lambda: -2), ["pool_size"])])
      for name in ("MaxPooling2D", "AveragePooling2D")],
    *[Spec(name, _attr(name), dict(), check=lambda result, args, obj: None)
      for name in ("GlobalAveragePooling2D", "GlobalMaxPooling2D", "Flatten")],
    Spec("Embedding", _attr("Embedding"),
         dict(input_dim=("count", lambda: 10), output_dim=("count", lambda: 4),
              embeddings_initializer=("name", lambda: "uniform"),
              mask_zero=("flag", lambda: False)),
         check=lambda result, args, obj: None,
         skip={"mask_zero": ["zero", "one", "np_bool"]},  # any truth value is a bool
         keywords={"embeddings_initializer": ["initializer"]},
         extra=[("input_dim_zero", dict(input_dim=lambda: 0), ["input_dim"])]),
    *[Spec(name, _attr(name),
           dict(units=("count", lambda: 4), activation=("name", lambda: "tanh"),
                return_sequences=("flag", lambda: False), go_backwards=("flag", lambda: False)),
           check=lambda result, args, obj: None,
           skip={"return_sequences": ["zero", "one", "np_bool"],
                 "go_backwards": ["zero", "one", "np_bool"]},
           extra=[("softmax_activation", dict(activation=lambda: "softmax"), ["softmax"]),
                  ("units_zero", dict(units=lambda: 0), ["units"])])
      for name in ("SimpleRNN", "GRU", "LSTM")],
    *[Spec(name, _attr(name), dict(), check=lambda result, args, obj: None)
      for name in ("GlobalAveragePooling1D", "GlobalMaxPooling1D")],
    Spec("Reshape", _attr("Reshape"), dict(target_shape=("seq", lambda: (2, -1))),
         check=lambda result, args, obj: None,
         extra=[("two_unknown", dict(target_shape=lambda: (-1, -1)), ["target_shape"]),
                ("zero", dict(target_shape=lambda: (0, 4)), ["target_shape"])]),
    *[Spec(f"ops.{name}", _ops(name),
           dict(x=("array", lambda: arr(N, 3, D)),
                **({"dy": ("array", lambda: arr(N, D))} if name.endswith("backward") else {}),
                mode=("name", lambda: "avg")),
           check=ops_check(name),
           extra=[("mode_max", dict(mode=lambda: "max"), []),
                  ("mode_min", dict(mode=lambda: "min"), ["mode"]),
                  ("x_flat", dict(x=lambda: arr(N, D)), ["x"])]
           + ([("dy_shape", dict(dy=lambda: arr(N, D + 1)), ["dy"])]
              if name.endswith("backward") else []))
      for name in ("global_pool_forward", "global_pool_backward")],
    Spec("ops.conv2d_forward", _ops("conv2d_forward"),
         dict(x=("array", lambda: arr(N, 5, 4, 3)), w=("array", lambda: arr(3, 2, 3, 2)),
              b=("array", lambda: arr(2)), strides=("seq", lambda: (1, 2)),
              padding=("seq", lambda: ((1, 1), (0, 1))), dilation=("seq", lambda: (1, 1)),
              activation=("name", lambda: "relu")),
         check=ops_check("conv2d_forward"),
         extra=[("no_bias", dict(b=lambda: None), []),
                ("gelu_dilated", dict(activation=lambda: "gelu", dilation=lambda: (2, 1)), []),
                ("kernel_too_big", dict(w=lambda: arr(8, 2, 3, 2)), ["larger"]),
                ("channels_mismatch", dict(w=lambda: arr(3, 2, 4, 2)), ["w"]),
                ("stride_zero", dict(strides=lambda: (0, 1)), ["strides"]),
                ("padding_negative", dict(padding=lambda: ((1, -1), (0, 0))), ["padding"]),
                ("padding_flat", dict(padding=lambda: (1, 1)), ["padding"]),
                ("x_5d", dict(x=lambda: arr(2, N, 5, 4, 3)), ["x"])]),
    Spec("ops.conv2d_backward", _ops("conv2d_backward"),
         dict(x=("array", lambda: arr(N, 5, 4, 3)), w=("array", lambda: arr(3, 2, 3, 2)),
              y=("array", lambda: arr(N, 3, 2, 2)), dy=("array", lambda: arr(N, 3, 2, 2)),
              strides=("seq", lambda: (1, 2)), padding=("seq", lambda: ((0, 0), (0, 1))),
              dilation=("seq", lambda: (1, 1)), activation=("name", lambda: "tanh"),
              need_dx=("flag", lambda: True), z=("array", lambda: arr(N, 3, 2, 2)),
              bias=("flag", lambda: True)),
         check=ops_check("conv2d_backward"),
         skip={"z": ["None"]},  # z is only read for gelu, gelu_tanh and swish
         extra=[("swish", dict(activation=lambda: "swish"), []),
                ("swish_without_z", dict(activation=lambda: "swish", z=lambda: None), ["z"]),
                ("dy_shape", dict(dy=lambda: arr(N, 3, 3, 2)), ["dy"]),
                ("no_bias_no_dx", dict(bias=lambda: False, need_dx=lambda: False), [])]),
    Spec("ops.pool2d_forward", _ops("pool2d_forward"),
         dict(x=("array", lambda: arr(N, 5, 4, 3)), pool_size=("seq", lambda: (2, 3)),
              strides=("seq", lambda: (2, 1)), padding=("seq", lambda: ((1, 0), (0, 2))),
              mode=("name", lambda: "max")),
         check=ops_check("pool2d_forward"),
         extra=[("avg", dict(mode=lambda: "avg"), []),
                ("pad_as_big_as_pool", dict(padding=lambda: ((2, 0), (0, 0))), ["padding"]),
                ("pool_too_big", dict(pool_size=lambda: (7, 2), padding=lambda: ((0, 0),) * 2),
                 ["larger"])]),
    Spec("ops.pool2d_backward", _ops("pool2d_backward"),
         dict(dy=("array", lambda: arr(N, 3, 2, 3)), x_shape=("seq", lambda: (N, 5, 4, 3)),
              argmax=("array", lambda: np.zeros((N, 3, 2, 3), np.int64)),
              pool_size=("seq", lambda: (2, 3)), strides=("seq", lambda: (2, 1)),
              padding=("seq", lambda: ((1, 0), (0, 0))), mode=("name", lambda: "max")),
         check=ops_check("pool2d_backward"),
         extra=[("avg", dict(mode=lambda: "avg", argmax=lambda: None), []),
                ("argmax_out_of_range", dict(argmax=lambda: np.full((N, 3, 2, 3), 20)),
                 ["argmax"]),
                ("x_shape_mismatch", dict(x_shape=lambda: (N, 9, 4, 3)), ["dy"])]),
    Spec("ops.embedding_forward", _ops("embedding_forward"),
         dict(x=("array", lambda: np.arange(N * 3).reshape(N, 3) % 5),
              table=("array", lambda: arr(5, D))),
         check=ops_check("embedding_forward"),
         extra=[("x_out_of_range", dict(x=lambda: np.full((N, 3), 5)), ["largest"]),
                ("x_negative", dict(x=lambda: np.full((N, 3), -1)), ["x"]),
                ("x_float", dict(x=lambda: np.zeros((N, 3))), ["integer"])]),
    Spec("ops.embedding_backward", _ops("embedding_backward"),
         dict(x=("array", lambda: np.arange(N * 3).reshape(N, 3) % 5),
              dy=("array", lambda: arr(N, 3, D)), table_shape=("seq", lambda: (5, D))),
         check=ops_check("embedding_backward"),
         extra=[("table_shape_zero", dict(table_shape=lambda: (5, 0)), ["table_shape"]),
                ("table_shape_too_few_rows", dict(table_shape=lambda: (2, D)), ["largest"])]),
    *[Spec(f"ops.{kind}_{way}", _ops(f"{kind}_{way}"),
           dict(x=("array", lambda: arr(N, 3, D)),
                kernel=("array", lambda G=G: arr(D, G * 5)),
                recurrent_kernel=("array", lambda G=G: arr(5, G * 5, scale=0.5)),
                bias=("array", lambda G=G, kind=kind: arr(2, G * 5) if kind == "gru"
                      else arr(G * 5)),
                **({"dy": ("array", lambda: arr(N, 5))} if way == "backward" else {}),
                activation=("name", lambda: "tanh"),
                **({"recurrent_activation": ("name", lambda: "sigmoid")} if G > 1 else {}),
                return_sequences=("flag", lambda: False), go_backwards=("flag", lambda: False),
                **({"reset_after": ("flag", lambda: True)} if kind == "gru" else {}),
                mask=("array", lambda: probs(N, 3) > 0.3),
                **({"need_dx": ("flag", lambda: True)} if way == "backward" else {})),
           check=ops_check(f"{kind}_{way}"),
           extra=[("softmax", dict(activation=lambda: "softmax"), ["softmax"]),
                  ("units_zero", dict(recurrent_kernel=lambda: np.zeros((0, 0))),
                   ["recurrent_kernel"]),
                  ("x_2d", dict(x=lambda: arr(N, D)), ["x"]),
                  ("mask_int", dict(mask=lambda: np.ones((N, 3), np.int64)), ["mask"]),
                  ("steps_backwards", dict(go_backwards=lambda: True,
                                           return_sequences=lambda: way == "forward"), []),
                  ("huge_x", dict(x=lambda: np.full((N, 3, D), 1e300)), [])])
      for kind, G in (("simple_rnn", 1), ("gru", 3), ("lstm", 4)) for way in ("forward", "backward")],
    Spec("SGD", _attr("SGD"), dict(lr=("scalar", lambda: 0.1), momentum=("scalar", lambda: 0.9),
                                   nesterov=("flag", lambda: True), **_preprocessing()),
         check=check_optimizer,
         extra=[("nesterov_no_momentum", dict(momentum=lambda: 0.0), ["nesterov"]),
                ("momentum_one", dict(momentum=lambda: 1.0), ["momentum"]),
                ("lr_negative", dict(lr=lambda: -0.1), ["lr"]),
                ("both_clipnorms", dict(global_clipnorm=lambda: 1.0), ["clipnorm"])]),
    Spec("Adam", _attr("Adam"),
         dict(lr=("scalar", lambda: 1e-3), beta1=("scalar", lambda: 0.9),
              beta2=("scalar", lambda: 0.999), eps=("scalar", lambda: 1e-8),
              **_preprocessing(clipnorm=None, global_clipnorm=1.0)),
         check=check_optimizer,
         extra=[("beta1_one", dict(beta1=lambda: 1.0), ["beta1"]),
                ("eps_zero", dict(eps=lambda: 0.0), ["eps"])]),
    Spec("AdamW", _attr("AdamW"),
         dict(lr=("scalar", lambda: 1e-3), beta1=("scalar", lambda: 0.9),
              beta2=("scalar", lambda: 0.999), eps=("scalar", lambda: 1e-8),
              weight_decay=("scalar", lambda: 0.01), **_preprocessing()),
         check=check_optimizer,
         extra=[("weight_decay_negative", dict(weight_decay=lambda: -0.1), ["weight_decay"]),
                ("beta2_one", dict(beta2=lambda: 1.0), ["beta2"])]),
    Spec("RMSprop", _attr("RMSprop"),
         dict(lr=("scalar", lambda: 1e-3), rho=("scalar", lambda: 0.9),
              eps=("scalar", lambda: 1e-7), **_preprocessing()),
         check=check_optimizer,
         extra=[("rho_one", dict(rho=lambda: 1.0), ["rho"]),
                ("clipvalue_negative", dict(clipvalue=lambda: -1.0), ["clipvalue"])]),
    Spec("Adagrad", _attr("Adagrad"),
         dict(lr=("scalar", lambda: 0.01), eps=("scalar", lambda: 1e-10), **_preprocessing()),
         check=check_optimizer,
         extra=[("eps_zero", dict(eps=lambda: 0.0), ["eps"]),
                ("l2_inf", dict(l2=lambda: float("inf")), ["l2"])]),
    Spec("set_num_threads", _attr("set_num_threads"), dict(n=("count", lambda: 2)),
         check=check_threads,
         keywords={"n": ["thread"]},
         skip={"n": ["None"]},  # None means: back to the default
         extra=[("int_max_plus_one", dict(n=lambda: 2**31), ["thread"]),
                ("np_int", dict(n=lambda: np.int64(2)), ["thread"])]),
    Spec("threads", _attr("threads"), dict(n=("count", lambda: 2)), keywords={"n": ["thread"]},
         extra=[("int_max_plus_one", dict(n=lambda: 2**31), ["thread"])]),
    Spec("datasets.load_digits", _attr("datasets", "load_digits"),
         dict(dtype=("name", lambda: "float32"), return_images=("flag", lambda: False)),
         check=check_digits,
         extra=[("images", dict(return_images=lambda: True), [])]),
    Spec("datasets.train_test_split", _attr("datasets", "train_test_split"),
         dict(arrays=("seq", lambda: (arr(20, D), np.arange(20) % 2)),
              test_size=("scalar", lambda: 0.25), seed=("count", lambda: 0),
              shuffle=("flag", lambda: True), stratify=("array", lambda: None)),
         check=check_split, varargs="arrays",
         keywords={"arrays": ["array", "length", "len"]},
         extra=[("length_mismatch", dict(arrays=lambda: (arr(20, D), np.arange(19))),
                 ["length"]),
                ("no_arrays", dict(arrays=lambda: ()), ["array"]),
                ("test_size_one", dict(test_size=lambda: 1.0), ["test_size"]),
                ("test_size_n", dict(test_size=lambda: 20), ["test_size"]),
                ("stratify_length", dict(stratify=lambda: np.arange(5)), ["stratify"]),
                ("stratify_no_shuffle", dict(stratify=lambda: np.arange(20) % 2,
                                             shuffle=lambda: False), ["stratify"]),
                ("scalar_array", dict(arrays=lambda: (np.float64(3.0),)), ["array", "len"])]),
]

_SAME = {}


def _same_dense():
    if "d" not in _SAME:
        _SAME["d"] = _fusenn().Dense(D)
    return _SAME["d"]


def _readonly(a):
    a.setflags(write=False)
    return a


def _with(a, index, value):
    a = np.array(a, dtype=np.float64)
    a[index] = value
    return a


def _unbuilt_uncompiled():
    f = _fusenn()
    return f.Sequential([f.Dense(3)], seed=0)


def _write(name, data):
    path = os.path.join(WORKDIR, name)
    with open(path, "wb") as fh:
        fh.write(data)
    return path


def _npy():
    path = os.path.join(WORKDIR, "plain.npy")
    np.save(path, np.ones(3))
    return path


def _saved_model():
    path = os.path.join(WORKDIR, "saved.npz")
    if not os.path.exists(path):
        m = model()
        m.fit(X_ok(), y_for("cross_entropy"), epochs=1, verbose=0)
        m.save(path)
    return path


# Cases that exercise more than one call or shared objects, written out.

def _shared_optimizer_case():
    """One optimizer instance compiled into two models of different shapes. Either
    compile refuses it (an error naming the optimizer) or each model trains as it
    would with an optimizer of its own."""
    f = _fusenn()
    r = rng()
    Xa, ya = r.standard_normal((4, 2)), r.standard_normal((4, 2))
    Xb, yb = r.standard_normal((64, 512)), r.standard_normal((64, 64))

    def pair(opt_a, opt_b):
        a = f.Sequential([f.Dense(2)], input_dim=2, seed=0)       # velocity: 2x2 + 2
        b = f.Sequential([f.Dense(64)], input_dim=512, seed=0)    # velocity: 512x64 + 64
        a.compile("mse", opt_a)
        b.compile("mse", opt_b)
        a.fit(Xa, ya, verbose=0)
        b.fit(Xb, yb, epochs=3, verbose=0)
        return a, b

    _, b_alone = pair(f.SGD(lr=0.01, momentum=0.9), f.SGD(lr=0.01, momentum=0.9))
    shared = f.SGD(lr=0.01, momentum=0.9)
    try:
        _, b_shared = pair(shared, shared)
    except (ValueError, TypeError) as exc:
        assert "optimizer" in str(exc), f"unclear refusal: {exc}"
        return None
    for got, want in zip(b_shared.get_weights(), b_alone.get_weights()):
        np.testing.assert_array_equal(got, want)
    return None


def _fit_after_rejected_fit_case():
    """A fit rejected for bad X must not leave a half-built model behind."""
    m = model(built=False)
    try:
        m.fit(np.full((N, D + 3), "x"), y_for("cross_entropy"), verbose=0)
    except (TypeError, ValueError):
        pass
    m.fit(X_ok(), y_for("cross_entropy"), verbose=0)  # the real data has D features
    return None


def _fit_after_rejected_compile_case():
    """compile(loss, bad optimizer) is refused; the model must stay usable (here:
    not compiled, so fit must say so) rather than half-compiled."""
    m = model(compiled=False)
    try:
        m.compile("cross_entropy", optimizer="nope")
    except ValueError:
        pass
    try:
        m.fit(X_ok(), y_for("cross_entropy"), verbose=0)
    except ValueError as exc:
        assert "compile" in str(exc), str(exc)
    return None


def _recompile_rejected_then_fit_case():
    """A trained cross-entropy model; compile('mse', bad optimizer) is refused; fit
    with mse targets must then either train under the old configuration's rules
    (and reject mse targets clearly) or under mse - never run the cross-entropy
    engine on targets without labels."""
    m = model()
    m.fit(X_ok(), y_for("cross_entropy"), verbose=0)  # the C backend builds its plan here
    try:
        m.compile("mse", optimizer="nope")
    except ValueError:
        pass
    try:
        m.fit(X_ok(), arr(N, K), verbose=0)
    except (ValueError, TypeError) as exc:
        assert "y" in str(exc) or "compile" in str(exc), str(exc)
    return None


SCENARIOS = {
    "shared_optimizer_between_models": _shared_optimizer_case,
    "fit_after_rejected_fit_on_unbuilt_model": _fit_after_rejected_fit_case,
    "fit_after_rejected_compile": _fit_after_rejected_compile_case,
    "fit_after_rejected_recompile": _recompile_rejected_then_fit_case,
}


# ---- the case table -----------------------------------------------------------------------

Case = collections.namedtuple("Case", "id group spec overrides keywords make_obj")


def build_cases():
    cases = []
    for spec in SPECS:
        arrays = [a for a, kind in spec.kinds.items() if kind == "array"]
        for arg, kind in spec.kinds.items():
            # an array argument's problem may be reported as the mismatch with another
            # array argument ("da must have shape (0, 4)"); a flag accepts anything
            default = arrays if kind == "array" else [] if kind == "flag" else [arg]
            kw = spec.keywords.get(arg, default)
            for bad in KIND_BAD[kind]:
                if bad in spec.skip.get(arg, ()):
                    continue
                cases.append(Case(f"{spec.name}[{arg}={bad}]", spec.name, spec,
                                  {arg: GENERIC_BAD[bad]}, kw, None))
        for extra in spec.extra:
            label, overrides, kw = extra[:3]
            make_obj = extra[3] if len(extra) > 3 else None
            cases.append(Case(f"{spec.name}[{label}]", spec.name, spec, overrides, kw, make_obj))
    for name in SCENARIOS:
        cases.append(Case(f"scenario[{name}]", "scenarios", None, {}, [], None))
    return cases


CASES = build_cases()
GROUPS = list(dict.fromkeys(c.group for c in CASES))


def message_names_problem(msg, keywords):
    if not msg.strip():
        return False
    if not keywords:
        return True
    low = msg.lower()
    for kw in keywords:
        k = kw.lower()
        if len(k) <= 2 and k.isalnum():  # a one-letter name: match it as a word
            if re.search(rf"(?<![a-z0-9_]){re.escape(k)}(?![a-z0-9_])", low):
                return True
        elif k in low:
            return True
    return False


def call(spec, obj, args):
    fn = spec.target(obj)
    if spec.varargs:
        args = dict(args)
        pos = args.pop(spec.varargs)
        if not isinstance(pos, tuple):
            pos = (pos,)  # a wrong thing passed as the (only) array
        return fn(*pos, **args)
    if spec.name == "threads":
        with fn(**args):
            return check_threads(None, args, None)
    return fn(**args)


def run_case(case):
    """Run one case; return (outcome, detail, problems)."""
    if case.spec is None:  # a scenario
        try:
            SCENARIOS[case.id[len("scenario["):-1]]()
            return "ok", "", []
        except Exception as exc:
            return "raised", f"{type(exc).__name__}: {exc}", [
                f"scenario failed: {type(exc).__name__}: {exc}\n{traceback.format_exc(limit=4)}"]
    spec = case.spec
    args = {k: f() for k, f in spec.valid.items()}
    obj = (case.make_obj or spec.make_obj or (lambda: None))()
    if case.id.endswith("[add_after_build]"):
        obj.build(D)
    for k, f in case.overrides.items():
        args[k] = f()
    finite_in = all(finite_numbers(v) for v in args.values())
    before = model_state(obj)
    problems = []
    try:
        with np.errstate(all="ignore"):
            result = call(spec, obj, args)
    except ACCEPTED + ((OSError,) if spec.name in ("Sequential.save", "load") else ()) as exc:
        msg = str(exc)
        detail = f"{type(exc).__name__}: {msg}"
        keywords = list(case.keywords)
        if isinstance(exc, MemoryError):
            keywords.append("allocate")  # NumPy's "Unable to allocate 21.8 TiB for ... shape"
        if not message_names_problem(msg, keywords):
            problems.append(f"message does not name the problem (wanted one of "
                            f"{case.keywords}): {detail}")
        after = model_state(obj)
        # fit documents that a diverging step leaves the weights from before that
        # step (earlier steps of the call stay applied)
        documented = spec.name == "Sequential.fit" and "diverged" in msg
        if not documented and not states_equal(before, after):
            problems.append(f"the rejected call changed the model: before {_brief(before)}, "
                            f"after {_brief(after)} ({detail})")
        return "raised", detail, problems
    except Exception as exc:
        tb = traceback.format_exc(limit=6)
        return "raised", f"{type(exc).__name__}: {exc}", [
            f"unexpected exception type {type(exc).__name__}: {exc}\n{tb}"]
    if finite_in and not all_finite_out(result) and spec.name not in OVERFLOW_IS_THE_ANSWER:
        problems.append(f"non-finite output for finite inputs: {_short(result)}")
    if obj is not None and type(obj).__name__ == "Sequential" and obj.built:
        if finite_in and not all(np.all(np.isfinite(w)) for w in obj.params):
            problems.append("the call left non-finite weights in the model")
    if spec.check is not None:
        try:
            spec.check(result, args, obj)
        except Exception as exc:
            problems.append(f"accepted, but the result is wrong: {type(exc).__name__}: {exc}")
    return "ok", _short(result), problems


def _brief(state):
    if state is None:
        return None
    return {k: v for k, v in state.items() if k != "weights"}


def _short(value):
    text = repr(value)
    return text if len(text) < 300 else text[:300] + "..."


# ---- the worker (this file run as a script) ----------------------------------------------------

def _emit(fd, record):
    os.write(fd, (json.dumps(record) + "\n").encode())


def worker_table(results_path, first):
    """Run CASES[first:], appending a start and an end record per case."""
    global WORKDIR
    import fusenn
    default_threads = fusenn.get_num_threads()
    fd = os.open(results_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    WORKDIR = tempfile.mkdtemp(prefix="fusenn_fuzz_")
    os.chdir(WORKDIR)
    for i in range(first, len(CASES)):
        case = CASES[i]
        _emit(fd, {"i": i, "event": "start", "t": time.time()})
        outcome, detail, problems = run_case(case)
        _emit(fd, {"i": i, "event": "end", "outcome": outcome, "detail": detail[:500],
                   "problems": problems})
        fusenn.set_num_threads(default_threads)  # a case may have changed it
    os.close(fd)


def complete_lines(path):
    """The newline-terminated lines of a file another process is appending to."""
    try:
        with open(path) as fh:
            text = fh.read()
    except FileNotFoundError:
        return []
    return text.split("\n")[:-1]


def run_table_in_workers():
    """{case index: record}; crashed or hung cases get a problem naming the signal."""
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "results.jsonl")
        first = 0
        while first < len(CASES):
            open(path, "w").close()
            proc = subprocess.Popen([sys.executable, __file__, "table", path, str(first)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                    env=dict(os.environ, SKBUILD_EDITABLE_VERBOSE="0"))
            current, started, hung = None, None, False
            while True:
                done = proc.poll() is not None
                for line in complete_lines(path):
                    rec = json.loads(line)
                    if rec["event"] == "start":
                        current, started = rec["i"], rec["t"]
                    else:
                        results[rec["i"]] = rec
                        current = None
                if done:
                    break
                if current is not None and time.time() - started > CASE_TIMEOUT_S:
                    proc.kill()
                    proc.wait()
                    hung = True
                    break
                time.sleep(0.02)
            stderr = proc.stderr.read().decode(errors="replace")[-3000:]
            proc.stderr.close()
            if current is None:
                if proc.returncode != 0 and len(results) < len(CASES):
                    raise RuntimeError(f"fuzz worker failed outside a case "
                                       f"(exit {proc.returncode}):\n{stderr}")
                break
            what = (f"hung (> {CASE_TIMEOUT_S:.0f} s, killed)" if hung else
                    f"crashed the interpreter (exit status {proc.returncode}"
                    f"{', signal ' + str(-proc.returncode) if proc.returncode < 0 else ''})")
            results[current] = {"i": current, "outcome": "crash", "detail": stderr[-1500:],
                                "problems": [f"{what}; worker stderr tail:\n{stderr[-1500:]}"]}
            first = current + 1
    return results


@pytest.fixture(scope="module")
def table_results():
    return run_table_in_workers()


def test_table_covers_every_public_callable():
    import fusenn
    names = {spec.name for spec in SPECS}
    for name in fusenn.__all__:
        obj = getattr(fusenn, name)
        if callable(obj) and name not in ("History", "Layer", "has_openmp", "gemm_isa",
                                          "get_num_threads"):
            assert name in names, f"fusenn.{name} has no fuzz cases"
    for name in fusenn.ops.__all__:
        if callable(getattr(fusenn.ops, name)) and name != "matmul":
            assert f"ops.{name}" in names, f"fusenn.ops.{name} has no fuzz cases"
    methods = {"add", "build", "compile", "fit", "train_on_batch", "predict", "evaluate",
               "get_weights", "set_weights", "save"}
    assert {f"Sequential.{m}" for m in methods} <= names
    assert len(CASES) > 500


@pytest.mark.parametrize("group", GROUPS)
def test_fuzz_table(group, table_results):
    failures = []
    for i, case in enumerate(CASES):
        if case.group != group:
            continue
        rec = table_results.get(i)
        if rec is None:
            failures.append(f"{case.id}: never ran")
        elif rec["problems"]:
            failures.append(f"{case.id}: " + "\n    ".join(rec["problems"]))
    assert not failures, f"{len(failures)} bad outcome(s):\n" + "\n".join(failures)


# ---- the hypothesis-driven part ------------------------------------------------------------------

def junk_strategy():
    """Random wrong (or occasionally right) argument values."""
    from hypothesis import strategies as st

    dtypes = st.sampled_from(["f4", "f8", "f2", "i1", "i8", "u8", "c8", "c16", "?", "O", "U2",
                              ">f8", "<f4"])
    shapes = st.lists(st.sampled_from([0, 1, 2, 3, 4, 5, 6]), min_size=0, max_size=3)
    fills = st.sampled_from(["normal", "nan", "inf", "huge", "zero", "int"])

    @st.composite
    def arrays(draw):
        dt, shape, fill = draw(dtypes), tuple(draw(shapes)), draw(fills)
        base = np.random.default_rng(len(shape)).standard_normal(shape)
        base = {"normal": base, "nan": np.full(shape, np.nan), "inf": np.full(shape, np.inf),
                "huge": np.full(shape, 1e300), "zero": np.zeros(shape),
                "int": np.round(base * 3)}[fill]
        if dt in ("O",):
            return base.astype(object)
        if dt.startswith("U"):
            return base.astype(str).astype(dt)
        with np.errstate(all="ignore"):
            return base.astype(dt)

    scalars = st.one_of(st.none(), st.booleans(),
                        st.integers(-3, 70), st.sampled_from([10**12, 10**400, -10**12]),
                        st.floats(allow_nan=True, allow_infinity=True),
                        st.text(max_size=4), st.binary(max_size=3),
                        st.sampled_from(["relu", "softmax", "sgd", "adam", "mse", "c", "numpy",
                                         "float32", "float64", "cross_entropy"]))
    return st.one_of(scalars, arrays(), st.lists(scalars, max_size=4),
                     st.lists(arrays(), max_size=3), st.dictionaries(st.text(max_size=3), scalars,
                                                                     max_size=2))


HYPOTHESIS_SPECS = [s for s in SPECS if s.name not in ("set_num_threads", "threads")]
# arguments whose junk must stay small: they count work (an absurd epochs trains forever)
WORK_ARGS = {"epochs", "units"}


def worker_hypothesis(progress_path):
    """Run the hypothesis part; write each case to progress_path before running it."""
    global WORKDIR
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    import fusenn

    settings.register_profile("ci", derandomize=True, database=None, deadline=None,
                              print_blob=True,
                              suppress_health_check=list(HealthCheck))
    settings.register_profile("dev", deadline=None, print_blob=True, database=None,
                              suppress_health_check=list(HealthCheck))
    settings.load_profile("ci" if os.environ.get("CI") else "dev")
    WORKDIR = tempfile.mkdtemp(prefix="fusenn_fuzz_h_")
    os.chdir(WORKDIR)
    default_threads = fusenn.get_num_threads()
    counter = {"n": 0}
    fd = os.open(progress_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    @settings(max_examples=int(os.environ.get("FUSENN_FUZZ_EXAMPLES", "600")))
    @given(spec_index=st.integers(0, len(HYPOTHESIS_SPECS) - 1), data=st.data())
    def fuzz(spec_index, data):
        spec = HYPOTHESIS_SPECS[spec_index]
        overrides = {}
        for arg in spec.valid:
            if data.draw(st.integers(0, 3), label=f"replace {arg}?") == 0:
                value = data.draw(junk_strategy(), label=arg)
                if arg in WORK_ARGS and isinstance(value, int) and not isinstance(value, bool) \
                        and 64 < value:
                    continue
                overrides[arg] = (lambda v=value: v)
        case = Case(f"hypothesis:{spec.name}", spec.name, spec, overrides, [], None)
        desc = {k: _short(v()) for k, v in overrides.items()}
        counter["n"] += 1
        _emit(fd, {"event": "start", "n": counter["n"], "spec": spec.name, "args": desc,
                   "t": time.time()})
        outcome, detail, problems = run_case(case)
        fusenn.set_num_threads(default_threads)
        # Message wording and model state after a rejection are the table's job; here:
        # no crash or hang, only the accepted exception types, no garbage results.
        # Problems are recorded, not asserted, so that one known bug does not stop the
        # search: the parent reports each distinct kind of problem once.
        problems = [p for p in problems if not p.startswith(("message does not name",
                                                             "the rejected call changed"))]
        if problems:
            _emit(fd, {"event": "problem", "spec": spec.name, "args": desc,
                       "problems": problems})

    try:
        fuzz()
    finally:
        _emit(fd, {"event": "done", "n": counter["n"]})
        os.close(fd)


def signature(problem):
    """A problem's kind: its first line with numbers and addresses blanked."""
    return re.sub(r"0x[0-9a-f]+|\d+", "#", problem.splitlines()[0])[:120]


def test_fuzz_hypothesis(table_results, say):
    """Random junk for any subset of a callable's arguments. Fails on kinds of problem
    the table has not already reported (those fail there); known ones are counted."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "progress.jsonl")
        proc = subprocess.Popen([sys.executable, __file__, "hypothesis", path],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env=dict(os.environ, SKBUILD_EDITABLE_VERBOSE="0"))
        deadline = time.time() + 120
        while proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
            lines = complete_lines(path)
            if lines:
                last = json.loads(lines[-1])
                if last["event"] == "start" and time.time() - last["t"] > CASE_TIMEOUT_S:
                    break
        timed_out = proc.poll() is None
        if timed_out:
            proc.kill()
        out = proc.communicate()[0].decode(errors="replace")
        records = [json.loads(line) for line in complete_lines(path)]
    starts = [r for r in records if r["event"] == "start"]
    done = [r for r in records if r["event"] == "done"]
    last = starts[-1] if starts else None
    if timed_out:
        pytest.fail(f"the hypothesis fuzz worker hung on {last}")
    if proc.returncode < 0 or not done:
        pytest.fail(f"the hypothesis fuzz worker crashed (exit {proc.returncode}) on {last}:\n"
                    f"{out[-3000:]}")
    assert proc.returncode == 0, out[-6000:]
    known = {(CASES[i].group, signature(p)) for i, rec in table_results.items()
             for p in rec["problems"]}
    distinct, known_hits = {}, collections.Counter()
    for rec in records:
        if rec["event"] == "problem":
            for problem in rec["problems"]:
                key = (rec["spec"], signature(problem))
                if key in known:
                    known_hits[key] += 1
                else:
                    distinct.setdefault(key, (rec["args"], problem))
    say(f"\nhypothesis fuzz: {len(starts)} examples; {sum(known_hits.values())} hit problems "
        f"the table already reports ({len(known_hits)} kinds), {len(distinct)} new kinds")
    assert not distinct, f"{len(distinct)} new kind(s) of problem:\n" + "\n".join(
        f"{spec}: {problem}\n    example arguments: {args}"
        for (spec, _), (args, problem) in sorted(distinct.items()))


if __name__ == "__main__":
    if sys.argv[1] == "table":
        worker_table(sys.argv[2], int(sys.argv[3]))
    elif sys.argv[1] == "hypothesis":
        worker_hypothesis(sys.argv[2])
    else:
        raise SystemExit(f"unknown mode {sys.argv[1]!r}")
