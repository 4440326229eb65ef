"""What the suite reproduces: each paper's claim beside our measurement, from MLflow runs.

`clsuite report --reproductions` writes ``docs/reproductions.md`` from the benchmark grids'
runs: for every method, the paper's claim (number and setting), our setting, our measured
numbers (mean ± std over seeds, n), whether the effect goes the same direction, and the
known deviations. A claim whose runs are not in the store reads "not measured".

Each method brings its claims (a `Reproduction`, in a ``claims.py`` beside its code) and
registers it in `cl.registry.REPRODUCTIONS`; this module is the engine that collects and renders
them, in the order of their `position`. Each names its grid file; the runs are the grid's cells
(by config hash), so the report counts exactly what the grid defines. The benchmark scripts
print the same comparisons at full detail, with their own table code.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class ClaimResult:
    claim: str
    paper: str
    ours: str
    holds: bool | None          # None: not measured
    within_noise: bool = False  # the gap is no larger than its noise (`within_noise`): shown, not judged

    @property
    def verdict(self) -> str:
        """What the report and the benchmark scripts print: yes, no, within noise or not measured."""
        if self.holds is None:
            return "not measured"
        return "within noise" if self.within_noise else "yes" if self.holds else "no"

    @property
    def shown(self) -> bool:
        """The claim holds, beyond noise: what a benchmark's RESULT line counts."""
        return self.verdict == "yes"


@dataclass(frozen=True)
class Reproduction:
    title: str
    grid: str                   # relative to the project root
    paper_setting: str
    our_setting: str
    deviations: str
    describe: Callable          # RunConfig -> dict of columns added to each run
    claims: Callable            # runs frame -> list[ClaimResult]
    benchmark: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)
    position: int = 0           # where the report places it (the suite's own: strategies first, then transfer)
    # further grids whose runs (when the store has them) join `grid`'s before `claims`: a follow-up grid that
    # reuses this one's cells as its comparison, its claims shown only once it has runs
    references: tuple[str, ...] = ()
    details: Callable | None = None   # (runs frame, tracking_uri) -> markdown lines shown under the claims: what
    #                                   a final value cannot show, e.g. a probe's curve from the metric histories

    def __post_init__(self):
        for name in ("notes", "references"):
            if isinstance(getattr(self, name), str):     # ("one paragraph") is a str: each letter would render alone
                raise TypeError(f"Reproduction {self.title!r}: {name} must be a tuple of strings, got one string — "
                                "write (text,) with a trailing comma")


def reproductions() -> list[Reproduction]:
    """Every registered reproduction, in report order."""
    from cl.registry import REPRODUCTIONS

    return sorted((entry.load() for entry in REPRODUCTIONS.entries()), key=lambda r: (r.position, r.title))


def cell_runs(experiment: str, cells, describe: Callable, *, tracking_uri: str | None = None) -> pd.DataFrame:
    """The FINISHED runs of `cells` (`cl.grid.Cell`s) in `experiment`, with `describe(config)` columns added."""
    from cl.analysis import load_runs

    by_hash = {c.config_hash: c for c in cells}
    runs = load_runs(experiment, tracking_uri=tracking_uri, config_hashes=list(by_hash))
    if runs.empty:
        return runs
    extra = pd.DataFrame([describe(by_hash[h].config) for h in runs["config_hash"]], index=runs.index)
    return pd.concat([runs, extra], axis=1)


def grid_runs(grid: str | Path, describe: Callable, *, tracking_uri: str | None = None) -> pd.DataFrame:
    """The FINISHED runs of a grid file's cells, with `describe(config)` columns added."""
    from cl.grid import expand, load_grid

    spec = load_grid(ROOT / grid)
    return cell_runs(spec.experiment_name, expand(spec), describe, tracking_uri=tracking_uri)


def mean_std(values: pd.Series, scale: float = 100.0) -> str:
    values = scale * values.dropna()
    if values.empty:
        return "—"
    if len(values) == 1:
        return f"{values.iloc[0]:.2f} (n = 1)"
    return f"{values.mean():.2f} ± {values.std():.2f} (n = {len(values)})"


def difference(a: pd.Series, b: pd.Series, scale: float = 100.0) -> tuple[str, float]:
    """Mean of a − mean of b in points, with the std of each. The gap is rounded as printed, so a verdict never
    rests on a difference the table shows as +0.00."""
    gap = round(scale * (a.mean() - b.mean()), 2) + 0.0          # + 0.0: no "-0.00"
    return f"{gap:+.2f} points ({mean_std(a, scale)} vs {mean_std(b, scale)})", gap


