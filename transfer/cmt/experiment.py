"""The CMT transfer experiment: train memory modules, stream documents, measure what the frozen LM can answer.

Registered as the transfer experiment ``cmt`` (options: `transfer.cmt.params.CMTTransferParams`;
the model: `transfer.cmt.model`; the baselines and the shared harness: `transfer.cmt.baselines`).
One run, whatever the ``method``:

1. **Documents** — synthetic streaming facts (`transfer.cmt.data.synthetic_facts`, generated
   with ``data_seed``) or the offline SQuAD subset (`squad_stream`, shuffled by ``data_seed``),
   split by `split_documents` into ``train_documents`` for training and ``stream_documents``
   for the stream, disjoint (for SQuAD: no article in common).
2. **Models** — the frozen LM (``tiny``: a 2-layer random Llama, always initialised with seed 0
   so every run shares one base LM, over a word-level vocabulary of the run's texts; or
   ``smollm2``) and the encoder (``tiny`` random BERT, or all-MiniLM-L6-v2). The LM's parameters
   are hashed (SHA-256 over names, shapes, dtypes and bytes) before anything else happens.
3. **Training** (cmt, mac; online_ft's optional QA warm-up) on the training split only — or, with
   ``train_data: fresh``, on new synthetic documents every step (`transfer.cmt.data.FreshDocuments`: none
   shares an invented name with the stream's or the probes' documents), optionally after a curriculum
   (``curriculum_steps``). cmt/mac training checkpoints every ``train_checkpoint_every`` steps through
   the run's context (trainable modules, optimiser, schedule, step = data position, loss history,
   probe rows) and a relaunched run resumes there, in the same MLflow run.
   **Reading probes** (`transfer.cmt.probes`, cmt/mac): ``2 × probe_documents`` further held-out
   documents; their questions answered with the right bank, a bank of other documents, an empty bank
   and the true document's memory, each scored by QA loss and F1 — logged as ``probe/<condition>_<loss|em|f1>``
   before training and every ``probe_every`` steps (step = training steps done) and after training;
   the table is the artifact ``cmt/probes.csv`` (``cmt/probes.txt``: the final one; the final answers:
   ``cmt/probe_predictions.jsonl``) and the final values are ``probe_<condition>_<loss|em|f1>``.
4. **Streaming** — the stream's documents arrive in batches of ``stream_batch_documents``; after
   the first batch, every ``checkpoint_every``-th and the last, two question sets are answered:
   the questions of *every document seen so far* (retention over the stream) and those of the
   *first batch* (how well the oldest knowledge survives). Each set is a fixed sample of at most
   ``eval_questions`` questions (seeded by ``data_seed``), so checkpoints and methods see the same
   questions. Logged as metric history with ``step`` = stream batches seen:
   ``retention/seen_em``, ``retention/seen_f1``, ``retention/first_em``, ``retention/first_f1``,
   ``retention/documents_seen``.
5. **The frozen-LM check** — the LM's hash is recomputed; if one bit changed the run raises
   (and is marked FAILED).

Final metrics: ``em``, ``f1`` (all stream questions after the whole stream, SQuAD EM/F1 in
percent), ``em_prefix`` (MAC's prefix EM), ``retrieval_top1`` (cmt/mac/rag: the share of
questions whose best-scoring stored document is their own), ``first_batch_em``/``_f1`` at the
end and ``first_batch_em_initial``/``_f1_initial`` right after the first batch,
``first_batch_f1_drop`` (initial − end), ``memory/bank_bytes_per_document`` (cmt/mac: K·D fp32
memory vectors + an E-dim retrieval key; rag: the raw UTF-8 text + one fp32 embedding; closed_book,
online_ft: 0),
``memory/bank_bytes``, ``memory/trainable_params`` (online_ft: the whole LM copy),
``memory/model_copy_bytes`` (online_ft), ``train_seconds``, ``stream_seconds``,
``eval_seconds``; for trained cmt/mac, ``train_docs_em``/``_f1``: the same scores on questions about *training*
documents (a fresh bank of as many training documents as the stream has), which tells "did not learn" from "does
not generalise". Training losses are logged per step as ``train/<term>``. Artifacts:
``cmt/predictions.jsonl`` (the final answers), ``cmt/retention.csv``, and for cmt/mac the bank
(``cmt/bank/memory.safetensors`` + ``manifest.json``). The tag ``cmt.lm_sha256`` names the base
LM. The run's ``train`` section is not used (the options above carry steps, lr and batch
sizes); its seed and device are.
"""
from __future__ import annotations

