"""Text tasks from your own files: ScaLearn tasks and SkillPack skills read CSV / TSV / JSON lines.

Small files are generated in tmp_path; bad files are refused up front (exit 2) naming the field, the
file and the column; one ScaLearn and one SkillPack run train end to end on own files (tiny models).
"""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from cl.config import RunConfig
from cl.errors import ConfigError
from transfer.common import glue
from transfer.skillpack.params import FileSkill
from transfer.scalearn.params import ScaLearnFileTask, ScaLearnTransferParams

ROOT = Path(__file__).resolve().parents[1]
ROWS = [("a fine film", "it was good", "pos"), ("a dull film", "it was bad", "neg"),
        ("great acting", "loved it", "pos"), ("weak plot", "hated it", "neg"),
        ("warm story", "so good", "pos"), ("cold story", "so bad", "neg"),
        ("bright scenes", "fine", "pos"), ("dark mess", "awful", "neg"),
        ("happy end", "nice", "pos"), ("sad mess", "poor", "neg")]


def write(path: Path, rows=ROWS, columns=("sentence", "second", "label")) -> Path:
    """`rows` in the format the suffix names (.csv, .tsv, .jsonl)."""
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(dict(zip(columns, r))) + "\n" for r in rows))
    else:
        with open(path, "w", newline="") as handle:
            writer = csv.writer(handle, delimiter="," if path.suffix == ".csv" else "\t")
            writer.writerow(columns)
            writer.writerows(rows)
    return path


def task(**options) -> ScaLearnFileTask:
    return ScaLearnFileTask.model_validate({"name": "mine", "text": "sentence", **options})


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl"])
def test_every_format_reads_the_same_rows_and_pairs(tmp_path, suffix):
    train, dev = write(tmp_path / f"train{suffix}"), write(tmp_path / f"dev{suffix}", ROWS[:4])
    spec = task(train=str(train), dev=str(dev), text_pair="second")
    data = glue.load_split(spec, "train")
    assert data.texts[0] == ("a fine film", "it was good") and len(data) == 10
    assert glue.task_spec(spec).labels == ("neg", "pos")              # classes in sorted order
    assert data.labels.tolist() == [1, 0] * 5
    assert glue.load_split(spec, "dev").labels.tolist() == [1, 0, 1, 0]


def test_one_file_is_carved_by_label_reproducibly(tmp_path):
    rows = [(f"text {i}", "", "abc"[i % 3]) for i in range(30)]
    path = write(tmp_path / "all.csv", rows)
    spec = task(path=str(path), dev_fraction=0.2)
    train, dev = glue.load_split(spec, "train"), glue.load_split(spec, "dev")
    assert len(train) == 24 and len(dev) == 6
    assert np.bincount(dev.labels).tolist() == [2, 2, 2]               # stratified: 2 of each label's 10
    assert not {t for t, in dev.texts} & {t for t, in train.texts}
    assert glue.load_split(task(path=str(path), dev_fraction=0.2), "dev").texts == dev.texts      # same seed
    assert glue.load_split(task(path=str(path), dev_fraction=0.2, split_seed=1), "dev").texts != dev.texts


def test_integer_labels_keep_numeric_order_and_json_values_are_read_as_written(tmp_path):
    rows = [{"text": f"t{i}", "label": [2, 10, 1][i % 3]} for i in range(9)]
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")     # a blank line at the end is fine
    spec = ScaLearnFileTask(name="nums", path=str(path), dev_fraction=0.34)
    assert glue.task_spec(spec).labels == ("1", "2", "10")


def test_regression_and_metrics_of_own_tasks(tmp_path):
    rows = [(f"s{i}", f"p{i}", f"{i / 2:.1f}") for i in range(10)]
    spec = task(path=str(write(tmp_path / "sts.tsv", rows)), text_pair="second", kind="regression")
    assert spec.metric == "pearson" and glue.task_spec(spec).is_regression
    assert glue.load_split(spec, "train").labels.dtype == np.float32
    mcc = task(path=str(write(tmp_path / "r.csv")), metric="mcc")
    assert glue.scores(mcc, np.array([0, 1, 1, 0]), np.array([0, 1, 0, 1]))["mcc"] == pytest.approx(0.0)
    macro = task(path=str(write(tmp_path / "m.csv")), metric="macro_f1")
    assert glue.primary_score(macro, glue.scores(macro, np.array([0, 0, 1, 1]), np.array([0, 0, 1, 1]))) == 1.0
    with pytest.raises(ValueError, match="metric 'pearson' does not score a classification task"):
        task(path="x.csv", metric="pearson")


