"""MemControl (transfer/memcontrol/search.py) and its diffusion objectives (transfer/memcontrol/diffusion.py).

Real peft, real Optuna (SQLite storage in a temp dir), a real MLflow store; tiny models on digits.
"""
import itertools

import time

import numpy as np
import pytest
import torch
from torch import nn

from transfer.memcontrol import diffusion as D
from transfer.memcontrol.search import (Block, LoraOptions, MemControlSearch, MlflowTrialRecorder, apply_mask, choose,
                                 pareto_indices)

optuna = pytest.importorskip("optuna")


pytestmark = pytest.mark.usefixtures("one_thread")


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Linear(6, 5), nn.LayerNorm(5))
        self.b = nn.Sequential(nn.Conv2d(2, 3, 3), nn.GroupNorm(1, 3))
        self.n = nn.Sequential(nn.Linear(5, 5), nn.LayerNorm(5))
        self.c = nn.Embedding(7, 4)
        self.k = nn.Conv2d(3, 4, 3)
        self.f = nn.Linear(4, 2)
        self.head = nn.Linear(3, 3)          # in no block: never trains

    def forward(self, x):
        return self.a(x)


TOY_BLOCKS = [Block("a", "a", "lora"), Block("b", "b", "bias"), Block("n", "n", "norm"),
              Block("c", "c", "lora"), Block("k", "k", "lora"), Block("f", "f", "full")]
# by hand, LoRA r = 2: Linear(6→5): A 2×6 + B 5×2; Embedding(7, 4): A 2×7 + B 4×2;
# Conv2d(3→4, 3×3): A = Conv2d(3→2, 3×3) 2·3·9, B = Conv2d(2→4, 1×1) 4·2
TOY_EXPECTED = {
    "a": ({"a.0.lora_A.default.weight", "a.0.lora_B.default.weight"}, 12 + 10),
    "b": ({"b.0.bias", "b.1.bias"}, 3 + 3),
    "n": ({"n.1.weight", "n.1.bias"}, 5 + 5),
    "c": ({"c.lora_embedding_A.default", "c.lora_embedding_B.default"}, 14 + 8),
    "k": ({"k.lora_A.default.weight", "k.lora_B.default.weight"}, 54 + 8),
    "f": ({"f.weight", "f.bias"}, 8 + 2),
}


def test_mask_maps_to_exactly_the_trainable_parameters():
    for mask in itertools.product((0, 1), repeat=len(TOY_BLOCKS)):
        torch.manual_seed(0)
        model = apply_mask(Toy(), TOY_BLOCKS, mask, lora=LoraOptions(r=2, alpha=4))
        trainable = {name: p.numel() for name, p in model.named_parameters() if p.requires_grad}
        selected = [b.name for b, bit in zip(TOY_BLOCKS, mask) if bit]
        assert set(trainable) == set().union(*(TOY_EXPECTED[n][0] for n in selected)), mask
        assert sum(trainable.values()) == sum(TOY_EXPECTED[n][1] for n in selected), mask
    x = torch.randn(3, 6)
    torch.manual_seed(0)
    plain = Toy()
    torch.manual_seed(0)
    adapted = apply_mask(Toy(), TOY_BLOCKS, (1, 0, 0, 0, 0, 0), lora=LoraOptions(r=2, alpha=4))
    assert torch.allclose(adapted(x), plain(x))        # LoRA starts as the identity (B = 0)


def test_mask_errors_name_the_problem():
    with pytest.raises(ValueError, match="mask: 2 bits for 6 blocks"):
        apply_mask(Toy(), TOY_BLOCKS, (1, 0))
    with pytest.raises(ValueError, match="Block 'z': module 'zz' not found"):
        apply_mask(Toy(), [Block("z", "zz")], (1,))
    with pytest.raises(ValueError, match="recipe 'prefix' unknown"):
        Block("z", "a", "prefix")


