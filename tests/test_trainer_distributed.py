"""Two ranks under torchrun (gloo, CPU), DDP or FSDP, train exactly as one rank with twice the
micro-batch (tests/test_trainer_fsdp.py covers FSDP's plan, frozen units and resume)."""
import json
import os

import pytest
import yaml

from test_trainer import TINY, shards, stage_manifest  # noqa: F401  (shards is a fixture)
from test_trainer_fsdp import torchrun_train
from trainer.train import train


@pytest.mark.parametrize("strategy, recomputed", [("ddp", []), ("fsdp", []),
                                                   ("fsdp", ["visual", "llm"])])
def test_two_ranks_match_one_rank_with_twice_the_micro_batch(
        tmp_path, shards, strategy, recomputed):  # noqa: F811
    # recomputed blocks under FSDP gather their weights again in the backward pass
    manifest = stage_manifest(tmp_path, shards, 2)
    config = tmp_path / "two-ranks.yaml"
    config.write_text(yaml.safe_dump(dict(TINY, steps=2, micro_batch_size=1,
                                          distributed=strategy,
                                          activation_checkpointing=recomputed)))
    out = tmp_path / "ddp"
    torchrun_train(["--manifest", manifest, "--stage", "2", "--config", str(config),
                    "--output", str(out)])
    logged = [json.loads(line)["loss"] for line in open(out / "log.jsonl")]
    state = json.load(open(out / "checkpoints" / "step-00000002" / "state.json"))
    assert state["world"] == 2 and state["config"]["distributed"] == strategy
    assert state["config"]["activation_checkpointing"] == recomputed

    # one process reading the two ranks' data lanes
    single = train(manifest, 2, str(tmp_path / "one"), overrides=dict(TINY, steps=2, data_lanes=2),
                   device="cpu")
    assert logged == pytest.approx(single.losses, rel=1e-5)
    assert state["data"] == json.load(open(os.path.join(single.checkpoint, "state.json")))["data"]


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_one_process_resumes_what_two_ranks_began(tmp_path, shards, strategy):  # noqa: F811
    # under FSDP each rank wrote half of every tensor: the one process reads them whole
    manifest = stage_manifest(tmp_path, shards, 2)
    config = tmp_path / "two-ranks.yaml"
    config.write_text(yaml.safe_dump(dict(TINY, steps=3, micro_batch_size=1,
                                          distributed=strategy)))
    out = tmp_path / "run"
    torchrun_train(["--manifest", manifest, "--stage", "2", "--config", str(config),
                    "--output", str(out), "--stop-after", "1"])
    resumed = train(manifest, 2, str(out), resume=True, device="cpu")
    assert resumed.steps == 3 and len(resumed.losses) == 2  # micro-batch 1, accumulation 2
    whole = train(manifest, 2, str(tmp_path / "one"), overrides=dict(TINY, steps=3, data_lanes=2),
                  device="cpu")
    assert resumed.losses == pytest.approx(whole.losses[1:], rel=1e-5)


def test_two_fsdp_ranks_resume_what_one_process_began(tmp_path, shards):  # noqa: F811
    # each rank reads the slices of the one process's whole tensors its shards need
    manifest = stage_manifest(tmp_path, shards, 2)
    settings = dict(TINY, steps=3, micro_batch_size=1, data_lanes=2, distributed="fsdp")
    out = tmp_path / "run"
    train(manifest, 2, str(out), overrides=settings, device="cpu", stop_after=1)
    torchrun_train(["--manifest", manifest, "--stage", "2", "--output", str(out), "--resume"])
    logged = [json.loads(line)["loss"] for line in open(out / "log.jsonl")]
    whole = train(manifest, 2, str(tmp_path / "one"), overrides=settings, device="cpu")
    assert len(logged) == 3 and logged == pytest.approx(whole.losses, rel=1e-5)
    state = json.load(open(out / "checkpoints" / "step-00000003" / "state.json"))
    assert state["world"] == 2
