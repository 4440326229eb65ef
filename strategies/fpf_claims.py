"""FPF's and k-FPF's (Zhao et al., ICML 2023), and the k-FPF ceiling's paper claims next to our measurements: what
`clsuite report --reproductions` renders from the archived runs (registered in `cl.registry.REPRODUCTIONS`; the
benchmark script prints the same comparisons at full detail). FPF on Dark-ER with Dark-ER's own loss (issue #28,
experiments/fpf_darker_host_loss.yaml) joins the published grid's claims once its runs exist."""
from __future__ import annotations

import pandas as pd

from cl.reproductions import ClaimResult, Reproduction, difference, within_noise


def _plugin_label(plugin) -> str:
    """``fpf``, or ``fpf(host)`` when FPF fine-tunes with the host's own loss
    (experiments/fpf_darker_host_loss.yaml)."""
    loss = plugin.options.get("loss")
    return plugin.name + (f"({loss})" if loss and loss != "ce" else "")


def _fpf_describe(config) -> dict:
    return {"scenario_name": config.scenario.name, "buffer": config.strategy.options.get("mem_size"),
            "method": config.strategy.name + "".join(f"+{_plugin_label(p)}" for p in config.plugins)}


def _host_loss_claims(scenario: str, buffer: float, by: dict) -> list[ClaimResult]:
    """Issue #28: Dark-ER + FPF fine-tuned with Dark-ER's own loss, against Dark-ER and against FPF with cross-entropy
    (the runs of experiments/fpf_darker_host_loss.yaml beside fpf_fmnist.yaml's); the probe's last call in the text.
    Judged from two seeds of the host-loss runs on: one seed's gap has no noise to be compared with (the benchmark
    prints it in its table)."""
    host = by.get("dark_er+fpf(host)")
    if host is None or len(host) < 2 or "dark_er" not in by:
        return []
    where = f"({scenario}, buffer {int(buffer)})"
    mechanism = ""
    if {"fpf/acc_before", "fpf/acc_after"} <= set(host.columns) and host["fpf/acc_before"].notna().any():
        mechanism = (f"; last FPF call, probe: {100 * host['fpf/acc_before'].mean():.2f}% right before → "
                     f"{100 * host['fpf/acc_after'].mean():.2f}% right after")
    text, gap = difference(host["final/avg_acc"], by["dark_er"]["final/avg_acc"])
    out = [ClaimResult(f"FPF with Dark-ER's own loss (α·logit matching + β·CE) improves dark_er {where}",
                       "improves every method it is added to (Seq-CIFAR-10, Seq-TinyImageNet)", text + mechanism,
                       bool(gap > 0), within_noise(host["final/avg_acc"], by["dark_er"]["final/avg_acc"]))]
    if "dark_er+fpf" in by:
        ce = by["dark_er+fpf"]["final/avg_acc"]
        text, gap = difference(host["final/avg_acc"], ce)
        out.append(ClaimResult(f"the host's loss beats cross-entropy as FPF's fine-tuning loss on dark_er {where}",
                               "— (ours, issue #28: the paper fine-tunes with cross-entropy)", text,
                               bool(gap > 0), within_noise(host["final/avg_acc"], ce)))
    return out


def _fpf_claims(runs: pd.DataFrame) -> list[ClaimResult]:
    out = []
    for (scenario, buffer), group in runs.dropna(subset=["buffer"]).groupby(["scenario_name", "buffer"]):
        by = {m: g for m, g in group.groupby("method")}
        for host in ("replay", "dark_er"):
            if host in by and f"{host}+fpf" in by:
                fpf, plain = by[f"{host}+fpf"]["final/avg_acc"], by[host]["final/avg_acc"]
                text, gap = difference(fpf, plain)
                out.append(ClaimResult(f"FPF improves {host} ({scenario}, buffer {int(buffer)})",
                                       "improves every method it is added to (Seq-CIFAR-10, Seq-TinyImageNet)",
                                       text, bool(gap > 0), within_noise(fpf, plain)))
        out.extend(_host_loss_claims(scenario, buffer, by))
        kfpf = [m for m in ("kfpf_kd", "kfpf_ce") if m in by]
        if kfpf and "replay" in by:
            best = max(kfpf, key=lambda m: by[m]["final/avg_acc"].mean())
            replay = by["replay"]
            flops = by[best]["cost/train_flops"].mean() / replay["cost/train_flops"].mean()
            text, gap = difference(by[best]["final/avg_acc"], replay["final/avg_acc"])
            reaches = gap >= -100 * replay["final/avg_acc"].std()
            out.append(ClaimResult(f"k-FPF ({best}) reaches replay at a fraction of its FLOPs "
                                   f"({scenario}, buffer {int(buffer)})",
                                   "matches FPF, beats SOTA at much lower cost", f"{text}; {flops:.2f}× FLOPs",
                                   bool(reaches and flops < 1)))
    return out


