"""MobileTL: memory-lean transfer learning of inverted-residual networks (work in progress, issue 6).

Hung-Yueh Chiang et al., "MobileTL: On-device Transfer Learning with Inverted Residual
Blocks", AAAI 2023, arXiv 2212.03246. No public code exists. This module holds the pieces
that change what a training step saves for the backward pass; the converter, the 4-bit
option and the experiment follow (see the issue note for where this stands).

What the paper does (abstract and introduction, verified), and how each piece here does it:
- The two *internal* batch-norm layers of a block train only their shift: with γ, μ, σ
  frozen, y = a·x + b with a = γ/√(σ²+ε) fixed, so ∂L/∂b = Σ ∂L/∂y and ∂L/∂x = a·∂L/∂y —
  x is never needed. `FoldedBatchNorm` is that affine map (a is a buffer, b a parameter);
  autograd saves nothing but a for it (a frozen `nn.BatchNorm2d` in eval mode would still
  save its input). The block's last batch norm keeps training scale, shift and statistics.
- Activations store a 1-bit mask instead of their input, packed 8 per byte
  (`pack_bits`): ReLU6's derivative *is* the mask 1[0 < x < 6], so its gradient is exact
  (`MaskedReLU6`). For Hard-Swish the paper's "signed function" threshold is not available to
  us; `SignedHardswish` uses 1[x > 0] inside [−3, 3] and the exact 0/1 outside. Why 0:
  the true derivative there is (2x + 3)/6, and among step functions 1[x > t] the squared
  error ∫₋₃³ (step − (2x+3)/6)² dx is smallest where (2t + 3)/6 = 1/2, i.e. t = 0.
  Two bits per element would make it exact outside [−3, 3] and at both ends; one bit cannot
  tell x < −3 (derivative 0) from −3 ≤ x ≤ 0, so below −3 the step's 0 is also exact.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

# --------------------------------------------------------------------------- 1-bit masks

_BIT_WEIGHTS = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """A boolean tensor as uint8, 8 elements per byte (little-endian within a byte)."""
    flat = mask.reshape(-1).to(torch.uint8)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    return (flat.view(-1, 8) * _BIT_WEIGHTS.to(flat.device)).sum(dim=1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The boolean tensor of `shape` that `pack_bits` packed."""
    numel = 1
    for size in shape:
        numel *= size
    bits = (packed.unsqueeze(1) & _BIT_WEIGHTS.to(packed.device)) != 0
    return bits.reshape(-1)[:numel].view(shape)


class _MaskedActivation(torch.autograd.Function):
    """y = f(x); backward multiplies by a stored 1-bit mask m(x) instead of f'(x)."""

    @staticmethod
    def forward(ctx, x, kind: str):
        if kind == "relu6":
            y, mask = F.relu6(x), (x > 0) & (x < 6)
        else:   # signed Hard-Swish
            y, mask = F.hardswish(x), x > 0
        ctx.shape = x.shape
        ctx.save_for_backward(pack_bits(mask))
        return y

    @staticmethod
    def backward(ctx, grad_output):
        (packed,) = ctx.saved_tensors
        return grad_output * unpack_bits(packed, ctx.shape).to(grad_output.dtype), None


class MaskedReLU6(nn.Module):
    """ReLU6 whose backward keeps 1 bit per element; its gradient is exact."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _MaskedActivation.apply(x, "relu6")


class SignedHardswish(nn.Module):
    """Hard-Swish with an exact forward and a 1-bit derivative 1[x > 0] (see the module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _MaskedActivation.apply(x, "hardswish")


# --------------------------------------------------------------------------- folded batch norm


class FoldedBatchNorm(nn.Module):
    """A batch norm with frozen statistics and scale, folded to y = a·x + b; only b trains."""

    def __init__(self, bn: nn.BatchNorm2d):
        super().__init__()
        with torch.no_grad():
            scale = bn.weight if bn.affine else torch.ones_like(bn.running_var)
            shift = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
            a = scale / torch.sqrt(bn.running_var + bn.eps)
            b = shift - bn.running_mean * a
        self.register_buffer("scale", a.detach().clone())
        self.shift = nn.Parameter(b.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # multiplying by a buffer that needs no gradient saves only the buffer, not x
        return x * self.scale.view(1, -1, 1, 1) + self.shift.view(1, -1, 1, 1)
