"""The datasets the suite reads: where each must lie, whether it is there, and how to fetch it.

One `DatasetSource` per dataset a scenario or a transfer experiment reads. It says where the
dataset lies under the data root (the readers' own lookup, `locate`, reused: no second copy of
the rules), the layout and licence, and — when it can be downloaded — which files to get, with
their checksums, and how to lay them out.

The image datasets the platform's scenarios read are declared here; methods declare theirs next
to their readers and register them with `register`, from a module the ``clsuite.registry``
entry-point group imports (the suite's own methods do it the same way as third-party packages).

`fetch` is all-or-nothing: the files are downloaded into a temporary folder *next to* the
target (same file system), checked (checksums, then the reader's own check and a real load),
and only then renamed into place; on any failure the temporary folder is removed, so a
download that stops half-way leaves nothing behind. A mirror (``--mirror`` or
$CLSUITE_DATA_MIRROR) replaces every canonical location by ``<mirror>/<dataset>/<file name>``
(``http(s)://`` or ``file://``): for machines behind a proxy cache, and for the tests, which
serve small archives from 127.0.0.1.

MNIST, Fashion-MNIST, CIFAR-10 and CIFAR-100 go through torchvision: the file names, mirrors
and md5 checksums are read from the torchvision dataset class at fetch time (`resources`,
`mirrors`, `url`, `tgz_md5`), and torchvision's own `download=True` extracts the archives and
checks them again (CIFAR: every batch file's md5). Only the transfer over the network is ours,
so that a progress bar can switch off when stderr is not a terminal and a failure can name its
URL and the fix.
"""
from __future__ import annotations

import contextlib
import hashlib
import http.client
import importlib
import importlib.util
import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

from cl.datafiles import DATA_ROOT_ENV, DATASETS as IMAGE_FILES, DataNotFoundError, check_dataset, resolve_data_root

log = logging.getLogger(__name__)

MIRROR_ENV = "CLSUITE_DATA_MIRROR"
USER_AGENT = "clsuite-data-fetch"


class FetchError(RuntimeError):
    """A fetch that could not complete; nothing was written. The message names the URL or file and the fix."""


@dataclass(frozen=True)
class Download:
    """One file to download: where it lives, and the checksums it must match (None: not pinned)."""

    filename: str
    urls: tuple[str, ...]           # canonical locations, tried in order
    md5: Optional[str] = None
    sha256: Optional[str] = None


@dataclass(frozen=True)
class DatasetSource:
    name: str                                   # what `clsuite data fetch NAME` takes
    title: str
    group: str                                  # `fetch GROUP` fetches every dataset of the group
    install_dir: str                            # what fetch creates, relative to the data root
    layout: str                                 # the files the readers expect, for people
    read_by: str                                # which scenarios / experiments read it
    license: str
    locate: Callable[[Path], Path]              # data root -> the dataset's folder; DataNotFoundError if incomplete
    # None: nothing to download (bundled with a package). Called at fetch time, so the checksums
    # are read where they are declared (e.g. torchvision's class attributes).
    downloads: Optional[Callable[[], Sequence[Download]]] = None
    # (staging data root, {file name: downloaded file}) -> lays out `install_dir` under the staging root
    build: Optional[Callable[[Path, dict[str, Path]], None]] = None
    # staging data root -> a one-line summary of what loads ("60000 train / 10000 test images"); raises if it does not
    verify: Optional[Callable[[Path], str]] = None

    @property
    def fetchable(self) -> bool:
        return self.downloads is not None


@dataclass(frozen=True)
class Status:
    source: DatasetSource
    root: Path
    present: bool
    path: Path                                  # where it was found, or where fetch would put it
    problem: str = ""                           # why it is not usable, when absent


@dataclass(frozen=True)
class FetchResult:
    source: DatasetSource
    path: Path
    fetched: bool                               # False: it was already there
    summary: str = ""
    urls: tuple[str, ...] = field(default_factory=tuple)


# --------------------------------------------------------------------------- registry

