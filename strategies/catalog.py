"""Built-in strategies: options (validated without importing Avalanche) and builder targets.

Baselines are thin entries over Avalanche 0.6's own strategies (see `strategies.baselines`).
Every memory-based strategy takes its buffer size as `mem_size` (Avalanche's iCaRL calls it
`memory_size`), so a grid can vary the budget with one key.
"""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, field_validator, model_validator

from cl.registry import PLUGINS, REPRODUCTIONS, STRATEGIES, TRANSFERS, NoParams, Params, added_option


class MemoryParams(Params):
    mem_size: int = Field(200, ge=1, description="exemplars kept in the buffer (total, all classes)")


class EWCParams(Params):
    ewc_lambda: float = Field(1.0, ge=0, description="penalty strength (tune per scenario)")
    mode: Literal["separate", "online"] = "separate"
    decay_factor: Optional[float] = Field(None, gt=0, le=1, description="online mode only")


class LwFParams(Params):
    alpha: float = Field(1.0, ge=0, description="distillation weight")
    temperature: float = Field(2.0, gt=0, description="softmax temperature of the distillation")


class ICaRLParams(MemoryParams):
    fixed_memory: bool = Field(True, description="mem_size is the total (True) or per class (False)")


class ERACEParams(MemoryParams):
    batch_size_mem: int = Field(10, ge=1, description="buffer samples per step (Avalanche default 10)")


class DarkERParams(MemoryParams):
    batch_size_mem: Optional[int] = Field(None, ge=1, description="buffer samples per step (default: batch_size)")
    alpha: float = Field(0.1, ge=0, description="logit-matching weight")
    beta: float = Field(0.5, ge=0, description="buffer cross-entropy weight (0 = DER, >0 = DER++)")


class ExpandableParams(MemoryParams):
    alpha_aux: float = Field(1.0, ge=0, description="weight of the auxiliary (new vs old) loss")
    weight_align: bool = Field(True, description="weight aligning of new-class head rows after each task")


class MEMOParams(ExpandableParams):
    split_at: str = Field("auto", description="last generalized stage (ResNet-32: 'stage_2'; "
                          "MLP/CNN: index, 'auto' = before the last layer)")
    train_shared: bool = Field(True, description="keep training the generalized blocks after task 1 "
                               "(reference `train_base`; freeze them when the base task has ≥ ~20 classes)")


class FineTuneParams(Params):
    """What one FPF call does (Zhao et al. 2023)."""

    modules: list[str] = Field(["bn", "fc"], min_length=1, description="modules to fine-tune: 'bn', 'fc', "
                               "'conv1', regexes over module names, or ['auto'] (by sensitivity score)")
    max_param_fraction: float = Field(0.02, gt=0, le=1, description="auto: parameter budget of the selection")
    iterations: int = Field(100, ge=1, description="SGD steps per FPF call")
    lr: float = Field(0.05, gt=0, description="learning rate of the fine-tuning")
    batch_size: Optional[int] = Field(None, ge=1, description="buffer batch (default: train.batch_size)")
    momentum: float = added_option(0.0, ge=0, lt=1, description="SGD momentum of the fine-tuning (fresh each call; "
                                   "0 = mammoth's default, which the paper's code base uses)")

    @field_validator("modules")
    @classmethod
    def _auto_alone(cls, modules: list[str]) -> list[str]:
        if "auto" in modules and modules != ["auto"]:
            raise ValueError("'auto' selects by score and cannot be combined with patterns; use ['auto']")
        return modules


