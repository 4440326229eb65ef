"""FPF / k-FPF: module selection, sensitivity, what fine-tuning may touch, the trigger schedule, the reservoir."""
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from cl.models import build_mlp, build_resnet32
from strategies.fpf import KFPFPlugin
from strategies.fpf_buffers import ReservoirBuffer
from strategies.fpf_selection import SensitivityTracker, parametric_modules, select_by_pattern, select_by_score
from strategies.fpf_tuning import FineTuner
from strategies.kfpf import split_validation, stream_iterations, trigger_steps


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return build_resnet32(input_shape=(1, 8, 8), n_classes=10)


def test_selection_by_pattern(resnet):
    names = parametric_modules(resnet)
    bn = select_by_pattern(resnet, ["bn"])
    assert len(bn) == 31 and all(isinstance(names[n], nn.BatchNorm2d) for n in bn)   # stem + 15 blocks × 2
    assert select_by_pattern(resnet, ["fc"]) == ["head"]
    assert select_by_pattern(resnet, ["conv1"]) == [next(n for n, m in names.items() if isinstance(m, nn.Conv2d))]
    stage3 = select_by_pattern(resnet, [r"stage_3\.0\.bn_"])
    assert stage3 == ["feature_extractor.stages.stage_3.0.bn_a", "feature_extractor.stages.stage_3.0.bn_b"]
    both = select_by_pattern(resnet, ["fc", "bn"])
    assert both == [n for n in names if n in set(bn) | {"head"}]        # network order, no duplicates
    with pytest.raises(ValueError, match="matches no module"):
        select_by_pattern(resnet, ["stage_9"])
    with pytest.raises(ValueError, match="not a valid regular expression"):
        select_by_pattern(resnet, ["(("])
    mlp = build_mlp(input_shape=(1, 8, 8), n_classes=10, hidden=[16])
    assert select_by_pattern(mlp, ["bn", "fc"]) == ["head"]      # an alias may match nothing if another does


def test_selection_by_score_fills_the_budget_greedily():
    model = nn.Sequential(nn.Linear(10, 10), nn.BatchNorm1d(10), nn.Linear(10, 2))   # 110, 20, 22 params
    scores = {"0": 0.1, "1": 0.5, "2": 0.4}
    assert select_by_score(model, scores, max_param_fraction=42 / 152) == ["1", "2"]
    assert select_by_score(model, scores, max_param_fraction=30 / 152) == ["1"]
    assert select_by_score(model, {"0": 1.0, "1": 0.0, "2": 0.0}, max_param_fraction=0.01) == ["0"]


def test_sensitivity_is_mean_l1_change_per_parameter():
    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 1))            # 8 and 3 parameters
    tracker = SensitivityTracker()
    for delta in (1.0, 3.0):
        tracker.start(model)
        with torch.no_grad():
            model[0].weight.add_(delta)                                  # 6 weights move by delta
        tracker.end(model)
    scores = tracker.scores(model)
    assert scores["0"] == pytest.approx(np.mean([6 * 1.0 / 8, 6 * 3.0 / 8]))
    assert scores["1"] == 0.0


def test_fine_tuning_changes_only_the_selected_modules(resnet):
    model = resnet
    names = select_by_pattern(model, ["fc", r"stage_2\.0\.bn_a"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    buffer = ReservoirBuffer(64, seed=0)
    buffer.add(torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,)))
    model.train()
    FineTuner(iterations=3, lr=0.1, batch_size=16)(model, names, buffer, torch.device("cpu"))
    assert model.training                                                  # mode restored
    assert all(p.requires_grad for p in model.parameters())               # flags restored
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    allowed = {f"{n}.{suffix}" for n in names
               for suffix in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}
    assert changed and changed <= allowed
    assert "head.weight" in changed and "feature_extractor.stages.stage_2.0.bn_a.running_mean" in changed


