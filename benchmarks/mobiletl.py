"""MobileTL: activation memory per inverted-residual block (vs. the paper's 46% / 53%), then transfer.

Part 1, the block table. For one MobileNetV2 block (24 → 144 → 24 channels, 56×56,
batch 8, ReLU6) and one MobileNetV3 block (40 → 240 → 40, 5×5 depthwise, Hard-Swish,
squeeze-and-excitation, 14×14, batch 8), each trained as the top block:

  vanilla    torchvision's block, every parameter training
  mobiletl   internal BNs folded (shift only), 1-bit activation masks
  int8/int4  MobileTL with the convolutions' saved inputs in 8 / 4 bits (S2A-style)

Memory is what autograd saves for backward, measured by `transfer.mobiletl.memory.ActivationMeter`
(each storage once, parameters and buffers excluded), under two rules: "as PyTorch saves it",
which counts an activation's input (saved by the activation) and its output (saved by the
next convolution) twice, and the "paper rule" (an activation output counted once, as the
next layer's input; masks at 1 bit) — our reading of the paper's accounting, which is not
published in detail. Also the training FLOPs of one step (forward +
backward, `torch.utils.flop_counter`) relative to vanilla: within a block they do not change
(folding removes no convolution); MobileTL's FLOP savings come from not back-propagating
through the frozen blocks below, which the whole-network transfer measures.

Part 2, the transfer table: by default the grid `experiments/mobiletl_v2.yaml` (issue 29: MobileNetV2,
width 0.35, 64×64, MNIST → Fashion-MNIST, 20 epochs, each method's lr chosen on a validation split; full,
last layer, bias+BN, plain top-5, MobileTL top-5, both ± BN re-estimation; 3 seeds), or with `--grid` the
archived `experiments/mobiletl_mnist_to_fmnist.yaml` (32×32, 5 epochs, one lr: full fine-tuning, last
layer, bias+BN, MobileTL top-2 / top-5, MobileTL top-5 + int4, MobileNetV3 cells; 3 seeds) through the suite's
launcher (finished cells reused; measured runs kept in benchmarks/results/), printed per method:
target accuracy, activation memory of one training step, trainable parameters and training FLOPs,
each mean ± std over seeds and relative to full fine-tuning. The verdicts are the reproduction
report's (`cl.reproductions`).

    python benchmarks/mobiletl.py --blocks-only   # part 1 only: seconds
    python benchmarks/mobiletl.py --quick         # part 2 on 1 seed, 100 images per class, 1 epoch: minutes
    OMP_NUM_THREADS=1 python benchmarks/mobiletl.py   # both parts, the v2 grid (21 runs of 3 lr candidates each:
                                                  # 5-14 min a cell, ≈ 0.9 h a seed on one thread of the busy
                                                  # machine, projected by benchmarks/mobiletl_speed.py)
    python benchmarks/mobiletl.py --grid experiments/mobiletl_mnist_to_fmnist.yaml   # the archived grid
The final RESULT line carries `plain_topk_acc=` (plain top-k's mean target accuracy).
"""
from __future__ import annotations

import copy
import json

import torch
from torch import nn

from benchmarks import gridbench
from benchmarks.paths import ROOT
from cl.cost import count_flops
from cl.grid import GridSpec, load_grid
from cl.reproductions import reproduction_for
from transfer.mobiletl.memory import saved_activation_bytes
from transfer.mobiletl.model import MobileTLConfig, mobiletl

PAPER = {"v2": 46.3, "v3": 53.3}
GRID = "experiments/mobiletl_mnist_to_fmnist.yaml"     # archived: 32 px, 5 epochs, one lr (issue 6)
GRID_V2 = "experiments/mobiletl_v2.yaml"                 # issue 29: 64 px, 20 epochs, lr on validation, baselines
REPRODUCTION = reproduction_for(GRID_V2)                 # its describe/claims read either grid's runs
METHODS = ("full", "last_layer", "bias_bn", "plain_top5", "plain_top5_bnre", "mobiletl_top2", "mobiletl_top5",
           "mobiletl_top5_bnre", "mobiletl_top5_int4", "v3_full", "v3_mobiletl_top5", "v3_mobiletl_top5_exact_act")
