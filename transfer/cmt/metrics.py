"""Exact match and F1 for extractive / generative QA, with SQuAD's official answer normalisation.

The normalisation is the one of the official SQuAD v1.1 evaluation script (Rajpurkar et al.,
2016, ``evaluate-v1.1.py``), which MAC (Tack et al., jihoontack/MAC, ``utils.py``) and CMT
(Li et al., AAAI 2025, arXiv 2412.07393) report with:

    lower-case → drop every ``string.punctuation`` character → drop the whole words
    ``a``, ``an``, ``the`` → collapse whitespace.

* ``exact_match`` — 1.0 when the normalised prediction equals a normalised gold answer.
* ``f1`` — token-level F1 between the normalised prediction and a gold answer (bag of
  tokens, counts clipped by ``Counter`` intersection); 0 when nothing is shared.
* With several gold answers both take the maximum over them (the official script's
  ``metric_max_over_ground_truths``).

Deviation note (MAC's, not ours): MAC's own ``exact_match`` defaults to ``match_length=False``,
which truncates the normalised prediction to the gold answer's length — a *prefix* match that
forgives whatever a greedy decoder writes after the answer. We score the official full match by
default and offer MAC's variant as ``prefix=True`` so both can be reported and compared.
"""
from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterable, Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD v1.1 official normalisation: lower, strip punctuation, strip articles, fix whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _golds(gold: str | Iterable[str]) -> list[str]:
    golds = [gold] if isinstance(gold, str) else list(gold)
    if not golds:
        raise ValueError("gold answers: got an empty list; give at least one reference answer")
    return golds


def exact_match(prediction: str, gold: str | Iterable[str], *, prefix: bool = False) -> float:
    """1.0 if the normalised prediction equals a normalised gold answer (max over several golds).

    ``prefix=True`` is MAC's variant: the normalised prediction is first cut to the gold's length.
    """
    pred = normalize_answer(prediction)
    for answer in _golds(gold):
        truth = normalize_answer(answer)
        if (pred[:len(truth)] if prefix else pred) == truth:
            return 1.0
    return 0.0


def _f1_one(prediction_tokens: list[str], truth_tokens: list[str]) -> float:
    common = Counter(prediction_tokens) & Counter(truth_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(prediction_tokens)
    recall = same / len(truth_tokens)
    return 2 * precision * recall / (precision + recall)


def f1(prediction: str, gold: str | Iterable[str]) -> float:
    """Token F1 of the normalised strings (max over several golds), as the official SQuAD script."""
    pred_tokens = normalize_answer(prediction).split()
    return max(_f1_one(pred_tokens, normalize_answer(answer).split()) for answer in _golds(gold))


def qa_scores(predictions: Sequence[str], golds: Sequence[str | Iterable[str]], *,
              prefix_em: bool = False) -> dict[str, float]:
    """Mean EM and F1 in percent over paired predictions and gold answers."""
    if len(predictions) != len(golds):
        raise ValueError(f"predictions ({len(predictions)}) and golds ({len(golds)}) must pair one to one")
    if not predictions:
        raise ValueError("predictions: got none; score at least one question")
    em = sum(exact_match(p, g, prefix=prefix_em) for p, g in zip(predictions, golds))
    f = sum(f1(p, g) for p, g in zip(predictions, golds))
    return {"em": 100.0 * em / len(predictions), "f1": 100.0 * f / len(predictions)}
