"""MLflow tracking: where a run's metrics go, the Avalanche logger plugin, and provenance.

A running experiment writes to a `RunLog`. In a single process that is `MlflowRunLog`
(direct writes); grid workers get a `QueueRunLog` that forwards every call to the launcher,
which replays them through one `MlflowRunLog` — a single writer, so parallel workers lose
nothing to SQLite's locking. Strategies never call MLflow: the `MLflowLoggerPlugin` observes
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
import json
import logging
import math
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, runtime_checkable

import numpy as np

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


# --------------------------------------------------------------------------- resuming a run


RUNNER_HOST_TAG, RUNNER_PID_TAG = "runner.host", "runner.pid"


def runner_tags() -> dict[str, str]:
    """Who is running a run now (checked before resuming it: a live process must not be doubled)."""
    return {RUNNER_HOST_TAG: socket.gethostname(), RUNNER_PID_TAG: str(os.getpid())}


def find_resume_plan(client, experiment_id: str, config_hash: str, *, include_failed: bool = False):
    """A `cl.checkpoint.ResumePlan` for the newest unfinished run of `config_hash` that left a valid
    checkpoint, or None (start a fresh run).

    Candidates: the newest run of the cell, if it is RUNNING (its process dead), KILLED, or — with
    `include_failed` — FAILED, and carries a ``checkpoint.token``. A run still RUNNING in a live
    process on this host raises `ConfigError`. A checkpoint that is refused (corrupted, other format or
    code, other run) is logged with its reason, tagged on the old run (``checkpoint.refused``), and the
    old run is closed as KILLED: the cell then starts from scratch in a new run.
    """
    from cl import checkpoint
    from cl.errors import ConfigError
    from cl.grid import _pid_alive

    runs = client.search_runs([experiment_id], f"tags.config_hash = '{config_hash}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        return None
    run = runs[0]
    tags, status = run.data.tags, run.info.status
    allowed = {"RUNNING", "KILLED"} | ({"FAILED"} if include_failed else set())
    token = tags.get(checkpoint.TOKEN_TAG)
    if status not in allowed or not token:
        return None
    pid = int(tags.get(RUNNER_PID_TAG, "0") or 0)
    if status == "RUNNING" and tags.get(RUNNER_HOST_TAG) == socket.gethostname() and pid != os.getpid() \
            and _pid_alive(pid):
        raise ConfigError(f"run {run.info.run_id} of this config is still running in process "
                          f"{tags[RUNNER_PID_TAG]} on this host; wait for it or stop it first")
    path = Path(tags.get(checkpoint.PATH_TAG) or checkpoint.checkpoint_path(config_hash, token))
    if not path.exists():
        return None
    try:
        header = checkpoint.inspect(path, config_hash=config_hash, token=token)
    except checkpoint.CheckpointRefused as exc:
        log.warning("not resuming run %s: %s", run.info.run_id, exc)
        client.set_tag(run.info.run_id, "checkpoint.refused", str(exc)[:5000])
        if status == "RUNNING":
            client.set_terminated(run.info.run_id, "KILLED")
        path.unlink(missing_ok=True)        # that run will never continue
        return None
    return checkpoint.ResumePlan(run_id=run.info.run_id, token=token, path=str(path),
                                 position=dict(header["position"]))


def reopen_run(client, run_id: str, tags: Mapping[str, str] | None = None) -> None:
    """Mark a dead run RUNNING again for the process that resumes it (same run id, same metric history)."""
    client.update_run(run_id, status="RUNNING")
    run = client.get_run(run_id)
    if "failure_reason" in run.data.tags:
        client.delete_tag(run_id, "failure_reason")
    MlflowRunLog(client, run_id).set_tags({**runner_tags(), **(tags or {})})


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


# --------------------------------------------------------------------------- Avalanche plugin


def _plugin_base():
    from avalanche.core import SupervisedPlugin

    return SupervisedPlugin


@runtime_checkable
class SecondPredictor(Protocol):
    """A plugin with a classifier of its own (e.g. nearest-mean-of-exemplars), scored beside the model's.

    The logger keeps one accuracy matrix per `prediction_name` and logs it as
    ``<name>/acc/exp_<j>`` and ``<name>/acc/avg_seen``; `predict` returns the predicted class ids
    of the current evaluation minibatch, or None when it cannot predict yet.
    """

    prediction_name: str

    def predict(self, strategy) -> Any: ...


class AccuracyTally:
    """The accuracy matrix R of one predictor, filled one evaluation pass at a time."""

    def __init__(self, test_sizes):
        self.test_sizes = np.asarray(test_sizes, dtype=float)
        n = len(self.test_sizes)
        self.R = np.full((n, n), np.nan)
        self._correct = np.zeros(n)
        self._seen = np.zeros(n)

    def reset(self) -> None:
        self._correct[:] = 0
        self._seen[:] = 0

    def add(self, j: int, pred, y) -> None:
        self._correct[j] += float((pred == y).sum())
        self._seen[j] += len(y)

    def close_row(self, t: int, prefix: str) -> dict[str, float]:
        """Write row t of R from this pass; return it as metrics (with the seen-average)."""
        evaluated = self._seen > 0
        if not evaluated.any():
            return {}
        self.R[t, evaluated] = self._correct[evaluated] / self._seen[evaluated]
        row = {f"{prefix}acc/exp_{j}": float(self.R[t, j]) for j in np.flatnonzero(evaluated)}
        seen = self.R[t, : t + 1]
        if not np.isnan(seen).any():
            row[f"{prefix}acc/avg_seen"] = float(np.average(seen, weights=self.test_sizes[: t + 1]))
        return row


def make_logger_plugin(runlog: RunLog, *, test_sizes, classes_per_experience, task_aware: bool = False):
    """An Avalanche plugin that records the accuracy matrix and logs it per experience.

    Accuracy of test experience j is computed from the model's outputs on it during
    ``strategy.eval``; with ``task_aware`` (task-incremental scenarios) the prediction is
    restricted to that experience's classes (single-head model, task-aware inference).
    Plugins that are `SecondPredictor`s get a matrix of their own (`extra[name].R`). Per class, the
    same evaluations fill `class_R[t, c]` (accuracy on class c after experience t), with
    `class_test_counts`: what rare-class accuracy is computed from.
    """
    base = _plugin_base()

    class MLflowLoggerPlugin(base):  # type: ignore[misc, valid-type]
        def __init__(self):
            super().__init__()
            self.tally = AccuracyTally(test_sizes)
            self.extra: dict[str, AccuracyTally] = {}
            self.trained = 0
            self.epochs = 0
            self.epoch_loss = math.nan       # mean training loss of the experience's latest epoch
            self.train_seconds = 0.0
            self._t0: float | None = None
            self._class_mask: dict[int, Any] = {}
            n_classes = 1 + max(c for classes in classes_per_experience for c in classes)
            self._class_correct = np.zeros(n_classes)
            self._class_seen = np.zeros(n_classes)
            # C[t, c]: accuracy on class c's test samples after training experience t (NaN: not evaluated)
            self.class_R = np.full((len(test_sizes), n_classes), np.nan)
            self.class_test_counts = np.zeros(n_classes)

        @property
        def R(self) -> np.ndarray:
            return self.tally.R

        # ---- training
        # An experience's time runs from its start to the end of the train() call (or the next
        # experience's start), so work other plugins do after it (herding, FPF) is included.
        def before_training_exp(self, strategy, **kwargs):
            self._close_experience_timer()
            self._t0 = time.perf_counter()
            self.epoch_loss = math.nan

        def before_training_epoch(self, strategy, **kwargs):
            self._loss_sum, self._loss_n = 0.0, 0

        def after_training_iteration(self, strategy, **kwargs):
            self._loss_sum += float(strategy.loss.detach())
            self._loss_n += 1

        def after_training_epoch(self, strategy, **kwargs):
            if self._loss_n:
                self.epoch_loss = self._loss_sum / self._loss_n
                runlog.log_metrics({"train/loss": self.epoch_loss}, step=self.epochs)
            self.epochs += 1
            T, E = len(test_sizes), strategy.train_epochs
            runlog.progress(self.epochs, T * E,
                            f"experience {self.trained + 1}/{T}, epoch {strategy.clock.train_exp_epochs + 1}/{E}")

        def after_training_exp(self, strategy, **kwargs):
            self.trained += 1

        def after_training(self, strategy, **kwargs):
            self._close_experience_timer()

        def _close_experience_timer(self):
            if self._t0 is None:
                return
            seconds = time.perf_counter() - self._t0
            self._t0 = None
            self.train_seconds += seconds
            runlog.log_metrics({"time/train_exp_s": seconds}, step=self.trained - 1)

        # ---- evaluation
        def before_eval(self, strategy, **kwargs):
            self.tally.reset()
            self._class_correct[:] = 0
            self._class_seen[:] = 0
            for tally in self.extra.values():
                tally.reset()

        def after_eval_iteration(self, strategy, **kwargs):
            j = strategy.experience.current_experience
            logits = strategy.mb_output.detach()
            if task_aware:
                logits = logits + self._mask(j, logits)
            pred, y = logits.argmax(dim=1).cpu().numpy(), strategy.mb_y.cpu().numpy()
            self.tally.add(j, pred, y)
            np.add.at(self._class_correct, y, pred == y)
            np.add.at(self._class_seen, y, 1)
            for plugin in strategy.plugins:
                if isinstance(plugin, SecondPredictor):
                    pred = plugin.predict(strategy)
                    if pred is not None:
                        tally = self.extra.setdefault(plugin.prediction_name, AccuracyTally(test_sizes))
                        tally.add(j, pred.to(strategy.mb_y.device), strategy.mb_y)

        def after_eval(self, strategy, **kwargs):
            if self.trained == 0:
                return  # an evaluation before any training is not a row of R
            t = self.trained - 1
            seen = self._class_seen > 0
            self.class_R[t, seen] = self._class_correct[seen] / self._class_seen[seen]
            self.class_test_counts = np.maximum(self.class_test_counts, self._class_seen)
            row = self.tally.close_row(t, "")
            for name, tally in self.extra.items():
                row.update(tally.close_row(t, f"{name}/"))
            runlog.log_metrics(row, step=t)

        # ---- checkpoints (cl.checkpoint.Resumable): the matrices so far and the counters
        def checkpoint_state(self, ctx):
            import torch

            return {"R": torch.from_numpy(self.tally.R.copy()),
                    "extra": {name: torch.from_numpy(t.R.copy()) for name, t in self.extra.items()},
                    "class_R": torch.from_numpy(self.class_R.copy()),
                    "class_test_counts": torch.from_numpy(self.class_test_counts.copy()),
                    "trained": self.trained, "epochs": self.epochs, "train_seconds": self.train_seconds}

        def restore_checkpoint_state(self, state, ctx):
            self.tally.R[:] = state["R"].numpy()
            for name, R in state["extra"].items():
                self.extra.setdefault(name, AccuracyTally(test_sizes)).R[:] = R.numpy()
            self.class_R[:] = state["class_R"].numpy()
            self.class_test_counts = state["class_test_counts"].numpy().copy()
            self.trained, self.epochs = int(state["trained"]), int(state["epochs"])
            self.train_seconds = float(state["train_seconds"])

        def _mask(self, j, logits):
            import torch

            if j not in self._class_mask:
                mask = torch.full((logits.shape[1],), -math.inf)
                mask[list(classes_per_experience[j])] = 0.0
                self._class_mask[j] = mask
            return self._class_mask[j].to(logits.device)

    return MLflowLoggerPlugin()


def make_finite_loss_guard():
    """A plugin that stops training with `NonFiniteLossError` when the loss is NaN or infinite."""
    from cl.errors import NonFiniteLossError

    class FiniteLossGuard(_plugin_base()):  # type: ignore[misc]
        def checkpoint_state(self, ctx):   # keeps nothing between experiences
            return {}

        def restore_checkpoint_state(self, state, ctx):
            pass

        def before_backward(self, strategy, **kwargs):
            loss = strategy.loss
            if not bool(loss.detach().isfinite().all()):
                clock = strategy.clock
                raise NonFiniteLossError(
                    f"loss became {float(loss.detach().mean())} in experience "
                    f"{clock.train_exp_counter}, epoch {clock.train_exp_epochs}, "
                    f"iteration {clock.train_epoch_iterations}; lower train.lr or check the inputs")

    return FiniteLossGuard()


# --------------------------------------------------------------------------- provenance


_PACKAGES = ("clsuite", "torch", "torchvision", "avalanche-lib", "mlflow", "numpy", "scikit-learn", "pydantic")


@functools.lru_cache(maxsize=1)
def code_version() -> dict[str, Any]:
    """Git commit of the clsuite source in use and whether it has uncommitted changes."""
    root = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    sha = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if sha else None
    return {"git_sha": sha or "unknown", "git_dirty": bool(status) if sha else None, "source": str(root)}


def provenance(seeds: Mapping[str, int]) -> dict[str, Any]:
    versions = {}
    for pkg in _PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {
        **code_version(),
        "seeds": dict(seeds),
        "versions": versions,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "argv": sys.argv,
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def provenance_tags(prov: Mapping[str, Any]) -> dict[str, str]:
    """The headline provenance as MLflow tags (MLflow's own names where they exist)."""
    return {
        "mlflow.source.git.commit": str(prov["git_sha"]),
        "git_dirty": str(prov["git_dirty"]),
    }


def to_json_bytes(data: Any) -> bytes:
    return json.dumps(data, indent=2, sort_keys=True, default=str).encode()
