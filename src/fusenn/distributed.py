"""Data-parallel training over MPI, bit-identical to one process.

Run the same script on every rank:

    mpirun -n 4 -x OMP_NUM_THREADS=1 python train.py

    import fusenn, fusenn.distributed as dist
    X = np.load("X.npy", mmap_mode="r")        # every rank maps one copy
    model = fusenn.Sequential([...], input_dim=784, seed=0)
    model.compile("cross_entropy", fusenn.Adam())
    dist.fit(model, X, y, epochs=10, batch_size=512)

Every rank ends with exactly the weights of `model.fit(X, y, batch_chunks=C,
...)` in one process, C = batch_chunks (default: the number of ranks P, a
multiple of it). Each batch is cut into C chunks of rows (fusenn_chunk_start's
cut, which does not depend on P), and its gradient is the ordered sum of the
chunks' gradients, (((g_0 + g_1) + g_2) + ...), each chunk forwarded and
backpropagated alone. Rank r computes the consecutive chunks [r C/P, (r+1) C/P)
of every batch, reading only those rows of X. The partial sums travel in a
chain: rank 0 adds its chunks' gradients in order and sends the sum to rank 1,
which adds its own in order, and so on; the last rank sends the total on round
the ring (to rank 0, which passes it to rank 1, ...) and every rank makes the
same update. The gradient travels in pieces of about 256 KiB, so that the hops
overlap. Losses, correct predictions and BatchNorm's
batch statistics travel with the gradients as each chunk's record, and every
rank adds and folds them in chunk order, as one process does. MPI's Allreduce
is never used: its order of additions varies.

BatchNorm normalises each chunk with the chunk's own statistics (as with
batch_chunks=C in one process), and its running statistics are updated chunk
after chunk, in order, on every rank.

Callbacks, validation and the progress bar run on rank 0; the others are
silent. What callbacks change (model.stop_training, the optimizer's
hyperparameters, and at the end the weights, e.g. EarlyStopping's
restore_best_weights) is broadcast, so every rank stops together and ends
alike; model.history is the same on every rank.

Without mpi4py and outside mpirun everything runs as one rank (P = 1), with no
MPI at all.
"""

import math
import os
import sys
import time

import numpy as np

from . import _engine, ops
from . import callbacks as callbacks_module
from ._common import positive_int
from ._threads import get_num_threads
from ._validation import check_data, check_weights, check_X, check_y, split_validation
from .model import PREDICT_CHUNK, History, _as_list

__all__ = ["init", "rank", "size", "barrier", "fit", "evaluate", "predict", "stats",
           "worker_threads"]

# environment variables that say the process was started by an MPI launcher
_LAUNCHER_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS")

_world = None  # MPI.COMM_WORLD, or False once init() found no MPI and no launcher


def init():
    """Start MPI (through mpi4py) if it is not running yet. Without mpi4py,
    outside mpirun: one rank and no MPI. Under mpirun without mpi4py (or
    without a working MPI library): RuntimeError saying what to install."""
    global _world
    if _world is not None:
        return
    try:
        from mpi4py import MPI
    except ImportError as exc:  # also mpi4py without a loadable MPI library
        if any(os.environ.get(v) for v in _LAUNCHER_VARS):
            raise RuntimeError(
                "fusenn.distributed runs under an MPI launcher but cannot import mpi4py "
                f"({exc}); install MPI (Debian: apt-get install openmpi-bin libopenmpi-dev) "
                "and mpi4py (pip install 'fusenn[mpi]')") from exc
        _world = False
        return
    _world = MPI.COMM_WORLD


def _comm():
    """COMM_WORLD, or None for one rank without MPI."""
    init()
    return _world or None


def rank():
    """This process's rank, 0 .. size() - 1."""
    comm = _comm()
    return comm.Get_rank() if comm is not None else 0


def size():
    """The number of ranks (1 without MPI)."""
    comm = _comm()
    return comm.Get_size() if comm is not None else 1


def barrier():
    """Wait until every rank got here."""
    comm = _comm()
    if comm is not None:
        comm.Barrier()


# ---- every rank agrees ---------------------------------------------------------------

