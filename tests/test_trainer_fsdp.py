"""FSDP2 (`distributed: fsdp`): the wrapping plan; two CPU ranks under torchrun (gloo) that
train, checkpoint and resume exactly as one rank with twice the micro-batch; a start-up in which
no rank builds the full model (tests/test_trainer_weights.py covers where the weights come from).

Run as a script (under torchrun), this file is one rank of the start-up test."""
import json
import os
import re
import subprocess
import sys

import pytest
import torch
import yaml
from torch.distributed.tensor import DTensor

from corpus.tokens import IMAGE_PAD, TextTokenizer
from test_trainer import (TINY, optimizer_state_names, shards,  # noqa: F401  (a fixture)
                          stage_manifest)
from test_trainer_weights import write_checkpoint_weights
from trainer.distributed import (FSDP_COLLECTIVES, World, check_uniform, forward_ends,
                                 join_world, replicated_parameters, shard_plan, unit_parameters)
from trainer.model import QwenVL, apply_freeze_plan
from trainer.stages import TABLE_8, stage_config
from trainer.train import build_model, train
from trainer.weights import InitialWeights, read_weights


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


def test_without_images_a_vit_held_whole_is_not_run_only_the_adapter():
    # stage 3 under FSDP: a rank whose micro-batch has no image must still run the sharded
    # adapter (its gathers are collectives), but not the frozen ViT held whole beside it
    model = tiny_model()
    apply_freeze_plan(model, TABLE_8[3]["trainable"])
    calls = {"visual": 0, "adapter": 0}
    for name in calls:
        getattr(model, name).register_forward_hook(
            lambda module, args, output, name=name: calls.__setitem__(name, calls[name] + 1))
    tokens = torch.tensor([TextTokenizer.default().encode("a row of text without images")])
    row = (tokens, torch.arange(tokens.shape[1]).view(1, -1), tokens)
    model.encode_always = True
    loss = model(*row)
    assert calls == {"visual": 0, "adapter": 1}
    loss.backward()
    assert all(torch.count_nonzero(param.grad) == 0 for param in model.adapter.parameters())
    model.encode_always = False
    assert torch.equal(model(*row), loss)


def test_config_names_the_strategy():
    assert stage_config(2).distributed == "ddp"
    assert stage_config(2, overrides={"distributed": "fsdp"}).distributed == "fsdp"
    with pytest.raises(ValueError, match="ddp or fsdp"):
        stage_config(2, overrides={"distributed": "zero3"})


