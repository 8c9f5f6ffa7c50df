"""FSDP2 (`distributed: fsdp`): the wrapping plan; two CPU ranks under torchrun (gloo) that
train, checkpoint and resume exactly as one rank with twice the micro-batch; a start-up that
builds the full model on rank 0 only and sends every rank its shards.

Run as a script (under torchrun), this file is one rank of the start-up test."""
import json
import os
import re
import subprocess
import sys

import pytest
import torch
import yaml
from open_clip import create_model
from transformers import Qwen2Config, Qwen2ForCausalLM

from corpus.tokens import IMAGE_PAD, TextTokenizer
from test_trainer import TINY, shards, stage_manifest  # noqa: F401  (shards is a fixture)
from trainer.distributed import check_uniform, join_world, shard_plan, unit_parameters
from trainer.model import QwenVL, apply_freeze_plan, load_weights
from trainer.stages import TABLE_8, stage_config
from trainer.train import build_model, train


def tiny_model():
    config = stage_config(2, overrides={"model": {"adapter": {"queries": 16}}})
    tokenizer = TextTokenizer.default()
    return QwenVL(config.model, 56, tokenizer.vocab_size, tokenizer.token_id(IMAGE_PAD))


def test_shard_plan_wraps_blocks_and_layers_and_claims_every_parameter_once():
    model = tiny_model()
    plan = shard_plan(model)
    blocks, layers = model.visual.transformer.resblocks, model.llm.base_model.layers
    assert plan[:len(blocks)] == list(blocks) and plan[-1] is model
    assert all(layer in plan for layer in layers)
    units = unit_parameters(plan)
    names = [name for own in units for name, _ in own]
    assert len(names) == len(list(model.parameters()))
    assert {id(p) for own in units for _, p in own} == {id(p) for p in model.parameters()}
    assert units[-1] == []  # the root only holds buffers
    # the LM head and the embeddings, which the model calls directly, are units of their own
    head = plan.index(model.llm.get_output_embeddings())
    assert [name for name, _ in units[head]] == ["weight"]


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_every_unit_is_wholly_trainable_or_frozen_under_table_8(stage):
    model = tiny_model()
    apply_freeze_plan(model, TABLE_8[stage]["trainable"])
    plan = shard_plan(model)
    check_uniform(plan)
    flags = [{p.requires_grad for _, p in own} for own in unit_parameters(plan)]
    assert {True} in flags and ({False} in flags) == (stage != 2)


def test_a_unit_mixing_trainable_and_frozen_parameters_is_rejected():
    model = tiny_model()
    model.visual.transformer.resblocks[0].ln_1.requires_grad_(False)
    with pytest.raises(ValueError, match="mixes trainable and frozen.*ln_1"):
        check_uniform(shard_plan(model))


def test_config_names_the_strategy():
    assert stage_config(2).distributed == "ddp"
    assert stage_config(2, overrides={"distributed": "fsdp"}).distributed == "fsdp"
    with pytest.raises(ValueError, match="ddp or fsdp"):
        stage_config(2, overrides={"distributed": "zero3"})


