"""The contract every registered method passes, as functions anyone can call (cf. scikit-learn's `check_estimator`).

A method registered with this suite — built in, listed under a config's ``imports:``, or exposed through
the ``clsuite.registry`` entry-point group — runs through the real runner into a real MLflow store, as a
grid would run it. Each check raises `AssertionError` naming the entry and what failed, and returns the
run's `cl.runner.RunResult` when all holds::

    import my_pkg.mine                  # registers the strategy "mine"
    from cl.testing import check_strategy

    check_strategy("mine")

- `check_strategy(name)`: default options validate and round-trip; the strategy trains two experiences of
  split_digits (an MLP, 3 epochs); the run FINISHES with every final metric finite and every artifact;
  the accuracy matrix is logged per experience and matches its CSV; the strategy learns above chance;
  memory is accounted as parameters × 4 + exemplars × H·W·C bytes (MEMO), with exemplars only within
  `mem_size` (or every training sample, for a strategy that keeps all it saw); the logged config
  round-trips to the same hash and the logged params mirror it.
- `check_plugin(name, strategy=...)`: the add-on runs on that registered strategy, costs FLOPs of its own,
  keeps the run above chance and logs its files under a folder named after it.
- `check_transfer(name)`: the experiment runs with its entry's ``smoke_options`` (seconds, offline); the
  run FINISHES with finite ``final/`` metrics, provenance, and a config that round-trips to the same hash.

Each check imports torch and Avalanche only when it runs. Without `tracking_uri` it writes to a
temporary SQLite store that is removed afterwards.
"""
from __future__ import annotations

import contextlib
import csv
import io
import math
import os
import tempfile
from typing import Any, Iterator

ARTIFACTS = frozenset({"config.yaml", "provenance.json", "accuracy_matrix.csv", "accuracy_matrix.png",
                       "accuracy_curve.png"})
TRANSFER_ARTIFACTS = frozenset({"config.yaml", "provenance.json"})
CONTRACT_SCENARIO = {"name": "split_digits", "n_experiences": 2}     # 5 classes an experience: chance is 0.2
CONTRACT_MODEL = {"name": "mlp", "hidden": [64]}
CONTRACT_TRAIN = {"epochs": 3, "batch_size": 32, "lr": 0.1}
SMOKE_TRAIN = {"epochs": 1, "batch_size": 16, "lr": 0.05}
INPUT_SHAPE = "(1, 8, 8)"
INPUT_BYTES = 8 * 8 * 1          # one stored digit, uint8 (MEMO's accounting)
CHANCE = 0.2                     # 5 classes an experience
ABOVE_CHANCE = 0.4               # what a strategy reaches on one of its experiences at least


def strategy_config(name: str, plugins: list[dict] | tuple = ()) -> Any:
    """The `RunConfig` the strategy and plugin checks run: `name` with default options on two experiences."""
    from cl.config import RunConfig

    return RunConfig.from_dict({"experiment": f"contract-{name}", "scenario": dict(CONTRACT_SCENARIO),
                                "model": dict(CONTRACT_MODEL), "strategy": {"name": name},
                                "train": dict(CONTRACT_TRAIN), "plugins": list(plugins), "seed": 0})


def transfer_config(name: str) -> Any:
    """The `RunConfig` the transfer check runs: `name` with its registry entry's smoke options."""
    from cl.config import RunConfig
    from cl.registry import TRANSFERS

    entry = TRANSFERS.get(name)
    return RunConfig.from_dict({"experiment": f"transfer-{name}", "train": dict(SMOKE_TRAIN), "seed": 0,
                                "transfer": {"name": name, **dict(entry.smoke_options)}})


