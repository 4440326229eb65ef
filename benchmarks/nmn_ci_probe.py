"""Does the class-incremental NMN's memory hold more than the last task? (the probe behind retiring nmn_sg/nmn_bp)

Trains `nmn_sg` (or `nmn_bp`) on Split digits (5 × 2 classes, the published strategy defaults: 128 slots,
minibatches of 32) through the suite's runner, recording every write: after each minibatch, the slots that
took at least half of some sample's write weight. Prints, per experience, the share of the memory's slots
whose last write came during it, how many minibatches it takes to rewrite every slot, and the final accuracy
on each experience (old tasks vs the last). A memory that held earlier tasks would show slots last written
before the final experience and old tasks above 0%.

    python benchmarks/nmn_ci_probe.py              # nmn_sg, seed 0 (about a minute)
    python benchmarks/nmn_ci_probe.py --strategy nmn_bp --epochs 2
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategy", default="nmn_sg", choices=("nmn_sg", "nmn_bp"))
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import numpy as np
    import torch

    import strategies.nmn as nmn
    from cl.config import RunConfig
    from cl.runner import run

    writes: list[set[int]] = []                              # per committed minibatch: slots written
    original = nmn.NMN.commit

    def recording_commit(self, o_r, o_w, a, weights, erase, add):
        strong = (weights >= 0.5 * weights.max(dim=1, keepdim=True).values).any(0)
        writes.append(set(torch.nonzero(strong).flatten().tolist()))
        return original(self, o_r, o_w, a, weights, erase, add)

    nmn.NMN.commit = recording_commit
    cfg = RunConfig.from_dict({
        "experiment": "nmn_ci_probe", "scenario": {"name": "split_digits", "n_experiences": 5},
        "model": {"name": "mlp"}, "strategy": {"name": args.strategy},
        "train": {"epochs": args.epochs, "batch_size": 32, "lr": 0.05}, "seed": args.seed})
    with tempfile.TemporaryDirectory() as tmp:
        result = run(cfg, tracking_uri=f"sqlite:///{tmp}/probe.db")
        if not result.ok:
            raise SystemExit(f"run failed: {result.reason}")
        from mlflow import MlflowClient

        client = MlflowClient(f"sqlite:///{tmp}/probe.db")
        matrix = Path(client.download_artifacts(result.run_id, "accuracy_matrix.csv", tmp)).read_text()
    rows = [line.split(",") for line in matrix.strip().splitlines()]
    final = [float(v) for v in rows[-1][1:]]

    n = len(writes)
    per_exp = n // 5                                          # equal-sized experiences (digits: ±1 minibatch)
    last_written = {}
    for step, slots in enumerate(writes):
        for slot in slots:
            last_written[slot] = step
    slots = 128
    share = np.bincount([min(step // per_exp, 4) for step in last_written.values()], minlength=5) / slots
    covered, cover_steps = set(), None
    for step, written in enumerate(writes):
        covered |= written
        if len(covered) == slots:
            cover_steps = step + 1
            break
    print(f"{args.strategy} on Split digits, {args.epochs} epoch(s), {n} minibatches ({per_exp} per experience)")
    print(f"{'experience':<12}" + "".join(f"{e:>8}" for e in range(5)))
    print(f"{'slots last %':<12}" + "".join(f"{100 * v:>8.1f}" for v in share))
    print(f"{'final acc %':<12}" + "".join(f"{100 * v:>8.1f}" for v in final))
    print(f"every slot written within the first {cover_steps} minibatches; never-written slots: "
          f"{slots - len(last_written)}")
    holds_more = bool(share[:4].sum() > 0 and max(final[:4]) > 0)
    print(f"RESULT nmn_ci_memory_holds_more_than_last_task={int(holds_more)} "
          + json.dumps({"slots_last_written_in_last_exp": round(float(share[4]), 3),
                        "old_task_acc_max": round(max(final[:4]), 3), "last_task_acc": round(final[4], 3),
                        "minibatches_to_cover_memory": cover_steps}, separators=(",", ":")))


if __name__ == "__main__":
    main()
