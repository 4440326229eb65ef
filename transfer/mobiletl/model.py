"""MobileTL: memory-lean transfer learning of inverted-residual networks (issue 6, in progress).

Hung-Yueh Chiang et al., "MobileTL: On-device Transfer Learning with Inverted Residual
Blocks", AAAI 2023, arXiv 2212.03246. No public code exists. `mobiletl(model, config)`
turns a torchvision MobileNetV2/V3 (or any network of their `InvertedResidual` blocks) into
its MobileTL version; the experiment and benchmark follow (see the issue note).

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
- Only the top `num_trainable_blocks` blocks (closest to the output) and what follows them
  train; everything below is frozen and in eval mode, and since nothing below needs a
  gradient, autograd runs no backward there.

Beyond the paper — S2A's 4-bit activation storage ("A Unified Framework for Parameter and
Memory Efficient Transfer Learning"): with `quantize_saved_activations` = int8 / int4 the
convolutions of the trainable blocks save their input quantised (asymmetric min–max per
channel, 4-bit values packed two per byte) and dequantise it in backward for the weight
gradient; the input gradient needs only the weights, so it is exact.

Switches (issue 29): `fold_internal_bn` and `activation_mask` turn MobileTL's two ingredients off one at a time;
with both off (and no quantisation) the conversion is "plain top-k": the same top blocks train with exact
activations and ordinary BN, which separates the cost of freezing the lower blocks from the cost of the
approximations. `reestimate_bn` (AdaBN-style, Li et al. 2016; not in the paper) replaces BN running statistics
by target-data averages without gradients, for the variant where frozen blocks normalise with target statistics.

Deviations: the squeeze-and-excitation layers of MobileNetV3 keep their own activations
(they act on 1×1 pooled maps, a negligible share of the memory).
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
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


# --------------------------------------------------------------------------- quantised saved inputs


def quantize(x: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric min–max quantisation per channel (dim 1): (codes, minimum, step).

    Codes are uint8; with 4 bits two codes share a byte (`dequantize` undoes both).
    """
    levels = 2**bits - 1
    dims = [d for d in range(x.dim()) if d != 1]
    low = x.amin(dim=dims, keepdim=True)
    step = (x.amax(dim=dims, keepdim=True) - low).clamp_min(1e-12) / levels
    codes = torch.round((x - low) / step).clamp_(0, levels).to(torch.uint8)
    if bits == 4:
        flat = codes.reshape(-1)
        if flat.numel() % 2:
            flat = torch.cat([flat, flat.new_zeros(1)])
        codes = flat[0::2] | (flat[1::2] << 4)
    return codes, low, step


def dequantize(codes: torch.Tensor, low: torch.Tensor, step: torch.Tensor, bits: int, shape) -> torch.Tensor:
    if bits == 4:
        codes = torch.stack([codes & 0x0F, codes >> 4], dim=1).reshape(-1)
        numel = 1
        for size in shape:
            numel *= size
        codes = codes[:numel].view(shape)
    return codes.to(low.dtype) * step + low


class _QuantizedSaveConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups, bits):
        ctx.conf = (stride, padding, dilation, groups, bits, x.shape)
        if weight.requires_grad:
            codes, low, step = quantize(x.detach(), bits)
            ctx.save_for_backward(weight, codes, low, step)
        else:
            ctx.save_for_backward(weight)
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad_output):
        stride, padding, dilation, groups, bits, shape = ctx.conf
        weight, *quantized = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.nn.grad.conv2d_input(shape, weight, grad_output, stride, padding, dilation, groups)
        if ctx.needs_input_grad[1]:
            x = dequantize(*quantized, bits, shape)
            grad_w = torch.nn.grad.conv2d_weight(x, weight.shape, grad_output, stride, padding, dilation, groups)
        if ctx.needs_input_grad[2]:
            grad_b = grad_output.sum(dim=(0, 2, 3))
        return grad_x, grad_w, grad_b, None, None, None, None, None


class QuantizedSaveConv2d(nn.Module):
    """A convolution (sharing the original's parameters) that saves its input in `bits` bits."""

    def __init__(self, conv: nn.Conv2d, bits: int):
        super().__init__()
        if bits not in (4, 8):
            raise ValueError(f"bits must be 4 or 8, got {bits}")
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError("QuantizedSaveConv2d supports numeric zero padding only")
        self.conv = conv
        self.bits = bits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv
        return _QuantizedSaveConv.apply(x, c.weight, c.bias, c.stride, c.padding, c.dilation, c.groups, self.bits)


# --------------------------------------------------------------------------- the converter


