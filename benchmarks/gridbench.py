"""What the grid benchmarks share: their command line, and launching a grid into their own store.

A grid benchmark runs an experiment grid through the suite's own launcher, so a rerun reuses
every finished cell, then reads the runs back and prints its table.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from cl.grid import Cell, GridSpec, expand, launch

ROOT = Path(__file__).resolve().parents[1]


def parser(description: str, *, store: str, quick_help: str) -> argparse.ArgumentParser:
    """--quick, --data-root, --workers, --tracking-uri (default: reports/<store>/mlflow.db)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--data-root",
                        default=os.environ.get("CLSUITE_DATA_ROOT", str(ROOT.parent / "shared" / "data")))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tracking-uri", default=f"sqlite:///{ROOT / 'reports' / store / 'mlflow.db'}")
    return parser


def run_grid(spec: GridSpec, args: argparse.Namespace) -> list[Cell]:
    """Launch every cell not yet finished; print what ran and what failed; return the cells."""
    # through the environment, not the config: where the data lives is not part of a run's identity
    os.environ["CLSUITE_DATA_ROOT"] = args.data_root
    if args.tracking_uri.startswith("sqlite:///"):
        Path(args.tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    cells = expand(spec)
    summary = launch(spec, cells, tracking_uri=args.tracking_uri, workers=args.workers)
    print(f"{spec.name}: {summary.finished} run now, {summary.skipped_finished} reused, {len(summary.failed)} failed")
    for label, seed, reason in summary.failed:
        print(f"  FAILED {label} seed {seed}: {reason}")
    return cells
