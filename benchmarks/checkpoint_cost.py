"""What checkpointing after every experience costs: file size and write time, as a share of training time.

Runs one cell of `experiments/memo_fmnist.yaml` — MEMO, Split Fashion-MNIST 5 × 2 classes, ResNet-32,
equal memory to DER, seed 0 — in this process, with checkpoints on (the default), and times, per
experience: the training phase (the logger's ``time/train_exp_s``), and the checkpoint — collecting
the state (model, optimiser, plugins, RNG), serialising it, hashing it and writing it atomically with
fsync (`cl.checkpoint.ExperienceCheckpoints.after_experience`, end to end). MEMO's checkpoint grows with
the network (one specialized block per task); exemplars are saved as indices, not images.

    OMP_NUM_THREADS=1 python benchmarks/checkpoint_cost.py            # the grid's memo cell (data: ../shared/data)
    OMP_NUM_THREADS=1 python benchmarks/checkpoint_cost.py --quick    # 8×8 digits, 1 epoch: a smoke run

Measured 2026-12-03 on the shared 2-core machine (load ≈ 10, so training times are inflated; the write
is not free of that load either): checkpoints of 3.84 MB after task 1 growing to 9.61 MB after task 5
(ResNet-32 + one specialized block per task + SGD momentum), 0.09–0.22 s per write (median 0.127 s),
0.01–0.08 % of the experience's training time (262–1,206 s per task). final/avg_acc 0.8693.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

from benchmarks.paths import ROOT, SHARED_DATA


def memo_cell(quick: bool):
    from cl.config import set_dotted
    from cl.grid import expand, load_grid

    spec = load_grid(ROOT / "experiments" / "memo_fmnist.yaml")
    base = set_dotted(spec.base, "strategy.name", "memo")
    if quick:
        base = set_dotted(set_dotted(set_dotted(base, "scenario", {"name": "split_digits", "n_experiences": 5}),
                                     "train.epochs", 1), "train.milestones", [])
        base = set_dotted(base, "train.lr", 0.01)
    spec = spec.model_copy(update={"base": base, "grid": {}, "seeds": [0]})
    (cell,) = expand(spec)
    return cell.config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8×8 digits, 1 epoch per task (smoke run)")
    args = parser.parse_args()
    os.environ.setdefault("CLSUITE_DATA_ROOT", str(SHARED_DATA))
    os.environ["CLSUITE_CACHE"] = tempfile.mkdtemp(prefix="checkpoint-cost-")

    from cl import checkpoint
    from cl.runner import execute
    from cl.tracking import NullRunLog

    cfg = memo_cell(args.quick)
    writes: list[tuple[int, int, float]] = []          # (experiences done, bytes, seconds end to end)
    original = checkpoint.ExperienceCheckpoints.after_experience

    def timed(self, done, elapsed_s):
        started = time.perf_counter()
        original(self, done, elapsed_s)
        writes.append((done, self.checkpoints.writes[-1][1], time.perf_counter() - started))

    checkpoint.ExperienceCheckpoints.after_experience = timed

    class Recorder(NullRunLog):
        train_s: dict[int, float] = {}

        def log_metrics(self, metrics, step=None):
            if "time/train_exp_s" in metrics:
                self.train_s[step] = metrics["time/train_exp_s"]

    recorder = Recorder()
    result = execute(cfg, recorder)
    if not result.ok:
        raise SystemExit(f"run failed: {result.reason}")

    print(f"{cfg.title}, config {cfg.config_hash}, {cfg.train.epochs} epochs/task, seed {cfg.seed}"
          + (" (--quick)" if args.quick else ""))
    print(f"{'experience':>10} {'train s':>9} {'ckpt MB':>8} {'write s':>8} {'share %':>8}")
    shares = []
    for done, size, seconds in writes:
        train = recorder.train_s[done - 1]
        shares.append(100 * seconds / train)
        print(f"{done:>10} {train:>9.1f} {size / 1e6:>8.2f} {seconds:>8.3f} {shares[-1]:>8.2f}")
    print(f"final/avg_acc {result.metrics['final/avg_acc']:.4f}")
    print(f"RESULT checkpoint_mb_last={writes[-1][1] / 1e6:.2f} checkpoint_mb_first={writes[0][1] / 1e6:.2f} "
          f"write_s_median={statistics.median(w[2] for w in writes):.3f} "
          f"share_of_train_time_median_pct={statistics.median(shares):.2f} "
          f"share_of_train_time_max_pct={max(shares):.2f}")


if __name__ == "__main__":
    main()