def check_strategy(name: str, *, tracking_uri: str | None = None) -> Any:
    """Run the strategy contract on the registered strategy `name` (see the module docstring)."""
    from cl.registry import STRATEGIES

    what = f"strategy {name!r}"
    entry = _entry(STRATEGIES, name, what)
    defaults = _check_params(entry, what)
    cfg = strategy_config(name)
    with _store(tracking_uri) as uri:
        result, client, logged = _run(cfg, uri, what)
        metrics = logged.data.metrics
        _check_accuracy(result, client, logged, what)
        _check_memory(metrics, defaults, cfg, what)
        _check_round_trip(cfg, client, logged, what)
        reading = {k: v for k, v in logged.data.params.items() if k.startswith("data.")}   # how the data was read
        params = {k: v for k, v in logged.data.params.items() if k not in reading}
        _expect(params == cfg.flat_params(), what, f"its logged params {params} differ from the config's "
                f"{cfg.flat_params()}")
        _expect(reading.get("data.input_shape") == INPUT_SHAPE and reading.get("data.layout") == "nchw", what,
                f"the data it read is logged as {reading}, expected input shape {INPUT_SHAPE}, layout nchw")
    return result


def check_plugin(name: str, *, strategy: str, tracking_uri: str | None = None) -> Any:
    """Run the plugin contract: the registered add-on `name` on the registered strategy `strategy`.

    Call it once with a strategy that keeps a buffer and once with one that does not, if the plugin
    treats them differently.
    """
    from cl.registry import PLUGINS, STRATEGIES

    what = f"plugin {name!r} on strategy {strategy!r}"
    _check_params(_entry(PLUGINS, name, f"plugin {name!r}"), f"plugin {name!r}")
    _entry(STRATEGIES, strategy, what)
    with _store(tracking_uri) as uri:
        plain, _, _ = _run(strategy_config(strategy), uri, f"strategy {strategy!r} (without the plugin)")
        result, client, logged = _run(strategy_config(strategy, [{"name": name}]), uri, what)
        flops, plain_flops = result.metrics.get("cost/train_flops", 0.0), plain.metrics.get("cost/train_flops", 0.0)
        _expect(flops > plain_flops, what, f"costs no FLOPs of its own ({flops:.3g} with it, {plain_flops:.3g} "
                "without): count its extra work (`extra_train_flops`, see cl.cost)")
        R = _matrix(result)
        _expect(R[-1].mean() > CHANCE, what, f"is at chance ({CHANCE}): R={R.tolist()}")
        files = {a.path for a in client.list_artifacts(result.run_id)}
        _expect(ARTIFACTS <= files and name in files, what, f"logged {sorted(files)}; expected "
                f"{sorted(ARTIFACTS)} and its own files under '{name}/'")
    return result


def check_transfer(name: str, *, tracking_uri: str | None = None, data_root: str | os.PathLike | None = None,
                   cache_dir: str | os.PathLike | None = None) -> Any:
    """Run the transfer contract on the registered experiment `name` with its entry's smoke options.

    `data_root` is where an experiment that reads data files finds them (default $CLSUITE_DATA_ROOT);
    `cache_dir` holds what it caches (default: a temporary folder, removed afterwards).
    """
    from cl.registry import TRANSFERS

    what = f"transfer {name!r}"
    entry = _entry(TRANSFERS, name, what)
    _check_params(entry, what, dict(entry.smoke_options))
    if data_root is not None and (why := transfer_data_missing(name, data_root)) is not None:
        raise AssertionError(f"{what}: its smoke options cannot run on data_root={data_root}: {why}")
    cfg = transfer_config(name)
    with contextlib.ExitStack() as stack:
        if cache_dir is None:
            cache_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="clsuite-check-cache-"))
        stack.enter_context(_environ(CLSUITE_CACHE=str(cache_dir),
                                     CLSUITE_DATA_ROOT=None if data_root is None else str(data_root)))
        uri = stack.enter_context(_store(tracking_uri))
        result, client, logged = _run(cfg, uri, what)
        tags = logged.data.tags
        _expect(tags.get("transfer") == name and tags.get("config_hash") == cfg.config_hash, what,
                f"tagged transfer={tags.get('transfer')!r}, config_hash={tags.get('config_hash')!r}; expected "
                f"{name!r}, {cfg.config_hash!r}")
        finals = {k: v for k, v in logged.data.metrics.items() if k.startswith("final/")}
        _expect(bool(finals), what, "logged no final/ metric")
        bad = {k: v for k, v in finals.items() if not math.isfinite(v)}
        _expect(not bad, what, f"final metrics not finite: {bad}")
        files = {a.path for a in client.list_artifacts(result.run_id)}
        _expect(TRANSFER_ARTIFACTS <= files, what, f"logged {sorted(files)}; expected {sorted(TRANSFER_ARTIFACTS)}")
        _check_round_trip(cfg, client, logged, what)
    return result