class _Group:
    """The ranks of COMM_WORLD as the training loop uses them; one rank needs no MPI."""

    def __init__(self):
        comm = _comm()
        self.rank = comm.Get_rank() if comm is not None else 0
        self.size = comm.Get_size() if comm is not None else 1
        self.comm = comm if self.size > 1 else None

    def allgather(self, value):
        return self.comm.allgather(value) if self.comm is not None else [value]

    def from_root(self, run):
        """run() on rank 0 and its (small) result on every rank; if it raised
        there, every other rank raises RuntimeError naming the error."""
        result, error = None, None
        if self.rank == 0:
            try:
                result = run()
            except Exception as exc:  # noqa: BLE001 - passed on to every rank
                error = exc
        if self.comm is not None:
            message = None if error is None else f"{type(error).__name__}: {error}"
            result, message = self.comm.bcast((result, message), root=0)
            if error is None and message is not None:
                raise RuntimeError(f"rank 0 failed: {message}")
        if error is not None:
            raise error
        return result

    def agree(self, check):
        """check() on every rank; if it raised anywhere, every rank raises (the
        rank that failed its own error, the others RuntimeError naming it)."""
        try:
            check()
            error = None
        except Exception as exc:  # noqa: BLE001 - passed on to every rank
            error = exc
        message = None if error is None else f"{type(error).__name__}: {error}"
        failed = [(r, m) for r, m in enumerate(self.allgather(message)) if m is not None]
        if error is not None:
            raise error
        if failed:
            raise RuntimeError(f"rank {failed[0][0]} failed: {failed[0][1]}")


def _rows_of(r, P, n):
    """Rows [lo, hi) of n that rank r of P takes (as fusenn_chunk_start cuts)."""
    return r * n // P, (r + 1) * n // P


def _check_values(model, X, y, group, name_x="X", name_y="y"):
    """The values of rank r's share of the rows of (X, y) checked as fit checks
    them all: each row is read by one rank only; every rank raises if one fails."""
    lo, hi = _rows_of(group.rank, group.size, len(X))
    group.agree(lambda: hi > lo and (check_X(model, X[lo:hi], name_x),
                                     check_y(model, y[lo:hi], hi - lo, name_y)))


def _scored_rows(model, X, group):
    """model._scored_rows(X), each rank counting its share of the rows."""
    if not model._masked_output():
        return len(X) * model._rows_per_sample()
    lo, hi = _rows_of(group.rank, group.size, len(X))
    return sum(group.allgather(int(np.count_nonzero(X[lo:hi])) if hi > lo else 0))


def _sync_from_root(model, group):
    """Make every rank's model rank 0's: weights, optimizer state, the seed stream
    of fit's shuffles and Dropout's masks (models built without a seed differ)."""
    if group.size == 1:
        return
    state = group.comm.bcast(model.__getstate__() if group.rank == 0 else None, root=0)
    if group.rank != 0:
        model.__setstate__(state)


def _hyperparameters(optimizer):
    return {k: v for k, v in optimizer.config().items() if k != "name"}


def _set_hyperparameters(optimizer, settings):
    for key, value in settings.items():
        if getattr(optimizer, key) != value:
            setattr(optimizer, key, value)


def _engine_plan(model, what):
    plan = _engine.plan_for(model)
    if plan is None:
        raise ValueError(f"fusenn.distributed.{what} needs the C engine: backend='c' with "
                         f"fusenn's own layers, loss and optimizer (this model runs op by op)")
    return plan


# ---- fit -------------------------------------------------------------------------------

class _Timings:
    """Seconds this rank spent per part of its steps in the last fit (stats())."""

    def __init__(self):
        self.steps = 0
        self.compute = self.communicate = self.add = self.update = 0.0
        self.bytes_sent = 0

    def as_dict(self):
        return {"steps": self.steps, "compute": self.compute, "communicate": self.communicate,
                "add": self.add, "update": self.update, "bytes_sent": self.bytes_sent}


_last_timings = _Timings()


def stats():
    """This rank's time in the steps of its last fit: {"steps", "compute" (chunk
    gradients), "communicate" (receiving, sending and broadcasting, waiting for
    the other ranks included), "add" (adding received and own gradients),
    "update" (statistics, loss and the optimizer step), "bytes_sent"}."""
    return _last_timings.as_dict()


# The gradient travels in pieces of about this size, so that a rank adds and passes
# on one piece while the next arrives, and the total starts back before all of it
# is summed: the chain's hops overlap.
SEGMENT_BYTES = 256 << 10


