"""The registered `cmt` experiment and its baselines: end to end on tiny random models, SQuAD loading, the frozen LM."""
import json

import pytest
import torch

from cl.errors import ConfigError
from tests.conftest import SHARED_DATA
from transfer.cmt.params import CMTTransferParams
from transfer.cmt.data import QUESTION_TEMPLATE, Document, split_documents, squad_stream, synthetic_facts

pytest.importorskip("transformers")

from cl.registry import TRANSFERS  # noqa: E402
from cl.tracking import NullRunLog  # noqa: E402
from cl.transfer_run import TransferContext  # noqa: E402
from transfer.cmt import experiment as cmt_transfer  # noqa: E402
from transfer.cmt.baselines import (ClosedBook, CMTMemory, Harness, OnlineFineTuning, RetrievalInContext,  # noqa: E402
                                    answer_all, evaluate, score)
from transfer.cmt.experiment import FrozenLMChanged, build_lm, checkpoint_batches, lm_fingerprint  # noqa: E402

SMOKE = dict(TRANSFERS.get("cmt").smoke_options)


pytestmark = pytest.mark.usefixtures("one_thread")


class RecordingLog(NullRunLog):
    def __init__(self):
        self.metrics, self.artifacts, self.tags = [], {}, {}

    def log_metrics(self, metrics, step=None):
        self.metrics.append((step, dict(metrics)))

    def log_artifact(self, path, data):
        self.artifacts[path] = data

    def set_tags(self, tags):
        self.tags.update(tags)

    def history(self, name):
        return [(step, m[name]) for step, m in self.metrics if name in m]


def run_direct(tmp_path, **options):
    params = CMTTransferParams(**{**SMOKE, **options})
    log = RecordingLog()
    ctx = TransferContext(runlog=log, train=None, device=torch.device("cpu"), seed=0)
    return cmt_transfer.run(ctx, params), log, params


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CLSUITE_CACHE", str(tmp_path / "cache"))


# --------------------------------------------------------------------------- end to end

def test_cmt_runs_end_to_end_into_a_real_mlflow_store(shared_store, cache):
    from mlflow import MlflowClient

    from cl.config import RunConfig
    from cl.runner import run

    cfg = RunConfig.from_dict({"experiment": "cmt-e2e", "seed": 1,
                               "transfer": {"name": "cmt", **SMOKE, "stream_documents": 12,
                                            "checkpoint_every": 2, "warmup_steps": 1}})
    result = run(cfg, tracking_uri=shared_store)
    assert result.ok, result.reason
    client = MlflowClient(shared_store)
    logged = client.get_run(result.run_id)
    metrics = logged.data.metrics
    assert 0 <= metrics["final/em"] <= 100 and 0 <= metrics["final/f1"] <= 100
    k, width, key = SMOKE["num_memory_tokens"], 64, 64              # the tiny LM's and tiny encoder's widths
    assert metrics["memory/bank_bytes_per_document"] == (k * width + key) * 4
    assert metrics["memory/trainable_params"] > 0
    assert len(logged.data.tags["cmt.lm_sha256"]) == 64
    # 3 stream batches of 4: checkpoints after the first, every 2nd and the last
    steps = [p.step for p in client.get_metric_history(result.run_id, "retention/seen_f1")]
    assert steps == [1, 2, 3]
    seen = [p.value for p in client.get_metric_history(result.run_id, "retention/documents_seen")]
    assert seen == [4, 8, 12]
    paths = {a.path for a in client.list_artifacts(result.run_id, "cmt")}
    assert {"cmt/predictions.jsonl", "cmt/retention.csv", "cmt/bank"} <= paths
    bank = client.download_artifacts(result.run_id, "cmt/bank")
    from transfer.cmt.memory_bank import MemoryBank

    assert len(MemoryBank.load(bank)) == 12


