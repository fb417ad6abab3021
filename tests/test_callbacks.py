"""Callbacks, unit-tested on a fake model so each rule is checked exactly."""

import io
import os
import sys
import warnings

import numpy as np
import pytest

from fusenn import callbacks as C
from fusenn.schedules import StepDecay


class FakeOptimizer:
    def __init__(self, lr):
        self.lr = lr


class FakeModel:
    """What callbacks use of a model: weights, save, optimizer.lr, stop_training."""

    def __init__(self, lr=0.1):
        self.weights = [np.zeros((2, 2)), np.zeros(2)]
        self.optimizer = FakeOptimizer(lr)
        self.stop_training = False
        self.saved = []

    def get_weights(self):
        return [w.copy() for w in self.weights]

    def set_weights(self, weights):
        self.weights = [np.array(w) for w in weights]

    def save(self, path):
        with open(path, "w") as f:
            f.write("model")
        self.saved.append(os.fspath(path))


def run(callback, values, key="val_loss", model=None, before_epoch=None):
    """Drive `callback` through epochs whose `key` takes `values`, setting the
    fake weights to the epoch number; returns (model, the epochs run, their logs)."""
    model = model or FakeModel()
    cbs = C.CallbackList([callback], model)
    cbs.on_train_begin()
    ran, all_logs = [], []
    for epoch, value in enumerate(values):
        cbs.on_epoch_begin(epoch)
        if before_epoch:
            before_epoch(epoch, model)
        model.weights = [np.full((2, 2), float(epoch)), np.full(2, float(epoch))]
        logs = {"loss": 1.0, key: value, "time": 0.01}
        cbs.on_epoch_end(epoch, logs)
        ran.append(epoch)
        all_logs.append(logs)
        if model.stop_training:
            break
    cbs.on_train_end()
    return model, ran, all_logs


# ---- EarlyStopping ---------------------------------------------------------------------------

def test_early_stopping_counts_patience_epochs_without_improvement():
    es = C.EarlyStopping(patience=2)
    #                  0    1    2    3    4    5
    _, ran, _ = run(es, [1.0, 0.8, 0.9, 0.7, 0.75, 0.71, 0.5])
    assert ran == [0, 1, 2, 3, 4, 5]  # epochs 4 and 5 do not beat 0.7: stop after 5
    assert es.stopped_epoch == 5 and es.best == 0.7 and es.best_epoch == 3


def test_early_stopping_patience_zero_stops_at_first_non_improvement():
    es = C.EarlyStopping(patience=0)
    _, ran, _ = run(es, [1.0, 0.9, 0.9, 0.1])
    assert ran == [0, 1, 2]  # equal is not an improvement


def test_early_stopping_min_delta():
    # improvements of 0.05 do not count with min_delta=0.1
    es = C.EarlyStopping(patience=2, min_delta=0.1)
    _, ran, _ = run(es, [1.0, 0.95, 0.9, 0.85, 0.5])
    assert ran == [0, 1, 2] and es.best == 1.0
    es = C.EarlyStopping(patience=2, min_delta=0.04)
    _, ran, _ = run(es, [1.0, 0.95, 0.9, 0.85, 0.8])
    assert ran == [0, 1, 2, 3, 4] and not es.stopped_epoch and es.best == 0.8
    es = C.EarlyStopping(patience=2, min_delta=0.04)
    _, ran, _ = run(es, [1.0, 0.95, 0.92, 0.5, 0.5])
    # 0.92 is no improvement (wait 1), 0.5 resets the count, the second 0.5 is wait 1
    assert ran == [0, 1, 2, 3, 4] and es.stopped_epoch == 0 and es.best == 0.5 and es.wait == 1


def test_early_stopping_restores_the_best_weights():
    es = C.EarlyStopping(patience=2, restore_best_weights=True)
    model, ran, _ = run(es, [1.0, 0.5, 0.7, 0.8, 0.1])
    assert ran == [0, 1, 2, 3]
    np.testing.assert_array_equal(model.weights[0], np.full((2, 2), 1.0))  # epoch 1's weights
    # without restore the last weights stay
    model, _, _ = run(C.EarlyStopping(patience=2), [1.0, 0.5, 0.7, 0.8])
    np.testing.assert_array_equal(model.weights[0], np.full((2, 2), 3.0))


