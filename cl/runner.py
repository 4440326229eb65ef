"""One run, end to end: seed, build scenario/model/strategy, train and evaluate, log.

`execute(cfg, runlog)` does the work and never raises for a failure of the run itself: an
exception or a non-finite loss becomes a FAILED `RunResult` whose reason is also set as the
``failure_reason`` tag (with the traceback as an artifact). Whoever opened the MLflow run
closes it with the result's status — `run()` here, or the grid launcher.
"""
from __future__ import annotations

import contextlib
import io
import logging
import random
import time
import traceback
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from cl.config import RunConfig
from cl.registry import MODELS, PLUGINS, SCENARIOS, STRATEGIES, TRANSFERS, import_user_modules
from cl.tracking import PARENT_TAG, RunLog

log = logging.getLogger(__name__)

FINAL_METRICS = (
    "final/avg_acc", "final/avg_inc_acc", "final/forgetting", "final/bwt",
    "final/memory_mb", "final/train_seconds", "cost/train_flops",
)


@dataclass
class RunResult:
    config_hash: str
    status: str                                  # "FINISHED" or "FAILED"
    metrics: dict[str, float] = field(default_factory=dict)
    accuracy_matrix: list[list[float]] | None = None
    reason: str | None = None
    run_id: str | None = None
    warning: str | None = None                   # the run finished but looks wrong (see cl.health)

    @property
    def ok(self) -> bool:
        return self.status == "FINISHED"


def execute(cfg: RunConfig, runlog: RunLog, resume=None) -> RunResult:
    """Train `cfg` and log everything to `runlog`; failures are returned, not raised.

    `resume` (a `cl.checkpoint.ResumePlan`, found by the launcher) continues a run from its
    checkpoint; without it the run starts fresh. Either way the run checkpoints as it goes, and
    its checkpoint is deleted once it ends here (finished or failed): only a dead process leaves one.
    """
    from cl.checkpoint import RunCheckpoints

    checkpoints = None
    try:
        checkpoints = RunCheckpoints.start(cfg.config_hash, runlog, resume)
        result = _execute(cfg, runlog, checkpoints)
        checkpoints.discard()
        return result
    except Exception as exc:  # noqa: BLE001 - any failure of the run is reported, the grid goes on
        if checkpoints is not None:   # (an interrupt — KeyboardInterrupt, SystemExit — keeps it: resumable)
            checkpoints.discard()
        reason = f"{type(exc).__name__}: {exc}"
        log.warning("run %s failed: %s", cfg.config_hash, reason)
        try:
            runlog.set_tags({"failure_reason": reason[:5000]})
            runlog.log_artifact("failure/traceback.txt", traceback.format_exc().encode())
        except Exception:  # noqa: BLE001 - the tracking store itself may be what failed
            log.exception("could not record the failure of run %s", cfg.config_hash)
        return RunResult(cfg.config_hash, "FAILED", reason=reason)


