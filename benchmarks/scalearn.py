"""ScaLearn vs. AdapterFusion, static averaging, a single adapter and full fine-tuning on GLUE tasks.

Runs the grid `experiments/scalearn_glue.yaml` — MRPC, STS-B and SST-2, each the target in
turn with the other three of MRPC, STS-B, SST-2, RTE as sources; all-MiniLM-L6-v2 with LoRA
adapters; 3 seeds —
through the suite's launcher (finished cells are reused on a rerun; store:
reports/scalearn/mlflow.db). Prints, per target, the task's GLUE metric on its dev set
(mean ± std over seeds) for every method and the transfer parameters each trains (the task
head apart), the floor of always predicting the majority class (on MRPC a high F1), each
stage-1 adapter's score on its own task; then the average over targets, whether ScaLearn
matches or beats the AdapterFusion-style baseline and with what fraction of its parameters,
and a RESULT line.

    python benchmarks/scalearn.py --quick    # MRPC and STS-B, 200 examples, 1 epoch, 1 seed: a smoke run
    python benchmarks/scalearn.py            # the grid as published (72 runs)
"""
from __future__ import annotations

import json

from benchmarks import gridbench
from cl.reproductions import reproduction_for
from transfer.common import glue

METHODS = ("scalearn", "scalearn_uniform", "scalearn_pp", "scalearn_uniform_pp", "fusion", "average", "adapter",
           "full")
REPRODUCTION = reproduction_for("experiments/scalearn_glue.yaml")
METRIC = {"rte": "acc", "mrpc": "F1", "stsb": "Pearson", "sst2": "acc", "cola": "MCC", "wnli": "acc"}


def quick(spec):
    return gridbench.quick_variant(
        spec, {"transfer.train_samples": 200, "transfer.eval_samples": 200, "transfer.adapter_epochs": 1,
               "train.epochs": 1}, grid=dict(spec.grid, **{"transfer.target": ["mrpc", "stsb"]}))


def report(runs, spec, cells, args) -> None:
    runs["score"] = 100 * runs["final/score"]

    targets = [t for t in spec.grid["transfer.target"] if t in set(runs["target"])]
    print(f"{'method':<21}" + "".join(f"{t.upper() + ' ' + METRIC[t]:>18}" for t in targets)
          + f"{'average':>9}{'transfer params':>17}")
    means: dict[str, float] = {}
    params: dict[str, float] = {}
    results: dict[str, float] = {}
    for method in METHODS:
        rows = runs[runs["method"] == method]
        if rows.empty:
            continue
        cells_ = []
        per_target = []
        for target in targets:
            here = rows[rows["target"] == target]["score"]
            per_target.append(here.mean())
            cells_.append(gridbench.mean_std(here, 2))
            results[f"{target}_{method}"] = here.mean()
        means[method] = sum(per_target) / len(per_target)
        params[method] = rows["memory/transfer_params"].mean()
        print(f"{method:<21}" + "".join(f"{c:>18}" for c in cells_) + f"{means[method]:>9.2f}{params[method]:>17,.0f}")
    floor = [glue.majority_score(t, glue.load_split(t, "train", args.data_root), glue.load_split(t, "dev", args.data_root))
             for t in targets]
    print(f"{'majority class':<21}" + "".join(f"{100 * f:>18.2f}" for f in floor) + f"{100 * sum(floor) / len(floor):>9.2f}"
          + f"{0:>17,}")
    print(f"(n = {runs.groupby(['target', 'method']).size().min()}–{runs.groupby(['target', 'method']).size().max()} "
          "seeds per cell; score × 100; transfer params exclude the task head)")
    # one adapter per (task, seed), its score repeated in every run that used it
    stage1 = {c.split("/")[1]: 100 * runs.groupby("seed")[c].first().dropna()
              for c in runs if c.startswith("stage1/") and c.endswith("/dev_score")}
    if stage1:                       # a transfer from adapters that learned nothing measures nothing
        print("stage-1 adapters on their own dev sets: " + ", ".join(
            f"{task.upper()} {METRIC[task]} {gridbench.mean_std(scores, 2)}" for task, scores in sorted(stage1.items())))

    # the verdicts are the reproduction report's (cl.reproductions), so the two never disagree
    claims = REPRODUCTION.claims(runs)
    for claim in claims:
        print(f"[{claim.verdict}] {claim.claim} — {claim.ours}")
    matches = int(any(c.claim.startswith("scalearn ≥ AdapterFusion") and c.shown for c in claims))
    print(f"RESULT scalearn_matches_fusion={matches} seeds={len(spec.seeds)} quick={int(args.quick)} "
          + json.dumps({**{f"avg_{k}": round(v, 2) for k, v in means.items()},
                        **{k: round(v, 2) for k, v in results.items()}}, separators=(",", ":")))


if __name__ == "__main__":
    gridbench.main(__doc__, store="scalearn", grid="experiments/scalearn_glue.yaml", quick=quick,
                   quick_help="MRPC and STS-B targets, 200 examples, 1 epoch, 1 seed", describe=REPRODUCTION.describe,
                   report=report, no_runs="scalearn_matches_fusion=0")
