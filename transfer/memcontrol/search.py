"""MemControl: search for the subset of a model's blocks to fine-tune, trading memorisation against quality.

Paper: Raman Dutt, Ondrej Bohdal, Pedro Sanchez, Sotirios A. Tsaftaris, Timothy Hospedales,
"MemControl: Mitigating Memorization in Diffusion Models via Automated Parameter Selection",
WACV 2025, arXiv 2405.19458. Reference code: github.com/Raman1121/Diffusion_Memorization_HPO
(read to understand the method; nothing here is copied from it).

What is the paper's:
- the search space — a binary mask over the model's blocks (for Stable Diffusion v1.5, its
  cross-attention transformer blocks) plus the learning rate, log-uniform;
- a parameter-efficient fine-tuning (PEFT) method inside each selected block, nothing
  outside the selected blocks trains;
- the bi-level loop: an Optuna study over (mask, lr) — outer; fine-tune with the mask on
  data in which a subset is repeated many times, then measure the objectives — inner;
- two objectives, both minimised: memorisation (a noise-magnitude detector) and generation
  quality (FID with a domain feature extractor), NSGA-II as the multi-objective sampler;
- the Pareto front of the completed trials, and a second stage that retrains with the chosen
  mask.

What is ours (the paper does not fix it, or we generalise it):
- `MemControlSearch` is model-agnostic: any torch model (or a factory of fresh copies), a
  list of named `Block`s (dotted module paths), a PEFT recipe per block, a fine-tune callable
  ``finetune(model, lr)`` and two objective callables ``f(model) -> float``. The experiment
  on a diffusion model lives in `transfer.memcontrol.experiment` and `transfer.memcontrol.diffusion`.
- PEFT recipes (the paper's are SV-Diff spectral shifts and DiffFit scales and biases, or
  the raw attention weights): ``lora`` — peft's LoRA on every ``nn.Linear``, ``nn.Conv2d``
  and ``nn.Embedding`` inside the block, injected with ``target_modules`` = their full
  names; ``bias`` — the block's biases; ``norm`` — its normalisation layers' affine
  parameters; ``full`` — every parameter of the block.
- An all-zero mask is a legitimate point of the search space: nothing is fine-tuned and the
  model is measured as it is (0 parameters trained).
- Samplers: ``nsga2`` (default, Optuna's `NSGAIISampler` with a configurable population —
  our default 8, for budgets of tens of trials; Optuna's is 50, which would make every trial
  of a small budget a random one), ``tpe``, ``random``; seeded with ``seed`` + the number of
  trials already in the study, so a resumed study does not replay the first proposals.
- The choice rule on the front (the paper shows the front and picks a point; it states no
  rule): ``utopia`` (default) — each objective min–max normalised over the front, the point
  nearest to (0, 0); ``quality_tolerance`` — among front points whose quality objective is
  within ``tolerance`` (relative) of the front's best, the one with the lowest memorisation.
  Ties go to fewer trained parameters, then to the earlier trial.
- Storage and resume: any Optuna storage URL (e.g. ``sqlite:///study.db``); ``run(n_trials)``
  takes the *total* number of completed trials wanted, so a rerun after an interruption
  runs only the missing ones. The study remembers its block names and lr range, and a
  resume with different ones is refused. Running trials beat a heartbeat into the storage; a
  trial whose process was killed is marked FAIL once ``grace_seconds`` pass without a beat.
- Every trial is recorded: as an MLflow child run of a given parent run (`MlflowTrialRecorder`:
  tags ``mlflow.parentRunId``, params = mask bits and lr, metrics = objectives, trained
  parameters; FINISHED, or FAILED with the reason), and/or through any callable recorder.
- A trial whose fine-tuning diverges (`FloatingPointError`) is recorded FAILED and the search
  goes on; any other exception ends the search.
- `initial_masks` (e.g. all blocks, and each block alone) are the study's first trials — enqueued
  once, in a new study — so the sampler starts from the points a researcher would try by hand.
- Stage 2 rebuilds the chosen trial's model exactly: LoRA's random initial weights are drawn from
  a seed derived from (search seed, trial number) (`trial_init_seed`), never from the global RNG,
  so `MemControlSearch.rebuild(result.chosen)` followed by the same fine-tuning gives the same
  weights, hence the same objective values, as the trial did (the paper retrains with the chosen
  mask; it does not say how the initialisation is fixed).
"""
from __future__ import annotations

