"""TimeTic's model zoo and its data: small forecasters, synthetic families, statsmodels' real series.

Our stand-ins for the paper's ten time-series foundation models (TSFMs) are small PyTorch
forecasters, each pretrained *here*, in CPU seconds, on a different family of synthetic
series, so that they transfer differently to a new dataset.

Forecasting set-up (shared by pretraining, zero-shot and fine-tuning)
    A window is ``context`` (default 32) past values followed by up to ``MAX_HORIZON`` (16)
    future values. Every window is standardised by the mean and standard deviation of its own
    context (instance normalisation, as RevIN and most TSFMs do), so a model sees scale-free
    inputs and errors are comparable across datasets. A forecaster maps the standardised
    context (N, L) to MAX_HORIZON standardised future values; a task with horizon h uses the
    first h outputs. Error = mean squared error over the h standardised future values.

Architectures (`ARCHS`), each exposing ``hidden_states(x)`` for the entropy profile
    ``linear``       one Linear(L → H)                  states: input, output
    ``mlp``          L → w → w → H, GELU                states: input, each hidden layer, output
    ``transformer``  patches of 4 → d, learned positions, ``layers`` pre-norm encoder layers, mean pool → H
                     states: input, patch embedding, each encoder layer (mean-pooled over patches), output
    ``tcn``          causal dilated 1-D convolutions (dilation 1, 2, 4, …), residual, last step → H
                     states: input, stem, each block (mean-pooled over time), output

Synthetic families (`FAMILIES`): ``sines`` (1–3 sinusoids + noise), ``arma`` (ARMA(2,1),
stationary), ``random_walk`` (Gaussian steps with drift), ``trend_season`` (linear or
quadratic trend + one seasonal period + noise), ``regime`` (piecewise segments with
switching mean / AR dynamics / volatility) — the pretraining families; ``square_wave``,
``garch`` (GARCH(1,1) volatility clustering) and ``logistic_map`` (chaotic, noisy) are held
out: they are only ever target datasets.

Real target series (`REAL_SERIES`), all bundled with statsmodels (no download): yearly
sunspot activity, weekly Mauna Loa CO2 (gaps interpolated), yearly Nile flow, monthly El
Niño sea-surface temperature (1950–2010, flattened), and quarterly US macrodata columns
(real GDP, CPI, unemployment, inflation). statsmodels 0.15 ships no ``elec_equip``; it is
not used.

Checkpoints: `load_forecaster(path)` reads a directory written by `save_forecaster`
(``config.json`` + ``model.pt`` state dict), or a ``.pt`` file holding a whole
``torch.nn.Module`` that implements the same protocol (``forward(x: (N, L)) -> (N, H)`` and
``hidden_states(x) -> list of (N, ..., d) tensors``), e.g. a real TSFM wrapped by its user.
Whole-module files are unpickled (``weights_only=False``): load only files you trust.
"""
from __future__ import annotations

import itertools
import json
import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from cl.config import canonical_hash
from cl.cache import cached

log = logging.getLogger(__name__)

MAX_HORIZON = 16
STD_FLOOR = 1e-3


# ============================================================================ synthetic families


def _sines(rng: np.random.Generator, n: int) -> np.ndarray:
    t = np.arange(n)
    out = np.zeros(n)
    for _ in range(rng.integers(1, 4)):
        period = rng.uniform(4, 60)
        out += rng.uniform(0.3, 1.5) * np.sin(2 * np.pi * t / period + rng.uniform(0, 2 * np.pi))
    return out + rng.uniform(0.02, 0.3) * rng.standard_normal(n)


def _arma(rng: np.random.Generator, n: int) -> np.ndarray:
    # AR(2) inside the stationarity triangle, plus an MA(1) term
    while True:
        a1, a2 = rng.uniform(-1.5, 1.5), rng.uniform(-0.9, 0.9)
        if a2 + a1 < 1 and a2 - a1 < 1 and abs(a2) < 1:
            break
    b1 = rng.uniform(-0.8, 0.8)
    e = rng.standard_normal(n + 100)
    x = np.zeros(n + 100)
    for i in range(2, n + 100):
        x[i] = a1 * x[i - 1] + a2 * x[i - 2] + e[i] + b1 * e[i - 1]
    return x[100:]