@pytest.mark.parametrize("method", ["cmt", "mac", "closed_book", "rag", "online_ft"])
def test_every_method_answers_the_same_questions_and_scores_in_range(method, tmp_path, cache):
    out, log, params = run_direct(tmp_path, method=method, **({"top_k": None} if method == "mac" else {}))
    for key in ("em", "f1", "em_prefix", "first_batch_em", "first_batch_f1", "first_batch_f1_initial"):
        assert 0 <= out[key] <= 100, key
    records = [json.loads(line) for line in log.artifacts["cmt/predictions.jsonl"].decode().splitlines()]
    assert len(records) == out["eval_questions"] == SMOKE["eval_questions"]
    assert all(isinstance(r["prediction"], str) for r in records)
    # the same seeded question sample for every method
    stream = cmt_transfer.load_documents(params)[1]
    expected = cmt_transfer.evaluation_order(stream, params.data_seed)[:SMOKE["eval_questions"]]
    assert [r["question"] for r in records] == [qa.question for qa in expected]
    assert [s for s, _ in log.history("retention/seen_em")] == [1, 2]
    if method in ("cmt", "mac"):
        assert out["memory/bank_bytes_per_document"] == (SMOKE["num_memory_tokens"] * 64 + 64) * 4   # + the key
        assert 0 <= out["retrieval_top1"] <= 100 and out["train_loss"] > 0
        assert 0 <= out["train_docs_em"] <= out["train_docs_f1"] + 1e-9 <= 100 + 1e-9
        assert "cmt/bank/memory.safetensors" in log.artifacts
        assert log.history("train/total")
    elif method == "rag":
        text = sum(len(d.text.encode()) for d in stream) / len(stream)
        assert "train_docs_f1" not in out                     # only trained memory models are probed
        assert out["memory/bank_bytes_per_document"] == pytest.approx(text + 64 * 4)   # + the tiny encoder's fp32 embedding
        assert out["memory/trainable_params"] == 0
    elif method == "online_ft":
        assert out["memory/trainable_params"] == out["memory/model_copy_bytes"] / 4 > 0
        assert out["memory/bank_bytes_per_document"] == 0
    else:
        assert out["memory/trainable_params"] == out["memory/bank_bytes_per_document"] == 0


def test_mac_is_cmt_with_three_options_fixed():
    mac = CMTTransferParams(method="mac")
    assert (mac.top_k, mac.self_match_weight, mac.memory_aware_weight) == (None, 0.0, 0.0)
    assert CMTTransferParams.model_validate(mac.model_dump(mode="json")) == mac     # logged config round-trips
    with pytest.raises(ValueError, match="self_match_weight=0.5 contradicts method 'mac'"):
        CMTTransferParams(method="mac", self_match_weight=0.5)
    with pytest.raises(ValueError, match="top_k=4 contradicts"):
        CMTTransferParams(method="mac", top_k=4)
    assert CMTTransferParams(method="mac", memory_aware_weight=0).memory_aware_weight == 0.0
    with pytest.raises(ValueError, match="switch at least one"):
        CMTTransferParams(qa_weight=0, self_match_weight=0, memory_aware_weight=0)
    with pytest.raises(ValueError, match="train_batch_documents=1"):
        CMTTransferParams(train_batch_documents=1)
    with pytest.raises(ValueError, match="warmup_steps=300 must be below train_steps=300"):
        CMTTransferParams(warmup_steps=300)


def test_too_few_documents_for_the_stream_is_a_config_error_naming_the_fields(tmp_path):
    folder = tmp_path / "text" / "qa" / "xquad_en_squad11_dev_subset"
    folder.mkdir(parents=True)
    _squad_json(folder / "xquad.en.json")
    params = CMTTransferParams(dataset="squad", data_root=str(tmp_path), train_documents=4, stream_documents=100)
    params.preflight()                                                  # the file is there
    with pytest.raises(ConfigError, match=r"transfer.stream_documents.*only 9 of the 15"):
        cmt_transfer.load_documents(params)
    train, stream = cmt_transfer.load_documents(params.model_copy(update={"stream_documents": 9}))
    assert len(train) == 4 and len(stream) == 9


def test_checkpoints_are_the_first_every_nth_and_the_last_batch():
    assert checkpoint_batches(7, 3) == [1, 3, 6, 7]
    assert checkpoint_batches(1, 5) == [1]
    assert checkpoint_batches(4, 1) == [1, 2, 3, 4]


# --------------------------------------------------------------------------- the frozen LM

def test_the_run_raises_when_the_frozen_lm_changes(tmp_path, cache, monkeypatch):
    class Tampering(ClosedBook):
        def observe(self, documents):
            with torch.no_grad():
                self.lm.get_input_embeddings().weight[0, 0] += 1e-3

    monkeypatch.setattr(cmt_transfer, "build_method", lambda params, lm, harness, seed, fresh=None: Tampering(lm, harness))
    with pytest.raises(FrozenLMChanged, match="frozen LM's parameters changed"):
        run_direct(tmp_path, method="closed_book")


