"""What every `clsuite` command shares: the consoles, the tracking-URI option, logging set-up and the guard that
turns bad input into exit code 2. The commands methods add (`cl.registry.COMMANDS`) use it as `cl.cli` does."""
from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import Iterator

import typer
from rich.console import Console

from cl.errors import ConfigError

# Off a terminal (CI logs, pipes) rich would wrap tables at 80 columns; use a wide page instead.
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)

TrackingOpt = typer.Option(None, "--tracking-uri", help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Bad input (`ConfigError`) as one red line on stderr and exit code 2, no traceback."""
    try:
        yield
    except ConfigError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True, soft_wrap=True)
        raise typer.Exit(2) from None


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not verbose:  # MLflow announces its schema migrations at INFO on every new store
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