def test_unet_blocks_cover_the_unet_apart_from_its_glue():
    """Every U-Net parameter trains under full-recipe all-ones, except the label table, stem, resampling and output."""
    model = D.TinyUNet(D.UNetConfig(image_size=8, channels=(8, 8, 16), emb_dim=16))
    blocks = [Block(n, m, "full") for n, m in zip(D.TinyUNet.block_names, D.TinyUNet.block_modules)]
    apply_mask(model, blocks, (1,) * len(blocks))
    frozen = {n.split(".")[0] for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"embed", "stem", "down0", "down1", "up1", "up0", "out_norm", "out"}
    assert not any(p.requires_grad for p in model.embed.label.parameters())


def _digits():
    from cl.scenarios import image_tensors

    x, y, _, _ = image_tensors("digits")
    return D.to_model_range(x), y


def test_noise_memorization_is_larger_for_a_model_overfit_to_repeated_images():
    """Same init, same steps; the memorised images repeated ×32 vs. seen once (each with its own prompt)."""
    x, y = _digits()
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    mem, other = order[:4], order[4:204]
    prompts = 10 + torch.arange(4)
    ddpm = D.DDPM(200)
    config = D.UNetConfig(image_size=8, n_classes=14, channels=(8, 16, 16), emb_dim=32)
    scores = {}
    for name, repeats in {"repeated": 32, "once": 1}.items():
        xs = torch.cat([x[other]] + [x[mem]] * repeats)
        ys = torch.cat([y[other]] + [prompts] * repeats)
        torch.manual_seed(0)
        model = D.TinyUNet(config)
        D.train_steps(model, ddpm, xs, ys, steps=250, lr=3e-3, batch_size=32, p_uncond=0.2,
                      generator=torch.Generator().manual_seed(1), device="cpu")
        scores[name] = D.noise_memorization(model, ddpm, x[mem], prompts, passes=8, seed=0)
    assert scores["repeated"] > 1.2 * scores["once"], scores


def test_fid_and_nearest_neighbour_measures():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 3))
    b = rng.normal(size=(4000, 3)) + np.array([2.0, 0, 0])
    assert D.frechet_distance(a, a) == pytest.approx(0, abs=1e-6)
    assert D.frechet_distance(a, b) == pytest.approx(4.0, rel=0.05)      # ‖Δμ‖², equal covariances
    train, heldout = torch.rand(20, 1, 8, 8), torch.rand(20, 1, 8, 8)
    copies = train[:5] + 0.001 * torch.randn(5, 1, 8, 8)
    assert D.nn_memorization(copies, train, heldout)[0] == 1.0
    assert D.nn_memorization(torch.rand(50, 1, 8, 8), train, heldout)[0] < 0.1


def test_prompt_labels_extend_the_table_and_keep_the_null_label():
    model = D.TinyUNet(D.UNetConfig(image_size=8, channels=(8, 8, 16), emb_dim=16))
    old = model.embed.label.weight.detach().clone()
    D.add_prompt_labels(model, torch.tensor([3, 7]))
    assert model.null_label == 12 and model.embed.label.weight.shape[0] == 13
    assert torch.equal(model.embed.label.weight[:10], old[:10]) and torch.equal(model.embed.label.weight[12], old[10])
    assert model(torch.zeros(2, 1, 8, 8), torch.tensor([5, 5]), torch.tensor([11, 12])).shape == (2, 1, 8, 8)


# --------------------------------------------------------------------------- the search


def _values(mem, quality):
    return {"memorization": mem, "quality": quality}


def _search(**kw):
    blocks = [Block("a", "a", "lora"), Block("b", "b", "bias"), Block("f", "f", "full")]
    defaults = dict(model=Toy, blocks=blocks, finetune=lambda m, lr: None,
                    memorization=lambda m: 1.0, quality=lambda m: 1.0, lr_range=(1e-4, 1e-2))
    return MemControlSearch(**{**defaults, **kw})


