"""ScaLearn on peft: the learned scaling is exactly peft's adapters reweighted, and only ω learns.

A tiny random BERT with three LoRA adapters whose A and B are both random (peft's default
zero B would make every adapter output 0 and every equality below trivially true).
"""
import numpy as np
import pytest
import torch

pytest.importorskip("peft")
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from transformers import BertConfig, BertForSequenceClassification  # noqa: E402

from transfer.common import glue  # noqa: E402
from transfer.scalearn.model import (AdapterCombination, FusionAttention, ScaLearnConfig, ScaLearnModel,  # noqa: E402
                               VARIANTS, adapted_layers, count_for_variant, load_adapters)

NAMES = ("src_a", "src_b", "target")
LAYERS, WIDTH = 3, 16
TARGET = r".*layer\.\d+\.output\.dense"


def tiny_base(seed=0):
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=50, hidden_size=WIDTH, num_hidden_layers=LAYERS, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32, num_labels=2,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BertForSequenceClassification(config).eval()


def lora(seed):
    torch.manual_seed(seed)
    return LoraConfig(r=4, lora_alpha=8, target_modules=TARGET, init_lora_weights=False)


@pytest.fixture(scope="module")
def adapter_dirs(tmp_path_factory):
    """Three adapters saved by peft, as stage 1 leaves them."""
    root = tmp_path_factory.mktemp("adapters")
    dirs = {}
    for i, name in enumerate(NAMES):
        model = get_peft_model(tiny_base(), lora(i), adapter_name=name)
        model.save_pretrained(str(root / "save"))
        dirs[name] = root / "save" / name if (root / "save" / name).is_dir() else root / "save"
    return dirs


@pytest.fixture
def batch():
    torch.manual_seed(7)
    return {"input_ids": torch.randint(1, 50, (4, 9)), "attention_mask": torch.ones(4, 9, dtype=torch.long)}


def scalearn(adapter_dirs, variant="scalearn", **options):
    peft_model = load_adapters(tiny_base(), adapter_dirs)
    config = ScaLearnConfig(adapters=NAMES, variant=variant, adapter_paths={k: str(v) for k, v in adapter_dirs.items()},
                            **options)
    return ScaLearnModel(peft_model, config).eval()


def set_omega(model, values):
    with torch.no_grad():
        for omega in model.scaling.omega.values():
            omega.copy_(torch.tensor(values, dtype=omega.dtype).view(-1, 1).expand_as(omega))


def only_adapter(adapter_dirs, name):
    model = PeftModel.from_pretrained(tiny_base(), str(adapter_dirs[name]), adapter_name=name)
    return model.eval()


def test_one_hot_omega_on_target_equals_the_target_adapter_alone(adapter_dirs, batch):
    model = scalearn(adapter_dirs)
    set_omega(model, [0.0, 0.0, 1.0])
    expected = only_adapter(adapter_dirs, "target")(**batch).logits
    assert torch.allclose(model(**batch).logits, expected, atol=1e-6)
    # and the adapters differ, so this is not true of any adapter
    other = only_adapter(adapter_dirs, "src_a")(**batch).logits
    assert (other - expected).abs().max() > 1e-5


def test_unit_omega_equals_peft_summing_all_adapters(adapter_dirs, batch):
    model = scalearn(adapter_dirs)
    set_omega(model, [1.0, 1.0, 1.0])
    reference = load_adapters(tiny_base(), adapter_dirs)
    reference.base_model.set_adapter(list(NAMES))
    assert torch.allclose(model(**batch).logits, reference.eval()(**batch).logits, atol=1e-6)


