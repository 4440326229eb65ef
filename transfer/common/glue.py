"""GLUE tasks from local TSV files, and the metric GLUE reports for each.

Reads the standard GLUE layout, ``<root>/text/glue/<Task>/{train,dev}.tsv`` (the dev split is
the evaluation set: GLUE's test labels are private). ``root`` is the data root used by the
rest of the suite ($CLSUITE_DATA_ROOT); a root that *is* the ``glue`` folder works too.

Metrics (GLUE's own definitions): CoLA Matthews correlation; MRPC F1 of the positive class
(accuracy reported beside it); STS-B Pearson correlation (Spearman beside it); RTE, SST-2 and
WNLI accuracy. ``primary`` is the one number per task that enters averages.

A task is a GLUE name or a task read from your own files (`transfer.common.textfiles.TextFile` with
``kind`` and ``metric``, see `transfer.scalearn.params.ScaLearnFileTask`): every function here takes either.
An own-file task is scored by its ``metric`` (accuracy, Matthews correlation, macro F1; Pearson for
regression).
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

from cl.datafiles import DATA_ROOT_ENV, DataNotFoundError, resolve_data_root

csv.field_size_limit(1 << 24)


@dataclass(frozen=True)
class TaskSpec:
    folder: str
    text_columns: tuple[str | int, ...]     # column names (header files) or indices (CoLA has no header)
    label_column: str | int
    labels: Optional[tuple[str, ...]]       # label strings in class-index order; None = regression
    primary: str                            # acc, f1 (positive class), mcc, macro_f1 or pearson
    header: bool = True

    @property
    def is_regression(self) -> bool:
        return self.labels is None

    @property
    def num_labels(self) -> int:
        return 1 if self.labels is None else len(self.labels)


TASKS: dict[str, TaskSpec] = {
    "cola": TaskSpec("CoLA", (3,), 1, ("0", "1"), "mcc", header=False),
    "mrpc": TaskSpec("MRPC", ("#1 String", "#2 String"), "Quality", ("0", "1"), "f1"),
    "rte": TaskSpec("RTE", ("sentence1", "sentence2"), "label", ("not_entailment", "entailment"), "acc"),
    "sst2": TaskSpec("SST-2", ("sentence",), "label", ("0", "1"), "acc"),
    "stsb": TaskSpec("STS-B", ("sentence1", "sentence2"), "score", None, "pearson"),
    "wnli": TaskSpec("WNLI", ("sentence1", "sentence2"), "label", ("0", "1"), "acc"),
}


Task = Union[str, Any]          # a GLUE name, or an own-file task (transfer.scalearn.params.ScaLearnFileTask)


def task_name(task: Task) -> str:
    return task if isinstance(task, str) else task.name


def is_file_task(task: Task) -> bool:
    return not isinstance(task, str)


def load_file_task(task, where: Optional[str] = None):
    """The checked rows of an own-file task (`transfer.common.textfiles.Loaded`)."""
    from transfer.common import textfiles

    return textfiles.load(task, regression=task.kind == "regression", where=where)


def task_spec(task: Task) -> TaskSpec:
    """GLUE's spec of a named task; for an own-file task, its columns, the classes its training file holds
    (reads the files) and its metric."""
    if not is_file_task(task):
        if task not in TASKS:
            raise ValueError(f"unknown GLUE task {task!r}; known: {sorted(TASKS)}")
        return TASKS[task]
    loaded = load_file_task(task)
    return TaskSpec(str(loaded.train.file), task.columns(), task.label, loaded.classes, task.metric)


@dataclass
class TextSplit:
    """Texts (one or two segments per example) and labels (class ids, or floats for regression)."""

    texts: list[tuple[str, ...]]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, n: Optional[int], seed: int) -> "TextSplit":
        """A random subset of n examples (all when n is None or larger than the split)."""
        if n is None or n >= len(self):
            return self
        index = np.sort(np.random.default_rng(seed).choice(len(self), size=n, replace=False))
        return TextSplit([self.texts[i] for i in index], self.labels[index])


def glue_dir(data_root: Optional[str], tasks: Sequence[str] = ()) -> Path:
    """The folder holding ``<Task>/train.tsv``: ``<root>/text/glue``, ``<root>/glue`` or ``<root>`` itself.

    Raises `DataNotFoundError` naming the missing files and the fix when `tasks` are not all there.
    """
    root = resolve_data_root(data_root)
    folders = [TASKS[t].folder for t in tasks] or ["RTE"]
    for candidate in (root / "text" / "glue", root / "glue", root):
        if all((candidate / f / "train.tsv").is_file() and (candidate / f / "dev.tsv").is_file() for f in folders):
            return candidate
    raise DataNotFoundError(
        f"transfer.data_root: GLUE tasks {', '.join(folders)} not found under {root.resolve()}: expected "
        f"<root>/text/glue/<Task>/train.tsv and dev.tsv. Set transfer.data_root (or ${DATA_ROOT_ENV}) to the "
        "folder that holds text/glue/ (GLUE's standard layout).")


def load_split(task: Task, split: str, data_root: Optional[str] = None) -> TextSplit:
    """``split`` is ``train`` or ``dev``; ``data_root`` locates GLUE (own-file tasks name their files)."""
    if split not in ("train", "dev"):
        raise ValueError(f"split {split!r}: expected 'train' or 'dev'")
    spec = task_spec(task)
    if is_file_task(task):
        rows = getattr(load_file_task(task), split)
        if spec.is_regression:
            labels = np.asarray([float(v) for v in rows.labels], dtype=np.float32)
        else:
            index = {label: i for i, label in enumerate(spec.labels)}
            labels = np.asarray([index[v] for v in rows.labels], dtype=np.int64)
        return TextSplit(list(rows.texts), labels)
    path = glue_dir(data_root, [task]) / spec.folder / f"{split}.tsv"
    texts, labels = [], []
    with open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader) if spec.header else None
        column = (lambda c: header.index(c)) if header else (lambda c: c)
        text_idx = [column(c) for c in spec.text_columns]
        label_idx = column(spec.label_column)
        for row in reader:
            if len(row) <= max(text_idx + [label_idx]):
                continue            # a handful of malformed lines in some GLUE files
            raw = row[label_idx].strip()
            if spec.is_regression:
                labels.append(float(raw))
            else:
                if raw not in spec.labels:
                    continue
                labels.append(spec.labels.index(raw))
            texts.append(tuple(row[i] for i in text_idx))
    dtype = np.float32 if spec.is_regression else np.int64
    return TextSplit(texts, np.asarray(labels, dtype=dtype))


def scores(task: Task, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """GLUE metrics for the task; ``predictions`` are class ids (or floats for STS-B)."""
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import f1_score, matthews_corrcoef

    spec = task_spec(task)
    if spec.is_regression:
        predictions = np.asarray(predictions, dtype=np.float64).ravel()
        if np.std(predictions) == 0:           # constant output: correlation undefined, score it 0
            return {"pearson": 0.0, "spearman": 0.0}
        return {"pearson": float(pearsonr(predictions, labels)[0]),
                "spearman": float(spearmanr(predictions, labels)[0])}
    result = {"acc": float(np.mean(predictions == labels))}
    if spec.primary == "mcc":
        result["mcc"] = float(matthews_corrcoef(labels, predictions))
    if spec.primary == "f1":
        result["f1"] = float(f1_score(labels, predictions))
    if spec.primary == "macro_f1":
        result["macro_f1"] = float(f1_score(labels, predictions, average="macro",
                                            labels=list(range(spec.num_labels)), zero_division=0))
    return result


def primary_score(task: Task, metrics: dict[str, float]) -> float:
    return metrics[task_spec(task).primary]


def majority_score(task: Task, train: TextSplit, dev: TextSplit) -> float:
    """The primary dev score of always predicting the training split's most frequent class (0 for regression:
    a constant has no correlation). The floor a transfer method has to clear: on MRPC it is a high F1."""
    if task_spec(task).is_regression:
        return 0.0
    majority = int(np.bincount(train.labels).argmax())
    return primary_score(task, scores(task, np.full(len(dev), majority), dev.labels))
