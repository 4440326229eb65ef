"""Text tasks from your own files: CSV, TSV or JSON-lines rows with a named text column and a label column.

Wherever a ScaLearn task (`transfer.tasks`) or a SkillPack skill (`transfer.skills`) takes a built-in
name, it also takes a mapping that reads a file::

    {name: reviews, path: data/reviews.csv, text: sentence, label: label}            # 20% carved off as dev
    {name: my_nli, train: nli/train.tsv, dev: nli/dev.tsv, text: premise, text_pair: hypothesis, label: gold}

* **Splits**: ``train`` + ``dev`` files, or one ``path`` carved into train and dev: ``dev_fraction``
  (default 0.2) of each label's rows, drawn with ``split_seed`` (stratified, so both splits hold every
  label). ``dev`` is the split that is scored (GLUE's convention: its dev set is the evaluation set).
* **Formats** (``format: auto`` decides by the extension): ``.csv`` — comma-separated with a header row,
  standard quoting; ``.tsv`` / ``.tab`` — tab-separated with a header row and *no* quoting (GLUE's
  convention: a ``"`` is text); ``.jsonl`` / ``.ndjson`` / ``.json`` — one JSON object per line.
  Files are read as UTF-8.
* **Columns**: ``text`` (and ``text_pair`` for sentence-pair tasks) hold the text, ``label`` the label.
  Labels are read as strings (JSON numbers and booleans as written: ``1``, ``true``); classes are the
  training split's label values, in numeric order when all are integers, else sorted.
* Relative paths are relative to the working directory of the run.

Refused with a `ConfigError` (exit 2) naming the field, the file and the column: a missing file, an
empty file, a missing column, a row without a value in a named column, and a label set that differs
between train and dev. Nothing here imports torch: the CLI runs these checks before a run starts.
"""
from __future__ import annotations

import csv
import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cl.datafiles import DataNotFoundError
from cl.errors import ConfigError

csv.field_size_limit(1 << 24)
NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_]*$"
SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}
DEFAULT_DEV_FRACTION = 0.2


def named_or_file(value) -> str:
    """The tag of an option that takes a built-in task's name or a `TextFile` (a pydantic `Discriminator`)."""
    return "name" if isinstance(value, str) else "file"


def entry_names(entries) -> list[str]:
    """The names in a list of built-in names and own-file definitions (`TextFile`s), in order."""
    return [entry if isinstance(entry, str) else entry.name for entry in entries]


def check_entries(entries, what: str, check_file, where: str) -> None:
    """Names must not repeat; each own-file entry passes `check_file(entry, where="<where>.<i>")` (preflight)."""
    names = entry_names(entries)
    if len(set(names)) != len(names):
        raise ValueError(f"{what} repeat: {names}")
    for i, entry in enumerate(entries):
        if not isinstance(entry, str) and check_file is not None:
            check_file(entry, where=f"{where}.{i}")