def test_pareto_front_and_choice_on_hand_made_trials():
    search = _search()
    study = search.study()
    dists = {"mask.a": optuna.distributions.IntDistribution(0, 1), "mask.b": optuna.distributions.IntDistribution(0, 1),
             "mask.f": optuna.distributions.IntDistribution(0, 1),
             "lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)}
    values = [(1.0, 5.0), (2.0, 3.0), (3.0, 1.0), (2.5, 3.5), (1.0, 6.0), (2.0, 3.0), (4.0, 1.0)]
    params = [100, 100, 100, 100, 100, 50, 100]
    for v, n in zip(values, params):
        study.add_trial(optuna.trial.create_trial(params={"mask.a": 1, "mask.b": 0, "mask.f": 1, "lr": 1e-3},
                                                  distributions=dists, values=list(v),
                                                  user_attrs={"trainable_params": n}))
    # 3 is dominated by 1, 4 by 0, 6 by 2; 1 and 5 are equal and both stay
    assert pareto_indices(np.array(values)) == [0, 1, 2, 5]
    result = search.result()
    assert [p.number for p in result.front] == [0, 1, 2, 5]
    assert {t.number for t in study.best_trials} == {0, 1, 2, 5}          # Optuna agrees
    # utopia: normalised distances 1, √½, 1, √½ → the tie (1, 5) goes to fewer parameters
    assert result.chosen.number == 5 and result.chosen_mask == {"a": 1, "b": 0, "f": 1}
    assert choose(result.front, "quality_tolerance", tolerance=0.0).number == 2
    assert choose(result.front, "quality_tolerance", tolerance=2.0).number == 5


class _Budget:
    """A cheap inner loop that still depends on the mask and the lr: one SGD step towards zero."""

    def __init__(self, stop_after=None):
        self.calls = 0
        self.stop_after = stop_after

    def finetune(self, model, lr):
        self.calls += 1
        if self.stop_after is not None and self.calls > self.stop_after:
            raise KeyboardInterrupt          # the process is interrupted mid-search
        params = [p for p in model.parameters() if p.requires_grad]
        for p in params:
            p.data.mul_(1 - 10 * lr)

    @staticmethod
    def memorization(model):
        return float(sum(p.detach().abs().sum() for p in model.f.parameters()))

    @staticmethod
    def quality(model):
        return float(sum(p.requires_grad for p in model.parameters())) + float(model.a[0].weight.detach().abs().sum())


def test_a_resumed_study_continues_rather_than_restarts(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    first = _Budget(stop_after=3)

    def make(budget, **kw):
        return _search(finetune=budget.finetune, memorization=budget.memorization, quality=budget.quality,
                       storage=storage, sampler="random", seed=0, **kw)

    with pytest.raises(KeyboardInterrupt):
        make(first).run(n_trials=6)
    before = optuna.load_study(study_name="memcontrol", storage=storage).trials
    completed = [t for t in before if t.state == optuna.trial.TrialState.COMPLETE]
    assert 3 <= len(completed) < 6

    second = _Budget()
    result = make(second).run(n_trials=6)
    after = optuna.load_study(study_name="memcontrol", storage=storage).trials
    assert len(result.trials) == 6 and result.ran_now == 6 - len(completed)
    assert second.calls <= 6 - len(completed)       # all-zero masks skip the fine-tuning
    for old in completed:                           # the first trials are kept as they were
        again = after[old.number]
        assert again.params == old.params and again.values == old.values
    new_lrs = {t.params["lr"] for t in after[len(before):]}
    assert not new_lrs & {t.params["lr"] for t in before}          # not a replay of the first proposals
    third = _Budget()
    assert make(third).run(n_trials=6).ran_now == 0 and third.calls == 0
    with pytest.raises(ValueError, match="storage: study 'memcontrol' .* searched blocks"):
        _search(blocks=[Block("a", "a")], storage=storage).run(n_trials=6)


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")      # the test plays the killed process with ask()
def test_a_trial_left_running_by_a_killed_process_is_failed_on_resume(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    budget = _Budget()

    def make():
        return _search(finetune=budget.finetune, memorization=budget.memorization, quality=budget.quality,
                       storage=storage, sampler="random", heartbeat_seconds=1, grace_seconds=2)

    search = make()
    study = search.study()
    orphan = study.ask()                                  # the process dies (SIGKILL) while this trial runs
    search._storage().record_heartbeat(orphan._trial_id)
    time.sleep(3.5)      # > grace + 1 s: SQLite's CURRENT_TIMESTAMP (the heartbeat clock) has whole seconds
    result = make().run(n_trials=2)
    states = {t.number: t.state for t in optuna.load_study(study_name="memcontrol", storage=storage).trials}
    assert states[orphan.number] == optuna.trial.TrialState.FAIL
    assert len(result.trials) == 2 and result.failed == 1


def test_every_trial_is_an_mlflow_child_run(tmp_path):
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("memcontrol-test", artifact_location=(tmp_path / "art").as_uri())
    parent = client.create_run(experiment).info.run_id
    budget = _Budget()
    calls = {"n": 0}

    def finetune(model, lr):
        calls["n"] += 1
        if calls["n"] == 1:
            raise FloatingPointError("diffusion loss became nan at step 3")
        budget.finetune(model, lr)

    search = _search(finetune=finetune, memorization=budget.memorization, quality=budget.quality,
                     recorders=[MlflowTrialRecorder(client, parent)], sampler="nsga2", population_size=2, seed=1)
    result = search.run(n_trials=3)
    children = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent}'")
    finished = {int(r.data.params["trial"]): r for r in children if r.info.status == "FINISHED"}
    failed = [r for r in children if r.info.status == "FAILED"]
    assert calls["n"] >= 1 and len(failed) == 1 and result.failed == 1
    assert "nan" in failed[0].data.tags["failure_reason"]
    assert sorted(finished) == [p.number for p in result.trials]
    for point in result.trials:
        run = finished[point.number]
        assert run.data.metrics["memorization"] == pytest.approx(point.values[0])
        assert run.data.metrics["quality"] == pytest.approx(point.values[1])
        assert run.data.params["mask"] == "".join(map(str, point.mask))
        assert float(run.data.params["lr"]) == pytest.approx(point.lr)
        assert run.data.metrics["trainable_params"] == point.trainable_params


def test_search_rejects_bad_settings():
    with pytest.raises(ValueError, match="lr_range: need 0 < low < high"):
        _search(lr_range=(1e-2, 1e-4))
    with pytest.raises(ValueError, match="sampler: 'cmaes' unknown"):
        _search(sampler="cmaes")
    with pytest.raises(ValueError, match="Block 'q': module 'q' not found"):
        _search(blocks=[Block("q", "q")])


class _Regression:
    """A real inner loop through LoRA on block `a`: SGD on a fixed regression, so the adapters' random initial
    weights shape the result (B starts at zero, its gradient depends on A)."""

    x = torch.linspace(-1, 1, 24).reshape(4, 6)
    target = torch.linspace(1, -1, 20).reshape(4, 5)

    def finetune(self, model, lr):
        trainable = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.SGD(trainable, lr=lr)
        for _ in range(5):
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(self.x), self.target)
            if not loss.requires_grad:          # the mask trains nothing on the forward path (Toy uses `a` only)
                return
            loss.backward()
            opt.step()

    def memorization(self, model):
        with torch.no_grad():
            return float(nn.functional.mse_loss(model(self.x), self.target))

    def quality(self, model):
        with torch.no_grad():
            return float(model(self.x).abs().sum())


def test_stage_two_rebuilds_exactly_the_chosen_trials_model():
    """MemControl's second stage retrains the chosen mask; it must reproduce the chosen trial, not a model with
    other LoRA initial weights drawn from wherever the global RNG happens to be."""
    inner = _Regression()
    search = MemControlSearch(model=Toy(), blocks=[Block("a", "a", "lora"), Block("n", "n", "norm")],
                              finetune=inner.finetune, memorization=inner.memorization, quality=inner.quality,
                              lr_range=(0.05, 0.5), lora=LoraOptions(r=2, alpha=4), sampler="random", seed=3)
    result = search.run(n_trials=6)
    lora_points = [p for p in result.trials if p.mask[0] == 1]
    assert lora_points, "the random sampler proposed no LoRA mask; change the seed"
    for point in lora_points + [result.chosen]:
        torch.manual_seed(12345)                 # whatever the global RNG holds, stage 2 gives the trial's model
        model = search.rebuild(point)
        inner.finetune(model, point.lr)
        assert (inner.memorization(model), inner.quality(model)) == point.values
    # the check can fail: initial weights differ between trials and from an unseeded build
    a0 = search.build((1, 0), trial=0).a[0].lora_A.default.weight
    a1 = search.build((1, 0), trial=1).a[0].lora_A.default.weight
    unseeded = apply_mask(Toy(), search.blocks, (1, 0), lora=search.lora).a[0].lora_A.default.weight
    assert not torch.equal(a0, a1) and not torch.equal(a0, unseeded)
    state = torch.random.get_rng_state()
    search.build((1, 1), trial=4)
    assert torch.equal(state, torch.random.get_rng_state())       # the global RNG is left alone


def test_kid_is_unbiased_near_zero_for_one_distribution_and_grows_with_a_shift():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(300, 16)), rng.normal(size=(300, 16))
    same = D.kernel_inception_distance(a, b, subsets=20, subset_size=200)
    shifted = D.kernel_inception_distance(a, b + 0.5, subsets=20, subset_size=200)
    assert abs(same.mean) < 3 * same.std + 1e-3 and same.subset_size == 200
    assert shifted.interval[0] > same.interval[1]          # the shift is far outside the floor's spread
    assert D.kernel_inception_distance(a, b, subsets=5, subset_size=5000).subset_size == 300
    with pytest.raises(ValueError, match="at least 2"):
        D.kernel_inception_distance(a[:1], b)


