"""Group quantisation of delta factors: round-to-nearest, or GPTQ's error compensation.

Every quantised row is stored the same way, whichever quantiser chose the codes: groups of
``group_size`` consecutive values share an asymmetric grid (``low`` + code · ``scale``, both
fp16), codes packed ``8 / bits`` per byte. So a decoder never needs to know how the codes were
found, and a pack quantised with GPTQ is exactly as large as one rounded to nearest.

* `quantize_rows` — round to nearest: each value's error is at most half a step.
* `gptq_quantize` — GPTQ (Frantar et al., ICLR 2023, Alg. 1): quantise a weight W (rows ×
  columns) one column at a time and spread each column's rounding error over the columns not
  yet quantised, weighted by the inverse Hessian H⁻¹ of the layer's inputs (H = E[x xᵀ]), so
  that the *outputs* W x move as little as possible on calibration inputs — not the weights.
  Lazy block updates and the Cholesky form of H⁻¹ as in the paper (§4, "Step 2/3"); dampening
  λ = ``damp`` · mean(diag H); inputs that never fire (H_ii = 0) get weight 0. The grid of a
  group is fixed from the error-updated values when its first column is reached, as in the
  reference implementation (IST-DASLab/gptq).
* `calibration_hessians` — H = E[x xᵀ] over the real (unpadded) tokens at the input of each
  chosen linear layer, gathered with forward pre-hooks in one pass over calibration batches.

Deviation from the GPTQ reference: the grid is min/max per group (its ``mse=False`` default);
no activation ordering (``act_order``) — a column order would have to be stored to decode.
"""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import torch
from torch import nn


# --------------------------------------------------------------------------- storage

def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 codes < 2^bits, any shape → packed uint8 (8 / bits codes per byte), flattened."""
    flat = codes.flatten().to(torch.uint8)
    if bits == 8:
        return flat
    per = 8 // bits
    pad = (-len(flat)) % per
    flat = torch.cat([flat, flat.new_zeros(pad)]).view(-1, per)
    shifts = torch.arange(per, dtype=torch.uint8) * bits
    return (flat << shifts).sum(dim=1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    if bits == 8:
        return packed[:n]
    per = 8 // bits
    shifts = torch.arange(per, dtype=torch.uint8) * bits
    mask = (1 << bits) - 1
    return ((packed.view(-1, 1) >> shifts) & mask).flatten()[:n]


def group_grid(values: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(low, scale) of the asymmetric min/max grid over the last dimension, rounded to fp16 as stored."""
    low = values.amin(dim=-1, keepdim=True)
    high = values.amax(dim=-1, keepdim=True)
    scale = ((high - low) / ((1 << bits) - 1)).half().float()
    return low.half().float(), torch.where(scale > 0, scale, torch.ones_like(scale))


