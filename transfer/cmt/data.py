"""Data for CMT: a synthetic stream of facts about invented entities, and batch collation.

Ours (the paper evaluates on StreamingQA, SQuAD and ArchivalQA; this generator is for controlled
tests and quick runs, like StreamingQA's setting of documents that arrive over time and questions
asked later):

* `synthetic_facts` — documents, each about one invented entity (a name built from random
  syllables), stating ``facts_per_document`` facts drawn from four kinds: birthplace (an invented
  town), founding year (a random year), occupation (a list of 24), closest friend (another
  invented name). Every question asks for one stated fact; invented names and random years make
  the answer unguessable without the document (occupations are 1-in-24 at chance). Names are
  unique across the stream, so each question has exactly one source document.
  ``answers="closed"`` keeps the entities invented but draws towns and friends from fixed lists of
  real words (`TOWNS`, `FRIENDS`; 32 each): still unguessable without the document (1 in 32), but
  the memory has to carry a choice among words the LM knows rather than spell an unseen string —
  learnable in a CPU-sized training budget (ours; MAC trains its memory for 50 epochs of StreamingQA).
* `squad_stream` — the same records from a SQuAD v1.1 JSON file (by default the offline XQuAD-en
  subset of the SQuAD v1.1 dev set, ``<data_root>/text/qa/xquad_en_squad11_dev_subset/xquad.en.json``:
  240 paragraphs of 48 articles, 1,190 questions): a paragraph is a document, each of its questions
  a `QA` whose target is the first answer text (the others are kept as ``alternatives`` and scored
  against, as SQuAD's official script does), the article title its ``topic``. Order: the
  articles shuffled by ``seed``, and the paragraphs within each; an article's paragraphs stay
  together, so `split_documents` can keep training and stream articles disjoint.
* `FreshDocuments` — new synthetic documents for every training step, disjoint from the stream's and the
  probes' by construction (none of their invented names); the step alone fixes them.
* `split_documents` — a training split and a stream split with no document — and no topic —
  in common (CMT's memory modules train on the first, the second arrives as the stream).
* `stream_batches` — the documents in arrival order, cut into batches of documents.
* `word_tokenizer` — a word-level `transformers` fast tokenizer built from a corpus (tests and
  quick runs with tiny random models; no downloads).
* `PromptFormat` — how a question (and, for the RAG baseline, retrieved documents) becomes the LM's
  prompt: ``plain`` is ``QUESTION_TEMPLATE`` (MAC's format for base LMs); ``chat`` wraps the same
  question in the LM tokenizer's chat template with a one-line instruction (ours: an instruct LM
  such as SmolLM2-Instruct, given the plain format, mostly ends its turn at once).
* `collate` — tokenises a batch of documents and their questions for both the memory encoder's
  tokenizer and the frozen LM's tokenizer (`CMTBatch`). LM-side rows are left padded (generation
  needs it); QA labels cover the answer and the end-of-sequence token only; document labels cover
  every document token (for the memory-aware term).
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

QUESTION_TEMPLATE = "Question: {question}\nAnswer:"
_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "kr", "th", "qu", "sh")
_VOWELS = ("a", "e", "i", "o", "u", "ae", "io", "ou")
_CODAS = ("", "", "n", "r", "l", "s", "th", "nd", "x")
OCCUPATIONS = ("glassmaker", "astronomer", "beekeeper", "cartographer", "blacksmith", "violinist", "tailor",
               "lighthouse keeper", "botanist", "clockmaker", "fisher", "weaver", "potter", "librarian",
               "brewer", "shipwright", "falconer", "surveyor", "printer", "chemist", "archivist", "sculptor",
               "miner", "engraver")

TOWNS = ("Oxford", "Bristol", "Lisbon", "Porto", "Vienna", "Salzburg", "Geneva", "Zurich", "Florence", "Venice",
         "Seville", "Valencia", "Lyon", "Marseille", "Dublin", "Cork", "Krakow", "Prague", "Bergen", "Oslo",
         "Helsinki", "Tallinn", "Riga", "Munich", "Hamburg", "Bologna", "Naples", "Antwerp", "Ghent", "Utrecht",
         "Aarhus", "Malmo")
FRIENDS = ("Anna", "Peter", "Maria", "John", "Laura", "David", "Emma", "Thomas", "Sarah", "Daniel", "Julia",
           "Michael", "Clara", "Robert", "Alice", "George", "Helen", "Oliver", "Sophie", "Henry", "Lucy", "Samuel",
           "Grace", "Victor", "Irene", "Martin", "Nora", "Felix", "Ruth", "Oscar", "Eva", "Simon")
ANSWER_VOCABULARIES = ("invented", "closed")


@dataclass(frozen=True)
class QA:
    question: str
    answer: str                     # the answer trained on (SQuAD: the first annotator's)
    doc_id: str
    alternatives: tuple[str, ...] = ()   # other accepted answers (SQuAD dev: the other annotators'); scored, not trained

    @property
    def accepted(self) -> tuple[str, ...]:
        """Every answer a prediction is scored against (EM/F1 take the best, as SQuAD's official script does)."""
        return (self.answer, *self.alternatives)


@dataclass(frozen=True)
class Document:
    doc_id: str
    text: str
    qas: tuple[QA, ...]
    topic: str = ""          # documents sharing a topic (a SQuAD article) stay on one side of a split


def _word(rng: np.random.Generator, syllables: int) -> str:
    parts = [str(rng.choice(_ONSETS)) + str(rng.choice(_VOWELS)) + str(rng.choice(_CODAS))
             for _ in range(syllables)]
    return "".join(parts).capitalize()


def _fresh(rng: np.random.Generator, used: set[str], syllables: int) -> str:
    for _ in range(10_000):
        word = _word(rng, syllables)
        if word not in used:
            used.add(word)
            return word
    raise RuntimeError("synthetic_facts: ran out of unique invented names; lower n_documents")


def _check_synthetic(answers: str, facts_per_document: int) -> None:
    if answers not in ANSWER_VOCABULARIES:
        raise ValueError(f"answers must be one of {ANSWER_VOCABULARIES}, got {answers!r}")
    if not 1 <= facts_per_document <= 4:
        raise ValueError(f"facts_per_document must be in 1..4 (four fact kinds), got {facts_per_document}")


def _synthetic_document(rng: np.random.Generator, used: set[str], doc_id: str, facts_per_document: int,
                        answers: str) -> Document:
    entity = f"{_fresh(rng, used, 2)} {_fresh(rng, used, 2)}"
    if answers == "closed":
        town, friend = str(rng.choice(TOWNS)), str(rng.choice(FRIENDS))
    else:
        town, friend = _fresh(rng, used, 3), _fresh(rng, used, 2)
    year = str(int(rng.integers(1500, 2000)))
    job = str(rng.choice(OCCUPATIONS))
    facts = [
        (f"{entity} was born in the town of {town}.", f"In which town was {entity} born?", town),
        (f"In {year}, {entity} founded a small workshop.", f"In which year did {entity} found a workshop?",
         year),
        (f"{entity} works as a {job}.", f"What does {entity} work as?", job),
        (f"The closest friend of {entity} is {friend}.", f"Who is the closest friend of {entity}?", friend),
    ]
    chosen = [facts[j] for j in sorted(rng.choice(4, size=facts_per_document, replace=False))]
    text = " ".join(sentence for sentence, _, _ in chosen)
    return Document(doc_id, text, tuple(QA(q, a, doc_id) for _, q, a in chosen))


def synthetic_facts(n_documents: int, *, seed: int = 0, facts_per_document: int = 3,
                    answers: str = "invented") -> list[Document]:
    """``n_documents`` documents about distinct invented entities, with one question per fact; ``answers``:
    ``invented`` towns and friends, or ``closed`` (drawn from `TOWNS` and `FRIENDS`). The documents are a
    sequence: the first n of a longer call are the n of a shorter one."""
    if n_documents < 1:
        raise ValueError(f"n_documents must be >= 1, got {n_documents}")
    _check_synthetic(answers, facts_per_document)
    rng = np.random.default_rng(seed)
    used: set[str] = set()
    return [_synthetic_document(rng, used, f"doc-{seed}-{i:06d}", facts_per_document, answers)
            for i in range(n_documents)]


def capitalised_words(documents: Sequence[Document]) -> set[str]:
    """Every capitalised word of the documents' texts (their invented names among them)."""
    return {word.strip(".,?!") for doc in documents for word in doc.text.split() if word[:1].isupper()}


class FreshDocuments:
    """Training documents drawn anew at every step (issue #30: memorising a fixed pool is then impossible,
    reading is the only way to lower the QA loss).

    Step ``s``'s documents come from a generator seeded with ``(seed, s)`` — so a resumed run needs only the
    step to continue, and any step can be regenerated — and no invented word of them is in ``reserved``
    (the capitalised words of the stream's and probes' documents): disjoint by construction, every entity
    name is drawn until it avoids them. Two different steps may (rarely) reuse one name; with ~2·10^6
    two-syllable names and two per entity, an entity repeats with probability ~10^-12 per pair of documents.
    """

    def __init__(self, reserved: set[str], *, seed: int, batch_documents: int, facts_per_document: int = 3,
                 answers: str = "closed"):
        if batch_documents < 1:
            raise ValueError(f"FreshDocuments: batch_documents must be >= 1, got {batch_documents}")
        _check_synthetic(answers, facts_per_document)
        self.reserved = frozenset(reserved)
        self.seed, self.batch_documents = seed, batch_documents
        self.facts_per_document, self.answers = facts_per_document, answers

    def __call__(self, step: int, facts_per_document: int | None = None) -> list[Document]:
        """Step ``step``'s documents (``facts_per_document``: this call's, e.g. a curriculum's 1-fact stage)."""
        facts = facts_per_document or self.facts_per_document
        _check_synthetic(self.answers, facts)
        rng = np.random.default_rng([self.seed, 30_001, step])
        used = set(self.reserved)
        docs = [_synthetic_document(rng, used, f"fresh-{self.seed}-{step}-{j}", facts, self.answers)
                for j in range(self.batch_documents)]
        clash = capitalised_words(docs) & self.reserved - set(TOWNS) - set(FRIENDS) - {"In", "The"}
        if clash:
            raise RuntimeError(f"FreshDocuments: step {step} reused reserved names {sorted(clash)[:3]}")
        return docs


SQUAD_FOLDER = Path("text") / "qa" / "xquad_en_squad11_dev_subset"
SQUAD_FILE = "xquad.en.json"


def squad_path(data_root: str | os.PathLike | None = None) -> Path:
    """The offline SQuAD JSON under ``data_root`` (else $CLSUITE_DATA_ROOT, else ./data).

    ``data_root`` may be the folder that holds ``text/``, ``text/`` itself, or the dataset folder.
    """
    from cl.datafiles import DATA_ROOT_ENV, DataNotFoundError, resolve_data_root

    root = resolve_data_root(data_root)
    tried = [root / SQUAD_FOLDER / SQUAD_FILE, root / SQUAD_FOLDER.relative_to("text") / SQUAD_FILE,
             root / SQUAD_FILE]
    for candidate in tried:
        if candidate.is_file():
            return candidate
    raise DataNotFoundError(
        f"transfer.data_root: the SQuAD file {SQUAD_FOLDER / SQUAD_FILE} is not under {root.resolve()} "
        f"(looked for {tried[0].resolve()}). Pass --data-root to the benchmark, or set transfer.data_root "
        f"(or ${DATA_ROOT_ENV}) to the folder that holds text/qa/ — on this project's machines "
        "../shared/data; elsewhere any SQuAD v1.1 JSON file given to squad_stream(path) works.")


def squad_stream(path: str | os.PathLike | None = None, *, data_root: str | os.PathLike | None = None,
                 seed: int | None = 0, max_documents: int | None = None) -> list[Document]:
    """SQuAD v1.1 JSON → documents (paragraphs) with their questions; target = the first answer text,
    the other distinct answers kept as `QA.alternatives`.

    ``path``: the JSON file (default: `squad_path(data_root)`). ``seed``: shuffles the articles,
    and the paragraphs inside each, deterministically (``None`` keeps the file's order); an
    article's paragraphs stay contiguous. ``max_documents``: keep the first N after shuffling.
    Questions without an answer (SQuAD 2.0's unanswerable ones) are dropped, and so are
    paragraphs left without questions. Document ids are ``squad-<article>-<paragraph>`` by the
    file's order, whatever the shuffling.
    """
    from cl.datafiles import DataNotFoundError

    if max_documents is not None and max_documents < 1:
        raise ValueError(f"squad_stream: max_documents must be >= 1 or None (all), got {max_documents}")
    if path is None:
        path = squad_path(data_root)
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataNotFoundError(f"squad_stream: file {path.resolve()} does not exist; give the path of a SQuAD "
                                "v1.1 JSON file, or leave path out and set transfer.data_root / --data-root / "
                                "$CLSUITE_DATA_ROOT to the folder that holds text/qa/")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a SQuAD JSON file ({error})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("data"), list):
        raise ValueError(f"{path}: not SQuAD v1.1 JSON: expected an object with a 'data' list of articles")

    articles: list[list[Document]] = []
    for a, article in enumerate(raw["data"]):
        where = f"{path}: data[{a}]"
        if not isinstance(article, dict) or not isinstance(article.get("paragraphs"), list):
            raise ValueError(f"{where} has no 'paragraphs' list (SQuAD v1.1 layout)")
        title = str(article.get("title") or f"article-{a}")
        docs = []
        for p, paragraph in enumerate(article["paragraphs"]):
            if not isinstance(paragraph, dict) or not isinstance(paragraph.get("context"), str) \
                    or not isinstance(paragraph.get("qas"), list):
                raise ValueError(f"{where}.paragraphs[{p}] needs a 'context' string and a 'qas' list")
            doc_id = f"squad-{a:03d}-{p:02d}"
            qas = []
            for q, item in enumerate(paragraph["qas"]):
                if not isinstance(item, dict) or not isinstance(item.get("question"), str):
                    raise ValueError(f"{where}.paragraphs[{p}].qas[{q}] has no 'question' string")
                answers = item.get("answers") or []
                if item.get("is_impossible") or not answers:
                    continue
                if not isinstance(answers[0], dict) or not isinstance(answers[0].get("text"), str):
                    raise ValueError(f"{where}.paragraphs[{p}].qas[{q}].answers[0] has no 'text' string")
                texts = [a["text"].strip() for a in answers if isinstance(a, dict) and isinstance(a.get("text"), str)]
                others = tuple(dict.fromkeys(t for t in texts[1:] if t != texts[0]))
                qas.append(QA(item["question"].strip(), texts[0], doc_id, others))
            if qas:
                docs.append(Document(doc_id, paragraph["context"].strip(), tuple(qas), topic=title))
        if docs:
            articles.append(docs)
    if not articles:
        raise ValueError(f"{path}: no paragraph with an answered question")

    if seed is not None:
        rng = np.random.default_rng(seed)
        articles = [articles[i] for i in rng.permutation(len(articles))]
        articles = [[docs[i] for i in rng.permutation(len(docs))] for docs in articles]
    documents = [doc for docs in articles for doc in docs]
    return documents if max_documents is None else documents[:max_documents]


