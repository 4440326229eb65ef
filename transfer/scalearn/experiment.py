"""The ScaLearn transfer experiment: stage-1 task adapters, then stage-2 transfer to a target task.

Registered as the transfer experiment ``scalearn`` (options: `transfer.scalearn.params.ScaLearnTransferParams`).
One run = one method on one target task and one seed. A task is a GLUE name or a task read from
your own CSV / TSV / JSON-lines file (`transfer.common.textfiles`; logged as ``data/<name>/...`` params,
scored by its ``metric``):

1. **Stage 1** (cached): for every task of ``tasks``, a LoRA adapter (plus its own head,
   `TaskHead`) is trained on the task and saved with peft under ``<cache>/scalearn/<key>/`` —
   keyed by model, task, data sizes, LoRA and schedule settings and seed — so every method
   and target of a grid shares one adapter per (task, seed).
2. **Stage 2** on ``target``, by ``method``:
   ``scalearn``, ``scalearn_uniform``, ``scalearn_pp``, ``scalearn_uniform_pp`` — all
   adapters frozen (sources first, target last), ω and a new head train (`transfer.scalearn.model`);
   ``fusion`` — AdapterFusion-style attention over the same adapters, new head;
   ``average`` — peft ``add_weighted_adapter`` with weights 1/N, frozen, new head;
   ``adapter`` — the target's own stage-1 adapter and head, evaluated as they are;
   ``full`` — every weight of the encoder and a new head, fine-tuned.
3. Logged: the target's GLUE metrics on its dev set (``final/<metric>`` and ``final/score``,
   the task's primary metric), trainable transfer parameters (``memory/transfer_params``,
   the head apart in ``memory/head_params``), the learned ω per adapter (``omega/<task>``:
   mean over its entries) and as a JSON artifact, and each stage-1 adapter's score on its own
   task's dev set (``stage1/<task>/dev_score``, measured once when it is trained) — a
   transfer from adapters that learned nothing measures nothing.

Optimisation (all stages): AdamW, linear decay to 0, no warm-up — the reference's schedule.
In stage 2 the task head (`TaskHead`: a new classifier, and BERT's pretrained pooler) always
trains at ``train.lr`` (reference: 6e-3, ScaLearn's);
the method's own parameters at their rate: ω at ``train.lr``, the fusion layers at
``fusion_lr`` (reference 5e-5), the encoder of full fine-tuning at ``full_lr``. (With a few
dozen steps, a head at 5e-5 or 2e-5 barely moves and would decide the comparison by itself.)
Deviations from the paper's protocol, for CPU scale: a 22.7M-parameter encoder
(all-MiniLM-L6-v2) instead of RoBERTa-base, a subset of each training set, a few epochs
instead of up to 30 with early stopping, and LoRA adapters instead of bottleneck adapters
(see `transfer.scalearn.model`). GLUE dev sets are the test sets, as in the paper.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from transformers import get_linear_schedule_with_warmup

from cl.cache import cached
from cl.training import run_epochs
from cl.transfer_run import TransferContext
from transfer.common import glue
from transfer.common.language_models import bundled_minilm_path
from transfer.common.textfiles import describe
from transfer.scalearn.model import (AdapterCombination, FusionAttention, ScaLearnConfig, ScaLearnModel, VARIANTS,
                               adapted_layers, load_adapters)

log = logging.getLogger(__name__)
HEAD_FILE = "head.safetensors"
STAGE1_SCORES = "dev_scores.json"


# ---------------------------------------------------------------- model and data

def load_tokenizer(model: str):
    from transformers import AutoTokenizer

    path = bundled_minilm_path() if model in ("minilm", "tiny-random") else Path(model)
    return AutoTokenizer.from_pretrained(str(path))


def build_classifier(model: str, num_labels: int, seed: int) -> nn.Module:
    """A sequence classifier: the bundled MiniLM, a tiny random BERT (tests), or a local checkpoint."""
    from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification
    from transformers.utils import logging as hf_logging

    torch.manual_seed(seed)                           # the new head's initialisation
    if model == "tiny-random":
        config = BertConfig(vocab_size=load_tokenizer(model).vocab_size, hidden_size=32, num_hidden_layers=2,
                            num_attention_heads=2, intermediate_size=64, max_position_embeddings=128,
                            num_labels=num_labels)
        return BertForSequenceClassification(config)
    path = bundled_minilm_path() if model == "minilm" else Path(model)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()                  # "classifier newly initialised" is expected
    try:
        return AutoModelForSequenceClassification.from_pretrained(str(path), num_labels=num_labels)
    finally:
        hf_logging.set_verbosity(verbosity)


class TaskHead(nn.Module):
    """The task head as the reference trains it. RoBERTa's classification head is dense → tanh →
    projection; BERT keeps the same dense → tanh as the model's *pooler* and only the projection as
    ``classifier``, so for BERT-style models both belong to the head. (With the classifier alone,
    the frozen pooler of a sentence-embedding checkpoint bottlenecks every method: stage-1 SST-2
    adapters reached 70% dev accuracy vs. 77% with the pooler, 500 examples, 5 epochs.)"""

    def __init__(self, classifier: nn.Module, pooler: nn.Module | None):
        super().__init__()
        self.classifier = classifier
        self.pooler = pooler


def head_of(model: nn.Module) -> TaskHead:
    """The task head of a transformers sequence classifier (``classifier`` in BERT and RoBERTa,
    plus BERT's pooler); its modules are the model's own, so training or loading it changes the model."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not hasattr(base, "classifier"):
        raise TypeError(f"{type(base).__name__} has no 'classifier' head; use a *ForSequenceClassification model")
    encoder = getattr(base, getattr(base, "base_model_prefix", ""), None)
    return TaskHead(base.classifier, getattr(encoder, "pooler", None))


@dataclass
class Encoded:
    input_ids: list[list[int]]
    token_type_ids: list[list[int]]
    labels: np.ndarray

    def __len__(self):
        return len(self.labels)

    def batch(self, index, pad_id: int, device) -> dict[str, torch.Tensor]:
        """Padded to the longest example of the batch (dynamic padding)."""
        length = max(len(self.input_ids[i]) for i in index)
        ids = torch.full((len(index), length), pad_id, dtype=torch.long)
        types = torch.zeros((len(index), length), dtype=torch.long)
        mask = torch.zeros((len(index), length), dtype=torch.long)
        for row, i in enumerate(index):
            n = len(self.input_ids[i])
            ids[row, :n] = torch.tensor(self.input_ids[i])
            types[row, :n] = torch.tensor(self.token_type_ids[i])
            mask[row, :n] = 1
        return {"input_ids": ids.to(device), "token_type_ids": types.to(device), "attention_mask": mask.to(device)}


def encode(tokenizer, split: glue.TextSplit, max_length: int) -> Encoded:
    columns = list(zip(*split.texts))
    out = tokenizer(*columns[:2], truncation=True, max_length=max_length)
    types = out.get("token_type_ids") or [[0] * len(ids) for ids in out["input_ids"]]
    return Encoded(out["input_ids"], types, split.labels)


# ---------------------------------------------------------------- training and evaluation

def task_loss(logits: torch.Tensor, labels: torch.Tensor, regression: bool) -> torch.Tensor:
    if regression:
        return F.mse_loss(logits.squeeze(-1), labels.float())
    return F.cross_entropy(logits, labels)


def train(model: nn.Module, data: Encoded, *, task: glue.Task, epochs: int, lr: float, batch_size: int, seed: int,
          pad_id: int, device, head: nn.Module | None = None, head_lr: float | None = None, extra_loss=None,
          on_epoch=None) -> int:
    """AdamW with linear decay to zero over all steps (`head`'s parameters at `head_lr`, the
    rest at `lr`); returns the number of steps."""
    head_ids = {id(p) for p in head.parameters()} if head is not None and head_lr is not None else set()
    params = [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]
    head_params = [p for p in model.parameters() if p.requires_grad and id(p) in head_ids]
    if not params and not head_params:
        raise ValueError("nothing to train: no parameter requires a gradient")
    groups = [g for g in ({"params": params, "lr": lr}, {"params": head_params, "lr": head_lr}) if g["params"]]
    optimizer = torch.optim.AdamW(groups, weight_decay=0.0)
    steps_per_epoch = -(-len(data) // batch_size)
    total = epochs * steps_per_epoch
    schedule = get_linear_schedule_with_warmup(optimizer, num_warmup_steps=0, num_training_steps=total)
    regression = glue.task_spec(task).is_regression
    generator = torch.Generator().manual_seed(seed)

    def batch_loss(index):
        logits = model(**data.batch(index, pad_id, device)).logits
        loss = task_loss(logits, torch.as_tensor(data.labels[index], device=device), regression)
        return loss + extra_loss() if extra_loss is not None else loss

    return run_epochs(model, len(data), batch_loss, optimizer, epochs=epochs, batch_size=batch_size,
                      generator=generator, after_step=schedule.step,
                      after_epoch=None if on_epoch is None else lambda epoch, loss, _: on_epoch(epoch, loss))


@torch.no_grad()
def evaluate(model: nn.Module, data: Encoded, *, task: glue.Task, pad_id: int, device, batch_size: int = 128
             ) -> dict[str, float]:
    model.eval()
    predictions = []
    for start in range(0, len(data), batch_size):
        logits = model(**data.batch(range(start, min(start + batch_size, len(data))), pad_id, device)).logits
        predictions.append(logits.squeeze(-1) if glue.task_spec(task).is_regression else logits.argmax(-1))
    metrics = glue.scores(task, torch.cat(predictions).cpu().numpy(), data.labels)
    metrics["score"] = glue.primary_score(task, metrics)
    return metrics


# ---------------------------------------------------------------- stage 1

def lora_config(params):
    from peft import LoraConfig

    return LoraConfig(r=params.lora_rank, lora_alpha=params.lora_alpha, lora_dropout=0.0,
                      target_modules=params.lora_target)


def stage1_adapter(ctx: TransferContext, params, task, tokenizer) -> Path:
    """Directory of the task's stage-1 adapter (peft) and head; trained unless cached. An own-file task's
    key holds the digest of its definition and files, so an edited file trains a new adapter."""
    from peft import get_peft_model
    from safetensors.torch import save_file

    name = glue.task_name(task)
    task_key = {"file": name, "sha256": glue.load_file_task(task).sha256} if glue.is_file_task(task) else task
    key = {"model": params.model, "task": task_key, "train_samples": params.train_samples,
           "max_length": params.max_length, "lora_rank": params.lora_rank, "lora_alpha": params.lora_alpha,
           "lora_target": params.lora_target, "epochs": params.adapter_epochs, "lr": params.adapter_lr,
           "batch_size": ctx.train.batch_size, "seed": ctx.seed, "head": "pooler+classifier"}

    def train_adapter(folder: Path) -> None:
        data = encode(tokenizer, load_split(params, task, "train", ctx.seed), params.max_length)
        model = get_peft_model(build_classifier(params.model, glue.task_spec(task).num_labels, ctx.seed),
                               lora_config(params))
        head_of(model).requires_grad_(True)
        model.to(ctx.device)
        train(model, data, task=task, epochs=params.adapter_epochs, lr=params.adapter_lr,
              batch_size=ctx.train.batch_size, seed=ctx.seed, pad_id=tokenizer.pad_token_id, device=ctx.device,
              on_epoch=lambda e, loss: ctx.runlog.log_metrics({f"stage1/{name}/train_loss": loss}, step=e))
        dev = encode(tokenizer, load_split(params, task, "dev", 0), params.max_length)
        scores = evaluate(model, dev, task=task, pad_id=tokenizer.pad_token_id, device=ctx.device)
        model.save_pretrained(str(folder))
        save_file({k: v.detach().cpu().contiguous() for k, v in head_of(model).state_dict().items()},
                  folder / HEAD_FILE)
        (folder / STAGE1_SCORES).write_text(json.dumps(scores, indent=1))

    return cached("scalearn", key, train_adapter, name=name, complete=HEAD_FILE, root=ctx.cache_dir)


def stage1_scores(adapter_dir: Path) -> dict[str, float]:
    """The stage-1 adapter's own dev metrics, measured when it was trained (empty for older caches)."""
    path = adapter_dir / STAGE1_SCORES
    return json.loads(path.read_text()) if path.is_file() else {}


def load_split(params, task, split: str, seed: int) -> glue.TextSplit:
    data = glue.load_split(task, split, params.data_root)
    n = params.train_samples if split == "train" else params.eval_samples
    return data.subset(n, seed)


# ---------------------------------------------------------------- stage 2

def transfer_model(ctx, params, adapter_dirs: dict[str, Path]):
    """(model, learning rate of the method's own parameters, extra loss or None) for the method."""
    from safetensors.torch import load_file

    num_labels = glue.task_spec(params.target_task()).num_labels
    base = build_classifier(params.model, num_labels, ctx.seed)
    method = params.method
    if method == "full":
        return base, params.full_lr, None
    if method == "adapter":
        model = load_adapters(base, {params.target: adapter_dirs[params.target]})
        head_of(model).load_state_dict(load_file(adapter_dirs[params.target] / HEAD_FILE))
        model.requires_grad_(False)
        return model, None, None
    peft_model = load_adapters(base, adapter_dirs)
    names = list(adapter_dirs)
    if method in VARIANTS:
        config = ScaLearnConfig(adapters=tuple(names), variant=method, dropout=params.omega_dropout,
                                adapter_paths={k: str(v) for k, v in adapter_dirs.items()})
        model = ScaLearnModel(peft_model, config)
        head_of(peft_model).requires_grad_(True)
        return model, ctx.train.lr, None
    peft_model.requires_grad_(False)
    head_of(peft_model).requires_grad_(True)
    if method == "average":
        peft_model.add_weighted_adapter(names, [1.0 / len(names)] * len(names), "average",
                                        combination_type=params.average_combination)
        peft_model.set_adapter("average")
        peft_model.requires_grad_(False)                # set_adapter made the merged adapter trainable
        head_of(peft_model).requires_grad_(True)
        return peft_model, ctx.train.lr, None
    if method == "fusion":
        layers = adapted_layers(peft_model, names)
        fusion = FusionAttention(AdapterCombination.widths(layers))
        peft_model.fusion = fusion                      # registered, so .to()/.train() reach it
        AdapterCombination(peft_model, names, fusion)
        fusion.requires_grad_(True)
        return peft_model, params.fusion_lr, fusion.regularization_loss
    raise ValueError(f"unknown method {method!r}")


def run(ctx: TransferContext, params) -> dict[str, float]:
    tokenizer = load_tokenizer(params.model)
    target = params.target_task()
    sources = [t for t in params.tasks if t is not target]
    for task in params.tasks:                                       # what an own-file task read
        if glue.is_file_task(task):
            loaded = glue.load_file_task(task)
            ctx.runlog.log_params({f"data/{task.name}/{k}": v for k, v in describe(loaded).items()})
    order = [glue.task_name(t) for t in sources + [target]]
    needs = [target] if params.method == "adapter" else ([] if params.method == "full" else sources + [target])
    adapter_dirs = {glue.task_name(task): stage1_adapter(ctx, params, task, tokenizer) for task in needs}

    model, lr, extra_loss = transfer_model(ctx, params, adapter_dirs)
    model.to(ctx.device)
    head = head_of(model.model if isinstance(model, ScaLearnModel) else model)
    head_params = sum(p.numel() for p in head.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    steps = 0
    if params.method != "adapter":
        data = encode(tokenizer, load_split(params, target, "train", ctx.seed + 1), params.max_length)
        steps = train(model, data, task=target, epochs=ctx.train.epochs, lr=lr, head=head,
                      head_lr=ctx.train.lr, batch_size=ctx.train.batch_size, seed=ctx.seed + 1,
                      pad_id=tokenizer.pad_token_id, device=ctx.device, extra_loss=extra_loss,
                      on_epoch=lambda e, loss: (ctx.runlog.log_metrics({"train/loss": loss}, step=e),
                                                ctx.runlog.progress(e + 1, ctx.train.epochs, f"epoch {e + 1}")))
    dev = encode(tokenizer, load_split(params, target, "dev", 0), params.max_length)
    metrics = evaluate(model, dev, task=target, pad_id=tokenizer.pad_token_id, device=ctx.device)

    result = dict(metrics)
    for task, adapter_dir in adapter_dirs.items():                  # did each source adapter learn its task?
        if "score" in (scores := stage1_scores(adapter_dir)):
            result[f"stage1/{task}/dev_score"] = scores["score"]
    if params.method == "adapter":
        transfer_params = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    else:
        transfer_params = trainable - head_params
    result.update({"memory/transfer_params": transfer_params, "memory/head_params": head_params,
                   "train_steps": steps})
    if isinstance(model, ScaLearnModel):
        omega = model.omega()
        means = {task: float(np.mean([w[i].mean().item() for w in omega.values()])) for i, task in enumerate(order)}
        result.update({f"omega/{task}": value for task, value in means.items()})
        ctx.runlog.log_artifact("omega.json", json.dumps(
            {"adapters": order, "groups": {k: v.tolist() for k, v in omega.items()}}).encode())
    return result
