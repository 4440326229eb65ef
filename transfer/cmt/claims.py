"""CMT's (Li et al., AAAI 2025), against MAC and the other baselines, paper claims next to our measurements: what
`clsuite report --reproductions` renders from the archived runs (registered in `cl.registry.REPRODUCTIONS`; the
benchmark script prints the same comparisons at full detail). `READING` is the mechanism under every CMT claim —
do the memory methods answer from the bank at all? — from the reading probes of `transfer.cmt.probes`."""
from __future__ import annotations

import pandas as pd

from cl.reproductions import ClaimResult, Reproduction, difference, within_noise


CMT_BASELINES = {"mac": "MAC", "closed_book": "closed-book", "rag": "RAG", "online_ft": "online fine-tuning"}
CMT_ABLATIONS = (("self_match_weight", "self-matching"), ("memory_aware_weight", "memory-aware"))


def _cmt_describe(config) -> dict:
    """CMT, "CMT w/o <terms switched off>", or the baseline's name."""
    o = config.transfer.options
    method = o.get("method", "cmt")
    if method != "cmt":
        return {"method": CMT_BASELINES[method]}
    off = [name for key, name in CMT_ABLATIONS if not o.get(key, 1.0)]
    if o.get("top_k", 4) is None:
        off.append("top-k")
    return {"method": "CMT" if not off else "CMT w/o " + ", ".join(off)}


def _cmt_claims(runs: pd.DataFrame) -> list[ClaimResult]:
    by = {m: g for m, g in runs.groupby("method")}
    if "CMT" not in by:
        return []
    cmt = by["CMT"]["final/f1"]
    fewest = runs.get("final/eval_questions", pd.Series(dtype=float)).min()      # 64 in the published grid
    questions = int(fewest) if fewest == fewest else None

    def noise(x: pd.Series, y: pd.Series) -> bool:        # x, y in % of the questions
        return within_noise(x / 100, y / 100, items=questions)

    out = []
    if "closed-book" in by:
        text, gap = difference(cmt, by["closed-book"]["final/f1"], scale=1.0)
        out.append(ClaimResult("the memory bank gives the frozen LM knowledge it lacks (CMT F1 > closed-book)",
                               "premise of the paper: answers come from the stored documents", text, bool(gap > 0),
                               noise(cmt, by["closed-book"]["final/f1"])))
    if "MAC" in by:
        text, gap = difference(cmt, by["MAC"]["final/f1"], scale=1.0)
        out.append(ClaimResult("CMT beats MAC (F1 on streamed documents)",
                               "+4.19 F1 / +4.07 EM on StreamingQA (Llama-2-7b)", text, bool(gap > 0),
                               noise(cmt, by["MAC"]["final/f1"])))
    no_matching = by.get("CMT w/o self-matching")
    if no_matching is not None and "final/retrieval_top1" in runs:
        top1 = by["CMT"]["final/retrieval_top1"], no_matching["final/retrieval_top1"]
        text, gap = difference(*top1, scale=1.0)
        out.append(ClaimResult("self-matching ranks a question's own document first (retrieval top-1)",
                               "the mechanism the self-matching term is for (no number published)", text,
                               bool(gap > 0), noise(*top1)))
    for term in ("self-matching", "memory-aware", "top-k"):
        ablation = by.get(f"CMT w/o {term}")
        if ablation is not None:
            text, gap = difference(cmt, ablation["final/f1"], scale=1.0)
            out.append(ClaimResult(f"the {term} technique helps (CMT F1 ≥ CMT without it)",
                                   "each of the three techniques improves CMT (paper's ablation)", text,
                                   bool(gap >= 0), noise(cmt, ablation["final/f1"])))
    return out


