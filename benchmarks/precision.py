"""Does bf16 autocast change what the quickstart grid measures, and what does it cost, on the CPU?

Every cell of `experiments/quickstart.yaml` (split digits, 5 strategies × 2 training seeds) is
trained twice, once with ``train.precision: fp32`` and once with ``bf16`` (`cl.precision`:
autocast around forward + loss), interleaved cell by cell so machine load hits both alike.
The table gives final average accuracy per strategy (mean over seeds, and the per-seed
difference bf16 − fp32) and the training-time ratio bf16 / fp32 (median over cells of
``final/train_seconds``). "Within noise" means |mean difference| ≤ the seed-to-seed spread of
fp32 (the std of its two seeds) — with two seeds that is a coarse test, stated as such.

No MLflow: runs log to a collector. Results are appended to a JSON-lines file as they finish,
so an interrupted measurement resumes (``--out``, default benchmarks/results/precision/cpu.jsonl — a
subfolder: the top-level *.jsonl there are `cl.archive` run archives); ``--fresh`` starts over.

    OMP_NUM_THREADS=1 python benchmarks/precision.py          # ~20 runs, ~10 min on 2 busy cores
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from benchmarks.gridbench import mean_std
from benchmarks.paths import RESULTS, ROOT
from cl.config import set_dotted
from cl.grid import expand, load_grid
from cl.runner import execute
from cl.tracking import NullRunLog

PRECISIONS = ("fp32", "bf16")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", default=str(ROOT / "experiments" / "quickstart.yaml"))
    parser.add_argument("--out", default=str(RESULTS / "precision" / "cpu.jsonl"))
    parser.add_argument("--fresh", action="store_true", help="ignore results already in --out")
    return parser.parse_args()


def measure(args) -> list[dict]:
    import torch

    out = Path(args.out)
    done: dict[tuple, dict] = {}
    if out.exists() and not args.fresh:
        for line in out.read_text().splitlines():
            row = json.loads(line)
            done[(row["strategy"], row["seed"], row["precision"])] = row
    elif args.fresh and out.exists():
        out.unlink()
    cells = expand(load_grid(args.grid), source=args.grid)
    for cell in cells:
        for precision in PRECISIONS:
            key = (cell.config.strategy.name, cell.seed, precision)
            if key in done:
                continue
            from cl.config import RunConfig

            raw = set_dotted(cell.config.to_dict(), "train.precision", precision)
            config = RunConfig.from_dict(raw)
            started = time.perf_counter()
            result = execute(config, NullRunLog())
            row = {"strategy": key[0], "seed": key[1], "precision": precision, "status": result.status,
                   "reason": result.reason, "avg_acc": result.metrics.get("final/avg_acc"),
                   "train_seconds": result.metrics.get("final/train_seconds"),
                   "wall_seconds": time.perf_counter() - started, "threads": torch.get_num_threads(),
                   "warning": result.warning}
            print(json.dumps(row), flush=True)
            with out.open("a") as handle:
                handle.write(json.dumps(row) + "\n")
            done[key] = row
    return list(done.values())


def table(rows: list[dict]) -> tuple[str, str]:
    by = {(r["strategy"], r["seed"], r["precision"]): r for r in rows}
    strategies = list(dict.fromkeys(r["strategy"] for r in rows))
    seeds = sorted({r["seed"] for r in rows})
    lines = ["strategy   fp32 acc %        bf16 acc %        bf16−fp32 per seed (pp)   within noise   time bf16/fp32",
             "-" * 104]
    ratios, within, diffs = [], 0, []
    for s in strategies:
        acc = {p: [100 * by[(s, k, p)]["avg_acc"] for k in seeds if (s, k, p) in by and by[(s, k, p)]["avg_acc"] is not None]
               for p in PRECISIONS}
        if len(acc["fp32"]) != len(seeds) or len(acc["bf16"]) != len(seeds):
            lines.append(f"{s:<10} incomplete")
            continue
        d = [b - f for f, b in zip(acc["fp32"], acc["bf16"])]
        diffs.extend(d)
        spread = statistics.stdev(acc["fp32"]) if len(seeds) > 1 else 0.0
        ok = abs(statistics.mean(d)) <= spread
        within += ok
        r = [by[(s, k, "bf16")]["train_seconds"] / by[(s, k, "fp32")]["train_seconds"] for k in seeds]
        ratios.extend(r)
        lines.append(f"{s:<10} {mean_std(acc['fp32'], 1):<17} {mean_std(acc['bf16'], 1):<17} "
                     f"{', '.join(f'{x:+.1f}' for x in d):<25} {'yes' if ok else 'NO':<14} "
                     f"{statistics.median(r):.2f}")
    result = (f"RESULT precision (CPU, quickstart grid, {len(seeds)} seeds): bf16 within noise of fp32 for "
              f"{within}/{len(strategies)} strategies, mean |bf16−fp32| {statistics.mean(map(abs, diffs)):.1f} pp, "
              f"train time bf16/fp32 median {statistics.median(ratios):.2f}x" if ratios else
              "RESULT precision: incomplete")
    return "\n".join(lines), result


def main() -> None:
    args = parse_args()
    import torch

    print(f"torch {torch.__version__}, CUDA available: {torch.cuda.is_available()} "
          "(GPU numbers: not measured when no GPU is present)", flush=True)
    rows = measure(args)
    text, result = table([r for r in rows if r["status"] == "FINISHED"])
    failed = [r for r in rows if r["status"] != "FINISHED"]
    print(text)
    for r in failed:
        print(f"FAILED {r['strategy']} seed {r['seed']} {r['precision']}: {r['reason']}")
    print(result)


if __name__ == "__main__":
    main()
