"""FPF's `loss: host` (issue #28): fine-tuning with the host strategy's own replay loss, on real Avalanche training.

Dark-ER's host loss must use the logits its buffer stores (and its own α, β); cross-entropy must not; on Replay the
host loss is cross-entropy. A host FPF does not know is a config error naming the field and the fix.
"""
import copy
import warnings

import pytest
import torch
from torch import nn

from cl.models import build_mlp


def _trained(strategy_name: str, **options):
    """A tiny Dark-ER or Replay trained through two experiences of 8×8 digits (no FPF yet)."""
    from avalanche.training import DER, Replay

    from cl.runner import _silent_evaluator
    from cl.scenarios import split_digits

    scenario = split_digits(n_experiences=2, train_samples_per_class=20)
    torch.manual_seed(0)
    model = build_mlp(input_shape=(1, 8, 8), n_classes=10, hidden=[32])
    template = {"dark_er": DER, "replay": Replay}[strategy_name]
    strategy = template(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
                        criterion=nn.CrossEntropyLoss(), mem_size=30, train_mb_size=16,
                        evaluator=_silent_evaluator(), **options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for experience in scenario.benchmark.train_stream:
            strategy.train(experience, num_workers=0)
    return strategy


@pytest.fixture(scope="module")
def dark_er():
    return _trained("dark_er")


def _fpf(strategy, monkeypatch, *, loss: str, modules, replace_logits: bool = False) -> dict:
    """The weights after one FPF call (through the plugin's own hooks) from the strategy's current state, which is
    restored after; with `replace_logits` the buffer's stored logits are swapped for other numbers first."""
    import strategies.fpf_plugin as fpf_plugin
    from strategies.fpf import FPFPlugin

    original = fpf_plugin.strategy_buffer

    def buffer_with_other_logits(strategy, seed):
        buffer = original(strategy, seed)
        if replace_logits:
            generator = torch.Generator().manual_seed(7)
            buffer.logits = 3 * torch.randn(buffer.logits.shape, generator=generator)
        return buffer

    monkeypatch.setattr(fpf_plugin, "strategy_buffer", buffer_with_other_logits)
    start = copy.deepcopy(strategy.model.state_dict())
    plugin = FPFPlugin(modules=modules, iterations=15, lr=0.1, batch_size=8, n_experiences=2, loss=loss)
    plugin.before_training(strategy)
    plugin._trained = 2
    plugin.after_training(strategy)
    tuned = copy.deepcopy(strategy.model.state_dict())
    strategy.model.load_state_dict(start)
    assert plugin.tuner.calls == 1
    return {"weights": tuned, "plugin": plugin, "start": start}


def _same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_the_buffer_carries_the_logits_dark_er_stored(dark_er):
    from strategies.fpf_buffers import strategy_buffer

    buffer = strategy_buffer(dark_er, seed=0)
    stored = torch.stack([dark_er.storage_policy.buffer[i][3] for i in range(len(buffer))])   # (x, y, task, logits)
    assert buffer.logits is not None and torch.equal(buffer.logits, stored)
    # the oldest task's logits are its end-of-experience model's, not today's
    with torch.no_grad():
        dark_er.model.eval()
        assert not torch.allclose(dark_er.model(buffer.x), buffer.logits, atol=1e-3)


@pytest.mark.parametrize("modules", [["fc"], [".*"]], ids=["head-on-cached-features", "every-layer"])
def test_host_loss_on_dark_er_uses_the_stored_logits_and_cross_entropy_does_not(dark_er, monkeypatch, modules):
    host = _fpf(dark_er, monkeypatch, loss="host", modules=modules)
    host_other = _fpf(dark_er, monkeypatch, loss="host", modules=modules, replace_logits=True)
    ce = _fpf(dark_er, monkeypatch, loss="ce", modules=modules)
    ce_other = _fpf(dark_er, monkeypatch, loss="ce", modules=modules, replace_logits=True)
    assert not _same(host["weights"], host["start"])                 # it fine-tuned
    assert not _same(host["weights"], host_other["weights"])         # ... with the stored logits
    assert _same(ce["weights"], ce_other["weights"])                 # cross-entropy ignores them
    assert not _same(host["weights"], ce["weights"])
    loss = host["plugin"].buffer_loss
    assert (loss.ce, loss.logits) == (dark_er.beta, dark_er.alpha) == (0.5, 0.1)


def test_host_loss_reads_alpha_and_beta_from_the_strategy(dark_er, monkeypatch):
    alpha, beta = dark_er.alpha, dark_er.beta
    try:
        dark_er.alpha, dark_er.beta = 0.0, 1.0        # DER++ without its logit term: cross-entropy, exactly
        host = _fpf(dark_er, monkeypatch, loss="host", modules=[".*"])
        host_other = _fpf(dark_er, monkeypatch, loss="host", modules=[".*"], replace_logits=True)
        ce = _fpf(dark_er, monkeypatch, loss="ce", modules=[".*"])
        assert _same(host["weights"], host_other["weights"]) and _same(host["weights"], ce["weights"])
        dark_er.alpha, dark_er.beta = 0.3, 0.0        # plain DER: logit matching only
        assert (_fpf(dark_er, monkeypatch, loss="host", modules=["fc"])["plugin"].buffer_loss.ce) == 0.0
    finally:
        dark_er.alpha, dark_er.beta = alpha, beta


def test_host_loss_on_replay_is_cross_entropy(monkeypatch):
    replay = _trained("replay")
    host = _fpf(replay, monkeypatch, loss="host", modules=[".*"])
    ce = _fpf(replay, monkeypatch, loss="ce", modules=[".*"])
    assert not _same(host["weights"], host["start"]) and _same(host["weights"], ce["weights"])


def test_host_loss_on_a_host_it_does_not_know_is_refused_when_training_starts():
    from avalanche.training import Naive

    from cl.runner import _silent_evaluator
    from strategies.fpf import FPFPlugin

    model = build_mlp(input_shape=(1, 8, 8), n_classes=10, hidden=[8])
    strategy = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                     criterion=nn.CrossEntropyLoss(), evaluator=_silent_evaluator())
    with pytest.raises(ValueError, match="loss: 'host'.*Naive.*use loss: 'ce'"):
        FPFPlugin(loss="host").before_training(strategy)


