"""iCaRL's exemplar memory spends its budget exactly (what equal-memory comparisons rely on)."""
import warnings

import pytest
import torch

from cl.config import TrainConfig
from cl.models import build_mlp
from cl.runner import _silent_evaluator
from cl.scenarios import split_digits
from cl.strategy_api import StrategyContext, count_exemplars
from strategies.catalog import ICaRLParams
from strategies.herding import herding_order
from strategies.icarl import BudgetedICaRLPlugin, build_icarl


@pytest.fixture(scope="module")
def scenario():
    return split_digits(n_experiences=2)


def icarl(scenario, mem_size):
    torch.manual_seed(0)
    model = build_mlp(input_shape=scenario.input_shape, n_classes=scenario.n_classes, hidden=[32, 16])
    ctx = StrategyContext(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
                          criterion=torch.nn.CrossEntropyLoss(), train=TrainConfig(epochs=1, batch_size=32),
                          scenario=scenario, device=torch.device("cpu"), evaluator=_silent_evaluator())
    strategy = build_icarl(ctx, ICaRLParams(mem_size=mem_size))
    [plugin] = [p for p in strategy.plugins if isinstance(p, BudgetedICaRLPlugin)]
    return strategy, plugin


def train(strategy, experience):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        strategy.train(experience, num_workers=0)


def class_sizes(experience):
    targets = torch.as_tensor(list(experience.dataset.targets))
    return {int(c): int((targets == c).sum()) for c in experience.classes_in_this_experience}


def test_exemplar_sets_are_herded_in_order_and_fill_the_quota(scenario):
    first, second = scenario.benchmark.train_stream
    strategy, plugin = icarl(scenario, mem_size=600)     # 120 per class after task 1, 60 after task 2
    train(strategy, first)
    sizes = class_sizes(first)
    assert [len(x) for x in plugin.x_memory] == [min(120, sizes[c]) for c in plugin.observed_classes]

    # brute force: herd the class's images with the trained feature extractor
    class_id = plugin.observed_classes[0]
    targets = torch.as_tensor(list(first.dataset.targets))
    images = torch.stack([first.dataset.eval()[int(i)][0] for i in torch.nonzero(targets == class_id).flatten()])
    strategy.model.eval()
    with torch.no_grad():
        features = strategy.model.feature_extractor(images)
    expected = images[herding_order(features, 120)]
    assert torch.equal(plugin.x_memory[0], expected)

    train(strategy, second)
    assert count_exemplars(strategy) == 600
    assert all(len(x) == 60 for x in plugin.x_memory)
    assert torch.equal(plugin.x_memory[0], expected[:60])       # shrinking keeps the herding prefix
    assert all(set(y) == {c} for y, c in zip(plugin.y_memory, plugin.observed_classes))


def test_quota_never_overshoots_the_budget(scenario):
    strategy, plugin = icarl(scenario, mem_size=333)      # Avalanche would keep ⌈333/5⌉ = 67 per class
    train(strategy, scenario.benchmark.train_stream[0])
    assert count_exemplars(strategy) == 5 * 66 <= 333
