"""Episodes for the episodic neural-memory-network experiment (`strategies.nmn_episodic`).

Few-shot classification as Santoro et al. 2016 (MANN, §3–4) set it: an episode shows a
sequence of images from ``n_way`` classes whose labels are shuffled for every episode, so
the class → label binding can only be learnt inside the episode, from the labels revealed one
step late (the model sees (x_t, y_{t−1})). Meta-train classes and meta-test classes are
disjoint; a validation split of the meta-train classes' training images chooses settings.
Every class is presented ``length // n_way`` times (the remainder spread at random); each
step records which presentation of its class it is, for accuracy by presentation.

The rare variant: two classes appear exactly twice — once each in the first half of the
episode, once each in the second — and the others fill the rest; scored on the second
showings (one-shot recall of a class seen once, the paper's "rare samples" within an
episode). Two, not one (the brief's "one class shown once"): with a single rare class, the
one label seen only once is the answer, and a model that merely counts label frequencies
scores it without recalling the image (measured: 69% on the second showing by a model at
chance everywhere else). With two, counting gives 50%; recall gives more.

Sinusoid regression as in MAML (Finn et al. 2017, §5.1): amplitude U[0.1, 5], phase U[0, π],
inputs U[−5, 5], one function per episode; the model sees (x_t, y_{t−1}) and predicts y_t.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

VAL_SPLIT_SEED = 0            # which meta-train images are held out for validation (fixed for every run)


@dataclass
class Episodes:
    """A batch of episodes: x (B, T, D), y (B, T) labels or (B, T, 1) values, presentation (B, T) (1-based:
    the k-th time this class is shown; regression: the step number), scored (B, T) bool (rare episodes: the
    rare class's second showing)."""

    x: torch.Tensor
    y: torch.Tensor
    presentation: torch.Tensor
    scored: torch.Tensor | None = None
    classes: torch.Tensor | None = None          # (B, n_way): the class behind each label (image episodes)
    task: torch.Tensor | None = None             # (B, 2): amplitude and phase of each episode's sinusoid


class ImageEpisodes:
    """Few-shot classification episodes drawn from images of `classes` (flattened, values in [0, 1])."""

    kind = "classification"

    def __init__(self, x: torch.Tensor, y: torch.Tensor, classes, *, n_way: int, length: int):
        classes = [int(c) for c in classes]
        if len(classes) < n_way:
            raise ValueError(f"{len(classes)} classes cannot make {n_way}-way episodes")
        self.images = {c: x[y == c].flatten(1) for c in classes}
        if any(len(v) < 2 for v in self.images.values()):
            raise ValueError("every class needs at least 2 images")
        self.classes, self.n_way, self.length = classes, n_way, length
        self.input_dim = next(iter(self.images.values())).shape[1]

    def _images(self, rng, cls: int, n: int) -> torch.Tensor:
        pool = self.images[cls]
        return pool[torch.from_numpy(rng.choice(len(pool), n, replace=n > len(pool)))]

    def sample(self, n: int, rng: np.random.Generator, *, rare: bool = False) -> Episodes:
        xs, ys, ps, ss, cs = [], [], [], [], []
        for _ in range(n):
            chosen = rng.choice(self.classes, self.n_way, replace=False)      # label i ↔ class chosen[i]
            cs.append(torch.from_numpy(np.asarray(chosen, dtype=np.int64)))
            if rare:
                labels, scored = self._rare_sequence(rng)
            else:
                counts = np.full(self.n_way, self.length // self.n_way)
                counts[rng.choice(self.n_way, self.length % self.n_way, replace=False)] += 1
                labels = rng.permutation(np.repeat(np.arange(self.n_way), counts))
            x = torch.empty(self.length, self.input_dim)
            for label in range(self.n_way):
                where = np.flatnonzero(labels == label)
                x[where] = self._images(rng, int(chosen[label]), len(where))
            presentation = np.zeros(self.length, dtype=np.int64)
            seen = np.zeros(self.n_way, dtype=np.int64)
            for t, label in enumerate(labels):
                seen[label] += 1
                presentation[t] = seen[label]
            xs.append(x)
            ys.append(torch.from_numpy(labels.astype(np.int64)))
            ps.append(torch.from_numpy(presentation))
            if rare:
                ss.append(torch.from_numpy(scored))
        return Episodes(torch.stack(xs), torch.stack(ys), torch.stack(ps), torch.stack(ss) if rare else None,
                        torch.stack(cs))

    def resample_future(self, episodes: Episodes, boundary: int, rng: np.random.Generator) -> Episodes:
        """The same episodes up to `boundary`; after it, another future of the same task: the remaining labels in a
        new order, each shown with a freshly drawn image of its class."""
        x, y = episodes.x.clone(), episodes.y.clone()
        for i in range(len(y)):
            y[i, boundary:] = y[i, boundary:][torch.from_numpy(rng.permutation(len(y[i]) - boundary))]
            for t in range(boundary, len(y[i])):
                x[i, t] = self._images(rng, int(episodes.classes[i, y[i, t]]), 1)[0]
        presentation = torch.stack([torch.from_numpy(_presentations(row.numpy(), self.n_way)) for row in y])
        return Episodes(x, y, presentation, None, episodes.classes)

    def _rare_sequence(self, rng) -> tuple[np.ndarray, np.ndarray]:
        """(labels per step, scored steps): two random labels shown once in each half (first showings in the
        first half, second showings in the second), the other labels filling the rest."""
        rare = rng.choice(self.n_way, 2, replace=False)
        others = [c for c in range(self.n_way) if c not in rare]
        half = self.length // 2
        first = rng.choice(half, 2, replace=False)
        second = half + rng.choice(self.length - half, 2, replace=False)
        rest = self.length - 4
        counts = np.full(len(others), rest // len(others))
        counts[rng.choice(len(others), rest % len(others), replace=False)] += 1
        labels = np.empty(self.length, dtype=np.int64)
        labels[first] = rare
        labels[second] = rare
        fixed = set(first.tolist()) | set(second.tolist())
        labels[[t for t in range(self.length) if t not in fixed]] = rng.permutation(np.repeat(others, counts))
        scored = np.zeros(self.length, dtype=bool)
        scored[second] = True
        return labels, scored


def _presentations(labels: np.ndarray, n_way: int) -> np.ndarray:
    seen, out = np.zeros(n_way, dtype=np.int64), np.zeros(len(labels), dtype=np.int64)
    for t, label in enumerate(labels):
        seen[label] += 1
        out[t] = seen[label]
    return out


class SinusoidEpisodes:
    """MAML's sinusoid: y = A sin(x − φ), A ~ U[0.1, 5], φ ~ U[0, π], x ~ U[−5, 5]."""

    kind = "regression"
    input_dim = 1

    def __init__(self, *, length: int):
        self.length = length

    def sample(self, n: int, rng: np.random.Generator, *, rare: bool = False) -> Episodes:
        if rare:
            raise ValueError("the sinusoid task has no rare variant")
        amplitude = rng.uniform(0.1, 5.0, (n, 1))
        phase = rng.uniform(0.0, np.pi, (n, 1))
        x = rng.uniform(-5.0, 5.0, (n, self.length))
        y = amplitude * np.sin(x - phase)
        steps = torch.arange(1, self.length + 1).expand(n, -1)
        return Episodes(torch.tensor(x, dtype=torch.float32).unsqueeze(-1),
                        torch.tensor(y, dtype=torch.float32).unsqueeze(-1), steps.clone(),
                        task=torch.tensor(np.concatenate([amplitude, phase], 1), dtype=torch.float32))

    def resample_future(self, episodes: Episodes, boundary: int, rng: np.random.Generator) -> Episodes:
        """The same episodes up to `boundary`; after it, fresh points of the same sinusoid."""
        if episodes.task is None:
            raise ValueError("episodes.task is missing: resample_future needs episodes drawn by this source")
        x, y = episodes.x.clone(), episodes.y.clone()
        amplitude, phase = episodes.task[:, :1], episodes.task[:, 1:]
        fresh = torch.tensor(rng.uniform(-5.0, 5.0, (len(x), self.length - boundary)), dtype=torch.float32)
        x[:, boundary:, 0] = fresh
        y[:, boundary:, 0] = amplitude * torch.sin(fresh - phase)
        return Episodes(x, y, episodes.presentation.clone(), task=episodes.task)


def rotated_classes(x: torch.Tensor, y: torch.Tensor, rotations: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each class at 0°, 90°, ... as classes of their own (label c + 10·k): Santoro et al.'s Omniglot augmentation
    (§4.1), which gives a meta-learner many more classes than the 5 meta-train digits."""
    xs = [torch.rot90(x, k, dims=(-2, -1)) for k in range(rotations)]
    return torch.cat(xs), torch.cat([y + 10 * k for k in range(rotations)])


def image_splits(dataset: str, *, meta_test_classes, n_way: int, length: int, data_root=None,
                 val_fraction: float = 0.2, rotations: int = 1):
    """(train, val, test) episode sources: meta-train classes' training images (minus a fixed validation share),
    their held-out share — both with `rotations` rotated copies as extra classes — and the meta-test classes'
    test images (unrotated)."""
    from cl.scenarios import image_tensors

    x_train, y_train, x_test, y_test = image_tensors(dataset, data_root=data_root)
    test_classes = sorted(int(c) for c in meta_test_classes)
    keep = ~torch.isin(y_train, torch.tensor(test_classes))
    x_train, y_train = x_train[keep], y_train[keep]
    order = torch.from_numpy(np.random.default_rng(VAL_SPLIT_SEED).permutation(len(y_train)))
    n_val = int(round(val_fraction * len(order)))
    val_idx, train_idx = order[:n_val], order[n_val:]

    def make(x, y, rotate: bool):
        x, y = rotated_classes(x, y, rotations) if rotate else (x, y)
        return ImageEpisodes(x, y, sorted(int(c) for c in y.unique()), n_way=n_way, length=length)

    return (make(x_train[train_idx], y_train[train_idx], True), make(x_train[val_idx], y_train[val_idx], True),
            make(x_test[torch.isin(y_test, torch.tensor(test_classes))],
                 y_test[torch.isin(y_test, torch.tensor(test_classes))], False))
