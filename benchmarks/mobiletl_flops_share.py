"""What share of MobileNetV2's compute the top-k inverted-residual blocks take, by input size and width.

MobileTL (Chiang et al., 2023) trains only the top blocks; how much training compute that saves depends on their
share of the forward FLOPs. For a convolutional network that share does not depend on the input size (every layer's
FLOPs scale with H·W alike) as long as no feature map falls below 1×1 — this prints it, so a protocol is not chosen
on the belief that small images make the top blocks cheap. Forward FLOPs by `torch.utils.flop_counter` (a
multiply-add counts 2), batch 1; the "training saved" column assumes backward = 2 × forward and that frozen lower
blocks need neither weight nor input gradients.

    python benchmarks/mobiletl_flops_share.py [--blocks 5]
"""
from __future__ import annotations

import argparse

import torch
import torchvision
from torch.nn import functional as F

from cl.cost import flop_counter_mode


def forward_flops(fn, *args) -> tuple[int, torch.Tensor]:
    counter = flop_counter_mode()
    with counter, torch.no_grad():
        out = fn(*args)
    return counter.get_total_flops(), out


def shares(width_mult: float, size: int, blocks: int) -> dict[str, float]:
    model = torchvision.models.mobilenet_v2(weights=None, width_mult=width_mult, num_classes=10).eval()
    x = torch.randn(1, 3, size, size)
    total, _ = forward_flops(model, x)
    feats = model.features
    residual = [i for i, m in enumerate(feats) if isinstance(m, torchvision.models.mobilenetv2.InvertedResidual)]
    below = feats[:residual[-blocks]](x)
    top, out = forward_flops(feats[residual[-blocks]:residual[-1] + 1], below)
    head, _ = forward_flops(lambda t: model.classifier(F.adaptive_avg_pool2d(feats[residual[-1] + 1:](t), 1)
                                                      .flatten(1)), out)
    trained = (top + head) / total
    return {"mflops": total / 1e6, "top": 100 * top / total, "head": 100 * head / total,
            "saved": 100 * (1 - (1 + 2 * trained) / 3), "map": below.shape[-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=5)
    args = parser.parse_args()
    print(f"{'width':>6}{'size':>6}{'MFLOPs':>9}{'top-k blocks %':>16}{'head %':>8}{'training saved %':>18}"
          f"{'map in':>8}")
    rows = []
    for width in (0.35, 1.0):
        for size in (32, 64, 224):
            r = shares(width, size, args.blocks)
            rows.append(r)
            print(f"{width:>6}{size:>6}{r['mflops']:>9.1f}{r['top']:>16.1f}{r['head']:>8.1f}{r['saved']:>18.1f}"
                  f"{r['map']:>7}²")
    spread = max(r["top"] for r in rows[:3]) - min(r["top"] for r in rows[:3])
    print("(paper: training the top 5 blocks saves about 36% of the FLOPs)")
    print(f"RESULT top{args.blocks}_share_w035_32px={rows[0]['top']:.1f} top{args.blocks}_share_w035_224px="
          f"{rows[2]['top']:.1f} size_spread_points={spread:.2f} training_saved_w035={rows[0]['saved']:.1f}")


if __name__ == "__main__":
    main()
