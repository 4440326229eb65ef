"""TimeTic's options (validated without importing torch) and its registration."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

from cl.registry import COMMANDS, REPRODUCTIONS, TRANSFERS, Params


TIMETIC_MODELS = ("linear-sines", "mlp_s-arma", "tfm_s-random_walk", "tcn_s-regime", "mlp_l-trend_season",
                  "tfm_l-regime", "tcn_l-arma", "tcn_m-sines", "mlp_m-random_walk", "tfm_m-trend_season")
TIMETIC_DATASETS = ("sunspots", "co2", "nile", "elnino", "macro_realgdp", "macro_cpi", "macro_unemp", "macro_infl",
                    "square_wave", "garch", "logistic_map")


class TimeTicTransferParams(Params):
    """Rank a zoo of pretrained forecasters on held-out datasets by in-context learning over a table (TimeTic)."""

    datasets: tuple[Literal[TIMETIC_DATASETS], ...] = Field(
        TIMETIC_DATASETS, description="target datasets (statsmodels series + held-out synthetic families)")
    models: tuple[Literal[TIMETIC_MODELS], ...] = Field(TIMETIC_MODELS, description="zoo members")
    checkpoints: tuple[str, ...] = Field((), description="extra forecasters from disk (timetic_zoo.load_forecaster)")
    target: Optional[Literal[TIMETIC_DATASETS]] = Field(None, description="hold out only this dataset "
                                                                          "(default: each in turn)")
    horizons: tuple[int, ...] = Field((4, 8, 16), description="forecast horizons = tasks (each 1..16)")
    features: Literal["full", "no_zero_shot", "meta", "entropy"] = Field("full", description="table columns used")
    learner: Literal["auto", "tabpfn", "gp", "hgb"] = Field(
        "auto", description="in-context learner; auto = TabPFN if its weights are on disk, else `fallback`")
    model_path: Optional[str] = Field(None, description="TabPFN regressor weights (.ckpt) on disk")
    fallback: Literal["gp", "hgb"] = Field("gp", description="auto's learner when TabPFN is unavailable")
    max_context: Optional[int] = Field(1000, ge=10, description="context rows used per fit (seeded sample)")
    context: int = Field(32, ge=8, description="input window length (a multiple of 4)")
    segments: int = Field(6, ge=1, description="sampled windows (table rows) per dataset and model")
    segment_length: int = Field(96, ge=24)
    profile_length: int = Field(8, ge=2, description="entropy profile points over relative depth")
    test_fraction: float = Field(0.3, gt=0, lt=1)
    pretrain_steps: int = Field(200, ge=1)
    finetune_steps: int = Field(50, ge=1)
    finetune_lr: float = Field(1e-3, gt=0)

    @model_validator(mode="after")
    def _consistent(self):
        if len(set(self.datasets)) < 2:
            raise ValueError("datasets: leave-one-dataset-out needs at least 2 distinct datasets")
        if self.target is not None and self.target not in self.datasets:
            raise ValueError(f"target {self.target!r} must be one of datasets {list(self.datasets)}")
        if not self.horizons or any(not 1 <= h <= 16 for h in self.horizons):
            raise ValueError(f"horizons: each must be in 1..16, got {list(self.horizons)}")
        if self.context % 4:
            raise ValueError(f"context: {self.context} must be a multiple of 4 (the transformer's patch length)")
        if self.segment_length < self.context + max(self.horizons):
            raise ValueError(f"segment_length {self.segment_length} must be ≥ context + longest horizon "
                             f"({self.context + max(self.horizons)})")
        return self

    def preflight(self) -> None:
        real = [d for d in self.datasets if not d.startswith(("square_wave", "garch", "logistic_map"))]
        if real:
            try:
                import statsmodels  # noqa: F401
            except ImportError:
                from cl.errors import ConfigError

                raise ConfigError(f"transfer.datasets: {real} come with statsmodels; "
                                  "pip install 'clsuite[timetic]'") from None


TRANSFERS.register(
    "timetic", params=TimeTicTransferParams, target="transfer.timetic.experiment:run",
    summary="TimeTic (arXiv 2509.23695): forecaster transferability by in-context learning over a table of "
            "meta-features and layer-wise entropy profiles, vs. the zero-shot score",
    smoke_options={"datasets": ("nile", "square_wave", "macro_unemp"), "models": ("linear-sines", "mlp_s-arma",
                   "tcn_s-regime"), "horizons": (4,), "segments": 2, "segment_length": 48, "pretrain_steps": 10,
                   "finetune_steps": 5, "learner": "auto"})
REPRODUCTIONS.register("timetic", target="transfer.timetic.claims:REPRODUCTION", summary="TimeTic's ranking vs baselines")
COMMANDS.register("recommend", target="transfer.timetic.command:recommend",
                  summary="Rank the configurations in an experiment's history for a new dataset (TimeTic's recipe on MLflow runs).")