_SOURCES: dict[str, DatasetSource] = {}
_builtins_loaded = False


def register(source: DatasetSource) -> DatasetSource:
    existing = _SOURCES.get(source.name)
    if existing is not None and existing is not source:
        raise ValueError(f"dataset {source.name!r} is already registered ({existing.title})")
    _SOURCES[source.name] = source
    return source


def sources() -> list[DatasetSource]:
    """Every registered dataset, in registration order (the platform's images first)."""
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True
        from cl.registry import load_plugins   # methods register the datasets they read, as they register entries

        load_plugins()
    return list(_SOURCES.values())


def select(names: Sequence[str]) -> list[DatasetSource]:
    """The datasets named (a dataset name or a group name each), in order, without repeats."""
    known = sources()
    chosen: list[DatasetSource] = []
    for name in names:
        hits = [s for s in known if s.name == name] or [s for s in known if s.group == name]
        if not hits:
            groups = sorted({s.group for s in known})
            raise FetchError(f"unknown dataset {name!r}; known: {', '.join(s.name for s in known)} "
                             f"(or a group: {', '.join(groups)}). `clsuite data list` shows them.")
        chosen += [s for s in hits if s not in chosen]
    return chosen


def status(source: DatasetSource, data_root=None) -> Status:
    root = resolve_data_root(data_root)
    try:
        return Status(source, root, True, source.locate(root))
    except DataNotFoundError as exc:
        return Status(source, root, False, root / source.install_dir, _reason(exc))


def _reason(exc: Exception) -> str:
    text = str(exc)
    return text.split(": ", 1)[1] if text.startswith("invalid configuration: ") else text


def root_origin(data_root=None) -> str:
    """Where the data root came from, for people: the option, the environment, or the default."""
    if data_root:
        return "--root"
    if os.environ.get(DATA_ROOT_ENV):
        return f"${DATA_ROOT_ENV}"
    return "default ./data"


# --------------------------------------------------------------------------- fetch


def fetch(source: DatasetSource, data_root=None, *, mirror: Optional[str] = None, force: bool = False,
          progress: bool = False, timeout: float = 60.0) -> FetchResult:
    """Download `source` into the data root, all or nothing (see the module docstring).

    Already present (its reader finds it) → nothing is downloaded unless `force`.
    """
    root = resolve_data_root(data_root)
    if not source.fetchable:
        raise FetchError(f"{source.name}: nothing to download ({source.layout})")
    if not force:
        try:
            return FetchResult(source, source.locate(root), fetched=False)
        except DataNotFoundError:
            pass
    target = root / source.install_dir
    if target.exists() and not force:
        raise FetchError(f"{source.name}: {target.resolve()} exists but is incomplete "
                         f"({status(source, root).problem}); move it away, or pass --force to replace it")
    created = _make_dirs(target.parent)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    done = False
    try:
        files, urls = {}, []
        downloads_dir = staging / "downloads"
        downloads_dir.mkdir()
        for item in source.downloads():
            path, url = _download(source, item, downloads_dir, mirror=mirror, progress=progress, timeout=timeout)
            files[item.filename] = path
            urls.append(url)
        stage_root = staging / "root"
        stage_root.mkdir()
        try:
            source.build(stage_root, files)
            source.locate(stage_root)
            summary = source.verify(stage_root) if source.verify else ""
        except FetchError:
            raise
        except Exception as exc:  # the reader or torchvision rejected what was downloaded
            raise FetchError(f"{source.name}: the downloaded files do not load ({_reason(exc)}); nothing was "
                             f"written to {root.resolve()}") from exc
        staged = stage_root / source.install_dir
        if target.exists():                      # --force: swap, then drop the old copy with the staging folder
            os.replace(target, staging / "replaced")
        os.replace(staged, target)
        done = True
        log.info("fetched %s into %s", source.name, target)
        return FetchResult(source, source.locate(root), fetched=True, summary=summary, urls=tuple(urls))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if not done:
            for folder in reversed(created):
                with contextlib.suppress(OSError):   # not empty: someone else wrote there
                    folder.rmdir()


