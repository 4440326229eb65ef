"""ScaLearn's options (validated without importing torch) and its registration."""
from __future__ import annotations

from typing import Annotated, Literal, Optional, Union

from pydantic import Discriminator, Field, Tag, model_validator

from cl.registry import REPRODUCTIONS, TRANSFERS, Params
from transfer.common.textfiles import TextFile, check_entries, entry_names, named_or_file


SCALEARN_METHODS = ("scalearn", "scalearn_uniform", "scalearn_pp", "scalearn_uniform_pp",
                    "fusion", "average", "adapter", "full")
GLUE_NAMES = ("cola", "mrpc", "rte", "sst2", "stsb", "wnli")
GLUE_TASKS = Literal[GLUE_NAMES]


class ScaLearnFileTask(TextFile):
    """A ScaLearn task from your own file (`transfer.common.textfiles`), scored by `metric` on its dev split."""

    kind: Literal["classification", "regression"] = Field("classification",
                                                          description="regression: a numeric label (MSE loss)")
    metric: Optional[Literal["acc", "mcc", "macro_f1", "pearson"]] = Field(
        None, description="the dev score (default: acc for classification, pearson for regression)")

    @model_validator(mode="after")
    def _metric_fits_kind(self):
        if self.name in GLUE_NAMES:
            raise ValueError(f"task name {self.name!r} is a GLUE task; name your own task differently")
        default = "pearson" if self.kind == "regression" else "acc"
        metric = self.metric or default
        if (metric == "pearson") != (self.kind == "regression"):
            raise ValueError(f"task {self.name!r}: metric {metric!r} does not score a {self.kind} task "
                             f"({'pearson' if self.kind == 'regression' else 'acc, mcc or macro_f1'})")
        object.__setattr__(self, "metric", metric)
        return self


SCALEARN_TASK = Annotated[Union[Annotated[GLUE_TASKS, Tag("name")], Annotated[ScaLearnFileTask, Tag("file")]],
                          Discriminator(named_or_file)]


class ScaLearnTransferParams(Params):
    """Stage-1 LoRA adapters for every task of `tasks`, then transfer to `target` with `method`."""

    target: str = Field("rte", description="the task transferred to (a GLUE name or the name of an own-file "
                                           "task in tasks); its own adapter is combined last")
    tasks: tuple[SCALEARN_TASK, ...] = Field(
        ("mrpc", "stsb", "sst2", "rte"),
        description="adapters combined in stage 2: the target and its sources; each a GLUE name or a task from "
                    "your own file, {name, path | train + dev, text, [text_pair], label, [kind], [metric]}")
    method: Literal[SCALEARN_METHODS] = Field("scalearn", description=", ".join(SCALEARN_METHODS))
    model: str = Field("minilm", description="'minilm' (bundled all-MiniLM-L6-v2), 'tiny-random' (tests) "
                                             "or a local Hugging Face *ForSequenceClassification checkpoint")
    data_root: Optional[str] = Field(None, description="holds text/glue/<Task>/ (default $CLSUITE_DATA_ROOT)")
    train_samples: Optional[int] = Field(1000, ge=1, description="training subset per task (None = all)")
    eval_samples: Optional[int] = Field(None, ge=1, description="dev subset (None = the whole dev set)")
    max_length: int = Field(128, ge=8, description="tokens per example (reference: 128)")
    lora_rank: int = Field(8, ge=1)
    lora_alpha: int = Field(16, ge=1)
    lora_target: str = Field(r".*layer\.\d+\.output\.dense",
                             description="regex of the adapted modules; default: each layer's FFN output")
    adapter_epochs: int = Field(3, ge=1, description="stage 1 epochs per task adapter")
    adapter_lr: float = Field(1e-3, gt=0, description="stage 1 learning rate (AdamW)")
    fusion_lr: float = Field(5e-5, gt=0, description="stage 2 lr of the fusion baseline (reference 5e-5)")
    full_lr: float = Field(2e-5, gt=0, description="lr of the full fine-tuning baseline")
    omega_dropout: float = Field(0.3, ge=0, lt=1, description="dropout on ω (reference 0.3)")
    average_combination: Literal["cat", "linear"] = Field(
        "cat", description="peft add_weighted_adapter mode of the average baseline; 'cat' averages the "
                           "adapters' outputs exactly, 'linear' averages A and B (cross terms)")

    @model_validator(mode="after")
    def _target_among_tasks(self):
        names = self.task_names()
        if self.target not in names:
            raise ValueError(f"target {self.target!r} must be one of tasks {names}")
        check_entries(self.tasks, "tasks", None, "transfer.tasks")
        return self

    def task_names(self) -> list[str]:
        return entry_names(self.tasks)

    def target_task(self):
        """The target as an entry of `tasks` (its name, or its own-file definition)."""
        return self.tasks[self.task_names().index(self.target)]

    def preflight(self) -> None:
        from transfer.common.glue import glue_dir, load_file_task

        glue = [t for t in self.tasks if isinstance(t, str)]
        if glue:
            glue_dir(self.data_root, glue)
        check_entries(self.tasks, "tasks", load_file_task, "transfer.tasks")


TRANSFERS.register(
    "scalearn", params=ScaLearnTransferParams, target="transfer.scalearn.experiment:run",
    summary="ScaLearn (Frohmann et al. 2024): learned scaling of frozen task adapters, vs. fusion / average / "
            "adapter / full fine-tuning",
    smoke_options={"model": "tiny-random", "target": "rte", "tasks": ("mrpc", "rte"), "train_samples": 16,
                   "eval_samples": 16, "max_length": 32, "adapter_epochs": 1})
REPRODUCTIONS.register("scalearn", target="transfer.scalearn.claims:REPRODUCTION", summary="ScaLearn vs its baselines on GLUE")
