"""Name -> builder registries: scenarios, models, strategies, strategy plugins, transfer experiments, the paper
claims the report checks, and extra CLI commands.

An entry pairs a *params* model (pydantic, light) with a *target* builder. Targets may be
given as ``"package.module:function"`` strings and are imported only when a run is built,
so validating a grid (``clsuite grid expand``) never imports torch or Avalanche.

The platform's own scenarios and models live in `cl.catalog`. Every method, the suite's own
included, registers through the ``clsuite.registry`` entry-point group (pyproject.toml): the
modules it names are imported the first time a registry is queried, so the platform names no
method. A researcher's own module can be listed under ``imports:`` in a config and registers
on import::

    from cl.registry import STRATEGIES, Params

    class MineParams(Params):
        strength: float = 1.0

    STRATEGIES.register("mine", params=MineParams, target="my_pkg.mine:build",
                        summary="My plugin on top of Naive")

`cl.testing.check_strategy("mine")` then runs the suite's contract checks on it.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import logging
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from pydantic import BaseModel, ConfigDict

from cl.errors import ConfigError

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "clsuite.registry"


class Params(BaseModel):
    """Base for every entry's options: immutable, and unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


HASH_NEUTRAL = "hash_neutral"


def added_option(default: Any = None, **field_kwargs: Any) -> Any:
    """A `Field` for an option added after grids were run with its owner: while it holds `default` it is left
    out of the resolved config, hence out of the config hash, so relaunching an older grid still finds its
    finished cells (the run reads the default back when it validates its options again)."""
    from pydantic import Field

    extra = dict(field_kwargs.pop("json_schema_extra", None) or {})
    extra[HASH_NEUTRAL] = True
    return Field(default, json_schema_extra=extra, **field_kwargs)


def dump_options(model: BaseModel) -> dict[str, Any]:
    """`model` as JSON data, without the `added_option` fields that hold their default."""
    out = model.model_dump(mode="json")
    for name, field in type(model).model_fields.items():
        extra = field.json_schema_extra
        if isinstance(extra, dict) and extra.get(HASH_NEUTRAL) and name in out:
            if getattr(model, name) == field.get_default(call_default_factory=True):
                out.pop(name)
    return out


class NoParams(Params):
    """For entries that take no options."""


@dataclass(frozen=True)
class Entry:
    name: str
    kind: str
    params: type[Params]
    target: str | Callable[..., Any]
    summary: str = ""
    # strategies that grow their model: (model, scenario, params) -> backbone parameters at the end
    final_backbone_params: str | Callable[..., int] | None = None
    # options that make a run take seconds on the offline data (the contract tests use them)
    smoke_options: tuple[tuple[str, Any], ...] = ()

    def load(self) -> Callable[..., Any]:
        """The builder callable, importing its module on first use."""
        return _resolve(self.target, f"{self.kind} {self.name!r}")

    def load_final_backbone_params(self) -> Callable[..., int] | None:
        if self.final_backbone_params is None:
            return None
        return _resolve(self.final_backbone_params, f"{self.kind} {self.name!r}")


def _resolve(target: str | Callable[..., Any], what: str) -> Callable[..., Any]:
    """A callable, or the ``"module:attr"`` it names (imported now)."""
    if callable(target):
        return target
    module_name, _, attr = target.partition(":")
    module = importlib.import_module(module_name)
    try:
        return getattr(module, attr)
    except AttributeError as exc:  # a registration bug, not a user error
        raise ImportError(f"{what}: {target} does not exist") from exc


class Registry:
    """One namespace of entries (all scenarios, all models, or all strategies)."""

    def __init__(self, kind: str, builtin_modules: Iterable[str] = ()):
        self.kind = kind
        self._builtin_modules = tuple(builtin_modules)
        self._entries: dict[str, Entry] = {}
        self._builtins_loaded = False

    def register(
        self,
        name: str,
        *,
        params: type[Params] = NoParams,
        target: str | Callable[..., Any],
        summary: str = "",
        final_backbone_params: str | Callable[..., int] | None = None,
        smoke_options: dict[str, Any] | None = None,
    ) -> Entry:
        if not issubclass(params, Params):
            raise TypeError(f"params for {self.kind} {name!r} must subclass cl.registry.Params")
        existing = self._entries.get(name)
        entry = Entry(name=name, kind=self.kind, params=params, target=target, summary=summary,
                      final_backbone_params=final_backbone_params,
                      smoke_options=tuple(sorted((smoke_options or {}).items())))
        if existing is not None and existing != entry:
            raise ValueError(f"{self.kind} {name!r} is already registered (target {existing.target})")
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> Entry:
        self._ensure_builtins()
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigError(f"unknown {self.kind} {name!r}; registered: {', '.join(self.names()) or 'none'}"
                              + _load_problems()) from None

    def names(self) -> list[str]:
        self._ensure_builtins()
        return sorted(self._entries)

    def entries(self) -> list[Entry]:
        return [self._entries[n] for n in self.names()]

    def __contains__(self, name: object) -> bool:
        self._ensure_builtins()
        return name in self._entries

    def _ensure_builtins(self) -> None:
        if self._builtins_loaded:
            return
        self._builtins_loaded = True
        for module in self._builtin_modules:
            importlib.import_module(module)
        load_plugins()


_entry_points_loaded = False
_entry_point_failures: dict[str, str] = {}     # module -> why it did not load
_entry_points_found = 0


def load_plugins() -> None:
    """Import every module of the `clsuite.registry` entry points (and so register their entries), once."""
    global _entry_points_loaded, _entry_points_found
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        _entry_points_found += 1
        try:
            ep.load()
        except Exception as exc:  # one broken plugin must not break the others; `get` reports it
            _entry_point_failures[ep.value] = f"{type(exc).__name__}: {exc}"
            log.exception("could not load clsuite registry plugin %s", ep.value)


def _load_problems() -> str:
    """Why an entry may be missing, for the unknown-name error."""
    if not _entry_points_found:
        return (f". No `{ENTRY_POINT_GROUP}` entry points are installed, so no method is registered: install the "
                "project (`pip install -e .`) in this environment")
    return "".join(f". Entry point {module} failed to load ({why})" for module, why in _entry_point_failures.items())


def import_user_modules(modules: Iterable[str]) -> None:
    """Import the modules a config lists under ``imports:`` so their entries register.

    The working directory is searched first, as `python -m` would, so a project's own
    modules work from the `clsuite` console script too.
    """
    modules = list(modules)
    if modules and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ConfigError(
                f"imports: cannot import module {name!r} ({exc}); it must be importable "
                "from the working directory or installed in this environment"
            ) from exc


SCENARIOS = Registry("scenario", builtin_modules=("cl.catalog",))
MODELS = Registry("model", builtin_modules=("cl.catalog",))
STRATEGIES = Registry("strategy")
# add-ons for any strategy (e.g. a fine-tuning step): build(ctx, params) -> an Avalanche plugin
PLUGINS = Registry("plugin")
# knowledge-transfer experiments: run(ctx: cl.transfer_run.TransferContext, params) -> final metrics
TRANSFERS = Registry("transfer")
# a paper's claims, checked on archived runs by `cl.reproductions`: target -> a `cl.reproductions.Reproduction`
REPRODUCTIONS = Registry("reproduction")
# extra `clsuite` subcommands a method brings: target -> a function typer turns into a command (import it lightly)
COMMANDS = Registry("command")

# the registries whose entries a config names
REGISTRIES: dict[str, Registry] = {"scenario": SCENARIOS, "model": MODELS, "strategy": STRATEGIES,
                                   "plugin": PLUGINS, "transfer": TRANSFERS}