import contextlib
import copy
import csv
import io
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cl.transfer_run import TransferContext, single_thread
from transfer.common.language_models import bundled_minilm_path, fingerprint as lm_fingerprint, load_causal_lm
from transfer.cmt.model import CMT, CMTConfig
from transfer.cmt import probes as reading
from transfer.cmt.baselines import (
    ClosedBook,
    CMTMemory,
    Harness,
    MeanPooledEncoder,
    OnlineFineTuning,
    RetrievalInContext,
    StreamingMethod,
    answer_all,
    evaluate,
    score,
)
from transfer.cmt.data import (
    QA,
    FreshDocuments,
    capitalised_words,
    QUESTION_TEMPLATE,
    Document,
    PromptFormat,
    split_documents,
    squad_stream,
    stream_batches,
    synthetic_facts,
    word_tokenizer,
)

log = logging.getLogger(__name__)


class FrozenLMChanged(RuntimeError):
    """The base LM's parameters differ after the run: the one thing CMT promises never happens."""


# --------------------------------------------------------------------------- data and models

def load_documents(params) -> tuple[list[Document], list[Document]]:
    """(training split, stream split) for the run's options."""
    train, stream, _ = load_splits(params)
    return train, stream


def load_splits(params) -> tuple[list[Document], list[Document], list[Document]]:
    """(training split, stream split, held-out documents for the reading probes): all disjoint (SQuAD: the held-out
    ones share no article with the training split; there may be fewer than asked). Synthetic documents are one
    seeded sequence, so the training and stream splits do not depend on how many probe documents follow."""
    from cl.errors import ConfigError

    held = 2 * params.probe_documents if params.method in ("cmt", "mac") and params.train_steps else 0
    if params.dataset == "synthetic":
        documents = synthetic_facts(params.train_documents + params.stream_documents + held, seed=params.data_seed,
                                    facts_per_document=params.facts_per_document, answers=params.synthetic_answers)
    else:
        documents = squad_stream(data_root=params.data_root, seed=params.data_seed)
    try:
        train, stream = split_documents(documents, params.train_documents, params.stream_documents)
    except ValueError as error:
        raise ConfigError(f"transfer.stream_documents / transfer.train_documents: {error}; the {params.dataset} "
                          f"data holds {len(documents)} documents") from None
    taken = {d.doc_id for d in train + stream}
    topics = {d.topic for d in train if d.topic}
    rest = [d for d in documents if d.doc_id not in taken and not (d.topic and d.topic in topics)]
    return train, stream, rest[:held]


def fresh_documents(params, seed: int, reserved: list[Document]) -> FreshDocuments | None:
    """train_data 'fresh': every step's documents, none sharing an invented name with ``reserved``."""
    if params.train_data != "fresh" or params.method not in ("cmt", "mac"):
        return None
    return FreshDocuments(capitalised_words(reserved), seed=seed, batch_documents=params.train_batch_documents,
                          facts_per_document=params.facts_per_document, answers=params.synthetic_answers)


def _corpus(documents: list[Document]) -> list[str]:
    texts = [d.text for d in documents]
    texts += [QUESTION_TEMPLATE.format(question=qa.question) + " " + qa.answer for d in documents for qa in d.qas]
    return texts


