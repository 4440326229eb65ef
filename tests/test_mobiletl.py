"""MobileTL's building blocks (issue 6): bit masks, masked activations, folded BN, the activation meter."""
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from tests.test_resume import env  # noqa: F401  (the fixture: cache and store of a test, for its subprocesses)
from transfer.mobiletl.memory import ActivationMeter, saved_activation_bytes
from transfer.mobiletl.model import FoldedBatchNorm, MaskedReLU6, SignedHardswish, pack_bits, unpack_bits


@pytest.mark.parametrize("shape", [(1,), (7,), (8,), (2, 3, 5, 5), (4, 17)])
def test_bit_packing_round_trips(shape):
    torch.manual_seed(0)
    mask = torch.rand(shape) > 0.5
    packed = pack_bits(mask)
    assert packed.dtype == torch.uint8 and packed.numel() == -(-mask.numel() // 8)
    assert torch.equal(unpack_bits(packed, mask.shape), mask)


def test_masked_relu6_is_exact_forward_and_backward():
    x = (torch.randn(4, 3, 6, 6) * 5).requires_grad_()
    reference = x.detach().clone().requires_grad_()
    grad = torch.randn(4, 3, 6, 6)
    MaskedReLU6()(x).backward(grad)
    F.relu6(reference).backward(grad)
    assert torch.equal(MaskedReLU6()(x), F.relu6(x))
    assert torch.equal(x.grad, reference.grad)


def test_signed_hardswish_forward_is_exact_and_gradient_is_the_step():
    x = torch.linspace(-5, 5, 101).requires_grad_()
    y = SignedHardswish()(x)
    assert torch.allclose(y, F.hardswish(x.detach()))
    y.sum().backward()
    assert torch.equal(x.grad, (x.detach() > 0).float())
    outside = (x.detach() < -3) | (x.detach() > 3)     # exact where the true derivative is 0 or 1
    true = torch.autograd.grad(F.hardswish(x).sum(), x)[0]
    assert torch.equal(x.grad[outside], true[outside])


def test_folded_batch_norm_matches_eval_bn_and_its_shift_gradient():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(5)
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
    bn.eval()
    folded = FoldedBatchNorm(bn)
    x = torch.randn(3, 5, 4, 4)
    grad = torch.randn(3, 5, 4, 4)
    assert torch.allclose(folded(x), bn(x), atol=1e-6)
    bn(x).backward(grad)
    folded(x).backward(grad)
    assert torch.allclose(folded.shift.grad, bn.bias.grad, atol=1e-5)
    assert [n for n, _ in folded.named_parameters()] == ["shift"]


def test_meter_counts_a_known_graph_exactly():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    x = torch.randn(5, 4)
    report = saved_activation_bytes(model, x)
    # Linear 1 saves x (5·4 floats) for its weight gradient; ReLU saves its output (5·3), which
    # Linear 2 saves again for its weight gradient — one storage, counted once; weights excluded
    assert report.total_bytes == 4 * (5 * 4 + 5 * 3)
    assert report.by_module == {"0": 4 * 5 * 4, "1": 4 * 5 * 3}
    assert report.bytes_under("1") == 60
    assert report.paper_rule_bytes == report.total_bytes     # the ReLU output is Linear 2's input: once


def test_paper_rule_charges_activation_inputs_once_and_masks_at_one_bit():
    class SaveMask(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x > 0)
            return x.clamp(min=0)

        @staticmethod
        def backward(ctx, grad):
            (mask,) = ctx.saved_tensors
            return grad * mask

    class MaskReLU(nn.Module):
        def forward(self, x):
            return SaveMask.apply(x)

    x = torch.randn(8, 6)
    # ReLU6 saves its *input* (the first Linear's output), Linear 2 saves ReLU6's output: two
    # storages as PyTorch saves them, one activation by the paper rule
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU6(), nn.Linear(5, 2))
    report = saved_activation_bytes(model, x)
    assert report.total_bytes == 4 * (8 * 6 + 8 * 5 + 8 * 5)
    assert report.paper_rule_bytes == 4 * (8 * 6 + 8 * 5)
    masked = saved_activation_bytes(nn.Sequential(nn.Linear(6, 5), MaskReLU()), x)
    assert masked.total_bytes == 4 * 8 * 6 + 8 * 5 and masked.paper_rule_bytes == 4 * 8 * 6 + 5


