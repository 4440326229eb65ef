"""Crash and resume: a run SIGKILLed after experience 2 (or transfer epoch 1) continues in the same MLflow run
and ends exactly where an uninterrupted run ends; bad checkpoints are refused and the run starts over.

The crash is real: `clsuite run` / `clsuite grid launch` in a subprocess, killed by SIGKILL right after the
checkpoint named by ``CLSUITE_TEST_CRASH_AFTER_CHECKPOINT`` is written (`cl.checkpoint_file.maybe_crash`).
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from cl import checkpoint, checkpoint_file
from cl.config import RunConfig
from cl.tracking import NullRunLog

ROOT = Path(__file__).resolve().parents[1]
T = 4                     # experiences
CRASH_AT = "experiences_done=2"
DEADLINE_S = 600          # per subprocess: generous, the machine is shared

CL_CASES = {
    "replay": {"strategy": {"name": "replay", "mem_size": 40}},
    "memo": {"strategy": {"name": "memo", "mem_size": 40}},
    "fpf": {"strategy": {"name": "naive"}, "plugins": [{"name": "fpf", "iterations": 5, "mem_size": 40}]},
}


def cl_config(case: str, experiment: str) -> dict:
    return {"experiment": experiment,
            "scenario": {"name": "split_digits", "classes_per_experience": [3, 3, 2, 2]},
            "model": {"name": "mlp", "hidden": [32]},
            "train": {"epochs": 2, "lr": 0.05, "momentum": 0.9, "batch_size": 32}, "seed": 3, **CL_CASES[case]}


def transfer_config(experiment: str) -> dict:
    return {"experiment": experiment, "seed": 1,
            "transfer": {"name": "mobiletl", "source": "digits", "target": "digits", "image_size": 16,
                         "source_samples_per_class": 20, "target_samples_per_class": 20, "pretrain_epochs": 1,
                         "test_samples": 100, "num_trainable_blocks": 2},
            "train": {"epochs": 3, "lr": 0.05, "momentum": 0.9, "batch_size": 32}}


# every in-process run on one thread, as the subprocesses (OMP_NUM_THREADS=1): a CPU matmul's sums depend on
# the thread count, so runs compared bit for bit must share it whatever the caller's environment
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def env(tmp_path, monkeypatch):
    """The cache (checkpoints) and store of this test, for this process and the subprocesses."""
    monkeypatch.setenv("CLSUITE_CACHE", str(tmp_path / "cache"))
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1", "CLSUITE_CACHE": str(tmp_path / "cache")}
    env.pop(checkpoint_file.CRASH_ENV, None)
    env.pop(checkpoint_file.ANY_CODE_ENV, None)
    return env


def clsuite(args: list[str], env: dict, crash_at: str | None = None) -> subprocess.CompletedProcess:
    run_env = dict(env)
    if crash_at:
        run_env[checkpoint_file.CRASH_ENV] = crash_at
    return subprocess.run([sys.executable, "-m", "cl.cli", *args], cwd=ROOT, env=run_env, capture_output=True,
                          text=True, timeout=DEADLINE_S)


def runs_of(uri: str, experiment: str):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], "tags.config_hash != ''")
    return client, runs


def history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


class Recorder(NullRunLog):
    def __init__(self):
        self.metrics: dict[str, list[tuple[int, float]]] = {}

    def log_metrics(self, metrics, step=None):
        for key, value in metrics.items():
            self.metrics.setdefault(key, []).append((step or 0, float(value)))


def uninterrupted(raw: dict) -> tuple[object, Recorder]:
    from cl.runner import execute

    from cl.transfer_run import single_thread

    recorder = Recorder()
    with single_thread():   # as the subprocesses (OMP_NUM_THREADS=1): a CPU matmul's sums depend on the split
        result = execute(RunConfig.from_dict(raw), recorder)
    assert result.ok, result.reason
    return result, recorder


def assert_one_resumed_run(uri: str, experiment: str, resumed_from: str):
    client, runs = runs_of(uri, experiment)
    assert len(runs) == 1, [(r.info.run_id, r.info.status) for r in runs]
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.tags[checkpoint_file.RESUMED_TAG] == resumed_from
    assert not Path(run.data.tags[checkpoint_file.PATH_TAG]).exists(), "a finished run keeps no checkpoint"
    return client, run


def crash(args: list[str], env: dict, crash_at: str, uri: str, experiment: str) -> str:
    killed = clsuite(args, env, crash_at)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    client, runs = runs_of(uri, experiment)
    assert [r.info.status for r in runs] == ["RUNNING"]
    assert Path(runs[0].data.tags[checkpoint_file.PATH_TAG]).is_file()
    return runs[0].info.run_id


def killed_and_resumed(raw: dict, tmp_path, env: dict, uri: str, at: str):
    """`clsuite run` of `raw`, SIGKILLed right after its checkpoint at `at`, then relaunched with ``--resume``: the
    relaunch must finish that same MLflow run. Returns (client, run id)."""
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    run_id = crash(["run", str(path), "--tracking-uri", uri], env, at, uri, raw["experiment"])
    resumed = clsuite(["run", str(path), "--tracking-uri", uri, "--resume"], env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    client, run = assert_one_resumed_run(uri, raw["experiment"], at)
    assert run.info.run_id == run_id
    return client, run_id


@pytest.mark.parametrize("case", ["memo", "fpf"])
def test_run_killed_after_experience_2_resumes_into_the_same_run_with_the_same_result(case, env, tmp_path, fresh_store):
    raw = cl_config(case, f"resume-{case}")
    client, run_id = killed_and_resumed(raw, tmp_path, env, fresh_store, CRASH_AT)

    reference, recorder = uninterrupted(raw)
    R = np.full((T, T), np.nan)
    for j in range(T):
        steps = history(client, run_id, f"acc/exp_{j}")
        assert [s for s, _ in steps] == list(range(T)), "each row logged once, at its step"
        for step, value in steps:
            R[step, j] = value
    # bit-identical: every op on this path is deterministic on CPU with one thread
    assert np.array_equal(R, np.array(reference.accuracy_matrix), equal_nan=True)
    assert history(client, run_id, "train/loss") == sorted(recorder.metrics["train/loss"])
    final = client.get_run(run_id).data.metrics
    assert final["final/avg_acc"] == reference.metrics["final/avg_acc"]
    assert final["cost/train_flops"] == reference.metrics["cost/train_flops"]


def test_grid_relaunch_continues_the_cell_a_killed_launcher_left(env, tmp_path, fresh_store):
    raw = cl_config("replay", "resume-grid")
    base = {k: v for k, v in raw.items() if k not in ("experiment", "seed")}
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"name": "resume-grid", "base": base, "seeds": [raw["seed"]]}))
    run_id = crash(["grid", "launch", str(grid), "--tracking-uri", fresh_store, "--no-report"], env, CRASH_AT,
                   fresh_store, raw["experiment"])

    relaunch = clsuite(["grid", "launch", str(grid), "--tracking-uri", fresh_store, "--no-report"], env)
    assert relaunch.returncode == 0, relaunch.stderr[-3000:]
    assert "1 resumed from checkpoints" in relaunch.stdout
    client, run = assert_one_resumed_run(fresh_store, raw["experiment"], CRASH_AT)
    assert run.info.run_id == run_id
    launches = client.search_runs([run.info.experiment_id], "tags.kind = 'launch'",
                                  order_by=["attributes.start_time DESC"])
    assert [r.info.status for r in launches] == ["FINISHED", "KILLED"]
    assert run.data.tags["mlflow.parentRunId"] == launches[0].info.run_id

    reference, recorder = uninterrupted(raw)
    assert client.get_run(run_id).data.metrics["final/avg_acc"] == reference.metrics["final/avg_acc"]
    assert history(client, run_id, "train/loss") == sorted(recorder.metrics["train/loss"])
    for j in range(T):
        assert [v for _, v in history(client, run_id, f"acc/exp_{j}")] == [row[j] for row in reference.accuracy_matrix]


def test_transfer_killed_after_epoch_1_resumes_with_the_same_result(env, tmp_path, fresh_store):
    raw = transfer_config("resume-transfer")
    client, run_id = killed_and_resumed(raw, tmp_path, env, fresh_store, "step=1")

    reference, recorder = uninterrupted(raw)
    assert history(client, run_id, "train/loss") == sorted(recorder.metrics["train/loss"])
    assert client.get_run(run_id).data.metrics["final/acc"] == reference.metrics["final/acc"]


# --------------------------------------------------------------------------- refusals, in process


class _Stop(BaseException):
    """Stands in for the process being stopped (like KeyboardInterrupt): the run is closed KILLED and
    keeps its checkpoint."""


@contextlib.contextmanager
def _stopped_after_experience_2(monkeypatch):
    """The run inside stops (`_Stop`) right after experience 2's checkpoint is written."""
    def stop(position):
        if position == {"experiences_done": 2}:
            raise _Stop
    original = checkpoint.maybe_crash
    monkeypatch.setattr(checkpoint, "maybe_crash", stop)
    with pytest.raises(_Stop):
        yield
    monkeypatch.setattr(checkpoint, "maybe_crash", original)


