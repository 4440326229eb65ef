"""Grid expansion: cartesian product, seeds, hashes, error reporting (no torch needed)."""
from pathlib import Path

import pytest

from cl.errors import ConfigError
from cl.grid import GridSpec, expand, load_grid

ROOT = Path(__file__).resolve().parents[1]


def spec(**changes) -> GridSpec:
    raw = {
        "name": "g",
        "base": {"scenario": {"name": "split_digits"}, "model": {"name": "mlp"},
                 "strategy": {"name": "naive"}, "train": {"epochs": 1}},
        "grid": {"strategy.name": ["naive", "ewc"], "train.lr": [0.1, 0.01]},
        "seeds": [0, 1, 2],
    }
    raw.update(changes)
    return GridSpec.model_validate(raw)


def test_quickstart_grid_has_ten_cells_in_five_groups():
    cells = expand(load_grid(ROOT / "experiments" / "quickstart.yaml"))
    assert len(cells) == 10
    assert len({c.config_hash for c in cells}) == 10
    groups = {c.config.group_hash for c in cells}
    assert len(groups) == 5
    assert {c.config.strategy.name for c in cells} == {"naive", "replay", "ewc", "lwf", "icarl"}
    assert {c.seed for c in cells} == {0, 1}
    assert all(c.config.experiment == "quickstart" for c in cells)


def test_cartesian_product_times_seeds():
    cells = expand(spec())
    assert len(cells) == 2 * 2 * 3
    labels = {c.label for c in cells}
    assert "strategy.name=ewc, train.lr=0.01" in labels
    lrs = {(c.config.strategy.name, c.config.train.lr) for c in cells}
    assert lrs == {("naive", 0.1), ("naive", 0.01), ("ewc", 0.1), ("ewc", 0.01)}


def test_mapping_values_replace_the_whole_section():
    cells = expand(spec(grid={"strategy": [{"name": "naive"}, {"name": "replay", "mem_size": 50}]},
                        seeds=[0]))
    replay = [c for c in cells if c.config.strategy.name == "replay"][0]
    assert replay.config.strategy.options == {"mem_size": 50}
    assert replay.label == 'strategy=replay{"mem_size": 50}'


def test_expansion_is_deterministic():
    assert [c.config_hash for c in expand(spec())] == [c.config_hash for c in expand(spec())]


def test_problem_in_every_cell_is_reported_once_without_cell_prefix():
    bad = spec(base={"scenario": {"name": "split_digits"}, "model": {"name": "mlp"},
                     "strategy": {"name": "naive"}, "train": {"epochs": 0}})
    with pytest.raises(ConfigError) as err:
        expand(bad)
    assert err.value.problems == ["train.epochs: Input should be greater than or equal to 1 (got 0)"]


def test_problem_in_some_cells_names_them():
    with pytest.raises(ConfigError) as err:
        expand(spec(grid={"strategy.name": ["naive", "bogus"]}))
    [problem] = err.value.problems
    assert problem.startswith("strategy.name=bogus -> strategy.name: unknown strategy 'bogus'")


@pytest.mark.parametrize("changes, message", [
    ({"grid": {"seed": [1, 2]}}, "training seeds go under `seeds:`"),
    ({"grid": {"strategy.name": []}}, "needs at least one value"),
    ({"seeds": [1, 1]}, "repeated seeds"),
    ({"seeds": []}, "at least 1 item"),
])
def test_bad_grid_specs(changes, message):
    with pytest.raises(Exception, match=message):
        spec(**changes)


def test_load_grid_reports_field_paths(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text("name: g\nbase: {}\ngrid: {optimizer: [sgd]}\nseeds: [0]\n")
    with pytest.raises(ConfigError) as err:
        load_grid(path)
    assert "g.yaml" in str(err.value) and "grid:" in str(err.value)


@pytest.mark.parametrize("path", sorted((ROOT / "experiments").glob("*.yaml")), ids=lambda p: p.name)
def test_every_published_grid_expands_to_distinct_validated_cells(path):
    cells = expand(load_grid(path))                 # validates every component's options against its registry
    assert cells and len({c.config_hash for c in cells}) == len(cells)