def torchrun(*program, processes=2, timeout=300):
    """CPU ranks running `program` (a script, or -m and a module, with its arguments)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    completed = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
         str(processes), *program], capture_output=True, text=True, env=env, timeout=timeout)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed.stdout


def torchrun_train(argv, processes=2):
    return torchrun("-m", "corpus.cli", "train", *argv, "--device", "cpu", processes=processes)


def test_one_fsdp_rank_under_torchrun_shards_over_a_mesh_of_one(tmp_path, shards):  # noqa: F811
    # the FSDP path (mixed-precision policy, sharded optimizer, gathered checkpoints) on the
    # one GPU of a machine: the same run as a plain process
    manifest = stage_manifest(tmp_path, shards, 2)
    config = tmp_path / "fsdp.yaml"
    config.write_text(yaml.safe_dump(dict(TINY, steps=2, distributed="fsdp")))
    out = tmp_path / "fsdp"
    printed = torchrun_train(["--manifest", manifest, "--stage", "2", "--config", str(config),
                              "--output", str(out)], processes=1)
    assert "1 x cpu fsdp" in printed
    logged = [json.loads(line)["loss"] for line in open(out / "log.jsonl")]
    single = train(manifest, 2, str(tmp_path / "one"), overrides=dict(TINY, steps=2),
                   device="cpu")
    assert logged == pytest.approx(single.losses, rel=1e-5)


def test_two_fsdp_ranks_resume_and_match_one_rank(tmp_path, shards):  # noqa: F811
    # as one rank with twice the micro-batch, checkpoints included, two micro-batches a step
    # (their gradients accumulated sharded); stage 3 puts a frozen ViT beside a trained adapter
    # and LLM, and gives rank 0 micro-batches without images
    manifest = stage_manifest(tmp_path, shards, 3)
    config = tmp_path / "fsdp.yaml"
    config.write_text(yaml.safe_dump(dict(TINY, steps=3, micro_batch_size=1, global_batch=4,
                                          distributed="fsdp")))
    out = tmp_path / "fsdp"
    argv = ["--manifest", manifest, "--stage", "3", "--config", str(config), "--output", str(out)]
    printed = torchrun_train(argv + ["--stop-after", "2"])
    assert "fsdp" in printed
    assert printed.count("step 2: checkpoint ") == 1  # said once, not by each rank
    assert re.search(r"start-up peak host memory: rank 0 \d+\.\d\d GiB, rank 1 \d+\.\d\d GiB",
                     printed)
    torchrun_train(argv + ["--resume"])
    logged = [json.loads(line)["loss"] for line in open(out / "log.jsonl")]
    sharded = out / "checkpoints" / "step-00000003"
    state = json.load(open(sharded / "state.json"))
    assert state["world"] == 2 and state["config"]["distributed"] == "fsdp"

    single = train(manifest, 3, str(tmp_path / "one"), device="cpu", overrides=dict(
        TINY, steps=3, global_batch=4, data_lanes=2))
    assert logged == pytest.approx(single.losses, rel=1e-5)
    assert state["data"] == json.load(open(os.path.join(single.checkpoint, "state.json")))["data"]

    # each rank wrote its own slices, and the weights and optimizer state read back whole are
    # the single-process checkpoint's: same names, same values
    for part in ("model", "optimizer"):
        sizes = [os.path.getsize(sharded / part / f"__{rank}_0.distcp") for rank in range(2)]
        assert min(sizes) > 0.3 * sum(sizes), (part, sizes)
    weights, expected = read_weights(str(sharded)), read_weights(single.checkpoint)
    assert weights.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(weights[name], expected[name], rtol=1e-4, atol=1e-6)
    names = optimizer_state_names(str(sharded))
    assert names == optimizer_state_names(single.checkpoint)
    assert names and not any(name.startswith("visual.") for name in names)  # frozen
    tiny_model().load_state_dict(weights, strict=True)  # loads into an unsharded model


def test_hybrid_sharding_trains_as_one_process_and_resumes_on_another_mesh(
        tmp_path, shards):  # noqa: F811
    # 4 ranks: two copies of the model, each sharded over 2 ranks (a node's GPUs, at scale),
    # 2 micro-batches a step, their gradients accumulated whole, stopped after 2 steps; 2 ranks
    # sharding one copy read its checkpoint and take step 3. Stage 3: the frozen ViT is held
    # whole beside the sharded adapter and LLM
    manifest = stage_manifest(tmp_path, shards, 3)
    config = tmp_path / "hsdp.yaml"
    config.write_text(yaml.safe_dump(dict(TINY, steps=3, micro_batch_size=1, global_batch=8,
                                          distributed="fsdp", fsdp_shard_size=2,
                                          fsdp_accumulation="whole")))
    out = tmp_path / "hsdp"
    argv = ["--manifest", manifest, "--stage", "3", "--config", str(config), "--output", str(out)]
    printed = torchrun_train(argv + ["--stop-after", "2"], processes=4)
    assert ("4 x cpu fsdp in 2 copies, each sharded over 2 ranks, gradients accumulated whole, "
            "frozen visual whole") in printed
    sharded = out / "checkpoints" / "step-00000002"
    weights = read_weights(str(sharded))
    printed = torchrun_train(argv + ["--resume"], processes=2)
    assert "2 x cpu fsdp in" not in printed and "2 x cpu fsdp" in printed
    logged = [json.loads(line)["loss"] for line in open(out / "log.jsonl")]

    single = train(manifest, 3, str(tmp_path / "one"), device="cpu", overrides=dict(
        TINY, steps=3, micro_batch_size=1, global_batch=8, data_lanes=4, save_every=1))
    assert logged == pytest.approx(single.losses, rel=1e-5)
    # the copies wrote one set of slices between them: the weights of one process
    expected = read_weights(str(tmp_path / "one" / "checkpoints" / "step-00000002"))
    assert weights.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(weights[name], expected[name], rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="fsdp_shard_size 3 does not divide the 4 processes"):
        stage_config(2, overrides={"fsdp_shard_size": 3}).fsdp_mesh(4)
    assert stage_config(2, overrides={"fsdp_shard_size": 8}).fsdp_mesh(4) == (4,)


# ---- start-up: every rank on the meta device, one unit filled at a time --------------------

def tiny_config(stage=3):
    return stage_config(stage, overrides={"model": {"adapter": {"queries": 16}}})


def filled_model(config, weights_from=None, seed=0):
    """The single-process start-up: the whole model filled at once."""
    tokenizer = TextTokenizer.default()
    model = build_model(config.model, 56, tokenizer)
    World().wrap(model, InitialWeights(model, seed, weights_from), torch.device("cpu"))
    return model


@pytest.mark.parametrize("init", [False, True])
def test_fsdp_ranks_build_nothing_whole_and_hold_the_single_process_slices(tmp_path, init):
    # --init weights (not the seed's), or the seeded initialisation, reach both ranks although
    # neither builds the full model: each fills one unit at a time and keeps its slice (the
    # whole of a frozen unit)
    weights_from = "-"
    if init:
        torch.manual_seed(123)
        write_checkpoint_weights(tmp_path, tiny_model().state_dict())
        weights_from = str(tmp_path)
    torchrun(__file__, str(tmp_path), weights_from)
    full = filled_model(tiny_config(), None if weights_from == "-" else weights_from)
    state = full.state_dict()
    if init:
        for name, value in read_weights(str(tmp_path)).items():
            assert torch.equal(state[name], value), name
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2)]
    unit_sizes = [sum(p.numel() * 4 for _, p in own)
                  for own in unit_parameters(shard_plan(tiny_model()))]
    for rank, held in enumerate(ranks):
        assert held["built_on"] == ["meta"]  # no parameter had storage before its unit
        # the most a rank held unsharded at once: its largest unit, a fraction of the model
        assert held["largest_fill"] == max(unit_sizes) < sum(unit_sizes) / 4
        assert held["shards"].keys() == state.keys()
        for name, shard in held["shards"].items():  # FSDP2 shards dim 0 in torch.chunk slices
            slices = state[name].chunk(2)
            expected = slices[rank] if rank < len(slices) else state[name][:0]
            if name.startswith("visual."):  # frozen at stage 3: held whole, not sharded
                expected = state[name]
            assert torch.equal(shard, expected), (rank, name)
        buffers = dict(full.named_buffers())
        assert held["buffers"].keys() == buffers.keys()
        for name, buffer in held["buffers"].items():
            assert torch.equal(buffer, buffers[name]), (rank, name)
    assert torch.equal(ranks[0]["rng"], ranks[1]["rng"])


def startup_worker(out, weights_from):
    """One rank of `test_fsdp_ranks_build_nothing_whole_and_hold_the_single_process_slices`:
    the trainer's start-up (build, freeze plan, fill and shard), then what this rank holds."""
    world = join_world()
    torch.manual_seed(0)
    config = tiny_config()
    tokenizer = TextTokenizer.default()
    cpu = torch.device("cpu")
    model = build_model(config.model, 56, tokenizer)
    weights = InitialWeights(model, 0, None if weights_from == "-" else weights_from)
    built_on = sorted({p.device.type for p in model.parameters()})
    apply_freeze_plan(model, config.trainable)
    world.wrap(model, weights, cpu, "fsdp")
    torch.save({"built_on": built_on, "rng": torch.get_rng_state(),
                "largest_fill": weights.largest_fill,
                "shards": {name: (p.to_local() if isinstance(p, DTensor) else p).clone()
                           for name, p in model.named_parameters()},
                "buffers": {name: b.clone() for name, b in model.named_buffers()}},
               os.path.join(out, f"rank{world.rank}.pt"))
    world.finish()