class TextFile(BaseModel):
    """A text task read from your own file(s): where the rows are and which columns hold what."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_PATTERN, description="the task's name in metrics and caches (a-z, 0-9, _)")
    path: Optional[str] = Field(None, description="one file, carved into train and dev (dev_fraction)")
    train: Optional[str] = Field(None, description="the training file (with dev; instead of path)")
    dev: Optional[str] = Field(None, description="the evaluation file (with train; instead of path)")
    dev_fraction: Optional[float] = Field(None, gt=0, lt=1, description="path: share of each label's rows "
                                                                        "carved off as dev (default 0.2)")
    split_seed: int = Field(0, description="path: which rows the carving puts into dev")
    format: Literal["auto", "csv", "tsv", "jsonl"] = Field("auto", description="auto = from the extension")
    text: str = Field("text", min_length=1, description="the column holding the text")
    text_pair: Optional[str] = Field(None, min_length=1, description="the second text of sentence-pair tasks")
    label: str = Field("label", min_length=1, description="the column holding the label")

    @model_validator(mode="after")
    def _files_and_columns(self):
        if self.path is None and (self.train is None or self.dev is None):
            raise ValueError(f"task {self.name!r}: give either path (one file, carved into train and dev) or "
                             "both train and dev")
        if self.path is not None and (self.train is not None or self.dev is not None):
            raise ValueError(f"task {self.name!r}: path (one file, carved) and train/dev (two files) exclude "
                             "each other; give one of them")
        if self.path is None and self.dev_fraction is not None:
            raise ValueError(f"task {self.name!r}: dev_fraction carves `path`; with train and dev files it does "
                             "not apply")
        if self.format == "auto":
            for file in self.files():
                if Path(file).suffix.lower() not in SUFFIXES:
                    raise ValueError(f"task {self.name!r}: format auto cannot tell the format of {file} from its "
                                     f"extension ({', '.join(SUFFIXES)}); set format: csv, tsv or jsonl")
        columns = [c for c in (self.text, self.text_pair, self.label) if c is not None]
        if len(set(columns)) != len(columns):
            raise ValueError(f"task {self.name!r}: text, text_pair and label must be different columns, "
                             f"got {columns}")
        return self

    def files(self) -> tuple[str, ...]:
        return (self.path,) if self.path is not None else (self.train, self.dev)

    def file_format(self, file: str) -> str:
        return self.format if self.format != "auto" else SUFFIXES[Path(file).suffix.lower()]

    def columns(self) -> tuple[str, ...]:
        return (self.text,) if self.text_pair is None else (self.text, self.text_pair)


@dataclass(frozen=True)
class Rows:
    """One split: texts (one or two segments) and raw label strings, and the file they came from."""

    texts: list[tuple[str, ...]]
    labels: list[str]
    file: Path


@dataclass(frozen=True)
class Loaded:
    train: Rows
    dev: Rows
    classes: Optional[tuple[str, ...]]       # the label values in class-index order; None = regression
    sha256: str                             # of the definition and the files' bytes (cache keys)


_CACHE: dict[tuple, Loaded] = {}


def load(task: TextFile, *, regression: bool = False, where: Optional[str] = None) -> Loaded:
    """Read and check `task`'s files (cached while the files are unchanged); `where` is the config path
    errors name (default: ``task '<name>'``)."""
    where = where or f"task {task.name!r}"
    paths = [Path(f).expanduser() for f in task.files()]
    for field, path in zip(("path",) if task.path is not None else ("train", "dev"), paths):
        if not path.is_file():
            raise DataNotFoundError(f"{where}.{field}: file {path.resolve()} does not exist (relative paths are "
                                    f"relative to the working directory, {Path.cwd()})")
    stats = tuple((str(p.resolve()), p.stat().st_mtime_ns, p.stat().st_size) for p in paths)
    key = (task.model_dump_json(), regression, stats)
    if key not in _CACHE:
        _CACHE[key] = _load(task, paths, regression, where)
    return _CACHE[key]


def _load(task: TextFile, paths: list[Path], regression: bool, where: str) -> Loaded:
    digest = hashlib.sha256(task.model_dump_json().encode())
    for path in paths:
        digest.update(path.read_bytes())
    if task.path is not None:
        train, dev = carve(read_rows(task, paths[0], where), task, regression, where)
    else:
        train, dev = (read_rows(task, p, where) for p in paths)
    if regression:
        for rows in (train, dev):
            for i, value in enumerate(rows.labels):
                try:
                    float(value)
                except ValueError:
                    raise ConfigError(f"{where}.label: {rows.file}: column {task.label!r} holds {value!r} (row "
                                      f"{i + 1}), not a number; a regression task needs numeric labels") from None
        return Loaded(train, dev, None, digest.hexdigest())
    seen_train, seen_dev = set(train.labels), set(dev.labels)
    if seen_train != seen_dev:
        files = f"{train.file} (train) and {dev.file} (dev)" if train.file != dev.file else \
            f"the train and dev splits carved from {train.file}"
        raise ConfigError(
            f"{where}.label: the label sets of {files} differ in column {task.label!r}: "
            f"only in train {sorted(seen_train - seen_dev)}, only in dev {sorted(seen_dev - seen_train)}. "
            "Every label must occur in both splits (a dev label the model never trained on cannot be scored; a "
            "training label dev lacks is never tested)")
    if len(seen_train) < 2:
        raise ConfigError(f"{where}.label: {train.file}: column {task.label!r} holds one label only "
                          f"({sorted(seen_train)}); a classification task needs at least two")
    return Loaded(train, dev, class_order(seen_train), digest.hexdigest())


def class_order(labels) -> tuple[str, ...]:
    """Integer labels in numeric order ('2' before '10'), anything else sorted as text."""
    try:
        return tuple(sorted(labels, key=int))
    except ValueError:
        return tuple(sorted(labels))


def label_text(raw) -> Optional[str]:
    """A value as the files' labels are compared: strings as they are, others as JSON writes them."""
    if raw is None:
        return None
    if isinstance(raw, str):
        return raw
    return json.dumps(raw)          # 1 → "1", true → "true", 0.5 → "0.5"