def _random_walk(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.cumsum(rng.uniform(-0.3, 0.3) + rng.uniform(0.2, 1.0) * rng.standard_normal(n))


def _trend_season(rng: np.random.Generator, n: int) -> np.ndarray:
    t = np.arange(n) / n
    trend = rng.uniform(-3, 3) * t + rng.uniform(-2, 2) * t ** 2
    period = rng.choice([4, 7, 12, 24, 52]) if rng.random() < 0.8 else rng.uniform(5, 40)
    shape = np.sin(2 * np.pi * np.arange(n) / period) + 0.4 * np.sin(4 * np.pi * np.arange(n) / period + 1.0)
    return trend + rng.uniform(0.3, 1.5) * shape + rng.uniform(0.05, 0.4) * rng.standard_normal(n)


def _regime(rng: np.random.Generator, n: int) -> np.ndarray:
    x = np.zeros(n)
    i, level, prev = 0, 0.0, 0.0
    while i < n:
        length = int(rng.integers(15, 80))
        level, phi, sigma = rng.normal(level, 2.0), rng.uniform(-0.5, 0.95), rng.uniform(0.1, 1.2)
        for j in range(i, min(n, i + length)):
            prev = level + phi * (prev - level) + sigma * rng.standard_normal()
            x[j] = prev
        i += length
    return x


def _square_wave(rng: np.random.Generator, n: int) -> np.ndarray:
    period = rng.uniform(8, 30)
    phase = rng.uniform(0, period)
    duty = rng.uniform(0.3, 0.7)
    wave = (((np.arange(n) + phase) % period) < duty * period).astype(float)
    return wave + rng.uniform(0.05, 0.2) * rng.standard_normal(n)


def _garch(rng: np.random.Generator, n: int) -> np.ndarray:
    omega, alpha, beta = 0.05, rng.uniform(0.05, 0.2), rng.uniform(0.7, 0.9)
    var, x = omega / (1 - alpha - beta), np.zeros(n + 50)
    for i in range(1, n + 50):
        var = omega + alpha * x[i - 1] ** 2 + beta * var
        x[i] = math.sqrt(var) * rng.standard_normal()
    return x[50:]


def _logistic_map(rng: np.random.Generator, n: int) -> np.ndarray:
    r, v, x = rng.uniform(3.6, 3.95), rng.uniform(0.1, 0.9), np.zeros(n)
    for i in range(n):
        v = r * v * (1 - v)
        x[i] = v
    return x + 0.02 * rng.standard_normal(n)


FAMILIES: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "sines": _sines, "arma": _arma, "random_walk": _random_walk, "trend_season": _trend_season, "regime": _regime,
    "square_wave": _square_wave, "garch": _garch, "logistic_map": _logistic_map,
}
PRETRAIN_FAMILIES = ("sines", "arma", "random_walk", "trend_season", "regime")
HELD_OUT_FAMILIES = ("square_wave", "garch", "logistic_map")
SYNTHETIC_TARGET_LENGTH = 400


# ============================================================================ real series


def _statsmodels():
    try:
        import statsmodels.api as sm
    except ImportError as error:
        raise ImportError("TimeTic's real target series come with statsmodels: "
                          "pip install 'clsuite[timetic]' (statsmodels>=0.14)") from error
    return sm.datasets


def _macro(column: str) -> Callable[[], np.ndarray]:
    return lambda: _statsmodels().macrodata.load_pandas().data[column].to_numpy(float)


def _co2() -> np.ndarray:
    return _statsmodels().co2.load_pandas().data["co2"].interpolate(limit_direction="both").to_numpy(float)


