"""The minibatch epoch loop the transfer experiments share (Avalanche runs its own for continual-learning runs).

Each epoch visits the examples once in an order drawn from `generator`, so two runs with the same generator state
see the same batches — which is what makes a resumed run (`cl.transfer_run.TransferContext.resume`) continue
exactly where an uninterrupted one would be.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

if TYPE_CHECKING:
    import torch


def run_epochs(model, n_examples: int, batch_loss: Callable[[Sequence[int]], "torch.Tensor"], optimizer, *,
               epochs: int, batch_size: int, generator, first_epoch: int = 0, steps_done: int = 0,
               after_step: Callable[[], None] | None = None,
               after_epoch: Callable[[int, float, int], None] | None = None) -> int:
    """Train `model` from epoch `first_epoch` to `epochs`: per batch of indices, ``batch_loss(indices)``, backward,
    one optimiser step, then `after_step` (e.g. a learning-rate schedule); after each epoch
    ``after_epoch(epoch, mean loss per example, optimiser steps so far)``. Returns the optimiser steps done in all."""
    import torch

    steps = steps_done
    for epoch in range(first_epoch, epochs):
        model.train()
        order = torch.randperm(n_examples, generator=generator).tolist()
        total = 0.0
        for start in range(0, n_examples, batch_size):
            batch = order[start:start + batch_size]
            loss = batch_loss(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if after_step is not None:
                after_step()
            total += float(loss.detach()) * len(batch)
            steps += 1
        if after_epoch is not None:
            after_epoch(epoch, total / n_examples, steps)
    return steps
