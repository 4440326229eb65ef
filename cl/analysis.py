"""Read runs back from MLflow into tidy pandas frames; tables and plots over seeds.

Used by `clsuite report` and by the notebooks; it only reads the tracking store. One row per
grid cell: when a `config_hash` has several FINISHED runs (a cell rerun by hand), the latest
one counts, so no seed is counted twice.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import pandas as pd

FINAL_COLUMNS = ("final/avg_acc", "final/avg_inc_acc", "final/forgetting", "final/bwt",
                 "final/memory_mb", "final/train_seconds", "cost/train_flops")
PERCENT_METRICS = frozenset({"final/avg_acc", "final/avg_inc_acc", "final/forgetting", "final/bwt", "final/acc",
                             "final/source_acc", "final/rare_acc", "final/common_acc",
                             "final/rare_acc_when_learnt", "final/common_acc_when_learnt",
                             "final/nme_avg_acc", "final/nme_avg_inc_acc"})


def load_runs(
    experiment: str,
    *,
    tracking_uri: str | None = None,
    config_hashes: Iterable[str] | None = None,
    statuses: Sequence[str] = ("FINISHED",),
) -> pd.DataFrame:
    """One row per config hash (latest run) with tags, params (``param.<key>``) and metrics."""
    from cl.tracking import search_all_runs, store_client

    client = store_client(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return _empty_frame()
    wanted = set(config_hashes) if config_hashes is not None else None
    rows = []
    for run in search_all_runs(client, exp.experiment_id, "tags.config_hash != ''"):
        tags = run.data.tags
        if run.info.status not in statuses or (wanted is not None and tags["config_hash"] not in wanted):
            continue
        row = {
            "run_id": run.info.run_id,
            "status": run.info.status,
            "start_time": run.info.start_time,
            "config_hash": tags["config_hash"],
            "group_hash": tags.get("group_hash"),
            "label": tags.get("cell"),
            "strategy": tags.get("strategy"),
            "scenario": tags.get("scenario"),
            "seed": int(tags.get("seed", -1)),
            "failure_reason": tags.get("failure_reason"),
            "health_warning": tags.get("health.warning"),     # see cl.health: the network collapsed
        }
        row.update({f"param.{k}": v for k, v in run.data.params.items()})
        row.update(run.data.metrics)
        rows.append(row)
    if not rows:
        return _empty_frame()
    frame = pd.DataFrame(rows).sort_values("start_time")
    frame = frame.drop_duplicates("config_hash", keep="last").reset_index(drop=True)
    frame["label"] = _group_labels(frame)
    return frame


def load_experiment(experiment: str, *, tracking_uri: str | None = None) -> pd.DataFrame:
    """`load_runs` for a notebook: the experiment's finished runs, or a LookupError that says where it looked."""
    runs = load_runs(experiment, tracking_uri=tracking_uri)
    if runs.empty:
        from cl.tracking import resolve_tracking_uri

        raise LookupError(f"no FINISHED runs in experiment {experiment!r} at {resolve_tracking_uri(tracking_uri)}; "
                          "set CLSUITE_EXPERIMENT / CLSUITE_TRACKING_URI (or the notebook's parameters cell)")
    return runs


def report_columns(runs: pd.DataFrame) -> list[str]:
    """The metrics a report tabulates: the continual-learning set for CL runs; for transfer
    experiments (no ``final/avg_acc``) every ``final/``, ``memory/`` and ``cost/`` metric."""
    if "final/avg_acc" in runs.columns:
        return [c for c in FINAL_COLUMNS if c in runs.columns]
    return sorted(c for c in runs.columns if c.startswith(("final/", "memory/", "cost/")) and c != "final/wall_seconds")


def headline_metric(columns: Sequence[str]) -> str:
    """The accuracy (or the experiment's own score) a comparison plot shows."""
    for name in ("final/avg_acc", "final/acc", "final/score", "final/f1", "final/spearman"):
        if name in columns:
            return name
    return columns[0]


def summarize(runs: pd.DataFrame, metrics: Sequence[str] = FINAL_COLUMNS) -> pd.DataFrame:
    """Mean, sample std and n over seeds per `group_hash` (columns ``<metric>.mean`` etc.)."""
    if runs.empty:
        return pd.DataFrame(columns=["group_hash", "label", "n"])
    present = [m for m in metrics if m in runs.columns]
    grouped = runs.groupby("group_hash", sort=False)
    out = grouped.agg(label=("label", "first"), n=("seed", "nunique")).reset_index()
    if "health_warning" in runs.columns:
        out["n_warned"] = grouped["health_warning"].agg(lambda w: int(w.notna().sum())).values
    for metric in present:
        out[f"{metric}.mean"] = grouped[metric].mean().values
        out[f"{metric}.std"] = grouped[metric].std(ddof=1).values
    return out