# ---------------------------------------------------------------- refused up front, naming file and column

def scalearn_config(*tasks, target="mine") -> RunConfig:
    return RunConfig.from_dict({"transfer": {"name": "scalearn", "target": target, "tasks": list(tasks)}})


def problem(cfg_or_raw) -> str:
    with pytest.raises(ConfigError) as info:
        (cfg_or_raw() if callable(cfg_or_raw) else cfg_or_raw).preflight()
    return "\n".join(info.value.problems)


def test_bad_files_are_refused_naming_the_field_the_file_and_the_column(tmp_path):
    good = str(write(tmp_path / "good.csv"))
    message = problem(scalearn_config({"name": "mine", "path": good, "text": "sentense"}))
    assert message.startswith("transfer.tasks.0.text:") and "good.csv" in message and "'sentense'" in message
    assert "its columns: sentence, second, label" in message
    message = problem(scalearn_config({"name": "mine", "path": good, "text": "sentence", "text_pair": "b"}))
    assert message.startswith("transfer.tasks.0.text_pair:") and "no column 'b'" in message
    message = problem(scalearn_config({"name": "mine", "path": good, "text": "sentence", "label": "gold"}))
    assert message.startswith("transfer.tasks.0.label:") and "no column 'gold'" in message

    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "header.tsv").write_text("sentence\tlabel\n")
    (tmp_path / "empty.jsonl").write_text("\n")
    for name in ("empty.csv", "header.tsv", "empty.jsonl"):
        message = problem(scalearn_config({"name": "mine", "path": str(tmp_path / name), "text": "sentence"}))
        assert message.startswith("transfer.tasks.0:") and f"{name} is empty" in message

    dev = str(write(tmp_path / "dev.csv", [("x", "y", "pos"), ("z", "w", "maybe")]))
    message = problem(scalearn_config({"name": "mine", "train": good, "dev": dev, "text": "sentence"}))
    assert message.startswith("transfer.tasks.0.label: the label sets of") and "good.csv (train)" in message
    assert "dev.csv (dev)" in message and "column 'label'" in message
    assert "only in train ['neg'], only in dev ['maybe']" in message

    lonely = str(write(tmp_path / "lonely.csv", ROWS + [("odd", "one", "meh")]))
    assert "label 'meh' (column 'label') has one row" in problem(
        scalearn_config({"name": "mine", "path": lonely, "text": "sentence"}))
    gap = str(write(tmp_path / "gap.csv", ROWS + [("no label", "here", "")]))
    assert "gap.csv, line 12: no value in column 'label'" in problem(
        scalearn_config({"name": "mine", "path": gap, "text": "sentence"}))
    assert "does not exist" in problem(scalearn_config({"name": "mine", "path": str(tmp_path / "nope.csv")}))


def test_option_mistakes_are_refused_at_validation():
    with pytest.raises(ConfigError, match="give either path .* or both train and dev"):
        scalearn_config({"name": "mine", "train": "a.csv"})
    with pytest.raises(ConfigError, match="path .* and train/dev .* exclude each other"):
        scalearn_config({"name": "mine", "path": "a.csv", "train": "b.csv", "dev": "c.csv"})
    with pytest.raises(ConfigError, match="dev_fraction carves `path`"):
        scalearn_config({"name": "mine", "train": "a.csv", "dev": "b.csv", "dev_fraction": 0.1})
    with pytest.raises(ConfigError, match="cannot tell the format of a.txt .* set format"):
        scalearn_config({"name": "mine", "path": "a.txt"})
    with pytest.raises(ConfigError, match="name 'rte' is a GLUE task"):
        scalearn_config({"name": "rte", "path": "a.csv"}, target="rte")
    with pytest.raises(ConfigError, match="target 'other' must be one of tasks"):
        scalearn_config("mrpc", {"name": "mine", "path": "a.csv"}, target="other")
    with pytest.raises(ConfigError, match="transfer.tasks.0.name: Input should be 'cola'"):
        scalearn_config("rtee", target="rtee")