def _execute(cfg: RunConfig, runlog: RunLog, checkpoints) -> RunResult:
    import torch

    from cl import metrics, plots
    from cl.checkpoint import ExperienceCheckpoints
    from cl.cost import FlopMeter
    from cl.health import make_health_plugin
    from cl.models import count_parameters
    from cl.run_logger import make_finite_loss_guard, make_logger_plugin
    from cl.schedule import ExperienceSchedule
    from cl.strategy_api import (StrategyContext, aligned_mem_size, count_exemplars, persistent_state_bytes,
                                 plugin_artifacts, plugin_metrics)

    import_user_modules(cfg.imports)
    started = time.perf_counter()
    if cfg.is_transfer:
        return _execute_transfer(cfg, runlog, started, checkpoints)
    scenario_params = _params(SCENARIOS, cfg.scenario)
    _log_provenance(runlog, {"seed": cfg.seed, "scenario.seed": scenario_params.seed})
    seed_everything(cfg.seed)

    scenario = build_scenario(cfg.scenario)
    runlog.log_params({f"data.{k}": v for k, v in scenario.data.items()})   # how the data was read
    device = _choose_device(cfg, runlog)
    loader_kwargs = _place_data(cfg, scenario, device, runlog)

    def build_model():
        return MODELS.get(cfg.model.name).load()(
            input_shape=scenario.input_shape, n_classes=scenario.n_classes, **_params(MODELS, cfg.model).model_dump())

    strategy_params = _params(STRATEGIES, cfg.strategy)
    if cfg.memory is not None:  # equal total memory: the exemplar budget follows from the bytes
        mem_size = aligned_mem_size(cfg.memory, cfg.strategy.name, cfg.strategy.options, build_model, scenario)
        strategy_params = strategy_params.model_copy(update={"mem_size": mem_size})
        runlog.log_params({"memory.resolved_mem_size": str(mem_size)})
        seed_everything(cfg.seed)  # the budget's trial models must not shift the real model's init
    model = build_model().to(device)
    optimizer = make_optimizer(model, cfg.train)
    logger = make_logger_plugin(runlog, test_sizes=scenario.test_sizes,
                                classes_per_experience=scenario.classes_per_experience,
                                task_aware=scenario.task_labels)
    flop_meter = FlopMeter()
    ctx = StrategyContext(
        model=model, optimizer=optimizer, criterion=torch.nn.CrossEntropyLoss(), train=cfg.train,
        scenario=scenario, device=device, evaluator=_silent_evaluator(),
        plugins=[*scenario.train_plugins(), ExperienceSchedule(cfg.train), flop_meter,
                 *_precision_plugins(cfg, device)])
    # add-ons run before the logger, so their after-experience work counts as training time
    ctx.plugins += [PLUGINS.get(p.name).load()(ctx, _params(PLUGINS, p)) for p in cfg.plugins]
    health = make_health_plugin(runlog, progress=logger)
    ctx.plugins += [logger, health, make_finite_loss_guard()]
    with _quiet_avalanche():
        strategy = STRATEGIES.get(cfg.strategy.name).load()(ctx, strategy_params)
        T = scenario.n_experiences
        progress = ExperienceCheckpoints(checkpoints, strategy, scenario.benchmark.train_stream, runlog)
        done = progress.restore()       # experiences a checkpoint already holds (0 for a fresh run)
        started -= progress.elapsed_before
        try:
            for t, experience in enumerate(scenario.benchmark.train_stream):   # progress: per epoch, by the logger
                if t < done:
                    continue
                strategy.train(experience, num_workers=0, **loader_kwargs)
                strategy.eval(scenario.benchmark.test_stream, num_workers=0, **loader_kwargs)
                progress.after_experience(t + 1, time.perf_counter() - started)
        finally:
            flop_meter.close()

    R = logger.R
    weights = np.asarray(scenario.test_sizes, dtype=float)
    n_exemplars = count_exemplars(strategy)
    footprint = metrics.memory_footprint(count_parameters(strategy.model), n_exemplars, scenario.input_shape)
    final = {
        "final/avg_acc": metrics.average_accuracy(R, weights),
        "final/avg_inc_acc": metrics.average_incremental_accuracy(R, weights),
        "final/forgetting": metrics.forgetting(R),
        "final/bwt": metrics.backward_transfer(R),
        "final/memory_mb": footprint.total_mb,
        "final/train_seconds": logger.train_seconds,
        "final/wall_seconds": time.perf_counter() - started,
        "memory/model_bytes": footprint.model_bytes,
        "memory/exemplar_bytes": footprint.exemplar_bytes,
        "memory/n_exemplars": n_exemplars,
        "memory/persistent_state_bytes": persistent_state_bytes(strategy),
        "cost/train_flops": flop_meter.total(strategy),
        "health/collapsed_experiences": sum(check.collapsed for check in health.checks),
    }
    for name, tally in logger.extra.items():   # plugins' own classifiers, e.g. MEMO's NME
        if not np.isfinite(tally.R).all():     # it could not predict after some experience
            continue
        final[f"final/{name}_avg_acc"] = metrics.average_accuracy(tally.R, weights)
        final[f"final/{name}_avg_inc_acc"] = metrics.average_incremental_accuracy(tally.R, weights)
    class_R, class_counts = logger.class_R, logger.class_test_counts
    if scenario.rare_classes:   # the rare-class stream's question: are the few-shot classes learnt, and kept?
        common = [c for c in range(class_R.shape[1]) if c not in scenario.rare_classes]
        for name, classes in (("rare", scenario.rare_classes), ("common", common)):
            final[f"final/{name}_acc"] = metrics.class_subset_accuracy(class_R[-1], class_counts, classes)
            final[f"final/{name}_acc_when_learnt"] = metrics.accuracy_when_learnt(
                class_R, class_counts, classes, scenario.classes_per_experience)
        runlog.log_params({"scenario.resolved_rare_classes": ",".join(map(str, scenario.rare_classes))})
    runlog.log_metrics(final, step=T - 1)
    runlog.log_artifact("per_class_accuracy.csv", class_matrix_csv(class_R, class_counts))
    avg_seen = [metrics.seen_accuracy(R, t, weights) for t in range(T)]
    runlog.log_artifact("accuracy_matrix.csv", matrix_csv(R))
    runlog.log_artifact("accuracy_matrix.png", plots.to_png(plots.accuracy_heatmap(R)))
    runlog.log_artifact("accuracy_curve.png", plots.to_png(plots.accuracy_curves(R, avg_seen)))
    for path, data in plugin_artifacts(strategy).items():
        runlog.log_artifact(path, data)
    for step, values in plugin_metrics(strategy):
        runlog.log_metrics(values, step=step)
    return RunResult(cfg.config_hash, "FINISHED", metrics={k: float(v) for k, v in final.items()},
                     accuracy_matrix=R.tolist(), warning=health.warning)


