"""How long GNU libgomp's idle threads busy-wait, set before the extension loads libgomp.

An idle libgomp thread spins GOMP_SPINCOUNT times (a `pause` and a load each)
before it sleeps: 300,000 by default, about 4 ms of a CPU after every parallel
region on the Intel Xeon here. On a machine with no spare core that CPU is
taken from whatever runs next, such as NumPy's BLAS threads: a loop alternating
NumPy's `A @ W` with a fusenn call made each 10-15x slower on 2 vCPUs. A short
spin keeps the helper awake between the regions of one call and across
back-to-back calls, and lets it sleep soon after.

libgomp reads its environment once, when it is loaded, so fusenn sets the count
in os.environ just around loading its extension and then removes it again:
child processes and other libraries see the environment as the user left it.
A user's own OMP_WAIT_POLICY or GOMP_SPINCOUNT wins (fusenn then sets nothing),
and the count cannot apply when libgomp was already loaded by another module.
"""

import contextlib
import os

# Spin iterations before an idle libgomp thread sleeps: 3000 is ~40 us here
# (13 ns per `pause` and load on this Intel Xeon; Zen 4's pause is shorter, so
# the same count spins for less time there). Chosen by measurement on 2 vCPUs,
# per-call medians against the default 300,000: back-to-back 2-thread calls
# within 3% (fusenn.matmul 128x784x256, train_on_batch 784-256-10 and
# 784-256-128-10 at batch 128, a 60,000-row epoch), while alternating with
# NumPy's `A @ W` took NumPy's call from ~15x its time alone to ~1.05x. A
# shorter spin (1000, or OMP_WAIT_POLICY=passive) costs back-to-back calls
# 30-60%: each region then wakes a sleeping helper.
SPIN_COUNT = 6000


@contextlib.contextmanager
def bounded_spin(environ=os.environ):
    """GOMP_SPINCOUNT=SPIN_COUNT in `environ` inside the block, unless the user set
    OMP_WAIT_POLICY or GOMP_SPINCOUNT; removed again on the way out."""
    if "OMP_WAIT_POLICY" in environ or "GOMP_SPINCOUNT" in environ:
        yield
        return
    environ["GOMP_SPINCOUNT"] = str(SPIN_COUNT)
    try:
        yield
    finally:
        environ.pop("GOMP_SPINCOUNT", None)