REPRODUCTION = Reproduction(
    "CMT (Li et al., AAAI 2025): compressed document memories for a frozen LM",
    "experiments/cmt_synthetic.yaml",
    "StreamingQA, SQuAD and ArchivalQA; Llama-2-7b (and smaller LMs) frozen; compared with MAC",
    "synthetic streaming facts about invented entities, answers from closed lists (400 training documents, "
    "64 streamed in batches of 8); frozen SmolLM2-135M-Instruct, all-MiniLM-L6-v2 encoder (fine-tuned), "
    "K = 12, top-k 2, 200 steps at lr 3e-4; 3 seeds",
    "The paper's formulas are not public: the scorer, the self-matching (InfoNCE over the batch) and "
    "memory-aware (reconstruct the document from its memory) terms and the hard top-k are our reading; "
    "MAC's design fills the rest, with a soft-token compressor instead of T5 (transfer/cmt/model.py).",
    _cmt_describe, _cmt_claims, "benchmarks/cmt.py",
    notes=("At this scale the memory methods answer at closed-book level, even about their own training "
           "documents (benchmarks/cmt.py's train-doc F1): 200 steps do not teach the compressor → prefix path "
           "to read a document (the answers kept, CMT w/o top-k's seed 2: the right type, but 'violinist' for "
           "14 of 64 questions and 'John' for 13), while RAG with the same MiniLM and LM answers 78% of the "
           "questions. Self-matching does its job — the question's own document ranks first — but retrieval "
           "is not the bottleneck, so neither CMT's terms nor CMT against MAC move F1 beyond the noise of 3 "
           "seeds on 64 questions.",
           "Budget is not the missing piece: trained 5× longer (1,000 steps, seed 0; "
           "experiments/cmt_synthetic_budget.yaml), CMT answers 87.5% (F1) about its 400 training documents "
           "and 1.6% about the streamed ones — with 47 different, well-typed, wrong answers to 64 questions. "
           "More epochs store the training documents' facts in the 72M trained parameters instead of teaching "
           "the path to read; that needs many more distinct training documents (MAC trains on StreamingQA's "
           "training split), not more passes over 400."),
    position=100)


PROBE_CONDITIONS = (("right_bank", "right bank"), ("other_bank", "other bank"), ("empty_bank", "empty bank"),
                    ("true_memory", "true memory"))


def _reading_describe(config) -> dict:
    o = config.transfer.options
    questions = o.get("probe_documents", 16) * o.get("facts_per_document", 3)
    return {**_cmt_describe(config), "probe_questions": min(questions, o.get("eval_questions", questions))}


def _reading_claims(runs: pd.DataFrame) -> list[ClaimResult]:
    """Per memory method, the last probe (after training): the four conditions of `transfer.cmt.probes` compared
    on F1 (noise: seeds and the probe's questions) with the QA loss beside it, and whether a memory holds its own
    document at all."""
    out = []
    if "probe/right_bank_f1" not in runs:
        return out
    for method, group in runs.groupby("method"):
        questions = int(group["probe_questions"].min())

        def compare(a: str, b: str, claim: str, paper: str, at_least: bool = False) -> None:
            fa, fb = group[f"probe/{a}_f1"], group[f"probe/{b}_f1"]
            text, gap = difference(fa, fb, scale=1.0)
            loss = f"; QA loss {group[f'probe/{a}_loss'].mean():.3f} vs {group[f'probe/{b}_loss'].mean():.3f}"
            out.append(ClaimResult(claim, paper, f"F1 {text}{loss}", bool(gap >= 0 if at_least else gap > 0),
                                   within_noise(fa / 100, fb / 100, items=questions)))

        premise = "answers come from the compressed memories of the stream's documents (the paper's premise)"
        compare("right_bank", "other_bank", f"{method} reads the bank: right bank > a bank of other documents "
                f"(unseen documents, {questions} questions)", premise)
        compare("right_bank", "empty_bank", f"{method} reads the bank: right bank > no memory at all", premise)
        compare("true_memory", "right_bank", f"{method}: the true document's memory fed directly ≥ the retrieved "
                "bank (retrieval is not what fails)", "top-k retrieval finds the relevant memories", at_least=True)
        if "probe/memory_doc_loss_own" in group:
            own, other = group["probe/memory_doc_loss_own"], group["probe/memory_doc_loss_other"]
            none = group["probe/memory_doc_loss_none"]
            text, gap = difference(other, own, scale=1.0)
            out.append(ClaimResult(
                f"{method}'s memory holds its document: LM loss of a held-out document behind its own memory < "
                "behind another's", "the memory-aware term: a memory can reconstruct its document",
                f"{text.replace(' points', ' nats')} (other vs own; no prefix {none.mean():.3f})", bool(gap > 0)))
    return out