QUICK = {"transfer.source_samples_per_class": 100, "transfer.target_samples_per_class": 100,
         "transfer.test_samples": 1000, "transfer.pretrain_epochs": 1, "train.epochs": 1}
VARIANTS = {"vanilla": None, "mobiletl": "none", "int8": "int8", "int4": "int4"}


def blocks():
    from torchvision.models.mobilenetv2 import InvertedResidual as V2Block
    from torchvision.models.mobilenetv3 import InvertedResidual as V3Block
    from torchvision.models.mobilenetv3 import InvertedResidualConfig

    v3 = InvertedResidualConfig(40, 5, 240, 40, True, "HS", 1, 1, 1.0)
    return {"v2": (V2Block(24, 24, 1, 6), (8, 24, 56, 56)),
            "v3": (V3Block(v3, nn.BatchNorm2d), (8, 40, 14, 14))}


def measure(block: nn.Module, shape, quantize: str | None) -> tuple[int, int, int]:
    """(bytes as PyTorch saves them, bytes by the paper rule, FLOPs of one training step)."""
    model = nn.Sequential(copy.deepcopy(block))
    if quantize is not None:
        model = mobiletl(model, MobileTLConfig(num_trainable_blocks=1, quantize_saved_activations=quantize))
    model.train()
    x = torch.randn(shape).requires_grad_()    # as if a block below were training: the input needs its gradient
    report = saved_activation_bytes(model, x)
    _, flops = count_flops(lambda: model(x).sum().backward())
    return report.total_bytes, report.paper_rule_bytes, flops


def block_table() -> dict[str, float]:
    """Part 1: print the per-block memory table; return the reductions (%) by block and variant."""
    torch.manual_seed(0)
    results = {}
    print(f"{'block':<6}{'variant':<10}{'saved MiB':>11}{'reduction %':>13}{'paper-rule MiB':>16}"
          f"{'reduction %':>13}{'paper %':>9}{'FLOPs ratio':>13}")
    for arch, (block, shape) in blocks().items():
        base = measure(block, shape, None)
        for variant, quantize in VARIANTS.items():
            memory, paper_memory, flops = base if quantize is None else measure(block, shape, quantize)
            reduction = 100 * (1 - memory / base[0])
            paper_reduction = 100 * (1 - paper_memory / base[1])
            if variant != "vanilla":
                results[f"{arch}_{variant}_reduction"] = reduction
                results[f"{arch}_{variant}_paper_rule_reduction"] = paper_reduction
            paper = f"{PAPER[arch]:.1f}" if variant == "mobiletl" else ""
            print(f"{arch:<6}{variant:<10}{memory / 2**20:>11.2f}{reduction:>13.1f}{paper_memory / 2**20:>16.2f}"
                  f"{paper_reduction:>13.1f}{paper:>9}{flops / base[2]:>13.3f}")
    return results


def transfer_grid(quick: bool, grid: str = GRID_V2) -> GridSpec:
    spec = load_grid(ROOT / grid)
    if not quick:
        return spec
    return gridbench.quick_variant(spec, QUICK)


def percent(values) -> str:
    """An accuracy cell: mean ± std over seeds in %, with the number of runs."""
    return gridbench.mean_std(values, 2, scale=100, n=True)


def seed_first(cell) -> int:
    """Every method's seed 0 before any seed 1 (a stable sort keeps the grid's method order): a grid stopped early
    still compares all methods."""
    return cell.seed


