"""CMT memory banks: frozen LM, append-only bank, top-k aggregation, self-matching, SQuAD EM/F1."""
import itertools
import json

import pytest
import torch

from transfer.cmt.data import (FRIENDS, QUESTION_TEMPLATE, TOWNS, collate, stream_batches, synthetic_facts,
                                word_tokenizer)
from transfer.cmt.metrics import exact_match, f1, normalize_answer, qa_scores

pytest.importorskip("transformers")
from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM  # noqa: E402

from transfer.cmt.frozen_lm import greedy_generate, lm_forward  # noqa: E402
from transfer.cmt.layers import PrefixGenerator  # noqa: E402
from transfer.cmt.memory_bank import MemoryBank  # noqa: E402
from transfer.cmt.model import (CMT, CMTConfig, make_optimizer, select_top_k, self_matching_loss,  # noqa: E402
                                train_steps)

DOCS = synthetic_facts(8, seed=0)
TOKENIZER = word_tokenizer([d.text for d in DOCS] + [QUESTION_TEMPLATE.format(question=qa.question) + " " + qa.answer
                                                     for d in DOCS for qa in d.qas])
SMALL = CMTConfig(num_memory_tokens=4, prefix_length=2, num_heads=4, num_aggregator_blocks=1, ff_hidden=64, top_k=2)


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_cmt(config=SMALL, seed=0):
    torch.manual_seed(seed)
    vocab = len(TOKENIZER)
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                      initializer_range=0.2,      # logits far from uniform: prefixes matter
                                      pad_token_id=TOKENIZER.pad_token_id, eos_token_id=TOKENIZER.eos_token_id,
                                      bos_token_id=TOKENIZER.bos_token_id))
    encoder = BertModel(BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=64, max_position_embeddings=128), add_pooling_layer=False)
    return CMT(lm, encoder, config)


def batch_of(docs):
    return collate(docs, TOKENIZER, TOKENIZER)


def snapshot(module):
    return {name: t.detach().clone() for name, t in module.state_dict().items()}


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- frozen LM, streaming

def test_base_lm_is_bit_identical_after_training_and_streaming():
    model = tiny_cmt()
    lm_before, trainable_before = snapshot(model.lm), snapshot(model.compressor)
    assert not any(p.requires_grad for p in model.lm.parameters())
    train_steps(model, [batch_of(DOCS[:4]), batch_of(DOCS[4:])] * 2, make_optimizer(model, lr=1e-2))
    assert not same(trainable_before, snapshot(model.compressor))        # training did happen
    assert not model.lm.training                                          # never dropped into train mode
    assert same(lm_before, snapshot(model.lm))

    everything = snapshot(model)
    bank = model.new_bank()
    for docs in stream_batches(DOCS, 3):
        model.write(bank, batch_of(docs))
    assert len(bank) == len(DOCS) and bank.doc_ids == tuple(d.doc_id for d in DOCS)
    assert not bank.memory.requires_grad
    assert same(everything, snapshot(model))                              # streaming changes nothing
    answers = model.answer(bank, batch_of(DOCS[:2]), TOKENIZER, max_new_tokens=3)
    assert len(answers) == sum(len(d.qas) for d in DOCS[:2]) and all(isinstance(a, str) for a in answers)
    assert same(everything, snapshot(model))


def test_optimizer_never_sees_lm_parameters():
    model = tiny_cmt()
    lm_ids = {id(p) for p in model.lm.parameters()}
    params = [p for group in make_optimizer(model).param_groups for p in group["params"]]
    assert params and not any(id(p) in lm_ids for p in params)
    assert not any(k.startswith("lm.") for k in model.trainable_state_dict())


# --------------------------------------------------------------------------- memory bank

def test_bank_save_load_round_trip(tmp_path):
    bank = MemoryBank(3, 5, 2)
    torch.manual_seed(0)
    bank.append(["a", "b"], torch.randn(2, 3, 5), torch.randn(2, 2))
    bank.append(["c"], torch.randn(1, 3, 5), torch.randn(1, 2))
    bank.save(tmp_path / "bank")
    back = MemoryBank.load(tmp_path / "bank")
    assert back.doc_ids == ("a", "b", "c")
    assert torch.equal(back.memory, bank.memory) and back.memory.dtype == torch.float32
    assert torch.equal(back.keys, bank.keys) and back.keys.shape == (3, 2)
    assert back.nbytes == 3 * (3 * 5 + 2) * 4 == bank.nbytes

    with pytest.raises(ValueError, match="already stored"):
        back.append(["b"], torch.zeros(1, 3, 5), torch.zeros(1, 2))
    with pytest.raises(ValueError, match=r"\(N, 3, 5\)"):
        back.append(["d"], torch.zeros(1, 4, 5), torch.zeros(1, 2))
    with pytest.raises(ValueError, match=r"keys must be \(1, 2\)"):
        back.append(["d"], torch.zeros(1, 3, 5), torch.zeros(1, 3))
    manifest = json.loads((tmp_path / "bank" / "manifest.json").read_text())
    manifest["size"] = 4
    (tmp_path / "bank" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="do not match the manifest"):
        MemoryBank.load(tmp_path / "bank")