# ---- frozen components: held whole on every rank, never gathered ---------------------------

@pytest.mark.parametrize("stage", [1, 3])
def test_a_frozen_component_is_held_whole_and_never_gathered(tmp_path, shards, stage):  # noqa: F811
    # stage 1 freezes the LLM, stage 3 the ViT: held whole on each rank they train as when
    # sharded and as one process, and FSDP no longer gathers them
    manifest = stage_manifest(tmp_path, shards, stage)
    frozen = "llm" if stage == 1 else "visual"
    runs = {}
    for replicate in (True, False):
        out = tmp_path / f"replicate-{replicate}"
        printed = torchrun(__file__, "gathers", manifest, str(stage), str(out), str(replicate))
        assert (f"fsdp, frozen {frozen} whole on each rank (" in printed) == replicate
        runs[replicate] = [json.load(open(out / f"rank{rank}.json")) for rank in range(2)]
    single = train(manifest, stage, str(tmp_path / "one"),
                   overrides=dict(TINY, steps=2, micro_batch_size=1, data_lanes=2), device="cpu")
    for replicate, ranks in runs.items():
        assert ranks[0]["losses"] == pytest.approx(single.losses, rel=1e-5), replicate
    replicated = dict(runs[True][0]["replicated"])
    assert replicated and {name.split(".")[0] for name in replicated} == {frozen}
    assert runs[False][0]["replicated"] == []
    whole, sharded = (runs[replicate][0]["gathered"] for replicate in (True, False))
    print(f"stage {stage}: {whole} bytes gathered with the frozen {frozen} held whole, "
          f"{sharded} sharded; the {frozen} holds {sum(replicated.values())} bytes")
    assert sharded - whole >= sum(replicated.values())  # at least one gather of it spared


