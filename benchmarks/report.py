#!/usr/bin/env python
"""Markdown summary of pytest-benchmark JSON files from fusenn's benchmarks.

    pytest benchmarks/ --benchmark-only --benchmark-json=bench.json
    python benchmarks/report.py bench.json
    python benchmarks/report.py run1.json run2.json run3.json   # several runs

One row per benchmark group: the thread count the group ran with, the C and
NumPy medians (µs, ms or s, chosen per row) and the speed-up NumPy median / C
median (> 1 means the C kernel is faster); when the file holds PyTorch or
scikit-learn results (the train_step and epoch groups), a median and a
<framework> / C ratio column for each. The header lists fusenn's default thread
count, GEMM ISA and OpenMP status and the NumPy/BLAS versions when the run
recorded them (benchmarks/conftest.py does).

Given several runs of the same benchmarks, each ratio is the median over the
runs of that run's own ratio (both sides timed in the same run, minutes apart
at most), shown with its range across the runs; the times are the median of
the runs' medians. This machine's speed drifts by up to 1.7x, so one run's
single rows move by 10-30%; the median of per-run ratios moves much less.
"""

import argparse
import json
import re
import statistics
import sys

BACKEND_NAMES = ("c", "numpy", "torch", "sklearn", "onnxruntime")
OPTIONAL_BACKENDS = {"torch": "PyTorch", "sklearn": "sklearn",
                     "onnxruntime": "onnxruntime"}  # columns shown when present


def backend_of(bench):
    """'c' or 'numpy' for one benchmark entry (extra_info, params, or the id prefix)."""
    for source in (bench.get("extra_info") or {}, bench.get("params") or {}):
        if source.get("backend") in BACKEND_NAMES:
            return source["backend"]
    prefix = (bench.get("param") or "").split("-", 1)[0]
    return prefix if prefix in BACKEND_NAMES else None


def threads_of(group, bench):
    """A group's thread count: its name's "-<n>t" suffix, else the run's extra_info."""
    match = re.search(r"-(\d+)t$", group or "")
    if match:
        return int(match.group(1))
    return (bench.get("extra_info") or {}).get("num_threads")


def fmt_time(seconds, unit):
    scale, name = unit
    value = seconds / scale
    digits = 0 if value >= 100 else 1 if value >= 10 else 2
    return f"{value:.{digits}f} {name}"


def unit_for(*seconds):
    """One unit per row, from the larger of its C and NumPy times, so they read in the same unit."""
    largest = max(s for s in seconds if s is not None)
    if largest < 1e-3:
        return (1e-6, "µs")
    if largest < 1.0:
        return (1e-3, "ms")
    return (1.0, "s")


def collect(benchmarks):
    """({group: {backend: median seconds}}, {group: thread count}, {group: (flop, dtype)}),
    groups in the order they ran; the last only for groups that record their flop count."""
    rows, threads, flops = {}, {}, {}
    for bench in benchmarks:
        backend = backend_of(bench)
        if backend is None:
            continue
        group = bench.get("group") or bench.get("name")
        rows.setdefault(group, {})[backend] = bench["stats"]["median"]
        threads.setdefault(group, threads_of(group, bench))
        extra = bench.get("extra_info") or {}
        if extra.get("flop"):
            flops[group] = (extra["flop"], extra.get("dtype", "float32"))
    return rows, threads, flops


def combine(runs):
    """One table from several runs' ({group: {backend: median}}, ...): per group and
    backend the median of the runs' medians, and per group and other backend the
    list of that run's other / C ratios. Groups in the order the first run has them."""
    rows, ratios = {}, {}
    for run in runs:
        for group, t in run.items():
            rows.setdefault(group, {})
            for backend, seconds in t.items():
                rows[group].setdefault(backend, []).append(seconds)
                if backend != "c" and t.get("c"):
                    ratios.setdefault(group, {}).setdefault(backend, []).append(seconds / t["c"])
    medians = {g: {b: statistics.median(v) for b, v in t.items()} for g, t in rows.items()}
    return medians, ratios


def gflops_table(rows, threads, flops, peak):
    """GFLOP/s of C and NumPy for the groups with a flop count, and C's share of the
    peak: `peak` GFLOP/s per core for float32 (half that for float64) times threads."""
    out = ["| group | threads | C GFLOP/s | NumPy GFLOP/s | C, % of peak | NumPy, % of peak |",
           "|---|---:|---:|---:|---:|---:|"]
    for group, (flop, dtype) in flops.items():
        t, n = rows[group], threads.get(group) or 1
        top = peak * n * (0.5 if dtype == "float64" else 1.0)
        rate = {b: flop / t[b] / 1e9 for b in ("c", "numpy") if t.get(b)}
        cells = [group, str(n)] + [f"{rate[b]:.1f}" if b in rate else "—" for b in ("c", "numpy")]
        cells += [f"{100 * rate[b] / top:.0f}%" if b in rate else "—" for b in ("c", "numpy")]
        out.append("| " + " | ".join(cells) + " |")
    return out


