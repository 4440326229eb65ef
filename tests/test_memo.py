"""MEMO / DER fidelity: the reference's arithmetic, freezing and exemplar rules."""
import numpy as np
import pytest
import torch

from cl.models import build_mlp, build_resnet32, count_parameters
from strategies.herding import herding_order
from strategies.memo import HerdingMemory, MEMOPlugin, der_net, memo_net


def memo_resnet(n_classes=100, **kwargs):
    return memo_net(build_resnet32(input_shape=(3, 32, 32), n_classes=n_classes), n_classes=n_classes, **kwargs)


def test_parameter_counts_match_the_paper_split():
    net = memo_resnet()
    net.expand(list(range(10)))
    assert count_parameters(net.shared) == 112_016
    assert count_parameters(net.specialized[0]) == 351_488
    net.expand(list(range(10, 20)))
    head = 128 * 20 + 20
    assert count_parameters(net) - count_parameters(net.aux_head) == 112_016 + 2 * 351_488 + head
    der = der_net(build_resnet32(input_shape=(3, 32, 32), n_classes=100), n_classes=100)
    der.expand(list(range(10)))
    der.expand(list(range(10, 20)))
    assert count_parameters(der.specialized[1]) == 463_504 and count_parameters(der.shared) == 0


def test_new_block_starts_as_a_copy_and_is_independent():
    net = memo_resnet()
    net.expand([0, 1])
    net.expand([2, 3])
    first, second = net.specialized
    for a, b in zip(first.parameters(), second.parameters()):
        assert torch.equal(a, b) and a is not b
    with torch.no_grad():
        next(second.parameters()).add_(1.0)
    assert not torch.equal(next(first.parameters()), next(second.parameters()))


def test_head_keeps_old_weights_bit_for_bit_and_new_block_is_fresh():
    net = memo_net(build_mlp(input_shape=(1, 8, 8), n_classes=10, hidden=[16, 8]), n_classes=10)
    net.expand([4, 7])
    old_w, old_b = net.head.weight.detach().clone(), net.head.bias.detach().clone()
    net.expand([1, 2, 9])
    assert net.head.weight.shape == (5, 16)
    assert torch.equal(net.head.weight[:2, :8], old_w) and torch.equal(net.head.bias[:2], old_b)
    assert torch.equal(net.head.bias[2:], torch.zeros(3))
    assert net.aux_head.weight.shape == (4, 8)   # |Y_b| + 1 outputs on the newest block's features


def test_aux_targets_map_old_classes_to_zero():
    net = memo_resnet(n_classes=10)
    net.expand([3, 7])
    net.expand([5, 1])
    y = torch.tensor([3, 7, 1, 5, 5])
    # new classes keep their head order (5 then 1) -> 1, 2; old classes -> 0
    assert net.aux_targets(y).tolist() == [0, 0, 2, 1, 1]


def test_logits_live_in_the_original_label_space():
    net = memo_net(build_mlp(input_shape=(1, 8, 8), n_classes=10, hidden=[8]), n_classes=10)
    net.expand([6, 2])
    logits = net(torch.randn(3, 1, 8, 8))
    assert logits.shape == (3, 10)
    assert torch.isinf(logits[:, [0, 1, 3, 4, 5, 7, 8, 9]]).all() and torch.isfinite(logits[:, [2, 6]]).all()


def test_weight_aligning_arithmetic():
    net = memo_net(build_mlp(input_shape=(1, 8, 8), n_classes=4, hidden=[2]), n_classes=4)
    net.expand([0, 1])
    net.expand([2, 3])
    with torch.no_grad():
        net.head.weight.copy_(torch.tensor([[3.0, 4, 0, 0], [0, 0, 6, 8], [1, 0, 0, 0], [0, 2, 0, 0]]))
    # old norms 5, 10 (mean 7.5); new norms 1, 2 (mean 1.5) -> gamma 5
    assert net.align_weights() == pytest.approx(5.0)
    assert net.head.weight[2:].tolist() == [[5.0, 0, 0, 0], [0, 10.0, 0, 0]]
    assert net.head.weight[:2].tolist() == [[3.0, 4, 0, 0], [0, 0, 6, 8]]


