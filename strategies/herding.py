"""iCaRL herding: pick the exemplars whose running mean best tracks the class mean.

One implementation for every strategy that herds (MEMO, DER and our budgeted iCaRL).
"""
from __future__ import annotations

import math

import torch

EPSILON = 1e-8


def herding_order(features: torch.Tensor, m: int) -> list[int]:
    """iCaRL herding (Rebuffi et al. 2017, Alg. 4) as PyCIL runs it, on normalised features.

    Picks, one at a time and never the same sample twice, the sample that brings the mean of
    the picked set closest to the class mean; returns the indices in the order picked
    (``min(m, len(features))`` of them), so any prefix is the best smaller exemplar set.
    """
    vectors = features / (features.norm(dim=1, keepdim=True) + EPSILON)
    class_mean = vectors.mean(dim=0)
    available = torch.ones(len(vectors), dtype=torch.bool)
    picked: list[int] = []
    running_sum = torch.zeros_like(class_mean)
    for k in range(1, min(m, len(vectors)) + 1):
        candidates = (running_sum + vectors) / k
        distance = (class_mean - candidates).norm(dim=1)
        distance[~available] = math.inf
        i = int(distance.argmin())
        picked.append(i)
        available[i] = False
        running_sum += vectors[i]
    return picked