def test_bank_stores_a_detached_copy():
    bank = MemoryBank(2, 4, 1)
    source = torch.ones(1, 2, 4, requires_grad=True)
    bank.append(["x"], source * 2, torch.zeros(1, 1))
    with torch.no_grad():
        source.add_(1.0)
    assert torch.equal(bank.memory, torch.full((1, 2, 4), 2.0)) and not bank.memory.requires_grad


# --------------------------------------------------------------------------- top-k aggregation

def test_top_k_of_the_whole_bank_equals_full_aggregation_and_smaller_k_uses_the_best_entries():
    model = tiny_cmt().eval()
    batch = batch_of(DOCS[:3])
    torch.manual_seed(1)
    memory = torch.randn(6, SMALL.num_memory_tokens, 32)
    keys = torch.randn(6, model.key_dim)
    with torch.no_grad():
        condition, query_keys = model.condition(batch.q_enc_ids, batch.q_enc_mask)
        full, scores, _ = model.aggregate(condition, query_keys, memory, keys, top_k=None)
        whole, _, index = model.aggregate(condition, query_keys, memory, keys, top_k=6)
        assert torch.allclose(whole, full, atol=1e-6)
        assert sorted(index[0].tolist()) == list(range(6))

        top2, _, index2 = model.aggregate(condition, query_keys, memory, keys, top_k=2)
        assert torch.equal(index2, scores.topk(2, dim=1).indices)
        for q in range(condition.shape[0]):                       # each question sees only its own 2 best
            alone, _, _ = model.aggregate(condition[q:q + 1], query_keys[q:q + 1], memory[index2[q]],
                                          keys[index2[q]], top_k=None)
            assert torch.allclose(top2[q:q + 1], alone, atol=1e-6)
        assert not torch.allclose(top2, full, atol=1e-4)          # fewer entries does change the result


def test_select_top_k_gathers_per_question():
    memory = torch.arange(4.0).view(4, 1, 1).expand(4, 2, 3)     # entry n is filled with n
    scores = torch.tensor([[0.0, 3.0, 1.0, 2.0], [5.0, 0.0, 0.0, 1.0]])
    chosen, index = select_top_k(scores, memory, 2)
    assert index.tolist() == [[1, 3], [0, 3]]
    assert chosen.shape == (2, 4, 3)
    assert chosen[0, :, 0].tolist() == [1, 1, 3, 3] and chosen[1, :, 0].tolist() == [0, 0, 3, 3]


# --------------------------------------------------------------------------- self-matching

def test_self_matching_loss_is_lowest_when_the_true_document_ranks_first():
    values = torch.tensor([2.0, 0.5, -0.3, -1.2, 1.1])
    target = torch.tensor([0])
    by_rank = {}
    for order in itertools.permutations(range(5)):
        scores = values[list(order)].unsqueeze(0)
        rank = int((scores[0] > scores[0, 0]).sum())               # 0 = the true document scores highest
        by_rank.setdefault(rank, set()).add(round(float(self_matching_loss(scores, target)), 6))
    assert all(len(v) == 1 for v in by_rank.values())             # only the true document's rank matters
    losses = [by_rank[r].pop() for r in range(5)]
    assert losses == sorted(losses) and len(set(losses)) == 5      # strictly worse as it ranks lower


def test_self_matching_term_trains_the_scorer_to_rank_the_source_first():
    config = CMTConfig(num_memory_tokens=4, num_heads=4, num_aggregator_blocks=1, ff_hidden=64, top_k=2,
                       qa_weight=0.0, memory_aware_weight=0.0)
    model = tiny_cmt(config)
    batch = batch_of(DOCS[:4])
    history = train_steps(model, [batch] * 25, make_optimizer(model, lr=3e-3))
    assert set(history[0]) == {"self_match", "total"}
    model.eval()
    with torch.no_grad():
        scores = model.scorer(model.condition(batch.q_enc_ids, batch.q_enc_mask)[1],
                              model.compress(batch.doc_enc_ids, batch.doc_enc_mask)[1])
    assert (scores.argmax(1) == batch.doc_index).float().mean() >= 0.9
    assert history[-1]["self_match"] < 0.5 * history[0]["self_match"]


