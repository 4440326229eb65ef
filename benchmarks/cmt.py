"""CMT vs. MAC, closed-book, RAG and online fine-tuning: EM/F1 on streamed documents, with CMT's ablations.

Runs the grid `experiments/cmt_synthetic.yaml` (or another CMT grid, ``--grid``) through the suite's
launcher — finished cells are reused on a rerun; store: reports/cmt/mlflow.db. Every run trains (if
its method trains) on a split of documents disjoint from the stream, streams the rest in batches and
answers questions at checkpoints. Prints, per method and ablation (mean ± std over seeds):

* EM and F1 on the questions of all streamed documents after the whole stream (SQuAD normalisation;
  MAC's prefix EM beside them), and the retrieval top-1 (the share of questions whose best-scoring
  stored document is their own: CMT's scorer, RAG's embedding similarity);
* the first batch's F1 right after it arrived and at the end (retention over the stream);
* bytes stored per document (CMT/MAC: K·D fp32 memory vectors; RAG: raw text + one embedding) and
  trainable parameters;
* the reading probes (`transfer.cmt.probes`): QA loss and F1 on held-out documents with the right bank, a bank of
  other documents, an empty bank and the true document's memory fed directly;
* the retention curves: F1 on all documents seen so far, and on the first batch, after each
  checkpointed stream batch.

Then whether CMT beats MAC, what each CMT term adds (CMT − its ablation) — each verdict the reproduction
report's, "within noise" when the gap is under twice its standard error — and a RESULT line.

    python benchmarks/cmt.py --quick    # tiny random models, small sizes, 1 seed: a smoke run (numbers ≈ 0)
    python benchmarks/cmt.py            # the grid as published (SmolLM2 + MiniLM, 24 runs; ~25 min per trained run)
"""
from __future__ import annotations

import json

from benchmarks import gridbench
from cl.analysis import load_histories
from cl.reproductions import reproduction_for

REPRODUCTION = reproduction_for("experiments/cmt_synthetic.yaml")
ORDER = ("CMT", "CMT w/o self-matching", "CMT w/o memory-aware", "CMT w/o top-k", "MAC", "closed-book", "RAG",
         "online fine-tuning")
# --quick: the same cells on tiny random models (seconds each); only the pipeline is exercised
QUICK = {"transfer.lm": "tiny", "transfer.encoder": "tiny", "transfer.train_documents": 64,
         "transfer.stream_documents": 24, "transfer.stream_batch_documents": 8, "transfer.checkpoint_every": 2,
         "transfer.eval_questions": 24, "transfer.num_memory_tokens": 4, "transfer.ff_hidden": 64,
         "transfer.num_aggregator_blocks": 1, "transfer.train_steps": 30, "transfer.lr": 1.0e-3,
         "transfer.prompt": "plain", "transfer.max_new_tokens": 4, "transfer.probe_documents": 8,
         "transfer.probe_every": 10}


def _mean(values) -> float:
    values = [float(v) for v in values]
    return sum(values) / len(values) if values else float("nan")


