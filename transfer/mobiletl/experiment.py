"""The MobileTL transfer experiment: pretrain a small MobileNet on a source set, transfer to a target.

Registered as the transfer experiment ``mobiletl`` (options: `transfer.mobiletl.params.MobileTLTransferParams`).
One run = one transfer method on one seed:

1. Source model: torchvision's MobileNetV2/V3 (random init, `width_mult`, 3-channel input at
   `image_size`), trained on the source set for `pretrain_epochs`. It is cached under
   ``<cache>/mobiletl/<key>.pt``, keyed by everything it depends on (architecture, data,
   sizes, schedule, seed), so the methods of a grid share one pretraining per seed.
2. Transfer to the target set with a new classifier, by `method`:
   ``full`` (every parameter), ``last_layer`` (the classifier only), ``bias_bn`` (biases,
   batch-norm parameters and the classifier: TinyTL-like), ``mobiletl`` (`transfer.mobiletl.model`;
   `fold_bn`, `activation_mask`, `quantize_saved_activations` switch its ingredients one by one), and
   ``plain_topk`` (the same `num_trainable_blocks` top blocks and head train, exact activations, ordinary
   BN: what freezing the lower blocks costs, without MobileTL's approximations — the paper has no such
   baseline). With `bn_reestimate` (mobiletl / plain_topk) every BN's running statistics are first
   re-estimated on the target's training images (AdaBN-style, `reestimate_bn`: forward only, no gradient),
   so the frozen blocks normalise with target statistics and MobileTL folds target statistics.
   With `val_fraction` a seeded random share of the target's training images is held out; with
   `lr_candidates` each lr trains a fresh copy on the rest and the one with the best validation accuracy
   is kept and tested (the test set chooses nothing); `lr` and `val/acc` are logged (per candidate
   `val/acc_lr<lr>`). Cost metrics count the kept model's training, not the sweep (× len(lr_candidates)).
3. Logged: target test accuracy; the source model's accuracy on its training (`source_acc`) and its test
   images (`source/test_acc`, first 2,000); activation memory of one training step
   (`transfer.mobiletl.memory.ActivationMeter`, batch = train.batch_size); trainable parameters;
   training FLOPs (one step counted with `FlopCounterMode`, times the number of steps).

Execution: for plain_topk and mobiletl the frozen lower blocks' outputs are computed once per run and the epochs
run the trainable top on them (`transfer.mobiletl.feature_cache`; same losses, weights and metrics as running the
whole network, which the other methods and any model breaking the premise still do). The cost metrics above are
the method's — measured on the whole network's step — not what this shortcut executes.

Grayscale images are repeated to 3 channels and resized (bilinear) to `image_size`.
Optimiser: SGD with the run's `train` settings (lr, momentum, weight decay, batch size);
`train.epochs` is the number of transfer epochs.

Checkpoints: the transfer training checkpoints after every epoch through the run's context
(`cl.transfer_run.TransferContext`), so a killed run resumes at its next epoch with the same
result. Source pretraining runs under a forked RNG: a run that pretrains and one that takes the
source model from the cache then continue with the same random numbers (before, a cache hit changed
the dropout masks and the new head's initialisation of the transfer that followed).
"""
from __future__ import annotations

import copy
import logging
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from cl.cache import cached
from cl.cost import count_flops
from cl.scenarios import image_tensors
from cl.training import run_epochs
from cl.transfer_run import TransferContext
from transfer.mobiletl.feature_cache import FeatureCache
from transfer.mobiletl.memory import saved_activation_bytes
from transfer.mobiletl.model import MobileTLConfig, mobiletl, reestimate_bn

log = logging.getLogger(__name__)


def _prepare(x: torch.Tensor, size: int) -> torch.Tensor:
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False) if x.shape[-1] != size else x
    return x.expand(-1, 3, -1, -1).contiguous() if x.shape[1] == 1 else x


