"""The guard of tests/conftest.py: a test that reads ../shared/data says so, or it fails.

A throwaway repository (our conftest, three tests) beside a throwaway ``shared/data`` runs under
pytest in a subprocess: with the folder there, an undeclared read fails; with it gone, a declared
test is skipped with its reason — and fails when ``CI=true``.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = '''
import pytest
from tests.conftest import SHARED_DATA


def test_undeclared():
    (SHARED_DATA / "text" / "a.txt").read_text()


@pytest.mark.shared_data("text")
def test_declared():
    assert (SHARED_DATA / "text" / "a.txt").read_text() == "x"


def test_unrelated(tmp_path):
    (tmp_path / "b.txt").write_text("y")
'''


def pytest_in(repo: Path, **env) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "CI"}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", "tests"],
                          cwd=repo, capture_output=True, text=True, timeout=300,
                          env={**environ, "PYTHONPATH": f"{repo}{os.pathsep}{ROOT}", **env})


def test_reads_of_shared_data_are_declared_or_fail(tmp_path):
    repo = tmp_path / "repo"
    (repo / "tests").mkdir(parents=True)
    shutil.copy(ROOT / "tests" / "conftest.py", repo / "tests" / "conftest.py")
    (repo / "tests" / "__init__.py").write_text("")
    (repo / "tests" / "test_reads.py").write_text(TESTS)
    data = tmp_path / "shared" / "data" / "text"
    data.mkdir(parents=True)
    (data / "a.txt").write_text("x")

    out = pytest_in(repo)
    assert "1 failed, 2 passed" in out.stdout, out.stdout + out.stderr
    assert "test_undeclared read" in out.stdout and "without declaring it" in out.stdout

    shutil.rmtree(tmp_path / "shared")                      # a user's clone
    out = pytest_in(repo)
    assert "1 failed, 1 passed, 1 skipped" in out.stdout, out.stdout + out.stderr   # the undeclared read fails
    assert "needs the offline data" in out.stdout and "absent here" in out.stdout
    out = pytest_in(repo, CI="true")
    assert "CI: needs the offline data" in out.stdout and "1 error" in out.stdout, out.stdout
