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
# # Transfer experiments
#
# The final metrics of a transfer experiment's groups (mean ± std over seeds), and what each
# method costs: trainable transfer parameters (ScaLearn, baselines), activation memory of a
# training step (MobileTL), FLOPs. ScaLearn runs also show the learned scale ω of each source
# adapter; CMT runs, the retention of streamed knowledge. Works on any experiment of `transfer:`
# runs (ScaLearn, MobileTL, MemControl, TimeTic, SkillPacks, CMT).

# %% tags=["parameters"]
import os

TRACKING_URI = os.environ.get("CLSUITE_TRACKING_URI")
EXPERIMENT = os.environ.get("CLSUITE_EXPERIMENT", "scalearn_glue")

# %%
from cl import analysis
from cl.plots import show
from IPython.display import display

runs = analysis.load_experiment(EXPERIMENT, tracking_uri=TRACKING_URI)
columns = analysis.report_columns(runs)
summary = analysis.summarize(runs, columns)
analysis.summary_table(summary, columns)

# %%
headline = analysis.headline_metric(columns)
show(analysis.comparison_plot(summary, headline))

# %% [markdown]
# ## Accuracy against what the method trains or stores

# %%
# ScaLearn/baselines: transfer parameters; MobileTL: activation memory; SkillPacks: bytes of the stored packs;
# CMT/RAG: bytes stored per streamed document; every method: training FLOPs where counted
for cost in ("memory/transfer_params", "memory/trainable_params", "memory/activation_bytes", "memory/pack_bytes",
             "memory/bank_bytes_per_document", "cost/train_flops"):
    if f"{cost}.mean" in summary and summary[f"{cost}.mean"].gt(0).any():
        show(analysis.tradeoff_plot(summary[summary[f"{cost}.mean"] > 0], cost, headline, log_x=True))

# %% [markdown]
# ## Memory per method (MobileTL: activation bytes of one training step)

# %%
if "memory/activation_bytes.mean" in summary:
    show(analysis.comparison_plot(summary, "memory/activation_bytes"))

# %% [markdown]
# ## ScaLearn: the learned scale of each adapter (mean of ω over its entries)

# %%
omega_columns = sorted(c for c in runs.columns if c.startswith("omega/"))
if omega_columns:
    display(runs.groupby("label")[omega_columns].mean().round(3))
else:
    print("no ScaLearn runs in this experiment")

# %% [markdown]
# ## CMT: what the frozen LM still answers along the document stream
# F1 on the questions of every document seen so far, and of the first stream batch, after each
# checkpointed stream batch (mean ± std over seeds).

# %%
retention = analysis.load_histories(runs, ("retention/seen_f1", "retention/first_f1"), tracking_uri=TRACKING_URI)
if retention.empty:
    print("no CMT runs in this experiment")
for metric in retention["metric"].unique():
    show(analysis.curves_plot(analysis.curves_over_seeds(retention, metric), metric, xlabel="after stream batch"))
