"""Qwen (v1) checkpoints, the paper's Qwen-7B, read into a Qwen2 decoder: the logits are those
of Qwen's own architecture, written out here from its modelling code's definition."""
import json
import os

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from corpus.tokens import TextTokenizer
from test_trainer import TINY, shards, stage_manifest  # noqa: F401  (shards is a fixture)
from trainer.distributed import World, shard_plan
from trainer.qwen_v1 import read_once
from trainer.stages import stage_config
from trainer.train import build_model, train
from trainer.weights import InitialWeights

TOKENIZER = TextTokenizer.default()
QWEN = {"model_type": "qwen", "hidden_size": 64, "intermediate_size": 256, "kv_channels": 16,
        "num_attention_heads": 4, "num_hidden_layers": 2, "layer_norm_epsilon": 1e-6,
        "rotary_emb_base": 10000, "rotary_pct": 1.0, "seq_length": 2048, "no_bias": True,
        "vocab_size": TOKENIZER.vocab_size, "use_dynamic_ntk": True, "use_logn_attn": True}


def qwen_v1_folder(tmp_path):
    """A Qwen (v1) checkpoint folder: its config and random weights under Qwen's names."""
    torch.manual_seed(0)
    hidden, inner, vocab = QWEN["hidden_size"], QWEN["intermediate_size"] // 2, QWEN["vocab_size"]
    weights = {"transformer.wte.weight": torch.randn(vocab, hidden) * 0.5,
               "transformer.ln_f.weight": 1 + 0.1 * torch.randn(hidden),
               "lm_head.weight": torch.randn(vocab, hidden) * 0.1}
    for i in range(QWEN["num_hidden_layers"]):
        layer = f"transformer.h.{i}."
        weights.update({
            layer + "ln_1.weight": 1 + 0.1 * torch.randn(hidden),
            layer + "ln_2.weight": 1 + 0.1 * torch.randn(hidden),
            layer + "attn.c_attn.weight": torch.randn(3 * hidden, hidden) * 0.2,
            layer + "attn.c_attn.bias": torch.randn(3 * hidden) * 0.2,
            layer + "attn.c_proj.weight": torch.randn(hidden, hidden) * 0.2,
            layer + "mlp.w1.weight": torch.randn(inner, hidden) * 0.2,
            layer + "mlp.w2.weight": torch.randn(inner, hidden) * 0.2,
            layer + "mlp.c_proj.weight": torch.randn(hidden, inner) * 0.2})
    folder = tmp_path / "qwen-7b"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(QWEN))
    save_file(weights, str(folder / "model.safetensors"))
    return folder, weights