def split_documents(documents: Sequence[Document], n_train: int, n_stream: int
                    ) -> tuple[list[Document], list[Document]]:
    """(training split, stream split): the first ``n_train`` documents, then the next ``n_stream`` ones
    whose topic none of the training documents has (an empty topic is a topic of its own).

    Raises ``ValueError`` when too few documents are left for the stream.
    """
    if n_train < 1 or n_stream < 1:
        raise ValueError(f"split_documents: n_train and n_stream must be >= 1, got {n_train}, {n_stream}")
    if n_train >= len(documents):
        raise ValueError(f"split_documents: {n_train} training documents leave none of the {len(documents)} "
                         "for the stream")
    train = list(documents[:n_train])
    taken = {d.topic for d in train if d.topic}
    rest = [d for d in documents[n_train:] if not d.topic or d.topic not in taken]
    if len(rest) < n_stream:
        raise ValueError(f"split_documents: {n_stream} stream documents asked for, but only {len(rest)} of the "
                         f"{len(documents)} are left after {n_train} training documents (documents sharing a topic "
                         "with the training split are skipped)")
    return train, rest[:n_stream]


def stream_batches(documents: Sequence[Document], batch_size: int) -> Iterator[list[Document]]:
    """The documents in arrival order, ``batch_size`` at a time (the last batch may be smaller)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, len(documents), batch_size):
        yield list(documents[start:start + batch_size])


def word_tokenizer(texts: Sequence[str]):
    """A word-level fast tokenizer over the words and punctuation of ``texts`` (+ [PAD] [UNK] [BOS] [EOS])."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]
    pre = pre_tokenizers.Whitespace()
    words = sorted({piece for text in texts for piece, _ in pre.pre_tokenize_str(text)})
    vocab = {token: i for i, token in enumerate(specials + words)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre
    core.decoder = decoders.WordPiece(prefix="##")     # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]",
                                   bos_token="[BOS]", eos_token="[EOS]")