def test_masks_and_folding_shrink_what_is_saved():
    x = torch.randn(8, 16, 14, 14)
    plain = nn.Sequential(nn.BatchNorm2d(16).eval().requires_grad_(False), nn.ReLU6())
    lean = nn.Sequential(FoldedBatchNorm(plain[0]), MaskedReLU6())
    plain_bytes = saved_activation_bytes(plain, x.clone().requires_grad_()).total_bytes
    lean_bytes = saved_activation_bytes(lean, x.clone().requires_grad_()).total_bytes
    # a frozen BN in eval mode still saves its input; ReLU6 saves its input or output (4 B each)
    assert plain_bytes >= 2 * x.numel() * 4
    assert lean_bytes == x.numel() // 8                    # one bit per element, nothing else
    with ActivationMeter() as meter:          # without the model, its buffers cannot be excluded
        lean(x.clone().requires_grad_())
    assert meter.report.total_bytes == lean_bytes + 16 * 4     # + the folded scale a (16 floats)


def small_mobilenets():
    import torchvision

    torch.manual_seed(0)
    return {"v2": torchvision.models.mobilenet_v2(weights=None, width_mult=0.35, num_classes=10),
            "v3": torchvision.models.mobilenet_v3_small(weights=None, width_mult=0.5, num_classes=10)}


@pytest.mark.parametrize("arch", ["v2", "v3"])
def test_converted_network_computes_the_same_function(arch):
    import copy

    from transfer.mobiletl.model import MobileTLConfig, mobiletl

    model = small_mobilenets()[arch]
    with torch.no_grad():      # non-trivial statistics, so folding is tested for real
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
    original = copy.deepcopy(model).eval()
    converted = mobiletl(model, MobileTLConfig(num_trainable_blocks=3)).eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(converted(x), original(x), atol=1e-4)


@pytest.mark.parametrize("arch", ["v2", "v3"])
def test_only_the_top_blocks_and_the_head_receive_gradients(arch):
    from transfer.mobiletl.model import FoldedBatchNorm, MobileTLConfig, inverted_residual_blocks, mobiletl

    model = small_mobilenets()[arch]
    blocks = inverted_residual_blocks(model)
    converted = mobiletl(model, MobileTLConfig(num_trainable_blocks=2)).train()
    converted(torch.randn(4, 3, 32, 32)).sum().backward()
    top = {id(p) for _, b in blocks[-2:] for p in b.parameters()}
    below = {id(p) for _, b in blocks[:-2] for p in b.parameters()}
    for p in converted.parameters():
        if id(p) in below:
            assert p.grad is None and not p.requires_grad
        elif id(p) in top:
            assert p.grad is not None
    assert all(not m.training for _, b in blocks[:-2] for m in b.modules() if not list(m.children()))
    # inside each top block: every BN but the last is folded (shift only)
    for _, block in blocks[-2:]:
        norms = [m for m in block.modules() if isinstance(m, (nn.BatchNorm2d, FoldedBatchNorm))]
        assert all(isinstance(m, FoldedBatchNorm) for m in norms[:-1]) and isinstance(norms[-1], nn.BatchNorm2d)


