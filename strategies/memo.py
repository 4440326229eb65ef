"""MEMO and DER: expandable representations for class-incremental learning.

MEMO — "A Model or 603 Exemplars: Towards Memory-Efficient Class-Incremental Learning",
Zhou et al., ICLR 2023 (reference: wangkiw/ICLR23-MEMO, PyCIL `models/memo.py`,
`utils/inc_net.py:AdaptiveNet`). DER — "Dynamically Expandable Representation", Yan et al.,
CVPR 2021, without its pruning step, as PyCIL runs it. DER is MEMO with no shared blocks:
one `ExpandableNet` serves both (`shared=None` gives DER).

What each step does and where it comes from:
- Backbone split (MEMO §4.1): generalized blocks φg (shallow, shared) and specialized blocks
  φs (deep, one per task). ResNet-32: φg = stem + stage_1 + stage_2, φs = stage_3 + pool.
- Expansion per task b (AdaptiveNet.update_fc): φs_b is a copy of φs_{b−1} (the first one
  is the backbone's own); feature = concat_i φs_i(φg(x)). The new head covers all seen
  classes; old rows × old feature columns are copied, the rest is Kaiming-uniform
  (nonlinearity 'linear') with zero bias (PyCIL's SimpleLinear).
- Auxiliary head Linear(d, |Y_b|+1) on φs_b's features; new classes keep their order, every
  old class maps to label 0; loss = CE(head) + α·CE(aux) from task 2 on (α = 1). The aux
  head is dropped after the task.
- Freezing: old φs get no gradient and stay in eval mode (BN statistics frozen). φg trains
  after task 1 only with `train_shared` (the reference's `train_base`, right for B0 splits).
- Weight aligning (WA, Zhao et al. 2020) after every task but the first: new-class rows ×
  mean‖old row‖ / mean‖new row‖.
- Exemplars: iCaRL herding on L2-normalised concatenated features, m = ⌊budget / #seen⌋
  per class; shrinking keeps the first m in herding order. The paper's text says "closest to
  the class mean"; the code herds — we follow the code.
- Evaluation: the head (reported as acc/…), and nearest-mean-of-exemplars (nme/acc/…): every
  seen class's mean of L2-normalised exemplar features, recomputed with the current network
  after each task (PyCIL `_construct_exemplar_unified`, test-mode transforms), nearest mean
  to the normalised feature wins (`_eval_nme`).
- Optimiser state is reset at every task (the reference builds a new SGD per task).

Deviations (ours, not the paper's):
- Labels are the scenario's original class ids. The head keeps one row per seen class in
  arrival order and its logits are scattered into the full label space, unseen classes at
  −inf: the same cross-entropy over seen classes as the reference's remapped labels.
- Exemplars are kept as indices into the experience's dataset (not copied tensors), so they
  are replayed with the same train-time transforms; they are counted as H·W·C bytes each.
- The reference's per-task learning-rate schedules (MultiStepLR milestones) come from the
  run's train config.
"""
from __future__ import annotations

import copy
import math
from typing import Sequence

import torch
from avalanche.benchmarks.utils.utils import concat_datasets
from avalanche.core import SupervisedPlugin
from avalanche.models import DynamicModule
from avalanche.training.templates import SupervisedTemplate
from torch import nn
from torch.nn import functional as F

from cl.strategy_api import StrategyContext
from strategies.herding import EPSILON, herding_order


# --------------------------------------------------------------------------- the network


def _linear(in_features: int, out_features: int) -> nn.Linear:
    """PyCIL's SimpleLinear initialisation: Kaiming-uniform (linear), zero bias."""
    layer = nn.Linear(in_features, out_features)
    nn.init.kaiming_uniform_(layer.weight, nonlinearity="linear")
    nn.init.zeros_(layer.bias)
    return layer