def test_early_stopping_restores_also_when_training_runs_to_the_end():
    es = C.EarlyStopping(patience=5, restore_best_weights=True)
    model, ran, _ = run(es, [1.0, 0.2, 0.7, 0.8])
    assert ran == [0, 1, 2, 3] and es.stopped_epoch == 0
    np.testing.assert_array_equal(model.weights[1], np.full(2, 1.0))


def test_early_stopping_keeps_a_copy_of_the_best_weights():
    class LiveWeights(FakeModel):
        def get_weights(self):
            return self.weights  # live arrays, mutated in place below

    model = LiveWeights()
    es = C.EarlyStopping(patience=3, restore_best_weights=True)

    def mutate(epoch, m):
        for w in m.weights:
            w += 100
    run(es, [1.0, 2.0], model=model, before_epoch=mutate)
    assert model.weights[0][0, 0] == 0.0  # epoch 0's values, not mutated later


def test_early_stopping_mode_auto_maximises_accuracy():
    es = C.EarlyStopping(monitor="val_accuracy", patience=1)
    _, ran, _ = run(es, [0.5, 0.6, 0.55, 0.9], key="val_accuracy")
    assert ran == [0, 1, 2] and es.best == 0.6
    es = C.EarlyStopping(monitor="acc", patience=1)
    _, ran, _ = run(es, [0.5, 0.6, 0.7], key="acc")
    assert ran == [0, 1, 2] and es.best == 0.7
    # explicit mode wins over the name
    es = C.EarlyStopping(monitor="val_accuracy", patience=1, mode="min")
    _, ran, _ = run(es, [0.5, 0.6], key="val_accuracy")
    assert ran == [0, 1] and es.best == 0.5
    es = C.EarlyStopping(monitor="score", patience=1, mode="max")
    _, ran, _ = run(es, [0.5, 0.6, 0.4], key="score")
    assert ran == [0, 1, 2] and es.best == 0.6


def test_early_stopping_baseline_and_start_from_epoch():
    # nothing beats the baseline 0.5: stop after `patience` epochs
    es = C.EarlyStopping(patience=3, baseline=0.5)
    _, ran, _ = run(es, [0.9, 0.8, 0.7, 0.6, 0.4])
    assert ran == [0, 1, 2] and es.best == 0.7
    # beating the baseline resets the count
    es = C.EarlyStopping(patience=2, baseline=0.5)
    _, ran, _ = run(es, [0.9, 0.4, 0.45, 0.45, 0.1])
    assert ran == [0, 1, 2, 3]
    # epochs before start_from_epoch are not watched
    es = C.EarlyStopping(patience=0, start_from_epoch=3)
    _, ran, _ = run(es, [0.1, 0.5, 0.9, 0.8, 0.7, 0.75])
    assert ran == [0, 1, 2, 3, 4, 5] and es.best == 0.7 and es.best_epoch == 4


def test_early_stopping_nan_never_improves():
    es = C.EarlyStopping(patience=1)
    _, ran, _ = run(es, [1.0, float("nan"), 0.5])
    assert ran == [0, 1] and es.best == 1.0


def test_early_stopping_is_reset_by_a_new_fit():
    es = C.EarlyStopping(patience=0)
    run(es, [1.0, 2.0])
    assert es.stopped_epoch == 1
    _, ran, _ = run(es, [5.0, 4.0, 3.0])
    assert ran == [0, 1, 2] and es.stopped_epoch == 0 and es.best == 3.0


def test_missing_monitor_warns_once_and_does_nothing():
    es = C.EarlyStopping(monitor="val_loss", patience=0)
    with pytest.warns(RuntimeWarning, match="val_loss") as record:
        model, ran, _ = run(es, [1.0, 2.0, 3.0], key="loss_other")
    assert len([w for w in record if "EarlyStopping" in str(w.message)]) == 1
    assert ran == [0, 1, 2] and not model.stop_training
    assert "available: loss, loss_other, time" in str(record[0].message)


@pytest.mark.parametrize("kwargs, exc, word", [
    ({"monitor": ""}, TypeError, "monitor"),
    ({"monitor": None}, TypeError, "monitor"),
    ({"mode": "maximum"}, ValueError, "mode"),
    ({"patience": -1}, ValueError, "patience"),
    ({"patience": 1.5}, TypeError, "patience"),
    ({"min_delta": -0.1}, ValueError, "min_delta"),
    ({"min_delta": float("nan")}, ValueError, "min_delta"),
    ({"restore_best_weights": "yes"}, TypeError, "restore_best_weights"),
    ({"baseline": "low"}, TypeError, "baseline"),
    ({"start_from_epoch": -2}, ValueError, "start_from_epoch"),
    ({"verbose": 3}, ValueError, "verbose"),
])
def test_early_stopping_validates_its_arguments(kwargs, exc, word):
    with pytest.raises(exc, match=word):
        C.EarlyStopping(**kwargs)