def tiny_setup(tmp_path, n=8):
    params = CMTTransferParams(**{**SMOKE, "train_documents": n, "stream_documents": n})
    train, stream = cmt_transfer.load_documents(params)
    lm, tokenizer = build_lm(params, train + stream, tmp_path)
    return params, train, stream, lm, Harness(tokenizer, tokenizer, max_new_tokens=3)


def test_online_fine_tuning_trains_a_copy_and_never_the_frozen_base_lm(tmp_path):
    _, train, stream, lm, harness = tiny_setup(tmp_path)
    base = lm_fingerprint(lm)
    method = OnlineFineTuning(lm, harness, lr=1e-2, steps_per_batch=2, qa_steps=2, qa_batch_documents=4)
    assert method.lm is not lm and not any(p.requires_grad for p in lm.parameters())
    assert {id(p) for p in method.optimizer.param_groups[0]["params"]}.isdisjoint(id(p) for p in lm.parameters())
    copy_before = lm_fingerprint(method.lm)
    assert copy_before == base
    assert len(method.fit(train)) == 2
    method.observe(stream[:4])
    assert lm_fingerprint(lm) == base                                  # the base: bit-identical
    assert lm_fingerprint(method.lm) != copy_before                    # the copy: trained
    result = evaluate(method, harness, [qa for d in stream[:4] for qa in d.qas], {d.doc_id: d for d in stream})
    assert 0 <= result.em <= 100 and 0 <= result.f1 <= 100


@pytest.mark.parametrize("warmup_steps, trains", [(0, True), (1, False)])
def test_cmt_warm_up_starts_from_lr_zero(tmp_path, warmup_steps, trains):
    params, train, _, lm, harness = tiny_setup(tmp_path)
    torch.manual_seed(0)
    model = cmt_transfer.build_method(params.model_copy(update={"method": "cmt"}), lm, harness, 0).model
    method = CMTMemory(model, harness, steps=1, batch_documents=4, lr=1e-2, warmup_steps=warmup_steps)
    before = [p.detach().clone() for p in model.trainable_parameters()]
    method.fit(train)
    moved = any(not torch.equal(a, p) for a, p in zip(before, model.trainable_parameters()))
    assert moved is trains          # with a warm-up the first step is taken at lr 0 (transformers' schedule)


def test_rag_puts_the_retrieved_documents_before_the_unchanged_question_prompt(tmp_path):
    _, _, stream, lm, harness = tiny_setup(tmp_path)
    tokenizer = harness.lm_tokenizer

    class PerfectRetriever:
        """Documents embed as one-hot vectors by stream position; every question points at stream[5]."""
        def __call__(self, texts):
            return torch.stack([torch.nn.functional.one_hot(torch.tensor([d.text for d in stream].index(t)),
                                                            len(stream)).float() for t in texts])

        def embed_tokens(self, ids, mask):
            return torch.nn.functional.one_hot(torch.full((ids.shape[0],), 5), len(stream)).float()

    rag = RetrievalInContext(lm, harness, PerfectRetriever(), top_k=2)
    rag.observe(stream[:4])
    rag.observe(stream[4:])
    captured = {}
    harness_generate = harness.generate

    def capture(model, ids, mask, prefix=None):
        captured["rows"] = [row[m.bool()].tolist() for row, m in zip(ids, mask)]
        return harness_generate(model, ids, mask, prefix)

    object.__setattr__(harness, "generate", capture)
    answers = rag.answer(harness.batch([stream[5]]))
    assert answers.top_doc_ids == [stream[5].doc_id] * len(stream[5].qas)
    chosen = rag.retrieve(torch.nn.functional.one_hot(torch.tensor([5]), len(stream)).float())[0].tolist()
    assert chosen[0] == 5 and len(chosen) == 2

    def words(text):
        return tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"])

    for row, qa in zip(captured["rows"], stream[5].qas):
        # the second document, then the best one nearest the question, then the closed-book prompt unchanged
        expected = " ".join([words(stream[chosen[1]].text), words(stream[5].text),
                             words(QUESTION_TEMPLATE.format(question=qa.question))])
        assert tokenizer.decode(row) == expected
    assert rag.bank_bytes_per_document() > 0


