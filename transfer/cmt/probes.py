"""Reading probes (issue #30): where does a memory model's answer come from?

The same questions about held-out documents — disjoint from the training documents and the stream — are
answered four ways, each scored by the QA loss (teacher-forced cross-entropy of the answer tokens, as in
training) and by greedy answers' SQuAD EM/F1:

* ``right_bank``  — a bank of the held-out documents (each question's own among ``probe_documents``), the
  configured top-k: what streaming asks for;
* ``other_bank``  — a bank of as many *other* held-out documents, none of them the question's;
* ``empty_bank``  — no memory at all: the aggregator's attention has nothing to attend to (adds 0), so only
  its feed-forward acts on the question encoding (`CMT.attend` with ``None``);
* ``true_memory`` — the question's own document's K memory vectors fed to the aggregator directly, no
  retrieval and no distractor.

And one step before answering — does a memory hold its document at all? ``memory_doc_loss``: the LM loss of
each held-out document's own tokens behind a prefix made directly from its memory (``own``, the memory-aware
term's path), from another held-out document's memory (``other``), and with no prefix (``none``). own ≪ other
means the memories are document-specific; if then the QA conditions stay equal, the aggregator/QA path does not
use what the memory holds.

Reading works when right ≫ other ≈ empty and true ≥ right. right ≈ other ≈ empty means the answer comes
from the question path alone (memorised entity → answer, or the answer format's prior); true ≫ right means
reading works but retrieval fails; true ≈ empty means the memory carries nothing the prefix can use.
"""
from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from transfer.cmt.baselines import Harness
from transfer.cmt.data import QA, Document, lm_special_ids
from transfer.cmt.metrics import exact_match, f1
from transfer.cmt.model import CMT
from transfer.cmt.frozen_lm import answer_text, greedy_generate, lm_forward

CONDITIONS = ("right_bank", "other_bank", "empty_bank", "true_memory")


@dataclass(frozen=True)
class ProbeSet:
    """The held-out documents of the probes: ``documents`` (their questions are asked) and ``others`` (the
    distractor bank), and the questions (a fixed sample)."""
    documents: tuple[Document, ...]
    others: tuple[Document, ...]
    questions: tuple[QA, ...]

    @classmethod
    def split(cls, held_out: Sequence[Document], n: int, max_questions: int | None = None) -> "ProbeSet":
        if n < 1 or len(held_out) < 2 * n:
            raise ValueError(f"ProbeSet: {2 * n} held-out documents needed (n={n} per bank), got {len(held_out)}")
        documents, others = tuple(held_out[:n]), tuple(held_out[n:2 * n])
        questions = tuple(qa for d in documents for qa in d.qas)
        return cls(documents, others, questions if max_questions is None else questions[:max_questions])


@torch.no_grad()
def _memories(model: CMT, harness: Harness, documents: Sequence[Document]) -> tuple[torch.Tensor, torch.Tensor]:
    chunks = [harness.batch(documents[i:i + harness.eval_batch_size]).to(harness.device)
              for i in range(0, len(documents), harness.eval_batch_size)]
    parts = [model.compress(b.doc_enc_ids, b.doc_enc_mask) for b in chunks]
    return torch.cat([m for m, _ in parts]), torch.cat([k for _, k in parts])