def herding_reference(features: np.ndarray, m: int) -> list[int]:
    """A line-by-line transcription of the reference's loop (deleting picked rows), for comparison."""
    vectors = (features.T / (np.linalg.norm(features.T, axis=0) + 1e-8)).T
    class_mean = np.mean(vectors, axis=0)
    remaining = list(range(len(vectors)))
    picked, exemplar_vectors = [], []
    for k in range(1, m + 1):
        S = np.sum(exemplar_vectors, axis=0)
        mu_p = (vectors[remaining] + S) / k
        i = int(np.argmin(np.sqrt(np.sum((class_mean - mu_p) ** 2, axis=1))))
        picked.append(remaining[i])
        exemplar_vectors.append(vectors[remaining[i]])
        del remaining[i]
        if not remaining:
            break
    return picked


@pytest.mark.parametrize("seed", range(5))
def test_herding_matches_the_reference_loop(seed):
    features = np.random.default_rng(seed).normal(size=(40, 6)).astype(np.float64)
    ours = herding_order(torch.from_numpy(features), 12)
    assert ours == herding_reference(features, 12)
    assert len(set(ours)) == 12


def test_herding_with_more_slots_than_samples_takes_them_all():
    assert sorted(herding_order(torch.randn(5, 3), 10)) == [0, 1, 2, 3, 4]


def test_shrinking_keeps_herding_order():
    memory = HerdingMemory(budget=12)
    memory.add_class(0, "ds0", [9, 4, 7, 1, 3, 0])
    memory.add_class(1, "ds1", [2, 8, 5, 6, 11, 10])
    assert memory.per_class_quota(3) == 4
    memory.shrink(4)
    assert memory.per_class[0] == ("ds0", [9, 4, 7, 1]) and memory.per_class[1] == ("ds1", [2, 8, 5, 6])
    assert len(memory) == 8


def test_in_an_avalanche_loop_old_blocks_freeze_and_keep_their_statistics():
    """MEMO's model + plugin in a plain Avalanche loop, as a researcher would use them."""
    import warnings

    from avalanche.training.plugins import EvaluationPlugin
    from avalanche.training.templates import SupervisedTemplate

    from cl.scenarios import split_digits

    torch.manual_seed(0)
    scenario = split_digits(n_experiences=2, train_samples_per_class=30)
    net = memo_net(build_resnet32(input_shape=(1, 8, 8), n_classes=10), n_classes=10)
    plugin = MEMOPlugin(mem_size=40)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        strategy = SupervisedTemplate(model=net, optimizer=torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9),
                                      criterion=torch.nn.CrossEntropyLoss(), train_mb_size=16, train_epochs=1,
                                      eval_mb_size=64, plugins=[plugin], evaluator=EvaluationPlugin(loggers=[]))
        strategy.train(scenario.benchmark.train_stream[0])
    first_block = {k: v.clone() for k, v in net.specialized[0].state_dict().items()}
    shared_before = {k: v.clone() for k, v in net.shared.state_dict().items()}
    assert plugin.n_exemplars() == 40 and len(plugin.memory.per_class) == 5   # 8 per class

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        strategy.train(scenario.benchmark.train_stream[1])
    assert len(net.specialized) == 2
    # every parameter is optimised once (no double updates after the model grew)
    in_optimizer = [p for group in strategy.optimizer.param_groups for p in group["params"]]
    assert len(in_optimizer) == len({id(p) for p in in_optimizer})
    assert {id(p) for p in net.parameters()} <= {id(p) for p in in_optimizer}
    assert all(not p.requires_grad for p in net.specialized[0].parameters())
    assert not net.specialized[0].training and net.specialized[1].training
    # weights *and* BN running statistics of the old block are untouched by task 2
    for key, value in net.specialized[0].state_dict().items():
        assert torch.equal(value, first_block[key]), key
    # the shared blocks keep learning (train_shared=True, the B0 setting)
    assert any(not torch.equal(v, shared_before[k]) for k, v in net.shared.state_dict().items())
    assert net.aux_head is None and len(plugin.gammas) == 1
    assert plugin.n_exemplars() == 40 and len(plugin.memory.per_class) == 10   # 4 per class now
    assert all(len(idx) == 4 for _, idx in plugin.memory.per_class.values())