def test_in_bf16_a_frozen_component_is_held_and_saved_in_bf16_and_resumes_anywhere(
        tmp_path, shards):  # noqa: F811
    # the GPU's setting on CPU ranks: FSDP computes the sharded units in bf16, and the frozen
    # LLM held whole is cast to bf16 once, saved so, and read back by one fp32 process
    manifest = stage_manifest(tmp_path, shards, 1)
    config = tmp_path / "bf16.yaml"
    config.write_text(yaml.safe_dump(dict(TINY, steps=2, micro_batch_size=1, distributed="fsdp",
                                          precision="bf16")))
    out = tmp_path / "run"
    printed = torchrun_train(["--manifest", manifest, "--stage", "1", "--config", str(config),
                              "--output", str(out), "--stop-after", "1"])
    assert "bf16 fsdp, frozen llm whole on each rank" in printed
    saved = read_weights(str(out / "checkpoints" / "step-00000001"))
    assert {name.split(".")[0]: value.dtype for name, value in saved.items()} == {
        "visual": torch.float32, "adapter": torch.float32, "llm": torch.bfloat16}
    resumed = train(manifest, 1, str(out), resume=True, device="cpu")
    assert resumed.steps == 2 and all(torch.isfinite(torch.tensor(resumed.losses)))


def record_collective(kind: str = "all_gather", buffer: str = "output",
                      measure=lambda tensor: tensor.numel() * tensor.element_size()) -> list:
    """`measure` (by default the bytes) of the buffer `buffer` (by name, else the first
    argument) of each collective of the kind this process runs from now on, in order (by
    default FSDP's all-gathers: what each brings the rank)."""
    sizes = []
    name = FSDP_COLLECTIVES.get(kind, kind)
    collective = getattr(torch.distributed, name)

    def recorded(*args, **kwargs):
        sizes.append(measure(kwargs[buffer] if buffer in kwargs else args[0]))
        return collective(*args, **kwargs)

    setattr(torch.distributed, name, recorded)
    return sizes


def gathers_worker(manifest, stage, out, replicate):
    """One rank of `test_a_frozen_component_is_held_whole_and_never_gathered`: two training
    steps under FSDP, counting the bytes FSDP's all-gathers bring this rank."""
    gathered = record_collective()
    replicated = []
    wrap = World.wrap

    def wrap_and_note(self, model, *args, **kwargs):
        wrapped = wrap(self, model, *args, **kwargs)
        replicated.extend((name, p.numel() * p.element_size())
                          for name, p in replicated_parameters(model))
        return wrapped

    World.wrap = wrap_and_note
    result = train(manifest, int(stage), out, device="cpu", overrides=dict(
        TINY, steps=2, micro_batch_size=1, distributed="fsdp",
        replicate_frozen=replicate == "True"))
    with open(os.path.join(out, f"rank{os.environ['RANK']}.json"), "w") as f:
        json.dump({"gathered": sum(gathered), "losses": result.losses, "replicated": replicated}, f)


# ---- the units the forward pass ends with stay gathered for the backward --------------------

def test_the_units_the_forward_ends_with_are_gathered_once_a_pass(tmp_path):
    # the last decoder layer, the final norm and the LM head stay gathered from their forward to
    # their backward; every other unit is freed after its forward and gathered again
    model = tiny_model()
    plan = shard_plan(model)
    names = {id(param): name for name, param in model.named_parameters()}
    held = [[names[id(param)] for _, param in own]
            for module, own in zip(plan, unit_parameters(plan)) if module in forward_ends(model)]
    assert len(held) == 3 and all(held)
    units = sum(1 for own in unit_parameters(plan) if own)  # the root holds none: no gather
    torchrun(__file__, "ends", str(tmp_path))
    for rank in range(2):
        seen = json.load(open(tmp_path / f"rank{rank}.json"))
        assert sorted(seen["whole_after_forward"]) == sorted(sum(held, []))
        assert seen["whole_after_backward"] == []
        assert (seen["forward_gathers"], seen["backward_gathers"]) == (units, units - 3)


