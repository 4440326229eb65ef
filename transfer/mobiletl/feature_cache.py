"""Frozen-feature cache: the lower blocks of a top-k transfer run once per image, not once per epoch.

An execution shortcut, not a method. For ``plain_topk`` and ``mobiletl`` (with or without `bn_reestimate`) the
blocks below the first trainable one are a fixed function of the image during transfer training, because

- the experiment feeds the prepared images unchanged (`train_epochs` indexes ``x[batch]``: no augmentation),
- none of their parameters requires a gradient, and `MobileTLNet.train` keeps every one of their modules in eval
  mode (BN normalises with its running statistics and does not update them; dropout is off),
- BN re-estimation (`reestimate_bn`) happens once, in `prepare_for_transfer`, before training.

So their output is computed once (forward, no gradient) and each training batch runs only the trainable top
(MobileTL's converted blocks, untouched: masks, folded BN, quantised saves all act as before) on the cached
features. `split` checks the premise on the actual model and says why when it does not hold — ``full``,
``bias_bn`` and ``last_layer`` (whose frozen BNs run in train mode with batch statistics), a trainable or
train-mode lower module — and the caller then runs the full network as before; nothing is cached silently.

Exactness: the frozen part's output for an image is the same whatever the other images of its batch are, but
oneDNN's kernels can round differently for different batch *sizes* (~1e-10 here). The features are therefore
computed in chunks of exactly the training batch size, and a batch of any other size (an epoch's last, partial
batch) runs the frozen part live on its images, as the uncached path does: the cached run then reproduces the
uncached one — same losses, weights and accuracies (tests/test_mobiletl.py, to 1e-5 and bit for bit on our
machine; `benchmarks/mobiletl_speed.py --end-to-end` on a real v2 cell: identical metrics and epoch losses).

Unchanged by the cache: the method's cost metrics. Activation memory and the training FLOPs (``cost/…``) are
measured on the full network's training step before training, so they report what the method costs, not what
this shortcut executes. Memory: the cut of MobileNetV2 width 0.35 at 64 px for top 5 is 32 × 4 × 4 float32 =
2 KiB per image (6.4 MB for the v2 grid's 3,200 training images).
"""
from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence

import torch
from torch import nn

from transfer.mobiletl.model import MobileTLNet, inverted_residual_blocks

log = logging.getLogger(__name__)


def split(model: nn.Module) -> tuple[nn.Sequential, nn.Module] | str:
    """(lower, top) of a MobileTL network, sharing its modules, or the reason the lower part is not fixed.

    ``top(lower(x))`` is ``model(x)``: `top` is the torchvision network with its `features` cut at the first
    trainable block (its own forward, so nothing of the architecture is restated here).
    """
    if not isinstance(model, MobileTLNet):
        return "not a MobileTL network (its lower blocks train, or their BN runs in train mode)"
    net = model.net
    features = getattr(net, "features", None)
    if not isinstance(features, nn.Sequential):
        return "the network has no `features` sequence to cut"
    trainable = [block for _, block in inverted_residual_blocks(net)][-model.config.num_trainable_blocks]
    cut = next((i for i, m in enumerate(features) if m is trainable), None)
    if not cut:
        return "the first trainable block is not inside `features` after a frozen stem"
    lower = features[:cut]
    if any(p.requires_grad for p in lower.parameters()):
        return "a parameter below the first trainable block requires a gradient"
    was_training = model.training
    model.train()
    in_train_mode = [name for name, m in lower.named_modules() if m.training and not list(m.children())]
    model.train(was_training)
    if in_train_mode:
        return f"layers below the first trainable block run in train mode: {in_train_mode[:3]}"
    top = copy.copy(net)
    top._modules = dict(net._modules)        # a new module table: replacing `features` leaves `net` untouched
    top.features = features[cut:]
    return lower, top


def _frozen_state(lower: nn.Module) -> list[torch.Tensor]:
    return [t.detach().clone() for t in (*lower.parameters(), *lower.buffers())]


class FeatureCache:
    """The frozen lower blocks' outputs for the images `x`, computed in chunks of `batch_size` and reused by
    every model whose frozen part has the same weights and statistics (e.g. the lr sweep's fresh copies)."""

    def __init__(self, x: torch.Tensor, *, batch_size: int, device=None):
        self.x = x
        self.batch_size = batch_size
        self.device = device
        self.features: torch.Tensor | None = None
        self._state: list[torch.Tensor] | None = None
        self.builds = 0

    def forward_for(self, model: nn.Module) -> Callable[[Sequence[int]], torch.Tensor] | None:
        """``forward(batch indices) -> logits`` equal to ``model(x[batch])``, or None when the premise fails
        (the reason is logged; the caller runs the full network)."""
        parts = split(model)
        if isinstance(parts, str):
            log.info("frozen-feature cache off: %s", parts)
            return None
        lower, top = parts
        state = _frozen_state(lower)
        if self._state is None or len(state) != len(self._state) or \
                not all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(state, self._state)):
            self.features = self._compute(lower)
            self._state = state
            self.builds += 1
            log.info("frozen-feature cache: %d images × %s (%.1f MB)", len(self.x), tuple(self.features.shape[1:]),
                     self.features.numel() * self.features.element_size() / 1e6)
        features, x, size, device = self.features, self.x, self.batch_size, self.device

        def forward(batch: Sequence[int]) -> torch.Tensor:
            if len(batch) == size:
                return top(features[batch].to(device) if device is not None else features[batch])
            return model(x[batch].to(device) if device is not None else x[batch])

        return forward

    @torch.no_grad()
    def _compute(self, lower: nn.Module) -> torch.Tensor:
        # every image goes through in a chunk of exactly `batch_size` (the last chunk overlaps the one before), as
        # in a full training batch; with fewer images than that, no training batch is full and none reads these
        n, size = len(self.x), min(self.batch_size, len(self.x))
        chunks = []
        for start in range(0, n, size):
            begin = min(start, n - size)
            chunk = self.x[begin:begin + size]
            out = lower(chunk.to(self.device) if self.device is not None else chunk).cpu()
            chunks.append(out[start - begin:])
        return torch.cat(chunks)