def transfer_table(args) -> dict[str, float]:
    """Part 2: run the transfer grid (only the cells not measured yet); print and return its table."""
    spec = transfer_grid(args.quick, args.grid)
    _, runs = gridbench.finished_runs(spec, args, REPRODUCTION.describe, order=seed_first)
    if runs.empty:
        print("no finished transfer runs to report")
        return {}
    runs["arch"] = ["V3" if m.startswith("v3_") else "V2" for m in runs["method"]]

    def full_of(method: str) -> dict[str, float]:
        """The same architecture's full fine-tuning: what "vs full" divides by."""
        full = runs[runs["method"] == ("v3_full" if method.startswith("v3_") else "full")]
        return {key: full[key].mean() for key in ("memory/activation_bytes", "cost/train_flops")} if len(full) else {}

    print(f"\n{'method':<20}{'target acc %':>24}{'activation MiB':>16}{'vs full':>9}{'trainable params':>18}"
          f"{'train GFLOPs':>14}{'vs full':>9}")
    summary = {}
    for method in METHODS:
        rows = runs[runs["method"] == method]
        if rows.empty:
            continue
        memory, flops = rows["memory/activation_bytes"].mean(), rows["cost/train_flops"].mean()
        reference = full_of(method)
        memory_ratio = memory / reference["memory/activation_bytes"] if reference else float("nan")
        flops_ratio = flops / reference["cost/train_flops"] if reference else float("nan")
        print(f"{method:<20}{percent(rows['final/acc']):>24}{memory / 2**20:>16.2f}{memory_ratio:>9.2f}"
              f"{rows['memory/trainable_params'].mean():>18,.0f}{flops / 1e9:>14.1f}{flops_ratio:>9.2f}")
        summary[f"{method}_acc"] = round(100 * rows["final/acc"].mean(), 2)
        summary[f"{method}_memory_ratio"] = round(memory_ratio, 3)
        summary[f"{method}_flops_ratio"] = round(flops_ratio, 3)
        if "final/lr" in rows and rows["final/lr"].notna().any():
            summary[f"{method}_lr"] = float(rows["final/lr"].median())
    plain = runs[runs["method"].str.match(r"^plain_top\d+$")]
    summary["plain_topk_acc"] = round(100 * plain["final/acc"].mean(), 2) if len(plain) else None
    source_col = "source/test_acc" if "source/test_acc" in runs else "final/source_acc"
    print("(activation memory: what autograd saves for one training step, batch = train.batch_size; FLOPs: one "
          "counted step × steps; vs full: the same architecture's full fine-tuning; source accuracy on its "
          + ("test" if source_col == "source/test_acc" else "training") + " images: "
          + "; ".join(f"{arch} {percent(group.drop_duplicates('seed')[source_col])}"
                      for arch, group in runs.groupby("arch")) + ")")
    claims = REPRODUCTION.claims(runs)
    for claim in claims:
        print(f"[{claim.verdict}] {claim.claim} — {claim.ours}")
    summary["claims_held"] = sum(c.shown for c in claims)
    summary["claims"] = len(claims)
    summary["seeds"] = int(runs["seed"].nunique())
    return summary


def main() -> None:
    parser = gridbench.parser(__doc__.splitlines()[0], store="mobiletl",
                              quick_help="transfer grid on 1 seed, 100 images per class, 1 epoch")
    parser.add_argument("--blocks-only", action="store_true", help="part 1 only (the per-block memory table)")
    parser.add_argument("--grid", default=GRID_V2, choices=[GRID_V2, GRID],
                        help="the transfer grid (default: issue 29's mobiletl_v2; the archived 32-px grid: " + GRID + ")")
    args = parser.parse_args()
    results = block_table()
    transfer = {} if args.blocks_only else transfer_table(args)
    print("RESULT " + " ".join(f"{k}={v:.1f}" for k, v in results.items())
          + f" paper_v2={PAPER['v2']} paper_v3={PAPER['v3']} quick={int(args.quick)}"
          + ("" if args.blocks_only else f" plain_topk_acc={transfer.get('plain_topk_acc')}") + " "
          + json.dumps(transfer, separators=(",", ":")))


if __name__ == "__main__":
    main()
