"""FPF and k-FPF: fine-tune only the modules that forget, on a small buffer.

Haiyan Zhao, Tianyi Zhou, Guodong Long, Jing Jiang, Chengqi Zhang, "Does Continual Learning
Equally Forget All Parameters?", ICML 2023, arXiv 2304.04158. No public code exists; this is
built from the paper's abstract, introduction and Fig. 2, and the choices below fill the rest.

What the paper says (verified):
- Only a few modules are task-specific and change sharply between tasks; forgetting is
  attributed mainly to them (§3, training-dynamics analysis).
- FPF (Forgetting Prioritized Finetuning): at the end of any CL method, fine-tune only those
  modules for a few iterations on the buffer (`FPFPlugin`, added to any strategy).
- k-FPF: no every-step replay; plain SGD on the current data, and k times during the whole
  stream, periodically and regardless of task boundaries, FPF on the buffer (`KFPFPlugin`,
  strategies `kfpf_ce` and `kfpf_kd`). k-FPF-KD also matches the logits stored with each
  buffered sample (as DER does); k-FPF-CE uses cross-entropy only.
- A sensitivity score selects the modules automatically from their training dynamics.

Our choices, where the paper as available to us is silent:
- Module = a leaf module that owns parameters (Conv2d, BatchNorm, Linear, ...).
- Sensitivity of module m (`SensitivityTracker`): for each experience, the L1 change of its
  parameters from the experience's start to its end, divided by its parameter count; averaged
  over experiences (a second-hand description of the paper's score; BN running statistics
  are buffers, not parameters, and are not scored).
- Selection by pattern: ``bn`` = every batch-norm layer, ``fc`` = the last Linear,
  ``conv1`` = the first convolution, anything else a regular expression searched in the
  qualified module names; ``auto`` = modules by descending sensitivity, greedily, while their
  parameters fit in `max_param_fraction` of the model's (the stem conv, 144 parameters, fits
  whenever it ranks high). ``[bn, fc]`` is what the paper reports for ResNet-18.
- One FPF call = `iterations` SGD steps (weight decay 0; momentum `momentum`, default 0 as in
  mammoth, the code base the paper's experiments build on — its own value is not in the text available
  to us; a fresh optimiser each call) with batches drawn uniformly from the buffer; the selected
  batch-norm layers run in train mode (their statistics follow the buffer), every other module in eval
  mode, so nothing outside the selection changes. When only the final linear layer is tuned, its input
  is a fixed function of the sample, so it is computed once per buffer sample and cached (same updates;
  the FLOPs counted are those run).
- k-FPF: T = Σ_experiences ⌈n_e / batch⌉ × epochs_e (the run's per-experience schedule; Avalanche keeps
  the short last batch; n_e without the validation samples, if any); FPF after iterations
  round(i·T/k), i = 1..k (`trigger_steps`), so the k-th call is on the last iteration and the final
  evaluation sees a freshly fine-tuned model. (Until issue #28 the calls came every ⌊T/k⌋ iterations:
  on the published grid, T = 945 and k = 8, the last call was on iteration 944 and the task-end
  evaluations of tasks 1–4 came 24–95 SGD steps after a call.) `fpf/calls.json` says where every call
  fell, what it tuned and — with the probe — the test accuracy per seen experience right before and
  right after it (`fpf/acc_before`, `fpf/acc_after` metrics; the probe reads test data only to report).
  The buffer is a reservoir (Vitter's Algorithm R) over every training sample seen, each stored with
  the logits of the forward pass that saw it. KD loss = CE + β·MSE(logits, stored logits), over all outputs.
- Choosing a call's setting (`tune`, ours, for the issue-#28 ceiling): `valid_per_class` images per class
  are carved from each experience's training data with a fixed seed (never trained on, never in the
  buffer); the last call tries every (modules, lr) of the candidate groups from the same model state,
  checkpointing the listed step counts, and keeps the best on that split (`fpf/val_acc/...` metrics).
- `FPFPlugin` fine-tunes on the strategy's own buffer when it has one (Avalanche's
  `storage_policy`: Replay, Dark-ER, ER-ACE, GDumb) with cross-entropy; otherwise it keeps a
  reservoir of `mem_size` samples itself. It runs when a `train()` call ends (after every
  experience with the suite's runner), or with ``at: end`` after the last experience only.
- Registered defaults (k = 100, 100 iterations, lr 0.05, modules [bn, fc], momentum 0) are those the
  published grid's configs resolve to, and their hashes are pinned; new grids state every setting and
  use ``modules: [auto]`` (by sensitivity, within `max_param_fraction`: on ResNet-32 at 2% it takes the
  head, the stem conv and the BN layers, as the run's own scores rank them) or the patterns they compare.
- Cost: FPF's FLOPs are counted on its first iteration and extrapolated (`cl.cost`).
"""
from __future__ import annotations

