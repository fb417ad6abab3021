"""Learning-rate schedules: values at known epochs, warm-up, validation."""

import math
import pickle

import numpy as np
import pytest

from fusenn.schedules import CosineDecay, ExponentialDecay, StepDecay


def test_step_decay_values():
    s = StepDecay(0.1, step_size=3, gamma=0.5)
    got = [s(e) for e in range(8)]
    want = [0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025, 0.025]
    np.testing.assert_allclose(got, want, rtol=1e-15)
    assert StepDecay(0.1, step_size=1)(2) == pytest.approx(0.001, rel=1e-12)  # gamma=0.1 default


def test_exponential_decay_values():
    s = ExponentialDecay(0.2, gamma=0.9)
    for e in (0, 1, 5, 37):
        assert s(e) == pytest.approx(0.2 * 0.9 ** e, rel=1e-14)
    assert ExponentialDecay(0.2, gamma=1.0)(100) == 0.2


def test_cosine_decay_values():
    s = CosineDecay(0.1, epochs=10, min_lr=0.01)
    assert s(0) == pytest.approx(0.1, rel=1e-15)
    assert s(5) == pytest.approx(0.055, rel=1e-12)  # half way: the mean of the ends
    assert s(9) == pytest.approx(0.01 + 0.09 * (1 + math.cos(0.9 * math.pi)) / 2, rel=1e-12)
    assert s(10) == 0.01 and s(1000) == 0.01  # constant after the decay
    values = [s(e) for e in range(11)]
    assert all(a > b for a, b in zip(values, values[1:]))  # strictly decreasing
    assert CosineDecay(0.1, epochs=4)(9) == 0.0  # min_lr=0 default


@pytest.mark.parametrize("make", [
    lambda w: StepDecay(0.4, step_size=2, gamma=0.5, warmup_epochs=w),
    lambda w: ExponentialDecay(0.4, gamma=0.5, warmup_epochs=w),
    lambda w: CosineDecay(0.4, epochs=6, min_lr=0.1, warmup_epochs=w),
])
def test_warmup_is_linear_then_decay_counts_from_its_end(make):
    plain, warm = make(0), make(3)
    # lr = initial_lr * (epoch + 1) / (warmup_epochs + 1) during the warm-up
    assert [warm(e) for e in range(3)] == pytest.approx([0.1, 0.2, 0.3], rel=1e-15)
    # then the decay, shifted by the warm-up: epoch 3 is the decay's first epoch
    for e in range(12):
        assert warm(e + 3) == plain(e)
    assert warm(3) == 0.4


def test_epoch_is_checked():
    s = StepDecay(0.1, 2)
    assert s(np.int64(4)) == s(4)
    with pytest.raises(ValueError, match="epoch"):
        s(-1)
    for bad in (1.0, True, "1", None):
        with pytest.raises(TypeError, match="epoch"):
            s(bad)


@pytest.mark.parametrize("make, arg", [
    (lambda: StepDecay(0.0, 1), "initial_lr"),
    (lambda: StepDecay(-0.1, 1), "initial_lr"),
    (lambda: StepDecay(float("nan"), 1), "initial_lr"),
    (lambda: StepDecay(float("inf"), 1), "initial_lr"),
    (lambda: StepDecay(0.1, 0), "step_size"),
    (lambda: StepDecay(0.1, 1, gamma=0.0), "gamma"),
    (lambda: StepDecay(0.1, 1, gamma=1.5), "gamma"),
    (lambda: StepDecay(0.1, 1, warmup_epochs=-1), "warmup_epochs"),
    (lambda: ExponentialDecay(0.1, gamma=-0.5), "gamma"),
    (lambda: CosineDecay(0.1, 0), "epochs"),
    (lambda: CosineDecay(0.1, 5, min_lr=-1e-3), "min_lr"),
    (lambda: CosineDecay(0.1, 5, min_lr=0.2), "min_lr"),
])
def test_bad_values_raise_value_error_naming_the_argument(make, arg):
    with pytest.raises(ValueError, match=arg):
        make()


@pytest.mark.parametrize("make, arg", [
    (lambda: StepDecay("0.1", 1), "initial_lr"),
    (lambda: StepDecay(0.1, 1.5), "step_size"),
    (lambda: StepDecay(0.1, True), "step_size"),
    (lambda: ExponentialDecay(0.1, gamma=None), "gamma"),
    (lambda: CosineDecay(0.1, 5, warmup_epochs=2.0), "warmup_epochs"),
])
def test_bad_types_raise_type_error_naming_the_argument(make, arg):
    with pytest.raises(TypeError, match=arg):
        make()


def test_repr_equality_and_pickle():
    s = CosineDecay(0.1, epochs=10, min_lr=0.001, warmup_epochs=2)
    assert repr(s) == "CosineDecay(initial_lr=0.1, epochs=10, min_lr=0.001, warmup_epochs=2)"
    assert repr(StepDecay(0.1, 3)) == "StepDecay(initial_lr=0.1, step_size=3, gamma=0.1, warmup_epochs=0)"
    assert repr(ExponentialDecay(1, 0.5)) == "ExponentialDecay(initial_lr=1.0, gamma=0.5, warmup_epochs=0)"
    assert s == CosineDecay(0.1, 10, 0.001, 2) and s != CosineDecay(0.1, 10, 0.001, 1)
    assert pickle.loads(pickle.dumps(s)) == s