def _execute_transfer(cfg: RunConfig, runlog: RunLog, started: float, checkpoints) -> RunResult:
    """A registered transfer experiment (see `cl.transfer_run`)."""
    from cl.transfer_run import TransferContext, final_metric_names

    _log_provenance(runlog, {"seed": cfg.seed})
    seed_everything(cfg.seed)
    ctx = TransferContext(runlog=runlog, train=cfg.train, device=_choose_device(cfg, runlog), seed=cfg.seed,
                          checkpoints=checkpoints)
    with _quiet_avalanche():
        metrics = TRANSFERS.get(cfg.transfer.name).load()(ctx, _params(TRANSFERS, cfg.transfer))
    final = final_metric_names(metrics)
    final["final/wall_seconds"] = time.perf_counter() - started
    runlog.log_metrics(final, step=0)
    return RunResult(cfg.config_hash, "FINISHED", metrics=final)


def run(
    cfg: RunConfig,
    *,
    tracking_uri: str | None = None,
    parent_run_id: str | None = None,
    tags: Mapping[str, str] | None = None,
    on_progress=None,
    resume: bool = False,
) -> RunResult:
    """Open an MLflow run for `cfg`, execute it in this process, and close it with its status.

    With `resume`, a run of the same config left unfinished by a dead process continues from its
    checkpoint in the same MLflow run (`cl.resume.find_resume_plan`); without one, a new run starts.
    Raises `ConfigError` (nothing logged) when a preflight check fails, e.g. data missing.
    """
    from cl.tracking import MlflowRunLog, experiment_id, store_client
    from cl.resume import find_resume_plan, reopen_run

    cfg.preflight()  # bad input is an error before anything is logged
    client = store_client(tracking_uri)
    plan = None
    if resume:
        plan = find_resume_plan(client, experiment_id(client, cfg.experiment), cfg.config_hash, include_failed=True)
    if plan is not None:
        run_id = plan.run_id
        reopen_run(client, run_id, {PARENT_TAG: parent_run_id} if parent_run_id else None)
    else:
        run_id = open_run(client, cfg, parent_run_id=parent_run_id, tags=tags)
    try:
        result = execute(cfg, MlflowRunLog(client, run_id, on_progress), resume=plan)
    except BaseException:
        client.set_terminated(run_id, "KILLED")
        raise
    client.set_terminated(run_id, result.status)
    result.run_id = run_id
    return result


def open_run(client, cfg: RunConfig, *, parent_run_id: str | None = None,
             tags: Mapping[str, str] | None = None, run_name: str | None = None) -> str:
    """Create the MLflow run of `cfg` (RUNNING) with its hashes, params and resolved config."""
    from cl.tracking import RUN_NAME_TAG, MlflowRunLog, experiment_id
    from cl.resume import runner_tags

    if cfg.is_transfer:
        what = {"transfer": cfg.transfer.name, "strategy": cfg.transfer.name}
        default_name = f"{cfg.transfer.name}-s{cfg.seed}"
    else:
        what = {"strategy": cfg.strategy.name, "scenario": cfg.scenario.name}
        default_name = f"{cfg.strategy.name}-{cfg.scenario.name}-s{cfg.seed}"
    all_tags = {
        "config_hash": cfg.config_hash,
        "group_hash": cfg.group_hash,
        **what,
        "seed": str(cfg.seed),
        RUN_NAME_TAG: run_name or default_name,
        **runner_tags(),
        **(tags or {}),
    }
    if parent_run_id:
        all_tags[PARENT_TAG] = parent_run_id
    run = client.create_run(experiment_id(client, cfg.experiment), tags=all_tags)
    runlog = MlflowRunLog(client, run.info.run_id)
    runlog.log_params(cfg.flat_params())
    runlog.log_artifact("config.yaml", cfg.to_yaml().encode())
    return run.info.run_id