def _make_dirs(folder: Path) -> list[Path]:
    """mkdir -p, returning the folders it created (outermost first), so a failed fetch can remove them."""
    missing = []
    for parent in (folder, *folder.parents):
        if parent.exists():
            break
        missing.append(parent)
    folder.mkdir(parents=True, exist_ok=True)
    return list(reversed(missing))


def _locations(source: DatasetSource, item: Download, mirror: Optional[str]) -> tuple[str, ...]:
    mirror = mirror if mirror is not None else os.environ.get(MIRROR_ENV) or None
    if mirror:
        return (f"{mirror.rstrip('/')}/{source.name}/{item.filename}",)
    return item.urls


def _why(exc: Exception) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    return str(getattr(exc, "reason", None) or exc) or type(exc).__name__


def _download(source: DatasetSource, item: Download, folder: Path, *, mirror: Optional[str], progress: bool,
              timeout: float) -> tuple[Path, str]:
    """Stream one file to `folder`, hashing as it arrives; the first location that answers wins."""
    from tqdm import tqdm

    dest = folder / item.filename
    failures = []
    for url in _locations(source, item, mirror):
        md5, sha256 = hashlib.md5(usedforsecurity=False), hashlib.sha256()
        try:
            request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
            with urllib.request.urlopen(request, timeout=timeout) as response, open(dest, "wb") as out, \
                    tqdm(total=getattr(response, "length", None), unit="B", unit_scale=True, unit_divisor=1024,
                         desc=item.filename, disable=not progress, leave=False) as bar:
                received = 0
                while chunk := response.read(1 << 16):
                    out.write(chunk)
                    md5.update(chunk)
                    sha256.update(chunk)
                    bar.update(len(chunk))
                    received += len(chunk)
                if getattr(response, "length", None):   # http.client reports what is still missing of Content-Length
                    raise ConnectionError(f"connection closed after {received} bytes, {response.length} short")
        except (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError) as exc:
            failures.append(f"{url}: {_why(exc)}")
            continue
        for kind, expected, got in (("md5", item.md5, md5.hexdigest()), ("sha256", item.sha256, sha256.hexdigest())):
            if expected and got != expected.lower():
                raise FetchError(f"{source.name}: checksum mismatch for {url}: {kind} {got}, expected {expected} "
                                 "(a corrupted or changed file); nothing was written")
        return dest, url
    tried = "\n  ".join(failures)
    raise FetchError(
        f"{source.name}: could not download {item.filename}:\n  {tried}\n"
        "No network? Fetch it on a connected machine and copy the data root over, or place the files by hand "
        f"under a data root as {source.layout} and point --root / ${DATA_ROOT_ENV} at that data root; the "
        f"downloaded files also serve from a local mirror: --mirror file:///path with the files in "
        f"path/{source.name}/.")


# --------------------------------------------------------------------------- helpers for builders


def extract_zip(archive: Path, dest: Path, *, prefix: str, expect: Sequence[str]) -> None:
    """Extract the members of `archive` under `prefix` into `dest` (CRC-checked); every path of `expect`
    (relative to `dest`) must be among them."""
    try:
        with zipfile.ZipFile(archive) as zf:
            bad = zf.testzip()
            if bad is not None:
                raise FetchError(f"{archive.name}: member {bad} fails its CRC check (corrupted archive)")
            members = [m for m in zf.namelist() if m.startswith(prefix) and not m.startswith("__MACOSX")]
            for member in members:
                parts = Path(member).parts
                if Path(member).is_absolute() or ".." in parts:
                    raise FetchError(f"{archive.name}: refusing the unsafe member path {member!r}")
            zf.extractall(dest, members)
    except zipfile.BadZipFile as exc:
        raise FetchError(f"{archive.name}: not a zip archive ({exc})") from None
    missing = [e for e in expect if not (dest / e).is_file()]
    if missing:
        raise FetchError(f"{archive.name}: lacks {', '.join(missing)}")