def test_chat_prompt_wraps_the_question_and_the_context_in_the_template():
    from transfer.cmt.data import PromptFormat

    class Template:
        chat_template = "x"

        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            assert not tokenize and add_generation_prompt and len(messages) == 1
            return f"<user>{messages[0]['content']}</user><assistant>"

    plain, chat = PromptFormat(), PromptFormat(Template())
    assert plain("Who?") == QUESTION_TEMPLATE.format(question="Who?") and plain.answer_prefix == " "
    assert plain("Who?", "Doc.") == "Doc.\n\n" + QUESTION_TEMPLATE.format(question="Who?")
    assert chat("Who?") == "<user>Answer with a short phrase only.\nQuestion: Who?</user><assistant>"
    assert chat("Who?", "Doc.").startswith("<user>Context:\nDoc.\n\nAnswer with") and chat.answer_prefix == ""
    with pytest.raises(ValueError, match="prompt 'chat' needs an LM with a chat template"):
        CMTTransferParams(prompt="chat", lm="tiny")


def test_demonstrations_are_laid_out_like_the_question_they_precede():
    from transfer.cmt.data import PromptFormat

    class Template:
        chat_template = "x"

        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"

    shots = (("Doc A.", "Who is A?", "Ann"), ("Doc B.", "Who is B?", "Bo"))
    plain = PromptFormat(demonstrations=shots)
    assert plain("Who?") == ("Question: Who is A?\nAnswer: Ann\n\nQuestion: Who is B?\nAnswer: Bo\n\n"
                             + QUESTION_TEMPLATE.format(question="Who?"))          # closed-book: no contexts
    assert plain("Who?", "Doc.") == ("Doc A.\n\nQuestion: Who is A?\nAnswer: Ann\n\n"
                                     "Doc B.\n\nQuestion: Who is B?\nAnswer: Bo\n\n"
                                     "Doc.\n\n" + QUESTION_TEMPLATE.format(question="Who?"))   # RAG: with theirs
    chat = PromptFormat(Template(), demonstrations=shots[:1])
    assert chat("Who?") == ("<user>Answer with a short phrase only.\nQuestion: Who is A?<assistant>Ann"
                            "<user>Answer with a short phrase only.\nQuestion: Who?<assistant>")


def test_every_method_answers_with_the_first_line_of_what_it_generated():
    from transfer.cmt.frozen_lm import answer_text

    class Lines:        # what SmolLM2 generated after a few-shot RAG prompt (measured)
        def decode(self, row, skip_special_tokens=True):
            return " Nortouthzul\n\nQuestion: In which town was"

    assert answer_text(Lines(), [1, 2]) == "Nortouthzul"


def test_fewshot_demonstrations_come_from_the_training_split_and_only_for_untrained_methods(tmp_path, cache):
    params = CMTTransferParams(**{**SMOKE, "method": "rag", "fewshot": 2})
    train, _ = cmt_transfer.load_documents(params)
    shots = cmt_transfer.demonstrations(params, train)
    assert shots == tuple((d.text, d.qas[0].question, d.qas[0].answer) for d in train[:2])
    assert cmt_transfer.demonstrations(CMTTransferParams(**{**SMOKE, "fewshot": 2}), train) == ()   # cmt: none
    with pytest.raises(ValueError, match="fewshot=6"):
        CMTTransferParams(**{**SMOKE, "method": "closed_book", "fewshot": 6, "train_documents": 4})
    result, _, _ = run_direct(tmp_path, method="closed_book", fewshot=1)
    assert 0 <= result["f1"] <= 100


def test_answer_all_keeps_the_order_asked(tmp_path):
    _, _, stream, lm, harness = tiny_setup(tmp_path)
    questions = [qa for d in stream for qa in d.qas][::-1]              # documents interleaved backwards
    records = answer_all(ClosedBook(lm, Harness(harness.enc_tokenizer, harness.lm_tokenizer, max_new_tokens=2,
                                                eval_batch_size=5)),
                         Harness(harness.enc_tokenizer, harness.lm_tokenizer, max_new_tokens=2, eval_batch_size=5),
                         questions, {d.doc_id: d for d in stream})
    assert [(r["doc_id"], r["question"]) for r in records] == [(q.doc_id, q.question) for q in questions]


# --------------------------------------------------------------------------- SQuAD loading

def _squad_json(path, articles=5):
    data = []
    for a in range(articles):
        paragraphs = []
        for p in range(3):
            qas = [{"id": f"{a}-{p}-0", "question": f"What is item {a}.{p}?",
                    "answers": [{"text": f" answer {a}.{p} ", "answer_start": 0}, {"text": "other", "answer_start": 1}]},
                   {"id": f"{a}-{p}-1", "question": "Unanswerable?", "answers": [], "is_impossible": True}]
            paragraphs.append({"context": f"Article {a} paragraph {p} says answer {a}.{p}.", "qas": qas})
        paragraphs.append({"context": "A paragraph without answerable questions.",
                           "qas": [{"id": "x", "question": "?", "answers": []}]})
        data.append({"title": f"Title {a}", "paragraphs": paragraphs})
    path.write_text(json.dumps({"version": "1.1", "data": data}))
    return path