def test_seed_masks_are_the_first_trials_of_a_new_study_only(tmp_path):
    from transfer.memcontrol.search import single_block_masks

    assert single_block_masks(3) == [(1, 1, 1), (1, 0, 0), (0, 1, 0), (0, 0, 1)]
    inner = _Regression()
    kwargs = dict(model=Toy(), blocks=[Block("a", "a", "lora"), Block("n", "n", "norm"), Block("f", "f", "full")],
                  finetune=inner.finetune, memorization=inner.memorization, quality=inner.quality,
                  lr_range=(0.01, 0.5), sampler="random", storage=f"sqlite:///{tmp_path / 's.db'}",
                  initial_masks=single_block_masks(3))
    first = MemControlSearch(**kwargs).run(n_trials=6)
    assert [p.mask for p in first.trials[:4]] == single_block_masks(3)
    assert [p.lr for p in first.trials[:4]] == [pytest.approx((0.01 * 0.5) ** 0.5)] * 4
    again = MemControlSearch(**kwargs).run(n_trials=8)           # resumed: nothing enqueued twice
    assert [p.mask for p in again.trials[:6]] == [p.mask for p in first.trials]
    assert [p.mask for p in again.trials[6:]].count((1, 1, 1)) <= 1
    with pytest.raises(ValueError, match="mask: 2 bits for 3 blocks"):
        MemControlSearch(**{**kwargs, "initial_masks": [(1, 0)]})