def test_reservoir_keeps_every_sample_with_equal_probability():
    from scipy.stats import chisquare

    n, capacity, repeats = 200, 20, 1000
    counts = np.zeros(n)
    stream = torch.arange(n, dtype=torch.float32).unsqueeze(1)
    for seed in range(repeats):
        buffer = ReservoirBuffer(capacity, seed=seed)
        for start in range(0, n, 32):                                      # minibatches, as in training
            buffer.add(stream[start:start + 32], torch.zeros(len(stream[start:start + 32]), dtype=torch.long))
        assert len(buffer) == capacity and buffer.seen == n
        counts[buffer.x[:, 0].long().numpy()] += 1
    assert counts.sum() == capacity * repeats
    assert chisquare(counts).pvalue > 0.001                                # expected 100 each
    early, late = counts[:100].mean(), counts[100:].mean()
    assert abs(early - late) < 5


def test_reservoir_stores_a_copy_of_the_logits():
    buffer = ReservoirBuffer(4, store_logits=True)
    logits = torch.ones(2, 3)
    buffer.add(torch.zeros(2, 5), torch.tensor([0, 1]), logits)
    logits.add_(5.0)
    assert torch.equal(buffer.logits[:2], torch.ones(2, 3))


def _kfpf_strategy(scenario, k, beta=0.0, epochs=1, extra_plugins=(), batch_size=16, **options):
    from avalanche.training.templates import SupervisedTemplate

    from cl.config import TrainConfig
    from cl.runner import _silent_evaluator

    torch.manual_seed(0)
    model = build_mlp(input_shape=(1, 8, 8), n_classes=10, hidden=[32])
    train = TrainConfig(epochs=epochs, batch_size=batch_size)
    plugin = KFPFPlugin(total_iterations=stream_iterations(scenario, train, options.get("valid_per_class", 0)),
                        k=k, mem_size=50, iterations=2, batch_size=8, beta=beta,
                        n_experiences=scenario.n_experiences, **options)
    strategy = SupervisedTemplate(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
                                  criterion=nn.CrossEntropyLoss(), train_mb_size=batch_size, train_epochs=epochs,
                                  plugins=[plugin, *extra_plugins], evaluator=_silent_evaluator())
    return strategy, plugin


def _train(strategy, scenario):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for experience in scenario.benchmark.train_stream:
            strategy.train(experience, num_workers=0)


def test_trigger_steps_spread_the_calls_and_end_on_the_last_iteration():
    assert trigger_steps(945, 8) == [118, 236, 354, 473, 591, 709, 827, 945]      # the stream
    assert trigger_steps(10, 10) == list(range(1, 11))
    assert trigger_steps(10, 1) == [10]
    assert trigger_steps(7, 2) == [4, 7]                                              # a half rounds up
    for total, k in [(945, 8), (100, 3), (37, 37), (1000, 50)]:
        steps = trigger_steps(total, k)
        assert len(steps) == k and steps[-1] == total and all(b > a for a, b in zip(steps, steps[1:]))
        gaps = np.diff([0, *steps])
        assert gaps.max() - gaps.min() <= 1                                           # evenly spread
    with pytest.raises(ValueError, match="between 1 and"):
        trigger_steps(5, 6)


