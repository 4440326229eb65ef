"""FPF / k-FPF: module selection, sensitivity, what fine-tuning may touch, the trigger schedule, the reservoir."""
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from cl.models import build_mlp, build_resnet32
from strategies.fpf import (
    FineTuner,
    KFPFPlugin,
    ReservoirBuffer,
    SensitivityTracker,
    parametric_modules,
    select_by_pattern,
    select_by_score,
    stream_iterations,
)


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


def _kfpf_strategy(scenario, k, beta=0.0, epochs=1, extra_plugins=()):
    from avalanche.training.templates import SupervisedTemplate

    from cl.config import TrainConfig
    from cl.runner import _silent_evaluator

    torch.manual_seed(0)
    model = build_mlp(input_shape=(1, 8, 8), n_classes=10, hidden=[32])
    train = TrainConfig(epochs=epochs, batch_size=16)
    plugin = KFPFPlugin(total_iterations=stream_iterations(scenario, train), k=k, mem_size=50,
                        iterations=2, batch_size=8, beta=beta)
    strategy = SupervisedTemplate(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
                                  criterion=nn.CrossEntropyLoss(), train_mb_size=16, train_epochs=epochs,
                                  plugins=[plugin, *extra_plugins], evaluator=_silent_evaluator())
    return strategy, plugin


@pytest.mark.parametrize("k", [1, 3, 7])
def test_kfpf_triggers_exactly_k_times_regardless_of_task_boundaries(k):
    from cl.scenarios import split_digits

    scenario = split_digits(n_experiences=5, train_samples_per_class=10)    # 20 samples, 2 steps per epoch
    strategy, plugin = _kfpf_strategy(scenario, k, epochs=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for experience in scenario.benchmark.train_stream:
            strategy.train(experience, num_workers=0)
    assert plugin.iteration == plugin.total_iterations                       # the count of T is exact
    assert len(plugin.triggered_at) == plugin.tuner.calls == k
    assert plugin.total_iterations == 5 * 2 * 2
    period = plugin.total_iterations // k
    assert plugin.triggered_at == [period * (i + 1) for i in range(k)]
    if k == 3:
        assert plugin.triggered_at[0] % 4 != 0      # mid-experience: 4 iterations per experience


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
