#!/usr/bin/env python
"""The float32 FMA peak of one core, in GFLOP/s: the ceiling GEMM is measured against.

    python benchmarks/fma_peak.py            # prints e.g. "avx512: 229.8 GFLOP/s per core"
    python benchmarks/report.py bench.json --peak 229.8

Compiles a small C probe with the system C compiler (cc, or $CC): 16 independent
chains of vector FMAs (enough to cover the FMA latency on two FMA ports), with
the widest vectors the CPU runs (AVX-512, else AVX2+FMA), and times it on one
thread. The best of several runs is reported, as the machine's speed drifts.
"""

import os
import subprocess
import sys
import tempfile

PROBE = r"""
#include <stdio.h>
#include <time.h>
typedef float vec __attribute__((vector_size(VBYTES)));
int main(void)
{
    enum { CHAINS = 16, LANES = VBYTES / 4 };
    vec acc[CHAINS], x, y;
    for (int i = 0; i < LANES; i++) { x[i] = 0.999999f; y[i] = 1e-7f; }
    for (int c = 0; c < CHAINS; c++) acc[c] = x * (float)c;
    const long iters = 50000000L;
    double best = 0;
    for (int rep = 0; rep < 5; rep++) {
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        for (long i = 0; i < iters; i++)
#pragma GCC unroll 16
            for (int c = 0; c < CHAINS; c++)
                acc[c] = acc[c] * x + y; /* one FMA: 2 flops per lane */
        clock_gettime(CLOCK_MONOTONIC, &t1);
        double s = (t1.tv_sec - t0.tv_sec) + 1e-9 * (t1.tv_nsec - t0.tv_nsec);
        double gflops = 2.0 * LANES * CHAINS * iters / s / 1e9;
        best = gflops > best ? gflops : best;
    }
    float sink = 0;
    for (int c = 0; c < CHAINS; c++) sink += acc[c][0];
    printf("%.1f %g\n", best, sink);
    return 0;
}
"""

ISAS = [("avx512", "-mavx512f -mfma", 64), ("avx2", "-mavx2 -mfma", 32)]


def cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def measure():
    """(isa, float32 GFLOP/s of one core) of the widest probe this CPU runs, or
    (None, None) without AVX2/AVX-512 or a C compiler."""
    flags = cpu_flags()
    cc = os.environ.get("CC", "cc")
    for name, cflags, vbytes in ISAS:
        if name == "avx512" and "avx512f" not in flags or name == "avx2" and "avx2" not in flags:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            src, exe = os.path.join(tmp, "probe.c"), os.path.join(tmp, "probe")
            with open(src, "w") as f:
                f.write(PROBE)
            try:
                subprocess.run([cc, "-O3", *cflags.split(), f"-DVBYTES={vbytes}", src, "-o", exe],
                               check=True, capture_output=True)
            except (OSError, subprocess.CalledProcessError):
                return None, None
            return name, float(subprocess.run([exe], check=True, capture_output=True,
                                              text=True).stdout.split()[0])
    return None, None


def cpu_model():
    """The CPU's model name, as /proc/cpuinfo gives it (None elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def main():
    name, gflops = measure()
    if name is None:
        print("no AVX2/AVX-512 on this CPU (or no C compiler): no probe for it", file=sys.stderr)
        return 1
    print(f"{name}: {gflops:.1f} GFLOP/s per core (float32)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
