"""Deadlines that hold on a loaded machine: poll with a generous limit, and say what was slow.

Two trainings on a 2-core box can make an `mlflow server` take minutes to answer; a test that
waits should poll until a limit far above the normal time, and its failure should name what it
waited for and how long it took. ``CLSUITE_TEST_DEADLINE_SCALE`` multiplies every limit (e.g. 2
on a very busy machine).
"""
from __future__ import annotations

import os
import time
from typing import Callable, TypeVar

T = TypeVar("T")

SCALE = float(os.environ.get("CLSUITE_TEST_DEADLINE_SCALE", "1"))
SERVER_START_S = 300 * SCALE          # an HTTP server (mlflow server, clsuite ui) answering /health
PROCESS_S = 900 * SCALE               # a CLI subprocess that trains a few tiny cells
BROWSER_MS = int(180_000 * SCALE)     # one Playwright wait (page element, navigation)


def wait_until(condition: Callable[[], T], *, what: str, limit_s: float, poll_s: float = 0.5,
               alive: Callable[[], str | None] | None = None) -> T:
    """Poll `condition` until it returns something truthy (returned) or `limit_s` passes.

    `alive` returns None while the thing waited on can still succeed, else a description of why
    it cannot (e.g. the server process exited with its log): the wait then fails at once.
    """
    started = time.monotonic()
    while True:
        value = condition()
        if value:
            return value
        elapsed = time.monotonic() - started
        dead = alive() if alive is not None else None
        if dead is not None:
            raise AssertionError(f"{what}: gave up after {elapsed:.0f} s, it cannot happen any more: {dead}")
        if elapsed > limit_s:
            load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
            raise AssertionError(f"{what}: still not done after {elapsed:.0f} s (limit {limit_s:.0f} s; "
                                 f"load average {load:.1f} on {os.cpu_count()} cores) — the machine was slow or "
                                 "it is stuck; raise CLSUITE_TEST_DEADLINE_SCALE if the machine is busy")
        time.sleep(poll_s)


def http_ok(url: str) -> bool:
    """True once `url` answers 200 (connection errors and timeouts: not yet)."""
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except OSError:
        return False