def read_rows(task: TextFile, path: Path, where: str) -> Rows:
    """The rows of one file; every named column must be there and hold a value in every row."""
    fmt = task.file_format(str(path))
    needed = (*task.columns(), task.label)
    records: list[tuple[int, dict]] = []
    with open(path, encoding="utf-8-sig", newline="") as handle:
        if fmt == "jsonl":
            header = None
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                if number == 1 and line.lstrip().startswith("["):
                    raise ConfigError(f"{where}: {path} is a JSON array; format jsonl reads one JSON object per "
                                      "line (JSON lines)")
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise ConfigError(f"{where}: {path}, line {number}: not a JSON object ({error.msg})") from None
                if not isinstance(record, dict):
                    raise ConfigError(f"{where}: {path}, line {number}: a JSON {type(record).__name__}, not an "
                                      "object with named columns")
                records.append((number, record))
        else:
            reader = csv.DictReader(handle, delimiter="," if fmt == "csv" else "\t",
                                    quoting=csv.QUOTE_MINIMAL if fmt == "csv" else csv.QUOTE_NONE)
            header = reader.fieldnames
            if header is None:
                raise ConfigError(f"{where}: {path} is empty: expected a header row naming the columns "
                                  f"({', '.join(needed)}) and at least one row")
            for record in reader:
                records.append((reader.line_num, record))
    if not records:
        raise ConfigError(f"{where}: {path} is empty: it has no rows" + (f" below its header ({', '.join(header)})"
                                                                         if header else ""))
    known = header if header is not None else sorted({k for _, r in records for k in r})
    for field, column in zip(("text", "text_pair", "label") if task.text_pair else ("text", "label"), needed):
        if column not in known:
            raise ConfigError(f"{where}.{field}: {path} has no column {column!r} (its columns: "
                              f"{', '.join(map(str, known))})")
    texts, labels = [], []
    for number, record in records:
        values = [label_text(record.get(c)) for c in needed]
        for column, value in zip(needed, values):
            if value is None or (column == task.label and not value.strip()):
                raise ConfigError(f"{where}: {path}, line {number}: no value in column {column!r}")
        texts.append(tuple(values[:-1]))
        labels.append(values[-1].strip())
    return Rows(texts, labels, path)


def carve(rows: Rows, task: TextFile, regression: bool, where: str) -> tuple[Rows, Rows]:
    """Train and dev from one file: `dev_fraction` of each label's rows (of all rows for regression) go to
    dev, chosen with `split_seed`; row order is kept within each split."""
    fraction = task.dev_fraction if task.dev_fraction is not None else DEFAULT_DEV_FRACTION
    groups: dict[str, list[int]] = {}
    for i, label in enumerate(rows.labels):
        groups.setdefault("" if regression else label, []).append(i)
    rng = random.Random(task.split_seed)
    dev_index: set[int] = set()
    for label, members in sorted(groups.items()):
        if len(members) < 2:
            raise ConfigError(f"{where}.label: {rows.file}: " + (
                f"label {label!r} (column {task.label!r}) has one row; carving train and dev needs at least "
                "two rows per label (or give train and dev files)" if not regression
                else "one row cannot be carved into train and dev"))
        n_dev = min(len(members) - 1, max(1, round(fraction * len(members))))
        dev_index.update(rng.sample(members, n_dev))
    pick = lambda keep: Rows([t for i, t in enumerate(rows.texts) if keep(i)],  # noqa: E731
                             [lab for i, lab in enumerate(rows.labels) if keep(i)], rows.file)
    return pick(lambda i: i not in dev_index), pick(lambda i: i in dev_index)


def describe(loaded: Loaded) -> dict[str, str]:
    """What a run read, for its params."""
    out = {"train_file": str(loaded.train.file), "dev_file": str(loaded.dev.file),
           "train_rows": str(len(loaded.train.labels)), "dev_rows": str(len(loaded.dev.labels)),
           "sha256": loaded.sha256[:16]}
    if loaded.classes is not None:
        out["labels"] = ",".join(loaded.classes)
    return out
