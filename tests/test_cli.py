"""The `clsuite` command line end to end, in subprocesses, against real MLflow stores."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import yaml
from mlflow import MlflowClient

from tests.helpers.waiting import PROCESS_S, SERVER_START_S, http_ok, wait_until

ROOT = Path(__file__).resolve().parents[1]
CLSUITE = [sys.executable, "-m", "cl.cli"]

TINY = {
    "name": "tiny",
    "experiment": "tiny",
    "base": {
        "scenario": {"name": "split_digits", "n_experiences": 2},
        "model": {"name": "mlp", "hidden": [32]},
        "strategy": {"name": "naive"},
        "train": {"epochs": 1, "lr": 0.05},
    },
    "grid": {"strategy.name": ["naive", "replay"]},
    "seeds": [0, 1],
}


def clsuite(*args, cwd, timeout=PROCESS_S, **kwargs):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([*CLSUITE, *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, **kwargs)


def write_grid(path: Path, **changes) -> Path:
    path.write_text(yaml.safe_dump({**TINY, **changes}))
    return path


def runs_of(store: str, experiment: str):
    client = MlflowClient(store)
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id]) if exp else []


def test_help_and_expand_do_not_import_torch(tmp_path):
    grid = write_grid(tmp_path / "g.yaml")
    code = ("import sys; from cl.cli import app; from typer.testing import CliRunner; "
            f"r = CliRunner().invoke(app, ['grid', 'expand', {str(grid)!r}]); "
            "assert r.exit_code == 0, r.output; "
            "heavy = [m for m in ('torch', 'avalanche', 'mlflow') if m in sys.modules]; "
            "print('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout


def test_grid_launch_end_to_end_and_relaunch_adds_nothing(tmp_path):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    grid = write_grid(tmp_path / "tiny.yaml")
    first = clsuite("grid", "launch", grid, "--tracking-uri", store, "--workers", "2", cwd=tmp_path)
    assert first.returncode == 0, first.stderr + first.stdout
    assert "mean ± std over seeds" in first.stdout
    assert "strategy.name=replay" in first.stdout
    assert (tmp_path / "reports" / "tiny_comparison.png").stat().st_size > 1000

    runs = runs_of(store, "tiny")
    parents = [r for r in runs if r.data.tags.get("kind") == "launch"]
    children = [r for r in runs if r.data.tags.get("kind") == "cell"]
    assert len(parents) == 1 and len(children) == 4
    assert all(r.info.status == "FINISHED" for r in runs)
    assert all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in children)
    for child in children:   # nothing lost on the way from the workers to the single writer
        assert {"final/avg_acc", "final/memory_mb", "acc/exp_1", "acc/avg_seen"} <= set(child.data.metrics)
        assert child.data.params["strategy.name"] == child.data.tags["strategy"]

    again = clsuite("grid", "launch", grid, "--tracking-uri", store, "--no-report", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "skipping 4 cell(s)" in again.stdout
    assert len(runs_of(store, "tiny")) == 5

    report = clsuite("report", "--experiment", "tiny", "--tracking-uri", store, cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    assert "naive" in report.stdout and "replay" in report.stdout


def test_killed_launch_resumes_and_runs_every_cell_exactly_once(tmp_path):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    grid = write_grid(tmp_path / "resume.yaml", name="resume", experiment="resume",
                      grid={"strategy.name": ["naive", "replay", "ewc"]}, seeds=[0, 1])
    MlflowClient(store).search_experiments()   # create the schema first: the test polls while the launcher writes
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    launcher = subprocess.Popen([*CLSUITE, "grid", "launch", str(grid), "--tracking-uri", store, "--no-report",
                                 "--workers", "2"],
                                cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(lambda: sum(r.info.status == "FINISHED" for r in runs_of(store, "resume")) >= 2,
               what="two cells of the launched grid FINISHED", limit_s=PROCESS_S,
               alive=lambda: None if launcher.poll() is None else "the launcher ended before it could be interrupted")
    workers = psutil.Process(launcher.pid).children(recursive=True)
    assert workers
    launcher.send_signal(signal.SIGKILL)
    launcher.wait()
    # the workers die with the launcher instead of training cells nobody will record
    _, alive = psutil.wait_procs(workers, timeout=120)
    assert not alive, [p.cmdline()[:3] for p in alive]
    before = runs_of(store, "resume")
    assert 2 <= sum(r.info.status == "FINISHED" for r in before) < 6

    resumed = clsuite("grid", "launch", grid, "--tracking-uri", store, "--no-report", "--workers", "2", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr + resumed.stdout

    cells = [r for r in runs_of(store, "resume") if r.data.tags.get("kind") == "cell"]
    finished = [r.data.tags["config_hash"] for r in cells if r.info.status == "FINISHED"]
    assert len(finished) == 6 and len(set(finished)) == 6
    # whatever the killed launcher left RUNNING is closed, not left dangling
    assert all(r.info.status in ("FINISHED", "KILLED") for r in runs_of(store, "resume"))


def test_bad_config_exits_2_naming_the_field_and_logs_nothing(tmp_path):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    grid = write_grid(tmp_path / "bad.yaml", base={**TINY["base"], "strategy": {"name": "replay", "mem_size": -1}},
                      grid={})
    out = clsuite("grid", "launch", grid, "--tracking-uri", store, cwd=tmp_path)
    assert out.returncode == 2
    assert "strategy.mem_size" in out.stderr and "greater than or equal to 1" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "mlflow.db").exists() or runs_of(store, "tiny") == []

    unknown = write_grid(tmp_path / "unknown.yaml", grid={"strategy.name": ["naive", "replya"]})
    out = clsuite("grid", "launch", unknown, "--tracking-uri", store, cwd=tmp_path)
    assert out.returncode == 2
    assert "unknown strategy 'replya'" in out.stderr and "dark_er" in out.stderr


def test_missing_data_root_exits_2_with_the_expected_files_and_logs_nothing(tmp_path):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({**TINY["base"], "experiment": "nodata",
                                      "scenario": {"name": "split_mnist", "data_root": str(tmp_path / "nowhere")}}))
    out = clsuite("run", config, "--tracking-uri", store, cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert "train-images-idx3-ubyte" in out.stderr and "nowhere" in out.stderr
    assert "scenario.data_root" in out.stderr
    assert not (tmp_path / "mlflow.db").exists() or runs_of(store, "nodata") == []


def test_run_command_with_overrides(tmp_path):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({**TINY["base"], "experiment": "single"}))
    out = clsuite("run", config, "--seed", "4", "--set", "strategy.name=replay", "--set", "train.lr=0.02",
                  "--tracking-uri", store, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "final/avg_acc" in out.stdout
    [run] = runs_of(store, "single")
    assert run.info.status == "FINISHED"
    assert run.data.params["seed"] == "4" and run.data.params["strategy.name"] == "replay"
    assert run.data.params["train.lr"] == "0.02"
    assert run.data.tags["mlflow.source.git.commit"]

    bad = clsuite("run", config, "--set", "train.lr", "--tracking-uri", store, cwd=tmp_path)
    assert bad.returncode == 2 and "expected KEY=VALUE" in bad.stderr


def test_failed_cells_make_the_launch_exit_1_with_a_summary(tmp_path):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    grid = write_grid(tmp_path / "boom.yaml", name="boom", experiment="boom", seeds=[0],
                      imports=["tests.helpers.failing_strategies"],
                      grid={"strategy": [{"name": "naive"}, {"name": "explode", "at_experience": 1}]})
    out = clsuite("grid", "launch", grid, "--tracking-uri", store, cwd=tmp_path)
    assert out.returncode == 1
    assert "1 finished now" in out.stdout and "1 failed" in out.stdout
    assert "failed cells:" in out.stderr and "RuntimeError: boom at experience 1" in out.stderr
    statuses = sorted(r.info.status for r in runs_of(store, "boom") if r.data.tags.get("kind") == "cell")
    assert statuses == ["FAILED", "FINISHED"]


def test_ui_serves_the_store_on_localhost(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(store).search_experiments()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen([*CLSUITE, "ui", "--tracking-uri", store, "--port", str(port)], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/health"), what="`clsuite ui` answering /health",
                   limit_s=SERVER_START_S,
                   alive=lambda: None if server.poll() is None else server.stdout.read().decode()[-2000:])
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


def test_readme_quickstart_grid_as_published(tmp_path):
    """README command 1's grid: one parent, ten FINISHED children with metrics and artifacts; rerun adds none."""
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    grid = ROOT / "experiments" / "quickstart.yaml"
    out = clsuite("grid", "launch", grid, "--tracking-uri", store, "--workers", "2", cwd=tmp_path, timeout=2 * PROCESS_S)
    assert out.returncode == 0, out.stderr + out.stdout
    for strategy in ("naive", "replay", "ewc", "lwf", "icarl"):
        assert f"strategy.name={strategy}" in out.stdout
    runs = runs_of(store, "quickstart")
    children = [r for r in runs if r.data.tags.get("kind") == "cell"]
    assert len(runs) == 11 and len(children) == 10
    assert all(r.info.status == "FINISHED" for r in runs)
    client = MlflowClient(store)
    for child in children:
        assert {"final/avg_acc", "final/avg_inc_acc", "final/forgetting", "final/bwt", "final/memory_mb",
                "final/train_seconds"} <= set(child.data.metrics)
        artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert {"config.yaml", "accuracy_matrix.csv", "accuracy_matrix.png", "accuracy_curve.png",
                "provenance.json"} <= artifacts
    again = clsuite("grid", "launch", grid, "--tracking-uri", store, "--no-report", cwd=tmp_path)
    assert again.returncode == 0 and len(runs_of(store, "quickstart")) == 11