def transfer_data_missing(name: str, data_root: str | os.PathLike) -> str | None:
    """Why the transfer entry's smoke options cannot run on `data_root` (its preflight's message), or None
    (also for an experiment that reads no data files: one without a `data_root` option)."""
    from cl.datafiles import DataNotFoundError
    from cl.registry import TRANSFERS

    entry = TRANSFERS.get(name)
    if "data_root" not in entry.params.model_fields:
        return None
    try:
        entry.params.model_validate({**dict(entry.smoke_options), "data_root": str(data_root)}).preflight()
    except DataNotFoundError as error:
        return str(error)
    return None


def reads_data_files(name: str) -> bool:
    """Whether the transfer entry's smoke options read data files (they fail their preflight on no data)."""
    return transfer_data_missing(name, os.path.join(tempfile.gettempdir(), "clsuite-no-such-data-root")) is not None


# --------------------------------------------------------------------------- the parts of the checks


def _expect(condition: bool, what: str, failure: str) -> None:
    if not condition:
        raise AssertionError(f"{what}: {failure}")


def _entry(registry, name: str, what: str):
    _expect(name in registry, what, f"not registered; registered: {', '.join(registry.names())} (import the "
            "module that registers it first, or expose it under the clsuite.registry entry-point group)")
    return registry.get(name)


def _check_params(entry, what: str, options: dict | None = None):
    """The options the check runs with (default: none given) validate, and their dump validates back to them."""
    from cl.registry import dump_options

    options = options or {}
    try:
        params = entry.params.model_validate(options)
    except Exception as error:   # noqa: BLE001 - reported as the contract failure it is
        raise AssertionError(f"{what}: its params {entry.params.__name__} reject the options {options} (every "
                             f"option needs a default; smoke_options must validate): {error}") from error
    again = entry.params.model_validate(dump_options(params))
    _expect(again == params, what, f"its options do not round-trip through their dump: {params!r} -> {again!r}")
    return params


@contextlib.contextmanager
def _store(tracking_uri: str | None) -> Iterator[str]:
    if tracking_uri is not None:
        yield tracking_uri
        return
    with tempfile.TemporaryDirectory(prefix="clsuite-check-") as folder:
        yield f"sqlite:///{os.path.join(folder, 'mlflow.db')}"


@contextlib.contextmanager
def _environ(**values: str | None) -> Iterator[None]:
    """Set (a str) or leave alone (None) environment variables for the duration; restore them after."""
    old = {k: os.environ.get(k) for k, v in values.items() if v is not None}
    os.environ.update({k: v for k, v in values.items() if v is not None})
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _run(cfg, uri: str, what: str):
    """Run `cfg` in this process; the result, a client of the store and the logged run, which FINISHED."""
    from cl.runner import run
    from cl.tracking import client_for

    result = run(cfg, tracking_uri=uri)
    _expect(result.ok, what, f"the run failed: {result.reason}")
    client = client_for(uri)
    logged = client.get_run(result.run_id)
    _expect(logged.info.status == "FINISHED", what, f"the run is {logged.info.status}, not FINISHED")
    return result, client, logged


def _matrix(result):
    import numpy as np

    return np.array(result.accuracy_matrix)