@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_saved_input_gives_exact_input_grad_and_close_weight_grad(bits):
    from transfer.mobiletl.model import QuantizedSaveConv2d, dequantize, quantize

    torch.manual_seed(0)
    x = torch.randn(4, 6, 9, 9)
    codes, low, step = quantize(x, bits)
    assert codes.numel() == x.numel() * bits // 8
    assert (dequantize(codes, low, step, bits, x.shape) - x).abs().max() <= step.max() / 2 + 1e-6
    conv = nn.Conv2d(6, 5, 3, padding=1, stride=2)
    lean = QuantizedSaveConv2d(conv, bits)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    grad = torch.randn(4, 5, 5, 5)
    conv(a).backward(grad)
    reference_w = conv.weight.grad.clone()
    conv.weight.grad = None
    out = lean(b)
    out.backward(grad)
    assert torch.equal(out, conv(x))
    assert torch.allclose(b.grad, a.grad, atol=1e-5)
    error = (conv.weight.grad - reference_w).norm() / reference_w.norm()
    assert error < (0.01 if bits == 8 else 0.2)     # 16 levels over a Gaussian range: noise ≈ 0.15 σ


# --------------------------------------------------------------------------- issue 29: switches, plain top-k, AdaBN

SWITCHES = {  # (fold_internal_bn, activation_mask) → what each top block must contain
    "mobiletl": (True, "signed"),
    "no_fold": (False, "signed"),
    "exact_act": (True, "none"),
    "plain": (False, "none"),
}


@pytest.mark.parametrize("arch", ["v2", "v3"])
@pytest.mark.parametrize("switch", sorted(SWITCHES))
def test_each_ingredient_is_a_switch(arch, switch):
    from transfer.mobiletl.model import FoldedBatchNorm, MobileTLConfig, inverted_residual_blocks, mobiletl

    fold, mask = SWITCHES[switch]
    model = small_mobilenets()[arch]
    blocks = inverted_residual_blocks(model)
    mobiletl(model, MobileTLConfig(num_trainable_blocks=2, fold_internal_bn=fold, activation_mask=mask))
    for _, block in blocks[-2:]:
        kinds = [type(m) for m in block.modules()]
        assert (FoldedBatchNorm in kinds) == fold
        assert any(k in (MaskedReLU6, SignedHardswish) for k in kinds) == (mask == "signed")
        if mask == "signed":         # every ReLU6 / Hard-Swish of the block (outside squeeze-excitation) replaced
            assert nn.ReLU6 not in kinds and nn.Hardswish not in kinds
    for _, block in blocks[:-2]:      # the blocks below are never converted
        assert not any(isinstance(m, (FoldedBatchNorm, MaskedReLU6, SignedHardswish)) for m in block.modules())


@pytest.mark.parametrize("arch", ["v2", "v3"])
def test_plain_topk_trains_exactly_the_top_blocks_and_the_head(arch):
    from transfer.mobiletl.experiment import prepare_for_transfer
    from transfer.mobiletl.model import inverted_residual_blocks
    from transfer.mobiletl.params import MobileTLTransferParams

    model = small_mobilenets()[arch]
    blocks = inverted_residual_blocks(model)
    params = MobileTLTransferParams(method="plain_topk", num_trainable_blocks=3)
    net = prepare_for_transfer(model, params, n_classes=4).train()
    top = {id(p) for _, b in blocks[-3:] for p in b.parameters()}
    below = {id(p) for _, b in blocks[:-3] for p in b.parameters()}
    assert top and below
    net(torch.randn(4, 3, 32, 32)).sum().backward()
    trained = {id(p) for p in net.parameters() if p.grad is not None}
    assert top <= trained and not (below & trained)
    assert all(p.requires_grad == (id(p) not in below and id(p) not in _stem_ids(model, blocks[-3][1]))
               for p in net.parameters())
    for _, block in blocks[-3:]:        # ordinary BN everywhere, exact activations, all BN parameters train
        norms = [m for m in block.modules() if isinstance(m, nn.BatchNorm2d)]
        assert norms and all(m.weight.requires_grad and m.training for m in norms)
        assert not any(isinstance(m, (MaskedReLU6, SignedHardswish)) for m in block.modules())


