"""The episodic NMN: episodes, the memory holding a whole episode, DNI wiring, the gate, and its claims."""
import numpy as np
import pandas as pd
import pytest
import torch

from cl.config import RunConfig
from cl.errors import ConfigError
from strategies.nmn_episodes import ImageEpisodes, SinusoidEpisodes
from strategies.nmn_episodic import CONTROLLER_STATE, STATE, EpisodicNMN, Trainer, carried


def image_source(n_way=3, length=12, classes=(0, 1, 2, 3)):
    torch.manual_seed(0)
    y = torch.arange(len(classes)).repeat_interleave(6)
    x = torch.rand(len(y), 1, 4, 4) + y.view(-1, 1, 1, 1).float()          # classes far apart
    return ImageEpisodes(x, torch.tensor(classes)[y], classes, n_way=n_way, length=length)


def test_episodes_shuffle_labels_and_count_presentations():
    source = image_source()
    episodes = source.sample(20, np.random.default_rng(0))
    assert episodes.x.shape == (20, 12, 16) and episodes.y.shape == (20, 12)
    for y, p in zip(episodes.y, episodes.presentation):
        for label in range(3):
            where = (y == label).nonzero().flatten()
            assert p[where].tolist() == list(range(1, len(where) + 1))
    # the same image class gets different labels in different episodes
    class_of = episodes.x[:, :, 0].floor().long()                 # the class index is the pixel's integer part
    labels_of_class0 = {int(y[c == 0][0]) for y, c in zip(episodes.y, class_of) if (c == 0).any()}
    assert len(labels_of_class0) > 1


def test_rare_episodes_show_two_classes_once_in_each_half():
    episodes = image_source(n_way=3, length=16).sample(10, np.random.default_rng(1), rare=True)
    for y, p, scored in zip(episodes.y, episodes.presentation, episodes.scored):
        assert int(scored.sum()) == 2 and (p[scored] == 2).all() and (scored.nonzero().flatten() >= 8).all()
        for label in y[scored]:
            shown = (y == label).nonzero().flatten()
            assert len(shown) == 2 and shown[0] < 8


def test_sinusoid_episodes_are_one_function_each():
    episodes = SinusoidEpisodes(length=10).sample(4, np.random.default_rng(0))
    assert episodes.x.shape == (4, 10, 1) and episodes.y.abs().max() <= 5
    assert episodes.presentation[0].tolist() == list(range(1, 11))


def test_one_write_per_step_fills_fresh_slots_so_the_memory_holds_the_whole_episode():
    torch.manual_seed(0)
    model = EpisodicNMN(16, 3, 3, hidden=8, slots=11, key_dim=4, value_dim=4, encoder_hidden=8, encoder_dim=8)
    with torch.no_grad():
        model.write.bias[-1].fill_(-50.0)                        # the gate closed: least-used slot every time
    state, written = model.initial_state(2), []
    for t in range(12):
        before = state.get("values").clone()
        state, _ = model.step(state, torch.rand(2, 8), torch.zeros(2, 3), first=t == 0)
        changed = (state["values"] - before).abs().sum(-1) > 1e-6
        written.append(changed[0].nonzero().flatten().tolist())
    assert written[0] == [] and all(len(w) == 1 for w in written[1:])
    assert len({w[0] for w in written[1:]}) == 11                  # 11 writes, 11 different slots: nothing lost


def test_the_head_reads_the_controller_state_and_the_memory_only():
    model = EpisodicNMN(16, 3, 3, hidden=8, slots=4, key_dim=4, value_dim=5, encoder_dim=6)
    assert model.head.in_features == 8 + 5                      # [h; r], no encoder features
    assert EpisodicNMN(16, 3, 3, hidden=8, memory=False, encoder_dim=6).head.in_features == 8


def summed_controller_grads(trainer, episodes) -> dict[int, torch.Tensor]:
    """One `train_batch` with the weights left alone: the controllers' gradients summed over its chunks."""
    total = {}

    def accumulate(optimizer, parameters):                       # sum the gradients instead of stepping
        if optimizer is trainer.fast:
            for i, p in enumerate(trainer.model.controller_parameters()):
                if p.grad is not None:
                    total[i] = total.get(i, 0) + p.grad.clone()
        optimizer.zero_grad(set_to_none=True)

    trainer._clip_step = accumulate
    trainer.train_batch(episodes)
    return total