@torch.no_grad()
def reading_probe(model: CMT, harness: Harness, probe: ProbeSet, *, predictions: list[dict] | None = None
                  ) -> dict[str, dict[str, float]]:
    """{condition: {"loss", "em", "f1"}} over ``probe.questions`` (EM/F1 in percent). Leaves the model's mode as
    it found it; changes no parameter and draws no random number. ``predictions``: a list that receives one record
    per question and condition (condition, doc_id, question, gold, prediction)."""
    was_training = model.training
    model.eval()
    try:
        banks = {"right_bank": _memories(model, harness, probe.documents),
                 "other_bank": _memories(model, harness, probe.others)}
        documents = {d.doc_id: d for d in probe.documents}
        eos, _ = lm_special_ids(harness.lm_tokenizer)
        sums = {c: {"loss": 0.0, "em": 0.0, "f1": 0.0} for c in CONDITIONS}
        count = 0
        for batch, qas in harness.question_batches(list(probe.questions), documents):
            batch = batch.to(harness.device)
            condition, query_keys = model.condition(batch.q_enc_ids, batch.q_enc_mask)
            own, _ = model.compress(batch.doc_enc_ids, batch.doc_enc_mask)          # (B, K, D)
            for name in CONDITIONS:
                if name in banks:
                    aggregated = model.aggregate(condition, query_keys, *banks[name])[0]
                elif name == "empty_bank":
                    aggregated = model.attend(condition, None)
                else:
                    aggregated = model.attend(condition, own[batch.doc_index])
                prefix = model.prefix(aggregated)
                loss = float(lm_forward(model.lm, prefix, batch.qa_lm_ids, batch.qa_lm_mask, batch.qa_lm_labels).loss)
                rows = greedy_generate(model.lm, prefix, batch.prompt_lm_ids, batch.prompt_lm_mask,
                                       max_new_tokens=harness.max_new_tokens, eos_token_id=eos)
                texts = [answer_text(harness.lm_tokenizer, row) for row in rows]
                if predictions is not None:
                    predictions += [{"condition": name, "doc_id": qa.doc_id, "question": qa.question,
                                     "gold": qa.answer, "prediction": t} for qa, t in zip(qas, texts)]
                sums[name]["loss"] += loss * len(qas)
                sums[name]["em"] += 100.0 * sum(exact_match(t, qa.accepted) for t, qa in zip(texts, qas))
                sums[name]["f1"] += 100.0 * sum(f1(t, qa.accepted) for t, qa in zip(texts, qas))
            count += len(qas)
        sums["memory_doc_loss"] = _reconstruction(model, harness, probe.documents)
    finally:
        model.train(was_training)
    return {name: {k: v / (count if name in CONDITIONS else 1) for k, v in values.items()}
            for name, values in sums.items()}


@torch.no_grad()
def _reconstruction(model: CMT, harness: Harness, documents: Sequence[Document]) -> dict[str, float]:
    """Mean LM loss of the documents' tokens behind their own memory, another document's (the next one's, cyclic)
    and no prefix."""
    batch = harness.batch(documents).to(harness.device)
    memory, _ = model.compress(batch.doc_enc_ids, batch.doc_enc_mask)
    args = (batch.doc_lm_ids, batch.doc_lm_mask, batch.doc_lm_labels)
    return {"own": float(lm_forward(model.lm, model.prefix(memory), *args).loss),
            "other": float(lm_forward(model.lm, model.prefix(memory.roll(1, dims=0)), *args).loss),
            "none": float(lm_forward(model.lm, None, *args).loss)}


def as_metrics(result: dict[str, dict[str, float]], prefix: str = "probe/") -> dict[str, float]:
    """``probe/right_bank_f1``, ``probe/empty_bank_loss``, …"""
    return {f"{prefix}{name}_{key}": value for name, values in result.items() for key, value in values.items()}


def table(rows: Sequence[tuple[int, dict[str, dict[str, float]]]]) -> str:
    """CSV: one row per probed training step, columns ``<condition>_<loss|em|f1>``."""
    out = io.StringIO()
    fields = ["step"] + list(dict.fromkeys(k.removeprefix("probe/") for _, r in rows for k in as_metrics(r)))
    writer = csv.DictWriter(out, fieldnames=fields)
    writer.writeheader()
    for step, result in rows:
        values = {k.removeprefix("probe/"): round(v, 4) for k, v in as_metrics(result).items()}
        writer.writerow({"step": step, **values})
    return out.getvalue()


def format_table(result: dict[str, dict[str, float]]) -> str:
    """The final probe as an aligned text table (for logs and benchmarks)."""
    lines = [f"{'condition':<12}{'QA loss':>9}{'EM':>7}{'F1':>7}"]
    lines += [f"{name:<12}{result[name]['loss']:>9.3f}{result[name]['em']:>7.1f}{result[name]['f1']:>7.1f}"
              for name in CONDITIONS]
    if "memory_doc_loss" in result:
        lines.append("document LM loss behind its own memory / another's / none: "
                     + " / ".join(f"{result['memory_doc_loss'][k]:.3f}" for k in ("own", "other", "none")))
    return "\n".join(lines)
