"""Backbones: shapes, parameter counts (PyCIL's ResNet-32, mammoth's ResNet-18), stage addressing."""
import copy

import pytest
import torch

from cl.models import build_cnn, build_mlp, build_resnet18, build_resnet32, count_parameters, resnet32


def test_resnet32_has_pycils_parameter_counts():
    net = resnet32()
    assert count_parameters(net) == 463_504
    generalized, specialized = net.split("stage_2")
    assert count_parameters(generalized) == 112_016
    assert count_parameters(specialized) == 351_488
    assert list(net.named_stages()) == ["stem", "stage_1", "stage_2", "stage_3", "pool"]


def test_resnet32_split_halves_compose_to_the_whole():
    torch.manual_seed(0)
    net = resnet32().eval()
    x = torch.randn(4, 3, 32, 32)
    first, rest = net.split("stage_2")
    assert first(x).shape == (4, 32, 16, 16)   # stage_2 halves 32x32 once
    assert torch.allclose(rest(first(x)), net(x), atol=1e-6)
    clone = copy.deepcopy(rest)       # MEMO copies the specialized block per task
    with torch.no_grad():
        next(clone.parameters()).add_(1.0)
    assert torch.allclose(rest(first(x)), net(x), atol=1e-6)


def test_unknown_stage_lists_the_names():
    with pytest.raises(KeyError, match="stem, stage_1, stage_2, stage_3, pool"):
        resnet32().stage("stage_4")


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32)])
@pytest.mark.parametrize("builder", [build_mlp, build_cnn, build_resnet32,
                                     lambda **kw: build_resnet18(width=8, **kw)])
def test_builders_fit_every_input_shape(builder, shape):
    net = builder(input_shape=shape, n_classes=7)
    x = torch.randn(3, *shape)
    assert net(x).shape == (3, 7)
    assert net.features(x).shape == (3, net.feature_dim)
    net(x).sum().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_resnet18_has_mammoths_parameter_count_and_names():
    net = build_resnet18(input_shape=(3, 32, 32), n_classes=10)
    assert count_parameters(net) == 11_173_962          # mammoth's ResNet-18 on Seq-CIFAR-10
    names = [n for n, _ in net.feature_extractor.named_children()]
    assert names == ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4"]
    assert build_resnet18(input_shape=(3, 32, 32), n_classes=10, width=20).feature_dim == 160


def test_grayscale_resnet_only_changes_the_stem():
    assert count_parameters(resnet32(in_channels=1)) == 463_504 - 2 * 16 * 9


def test_mlp_options():
    net = build_mlp(input_shape=(1, 8, 8), n_classes=10, hidden=[32], dropout=0.5)
    assert count_parameters(net) == (64 * 32 + 32) + (32 * 10 + 10)
    assert any(isinstance(m, torch.nn.Dropout) for m in net.modules())