def test_host_loss_on_an_unknown_host_is_a_config_error(tmp_path):
    from typer.testing import CliRunner

    from cl.cli import app
    from cl.config import RunConfig
    from cl.errors import ConfigError

    raw = {"scenario": {"name": "split_digits"}, "model": {"name": "mlp"}, "strategy": {"name": "er_ace"},
           "plugins": [{"name": "fpf", "loss": "host"}]}
    with pytest.raises(ConfigError, match=r"plugins\[0\]\.loss: 'host'.*replay, dark_er.*'er_ace'; use loss: ce"):
        RunConfig.from_dict(raw)
    for host in ("replay", "dark_er"):
        assert RunConfig.from_dict({**raw, "strategy": {"name": host}}).plugins[0].options["loss"] == "host"
    assert RunConfig.from_dict({**raw, "plugins": [{"name": "fpf", "loss": "ce"}]}).plugins[0].name == "fpf"
    grid = tmp_path / "grid.yaml"
    grid.write_text("name: g\nbase: {scenario: {name: split_digits}, model: {name: mlp}, strategy: {name: naive}}\n"
                    "cases:\n  - {plugins: [{name: fpf, loss: host}]}\nseeds: [0]\n")
    result = CliRunner().invoke(app, ["grid", "expand", str(grid)])
    assert result.exit_code == 2 and "plugins[0].loss" in result.output and "use loss: ce" in result.output


def test_the_new_fpf_options_at_their_defaults_leave_the_hash_alone():
    from cl.config import RunConfig

    raw = {"scenario": {"name": "split_digits"}, "model": {"name": "mlp"}, "strategy": {"name": "dark_er"},
           "plugins": [{"name": "fpf", "iterations": 30}]}
    plain = RunConfig.from_dict(raw)
    spelled = RunConfig.from_dict({**raw, "plugins": [{"name": "fpf", "iterations": 30, "loss": "ce", "probe": "none",
                                                       "probe_per_class": 100}]})
    assert plain.config_hash == spelled.config_hash and "loss" not in plain.plugins[0].options
    host = RunConfig.from_dict({**raw, "plugins": [{"name": "fpf", "iterations": 30, "loss": "host"}]})
    assert host.config_hash != plain.config_hash