def build_network(arch: str, width_mult: float, n_classes: int) -> nn.Module:
    import torchvision

    factory = getattr(torchvision.models, arch)
    return factory(weights=None, width_mult=width_mult, num_classes=n_classes)


def classifier_layer(model: nn.Module) -> tuple[nn.Module, str, nn.Linear]:
    """(parent, attribute, layer) of the final Linear of torchvision's MobileNet classifier."""
    parent = model.classifier
    index = max(i for i, m in enumerate(parent) if isinstance(m, nn.Linear))
    return parent, str(index), parent[index]


def train_epochs(model, x, y, *, epochs, train, device, generator, on_epoch=None, ctx: TransferContext | None = None,
                 checkpoint_every: int = 1, lr: float | None = None, resumed: dict | None = None,
                 step_offset: int = 0, extra_state=None, features: FeatureCache | None = None) -> int:
    """Plain SGD over (x, y) at `lr` (default `train.lr`); returns the number of optimiser steps.

    With `features` (a `FeatureCache` of `x`), batches run the trainable top on the cached outputs of the frozen
    lower blocks when the model allows it (`transfer.mobiletl.feature_cache`: same result, less compute), and the
    whole network otherwise.

    With `ctx`, the run checkpoints every `checkpoint_every` epochs (model, optimiser, the batch-order
    generator, epochs and steps done, plus ``extra_state()`` if given) as position `step_offset` + epochs done;
    `resumed` (what `ctx.resume()` returned) continues from such a checkpoint. Without `resumed`, the run
    resumes by itself from its last checkpoint.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=train.lr if lr is None else lr, momentum=train.momentum,
                                weight_decay=train.weight_decay)
    steps, start = 0, 0
    state = resumed if resumed is not None else (ctx.resume() if ctx is not None and extra_state is None else None)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        start, steps = int(state["epoch"]), int(state["steps"])

    if features is not None and features.x is not x:
        raise ValueError("features: a FeatureCache of other images than the x being trained on")
    forward = features.forward_for(model) if features is not None else None

    def batch_loss(batch):
        logits = forward(batch) if forward is not None else model(x[batch].to(device))
        return F.cross_entropy(logits, y[batch].to(device))

    def after_epoch(epoch: int, mean_loss: float, steps: int) -> None:
        if on_epoch is not None:
            on_epoch(epoch, mean_loss)
        if ctx is not None:
            ctx.checkpoint(step_offset + epoch + 1,
                           lambda: {"epoch": epoch + 1, "steps": steps, "model": model.state_dict(),
                                    "optimizer": optimizer.state_dict(), "generator": generator.get_state(),
                                    **(extra_state() if extra_state is not None else {})},
                           every=checkpoint_every)

    return run_epochs(model, len(y), batch_loss, optimizer, epochs=epochs, batch_size=train.batch_size,
                      generator=generator, first_epoch=start, steps_done=steps, after_epoch=after_epoch)


@torch.no_grad()
def accuracy(model, x, y, device, batch_size: int = 512) -> float:
    model.eval()
    correct = sum(int((model(x[i:i + batch_size].to(device)).argmax(1).cpu() == y[i:i + batch_size]).sum())
                  for i in range(0, len(y), batch_size))
    return correct / len(y)


def source_model(ctx: TransferContext, params, x, y) -> nn.Module:
    """The pretrained source network, from the cache when the same pretraining was done before."""
    key_fields = {"arch": params.arch, "width_mult": params.width_mult, "image_size": params.image_size,
                  "source": params.source, "source_samples_per_class": params.source_samples_per_class,
                  "pretrain_epochs": params.pretrain_epochs, "lr": ctx.train.lr, "momentum": ctx.train.momentum,
                  "weight_decay": ctx.train.weight_decay, "batch_size": ctx.train.batch_size, "seed": ctx.seed,
                  "n_classes": int(y.max()) + 1}
    model = build_network(params.arch, params.width_mult, key_fields["n_classes"]).to(ctx.device)

    def pretrain(folder: Path) -> None:
        generator = torch.Generator().manual_seed(ctx.seed)
        # pretraining draws dropout masks from the global RNG: fork it, so a run that pretrains and one that
        # finds the model in the cache continue with the same random numbers (same result either way)
        with torch.random.fork_rng(devices=[] if ctx.device.type != "cuda" else None):
            train_epochs(model, x, y, epochs=params.pretrain_epochs, train=ctx.train, device=ctx.device,
                         generator=generator,
                         on_epoch=lambda e, loss: ctx.runlog.log_metrics({"source/train_loss": loss}, step=e))
        torch.save(model.state_dict(), folder / "model.pt")

    path = cached("mobiletl", key_fields, pretrain, name="source", complete="model.pt", root=ctx.cache_dir)
    model.load_state_dict(torch.load(path / "model.pt", map_location=ctx.device))
    return model


def prepare_for_transfer(model: nn.Module, params, n_classes: int, bn_data: torch.Tensor | None = None,
                         device=None) -> nn.Module:
    """New classifier for the target classes, then the method's choice of what trains.

    With `bn_data` (the target's training images) and `params.bn_reestimate`, every BN's running statistics are
    re-estimated on it first (`reestimate_bn`): the frozen blocks then normalise with target statistics, and the
    top blocks' internal BNs are folded (mobiletl) from target statistics.
    """
    parent, attr, old = classifier_layer(model)
    setattr(parent, attr, nn.Linear(old.in_features, n_classes).to(old.weight.device))
    head = getattr(parent, attr)
    if params.method == "full":
        return model
    if params.method in ("mobiletl", "plain_topk"):
        if params.bn_reestimate:
            if bn_data is None:
                raise ValueError("bn_reestimate: no target images given to re-estimate BN statistics on")
            reestimate_bn(model, bn_data, device=device)
        plain = params.method == "plain_topk"
        return mobiletl(model, MobileTLConfig(num_trainable_blocks=params.num_trainable_blocks,
                                              activation_mask="none" if plain else params.activation_mask,
                                              fold_internal_bn=False if plain else params.fold_bn,
                                              quantize_saved_activations=params.quantize_saved_activations))
    model.requires_grad_(False)
    head.requires_grad_(True)
    if params.method == "bias_bn":
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.requires_grad_(True)
            elif getattr(module, "bias", None) is not None and isinstance(module.bias, nn.Parameter):
                module.bias.requires_grad_(True)
    return model


def validation_split(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, validation indices): a seeded random `fraction` of the target's training data held out."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 2))
    n_val = max(1, round(fraction * n)) if fraction > 0 else 0
    return order[n_val:].sort().values, order[:n_val].sort().values


def run(ctx: TransferContext, params) -> dict[str, float]:
    xs, ys, xs_test, ys_test = image_tensors(params.source, data_root=params.data_root,
                                             train_samples_per_class=params.source_samples_per_class)
    xt, yt, xt_test, yt_test = image_tensors(params.target, data_root=params.data_root,
                                             train_samples_per_class=params.target_samples_per_class)
    if params.test_samples is not None:
        xt_test, yt_test = xt_test[: params.test_samples], yt_test[: params.test_samples]
    size = params.image_size
    xs, xt, xt_test = _prepare(xs, size), _prepare(xt, size), _prepare(xt_test, size)
    xs_test, ys_test = _prepare(xs_test[:2000], size), ys_test[:2000]

    source = source_model(ctx, params, xs, ys)
    source_acc = accuracy(source, xs[:2000], ys[:2000], ctx.device)
    source_test_acc = accuracy(source, xs_test, ys_test, ctx.device)
    source_state = {k: v.clone() for k, v in source.state_dict().items()}
    n_classes = int(yt.max()) + 1
    train_idx, val_idx = validation_split(len(yt), params.val_fraction, ctx.seed)
    x_train, y_train, x_val, y_val = xt[train_idx], yt[train_idx], xt[val_idx], yt[val_idx]

    def fresh_model() -> nn.Module:
        source.load_state_dict(source_state)
        model = copy.deepcopy(source)
        return prepare_for_transfer(model, params, n_classes, bn_data=x_train, device=ctx.device).to(ctx.device)

    model = fresh_model()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    # cost of one training step, measured once before training (the step is then undone by reloading)
    probe = x_train[: ctx.train.batch_size].to(ctx.device)
    state = {k: v.clone() for k, v in model.state_dict().items()}   # the probes move BN statistics
    model.train()
    memory = saved_activation_bytes(model, probe).total_bytes
    _, step_flops = count_flops(lambda: F.cross_entropy(model(probe), y_train[: len(probe)].to(ctx.device)).backward())
    model.load_state_dict(state)
    model.zero_grad(set_to_none=True)
    samples_per_step = len(probe)

    candidates = params.lr_candidates or [ctx.train.lr]
    epochs = ctx.train.epochs
    resumed = ctx.resume()
    sweep = resumed.get("sweep", {"done": [], "best": None}) if resumed is not None else {"done": [], "best": None}
    steps = 0
    features = FeatureCache(x_train, batch_size=ctx.train.batch_size, device=ctx.device)
    for index, lr in enumerate(candidates):
        if index < len(sweep["done"]):
            continue
        if index > 0:
            # later candidates draw their new head from a seeded fork of the RNG: a run resumed in the middle of
            # the sweep then builds the same model without moving the global RNG the checkpoint restored
            with torch.random.fork_rng(devices=[] if ctx.device.type != "cuda" else None):
                torch.manual_seed(ctx.seed * 1000 + index)
                model = fresh_model()
        generator = torch.Generator().manual_seed(ctx.seed + 1)
        label = f"lr{lr:g}/" if len(candidates) > 1 else ""
        steps = train_epochs(
            model, x_train, y_train, epochs=epochs, train=ctx.train, device=ctx.device, generator=generator,
            ctx=ctx, lr=lr, resumed=resumed if resumed is not None and resumed.get("candidate", 0) == index else None,
            step_offset=index * epochs, extra_state=lambda: {"candidate": index, "sweep": sweep}, features=features,
            on_epoch=lambda e, loss: (ctx.runlog.log_metrics({f"{label}train/loss": loss}, step=e),
                                      ctx.runlog.progress(index * epochs + e + 1, len(candidates) * epochs,
                                                          f"lr {lr:g} epoch {e + 1}")))
        resumed = None
        val_acc = accuracy(model, x_val, y_val, ctx.device) if len(y_val) else float("nan")
        if len(candidates) > 1:
            ctx.runlog.log_metrics({f"val/acc_lr{lr:g}": val_acc}, step=0)
            log.info("lr %g: validation accuracy %.4f", lr, val_acc)
        if sweep["best"] is None or val_acc > sweep["done"][sweep["best"]][1]:
            sweep["best"] = index
            best_state = {"model": {k: v.clone() for k, v in model.state_dict().items()}, "steps": steps}
            sweep["best_state"] = best_state
        sweep["done"].append((lr, val_acc))
    chosen_lr, val_acc = sweep["done"][sweep["best"]]
    model.load_state_dict(sweep["best_state"]["model"])
    steps = sweep["best_state"]["steps"]

    total_flops = step_flops / samples_per_step * len(y_train) * epochs
    metrics = {
        "acc": accuracy(model, xt_test, yt_test, ctx.device),
        "source_acc": source_acc,
        "source/test_acc": source_test_acc,
        "memory/activation_bytes": memory,
        "memory/trainable_params": trainable,
        "cost/flops_per_step": step_flops,
        "cost/train_flops": total_flops,
        "train_steps": steps,
        "lr": chosen_lr,
    }
    if len(y_val):
        metrics["val/acc"] = val_acc
    return metrics