@dataclass(frozen=True)
class PromptFormat:
    """A question (and optional retrieved context) → the LM's prompt text, and what precedes the answer.

    ``chat_tokenizer=None``: ``[context + blank line +] QUESTION_TEMPLATE``, answer after a space.
    Otherwise the tokenizer's chat template with one user turn — ``[Context: … +] instruction +
    Question: …`` — and the generation prompt; the answer starts the assistant turn.

    ``demonstrations``: solved examples ``(context, question, answer)`` shown first, each laid out
    exactly as the real question (with its context only when the real question has one; as earlier
    user/assistant turns in the chat format), so an LM that was never trained on the format sees
    what an answer looks like (few-shot prompting).
    """
    chat_tokenizer: object | None = None
    instruction: str = "Answer with a short phrase only."
    demonstrations: tuple[tuple[str, str, str], ...] = ()

    def _plain(self, question: str, context: str | None) -> str:
        text = QUESTION_TEMPLATE.format(question=question)
        return text if not context else f"{context}\n\n{text}"

    def _user(self, question: str, context: str | None) -> str:
        return (f"Context:\n{context}\n\n" if context else "") + f"{self.instruction}\nQuestion: {question}"

    def __call__(self, question: str, context: str | None = None) -> str:
        shown = [(c if context else None, q, a) for c, q, a in self.demonstrations]
        if self.chat_tokenizer is None:
            shots = "".join(f"{self._plain(q, c)} {a}\n\n" for c, q, a in shown)
            return shots + self._plain(question, context)
        if getattr(self.chat_tokenizer, "chat_template", None) is None:
            raise ValueError(f"{type(self.chat_tokenizer).__name__} has no chat template: use the plain prompt")
        turns = [turn for c, q, a in shown for turn in ({"role": "user", "content": self._user(q, c)},
                                                         {"role": "assistant", "content": a})]
        turns.append({"role": "user", "content": self._user(question, context)})
        return self.chat_tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)

    @property
    def answer_prefix(self) -> str:
        return " " if self.chat_tokenizer is None else ""


