"""Do fast synthetic-gradient controllers help a neural memory network learn within an episode?

Runs the grid `experiments/nmn_episodic.yaml` (strategies/nmn_episodic.py) through the suite's launcher
(finished cells are reused; store: reports/nmn/mlflow.db; measured runs archived in
benchmarks/results/nmn_episodic.jsonl): MANN-style 5-way episodes on digits (meta-test on held-out
classes) and MAML's sinusoid, methods sg / bp / lstm, the controllers' lr ratio chosen per method
on validation episodes. Prints, in this order:

1. the ratio chosen per task and method, by the validation score (accuracy after the first presentation;
   sinusoid: MSE), with every ratio's score;
2. the gate: the synthesizers' cosine to the true future gradient (full backprop) per sg run — a
   verdict on sg vs bp is reported only when it is clearly above zero (≥ GATE in every seed);
3. accuracy by presentation (1st, 2nd, 5th, 10th showing of a class) and the rare variant (two classes
   shown once, scored on their second showing; label counting alone scores 50%, and the memory-free LSTM
   learns that heuristic) on the meta-test classes;
   sinusoid: MSE at the 1st, 2nd, 5th and 10th point of an episode;
4. the claims of `cl.reproductions` and a RESULT line with ``synth_cos=``.

    python benchmarks/nmn.py --quick     # digits + sinusoid, sg/bp/lstm, 1 seed, 40 updates, ratio 1: a smoke run
    python benchmarks/nmn.py             # the grid as published (36 runs)
    python benchmarks/nmn.py --grid experiments/nmn_episodic_mnist.yaml     # MNIST and Fashion-MNIST (18 runs)
"""
from __future__ import annotations

import json

from benchmarks import gridbench
from cl.reproductions import reproduction_for
from strategies.nmn_claims import NMN_SYNTH_COS_GATE as GATE, nmn_chosen_runs

METHODS = ("sg", "bp", "lstm", "bptt")
REPRODUCTION = reproduction_for("experiments/nmn_episodic.yaml")
QUICK = {"transfer.updates": 40, "transfer.probe_every": 20, "transfer.eval_episodes": 64}
QUICK_GRID = {"transfer.method": ["sg", "bp", "lstm"], "transfer.fast_lr_ratio": [1.0]}


def column(rows, key, scale=100.0, digits=1) -> str:
    return gridbench.mean_std(rows[key], digits, scale=scale) if key in rows else "—"


def report(runs, spec, cells, args) -> None:
    chosen, selection = nmn_chosen_runs(runs)

    print("\n1. fast/slow lr ratio chosen on validation episodes (meta-train classes)")
    for (task, method), scores in selection.items():
        text = ", ".join(f"×{ratio:g}: {score:.3f}" for ratio, score in sorted(scores["scores"].items()))
        print(f"  {task:<9}{method:<6} chose ×{scores['chosen']:g}   ({scores['metric']}: {text})")

    print(f"\n2. the gate: cosine of the synthesizers' output to the true future gradient (≥ {GATE} in every seed)")
    cosines = {}
    for task, rows in chosen[chosen["method"] == "sg"].groupby("task"):
        values = rows["final/synth_cos"].dropna().astype(float)
        cosines[task] = values
        parts = {k.removeprefix("final/synth_cos_"): rows[k].mean() for k in rows if k.startswith("final/synth_cos_")}
        verdict = "pass" if len(values) and values.min() >= GATE else "FAIL"
        print(f"  {task:<9} per seed {[round(v, 3) for v in values]}  mean {values.mean():.3f}  [{verdict}]  "
              f"by state: " + ", ".join(f"{k} {v:.2f}" for k, v in parts.items()))

    print("\n3. meta-test: accuracy (%) by presentation of a class; rare: two classes shown once, their 2nd showing")
    results: dict[str, float] = {}
    for task, group in chosen.groupby("task"):
        regression = task == "sinusoid"
        keys = ([("mse@1", "final/mse_p1"), ("mse@2", "final/mse_p2"), ("mse@5", "final/mse_p5"),
                 ("mse@10", "final/mse_p10"), ("mse all", "final/mse")] if regression else
                [("1st", "final/acc_p1"), ("2nd", "final/acc_p2"), ("5th", "final/acc_p5"), ("10th", "final/acc_p10"),
                 ("rare 2nd", "final/rare_acc_second")])
        scale = 1.0 if regression else 100.0
        print(f"  {task}")
        print(f"  {'method':<7}{'n':>3}" + "".join(f"{name:>16}" for name, _ in keys) + f"{'train s':>9}")
        for method in METHODS:
            rows = group[group["method"] == method]
            if rows.empty:
                continue
            print(f"  {method:<7}{len(rows):>3}" + "".join(f"{column(rows, k, scale, 3 if regression else 1):>16}"
                                                         for _, k in keys)
                  + f"{rows['final/train_seconds'].mean():>9.0f}")
            for name, key in keys:
                if key in rows:
                    results[f"{task}_{method}_{key.removeprefix('final/')}"] = float(scale * rows[key].mean())

    claims = REPRODUCTION.claims(runs)
    print()
    for claim in claims:
        print(f"[{claim.verdict}] {claim.claim} — {claim.ours}")
    all_cos = [v for values in cosines.values() for v in values]
    synth_cos = sum(all_cos) / len(all_cos) if all_cos else float("nan")
    gate = "pass" if cosines and all(len(v) and v.min() >= GATE for v in cosines.values()) else "fail"
    sg_claims = [c for c in claims if c.claim.startswith("sg")]
    beats = "na" if gate == "fail" or not sg_claims else str(int(any(c.shown for c in sg_claims)))
    print(f"RESULT nmn_sg_beats_bp={beats} synth_cos={synth_cos:.3f} gate={gate} seeds={len(spec.seeds)} "
          f"quick={int(args.quick)} " + json.dumps({k: round(v, 3) for k, v in results.items()}, separators=(",", ":")))


if __name__ == "__main__":
    gridbench.main(__doc__, store="nmn", grid="experiments/nmn_episodic.yaml",
                   grid_help="the episodic grid (also experiments/nmn_episodic_mnist.yaml)",
                   quick=lambda spec: gridbench.quick_variant(spec, QUICK, grid=QUICK_GRID),
                   quick_help="digits + sinusoid, 1 seed, 40 updates, ratio 1", describe=REPRODUCTION.describe,
                   report=report, no_runs="nmn_sg_beats_bp=na synth_cos=nan gate=fail")
