"""SkillPack quantisers on a real fine-tune: how far each moves a layer's outputs, GPTQ vs. rounding.

For every factorised layer of a skill's fine-tune delta Δ, and each bit budget, the relative
output error on held-out inputs

    ‖(Δ̂ − Δ_k) X‖ / ‖Δ_k X‖  =  sqrt(tr(E H Eᵀ) / tr(Δ_k H Δ_kᵀ)),   E = Δ̂ − Δ_k,

with Δ_k the delta's rank-k truncation the pack quantises (so only quantisation error is
measured) and H = E[x xᵀ] of the layer's inputs on the skill's *test* prompts, while GPTQ is
calibrated on its *training* prompts (`transfer.skillpack.experiment.calibration`). The table gives
the median over layers per module kind, rounding (the reference point) vs. GPTQ, their ratio,
and how much longer GPTQ takes to compress than rounding.

The delta is the grid's cached fine-tune (run `benchmarks/skillpack.py` first) — or, with
``--quick``, a synthetic low-rank delta on a tiny random Llama.

    python benchmarks/skillpack_quantizers.py --skill sentiment --seed 0
    python benchmarks/skillpack_quantizers.py --quick
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from benchmarks.paths import SHARED_DATA
from cl.cache import cache_root
from transfer.common.language_models import load_causal_lm
from transfer.skillpack import pack as sp
from transfer.skillpack import quantize
from transfer.skillpack.experiment import BUDGETS, input_batches
from transfer.skillpack.skills import load_skill


def cached_delta(model: str, skill: str, seed: int) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    for metrics in sorted((cache_root() / "skillpack").glob(f"{skill}-*/metrics.json")):
        key = json.loads(metrics.read_text())["key"]
        if key["model"] == model and key["seed"] == seed:
            return {k: v.float() for k, v in load_file(str(metrics.parent / "delta.safetensors")).items()}
    raise SystemExit(f"no cached fine-tune of {skill!r} (model {model}, seed {seed}) under {cache_root()}: "
                     "run benchmarks/skillpack.py first")


def synthetic_delta(model, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: 0.01 * torch.randn(p.shape[0], 4, generator=g) @ torch.randn(4, p.shape[1], generator=g)
            + 1e-3 * torch.randn(p.shape, generator=g)
            for n, p in model.named_parameters() if p.dim() == 2}


def hessians(model, tokenizer, deltas, names, examples):
    batches = input_batches(tokenizer, examples, batch_size=8, max_length=128)   # the grid's batch and length
    with sp.Applied(model, deltas):
        return quantize.calibration_hessians(model, batches, names)


def rank_truncation(delta: torch.Tensor, energy: float) -> torch.Tensor:
    """Δ_k: the delta at the rank the pack keeps, unquantised."""
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    k = sp.energy_rank(s, energy)
    return (u[:, :k] * s[:k]) @ vh[:k]


def output_error(decoded: torch.Tensor, target: torch.Tensor, h: torch.Tensor) -> float:
    error = decoded - target
    return float(torch.sqrt(torch.trace(error @ h @ error.T) / torch.trace(target @ h @ target.T)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny random Llama, synthetic delta")
    parser.add_argument("--skill", default="sentiment")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budgets", nargs="+", default=["2", "8-4-2"], choices=sorted(BUDGETS))
    parser.add_argument("--calibration", type=int, default=64, help="training prompts that calibrate GPTQ")
    parser.add_argument("--held-out", type=int, default=64, help="test prompts the error is measured on")
    parser.add_argument("--data-root", default=str(SHARED_DATA))
    args = parser.parse_args()
    model_name = "tiny-random" if args.quick else "smollm2"
    model, tokenizer = load_causal_lm(model_name, cache_root())
    model.requires_grad_(False)
    deltas = synthetic_delta(model, args.seed) if args.quick else cached_delta(model_name, args.skill, args.seed)
    calibration = load_skill(args.skill, "train", data_root=args.data_root, n=args.calibration, seed=args.seed)
    held_out = load_skill(args.skill, "test", data_root=args.data_root, n=args.held_out, seed=0)
    config = sp.CompressionConfig(group_size=16 if args.quick else 128)
    names = [n for n, d in deltas.items() if sp.factorised(n, d, config)]
    h_train = hessians(model, tokenizer, deltas, names, calibration)
    h_test = hessians(model, tokenizer, deltas, names, held_out)

    truncated = {name: rank_truncation(deltas[name], config.energy) for name in names}   # the same for every budget
    print(f"{'budget':<8}{'module':<11}{'layers':>7}{'rtn error':>11}{'gptq error':>12}{'gptq/rtn':>10}")
    ratios_2bit, seconds = [], {}
    for budget in args.budgets:
        rows: dict[str, list[tuple[float, float]]] = {}
        for quantizer in sp.QUANTIZERS:
            seconds[(budget, quantizer)] = 0.0
        for name in names:
            errors = {}
            for quantizer in sp.QUANTIZERS:
                cfg = sp.CompressionConfig(group_size=config.group_size, quantizer=quantizer, **BUDGETS[budget])
                start = time.perf_counter()
                encoded = sp.encode(name, deltas[name], cfg, h_train[name])
                seconds[(budget, quantizer)] += time.perf_counter() - start
                errors[quantizer] = output_error(encoded.decode(), truncated[name], h_test[name])
            kind = name.removesuffix(".weight").rsplit(".", 1)[-1]
            rows.setdefault(kind, []).append((errors["rtn"], errors["gptq"]))
        for kind, pairs in rows.items():
            rtn, gptq = (float(np.median(x)) for x in zip(*pairs))
            print(f"{budget:<8}{kind:<11}{len(pairs):>7}{rtn:>11.4f}{gptq:>12.4f}{gptq / rtn:>10.2f}")
            if budget == "2":
                ratios_2bit += [g / r for r, g in pairs]
    print("\ncompression time, GPTQ / rounding (same run): "
          + ", ".join(f"{b} bits {seconds[(b, 'gptq')] / seconds[(b, 'rtn')]:.1f}×" for b in args.budgets))
    median = float(np.median(ratios_2bit)) if ratios_2bit else float("nan")
    print(f"RESULT gptq_over_rtn_output_error_2bit={median:.3f} layers={len(names)} skill={args.skill} "
          f"quick={int(args.quick)}")


if __name__ == "__main__":
    main()
