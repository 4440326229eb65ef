"""SkillPacks: rank by energy, bounded quantisation error, GPTQ compensation, exact round trips, safe files."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from transfer.skillpack import pack as sp
from transfer.skillpack import routing
from transfer.skillpack.pack import CompressionConfig, SkillPack, SkillPackError

pytest.importorskip("transformers")
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402


def tiny_llama(seed=0):
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                         tie_word_embeddings=True)
    return LlamaForCausalLM(config).eval()


def tuned_copy(base, seed=1, low_rank=True):
    """A 'fine-tune': low-rank changes to the matrices (as fine-tuning makes), small noise elsewhere."""
    tuned = tiny_llama()
    tuned.load_state_dict(base.state_dict())
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in tuned.named_parameters():
            if p.dim() == 2 and low_rank:
                u = torch.randn(p.shape[0], 3, generator=g)
                v = torch.randn(3, p.shape[1], generator=g)
                p.add_(0.01 * u @ v)
            else:
                p.add_(0.01 * torch.randn(p.shape, generator=g))
    return tuned


def test_energy_rank_is_the_smallest_rank_holding_the_energy():
    s = torch.tensor([3.0, 2.0, 1.0, 0.0])          # energies 9, 4, 1 of 14
    assert sp.energy_rank(s, 9 / 14) == 1
    assert sp.energy_rank(s, 9 / 14 + 1e-6) == 2
    assert sp.energy_rank(s, 13 / 14) == 2
    assert sp.energy_rank(s, 1.0) == 3
    assert sp.energy_rank(s, 1.0, max_rank=2) == 2


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_quantisation_error_is_at_most_half_a_step(bits):
    torch.manual_seed(0)
    rows = torch.randn(5, 300)
    stored = sp.quantize_rows(rows, bits, group_size=64)
    back = sp.dequantize_rows(stored, bits, rows.shape, 64)
    levels = (1 << bits) - 1
    padded = torch.nn.functional.pad(rows, (0, (-300) % 64)).view(5, -1, 64)
    padded[:, -1, 300 % 64:] = padded[:, -1, :1]
    step = (padded.amax(-1) - padded.amin(-1)) / levels           # per group
    bound = (step / 2 + 1e-3 * step + 1e-3).repeat_interleave(64, dim=1)[:, :300]   # fp16 scale rounding
    assert ((back - rows).abs() <= bound).all()
    codes_bytes = stored["codes"].numel()
    assert codes_bytes == -(-5 * 5 * 64 * bits // 8)              # packed: bits per value


def test_more_bits_less_error_and_lowrank_delta_recovered():
    base = tiny_llama()
    deltas = sp.extract(base, tuned_copy(base))
    name = "model.layers.0.mlp.up_proj.weight"
    errors = []
    for bits in (2, 4, 8, 16):
        config = CompressionConfig(energy=1.0, max_rank=3, bit_schedule=((-1, bits),), group_size=32)
        decoded = sp.encode(name, deltas[name], config).decode()
        errors.append(float((decoded - deltas[name]).norm() / deltas[name].norm()))
    assert errors == sorted(errors, reverse=True) and errors[-1] < 1e-3   # rank 3 holds a rank-3 delta


def test_policy_prunes_embeddings_factorises_matrices_keeps_vectors():
    base = tiny_llama()
    pack = SkillPack.compress("s", sp.extract(base, tuned_copy(base)), base, CompressionConfig(prune_density=0.25))
    kinds = {n: m.kind for n, m in pack.modules.items()}
    assert kinds["model.embed_tokens.weight"] == "prune"
    assert kinds["model.layers.1.self_attn.q_proj.weight"] == "lowrank"
    assert kinds["model.norm.weight"] == "dense"
    embed = pack.modules["model.embed_tokens.weight"]
    assert embed.tensors["index"].numel() == round(0.25 * 64 * 32)
    assert 0 < pack.bits_per_parameter() < 32


def test_save_load_round_trip_decodes_exactly(tmp_path):
    base = tiny_llama()
    pack = SkillPack.compress("arith", sp.extract(base, tuned_copy(base)), base,
                              CompressionConfig(bit_schedule=((2, 8), (2, 4), (-1, 2)), group_size=16))
    pack.save(tmp_path / "pack")
    again = SkillPack.load(tmp_path / "pack", base=base)
    assert again.name == "arith" and again.config == pack.config
    for name, delta in pack.deltas().items():
        assert torch.equal(again.deltas()[name], delta), name
    manifest = json.loads((tmp_path / "pack" / "skillpack.json").read_text())
    assert manifest["modules"]["model.layers.0.mlp.down_proj.weight"]["rank"] >= 1


def test_apply_then_remove_restores_the_base_bit_for_bit():
    base = tiny_llama()
    tuned = tuned_copy(base)
    before = {n: p.detach().clone() for n, p in base.named_parameters()}
    pack = SkillPack.compress("s", sp.extract(base, tuned), base, CompressionConfig(energy=0.999, prune_density=1.0))
    x = torch.randint(0, 64, (2, 7))
    with sp.apply(base, pack):
        grafted = base(x).logits
        assert not torch.equal(base.model.norm.weight, before["model.norm.weight"])
    assert all(torch.equal(p, before[n]) for n, p in base.named_parameters())
    # the grafted model is close to the fine-tune it was extracted from
    target, plain = tuned(x).logits, base(x).logits
    assert (grafted - target).norm() < 0.25 * (plain - target).norm()


def test_wrong_base_model_is_refused(tmp_path):
    base, other = tiny_llama(0), tiny_llama(1)
    pack = SkillPack.compress("s", sp.extract(base, tuned_copy(base)), base)
    with pytest.raises(SkillPackError, match="built for base model"):
        sp.apply(other, pack)
    pack.save(tmp_path / "p")
    with pytest.raises(SkillPackError, match="built for base model"):
        SkillPack.load(tmp_path / "p", base=other)


def test_truncated_or_tampered_pack_is_refused(tmp_path):
    base = tiny_llama()
    SkillPack.compress("s", sp.extract(base, tuned_copy(base)), base).save(tmp_path / "p")
    payload = tmp_path / "p" / "skillpack.safetensors"
    data = payload.read_bytes()
    payload.write_bytes(data[: len(data) // 2])
    with pytest.raises(SkillPackError, match="checksum mismatch"):
        SkillPack.load(tmp_path / "p")
    flipped = bytearray(data)
    flipped[-1] ^= 0xFF
    payload.write_bytes(bytes(flipped))
    with pytest.raises(SkillPackError, match="checksum mismatch"):
        SkillPack.load(tmp_path / "p")
    (tmp_path / "p" / "skillpack.json").write_text("{not json")
    with pytest.raises(SkillPackError, match="not a readable SkillPack manifest"):
        SkillPack.load(tmp_path / "p")


def test_the_file_holds_no_pickle(tmp_path):
    base = tiny_llama()
    SkillPack.compress("s", sp.extract(base, tuned_copy(base)), base).save(tmp_path / "p")
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["skillpack.json", "skillpack.safetensors"]
    assert b"\x80\x04" not in (tmp_path / "p" / "skillpack.safetensors").read_bytes()[:64]


@pytest.mark.parametrize("method", sp.FUSION_METHODS)
def test_fusion_baselines_merge_every_module(method):
    base = tiny_llama()
    packs = [SkillPack.compress(f"s{i}", sp.extract(base, tuned_copy(base, seed=i)), base) for i in (1, 2)]
    merged = sp.fuse(packs, method, density=0.5)
    assert set(merged) == set(packs[0].modules)
    if method == "task_arithmetic":
        name = "model.layers.0.self_attn.v_proj.weight"
        assert torch.allclose(merged[name], packs[0].deltas()[name] + packs[1].deltas()[name], atol=1e-6)


def test_router_sends_each_prompt_to_its_skills_pack():
    base = tiny_llama()
    packs = {name: SkillPack.compress(name, sp.extract(base, tuned_copy(base, seed=i)), base)
             for i, name in enumerate(("sentiment", "arithmetic"))}

    def embed(prompts):   # a stand-in encoder: digits vs. letters
        return np.array([[sum(c.isdigit() for c in p), sum(c.isalpha() for c in p)] for p in prompts], float)

    router = routing.SkillRouter(embed).fit(["12+7=", "3+4=", "great film", "awful plot"],
                                       ["arithmetic", "arithmetic", "sentiment", "sentiment"])
    seen = []

    def run(prompts):
        seen.append((float(base.model.norm.weight.detach().sum()), prompts))
        return [p.upper() for p in prompts]

    out = routing.routed(base, packs, router, ["5+5=", "nice acting", "9+1="], run)
    assert out == ["5+5=", "NICE ACTING", "9+1="]
    assert sorted(p for _, group in seen for p in group) == ["5+5=", "9+1=", "nice acting"]
    assert len({total for total, _ in seen}) == 2               # a different pack was active per group


def test_capability_transfer_sft_warms_up_from_zero_then_decays_on_a_cosine(tmp_path, monkeypatch):
    """The reference's SFT schedule: 10% linear warm-up from lr 0, then cosine decay towards 0."""
    from transfer.skillpack import experiment as skillpack_transfer
    from transfer.common.language_models import load_causal_lm
    from transfer.skillpack.skills import Example

    model, tokenizer = load_causal_lm("tiny-random", tmp_path)
    seen = []

    class RecordingAdamW(torch.optim.AdamW):
        def step(self, closure=None):
            seen.append(self.param_groups[0]["lr"])
            return super().step(closure)

    monkeypatch.setattr(skillpack_transfer.torch.optim, "AdamW", RecordingAdamW)
    examples = [Example(f"Question {i}: what comes next?", "yes") for i in range(20)]
    steps = skillpack_transfer.sft(model, tokenizer, examples, epochs=1, lr=1e-3, batch_size=1, seed=0,
                                   max_length=32)
    assert steps == len(seen) == 20
    assert seen[0] == 0.0 and seen[1] == pytest.approx(5e-4) and seen[2] == pytest.approx(1e-3)   # warm-up: 2 steps
    assert all(later <= earlier for earlier, later in zip(seen[2:], seen[3:]))                     # cosine decay
    assert seen[-1] < 0.01 * 1e-3


