"""fusenn's own thread count, passed to every C kernel call.

OpenMP's thread-count setting belongs to the calling thread, so a library that
wants one setting for all its callers has to keep it itself. The default is
OMP_NUM_THREADS when set, else the CPUs this process may run on (affinity).
`threads(n)` overrides it for the current Python thread only.
"""

import contextlib
import os
import threading

__all__ = ["set_num_threads", "get_num_threads", "threads"]


def _default_num_threads():
    env = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


_global = _default_num_threads()
_local = threading.local()
# GNU libgomp hangs in a child forked after a parallel region ran in the
# parent; a forked child therefore runs every kernel on one thread.
_forked_child = False


def _after_fork_in_child():
    global _forked_child
    _forked_child = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


MAX_THREADS = 1024


def _check_count(n):
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"number of threads must be an int, got {type(n).__name__}")
    if not 1 <= n <= MAX_THREADS:
        raise ValueError(f"number of threads must be between 1 and {MAX_THREADS}, got {n}")
    return n


def set_num_threads(n):
    """Set the number of threads fusenn's kernels use (all Python threads)."""
    global _global
    _global = _check_count(n)


def get_num_threads():
    """The number of threads the next kernel call from this thread will use."""
    if _forked_child:
        return 1
    return getattr(_local, "override", None) or _global


@contextlib.contextmanager
def threads(n):
    """Run the block with `n` kernel threads in the current Python thread."""
    _check_count(n)
    previous = getattr(_local, "override", None)
    _local.override = n
    try:
        yield
    finally:
        _local.override = previous
