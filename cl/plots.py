"""Figures of one run's accuracy matrix, rendered headless (matplotlib's object API, no pyplot).

Used for the PNG artifacts of every run and by `cl.analysis` for reports and notebooks.
"""
from __future__ import annotations

import io

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def accuracy_heatmap(R: np.ndarray, title: str = "") -> Figure:
    """R[t, j] as a heatmap: rows = after training experience t, columns = test experience j."""
    R = np.asarray(R, dtype=float)
    n = R.shape[0]
    fig = Figure(figsize=(1.0 + 0.6 * n, 0.8 + 0.55 * n), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(R * 100, vmin=0, vmax=100, cmap="viridis")
    for t in range(n):
        for j in range(n):
            if np.isfinite(R[t, j]):
                ax.text(j, t, f"{100 * R[t, j]:.0f}", ha="center", va="center", fontsize=8,
                        color="white" if R[t, j] < 0.6 else "black")
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xlabel("test experience j")
    ax.set_ylabel("after training experience t")
    ax.set_title(title or "accuracy R[t, j] (%)", fontsize=9)
    fig.colorbar(image, ax=ax, shrink=0.8)
    return fig


def accuracy_curves(R: np.ndarray, avg_seen: np.ndarray | None = None, title: str = "") -> Figure:
    """Accuracy on each experience as training proceeds, with the seen-average in bold."""
    R = np.asarray(R, dtype=float)
    n = R.shape[0]
    steps = np.arange(n)
    fig = Figure(figsize=(5.5, 3.5), layout="constrained")
    ax = fig.add_subplot()
    for j in range(n):
        ax.plot(steps[j:], 100 * R[j:, j], marker="o", markersize=3, linewidth=1, label=f"exp {j}")
    if avg_seen is not None:
        ax.plot(steps, 100 * np.asarray(avg_seen), color="black", linewidth=2.5, label="seen avg")
    ax.set_xticks(steps)
    ax.set_ylim(0, 102)
    ax.set_xlabel("after training experience")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title or "accuracy per experience", fontsize=9)
    ax.legend(fontsize=7, ncol=2, loc="lower left")
    ax.grid(alpha=0.3)
    return fig


def sensitivity_bars(names, scores, title: str = "") -> Figure:
    """FPF's per-module sensitivity (mean L1 change per parameter per experience), network order."""
    fig = Figure(figsize=(max(5.0, 0.18 * len(names) + 1.5), 3.6), layout="constrained")
    ax = fig.add_subplot()
    ax.bar(range(len(names)), scores, color="tab:orange")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=90, fontsize=6)
    ax.set_ylabel("sensitivity")
    ax.set_yscale("log")
    ax.set_title(title or "parameter change per module (L1 / #params, per experience)", fontsize=9)
    return fig


def show(fig: Figure, dpi: int = 110) -> None:
    """Display a figure in a notebook (as a PNG: the object API has no pyplot backend to show it)."""
    from IPython.display import Image, display

    display(Image(to_png(fig, dpi)))


def to_png(fig: Figure, dpi: int = 110) -> bytes:
    buffer = io.BytesIO()
    FigureCanvasAgg(fig)
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()