def build_lm(params, documents: list[Document], cache_dir: Path):
    """(frozen LM in eval mode, its tokenizer)."""
    if params.lm == "smollm2":
        lm, tokenizer = load_causal_lm("smollm2", cache_dir)
    else:
        from transformers import LlamaConfig, LlamaForCausalLM

        tokenizer = word_tokenizer(_corpus(documents))
        with torch.random.fork_rng():
            torch.manual_seed(0)                         # one base LM for every run and seed
            lm = LlamaForCausalLM(LlamaConfig(
                vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                initializer_range=0.2, tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id))
    lm.requires_grad_(False)
    return lm.eval(), tokenizer


def encoder_tokenizer(params, documents: list[Document], lm_tokenizer):
    """The encoder's tokenizer: MiniLM's, or for the tiny encoder a word-level one (the tiny LM's if there is one)."""
    if params.encoder == "minilm":
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(bundled_minilm_path()))
    return lm_tokenizer if params.lm == "tiny" else word_tokenizer(_corpus(documents))


def build_encoder(params, tokenizer, lm=None):
    """A fresh encoder: all-MiniLM-L6-v2 as pretrained, or a 1-layer random BERT over ``tokenizer``'s vocabulary.

    With the tiny LM, the tiny encoder has the LM's width and its word embeddings are a *frozen copy* of
    the LM's (tied) token embeddings: one shared word space, as a pretrained LM and its own encoder would
    have, so unseen invented names look alike to the encoder on both sides (ours). Measured on synthetic
    facts (200 training documents, 600 steps, 64 streamed documents): the scorer ranks a question's own
    document first for 4% of the stream's questions without the shared table and 70% with it. The
    answers still do not transfer (EM 0 after 3,000 steps): a random frozen LM is not steered to words
    it never produced in training — the tiny models exercise the pipeline, they do not measure it.
    """
    if params.encoder == "minilm":
        from transformers import AutoModel

        return AutoModel.from_pretrained(str(bundled_minilm_path()))
    from transformers import BertConfig, BertModel

    shared = params.lm == "tiny" and lm is not None
    width = int(lm.config.hidden_size) if shared else 32
    encoder = BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=width, num_hidden_layers=1,
                                   num_attention_heads=2, intermediate_size=2 * width,
                                   max_position_embeddings=max(512, params.max_doc_tokens + 8),
                                   pad_token_id=tokenizer.pad_token_id), add_pooling_layer=False)
    if shared:
        table = encoder.embeddings.word_embeddings
        with torch.no_grad():
            table.weight.copy_(lm.get_input_embeddings().weight)
        table.weight.requires_grad_(False)
    return encoder


def cmt_config(params) -> CMTConfig:
    return CMTConfig(num_memory_tokens=params.num_memory_tokens, prefix_length=params.prefix_length,
                     num_heads=params.num_heads, num_aggregator_blocks=params.num_aggregator_blocks,
                     ff_hidden=params.ff_hidden, top_k=params.top_k, temperature=params.temperature,
                     qa_weight=params.qa_weight, self_match_weight=params.self_match_weight,
                     memory_aware_weight=params.memory_aware_weight, share_encoder=params.share_encoder,
                     train_encoder=params.train_encoder,
                     freeze_question_encoder=params.freeze_question_encoder)


def demonstrations(params, train_docs: list[Document]) -> tuple[tuple[str, str, str], ...]:
    """``fewshot`` solved examples for the methods that never learn the answer format: the first question of
    each of the first training documents (fixed by ``data_seed``, the same for every seed and method)."""
    if params.method not in ("closed_book", "rag", "online_ft") or not params.fewshot:
        return ()
    if len(train_docs) < params.fewshot:
        raise ValueError(f"transfer.fewshot={params.fewshot} needs as many training documents; "
                         f"train_documents gives {len(train_docs)}")
    return tuple((d.text, d.qas[0].question, d.qas[0].answer) for d in train_docs[:params.fewshot])