def format_mean_std(mean: float, std: float, metric: str) -> str:
    scale = 100.0 if metric in PERCENT_METRICS else 1.0
    if mean is None or np.isnan(mean):
        return "—"
    if metric.startswith(("cost/", "memory/")):   # FLOPs, bytes, counts: 3 significant digits, SI prefix
        text = _si(mean)
        return text + (f" ± {_si(std)}" if std is not None and not np.isnan(std) else "")
    digits = 1 if scale == 100.0 else 3
    text = f"{scale * mean:.{digits}f}"
    if std is not None and not np.isnan(std):
        text += f" ± {scale * std:.{digits}f}"
    return text


def summary_table(summary: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """`summarize`'s output as text: one row per group, ``mean ± std`` per metric (percent where it is one)."""
    table = pd.DataFrame({"group": summary["label"].astype(str), "n": summary["n"]})
    if "n_warned" in summary.columns and summary["n_warned"].any():   # runs flagged by cl.health
        table["⚠"] = [f"⚠ {w}/{n}" if w else "" for w, n in zip(summary["n_warned"], summary["n"])]
    for metric in metrics:
        header = metric.removeprefix("final/") + (" %" if metric in PERCENT_METRICS else "")
        table[header] = [format_mean_std(row.get(f"{metric}.mean"), row.get(f"{metric}.std"), metric)
                         for _, row in summary.iterrows()]
    return table


def health_warnings(runs: pd.DataFrame) -> list[tuple[str, int, str]]:
    """(label, seed, warning) of every run `cl.health` flagged (e.g. a collapsed network)."""
    if "health_warning" not in runs.columns:
        return []
    flagged = runs[runs["health_warning"].notna()]
    return [(str(r.label), int(r.seed), str(r.health_warning)) for r in flagged.itertuples()]


def _si(value: float) -> str:
    for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g} {prefix}"
    return f"{value:.3g}"