def test_scaling_is_linear_in_each_adapter_output(adapter_dirs, batch):
    """ω = (2, 0, 0) adds twice adapter a's delta at each location: base + 2·o_a, checked on one layer's output."""
    model = scalearn(adapter_dirs)
    set_omega(model, [2.0, 0.0, 0.0])
    layer = next(iter(adapted_layers(model.model, NAMES).values()))
    x = torch.randn(2, 5, layer.in_features)
    expected = layer.base_layer(x) + 2 * layer.scaling["src_a"] * layer.lora_B["src_a"](layer.lora_A["src_a"](x))
    assert torch.allclose(layer(x), expected, atol=1e-6)


@pytest.mark.parametrize("variant", VARIANTS)
def test_parameter_counts_and_shapes_per_variant(adapter_dirs, variant):
    model = scalearn(adapter_dirs, variant)
    n = len(NAMES)
    assert model.transfer_parameter_count() == count_for_variant(variant, n, LAYERS, WIDTH)
    shapes = {tuple(w.shape) for w in model.scaling.omega.values()}
    assert shapes == {(n, WIDTH if variant in ("scalearn", "scalearn_pp") else 1)}
    assert len(model.scaling.omega) == (1 if variant.endswith("_pp") else LAYERS)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert sum(p.numel() for p in trainable) == model.transfer_parameter_count()


def test_uniform_pp_has_exactly_n_scalars_and_paper_counts():
    assert count_for_variant("scalearn_uniform_pp", 8, 12, 768) == 8
    assert count_for_variant("scalearn", 8, 12, 768) == 73_728
    assert count_for_variant("scalearn_uniform", 8, 12, 768) == 96
    assert count_for_variant("scalearn_pp", 8, 12, 768) == 6_144


def test_initialisation_follows_the_reference(adapter_dirs):
    torch.manual_seed(0)
    omega = torch.cat([w.flatten() for w in scalearn(adapter_dirs).scaling.omega.values()])
    assert abs(omega.mean().item() - 2 / len(NAMES)) < 1e-3 and 0 < omega.std().item() < 3e-3


def test_gradients_reach_omega_and_nothing_frozen(adapter_dirs, batch):
    model = scalearn(adapter_dirs).train()
    model(**batch).logits.sum().backward()
    for name, param in model.named_parameters():
        if "scaling.omega" in name:
            assert param.grad is not None and param.grad.abs().sum() > 0, name
        else:
            assert not param.requires_grad and param.grad is None, name


def test_dropout_acts_on_omega_in_training_only(adapter_dirs):
    model = scalearn(adapter_dirs, dropout=0.5)
    location = next(iter(model.scaling.group_of))
    model.train()
    torch.manual_seed(0)
    dropped = model.scaling.weights(location)
    assert (dropped == 0).any() and torch.allclose(dropped[dropped != 0],
                                                   2 * model.scaling.omega[model.scaling.group_of[location]][dropped != 0])
    model.eval()
    assert torch.equal(model.scaling.weights(location), model.scaling.omega[model.scaling.group_of[location]])


@pytest.mark.parametrize("normalisation", ["sum_to_one", "softmax"])
def test_ablation_normalisations_sum_to_one_over_adapters(adapter_dirs, normalisation):
    model = scalearn(adapter_dirs, dropout=0.0, normalisation=normalisation)
    weights = model.scaling.weights(next(iter(model.scaling.group_of)))
    assert torch.allclose(weights.sum(0), torch.ones(weights.shape[1]), atol=1e-5)


def test_save_load_round_trip_is_bit_identical(adapter_dirs, batch, tmp_path):
    model = scalearn(adapter_dirs, "scalearn_pp")
    with torch.no_grad():
        for omega in model.scaling.omega.values():
            omega.normal_()
    before = model(**batch).logits
    model.save(tmp_path / "omega")
    again = ScaLearnModel.load(tiny_base(), tmp_path / "omega").eval()
    assert again.config == model.config
    assert torch.equal(again(**batch).logits, before)