def test_existing_glue_configs_validate_and_hash_as_before():
    """Names stay names: a config of GLUE tasks dumps (and hashes) exactly as before file tasks existed."""
    params = ScaLearnTransferParams(target="mrpc", tasks=("mrpc", "rte"))
    assert params.model_dump()["tasks"] == ("mrpc", "rte") and params.target_task() == "mrpc"
    cfg = RunConfig.from_dict({"transfer": {"name": "scalearn", "target": "rte", "tasks": ["mrpc", "rte"]}})
    assert cfg.config_hash == "dea4d8366cfebc08"                     # as before own-file tasks existed
    skills = RunConfig.from_dict({"transfer": {"name": "skillpack", "skills": ["sentiment", "arithmetic"],
                                               "skill": "arithmetic"}})
    assert skills.config_hash == "1434466dad18dd91"


def test_validation_and_preflight_do_not_import_torch(tmp_path):
    path = write(tmp_path / "own.csv")
    code = ("import sys; from cl.config import RunConfig; "
            "cfg = RunConfig.from_dict({'transfer': {'name': 'scalearn', 'target': 'mine', 'tasks': "
            f"[{{'name': 'mine', 'path': {str(path)!r}, 'text': 'sentence'}}]}}}}); cfg.preflight(); "
            "cfg = RunConfig.from_dict({'transfer': {'name': 'skillpack', 'skills': ['arithmetic', "
            f"{{'name': 'mine', 'path': {str(path)!r}, 'text': 'sentence'}}]}}}}); cfg.preflight(); "
            "print([m for m in ('torch', 'transformers') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_the_cli_exits_2_naming_the_file_and_the_column(tmp_path):
    write(tmp_path / "own.tsv")
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"experiment": "own", "transfer": {
        "name": "scalearn", "model": "tiny-random", "target": "mine",
        "tasks": [{"name": "mine", "path": "own.tsv", "text": "review", "label": "label"}]}}))
    out = subprocess.run([sys.executable, "-m", "cl.cli", "run", str(config), "--tracking-uri",
                          f"sqlite:///{tmp_path / 'mlflow.db'}"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 2, out.stderr
    assert "transfer.tasks.0.text: own.tsv has no column 'review'" in out.stderr and "Traceback" not in out.stderr


# ---------------------------------------------------------------- skills from own files

def test_a_skill_from_a_file_fills_its_prompt_and_maps_labels_to_answers(tmp_path):
    from transfer.skillpack.skills import load_skill

    path = str(write(tmp_path / "pairs.jsonl"))
    skill = FileSkill(name="mine", path=path, text="sentence", text_pair="second",
                      answers={"pos": "positive", "neg": "negative"}, dev_fraction=0.2)
    test = load_skill(skill, "test")
    assert len(test) == 2 and {e.answer for e in test} == {"positive", "negative"}
    assert test[0].prompt.startswith("Answer with one of: negative, positive.\nA: ") and "\nB: " in test[0].prompt
    custom = FileSkill(name="mine", path=path, text="sentence", prompt="Review: {text}\nLabel ({labels}):")
    assert load_skill(custom, "train")[0] == load_skill(custom, "train")[0].__class__(
        "Review: a fine film\nLabel (neg, pos):", "pos")
    assert len(load_skill(custom, "train", n=3, seed=0)) == 3
    numbered = tmp_path / "numbered.csv"
    numbered.write_text("text,label\n" + "".join(f"t{i},{i % 2}\n" for i in range(10)))
    from_yaml = yaml.safe_load(f"{{name: nums, path: {numbered}, answers: {{0: negative, 1: positive}}}}")
    assert {e.answer for e in load_skill(FileSkill.model_validate(from_yaml), "test")} == {"negative", "positive"}


def test_skill_answers_that_could_be_confused_are_refused(tmp_path):
    path = str(write(tmp_path / "r.csv"))

    def config(**options):
        return RunConfig.from_dict({"transfer": {"name": "skillpack", "skills": [
            "arithmetic", {"name": "mine", "path": path, "text": "sentence", **options}]}})

    assert "answer 'no' is a prefix of 'not'" in problem(config(answers={"pos": "not", "neg": "no"}))
    assert "missing ['neg']" in problem(config(answers={"pos": "yes"}))
    with pytest.raises(ConfigError, match="prompt lacks {text}"):
        config(prompt="Say something:")
    with pytest.raises(ConfigError, match="prompt has {text_pair} but no text_pair column"):
        config(prompt="{text} {text_pair}")
    with pytest.raises(ConfigError, match="skill 'other' must be one of skills"):
        RunConfig.from_dict({"transfer": {"name": "skillpack", "skills": ["arithmetic"], "skill": "other"}})


# ---------------------------------------------------------------- end to end on own files (tiny models)

def test_scalearn_transfers_between_own_files(tmp_path, shared_store, monkeypatch, one_thread):
    """An own CSV target and an own TSV pair source, no GLUE anywhere: the run finishes, names the tasks
    in its metrics, logs what it read, and an edited file trains a new stage-1 adapter."""
    from mlflow import MlflowClient

    from cl.runner import run

    monkeypatch.setenv("CLSUITE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CLSUITE_DATA_ROOT", str(tmp_path / "no-glue-here"))
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "reviews.csv", ROWS * 2)
    write(tmp_path / "nli_train.tsv", ROWS, ("premise", "hypothesis", "gold"))
    write(tmp_path / "nli_dev.tsv", ROWS[:4], ("premise", "hypothesis", "gold"))
    transfer = {"name": "scalearn", "model": "tiny-random", "target": "reviews", "max_length": 32,
                "adapter_epochs": 1, "train_samples": 16, "tasks": [
                    {"name": "nli", "train": "nli_train.tsv", "dev": "nli_dev.tsv", "text": "premise",
                     "text_pair": "hypothesis", "label": "gold"},
                    {"name": "reviews", "path": "reviews.csv", "text": "sentence", "metric": "macro_f1"}]}
    cfg = RunConfig.from_dict({"experiment": "own-files", "transfer": transfer, "seed": 0,
                               "train": {"epochs": 1, "batch_size": 8, "lr": 0.006}})
    result = run(cfg, tracking_uri=shared_store)
    assert result.ok, result.reason
    logged = MlflowClient(shared_store).get_run(result.run_id).data
    assert {"final/macro_f1", "final/score", "stage1/nli/dev_score", "stage1/reviews/dev_score",
            "omega/nli", "omega/reviews"} <= set(logged.metrics)
    assert np.isfinite(logged.metrics["final/score"])
    assert logged.params["data/reviews/labels"] == "neg,pos" and logged.params["data/reviews/dev_rows"] == "4"
    assert logged.params["data/nli/train_file"].endswith("nli_train.tsv")
    adapters = lambda: sorted(p.name for p in (tmp_path / "cache" / "scalearn").iterdir())  # noqa: E731
    assert [a.split("-")[0] for a in adapters()] == ["nli", "reviews"]

    write(tmp_path / "reviews.csv", ROWS * 3)                          # the file changes: a new adapter
    again = run(RunConfig.from_dict({"experiment": "own-files", "transfer": {**transfer, "method": "adapter"},
                                     "train": {"epochs": 1, "batch_size": 8, "lr": 0.006}}), tracking_uri=shared_store)
    assert again.ok, again.reason
    assert [a.split("-")[0] for a in adapters()] == ["nli", "reviews", "reviews"]


def test_skillpack_packs_a_skill_from_an_own_file(tmp_path, shared_store, monkeypatch, one_thread):
    from mlflow import MlflowClient

    from cl.runner import run

    monkeypatch.setenv("CLSUITE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CLSUITE_DATA_ROOT", str(tmp_path / "no-text-here"))
    path = write(tmp_path / "reviews.jsonl", ROWS * 2)
    cfg = RunConfig.from_dict({"experiment": "own-skill", "seed": 0, "train": {"epochs": 1, "batch_size": 4, "lr": 1e-3},
                               "transfer": {"name": "skillpack", "model": "tiny-random", "method": "routed",
                                            "skills": ["arithmetic", {"name": "reviews", "path": str(path),
                                                                      "text": "sentence",
                                                                      "answers": {"pos": "good", "neg": "bad"}}],
                                            "train_samples": 8, "test_samples": 4, "max_length": 64,
                                            "max_new_tokens": 2, "group_size": 16, "router_examples": 4}})
    result = run(cfg, tracking_uri=shared_store)
    assert result.ok, result.reason
    logged = MlflowClient(shared_store).get_run(result.run_id).data
    assert {"final/acc_reviews", "final/acc_arithmetic", "final/router_acc"} <= set(logged.metrics)
    assert logged.params["data/reviews/labels"] == "neg,pos"
