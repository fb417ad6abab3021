#!/usr/bin/env python
"""Markdown summary of a pytest-benchmark JSON file from fusenn's benchmarks.

    pytest benchmarks/ --benchmark-only --benchmark-json=bench.json
    python benchmarks/report.py bench.json

One row per benchmark group: the C and NumPy medians (µs, ms or s, chosen per
row) and the speed-up NumPy median / C median (> 1 means the C kernel is
faster). The header lists fusenn's thread count, GEMM ISA and OpenMP status and
the NumPy/BLAS versions when the run recorded them (benchmarks/conftest.py does).
"""

import argparse
import json
import sys

BACKEND_NAMES = ("c", "numpy")


def backend_of(bench):
    """'c' or 'numpy' for one benchmark entry (extra_info, params, or the id prefix)."""
    for source in (bench.get("extra_info") or {}, bench.get("params") or {}):
        if source.get("backend") in BACKEND_NAMES:
            return source["backend"]
    prefix = (bench.get("param") or "").split("-", 1)[0]
    return prefix if prefix in BACKEND_NAMES else None


def fmt_time(seconds, unit):
    scale, name = unit
    value = seconds / scale
    digits = 0 if value >= 100 else 1 if value >= 10 else 2
    return f"{value:.{digits}f} {name}"


def unit_for(*seconds):
    """One unit per row, from the larger of its times, so both read in the same unit."""
    largest = max(s for s in seconds if s is not None)
    if largest < 1e-3:
        return (1e-6, "µs")
    if largest < 1.0:
        return (1e-3, "ms")
    return (1.0, "s")


def collect(benchmarks):
    """{group: {backend: median seconds}}, groups in the order they ran."""
    rows = {}
    for bench in benchmarks:
        backend = backend_of(bench)
        if backend is None:
            continue
        group = bench.get("group") or bench.get("name")
        rows.setdefault(group, {})[backend] = bench["stats"]["median"]
    return rows


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
        parts.append(f"threads: {info['num_threads']}")
    if info.get("gemm_isa"):
        parts.append(f"gemm_isa: {info['gemm_isa']}")
    if "has_openmp" in info:
        parts.append(f"OpenMP: {'yes' if info['has_openmp'] else 'no'}")
    if info.get("numpy_version"):
        blas = f" ({info['numpy_blas']})" if info.get("numpy_blas") else ""
        parts.append(f"NumPy {info['numpy_version']}{blas}")
    if parts:
        lines.append("fusenn — " + ", ".join(parts))
    cpu = (machine.get("cpu") or {}).get("brand_raw")
    where = ", ".join(x for x in (cpu, machine.get("python_implementation", "") + " "
                                  + machine.get("python_version", ""), data.get("datetime")) if x and x.strip())
    if where:
        lines.append(where)
    return lines


def table(rows):
    out = ["| group | C median | NumPy median | speed-up (NumPy/C) |",
           "|---|---:|---:|---:|"]
    for group, t in rows.items():
        c, n = t.get("c"), t.get("numpy")
        unit = unit_for(c, n)
        speedup = f"{n / c:.2f}×" if c and n else "—"
        out.append(f"| {group} | {fmt_time(c, unit) if c else '—'} | "
                   f"{fmt_time(n, unit) if n else '—'} | {speedup} |")
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("json_file", help="file written by pytest --benchmark-json=FILE")
    args = parser.parse_args(argv)
    with open(args.json_file, encoding="utf-8") as f:
        data = json.load(f)
    rows = collect(data.get("benchmarks", []))
    if not rows:
        print(f"{args.json_file}: no benchmarks with a 'c' or 'numpy' backend "
              f"(was the run made with --benchmark-disable?)", file=sys.stderr)
        return 1
    lines = header(data)
    print("\n".join(lines + ([""] if lines else []) + table(rows)))
    print("\nspeed-up > 1: the C kernel is faster. Medians; each group's pair ran back to back.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
