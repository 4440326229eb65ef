"""`benchmarks.gridbench`: the table cell every benchmark prints, and the one `main` of the grid benchmarks —
flags, launch into its own store, runs read back, the report or the no-runs RESULT line — on a real tiny grid."""
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from benchmarks import gridbench

ROOT = Path(__file__).resolve().parents[1]
GRID = """\
name: tiny_bench
experiment: tiny_bench
base:
  scenario: {name: split_digits, n_experiences: 2}
  model: {name: mlp, hidden: [16]}
  strategy: {name: naive}
  train: {epochs: 1, lr: 0.05}
grid:
  strategy.name: [naive, replay]
seeds: [0, 1]
"""


@pytest.mark.parametrize(("values", "digits", "options", "expected"), [
    ([], 3, {}, "—"),
    ([math.nan, math.nan], 3, {}, "—"),                      # runs that did not log the metric
    ([0.5], 2, {"scale": 100}, "50.00"),                      # one value: no spread to show
    ([0.5], 2, {"scale": 100, "n": True}, "50.00 (n = 1)"),
    ([1.0, 2.0, 3.0], 3, {}, "2.000 ± 1.000"),
    ([1.0, math.nan, 3.0], 1, {"n": True}, "2.0 ± 1.4 (n = 2)"),
])
def test_mean_std_cells(values, digits, options, expected):
    assert gridbench.mean_std(values, digits, **options) == expected


def test_mean_std_prints_what_pandas_mean_and_sample_std_print():
    values = pd.Series([0.71234, 0.69871, 0.73302])
    assert gridbench.mean_std(values, 2, scale=100) == f"{100 * values.mean():.2f} ± {100 * values.std():.2f}"


def test_main_launches_the_unfinished_cells_reads_them_back_and_reports(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CLSUITE_DATA_ROOT", str(tmp_path))      # main exports --data-root; restored after
    grid = tmp_path / "tiny.yaml"
    grid.write_text(GRID)
    argv = ["--tracking-uri", f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}", "--workers", "1", "--no-results"]
    reports = []

    def report(runs, spec, cells, args):
        reports.append((sorted(zip(runs["method"], runs["seed"])), spec.name, len(cells), args.quick))
        print(f"RESULT ok=1 quick={int(args.quick)}")

    def bench(*flags):
        gridbench.main("A tiny benchmark.\n\nMore text.", store="tiny", grid=str(grid), report=report,
                       quick=lambda spec: gridbench.quick_variant(spec, {"train.epochs": 1}, grid={}),
                       quick_help="one seed, naive only", describe=lambda config: {"method": config.strategy.name},
                       no_runs="ok=0", argv=[*argv, *flags])
        return capsys.readouterr().out

    out = bench("--no-run")                                     # nothing measured yet: no report, a RESULT line
    assert out.splitlines()[-2:] == ["no finished runs to report", "RESULT ok=0 seeds=0 quick=0 {}"]
    assert not reports

    out = bench("--max-cells", "1")                             # one cell, then the report on what exists
    assert "tiny_bench: stopped after 1 cell(s)" in out and "tiny_bench: 1 run now, 0 reused, 0 failed" in out
    assert len(reports[-1][0]) == 1

    out = bench()
    assert "tiny_bench: 3 run now, 1 reused, 0 failed" in out and out.endswith("RESULT ok=1 quick=0\n")
    assert reports[-1] == ([("naive", 0), ("naive", 1), ("replay", 0), ("replay", 1)], "tiny_bench", 4, False)

    out = bench()                                               # a rerun reuses every finished cell
    assert "tiny_bench: 0 run now, 4 reused, 0 failed" in out

    out = bench("--quick")                                      # its own grid and experiment: 1 seed, naive only
    assert "tiny_bench_quick: 1 run now, 0 reused, 0 failed" in out
    assert reports[-1] == ([("naive", 0)], "tiny_bench_quick", 1, True)


def test_a_benchmark_runs_as_a_script_from_the_checkout_without_editing_sys_path():
    scripts = sorted(ROOT.glob("benchmarks/*.py"))
    assert not [p.name for p in scripts if "sys.path" in p.read_text()]
    done = subprocess.run([sys.executable, "benchmarks/memo_aligned.py", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: memo_aligned.py") and "--tracking-uri" in done.stdout
