"""Checkpoints written behind the training (trainer/checkpoint.py: CheckpointWriter): what is
saved is the state at the save, whatever the loop changes while the thread writes; a failed
write fails the run at its next save or its end; the folders appear whole and the oldest go;
ranks holding the same state each copy and write a share of it.

Run as a script (under torchrun), this file is one rank of the share test."""
import gc
import json
import os
import sys
import threading

import pytest
import torch
from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

import trainer.checkpoint
from corpus.tokens import TextTokenizer
from test_trainer_fsdp import torchrun
from trainer.checkpoint import (CheckpointWriter, load_optimizer, pinned_empty_like, read_state,
                                resolve_checkpoint, this_copys_share)
from trainer.distributed import World, join_world, state_copies
from trainer.weights import read_weights


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU"))]


def model_and_optimizer(device="cpu"):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 2)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return model, optimizer, scheduler


def writes_held_back(monkeypatch) -> threading.Event:
    """The checkpoint thread's writing waits (after its copy) until the event is set: the loop
    moves on meanwhile."""
    loop_moved_on, real_save = threading.Event(), trainer.checkpoint.dcp.save

    def save_later(*args, **kwargs):
        assert loop_moved_on.wait(10)
        return real_save(*args, **kwargs)

    monkeypatch.setattr(trainer.checkpoint.dcp, "save", save_later)
    return loop_moved_on


def train_step(model, optimizer, scheduler, writer=None):
    model(torch.ones(4, 8, device=model[0].weight.device)).sum().backward()
    if writer is not None:  # as the trainer's loop does
        writer.wait_for_copy()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


@pytest.mark.parametrize("device", DEVICES)
def test_a_save_in_the_background_holds_the_state_at_the_save(tmp_path, monkeypatch, device):
    # the thread writes only once the loop has taken two more steps: what it writes must be the
    # copy taken at the save, not the weights as they are by then (on CUDA: copied to pinned
    # memory without blocking, on the rank's own GPU)
    model, optimizer, scheduler = model_and_optimizer(device)
    train_step(model, optimizer, scheduler)
    at_save = {name: value.to("cpu", copy=True) for name, value in model.state_dict().items()}
    moments = optimizer.state[model[0].weight]["exp_avg"].to("cpu", copy=True)
    loop_moved_on = writes_held_back(monkeypatch)
    writer = CheckpointWriter(str(tmp_path), keep=2, world=World(), device=torch.device(device))
    counters = {"tokens": 10}
    folder = writer.save(1, model, optimizer, scheduler, TextTokenizer.default(),
                         {"counters": counters})
    assert not os.path.exists(folder)  # still being written
    train_step(model, optimizer, scheduler, writer)
    train_step(model, optimizer, scheduler, writer)
    counters["tokens"] = 30
    loop_moved_on.set()
    writer.close()

    saved = read_weights(folder)
    assert saved.keys() == at_save.keys()
    assert all(torch.equal(saved[name], at_save[name]) for name in at_save)
    assert not torch.equal(model[0].weight.cpu(), at_save["0.weight"])  # the case under test
    state = read_state(folder)
    assert state["step"] == 1 and state["counters"] == {"tokens": 10}
    assert state["scheduler"]["last_epoch"] == 1
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
    dcp_to_torch_save(os.path.join(folder, "optimizer"), str(tmp_path / "optimizer.pt"))
    saved_moments = torch.load(tmp_path / "optimizer.pt")["state"]["0.weight"]["exp_avg"]
    assert torch.equal(saved_moments, moments)
    assert resolve_checkpoint(str(tmp_path)) == folder


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_cuda_the_copy_waits_for_the_steps_before_the_save_not_the_passes_after(tmp_path):
    # the GPU is kept busy (sleeping kernels) before the save and after it: the copy, on a
    # stream of its own, must see the update queued before the save, and be made while the
    # work queued after it still runs
    model, optimizer, scheduler = model_and_optimizer("cuda")
    writer = CheckpointWriter(str(tmp_path), keep=2, world=World(), device=torch.device("cuda"))
    torch.cuda._sleep(200_000_000)  # about 0.1 s, then the update
    with torch.no_grad():
        model[0].weight.fill_(3.0)
    folder = writer.save(1, model, optimizer, scheduler, TextTokenizer.default(), {})
    torch.cuda._sleep(4_000_000_000)  # about 2 s of passes queued after the save
    writer.wait_for_copy()
    assert not torch.cuda.current_stream().query()  # copied while they run
    assert all(buffer.is_pinned() for buffer in writer.stager.buffers.values())
    writer.close()
    assert torch.equal(read_weights(folder)["0.weight"], torch.full((8, 8), 3.0))


