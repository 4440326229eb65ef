"""One harness for CMT and its baselines: train, stream documents, answer, score alike.

Every method below is driven the same way by `transfer.cmt.experiment` (and by tests):
``fit(training documents)`` once, ``observe(stream batch)`` for each batch of the stream, and
``answer(batch)`` for a `CMTBatch` of questions at any point. All of them answer with the same
prompt (`Harness.prompt`: ``QUESTION_TEMPLATE``, or the LM's chat template around the same
question; tokenised by `transfer.cmt.data.collate`; RAG adds its documents), the same greedy
decoding (`transfer.cmt.frozen_lm.greedy_generate`, ``max_new_tokens``, cut at the end-of-sequence token),
the same decoding to text, and are scored by `evaluate` with the same SQuAD EM/F1
(`transfer.cmt.metrics`). The frozen base LM is shared by all and changed by none.

Answers are the first line of what was generated (`transfer.cmt.frozen_lm.answer_text`), for every method.
Closed-book, RAG and online fine-tuning never learn the answer format (CMT and MAC do, from their QA
loss), so their prompt may carry solved examples from the training split first (``fewshot``;
`PromptFormat.demonstrations`): without them SmolLM2-135M-Instruct answers in sentences or not at all.

Methods (the issue's baseline list; ours where the papers leave room):

* `CMTMemory` — CMT (`transfer.cmt.model.CMT`): ``fit`` trains the memory modules on the training
  split (weighted QA / self-matching / memory-aware loss, AdamW, a fixed number of steps over
  shuffled batches of documents; or on fresh documents every step, optionally after a curriculum:
  ``curriculum_steps`` steps with the QA prefix made from each question's own document's memory —
  1-fact documents for the first half, full ones for the second — then the normal objective with the
  batch as the bank; resumable from the run's checkpoints), ``observe`` compresses the batch into the append-only bank,
  ``answer`` aggregates the (top-k) bank into a prefix. **MAC-style** is this same class with a
  `CMTConfig` of ``top_k=None, self_match_weight=0, memory_aware_weight=0`` (full-bank
  aggregation, QA loss only), as in MAC; there is no separate code for it.
* `ClosedBook` — the frozen LM and the question alone; nothing is trained or stored. The floor:
  what the LM knows (or guesses) without the documents.
* `RetrievalInContext` — RAG: every streamed document is embedded (the memory encoder *as
  pretrained* — all-MiniLM-L6-v2, or the tests' tiny random BERT — mean-pooled over real tokens
  and L2-normalised, as sentence-transformers does for MiniLM) and kept as raw text; a question
  is embedded alike and the ``top_k`` most cosine-similar documents go, raw, into the prompt
  before it (best last, nearest the question; each cut to ``max_doc_tokens`` LM tokens; separated
  by a blank line; with the chat prompt, inside the user turn). Nothing is trained. Its "bank" costs the documents' UTF-8 bytes plus one fp32 embedding each.
* `OnlineFineTuning` — a *copy* of the LM (the shared frozen one is never given to an
  optimiser) is fine-tuned on each stream batch's documents with the LM loss (every document
  token), ``steps_per_batch`` AdamW steps per batch (MAC's "uniform" online fine-tuning
  baseline), then answers closed-book. Optional (ours, off by default): ``qa_steps`` steps of
  QA fine-tuning of the copy on the training split before the stream, so it learns the answer
  format the way CMT's QA loss does (CaMeLS/MAC start their online fine-tuning from a
  QA-tuned LM).
"""
from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F
from transformers import get_linear_schedule_with_warmup

from transfer.cmt.model import CMT, make_optimizer, train_steps
from transfer.cmt.frozen_lm import answer_text, greedy_generate, lm_forward
from transfer.cmt.data import QA, CMTBatch, Document, PromptFormat, collate, lm_special_ids
from transfer.cmt.metrics import exact_match, qa_scores

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- shared settings

