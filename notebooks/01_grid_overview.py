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
# # Grid overview
#
# Final metrics of every group of a grid (mean ± std over seeds), the average accuracy over the
# experiences seen as training proceeds (a band of ±1 std over seeds), and the accuracy matrix
# R[t, j] of each group averaged over its seeds. Everything here comes from `cl.analysis`, reading
# the MLflow store; nothing is computed only in this notebook.
#
# Parameters: the tracking URI and the experiment (by default read from `CLSUITE_TRACKING_URI`
# and `CLSUITE_EXPERIMENT`; papermill can inject them into the cell tagged `parameters`).

# %% tags=["parameters"]
import os

TRACKING_URI = os.environ.get("CLSUITE_TRACKING_URI")        # None: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db
EXPERIMENT = os.environ.get("CLSUITE_EXPERIMENT", "quickstart")

# %%
from cl import analysis, plots
from cl.plots import show

runs = analysis.load_experiment(EXPERIMENT, tracking_uri=TRACKING_URI)
columns = analysis.report_columns(runs)
summary = analysis.summarize(runs, columns)
print(f"{len(runs)} runs in {summary.shape[0]} groups")
analysis.summary_table(summary, columns)

# %% [markdown]
# ## Accuracy over the experiences seen, as training proceeds

# %%
histories = analysis.load_histories(runs, ["acc/avg_seen"], tracking_uri=TRACKING_URI)
if histories.empty:
    print("no per-experience accuracy in these runs (transfer experiments log none)")
else:
    show(analysis.curves_plot(analysis.curves_over_seeds(histories, "acc/avg_seen"), "acc/avg_seen"))

# %% [markdown]
# ## Accuracy matrices R[t, j], averaged over seeds

# %%
for label, R in analysis.mean_accuracy_matrices(runs, tracking_uri=TRACKING_URI).items():
    show(plots.accuracy_heatmap(R, title=f"{label}: R[t, j] (%), mean over seeds"))

# %% [markdown]
# ## The headline metric per group

# %%
metric = analysis.headline_metric(columns)
show(analysis.comparison_plot(summary, metric))
