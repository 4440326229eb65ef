"""FPF and k-FPF at CPU scale: does FPF improve its host, does k-FPF match replay for less compute, and how much
can FPF recover at all (the ceiling)?

Grids (each through the suite's launcher; finished cells are reused, measured runs are kept in
benchmarks/results/<experiment>.jsonl; store: reports/fpf/mlflow.db unless --tracking-uri):

- ``published`` — `experiments/fpf_fmnist.yaml`: Split Fashion-MNIST and Split MNIST, 5 × 2 classes, ResNet-32
  (one input channel), buffers 200 and 500, 3 seeds; naive, replay, dark_er, replay+FPF, dark_er+FPF, kfpf_ce,
  kfpf_kd. Prints final accuracy and forgetting (mean ± std over seeds) and training FLOPs relative to replay.
- ``darker_host`` — `experiments/fpf_darker_host_loss.yaml` (issue #28): Dark-ER + FPF fine-tuned with Dark-ER's
  own loss (α·logit matching + β·CE, ``loss: host``), printed beside the published grid's dark_er and dark_er + FPF
  (cross-entropy) runs at buffer 200, with the mechanism: the probe's accuracy right before → right after each call.
- ``ceiling`` — `experiments/kfpf_ceiling.yaml`: plain SGD through the same stream, then one FPF call on the
  last iteration whose modules / lr / steps are chosen on a validation split carved from the training data.
  The mechanism check is printed next to the verdict: test accuracy per experience right before the call
  (plain SGD's, from the same stream) and right after it. Cells run one at a time, every dataset's seed 0 first.

Every run also redraws the paper's cost–accuracy figure from all measured runs: reports/fpf/cost_accuracy.png.

    python benchmarks/fpf.py --quick                 # all grids on 8×8 digits, few epochs: a smoke run
    python benchmarks/fpf.py --only ceiling          # the ceiling grid (≈ 30 min per cell on a busy 2-core box)
    python benchmarks/fpf.py --only darker_host --max-cells 1   # Dark-ER's own loss: one cell (≈ 15 min, busy)
    python benchmarks/fpf.py --no-run                # the tables from the runs measured so far
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks import gridbench
from benchmarks.paths import ROOT
from cl.grid import GridSpec, load_grid
from cl.reproductions import reproduction_for
from strategies.fpf_claims import chosen_candidates

METHODS = ("naive", "replay", "dark_er", "replay+fpf", "dark_er+fpf", "kfpf_ce", "kfpf_kd")
REPRODUCTION = reproduction_for("experiments/fpf_fmnist.yaml")
CEILING = reproduction_for("experiments/kfpf_ceiling.yaml")
GRIDS = {"published": "experiments/fpf_fmnist.yaml", "ceiling": "experiments/kfpf_ceiling.yaml",
         "sweep": "experiments/kfpf_sweep.yaml", "darker_host": "experiments/fpf_darker_host_loss.yaml"}
HOST_METHODS = {"dark_er": "dark_er", "dark_er+fpf": "dark_er+fpf(ce)", "dark_er+fpf(host)": "dark_er+fpf(host)"}
QUICK = {"scenario": {"name": "split_digits", "n_experiences": 5}, "train.epochs": 2}


def grid(name: str, quick: bool) -> GridSpec:
    spec = load_grid(ROOT / GRIDS[name])
    if not quick:
        return spec
    if name == "ceiling":   # digits: ~125 training images per class; short fine-tuning candidates
        strategy = {**spec.base["strategy"], "valid_per_class": 20, "mem_size": 100, "tune": [
            {"modules": [["fc"]], "lr": [0.05, 0.1], "iterations": [30, 100]},
            {"modules": [["bn", "fc"], ["bn", "fc", "conv1"]], "lr": [0.05], "iterations": [30]}]}
        return gridbench.quick_variant(spec, {**QUICK, "strategy": strategy}, seeds=1, grid={})
    if name == "sweep":
        return gridbench.quick_variant(spec, QUICK, seeds=1, grid={"strategy.k": [2, 4], "strategy.iterations": [10]})
    return gridbench.quick_variant(spec, QUICK, seeds=2, grid={})


def seed_major(cell) -> tuple:
    """The smallest buffer first, and within it every dataset's seed 0 before any seed 1: a grid stopped early
    still covers both datasets at the buffer that matters most."""
    config = cell.config
    return config.strategy.options.get("mem_size", 0), config.seed, config.scenario.name


def published(args) -> tuple[dict[str, float], pd.DataFrame]:
    """The published grid's table and claims; its results and its runs (the reference of the other grids)."""
    spec = grid("published", args.quick)
    _, runs = gridbench.finished_runs(spec, args, REPRODUCTION.describe)
    results: dict[str, float] = {}
    if runs.empty:
        print("published grid: no finished runs")
        return results, runs
    runs["acc"], runs["fgt"] = 100 * runs["final/avg_acc"], 100 * runs["final/forgetting"]
    for scenario in sorted(runs["scenario_name"].unique()):
        here = runs[runs["scenario_name"] == scenario]
        naive = here[here["method"] == "naive"]
        for buffer in sorted(b for b in here["buffer"].dropna().unique()):
            group = here[here["buffer"] == buffer]
            replay_flops = group.loc[group["method"] == "replay", "cost/train_flops"].mean()
            print(f"\n{scenario}, buffer {int(buffer)}")
            print(f"{'method':<13}{'n':>3}{'final acc %':>16}{'forgetting %':>16}{'FLOPs / replay':>16}{'train s':>9}")
            for method in METHODS:
                rows = naive if method == "naive" else group[group["method"] == method]
                if rows.empty:
                    continue
                flops = rows["cost/train_flops"].mean() / replay_flops
                print(f"{method:<13}{len(rows):>3}{gridbench.mean_std(rows.acc, 2):>16}"
                      f"{gridbench.mean_std(rows.fgt, 2):>16}{flops:>16.3f}"
                      f"{rows['final/train_seconds'].mean():>9.1f}")
                key = f"{scenario}_{int(buffer)}_{method.replace('+', '_')}"
                results[key + "_acc"] = rows["acc"].mean()
                results[key + "_flops_rel"] = flops
                if method == "replay":
                    results[key + "_flops_abs"] = rows["cost/train_flops"].mean()
    claims = REPRODUCTION.claims(runs)
    print()
    for claim in claims:
        print(f"[{claim.verdict}] {claim.claim} — {claim.ours}")
    improves = [c.shown for c in claims if c.claim.startswith("FPF improves")]
    reaches = [c.shown for c in claims if c.claim.startswith("k-FPF")]
    print(f"\n(a) FPF improves its host, beyond noise, in {sum(improves)}/{len(improves)} settings; "
          f"(b) k-FPF reaches replay (within one std, at fewer FLOPs) in {sum(reaches)}/{len(reaches)}")
    results["fpf_improves"] = float(bool(improves) and all(improves))
    results["kfpf_reaches_replay"] = float(bool(reaches) and all(reaches))
    return results, runs