def _ceiling_describe(config) -> dict:
    """The ceiling's cells as ``kfpf_ceiling``; the published grid's runs (its reference: replay at the same buffer)
    as that grid names them."""
    if config.strategy.options.get("tune"):
        return {"scenario_name": config.scenario.name, "buffer": config.strategy.options.get("mem_size"),
                "method": "kfpf_ceiling"}
    return _fpf_describe(config)


def _ceiling_claims(runs: pd.DataFrame) -> list[ClaimResult]:
    """One FPF call at the end of plain SGD, chosen on validation: against plain SGD from the same stream (the
    probe), and against the published grid's replay at the same buffer (accuracy and training FLOPs)."""
    out = []
    if not {"fpf/acc_before", "final/avg_acc"} <= set(runs.columns):
        return out
    for (scenario, buffer), group in runs.dropna(subset=["buffer"]).groupby(["scenario_name", "buffer"]):
        ceiling = group[(group["method"] == "kfpf_ceiling") & group["fpf/acc_before"].notna()]
        if ceiling.empty:
            continue
        where = f"({scenario}, buffer {int(buffer)})"
        after, before = ceiling["final/avg_acc"], ceiling["fpf/acc_before"]
        text, gap = difference(after, before)
        out.append(ClaimResult(
            f"one FPF call recovers old tasks after replay-free SGD {where}",
            "k-FPF: SGD without replay plus occasional FPF on the buffer ≈ FPF on replay methods",
            f"{text} (after vs right before the call, same runs; setting chosen on validation)",
            bool(gap > 0), within_noise(after, before)))
        replay = group[group["method"] == "replay"]
        if len(replay):
            text, gap = difference(after, replay["final/avg_acc"])
            flops = ceiling["cost/train_flops"].mean() / replay["cost/train_flops"].mean()
            out.append(ClaimResult(
                f"one FPF call at the end reaches replay {where}",
                "k-FPF matches replay-based FPF at a fraction of the compute",
                f"{text}; {flops:.2f}× replay's training FLOPs with the 12-candidate search",
                bool(gap >= 0), within_noise(after, replay["final/avg_acc"])))
    return out


def chosen_candidates(runs: pd.DataFrame) -> pd.Series:
    """Per run, the FPF candidate (modules/lr/steps) with the best validation accuracy — the first on ties, as
    the ceiling plugin chooses — or "?" when the runs logged no candidates."""
    candidates = [c for c in runs if c.startswith("fpf/val_acc/")]
    if not candidates:
        return pd.Series("?", index=runs.index)
    return runs[candidates].idxmax(axis=1).str.removeprefix("fpf/val_acc/")