def test_the_fpf_probe_sees_the_model_the_runner_evaluates():
    import json

    from cl.config import RunConfig
    from cl.runner import execute
    from tests.helpers.run_logs import LatestValuesLog

    cfg = RunConfig.from_dict({"scenario": {"name": "split_digits", "n_experiences": 5}, "model": {"name": "mlp"},
                               "strategy": {"name": "dark_er", "mem_size": 40},
                               "plugins": [{"name": "fpf", "iterations": 10, "loss": "host", "probe": "all",
                                            "probe_per_class": 1000}],
                               "train": {"epochs": 1, "lr": 0.1}})
    log = LatestValuesLog()
    result = execute(cfg, log)
    assert result.ok, result.reason
    calls = json.loads(log.artifacts["fpf/calls.json"])
    assert calls["loss"] == "host" and calls["weights"] == {"ce": 0.5, "logits": 0.1}
    assert [c["experience"] for c in calls["calls"]] == [0, 1, 2, 3, 4]
    assert [len(c["acc_before"]["per_experience"]) for c in calls["calls"]] == [1, 2, 3, 4, 5]
    # right after the last call, the probe (whole test set) and the runner's final row agree experience by experience
    final_row = result.accuracy_matrix[-1]
    assert [log.metrics[f"fpf/acc_after/exp{j}"] for j in range(5)] == pytest.approx(final_row)
    assert log.metrics["fpf/calls"] == 5 and "fpf/acc_before" in log.metrics


@pytest.mark.parametrize("host_gain, verdicts", [(0.05, ("yes", "yes")), (0.0, ("within noise", "yes")),
                                                 (-0.04, ("no", "within noise"))])
def test_host_loss_claims_join_the_published_claims_only_with_their_runs(host_gain, verdicts):
    """Dark-ER 0.75 (±0.01), FPF with cross-entropy 0.715 (±0.01); the host loss `host_gain` from Dark-ER."""
    import pandas as pd

    from cl.reproductions import reproduction_for

    published = reproduction_for("experiments/fpf_fmnist.yaml")
    assert published.references == ("experiments/fpf_darker_host_loss.yaml",)
    rows = [{"scenario_name": "split_fmnist", "buffer": 200, "seed": s, "method": method, "final/avg_acc": acc + d}
            for s, d in enumerate((-0.01, 0.0, 0.01))
            for method, acc in (("dark_er", 0.75), ("dark_er+fpf", 0.715))]
    plain = published.claims(pd.DataFrame(rows))
    assert not any("own loss" in c.claim or "host's loss" in c.claim for c in plain)
    rows += [{"scenario_name": "split_fmnist", "buffer": 200, "seed": s, "method": "dark_er+fpf(host)",
              "final/avg_acc": 0.75 + host_gain + d, "fpf/acc_before": 0.74, "fpf/acc_after": 0.75 + host_gain}
             for s, d in enumerate((-0.01, 0.0, 0.01))]
    assert len(published.claims(pd.DataFrame(rows[:-2]))) == len(plain)     # one seed: nothing to judge it by
    claims = {c.claim: c for c in published.claims(pd.DataFrame(rows))}
    versus_host = claims["FPF with Dark-ER's own loss (α·logit matching + β·CE) improves dark_er (split_fmnist, "
                         "buffer 200)"]
    versus_ce = claims["the host's loss beats cross-entropy as FPF's fine-tuning loss on dark_er (split_fmnist, "
                       "buffer 200)"]
    assert (versus_host.verdict, versus_ce.verdict) == verdicts
    assert f"{100 * host_gain:+.2f} points" in versus_host.ours and "74.00% right before" in versus_host.ours
    assert len(claims) == len(plain) + 2


def test_the_published_grid_labels_host_loss_runs_apart_and_its_old_labels_do_not_move():
    from cl.grid import expand, load_grid
    from cl.reproductions import ROOT, reproduction_for

    describe = reproduction_for("experiments/fpf_fmnist.yaml").describe
    old = {describe(c.config)["method"] for c in expand(load_grid(ROOT / "experiments" / "fpf_fmnist.yaml"))}
    assert old == {"naive", "replay", "dark_er", "replay+fpf", "dark_er+fpf", "kfpf_ce", "kfpf_kd"}
    new = {describe(c.config)["method"] for c in expand(load_grid(ROOT / "experiments" / "fpf_darker_host_loss.yaml"))}
    assert new == {"dark_er+fpf(host)"}


def test_the_host_check_names_the_plugin_by_its_place_even_after_a_bad_one():
    from cl.config import RunConfig
    from cl.errors import ConfigError

    raw = {"scenario": {"name": "split_digits"}, "model": {"name": "mlp"}, "strategy": {"name": "naive"},
           "plugins": [{"name": "fpf", "lr": -1}, {"name": "fpf", "loss": "host"}]}
    with pytest.raises(ConfigError) as caught:
        RunConfig.from_dict(raw)
    assert any(p.startswith("plugins[0].lr") for p in caught.value.problems)
    assert any(p.startswith("plugins[1].loss: 'host'") for p in caught.value.problems)