# ---- ModelCheckpoint ----------------------------------------------------------------------------

def test_checkpoint_every_epoch_with_formatted_names(tmp_path):
    ck = C.ModelCheckpoint(str(tmp_path / "m-{epoch:02d}-{val_loss:.3f}.npz"))
    model, _, _ = run(ck, [0.5, 0.25, 0.75])
    names = [os.path.basename(p) for p in model.saved]
    assert names == ["m-01-0.500.npz", "m-02-0.250.npz", "m-03-0.750.npz"]
    assert sorted(os.listdir(tmp_path)) == sorted(names)
    assert ck.last_saved == str(tmp_path / "m-03-0.750.npz")


def test_checkpoint_save_best_only(tmp_path):
    ck = C.ModelCheckpoint(tmp_path / "best.npz", save_best_only=True)  # a PathLike works too
    model, _, _ = run(ck, [0.5, 0.6, 0.4, 0.4, 0.45, 0.1])
    assert len(model.saved) == 3 and ck.best == 0.1  # epochs 0, 2 and 5
    ck = C.ModelCheckpoint(str(tmp_path / "acc-{epoch}.npz"), monitor="val_accuracy", save_best_only=True)
    model, _, _ = run(ck, [0.5, 0.6, 0.4, 0.7], key="val_accuracy")
    assert [os.path.basename(p) for p in model.saved] == ["acc-1.npz", "acc-2.npz", "acc-4.npz"]


def test_checkpoint_save_best_only_without_the_metric_warns_and_skips(tmp_path):
    ck = C.ModelCheckpoint(str(tmp_path / "m.npz"), save_best_only=True)
    with pytest.warns(RuntimeWarning, match="val_loss"):
        model, _, _ = run(ck, [0.1, 0.2], key="other")
    assert model.saved == []


def test_checkpoint_creates_directories_and_names_missing_keys(tmp_path):
    ck = C.ModelCheckpoint(str(tmp_path / "a" / "b" / "{epoch}.npz"))
    model, _, _ = run(ck, [1.0])
    assert os.path.exists(tmp_path / "a" / "b" / "1.npz")
    ck = C.ModelCheckpoint(str(tmp_path / "{val_acc:.2f}.npz"))
    with pytest.raises(KeyError, match="val_acc"):
        run(ck, [1.0])


@pytest.mark.parametrize("kwargs, exc, word", [
    ({"filepath": ""}, ValueError, "filepath"),
    ({"filepath": 3}, TypeError, "filepath"),
    ({"filepath": "m-{epoch.npz"}, ValueError, "filepath"),
    ({"filepath": "m-{}.npz"}, ValueError, "filepath"),
    ({"filepath": "m.npz", "mode": "best"}, ValueError, "mode"),
    ({"filepath": "m.npz", "save_best_only": 1}, TypeError, "save_best_only"),
])
def test_checkpoint_validates_its_arguments(kwargs, exc, word):
    with pytest.raises(exc, match=word):
        C.ModelCheckpoint(**kwargs)


# ---- LearningRateScheduler ------------------------------------------------------------------------

def test_scheduler_with_epoch_only_schedule():
    seen = []
    sched = C.LearningRateScheduler(StepDecay(0.4, step_size=2, gamma=0.5))
    model, _, logs = run(sched, [1, 1, 1, 1, 1],
                         before_epoch=lambda e, m: seen.append(m.optimizer.lr))
    assert seen == [0.4, 0.4, 0.2, 0.2, 0.1]  # set before each epoch runs
    assert [l["lr"] for l in logs] == seen


def test_scheduler_with_epoch_and_lr_schedule():
    sched = C.LearningRateScheduler(lambda epoch, lr: lr * 0.5 if epoch else lr)
    model, _, logs = run(sched, [1, 1, 1], model=FakeModel(lr=0.8))
    assert [l["lr"] for l in logs] == [0.8, 0.4, 0.2] and model.optimizer.lr == 0.2

    def with_default(epoch, lr=None):  # binds (epoch, lr): gets the rate, as Keras
        return 0.3 if lr is None else lr / 2
    _, _, logs = run(C.LearningRateScheduler(with_default), [1, 1], model=FakeModel(lr=0.8))
    assert [l["lr"] for l in logs] == [0.4, 0.2]


