"""TimeTic's (arXiv 2509.23695) paper claims next to our measurements: what `clsuite report --reproductions`
renders from the archived runs (registered in `cl.registry.REPRODUCTIONS`; the benchmark script prints the same
comparisons at full detail)."""
from __future__ import annotations

import pandas as pd

from cl.reproductions import ClaimResult, Reproduction


def _timetic_describe(config) -> dict:
    return {"features": config.transfer.options.get("features", "full")}


def _timetic_claims(runs: pd.DataFrame) -> list[ClaimResult]:
    full = runs[runs["features"] == "full"]
    if full.empty:
        return []
    ours, zero = full["final/spearman"].mean(), full["final/zero_shot_spearman"].mean()
    learner = ",".join(sorted(set(full.get("param.timetic.learner", pd.Series(["?"])).dropna())))
    return [ClaimResult("TimeTic ranks the zoo better than its zero-shot error does (mean Spearman)",
                        "≈ 0.6 mean rank correlation, 30% better than zero-shot (TabPFN, 10 TSFMs × 10 datasets)",
                        f"{ours:.3f} vs {zero:.3f} ({100 * (ours / zero - 1):+.0f}%; learner {learner})",
                        bool(ours > zero))]


REPRODUCTION = Reproduction(
    "TimeTic (arXiv 2509.23695): transferability estimation by in-context learning over a table",
    "experiments/timetic.yaml",
    "10 time-series foundation models × 10 datasets × 3 tasks, TabPFN as the in-context learner",
    "10 small forecasters pretrained here on synthetic families × 11 targets (8 statsmodels series, 3 held-out "
    "families) × horizons 4/8/16, leave-one-dataset-out, seed 0",
    "No real TSFMs and no TabPFN weights offline: the learner that ran is named with the numbers (a Gaussian "
    "process unless TabPFN weights are on disk); entropy formula and 18 meta-features are ours "
    "(transfer/timetic/estimator.py).",
    _timetic_describe, _timetic_claims, "benchmarks/timetic.py",
    position=70)
