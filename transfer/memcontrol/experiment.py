"""The MemControl transfer experiment: a DDPM pretrained on a source set, fine-tuned on a target set
in which a few images are repeated, by full fine-tuning, PEFT on every block, PEFT on a random
subset of blocks, or PEFT on the subset MemControl's search chooses.

Registered as ``memcontrol`` (options: `transfer.memcontrol.params.MemControlTransferParams`). Method:
Dutt et al., WACV 2025, arXiv 2405.19458 (see `transfer.memcontrol.search` for the search and what in it
is the paper's, `transfer.memcontrol.diffusion` for the model and the objectives). One run = one method on
one seed:

1. Source model: `transfer.memcontrol.diffusion.TinyUNet` trained as a class-conditional DDPM on the source
   set (default MNIST) for `pretrain_steps`, cached under ``<cache>/memcontrol/ddpm-<key>/``
   (key: everything it depends on, the seed included), so a grid's methods share it.
2. Target data (default Fashion-MNIST — a domain shift, as SD → chest X-rays in the paper):
   `target_samples_per_class` training images per class; `mem_images` of them (one class after
   another) appear `repeats` times each in the fine-tuning set — the paper's memorisation
   subset (they repeat theirs ×50) — each always with a prompt label of its own
   (`transfer.memcontrol.diffusion.add_prompt_labels`: why), the others once with their class. The label
   table is frozen in every method, as SD's text encoder is in the paper.
3. A feature network for the FID (`FeatureNet`, a small CNN) trained on the target's training
   split, cached and independent of the run seed, so FIDs compare across runs.
4. By `method`: ``none`` (no fine-tuning: the pretrained model), ``full`` (every parameter),
   ``peft_all`` (the `peft` recipe on all blocks), ``random`` (on a random mask drawn from the
   seed, each bit 1 with probability ½, at least one), ``memcontrol`` (the search: `n_trials`
   trials, each fine-tuning with its (mask, lr) and measuring memorisation on the repeated
   images and FID on `search_samples` generations; then stage 2 retrains with the chosen mask
   and lr). Fine-tuning: AdamW, `train.epochs` passes over the fine-tuning set at
   `train.batch_size`, at `train.lr` — except MemControl, which uses the lr it searched.
5. Final metrics, on `eval_samples` generations (DDIM, `sample_steps`, guidance `guidance`,
   labels balanced over classes, a generator seed not used by the search):
   ``memorization`` (the paper's noise-magnitude metric on the repeated images with their
   prompts), ``fid`` (class labels), ``heldout_mem_rate`` and ``heldout_nn_ratio`` (the
   held-out measure the search never sees, in place of the paper's extraction attack:
   `samples_per_prompt` generations per memorised prompt, their nearest-neighbour distance
   ratio to the fine-tuning images vs. an equally large held-out real set; `nn_threshold`),
   ``trainable_params`` and ``trainable_pct`` (of the U-Net's parameters, LoRA adapters
   counted as trained parameters), ``lr``. The search's trials are child runs of the run in
   MLflow when the run writes to MLflow directly (local serial launch, ``clsuite run``); under a
   parallel or Ray launch workers do not talk to MLflow, and the trials are logged as
   ``search/*`` metrics of the run (step = trial number) — always, in both cases — with the
   front and every trial in the artifact ``memcontrol/search.json``.
   Also ``kid`` and ``kid_std`` (Kernel Inception Distance on the same features, unbiased at small n,
   averaged over `kid_subsets` subsets; `transfer.memcontrol.diffusion.kernel_inception_distance`) and
   ``kid_floor``, the KID between two disjoint halves of the real test images of the evaluation's size:
   what a perfect generator scores here. Read quality numbers against it, not against zero.
6. The search's objectives are options: memorisation by the paper's noise magnitude (``noise``) or by
   what measures copying (``copy_rate``: the held-out measure above on the search's own generations;
   ``nn_ratio``: minus its median ratio, continuous); quality by FID or KID on `search_samples`
   generations; their real references from the test split (the first grid) or, with
   ``search_reference: train``, from training images outside the fine-tuning set, so nothing the
   search chooses on is test data. ``seed_masks`` starts the study with the all-blocks and every
   single-block mask.

Deviations from the paper, all for scale or because nothing can be downloaded here:
- a pixel-space DDPM of ~0.3M parameters, MNIST → Fashion-MNIST at 28×28, instead of Stable
  Diffusion v1.5 (latent, text-conditioned) → MIMIC-CXR;
- class labels plus one prompt label per memorised image instead of radiology reports;
- the mask covers this U-Net's 10 blocks instead of SD's 13 cross-attention transformer blocks;
- PEFT inside a block: peft's LoRA (or biases, or norms) instead of SV-Diff / DiffFit;
- the searched lr range defaults to 1e-4…1e-2 (the paper: 1e-5…1e-3) — a few hundred AdamW
  steps on a tiny model;
- FID on a small CNN's features and a few hundred samples (the paper: a chest-X-ray DenseNet);
- held-out memorisation by the nearest-neighbour distance ratio, not the tiled-L2 extraction
  attack;
- DDIM with 20 steps and guidance 2 when generating;
- no pruning (Optuna does not prune multi-objective studies), 16 trials by default;
- stage 2 rebuilds the chosen trial's model (same mask, same LoRA initial weights — seeded from
  the run seed and the trial number —, same budget, data order and noise) and checks it: the
  final model's noise-magnitude memorisation and search FID are recomputed and compared with the
  trial's (`search/stage2_*`; `search/stage2_matches_trial` = 1 when both agree to 1e-6 relative,
  which they do on CPU, where these operations are deterministic);
- the choice rule on the front is ours (`transfer.memcontrol.search`).

The Optuna study is stored under ``<cache>/memcontrol/studies/<key>.db`` (key: the run's options,
train settings and seed), so a rerun of an interrupted run resumes its search.
"""
from __future__ import annotations