def darker_host(args, reference: pd.DataFrame) -> dict[str, float]:
    """Dark-ER vs Dark-ER + FPF (cross-entropy, published grid) vs Dark-ER + FPF with Dark-ER's own loss."""
    spec = grid("darker_host", args.quick)
    _, runs = gridbench.finished_runs(spec, args, REPRODUCTION.describe, order=seed_major)
    results: dict[str, float] = {}
    if runs.empty:
        print("\ndarker_host grid: no finished runs (experiments/fpf_darker_host_loss.yaml)")
        return results
    buffers = set(runs["buffer"].dropna())
    if not reference.empty:
        reference = reference[reference["method"].isin(HOST_METHODS) & reference["buffer"].isin(buffers)]
    both = pd.concat([reference, runs], ignore_index=True)
    both["acc"] = 100 * both["final/avg_acc"]
    print("\nFPF on Dark-ER: fine-tuning with cross-entropy (published grid) vs with Dark-ER's own loss "
          "(final accuracy %, mean ± std over seeds; per seed)")
    print(f"{'scenario':<14}{'buffer':>7}  {'method':<19}{'n':>3}{'final acc %':>16}  per seed")
    for (scenario, buffer), group in both.groupby(["scenario_name", "buffer"]):
        for method, label in HOST_METHODS.items():
            rows = group[group["method"] == method].sort_values("seed")
            if rows.empty:
                continue
            seeds = ", ".join(f"{int(s)}: {a:.2f}" for s, a in zip(rows["seed"], rows["acc"]))
            print(f"{scenario:<14}{int(buffer):>7}  {label:<19}{len(rows):>3}{gridbench.mean_std(rows.acc, 2):>16}  "
                  f"{seeds}")
            key = f"darker_{scenario}_{int(buffer)}_{label.replace('+', '_').replace('(', '_').rstrip(')')}_acc"
            results[key] = rows["acc"].mean()
    print("\nMechanism (the probe, host-loss runs): test accuracy of the seen tasks right before → right after each "
          "FPF call (mean over seeds, %), and per task for the last call")
    for (scenario, buffer), group in runs.groupby(["scenario_name", "buffer"]):
        calls = _probe_calls(group, args.tracking_uri)
        if not calls:
            print(f"  {scenario}, buffer {int(buffer)}: no probe recorded")
            continue
        text = " | ".join(f"after task {c['experience'] + 1}: {c['before']:.1f}→{c['after']:.1f}" for c in calls)
        print(f"  {scenario}, buffer {int(buffer)}: {text}")
        n_exp = sum(1 for c in group.columns if c.startswith("fpf/acc_before/exp"))
        last = [f"{100 * group[f'fpf/acc_before/exp{j}'].mean():.1f}→"
                f"{100 * group[f'fpf/acc_after/exp{j}'].mean():.1f}" for j in range(n_exp)]
        print("    last call, per task: " + " | ".join(f"task {j + 1}: {c}" for j, c in enumerate(last)))
        results[f"darker_{scenario}_{int(buffer)}_last_call_before"] = 100 * group["fpf/acc_before"].mean()
        results[f"darker_{scenario}_{int(buffer)}_last_call_after"] = 100 * group["fpf/acc_after"].mean()
    print()
    for claim in REPRODUCTION.claims(both):
        if "Dark-ER's own loss" in claim.claim or "host's loss" in claim.claim:
            print(f"[{claim.verdict}] {claim.claim} — {claim.ours}")
    return results


