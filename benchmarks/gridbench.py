"""What the grid benchmarks share: their command line, launching a grid into their own store, reading its runs
back, and their table cells.

A grid benchmark runs an experiment grid through the suite's own launcher, so a rerun reuses
every finished cell, then reads the runs back and prints its table and a ``RESULT`` line; `main` is that
sequence, each script passes what is its own (the grid, its --quick variant, the table).

Measured runs are kept in version control as ``benchmarks/results/<experiment>.jsonl``
(`cl.archive`): they are imported into the store before launching — so only the cells not
yet measured run, on any machine — and the file is rewritten with every finished run after.
"""
from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from benchmarks.paths import RESULTS, ROOT, SHARED_DATA
from cl.archive import export_runs, import_runs
from cl.config import set_dotted
from cl.grid import Cell, GridSpec, expand, load_grid
from cl.launch import launch
from cl.reproductions import cell_runs


def parser(description: str, *, store: str, quick_help: str) -> argparse.ArgumentParser:
    """--quick, --data-root, --workers, --tracking-uri (default: reports/<store>/mlflow.db), --no-run."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--data-root", default=os.environ.get("CLSUITE_DATA_ROOT", str(SHARED_DATA)))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tracking-uri", default=f"sqlite:///{ROOT / 'reports' / store / 'mlflow.db'}")
    parser.add_argument("--results", action=argparse.BooleanOptionalAction, default=True,
                        help="import benchmarks/results/<experiment>.jsonl first and rewrite it after "
                             "(never with --quick)")
    parser.add_argument("--no-run", action="store_true",
                        help="launch nothing: print the table from the runs already measured")
    parser.add_argument("--max-cells", type=int, default=None, metavar="N",
                        help="per grid: run at most N unfinished cells (one at a time, in the benchmark's order), "
                             "then report")
    return parser


def quick_variant(spec: GridSpec, overrides: Mapping[str, Any], *, seeds: int | None = 1, **fields) -> GridSpec:
    """A benchmark's --quick grid: `overrides` (dotted keys) set on the base, the first `seeds` seeds (None: all),
    other grid fields replaced (``grid=``, ``cases=``), and a name and experiment of its own, so smoke runs
    never mix with the measured ones (nor reach benchmarks/results/)."""
    base = spec.base
    for key, value in overrides.items():
        base = set_dotted(base, key, value)
    update = {"base": base, "name": spec.name + "_quick", "experiment": spec.experiment_name + "_quick", **fields}
    if seeds is not None:
        update["seeds"] = spec.seeds[:seeds]
    return spec.model_copy(update=update)


def mean_std(values, digits: int = 3, *, scale: float = 1.0, n: bool = False) -> str:
    """A table cell: mean ± sample std of `values` × `scale` with `digits` decimals (the mean alone for one value;
    — for none); NaN values (runs that did not log the metric) are left out. `n`: followed by ``(n = <count>)``."""
    values = [scale * float(v) for v in values]
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "—"
    mean = sum(values) / len(values)
    text = f"{mean:.{digits}f}"
    if len(values) > 1:
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
        text += f" ± {std:.{digits}f}"
    return text + (f" (n = {len(values)})" if n else "")


def results_file(spec: GridSpec) -> Path:
    return RESULTS / f"{spec.experiment_name}.jsonl"


def run_grid(spec: GridSpec, args: argparse.Namespace, *, order=None) -> list[Cell]:
    """Launch every cell not yet finished; print what ran and what failed; return the cells.

    `order` (a key on cells): launch them one at a time in that order, rewriting the results file after each,
    so a long grid that is stopped keeps every cell it finished (e.g. every dataset's first seed first).
    ``--max-cells N``: one at a time, stop once N cells have run (finished or failed; reused ones do not count)."""
    # through the environment, not the config: where the data lives is not part of a run's identity
    os.environ["CLSUITE_DATA_ROOT"] = args.data_root
    if args.tracking_uri.startswith("sqlite:///"):
        Path(args.tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    cells = expand(spec)
    results = results_file(spec)
    keep_results = args.results and not args.quick
    if keep_results and results.is_file():
        carried = import_runs(results, tracking_uri=args.tracking_uri)
        print(f"{results.relative_to(ROOT)}: {carried.imported} runs imported, {carried.skipped} already in the store")
    if args.no_run:
        return cells
    limit = getattr(args, "max_cells", None)
    if order or limit is not None:
        batches = [[cell] for cell in (sorted(cells, key=order) if order else cells)]
    else:
        batches = [cells]
    finished = reused = 0
    failed = []
    for batch in batches:
        if limit is not None and finished + len(failed) >= limit:
            print(f"{spec.name}: stopped after {limit} cell(s) (--max-cells)")
            break
        summary = launch(spec, batch, tracking_uri=args.tracking_uri, workers=args.workers)
        finished, reused = finished + summary.finished, reused + summary.skipped_finished
        failed += summary.failed
        if keep_results and summary.finished:
            count = export_runs(spec.experiment_name, results, tracking_uri=args.tracking_uri)
            print(f"{results.relative_to(ROOT)}: {count} finished runs written", flush=True)
    print(f"{spec.name}: {finished} run now, {reused} reused, {len(failed)} failed")
    for label, seed, reason in failed:
        print(f"  FAILED {label} seed {seed}: {reason}")
    return cells


def finished_runs(spec: GridSpec, args: argparse.Namespace, describe: Callable[[Any], Mapping[str, Any]], *,
                  order=None) -> tuple[list[Cell], pd.DataFrame]:
    """`run_grid`, then the FINISHED runs of its cells with `describe(config)`'s columns added (`cell_runs`)."""
    cells = run_grid(spec, args, order=order)
    return cells, cell_runs(spec.experiment_name, cells, describe, tracking_uri=args.tracking_uri)


Report = Callable[[pd.DataFrame, GridSpec, Sequence[Cell], argparse.Namespace], None]


def main(doc: str, *, store: str, quick_help: str, grid: str, quick: Callable[[GridSpec], GridSpec],
         describe: Callable[[Any], Mapping[str, Any]], report: Report, no_runs: str,
         grid_help: str | None = None, argv: Sequence[str] | None = None) -> None:
    """A grid benchmark's command line, from its flags to its RESULT line.

    `doc`: the script's docstring (its first line describes the command); `store`: the default store,
    reports/<store>/mlflow.db; `grid`: the grid file (relative to the checkout's root), or with `grid_help`
    the default of a ``--grid`` option; `quick(spec)`: the --quick variant (`quick_variant`). Launches the cells
    not finished yet and reads back the runs, `describe(config)` adding its columns, then
    `report(runs, spec, cells, args)` prints the tables and the RESULT line. With no finished run it says so and
    prints ``RESULT <no_runs> seeds=0 quick=<0|1> {}``."""
    parser_ = parser(doc.splitlines()[0], store=store, quick_help=quick_help)
    if grid_help is not None:
        parser_.add_argument("--grid", default=grid, help=grid_help)
    args = parser_.parse_args(argv)
    spec = load_grid(ROOT / (args.grid if grid_help is not None else grid))
    if args.quick:
        spec = quick(spec)
    cells, runs = finished_runs(spec, args, describe)
    if runs.empty:
        print("no finished runs to report")
        print(f"RESULT {no_runs} seeds=0 quick={int(args.quick)} {{}}")
        return
    report(runs, spec, cells, args)