@pytest.mark.parametrize("k, per_class, valid", [(1, 9, 0), (3, 9, 0), (7, 10, 0), (3, 10, 2)])
def test_kfpf_calls_k_times_and_the_last_call_is_on_the_last_iteration(k, per_class, valid):
    from cl.scenarios import split_digits

    # 18-20 samples per experience, batch 8: the last batch of each epoch is short (Avalanche keeps it)
    scenario = split_digits(n_experiences=5, train_samples_per_class=per_class)
    strategy, plugin = _kfpf_strategy(scenario, k, epochs=2, batch_size=8, valid_per_class=valid)
    _train(strategy, scenario)
    n = 2 * (per_class - valid)
    assert plugin.total_iterations == 5 * -(-n // 8) * 2                             # T, counted by hand
    assert plugin.iteration == plugin.total_iterations                                # ... and by the stream
    assert len(plugin.triggered_at) == plugin.tuner.calls == len(plugin.calls) == k
    assert plugin.triggered_at == trigger_steps(plugin.total_iterations, k)
    assert plugin.calls[-1]["iteration"] == plugin.total_iterations                  # the k-th call: last step
    assert [c["iteration"] for c in plugin.calls] == plugin.triggered_at


def test_kfpf_notices_a_stream_longer_than_its_schedule():
    from cl.scenarios import split_digits

    scenario = split_digits(n_experiences=5, train_samples_per_class=10)
    strategy, plugin = _kfpf_strategy(scenario, 2, batch_size=8)
    plugin.total_iterations -= 1
    plugin.schedule = trigger_steps(plugin.total_iterations, 2)
    with pytest.raises(RuntimeError, match="expected"):
        _train(strategy, scenario)


def test_validation_split_is_held_out_of_training_and_fixed():
    targets = [0] * 10 + [1] * 12
    train, held = split_validation(targets, 3)
    assert sorted(train + held) == list(range(22)) and not set(train) & set(held)
    assert [targets[i] for i in held].count(0) == 3 and [targets[i] for i in held].count(1) == 3
    assert split_validation(targets, 3) == (train, held)
    with pytest.raises(ValueError, match="valid_per_class"):
        split_validation(targets, 10)


def test_tuned_call_keeps_the_best_candidate_on_validation_and_never_trains_on_it():
    from avalanche.core import SupervisedPlugin

    from cl.scenarios import split_digits

    class Recorder(SupervisedPlugin):
        def __init__(self):
            super().__init__()
            self.seen = set()

        def after_training_iteration(self, strategy, **kwargs):
            self.seen.update(x.numpy().tobytes() for x in strategy.mb_x)

    scenario = split_digits(n_experiences=5, train_samples_per_class=30)
    recorder = Recorder()
    tune = [{"modules": [["fc"]], "lr": [0.01, 0.2], "iterations": [5, 20]}, {"modules": [["auto"]], "lr": [0.1],
                                                                             "iterations": [5]}]
    strategy, plugin = _kfpf_strategy(scenario, 1, valid_per_class=5, tune=tune, momentum=0.9,
                                      extra_plugins=[recorder])
    _train(strategy, scenario)
    valid = torch.cat(plugin.valid_x)
    assert len(valid) == 5 * 2 * 5 and not {x.numpy().tobytes() for x in valid} & recorder.seen
    tuned = plugin.calls[-1]["tuned"]
    candidates = tuned["val_candidates"]
    assert sorted(candidates) == sorted(["fc/lr0.01/it5", "fc/lr0.01/it20", "fc/lr0.2/it5", "fc/lr0.2/it20",
                                         "auto/lr0.1/it5"])
    assert tuned["val_acc"] == max(candidates.values()) and candidates[tuned["label"]] == tuned["val_acc"]
    from strategies.fpf_tuning import accuracy
    assert accuracy(strategy.model, valid, torch.cat(plugin.valid_y), "cpu") == pytest.approx(tuned["val_acc"])
    metrics = {k: v for step, values in plugin.run_metrics() if step == plugin.total_iterations
               for k, v in values.items()}
    assert metrics["fpf/val_acc_chosen"] == tuned["val_acc"] and "fpf/val_acc/fc/lr0.2/it20" in metrics


def test_tune_without_a_validation_split_is_a_config_error():
    from cl.config import RunConfig
    from cl.errors import ConfigError

    raw = {"scenario": {"name": "split_digits"}, "model": {"name": "mlp"},
           "strategy": {"name": "kfpf_ce", "tune": [{"modules": [["fc"]], "lr": [0.1], "iterations": [10]}]}}
    with pytest.raises(ConfigError, match="valid_per_class"):
        RunConfig.from_dict(raw)
    raw["strategy"]["valid_per_class"] = 5
    assert RunConfig.from_dict(raw).strategy.options["valid_per_class"] == 5


def test_new_options_at_their_defaults_leave_the_config_unchanged():
    from cl.config import RunConfig

    raw = {"scenario": {"name": "split_digits"}, "model": {"name": "mlp"}, "strategy": {"name": "kfpf_ce", "k": 8}}
    plain = RunConfig.from_dict(raw)
    spelled = RunConfig.from_dict({**raw, "strategy": {**raw["strategy"], "momentum": 0.0, "valid_per_class": 0,
                                                       "probe": "last", "probe_per_class": 100}})
    assert plain.config_hash == spelled.config_hash and "momentum" not in plain.strategy.options
    moved = RunConfig.from_dict({**raw, "strategy": {**raw["strategy"], "momentum": 0.9}})
    assert moved.config_hash != plain.config_hash


def test_the_probe_matches_the_runners_final_accuracy_and_is_logged():
    from cl.config import RunConfig
    from cl.runner import execute
    from tests.helpers.run_logs import LatestValuesLog

    cfg = RunConfig.from_dict({"scenario": {"name": "split_digits", "n_experiences": 5}, "model": {"name": "mlp"},
                               "strategy": {"name": "kfpf_ce", "k": 4, "mem_size": 40, "iterations": 5,
                                            "probe": "all", "probe_per_class": 1000},
                               "train": {"epochs": 1, "lr": 0.1}})
    log = LatestValuesLog()
    result = execute(cfg, log)
    assert result.ok, result.reason
    calls = __import__("json").loads(log.artifacts["fpf/calls.json"])
    assert [c["iteration"] for c in calls["calls"]] == calls["schedule"] and calls["schedule"][-1] == \
        calls["total_iterations"] == calls["counted_iterations"]
    assert all("acc_before" in c and "acc_after" in c for c in calls["calls"])
    # the probe after the last call sees the model the runner evaluates: the same accuracy on the whole test set
    assert log.metrics["fpf/acc_after"] == pytest.approx(result.metrics["final/avg_acc"])
    assert log.metrics["fpf/last_call_iteration"] == log.metrics["fpf/total_iterations"]
    # the buffer FPF tunes on is probed too (overfitting shows as the buffer near 100% while test accuracy falls)
    assert all(0 <= c[f"acc_{w}"]["buffer"] <= 1 for c in calls["calls"] for w in ("before", "after"))
    assert log.metrics["fpf/buffer_acc_after"] == calls["calls"][-1]["acc_after"]["buffer"]


def test_kfpf_kd_stores_the_logits_of_the_step_that_saw_the_sample():
    from avalanche.core import SupervisedPlugin

    from cl.scenarios import split_digits

    class Recorder(SupervisedPlugin):
        seen: dict = {}

        def after_training_iteration(self, strategy, **kwargs):
            for x, out in zip(strategy.mb_x, strategy.mb_output):
                self.seen[x.numpy().tobytes()] = out.detach().clone()

    scenario = split_digits(n_experiences=2, train_samples_per_class=20)
    recorder = Recorder()
    strategy, plugin = _kfpf_strategy(scenario, k=2, beta=0.5, extra_plugins=[recorder])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for experience in scenario.benchmark.train_stream:
            strategy.train(experience, num_workers=0)
    buffer = plugin.buffer
    for x, logits in zip(buffer.x[: len(buffer)], buffer.logits[: len(buffer)]):
        assert torch.equal(logits, recorder.seen[x.numpy().tobytes()])
    # and the model has moved on since, so these are not today's logits
    strategy.model.eval()
    assert not torch.allclose(strategy.model(buffer.x[: len(buffer)]), buffer.logits[: len(buffer)])


@pytest.mark.parametrize("at, calls", [("every_experience", 3), ("end", 1)])
def test_fpf_plugin_runs_after_each_experience_or_at_the_end(at, calls):
    from avalanche.training.templates import SupervisedTemplate

    from cl.runner import _silent_evaluator
    from cl.scenarios import from_tensors
    from strategies.fpf import FPFPlugin

    torch.manual_seed(0)
    x, y = torch.randn(60, 4), torch.arange(60) % 6
    scenario = from_tensors(x, y, x, y, n_experiences=3)
    model = build_mlp(input_shape=(1, 1, 4), n_classes=6, hidden=[8])
    plugin = FPFPlugin(iterations=2, batch_size=4, at=at, mem_size=10, n_experiences=3)
    strategy = SupervisedTemplate(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                                  criterion=nn.CrossEntropyLoss(), train_mb_size=8, plugins=[plugin],
                                  evaluator=_silent_evaluator())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for experience in scenario.benchmark.train_stream:
            strategy.train(experience, num_workers=0)
    assert plugin.tuner.calls == calls and plugin.selections == [["head"]] * calls   # an MLP: no BN
    assert plugin.n_exemplars() == 10 and plugin.extra_train_flops() > 0
    assert len(plugin.sensitivity.per_experience) == 3


def test_head_only_fine_tuning_on_cached_features_equals_the_full_forward(resnet):
    import copy

    buffer = ReservoirBuffer(64, seed=0)
    torch.manual_seed(1)
    buffer.add(torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,)))
    a, b = copy.deepcopy(resnet), copy.deepcopy(resnet)
    fast = FineTuner(iterations=20, lr=0.1, batch_size=16, momentum=0.9)
    fast(a, ["head"], buffer, torch.device("cpu"))                       # takes the cached path
    buffer._generator.manual_seed(0)
    slow = FineTuner(iterations=20, lr=0.1, batch_size=16, momentum=0.9)
    for p in b.parameters():
        p.requires_grad_(p is b.head.weight or p is b.head.bias)
    b.eval()
    slow._tune(b, torch.optim.SGD(b.head.parameters(), lr=0.1, momentum=0.9), buffer, torch.device("cpu"), 20, (), None)
    assert torch.allclose(a.head.weight, b.head.weight, atol=1e-6)
    assert not torch.equal(a.head.weight, resnet.head.weight)
    assert fast.flops < slow.flops / 3                                   # the body ran once per sample, not per step