@dataclass
class CMTBatch:
    """One training/evaluation batch: B documents and Q questions about them.

    ``doc_index[q]`` is the row (0..B-1) of question q's source document. ``*_enc_*`` use the memory
    encoder's tokenizer; ``*_lm_*`` the frozen LM's (left padded; labels -100 where not scored).
    """
    doc_ids: list[str]
    doc_enc_ids: torch.Tensor
    doc_enc_mask: torch.Tensor
    q_enc_ids: torch.Tensor
    q_enc_mask: torch.Tensor
    doc_lm_ids: torch.Tensor
    doc_lm_mask: torch.Tensor
    doc_lm_labels: torch.Tensor
    qa_lm_ids: torch.Tensor
    qa_lm_mask: torch.Tensor
    qa_lm_labels: torch.Tensor
    prompt_lm_ids: torch.Tensor
    prompt_lm_mask: torch.Tensor
    doc_index: torch.Tensor
    answers: list[str]
    questions: list[str] = field(default_factory=list)

    def to(self, device: torch.device | str) -> CMTBatch:
        """A copy with every tensor on ``device``."""
        moved = {name: value.to(device) if isinstance(value, torch.Tensor) else value
                 for name, value in vars(self).items()}
        return CMTBatch(**moved)


def _left_pad(rows: list[list[int]], labels: list[list[int]], pad: int) -> tuple[torch.Tensor, ...]:
    width = max(map(len, rows))
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], dtype=torch.long)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], dtype=torch.long)
    target = torch.tensor([[-100] * (width - len(r)) + t for r, t in zip(rows, labels)], dtype=torch.long)
    return ids, mask, target