def _ceiling_details(runs: pd.DataFrame, tracking_uri: str | None) -> list[str]:
    """The mechanism per (dataset, buffer), mean over seeds: test accuracy right before the one FPF call (plain
    SGD's, same runs) and right after it, for the four old experiences and the newest; the published grid's
    replay at the same buffer; and which candidate validation chose (modules / lr / steps, how many seeds)."""
    replay = runs[runs["method"] == "replay"]
    runs = runs[runs["method"] == "kfpf_ceiling"].dropna(subset=["buffer", "fpf/acc_before"])
    if runs.empty:
        return []
    experiences = sorted(int(c.rsplit("exp", 1)[1]) for c in runs if c.startswith("fpf/acc_before/exp"))
    old, newest = experiences[:-1], experiences[-1]
    lines = ["One FPF call's mechanism (test accuracy in %, mean over seeds; old = the first four experiences):", "",
             "| dataset, buffer | seeds | plain SGD → after the call | old tasks | newest task | published replay "
             "| chosen on validation (seeds) |", "|---|---|---|---|---|---|---|"]
    for (scenario, buffer), group in runs.groupby(["scenario_name", "buffer"]):
        def pair(before: list[str], after: list[str]) -> str:
            return f"{100 * group[before].mean(axis=1).mean():.1f} → {100 * group[after].mean(axis=1).mean():.1f}"
        chosen = chosen_candidates(group).value_counts()
        same = replay[(replay["scenario_name"] == scenario) & (replay["buffer"] == buffer)]
        lines.append(
            f"| {scenario}, {int(buffer)} | {len(group)} | {pair(['fpf/acc_before'], ['final/avg_acc'])} | "
            + pair([f"fpf/acc_before/exp{e}" for e in old], [f"fpf/acc_after/exp{e}" for e in old]) + " | "
            + pair([f"fpf/acc_before/exp{newest}"], [f"fpf/acc_after/exp{newest}"]) + " | "
            + (f"{100 * same['final/avg_acc'].mean():.1f} ± {100 * same['final/avg_acc'].std():.1f}" if len(same)
               else "—") + " | " + ", ".join(f"{name} ({count})" for name, count in chosen.items()) + " |")
    return lines


PUBLISHED = Reproduction(
    "FPF / k-FPF (Zhao et al., ICML 2023): forgetting-prioritised fine-tuning", "experiments/fpf_fmnist.yaml",
    "Seq-CIFAR-10 / Seq-TinyImageNet, ResNet-18, 50 epochs per task, buffers 200/500",
    "Split Fashion-MNIST and Split MNIST 5×2, ResNet-32 (1 channel), 1,000 images per class, 3 epochs, "
    "buffers 200/500, 3 seeds",
    "Module choice by pattern (BN + final linear); 3 epochs per task instead of 50; k = 8 calls of 30 steps "
    "(240 in all, lr 0.05, no momentum). These k-FPF runs predate the schedule fix of issue #28 (calls every "
    "⌊T/k⌋ = 118 iterations, the last on iteration 944 of 945).",
    _fpf_describe, _fpf_claims, "benchmarks/fpf.py", references=("experiments/fpf_darker_host_loss.yaml",),
    notes=("Mechanism, from the accuracy matrices of the 24 archived k-FPF runs (CE and KD; their final "
           "evaluation comes one SGD step after the last call): the newest task sits at 93–100% and the four "
           "older ones at 0–38% (mean 3–14%), next to naive's 0% — 30 steps on [bn, fc] at lr 0.05 do not "
           "rebalance the head, so k-FPF fails against replay here for want of fine-tuning first. "
           "experiments/kfpf_ceiling.yaml measures how far one well-chosen FPF call can go.",
           "FPF fine-tuned with Dark-ER's own objective (α·logit matching + β·CE on the buffer; "
           "experiments/fpf_darker_host_loss.yaml, the host-loss rows, 3 seeds) lands within noise of Dark-ER, "
           "where cross-entropy cost it 3.5 (Fashion-MNIST) and 1.8 (MNIST) points; it beats cross-entropy by "
           "2.7 and 1.2 points, within noise too — suggestive that the loss function is the cost, not shown. "
           "The probe: the last call moves the seen tasks by under a point (the first call, after task 1, lifts "
           "them ~15 points under either loss), so FPF with the host loss adds nothing here. Caveat: with "
           "Dark-ER's β = 0.5 the host loss's cross-entropy steps are half as large, which this grid does not "
           "separate from the logit matching."),
    position=20)