@dataclass(frozen=True)
class Harness:
    """Tokenisers and lengths every method shares: how batches are built and answers decoded."""
    enc_tokenizer: object
    lm_tokenizer: object
    max_doc_tokens: int = 256
    max_question_tokens: int = 64
    max_answer_tokens: int = 16
    max_new_tokens: int = 12
    eval_batch_size: int = 16
    device: str = "cpu"
    prompt: PromptFormat = PromptFormat()

    def __post_init__(self):
        for name in ("max_doc_tokens", "max_question_tokens", "max_answer_tokens", "max_new_tokens",
                     "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"Harness.{name} must be >= 1, got {getattr(self, name)}")

    def batch(self, documents: Sequence[Document]) -> CMTBatch:
        return collate(documents, self.enc_tokenizer, self.lm_tokenizer, max_doc_tokens=self.max_doc_tokens,
                       max_question_tokens=self.max_question_tokens, max_answer_tokens=self.max_answer_tokens,
                       prompt=self.prompt)

    def question_batches(self, questions: Sequence[QA], documents: dict[str, Document]
                         ) -> Iterator[tuple[CMTBatch, list[QA]]]:
        """``questions`` in chunks of ``eval_batch_size``, each collated with its source documents.

        Yields (batch, the chunk's questions in the batch's row order).
        """
        for start in range(0, len(questions), self.eval_batch_size):
            chunk = questions[start:start + self.eval_batch_size]
            grouped: dict[str, list[QA]] = {}
            for qa in chunk:
                if qa.doc_id not in documents:
                    raise KeyError(f"question {qa.question!r}: its document {qa.doc_id!r} is unknown")
                grouped.setdefault(qa.doc_id, []).append(qa)
            docs = [Document(d, documents[d].text, tuple(qas), documents[d].topic) for d, qas in grouped.items()]
            yield self.batch(docs), [qa for doc in docs for qa in doc.qas]

    def decode(self, rows: list[list[int]]) -> list[str]:
        return [answer_text(self.lm_tokenizer, row) for row in rows]

    def generate(self, lm, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, prefix=None) -> list[str]:
        eos, _ = lm_special_ids(self.lm_tokenizer)
        rows = greedy_generate(lm, prefix, prompt_ids.to(self.device), prompt_mask.to(self.device),
                               max_new_tokens=self.max_new_tokens, eos_token_id=eos)
        return self.decode(rows)


@dataclass
class Answers:
    texts: list[str]
    top_doc_ids: list[str] | None = None     # the best-scoring stored document per question (retrieval methods)


def _left_pad(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, rows))
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], dtype=torch.long)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], dtype=torch.long)
    return ids, mask


def _epoch_batches(n: int, batch_documents: int, steps: int, seed: int) -> Iterator[list[int]]:
    """``steps`` lists of document indices: shuffled epochs cut into batches (no repeats inside a batch)."""
    rng = np.random.default_rng(seed)
    size = min(batch_documents, n)
    done = 0
    while done < steps:
        order = rng.permutation(n)
        for start in range(0, n - size + 1, size):
            if done == steps:
                return
            yield order[start:start + size].tolist()
            done += 1


# --------------------------------------------------------------------------- the methods

class StreamingMethod:
    """The harness's interface (see the module docstring)."""
    name = "method"

    def fit(self, documents: Sequence[Document], on_step: Callable[[int, dict[str, float]], None] | None = None
            ) -> list[dict[str, float]]:
        return []

    def observe(self, documents: Sequence[Document]) -> None:
        pass

    def answer(self, batch: CMTBatch) -> Answers:
        raise NotImplementedError

    def trainable_parameters(self) -> int:
        return 0

    def bank_bytes_per_document(self) -> float:
        return 0.0


