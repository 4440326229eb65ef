"""The neural memory network's (Fernando et al. 2020) paper claims next to our measurements: what `clsuite report
--reproductions` renders from the archived runs (registered in `cl.registry.REPRODUCTIONS`; the benchmark script
prints the same comparisons at full detail)."""
from __future__ import annotations

import pandas as pd

from cl.reproductions import ClaimResult, Reproduction, difference, mean_std, within_noise


NMN_SYNTH_COS_GATE = 0.2     # sg's synthesizers must point this well (cosine to the true gradient) in every seed


def _nmn_describe(config) -> dict:
    o = config.transfer.options
    return {"task": o.get("task", "digits"), "method": o.get("method", "sg"), "ratio": float(o.get("fast_lr_ratio", 1)),
            "addressing": o.get("addressing", "cosine"), "synth_state": o.get("synth_state", "all")}


def nmn_chosen_runs(runs: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Per task and method, the runs of the fast/slow lr ratio with the best mean validation score (accuracy after
    the first presentation; sinusoid: MSE), and what was compared: {(task, method): {metric, scores, chosen}}."""
    keep, selection = [], {}
    for (task, method), group in runs.groupby(["task", "method"]):
        regression = task == "sinusoid"
        metric = "final/val_mse" if regression else "final/val_acc_after_first"
        scores = group.groupby("ratio")[metric].mean()
        chosen = scores.idxmin() if regression else scores.idxmax()
        selection[(task, method)] = {"metric": metric.removeprefix("final/"), "scores": scores.to_dict(),
                                     "chosen": float(chosen)}
        keep.append(group[group["ratio"] == chosen])
    return (pd.concat(keep) if keep else runs.iloc[:0]), selection


def _nmn_claims(runs: pd.DataFrame) -> list[ClaimResult]:
    """The main grid's claims (cosine addressing), then the gate and sg vs bp of each other addressing's runs
    (experiments/nmn_episodic_addressing.yaml), labelled with it."""
    addressing = runs["addressing"].fillna("cosine") if "addressing" in runs else pd.Series("cosine", runs.index)
    out = _nmn_task_claims(runs[addressing == "cosine"])
    for name, group in runs[addressing != "cosine"].groupby(addressing[addressing != "cosine"]):
        sg = group[group["method"] == "sg"]
        states = sorted(set(sg["synth_state"].fillna("all"))) if "synth_state" in sg else ["all"]
        out += _nmn_task_claims(group, f"{name} addressing, synth_state {'/'.join(states)}")
    return out


def _nmn_task_claims(runs: pd.DataFrame, variant: str = "") -> list[ClaimResult]:
    """Per task: the gate, sg vs bp (a verdict only past the gate) and — the main grid only (no `variant`) — what
    the memory learns. `variant` is added to each claim's parenthesis."""
    chosen, _ = nmn_chosen_runs(runs)
    out = []
    for task, group in chosen.groupby("task"):
        where = f"{task}, {variant}" if variant else task
        by = {m: g for m, g in group.groupby("method")}
        regression = task == "sinusoid"
        scale = 1.0 if regression else 100.0
        gate_ok = None
        if "sg" in by and "final/synth_cos" in by["sg"]:
            cos = by["sg"]["final/synth_cos"].dropna()
            gate_ok = bool(len(cos) and cos.min() >= NMN_SYNTH_COS_GATE)
            out.append(ClaimResult(
                f"the gate ({where}): sg's synthesizers predict the true future gradient (cosine ≥ "
                f"{NMN_SYNTH_COS_GATE} in every seed)",
                "synthetic gradients stand in for the true ones (DNI; the paper reports no cosine)",
                f"cosine {mean_std(cos, 1.0)}; per seed {', '.join(f'{v:.3f}' for v in cos)}", gate_ok))
        if regression:
            metrics = [("final/mse_p10", "MSE at the 10th point", False)]
        else:
            metrics = [("final/acc_p2", "accuracy at the 2nd presentation", True),
                       ("final/rare_acc_second", "rare classes' second showing", True)]
        for metric, what, higher in metrics:
            unit = (lambda t: t.replace(" points", " MSE")) if regression else (lambda t: t)  # noqa: E731
            if "sg" in by and "bp" in by and metric in group:
                sg, bp = by["sg"][metric], by["bp"][metric]
                text, gap = difference(sg, bp, scale)
                claim = f"sg beats bp ({where}, {what})"
                paper = "fast synthetic-gradient controllers adapt faster and absorb rare samples (no number " \
                        "published at this scale)"
                if not gate_ok:
                    out.append(ClaimResult(claim, paper, f"no verdict: the gate failed — {unit(text)}", None))
                else:
                    out.append(ClaimResult(claim, paper, unit(text), bool(gap > 0 if higher else gap < 0),
                                           within_noise(sg, bp, scale)))
            memory = [m for m in ("bptt", "bp", "sg") if m in by and metric in by[m]]
            if not memory or variant:
                continue
            best = (max if higher else min)(memory, key=lambda m: by[m][metric].mean())
            if metric == "final/rare_acc_second":
                values = by[best][metric]
                out.append(ClaimResult(
                    f"a class seen once is recalled at its second showing beyond label counting ({task}, {best})",
                    "rare samples are absorbed within the episode", f"{mean_std(values)} vs 50.00 by counting "
                    f"alone (two labels seen once); the memory-free LSTM {mean_std(by['lstm'][metric])}"
                    if "lstm" in by else f"{mean_std(values)} vs 50.00 by counting alone", bool(values.mean() > 0.5)))
            elif "lstm" in by and metric in by["lstm"]:
                text, gap = difference(by[best][metric], by["lstm"][metric], scale)
                out.append(ClaimResult(
                    f"the memory learns within an episode: {best} beats the memory-free LSTM ({task}, {what})",
                    "MANN (Santoro et al. 2016): a memory-augmented network beats an LSTM on episodic few-shot "
                    "learning (the NMN's premise)", unit(text), bool(gap > 0 if higher else gap < 0),
                    within_noise(by[best][metric], by["lstm"][metric], scale)))
    return out


PRESENTATIONS = (1, 2, 5, 10)


def _nmn_details(runs: pd.DataFrame, tracking_uri: str | None) -> list[str]:
    """Accuracy by presentation (digits: the 1st, 2nd, 5th, 10th showing of a class; sinusoid: MSE at those
    points) per addressing and method at its chosen lr ratio, with the gate's cosine beside it — the mechanism next
    to the numbers a verdict would rest on."""
    addressing = runs["addressing"].fillna("cosine") if "addressing" in runs else pd.Series("cosine", runs.index)
    chosen = pd.concat([nmn_chosen_runs(group)[0].assign(addressing=name)
                        for name, group in runs.groupby(addressing)]) if len(runs) else runs
    if chosen.empty:
        return []
    lines = ["Within-episode learning on the meta-test episodes, per memory addressing and method at the lr ratio "
             "chosen on validation (mean ± std over seeds; digits: accuracy in % at a class's n-th presentation, the "
             "rare classes' second showing; sinusoid: MSE at the n-th point; the synthesizers' cosine to the true "
             "future gradient for sg):", "",
             "| task | addressing | method | ratio | seeds | "
             + " | ".join(f"{n}{'st' if n == 1 else 'nd' if n == 2 else 'th'}" for n in PRESENTATIONS)
             + " | rare, 2nd showing | cosine |",
             "|---|---|---|---|---|" + "---|" * len(PRESENTATIONS) + "---|---|"]

    def cell(group: pd.DataFrame, metric: str, scale: float, digits: int) -> str:
        if metric not in group or group[metric].isna().all():
            return "—"
        values = scale * group[metric].dropna()
        spread = f" ± {values.std():.{digits}f}" if len(values) > 1 else ""
        return f"{values.mean():.{digits}f}{spread}"

    order = {"sg": 0, "bp": 1, "bptt": 2, "lstm": 3}
    groups = chosen.groupby(["task", "addressing", "method"])
    for (task, name, method), group in sorted(groups, key=lambda item: (item[0][0], item[0][1] != "cosine",
                                                                        item[0][1], order.get(item[0][2], 9))):
        regression = task == "sinusoid"
        prefix, scale, digits = ("final/mse_p", 1.0, 2) if regression else ("final/acc_p", 100.0, 1)
        by_presentation = " | ".join(cell(group, f"{prefix}{n}", scale, digits) for n in PRESENTATIONS)
        rare = "—" if regression else cell(group, "final/rare_acc_second", 100.0, 1)
        cosine = (f"{group['final/synth_cos'].mean():.2f}" if method == "sg" and "final/synth_cos" in group
                  else "—")
        lines.append(f"| {task} | {name} | {method} | {group['ratio'].iloc[0]:g} | {len(group)} | {by_presentation} "
                     f"| {rare} | {cosine} |")
    return lines


NMN_NOTES = (
    "The gate fails on both tasks, so sg gets no verdict: the synthesizers' cosine to the true future gradient is "
    "0.00 ± 0.02 (digits) and −0.01 ± 0.04 (sinusoid) over 3 seeds, at either lr ratio. sg's numbers are in the "
    "table all the same: on digits its controllers never leave chance (the synthetic gradients are noise added to "
    "every chunk's update); on the sinusoid it learns, less than bp. The target is not unpredictable: the true "
    "future gradients of two different futures of one state (the remaining labels reordered, fresh images) agree "
    "at cosine 0.50 after 150 bp updates and 0.67–0.86 at initialisation (benchmarks/nmn_gradient_ceiling.py, seed "
    "0, 64 validation episodes), so a synthesizer that sees only the state could reach about 0.7. Ours get 150 "
    "updates × 9 boundaries = 1,350 Adam steps on moving, bootstrapped targets and do not learn them; with a 10× "
    "synthesizer lr (one probe, digits, seed 0) they fit those bootstrapped targets better (cosine 0.40; "
    "0.05–0.26 in the grid) and the true gradient no better (−0.005): the targets they bootstrap from are themselves "
    "off.",
    "Why they do not learn (benchmarks/nmn_synth_capacity.py, seed 0: 150 bp updates, then the network frozen and "
    "fresh synthesizers fitted on fresh episodes). Not budget: they plateau within 250 steps — sinusoid 0.09–0.10 "
    "from step 250 to 2,000, with a 10× lr or 4× the width alike; digits 0.14 at step 300 — against a ceiling of "
    "0.68 (digits 0.66), even when fitted to the true future gradient instead of the bootstrapped one. The gradient "
    "is dominated by the memory keys' (norm 50–370 at the boundaries against 1–10 for every other state tensor: "
    "cosine addressing divides by the norm of keys that each write touches a little), and the per-slot synthesizer "
    "predicts those at 0.08–0.14 (ceiling 0.66–0.68). The controller's own state is learnable — h at 0.39–0.40 of "
    "a 0.50 ceiling from the true target (digits 0.21 of 0.30) — but not from the bootstrapped target sg trains on "
    "(−0.06 to 0.13), which carries the mispredicted key gradients back through each chunk. Where it counts, on the "
    "controllers' parameters, the update the synthetic gradients make points nowhere (cosine 0.02 to the update "
    "the true future gradients make; −0.32 for the true-target synthesizer) while the true gradients of the batch's "
    "other episodes reach 0.68. So the fix to try is in the design — synthesize the controller state's gradient "
    "only, or address the memory without the 1/‖key‖ factor — not more steps.",
    "The first of those fixes, measured: synth_state \"controller\" — the synthesizers predict h, c and the query "
    "only, as DNI for RNNs does (Jaderberg et al. §3.1); the memory tensors get no synthetic gradient, as in bp. On "
    "the frozen network (benchmarks/nmn_synth_capacity.py --synth-state controller, seed 0; sinusoid 600 steps, "
    "digits --length 50 --steps 400) it removes the pollution: h from the bootstrapped target reaches 0.28 of a 0.50 "
    "ceiling on the sinusoid (0.39 from the true target) and 0.20 of 0.30 on digits (true 0.22), where it was −0.06 "
    "to 0.13 with every tensor synthesised. Over h, c and q: sinusoid 0.23 (true 0.30, ceiling 0.33; c −0.07 against "
    "0.28 true, of 0.50), digits 0.07 (true 0.04, ceiling 0.39) — the query's gradient is learnt from neither target "
    "(0.05 and −0.03 of a 0.47 ceiling). Rerun in a later session (the script as committed, same seed and "
    "settings), the h, c, q figures come out 0.28 (true 0.31, ceiling 0.43) on the sinusoid and 0.04 (true 0.06, "
    "ceiling 0.35) on digits, not the recorded ones above; the cause is not found. The reading is the same: from "
    "the bootstrapped target about what the true one gives, well short of the ceiling. "
    "The parameter-space probe separates nothing here: a perfect controller-only "
    "synthesizer (the true h, c, q gradients) gets 0.49 against the whole true update, the wrong-episode control 0.50 "
    "(sinusoid) and 0.38 (digits). In training the gate fails all the same (experiments/"
    "nmn_episodic_controller_sg.yaml, archived, 3 seeds): −0.02 ± 0.01 and 0.05 ± 0.04 on the sinusoid (lr ratio 1, "
    "3), 0.00 ± 0.02 and −0.04 ± 0.04 on digits; and with 4× the updates (experiments/"
    "nmn_episodic_controller_long.yaml, 600, ratio 1) −0.005 ± 0.001 and −0.003 ± 0.004. There the synthesizers fit "
    "even their own targets at only 0.00–0.04 — on the frozen probe they start on a bp-trained network that stays "
    "put; in training the controllers move under them from initialisation. What changes is the harm: sg now scores "
    "as bp — digits 44 ± 4 → 74 ± 3% from the 2nd to the 10th presentation (bp 42 ± 4 → 72 ± 4%; every tensor "
    "synthesised: 19 → 20%, chance), sinusoid MSE after 10 points 1.21 ± 0.21 (bp 1.03 ± 0.09; all: 2.37 ± 0.15); "
    "at 600 updates 35 → 70% (bp 34 → 67%) and 1.03 ± 0.09 (bp 0.72 ± 0.12). With a cosine of zero its synthetic "
    "gradients carry no signal, so this sg is bp with a harmless perturbation and still gets no verdict. The other "
    "fix, addressing without the 1/‖key‖ factor, is measured next.",
    "The second fix, measured: addressing \"unit\" — the query normalised as it is made, so every key is written as "
    "a unit vector, and the read a plain dot product: nothing divides by a slot's norm. On the frozen network "
    "(benchmarks/nmn_synth_capacity.py --addressing unit, seed 0, sinusoid 600 steps, digits --length 50 --steps "
    "400; beside each, the same script with cosine) it removes the blow-up: the keys' true future gradient per "
    "episode falls from 860–3,700 to 5–9 on the sinusoid and from 36–2,700 to 2–6 on digits, the size of the other "
    "tensors' (0.02–4), and h's bootstrapped target is no longer polluted (digits: h 0.23 from it and 0.22 from the "
    "true target, of a 0.44 ceiling; with cosine 0.05 and 0.18 of 0.37). The synthesizers still miss the whole: "
    "over every tensor 0.12 of a 0.60 ceiling on the sinusoid (cosine 0.10 of 0.58) and 0.05 of 0.52 on digits "
    "(cosine 0.28 of 0.51: there the keys' gradient is the whole target, and its size at barely written slots can "
    "be read off their norm); the keys' gradient, now small, is unpredicted (0.14 and 0.03, ceilings 0.62 and 0.52), "
    "the query's too (0.00 and 0.05, ceilings 0.57 and 0.55); synthesising the controller's state only gives −0.12 "
    "(sinusoid; the query's gradient, now the largest of the three, at −0.18) and 0.12 (digits) — with cosine, the "
    "same script, 0.28 and 0.04 — so the grid synthesises every tensor (0.12 and 0.05). The ceiling after 150 bp "
    "updates (benchmarks/nmn_gradient_ceiling.py --addressing unit, digits) drops from 0.71 to 0.56. In training "
    "(experiments/nmn_episodic_addressing.yaml, archived: sg vs bp with unit addressing, lr ratio 1, 150 updates, "
    "3 seeds) the gate fails again — digits −0.001, 0.087, −0.000; sinusoid 0.034, 0.028, 0.024 — while on digits "
    "two seeds' synthesizers fit their own bootstrapped targets at 0.76 and 0.88: what they learn is their own "
    "guesses passed back through one chunk, not the gradient. sg's controllers stay at chance on digits (23 → 20% "
    "from the 2nd to the 10th presentation; bp 52 → 73%); on the sinusoid sg is near bp (MSE after 10 points "
    "0.54 ± 0.03 vs 0.49 ± 0.04). So the 1/‖key‖ factor made the keys' gradient huge but is not why the gate "
    "fails; sg still gets no verdict. Unit addressing helps bp itself on the sinusoid (0.49 ± 0.04 against "
    "1.03 ± 0.09 with cosine, the same settings in another grid; digits 52 → 73% against 42 → 72%).",
    "The memory is what learns within an episode: bp's accuracy climbs from the 2nd to the 10th presentation "
    "(42 → 72%) while the memory-free LSTM's falls (30 → 22%); on the sinusoid bp's MSE after 10 points is a third "
    "of the LSTM's. The rare variant does not separate them: the LSTM scores 54% on a rare class's second showing by "
    "label counting (its 1st-presentation accuracy, 42%, shows the same heuristic: an unseen label is due), above "
    "bp's 22% recall among ~25 stored distractors; counting alone gives 50% there.",
    "The same episodes on Fashion-MNIST and MNIST (experiments/nmn_episodic_mnist.yaml, archived; ratio 1, 3 seeds): "
    "the gate fails again (−0.02 ± 0.03, 0.03 ± 0.02); on Fashion-MNIST bp climbs 35 → 61% from the 2nd to the 10th "
    "presentation against the LSTM's 29 → 21%; on MNIST 150 updates are too few for bp (32 → 35%, one seed of "
    "three learns).",
    "The class-incremental NMN claims (experiments/nmn_mnist.yaml, archived in benchmarks/results/nmn_mnist.jsonl) "
    "are retired, not carried over: there the output head read the encoder, so the memory could not matter "
    "(nmn_sg, nmn_bp and naive: 20.4, 20.4, 20.8% on Split MNIST); the synthesizers' cosine was 0.007–0.035 in all "
    "9 runs; every one of the 128 slots is rewritten within 4 minibatches and all were last written in the final "
    "experience, old tasks at 0% (benchmarks/nmn_ci_probe.py, Split digits); and the rare-class stream leaves rare "
    "classes at 0% for naive and replay too, right after they are taught — a protocol in which no method can show "
    "the claim.",
)


REPRODUCTION = Reproduction(
    "Neural memory networks with fast & slow controllers (Fernando et al., 2020)", "experiments/nmn_episodic.yaml",
    "meta-learning classification (MANN's episodic protocol) and regression; architecture not published",
    "MANN-style episodes: 50 steps of (x_t, y_{t−1}), 5 classes with labels shuffled per episode, memory reset per "
    "episode, 64 slots; sklearn digits 0–4 at four rotations (20 classes) for meta-training, 5–9 for meta-test; "
    "MAML's sinusoid, 20 points; sg vs bp (truncation 5) vs a memory-free LSTM, 150 updates of 16 episodes (Adam), "
    "the fast/slow lr ratio (1 or 3) chosen per method on validation episodes; 3 seeds",
    "Our design throughout (strategies/nmn_episodic.py lists every open choice): key/value memory with MANN's "
    "least-recently-used writes; the rare variant shows two classes once (one would be given away by label "
    "counting); digits instead of Omniglot.",
    _nmn_describe, _nmn_claims, "benchmarks/nmn.py",
    details=_nmn_details, notes=NMN_NOTES, references=("experiments/nmn_episodic_addressing.yaml",),
    position=40)
