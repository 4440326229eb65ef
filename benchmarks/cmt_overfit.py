"""Can CMT answer questions about the very documents it was trained on? A capacity check before a long grid.

Trains CMT's memory modules (frozen LM, `transfer.cmt.model`) on a handful of synthetic-facts documents, writes
those same documents into a bank and answers their questions. If this fails, no setting of the streaming
grid can succeed: the compressor → aggregator → prefix path cannot carry a document into the frozen LM.
If it succeeds, what is left to learn is generalisation to unseen documents (`benchmarks/cmt.py`).
Prints the loss terms every `--log-every` steps, then EM / F1 / retrieval@1 on the training questions and a
RESULT line. Defaults: SmolLM2-135M-Instruct + all-MiniLM-L6-v2, both frozen, as in the grid.

    python benchmarks/cmt_overfit.py --quick                         # tiny random models: a smoke run (seconds)
    python benchmarks/cmt_overfit.py --documents 8 --steps 300 --lr 1e-3 --warmup-steps 30
"""
from __future__ import annotations

import argparse
import json
import time

import torch


from cl.cache import cache_root
from transfer.cmt import experiment as cmt_transfer
from transfer.cmt.baselines import evaluate
from transfer.cmt.params import CMTTransferParams


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=8, help="training documents (= the bank)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup-steps", type=int, default=30, help="0 = a constant lr")
    parser.add_argument("--prefix-length", type=int, default=2)
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--train-encoder", action="store_true", help="fine-tune MiniLM too (default: frozen)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-every", type=int, default=25)
    parser.add_argument("--quick", action="store_true", help="tiny random LM and encoder, 4 documents, 10 steps")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    models = {"lm": "tiny", "encoder": "tiny"} if args.quick else {"lm": "smollm2", "encoder": "minilm"}
    steps, documents = (10, 4) if args.quick else (args.steps, args.documents)
    params = CMTTransferParams(method="cmt", **models, train_documents=documents, stream_documents=1,
                               train_steps=steps, lr=args.lr, warmup_steps=min(args.warmup_steps, steps - 1),
                               train_encoder=args.train_encoder, prefix_length=args.prefix_length,
                               top_k=args.top_k, train_batch_documents=min(4, documents))
    torch.manual_seed(args.seed)
    docs, _ = cmt_transfer.load_documents(params)
    lm, lm_tokenizer = cmt_transfer.build_lm(params, docs, cache_root())
    harness = cmt_transfer.build_harness(params, docs, lm_tokenizer)
    torch.manual_seed(args.seed)
    method = cmt_transfer.build_method(params, lm, harness, args.seed)
    print(f"CMT on {documents} documents, {steps} steps, lr {params.lr} (warm-up {params.warmup_steps}), "
          f"P={params.prefix_length}, top-k {params.top_k}, {method.trainable_parameters():,} trainable parameters")

    started = time.perf_counter()

    def on_step(step: int, terms: dict[str, float]) -> None:
        if step % args.log_every == 0 or step == steps - 1:
            print(f"  step {step:>4}  " + "  ".join(f"{k} {v:.3f}" for k, v in terms.items())
                  + f"  ({time.perf_counter() - started:.0f} s)", flush=True)

    method.fit(docs, on_step=on_step)
    method.observe(docs)
    scores = evaluate(method, harness, [qa for d in docs for qa in d.qas], {d.doc_id: d for d in docs})
    recall = scores.retrieval_top1
    print(f"training questions: EM {scores.em:.1f}  F1 {scores.f1:.1f}  retrieval@1 {recall:.1f}  "
          f"({len(scores.records)} questions)")
    for record in scores.records[:6]:
        print(f"  {record['gold']!r:>24} ← {record['prediction']!r}")
    print(f"RESULT cmt_overfit_f1={scores.f1:.1f} quick={int(args.quick)} "
          + json.dumps({"em": round(scores.em, 1), "f1": round(scores.f1, 1), "retrieval_at_1": round(recall, 1),
                        "documents": documents, "steps": steps, "lr": params.lr,
                        "warmup_steps": params.warmup_steps}, separators=(",", ":")))


if __name__ == "__main__":
    main()