class CMTMemory(StreamingMethod):
    """CMT (or, with MAC's config, MAC) in the harness."""
    name = "cmt"

    def __init__(self, model: CMT, harness: Harness, *, steps: int, batch_documents: int, lr: float,
                 seed: int = 0, max_grad_norm: float | None = 1.0, warmup_steps: int = 0,
                 encoder_lr: float | None = None, fresh: Callable[..., list[Document]] | None = None,
                 curriculum_steps: int = 0):
        if steps < 0 or batch_documents < 1:
            raise ValueError(f"CMTMemory: steps must be >= 0 and batch_documents >= 1, got {steps}, "
                             f"{batch_documents}")
        self.model, self.harness = model.to(harness.device), harness
        self.steps, self.batch_documents, self.lr, self.seed = steps, batch_documents, lr, seed
        self.max_grad_norm, self.warmup_steps, self.encoder_lr = max_grad_norm, warmup_steps, encoder_lr
        self.fresh = fresh          # step -> that step's documents (issue #30), instead of epochs over a pool
        self.curriculum_steps = curriculum_steps
        self.notes: dict = {}       # plain data a caller keeps with the training state (checkpointed, restored)
        self.bank = model.new_bank()

    def training_batches(self, documents: Sequence[Document]) -> Callable[[int], list[Document]]:
        """step -> the step's documents: fresh ones, or the pool's shuffled epochs (fixed by the seed, so the data
        position of a resumed run is its step alone)."""
        if self.fresh is not None:
            if not self.curriculum_steps:
                return self.fresh
            return lambda step: self.fresh(step, 1 if step < self.curriculum_steps // 2 else None)
        if len(documents) < 2 and self.model.config.self_match_weight:
            raise ValueError("CMTMemory.fit: self-matching needs at least 2 training documents per batch")
        order = list(_epoch_batches(len(documents), self.batch_documents, self.steps, self.seed))
        return lambda step: [documents[i] for i in order[step]]

    def fit(self, documents, on_step=None, *, ctx=None, checkpoint_every: int = 50, on_start=None):
        """Train ``steps`` steps; with ``ctx`` (a `cl.transfer_run.TransferContext`) resume from the run's last
        checkpoint and save one every ``checkpoint_every`` steps (trainable modules, optimiser, schedule, the
        step — which fixes the data position — and the loss history). ``on_step(step, terms)`` runs before the
        step's checkpoint; ``on_start()`` before the first step of a fresh (not resumed) training."""
        if self.steps == 0:
            return []
        batch_at = self.training_batches(documents)
        optimizer = make_optimizer(self.model, lr=self.lr, encoder_lr=self.encoder_lr)
        # Linear warm-up then linear decay to 0 (ours: neither paper fixes a schedule; at a constant lr 1e-3 training
        # diverged after ~200 steps on SmolLM2); warmup_steps 0 keeps the lr constant.
        schedule = (get_linear_schedule_with_warmup(optimizer, self.warmup_steps, self.steps)
                    if self.warmup_steps else None)
        history: list[dict[str, float]] = []
        start = 0
        state = ctx.resume() if ctx is not None else None
        if state is not None:
            missing = self.model.load_state_dict(state["model"], strict=False).missing_keys
            lost = [k for k in missing if not k.startswith("lm.") and k in dict(self.model.named_parameters())
                    and self.model.get_parameter(k).requires_grad]
            if lost:
                raise RuntimeError(f"CMT checkpoint lacks trainable parameters {lost[:3]}: written by other options?")
            optimizer.load_state_dict(state["optimizer"])
            if schedule is not None:
                schedule.load_state_dict(state["schedule"])
            start, history = int(state["step"]), [dict(h) for h in state["history"]]
            self.notes = state["notes"]
            log.info("CMT training resumed at step %d of %d", start, self.steps)
        elif on_start is not None:
            on_start()
        for step in range(start, self.steps):
            batch = self.harness.batch(batch_at(step)).to(self.harness.device)
            terms = train_steps(self.model, [batch], optimizer, max_grad_norm=self.max_grad_norm,
                                true_memory=step < self.curriculum_steps)[0]
            if schedule is not None:
                schedule.step()
            if not np.isfinite(terms["total"]):
                from cl.errors import NonFiniteLossError

                raise NonFiniteLossError(f"CMT training: loss {terms} at step {step}; lower transfer.lr")
            history.append(terms)
            if on_step is not None:
                on_step(step, terms)
            if ctx is not None:
                ctx.checkpoint(step + 1, lambda: {
                    "step": step + 1, "model": self.model.checkpoint_state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "schedule": schedule.state_dict() if schedule is not None else None,
                    "history": history, "notes": self.notes}, every=checkpoint_every)
        self.model.eval()
        return history

    def observe(self, documents):
        self.model.write(self.bank, self.harness.batch(documents).to(self.harness.device))

    @torch.no_grad()
    def answer(self, batch):
        texts, best = self.model.answer_with_sources(self.bank, batch, self.harness.lm_tokenizer,
                                                     max_new_tokens=self.harness.max_new_tokens)
        ids = self.bank.doc_ids
        return Answers(texts, [ids[i] for i in best])

    def trainable_parameters(self):
        return sum(p.numel() for p in self.model.trainable_parameters())

    def bank_bytes_per_document(self):
        return float(self.bank.bytes_per_document)


class ClosedBook(StreamingMethod):
    """The frozen LM answers from the question alone."""
    name = "closed_book"

    def __init__(self, lm, harness: Harness):
        self.lm, self.harness = lm, harness

    def answer(self, batch):
        return Answers(self.harness.generate(self.lm, batch.prompt_lm_ids, batch.prompt_lm_mask))


class MeanPooledEncoder:
    """Sentence embeddings: the encoder's last hidden states averaged over real tokens, L2-normalised."""

    def __init__(self, encoder, tokenizer, *, max_tokens: int = 256, batch_size: int = 32, device: str = "cpu"):
        self.encoder, self.tokenizer = encoder.to(device).eval(), tokenizer
        self.max_tokens, self.batch_size, self.device = max_tokens, batch_size, device

    @torch.no_grad()
    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        out = []
        for start in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(list(texts[start:start + self.batch_size]), padding=True, truncation=True,
                                 max_length=self.max_tokens, return_tensors="pt")
            out.append(self.embed_tokens(enc["input_ids"], enc["attention_mask"]))
        return torch.cat(out)

    @torch.no_grad()
    def embed_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Already tokenised rows (right or left padded) → (N, D) unit vectors on the CPU."""
        input_ids, attention_mask = input_ids.to(self.device), attention_mask.to(self.device)
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return F.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0), dim=-1).cpu()


class RetrievalInContext(StreamingMethod):
    """RAG: the top-k raw documents by embedding similarity, in the prompt before the question."""
    name = "rag"

    def __init__(self, lm, harness: Harness, embedder: MeanPooledEncoder, *, top_k: int = 2):
        if top_k < 1:
            raise ValueError(f"RetrievalInContext: top_k must be >= 1, got {top_k}")
        self.lm, self.harness, self.embedder, self.top_k = lm, harness, embedder, top_k
        self.doc_ids: list[str] = []
        self.texts: list[str] = []
        self._context: list[str] = []            # each document cut to max_doc_tokens LM tokens
        self._embeddings: list[torch.Tensor] = []

    def observe(self, documents):
        tok = self.harness.lm_tokenizer
        self._embeddings.append(self.embedder([d.text for d in documents]))
        for doc in documents:
            self.doc_ids.append(doc.doc_id)
            self.texts.append(doc.text)
            ids = tok(doc.text, add_special_tokens=False)["input_ids"]
            cut = ids[:self.harness.max_doc_tokens]
            self._context.append(doc.text if len(cut) == len(ids) else tok.decode(cut))

    def retrieve(self, question_embeddings: torch.Tensor) -> torch.Tensor:
        """(Q, k) indices of the stored documents, best first."""
        if not self.doc_ids:
            raise ValueError("RetrievalInContext: no documents stored yet; observe a stream batch first")
        scores = question_embeddings @ torch.cat(self._embeddings).T
        return scores.topk(min(self.top_k, len(self.doc_ids)), dim=1).indices

    def context(self, chosen: Sequence[int]) -> str:
        """The chosen documents (best first) as the prompt's context: best last, nearest the question."""
        return "\n\n".join(self._context[j] for j in reversed(list(chosen)))

    def answer(self, batch):
        if len(batch.questions) != batch.q_enc_ids.shape[0]:
            raise ValueError("RetrievalInContext.answer: the batch carries no question texts; build it with collate")
        index = self.retrieve(self.embedder.embed_tokens(batch.q_enc_ids, batch.q_enc_mask))
        tok = self.harness.lm_tokenizer
        rows = [tok(self.harness.prompt(question, self.context(chosen.tolist())), add_special_tokens=False)["input_ids"]
                for question, chosen in zip(batch.questions, index)]
        _, pad = lm_special_ids(tok)
        ids, mask = _left_pad(rows, pad)
        return Answers(self.harness.generate(self.lm, ids, mask), [self.doc_ids[int(i)] for i in index[:, 0]])

    def bank_bytes_per_document(self):
        if not self.doc_ids:
            return 0.0
        text = sum(len(t.encode("utf-8")) for t in self.texts) / len(self.texts)
        return float(text + self._embeddings[0].shape[1] * self._embeddings[0].element_size())


class OnlineFineTuning(StreamingMethod):
    """A copy of the LM fine-tuned on the streamed documents (LM loss), answering closed-book."""
    name = "online_ft"

    def __init__(self, lm, harness: Harness, *, lr: float, steps_per_batch: int = 1, qa_steps: int = 0,
                 qa_batch_documents: int = 4, seed: int = 0, max_grad_norm: float | None = 1.0):
        if lr <= 0 or steps_per_batch < 1 or qa_steps < 0:
            raise ValueError(f"OnlineFineTuning: lr > 0, steps_per_batch >= 1, qa_steps >= 0; got {lr}, "
                             f"{steps_per_batch}, {qa_steps}")
        self.base, self.harness = lm, harness
        self.lm = copy.deepcopy(lm).to(harness.device)          # the shared frozen LM is never trained
        self.lm.requires_grad_(True)
        self.lm.eval()
        self.optimizer = torch.optim.AdamW(self.lm.parameters(), lr=lr, weight_decay=0.0)
        self.steps_per_batch, self.qa_steps, self.qa_batch_documents = steps_per_batch, qa_steps, qa_batch_documents
        self.seed, self.max_grad_norm = seed, max_grad_norm

    def _step(self, ids, mask, labels) -> float:
        self.lm.train()
        loss = lm_forward(self.lm, None, ids.to(self.harness.device), mask.to(self.harness.device),
                          labels.to(self.harness.device)).loss
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.lm.parameters(), self.max_grad_norm)
        self.optimizer.step()
        self.lm.eval()
        value = float(loss.detach())
        if not np.isfinite(value):
            from cl.errors import NonFiniteLossError

            raise NonFiniteLossError(f"online fine-tuning: loss {value}; lower transfer.ft_lr")
        return value

    def fit(self, documents, on_step=None):
        history = []
        for step, index in enumerate(_epoch_batches(len(documents), self.qa_batch_documents, self.qa_steps,
                                                    self.seed)):
            batch = self.harness.batch([documents[i] for i in index])
            terms = {"qa": self._step(batch.qa_lm_ids, batch.qa_lm_mask, batch.qa_lm_labels)}
            history.append(terms)
            if on_step is not None:
                on_step(step, terms)
        return history

    def observe(self, documents):
        batch = self.harness.batch(documents)
        for _ in range(self.steps_per_batch):
            self._step(batch.doc_lm_ids, batch.doc_lm_mask, batch.doc_lm_labels)

    def answer(self, batch):
        return Answers(self.harness.generate(self.lm, batch.prompt_lm_ids, batch.prompt_lm_mask))

    def trainable_parameters(self):
        return sum(p.numel() for p in self.lm.parameters())