def test_momentum_reaches_the_fine_tuning_optimiser():
    model = nn.Sequential(nn.Linear(4, 3))
    buffer = ReservoirBuffer(8, seed=0)
    buffer.add(torch.randn(8, 4), torch.arange(8) % 3)
    moved = {}
    for momentum in (0.0, 0.9):
        m = __import__("copy").deepcopy(model)
        buffer._generator.manual_seed(0)
        FineTuner(iterations=3, lr=0.1, batch_size=8, momentum=momentum)(m, ["0"], buffer, torch.device("cpu"))
        moved[momentum] = (m[0].weight - model[0].weight).abs().sum().item()
    assert moved[0.9] > 1.5 * moved[0.0]          # full batch, same gradients: momentum accumulates them


def test_auto_selection_takes_the_stem_conv_when_it_ranks_high(resnet):
    names = list(parametric_modules(resnet))
    stem = select_by_pattern(resnet, ["conv1"])[0]
    scores = {n: 0.0 for n in names}
    scores.update({stem: 3.0, "head": 2.0, "feature_extractor.stages.stage_3.4.bn_b": 1.0})
    chosen = select_by_score(resnet, scores, max_param_fraction=0.02)
    assert stem in chosen and "head" in chosen


@pytest.mark.parametrize("gain, verdict", [(0.30, "yes"), (0.002, "within noise"), (-0.05, "no")])
def test_ceiling_claim_compares_after_the_call_with_right_before_it(gain, verdict):
    import pandas as pd

    from cl.reproductions import reproduction_for

    ceiling = reproduction_for("experiments/kfpf_ceiling.yaml")
    runs = pd.DataFrame([{"scenario_name": "split_mnist", "buffer": 200, "seed": s, "method": "kfpf_ceiling",
                          "fpf/acc_before": 0.20 + 0.01 * s, "final/avg_acc": 0.20 + gain + 0.01 * s,
                          "cost/train_flops": 2.0} for s in range(3)])
    (claim,) = ceiling.claims(runs)
    assert claim.verdict == verdict and f"{100 * gain:+.2f} points" in claim.ours
    assert ceiling.claims(runs.drop(columns=["fpf/acc_before"])) == []       # runs before the probe existed
    # the published grid's replay at the same buffer (the reference grid's runs) adds the comparison with it
    replay = pd.DataFrame([{"scenario_name": "split_mnist", "buffer": 200, "seed": s, "method": "replay",
                            "final/avg_acc": 0.45 + 0.01 * s, "cost/train_flops": 1.0} for s in range(3)])
    _, reaches = ceiling.claims(pd.concat([runs, replay], ignore_index=True))
    assert reaches.claim.startswith("one FPF call at the end reaches replay (split_mnist, buffer 200)")
    assert reaches.verdict == ("yes" if gain == 0.30 else "no")          # 0.51 vs replay's 0.46; else far below
    assert "2.00× replay's training FLOPs" in reaches.ours
