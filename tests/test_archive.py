"""Runs exported from one store and imported into another are the same runs to the suite:
the launcher reuses them, the analysis reads the same numbers and matrices."""
import json

from typer.testing import CliRunner

from cl import analysis
from cl.archive import export_runs, import_runs
from cl.cli import app
from cl.grid import GridSpec, expand
from cl.launch import launch

SPEC = {
    "name": "carried",
    "base": {"scenario": {"name": "split_digits", "n_experiences": 2}, "model": {"name": "mlp", "hidden": [32]},
             "strategy": {"name": "naive"}, "train": {"epochs": 1, "lr": 0.05}},
    "grid": {"strategy.name": ["naive", "replay"]},
    "seeds": [0],
}


def test_export_import_round_trip_and_the_launcher_reuses_imported_cells(tmp_path):
    source = f"sqlite:///{tmp_path / 'a' / 'mlflow.db'}"
    target = f"sqlite:///{tmp_path / 'b' / 'mlflow.db'}"
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    spec = GridSpec.model_validate(SPEC)
    assert launch(spec, expand(spec), tracking_uri=source).finished == 2

    path = tmp_path / "carried.jsonl"
    assert export_runs("carried", path, tracking_uri=source) == 3          # the launch run and two cells
    records = [json.loads(line) for line in path.read_text().splitlines()]
    cell = next(r for r in records if r["tags"].get("kind") == "cell")
    assert "accuracy_matrix.csv" in cell["artifacts"] and "accuracy_matrix.png" not in cell["artifacts"]
    assert len(cell["metrics"]["acc/avg_seen"]) == 2                        # the whole history

    first = import_runs(path, tracking_uri=target)
    again = import_runs(path, tracking_uri=target)
    assert (first.imported, first.skipped, again.imported, again.skipped) == (3, 0, 0, 3)

    before = analysis.load_runs("carried", tracking_uri=source).set_index("config_hash")
    after = analysis.load_runs("carried", tracking_uri=target).set_index("config_hash")
    assert sorted(before.index) == sorted(after.index)
    for column in ("final/avg_acc", "final/forgetting", "cost/train_flops", "param.strategy.name"):
        assert before[column].to_dict() == after[column].to_dict()
    run_id = after["run_id"].iloc[0]
    assert analysis.accuracy_matrix(run_id, tracking_uri=target).shape == (2, 2)

    relaunch = launch(spec, expand(spec), tracking_uri=target)
    assert relaunch.finished == 0 and relaunch.skipped_finished == 2


def test_cli_export_names_a_missing_experiment(tmp_path):
    result = CliRunner().invoke(app, ["runs", "export", "nope", "--to", str(tmp_path / "x.jsonl"),
                                      "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"])
    assert result.exit_code == 2 and "experiment 'nope' not found" in result.output


def test_export_keeps_small_text_artifacts_such_as_answers_and_leaves_out_images_and_large_files(tmp_path):
    from mlflow.tracking import MlflowClient

    from cl.archive import MAX_TEXT_BYTES

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment("qa", artifact_location=str(tmp_path / "art")))
    answers = '{"question": "Where?", "prediction": "Lyon"}\n'
    client.log_text(run.info.run_id, answers, "cmt/predictions.jsonl")
    client.log_text(run.info.run_id, "x" * (MAX_TEXT_BYTES + 1), "big.txt")
    client.log_text(run.info.run_id, "not really a png", "plot.png")
    client.set_terminated(run.info.run_id)
    assert export_runs("qa", tmp_path / "qa.jsonl", tracking_uri=uri) == 1
    record = json.loads((tmp_path / "qa.jsonl").read_text())
    assert record["artifacts"] == {"cmt/predictions.jsonl": answers}