import copy
import logging
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Sequence

import numpy as np
from torch import nn

log = logging.getLogger(__name__)

RECIPES = ("lora", "bias", "norm", "full")
SAMPLERS = ("nsga2", "tpe", "random")
CHOICES = ("utopia", "quality_tolerance")
NORM_TYPES = (nn.GroupNorm, nn.LayerNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm2d)
LORA_TYPES = (nn.Linear, nn.Conv2d, nn.Embedding)


@dataclass(frozen=True)
class Block:
    """A maskable unit: `name` (used in masks and logs), the dotted path of its `module`, its PEFT `recipe`."""

    name: str
    module: str
    recipe: Literal["lora", "bias", "norm", "full"] = "lora"

    def __post_init__(self):
        if self.recipe not in RECIPES:
            raise ValueError(f"Block {self.name!r}: recipe {self.recipe!r} unknown; one of {', '.join(RECIPES)}")


@dataclass(frozen=True)
class LoraOptions:
    r: int = 4
    alpha: int = 8
    dropout: float = 0.0

    def __post_init__(self):
        if self.r < 1 or self.alpha <= 0 or not 0 <= self.dropout < 1:
            raise ValueError(f"LoraOptions: need r ≥ 1, alpha > 0, 0 ≤ dropout < 1; got {self}")


def _submodule(model: nn.Module, block: Block) -> nn.Module:
    try:
        return model.get_submodule(block.module)
    except AttributeError:
        raise ValueError(f"Block {block.name!r}: module {block.module!r} not found in {type(model).__name__}; "
                         f"use a dotted path from model.named_modules()") from None


def single_block_masks(n: int) -> list[tuple[int, ...]]:
    """The all-blocks mask, then each block alone: the points a search should not have to find by chance."""
    return [(1,) * n] + [tuple(int(i == j) for j in range(n)) for i in range(n)]


def check_mask(blocks: Sequence[Block], mask: Sequence[int]) -> tuple[int, ...]:
    mask = tuple(int(b) for b in mask)
    if len(mask) != len(blocks):
        raise ValueError(f"mask: {len(mask)} bits for {len(blocks)} blocks ({[b.name for b in blocks]})")
    if any(b not in (0, 1) for b in mask):
        raise ValueError(f"mask: bits must be 0 or 1, got {list(mask)}")
    return mask


def lora_targets(model: nn.Module, block: Block) -> list[str]:
    """Full names of the modules LoRA adapts in `block`: its Linear, Conv2d and Embedding layers."""
    root = _submodule(model, block)
    prefix = f"{block.module}." if block.module else ""
    return [prefix + name if name else block.module
            for name, module in root.named_modules() if type(module) in LORA_TYPES]


def trial_init_seed(seed: int, trial: int) -> int:
    """The seed of trial `trial`'s LoRA initial weights: a function of (search seed, trial number) only."""
    return int(np.random.SeedSequence([int(seed), int(trial)]).generate_state(1)[0])


