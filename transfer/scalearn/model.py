"""ScaLearn on peft: learn to scale the outputs of frozen source adapters for a new task.

Frohmann, Holtermann, Masoudian, Lauscher, Rekabsaz. "ScaLearn: Simple and Highly
Parameter-Efficient Task Transfer by Learning to Scale", Findings of ACL 2024
(arXiv 2310.01217; reference code CPJKU/ScaLearn, a fork of adapter-transformers).

The method (paper §3, reference ``adapters/modeling.py::ScaLearn``)
-----------------------------------------------------------------
Stage 1 trains one adapter per task. Stage 2 loads the N adapters frozen (the target task's
own adapter among them, by convention last) and, at every adapted location l, replaces their
sum by a learned scaling of their outputs o_i^l (before the residual):

    h^l = Σ_i ω_i^l ⊙ o_i^l + residual^l        no softmax, no normalisation

================  ======================  ===========================================
variant           ω per location          trainable transfer parameters
================  ======================  ===========================================
scalearn          vector ω_i^l ∈ R^d      N · L · d
scalearn_uniform  scalar ω_i^l            N · L
scalearn_pp       vector, shared over l   N · d      ("ScaLearn++")
scalearn_uniform_pp scalar, shared over l N          ("ScaLearnUniform++")
================  ======================  ===========================================

ω is initialised from N(2/N, 0.001) and regularised by dropout (p = 0.3) applied to ω itself,
as in the reference. Only ω and the target head train. The reference's ablations,
``normalisation="sum_to_one"`` (ω / Σ_i ω_i) and ``"softmax"`` (softmax over i), are options.

How it sits on peft (ours)
--------------------------
peft's LoRA layers add Σ_i scaling_i · B_i A_i x to the base output and offer no way to
weigh the terms. `AdapterCombination` keeps peft's layers and adapters untouched, marks no
adapter active inside each adapted layer (so peft's forward returns the base output), and
adds, in a forward hook, a `Combiner` of the adapters' individual outputs
o_i = scaling_i · B_i(A_i(dropout_i(x))). One mechanism serves ScaLearn (`OmegaScaling`) and
the AdapterFusion baseline (`FusionAttention`).

Deviations from the paper, all forced by peft or by our scale
-------------------------------------------------------------
* **LoRA instead of Pfeiffer bottleneck adapters.** peft has no bottleneck adapter. The
  default LoRA target is the FFN output projection of every layer (BERT:
  ``layer.<l>.output.dense``), i.e. one adapted location per layer whose output feeds the
  residual stream before the LayerNorm — the place Pfeiffer adapters sit. So there is one
  o_i^l ∈ R^d per layer, and the parameter counts of the table above hold exactly
  (RoBERTa-base, N = 8: 73,728 / 96 / 6,144 / 8). With more target modules per layer, each
  becomes its own location (counts grow accordingly) and "shared over l" shares ω between
  the same module of different layers (module names with the layer index removed).
* A Pfeiffer adapter's output is a non-linear function of its input; a LoRA delta is linear
  in x. Scaling LoRA outputs therefore has the same form as scaling bottleneck outputs, but
  the source "skills" it weighs are low-rank linear corrections.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, Optional, Sequence

import torch
from torch import nn
from torch.nn import functional as F

VARIANTS = ("scalearn", "scalearn_uniform", "scalearn_pp", "scalearn_uniform_pp")
Normalisation = Literal["none", "sum_to_one", "softmax"]
CONFIG_NAME = "scalearn_config.json"
WEIGHTS_NAME = "scalearn_omega.safetensors"
_LAYER_INDEX = re.compile(r"\.\d+\.")


@dataclass(frozen=True)
class ScaLearnConfig:
    """What stage 2 learns: which adapters it combines and the shape of their scaling ω."""

    adapters: tuple[str, ...]
    """names of the loaded peft adapters to combine (the target task's own adapter last, by convention)"""
    variant: str = "scalearn"
    """scalearn | scalearn_uniform | scalearn_pp | scalearn_uniform_pp (see the module docstring)"""
    init_scale: float = 2.0
    """ω starts at N(init_scale / N, init_std): the reference's "avg" initialisation with scale 2"""
    init_std: float = 1e-3
    dropout: float = 0.3
    """dropout applied to ω during training (reference default)"""
    normalisation: str = "none"
    """none (ScaLearn) | sum_to_one | softmax: the reference's ablations, over the adapters"""
    adapter_paths: dict[str, str] = field(default_factory=dict)
    """where each adapter was loaded from, so `ScaLearnModel.load` can rebuild the model"""

    def __post_init__(self):
        object.__setattr__(self, "adapters", tuple(self.adapters))
        if len(self.adapters) < 1 or len(set(self.adapters)) != len(self.adapters):
            raise ValueError(f"ScaLearnConfig.adapters must name one or more distinct adapters, got {self.adapters}")
        if self.variant not in VARIANTS:
            raise ValueError(f"ScaLearnConfig.variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.normalisation not in ("none", "sum_to_one", "softmax"):
            raise ValueError("ScaLearnConfig.normalisation must be 'none', 'sum_to_one' or 'softmax', "
                             f"got {self.normalisation!r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"ScaLearnConfig.dropout must be in [0, 1), got {self.dropout}")
        if self.init_std < 0:
            raise ValueError(f"ScaLearnConfig.init_std must be ≥ 0, got {self.init_std}")

    @property
    def vector(self) -> bool:
        return self.variant in ("scalearn", "scalearn_pp")

    @property
    def shared_over_layers(self) -> bool:
        return self.variant.endswith("_pp")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ScaLearnConfig":
        return cls(**json.loads(text))


def location_role(name: str) -> str:
    """``bert.encoder.layer.3.output.dense`` → ``bert.encoder.layer.*.output.dense``: the same module in every layer."""
    return _LAYER_INDEX.sub(".*.", name)


def adapted_layers(model: nn.Module, adapters: Sequence[str]) -> dict[str, nn.Module]:
    """Every peft LoRA ``Linear`` of `model` that holds all `adapters`, by module name."""
    from peft.tuners.lora import Linear as LoraLinear
    from peft.tuners.lora import LoraLayer

    found = {}
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        missing = [a for a in adapters if a not in module.lora_A]
        if missing:
            continue
        if not isinstance(module, LoraLinear) or module.lora_variant:
            raise TypeError(f"{name}: only plain LoRA on Linear layers can be combined (got {type(module).__name__}"
                            f"{' with a LoRA variant such as DoRA' if module.lora_variant else ''})")
        found[name] = module
    if not found:
        raise ValueError(f"no LoRA layer holds all adapters {list(adapters)}; load them first "
                         "(PeftModel.from_pretrained / load_adapter with these adapter_name values)")
    return found


def adapter_outputs(layer: nn.Module, x: torch.Tensor, adapters: Sequence[str]) -> torch.Tensor:
    """o_i = scaling_i · B_i(A_i(dropout_i(x))), stacked on a new second-to-last axis: (..., N, out)."""
    outputs = []
    for name in adapters:
        a, b = layer.lora_A[name], layer.lora_B[name]
        outputs.append(b(a(layer.lora_dropout[name](x.to(a.weight.dtype)))) * layer.scaling[name])
    return torch.stack(outputs, dim=-2)


class Combiner(nn.Module):
    """Turns the adapters' outputs at one location into the term added to the base output."""

    def forward(self, location: str, base_output: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class OmegaScaling(Combiner):
    """ScaLearn's Σ_i ω_i ⊙ o_i, with ω per location or shared over layers."""

    def __init__(self, config: ScaLearnConfig, locations: dict[str, int]):
        """`locations`: module name → output width d."""
        super().__init__()
        self.config = config
        n = len(config.adapters)
        self.group_of = {loc: self._group(loc) for loc in locations}
        widths: dict[str, int] = {}
        for loc, width in locations.items():
            group = self.group_of[loc]
            if widths.setdefault(group, width) != width:
                raise ValueError(f"{config.variant}: modules shared as {group!r} have different widths "
                                 f"({widths[group]} vs {width}); use a per-layer variant")
        self.omega = nn.ParameterDict({
            key: nn.Parameter(torch.normal(config.init_scale / n, config.init_std,
                                           (n, width if config.vector else 1)))
            for key, width in widths.items()})

    def _group(self, location: str) -> str:
        key = location_role(location) if self.config.shared_over_layers else location
        return key.replace(".", "__").replace("*", "all")      # ParameterDict keys cannot contain dots

    def weights(self, location: str) -> torch.Tensor:
        """ω at `location` as used in the forward pass (after dropout and normalisation): (N, d or 1)."""
        omega = self.omega[self.group_of[location]]
        if self.config.dropout > 0:
            omega = F.dropout(omega, self.config.dropout, self.training)
        if self.config.normalisation == "sum_to_one":
            omega = omega / omega.sum(dim=0, keepdim=True)
        elif self.config.normalisation == "softmax":
            omega = omega.softmax(dim=0)
        return omega

    def forward(self, location, base_output, outputs):
        return (self.weights(location) * outputs).sum(dim=-2)


class FusionAttention(Combiner):
    """AdapterFusion (Pfeiffer et al., EACL 2021) over adapter outputs: the paper's main comparator.

    Per location: query Q·h from the base output h, keys K·o_i, values V·o_i; the output is
    Σ_i softmax_i(⟨Qh, Ko_i⟩) · V o_i. Q and K are d×d with bias (BERT init), V is d×d without
    bias initialised to the identity and kept near it by `regularization_loss` (λ‖I − V‖²,
    λ = 0.01) — the "dynamic" AdapterFusion setting of adapter-transformers. 3d² + 2d
    parameters per location. Fusion mixes adapter *outputs* here; in adapter-transformers the
    same attention mixes bottleneck-adapter outputs.
    """

    def __init__(self, locations: dict[str, int], regularization: float = 0.01):
        super().__init__()
        self.regularization = regularization
        self.keys = {loc: loc.replace(".", "__") for loc in locations}
        self.query = nn.ModuleDict({self.keys[loc]: nn.Linear(d, d) for loc, d in locations.items()})
        self.key = nn.ModuleDict({self.keys[loc]: nn.Linear(d, d) for loc, d in locations.items()})
        self.value = nn.ModuleDict({self.keys[loc]: nn.Linear(d, d, bias=False) for loc, d in locations.items()})
        for module in list(self.query.values()) + list(self.key.values()):
            nn.init.normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)
        for module in self.value.values():
            with torch.no_grad():
                module.weight.copy_(torch.eye(module.in_features) + 1e-6)

    def forward(self, location, base_output, outputs):
        key = self.keys[location]
        query = self.query[key](base_output).unsqueeze(-2)                  # (..., 1, d)
        scores = (query * self.key[key](outputs)).sum(-1)                   # (..., N)
        probs = scores.softmax(dim=-1).unsqueeze(-1)
        return (probs * self.value[key](outputs)).sum(dim=-2)

    def regularization_loss(self) -> torch.Tensor:
        return self.regularization * sum(((v.weight - torch.eye(v.in_features, device=v.weight.device)) ** 2).sum()
                                         for v in self.value.values())


class AdapterCombination:
    """Installs a `Combiner` on every layer that holds the adapters; `remove()` restores peft's own forward.

    Inside each adapted layer no adapter is left active (peft then returns the base output)
    and a forward hook adds ``combiner(location, base_output, adapter outputs)``. Adapter
    weights are frozen.
    """

    def __init__(self, model: nn.Module, adapters: Sequence[str], combiner: Combiner):
        self.adapters = tuple(adapters)
        self.combiner = combiner
        self.layers = adapted_layers(model, self.adapters)
        self._previous = {}
        self._handles = []
        for name, layer in self.layers.items():
            self._previous[name] = list(layer.active_adapters)
            layer.set_adapter([], inference_mode=True)
            self._handles.append(layer.register_forward_hook(self._hook(name)))

    def _hook(self, location: str):
        def add_combination(layer, args, output):
            outputs = adapter_outputs(layer, args[0], self.adapters)
            return output + self.combiner(location, output, outputs).to(output.dtype)
        return add_combination

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        for name, layer in self.layers.items():
            layer.set_adapter(self._previous[name], inference_mode=True)
        self._handles.clear()

    @staticmethod
    def widths(layers: dict[str, nn.Module]) -> dict[str, int]:
        return {name: layer.out_features for name, layer in layers.items()}


class ScaLearnModel(nn.Module):
    """A peft model with N frozen adapters whose outputs are scaled by learned ω.

    >>> peft_model = PeftModel.from_pretrained(base, "adapters/mrpc", adapter_name="mrpc")
    >>> peft_model.load_adapter("adapters/rte", adapter_name="rte")
    >>> model = ScaLearnModel(peft_model, ScaLearnConfig(adapters=("mrpc", "rte")))
    >>> model.transfer_parameter_count()            # ω only; the task head is counted apart

    Only ω trains (plus whatever the caller unfreezes, e.g. a new task head). `save` writes ω
    as safetensors and the config as JSON; `load` rebuilds the model and restores ω exactly.
    """

    def __init__(self, peft_model: nn.Module, config: ScaLearnConfig):
        super().__init__()
        self.config = config
        self.model = peft_model
        for param in peft_model.parameters():
            param.requires_grad_(False)
        layers = adapted_layers(peft_model, config.adapters)
        self.scaling = OmegaScaling(config, AdapterCombination.widths(layers))
        self.combination = AdapterCombination(peft_model, config.adapters, self.scaling)

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def transfer_parameter_count(self) -> int:
        return sum(p.numel() for p in self.scaling.parameters())

    def omega(self) -> dict[str, torch.Tensor]:
        """The learned ω by group (detached, before dropout)."""
        return {k: v.detach().clone() for k, v in self.scaling.omega.items()}

    def save(self, directory: str | Path) -> Path:
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CONFIG_NAME).write_text(self.config.to_json())
        save_file({k: v.detach().contiguous().cpu() for k, v in self.scaling.omega.items()}, directory / WEIGHTS_NAME)
        return directory

    @classmethod
    def load(cls, base_model: nn.Module, directory: str | Path, *, peft_model: Optional[nn.Module] = None
             ) -> "ScaLearnModel":
        """Rebuild from `save`'s directory: loads the adapters from ``config.adapter_paths`` onto
        `base_model` (or uses `peft_model`, which already holds them), then restores ω."""
        from safetensors.torch import load_file

        directory = Path(directory)
        config = ScaLearnConfig.from_json((directory / CONFIG_NAME).read_text())
        if peft_model is None:
            peft_model = load_adapters(base_model, {a: config.adapter_paths[a] for a in config.adapters})
        model = cls(peft_model, config)
        state = load_file(directory / WEIGHTS_NAME)
        missing = set(model.scaling.omega) ^ set(state)
        if missing:
            raise ValueError(f"{directory / WEIGHTS_NAME} does not match the model: groups {sorted(missing)} differ")
        with torch.no_grad():
            for key, value in state.items():
                model.scaling.omega[key].copy_(value)
        return model


def load_adapters(base_model: nn.Module, paths: dict[str, str | Path]) -> nn.Module:
    """A PeftModel holding every adapter of `paths` (name → directory saved by peft), all frozen."""
    from peft import PeftModel

    if not paths:
        raise ValueError("load_adapters needs at least one adapter path")
    names = list(paths)
    model = PeftModel.from_pretrained(base_model, str(paths[names[0]]), adapter_name=names[0], is_trainable=False)
    for name in names[1:]:
        model.load_adapter(str(paths[name]), adapter_name=name, is_trainable=False)
    return model


def count_for_variant(variant: str, n_adapters: int, n_layers: int, width: int) -> int:
    """The paper's parameter count of ω: N·L·d, N·L, N·d or N (one adapted location per layer)."""
    per_adapter = (width if variant in ("scalearn", "scalearn_pp") else 1)
    return n_adapters * per_adapter * (1 if variant.endswith("_pp") else n_layers)