REAL_SERIES: dict[str, Callable[[], np.ndarray]] = {
    "sunspots": lambda: _statsmodels().sunspots.load_pandas().data["SUNACTIVITY"].to_numpy(float),
    "co2": _co2,
    "nile": lambda: _statsmodels().nile.load_pandas().data["volume"].to_numpy(float),
    "elnino": lambda: _statsmodels().elnino.load_pandas().data.iloc[:, 1:13].to_numpy(float).ravel(),
    "macro_realgdp": _macro("realgdp"),
    "macro_cpi": _macro("cpi"),
    "macro_unemp": _macro("unemp"),
    "macro_infl": _macro("infl"),
}
DATASETS = tuple(REAL_SERIES) + HELD_OUT_FAMILIES


def load_series(name: str) -> np.ndarray:
    """A target dataset as one float series: a statsmodels series, or a held-out synthetic family
    (length 400, generated from a seed derived from its name, so it is the same everywhere)."""
    if name in REAL_SERIES:
        series = REAL_SERIES[name]()
    elif name in FAMILIES:
        seed = int(canonical_hash({"timetic_dataset": name}), 16) % (2 ** 32)
        series = FAMILIES[name](np.random.default_rng(seed), SYNTHETIC_TARGET_LENGTH)
    else:
        raise ValueError(f"dataset {name!r} is unknown; real: {', '.join(REAL_SERIES)}; "
                         f"synthetic: {', '.join(FAMILIES)}")
    series = np.asarray(series, dtype=np.float64)
    if not np.isfinite(series).all():
        raise ValueError(f"dataset {name!r} has non-finite values")
    return series


# ============================================================================ windows


def standardise(context: np.ndarray, future: np.ndarray | None = None):
    """Instance normalisation by each context's mean and std (floored at STD_FLOOR × |mean| + 1e-8)."""
    mean = context.mean(axis=-1, keepdims=True)
    std = np.maximum(context.std(axis=-1, keepdims=True), STD_FLOOR * np.abs(mean) + 1e-8)
    return (context - mean) / std, (None if future is None else (future - mean) / std)


def windows(series: np.ndarray, context: int, horizon: int, *, starts: np.ndarray | None = None):
    """(contexts (N, L), futures (N, horizon)), standardised, at every start (default: all, stride 1)."""
    last = len(series) - context - horizon
    if last < 0:
        return np.zeros((0, context)), np.zeros((0, horizon))
    starts = np.arange(last + 1) if starts is None else starts
    index = starts[:, None] + np.arange(context + horizon)[None, :]
    block = series[index]
    return standardise(block[:, :context], block[:, context:])


def train_test_windows(series: np.ndarray, context: int, horizon: int, *, test_fraction: float,
                       max_train: int, max_test: int, rng: np.random.Generator):
    """Chronological split at ``cut = n·(1 − test_fraction)``: training windows end before the cut;
    test windows forecast values at or after it (their context may reach back before it)."""
    n = len(series)
    cut = round(n * (1 - test_fraction))
    train_starts = np.arange(max(0, cut - context - horizon + 1))
    test_starts = np.arange(max(0, cut - context), n - context - horizon + 1)
    if len(train_starts) == 0 or len(test_starts) == 0:
        raise ValueError(f"series of length {n} is too short for context {context} + horizon {horizon} "
                         f"with test_fraction {test_fraction}")
    if len(train_starts) > max_train:
        train_starts = np.sort(rng.choice(train_starts, max_train, replace=False))
    if len(test_starts) > max_test:
        test_starts = np.linspace(test_starts[0], test_starts[-1], max_test).round().astype(int)
    return windows(series, context, horizon, starts=train_starts), windows(series, context, horizon,
                                                                           starts=test_starts), cut


# ============================================================================ architectures


class LinearForecaster(nn.Module):
    def __init__(self, context: int, horizon: int = MAX_HORIZON):
        super().__init__()
        self.head = nn.Linear(context, horizon)

    def hidden_states(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [x, self.head(x)]

    def forward(self, x):
        return self.head(x)


class MLPForecaster(nn.Module):
    def __init__(self, context: int, width: int = 64, depth: int = 2, horizon: int = MAX_HORIZON):
        super().__init__()
        sizes = [context] + [width] * depth
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))
        self.head = nn.Linear(width, horizon)

    def hidden_states(self, x):
        states = [x]
        for layer in self.layers:
            x = F.gelu(layer(x))
            states.append(x)
        states.append(self.head(x))
        return states

    def forward(self, x):
        return self.hidden_states(x)[-1]


