"""SkillPacks: a fine-tuned skill captured as a compressed task delta, stored, applied, fused
(routing prompts to packs: `transfer.skillpack.routing`).

Du et al., "Knowledge Grafting of Large Language Models" (GraftLLM; arXiv 2505.18502,
ICLR 2026; reference code duguodong7/GraftLLM). A target model learns a source's skill by
fine-tuning; the skill is the task vector Δθ = θ*_target − θ_target, compressed module by
module into a *SkillPack* that can be added to the base model, removed, fused with others,
or activated per prompt by a router — so skills accumulate without forgetting: each new
skill gets its own pack, old packs are never modified.

Compression (paper §3.2, "module-aware adaptive compression")
------------------------------------------------------------
* **prune** — embedding and output head (``prune_pattern``): magnitude pruning, the
  ``prune_density`` largest-magnitude entries kept (indices int32, values fp16).
* **lowrank** — every other matrix: truncated SVD Δ ≈ U_k Σ_k V_kᵀ, with k the smallest rank
  whose singular values hold a fraction ``energy`` (β) of Σσ² (capped by ``max_rank``);
  stored as A = U_k Σ_k^½ and B = Σ_k^½ V_kᵀ, whose i-th column/row is quantised with a bit
  width chosen by the singular value's rank (``bit_schedule``; reference Llama-3.1 script:
  20 at 8 bits, 180 at 4, the rest at 2 — larger singular values get more bits, the
  Delta-CoMe recipe).
* **dense** — vectors (norm scales, biases): fp32, they are tiny.

Quantisation (`transfer.skillpack.quantize`) is asymmetric per group of ``group_size`` values (scale
and minimum in fp16), codes chosen by ``quantizer``:
* ``"rtn"`` — round to nearest: a value's error is at most half a step, (max − min) / (2·(2^b − 1));
* ``"gptq"`` — GPTQ error compensation with calibration inputs, the reference's quantiser (its
  ``Adaptive-Compression/llama.py``): for Δ = Aᵀ B, first B (the input-side factor) against
  H_x = E[x xᵀ] of the layer's inputs, then A against H_z = B̂ H_x B̂ᵀ — the second moment of
  z = B̂ x, the inputs A actually sees once B is quantised — each block of directions with
  its own bit width quantised separately, as the reference does. Both quantisers store the
  same layout and bytes; only the codes differ. `calibration_hessians` gathers H_x.

The file format: ``skillpack.safetensors`` (tensors only: nothing is unpickled) and
``skillpack.json`` (format version, base-model fingerprint, config, per-module kind, shape,
rank and bit schedule, and the SHA-256 of the tensor file). `SkillPack.load` refuses a file
whose checksum does not match, and `apply` refuses a pack built on another base model.

Deviations from the reference
-----------------------------
* GPTQ's calibration inputs come from one pass of the fine-tuned model over calibration
  batches (every layer sees unquantised inputs); the reference feeds each layer the outputs of
  the already-quantised layers before it (sequential quantisation). Σ is split as Σ^½ into
  both factors; the reference keeps U, V unscaled and Σ in fp16 (its A-side inputs are Σ V̂ᵀ x).
* The per-module policy is by name pattern (embedding/head pruned, all other matrices
  low-rank), as in the paper; the reference's per-model scripts tune β and the schedule by hand.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import torch
from torch import nn

from transfer.common.language_models import fingerprint
from transfer.skillpack.quantize import dequantize_rows, gptq_quantize, quantize_rows

FORMAT = "clsuite-skillpack"
VERSION = 1
MANIFEST = "skillpack.json"
PAYLOAD = "skillpack.safetensors"
SUPPORTED_BITS = (2, 4, 8, 16)
QUANTIZERS = ("rtn", "gptq")


class SkillPackError(ValueError):
    """A pack that cannot be used as asked: wrong base model, damaged file, bad config."""


# --------------------------------------------------------------------------- config

@dataclass(frozen=True)
class CompressionConfig:
    """How each module's delta is stored (see the module docstring)."""

    energy: float = 0.9
    """β: keep the smallest rank whose singular values hold this fraction of Σσ²"""
    max_rank: int | None = None
    """upper bound on the kept rank (None: only β decides)"""
    bit_schedule: tuple[tuple[int, int], ...] = ((20, 8), (180, 4), (-1, 2))
    """(number of singular directions, bits) from the largest down; -1 = all the rest"""
    group_size: int = 128
    prune_pattern: str = r"(^|\.)(embed_tokens|wte|word_embeddings|lm_head)$"
    """modules (names without .weight) pruned by magnitude instead of factorised"""
    prune_density: float = 0.1
    """fraction of a pruned module's entries kept"""
    skip_pattern: str = ""
    """parameters left out of the pack entirely (regex over parameter names)"""
    quantizer: str = "rtn"
    """"rtn" (round to nearest) or "gptq" (error compensation; needs calibration Hessians)"""
    damp: float = 0.01
    """GPTQ dampening: λ = damp · mean(diag H)"""

    def __post_init__(self):
        object.__setattr__(self, "bit_schedule", tuple(tuple(x) for x in self.bit_schedule))
        if not 0 < self.energy <= 1:
            raise SkillPackError(f"CompressionConfig.energy must be in (0, 1], got {self.energy}")
        if not 0 < self.prune_density <= 1:
            raise SkillPackError(f"CompressionConfig.prune_density must be in (0, 1], got {self.prune_density}")
        if self.quantizer not in QUANTIZERS:
            raise SkillPackError(f"CompressionConfig.quantizer must be one of {QUANTIZERS}, got {self.quantizer!r}")
        if not self.damp > 0:
            raise SkillPackError(f"CompressionConfig.damp must be > 0, got {self.damp}")
        if self.group_size < 1:
            raise SkillPackError(f"CompressionConfig.group_size must be ≥ 1, got {self.group_size}")
        if self.max_rank is not None and self.max_rank < 1:
            raise SkillPackError(f"CompressionConfig.max_rank must be ≥ 1 or None, got {self.max_rank}")
        for i, (count, bits) in enumerate(self.bit_schedule):
            if bits not in SUPPORTED_BITS:
                raise SkillPackError(f"CompressionConfig.bit_schedule: {bits} bits unsupported; use {SUPPORTED_BITS}")
            if count == -1 and i != len(self.bit_schedule) - 1:
                raise SkillPackError("CompressionConfig.bit_schedule: only the last entry may be -1 (the rest)")
            if count < 1 and count != -1:
                raise SkillPackError(f"CompressionConfig.bit_schedule: counts must be ≥ 1 or -1, got {count}")

    def bits_for(self, rank: int) -> list[tuple[int, int]]:
        """The schedule cut to `rank` directions: [(count, bits), ...] summing to rank."""
        out, left = [], rank
        for count, bits in self.bit_schedule:
            take = left if count == -1 else min(count, left)
            if take > 0:
                out.append((take, bits))
                left -= take
        if left > 0:                                   # schedule shorter than the rank: the rest at its last width
            out.append((left, self.bit_schedule[-1][1]))
        return out


