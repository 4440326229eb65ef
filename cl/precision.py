"""Mixed precision for Avalanche strategies: ``train.precision: fp32 | bf16 | fp16``.

A plugin wraps three methods of the strategy it is attached to, on its first training or
evaluation call, so every template and subclass keeps its own code:

- ``forward``, ``criterion`` and the ``before_backward`` plugin event run under
  ``torch.autocast(device, dtype)`` — the model's forward and the whole loss, including the terms
  plugins add before backward (LwF's distillation, EWC's penalty, MEMO's auxiliary loss), in
  training; the forward in evaluation;
- with fp16, ``backward`` scales the loss first (``torch.amp.GradScaler``) and
  ``optimizer_step`` becomes ``scaler.step`` + ``scaler.update``. Plugins that read
  ``strategy.loss`` still see the unscaled loss; gradients seen in ``after_backward`` are scaled
  (as in any AMP loop).

What is not wrapped runs in fp32, unchanged: plugins or strategies that train with their own loop
(FPF's fine-tuning, NMN's fast/slow steps, EWC's importance pass) call the model outside
``strategy.forward`` and so keep full precision; an ``optimizer_step`` that follows no scaled
backward is a plain step. A plugin that reads the model's cached activations later, outside
autocast (MEMO's nearest-mean classifier), sees them in bf16 and must cast them.

fp16 is refused on the CPU (a config error): it needs gradient scaling, which is a CUDA recipe,
and CPU fp16 kernels are slow. bf16 needs no scaler and works on both.
"""
from __future__ import annotations

import logging
from cl.errors import ConfigError

log = logging.getLogger(__name__)

DTYPES = {"bf16": "bfloat16", "fp16": "float16"}


def check_precision(precision: str, device) -> None:
    """Refuse fp16 on a device that is not CUDA (e.g. `device: auto` that resolved to the CPU)."""
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError(f"train.precision: fp16 needs a CUDA device, but this run trains on {device}; "
                          "use precision bf16 (or fp32) on the CPU")


def make_precision_plugin(precision: str, device, *, allow_cpu_fp16: bool = False):
    """The Avalanche plugin for `precision` on `device`, or None for fp32 (nothing to do).

    `allow_cpu_fp16` exists for tests of the scaler's plumbing on machines without a GPU.
    """
    if precision == "fp32":
        return None
    if not allow_cpu_fp16:
        check_precision(precision, device)
    import torch
    from avalanche.core import SupervisedPlugin

    dtype = getattr(torch, DTYPES[precision])

    class MixedPrecisionPlugin(SupervisedPlugin):
        """Autocast around forward+loss; a GradScaler around backward+step for fp16."""

        def __init__(self):
            super().__init__()
            self.precision = precision
            self.device_type = device.type
            self.dtype = dtype
            self.scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
            self.scaled_steps = 0          # optimizer steps that went through the scaler
            self._pending_scaled = False
            self._wrapped: set[int] = set()

        def before_training(self, strategy, **kwargs):
            self._wrap(strategy)

        def before_eval(self, strategy, **kwargs):
            self._wrap(strategy)

        def _wrap(self, strategy) -> None:
            if id(strategy) in self._wrapped:
                return
            self._wrapped.add(id(strategy))
            strategy.forward = self._autocast(strategy.forward)
            strategy.criterion = self._autocast(strategy.criterion)
            strategy._before_backward = self._autocast(strategy._before_backward)   # plugins' loss terms
            if self.scaler is not None:
                strategy.backward = self._scaled_backward(strategy, strategy.backward)
                strategy.optimizer_step = self._scaled_step(strategy, strategy.optimizer_step)

        def _autocast(self, method):
            def run(*args, **kwargs):
                with torch.autocast(self.device_type, dtype=self.dtype):
                    return method(*args, **kwargs)
            return run

        def _scaled_backward(self, strategy, backward):
            def run(*args, **kwargs):
                loss = strategy.loss
                strategy.loss = self.scaler.scale(loss)
                try:
                    backward(*args, **kwargs)
                finally:
                    strategy.loss = loss          # plugins and the logger see the true loss
                self._pending_scaled = True
            return run

        def _scaled_step(self, strategy, step):
            def run(*args, **kwargs):
                if not self._pending_scaled:      # a loop of its own stepped without our backward
                    return step(*args, **kwargs)
                self._pending_scaled = False
                self.scaler.step(strategy.optimizer)
                self.scaler.update()
                self.scaled_steps += 1
            return run

    return MixedPrecisionPlugin()