def to_codes(values: torch.Tensor, low: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    return torch.round((values - low) / scale).clamp_(0, (1 << bits) - 1)


def _stored(codes: torch.Tensor, low: torch.Tensor, scale: torch.Tensor, bits: int) -> dict[str, torch.Tensor]:
    """codes (rows, groups, group_size), low/scale (rows, groups) → the stored tensors."""
    return {"codes": pack_bits(codes, bits), "scale": scale.half(), "low": low.half()}


def _grouped(rows: torch.Tensor, group_size: int) -> torch.Tensor:
    """(r, n) → (r, groups, group_size); padding repeats the last group's first value (range unchanged)."""
    r, n = rows.shape
    pad = (-n) % group_size
    grouped = torch.nn.functional.pad(rows, (0, pad)).view(r, -1, group_size)
    if pad:
        grouped[:, -1, group_size - pad:] = grouped[:, -1, :1]
    return grouped


def quantize_rows(rows: torch.Tensor, bits: int, group_size: int) -> dict[str, torch.Tensor]:
    """Asymmetric round-to-nearest of each row in groups of `group_size` (16 bits: plain fp16)."""
    rows = rows.float()
    if bits == 16:
        return {"values": rows.half()}
    grouped = _grouped(rows, group_size)
    low, scale = group_grid(grouped, bits)
    codes = to_codes(grouped, low, scale, bits)
    return _stored(codes, low.squeeze(-1), scale.squeeze(-1), bits)


def dequantize_rows(stored: Mapping[str, torch.Tensor], bits: int, shape: Sequence[int], group_size: int
                    ) -> torch.Tensor:
    r, n = shape
    if bits == 16:
        return stored["values"].float().view(r, n)
    groups = -(-n // group_size)
    codes = unpack_bits(stored["codes"], bits, r * groups * group_size).view(r, groups, group_size).float()
    values = codes * stored["scale"].float().unsqueeze(-1) + stored["low"].float().unsqueeze(-1)
    return values.view(r, groups * group_size)[:, :n]


# --------------------------------------------------------------------------- GPTQ

def _inverse_hessian_factor(hessian: torch.Tensor, weight: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of (H + λI)⁻¹; zeroes the weight of inputs that never fire (in place)."""
    h = hessian.double().clone()
    dead = h.diagonal() == 0
    h[dead, dead] = 1.0
    weight[:, dead] = 0.0
    h.diagonal().add_(damp * h.diagonal().mean())
    inverse = torch.cholesky_inverse(torch.linalg.cholesky(h))
    return torch.linalg.cholesky(inverse, upper=True).float()


def gptq_quantize(weight: torch.Tensor, hessian: torch.Tensor, bits: int, group_size: int, *,
                  grid_along: str = "rows", damp: float = 0.01, block_size: int = 128
                  ) -> dict[str, torch.Tensor]:
    """GPTQ of `weight` (rows × columns) for inputs with second moment `hessian` (columns × columns).

    ``grid_along="rows"``: each row holds groups of `group_size` consecutive columns (the usual
    GPTQ layout) — stored as `quantize_rows(weight)` would store it.
    ``grid_along="columns"``: each column is one stored row, grouped along the weight's rows
    (a factor whose stored rows are the columns of W) — stored as `quantize_rows(weight.T)`.
    16 bits: fp16 values, no compensation needed.
    """
    if grid_along not in ("rows", "columns"):
        raise ValueError(f"gptq_quantize: grid_along must be 'rows' or 'columns', got {grid_along!r}")
    w = weight.detach().float().clone()
    r, n = w.shape
    if hessian.shape != (n, n):
        raise ValueError(f"gptq_quantize: hessian is {tuple(hessian.shape)}, the weight has {n} columns")
    if bits == 16:
        return {"values": (w if grid_along == "rows" else w.T).contiguous().half()}
    upper = _inverse_hessian_factor(hessian, w, damp)
    if grid_along == "rows":
        block_size = group_size * max(1, block_size // group_size)   # a group never straddles two blocks
        groups = -(-n // group_size)
        codes = torch.zeros(r, groups * group_size)
        lows, scales = torch.zeros(r, groups), torch.zeros(r, groups)
    else:
        codes_by_column, lows_by_column, scales_by_column = [], [], []
    for start in range(0, n, block_size):
        stop = min(start + block_size, n)
        block = w[:, start:stop].clone()
        errors = torch.zeros_like(block)
        factor = upper[start:stop, start:stop]
        for i in range(stop - start):
            column = start + i
            if grid_along == "rows":
                g = column // group_size
                if column % group_size == 0:     # fix the group's grid from the error-updated values
                    span = block[:, i:i + group_size]
                    low, scale = group_grid(span, bits)
                    lows[:, g], scales[:, g] = low.squeeze(-1), scale.squeeze(-1)
                code = to_codes(block[:, i], lows[:, g], scales[:, g], bits)
                codes[:, column] = code
                quantised = code * scales[:, g] + lows[:, g]
            else:
                grouped = _grouped(block[:, i].unsqueeze(0), group_size)        # (1, groups, size)
                low, scale = group_grid(grouped, bits)
                code = to_codes(grouped, low, scale, bits)
                codes_by_column.append(code[0])
                lows_by_column.append(low[0, :, 0])
                scales_by_column.append(scale[0, :, 0])
                quantised = (code * scale + low).flatten()[:r]
            error = (block[:, i] - quantised) / factor[i, i]
            block[:, i:] -= error.unsqueeze(1) * factor[i, i:].unsqueeze(0)
            errors[:, i] = error
        w[:, stop:] -= errors @ upper[start:stop, stop:]
    if grid_along == "rows":
        return _stored(codes.view(r, groups, group_size), lows, scales, bits)
    return _stored(torch.stack(codes_by_column), torch.stack(lows_by_column), torch.stack(scales_by_column), bits)


# --------------------------------------------------------------------------- calibration

def calibration_hessians(model: nn.Module, batches: Iterable[Mapping[str, torch.Tensor]],
                         weights: Iterable[str]) -> dict[str, torch.Tensor]:
    """E[x xᵀ] at the input of each linear layer whose weight is named in `weights`.

    `batches` are keyword inputs of `model` (e.g. tokenizer outputs); tokens whose
    ``attention_mask`` is 0 are left out. Keys of the result are the weight names.
    """
    wanted = set(weights)
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    mask: list[torch.Tensor | None] = [None]
    hooks = []

    def hook_for(name: str):
        def hook(_module, args):
            x = args[0].detach().float()
            x = x.reshape(-1, x.shape[-1])
            if mask[0] is not None and mask[0].numel() == x.shape[0]:
                x = x[mask[0]]
            sums[name] = sums.get(name, 0) + x.T @ x
            counts[name] = counts.get(name, 0) + x.shape[0]
        return hook

    for module_name, module in model.named_modules():
        weight_name = f"{module_name}.weight"
        if isinstance(module, nn.Linear) and weight_name in wanted:
            hooks.append(module.register_forward_pre_hook(hook_for(weight_name)))
    try:
        with torch.no_grad():
            for batch in batches:
                attention = batch.get("attention_mask")
                mask[0] = attention.flatten().bool() if attention is not None else None
                model(**batch)
    finally:
        for hook in hooks:
            hook.remove()
    return {name: total / max(1, counts[name]) for name, total in sums.items()}
