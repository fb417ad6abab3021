"""fusenn's own thread count, passed to every C kernel call.

OpenMP's thread-count setting belongs to the calling thread, so a library that
wants one setting for all its callers has to keep it itself. The count used by
a call is, in order of precedence:

1. `threads(n)` around the call (this Python thread only);
2. `set_num_threads(n)` (every Python thread);
3. otherwise OpenMP's own count in the calling thread: OMP_NUM_THREADS, else
   the CPUs this process may run on (affinity). `threadpoolctl.threadpool_limits`
   sets this one (through omp_set_num_threads), so it limits fusenn as it
   limits scikit-learn's OpenMP code. Without OMP_NUM_THREADS it is also capped
   by a cgroup CPU quota (containers: `docker --cpus=2` on a 64-core host).
"""

import contextlib
import os

from . import _kernels

__all__ = ["set_num_threads", "get_num_threads", "threads"]

MAX_THREADS = 1024


def _affinity_threads():
    """The default without OpenMP (where it only matters for reporting)."""
    env = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _cgroup_cpus():
    """CPUs allowed by a cgroup CPU quota (v2 cpu.max, or v1 cfs quota), or None."""
    import math
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            return max(1, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    try:
        with open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") as f:
            quota = int(f.read())
        with open("/sys/fs/cgroup/cpu/cpu.cfs_period_us") as f:
            period = int(f.read())
        if quota > 0 and period > 0:
            return max(1, math.ceil(quota / period))
    except (OSError, ValueError):
        pass
    return None


# OMP_NUM_THREADS is an explicit request; otherwise a CPU quota caps the default
_CGROUP_CPUS = None if os.environ.get("OMP_NUM_THREADS") else _cgroup_cpus()
_DEFAULT_CAP = min(_CGROUP_CPUS or MAX_THREADS, MAX_THREADS)

# The setting itself lives in C (csrc/threads.c), where a kernel call reads it
# in nanoseconds: the global count, this thread's threads(n) override, the
# forked-child flag, and the default's cap.
_kernels.configure_default_threads(_DEFAULT_CAP, _affinity_threads())

# GNU libgomp hangs in a child forked after a parallel region ran in the
# parent; a forked child therefore runs every kernel on one thread.
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_kernels.mark_forked_child)


def _check_count(n):
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"number of threads must be an int, got {type(n).__name__}")
    if not 1 <= n <= MAX_THREADS:
        raise ValueError(f"number of threads must be between 1 and {MAX_THREADS}, got {n}")
    return n


def set_num_threads(n):
    """Set the number of threads fusenn's kernels use, in every Python thread.

    `threads` wins over it within its block.

    Parameters
    ----------
    n : int or None
        1 to 1024; None returns to the default (OpenMP's count in each calling
        thread: ``OMP_NUM_THREADS``, else the CPUs the process may use).
    """
    _kernels.set_global_threads(0 if n is None else _check_count(n))


# The number of threads the next kernel call from this thread will use (a C
# function: every kernel call from Python reads it).
get_num_threads = _kernels.num_threads


@contextlib.contextmanager
def threads(n):
    """Run the block with `n` kernel threads in the current Python thread.

    A context manager; it wins over `set_num_threads`, and other Python
    threads keep their own count.

    Parameters
    ----------
    n : int
        1 to 1024.

    Examples
    --------
    >>> with fusenn.threads(1):
    ...     model.fit(X, y)
    """
    _check_count(n)
    previous = _kernels.swap_thread_override(n)
    try:
        yield
    finally:
        _kernels.swap_thread_override(previous)
