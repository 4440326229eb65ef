"""The reading probes on a CMT training checkpoint, while (or after) its run trains — with every answer printed.

A `cmt` run with ``train_data``/``probe_*`` options (e.g. experiments/cmt_reading.yaml) logs its probes as metrics;
this script loads the trainable modules from the run's latest training checkpoint (the file under
``$CLSUITE_CACHE/checkpoints/<config hash>/``), rebuilds the cell's frozen LM, encoders and held-out probe
documents exactly as the run does, and prints the probe table (`transfer.cmt.probes`), the document-reconstruction
losses and a sample of answers per condition — what the metric curves cannot show. Read-only: the checkpoint is
not modified and nothing is logged to MLflow. Prints a RESULT line.

    python benchmarks/cmt_probe_checkpoint.py experiments/cmt_reading.yaml [--checkpoint PATH] [--answers 6]
"""
from __future__ import annotations

import argparse
import io
import sys
from collections import defaultdict
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("grid", help="the grid file of the run (its first cell, or --cell)")
    parser.add_argument("--cell", type=int, default=0, help="index of the cell in the expanded grid")
    parser.add_argument("--checkpoint", help="the .ckpt file (default: the newest one of the cell's hash)")
    parser.add_argument("--answers", type=int, default=6, help="answers printed per condition")
    args = parser.parse_args()

    import torch

    from cl import checkpoint_file
    from cl.grid import expand, load_grid
    from cl.registry import TRANSFERS
    from cl.cache import cache_root
    from transfer.cmt import probes as reading
    from transfer.cmt.experiment import (build_harness, build_lm, build_method, demonstrations, fresh_documents,
                                         load_splits)

    cell = expand(load_grid(Path(args.grid)))[args.cell]
    params = TRANSFERS.get("cmt").params(**cell.config.transfer.options)
    if args.checkpoint:
        path = Path(args.checkpoint)
    else:
        found = sorted((cache_root() / "checkpoints" / cell.config_hash).glob("*.ckpt"),
                       key=lambda p: p.stat().st_mtime)
        if not found:
            sys.exit(f"no checkpoint of cell {cell.config_hash} under {cache_root() / 'checkpoints'}")
        path = found[-1]
    header, body = checkpoint_file._read(path)      # unvalidated: the checkpoint of a run still going
    state = torch.load(io.BytesIO(body), map_location="cpu", weights_only=True)["state"]
    step = int(state["step"])

    torch.set_num_threads(1)
    train_docs, stream_docs, held_out = load_splits(params)
    fresh = fresh_documents(params, cell.seed, stream_docs + held_out)
    every_doc = train_docs + stream_docs + held_out          # the vocabulary as the run builds it (tiny models)
    every_doc += [d for s in range(params.train_steps) for d in fresh(s)] \
        if fresh is not None and "tiny" in (params.lm, params.encoder) else []
    lm, tokenizer = build_lm(params, every_doc, cache_root())
    harness = build_harness(params, every_doc, tokenizer, shots=demonstrations(params, train_docs))
    torch.manual_seed(cell.seed)
    method = build_method(params, lm, harness, cell.seed, fresh)
    method.model.load_state_dict(state["model"], strict=False)
    probe = reading.ProbeSet.split(held_out, params.probe_documents, params.eval_questions)
    answers: list[dict] = []
    result = reading.reading_probe(method.model, harness, probe, predictions=answers)

    print(f"{path} — written {header.get('written_utc')} after {step} of {params.train_steps} training steps "
          f"(curriculum: the first {params.curriculum_steps}); {len(probe.questions)} questions about "
          f"{len(probe.documents)} held-out documents, the other bank {len(probe.others)} more")
    print(reading.format_table(result))
    by_condition = defaultdict(list)
    for record in answers:
        by_condition[record["condition"]].append(record)
    for condition, records in by_condition.items():
        distinct = len({r["prediction"] for r in records})
        print(f"\n{condition}: {distinct} distinct answers over {len(records)} questions")
        for r in records[:args.answers]:
            print(f"  {r['question']:<58} gold {r['gold']!r:<16} answered {r['prediction']!r}")
    doc = result["memory_doc_loss"]
    print(f"\nRESULT step={step} " + " ".join(f"{c}_f1={result[c]['f1']:.1f} {c}_loss={result[c]['loss']:.3f}"
                                            for c in reading.CONDITIONS)
          + f" doc_loss_own={doc['own']:.3f} doc_loss_other={doc['other']:.3f} doc_loss_none={doc['none']:.3f}")


if __name__ == "__main__":
    main()
