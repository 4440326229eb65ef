"""Checkpoints inside a run: write them atomically, refuse the wrong ones, restore a run exactly.

A run that dies part-way (preempted node, OOM killer, a closed laptop) resumes from its last
checkpoint into the same MLflow run. Continual-learning runs checkpoint after every experience
(`StrategyCheckpoint`); transfer experiments checkpoint where they choose, through their
context (`cl.transfer_run.TransferContext.checkpoint` / `.resume`). Both use this module.

**One file per run**, ``<cache>/checkpoints/<config_hash>/<token>.ckpt`` (`checkpoint_path`; cache
as in `cl.cache.cache_root`; the token is the run's, below, so two runs of one cell — in two
stores, say — never overwrite each other's), replaced at every write: a temporary file in the same
folder, flushed and fsync'ed, then `os.replace` — a reader sees the old checkpoint or the new
one, never half of one. It is deleted when the run ends (finished or failed), and when it is refused.
The file is a small JSON header and a `torch.save` payload::

    b"CLSUITE-CKPT\\n" | 8-byte header length | header JSON | payload (torch.save of plain data)

The header carries the format version, the code version (git SHA), the cell's config hash, the
run's *token* (a random id the run sets as its ``checkpoint.token`` tag when it starts; a
checkpoint left by another run of the same cell — another store, an earlier attempt — is never
taken for this one), the position (``experiences_done`` / ``step``) and the SHA-256 of the
payload. A launcher validates the header and the digest without importing torch (`inspect`);
the run loads the payload with ``torch.load(weights_only=True)``, so a checkpoint holds only
tensors and JSON-like data (dicts, lists, str, int, float, bool, None) — never pickled objects.

**What is refused** (`CheckpointRefused`, logged with the reason; the run then starts from
scratch in a new MLflow run — states are never mixed):
- a file that is not a checkpoint, is truncated, or whose payload digest does not match;
- another format version (`FORMAT_VERSION`);
- another code version: resuming with other code would make one run the product of two
  programs, and the run's ``mlflow.source.git.commit`` tag would be wrong for half of it. Set
  ``CLSUITE_RESUME_ANY_CODE=1`` (``clsuite run --resume-any-code``) to accept it anyway, e.g. after a
  fix that cannot change results; the resumed run then gets a ``resumed_code`` tag. Uncommitted
  changes (``git_dirty``) are recorded but cannot be compared;
- another cell (config hash) or another run (token).

**Where Avalanche's own checkpointing does not fit.** `avalanche.checkpointing.save_checkpoint`
pickles the whole strategy object with dill (model, optimizer, plugins, datasets, the RNG
manager) and `maybe_load_checkpoint` unpickles it: loading executes arbitrary code from the file
(no ``weights_only``), any change to a class between save and load breaks or silently changes
the objects, and the file holds dataset objects. We keep its idea — resume at the experience
index after the last one trained, RNG states saved with the model — and its RNG set (Python,
NumPy, torch CPU and CUDA: the generators `avalanche.training.determinism.RNGManager` manages),
but serialise explicit state: ``model.state_dict()``, the optimiser's state keyed by parameter
*name*, Avalanche's clock counters, and each plugin's state through `Resumable` (or an adapter
registered with `register_state` for classes we do not own, e.g. Avalanche's replay buffer).
Datasets are saved as references into the scenario's train stream (`CheckpointContext`), not copied.

A strategy whose plugins keep state with no hook is run without checkpoints (logged once, tag
``checkpoint.off``); it restarts from scratch as before. Which registered strategies have hooks today is
listed in the README (its "Resuming" paragraph).

**Same result after a crash.** A checkpoint is written after experience t is trained *and*
evaluated; the resumed process builds scenario, model, optimiser and strategy exactly as a fresh
run does (same seeds), loads the state into them, and restores the RNGs last, so it draws the same
numbers from experience t + 1 on (data order, dropout, reservoir sampling, model growth). On CPU
with a fixed seed and thread count the resumed run is bit-identical to an uninterrupted one —
accuracy matrix, loss curve and FLOPs (`tests/test_resume.py`, every strategy with hooks). What is
not covered: a different thread count between the two processes (a CPU matmul's summation order
depends on it), and non-deterministic CUDA kernels (atomics in scatter/index_add backward, cuDNN
autotuning) — there a resumed run differs from an uninterrupted one exactly as two uninterrupted
runs do. A crash between an experience's metric rows and its checkpoint makes the resumed run log
that experience's rows a second time (same values at the same steps when deterministic).
"""
from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, runtime_checkable

