"""benchmarks/report.py: the README's performance tables come from it."""

import importlib.util
import json
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "report.py"
if not _PATH.is_file():  # the installed-package jobs copy tests/ alone, away from the checkout
    pytest.skip(f"{_PATH} is not here: runs from a checkout", allow_module_level=True)
_SPEC = importlib.util.spec_from_file_location("fusenn_bench_report", _PATH)
report = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(report)


def _run(c, numpy, torch=None):
    """One run's JSON: a gemm group with C and NumPy medians (and PyTorch's if given)."""
    benches = [{"group": "gemm-64-1t", "extra_info": {"backend": "c", "flop": 2 * 64**3},
                "stats": {"median": c}},
               {"group": "gemm-64-1t", "extra_info": {"backend": "numpy"},
                "stats": {"median": numpy}}]
    if torch is not None:
        benches.append({"group": "gemm-64-1t", "extra_info": {"backend": "torch"},
                        "stats": {"median": torch}})
    return {"benchmarks": benches}


def test_one_run_reports_the_quotient_of_medians(tmp_path, capsys):
    path = tmp_path / "a.json"
    path.write_text(json.dumps(_run(2e-6, 3e-6)))
    assert report.main([str(path)]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if "gemm-64-1t" in line)
    assert "| 2.00 µs | 3.00 µs | 1.50× |" in row


def test_several_runs_report_the_median_of_per_run_ratios_and_their_range(tmp_path, capsys):
    # Run 2 is slow for both sides (drift): its ratio still counts as 1.5, while the
    # quotient of the median times would be 3.5 / 2.5 = 1.4.
    runs = [_run(2e-6, 3e-6, torch=4e-6), _run(2.5e-6, 5e-6, torch=5e-6),
            _run(4e-6, 3.5e-6, torch=8e-6)]
    paths = []
    for i, run in enumerate(runs):
        paths.append(tmp_path / f"{i}.json")
        paths[-1].write_text(json.dumps(run))
    assert report.main([str(p) for p in paths] + ["--peak", "100"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| gemm-64-1t | 1 | 2.50"))
    assert "| 2.50 µs | 3.50 µs | 1.50× (0.88–2.00) |" in row
    assert "| 5.00 µs | 2.00× (2.00–2.00) |" in row  # PyTorch's column
    assert "Medians of 3 runs" in out


def test_a_run_without_known_backends_is_refused(tmp_path, capsys):
    path = tmp_path / "empty.json"
    path.write_text(json.dumps({"benchmarks": [{"group": "g", "stats": {"median": 1.0}}]}))
    assert report.main([str(path)]) == 1
    assert "no benchmarks with a known backend" in capsys.readouterr().err


@pytest.mark.parametrize("seconds, text", [(2.5e-6, "2.50 µs"), (0.0123, "12.3 ms"),
                                           (1.5, "1.50 s")])
def test_times_read_in_one_unit(seconds, text):
    assert report.fmt_time(seconds, report.unit_for(seconds)) == text