def torchrun(*program, timeout=300):
    """Two CPU ranks running `program` (a script, or -m and a module, with its arguments)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    completed = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         *program], capture_output=True, text=True, env=env, timeout=timeout)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed.stdout


def torchrun_train(argv):
    return torchrun("-m", "corpus.cli", "train", *argv, "--device", "cpu")


def test_two_fsdp_ranks_resume_and_match_one_rank(tmp_path, shards):  # noqa: F811
    # as one rank with twice the micro-batch, checkpoints included; stage 3 puts a frozen ViT
    # beside a trained adapter and LLM, and gives rank 0 micro-batches without images
    manifest = stage_manifest(tmp_path, shards, 3)
    config = tmp_path / "fsdp.yaml"
    config.write_text(yaml.safe_dump(dict(TINY, steps=3, micro_batch_size=1,
                                          distributed="fsdp")))
    out = tmp_path / "fsdp"
    argv = ["--manifest", manifest, "--stage", "3", "--config", str(config), "--output", str(out)]
    printed = torchrun_train(argv + ["--stop-after", "2"])
    assert "fsdp" in printed
    assert re.search(r"start-up peak host memory: rank 0 \d+\.\d\d GiB, rank 1 \d+\.\d\d GiB",
                     printed)
    torchrun_train(argv + ["--resume"])
    logged = [json.loads(line)["loss"] for line in open(out / "log.jsonl")]
    sharded = out / "checkpoints" / "step-00000003"
    state = json.load(open(sharded / "state.json"))
    assert state["world"] == 2 and state["config"]["distributed"] == "fsdp"

    single = train(manifest, 3, str(tmp_path / "one"), overrides=dict(TINY, steps=3),
                   device="cpu")
    assert logged == pytest.approx(single.losses, rel=1e-5)
    assert state["data"] == json.load(open(os.path.join(single.checkpoint, "state.json")))["data"]

    # the gathered checkpoint is the single-process one: same names, same values
    weights = torch.load(sharded / "model.pt")
    expected = torch.load(os.path.join(single.checkpoint, "model.pt"))
    assert weights.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(weights[name], expected[name], rtol=1e-4, atol=1e-6)
    optimizer = torch.load(sharded / "optimizer.pt")
    assert optimizer["state"].keys() == torch.load(
        os.path.join(single.checkpoint, "optimizer.pt"))["state"].keys()
    assert not any(name.startswith("visual.") for name in optimizer["state"])  # frozen
    load_weights(tiny_model(), weights)  # strict: loads into an unsharded model


# ---- start-up: one full model, on rank 0 ----------------------------------------------------

def test_fsdp_start_up_builds_one_full_model_and_sends_its_slices(tmp_path):
    # --init weights (not the seed's) must reach rank 1 although only rank 0 reads them
    torch.manual_seed(123)
    torch.save(tiny_model().state_dict(), tmp_path / "model.pt")
    torchrun(__file__, str(tmp_path), str(tmp_path))
    full = torch.load(tmp_path / "full.pt")
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2)]
    assert [r["built_on"] for r in ranks] == [["cpu"], ["meta"]]  # rank 1 allocated nothing
    init = torch.load(tmp_path / "model.pt")
    assert full["state"].keys() == init.keys()
    for name in init:
        assert torch.equal(full["state"][name], init[name])
    # buffers outside the state dict, which rank 1 could not compute on the meta device
    assert {"pixel_mean", "llm.model.rotary_emb.inv_freq"} <= full["buffers"].keys()
    for rank, held in enumerate(ranks):
        assert held["shards"].keys() == full["state"].keys() - full["buffers"].keys()
        for name, shard in held["shards"].items():  # FSDP2 shards dim 0 in torch.chunk slices
            slices = full["state"][name].chunk(2)
            expected = slices[rank] if rank < len(slices) else full["state"][name][:0]
            assert torch.equal(shard, expected), (rank, name)
        assert held["buffers"].keys() == full["buffers"].keys()
        for name, buffer in held["buffers"].items():
            assert torch.equal(buffer, full["buffers"][name]), (rank, name)
    # rank 1 drew no random init, yet continues from rank 0's generator state
    assert torch.equal(ranks[0]["rng"], ranks[1]["rng"])

def test_a_meta_build_has_the_pretrained_architecture_and_reads_no_weights(tmp_path):
    # open_clip and Hugging Face checkpoints on disk (the LLM's vocabulary is resized)
    tokenizer = TextTokenizer.default()
    clip_dir, llm_dir = tmp_path / "clip", tmp_path / "llm"
    clip_config = {"embed_dim": 32, "vision_cfg": {"image_size": 56, "layers": 1, "width": 64,
                                                   "patch_size": 14, "head_width": 32},
                   "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 1,
                                "layers": 1}}
    clip_dir.mkdir()
    (clip_dir / "open_clip_config.json").write_text(json.dumps({"model_cfg": clip_config}))
    clip = create_model(f"local-dir:{clip_dir}", load_weights=False)
    torch.save(clip.state_dict(), clip_dir / "open_clip_pytorch_model.bin")
    llm = Qwen2ForCausalLM(Qwen2Config(
        vocab_size=tokenizer.vocab_size - 10, hidden_size=64, intermediate_size=128,
        num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
        tie_word_embeddings=False))
    llm.save_pretrained(llm_dir)
    config = stage_config(2, overrides={"model": {
        "adapter": {"queries": 16}, "visual": {"open_clip_model": f"local-dir:{clip_dir}"},
        "llm": {"pretrained": str(llm_dir)}}}).model
    full = build_model(config, 56, tokenizer, torch.device("cpu"), None)
    assert torch.equal(full.visual.conv1.weight, clip.visual.conv1.weight)  # loaded
    assert torch.equal(full.llm.get_input_embeddings().weight[:tokenizer.vocab_size - 10],
                       llm.get_input_embeddings().weight)
    for weights in [clip_dir / "open_clip_pytorch_model.bin", *llm_dir.glob("*.safetensors")]:
        weights.unlink()  # the meta build must not need them
    meta = build_model(config, 56, tokenizer, torch.device("meta"), None)
    assert {t.device.type for t in [*meta.parameters(), *meta.buffers()]} == {"meta"}
    layout = {name: (t.shape, t.dtype) for name, t in full.state_dict().items()}
    assert {name: (t.shape, t.dtype) for name, t in meta.state_dict().items()} == layout
    assert [name for name, _ in meta.named_buffers()] == [name for name, _ in full.named_buffers()]
    assert meta.llm.get_input_embeddings().num_embeddings == tokenizer.vocab_size



def startup_worker(out, weights_from):
    """One rank of `test_fsdp_start_up_builds_one_full_model_and_sends_its_slices`: the
    trainer's start-up (build, freeze plan, shard), then what this rank holds."""
    world = join_world()
    torch.manual_seed(0)
    config = stage_config(3, overrides={"model": {"adapter": {"queries": 16}}})
    tokenizer = TextTokenizer.default()
    cpu = torch.device("cpu")
    model = build_model(config.model, 56, tokenizer, world.build_device(cpu, fsdp=True),
                        weights_from)
    built_on = sorted({t.device.type for t in [*model.parameters(), *model.buffers()]})
    if world.main:  # rank 0's full initial model, before it is sharded
        torch.save({"state": model.state_dict(), "buffers": dict(model.named_buffers())},
                   os.path.join(out, "full.pt"))
    apply_freeze_plan(model, config.trainable)
    world.wrap(model, cpu, "fsdp")
    torch.save({"built_on": built_on, "rng": torch.get_rng_state(),
                "shards": {name: p.to_local().clone() for name, p in model.named_parameters()},
                "buffers": {name: b.clone() for name, b in model.named_buffers()}},
               os.path.join(out, f"rank{world.rank}.pt"))
    world.finish()


if __name__ == "__main__":
    startup_worker(sys.argv[1], sys.argv[2])
