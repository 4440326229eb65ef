"""Shared fixtures: a real MLflow store in a temp dir, the offline data folder.

**Tests and the offline data.** ``../shared/data`` (beside the clone) exists on this project's
machines and in CI, not on a user's clone. A test that reads it says so with the marker
``@pytest.mark.shared_data("text/glue", ...)`` (the folders it cannot do without; none = the
whole folder) or by requesting the `shared_data` fixture; when a folder is missing the test is
skipped with the reason — and fails in CI (``CI=true``), which has the data. A test that can use
generated data instead takes the `offline_text` fixture (the real text data when present, else
`tests.helpers.fake_data` in a temp folder) or carries ``shared_data(fallback=True)``.

So that this cannot regress, every test that opens a file under ``../shared/data`` without
declaring it fails (an audit hook watches the process's ``open`` calls), and ``.ci/run`` reruns the
declared tests (``-m shared_data``) in a copy of the repository with no ``../shared`` beside it.
"""
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
IN_CI = os.environ.get("CI", "").lower() == "true"
TEXT_FOLDERS = ("text/glue", "text/sst2_sentence_level", "text/trec")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "shared_data(*folders, fallback=False): reads ../shared/data (these folders of it); skipped "
                   "when they are absent (a failure in CI), or with fallback=True runs on generated data instead")


@pytest.hookimpl(tryfirst=True)          # before `-m` selects by marker
def pytest_collection_modifyitems(items):
    for item in items:
        names = getattr(item, "fixturenames", ())
        if "shared_data" in names:
            item.add_marker(pytest.mark.shared_data())
        if "offline_text" in names:
            item.add_marker(pytest.mark.shared_data(fallback=True))


def missing_shared(folders=("",)) -> list[Path]:
    """The folders of ../shared/data that are absent (the folder itself, when it is)."""
    if not SHARED_DATA.is_dir():
        return [SHARED_DATA]
    return [SHARED_DATA / f for f in dict.fromkeys(folders) if not (SHARED_DATA / f).exists()]


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    markers = list(item.iter_markers("shared_data"))
    needed = [f for m in markers if not m.kwargs.get("fallback") for f in (m.args or ("",))]
    if needed and (missing := missing_shared(needed)):
        reason = (f"needs the offline data {', '.join(map(str, missing))} (../shared/data beside the repository), "
                  "absent here")
        if IN_CI:
            pytest.fail(f"CI: {reason}", pytrace=False)
        pytest.skip(reason)
    _WATCH["item"] = None if markers else item.nodeid
    _WATCH["reads"] = []


# ---------------------------------------------------------------- undeclared reads of ../shared/data fail

_WATCH: dict = {"item": None, "reads": []}
_PREFIXES = tuple({str(SHARED_DATA) + os.sep, os.path.realpath(SHARED_DATA) + os.sep})


def _audit(event, args):
    """Note every file the running (undeclared) test opens under ../shared/data."""
    if _WATCH["item"] is None or event not in ("open", "os.listdir", "os.scandir"):
        return
    try:
        path = args[0]
        if isinstance(path, (str, bytes, os.PathLike)):
            path = os.path.abspath(os.fsdecode(path))
            if path.startswith(_PREFIXES) and len(_WATCH["reads"]) < 5:
                _WATCH["reads"].append(path)
    except Exception:           # an audit hook must never break the call it watches
        pass


if SHARED_DATA.is_dir():
    sys.addaudithook(_audit)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if call.when == "call" and _WATCH["reads"] and _WATCH["item"] == item.nodeid and report.passed:
        report.outcome = "failed"
        report.longrepr = (f"{item.nodeid} read {_WATCH['reads'][0]} without declaring it, so it fails on a clone "
                           "without ../shared/data: mark it @pytest.mark.shared_data('<folder>') (skipped there) or "
                           "use the offline_text fixture (generated data there); see tests/conftest.py")
    if call.when == "call":
        _WATCH["item"] = None
    return report


@pytest.fixture(scope="session", autouse=True)
def _isolated_default_store(tmp_path_factory):
    """Nothing a test does may write ./mlflow.db: point the default store at a temp dir."""
    path = tmp_path_factory.mktemp("default-store") / "mlflow.db"
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{path}"
    yield
    if old is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = old


@pytest.fixture(scope="session")
def shared_store(tmp_path_factory) -> str:
    """One real SQLite MLflow store for tests that use distinct experiments (saves migrations)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture
def fresh_store(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data; a test requesting it is skipped where the folder is absent (see the module docstring)."""
    return SHARED_DATA


@pytest.fixture(scope="session")
def offline_text(tmp_path_factory) -> Path:
    """A data root holding text/ (GLUE, SST-2, TREC): ../shared/data when it has them, else small generated
    files in the same layouts (tests.helpers.fake_data), so the test runs on any clone."""
    if not missing_shared(TEXT_FOLDERS):
        return SHARED_DATA
    if IN_CI:
        pytest.fail(f"CI: the offline text data {', '.join(map(str, missing_shared(TEXT_FOLDERS)))} is missing",
                    pytrace=False)
    from tests.helpers.fake_data import write_offline_text

    return write_offline_text(tmp_path_factory.mktemp("offline-data"))


@pytest.fixture
def one_thread():
    """Tiny tensors gain nothing from intra-op threads; on a busy 2-core box they only contend."""
    from cl.transfer_run import single_thread

    with single_thread():
        yield