import json
import math
import re
from typing import Iterable, Sequence

import numpy as np
import torch
from avalanche.core import SupervisedPlugin
from avalanche.training.templates import SupervisedTemplate
from torch import nn
from torch.nn import functional as F

from cl.cost import count_flops
from cl.strategy_api import StrategyContext, storage_policy

# --------------------------------------------------------------------------- module selection


def parametric_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Leaf modules that own parameters, by qualified name, in definition order."""
    return {name: module for name, module in model.named_modules()
            if name and not list(module.children()) and any(True for _ in module.parameters(recurse=False))}


def module_size(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters(recurse=False))


ALIASES = {
    "bn": lambda modules: [n for n, m in modules.items() if isinstance(m, nn.modules.batchnorm._BatchNorm)],
    "fc": lambda modules: [n for n, m in modules.items() if isinstance(m, nn.Linear)][-1:],
    "conv1": lambda modules: [n for n, m in modules.items() if isinstance(m, nn.Conv2d)][:1],
}


def select_by_pattern(model: nn.Module, patterns: Sequence[str]) -> list[str]:
    """Names of the modules matching any pattern (an alias of `ALIASES` or a regex), in network order.

    An alias may match nothing (an MLP has no batch norm) as long as the selection is not
    empty; a regular expression must match, since a typo should not go unnoticed.
    """
    modules = parametric_modules(model)
    chosen: set[str] = set()
    for pattern in patterns:
        if pattern in ALIASES:
            chosen.update(ALIASES[pattern](modules))
            continue
        try:
            regex = re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"modules: {pattern!r} is not a valid regular expression ({exc})") from None
        hits = [n for n in modules if regex.search(n)]
        if not hits:
            raise ValueError(f"modules: {pattern!r} matches no module with parameters; "
                             f"modules are: {', '.join(modules)}")
        chosen.update(hits)
    if not chosen:
        raise ValueError(f"modules: {list(patterns)} select nothing in this model; modules are: {', '.join(modules)}")
    return [n for n in modules if n in chosen]


def select_by_score(model: nn.Module, scores: dict[str, float], max_param_fraction: float) -> list[str]:
    """The most sensitive modules whose parameters together fit in the budget (greedy)."""
    modules = parametric_modules(model)
    budget = max_param_fraction * sum(module_size(m) for m in modules.values())
    chosen, used = [], 0
    for name in sorted(scores, key=scores.get, reverse=True):
        size = module_size(modules[name])
        if used + size <= budget:
            chosen.append(name)
            used += size
    if not chosen:   # the single most sensitive module, even if it alone exceeds the budget
        chosen = [max(scores, key=scores.get)]
    return [n for n in modules if n in chosen]


class SensitivityTracker:
    """Per-module L1 parameter change per experience, divided by the module's size."""

    def __init__(self):
        self.per_experience: list[dict[str, float]] = []
        self._start: dict[str, torch.Tensor] | None = None

    @staticmethod
    def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
        return {name: torch.cat([p.detach().flatten() for p in m.parameters(recurse=False)]).cpu().clone()
                for name, m in parametric_modules(model).items()}

    def start(self, model: nn.Module) -> None:
        self._start = self._snapshot(model)

    def _changes(self, model: nn.Module) -> dict[str, float]:
        now = self._snapshot(model)
        return {name: float((now[name] - before).abs().sum() / before.numel())
                for name, before in self._start.items() if name in now and now[name].shape == before.shape}

    def end(self, model: nn.Module) -> None:
        if self._start is not None:
            self.per_experience.append(self._changes(model))
            self._start = None

    def scores(self, model: nn.Module) -> dict[str, float]:
        """Mean change over finished experiences (or the running one, before any has finished)."""
        rows = self.per_experience or ([self._changes(model)] if self._start is not None else [])
        if not rows:
            return {}
        names = set(rows[0]).intersection(*rows[1:])
        return {name: float(np.mean([row[name] for row in rows])) for name in names}

    def artifacts(self, model: nn.Module, prefix: str = "fpf") -> dict[str, bytes]:
        from cl import plots

        scores = self.scores(model)
        if not scores:
            return {}
        ordered = [n for n in parametric_modules(model) if n in scores]
        data = {"score": {n: scores[n] for n in ordered}, "per_experience": self.per_experience}
        return {f"{prefix}/sensitivity.json": json.dumps(data, indent=1).encode(),
                f"{prefix}/sensitivity.png": plots.to_png(
                    plots.sensitivity_bars(ordered, [scores[n] for n in ordered]))}


