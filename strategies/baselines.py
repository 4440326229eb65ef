"""Avalanche 0.6's own strategies as registry builders. No algorithm code lives here.

Naming: Avalanche's `DER` is Dark Experience Replay, registered as ``dark_er`` because
"DER" in the class-incremental literature usually means Dynamically Expandable
Representation (Yan et al. 2021). iCaRL lives in `strategies.icarl`: Avalanche's exemplar
selection does not fill large budgets, which equal-memory comparisons need.
"""
from __future__ import annotations

from avalanche.training import (
    DER,
    ER_ACE,
    EWC,
    GDumb,
    LwF,
    Cumulative,
    Naive,
    Replay,
)

from strategies.base import StrategyContext


def _common(ctx: StrategyContext) -> dict:
    return dict(model=ctx.model, optimizer=ctx.optimizer, criterion=ctx.criterion,
                **ctx.template_kwargs())


def build_naive(ctx: StrategyContext, params) -> Naive:
    return Naive(**_common(ctx))


def build_replay(ctx: StrategyContext, params) -> Replay:
    return Replay(mem_size=params.mem_size, **_common(ctx))


def build_ewc(ctx: StrategyContext, params) -> EWC:
    return EWC(ewc_lambda=params.ewc_lambda, mode=params.mode, decay_factor=params.decay_factor,
               **_common(ctx))


def build_lwf(ctx: StrategyContext, params) -> LwF:
    return LwF(alpha=params.alpha, temperature=params.temperature, **_common(ctx))


def build_gdumb(ctx: StrategyContext, params) -> GDumb:
    return GDumb(mem_size=params.mem_size, **_common(ctx))


def build_er_ace(ctx: StrategyContext, params) -> ER_ACE:
    return ER_ACE(mem_size=params.mem_size, batch_size_mem=params.batch_size_mem, **_common(ctx))


def build_dark_er(ctx: StrategyContext, params) -> DER:
    return DER(mem_size=params.mem_size, batch_size_mem=params.batch_size_mem,
               alpha=params.alpha, beta=params.beta, **_common(ctx))


def build_cumulative(ctx: StrategyContext, params) -> Cumulative:
    return Cumulative(**_common(ctx))
