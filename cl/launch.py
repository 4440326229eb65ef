"""Launching a grid's cells: serially, in worker processes or on Ray, each in its own MLflow run.

Launching skips every cell whose `config_hash` already has a FINISHED run in the
experiment (and FAILED ones unless ``retry_failed``), so an interrupted grid resumes where it
stopped. A cell whose run a dead launcher left unfinished *with a checkpoint* continues from it in
that same MLflow run (`cl.resume.find_resume_plan`); without one it reruns from scratch in a new
run. One parent run per launch; one child run per cell. Workers never write to MLflow:
they forward their logging to the launcher (see `cl.tracking.QueueRunLog`).
"""
from __future__ import annotations

import logging
import os
import queue as queue_module
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Literal, Mapping, Protocol

from cl.config import RunConfig
from cl.errors import ConfigError
from cl.grid import Cell, GridSpec
from cl.resume import pid_alive

if TYPE_CHECKING:
    from cl.devices import CellResources

log = logging.getLogger(__name__)


class Reporter(Protocol):
    """Receives launch events; the CLI draws progress bars from them. Library code never prints."""

    def launch_started(self, total: int, skipped: int) -> None: ...
    def cell_started(self, cell: Cell) -> None: ...
    def cell_progress(self, cell: Cell, done: int, total: int, what: str) -> None: ...
    def cell_finished(self, cell: Cell, status: str, reason: str | None) -> None: ...


class SilentReporter:
    def launch_started(self, total, skipped): pass
    def cell_started(self, cell): pass
    def cell_progress(self, cell, done, total, what): pass
    def cell_finished(self, cell, status, reason): pass


@dataclass
class LaunchSummary:
    grid: str
    experiment: str
    total: int
    skipped_finished: int = 0
    skipped_failed: int = 0
    finished: int = 0
    resumed: int = 0                      # cells continued from a checkpoint
    failed: list[tuple[str, int, str]] = field(default_factory=list)   # (label, seed, reason)
    warnings: list[tuple[str, int, str]] = field(default_factory=list)  # finished, but flagged (cl.health)
    parent_run_id: str | None = None

    @property
    def ok(self) -> bool:
        return not self.failed and not self.skipped_failed


@dataclass(frozen=True)
class CellState:
    """What the store already holds for one config hash."""

    finished: bool = False
    failed_reason: str | None = None


def cell_states(client, experiment_id: str) -> dict[str, CellState]:
    """Latest known outcome per config hash among the experiment's runs."""
    from cl.tracking import search_all_runs

    states: dict[str, CellState] = {}
    for run in search_all_runs(client, experiment_id, "tags.config_hash != ''"):
        key = run.data.tags.get("config_hash")
        status = run.info.status
        current = states.get(key, CellState())
        if status == "FINISHED":
            states[key] = CellState(finished=True)
        elif status == "FAILED" and not current.finished:
            states[key] = CellState(failed_reason=run.data.tags.get("failure_reason", "unknown"))
    return states


def close_orphans(client, experiment_id: str, grid_name: str) -> int:
    """Mark runs of this grid left RUNNING by a launcher that died as KILLED.

    Raises `ConfigError` if a launcher of the same grid is still alive on this host, because
    two launchers would run the same cells twice.
    """
    from cl.tracking import search_all_runs

    closed = 0
    parents = search_all_runs(client, experiment_id,
                          f"tags.grid = '{grid_name}' and tags.kind = 'launch' and attributes.status = 'RUNNING'")
    for parent in parents:
        tags = parent.data.tags
        host, pid = tags.get("launcher.host"), int(tags.get("launcher.pid", "0") or 0)
        if host == socket.gethostname() and pid_alive(pid):
            raise ConfigError(f"grid {grid_name!r} is already being launched by process {pid} "
                              "on this host; wait for it or stop it first")
        if host != socket.gethostname():
            log.warning("launch %s of grid %s on host %s is still RUNNING; treating it as dead",
                        parent.info.run_id, grid_name, host)
        for child in search_all_runs(client, experiment_id,
                                 f"tags.`mlflow.parentRunId` = '{parent.info.run_id}' and attributes.status = 'RUNNING'"):
            client.set_tag(child.info.run_id, "failure_reason", "launcher died before the run ended")
            client.set_terminated(child.info.run_id, "KILLED")
            closed += 1
        client.set_terminated(parent.info.run_id, "KILLED")
    return closed


