"""Neural memory network pieces: addressing, least-used writing, the synthetic-gradient step."""
import copy

import pytest
import torch
from torch import nn

from strategies.nmn import NMN, Synthesizer, content_addressing, controller_step, least_used_slots, write_memory


def test_content_addressing_picks_the_matching_slot():
    memory = torch.eye(4) * 10.0
    weights = content_addressing(memory, torch.tensor([[0.0, 10.0, 0.0, 0.0], [0.0, 0.0, 0.0, 10.0]]))
    assert weights.argmax(1).tolist() == [1, 3]
    assert torch.allclose(weights.sum(1), torch.ones(2)) and weights[0, 1] > 0.99


def test_least_used_slots_and_write_erase_then_add():
    usage = torch.tensor([3.0, 0.5, 2.0, 0.1])
    assert least_used_slots(usage, 2).tolist() == [3, 1]
    memory = torch.ones(4, 3)
    weights = torch.zeros(1, 4)
    weights[0, 3] = 1.0                                      # write slot 3 only
    erase = torch.tensor([[1.0, 0.0, 0.5]])
    add = torch.tensor([[2.0, 3.0, 4.0]])
    out = write_memory(memory, weights, erase, add)
    assert torch.equal(out[:3], memory[:3])                 # other slots untouched
    assert out[3].tolist() == [2.0, 4.0, 4.5]               # 1·(1 − e) + v


def test_with_a_perfect_synthesizer_the_fast_update_equals_backprop():
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(6, 8), nn.ReLU())
    model = NMN(encoder, 8, 3, slots=5, width=4)
    twin = copy.deepcopy(model)
    x, y = torch.randn(7, 6), torch.randint(0, 3, (7,))

    def loss_of(net, local=False):
        """The loss and the three controller outputs it depends on; `local`: each output computed
        from detached inputs, so its Jacobian is the controller's own (what a fast update uses)."""
        cut = (lambda t: t.detach()) if local else (lambda t: t)
        o_r, a, r = net.read(net.encoder(x).detach(), net.memory)
        o_w, weights, erase, add = net.write_ops(cut(o_r), cut(r), cut(a), y)
        memory = write_memory(net.memory, weights, erase, add)     # a later read sees this write
        u = net.encoder(x).detach()
        o_later, _, r_later = net.read(u, cut(memory), cut(o_r[:, :4].mean(0, keepdim=True)))
        return (o_r, o_w, o_later), nn.functional.cross_entropy(net.logits(u, o_later, r_later), y)

    # backprop: the true gradient of the loss w.r.t. the controllers' parameters
    states, loss = loss_of(model)
    true_h = torch.autograd.grad(loss, states, retain_graph=True)
    opt = torch.optim.SGD(model.controller_parameters(), lr=0.5)
    opt.zero_grad()
    loss.backward()
    opt.step()
    # the fast path fed with the true ∂L/∂o at the controller outputs (a perfect synthesizer)
    twin_states, _ = loss_of(twin, local=True)
    controller_step(torch.optim.SGD(twin.controller_parameters(), lr=0.5), twin.controller_parameters(),
                    twin_states, true_h)
    for a, b in zip(model.controller_parameters(), twin.controller_parameters()):
        assert torch.allclose(a, b, atol=1e-6)


def test_synthesizer_starts_silent_and_learns_a_gradient_map():
    torch.manual_seed(0)
    synth = Synthesizer(4, 3, hidden=32)
    h, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    assert torch.equal(synth(h, y), torch.zeros(64, 4))
    target = h * 2 - y.float().unsqueeze(1)
    opt = torch.optim.Adam(synth.parameters(), lr=1e-2)
    first = None
    for _ in range(200):
        loss = nn.functional.mse_loss(synth(h, y), target)
        first = first if first is not None else float(loss.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.1 * first


@pytest.mark.filterwarnings("ignore:No loggers specified")
def test_a_slow_step_trains_the_synthesizers_and_leaves_the_controllers_alone():
    from avalanche.training.plugins import EvaluationPlugin

    from strategies.nmn import _template_class

    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(6, 8), nn.ReLU())
    model = NMN(encoder, 8, 3, slots=6, width=4)
    with torch.no_grad():                                     # a synthesizer that is not silent
        for synth in model.synth.values():
            synth.net[-1].weight.normal_(0, 0.1)
    strategy = _template_class()(model=model, synthetic=True, slow_every=3, fast_lr=0.05, synth_lr=1e-2,
                                 optimizer=torch.optim.SGD(model.slow_parameters(), lr=0.1),
                                 criterion=nn.CrossEntropyLoss(), train_mb_size=4, device="cpu",
                                 evaluator=EvaluationPlugin(loggers=[]))
    batches = [(torch.randn(4, 6), torch.randint(0, 3, (4,))) for _ in range(3)]
    controllers = [p.detach().clone() for p in model.controller_parameters()]
    strategy.fast_step(*batches[0])
    moved = [p.detach().clone() for p in model.controller_parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(controllers, moved))       # the fast path moves them
    for batch in batches[1:]:
        strategy.fast_step(*batch)
    before_slow = [p.detach().clone() for p in model.controller_parameters()]
    synth_before = [p.detach().clone() for p in model.synth.parameters()]
    strategy.slow_step()
    assert all(torch.equal(a, b) for a, b in zip(before_slow, model.controller_parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(synth_before, model.synth.parameters()))
    assert strategy.slow_steps == 1 and len(strategy.cosines) == 1 and not strategy.episode
    assert strategy.extra_train_flops() > 0


def test_a_run_counts_the_slow_path_flops_and_logs_the_synthesizer_quality(shared_store, monkeypatch):
    from mlflow import MlflowClient

    import strategies.nmn as nmn
    from cl.config import RunConfig
    from cl.runner import run

    cfg = RunConfig.from_dict({
        "experiment": "nmn-accounting", "scenario": {"name": "split_digits", "n_experiences": 2},
        "model": {"name": "mlp", "hidden": [32]}, "strategy": {"name": "nmn_sg", "width": 16},
        "train": {"epochs": 1, "lr": 0.1}, "seed": 0})
    counted = run(cfg, tracking_uri=shared_store)
    original = nmn._template_class

    def without_slow_path_flops():
        class Uncounted(original()):
            def extra_train_flops(self):
                return 0.0
        return Uncounted

    monkeypatch.setattr(nmn, "_template_class", without_slow_path_flops)
    fast_only = run(cfg.model_copy(update={"experiment": "nmn-accounting-fast"}), tracking_uri=shared_store)
    assert counted.ok and fast_only.ok
    # the slow path replays every minibatch once with gradients: it costs about as much again as the fast path
    assert counted.metrics["cost/train_flops"] > 1.5 * fast_only.metrics["cost/train_flops"]
    client = MlflowClient(shared_store)
    assert "nmn/synthesizer.json" in {a.path for a in client.list_artifacts(counted.run_id, "nmn")}
    assert counted.metrics["memory/persistent_state_bytes"] == 4 * (128 * 16 + 128 + 2 * 16)