def test_load_rejects_omega_of_another_shape(adapter_dirs, tmp_path):
    scalearn(adapter_dirs, "scalearn").save(tmp_path / "omega")
    config_path = tmp_path / "omega" / "scalearn_config.json"
    config_path.write_text(config_path.read_text().replace('"variant": "scalearn"', '"variant": "scalearn_pp"'))
    with pytest.raises(ValueError, match="does not match"):
        ScaLearnModel.load(tiny_base(), tmp_path / "omega")


def test_remove_restores_peft_forward(adapter_dirs, batch):
    peft_model = load_adapters(tiny_base(), adapter_dirs).eval()
    before = peft_model(**batch).logits
    combination = AdapterCombination(peft_model, NAMES, FusionAttention({n: WIDTH for n in
                                                                         adapted_layers(peft_model, NAMES)}))
    assert (peft_model(**batch).logits - before).abs().max() > 1e-5
    combination.remove()
    assert torch.equal(peft_model(**batch).logits, before)


def test_fusion_counts_and_starts_with_identity_values(adapter_dirs, batch):
    peft_model = load_adapters(tiny_base(), adapter_dirs).eval()
    layers = adapted_layers(peft_model, NAMES)
    fusion = FusionAttention(AdapterCombination.widths(layers))
    assert sum(p.numel() for p in fusion.parameters()) == LAYERS * (3 * WIDTH ** 2 + 2 * WIDTH)
    assert fusion.regularization_loss().item() < 1e-6
    location = next(iter(layers))
    outputs = torch.randn(2, 5, len(NAMES), WIDTH)
    mixed = fusion(location, torch.randn(2, 5, WIDTH), outputs)
    # V ≈ I and the attention is a convex combination, so the output lies inside the outputs' range
    assert (mixed <= outputs.max(-2).values + 1e-4).all() and (mixed >= outputs.min(-2).values - 1e-4).all()


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="ScaLearnConfig.variant"):
        ScaLearnConfig(adapters=("a",), variant="scalearn++")
    with pytest.raises(ValueError, match="ScaLearnConfig.adapters"):
        ScaLearnConfig(adapters=("a", "a"))
    with pytest.raises(ValueError, match="ScaLearnConfig.normalisation"):
        ScaLearnConfig(adapters=("a",), normalisation="mean")
    with pytest.raises(ValueError, match="ScaLearnConfig.dropout"):
        ScaLearnConfig(adapters=("a",), dropout=1.0)


def test_adapters_missing_from_the_model_are_a_clear_error(adapter_dirs):
    peft_model = load_adapters(tiny_base(), {"src_a": adapter_dirs["src_a"]})
    with pytest.raises(ValueError, match="no LoRA layer holds all adapters"):
        ScaLearnModel(peft_model, ScaLearnConfig(adapters=("src_a", "target")))


# ---------------------------------------------------------------- GLUE files and metrics

def test_glue_metrics_follow_glue_definitions():
    labels = np.array([1, 0, 1, 1, 0, 0])
    predictions = np.array([1, 0, 0, 1, 1, 0])
    assert glue.scores("rte", predictions, labels) == {"acc": pytest.approx(4 / 6)}
    mrpc = glue.scores("mrpc", predictions, labels)
    assert mrpc["f1"] == pytest.approx(2 / 3)          # precision 2/3, recall 2/3
    cola = glue.scores("cola", predictions, labels)
    assert cola["mcc"] == pytest.approx(1 / 3)         # (TP·TN − FP·FN)/√(...) = (4 − 1)/9
    sts = glue.scores("stsb", np.array([0.0, 1.0, 2.0, 3.0]), np.array([0.0, 2.0, 4.0, 6.0]))
    assert sts["pearson"] == pytest.approx(1.0)
    assert glue.scores("stsb", np.ones(4), np.arange(4.0)) == {"pearson": 0.0, "spearman": 0.0}