def test_an_untrained_scorer_ranks_by_the_encoders_own_similarity():
    """Keys are the encoder's mean-pooled states and the scorer's maps start as the identity: before any
    training, scores are the cosine similarity of the two encoders' sentence embeddings (÷ temperature)."""
    model = tiny_cmt().eval()
    batch = batch_of(DOCS[:4])

    def mean_pooled(encoder, ids, mask):
        hidden = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        return (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)

    with torch.no_grad():
        scores = model.scorer(model.condition(batch.q_enc_ids, batch.q_enc_mask)[1],
                              model.compress(batch.doc_enc_ids, batch.doc_enc_mask)[1])
        q = torch.nn.functional.normalize(mean_pooled(model.question_encoder.encoder, batch.q_enc_ids,
                                                      batch.q_enc_mask), dim=-1)
        d = torch.nn.functional.normalize(mean_pooled(model.compressor.encoder, batch.doc_enc_ids,
                                                      batch.doc_enc_mask), dim=-1)
    assert torch.allclose(scores, q @ d.T / model.config.temperature, atol=1e-5)


# --------------------------------------------------------------------------- EM / F1

def test_em_and_f1_follow_squad_normalisation():
    assert normalize_answer("The  Eiffel Tower!") == "eiffel tower"
    assert normalize_answer("Theatre, anthem") == "theatre anthem"                 # articles only as words
    assert normalize_answer("A dog's life.") == "dogs life"
    assert exact_match("the Eiffel tower.", "Eiffel Tower") == 1.0
    assert exact_match("Eiffel Towers", "Eiffel Tower") == 0.0
    assert exact_match("Paris", ["London", "paris"]) == 1.0
    assert exact_match("Paris is nice", "Paris") == 0.0
    assert exact_match("Paris is nice", "Paris", prefix=True) == 1.0                # MAC's prefix match
    assert f1("the cat sat on the mat", "cat on mat") == pytest.approx(2 * 0.75 * 1.0 / 1.75)
    assert f1("x x y", "x y y") == pytest.approx(2 / 3)                             # clipped counts
    assert f1("an", "the") == 0.0 and f1("blue", "red") == 0.0
    assert f1("red car", ["blue car", "red car!"]) == 1.0
    assert qa_scores(["Paris", "blue car"], ["paris", "red car"]) == pytest.approx({"em": 50.0, "f1": 75.0})


# --------------------------------------------------------------------------- prefix mechanics

def test_prefix_run_is_invariant_to_left_padding_and_greedy_matches_transformers():
    model = tiny_cmt().eval()
    lm = model.lm
    long, short = TOKENIZER(DOCS[0].text)["input_ids"][:7], TOKENIZER(DOCS[1].text)["input_ids"][:4]
    pad = TOKENIZER.pad_token_id
    ids = torch.tensor([long, [pad] * 3 + short])
    mask = torch.tensor([[1] * 7, [0] * 3 + [1] * 4])
    torch.manual_seed(2)
    prefix = [(torch.randn(2, 2, 3, 8), torch.randn(2, 2, 3, 8)) for _ in range(2)]
    with torch.no_grad():
        padded = lm_forward(lm, prefix, ids, mask).logits
        alone = lm_forward(lm, [(k[1:], v[1:]) for k, v in prefix], torch.tensor([short]),
                           torch.ones(1, 4, dtype=torch.long)).logits
        plain = lm_forward(lm, None, ids, mask).logits
    assert torch.allclose(padded[1, 3:], alone[0], atol=1e-5)
    assert not torch.allclose(padded, plain, atol=1e-3)           # the prefix is attended to

    eos = TOKENIZER.eos_token_id
    ours = greedy_generate(lm, None, ids, mask, max_new_tokens=5, eos_token_id=eos)
    with torch.no_grad():
        theirs = lm.generate(input_ids=ids, attention_mask=mask, max_new_tokens=5, do_sample=False,
                             pad_token_id=pad, eos_token_id=eos)[:, ids.shape[1]:]
    for row, ref in zip(ours, theirs.tolist()):
        assert row == (ref[:ref.index(eos)] if eos in ref else ref)