def sharded_stage_2(world, mesh_shape=None, strategy="fsdp", **wrapping):
    """The tiny stage-2 model sharded as the trainer does (or wrapped by `strategy`; `wrapping`:
    more of `World.wrap`'s arguments), and a row of text for it."""
    torch.manual_seed(0)
    config = tiny_config(2)
    tokenizer = TextTokenizer.default()
    model = build_model(config.model, 56, tokenizer)
    apply_freeze_plan(model, config.trainable)
    model.encode_always = strategy == "fsdp"  # as the trainer sets it: the ViT runs anyway
    trained = world.wrap(model, InitialWeights(model, 0), torch.device("cpu"), strategy,
                         mesh_shape=mesh_shape, **wrapping)
    tokens = torch.tensor([tokenizer.encode("a row of text without images")])
    return trained, (tokens, torch.arange(tokens.shape[1]).view(1, -1), tokens)


def ends_worker(out):
    """One rank of `test_the_units_the_forward_ends_with_are_gathered_once_a_pass`: one forward
    and backward pass of the stage-2 model under FSDP, counting the gathers of each."""
    world = join_world()
    model, row = sharded_stage_2(world)

    def whole():
        return [name for name, param in model.named_parameters()
                if not isinstance(param, DTensor)]

    gathers = record_collective()
    loss = model(*row)
    forward_gathers, whole_after_forward = len(gathers), whole()
    loss.backward()
    with open(os.path.join(out, f"rank{world.rank}.json"), "w") as f:
        json.dump({"forward_gathers": forward_gathers,
                   "backward_gathers": len(gathers) - forward_gathers,
                   "whole_after_forward": whole_after_forward,
                   "whole_after_backward": whole()}, f)
    world.finish()


# ---- gradient accumulation: sharded (reduce-scattered at each micro-batch) or whole ----------

@pytest.mark.parametrize("ranks, mesh", [(2, "2"), (4, "2x2")])
def test_gradients_accumulate_sharded_or_whole_to_the_same_step(tmp_path, ranks, mesh):
    # sharded (the default): a micro-batch that is not a step's last reduce-scatters its
    # gradients (nothing unsharded is kept back): with one copy each rank holds its slice of them
    # as the parameters' gradients; under hybrid sharding (2 copies of 2) FSDP holds the slices
    # until the last micro-batch, whose all-reduce is the first to cross the copies. Whole: the
    # first micro-batch reduces nothing and leaves the parameters without gradients; the last
    # reduces the sums once. Both end the step with the same gradients
    torchrun(__file__, "accumulate", str(tmp_path), mesh, processes=ranks)
    for rank in range(ranks):
        seen = json.load(open(tmp_path / f"rank{rank}.json"))
        sharded, whole = seen["sharded"], seen["whole"]
        assert sharded["reduce_scatters"][0] > 0 and sharded["reduce_scatters"][1] > 0
        if mesh == "2":
            assert sharded["grads_after_first"] == ["DTensor"]
        else:
            assert sharded["all_reduces"][0] == 0 < sharded["all_reduces"][1]
        assert whole["reduce_scatters"][0] == whole["all_reduces"][0] == 0
        assert whole["reduce_scatters"][1] > 0
        assert whole["grads_after_first"] == ["NoneType"]
        assert whole["grads"] == pytest.approx(sharded["grads"], rel=1e-5, abs=1e-8)


def accumulate_worker(out, mesh):
    """One rank of `test_gradients_accumulate_sharded_or_whole_to_the_same_step`: two
    micro-batches of a step with each accumulation, the collectives of each counted, and the
    step's gradients (this rank's slices) noted."""
    world = join_world()
    model, row = sharded_stage_2(world, tuple(int(size) for size in mesh.split("x")))
    reduce_scatters = record_collective("reduce_scatter", "input")
    all_reduces = record_collective("all_reduce", "tensor")
    seen = {}
    for accumulation in ("sharded", "whole"):
        counted = [(len(reduce_scatters), len(all_reduces))]
        for last in (False, True):
            with world.no_sync(model, last, accumulation):
                model(*row).backward()
            if not last:
                grads = sorted({type(param.grad).__name__ for param in model.parameters()
                                if param.requires_grad})
            counted.append((len(reduce_scatters), len(all_reduces)))
        seen[accumulation] = {
            "grads_after_first": grads,
            "reduce_scatters": [b[0] - a[0] for a, b in zip(counted, counted[1:])],
            "all_reduces": [b[1] - a[1] for a, b in zip(counted, counted[1:])],
            "grads": [value for param in model.parameters() if param.requires_grad
                      for value in param.grad.to_local().flatten().tolist()[:8]]}
        model.zero_grad(set_to_none=True)
    with open(os.path.join(out, f"rank{world.rank}.json"), "w") as f:
        json.dump(seen, f)
    world.finish()


