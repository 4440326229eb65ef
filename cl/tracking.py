"""MLflow tracking: the store, and where a run's metrics go (`RunLog`).

A running experiment writes to a `RunLog`. In a single process that is `MlflowRunLog`
(direct writes); grid workers get a `QueueRunLog` that forwards every call to the launcher,
which replays them through one `MlflowRunLog` — a single writer, so parallel workers lose
nothing to SQLite's locking. Strategies never call MLflow: the logger plugin (`cl.run_logger`) observes
training and evaluation and logs through the `RunLog`.

Logged per run (experience t = 0..T-1, metrics with ``step=t``):
  acc/exp_<j>        row t of the accuracy matrix R[t, j]
  acc/avg_seen       accuracy on experiences 0..t (weighted by test-set size)
  train/loss         mean training loss of each epoch (step = global epoch)
  time/train_exp_s   wall time of the training phase of experience t
  <name>/acc/...     the same for a plugin's own classifier (`SecondPredictor`, e.g. ``nme``)
and at the end (see `cl.runner`): final/avg_acc, final/avg_inc_acc, final/forgetting,
final/bwt, final/memory_mb, final/train_seconds (and final/<name>_avg_acc, _avg_inc_acc),
plus artifacts (config, R as CSV and PNG, accuracy curves, provenance).
"""
from __future__ import annotations

import functools
import logging
import tempfile
import time
from pathlib import Path
from typing import Callable, Mapping, Protocol


log = logging.getLogger(__name__)

PARENT_TAG = "mlflow.parentRunId"
RUN_NAME_TAG = "mlflow.runName"


class RunLog(Protocol):
    """The sink one run writes to."""

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...
    def log_params(self, params: Mapping[str, str]) -> None: ...
    def set_tags(self, tags: Mapping[str, str]) -> None: ...
    def log_artifact(self, path: str, data: bytes) -> None: ...
    def progress(self, done: int, total: int, what: str) -> None: ...


# --------------------------------------------------------------------------- MLflow store


def resolve_tracking_uri(uri: str | None = None) -> str:
    """`uri` if given, else what MLflow resolves ($MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)."""
    import mlflow

    return uri or mlflow.get_tracking_uri()


@functools.lru_cache(maxsize=8)
def client_for(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def store_client(tracking_uri: str | None = None):
    """The MLflow client of the store `tracking_uri` names (None: $MLFLOW_TRACKING_URI, else ./mlflow.db)."""
    return client_for(resolve_tracking_uri(tracking_uri))


def experiment_id(client, name: str) -> str:
    """The id of experiment `name`, creating it if needed (restoring it if deleted)."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client.create_experiment(name, artifact_location=default_artifact_location(client, name))
        except Exception:  # another process created it between our two calls
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if exp.lifecycle_stage == "deleted":
        client.restore_experiment(exp.experiment_id)
    return exp.experiment_id


def default_artifact_location(client, experiment: str) -> str | None:
    """For a SQLite store, ``<folder of the .db>/mlartifacts/<experiment>``: the store and its
    artifacts stay together (copy the folder, keep everything), whatever the working directory.
    Other stores: None (the server's or MLflow's default)."""
    import re

    uri = getattr(getattr(client, "_tracking_client", None), "tracking_uri", "") or ""   # MlflowClient keeps it there
    if not uri.startswith("sqlite:///"):
        return None
    folder = Path(uri.removeprefix("sqlite:///")).resolve().parent
    return (folder / "mlartifacts" / re.sub(r"[^A-Za-z0-9_.-]+", "_", experiment)).as_uri()


def search_all_runs(client, experiment_id: str, filter_string: str = ""):
    """Every run matching `filter_string`, following MLflow's pagination."""
    token = None
    while True:
        page = client.search_runs([experiment_id], filter_string=filter_string,
                                  max_results=1000, page_token=token)
        yield from page
        token = page.token
        if not token:
            return


def grid_url(client, grid: str, base_url: str = "http://127.0.0.1:5000") -> str:
    """The MLflow UI address that lists the cell runs of grid `grid` in its experiment.

    The experiment is the one holding the grid's launch runs; the runs table is filtered on
    the tags every cell carries (``grid``, ``kind = 'cell'``), so the chart view compares exactly
    the grid's cells (group them by the ``group_hash`` tag to average seeds).
    """
    from urllib.parse import quote

    grid_filter = f"tags.grid = '{grid}'"
    for exp in client.search_experiments():
        if client.search_runs([exp.experiment_id], f"{grid_filter} and tags.kind = 'launch'", max_results=1):
            search = quote(f"{grid_filter} and tags.kind = 'cell'", safe="")
            return f"{base_url.rstrip('/')}/#/experiments/{exp.experiment_id}/runs?searchFilter={search}"
    raise LookupError(f"no launch of grid {grid!r} in this store; run `clsuite grid launch <grid.yaml>` first "
                      "(or check --tracking-uri)")


class MlflowRunLog:
    """Writes straight to an MLflow run. Not safe to share between processes."""

    def __init__(self, client, run_id: str, on_progress: Callable[[int, int, str], None] | None = None):
        self.client = client
        self.run_id = run_id
        self._on_progress = on_progress

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        batch = [Metric(k, float(v), ts, step or 0) for k, v in metrics.items()]
        for i in range(0, len(batch), 500):
            self.client.log_batch(self.run_id, metrics=batch[i:i + 500])

    def log_params(self, params: Mapping[str, str]) -> None:
        from mlflow.entities import Param

        batch = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(batch), 100):
            self.client.log_batch(self.run_id, params=batch[i:i + 100])

    def set_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()])

    def log_artifact(self, path: str, data: bytes) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / Path(path).name
            local.write_bytes(data)
            folder = str(Path(path).parent)
            self.client.log_artifact(self.run_id, str(local), None if folder == "." else folder)

    def progress(self, done: int, total: int, what: str) -> None:
        if self._on_progress is not None:
            self._on_progress(done, total, what)

    def apply(self, method: str, args: tuple) -> None:
        """Replay a call forwarded by a `QueueRunLog`."""
        if method not in _FORWARDED:
            raise ValueError(f"unexpected run-log call {method!r}")
        getattr(self, method)(*args)


_FORWARDED = frozenset({"log_metrics", "log_params", "set_tags", "log_artifact", "progress"})


class QueueRunLog:
    """Forwards every call to the launcher as ``(key, method, args)`` on a queue."""

    def __init__(self, queue, key: str):
        self.queue = queue
        self.key = key

    def _send(self, method: str, *args) -> None:
        self.queue.put((self.key, method, args))

    def log_metrics(self, metrics, step=None):
        self._send("log_metrics", {k: float(v) for k, v in metrics.items()}, step)

    def log_params(self, params):
        self._send("log_params", dict(params))

    def set_tags(self, tags):
        self._send("set_tags", dict(tags))

    def log_artifact(self, path, data):
        self._send("log_artifact", path, bytes(data))

    def progress(self, done, total, what):
        self._send("progress", done, total, what)


class NullRunLog:
    """Discards everything (benchmarks of raw training speed, dry runs)."""

    def log_metrics(self, metrics, step=None): pass
    def log_params(self, params): pass
    def set_tags(self, tags): pass
    def log_artifact(self, path, data): pass
    def progress(self, done, total, what): pass