def apply_mask(model: nn.Module, blocks: Sequence[Block], mask: Sequence[int], *,
               lora: LoraOptions = LoraOptions(), init_seed: int | None = None) -> nn.Module:
    """Make exactly the selected blocks' recipe parameters trainable (in place); returns `model`.

    ``lora`` blocks get peft LoRA adapters (only the adapters train); ``bias`` / ``norm`` /
    ``full`` blocks train their biases / normalisation affine parameters / everything. Every
    other parameter is frozen. With `init_seed`, the adapters' random initial weights are drawn
    from it (the global RNG is left as it was); without, from the global RNG.
    """
    mask = check_mask(blocks, mask)
    names = [b.name for b in blocks]
    if len(set(names)) != len(names):
        raise ValueError(f"blocks: names repeat: {names}")
    selected = [b for b, bit in zip(blocks, mask) if bit]
    targets = [t for b in selected if b.recipe == "lora" for t in lora_targets(model, b)]
    if targets:
        from peft import LoraConfig, inject_adapter_in_model

        config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets)
        if init_seed is None:
            model = inject_adapter_in_model(config, model)
        else:
            import torch

            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(init_seed)
                model = inject_adapter_in_model(config, model)
    model.requires_grad_(False)
    for block in selected:
        root = _submodule(model, block)
        if block.recipe == "full":
            root.requires_grad_(True)
        elif block.recipe == "lora":
            for name, p in root.named_parameters():
                if "lora_" in name:
                    p.requires_grad_(True)
        elif block.recipe == "bias":
            for name, p in root.named_parameters():
                if name.rsplit(".", 1)[-1] == "bias":
                    p.requires_grad_(True)
        else:  # norm
            for module in root.modules():
                if isinstance(module, NORM_TYPES):
                    module.requires_grad_(True)
    return model


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


# --------------------------------------------------------------------------- Pareto front and choice


def pareto_indices(values: np.ndarray) -> list[int]:
    """Rows of `values` (n × k, all minimised) that no other row dominates.

    Row j dominates i when it is ≤ in every objective and < in at least one; equal rows do not
    dominate each other (both stay).
    """
    values = np.asarray(values, dtype=float)
    keep = []
    for i, v in enumerate(values):
        dominated = np.any(np.all(values <= v, axis=1) & np.any(values < v, axis=1))
        if not dominated:
            keep.append(i)
    return keep


@dataclass(frozen=True)
class TrialPoint:
    number: int
    mask: tuple[int, ...]
    lr: float
    values: tuple[float, float]        # (memorisation, quality), both minimised
    trainable_params: int

    def as_dict(self, block_names: Sequence[str]) -> dict:
        return {"trial": self.number, "mask": dict(zip(block_names, self.mask)), "lr": self.lr,
                "memorization": self.values[0], "quality": self.values[1],
                "trainable_params": self.trainable_params}


def choose(front: Sequence[TrialPoint], rule: str = "utopia", tolerance: float = 0.1) -> TrialPoint:
    """One point of the Pareto front by `rule` (see the module docstring)."""
    if not front:
        raise ValueError("choose: the Pareto front is empty (no trial completed)")
    if rule not in CHOICES:
        raise ValueError(f"choice rule {rule!r} unknown; one of {', '.join(CHOICES)}")
    v = np.array([p.values for p in front], dtype=float)
    if rule == "utopia":
        span = v.max(0) - v.min(0)
        norm = (v - v.min(0)) / np.where(span > 0, span, 1.0)
        score = np.sqrt((norm ** 2).sum(1))
    else:
        best_q = v[:, 1].min()
        within = v[:, 1] <= best_q + tolerance * abs(best_q)
        score = np.where(within, v[:, 0], np.inf)
    order = sorted(range(len(front)), key=lambda i: (score[i], front[i].trainable_params, front[i].number))
    return front[order[0]]


# --------------------------------------------------------------------------- recording


