"""The Ray backend runs the same grid as the local one (local `ray.init`, 2 CPUs)."""
import pytest
from mlflow import MlflowClient

from cl.grid import GridSpec, expand
from cl.launch import launch

ray = pytest.importorskip("ray")

SPEC = {
    "name": "on-ray",
    "base": {"scenario": {"name": "split_digits", "n_experiences": 2}, "model": {"name": "mlp", "hidden": [32]},
             "strategy": {"name": "naive"}, "train": {"epochs": 1, "lr": 0.05}},
    "grid": {"strategy.name": ["naive", "replay"]},
    "seeds": [0],
}


@pytest.fixture
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_backend_matches_local_backend(fresh_store, local_ray):
    on_ray = GridSpec.model_validate(SPEC)
    local = GridSpec.model_validate({**SPEC, "name": "local", "experiment": "local"})
    ray_summary = launch(on_ray, expand(on_ray), tracking_uri=fresh_store, backend="ray", workers=2)
    local_summary = launch(local, expand(local), tracking_uri=fresh_store)
    assert ray_summary.finished == local_summary.finished == 2 and not ray_summary.failed

    client = MlflowClient(fresh_store)

    def final_metrics(experiment):
        exp = client.get_experiment_by_name(experiment)
        runs = client.search_runs([exp.experiment_id], "tags.kind = 'cell'")
        return {r.data.tags["config_hash"]: {k: v for k, v in r.data.metrics.items() if k.startswith("acc/")}
                for r in runs}

    # same seeds, same data: the same accuracy matrix whichever backend ran the cell
    assert final_metrics("on-ray") == final_metrics("local")