def test_the_loop_waits_for_the_copy_before_its_optimizer_step(tmp_path, monkeypatch):
    # the copy is held back 0.2 s: the step that follows the save must not change the weights
    # before it is made
    model, optimizer, scheduler = model_and_optimizer()
    at_save = {name: value.clone() for name, value in model.state_dict().items()}
    writer = CheckpointWriter(str(tmp_path), keep=2, world=World())
    may_copy, real_stage = threading.Event(), writer.stager.stage
    monkeypatch.setattr(writer.stager, "stage",
                        lambda state_dict: may_copy.wait(10) and real_stage(state_dict))
    folder = writer.save(1, model, optimizer, scheduler, TextTokenizer.default(), {})
    threading.Timer(0.2, may_copy.set).start()
    train_step(model, optimizer, scheduler, writer)
    writer.close()
    saved = read_weights(folder)
    assert all(torch.equal(saved[name], at_save[name]) for name in at_save)
    assert not torch.equal(model[0].weight, at_save["0.weight"])


def test_saves_in_the_background_come_in_order_whole_and_the_oldest_go(tmp_path):
    model, optimizer, scheduler = model_and_optimizer()
    writer = CheckpointWriter(str(tmp_path), keep=2, world=World())
    for step in range(1, 5):
        train_step(model, optimizer, scheduler, writer)
        writer.save(step, model, optimizer, scheduler, TextTokenizer.default(), {})
    writer.close()
    root = tmp_path / "checkpoints"
    assert sorted(os.listdir(root)) == ["latest", "step-00000003", "step-00000004"]
    assert (root / "latest").read_text() == "step-00000004"
    saved = read_weights(str(root / "step-00000004"))
    assert all(torch.equal(saved[name], value) for name, value in model.state_dict().items())


def test_each_save_copies_into_the_host_buffers_of_the_save_before(tmp_path):
    # buffers are made once (pinned on a GPU: seconds for the 7B state), and filled at each save
    model, optimizer, scheduler = model_and_optimizer()
    writer = CheckpointWriter(str(tmp_path), keep=3, world=World())
    staged, real_stage = [], writer.stager.stage

    def recorded(parts):
        copies = real_stage(parts)
        staged.append({name: value.data_ptr() for name, value in copies["model"].items()})
        return copies

    writer.stager.stage = recorded
    folders = []
    for step in range(1, 4):
        train_step(model, optimizer, scheduler, writer)
        folders.append(writer.save(step, model, optimizer, scheduler, TextTokenizer.default(), {}))
        writer.wait()
        weights = read_weights(folders[-1])
        assert all(torch.equal(weights[name], value) for name, value in model.state_dict().items())
    writer.close()
    assert len(staged) == 3 and staged[0] == staged[1] == staged[2]
    assert not torch.equal(read_weights(folders[0])["0.weight"], model[0].weight)


def test_host_buffers_are_pinned_at_their_own_size_and_unpinned_with_them(monkeypatch):
    # the CUDA runtime is stood in for (the CUDA test above pins for real): 60 bytes are pinned,
    # not the 64 of a power-of-two allocator, and unpinned when the buffer goes
    calls = []

    class Runtime:
        def cudaHostRegister(self, address, size, flags):
            calls.append(("pin", address, size))
            return 0 if size < 1000 else 2

        def cudaHostUnregister(self, address):
            calls.append(("unpin", address))

    monkeypatch.setattr(torch.cuda, "cudart", Runtime)
    buffer = pinned_empty_like(torch.ones(3, 5, dtype=torch.float32))
    address = buffer.data_ptr()
    assert calls == [("pin", address, 60)] and buffer.shape == (3, 5)
    del buffer
    gc.collect()
    assert calls[-1] == ("unpin", address)
    assert pinned_empty_like(torch.ones(0)).numel() == 0 and len(calls) == 2
    with pytest.raises(RuntimeError, match="cudaHostRegister of 4000 bytes failed: 2"):
        pinned_empty_like(torch.ones(1000))


def test_a_write_that_fails_in_the_background_fails_the_run(tmp_path):
    model, optimizer, scheduler = model_and_optimizer()
    output = tmp_path / "output"
    output.write_text("a file where the output folder should be")
    writer = CheckpointWriter(str(output), keep=2, world=World())
    writer.save(1, model, optimizer, scheduler, TextTokenizer.default(), {})
    with pytest.raises(RuntimeError, match="writing a checkpoint under .* failed") as failure:
        writer.save(2, model, optimizer, scheduler, TextTokenizer.default(), {})
    assert isinstance(failure.value.__cause__, (FileExistsError, NotADirectoryError))
    writer.close()  # the failure was raised once; the second save never began
    assert output.read_text() == "a file where the output folder should be"


def test_a_save_written_before_the_loop_goes_on_is_in_place_at_once(tmp_path):
    model, optimizer, scheduler = model_and_optimizer()
    writer = CheckpointWriter(str(tmp_path), keep=2, world=World(), background=False)
    folder = writer.save(7, model, optimizer, scheduler, TextTokenizer.default(), {"a": 1})
    assert json.loads(open(os.path.join(folder, "state.json")).read())["a"] == 1
    assert writer.writing is None