CEILING = Reproduction(
    "k-FPF's ceiling (Zhao et al., ICML 2023): one FPF call at the end of replay-free SGD",
    "experiments/kfpf_ceiling.yaml",
    "k-FPF: SGD without replay, k FPF calls on a reservoir buffer; Seq-CIFAR-10 / Seq-TinyImageNet, ResNet-18",
    "Split MNIST and Split Fashion-MNIST 5×2, ResNet-32 (1 channel), 900 training images per class "
    "(+100 for validation), 3 epochs; k = 1 call on the last iteration, its modules ([fc], [bn, fc], "
    "[bn, fc, stem conv]), lr (0.01/0.05/0.1, momentum 0.9) and steps (300/1,000 for [fc], 300 otherwise) "
    "chosen on the validation split; buffers 200/500",
    "An upper bound on what FPF calls can add to replay-free SGD here, not k-FPF itself: every candidate "
    "starts from the same end-of-stream state and the best on validation is kept; 3 epochs per task.",
    _ceiling_describe, _ceiling_claims, "benchmarks/fpf.py", references=("experiments/fpf_fmnist.yaml",),
    details=_ceiling_details,
    notes=("All 12 cells measured (2 datasets × buffers 200 and 500 × 3 seeds). One FPF call at the end of plain "
           "SGD, its setting chosen on validation images carved from the training data, lifts test accuracy from "
           "plain SGD's 17–20% to 66–69% on Split Fashion-MNIST and 84–88% on Split MNIST: the four old tasks go "
           "from 0% to 61–87% while the newest ends at 86–91%, from ~99% (table below; on Split MNIST seed 2 plain "
           "SGD itself ends with its newest task at ~45%, hence the 81.6%). At buffer 200 that is within noise of "
           "the "
           "published replay at the same buffer; at buffer 500 it is not: replay gains 8.5 (Fashion-MNIST) and 4.8 "
           "(MNIST) points from the larger buffer, one call at the end 3.1 and −4.0 — the validation choice is "
           "noisier there (one seed took [fc] alone for 1,000 steps).",
           "So the published k-FPF's 23–31% (the section above) measures its budget — 8 × 30 steps at lr 0.05 "
           "without momentum on [bn, fc] — not what FPF can recover. Cost: a cell with the 12-candidate search "
           "is 1.23–1.27× replay's training FLOPs; the stream plus the chosen call alone about 0.65× (estimated: "
           "the six BN-containing candidates cost the same). The sweep over k and steps (next section) places "
           "k-FPF itself on the paper's cost–accuracy curve."),
    position=30)


def _sweep_describe(config) -> dict:
    """The sweep's cells as ``k-FPF k×steps``; the published grid's runs (naive, replay: its reference) as that grid
    names them."""
    if config.experiment != "kfpf_sweep":
        return _fpf_describe(config)
    o = config.strategy.options
    return {"scenario_name": config.scenario.name, "buffer": o.get("mem_size"), "k": o["k"],
            "iterations": o["iterations"], "method": f"k-FPF {o['k']}×{o['iterations']}"}


def _sweep_cells(runs: pd.DataFrame) -> pd.DataFrame:
    return runs[runs["method"].str.startswith("k-FPF ")].dropna(subset=["buffer"])


def _sweep_claims(runs: pd.DataFrame) -> list[ClaimResult]:
    """Per (dataset, buffer): k-FPF against the published replay at the largest budget that stays below replay's
    training FLOPs — a rule fixed before looking at accuracy (the best cell by test accuracy would be a choice on the
    test set); it reaches replay when no further below it than replay's own seed spread, the published grid's rule.
    And whether more calls × steps buy accuracy at all (the most vs the least expensive cell)."""
    out = []
    cells = _sweep_cells(runs)
    for (scenario, buffer), group in cells.groupby(["scenario_name", "buffer"]):
        where = f"({scenario}, buffer {int(buffer)})"
        replay = runs[(runs["method"] == "replay") & (runs["scenario_name"] == scenario) & (runs["buffer"] == buffer)]
        flops = group.groupby("method")["cost/train_flops"].mean()
        if len(replay):
            ratio = flops / replay["cost/train_flops"].mean()
            cheap = ratio[ratio < 1]
            if len(cheap):
                method = cheap.idxmax()
                chosen = group[group["method"] == method]["final/avg_acc"]
                text, gap = difference(chosen, replay["final/avg_acc"])
                reaches = gap >= -100 * replay["final/avg_acc"].std()     # as the published grid's k-FPF claim
                out.append(ClaimResult(
                    f"k-FPF reaches replay at a fraction of its FLOPs {where}: {method}, the largest budget below "
                    "replay's", "k-FPF-CE/KD match FPF on replay methods at a fraction of the compute (the paper's "
                    "cost–accuracy figure)", f"{text}; {ratio[method]:.2f}× replay's training FLOPs (reaching: within "
                    "replay's seed spread)", bool(reaches)))
        if len(flops) >= 2:
            low, high = flops.idxmin(), flops.idxmax()
            a, b = group[group["method"] == high]["final/avg_acc"], group[group["method"] == low]["final/avg_acc"]
            text, gap = difference(a, b)
            out.append(ClaimResult(
                f"more FPF (calls × steps) buys accuracy {where}: {high} vs {low}",
                "accuracy grows with k and the steps per call, towards FPF on replay",
                f"{text}; {flops[high] / flops[low]:.1f}× the FLOPs", bool(gap > 0), within_noise(a, b)))
    return out


