"""`train.precision` (autocast + grad scaling) and `train.data_on_device`, on a CPU-only machine.

bf16 autocast runs for real on the CPU; fp16's GradScaler plumbing is exercised on the CPU through
the plugin's test switch (the runner itself refuses fp16 off CUDA). Moving data to an accelerator
is exercised with PyTorch's ``meta`` device, which every machine has. The accuracy claim
(bf16 ≈ fp32 on the quickstart grid) is measured by benchmarks/precision.py, not here.
"""
from pathlib import Path

import pytest

from cl.config import RunConfig
from cl.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]

# experiments/quickstart.yaml's cells as published, before train.precision/data_on_device existed
QUICKSTART_HASHES = ["55ac3f500dbd6878", "3af0e1866c6247e9", "13d132d7ef075979", "3c058d61f963c8ef",
                     "544273c86cd7d2f3", "a3b3416f0486325a", "f56482e8403ffb48", "b504936030533ab9",
                     "7c32103647b6245e", "e1f33b1ab64dc4f1"]


def tiny(strategy="naive", plugins=(), **train) -> RunConfig:
    return RunConfig.from_dict({
        "scenario": {"name": "split_digits", "n_experiences": 2},
        "model": {"name": "mlp", "hidden": [64]},
        "strategy": strategy if isinstance(strategy, dict) else {"name": strategy},
        "plugins": list(plugins),
        "train": {"epochs": 2, "lr": 0.1, **train},
    })


# --------------------------------------------------------------------------- config


def test_defaults_leave_published_hashes_unchanged():
    from cl.grid import expand, load_grid

    path = ROOT / "experiments" / "quickstart.yaml"
    assert [c.config_hash for c in expand(load_grid(path))] == QUICKSTART_HASHES
    base = tiny()
    spelled = tiny(precision="fp32", data_on_device="auto")
    assert spelled.config_hash == base.config_hash
    assert tiny(precision="bf16").config_hash != base.config_hash
    assert tiny(data_on_device="never").config_hash != base.config_hash
    assert base.train.precision == "fp32" and base.train.data_on_device == "auto"


def test_bad_precision_settings_are_config_errors():
    with pytest.raises(ConfigError, match=r"train\.precision"):
        tiny(precision="fp8")
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        tiny(precision="fp16", device="cpu")
    with pytest.raises(ConfigError, match=r"train\.data_on_device"):
        tiny(data_on_device="yes")
    with pytest.raises(ConfigError, match="transfer experiment trains in fp32"):
        RunConfig.from_dict({"transfer": {"name": "mobiletl"}, "train": {"precision": "bf16"}})


def test_fp16_with_device_auto_on_a_cpu_machine_fails_the_run_clearly():
    import torch

    from cl.runner import execute
    from cl.tracking import NullRunLog

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: fp16 would run")
    result = execute(tiny(precision="fp16", device="auto"), NullRunLog())
    assert result.status == "FAILED" and "fp16 needs a CUDA device" in result.reason


# --------------------------------------------------------------------------- the plugin in real runs


class Recorder:
    """Captures what a run logs (metrics by name, tags, params)."""

    def __init__(self):
        self.metrics, self.tags, self.params = {}, {}, {}

    def log_metrics(self, metrics, step=None):
        for k, v in metrics.items():
            self.metrics.setdefault(k, []).append(v)

    def log_params(self, params): self.params.update(params)
    def set_tags(self, tags): self.tags.update(tags)
    def log_artifact(self, path, data): pass
    def progress(self, *args): pass


def dtype_probe():
    """A plugin recording the dtype of the model's output in training and in evaluation."""
    from avalanche.core import SupervisedPlugin

    class Probe(SupervisedPlugin):
        def __init__(self):
            super().__init__()
            self.train_dtypes, self.eval_dtypes, self.loss_dtypes = set(), set(), set()

        def after_forward(self, strategy, **kwargs):
            self.train_dtypes.add(strategy.mb_output.dtype)

        def before_backward(self, strategy, **kwargs):
            self.loss_dtypes.add(strategy.loss.dtype)

        def after_eval_forward(self, strategy, **kwargs):
            self.eval_dtypes.add(strategy.mb_output.dtype)

    return Probe()


def test_bf16_autocasts_forward_in_training_and_evaluation(monkeypatch, one_thread):
    import torch

    import cl.runner as runner
    from cl.tracking import NullRunLog

    probe = dtype_probe()
    original = runner._precision_plugins
    monkeypatch.setattr(runner, "_precision_plugins", lambda cfg, device: [*original(cfg, device), probe])
    result = runner.execute(tiny(precision="bf16"), NullRunLog())
    assert result.ok, result.reason
    assert probe.train_dtypes == {torch.bfloat16} and probe.eval_dtypes == {torch.bfloat16}
    assert probe.loss_dtypes == {torch.float32}           # cross-entropy runs in fp32 under autocast
    assert result.accuracy_matrix[-1][-1] > 0.65          # the experience just learnt (chance: 0.5)

    probe = dtype_probe()
    monkeypatch.setattr(runner, "_precision_plugins", lambda cfg, device: [*original(cfg, device), probe])
    assert runner.execute(tiny(), NullRunLog()).ok
    assert probe.train_dtypes == {torch.float32}           # fp32: no plugin, nothing changes


