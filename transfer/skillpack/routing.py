"""Routing prompts to SkillPacks (the paper's routing of multiple skills): a router over mean-pooled base-model
embeddings of each skill's prompts picks the pack a prompt gets; `routed` answers each prompt with its pack applied."""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from transfer.common.language_models import fingerprint

from transfer.skillpack.pack import SkillPack, apply


class SkillRouter:
    """Which pack a prompt needs: a logistic regression over prompt embeddings.

    `embed` maps a list of prompts to an (n, d) array (e.g. the base model's mean-pooled hidden
    states, `mean_pooled_embedder`); a few labelled prompts per skill train it.
    """

    def __init__(self, embed: Callable[[list[str]], np.ndarray], *, C: float = 1.0):
        self.embed = embed
        self.C = C

    def fit(self, prompts: Sequence[str], skills: Sequence[str]) -> "SkillRouter":
        from sklearn.linear_model import LogisticRegression

        features = self._features(list(prompts))
        self.classifier_ = LogisticRegression(C=self.C, max_iter=2000).fit(features, list(skills))
        self.skills_ = list(self.classifier_.classes_)
        return self

    def predict(self, prompts: Sequence[str]) -> list[str]:
        return list(self.classifier_.predict(self._features(list(prompts))))

    def _features(self, prompts: list[str]) -> np.ndarray:
        x = np.asarray(self.embed(prompts), dtype=np.float64)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def mean_pooled_embedder(model: nn.Module, tokenizer, *, max_length: int = 128, batch_size: int = 16):
    """prompts → mean of the model's last hidden states over real tokens (the base model, no pack)."""
    def embed(prompts: list[str]) -> np.ndarray:
        out = []
        with torch.no_grad():
            for start in range(0, len(prompts), batch_size):
                batch = tokenizer(prompts[start:start + batch_size], return_tensors="pt", padding=True,
                                  truncation=True, max_length=max_length)
                hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                               output_hidden_states=True).hidden_states[-1]
                mask = batch["attention_mask"].unsqueeze(-1).float()
                out.append(((hidden * mask).sum(1) / mask.sum(1)).float().numpy())
        return np.concatenate(out)
    return embed


def routed(model: nn.Module, packs: Mapping[str, SkillPack], router: SkillRouter, prompts: Sequence[str],
           run: Callable[[list[str]], list], *, check: bool = True) -> list:
    """Run `run` on the prompts, each group with the pack its router picks applied (then removed).

    Results come back in the prompts' order. The base model is fingerprinted once.
    """
    if check:
        found = fingerprint(model)
        for pack in packs.values():
            pack.check_base(model, found)
    choices = router.predict(prompts)
    results: list = [None] * len(prompts)
    for skill in dict.fromkeys(choices):
        index = [i for i, c in enumerate(choices) if c == skill]
        with apply(model, packs[skill], check=False):
            for i, value in zip(index, run([prompts[i] for i in index])):
                results[i] = value
    return results
