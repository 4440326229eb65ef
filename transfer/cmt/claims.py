"""CMT's (Li et al., AAAI 2025), against MAC and the other baselines, paper claims next to our measurements: what
`clsuite report --reproductions` renders from the archived runs (registered in `cl.registry.REPRODUCTIONS`; the
benchmark script prints the same comparisons at full detail)."""
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
