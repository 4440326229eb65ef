"""MobileTL's activation memory per inverted-residual block, next to the paper's 46% / 53%.

Part 1 of the issue-6 benchmark (the transfer table, MNIST → Fashion-MNIST, comes with the
transfer-experiment runner). For one MobileNetV2 block (24 → 144 → 24 channels, 56×56,
batch 8, ReLU6) and one MobileNetV3 block (40 → 240 → 40, 5×5 depthwise, Hard-Swish,
squeeze-and-excitation, 14×14, batch 8), each trained as the top block:

  vanilla    torchvision's block, every parameter training
  mobiletl   internal BNs folded (shift only), 1-bit activation masks
  int8/int4  MobileTL with the convolutions' saved inputs in 8 / 4 bits (S2A-style)

Memory is what autograd saves for backward, measured by `transfer.memory.ActivationMeter`
(each storage once, parameters and buffers excluded), under two rules: "as PyTorch saves it",
which counts an activation's input (saved by the activation) and its output (saved by the
next convolution) twice, and the "paper rule" (an activation output counted once, as the
next layer's input; masks at 1 bit) — our reading of the paper's accounting, which is not
published in detail. Also the training FLOPs of one step (forward +
backward, `torch.utils.flop_counter`) relative to vanilla: within a block they do not change
(folding removes no convolution); MobileTL's FLOP savings come from not back-propagating
through the frozen blocks below, which the whole-network transfer measures.

    python benchmarks/mobiletl.py            # a few seconds; --quick is the same
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cl.cost import count_flops  # noqa: E402
from transfer.memory import saved_activation_bytes  # noqa: E402
from transfer.mobiletl import MobileTLConfig, mobiletl  # noqa: E402

PAPER = {"v2": 46.3, "v3": 53.3}
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the same (it takes seconds)")
    parser.parse_args()
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
            results[f"{arch}_{variant}"] = reduction
            results[f"{arch}_{variant}_paper_rule"] = paper_reduction
            paper = f"{PAPER[arch]:.1f}" if variant == "mobiletl" else ""
            print(f"{arch:<6}{variant:<10}{memory / 2**20:>11.2f}{reduction:>13.1f}{paper_memory / 2**20:>16.2f}"
                  f"{paper_reduction:>13.1f}{paper:>9}{flops / base[2]:>13.3f}")
    print("RESULT " + " ".join(f"{k}_reduction={v:.1f}" for k, v in results.items() if "vanilla" not in k)
          + f" paper_v2={PAPER['v2']} paper_v3={PAPER['v3']}")


if __name__ == "__main__":
    main()