def test_with_an_oracle_synthesizer_sg_recovers_the_full_backprop_gradient():
    """DNI's wiring: truncated chunks + the true future gradient at each boundary = backprop through the episode."""
    torch.manual_seed(0)
    source = image_source(length=12)
    episodes = source.sample(4, np.random.default_rng(2))
    model = EpisodicNMN(16, 3, 3, hidden=8, slots=12, key_dim=4, value_dim=4, encoder_hidden=8, encoder_dim=8)

    def controller_grads(method, oracle=None):
        trainer = Trainer(model, method=method, kind="classification", lr=1e-3, fast_lr_ratio=1.0, truncation=4)
        if oracle is not None:
            trainer.synth = oracle
            trainer._fit_synthesizer = lambda *a: None
        return summed_controller_grads(trainer, episodes)

    full = controller_grads("bptt")
    # the oracle: the true future gradient at the boundaries 4 and 8, from one full unroll (per-episode units)
    probe = Trainer(model, method="bptt", kind="classification", lr=1e-3, fast_lr_ratio=1.0, truncation=4)
    prev = probe.prev_labels(episodes.y, 3)
    _, losses, _, kept = probe.unroll(model.initial_state(4), model.encoder(episodes.x).detach(), prev, episodes.y,
                                      0, 12, boundaries={4, 8})
    names = {t: carried(kept[t]) for t in kept}
    grads = torch.autograd.grad(losses.sum(), [kept[t][k] for t in sorted(kept) for k in names[t]])
    truth, i = [], 0
    for t in sorted(kept):
        truth.append({k: grads[i + j] for j, k in enumerate(names[t])})
        i += len(names[t])
    calls = iter(truth)
    oracle = lambda state: next(calls)  # noqa: E731
    truncated = controller_grads("bp")
    with_oracle = controller_grads("sg", oracle)
    assert set(full) == set(with_oracle)
    assert all(torch.allclose(full[i], with_oracle[i], atol=1e-5) for i in full)
    assert any(not torch.allclose(full[i], truncated.get(i, torch.zeros_like(full[i])), atol=1e-5) for i in full)
    assert set(STATE) >= set(names[4])


def test_probe_cosine_measures_the_synthesizers_against_the_true_gradient():
    torch.manual_seed(0)
    episodes = image_source(length=12).sample(4, np.random.default_rng(3))
    model = EpisodicNMN(16, 3, 3, hidden=8, slots=12, key_dim=4, value_dim=4, encoder_hidden=8, encoder_dim=8)
    trainer = Trainer(model, method="sg", kind="classification", lr=1e-3, fast_lr_ratio=1.0, truncation=4)
    assert trainer.probe_cosine(episodes)["all"] == 0.0                 # zero-initialised synthesizers: silent
    for _ in range(3):
        trainer.train_batch(episodes)
    assert len(trainer.synth_fit) == 3 * 2                               # two boundaries per episode batch
    cos = trainer.probe_cosine(episodes)
    assert set(cos) == {"all", *STATE} and all(-1 <= v <= 1 for v in cos.values())