def _check_accuracy(result, client, logged, what: str):
    """Final metrics finite; R logged per experience, matching its CSV and final/avg_acc; above chance."""
    import numpy as np

    from cl.runner import FINAL_METRICS

    metrics = logged.data.metrics
    missing = sorted(set(FINAL_METRICS) - set(metrics))
    _expect(not missing, what, f"missing final metrics {missing}")
    bad = {k: metrics[k] for k in FINAL_METRICS if not np.isfinite(metrics[k])}
    _expect(not bad, what, f"final metrics not finite: {bad}")
    steps = [m.step for m in client.get_metric_history(result.run_id, "acc/exp_0")]
    _expect(steps == [0, 1], what, f"acc/exp_0 logged at steps {steps}; expected one per experience, [0, 1]")
    R = _matrix(result)
    _expect(R.shape == (2, 2), what, f"accuracy matrix of shape {R.shape}, expected (2, 2)")
    _expect(max(R[0, 0], R[1, 1]) > ABOVE_CHANCE, what,
            f"learned nothing (5 classes per experience, chance 0.2; needs > {ABOVE_CHANCE}): R={R.tolist()}")
    _expect(abs(metrics["final/avg_acc"] - R[1].mean()) <= 0.05, what,
            f"final/avg_acc {metrics['final/avg_acc']:.4f} is not the mean of R's last row {R[1].mean():.4f}")
    names = {a.path for a in client.list_artifacts(result.run_id)}
    _expect(ARTIFACTS <= names, what, f"missing artifacts {sorted(ARTIFACTS - names)}")
    with open(client.download_artifacts(result.run_id, "accuracy_matrix.csv")) as file:
        rows = list(csv.reader(io.StringIO(file.read())))
    _expect(abs(float(rows[2][2]) - R[1, 1]) <= 1e-6, what,
            f"accuracy_matrix.csv says R[1, 1] = {rows[2][2]}, the run {R[1, 1]}")
    return R


def _training_samples(cfg) -> int:
    """Training samples in the run's whole stream (what a strategy that keeps everything holds)."""
    from cl.runner import build_scenario

    return sum(len(experience.dataset) for experience in build_scenario(cfg.scenario).benchmark.train_stream)


def _check_memory(metrics: dict, defaults, cfg, what: str) -> None:
    """Bytes = params × 4 + exemplars × H·W·C (MEMO); exemplars within `mem_size`, none, or all seen."""
    n_ex = metrics["memory/n_exemplars"]
    expected_mb = (metrics["memory/model_bytes"] + n_ex * INPUT_BYTES) / 2**20
    _expect(math.isclose(metrics["final/memory_mb"], expected_mb, rel_tol=1e-6), what,
            f"final/memory_mb {metrics['final/memory_mb']} is not (model bytes + exemplars × {INPUT_BYTES}) / 2**20 "
            f"= {expected_mb}")
    _expect(metrics["cost/train_flops"] > 0, what, "cost/train_flops is 0")
    mem_size = getattr(defaults, "mem_size", None)
    if mem_size is not None:
        _expect(0 < n_ex <= mem_size, what,
                f"keeps {n_ex:g} exemplars with mem_size {mem_size}; expected 1..{mem_size}")
    elif n_ex != 0:
        training_samples = _training_samples(cfg)
        _expect(n_ex == training_samples, what,
                f"keeps {n_ex:g} exemplars without a mem_size option: a strategy with a buffer takes its size as "
                f"`mem_size`; one without keeps none, or every training sample it saw ({training_samples})")


def _check_round_trip(cfg, client, logged, what: str) -> None:
    """The logged config.yaml validates back to the same config and hash, which the run is tagged with."""
    import yaml

    from cl.config import RunConfig

    with open(client.download_artifacts(logged.info.run_id, "config.yaml")) as file:
        again = RunConfig.from_dict(yaml.safe_load(file.read()))
    _expect(again == cfg and again.config_hash == cfg.config_hash == logged.data.tags.get("config_hash"), what,
            f"the logged config.yaml does not round-trip: hash {again.config_hash} vs {cfg.config_hash} "
            f"(tag {logged.data.tags.get('config_hash')})")