from cl import checkpoint_file
from cl.checkpoint_file import (PATH_TAG, RESUMED_TAG, TOKEN_TAG, CheckpointRefused, capture_rng,
                                 checkpoint_path, maybe_crash, read, restore_rng, write)

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- state of the parts


class CheckpointContext:
    """What a part's save/restore hook may need besides its own state: the strategy it belongs to
    (its model, device) and datasets as references into the scenario's train stream, so a
    checkpoint holds no data.

    A dataset reference is ``{"experience": e}`` for an experience's dataset itself, else the runs
    of ``(experience, indices)`` its samples come from, in order; `dataset_from_ref` rebuilds the
    same samples in the same order, with the experience datasets' transforms. Positions are read
    from Avalanche 0.6's flat-data index (`_flat_data._get_idx`), the one private API used here.
    """

    def __init__(self, strategy, train_stream):
        self.strategy = strategy
        self.datasets = [experience.dataset for experience in train_stream]
        self._where: dict[tuple[int, int], tuple[int, int]] | None = None

    @property
    def device(self):
        return self.strategy.device

    @staticmethod
    def _base_positions(dataset) -> list[tuple[int, int]]:
        out = []
        for i in range(len(dataset)):
            data, j = dataset, i
            while hasattr(data, "_flat_data") or hasattr(data, "_get_idx"):
                flat = getattr(data, "_flat_data", data)
                d, j = flat._get_idx(j)
                data = flat._datasets[d]
            out.append((id(data), j))
        return out

    def dataset_ref(self, dataset) -> dict[str, Any]:
        for e, own in enumerate(self.datasets):
            if dataset is own:
                return {"experience": e}
        if self._where is None:
            self._where = {pos: (e, i) for e, own in enumerate(self.datasets)
                           for i, pos in enumerate(self._base_positions(own))}
        runs: list[list] = []
        for pos in self._base_positions(dataset):
            if pos not in self._where:
                raise ValueError("a dataset holds samples that are not in the scenario's train stream")
            e, i = self._where[pos]
            if runs and runs[-1][0] == e:
                runs[-1][1].append(i)
            else:
                runs.append([e, [i]])
        return {"runs": runs}

    def dataset_from_ref(self, ref: Mapping[str, Any]):
        from avalanche.benchmarks.utils.utils import concat_datasets

        if "experience" in ref:
            return self.datasets[int(ref["experience"])]
        parts = [self.datasets[int(e)].subset([int(i) for i in indices]) for e, indices in ref["runs"]]
        if not parts:
            return concat_datasets([])
        return parts[0] if len(parts) == 1 else concat_datasets(parts)


@runtime_checkable
class Resumable(Protocol):
    """A plugin (or strategy) whose state between experiences is more than the model and optimiser.

    `checkpoint_state` returns tensors and JSON-like data (datasets through `ctx.dataset_ref`);
    `restore_checkpoint_state` puts them back into a freshly built instance (same options), after
    the model and optimiser are restored.
    """

    def checkpoint_state(self, ctx: CheckpointContext) -> dict[str, Any]: ...

    def restore_checkpoint_state(self, state: dict[str, Any], ctx: CheckpointContext) -> None: ...


_ADAPTERS: dict[type, tuple[Callable, Callable] | None] = {}


def register_state(cls: type, save: Callable | None = None, load: Callable | None = None) -> None:
    """Declare how to checkpoint instances of `cls` (exact type), a class we cannot give `Resumable`
    methods (e.g. Avalanche's): ``save(obj, ctx) -> dict``, ``load(obj, state, ctx)`` (`CheckpointContext`). Without
    functions, `cls` is declared to keep no state between experiences."""
    if (save is None) != (load is None):
        raise ValueError("register_state: give both save and load, or neither (stateless)")
    _ADAPTERS[cls] = None if save is None else (save, load)


def _handler(obj) -> tuple[Callable, Callable] | None:
    """(save, load) for `obj`; raises `LookupError` if nothing says how to checkpoint it."""
    if isinstance(obj, Resumable):
        return (lambda o, ctx: o.checkpoint_state(ctx)), (lambda o, s, ctx: o.restore_checkpoint_state(s, ctx))
    if type(obj) in _ADAPTERS:
        return _ADAPTERS[type(obj)]
    raise LookupError(type(obj).__qualname__)