def _probe_calls(group: pd.DataFrame, tracking_uri: str) -> list[dict]:
    """Per FPF call (by the experience it followed), the probe's accuracy of the seen tasks right before and right
    after it, mean over the group's runs, from the metric histories (the run's columns hold only the last call)."""
    from cl.tracking import store_client

    client = store_client(tracking_uri)
    per_call: dict[int, dict[str, list[float]]] = {}
    for run_id in group["run_id"]:
        for when in ("before", "after"):
            for metric in client.get_metric_history(run_id, f"fpf/acc_{when}"):
                per_call.setdefault(metric.step, {"before": [], "after": []})[when].append(metric.value)
    return [{"experience": step, "before": 100 * np.mean(v["before"]), "after": 100 * np.mean(v["after"])}
            for step, v in sorted(per_call.items()) if v["before"] and v["after"]]


def ceiling(args, reference: dict[str, float]) -> dict[str, float]:
    spec = grid("ceiling", args.quick)
    _, runs = gridbench.finished_runs(spec, args, CEILING.describe, order=seed_major)
    results: dict[str, float] = {}
    if runs.empty:
        print("ceiling grid: no finished runs")
        return results
    print("\nThe ceiling: plain SGD through the stream, then one FPF call chosen on validation "
          "(test accuracy %, mean ± std over seeds)")
    print(f"{'scenario':<14}{'buffer':>7}{'n':>3}{'SGD (before)':>16}{'ceiling (after)':>18}{'gain':>8}"
          f"{'val before→after':>19}  chosen (seed: modules/lr/steps)")
    for (scenario, buffer), group in runs.groupby(["scenario_name", "buffer"]):
        before, after = 100 * group["fpf/acc_before"], 100 * group["final/avg_acc"]
        val = f"{100 * group['fpf/val_acc_before'].mean():.1f}→{100 * group['fpf/val_acc_chosen'].mean():.1f}"
        chosen = ", ".join(f"{int(s)}: {c}" for s, c in zip(group["seed"], chosen_candidates(group)))
        print(f"{scenario:<14}{int(buffer):>7}{len(group):>3}{gridbench.mean_std(before, 2):>16}"
              f"{gridbench.mean_std(after, 2):>18}{(after - before).mean():>+8.2f}{val:>19}  {chosen}")
        key = f"{scenario}_{int(buffer)}"
        results[f"ceiling_{key}_acc"] = after.mean()
        results[f"ceiling_{key}_sgd_acc"] = before.mean()
    print("\nMechanism: test accuracy per experience right before → right after the call (mean over seeds, %)")
    for (scenario, buffer), group in runs.groupby(["scenario_name", "buffer"]):
        n_exp = sum(1 for c in group.columns if c.startswith("fpf/acc_before/exp"))
        cells_ = [f"{100 * group[f'fpf/acc_before/exp{j}'].mean():.1f}→"
                  f"{100 * group[f'fpf/acc_after/exp{j}'].mean():.1f}" for j in range(n_exp)]
        print(f"  {scenario}, buffer {int(buffer)}: " + " | ".join(f"task {j + 1}: {c}" for j, c in enumerate(cells_)))
    claims = CEILING.claims(runs)
    print()
    for claim in claims:
        print(f"[{claim.verdict}] {claim.claim} — {claim.ours}")
    for key in sorted(results):
        if key.endswith("_acc") and not key.endswith("_sgd_acc"):
            name = key.removeprefix("ceiling_").removesuffix("_acc")
            replay, naive = reference.get(f"{name}_replay_acc"), reference.get(f"{name}_naive_acc")
            if replay is not None and naive is not None:
                print(f"  for scale, {name}: published naive {naive:.2f}, replay {replay:.2f} "
                      f"(fpf_fmnist.yaml, 1,000 training images per class)")
    return results


