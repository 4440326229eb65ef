"""Shared fixtures: a real MLflow store in a temp dir, the offline data folder."""
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


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
    if not (SHARED_DATA / "MNIST").is_dir():
        pytest.skip(f"offline datasets not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def one_thread():
    """Tiny tensors gain nothing from intra-op threads; on a busy 2-core box they only contend."""
    from cl.transfer_run import single_thread

    with single_thread():
        yield