# --------------------------------------------------------------------------- helpers


def build_scenario(component):
    """The `cl.scenarios.Scenario` a run's `scenario:` section describes."""
    return SCENARIOS.get(component.name).load()(**_params(SCENARIOS, component).split_kwargs())


def _log_provenance(runlog: RunLog, seeds: Mapping[str, int]) -> None:
    from cl.provenance import provenance, provenance_tags, to_json_bytes

    prov = provenance(seeds)
    runlog.log_artifact("provenance.json", to_json_bytes(prov))
    runlog.set_tags(provenance_tags(prov))


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy, torch and Avalanche's RNG manager with the training seed."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    try:
        from avalanche.training.determinism.rng_manager import RNGManager

        RNGManager.set_random_seeds(seed)
    except ImportError:  # pragma: no cover - older/newer Avalanche layouts
        pass


def _choose_device(cfg: RunConfig, runlog: RunLog):
    """Resolve `train.device` here, in the process that trains (a Ray task sees its own GPU); tag what was used.

    Tags, not params: a run's params mirror its config exactly.
    """
    from cl.devices import resolve_device as choose

    choice = choose(cfg.train.device)
    runlog.set_tags(choice.tags())
    return choice.device


def _place_data(cfg: RunConfig, scenario, device, runlog: RunLog) -> dict:
    """Scenario tensors to the device once if they fit; returns the DataLoader options that needs."""
    from cl.devices import place_scenario_data

    placement = place_scenario_data(scenario, device, cfg.train.data_on_device)
    runlog.set_tags({"device.data_placement": placement.reason})
    return placement.loader_kwargs


def _precision_plugins(cfg: RunConfig, device) -> list:
    """The mixed-precision plugin for `train.precision` (none for fp32)."""
    from cl.precision import make_precision_plugin

    plugin = make_precision_plugin(cfg.train.precision, device)
    return [] if plugin is None else [plugin]


def make_optimizer(model, train):
    import torch

    if train.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=train.lr, weight_decay=train.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=train.lr, momentum=train.momentum,
                           weight_decay=train.weight_decay)


def matrix_csv(R: np.ndarray) -> bytes:
    buffer = io.StringIO()
    n = R.shape[0]
    buffer.write("after_exp," + ",".join(f"exp_{j}" for j in range(n)) + "\n")
    for t in range(n):
        buffer.write(f"{t}," + ",".join("" if np.isnan(v) else f"{v:.6f}" for v in R[t]) + "\n")
    return buffer.getvalue().encode()


def class_matrix_csv(class_R: np.ndarray, test_counts: np.ndarray) -> bytes:
    """Accuracy per class after each experience (rows), then a row of test samples per class."""
    buffer = io.StringIO()
    buffer.write("after_exp," + ",".join(f"class_{c}" for c in range(class_R.shape[1])) + "\n")
    for t, row in enumerate(class_R):
        buffer.write(f"{t}," + ",".join("" if np.isnan(v) else f"{v:.6f}" for v in row) + "\n")
    buffer.write("test_samples," + ",".join(str(int(n)) for n in test_counts) + "\n")
    return buffer.getvalue().encode()


def _params(registry, component) -> Any:
    from cl.config import component_params

    return component_params(registry.kind, component)


def _silent_evaluator():
    """An EvaluationPlugin with no metrics and no loggers: the suite does its own logging."""
    from avalanche.training.plugins import EvaluationPlugin

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="No loggers specified", category=UserWarning)
        return EvaluationPlugin(loggers=[])


_AVALANCHE_NOISE = (
    # Replay/GDumb/ER-ACE/Dark-ER call a storage-policy method deprecated in 0.6, once per experience.
    "Call to deprecated function update",
)


@contextlib.contextmanager
def _quiet_avalanche():
    """Drop Avalanche's known, harmless deprecation notices and only those.

    Avalanche's `@deprecated` resets the warning filters itself (``simplefilter("once")``),
    so a filter cannot hold them back: record everything, then re-emit all but the known notices.
    """
    caught: list = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            yield
    finally:
        for w in caught:
            if issubclass(w.category, DeprecationWarning) and str(w.message).startswith(_AVALANCHE_NOISE):
                continue
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