def test_prefix_generator_spreads_memory_over_layers_like_mac_with_grouped_kv_heads():
    # SmolLM2-135M's attention shape (30 layers, 3 KV heads of 64) with K = 7 memory tokens: 120 slots
    gen = PrefixGenerator(dim=16, num_tokens=7, num_layers=30, prefix_length=2, kv_heads=3, head_dim=64,
                          ff_hidden=32)
    counts = torch.bincount(gen.slot_source, minlength=7).tolist()
    assert counts == [18] * (120 % 7) + [17] * (7 - 120 % 7)               # first S mod K tokens fill one more
    assert gen.slot_source.tolist() == sorted(gen.slot_source.tolist())    # consecutive slots
    prefix = gen(torch.randn(5, 7, 16))
    assert len(prefix) == 30 and all(k.shape == v.shape == (5, 3, 2, 64) for k, v in prefix)


# --------------------------------------------------------------------------- the three terms

def test_a_few_training_steps_on_synthetic_facts_reduce_every_loss_term():
    model = tiny_cmt()
    batch = batch_of(DOCS[:4])
    model.eval()
    with torch.no_grad():
        before = {k: float(v) for k, v in model.losses(batch).items()}
    assert set(before) == {"qa", "self_match", "memory_aware", "total"}
    train_steps(model, [batch] * 25, make_optimizer(model, lr=3e-3))
    model.eval()
    with torch.no_grad():
        after = {k: float(v) for k, v in model.losses(batch).items()}
    assert all(after[k] < 0.95 * before[k] for k in before), (before, after)
    assert after["total"] < 0.85 * before["total"], (before, after)


def test_loss_terms_switch_off_and_config_errors_name_the_field():
    model = tiny_cmt(CMTConfig(num_memory_tokens=4, num_heads=4, num_aggregator_blocks=1, ff_hidden=64,
                               self_match_weight=0.0, memory_aware_weight=0.0))
    assert set(model.losses(batch_of(DOCS[:2]))) == {"qa", "total"}
    with pytest.raises(ValueError, match="switch at least one"):
        CMTConfig(qa_weight=0, self_match_weight=0, memory_aware_weight=0)
    with pytest.raises(ValueError, match="CMTConfig.top_k"):
        CMTConfig(top_k=0)
    with pytest.raises(ValueError, match="CMTConfig.num_heads"):
        tiny_cmt(CMTConfig(num_heads=5))
    with pytest.raises(ValueError, match="bank is empty"):
        tiny_cmt().aggregate(torch.zeros(1, 4, 32), torch.zeros(1, 32), torch.zeros(0, 4, 32), torch.zeros(0, 32))


# --------------------------------------------------------------------------- synthetic facts

def test_synthetic_facts_are_unique_deterministic_and_answerable_only_from_their_document():
    docs = synthetic_facts(30, seed=3, facts_per_document=4)
    assert docs == synthetic_facts(30, seed=3, facts_per_document=4)
    assert docs != synthetic_facts(30, seed=4, facts_per_document=4)
    assert len({d.doc_id for d in docs}) == 30
    for doc in docs:
        assert len(doc.qas) == 4
        for qa in doc.qas:
            assert qa.doc_id == doc.doc_id and qa.answer in doc.text
            if qa.question.startswith(("In which town", "Who is")):            # invented names: one document only
                assert [d.doc_id for d in docs if qa.answer in d.text] == [doc.doc_id]
    batches = list(stream_batches(docs, 7))
    assert [len(b) for b in batches] == [7, 7, 7, 7, 2] and sum(batches, []) == docs
    with pytest.raises(ValueError, match="facts_per_document"):
        synthetic_facts(3, facts_per_document=5)


def test_closed_vocabulary_facts_draw_towns_and_friends_from_the_lists_and_keep_entities_invented():
    invented = synthetic_facts(40, seed=2, facts_per_document=4)
    closed = synthetic_facts(40, seed=2, facts_per_document=4, answers="closed")
    assert closed == synthetic_facts(40, seed=2, facts_per_document=4, answers="closed")
    by_kind = {"In which town": TOWNS, "Who is": FRIENDS}
    for doc in closed:
        for qa in doc.qas:
            assert qa.answer in doc.text
            for start, vocabulary in by_kind.items():
                if qa.question.startswith(start):
                    assert qa.answer in vocabulary
    entities = {d.qas[2].question.removeprefix("What does ").removesuffix(" work as?") for d in closed}
    assert len(entities) == 40 and not entities & set(FRIENDS)                    # every entity still unique
    towns = {qa.answer for d in invented for qa in d.qas if qa.question.startswith("In which town")}
    assert not towns & set(TOWNS)
    with pytest.raises(ValueError, match="answers must be one of"):
        synthetic_facts(3, answers="real")