# strategies and plugins that run their own forward/backward passes: bf16 must not break them
OWN_LOOPS = [
    pytest.param("replay", [{"name": "fpf"}], id="replay+fpf"),
    pytest.param({"name": "kfpf_ce", "k": 3, "iterations": 5}, [], id="kfpf_ce"),   # k ≤ the stream's iterations
    pytest.param("memo", [], id="memo"),
    pytest.param("nmn_sg", [], id="nmn_sg"),
    pytest.param("lwf", [], id="lwf"),
    pytest.param("icarl", [], id="icarl"),
]


@pytest.mark.parametrize("strategy, plugins", OWN_LOOPS)
def test_bf16_leaves_strategies_with_their_own_loops_working(strategy, plugins, one_thread):
    from cl.runner import execute

    fp32 = execute(tiny(strategy, plugins), Recorder())
    bf16 = execute(tiny(strategy, plugins, precision="bf16"), Recorder())
    assert fp32.ok and bf16.ok, (fp32.reason, bf16.reason)
    # same data, same seed: bf16 changes rounding, not what is learnt (well inside 10 points on 2 experiences)
    assert abs(bf16.metrics["final/avg_acc"] - fp32.metrics["final/avg_acc"]) < 0.10


def test_fp16_scaler_scales_backward_but_the_logged_loss_is_the_true_one(monkeypatch, one_thread):
    """The GradScaler path, run on the CPU through the plugin's test switch."""
    import torch

    import cl.runner as runner
    from cl.precision import make_precision_plugin

    plugins = []

    def fp16_on_cpu(cfg, device):
        plugins.append(make_precision_plugin("fp16", device, allow_cpu_fp16=True))
        return plugins

    monkeypatch.setattr(runner, "_precision_plugins", fp16_on_cpu)
    log = Recorder()
    result = runner.execute(tiny(), log)
    assert result.ok, result.reason
    plugin = plugins[0]
    assert plugin.scaler is not None and plugin.scaled_steps > 0
    assert plugin.scaler.get_scale() > 1.0                 # the loss really was scaled for backward
    losses = log.metrics["train/loss"]
    assert all(0 < loss < 5 for loss in losses)            # ...and what was logged is the unscaled loss
    assert result.accuracy_matrix[-1][-1] > 0.65
    assert torch.get_autocast_dtype("cpu") is not None     # autocast state was restored (no leak)
    assert not torch.is_autocast_enabled("cpu")


def test_fp16_plugin_refuses_the_cpu():
    import torch

    from cl.precision import make_precision_plugin

    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        make_precision_plugin("fp16", torch.device("cpu"))
    assert make_precision_plugin("fp32", torch.device("cpu")) is None


# --------------------------------------------------------------------------- data on the device


def digits():
    from cl.config import resolve_component
    from cl.runner import build_scenario

    return build_scenario(resolve_component("scenario", {"name": "split_digits", "n_experiences": 5}))


def test_data_on_device_moves_each_tensor_once_when_it_fits():
    import torch

    from cl.devices import place_scenario_data, scenario_tensor_stores

    scenario = digits()
    stores = scenario_tensor_stores(scenario)
    assert len(stores) == 2                                  # the train and the test tensors, shared by all experiences
    nbytes = sum(s.x.nbytes for s in stores)
    assert sum(scenario.train_sizes) + sum(scenario.test_sizes) == sum(len(s) for s in stores)

    too_small = place_scenario_data(scenario, torch.device("meta"), "auto", free_bytes=nbytes)   # > 50 % of free
    assert not too_small.moved and "MB free" in too_small.reason and too_small.loader_kwargs == {}
    assert all(s.x.device.type == "cpu" for s in stores)

    placed = place_scenario_data(scenario, torch.device("meta"), "auto", free_bytes=4 * nbytes)
    assert placed.moved and placed.nbytes == nbytes and placed.loader_kwargs == {"pin_memory": False}
    assert all(s.x.device.type == "meta" for s in stores)
    x, _, _ = scenario.benchmark.train_stream[3].dataset[0]  # every experience now reads from the device
    assert x.device.type == "meta"


def test_data_on_device_is_a_no_op_on_the_cpu_and_when_disabled():
    import torch

    from cl.devices import place_scenario_data, scenario_tensor_stores

    scenario = digits()
    assert not place_scenario_data(scenario, torch.device("cpu"), "auto").moved
    never = place_scenario_data(scenario, torch.device("meta"), "never", free_bytes=10**12)
    assert not never.moved and "never" in never.reason
    assert all(s.x.device.type == "cpu" for s in scenario_tensor_stores(scenario))


def test_a_run_logs_its_device_and_data_placement(one_thread):
    from cl.runner import execute

    log = Recorder()
    assert execute(tiny(), log).ok
    assert log.tags["device"] == "cpu" and log.tags["device.requested"] == "cpu"
    assert log.tags["device.data_placement"].startswith("cpu")
    assert not any(k.startswith("train.") for k in log.params)   # params mirror the config; this is not config
