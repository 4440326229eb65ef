"""ScaLearn's (Frohmann et al., Findings of ACL 2024) paper claims next to our measurements: what `clsuite report
--reproductions` renders from the archived runs (registered in `cl.registry.REPRODUCTIONS`; the benchmark script
prints the same comparisons at full detail)."""
from __future__ import annotations

import pandas as pd

from cl.reproductions import ClaimResult, Reproduction


def _scalearn_describe(config) -> dict:
    return {"target": config.transfer.options["target"], "method": config.transfer.options["method"]}


def _scalearn_claims(runs: pd.DataFrame) -> list[ClaimResult]:
    per = runs.groupby(["method", "target"])["final/score"].mean().unstack()
    params = runs.groupby("method")["memory/transfer_params"].mean()
    out = []
    paper = {"scalearn": "85.36 vs AdapterFusion 85.01 (GLUE avg, RoBERTa-base)",
             "scalearn_uniform": "85.02 vs 85.01", "scalearn_pp": "85.35 vs 85.01",
             "scalearn_uniform_pp": "85.14 vs 85.01"}
    fusion = per.loc["fusion"].mean() if "fusion" in per.index else None
    for method, claim in paper.items():
        if method not in per.index or fusion is None:
            continue
        gap = 100 * (per.loc[method].mean() - fusion)
        share = params[method] / params["fusion"]
        seeds = runs[runs["method"] == method].groupby("target").size().min()
        out.append(ClaimResult(
            f"{method} ≥ AdapterFusion on the task average, with a small fraction of its transfer parameters",
            claim, f"{100 * per.loc[method].mean():.2f} vs {100 * fusion:.2f} ({gap:+.2f}; "
                   f"{100 * share:.3f}% of fusion's parameters; {len(per.columns)} targets, ≥{seeds} seeds)",
            bool(gap >= 0)))
    if {"scalearn", "adapter"} <= set(per.index):
        gap = 100 * (per.loc["scalearn"].mean() - per.loc["adapter"].mean())
        out.append(ClaimResult(
            "transfer pays: scalearn ≥ the target task's own adapter on the task average",
            "85.36 vs Adapter 83.83 (GLUE avg, RoBERTa-base)",
            f"{100 * per.loc['scalearn'].mean():.2f} vs {100 * per.loc['adapter'].mean():.2f} ({gap:+.2f}; "
            f"{len(per.columns)} targets)", bool(gap >= 0)))
    return out


REPRODUCTION = Reproduction(
    "ScaLearn (Frohmann et al., Findings of ACL 2024): learning to scale source adapters",
    "experiments/scalearn_glue.yaml",
    "RoBERTa-base, 8 GLUE tasks, bottleneck adapters, full training sets, ≤30 epochs",
    "all-MiniLM-L6-v2, MRPC/STS-B/SST-2 each the target in turn (RTE a source only: its own adapter is at "
    "chance at this scale), LoRA on each FFN output, 500 examples per task, 3 seeds",
    "LoRA instead of bottleneck adapters (peft); 4 tasks, not 8; a 22.7M encoder; 5 epochs per stage.",
    _scalearn_describe, _scalearn_claims, "benchmarks/scalearn.py",
    position=80)