def _register_avalanche_core() -> None:
    """Avalanche's generic template and the plugins every strategy carries: clock (counters),
    evaluator and periodic evaluation (nothing kept between experiences)."""
    from avalanche.training.plugins import EvaluationPlugin
    from avalanche.training.plugins.clock import Clock
    from avalanche.training.templates import SupervisedTemplate
    from avalanche.training.templates.base_sgd import PeriodicEval

    counters = ("train_iterations", "train_exp_counter", "train_exp_epochs", "train_exp_iterations",
                "train_epoch_iterations", "total_iterations")

    def save_clock(clock, ctx):
        return {name: int(getattr(clock, name)) for name in counters}

    def load_clock(clock, state, ctx):
        for name in counters:
            setattr(clock, name, int(state[name]))

    register_state(Clock, save_clock, load_clock)
    for cls in (EvaluationPlugin, PeriodicEval, SupervisedTemplate):
        register_state(cls)


# --------------------------------------------------------------------------- optimiser


def optimizer_state(optimizer, model) -> dict[str, Any]:
    """The optimiser's state with each parameter named by the model (parameters it holds that the model
    no longer has — e.g. a replaced head — are dropped: they get no gradient and never move)."""
    names = {id(p): n for n, p in model.named_parameters()}
    saved = optimizer.state_dict()
    index_of = {}
    position = 0
    for group in optimizer.param_groups:
        for p in group["params"]:
            index_of[position] = names.get(id(p))
            position += 1
    groups, state = [], {}
    for group in saved["param_groups"]:
        kept = [index_of[i] for i in group["params"] if index_of[i] is not None]
        groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": kept})
    for i, value in saved["state"].items():
        if index_of.get(i) is not None:
            state[index_of[i]] = value
    return {"param_groups": groups, "state": state}


def load_optimizer_state(optimizer, model, saved: Mapping[str, Any]) -> None:
    """Point the optimiser's groups at the model's parameters by name, then load their state."""
    params = dict(model.named_parameters())
    if len(saved["param_groups"]) != len(optimizer.param_groups):
        raise CheckpointRefused(f"optimiser has {len(optimizer.param_groups)} parameter groups, the checkpoint "
                                f"{len(saved['param_groups'])}")
    order: list[str] = []
    for group, saved_group in zip(optimizer.param_groups, saved["param_groups"]):
        missing = [n for n in saved_group["params"] if n not in params]
        if missing:
            raise CheckpointRefused(f"optimiser parameters not in the model: {missing[:5]}")
        group["params"] = [params[n] for n in saved_group["params"]]
        order.extend(saved_group["params"])
    index = {name: i for i, name in enumerate(order)}
    optimizer.load_state_dict({
        "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in saved["param_groups"]],
        "state": {index[n]: v for n, v in saved["state"].items()},
    })


# --------------------------------------------------------------------------- a run's checkpoints


@dataclass(frozen=True)
class ResumePlan:
    """What a launcher found for a cell: resume run `run_id` from its checkpoint (plain data, picklable)."""

    run_id: str
    token: str
    path: str
    position: dict[str, int]


