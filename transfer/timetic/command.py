"""`clsuite recommend`: rank the configurations of an experiment's MLflow history for a new dataset, TimeTic's
recipe (registered in `cl.registry.COMMANDS` by `transfer.timetic.params`). Light at import: typer and rich only,
the estimator is imported when the command runs."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from cl.console import TrackingOpt, console, setup_logging, user_errors
from cl.errors import ConfigError


def recommend(
    experiment: str = typer.Option(..., "--experiment", "-e", help="MLflow experiment whose runs are the history"),
    dataset: str = typer.Option(..., "--dataset", "-d", help="the dataset to rank configurations for"),
    tracking_uri: Optional[str] = TrackingOpt,
    metric: Optional[str] = typer.Option(None, help="metric to rank by (default final/avg_acc, else final/acc)"),
    dataset_key: Optional[str] = typer.Option(None, "--dataset-key",
                                              help="param naming the dataset (default scenario.name, else "
                                                   "transfer.target)"),
    meta_features: Optional[Path] = typer.Option(None, "--meta-features",
                                                 help="JSON {dataset: {feature: value}} for datasets without "
                                                      "built-in meta-features"),
    learner: str = typer.Option("auto", help="auto | tabpfn | gp | hgb (auto: TabPFN if its weights are on disk)"),
    model_path: Optional[str] = typer.Option(None, "--model-path", help="TabPFN regressor weights (.ckpt)"),
    data_root: Optional[str] = typer.Option(None, "--data-root", help="image data for built-in meta-features"),
    top: int = typer.Option(10, min=1, help="configurations shown"),
) -> None:
    """Rank the configurations in an experiment's history for a new dataset (TimeTic's recipe on
    MLflow runs), and report how well that ranking worked leave-one-dataset-out."""
    setup_logging(False)
    with user_errors():
        from cl.analysis import load_runs
        from transfer.timetic.estimator import TabPFNWeightsMissing
        from transfer.timetic.recommend import meta_feature_source, recommend as rank

        if learner not in ("auto", "tabpfn", "gp", "hgb"):
            raise ConfigError(f"--learner: {learner!r} is not one of auto, tabpfn, gp, hgb")
        runs = load_runs(experiment, tracking_uri=tracking_uri)
        try:
            result = rank(runs, dataset, meta_feature_source(meta_features, data_root), learner=learner,
                          model_path=model_path, dataset_key=dataset_key, metric=metric)
        except TabPFNWeightsMissing as error:
            raise ConfigError(f"--learner tabpfn: {error}") from None
    table = Table(title=f"{experiment}: configurations ranked for {result.dataset_key}={dataset} "
                        f"(predicted {result.metric})")
    for column in ("#", "configuration", "predicted") + (("observed",) if "observed" in result.ranking else ()):
        table.add_column(column, justify="left" if column == "configuration" else "right")
    for i, row in enumerate(result.ranking.head(top).itertuples(index=False), 1):
        cells = [str(i), row.configuration, f"{row.predicted:.4f}"]
        if "observed" in result.ranking:
            cells.append("—" if row.observed != row.observed else f"{row.observed:.4f}")
        table.add_row(*cells)
    console.print(table)
    console.print(f"in-context learner: {result.learner}; history: {len(result.datasets)} datasets "
                  f"({', '.join(result.datasets)})", highlight=False)
    if result.evaluation.empty:
        console.print("leave-one-dataset-out: not possible (needs ≥ 2 datasets, each with ≥ 2 configurations)",
                      highlight=False)
        return
    evaluation = Table(title="leave-one-dataset-out: rank correlation with the true metric "
                             "(baseline: each configuration's mean on the other datasets)")
    for column in ("held-out dataset", "configs", "Spearman", "Kendall", "baseline Spearman", "baseline Kendall"):
        evaluation.add_column(column, justify="left" if column == "held-out dataset" else "right")
    ev = result.evaluation
    for row in ev.itertuples(index=False):
        evaluation.add_row(row.dataset, str(row.n_configs), *(f"{v:.2f}" for v in (
            row.spearman, row.kendall, row.baseline_spearman, row.baseline_kendall)))
    evaluation.add_row("mean", "", *(f"{ev[c].mean():.2f}" for c in (
        "spearman", "kendall", "baseline_spearman", "baseline_kendall")))
    console.print(evaluation)
    if len(ev) < 3:
        console.print(f"note: only {len(ev)} held-out dataset(s); these correlations say little", highlight=False)