def test_scheduler_rejects_bad_schedules_and_rates():
    with pytest.raises(TypeError, match="schedule"):
        C.LearningRateScheduler(0.1)
    with pytest.raises(TypeError, match="schedule"):
        C.LearningRateScheduler(lambda: 0.1)
    with pytest.raises(TypeError, match="schedule"):
        C.LearningRateScheduler(lambda a, b, c: 0.1)
    def returning(bad):
        return lambda epoch: bad if epoch == 1 else 0.1

    for bad in (0.0, -0.1, float("nan"), float("inf"), "0.1", None):
        sched = C.LearningRateScheduler(returning(bad))
        model = FakeModel(lr=0.5)
        with pytest.raises(ValueError, match="epoch 1"):
            run(sched, [1, 1, 1], model=model)
        assert model.optimizer.lr == 0.1  # the last valid rate stays
    sched = C.LearningRateScheduler(StepDecay(0.1, 1))
    model = FakeModel()
    model.optimizer = None
    with pytest.raises(ValueError, match="compile"):
        run(sched, [1], model=model)


def test_scheduler_verbose_prints_the_rate(capsys):
    run(C.LearningRateScheduler(lambda e: 0.05, verbose=1), [1])
    assert "Epoch 1: LearningRateScheduler setting learning rate to 0.05." in capsys.readouterr().out


# ---- ReduceLROnPlateau ---------------------------------------------------------------------------

def test_plateau_reduces_after_patience_and_respects_min_lr():
    rp = C.ReduceLROnPlateau(factor=0.5, patience=2, min_lr=0.03, min_delta=0.0)
    model, _, logs = run(rp, [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0], model=FakeModel(lr=0.1))
    # logs hold the rate the epoch ran with; reductions act from the next epoch
    assert [l["lr"] for l in logs] == pytest.approx([0.1, 0.1, 0.1, 0.05, 0.05, 0.03, 0.03])
    assert model.optimizer.lr == 0.03


def test_plateau_cooldown():
    rp = C.ReduceLROnPlateau(factor=0.1, patience=1, cooldown=2, min_delta=0.0)
    model, _, logs = run(rp, [1.0] * 7, model=FakeModel(lr=1.0))
    # reduce at 1; cooldown epochs 2, 3; counting again from 4: reduce at 4
    assert [l["lr"] for l in logs] == pytest.approx([1.0, 1.0, 0.1, 0.1, 0.1, 0.01, 0.01])
    assert model.optimizer.lr == pytest.approx(0.01)


def test_plateau_improvement_resets_and_min_delta():
    rp = C.ReduceLROnPlateau(factor=0.5, patience=2, min_delta=0.1)
    # 0.95 and 0.9 are not improvements of more than 0.1 on 1.0
    model, _, _ = run(rp, [1.0, 0.95, 0.9], model=FakeModel(lr=1.0))
    assert model.optimizer.lr == 0.5
    rp = C.ReduceLROnPlateau(factor=0.5, patience=2, min_delta=0.0)
    model, _, _ = run(rp, [1.0, 0.95, 0.9, 0.85, 0.86], model=FakeModel(lr=1.0))
    assert model.optimizer.lr == 1.0
    rp = C.ReduceLROnPlateau(monitor="val_accuracy", factor=0.5, patience=1, min_delta=0.0)
    model, _, _ = run(rp, [0.5, 0.6, 0.6], key="val_accuracy", model=FakeModel(lr=1.0))
    assert model.optimizer.lr == 0.5  # auto: accuracy is maximised


def test_plateau_missing_metric_warns():
    rp = C.ReduceLROnPlateau(patience=0)
    with pytest.warns(RuntimeWarning, match="val_loss"):
        model, _, logs = run(rp, [1.0, 1.0], key="x", model=FakeModel(lr=0.1))
    assert model.optimizer.lr == 0.1 and logs[0]["lr"] == 0.1


@pytest.mark.parametrize("kwargs, exc, word", [
    ({"factor": 1.0}, ValueError, "factor"), ({"factor": 0.0}, ValueError, "factor"),
    ({"factor": "half"}, TypeError, "factor"), ({"patience": -1}, ValueError, "patience"),
    ({"cooldown": 0.5}, TypeError, "cooldown"), ({"min_lr": -1.0}, ValueError, "min_lr"),
    ({"min_delta": -1e-3}, ValueError, "min_delta"), ({"mode": "up"}, ValueError, "mode"),
])
def test_plateau_validates_its_arguments(kwargs, exc, word):
    with pytest.raises(exc, match=word):
        C.ReduceLROnPlateau(**kwargs)


