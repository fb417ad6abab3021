"""fusenn: small neural networks in a few lines of Python, trained by C/OpenMP kernels.

    import fusenn
    X, y = fusenn.datasets.load_digits()
    model = fusenn.Sequential([fusenn.Dense(64, activation="relu"),
                               fusenn.Dense(10, activation="softmax")], input_dim=64, seed=0)
    model.compile(loss="cross_entropy", optimizer=fusenn.SGD(lr=0.1, momentum=0.9))
    model.fit(X, y, epochs=20, batch_size=32)

Layout: the model API (model.py, layers.py, losses.py, optimizers.py) runs on a
backend, either `fusenn.ops` (the C kernels in csrc/, bound by _kernels.pyx) or
`fusenn.reference` (the same math in NumPy), chosen by backend="c" / "numpy".
fit's extras live in pure-Python modules: `fusenn.callbacks` (early stopping,
checkpoints, learning-rate callbacks, the progress bar), `fusenn.schedules`
(learning-rate schedules) and `fusenn.initializers` (weight initialisers).
"""

from ._openmp_env import bounded_spin

with bounded_spin():  # libgomp reads its spin count when the extension loads it
    from . import _kernels

from . import callbacks, datasets, initializers, losses, ops, plot, reference, schedules
from ._kernels import gemm_isa, has_openmp
from ._threads import get_num_threads, set_num_threads, threads
from .layers import (GRU, LSTM, AveragePooling2D, BatchNorm, Conv2D, Dense, Dropout, Embedding,
                     Flatten, GlobalAveragePooling1D, GlobalAveragePooling2D, GlobalMaxPooling1D,
                     GlobalMaxPooling2D, Layer, MaxPooling2D, Reshape, SimpleRNN)
from .losses import LOSSES
from .model import History, Sequential
from .saving import load
from .ops import matmul
from .optimizers import SGD, Adagrad, Adam, AdamW, RMSprop

__version__ = "0.1.0"

__all__ = [
    "Sequential", "Dense", "Dropout", "BatchNorm", "Conv2D", "MaxPooling2D", "AveragePooling2D",
    "GlobalAveragePooling2D", "GlobalMaxPooling2D", "Flatten", "Reshape", "Embedding",
    "SimpleRNN", "GRU", "LSTM", "GlobalAveragePooling1D", "GlobalMaxPooling1D", "Layer", "SGD", "Adam", "AdamW", "RMSprop",
    "Adagrad", "History", "load", "matmul", "LOSSES", "set_num_threads", "get_num_threads",
    "threads", "has_openmp", "gemm_isa", "datasets", "ops", "reference", "callbacks",
    "schedules", "initializers", "losses", "plot", "__version__",
]