def place(files: dict[str, Path], folder: Path, names: Sequence[str] | None = None) -> None:
    """Move downloaded files into `folder` under their own names."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names if names is not None else list(files):
        shutil.move(str(files[name]), folder / name)


# --------------------------------------------------------------------------- the platform's image datasets

_IMAGE_INFO = {   # name: (licence, read by) — the platform's scenarios; transfer experiments name it as source/target
    "mnist": ("CC BY-SA 3.0", "split_mnist, rare_class_stream (base: mnist), transfer experiments' mnist"),
    "fmnist": ("MIT", "split_fmnist, rare_class_stream (base: fmnist), transfer experiments' fmnist"),
    "cifar10": ("no licence stated; cite Krizhevsky 2009", "split_cifar10"),
    "cifar100": ("no licence stated; cite Krizhevsky 2009", "split_cifar100"),
}


def _torchvision_class(dataset: str):
    import torchvision

    return getattr(torchvision.datasets, IMAGE_FILES[dataset].torchvision_class)


def _image_downloads(dataset: str) -> Callable[[], list[Download]]:
    def downloads() -> list[Download]:
        cls = _torchvision_class(dataset)
        if hasattr(cls, "resources"):            # MNIST family: files under every mirror
            return [Download(f, tuple(f"{m}{f}" for m in cls.mirrors), md5=md5) for f, md5 in cls.resources]
        return [Download(cls.filename, (cls.url,), md5=cls.tgz_md5)]
    return downloads


def _image_build(dataset: str) -> Callable[[Path, dict[str, Path]], None]:
    def build(stage_root: Path, files: dict[str, Path]) -> None:
        cls = _torchvision_class(dataset)
        spec = IMAGE_FILES[dataset]
        # Where torchvision's download() looks first: it finds each file with the right md5, downloads
        # nothing, and extracts it (CIFAR: then checks every batch file's md5).
        place(files, stage_root / spec.folder if hasattr(cls, "resources") else stage_root)
        try:
            cls(root=str(stage_root), train=True, download=True)
        finally:
            for name in files:                   # CIFAR's archive sits beside its folder: not installed
                (stage_root / name).unlink(missing_ok=True)
    return build


def _image_verify(dataset: str) -> Callable[[Path], str]:
    def verify(stage_root: Path) -> str:
        cls = _torchvision_class(dataset)
        train, test = (cls(root=str(stage_root), train=t, download=False) for t in (True, False))
        return f"{len(train)} train / {len(test)} test images, {len(train.classes)} classes"
    return verify


def _image_locate(dataset: str) -> Callable[[Path], Path]:
    return lambda root: check_dataset(dataset, root) / IMAGE_FILES[dataset].folder.split("/")[0]


def _digits_locate(root: Path) -> Path:
    spec = importlib.util.find_spec("sklearn")
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz" if spec and spec.origin else None
    if path is None or not path.is_file():
        raise DataNotFoundError("scikit-learn's bundled digits file is missing; reinstall scikit-learn")
    return path


register(DatasetSource(
    name="digits", title="scikit-learn digits (8x8)", group="images", install_dir="",
    layout="bundled with scikit-learn (sklearn.datasets.load_digits)", license="CC BY 4.0 (UCI)",
    read_by="split_digits, rare_class_stream (base: digits), transfer experiments' digits (the offline default)",
    locate=_digits_locate))

for _name, _spec in IMAGE_FILES.items():
    _licence, _read_by = _IMAGE_INFO[_name]
    _parts = _spec.folder.split("/")
    register(DatasetSource(
        name=_name, title=_spec.title, group="images", install_dir=_parts[0],
        layout=f"torchvision's layout: {_spec.folder}/{{{','.join(_spec.files)}}}"
               + (" (or .gz)" if len(_parts) > 1 else ""),
        read_by=_read_by, license=_licence, locate=_image_locate(_name),
        downloads=_image_downloads(_name), build=_image_build(_name), verify=_image_verify(_name)))
