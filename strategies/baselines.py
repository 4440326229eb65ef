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

from cl.strategy_api import StrategyContext


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
# What survives a crash: the templates of Naive, Replay, EWC and LwF keep nothing of their own; Replay's
# buffer is saved as references into the train stream (per experience group: size, reservoir weights,
# samples); EWC's saved parameters and importances as tensors; LwF's previous model as its state_dict
# and train/eval flags, with the classes it distils. GDumb, ER-ACE, Dark-ER and Cumulative have no hook
# yet: they run without checkpoints and restart from scratch.

def _save_replay(plugin, ctx) -> dict:
    policy = plugin.storage_policy
    if type(policy) is not ExperienceBalancedBuffer:
        raise TypeError(f"replay checkpoints support ExperienceBalancedBuffer, not {type(policy).__name__}")
    return {"max_size": policy.max_size, "num_exps": policy._num_exps,
            "groups": [{"experience": int(k), "max_size": g.max_size, "weights": g._buffer_weights.clone(),
                        "samples": ctx.dataset_ref(g.buffer)} for k, g in policy.buffer_groups.items()]}


def _load_replay(plugin, state, ctx) -> None:
    policy = plugin.storage_policy
    policy.max_size, policy._num_exps = int(state["max_size"]), int(state["num_exps"])
    policy.buffer_groups = {}
    for group in state["groups"]:
        buffer = ReservoirSamplingBuffer(int(group["max_size"]))
        buffer.buffer = ctx.dataset_from_ref(group["samples"])
        buffer._buffer_weights = group["weights"].clone()
        policy.buffer_groups[int(group["experience"])] = buffer


def _save_ewc(plugin, ctx) -> dict:
    def tensors(table):
        return {str(exp): {name: data.data.detach().cpu().clone() for name, data in params.items()}
                for exp, params in table.items()}
    return {"saved_params": tensors(plugin.saved_params), "importances": tensors(plugin.importances)}


def _load_ewc(plugin, state, ctx) -> None:
    from collections import defaultdict

    from avalanche.training.utils import ParamData

    def table(saved, prefix):
        out = defaultdict(dict)
        for exp, params in saved.items():
            out[int(exp)] = {name: ParamData(f"{prefix}{name}", init_tensor=t.to(ctx.device), device=ctx.device)
                             for name, t in params.items()}
        return out
    plugin.saved_params = table(state["saved_params"], "")
    plugin.importances = table(state["importances"], "imp_")


def _save_lwf(plugin, ctx) -> dict:
    lwf = plugin.lwf
    prev = lwf.prev_model
    return {"expcount": lwf.expcount,
            "classes": {str(task): sorted(int(c) for c in classes) for task, classes in lwf.prev_classes_by_task.items()},
            "prev_model": None if prev is None else prev.state_dict(),
            "prev_training": None if prev is None else {name: m.training for name, m in prev.named_modules()}}


def _load_lwf(plugin, state, ctx) -> None:
    import copy
    from collections import defaultdict

    lwf = plugin.lwf
    lwf.expcount = int(state["expcount"])
    lwf.prev_classes_by_task = defaultdict(set, {int(t): set(c) for t, c in state["classes"].items()})
    if state["prev_model"] is None:
        lwf.prev_model = None
        return
    prev = copy.deepcopy(ctx.strategy.model)    # same architecture; then the previous experience's weights
    prev.load_state_dict(state["prev_model"])
    for name, module in prev.named_modules():
        module.training = bool(state["prev_training"][name])
    lwf.prev_model = prev


def _register_checkpoints() -> None:
    from avalanche.training.plugins import EWCPlugin, LwFPlugin, ReplayPlugin

    from cl.checkpoint import register_state

    for template in (Naive, Replay, EWC, LwF):
        register_state(template)
    register_state(ReplayPlugin, _save_replay, _load_replay)
    register_state(EWCPlugin, _save_ewc, _load_ewc)
    register_state(LwFPlugin, _save_lwf, _load_lwf)


def _register_accounting() -> None:
    """What Avalanche's baselines keep besides their buffers (memory accounting, `cl.strategy_api`): EWC its saved
    parameters and importances, LwF its previous model; Cumulative keeps every sample seen so far, all counted."""
    from avalanche.training.plugins import EWCPlugin, LwFPlugin

    from cl.strategy_api import register_accounting, tensor_bytes

    register_accounting(EWCPlugin, state_bytes=lambda p: tensor_bytes(p.saved_params) + tensor_bytes(p.importances))
    register_accounting(LwFPlugin, state_bytes=lambda p: tensor_bytes(getattr(p.lwf, "prev_model", None)))
    register_accounting(Cumulative, exemplars=lambda s: len(s.dataset) if getattr(s, "dataset", None) is not None
                        else 0)


_register_checkpoints()
_register_accounting()
