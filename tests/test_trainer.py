"""The trainer on tiny shards and a tiny model, on the CPU: stages, freeze plans, resume."""
import json
import os
import re
import shutil

import pytest
import torch
import yaml

from conftest import make_image, make_sample
from corpus.schema import Turn
from corpus.shards import atomic_write, write_tar
from manifests.build import shard_digest
from trainer.checkpoint import resolve_checkpoint
from trainer.stages import stage_config
from trainer.train import lr_factor, param_groups, train
from trainer.weights import read_weights

STAGE_DATA = {1: (224, 512, False), 2: (448, 2048, True), 3: (448, 2048, False)}
# Small enough for two shared cores: 16 queries per image, two rows of 256 tokens.
TINY = {"warmup_steps": 1, "micro_batch_size": 2, "global_batch": 2, "num_workers": 0,
        "pack_window": 8, "log_every": 1, "seq_len": 256, "image_size": 56,
        "model": {"adapter": {"queries": 16}}}


def caption_samples(count=6):
    return [make_sample(f"c{i}", text=f"a red square number {i}",
                        images=[make_image(color=(40 * i % 255, 30, 30))]) for i in range(count)]


def sft_samples(count=4):
    return [make_sample(f"s{i}", task="sft", text="", turns=[
        Turn("user", "<image>What is it?"), Turn("assistant", f"A square {i}.")])
        for i in range(count)]


def text_samples(count=4):
    return [make_sample(f"t{i}", task="text", text=f"plain text document {i} " * (i + 1),
                        images=[]) for i in range(count)]


def write_shard(path, samples):
    with atomic_write(path) as f:
        write_tar(samples, f)
    return path


def write_manifest(path, stage, shards_by_task, weights=None, seed=0, packing=None):
    """A stage manifest in the shared format (see manifests/manifest.py)."""
    image_size, seq_len, default_packing = STAGE_DATA[stage]
    sources = []
    for task, shards in sorted(shards_by_task.items()):
        entries = []
        for shard, count in shards:
            digest, size = shard_digest(shard)
            entries.append({"path": shard, "samples": count, "bytes": size, "sha256": digest})
        sources.append({"task": task, "weight": (weights or {}).get(task, 1 / len(shards_by_task)),
                        "samples": sum(e["samples"] for e in entries),
                        "bytes": sum(e["bytes"] for e in entries), "shards": entries,
                        "provenance": [{"report": None, "pipeline": "test", "dataset": "unit",
                                        "config": {}}]})
    document = {"manifest_version": 1, "stage": stage, "image_size": image_size,
                "seq_len": seq_len, "packing": default_packing if packing is None else packing,
                "seed": seed, "tokenizer": None,
                "expected_samples_per_epoch": sum(s["samples"] for s in sources),
                "sources": sources}
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(document, f, sort_keys=False)
    return str(path)


@pytest.fixture
def shards(tmp_path):
    return {
        "captioning": [(write_shard(str(tmp_path / "cap-0.tar"), caption_samples(4)), 4),
                       (write_shard(str(tmp_path / "cap-1.tar"), caption_samples(6)[4:]), 2)],
        "sft": [(write_shard(str(tmp_path / "sft.tar"), sft_samples()), 4)],
        "text": [(write_shard(str(tmp_path / "text.tar"), text_samples()), 4)],
    }


def stage_manifest(tmp_path, shards, stage):
    tasks = {1: ["captioning"], 2: ["captioning", "text"], 3: ["sft", "text"]}[stage]
    return write_manifest(tmp_path / f"stage{stage}.yaml", stage,
                          {task: shards[task] for task in tasks})


def snapshot(model_state):
    return {name: tensor.clone() for name, tensor in model_state.items()}


def changed(before, after, prefix):
    names = [n for n in before if n.startswith(prefix)]
    assert names, prefix
    return {n: not torch.equal(before[n], after[n]) for n in names}