def test_a_controller_only_synthesizer_leaves_the_memory_to_truncated_backprop():
    """synth_state "controller": S predicts h, c and query only; the memory tensors get no synthetic gradient (with
    S silent, sg's controller gradients are bp's exactly — and with "all" a guess for the slots moves them), are not
    regressed on, and a short sg run trains the synthesizer and probes it over those three tensors."""
    torch.manual_seed(0)
    episodes = image_source(length=12).sample(4, np.random.default_rng(2))
    model = EpisodicNMN(16, 3, 3, hidden=8, slots=12, key_dim=4, value_dim=4, encoder_hidden=8, encoder_dim=8)
    make = lambda method, **kw: Trainer(model, method=method, kind="classification", lr=1e-3,  # noqa: E731
                                        fast_lr_ratio=1.0, truncation=4, **kw)
    controller = make("sg", synth_state="controller")
    state = model.initial_state(4)
    assert controller.synth.names() == list(CONTROLLER_STATE) and set(controller.synth(state)) == set(CONTROLLER_STATE)
    assert set(make("sg").synth(state)) == set(STATE)

    bp = summed_controller_grads(make("bp"), episodes)
    for synth_state, moved in (("controller", False), ("all", True)):
        sg = make("sg", synth_state=synth_state)
        sg._fit_synthesizer = lambda *a: None                       # S stays as it is for the whole batch
        if synth_state == "all":                                    # only the slots' guess speaks
            torch.nn.init.normal_(sg.synth.slot[-1].weight)
        grads = summed_controller_grads(sg, episodes)
        same = set(bp) == set(grads) and all(torch.allclose(bp[i], grads[i], atol=1e-6) for i in bp)
        assert same is not moved

    assert controller.synth.slot is None                            # nothing to regress on the memory's gradient
    before = [p.clone() for p in controller.synth.parameters()]
    for _ in range(3):
        controller.train_batch(episodes)
    assert len(controller.synth_fit) == 3 * 2
    assert any(not torch.equal(a, b) for a, b in zip(before, controller.synth.parameters()))
    cos = controller.probe_cosine(episodes)
    assert set(cos) == {"all", *CONTROLLER_STATE} and all(-1 <= v <= 1 for v in cos.values())


def near_zero_key_gradient(addressing: str) -> float:
    """The norm of ∂(slot 0's read weight)/∂(slot 0's key) when a write has barely touched slot 0 (‖key‖ = 1e-4)."""
    torch.manual_seed(0)
    model = EpisodicNMN(16, 3, 3, hidden=8, slots=6, key_dim=4, value_dim=4, encoder_hidden=8, encoder_dim=8,
                        addressing=addressing)
    query = torch.nn.functional.normalize(torch.randn(2, 4), dim=-1)
    keys = torch.nn.functional.normalize(torch.randn(2, 6, 4), dim=-1)
    keys[:, 0] *= 1e-4
    keys.requires_grad_(True)
    weights = torch.softmax(9.0 * model.similarity(query, keys), -1)
    (grad,) = torch.autograd.grad(weights[:, 0].sum(), keys)
    return float(grad[:, 0].norm(dim=-1).max())


def test_unit_addressing_reads_without_cosines_one_over_key_norm():
    """cosine's score of a barely written slot has a gradient ∝ 1/‖key‖ (here ~10⁴); unit's is bounded by β‖q‖ = 9
    (times the softmax's slope ≤ 1/4) whatever the key's norm. Its keys are written as unit vectors, and the read of
    a slot holding one whole key scores as cosine does."""
    assert near_zero_key_gradient("cosine") > 100.0
    assert near_zero_key_gradient("unit") <= 9.0 / 4 + 1e-4
    torch.manual_seed(0)
    cosine = EpisodicNMN(16, 3, 3, hidden=8, slots=12, key_dim=4, value_dim=4, encoder_hidden=8, encoder_dim=8)
    unit = EpisodicNMN(16, 3, 3, hidden=8, slots=12, key_dim=4, value_dim=4, encoder_hidden=8, encoder_dim=8,
                       addressing="unit")
    unit.load_state_dict(cosine.state_dict())                     # the same weights: only the read differs
    state = unit.initial_state(2)
    for t in range(6):
        state, _ = unit.step(state, torch.rand(2, 8), torch.eye(3)[[0, 1]], first=t == 0)
    assert torch.allclose(state["query"].norm(dim=-1), torch.ones(2)) and (state["keys"].norm(dim=-1) <= 1 + 1e-5).all()
    keys = torch.nn.functional.normalize(torch.randn(2, 12, 4), dim=-1)          # whole keys: the two reads agree
    assert torch.allclose(unit.similarity(state["query"], keys), cosine.similarity(state["query"], keys), atol=1e-5)
    with pytest.raises(ValueError, match="addressing"):
        EpisodicNMN(16, 3, 3, addressing="dot")


