"""Small generated stand-ins for the offline text data, in the real files' layouts and formats.

On a clone without ``../shared/data`` the tests that need a data root read these instead, so every
code path from the file to the metric still runs (the numbers mean nothing). `write_offline_text`
writes what the ScaLearn and SkillPack experiments read under ``<root>/text/``: the six GLUE tasks
(``glue/<Task>/{train,dev}.tsv``, CoLA without a header as in GLUE), SST-2 sentence level
(``sst2_sentence_level/stsa.binary.{train,dev,test}``) and TREC (``trec/{train,test}.txt``).
"""
from __future__ import annotations

import random
from pathlib import Path

WORDS = ("good bad film plot actor scene music story slow fast warm cold bright dark long short happy sad "
         "river town city house road tree bird dog cat car").split()


def _sentence(rng: random.Random, n: int = 6) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def write_glue(root: Path, rows: int = 24, seed: int = 0) -> Path:
    """``<root>/text/glue/<Task>/{train,dev}.tsv`` for every task of `transfer.common.glue.TASKS`."""
    from transfer.common.glue import TASKS

    rng = random.Random(seed)
    base = root / "text" / "glue"
    for spec in TASKS.values():
        folder = base / spec.folder
        folder.mkdir(parents=True, exist_ok=True)
        for split in ("train", "dev"):
            lines = []
            if spec.header:
                lines.append("\t".join([*spec.text_columns, spec.label_column]))
            for i in range(rows):
                label = f"{rng.uniform(0, 5):.3f}" if spec.labels is None else spec.labels[i % len(spec.labels)]
                texts = [_sentence(rng) for _ in spec.text_columns]
                if spec.header:
                    lines.append("\t".join([*texts, label]))
                else:                       # CoLA: source, label, original label, sentence
                    lines.append("\t".join(["src", label, "", texts[0]]))
            (folder / f"{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return base


def write_offline_text(root: Path, rows: int = 24, seed: int = 0) -> Path:
    """Everything under ``<root>/text/`` the transfer experiments read; returns `root` (a data root)."""
    from transfer.skillpack.skills import TREC_CLASSES

    write_glue(root, rows, seed)
    rng = random.Random(seed + 1)
    sst = root / "text" / "sst2_sentence_level"
    sst.mkdir(parents=True, exist_ok=True)
    for split in ("train", "dev", "test"):
        sst.joinpath(f"stsa.binary.{split}").write_text(
            "".join(f"{i % 2} {_sentence(rng).lower()}\n" for i in range(rows)), encoding="utf-8")
    trec = root / "text" / "trec"
    trec.mkdir(parents=True, exist_ok=True)
    coarse = list(TREC_CLASSES)
    for split in ("train", "test"):
        trec.joinpath(f"{split}.txt").write_text(
            "".join(f"{coarse[i % len(coarse)]}:other What {_sentence(rng).lower()[:-1]} ?\n" for i in range(rows)),
            encoding="latin-1")
    return root