def within_noise(a: pd.Series, b: pd.Series, scale: float = 100.0, items: int | None = None) -> bool:
    """Whether mean(a) − mean(b) is at most twice its standard error, √(s_a²/n_a + s_b²/n_b) over seeds.

    A screen, not a test (≈ 95% under normality; with 3 seeds a t-test would be stricter): a claim that one
    method beats another is not shown by a gap this small. Compared as printed, like `difference`. With fewer
    than two values on a side the seeds' spread is unknown and adds nothing.

    `items`: when every run scores the same small evaluation set (values are mean per-item scores in [0, 1]),
    that set's own sampling noise — which seeds answering the same questions do not average away — adds
    p(1 − p)/items per side (for a per-item score in [0, 1], such as F1, p(1 − p) bounds its variance).
    """
    a, b = a.dropna(), b.dropna()
    variance = sum(x.var() / len(x) for x in (a, b) if len(x) >= 2)
    if items:
        variance += sum(x.mean() * (1 - x.mean()) / items for x in (a, b))
    elif len(a) < 2 or len(b) < 2:
        return False
    return round(scale * abs(a.mean() - b.mean()), 2) <= round(2 * scale * variance ** 0.5, 2)




def reproduction_for(grid: str) -> Reproduction:
    """The reproduction whose grid file is ``grid`` (relative to the project root, e.g. experiments/fpf_fmnist.yaml)."""
    known = reproductions()
    for reproduction in known:
        if reproduction.grid == grid:
            return reproduction
    raise KeyError(f"no reproduction for grid {grid!r}; known: {[r.grid for r in known]}")


def runs_for(reproduction: Reproduction, *, tracking_uri: str | None = None) -> pd.DataFrame:
    """The FINISHED runs of the reproduction's grid, with those of its `references` grids when it has runs."""
    runs = grid_runs(reproduction.grid, reproduction.describe, tracking_uri=tracking_uri)
    if runs.empty:
        return runs
    more = [grid_runs(grid, reproduction.describe, tracking_uri=tracking_uri) for grid in reproduction.references]
    more = [frame for frame in more if not frame.empty]
    return pd.concat([runs, *more], ignore_index=True) if more else runs


def measured(reproduction: Reproduction, *, tracking_uri: str | None = None) -> tuple[list[ClaimResult], list[str]]:
    """The reproduction's claims and its `details` lines, both from one read of its runs; nothing without runs."""
    runs = runs_for(reproduction, tracking_uri=tracking_uri)
    if runs.empty:
        return [], []
    details = [] if reproduction.details is None else list(reproduction.details(runs, tracking_uri))
    return reproduction.claims(runs), details


def render(results: list[tuple], source: str) -> str:
    """Markdown for (reproduction, claims) or (reproduction, claims, details lines) tuples."""
    lines = ["# What clsuite reproduces", "",
             f"Generated by `clsuite report --reproductions` from {source}. Each row is a claim of the paper",
             "next to our measurement (mean ± std over seeds, n = seeds) and whether the effect goes the same",
             "direction here. The settings differ (CPU scale); the deviations say how. \"Within noise\": one",
             "method was claimed to beat another and the gap is at most twice its standard error over seeds",
             "(√(s_a²/n_a + s_b²/n_b); for CMT plus its 64 questions' sampling noise), so our runs do not tell",
             "the two apart.", ""]
    for rep, claims, *extra in results:
        details = extra[0] if extra else []
        lines += [f"## {rep.title}", "",
                  f"- Paper's setting: {rep.paper_setting}",
                  f"- Our setting: {rep.our_setting} (`{rep.grid}`" + (f", `{rep.benchmark}`" if rep.benchmark else "")
                  + ")",
                  f"- Known deviations: {rep.deviations}", ""]
        for note in rep.notes:                           # one paragraph each
            lines += [f"> {note}", ""]
        if not claims and not details:
            lines += ["Not measured yet: no finished runs of this grid in the store.", ""]
            continue
        if claims:
            lines += ["| claim | paper | ours | same direction |", "|---|---|---|---|"]
            lines += [f"| {c.claim} | {c.paper} | {c.ours} | {'**no**' if c.verdict == 'no' else c.verdict} |"
                      for c in claims]
        else:
            lines.append("No claim can be judged from the runs finished so far (a claim compares methods that "
                         "have not all run yet).")
        lines.append("")
        if details:
            lines += [*details, ""]
    return "\n".join(lines)


def write_report(path: str | Path, *, tracking_uri: str | None = None, source: str = "the tracking store") -> str:
    results = [(rep, *measured(rep, tracking_uri=tracking_uri)) for rep in reproductions()]
    text = render(results, source)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text + "\n", encoding="utf-8")
    return text


def store_from_results(folder: str | Path, store: str | Path) -> str:
    """A SQLite store (at `store`) holding every ``*.jsonl`` of `folder` (`cl.archive` files)."""
    from cl.archive import import_runs

    uri = f"sqlite:///{Path(store).resolve()}"
    for path in sorted(Path(folder).glob("*.jsonl")):
        import_runs(path, tracking_uri=uri)
    return uri