def launch(
    spec: GridSpec,
    cells: list[Cell],
    *,
    tracking_uri: str | None = None,
    workers: int = 1,
    backend: Literal["local", "ray"] = "local",
    retry_failed: bool = False,
    reporter: Reporter | None = None,
    grid_yaml: str | None = None,
    resources: "CellResources | None" = None,
) -> LaunchSummary:
    """Run every cell not yet FINISHED; returns what happened. Never raises for a failed cell.

    `resources` is what each cell asks a Ray cluster for (GPUs, CPUs); Ray backend only.
    Raises `ConfigError` before opening any run if a cell's data is missing.
    """
    from cl.runner import open_run
    from cl.tracking import PARENT_TAG, MlflowRunLog, client_for, experiment_id, resolve_tracking_uri
    from cl.resume import find_resume_plan, reopen_run

    reporter = reporter or SilentReporter()
    resources = _check_resources(backend, resources)
    preflight(cells)
    uri = resolve_tracking_uri(tracking_uri)
    client = client_for(uri)
    exp_id = experiment_id(client, spec.experiment_name)
    close_orphans(client, exp_id, spec.name)

    summary = LaunchSummary(grid=spec.name, experiment=spec.experiment_name, total=len(cells))
    states = cell_states(client, exp_id)
    todo: list[Cell] = []
    for cell in cells:
        state = states.get(cell.config_hash, CellState())
        if state.finished:
            summary.skipped_finished += 1
        elif state.failed_reason is not None and not retry_failed:
            summary.skipped_failed += 1
            summary.failed.append((cell.label, cell.seed, f"(earlier run) {state.failed_reason}"))
        else:
            todo.append(cell)
    reporter.launch_started(len(todo), len(cells) - len(todo))
    if not todo:
        return summary
    plans = {cell.config_hash: find_resume_plan(client, exp_id, cell.config_hash, include_failed=retry_failed)
             for cell in todo}
    plans = {key: plan for key, plan in plans.items() if plan is not None}
    summary.resumed = len(plans)

    parent = client.create_run(exp_id, tags={
        "grid": spec.name, "kind": "launch", "mlflow.runName": f"{spec.name} launch",
        "launcher.host": socket.gethostname(), "launcher.pid": str(os.getpid()),
        "backend": backend, "workers": str(workers), "cells.todo": str(len(todo)),
        "cells.total": str(len(cells)),
    })
    summary.parent_run_id = parent.info.run_id
    parent_log = MlflowRunLog(client, parent.info.run_id)
    if grid_yaml is not None:
        parent_log.log_artifact("grid.yaml", grid_yaml.encode())

    by_key = {cell.config_hash: cell for cell in todo}
    open_runs: dict[str, str] = {}

    def start(key: str) -> MlflowRunLog:
        cell = by_key[key]
        plan = plans.get(key)
        if plan is not None:   # the dead launch's run continues, now under this launch
            run_id = plan.run_id
            reopen_run(client, run_id, {PARENT_TAG: parent.info.run_id})
        else:
            run_id = open_run(client, cell.config, parent_run_id=parent.info.run_id, tags={
                "grid": spec.name, "kind": "cell", "cell": cell.label,
            }, run_name=f"{cell.label or 'base'} s{cell.seed}")
        open_runs[key] = run_id
        reporter.cell_started(cell)
        return MlflowRunLog(client, run_id, lambda d, t, w, c=cell: reporter.cell_progress(c, d, t, w))

    def finish(key: str, status: str, reason: str | None) -> None:
        cell = by_key[key]
        run_id = open_runs.pop(key, None)
        if run_id is None:  # died before it could start: still leave a FAILED record
            run_id = start(key).run_id
            open_runs.pop(key)
        if reason and status != "FINISHED":
            client.set_tag(run_id, "failure_reason", reason[:5000])
        client.set_terminated(run_id, status)
        if status == "FINISHED":
            summary.finished += 1
            warning = _health_warning(client, run_id)
            if warning:
                summary.warnings.append((cell.label, cell.seed, warning))
        else:
            summary.failed.append((cell.label, cell.seed, reason or status))
        reporter.cell_finished(cell, status, reason)

    try:
        if backend == "local" and workers <= 1:
            _run_serial(todo, start, finish, plans)
        else:
            executor = _make_executor(backend, workers, resources)
            try:
                _run_parallel(executor, todo, start, finish, plans)
            finally:
                executor.shutdown()
    except BaseException:
        for key, run_id in list(open_runs.items()):
            client.set_tag(run_id, "failure_reason", "launch interrupted")
            client.set_terminated(run_id, "KILLED")
        client.set_terminated(parent.info.run_id, "KILLED")
        raise
    parent_log.log_metrics({"cells/finished": summary.finished, "cells/failed": len(summary.failed)})
    client.set_terminated(parent.info.run_id, "FINISHED" if not summary.failed else "FAILED")
    return summary


