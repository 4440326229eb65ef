"""The notebooks execute top to bottom against real grids in a temp MLflow store, and the
analysis functions they call return what the runs logged."""
from pathlib import Path

import pytest

from cl import analysis
from cl.grid import GridSpec, expand
from cl.launch import launch

jupytext = pytest.importorskip("jupytext")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
CL_GRID = {
    "name": "nb-grid",
    "base": {"scenario": {"name": "split_digits", "n_experiences": 2}, "model": {"name": "mlp", "hidden": [32]},
             "strategy": {"name": "naive"}, "train": {"epochs": 1, "lr": 0.05}},
    "cases": [{"strategy": {"name": "naive"}},
              {"strategy": {"name": "replay", "mem_size": 40}},
              {"strategy": {"name": "replay", "mem_size": 40}, "plugins": [{"name": "fpf", "iterations": 3}]}],
    "seeds": [0, 1],
}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A CL grid (3 groups × 2 seeds)."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('nb-store') / 'mlflow.db'}"
    spec = GridSpec.model_validate(CL_GRID)
    assert not launch(spec, expand(spec), tracking_uri=uri).failed
    return uri


@pytest.fixture(scope="module")
def transfer_experiment(store, tmp_path_factory, offline_text):
    """A ScaLearn grid on the offline GLUE files (generated ones on a clone without them)."""
    import os

    from cl.registry import TRANSFERS

    smoke = dict(TRANSFERS.get("scalearn").smoke_options)
    spec = GridSpec.model_validate({
        "name": "nb-transfer",
        "base": {"transfer": {"name": "scalearn", **smoke}, "train": {"epochs": 1, "batch_size": 8, "lr": 0.006}},
        "grid": {"transfer.method": ["scalearn", "scalearn_uniform_pp", "fusion"]},
        "seeds": [0, 1]})
    env = {"CLSUITE_DATA_ROOT": str(offline_text), "CLSUITE_CACHE": str(tmp_path_factory.mktemp("cache"))}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        assert not launch(spec, expand(spec), tracking_uri=store).failed
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    return spec.experiment_name


@pytest.fixture(scope="module")
def cmt_experiment(store):
    """Two CMT-harness methods on tiny random models (seconds): the retention curves have something to show."""
    from cl.registry import TRANSFERS

    smoke = dict(TRANSFERS.get("cmt").smoke_options)
    spec = GridSpec.model_validate({
        "name": "nb-cmt", "base": {"transfer": {"name": "cmt", **smoke}},
        "grid": {"transfer.method": ["cmt", "closed_book"]}, "seeds": [0]})
    assert not launch(spec, expand(spec), tracking_uri=store).failed
    return spec.experiment_name


def execute(name: str, uri: str, experiment: str, monkeypatch, tmp_path):
    monkeypatch.setenv("CLSUITE_TRACKING_URI", uri)
    monkeypatch.setenv("CLSUITE_EXPERIMENT", experiment)
    notebook = jupytext.read(NOTEBOOKS / name)
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    return notebook


def images(notebook) -> int:
    return sum("image/png" in output.get("data", {}) for cell in notebook.cells if cell.cell_type == "code"
               for output in cell.get("outputs", []))


def test_grid_overview_notebook_runs(store, monkeypatch, tmp_path):
    notebook = execute("01_grid_overview.py", store, "nb-grid", monkeypatch, tmp_path)
    # one curve figure, three mean heatmaps (one per group), one comparison plot
    assert images(notebook) == 5


def test_tradeoffs_notebook_runs(store, monkeypatch, tmp_path):
    notebook = execute("02_memory_accuracy_tradeoffs.py", store, "nb-grid", monkeypatch, tmp_path)
    assert images(notebook) >= 3            # memory, FLOPs, at least one FPF sensitivity figure


def test_transfer_notebook_runs(store, transfer_experiment, monkeypatch, tmp_path):
    notebook = execute("03_transfer_results.py", store, transfer_experiment, monkeypatch, tmp_path)
    assert images(notebook) >= 2
    text = "".join(str(o.get("data", {}).get("text/plain", "")) for c in notebook.cells for o in c.get("outputs", []))
    assert "omega/mrpc" in text             # the learned scales are tabulated


def test_transfer_notebook_shows_cmt_retention(store, cmt_experiment, monkeypatch, tmp_path):
    notebook = execute("03_transfer_results.py", store, cmt_experiment, monkeypatch, tmp_path)
    text = "".join(str(o.get("text", "")) for c in notebook.cells for o in c.get("outputs", []))
    assert "no CMT runs" not in text
    retention_cell = [c for c in notebook.cells if c.cell_type == "code"][-1]
    assert sum("image/png" in o.get("data", {}) for o in retention_cell.outputs) == 2   # seen-so-far, first batch


def test_a_notebook_that_errors_fails(store, monkeypatch, tmp_path):
    with pytest.raises(nbclient.exceptions.CellExecutionError, match="no FINISHED runs in experiment .no-such-experiment."):
        execute("01_grid_overview.py", store, "no-such-experiment", monkeypatch, tmp_path)


# ---------------------------------------------------------------- what the notebooks read

def test_histories_and_matrices_match_the_logged_runs(store):
    runs = analysis.load_runs("nb-grid", tracking_uri=store)
    assert len(runs) == 6 and runs["group_hash"].nunique() == 3
    histories = analysis.load_histories(runs, ["acc/avg_seen"], tracking_uri=store)
    assert len(histories) == 6 * 2                                   # two experiences per run
    curves = analysis.curves_over_seeds(histories)
    assert (curves["n"] == 2).all() and len(curves) == 3 * 2
    first = runs.iloc[0]
    R = analysis.accuracy_matrix(first["run_id"], tracking_uri=store)
    assert R.shape == (2, 2) and ((R >= 0) & (R <= 1)).all()
    assert R[1].tolist() == pytest.approx([first["acc/exp_0"], first["acc/exp_1"]], abs=1e-6)   # last row, as logged
    last = histories[(histories["run_id"] == first["run_id"]) & (histories["step"] == 1)]["value"].item()
    assert last == pytest.approx(first["final/avg_acc"])             # the seen-average after the last experience
    means = analysis.mean_accuracy_matrices(runs, tracking_uri=store)
    assert set(means) == set(runs["label"])


def test_pareto_front_keeps_the_undominated():
    import pandas as pd

    points = pd.DataFrame({"cost": [1, 2, 3, 4, 2], "acc": [0.5, 0.7, 0.6, 0.9, 0.4]})
    front = analysis.pareto_front(points, "cost", "acc")
    assert front["cost"].tolist() == [1, 2, 4] and front["acc"].tolist() == [0.5, 0.7, 0.9]