# --------------------------------------------------------------------------- rank

def energy_rank(singular_values: torch.Tensor, energy: float, max_rank: int | None = None) -> int:
    """The smallest k with Σ_{i≤k} σᵢ² ≥ energy · Σ σ² (at least 1; at most max_rank)."""
    power = singular_values.double() ** 2
    total = power.sum()
    if total == 0:
        return 1
    cumulative = torch.cumsum(power, 0) / total
    k = int(torch.searchsorted(cumulative, torch.tensor(energy, dtype=cumulative.dtype) - 1e-12).item()) + 1
    k = min(k, len(singular_values))
    return min(k, max_rank) if max_rank else k


# --------------------------------------------------------------------------- one module's delta

@dataclass
class EncodedDelta:
    """One parameter's compressed delta: its kind, shape, layout and stored tensors."""

    kind: str                                   # "lowrank" | "prune" | "dense"
    shape: tuple[int, ...]
    tensors: dict[str, torch.Tensor]
    rank: int = 0
    schedule: list[tuple[int, int]] = field(default_factory=list)
    group_size: int = 128
    density: float = 1.0

    def decode(self) -> torch.Tensor:
        if self.kind == "dense":
            return self.tensors["values"].float().view(self.shape)
        if self.kind == "prune":
            out = torch.zeros(math.prod(self.shape))
            out[self.tensors["index"].long()] = self.tensors["values"].float()
            return out.view(self.shape)
        a_rows, b_rows = [], []                        # A stored transposed: one row per direction
        out_dim, in_dim = self.shape
        for part, (count, bits) in enumerate(self.schedule):
            a_rows.append(dequantize_rows(_sub(self.tensors, f"a{part}"), bits, (count, out_dim), self.group_size))
            b_rows.append(dequantize_rows(_sub(self.tensors, f"b{part}"), bits, (count, in_dim), self.group_size))
        return torch.cat(a_rows).T @ torch.cat(b_rows)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    def describe(self) -> dict:
        return {"kind": self.kind, "shape": list(self.shape), "rank": self.rank,
                "schedule": [list(s) for s in self.schedule], "group_size": self.group_size,
                "density": self.density, "bytes": self.nbytes()}


