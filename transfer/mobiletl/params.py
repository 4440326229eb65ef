"""MobileTL's options (validated without importing torch) and its registration."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

from cl.registry import REPRODUCTIONS, TRANSFERS, Params


class MobileTLTransferParams(Params):
    """Pretrain a small MobileNet on `source`, transfer it to `target` with `method`."""

    source: Literal["mnist", "fmnist", "digits"] = Field("mnist", description="pretraining data")
    target: Literal["mnist", "fmnist", "digits"] = Field("fmnist", description="transfer data")
    data_root: Optional[str] = Field(None, description="torchvision layout (default $CLSUITE_DATA_ROOT)")
    source_samples_per_class: Optional[int] = Field(1000, ge=1, description="pretraining subset (None = all)")
    target_samples_per_class: Optional[int] = Field(500, ge=1, description="transfer subset (None = all)")
    test_samples: Optional[int] = Field(None, ge=1, description="evaluate on the first N target test images")
    arch: Literal["mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large"] = "mobilenet_v2"
    width_mult: float = Field(0.35, gt=0, le=1.5)
    image_size: int = Field(32, ge=16, description="inputs are resized to image_size²; grayscale → 3 channels")
    pretrain_epochs: int = Field(3, ge=1)
    method: Literal["full", "last_layer", "bias_bn", "mobiletl"] = "mobiletl"
    num_trainable_blocks: int = Field(5, ge=1, description="mobiletl: top inverted-residual blocks that train")
    activation_mask: Literal["signed", "none"] = "signed"
    quantize_saved_activations: Literal["none", "int8", "int4"] = "none"

    @model_validator(mode="after")
    def _mobiletl_options_need_mobiletl(self):
        if self.method != "mobiletl" and self.quantize_saved_activations != "none":
            raise ValueError("quantize_saved_activations applies to method 'mobiletl' only")
        return self

    def preflight(self) -> None:
        from cl.datafiles import check_dataset

        for dataset in {self.source, self.target} - {"digits"}:
            check_dataset(dataset, self.data_root)


TRANSFERS.register(
    "mobiletl", params=MobileTLTransferParams, target="transfer.mobiletl.experiment:run",
    summary="MobileTL (Chiang et al. 2023): memory-lean transfer of a MobileNet, vs. full / last-layer / bias+BN",
    smoke_options={"source": "digits", "target": "digits", "source_samples_per_class": 20,
                   "target_samples_per_class": 10, "test_samples": 100, "width_mult": 0.25, "image_size": 16,
                   "pretrain_epochs": 1, "num_trainable_blocks": 2})
REPRODUCTIONS.register("mobiletl", target="transfer.mobiletl.claims:REPRODUCTION", summary="MobileTL vs full, last-layer, bias+BN")