# ---- LambdaCallback and CallbackList ---------------------------------------------------------------

def test_lambda_callback_and_dispatch_order():
    events = []
    first = C.LambdaCallback(on_train_begin=lambda logs: events.append("train_begin"),
                             on_epoch_begin=lambda e, logs: events.append(f"begin {e}"),
                             on_epoch_end=lambda e, logs: logs.update(seen=e),
                             on_train_end=lambda logs: events.append("train_end"))
    second = C.LambdaCallback(on_epoch_end=lambda e, logs: events.append(f"end {e} {logs['seen']}"))
    model = FakeModel()
    cbs = C.CallbackList([first, second], model)
    assert first.model is model and second.model is model and len(cbs) == 2
    cbs.on_train_begin()
    for e in range(2):
        cbs.on_epoch_begin(e)
        cbs.on_epoch_end(e, {"loss": 1.0})
    cbs.on_train_end()
    assert events == ["train_begin", "begin 0", "end 0 0", "begin 1", "end 1 1", "train_end"]
    with pytest.raises(TypeError, match="on_epoch_end"):
        C.LambdaCallback(on_epoch_end=3)


def test_callback_list_validation_and_append():
    assert len(C.CallbackList(None)) == 0
    assert len(C.CallbackList(C.Callback())) == 1
    with pytest.raises(TypeError, match=r"callbacks\[1\]"):
        C.CallbackList([C.Callback(), "early"])
    with pytest.raises(TypeError, match="callbacks"):
        C.CallbackList("early")
    model = FakeModel()
    cbs = C.CallbackList([], model)
    cb = C.Callback()
    cbs.append(cb)
    assert cb.model is model and list(cbs) == [cb]
    with pytest.raises(TypeError, match="callback"):
        cbs.append(print)


# ---- ProgressBar ------------------------------------------------------------------------------------

LOGS = [{"loss": 0.5, "accuracy": 0.75, "val_loss": 0.6, "val_accuracy": 0.7, "time": 0.0123},
        {"loss": 0.25, "accuracy": 0.875, "val_loss": 0.00042, "val_accuracy": 0.8, "time": 0.0456}]


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


def show(bar, logs=LOGS, first_epoch=0):
    bar.on_train_begin()
    for i, epoch_logs in enumerate(logs):
        bar.on_epoch_begin(first_epoch + i)
        bar.on_epoch_end(first_epoch + i, dict(epoch_logs))
    bar.on_train_end()


