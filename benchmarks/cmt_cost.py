"""CMT's cost on this machine: seconds per training step and per answer, SmolLM2-135M + all-MiniLM-L6-v2 (issue #30).

One process times every variant on the same fresh synthetic documents (``train_batch_documents`` per step, 3
facts each, closed answers), so the ratios share the machine's load at that moment:

* ``archived``          — the settings of experiments/cmt_synthetic.yaml: both MiniLM copies fine-tuned, K=12,
                          P=2, QA + self-matching + memory-aware terms;
* ``frozen encoders``   — train_encoder: false (the encoders run forward only, in eval mode: no activations kept,
                          no backward through 2×6 MiniLM layers);
* ``frozen q-encoder``  — only the question encoder frozen (freeze_question_encoder);
* ``frozen, P=1``       — frozen encoders and one prefix key/value per layer instead of 2;
* ``frozen, no mem-aware`` — frozen encoders without the memory-aware term (its LM pass over each document's
                          tokens is the largest single cost; dropping it is an ablation, not a free saving —
                          shown so the budget of a run without it is known).

Then seconds per answer (greedy, ``max_new_tokens`` 12, batches of 16 questions, a bank of 64 documents, top-k 2)
and what a training run of N steps costs at the measured rate. Prints a table and a RESULT line.

    OMP_NUM_THREADS=1 python benchmarks/cmt_cost.py [--steps 3] [--threads 1]
"""
from __future__ import annotations

import argparse
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per variant (after 1 warm-up)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--batch-documents", type=int, default=4)
    parser.add_argument("--run-steps", type=int, default=2000, help="the training length whose cost is projected")
    args = parser.parse_args()

    import copy

    import torch

    from cl.cache import cache_root
    from transfer.cmt.baselines import CMTMemory
    from transfer.cmt.data import FreshDocuments, synthetic_facts
    from transfer.cmt.experiment import build_encoder, build_harness, build_lm, cmt_config
    from transfer.cmt.model import CMT, make_optimizer, train_steps
    from transfer.cmt.params import CMTTransferParams

    torch.set_num_threads(args.threads)
    base = dict(dataset="synthetic", lm="smollm2", encoder="minilm", facts_per_document=3,
                synthetic_answers="closed", num_memory_tokens=12, prefix_length=2, top_k=2,
                train_batch_documents=args.batch_documents, lr=3e-4, max_new_tokens=12, train_documents=64,
                stream_documents=64)
    variants = {
        "archived": {},
        "frozen encoders": {"train_encoder": False},
        "frozen q-encoder": {"freeze_question_encoder": True, "encoder_lr": 1e-5},
        "frozen, P=1": {"train_encoder": False, "prefix_length": 1},
        "frozen, no mem-aware": {"train_encoder": False, "memory_aware_weight": 0.0},
    }
    stream = synthetic_facts(64, seed=0, answers="closed")
    params = CMTTransferParams(**base)
    started = time.perf_counter()
    lm, tokenizer = build_lm(params, stream, cache_root())
    harness = build_harness(params, stream, tokenizer)
    encoder = build_encoder(params, harness.enc_tokenizer)
    print(f"models loaded in {time.perf_counter() - started:.1f} s; {args.threads} thread(s), "
          f"{args.batch_documents} documents (× 3 questions) per step")
    fresh = FreshDocuments(set(), seed=0, batch_documents=args.batch_documents, answers="closed")

    rows = {}
    for name, options in variants.items():
        p = CMTTransferParams(**{**base, **options})
        torch.manual_seed(0)
        model = CMT(lm, copy.deepcopy(encoder), cmt_config(p))
        optimizer = make_optimizer(model, lr=p.lr, encoder_lr=p.encoder_lr)
        times = []
        for step in range(args.steps + 1):
            batch = harness.batch(fresh(step))
            t = time.perf_counter()
            train_steps(model, [batch], optimizer)
            times.append(time.perf_counter() - t)
        rows[name] = sum(times[1:]) / args.steps
        trainable = sum(x.numel() for x in model.trainable_parameters())
        print(f"  {name:<22} {rows[name]:6.2f} s/step  ({trainable / 1e6:.1f} M trainable)", flush=True)
        if name == "frozen encoders":
            frozen_model = model

    method = CMTMemory(frozen_model, harness, steps=0, batch_documents=4, lr=1e-4)
    t = time.perf_counter()
    for start in range(0, len(stream), 16):
        method.observe(stream[start:start + 16])
    write_s = (time.perf_counter() - t) / len(stream)
    questions = [qa for d in stream[:16] for qa in d.qas][:32]
    docs = {d.doc_id: d for d in stream}
    t = time.perf_counter()
    for batch, _ in harness.question_batches(questions, docs):
        method.answer(batch)
    answer_s = (time.perf_counter() - t) / len(questions)

    reference = rows["archived"]
    print(f"\n{'variant':<24}{'s/step':>8}{'ratio':>8}{f'{args.run_steps} steps (h)':>18}")
    for name, seconds in rows.items():
        print(f"{name:<24}{seconds:>8.2f}{seconds / reference:>8.2f}{seconds * args.run_steps / 3600:>18.2f}")
    print(f"writing a document to the bank: {write_s:.3f} s; answering a question (12 greedy tokens, bank of 64): "
          f"{answer_s:.3f} s")
    short = {"archived": "archived", "frozen encoders": "frozen", "frozen q-encoder": "frozen_q",
             "frozen, P=1": "frozen_p1", "frozen, no mem-aware": "frozen_no_memaware"}
    print("RESULT " + " ".join(f"step_s_{short[n]}={s:.2f}" for n, s in rows.items())
          + f" frozen_over_archived={rows['frozen encoders'] / reference:.2f} answer_s={answer_s:.3f}"
          f" write_s={write_s:.3f} threads={args.threads}")


if __name__ == "__main__":
    main()