def _strategy_config(name: str) -> dict:
    """`name` on the tiny stream: a small buffer, and k-FPF's k calls within its iterations."""
    from cl.registry import STRATEGIES

    raw = {**cl_config("replay", "unused"), "strategy": {"name": name}}
    if "mem_size" in STRATEGIES.get(name).params.model_fields:
        raw["strategy"]["mem_size"] = 40
    if name.startswith("kfpf"):
        raw["strategy"].update(k=3, iterations=5)
    return raw


def _stopped_run(monkeypatch, raw: dict, uri: str) -> tuple[str, Path]:
    from cl.runner import run

    with _stopped_after_experience_2(monkeypatch):
        run(RunConfig.from_dict(raw), tracking_uri=uri)
    client, runs = runs_of(uri, raw["experiment"])
    assert [r.info.status for r in runs] == ["KILLED"]
    return runs[0].info.run_id, Path(runs[0].data.tags[checkpoint_file.PATH_TAG])


def _resume(raw: dict, uri: str):
    from cl.runner import run

    return run(RunConfig.from_dict(raw), tracking_uri=uri, resume=True)


def test_an_interrupted_run_resumes_in_process(env, fresh_store, monkeypatch):
    raw = cl_config("replay", "resume-inproc")
    run_id, path = _stopped_run(monkeypatch, raw, fresh_store)
    result = _resume(raw, fresh_store)
    assert result.ok and result.run_id == run_id
    assert result.accuracy_matrix == uninterrupted(raw)[0].accuracy_matrix