class MobileTLConfig(BaseModel):
    """How to turn a network of inverted-residual blocks into its MobileTL version."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_trainable_blocks: int = Field(5, ge=1, description="top inverted-residual blocks that train (the paper: 5)")
    activation_mask: Literal["signed", "none"] = Field(
        "signed", description="'signed': ReLU6 / Hard-Swish keep 1-bit masks; 'none': the original activations")
    fold_internal_bn: bool = Field(True, description="internal BNs train only their shift (folded affine)")
    quantize_saved_activations: Literal["none", "int8", "int4"] = Field(
        "none", description="save the trainable blocks' conv inputs in 8 or 4 bits (S2A-style)")


def inverted_residual_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's torchvision `InvertedResidual` blocks (MobileNetV2 and V3), input to output."""
    from torchvision.models.mobilenetv2 import InvertedResidual as V2Block
    from torchvision.models.mobilenetv3 import InvertedResidual as V3Block

    return [(name, m) for name, m in model.named_modules() if isinstance(m, (V2Block, V3Block))]


class MobileTLNet(nn.Module):
    """The converted network; modules below the trainable blocks stay frozen and in eval mode."""

    def __init__(self, net: nn.Module, frozen: list[nn.Module], config: MobileTLConfig):
        super().__init__()
        self.net = net
        self._frozen = frozen
        self.config = config

    def train(self, mode: bool = True):
        super().train(mode)
        for module in self._frozen:
            module.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def mobiletl(model: nn.Module, config: MobileTLConfig | None = None) -> MobileTLNet:
    """Convert `model` in place (and wrap it): see the module docstring for each step."""
    config = config or MobileTLConfig()
    blocks = inverted_residual_blocks(model)
    if not blocks:
        raise ValueError("mobiletl: the model has no torchvision InvertedResidual blocks (MobileNetV2/V3)")
    if config.num_trainable_blocks > len(blocks):
        raise ValueError(f"num_trainable_blocks: {config.num_trainable_blocks} > the model's {len(blocks)} blocks")
    trainable = blocks[-config.num_trainable_blocks:]
    first_trainable = trainable[0][1]

    # freeze everything that runs before the first trainable block (in module order)
    frozen: list[nn.Module] = []
    for _, module in model.named_modules():
        if module is first_trainable:
            break
        if not list(module.children()):
            module.requires_grad_(False)
            frozen.append(module)

    bits = {"none": None, "int8": 8, "int4": 4}[config.quantize_saved_activations]
    for _, block in trainable:
        _convert_block(block, config, bits)
    return MobileTLNet(model, frozen, config)


def _convert_block(block: nn.Module, config: MobileTLConfig, bits: int | None) -> None:
    # batch norms in forward order (definition order in torchvision's blocks); all but the last are internal
    norms = [name for name, m in block.named_modules() if isinstance(m, nn.BatchNorm2d)]
    if config.fold_internal_bn:
        for name in norms[:-1]:
            parent_name, _, child_name = name.rpartition(".")
            parent = block.get_submodule(parent_name)
            setattr(parent, child_name, FoldedBatchNorm(getattr(parent, child_name)))
    for parent in list(block.modules()):
        if type(parent).__name__ == "SqueezeExcitation":
            continue
        for name, child in list(parent.named_children()):
            if config.activation_mask == "signed" and isinstance(child, nn.ReLU6):
                setattr(parent, name, MaskedReLU6())
            elif config.activation_mask == "signed" and isinstance(child, nn.Hardswish):
                setattr(parent, name, SignedHardswish())
            elif bits is not None and isinstance(child, nn.Conv2d):
                setattr(parent, name, QuantizedSaveConv2d(child, bits))


# --------------------------------------------------------------------------- BN re-estimation


@torch.no_grad()
def reestimate_bn(model: nn.Module, x: torch.Tensor, *, batch_size: int = 256, device=None) -> int:
    """Replace every `nn.BatchNorm2d`'s running statistics by their average over `x` (the target's training
    images), as AdaBN does (Li et al., 2016); returns the number of BN layers re-estimated.

    Forward passes only, under `no_grad` (no gradient, nothing saved for backward); every other module stays in
    eval mode (no dropout), and no weight or bias changes. The statistics are the exact per-batch averages
    (momentum None), so the order of the batches does not matter beyond the batch-variance estimate.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    if not norms:
        return 0
    was_training = model.training
    model.eval()
    momenta = [bn.momentum for bn in norms]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    try:
        for start in range(0, len(x), batch_size):
            batch = x[start:start + batch_size]
            model(batch.to(device) if device is not None else batch)
    finally:
        for bn, momentum in zip(norms, momenta):
            bn.momentum = momentum
        model.train(was_training)
    return len(norms)
