"""Where the benchmarks find the checkout they run in: its root (grids under ``experiments/``, stores under
``reports/``), their archived runs and the shared data folder beside it. Computed here once."""
from __future__ import annotations

from pathlib import Path

from cl.archive import archive_dir

ROOT = Path(__file__).resolve().parents[1]
RESULTS = archive_dir(ROOT)                     # the measured runs (`cl.archive` files): pyproject's archive
SHARED_DATA = ROOT.parent / "shared" / "data"   # the offline datasets' default root (--data-root overrides)
