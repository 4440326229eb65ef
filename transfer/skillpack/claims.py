"""SkillPacks' (GraftLLM, Du et al.) paper claims next to our measurements: what `clsuite report --reproductions`
renders from the archived runs (registered in `cl.registry.REPRODUCTIONS`; the benchmark script prints the same
comparisons at full detail)."""
from __future__ import annotations

import pandas as pd

from cl.reproductions import ClaimResult, Reproduction, difference, mean_std, within_noise


def _skillpack_describe(config) -> dict:
    from cl.registry import TRANSFERS

    o = config.transfer.options
    fields = TRANSFERS.get("skillpack").params.model_fields
    option = {k: o.get(k, fields[k].default) for k in ("budget", "quantizer", "energy", "prune_density", "lora_rank")}
    budget, quantizer = option["budget"], option["quantizer"]
    pack = f"{budget} {quantizer}"          # the recipe; β and the embedding density when not the defaults
    shape = {k: option[k] for k in ("energy", "prune_density")}
    if any(v != fields[k].default for k, v in shape.items()):
        pack += f" β{shape['energy']:g} ρ{shape['prune_density']:g}"
    return {"method": o.get("method", "pack"), "skill": o.get("skill") or (o.get("skills") or [None])[0],
            "budget": budget, "quantizer": quantizer, "pack": pack, "lora_rank": option["lora_rank"],
            "merge_method": o.get("merge_method", "ties")}


def _skillpack_claims(runs: pd.DataFrame) -> list[ClaimResult]:
    out = []
    packs = runs[runs["method"] == "pack"]
    quantizer = "gptq" if (packs["pack"] == "8-4-2 gptq").any() else "rtn"   # the paper's recipe uses GPTQ
    recipe = packs[packs["pack"] == f"8-4-2 {quantizer}"]
    if not recipe.empty:
        retained = recipe["final/pack_acc"] / recipe["final/tuned_acc"]
        ratio = recipe["final/compression_ratio"].mean()
        out.append(ClaimResult(
            f"a SkillPack (SVD + 8/4/2-bit mixed precision, {quantizer.upper()}) keeps the fine-tune's skill "
            "(≥ 95% of its accuracy)",
            "module-aware compression keeps the grafted capability (Llama-3.1-8B; the paper's 20/180/rest bit split)",
            f"share of the fine-tune's accuracy kept (%): {mean_std(retained)} over {recipe['skill'].nunique()} "
            f"skills, packs {ratio:.1f}× smaller than the fp32 delta", bool(retained.mean() >= 0.95)))
    lora = runs[runs["method"] == "lora"]
    if not recipe.empty and not lora.empty:
        text, gap = difference(recipe["final/pack_acc"], lora["final/lora_acc"])
        noise = within_noise(recipe["final/pack_acc"], lora["final/lora_acc"])
        out.append(ClaimResult(
            f"at equal bytes the 8/4/2 pack keeps more of the skill than LoRA (rank {int(lora['lora_rank'].iloc[0])}, "
            "trained on the same data)",
            "a skill captured by full fine-tuning + compression beats a parameter-efficient adapter (Routed LoRA is "
            "among the paper's baselines)", text + f" (mean over {lora['skill'].nunique()} skills)", bool(gap > 0),
            noise))
    gptq, rtn = (packs[packs["pack"] == f"2 {q}"]["final/pack_acc"] for q in ("gptq", "rtn"))
    if not gptq.empty and not rtn.empty:
        text, gap = difference(gptq, rtn)
        out.append(ClaimResult(
            "GPTQ keeps more of the skill than rounding to nearest at 2 bits, same bytes (pack accuracy)",
            "error-compensated quantisation of the singular vectors (the reference's GPTQ; Delta-CoMe's recipe)",
            text, bool(gap > 0), within_noise(gptq, rtn)))
    routed = runs[runs["method"] == "routed"]
    merges = runs[runs["method"] == "merge"]
    if not routed.empty and not merges.empty:
        best_name, best = max(merges.groupby("merge_method")["final/acc"], key=lambda item: item[1].mean())
        text, gap = difference(routed["final/acc"], best)
        out.append(ClaimResult(
            f"routed packs beat the best merge ({best_name}) on the skills' mean accuracy",
            "GraftLLM beats PCB, Twin-Merging and FuseChat-3.0 on most of 7 benchmarks", text, bool(gap > 0),
            within_noise(routed["final/acc"], best)))
    continual = runs[runs["method"] == "continual"]
    if not continual.empty:
        routed_drop = continual["final/old_skill_forgetting"]
        merged_drop = continual["final/old_skill_forgetting_merged"]
        out.append(ClaimResult(
            "continual: adding skills as new packs does not forget old ones (routed drop ≤ 2 points and ≤ merged)",
            "forget-free continual learning: each skill its own pack, old packs never modified",
            f"drop on old skills {mean_std(routed_drop)} points routed vs {mean_std(merged_drop)} merged",
            bool(100 * routed_drop.mean() <= 2 and routed_drop.mean() <= merged_drop.mean())))
    return out


REPRODUCTION = Reproduction(
    "SkillPacks (GraftLLM, Du et al., ICLR 2026): compressed task deltas, fused and routed",
    "experiments/skillpack_smollm2.yaml",
    "Llama-3.1-8B-Instruct target, skills grafted from larger source LLMs (SFT + DPO); MMLU-Redux, MMLU-Pro, "
    "GPQA, HumanEval, MBPP, MATH, GSM8K",
    "SmolLM2-135M-Instruct fully fine-tuned on 4 skills (sentiment, question type, paraphrase, arithmetic; "
    "256 examples, 2 epochs) — the fine-tune is the source; packs at 8, 8/4/2 and 2 bits rounded to nearest, "
    "8/4/2 and 2 bits with GPTQ (64 training examples calibrate it), two leaner 2-bit GPTQ packs (β 0.7 with 3% "
    "and β 0.5 with 1% of the embedding delta); LoRA rank 48 at the 8/4/2 pack's bytes; "
    "3 seeds",
    "SFT on gold answers instead of a source LLM's responses, no DPO; GPTQ calibrated in one pass of the "
    "fine-tuned model, not layer by layer through the quantised one; a logistic-regression router over the base "
    "model's mean-pooled states (transfer/skillpack/experiment.py).",
    _skillpack_describe, _skillpack_claims, "benchmarks/skillpack.py",
    position=90)