# --------------------------------------------------------------------------- the buffer


class ReservoirBuffer:
    """Reservoir sampling (Vitter 1985, Algorithm R): after n insertions, every sample seen
    is in the buffer with probability capacity / n. Optionally stores each sample's logits."""

    def __init__(self, capacity: int, *, seed: int = 0, store_logits: bool = False):
        self.capacity = capacity
        self.store_logits = store_logits
        self.seen = 0
        self.x: torch.Tensor | None = None
        self.y: torch.Tensor | None = None
        self.logits: torch.Tensor | None = None
        self._generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return min(self.seen, self.capacity)

    def add(self, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor | None = None) -> None:
        x, y = x.detach().cpu(), y.detach().cpu()
        if self.x is None:
            self.x = torch.empty((self.capacity, *x.shape[1:]), dtype=x.dtype)
            self.y = torch.empty(self.capacity, dtype=y.dtype)
            if self.store_logits:
                self.logits = torch.empty((self.capacity, logits.shape[1]), dtype=torch.float32)
        if self.store_logits:
            logits = logits.detach().float().cpu()
        for i in range(len(x)):
            if self.seen < self.capacity:
                slot = self.seen
            else:
                slot = int(torch.randint(self.seen + 1, (1,), generator=self._generator))
            self.seen += 1
            if slot < self.capacity:
                self.x[slot], self.y[slot] = x[i], y[i]
                if self.store_logits:
                    self.logits[slot] = logits[i]

    def sample_index(self, batch_size: int) -> torch.Tensor:
        """Slots of a batch drawn uniformly without replacement from the filled ones."""
        return torch.randperm(len(self), generator=self._generator)[:batch_size]

    def sample(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """A batch drawn uniformly without replacement from the filled slots."""
        index = self.sample_index(batch_size)
        logits = self.logits[index] if self.store_logits else None
        return self.x[index], self.y[index], logits

    def n_exemplars(self) -> int:
        return len(self)


class _TensorBuffer:
    """A strategy's buffer materialised as tensors, sampled like a reservoir."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, seed: int):
        self.x, self.y = x, y
        self._generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.y)

    logits = None

    def sample_index(self, batch_size: int) -> torch.Tensor:
        return torch.randperm(len(self), generator=self._generator)[:batch_size]

    def sample(self, batch_size: int):
        index = self.sample_index(batch_size)
        return self.x[index], self.y[index], None


def strategy_buffer(strategy, seed: int) -> _TensorBuffer | None:
    """The exemplars of an Avalanche strategy with a `storage_policy` (Replay, Dark-ER, ...)."""
    policy = storage_policy(strategy)
    if policy is None or len(policy.buffer) == 0:
        return None
    items = [policy.buffer[i] for i in range(len(policy.buffer))]
    return _TensorBuffer(torch.stack([item[0] for item in items]),
                         torch.as_tensor([int(item[1]) for item in items]), seed)


# --------------------------------------------------------------------------- fine-tuning


def _is_final_linear(model: nn.Module, module: nn.Module, x: torch.Tensor, device) -> bool:
    """Whether the model's output is `module` applied to what `module` receives (so, with the rest of the
    model frozen and in eval mode, its input can be computed once and cached)."""
    if not isinstance(module, nn.Linear):
        return False
    seen = []
    handle = module.register_forward_hook(lambda m, inputs, output: seen.append((inputs[0], output)))
    try:
        with torch.no_grad():
            output = model(x[:2].to(device))
    finally:
        handle.remove()
    return len(seen) == 1 and seen[0][1].shape == output.shape and torch.equal(seen[0][1], output)


class FineTuner:
    """One FPF call: SGD on the selected modules only, everything else bit-for-bit unchanged.

    `on_step(step)` is called after the steps listed in `report_at` (the tuning's checkpoints). When the
    selection is the final linear layer alone, every other module is frozen and in eval mode, so its input
    is a fixed function of the sample: it is computed once per buffer sample and cached (identical updates,
    a fraction of the compute; the FLOPs counted are the ones run).
    """

    def __init__(self, *, iterations: int, lr: float, batch_size: int, beta: float = 0.0, momentum: float = 0.0):
        self.iterations = iterations
        self.lr = lr
        self.batch_size = batch_size
        self.beta = beta
        self.momentum = momentum
        self.flops = 0.0
        self.calls = 0

    def __call__(self, model: nn.Module, module_names: Iterable[str], buffer, device, *, iterations: int | None = None,
                 lr: float | None = None, report_at: Sequence[int] = (), on_step=None) -> None:
        iterations = self.iterations if iterations is None else iterations
        lr = self.lr if lr is None else lr
        modules = parametric_modules(model)
        selected = [modules[n] for n in module_names]
        params = [p for m in selected for p in m.parameters(recurse=False)]
        was_training = model.training
        requires = {p: p.requires_grad for p in model.parameters()}
        for p in model.parameters():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        model.eval()
        for m in selected:
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.train()
        optimizer = torch.optim.SGD(params, lr=lr, momentum=self.momentum)
        try:
            head = selected[0] if len(selected) == 1 else None
            if head is not None and _is_final_linear(model, head, buffer.x[:2], device):
                self._tune_head(model, head, optimizer, buffer, device, iterations, report_at, on_step)
            else:
                self._tune(model, optimizer, buffer, device, iterations, report_at, on_step)
        finally:
            for p, flag in requires.items():
                p.requires_grad_(flag)
            model.train(was_training)
        self.calls += 1

    def _tune(self, model, optimizer, buffer, device, iterations, report_at, on_step) -> None:
        for step in range(iterations):
            x, y, logits = buffer.sample(self.batch_size)
            if step == 0:
                _, flops = count_flops(self._step, model, optimizer, x, y, logits, device)
                per_sample = flops / len(x)
            else:
                self._step(model, optimizer, x, y, logits, device)
            self.flops += per_sample * len(x)
            if on_step is not None and step + 1 in report_at:
                on_step(step + 1)

    def _tune_head(self, model, head, optimizer, buffer, device, iterations, report_at, on_step) -> None:
        inputs = []
        handle = head.register_forward_hook(lambda m, args, output: inputs.append(args[0].detach()))
        try:
            with torch.no_grad():
                (_, flops) = count_flops(lambda: [model(buffer.x[i:i + 256].to(device))
                                                  for i in range(0, len(buffer), 256)])
        finally:
            handle.remove()
        self.flops += flops
        features = torch.cat(inputs)
        for step in range(iterations):
            index = buffer.sample_index(self.batch_size)
            logits = buffer.logits[index] if getattr(buffer, "logits", None) is not None else None
            batch = (head, optimizer, features[index], buffer.y[index], logits, device)
            if step == 0:
                _, flops = count_flops(self._step, *batch)
                per_sample = flops / len(index)
            else:
                self._step(*batch)
            self.flops += per_sample * len(index)
            if on_step is not None and step + 1 in report_at:
                on_step(step + 1)

    def _step(self, model, optimizer, x, y, logits, device) -> None:
        x, y = x.to(device), y.to(device)
        optimizer.zero_grad(set_to_none=True)
        output = model(x)
        loss = F.cross_entropy(output, y)
        if self.beta > 0 and logits is not None:
            loss = loss + self.beta * F.mse_loss(output, logits.to(device))
        loss.backward()
        optimizer.step()


class _FPFBase(SupervisedPlugin):
    """Module selection, sensitivity tracking and the fine-tuner shared by FPF and k-FPF."""

    def __init__(self, *, modules: Sequence[str] | str, max_param_fraction: float, tuner: FineTuner):
        super().__init__()
        self.modules = modules
        self.max_param_fraction = max_param_fraction
        self.tuner = tuner
        self.sensitivity = SensitivityTracker()
        self.selections: list[list[str]] = []
        self._model: nn.Module | None = None     # for the artifacts written after the run

    def selected_modules(self, model: nn.Module) -> list[str]:
        return self.resolve(model, self.modules)

    def resolve(self, model: nn.Module, modules: Sequence[str] | str) -> list[str]:
        """Module names for a selection: patterns, or 'auto' (by this run's sensitivity scores)."""
        if modules == "auto" or list(modules) == ["auto"]:
            scores = self.sensitivity.scores(model)
            if scores:
                return select_by_score(model, scores, self.max_param_fraction)
            return select_by_pattern(model, ["bn", "fc"])
        return select_by_pattern(model, list(modules))

    def run_fpf(self, strategy, buffer) -> None:
        if buffer is None or len(buffer) == 0:
            return
        names = self.selected_modules(strategy.model)
        self.selections.append(names)
        self.tuner(strategy.model, names, buffer, strategy.device)

    def before_training(self, strategy, **kwargs):
        self._model = strategy.model

    def before_training_exp(self, strategy, **kwargs):
        self.sensitivity.start(strategy.model)

    def after_training_exp(self, strategy, **kwargs):
        self.sensitivity.end(strategy.model)

    def extra_train_flops(self) -> float:
        return self.tuner.flops

    def artifacts(self) -> dict[str, bytes]:
        """Per-module sensitivity (JSON + bar plot) and the modules each FPF call tuned."""
        out = self.sensitivity.artifacts(self._model) if self._model is not None else {}
        out["fpf/selections.json"] = json.dumps(
            {"calls": self.tuner.calls, "selections": self.selections}, indent=1).encode()
        return out


class FPFPlugin(_FPFBase):
    """FPF on top of any strategy: fine-tune the selected modules on the buffer after training."""

    def __init__(self, *, modules: Sequence[str] | str = ("bn", "fc"), max_param_fraction: float = 0.02,
                 iterations: int = 100, lr: float = 0.05, batch_size: int = 32, at: str = "every_experience",
                 mem_size: int = 200, n_experiences: int | None = None, seed: int = 0, momentum: float = 0.0):
        super().__init__(modules=modules, max_param_fraction=max_param_fraction,
                         tuner=FineTuner(iterations=iterations, lr=lr, batch_size=batch_size, momentum=momentum))
        if at not in ("every_experience", "end"):
            raise ValueError(f"at: {at!r}; use 'every_experience' or 'end'")
        if at == "end" and n_experiences is None:
            raise ValueError("at='end' needs n_experiences (the stream's length)")
        self.at = at
        self.n_experiences = n_experiences
        self.seed = seed
        self.own_buffer: ReservoirBuffer | None = None
        self._mem_size = mem_size
        self._trained = 0

    def before_training(self, strategy, **kwargs):
        super().before_training(strategy)
        if self.own_buffer is None and storage_policy(strategy) is None:
            self.own_buffer = ReservoirBuffer(self._mem_size, seed=self.seed)

    def after_training_iteration(self, strategy, **kwargs):
        if self.own_buffer is not None:
            self.own_buffer.add(strategy.mb_x, strategy.mb_y)

    def after_training_exp(self, strategy, **kwargs):
        super().after_training_exp(strategy)
        self._trained += 1

    def after_training(self, strategy, **kwargs):
        if self.at == "end" and self._trained < self.n_experiences:
            return
        buffer = self.own_buffer
        if buffer is None:
            buffer = strategy_buffer(strategy, self.seed + self._trained)
        self.run_fpf(strategy, buffer)

    def n_exemplars(self) -> int:
        return len(self.own_buffer) if self.own_buffer is not None else 0


def trigger_steps(total_iterations: int, k: int) -> list[int]:
    """The training iterations after which k-FPF calls FPF: round(i·T/k), i = 1..k (halves round up).

    Evenly spread over the whole stream, regardless of task boundaries, and the k-th call is on the
    last iteration T, so the model is evaluated right after a fine-tuning, never after plain SGD steps.
    """
    if not 1 <= k <= total_iterations:
        raise ValueError(f"k ({k}) must be between 1 and the stream's {total_iterations} training iterations")
    return [(2 * i * total_iterations + k) // (2 * k) for i in range(1, k + 1)]


def split_validation(targets: Sequence[int], per_class: int, seed: int = 0) -> tuple[list[int], list[int]]:
    """(train, validation) indices: `per_class` samples of every class held out, drawn with a fixed seed
    (the same split for every method and training seed). A class needs more than `per_class` samples."""
    targets = np.asarray(targets)
    rng = np.random.default_rng(seed)
    held = []
    for c in np.unique(targets):
        members = np.flatnonzero(targets == c)
        if len(members) <= per_class:
            raise ValueError(f"valid_per_class: {per_class} leaves nothing to train on for class {int(c)} "
                             f"({len(members)} training samples in its experience); lower it")
        held.extend(rng.choice(members, per_class, replace=False).tolist())
    held_set = set(held)
    return [i for i in range(len(targets)) if i not in held_set], sorted(held)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device, batch_size: int = 256) -> float:
    """Top-1 accuracy in eval mode (BN statistics untouched, no RNG drawn); the mode is restored."""
    was_training = model.training
    model.eval()
    correct = 0
    try:
        with torch.no_grad():
            for i in range(0, len(y), batch_size):
                correct += int((model(x[i:i + batch_size].to(device)).argmax(1).cpu() == y[i:i + batch_size]).sum())
    finally:
        model.train(was_training)
    return correct / max(1, len(y))


def _label(modules: Sequence[str], lr: float, iterations: int) -> str:
    return f"{'-'.join(modules)}/lr{lr:g}/it{iterations}"


class KFPFPlugin(_FPFBase):
    """k-FPF: reservoir insertion every step, FPF after iterations round(i·T/k), i = 1..k.

    Optional, for the measurements of issue #28: `valid_per_class` carves a validation set from each
    experience's training data (the model never trains on it); `tune` (needs it) chooses the last call's
    modules, lr and iterations on that set, every candidate starting from the same model state; the probe
    measures test accuracy per seen experience right before and right after FPF calls.
    """

    def __init__(self, *, total_iterations: int, k: int, mem_size: int, modules: Sequence[str] | str = ("bn", "fc"),
                 max_param_fraction: float = 0.02, iterations: int = 100, lr: float = 0.05, batch_size: int = 32,
                 beta: float = 0.0, momentum: float = 0.0, seed: int = 0, valid_per_class: int = 0,
                 tune: Sequence[dict] = (), probe: str = "last", probe_sets: Sequence[tuple] = (),
                 n_experiences: int | None = None):
        super().__init__(modules=modules, max_param_fraction=max_param_fraction,
                         tuner=FineTuner(iterations=iterations, lr=lr, batch_size=batch_size, beta=beta,
                                         momentum=momentum))
        if probe not in ("last", "all", "none"):
            raise ValueError(f"probe: {probe!r}; use 'last', 'all' or 'none'")
        if tune and valid_per_class < 1:
            raise ValueError("tune: choosing the FPF setting needs a validation split; set valid_per_class ≥ 1")
        self.k = k
        self.total_iterations = total_iterations
        self.schedule = trigger_steps(total_iterations, k)
        self.buffer = ReservoirBuffer(mem_size, seed=seed, store_logits=beta > 0)
        self.iteration = 0
        self.triggered_at: list[int] = []
        self.valid_per_class = valid_per_class
        self.tune = [dict(group) for group in tune]
        self.probe = probe
        self.probe_sets = list(probe_sets)       # per experience: (x, y) test samples
        self.valid_x: list[torch.Tensor] = []
        self.valid_y: list[torch.Tensor] = []
        self.calls: list[dict] = []               # where each call fell and what it did
        self.n_experiences = n_experiences

    # ------------------------------------------------------------------ the stream

    def after_train_dataset_adaptation(self, strategy, **kwargs):
        if self.valid_per_class < 1:
            return
        dataset = strategy.adapted_dataset
        keep, held = split_validation(list(dataset.targets), self.valid_per_class,
                                      seed=strategy.clock.train_exp_counter)
        items = [dataset.eval()[i] for i in held]           # no train-time augmentation on validation
        self.valid_x.append(torch.stack([item[0] for item in items]))
        self.valid_y.append(torch.as_tensor([int(item[1]) for item in items]))
        strategy.adapted_dataset = dataset.subset(keep)

    def after_training_iteration(self, strategy, **kwargs):
        self.buffer.add(strategy.mb_x, strategy.mb_y, strategy.mb_output if self.buffer.store_logits else None)
        self.iteration += 1
        if len(self.triggered_at) < self.k and self.iteration == self.schedule[len(self.triggered_at)]:
            self.triggered_at.append(self.iteration)
            self._call(strategy, last=len(self.triggered_at) == self.k)

    def after_training(self, strategy, **kwargs):
        finished = self.n_experiences is not None and strategy.clock.train_exp_counter >= self.n_experiences
        if (finished or len(self.calls) == self.k) and self.iteration != self.total_iterations:
            raise RuntimeError(f"k-FPF counted {self.iteration} training iterations, expected "
                               f"{self.total_iterations}: the schedule assumed the wrong stream length")

    def _call(self, strategy, *, last: bool) -> None:
        model, device = strategy.model, strategy.device
        seen = strategy.clock.train_exp_counter + 1
        record = {"call": len(self.triggered_at), "iteration": self.iteration, "experience": seen - 1,
                  "of_total": self.total_iterations}
        probing = self.probe == "all" or (self.probe == "last" and last)
        if probing:
            record["acc_before"] = self._probe(model, device, seen)
        if last and self.tune:
            record["tuned"] = self._tune_and_apply(strategy)
            self.selections.append(record["tuned"]["modules"])
        else:
            names = self.selected_modules(model)
            self.selections.append(names)
            record["modules"] = names
            self.tuner(model, names, self.buffer, device)
        if probing:
            record["acc_after"] = self._probe(model, device, seen)
        self.calls.append(record)

    def _probe(self, model, device, seen: int) -> dict:
        """Test accuracy per seen experience and overall (sample-weighted)."""
        per, total, correct = [], 0, 0.0
        for x, y in self.probe_sets[:seen]:
            acc = accuracy(model, x, y, device)
            per.append(acc)
            total += len(y)
            correct += acc * len(y)
        return {"per_experience": per, "seen": correct / max(1, total)}

    # ------------------------------------------------------------------ choosing the last call on validation

    def _tune_and_apply(self, strategy) -> dict:
        model, device = strategy.model, strategy.device
        x, y = torch.cat(self.valid_x), torch.cat(self.valid_y)
        start = {k: v.clone() for k, v in model.state_dict().items()}
        results = {"before": accuracy(model, x, y, device), "candidates": {}}
        best = None
        for group in self.tune:
            for modules in group["modules"]:
                names = self.resolve(model, modules)
                for lr in group["lr"]:
                    model.load_state_dict(start)

                    def checkpoint(step, modules=modules, names=names, lr=lr):
                        nonlocal best
                        acc = accuracy(model, x, y, device)
                        label = _label(modules, lr, step)
                        results["candidates"][label] = acc
                        if best is None or acc > best[0]:
                            best = (acc, label, {"modules": names, "patterns": list(modules), "lr": lr,
                                                 "iterations": step},
                                    {k: v.clone() for k, v in model.state_dict().items()})

                    steps = sorted(group["iterations"])
                    self.tuner(model, names, self.buffer, device, iterations=steps[-1], lr=lr,
                               report_at=steps, on_step=checkpoint)
        model.load_state_dict(best[3])
        return {**best[2], "val_acc": best[0], "label": best[1], "val_acc_before": results["before"],
                "val_candidates": results["candidates"], "val_samples": len(y)}

    # ------------------------------------------------------------------ what the run keeps

    def run_metrics(self) -> list[tuple[int, dict[str, float]]]:
        """Per call (at its training iteration): the probe's accuracies; for the tuned call every candidate's
        validation accuracy; and a summary of the last call."""
        out = []
        for record in self.calls:
            values = {"fpf/call_iteration": float(record["iteration"])}
            for when in ("before", "after"):
                probe = record.get(f"acc_{when}")
                if probe:
                    values[f"fpf/acc_{when}"] = probe["seen"]
                    values.update({f"fpf/acc_{when}/exp{j}": a for j, a in enumerate(probe["per_experience"])})
            tuned = record.get("tuned")
            if tuned:
                values["fpf/val_acc_before"] = tuned["val_acc_before"]
                values["fpf/val_acc_chosen"] = tuned["val_acc"]
                values["fpf/chosen_lr"] = tuned["lr"]
                values["fpf/chosen_iterations"] = float(tuned["iterations"])
                values.update({f"fpf/val_acc/{label}": acc for label, acc in tuned["val_candidates"].items()})
            out.append((record["iteration"], values))
        if self.calls:
            out.append((self.iteration, {"fpf/calls": float(len(self.calls)),
                                         "fpf/last_call_iteration": float(self.calls[-1]["iteration"]),
                                         "fpf/total_iterations": float(self.total_iterations)}))
        return out

    def artifacts(self) -> dict[str, bytes]:
        out = super().artifacts()
        out["fpf/calls.json"] = json.dumps({"total_iterations": self.total_iterations, "k": self.k,
                                            "schedule": self.schedule, "counted_iterations": self.iteration,
                                            "calls": self.calls}, indent=1).encode()
        return out

    def n_exemplars(self) -> int:
        return len(self.buffer)

    def persistent_state_bytes(self) -> int:
        return 0 if self.buffer.logits is None else self.buffer.logits.numel() * 4


# --------------------------------------------------------------------------- builders


def stream_iterations(scenario, train, valid_per_class: int = 0) -> int:
    """Training iterations of the whole stream: Σ_e ⌈n_e / batch⌉ × epochs_e, where n_e excludes the validation
    samples carved from experience e (Avalanche's loader keeps the last, smaller batch)."""
    total = 0
    for i, experience in enumerate(scenario.benchmark.train_stream):
        n = len(experience.dataset)
        if valid_per_class:
            n = len(split_validation(list(experience.dataset.targets), valid_per_class, seed=i)[0])
        total += math.ceil(n / train.batch_size) * train.for_experience(i)["epochs"]
    return total


def probe_sets(scenario, per_class: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per test experience, up to `per_class` samples of each of its classes (fixed draw), as tensors."""
    out = []
    rng = np.random.default_rng(seed)
    for experience in scenario.benchmark.test_stream:
        dataset = experience.dataset
        targets = np.asarray(list(dataset.targets))
        index = sorted(i for c in np.unique(targets) for i in rng.permutation(np.flatnonzero(targets == c))[:per_class])
        items = [dataset[int(i)] for i in index]
        out.append((torch.stack([item[0] for item in items]), torch.as_tensor([int(item[1]) for item in items])))
    return out


def _modules_option(params):
    return "auto" if params.modules == ["auto"] else params.modules


def build_fpf_plugin(ctx: StrategyContext, params) -> FPFPlugin:
    return FPFPlugin(modules=_modules_option(params), max_param_fraction=params.max_param_fraction,
                     iterations=params.iterations, lr=params.lr, momentum=params.momentum,
                     batch_size=params.batch_size or ctx.train.batch_size, at=params.at,
                     mem_size=params.mem_size, n_experiences=ctx.scenario.n_experiences,
                     seed=int(torch.initial_seed()) % 2**31)


def _build_kfpf(ctx: StrategyContext, params, beta: float) -> SupervisedTemplate:
    plugin = KFPFPlugin(total_iterations=stream_iterations(ctx.scenario, ctx.train, params.valid_per_class),
                        k=params.k, mem_size=params.mem_size, modules=_modules_option(params),
                        max_param_fraction=params.max_param_fraction, iterations=params.iterations,
                        lr=params.lr, momentum=params.momentum,
                        batch_size=params.batch_size or ctx.train.batch_size, beta=beta,
                        seed=int(torch.initial_seed()) % 2**31, valid_per_class=params.valid_per_class,
                        tune=[group.model_dump() for group in params.tune or ()], probe=params.probe,
                        probe_sets=probe_sets(ctx.scenario, params.probe_per_class) if params.probe != "none" else (),
                        n_experiences=ctx.scenario.n_experiences)
    return SupervisedTemplate(model=ctx.model, optimizer=ctx.optimizer, criterion=ctx.criterion,
                              **ctx.template_kwargs([plugin]))


def build_kfpf_ce(ctx: StrategyContext, params) -> SupervisedTemplate:
    return _build_kfpf(ctx, params, beta=0.0)


def build_kfpf_kd(ctx: StrategyContext, params) -> SupervisedTemplate:
    return _build_kfpf(ctx, params, beta=params.beta)


# --------------------------------------------------------------------------- checkpoints (cl.checkpoint)
# Kept apart from the method above: what FPF and k-FPF carry between experiences — the reservoir (samples,
# logits, count seen, its generator), the sensitivity history, the selections and the fine-tuning tally.


def _reservoir_state(buffer: ReservoirBuffer | None) -> dict | None:
    if buffer is None:
        return None
    return {"capacity": buffer.capacity, "store_logits": buffer.store_logits, "seen": buffer.seen,
            "x": buffer.x, "y": buffer.y, "logits": buffer.logits, "generator": buffer._generator.get_state()}


def _load_reservoir(state: dict | None) -> ReservoirBuffer | None:
    if state is None:
        return None
    buffer = ReservoirBuffer(int(state["capacity"]), store_logits=bool(state["store_logits"]))
    buffer.seen, buffer.x, buffer.y, buffer.logits = int(state["seen"]), state["x"], state["y"], state["logits"]
    buffer._generator.set_state(state["generator"])
    return buffer


def _fpf_common_state(plugin: _FPFBase) -> dict:
    return {"sensitivity": plugin.sensitivity.per_experience, "selections": plugin.selections,
            "tuner_flops": plugin.tuner.flops, "tuner_calls": plugin.tuner.calls}


def _load_fpf_common(plugin: _FPFBase, state: dict) -> None:
    plugin.sensitivity.per_experience = [{k: float(v) for k, v in row.items()} for row in state["sensitivity"]]
    plugin.selections = [list(names) for names in state["selections"]]
    plugin.tuner.flops, plugin.tuner.calls = float(state["tuner_flops"]), int(state["tuner_calls"])


def _save_fpf(plugin: FPFPlugin, ctx) -> dict:
    return {**_fpf_common_state(plugin), "own_buffer": _reservoir_state(plugin.own_buffer), "trained": plugin._trained}


def _load_fpf(plugin: FPFPlugin, state: dict, ctx) -> None:
    _load_fpf_common(plugin, state)
    plugin.own_buffer = _load_reservoir(state["own_buffer"])
    plugin._trained = int(state["trained"])


def _save_kfpf(plugin: KFPFPlugin, ctx) -> dict:
    return {**_fpf_common_state(plugin), "buffer": _reservoir_state(plugin.buffer), "iteration": plugin.iteration,
            "triggered_at": list(plugin.triggered_at)}


def _load_kfpf(plugin: KFPFPlugin, state: dict, ctx) -> None:
    _load_fpf_common(plugin, state)
    plugin.buffer = _load_reservoir(state["buffer"])
    plugin.iteration = int(state["iteration"])
    plugin.triggered_at = [int(i) for i in state["triggered_at"]]


def _register_checkpoints() -> None:
    from cl.checkpoint import register_state

    register_state(FPFPlugin, _save_fpf, _load_fpf)
    register_state(KFPFPlugin, _save_kfpf, _load_kfpf)


_register_checkpoints()