def _stem_ids(model, first_trainable):
    ids = set()
    for module in model.modules():
        if module is first_trainable:
            break
        if not list(module.children()):
            ids |= {id(p) for p in module.parameters()}
    return ids


def test_plain_topk_refuses_mobiletl_only_options():
    from pydantic import ValidationError

    from transfer.mobiletl.params import MobileTLTransferParams

    with pytest.raises(ValidationError, match="fold_bn"):
        MobileTLTransferParams(method="plain_topk", fold_bn=True)
    with pytest.raises(ValidationError, match="quantize_saved_activations"):
        MobileTLTransferParams(method="plain_topk", quantize_saved_activations="int4")
    with pytest.raises(ValidationError, match="bn_reestimate"):
        MobileTLTransferParams(method="full", bn_reestimate=True)
    with pytest.raises(ValidationError, match="val_fraction"):
        MobileTLTransferParams(lr_candidates=[0.01, 0.1])
    MobileTLTransferParams(method="plain_topk", bn_reestimate=True, val_fraction=0.1, lr_candidates=[0.01])


def test_bn_reestimation_moves_running_stats_only():
    from transfer.mobiletl.model import reestimate_bn

    model = small_mobilenets()["v2"].eval()
    x = torch.randn(24, 3, 32, 32) * 3 + 1
    weights = {k: v.clone() for k, v in model.named_parameters()}
    stats = {k: v.clone() for k, v in model.named_buffers() if "running" in k}
    assert reestimate_bn(model, x, batch_size=8) == sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert not model.training and all(not m.training for m in model.modules())
    assert all(torch.equal(v, weights[k]) and v.grad is None for k, v in model.named_parameters())
    moved = [k for k, v in model.named_buffers() if "running" in k and not torch.allclose(v, stats[k])]
    assert len(moved) == len(stats)
    first = model.features[0][1]           # the stem's BN sees x itself: its mean is x's per-channel batch mean
    conv_out = model.features[0][0](x)
    assert torch.allclose(first.running_mean, conv_out.mean(dim=(0, 2, 3)), atol=1e-4)
    momenta = {m.momentum for m in model.modules() if isinstance(m, nn.BatchNorm2d)}
    assert momenta == {0.1}


def test_validation_split_is_disjoint_seeded_and_sized():
    from transfer.mobiletl.experiment import validation_split

    train, val = validation_split(100, 0.2, seed=3)
    assert len(val) == 20 and len(train) == 80 and not set(train.tolist()) & set(val.tolist())
    assert torch.equal(validation_split(100, 0.2, seed=3)[1], val)
    assert not torch.equal(validation_split(100, 0.2, seed=4)[1], val)
    assert len(validation_split(100, 0.0, seed=3)[1]) == 0


@pytest.mark.usefixtures("one_thread")
def sweep_run(experiment: str, *, epochs: int) -> dict:
    """A tiny plain top-k run with BN re-estimation and a two-lr sweep on validation (digits → digits, 16 px)."""
    return {"experiment": experiment, "seed": 1,
            "transfer": {"name": "mobiletl", "source": "digits", "target": "digits", "image_size": 16,
                         "source_samples_per_class": 20, "target_samples_per_class": 20, "pretrain_epochs": 1,
                         "test_samples": 100, "num_trainable_blocks": 2, "method": "plain_topk",
                         "bn_reestimate": True, "val_fraction": 0.25, "lr_candidates": [0.05, 0.01]},
            "train": {"epochs": epochs, "lr": 0.05, "momentum": 0.9, "batch_size": 32}}


