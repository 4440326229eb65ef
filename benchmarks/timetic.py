"""TimeTic vs. the zero-shot score: rank correlation between predicted and true fine-tuned error.

Builds the TimeTic table (`transfer.estimator`) for the forecaster zoo of
`transfer.zoo` — 10 small forecasters pretrained here on synthetic families — over 11
target datasets (8 statsmodels series + 3 held-out synthetic families) and 3 horizons, then
runs leave-one-dataset-out: for each dataset, the in-context learner sees every other
dataset's rows and predicts the held-out dataset's rows. Reported per dataset (mean over
horizons) and as the mean over datasets: Spearman and Kendall between each model's score and
its true fine-tuned error, and the top-1 gap (log10 MSE of the model ranked first minus the
best model's). Rows: TimeTic (meta-features + entropy profile + zero-shot column), TimeTic
without the zero-shot column, meta-features only (+ a model one-hot), entropy only, and the
zero-shot baseline (a model's zero-shot test error is its score). The learner that produced
the numbers is printed (TabPFN only when its weights are on disk; else the fallback).
Pretrained models and fine-tuning results are cached under $CLSUITE_CACHE (~/.cache/clsuite).

    python benchmarks/py --quick     # 5 datasets, 5 models, 2 horizons, short training
    python benchmarks/py             # the full zoo, datasets and horizons

Measured (full run, seed 0, learner gp — the fallback; no TabPFN weights on this machine; 8 min on 2
busy cores): mean Spearman / Kendall — TimeTic 0.398 / 0.309, without the zero-shot column 0.446 / 0.336,
meta-features + model one-hot 0.492 / 0.374, entropy only 0.188 / 0.126, zero-shot score 0.315 / 0.228.
TimeTic beats the zero-shot score (+26%, the paper: +30%) but not the meta-features-only ablation: on this
zoo the entropy profile adds nothing over knowing which model a row is.
"""
from __future__ import annotations

import argparse
import json
import logging
import time

from cl.cache import cache_root
from transfer.estimator import TimeTicEstimator, leave_one_dataset_out, rank_scores, summarise, zero_shot_scores
from transfer.experiment import settings
from transfer.params import TIMETIC_MODELS, TimeTicTransferParams
from transfer.table import FEATURE_SETS, build_table

LABELS = {"full": "TimeTic", "no_zero_shot": "TimeTic w/o zero-shot col", "meta": "meta-features only",
          "entropy": "entropy only", "zero_shot": "zero-shot score"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 datasets, 5 models, horizons 4 and 16, short training")
    parser.add_argument("--learner", default="auto", help="auto | tabpfn | gp | hgb")
    parser.add_argument("--model-path", default=None, help="TabPFN regressor weights (.ckpt)")
    parser.add_argument("--fallback", default="gp", help="auto's learner without TabPFN: gp | hgb")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    # the registered experiment's defaults (transfer.params), so the two cannot drift apart
    params = TimeTicTransferParams()
    if args.quick:
        params = params.model_copy(update=dict(
            datasets=("sunspots", "nile", "elnino", "macro_unemp", "square_wave"), models=TIMETIC_MODELS[:5],
            horizons=(4, 16), segments=4, pretrain_steps=100, finetune_steps=30))
    s = settings(params, args.seed, cache_root())
    started = time.perf_counter()
    table = build_table(s)
    built = time.perf_counter() - started

    per_dataset, learners = {}, set()
    for features in FEATURE_SETS:
        estimator = TimeTicEstimator(args.learner, model_path=args.model_path, fallback=args.fallback,
                                             max_context=params.max_context, random_state=args.seed)
        scores, used = leave_one_dataset_out(table, features, estimator)
        learners.update(used)
        per_dataset[features] = summarise(rank_scores(scores))
    per_dataset["zero_shot"] = summarise(rank_scores(zero_shot_scores(table)))
    learner = ",".join(sorted(learners))

    datasets = list(per_dataset["full"].index)
    print(f"{len(s.models)} models × {len(datasets)} datasets × horizons {list(s.horizons)}; "
          f"{s.segments} segments per (model, dataset); table {len(table)} rows built in {built:.0f} s")
    print(f"in-context learner: {learner}  (TabPFN numbers only when this says tabpfn)")
    print("\nSpearman per held-out dataset (mean over horizons)")
    print(f"{'method':<28}" + "".join(f"{d[:12]:>13}" for d in datasets) + f"{'mean':>8}")
    for key, frame in per_dataset.items():
        print(f"{LABELS[key]:<28}" + "".join(f"{frame.loc[d, 'spearman']:>13.2f}" for d in datasets)
              + f"{frame['spearman'].mean():>8.3f}")
    print(f"\n{'method':<28}{'Spearman':>10}{'Kendall':>10}{'top-1 gap':>11}")
    means = {}
    for key, frame in per_dataset.items():
        means[key] = {m: round(float(frame[m].mean()), 3) for m in ("spearman", "kendall", "top1_gap")}
        print(f"{LABELS[key]:<28}{means[key]['spearman']:>10.3f}{means[key]['kendall']:>10.3f}"
              f"{means[key]['top1_gap']:>11.3f}")
    zs = means["zero_shot"]["spearman"]
    gain = (means["full"]["spearman"] - zs) / abs(zs) if zs else float("nan")
    print(f"TimeTic vs zero-shot score: {100 * gain:+.0f}% mean Spearman (paper: ≈ +30%, mean ≈ 0.6)")
    print(f"RESULT timetic_beats_zero_shot={int(means['full']['spearman'] > zs)} learner={learner} "
          f"quick={int(args.quick)} " + json.dumps({f"{k}_{m}": v for k, d in means.items() for m, v in d.items()},
                                                   separators=(",", ":")))


if __name__ == "__main__":
    main()
