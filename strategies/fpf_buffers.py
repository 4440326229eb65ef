"""The samples FPF fine-tunes on: its own reservoir, or the buffer of the strategy it is added to.

Part of FPF / k-FPF (`strategies.fpf`). The reservoir is Vitter's Algorithm R over every training sample
seen, optionally with the logits of the forward pass that saw it (k-FPF-KD matches them).
"""
from __future__ import annotations

import torch

from cl.strategy_api import storage_policy


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
    """A strategy's buffer materialised as tensors (with its stored logits, if it keeps any), sampled like a
    reservoir."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, seed: int, logits: torch.Tensor | None = None):
        self.x, self.y, self.logits = x, y, logits
        self._generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.y)

    def sample_index(self, batch_size: int) -> torch.Tensor:
        return torch.randperm(len(self), generator=self._generator)[:batch_size]

    def sample(self, batch_size: int):
        index = self.sample_index(batch_size)
        return self.x[index], self.y[index], None if self.logits is None else self.logits[index]


def strategy_buffer(strategy, seed: int) -> _TensorBuffer | None:
    """The exemplars of an Avalanche strategy with a `storage_policy` (Replay, Dark-ER, ...), with the logits stored
    beside them when the buffer has a ``logits`` data attribute (Avalanche's `DER`)."""
    policy = storage_policy(strategy)
    if policy is None or len(policy.buffer) == 0:
        return None
    dataset = policy.buffer
    items = [dataset[i] for i in range(len(dataset))]
    stored = getattr(dataset, "logits", None)
    logits = None if stored is None else torch.stack([torch.as_tensor(stored[i]) for i in range(len(dataset))]).float()
    return _TensorBuffer(torch.stack([item[0] for item in items]),
                         torch.as_tensor([int(item[1]) for item in items]), seed, logits)
