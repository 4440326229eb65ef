"""The MLflow UI, in a real headless Chromium, shows what the suite logs.

A tiny grid goes into a temp SQLite store; `mlflow server` serves it on a free port of
127.0.0.1; Chromium (Debian's package) driven by Playwright opens the address
`clsuite ui --grid` prints, then a run's page and its heatmap artifact. Screenshots are saved
under the test's temp dir: grid_runs.png, run_metrics.png, run_heatmap.png.

Marked ``browser``: `pytest -m "not browser"` skips it locally; in CI (``CI=true``) a missing
browser or Playwright is a failure, not a skip.
"""
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cl.grid import GridSpec, expand
from cl.launch import launch
from cl.tracking import client_for, grid_url
from tests.helpers.waiting import BROWSER_MS, SERVER_START_S, http_ok, wait_until

pytestmark = pytest.mark.browser
IN_CI = os.environ.get("CI", "").lower() == "true"
SCREENSHOTS = ("grid_runs.png", "run_metrics.png", "run_heatmap.png")
GRID = {
    "name": "ui-grid",
    "base": {"scenario": {"name": "split_digits", "n_experiences": 2}, "model": {"name": "mlp", "hidden": [32]},
             "strategy": {"name": "naive"}, "train": {"epochs": 1, "lr": 0.05}},
    "grid": {"strategy.name": ["naive", "replay"]},
    "seeds": [0],
}


def _require(what: str, ok: bool):
    if not ok:
        (pytest.fail if IN_CI else pytest.skip)(f"{what} not available (CI installs it in .ci/run)")


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    _require("Debian's chromium", path is not None)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(base URL, tracking URI) of an `mlflow server` over a store holding the tiny grid."""
    folder = tmp_path_factory.mktemp("ui-store")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    spec = GridSpec.model_validate(GRID)
    assert not launch(spec, expand(spec), tracking_uri=uri).failed
    port = free_port()
    mlflow_bin = shutil.which("mlflow") or str(Path(sys.executable).with_name("mlflow"))
    log = open(folder / "server.log", "wb")
    process = subprocess.Popen([mlflow_bin, "server", "--backend-store-uri", uri, "--host", "127.0.0.1",
                                "--port", str(port), "--workers", "1"], stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"

    def exited():
        if process.poll() is None:
            return None
        return f"exit code {process.returncode}: {(folder / 'server.log').read_text()[-2000:]}"

    try:
        wait_until(lambda: http_ok(f"{base}/health"), what="mlflow server answering /health",
                   limit_s=SERVER_START_S, alive=exited)
    except AssertionError as exc:
        process.kill()
        pytest.fail(f"{exc}\nserver log: {(folder / 'server.log').read_text()[-2000:]}")
    yield base, uri
    process.terminate()
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:     # a loaded machine: the server's workers outlast SIGTERM's grace
        process.kill()
        process.wait(timeout=60)
    log.close()


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api") if not IN_CI else __import__(
        "playwright.sync_api", fromlist=["sync_playwright"])
    executable = chromium_path()
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable, headless=True,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        yield browser
        browser.close()


def test_grid_page_run_page_and_heatmap_in_a_real_browser(server, browser, tmp_path):
    base, uri = server
    client = client_for(uri)
    url = grid_url(client, "ui-grid", base)
    shots = tmp_path / "screenshots"
    shots.mkdir()
    page = browser.new_page(viewport={"width": 1400, "height": 900})

    # the grid's address shows the grid as a parent run; expanded, its cells are the children
    page.goto(url)
    parent = page.get_by_role("row").filter(has_text="ui-grid launch").first
    parent.wait_for(timeout=BROWSER_MS)
    parent.locator("button").first.click()              # the expand toggle of the Run Name cell
    for name in ("strategy.name=naive s0", "strategy.name=replay s0"):
        page.get_by_text(name, exact=False).first.wait_for(timeout=BROWSER_MS)
    page.screenshot(path=str(shots / SCREENSHOTS[0]), full_page=True)

    # a run's page shows the logged metrics
    exp = client.get_experiment_by_name("ui-grid")
    run = client.search_runs([exp.experiment_id], "tags.kind = 'cell' and tags.strategy = 'replay'")[0]
    page.goto(f"{base}/#/experiments/{exp.experiment_id}/runs/{run.info.run_id}")
    for metric in ("final/avg_acc", "final/forgetting", "cost/train_flops"):
        page.get_by_text(metric, exact=True).first.wait_for(timeout=BROWSER_MS)
    page.screenshot(path=str(shots / SCREENSHOTS[1]), full_page=True)

    # its artifacts include the accuracy heatmap, and the image renders
    page.goto(f"{base}/#/experiments/{exp.experiment_id}/runs/{run.info.run_id}/artifacts")
    with page.expect_response(lambda r: "get-artifact" in r.url and "accuracy_matrix.png" in r.url,
                              timeout=BROWSER_MS) as response:
        page.get_by_text("accuracy_matrix.png", exact=True).first.click(timeout=BROWSER_MS)
    assert response.value.status == 200
    image = page.locator("img[src^='blob:']").first           # the UI shows the fetched PNG as a blob
    image.wait_for(timeout=BROWSER_MS)
    page.wait_for_function("img => img.complete && img.naturalWidth > 100", arg=image.element_handle(),
                           timeout=BROWSER_MS)
    page.screenshot(path=str(shots / SCREENSHOTS[2]), full_page=True)

    assert sorted(p.name for p in shots.iterdir()) == sorted(SCREENSHOTS)
    assert all((shots / name).stat().st_size > 10_000 for name in SCREENSHOTS)
    print(f"screenshots: {shots}")
