"""Carry finished runs between MLflow stores as a text file: export, then import elsewhere.

For moving results from a cluster's tracking server to a laptop, or keeping a benchmark's
finished cells in version control so a later launch of the same grid reuses them (the
launcher skips every config hash that has a FINISHED run, imported or not).

One JSON object per line and run: name, status, times, tags, params, every metric's full
history, and the run's small text artifacts (CSV, JSON and JSON lines — e.g. a QA method's
answers — YAML, text; each up to `MAX_TEXT_BYTES`; images are left out — they are drawn from
the numbers). Import is idempotent: a run whose source id was imported before, or whose config
hash already has a FINISHED run in the target experiment, is skipped. Parent links are dropped
(a grid's launch run travels as a run of its own).
"""
from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

TEXT_SUFFIXES = (".csv", ".json", ".jsonl", ".yaml", ".yml", ".txt")
MAX_TEXT_BYTES = 256 * 1024
DROPPED_TAGS = ("mlflow.parentRunId",)
PROJECT_ROOT = Path(__file__).resolve().parents[1]


def archive_dir(root: Path = PROJECT_ROOT) -> Path:
    """Where the project keeps its archived runs: ``[tool.clsuite] archive`` in its pyproject.toml, relative to it."""
    import tomllib

    pyproject = root / "pyproject.toml"
    settings = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("tool", {}).get("clsuite", {})
    if "archive" not in settings:
        raise FileNotFoundError(f"{pyproject}: no [tool.clsuite] archive = \"<folder of archived runs>\"")
    return root / settings["archive"]


@dataclass
class ImportSummary:
    imported: int = 0
    skipped: int = 0


def export_runs(experiment: str, path: str | Path, *, tracking_uri: str | None = None,
                statuses: Iterable[str] = ("FINISHED",)) -> int:
    """Write the experiment's runs with one of `statuses` to `path` (JSON lines); returns how many."""
    from cl.tracking import resolve_tracking_uri, search_all_runs, store_client

    client = store_client(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise LookupError(f"experiment {experiment!r} not found in {resolve_tracking_uri(tracking_uri)}")
    wanted = set(statuses)
    count = 0
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as out:
        for run in search_all_runs(client, exp.experiment_id):
            if run.info.status not in wanted:
                continue
            out.write(json.dumps(_record(client, experiment, run), sort_keys=True) + "\n")
            count += 1
    return count


def _record(client, experiment: str, run) -> dict:
    metrics = {}
    for name in run.data.metrics:
        history = client.get_metric_history(run.info.run_id, name)
        metrics[name] = [[m.step, m.timestamp, m.value] for m in sorted(history, key=lambda m: (m.step, m.timestamp))]
    return {"experiment": experiment, "run_id": run.info.run_id, "run_name": run.info.run_name,
            "status": run.info.status, "start_time": run.info.start_time, "end_time": run.info.end_time,
            "tags": run.data.tags, "params": run.data.params, "metrics": metrics,
            "artifacts": _text_artifacts(client, run.info.run_id)}


def _text_artifacts(client, run_id: str, folder: str | None = None) -> dict[str, str]:
    out = {}
    for item in client.list_artifacts(run_id, folder):
        if item.is_dir:
            out.update(_text_artifacts(client, run_id, item.path))
        elif item.path.endswith(TEXT_SUFFIXES) and (item.file_size or 0) <= MAX_TEXT_BYTES:
            with tempfile.TemporaryDirectory() as tmp:
                out[item.path] = Path(client.download_artifacts(run_id, item.path, tmp)).read_text(encoding="utf-8")
    return out


def import_runs(path: str | Path, *, tracking_uri: str | None = None, experiment: str | None = None) -> ImportSummary:
    """Recreate the runs of an `export_runs` file in a store (into `experiment`, else each run's own)."""
    from mlflow.entities import Metric, Param

    from cl.tracking import experiment_id, search_all_runs, store_client

    client = store_client(tracking_uri)
    summary = ImportSummary()
    known: dict[str, tuple[set, set]] = {}
    with open(path, encoding="utf-8") as handle:
        records = [json.loads(line) for line in handle if line.strip()]
    for record in records:
        name = experiment or record["experiment"]
        exp_id = experiment_id(client, name)
        if exp_id not in known:
            imported, finished = set(), set()
            for run in search_all_runs(client, exp_id):
                imported.add(run.data.tags.get("imported_from"))
                if run.info.status == "FINISHED":
                    finished.add(run.data.tags.get("config_hash"))
            known[exp_id] = (imported, finished)
        imported, finished = known[exp_id]
        config_hash = record["tags"].get("config_hash")
        if record["run_id"] in imported or (config_hash and config_hash in finished):
            summary.skipped += 1
            continue
        tags = {k: v for k, v in record["tags"].items() if k not in DROPPED_TAGS}
        tags["imported_from"] = record["run_id"]
        run = client.create_run(exp_id, start_time=record["start_time"], tags=tags, run_name=record["run_name"])
        run_id = run.info.run_id
        params = [Param(k, v) for k, v in record["params"].items()]
        metrics = [Metric(name, value, timestamp, step) for name, points in record["metrics"].items()
                   for step, timestamp, value in points]
        for start in range(0, len(params), 100):                          # MLflow's batch limits
            client.log_batch(run_id, params=params[start:start + 100])
        for start in range(0, len(metrics), 1000):
            client.log_batch(run_id, metrics=metrics[start:start + 1000])
        for artifact, text in record["artifacts"].items():
            client.log_text(run_id, text, artifact)
        client.set_terminated(run_id, record["status"], end_time=record["end_time"])
        imported.add(record["run_id"])
        if record["status"] == "FINISHED" and config_hash:
            finished.add(config_hash)
        summary.imported += 1
    return summary