def test_nme_classifies_by_the_nearest_exemplar_mean():
    """Class means over normalised exemplar features, recomputed after each task; nearest wins."""
    import warnings
    from types import SimpleNamespace

    from avalanche.training.templates import SupervisedTemplate

    from cl.runner import _silent_evaluator
    from cl.scenarios import split_digits

    torch.manual_seed(0)
    scenario = split_digits(n_experiences=2, train_samples_per_class=40)
    net = memo_net(build_mlp(input_shape=(1, 8, 8), n_classes=10, hidden=[32, 16]), n_classes=10)
    plugin = MEMOPlugin(mem_size=60)
    strategy = SupervisedTemplate(model=net, optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
                                  criterion=torch.nn.CrossEntropyLoss(), train_mb_size=16, train_epochs=2,
                                  plugins=[plugin], evaluator=_silent_evaluator())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for experience in scenario.benchmark.train_stream:
            strategy.train(experience, num_workers=0)
    net.eval()

    def normalise(v):
        return v / v.norm(dim=-1, keepdim=True)

    assert plugin.class_means.shape == (10, net.feature_dim)
    with torch.no_grad():
        for row, class_id in enumerate(net.class_ids):          # old classes too: current network
            dataset, indices = plugin.memory.per_class[class_id]
            exemplars = torch.stack([dataset.eval()[i][0] for i in indices])
            expected = normalise(normalise(net.features(exemplars)).mean(dim=0))
            assert torch.allclose(plugin.class_means[row], expected, atol=1e-5)

        test = scenario.benchmark.test_stream[1].dataset.eval()
        x = torch.stack([test[i][0] for i in range(30)])
        net(x)
        predicted = plugin.predict(SimpleNamespace(model=net))
        features = normalise(net.features(x))
        distances = torch.stack([(features - mean).norm(dim=1) for mean in plugin.class_means], dim=1)
        assert predicted.tolist() == [net.class_ids[int(i)] for i in distances.argmin(dim=1)]


def test_frozen_shared_blocks_when_train_shared_is_off():
    net = memo_resnet(n_classes=10, train_shared=False)
    net.expand([0, 1])
    assert all(p.requires_grad for p in net.shared.parameters())   # task 1 trains everything
    net.expand([2, 3])
    net.train()
    assert not net.shared.training and all(not p.requires_grad for p in net.shared.parameters())


def test_final_backbone_counts_follow_the_stream():
    from cl.scenarios import split_digits
    from cl.strategy_api import final_backbone_parameters

    scenario = split_digits(n_experiences=5)

    def factory():
        return build_resnet32(input_shape=(3, 32, 32), n_classes=10)

    assert final_backbone_parameters("der", factory, scenario, {}) == 5 * 463_504
    assert final_backbone_parameters("memo", factory, scenario, {}) == 112_016 + 5 * 351_488
    assert final_backbone_parameters("replay", factory, scenario, {}) == 463_504


def test_memory_budget_aligns_exemplars_in_a_run():
    from cl.config import RunConfig
    from cl.runner import execute
    from cl.tracking import NullRunLog

    class Params(NullRunLog):
        logged = {}

        def log_params(self, params):
            self.logged.update(params)

    log = Params()
    cfg = RunConfig.from_dict({
        "scenario": {"name": "split_digits", "n_experiences": 2, "train_samples_per_class": 100},
        "model": {"name": "mlp", "hidden": [32, 16]}, "strategy": {"name": "memo"},
        "memory": {"aligned_to": "der", "exemplars": 20}, "train": {"epochs": 1}})
    result = execute(cfg, log)
    assert result.ok, result.reason
    # MLP 64-32-16 split before its last layer: DER keeps 2 whole backbones (2,080 + 528 each),
    # MEMO shares the first layer (2,080) -> saves 2,080 params = 8,320 bytes = 130 digits (64 B each)
    assert log.logged["memory.resolved_mem_size"] == str(20 + 130)
    assert result.metrics["memory/n_exemplars"] == 150
    assert 0.0 <= result.metrics["final/nme_avg_acc"] <= 1.0 and "final/nme_avg_inc_acc" in result.metrics


def test_memory_budget_needs_an_exemplar_strategy():
    from cl.config import RunConfig
    from cl.errors import ConfigError

    base = {"scenario": "split_digits", "model": "mlp", "strategy": "naive",
            "memory": {"aligned_to": "der", "exemplars": 20}}
    with pytest.raises(ConfigError, match="'naive' keeps no exemplars"):
        RunConfig.from_dict(base)
    with pytest.raises(ConfigError, match="memory.aligned_to: unknown strategy 'dre'"):
        RunConfig.from_dict({**base, "strategy": "replay", "memory": {"aligned_to": "dre", "exemplars": 2}})
