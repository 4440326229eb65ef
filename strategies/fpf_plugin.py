"""The FPF plugin: after a strategy trains, fine-tune its forgetting-prone modules on the buffer.

Part of FPF / k-FPF (`strategies.fpf`). `FPFBase` holds what FPF and k-FPF share: resolving the
selection (patterns or sensitivity), tracking sensitivity per experience, the fine-tuner, the probe (test
accuracy per seen experience right before and right after a call) and the files a run keeps.
"""
from __future__ import annotations

import json
from typing import Sequence

from avalanche.core import SupervisedPlugin
from torch import nn

from cl.strategy_api import storage_policy
from strategies.fpf_buffers import ReservoirBuffer, strategy_buffer
from strategies.fpf_host import host_loss
from strategies.fpf_selection import SensitivityTracker, select_by_pattern, select_by_score
from strategies.fpf_tuning import BufferLoss, FineTuner, accuracy

PROBES = ("last", "all", "none")


class FPFBase(SupervisedPlugin):
    """Module selection, sensitivity tracking, the fine-tuner and the probe shared by FPF and k-FPF.

    The probe (`probe`: the last call, every call or none) measures the test accuracy of each seen experience on
    `probe_sets` (per experience, (x, y) test samples) right before and right after a call; it reads test data
    only to report, in eval mode, drawing no random numbers, so it leaves training unchanged.
    """

    def __init__(self, *, modules: Sequence[str] | str, max_param_fraction: float, tuner: FineTuner,
                 probe: str = "none", probe_sets: Sequence[tuple] = ()):
        super().__init__()
        if probe not in PROBES:
            raise ValueError(f"probe: {probe!r}; use 'last', 'all' or 'none'")
        self.modules = modules
        self.max_param_fraction = max_param_fraction
        self.tuner = tuner
        self.sensitivity = SensitivityTracker()
        self.selections: list[list[str]] = []
        self.probe = probe
        self.probe_sets = list(probe_sets)       # per experience: (x, y) test samples
        self.calls: list[dict] = []               # per call: where it fell and what it did
        self._model: nn.Module | None = None     # for the artifacts written after the run

    def probing(self, last: bool) -> bool:
        return self.probe == "all" or (self.probe == "last" and last)

    def _probe(self, model, device, seen: int, buffer=None) -> dict:
        """Test accuracy per seen experience and overall (sample-weighted); with `buffer`, also the accuracy on the
        samples FPF fine-tunes on — the buffer near 100% while test accuracy falls is FPF overfitting its buffer."""
        per, total, correct = [], 0, 0.0
        for x, y in self.probe_sets[:seen]:
            acc = accuracy(model, x, y, device)
            per.append(acc)
            total += len(y)
            correct += acc * len(y)
        out = {"per_experience": per, "seen": correct / max(1, total)}
        if buffer is not None and len(buffer):
            out["buffer"] = accuracy(model, buffer.x[:len(buffer)], buffer.y[:len(buffer)], device)
        return out

    @staticmethod
    def probe_metrics(record: dict) -> dict[str, float]:
        """A call's probe as metrics: fpf/acc_before, fpf/acc_after, per experience …/exp<j>, and the buffer's
        accuracy fpf/buffer_acc_before, …_after."""
        values = {}
        for when in ("before", "after"):
            probe = record.get(f"acc_{when}")
            if probe:
                values[f"fpf/acc_{when}"] = probe["seen"]
                if "buffer" in probe:
                    values[f"fpf/buffer_acc_{when}"] = probe["buffer"]
                values.update({f"fpf/acc_{when}/exp{j}": a for j, a in enumerate(probe["per_experience"])})
        return values

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


class FPFPlugin(FPFBase):
    """FPF on top of any strategy: fine-tune the selected modules on the buffer after training.

    `loss`: ``ce`` — cross-entropy on the buffer's labels (the paper's FPF); ``host`` — the host strategy's own
    replay loss on its buffer (`strategies.fpf_host`: Dark-ER's logit matching with its α and β; Replay's
    cross-entropy), resolved from the strategy when training starts.
    """

    def __init__(self, *, modules: Sequence[str] | str = ("bn", "fc"), max_param_fraction: float = 0.02,
                 iterations: int = 100, lr: float = 0.05, batch_size: int = 32, at: str = "every_experience",
                 mem_size: int = 200, n_experiences: int | None = None, seed: int = 0, momentum: float = 0.0,
                 loss: str = "ce", probe: str = "none", probe_sets: Sequence[tuple] = ()):
        super().__init__(modules=modules, max_param_fraction=max_param_fraction,
                         tuner=FineTuner(iterations=iterations, lr=lr, batch_size=batch_size, momentum=momentum),
                         probe=probe, probe_sets=probe_sets)
        if at not in ("every_experience", "end"):
            raise ValueError(f"at: {at!r}; use 'every_experience' or 'end'")
        if at == "end" and n_experiences is None:
            raise ValueError("at='end' needs n_experiences (the stream's length)")
        if probe == "last" and n_experiences is None:
            raise ValueError("probe='last' needs n_experiences (the stream's length)")
        if loss not in ("ce", "host"):
            raise ValueError(f"loss: {loss!r}; use 'ce' (cross-entropy on the buffer) or 'host' (the host's own "
                             "replay loss)")
        self.at = at
        self.n_experiences = n_experiences
        self.seed = seed
        self.loss = loss
        self.buffer_loss: BufferLoss = BufferLoss()
        self.own_buffer: ReservoirBuffer | None = None
        self._mem_size = mem_size
        self._trained = 0

    def before_training(self, strategy, **kwargs):
        super().before_training(strategy)
        if self.loss == "host":
            self.buffer_loss = host_loss(strategy)
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
        if buffer is None or len(buffer) == 0:
            return
        model, device = strategy.model, strategy.device
        last = self.n_experiences is not None and self._trained >= self.n_experiences
        record = {"call": len(self.calls) + 1, "experience": self._trained - 1}
        probing = self.probing(last)
        if probing:
            record["acc_before"] = self._probe(model, device, self._trained, buffer)
        record["modules"] = self.selected_modules(model)
        self.selections.append(record["modules"])
        self.tuner(model, record["modules"], buffer, device, loss=self.buffer_loss)
        if probing:
            record["acc_after"] = self._probe(model, device, self._trained, buffer)
        self.calls.append(record)

    def run_metrics(self) -> list[tuple[int, dict[str, float]]]:
        """Per call (at the index of the experience it followed): the probe's accuracies."""
        out = [(record["experience"], values) for record in self.calls if (values := self.probe_metrics(record))]
        if out:
            out.append((self.calls[-1]["experience"], {"fpf/calls": float(len(self.calls))}))
        return out

    def artifacts(self) -> dict[str, bytes]:
        out = super().artifacts()
        out["fpf/calls.json"] = json.dumps({"loss": self.loss, "weights": {"ce": self.buffer_loss.ce,
                                                                           "logits": self.buffer_loss.logits},
                                            "calls": self.calls}, indent=1).encode()
        return out

    def n_exemplars(self) -> int:
        return len(self.own_buffer) if self.own_buffer is not None else 0
