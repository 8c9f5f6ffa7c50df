"""FSDP2 (`distributed: fsdp`): the wrapping plan, and two CPU ranks under torchrun (gloo) that
train, checkpoint and resume exactly as one rank with twice the micro-batch."""
import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from corpus.tokens import IMAGE_PAD, TextTokenizer
from test_trainer import TINY, shards, stage_manifest  # noqa: F401  (shards is a fixture)
from trainer.distributed import check_uniform, shard_plan, unit_parameters
from trainer.model import QwenVL, apply_freeze_plan, load_weights
from trainer.stages import TABLE_8, stage_config
from trainer.train import train


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


def torchrun(argv, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    completed = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "corpus.cli", "train", *argv, "--device", "cpu"],
        capture_output=True, text=True, env=env, timeout=timeout)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed.stdout


def test_two_fsdp_ranks_resume_and_match_one_rank(tmp_path, shards):  # noqa: F811
    # as one rank with twice the micro-batch, checkpoints included; stage 3 puts a frozen ViT
    # beside a trained adapter and LLM, and gives rank 0 micro-batches without images
    manifest = stage_manifest(tmp_path, shards, 3)
    config = tmp_path / "fsdp.yaml"
    config.write_text(yaml.safe_dump(dict(TINY, steps=3, micro_batch_size=1,
                                          distributed="fsdp")))
    out = tmp_path / "fsdp"
    argv = ["--manifest", manifest, "--stage", "3", "--config", str(config), "--output", str(out)]
    assert "fsdp" in torchrun(argv + ["--stop-after", "2"])
    torchrun(argv + ["--resume"])
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
