"""CMT's trainable building blocks (see `transfer.cmt.model` for what each part is and whose design it follows):
the compressor that writes a document's memory, the scorer that retrieves, the aggregator's blocks and the prefix
generator that turns the read memory into the frozen LM's key/value prefix."""
from __future__ import annotations

import logging

import torch
from torch import nn
from torch.nn import functional as F

log = logging.getLogger(__name__)

class MLP(nn.Module):
    """MAC's per-token MLP: LayerNorm → Linear → tanh → Linear, plus a linear (or identity) skip."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.skip = nn.Identity() if dim_in == dim_out else nn.Linear(dim_in, dim_out)
        self.net = nn.Sequential(nn.LayerNorm(dim_in), nn.Linear(dim_in, dim_out), nn.Tanh(),
                                 nn.Linear(dim_out, dim_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.net(x)


class FeedForward(nn.Module):
    """Pre-norm residual feed-forward: x + W2 GELU(W1 LN(x))."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


class CrossAttentionBlock(nn.Module):
    """Pre-norm cross-attention (queries ``x`` over ``context``) + feed-forward, both residual."""

    def __init__(self, dim: int, num_heads: int, ff_hidden: int, dropout: float = 0.0):
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.attention = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.ff = FeedForward(dim, ff_hidden, dropout)

    def forward(self, x: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None = None):
        """``context_mask``: (B, M) with 1 for real tokens (as a Hugging Face attention mask)."""
        kv = self.norm_kv(context)
        padding = None if context_mask is None else context_mask == 0
        attended, _ = self.attention(self.norm_q(x), kv, kv, key_padding_mask=padding, need_weights=False)
        return self.ff(x + attended)


class Compressor(nn.Module):
    """Encoder + K learnable soft tokens pooled by cross-attention → K vectors of width ``dim``, and a
    retrieval key: the encoder's states mean-pooled over real tokens (its own sentence embedding).

    Used twice: for documents (the memory vectors) and for questions (the aggregator's condition).
    """

    def __init__(self, encoder: nn.Module, *, num_tokens: int, dim: int, num_heads: int, ff_hidden: int,
                 dropout: float = 0.0):
        super().__init__()
        enc_dim = encoder_width(encoder)
        if enc_dim % num_heads:
            raise ValueError(f"CMTConfig.num_heads={num_heads} must divide the encoder's hidden size {enc_dim}")
        self.encoder = encoder
        self.soft_tokens = nn.Parameter(torch.randn(num_tokens, enc_dim) * 0.02)
        self.pool = CrossAttentionBlock(enc_dim, num_heads, ff_hidden, dropout)
        self.mlps = nn.ModuleList(MLP(enc_dim, dim) for _ in range(num_tokens))   # MAC: one per token

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(vectors (B, K, dim), keys (B, encoder width))."""
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        queries = self.soft_tokens.unsqueeze(0).expand(hidden.shape[0], -1, -1)
        pooled = self.pool(queries, hidden, attention_mask)
        vectors = torch.stack([mlp(pooled[:, i]) for i, mlp in enumerate(self.mlps)], dim=1)
        real = attention_mask.unsqueeze(-1).to(hidden.dtype)
        keys = (hidden * real).sum(1) / real.sum(1).clamp(min=1)
        return vectors, keys


def encoder_width(encoder: nn.Module) -> int:
    config = getattr(encoder, "config", None)
    width = getattr(config, "hidden_size", None) or getattr(config, "d_model", None)
    if not width:
        raise TypeError(f"{type(encoder).__name__}: the memory encoder must be a Hugging Face encoder whose "
                        "config has hidden_size (e.g. BertModel / all-MiniLM-L6-v2)")
    return int(width)


class Scorer(nn.Module):
    """score(question, entry) = cos(Wq·question key, Wm·entry key) / temperature.

    Wq and Wm start as the identity, so an untrained scorer ranks by the encoder's own sentence
    similarity (for MiniLM, a trained retriever); self-matching then adapts both.
    """

    def __init__(self, key_dim: int, temperature: float):
        super().__init__()
        self.question = nn.Linear(key_dim, key_dim)
        self.memory = nn.Linear(key_dim, key_dim)
        for layer in (self.question, self.memory):
            nn.init.eye_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.temperature = temperature

    def forward(self, query_keys: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """query_keys (Q, E), keys (N, E) → scores (Q, N)."""
        q = F.normalize(self.question(query_keys), dim=-1)
        m = F.normalize(self.memory(keys), dim=-1)
        return q @ m.T / self.temperature


class PrefixGenerator(nn.Module):
    """K aggregated vectors → per-layer prefix (key, value), each (B, kv_heads, P, head_dim)."""

    def __init__(self, *, dim: int, num_tokens: int, num_layers: int, prefix_length: int, kv_heads: int,
                 head_dim: int, ff_hidden: int, dropout: float = 0.0):
        super().__init__()
        self.num_layers, self.prefix_length = num_layers, prefix_length
        self.kv_heads, self.head_dim = kv_heads, head_dim
        slots = 2 * num_layers * prefix_length
        # MAC's spreading: token i fills ⌈S/K⌉ (first S mod K tokens) or ⌊S/K⌋ consecutive slots
        counts = torch.full((num_tokens,), slots // num_tokens, dtype=torch.long)
        counts[: slots % num_tokens] += 1
        self.register_buffer("slot_source", torch.repeat_interleave(torch.arange(num_tokens), counts),
                             persistent=False)
        self.slot_embedding = nn.Parameter(torch.zeros(slots, dim))
        self.ff = FeedForward(dim, ff_hidden, dropout)
        self.out = nn.Linear(dim, kv_heads * head_dim)
        nn.init.normal_(self.out.weight, std=0.02)
        nn.init.zeros_(self.out.bias)

    def forward(self, aggregated: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        b = aggregated.shape[0]
        slots = self.out(self.ff(aggregated[:, self.slot_source] + self.slot_embedding))    # (B, S, kvh·hd)
        kv = slots.view(b, self.prefix_length, 2 * self.num_layers, self.kv_heads, self.head_dim)
        kv = kv.permute(2, 0, 3, 1, 4)                                    # (2L, B, kvh, P, hd)
        return [(kv[2 * layer], kv[2 * layer + 1]) for layer in range(self.num_layers)]