def test_lr_sweep_killed_mid_sweep_resumes_with_the_same_choice_and_result(env, tmp_path, fresh_store):
    """Killed in the second lr candidate's first epoch (position 3 + 1): the resumed run keeps the first
    candidate's validation score, rebuilds the second candidate's model and ends as an uninterrupted run."""
    from tests.test_resume import killed_and_resumed, uninterrupted

    raw = sweep_run("resume-mobiletl-sweep", epochs=3)
    client, run_id = killed_and_resumed(raw, tmp_path, env, fresh_store, "step=4")
    reference, recorder = uninterrupted(raw)
    metrics = client.get_run(run_id).data.metrics
    for key in ("final/acc", "final/lr", "val/acc"):
        assert metrics[key] == reference.metrics[key], key
    for key in ("val/acc_lr0.05", "val/acc_lr0.01"):       # the first one was scored before the kill
        assert metrics[key] == recorder.metrics[key][-1][1], key


# --------------------------------------------------------------------------- frozen-feature cache

CACHE_CASES = [("plain_topk", False), ("plain_topk", True), ("mobiletl", False), ("mobiletl", True)]


def _transfer_model(arch: str, method: str, bn_reestimate: bool, x: torch.Tensor):
    from transfer.mobiletl.experiment import prepare_for_transfer
    from transfer.mobiletl.params import MobileTLTransferParams

    model = small_mobilenets()[arch]
    with torch.no_grad():      # source-like statistics, far from batch statistics: train-mode BN would show
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
    params = MobileTLTransferParams(method=method, bn_reestimate=bn_reestimate, num_trainable_blocks=2)
    torch.manual_seed(1)       # the new head
    return prepare_for_transfer(model, params, n_classes=10, bn_data=x)


def _train(model, x, y, features=None, epochs=2):
    from types import SimpleNamespace

    from transfer.mobiletl.experiment import accuracy, train_epochs

    losses = []
    torch.manual_seed(7)       # the classifier's dropout draws from the global RNG
    train = SimpleNamespace(lr=0.05, momentum=0.9, weight_decay=1e-4, batch_size=16)
    steps = train_epochs(model, x, y, epochs=epochs, train=train, device=torch.device("cpu"),
                         generator=torch.Generator().manual_seed(3), features=features,
                         on_epoch=lambda e, loss: losses.append(loss))
    return losses, steps, accuracy(model, x, y, torch.device("cpu"))


def _max_weight_gap(a: nn.Module, b: nn.Module) -> float:
    sb = b.state_dict()
    return max(float((v.float() - sb[k].float()).abs().max()) for k, v in a.state_dict().items() if v.numel())


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("arch", ["v2", "v3"])
@pytest.mark.parametrize("method,bn_reestimate", CACHE_CASES)
def test_feature_cache_trains_the_same_model_as_the_full_path(arch, method, bn_reestimate):
    """50 images in batches of 16 (three full batches read the cache, the partial one runs live), 2 epochs: the
    same losses, steps, accuracy and weights (to 1e-5; on this machine bit for bit) with and without the cache."""
    import copy

    from transfer.mobiletl.feature_cache import FeatureCache

    torch.manual_seed(0)
    x, y = torch.randn(50, 3, 32, 32), torch.randint(0, 10, (50,))
    uncached = _transfer_model(arch, method, bn_reestimate, x)
    cached = copy.deepcopy(uncached)
    reference = _train(uncached, x, y)
    cache = FeatureCache(x, batch_size=16)
    result = _train(cached, x, y, features=cache)
    assert cache.builds == 1 and cache.features.shape[0] == 50         # the cache was really used
    assert result[1] == reference[1] and result[2] == reference[2]
    assert result[0] == pytest.approx(reference[0], abs=1e-5)
    assert _max_weight_gap(cached, uncached) <= 1e-5


@pytest.mark.usefixtures("one_thread")
def test_feature_cache_comparison_fails_when_the_frozen_part_runs_in_train_mode():
    """The check above can fail: a full path whose frozen blocks run in train mode (batch statistics) trains a
    different model than the cache (which, by construction, assumes eval-mode frozen blocks)."""
    import copy

    from transfer.mobiletl.feature_cache import FeatureCache

    torch.manual_seed(0)
    x, y = torch.randn(50, 3, 32, 32), torch.randint(0, 10, (50,))
    model = _transfer_model("v2", "plain_topk", False, x)
    cached = copy.deepcopy(model)
    _train(cached, x, y, features=FeatureCache(x, batch_size=16), epochs=1)
    model._frozen = []          # MobileTLNet.train no longer puts the lower blocks in eval mode
    _train(model, x, y, epochs=1)
    assert _max_weight_gap(cached, model) > 1e-3


