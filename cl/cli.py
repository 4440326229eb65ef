"""`clsuite` command line: run, grid expand|launch, report, ui, list, data list|fetch, runs, and the commands
methods add through `cl.registry.COMMANDS` (e.g. TimeTic's ``recommend``).

Only the command-line modules print (this one, `cl.console`, and the methods' command functions). It imports torch, Avalanche and MLflow lazily, inside the commands
that need them, so ``clsuite --help`` and ``clsuite grid expand`` answer instantly.
Exit codes: 0 success, 1 some runs failed, 2 bad input (the message names the field).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from cl.console import TrackingOpt, console, err_console, setup_logging, user_errors
from cl.errors import ConfigError

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Continual-learning experiment grids, tracked in MLflow.")
grid_app = typer.Typer(no_args_is_help=True, help="Expand or launch a YAML grid.")
app.add_typer(grid_app, name="grid")
runs_app = typer.Typer(no_args_is_help=True, help="Carry finished runs between stores (JSON lines).")
app.add_typer(runs_app, name="runs")
data_app = typer.Typer(no_args_is_help=True, help="The datasets experiments read: where they must lie; fetch them.")
app.add_typer(data_app, name="data")

ResumeAnyCodeOpt = typer.Option(False, "--resume-any-code", help="resume from checkpoints written by another "
                                "code version (git SHA); refused by default")

# --------------------------------------------------------------------------- run


@app.command()
def run(
    config: Path = typer.Argument(..., help="YAML with scenario, model, strategy, train (and seed)"),
    seed: Optional[int] = typer.Option(None, help="training seed (overrides the file)"),
    set_: list[str] = typer.Option([], "--set", help="override a field: --set train.lr=0.05"),
    tracking_uri: Optional[str] = TrackingOpt,
    resume: bool = typer.Option(False, "--resume", help="continue this config's run left unfinished by a dead "
                                "process from its checkpoint, in the same MLflow run (else start a new run)"),
    resume_any_code: bool = ResumeAnyCodeOpt,
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Train one configuration in this process and log it to MLflow."""
    setup_logging(verbose)
    _allow_other_code(resume_any_code)
    with user_errors():
        from cl.config import load_run_config

        overrides = _parse_sets(set_)
        if seed is not None:
            overrides["seed"] = seed
        cfg = load_run_config(config, overrides)
    from cl.runner import run as run_one

    with user_errors(), _progress(console.is_terminal) as progress:
        task = progress.add_task(cfg.title, total=None)
        result = run_one(cfg, tracking_uri=tracking_uri, resume=resume,
                         on_progress=lambda d, t, w: progress.update(task, completed=d, total=t, description=w))
    if not result.ok:
        err_console.print(f"[bold red]FAILED[/] run {result.run_id}: {result.reason}", highlight=False)
        raise typer.Exit(1)
    table = Table(title=f"run {result.run_id} ({cfg.experiment})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    from cl.analysis import format_mean_std

    for key, value in result.metrics.items():
        if key.startswith("final/"):
            table.add_row(key, format_mean_std(value, float("nan"), key))
    console.print(table)


def _allow_other_code(allow: bool) -> None:
    if allow:   # read by cl.checkpoint, in this process and the workers it starts
        from cl.checkpoint_file import ANY_CODE_ENV

        os.environ[ANY_CODE_ENV] = "1"


def _parse_sets(items: list[str]) -> dict:
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.lr=0.05")
        out[key.strip()] = yaml.safe_load(value)
    return out


# --------------------------------------------------------------------------- grid


@grid_app.command("expand")
def grid_expand(
    grid: Path = typer.Argument(..., help="grid YAML"),
    as_json: bool = typer.Option(False, "--json", help="one JSON object per cell"),
) -> None:
    """List the cells of a grid (validated) with their config hashes. Imports no torch."""
    with user_errors():
        from cl.grid import expand, load_grid

        spec = load_grid(grid)
        cells = expand(spec, source=str(grid))
    if as_json:
        import json

        for cell in cells:
            print(json.dumps({"label": cell.label, "seed": cell.seed, "config_hash": cell.config_hash,
                              "group_hash": cell.config.group_hash, "config": cell.config.to_dict()}))
        return
    table = Table(title=f"grid {spec.name}: {len(cells)} cells → experiment {spec.experiment_name}")
    for col in ("#", "cell", "seed", "config_hash", "group_hash"):
        table.add_column(col)
    for i, cell in enumerate(cells, 1):
        table.add_row(str(i), cell.label, str(cell.seed), cell.config_hash, cell.config.group_hash)
    console.print(table)


@grid_app.command("launch")
def grid_launch(
    grid: Path = typer.Argument(..., help="grid YAML"),
    workers: int = typer.Option(1, min=1, help="parallel runs (processes, or Ray tasks)"),
    backend: str = typer.Option("local", help="local | ray"),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="rerun cells whose last run FAILED"),
    gpus_per_cell: float = typer.Option(0.0, help="Ray: GPUs each cell requests (fractions share a GPU, "
                                        "e.g. 0.5 runs two cells per GPU); use with train.device: auto"),
    cpus_per_cell: float = typer.Option(1.0, help="Ray: CPUs each cell requests (> 0, fractions allowed)"),
    tracking_uri: Optional[str] = TrackingOpt,
    report: bool = typer.Option(True, "--report/--no-report", help="print the results table at the end"),
    resume_any_code: bool = ResumeAnyCodeOpt,
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Run every cell not yet FINISHED (continuing from checkpoints where a dead launch left them), then print
    the results table."""
    setup_logging(verbose)
    _allow_other_code(resume_any_code)
    with user_errors():
        if backend not in ("local", "ray"):
            raise ConfigError(f"--backend: {backend!r} is not a backend; use local or ray")
        from cl.devices import CellResources
        from cl.grid import expand, load_grid
        from cl.launch import launch

        resources = CellResources(gpus=gpus_per_cell, cpus=cpus_per_cell)
        spec = load_grid(grid)
        cells = expand(spec, source=str(grid))
        reporter = _GridReporter(console)
        with reporter:
            summary = launch(spec, cells, tracking_uri=tracking_uri, workers=workers, backend=backend,
                             retry_failed=retry_failed, reporter=reporter, grid_yaml=grid.read_text(),
                             resources=resources)
    console.print(
        f"grid [bold]{spec.name}[/]: {summary.total} cells — {summary.finished} finished now, "
        f"{summary.skipped_finished} already finished, {len(summary.failed)} failed"
        + (f", {summary.resumed} resumed from checkpoints" if summary.resumed else ""), highlight=False)
    for label, seed, warning in summary.warnings:
        err_console.print(f"⚠ {label} seed={seed}: {warning}", highlight=False, markup=False)
    if report:
        _report(spec.experiment_name, [c.config_hash for c in cells], tracking_uri,
                title=f"{spec.name} ({spec.experiment_name})", plot_name=spec.name)
    if summary.failed:
        err_console.print("[bold red]failed cells:[/]")
        for label, seed, reason in summary.failed:
            err_console.print(f"  {label} seed={seed}: {reason}", highlight=False, markup=False)
        if summary.skipped_failed:
            err_console.print("rerun them with --retry-failed")
        raise typer.Exit(1)


class _GridReporter:
    """Progress bars for a launch (off when stdout is not a terminal) and one line per cell."""

    def __init__(self, out: Console):
        self.out = out
        self.progress = _progress(out.is_terminal)
        self.tasks: dict[str, int] = {}
        self.done = 0
        self.total = 0

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

    def launch_started(self, total: int, skipped: int) -> None:
        self.total = total
        if skipped:
            self.out.print(f"skipping {skipped} cell(s) already recorded", highlight=False)
        self.grid_task = self.progress.add_task("grid", total=total)

    def cell_started(self, cell) -> None:
        self.tasks[cell.config_hash] = self.progress.add_task(f"  {cell.label} s{cell.seed}", total=None)

    def cell_progress(self, cell, done: int, total: int, what: str) -> None:
        task = self.tasks.get(cell.config_hash)
        if task is not None:
            self.progress.update(task, completed=done, total=total,
                                 description=f"  {cell.label} s{cell.seed}: {what}")

    def cell_finished(self, cell, status: str, reason: Optional[str]) -> None:
        self.done += 1
        task = self.tasks.pop(cell.config_hash, None)
        if task is not None:
            self.progress.remove_task(task)
        self.progress.advance(self.grid_task)
        colour = "green" if status == "FINISHED" else "red"
        line = f"[{self.done}/{self.total}] [{colour}]{status}[/] {cell.label} seed={cell.seed}"
        if reason and status != "FINISHED":
            line += f" — {reason}"
        self.progress.console.print(line, highlight=False)


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, disable=not enabled, transient=False)


# --------------------------------------------------------------------------- report


@app.command()
def report(
    grid: Optional[Path] = typer.Argument(None, help="grid YAML (report its cells)"),
    experiment: Optional[str] = typer.Option(None, "--experiment", "-e", help="report a whole experiment"),
    tracking_uri: Optional[str] = TrackingOpt,
    plot_dir: Path = typer.Option(Path("reports"), help="where the comparison plot is saved"),
    reproductions: bool = typer.Option(False, "--reproductions",
                                       help="write the paper-vs-ours report of every benchmark grid"),
    out: Path = typer.Option(Path("docs/reproductions.md"), help="with --reproductions: the file written"),
) -> None:
    """Final metrics per group (mean ± std over seeds) and a comparison plot; or, with
    --reproductions, docs/reproductions.md from the benchmark runs (default: the archived runs,
    in the folder pyproject.toml names under tool.clsuite.archive; else those of --tracking-uri)."""
    if reproductions:
        _reproductions(tracking_uri, out)
        return
    with user_errors():
        if (grid is None) == (experiment is None):
            raise ConfigError("report: give either a grid YAML, --experiment NAME or --reproductions")
        if grid is not None:
            from cl.grid import expand, load_grid

            spec = load_grid(grid)
            cells = expand(spec, source=str(grid))
            found = _report(spec.experiment_name, [c.config_hash for c in cells], tracking_uri,
                            title=f"{spec.name} ({spec.experiment_name})", plot_name=spec.name, plot_dir=plot_dir)
        else:
            found = _report(experiment, None, tracking_uri, title=experiment, plot_name=experiment,
                            plot_dir=plot_dir)
    if not found:
        raise typer.Exit(1)


def _reproductions(tracking_uri: Optional[str], out: Path) -> None:
    import tempfile

    from cl.archive import PROJECT_ROOT, archive_dir
    from cl.reproductions import store_from_results, write_report

    if tracking_uri is None:
        archive = archive_dir()
        with tempfile.TemporaryDirectory() as tmp:
            uri = store_from_results(archive, Path(tmp) / "mlflow.db")
            write_report(out, tracking_uri=uri,
                         source=f"the runs kept in `{archive.relative_to(PROJECT_ROOT).as_posix()}/`")
    else:
        write_report(out, tracking_uri=tracking_uri, source=f"the store {tracking_uri}")
    console.print(f"reproduction report: {out}", highlight=False)


def _report(experiment: str, config_hashes, tracking_uri, *, title: str, plot_name: str,
            plot_dir: Path = Path("reports")) -> bool:
    from cl.analysis import (comparison_plot, headline_metric, health_warnings, load_runs, report_columns, summarize,
                             summary_table)
    from cl.plots import to_png

    runs = load_runs(experiment, tracking_uri=tracking_uri, config_hashes=config_hashes)
    if runs.empty:
        err_console.print(f"no FINISHED runs found in experiment {experiment!r}")
        return False
    columns = report_columns(runs)
    summary = summarize(runs, columns)
    text = summary_table(summary, columns)
    table = Table(title=f"{title}: mean ± std over seeds")
    for column in text.columns:
        table.add_column(column, justify="left" if column == "group" else "right")
    for row in text.itertuples(index=False):
        table.add_row(*(str(v) for v in row))
    console.print(table)
    for label, seed, warning in health_warnings(runs):
        console.print(f"⚠ {label} seed={seed}: {warning}", highlight=False, markup=False)
    plot_dir.mkdir(parents=True, exist_ok=True)
    path = plot_dir / f"{plot_name}_comparison.png"
    metric = headline_metric(columns)
    path.write_bytes(to_png(comparison_plot(summary, metric, title=f"{title}: {metric}")))
    console.print(f"comparison plot: {path}", highlight=False)
    return True


# --------------------------------------------------------------------------- ui, list


@app.command()
def ui(
    tracking_uri: Optional[str] = TrackingOpt,
    port: int = typer.Option(5000, help="port on 127.0.0.1"),
    grid: Optional[str] = typer.Option(None, "--grid", help="print the address that lists this grid's cells"),
    serve: bool = typer.Option(True, "--serve/--no-serve", help="start the UI (--no-serve: only print the address)"),
) -> None:
    """Start the MLflow UI on 127.0.0.1 for the store in use (and print the address of a grid's runs)."""
    from cl.tracking import client_for, grid_url, resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    base = f"http://127.0.0.1:{port}"
    address = base
    if grid is not None:
        try:
            address = grid_url(client_for(uri), grid, base)
        except LookupError as error:
            err_console.print(str(error))
            raise typer.Exit(2)
    console.print(f"MLflow UI for {uri} at {address}", highlight=False, soft_wrap=True)
    if not serve:
        return
    mlflow_bin = shutil.which("mlflow") or str(Path(sys.executable).with_name("mlflow"))
    raise typer.Exit(subprocess.call([mlflow_bin, "ui", "--backend-store-uri", uri,
                                      "--host", "127.0.0.1", "--port", str(port)]))


@runs_app.command("export")
def runs_export(
    experiment: str = typer.Argument(..., help="MLflow experiment"),
    to: Path = typer.Option(..., "--to", help="file to write (JSON lines)"),
    tracking_uri: Optional[str] = TrackingOpt,
) -> None:
    """Write an experiment's FINISHED runs (tags, params, metric histories, text artifacts) to a file."""
    from cl.archive import export_runs

    with user_errors():
        try:
            count = export_runs(experiment, to, tracking_uri=tracking_uri)
        except LookupError as error:
            raise ConfigError(str(error)) from error
    console.print(f"{count} runs of {experiment!r} written to {to}", highlight=False)


@runs_app.command("import")
def runs_import(
    source: Path = typer.Argument(..., exists=True, dir_okay=False, help="a file written by `runs export`"),
    experiment: Optional[str] = typer.Option(None, help="import into this experiment (default: the run's own)"),
    tracking_uri: Optional[str] = TrackingOpt,
) -> None:
    """Recreate exported runs in a store; runs already there (same source or config hash) are skipped."""
    from cl.archive import import_runs

    summary = import_runs(source, tracking_uri=tracking_uri, experiment=experiment)
    console.print(f"{summary.imported} runs imported, {summary.skipped} already there", highlight=False)


@app.command("list")
def list_entries(kind: str = typer.Argument(
        "all", help="strategies | plugins | transfers | scenarios | models | all")) -> None:
    """What can be named in a config."""
    from cl.registry import REGISTRIES

    kinds = {"strategies": "strategy", "plugins": "plugin", "transfers": "transfer", "scenarios": "scenario",
             "models": "model"}
    with user_errors():
        if kind != "all" and kind not in kinds:
            raise ConfigError(f"list: {kind!r} is not one of {', '.join(kinds)}, all")
        for plural, singular in kinds.items():
            if kind not in ("all", plural):
                continue
            table = Table(title=plural)
            for col in ("name", "options", "summary"):
                table.add_column(col)
            for entry in REGISTRIES[singular].entries():
                table.add_row(entry.name, ", ".join(entry.params.model_fields), entry.summary)
            console.print(table)


# --------------------------------------------------------------------------- data

RootOpt = typer.Option(None, "--root", help="the data root (default: $CLSUITE_DATA_ROOT, else ./data)")


@data_app.command("list")
def data_list(
    root: Optional[str] = RootOpt,
    as_json: bool = typer.Option(False, "--json", help="one JSON object per dataset"),
) -> None:
    """Every dataset a scenario or transfer experiment reads: where it is looked for, whether it is there."""
    import json

    from cl.datafiles import resolve_data_root
    from cl.datasets import root_origin, sources, status

    rows = [status(s, root) for s in sources()]
    if as_json:
        for st in rows:
            print(json.dumps({"name": st.source.name, "title": st.source.title, "group": st.source.group,
                              "present": st.present, "path": str(st.path.resolve()), "problem": st.problem,
                              "layout": st.source.layout, "read_by": st.source.read_by,
                              "license": st.source.license, "fetchable": st.source.fetchable}))
        return
    resolved = resolve_data_root(root)
    console.print(f"data root: {resolved.resolve()} ({root_origin(root)})", highlight=False)
    table = Table()
    for column in ("name", "dataset", "status", "layout (under the data root)", "read by", "license"):
        table.add_column(column)
    for st in rows:
        if not st.present:
            where = "[red]missing[/]"
        elif st.path.is_relative_to(resolved):
            where = f"[green]{st.path.relative_to(resolved)}[/]"
        else:
            where = f"[green]{st.path if st.source.fetchable else 'bundled'}[/]"
        table.add_row(st.source.name, st.source.title, where, st.source.layout, st.source.read_by,
                      st.source.license)
    console.print(table)
    missing = [st.source.name for st in rows if not st.present and st.source.fetchable]
    if missing:
        console.print(f"fetch what is missing: clsuite data fetch {' '.join(missing)}"
                      + (f" --root {root}" if root else ""), highlight=False)
    console.print("your own data needs no fetch: scenario from_tensors (path: an .npz/.pt file) or from_folder "
                  "(ImageFolder) read the paths in the config.", highlight=False)


@data_app.command("fetch")
def data_fetch(
    names: list[str] = typer.Argument(..., help="datasets or groups (see `clsuite data list`)"),
    root: Optional[str] = RootOpt,
    mirror: Optional[str] = typer.Option(None, "--mirror", envvar="CLSUITE_DATA_MIRROR",
                                         help="download <mirror>/<dataset>/<file> instead of the canonical "
                                              "URLs (http(s):// or file://)"),
    force: bool = typer.Option(False, "--force", help="download again, replacing what is there"),
    timeout: float = typer.Option(60.0, min=1, help="seconds without data before a download is given up"),
) -> None:
    """Download datasets into the data root, checksums verified; a failed fetch writes nothing."""
    from cl.datasets import FetchError, fetch, select

    def fail(error: FetchError) -> None:
        err_console.print(f"[bold red]error:[/] {error}", highlight=False, markup=True, soft_wrap=True)

    try:
        chosen = select(names)
    except FetchError as error:
        fail(error)
        raise typer.Exit(2) from None
    failed = []
    for source in chosen:              # one failure does not stop the others; each is all-or-nothing
        if not source.fetchable:
            console.print(f"{source.name}: nothing to download ({source.layout})", highlight=False)
            continue
        try:
            result = fetch(source, root, mirror=mirror, force=force, progress=err_console.is_terminal,
                           timeout=timeout)
        except FetchError as error:
            fail(error)
            failed.append(source.name)
            continue
        if result.fetched:
            console.print(f"{source.name}: fetched into {result.path} ({result.summary})", highlight=False)
        else:
            console.print(f"{source.name}: already at {result.path}; nothing fetched (--force to replace)",
                          highlight=False)
    if failed:
        err_console.print(f"not fetched: {', '.join(failed)}", highlight=False)
        raise typer.Exit(2)


def _add_method_commands() -> None:
    """The subcommands methods register (`cl.registry.COMMANDS`): each target is a function typer can wrap, in a
    module light enough to import for ``clsuite --help``."""
    from cl.registry import COMMANDS

    for entry in COMMANDS.entries():
        app.command(entry.name)(entry.load())


_add_method_commands()


def main() -> None:
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    app()


if __name__ == "__main__":
    main()