def test_a_search_on_copying_with_kid_against_training_images_reproduces_its_choice(tmp_path, monkeypatch):
    """The experiment end to end on digits with the new search settings: the study starts from the seeded masks,
    KID and its real-vs-real floor are logged, and stage 2 gives back the chosen trial's objectives."""
    from mlflow import MlflowClient

    from cl.config import RunConfig
    from cl.registry import TRANSFERS
    from cl.runner import run

    monkeypatch.setenv("CLSUITE_CACHE", str(tmp_path / "cache"))
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    options = {**dict(TRANSFERS.get("memcontrol").smoke_options), "n_trials": 3, "search_memorization": "copy_rate",
               "search_quality": "kid", "search_reference": "train", "seed_masks": True, "kid_subsets": 4}
    cfg = RunConfig.from_dict({"experiment": "mc-kid", "transfer": {"name": "memcontrol", **options},
                               "train": {"epochs": 1, "batch_size": 16, "lr": 0.01}, "seed": 1})
    result = run(cfg, tracking_uri=store)
    assert result.ok, result.reason
    metrics = MlflowClient(store).get_run(result.run_id).data.metrics
    assert metrics["search/stage2_matches_trial"] == 1.0
    assert metrics["final/kid_std"] > 0 and np.isfinite(metrics["final/kid_floor"])
    assert 0 <= metrics["search/stage2_memorization"] <= 1          # a copy rate, not the noise magnitude
    params = MlflowClient(store).get_run(result.run_id).data.params
    assert params["memcontrol.mask"] in {"1" * 10, "1" + "0" * 9, "01" + "0" * 8}   # one of the 3 seeded trials