def optimizer_state_names(checkpoint):
    """The parameters a checkpoint holds optimizer state for."""
    from torch.distributed.checkpoint import FileSystemReader

    keys = FileSystemReader(os.path.join(checkpoint, "optimizer")).read_metadata()
    return {key.removeprefix("state.").rsplit(".", 1)[0]
            for key in keys.state_dict_metadata if key.startswith("state.")}


def test_table_8_plans():
    one, two, three = (stage_config(s) for s in (1, 2, 3))
    assert (one.trainable, one.peak_lr, one.min_lr, one.warmup_steps) == (
        ["visual", "adapter"], 2e-4, 1e-6, 500)
    assert (two.trainable, two.peak_lr, two.min_lr, two.warmup_steps) == (
        ["visual", "adapter", "llm"], 5e-5, 1e-5, 400)
    assert (three.trainable, three.peak_lr, three.min_lr, three.warmup_steps) == (
        ["adapter", "llm"], 1e-5, 1e-6, 3000)
    assert (two.betas, two.eps, two.weight_decay, two.grad_clip) == ([0.9, 0.98], 1e-6, 0.05, 1.0)
    assert one.model.adapter.queries == 256 and one.model.visual.patch_size == 14
    assert (one.global_batch, two.global_batch, three.global_batch) == (30720, 4096, 128)


def test_global_batch_sets_the_accumulation():
    config = stage_config(2, overrides={"micro_batch_size": 2})
    assert config.grad_accum is None
    assert [config.accumulation(world) for world in (1, 4, 16)] == [2048, 512, 128]
    agreeing = stage_config(3, overrides={"micro_batch_size": 4, "grad_accum": 8})
    assert agreeing.accumulation(4) == 8


def test_an_unreachable_global_batch_is_refused():
    from corpus.config import ConfigError

    with pytest.raises(ConfigError, match="global_batch 128 is not a multiple of .* = 96 rows"):
        stage_config(3, overrides={"micro_batch_size": 32}).accumulation(3)
    disagreeing = stage_config(3, overrides={"micro_batch_size": 4, "grad_accum": 6})
    with pytest.raises(ConfigError, match="grad_accum 6 disagrees .* needs 8"):
        disagreeing.accumulation(4)
    with pytest.raises(ConfigError, match="global_batch"):
        stage_config(1, overrides={"global_batch": 0})