@dataclass
class RunCheckpoints:
    """The checkpoints of one run: its path and token, whether it resumes, and the write log."""

    config_hash: str
    path: Path
    token: str
    runlog: Any = None
    resume: ResumePlan | None = None
    enabled: bool = True
    writes: list[tuple[dict, int, float]] = field(default_factory=list)    # (position, bytes, seconds)

    @classmethod
    def start(cls, config_hash: str, runlog, resume: ResumePlan | None = None) -> "RunCheckpoints":
        """Fresh run: a new token, tagged on the run (the path is tagged with the first write). Resumed: the
        plan's token and path."""
        if resume is not None:
            return cls(config_hash, Path(resume.path), resume.token, runlog, resume)
        token = uuid.uuid4().hex
        runlog.set_tags({TOKEN_TAG: token})
        return cls(config_hash, checkpoint_path(config_hash, token), token, runlog)

    def save(self, position: Mapping[str, int], payload: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        if not self.writes and self.resume is None:
            self.runlog.set_tags({PATH_TAG: str(self.path)})
        started = time.perf_counter()
        size = write(self.path, payload, {"config_hash": self.config_hash, "token": self.token,
                                          "position": dict(position)})
        seconds = time.perf_counter() - started
        self.writes.append((dict(position), size, seconds))
        log.info("checkpoint %s written (%s, %.1f MB, %.2f s)", self.path, dict(position), size / 1e6, seconds)
        maybe_crash(position)

    def load(self) -> tuple[dict, dict] | None:
        """(header, payload) to resume from, or None for a fresh run. Raises `CheckpointRefused`."""
        if self.resume is None:
            return None
        return read(self.path, config_hash=self.config_hash, token=self.token)

    def discard(self) -> None:
        """The run ended (finished or failed on its own): its checkpoint is no longer needed."""
        self.path.unlink(missing_ok=True)


class StrategyCheckpoint:
    """Save and restore an Avalanche strategy between experiences: model, optimiser, strategy and
    plugin states, RNG. `blockers` lists the parts with no way to checkpoint them (then nothing is saved)."""

    def __init__(self, strategy, train_stream):
        _register_avalanche_core()
        self.strategy = strategy
        self.ctx = CheckpointContext(strategy, train_stream)
        self.blockers: list[str] = []
        for part in self._parts():
            try:
                _handler(part)
            except LookupError as exc:
                self.blockers.append(str(exc))

    def _parts(self) -> list:
        return [self.strategy, *self.strategy.plugins]

    def _keys(self) -> list[str]:
        return [f"{i}:{type(p).__qualname__}" for i, p in enumerate(self._parts())]

    def state(self) -> dict[str, Any]:
        strategy = self.strategy
        model = strategy.model
        named = dict(model.named_parameters())
        optimized = getattr(strategy, "optimized_param_id", None)
        parts = {}
        for key, part in zip(self._keys(), self._parts()):
            handler = _handler(part)
            parts[key] = {} if handler is None else handler[0](part, self.ctx)
        return {
            "model": model.state_dict(),
            "optimizer": optimizer_state(strategy.optimizer, model),
            # Avalanche's name -> parameter map of what the optimiser holds (None before the first experience)
            "optimized_names": None if optimized is None else
            [n for n, p in optimized.items() if named.get(n) is p],
            "parts": parts,
            "rng": capture_rng(),
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Load `state` into the freshly built strategy; RNG last, so building it consumed nothing."""
        strategy = self.strategy
        if list(state["parts"]) != self._keys():
            raise CheckpointRefused(f"the strategy's parts changed: checkpoint has {list(state['parts'])}, "
                                    f"this run {self._keys()}")
        strategy.model.load_state_dict(state["model"])
        load_optimizer_state(strategy.optimizer, strategy.model, state["optimizer"])
        if state["optimized_names"] is not None:
            params = dict(strategy.model.named_parameters())
            strategy.optimized_param_id = {n: params[n] for n in state["optimized_names"]}
        for key, part in zip(self._keys(), self._parts()):
            handler = _handler(part)
            if handler is not None:
                handler[1](part, state["parts"][key], self.ctx)
        restore_rng(state["rng"])


class ExperienceCheckpoints:
    """A continual-learning run's checkpoints: restore before the first experience, save after each.

    The runner's whole contract: ``done = ckpt.restore()``, skip experiences ``< done``, and call
    ``ckpt.after_experience(t + 1, elapsed)`` once experience t is trained and evaluated (`elapsed`: wall
    seconds of the run so far, earlier attempts included — `elapsed_before` is what they took).
    """

    def __init__(self, checkpoints: RunCheckpoints, strategy, train_stream, runlog):
        self.checkpoints = checkpoints
        self.runlog = runlog
        self.saver = StrategyCheckpoint(strategy, train_stream)
        self.elapsed_before = 0.0
        if self.saver.blockers:
            checkpoints.enabled = False
            reason = f"no checkpoint hook for {', '.join(self.saver.blockers)}"
            log.info("run %s is not checkpointed (%s); a crash restarts it from scratch",
                     checkpoints.config_hash, reason)
            runlog.set_tags({"checkpoint.off": reason[:5000]})

    def restore(self) -> int:
        """Experiences already done (0 for a fresh run); raises `CheckpointRefused` if resuming is impossible."""
        loaded = self.checkpoints.load()
        if loaded is None:
            return 0
        if self.saver.blockers:
            raise CheckpointRefused(f"cannot restore: {', '.join(self.saver.blockers)} has no checkpoint hook")
        header, payload = loaded
        self.saver.restore(payload["strategy"])
        self.elapsed_before = float(payload["elapsed_s"])
        done = int(header["position"]["experiences_done"])
        note_resumed(self.runlog, header)
        return done

    def after_experience(self, done: int, elapsed_s: float) -> None:
        if not self.checkpoints.enabled:
            return
        self.checkpoints.save({"experiences_done": done},
                              {"strategy": self.saver.state(), "elapsed_s": elapsed_s})


def note_resumed(runlog, header: Mapping[str, Any]) -> None:
    """Tag a resumed run with where it resumed (and the code that wrote the checkpoint if it differs)."""
    position = ",".join(f"{k}={v}" for k, v in header["position"].items())
    tags = {RESUMED_TAG: position}
    if header.get("code") != checkpoint_file.code_identity()["code"]:
        tags["resumed_code"] = str(header.get("code"))
    runlog.set_tags(tags)
    log.info("resumed from checkpoint (%s) written %s", position, header.get("written_utc"))
