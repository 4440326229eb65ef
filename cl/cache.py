"""Reusable intermediate results of experiments (a pretrained source model, a fine-tuned delta, a converted LM).

`cached(kind, key, build)` is the one way an experiment keeps one: the folder is named by the hash of `key` (which
must hold everything the result depends on, seed and options included, so a hit is the same computation), built
once under a lock while parallel workers wait, and published with one rename so no reader sees half of it.
"""
from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping


def cached(kind: str, key: Mapping[str, Any], build: Callable[[Path], None], *, name: str = "",
           complete: str | None = None, root: Path | None = None) -> Path:
    """The folder ``<cache root>/<kind>/<name>-<hash of key>``; when absent, `build(folder)` fills a private
    folder that is then published. `complete`: a file whose presence means the entry is whole (default: the folder
    exists). The key is written beside the result as ``key.json`` unless `build` wrote one."""
    from cl.config import canonical_hash

    digest = canonical_hash(dict(key))
    root = root or cache_root()
    entry = f"{name}-{digest}" if name else digest
    path = root / kind / entry
    with build_lock(root / ".locks" / kind / entry):      # locks apart, so a kind's folder lists only entries
        whole = (path / complete).is_file() if complete else path.is_dir()
        if not whole:
            shutil.rmtree(path, ignore_errors=True)      # a folder without its `complete` file: an older, broken entry
            with publish_directory(path) as partial:
                build(partial)
                if not (partial / "key.json").exists():
                    (partial / "key.json").write_text(json.dumps(dict(key), indent=1, default=str))
    return path


def cache_root() -> Path:
    """Where an experiment may keep reusable intermediate results (e.g. a pretrained source model).

    ``$CLSUITE_CACHE``, else ``~/.cache/clsuite``. Keys must include everything the cached
    result depends on (seed and options), so a cache hit is the same computation.
    """
    root = Path(os.environ.get("CLSUITE_CACHE", Path.home() / ".cache" / "clsuite"))
    root.mkdir(parents=True, exist_ok=True)
    return root


@contextmanager
def publish_directory(path: Path) -> Iterator[Path]:
    """Write a cache entry into a private folder, then rename it to `path` in one step.

    Parallel workers may build the same entry: each writes its own ``<name>.<pid>.tmp`` and the
    first rename wins (the others are discarded), so a reader never sees a half-written entry.
    """
    partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    try:
        os.replace(partial, path)
    except OSError:                      # another worker published first
        shutil.rmtree(partial, ignore_errors=True)


@contextmanager
def build_lock(path) -> Iterator[None]:
    """Hold an exclusive lock on ``<path>.lock`` while inside: a parallel worker that needs the same
    cache entry waits for it instead of building it a second time (`publish_directory` still makes
    the write atomic)."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
