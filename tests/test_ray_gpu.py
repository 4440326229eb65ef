"""GPUs per cell on Ray, tested without GPUs: a local Ray cluster *declares* two (``num_gpus=2``).

Ray schedules by declared resources and sets ``CUDA_VISIBLE_DEVICES`` to the ids it assigns, so
with ``--gpus-per-cell 1`` at most two cells may run at once, each told a different GPU. The
cells train with ``device: auto``; torch sees no CUDA device here, so each must fall back to the
CPU and say so instead of crashing.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from cl.devices import CellResources
from cl.errors import ConfigError
from cl.grid import GridSpec, expand
from cl.launch import launch

ROOT = Path(__file__).resolve().parents[1]

SPEC = {
    "name": "on-fake-gpus",
    "base": {"scenario": {"name": "split_digits", "n_experiences": 2}, "model": {"name": "mlp", "hidden": [32]},
             "strategy": {"name": "naive"}, "train": {"epochs": 1, "lr": 0.05, "device": "auto"}},
    "seeds": [0, 1, 2],
}


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """Most intervals open at one instant (an end at t closes before a start at t)."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals],
                    key=lambda e: (e[0], e[1]))
    open_now = peak = 0
    for _, delta in events:
        open_now += delta
        peak = max(peak, open_now)
    return peak


def test_max_overlap():
    assert max_overlap([(0, 2), (1, 3), (2.5, 4)]) == 2
    assert max_overlap([(0, 1), (1, 2)]) == 1
    assert max_overlap([(0, 5), (1, 2), (1.5, 3)]) == 3


@pytest.fixture
def fake_gpu_ray():
    ray = pytest.importorskip("ray")
    # 4 CPUs: without the GPU request, all three cells would run at once
    ray.init(num_cpus=4, num_gpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_cells_get_one_gpu_each_and_at_most_two_run_at_once(fresh_store, fake_gpu_ray):
    spec = GridSpec.model_validate(SPEC)
    summary = launch(spec, expand(spec), tracking_uri=fresh_store, backend="ray", workers=3,
                     resources=CellResources(gpus=1, cpus=1))
    assert summary.finished == 3 and not summary.failed, summary.failed

    client = MlflowClient(fresh_store)
    exp = client.get_experiment_by_name("on-fake-gpus")
    runs = client.search_runs([exp.experiment_id], "tags.kind = 'cell'")
    assert len(runs) == 3
    spans, ids = [], []
    for run in runs:
        tags = run.data.tags
        spans.append((float(tags["worker.started_unix"]), float(tags["worker.ended_unix"])))
        # each cell saw exactly one of the two declared GPUs, through Ray and through CUDA_VISIBLE_DEVICES
        assert tags["device.ray_gpu_ids"] in {"0", "1"}, tags
        assert tags["device.cuda_visible_devices"] == tags["device.ray_gpu_ids"]
        ids.append(tags["device.ray_gpu_ids"])
        # the GPUs are declared, not real: device auto fell back to the CPU and said so
        assert tags["device"] == "cpu" and tags["device.requested"] == "auto"
        assert "no usable CUDA device" in tags["device.warning"]
    peak = max_overlap(spans)
    print(f"\nfake GPUs: 2, --gpus-per-cell 1, 3 cells: max concurrent cells {peak}, GPU ids seen {sorted(ids)}, "
          f"spans {[(round(s - spans[0][0], 1), round(e - spans[0][0], 1)) for s, e in spans]}")
    assert peak <= 2
    # cells that ran at the same time were given different GPUs
    for i in range(3):
        for j in range(i + 1, 3):
            (s1, e1), (s2, e2) = spans[i], spans[j]
            if s1 < e2 and s2 < e1:
                assert ids[i] != ids[j]


def test_a_request_no_node_can_meet_is_refused_before_any_cell_runs(fresh_store, fake_gpu_ray):
    spec = GridSpec.model_validate({**SPEC, "seeds": [0]})
    with pytest.raises(ConfigError, match="--gpus-per-cell 3: the Ray cluster has 2 GPU"):
        launch(spec, expand(spec), tracking_uri=fresh_store, backend="ray", resources=CellResources(gpus=3))
    exp = MlflowClient(fresh_store).get_experiment_by_name("on-fake-gpus")
    assert exp is None or not MlflowClient(fresh_store).search_runs([exp.experiment_id], "tags.kind = 'cell'")


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize("gpus, cpus, message", [
    (-1, 1, "--gpus-per-cell: must be a number >= 0"),
    (0, 0, "--cpus-per-cell: must be a number > 0"),
    (0, -0.5, "--cpus-per-cell: must be a number > 0"),
    (float("nan"), 1, "--gpus-per-cell"),
])
def test_bad_resource_requests_name_the_option(gpus, cpus, message):
    with pytest.raises(ConfigError, match=message):
        CellResources(gpus=gpus, cpus=cpus)


def test_fractions_are_requests_as_given():
    assert CellResources(gpus=0.5, cpus=0.25).ray_options() == {"num_gpus": 0.5, "num_cpus": 0.25}
    CellResources(gpus=0.5).check_cluster({"GPU": 1.0, "CPU": 2.0})
    with pytest.raises(ConfigError, match="--cpus-per-cell 4"):
        CellResources(cpus=4).check_cluster({"GPU": 0.0, "CPU": 2.0})


def test_resource_requests_need_the_ray_backend(fresh_store):
    spec = GridSpec.model_validate({**SPEC, "seeds": [0]})
    with pytest.raises(ConfigError, match="need --backend ray"):
        launch(spec, expand(spec), tracking_uri=fresh_store, resources=CellResources(gpus=1))


def test_cli_rejects_a_negative_gpu_request_with_exit_code_2(tmp_path):
    grid = tmp_path / "g.yaml"
    grid.write_text(yaml.safe_dump({**SPEC, "seeds": [0]}))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "cl.cli", "grid", "launch", str(grid), "--backend", "ray",
                          "--gpus-per-cell", "-1", "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 2, out.stderr
    assert "--gpus-per-cell: must be a number >= 0" in out.stderr


# --------------------------------------------------------------------------- device choice outside Ray


def test_device_auto_falls_back_to_cpu_with_a_warning_when_an_assigned_gpu_is_unusable(monkeypatch, caplog):
    import torch

    from cl.devices import resolve_device

    if torch.cuda.is_available():
        pytest.skip("a usable GPU is present")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    with caplog.at_level("WARNING", logger="cl.devices"):
        choice = resolve_device("auto")
    assert choice.device.type == "cpu" and "GPU(s) 1 assigned" in choice.warning
    assert "no usable CUDA device" in caplog.text
    assert choice.tags()["device.cuda_visible_devices"] == "1" and choice.tags()["device"] == "cpu"

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    plain = resolve_device("auto")
    assert plain.device.type == "cpu" and plain.warning is None and "device.warning" not in plain.tags()
    with pytest.raises(ConfigError, match="train.device: 'cuda' requested but CUDA is not available"):
        resolve_device("cuda")