def report(runs, spec, cells, args) -> None:
    methods = [m for m in ORDER if m in set(runs["method"])]

    columns = [("EM", "final/em", 1), ("F1", "final/f1", 1), ("prefix EM", "final/em_prefix", 1),
               ("retr. top-1", "final/retrieval_top1", 1), ("1st F1 start", "final/first_batch_f1_initial", 1),
               ("1st F1 end", "final/first_batch_f1", 1), ("train-doc F1", "final/train_docs_f1", 1),
               ("bytes/doc", "memory/bank_bytes_per_document", 0),
               ("trainable", "memory/trainable_params", 0)]
    print(f"{'method':<24}" + "".join(f"{name:>15}" for name, _, _ in columns) + f"{'runs':>6}{'run min':>9}")
    summary: dict[str, dict[str, float]] = {}
    for method in methods:
        rows = runs[runs["method"] == method]
        cells_ = [gridbench.mean_std(rows[key], digits) if key in rows else "—" for _, key, digits in columns]
        minutes = _mean((rows["final/train_seconds"] + rows["final/stream_seconds"] + rows["final/eval_seconds"]) / 60)
        print(f"{method:<24}" + "".join(f"{c:>15}" for c in cells_) + f"{len(rows):>6}{minutes:>9.1f}")
        summary[method] = {"em": _mean(rows["final/em"]), "f1": _mean(rows["final/f1"]),
                           "f1_std": float(rows["final/f1"].std()) if len(rows) > 1 else float("nan"),
                           "first_f1_drop": _mean(rows["final/first_batch_f1_drop"]),
                           "bytes_per_doc": _mean(rows["memory/bank_bytes_per_document"])}
    first = runs.iloc[0]
    print(f"(EM/F1 in %, SQuAD normalisation, over the questions of all {int(first['final/stream_documents'])} "
          f"streamed documents (at most {int(first['final/eval_questions'])} sampled); 1st F1: the first stream "
          "batch's questions right after it arrived and after the whole stream; bytes/doc: what the method stores "
          "per streamed document; train-doc F1: cmt/mac on questions about documents they trained on; "
          "trainable: parameters trained (online fine-tuning: the whole LM copy))")

    histories = load_histories(runs, ("retention/seen_f1", "retention/first_f1"), tracking_uri=args.tracking_uri)
    if not histories.empty:
        histories["method"] = histories["run_id"].map(dict(zip(runs["run_id"], runs["method"])))
        steps = sorted(histories["step"].unique())
        for metric, title in (("retention/seen_f1", "F1 on every document seen so far"),
                              ("retention/first_f1", "F1 on the first batch's documents")):
            print(f"\nretention — {title}, after stream batch:")
            print(f"{'method':<24}" + "".join(f"{int(s):>8}" for s in steps))
            here = histories[histories["metric"] == metric]
            for method in methods:
                means = here[here["method"] == method].groupby("step")["value"].mean()
                print(f"{method:<24}" + "".join(f"{means.get(s, float('nan')):>8.1f}" for s in steps))

    # reading probes (issue #30): held-out documents answered with the right bank, other documents only, an empty
    # bank, and the true document's memory fed directly
    conditions = ("right_bank", "other_bank", "empty_bank", "true_memory")
    probe_keys = [f"final/probe_{c}_{m}" for c in conditions for m in ("loss", "f1")]
    probed = [m for m in methods if all(k in runs for k in probe_keys)
              and runs[runs["method"] == m][probe_keys].notna().all(axis=None)]
    if probed:
        print("\nreading probes on held-out documents after training — QA loss / F1 (reading works when right ≫ "
              "other ≈ empty and true ≥ right):")
        print(f"{'method':<24}" + "".join(f"{c:>20}" for c in conditions))
        for method in probed:
            rows = runs[runs["method"] == method]
            print(f"{method:<24}" + "".join(
                f"{_mean(rows[f'final/probe_{c}_loss']):>11.3f} / {_mean(rows[f'final/probe_{c}_f1']):>5.1f}"
                for c in conditions))
            summary[method].update({f"probe_{c}_f1": _mean(rows[f"final/probe_{c}_f1"]) for c in conditions})

    # the verdicts are the reproduction report's (cl.reproductions), so the two never disagree
    claims = REPRODUCTION.claims(runs)
    print()
    if "CMT" in summary and "MAC" in summary:
        versus_mac = next(c for c in claims if c.claim.startswith("CMT beats MAC"))
        verdict = "within the seeds' noise" if versus_mac.within_noise else "beyond the seeds' noise"
        print(f"CMT vs. MAC: {summary['CMT']['f1'] - summary['MAC']['f1']:+.2f} F1, "
              f"{summary['CMT']['em'] - summary['MAC']['em']:+.2f} EM — {verdict} "
              "(paper, StreamingQA with Llama-2-7b: +4.19 F1, +4.07 EM)")
    beats = 0
    for claim in claims:
        print(f"[{claim.verdict}] {claim.claim} — {claim.ours}")
        beats |= int(claim.claim.startswith("CMT beats MAC") and claim.shown)
    seeds = int(runs["seed"].nunique())
    short = {"CMT": "cmt", "CMT w/o self-matching": "cmt_no_selfmatch", "CMT w/o memory-aware": "cmt_no_memaware",
             "CMT w/o top-k": "cmt_no_topk", "MAC": "mac", "closed-book": "closed_book", "RAG": "rag",
             "online fine-tuning": "online_ft"}
    result = {f"{short.get(m, m)}_{k}": round(v, 2) for m, d in summary.items() for k, v in d.items()
              if k in ("em", "f1") or (k == "bytes_per_doc" and m in ("CMT", "RAG"))
              or (k.startswith("probe_") and m in ("CMT", "MAC"))}
    probe = {f"probe_{c}_f1": round(summary.get("CMT", {}).get(f"probe_{c}_f1", float("nan")), 2)
             for c in ("right_bank", "empty_bank")}
    print(f"RESULT cmt_beats_mac={beats} seeds={seeds} quick={int(args.quick)} "
          + " ".join(f"{k}={v}" for k, v in probe.items()) + " " + json.dumps(result, separators=(",", ":")))


if __name__ == "__main__":
    gridbench.main(__doc__, store="cmt", grid="experiments/cmt_synthetic.yaml",
                   grid_help="a CMT grid file (default: experiments/cmt_synthetic.yaml)",
                   quick=lambda spec: gridbench.quick_variant(spec, QUICK),
                   quick_help="tiny random LM and encoder, 64 training / 24 streamed documents, 30 steps, 1 seed: "
                              "exercises every cell in minutes (answers ≈ 0)",
                   describe=REPRODUCTION.describe, report=report,
                   no_runs="cmt_beats_mac=0 probe_right_bank_f1=nan probe_empty_bank_f1=nan")
