"""FPF and k-FPF at CPU scale: does FPF improve its host, and does k-FPF match replay for less compute?

Runs the grid `experiments/fpf_fmnist.yaml` — Split Fashion-MNIST and Split MNIST, 5 × 2
classes, ResNet-32 with one input channel, buffers 200 and 500, 3 seeds; naive, replay,
dark_er, replay+FPF, dark_er+FPF, kfpf_ce, kfpf_kd — through the suite's launcher (finished
cells are reused on a rerun; store: reports/fpf/mlflow.db). Prints, per scenario and
buffer, final average accuracy and forgetting (mean ± std over seeds) and training FLOPs
(`cost/train_flops`, see `cl.cost`) relative to replay with the same buffer; then the two
verdicts the paper claims, and a RESULT line.

    python benchmarks/fpf.py --quick     # the same cases on 8×8 digits, 2 epochs, 2 seeds: a smoke run
    python benchmarks/fpf.py             # the grid as published (78 runs, ≈ 2–3 h with 2 workers)
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import gridbench  # noqa: E402
from cl.analysis import load_runs  # noqa: E402
from cl.config import set_dotted  # noqa: E402
from cl.grid import GridSpec, load_grid  # noqa: E402

METHODS = ("naive", "replay", "dark_er", "replay+fpf", "dark_er+fpf", "kfpf_ce", "kfpf_kd")


def grid(args) -> GridSpec:
    spec = load_grid(ROOT / "experiments" / "fpf_fmnist.yaml")
    if not args.quick:
        return spec
    base = set_dotted(spec.base, "scenario", {"name": "split_digits", "n_experiences": 5})
    base = set_dotted(base, "train.epochs", 2)
    return spec.model_copy(update={"base": base, "grid": {}, "seeds": spec.seeds[:2], "name": spec.name + "_quick",
                                   "experiment": spec.experiment_name + "_quick"})


def method_of(config) -> str:
    return config.strategy.name + "".join(f"+{p.name}" for p in config.plugins)


def main() -> None:
    args = gridbench.parser(__doc__.splitlines()[0], store="fpf",
                            quick_help="8×8 digits instead of (Fashion-)MNIST, 2 epochs, 2 seeds").parse_args()
    spec = grid(args)
    cells = gridbench.run_grid(spec, args)

    about = {c.config_hash: (c.config.scenario.name, c.config.strategy.options.get("mem_size"), method_of(c.config))
             for c in cells}
    runs = load_runs(spec.experiment_name, tracking_uri=args.tracking_uri, config_hashes=list(about))
    runs["scenario"], runs["buffer"], runs["method"] = zip(*(about[h] for h in runs["config_hash"]))
    runs["acc"], runs["fgt"] = 100 * runs["final/avg_acc"], 100 * runs["final/forgetting"]

    results: dict[str, float] = {}
    verdict_fpf, verdict_kfpf = [], []
    for scenario in sorted(runs["scenario"].unique()):
        here = runs[runs["scenario"] == scenario]
        naive = here[here["method"] == "naive"]
        for buffer in sorted(b for b in here["buffer"].dropna().unique()):
            group = here[here["buffer"] == buffer]
            replay_flops = group.loc[group["method"] == "replay", "cost/train_flops"].mean()
            print(f"\n{scenario}, buffer {int(buffer)}")
            print(f"{'method':<13}{'n':>3}{'final acc %':>16}{'forgetting %':>16}{'FLOPs / replay':>16}{'train s':>9}")
            stats = {}
            for method in METHODS:
                rows = naive if method == "naive" else group[group["method"] == method]
                if rows.empty:
                    continue
                stats[method] = (rows["acc"].mean(), rows["acc"].std(), rows["cost/train_flops"].mean() / replay_flops)
                print(f"{method:<13}{len(rows):>3}{f'{rows.acc.mean():.2f} ± {rows.acc.std():.2f}':>16}"
                      f"{f'{rows.fgt.mean():.2f} ± {rows.fgt.std():.2f}':>16}{stats[method][2]:>16.3f}"
                      f"{rows['final/train_seconds'].mean():>9.1f}")
                key = f"{scenario}_{int(buffer)}_{method.replace('+', '_')}"
                results[key + "_acc"] = stats[method][0]
                results[key + "_flops_rel"] = stats[method][2]
            for host in ("replay", "dark_er"):
                if host in stats and f"{host}+fpf" in stats:
                    gain = stats[f"{host}+fpf"][0] - stats[host][0]
                    verdict_fpf.append(gain > 0)
                    print(f"  FPF on {host}: {gain:+.2f} points")
            best = max((m for m in ("kfpf_ce", "kfpf_kd") if m in stats), key=lambda m: stats[m][0], default=None)
            if best and "replay" in stats:
                reaches = stats[best][0] >= stats["replay"][0] - stats["replay"][1]
                verdict_kfpf.append(reaches)
                print(f"  {best}: {stats[best][0] - stats['replay'][0]:+.2f} points vs replay "
                      f"at {stats[best][2]:.2f}× its FLOPs ({'reaches' if reaches else 'does not reach'} "
                      "replay within one std)")
    fpf_ok = bool(verdict_fpf) and all(verdict_fpf)
    kfpf_ok = bool(verdict_kfpf) and all(verdict_kfpf)
    print(f"\n(a) FPF improves its host in {sum(verdict_fpf)}/{len(verdict_fpf)} settings; "
          f"(b) k-FPF reaches replay in {sum(verdict_kfpf)}/{len(verdict_kfpf)}")
    print(f"RESULT fpf_improves={int(fpf_ok)} kfpf_reaches_replay={int(kfpf_ok)} seeds={len(spec.seeds)} "
          f"quick={int(args.quick)} " + json.dumps({k: round(v, 3) for k, v in results.items()}, separators=(",", ":")))


if __name__ == "__main__":
    main()
