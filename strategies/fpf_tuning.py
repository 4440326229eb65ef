"""One FPF call: SGD on the selected modules only, on batches from a buffer; and the accuracy it is judged by.

Part of FPF / k-FPF (`strategies.fpf`): everything outside the selection stays bit-for-bit unchanged. The loss
(`BufferLoss`) is cross-entropy on the buffer's labels, optionally plus the logit matching of DER (Buzzega et al.
2020): k-FPF-KD's, and FPF's ``loss: host`` on Dark-ER (`strategies.fpf_host`) — one implementation for both.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from cl.cost import count_flops
from strategies.fpf_selection import parametric_modules


@dataclass(frozen=True)
class BufferLoss:
    """`ce` · CE(output, y) + `logits` · MSE(output, stored logits), on a batch drawn from the buffer.

    The MSE is DER's logit matching (Buzzega et al., NeurIPS 2020, §3: the Euclidean distance between the logits and
    those stored with the sample, here averaged over the batch and every output as `F.mse_loss` and Avalanche's
    `DER` do); with `ce` > 0 on buffer labels it is DER++'s objective restricted to the buffer (§3.1). k-FPF-KD uses
    `ce` = 1, `logits` = its β (Zhao et al. 2023). A term with weight 0 is not computed.
    """

    ce: float = 1.0
    logits: float = 0.0

    @property
    def uses_logits(self) -> bool:
        return self.logits > 0

    def __call__(self, output: torch.Tensor, y: torch.Tensor, stored: torch.Tensor | None) -> torch.Tensor:
        loss = output.new_zeros(())
        if self.ce > 0:
            ce = F.cross_entropy(output, y)
            loss = ce if self.ce == 1 else self.ce * ce
        if self.uses_logits:
            if stored is None:
                raise ValueError("logit matching needs the logits stored with each buffer sample; this buffer has none")
            loss = loss + self.logits * F.mse_loss(output, stored.to(output.device))
        return loss


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

    def __init__(self, *, iterations: int, lr: float, batch_size: int, loss: BufferLoss = BufferLoss(),
                 momentum: float = 0.0):
        self.iterations = iterations
        self.lr = lr
        self.batch_size = batch_size
        self.loss = loss
        self.momentum = momentum
        self.flops = 0.0
        self.calls = 0

    def __call__(self, model: nn.Module, module_names: Iterable[str], buffer, device, *, iterations: int | None = None,
                 lr: float | None = None, report_at: Sequence[int] = (), on_step=None,
                 loss: BufferLoss | None = None) -> None:
        """`loss` replaces the tuner's own for this call (FPF's host loss is known only once the host is)."""
        loss = self.loss if loss is None else loss
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
                self._tune_head(model, head, optimizer, buffer, device, iterations, report_at, on_step, loss)
            else:
                self._tune(model, optimizer, buffer, device, iterations, report_at, on_step, loss)
        finally:
            for p, flag in requires.items():
                p.requires_grad_(flag)
            model.train(was_training)
        self.calls += 1

    def _tune(self, model, optimizer, buffer, device, iterations, report_at, on_step, loss=None) -> None:
        loss = self.loss if loss is None else loss
        for step in range(iterations):
            x, y, logits = buffer.sample(self.batch_size)
            if step == 0:
                _, flops = count_flops(self._step, model, optimizer, x, y, logits, device, loss)
                per_sample = flops / len(x)
            else:
                self._step(model, optimizer, x, y, logits, device, loss)
            self.flops += per_sample * len(x)
            if on_step is not None and step + 1 in report_at:
                on_step(step + 1)

    def _tune_head(self, model, head, optimizer, buffer, device, iterations, report_at, on_step, loss) -> None:
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
            batch = (head, optimizer, features[index], buffer.y[index], logits, device, loss)
            if step == 0:
                _, flops = count_flops(self._step, *batch)
                per_sample = flops / len(index)
            else:
                self._step(*batch)
            self.flops += per_sample * len(index)
            if on_step is not None and step + 1 in report_at:
                on_step(step + 1)

    @staticmethod
    def _step(model, optimizer, x, y, logits, device, loss: BufferLoss) -> None:
        x, y = x.to(device), y.to(device)
        optimizer.zero_grad(set_to_none=True)
        loss(model(x), y, logits).backward()
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