class MlflowTrialRecorder:
    """Records each trial as an MLflow child run of `parent_run_id` (same experiment)."""

    def __init__(self, client, parent_run_id: str, tags: dict[str, str] | None = None):
        self.client = client
        self.parent_run_id = parent_run_id
        self.tags = dict(tags or {})

    def __call__(self, record: dict) -> None:
        from mlflow.entities import Metric, Param, RunTag

        parent = self.client.get_run(self.parent_run_id)
        run = self.client.create_run(parent.info.experiment_id, tags={
            "mlflow.parentRunId": self.parent_run_id, "mlflow.runName": f"trial {record['trial']}",
            "kind": "memcontrol-trial", "memcontrol.study": record["study"], **self.tags})
        run_id = run.info.run_id
        ts = int(time.time() * 1000)
        params = [Param("trial", str(record["trial"])), Param("lr", repr(record["lr"])),
                  Param("mask", "".join(map(str, record["mask"].values())))]
        params += [Param(f"mask.{name}", str(bit)) for name, bit in record["mask"].items()]
        metrics = [Metric(k, float(v), ts, 0) for k, v in record["metrics"].items()]
        self.client.log_batch(run_id, metrics=metrics, params=params)
        if record["state"] != "COMPLETE":
            self.client.log_batch(run_id, tags=[RunTag("failure_reason", str(record.get("reason", ""))[:5000])])
        self.client.set_terminated(run_id, "FINISHED" if record["state"] == "COMPLETE" else "FAILED")


# --------------------------------------------------------------------------- the search


@dataclass
class SearchResult:
    block_names: tuple[str, ...]
    trials: list[TrialPoint]              # every completed trial, in order
    front: list[TrialPoint]               # the non-dominated ones
    chosen: TrialPoint
    failed: int = 0
    ran_now: int = 0                      # trials run by this call (the rest came from the storage)
    study_name: str = ""

    @property
    def chosen_mask(self) -> dict[str, int]:
        return dict(zip(self.block_names, self.chosen.mask))

    def to_dict(self) -> dict:
        names = self.block_names
        return {"study": self.study_name, "blocks": list(names), "completed": len(self.trials),
                "failed": self.failed, "ran_now": self.ran_now, "chosen": self.chosen.as_dict(names),
                "front": [p.as_dict(names) for p in self.front], "trials": [p.as_dict(names) for p in self.trials]}


