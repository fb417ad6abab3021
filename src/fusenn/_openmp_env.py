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

# Spin iterations before an idle libgomp thread sleeps: 6000 is ~80 us here
# (13 ns per `pause` and load on this Intel Xeon; Zen 4's pause is shorter, so
# the same count spins for less time there). Chosen by measurement on 2 vCPUs
# (docs/guide/performance.md, "Next to NumPy"): it must outlast the serial gaps
# between one training step's regions (~50 us), or each region wakes a
# sleeping helper (3000 cost back-to-back steps up to 1.4x; 1000 or
# OMP_WAIT_POLICY=passive 30-60%), and end soon after a call, as NumPy's next
# call waits for that CPU (10,000 made it 1.2-1.4x slower alternating).
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