import copy
import json
import logging
import math
from pathlib import Path

import numpy as np
import torch

from cl.cache import cached
from cl.config import canonical_hash
from cl.scenarios import image_tensors
from cl.transfer_run import TransferContext, single_thread
from transfer.memcontrol import diffusion as D
from transfer.memcontrol.search import (Block, LoraOptions, MemControlSearch, MlflowTrialRecorder, apply_mask,
                                 count_parameters, single_block_masks, trial_init_seed)

log = logging.getLogger(__name__)

KID_SEED = 10_009             # the subsets KID averages over
COPY_SEARCH_SEED = 10_013     # the search's generations for the memorised prompts
FID_SEARCH_SEED = 10_007      # generator seeds: the search's generations, and the final evaluation's
FID_EVAL_SEED = 20_011
MEM_METRIC_SEED = 30_011


def unet_blocks(recipe: str) -> list[Block]:
    return [Block(name, module, recipe) for name, module in zip(D.TinyUNet.block_names, D.TinyUNet.block_modules)]


def unet_config(params, image_size: int, n_classes: int) -> D.UNetConfig:
    return D.UNetConfig(image_size=image_size, n_classes=n_classes, channels=tuple(params.channels),
                        emb_dim=params.emb_dim, groups=params.groups)


def pretrained_ddpm(ctx: TransferContext, params, ddpm: D.DDPM) -> D.TinyUNet:
    """The DDPM trained on the source set, from the cache when the same pretraining was done before."""
    xs, ys, _, _ = image_tensors(params.source, data_root=params.data_root,
                                 train_samples_per_class=params.source_samples_per_class)
    config = unet_config(params, xs.shape[-1], int(ys.max()) + 1)
    key = {"source": params.source, "source_samples_per_class": params.source_samples_per_class,
           "unet": config.to_dict(), "timesteps": ddpm.T, "steps": params.pretrain_steps, "lr": params.pretrain_lr,
           "batch_size": params.pretrain_batch_size, "p_uncond": params.p_uncond, "seed": ctx.seed}
    model = D.TinyUNet(config).to(ctx.device)

    def pretrain(folder: Path) -> None:
        torch.manual_seed(ctx.seed)
        trained = D.TinyUNet(config).to(ctx.device)
        every = max(1, params.pretrain_steps // 20)

        def on_step(step, loss):
            if step % every == 0:
                ctx.runlog.log_metrics({"pretrain/loss": loss}, step=step)
                ctx.runlog.progress(step, params.pretrain_steps, "pretraining the DDPM")

        D.train_steps(trained, ddpm, D.to_model_range(xs), ys, steps=params.pretrain_steps, lr=params.pretrain_lr,
                      batch_size=params.pretrain_batch_size, p_uncond=params.p_uncond,
                      generator=torch.Generator().manual_seed(ctx.seed), device=ctx.device, on_step=on_step)
        torch.save(trained.state_dict(), folder / "model.pt")

    path = cached("memcontrol", key, pretrain, name="ddpm", complete="model.pt", root=ctx.cache_dir)
    model.load_state_dict(torch.load(path / "model.pt", map_location=ctx.device))
    return model


def feature_net(ctx: TransferContext, params, x_train, y_train, x_test, y_test) -> tuple[D.FeatureNet, float]:
    """The FID feature extractor for the target (cached; seed 0 whatever the run's seed) and its test accuracy."""
    key = {"target": params.target, "samples_per_class": params.classifier_samples_per_class,
           "epochs": params.classifier_epochs, "image_size": x_train.shape[-1], "seed": 0}
    net = D.FeatureNet(x_train.shape[-1], n_classes=int(y_train.max()) + 1).to(ctx.device)

    def train(folder: Path) -> None:
        from cl.scenarios import _per_class_subset

        xc, yc = _per_class_subset(x_train, y_train, params.classifier_samples_per_class)
        trained = D.train_classifier(xc, yc, image_size=x_train.shape[-1], epochs=params.classifier_epochs, seed=0,
                                     device=ctx.device)
        torch.save(trained.state_dict(), folder / "model.pt")

    path = cached("memcontrol", key, train, name="features", complete="model.pt", root=ctx.cache_dir)
    net.load_state_dict(torch.load(path / "model.pt", map_location=ctx.device))
    net.eval()
    return net, D.classifier_accuracy(net, x_test, y_test, ctx.device)


def finetune_data(params, x, y, seed: int):
    """(unique fine-tuning images, their classes, indices of the memorised ones among them, fine-tuning x, y).

    In the fine-tuning set a memorised image appears `repeats` times, always with its own prompt
    label (``n_classes + i`` for the i-th); every other image once, with its class.
    """
    rng = np.random.default_rng(seed)
    classes = sorted(set(y.tolist()))
    keep = []
    for c in classes:
        idx = np.flatnonzero(y.numpy() == c)
        if len(idx) < params.target_samples_per_class:
            raise ValueError(f"transfer.target_samples_per_class: {params.target_samples_per_class} but class {c} "
                             f"of {params.target} has {len(idx)} training images; lower it")
        keep.append(rng.choice(idx, params.target_samples_per_class, replace=False))
    idx = np.sort(np.concatenate(keep))
    xu, yu = x[idx], y[idx]
    mem = []
    for k in range(params.mem_images):
        c = classes[k % len(classes)]
        candidates = [i for i in np.flatnonzero(yu.numpy() == c) if i not in mem]
        if not candidates:
            raise ValueError(f"transfer.mem_images: {params.mem_images} exceeds the fine-tuning images of class {c}")
        mem.append(int(rng.choice(candidates)))
    mem_idx = torch.tensor(mem, dtype=torch.long)
    regular = torch.tensor([i for i in range(len(yu)) if i not in mem], dtype=torch.long)
    prompts = len(classes) + torch.arange(len(mem))
    x_ft = torch.cat([xu[regular], xu[mem_idx].repeat(params.repeats, 1, 1, 1)])
    y_ft = torch.cat([yu[regular], prompts.repeat(params.repeats)])
    return xu, yu, mem_idx, x_ft, y_ft


def _outside(x: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
    """The rows of `x` that are not rows of `inside` (exact pixel equality)."""
    seen = {bytes(row.numpy().tobytes()) for row in inside}
    keep = [i for i in range(len(x)) if bytes(x[i].numpy().tobytes()) not in seen]
    return x[torch.tensor(keep, dtype=torch.long)]


def real_kid_floor(fnet, x_test, params, device) -> "D.KID":
    """KID between two disjoint halves of the target's real test images, each as large as the evaluation's
    sample: the value a perfect generator would score here, the floor every quality number is read against."""
    n = min(params.eval_samples, len(x_test) // 2)
    order = torch.from_numpy(np.random.default_rng(KID_SEED).permutation(len(x_test)))
    a, b = (D.features(fnet, x_test[order[i * n:(i + 1) * n]], device) for i in (0, 1))
    return _kid(a, b, params)


def _kid(features, reference, params) -> "D.KID":
    """KID as every number of a run is computed: the run's subsets and the fixed subset seed."""
    return D.kernel_inception_distance(features, reference, subsets=params.kid_subsets,
                                       subset_size=params.kid_subset_size, seed=KID_SEED)


def random_mask(n: int, seed) -> tuple[int, ...]:
    rng = np.random.default_rng(seed)
    while True:
        mask = tuple(int(b) for b in rng.integers(0, 2, n))
        if any(mask):
            return mask


def _samples_png(memorised, generated_by_label, labels) -> bytes:
    """Each memorised image next to generations for its label."""
    from cl.plots import to_png
    from matplotlib.figure import Figure

    rows = len(memorised)
    cols = 1 + max((len(g) for g in generated_by_label), default=0)
    fig = Figure(figsize=(cols * 0.8, rows * 0.8 + 0.3))
    for r in range(rows):
        images = [memorised[r]] + list(generated_by_label[r])
        for c, img in enumerate(images):
            ax = fig.add_subplot(rows, cols, r * cols + c + 1)
            ax.imshow(((img[0] + 1) / 2).clamp(0, 1).numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(str(int(labels[r])), fontsize=7)
    fig.suptitle("memorised image | generations for its label", fontsize=7)
    return to_png(fig, dpi=80)


def run(ctx: TransferContext, params) -> dict[str, float]:
    with single_thread():
        return _run(ctx, params)


def _run(ctx: TransferContext, params) -> dict[str, float]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)     # trials are logged here, not on stderr
    ddpm = D.DDPM(timesteps=params.timesteps)
    base = pretrained_ddpm(ctx, params, ddpm)

    xt, yt, xt_test, yt_test = image_tensors(params.target, data_root=params.data_root)
    xt, xt_test = D.to_model_range(xt), D.to_model_range(xt_test)
    if xt.shape[-1] != base.config.image_size:
        raise ValueError(f"transfer.target: {params.target} images are {xt.shape[-1]}² but the source model's are "
                         f"{base.config.image_size}²; pick a source and target of the same size")
    fnet, fnet_acc = feature_net(ctx, params, xt, yt, xt_test, yt_test)
    xu, yu, mem_idx, x_ft, y_ft = finetune_data(params, xt, yt, ctx.seed)
    n_classes = int(yt.max()) + 1
    x_mem, c_mem = xu[mem_idx], yu[mem_idx]
    p_mem = n_classes + torch.arange(len(mem_idx))            # the memorised images' own prompt labels
    D.add_prompt_labels(base, c_mem, seed=ctx.seed)
    base.embed.label.requires_grad_(False)                    # the "text encoder": frozen in every method
    if len(yu) > len(yt_test):
        raise ValueError(f"transfer.target_samples_per_class: {len(yu)} fine-tuning images need as many held-out "
                         f"test images, {params.target} has {len(yt_test)}; lower it")
    heldout = xt_test[torch.from_numpy(np.random.default_rng(ctx.seed).choice(len(yt_test), len(yu), replace=False))]
    real_features = D.features(fnet, xt_test[: params.fid_real], ctx.device)
    # what the search compares with: the test split (the first grid's choice) or training images the
    # fine-tuning never sees, so that nothing the search chooses on is test data
    if params.search_reference == "train":
        unused = _outside(xt, xu)
        pick = np.random.default_rng([ctx.seed, 1]).permutation(len(unused))
        if len(pick) < len(yu) + 2:
            raise ValueError(f"transfer.search_reference: train leaves {len(pick)} training images outside the "
                             "fine-tuning set; need more than the fine-tuning set's size")
        search_heldout = unused[torch.from_numpy(pick[: len(yu)])]
        search_real = D.features(fnet, unused[torch.from_numpy(pick[len(yu): len(yu) + params.fid_real])], ctx.device)
    else:
        search_heldout, search_real = heldout, real_features
    steps = ctx.train.epochs * math.ceil(len(y_ft) / ctx.train.batch_size)

    def finetune(model, lr):
        D.train_steps(model, ddpm, x_ft, y_ft, steps=steps, lr=lr, batch_size=ctx.train.batch_size,
                      p_uncond=params.p_uncond, generator=torch.Generator().manual_seed(ctx.seed + 1),
                      device=ctx.device, weight_decay=ctx.train.weight_decay)

    def memorization(model):
        return D.noise_memorization(model, ddpm, x_mem, p_mem, passes=params.mem_passes, seed=MEM_METRIC_SEED,
                                    device=ctx.device)

    def generate(model, labels, seed):
        return ddpm.sample(model, labels, steps=params.sample_steps, guidance=params.guidance,
                           generator=torch.Generator().manual_seed(seed), device=ctx.device)

    def search_quality(model):
        images = generate(model, torch.arange(params.search_samples) % n_classes, FID_SEARCH_SEED + ctx.seed)
        found = D.features(fnet, images, ctx.device)
        if params.search_quality == "kid":
            return _kid(found, search_real, params).mean
        return D.frechet_distance(found, search_real)

    def search_memorization(model):
        if params.search_memorization == "noise":
            return memorization(model)
        labels = p_mem.repeat_interleave(params.samples_per_prompt)
        rate, ratio = D.nn_memorization(generate(model, labels, COPY_SEARCH_SEED + ctx.seed), xu, search_heldout,
                                        threshold=params.nn_threshold)
        return rate if params.search_memorization == "copy_rate" else -ratio

    blocks = unet_blocks(params.peft)
    lora = LoraOptions(r=params.lora_rank, alpha=params.lora_alpha)
    total = count_parameters(base) - base.embed.label.weight.numel()   # the U-Net's, the label table apart
    extra: dict[str, float] = {}
    search_lr = ctx.train.lr
    init_seed = trial_init_seed(ctx.seed, 0)        # LoRA's initial weights outside the search
    if params.method == "memcontrol":
        recorders = [lambda rec: ctx.runlog.log_metrics(
            {f"search/{k}": v for k, v in rec["metrics"].items()}, step=rec["trial"])]
        if hasattr(ctx.runlog, "client") and hasattr(ctx.runlog, "run_id"):   # writes to MLflow itself
            recorders.append(MlflowTrialRecorder(ctx.runlog.client, ctx.runlog.run_id))
        key = {"options": params.model_dump(mode="json"), "train": ctx.train.model_dump(mode="json"),
               "seed": ctx.seed}
        storage = ctx.cache_dir / "memcontrol" / "studies" / f"{canonical_hash(key)}.db"
        storage.parent.mkdir(parents=True, exist_ok=True)
        search = MemControlSearch(
            model=base, blocks=blocks, finetune=finetune, memorization=search_memorization, quality=search_quality,
            initial_masks=single_block_masks(len(blocks)) if params.seed_masks else (),
            lr_range=(params.lr_min, params.lr_max), lora=lora, sampler=params.sampler,
            population_size=params.population_size, seed=ctx.seed, storage=f"sqlite:///{storage}",
            study_name="memcontrol", choice=params.choice, tolerance=params.fid_tolerance, recorders=recorders,
            objective_names=(f"memorization_{params.search_memorization}", params.search_quality),
            reference_params=total)
        result = search.run(params.n_trials)
        ctx.runlog.log_artifact("memcontrol/search.json", json.dumps(result.to_dict(), indent=1).encode())
        mask, search_lr = result.chosen.mask, result.chosen.lr
        init_seed = trial_init_seed(search.seed, result.chosen.number)
        extra = {"search/completed": len(result.trials), "search/failed": result.failed,
                 "search/pareto_size": len(result.front), "search/chosen_trial": result.chosen.number,
                 "search/chosen_memorization": result.chosen.values[0],
                 f"search/chosen_{params.search_quality}": result.chosen.values[1]}
        log.info("memcontrol chose trial %d: mask %s lr %.2e", result.chosen.number, mask, search_lr)
        log.info("Pareto front (%s, %s): %s", *search.objective_names, "; ".join(
            f"trial {p.number} {''.join(map(str, p.mask))} lr {p.lr:.1e} → {p.values[0]:.4g}, {p.values[1]:.4g}"
            + (" (chosen)" if p.number == result.chosen.number else "") for p in result.front))
    elif params.method == "peft_all":
        mask = (1,) * len(blocks)
    elif params.method == "random":
        mask = random_mask(len(blocks), [ctx.seed, params.random_draw])
    else:                                   # full / none
        mask = None

    ctx.runlog.progress(0, 1, f"fine-tuning ({params.method})")
    model = copy.deepcopy(base)
    if mask is not None:
        model = apply_mask(model, blocks, mask, lora=lora, init_seed=init_seed)
        ctx.runlog.log_params({"memcontrol.mask": "".join(map(str, mask)),
                               "memcontrol.mask_blocks": ",".join(b.name for b, bit in zip(blocks, mask) if bit)})
    elif params.method == "none":
        model.requires_grad_(False)
    else:                                   # full: every U-Net parameter, the label table apart
        model.requires_grad_(True)
        model.embed.label.requires_grad_(False)
    trainable = count_parameters(model, trainable_only=True)
    if trainable:
        finetune(model, search_lr)

    final_memorization = memorization(model)
    if params.method == "memcontrol":       # stage 2 must be the model the search measured
        chosen = result.chosen.values
        again = (search_memorization(model), search_quality(model))
        extra.update({"search/stage2_memorization": again[0], "search/stage2_quality": again[1],
                      "search/stage2_matches_trial": float(all(
                          math.isclose(a, c, rel_tol=1e-6, abs_tol=1e-9) for a, c in zip(again, chosen)))})
        if not extra["search/stage2_matches_trial"]:
            log.warning("stage 2 differs from the chosen trial %d: objectives %s vs %s", result.chosen.number,
                        again, chosen)

    images = generate(model, torch.arange(params.eval_samples) % n_classes, FID_EVAL_SEED + ctx.seed)
    image_features = D.features(fnet, images, ctx.device)       # once, for FID and KID
    kid = _kid(image_features, real_features, params)
    prompt_labels = p_mem.repeat_interleave(params.samples_per_prompt)
    extraction = generate(model, prompt_labels, FID_EVAL_SEED + 1 + ctx.seed)
    rate, ratio = D.nn_memorization(extraction, xu, heldout, threshold=params.nn_threshold)
    by_prompt = [extraction[prompt_labels == int(p)][:6] for p in p_mem[:8]]
    ctx.runlog.log_artifact("memcontrol/samples.png", _samples_png(x_mem[:8], by_prompt, c_mem[:8]))
    return {
        "memorization": final_memorization,
        "fid": D.frechet_distance(image_features, real_features),
        "kid": kid.mean,
        "kid_std": kid.std,
        "kid_floor": real_kid_floor(fnet, xt_test, params, ctx.device).mean,
        "heldout_mem_rate": rate,
        "heldout_nn_ratio": ratio,
        "trainable_params": trainable,
        "trainable_pct": 100.0 * trainable / total,
        "total_params": total,
        "lr": search_lr if trainable else 0.0,
        "finetune_steps": steps if trainable else 0,
        "feature_net_acc": fnet_acc,
        **extra,
    }
