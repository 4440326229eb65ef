"""CMT memory banks: continual knowledge learning for a *frozen* causal language model.

Paper: Li, Sun, Hu, Hu, Zhang, "CMT: A Memory Compression Method for Continual Knowledge Learning
of Large Language Models", AAAI 2025, arXiv 2412.07393. The paper has no public code; its closest
predecessor with code is MAC — Tack et al., "Online Adaptation of Language Models with a Memory of
Amortized Contexts" (github.com/jihoontack/MAC) — whose design fills the gaps. This is our own
implementation of both descriptions; no code is copied.

How it works (who each part comes from)
---------------------------------------
* **Frozen LM** (paper + MAC). The base LM's parameters never change: `CMT` sets
  ``requires_grad=False`` on all of them, keeps the LM in eval mode even when the rest trains, and
  only ever hands `trainable_parameters` to an optimiser. Knowledge enters through prefix
  key/values only.
* **Compressor** (paper: "compressed and stored"; MAC: an amortisation encoder turning each
  document into a fixed number K of memory vectors — 12 for DistilGPT2, 24 for Llama — via
  per-token MLPs over the outputs of a T5 decoder run on K learnable prompts). Ours:
  `Compressor` = any Hugging Face encoder (all-MiniLM-L6-v2 or a tiny random BERT in tests) +
  K learnable soft tokens that cross-attend to the encoder states (one pre-norm cross-attention
  block, key padding masked) + MAC's per-token MLPs (LayerNorm → Linear → tanh → Linear, with a
  linear skip) into the LM's hidden size D → K memory vectors per document.
* **Memory bank** (paper + MAC: memories are *stored*, the bank only grows while streaming; MAC
  keeps it as a tensor in RAM). Ours: `MemoryBank` is append-only (no update or delete API), holds
  detached tensors (K memory vectors and one retrieval key per entry) + document ids, and saves as
  ``memory.safetensors`` + ``manifest.json``.
  Writing (`CMT.write`) runs under ``torch.no_grad`` in eval mode: streaming never updates any
  parameter.
* **Question encoder + aggregator** (MAC). A second `Compressor` of the same shape (MAC: its own
  T5 encoder; ``share_encoder=True`` shares the encoder weights, soft tokens and MLPs stay
  separate) turns the question into K condition vectors; ``num_aggregator_blocks`` pre-norm
  cross-attention blocks (MAC's ``CrossAttentionBlock``: attention + feed-forward) let them attend
  to the memory tokens; the K outputs are the aggregated memory. No positional encoding over the
  bank, so aggregation is invariant to the order of its entries.
* **Scorer + top-k aggregation** (paper's technique; the mechanism is our reading). Each bank
  entry carries a retrieval key besides its memory vectors: its document's encoder states
  mean-pooled (MiniLM's own sentence embedding; the question gets one the same way). An entry's
  score is the cosine similarity of linear maps of the two keys, divided by ``temperature``; the
  maps start as the identity, so an untrained scorer ranks like the pretrained encoder. Only the
  top ``top_k`` entries go into the aggregator (``top_k=None`` or k ≥ bank size = MAC's full
  aggregation, exactly). Selection is hard; the scorer learns from the self-matching term.
  (Measured before keys existed, scoring the mean *memory* vector through randomly initialised
  maps: 200 steps of self-matching alone reached 5–12% top-1 over 64 unseen synthetic documents,
  where frozen MiniLM similarity gets 100%.)
* **Prefix generator** (MAC, P-tuning-v2 style). The K aggregated vectors are spread over
  S = 2·L·P slots as MAC does (token i fills ⌈S/K⌉ or ⌊S/K⌋ consecutive slots), pass a feed-forward
  block, and become, for each of the L layers, P prefix keys and P prefix values of shape
  (batch, kv_heads, P, head_dim), handed to the LM as a ``DynamicCache`` (the installed transformers
  5.24 names the forward argument ``cache`` and deprecates ``past_key_values``; `lm_forward` checks
  the signature and uses whichever exists). The attention mask is extended by P ones. Prefix keys
  carry no rotary rotation, so attention to them depends on the query's absolute position: real
  tokens are numbered P, P+1, … whatever their left padding, identically in training and decoding.
* **Loss** (``qa_weight``, ``self_match_weight``, ``memory_aware_weight``; weight 0 switches a
  term off for ablations):
  - QA loss (MAC's only loss): LM cross-entropy of the answer tokens given the question, with the
    prefix made from the (top-k) aggregation over the *batch's* documents as the bank (MAC trains
    with the batch as the bank too);
  - self-matching (paper's technique; ours as a term): cross-entropy over the scores of every
    question against the batch's documents with its own document as the target — an InfoNCE term
    that is lowest when the true document ranks first;
  - memory-aware objective (paper's technique; ours as a term): LM cross-entropy of each
    document's own tokens with a prefix made directly from that document's K memory vectors —
    memory must be able to reproduce its document.
* **Answering** (MAC): greedy decoding of ``max_new_tokens`` tokens behind the prefix (our own
  loop over the cache; MAC calls ``generate``), scored by SQuAD EM/F1 (`transfer.cmt.metrics`).

Deviations (ours) — to know before reading results
-------------------------------------------------
* Compressor: soft tokens + one cross-attention pooling block on an encoder, not MAC's T5
  encoder–decoder run on learnable prompts; the encoder is MiniLM (or the tests' tiny BERT), not T5.
* Prefix generator: one *shared* feed-forward block + learned slot embeddings + a projection to
  the key/value width (needed for grouped-query attention, e.g. SmolLM2's 3 KV heads), instead of
  MAC's one MLP per slot (which would be ~10⁸ parameters for SmolLM2's 30 layers).
* No hierarchical (chunked) aggregation of large banks: top-k bounds the aggregator's input, so
  the bank size no longer matters for memory (MAC needs chunks for full aggregation of big banks).
* Scorer form, the self-matching and memory-aware terms' exact form, and the hard top-k are our
  reading of the paper's abstract (it names the techniques; the formulas are not public).
* Frozen encoders (``train_encoder=False``, ``freeze_question_encoder``) run in eval mode while the rest trains
  (as pretrained, no dropout). ``losses(true_memory=True)`` — the curriculum's first stages (issue #30, ours) —
  makes the QA prefix from each question's own document's memory, without retrieval.
* EM is SQuAD's official full match by default; MAC's prefix match is available
  (`transfer.cmt.metrics.exact_match(prefix=True)`).

Around it
---------
* `transfer.cmt.baselines` — the harness every method runs in (same prompt, greedy decoding and
  EM/F1) and the baselines: MAC (this model with ``top_k=None, self_match_weight=0,
  memory_aware_weight=0`` — a config, no code of its own), closed-book, retrieval-in-context (RAG)
  and online fine-tuning of a copy of the LM.
* `transfer.cmt.experiment` — the registered transfer experiment ``cmt`` (options:
  `transfer.cmt.params.CMTTransferParams`): train on a split of documents disjoint from the stream,
  stream, answer at checkpoints, check the frozen LM's hash; `benchmarks/cmt.py` runs its grid.
* `transfer.cmt.data` — synthetic streaming facts, the offline SQuAD loader, the train/stream split.

Where the parts live: the trainable blocks in `transfer.cmt.layers`, the bank in `transfer.cmt.memory_bank`,
the frozen LM's prefixed forward and decoding in `transfer.cmt.frozen_lm`; this module assembles them (`CMT`),
with the losses and the training step.
"""
from __future__ import annotations

