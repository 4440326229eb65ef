"""k-FPF: plain SGD on the stream, and k FPF calls on a reservoir spread evenly over all its iterations.

Part of FPF / k-FPF (`strategies.fpf` has the paper and our choices): the trigger schedule, the stream's
length, the validation split carved from training data, the probe sets, and `KFPFPlugin`, which can
choose its last call's setting among candidates on that validation split.
"""
from __future__ import annotations

import json
import math
from typing import Sequence

import numpy as np
import torch

from strategies.fpf_buffers import ReservoirBuffer
from strategies.fpf_plugin import FPFBase
from strategies.fpf_tuning import BufferLoss, FineTuner, accuracy


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


def _label(modules: Sequence[str], lr: float, iterations: int) -> str:
    return f"{'-'.join(modules)}/lr{lr:g}/it{iterations}"


class KFPFPlugin(FPFBase):
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
                         tuner=FineTuner(iterations=iterations, lr=lr, batch_size=batch_size,
                                         loss=BufferLoss(ce=1.0, logits=beta), momentum=momentum),
                         probe=probe, probe_sets=probe_sets)
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
        self.valid_x: list[torch.Tensor] = []
        self.valid_y: list[torch.Tensor] = []
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
        probing = self.probing(last)
        if probing:
            record["acc_before"] = self._probe(model, device, seen, self.buffer)
        if last and self.tune:
            record["tuned"] = self._tune_and_apply(strategy)
            self.selections.append(record["tuned"]["modules"])
        else:
            names = self.selected_modules(model)
            self.selections.append(names)
            record["modules"] = names
            self.tuner(model, names, self.buffer, device)
        if probing:
            record["acc_after"] = self._probe(model, device, seen, self.buffer)
        self.calls.append(record)

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
            values = {"fpf/call_iteration": float(record["iteration"]), **self.probe_metrics(record)}
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
