"""Which device a run trains on, what a grid cell asks a Ray cluster for, and data on the device.

- `resolve_device("auto")` takes the GPU the process was given: inside a Ray task that is the
  one Ray assigned (Ray sets ``CUDA_VISIBLE_DEVICES`` to it, so it is ``cuda:0`` here); elsewhere
  the first visible one; else the CPU. A GPU that was assigned but that torch cannot use (no
  driver, or a *declared* GPU on a test cluster, e.g. ``ray.init(num_gpus=2)`` on a laptop) is
  not a crash: the run falls back to the CPU and says so (a warning, and the `device.warning` tag).
- `CellResources` is the per-cell resource request (``--gpus-per-cell``, ``--cpus-per-cell``),
  validated up front with messages naming the option.
- `place_scenario_data` moves a scenario's tensors to an accelerator once when they fit in a
  share of its free memory, so a GPU is not fed by a host-to-device copy every step. On the CPU it
  does nothing.

Nothing here imports torch at module import (the CLI's `--help` must stay light).
"""
from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from typing import Any, Iterator

from cl.errors import ConfigError

log = logging.getLogger(__name__)

DATA_ON_DEVICE_SHARE = 0.5          # scenario tensors may take at most this share of free device memory


@dataclass(frozen=True)
class DeviceChoice:
    """The device a run uses and why: what was asked, what the process was assigned, any fallback."""

    device: Any                                   # torch.device
    requested: str
    gpu_ids: tuple[str, ...] = ()                 # Ray's assignment (empty outside Ray or with no GPU)
    cuda_visible_devices: str | None = None       # as the process saw it (None: not set)
    warning: str | None = None

    def tags(self) -> dict[str, str]:
        """What a run records about its device (tags: the cell's assignment, read by tests and users)."""
        out = {"device": str(self.device), "device.requested": self.requested,
               "device.cuda_visible_devices": "<unset>" if self.cuda_visible_devices is None
               else self.cuda_visible_devices}
        if self.gpu_ids:
            out["device.ray_gpu_ids"] = ",".join(self.gpu_ids)
        if self.warning:
            out["device.warning"] = self.warning
        return out


def ray_gpu_ids() -> tuple[str, ...]:
    """The GPU ids Ray assigned to this task/actor; () outside a Ray worker (Ray is never imported here)."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return ()
    try:
        return tuple(str(i) for i in ray.get_gpu_ids())
    except Exception:  # noqa: BLE001 - the driver process, or an older Ray: no assignment to read
        return ()


def resolve_device(name: str) -> DeviceChoice:
    """'cpu', 'cuda', 'cuda:N' or 'auto' -> a `DeviceChoice`.

    An explicit 'cuda' without CUDA is a config error; 'auto' never fails (CPU fallback,
    with a warning when a GPU had been assigned but cannot be used).
    """
    import torch

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    gpu_ids = ray_gpu_ids()
    if name == "auto":
        assigned = gpu_ids or tuple(v for v in (visible or "").split(",") if v.strip() and v.strip() != "-1")
        if torch.cuda.is_available():
            return DeviceChoice(torch.device("cuda", 0), name, gpu_ids, visible)
        warning = None
        if assigned:
            warning = (f"GPU(s) {','.join(assigned)} assigned (CUDA_VISIBLE_DEVICES={visible!r}) but torch "
                       "sees no usable CUDA device; training on the CPU")
            log.warning(warning)
        return DeviceChoice(torch.device("cpu"), name, gpu_ids, visible, warning)
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device: {name!r} requested but CUDA is not available; use 'cpu' or 'auto'")
    return DeviceChoice(device, name, gpu_ids, visible)


# --------------------------------------------------------------------------- Ray resource request


@dataclass(frozen=True)
class CellResources:
    """What each grid cell asks the Ray scheduler for; fractions share a GPU/CPU between cells."""

    gpus: float = 0.0
    cpus: float = 1.0

    def __post_init__(self) -> None:
        problems = []
        if not _is_number(self.gpus) or self.gpus < 0:
            problems.append(f"--gpus-per-cell: must be a number >= 0 (fractions share a GPU), got {self.gpus!r}")
        if not _is_number(self.cpus) or self.cpus <= 0:
            problems.append(f"--cpus-per-cell: must be a number > 0 (e.g. 1 or 0.5), got {self.cpus!r}")
        if problems:
            raise ConfigError(problems)

    @property
    def is_default(self) -> bool:
        return self.gpus == 0 and self.cpus == 1

    def ray_options(self) -> dict[str, float]:
        """Keyword arguments for ``remote_fn.options(...)``."""
        return {"num_gpus": self.gpus, "num_cpus": self.cpus}

    def check_cluster(self, cluster: dict[str, float]) -> None:
        """Refuse a request no node of the cluster could ever meet (Ray would wait forever)."""
        for key, wanted, option in (("GPU", self.gpus, "--gpus-per-cell"), ("CPU", self.cpus, "--cpus-per-cell")):
            have = float(cluster.get(key, 0.0))
            if wanted > have:
                raise ConfigError(f"{option} {wanted:g}: the Ray cluster has {have:g} {key}(s) in total, so no "
                                  f"cell could ever be scheduled; lower {option} or add {key} nodes")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


# --------------------------------------------------------------------------- data on the device


@dataclass(frozen=True)
class Placement:
    """Whether the scenario's tensors went to the device, and why (the `device.data_placement` tag)."""

    moved: bool
    reason: str
    nbytes: int = 0

    @property
    def loader_kwargs(self) -> dict[str, Any]:
        """DataLoader options the placement needs: device-resident tensors cannot be pinned."""
        return {"pin_memory": False} if self.moved else {}


