"""The frozen causal LM behind a key/value prefix: a forward pass and greedy decoding with the prefix as past keys and
values (what every memory method and baseline of `transfer.cmt` answers through), and reading an answer off."""
from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence

import torch
from torch import nn

log = logging.getLogger(__name__)

def _cache_keyword(lm: nn.Module) -> str:
    params = inspect.signature(lm.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _prefix_cache(lm: nn.Module, prefix: Sequence[tuple[torch.Tensor, torch.Tensor]] | None):
    from transformers import DynamicCache

    if prefix is None:
        return DynamicCache(config=lm.config)
    return DynamicCache([(k, v) for k, v in prefix], config=lm.config)


def _keeps_logits(lm: nn.Module) -> bool:
    return "logits_to_keep" in inspect.signature(lm.forward).parameters


def lm_forward(lm: nn.Module, prefix: Sequence[tuple[torch.Tensor, torch.Tensor]] | None,
               input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor | None = None):
    """Run the frozen causal LM behind per-layer prefix key/values (or none).

    Rows are left padded; positions count real tokens and start after the prefix (the causal mask
    is built from the cache length, so explicit positions do not shift it).
    """
    p = 0 if prefix is None else prefix[0][0].shape[2]
    mask = torch.cat([attention_mask.new_ones(attention_mask.shape[0], p), attention_mask], dim=1)
    positions = p + (attention_mask.cumsum(-1) - 1).clamp(min=0)
    return lm(input_ids=input_ids, attention_mask=mask, position_ids=positions, labels=labels,
              use_cache=True, **{_cache_keyword(lm): _prefix_cache(lm, prefix)})


@torch.no_grad()
def greedy_generate(lm: nn.Module, prefix, input_ids: torch.Tensor, attention_mask: torch.Tensor, *,
                    max_new_tokens: int, eos_token_id: int) -> list[list[int]]:
    """Greedy decoding behind a prefix; each row's new tokens, cut before its first end-of-sequence."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    p = 0 if prefix is None else prefix[0][0].shape[2]
    cache = _prefix_cache(lm, prefix)
    mask = torch.cat([attention_mask.new_ones(attention_mask.shape[0], p), attention_mask], dim=1)
    positions = p + (attention_mask.cumsum(-1) - 1).clamp(min=0)
    keyword = _cache_keyword(lm)
    last_only = {"logits_to_keep": 1} if _keeps_logits(lm) else {}
    logits = lm(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True,
                **{keyword: cache}, **last_only).logits[:, -1]
    rows: list[list[int]] = [[] for _ in range(input_ids.shape[0])]
    done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    positions = positions[:, -1:]
    for step in range(max_new_tokens):
        token = logits.argmax(-1)
        done_before = done.clone()
        done |= token == eos_token_id
        for i in range(len(rows)):
            if not done[i]:
                rows[i].append(int(token[i]))
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        token = torch.where(done_before, torch.full_like(token, eos_token_id), token)
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        positions = positions + 1
        logits = lm(input_ids=token[:, None], attention_mask=mask, position_ids=positions, use_cache=True,
                    **{keyword: cache}).logits[:, -1]
    return rows


def answer_text(tokenizer, row: Sequence[int]) -> str:
    """A generated row → the answer: its text up to the first line break (answers are short phrases; an LM
    that goes on — a few-shot prompt invites a next "Question:" — is cut there), stripped. Every method decodes
    through this, so none is scored on more or less of what it generated."""
    text = tokenizer.decode(list(row), skip_special_tokens=True).strip()
    return text.split("\n", 1)[0].strip()
