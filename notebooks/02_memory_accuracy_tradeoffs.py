# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Memory, compute and accuracy
#
# Strategies compared at what they cost: final average accuracy against the total memory
# footprint (parameters × 4 bytes + exemplars × their bytes, MEMO's protocol) and against
# training FLOPs (`cost/train_flops`, `cl.cost`). The dashed line is the Pareto front: no other
# group is both cheaper and more accurate. For FPF runs, the per-module sensitivity that
# decides which modules FPF fine-tunes is shown at the end.

# %% tags=["parameters"]
import os

TRACKING_URI = os.environ.get("CLSUITE_TRACKING_URI")
EXPERIMENT = os.environ.get("CLSUITE_EXPERIMENT", "quickstart")

# %%
from cl import analysis, plots
from cl.plots import show

runs = analysis.load_experiment(EXPERIMENT, tracking_uri=TRACKING_URI)
columns = [c for c in ("final/avg_acc", "final/memory_mb", "cost/train_flops", "final/train_seconds")
           if c in runs.columns]
summary = analysis.summarize(runs, columns)
analysis.summary_table(summary, columns)

# %%
if {"final/avg_acc", "final/memory_mb"} <= set(runs.columns):
    show(analysis.tradeoff_plot(summary, "final/memory_mb", "final/avg_acc", title="accuracy vs. memory (MB)"))

# %%
if {"final/avg_acc", "cost/train_flops"} <= set(runs.columns):
    show(analysis.tradeoff_plot(summary, "cost/train_flops", "final/avg_acc", log_x=True,
                                title="accuracy vs. training FLOPs"))

# %% [markdown]
# ## Groups at equal memory
#
# Groups whose memory footprints lie within 5% of each other, side by side.

# %%
if "final/memory_mb.mean" in summary:
    ordered = summary.sort_values("final/memory_mb.mean").reset_index(drop=True)
    bucket = (ordered["final/memory_mb.mean"].pct_change().fillna(1) > 0.05).cumsum()
    for _, same in ordered.groupby(bucket):
        if len(same) > 1:
            print(analysis.summary_table(same, columns).to_string(index=False), "\n")

# %% [markdown]
# ## FPF: which modules change most between tasks

# %%
shown = 0
for _, run in runs.iterrows():
    data = analysis.run_artifact_json(run["run_id"], "fpf/sensitivity.json", tracking_uri=TRACKING_URI)
    if data and shown < 2:
        names = list(data["score"])
        show(plots.sensitivity_bars(names, [data["score"][n] for n in names], title=f"{run['label']}, seed {run['seed']}"))
        shown += 1
if not shown:
    print("no FPF runs in this experiment")