def sweep_describe(config) -> dict:
    o = config.strategy.options
    return {"scenario_name": config.scenario.name, "buffer": o.get("mem_size"), "k": o["k"],
            "iterations": o["iterations"], "method": f"k-FPF {o['k']}×{o['iterations']}"}


def sweep(args, reference: dict[str, float]) -> dict[str, float]:
    spec = grid("sweep", args.quick)
    _, runs = gridbench.finished_runs(spec, args, sweep_describe, order=seed_major)
    results: dict[str, float] = {}
    if runs.empty:
        print("\nsweep grid: no finished runs (experiments/kfpf_sweep.yaml)")
        return results
    print("\nThe sweep: k-FPF-CE, k calls × steps each (test accuracy %, mean ± std over seeds)")
    print(f"{'scenario':<14}{'k':>4}{'steps':>6}{'n':>3}{'final acc':>16}{'forgetting':>16}{'FLOPs / replay':>16}"
          f"{'last call: before→after':>26}")
    for (scenario, k, iterations), group in runs.groupby(["scenario_name", "k", "iterations"]):
        replay = reference.get(f"{scenario}_200_replay_flops_abs")
        flops = group["cost/train_flops"].mean() / replay if replay else float("nan")
        probe = (f"{100 * group['fpf/acc_before'].mean():.1f}→{100 * group['fpf/acc_after'].mean():.1f}"
                 if "fpf/acc_before" in group else "—")
        print(f"{scenario:<14}{int(k):>4}{int(iterations):>6}{len(group):>3}"
              f"{gridbench.mean_std(100 * group['final/avg_acc'], 2):>16}"
              f"{gridbench.mean_std(100 * group['final/forgetting'], 2):>16}{flops:>16.3f}{probe:>26}")
        results[f"sweep_{scenario}_k{int(k)}_it{int(iterations)}_acc"] = 100 * group["final/avg_acc"].mean()
    return results


