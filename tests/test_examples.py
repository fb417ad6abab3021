"""Run every script in examples/ in a subprocess and check what it prints."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from idx_files import fake_mnist

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
pytestmark = pytest.mark.skipif(not EXAMPLES.is_dir(),
                                reason="examples/ is not next to tests/ (installed wheel)")


def run(name, *args, cwd, env=None):
    # the examples' own variables come from the test only (FUSENN_ISA etc. pass through)
    environ = {k: v for k, v in os.environ.items()
               if k not in ("FUSENN_EPOCHS", "FUSENN_MNIST_DIR")}
    environ.update(env or {})
    proc = subprocess.run([sys.executable, str(EXAMPLES / name), *map(str, args)], cwd=cwd,
                          env=environ, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def number(output, label):
    match = re.search(rf"^{label}: ([0-9.]+)$", output, re.MULTILINE)
    assert match, f"no '{label}: ...' line in:\n{output}"
    return float(match.group(1))


def test_digits_mlp(tmp_path):
    out = run("digits_mlp.py", "--epochs", 20, cwd=tmp_path)
    assert number(out, "test accuracy") > 0.9
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "no pictures" in out
        return
    for name in ("digits_history.png", "digits_weights.png", "digits_confusion.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_xor(tmp_path):
    out = run("xor.py", cwd=tmp_path)
    answers = re.findall(r"^(\d) XOR (\d) = (\d): network says ([0-9.]+) -> (\d)$", out,
                         re.MULTILINE)
    assert len(answers) == 4, out
    for a, b, target, p, predicted in answers:
        assert int(target) == int(a) ^ int(b)
        assert int(predicted) == int(target) == int(float(p) > 0.5), out
    assert "all correct: True" in out


def test_xor_few_epochs_is_not_all_correct(tmp_path):
    # the check above can fail: one epoch does not learn XOR
    out = run("xor.py", "--epochs", 1, cwd=tmp_path)
    assert "all correct: False" in out


def test_regression(tmp_path):
    out = run("regression.py", cwd=tmp_path)
    assert number(out, "test MSE") < 0.02  # the noise alone gives about 0.01
    assert number(out, "MSE against the noise-free sine") < 0.01


def test_mnist_idx_without_files(tmp_path):
    out = run("mnist_idx.py", tmp_path / "missing", cwd=tmp_path)
    assert "No MNIST IDX files" in out and "train-images-idx3-ubyte" in out
    assert "test accuracy" not in out


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gzip"])
def test_mnist_idx_on_fake_files(tmp_path, gz):
    data = tmp_path / "data"
    data.mkdir()
    fake_mnist(data, n_train=200, n_test=50, gz=gz)
    out = run("mnist_idx.py", "--epochs", 5, cwd=tmp_path, env={"FUSENN_MNIST_DIR": str(data)})
    assert "200 training and 50 test images of 784 pixels, 10 classes" in out
    assert number(out, "test accuracy") > 0.9


_HAS_C_CONV = {"conv2d", "pool2d"} <= set(__import__("fusenn")._kernels.kinds())
needs_c_conv = pytest.mark.skipif(not _HAS_C_CONV, reason="the C conv2d/pool2d kinds")


@needs_c_conv
def test_cnn_digits(tmp_path):
    out = run("cnn_digits.py", cwd=tmp_path)
    assert number(out, "test accuracy") >= 0.98
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    for name in ("cnn_digits_filters.png", "cnn_digits_maps.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cnn_fashion_mnist_without_the_data(tmp_path):
    out = run("cnn_fashion_mnist.py", "--data", tmp_path / "missing", cwd=tmp_path)
    assert "apt-get install dataset-fashion-mnist" in out and "test accuracy" not in out


@needs_c_conv
@pytest.mark.skipif(not os.path.isdir("/usr/share/datasets/fashion-mnist"),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_cnn_fashion_mnist(tmp_path):
    out = run("cnn_fashion_mnist.py", "--epochs", 1, "--train-samples", 6000, cwd=tmp_path)
    assert "6000 training and 10000 test images of 28x28x1" in out
    assert number(out, "test accuracy") > 0.7
