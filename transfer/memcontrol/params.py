"""MemControl's options (validated without importing torch) and its registration."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

from cl.registry import REPRODUCTIONS, TRANSFERS, Params, added_option


class MemControlTransferParams(Params):
    """A class-conditional DDPM pretrained on `source`, fine-tuned on `target` with repeated images, by `method`."""

    source: Literal["mnist", "fmnist", "digits"] = Field("mnist", description="pretraining data")
    target: Literal["mnist", "fmnist", "digits"] = Field("fmnist", description="fine-tuning data (same image size)")
    data_root: Optional[str] = Field(None, description="torchvision layout (default $CLSUITE_DATA_ROOT)")
    method: Literal["none", "full", "peft_all", "random", "memcontrol"] = Field(
        "memcontrol", description="none (pretrained model as is), full, peft_all (all blocks), random (random "
                                  "block mask), memcontrol (searched mask and lr)")
    peft: Literal["lora", "bias", "norm", "full"] = Field("lora", description="PEFT recipe inside a selected block")
    random_draw: int = Field(0, ge=0, description="random: which of the seed's random masks")
    lora_rank: int = Field(4, ge=1)
    lora_alpha: int = Field(8, ge=1)
    source_samples_per_class: Optional[int] = Field(1000, ge=1, description="pretraining subset (None = all)")
    target_samples_per_class: int = Field(50, ge=1, description="fine-tuning images per class")
    mem_images: int = Field(10, ge=1, description="fine-tuning images repeated (one class after another)")
    repeats: int = Field(50, ge=2, description="copies of each memorised image in the fine-tuning set")
    channels: tuple[int, int, int] = Field((16, 32, 48), description="U-Net channels per resolution level")
    emb_dim: int = Field(64, ge=8, description="time/label embedding width")
    groups: int = Field(8, ge=1, description="GroupNorm groups (channels must be multiples)")
    timesteps: int = Field(1000, ge=10, description="DDPM T (linear betas 1e-4..0.02)")
    p_uncond: float = Field(0.1, ge=0, lt=1, description="label → null label probability in training (CFG)")
    pretrain_steps: int = Field(1500, ge=1)
    pretrain_lr: float = Field(1e-3, gt=0, description="AdamW lr of the pretraining")
    pretrain_batch_size: int = Field(64, ge=1)
    classifier_samples_per_class: Optional[int] = Field(500, ge=1, description="FID feature net training subset")
    classifier_epochs: int = Field(3, ge=1)
    sample_steps: int = Field(20, ge=1, description="DDIM steps when generating")
    guidance: float = Field(2.0, ge=0, description="classifier-free guidance scale w")
    search_samples: int = Field(200, ge=10, description="generations per trial for the search's FID")
    eval_samples: int = Field(500, ge=10, description="generations for the final FID and held-out memorisation")
    fid_real: int = Field(2000, ge=10, description="real target test images of the FID reference")
    mem_passes: int = Field(8, ge=1, description="passes over the memorised images in the noise-magnitude metric")
    samples_per_prompt: int = Field(10, ge=1, description="held-out memorisation: generations per memorised prompt")
    nn_threshold: float = Field(0.5, gt=0, description="held-out memorisation: d_train / d_heldout below this")
    n_trials: int = Field(16, ge=1, description="memcontrol: completed trials of the search")
    sampler: Literal["nsga2", "tpe", "random"] = Field("nsga2", description="Optuna sampler of the search")
    population_size: int = Field(8, ge=2, description="NSGA-II population")
    lr_min: float = Field(1e-4, gt=0, description="search lr range, log-uniform (paper: 1e-5..1e-3 for SD)")
    lr_max: float = Field(1e-2, gt=0)
    choice: Literal["utopia", "quality_tolerance"] = Field(
        "utopia", description="rule picking one Pareto point: nearest to the normalised utopia point, or the "
                              "lowest memorisation within fid_tolerance of the best FID")
    fid_tolerance: float = Field(0.1, ge=0, description="quality_tolerance: relative FID slack")
    search_quality: Literal["fid", "kid"] = added_option(
        "fid", description="the search's quality objective on search_samples generations (KID is unbiased at small n)")
    search_memorization: Literal["noise", "copy_rate", "nn_ratio"] = added_option(
        "noise", description="the search's memorisation objective: the paper's noise magnitude, or what measures "
                             "copying — the fraction of the memorised prompts' generations closer to a fine-tuning "
                             "image than nn_threshold × to a reference image, or minus the median of that ratio")
    search_reference: Literal["test", "train"] = added_option(
        "test", description="real images the search compares with (quality reference, copy-rate reference): the "
                            "target's test split (as the first grid did) or training images outside the "
                            "fine-tuning set, so that nothing the search chooses on is test data")
    seed_masks: bool = added_option(False, description="start the study with the all-blocks mask and every "
                                                       "single-block mask (at the lr range's geometric middle)")
    kid_subsets: int = added_option(50, ge=2, description="KID: random subsets averaged")
    kid_subset_size: int = added_option(1000, ge=2, description="KID: rows per subset (capped at the sets' size)")

    @model_validator(mode="after")
    def _consistent(self):
        if (self.source == "digits") != (self.target == "digits"):
            raise ValueError(f"source {self.source!r} and target {self.target!r}: images must be the same size "
                             "(digits are 8×8, MNIST and Fashion-MNIST 28×28)")
        if self.lr_min >= self.lr_max:
            raise ValueError(f"lr_min ({self.lr_min}) must be below lr_max ({self.lr_max})")
        if any(c % self.groups for c in self.channels):
            raise ValueError(f"channels {list(self.channels)} must be multiples of groups ({self.groups})")
        return self

    def preflight(self) -> None:
        from cl.datafiles import check_dataset

        for dataset in {self.source, self.target} - {"digits"}:
            check_dataset(dataset, self.data_root)
        try:
            import optuna  # noqa: F401
        except ImportError:
            from cl.errors import ConfigError

            raise ConfigError("transfer.name: memcontrol needs optuna; pip install 'clsuite[memcontrol]'") from None


TRANSFERS.register(
    "memcontrol", params=MemControlTransferParams, target="transfer.memcontrol.experiment:run",
    summary="MemControl (Dutt et al., WACV 2025): searched block mask for PEFT of a DDPM, trading memorisation "
            "against FID, vs. full / all-blocks PEFT / random mask",
    smoke_options={"source": "digits", "target": "digits", "source_samples_per_class": 30,
                   "target_samples_per_class": 4, "mem_images": 2, "repeats": 4, "channels": (8, 8, 16),
                   "emb_dim": 16, "timesteps": 100, "pretrain_steps": 20, "classifier_samples_per_class": 20,
                   "classifier_epochs": 1, "sample_steps": 3, "search_samples": 20, "eval_samples": 20,
                   "fid_real": 50, "mem_passes": 1, "samples_per_prompt": 2, "n_trials": 2, "population_size": 2})
REPRODUCTIONS.register("memcontrol", target="transfer.memcontrol.claims:REPRODUCTION", summary="MemControl's searched mask vs full and PEFT")