def lm_special_ids(tokenizer) -> tuple[int, int]:
    """(end-of-sequence id, padding id) of an LM tokenizer, with a clear error when it has no EOS."""
    eos = tokenizer.eos_token_id
    if eos is None:
        eos = tokenizer.sep_token_id
    if eos is None:
        raise ValueError(f"{type(tokenizer).__name__} has neither eos_token nor sep_token: set "
                         "tokenizer.eos_token to the LM's end-of-sequence token")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    return int(eos), int(pad)


def collate(documents: Sequence[Document], enc_tokenizer, lm_tokenizer, *, max_doc_tokens: int = 256,
            max_question_tokens: int = 64, max_answer_tokens: int = 16,
            prompt: PromptFormat | None = None) -> CMTBatch:
    """Tokenise ``documents`` and all their questions into a `CMTBatch` (``prompt``: plain by default)."""
    prompt = prompt or PromptFormat()
    if not documents:
        raise ValueError("collate: got no documents")
    eos, pad = lm_special_ids(lm_tokenizer)
    qas = [qa for doc in documents for qa in doc.qas]
    if not qas:
        raise ValueError("collate: the documents carry no questions (Document.qas is empty for all)")
    row_of = {doc.doc_id: i for i, doc in enumerate(documents)}
    if len(row_of) != len(documents):
        raise ValueError("collate: duplicate doc_id in one batch; document ids must be unique")

    docs_enc = enc_tokenizer([d.text for d in documents], padding=True, truncation=True,
                             max_length=max_doc_tokens, return_tensors="pt")
    qs_enc = enc_tokenizer([qa.question for qa in qas], padding=True, truncation=True,
                           max_length=max_question_tokens, return_tensors="pt")

    def ids(text: str) -> list[int]:
        return lm_tokenizer(text, add_special_tokens=False)["input_ids"]

    doc_rows = [ids(d.text)[:max_doc_tokens - 1] + [eos] for d in documents]
    doc_ids, doc_mask, doc_labels = _left_pad(doc_rows, doc_rows, pad)
    prompts = [ids(prompt(qa.question))[-max_question_tokens:] for qa in qas]
    answers = [ids(prompt.answer_prefix + qa.answer)[:max_answer_tokens] + [eos] for qa in qas]
    qa_ids, qa_mask, qa_labels = _left_pad([p + a for p, a in zip(prompts, answers)],
                                           [[-100] * len(p) + a for p, a in zip(prompts, answers)], pad)
    prompt_ids, prompt_mask, _ = _left_pad(prompts, prompts, pad)
    return CMTBatch(
        doc_ids=[d.doc_id for d in documents],
        doc_enc_ids=docs_enc["input_ids"], doc_enc_mask=docs_enc["attention_mask"],
        q_enc_ids=qs_enc["input_ids"], q_enc_mask=qs_enc["attention_mask"],
        doc_lm_ids=doc_ids, doc_lm_mask=doc_mask, doc_lm_labels=doc_labels,
        qa_lm_ids=qa_ids, qa_lm_mask=qa_mask, qa_lm_labels=qa_labels,
        prompt_lm_ids=prompt_ids, prompt_lm_mask=prompt_mask,
        doc_index=torch.tensor([row_of[qa.doc_id] for qa in qas], dtype=torch.long),
        answers=[qa.answer for qa in qas],
        questions=[qa.question for qa in qas],
    )