def _refused(raw, uri, run_id, caplog, expected: str):
    import logging

    with caplog.at_level(logging.WARNING, logger="cl.tracking"):
        result = _resume(raw, uri)
    assert result.ok and result.run_id != run_id, "a refused checkpoint starts a new run"
    assert expected in caplog.text
    client, runs = runs_of(uri, raw["experiment"])
    old = client.get_run(run_id)
    assert old.info.status == "KILLED" and expected in old.data.tags["checkpoint.refused"]
    new = client.get_run(result.run_id)
    assert checkpoint_file.RESUMED_TAG not in new.data.tags
    assert result.accuracy_matrix == uninterrupted(raw)[0].accuracy_matrix   # from scratch, nothing mixed in


def test_a_corrupted_checkpoint_is_refused_and_the_run_restarts_from_scratch(env, fresh_store, monkeypatch, caplog):
    raw = cl_config("replay", "resume-corrupt")
    run_id, path = _stopped_run(monkeypatch, raw, fresh_store)
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF                                   # one flipped byte in the payload
    path.write_bytes(bytes(data))
    _refused(raw, fresh_store, run_id, caplog, "digest mismatch")


def test_a_truncated_checkpoint_is_refused(env, fresh_store, monkeypatch, caplog):
    raw = cl_config("replay", "resume-truncated")
    run_id, path = _stopped_run(monkeypatch, raw, fresh_store)
    path.write_bytes(path.read_bytes()[:30])
    _refused(raw, fresh_store, run_id, caplog, "corrupted")


def test_another_format_version_is_refused(env, fresh_store, monkeypatch, caplog):
    raw = cl_config("replay", "resume-version")
    run_id, path = _stopped_run(monkeypatch, raw, fresh_store)
    monkeypatch.setattr(checkpoint_file, "FORMAT_VERSION", checkpoint_file.FORMAT_VERSION + 1)
    _refused(raw, fresh_store, run_id, caplog, "checkpoint format 1")