@pytest.fixture
def no_tqdm(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # `import tqdm` raises ImportError


def test_progress_verbose_2_one_line_per_epoch(capsys):
    show(C.ProgressBar(2, verbose=2))
    out = capsys.readouterr().out
    assert out.splitlines() == [
        "Epoch 1/2 - 0.012s - loss: 0.5000 - accuracy: 0.7500 - val_loss: 0.6000 - val_accuracy: 0.7000",
        "Epoch 2/2 - 0.046s - loss: 0.2500 - accuracy: 0.8750 - val_loss: 4.2000e-04 - val_accuracy: 0.8000",
    ]


def test_progress_verbose_0_and_auto_on_a_non_terminal_are_silent(capsys):
    show(C.ProgressBar(2, verbose=0))
    show(C.ProgressBar(2))  # "auto"; pytest's captured stdout is not a terminal
    assert capsys.readouterr().out == ""
    stream = FakeTTY()
    show(C.ProgressBar(2, verbose=0, file=stream))
    assert stream.getvalue() == ""


def test_progress_auto_on_a_terminal_shows_a_bar(no_tqdm):
    stream = FakeTTY()
    show(C.ProgressBar(2, file=stream))
    out = stream.getvalue()
    assert out.startswith("\rEpoch 1/2 [") and out.endswith("\n")
    assert "Epoch 2/2 [====================] - loss: 0.2500" in out


def test_progress_plain_fallback_without_tqdm(no_tqdm, capsys):
    show(C.ProgressBar(4, verbose=1), first_epoch=2)  # a run resumed at initial_epoch=2
    out = capsys.readouterr().out
    lines = out.split("\r")
    assert lines[0] == "" and len(lines) == 3 and out.endswith("\n")
    assert lines[1].startswith("Epoch 3/4 [===============>    ] - loss: 0.5000 - accuracy: 0.7500 - "
                               "val_loss: 0.6000 - val_accuracy: 0.7000 - time: 0.012s")
    assert lines[2].startswith("Epoch 4/4 [====================] - loss: 0.2500")
    assert "val_loss: 4.2000e-04" in lines[2] and "time: 0.046s" in lines[2]


def test_progress_plain_fallback_erases_a_longer_previous_line(no_tqdm):
    stream = io.StringIO()
    show(C.ProgressBar(2, verbose=1, file=stream),
         logs=[{"loss": 0.5, "extra_long_metric_name": 1.0}, {"loss": 0.25}])
    first, second = stream.getvalue().split("\r")[1:]
    assert len(second.rstrip("\n")) == len(first)


def test_progress_uses_tqdm_when_installed():
    tqdm = pytest.importorskip("tqdm")
    stream = io.StringIO()
    show(C.ProgressBar(3, verbose=1, file=stream))
    out = stream.getvalue()
    assert "2/3" in out and "loss=0.2500" in out and "val_loss=4.2000e-04" in out
    assert "val_accuracy=0.8000" in out and "time=0.046s" in out and "epoch" in out
    assert out.endswith("\n")  # closed


def test_progress_tqdm_import_is_lazy(monkeypatch):
    monkeypatch.delitem(sys.modules, "tqdm", raising=False)
    C.ProgressBar(2, verbose=1)
    show(C.ProgressBar(2, verbose=2, file=io.StringIO()))
    assert "tqdm" not in sys.modules


def test_progress_validates_its_arguments():
    for bad in (3, -1, "always", None, 1.0):
        with pytest.raises(ValueError, match="verbose"):
            C.ProgressBar(2, verbose=bad)
    with pytest.raises(ValueError, match="epochs"):
        C.ProgressBar(-1)
    with pytest.raises(TypeError, match="epochs"):
        C.ProgressBar("10")
    with pytest.raises(TypeError, match="file"):
        C.ProgressBar(2, file="out.txt")
    assert C.ProgressBar(2, verbose=True).verbose == 1


def test_format_value_keras_style():
    assert C.format_value(0.12345) == "0.1235"
    assert C.format_value(0.00012345) == "1.2345e-04"
    assert C.format_value(0) == "0.0000"
    assert C.format_value(float("nan")) == "nan"
    assert C.format_value("x") == "x"


# ---- with a real model (fit does not take callbacks yet: the loop is driven here) -------------------

def test_callbacks_drive_a_real_model(tmp_path):
    import fusenn
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 4))
    y = (X[:, 0] > 0).astype(np.int64)
    model = fusenn.Sequential([fusenn.Dense(5, "relu"), fusenn.Dense(2, "softmax")],
                              input_dim=4, seed=0, backend="numpy")
    model.compile("cross_entropy", fusenn.SGD(lr=0.1))
    stop = C.EarlyStopping(monitor="loss", patience=1, restore_best_weights=True)
    ckpt = C.ModelCheckpoint(str(tmp_path / "m-{epoch}.npz"), monitor="loss", save_best_only=True)
    sched = C.LearningRateScheduler(StepDecay(0.2, step_size=1, gamma=0.5))
    cbs = C.CallbackList([sched, stop, ckpt], model)
    model.stop_training = False
    cbs.on_train_begin()
    losses, weights = [1.0, 0.5, 0.7, 0.9], []
    for epoch, loss in enumerate(losses):  # scripted losses: the best epoch is 1
        cbs.on_epoch_begin(epoch)
        model.train_on_batch(X, y)
        weights.append(model.get_weights())
        logs = {"loss": loss}
        cbs.on_epoch_end(epoch, logs)
        assert logs["lr"] == model.optimizer.lr == 0.2 * 0.5 ** epoch
        if model.stop_training:
            break
    cbs.on_train_end()
    assert epoch == 2 and stop.stopped_epoch == 2
    for got, want in zip(model.get_weights(), weights[1]):
        np.testing.assert_array_equal(got, want)
    assert sorted(os.listdir(tmp_path)) == ["m-1.npz", "m-2.npz"]
    for got, want in zip(fusenn.load(tmp_path / "m-2.npz").get_weights(), weights[1]):
        np.testing.assert_array_equal(got, want)