class _Stepper:
    """One rank's part of every training step on a plan."""

    def __init__(self, model, plan, group, chunks, timings):
        self.plan, self.comm, self.chunks, self.timings = plan, group.comm, chunks, timings
        P, r = group.size, group.rank
        self.rank, self.size = r, P
        self.c0, self.c1 = r * chunks // P, (r + 1) * chunks // P
        self.len = plan.record_len
        self.records = np.zeros(chunks * self.len)
        self.own = self.records[self.c0 * self.len:self.c1 * self.len]
        # a rank after the first holds its chunks' gradients apart until the sum of
        # the chunks before them arrives
        self.buffers = ([model._arena.zeros()[0] for _ in range(self.c1 - self.c0)]
                        if r > 0 else None)
        g = plan.grads
        m = max(1, min(64, -(-g.nbytes // SEGMENT_BYTES)))
        cuts = [i * g.size // m for i in range(m + 1)]
        self.pieces = [slice(a, b) for a, b in zip(cuts, cuts[1:])]

    def step(self, X, labels, T, sw, batch, nthreads):
        """Train on the samples X[batch]: returns (code, loss, correct)."""
        plan, C, t = self.plan, self.chunks, self.timings
        n = len(batch)
        first, last = self.c0 * n // C, self.c1 * n // C  # this rank's rows of the batch
        started = time.perf_counter()
        # the sum starts here when every chunk before this rank's is empty
        plan.chunk_gradients(X, labels, T, sw, batch, C, self.c0, self.c1,
                             self.buffers if first > 0 else None, self.own, nthreads)
        computed = time.perf_counter()
        t.compute += computed - started
        if self.comm is not None:
            added = self.combine(n, first, last)
            t.add += added
            t.communicate += time.perf_counter() - computed - added
        updating = time.perf_counter()
        result = plan.apply_step(n, C, self.records, nthreads)
        t.update += time.perf_counter() - updating
        t.steps += 1
        return result

    def combine(self, n, first, last):
        """Every chunk's record into self.records and the batch's gradient, summed in
        chunk order, into every rank's gradient arena: the partial sum passes from
        rank to rank, each adding its own chunks' in order, piece by piece; the last
        rank sends the total round (to rank 0, then 1, 2, ...). Returns the seconds
        spent adding."""
        from mpi4py import MPI
        comm, r, P, C, t = self.comm, self.rank, self.size, self.chunks, self.timings
        g, m = self.plan.grads, len(self.pieces)
        parts = [g[s] for s in self.pieces]
        records = comm.Iallgather(MPI.IN_PLACE, self.records)  # own chunks: in place
        mine = [self.buffers[i] for i, c in enumerate(range(self.c0, self.c1))
                if c * n // C < (c + 1) * n // C] if first > 0 else []  # own nonempty chunks
        forward = r + 1 < P and last > 0  # rank r + 1 adds to this rank's sum
        sends, added = [], 0.0
        if first > 0:  # the sum of the chunks before this rank's comes from rank r - 1
            incoming = [comm.Irecv(p, source=r - 1, tag=j) for j, p in enumerate(parts)]
        for j, (s, p) in enumerate(zip(self.pieces, parts)):
            if first > 0:
                incoming[j].Wait()
                t0 = time.perf_counter()
                for h in mine:  # IEEE additions: the bits of the engine's g += h
                    np.add(p, h[s], out=p)
                added += time.perf_counter() - t0
            if forward:
                sends.append(comm.Isend(p, dest=r + 1, tag=j))
            elif r == P - 1:
                sends.append(comm.Isend(p, dest=0, tag=m + j))
        if r != P - 1:  # the total comes round from rank P - 1
            source, onward = (P - 1 if r == 0 else r - 1), (r + 1 if r + 1 < P - 1 else None)
            totals = []
            for j, p in enumerate(parts):
                if forward:
                    sends[j].Wait()  # the piece may be received into again
                totals.append(comm.Irecv(p, source=source, tag=m + j))
            for j, p in enumerate(parts):
                totals[j].Wait()
                if onward is not None:
                    sends.append(comm.Isend(p, dest=onward, tag=m + j))
        MPI.Request.Waitall(sends)
        records.Wait()
        t.bytes_sent += g.nbytes * ((forward or r == P - 1) + (r + 1 < P - 1)) + \
            self.own.nbytes * (P - 1)
        return added


def fit(model, X, y, epochs=1, batch_size=32, shuffle=True, validation_data=None,
        verbose="auto", callbacks=None, validation_split=0.0, class_weight=None,
        sample_weight=None, initial_epoch=0, batch_chunks=None):
    """model.fit over the ranks of MPI's COMM_WORLD: call it on every rank with the
    same arguments. Every rank ends with the weights of model.fit(X, y,
    batch_chunks=C, ...) in one process, to the bit; C = batch_chunks, by default
    the number of ranks, must be a multiple of it. Returns the History (the same
    on every rank). X may be a memory-mapped array (np.load(path, mmap_mode="r"),
    of the model's dtype so that nothing is copied): each rank reads the rows of
    its chunks. Callbacks, validation and the progress bar run on rank 0 only.
    The other arguments are model.fit's."""
    group = _Group()
    P = group.size
    chunks = P if batch_chunks is None else positive_int(batch_chunks, "batch_chunks")
    if chunks % P:
        raise ValueError(f"batch_chunks={chunks} must be a multiple of the number of ranks "
                         f"({P}): each rank takes batch_chunks / {P} chunks of every batch")
    X, y = check_data(model, X, y, values=False)
    epochs = positive_int(epochs, "epochs", allow_zero=True)
    initial_epoch = positive_int(initial_epoch, "initial_epoch", allow_zero=True)
    batch_size = positive_int(batch_size, "batch_size")
    settings = (X.shape, epochs, initial_epoch, batch_size, bool(shuffle), chunks,
                validation_split)
    if any(other != settings for other in group.allgather(settings)):
        raise ValueError("the ranks called fusenn.distributed.fit with different data shapes "
                         "or settings (epochs, batch_size, shuffle, batch_chunks, "
                         "validation_split); every rank must pass the same")
    _check_values(model, X, y, group)
    sw = check_weights(model, y, X.shape[0], sample_weight, class_weight)
    split_off = validation_data is None and bool(validation_split)
    if split_off:
        X, y, sw, validation_data = split_validation(X, y, sw, validation_split)
    elif validation_data is not None:
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
            raise ValueError("validation_data must be a pair (X_val, y_val)")
    batch_size = min(batch_size, X.shape[0])
    callback_list = None

    def on_root():  # validation and callbacks are rank 0's
        nonlocal validation_data, callback_list
        if group.rank != 0:
            validation_data = None
            return
        if validation_data is not None and not split_off:
            validation_data = check_data(model, *validation_data, name_x="validation X",
                                         name_y="validation y")
        callback_list = callbacks_module.CallbackList(
            [*([] if callbacks is None else _as_list(callbacks, "callbacks")),
             callbacks_module.ProgressBar(epochs, verbose)], model)

    group.agree(on_root)
    _sync_from_root(model, group)
    plan = _engine_plan(model, "fit")
    n = X.shape[0]
    rows = _scored_rows(model, X, group)
    Xs, (labels, T) = _engine.samples(X), _engine.targets(model, y)
    order = np.arange(n, dtype=np.int64)
    history = model.history = History()
    model.stop_training = False
    stepper = None
    global _last_timings
    timings = _last_timings = _Timings()
    nthreads = get_num_threads()
    with model._exclusive():
        group.from_root(callback_list.on_train_begin if callback_list else None)
        for epoch in range(initial_epoch, epochs):

            def begin_epoch():
                callback_list.on_epoch_begin(epoch)
                return _hyperparameters(model.optimizer)

            _set_hyperparameters(model.optimizer, group.from_root(begin_epoch))
            start = time.perf_counter()
            if shuffle:
                ops.shuffle(order, int(model._rng.integers(0, 2**63)))
            plan = model._engine()  # hands over the current learning rate
            if stepper is None or stepper.plan is not plan:
                stepper = _Stepper(model, plan, group, chunks, timings)
            loss_sum, correct = 0.0, 0.0
            for first in range(0, n, batch_size):
                code, loss, hits = stepper.step(Xs, labels, T, sw, order[first:first + batch_size],
                                                nthreads)
                if code != 0:
                    _engine.raise_for(model, plan, code, f"epoch {epoch + 1}", loss)
                loss_sum += loss * min(batch_size, n - first)
                correct += hits
            model.optimizer.__dict__["iterations"] = plan.steps
            elapsed = time.perf_counter() - start

            def end_epoch():
                logs = {"loss": loss_sum / n}
                if model.loss.has_accuracy:
                    logs["accuracy"] = model.loss.accuracy(correct, rows, model.output_dim)
                if validation_data is not None:
                    logs.update({f"val_{k}": v
                                 for k, v in model._evaluate(*validation_data).items()})
                logs["time"] = elapsed
                logs["lr"] = model.optimizer.lr
                callback_list.on_epoch_end(epoch, logs)
                return logs, model.stop_training, _hyperparameters(model.optimizer)

            logs, model.stop_training, settings = group.from_root(end_epoch)
            _set_hyperparameters(model.optimizer, settings)
            history.append(epoch, logs)
            if model.stop_training:
                break

        def end_training():
            callback_list.on_train_end()
            return model.get_weights() if P > 1 else None

        weights = group.from_root(end_training)
        if group.rank != 0:  # a callback may have restored others (EarlyStopping)
            for (_, mine), theirs in zip(model._weight_arrays(), weights):
                np.copyto(mine, theirs)
    return history


# ---- evaluate and predict ------------------------------------------------------------

def evaluate(model, X, y, batch_size=None, sample_weight=None):
    """model.evaluate with the rows split over the ranks (whole blocks of the
    PREDICT_CHUNK samples one process sums its loss over, added up in order):
    every rank returns the dict one process's evaluate returns, to the bit."""
    group = _Group()
    model._require_built()
    X, y = check_data(model, X, y, values=False)
    if batch_size is not None:
        positive_int(batch_size, "batch_size")  # accepted for Keras compatibility
    _check_values(model, X, y, group)
    sw = check_weights(model, y, X.shape[0], sample_weight, None)
    n = X.shape[0]
    blocks = -(-n // PREDICT_CHUNK)
    lo, hi = _rows_of(group.rank, group.size, blocks)
    Xs, (labels, T) = _engine.samples(X), _engine.targets(model, y)
    parts = []
    with model._exclusive():
        plan = _engine_plan(model, "evaluate")
        for b in range(lo, hi):
            s = slice(b * PREDICT_CHUNK, min(n, (b + 1) * PREDICT_CHUNK))
            code, loss_sum, correct = plan.evaluate(
                Xs[s], None if labels is None else labels[s.start * model._rows_per_sample():
                                                          s.stop * model._rows_per_sample()],
                None if T is None else T[s], None if sw is None else sw[s], get_num_threads())
            if code != 0:
                raise MemoryError("fusenn: out of memory in the training engine")
            parts.append((loss_sum, correct))
    loss_sum, correct = 0.0, 0.0
    for part in group.allgather(parts):
        for block_loss, block_correct in part:
            loss_sum += block_loss
            correct += block_correct
    if not math.isfinite(loss_sum):
        raise ValueError(f"X is too large for this network in {model.dtype}: the loss "
                         f"overflowed (or the weights are too large)")
    result = {"loss": loss_sum / n}
    if model.loss.has_accuracy:
        result["accuracy"] = model.loss.accuracy(correct, _scored_rows(model, X, group),
                                                 model.output_dim)
    return result


def predict(model, X):
    """model.predict with the rows split over the ranks and gathered: every rank
    returns all of them, the same bits as one process's predict."""
    group = _Group()
    model._require_built()
    X = check_X(model, X, values=False)
    n = X.shape[0]
    lo, hi = _rows_of(group.rank, group.size, n)
    mine = None

    def run():
        nonlocal mine
        mine = model.predict(X[lo:hi]) if hi > lo else None

    group.agree(run)
    out = np.empty((n, *model.output_shape), dtype=model.dtype)
    if group.comm is None:
        out[...] = mine
        return out
    size = out[0].size
    counts = [(b - a) * size for a, b in (_rows_of(r, group.size, n) for r in range(group.size))]
    displs = [r * n // group.size * size for r in range(group.size)]
    send = mine if mine is not None else out[:0]
    group.comm.Allgatherv(np.ascontiguousarray(send), [out, (counts, displs)])
    return out


# ---- hyperparameter searches: workers x threads <= cores ------------------------------

def worker_threads():
    """Kernel threads for a fit running in a joblib or dask worker, so that the
    workers' threads together do not exceed the cores; None outside workers
    (fusenn's own count). Worker processes need nothing: joblib's loky workers
    and dask's nanny-started ones get OMP_NUM_THREADS (cores // workers, 1),
    which fusenn's count follows. Threads of a dask worker in this process
    (Client(processes=False)) share the cores: cores // threads of the workers
    here. A joblib worker thread (backend "threading") cannot tell how many
    others run: one thread each, since n_jobs rarely exceeds the cores.
    fusenn.sklearn's estimators use this when n_threads is None."""
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    cores = get_num_threads()
    if "distributed" in sys.modules:  # dask only when it is in use
        from distributed import Worker, get_worker
        try:
            get_worker()
        except ValueError:  # not in a dask task
            pass
        else:
            threads = sum(w.state.nthreads for w in list(Worker._instances))
            return max(1, cores // max(threads, 1))
    if "joblib" in sys.modules:
        from joblib.parallel import get_active_backend
        if getattr(get_active_backend()[0], "nesting_level", 0) >= 1:  # in a worker
            return 1
    return None