def scenario_tensor_stores(scenario) -> list[Any]:
    """The distinct tensor-holding datasets (`cl.scenarios` `_Samples`) under a scenario's streams.

    Experiences are subsets of a few underlying datasets; moving those moves every experience.
    """
    from cl.scenarios import _Samples

    found: dict[int, Any] = {}
    seen: set[int] = set()
    for stream in (scenario.benchmark.train_stream, scenario.benchmark.test_stream):
        for experience in stream:
            for obj in _walk(experience.dataset, seen):
                if isinstance(obj, _Samples):
                    found[id(obj)] = obj
    return list(found.values())


def _walk(obj, seen: set[int]) -> Iterator[Any]:
    if id(obj) in seen:
        return
    seen.add(id(obj))
    yield obj
    for attr in ("_flat_data", "_datasets"):
        child = getattr(obj, attr, None)
        if child is None:
            continue
        for item in (child if isinstance(child, (list, tuple)) else [child]):
            yield from _walk(item, seen)


def free_device_bytes(device) -> int | None:
    """Free memory of an accelerator (None when it cannot be read, e.g. the CPU)."""
    import torch

    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    return None


def place_scenario_data(scenario, device, policy: str, *, free_bytes: int | None = None) -> Placement:
    """Move the scenario's tensors to `device` once, if `policy` is 'auto' and they fit.

    They fit when they take at most `DATA_ON_DEVICE_SHARE` of the device's free memory (the rest
    is for the model, activations and the optimiser). On the CPU this is a no-op.
    """
    if policy == "never":
        return Placement(False, "train.data_on_device=never")
    if device.type == "cpu":
        return Placement(False, "cpu: the data is already there")
    stores = [s for s in scenario_tensor_stores(scenario) if hasattr(s.x, "nbytes")]
    nbytes = sum(int(s.x.nbytes) for s in stores)
    if not stores:
        return Placement(False, "no tensor-backed datasets in this scenario")
    free = free_bytes if free_bytes is not None else free_device_bytes(device)
    if free is None:
        return Placement(False, f"free memory of {device} unknown", nbytes)
    if nbytes > DATA_ON_DEVICE_SHARE * free:
        return Placement(False, f"{nbytes / 2**20:.0f} MB > {DATA_ON_DEVICE_SHARE:.0%} of the "
                                f"{free / 2**20:.0f} MB free on {device}", nbytes)
    for store in stores:
        store.x = store.x.to(device)
    return Placement(True, f"{nbytes / 2**20:.1f} MB moved to {device}", nbytes)