@dataclass
class MemControlSearch:
    """Optuna search over (block mask, learning rate) minimising (memorisation, quality objective).

    `model`: an ``nn.Module`` (deep-copied for every trial) or a zero-argument factory of fresh
    models. `finetune(model, lr)` trains the trainable parameters in place; `memorization(model)`
    and `quality(model)` return floats, both minimised (e.g. the noise-magnitude metric and FID).
    """

    model: nn.Module | Callable[[], nn.Module]
    blocks: Sequence[Block]
    finetune: Callable[[nn.Module, float], Any]
    memorization: Callable[[nn.Module], float]
    quality: Callable[[nn.Module], float]
    lr_range: tuple[float, float] = (1e-5, 1e-3)
    lora: LoraOptions = field(default_factory=LoraOptions)
    sampler: Literal["nsga2", "tpe", "random"] = "nsga2"
    population_size: int = 8
    seed: int = 0
    storage: str | None = None             # Optuna storage URL; None = in memory (no resume)
    heartbeat_seconds: int = 60            # a trial's liveness beat in `storage` (stale trials are failed)
    grace_seconds: int = 600               # a RUNNING trial without a beat for this long died with its process
    study_name: str = "memcontrol"
    choice: Literal["utopia", "quality_tolerance"] = "utopia"
    tolerance: float = 0.1
    recorders: Sequence[Callable[[dict], None]] = ()
    objective_names: tuple[str, str] = ("memorization", "quality")
    reference_params: int | None = None    # what "% of parameters trained" refers to (default: all the model's)
    initial_masks: Sequence[Sequence[int]] = ()   # tried first (a new study only), at `initial_lr`
    initial_lr: float | None = None              # default: the geometric middle of lr_range

    def __post_init__(self):
        self.blocks = tuple(self.blocks)
        if not self.blocks:
            raise ValueError("blocks: give at least one Block to search over")
        names = [b.name for b in self.blocks]
        if len(set(names)) != len(names):
            raise ValueError(f"blocks: names repeat: {names}")
        lo, hi = self.lr_range
        if not 0 < lo < hi:
            raise ValueError(f"lr_range: need 0 < low < high, got {self.lr_range}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler: {self.sampler!r} unknown; one of {', '.join(SAMPLERS)}")
        if self.choice not in CHOICES:
            raise ValueError(f"choice: {self.choice!r} unknown; one of {', '.join(CHOICES)}")
        if self.population_size < 2:
            raise ValueError(f"population_size: {self.population_size} must be ≥ 2")
        if not 0 < self.heartbeat_seconds < self.grace_seconds:
            raise ValueError(f"heartbeat_seconds={self.heartbeat_seconds}, grace_seconds={self.grace_seconds}: "
                             "need 0 < heartbeat_seconds < grace_seconds")
        self.initial_masks = tuple(check_mask(self.blocks, m) for m in self.initial_masks)
        if self.initial_lr is not None and not lo <= self.initial_lr <= hi:
            raise ValueError(f"initial_lr: {self.initial_lr} lies outside lr_range {self.lr_range}")
        template = self._fresh()
        for block in self.blocks:
            _submodule(template, block)          # every path exists
        self.total_params_ = self.reference_params or count_parameters(template)

    @property
    def block_names(self) -> tuple[str, ...]:
        return tuple(b.name for b in self.blocks)

    def _fresh(self) -> nn.Module:
        return copy.deepcopy(self.model) if isinstance(self.model, nn.Module) else self.model()

    def build(self, mask: Sequence[int], trial: int = 0) -> nn.Module:
        """A fresh copy of the model with `mask` applied, initialised as trial number `trial` was."""
        return apply_mask(self._fresh(), self.blocks, mask, lora=self.lora,
                          init_seed=trial_init_seed(self.seed, trial))

    def rebuild(self, point: "TrialPoint") -> nn.Module:
        """Stage 2: the chosen trial's model before fine-tuning, exactly (mask and initial weights)."""
        return self.build(point.mask, trial=point.number)

    # ---- study

    def _sampler(self, already: int):
        import optuna

        seed = self.seed + already
        if self.sampler == "nsga2":
            return optuna.samplers.NSGAIISampler(population_size=self.population_size, seed=seed)
        if self.sampler == "tpe":
            return optuna.samplers.TPESampler(seed=seed, multivariate=False)
        return optuna.samplers.RandomSampler(seed=seed)

    def study(self):
        """The Optuna study (created, or loaded from `storage`); its search space is checked on load."""
        import optuna

        if self.storage is None and getattr(self, "_memory_study", None) is not None:
            return self._memory_study               # in memory: the same study across calls
        probe = optuna.create_study(storage=self._storage(), study_name=self.study_name, load_if_exists=True,
                                    directions=["minimize", "minimize"])
        if self.storage is None:
            self._memory_study = probe
        stored = probe.user_attrs
        space = {"blocks": list(self.block_names), "lr_range": [float(x) for x in self.lr_range]}
        if stored.get("blocks") is None:
            for key, value in space.items():
                probe.set_user_attr(key, value)
        elif {k: stored.get(k) for k in space} != space:
            raise ValueError(f"storage: study {self.study_name!r} in {self.storage} searched blocks "
                             f"{stored.get('blocks')} with lr_range {stored.get('lr_range')}; this search has "
                             f"{space['blocks']} and {space['lr_range']}. Use another study_name or storage.")
        probe.sampler = self._sampler(already=len(probe.trials))
        if not probe.trials:
            lr = self.initial_lr or math.sqrt(self.lr_range[0] * self.lr_range[1])
            for mask in self.initial_masks:
                probe.enqueue_trial({**{f"mask.{n}": bit for n, bit in zip(self.block_names, mask)}, "lr": lr})
        return probe

    def _storage(self):
        """The storage URL as an RDB storage with heartbeats, so a trial left RUNNING by a killed process is
        marked FAIL when the study next runs (Optuna's `fail_stale_trials`) instead of staying RUNNING forever."""
        import optuna

        if self.storage is None:
            return None
        if getattr(self, "_rdb", None) is None:
            with warnings.catch_warnings():    # heartbeats are "experimental" in Optuna since 2.9; the API is stable
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                self._rdb = optuna.storages.RDBStorage(self.storage, heartbeat_interval=self.heartbeat_seconds,
                                                       grace_period=self.grace_seconds)
        return self._rdb

    def _objective(self, trial):
        lo, hi = self.lr_range
        mask = tuple(trial.suggest_int(f"mask.{name}", 0, 1) for name in self.block_names)
        lr = trial.suggest_float("lr", lo, hi, log=True)
        started = time.perf_counter()
        record = {"trial": trial.number, "study": self.study_name, "mask": dict(zip(self.block_names, mask)),
                  "lr": lr, "metrics": {}}
        try:
            model = self.build(mask, trial=trial.number)
            trainable = count_parameters(model, trainable_only=True)
            trial.set_user_attr("trainable_params", trainable)
            record["metrics"].update(trainable_params=trainable,
                                     trainable_pct=100.0 * trainable / self.total_params_)
            if trainable:
                self.finetune(model, lr)
            values = (float(self.memorization(model)), float(self.quality(model)))
            if not all(math.isfinite(v) for v in values):
                raise FloatingPointError(f"objectives are not finite: {values}")
        except FloatingPointError as exc:
            record.update(state="FAIL", reason=str(exc))
            record["metrics"]["seconds"] = time.perf_counter() - started
            self._record(record)
            raise
        record["state"] = "COMPLETE"
        record["metrics"].update({self.objective_names[0]: values[0], self.objective_names[1]: values[1],
                                  "seconds": time.perf_counter() - started})
        self._record(record)
        log.info("trial %d mask %s lr %.2e → %s", trial.number, "".join(map(str, mask)), lr, values)
        return values

    def _record(self, record: dict) -> None:
        for recorder in self.recorders:
            recorder(record)

    def run(self, n_trials: int) -> SearchResult:
        """Run until the study holds `n_trials` completed trials (resuming from `storage`); the front and choice."""
        from optuna.trial import TrialState

        if n_trials < 1:
            raise ValueError(f"n_trials: {n_trials} must be ≥ 1")
        study = self.study()
        done = len(study.get_trials(deepcopy=False, states=[TrialState.COMPLETE]))
        ran_now = 0
        attempts = 0
        while done < n_trials and attempts < 3 * n_trials:      # failed trials do not count towards n_trials
            todo = n_trials - done
            study.optimize(self._objective, n_trials=todo, catch=(FloatingPointError,))
            ran_now += todo
            attempts += todo
            done = len(study.get_trials(deepcopy=False, states=[TrialState.COMPLETE]))
        return self.result(study, ran_now=ran_now)

    def result(self, study=None, ran_now: int = 0) -> SearchResult:
        """The completed trials of the study, its Pareto front and the chosen point."""
        from optuna.trial import TrialState

        study = study or self.study()
        points = []
        for t in study.get_trials(deepcopy=False, states=[TrialState.COMPLETE]):
            points.append(TrialPoint(number=t.number, mask=tuple(int(t.params[f"mask.{n}"]) for n in self.block_names),
                                     lr=float(t.params["lr"]), values=(float(t.values[0]), float(t.values[1])),
                                     trainable_params=int(t.user_attrs.get("trainable_params", -1))))
        failed = len(study.get_trials(deepcopy=False, states=[TrialState.FAIL]))
        if not points:
            raise RuntimeError(f"study {self.study_name!r}: no trial completed ({failed} failed); "
                               "lower lr_range or check the fine-tune function")
        front = [points[i] for i in pareto_indices(np.array([p.values for p in points]))]
        return SearchResult(block_names=self.block_names, trials=points, front=front,
                            chosen=choose(front, self.choice, self.tolerance), failed=failed, ran_now=ran_now,
                            study_name=self.study_name)