class TransformerForecaster(nn.Module):
    def __init__(self, context: int, d_model: int = 32, layers: int = 2, heads: int = 4, patch: int = 4,
                 horizon: int = MAX_HORIZON):
        super().__init__()
        if context % patch:
            raise ValueError(f"context {context} must be a multiple of the patch length {patch}")
        self.patch = patch
        self.embed = nn.Linear(patch, d_model)
        self.position = nn.Parameter(0.02 * torch.randn(context // patch, d_model))
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(d_model, heads, dim_feedforward=2 * d_model, dropout=0.0, batch_first=True,
                                       norm_first=True) for _ in range(layers))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, horizon)

    def hidden_states(self, x):
        h = self.embed(x.reshape(x.shape[0], -1, self.patch)) + self.position
        states = [x, h]
        for block in self.blocks:
            h = block(h)
            states.append(h)
        states.append(self.head(self.norm(h).mean(dim=1)))
        return states

    def forward(self, x):
        return self.hidden_states(x)[-1]


class _CausalBlock(nn.Module):
    def __init__(self, channels: int, dilation: int, kernel: int = 3):
        super().__init__()
        self.pad = (kernel - 1) * dilation
        self.conv1 = nn.Conv1d(channels, channels, kernel, dilation=dilation)
        self.conv2 = nn.Conv1d(channels, channels, kernel, dilation=dilation)

    def forward(self, x):
        h = F.gelu(self.conv1(F.pad(x, (self.pad, 0))))
        return x + self.conv2(F.pad(h, (self.pad, 0)))


class TCNForecaster(nn.Module):
    def __init__(self, context: int, channels: int = 16, levels: int = 3, horizon: int = MAX_HORIZON):
        super().__init__()
        self.stem = nn.Conv1d(1, channels, 1)
        self.blocks = nn.ModuleList(_CausalBlock(channels, 2 ** i) for i in range(levels))
        self.head = nn.Linear(channels, horizon)

    def hidden_states(self, x):
        h = self.stem(x.unsqueeze(1))                       # (N, C, L)
        states = [x, h.transpose(1, 2)]
        for block in self.blocks:
            h = block(h)
            states.append(h.transpose(1, 2))                # (N, L, C): pooled over time by the profile
        states.append(self.head(h[:, :, -1]))
        return states

    def forward(self, x):
        return self.hidden_states(x)[-1]


ARCHS: dict[str, type[nn.Module]] = {"linear": LinearForecaster, "mlp": MLPForecaster,
                                     "transformer": TransformerForecaster, "tcn": TCNForecaster}


@dataclass(frozen=True)
class ZooSpec:
    """One zoo member: an architecture with its size options, pretrained on one synthetic family."""

    name: str
    arch: str
    family: str
    options: tuple[tuple[str, int], ...] = ()

    def build(self, context: int) -> nn.Module:
        if self.arch not in ARCHS:
            raise ValueError(f"zoo model {self.name!r}: arch {self.arch!r} is not one of {', '.join(ARCHS)}")
        return ARCHS[self.arch](context, **dict(self.options))


# Ten models like the paper's ten TSFMs: four architectures, several sizes, five pretraining families.
ZOO: dict[str, ZooSpec] = {s.name: s for s in [
    ZooSpec("linear-sines", "linear", "sines"),
    ZooSpec("mlp_s-arma", "mlp", "arma", (("width", 32),)),
    ZooSpec("tfm_s-random_walk", "transformer", "random_walk", (("d_model", 16), ("layers", 1), ("heads", 2))),
    ZooSpec("tcn_s-regime", "tcn", "regime", (("channels", 8), ("levels", 2))),
    ZooSpec("mlp_l-trend_season", "mlp", "trend_season", (("width", 128), ("depth", 3))),
    ZooSpec("tfm_l-regime", "transformer", "regime", (("d_model", 32), ("layers", 2))),
    ZooSpec("tcn_l-arma", "tcn", "arma", (("channels", 24), ("levels", 4))),
    ZooSpec("tcn_m-sines", "tcn", "sines", (("channels", 16), ("levels", 3))),
    ZooSpec("mlp_m-random_walk", "mlp", "random_walk", (("width", 64),)),
    ZooSpec("tfm_m-trend_season", "transformer", "trend_season", (("d_model", 24), ("layers", 2), ("heads", 2))),
]}