import copy
import logging
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from transfer.cmt.data import CMTBatch
from transfer.cmt.frozen_lm import answer_text, greedy_generate, lm_forward
from transfer.cmt.layers import Compressor, CrossAttentionBlock, PrefixGenerator, Scorer, encoder_width
from transfer.cmt.memory_bank import MemoryBank

log = logging.getLogger(__name__)
# --------------------------------------------------------------------------- configuration

@dataclass(frozen=True)
class CMTConfig:
    """Hyper-parameters of the CMT memory model; validated at construction."""
    num_memory_tokens: int = 12       # K memory vectors per document (MAC: 12 DistilGPT2, 24 Llama)
    prefix_length: int = 2            # P prefix key/values per LM layer (MAC: layer_num_virtual_tokens)
    num_heads: int = 4                # heads of the pooling / aggregation cross-attention
    num_aggregator_blocks: int = 2    # cross-attention blocks of the aggregator (MAC: config value)
    ff_hidden: int = 768              # feed-forward width in blocks and prefix generator (MAC: 768)
    top_k: int | None = 4             # bank entries aggregated per question; None = all (MAC)
    temperature: float = 0.1          # scorer temperature
    qa_weight: float = 1.0            # QA loss weight (0 switches it off)
    self_match_weight: float = 1.0    # self-matching weight (0 switches it off)
    memory_aware_weight: float = 1.0  # memory-aware reconstruction weight (0 switches it off)
    share_encoder: bool = False       # question encoder shares the document encoder's weights
    train_encoder: bool = True        # fine-tune the encoder(s) (MAC trains its T5)
    freeze_question_encoder: bool = False   # keep the question encoder's pretrained weights (issue #30)
    dropout: float = 0.0

    def __post_init__(self):
        for name in ("num_memory_tokens", "prefix_length", "num_heads", "num_aggregator_blocks", "ff_hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"CMTConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"CMTConfig.top_k must be >= 1 or None (full aggregation), got {self.top_k}")
        if self.temperature <= 0:
            raise ValueError(f"CMTConfig.temperature must be > 0, got {self.temperature}")
        weights = {n: getattr(self, n) for n in ("qa_weight", "self_match_weight", "memory_aware_weight")}
        for name, value in weights.items():
            if value < 0:
                raise ValueError(f"CMTConfig.{name} must be >= 0 (0 switches the term off), got {value}")
        if not any(weights.values()):
            raise ValueError("CMTConfig: qa_weight, self_match_weight and memory_aware_weight are all 0; "
                             "switch at least one loss term on")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"CMTConfig.dropout must be in [0, 1), got {self.dropout}")


