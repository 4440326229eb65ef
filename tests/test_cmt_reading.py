"""Issue #30's training and probes: fresh documents, per-part learning rates, frozen question encoder, the
reading probes, the curriculum, and their options' validation."""
import dataclasses

import pytest
import torch

from transfer.cmt.data import FreshDocuments, capitalised_words, synthetic_facts
from transfer.cmt.params import CMTTransferParams

pytest.importorskip("transformers")

from tests.test_cmt import DOCS, SMALL, TOKENIZER, snapshot, same, tiny_cmt  # noqa: E402
from tests.test_cmt_transfer import run_direct  # noqa: E402
from transfer.cmt.baselines import Harness  # noqa: E402
from transfer.cmt.model import make_optimizer, train_steps  # noqa: E402
from transfer.cmt.probes import CONDITIONS, ProbeSet, reading_probe  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def test_fresh_documents_are_fixed_by_the_step_new_at_every_step_and_avoid_the_reserved_names():
    stream = synthetic_facts(40, seed=0, answers="closed")
    reserved = capitalised_words(stream)
    fresh = FreshDocuments(reserved, seed=3, batch_documents=4, answers="closed")
    assert fresh(5) == fresh(5)
    entities = [qa.question for step in range(50) for d in fresh(step) for qa in d.qas[:1]]
    names = {w.strip("?") for step in range(50) for d in fresh(step) for w in d.qas[0].question.split()
             if w[:1].isupper() and w not in ("In", "What", "Who")}
    assert len(set(entities)) == len(entities) == 200           # never a repeated document in 50 steps
    assert names and not names & reserved
    assert len({len(d.qas) for d in fresh(1, 1)}) == 1 and len(fresh(1, 1)[0].qas) == 1
    assert [d.doc_id for d in fresh(1)] != [d.doc_id for d in fresh(2)]


def test_encoder_lr_puts_the_pretrained_encoders_in_their_own_group():
    model = tiny_cmt()
    optimizer = make_optimizer(model, lr=1e-3, encoder_lr=1e-5)
    new, encoders = optimizer.param_groups
    assert (new["lr"], encoders["lr"]) == (1e-3, 1e-5)
    encoder_ids = {id(p) for c in (model.compressor, model.question_encoder) for p in c.encoder.parameters()}
    assert {id(p) for p in encoders["params"]} == encoder_ids
    assert not {id(p) for p in new["params"]} & encoder_ids
    assert len(new["params"]) + len(encoders["params"]) == len(model.trainable_parameters())


def test_a_frozen_question_encoder_keeps_its_weights_and_runs_without_dropout():
    model = tiny_cmt(dataclasses.replace(SMALL, freeze_question_encoder=True))
    before = snapshot(model.question_encoder.encoder)
    doc_before = snapshot(model.compressor.encoder)
    optimizer = make_optimizer(model, lr=1e-2)
    from transfer.cmt.data import collate

    train_steps(model, [collate(DOCS[:4], TOKENIZER, TOKENIZER)] * 2, optimizer)
    assert same(before, snapshot(model.question_encoder.encoder))
    assert not same(doc_before, snapshot(model.compressor.encoder))
    assert model.training and not model.question_encoder.encoder.training and model.compressor.encoder.training


def test_probes_read_the_true_memory_when_the_bank_holds_only_it_and_change_nothing():
    model = tiny_cmt()
    harness = Harness(TOKENIZER, TOKENIZER, max_new_tokens=3)
    before = snapshot(model)
    model.train()
    probe = ProbeSet.split(DOCS[:2], 1)                           # a right bank of the question's document alone
    result = reading_probe(model, harness, probe)
    assert set(result) == {*CONDITIONS, "memory_doc_loss"} and model.training and same(before, snapshot(model))
    assert set(result["memory_doc_loss"]) == {"own", "other", "none"}
    assert result["memory_doc_loss"]["own"] == result["memory_doc_loss"]["other"]     # one document: "another" is it
    two = reading_probe(model, harness, ProbeSet.split(DOCS[:4], 2))["memory_doc_loss"]
    assert two["own"] != two["other"]
    assert result["right_bank"] == result["true_memory"]
    assert result["other_bank"]["loss"] != result["right_bank"]["loss"]
    assert result["empty_bank"]["loss"] != result["right_bank"]["loss"]
    assert all(0 <= result[c]["f1"] <= 100 and result[c]["loss"] > 0 for c in CONDITIONS)


def test_fresh_training_with_a_curriculum_logs_probe_curves_and_a_table(tmp_path):
    metrics, log, _ = run_direct(tmp_path, train_data="fresh", train_steps=4, curriculum_steps=2, probe_documents=2,
                                 probe_every=2)
    assert [s for s, _ in log.history("probe/right_bank_f1")] == [0, 2, 4]
    assert [s for s, _ in log.history("train/qa")] == [0, 1, 2, 3]
    table = log.artifacts["cmt/probes.csv"].decode().splitlines()
    assert table[0].startswith("step,right_bank_loss") and [r.split(",")[0] for r in table[1:]] == ["0", "2", "4"]
    assert {f"probe_{c}_f1" for c in CONDITIONS} <= set(metrics)
    answers = log.artifacts["cmt/probe_predictions.jsonl"].decode().splitlines()
    assert len(answers) == 4 * 2 * 3                    # conditions × probe documents × questions


@pytest.mark.parametrize("options, field", [
    ({"train_data": "fresh", "dataset": "squad"}, "train_data"),
    ({"curriculum_steps": 2}, "curriculum_steps"),
    ({"train_data": "fresh", "curriculum_steps": 10, "train_steps": 10}, "curriculum_steps"),
    ({"encoder_lr": 1e-5, "train_encoder": False}, "encoder_lr"),
    ({"freeze_question_encoder": True, "share_encoder": True}, "freeze_question_encoder"),
])
def test_contradictory_reading_options_are_refused_naming_the_field(options, field):
    with pytest.raises(ValueError, match=field):
        CMTTransferParams(**{"train_steps": 20, **options})


def test_the_new_options_at_their_defaults_leave_the_resolved_config_unchanged():
    from cl.registry import dump_options

    dumped = dump_options(CMTTransferParams())
    for name in ("train_data", "encoder_lr", "freeze_question_encoder", "probe_documents", "probe_every",
                 "curriculum_steps", "train_checkpoint_every"):
        assert name not in dumped
    assert dump_options(CMTTransferParams(train_data="fresh"))["train_data"] == "fresh"


def test_a_training_checkpoint_keeps_the_trainable_parameters_and_not_the_frozen_encoders():
    model = tiny_cmt(dataclasses.replace(SMALL, train_encoder=False))
    kept = model.checkpoint_state_dict()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable <= set(kept)
    assert not any(k.startswith(("lm.", "compressor.encoder.", "question_encoder.encoder.")) for k in kept)
    fresh = tiny_cmt(dataclasses.replace(SMALL, train_encoder=False), seed=1)
    fresh.load_state_dict(kept, strict=False)
    assert not same(snapshot(model), snapshot(fresh))             # seed 1's encoders differ: only they are not kept
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in kept.items())