@pytest.mark.parametrize("method", ["bp", "sg"])
def test_unit_addressing_trains(method):
    """A few dozen updates on episodes of far-apart classes lower the loss; sg's gate is probed over every tensor."""
    torch.manual_seed(0)
    source = image_source(length=12)
    rng = np.random.default_rng(0)
    model = EpisodicNMN(16, 3, 3, hidden=16, slots=12, key_dim=8, value_dim=8, encoder_hidden=16, encoder_dim=16,
                        addressing="unit")
    trainer = Trainer(model, method=method, kind="classification", lr=1e-2, fast_lr_ratio=1.0, truncation=4)
    losses = [trainer.train_batch(source.sample(8, rng)) for _ in range(40)]
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
    if method == "sg":
        cos = trainer.probe_cosine(source.sample(4, rng))
        assert set(cos) == {"all", *STATE} and all(-1 <= v <= 1 for v in cos.values())


@pytest.mark.parametrize("options, field", [({"slots": 10, "length": 20}, "slots"),
                                            ({"method": "bp", "truncation": 50}, "truncation"),
                                            ({"synth_state": "keys"}, "synth_state"),
                                            ({"addressing": "dot"}, "addressing"),
                                            ({"meta_test_classes": [0, 1]}, "meta_test_classes")])
def test_bad_options_name_the_field(options, field):
    with pytest.raises(ConfigError, match=field):
        RunConfig.from_dict({"transfer": {"name": "nmn_episodic", **options}, "train": {"optimizer": "adam"}})


def _claim_runs(cos: float, sg_gain: float) -> pd.DataFrame:
    rows = []
    for seed in range(3):
        for method in ("sg", "bp", "lstm"):
            for ratio, val in ((1.0, 0.5), (3.0, 0.6)):
                acc = 0.5 + (sg_gain if method == "sg" else 0) - (0.3 if method == "lstm" else 0) + 0.01 * seed
                rows.append({"task": "digits", "method": method, "ratio": ratio, "seed": seed,
                             "final/val_acc_after_first": val, "final/acc_p2": acc + (ratio == 1.0),
                             "final/rare_acc_second": acc,
                             "final/synth_cos": cos if method == "sg" else np.nan})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("cos, gain, verdict", [(0.05, 0.1, "not measured"), (0.5, 0.1, "yes"),
                                                (0.5, -0.1, "no")])
def test_claims_pass_the_gate_first_and_use_the_ratio_chosen_on_validation(cos, gain, verdict):
    from cl.reproductions import reproduction_for
    from strategies.nmn_claims import nmn_chosen_runs

    runs = _claim_runs(cos, gain)
    chosen, selection = nmn_chosen_runs(runs)
    assert set(chosen["ratio"]) == {3.0} and selection[("digits", "sg")]["chosen"] == 3.0
    claims = {c.claim.split(" (")[0] + " " + c.claim.split(", ")[-1]: c
              for c in reproduction_for("experiments/nmn_episodic.yaml").claims(runs)}
    gate = next(c for k, c in claims.items() if k.startswith("the gate"))
    assert gate.holds is (cos >= 0.2)
    sg = claims["sg beats bp accuracy at the 2nd presentation)"]
    assert sg.verdict == verdict and ("no verdict" in sg.ours) == (verdict == "not measured")
    memory = claims["the memory learns within an episode: sg beats the memory-free LSTM accuracy at the 2nd "
                    "presentation)"] if gain > 0 else None
    assert memory is None or memory.holds is True


def test_the_report_tables_accuracy_by_presentation_at_the_chosen_ratio_with_the_gate_beside_it():
    from cl.reproductions import reproduction_for

    runs = _claim_runs(0.05, 0.1)
    for n in (1, 5, 10):
        runs[f"final/acc_p{n}"] = 0.1 * n / 10 + 0.2
    unit = runs[runs["method"] != "lstm"].assign(addressing="unit", **{"final/synth_cos": 0.3})
    runs = pd.concat([runs, unit], ignore_index=True)
    table = "\n".join(reproduction_for("experiments/nmn_episodic.yaml").details(runs, None))
    # ratio 3 is chosen on validation: sg's 2nd presentation is 0.6 + 0.01·seed, not ratio 1's 1.6 + …
    row = "| digits | {} | {} | 3 | 3 | 21.0 ± 0.0 | {} | 25.0 ± 0.0 | 30.0 ± 0.0 | {} | {} |"
    assert row.format("cosine", "sg", "61.0 ± 1.0", "61.0 ± 1.0", "0.05") in table
    assert row.format("cosine", "lstm", "21.0 ± 1.0", "21.0 ± 1.0", "—") in table
    assert row.format("unit", "sg", "61.0 ± 1.0", "61.0 ± 1.0", "0.30") in table
    order = [f"| digits | {a} | {m} |" for a, m in (("cosine", "sg"), ("cosine", "bp"), ("cosine", "lstm"),
                                                      ("unit", "sg"), ("unit", "bp"))]
    assert [table.index(r) for r in order] == sorted(table.index(r) for r in order)


