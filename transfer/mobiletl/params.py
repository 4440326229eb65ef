"""MobileTL's options (validated without importing torch) and its registration."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

from cl.registry import REPRODUCTIONS, TRANSFERS, Params, added_option


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
    method: Literal["full", "last_layer", "bias_bn", "mobiletl", "plain_topk"] = Field(
        "mobiletl", description="plain_topk: the same top blocks as mobiletl train, exact activations, ordinary BN")
    num_trainable_blocks: int = Field(5, ge=1, description="mobiletl / plain_topk: top inverted-residual blocks that train")
    activation_mask: Literal["signed", "none"] = Field(
        "signed", description="mobiletl: 1-bit activation masks (plain_topk: always exact)")
    quantize_saved_activations: Literal["none", "int8", "int4"] = "none"
    # options added after the first grids (left out of the config hash while at their default)
    fold_bn: bool = added_option(True, description="mobiletl: the top blocks' internal BNs train only their shift "
                                                   "(folded); false = ordinary trainable BN")
    bn_reestimate: bool = added_option(False, description="mobiletl / plain_topk: before transfer, re-estimate the "
                                                          "BN running statistics on target training data (no grad)")
    val_fraction: float = added_option(0.0, ge=0.0, lt=1.0, description="share of the target training data held "
                                                                         "out as validation (never the test set)")
    lr_candidates: Optional[list[float]] = added_option(None, description="transfer lrs tried, each scored on the "
                                                                          "validation split; the best one's model is "
                                                                          "kept (needs val_fraction > 0)")

    @model_validator(mode="after")
    def _mobiletl_options_need_mobiletl(self):
        explicit = self.model_fields_set
        if self.method != "mobiletl" and self.quantize_saved_activations != "none":
            raise ValueError("quantize_saved_activations applies to method 'mobiletl' only")
        if self.method == "plain_topk":
            # activation_mask is always in a resolved config (at its default 'signed'), so only fold_bn can be
            # told apart as set by hand; plain_topk's activations are exact whatever activation_mask says
            if "fold_bn" in explicit and self.fold_bn:
                raise ValueError("fold_bn: method 'plain_topk' trains ordinary BN; for folded BN use method 'mobiletl'")
        elif self.method != "mobiletl":
            for name in ("fold_bn", "activation_mask"):
                if name in explicit and getattr(self, name) != type(self).model_fields[name].default:
                    raise ValueError(f"{name} applies to method 'mobiletl' only")
        if self.bn_reestimate and self.method not in ("mobiletl", "plain_topk"):
            raise ValueError("bn_reestimate applies to methods 'mobiletl' and 'plain_topk' only")
        if self.lr_candidates is not None:
            if not self.lr_candidates or any(lr <= 0 for lr in self.lr_candidates):
                raise ValueError("lr_candidates: give one or more positive learning rates")
            if self.val_fraction <= 0:
                raise ValueError("lr_candidates needs val_fraction > 0 (the lr is chosen on validation, never test)")
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
REPRODUCTIONS.register("mobiletl", target="transfer.mobiletl.claims:REPRODUCTION",
                       summary="MobileTL vs full, last-layer, bias+BN and plain top-k (64 px, lr on validation)")
REPRODUCTIONS.register("mobiletl_approximations", target="transfer.mobiletl.claims:APPROXIMATIONS",
                       summary="MobileTL's approximations vs exact ones (the first, 32-px grid)")