def preflight(cells: Iterable[Cell]) -> None:
    """Check every cell's machine-dependent inputs (data on disk) before any run is opened."""
    problems: dict[str, None] = {}
    for cell in cells:
        try:
            cell.config.preflight()
        except ConfigError as exc:
            problems.update(dict.fromkeys(exc.problems))
    if problems:
        raise ConfigError(list(problems))


def _run_serial(todo: Iterable[Cell], start, finish, plans: Mapping[str, Any]) -> None:
    from cl.runner import execute

    for cell in todo:
        runlog = start(cell.config_hash)
        result = execute(cell.config, runlog, resume=plans.get(cell.config_hash))
        finish(cell.config_hash, result.status, result.reason)


# ---- parallel backends: a worker executes a cell and streams its log calls through a queue.


def _run_parallel(executor: "_Executor", todo: list[Cell], start, finish, plans: Mapping[str, Any]) -> None:
    """Dispatch cells and replay their log calls until every cell has ended.

    A cell ends with its ``__end__`` message. A worker that dies without sending it (killed,
    segfault, broken pool) fails its cell once a grace period shows no message is coming.
    """
    logs: dict[str, Any] = {}
    ended: set[str] = set()
    pending = {executor.submit(cell, plans.get(cell.config_hash)): cell.config_hash for cell in todo}
    done_since: dict[Any, float] = {}
    while pending:
        for key, method, args in executor.drain(timeout=0.2):
            if method == "__start__":
                logs[key] = start(key)
            elif method == "__end__":
                logs.pop(key, None)
                ended.add(key)
                finish(key, *args)
            elif key in logs:
                logs[key].apply(method, args)
        for handle, key in list(pending.items()):
            outcome = executor.crashed(handle)
            if outcome is _STILL_RUNNING:
                continue
            if key in ended:
                del pending[handle]
                continue
            first_seen = done_since.setdefault(handle, time.monotonic())
            if time.monotonic() - first_seen > _END_MESSAGE_GRACE_S:
                del pending[handle]
                logs.pop(key, None)
                ended.add(key)
                finish(key, "FAILED", f"worker ended without reporting: {outcome or 'no message'}")


_END_MESSAGE_GRACE_S = 10.0
_STILL_RUNNING = object()


class _Executor(Protocol):
    def submit(self, cell: Cell, resume: Any = None) -> Any: ...
    def drain(self, timeout: float) -> list[tuple[str, str, tuple]]: ...
    def crashed(self, handle: Any) -> Any: ...
    def shutdown(self) -> None: ...


def _make_executor(backend: str, workers: int, resources: "CellResources") -> _Executor:
    if backend == "ray":
        return _RayExecutor(workers, resources)
    return _ProcessExecutor(workers)


def _check_resources(backend: str, resources: "CellResources | None") -> "CellResources":
    from cl.devices import CellResources

    resources = resources or CellResources()
    if backend != "ray" and not resources.is_default:
        raise ConfigError("--gpus-per-cell/--cpus-per-cell: resource requests need --backend ray "
                          "(local workers use the machine as it is; set train.device instead)")
    return resources


def _health_warning(client, run_id: str) -> str | None:
    """The `health.warning` tag a finished cell left (a collapsed network), if any."""
    from cl.health import WARNING_TAG

    return client.get_run(run_id).data.tags.get(WARNING_TAG)


