"""FPF and k-FPF: fine-tune only the modules that forget, on a small buffer.

Haiyan Zhao, Tianyi Zhou, Guodong Long, Jing Jiang, Chengqi Zhang, "Does Continual Learning
Equally Forget All Parameters?", ICML 2023, arXiv 2304.04158. No public code exists; this is
built from the paper's abstract, introduction and Fig. 2, and the choices below fill the rest.

What the paper says (verified):
- Only a few modules are task-specific and change sharply between tasks; forgetting is
  attributed mainly to them (§3, training-dynamics analysis).
- FPF (Forgetting Prioritized Finetuning): at the end of any CL method, fine-tune only those
  modules for a few iterations on the buffer (`FPFPlugin`, added to any strategy).
- k-FPF: no every-step replay; plain SGD on the current data, and k times during the whole
  stream, periodically and regardless of task boundaries, FPF on the buffer (`KFPFPlugin`,
  strategies `kfpf_ce` and `kfpf_kd`). k-FPF-KD also matches the logits stored with each
  buffered sample (as DER does); k-FPF-CE uses cross-entropy only.
- A sensitivity score selects the modules automatically from their training dynamics.

Our choices, where the paper as available to us is silent:
- Module = a leaf module that owns parameters (Conv2d, BatchNorm, Linear, ...).
- Sensitivity of module m (`SensitivityTracker`): for each experience, the L1 change of its
  parameters from the experience's start to its end, divided by its parameter count; averaged
  over experiences (a second-hand description of the paper's score; BN running statistics
  are buffers, not parameters, and are not scored).
- Selection by pattern: ``bn`` = every batch-norm layer, ``fc`` = the last Linear,
  ``conv1`` = the first convolution, anything else a regular expression searched in the
  qualified module names; ``auto`` = modules by descending sensitivity, greedily, while their
  parameters fit in `max_param_fraction` of the model's (the stem conv, 144 parameters, fits
  whenever it ranks high). ``[bn, fc]`` is what the paper reports for ResNet-18.
- One FPF call = `iterations` SGD steps (weight decay 0; momentum `momentum`, default 0 as in
  mammoth, the code base the paper's experiments build on — its own value is not in the text available
  to us; a fresh optimiser each call) with batches drawn uniformly from the buffer; the selected
  batch-norm layers run in train mode (their statistics follow the buffer), every other module in eval
  mode, so nothing outside the selection changes. When only the final linear layer is tuned, its input
  is a fixed function of the sample, so it is computed once per buffer sample and cached (same updates;
  the FLOPs counted are those run).
- k-FPF: T = Σ_experiences ⌈n_e / batch⌉ × epochs_e (the run's per-experience schedule; Avalanche keeps
  the short last batch; n_e without the validation samples, if any); FPF after iterations
  round(i·T/k), i = 1..k (`trigger_steps`), so the k-th call is on the last iteration and the final
  evaluation sees a freshly fine-tuned model. (Until issue #28 the calls came every ⌊T/k⌋ iterations:
  on the published grid, T = 945 and k = 8, the last call was on iteration 944 and the task-end
  evaluations of tasks 1–4 came 24–95 SGD steps after a call.) `fpf/calls.json` says where every call
  fell, what it tuned and — with the probe — the test accuracy per seen experience right before and
  right after it (`fpf/acc_before`, `fpf/acc_after` metrics; the probe reads test data only to report),
  and the accuracy on the buffer it tunes on (`fpf/buffer_acc_before`, `…_after`: overfitting the buffer
  shows as that accuracy near 100% while test accuracy falls).
  The buffer is a reservoir (Vitter's Algorithm R) over every training sample seen, each stored with
  the logits of the forward pass that saw it. KD loss = CE + β·MSE(logits, stored logits), over all outputs.
- Choosing a call's setting (`tune`, ours, for the issue-#28 ceiling): `valid_per_class` images per class
  are carved from each experience's training data with a fixed seed (never trained on, never in the
  buffer); the last call tries every (modules, lr) of the candidate groups from the same model state,
  checkpointing the listed step counts, and keeps the best on that split (`fpf/val_acc/...` metrics).
- `FPFPlugin` fine-tunes on the strategy's own buffer when it has one (Avalanche's
  `storage_policy`: Replay, Dark-ER, ER-ACE, GDumb) with cross-entropy; otherwise it keeps a
  reservoir of `mem_size` samples itself. It runs when a `train()` call ends (after every
  experience with the suite's runner), or with ``at: end`` after the last experience only.
  ``loss: host`` (ours, issue #28) fine-tunes with the host's own replay loss instead — Dark-ER's logit
  matching to the logits its buffer stores, with its α and β (`strategies.fpf_host` lists the deviations);
  ``probe`` measures accuracy around its calls as for k-FPF (`fpf/calls.json`, `fpf/acc_before`/`after`).
- Registered defaults (k = 100, 100 iterations, lr 0.05, modules [bn, fc], momentum 0) are those the
  published grid's configs resolve to, and their hashes are pinned; new grids state every setting and
  use ``modules: [auto]`` (by sensitivity, within `max_param_fraction`: on ResNet-32 at 2% it takes the
  head, the stem conv and the BN layers, as the run's own scores rank them) or the patterns they compare.
- Cost: FPF's FLOPs are counted on its first iteration and extrapolated (`cl.cost`).

Where it lives, one idea a module: `strategies.fpf_selection` (which modules), `strategies.fpf_buffers`
(what FPF fine-tunes on), `strategies.fpf_tuning` (one FPF call and its loss), `strategies.fpf_host` (the
host's own loss), `strategies.fpf_plugin` (FPF on any strategy) and `strategies.kfpf` (k-FPF and its tuning on a
validation split); this module holds the registry's builders and what the plugins carry in a checkpoint.
"""
from __future__ import annotations