@pytest.mark.parametrize("strategy, collective", [("fsdp", "reduce_scatter"),
                                                  ("ddp", "all_reduce")])
def test_with_bf16_gradients_can_be_reduced_in_bf16(strategy, collective):
    # half the bytes of each reduction (FSDP's reduce-scatters, DDP's all-reduces), the
    # gradients those of the fp32 reduction within bf16's precision; the config names the dtype
    out = torchrun(__file__, "reduce", strategy, collective)
    seen = json.loads(out.strip().splitlines()[-1])
    # DDP's own fp32 all-reduce runs in C++, unseen by the recorder: nothing or 4 bytes a value
    assert seen["bytes_per_value"]["float32"] == ([4] if strategy == "fsdp" else [])
    assert seen["bytes_per_value"]["bfloat16"] == [2]
    assert seen["bfloat16"] == pytest.approx(seen["float32"], rel=2e-2, abs=1e-4)
    assert seen["float32"] != pytest.approx(seen["bfloat16"], rel=1e-6, abs=0)
    assert stage_config(2).reduce_dtype == "float32"
    with pytest.raises(ValueError, match="float32 or bfloat16"):
        stage_config(2, overrides={"reduce_dtype": "float16"})
    with pytest.raises(ValueError, match="sharded or whole"):
        stage_config(2, overrides={"fsdp_accumulation": "unsharded"})


def test_a_run_hands_its_reductions_to_the_world(tmp_path, shards, monkeypatch):  # noqa: F811
    # the config's accumulation and reduce dtype reach the wrapping and each micro-batch (what
    # they do there is tested above)
    wrapped, passes = [], []
    wrap, no_sync = World.wrap, World.no_sync

    def noted_wrap(self, *args):
        wrapped.append(args[-1])
        return wrap(self, *args)

    def noted_no_sync(self, model, last, accumulation="sharded"):
        passes.append((last, accumulation))
        return no_sync(self, model, last, accumulation)

    monkeypatch.setattr(World, "wrap", noted_wrap)
    monkeypatch.setattr(World, "no_sync", noted_no_sync)
    train(stage_manifest(tmp_path, shards, 2), 2, str(tmp_path / "run"), device="cpu",
          overrides=dict(TINY, steps=1, micro_batch_size=1, fsdp_accumulation="whole",
                         reduce_dtype="bfloat16"))
    assert wrapped == [torch.bfloat16]
    assert passes == [(False, "whole"), (True, "whole")]


def reduce_worker(strategy, collective):
    """One rank of `test_with_bf16_gradients_can_be_reduced_in_bf16`: a forward and backward
    pass in bf16 with each reduce dtype; rank 0 prints the bytes per value of the collective
    that reduces the gradients and its gradients (its slices under FSDP)."""
    world = join_world()
    element_sizes = record_collective(collective, "input" if "scatter" in collective
                                      else "tensor", lambda tensor: tensor.element_size())
    seen = {"bytes_per_value": {}}
    for name in ("float32", "bfloat16"):
        trained, (tokens, positions, _) = sharded_stage_2(
            world, strategy=strategy, bf16=True, reduce_dtype=getattr(torch, name))
        tokens = tokens.roll(world.rank, dims=1)  # the ranks' gradients differ
        before = len(element_sizes)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = trained(tokens, positions, tokens)
        loss.backward()
        seen["bytes_per_value"][name] = sorted(set(element_sizes[before:]))
        seen[name] = [value for param in trained.parameters() if param.grad is not None
                      for value in local(param.grad).flatten().tolist()[:8]]
    if world.main:
        print(json.dumps(seen))
    world.finish()


def local(tensor):
    """This rank's part of a sharded tensor, or the tensor."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


if __name__ == "__main__":
    if sys.argv[1] == "gathers":
        gathers_worker(*sys.argv[2:])
    elif sys.argv[1] == "ends":
        ends_worker(sys.argv[2])
    elif sys.argv[1] == "accumulate":
        accumulate_worker(*sys.argv[2:])
    elif sys.argv[1] == "reduce":
        reduce_worker(*sys.argv[2:])
    else:
        startup_worker(sys.argv[1], sys.argv[2])