def test_another_code_version_is_refused_unless_allowed(env, fresh_store, monkeypatch, caplog):
    real = checkpoint_file.code_identity

    def other_code():
        return {"code": "0" * 40, "git_dirty": False}

    raw = cl_config("replay", "resume-code-refused")
    run_id, path = _stopped_run(monkeypatch, raw, fresh_store)
    monkeypatch.setattr(checkpoint_file, "code_identity", other_code)
    _refused(raw, fresh_store, run_id, caplog, "written by code")

    monkeypatch.setattr(checkpoint_file, "code_identity", real)
    raw = cl_config("replay", "resume-code")
    run_id, path = _stopped_run(monkeypatch, raw, fresh_store)
    monkeypatch.setattr(checkpoint_file, "code_identity", other_code)
    monkeypatch.setenv(checkpoint_file.ANY_CODE_ENV, "1")
    result = _resume(raw, fresh_store)
    assert result.ok and result.run_id == run_id
    client, _ = runs_of(fresh_store, raw["experiment"])
    assert client.get_run(run_id).data.tags["resumed_code"] == real()["code"]


def test_a_fresh_run_never_takes_another_runs_checkpoint(env, fresh_store, monkeypatch):
    """Same cell, other store, same cache: the checkpoint belongs to another run (its token) — neither taken
    nor overwritten."""
    raw = cl_config("replay", "resume-token")
    run_id, path = _stopped_run(monkeypatch, raw, fresh_store)
    header = checkpoint_file.inspect(path, config_hash=RunConfig.from_dict(raw).config_hash, token=None)
    with pytest.raises(checkpoint_file.CheckpointRefused, match="another run"):
        checkpoint_file.inspect(path, config_hash=header["config_hash"], token="someone-else")
    result = _resume(raw, f"sqlite:///{path.parent / 'other.db'}")
    assert result.ok and checkpoint_file.RESUMED_TAG not in runs_of(
        f"sqlite:///{path.parent / 'other.db'}", raw["experiment"])[0].get_run(result.run_id).data.tags
    assert checkpoint_file.inspect(path, config_hash=header["config_hash"], token=header["token"])


def test_checkpoints_hold_only_tensors_and_plain_data(tmp_path):
    import torch

    checkpoint_file.check_plain({"a": [1, 2.0, None, "x", {"t": torch.zeros(2)}]})
    with pytest.raises(TypeError, match=r"checkpoint\.a\[0\]: a object"):
        checkpoint_file.check_plain({"a": [object()]})
    path = tmp_path / "c.ckpt"
    checkpoint.write(path, {"x": torch.arange(3)}, {"config_hash": "h", "token": "t", "position": {"step": 1}})
    header, payload = checkpoint.read(path, config_hash="h", token="t")
    assert header["position"] == {"step": 1} and payload["x"].tolist() == [0, 1, 2]
    assert not list(tmp_path.glob("*.tmp")), "the temporary file is renamed, not left behind"