class ExpandableNet(DynamicModule):
    """φg (shared) followed by one specialized block per task, concatenated, and a growing head.

    `shared=None` gives DER (a whole backbone per task). Grows in Avalanche's model
    adaptation, before each *training* experience with classes it has not seen.
    """

    def __init__(self, shared: nn.Module | None, specialized: nn.Module, out_dim: int, n_classes: int,
                 *, train_shared: bool = True):
        super().__init__()
        self.shared = shared if shared is not None else nn.Identity()
        self.has_shared = shared is not None
        # φs_1 is registered from the start so parameter names never change (Avalanche's
        # optimizer update matches parameters by name); later blocks copy their predecessor.
        self.specialized = nn.ModuleList([specialized])
        self.out_dim = out_dim
        self.n_classes = n_classes
        self.train_shared = train_shared
        self.head: nn.Linear | None = None
        self.aux_head: nn.Linear | None = None
        self.class_ids: list[int] = []      # head row -> original class id
        self.task_sizes: list[int] = []
        self._adapted_experiences: set[int] = set()
        self._last_features: torch.Tensor | None = None

    # ---- growth
    def adaptation(self, experience) -> None:
        if not self.training or experience.current_experience in self._adapted_experiences:
            return
        self._adapted_experiences.add(experience.current_experience)
        new = [c for c in sorted(experience.classes_in_this_experience) if c not in self.class_ids]
        if new:
            self.expand(new)

    def expand(self, new_classes: Sequence[int]) -> None:
        """Add a specialized block and grow the head to cover `new_classes` (one task)."""
        if self.n_tasks > 0:
            self.specialized.append(copy.deepcopy(self.specialized[-1]))
        old_head, n_old = self.head, len(self.class_ids)
        self.class_ids.extend(int(c) for c in new_classes)
        self.task_sizes.append(len(new_classes))
        head = _linear(self.feature_dim, len(self.class_ids))
        if old_head is not None:
            with torch.no_grad():
                head.weight[:n_old, : old_head.in_features] = old_head.weight
                head.bias[:n_old] = old_head.bias
        self.head = head
        self.aux_head = _linear(self.out_dim, len(new_classes) + 1)
        self._freeze_old()
        self.to(next(self.specialized.parameters()).device)

    def _freeze_old(self) -> None:
        for block in self.specialized[: self.n_tasks - 1]:
            block.requires_grad_(False)
        if self.has_shared and self.n_tasks > 1 and not self.train_shared:
            self.shared.requires_grad_(False)
        self.train(self.training)

    def drop_aux_head(self) -> None:
        self.aux_head = None

    @property
    def n_tasks(self) -> int:
        return len(self.task_sizes)

    @property
    def feature_dim(self) -> int:
        return self.out_dim * self.n_tasks

    @property
    def frozen_blocks(self) -> list[nn.Module]:
        frozen = list(self.specialized[: self.n_tasks - 1])
        if self.has_shared and self.n_tasks > 1 and not self.train_shared:
            frozen.insert(0, self.shared)
        return frozen

    def train(self, mode: bool = True):
        """Frozen blocks stay in eval mode (their BN statistics must not move)."""
        super().train(mode)
        for block in self.frozen_blocks:
            block.eval()
        return self

    # ---- checkpoints: the growth so far travels in `state_dict()` (torch's extra state), and loading
    # regrows the blocks and heads before their parameters are copied in (cl.checkpoint)
    def get_extra_state(self) -> dict:
        return {"class_ids": list(self.class_ids), "task_sizes": list(self.task_sizes),
                "adapted": sorted(self._adapted_experiences), "aux_head": self.aux_head is not None}

    def set_extra_state(self, state: dict) -> None:
        class_ids, sizes = [int(c) for c in state["class_ids"]], [int(n) for n in state["task_sizes"]]
        if self.task_sizes != sizes[: self.n_tasks]:
            raise ValueError(f"cannot load a network grown as {sizes} into one grown as {self.task_sizes}")
        for size in sizes[self.n_tasks:]:
            start = len(self.class_ids)
            self.expand(class_ids[start:start + size])
        if not state["aux_head"]:
            self.drop_aux_head()
        self._adapted_experiences = {int(e) for e in state["adapted"]}

    # ---- forward
    def features(self, x: torch.Tensor) -> torch.Tensor:
        base = self.shared(x)
        return torch.cat([block(base) for block in self.specialized], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.head is None:
            raise RuntimeError("ExpandableNet has not seen any experience yet: call expand() first")
        features = self.features(x)
        self._last_features = features     # for the aux head (training) and NME (evaluation)
        scores = self.head(features)
        logits = scores.new_full((len(x), self.n_classes), -math.inf)   # the head's dtype (bf16 under autocast)
        logits[:, self.class_ids] = scores
        return logits

    def aux_logits(self) -> torch.Tensor:
        """Aux head on the newest block's part of the last forward's features."""
        return self.aux_head(self._last_features[:, -self.out_dim:])

    def aux_targets(self, y: torch.Tensor) -> torch.Tensor:
        """New classes -> 1..|Y_b| in head order; every old class -> 0 (reference: aux_targets)."""
        lookup = torch.zeros(self.n_classes, dtype=torch.long, device=y.device)
        new = torch.tensor(self.class_ids[-self.task_sizes[-1]:], device=y.device)
        lookup[new] = torch.arange(1, len(new) + 1, device=y.device)
        return lookup[y]

    def align_weights(self) -> float:
        """WA: scale new-class rows by mean‖old row‖ / mean‖new row‖; returns γ."""
        increment = self.task_sizes[-1]
        with torch.no_grad():
            weights = self.head.weight
            gamma = weights[:-increment].norm(dim=1).mean() / weights[-increment:].norm(dim=1).mean()
            weights[-increment:] *= gamma
        return float(gamma)


# --------------------------------------------------------------------------- exemplars


class HerdingMemory:
    """Per-class exemplars (dataset + indices in herding order) under a total budget."""

    def __init__(self, budget: int):
        self.budget = budget
        self.per_class: dict[int, tuple[object, list[int]]] = {}

    def per_class_quota(self, n_classes: int) -> int:
        return self.budget // max(n_classes, 1)

    def add_class(self, class_id: int, dataset, indices: list[int]) -> None:
        self.per_class[class_id] = (dataset, list(indices))

    def shrink(self, m: int) -> None:
        """Keep the first m exemplars of every class (herding order = most representative first)."""
        for class_id, (dataset, indices) in self.per_class.items():
            self.per_class[class_id] = (dataset, indices[:m])

    def __len__(self) -> int:
        return sum(len(indices) for _, indices in self.per_class.values())

    def dataset(self):
        parts = [dataset.subset(indices) for dataset, indices in self.per_class.values() if indices]
        return concat_datasets(parts) if parts else None


# --------------------------------------------------------------------------- the plugin


class MEMOPlugin(SupervisedPlugin):
    """The training recipe around an `ExpandableNet`: aux loss, WA, herding memory, fresh optimiser.

    Also a second classifier: nearest-mean-of-exemplars (NME), scored by the suite's logger
    beside the head (`cl.run_logger.SecondPredictor`), as PyCIL reports both.
    """

    prediction_name = "nme"

    def __init__(self, *, mem_size: int, alpha_aux: float = 1.0, weight_align: bool = True,
                 feature_batch_size: int = 256):
        super().__init__()
        self.memory = HerdingMemory(mem_size)
        self.alpha_aux = alpha_aux
        self.weight_align = weight_align
        self.feature_batch_size = feature_batch_size
        self.gammas: list[float] = []
        self.class_means: torch.Tensor | None = None   # row i: normalised mean of class net.class_ids[i]

    def n_exemplars(self) -> int:
        return len(self.memory)

    def after_train_dataset_adaptation(self, strategy, **kwargs):
        replay = self.memory.dataset()
        if replay is not None:
            strategy.adapted_dataset = concat_datasets([strategy.adapted_dataset, replay])

    def before_training_exp(self, strategy, **kwargs):
        strategy.optimizer.state.clear()   # the reference builds a new SGD for every task

    def before_backward(self, strategy, **kwargs):
        net: ExpandableNet = strategy.model
        if net.n_tasks > 1 and self.alpha_aux > 0:
            aux = F.cross_entropy(net.aux_logits(), net.aux_targets(strategy.mb_y))
            strategy.loss = strategy.loss + self.alpha_aux * aux

    def after_training_exp(self, strategy, **kwargs):
        net: ExpandableNet = strategy.model
        if net.n_tasks > 1 and self.weight_align:
            self.gammas.append(net.align_weights())
        net.drop_aux_head()
        was_training = net.training
        net.eval()
        self._update_memory(strategy, net)
        self._update_class_means(strategy, net)
        net.train(was_training)

    def predict(self, strategy) -> torch.Tensor | None:
        """NME: the class whose exemplar mean is nearest to the normalised feature (PyCIL `_eval_nme`)."""
        net: ExpandableNet = strategy.model
        if self.class_means is None or net._last_features is None:
            return None
        features = F.normalize(net._last_features.detach().float(), dim=1, eps=EPSILON)   # bf16 under autocast
        nearest = torch.cdist(features, self.class_means.to(features.device)).argmin(dim=1)
        return torch.as_tensor(net.class_ids, device=nearest.device)[nearest]

    # ---- checkpoints (cl.checkpoint.Resumable): exemplars as references into the train stream
    def checkpoint_state(self, ctx) -> dict:
        return {"per_class": [{"class": int(c), "dataset": ctx.dataset_ref(dataset), "indices": list(indices)}
                              for c, (dataset, indices) in self.memory.per_class.items()],
                "gammas": list(self.gammas),
                "class_means": None if self.class_means is None else self.class_means.clone()}

    def restore_checkpoint_state(self, state: dict, ctx) -> None:
        self.memory.per_class = {int(item["class"]): (ctx.dataset_from_ref(item["dataset"]), [int(i) for i in item["indices"]])
                                 for item in state["per_class"]}
        self.gammas = [float(g) for g in state["gammas"]]
        self.class_means = None if state["class_means"] is None else state["class_means"].clone()

    @torch.no_grad()
    def _features(self, strategy, net: ExpandableNet, dataset, indices: list[int]) -> torch.Tensor:
        """Features of un-augmented samples `indices` of `dataset`, in batches."""
        plain = dataset.eval()
        return torch.cat([
            net.features(torch.stack([plain[i][0] for i in indices[k:k + self.feature_batch_size]])
                         .to(strategy.device)).cpu()
            for k in range(0, len(indices), self.feature_batch_size)])

    def _update_memory(self, strategy, net: ExpandableNet) -> None:
        quota = self.memory.per_class_quota(len(net.class_ids))
        self.memory.shrink(quota)
        dataset = strategy.experience.dataset
        targets = torch.as_tensor(list(dataset.targets))
        for class_id in net.class_ids[-net.task_sizes[-1]:]:
            indices = torch.nonzero(targets == class_id).flatten().tolist()
            chosen = herding_order(self._features(strategy, net, dataset, indices), quota)
            self.memory.add_class(class_id, dataset, [indices[i] for i in chosen])

    def _update_class_means(self, strategy, net: ExpandableNet) -> None:
        """Every seen class's mean over its exemplars, with the current network (PyCIL recomputes
        old classes' means after each task); a class without exemplars gets a zero mean."""
        means = torch.zeros(len(net.class_ids), net.feature_dim)
        for row, class_id in enumerate(net.class_ids):
            dataset, indices = self.memory.per_class.get(class_id, (None, []))
            if indices:
                vectors = F.normalize(self._features(strategy, net, dataset, indices), dim=1, eps=EPSILON)
                means[row] = F.normalize(vectors.mean(dim=0), dim=0, eps=EPSILON)
        self.class_means = means


# --------------------------------------------------------------------------- builders


def split_backbone(feature_extractor: nn.Module, at: str = "auto") -> tuple[nn.Module, nn.Module]:
    """(generalized, specialized) halves of a backbone.

    ResNet-32 splits at a named stage (`auto` = ``stage_2``, MEMO's choice); a plain
    `nn.Sequential` (our MLP/CNN) splits before its last parametric layer (`auto`) or at an
    integer index.
    """
    if hasattr(feature_extractor, "split"):
        return feature_extractor.split("stage_2" if at == "auto" else at)
    if isinstance(feature_extractor, nn.Sequential):
        if at == "auto":
            parametric = [i for i, m in enumerate(feature_extractor) if isinstance(m, (nn.Linear, nn.Conv2d))]
            cut = parametric[-1]
        else:
            cut = int(at)
        return feature_extractor[:cut], feature_extractor[cut:]
    raise TypeError(f"cannot split a {type(feature_extractor).__name__}; give a ResNet-32 or an nn.Sequential")


def memo_net(model, *, split_at: str = "auto", n_classes: int, train_shared: bool = True) -> ExpandableNet:
    """MEMO's network from one of our `ClassifierNet`s (its head is replaced by the growing one)."""
    shared, specialized = split_backbone(model.feature_extractor, split_at)
    return ExpandableNet(shared, specialized, model.feature_dim, n_classes, train_shared=train_shared)


def der_net(model, *, n_classes: int) -> ExpandableNet:
    """DER's network: the whole backbone is specialized, one copy per task."""
    return ExpandableNet(None, model.feature_extractor, model.feature_dim, n_classes)


def _template(ctx: StrategyContext, net: ExpandableNet, params) -> SupervisedTemplate:
    plugin = MEMOPlugin(mem_size=params.mem_size, alpha_aux=params.alpha_aux, weight_align=params.weight_align)
    return SupervisedTemplate(model=net.to(ctx.device), optimizer=ctx.optimizer, criterion=ctx.criterion,
                              **ctx.template_kwargs([plugin]))


def build_memo(ctx: StrategyContext, params) -> SupervisedTemplate:
    net = memo_net(ctx.model, split_at=params.split_at, n_classes=ctx.scenario.n_classes,
                   train_shared=params.train_shared)
    return _template(ctx, net, params)


def build_der(ctx: StrategyContext, params) -> SupervisedTemplate:
    return _template(ctx, der_net(ctx.model, n_classes=ctx.scenario.n_classes), params)


def _final_backbone(net: ExpandableNet, scenario) -> int:
    from cl.models import count_parameters

    for classes in scenario.classes_per_experience:
        net.expand(list(classes))
    return count_parameters(net.shared) + count_parameters(net.specialized)


def memo_final_backbone_params(model, scenario, params) -> int:
    """φg + one φs per experience (MEMO: 112,016 + T × 351,488 for ResNet-32)."""
    return _final_backbone(memo_net(model, split_at=params.split_at, n_classes=scenario.n_classes), scenario)


def der_final_backbone_params(model, scenario, params) -> int:
    """One whole backbone per experience (DER: T × 463,504 for ResNet-32)."""
    return _final_backbone(der_net(model, n_classes=scenario.n_classes), scenario)