class FPFParams(FineTuneParams):
    at: Literal["every_experience", "end"] = Field("every_experience", description="when FPF runs")
    mem_size: int = Field(200, ge=1, description="own reservoir, used only if the strategy has no buffer")
    loss: Literal["ce", "host"] = added_option("ce", description="fine-tuning loss: 'ce' = cross-entropy on the "
                                               "buffer (the paper's), 'host' = the host strategy's own replay loss "
                                               "(dark_er: its α·logit matching + β·CE; replay: CE)")
    probe: Literal["last", "all", "none"] = added_option("none", description="test accuracy per seen experience "
                                                         "right before and after the last / every FPF call")
    probe_per_class: int = added_option(100, ge=1, description="probe: test samples per class (fixed draw)")

    def check_strategy(self, strategy) -> str | None:
        """`loss: host` needs a host whose replay loss FPF knows (`strategies.fpf_host`)."""
        from strategies.fpf_host import HOSTS

        if self.loss == "host" and strategy.name not in HOSTS:
            return (f"loss: 'host' fine-tunes with the host strategy's own replay loss, which FPF knows for "
                    f"{', '.join(HOSTS)}, not for strategy {strategy.name!r}; use loss: ce (or drop it)")
        return None


class FPFTuneGroup(Params):
    """Candidate settings for one FPF call, every combination tried from the same model state."""

    modules: list[list[str]] = Field(min_length=1, description="module selections, e.g. [[fc], [bn, fc]]")
    lr: list[float] = Field(min_length=1, description="learning rates")
    iterations: list[int] = Field(min_length=1, description="steps, evaluated as checkpoints of one run per "
                                  "(modules, lr)")

    @field_validator("lr", "iterations")
    @classmethod
    def _positive(cls, values):
        if any(v <= 0 for v in values):
            raise ValueError("every value must be > 0")
        return values


class KFPFParams(FineTuneParams, MemoryParams):
    k: int = Field(100, ge=1, description="FPF calls over the whole stream, after iterations round(i·T/k)")
    valid_per_class: int = added_option(0, ge=0, description="validation samples per class carved from each "
                                        "experience's training data (never trained on); needed by `tune`")
    tune: Optional[list[FPFTuneGroup]] = added_option(None, description="choose the last call's modules, lr and "
                                                      "iterations on the validation split (every candidate from "
                                                      "the same state); the other calls use the plain options")
    probe: Literal["last", "all", "none"] = added_option("last", description="test accuracy per seen experience "
                                                         "right before and after the last / every FPF call")
    probe_per_class: int = added_option(100, ge=1, description="probe: test samples per class (fixed draw)")

    @model_validator(mode="after")
    def _tune_needs_validation(self):
        if self.tune and self.valid_per_class < 1:
            raise ValueError("tune: choosing settings needs a validation split; set valid_per_class ≥ 1 "
                             "(validation samples per class carved from the training data)")
        return self


class KFPFKDParams(KFPFParams):
    beta: float = Field(0.5, ge=0, description="weight of the MSE to the stored logits")


PLUGINS.register("fpf", params=FPFParams, target="strategies.fpf:build_fpf_plugin",
                 summary="FPF: fine-tune the forgetting-prone modules on the buffer (Zhao et al. 2023)")
STRATEGIES.register("kfpf_ce", params=KFPFParams, target="strategies.fpf:build_kfpf_ce",
                    summary="k-FPF-CE: SGD without replay + k FPF calls on a reservoir (Zhao et al. 2023)")
STRATEGIES.register("kfpf_kd", params=KFPFKDParams, target="strategies.fpf:build_kfpf_kd",
                    summary="k-FPF-KD: k-FPF whose fine-tuning also matches stored logits")

class NMNParams(Params):
    slots: int = Field(128, ge=1, description="memory slots K")
    width: int = Field(256, ge=4, description="memory width d = controller state size")
    slow_every: int = Field(4, ge=1, description="minibatches per slow step (the episode length)")
    fast_lr_factor: float = Field(0.1, gt=0, description="controllers' synthetic-gradient lr = factor × train.lr "
                                                          "(1 and 3 measured to hurt or diverge on digits)")
    synth_lr: float = Field(1e-3, gt=0, description="Adam lr of the synthesizers")
    usage_decay: float = Field(0.95, gt=0, le=1)
    shared_synthesizer: bool = Field(False, description="one synthesizer for both controllers")


