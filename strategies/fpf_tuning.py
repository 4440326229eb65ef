"""One FPF call: SGD on the selected modules only, on batches from a buffer; and the accuracy it is judged by.

Part of FPF / k-FPF (`strategies.fpf`): everything outside the selection stays bit-for-bit unchanged.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from cl.cost import count_flops
from strategies.fpf_selection import parametric_modules


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
