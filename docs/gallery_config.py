"""Which gallery scripts the docs build runs, and with which arguments.

sphinx-gallery runs the scripts whose path matches `executed_pattern()` and
only shows the code of the others. Left out: examples/cnn_fashion_mnist.py
and fashion_mnist_gru.py (60,000 images take minutes, and need Debian's
dataset-fashion-mnist), examples/mnist_idx.py (needs MNIST files; it ends in
sys.exit) and examples/distributed_mnist.py (meant for mpirun). The CNN, the
LSTM and the character model train for fewer epochs (the character model also
with fewer units) than their defaults, seconds each.
"""

import os


def executed_pattern():
    """A regular expression matching the paths of the scripts to run."""
    names = [r"tutorial/0\d_\w+\.py",
             r"examples/(xor|regression|digits_mlp|cnn_digits|rnn_digits_rows|char_rnn)\.py"]
    return "/(" + "|".join(names) + ")$"


# Command-line arguments per example: PNGs go to the build directory, not
# examples/ (sphinx-gallery runs each script in its own directory), and the
# CNN, the LSTM and the GRU train for fewer epochs than their defaults.
_ARGS = {
    "xor.py": ["--out-dir", "{out}"],
    "regression.py": ["--out-dir", "{out}"],
    "digits_mlp.py": ["--out-dir", "{out}"],
    "cnn_digits.py": ["--epochs", "15", "--out-dir", "{out}"],
    "rnn_digits_rows.py": ["--epochs", "15"],
    "char_rnn.py": ["--epochs", "3", "--units", "128"],
}


# examples/ from the simplest network to the recurrent ones
_ORDER = ["xor.py", "regression.py", "digits_mlp.py", "mnist_idx.py", "cnn_digits.py",
          "cnn_fashion_mnist.py", "rnn_digits_rows.py", "fashion_mnist_gru.py", "char_rnn.py",
          "distributed_mnist.py"]


class ExampleOrder:
    """sphinx-gallery's within_subsection_order: examples/ in _ORDER, anything
    else (the tutorial's numbered scripts) by file name."""

    def __init__(self, src_dir):
        self.src_dir = src_dir

    def __call__(self, filename):
        return (_ORDER.index(filename) if filename in _ORDER else len(_ORDER), filename)

    def __repr__(self):
        return "ExampleOrder"


def reset_argv(gallery_conf, script_vars):
    """sys.argv[1:] for one gallery script (sphinx-gallery's reset_argv)."""
    # relative to examples/, the directory the script runs in: the pages then
    # show "saved ../docs/_build/...", not the build machine's paths
    out = os.path.relpath(os.path.join(gallery_conf["src_dir"], "_build", "example_output"),
                          os.path.dirname(script_vars["src_file"]))
    name = os.path.basename(script_vars["src_file"])
    return [arg.format(out=out) for arg in _ARGS.get(name, [])]
