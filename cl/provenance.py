"""Provenance of a run: the code version (git commit, dirty or not), package versions, host and seeds."""
from __future__ import annotations

import functools
import json
import os
import platform
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

_PACKAGES = ("clsuite", "torch", "torchvision", "avalanche-lib", "mlflow", "numpy", "scikit-learn", "pydantic")


@functools.lru_cache(maxsize=1)
def code_version() -> dict[str, Any]:
    """Git commit of the clsuite source in use and whether it has uncommitted changes."""
    root = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    sha = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if sha else None
    return {"git_sha": sha or "unknown", "git_dirty": bool(status) if sha else None, "source": str(root)}


def provenance(seeds: Mapping[str, int]) -> dict[str, Any]:
    versions = {}
    for pkg in _PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {
        **code_version(),
        "seeds": dict(seeds),
        "versions": versions,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "argv": sys.argv,
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def provenance_tags(prov: Mapping[str, Any]) -> dict[str, str]:
    """The headline provenance as MLflow tags (MLflow's own names where they exist)."""
    return {
        "mlflow.source.git.commit": str(prov["git_sha"]),
        "git_dirty": str(prov["git_dirty"]),
    }


def to_json_bytes(data: Any) -> bytes:
    return json.dumps(data, indent=2, sort_keys=True, default=str).encode()
