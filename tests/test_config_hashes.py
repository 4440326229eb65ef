"""Every published grid keeps its cells' config hashes, so a relaunch finds the finished runs.

`tests/data/config_hashes.json` holds each `experiments/*.yaml` cell's hash as the runs were made (checked
below against the hashes the archived runs in `benchmarks/results/` carry). A new option must not move them:
declare it with `cl.registry.added_option`, which leaves it out of the hash while it holds its default.
"""
import json
from pathlib import Path

import pytest
from pydantic import Field

from cl.config import RunConfig
from cl.grid import expand, load_grid
from cl.registry import STRATEGIES, Params, added_option, dump_options

ROOT = Path(__file__).resolve().parents[1]
PINNED = json.loads((ROOT / "tests" / "data" / "config_hashes.json").read_text())
GRIDS = sorted(p.name for p in (ROOT / "experiments").glob("*.yaml"))


@pytest.mark.parametrize("grid", GRIDS)
def test_published_grid_hashes_do_not_move(grid):
    if grid not in PINNED:
        pytest.fail(f"experiments/{grid} is new: add its cells' hashes to tests/data/config_hashes.json")
    hashes = sorted(cell.config_hash for cell in expand(load_grid(ROOT / "experiments" / grid)))
    moved = sorted(set(PINNED[grid]) - set(hashes))
    assert not moved, (f"{len(moved)} of {len(PINNED[grid])} cells of experiments/{grid} changed hash: an option "
                       "added with a default must be declared with cl.registry.added_option")
    assert hashes == PINNED[grid]


def test_pinned_hashes_are_the_archived_runs():
    """The manifest is not just today's output: every archived run of a published grid is in it."""
    archived = {}
    for path in (ROOT / "benchmarks" / "results").glob("*.jsonl"):
        for line in path.read_text().splitlines():
            run = json.loads(line)
            if run["tags"].get("config_hash"):
                archived.setdefault(run["experiment"], set()).add(run["tags"]["config_hash"])
    pinned = {h for hashes in PINNED.values() for h in hashes}
    assert archived, "no archived runs found under benchmarks/results/"
    for experiment, hashes in archived.items():
        assert hashes <= pinned, f"{experiment}: archived runs {sorted(hashes - pinned)} are not pinned"


def test_an_added_option_at_its_default_leaves_the_hash_alone():
    class Before(Params):
        size: int = Field(3)

    class After(Params):
        size: int = Field(3)
        layout: str = added_option("auto", description="added later")

    assert dump_options(After()) == Before().model_dump(mode="json")
    assert dump_options(After(layout="nhwc")) == {"size": 3, "layout": "nhwc"}
    entry = STRATEGIES.get("naive")
    cfg = RunConfig.from_dict({"scenario": "split_digits", "model": "mlp", "strategy": entry.name})
    assert cfg.config_hash == "c859246e2eaa08bd"      # as when the first runs were made