def _sub(tensors: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def factorised(name: str, delta: torch.Tensor, config: CompressionConfig) -> bool:
    """Whether the policy stores this parameter's delta as quantised low-rank factors."""
    return delta.dim() == 2 and not re.search(config.prune_pattern, name.removesuffix(".weight"))


def encode(name: str, delta: torch.Tensor, config: CompressionConfig, hessian: torch.Tensor | None = None
           ) -> EncodedDelta:
    """Compress one parameter's delta by the config's policy for `name`.

    `hessian`: E[x xᵀ] of the layer's inputs (in × in), needed when ``config.quantizer == "gptq"``.
    """
    delta = delta.detach().float().cpu()
    if delta.dim() != 2:
        return EncodedDelta("dense", tuple(delta.shape), {"values": delta.clone()})
    if not factorised(name, delta, config):
        keep = max(1, int(round(config.prune_density * delta.numel())))
        index = delta.abs().flatten().topk(keep).indices.sort().values
        return EncodedDelta("prune", tuple(delta.shape),
                            {"index": index.int(), "values": delta.flatten()[index].half()},
                            density=config.prune_density)
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    k = energy_rank(s, config.energy, config.max_rank)
    root = s[:k].sqrt()
    a = (u[:, :k] * root).T.contiguous()               # k × out: row i is direction i
    b = (root.unsqueeze(1) * vh[:k]).contiguous()      # k × in
    schedule = config.bits_for(k)
    if config.quantizer == "gptq":
        if hessian is None or tuple(hessian.shape) != (delta.shape[1],) * 2:
            found = "none" if hessian is None else tuple(hessian.shape)
            raise SkillPackError(f"{name}: CompressionConfig.quantizer='gptq' needs its inputs' Hessian "
                                 f"({delta.shape[1]} × {delta.shape[1]}, got {found}); pass hessians="
                                 "transfer.skillpack.quantize.calibration_hessians(model, batches, deltas)")
        stored_a, stored_b = _gptq_factors(a, b, hessian.float().cpu(), schedule, config)
    else:
        parts = _parts(schedule)
        stored_a = [quantize_rows(a[rows], bits, config.group_size) for rows, bits in parts]
        stored_b = [quantize_rows(b[rows], bits, config.group_size) for rows, bits in parts]
    tensors = {}
    for part, (part_a, part_b) in enumerate(zip(stored_a, stored_b)):
        tensors.update({f"a{part}.{key}": value for key, value in part_a.items()})
        tensors.update({f"b{part}.{key}": value for key, value in part_b.items()})
    return EncodedDelta("lowrank", tuple(delta.shape), tensors, rank=k, schedule=schedule,
                        group_size=config.group_size)


def _parts(schedule: Sequence[tuple[int, int]]) -> list[tuple[slice, int]]:
    """The schedule as (row slice of the factors, bits)."""
    out, start = [], 0
    for count, bits in schedule:
        out.append((slice(start, start + count), bits))
        start += count
    return out


def _gptq_factors(a: torch.Tensor, b: torch.Tensor, hessian: torch.Tensor, schedule, config: CompressionConfig):
    """GPTQ of B against the layer's inputs, then of A against B̂'s outputs, one bit block at a time."""
    stored_a, stored_b = [], []
    for rows, bits in _parts(schedule):
        part_b = gptq_quantize(b[rows], hessian, bits, config.group_size, grid_along="rows", damp=config.damp)
        b_hat = dequantize_rows(part_b, bits, b[rows].shape, config.group_size)
        z_hessian = b_hat @ hessian @ b_hat.T                     # E[z zᵀ], z = B̂ x: what A's block sees
        stored_a.append(gptq_quantize(a[rows].T, z_hessian, bits, config.group_size, grid_along="columns",
                                      damp=config.damp))
        stored_b.append(part_b)
    return stored_a, stored_b


# --------------------------------------------------------------------------- deltas

def extract(base: nn.Module | Mapping[str, torch.Tensor], tuned: nn.Module | Mapping[str, torch.Tensor]
            ) -> dict[str, torch.Tensor]:
    """Δθ = θ_tuned − θ_base for every parameter that changed (fp32, on the CPU).

    Either side may be a module or a name → tensor mapping (e.g. parameters cloned before training)."""
    base_params = dict(base.named_parameters()) if isinstance(base, nn.Module) else dict(base)
    tuned_params = dict(tuned.named_parameters()) if isinstance(tuned, nn.Module) else dict(tuned)
    if base_params.keys() != tuned_params.keys():
        missing = sorted(base_params.keys() ^ tuned_params.keys())[:5]
        raise SkillPackError(f"extract: base and tuned models have different parameters (e.g. {missing})")
    deltas = {}
    for name, param in base_params.items():
        other = tuned_params[name]
        if other.shape != param.shape:
            raise SkillPackError(f"extract: {name} is {tuple(param.shape)} in base, {tuple(other.shape)} in tuned")
        delta = other.detach().float().cpu() - param.detach().float().cpu()
        if delta.abs().max() > 0:
            deltas[name] = delta
    return deltas


# --------------------------------------------------------------------------- the pack

@dataclass
class SkillPack:
    """A named skill: the compressed deltas of one fine-tune, for one base model."""

    name: str
    base_fingerprint: str
    config: CompressionConfig
    modules: dict[str, EncodedDelta]
    metadata: dict = field(default_factory=dict)

    @classmethod
    def compress(cls, name: str, deltas: Mapping[str, torch.Tensor], base: nn.Module | str,
                 config: CompressionConfig | None = None, metadata: dict | None = None,
                 hessians: Mapping[str, torch.Tensor] | None = None) -> "SkillPack":
        """`base`: the base model (fingerprinted here) or its fingerprint. `hessians`: per weight
        name, E[x xᵀ] of its layer's inputs (`transfer.skillpack.quantize.calibration_hessians`) — GPTQ only."""
        config = config or CompressionConfig()
        skip = re.compile(config.skip_pattern) if config.skip_pattern else None
        hessians = hessians or {}
        modules = {n: encode(n, d, config, hessians.get(n)) for n, d in deltas.items()
                   if not (skip and skip.search(n))}
        fp = base if isinstance(base, str) else fingerprint(base)
        return cls(name, fp, config, modules, dict(metadata or {}))

    def deltas(self) -> dict[str, torch.Tensor]:
        return {name: encoded.decode() for name, encoded in self.modules.items()}

    def nbytes(self) -> int:
        """Bytes of the stored tensors (the manifest adds a few KB)."""
        return sum(m.nbytes() for m in self.modules.values())

    def delta_parameters(self) -> int:
        return sum(math.prod(m.shape) for m in self.modules.values())

    def bits_per_parameter(self) -> float:
        return 8 * self.nbytes() / max(1, self.delta_parameters())

    def summary(self) -> dict:
        return {"name": self.name, "bytes": self.nbytes(), "delta_parameters": self.delta_parameters(),
                "bits_per_parameter": self.bits_per_parameter(), "config": asdict(self.config),
                "modules": {n: m.describe() for n, m in self.modules.items()}}

    # ---- files
    def save(self, directory: str | Path) -> Path:
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {f"{name}::{key}": value.contiguous() for name, m in self.modules.items()
                   for key, value in m.tensors.items()}
        save_file(tensors, str(directory / PAYLOAD))
        manifest = {"format": FORMAT, "version": VERSION, "name": self.name,
                    "base_fingerprint": self.base_fingerprint, "config": asdict(self.config),
                    "metadata": self.metadata,
                    "modules": {n: {k: v for k, v in m.describe().items() if k != "bytes"}
                                for n, m in self.modules.items()},
                    "payload_sha256": _sha256(directory / PAYLOAD)}
        (directory / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
        return directory

    @classmethod
    def load(cls, directory: str | Path, *, base: nn.Module | None = None) -> "SkillPack":
        """Read a pack (tensors via safetensors only); checks the checksum, and the base model if given."""
        from safetensors.torch import load_file

        directory = Path(directory)
        try:
            manifest = json.loads((directory / MANIFEST).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise SkillPackError(f"{directory / MANIFEST}: not a readable SkillPack manifest ({error})") from error
        if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
            raise SkillPackError(f"{directory}: not a {FORMAT} v{VERSION} pack "
                                 f"(format {manifest.get('format')!r}, version {manifest.get('version')!r})")
        payload = directory / PAYLOAD
        if not payload.is_file() or _sha256(payload) != manifest["payload_sha256"]:
            raise SkillPackError(f"{payload}: checksum mismatch — the file is truncated, altered or missing; "
                                 "re-save the pack from its source")
        tensors = load_file(str(payload))
        modules = {}
        for name, info in manifest["modules"].items():
            own = {k.split("::", 1)[1]: v for k, v in tensors.items() if k.split("::", 1)[0] == name}
            modules[name] = EncodedDelta(info["kind"], tuple(info["shape"]), own, rank=info["rank"],
                                         schedule=[tuple(s) for s in info["schedule"]],
                                         group_size=info["group_size"], density=info["density"])
        pack = cls(manifest["name"], manifest["base_fingerprint"], CompressionConfig(**manifest["config"]),
                   modules, manifest.get("metadata", {}))
        if base is not None:
            pack.check_base(base)
        return pack

    def check_base(self, model: nn.Module, model_fingerprint: str | None = None) -> None:
        found = model_fingerprint or fingerprint(model)
        if found != self.base_fingerprint:
            raise SkillPackError(f"SkillPack {self.name!r} was built for base model {self.base_fingerprint[:12]}…, "
                                 f"not this one ({found[:12]}…): apply it to the model it was extracted from")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------- applying and fusing

class Applied:
    """Deltas added to a model; `remove()` restores the touched parameters bit for bit."""

    def __init__(self, model: nn.Module, deltas: Mapping[str, torch.Tensor], scale: float = 1.0):
        params = dict(model.named_parameters())
        unknown = [n for n in deltas if n not in params]
        if unknown:
            raise SkillPackError(f"the model has no parameters {unknown[:5]}: wrong model for these deltas")
        self._model = model
        self._originals = {}
        with torch.no_grad():
            for name, delta in deltas.items():
                param = params[name]
                if tuple(param.shape) != tuple(delta.shape):
                    raise SkillPackError(f"{name}: delta {tuple(delta.shape)} does not fit {tuple(param.shape)}")
                self._originals[name] = param.detach().clone()
                param.add_(delta.to(param.device, param.dtype), alpha=scale)

    def remove(self) -> None:
        params = dict(self._model.named_parameters())
        with torch.no_grad():
            for name, original in self._originals.items():
                params[name].copy_(original)
        self._originals.clear()

    def __enter__(self) -> "Applied":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def apply(model: nn.Module, pack: SkillPack | Sequence[SkillPack], scale: float = 1.0, *, check: bool = True,
          model_fingerprint: str | None = None) -> Applied:
    """θ = θ_base + scale · Σ decode(pack): one pack or several (summed). Use as a context manager
    or call `.remove()`. `check` verifies every pack was built on this model."""
    packs = [pack] if isinstance(pack, SkillPack) else list(pack)
    if check:
        found = model_fingerprint or fingerprint(model)
        for p in packs:
            p.check_base(model, found)
    total: dict[str, torch.Tensor] = {}
    for p in packs:
        for name, delta in p.deltas().items():
            total[name] = total[name] + delta if name in total else delta
    return Applied(model, total, scale)


FUSION_METHODS = ("task_arithmetic", "ties", "dare_linear", "dare_ties", "magnitude_prune")


def fuse(packs: Sequence[SkillPack], method: str = "task_arithmetic", weights: Sequence[float] | None = None,
         density: float = 0.5) -> dict[str, torch.Tensor]:
    """One merged delta from several packs (the merging baselines), via peft's merge utilities."""
    from peft.utils import merge_utils

    if method not in FUSION_METHODS:
        raise SkillPackError(f"fuse: method must be one of {FUSION_METHODS}, got {method!r}")
    if len({p.base_fingerprint for p in packs}) != 1:
        raise SkillPackError("fuse: the packs were built on different base models")
    weights_t = torch.tensor(list(weights) if weights is not None else [1.0] * len(packs))
    decoded = [p.deltas() for p in packs]
    names = sorted(set().union(*decoded))
    merged = {}
    for name in names:
        shape = next(d[name].shape for d in decoded if name in d)
        tensors = [d.get(name, torch.zeros(shape)) for d in decoded]
        if method == "task_arithmetic":
            merged[name] = merge_utils.task_arithmetic(tensors, weights_t)
        elif method in ("ties", "dare_ties"):
            merged[name] = getattr(merge_utils, method)(tensors, weights_t, density, majority_sign_method="total")
        else:
            merged[name] = getattr(merge_utils, method)(tensors, weights_t, density)
    return merged