def qwen_v1_logits(weights, ids):
    """Qwen's decoder as its modelling code defines it, for one sequence."""
    hidden, heads = QWEN["hidden_size"], QWEN["num_attention_heads"]
    dim, length = hidden // heads, ids.shape[0]
    inverse = 1.0 / QWEN["rotary_emb_base"] ** (torch.arange(0, dim, 2).float() / dim)
    angles = torch.outer(torch.arange(length).float(), inverse)
    cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()

    def rms(x, weight):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + QWEN["layer_norm_epsilon"]) \
            * weight

    def rotate(x):  # the two halves of each head, as Qwen's _rotate_half
        return x * cos + torch.cat([-x[..., dim // 2:], x[..., :dim // 2]], -1) * sin

    causal = torch.ones(length, length, dtype=torch.bool).tril()
    state = weights["transformer.wte.weight"][ids]
    for i in range(QWEN["num_hidden_layers"]):
        w = {key.removeprefix(f"transformer.h.{i}."): value for key, value in weights.items()}
        x = rms(state, w["ln_1.weight"])
        mixed = x @ w["attn.c_attn.weight"].T + w["attn.c_attn.bias"]
        q, k, v = (part.view(length, heads, dim).transpose(0, 1)
                   for part in mixed.split(hidden, -1))
        scores = rotate(q) @ rotate(k).transpose(-1, -2) / dim ** 0.5
        attention = scores.masked_fill(~causal, float("-inf")).softmax(-1) @ v
        state = state + attention.transpose(0, 1).reshape(length, hidden) \
            @ w["attn.c_proj.weight"].T
        x = rms(state, w["ln_2.weight"])
        state = state + (x @ w["mlp.w1.weight"].T * F.silu(x @ w["mlp.w2.weight"].T)) \
            @ w["mlp.c_proj.weight"].T
    return rms(state, weights["transformer.ln_f.weight"]) @ weights["lm_head.weight"].T


def model_config(folder):
    return stage_config(2, overrides={"model": {"adapter": {"queries": 16},
                                                "llm": {"pretrained": str(folder)}}}).model


def test_a_qwen_v1_checkpoint_computes_its_own_logits_as_a_qwen2(tmp_path):
    folder, weights = qwen_v1_folder(tmp_path)
    model = build_model(model_config(folder), 56, TOKENIZER)
    World().wrap(model, InitialWeights(model, 0), torch.device("cpu"))
    assert type(model.llm).__name__ == "Qwen2ForCausalLM"
    assert model.llm.config.intermediate_size == QWEN["intermediate_size"] // 2
    ids = torch.randint(0, QWEN["vocab_size"], (24,))
    with torch.no_grad():
        ours = model.llm(input_ids=ids[None]).logits[0]
    torch.testing.assert_close(ours, qwen_v1_logits(weights, ids), rtol=1e-5, atol=1e-5)
    # the FSDP plan finds its decoder layers where it finds any Qwen2's
    assert all(layer in shard_plan(model) for layer in model.llm.base_model.layers)


def test_a_fused_projection_isread_once_for_its_three_parts():
    reads = []
    whole = read_once(lambda: reads.append(1) or torch.arange(6))
    assert [whole()[i * 2:(i + 1) * 2].tolist() for i in range(3)] == [[0, 1], [2, 3], [4, 5]]
    assert len(reads) == 1


def test_the_trainer_trains_on_a_qwen_v1_checkpoint(tmp_path, shards):  # noqa: F811
    folder, _ = qwen_v1_folder(tmp_path)
    result = train(stage_manifest(tmp_path, shards, 2), 2, str(tmp_path / "run"), device="cpu",
                   overrides=dict(TINY, steps=2, model={"adapter": {"queries": 16},
                                                        "llm": {"pretrained": str(folder)}}))
    assert len(result.losses) == 2 and all(loss == loss for loss in result.losses)


def test_a_qwen_v1_config_without_a_qwen2_equivalent_is_refused(tmp_path):
    from trainer.qwen_v1 import qwen2_config

    with pytest.raises(ValueError, match="partial rotary"):
        qwen2_config(dict(QWEN, rotary_pct=0.5), "sdpa")


def test_the_paper_config_builds_the_paper_s_model_and_shards_it_in_every_stage(tmp_path):
    # Qwen-7B's shape (its config.json) beside the config's ViT-bigG/14, on the meta device:
    # Table 1's 1.9 B + 0.08 B + 7.7 B, nothing allocated or read
    from trainer.distributed import check_uniform
    from trainer.model import apply_freeze_plan, parameter_counts

    folder = tmp_path / "Qwen-7B"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(dict(
        QWEN, hidden_size=4096, intermediate_size=22016, kv_channels=128, num_attention_heads=32,
        num_hidden_layers=32, vocab_size=151936)))
    path = os.path.join(os.path.dirname(__file__), "..", "trainer", "configs", "qwen-vl-7b.yaml")
    config = stage_config(1, path, overrides={"model": {"llm": {"pretrained": str(folder)},
                                                        "visual": {"pretrained": None}}})
    assert config.distributed == "fsdp"
    model = build_model(config.model, 224, TOKENIZER)
    counts = parameter_counts(model)
    assert round(counts["visual"] / 1e9, 2) == 1.84 and round(counts["adapter"] / 1e9, 2) == 0.09
    assert round(counts["llm"] / 1e9, 2) == 7.72
    assert {p.device.type for p in model.parameters()} == {"meta"}
    for stage in (1, 2, 3):
        apply_freeze_plan(model, stage_config(stage, path).trainable)
        check_uniform(shard_plan(model))
