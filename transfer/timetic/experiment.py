"""The TimeTic transfer experiment: rank a forecaster zoo on held-out datasets, logged to MLflow.

Registered as the transfer experiment ``timetic`` (options: `transfer.timetic.params.TimeTicTransferParams`;
method and deviations: `transfer.timetic.estimator`). One run:

1. the zoo (`transfer.timetic.zoo`): every member of ``models`` pretrained on its synthetic
   family, cached under ``<cache>/timetic/zoo/``; plus ``checkpoints`` loaded from disk;
2. the table over ``datasets`` × models × ``horizons`` × ``segments`` — meta-features,
   entropy profiles, zero-shot errors, and the fine-tuned targets (cached under
   ``<cache>/timetic/finetune/``);
3. leave-one-dataset-out with ``learner`` on the ``features`` set — every dataset in turn, or
   only ``target`` — and the zero-shot baseline on the same folds.

Logged: ``final/spearman``, ``final/kendall``, ``final/top1_gap`` (means over held-out datasets
of the means over horizons), the same for the zero-shot baseline (``final/zero_shot_*``),
``spearman/<dataset>`` and ``zero_shot_spearman/<dataset>``; the learner that ran as tag and
param ``timetic.learner`` (and ``timetic.fallback_reason`` when ``auto`` fell back); artifacts
``timetic/table.csv`` and ``timetic/scores.csv`` (predicted vs. true per model). The run's
``train`` section is not used (the zoo and fine-tuning have their own options); its seed is.
"""
from __future__ import annotations

import logging

from cl.transfer_run import TransferContext
from transfer.timetic.estimator import TimeTicEstimator, leave_one_dataset_out, rank_scores, summarise, zero_shot_scores
from transfer.timetic.table import TableSettings, build_table

log = logging.getLogger(__name__)


def settings(params, seed: int, cache_dir) -> TableSettings:
    return TableSettings(
        datasets=tuple(params.datasets), models=tuple(params.models), horizons=tuple(params.horizons),
        context=params.context, segments=params.segments, segment_length=params.segment_length,
        profile_length=params.profile_length, test_fraction=params.test_fraction,
        pretrain_steps=params.pretrain_steps, finetune_steps=params.finetune_steps, finetune_lr=params.finetune_lr,
        checkpoints=tuple(params.checkpoints), seed=seed, cache_dir=cache_dir)


def run(ctx: TransferContext, params) -> dict[str, float]:
    s = settings(params, ctx.seed, ctx.cache_dir)
    ctx.runlog.progress(0, 3, "zoo and table")
    table = build_table(s)
    ctx.runlog.progress(1, 3, "leave one dataset out")
    estimator = TimeTicEstimator(params.learner, model_path=params.model_path, fallback=params.fallback,
                                 max_context=params.max_context, random_state=ctx.seed)
    held_out = None if params.target is None else [params.target]
    scores, learners = leave_one_dataset_out(table, params.features, estimator, held_out)
    learner = ",".join(sorted(set(learners)))
    tags = {"timetic.learner": learner}
    if estimator.fallback_reason_:
        tags["timetic.fallback_reason"] = estimator.fallback_reason_[:5000]
    ctx.runlog.set_tags(tags)
    ctx.runlog.log_params({"timetic.learner": learner})
    log.info("TimeTic learner: %s", learner)

    ours = summarise(rank_scores(scores))
    zs_scores = zero_shot_scores(table)
    if held_out is not None:
        zs_scores = zs_scores[zs_scores["dataset"].isin(held_out)]
    zero = summarise(rank_scores(zs_scores))
    ctx.runlog.log_artifact("timetic/table.csv", table.to_csv(index=False).encode())
    ctx.runlog.log_artifact("timetic/scores.csv", scores.to_csv(index=False).encode())
    ctx.runlog.progress(3, 3, "done")
    metrics = {"spearman": ours["spearman"].mean(), "kendall": ours["kendall"].mean(),
               "top1_gap": ours["top1_gap"].mean(), "zero_shot_spearman": zero["spearman"].mean(),
               "zero_shot_kendall": zero["kendall"].mean(), "zero_shot_top1_gap": zero["top1_gap"].mean(),
               "n_datasets": len(ours), "n_models": scores["model"].nunique()}
    metrics.update({f"spearman/{d}": v for d, v in ours["spearman"].items()})
    metrics.update({f"zero_shot_spearman/{d}": v for d, v in zero["spearman"].items()})
    return metrics