@pytest.mark.parametrize("cos, verdict", [(0.05, "not measured"), (0.5, "yes")])
def test_another_addressings_runs_get_their_own_gate_and_sg_vs_bp_claims(cos, verdict):
    """experiments/nmn_episodic_addressing.yaml's runs join the main grid's: their gate and sg vs bp are judged
    apart, labelled with the addressing, and leave the main grid's claims as they were."""
    from cl.reproductions import reproduction_for

    claims_of = reproduction_for("experiments/nmn_episodic.yaml").claims
    main = _claim_runs(0.0, 0.1)
    unit = _claim_runs(cos, 0.1)
    unit = unit[unit["method"] != "lstm"].assign(addressing="unit", synth_state="all")
    both = claims_of(pd.concat([main.assign(addressing="cosine", synth_state="all"), unit], ignore_index=True))
    alone = claims_of(main)
    assert [c.claim for c in both[:len(alone)]] == [c.claim for c in alone]
    extra = both[len(alone):]
    assert [c.claim.split(":")[0] for c in extra][:1] == ["the gate (digits, unit addressing, synth_state all)"]
    assert extra[0].holds is (cos >= 0.2) and f"per seed {cos:.3f}, {cos:.3f}, {cos:.3f}" in extra[0].ours
    sg = next(c for c in extra if c.claim.startswith("sg beats bp (digits, unit addressing, synth_state all, acc"))
    assert sg.verdict == verdict
    assert not any("memory-free LSTM" in c.claim or "recalled" in c.claim for c in extra)


def test_another_future_keeps_the_past_and_the_task():
    source = image_source(length=12)
    episodes = source.sample(3, np.random.default_rng(4))
    other = source.resample_future(episodes, 5, np.random.default_rng(5))
    assert torch.equal(other.x[:, :5], episodes.x[:, :5]) and torch.equal(other.y[:, :5], episodes.y[:, :5])
    assert not torch.equal(other.x[:, 5:], episodes.x[:, 5:])
    for a, b in zip(episodes.y, other.y):
        assert sorted(a[5:].tolist()) == sorted(b[5:].tolist())                   # the same labels still to come
    class_of = other.x[:, :, 0].floor().long()                                    # each image still of its class
    assert torch.equal(torch.gather(torch.tensor(source.classes)[None].expand(3, -1), 1, class_of),
                       torch.gather(other.classes, 1, other.y))


def test_another_sinusoid_future_keeps_the_past_and_the_function():
    source = SinusoidEpisodes(length=10)
    episodes = source.sample(3, np.random.default_rng(4))
    other = source.resample_future(episodes, 6, np.random.default_rng(5))
    assert torch.equal(other.x[:, :6], episodes.x[:, :6]) and torch.equal(other.y[:, :6], episodes.y[:, :6])
    assert not torch.equal(other.x[:, 6:], episodes.x[:, 6:])
    amplitude, phase = episodes.task[:, :1, None], episodes.task[:, 1:, None]
    assert torch.allclose(other.y, amplitude * torch.sin(other.x - phase), atol=1e-5)   # the same sinusoid


def test_future_gradient_agreement_compares_two_futures_of_one_state():
    from strategies.nmn_episodic import future_gradient_agreement

    torch.manual_seed(0)
    source = image_source(length=12)
    episodes = source.sample(4, np.random.default_rng(4))
    model = EpisodicNMN(16, 3, 3, hidden=8, slots=12, key_dim=4, value_dim=4, encoder_hidden=8, encoder_dim=8)
    trainer = Trainer(model, method="bp", kind="classification", lr=1e-3, fast_lr_ratio=1.0, truncation=4)
    other = future_gradient_agreement(trainer, episodes, 2, source)
    assert other["all"] < 0.999 and set(other) >= {"all", "h", "keys"}
