"""Which run a relaunch continues: the newest unfinished run of a cell that left a valid checkpoint, unless a live
process still runs it; and reopening it for the process that resumes it (same run id, same metric history)."""
from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Mapping

from cl.tracking import MlflowRunLog

log = logging.getLogger(__name__)


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
    from cl import checkpoint, checkpoint_file
    from cl.errors import ConfigError

    runs = client.search_runs([experiment_id], f"tags.config_hash = '{config_hash}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        return None
    run = runs[0]
    tags, status = run.data.tags, run.info.status
    allowed = {"RUNNING", "KILLED"} | ({"FAILED"} if include_failed else set())
    token = tags.get(checkpoint_file.TOKEN_TAG)
    if status not in allowed or not token:
        return None
    pid = int(tags.get(RUNNER_PID_TAG, "0") or 0)
    if status == "RUNNING" and tags.get(RUNNER_HOST_TAG) == socket.gethostname() and pid != os.getpid() \
            and pid_alive(pid):
        raise ConfigError(f"run {run.info.run_id} of this config is still running in process "
                          f"{tags[RUNNER_PID_TAG]} on this host; wait for it or stop it first")
    path = Path(tags.get(checkpoint_file.PATH_TAG) or checkpoint_file.checkpoint_path(config_hash, token))
    if not path.exists():
        return None
    try:
        header = checkpoint_file.inspect(path, config_hash=config_hash, token=token)
    except checkpoint_file.CheckpointRefused as exc:
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