def test_rng_states_round_trip():
    import random

    import torch

    state = checkpoint_file.capture_rng()
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    checkpoint_file.restore_rng(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a


# --------------------------------------------------------------------------- every checkpointable strategy


def _strategy_names():
    from cl.registry import STRATEGIES

    return STRATEGIES.names()


RESUMABLE = {"naive", "replay", "ewc", "lwf", "memo", "der", "kfpf_ce", "kfpf_kd"}


@pytest.mark.parametrize("name", sorted(RESUMABLE))
def test_stopped_and_resumed_in_process_equals_uninterrupted(name, env, monkeypatch):
    """Every strategy with checkpoint hooks: stopped after experience 2, resumed from its checkpoint in a fresh
    strategy, the same accuracy matrix, loss curve and FLOPs, bit for bit."""
    from cl.runner import execute

    raw = _strategy_config(name)
    cfg = RunConfig.from_dict(raw)
    first = Recorder()
    first.tags = {}
    first.set_tags = first.tags.update
    with _stopped_after_experience_2(monkeypatch):
        execute(cfg, first)
    assert "checkpoint.off" not in first.tags
    path = Path(first.tags[checkpoint_file.PATH_TAG])
    plan = checkpoint.ResumePlan(run_id="-", token=first.tags[checkpoint_file.TOKEN_TAG], path=str(path),
                                 position={"experiences_done": 2})
    second = Recorder()
    from cl.transfer_run import single_thread

    with single_thread():
        resumed = execute(cfg, second, resume=plan)
    assert resumed.ok, resumed.reason
    reference, recorder = uninterrupted(raw)
    assert np.array_equal(np.array(resumed.accuracy_matrix), np.array(reference.accuracy_matrix), equal_nan=True)
    assert first.metrics["train/loss"] + second.metrics["train/loss"] == recorder.metrics["train/loss"]
    assert resumed.metrics["cost/train_flops"] == reference.metrics["cost/train_flops"]
    fpf = {k: v for k, v in recorder.metrics.items() if k.startswith("fpf/")}
    assert {k: v for k, v in second.metrics.items() if k.startswith("fpf/")} == fpf     # k-FPF: every call's record
    assert not name.startswith("kfpf") or len(fpf["fpf/call_iteration"]) == 3
    assert not path.exists()


def test_strategies_without_hooks_run_without_checkpoints_and_say_so(env):
    from cl.runner import execute

    missing = sorted(set(_strategy_names()) - RESUMABLE)
    assert missing, "every strategy is checkpointable: drop this test"
    name = "gdumb" if "gdumb" in missing else missing[0]
    raw = _strategy_config(name)
    log = Recorder()
    log.tags = {}
    log.set_tags = log.tags.update
    assert execute(RunConfig.from_dict(raw), log).ok
    assert "no checkpoint hook" in log.tags["checkpoint.off"]
    assert checkpoint_file.PATH_TAG not in log.tags, "nothing was written"


def test_transfer_context_checkpoints_every_n_steps_and_resumes_state_and_rng(env):
    import torch

    from cl.transfer_run import TransferContext

    class Tags(NullRunLog):
        def __init__(self):
            self.tags = {}

        def set_tags(self, tags):
            self.tags.update(tags)

    log = Tags()
    ckpt = checkpoint.RunCheckpoints.start("cell", log)
    ctx = TransferContext(runlog=log, train=None, device=torch.device("cpu"), seed=0, checkpoints=ckpt)
    assert ctx.resume() is None
    for step in range(1, 6):
        ctx.checkpoint(step, lambda: {"step": step, "w": torch.full((2,), float(step))}, every=2)
    assert [position for position, _, _ in ckpt.writes] == [{"step": 2}, {"step": 4}]
    expected = torch.rand(3)            # what the run drew right after its last checkpoint...
    plan = checkpoint.ResumePlan(run_id="-", token=ckpt.token, path=str(ckpt.path), position={"step": 4})
    torch.manual_seed(123)              # ...whatever the new process did before resuming
    again = TransferContext(runlog=log, train=None, device=torch.device("cpu"), seed=0,
                            checkpoints=checkpoint.RunCheckpoints.start("cell", log, plan))
    state = again.resume()
    assert state["step"] == 4 and state["w"].tolist() == [4.0, 4.0]
    assert torch.equal(torch.rand(3), expected)
    assert log.tags[checkpoint_file.RESUMED_TAG] == "step=4"


def test_the_strategies_with_checkpoint_hooks_are_the_ones_tested_above(env, monkeypatch):
    """A strategy that gains hooks must join RESUMABLE (and so the stop/resume equality test)."""
    from cl.runner import execute

    seen: dict[str, list[str]] = {}
    original = checkpoint.ExperienceCheckpoints.__init__

    def build_only(self, checkpoints, strategy, train_stream, runlog):
        original(self, checkpoints, strategy, train_stream, runlog)
        seen[current] = self.saver.blockers
        raise _Stop

    monkeypatch.setattr(checkpoint.ExperienceCheckpoints, "__init__", build_only)
    for current in _strategy_names():
        with pytest.raises(_Stop):
            execute(RunConfig.from_dict(_strategy_config(current)), NullRunLog())
    assert {name for name, blockers in seen.items() if not blockers} == RESUMABLE, seen