def _percent(values: pd.Series) -> str:
    """Mean in %, with its std over seeds when there is more than one."""
    spread = f" ± {100 * values.std():.1f}" if len(values) > 1 else ""
    return f"{100 * values.mean():.1f}{spread}"


def _before_after(group: pd.DataFrame, metric: str) -> str:
    """The last call's probe ``fpf/<metric>_before → _after`` as means in %, '—' for runs that did not log it."""
    before, after = group.get(f"fpf/{metric}_before"), group.get(f"fpf/{metric}_after")
    if before is None or after is None or before.isna().all():
        return "—"
    return f"{100 * before.mean():.1f} → {100 * after.mean():.1f}"


def _sweep_details(runs: pd.DataFrame, tracking_uri: str | None) -> list[str]:
    """Each k × steps cell: accuracy, forgetting, training FLOPs against the published replay's, and the mechanism —
    the last call's probe on the test data and on the buffer it tunes on (right before → right after it): whether
    the calls fit the images they tune on, and how far test accuracy follows."""
    cells = _sweep_cells(runs)
    if cells.empty:
        return []
    lines = ["The sweep, per cell (test accuracy ± its std over seeds and forgetting in %, means over seeds; FLOPs "
             "relative to the published replay at the same buffer; the last FPF call's probe, right before → right "
             "after it, on the test data and on the buffered images it tunes on — logged by runs from the Split "
             "MNIST slice on; '—' where a run predates it):", "",
             "| dataset, buffer | k × steps | seeds | final acc | forgetting | FLOPs vs replay | last call: test | "
             "last call: buffer |",
             "|---|---|---|---|---|---|---|---|"]
    for (scenario, buffer, k, steps), group in cells.groupby(["scenario_name", "buffer", "k", "iterations"]):
        replay = runs[(runs["method"] == "replay") & (runs["scenario_name"] == scenario) & (runs["buffer"] == buffer)]
        ratio = (f"{group['cost/train_flops'].mean() / replay['cost/train_flops'].mean():.2f}×" if len(replay)
                 else "—")
        lines.append(f"| {scenario}, {int(buffer)} | {int(k)} × {int(steps)} | {len(group)} | "
                     f"{_percent(group['final/avg_acc'])} | {100 * group['final/forgetting'].mean():.1f} | "
                     f"{ratio} | {_before_after(group, 'acc')} | {_before_after(group, 'buffer_acc')} |")
    published = runs[runs["method"].isin(["naive", "replay", "replay+fpf"])]
    for scenario, buffer in sorted(set(zip(cells["scenario_name"], cells["buffer"]))):
        here = published[(published["scenario_name"] == scenario)
                         & ((published["buffer"] == buffer) | published["buffer"].isna())]
        replay = here.loc[here["method"] == "replay", "cost/train_flops"].mean()
        for method, rows in here.groupby("method"):
            ratio = rows["cost/train_flops"].mean() / replay
            lines.append(f"| {scenario}, {int(buffer)} | {method} (published grid) | {len(rows)} | "
                         f"{_percent(rows['final/avg_acc'])} | {100 * rows['final/forgetting'].mean():.1f} | "
                         + (f"{ratio:.2f}×" if ratio == ratio else "—") + " | — | — |")
    return lines