@pytest.mark.parametrize("method", ["full", "last_layer", "bias_bn"])
def test_feature_cache_is_off_for_methods_that_need_the_whole_network(method):
    from transfer.mobiletl.experiment import prepare_for_transfer
    from transfer.mobiletl.feature_cache import FeatureCache, split
    from transfer.mobiletl.params import MobileTLTransferParams

    model = prepare_for_transfer(small_mobilenets()["v2"], MobileTLTransferParams(method=method), n_classes=10)
    assert "not a MobileTL network" in split(model)
    cache = FeatureCache(torch.randn(4, 3, 32, 32), batch_size=2)
    assert cache.forward_for(model) is None and cache.features is None


def test_feature_cache_falls_back_when_the_premise_breaks():
    """A trainable or train-mode module below the cut, or frozen weights that changed, are never served stale."""
    from transfer.mobiletl.feature_cache import FeatureCache, split

    x = torch.randn(8, 3, 32, 32)
    model = _transfer_model("v2", "mobiletl", False, x)
    lower, top = split(model)
    model.eval()
    with torch.no_grad():
        assert torch.equal(top(lower(x)), model(x))
    assert isinstance(split(model), tuple) and len(model.net.features) > len(top.features)   # net itself uncut
    stem_bn = model.net.features[0][1]
    stem_bn.weight.requires_grad_(True)
    assert "requires a gradient" in split(model)
    stem_bn.weight.requires_grad_(False)
    frozen = model._frozen
    model._frozen = [m for m in frozen if m is not stem_bn]
    assert "train mode" in split(model)
    model._frozen = frozen
    cache = FeatureCache(x, batch_size=4)
    assert cache.forward_for(model) is not None and cache.builds == 1
    assert cache.forward_for(model) is not None and cache.builds == 1              # same frozen state: reused
    with torch.no_grad():
        stem_bn.running_mean.add_(0.1)
    forward = cache.forward_for(model)
    assert cache.builds == 2                                                      # changed: recomputed
    model.eval()
    with torch.no_grad():
        assert torch.allclose(forward([0, 1, 2, 3]), model(x[:4]), atol=1e-5)


@pytest.mark.usefixtures("one_thread")
def test_experiment_with_the_feature_cache_logs_what_the_full_path_logs(env, monkeypatch, caplog):
    """End to end (an lr sweep of two candidates with BN re-estimation): every metric of the run, the cost metrics
    included, is the same with the cache as with the cache switched off; the features are computed once per run."""
    import logging

    from tests.test_resume import uninterrupted
    from transfer.mobiletl.feature_cache import FeatureCache

    raw = sweep_run("mobiletl-feature-cache", epochs=2)
    with caplog.at_level(logging.INFO, logger="transfer.mobiletl.feature_cache"):
        cached, cached_log = uninterrupted(raw)
    assert sum("frozen-feature cache:" in r.getMessage() for r in caplog.records) == 1
    monkeypatch.setattr(FeatureCache, "forward_for", lambda self, model: None)
    full, full_log = uninterrupted(raw)
    def results(metrics):      # all but the clock and the source's pretraining loss (the second run loads it)
        return {k: v for k, v in metrics.items()
                if "seconds" not in k and not k.startswith("time/") and k != "source/train_loss"}

    assert results(cached.metrics) == results(full.metrics) and "cost/train_flops" in cached.metrics
    assert results(cached_log.metrics) == results(full_log.metrics)     # per-epoch losses, validation scores