# --------------------------------------------------------------------------- scoring

@dataclass
class Evaluation:
    em: float
    f1: float
    em_prefix: float                      # MAC's prefix EM, for comparison with its tables
    retrieval_top1: float | None          # share of questions whose best-scoring document is their own
    records: list[dict]

    def metrics(self, prefix: str = "") -> dict[str, float]:
        out = {f"{prefix}em": self.em, f"{prefix}f1": self.f1, f"{prefix}em_prefix": self.em_prefix}
        if self.retrieval_top1 is not None:
            out[f"{prefix}retrieval_top1"] = self.retrieval_top1
        return out


def answer_all(method: StreamingMethod, harness: Harness, questions: Sequence[QA],
               documents: dict[str, Document]) -> list[dict]:
    """One record per question, in order: doc_id, question, gold, accepted (gold + alternatives), prediction,
    top_doc_id."""
    records = []
    for batch, qas in harness.question_batches(questions, documents):
        answers = method.answer(batch)
        if len(answers.texts) != len(qas):
            raise RuntimeError(f"{method.name}: {len(answers.texts)} answers for {len(qas)} questions")
        tops = answers.top_doc_ids or [None] * len(qas)
        records += [{"doc_id": qa.doc_id, "question": qa.question, "gold": qa.answer,
                     "accepted": list(qa.accepted), "prediction": text, "top_doc_id": top}
                    for qa, text, top in zip(qas, answers.texts, tops)]
    # question_batches groups a chunk by document: put the records back in the order asked
    position = {}
    for i, qa in enumerate(questions):
        position.setdefault((qa.doc_id, qa.question, qa.answer), []).append(i)
    ordered: list[dict] = [{}] * len(questions)
    for record in records:
        ordered[position[(record["doc_id"], record["question"], record["gold"])].pop(0)] = record
    return ordered


def score(records: Sequence[dict]) -> Evaluation:
    """EM / F1 / prefix EM in percent (SQuAD normalisation) and retrieval top-1 over answered records."""
    if not records:
        raise ValueError("score: no answered questions")
    predictions = [r["prediction"] for r in records]
    golds = [r.get("accepted") or r["gold"] for r in records]      # the best over every accepted answer
    scores = qa_scores(predictions, golds)
    prefix_em = 100.0 * sum(exact_match(p, g, prefix=True) for p, g in zip(predictions, golds)) / len(golds)
    hits = [r["top_doc_id"] == r["doc_id"] for r in records if r["top_doc_id"] is not None]
    return Evaluation(scores["em"], scores["f1"], prefix_em, 100.0 * float(np.mean(hits)) if hits else None,
                      list(records))


def evaluate(method: StreamingMethod, harness: Harness, questions: Sequence[QA],
             documents: dict[str, Document]) -> Evaluation:
    """Answer ``questions`` with ``method`` and score them (EM/F1 in percent, SQuAD normalisation)."""
    if not questions:
        raise ValueError("evaluate: no questions to answer")
    return score(answer_all(method, harness, questions, documents))