import torch
from avalanche.training.templates import SupervisedTemplate

from cl.strategy_api import StrategyContext
from strategies.fpf_buffers import ReservoirBuffer
from strategies.fpf_plugin import FPFBase, FPFPlugin
from strategies.kfpf import KFPFPlugin, probe_sets, stream_iterations

__all__ = ["FPFPlugin", "KFPFPlugin", "build_fpf_plugin", "build_kfpf_ce", "build_kfpf_kd"]

# --------------------------------------------------------------------------- builders


def _modules_option(params):
    return "auto" if params.modules == ["auto"] else params.modules


def build_fpf_plugin(ctx: StrategyContext, params) -> FPFPlugin:
    return FPFPlugin(modules=_modules_option(params), max_param_fraction=params.max_param_fraction,
                     iterations=params.iterations, lr=params.lr, momentum=params.momentum,
                     batch_size=params.batch_size or ctx.train.batch_size, at=params.at,
                     mem_size=params.mem_size, n_experiences=ctx.scenario.n_experiences,
                     seed=int(torch.initial_seed()) % 2**31, loss=params.loss, probe=params.probe,
                     probe_sets=probe_sets(ctx.scenario, params.probe_per_class) if params.probe != "none" else ())


def _build_kfpf(ctx: StrategyContext, params, beta: float) -> SupervisedTemplate:
    plugin = KFPFPlugin(total_iterations=stream_iterations(ctx.scenario, ctx.train, params.valid_per_class),
                        k=params.k, mem_size=params.mem_size, modules=_modules_option(params),
                        max_param_fraction=params.max_param_fraction, iterations=params.iterations,
                        lr=params.lr, momentum=params.momentum,
                        batch_size=params.batch_size or ctx.train.batch_size, beta=beta,
                        seed=int(torch.initial_seed()) % 2**31, valid_per_class=params.valid_per_class,
                        tune=[group.model_dump() for group in params.tune or ()], probe=params.probe,
                        probe_sets=probe_sets(ctx.scenario, params.probe_per_class) if params.probe != "none" else (),
                        n_experiences=ctx.scenario.n_experiences)
    return SupervisedTemplate(model=ctx.model, optimizer=ctx.optimizer, criterion=ctx.criterion,
                              **ctx.template_kwargs([plugin]))


def build_kfpf_ce(ctx: StrategyContext, params) -> SupervisedTemplate:
    return _build_kfpf(ctx, params, beta=0.0)


def build_kfpf_kd(ctx: StrategyContext, params) -> SupervisedTemplate:
    return _build_kfpf(ctx, params, beta=params.beta)


# --------------------------------------------------------------------------- checkpoints (cl.checkpoint)
# Kept apart from the method above: what FPF and k-FPF carry between experiences — the reservoir (samples,
# logits, count seen, its generator), the sensitivity history, the selections and the fine-tuning tally.


def _reservoir_state(buffer: ReservoirBuffer | None) -> dict | None:
    if buffer is None:
        return None
    return {"capacity": buffer.capacity, "store_logits": buffer.store_logits, "seen": buffer.seen,
            "x": buffer.x, "y": buffer.y, "logits": buffer.logits, "generator": buffer._generator.get_state()}


def _load_reservoir(state: dict | None) -> ReservoirBuffer | None:
    if state is None:
        return None
    buffer = ReservoirBuffer(int(state["capacity"]), store_logits=bool(state["store_logits"]))
    buffer.seen, buffer.x, buffer.y, buffer.logits = int(state["seen"]), state["x"], state["y"], state["logits"]
    buffer._generator.set_state(state["generator"])
    return buffer


def _fpf_common_state(plugin: FPFBase) -> dict:
    return {"sensitivity": plugin.sensitivity.per_experience, "selections": plugin.selections,
            "tuner_flops": plugin.tuner.flops, "tuner_calls": plugin.tuner.calls, "calls": plugin.calls}


def _load_fpf_common(plugin: FPFBase, state: dict) -> None:
    plugin.sensitivity.per_experience = [{k: float(v) for k, v in row.items()} for row in state["sensitivity"]]
    plugin.selections = [list(names) for names in state["selections"]]
    plugin.tuner.flops, plugin.tuner.calls = float(state["tuner_flops"]), int(state["tuner_calls"])
    plugin.calls = list(state.get("calls", []))          # checkpoints written before the probe have none


def _save_fpf(plugin: FPFPlugin, ctx) -> dict:
    return {**_fpf_common_state(plugin), "own_buffer": _reservoir_state(plugin.own_buffer), "trained": plugin._trained}


def _load_fpf(plugin: FPFPlugin, state: dict, ctx) -> None:
    _load_fpf_common(plugin, state)
    plugin.own_buffer = _load_reservoir(state["own_buffer"])
    plugin._trained = int(state["trained"])


def _save_kfpf(plugin: KFPFPlugin, ctx) -> dict:
    return {**_fpf_common_state(plugin), "buffer": _reservoir_state(plugin.buffer), "iteration": plugin.iteration,
            "triggered_at": list(plugin.triggered_at)}


def _load_kfpf(plugin: KFPFPlugin, state: dict, ctx) -> None:
    _load_fpf_common(plugin, state)
    plugin.buffer = _load_reservoir(state["buffer"])
    plugin.iteration = int(state["iteration"])
    plugin.triggered_at = [int(i) for i in state["triggered_at"]]


def _register_checkpoints() -> None:
    from cl.checkpoint import register_state

    register_state(FPFPlugin, _save_fpf, _load_fpf)
    register_state(KFPFPlugin, _save_kfpf, _load_kfpf)


_register_checkpoints()