def comparison_plot(summary: pd.DataFrame, metric: str = "final/avg_acc", title: str = ""):
    """Bar chart of one final metric per group with ±1 std error bars."""
    from matplotlib.figure import Figure

    scale = 100.0 if metric in PERCENT_METRICS else 1.0
    fig = Figure(figsize=(1.5 + 0.8 * max(len(summary), 1), 3.6), layout="constrained")
    ax = fig.add_subplot()
    means = scale * summary[f"{metric}.mean"].to_numpy(dtype=float)
    stds = scale * np.nan_to_num(summary[f"{metric}.std"].to_numpy(dtype=float))
    ax.bar(range(len(summary)), means, yerr=stds, capsize=4, color="tab:blue", alpha=0.8)
    ax.set_xticks(range(len(summary)), summary["label"], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(metric + (" (%)" if scale == 100.0 else ""))
    ax.set_title(title or f"{metric}: mean ± std over seeds", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    return fig


def _group_labels(frame: pd.DataFrame) -> pd.Series:
    """Grid cell labels where every run has one; otherwise the params that vary across groups."""
    if frame["label"].notna().all():
        return frame["label"]
    params = [c for c in frame.columns if c.startswith("param.") and c not in ("param.seed", "param.experiment")]
    varying = [c for c in params if frame[c].astype(str).nunique() > 1]
    if not varying:
        return frame["strategy"].fillna("run")
    return frame[varying].astype(str).apply(
        lambda r: ", ".join(f"{c[len('param.'):]}={v}" for c, v in r.items()), axis=1)


def _empty_frame() -> pd.DataFrame:
    return pd.DataFrame(columns=["run_id", "status", "config_hash", "group_hash", "label", "seed"])


# --------------------------------------------------------------------------- per-experience histories

def load_histories(runs: pd.DataFrame, metrics: Sequence[str] = ("acc/avg_seen",), *,
                   tracking_uri: str | None = None) -> pd.DataFrame:
    """Tidy metric histories of `runs` (a `load_runs` frame): one row per (run, metric, step).

    Columns: run_id, group_hash, label, seed, metric, step, value. For continual-learning runs
    the step is the experience just trained (``acc/avg_seen`` at step t is the accuracy over
    the experiences seen so far).
    """
    from cl.tracking import store_client

    client = store_client(tracking_uri)
    rows = []
    for _, run in runs.iterrows():
        for metric in metrics:
            for point in client.get_metric_history(run["run_id"], metric):
                rows.append({"run_id": run["run_id"], "group_hash": run["group_hash"], "label": run["label"],
                             "seed": run["seed"], "metric": metric, "step": point.step, "value": point.value})
    columns = ["run_id", "group_hash", "label", "seed", "metric", "step", "value"]
    return pd.DataFrame(rows, columns=columns).sort_values(["label", "seed", "metric", "step"], ignore_index=True)


def curves_over_seeds(histories: pd.DataFrame, metric: str = "acc/avg_seen") -> pd.DataFrame:
    """Mean, std and n over seeds of one metric per (group, step)."""
    here = histories[histories["metric"] == metric]
    out = here.groupby(["group_hash", "label", "step"], sort=False)["value"].agg(["mean", "std", "count"])
    return out.rename(columns={"count": "n"}).reset_index()


def accuracy_matrix(run_id: str, *, tracking_uri: str | None = None) -> np.ndarray:
    """R[t, j] of one run, from its ``accuracy_matrix.csv`` artifact (NaN where not evaluated)."""
    import tempfile

    from cl.tracking import store_client

    client = store_client(tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(run_id, "accuracy_matrix.csv", tmp)
        table = pd.read_csv(path, index_col="after_exp")
    return table.to_numpy(dtype=float)


def mean_accuracy_matrices(runs: pd.DataFrame, *, tracking_uri: str | None = None) -> dict[str, np.ndarray]:
    """Per group label, R averaged over the group's seeds (runs without a matrix are skipped)."""
    out: dict[str, list[np.ndarray]] = {}
    for _, run in runs.iterrows():
        try:
            out.setdefault(run["label"], []).append(accuracy_matrix(run["run_id"], tracking_uri=tracking_uri))
        except Exception:           # transfer runs and failed runs have no matrix
            continue
    return {label: np.nanmean(np.stack(mats), axis=0) for label, mats in out.items() if mats}


def run_artifact_json(run_id: str, path: str, *, tracking_uri: str | None = None):
    """A JSON artifact of a run (e.g. ``fpf/sensitivity.json``, ``omega.json``), or None if absent."""
    import json
    import tempfile

    from cl.tracking import store_client

    client = store_client(tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = client.download_artifacts(run_id, path, tmp)
        except Exception:
            return None
        with open(local) as handle:
            return json.load(handle)


def pareto_front(points: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """The rows no other row beats on both: lower `x` (cost) and higher `y` (accuracy), sorted by x."""
    ordered = points.sort_values([x, y], ascending=[True, False])
    best = -np.inf
    keep = []
    for index, row in ordered.iterrows():
        if row[y] > best:
            keep.append(index)
            best = row[y]
    return ordered.loc[keep]


# --------------------------------------------------------------------------- figures over seeds

def curves_plot(curves: pd.DataFrame, metric: str = "acc/avg_seen", title: str = "",
                xlabel: str = "after training experience"):
    """Mean curve per group with a ±1 std band over seeds."""
    from matplotlib.figure import Figure

    scale = 100.0 if metric.startswith(("acc/", "nme/acc")) or metric in PERCENT_METRICS else 1.0
    fig = Figure(figsize=(6.0, 3.6), layout="constrained")
    ax = fig.add_subplot()
    for label, group in curves.groupby("label", sort=False):
        steps = group["step"].to_numpy()
        mean = scale * group["mean"].to_numpy(dtype=float)
        std = scale * np.nan_to_num(group["std"].to_numpy(dtype=float))
        (line,) = ax.plot(steps, mean, marker="o", markersize=3, label=str(label))
        ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(metric + (" (%)" if scale == 100.0 else ""))
    ax.set_title(title or f"{metric}: mean ± std over seeds", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    return fig


def tradeoff_plot(summary: pd.DataFrame, x: str, y: str = "final/avg_acc", title: str = "", log_x: bool = False):
    """Accuracy against a cost (memory MB, training FLOPs, bytes) per group, ±1 std, Pareto front dashed."""
    from matplotlib.figure import Figure

    scale = 100.0 if y in PERCENT_METRICS else 1.0
    data = summary.dropna(subset=[f"{x}.mean", f"{y}.mean"])
    fig = Figure(figsize=(6.0, 4.0), layout="constrained")
    ax = fig.add_subplot()
    for _, row in data.iterrows():
        ax.errorbar(row[f"{x}.mean"], scale * row[f"{y}.mean"], yerr=scale * np.nan_to_num(row[f"{y}.std"]),
                    xerr=np.nan_to_num(row[f"{x}.std"]), fmt="o", capsize=3)
        ax.annotate(str(row["label"]), (row[f"{x}.mean"], scale * row[f"{y}.mean"]), fontsize=7,
                    xytext=(4, 4), textcoords="offset points")
    if len(data) > 1:
        front = pareto_front(data.assign(_y=scale * data[f"{y}.mean"]), f"{x}.mean", "_y")
        ax.plot(front[f"{x}.mean"], front["_y"], "--", color="grey", linewidth=1, label="Pareto front")
        ax.legend(fontsize=7)
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(x)
    ax.set_ylabel(y + (" (%)" if scale == 100.0 else ""))
    ax.set_title(title or f"{y} vs {x}", fontsize=9)
    ax.grid(alpha=0.3)
    return fig