# Retired as class-incremental methods (kept so experiments/nmn_mnist.yaml still runs): the memory holds only the
# last task (benchmarks/nmn_ci_probe.py). The NMN is measured on episodes: transfer `nmn_episodic`.
STRATEGIES.register("nmn_sg", params=NMNParams, target="strategies.nmn:build_nmn_sg",
                    summary="retired: class-incremental NMN, controllers on synthetic gradients; its memory holds only "
                            "the last task (use the transfer nmn_episodic)")
STRATEGIES.register("nmn_bp", params=NMNParams, target="strategies.nmn:build_nmn_bp",
                    summary="retired: the same class-incremental NMN, controllers by truncated backprop only")

STRATEGIES.register("memo", params=MEMOParams, target="strategies.memo:build_memo",
                    summary="MEMO: shared generalized blocks + one specialized block per task (Zhou et al. 2023)",
                    final_backbone_params="strategies.memo:memo_final_backbone_params")
STRATEGIES.register("der", params=ExpandableParams, target="strategies.memo:build_der",
                    summary="DER: a whole backbone per task, no pruning (Yan et al. 2021), as PyCIL runs it",
                    final_backbone_params="strategies.memo:der_final_backbone_params")

_BASELINES = [
    ("naive", NoParams, "fine-tuning, no protection against forgetting (lower bound)"),
    ("replay", MemoryParams, "experience replay from an experience-balanced buffer"),
    ("ewc", EWCParams, "Elastic Weight Consolidation (Kirkpatrick et al. 2017)"),
    ("lwf", LwFParams, "Learning without Forgetting (Li & Hoiem 2016)"),
    ("gdumb", MemoryParams, "GDumb: greedy class-balanced buffer, retrain from scratch"),
    ("er_ace", ERACEParams, "ER-ACE: replay with asymmetric cross-entropy (Caccia et al. 2022)"),
    ("dark_er", DarkERParams, "Dark Experience Replay (Buzzega et al. 2020; Avalanche's `DER`)"),
    ("cumulative", NoParams, "retrain on all data seen so far (upper bound; stores everything)"),
]

for _name, _params, _summary in _BASELINES:
    STRATEGIES.register(_name, params=_params, target=f"strategies.baselines:build_{_name}", summary=_summary)

# Avalanche's iCaRL with exemplar selection that spends its budget exactly (see strategies.icarl)
STRATEGIES.register("icarl", params=ICaRLParams, target="strategies.icarl:build_icarl",
                    summary="iCaRL: herding exemplars, distillation, nearest-mean classifier")


# The neural memory network's episodic benchmark: a whole meta-learning experiment, hence a transfer entry
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
    synth_state: Literal["all", "controller"] = added_option(
        "all", description="sg: the state whose future gradient is synthesised — all of it (h, c, query and the "
                           "memory's keys, values, read weights) or the controller's only (h, c, query; the memory "
                           "gets none, as in bp)")
    addressing: Literal["cosine", "unit"] = added_option(
        "cosine", description="how the read scores the slots: cosine(query, key) (divides by the key's norm: its "
                              "gradient blows up for barely written slots) or unit — the query normalised when it "
                              "is made, so keys are written as unit vectors, and the read a plain dot product")
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


# The papers' claims `clsuite report --reproductions` checks on the archived runs (each beside its method)
REPRODUCTIONS.register("memo", target="strategies.memo_claims:REPRODUCTION", summary="MEMO vs DER and replay")
REPRODUCTIONS.register("fpf", target="strategies.fpf_claims:PUBLISHED", summary="FPF and k-FPF vs their hosts")
REPRODUCTIONS.register("kfpf_ceiling", target="strategies.fpf_claims:CEILING", summary="one FPF call's ceiling")
REPRODUCTIONS.register("kfpf_sweep", target="strategies.fpf_claims:SWEEP",
                       summary="k-FPF: k calls × steps against FLOPs")
REPRODUCTIONS.register("nmn", target="strategies.nmn_claims:REPRODUCTION", summary="neural memory network, episodic")
