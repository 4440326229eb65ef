"""Experiment grids: YAML -> `GridSpec` -> cells (one `RunConfig` each); `cl.launch` runs them.

A grid file::

    name: quickstart                 # the grid's name (tag `grid` on every run)
    experiment: quickstart           # MLflow experiment (default: name)
    base: {scenario: ..., model: ..., strategy: ..., train: ...}
    grid:                            # cartesian product over dotted keys
      strategy.name: [naive, ewc]
      train.lr: [0.1, 0.01]
    seeds: [0, 1]                    # training seeds; the scenario seed is scenario.seed

A grid value that is a mapping replaces the whole subtree, which is how strategies with
different options share one grid::

    grid:
      strategy: [{name: naive}, {name: replay, mem_size: 500}]

Combinations that are not a product go under `cases:` — each case is a mapping of dotted
keys, crossed with the `grid` product (default: one empty case)::

    cases:
      - {strategy.name: replay}
      - {strategy.name: replay, plugins: [{name: fpf}]}
      - {strategy.name: kfpf_kd}
"""
from __future__ import annotations

import itertools
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cl.config import COMPONENTS, RunConfig, format_validation_error, load_yaml, set_dotted
from cl.errors import ConfigError

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)

GRID_KEYS = (*COMPONENTS, "transfer", "train", "memory", "plugins")


class GridSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")
    experiment: str | None = Field(None, description="MLflow experiment (default: the grid name)")
    description: str = ""
    base: dict[str, Any]
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    cases: list[dict[str, Any]] = Field(default_factory=lambda: [{}], min_length=1,
                                        description="override sets crossed with the grid product")
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    imports: list[str] = Field(default_factory=list)

    @field_validator("grid")
    @classmethod
    def _check_grid(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in grid.items():
            _check_key(key)
            if not values:
                raise ValueError(f"key {key!r}: needs at least one value")
        return grid

    @field_validator("cases")
    @classmethod
    def _check_cases(cls, cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for case in cases:
            for key in case:
                _check_key(key)
        return cases

    @field_validator("seeds")
    @classmethod
    def _check_seeds(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"repeated seeds in {seeds}")
        return seeds

    @property
    def experiment_name(self) -> str:
        return self.experiment or self.name


def _check_key(key: str) -> None:
    if key.split(".")[0] not in GRID_KEYS:
        raise ValueError(f"key {key!r}: must start with one of {', '.join(GRID_KEYS)} "
                         "(training seeds go under `seeds:`)")


@dataclass(frozen=True)
class Cell:
    config: RunConfig
    overrides: Mapping[str, Any]       # the grid values of this cell (without the seed)

    @property
    def config_hash(self) -> str:
        return self.config.config_hash

    @property
    def label(self) -> str:
        return describe_overrides(self.overrides) or "base"

    @property
    def seed(self) -> int:
        return self.config.seed


def load_grid(path: str | Path) -> GridSpec:
    raw = load_yaml(path)
    if not isinstance(raw, Mapping):
        raise ConfigError("a grid file must be a mapping with name, base, grid, seeds", source=str(path))
    try:
        return GridSpec.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, models=(GridSpec,)), source=str(path)) from None


def expand(spec: GridSpec, *, source: str | None = None) -> list[Cell]:
    """Every (grid combination × seed) as a validated cell; all problems reported at once."""
    keys = list(spec.grid)
    problems: dict[str, list[str]] = {}          # problem -> the cells it occurs in
    n_combos = 0
    cells: list[Cell] = []
    seen: set[str] = set()
    for combo, case in itertools.product(itertools.product(*(spec.grid[k] for k in keys)), spec.cases):
        n_combos += 1
        overrides = {**dict(zip(keys, combo)), **case}
        where = describe_overrides(overrides) or "base"
        raw: dict[str, Any] = dict(spec.base)
        try:
            for key, value in overrides.items():
                raw = set_dotted(raw, key, value)
            raw["experiment"] = spec.experiment_name
            raw["imports"] = list(dict.fromkeys([*spec.imports, *(raw.get("imports") or [])]))
            configs = [RunConfig.from_dict({**raw, "seed": seed}) for seed in spec.seeds]
        except ConfigError as exc:
            for problem in exc.problems:
                problems.setdefault(problem, []).append(where)
            continue
        for config in configs:
            if config.config_hash in seen:
                log.warning("grid %s: %s resolves to a config already in the grid; skipped",
                            spec.name, where)
                continue
            seen.add(config.config_hash)
            cells.append(Cell(config, overrides))
    if problems:
        lines = [p if len(cells_) == n_combos else f"{'; '.join(cells_)} -> {p}"
                 for p, cells_ in problems.items()]
        raise ConfigError(lines, source=source)
    return cells


def describe_overrides(overrides: Mapping[str, Any]) -> str:
    parts = []
    for key, value in overrides.items():
        if isinstance(value, Mapping):
            extras = {k: v for k, v in value.items() if k != "name"}
            shown = value.get("name", "") + (json.dumps(extras, sort_keys=True) if extras else "")
        else:
            shown = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
        parts.append(f"{key}={shown}")
    return ", ".join(parts)
