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
from avalanche.training.storage_policy import ExperienceBalancedBuffer, ReservoirSamplingBuffer

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


# --------------------------------------------------------------------------- checkpoints (cl.checkpoint)
# What survives a crash: Naive and Replay's templates keep nothing of their own; Replay's buffer is
# saved as references into the train stream (per experience group: size, reservoir weights, samples).
# The other baselines (EWC, LwF, GDumb, ER-ACE, Dark-ER, Cumulative) have no hook yet: they run
# without checkpoints and restart from scratch.

def _save_replay(plugin, refs) -> dict:
    policy = plugin.storage_policy
    if type(policy) is not ExperienceBalancedBuffer:
        raise TypeError(f"replay checkpoints support ExperienceBalancedBuffer, not {type(policy).__name__}")
    return {"max_size": policy.max_size, "num_exps": policy._num_exps,
            "groups": [{"experience": int(k), "max_size": g.max_size, "weights": g._buffer_weights.clone(),
                        "samples": refs.encode(g.buffer)} for k, g in policy.buffer_groups.items()]}


def _load_replay(plugin, state, refs) -> None:
    policy = plugin.storage_policy
    policy.max_size, policy._num_exps = int(state["max_size"]), int(state["num_exps"])
    policy.buffer_groups = {}
    for group in state["groups"]:
        buffer = ReservoirSamplingBuffer(int(group["max_size"]))
        buffer.buffer = refs.decode(group["samples"])
        buffer._buffer_weights = group["weights"].clone()
        policy.buffer_groups[int(group["experience"])] = buffer


def _register_checkpoints() -> None:
    from avalanche.training.plugins import ReplayPlugin

    from cl.checkpoint import register_state

    register_state(Naive)
    register_state(Replay)
    register_state(ReplayPlugin, _save_replay, _load_replay)


_register_checkpoints()