SWEEP = Reproduction(
    "k-FPF's cost–accuracy sweep (Zhao et al., ICML 2023): k calls × steps on replay-free SGD",
    "experiments/kfpf_sweep.yaml",
    "k-FPF-CE/KD on Seq-CIFAR-10 / Seq-TinyImageNet, ResNet-18, 50 epochs per task; accuracy against FLOPs",
    "Split Fashion-MNIST and Split MNIST 5×2, ResNet-32 (1 channel), 1,000 images per class, 3 epochs; "
    "k ∈ {8, 20, 50} calls × {30, 100, 300} steps at round(i·T/k), the last on the final iteration; modules chosen "
    "by this run's sensitivity within 2% of the parameters; SGD lr 0.05, momentum 0.9; buffer 200",
    "3 epochs per task instead of 50; training FLOPs (cl.cost) count the stream and the FPF calls (the modules' "
    "sensitivity is their parameters' change over the stream: free).",
    _sweep_describe, _sweep_claims, "benchmarks/fpf.py --only sweep", references=("experiments/fpf_fmnist.yaml",),
    details=_sweep_details,
    notes=("Split Fashion-MNIST, buffer 200: 8 of the 9 k × steps cells over 3 seeds (not run: 50 × 300, 15,000 FPF "
           "steps, ≈ 55 core-minutes a seed). With the issue #28 fixes — the k-th call on the last iteration, "
           "momentum 0.9, modules by sensitivity — k-FPF is no longer near naive: 8 calls × 100 steps reach "
           "67.4 ± 5.6%, replay's 68.0 ± 4.0, at 0.93× its training FLOPs, where the published grid's 8 × 30 without "
           "momentum on [bn, fc] scored 25. The mechanism is the last call: it lifts test accuracy from 19–37% (little "
           "more than the newest task) to the cell's final accuracy, so the steps per call matter first (8 × 30: "
           "32.0 ± 9.1; 8 × 100: 67.4 ± 5.6) and stop mattering past 100 (8 × 300: 68.5 ± 3.0 at 1.63×). More calls "
           "help short calls (50 × 30: 61.7 ± 3.7 against 8 × 30's 32.0) and, at 100 steps, add no accuracy but cut "
           "forgetting and the seed spread (20 × 100: 67.1 ± 0.8, forgetting 20.8 against 30.1). The costliest cells "
           "score lower (20 × 300: 63.0 ± 4.0 at 3.2×; 50 × 100: 61.4 ± 5.6 at 2.8×), by about one seed spread — "
           "so the paper's picture holds up to replay's cost, and past it more FPF buys nothing here.",
           "Split MNIST, buffer 200, the same 8 cells over 3 seeds (run later, so they also probe the buffer the calls "
           "tune on): the same verdict — 8 × 100 reaches replay, 89.0 ± 1.7 against 89.6 ± 2.4 at 0.93× its FLOPs — "
           "and the same mechanism: the last call lifts test accuracy from 20–41% to the final figure. 30 steps a "
           "call are too few and erratic (8 × 30: 46.7 ± 22.7; 50 × 30: 65.8 ± 10.0); from 100 on, every cell ends "
           "with its 200 buffered images fit (99.5–100% right after the last call, from 21–53% before it), so the "
           "buffer's accuracy does not separate the cells. What does is the number of calls: at 100 steps a call, "
           "8 → 20 → 50 calls give 89.0 → 85.9 ± 2.2 → 71.5 ± 1.5 (Fashion-MNIST 67.4 → 67.1 → 61.4), while more "
           "steps a call cost nothing (8 × 300: 90.3 ± 1.2; 20 × 300: 85.9 ± 0.7, as 20 × 100). So \"thousands of "
           "steps fit the 200 images harder\" is not why the costliest cells score lower — every cell fits them; "
           "fine-tuning on the same images many times over the stream is what costs, and through what (the "
           "features, the head's balance) this grid does not say.",),
    position=35)