@pytest.mark.shared_data("text/glue")
def test_glue_files_load_with_the_official_sizes(shared_data):
    sizes = {"cola": (8551, 1043), "mrpc": (3668, 408), "rte": (2490, 277), "stsb": (5749, 1500), "sst2": (67349, 872)}
    for task, (n_train, n_dev) in sizes.items():
        assert (len(glue.load_split(task, "train", str(shared_data))),
                len(glue.load_split(task, "dev", str(shared_data)))) == (n_train, n_dev), task


def test_missing_glue_data_names_the_field_and_the_fix(tmp_path):
    from cl.datafiles import DataNotFoundError

    with pytest.raises(DataNotFoundError, match="transfer.data_root: GLUE tasks RTE not found.*text/glue"):
        glue.load_split("rte", "train", str(tmp_path))


def test_task_head_is_berts_pooler_and_classifier_as_robertas_head_is_dense_and_projection():
    from transfer.scalearn.experiment import head_of

    peft_model = get_peft_model(tiny_base(), lora(0))
    peft_model.requires_grad_(False)
    head = head_of(peft_model)
    head.requires_grad_(True)
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert any("pooler.dense" in n for n in trainable) and any("classifier" in n for n in trainable)
    assert not any("lora_" in n or "encoder" in n for n in trainable)
    # a saved head restores the pooler too: another model with the loaded head answers the same
    other = get_peft_model(tiny_base(seed=1), lora(0))
    other.base_model.model.bert.encoder.load_state_dict(peft_model.base_model.model.bert.encoder.state_dict())
    other.base_model.model.bert.embeddings.load_state_dict(peft_model.base_model.model.bert.embeddings.state_dict())
    x = {"input_ids": torch.randint(1, 50, (2, 5))}
    assert not torch.allclose(other(**x).logits, peft_model(**x).logits)
    head_of(other).load_state_dict(head.state_dict())
    torch.testing.assert_close(other(**x).logits, peft_model(**x).logits)


@pytest.mark.parametrize("method", ["adapter", "scalearn"])
def test_runs_log_each_stage1_adapters_own_dev_score(method, shared_store, tmp_path, monkeypatch, offline_text):
    """The `adapter` baseline reloads the target's stage-1 adapter and head (pooler included), so
    its final score is exactly the score measured when the adapter was trained."""
    from cl.config import RunConfig
    from cl.registry import TRANSFERS
    from cl.runner import run
    from mlflow import MlflowClient

    monkeypatch.setenv("CLSUITE_CACHE", str(tmp_path / "cache"))
    smoke = dict(TRANSFERS.get("scalearn").smoke_options)
    cfg = RunConfig.from_dict({"experiment": f"scalearn-stage1-{method}", "seed": 0,
                               "transfer": {"name": "scalearn", **smoke, "method": method, "data_root": str(offline_text)},
                               "train": {"epochs": 1, "batch_size": 8, "lr": 0.006}})
    result = run(cfg, tracking_uri=shared_store)
    assert result.ok, result.reason
    metrics = MlflowClient(shared_store).get_run(result.run_id).data.metrics
    tasks = [smoke["target"]] if method == "adapter" else list(smoke["tasks"])
    assert {f"stage1/{t}/dev_score" for t in tasks} <= set(metrics)
    if method == "adapter":
        assert metrics["final/score"] == metrics[f"stage1/{smoke['target']}/dev_score"]


def test_majority_class_floor_predicts_the_training_majority_everywhere():
    from transfer.common.glue import TextSplit, majority_score

    train = TextSplit([("a", "b")] * 5, np.array([1, 1, 1, 0, 0]))
    dev = TextSplit([("a", "b")] * 4, np.array([1, 0, 1, 1]))
    assert majority_score("mrpc", train, dev) == pytest.approx(2 * 0.75 / 1.75)   # F1 at precision 3/4, recall 1
    assert majority_score("sst2", train, dev) == pytest.approx(0.75)
    assert majority_score("stsb", TextSplit([("a", "b")], np.array([2.5], dtype=np.float32)), dev) == 0.0