# ============================================================================ pretraining, cache, checkpoints


def synthetic_batch(family: str, rng: np.random.Generator, batch: int, context: int):
    """`batch` fresh series of the family, each one standardised window (context, MAX_HORIZON)."""
    series = np.stack([FAMILIES[family](rng, context + MAX_HORIZON) for _ in range(batch)])
    x, y = standardise(series[:, :context], series[:, context:])
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)


def pretrain(spec: ZooSpec, *, context: int, steps: int, batch: int, lr: float, seed: int) -> nn.Module:
    """Adam (cosine schedule) on MSE over all MAX_HORIZON outputs, fresh synthetic batches every step.
    The seed is mixed with the model's name, so two members of one family see different series."""
    seed = int(canonical_hash({"zoo_member": spec.name, "seed": seed}), 16) % (2 ** 31)
    torch.manual_seed(seed)
    model = spec.build(context)
    rng = np.random.default_rng(seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, steps)
    model.train()
    for _ in range(steps):
        x, y = synthetic_batch(spec.family, rng, batch, context)
        loss = F.mse_loss(model(x), y)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        schedule.step()
    return model.eval()


def save_forecaster(model: nn.Module, spec: ZooSpec, context: int, folder: Path, **extra) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), folder / "model.pt")
    (folder / "config.json").write_text(json.dumps({**asdict(spec), "context": context, **extra}, indent=1))


def load_forecaster(path: str | Path, context: int | None = None) -> tuple[nn.Module, dict]:
    """A forecaster from disk: a `save_forecaster` directory, or a whole-module ``.pt`` file (trusted)."""
    path = Path(path)
    if path.is_dir():
        config_file = path / "config.json"
        if not config_file.is_file():
            raise FileNotFoundError(f"{path}: a zoo checkpoint directory needs config.json and model.pt")
        config = json.loads(config_file.read_text())
        spec = ZooSpec(config["name"], config["arch"], config["family"],
                       tuple((k, v) for k, v in config.get("options", ())))
        if context is not None and config["context"] != context:
            raise ValueError(f"{path}: checkpoint context {config['context']} != requested context {context}")
        model = spec.build(config["context"])
        model.load_state_dict(torch.load(path / "model.pt", map_location="cpu"))
        return model.eval(), config
    if path.is_file():
        model = torch.load(path, map_location="cpu", weights_only=False)
        if not isinstance(model, nn.Module) or not hasattr(model, "hidden_states"):
            raise TypeError(f"{path}: expected a torch.nn.Module with hidden_states(x) and forward(x) -> (N, H); "
                            f"got {type(model).__name__}")
        return model.eval(), {"name": path.stem, "arch": type(model).__name__, "family": "external"}
    raise FileNotFoundError(f"checkpoint {path} does not exist")


def zoo_model(spec: ZooSpec, *, cache_dir: Path, context: int, steps: int, batch: int, lr: float,
              seed: int) -> nn.Module:
    """The pretrained zoo member, from ``<cache_dir>/timetic/zoo/<key>/`` when it was trained before."""
    key = {"spec": asdict(spec), "context": context, "steps": steps, "batch": batch, "lr": lr, "seed": seed,
           "version": 1}

    def pretrain_member(folder: Path) -> None:
        model = pretrain(spec, context=context, steps=steps, batch=batch, lr=lr, seed=seed)
        save_forecaster(model, spec, context, folder, pretraining=key)
        log.info("pretrained %s on %s (%d steps)", spec.name, spec.family, steps)

    folder = cached("timetic/zoo", key, pretrain_member, name=spec.name, complete="model.pt", root=cache_dir)
    return load_forecaster(folder, context)[0]