class _ProcessExecutor:
    """A spawn-based process pool; each worker gets a share of the CPU threads."""

    def __init__(self, workers: int):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        context = multiprocessing.get_context("spawn")
        self.queue = context.Queue()
        threads = max(1, (os.cpu_count() or 1) // workers)
        self.pool = ProcessPoolExecutor(max_workers=workers, mp_context=context,
                                        initializer=_init_worker, initargs=(self.queue, threads))

    def submit(self, cell: Cell, resume=None):
        return self.pool.submit(_work, cell.config.to_dict(), cell.config_hash, resume=resume)

    def drain(self, timeout: float):
        items = []
        try:
            items.append(self.queue.get(timeout=timeout))
            while True:
                items.append(self.queue.get_nowait())
        except queue_module.Empty:
            pass
        return items

    def crashed(self, future):
        if not future.done():
            return _STILL_RUNNING
        exc = future.exception()
        return None if exc is None else f"{type(exc).__name__}: {exc}"

    def shutdown(self):
        self.pool.shutdown(wait=True, cancel_futures=True)


_worker_queue = None


def _init_worker(q, threads: int) -> None:
    global _worker_queue
    _worker_queue = q
    _die_with_parent()
    import torch

    torch.set_num_threads(threads)


def _die_with_parent() -> None:
    """On Linux, have the kernel stop this worker when the launcher dies (even by SIGKILL).

    Otherwise a killed launcher leaves workers training cells whose results nobody records.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    PR_SET_PDEATHSIG = 1
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:  # no glibc (e.g. musl): workers then end after their current cell
        pass


def _work(config_dict: dict, key: str, q=None, resume=None) -> str:
    """Run one cell in a worker; every log call and the outcome travel through the queue. `resume`: the
    cell's `cl.checkpoint.ResumePlan`, if it continues from a checkpoint."""
    from cl.runner import execute
    from cl.tracking import QueueRunLog

    q = q if q is not None else _worker_queue
    q.put((key, "__start__", ()))
    runlog = QueueRunLog(q, key)
    runlog.set_tags({"worker.host": socket.gethostname(), "worker.pid": str(os.getpid()),
                     "worker.started_unix": f"{time.time():.3f}"})
    try:
        config = RunConfig.from_dict(config_dict)
        result = execute(config, runlog, resume=resume)
        status, reason = result.status, result.reason
    except BaseException as exc:  # noqa: BLE001 - report, then let the pool see it too
        q.put((key, "__end__", ("FAILED", f"{type(exc).__name__}: {exc}")))
        raise
    runlog.set_tags({"worker.ended_unix": f"{time.time():.3f}"})
    q.put((key, "__end__", (status, reason)))
    return status


class _RayExecutor:
    """The same protocol on Ray: tasks on a cluster (or a local `ray.init()`), a Ray queue actor."""

    def __init__(self, workers: int, resources: "CellResources"):
        import math

        try:
            import ray
            from ray.util.queue import Queue
        except ImportError as exc:
            raise ConfigError("--backend ray needs Ray: pip install 'clsuite[ray]'") from exc
        if not ray.is_initialized():   # a local cluster: room for `workers` cells at once (GPUs autodetected)
            local_cpus = math.ceil(max(workers, 1) * resources.cpus)
            ray.init(address=os.environ.get("RAY_ADDRESS"),
                     num_cpus=None if os.environ.get("RAY_ADDRESS") else local_cpus,
                     include_dashboard=False, log_to_driver=False)
        resources.check_cluster(ray.cluster_resources())
        self.ray = ray
        self.queue = Queue()
        self.remote = ray.remote(_work).options(**resources.ray_options())

    def submit(self, cell: Cell, resume=None):
        return self.remote.remote(cell.config.to_dict(), cell.config_hash, self.queue, resume)

    def drain(self, timeout: float):
        from ray.util.queue import Empty

        items = []
        try:
            items.append(self.queue.get(block=True, timeout=timeout))
            items.extend(self.queue.get_nowait_batch(self.queue.qsize()))
        except Empty:
            pass
        return items

    def crashed(self, ref):
        ready, _ = self.ray.wait([ref], timeout=0)
        if not ready:
            return _STILL_RUNNING
        try:
            self.ray.get(ref)
        except Exception as exc:  # noqa: BLE001
            return f"{type(exc).__name__}: {exc}"
        return None

    def shutdown(self):
        self.queue.shutdown()