def build_harness(params, documents: list[Document], lm_tokenizer, *, shots: tuple = (), device: str = "cpu"
                  ) -> Harness:
    """The run's tokenisation, prompt format and generation settings, shared by every method."""
    return Harness(encoder_tokenizer(params, documents, lm_tokenizer), lm_tokenizer,
                   max_doc_tokens=params.max_doc_tokens,
                   # room for the demonstrations: collate keeps a prompt's last max_question_tokens tokens
                   max_question_tokens=params.max_question_tokens * (1 + len(shots))
                   + params.max_answer_tokens * len(shots),
                   max_answer_tokens=params.max_answer_tokens, max_new_tokens=params.max_new_tokens,
                   eval_batch_size=params.eval_batch_size, device=device,
                   prompt=PromptFormat(lm_tokenizer if params.prompt == "chat" else None, demonstrations=shots))


def build_method(params, lm, harness: Harness, seed: int, fresh: FreshDocuments | None = None) -> StreamingMethod:
    if params.method == "closed_book":
        return ClosedBook(lm, harness)
    if params.method == "online_ft":
        return OnlineFineTuning(lm, harness, lr=params.ft_lr, steps_per_batch=params.ft_steps_per_batch,
                                qa_steps=params.ft_qa_steps, qa_batch_documents=params.train_batch_documents,
                                seed=seed)
    encoder = build_encoder(params, harness.enc_tokenizer, lm)
    if params.method == "rag":
        return RetrievalInContext(lm, harness, MeanPooledEncoder(encoder, harness.enc_tokenizer,
                                                                 max_tokens=params.max_doc_tokens,
                                                                 device=harness.device),
                                  top_k=params.rag_top_k)
    batch_documents = params.train_batch_documents if fresh is not None \
        else min(params.train_batch_documents, params.train_documents)
    if params.method == "cmt" and params.top_k is not None and params.train_steps \
            and params.top_k >= batch_documents:
        log.warning("top_k=%d >= the %d documents of a training batch (the batch is the bank): training aggregates "
                    "every document, as top_k=None would; top-k only selects when answering from the stream",
                    params.top_k, batch_documents)
    model = CMT(lm, encoder, cmt_config(params))      # mac: the catalog has already set MAC's three options
    method = CMTMemory(model, harness, steps=params.train_steps, batch_documents=params.train_batch_documents,
                       lr=params.lr, seed=seed, warmup_steps=params.warmup_steps, encoder_lr=params.encoder_lr,
                       fresh=fresh, curriculum_steps=params.curriculum_steps)
    method.name = params.method
    return method


# --------------------------------------------------------------------------- evaluation sets

def checkpoint_batches(n_batches: int, every: int) -> list[int]:
    """1-based stream batches after which to evaluate: the first, every ``every``-th, and the last."""
    return sorted({1, n_batches, *range(every, n_batches + 1, every)})


def evaluation_order(stream: list[Document], seed: int) -> list[QA]:
    """Every stream question once, in a fixed seeded order (samples are prefixes of it)."""
    questions = [qa for doc in stream for qa in doc.qas]
    return [questions[i] for i in np.random.default_rng(seed).permutation(len(questions))]


def _sample(order: list[QA], doc_ids: set[str], limit: int | None) -> list[QA]:
    chosen = [qa for qa in order if qa.doc_id in doc_ids]
    return chosen if limit is None else chosen[:limit]


# --------------------------------------------------------------------------- the experiment

def run(ctx: TransferContext, params) -> dict[str, float]:
    tiny = params.lm == "tiny" and params.encoder == "tiny"
    with single_thread() if tiny else contextlib.nullcontext():
        return _run(ctx, params)


