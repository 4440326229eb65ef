"""Where the benchmarks find the checkout they run in: its root (grids under ``experiments/``, stores under
``reports/``), their archived runs and the shared data folder beside it. Computed here once."""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"      # the measured runs (`cl.archive` files), kept in version control
SHARED_DATA = ROOT.parent / "shared" / "data"   # the offline datasets' default root (--data-root overrides)