def header(data):
    machine = data.get("machine_info") or {}
    info = machine.get("fusenn") or {}
    if not info:  # fall back on a benchmark's extra_info
        for bench in data.get("benchmarks", []):
            extra = bench.get("extra_info") or {}
            if "num_threads" in extra:
                info = {"num_threads": extra["num_threads"], "gemm_isa": extra.get("gemm_isa")}
                break
    lines = []
    parts = []
    if "num_threads" in info:
        parts.append(f"default threads: {info['num_threads']}")
    if info.get("gemm_isa"):
        parts.append(f"gemm_isa: {info['gemm_isa']}")
    if "has_openmp" in info:
        parts.append(f"OpenMP: {'yes' if info['has_openmp'] else 'no'}")
    if info.get("numpy_version"):
        blas = f" ({info['numpy_blas']})" if info.get("numpy_blas") else ""
        parts.append(f"NumPy {info['numpy_version']}{blas}")
    if parts:
        lines.append("fusenn — " + ", ".join(parts))
    cpu = info.get("cpu_model") or (machine.get("cpu") or {}).get("brand_raw")
    where = ", ".join(x for x in (cpu, machine.get("python_implementation", "") + " "
                                  + machine.get("python_version", ""), data.get("datetime")) if x and x.strip())
    if where:
        lines.append(where)
    return lines


def table(rows, threads=None, ratios=None):
    """ratios: {group: {backend: [other / C per run]}} from several runs (combine), shown
    as the median and its range; without it a ratio is the two medians' quotient."""
    threads, ratios = threads or {}, ratios or {}
    extra = [b for b in OPTIONAL_BACKENDS if any(b in t for t in rows.values())]
    head = "| group | threads | C median | NumPy median | speed-up (NumPy/C) |"
    rule = "|---|---:|---:|---:|---:|"
    for b in extra:
        head += f" {OPTIONAL_BACKENDS[b]} median | {OPTIONAL_BACKENDS[b]}/C |"
        rule += "---:|---:|"
    out = [head, rule]

    def ratio(group, backend, other, c):
        per_run = ratios.get(group, {}).get(backend)
        if per_run and len(per_run) > 1:
            return (f"{statistics.median(per_run):.2f}× "
                    f"({min(per_run):.2f}–{max(per_run):.2f})")
        return f"{other / c:.2f}×" if c and other else "—"

    for group, t in rows.items():
        c = t.get("c")
        pair = [t[b] for b in ("c", "numpy") if t.get(b)]  # the unit follows the C/NumPy pair
        unit = unit_for(*(pair or t.values()))
        cells = [group, str(threads.get(group) or "—")]
        cells += [fmt_time(t[b], unit) if t.get(b) else "—" for b in ("c", "numpy")]
        cells.append(ratio(group, "numpy", t.get("numpy"), c))
        for b in extra:
            cells += [fmt_time(t[b], unit) if t.get(b) else "—", ratio(group, b, t.get(b), c)]
        out.append("| " + " | ".join(cells) + " |")
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("json_files", nargs="+", metavar="json_file",
                        help="file written by pytest --benchmark-json=FILE (several: one per run)")
    parser.add_argument("--peak", type=float, default=None, metavar="GFLOPS",
                        help="float32 FMA peak of one core in GFLOP/s (default: the median of "
                             "the runs' own probes, which conftest.py records); adds a GFLOP/s "
                             "table with the percent of peak")
    args = parser.parse_args(argv)
    runs, threads, flops, peaks = [], {}, {}, []
    for path in args.json_files:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        probe = (data.get("machine_info", {}).get("fusenn", {}).get("fma_peak") or {})
        if probe.get("gflops_per_core_f32"):
            peaks.append(probe["gflops_per_core_f32"])
        rows, run_threads, run_flops = collect(data.get("benchmarks", []))
        if not rows:
            print(f"{path}: no benchmarks with a known backend ({', '.join(BACKEND_NAMES)}) "
                  f"(was the run made with --benchmark-disable?)", file=sys.stderr)
            return 1
        runs.append(rows)
        threads = {**run_threads, **threads}
        flops = {**run_flops, **flops}
        if len(runs) == 1:
            lines = header(data)
    rows, ratios = combine(runs)
    peak = args.peak or (statistics.median(peaks) if peaks else None)
    print("\n".join(lines + ([""] if lines else []) + table(rows, threads, ratios)))
    if len(runs) > 1:
        print(f"\nMedians of {len(runs)} runs. Ratios are <other> median / C median within each "
              f"run, then the median over the runs (range in brackets): > 1 means fusenn's C "
              f"backend is faster. Each group's variants ran back to back.")
    else:
        print("\nRatios are <other> median / C median: > 1 means fusenn's C backend is faster. "
              "Medians; each group's variants ran back to back.")
    if peak and flops:
        source = "given" if args.peak else f"the median of {len(peaks)} runs' probes"
        print(f"\nGFLOP/s from the medians; peak = {peak:.1f} GFLOP/s per core in float32 "
              f"({source}; half in float64) x threads.\n")
        print("\n".join(gflops_table(rows, threads, flops, peak)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
