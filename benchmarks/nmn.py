"""Do synthetic-gradient controllers help a neural memory network on rare classes?

Runs the grid `experiments/nmn_mnist.yaml` — Split MNIST, Split Fashion-MNIST and a rare-class
MNIST stream (two classes keep 5% of their training images), 5 × 2 classes, class-incremental,
3 seeds; naive, replay at the NMN's memory in bytes, nmn_bp (controllers by truncated backprop)
and nmn_sg (controllers fast on synthetic gradients) — through the suite's launcher (finished
cells are reused on a rerun; store: reports/nmn/mlflow.db). Prints per scenario: final accuracy
on all classes, forgetting, accuracy on the rare classes at the end and right after they were
taught, the bytes kept between experiences (exemplars or memory state), wall time, and the
synthesizers' gradient-prediction quality (mean cosine between S(h) and the true future gradient
over the slow steps); then the claims of `cl.reproductions` and a RESULT line.

    python benchmarks/nmn.py --quick     # 8×8 digits (and its rare-class stream), MLP, 3 epochs, 1 seed: a smoke run
    python benchmarks/nmn.py             # the grid as published (36 runs, ≈ 40 min with 2 workers)
"""
from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import gridbench  # noqa: E402
from cl.analysis import run_artifact_json  # noqa: E402
from cl.grid import GridSpec, load_grid  # noqa: E402
from cl.reproductions import cell_runs, reproduction_for  # noqa: E402

METHODS = ("naive", "replay", "nmn_bp", "nmn_sg")
REPRODUCTION = reproduction_for("experiments/nmn_mnist.yaml")


def grid(args) -> GridSpec:
    spec = load_grid(ROOT / "experiments" / "nmn_mnist.yaml")
    if not args.quick:
        return spec
    scenarios = [{"name": "split_digits", "n_experiences": 5},
                 {"name": "rare_class_stream", "base": "digits", "n_experiences": 5, "rare_fraction": 0.05}]
    return gridbench.quick_variant(spec, {"model": {"name": "mlp"}, "train.epochs": 3},
                                   grid={"scenario": scenarios})


def mean_std(values) -> str:
    """Percent, mean ± std over seeds."""
    values = 100 * values.dropna()
    if values.empty:
        return "—"
    return f"{values.mean():.2f} ± {values.std():.2f}" if len(values) > 1 else f"{values.mean():.2f}"


def main() -> None:
    args = gridbench.parser(__doc__.splitlines()[0], store="nmn",
                            quick_help="8×8 digits and its rare-class stream, MLP, 3 epochs, 1 seed").parse_args()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one download per run below
    spec = grid(args)
    cells = gridbench.run_grid(spec, args)
    runs = cell_runs(spec.experiment_name, cells, REPRODUCTION.describe, tracking_uri=args.tracking_uri)
    for column in ("final/rare_acc", "final/rare_acc_when_learnt"):   # only rare-class streams have them
        if column not in runs:
            runs[column] = float("nan")
    runs["kept_bytes"] = runs["memory/exemplar_bytes"] + runs["memory/persistent_state_bytes"]
    runs["cosine"] = [(run_artifact_json(run_id, "nmn/synthesizer.json", tracking_uri=args.tracking_uri) or {})
                      .get("mean_cosine") if method == "nmn_sg" else None
                      for run_id, method in zip(runs["run_id"], runs["method"])]

    results: dict[str, float] = {}
    for scenario in dict.fromkeys(c.config.scenario.name for c in cells):
        here = runs[runs["scenario_name"] == scenario]
        print(f"\n{scenario}")
        print(f"{'method':<8}{'n':>3}{'final acc %':>16}{'forgetting %':>16}{'rare acc %':>16}{'rare, learnt %':>16}"
              f"{'kept bytes':>12}{'wall s':>8}{'cos(S, g)':>11}")
        for method in METHODS:
            rows = here[here["method"] == method]
            if rows.empty:
                continue
            cosine = rows["cosine"].dropna().astype(float)
            print(f"{method:<8}{len(rows):>3}{mean_std(rows['final/avg_acc']):>16}{mean_std(rows['final/forgetting']):>16}"
                  f"{mean_std(rows['final/rare_acc']):>16}{mean_std(rows['final/rare_acc_when_learnt']):>16}"
                  f"{rows['kept_bytes'].mean():>12,.0f}{rows['final/wall_seconds'].mean():>8.0f}"
                  f"{(f'{cosine.mean():.3f}' if len(cosine) else '—'):>11}")
            results[f"{scenario}_{method}_acc"] = 100 * rows["final/avg_acc"].mean()
            if rows["final/rare_acc"].notna().any():
                results[f"{scenario}_{method}_rare_acc"] = 100 * rows["final/rare_acc"].mean()
                results[f"{scenario}_{method}_rare_when_learnt"] = 100 * rows["final/rare_acc_when_learnt"].mean()
    print("(mean ± std over seeds; kept bytes: exemplars + state kept between minibatches and experiences)")

    claims = REPRODUCTION.claims(runs)
    print()
    for claim in claims:
        print(f"[{claim.verdict}] {claim.claim} — {claim.ours}")
    rare_helps = int(any(c.shown for c in claims if "rare" in c.claim and "right after" in c.claim))
    print(f"RESULT nmn_sg_helps_rare={rare_helps} seeds={len(spec.seeds)} quick={int(args.quick)} "
          + json.dumps({k: round(float(v), 2) for k, v in results.items() if not math.isnan(v)}, separators=(",", ":")))


if __name__ == "__main__":
    main()