def _run(ctx: TransferContext, params) -> dict[str, float]:
    device = str(getattr(ctx, "device", None) or "cpu")
    train_docs, stream_docs, held_out = load_splits(params)
    fresh = fresh_documents(params, ctx.seed, stream_docs + held_out)
    every_doc = train_docs + stream_docs + held_out
    documents = {d.doc_id: d for d in every_doc}
    # the tiny models' word vocabularies are built from the run's texts: the fresh documents' words must be in them
    vocabulary = every_doc + ([d for step in range(params.train_steps) for d in fresh(step)]
                              if fresh is not None and "tiny" in (params.lm, params.encoder) else [])
    lm, lm_tokenizer = build_lm(params, vocabulary, ctx.cache_dir)
    lm.to(device)
    before = lm_fingerprint(lm)
    ctx.runlog.set_tags({"cmt.lm_sha256": before})
    harness = build_harness(params, vocabulary, lm_tokenizer, shots=demonstrations(params, train_docs), device=device)
    torch.manual_seed(ctx.seed)                        # the method's own initialisation
    method = build_method(params, lm, harness, ctx.seed, fresh)
    probe_set = None
    if isinstance(method, CMTMemory) and method.steps and params.probe_documents:
        if len(held_out) >= 2 * params.probe_documents:
            probe_set = reading.ProbeSet.split(held_out, params.probe_documents, params.eval_questions)
        else:
            log.warning("reading probes skipped: %d held-out documents left, %d needed (probe_documents=%d)",
                        len(held_out), 2 * params.probe_documents, params.probe_documents)

    batches = list(stream_batches(stream_docs, params.stream_batch_documents))
    checkpoints = checkpoint_batches(len(batches), params.checkpoint_every)
    total = len(batches) + 1
    ctx.runlog.progress(0, total, f"training {params.method}")

    started = time.perf_counter()
    log_every = max(1, params.train_steps // 200)

    def on_step(step: int, terms: dict[str, float]) -> None:
        if step % log_every == 0 or step == params.train_steps - 1:
            ctx.runlog.log_metrics({f"train/{k}": v for k, v in terms.items()}, step=step)
        if probe_set is not None and params.probe_every and (step + 1) % params.probe_every == 0 \
                and step + 1 < params.train_steps:
            run_probes(step + 1)

    def run_probes(step: int, predictions: list | None = None) -> dict:
        result = reading.reading_probe(method.model, harness, probe_set, predictions=predictions)
        ctx.runlog.log_metrics(reading.as_metrics(result), step=step)
        log.info("cmt %s: reading probes after %d steps:\n%s", params.method, step, reading.format_table(result))
        method.notes.setdefault("probes", []).append([step, result])     # checkpointed with the training state
        return result

    if isinstance(method, CMTMemory):
        history = method.fit(train_docs, on_step=on_step, ctx=ctx, checkpoint_every=params.train_checkpoint_every,
                             on_start=(lambda: run_probes(0)) if probe_set is not None and params.probe_every else None)
    else:
        history = method.fit(train_docs, on_step=on_step)
    train_seconds = time.perf_counter() - started
    probe_answers: list[dict] = []
    final_probe = run_probes(params.train_steps, probe_answers) if probe_set is not None else None
    if final_probe is not None:
        ctx.runlog.log_artifact("cmt/probe_predictions.jsonl",
                                "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in probe_answers).encode())
        ctx.runlog.log_artifact("cmt/probes.csv", reading.table(method.notes["probes"]).encode())
        ctx.runlog.log_artifact("cmt/probes.txt", (reading.format_table(final_probe) + "\n").encode())
    seen_in_training = train_docs if fresh is None else \
        [d for step in range(-(-len(stream_docs) // params.train_batch_documents))
         for d in method.training_batches(train_docs)(step)]        # the first steps' documents, as trained on
    documents.update({d.doc_id: d for d in seen_in_training})
    probe = training_documents_probe(method, harness, seen_in_training, len(stream_docs), params, documents)
    ctx.runlog.progress(1, total, "streaming")

    order = evaluation_order(stream_docs, params.data_seed)
    first_ids = {d.doc_id for d in batches[0]}
    seen: set[str] = set()
    stream_seconds = eval_seconds = 0.0
    curve: list[dict[str, float]] = []
    first_initial = final = final_first = None
    for index, batch in enumerate(batches, start=1):
        started = time.perf_counter()
        method.observe(batch)
        stream_seconds += time.perf_counter() - started
        seen.update(d.doc_id for d in batch)
        if index in checkpoints:
            started = time.perf_counter()
            seen_qs = _sample(order, seen, params.eval_questions)
            first_qs = _sample(order, first_ids, params.eval_questions)
            union = list({id(qa): qa for qa in seen_qs + first_qs}.values())
            records = answer_all(method, harness, union, documents)
            by_id = {id(qa): r for qa, r in zip(union, records)}
            final = score([by_id[id(qa)] for qa in seen_qs])
            final_first = score([by_id[id(qa)] for qa in first_qs])
            eval_seconds += time.perf_counter() - started
            if first_initial is None:
                first_initial = final_first
            point = {"retention/seen_em": final.em, "retention/seen_f1": final.f1,
                     "retention/first_em": final_first.em, "retention/first_f1": final_first.f1,
                     "retention/documents_seen": float(len(seen))}
            ctx.runlog.log_metrics(point, step=index)
            curve.append({"step": index, **point})
            log.info("cmt %s: after %d/%d stream batches: seen EM %.1f F1 %.1f, first batch EM %.1f F1 %.1f",
                     params.method, index, len(batches), final.em, final.f1, final_first.em, final_first.f1)
        ctx.runlog.progress(1 + index, total, f"stream batch {index}/{len(batches)}")

    after = lm_fingerprint(lm)
    if after != before:
        raise FrozenLMChanged(f"the frozen LM's parameters changed during the run ({before[:12]} → {after[:12]}); "
                              f"method {params.method!r} must never update the base LM")

    _log_artifacts(ctx, method, final.records, curve)
    metrics = {**final.metrics(),
               "first_batch_em": final_first.em, "first_batch_f1": final_first.f1,
               "first_batch_em_initial": first_initial.em, "first_batch_f1_initial": first_initial.f1,
               "first_batch_f1_drop": first_initial.f1 - final_first.f1,
               "memory/bank_bytes_per_document": method.bank_bytes_per_document(),
               "memory/bank_bytes": method.bank_bytes_per_document() * len(stream_docs),
               "memory/trainable_params": float(method.trainable_parameters()),
               "train_seconds": train_seconds, "stream_seconds": stream_seconds, "eval_seconds": eval_seconds,
               "stream_documents": float(len(stream_docs)), "eval_questions": float(len(final.records))}
    if isinstance(method, OnlineFineTuning):
        metrics["memory/model_copy_bytes"] = float(sum(p.numel() * p.element_size() for p in method.lm.parameters()))
    if probe is not None:
        metrics.update({"train_docs_em": probe.em, "train_docs_f1": probe.f1})
    if final_probe is not None:
        metrics.update({k.replace("/", "_"): v for k, v in reading.as_metrics(final_probe).items()})
    if history:
        tail = history[-min(10, len(history)):]
        metrics["train_loss"] = float(np.mean([h.get("total", h.get("qa", np.nan)) for h in tail]))
    return metrics


def training_documents_probe(method: StreamingMethod, harness: Harness, train_docs: list[Document], bank_size: int,
                             params, documents: dict[str, Document]):
    """A trained memory model's scores on documents it *trained on*, in a bank of the stream's size (its own bank is
    left untouched). Next to the stream's scores this separates "did not learn" from "does not generalise"."""
    if not isinstance(method, CMTMemory) or not method.steps:
        return None
    probe = copy.copy(method)
    probe.bank = method.model.new_bank()
    chosen = train_docs[:bank_size]
    for batch in stream_batches(chosen, params.stream_batch_documents):
        probe.observe(batch)
    questions = evaluation_order(chosen, params.data_seed)[:params.eval_questions]
    return evaluate(probe, harness, questions, documents)


def _log_artifacts(ctx: TransferContext, method: StreamingMethod, records: list[dict], curve: list[dict]) -> None:
    ctx.runlog.log_artifact("cmt/predictions.jsonl",
                            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode())
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(curve[0]))
    writer.writeheader()
    writer.writerows(curve)
    ctx.runlog.log_artifact("cmt/retention.csv", out.getvalue().encode())
    if isinstance(method, CMTMemory):
        with tempfile.TemporaryDirectory() as folder:
            method.bank.save(folder)
            for name in ("memory.safetensors", "manifest.json"):
                ctx.runlog.log_artifact(f"cmt/bank/{name}", (Path(folder) / name).read_bytes())
