"""Skills for SkillPacks: offline text tasks cast as instruction following, and a synthetic one.

A skill is a list of (prompt, answer) pairs; the answer is a short word or number the model
must produce after the prompt. The "source" whose responses the target learns (GraftLLM's
capability transfer) is, here, the dataset's own labeller: the responses are the gold
labels, written as words.

========== =================================================== ===============================
skill      data                                                answers
========== =================================================== ===============================
sentiment  SST-2 sentence level (text/sst2_sentence_level)     positive / negative
qtype      TREC coarse question classes (text/trec)            abbreviation, description, entity,
                                                               person, location, number
paraphrase MRPC (text/glue/MRPC)                               yes / no
arithmetic synthetic two-number addition, seeded               the sum, e.g. 82
========== =================================================== ===============================

A skill may also come from your own CSV / TSV / JSON-lines file (`transfer.skillpack.params.FileSkill`,
read by `transfer.common.textfiles`): each row's text fills the skill's prompt template and its label —
or the word ``answers`` maps it to — is the answer; the file's dev split is the skill's test split.

Scoring: greedy decoding of a few tokens; an answer is right when the generated text,
stripped and lower-cased, starts with the expected answer (`exact_first_word`). So answers must
not be prefixes of one another ("no" / "not sure"): an own-file skill whose answers are is refused.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from cl.datafiles import DataNotFoundError, resolve_data_root
from cl.errors import ConfigError

SKILLS = ("sentiment", "qtype", "paraphrase", "arithmetic")
TREC_CLASSES = {"ABBR": "abbreviation", "DESC": "description", "ENTY": "entity", "HUM": "person",
                "LOC": "location", "NUM": "number"}


@dataclass(frozen=True)
class Example:
    prompt: str
    answer: str


def _text_root(data_root: str | None) -> Path:
    root = resolve_data_root(data_root)
    for candidate in (root / "text", root):
        if (candidate / "trec").is_dir() or (candidate / "sst2_sentence_level").is_dir():
            return candidate
    raise DataNotFoundError(f"transfer.data_root: the offline text tasks are not under {root.resolve()}: expected "
                            "<root>/text/{trec,sst2_sentence_level,glue}. Set transfer.data_root or "
                            "$CLSUITE_DATA_ROOT to the folder that holds text/.")


def sentiment(split: str, data_root: str | None) -> list[Example]:
    path = _text_root(data_root) / "sst2_sentence_level" / f"stsa.binary.{split}"
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        label, _, text = line.partition(" ")
        if label in ("0", "1") and text:
            out.append(Example(f"Is the sentiment of this review positive or negative?\nReview: {text}\nAnswer:",
                               "positive" if label == "1" else "negative"))
    return out


def qtype(split: str, data_root: str | None) -> list[Example]:
    path = _text_root(data_root) / "trec" / f"{split}.txt"
    out = []
    for line in path.read_text(encoding="latin-1").splitlines():
        label, _, question = line.partition(" ")
        coarse = label.split(":")[0]
        if coarse in TREC_CLASSES:
            out.append(Example("What kind of answer does this question ask for (abbreviation, description, entity, "
                               f"person, location or number)?\nQuestion: {question}\nAnswer:", TREC_CLASSES[coarse]))
    return out


def paraphrase(split: str, data_root: str | None) -> list[Example]:
    from transfer.common import glue

    data = glue.load_split("mrpc", {"train": "train", "test": "dev"}[split], data_root)
    return [Example(f"Do these two sentences mean the same thing? Answer yes or no.\nA: {a}\nB: {b}\nAnswer:",
                    "yes" if label == 1 else "no") for (a, b), label in zip(data.texts, data.labels)]


def arithmetic(split: str, data_root: str | None = None, n: int = 2000) -> list[Example]:
    """Sums of two numbers below 100; train and test are disjoint pairs (seeded)."""
    pairs = [(a, b) for a in range(100) for b in range(100)]
    random.Random(1234).shuffle(pairs)
    chosen = pairs[:n] if split == "train" else pairs[n:2 * n]
    return [Example(f"What is {a} + {b}?\nAnswer:", str(a + b)) for a, b in chosen]


LOADERS = {"sentiment": sentiment, "qtype": qtype, "paraphrase": paraphrase, "arithmetic": arithmetic}
Skill = Union[str, Any]         # a built-in name, or an own-file skill (transfer.skillpack.params.FileSkill)


def skill_name(skill: Skill) -> str:
    return skill if isinstance(skill, str) else skill.name


def check_file_skill(skill, where: Optional[str] = None) -> dict[str, str]:
    """Read and check an own-file skill's files; returns label → answer. Refuses (ConfigError) answers that
    are prefixes of one another, and an `answers` map that misses a label of the file or names one it lacks."""
    from transfer.common import textfiles

    where = where or f"skill {skill.name!r}"
    loaded = textfiles.load(skill, where=where)
    if skill.answers is None:
        answers = {label: label for label in loaded.classes}
    else:
        missing = [c for c in loaded.classes if c not in skill.answers]
        extra = [k for k in skill.answers if k not in loaded.classes]
        if missing or extra:
            raise ConfigError(f"{where}.answers: must map exactly the labels of {loaded.train.file} (column "
                              f"{skill.label!r}: {list(loaded.classes)}); missing {missing}, not in the file {extra}")
        answers = {label: skill.answers[label].strip() for label in loaded.classes}
    words = sorted(answers.values(), key=str.lower)
    for a in words:
        for b in words:
            if a != b and b.lower().startswith(a.lower()):
                raise ConfigError(f"{where}.answers: answer {a!r} is a prefix of {b!r}, so a reply {b!r} would "
                                  f"also count as {a!r}; map the labels of column {skill.label!r} to words that "
                                  "are not prefixes of each other (answers: {label: word})")
    return answers


def file_skill(skill, split: str) -> list[Example]:
    """The (prompt, answer) pairs of an own-file skill; `split` ``test`` is the file's dev split."""
    from transfer.common import textfiles

    answers = check_file_skill(skill)
    rows = getattr(textfiles.load(skill), {"train": "train", "test": "dev"}[split])
    template = skill.template()
    out = []
    for texts, label in zip(rows.texts, rows.labels):
        fill = {"{text}": texts[0], "{text_pair}": texts[-1], "{labels}": ", ".join(answers.values())}
        prompt = re.sub(r"\{text\}|\{text_pair\}|\{labels\}", lambda m: fill[m.group(0)], template)
        out.append(Example(prompt, answers[label]))
    return out


def load_skill(skill: Skill, split: str, *, data_root: str | None = None, n: int | None = None,
               seed: int = 0) -> list[Example]:
    """`split` is ``train`` or ``test``; `n` examples drawn at random with `seed` (all when None)."""
    if split not in ("train", "test"):
        raise ValueError(f"split {split!r}: expected 'train' or 'test'")
    if not isinstance(skill, str):
        examples = file_skill(skill, split)
    elif skill not in LOADERS:
        raise ValueError(f"unknown skill {skill!r}; known: {list(LOADERS)}")
    else:
        examples = LOADERS[skill](split, data_root)
    if n is not None and n < len(examples):
        examples = random.Random(seed).sample(examples, n)
    return examples


def exact_first_word(generated: str, answer: str) -> bool:
    return generated.strip().lower().startswith(answer.lower())