# --------------------------------------------------------------------------- GPTQ

def layer_inputs(n, dim, seed):
    """Correlated, anisotropic inputs (as a transformer's hidden states are); fixed mixing, fresh samples."""
    mix = torch.randn(dim, dim, generator=torch.Generator().manual_seed(99)) / dim ** 0.5
    return (torch.randn(n, dim, generator=torch.Generator().manual_seed(seed)) * torch.logspace(0, -2, dim)) @ mix


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_gptq_with_uncorrelated_inputs_is_round_to_nearest(bits):
    """H = I couples no columns: nothing to compensate, so GPTQ must store what rounding stores."""
    from transfer.skillpack.quantize import dequantize_rows, gptq_quantize, quantize_rows

    weight = torch.randn(6, 70, generator=torch.Generator().manual_seed(bits))
    for along, rows in (("rows", weight), ("columns", weight.T)):
        expected = quantize_rows(rows, bits, 16)
        found = gptq_quantize(weight, torch.eye(weight.shape[1]), bits, 16, grid_along=along)
        assert torch.equal(found["scale"], expected["scale"]) and torch.equal(found["low"], expected["low"])
        decoded = [dequantize_rows(stored, bits, rows.shape, 16) for stored in (found, expected)]
        assert torch.equal(*decoded)


