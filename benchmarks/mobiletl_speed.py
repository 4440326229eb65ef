"""What the frozen-feature cache saves on the MobileTL v2 grid: one epoch per method, cached vs. uncached, and the
grid's projected total before and after.

The seven cases of `experiments/mobiletl_v2.yaml` (MobileNetV2 width 0.35, 64×64, batch 32, top 5 blocks; seed 0's
resolved options, so each case is built exactly as the grid builds it, `prepare_for_transfer` included) each train
a fraction of an epoch (`--batches` batches of 32) through `train_epochs`, without and with a
`transfer.mobiletl.feature_cache.FeatureCache`, interleaved (uncached, cached, next case ...) and repeated; the
table gives median seconds per batch, extrapolated to the grid's epoch (3,200 training images = 100 batches), and
the ratio uncached / cached in this one run. Methods that need the whole network (full, last layer, bias+BN) fall
back to the full path, so their ratio shows only the cost of asking (≈ 1). The cache's one-off build (the frozen
blocks' forward over the 3,200 images) is timed on the sampled images and scaled.

Weights are the random initialisation and the images random 64×64×3 tensors: the time of a step does not depend on
their values, and the source pretraining (4 epochs of 20,000 images) would dwarf the measurement.

Projection of the grid (21 runs: 7 cases × 3 seeds, each 3 lr candidates × 20 epochs), per run: epochs × the
epoch time + its evaluations (source accuracy on 2 × 2,000 images, validation 3 × 800, test 10,000; full network,
eval mode, batch 512: timed per image here) + loading and resizing its images (timed once, when the data files are
there) + BN re-estimation (3 × 3,200 images, for the ``bnre`` cases; timed
like an evaluation) + the cache build; plus the source pretraining once per seed (4 × 20,000 images at full
fine-tuning's per-image training time: the same network). The 1-step memory / FLOPs probes are left out (< 0.1%).

Then options for the methods that need the whole network (full, bias+BN), timed on the same batches, with whether
they change any number: the channels_last memory format for training (the epoch's mean loss compared with the
default's) and `torch.inference_mode` for evaluation (logits compared with `no_grad`'s).

Measured 2026-12-03 on the shared 2-core machine (load ≈ 4-5: two other measurements running), one thread, 20
batches × 3 repeats: plain top-k / MobileTL (± BN re-estimation) epochs 1.44-1.45× faster with the cache (6.4-6.6 s
→ 4.4-4.6 s an epoch), full / last layer / bias+BN 1.00-1.02× (they fall back); the cache's build 2 s a run; the grid
3.1 h → 2.7 h (−13%; cells one at a time). The top-k methods' remaining time is their trainable top itself (its
backward is ~3× its forward; BN backward on 4×4 and 2×2 maps dominates). channels_last: full 1.13×, bias+BN 1.51×,
but the losses differ (1.9e-2 / 5.3e-3 after 20 steps): not adopted. inference_mode: no gain (0.82×). With 2 threads
instead of 1 the same table ran 3-10× slower (erratic) on the busy machine. `--end-to-end mobiletl_bnre`: identical
metrics and epoch losses, cached vs uncached, on a real v2 cell (1 epoch per lr).

    OMP_NUM_THREADS=1 python benchmarks/mobiletl_speed.py                 # 20 batches per case, 3 repeats
    OMP_NUM_THREADS=1 python benchmarks/mobiletl_speed.py --batches 5 --repeats 1   # a smoke run
    OMP_NUM_THREADS=1 python benchmarks/mobiletl_speed.py --end-to-end mobiletl_bnre  # one real cell, 1 epoch per
        # lr, cached vs uncached through the suite (small source pretraining): same metrics? (data: ../shared/data)
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from benchmarks.paths import ROOT, SHARED_DATA
from cl.grid import expand, load_grid
from cl.transfer_run import single_thread
from transfer.mobiletl.experiment import accuracy, build_network, prepare_for_transfer, train_epochs
from transfer.mobiletl.feature_cache import FeatureCache, split
from transfer.mobiletl.params import MobileTLTransferParams

GRID = ROOT / "experiments" / "mobiletl_v2.yaml"
N_TRAIN, N_VAL, N_TEST, N_SOURCE_EVAL, N_SOURCE = 3200, 800, 10000, 4000, 20000


def cases() -> tuple[list[tuple[str, MobileTLTransferParams]], object, int]:
    """(label, params) for each case of the grid (seed 0), the train settings, the number of seeds."""
    spec = load_grid(GRID)
    out, train = [], None
    for cell in expand(spec):
        if cell.config.seed != spec.seeds[0]:
            continue
        params = MobileTLTransferParams(**cell.config.transfer.options)
        out.append((params.method + ("_bnre" if params.bn_reestimate else ""), params))
        train = cell.config.train
    return out, train, len(spec.seeds)


def data_preparation(params) -> float:
    """Seconds a run spends loading and resizing its images (every run does it), or 0 without the data files."""
    import os

    from cl.scenarios import image_tensors
    from transfer.mobiletl.experiment import _prepare

    root = os.environ.get("CLSUITE_DATA_ROOT", str(SHARED_DATA))
    if not (Path(root) / "MNIST").exists():
        return 0.0
    start = time.perf_counter()
    for dataset, per_class in ((params.source, params.source_samples_per_class),
                               (params.target, params.target_samples_per_class)):
        train, _, test, _ = image_tensors(dataset, data_root=root, train_samples_per_class=per_class)
        _prepare(train, params.image_size)
        _prepare(test if dataset == params.target else test[:2000], params.image_size)   # as `run` does
    return time.perf_counter() - start


@contextlib.contextmanager
def threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def time_epoch(model, x, y, train, lr, features=None) -> float:
    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    train_epochs(model, x, y, epochs=1, train=train, device=torch.device("cpu"), generator=generator, lr=lr,
                 features=features)
    return time.perf_counter() - start


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def end_to_end(case: str, epochs: int) -> None:
    """One v2 cell through the suite (real Fashion-MNIST images), with and without the cache: the same metrics?"""
    import os
    import tempfile

    from cl.config import RunConfig
    from cl.runner import execute
    from cl.tracking import NullRunLog

    os.environ.setdefault("CLSUITE_DATA_ROOT", str(SHARED_DATA))
    os.environ["CLSUITE_CACHE"] = tempfile.mkdtemp(prefix="mobiletl-speed-")
    spec = load_grid(GRID)
    cell = next(c for c in expand(spec) if c.config.seed == spec.seeds[0]
                and MobileTLTransferParams(**c.config.transfer.options).method == case.removesuffix("_bnre")
                and MobileTLTransferParams(**c.config.transfer.options).bn_reestimate == case.endswith("_bnre"))
    raw = cell.config.model_dump(mode="json", exclude={"config_hash"})
    raw["transfer"] = {"name": "mobiletl", **raw["transfer"]["options"], "source_samples_per_class": 100,
                       "pretrain_epochs": 1}
    raw["train"]["epochs"] = epochs
    cfg = RunConfig.from_dict(raw)

    class Losses(NullRunLog):
        def __init__(self):
            self.losses = []

        def log_metrics(self, metrics, step=None):
            self.losses += [(k, v) for k, v in metrics.items() if k.endswith("train/loss")]

    results = {}
    original = FeatureCache.forward_for
    for label in ("cached", "uncached", "cached", "uncached"):   # the first run also pretrains the source: dropped
        FeatureCache.forward_for = original if label == "cached" else (lambda self, model: None)
        runlog = Losses()
        with single_thread():
            start = time.perf_counter()
            result = execute(cfg, runlog)
            seconds = time.perf_counter() - start
        if not result.ok:
            raise SystemExit(f"run failed: {result.reason}")
        metrics = {k: v for k, v in result.metrics.items() if "seconds" not in k}
        results[label] = (seconds, metrics, runlog.losses)
    FeatureCache.forward_for = original
    (cs, cm, cl), (us, um, ul) = results["cached"], results["uncached"]
    print(f"\nend to end: the {case} cell of seed {spec.seeds[0]}, {epochs} epoch(s) per lr candidate (source: 100 "
          f"images per class, 1 epoch), real Fashion-MNIST, one thread")
    print(f"  uncached {us:.0f} s, cached {cs:.0f} s, ratio {us / cs:.2f}; identical metrics: {cm == um}, identical "
          f"epoch losses: {cl == ul}; final/acc {cm.get('final/acc')}, val/acc {cm.get('val/acc')}")
    print(f"RESULT end_to_end_case={case} end_to_end_ratio={us / cs:.2f} identical_metrics={int(cm == um)} "
          f"identical_losses={int(cl == ul)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=20, help="training batches timed per case and repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the grid's single worker takes all "
                                                               "cores; 1 = a worker per core)")
    parser.add_argument("--end-to-end", metavar="CASE", default=None,
                        help="instead: run one grid case (e.g. mobiletl_bnre) through the suite cached and uncached")
    parser.add_argument("--epochs", type=int, default=1, help="--end-to-end: epochs per lr candidate")
    args = parser.parse_args()
    if args.end_to_end:
        return end_to_end(args.end_to_end, args.epochs)

    grid_cases, train, n_seeds = cases()
    first = grid_cases[0][1]
    size, bs, epochs = first.image_size, train.batch_size, train.epochs
    n_lrs = len(first.lr_candidates or [train.lr])
    torch.manual_seed(0)
    source = build_network(first.arch, first.width_mult, 10)
    n = args.batches * bs
    x, y = torch.randn(n, 3, size, size), torch.randint(0, 10, (n,))
    batches_per_epoch = -(-N_TRAIN // bs)
    settings = SimpleNamespace(lr=0.01, momentum=train.momentum, weight_decay=train.weight_decay, batch_size=bs)

    with single_thread() if args.threads == 1 else threads(args.threads):
        prepare_s = data_preparation(first)
        models = {}
        for label, params in grid_cases:
            torch.manual_seed(1)
            models[label] = prepare_for_transfer(copy.deepcopy(source), params, 10, bn_data=x)
        # --- per-image evaluation and BN re-estimation cost (full network, eval mode, batch 512)
        probe_eval = torch.randn(1024, 3, size, size)
        eval_model = copy.deepcopy(models["full"])
        eval_s = statistics.median(timed(lambda: accuracy(eval_model, probe_eval, torch.zeros(1024, dtype=torch.long),
                                                          torch.device("cpu"))) for _ in range(args.repeats)) / 1024

        times = {label: {"uncached": [], "cached": [], "build": []} for label, _ in grid_cases}
        for _ in range(args.repeats):
            for label, params in grid_cases:
                lr = params.lr_candidates[0]
                base = models[label]
                times[label]["uncached"].append(time_epoch(copy.deepcopy(base), x, y, settings, lr))
                model = copy.deepcopy(base)
                cache = FeatureCache(x, batch_size=bs)
                times[label]["build"].append(timed(lambda: cache.forward_for(model)))
                times[label]["cached"].append(time_epoch(model, x, y, settings, lr, features=cache))

        # --- the whole-network options, on full fine-tuning / bias+BN and the evaluation
        layouts = {label: {"default": [], "channels_last": [], "loss": {}} for label in ("full", "bias_bn")}
        ev_no_grad, ev_inference = [], []
        for _ in range(args.repeats):
            for label, t in layouts.items():
                for layout in ("default", "channels_last"):
                    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
                    m = copy.deepcopy(models[label]).to(memory_format=fmt)
                    losses = []
                    torch.manual_seed(5)       # the classifier's dropout
                    t[layout].append(timed(lambda: train_epochs(
                        m, x.contiguous(memory_format=fmt), y, epochs=1, train=settings, device=torch.device("cpu"),
                        generator=torch.Generator().manual_seed(0), lr=0.01,
                        on_epoch=lambda e, loss: losses.append(loss))))
                    t["loss"][layout] = losses[0]
            ev_no_grad.append(timed(lambda: accuracy(eval_model, probe_eval, torch.zeros(1024, dtype=torch.long),
                                                     torch.device("cpu"))))
            with torch.inference_mode():
                ev_inference.append(timed(lambda: accuracy(eval_model, probe_eval,
                                                           torch.zeros(1024, dtype=torch.long), torch.device("cpu"))))
        eval_model.eval()
        with torch.no_grad():
            reference = eval_model(probe_eval[:64])
        with torch.inference_mode():
            im_equal = torch.equal(eval_model(probe_eval[:64]), reference)

    print(f"MobileTL v2 grid settings: {first.arch} width {first.width_mult}, {size}×{size}, batch {bs}, top "
          f"{first.num_trainable_blocks}; {args.batches} batches per case × {args.repeats} repeats, {args.threads} "
          f"thread(s), "
          f"extrapolated to {batches_per_epoch} batches per epoch")
    print(f"{'case':<16}{'uncached s/epoch':>17}{'cached s/epoch':>16}{'ratio':>8}{'cache build s/run':>19}"
          f"{'cell h before':>15}{'cell h after':>14}")
    evals_per_run = (N_SOURCE_EVAL + n_lrs * N_VAL + N_TEST) * eval_s + prepare_s
    before_total = after_total = 0.0
    ratios = {}
    for label, params in grid_cases:
        t = times[label]
        unc = statistics.median(t["uncached"]) / args.batches * batches_per_epoch
        cac = statistics.median(t["cached"]) / args.batches * batches_per_epoch
        used = isinstance(split(models[label]), tuple)
        build = statistics.median(t["build"]) * N_TRAIN / n if used else 0.0
        bnre = n_lrs * N_TRAIN * eval_s if params.bn_reestimate else 0.0
        before = n_lrs * epochs * unc + evals_per_run + bnre
        after = n_lrs * epochs * cac + evals_per_run + bnre + build
        ratios[label] = unc / cac
        before_total += n_seeds * before
        after_total += n_seeds * after
        print(f"{label:<16}{unc:>17.1f}{cac:>16.1f}{unc / cac:>8.2f}{build:>19.1f}{before / 3600:>15.2f}"
              f"{after / 3600:>14.2f}")
    pretrain = n_seeds * first.pretrain_epochs * N_SOURCE / bs \
        * statistics.median(times["full"]["uncached"]) / args.batches
    before_total += pretrain
    after_total += pretrain
    print(f"{'source pretraining':<16} {n_seeds} seeds × {first.pretrain_epochs} epochs × {N_SOURCE} images: "
          f"{pretrain / 3600:.2f} h (unchanged)")
    print(f"per run, unchanged: {evals_per_run:.0f} s = evaluations ({eval_s * 1e3:.2f} ms per image, full network, "
          f"batch 512) + loading and resizing the images ({prepare_s:.0f} s"
          f"{'' if prepare_s else ': no data files, left out'})")
    print(f"grid total, {args.threads} thread(s), one cell at a time: {before_total / 3600:.1f} h before, "
          f"{after_total / 3600:.1f} h after (saves {100 * (1 - after_total / before_total):.0f}%)")
    print(f"\nwhole-network options ({args.batches} training batches; evaluation of 1,024 images), adopted only "
          f"if they change no number:")
    cl_ratio = {}
    for label, t in layouts.items():
        cl_ratio[label] = statistics.median(t["default"]) / statistics.median(t["channels_last"])
        gap = abs(t["loss"]["default"] - t["loss"]["channels_last"])
        print(f"  {label:<8} channels_last: {cl_ratio[label]:.2f}× the default's speed; mean training loss "
              f"{t['loss']['default']:.6f} vs {t['loss']['channels_last']:.6f} (gap {gap:.1e}) -> "
              f"{'same numbers' if gap == 0 else 'changes numbers: not adopted'}")
    print(f"  inference_mode evaluation: {statistics.median(ev_no_grad) / statistics.median(ev_inference):.2f}× "
          f"no_grad's speed; same logits: {im_equal} -> not adopted unless > 1.05×")
    print(f"RESULT grid_hours_before={before_total / 3600:.1f} grid_hours_after={after_total / 3600:.1f} "
          f"saving_pct={100 * (1 - after_total / before_total):.0f} "
          f"plain_topk_epoch_ratio={ratios['plain_topk']:.2f} mobiletl_epoch_ratio={ratios['mobiletl']:.2f} "
          f"full_epoch_ratio={ratios['full']:.2f} channels_last_full_ratio={cl_ratio['full']:.2f} "
          f"channels_last_bias_bn_ratio={cl_ratio['bias_bn']:.2f}")


if __name__ == "__main__":
    main()