def test_frozen_weights_are_written_from_the_model_not_copied(tmp_path, monkeypatch):
    # no step changes a frozen weight: the save copies only what trains (the frozen LLM of
    # stage 1 would double a GPU's host memory). Changed here by hand after the save, the frozen
    # weight is written as it is at the write, the trained one as it was at the save
    model, optimizer, scheduler = model_and_optimizer()
    model[1].requires_grad_(False)
    loop_moved_on = writes_held_back(monkeypatch)
    writer = CheckpointWriter(str(tmp_path), keep=2, world=World())
    folder = writer.save(1, model, optimizer, scheduler, TextTokenizer.default(), {})
    trained_at_save = model[0].weight.detach().clone()
    writer.wait_for_copy()
    with torch.no_grad():
        model[0].weight.add_(1)
        model[1].weight.add_(1)
    loop_moved_on.set()
    writer.close()
    saved = read_weights(folder)
    assert torch.equal(saved["0.weight"], trained_at_save)
    assert torch.equal(saved["1.weight"], model[1].weight)


def test_a_new_writer_removes_what_a_stopped_run_left_half_written(tmp_path):
    model, optimizer, scheduler = model_and_optimizer()
    CheckpointWriter(str(tmp_path), keep=2, world=World(), background=False).save(
        1, model, optimizer, scheduler, TextTokenizer.default(), {})
    left = tmp_path / "checkpoints" / ".step-00000002.tmp" / "model"
    left.mkdir(parents=True)
    (left / "__0_0.distcp").write_bytes(b"half")
    CheckpointWriter(str(tmp_path), keep=2, world=World())
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["latest", "step-00000001"]


# ---- ranks holding the same state write a share of it each ---------------------------------

def test_the_copies_of_a_state_share_it_out_by_size():
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.Linear(32, 4),
                                torch.nn.Linear(4, 4))
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 64)).sum().backward()
    optimizer.step()
    parts = {"model": get_model_state_dict(model),
             "optimizer": get_optimizer_state_dict(model, optimizer)}
    sizes = {name: value.numel() for name, value in parts["model"].items()}
    for copies in (2, 3):
        shares = [this_copys_share(parts, copies, copy) for copy in range(copies)]
        names = [share["model"].keys() for share in shares]
        assert sorted(name for share in names for name in share) == sorted(sizes)  # each once
        loads = [sum(sizes[name] for name in share) for share in names]
        assert max(loads) - min(loads) <= max(sizes.values())
        for share in shares:  # a parameter's optimizer state goes with its weights
            assert share["optimizer"]["state"].keys() == share["model"].keys()
            assert share["optimizer"]["param_groups"] == parts["optimizer"]["param_groups"]
    assert this_copys_share(parts, 1, 0) is parts


def test_which_copy_of_the_state_a_rank_holds():
    assert state_copies(World(rank=5, size=8), None) == (8, 5)  # DDP: every rank a copy
    assert state_copies(World(rank=5, size=8), (8,)) == (1, 0)  # FSDP: one copy, sharded
    assert state_copies(World(rank=5, size=8), (2, 4)) == (2, 1)  # hybrid: rows of the mesh
    assert state_copies(World(), None) == (1, 0)


def test_data_parallel_ranks_each_copy_and_write_a_share_of_the_state(tmp_path):
    # two ranks holding the same model (DDP) stage disjoint halves of it in the background; the
    # checkpoint holds all of it, weights and AdamW state, as one process saved it
    torchrun(__file__, "share", str(tmp_path))
    staged = [json.load(open(tmp_path / f"rank{rank}.json")) for rank in range(2)]
    model, optimizer, scheduler = model_and_optimizer()
    train_step(model, optimizer, scheduler)
    names = sorted(model.state_dict())
    assert all(rank["model"] and rank["model"] == rank["optimizer"] for rank in staged)
    assert sorted(staged[0]["model"] + staged[1]["model"]) == names
    folder = str(tmp_path / "checkpoints" / "step-00000001")
    saved = read_weights(folder)
    assert sorted(saved) == names
    assert all(torch.equal(saved[name], value) for name, value in model.state_dict().items())
    fresh, fresh_optimizer, _ = model_and_optimizer()
    load_optimizer(fresh, fresh_optimizer, folder, World())
    for before, after in zip(model.parameters(), fresh.parameters()):
        for field in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(optimizer.state[before][field],
                               fresh_optimizer.state[after][field])


def share_worker(out):
    """One rank of `test_data_parallel_ranks_each_copy_and_write_a_share_of_the_state`: a
    step, then a save in the background, recording the names this rank copied."""
    world = join_world()
    model, optimizer, scheduler = model_and_optimizer()
    train_step(model, optimizer, scheduler)
    writer = CheckpointWriter(out, keep=2, world=world, copies=state_copies(world, None))
    staged, real_stage = {}, writer.stager.stage

    def recorded(parts):
        staged.update(model=sorted(parts["model"]), optimizer=sorted(parts["optimizer"]["state"]))
        return real_stage(parts)

    writer.stager.stage = recorded
    writer.save(1, model, optimizer, scheduler, TextTokenizer.default(), {})
    writer.close()
    with open(os.path.join(out, f"rank{world.rank}.json"), "w") as f:
        json.dump(staged, f)
    world.finish()


if __name__ == "__main__":
    share_worker(sys.argv[2])