def _reading_details(runs: pd.DataFrame, tracking_uri: str | None) -> list[str]:
    """The probe curves (mean over seeds per probed step): QA loss / F1 per condition, then the document LM loss
    behind its own memory / another's / none."""
    from cl.analysis import load_histories

    metrics = [f"probe/{c}_{k}" for c, _ in PROBE_CONDITIONS for k in ("loss", "f1")] + \
        [f"probe/memory_doc_loss_{k}" for k in ("own", "other", "none")]
    histories = load_histories(runs, metrics, tracking_uri=tracking_uri)
    if histories.empty:
        return []
    histories = histories.merge(runs[["run_id", "method"]], on="run_id")
    lines = []
    for method, group in histories.groupby("method"):
        curve = group.groupby(["step", "metric"])["value"].mean().unstack("metric")
        seeds = group["run_id"].nunique()
        lines += [f"Reading probes of {method} during training (QA loss / F1 on held-out documents; mean of "
                  f"{seeds} run{'s' if seeds > 1 else ''}; document LM loss where measured):", "",
                  "| step | " + " | ".join(name for _, name in PROBE_CONDITIONS)
                  + " | doc LM loss own / other / none |",
                  "|---|" + "---|" * (len(PROBE_CONDITIONS) + 1)]
        for step, row in curve.iterrows():
            cells = [f"{row.get(f'probe/{c}_loss', float('nan')):.3f} / {row.get(f'probe/{c}_f1', float('nan')):.1f}"
                     for c, _ in PROBE_CONDITIONS]
            doc = [row.get(f"probe/memory_doc_loss_{k}") for k in ("own", "other", "none")]
            doc_text = " / ".join(f"{v:.2f}" for v in doc) if all(v == v and v is not None for v in doc) else "—"
            lines.append(f"| {int(step)} | " + " | ".join(cells) + f" | {doc_text} |")
        lines.append("")
    return lines[:-1]


READING = Reproduction(
    "CMT's reading probe (Li et al., AAAI 2025): does the memory path answer from the bank?",
    "experiments/cmt_reading.yaml",
    "StreamingQA / SQuAD: a frozen LM answers from compressed memories of streamed documents",
    "fresh synthetic documents at every step (never repeated, disjoint from the probes'), frozen MiniLM encoders, "
    "new modules at lr 3e-4, a 300-step curriculum (1-fact, then 3-fact documents answered from their own memory) "
    "then 300 steps of the normal objective; probes every 50 steps on 8 unseen documents (24 questions) with a "
    "bank of 8 others; 1 seed",
    "The probes are ours (issue #30): the paper reports end-task F1 only. Reading works when right bank ≫ other "
    "bank ≈ empty bank and true memory ≥ right bank.",
    _reading_describe, _reading_claims, "benchmarks/cmt_probe_checkpoint.py",
    details=_reading_details,
    notes=("CMT, seed 0, 600 steps (≈ 2.8 h of one core at 14–17 s a step, over three sittings: killed twice and "
           "resumed into the same MLflow run from its checkpoints). The memory holds its document: a held-out "
           "document's LM loss behind its own memory falls to 1.20 nats (behind another document's 1.83, with no "
           "prefix 4.13). The answers do not come from it: F1 stays at 0–12.5 in all four conditions at every "
           "probe (one question is 4.2 points), 4.2 on the stream's 48 questions and 9.4 on the training "
           "documents' — the answers have the right type (a town, a year, a first name) but not the document's. "
           "The QA loss shows reading beginning, in the direction it needs and at a size no answer shows yet: "
           "right bank below other bank at 11 of the 12 probes, below the empty bank at every probe after the "
           "curriculum (steps 350–600, by 0.008–0.056 nats; 0.051 at step 600), the true memory lowest. So "
           "the CMT claims below (cmt_synthetic) are not about reading, and this budget does not reach it.",
           "MAC, the same grid and budget (MAC's design: attention over the whole bank, no self-matching or "
           "memory-aware term; 600 steps in 1.0 h — 6 s a step against CMT's 14–17, which pays for the memory-aware "
           "term's document pass and the self-matching encodings): its memory helps the LM whatever document it "
           "holds, and does not hold its own. A bank lowers the QA loss against no memory from step 200 on (by "
           "0.29 nats at step 600), but the right bank is no better than a bank of other documents (below it at "
           "4 of 12 probes; 1.451 vs 1.441 at step 600); a held-out document's LM loss behind its own memory "
           "(4.58) is above the loss with no prefix at all (4.13). F1 stays at 0–12.5 in every condition, and "
           "the training has a spike at step 100 (QA loss 10.3 with a bank, 4.8 without). So neither memory "
           "reads at this budget; CMT's memory-aware term is what makes its memories document-specific, the "
           "only step towards reading either method shows.",),
    position=99)
