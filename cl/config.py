"""Validated, frozen run configurations and their canonical hashes.

A run is fully described by a `RunConfig`: either a continual-learning run — scenario, model
and strategy (each a registry name plus that entry's options), optional plugins and memory
budget — or a transfer experiment (`transfer:`, a registry name plus its options, e.g.
MobileTL's MNIST → Fashion-MNIST transfer); plus the training settings and the seed. Validation
fills in every default, so two YAML files that mean the same thing resolve to the same
config and the same `config_hash` whatever their key order or omitted defaults.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal, Mapping, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cl.errors import ConfigError
from cl.registry import REGISTRIES, added_option, dump_options, import_user_modules

COMPONENTS = ("scenario", "model", "strategy")
CL_ONLY = (*COMPONENTS, "memory", "plugins")     # keys a transfer run does not take


class FirstExperience(BaseModel):
    """Settings that differ for the first experience (e.g. MEMO's 200-epoch base task)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    epochs: Optional[int] = Field(None, ge=1)
    lr: Optional[float] = Field(None, gt=0)
    weight_decay: Optional[float] = Field(None, ge=0)
    milestones: Optional[list[int]] = None


class TrainConfig(BaseModel):
    """Optimisation settings shared by every strategy."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    epochs: int = Field(1, ge=1, description="epochs per experience")
    batch_size: int = Field(32, ge=1)
    eval_batch_size: int = Field(256, ge=1)
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(0.01, gt=0)
    momentum: float = Field(0.0, ge=0, lt=1, description="SGD momentum (not reset between experiences)")
    weight_decay: float = Field(0.0, ge=0)
    device: str = Field("cpu", description="'cpu', 'cuda', 'cuda:N' or 'auto'")
    milestones: list[int] = Field(default_factory=list, description="epochs (within an experience) where lr *= lr_decay")
    lr_decay: float = Field(0.1, gt=0, le=1)
    first: Optional[FirstExperience] = Field(None, description="overrides for the first experience")
    precision: Literal["fp32", "bf16", "fp16"] = added_option(
        "fp32", description="autocast dtype of forward+loss (fp16 adds gradient scaling; it needs CUDA)")
    data_on_device: Literal["auto", "never"] = added_option(
        "auto", description="'auto': move the scenario's tensors to an accelerator once if they fit "
                            "(a no-op on CPU); 'never': batches are copied per step")

    @model_validator(mode="after")
    def _fp16_needs_cuda(self) -> "TrainConfig":
        if self.precision == "fp16" and self.device == "cpu":
            raise ValueError("precision: fp16 needs a CUDA device (CPU fp16 autocast is slow and "
                             "unscaled); use precision bf16 on CPU, or device cuda/auto")
        return self

    def for_experience(self, index: int) -> dict:
        """epochs, lr, weight_decay and milestones in force for experience `index`."""
        settings = {"epochs": self.epochs, "lr": self.lr, "weight_decay": self.weight_decay,
                    "milestones": list(self.milestones)}
        if index == 0 and self.first is not None:
            settings.update({k: v for k, v in self.first.model_dump().items() if v is not None})
        return settings


class MemoryBudget(BaseModel):
    """Equal total memory (MEMO §4.2): exemplars derived from the bytes a smaller model saves."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    aligned_to: str = Field(description="the strategy whose final model sets the budget (the largest, e.g. der)")
    exemplars: int = Field(ge=0, description="exemplars the reference strategy keeps (MEMO: 2000)")


class ComponentConfig(BaseModel):
    """A registry name and its validated options (all defaults filled in)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    options: dict[str, Any] = Field(default_factory=dict)

    def flat(self) -> dict[str, Any]:
        """The YAML form: ``{name: ..., option: value, ...}``."""
        return {"name": self.name, **self.options}


class RunConfig(BaseModel):
    """One run. Build it with `RunConfig.from_dict` (validates components against the registry)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    experiment: str = Field("default", min_length=1, description="MLflow experiment name")
    scenario: Optional[ComponentConfig] = None
    model: Optional[ComponentConfig] = None
    strategy: Optional[ComponentConfig] = None
    transfer: Optional[ComponentConfig] = Field(None, description="a transfer experiment, instead of "
                                                "scenario/model/strategy")
    train: TrainConfig = TrainConfig()
    memory: Optional[MemoryBudget] = Field(None, description="align exemplar counts to equal total memory")
    plugins: tuple[ComponentConfig, ...] = Field((), description="add-ons for the strategy, e.g. [{name: fpf}]")
    seed: int = Field(0, description="training seed (weights, batch order); not the class order")
    imports: tuple[str, ...] = Field((), description="modules to import first (they register entries)")

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], *, source: str | None = None) -> "RunConfig":
        """Validate a plain mapping (e.g. parsed YAML); errors name the dotted field path."""
        if not isinstance(raw, Mapping):
            raise ConfigError(f"expected a mapping at the top level, got {type(raw).__name__}",
                              source=source)
        imports = raw.get("imports") or ()
        if isinstance(imports, str) or not isinstance(imports, (list, tuple)):
            raise ConfigError("imports: must be a list of module names", source=source)
        import_user_modules(imports)

        problems: list[str] = []
        data = dict(raw)
        if data.get("transfer") is not None:
            return cls._transfer_from_dict(data, source)
        for kind in COMPONENTS:
            if kind not in data:
                problems.append(f"{kind}: missing; give at least `{kind}: {{name: ...}}` "
                                "(or `transfer: {name: ...}` for a transfer experiment)")
                continue
            try:
                data[kind] = resolve_component(kind, data[kind])
            except ConfigError as exc:
                problems.extend(exc.problems)
        plugins = data.get("plugins") or []
        if not isinstance(plugins, (list, tuple)):
            problems.append("plugins: must be a list, e.g. `plugins: [{name: fpf}]`")
            plugins = []
        resolved_plugins = {}
        for i, plugin in enumerate(plugins):
            try:
                resolved_plugins[i] = resolve_component("plugin", plugin, where=f"plugins[{i}]")
            except ConfigError as exc:
                problems.extend(exc.problems)
        data["plugins"] = tuple(resolved_plugins.values())
        if isinstance(data.get("strategy"), ComponentConfig):
            problems.extend(_plugin_strategy_problems(data["strategy"], resolved_plugins))
        if problems:  # report the other sections' problems too, in one go
            unknown = sorted(set(data) - set(cls.model_fields))
            problems.extend(f"{key}: unknown field; allowed: {', '.join(cls.model_fields)}" for key in unknown)
            try:
                TrainConfig.model_validate(data.get("train") or {})
            except ValidationError as exc:
                problems.extend(format_validation_error(exc, prefix="train"))
            raise ConfigError(problems, source=source)
        try:
            config = cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc), source=source) from None
        if config.memory is not None:
            config._check_memory_budget(source)
        return config

    @classmethod
    def _transfer_from_dict(cls, data: dict[str, Any], source: str | None) -> "RunConfig":
        problems = [f"{key}: a transfer run takes no {key}; its options go under `transfer:`"
                    for key in CL_ONLY if data.get(key)]
        try:
            data["transfer"] = resolve_component("transfer", data["transfer"])
        except ConfigError as exc:
            problems.extend(exc.problems)
        if problems:
            raise ConfigError(problems, source=source)
        data = {k: v for k, v in data.items() if k not in CL_ONLY}
        try:
            config = cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc), source=source) from None
        if config.train.precision != "fp32":
            raise ConfigError("train.precision: applies to continual-learning runs; a transfer experiment "
                              "trains in fp32 (drop the setting)", source=source)
        return config

    @property
    def is_transfer(self) -> bool:
        return self.transfer is not None

    @property
    def title(self) -> str:
        """What the run is, for progress bars and run names: 'replay on split_digits' / 'transfer mobiletl'."""
        if self.is_transfer:
            return f"transfer {self.transfer.name}"
        return f"{self.strategy.name} on {self.scenario.name}"

    def _check_memory_budget(self, source: str | None) -> None:
        from cl.registry import STRATEGIES

        try:
            STRATEGIES.get(self.memory.aligned_to)
        except ConfigError as exc:
            raise ConfigError(f"memory.aligned_to: {exc.problems[0]}", source=source) from None
        if "mem_size" not in STRATEGIES.get(self.strategy.name).params.model_fields:
            raise ConfigError(f"memory: strategy {self.strategy.name!r} keeps no exemplars, so there is no "
                              "budget to align; drop `memory` for it", source=source)

    def preflight(self) -> None:
        """Cheap checks that need the machine, not just the config (e.g. data on disk)."""
        components = [(kind, getattr(self, kind)) for kind in (*COMPONENTS, "transfer") if getattr(self, kind)]
        for kind, component in [*components, *(("plugin", p) for p in self.plugins)]:
            check = getattr(component_params(kind, component), "preflight", None)
            if check is not None:
                check()

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain data (components flattened, as in YAML)."""
        out = self.model_dump(mode="json")
        out["train"] = dump_options(self.train)
        for kind in (*COMPONENTS, "transfer"):
            component = getattr(self, kind)
            out[kind] = component.flat() if component is not None else None
        out["plugins"] = [plugin.flat() for plugin in self.plugins]
        out["imports"] = list(self.imports)
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def identity(self, *, with_seed: bool = True) -> dict[str, Any]:
        """What the run computes: everything but the experiment name (and the seed, optionally)."""
        out = self.to_dict()
        out.pop("experiment")
        for key in [k for k, v in out.items() if v is None or (k == "plugins" and not v)]:
            out.pop(key)  # unset options leave older configs' hashes unchanged
        if not with_seed:
            out.pop("seed")
        return out

    @property
    def config_hash(self) -> str:
        """Hash of the canonical resolved config, seed included: one per grid cell."""
        return canonical_hash(self.identity())

    @property
    def group_hash(self) -> str:
        """Hash without the seed: runs differing only by seed share it (aggregated in reports)."""
        return canonical_hash(self.identity(with_seed=False))

    def flat_params(self) -> dict[str, str]:
        """Dotted key -> value strings, for MLflow params."""
        return {k: _param_str(v) for k, v in flatten(self.to_dict()).items()}


def resolve_component(kind: str, raw: Any, *, where: str | None = None) -> ComponentConfig:
    """Look up `raw['name']` in the registry of `kind` and validate the other keys as its options.

    `where` is the field path errors name (default: `kind`).
    """
    where = where or kind
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a mapping with a `name`, got {raw!r}")
    name = raw.get("name")
    registry = REGISTRIES[kind]
    if not isinstance(name, str):
        raise ConfigError(f"{where}.name: missing; registered: {', '.join(registry.names())}")
    try:
        entry = registry.get(name)
    except ConfigError as exc:
        raise ConfigError(f"{where}.name: {exc.problems[0]}") from None
    options = {k: v for k, v in raw.items() if k != "name"}
    try:
        params = entry.params.model_validate(options)
    except ValidationError as exc:
        allowed = ", ".join(entry.params.model_fields) or "(none)"
        raise ConfigError(
            format_validation_error(exc, prefix=where, allowed=f"{kind} {name!r} accepts: {allowed}")
        ) from None
    component = ComponentConfig(name=name, options=dump_options(params))
    _VALIDATED[_params_key(kind, component)] = params
    return component


def _plugin_strategy_problems(strategy: ComponentConfig, plugins: Mapping[int, ComponentConfig]) -> list[str]:
    """What plugins (by their index in `plugins:`) say about the strategy they are added to: a plugin's `Params` may
    define ``check_strategy(strategy: ComponentConfig) -> str | None``, a problem naming its own field and the fix."""
    problems = []
    for i, plugin in plugins.items():
        check = getattr(component_params("plugin", plugin), "check_strategy", None)
        problem = check(strategy) if check is not None else None
        if problem:
            problems.append(f"plugins[{i}].{problem}")
    return problems


_VALIDATED: dict[tuple[str, str, str], Any] = {}       # (kind, name, options) -> the entry's Params


def _params_key(kind: str, component: ComponentConfig) -> tuple[str, str, str]:
    return kind, component.name, json.dumps(component.options, sort_keys=True, default=str)


def component_params(kind: str, component: ComponentConfig) -> Any:
    """The component's options as its registry entry's `Params`: validated once on the way from YAML to the
    builder (`resolve_component` keeps what it validated; preflight and the runner reuse it)."""
    key = _params_key(kind, component)
    if key not in _VALIDATED:
        _VALIDATED[key] = REGISTRIES[kind].get(component.name).params.model_validate(component.options)
    return _VALIDATED[key]


def format_validation_error(exc: ValidationError, *, prefix: str = "", allowed: str = "",
                            models: tuple[type[BaseModel], ...] = ()) -> list[str]:
    """One line per error: ``dotted.path: message (got value)``; an unknown key lists the known ones of the model
    that owns it (this module's config models, plus `models` — e.g. a grid spec — looked up by the error's title)."""
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        path = ".".join(str(p) for p in ((prefix,) if prefix else ()) + loc)
        if err["type"] == "extra_forbidden":
            known = allowed or _known_fields(exc.title, loc[:-1], models)
            msg = "unknown field" + (f"; {known}" if known else "")
        else:
            msg = err["msg"]
            if "input" in err and err["type"] != "missing":
                msg += f" (got {err['input']!r})"
        lines.append(f"{path or '<root>'}: {msg}")
    return lines


def _known_fields(model_name: str, loc: tuple, extra: tuple[type[BaseModel], ...] = ()) -> str:
    """'allowed: a, b' for the model that owns the field at `loc`."""
    models = {m.__name__: m for m in (RunConfig, TrainConfig, *extra)}
    model = models.get(model_name)
    for part in loc:
        field = model.model_fields.get(str(part)) if model else None
        annotation = field.annotation if field else None
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return f"allowed: {', '.join(model.model_fields)}" if model else ""


def canonical_hash(data: Any, length: int = 16) -> str:
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def _param_str(value: Any) -> str:
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def load_yaml(path: str | Path) -> Any:
    """Parse a YAML file; problems become a `ConfigError` that names the file and line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"file not found: {path}")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {exc}", source=str(path)) from None


def load_run_config(path: str | Path, overrides: Mapping[str, Any] | None = None) -> RunConfig:
    """A `RunConfig` from a YAML file (the `base` keys of a grid plus `seed`)."""
    raw = load_yaml(path)
    if isinstance(raw, Mapping) and overrides:
        raw = dict(raw)
        for key, value in overrides.items():
            raw = set_dotted(raw, key, value)
    return RunConfig.from_dict(raw, source=str(path))


def set_dotted(data: Mapping[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    """A copy of `data` with `a.b.c` set to `value` (intermediate mappings created as needed)."""
    head, _, rest = dotted.partition(".")
    out = dict(data)
    if not rest:
        out[head] = value
        return out
    child = out.get(head)
    if isinstance(child, str) and head in (*COMPONENTS, "transfer"):
        child = {"name": child}
    if child is None:
        child = {}
    if not isinstance(child, Mapping):
        raise ConfigError(f"{dotted}: cannot set a field inside {head}={child!r}, which is not a mapping")
    out[head] = set_dotted(child, rest, value)
    return out