def test_the_7b_config_reaches_table_8_on_the_gpus_it_documents():
    path = os.path.join(os.path.dirname(__file__), "..", "trainer", "configs", "qwen-vl-7b.yaml")
    gpus = 16  # the file's comments: two nodes of 8
    for stage, expected, accumulation in ((1, 30720, 1920), (2, 4096, 256), (3, 128, 8)):
        config = stage_config(stage, path)
        assert config.accumulation(gpus) == accumulation
        assert config.micro_batch_size * gpus * accumulation == expected
        assert config.fsdp_mesh(gpus) == (2, 8)  # a copy of the model sharded over each node
    for gpus in (1, 2, 4, 8, 32, 64, 128):  # "any GPU count that divides 128"
        assert all(stage_config(s, path).accumulation(gpus) for s in (1, 2, 3))
        assert stage_config(2, path).fsdp_mesh(gpus) == ((gpus,) if gpus <= 8 else (gpus // 8, 8))


def test_config_file_overrides_and_rejects_unknown_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("peak_lr: 1.0e-4\nmodel:\n  llm:\n    layers: 3\n")
    config = stage_config(2, str(path))
    assert config.peak_lr == 1e-4 and config.model.llm.layers == 3 and config.min_lr == 1e-5
    path.write_text("peak_lrr: 1\n")
    with pytest.raises(ValueError, match="peak_lrr"):
        stage_config(2, str(path))


def test_schedule_warms_up_then_decays_to_the_minimum():
    config = stage_config(1, overrides={"steps": 100, "warmup_steps": 10})
    assert lr_factor(0, config) == pytest.approx(0.1)
    assert lr_factor(9, config) == pytest.approx(1.0)
    assert lr_factor(100, config) == pytest.approx(1e-6 / 2e-4)
    assert lr_factor(55, config) == pytest.approx((1 + 1e-6 / 2e-4) / 2)


def test_vit_layerwise_decay_groups():
    from corpus.tokens import IMAGE_PAD, TextTokenizer
    from trainer.model import QwenVL, apply_freeze_plan

    config = stage_config(1, overrides={"model": {"adapter": {"queries": 16}}})
    tokenizer = TextTokenizer.default()
    model = QwenVL(config.model, 56, tokenizer.vocab_size, tokenizer.token_id(IMAGE_PAD))
    apply_freeze_plan(model, config.trainable)
    scales = sorted({group["lr_scale"] for group in param_groups(model, config)})
    layers = config.model.visual.layers
    assert scales == pytest.approx([0.95 ** (layers + 1 - i) for i in range(layers + 2)])
    assert not any(p.requires_grad for p in model.llm.parameters())


@pytest.mark.parametrize("stage, trained, frozen", [
    (1, ["visual.", "adapter."], ["llm."]),
    (2, ["visual.", "adapter.", "llm."], []),
    (3, ["adapter.", "llm."], ["visual."]),
])
def test_stage_freeze_plan(tmp_path, shards, stage, trained, frozen):
    manifest = stage_manifest(tmp_path, shards, stage)
    first = train(manifest, stage, str(tmp_path / "a"), overrides=dict(TINY, steps=1),
                  device="cpu")
    before = snapshot(read_weights(first.checkpoint))
    result = train(manifest, stage, str(tmp_path / "b"), init=str(tmp_path / "a"),
                   overrides=dict(TINY, steps=2), device="cpu")
    assert result.steps == 2 and all(loss == loss for loss in result.losses)
    after = read_weights(result.checkpoint)
    for prefix in frozen:
        assert not any(changed(before, after, prefix).values()), prefix
    for prefix in trained:
        moved = changed(before, after, prefix)
        assert all(moved.values()), [n for n, m in moved.items() if not m]


def test_stages_chain_and_vit_positions_are_interpolated(tmp_path, shards):
    overrides = dict(TINY, steps=1, image_size=None, seq_len=None)
    one = train(stage_manifest(tmp_path, shards, 1), 1, str(tmp_path / "s1"),
                overrides=dict(overrides, seq_len=512), device="cpu")
    two = train(stage_manifest(tmp_path, shards, 2), 2, str(tmp_path / "s2"),
                init=one.checkpoint, overrides=dict(overrides, seq_len=1024), device="cpu")
    state_one = read_weights(one.checkpoint)
    state_two = read_weights(two.checkpoint)
    # 224 / 14 = 16 -> 448 / 14 = 32 patches a side, plus the class token
    assert state_one["visual.positional_embedding"].shape[0] == 16 * 16 + 1
    assert state_two["visual.positional_embedding"].shape[0] == 32 * 32 + 1
    assert resolve_checkpoint(str(tmp_path / "s2")) == two.checkpoint


def straight_and_split(tmp_path, manifest, overrides, stop_after):
    """A run in one go, and the same run stopped after `stop_after` steps and resumed."""
    straight = train(manifest, 2, str(tmp_path / "straight"), overrides=overrides, device="cpu")
    part = train(manifest, 2, str(tmp_path / "split"), overrides=overrides, device="cpu",
                 stop_after=stop_after)
    assert part.steps == stop_after
    rest = train(manifest, 2, str(tmp_path / "split"), resume=True, device="cpu")
    assert rest.steps == overrides["steps"]
    assert part.losses + rest.losses == pytest.approx(straight.losses, rel=1e-6, abs=1e-7)
    return straight, part, rest


def test_resume_gives_the_same_loss_curve(tmp_path, shards):
    manifest = stage_manifest(tmp_path, shards, 2)
    straight, _, rest = straight_and_split(tmp_path, manifest, dict(TINY, steps=4, save_every=100),
                                           stop_after=2)
    a = read_weights(straight.checkpoint)
    b = read_weights(rest.checkpoint)
    assert all(torch.allclose(a[n], b[n], atol=1e-6) for n in a)


def test_checkpoints_written_behind_the_training_are_those_written_before_it_goes_on(
        tmp_path, shards):
    # a checkpoint at every step: each is written by a thread while the next steps train
    manifest = stage_manifest(tmp_path, shards, 2)
    overrides = dict(TINY, steps=4, save_every=1, keep_checkpoints=4)
    behind = train(manifest, 2, str(tmp_path / "behind"), overrides=overrides, device="cpu")
    held = train(manifest, 2, str(tmp_path / "held"), device="cpu",
                 overrides=dict(overrides, async_checkpoint=False))
    assert behind.losses == held.losses
    # each save is timed in the window after its step's log line
    assert all(entry["checkpoint_wait"] >= 0 for entry in behind.log + held.log)
    assert all(entry["checkpoint_wait"] > 0 for entry in held.log[1:])
    for step in range(1, 5):
        name = os.path.join("checkpoints", f"step-{step:08d}")
        a = read_weights(str(tmp_path / "behind" / name))
        b = read_weights(str(tmp_path / "held" / name))
        assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)
        state_a, state_b = (json.load(open(tmp_path / run / name / "state.json"))
                            for run in ("behind", "held"))
        state_a["config"].pop("async_checkpoint"), state_b["config"].pop("async_checkpoint")
        assert state_a == state_b
    # a resume from one the thread wrote while steps 3 and 4 ran continues as the run did
    resumed = tmp_path / "resumed" / "checkpoints"
    shutil.copytree(tmp_path / "behind" / "checkpoints" / "step-00000002",
                    resumed / "step-00000002")
    (resumed / "latest").write_text("step-00000002")
    rest = train(manifest, 2, str(tmp_path / "resumed"), resume=True, device="cpu")
    assert rest.losses == pytest.approx(behind.losses[2:], rel=1e-6, abs=1e-7)


def test_a_resume_before_the_vit_had_a_gradient_is_exact(tmp_path, shards):
    # the first step's rows here are text only: the checkpoint holds no optimizer state for the
    # ViT, which must start its AdamW moments and step count at its first gradient after it
    manifest = stage_manifest(tmp_path, shards, 2)
    _, part, _ = straight_and_split(tmp_path, manifest, dict(TINY, steps=3, data_lanes=2),
                                    stop_after=1)
    saved = optimizer_state_names(part.checkpoint)
    assert saved and not any(name.startswith("visual.") for name in saved)  # the case under test


def test_a_checkpoint_of_the_earlier_layout_resumes_exactly(tmp_path, shards):
    # full state dicts in model.pt and optimizer.pt, as checkpoints were written before each
    # rank wrote its own part
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    manifest = stage_manifest(tmp_path, shards, 2)
    overrides = dict(TINY, steps=3)
    straight = train(manifest, 2, str(tmp_path / "straight"), overrides=overrides, device="cpu")
    part = train(manifest, 2, str(tmp_path / "split"), overrides=overrides, device="cpu",
                 stop_after=2)
    checkpoint = part.checkpoint
    torch.save(read_weights(checkpoint), os.path.join(checkpoint, "model.pt"))
    dcp_to_torch_save(os.path.join(checkpoint, "optimizer"),
                      os.path.join(checkpoint, "optimizer.pt"))
    for folder in ("model", "optimizer"):
        shutil.rmtree(os.path.join(checkpoint, folder))
    rest = train(manifest, 2, str(tmp_path / "split"), resume=True, device="cpu")
    assert part.losses + rest.losses == pytest.approx(straight.losses, rel=1e-6, abs=1e-7)


def test_training_refuses_a_global_batch_it_cannot_reach_before_it_starts(tmp_path, shards):
    from corpus.config import ConfigError

    out = tmp_path / "refused"
    with pytest.raises(ConfigError, match="global_batch 3 is not a multiple"):
        train(stage_manifest(tmp_path, shards, 2), 2, str(out),
              overrides=dict(TINY, steps=1, global_batch=3), device="cpu")
    assert not out.exists()


def test_training_refuses_more_data_lanes_than_a_task_has_samples_before_it_starts(
        tmp_path, shards):
    from corpus.config import ConfigError

    out = tmp_path / "refused"
    with pytest.raises(ConfigError, match=r"task captioning: 6 sample\(s\) for 8 data lanes"):
        train(stage_manifest(tmp_path, shards, 2), 2, str(out),
              overrides=dict(TINY, steps=1, data_lanes=8), device="cpu")
    assert not out.exists()


def test_manifest_stage_must_match(tmp_path, shards):
    from corpus.config import ConfigError

    with pytest.raises(ConfigError, match="stage 1 manifest"):
        train(stage_manifest(tmp_path, shards, 1), 2, str(tmp_path / "x"), device="cpu")


def test_cli_trains_and_resumes(tmp_path, shards, capsys):
    from corpus.cli import main

    manifest = stage_manifest(tmp_path, shards, 3)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(dict(TINY, steps=2)))
    out = str(tmp_path / "run")
    argv = ["train", "--manifest", manifest, "--stage", "3", "--config", str(config),
            "--output", out, "--device", "cpu"]
    assert main(argv + ["--stop-after", "1"]) == 0
    assert main(argv + ["--resume"]) == 0
    printed = capsys.readouterr().out
    assert "step 1: checkpoint" in printed and "step 2: checkpoint" in printed
    assert "share of samples (weight): sft " in printed
    assert re.search(r"start-up peak host memory: rank 0 \d+\.\d\d GiB", printed)
    lines = open(os.path.join(out, "log.jsonl")).read().splitlines()
    assert len(lines) == 2 and '"tokens_per_s"' in lines[0]
    shares = json.loads(lines[1])["sample_shares"]
    assert set(shares) == {"sft", "text"} and sum(shares.values()) == pytest.approx(1.0)

    # the exported weights, in one file, build the model again from the files beside them
    from safetensors.torch import load_file

    from corpus.tokens import TextTokenizer
    from trainer.stages import model_config
    from trainer.train import build_model

    exported = tmp_path / "export"
    assert main(["export", out, "--output", str(exported), "--dtype", "bf16"]) == 0
    weights = load_file(str(exported / "model.safetensors"))
    umask = os.umask(0)
    os.umask(umask)
    assert (exported / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask
    saved = read_weights(resolve_checkpoint(out))
    assert weights.keys() == saved.keys()
    assert all(torch.equal(weights[name], saved[name].bfloat16()) for name in saved)
    described = json.loads((exported / "model.json").read_text())
    image_size = described.pop("image_size")
    model = build_model(model_config(described), image_size,
                        TextTokenizer.load(str(exported / "tokenizer.json")))
    model.load_state_dict(weights, strict=True, assign=True)  # built on the meta device
    assert not any(param.is_meta for param in model.parameters())


def test_flops_count_attention_within_packed_samples():
    from corpus.tokens import IMAGE_PAD, TextTokenizer
    from trainer.data import Batch, PackedLayout
    from trainer.model import QwenVL
    from trainer.train import flops_counter

    config = stage_config(2, overrides={"model": {"adapter": {"queries": 16}}})
    tokenizer = TextTokenizer.default()
    model = QwenVL(config.model, 56, tokenizer.vocab_size, tokenizer.token_id(IMAGE_PAD))

    def batch(positions):
        ids, targets, positions = torch.full((1, 64), 100), torch.full((1, 64), -100), \
            torch.tensor([positions])
        return Batch(ids, targets, positions, torch.zeros((0, 56, 56, 3), dtype=torch.uint8),
                     PackedLayout.of(ids, positions, model.image_pad_id, targets), 1, 64,
                     ["text"], {})

    flops = flops_counter(model, config.trainable)
    whole, halves = flops(batch(list(range(64)))), flops(batch(list(range(32)) * 2))
    llm = model.llm.config
    # 6 x layers x width x (64² - 2 x 32²): causal attention within each sample only
    assert whole - halves == 6 * llm.num_hidden_layers * llm.hidden_size * (64 ** 2 - 2 * 32 ** 2)


def test_a_tiny_model_learns_its_shards(tmp_path, shards):
    """Training lowers the loss: a sign or scale bug in the loss, its mask or the optimizer
    would leave it where it starts. Stage 3 (adapter and LLM) on the same few dialogues and
    documents, at a learning rate a tiny model memorises them with."""
    result = train(stage_manifest(tmp_path, shards, 3), 3, str(tmp_path / "learn"),
                   overrides=dict(TINY, steps=40, save_every=1000, peak_lr=2e-3, min_lr=2e-3,
                                  warmup_steps=1),
                   device="cpu")
    first, last = sum(result.losses[:3]) / 3, sum(result.losses[-3:]) / 3
    assert last <= first / 2, (first, last)


@pytest.mark.parametrize("grad_clip", [1e6, 0.05])
def test_a_step_is_the_mean_loss_step_clipped(tmp_path, shards, grad_clip):  # noqa: F811
    """The loop trains each micro-batch as it comes, on its summed loss, and scales the
    gradients by the step's supervised targets afterwards: the steps of the mean loss over the
    whole step, written out here as they were made before (all micro-batches read first, each
    loss divided by the step's targets), clipped. Without clipping (1e6) a scale bug shows;
    with it (0.05, every step clipped) the clipping does."""
    from trainer.data import build_loader, read_manifest
    from trainer.distributed import World
    from trainer.model import apply_freeze_plan
    from trainer.train import build_model, load_tokenizer
    from trainer.weights import InitialWeights

    manifest_path = stage_manifest(tmp_path, shards, 2)
    settings = dict(TINY, steps=3, grad_accum=2, micro_batch_size=1, grad_clip=grad_clip)
    result = train(manifest_path, 2, str(tmp_path / "run"), overrides=settings, device="cpu")

    config, manifest = stage_config(2, overrides=settings), read_manifest(manifest_path)
    torch.manual_seed(manifest.seed)
    tokenizer = load_tokenizer(config, manifest, None)
    model = build_model(config.model, config.image_size, tokenizer)
    weights = InitialWeights(model, manifest.seed, None)
    apply_freeze_plan(model, config.trainable)
    World().wrap(model, weights, torch.device("cpu"))
    optimizer = torch.optim.AdamW(param_groups(model, config), lr=config.peak_lr,
                                  betas=tuple(config.betas), eps=config.eps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, config))
    batches = iter(build_loader(manifest, tokenizer, model.image_tokens, config.seq_len,
                                config.image_size, manifest.seed, 1, window=config.pack_window))
    losses = []
    for _ in range(settings["steps"]):
        micro = [next(batches) for _ in range(2)]
        supervised = sum(batch.supervised for batch in micro)
        total = 0.0
        for batch in micro:
            loss = model(batch.input_ids, batch.position_ids, batch.targets, batch.pixels,
                         batch.layout)
            (loss / supervised).backward()
            total += loss.item()
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(total / supervised)
    assert result.losses == pytest.approx(losses, rel=1e-5)
    saved = read_weights(result.checkpoint)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(saved[name], value, rtol=1e-4, atol=1e-6, msg=name)