# --------------------------------------------------------------------------- losses (pure functions)

def self_matching_loss(scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """InfoNCE over documents: mean_q [ logsumexp_n s[q, n] − s[q, target_q] ].

    For a fixed set of scores it is lowest when the true document holds the highest score (ranks
    first) and grows as it ranks lower.
    """
    return F.cross_entropy(scores, target)


def select_top_k(scores: torch.Tensor, memory: torch.Tensor, k: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per question, the memory tokens of its k best-scoring entries: (Q, k·K, D), and their indices (Q, k).

    ``k=None`` or k ≥ N gives every entry (full aggregation), in score order.
    """
    n, num_tokens, dim = memory.shape
    if scores.shape[1] != n:
        raise ValueError(f"select_top_k: scores cover {scores.shape[1]} entries, the memory holds {n}")
    k = n if k is None else min(k, n)
    index = scores.topk(k, dim=1).indices                                  # (Q, k)
    chosen = memory[index]                                                 # (Q, k, K, D)
    return chosen.reshape(scores.shape[0], k * num_tokens, dim), index


# --------------------------------------------------------------------------- the model

class CMT(nn.Module):
    """Compressor, question encoder, scorer, aggregator and prefix generator around a frozen LM."""

    def __init__(self, lm: nn.Module, encoder: nn.Module, config: CMTConfig | None = None, *,
                 question_encoder: nn.Module | None = None):
        super().__init__()
        self.config = config = config or CMTConfig()
        lm_config = lm.config
        dim = int(lm_config.hidden_size)
        heads = int(lm_config.num_attention_heads)
        kv_heads = int(getattr(lm_config, "num_key_value_heads", None) or heads)
        head_dim = int(getattr(lm_config, "head_dim", None) or dim // heads)
        if dim % config.num_heads:
            raise ValueError(f"CMTConfig.num_heads={config.num_heads} must divide the LM hidden size {dim}")
        self.lm = lm
        for p in self.lm.parameters():
            p.requires_grad_(False)
        self.lm.eval()
        if question_encoder is None:
            question_encoder = encoder if config.share_encoder else copy.deepcopy(encoder)
        if config.freeze_question_encoder and question_encoder is encoder:
            raise ValueError("CMTConfig.freeze_question_encoder with a shared encoder would freeze the document "
                             "encoder too; use train_encoder=False, or share_encoder=False")
        frozen = (encoder, question_encoder) if not config.train_encoder else \
            (question_encoder,) if config.freeze_question_encoder else ()
        for module in frozen:
            for p in module.parameters():
                p.requires_grad_(False)
        shape = dict(num_tokens=config.num_memory_tokens, dim=dim, num_heads=config.num_heads,
                     ff_hidden=config.ff_hidden, dropout=config.dropout)
        self.compressor = Compressor(encoder, **shape)
        self.question_encoder = Compressor(question_encoder, **shape)
        self.key_dim = encoder_width(encoder)
        self.scorer = Scorer(self.key_dim, config.temperature)
        self.aggregator = nn.ModuleList(CrossAttentionBlock(dim, config.num_heads, config.ff_hidden, config.dropout)
                                        for _ in range(config.num_aggregator_blocks))
        self.prefix = PrefixGenerator(dim=dim, num_tokens=config.num_memory_tokens,
                                      num_layers=int(lm_config.num_hidden_layers),
                                      prefix_length=config.prefix_length, kv_heads=kv_heads, head_dim=head_dim,
                                      ff_hidden=config.ff_hidden, dropout=config.dropout)
        self.memory_dim = dim

    # -- modes and parameters
    def train(self, mode: bool = True):
        super().train(mode)
        self.lm.eval()               # the frozen LM never drops out
        for compressor in (self.compressor, self.question_encoder):
            if not any(p.requires_grad for p in compressor.encoder.parameters()):
                compressor.encoder.eval()      # a frozen pretrained encoder runs as pretrained (no dropout)
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        lm_ids = {id(p) for p in self.lm.parameters()}
        return [p for p in self.parameters() if p.requires_grad and id(p) not in lm_ids]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Everything but the frozen LM (what a CMT checkpoint needs to store)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("lm.")}

    def checkpoint_state_dict(self) -> dict[str, torch.Tensor]:
        """What a training checkpoint must keep: the trainable parameters and the buffers, not the frozen LM nor
        frozen encoder weights (rebuilt identically from the pretrained files; ~180 MB for two MiniLM copies).
        Load with ``load_state_dict(..., strict=False)``."""
        frozen = {name for name, p in self.named_parameters() if not p.requires_grad}
        return {k: v for k, v in self.state_dict().items() if not k.startswith("lm.") and k not in frozen}

    def new_bank(self) -> MemoryBank:
        return MemoryBank(self.config.num_memory_tokens, self.memory_dim, self.key_dim)

    # -- the pieces
    def compress(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Documents → (memory (B, K, D), retrieval keys (B, E))."""
        return self.compressor(input_ids, attention_mask)

    def condition(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Questions → (aggregator queries (Q, K, D), retrieval keys (Q, E))."""
        return self.question_encoder(input_ids, attention_mask)

    def aggregate(self, condition: torch.Tensor, query_keys: torch.Tensor, memory: torch.Tensor,
                  keys: torch.Tensor, *, top_k: int | None = -1):
        """(aggregated (Q, K, D), scores (Q, N), chosen indices (Q, k)); ``top_k=-1`` uses the config's."""
        if memory.shape[0] == 0:
            raise ValueError("CMT.aggregate: the memory bank is empty; write documents before asking questions")
        k = self.config.top_k if top_k == -1 else top_k
        scores = self.scorer(query_keys, keys)
        context, index = select_top_k(scores, memory, k)
        return self.attend(condition, context), scores, index

    def attend(self, condition: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        """The aggregator blocks: ``condition`` (Q, K, D) attends to ``context`` (Q, M, D). ``None`` is an empty
        bank: nothing to attend to, so each block's attention adds 0 and only its feed-forward acts (the
        reading probes' "empty bank")."""
        out = condition
        for block in self.aggregator:
            out = block.ff(out) if context is None else block(out, context)
        return out

    # -- training
    def losses(self, batch: CMTBatch, *, true_memory: bool = False) -> dict[str, torch.Tensor]:
        """The weighted loss terms on one batch (its documents are the bank) and their sum ``total``.

        ``true_memory``: the QA term's prefix comes from each question's own document's memory, no retrieval (the
        curriculum's first stages, issue #30); self-matching still ranks the batch's documents."""
        cfg = self.config
        memory, keys = self.compress(batch.doc_enc_ids, batch.doc_enc_mask)         # (B, K, D), (B, E)
        terms: dict[str, torch.Tensor] = {}
        if cfg.qa_weight or cfg.self_match_weight:
            condition, query_keys = self.condition(batch.q_enc_ids, batch.q_enc_mask)   # (Q, K, D), (Q, E)
            if cfg.qa_weight and true_memory:
                scores = self.scorer(query_keys, keys)
                out = lm_forward(self.lm, self.prefix(self.attend(condition, memory[batch.doc_index])),
                                 batch.qa_lm_ids, batch.qa_lm_mask, batch.qa_lm_labels)
                terms["qa"] = out.loss
            elif cfg.qa_weight:
                aggregated, scores, _ = self.aggregate(condition, query_keys, memory, keys)
                out = lm_forward(self.lm, self.prefix(aggregated), batch.qa_lm_ids, batch.qa_lm_mask,
                                    batch.qa_lm_labels)
                terms["qa"] = out.loss
            else:
                scores = self.scorer(query_keys, keys)
            if cfg.self_match_weight:
                terms["self_match"] = self_matching_loss(scores, batch.doc_index)
        if cfg.memory_aware_weight:
            out = lm_forward(self.lm, self.prefix(memory), batch.doc_lm_ids, batch.doc_lm_mask,
                                batch.doc_lm_labels)
            terms["memory_aware"] = out.loss
        weights = {"qa": cfg.qa_weight, "self_match": cfg.self_match_weight, "memory_aware": cfg.memory_aware_weight}
        terms["total"] = sum(weights[name] * value for name, value in terms.items())
        return terms

    # -- streaming and answering
    @torch.no_grad()
    def write(self, bank: MemoryBank, batch: CMTBatch) -> None:
        """Compress the batch's documents into ``bank`` — inference only, no parameter changes."""
        was_training = self.training
        self.eval()
        try:
            bank.append(batch.doc_ids, *self.compress(batch.doc_enc_ids, batch.doc_enc_mask))
        finally:
            self.train(was_training)

    @torch.no_grad()
    def answer(self, bank: MemoryBank, batch: CMTBatch, tokenizer, *, max_new_tokens: int = 16,
               top_k: int | None = -1) -> list[str]:
        """Greedy answers to the batch's questions from the bank (``top_k=-1``: the config's k)."""
        return self.answer_with_sources(bank, batch, tokenizer, max_new_tokens=max_new_tokens, top_k=top_k)[0]

    @torch.no_grad()
    def answer_with_sources(self, bank: MemoryBank, batch: CMTBatch, tokenizer, *, max_new_tokens: int = 16,
                            top_k: int | None = -1) -> tuple[list[str], list[int]]:
        """(answers, the best-scoring bank entry of each question) — one pass of the question encoder."""
        from transfer.cmt.data import lm_special_ids

        was_training = self.training
        self.eval()
        try:
            device = next(self.scorer.parameters()).device
            batch = batch.to(device)
            aggregated, scores, _ = self.aggregate(*self.condition(batch.q_enc_ids, batch.q_enc_mask),
                                                   bank.memory.to(device), bank.keys.to(device), top_k=top_k)
            eos, _ = lm_special_ids(tokenizer)
            rows = greedy_generate(self.lm, self.prefix(aggregated), batch.prompt_lm_ids, batch.prompt_lm_mask,
                                   max_new_tokens=max_new_tokens, eos_token_id=eos)
        finally:
            self.train(was_training)
        return [answer_text(tokenizer, row) for row in rows], scores.argmax(1).tolist()


def train_steps(model: CMT, batches: Iterable[CMTBatch], optimizer: torch.optim.Optimizer, *,
                max_grad_norm: float | None = 1.0, true_memory: bool = False) -> list[dict[str, float]]:
    """One optimiser step per batch on the weighted loss; returns each step's terms as floats."""
    model.train()
    history = []
    for batch in batches:
        terms = model.losses(batch, true_memory=true_memory)
        optimizer.zero_grad(set_to_none=True)
        terms["total"].backward()
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.trainable_parameters(), max_grad_norm)
        optimizer.step()
        history.append({name: float(value.detach()) for name, value in terms.items()})
    return history


def make_optimizer(model: CMT, lr: float = 1e-4, weight_decay: float = 0.0, *, encoder_lr: float | None = None
                   ) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters only (the frozen LM is never given to the optimiser).

    ``encoder_lr``: the pretrained encoder(s) in a group of their own at that rate (MAC: 1e-5 for its T5; issue #30:
    one lr of 3e-4 for everything wore MiniLM's retrieval from 100% top-1 down to a few %); the new modules keep
    ``lr``. Groups: [new modules] or [new modules, encoders]."""
    for name, value in (("lr", lr), ("encoder_lr", encoder_lr)):
        if value is not None and value <= 0:
            raise ValueError(f"{name} must be > 0, got {value}")
    trainable = model.trainable_parameters()
    if encoder_lr is None:
        return torch.optim.AdamW(trainable, lr=lr, weight_decay=weight_decay)
    encoder_ids = {id(p) for c in (model.compressor, model.question_encoder) for p in c.encoder.parameters()}
    new = [p for p in trainable if id(p) not in encoder_ids]
    encoders = [p for p in trainable if id(p) in encoder_ids]
    groups = [{"params": new, "lr": lr}] + ([{"params": encoders, "lr": encoder_lr}] if encoders else [])
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