def cost_accuracy_figure(args, out: Path = ROOT / "reports" / "fpf" / "cost_accuracy.png") -> Path | None:
    """The paper's cost–accuracy figure from every measured run: per dataset and buffer, final accuracy (mean ± std
    over seeds) against training FLOPs relative to replay's — the published grid's methods, the ceiling (with its
    12-candidate search), Dark-ER + FPF with its own loss, and each k × steps of the sweep (green). Written to
    `out` (default reports/fpf/cost_accuracy.png); None when no run has FLOPs to plot."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    reading = argparse.Namespace(**{**vars(args), "no_run": True})
    frames = [gridbench.finished_runs(grid(name, args.quick), reading, describe)[1]
              for name, describe in (("published", REPRODUCTION.describe), ("darker_host", REPRODUCTION.describe),
                                     ("ceiling", CEILING.describe), ("sweep", sweep_describe))]
    runs = pd.concat([f for f in frames if not f.empty], ignore_index=True) if any(not f.empty for f in frames) \
        else None
    if runs is None or "cost/train_flops" not in runs:
        return None
    naive = runs[runs["method"] == "naive"]
    runs = runs.dropna(subset=["buffer"])
    panels = sorted(runs.groupby(["scenario_name", "buffer"]).groups)
    fig = Figure(figsize=(4.2 * len(panels), 3.6), layout="constrained")
    for i, (scenario, buffer) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        here = pd.concat([runs[(runs["scenario_name"] == scenario) & (runs["buffer"] == buffer)],
                          naive[naive["scenario_name"] == scenario]])
        replay = here.loc[here["method"] == "replay", "cost/train_flops"].mean()
        if not replay == replay:            # no replay run to divide by
            continue
        for method, group in here.groupby("method"):
            x = group["cost/train_flops"].mean() / replay
            y, err = 100 * group["final/avg_acc"].mean(), 100 * group["final/avg_acc"].std()
            ax.errorbar(x, y, yerr=err if err == err else None, fmt="o", ms=4, capsize=2,
                        color="tab:red" if method == "kfpf_ceiling" else "tab:green" if "×" in method
                        else "tab:blue")
            ax.annotate(method, (x, y), fontsize=6, xytext=(3, 2), textcoords="offset points")
        ax.set_xscale("log")                # the sweep spans 0.7× to ~16× replay's FLOPs
        ax.xaxis.set_minor_formatter(NullFormatter())
        ticks = [t for t in (0.5, 1, 2, 4, 8, 16) if t <= 1.5 * ax.get_xlim()[1]]
        ax.set_xticks(ticks, [f"{t:g}×" for t in ticks])
        ax.set_xlabel("training FLOPs / replay's")
        ax.set_ylabel("final accuracy (%)")
        ax.set_title(f"{scenario}, buffer {int(buffer)}", fontsize=9)
    out.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig).print_png(str(out))
    return out


def main() -> None:
    parser = gridbench.parser(__doc__.splitlines()[0], store="fpf",
                              quick_help="8×8 digits instead of (Fashion-)MNIST, 2 epochs, 1–2 seeds")
    parser.add_argument("--only", action="append", choices=sorted(GRIDS), help="run only these grids (repeatable)")
    args = parser.parse_args()
    chosen = args.only or list(GRIDS)
    # the published grid's naive / replay are the reference; without it chosen, only its measured runs are read
    results, published_runs = published(args if "published" in chosen
                                        else argparse.Namespace(**{**vars(args), "no_run": True}))
    reference = dict(results)
    if "darker_host" in chosen:
        results.update(darker_host(args, published_runs))
    if "ceiling" in chosen:
        results.update(ceiling(args, reference))
    if "sweep" in chosen:
        results.update(sweep(args, reference))
    figure = cost_accuracy_figure(args)
    if figure is not None:
        print(f"\ncost–accuracy figure (every measured run): {figure.relative_to(ROOT)}")
    results = {k: v for k, v in results.items() if not k.endswith("_flops_abs")}
    ceiling_accs = [v for k, v in results.items() if k.startswith("ceiling_") and k.endswith("_acc")
                    and not k.endswith("_sgd_acc")]
    sgd_accs = [v for k, v in results.items() if k.endswith("_sgd_acc")]
    flags = {k: int(results.pop(k)) for k in ("fpf_improves", "kfpf_reaches_replay") if k in results}
    summary = " ".join(f"{k}={v}" for k, v in flags.items())
    ceiling_text = (f"kfpf_ceiling_acc={np.mean(ceiling_accs):.2f} kfpf_ceiling_sgd_acc={np.mean(sgd_accs):.2f}"
                    if ceiling_accs else "kfpf_ceiling_acc=nan")
    print(f"RESULT {summary} {ceiling_text} quick={int(args.quick)} "
          + json.dumps({k: round(v, 3) for k, v in results.items()}, separators=(",", ":")))


if __name__ == "__main__":
    main()