def test_squad_loader_builds_documents_shuffles_by_seed_and_limits(tmp_path):
    path = _squad_json(tmp_path / "squad.json")
    plain = squad_stream(path, seed=None)
    assert len(plain) == 15 and plain[0].doc_id == "squad-000-00" and plain[0].topic == "Title 0"
    assert plain[0].text == "Article 0 paragraph 0 says answer 0.0."
    assert [(qa.question, qa.answer, qa.doc_id) for qa in plain[0].qas] == [("What is item 0.0?", "answer 0.0",
                                                                            "squad-000-00")]
    shuffled = squad_stream(path, seed=3)
    assert shuffled == squad_stream(path, seed=3) and sorted(shuffled, key=lambda d: d.doc_id) == plain
    assert any(squad_stream(path, seed=s) != shuffled for s in range(4, 10))
    topics = [d.topic for d in shuffled]                               # an article's paragraphs stay together
    assert all(topics[i] == topics[i - 1] for i in range(1, 15) if i % 3)
    assert squad_stream(path, seed=3, max_documents=4) == shuffled[:4]

    train, stream = split_documents(shuffled, 4, 6)                    # the 4th opens an article: skip its rest
    assert len(train) == 4 and len(stream) == 6
    assert not {d.topic for d in train} & {d.topic for d in stream}
    with pytest.raises(ValueError, match="only 9 of the 15 are left"):
        split_documents(shuffled, 4, 10)


def test_squad_loader_errors_name_the_path_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.delenv("CLSUITE_DATA_ROOT", raising=False)
    with pytest.raises(FileNotFoundError, match=r"--data-root.*CLSUITE_DATA_ROOT") as info:
        squad_stream(data_root=tmp_path)
    assert str(tmp_path) in str(info.value) and "xquad.en.json" in str(info.value)
    with pytest.raises(FileNotFoundError, match="missing.json does not exist"):
        squad_stream(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"data": [{"title": "t", "paragraphs": [{"qas": []}]}]}))
    with pytest.raises(ValueError, match=r"bad.json: data\[0\].paragraphs\[0\] needs a 'context'"):
        squad_stream(bad)
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json: not a SQuAD JSON file"):
        squad_stream(bad)
    with pytest.raises(ConfigError, match="transfer.data_root"):
        CMTTransferParams(dataset="squad", data_root=str(tmp_path)).preflight()


@pytest.mark.shared_data("text/qa")
def test_squad_loader_reads_the_offline_xquad_subset():
    documents = squad_stream(data_root=SHARED_DATA, seed=0)
    assert len(documents) == 240 and sum(len(d.qas) for d in documents) == 1190
    assert len({d.topic for d in documents}) == 48 and len({d.doc_id for d in documents}) == 240
    train, stream = split_documents(documents, 160, 75)
    assert not {d.topic for d in train} & {d.topic for d in stream}


def test_synthetic_documents_keep_an_empty_topic_and_split_by_position():
    docs = synthetic_facts(6, seed=1)
    assert all(d.topic == "" for d in docs) and Document("a", "b", ()).topic == ""
    train, stream = split_documents(docs, 2, 4)
    assert train == docs[:2] and stream == docs[2:]


def test_squad_alternative_answers_are_scored_not_trained(tmp_path):
    """As SQuAD's official script: a prediction scores its best over every annotator's answer."""
    path = tmp_path / "multi.json"
    path.write_text(json.dumps({"version": "1.1", "data": [{"title": "T", "paragraphs": [{
        "context": "The bridge opened in 1932 in Sydney.",
        "qas": [{"id": "q", "question": "When did the bridge open?",
                 "answers": [{"text": "1932", "answer_start": 20}, {"text": "in 1932", "answer_start": 17},
                             {"text": "1932", "answer_start": 20}]}]}]}]}))
    (doc,) = squad_stream(path, seed=None)
    (qa,) = doc.qas
    assert qa.answer == "1932" and qa.alternatives == ("in 1932",) and qa.accepted == ("1932", "in 1932")
    record = {"doc_id": doc.doc_id, "question": qa.question, "gold": qa.answer, "accepted": list(qa.accepted),
              "prediction": "in 1932", "top_doc_id": None}
    assert score([record]).em == 100.0                     # matches the second annotator exactly
    assert score([dict(record, accepted=None)]).em == 0.0   # against the first answer alone it would not
