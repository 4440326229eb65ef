"""Training cost in FLOPs: counted on one iteration per experience, extrapolated by samples.

`FlopMeter` is a plugin the runner adds to every run. In each experience it runs one
training iteration — the second of the first epoch, or the only one — from `before_forward`
to `after_backward` under `torch.utils.flop_counter.FlopCounterMode`, and divides by that
minibatch's size: FLOPs per sample. Every iteration adds its minibatch size (after replay
concatenation, so a growing batch costs more), and the experience costs FLOPs per sample ×
samples. What is counted is what autograd runs: the forward, the distillation forwards of
old models inside the step, and the backward, which skips the weight gradients of frozen
parameters by itself.

Why sampled: the counter intercepts every op (several times slower), so counting all
iterations would distort the wall time the same run reports. The second iteration is used
because some strategies do one-off work in the first (Avalanche's iCaRL probes the model's
shapes with extra forwards). Exact when the cost is linear in the batch size, which holds
for the suite's models (convolutions, linear layers, batch norm); per-step costs that do not
scale with the batch (EWC's penalty) are attributed per sample, a negligible error for them.

Work outside the strategy's iterations (FPF's fine-tuning) is reported by the plugin doing
it, through `ReportsTrainFlops`.

One correction to torch's formulas: torch 2.14's `convolution_backward` count ignores `groups` for the
weight gradient, so a depthwise convolution's weight gradient is counted C times too large (MobileNetV2's
full fine-tuning came out at 16× its forward instead of 3×). Fixed upstream after 2.14 (pytorch/pytorch#183405);
until then every counter here uses `_convolution_backward_flops`.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

from avalanche.core import SupervisedPlugin


@runtime_checkable
class ReportsTrainFlops(Protocol):
    """A plugin that trains outside the strategy's iterations and counts that work itself."""

    def extra_train_flops(self) -> float: ...


def _convolution_backward_flops(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                                _output_padding, _groups, output_mask, **_) -> int:
    """The backward of a convolution: each gradient costs as many multiply-adds as the forward convolution (the
    weight's shape already carries C_in / groups, which torch's weight-gradient formula loses)."""
    from torch.utils.flop_counter import conv_flop_count

    flops = 0
    if output_mask[0]:     # the input's gradient: grad_out convolved (transposed) with the weight
        flops += conv_flop_count(grad_out_shape, w_shape, x_shape, transposed=not transposed)
    if output_mask[1]:     # the weight's gradient: one multiply-add per forward multiply-add
        flops += conv_flop_count(x_shape, w_shape, grad_out_shape, transposed=transposed)
    return flops


def flop_counter_mode():
    """torch's FlopCounterMode with the grouped-convolution backward counted right."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    return FlopCounterMode(display=False,
                           custom_mapping={torch.ops.aten.convolution_backward: _convolution_backward_flops})


class FlopCounter:
    """A FlopCounterMode that can be opened and closed from two different callbacks."""

    def __init__(self):
        self._mode = None

    @property
    def active(self) -> bool:
        return self._mode is not None

    def start(self) -> None:
        self._mode = flop_counter_mode()
        self._mode.__enter__()

    def stop(self) -> int:
        """Close the counter (if open); the FLOPs it saw."""
        if self._mode is None:
            return 0
        mode, self._mode = self._mode, None
        mode.__exit__(None, None, None)
        return int(mode.get_total_flops())


def count_flops(fn, *args, **kwargs) -> tuple[object, int]:
    """Run `fn(*args, **kwargs)` under a FLOP counter: (its result, FLOPs)."""
    counter = FlopCounter()
    counter.start()
    try:
        result = fn(*args, **kwargs)
    finally:
        flops = counter.stop()
    return result, flops


class FlopMeter(SupervisedPlugin):
    """Training FLOPs of a strategy, per experience (see the module docstring for the method)."""

    def __init__(self):
        super().__init__()
        self.flops_per_experience: list[float] = []
        self.flops_per_sample: list[float] = []
        self._counter = FlopCounter()
        self._per_sample: float | None = None
        self._samples = 0
        self._iteration = 0
        self._count_at = 0

    def before_training_exp(self, strategy, **kwargs):
        self._per_sample, self._samples, self._iteration = None, 0, 0
        try:
            iterations = len(strategy.dataloader)
        except TypeError:   # a loader without a length: count the first iteration
            iterations = 1
        self._count_at = 1 if iterations > 1 else 0

    def before_forward(self, strategy, **kwargs):
        if self._per_sample is None and self._iteration == self._count_at:
            self._counter.start()

    def after_backward(self, strategy, **kwargs):
        batch = len(strategy.mb_x)
        if self._counter.active:
            self._per_sample = self._counter.stop() / batch
        self._samples += batch
        self._iteration += 1

    def after_training_exp(self, strategy, **kwargs):
        per_sample = self._per_sample or 0.0
        self.flops_per_sample.append(per_sample)
        self.flops_per_experience.append(per_sample * self._samples)

    # cl.checkpoint.Resumable: FLOPs of the experiences done so far
    def checkpoint_state(self, ctx):
        return {"flops_per_experience": list(self.flops_per_experience), "flops_per_sample": list(self.flops_per_sample)}

    def restore_checkpoint_state(self, state, ctx):
        self.flops_per_experience = [float(v) for v in state["flops_per_experience"]]
        self.flops_per_sample = [float(v) for v in state["flops_per_sample"]]

    def close(self) -> None:
        """Leave the counting mode if a failure interrupted a counted iteration."""
        self._counter.stop()

    def total(self, strategy) -> float:
        """The strategy's FLOPs plus what the strategy or its plugins report of training done on their own
        (FPF's fine-tuning, NMN's slow path)."""
        extra = sum(p.extra_train_flops() for p in [strategy, *strategy.plugins] if isinstance(p, ReportsTrainFlops))
        return float(sum(self.flops_per_experience) + extra)
