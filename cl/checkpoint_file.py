"""The checkpoint file (see `cl.checkpoint` for what goes in it and when): a versioned header tied to the cell, the
run and the code version, a weights-only torch payload, written atomically and refused — with the reason — when it
does not match; plus capturing and restoring every RNG the run draws from."""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import random
import signal
import time
from pathlib import Path
from typing import Any, Mapping

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MAGIC = b"CLSUITE-CKPT\n"
ANY_CODE_ENV = "CLSUITE_RESUME_ANY_CODE"
# Tests of crash recovery: SIGKILL this process right after the checkpoint at this position is written
# ("experiences_done=3" or "step=2"). Never set outside tests.
CRASH_ENV = "CLSUITE_TEST_CRASH_AFTER_CHECKPOINT"
TOKEN_TAG = "checkpoint.token"
PATH_TAG = "checkpoint.path"
RESUMED_TAG = "resumed_from"


class CheckpointRefused(Exception):
    """A checkpoint that must not be resumed from; the message says why."""


# --------------------------------------------------------------------------- files


def checkpoint_path(config_hash: str, token: str) -> Path:
    """Where the checkpoint of run `token` of cell `config_hash` lives (under the suite's cache)."""
    from cl.cache import cache_root

    return cache_root() / "checkpoints" / config_hash / f"{token}.ckpt"


def code_identity() -> dict[str, Any]:
    """The code version a checkpoint is tied to: the git SHA (else the installed clsuite version)."""
    from cl.provenance import code_version

    version = code_version()
    sha = version["git_sha"]
    if sha == "unknown":
        from importlib import metadata

        try:
            sha = "clsuite==" + metadata.version("clsuite")
        except metadata.PackageNotFoundError:
            sha = "unknown"
    return {"code": sha, "git_dirty": version["git_dirty"]}


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that a reader (or a crash) sees either the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        with open(partial, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # pragma: no cover - some filesystems refuse fsync on directories
        pass


def write(path: Path, payload: Mapping[str, Any], header: Mapping[str, Any]) -> int:
    """Serialise `payload` (tensors + JSON-like data) under a versioned header; returns the file size."""
    import torch

    check_plain(payload)
    buffer = io.BytesIO()
    torch.save(dict(payload), buffer)
    body = buffer.getvalue()
    head = json.dumps({**header, "format": FORMAT_VERSION, **code_identity(),
                       "payload_sha256": hashlib.sha256(body).hexdigest(), "payload_bytes": len(body),
                       "written_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
                      sort_keys=True).encode()
    data = MAGIC + len(head).to_bytes(8, "little") + head + body
    atomic_write(path, data)
    return len(data)


def _read(path: Path) -> tuple[dict[str, Any], bytes]:
    try:
        with open(path, "rb") as handle:
            if handle.read(len(MAGIC)) != MAGIC:
                raise CheckpointRefused(f"{path} is not a clsuite checkpoint (bad magic bytes)")
            size = int.from_bytes(handle.read(8), "little")
            if not 0 < size < 1 << 20:
                raise CheckpointRefused(f"{path}: corrupted header length ({size})")
            header = json.loads(handle.read(size).decode())
            body = handle.read()
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise CheckpointRefused(f"{path}: unreadable or corrupted ({type(exc).__name__}: {exc})") from None
    if not isinstance(header, dict):
        raise CheckpointRefused(f"{path}: corrupted header")
    return header, body


def validate(header: Mapping[str, Any], body: bytes, *, config_hash: str, token: str | None, path: Path) -> None:
    """Raise `CheckpointRefused` unless this checkpoint belongs to this run and this code, intact."""
    if header.get("format") != FORMAT_VERSION:
        raise CheckpointRefused(f"{path}: checkpoint format {header.get('format')!r}, this code reads "
                                f"format {FORMAT_VERSION}; starting from scratch")
    if len(body) != header.get("payload_bytes") or hashlib.sha256(body).hexdigest() != header.get("payload_sha256"):
        raise CheckpointRefused(f"{path}: payload corrupted or truncated (digest mismatch)")
    if header.get("config_hash") != config_hash:
        raise CheckpointRefused(f"{path}: written for cell {header.get('config_hash')}, not {config_hash}")
    if token is not None and header.get("token") != token:
        raise CheckpointRefused(f"{path}: written by another run of this cell (token {header.get('token')}), "
                                f"not by the run being resumed ({token})")
    code = code_identity()["code"]
    if header.get("code") != code:
        if os.environ.get(ANY_CODE_ENV) == "1":
            log.warning("%s: written by code %s, running %s; resuming anyway (%s=1)",
                        path, header.get("code"), code, ANY_CODE_ENV)
        else:
            raise CheckpointRefused(f"{path}: written by code {header.get('code')}, this is {code}; a run must "
                                    f"come from one program — set {ANY_CODE_ENV}=1 (clsuite run "
                                    "--resume-any-code) to resume anyway")


def inspect(path: Path, *, config_hash: str, token: str | None) -> dict[str, Any]:
    """The validated header of the checkpoint at `path` (no torch import); raises `CheckpointRefused`."""
    if not path.is_file():
        raise CheckpointRefused(f"no checkpoint at {path}")
    header, body = _read(path)
    validate(header, body, config_hash=config_hash, token=token, path=path)
    return header


def read(path: Path, *, config_hash: str, token: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(header, payload) of a valid checkpoint, the payload loaded with ``weights_only=True``."""
    import torch

    header, body = _read(path)
    validate(header, body, config_hash=config_hash, token=token, path=path)
    try:
        payload = torch.load(io.BytesIO(body), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - whatever the unpickler objects to, the file is refused
        raise CheckpointRefused(f"{path}: payload does not load with weights_only=True "
                                f"({type(exc).__name__}: {exc})") from None
    return header, payload


_PLAIN = (str, int, float, bool, type(None))


def check_plain(data: Any, where: str = "checkpoint") -> None:
    """Raise `TypeError` naming the key if `data` holds anything but tensors and JSON-like values."""
    import torch

    if isinstance(data, (torch.Tensor, *_PLAIN)):
        return
    if isinstance(data, Mapping):
        for key, value in data.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"{where}: key {key!r} is a {type(key).__name__}; use str or int keys")
            check_plain(value, f"{where}.{key}")
        return
    if isinstance(data, (list, tuple)):
        for i, value in enumerate(data):
            check_plain(value, f"{where}[{i}]")
        return
    raise TypeError(f"{where}: a {type(data).__name__} cannot go into a checkpoint (tensors, dicts, lists, "
                    "str, int, float, bool, None only)")


def maybe_crash(position: Mapping[str, int]) -> None:
    """Tests only: SIGKILL this process right after writing the checkpoint named by `CRASH_ENV`."""
    target = os.environ.get(CRASH_ENV)
    if target and target == ",".join(f"{k}={v}" for k, v in position.items()):
        log.warning("%s=%s: killing this process (crash-recovery test)", CRASH_ENV, target)
        os.kill(os.getpid(), signal.SIGKILL)


# --------------------------------------------------------------------------- random generators


def capture_rng() -> dict[str, Any]:
    """The global generators' states (Python, NumPy, torch CPU and CUDA) as tensors and ints."""
    import numpy as np
    import torch

    version, py_state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": {"version": version, "state": torch.tensor(py_state, dtype=torch.int64), "gauss": gauss},
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def restore_rng(state: Mapping[str, Any]) -> None:
    import numpy as np
    import torch

    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state((npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
