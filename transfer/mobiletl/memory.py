"""Activation memory of a training step, measured from what autograd actually saves.

`ActivationMeter` is a context manager over `torch.autograd.graph.saved_tensors_hooks`:
every tensor autograd saves for the backward pass goes through its pack hook during the
forward. The counting rule:

- a saved tensor is charged by its *storage* (`untyped_storage().nbytes()`), and each
  storage is charged once, however many ops save it or views of it (a ReLU's output that the
  next convolution also saves costs once);
- storages of the model's parameters and buffers are not activations and are excluded;
- a storage is attributed to the innermost module whose forward was running when it was first
  saved (forward pre/post hooks keep a stack of module names);
- custom autograd functions that save packed or quantised tensors (MobileTL's 1-bit masks,
  4-bit activations) are charged what they store, so the meter reports what the step really
  holds, not a formula.

Only saved tensors are counted: the peak also holds the live outputs and gradients, which
every method needs alike; what a memory-lean transfer method changes is what is saved.

Two totals are reported. ``total_bytes`` is the rule above, "as PyTorch saves it".
``paper_rule_bytes`` is the accounting of the MobileTL paper as we read it: an activation
function's output is the next layer's input and is counted there once, so full-precision
tensors that activation modules (`ACTIVATIONS`) save for themselves are not charged again;
masks are charged at 1 bit per element (bool tensors at numel / 8 bytes; MobileTL's packed
masks already are).
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import torch
from torch import nn


ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.Hardswish, nn.Hardsigmoid, nn.SiLU, nn.GELU, nn.Sigmoid, nn.Tanh,
               nn.LeakyReLU, nn.ELU)


@dataclass
class ActivationReport:
    """Bytes saved for backward: total and by module name ("" = outside any module)."""

    total_bytes: int = 0
    by_module: dict[str, int] = field(default_factory=dict)
    n_tensors: int = 0
    paper_rule_bytes: int = 0

    def bytes_under(self, prefix: str) -> int:
        """Bytes attributed to the module `prefix` and its submodules."""
        return sum(b for name, b in self.by_module.items() if name == prefix or name.startswith(prefix + "."))


class ActivationMeter:
    """Count the activation bytes autograd saves inside the `with` block (see the module docstring).

        with ActivationMeter(model) as meter:
            loss = model(x).sum()
        report = meter.report
    """

    def __init__(self, model: nn.Module | None = None):
        self.model = model
        self.report = ActivationReport()
        self._seen: set[tuple[int, int]] = set()
        self._excluded: set[int] = set()
        self._stack: list[str] = []
        self._handles: list = []
        self._by_module: dict[str, int] = defaultdict(int)
        self._paper_bytes = 0
        self._paper_seen: set[tuple[int, int]] = set()
        self._activation_modules: set[str] = set()
        self._hooks = None

    # ---- context
    def __enter__(self) -> "ActivationMeter":
        if self.model is not None:
            self._excluded = {t.untyped_storage().data_ptr()
                              for t in [*self.model.parameters(), *self.model.buffers()]}
            for name, module in self.model.named_modules():
                if isinstance(module, ACTIVATIONS):
                    self._activation_modules.add(name)
                self._handles.append(module.register_forward_pre_hook(self._enter_module(name)))
                self._handles.append(module.register_forward_hook(self._leave_module))
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.report = ActivationReport(total_bytes=sum(self._by_module.values()),
                                       by_module=dict(self._by_module), n_tensors=len(self._seen),
                                       paper_rule_bytes=self._paper_bytes)

    # ---- hooks
    def _enter_module(self, name: str):
        def hook(module, args):
            self._stack.append(name)
        return hook

    def _leave_module(self, module, args, output):
        if self._stack:
            self._stack.pop()

    def _pack(self, tensor: torch.Tensor):
        storage = tensor.untyped_storage()
        key = (storage.data_ptr(), storage.nbytes())
        if key[0] in self._excluded or storage.nbytes() == 0:
            return tensor
        module = self._stack[-1] if self._stack else ""
        if key not in self._seen:
            self._seen.add(key)
            self._by_module[module] += storage.nbytes()
        if key not in self._paper_seen and not (module in self._activation_modules and tensor.is_floating_point()):
            # an activation's own float save is charged only if a later layer saves the same storage
            self._paper_seen.add(key)
            self._paper_bytes += -(-storage.nbytes() // 8) if tensor.dtype == torch.bool else storage.nbytes()
        return tensor

    @staticmethod
    def _unpack(tensor: torch.Tensor) -> torch.Tensor:
        return tensor


def saved_activation_bytes(model: nn.Module, *inputs: torch.Tensor) -> ActivationReport:
    """The activation report of one forward of `model` on `inputs` (with grad enabled)."""
    with torch.enable_grad(), ActivationMeter(model) as meter:
        model(*inputs)
    return meter.report