@pytest.mark.parametrize("bits", [2, 4])
def test_gptq_moves_the_layers_outputs_less_than_rounding_at_the_same_bytes(bits):
    g = torch.Generator().manual_seed(0)
    low_rank = 0.01 * torch.randn(96, 8, generator=g) @ torch.randn(8, 200, generator=g)
    delta = low_rank + 1e-3 * torch.randn(96, 200, generator=g)
    calibration, held_out = layer_inputs(2000, 200, seed=1), layer_inputs(2000, 200, seed=2)
    hessian = calibration.T @ calibration / len(calibration)
    exact = sp.encode("l.weight", delta, CompressionConfig(energy=1.0, max_rank=16, bit_schedule=((-1, 16),)))
    errors, sizes = {}, {}
    for quantizer in sp.QUANTIZERS:
        config = CompressionConfig(energy=1.0, max_rank=16, bit_schedule=((4, 8), (-1, bits)), group_size=32,
                                   quantizer=quantizer)
        encoded = sp.encode("l.weight", delta, config, hessian)
        errors[quantizer] = float(((encoded.decode() - exact.decode()) @ held_out.T).norm())
        sizes[quantizer] = encoded.nbytes()
    assert sizes["gptq"] == sizes["rtn"]
    assert errors["gptq"] < 0.9 * errors["rtn"], errors


def test_calibration_hessians_average_x_xT_over_real_tokens_only():
    from transfer.skillpack.quantize import calibration_hessians

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(10, 4)
            self.proj = nn.Linear(4, 3)

        def forward(self, input_ids, attention_mask):
            return self.proj(self.embed(input_ids))

    model = Tiny()
    ids = torch.tensor([[0, 1, 2], [3, 4, 5]])
    mask = torch.tensor([[0, 1, 1], [1, 1, 1]])                   # token 0 is padding
    found = calibration_hessians(model, [{"input_ids": ids, "attention_mask": mask}], ["proj.weight"])
    x = model.embed.weight[torch.tensor([1, 2, 3, 4, 5])].detach()
    assert set(found) == {"proj.weight"}
    assert torch.allclose(found["proj.weight"], x.T @ x / 5, atol=1e-6)


def test_gptq_without_calibration_inputs_is_refused_by_name():
    base = tiny_llama()
    with pytest.raises(SkillPackError, match=r"quantizer='gptq' needs .*calibration_hessians"):
        SkillPack.compress("s", sp.extract(base, tuned_copy(base)), base, CompressionConfig(quantizer="gptq"))
    with pytest.raises(SkillPackError, match="CompressionConfig.quantizer must be one of"):
        CompressionConfig(quantizer="awq")


def test_gptq_skill_pack_run_calibrates_on_the_fine_tune_and_logs_its_quantiser(shared_store, tmp_path, monkeypatch,
                                                                                offline_text):
    import mlflow

    from cl.config import RunConfig
    from cl.registry import TRANSFERS
    from cl.runner import run

    monkeypatch.setenv("CLSUITE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CLSUITE_DATA_ROOT", str(offline_text))
    options = {**dict(TRANSFERS.get("skillpack").smoke_options), "quantizer": "gptq", "calibration_samples": 4}
    cfg = RunConfig.from_dict({"experiment": "skillpack-gptq", "transfer": {"name": "skillpack", **options},
                               "train": {"epochs": 1, "batch_size": 4, "lr": 1e-3}, "seed": 0})
    result = run(cfg, tracking_uri=shared_store)
    assert result.ok, result.reason
    path = mlflow.MlflowClient(shared_store).download_artifacts(result.run_id, "skillpack_summary.json")
    summary = json.loads(Path(path).read_text())
    assert summary["config"]["quantizer"] == "gptq"
    assert any(m["kind"] == "lowrank" for m in summary["modules"].values())
