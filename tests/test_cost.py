"""Training FLOPs: the sampled count matches a hand count, and frozen weights cost no gradient."""
import warnings

import pytest
import torch

from cl.cost import FlopMeter, count_flops
from cl.models import build_mlp
from cl.scenarios import from_tensors


def train_with_meter(freeze_first_layer: bool, epochs: int = 2):
    from avalanche.training.templates import SupervisedTemplate

    from cl.runner import _silent_evaluator

    torch.manual_seed(0)
    x, y = torch.randn(10, 4), torch.tensor([0, 1] * 5)
    scenario = from_tensors(x, y, x, y, n_experiences=1, shuffle_classes=False)
    model = build_mlp(input_shape=(1, 1, 4), n_classes=2, hidden=[3])     # Linear(4,3) ReLU Linear(3,2)
    if freeze_first_layer:
        model.feature_extractor.requires_grad_(False)
    meter = FlopMeter()
    strategy = SupervisedTemplate(model=model, optimizer=torch.optim.SGD([p for p in model.parameters()
                                                                          if p.requires_grad], lr=0.1),
                                  criterion=torch.nn.CrossEntropyLoss(), train_mb_size=4, train_epochs=epochs,
                                  plugins=[meter], evaluator=_silent_evaluator())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        strategy.train(scenario.benchmark.train_stream[0], num_workers=0)
    return meter, strategy


def test_flops_match_a_hand_count():
    # per sample: forward 2·(4·3 + 3·2) = 36; backward: head weight grad 2·3·2 = 12, grad into the
    # hidden layer 12, first weight grad 2·4·3 = 24 (the input needs no gradient) = 48
    meter, strategy = train_with_meter(freeze_first_layer=False)
    assert meter.flops_per_sample == [84]
    assert meter.total(strategy) == 84 * 10 * 2                 # 10 samples (batches 4, 4, 2) × 2 epochs


def test_frozen_weights_cost_no_backward():
    # only the head's weight gradient is computed: 36 forward + 12 backward
    meter, _ = train_with_meter(freeze_first_layer=True, epochs=1)
    assert meter.flops_per_sample == [48]


def test_count_flops_closes_the_counter_on_error():
    from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

    def boom():
        raise RuntimeError("x")

    with pytest.raises(RuntimeError):
        count_flops(boom)
    assert not _get_current_dispatch_mode_stack()
    _, flops = count_flops(torch.mm, torch.ones(2, 3), torch.ones(3, 4))
    assert flops == 2 * 2 * 3 * 4


def _conv_step_flops(conv: torch.nn.Module, x: torch.Tensor) -> int:
    return count_flops(lambda: conv(x).sum().backward())[1]


@pytest.mark.parametrize("groups", [1, 3, 6])
@pytest.mark.parametrize("transposed", [False, True])
def test_a_convolution_step_costs_three_forwards_whatever_its_groups(groups, transposed):
    # forward: 2 · N · (output positions, input positions when transposed) · C_out · C_in/groups · k²; the
    # input's and the weight's gradients cost one forward each (torch 2.14 counts the weight's `groups` × too much)
    layer = torch.nn.ConvTranspose2d if transposed else torch.nn.Conv2d
    conv = layer(6, 12, 3, groups=groups, bias=False)
    x = torch.randn(2, 6, 5, 5, requires_grad=True)
    positions = 5 * 5 if transposed else 3 * 3
    forward = 2 * 2 * positions * 12 * (6 // groups) * 9
    assert count_flops(lambda: conv(x))[1] == forward
    assert _conv_step_flops(conv, x) == 3 * forward
    x.requires_grad_(False)                          # only the weight's gradient
    assert _conv_step_flops(conv, x) == 2 * forward


def test_ungrouped_convolutions_count_as_torch_does():
    from torch.utils.flop_counter import FlopCounterMode

    conv, x = torch.nn.Conv2d(4, 8, 3, stride=2, padding=1), torch.randn(3, 4, 9, 9, requires_grad=True)
    with FlopCounterMode(display=False) as stock:
        conv(x).sum().backward()
    assert _conv_step_flops(conv, x) == stock.get_total_flops()
